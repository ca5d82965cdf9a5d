"""The RoPE clamp (ModelConfig.rope_clamp) on the MLX path (mlx[cpu] here; Metal is untested): the MLX kernels
rotate far keys exactly as kernels/torch_sparse.py does, the MLX model gives the torch model's logits for a
clamped tiny model over a sequence longer than w (chunked prefill, step-by-step decode, an evicting session, a
layer-dependent plan), the backend refuses plan rows without their token positions, and `asa-run export
--format mlx` carries rope_clamp into the export's config (and leaves it out when the clamp is off).

Tolerances: float32 on both sides, the two differ only in summation order. Kernels: 1e-5 relative. Tiny models
(weights x4, logits ~O(10)): max |logit difference| <= 1e-3, as tests/test_mlx.py's TINY_TOL; each test also
checks that the clamp moves the logits by far more than that, so the comparison can tell clamped from not.
"""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import TEST_PLAN, WindowPlanner
from kernel_cases import rel_err
from parity import assert_parity, greedy_run
from test_generate import needs_analyzer
from test_rope_clamp import _ids, _model, _plan

mx = pytest.importorskip("mlx.core")

import asa_runtime.cli.export  # noqa: E402,F401  (registers `export` on main)
from asa_runtime.backends.mlx_model import ModelArgs  # noqa: E402
from asa_runtime.cli import main  # noqa: E402
from asa_runtime.config import PRESETS, ModelConfig, PlanConfig  # noqa: E402
from asa_runtime.errors import BackendError  # noqa: E402
from asa_runtime.generate import from_model, load  # noqa: E402
from asa_runtime.model import Transformer, apply_rope, rope_cache  # noqa: E402
from asa_runtime.session import Session  # noqa: E402
from kernels import mlx_sparse  # noqa: E402
from kernels.torch_sparse import rope_deltas, sparse_attention_torch  # noqa: E402

TOL = 1e-3
W, N = 20, 120


def _mx(t):
    return mx.array(t.numpy())


def _np(a):
    return torch.from_numpy(np.array(a))


# ---- kernels ---------------------------------------------------------------------------------------------
def test_table_and_deltas_are_the_torch_ones():
    assert np.abs(np.array(mlx_sparse.rope_table(300, 16, 10000.0)) - rope_cache(300, 16, 10000.0).numpy()).max() < 1e-4
    rows = torch.from_numpy(_plan(40, 10, np.random.default_rng(2)))[None]
    want = rope_deltas(torch.arange(40), rows, 7)
    got = mlx_sparse.rope_deltas(mx.arange(40), _mx(rows), 7)
    assert torch.equal(_np(got).long(), want)


@pytest.mark.parametrize("w", [5, 17])
def test_kernels_with_deltas_match_torch(w):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    B, H, Hkv, N_, D, K = 1, 4, 2, 48, 16, 12
    rc = rope_cache(N_, D, 10000.0)
    q = apply_rope(torch.randn(B, H, N_, D), rc)
    k = apply_rope(torch.randn(B, Hkv, N_, D), rc)
    v = torch.randn(B, Hkv, N_, D)
    keys = torch.from_numpy(_plan(N_, K, rng))[None]
    delta = rope_deltas(torch.arange(N_), keys, w)
    assert int(delta.max()) > 0
    want = sparse_attention_torch(q, k, v, keys, rope_delta=delta, rope=rc)
    plain = sparse_attention_torch(q, k, v, keys)
    assert (want - plain).abs().max() > 1e-2                          # the deltas matter
    args = [_mx(t) for t in (q, k, v, keys)]
    kw = dict(rope_delta=_mx(delta), rope=_mx(rc))
    for out in (mlx_sparse.sparse_attention_mlx(*args, chunk=7, **kw),
                mlx_sparse.sparse_attention_mlx_take(*args, **kw)):
        assert rel_err(_np(out), want) < 1e-5
    # the decode fast path: the last query's row, without padding
    row = keys[0, -1]
    n = int((row >= 0).sum())
    out = mlx_sparse.sparse_decode_mlx(args[0][:, :, -1:], args[1], args[2], _mx(row[:n]),
                                       rope_delta=_mx(delta[0, -1, :n]), rope=_mx(rc))
    assert rel_err(_np(out), want[:, :, -1:]) < 1e-5


# ---- the model through sessions ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clamped(tiny_tokenizer):
    """torch logits of the clamped tiny model (no cache, plan rows as positions), the unclamped ones, and a
    WindowPlanner whose rows reach 39 tokens back (sinks at 0, 1): far keys from position W + 1 on."""
    out = {}
    planner = WindowPlanner(k=16, sinks=2, window=4, lookback=40, every=5)
    ids = _ids(tiny_tokenizer, N)
    rows = torch.from_numpy(planner.plan([None] * N).astype(np.int64))[None]
    for narrow in (False, True):
        model = _model(tiny_tokenizer, W, **(dict(narrow_k=6, wide_layers=(1,)) if narrow else {}))
        with torch.no_grad():
            ref = model(torch.tensor([ids]), rows)[0]
            model.cfg.rope_clamp = 0
            off = model(torch.tensor([ids]), rows)[0]
            model.cfg.rope_clamp = W
        assert torch.equal(off[: W + 1], ref[: W + 1])
        assert (off[W + 1:] - ref[W + 1:]).abs().amax(-1).min() > 20 * TOL   # the clamp is visible
        out[narrow] = model, ref
    return out, planner, ids


@pytest.mark.parametrize("narrow", [False, True], ids=["plan", "layer-plan"])
@pytest.mark.parametrize("kw", [{}, {"max_kv_size": 48}], ids=["growing", "evicting"])
def test_mlx_logits_equal_torch(tiny_tokenizer, clamped, narrow, kw):
    models, planner, ids = clamped
    model, ref = models[narrow]
    lm = from_model(model, tiny_tokenizer, planner=planner, backend="mlx")
    assert lm.backend.args.rope_clamp == W
    s = Session(lm, ctx_size=256, prefill_chunk=16, **kw)
    got = s.feed(ids[:80], all_logits=True)
    assert (got - ref[:80]).abs().max() <= TOL
    for t in range(80, N):                                            # the rest one token at a time
        got = s.step(ids[t])
        assert (got - ref[t]).abs().max() <= TOL, t
    if kw:
        assert s.slots.compactions > 0                                # rows really moved


def test_mlx_session_matches_torch_session_greedy(tiny_tokenizer, clamped):
    """Greedy decoding past w (prefill in one chunk, then the decode fast path): torch and MLX sessions agree
    step by step, and the bonds view's weights (computed over the rotated keys) agree too."""
    models, planner, ids = clamped
    model = models[False][0]
    lt = from_model(model, tiny_tokenizer, planner=planner)
    lm = from_model(model, tiny_tokenizer, planner=planner, backend="mlx")
    assert_parity(lt, lm, ids[:60], 12, TOL, all_logits=False, ctx_size=128)
    st, sm = Session(lt, ctx_size=128), Session(lm, ctx_size=128)
    st.feed(ids[:60]), sm.feed(ids[:60])
    wt, wm = [], []
    st.step(ids[60], attn_out=wt), sm.step(ids[60], attn_out=wm)
    for a, b in zip(wt, wm):
        assert a.shape == b.shape and (a - b).abs().max().item() < 1e-4


def test_backend_refuses_rows_without_positions(tiny_tokenizer, clamped):
    models, planner, ids = clamped
    be = from_model(models[False][0], tiny_tokenizer, planner=planner, backend="mlx").backend
    cache = be.make_cache(64)
    rows = planner.plan([None] * 8)
    with pytest.raises(BackendError, match="plan_pos"):
        be.prefill(cache, ids[:8], rows, np.arange(8), np.arange(8))
    with pytest.raises(BackendError, match="plan_pos"):
        be.decode(cache, ids[8], planner.plan([None] * 9)[-1], 8, 8)
    logits = be.prefill(cache, ids[:8], rows, np.arange(8), np.arange(8), plan_pos=rows)
    assert logits.shape == (be.vocab_size,)


def test_model_args_carry_the_clamp_only_when_on():
    on = ModelArgs.from_model_config(ModelConfig(rope_clamp=2048))
    assert on.rope_clamp == 2048 and ModelArgs.from_dict(on.to_dict()).rope_clamp == 2048
    off = ModelArgs.from_model_config(ModelConfig())
    assert off.rope_clamp == 0 and "rope_clamp" not in off.to_dict()   # exports without a clamp as before


# ---- export ------------------------------------------------------------------------------------------------
@needs_analyzer
def test_export_round_trip_keeps_the_clamp(tmp_path, tiny_tokenizer, tiny_checkpoint):
    from asa_runtime.checkpoint import save_checkpoint

    torch.manual_seed(0)
    cfg = ModelConfig(**{**PRESETS["test"], "vocab_size": tiny_tokenizer.vocab_size, "rope_clamp": W,
                         "plan": PlanConfig(mode="full", **TEST_PLAN)})
    model = Transformer(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(5.0)
    ckpt = save_checkpoint(tmp_path / "tiny-clamped", model, tiny_tokenizer, card="# clamped tiny test model\n")
    out = tmp_path / "tiny-clamped-mlx"
    r = CliRunner().invoke(main, ["export", "--format", "mlx", "--no-progress", "-m", str(ckpt), "-o", str(out)])
    assert r.exit_code == 0, r.output
    raw = json.loads((out / "config.json").read_text())
    assert raw["rope_clamp"] == W
    lt, lm = load(ckpt), load(out, backend="mlx")
    assert lm.model is None and lm.backend.args.rope_clamp == W and lm.config.rope_clamp == W
    ids = _ids(tiny_tokenizer, 50)                                    # the real planner: sinks are far keys
    pre_t, dec_t, tok_t, _ = greedy_run(lt, ids, 16)
    pre_m, dec_m, tok_m, _ = greedy_run(lm, ids, 16)
    assert (pre_t - pre_m).abs().max() <= TOL and (dec_t - dec_m).abs().max() <= TOL and tok_m == tok_t
    # the unclamped export of the same weights gives other logits past w: the clamp really was applied
    model.cfg.rope_clamp = 0
    plain = from_model(model, tiny_tokenizer, planner=lt.planner, backend="mlx")
    pre_p, _, _, _ = greedy_run(plain, ids, 0)
    assert (pre_p[W + 1:] - pre_m[W + 1:]).abs().max() > 20 * TOL
    # a model without a clamp exports no rope_clamp key (its config as before)
    r = CliRunner().invoke(main, ["export", "--format", "mlx", "--no-progress", "-m", str(tiny_checkpoint),
                                  "-o", str(tmp_path / "plain-mlx")])
    assert r.exit_code == 0, r.output
    assert "rope_clamp" not in json.loads((tmp_path / "plain-mlx" / "config.json").read_text())


def test_dense_model_ignores_the_clamp(tiny_tokenizer):
    """A dense model has no plan rows: the clamp changes nothing and the MLX session runs as the torch one."""
    torch.manual_seed(0)
    cfg = ModelConfig(**{**PRESETS["test"], "vocab_size": tiny_tokenizer.vocab_size, "rope_clamp": 4,
                         "plan": PlanConfig(mode="none")})
    model = Transformer(cfg).eval()
    lt, lm = from_model(model, tiny_tokenizer), from_model(model, tiny_tokenizer, backend="mlx")
    assert_parity(lt, lm, _ids(tiny_tokenizer, 30), 4, TOL, ctx_size=64)
