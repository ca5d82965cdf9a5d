"""The exported sparse-attention op: one contract shared by the ONNX export, the ONNX Runtime kernel
(exporters/onnx/csrc) and the TensorRT-RTX plugin (exporters/tensorrt). See shared DESIGN.md.

Node  asa.SparseAttention (domain "asa", opset_import asa:1)
  inputs   q       (B, Hq, T, D)   float32 | float16
           k_cache (B, Hkv, S, D)  same dtype as q
           v_cache (B, Hkv, S, D)  same dtype as q
           rows    (B, T, K)       int32 cache slots, ascending, -1 padded at the end, >= 1 valid per row
  attr     scale   float, default 1/sqrt(D) when absent
  output   out     (B, Hq, T, D)   same dtype as q
GQA: query head h reads kv head h // (Hq // Hkv).
out[b, h, t] = sum_j softmax_j(scale * q[b,h,t] . k[b,hk,rows[b,t,j]]) * v[b,hk,rows[b,t,j]] over valid j.
The torch reference is kernels/torch_sparse.sparse_attention_torch; this numpy one must agree with it.
"""
from __future__ import annotations

import math

import numpy as np

DOMAIN = "asa"
OP_TYPE = "SparseAttention"
VERSION = 1
INPUT_NAMES = ("q", "k_cache", "v_cache", "rows")
OUTPUT_NAMES = ("out",)
ATTR_SCALE = "scale"
# TensorRT plugin identity: name, version, namespace = op type, version, domain (the ONNX parser maps it)
TRT_PLUGIN_NAME, TRT_PLUGIN_VERSION, TRT_PLUGIN_NAMESPACE = OP_TYPE, str(VERSION), DOMAIN


def default_scale(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)


def reference(q, k, v, rows, scale=None):
    """numpy reference. q: (B, Hq, T, D); k, v: (B, Hkv, S, D); rows: (B, T, K) int, -1 padded.
    Computes in float64, returns q's dtype. Raises ValueError on a contract violation."""
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
    scale = default_scale(D) if scale is None else float(scale)
    g = Hq // Hkv
    safe = np.where(valid, rows, 0).astype(np.int64)
    qf, kf, vf = q.astype(np.float64), k.astype(np.float64), v.astype(np.float64)
    out = np.empty((B, Hq, T, D), dtype=np.float64)
    for b in range(B):
        kg = kf[b][:, safe[b]]                                           # (Hkv, T, K, D)
        vg = vf[b][:, safe[b]]
        kg, vg = np.repeat(kg, g, axis=0), np.repeat(vg, g, axis=0)      # (Hq, T, K, D)
        s = np.einsum("htd,htkd->htk", qf[b], kg) * scale                # (Hq, T, K)
        s = np.where(valid[b][None], s, -np.inf)
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        out[b] = np.einsum("htk,htkd->htd", p, vg)
    return out.astype(q.dtype)
