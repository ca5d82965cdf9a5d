"""This process's resident memory, for the benchmarks and generation stats (no torch import: the llama.cpp
benchmark child must not carry torch's ~200 MiB)."""
from __future__ import annotations

import sys


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_rss_bytes() -> int:
    """Peak resident set size of this process. Linux: VmHWM, the high-water mark of this process's own
    address space. Not ru_maxrss there: the kernel carries the parent's high-water mark into it across
    fork/vfork + exec (measured: a child of an 800 MiB parent reports 813 MiB, VmHWM 13 MiB), so every
    benchmark child would report at least its parent's size. Elsewhere ru_maxrss (bytes on macOS)."""
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def current_rss_bytes() -> int | None:
    """Resident set size now (Linux; None elsewhere)."""
    kib = _status_kib("VmRSS")
    return None if kib is None else kib * 1024
