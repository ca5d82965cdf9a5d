"""The static decode step (what a CUDA graph replays) against the eager one.

On the CPU: `Transformer.decode_one` in its static form (0-d tensor position and slot, a padded plan row with
a mask; dense masked over every slot) gives the eager step's logits and cache, step after step. On a GPU
(device machine: python -m pytest -m gpu tests/test_cuda_graph.py): greedy generation with the decode step
replayed from CUDA graphs gives the eager tokens, for ASA, for dense, and through cache compaction.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from asa_runtime.backends.cuda_graph import any_far
from asa_runtime.config import PRESETS, ModelConfig, PlanConfig
from asa_runtime.model import Transformer


def _model(mode: str, rope_clamp: int = 0) -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig(**{**PRESETS["test"], "vocab_size": 97, "plan": PlanConfig(mode=mode, k=8),
                         "rope_clamp": rope_clamp})
    m = Transformer(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(5.0)
    return m


@pytest.mark.parametrize("mode,clamp,host", [("full", 0, False), ("full", 5, False), ("full", 5, True),
                                             ("none", 0, False)])
def test_static_decode_step_matches_the_eager_step(mode, clamp, host):
    """host: the graph's way with a clamp, no key positions (no rotations) when any_far says none is far."""
    m = _model(mode, clamp)
    S, K = 24, 8
    eager, static = m.make_cache(S), m.make_cache(S)
    m.rope_table(S)
    rng = np.random.default_rng(1)
    ar = torch.arange(K if mode != "none" else S)
    seen = set()
    with torch.inference_mode():
        for pos in range(S):
            tok = int(rng.integers(97))
            if mode == "none":
                idx = pad = None
                mask = ar <= pos
            else:
                past = rng.permutation(pos)[: int(rng.integers(0, K))]
                keys = np.sort(np.unique(np.r_[past, pos]))[:K]
                idx = torch.from_numpy(keys).long()
                pad = torch.zeros(K, dtype=torch.long)
                pad[: len(keys)] = idx
                mask = ar < len(keys)
            kp = dict(key_pos=idx) if clamp else {}               # slots are positions here (no eviction)
            a = m.decode_one(tok, idx, pos, pos, eager, **kp)
            kp = dict(key_pos=pad) if clamp else {}
            if host:
                far = any_far(keys, pos, clamp)
                seen.add(far)
                kp = dict(key_pos=pad if far else pad[:0])
            b = m.decode_one(torch.tensor(tok), pad, torch.tensor(pos), torch.tensor(pos), static, mask=mask, **kp)
            # masked vs unmasked SDPA round differently (weights x5: logits ~1e2); a wrong key gives O(1) errors
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
    for ce, cs in zip(eager, static):
        torch.testing.assert_close(cs.k, ce.k)
        torch.testing.assert_close(cs.v, ce.v)
    if host:
        assert seen == {False, True}                             # steps with and without far keys


def test_any_far():
    assert any_far(np.array([0, 1, 40, 95, 99]), 100, 50) and not any_far(np.array([50, 99]), 100, 50)
    assert not any_far(np.array([], dtype=np.int64), 100, 50)


def test_static_step_masks_padding_instead_of_reading_it():
    """Padding points at slot 0 (valid memory); the mask must drop it: garbage there changes nothing."""
    m = _model("full")
    c = m.make_cache(8)
    m.rope_table(8)
    with torch.inference_mode():
        for pos in range(4):
            m.decode_one(pos + 1, torch.arange(pos + 1), pos, pos, c)
        row = torch.tensor([2, 3, 4, 0, 0, 0, 0, 0])
        mask = torch.arange(8) < 3
        snap = [(x.k.clone(), x.v.clone()) for x in c]
        a = m.decode_one(torch.tensor(5), row, torch.tensor(4), torch.tensor(4), c, mask=mask)
        for x, (k, v) in zip(c, snap):                       # same step again with slot 0 scrambled
            x.k.copy_(k)
            x.v.copy_(v)
            x.k[:, :, 0] = 1e4
            x.v[:, :, 0] = -1e4
        b = m.decode_one(torch.tensor(5), row, torch.tensor(4), torch.tensor(4), c, mask=mask)
    torch.testing.assert_close(a, b)


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _greedy(lm, prompt, graph: bool, **kw) -> list[int]:
    from asa_runtime.generate import stream_generate

    lm.backend.cuda_graph = graph
    return [r.token for r in stream_generate(lm, prompt, max_tokens=40, temp=0, **kw)]


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("which", ["tiny_checkpoint", "tiny_dense_checkpoint"])
def test_graphed_decode_gives_the_eager_tokens(which, request):
    from asa_runtime.generate import load

    lm = load(request.getfixturevalue(which), device="cuda")
    prompt = "The old lighthouse keeper climbed the stairs every evening and"
    eager = _greedy(lm, prompt, False)
    assert _greedy(lm, prompt, True) == eager
    assert _greedy(lm, prompt, True) == eager                  # a second session: its own cache and graph


@pytest.mark.gpu
@gpu
def test_graphed_decode_survives_compaction(tiny_checkpoint):
    from conftest import WindowPlanner

    from asa_runtime.generate import load

    lm = load(tiny_checkpoint, device="cuda", planner=WindowPlanner())      # a known, small reachable set
    prompt = "Maria bought three apples, a loaf of bread and a small jar of honey and"
    eager = _greedy(lm, prompt, False, max_kv_size=24)
    assert _greedy(lm, prompt, True, max_kv_size=24) == eager


@pytest.mark.gpu
@gpu
def test_graphed_decode_with_a_rope_clamp(tiny_checkpoint):
    """The clamp's key positions travel in the graph's buffer: graphed tokens equal eager ones, with eviction."""
    from conftest import WindowPlanner

    from asa_runtime.generate import load

    lm = load(tiny_checkpoint, device="cuda", planner=WindowPlanner(lookback=40), rope_clamp=8)
    prompt = "Maria bought three apples, a loaf of bread and a small jar of honey and"
    eager = _greedy(lm, prompt, False, max_kv_size=32)
    assert _greedy(lm, prompt, True, max_kv_size=32) == eager
    lm.config.rope_clamp = 0                                    # and the clamp changes the generation
    assert _greedy(lm, prompt, False, max_kv_size=32) != eager
