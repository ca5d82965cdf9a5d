"""Split AttentionPlan rows into a structured part (sinks, local window) and an irregular rest (bonds,
antecedents, strided keys), and the wide-plan layout built from that split (kernels/triton_wide.py).

The split is derived from the rows alone (the plan contract does not change). Rows are ascending and
distinct, so two reductions find it, with no scan:
  * sinks [0, ns): keys[t] >= t for every slot t, with equality exactly on the prefix 0, 1, ..., ns-1, so
    ns = #{t : keys[t] == t};
  * window [lo, hi], hi = the row's last key (the query's own position): keys[t] <= hi - (n-1-t), with
    equality exactly on the trailing run of consecutive positions, so run = #{t : keys[t] == hi - n + 1 + t}
    and lo = hi - run + 1;
  * the rest: slots [ns, n - run) (ns is clipped so the parts are disjoint when a row is all one run).
A row is then three numbers plus a short list.

The layout, per query block of BQ rows:
  * structured key blocks: the sink blocks [0, sb), sb = min(ceil(max ns / BK), wb), and the window blocks
    [wb, max hi // BK], wb = min lo // BK: three int32 per block (sb, wb, count); the kernels walk the list
    from them (no list stored) and mask each tile from the row's three numbers (no membership words); its
    transpose (key block -> the query blocks listing it) for dk/dv;
  * the union of the block's irregular positions, sorted, in chunks of BK gathered keys, with one 64-bit
    membership word per (row, chunk): strided keys shared by the block's rows collapse into one chunk, and
    far bonds cost one gathered column each instead of one tile each.
build_wide_layout here is the reference builder (torch ops on the plan's device, O(N*K) work, two host
syncs for exact widths, never anything N x N); kernels/triton_wide.WideLayoutBuilder builds the same layout
on the GPU in one launch (+ one for the transpose), sized from shapes alone (chunk_cap), no host sync.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

WIDE_MIN_STRUCTURED = 48.0     # mean sinks + window keys per row from which the wide kernels are used
_BIG = 2 ** 31 - 1


@dataclass
class PlanSplit:
    ns: torch.Tensor          # (B, Nq) int32: sinks are positions [0, ns)
    lo: torch.Tensor          # (B, Nq) int32: window is [lo, hi] (the row's trailing run of consecutive keys)
    hi: torch.Tensor          # (B, Nq) int32: the row's last key
    n_extra: torch.Tensor     # (B, Nq) int64: how many keys the row has outside both


def split_rows(keys: torch.Tensor) -> PlanSplit:
    """(B, Nq, K) plan rows -> per-row sinks count, window [lo, hi] and irregular count. No host sync."""
    kl = keys.long()
    valid = kl >= 0
    n = valid.sum(-1)                                                     # (B, Nq) >= 1 by the contract
    hi = kl.gather(-1, (n - 1).clamp_min(0).unsqueeze(-1)).squeeze(-1)
    t = torch.arange(kl.shape[-1], device=kl.device)
    ns = (kl == t).sum(-1)
    run = ((kl == (hi - n + 1).unsqueeze(-1) + t) & valid).sum(-1)
    ns = torch.minimum(ns, n - run)
    lo = hi - run + 1
    return PlanSplit(ns.to(torch.int32), lo.to(torch.int32), hi.to(torch.int32), n - run - ns)


def extra_keys(keys: torch.Tensor, sp: PlanSplit, width: int) -> torch.Tensor:
    """(B, Nq, width) int64: each row's irregular keys (slots [ns, n - run)), ascending, -1 padded."""
    K = keys.shape[-1]
    u = torch.arange(width, device=keys.device)
    idx = (sp.ns.long().unsqueeze(-1) + u).clamp_max(K - 1)
    ex = keys.long().gather(-1, idx)
    return torch.where(u < sp.n_extra.unsqueeze(-1), ex, -1)


def chunk_cap(kw: int, nk: int, block_q: int = 64, block_k: int = 64) -> int:
    """Host-side bound on a query block's chunks of irregular keys, from shapes alone: a row has at most
    K - 1 of them (its own position is in the window) and they are distinct positions < nk, so a block's
    union has at most min(BQ * (K - 1), nk) keys. Sizes the layout without a host sync."""
    return max(1, -(-min(block_q * max(kw - 1, 1), max(nk, 1)) // block_k))


@dataclass(repr=False)
class WideLayout:
    """Per query block of BQ rows (nQB blocks), over nKB key blocks of BK:
    structured key blocks: sink blocks [0, sb) then window blocks [wb, wb + kb_count - sb) (the kernels
    compute the list from these three numbers; `structured_lists()` materialises it for tests);
    irregular: ux (the sorted union of the block's irregular keys, chunks of BK, -1 padded), ux_count
    chunks in use, xbits (B, nQB, C, BQ) int64 membership word of the block's row r in chunk c (chunk-major:
    a tile's 64 words are contiguous); C is a bound from shapes (chunk_cap) or, in the torch builder, exact;
    transpose for dk/dv: qb_idx (B, nKB, nQB) int32, the query blocks listing key block kb in
    qb_idx[b, kb, :qb_cnt[b, kb]], ascending (built on demand: ensure_transpose)."""
    wide: bool                # False: a narrow plan, for the narrow tile kernels
    block_q: int
    block_k: int
    nk: int
    kb_count: torch.Tensor | None = None   # (B, nQB) int32 structured key blocks
    sb: torch.Tensor | None = None         # (B, nQB) int32 sink blocks [0, sb)
    wb: torch.Tensor | None = None         # (B, nQB) int32 first window block
    ns: torch.Tensor | None = None         # (B, Nq) int32 (PlanSplit)
    lo: torch.Tensor | None = None
    hi: torch.Tensor | None = None
    ux: torch.Tensor | None = None         # (B, nQB, C * BK) int32
    ux_count: torch.Tensor | None = None   # (B, nQB) int32
    xbits: torch.Tensor | None = None      # (B, nQB, C, BQ) int64
    qb_cnt: torch.Tensor | None = None     # (B, nKB) int32
    qb_idx: torch.Tensor | None = None     # (B, nKB, nQB) int32
    stats_src: torch.Tensor | None = None  # (B * nQB, 4) int32 per block: widest irregular part, chunks,
    #                                        structured keys summed, structured blocks (GPU builder)
    transposer: Callable | None = None     # lay -> (qb_cnt, qb_idx)
    _stats: dict | None = None

    @property
    def chunks(self) -> int:
        return self.xbits.shape[2]

    @property
    def nkb(self) -> int:
        return -(-self.nk // self.block_k)

    @property
    def stats(self) -> dict:
        """structured_mean, extra_max, chunks (host sync on first use for the GPU builder)."""
        if self._stats is None:
            st = self.stats_src.long()
            nq = self.ns.numel()
            s_sum, e_max, c_max = torch.stack([st[:, 2].sum(), st[:, 0].max(), st[:, 1].max()]).tolist()
            self._stats = dict(structured_mean=s_sum / max(nq, 1), extra_max=int(e_max), chunks=int(c_max))
        return self._stats

    def ensure_transpose(self) -> "WideLayout":
        if self.qb_idx is None:
            self.qb_cnt, self.qb_idx = self.transposer(self)
        return self

    def structured_lists(self) -> torch.Tensor:
        """(B, nQB, US) int32 structured key blocks per query block, ascending, -1 padded (host sync)."""
        us = max(int(self.kb_count.max()), 1)
        u = torch.arange(us, device=self.sb.device)
        sb, wb, cnt = (t.long().unsqueeze(-1) for t in (self.sb, self.wb, self.kb_count))
        kb = torch.where(u < sb, u, torch.where(u < cnt, wb + u - sb, -1))
        return kb.to(torch.int32)


def transpose_table(sb: torch.Tensor, wb: torch.Tensor, cnt: torch.Tensor, nkb: int):
    """Structured lists -> by key block: (qb_cnt (B, nKB), qb_idx (B, nKB, nQB) ascending). Torch ops: an
    (nKB, nQB) table per batch row (the reference; the GPU builder has a kernel)."""
    kb = torch.arange(nkb, device=sb.device).view(1, nkb, 1)
    sb, wb, cnt = (t.long().unsqueeze(1) for t in (sb, wb, cnt))           # (B, 1, nQB)
    member = (kb < sb) | ((kb >= wb) & (kb < wb + cnt - sb))             # (B, nKB, nQB)
    order = torch.argsort((~member).to(torch.int8), dim=-1, stable=True)
    return member.sum(-1).to(torch.int32), order.to(torch.int32).contiguous()


def _torch_transpose(lay: WideLayout):
    return transpose_table(lay.sb, lay.wb, lay.kb_count, lay.nkb)


def _per_block(x: torch.Tensor, nqb: int, bq: int, pad: int, op: str) -> torch.Tensor:
    B, N = x.shape
    xp = torch.full((B, nqb * bq), pad, dtype=x.dtype, device=x.device)
    xp[:, :N] = x
    xp = xp.view(B, nqb, bq)
    return xp.amax(-1) if op == "max" else xp.amin(-1)


def build_wide_layout(keys: torch.Tensor, nk: int, block_q: int = 64, block_k: int = 64,
                      transpose: bool = True, min_structured: float | None = None,
                      force: bool | None = None) -> WideLayout:
    """keys: (B, Nq, K) plan rows. Wide iff the mean structured keys per row >= min_structured (default
    WIDE_MIN_STRUCTURED), unless `force` says. block_k <= 64 (membership words are one int64).
    The reference builder (torch ops, host syncs, exact widths); triton_wide.WideLayoutBuilder is the GPU one."""
    assert block_k <= 64
    B, Nq, K = keys.shape
    dev = keys.device
    nqb = -(-Nq // block_q)
    sp = split_rows(keys)
    ns, lo, hi = sp.ns.long(), sp.lo.long(), sp.hi.long()
    max_ns = _per_block(ns, nqb, block_q, 0, "max")
    wlo = _per_block(lo, nqb, block_q, _BIG, "min") // block_k
    whi = _per_block(hi, nqb, block_q, -1, "max") // block_k
    nsb = torch.minimum(-(-max_ns // block_k), wlo)                    # sink blocks below the window's
    scount = nsb + (whi - wlo + 1)
    structured = (ns + (hi - lo + 1)).sum()
    s_sum, e_max = torch.stack([structured, sp.n_extra.max()]).tolist()  # sync 1
    s_mean = s_sum / (B * Nq)
    wide = (s_mean >= (WIDE_MIN_STRUCTURED if min_structured is None else min_structured)) if force is None \
        else force
    stats = dict(structured_mean=s_mean, extra_max=int(e_max))
    # irregular rest: per query block, the sorted union of its rows' keys, in chunks of block_k
    E = max(int(e_max), 1)
    ex = extra_keys(keys, sp, E)                                           # (B, Nq, E)
    exp = torch.full((B, nqb * block_q, E), -1, dtype=torch.int64, device=dev)
    exp[:, :Nq] = ex
    flat = exp.view(B * nqb, block_q * E)
    svals, perm = torch.sort(torch.where(flat >= 0, flat, _BIG), dim=1)
    prev = torch.cat([torch.full_like(svals[:, :1], -1), svals[:, :-1]], 1)
    first = (svals != prev) & (svals != _BIG)
    rank = first.cumsum(1) - 1                                             # union slot of each sorted entry
    count = first.sum(1)                                                   # (B * nqb,)
    C = max(-(-int(count.max()) // block_k), 1)                           # sync 2
    W = C * block_k
    ux = torch.full((B * nqb, W + 1), -1, dtype=torch.int64, device=dev)
    ux.scatter_(1, torch.where(first, rank, W), torch.where(first, svals, -1))
    rank_orig = torch.empty_like(rank).scatter_(1, perm, rank)             # union slot of each row entry
    ok = flat >= 0
    bit = torch.where(ok, torch.ones_like(rank_orig) << (rank_orig % block_k), 0)
    chunk = torch.where(ok, rank_orig // block_k, 0).clamp(0, C - 1)
    xbits = torch.zeros(B * nqb, block_q, C, dtype=torch.int64, device=dev)
    xbits.scatter_add_(2, chunk.view(B * nqb, block_q, E), bit.view(B * nqb, block_q, E))
    stats["chunks"] = C
    lay = WideLayout(bool(wide), block_q, block_k, nk,
                     kb_count=scount.to(torch.int32).contiguous(), sb=nsb.to(torch.int32).contiguous(),
                     wb=wlo.clamp_max(_BIG // block_k).to(torch.int32).contiguous(),
                     ns=sp.ns.contiguous(), lo=sp.lo.contiguous(), hi=sp.hi.contiguous(),
                     ux=ux[:, :W].to(torch.int32).view(B, nqb, W).contiguous(),
                     ux_count=(-(-count // block_k)).to(torch.int32).view(B, nqb).contiguous(),
                     xbits=xbits.view(B, nqb, block_q, C).transpose(2, 3).contiguous(),
                     transposer=_torch_transpose, _stats=stats)
    if transpose:
        lay.ensure_transpose()
    return lay


def wide_mask(lay: WideLayout, nq: int, nk: int) -> torch.Tensor:
    """(B, Nq, Nk) bool mask the wide layout encodes (tests only: N x N). Only the first ux_count chunks
    of each block are read (as the kernels do): what lies past them may be anything."""
    dev = lay.ns.device
    j = torch.arange(nk, device=dev)
    ns, lo, hi = (t.long().unsqueeze(-1) for t in (lay.ns, lay.lo, lay.hi))
    m = (j < ns) | ((j >= lo) & (j <= hi))
    B, nqb, W = lay.ux.shape
    bk, bq = lay.block_k, lay.block_q
    rows = torch.arange(nq, device=dev)
    ux = lay.ux[:, rows // bq].long()                                      # (B, Nq, W)
    C = lay.xbits.shape[2]
    words = lay.xbits.transpose(2, 3).reshape(B, nqb * bq, C)[:, :nq].long()  # (B, Nq, C)
    slot = torch.arange(W, device=dev)
    member = ((words[..., slot // bk] >> (slot % bk)) & 1) == 1          # (B, Nq, W)
    used = slot < lay.ux_count[:, rows // bq].long().unsqueeze(-1) * bk
    member &= (ux >= 0) & used
    extra = torch.zeros(B, nq, nk + 1, dtype=torch.bool, device=dev)
    extra.scatter_(2, torch.where(member, ux.clamp(0, nk), nk), True)
    return m | extra[..., :nk]
