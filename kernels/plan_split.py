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
  * structured key blocks: the sink blocks [0, ceil(max ns / BK)) and the window blocks
    [min lo // BK, max hi // BK], as one ascending list (the kernels mask each tile from the row's three
    numbers, no membership words); its transpose (key block -> query blocks) for dk/dv, as in layout.py;
  * the union of the block's irregular positions, sorted, in chunks of BK gathered keys, with one 64-bit
    membership word per (row, chunk): strided keys shared by the block's rows collapse into one chunk, and
    far bonds cost one gathered column each instead of one tile each.
Built with torch ops on the plan's device (any device): O(N*K) work, two host syncs (list widths and the
wide/narrow decision), never anything N x N.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .layout import transpose_csr

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


@dataclass
class WideLayout:
    wide: bool                # False: a narrow plan, for the narrow tile kernels (nothing else built)
    block_q: int
    block_k: int
    nk: int
    kb: torch.Tensor          # (B, nQB, US) int32 structured key blocks per query block, ascending, -1 padded
    kb_count: torch.Tensor | None = None   # (B, nQB) int32
    ns: torch.Tensor | None = None         # (B, Nq) int32 (PlanSplit)
    lo: torch.Tensor | None = None
    hi: torch.Tensor | None = None
    ux: torch.Tensor | None = None         # (B, nQB, C * BK) int32 block's irregular keys, -1 pad
    ux_count: torch.Tensor | None = None   # (B, nQB) int32 chunks of BK gathered keys in use
    xbits: torch.Tensor | None = None      # (B, Nq, C) int64 membership of row i in its block's chunk c
    qb_ptr: torch.Tensor | None = None     # transpose of kb as CSR (layout.transpose_csr)
    qb_idx: torch.Tensor | None = None
    qb_slot: torch.Tensor | None = None
    stats: dict = field(default_factory=dict)

    def max_segment(self) -> int:
        if getattr(self, "_max_seg", None) is None:
            self._max_seg = int((self.qb_ptr[:, 1:] - self.qb_ptr[:, :-1]).max())
        return self._max_seg

    @property
    def chunks(self) -> int:
        return self.xbits.shape[-1]


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
    WIDE_MIN_STRUCTURED), unless `force` says. block_k <= 64 (membership words are one int64)."""
    assert block_k <= 64
    B, Nq, K = keys.shape
    dev = keys.device
    nqb, nkb = -(-Nq // block_q), -(-nk // block_k)
    sp = split_rows(keys)
    ns, lo, hi = sp.ns.long(), sp.lo.long(), sp.hi.long()
    max_ns = _per_block(ns, nqb, block_q, 0, "max")
    wlo = _per_block(lo, nqb, block_q, _BIG, "min") // block_k
    whi = _per_block(hi, nqb, block_q, -1, "max") // block_k
    nsb = torch.minimum(-(-max_ns // block_k), wlo)                    # sink blocks below the window's
    scount = nsb + (whi - wlo + 1)
    structured = (ns + (hi - lo + 1)).sum()
    s_sum, e_max, us = torch.stack([structured, sp.n_extra.max(), scount.max()]).tolist()  # sync 1
    s_mean = s_sum / (B * Nq)
    wide = (s_mean >= (WIDE_MIN_STRUCTURED if min_structured is None else min_structured)) if force is None \
        else force
    stats = dict(structured_mean=s_mean, extra_max=int(e_max))
    if not wide:
        empty = torch.full((B, 1, 1), -1, dtype=torch.int32, device=dev)
        lay = WideLayout(False, block_q, block_k, nk, empty, stats=stats)
        if transpose:
            lay.qb_ptr, lay.qb_idx, lay.qb_slot = transpose_csr(lay.kb, 1)
        return lay
    # structured lists: sink blocks 0..nsb-1, then window blocks wlo..whi
    u = torch.arange(max(int(us), 1), device=dev)
    kb = torch.where(u < nsb.unsqueeze(-1), u,
                     torch.where(u < scount.unsqueeze(-1), wlo.unsqueeze(-1) + u - nsb.unsqueeze(-1), -1))
    kb = kb.to(torch.int32).contiguous()
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
    lay = WideLayout(True, block_q, block_k, nk, kb,
                     kb_count=scount.to(torch.int32).contiguous(),
                     ns=sp.ns.contiguous(), lo=sp.lo.contiguous(), hi=sp.hi.contiguous(),
                     ux=ux[:, :W].to(torch.int32).view(B, nqb, W).contiguous(),
                     ux_count=(-(-count // block_k)).to(torch.int32).view(B, nqb).contiguous(),
                     xbits=xbits.view(B, nqb * block_q, C)[:, :Nq].contiguous(), stats=stats)
    stats["chunks"] = C
    if transpose:
        lay.qb_ptr, lay.qb_idx, lay.qb_slot = transpose_csr(kb, nkb)
    return lay


def wide_mask(lay: WideLayout, nq: int, nk: int) -> torch.Tensor:
    """(B, Nq, Nk) bool mask the wide layout encodes (tests only: N x N)."""
    dev = lay.ns.device
    j = torch.arange(nk, device=dev)
    ns, lo, hi = (t.long().unsqueeze(-1) for t in (lay.ns, lay.lo, lay.hi))
    m = (j < ns) | ((j >= lo) & (j <= hi))
    B, nqb, W = lay.ux.shape
    bk = lay.block_k
    rows = torch.arange(nq, device=dev)
    ux = lay.ux[:, rows // lay.block_q].long()                            # (B, Nq, W)
    words = lay.xbits.long()                                              # (B, Nq, C)
    slot = torch.arange(W, device=dev)
    member = ((words[..., slot // bk] >> (slot % bk)) & 1) == 1          # (B, Nq, W)
    member &= ux >= 0
    extra = torch.zeros(B, nq, nk + 1, dtype=torch.bool, device=dev)
    extra.scatter_(2, torch.where(member, ux, nk), True)
    return m | extra[..., :nk]
