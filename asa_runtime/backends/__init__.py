"""Execution backends behind one small protocol, so the engine (sampling, plans, KV policy, CLI, server)
stays the same whether a torch model, an ONNX Runtime session or an MLX model computes the logits.

A backend holds the weights (shared, read-only) and makes caches; it keeps no per-sequence state. The
Session owns its cache, token positions, the plan and the slot map, and hands the cache to every call, so
many sessions run side by side on one backend. Plan rows passed in hold cache SLOTS
(asa_runtime/kv_policy.py); None means the dense baseline.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from ..errors import BackendError


@runtime_checkable
class Cache(Protocol):
    """One sequence's KV cache: preallocated n_slots rows per layer, written by index."""
    n_slots: int

    def move_slots(self, src: np.ndarray, dst: np.ndarray) -> None:
        """Copy rows src -> dst (compaction; dst[i] <= src[i], both ascending)."""

    def state(self, n: int) -> dict[str, torch.Tensor]:
        """Rows 0..n-1 as CPU tensors {"layers.{l}.k", "layers.{l}.v": (Hkv, n, hs)} (prompt caches)."""

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        """Inverse of state(); ValueError if the tensors do not fit."""

    def nbytes(self) -> int:
        """Bytes the cache holds."""


@runtime_checkable
class Backend(Protocol):
    name: str
    vocab_size: int

    def make_cache(self, n_slots: int) -> Cache:
        """An empty cache of n_slots rows for one sequence."""

    def prefill(self, cache: Cache, ids: np.ndarray, plan_rows: np.ndarray | None, positions: np.ndarray,
                slots: np.ndarray, all_logits: bool = False, plan_pos: np.ndarray | None = None) -> torch.Tensor:
        """ids (T,), plan_rows (T, K) slots or None, positions (T,) for RoPE, slots (T,) cache rows to write.
        Returns the last token's logits (V,) float32, or (T, V) if all_logits. plan_pos: plan_rows as token
        positions, given (and needed) when the model has a RoPE clamp (ModelConfig.rope_clamp)."""

    def decode(self, cache: Cache, token: int, plan_row: np.ndarray | None, pos: int, slot: int,
               attn_out: list | None = None, plan_pos: np.ndarray | None = None) -> torch.Tensor:
        """One token: logits (V,) float32. If attn_out is a list and the backend can, it receives per layer
        the head-averaged attention weights over the plan row's valid entries (the bonds view). plan_pos: as
        in prefill."""


# name -> (module, class); a backend class is built as Cls(model, device=, kv_dtype=, source=) where
# source is the model folder the weights came from (None for an in-memory model).
REGISTRY: dict[str, tuple[str, str]] = {
    "torch": ("asa_runtime.backends.torch_backend", "TorchBackend"),
    "onnx": ("asa_runtime.backends.onnx_backend", "OnnxBackend"),     # ONNX Runtime, CPU (extra: onnx)
    "mlx": ("asa_runtime.backends.mlx_backend", "MlxBackend"),
}
BACKENDS = tuple(REGISTRY)


def make_backend(name: str, model, device="cpu", kv_dtype=None, source: Path | None = None) -> Backend:
    if name not in REGISTRY:
        raise BackendError(f"unknown backend {name!r}; available: {', '.join(BACKENDS)}")
    mod, cls = REGISTRY[name]
    try:
        module = importlib.import_module(mod)
    except ImportError as e:
        raise BackendError(f"backend {name!r} needs a package that is not installed ({e.name}); "
                           f"install the extra: pip install 'asa-runtime[{name}]'") from None
    return getattr(module, cls)(model, device=device, kv_dtype=kv_dtype, source=source)


__all__ = ["BACKENDS", "REGISTRY", "Backend", "BackendError", "Cache", "make_backend"]
