"""Triton sparse attention for wide plans: the structured part of each row (sinks, local window) as dense
block tiles masked from three numbers per row, the irregular rest (bonds, antecedents, strided keys) as
gathered-column tiles, one online softmax across both. Forward, backward (dq; dk/dv) and decode.

Layout (kernels/plan_split.py, derived from the plan rows; the contract does not change): per query block of
BQ=64 rows, the structured key blocks (sink blocks + window blocks) and the sorted union of its rows'
irregular keys in chunks of 64, with a membership word per (row, chunk). Per row: ns, lo, hi (sinks [0, ns),
window [lo, hi]).
- forward: program per (query tile, head): loop 1 over the structured key blocks, tl.dot tiles, mask
  (j < ns) | (lo <= j <= hi); loop 2 over the gathered chunks: K/V rows loaded by index, mask from the word.
  Both feed one online softmax (exp2), LSE saved.
- backward: kernel 1 (per query tile, head) recomputes p over both loops, accumulates dq, and adds the
  gathered chunks' dk/dv into fp32 buffers with atomics (those keys are arbitrary positions); kernel 2 (per
  key block, K/V head, as layout.py's transpose) accumulates the structured dk/dv over the query blocks that
  list the key block (GQA heads in one program), adds kernel 1's buffers and stores. Key blocks in every
  query block's list (sinks) are split over several programs with fp32 atomics, as in triton_sparse.py.
- decode (few queries, no layout): program per (query, K/V head) reads the row, finds ns / lo / hi with two
  reductions, loads the sinks and the window as contiguous ranges and gathers only the rest.
The narrow kernels (kernels/triton_sparse.py) stay the path for narrow plans; `sparse_attention_auto`
chooses per plan (plan_split.WIDE_MIN_STRUCTURED). Tests: tests/test_kernels_wide.py.
"""
from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from .layout import LayoutCache
from .plan_split import WideLayout, build_wide_layout
from .triton_sparse import (DECODE_CONFIGS, DECODE_MAX_Q, DKDV_CHUNK, LOG2E, TILE_CONFIGS, _bucket,
                            _check, _chunks_fit_row, _grad_rows, _members, _p_ds, _prec, _rows,
                            _softmax_step, _store_rows, _strides, _tiles_fit_layout, _tune_bench,
                            sparse_attention_triton)

BQ, BK = 64, 64
WIDE_DECODE_MIN_K = 128       # decode rows at least this wide use the wide decode kernel
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# the interpreter (CPU tests) cannot time configs: one config each there
W_TILE_CONFIGS = TILE_CONFIGS[:1] if _INTERPRET else TILE_CONFIGS
W_DECODE_CONFIGS = DECODE_CONFIGS[:1] if _INTERPRET else DECODE_CONFIGS


@triton.jit
def _structured_keep(kpos, ns, lo, hi):
    """(M, BK) bool: key kpos is in the row's sinks [0, ns) or its window [lo, hi]."""
    return (kpos[None, :] < ns[:, None]) | ((kpos[None, :] >= lo[:, None]) & (kpos[None, :] <= hi[:, None]))


@triton.jit
def _wide_prologue(Q, NS, LO, HI, sqb, sqh, sqn, Hq, G, Nq, BLOCK_M: tl.constexpr, LQ: tl.constexpr,
                   D: tl.constexpr):
    pid_q = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // Hq
    h = pid_bh % Hq
    offs_m = pid_q * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    row_ok = offs_m < Nq
    q = _rows(Q + b * sqb + h * sqh, offs_m, sqn, offs_d, row_ok)
    ns = tl.load(NS + b * Nq + offs_m, mask=row_ok, other=0)
    lo = tl.load(LO + b * Nq + offs_m, mask=row_ok, other=1)
    hi = tl.load(HI + b * Nq + offs_m, mask=row_ok, other=0)            # lo > hi: empty window
    qb = pid_q * BLOCK_M // LQ
    return pid_bh, b, h, h // G, offs_m, offs_d, row_ok, q, ns, lo, hi, qb


# ----------------------------------------------------------------------------------------------- forward
@triton.autotune(configs=W_TILE_CONFIGS, key=["D", "US", "C", "ROWS"], do_bench=_tune_bench,
                 prune_configs_by={"early_config_prune": _tiles_fit_layout})
@triton.jit
def _wide_fwd_kernel(Q, K, V, O, LSE, NS, LO, HI, KB, KBCNT, UX, UXCNT, XBITS,
                     sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sob, soh, son,
                     Hq, G, Nq, Nk, US, C, NQB, ROWS, qk_scale,
                     LQ: tl.constexpr, BLOCK_K: tl.constexpr, D: tl.constexpr, PREC: tl.constexpr,
                     BLOCK_M: tl.constexpr):
    pid_bh, b, h, hk, offs_m, offs_d, row_ok, q, ns, lo, hi, qb = _wide_prologue(
        Q, NS, LO, HI, sqb, sqh, sqn, Hq, G, Nq, BLOCK_M, LQ, D)
    kbase = K + b * skb + hk * skh
    vbase = V + b * svb + hk * svh
    offs_n = tl.arange(0, BLOCK_K)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    scnt = tl.load(KBCNT + b * NQB + qb)
    for j in range(0, scnt):                                         # structured: dense tiles
        kpos = tl.load(KB + (b * NQB + qb) * US + j) * BLOCK_K + offs_n
        k_ok = kpos < Nk
        k = _rows(kbase, kpos, skn, offs_d, k_ok)
        v = _rows(vbase, kpos, svn, offs_d, k_ok)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
        keep = _structured_keep(kpos, ns, lo, hi)
        m_i, l_i, acc = _softmax_step(tl.where(keep, s, float("-inf")), v, m_i, l_i, acc, PREC)
    xcnt = tl.load(UXCNT + b * NQB + qb)
    ux_ptr = UX + (b * NQB + qb) * (C * BLOCK_K)
    bits_ptr = XBITS + (b * Nq + offs_m) * C
    for c in range(0, xcnt):                                         # irregular: gathered columns
        pos = tl.load(ux_ptr + c * BLOCK_K + offs_n)
        ok = pos >= 0
        safe = tl.where(ok, pos, 0).to(tl.int64)
        k = _rows(kbase, safe, skn, offs_d, ok)
        v = _rows(vbase, safe, svn, offs_d, ok)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
        keep = _members(tl.load(bits_ptr + c, mask=row_ok, other=0), offs_n)
        m_i, l_i, acc = _softmax_step(tl.where(keep, s, float("-inf")), v, m_i, l_i, acc, PREC)
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    _store_rows(O + b * sob + h * soh, offs_m, son, offs_d, row_ok, acc / l_safe[:, None])
    tl.store(LSE + pid_bh * Nq + offs_m, m_i + tl.log2(l_safe), mask=row_ok)


# ---------------------------------------------------------------------------------------------- backward
@triton.autotune(configs=W_TILE_CONFIGS, key=["D", "US", "C", "ROWS"], do_bench=_tune_bench,
                 reset_to_zero=["DKX", "DVX"], prune_configs_by={"early_config_prune": _tiles_fit_layout})
@triton.jit
def _wide_bwd_dq_kernel(Q, K, V, DO, DQ, DKX, DVX, LSE, DELTA, NS, LO, HI, KB, KBCNT, UX, UXCNT, XBITS,
                        sqb, sqh, sqn, skb, skh, skn, svb, svh, svn,
                        Hq, G, Nq, Nk, US, C, NQB, ROWS, qk_scale, sm_scale,
                        LQ: tl.constexpr, BLOCK_K: tl.constexpr, D: tl.constexpr, PREC: tl.constexpr,
                        BLOCK_M: tl.constexpr):
    # DO, DQ contiguous (B, Hq, Nq, D); DKX, DVX fp32 contiguous (B, Hkv, Nk, D), zeroed, accumulated here
    # with atomics (the gathered chunks' dk/dv; reset_to_zero keeps autotuning from double counting)
    pid_bh, b, h, hk, offs_m, offs_d, row_ok, q, ns, lo, hi, qb = _wide_prologue(
        Q, NS, LO, HI, sqb, sqh, sqn, Hq, G, Nq, BLOCK_M, LQ, D)
    kbase = K + b * skb + hk * skh
    vbase = V + b * svb + hk * svh
    do, lse, delta = _grad_rows(DO, LSE, DELTA, pid_bh, offs_m, row_ok, offs_d, Nq, D)
    offs_n = tl.arange(0, BLOCK_K)
    dq = tl.zeros([BLOCK_M, D], tl.float32)
    scnt = tl.load(KBCNT + b * NQB + qb)
    for j in range(0, scnt):
        kpos = tl.load(KB + (b * NQB + qb) * US + j) * BLOCK_K + offs_n
        k_ok = kpos < Nk
        k = _rows(kbase, kpos, skn, offs_d, k_ok)
        v = _rows(vbase, kpos, svn, offs_d, k_ok)
        _, ds = _p_ds(q, k, v, do, lse, delta, _structured_keep(kpos, ns, lo, hi), qk_scale, PREC)
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PREC)
    xcnt = tl.load(UXCNT + b * NQB + qb)
    ux_ptr = UX + (b * NQB + qb) * (C * BLOCK_K)
    bits_ptr = XBITS + (b * Nq + offs_m) * C
    dkv_base = (b * (Hq // G) + hk) * Nk
    for c in range(0, xcnt):
        pos = tl.load(ux_ptr + c * BLOCK_K + offs_n)
        ok = pos >= 0
        safe = tl.where(ok, pos, 0).to(tl.int64)
        k = _rows(kbase, safe, skn, offs_d, ok)
        v = _rows(vbase, safe, svn, offs_d, ok)
        keep = _members(tl.load(bits_ptr + c, mask=row_ok, other=0), offs_n)
        p, ds = _p_ds(q, k, v, do, lse, delta, keep, qk_scale, PREC)
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PREC)
        dk = tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PREC) * sm_scale    # (BK, D)
        dv = tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PREC)
        out = (dkv_base + safe[:, None]) * D + offs_d[None, :]
        tl.atomic_add(DKX + out, dk, mask=ok[:, None])
        tl.atomic_add(DVX + out, dv, mask=ok[:, None])
    _store_rows(DQ + pid_bh * Nq * D, offs_m, D, offs_d, row_ok, dq * sm_scale)


@triton.autotune(configs=W_TILE_CONFIGS, key=["D", "US", "G", "ROWS"], do_bench=_tune_bench,
                 reset_to_zero=["DK", "DV"], prune_configs_by={"early_config_prune": _tiles_fit_layout})
@triton.jit
def _wide_bwd_dkdv_kernel(Q, K, V, DO, DK, DV, DKX, DVX, LSE, DELTA, NS, LO, HI, QBPTR, QBIDX,
                          sqb, sqh, sqn, skb, skh, skn, svb, svh, svn,
                          Hq, Hkv, G, Nq, Nk, US, NKB, NT, ROWS, qk_scale, sm_scale,
                          LQ: tl.constexpr, BLOCK_K: tl.constexpr, D: tl.constexpr, PREC: tl.constexpr,
                          CH: tl.constexpr, ATOMIC: tl.constexpr, BLOCK_M: tl.constexpr):
    # structured dk/dv of one key block over the query blocks listing it; adds DKX/DVX (read only here)
    pid_k = tl.program_id(0)
    pid_bh = tl.program_id(1)                       # over B * Hkv
    pid_s = tl.program_id(2)
    b = pid_bh // Hkv
    hk = pid_bh % Hkv
    offs_n = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_d = tl.arange(0, D)
    k_ok = offs_n < Nk
    k = _rows(K + b * skb + hk * skh, offs_n, skn, offs_d, k_ok)
    v = _rows(V + b * svb + hk * svh, offs_n, svn, offs_d, k_ok)
    dk = tl.zeros([BLOCK_K, D], tl.float32)
    dv = tl.zeros([BLOCK_K, D], tl.float32)
    seg_lo = tl.load(QBPTR + b * (NKB + 1) + pid_k)
    seg_hi = tl.load(QBPTR + b * (NKB + 1) + pid_k + 1)
    start = seg_lo + pid_s * CH
    end = tl.minimum(seg_hi, start + CH)
    for hg in range(0, G):
        h = hk * G + hg
        bh = b * Hq + h
        qbase = Q + b * sqb + h * sqh
        for i in range(start, end):
            qb = tl.load(QBIDX + b * NT + i)
            for sub in tl.static_range(LQ // BLOCK_M):
                offs_m = qb * LQ + sub * BLOCK_M + tl.arange(0, BLOCK_M)
                row_ok = offs_m < Nq
                q = _rows(qbase, offs_m, sqn, offs_d, row_ok)
                do, lse, delta = _grad_rows(DO, LSE, DELTA, bh, offs_m, row_ok, offs_d, Nq, D)
                ns = tl.load(NS + b * Nq + offs_m, mask=row_ok, other=0)
                lo = tl.load(LO + b * Nq + offs_m, mask=row_ok, other=1)
                hi = tl.load(HI + b * Nq + offs_m, mask=row_ok, other=0)
                keep = _structured_keep(offs_n, ns, lo, hi)
                p, ds = _p_ds(q, k, v, do, lse, delta, keep, qk_scale, PREC)
                dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PREC)
                dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PREC)
    out = (pid_bh * Nk + offs_n[:, None]) * D + offs_d[None, :]
    kmask = k_ok[:, None]
    dk = dk * sm_scale
    if ATOMIC:                                      # fp32 outputs, zeroed; split lists add with atomics
        if pid_s == 0:                              # one program per key block adds the gathered part
            dk += tl.load(DKX + out, mask=kmask, other=0.0)
            dv += tl.load(DVX + out, mask=kmask, other=0.0)
        if seg_hi - seg_lo > CH:
            # pid_s 0 is busy (the list is longer than CH); the comparison as a tensor for the interpreter
            busy = kmask & (tl.zeros_like(offs_n) + start < end)[:, None]
            tl.atomic_add(DK + out, dk, mask=busy)
            tl.atomic_add(DV + out, dv, mask=busy)
        else:
            first = kmask & (tl.zeros_like(offs_n) + pid_s == 0)[:, None]
            tl.store(DK + out, dk, mask=first)
            tl.store(DV + out, dv, mask=first)
    else:
        dk += tl.load(DKX + out, mask=kmask, other=0.0)
        dv += tl.load(DVX + out, mask=kmask, other=0.0)
        tl.store(DK + out, dk.to(DK.dtype.element_ty), mask=kmask)
        tl.store(DV + out, dv.to(DV.dtype.element_ty), mask=kmask)


# ------------------------------------------------------------------------------------------------ decode
@triton.autotune(configs=W_DECODE_CONFIGS, key=["D", "KWB", "GP"], do_bench=_tune_bench,
                 prune_configs_by={"early_config_prune": _chunks_fit_row})
@triton.jit
def _wide_decode_kernel(Q, K, V, O, KEYS,
                        sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sob, soh, son,
                        Hkv, G, Nq, KW, KWB, qk_scale,
                        GP: tl.constexpr, D: tl.constexpr, PREC: tl.constexpr, KP: tl.constexpr,
                        BC: tl.constexpr):
    pid = tl.program_id(0)                          # over B * Nq
    hk = tl.program_id(1)
    b = pid // Nq
    i = pid % Nq
    offs_g = tl.arange(0, GP)
    offs_c = tl.arange(0, BC)
    offs_d = tl.arange(0, D)
    g_ok = offs_g < G
    h = hk * G + offs_g
    q = _rows(Q + b * sqb + i * sqn, h, sqh, offs_d, g_ok)                  # (GP, D)
    kbase = K + b * skb + hk * skh
    vbase = V + b * svb + hk * svh
    # the row's split (plan_split.split_rows): two reductions over the row
    t = tl.arange(0, KP)
    row = tl.load(KEYS + pid * KW + t, mask=t < KW, other=-1)
    valid = row >= 0
    n = tl.sum(valid.to(tl.int32), 0)
    hi = tl.max(row, 0)
    ns = tl.sum((row == t).to(tl.int32), 0)
    run = tl.sum((valid & (row == hi - n + 1 + t)).to(tl.int32), 0)
    ns = tl.minimum(ns, n - run)
    lo = hi - run + 1
    m_i = tl.full([GP], float("-inf"), tl.float32)
    l_i = tl.zeros([GP], tl.float32)
    acc = tl.zeros([GP, D], tl.float32)
    for c in range(0, ns, BC):                       # sinks: contiguous rows
        pos = c + offs_c
        ok = pos < ns
        k = _rows(kbase, pos, skn, offs_d, ok)
        v = _rows(vbase, pos, svn, offs_d, ok)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
        m_i, l_i, acc = _softmax_step(tl.where(ok[None, :], s, float("-inf")), v, m_i, l_i, acc, PREC)
    for c in range(lo, hi + 1, BC):                  # window: contiguous rows
        pos = c + offs_c
        ok = pos <= hi
        k = _rows(kbase, pos.to(tl.int64), skn, offs_d, ok)
        v = _rows(vbase, pos.to(tl.int64), svn, offs_d, ok)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
        m_i, l_i, acc = _softmax_step(tl.where(ok[None, :], s, float("-inf")), v, m_i, l_i, acc, PREC)
    for c in range(ns, n - run, BC):                 # the rest: gathered
        slot = c + offs_c
        idx = tl.load(KEYS + pid * KW + slot, mask=slot < n - run, other=-1)
        ok = idx >= 0
        safe = tl.where(ok, idx, 0).to(tl.int64)
        k = _rows(kbase, safe, skn, offs_d, ok)
        v = _rows(vbase, safe, svn, offs_d, ok)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
        m_i, l_i, acc = _softmax_step(tl.where(ok[None, :], s, float("-inf")), v, m_i, l_i, acc, PREC)
    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    _store_rows(O + b * sob + i * son, h, soh, offs_d, g_ok, out)


# ------------------------------------------------------------------------------------------ functional API
def _grid(Nq, BH):
    return lambda meta: (triton.cdiv(Nq, meta["BLOCK_M"]), BH)


def _lay_args(lay: WideLayout):
    return (lay.ns, lay.lo, lay.hi, lay.kb, lay.kb_count, lay.ux, lay.ux_count, lay.xbits)


def wide_attention_fwd(q, k, v, lay: WideLayout, scale: float):
    """Returns out (B, Hq, Nq, D) and lse (B, Hq, Nq) float32 in log2 units."""
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    out = torch.empty_like(q)
    lse = torch.empty(B, Hq, Nq, dtype=torch.float32, device=q.device)
    nqb, US = lay.kb.shape[1], lay.kb.shape[2]
    _wide_fwd_kernel[_grid(Nq, B * Hq)](
        q, k, v, out, lse, *_lay_args(lay), *_strides(q, k, v, out),
        Hq, Hq // Hkv, Nq, Nk, US, lay.chunks, nqb, _bucket(B * Hq * Nq), scale * LOG2E,
        LQ=lay.block_q, BLOCK_K=lay.block_k, D=D, PREC=_prec(q.dtype))
    return out, lse


def wide_attention_bwd(q, k, v, out, lse, dout, lay: WideLayout, scale: float):
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    dout = dout.contiguous()
    delta = (dout.float() * out.float()).sum(-1)
    dq = torch.empty(B, Hq, Nq, D, dtype=q.dtype, device=q.device)
    dkx = torch.zeros(B, Hkv, Nk, D, dtype=torch.float32, device=k.device)
    dvx = torch.zeros_like(dkx)
    nqb, US = lay.kb.shape[1], lay.kb.shape[2]
    nkb, NT = lay.qb_ptr.shape[1] - 1, lay.qb_idx.shape[1]
    split = triton.cdiv(max(lay.max_segment(), 1), DKDV_CHUNK)
    acc_dt = torch.float32 if split > 1 else k.dtype
    alloc = torch.zeros if split > 1 else torch.empty
    dk = alloc(B, Hkv, Nk, D, dtype=acc_dt, device=k.device)
    dv = alloc(B, Hkv, Nk, D, dtype=acc_dt, device=v.device)
    common = _strides(q, k, v)
    rows = _bucket(B * Hq * Nq)
    _wide_bwd_dq_kernel[_grid(Nq, B * Hq)](
        q, k, v, dout, dq, dkx, dvx, lse, delta, *_lay_args(lay), *common,
        Hq, Hq // Hkv, Nq, Nk, US, lay.chunks, nqb, rows, scale * LOG2E, scale,
        LQ=lay.block_q, BLOCK_K=lay.block_k, D=D, PREC=_prec(q.dtype))
    _wide_bwd_dkdv_kernel[(nkb, B * Hkv, split)](
        q, k, v, dout, dk, dv, dkx, dvx, lse, delta, lay.ns, lay.lo, lay.hi, lay.qb_ptr, lay.qb_idx, *common,
        Hq, Hkv, Hq // Hkv, Nq, Nk, US, nkb, NT, rows, scale * LOG2E, scale,
        LQ=lay.block_q, BLOCK_K=lay.block_k, D=D, PREC=_prec(q.dtype), CH=DKDV_CHUNK, ATOMIC=split > 1)
    return dq, dk.to(k.dtype), dv.to(v.dtype)


def wide_attention_decode(q, k, v, keys, scale: float):
    """Few queries against a long cache, no layout: sinks and window as contiguous ranges, the rest gathered."""
    B, Hq, Nq, D = q.shape
    Hkv = k.shape[1]
    G = Hq // Hkv
    keys = keys.to(torch.int32).contiguous()
    out = torch.empty_like(q)
    KW = keys.shape[-1]
    _wide_decode_kernel[(B * Nq, Hkv)](
        q, k, v, out, keys, *_strides(q, k, v, out),
        Hkv, G, Nq, KW, triton.next_power_of_2(KW), scale * LOG2E,
        GP=max(16, triton.next_power_of_2(G)), D=D, PREC=_prec(q.dtype),
        KP=max(16, triton.next_power_of_2(KW)))
    return out


class _WideAttn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, lay, scale):
        out, lse = wide_attention_fwd(q, k, v, lay, scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.lay, ctx.scale = lay, scale
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        if ctx.lay.qb_ptr is None:
            raise RuntimeError("layout was built with transpose=False; backward needs the transposed lists")
        dq, dk, dv = wide_attention_bwd(q, k, v, out, lse, dout, ctx.lay, ctx.scale)
        return dq, dk, dv, None, None


def _build(keys, nk, transpose=True):
    return build_wide_layout(keys, nk, BQ, BK, transpose=transpose)


# one split + layout per plan tensor, shared by every layer and head (and the backward)
WIDE_LAYOUTS = LayoutCache(_build, size=4)


def wide_layout_for(keys: torch.Tensor, nk: int, transpose: bool = True) -> WideLayout:
    return WIDE_LAYOUTS.get(keys, nk, transpose=transpose)


def sparse_attention_wide(q, k, v, keys, scale=None, layout: WideLayout | None = None):
    """The wide kernels for any plan (whatever its split); same contract as kernels.sparse_attention."""
    _check(q, k, v, keys)
    scale = float(scale) if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    need_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if layout is None and not need_grad and q.shape[2] <= DECODE_MAX_Q:
        return wide_attention_decode(q, k, v, keys, scale)
    if layout is None or not layout.wide:
        layout = build_wide_layout(keys, k.shape[2], BQ, BK, transpose=need_grad, force=True)
    if need_grad:
        return _WideAttn.apply(q, k, v, layout, scale)
    return wide_attention_fwd(q, k, v, layout, scale)[0]


def sparse_attention_auto(q, k, v, keys, scale=None):
    """Dispatch (kernels.sparse_attention's Triton backend): the wide kernels for plans whose structured part
    is large (mean sinks + window keys per row >= plan_split.WIDE_MIN_STRUCTURED; decided once per plan
    tensor, cached), the narrow kernels (triton_sparse.py) otherwise, unchanged. Decode (Nq <= 16, no grad):
    the wide decode kernel for rows at least WIDE_DECODE_MIN_K wide, the narrow one otherwise."""
    need_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if not need_grad and q.shape[2] <= DECODE_MAX_Q:
        if keys.shape[-1] >= WIDE_DECODE_MIN_K:
            return sparse_attention_wide(q, k, v, keys, scale)
        return sparse_attention_triton(q, k, v, keys, scale)
    lay = wide_layout_for(keys, k.shape[2], transpose=need_grad)
    if not lay.wide:
        return sparse_attention_triton(q, k, v, keys, scale)
    return sparse_attention_wide(q, k, v, keys, scale, layout=lay)
