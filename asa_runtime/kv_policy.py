"""Token positions -> KV-cache slots, and bounded KV memory by eviction.

Without a bound a position's slot is the position itself. With a bound (`--max-kv-size M`) the cache holds M
slots; when a new chunk does not fit, the cache is *compacted*: the positions the selection policy can still
select (the planner's `reachable()`) move, in order, to the front, and every other slot is freed. Compaction
keeps the position -> slot map monotonic, so plan rows mapped to slots stay ascending (the kernel contract)
and each row gathers the same keys in the same order: logits are bit-identical to the unbounded cache.
Amortised cost: one copy of the R kept rows per (M - R) tokens.

By default (no `--max-kv-size`) a sparse model's cache is bounded the same lossless way but sized on its
own: it starts at `auto_kv_slots` rows and doubles (up to the context) when, after a compaction, the keys
the policy can still select fill more than half of it. Memory then follows what the plan can reach, not
the context length, with the same bit-identical attention.

Plan rows handed to the model hold SLOTS; `map_rows` translates them through a preallocated table whose
last entry is -1, so padding (-1) maps to -1 without a branch.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .errors import CacheFull


def auto_kv_slots(plan_k: int, ctx_size: int) -> int:
    """Initial cache rows of a sparse model without --max-kv-size: room for a prefill chunk beside the keys
    a plan of width K keeps reachable in ordinary prose (sinks, window, the sentence so far: a few hundred)."""
    return min(ctx_size, max(1024, 16 * plan_k))


class SlotMap:
    def __init__(self, ctx_size: int, n_slots: int, growable: bool = False):
        if n_slots < 1 or ctx_size < 1:
            raise ValueError("ctx_size and n_slots must be >= 1")
        self.ctx_size = ctx_size
        self.n_slots = n_slots
        self.growable = growable     # auto-sized: grow() when the reachable keys fill half the slots
        self.bounded = n_slots < ctx_size
        self.pos2slot = np.full(ctx_size + 1, -1, dtype=np.int64)   # [-1] stays -1: maps padding
        self.slot2pos = np.full(n_slots, -1, dtype=np.int64)
        self.n_used = 0          # slots [0, n_used) are occupied, in increasing position order
        self.n_pos = 0           # positions [0, n_pos) have been assigned (some maybe evicted)
        self.compactions = 0
        self.evicted = 0

    def reset(self) -> None:
        self.pos2slot.fill(-1)
        self.slot2pos.fill(-1)
        self.n_used = self.n_pos = self.compactions = self.evicted = 0

    # ---- allocation ------------------------------------------------------------------------------
    def room(self, want: int, reachable: Callable[[], np.ndarray]) -> tuple[int, tuple[np.ndarray, np.ndarray] | None]:
        """How many of `want` new tokens fit now (>= 1), compacting first if needed. Returns
        (n, moves) where moves = (src_slots, dst_slots) the backend must copy, or None. A growable map
        that needs more rows than it has raises nothing: call `wants_growth` first and `grow`."""
        if self.n_pos + 1 > self.ctx_size:
            raise CacheFull(f"context full ({self.ctx_size} positions)")
        want = min(want, self.ctx_size - self.n_pos)
        if self.n_used + want <= self.n_slots:
            return want, None
        if not self.bounded:
            raise CacheFull(f"KV cache full ({self.n_slots} slots)")
        moves = self.compact(reachable())
        free = self.n_slots - self.n_used
        if free < 1:
            raise CacheFull(f"--max-kv-size {self.n_slots} is too small: the selection policy can still "
                            f"select {self.n_used} cached keys")
        return min(want, free), moves

    def grow(self, n_slots: int) -> None:
        """More rows (the cache is reallocated by the caller, rows 0..n_used-1 copied over)."""
        n_slots = min(n_slots, self.ctx_size)
        assert n_slots >= self.n_slots
        s2p = np.full(n_slots, -1, dtype=np.int64)
        s2p[: self.n_slots] = self.slot2pos
        self.slot2pos, self.n_slots = s2p, n_slots
        self.bounded = n_slots < self.ctx_size

    def wants_growth(self, want: int) -> int:
        """Growable maps: the row count to grow to after a compaction left `n_used` keys (0: none needed).
        Doubling when the kept keys fill over half the rows keeps compaction amortised O(1) per token."""
        if not self.growable or not self.bounded:
            return 0
        want = min(want, self.ctx_size - self.n_pos)
        if self.n_used + want <= self.n_slots and 2 * self.n_used <= self.n_slots:
            return 0
        n = self.n_slots
        while n < self.ctx_size and (self.n_used + want > n or 2 * self.n_used > n):
            n *= 2
        return min(n, self.ctx_size)

    def assign(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Positions and slots (int64 arrays of length n) for the next n tokens; call room() first."""
        pos = np.arange(self.n_pos, self.n_pos + n, dtype=np.int64)
        slots = np.arange(self.n_used, self.n_used + n, dtype=np.int64)
        assert self.n_used + n <= self.n_slots and self.n_pos + n <= self.ctx_size
        self.pos2slot[pos] = slots
        self.slot2pos[slots] = pos
        self.n_pos += n
        self.n_used += n
        return pos, slots

    def compact(self, reachable: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Keep exactly the cached positions in `reachable`; move them to slots 0..R-1 (order kept)."""
        reachable = np.asarray(reachable, dtype=np.int64)
        cached = self.slot2pos[: self.n_used]
        keep_mask = np.isin(cached, reachable, assume_unique=True)
        src = np.nonzero(keep_mask)[0].astype(np.int64)                   # old slots, ascending
        kept_pos = cached[src]
        dst = np.arange(len(src), dtype=np.int64)
        self.pos2slot[cached[~keep_mask]] = -1
        self.evicted += int((~keep_mask).sum())
        self.slot2pos[: self.n_used] = -1
        self.slot2pos[dst] = kept_pos
        self.pos2slot[kept_pos] = dst
        self.n_used = len(src)
        self.compactions += 1
        moved = src != dst                                                # a kept prefix stays in place
        return src[moved], dst[moved]

    # ---- lookup ----------------------------------------------------------------------------------
    def map_rows(self, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Plan rows of positions (-1 padded) -> rows of slots. Raises if a row selects an evicted key."""
        out = np.take(self.pos2slot, rows, out=out)
        if self.bounded and np.count_nonzero(out < 0) != np.count_nonzero(rows < 0):
            bad = rows[(out < 0) & (rows >= 0)]
            raise CacheFull(f"plan selected evicted position {int(bad[0])}: the planner's reachable() "
                            f"did not include it")
        return out

    def truncate(self, n_pos: int) -> None:
        """Forget positions >= n_pos (a rewind). Slots hold positions in increasing order, so those are the
        last used slots, compactions or not; the caller checks that the keys it needs are still cached."""
        n_used = int(np.searchsorted(self.slot2pos[: self.n_used], n_pos))
        self.pos2slot[n_pos: self.n_pos] = -1
        self.slot2pos[n_used: self.n_used] = -1
        self.n_pos, self.n_used = n_pos, n_used

    def cached_positions(self) -> np.ndarray:
        return self.slot2pos[: self.n_used].copy()

    # ---- state (prompt caches) ----------------------------------------------------------------------
    def state(self) -> dict:
        """{"slot2pos": (n_used,) int64 the position each kept row holds, "n_pos": positions assigned}."""
        return {"slot2pos": self.slot2pos[: self.n_used].copy(), "n_pos": self.n_pos}

    def load_state(self, state: dict) -> None:
        """Inverse of state(). Raises CacheFull if it does not fit, ValueError if it is not a slot map."""
        slot2pos = np.asarray(state["slot2pos"], dtype=np.int64)
        n, n_pos = len(slot2pos), int(state["n_pos"])
        if n > self.n_slots or n_pos > self.ctx_size:
            raise CacheFull(f"saved cache holds {n} keys over {n_pos} positions; this session has "
                            f"{self.n_slots} slots and a context of {self.ctx_size}")
        if n and (slot2pos.min() < 0 or slot2pos.max() >= n_pos or np.any(np.diff(slot2pos) <= 0)):
            raise ValueError("slot map positions must be ascending and inside the saved prefix")
        self.reset()
        self.slot2pos[:n] = slot2pos
        self.pos2slot[slot2pos] = np.arange(n, dtype=np.int64)
        self.n_used, self.n_pos = n, n_pos
