"""Sparse attention with MLX ops: the same contract as kernels.sparse_attention, on mlx arrays.

Gathers the planned keys per query with mx.take (O(N*K) memory, chunked over queries) and runs a masked
softmax over them. Tested on mlx[cpu] (Linux wheels on PyPI) against the dense reference; on Apple silicon
the same ops run on the GPU through Metal (untested here: no Mac in this workplace). Forward only (inference).

RoPE clamp (ModelConfig.rope_clamp, ReRoPE-style), as kernels/torch_sparse.py: `rope_delta` (B, Nq, K) (the
decode path: (n,)) rotates each gathered key forward by rope[delta] before scoring, so a key more than w tokens
back is scored as if exactly w back (its cached key was rotated at its true position; delta = distance - w, 0
for nearer keys, whose rotation by cos 0 = 1, sin 0 = 0 is exact). `rope` is the (P, D/2, 2) cos/sin table
(`rope_table`, or asa_runtime.model.rope_cache's as an mx array); interleaved pairs, as mx.fast.rope(traditional=True).
"""
from __future__ import annotations

import math

import mlx.core as mx


def rope_table(n: int, dims: int, base: float) -> mx.array:
    """(n, dims/2, 2) float32 cos/sin of positions 0..n-1: asa_runtime.model.rope_cache in MLX."""
    freqs = 1.0 / (base ** (mx.arange(0, dims, 2).astype(mx.float32) / dims))       # (dims/2,)
    ang = mx.arange(n).astype(mx.float32)[:, None] * freqs[None]                    # (n, dims/2)
    return mx.stack([mx.cos(ang), mx.sin(ang)], axis=-1)


def rope_deltas(q_pos: mx.array, key_pos: mx.array, w: int) -> mx.array:
    """kernels.torch_sparse.rope_deltas in MLX: q_pos (..., T), key_pos (..., T, K) token positions (-1 padded)
    -> (..., T, K) int32 max(0, q_pos - key_pos - w), 0 on padding."""
    key_pos = key_pos.astype(mx.int32)
    d = mx.maximum(q_pos.astype(mx.int32)[..., None] - key_pos - w, 0)
    return mx.where(key_pos >= 0, d, 0).astype(mx.int32)


def rotate(x: mx.array, delta: mx.array, rope: mx.array) -> mx.array:
    """x (..., D) rotated like RoPE (interleaved pairs) by the angles of positions delta (x.shape[:-1],
    broadcastable, >= 0), rope (P, D/2, 2) the cos/sin table: float32 (kernels.torch_sparse.rotate)."""
    cs = mx.take(rope.astype(mx.float32), delta.astype(mx.int32), axis=0)            # (..., D/2, 2)
    cos, sin = cs[..., 0], cs[..., 1]
    xs = x.astype(mx.float32).reshape(*x.shape[:-1], -1, 2)
    a, b = xs[..., 0], xs[..., 1]
    out = mx.stack([a * cos - b * sin, b * cos + a * sin], axis=-1)
    return out.reshape(*out.shape[:-2], -1)


def sparse_attention_mlx(q, k, v, keys, scale=None, chunk: int = 1024, rope_delta=None, rope=None):
    """q: (B, Hq, Nq, D); k, v: (B, Hkv, Nk, D); keys: (B, Nq, K) int. Returns (B, Hq, Nq, D) in q's dtype.
    rope_delta (B, Nq, K) int with rope (P, D/2, 2): the RoPE clamp (module docstring)."""
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    g = Hq // Hkv
    scale = scale if scale is not None else 1.0 / math.sqrt(D)
    keys = keys.astype(mx.int32)
    outs = []
    for s in range(0, Nq, chunk):
        e = min(Nq, s + chunk)
        C = e - s
        idx = keys[:, s:e]                                                   # (B, C, K)
        K = idx.shape[-1]
        valid = idx >= 0
        flat = mx.maximum(idx, 0).reshape(B, 1, C * K)                       # (B, 1, C*K)
        # gather rows of the (Nk, D) matrix of every (batch, kv head): flat offsets into Nk
        kg = mx.take_along_axis(k, flat[..., None], axis=2).reshape(B, Hkv, 1, C, K, D)
        if rope_delta is not None:                                           # far keys scored at distance w
            kg = rotate(kg, rope_delta[:, s:e].reshape(B, 1, 1, C, K), rope)
        vg = mx.take_along_axis(v, flat[..., None], axis=2).reshape(B, Hkv, 1, C, K, D)
        qc = q[:, :, s:e].reshape(B, Hkv, g, C, 1, D).astype(mx.float32)
        att = (qc * kg.astype(mx.float32)).sum(-1) * scale                   # (B, Hkv, g, C, K)
        att = mx.where(valid.reshape(B, 1, 1, C, K), att, -mx.inf)
        p = mx.softmax(att, axis=-1)
        o = (p[..., None] * vg.astype(mx.float32)).sum(-2)                  # (B, Hkv, g, C, D)
        outs.append(o.reshape(B, Hq, C, D).astype(q.dtype))
    return mx.concatenate(outs, axis=2)


def sparse_attention_mlx_take(q, k, v, keys, scale=None, rope_delta=None, rope=None):
    """The same through mx.take on flattened rows (one gather per chunk for all heads); kept beside the
    take_along_axis version for Metal, where the two lower differently."""
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    base = (mx.arange(B * Hkv) * Nk).reshape(B, Hkv, 1)                      # row offset of each (b, h)
    idx = mx.maximum(keys.astype(mx.int32), 0).reshape(B, 1, -1) + base      # (B, Hkv, Nq*K)
    kf, vf = k.reshape(B * Hkv * Nk, D), v.reshape(B * Hkv * Nk, D)
    K = keys.shape[-1]
    kg = mx.take(kf, idx.reshape(-1), axis=0).reshape(B, Hkv, 1, Nq, K, D)
    vg = mx.take(vf, idx.reshape(-1), axis=0).reshape(B, Hkv, 1, Nq, K, D)
    if rope_delta is not None:
        kg = rotate(kg, rope_delta.reshape(B, 1, 1, Nq, K), rope)
    scale = scale if scale is not None else 1.0 / math.sqrt(D)
    g = Hq // Hkv
    qc = q.reshape(B, Hkv, g, Nq, 1, D).astype(mx.float32)
    att = (qc * kg.astype(mx.float32)).sum(-1) * scale
    att = mx.where((keys >= 0).reshape(B, 1, 1, Nq, K), att, -mx.inf)
    o = (mx.softmax(att, axis=-1)[..., None] * vg.astype(mx.float32)).sum(-2)
    return o.reshape(B, Hq, Nq, D).astype(q.dtype)


def sparse_decode_mlx(q, k, v, slots, scale=None, rope_delta=None, rope=None):
    """Decode fast path (one query row): q (B, Hq, 1, D); k, v (B, Hkv, S, D) the cache; slots (n,) int,
    the plan row's valid entries only (no -1 padding). Gathers the n rows and runs the fused SDPA
    (mx.fast.scaled_dot_product_attention handles GQA). Same result as sparse_attention_mlx with keys
    (B, 1, n); returns (B, Hq, 1, D) in q's dtype. rope_delta (n,) int with rope (P, D/2, 2): the RoPE clamp
    (the gathered keys rotated in float32, then scored in q's dtype)."""
    D = q.shape[-1]
    scale = scale if scale is not None else 1.0 / math.sqrt(D)
    slots = slots.astype(mx.int32)
    kg = mx.take(k, slots, axis=2)                                          # (B, Hkv, n, D)
    if rope_delta is not None:
        kg = rotate(kg, rope_delta, rope)                                   # (n,) broadcasts over (B, Hkv)
    kg = kg.astype(q.dtype)
    vg = mx.take(v, slots, axis=2).astype(q.dtype)
    return mx.fast.scaled_dot_product_attention(q, kg, vg, scale=scale)
