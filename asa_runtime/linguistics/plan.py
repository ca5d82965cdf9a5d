"""The AttentionPlan: the one contract every part shares (../shared/DESIGN.md).

keys: int32 [B, N, K]. Row i lists the key positions query i attends to, ascending, every entry <= i,
padded with -1 at the end, always containing i itself. One plan for all heads of a layer.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PAD = -1


@dataclass(frozen=True)
class AttentionPlan:
    keys: np.ndarray  # int32 [B, N, K]

    def __post_init__(self):
        if self.keys.ndim != 3 or self.keys.dtype != np.int32:
            raise ValueError(f"AttentionPlan.keys must be int32 [B, N, K], got {self.keys.dtype} {self.keys.shape}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.keys.shape  # type: ignore[return-value]

    def counts(self) -> np.ndarray:
        """Keys per query, [B, N]."""
        return (self.keys >= 0).sum(-1)

    def to_torch(self, device=None):
        import torch

        return torch.from_numpy(np.ascontiguousarray(self.keys)).to(device)


def validate_rows(keys: np.ndarray, offset: int = 0) -> None:
    """Raise AssertionError unless `keys` ([N, K] or [B, N, K]) obeys the contract. Row r is query offset+r."""
    k = keys.reshape(-1, keys.shape[-2], keys.shape[-1]) if keys.ndim == 3 else keys[None]
    n = k.shape[1]
    qpos = np.arange(offset, offset + n)[None, :, None]
    valid = k >= 0
    # -1 only as trailing padding: once invalid, stays invalid
    assert not np.any(valid[..., 1:] & ~valid[..., :-1]), "padding -1 must be trailing"
    assert np.all(np.where(valid, k <= qpos, True)), "entry beyond the query (not causal)"
    kk = np.where(valid, k, np.iinfo(np.int32).max)
    assert np.all(np.where(valid[..., 1:], kk[..., 1:] > kk[..., :-1], True)), "entries must be strictly ascending"
    assert np.all((k == qpos).any(-1)), "every row must contain the query itself"
