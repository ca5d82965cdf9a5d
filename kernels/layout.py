"""Block layout derived from an AttentionPlan, for the tile kernels (Triton, FlexAttention in the bench).

Queries are cut into blocks of BQ consecutive rows, keys into blocks of BK positions. For each query block
we list the key blocks that any of its rows touches (the union; small, because ASA plans are mostly local)
and, for each (row, listed key block), a 64-bit membership mask: bit t set when key kb*BK + t is in the row.
The kernels run tensor-core tiles over the listed blocks and apply the exact per-row mask inside each tile.
For the backward pass over keys, the transpose: for each key block, the query blocks that touch it and the
slot the key block has in each one's list.

Built with a handful of torch ops on the plan's device: O(N*K) work plus one (nQB, nKB) bool table per
batch row (N^2 / (BQ*BK) bytes: 1 MiB at 64k tokens, never N^2).
"""
from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class BlockLayout:
    block_q: int
    block_k: int
    nk: int
    kb: torch.Tensor        # (B, nQB, U) int32 key blocks per query block, ascending, -1 padded
    kb_count: torch.Tensor  # (B, nQB) int32
    bits: torch.Tensor      # (B, Nq, U) int64 membership bits of row i in its block's j-th key block
    # transpose as CSR per batch row: key block kb's tiles are entries qb_ptr[b, kb] .. qb_ptr[b, kb+1]-1
    qb_ptr: torch.Tensor | None = None    # (B, nKB + 1) int32 offsets
    qb_idx: torch.Tensor | None = None    # (B, nQB * U) int32 query block of each tile, by key block
    qb_slot: torch.Tensor | None = None   # (B, nQB * U) int32 slot of the key block in that query block's list

    def max_segment(self) -> int:
        """Longest tile list of one key block in the transpose (host sync; cached)."""
        if getattr(self, "_max_seg", None) is None:
            self._max_seg = int((self.qb_ptr[:, 1:] - self.qb_ptr[:, :-1]).max())
        return self._max_seg

    @property
    def tiles(self) -> int:
        """Number of (query block, key block) tiles a head computes, summed over the batch."""
        return int(self.kb_count.sum())


def transpose_csr(kb: torch.Tensor, nkb: int):
    """(B, nQB, U) key-block lists (-1 padded) -> CSR by key block: (ptr, qb_idx, qb_slot). No host sync."""
    B, nqb, U = kb.shape
    flat = torch.where(kb >= 0, kb.long(), nkb).view(B, nqb * U)         # padding sorts last
    order = torch.argsort(flat, dim=1, stable=True)                       # by key block, then query block
    counts = torch.zeros(B, nkb + 1, dtype=torch.int32, device=kb.device)
    counts.scatter_add_(1, flat, torch.ones_like(flat, dtype=torch.int32))
    ptr = torch.zeros(B, nkb + 1, dtype=torch.int32, device=kb.device)
    ptr[:, 1:] = counts[:, :nkb].cumsum(1, dtype=torch.int32)
    return ptr, (order // U).to(torch.int32), (order % U).to(torch.int32)


def _compact(table: torch.Tensor):
    """(B, R, C) bool -> (list (B, R, U) int32 column ids ascending -1 padded, count (B, R), slot (B, R, C))."""
    B, R, C = table.shape
    slot = table.to(torch.int32).cumsum(-1, dtype=torch.int32) - 1     # (B, R, C) position in the row's list
    count = table.sum(-1, dtype=torch.int32)
    U = max(int(count.max()), 1) if count.numel() else 1
    out = torch.full((B, R, U + 1), -1, dtype=torch.int32, device=table.device)
    cols = torch.arange(C, dtype=torch.int32, device=table.device).expand(B, R, C)
    out.scatter_(2, torch.where(table, slot, U).long(), cols)           # misses land in spare column U
    return out[..., :U].contiguous(), count, slot


def build_layout(keys: torch.Tensor, nk: int, block_q: int = 64, block_k: int = 64,
                 transpose: bool = True) -> BlockLayout:
    """keys: (B, Nq, K) plan rows (absolute positions < nk, -1 padded). block_k must be <= 64 (one int64).
    Plain torch, any device (kernels/triton_sparse.py has a one-launch GPU builder with the same output)."""
    assert block_k <= 64, "membership masks are one int64 per (row, key block)"
    B, Nq, K = keys.shape
    dev = keys.device
    nqb, nkb = -(-Nq // block_q), -(-nk // block_k)
    keys = keys.long()
    valid = keys >= 0
    kblk = torch.where(valid, keys // block_k, nkb)                        # (B, Nq, K); padding -> spare nkb
    qblk = (torch.arange(Nq, device=dev) // block_q).view(1, Nq, 1)
    bidx = torch.arange(B, device=dev).view(B, 1, 1)
    table = torch.zeros(B * nqb * (nkb + 1), dtype=torch.bool, device=dev)
    table[((bidx * nqb + qblk) * (nkb + 1) + kblk).reshape(-1)] = True
    table = table.view(B, nqb, nkb + 1)[..., :nkb]                        # (B, nQB, nKB) touched tiles
    kb, kb_count, slot = _compact(table)
    U = kb.shape[-1]
    # slot of each plan entry's key block in its query block's list, then OR its bit (distinct keys: add == or)
    flat_slot = slot.view(B, nqb * nkb)
    j = torch.gather(flat_slot, 1, (qblk * nkb + kblk.clamp_max(nkb - 1)).expand(B, Nq, K).reshape(B, -1))
    j = torch.where(valid, j.view(B, Nq, K), 0)
    bit = torch.where(valid, torch.ones_like(keys) << (keys % block_k), 0)  # int64; bit 63 wraps, fine
    bits = torch.zeros(B, Nq, U, dtype=torch.int64, device=dev).scatter_add_(2, j, bit)
    lay = BlockLayout(block_q, block_k, nk, kb, kb_count, bits)
    if transpose:
        lay.qb_ptr, lay.qb_idx, lay.qb_slot = transpose_csr(kb, nkb)
    return lay


class LayoutCache:
    """The block layouts of the last few plans, so that every layer and head of a forward pass, and its
    backward, share one build: they all pass the same plan tensor.

    An entry is keyed on plain values: the plan tensor's id (checked against a weak reference on lookup,
    so a recycled id never hits), its version counter, shape, dtype, device and the key count nk. The
    version counter (`Tensor._version`) is the one torch internal read, on purpose: a plan edited in place
    (`keys[:, -1] = row`) keeps its identity, and nothing else tells the cache cheaply (no device sync, no
    hash of the contents) that its layout is stale; torch bumps it on every in-place op and uses it itself
    to catch edits of tensors saved for backward. Inference tensors (made under torch.inference_mode, as
    the runtime's prefill plans are) have no version counter (reading it raises), so they are keyed on
    identity alone: a plan edited in place under inference mode is not seen as new (the runtime builds a
    fresh plan tensor per call).
    Bounded LRU (a few plans live at once: train and eval batches, sessions sharing a model), and an entry
    leaves when its plan tensor is freed, so the cache never keeps GPU memory alive past its plan.
    """

    def __init__(self, build: Callable[..., BlockLayout], size: int = 4):
        assert size >= 1
        self.build, self.size = build, size           # build(keys, nk, transpose=...) -> BlockLayout
        self._entries: OrderedDict = OrderedDict()    # key -> (weakref to the plan, BlockLayout)
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    @staticmethod
    def key(keys: torch.Tensor, nk: int) -> tuple:
        dev = keys.device
        version = None if keys.is_inference() else keys._version
        return (id(keys), version, tuple(keys.shape), keys.dtype, dev.type, dev.index, int(nk))

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def get(self, keys: torch.Tensor, nk: int, transpose: bool = True) -> BlockLayout:
        """The layout of plan `keys` over nk keys, built on a miss; with the transpose if asked for."""
        k = self.key(keys, nk)
        with self._lock:
            hit = self._entries.get(k)
            if hit is not None and hit[0]() is keys:
                self._entries.move_to_end(k)
                self.hits += 1
                lay = hit[1]
                if transpose and lay.qb_ptr is None:      # built for inference, now needed for backward
                    lay.qb_ptr, lay.qb_idx, lay.qb_slot = transpose_csr(lay.kb, -(-nk // lay.block_k))
                return lay
        lay = self.build(keys, nk, transpose=transpose)
        entries = self._entries                           # the callback must not hold self: no cycle

        def drop(_ref, k=k):
            entries.pop(k, None)

        with self._lock:
            self.misses += 1
            entries[k] = (weakref.ref(keys, drop), lay)
            while len(entries) > self.size:
                entries.popitem(last=False)
        return lay
