"""Dense reference for sparse attention: every score computed, then masked by the plan. O(N * Nk) memory,
float64-capable; used only by tests (and the small-N checks in bench/kernels)."""
from __future__ import annotations

import math

import torch


def plan_mask(keys: torch.Tensor, nk: int) -> torch.Tensor:
    """(B, Nq, K) plan rows -> (B, Nq, Nk) bool: True where query i may attend key j."""
    B, Nq, K = keys.shape
    mask = torch.zeros(B, Nq, nk + 1, dtype=torch.bool, device=keys.device)
    idx = torch.where(keys >= 0, keys.long(), nk)                    # -1 padding -> spare column nk
    mask.scatter_(2, idx, True)
    return mask[..., :nk]


def sparse_attention_reference(q, k, v, keys, scale=None, dtype=torch.float64):
    """q: (B, Hq, Nq, D); k, v: (B, Hkv, Nk, D); keys: (B, Nq, K). Computes in `dtype`, returns q.dtype."""
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    scale = scale if scale is not None else 1.0 / math.sqrt(D)
    kk = k.to(dtype).repeat_interleave(Hq // Hkv, dim=1)             # (B, Hq, Nk, D)
    vv = v.to(dtype).repeat_interleave(Hq // Hkv, dim=1)
    s = (q.to(dtype) @ kk.transpose(-1, -2)) * scale                 # (B, Hq, Nq, Nk)
    s = s.masked_fill(~plan_mask(keys, Nk)[:, None], float("-inf"))
    return (torch.softmax(s, dim=-1) @ vv).to(q.dtype)               # (B, Hq, Nq, D)
