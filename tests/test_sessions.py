"""Many sessions of one loaded model: interleaved generations equal their solo runs (tokens and logits);
building a backend leaves the caller's model untouched; the model's weight layouts; the session state
protocol; attention weights for the bonds view."""
import numpy as np
import pytest
import torch
from conftest import PARAGRAPHS, WindowPlanner

from asa_runtime.backends import make_backend
from asa_runtime.checkpoint import load_checkpoint
from asa_runtime.generate import GenerationError, Session, from_model, load
from asa_runtime.model import Transformer
from asa_runtime.sampling import Sampler, SamplerConfig


def run(session, prompt_ids, n, seed):
    """Sampled generation (temperature 1, seeded) one step at a time: a generator of (token, logits)."""
    sampler = Sampler(SamplerConfig(temp=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=seed))
    logits = session.feed(prompt_ids)
    history = list(prompt_ids)
    for _ in range(n):
        t = sampler(logits[: session.n_vocab], history)
        history.append(t)
        yield t, logits.clone()
        logits = session.step(t)


@pytest.mark.parametrize("which", ["dense", "sparse", "evicting"])
def test_interleaved_sessions_equal_solo_runs(tiny_checkpoint, tiny_dense_checkpoint, which):
    lm = load(tiny_dense_checkpoint) if which == "dense" else load(tiny_checkpoint, planner=WindowPlanner())
    kw = dict(ctx_size=128, prefill_chunk=8, max_kv_size=24 if which == "evicting" else None)
    tok = lm.tokenizer
    prompts = [tok.encode(PARAGRAPHS[0])[:30], tok.encode(PARAGRAPHS[3])[:11], tok.encode(PARAGRAPHS[4])[:45]]
    solo = [list(run(Session(lm, **kw), p, 40, seed=i)) for i, p in enumerate(prompts)]
    gens = [run(Session(lm, **kw), p, 40, seed=i) for i, p in enumerate(prompts)]
    got = [[] for _ in prompts]
    for step in range(40):                         # round robin, a different order every step
        order = range(len(gens)) if step % 2 else reversed(range(len(gens)))
        for i in order:
            got[i].append(next(gens[i]))
    for want, have in zip(solo, got):
        assert [t for t, _ in have] == [t for t, _ in want]
        for (_, a), (_, b) in zip(have, want):
            assert torch.equal(a, b)


def test_backend_never_changes_the_callers_model(tiny_tokenizer):
    from conftest import TEST_PLAN

    from asa_runtime.config import PRESETS, ModelConfig, PlanConfig

    cfg = ModelConfig(**{**PRESETS["test"], "vocab_size": tiny_tokenizer.vocab_size,
                         "plan": PlanConfig(mode="full", **TEST_PLAN)})
    model = Transformer(cfg).train()
    before = {n: (p, p.requires_grad, p.detach().clone()) for n, p in model.named_parameters()}
    lm = from_model(model, tiny_tokenizer, planner=WindowPlanner())
    s = Session(lm, ctx_size=64)
    s.feed(tiny_tokenizer.encode(PARAGRAPHS[0])[:20])
    s.step(3)
    after = dict(model.named_parameters())
    assert after.keys() == before.keys()
    for n, (p, grad, value) in before.items():
        assert after[n] is p and p.requires_grad == grad and torch.equal(p.detach(), value), n
    assert model.training                                  # still trainable: a step changes the weights
    loss = model(torch.tensor([[1, 2, 3]]))[0].logsumexp(-1).sum()
    loss.backward()
    assert model.layers[0].attention.wqkv.weight.grad is not None


def test_split_llama_layout_round_trip(tiny_checkpoint):
    """Checkpoints hold split Llama-named projections; the model fuses them on load (load_state_dict too)."""
    model = load_checkpoint(tiny_checkpoint).model
    llama = model.llama_state_dict()
    assert "layers.0.attention.wq.weight" in llama and "layers.0.feed_forward.w3.weight" in llama
    assert not any("wqkv" in k or "w13" in k for k in llama)
    fresh = Transformer(model.cfg)
    fresh.load_state_dict({k: v.clone() for k, v in llama.items()})
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    cfg, hs = model.cfg, model.cfg.head_dim
    wqkv = model.layers[0].attention.wqkv.weight
    assert torch.equal(llama["layers.0.attention.wk.weight"],
                       wqkv[cfg.n_head * hs: (cfg.n_head + cfg.n_kv_head) * hs])
    assert torch.equal(llama["layers.0.feed_forward.w3.weight"],
                       model.layers[0].feed_forward.w13.weight[cfg.ffn_hidden:])


def test_session_state_round_trip(tiny_checkpoint):
    lm = load(tiny_checkpoint, planner=WindowPlanner())
    ids = lm.tokenizer.encode(PARAGRAPHS[2])[:40]
    a = Session(lm, ctx_size=128, max_kv_size=24, prefill_chunk=8)
    a.feed(ids)
    state = a.state()
    b = Session.from_state(lm, state, ctx_size=128, max_kv_size=24, prefill_chunk=8)
    assert b.tokens == a.tokens and b.slots.n_used == a.slots.n_used
    for t in (4, 8, 15, 16, 23):
        torch.testing.assert_close(b.step(t), a.step(t), atol=0, rtol=0)
    with pytest.raises(GenerationError, match="does not fit"):
        Session.from_state(lm, state, ctx_size=30)
    bad = {"tensors": dict(state["tensors"]), "meta": dict(state["meta"])}
    bad["tensors"]["slot2pos"] = bad["tensors"]["slot2pos"].flip(0)
    with pytest.raises(GenerationError, match="does not match"):
        Session.from_state(lm, bad, ctx_size=128, max_kv_size=24)


def test_attention_weights_for_the_bonds_view(tiny_checkpoint, tiny_dense_checkpoint):
    for lm in (load(tiny_checkpoint, planner=WindowPlanner()), load(tiny_dense_checkpoint)):
        s = Session(lm, ctx_size=64)
        s.feed(lm.tokenizer.encode(PARAGRAPHS[1])[:20])
        attn: list = []
        logits = s.step(7, attn_out=attn)
        assert len(attn) == lm.config.n_layer
        n = 21 if lm.dense else int(np.count_nonzero(s.last_row >= 0))
        for p in attn:
            assert p.shape == (n,) and float(p.min()) >= 0
            torch.testing.assert_close(p.sum(), torch.tensor(1.0))
        # asking for the weights does not change the logits
        s2 = Session(lm, ctx_size=64)
        s2.feed(lm.tokenizer.encode(PARAGRAPHS[1])[:20])
        assert torch.equal(s2.step(7), logits)


def test_unknown_backend_is_one_line(tiny_checkpoint):
    from asa_runtime.backends import BackendError

    with pytest.raises(BackendError, match="unknown backend 'warp'"):
        make_backend("warp", load_checkpoint(tiny_checkpoint).model)


def test_sizes_the_machine_cannot_hold_are_refused_before_allocation(tiny_checkpoint):
    import resource

    lm = load(tiny_checkpoint, planner=WindowPlanner())
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for ctx in (10**9, 10**12):
        with pytest.raises(GenerationError, match="GiB but only"):
            Session(lm, ctx_size=ctx)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200 * 1024     # KiB: nothing big
    for bad in (2.5, "64", True):
        with pytest.raises(GenerationError, match="must be an integer"):
            Session(lm, ctx_size=bad)
