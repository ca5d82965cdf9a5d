"""Execution backends behind one small protocol, so the engine (sampling, plans, KV policy, CLI) stays the
same whether a torch model, an ONNX Runtime session or an MLX model computes the logits.

A backend owns the weights and the KV cache; the engine owns token positions, the plan and the slot map.
Plan rows passed in hold cache SLOTS (see asa_runtime/kv_policy.py); None means the dense baseline.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch


@runtime_checkable
class Backend(Protocol):
    name: str
    vocab_size: int

    def reset(self, n_slots: int) -> None:
        """(Re)allocate an empty KV cache of n_slots rows (preallocated, written by index)."""

    def prefill(self, ids: np.ndarray, plan_rows: np.ndarray | None, positions: np.ndarray,
                slots: np.ndarray, all_logits: bool = False) -> torch.Tensor:
        """ids (T,), plan_rows (T, K) slots or None, positions (T,) for RoPE, slots (T,) cache rows to write.
        Returns the last token's logits (V,) float32, or (T, V) if all_logits."""

    def decode(self, token: int, plan_row: np.ndarray | None, pos: int, slot: int) -> torch.Tensor:
        """One token: logits (V,) float32."""

    def move_slots(self, src: np.ndarray, dst: np.ndarray) -> None:
        """Copy cache rows src -> dst (compaction; dst[i] <= src[i], both ascending)."""

    def read_cache(self, n: int) -> list[torch.Tensor]:
        """The first n cache rows of every layer: [k0, v0, k1, v1, ...], each (Hkv, n, hs), CPU."""

    def write_cache(self, tensors: list[torch.Tensor]) -> None:
        """Inverse of read_cache: fill rows 0..n-1."""

    def cache_bytes(self) -> int:
        """Bytes held by the KV cache."""


BACKENDS = ("torch",)


def make_backend(name: str, model, device="cpu", kv_dtype=None) -> Backend:
    if name == "torch":
        from .torch_backend import TorchBackend

        return TorchBackend(model, device=device, kv_dtype=kv_dtype)
    raise ValueError(f"unknown backend {name!r}; available: {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "Backend", "make_backend"]
