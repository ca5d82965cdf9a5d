"""Triton sparse attention for NVIDIA GPUs: forward, backward and decode, O(N*K) in the plan.

Design (docs/kernels.md has the FLOP/byte counts):
- prefill / training (tile path): the plan becomes a block layout (kernels/layout.py) of query blocks of
  BQ=64 rows, each listing the key blocks (BK=64) its rows touch, with a 64-bit membership word per (row,
  key block). A program takes a query tile of BLOCK_M rows (autotuned: the layout's block or half of it;
  the tile shares its block's list) and iterates only over the listed key blocks, with tensor-core
  tl.dot tiles and the exact per-row mask applied inside each tile. The loop is inverted over key blocks as
  in NSA/FSA: rows of a block share K/V loads, and because ASA plans are mostly local (window + sentence +
  sinks) the union per block is a handful of tiles. BK is fixed by the layout (one int64 word per row).
- backward: dq over the same (query block -> key blocks) list; dk/dv per key block over the transposed
  list (key block -> query blocks), so no atomics; GQA heads of one K/V head accumulate in one program.
- decode (few queries against a long cache): no layout; each (query, K/V head) program gathers its K planned
  rows in chunks of BC (autotuned) and runs online softmax, the GQA group stacked as the M side of the tile.
Block sizes, warps and stages are autotuned per (D, plan width) and a bucket of the work size; each
config list is short because every config is one more compile per dtype and head size. Different configs
may round differently in the last bit, so two processes can differ bitwise where autotuning chose apart.
The naive reference is kernels/reference.py; tests/test_kernels_triton.py compares against it.
"""
from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from .layout import BlockLayout, LayoutCache, transpose_csr

BQ, BK = 64, 64              # layout blocks built here (BK <= 64: membership is one int64 word)
LOG2E = 1.4426950408889634
DKDV_CHUNK = 32             # tiles per dk/dv program before a key block's list is split
DECODE_MAX_Q = 16            # at most this many queries: the gather (decode) kernel, no layout
ROWS_CAP = 1 << 18           # work buckets stop here: 4096 programs of 64 rows fill any GPU many times


def _prec(dtype):
    return "ieee" if dtype == torch.float32 else "tf32"


def _bucket(n: int) -> int:
    """Autotune key for a size: its power-of-two bucket (a new prompt length does not retune)."""
    return min(triton.next_power_of_2(max(int(n), 1)), ROWS_CAP)


def _tune_bench(kernel_call, quantiles):
    # tuning runs once per key, in the first call; short timings keep that call short
    return triton.testing.do_bench(kernel_call, warmup=5, rep=20, quantiles=quantiles)


def _cfg(num_warps=4, num_stages=2, **kw):
    return triton.Config(kw, num_warps=num_warps, num_stages=num_stages)


# query tile = the layout's block (first: the fixed choice before autotuning) or half of it
TILE_CONFIGS = [_cfg(BLOCK_M=64), _cfg(8, BLOCK_M=64), _cfg(BLOCK_M=32)]
DECODE_CONFIGS = [_cfg(BC=64), _cfg(BC=32), _cfg(BC=128)]
# the interpreter (CPU tests, TRITON_INTERPRET=1) cannot time configs: the first of each there
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_TUNED_TILES = TILE_CONFIGS[:1] if _INTERPRET else TILE_CONFIGS
_TUNED_DECODE = DECODE_CONFIGS[:1] if _INTERPRET else DECODE_CONFIGS


def _tiles_fit_layout(configs, named_args, **kw):
    """A query tile must lie inside one layout block (it uses that block's key-block list)."""
    fit = [c for c in configs if c.kwargs["BLOCK_M"] <= kw["LQ"]]
    return fit or [_cfg(BLOCK_M=kw["LQ"])]


def _chunks_fit_row(configs, named_args, **kw):
    """No chunk wider than the plan row (all but the first chunk would be padding)."""
    width = max(32, triton.next_power_of_2(named_args["KW"]))
    fit = [c for c in configs if c.kwargs["BC"] <= width]
    return fit or configs[:1]


# ----------------------------------------------------------------------------------------- shared pieces
@triton.jit
def _rows(base, pos, stride, offs_d, ok):
    """(R, D) tile: rows `pos` of a row-major matrix at `base` with row stride `stride`; rows not ok are 0."""
    return tl.load(base + pos[:, None] * stride + offs_d[None, :], mask=ok[:, None], other=0.0)


@triton.jit
def _store_rows(base, pos, stride, offs_d, ok, x):
    tl.store(base + pos[:, None] * stride + offs_d[None, :], x.to(base.dtype.element_ty), mask=ok[:, None])


@triton.jit
def _members(w, offs_n):
    """(R,) int64 membership words -> (R, BK) bool: bit t set = key t of the block is in the row's plan."""
    return ((w[:, None] >> offs_n[None, :].to(tl.int64)) & 1) != 0


@triton.jit
def _tile_prologue(Q, K, V, KB, KBCNT, BITS, sqb, sqh, sqn, skb, skh, svb, svh, Hq, G, Nq, U, NQB,
                   BLOCK_M: tl.constexpr, LQ: tl.constexpr, D: tl.constexpr):
    """Program (query tile, b * Hq + h) of the tile path: its rows, their q tile, the K/V bases of its
    K/V head and its layout block's key-block list (count, list, per-row membership words)."""
    pid_q = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // Hq
    h = pid_bh % Hq
    hk = h // G
    offs_m = pid_q * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    row_ok = offs_m < Nq
    q = _rows(Q + b * sqb + h * sqh, offs_m, sqn, offs_d, row_ok)            # (BM, D)
    qb = pid_q * BLOCK_M // LQ                                               # the layout block holding the tile
    cnt = tl.load(KBCNT + b * NQB + qb)
    kb_ptr = KB + (b * NQB + qb) * U
    bits_ptr = BITS + (b * Nq + offs_m) * U                                  # (BM,) row words
    return pid_bh, offs_m, offs_d, row_ok, q, K + b * skb + hk * skh, V + b * svb + hk * svh, cnt, kb_ptr, bits_ptr


@triton.jit
def _softmax_step(s, v, m_i, l_i, acc, PREC: tl.constexpr):
    """One online-softmax update with scores s (M, C) in log2 units (-inf = not planned) and values v (C, D).
    A row with nothing planned so far keeps m = -inf and adds exact zeros."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp2(s - m_safe[:, None])
    alpha = tl.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
    return m_new, l_i, acc


@triton.jit
def _fwd_inner(q, kbase, vbase, skn, svn, kb_ptr, bits_ptr, cnt, row_ok, Nk, qk_scale,
               BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, D: tl.constexpr, PREC: tl.constexpr):
    """Online softmax of a query tile over its listed key blocks: (m, l, acc) with acc (BM, D) unnormalised."""
    offs_n = tl.arange(0, BLOCK_K)
    offs_d = tl.arange(0, D)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    for j in range(0, cnt):
        kpos = tl.load(kb_ptr + j) * BLOCK_K + offs_n
        k_ok = kpos < Nk
        k = _rows(kbase, kpos, skn, offs_d, k_ok)
        v = _rows(vbase, kpos, svn, offs_d, k_ok)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale         # (BM, BK), log2 units
        keep = _members(tl.load(bits_ptr + j, mask=row_ok, other=0), offs_n)
        m_i, l_i, acc = _softmax_step(tl.where(keep, s, float("-inf")), v, m_i, l_i, acc, PREC)
    return m_i, l_i, acc


@triton.jit
def _grad_rows(DO, LSE, DELTA, bh, offs_m, row_ok, offs_d, Nq, D: tl.constexpr):
    """Rows offs_m of head bh: dout (M, D) from contiguous (B, Hq, Nq, D), lse and delta (M,)."""
    do = _rows(DO + bh * Nq * D, offs_m, D, offs_d, row_ok)
    lse = tl.load(LSE + bh * Nq + offs_m, mask=row_ok, other=0.0)
    delta = tl.load(DELTA + bh * Nq + offs_m, mask=row_ok, other=0.0)
    return do, lse, delta


@triton.jit
def _bwd_delta_kernel(O, DO, DELTA, sob, soh, son, Hq, Nq, D: tl.constexpr, BLOCK_M: tl.constexpr):
    """delta = rowsum(out * dout) in fp32, FlashAttention-2's backward preprocess: one read of each (in
    torch, fp32 copies of both, their product and a sum: ~7x the bytes, four launches)."""
    pid_bh = tl.program_id(1)
    b = pid_bh // Hq
    h = pid_bh % Hq
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    ok = offs_m < Nq
    o = _rows(O + b * sob + h * soh, offs_m, son, offs_d, ok).to(tl.float32)
    do = _rows(DO + pid_bh * Nq * D, offs_m, D, offs_d, ok).to(tl.float32)
    tl.store(DELTA + pid_bh * Nq + offs_m, tl.sum(o * do, 1), mask=ok)


def bwd_delta(out: torch.Tensor, dout: torch.Tensor) -> torch.Tensor:
    """(B, Hq, Nq) fp32 rowsum(out * dout); out any (B, H, N) strides with unit D stride, dout contiguous."""
    B, Hq, Nq, D = out.shape
    assert out.stride(3) == 1 and dout.is_contiguous()
    delta = torch.empty(B, Hq, Nq, dtype=torch.float32, device=out.device)
    bm = 64 if D <= 64 else 32
    _bwd_delta_kernel[(triton.cdiv(Nq, bm), B * Hq)](out, dout, delta, out.stride(0), out.stride(1),
                                                    out.stride(2), Hq, Nq, D=D, BLOCK_M=bm)
    return delta


@triton.jit
def _p_ds(q, k, v, do, lse, delta, keep, qk_scale, PREC: tl.constexpr):
    """Recomputed probabilities p = 2^(s - lse) on planned entries and ds = p * (dp - delta), both (M, BK)."""
    s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
    p = tl.where(keep, tl.exp2(s - lse[:, None]), 0.0)
    dp = tl.dot(do, tl.trans(v), input_precision=PREC)
    return p, p * (dp - delta[:, None])


# ----------------------------------------------------------------------------------------------- forward
@triton.autotune(configs=_TUNED_TILES, key=["D", "U", "ROWS"], do_bench=_tune_bench,
                 prune_configs_by={"early_config_prune": _tiles_fit_layout})
@triton.jit
def _fwd_kernel(Q, K, V, O, LSE, KB, KBCNT, BITS,
                sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sob, soh, son,
                Hq, G, Nq, Nk, U, NQB, ROWS, qk_scale,
                LQ: tl.constexpr, BLOCK_K: tl.constexpr, D: tl.constexpr, PREC: tl.constexpr,
                BLOCK_M: tl.constexpr):
    # O, LSE only stored (never accumulated): autotuning's repeated runs need no reset. ROWS: tuning key only
    pid_bh, offs_m, offs_d, row_ok, q, kbase, vbase, cnt, kb_ptr, bits_ptr = _tile_prologue(
        Q, K, V, KB, KBCNT, BITS, sqb, sqh, sqn, skb, skh, svb, svh, Hq, G, Nq, U, NQB, BLOCK_M, LQ, D)
    m_i, l_i, acc = _fwd_inner(q, kbase, vbase, skn, svn, kb_ptr, bits_ptr, cnt, row_ok, Nk, qk_scale,
                               BLOCK_M, BLOCK_K, D, PREC)
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    b = pid_bh // Hq
    h = pid_bh % Hq
    _store_rows(O + b * sob + h * soh, offs_m, son, offs_d, row_ok, acc / l_safe[:, None])
    tl.store(LSE + pid_bh * Nq + offs_m, m_i + tl.log2(l_safe), mask=row_ok)


# ---------------------------------------------------------------------------------------------- backward
@triton.autotune(configs=_TUNED_TILES, key=["D", "U", "ROWS"], do_bench=_tune_bench,
                 prune_configs_by={"early_config_prune": _tiles_fit_layout})
@triton.jit
def _bwd_dq_kernel(Q, K, V, DO, DQ, LSE, DELTA, KB, KBCNT, BITS,
                   sqb, sqh, sqn, skb, skh, skn, svb, svh, svn,
                   Hq, G, Nq, Nk, U, NQB, ROWS, qk_scale, sm_scale,
                   LQ: tl.constexpr, BLOCK_K: tl.constexpr, D: tl.constexpr, PREC: tl.constexpr,
                   BLOCK_M: tl.constexpr):
    # DO, DQ: contiguous (B, Hq, Nq, D); q strides shared via sq*. DQ only stored: no reset when tuning
    pid_bh, offs_m, offs_d, row_ok, q, kbase, vbase, cnt, kb_ptr, bits_ptr = _tile_prologue(
        Q, K, V, KB, KBCNT, BITS, sqb, sqh, sqn, skb, skh, svb, svh, Hq, G, Nq, U, NQB, BLOCK_M, LQ, D)
    do, lse, delta = _grad_rows(DO, LSE, DELTA, pid_bh, offs_m, row_ok, offs_d, Nq, D)
    offs_n = tl.arange(0, BLOCK_K)
    dq = tl.zeros([BLOCK_M, D], tl.float32)
    for j in range(0, cnt):
        kpos = tl.load(kb_ptr + j) * BLOCK_K + offs_n
        k_ok = kpos < Nk
        k = _rows(kbase, kpos, skn, offs_d, k_ok)
        v = _rows(vbase, kpos, svn, offs_d, k_ok)
        keep = _members(tl.load(bits_ptr + j, mask=row_ok, other=0), offs_n)
        _, ds = _p_ds(q, k, v, do, lse, delta, keep, qk_scale, PREC)
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PREC)
    _store_rows(DQ + pid_bh * Nq * D, offs_m, D, offs_d, row_ok, dq * sm_scale)


@triton.autotune(configs=_TUNED_TILES, key=["D", "U", "G", "ROWS"], do_bench=_tune_bench,
                 reset_to_zero=["DK", "DV"], prune_configs_by={"early_config_prune": _tiles_fit_layout})
@triton.jit
def _bwd_dkdv_kernel(Q, K, V, DO, DK, DV, LSE, DELTA, QBPTR, QBIDX, QBSLOT, BITS,
                     sqb, sqh, sqn, skb, skh, skn, svb, svh, svn,
                     Hq, Hkv, G, Nq, Nk, U, NKB, NT, ROWS, qk_scale, sm_scale,
                     LQ: tl.constexpr, BLOCK_K: tl.constexpr, D: tl.constexpr, PREC: tl.constexpr,
                     CH: tl.constexpr, ATOMIC: tl.constexpr, BLOCK_M: tl.constexpr):
    # DK, DV: contiguous (B, Hkv, Nk, D); fp32 and accumulated with atomics when ATOMIC (split segments),
    # which is why autotuning zeroes them before every timed run and before the real one (reset_to_zero).
    # Each listed query block is visited in LQ // BLOCK_M tiles of BLOCK_M rows.
    pid_k = tl.program_id(0)
    pid_bh = tl.program_id(1)                       # over B * Hkv
    pid_s = tl.program_id(2)                        # which CH-tile chunk of this key block's list
    b = pid_bh // Hkv
    hk = pid_bh % Hkv
    offs_n = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_t = tl.arange(0, BLOCK_K)
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
            j = tl.load(QBSLOT + b * NT + i)
            for sub in tl.static_range(LQ // BLOCK_M):
                offs_m = qb * LQ + sub * BLOCK_M + tl.arange(0, BLOCK_M)
                row_ok = offs_m < Nq
                q = _rows(qbase, offs_m, sqn, offs_d, row_ok)
                do, lse, delta = _grad_rows(DO, LSE, DELTA, bh, offs_m, row_ok, offs_d, Nq, D)
                keep = _members(tl.load(BITS + (b * Nq + offs_m) * U + j, mask=row_ok, other=0), offs_t)
                p, ds = _p_ds(q, k, v, do, lse, delta, keep, qk_scale, PREC)   # (BM, BK)
                dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PREC)
                dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PREC)
    out = (pid_bh * Nk + offs_n[:, None]) * D + offs_d[None, :]
    kmask = k_ok[:, None]
    if ATOMIC:                                      # fp32 buffers; atomics only where the list was split
        if seg_hi - seg_lo > CH:
            busy = kmask & (tl.zeros_like(offs_n) + start < end)[:, None]   # a tensor: the interpreter
            tl.atomic_add(DK + out, dk * sm_scale, mask=busy, sem="relaxed")
            tl.atomic_add(DV + out, dv, mask=busy, sem="relaxed")
        else:
            first = kmask & (tl.zeros_like(offs_n) + pid_s == 0)[:, None]
            tl.store(DK + out, dk * sm_scale, mask=first)
            tl.store(DV + out, dv, mask=first)
    else:
        tl.store(DK + out, (dk * sm_scale).to(DK.dtype.element_ty), mask=kmask)
        tl.store(DV + out, dv.to(DV.dtype.element_ty), mask=kmask)


# ------------------------------------------------------------------------------------------------ decode
@triton.autotune(configs=_TUNED_DECODE, key=["D", "KWB", "GP"], do_bench=_tune_bench,
                 prune_configs_by={"early_config_prune": _chunks_fit_row})
@triton.jit
def _decode_kernel(Q, K, V, O, KEYS,
                   sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sob, soh, son,
                   Hkv, G, Nq, KW, KWB, qk_scale,
                   GP: tl.constexpr, D: tl.constexpr, PREC: tl.constexpr, BC: tl.constexpr):
    # O only stored: no reset when tuning. KWB: the plan width's bucket, tuning key only
    pid = tl.program_id(0)                          # over B * Nq
    hk = tl.program_id(1)
    b = pid // Nq
    i = pid % Nq
    offs_g = tl.arange(0, GP)
    offs_c = tl.arange(0, BC)
    offs_d = tl.arange(0, D)
    g_ok = offs_g < G
    h = hk * G + offs_g
    q = _rows(Q + b * sqb + i * sqn, h, sqh, offs_d, g_ok)                  # (GP, D) the GQA group
    kbase = K + b * skb + hk * skh
    vbase = V + b * svb + hk * svh
    m_i = tl.full([GP], float("-inf"), tl.float32)
    l_i = tl.zeros([GP], tl.float32)
    acc = tl.zeros([GP, D], tl.float32)
    for c in range(0, KW, BC):
        idx = tl.load(KEYS + pid * KW + c + offs_c, mask=c + offs_c < KW, other=-1)
        ok = idx >= 0
        safe = tl.where(ok, idx, 0).to(tl.int64)
        k = _rows(kbase, safe, skn, offs_d, ok)
        v = _rows(vbase, safe, svn, offs_d, ok)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale          # (GP, BC)
        m_i, l_i, acc = _softmax_step(tl.where(ok[None, :], s, float("-inf")), v, m_i, l_i, acc, PREC)
    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    _store_rows(O + b * sob + i * son, h, soh, offs_d, g_ok, out)


# ------------------------------------------------------------------------------------------------ layout
@triton.jit
def _layout_kernel(KEYS, KB, KBCNT, BITS, Nq, KW, NQB,
                   BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, KP: tl.constexpr, UCAP: tl.constexpr):
    """One program per (query block, batch row): the distinct key blocks of its rows in ascending order
    (repeated min-extraction: a handful of passes on ASA plans) and each row's membership word per block."""
    qb = tl.program_id(0)
    b = tl.program_id(1)
    BIG: tl.constexpr = 2147483647
    rows = qb * BLOCK_Q + tl.arange(0, BLOCK_Q)
    cols = tl.arange(0, KP)
    row_ok = rows < Nq
    key = tl.load(KEYS + (b * Nq + rows[:, None]) * KW + cols[None, :],
                  mask=row_ok[:, None] & (cols[None, :] < KW), other=-1)               # (BQ, KP)
    ok = key >= 0
    blk = tl.where(ok, key // BLOCK_K, BIG)
    one = tl.full([BLOCK_Q, KP], 1, tl.int64)
    bit = tl.where(ok, one << (tl.where(ok, key, 0) % BLOCK_K).to(tl.int64), 0)       # (BQ, KP) int64
    lst = KB + (b * NQB + qb) * UCAP
    cur = tl.min(tl.min(blk, 1), 0)
    j = 0
    while cur < BIG:
        if j < UCAP:
            tl.store(lst + j, cur)
            w = tl.sum(tl.where(blk == cur, bit, 0), 1)                                # distinct bits: sum == or
            tl.store(BITS + (b * Nq + rows) * UCAP + j, w, mask=row_ok)
        j += 1
        cur = tl.min(tl.min(tl.where(blk > cur, blk, BIG), 1), 0)
    offs_u = tl.arange(0, UCAP)
    tl.store(lst + offs_u, tl.full([UCAP], -1, tl.int32), mask=offs_u >= j)
    tl.store(KBCNT + b * NQB + qb, j)


class GpuLayoutBuilder:
    """Plan -> BlockLayout (BQ = BK = 64) on the GPU, the same output as layout.build_layout, in one launch
    plus one host sync (the list width). The kernel needs the list width up front: it starts from the
    width the previous plan needed (plans of one model are alike) and relaunches wider when a query block
    touches more key blocks than that."""

    def __init__(self, width: int = 16):
        self.width = width

    def __call__(self, keys: torch.Tensor, nk: int, transpose: bool = True) -> BlockLayout:
        B, Nq, KW = keys.shape
        keys = keys.to(torch.int32).contiguous()
        nqb, nkb = triton.cdiv(Nq, BQ), triton.cdiv(nk, BK)
        KP = max(16, triton.next_power_of_2(KW))
        while True:
            ucap = self.width
            kb = torch.empty(B, nqb, ucap, dtype=torch.int32, device=keys.device)
            cnt = torch.empty(B, nqb, dtype=torch.int32, device=keys.device)
            bits = torch.empty(B, Nq, ucap, dtype=torch.int64, device=keys.device)
            _layout_kernel[(nqb, B)](keys, kb, cnt, bits, Nq, KW, nqb, BLOCK_Q=BQ, BLOCK_K=BK, KP=KP,
                                     UCAP=ucap, num_warps=8 if KP >= 128 else 4)
            need = int(cnt.max())
            self.width = max(16, triton.next_power_of_2(need))      # the next plan starts from this width
            if need <= ucap:
                break
        lay = BlockLayout(BQ, BK, nk, kb, cnt, bits)
        if transpose:
            lay.qb_ptr, lay.qb_idx, lay.qb_slot = transpose_csr(kb, nkb)
        return lay


build_layout_triton = GpuLayoutBuilder()
# every layer of a forward pass (and its backward) passes the same plan tensor: one build per plan
LAYOUTS = LayoutCache(build_layout_triton, size=4)


# ------------------------------------------------------------------------------------------ functional API
def _check(q, k, v, keys):
    B, Hq, Nq, D = q.shape
    assert k.shape[0] == B and v.shape == k.shape and Hq % k.shape[1] == 0, "q/k/v shapes disagree"
    assert keys.shape[:2] == (B, Nq), "keys must be (B, Nq, K)"
    assert D in (16, 32, 64, 128, 256), "head dim must be a power of two in [16, 256]"
    for t in (q, k, v):
        assert t.stride(-1) == 1, "last dim must be contiguous"


def _strides(*ts):
    """Batch, head and row strides of each (B, H, N, D) tensor, in order."""
    return tuple(s for t in ts for s in t.stride()[:3])


def _tile_grid(Nq, BH):
    return lambda meta: (triton.cdiv(Nq, meta["BLOCK_M"]), BH)


def sparse_attention_fwd(q, k, v, layout: BlockLayout, scale: float):
    """Tile-path forward. Returns out (B, Hq, Nq, D) and lse (B, Hq, Nq) float32 in log2 units."""
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    out = torch.empty_like(q)
    lse = torch.empty(B, Hq, Nq, dtype=torch.float32, device=q.device)
    nqb, U = layout.kb.shape[1], layout.kb.shape[2]
    _fwd_kernel[_tile_grid(Nq, B * Hq)](
        q, k, v, out, lse, layout.kb, layout.kb_count, layout.bits, *_strides(q, k, v, out),
        Hq, Hq // Hkv, Nq, Nk, U, nqb, _bucket(B * Hq * Nq), scale * LOG2E,
        LQ=layout.block_q, BLOCK_K=layout.block_k, D=D, PREC=_prec(q.dtype))
    return out, lse


def sparse_attention_bwd(q, k, v, out, lse, dout, layout: BlockLayout, scale: float):
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    dout = dout.contiguous()
    delta = bwd_delta(out, dout)                                                # (B, Hq, Nq) fp32
    dq = torch.empty(B, Hq, Nq, D, dtype=q.dtype, device=q.device)
    nqb, U = layout.kb.shape[1], layout.kb.shape[2]
    nkb, NT = layout.qb_ptr.shape[1] - 1, layout.qb_idx.shape[1]
    # key blocks every query block touches (sinks) have long tile lists: split them over SPLIT programs of
    # at most DKDV_CHUNK tiles (fp32 atomics) so one program does not serialise the whole pass
    split = triton.cdiv(max(layout.max_segment(), 1), DKDV_CHUNK)
    acc_dt = torch.float32 if split > 1 else k.dtype
    alloc = torch.zeros if split > 1 else torch.empty
    dk = alloc(B, Hkv, Nk, D, dtype=acc_dt, device=k.device)
    dv = alloc(B, Hkv, Nk, D, dtype=acc_dt, device=v.device)
    common = _strides(q, k, v)
    rows = _bucket(B * Hq * Nq)
    _bwd_dq_kernel[_tile_grid(Nq, B * Hq)](
        q, k, v, dout, dq, lse, delta, layout.kb, layout.kb_count, layout.bits, *common,
        Hq, Hq // Hkv, Nq, Nk, U, nqb, rows, scale * LOG2E, scale,
        LQ=layout.block_q, BLOCK_K=layout.block_k, D=D, PREC=_prec(q.dtype))
    _bwd_dkdv_kernel[(nkb, B * Hkv, split)](
        q, k, v, dout, dk, dv, lse, delta, layout.qb_ptr, layout.qb_idx, layout.qb_slot, layout.bits, *common,
        Hq, Hkv, Hq // Hkv, Nq, Nk, U, nkb, NT, rows, scale * LOG2E, scale,
        LQ=layout.block_q, BLOCK_K=layout.block_k, D=D, PREC=_prec(q.dtype), CH=DKDV_CHUNK, ATOMIC=split > 1)
    return dq, dk.to(k.dtype), dv.to(v.dtype)


def sparse_attention_decode(q, k, v, keys, scale: float):
    """Gather path for a few queries against a long cache: no layout, reads only the K planned rows."""
    B, Hq, Nq, D = q.shape
    Hkv = k.shape[1]
    G = Hq // Hkv
    keys = keys.to(torch.int32).contiguous()
    out = torch.empty_like(q)
    KW = keys.shape[-1]
    _decode_kernel[(B * Nq, Hkv)](
        q, k, v, out, keys, *_strides(q, k, v, out),
        Hkv, G, Nq, KW, triton.next_power_of_2(KW), scale * LOG2E,
        GP=max(16, triton.next_power_of_2(G)), D=D, PREC=_prec(q.dtype))
    return out


class _SparseAttnTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, layout, scale):
        out, lse = sparse_attention_fwd(q, k, v, layout, scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.layout, ctx.scale = layout, scale
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        lay = ctx.layout
        if lay.qb_ptr is None:
            raise RuntimeError("layout was built with transpose=False; backward needs the transposed lists")
        dq, dk, dv = sparse_attention_bwd(q, k, v, out, lse, dout, lay, ctx.scale)
        return dq, dk, dv, None, None


def layout_for(keys: torch.Tensor, nk: int, transpose: bool = True) -> BlockLayout:
    """The plan's layout from the shared cache (LAYOUTS), built on a miss."""
    return LAYOUTS.get(keys, nk, transpose=transpose)


def sparse_attention_triton(q, k, v, keys, scale=None, layout: BlockLayout | None = None):
    """Same contract as kernels.sparse_attention; CUDA tensors, fp16/bf16/fp32."""
    _check(q, k, v, keys)
    scale = float(scale) if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    need_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if layout is None and not need_grad and q.shape[2] <= DECODE_MAX_Q:
        return sparse_attention_decode(q, k, v, keys, scale)
    if layout is None:
        layout = layout_for(keys, k.shape[2], transpose=need_grad)
    if need_grad:
        return _SparseAttnTriton.apply(q, k, v, layout, scale)
    return sparse_attention_fwd(q, k, v, layout, scale)[0]
