"""Synthetic plans for kernel tests and benchmarks (until / beside real plans from the planner).

asa_like: each row holds itself, a local window, the first sinks, bonded words drawn mostly from the current
"sentence" (a few dozen tokens back) and a few long-range keys (antecedents, strided globals), ascending,
-1 padded, capped at K. random_rows: K keys drawn uniformly from the whole past (the worst case for tiles).
"""
from __future__ import annotations

import numpy as np


def _finish(rows: list[np.ndarray], K: int) -> np.ndarray:
    out = np.full((len(rows), K), -1, dtype=np.int32)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def asa_like(N: int, K: int, window: int = 32, sinks: int = 4, sent: int = 40, bonded: int = 24,
             longrange: int = 4, stride: int = 0, seed: int = 0, nk: int | None = None,
             offset: int = 0) -> np.ndarray:
    """(N, K) int32 plan for queries offset..offset+N-1 (nk-long key space; causal)."""
    rng = np.random.default_rng(seed)
    rows = []
    # sentence boundaries: lengths 8..2*sent
    bounds = np.cumsum(rng.integers(8, 2 * sent, size=(offset + N) // 8 + 2))
    for i in range(offset, offset + N):
        s0 = bounds[np.searchsorted(bounds, i, side="right") - 1] if i >= bounds[0] else 0
        s0 = min(s0, i)
        cand = [np.arange(max(0, i - window + 1), i + 1), np.arange(min(sinks, i + 1))]
        lo = max(0, min(s0, i - sent))
        if i > lo:
            cand.append(rng.integers(lo, i, size=bonded))
        if i > 0 and longrange:
            cand.append(rng.integers(0, i, size=longrange))
        if stride:
            cand.append(np.arange(0, i, stride)[-8:])
        r = np.unique(np.concatenate(cand))
        if len(r) > K:                                  # keep self, window, sinks; drop the rest at random
            must = r[(r >= i - window + 1) | (r < sinks)]
            rest = np.setdiff1d(r, must)
            keep = rng.choice(rest, size=max(0, K - len(must)), replace=False) if len(rest) else rest
            r = np.unique(np.concatenate([must, keep]))[-K:]
            if i not in r:
                r = np.unique(np.concatenate([r[1:], [i]]))
        rows.append(r)
    return _finish(rows, K)


def random_rows(N: int, K: int, seed: int = 0, window: int = 0, offset: int = 0) -> np.ndarray:
    """Self (+ optional window) plus random earlier keys from the whole past, up to K per row."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(offset, offset + N):
        n = int(rng.integers(1, K + 1))
        r = np.unique(np.concatenate([[i], np.arange(max(0, i - window + 1), i + 1),
                                      rng.integers(0, i + 1, size=n)]))[-K:]
        if i not in r:
            r = np.unique(np.concatenate([r[1:], [i]]))
        rows.append(r)
    return _finish(rows, K)
