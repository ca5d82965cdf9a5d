"""Portable O(N*K) sparse attention in plain torch: gather the planned keys per query, chunked over
queries so memory stays O(chunk * K * D) per head, never O(N^2)."""
from __future__ import annotations

import math

import torch


def sparse_attention_torch(q, k, v, keys, scale=None, chunk: int = 1024):
    B, Hq, Nq, D = q.shape
    Hkv = k.shape[1]
    g = Hq // Hkv
    scale = scale if scale is not None else 1.0 / math.sqrt(D)
    keys = keys.long()
    out = torch.empty_like(q)
    for s in range(0, Nq, chunk):
        e = min(Nq, s + chunk)
        idx = keys[:, s:e]                                # (B, C, K)
        valid = idx >= 0
        safe = idx.clamp_min(0)
        C, K = idx.shape[1], idx.shape[2]
        flat = safe.reshape(B, 1, C * K, 1).expand(B, Hkv, C * K, D)
        kg = torch.gather(k, 2, flat).view(B, Hkv, 1, C, K, D)   # (B, Hkv, 1, C, K, D)
        vg = torch.gather(v, 2, flat).view(B, Hkv, 1, C, K, D)
        qc = q[:, :, s:e].reshape(B, Hkv, g, C, 1, D)            # (B, Hkv, g, C, 1, D)
        att = (qc.float() * kg.float()).sum(-1) * scale          # (B, Hkv, g, C, K)
        att = att.masked_fill(~valid.view(B, 1, 1, C, K), float("-inf"))
        p = torch.softmax(att, dim=-1)
        o = (p.unsqueeze(-1) * vg.float()).sum(-2)               # (B, Hkv, g, C, D)
        out[:, :, s:e] = o.reshape(B, Hq, C, D).to(q.dtype)
    return out
