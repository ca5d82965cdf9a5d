"""Shared inputs for the kernel tests: fresh random q/k/v and plans (synthetic ASA-like, random, dense causal)."""
from __future__ import annotations

import numpy as np
import torch

from kernels.synthetic_plans import asa_like, random_rows


def make_plan(kind: str, B: int, N: int, K: int, seed: int, offset: int = 0) -> torch.Tensor:
    """(B, N, K) int32 plan rows for queries offset..offset+N-1."""
    rows = []
    for b in range(B):
        s = seed * 100 + b
        if kind == "asa":
            rows.append(asa_like(N, K, window=8, sent=12, bonded=6, longrange=2, seed=s, offset=offset))
        elif kind == "random":
            rows.append(random_rows(N, K, seed=s, offset=offset))
        elif kind == "causal":                                  # dense causal (K >= offset + N)
            r = np.full((N, K), -1, dtype=np.int32)
            for i in range(N):
                r[i, : offset + i + 1] = np.arange(offset + i + 1)
            rows.append(r)
        else:
            raise ValueError(kind)
    return torch.from_numpy(np.stack(rows))


def make_qkv(B, Hq, Hkv, Nq, Nk, D, dtype, device="cpu", seed=0, requires_grad=False):
    g = torch.Generator(device="cpu").manual_seed(seed)
    q, k, v = (torch.randn(B, h, n, D, generator=g).to(device=device, dtype=dtype)
               for h, n in ((Hq, Nq), (Hkv, Nk), (Hkv, Nk)))
    if requires_grad:
        for t in (q, k, v):
            t.requires_grad_(True)
    return q, k, v


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def poison_allocator(device, nbytes: int = 64 << 20):
    """Fill freed blocks of the CUDA caching allocator with NaN so that torch.empty returns NaN memory:
    an output element the kernel forgets to write stays NaN."""
    if torch.device(device).type != "cuda":
        return
    junk = torch.full((nbytes // 4,), float("nan"), device=device)
    del junk
