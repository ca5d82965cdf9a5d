"""Bounded KV cache: eviction keeps exactly the keys the policy can still select, and logits do not change."""
import numpy as np
import pytest
import torch
from conftest import PARAGRAPHS, WindowPlanner
from test_generate import needs_analyzer

from asa_runtime.generate import GenerationError, Session, load
from asa_runtime.kv_policy import CacheFull, SlotMap


def test_slotmap_identity_without_bound():
    m = SlotMap(ctx_size=10, n_slots=10)
    pos, slots = m.assign(4)
    assert pos.tolist() == slots.tolist() == [0, 1, 2, 3]
    rows = np.array([[0, 2, -1], [1, 3, -1]])
    assert m.map_rows(rows).tolist() == [[0, 2, -1], [1, 3, -1]]


def test_compact_keeps_exactly_reachable_in_order():
    m = SlotMap(ctx_size=100, n_slots=8)
    m.assign(8)                                           # positions 0..7 in slots 0..7
    src, dst = m.compact(np.array([0, 3, 6, 7, 50]))      # 50 is not cached: ignored
    assert src.tolist() == [3, 6, 7] and dst.tolist() == [1, 2, 3]     # slot 0 stays where it is
    assert m.cached_positions().tolist() == [0, 3, 6, 7] and m.n_used == 4 and m.evicted == 4
    assert m.map_rows(np.array([0, 3, 7, -1])).tolist() == [0, 1, 3, -1]   # monotonic: rows stay ascending
    with pytest.raises(CacheFull, match="evicted position 5"):
        m.map_rows(np.array([0, 5, -1]))
    pos, slots = m.assign(2)
    assert pos.tolist() == [8, 9] and slots.tolist() == [4, 5]


def test_room_compacts_only_when_full():
    m = SlotMap(ctx_size=100, n_slots=6)
    calls = []
    reach = lambda: calls.append(1) or np.array([1, 4])
    n, moves = m.room(4, reach)
    assert (n, moves, calls) == (4, None, [])
    m.assign(4)
    n, moves = m.room(5, reach)                           # 4 used + 5 > 6: compact to {1, 4}, then 4 fit
    # position 4 was not cached yet (only 0..3), so only 1 survives and 5 slots are free
    assert calls == [1] and n == 5 and moves[0].tolist() == [1] and m.cached_positions().tolist() == [1]


def test_room_raises_when_policy_keeps_everything():
    m = SlotMap(ctx_size=100, n_slots=4)
    m.assign(4)
    with pytest.raises(CacheFull, match="too small"):
        m.room(1, lambda: np.arange(4))


def run(lm, ids, steps, max_kv):
    s = Session(lm, ctx_size=400, max_kv_size=max_kv, prefill_chunk=16)
    seen = []
    if max_kv:                                     # check every compaction against the policy's reachable set
        orig = s.slots.compact

        def checked(reachable):
            before = set(s.slots.cached_positions().tolist())
            out = orig(reachable)
            after = s.slots.cached_positions().tolist()
            assert after == sorted(before & set(np.asarray(reachable).tolist()))
            assert after == sorted(after)
            seen.append(len(after))
            return out
        s.slots.compact = checked
    logits = [s.feed(ids)]
    for _ in range(steps):
        logits.append(s.step(int(logits[-1].argmax())))
    s.kv_at_end = s.kv_bytes()     # the model holds one cache: read it before the next session replaces it
    return torch.stack(logits), s, seen


def test_eviction_keeps_reachable_and_logits_unchanged(tiny_checkpoint):
    planner = WindowPlanner()
    lm = load(tiny_checkpoint, planner=planner)
    ids = lm.tokenizer.encode(PARAGRAPHS[3])[:60]
    full, s_full, _ = run(lm, ids, 120, None)
    bounded, s_b, seen = run(lm, ids, 120, 20)
    assert len(seen) > 5 and s_b.slots.evicted > 100
    # same keys in the same order; only prefill chunk boundaries differ (float32 summation order)
    torch.testing.assert_close(bounded, full, atol=1e-5 * full.abs().max().item(), rtol=1e-5)
    assert bounded.argmax(-1).tolist() == full.argmax(-1).tolist()
    # at the end the cache holds what the policy can still select plus tokens added since the last compaction
    cached = set(s_b.slots.cached_positions().tolist())
    assert set(s_b.plan.reachable().tolist()) <= cached
    assert s_b.kv_at_end == s_full.kv_at_end * 20 // 400     # memory: 20 slots instead of 400


@needs_analyzer
def test_eviction_with_the_real_planner(tiny_checkpoint):
    lm = load(tiny_checkpoint)
    ids = lm.tokenizer.encode(PARAGRAPHS[0] + " " + PARAGRAPHS[4])[:150]
    full, _, _ = run(lm, ids, 60, None)
    bounded, s_b, seen = run(lm, ids, 60, 120)
    assert len(seen) >= 1
    torch.testing.assert_close(bounded, full, atol=1e-5 * full.abs().max().item(), rtol=1e-5)


def test_bound_too_small(tiny_checkpoint):
    lm = load(tiny_checkpoint, planner=WindowPlanner())
    s = Session(lm, ctx_size=200, max_kv_size=8, prefill_chunk=4)
    with pytest.raises(CacheFull, match="too small"):
        s.feed(lm.tokenizer.encode(PARAGRAPHS[0])[:40])
    assert s.tokens == [] and s.slots.n_used == 0          # a failed feed leaves a clean, usable session
    assert s.feed(lm.tokenizer.encode(PARAGRAPHS[0])[:5]).shape == (lm.tokenizer.vocab_size,)


def test_dense_model_cannot_evict(tiny_dense_checkpoint):
    lm = load(tiny_dense_checkpoint)
    with pytest.raises(GenerationError, match="sparse"):
        Session(lm, ctx_size=200, max_kv_size=50)


# ---- the default: a sparse model's cache is bounded losslessly without a flag --------------------------------
def _greedy_logits(s, ids, steps):
    out = [s.feed(ids)]
    for _ in range(steps):
        out.append(s.step(int(out[-1].argmax())))
    return torch.stack(out)


def test_default_cache_is_bounded_and_lossless(tiny_checkpoint):
    lm = load(tiny_checkpoint, planner=WindowPlanner())
    ids = (lm.tokenizer.encode(" ".join(PARAGRAPHS)) * 12)[:2400]
    every = Session(lm, ctx_size=3000, max_kv_size=3000)            # a bound of the context: keeps every key
    auto = Session(lm, ctx_size=3000)
    assert not every.slots.bounded and auto.slots.growable and auto.slots.n_slots == 1024
    full, bounded = _greedy_logits(every, ids, 30), _greedy_logits(auto, ids, 30)
    assert auto.slots.compactions >= 2 and auto.cache.n_slots == 1024     # no growth: the window policy is small
    assert auto.kv_bytes() * 2 < every.kv_bytes()
    torch.testing.assert_close(bounded, full, atol=1e-5 * full.abs().max().item(), rtol=1e-5)
    assert bounded.argmax(-1).tolist() == full.argmax(-1).tolist()


def test_default_cache_grows_when_the_policy_keeps_more(tiny_checkpoint):
    """A policy that keeps over half the rows reachable: the cache doubles instead of failing or thrashing."""
    class KeepsMore(WindowPlanner):          # rows take the most recent K keys; reachable() stays ~1/3 of the past
        def row_keys(self, i):
            return super().row_keys(i)[-self.k:]

    lm = load(tiny_checkpoint, planner=KeepsMore(lookback=4000, every=3))
    ids = (lm.tokenizer.encode(" ".join(PARAGRAPHS)) * 12)[:2600]
    every = Session(lm, ctx_size=3000, max_kv_size=3000)
    auto = Session(lm, ctx_size=3000)
    full, grown = _greedy_logits(every, ids, 10), _greedy_logits(auto, ids, 10)
    assert auto.cache.n_slots == auto.slots.n_slots == 2048                 # grew once, 1024 -> 2048
    assert set(auto.plan.reachable().tolist()) <= set(auto.slots.cached_positions().tolist())
    torch.testing.assert_close(grown, full, atol=1e-5 * full.abs().max().item(), rtol=1e-5)


def test_rewind_after_a_compaction_reuses_the_prefix(tiny_checkpoint):
    """Chat turns rewind to an earlier mark; a compaction since then no longer forces a full recompute when
    every key the mark's plan could reach is still cached."""
    lm = load(tiny_checkpoint, planner=WindowPlanner())
    base = (lm.tokenizer.encode(" ".join(PARAGRAPHS)) * 12)[:1000]
    s = Session(lm, ctx_size=3000)
    s.prepare(base)                                                         # mark at 1000 tokens
    for t in (lm.tokenizer.encode(PARAGRAPHS[1]) * 2)[:100]:                # a reply crosses a compaction
        s.step(t)
    assert s.slots.compactions >= 1
    other = lm.tokenizer.encode(PARAGRAPHS[2])[:20]
    logits, computed = s.prepare(base + other)                              # the reply is replaced
    assert computed == len(other) and s.n_past == 1020
    ref = Session(lm, ctx_size=3000, max_kv_size=3000)
    want = ref.feed(base + other)
    torch.testing.assert_close(logits, want, atol=1e-5 * want.abs().max().item(), rtol=1e-5)


def test_random_controls_keep_every_key(tiny_checkpoint):
    from asa_runtime.kv_policy import auto_kv_slots

    assert auto_kv_slots(64, 32768) == 1024 and auto_kv_slots(64, 500) == 500 and auto_kv_slots(128, 1 << 20) == 2048
    lm = load(tiny_checkpoint, mode="random_bonds")
    assert not Session(lm, ctx_size=3000).slots.growable
