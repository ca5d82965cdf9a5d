"""Sparse attention behind one dispatch function.

    out = sparse_attention(q, k, v, keys, scale=None)

q:    (B, Hq, Nq, D)    queries
k, v: (B, Hkv, Nk, D)   keys/values (Hq % Hkv == 0: GQA); Nk >= Nq (a KV cache may hold more)
keys: (B, Nq, K) int    AttentionPlan rows: absolute positions into Nk, ascending, -1 padded at the end,
                        shared by all heads. Every row has at least one valid entry.
returns (B, Hq, Nq, D), in q's dtype.

The same call serves prefill (Nq == Nk), chunked prefill and decode (Nq small, Nk = cache length):
the plan rows already hold absolute cache positions, so no causal offset is needed.
"""
from __future__ import annotations

from .torch_sparse import sparse_attention_torch


def sparse_attention(q, k, v, keys, scale=None, backend: str = "auto"):
    if backend in ("auto", "torch"):
        return sparse_attention_torch(q, k, v, keys, scale=scale)
    raise ValueError(f"unknown sparse attention backend {backend!r}")


__all__ = ["sparse_attention"]
