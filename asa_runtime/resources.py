"""Memory a request needs, computed from the config and flags, checked against what the machine has
before anything is allocated (a context the machine cannot hold is refused in one line, not attempted)."""
from __future__ import annotations

import os

import torch

from .errors import GenerationError

HEADROOM = 0.9          # leave a tenth of the free memory to the rest of the process and the OS


def available_bytes(device: str | torch.device = "cpu") -> int | None:
    """Free memory on `device` (None if unknown: then nothing is refused)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return int(free)
    try:
        with open("/proc/meminfo") as f:                 # Linux: MemAvailable counts reclaimable cache
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def session_bytes(cfg, n_slots: int, ctx_size: int, kv_elem: int) -> int:
    """KV cache (2 x layers x kv heads x head size x slots) + the slot map's two int64 tables + the plan
    (per token a few int64 analyzer fields and one K-wide row)."""
    kv = 2 * cfg.n_layer * cfg.n_kv_head * cfg.head_dim * n_slots * kv_elem
    return kv + 8 * (ctx_size + 1 + n_slots) + 8 * ctx_size * 16


def check_fits(need: int, what: str, device="cpu") -> None:
    free = available_bytes(device)
    if free is not None and need > HEADROOM * free:
        raise GenerationError(f"{what} needs {need / 2**30:.1f} GiB but only {free / 2**30:.1f} GiB is free on "
                              f"{device}; lower --ctx-size or set --max-kv-size")
