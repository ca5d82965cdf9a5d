"""LayoutCache (kernels/layout.py): one build per plan tensor, rebuilt when the plan changes, bounded, and
never outliving its plan. CPU, with the torch layout builder (the Triton path plugs in its GPU builder)."""
from __future__ import annotations

import torch

from kernel_cases import make_plan
from kernels.layout import LayoutCache, build_layout


class CountingBuild:
    def __init__(self):
        self.calls = 0

    def __call__(self, keys, nk, transpose=True):
        self.calls += 1
        return build_layout(keys, nk, transpose=transpose)


def _same_layout(a, b):
    return torch.equal(a.kb, b.kb) and torch.equal(a.kb_count, b.kb_count) and torch.equal(a.bits, b.bits)


def test_same_plan_tensor_is_built_once():
    build = CountingBuild()
    cache = LayoutCache(build)
    keys = make_plan("asa", 2, 200, 24, seed=1)
    first = cache.get(keys, 200)
    assert cache.get(keys, 200) is first and build.calls == 1
    assert cache.get(keys, 210) is not first and build.calls == 2          # another key count: its own entry


def test_plan_edited_in_place_is_rebuilt():
    build = CountingBuild()
    cache = LayoutCache(build)
    keys = make_plan("asa", 1, 200, 24, seed=2)
    old = cache.get(keys, 200)
    keys.copy_(make_plan("random", 1, 200, 24, seed=3))                  # same object, new contents
    new = cache.get(keys, 200)
    assert build.calls == 2 and new is not old
    assert _same_layout(new, build_layout(keys, 200))


def test_inference_plans_are_cached_by_identity():
    # inference tensors have no version counter (reading it raises); the runtime's prefill plans are such
    build = CountingBuild()
    cache = LayoutCache(build)
    with torch.inference_mode():
        keys = make_plan("asa", 1, 130, 16, seed=4).clone()
    assert keys.is_inference()
    lay = cache.get(keys, 130)
    assert cache.get(keys, 130) is lay and build.calls == 1


def test_transpose_is_added_to_a_forward_only_entry():
    build = CountingBuild()
    cache = LayoutCache(build)
    keys = make_plan("asa", 2, 300, 24, seed=5)
    lay = cache.get(keys, 300, transpose=False)
    assert lay.qb_ptr is None
    again = cache.get(keys, 300, transpose=True)
    want = build_layout(keys, 300, transpose=True)
    assert again is lay and build.calls == 1
    assert torch.equal(lay.qb_ptr, want.qb_ptr) and torch.equal(lay.qb_idx, want.qb_idx)
    assert torch.equal(lay.qb_slot, want.qb_slot)


def test_bounded_lru_and_entries_leave_with_their_plan():
    build = CountingBuild()
    cache = LayoutCache(build, size=2)
    a, b, c = (make_plan("asa", 1, 100, 16, seed=s) for s in (6, 7, 8))
    cache.get(a, 100)
    cache.get(b, 100)
    cache.get(a, 100)                                                      # a is now the most recent
    cache.get(c, 100)                                                      # evicts b
    assert len(cache) == 2 and build.calls == 3
    cache.get(a, 100)
    assert build.calls == 3
    cache.get(b, 100)
    assert build.calls == 4                                                # b was evicted: rebuilt
    del b, c                                                               # plans freed: entries go
    assert len(cache) == 1                                                 # a's
    del a
    assert len(cache) == 0


def test_a_new_tensor_with_equal_contents_is_a_new_entry():
    # identity, not contents: a fresh plan tensor (the next batch) never reuses a layout by accident
    build = CountingBuild()
    cache = LayoutCache(build)
    keys = make_plan("asa", 1, 100, 16, seed=9)
    lay = cache.get(keys, 100)
    other = keys.clone()
    assert cache.get(other, 100) is not lay and build.calls == 2
