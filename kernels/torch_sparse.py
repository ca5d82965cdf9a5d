"""Portable O(N*K) sparse attention in plain torch, any device.

Gather the planned keys per query, chunked over queries so the live memory is O(chunk * K * D) per head,
never O(N^2). A custom autograd function recomputes the gathered scores chunk by chunk in backward,
so training keeps only q, k, v, the output and one float per (head, query) (the log-sum-exp).

RoPE clamp (ModelConfig.rope_clamp, ReRoPE-style): `rope_delta` (B, Nq, K) rotates each gathered key forward by
rope[delta] before scoring, so a key more than w tokens back is scored as if exactly w back (its cached key
was rotated at its true position; delta = distance - w, 0 for nearer keys: `rope_deltas`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

CHUNK = 1024


def _gather_rows(x, idx, Hkv):
    # x: (B, Hkv, Nk, D); idx: (B, C, K) -> (B, Hkv, C, K, D)
    B, C, K = idx.shape
    D = x.shape[-1]
    flat = idx.reshape(B, 1, C * K, 1).expand(B, Hkv, C * K, D)
    return torch.gather(x, 2, flat).view(B, Hkv, C, K, D)


def rope_deltas(q_pos: torch.Tensor, key_pos: torch.Tensor, w: int) -> torch.Tensor:
    """How far to rotate each planned key forward so none is scored more than w tokens back: q_pos (..., T),
    key_pos (..., T, K) token positions (-1 padded) -> (..., T, K) int64, max(0, q_pos - key_pos - w), 0 on
    padding. Scoring R(p) q . R(j + delta) k is scoring distance p - j - delta = min(p - j, w)."""
    d = (q_pos[..., None] - key_pos - w).clamp_min(0)
    return torch.where(key_pos >= 0, d, torch.zeros_like(d)).long()


def rotate(x: torch.Tensor, delta: torch.Tensor, rope: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """x (..., D) rotated like RoPE (interleaved pairs) by the angles of positions delta (x.shape[:-1],
    broadcastable, >= 0): rope (P, D/2, 2) cos/sin, model.rope_cache's table. inverse: by -delta. float32
    (float64 for float64 x). One complex multiplication (a real-arithmetic version was 5x slower on the CPU)."""
    dt = torch.float64 if x.dtype == torch.float64 else torch.float32
    r = torch.view_as_complex(rope.to(dt)[delta].contiguous())       # (..., D/2)
    xc = torch.view_as_complex(x.to(dt).reshape(*x.shape[:-1], -1, 2).contiguous())
    return torch.view_as_real(xc * (r.conj() if inverse else r)).flatten(-2)


def _chunk_scores(q, k, keys, s, e, scale, cdt, delta=None, rope=None):
    """Scores of queries [s, e): returns (B, Hkv, g, C, K) in cdt, masked, and the gathered keys (rotated
    by delta where given: see rope_deltas)."""
    B, Hq, _, D = q.shape
    Hkv = k.shape[1]
    g = Hq // Hkv
    idx = keys[:, s:e]                                               # (B, C, K)
    valid = idx >= 0
    safe = idx.clamp_min(0)
    C, K = idx.shape[1], idx.shape[2]
    kg = _gather_rows(k, safe, Hkv).to(cdt)                          # (B, Hkv, C, K, D)
    if delta is not None:
        kg = rotate(kg, delta[:, None, s:e], rope).to(cdt)
    qc = q[:, :, s:e].to(cdt).reshape(B, Hkv, g, C, D)               # (B, Hkv, g, C, D)
    att = torch.einsum("bhgcd,bhckd->bhgck", qc, kg) * scale         # (B, Hkv, g, C, K)
    att = att.masked_fill(~valid.view(B, 1, 1, C, K), float("-inf"))
    return att, safe, valid, kg, qc


class _SparseAttnTorch(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, keys, scale, chunk, delta, rope):
        B, Hq, Nq, D = q.shape
        Hkv = k.shape[1]
        cdt = torch.float64 if q.dtype == torch.float64 else torch.float32
        out = torch.empty_like(q)
        lse = torch.empty(B, Hq, Nq, dtype=cdt, device=q.device)
        for s in range(0, Nq, chunk):
            e = min(Nq, s + chunk)
            att, safe, _, _, _ = _chunk_scores(q, k, keys, s, e, scale, cdt, delta, rope)
            m = att.amax(-1, keepdim=True)                           # every row holds >= 1 key
            p = torch.exp(att - m)
            l = p.sum(-1, keepdim=True)
            vg = _gather_rows(v, safe, Hkv).to(cdt)                  # (B, Hkv, C, K, D)
            o = torch.einsum("bhgck,bhckd->bhgcd", p / l, vg)        # (B, Hkv, g, C, D)
            out[:, :, s:e] = o.reshape(B, Hq, e - s, D).to(q.dtype)
            lse[:, :, s:e] = (m + l.log()).squeeze(-1).reshape(B, Hq, e - s)
        ctx.save_for_backward(q, k, v, keys, out, lse)
        ctx.scale, ctx.chunk, ctx.delta, ctx.rope = scale, chunk, delta, rope
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, keys, out, lse = ctx.saved_tensors
        scale, chunk, rdelta, rope = ctx.scale, ctx.chunk, ctx.delta, ctx.rope
        B, Hq, Nq, D = q.shape
        Hkv, Nk = k.shape[1], k.shape[2]
        g = Hq // Hkv
        cdt = lse.dtype
        dq = torch.empty_like(q)
        dk = torch.zeros(B, Hkv, Nk, D, dtype=cdt, device=q.device)
        dv = torch.zeros_like(dk)
        delta = (dout.to(cdt) * out.to(cdt)).sum(-1)                  # (B, Hq, Nq)
        for s in range(0, Nq, chunk):
            e = min(Nq, s + chunk)
            C = e - s
            att, safe, valid, kg, qc = _chunk_scores(q, k, keys, s, e, scale, cdt, rdelta, rope)
            p = torch.exp(att - lse[:, :, s:e].reshape(B, Hkv, g, C, 1))  # (B, Hkv, g, C, K); 0 on padding
            vg = _gather_rows(v, safe, Hkv).to(cdt)
            do = dout[:, :, s:e].to(cdt).reshape(B, Hkv, g, C, D)
            dp = torch.einsum("bhgcd,bhckd->bhgck", do, vg)
            ds = p * (dp - delta[:, :, s:e].reshape(B, Hkv, g, C, 1)) * scale
            dq[:, :, s:e] = torch.einsum("bhgck,bhckd->bhgcd", ds, kg).reshape(B, Hq, C, D).to(q.dtype)
            dkg = torch.einsum("bhgck,bhgcd->bhckd", ds, qc)          # (B, Hkv, C, K, D)
            if rdelta is not None:                                    # back to the cached key's frame
                dkg = rotate(dkg, rdelta[:, None, s:e], rope, inverse=True).to(cdt)
            dvg = torch.einsum("bhgck,bhgcd->bhckd", p, do)
            K = safe.shape[-1]
            w = valid.to(cdt).view(B, 1, C * K, 1)                   # padding slots scatter nothing
            flat = safe.reshape(B, 1, C * K, 1).expand(B, Hkv, C * K, D)
            dk.scatter_add_(2, flat, dkg.reshape(B, Hkv, C * K, D) * w)
            dv.scatter_add_(2, flat, dvg.reshape(B, Hkv, C * K, D) * w)
        return dq, dk.to(k.dtype), dv.to(v.dtype), None, None, None, None, None


def sparse_attention_torch(q, k, v, keys, scale=None, chunk: int = CHUNK, rope_delta=None, rope=None):
    """q: (B, Hq, Nq, D); k, v: (B, Hkv, Nk, D); keys: (B, Nq, K) int. Returns (B, Hq, Nq, D).
    rope_delta (B, Nq, K) with rope (P, D/2, 2): the RoPE clamp (module docstring)."""
    scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    if rope_delta is not None:
        rope_delta = rope_delta.long().to(q.device)
        rope = rope.float().to(q.device)
    return _SparseAttnTorch.apply(q, k, v, keys.long(), float(scale), int(chunk), rope_delta, rope)


@dataclass(frozen=True)
class UnionClamp:
    """A chunk's RoPE clamp over its union (UnionPlan.clamp): the union's columns holding a far key, which of
    their pairs are far, and the plan as an additive mask (0 planned, -inf not)."""
    q_pos: torch.Tensor     # (T,) query positions
    w: int
    cols: torch.Tensor      # (Uf,) int64
    far: torch.Tensor       # (T, Uf) bool
    base: torch.Tensor      # (T, U) float32


# ---- the union layout: a chunk of plan rows as one masked dense attention (CPU prefill) ------------
@dataclass(frozen=True)
class UnionPlan:
    """A chunk's plan rows as one (T, |U|) mask over the union U of the cache slots they select. On CPU a
    prefill chunk attends mostly to itself plus a few hundred earlier keys (sinks, sentence, antecedents),
    so one masked SDPA over U beats T*K gathers; the softmax runs over exactly the planned keys (masked
    entries contribute exact zeros), so the result equals sparse_attention's."""
    slots: torch.Tensor     # (U,) int64, ascending
    mask: torch.Tensor      # (T, U) bool
    pos: torch.Tensor | None = None   # (U,) int64 token position of each slot (the RoPE clamp needs it)

    @classmethod
    def from_rows(cls, rows: np.ndarray, device=None, positions: np.ndarray | None = None) -> "UnionPlan":
        """rows: (T, K) slots, -1 padded (one sequence); positions: the same rows as token positions."""
        valid = rows >= 0
        U = np.unique(rows[valid])                                       # sorted slots
        loc = np.searchsorted(U, np.where(valid, rows, U[0]))            # (T, K) index into U
        mask = np.zeros((rows.shape[0], len(U)), dtype=bool)
        mask[np.nonzero(valid)[0], loc[valid]] = True
        pos = None
        if positions is not None:
            upos = np.empty(len(U), dtype=np.int64)
            upos[loc[valid]] = np.asarray(positions)[valid]             # a slot holds one position
            pos = torch.from_numpy(upos).to(device)
        return cls(torch.from_numpy(U.astype(np.int64)).to(device), torch.from_numpy(mask).to(device), pos)

    def clamp(self, q_pos: torch.Tensor, w: int) -> "UnionClamp | None":
        """What union_attention needs for the RoPE clamp, computed once per chunk for every layer; None when no
        planned key is more than w back."""
        far = self.mask & (q_pos[:, None] - self.pos[None, :] > w)       # (T, U) planned pairs more than w back
        cols = torch.nonzero(far.any(0)).squeeze(1)                      # (Uf,) columns holding a far pair
        if not len(cols):
            return None
        base = torch.zeros(self.mask.shape, dtype=torch.float32, device=self.mask.device)
        base.masked_fill_(~self.mask, float("-inf"))
        return UnionClamp(q_pos, w, cols, far[:, cols], base)


    @staticmethod
    def worth_it(rows: np.ndarray) -> bool:
        """Whether the union is small enough to beat the gathers (it is not for e.g. mode random)."""
        return len(np.unique(rows[rows >= 0])) <= 2 * len(rows) + 1024


def union_attention(q, k, v, plan: UnionPlan, clamp: UnionClamp | None = None, rope=None):
    """q: (1, Hq, T, D); k, v: (1, Hkv, S, D) the cache; returns (1, Hq, T, D) in q's dtype. clamp (UnionPlan.clamp)
    and rope: the RoPE clamp. Its far pairs enter as an additive mask holding the change of their score, so the
    union stays one SDPA; the far scores are (R(w) q_raw) . k_raw, two small matmuls over the columns holding a
    far key (q turned back by p - w, each of those keys by its own position)."""
    ku, vu = k.index_select(2, plan.slots), v.index_select(2, plan.slots)   # (1, Hkv, |U|, D)
    mask = plan.mask
    if clamp is not None:
        Hq, Hkv, T, D = q.shape[1], k.shape[1], q.shape[2], q.shape[-1]
        c, rope = clamp, rope.float()
        kc = ku[0][:, c.cols].float()                                     # (Hkv, Uf, D) at their positions
        kraw = rotate(kc, plan.pos[c.cols], rope, inverse=True)
        qf = q[0].float().view(Hkv, Hq // Hkv, T, D)
        qw = rotate(qf, (c.q_pos - c.w).clamp_min(0), rope, inverse=True)   # R(w - p) q = R(w) q_raw
        change = (torch.einsum("hgtd,hud->hgtu", qw, kraw) - torch.einsum("hgtd,hud->hgtu", qf, kc)) * D ** -0.5
        bias = c.base.expand(Hq, -1, -1).clone()                         # (Hq, T, U)
        bias[:, :, c.cols] += torch.where(c.far, change.reshape(Hq, T, -1), 0.0)
        mask = bias[None].to(q.dtype)                                     # (1, Hq, T, U)
    return F.scaled_dot_product_attention(q, ku.to(q.dtype), vu.to(q.dtype), attn_mask=mask,
                                          enable_gqa=q.shape[1] != k.shape[1])
