"""The KV-cache state every backend's cache accepts (Cache.load_state): validated in one place."""
from __future__ import annotations

import torch


def state_rows(tensors: dict[str, torch.Tensor], n_layers: int, cache_shape) -> list[tuple[torch.Tensor,
                                                                                             torch.Tensor]]:
    """[(k, v)] per layer from {"layers.{l}.k" / ".v": (Hkv, n, hs)}, checked to fit a cache of
    `cache_shape` (B, Hkv, S, hs). Raises ValueError naming the first tensor that does not."""
    _, hkv, s, hs = cache_shape
    out = []
    for i in range(n_layers):
        try:
            k, v = tensors[f"layers.{i}.k"], tensors[f"layers.{i}.v"]
        except KeyError as e:
            raise ValueError(f"cache state lacks {e.args[0]}") from None
        for t in (k, v):
            if t.dim() != 3 or (t.shape[0], t.shape[2]) != (hkv, hs) or t.shape[1] > s or t.shape != k.shape:
                raise ValueError(f"cache tensor of shape {tuple(t.shape)} does not fit cache {tuple(cache_shape)}")
        out.append((k, v))
    return out
