"""Triton sparse attention for wide plans: the structured part of each row (sinks, local window) as dense
block tiles masked from three numbers per row, the irregular rest (bonds, antecedents, strided keys) as
gathered-column tiles, one online softmax across both. Forward and backward (dq; dk/dv); decode stays on
the narrow decode kernel (a wide one measured 2x slower on the H200 and was removed).

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
from . import plan_split
from .plan_split import WideLayout
from .triton_sparse import (DECODE_MAX_Q, DKDV_CHUNK, LOG2E, TILE_CONFIGS, _bucket, _cfg,
                            _check, _grad_rows, _members, _p_ds, bwd_delta, _prec, _rows,
                            _softmax_step, _store_rows, _strides, _tiles_fit_layout, _tune_bench,
                            sparse_attention_triton)

BQ, BK = 64, 64
LAYOUT_MAXNREG = int(os.environ.get("ASA_WIDE_LAYOUT_MAXNREG", "128")) or None  # 0: uncapped
FUSED_MAX_D = 64              # backward: the dq kernel adds the gathered dk/dv up to this D (spills above)
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# the interpreter (CPU tests) cannot time configs: one config each there
W_TILE_CONFIGS = TILE_CONFIGS[:1] if _INTERPRET else TILE_CONFIGS
# the forward's loops are short (~6 tiles per program at 16k): deeper pipelining is tried as well
W_FWD_CONFIGS = W_TILE_CONFIGS if _INTERPRET else TILE_CONFIGS + [
    _cfg(4, 3, BLOCK_M=64), _cfg(8, 3, BLOCK_M=64), _cfg(4, 3, BLOCK_M=32), _cfg(2, 2, BLOCK_M=32)]


@triton.jit
def _structured_keep(kpos, ns, lo, hi):
    """(M, BK) bool: key kpos is in the row's sinks [0, ns) or its window [lo, hi]."""
    return (kpos[None, :] < ns[:, None]) | ((kpos[None, :] >= lo[:, None]) & (kpos[None, :] <= hi[:, None]))


@triton.jit
def _structured_blocks(SB, WB, KBCNT, blk):
    """A query block's structured key blocks: j < count, block j (sinks 0..sb-1) or wb + j - sb (window)."""
    nsb = tl.load(SB + blk)
    return tl.load(KBCNT + blk), nsb, tl.load(WB + blk) - nsb


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
@triton.autotune(configs=W_FWD_CONFIGS, key=["D", "C", "ROWS"], do_bench=_tune_bench,
                 prune_configs_by={"early_config_prune": _tiles_fit_layout})
@triton.jit
def _wide_fwd_kernel(Q, K, V, O, LSE, NS, LO, HI, SB, WB, KBCNT, UX, UXCNT, XBITS,
                     sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sob, soh, son,
                     Hq, G, Nq, Nk, C, NQB, ROWS, qk_scale,
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
    scnt, nsb, shift = _structured_blocks(SB, WB, KBCNT, b * NQB + qb)
    for j in range(0, scnt):                                         # structured: dense tiles
        kpos = (j + shift * (j >= nsb).to(tl.int32)) * BLOCK_K + offs_n
        k_ok = kpos < Nk
        k = _rows(kbase, kpos, skn, offs_d, k_ok)
        v = _rows(vbase, kpos, svn, offs_d, k_ok)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
        keep = _structured_keep(kpos, ns, lo, hi)
        m_i, l_i, acc = _softmax_step(tl.where(keep, s, float("-inf")), v, m_i, l_i, acc, PREC)
    xcnt = tl.load(UXCNT + b * NQB + qb)
    ux_ptr = UX + (b * NQB + qb) * (C * BLOCK_K)
    bits_ptr = XBITS + (b * NQB + qb).to(tl.int64) * C * LQ + (offs_m - qb * LQ)
    for c in range(0, xcnt):                                         # irregular: gathered columns
        pos = tl.load(ux_ptr + c * BLOCK_K + offs_n)
        ok = pos >= 0
        safe = tl.where(ok, pos, 0).to(tl.int64)
        k = _rows(kbase, safe, skn, offs_d, ok)
        v = _rows(vbase, safe, svn, offs_d, ok)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
        keep = _members(tl.load(bits_ptr + c * LQ, mask=row_ok, other=0), offs_n)
        m_i, l_i, acc = _softmax_step(tl.where(keep, s, float("-inf")), v, m_i, l_i, acc, PREC)
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    _store_rows(O + b * sob + h * soh, offs_m, son, offs_d, row_ok, acc / l_safe[:, None])
    tl.store(LSE + pid_bh * Nq + offs_m, m_i + tl.log2(l_safe), mask=row_ok)


# ---------------------------------------------------------------------------------------------- backward
@triton.autotune(configs=W_TILE_CONFIGS, key=["D", "C", "ROWS", "GATHER_DKDV"], do_bench=_tune_bench,
                 reset_to_zero=["DKX", "DVX"], prune_configs_by={"early_config_prune": _tiles_fit_layout})
@triton.jit
def _wide_bwd_dq_kernel(Q, K, V, DO, DQ, DKX, DVX, LSE, DELTA, NS, LO, HI, SB, WB, KBCNT, UX, UXCNT,
                        XBITS, sqb, sqh, sqn, skb, skh, skn, svb, svh, svn,
                        Hq, G, Nq, Nk, C, NQB, ROWS, qk_scale, sm_scale,
                        LQ: tl.constexpr, BLOCK_K: tl.constexpr, D: tl.constexpr, PREC: tl.constexpr,
                        GATHER_DKDV: tl.constexpr, BLOCK_M: tl.constexpr):
    # DO, DQ contiguous (B, Hq, Nq, D); DKX, DVX fp32 contiguous (B, Hkv, Nk, D), zeroed. GATHER_DKDV: also
    # add the gathered chunks' dk/dv there with atomics (reset_to_zero keeps autotuning from double
    # counting); else _wide_bwd_xdkdv_kernel does (fewer live registers: no spills at D=128)
    pid_bh, b, h, hk, offs_m, offs_d, row_ok, q, ns, lo, hi, qb = _wide_prologue(
        Q, NS, LO, HI, sqb, sqh, sqn, Hq, G, Nq, BLOCK_M, LQ, D)
    kbase = K + b * skb + hk * skh
    vbase = V + b * svb + hk * svh
    do, lse, delta = _grad_rows(DO, LSE, DELTA, pid_bh, offs_m, row_ok, offs_d, Nq, D)
    offs_n = tl.arange(0, BLOCK_K)
    dq = tl.zeros([BLOCK_M, D], tl.float32)
    scnt, nsb, shift = _structured_blocks(SB, WB, KBCNT, b * NQB + qb)
    for j in range(0, scnt):
        kpos = (j + shift * (j >= nsb).to(tl.int32)) * BLOCK_K + offs_n
        k_ok = kpos < Nk
        k = _rows(kbase, kpos, skn, offs_d, k_ok)
        v = _rows(vbase, kpos, svn, offs_d, k_ok)
        _, ds = _p_ds(q, k, v, do, lse, delta, _structured_keep(kpos, ns, lo, hi), qk_scale, PREC)
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PREC)
    xcnt = tl.load(UXCNT + b * NQB + qb)
    ux_ptr = UX + (b * NQB + qb) * (C * BLOCK_K)
    bits_ptr = XBITS + (b * NQB + qb).to(tl.int64) * C * LQ + (offs_m - qb * LQ)
    dkv_base = (b * (Hq // G) + hk) * Nk
    for c in range(0, xcnt):
        pos = tl.load(ux_ptr + c * BLOCK_K + offs_n)
        ok = pos >= 0
        safe = tl.where(ok, pos, 0).to(tl.int64)
        k = _rows(kbase, safe, skn, offs_d, ok)
        v = _rows(vbase, safe, svn, offs_d, ok)
        keep = _members(tl.load(bits_ptr + c * LQ, mask=row_ok, other=0), offs_n)
        p, ds = _p_ds(q, k, v, do, lse, delta, keep, qk_scale, PREC)
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PREC)
        if GATHER_DKDV:
            _gathered_dkdv(DKX, DVX, dkv_base, safe, ok, offs_d, q, do, p, ds, sm_scale, D, PREC)
    _store_rows(DQ + pid_bh * Nq * D, offs_m, D, offs_d, row_ok, dq * sm_scale)


@triton.jit
def _gathered_dkdv(DKX, DVX, dkv_base, safe, ok, offs_d, q, do, p, ds, sm_scale, D: tl.constexpr,
                   PREC: tl.constexpr):
    """Add a gathered chunk's dk = ds^T q and dv = p^T do (BK, D) into rows `safe` of the fp32 buffers;
    dk, then dv, each added as soon as made, so the two tiles are not live at once."""
    out = (dkv_base + safe[:, None]) * D + offs_d[None, :]
    tl.atomic_add(DKX + out, tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PREC) * sm_scale,
                  mask=ok[:, None], sem="relaxed")
    tl.atomic_add(DVX + out, tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PREC), mask=ok[:, None],
                  sem="relaxed")


@triton.autotune(configs=W_TILE_CONFIGS, key=["D", "C", "ROWS"], do_bench=_tune_bench,
                 reset_to_zero=["DKX", "DVX"], prune_configs_by={"early_config_prune": _tiles_fit_layout})
@triton.jit
def _wide_bwd_xdkdv_kernel(Q, K, V, DO, DKX, DVX, LSE, DELTA, UX, UXCNT, XBITS,
                           sqb, sqh, sqn, skb, skh, skn, svb, svh, svn,
                           Hq, G, Nq, Nk, C, NQB, ROWS, qk_scale, sm_scale,
                           LQ: tl.constexpr, BLOCK_K: tl.constexpr, D: tl.constexpr, PREC: tl.constexpr,
                           BLOCK_M: tl.constexpr):
    # the gathered chunks' dk/dv alone (p and ds recomputed), when the dq kernel does not add them
    pid_q = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // Hq
    h = pid_bh % Hq
    hk = h // G
    offs_m = pid_q * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    offs_n = tl.arange(0, BLOCK_K)
    row_ok = offs_m < Nq
    qb = pid_q * BLOCK_M // LQ
    xcnt = tl.load(UXCNT + b * NQB + qb)
    if xcnt > 0:
        q = _rows(Q + b * sqb + h * sqh, offs_m, sqn, offs_d, row_ok)
        do, lse, delta = _grad_rows(DO, LSE, DELTA, pid_bh, offs_m, row_ok, offs_d, Nq, D)
        kbase = K + b * skb + hk * skh
        vbase = V + b * svb + hk * svh
        ux_ptr = UX + (b * NQB + qb) * (C * BLOCK_K)
        bits_ptr = XBITS + (b * NQB + qb).to(tl.int64) * C * LQ + (offs_m - qb * LQ)
        dkv_base = (b * (Hq // G) + hk) * Nk
        for c in range(0, xcnt):
            pos = tl.load(ux_ptr + c * BLOCK_K + offs_n)
            ok = pos >= 0
            safe = tl.where(ok, pos, 0).to(tl.int64)
            k = _rows(kbase, safe, skn, offs_d, ok)
            v = _rows(vbase, safe, svn, offs_d, ok)
            keep = _members(tl.load(bits_ptr + c * LQ, mask=row_ok, other=0), offs_n)
            p, ds = _p_ds(q, k, v, do, lse, delta, keep, qk_scale, PREC)
            _gathered_dkdv(DKX, DVX, dkv_base, safe, ok, offs_d, q, do, p, ds, sm_scale, D, PREC)


@triton.autotune(configs=W_TILE_CONFIGS, key=["D", "G", "ROWS"], do_bench=_tune_bench,
                 restore_value=["DK", "DV"], prune_configs_by={"early_config_prune": _tiles_fit_layout})
@triton.jit
def _wide_bwd_dkdv_kernel(Q, K, V, DO, DK, DV, DKX, DVX, LSE, DELTA, NS, LO, HI, QBCNT, QBIDX,
                          sqb, sqh, sqn, skb, skh, skn, svb, svh, svn,
                          Hq, Hkv, G, Nq, Nk, NKB, NQB, ROWS, qk_scale, sm_scale,
                          LQ: tl.constexpr, BLOCK_K: tl.constexpr, D: tl.constexpr, PREC: tl.constexpr,
                          CH: tl.constexpr, ATOMIC: tl.constexpr, BLOCK_M: tl.constexpr):
    # structured dk/dv of one key block over the query blocks listing it, plus the gathered chunks' part:
    # ATOMIC (split lists): DK/DV are fp32 and already hold that part (the dq kernel added it there, so
    # autotuning restores them rather than zeroing them); else it is read from DKX/DVX
    pid_k = tl.program_id(0)
    pid_bh = tl.program_id(1)                       # over B * Hkv
    pid_s = tl.program_id(2)
    b = pid_bh // Hkv
    hk = pid_bh % Hkv
    offs_n = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_d = tl.arange(0, D)
    k_ok = offs_n < Nk
    # the query blocks listing this key block: qb_idx[b, kb, :cnt]; programs past the list load nothing
    # (the grid's split comes from the host bound nQB / CH, not from the lists: no sync)
    cnt = tl.load(QBCNT + b * NKB + pid_k)
    start = pid_s * CH
    end = tl.minimum(cnt, start + CH)
    live = k_ok & (tl.zeros_like(offs_n) + start < end)
    k = _rows(K + b * skb + hk * skh, offs_n, skn, offs_d, live)
    v = _rows(V + b * svb + hk * svh, offs_n, svn, offs_d, live)
    dk = tl.zeros([BLOCK_K, D], tl.float32)
    dv = tl.zeros([BLOCK_K, D], tl.float32)
    qlist = QBIDX + (b * NKB + pid_k).to(tl.int64) * NQB
    for hg in range(0, G):
        h = hk * G + hg
        bh = b * Hq + h
        qbase = Q + b * sqb + h * sqh
        for i in range(start, end):
            qb = tl.load(qlist + i)
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
    if ATOMIC:                                      # fp32 outputs holding the gathered part; split lists add
        if cnt > CH:
            # pid_s 0 is busy (the list is longer than CH); the comparison as a tensor for the interpreter
            busy = kmask & (tl.zeros_like(offs_n) + start < end)[:, None]
            tl.atomic_add(DK + out, dk, mask=busy, sem="relaxed")
            tl.atomic_add(DV + out, dv, mask=busy, sem="relaxed")
        else:                                       # one program: read-add-write, no other writer now
            first = kmask & (tl.zeros_like(offs_n) + pid_s == 0)[:, None]
            tl.store(DK + out, dk + tl.load(DK + out, mask=first, other=0.0), mask=first)
            tl.store(DV + out, dv + tl.load(DV + out, mask=first, other=0.0), mask=first)
    else:
        dk += tl.load(DKX + out, mask=kmask, other=0.0)
        dv += tl.load(DVX + out, mask=kmask, other=0.0)
        tl.store(DK + out, dk.to(DK.dtype.element_ty), mask=kmask)
        tl.store(DV + out, dv.to(DV.dtype.element_ty), mask=kmask)


# ------------------------------------------------------------------------------------------------ layout
@triton.jit
def _popc64(x):
    """Population count of int64 words (SWAR; arithmetic shifts are fine: the masks clear the sign bits)."""
    x = x - ((x >> 1) & 0x5555555555555555)
    x = (x & 0x3333333333333333) + ((x >> 2) & 0x3333333333333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0F
    return ((x * 0x0101010101010101) >> 56).to(tl.int32)


@triton.jit
def _extras(rbase, ns, e, x0, row_ok, XC: tl.constexpr):
    """(BQ, XC) columns x0.. of the rows' irregular parts (slots [ns, ns + e)), -1 where none, and the mask."""
    x = x0 + tl.arange(0, XC)
    ok = row_ok[:, None] & (x[None, :] < e[:, None])
    return tl.load(rbase[:, None] + ns[:, None] + x[None, :], mask=ok, other=-1), ok


@triton.jit
def _wide_layout_kernel(KEYS, NS, LO, HI, SB, WB, KBCNT, UX, UXCNT, XBITS, STATS, TAB, PREF,
                        Nq, KW, NQB, NKB, C,
                        BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, KP: tl.constexpr, XC: tl.constexpr,
                        TC: tl.constexpr):
    """One program per (query block, batch row), all loops bounded by the block's own data (no host caps):
    1. the rows' split (plan_split.split_rows) in one pass over the rows, and the block's structured blocks
       (sb, wb, count);
    2. the sorted union of the block's irregular keys without sorting: OR each key's bit into a per-(query
       block, key block) 64-bit word (TAB; only the key blocks between the block's smallest and largest
       irregular key are touched), prefix-sum the words' popcounts (PREF), then a key x's union slot is
       PREF[x // BK] + popcount(word & below-x bits): ux[slot] = x and the row's membership word of chunk
       slot // BK gets bit slot % BK. Work O(BQ * E + key-block span) per block.
    TAB and XBITS are combined with relaxed atomics (no fences; only this program touches its words, and
    tl.debug_barrier (bar.sync) orders them before the reads in the next phase, per the PTX memory model).
    The default acq_rel semantics cost a MEMBAR.GPU + L1 invalidate per atomic instruction (16 in the loops),
    the bulk of the first version's ~0.1 ms.
    STATS per block: (widest irregular part, chunks, structured keys summed, structured blocks)."""
    qb = tl.program_id(0)
    b = tl.program_id(1)
    BIG: tl.constexpr = 2147483647
    blk = b * NQB + qb
    offs_q = tl.arange(0, BLOCK_Q)
    rows = qb * BLOCK_Q + offs_q
    row_ok = rows < Nq
    rbase = KEYS + (b * Nq + rows).to(tl.int64) * KW
    # 1. the split in one pass, column chunks of KC (a (BQ, KP) tile would spill), unrolled so that the
    # chunks' loads are in flight together. Rows ascend and are distinct, so d = key[t] - t does not
    # decrease along the row and its last (largest) value is hi - n + 1: run = #{t: d == max d}, counted
    # online as (max so far, count of it); ns = #{t: key[t] == t}; n, hi as count and max
    KC: tl.constexpr = KP if KP < 32 else 32
    n = tl.zeros([BLOCK_Q], tl.int32)
    ns = tl.zeros([BLOCK_Q], tl.int32)
    hi = tl.full([BLOCK_Q], -1, tl.int32)
    dmax = tl.full([BLOCK_Q], -BIG, tl.int32)
    run = tl.zeros([BLOCK_Q], tl.int32)
    for c0 in tl.static_range(0, KP, KC):
        t = c0 + tl.arange(0, KC)
        key = tl.load(rbase[:, None] + t[None, :], mask=row_ok[:, None] & (t[None, :] < KW), other=-1)
        valid = key >= 0
        n += tl.sum(valid.to(tl.int32), 1)
        ns += tl.sum((key == t[None, :]).to(tl.int32), 1)
        hi = tl.maximum(hi, tl.max(key, 1))
        d = tl.where(valid, key - t[None, :], -BIG)
        dc = tl.max(d, 1)
        cc = tl.sum((valid & (d == dc[:, None])).to(tl.int32), 1)
        run = tl.where(dc > dmax, cc, tl.where(dc == dmax, run + cc, run))
        dmax = tl.maximum(dmax, dc)
    ns = tl.minimum(ns, n - run)
    lo = hi - run + 1
    tl.store(NS + b * Nq + rows, ns, mask=row_ok)
    tl.store(LO + b * Nq + rows, lo, mask=row_ok)
    tl.store(HI + b * Nq + rows, hi, mask=row_ok)
    # structured blocks: sink blocks [0, nsb), window blocks [wlo, whi]
    wlo = tl.min(tl.where(row_ok, lo, BIG), 0) // BLOCK_K
    whi = tl.max(tl.where(row_ok, hi, -1), 0) // BLOCK_K
    nsb = tl.minimum((tl.max(tl.where(row_ok, ns, 0), 0) + BLOCK_K - 1) // BLOCK_K, wlo)
    scount = nsb + whi - wlo + 1
    tl.store(SB + blk, nsb)
    tl.store(WB + blk, wlo)
    tl.store(KBCNT + blk, scount)
    # irregular rest: slots [ns, n - run) of each row, ascending: the block's smallest and largest are
    # two gathers (each row's first and last irregular key)
    e = tl.where(row_ok, n - run - ns, 0)
    emax = tl.max(e, 0)
    has = e > 0
    xfirst = tl.load(rbase + ns, mask=has, other=BIG)
    xlast = tl.load(rbase + ns + e - 1, mask=has, other=-1)
    k0 = tl.minimum(tl.min(xfirst, 0) // BLOCK_K, NKB)
    k1 = tl.max(xlast, 0) // BLOCK_K                                 # k0 > k1: no irregular keys
    tab = TAB + blk.to(tl.int64) * NKB
    pref = PREF + blk.to(tl.int64) * NKB
    offs_t = tl.arange(0, TC)
    for t0 in range(k0, k1 + 1, TC):
        tk = t0 + offs_t
        tl.store(tab + tk, tl.zeros([TC], tl.int64), mask=tk <= k1)
    tl.debug_barrier()
    one = tl.full([BLOCK_Q, XC], 1, tl.int64)
    for x0 in range(0, emax, XC):
        ex, ok = _extras(rbase, ns, e, x0, row_ok, XC)
        safe = tl.where(ok, ex, 0)
        tl.atomic_or(tab + safe // BLOCK_K, one << (safe % BLOCK_K).to(tl.int64), mask=ok,
                     sem="relaxed", scope="gpu")
    tl.debug_barrier()
    total = 0
    for t0 in range(k0, k1 + 1, TC):
        tk = t0 + offs_t
        m = tk <= k1
        pc = _popc64(tl.load(tab + tk, mask=m, other=0, cache_modifier=".cg"))
        tl.store(pref + tk, total + tl.cumsum(pc, 0) - pc, mask=m)
        total += tl.sum(pc, 0)
    nch = tl.minimum((total + BLOCK_K - 1) // BLOCK_K, C)
    ux = UX + blk.to(tl.int64) * C * BLOCK_K
    xb = XBITS + blk.to(tl.int64) * C * BLOCK_Q
    # the chunks in use: their membership words zeroed (contiguous: chunk-major), the last one's tail -1
    ZC: tl.constexpr = 4 * BLOCK_Q
    offs_z = tl.arange(0, ZC)
    for z0 in range(0, nch * BLOCK_Q, ZC):
        tl.store(xb + z0 + offs_z, tl.zeros([ZC], tl.int64), mask=z0 + offs_z < nch * BLOCK_Q)
    offs_k = tl.arange(0, BLOCK_K)
    pad = total + offs_k
    tl.store(ux + pad, tl.full([BLOCK_K], -1, tl.int32), mask=pad < nch * BLOCK_K)
    tl.debug_barrier()
    for x0 in range(0, emax, XC):
        ex, ok = _extras(rbase, ns, e, x0, row_ok, XC)
        safe = tl.where(ok, ex, 0)
        kx = tl.where(ok, safe // BLOCK_K, k0)
        w = tl.load(tab + kx, mask=ok, other=0, cache_modifier=".cg")
        base = tl.load(pref + kx, mask=ok, other=0, cache_modifier=".cg")
        below = w & ((one << (safe % BLOCK_K).to(tl.int64)) - 1)
        slot = base + _popc64(below)
        ok = ok & (slot < C * BLOCK_K)
        tl.store(ux + slot, ex, mask=ok)
        tl.atomic_or(xb + (slot // BLOCK_K) * BLOCK_Q + offs_q[:, None], one << (slot % BLOCK_K).to(tl.int64),
                     mask=ok, sem="relaxed", scope="gpu")
    tl.store(UXCNT + blk, nch)
    st = STATS + blk * 4
    tl.store(st, emax)
    tl.store(st + 1, nch)
    tl.store(st + 2, tl.sum(tl.where(row_ok, ns + run, 0), 0))
    tl.store(st + 3, scount)


@triton.jit
def _wide_transpose_kernel(SB, WB, KBCNT, QBCNT, QBIDX, NQB, NKB, QC: tl.constexpr):
    """One program per (key block, batch row): the query blocks whose structured list holds it, ascending,
    into its row of the (nKB, nQB) table (stream compaction with a cumsum), and their count."""
    kb = tl.program_id(0)
    b = tl.program_id(1)
    offs = tl.arange(0, QC)
    out = QBIDX + (b * NKB + kb).to(tl.int64) * NQB
    carry = 0
    for q0 in range(0, NQB, QC):
        qb = q0 + offs
        m = qb < NQB
        sb = tl.load(SB + b * NQB + qb, mask=m, other=0)
        wb = tl.load(WB + b * NQB + qb, mask=m, other=1)
        cnt = tl.load(KBCNT + b * NQB + qb, mask=m, other=0)
        member = m & ((kb < sb) | ((kb >= wb) & (kb < wb + cnt - sb)))
        mi = member.to(tl.int32)
        tl.store(out + carry + tl.cumsum(mi, 0) - mi, qb, mask=member)
        carry += tl.sum(mi, 0)
    tl.store(QBCNT + b * NKB + kb, carry)


def _gpu_transpose(lay: WideLayout):
    B, nqb = lay.sb.shape
    nkb = lay.nkb
    buf = torch.empty(B * nkb * (nqb + 1), dtype=torch.int32, device=lay.sb.device)
    cnt, idx = buf[:B * nkb].view(B, nkb), buf[B * nkb:].view(B, nkb, nqb)
    _wide_transpose_kernel[(nkb, B)](lay.sb, lay.wb, lay.kb_count, cnt, idx, nqb, nkb,
                                     QC=min(1024, max(16, triton.next_power_of_2(nqb))), num_warps=4)
    return cnt, idx


class WideLayoutBuilder:
    """Plan -> WideLayout on the GPU (BQ = BK = 64), the same layout as plan_split.build_wide_layout (the
    reference builder) with chunk lists sized from shapes alone (plan_split.chunk_cap: the chunk count is
    a stride, only the chunks in use are written or read): one launch, no host sync (force=True or False;
    force=None decides wide/narrow from the structured mean: one sync), + one launch for the transpose
    (backward; built on demand, WideLayout.ensure_transpose). Outputs in 5 allocations (no views of
    slices: each view costs host time of the order of an allocation); the (nQB, nKB) scratch words are
    cached per shape (each call overwrites only the span it uses, nothing is zero-filled in full).
    Launch: 8 warps capped at LAYOUT_MAXNREG registers (2 programs per SM: 16k tokens' 256 query blocks
    in one wave on an H200; uncapped, ptxas takes 150-186 and only one fits)."""

    def __init__(self):
        self._scratch: dict = {}
        self._shapes: dict = {}

    @staticmethod
    def _memo(cache: dict, key, cap: int, make):
        """cache[key], made on first use; the cache is emptied when it holds cap entries (few shapes recur)."""
        v = cache.get(key)
        if v is None:
            if len(cache) >= cap:
                cache.clear()
            v = cache[key] = make()
        return v

    def _tables(self, dev, B, nqb, nkb):
        n = B * nqb * nkb
        return self._memo(self._scratch, (dev, B, nqb, nkb), 4,
                          lambda: (torch.empty(n, dtype=torch.int64, device=dev),
                                   torch.empty(n, dtype=torch.int32, device=dev)))

    def _shape(self, B, Nq, KW, nk):
        def make():
            nqb, nkb = triton.cdiv(Nq, BQ), triton.cdiv(nk, BK)
            # the split pass reads the row in 32-column chunks up to KW rounded up to 32 (a power of two
            # would add up to 7 fully masked chunks: 16 instead of 9 at k 288)
            return (nqb, nkb, plan_split.chunk_cap(KW, nk, BQ, BK), 16 if KW <= 16 else -(-KW // 32) * 32,
                    min(1024, max(16, triton.next_power_of_2(nkb))))
        return self._memo(self._shapes, (B, Nq, KW, nk), 64, make)

    def __call__(self, keys: torch.Tensor, nk: int, transpose: bool = True, force: bool | None = None,
                 min_structured: float | None = None) -> WideLayout:
        B, Nq, KW = keys.shape
        if keys.dtype != torch.int32:
            keys = keys.to(torch.int32)
        if not keys.is_contiguous():
            keys = keys.contiguous()
        dev = keys.device
        nqb, nkb, C, KP, TC = self._shape(B, Nq, KW, nk)
        i32 = torch.int32
        ns, lo, hi = torch.empty(3, B, Nq, dtype=i32, device=dev).unbind(0)
        sb, wb, cnt, xcnt = torch.empty(4, B, nqb, dtype=i32, device=dev).unbind(0)
        stats = torch.empty(B * nqb, 4, dtype=i32, device=dev)
        ux = torch.empty(B, nqb, C * BK, dtype=i32, device=dev)
        xbits = torch.empty(B, nqb, C, BQ, dtype=torch.int64, device=dev)
        tab, pref = self._tables(dev, B, nqb, nkb)
        _wide_layout_kernel[(nqb, B)](keys, ns, lo, hi, sb, wb, cnt, ux, xcnt, xbits, stats, tab, pref,
                                      Nq, KW, nqb, nkb, C, BLOCK_Q=BQ, BLOCK_K=BK, KP=KP, XC=32, TC=TC,
                                      num_warps=8, maxnreg=LAYOUT_MAXNREG)
        lay = WideLayout(True, BQ, BK, nk, kb_count=cnt, sb=sb, wb=wb, ns=ns, lo=lo, hi=hi, ux=ux,
                         ux_count=xcnt, xbits=xbits, stats_src=stats, transposer=_gpu_transpose)
        if force is None:
            thr = plan_split.WIDE_MIN_STRUCTURED if min_structured is None else min_structured
            lay.wide = lay.stats["structured_mean"] >= thr                  # the one sync (dispatch only)
        else:
            lay.wide = bool(force)
        if transpose and lay.wide:
            lay.ensure_transpose()
        return lay


build_wide_layout_triton = WideLayoutBuilder()


# ------------------------------------------------------------------------------------------ functional API
def _grid(Nq, BH):
    return lambda meta: (triton.cdiv(Nq, meta["BLOCK_M"]), BH)


def _lay_args(lay: WideLayout):
    return (lay.ns, lay.lo, lay.hi, lay.sb, lay.wb, lay.kb_count, lay.ux, lay.ux_count, lay.xbits)


def wide_attention_fwd(q, k, v, lay: WideLayout, scale: float):
    """Returns out (B, Hq, Nq, D) and lse (B, Hq, Nq) float32 in log2 units."""
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    out = torch.empty_like(q)
    lse = torch.empty(B, Hq, Nq, dtype=torch.float32, device=q.device)
    nqb = lay.kb_count.shape[1]
    _wide_fwd_kernel[_grid(Nq, B * Hq)](
        q, k, v, out, lse, *_lay_args(lay), *_strides(q, k, v, out),
        Hq, Hq // Hkv, Nq, Nk, lay.chunks, nqb, _bucket(B * Hq * Nq), scale * LOG2E,
        LQ=lay.block_q, BLOCK_K=lay.block_k, D=D, PREC=_prec(q.dtype))
    return out, lse


def wide_attention_bwd(q, k, v, out, lse, dout, lay: WideLayout, scale: float, fused: bool | None = None):
    """fused: the dq kernel also adds the gathered chunks' dk/dv (default for D <= FUSED_MAX_D); else a
    separate kernel does, recomputing their p and ds."""
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    dout = dout.contiguous()
    delta = bwd_delta(out, dout)
    dq = torch.empty(B, Hq, Nq, D, dtype=q.dtype, device=q.device)
    lay.ensure_transpose()
    nqb, nkb = lay.kb_count.shape[1], lay.qb_idx.shape[1]
    split = triton.cdiv(nqb, DKDV_CHUNK)            # a bound (a list has at most nQB entries): no sync
    if split > 1:       # fp32 dk/dv, zeroed: the gathered chunks' atomics go straight into them (no buffers)
        dk = dkx = torch.zeros(B, Hkv, Nk, D, dtype=torch.float32, device=k.device)
        dv = dvx = torch.zeros_like(dk)
    else:               # one program per key block stores dk/dv in the input dtype, adding the fp32 buffers
        dk = torch.empty(B, Hkv, Nk, D, dtype=k.dtype, device=k.device)
        dv = torch.empty(B, Hkv, Nk, D, dtype=v.dtype, device=v.device)
        dkx = torch.zeros(B, Hkv, Nk, D, dtype=torch.float32, device=k.device)
        dvx = torch.zeros_like(dkx)
    common = _strides(q, k, v)
    rows = _bucket(B * Hq * Nq)
    fused = D <= FUSED_MAX_D if fused is None else fused
    _wide_bwd_dq_kernel[_grid(Nq, B * Hq)](
        q, k, v, dout, dq, dkx, dvx, lse, delta, *_lay_args(lay), *common,
        Hq, Hq // Hkv, Nq, Nk, lay.chunks, nqb, rows, scale * LOG2E, scale,
        LQ=lay.block_q, BLOCK_K=lay.block_k, D=D, PREC=_prec(q.dtype), GATHER_DKDV=fused)
    if not fused:                                   # after the dq kernel (its tuning zeroes dkx, dvx)
        _wide_bwd_xdkdv_kernel[_grid(Nq, B * Hq)](
            q, k, v, dout, dkx, dvx, lse, delta, lay.ux, lay.ux_count, lay.xbits, *common,
            Hq, Hq // Hkv, Nq, Nk, lay.chunks, nqb, rows, scale * LOG2E, scale,
            LQ=lay.block_q, BLOCK_K=lay.block_k, D=D, PREC=_prec(q.dtype))
    _wide_bwd_dkdv_kernel[(nkb, B * Hkv, split)](
        q, k, v, dout, dk, dv, dkx, dvx, lse, delta, lay.ns, lay.lo, lay.hi, lay.qb_cnt, lay.qb_idx, *common,
        Hq, Hkv, Hq // Hkv, Nq, Nk, nkb, nqb, rows, scale * LOG2E, scale,
        LQ=lay.block_q, BLOCK_K=lay.block_k, D=D, PREC=_prec(q.dtype), CH=DKDV_CHUNK, ATOMIC=split > 1)
    return dq, dk.to(k.dtype), dv.to(v.dtype)


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
        dq, dk, dv = wide_attention_bwd(q, k, v, out, lse, dout, ctx.lay, ctx.scale)
        return dq, dk, dv, None, None


class WideLayoutCache(LayoutCache):
    """LayoutCache for wide layouts: built without the transpose; the transpose is added to the cached
    layout the first time a caller (or the backward) needs it, once per plan tensor."""

    def get(self, keys: torch.Tensor, nk: int, transpose: bool = True) -> WideLayout:
        lay = super().get(keys, nk, transpose=False)
        if transpose and lay.wide:
            lay.ensure_transpose()
        return lay


# one split + layout per plan tensor, shared by every layer and head (and the backward: _WideAttn keeps
# the layout object, which gets its transpose once)
WIDE_LAYOUTS = WideLayoutCache(build_wide_layout_triton, size=4)


def wide_layout_for(keys: torch.Tensor, nk: int, transpose: bool = True) -> WideLayout:
    return WIDE_LAYOUTS.get(keys, nk, transpose=transpose)


def sparse_attention_wide(q, k, v, keys, scale=None, layout: WideLayout | None = None):
    """The wide kernels for any plan (whatever its split); same contract as kernels.sparse_attention."""
    _check(q, k, v, keys)
    scale = float(scale) if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    need_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if layout is None or not layout.wide:
        layout = build_wide_layout_triton(keys, k.shape[2], transpose=need_grad, force=True)
    if need_grad:
        return _WideAttn.apply(q, k, v, layout, scale)
    return wide_attention_fwd(q, k, v, layout, scale)[0]


def sparse_attention_auto(q, k, v, keys, scale=None):
    """Dispatch (kernels.sparse_attention's Triton backend): the wide kernels for plans whose structured part
    is large (mean sinks + window keys per row >= plan_split.WIDE_MIN_STRUCTURED; decided once per plan
    tensor, cached), the narrow kernels (triton_sparse.py) otherwise, unchanged. Decode (Nq <= 16, no grad)
    always takes the narrow decode kernel: a wide decode kernel (sinks and window as contiguous ranges) was
    measured 2x slower on the H200 (3.0 vs 6.0 us at K 128, bench/kernels/results/wide_h200.md) and removed."""
    need_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if not need_grad and q.shape[2] <= DECODE_MAX_Q:
        return sparse_attention_triton(q, k, v, keys, scale)
    lay = wide_layout_for(keys, k.shape[2], transpose=need_grad)
    if not lay.wide:
        return sparse_attention_triton(q, k, v, keys, scale)
    return sparse_attention_wide(q, k, v, keys, scale, layout=lay)
