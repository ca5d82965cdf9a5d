"""The RoPE clamp (ModelConfig.rope_clamp): a planned key more than w tokens back is scored as if exactly w back.

The kernels are checked against an independent float64 formulation (each key rotated at its *effective*
position max(j, i - w) from raw projections), the model's paths (forward without a cache, union and gathered
prefill, eager decode, evicting sessions) against each other, and the clamp against no clamp: identical up to
distance w, different past it.
"""
import numpy as np
import pytest
import torch
from conftest import PARAGRAPHS, WindowPlanner

from asa_runtime.config import PRESETS, ModelConfig, PlanConfig
from asa_runtime.generate import Session, from_model
from asa_runtime.model import Transformer, apply_rope, rope_cache
from kernels.torch_sparse import UnionPlan, rope_deltas, sparse_attention_torch, union_attention


def _plan(n, k, rng, sinks=2, window=3):
    """Causal rows: sinks, a window, and random earlier keys (far ones included), ascending, -1 padded."""
    rows = np.full((n, k), -1, dtype=np.int64)
    for i in range(n):
        keys = set(range(min(sinks, i + 1))) | set(range(max(0, i - window), i + 1))
        extra = rng.choice(i + 1, size=min(i + 1, k - len(keys)), replace=False)
        keys |= set(extra.tolist())
        keys = sorted(keys)[-k:] if len(keys) > k else sorted(keys)
        rows[i, : len(keys)] = keys
    return rows


def _reference(q_raw, k_raw, v, rows, w, theta=10000.0):
    """float64: query i at position i, key j at position max(j, i - w): scores from freshly rotated raw
    projections (no delta arithmetic shared with the kernels)."""
    B, H, N, D = q_raw.shape
    Hkv = k_raw.shape[1]
    rc = rope_cache(N, D, theta).double()
    out = torch.zeros(B, H, N, D, dtype=torch.float64)
    for i in range(N):
        js = [j for j in rows[i] if j >= 0]
        eff = torch.tensor([max(j, i - w) for j in js])
        q = apply_rope(q_raw[:, :, i: i + 1].double(), rc[i: i + 1])                     # (B, H, 1, D)
        kk = torch.stack([apply_rope(k_raw[:, :, j: j + 1].double(), rc[e: e + 1])[:, :, 0]
                          for j, e in zip(js, eff.tolist())], 2)                         # (B, Hkv, n, D)
        kk = kk.repeat_interleave(H // Hkv, 1)
        vv = v[:, :, js].double().repeat_interleave(H // Hkv, 1)
        p = torch.softmax((q @ kk.transpose(-1, -2)) * D ** -0.5, -1)
        out[:, :, i] = (p @ vv)[:, :, 0]
    return out


@pytest.mark.parametrize("w", [5, 17])
def test_kernels_score_far_keys_at_distance_w(w):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    B, H, Hkv, N, D, K = 1, 4, 2, 48, 16, 12
    q_raw, k_raw, v = torch.randn(B, H, N, D), torch.randn(B, Hkv, N, D), torch.randn(B, Hkv, N, D)
    rows = _plan(N, K, rng)
    rc = rope_cache(N, D, 10000.0)
    q, k = apply_rope(q_raw, rc), apply_rope(k_raw, rc)
    pos = torch.arange(N)
    keys = torch.from_numpy(rows)[None]
    delta = rope_deltas(pos, keys, w)
    assert int(delta.max()) == N - 1 - w and bool((delta[keys < 0] == 0).all())
    want = _reference(q_raw, k_raw, v, rows, w)

    got = sparse_attention_torch(q.double(), k.double(), v.double(), keys, rope_delta=delta, rope=rc, chunk=7)
    assert (got - want).abs().max() < 1e-5            # rope table in float32
    plain = sparse_attention_torch(q.double(), k.double(), v.double(), keys)
    near = (pos <= w)                                  # no key can be more than w back: nothing changes
    assert torch.equal(got[:, :, near], plain[:, :, near])
    assert (got[:, :, ~near] - plain[:, :, ~near]).abs().max() > 1e-2

    u = UnionPlan.from_rows(rows, positions=rows)
    got_u = union_attention(q, k, v, u, u.clamp(pos, w), rc)
    assert (got_u.double() - want).abs().max() < 1e-4


def test_clamped_backward_matches_autograd_through_the_reference():
    torch.manual_seed(1)
    rng = np.random.default_rng(1)
    B, H, Hkv, N, D, K, w = 1, 2, 1, 24, 8, 8, 6
    q = torch.randn(B, H, N, D, dtype=torch.float64, requires_grad=True)
    k = torch.randn(B, Hkv, N, D, dtype=torch.float64, requires_grad=True)
    v = torch.randn(B, Hkv, N, D, dtype=torch.float64, requires_grad=True)
    keys = torch.from_numpy(_plan(N, K, rng))[None]
    rc = rope_cache(N, D, 10000.0)
    delta = rope_deltas(torch.arange(N), keys, w)
    g = torch.randn(B, H, N, D, dtype=torch.float64)
    (sparse_attention_torch(q, k, v, keys, rope_delta=delta, rope=rc, chunk=5) * g).sum().backward()
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    # the same scores by brute force: every (query, entry) key rotated by its delta, then dense math
    kk = k.repeat_interleave(H // Hkv, 1)
    vv = v.repeat_interleave(H // Hkv, 1)
    cs = rc.double()[delta[0]]                                           # (N, K, D/2, 2)
    kg = kk[:, :, keys[0].clamp_min(0)]                                  # (B, H, N, K, D)
    x = kg.reshape(*kg.shape[:-1], -1, 2)
    kr = torch.stack([x[..., 0] * cs[..., 0] - x[..., 1] * cs[..., 1],
                      x[..., 1] * cs[..., 0] + x[..., 0] * cs[..., 1]], -1).flatten(-2)
    s = torch.einsum("bhnd,bhnkd->bhnk", q, kr) * D ** -0.5
    s = s.masked_fill((keys < 0)[:, None], float("-inf"))
    out = torch.einsum("bhnk,bhnkd->bhnd", torch.softmax(s, -1), vv[:, :, keys[0].clamp_min(0)])
    (out * g).sum().backward()
    for a, t in zip(grads, (q, k, v)):
        assert torch.allclose(a, t.grad, atol=1e-9)


def _model(tok, w, **plan):
    torch.manual_seed(0)
    cfg = ModelConfig(**{**PRESETS["test"], "vocab_size": tok.vocab_size, "max_seq_len": 256, "rope_clamp": w,
                         "plan": PlanConfig(mode="full", k=16, window=4, sinks=2, lookback_words=12, **plan)})
    m = Transformer(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(4.0)                     # sharper attention: the clamp's effect is visible in the logits
    return m


def _ids(tok, n):
    ids = []
    while len(ids) < n:
        ids += tok.encode(" ".join(PARAGRAPHS))
    return ids[:n]


@pytest.mark.parametrize("narrow", [False, True])
def test_every_path_of_the_model_agrees(tiny_tokenizer, narrow):
    plan = dict(narrow_k=6, wide_layers=(1,)) if narrow else {}
    w, n = 20, 120
    model = _model(tiny_tokenizer, w, **plan)
    planner = WindowPlanner(k=16, sinks=2, window=4, lookback=40, every=5)   # keys up to 39 back, sinks at 0, 1
    ids = _ids(tiny_tokenizer, n)
    rows = planner.plan([None] * n)
    with torch.no_grad():
        ref = model(torch.tensor([ids]), torch.from_numpy(rows.astype(np.int64))[None])[0]     # (n, V)
    lm = from_model(model, tiny_tokenizer, planner=planner)
    for union, kw in [(True, {}), (False, {}), (True, dict(max_kv_size=48))]:
        lm.backend.union_prefill = union
        s = Session(lm, ctx_size=256, prefill_chunk=16, **kw)
        got = s.feed(ids[:80], all_logits=True)
        assert (got - ref[:80]).abs().max() < 2e-4, (union, kw)
        for t in range(80, n):                              # decode the rest one token at a time
            got = s.step(ids[t])
            assert (got - ref[t]).abs().max() < 2e-4, (union, kw, t)

    # unclamped: the same up to distance w, different past it
    model.cfg.rope_clamp = 0
    with torch.no_grad():
        off = model(torch.tensor([ids]), torch.from_numpy(rows.astype(np.int64))[None])[0]
    model.cfg.rope_clamp = w
    assert torch.equal(off[: w + 1], ref[: w + 1])
    assert (off[w + 1:] - ref[w + 1:]).abs().amax(-1).min() > 1e-3


def test_clamp_needs_key_positions_when_rows_hold_slots(tiny_tokenizer):
    model = _model(tiny_tokenizer, 8)
    cache = model.make_cache(64)
    rows = torch.from_numpy(WindowPlanner().plan([None] * 20).astype(np.int64))[None]
    with torch.no_grad(), pytest.raises(ValueError, match="token positions"):
        model(torch.zeros(1, 20, dtype=torch.long), rows, torch.arange(20), cache=cache)


def test_config_round_trip_and_checks():
    cfg = ModelConfig(rope_clamp=2048)
    assert ModelConfig.from_dict(cfg.to_dict()).rope_clamp == 2048
    assert "rope_clamp" not in ModelConfig().to_dict()             # off: config.json as before
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="rope_clamp"):
            ModelConfig(rope_clamp=bad)


def test_dense_model_ignores_the_clamp(tiny_tokenizer):
    """The dense baseline has no plan rows to clamp: its prefill and decode logits are those without a clamp."""
    torch.manual_seed(0)
    cfg = ModelConfig(**{**PRESETS["test"], "vocab_size": tiny_tokenizer.vocab_size, "rope_clamp": 4,
                         "plan": PlanConfig(mode="none")})
    lm = from_model(Transformer(cfg).eval(), tiny_tokenizer)
    ids = _ids(tiny_tokenizer, 30)
    runs = []
    for w in (4, 0):
        cfg.rope_clamp = w
        s = Session(lm, ctx_size=64)
        runs.append((s.feed(ids), s.step(3)))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


def test_decode_turns_far_keys_wherever_they_sit_in_the_row(tiny_tokenizer):
    """Far keys lead an ascending row (only that prefix is turned); a row in another order takes the general
    path and gives the same logits (attention does not depend on the order of its keys)."""
    model = _model(tiny_tokenizer, 6)
    n = 40
    ids = _ids(tiny_tokenizer, n)
    cache = model.make_cache(64)
    rows = torch.from_numpy(WindowPlanner(lookback=30).plan([None] * (n - 1)).astype(np.int64))[None]
    with torch.no_grad():
        model(torch.tensor([ids[:n - 1]]), rows, torch.arange(n - 1), cache=cache, key_pos=rows)
        row = torch.tensor([0, 1, 10, 20, 30, 35, 36, 37, 38, 39])          # 0, 1, 10, 20, 30 are > 6 back
        snap = [(c.k.clone(), c.v.clone()) for c in cache]
        a = model.decode_one(ids[-1], row, n - 1, n - 1, cache, key_pos=row)
        for c, (k, v) in zip(cache, snap):
            c.k.copy_(k)
            c.v.copy_(v)
        perm = torch.tensor([5, 0, 9, 2, 7, 1, 3, 8, 4, 6])
        b = model.decode_one(ids[-1], row[perm], n - 1, n - 1, cache, key_pos=row[perm])
        model.cfg.rope_clamp = 0
        for c, (k, v) in zip(cache, snap):
            c.k.copy_(k)
            c.v.copy_(v)
        off = model.decode_one(ids[-1], row, n - 1, n - 1, cache)
        model.cfg.rope_clamp = 6
    assert (a - b).abs().max() < 1e-4
    assert (a - off).abs().max() > 1e-3
