"""The exported sparse-attention op: one contract shared by the ONNX export, the ONNX Runtime kernel
(exporters/onnx/csrc) and the TensorRT-RTX plugin (exporters/tensorrt). See shared DESIGN.md.

Node  asa.SparseAttention (domain "asa", opset_import asa:1)
  inputs   q       (B, Hq, T, D)   float32 | float16
           k_cache (B, Hkv, S, D)  same dtype as q
           v_cache (B, Hkv, S, D)  same dtype as q
           rows    (B, T, K)       int32 cache slots, ascending, -1 padded at the end, >= 1 valid per row
  optional (the RoPE clamp, ModelConfig.rope_clamp; both or neither; a node without them is the plain op):
           rope_delta (B, T, K)     int32, each entry in [0, P) (padding entries too: 0 there)
           rope       (P, D/2, 2)   float32 cos/sin table (row p: RoPE angles of position p,
                                    asa_runtime.model.rope_cache's table)
  attr     scale   float, default 1/sqrt(D) when absent
  output   out     (B, Hq, T, D)   same dtype as q
GQA: query head h reads kv head h // (Hq // Hkv).
out[b, h, t] = sum_j softmax_j(scale * q[b,h,t] . k'[j]) * v[b,hk,rows[b,t,j]] over valid j, where
k'[j] = k[b,hk,rows[b,t,j]] without the clamp, and with it that key rotated like RoPE (interleaved pairs, the
Llama / GGUF convention) by the angles rope[rope_delta[b,t,j]] (the kernels rotate in float32):
    (x0, x1) -> (x0 cos - x1 sin, x1 cos + x0 sin)   for each pair (k[2i], k[2i+1]), (cos, sin) = rope[d, i]
(a key more than w tokens behind its query is scored as if exactly w back: delta = max(0, q_pos - key_pos - w),
kernels/torch_sparse.rope_deltas; delta 0 is the identity).
The torch reference is kernels/torch_sparse.sparse_attention_torch; this numpy one must agree with it.
"""
from __future__ import annotations

import math

import numpy as np

DOMAIN = "asa"
OP_TYPE = "SparseAttention"
VERSION = 1
INPUT_NAMES = ("q", "k_cache", "v_cache", "rows")
ROPE_INPUT_NAMES = ("rope_delta", "rope")              # the optional inputs of the RoPE clamp, in this order
ALL_INPUT_NAMES = INPUT_NAMES + ROPE_INPUT_NAMES
OUTPUT_NAMES = ("out",)
ATTR_SCALE = "scale"
# TensorRT plugin identity: name, version, namespace = op type, version, domain (the ONNX parser maps it)
TRT_PLUGIN_NAME, TRT_PLUGIN_VERSION, TRT_PLUGIN_NAMESPACE = OP_TYPE, str(VERSION), DOMAIN


def default_scale(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)


def rotate(x, cs):
    """x (..., D) rotated like RoPE (interleaved pairs) by cs (..., D/2, 2) cos/sin, in x's float dtype."""
    xs = x.reshape(*x.shape[:-1], -1, 2)
    cos, sin = cs[..., 0], cs[..., 1]
    out = np.stack([xs[..., 0] * cos - xs[..., 1] * sin, xs[..., 1] * cos + xs[..., 0] * sin], -1)
    return out.reshape(x.shape)


def reference(q, k, v, rows, scale=None, rope_delta=None, rope=None):
    """numpy reference. q: (B, Hq, T, D); k, v: (B, Hkv, S, D); rows: (B, T, K) int, -1 padded; rope_delta
    (B, T, K) int with rope (P, D/2, 2): the RoPE clamp (module docstring). Computes in float64 (the table's
    float32 values widened), returns q's dtype. Raises ValueError on a contract violation."""
    q, k, v, rows = np.asarray(q), np.asarray(k), np.asarray(v), np.asarray(rows)
    B, Hq, T, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    if k.shape != (B, Hkv, S, D) or v.shape != k.shape:
        raise ValueError(f"k/v shape {k.shape}/{v.shape} do not match q {q.shape}")
    if Hq % Hkv:
        raise ValueError(f"Hq={Hq} is not a multiple of Hkv={Hkv}")
    if rows.shape[:2] != (B, T):
        raise ValueError(f"rows shape {rows.shape} does not match (B, T) = {(B, T)}")
    valid = rows >= 0                                                    # (B, T, K)
    if not valid.any(-1).all():
        raise ValueError("every plan row needs at least one valid slot")
    if (rows >= S).any():
        raise ValueError(f"a plan row names slot {int(rows.max())} >= S={S}")
    if (rope_delta is None) != (rope is None):
        raise ValueError("rope_delta and rope go together (the RoPE clamp): give both or neither")
    if rope is not None:
        rope_delta, rope = np.asarray(rope_delta), np.asarray(rope, dtype=np.float32)
        if rope_delta.shape != rows.shape:
            raise ValueError(f"rope_delta shape {rope_delta.shape} does not match rows {rows.shape}")
        if rope.ndim != 3 or rope.shape[1:] != (D // 2, 2) or D % 2:
            raise ValueError(f"rope shape {rope.shape} is not (P, D/2, 2) for D={D}")
        if rope_delta.size and (rope_delta.min() < 0 or rope_delta.max() >= rope.shape[0]):
            raise ValueError(f"rope_delta holds {int(rope_delta.min())}..{int(rope_delta.max())}, outside the "
                             f"table's [0, {rope.shape[0]})")
    scale = default_scale(D) if scale is None else float(scale)
    g = Hq // Hkv
    safe = np.where(valid, rows, 0).astype(np.int64)
    qf, kf, vf = q.astype(np.float64), k.astype(np.float64), v.astype(np.float64)
    out = np.empty((B, Hq, T, D), dtype=np.float64)
    for b in range(B):
        kg = kf[b][:, safe[b]]                                           # (Hkv, T, K, D)
        if rope is not None:
            kg = rotate(kg, rope[rope_delta[b].astype(np.int64)][None].astype(np.float64))
        vg = vf[b][:, safe[b]]
        kg, vg = np.repeat(kg, g, axis=0), np.repeat(vg, g, axis=0)      # (Hq, T, K, D)
        s = np.einsum("htd,htkd->htk", qf[b], kg) * scale                # (Hq, T, K)
        s = np.where(valid[b][None], s, -np.inf)
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        out[b] = np.einsum("htk,htkd->htd", p, vg)
    return out.astype(q.dtype)
