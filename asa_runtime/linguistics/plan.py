"""The AttentionPlan contract every part shares (../shared/DESIGN.md), as a validator: the runtime passes
plans as bare int32 arrays (the planner's output, the trainer's cached plans), and this checks them.

keys: int32 [N, K] or [B, N, K]. Row i lists the key positions query i attends to, ascending, every entry
<= i, padded with -1 at the end, always containing i itself. One plan for all heads of a layer.
"""
from __future__ import annotations

import numpy as np

PAD = -1


def validate_rows(keys: np.ndarray, offset: int = 0) -> None:
    """Raise AssertionError unless `keys` ([N, K] or [B, N, K], int32) obeys the contract. Row r is query
    offset+r."""
    assert keys.dtype == np.int32 and keys.ndim in (2, 3), f"plan must be int32 [N, K] or [B, N, K], got " \
        f"{keys.dtype} {keys.shape}"
    k = keys if keys.ndim == 3 else keys[None]
    n = k.shape[1]
    qpos = np.arange(offset, offset + n)[None, :, None]
    valid = k >= 0
    # -1 only as trailing padding: once invalid, stays invalid
    assert not np.any(valid[..., 1:] & ~valid[..., :-1]), "padding -1 must be trailing"
    assert np.all(np.where(valid, k <= qpos, True)), "entry beyond the query (not causal)"
    kk = np.where(valid, k, np.iinfo(np.int32).max)
    assert np.all(np.where(valid[..., 1:], kk[..., 1:] > kk[..., :-1], True)), "entries must be strictly ascending"
    assert np.all((k == qpos).any(-1)), "every row must contain the query itself"
