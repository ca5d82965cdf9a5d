"""Sparse attention behind one dispatch function.

    out = sparse_attention(q, k, v, keys, scale=None, backend="auto")

q:    (B, Hq, Nq, D)    queries
k, v: (B, Hkv, Nk, D)   keys/values (Hq % Hkv == 0: GQA); Nk >= Nq (a KV cache may hold more)
keys: (B, Nq, K) int    AttentionPlan rows: absolute positions into Nk, ascending, -1 padded at the end,
                        shared by all heads. Every row has at least one valid entry.
returns (B, Hq, Nq, D), in q's dtype. Differentiable in q, k, v (training calls it on CPU and GPU).

The same call serves prefill (Nq == Nk), chunked prefill and decode (Nq small, Nk = cache length):
the plan rows already hold absolute cache positions, so no causal offset is needed.

Backends: "torch" (kernels/torch_sparse.py, any device, gathers, O(N*K) memory), "triton" (CUDA: narrow
plans run kernels/triton_sparse.py, block tiles over the plan's key blocks; plans whose sinks + window part
is large run kernels/triton_wide.py, that part as dense tiles and the rest as gathered columns; chosen once
per plan tensor; decode gathers), "auto" = Triton on CUDA tensors when Triton imports, torch otherwise.
MLX arrays go through kernels/mlx_sparse.py.

rope_delta (B, Nq, K) with rope (P, D/2, 2): the RoPE clamp (ModelConfig.rope_clamp; kernels/torch_sparse.py
`rope_deltas`). The Triton kernels do not rotate keys: a call with rope_delta runs the torch gathers, also on
CUDA (slower than the kernels; the model passes it only when a key is farther back than the clamp, i.e. past
2048 tokens for asa-small).
"""
from __future__ import annotations

import os

import torch

from .torch_sparse import sparse_attention_torch

BACKENDS = ("auto", "torch", "triton")


_triton_fn = None          # triton_wide.sparse_attention_auto once imported (Triton is optional: on first use)


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _triton():
    global _triton_fn
    if _triton_fn is None:
        from .triton_wide import sparse_attention_auto   # narrow plans: triton_sparse, unchanged

        _triton_fn = sparse_attention_auto
    return _triton_fn


# Set by exporters/onnx/graph_op.py on import: while torch.export traces (ONNX export), the attention is
# that custom op, so the graph gets one asa.SparseAttention node per layer. None: no exporter loaded.
EXPORT_OP = None


def sparse_attention(q, k, v, keys, scale=None, backend: str = "auto", rope_delta=None, rope=None):
    if EXPORT_OP is not None and backend == "auto":
        if torch.compiler.is_exporting():
            if rope_delta is None:
                return EXPORT_OP(q, k, v, keys, scale)
            return EXPORT_OP(q, k, v, keys, scale, rope_delta=rope_delta, rope=rope)
    if backend == "auto":
        backend = os.environ.get("ASA_SPARSE_BACKEND", "auto")   # e.g. force "torch" to rule out a kernel
    if backend not in BACKENDS:
        raise ValueError(f"unknown sparse attention backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if rope_delta is None and (backend == "triton" or (backend == "auto" and q.is_cuda and triton_available())):
        return _triton()(q, k, v, keys, scale=scale)
    return sparse_attention_torch(q, k, v, keys, scale=scale, rope_delta=rope_delta, rope=rope)


__all__ = ["sparse_attention", "BACKENDS", "triton_available"]
