"""Layer-dependent plans (PlanConfig.narrow_k, wide_layers; issue 16): the layers not listed as wide attend to
each row's first `sinks` entries and its nearest `narrow_k - sinks`, the wide layers to the whole row.

Checked here: narrow_rows against a per-row reference on random plans (the result obeys the plan contract);
the settings' validation and their config.json round trip (off: the dict is as before); the model's forward
gives each layer its rows, and narrowing changes the logits; a Session's decode steps equal its prefill of the
same tokens (the decode row narrowed the way the prefill rows are, the CPU union layout included); the
static (CUDA-graph) step equals the eager one; the bonds view is 0 on the keys a narrow layer does not read;
the ONNX and MLX backends give the torch backend's logits and tokens, with eviction on.
"""
import numpy as np
import pytest
import torch
from conftest import PARAGRAPHS, TEST_PLAN, build_tiny_checkpoint
from parity import assert_parity, greedy_run
from test_generate import needs_analyzer
from test_training import _copy_without_plans, _real_planner_or_skip, _train_cfg, prepared  # noqa: F401 (fixture)

from asa_runtime.config import PRESETS, ModelConfig, PlanConfig
from asa_runtime.linguistics.plan import validate_rows
from asa_runtime.model import Transformer, narrow_rows

PROSE = " ".join(PARAGRAPHS)
NARROW = dict(narrow_k=6, wide_layers=[1])          # the test preset has 2 layers: layer 0 narrow, layer 1 wide


def random_plan(rng, n, k):
    """Rows obeying the contract: ascending earlier positions, the query last, -1 padded to k."""
    rows = np.full((n, k), -1, dtype=np.int32)
    for i in range(n):
        past = np.sort(rng.permutation(i)[: int(rng.integers(0, k))])
        r = np.r_[past, i]
        rows[i, : len(r)] = r
    return rows


def reference(rows, width, sinks):
    out = np.full((len(rows), width), -1, dtype=np.int32)
    for i, r in enumerate(rows):
        v = list(r[r >= 0])
        keep = v if len(v) <= width else v[:sinks] + v[len(v) - (width - sinks):]
        out[i, : len(keep)] = keep
    return out


@pytest.mark.parametrize("k,width,sinks", [(16, 6, 2), (16, 6, 0), (4, 6, 2), (32, 31, 4)])
def test_narrow_rows_keeps_the_sinks_and_the_nearest_keys(k, width, sinks):
    rng = np.random.default_rng(k + width + sinks)
    rows = random_plan(rng, 80, k)
    got = narrow_rows(torch.from_numpy(rows)[None], width, sinks)[0].numpy()
    np.testing.assert_array_equal(got, reference(rows, width, sinks))
    validate_rows(got.astype(np.int32))                   # ascending, causal, trailing padding, self included
    assert got.shape == (80, width)


def test_settings_are_checked_and_round_trip():
    p = PlanConfig(k=96, sinks=4, narrow_k=32, wide_layers=[2, 5])
    assert PlanConfig.from_dict(p.to_dict()) == p and p.to_dict()["wide_layers"] == [2, 5]
    assert "narrow_k" not in PlanConfig().to_dict() and "wide_layers" not in PlanConfig().to_dict()
    for bad, msg in ((dict(narrow_k=4, wide_layers=[0]), "between sinks"),       # narrow_k <= sinks
                     (dict(narrow_k=64, wide_layers=[0]), "between sinks"),      # not narrower than k
                     (dict(narrow_k=8), "at least one"),
                     (dict(narrow_k=8, wide_layers=[3, 1]), "ascending"),
                     (dict(wide_layers=[1]), "needs narrow_k"),
                     (dict(narrow_k=8, wide_layers=[True]), "layer numbers"),
                     (dict(mode="none", narrow_k=8, wide_layers=[1]), "dense baseline")):
        with pytest.raises(ValueError, match=msg):
            PlanConfig(**{"k": 64, "sinks": 4, **bad})
    with pytest.raises(ValueError, match="layers 0..1"):
        ModelConfig(**{**PRESETS["test"], "plan": PlanConfig(k=16, narrow_k=6, wide_layers=[2])})


def _model(**plan):
    torch.manual_seed(0)
    cfg = ModelConfig(**{**PRESETS["test"], "vocab_size": 97, "plan": PlanConfig(**{**TEST_PLAN, **plan})})
    m = Transformer(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(5.0)
    return m


def test_forward_gives_each_layer_its_rows():
    m, uniform = _model(**NARROW), _model()
    uniform.load_state_dict(m.state_dict())
    rows = torch.from_numpy(random_plan(np.random.default_rng(0), 60, 16))[None].long()
    idx = torch.randint(0, 97, (1, 60), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = m(idx, rows)
        rc = m.rope_table(60)[torch.arange(60)]
        x = m.tok_embeddings(idx)
        x = m.layers[0](x, rc, narrow_rows(rows, 6, TEST_PLAN["sinks"]), None, None)
        x = m.layers[1](x, rc, rows, None, None)
        want = m.output(m.norm(x))
        torch.testing.assert_close(got, want)
        assert (got - uniform(idx, rows)).abs().max() > 1e-2      # the narrow layer really reads fewer keys


@pytest.fixture(scope="module")
def narrow_checkpoint(tmp_path_factory, tiny_tokenizer):
    return build_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-narrow", tiny_tokenizer, **NARROW)


@needs_analyzer
@pytest.mark.parametrize("union", [True, False])
def test_decode_steps_equal_the_prefill_of_the_same_tokens(narrow_checkpoint, union):
    from asa_runtime.generate import load
    from asa_runtime.session import Session

    lm = load(narrow_checkpoint)
    lm.backend.union_prefill = union
    ids = lm.tokenizer.encode(PROSE)[:70]
    _, dec, toks, s = greedy_run(lm, ids, 12)
    full = Session(lm).feed(ids + toks[:-1], all_logits=True)            # (82, V)
    torch.testing.assert_close(full[len(ids):], dec[:-1], rtol=1e-4, atol=1e-4)
    assert max(len(r[r >= 0]) for r in s.last_row[None]) > NARROW["narrow_k"]   # rows longer than narrow_k


def test_static_step_matches_the_eager_step():
    m = _model(**NARROW)
    S, K = 24, 16
    eager, static = m.make_cache(S), m.make_cache(S)
    m.rope_table(S)
    rng = np.random.default_rng(1)
    ar = torch.arange(K)
    with torch.inference_mode():
        for pos in range(S):
            tok = int(rng.integers(97))
            row = random_plan(rng, pos + 1, K)[pos]
            keys = torch.from_numpy(row[row >= 0]).long()
            pad = torch.zeros(K, dtype=torch.long)
            pad[: len(keys)] = keys
            a = m.decode_one(tok, keys, pos, pos, eager)
            b = m.decode_one(torch.tensor(tok), pad, torch.tensor(pos), torch.tensor(pos), static,
                             mask=ar < len(keys))
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


def test_bonds_view_is_zero_where_a_narrow_layer_does_not_read():
    m = _model(**NARROW)
    cache = m.make_cache(40)
    keys = torch.tensor([0, 1, 5, 9, 14, 20, 30, 33, 37, 38, 39])    # 11 entries; layer 0 reads 6 of them
    out = []
    with torch.inference_mode():
        for pos in range(40):
            m.decode_one(3, None if pos < 39 else keys, pos, pos, cache, out if pos == 39 else None)
    narrow_w, wide_w = out
    assert narrow_w.shape == wide_w.shape == (11,)
    read = torch.tensor([1, 1, 0, 0, 0, 0, 0, 1, 1, 1, 1], dtype=torch.bool)   # sinks 2 + the nearest 4
    assert torch.all(narrow_w[~read] == 0) and torch.all(narrow_w[read] > 0)
    torch.testing.assert_close(narrow_w.sum(), torch.tensor(1.0))
    torch.testing.assert_close(wide_w.sum(), torch.tensor(1.0))
    assert torch.all(wide_w > 0)


@needs_analyzer
def test_onnx_backend_matches_torch(narrow_checkpoint, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from asa_runtime.generate import load

    monkeypatch.setenv("ASA_CACHE_DIR", str(tmp_path))
    lt, lo = load(narrow_checkpoint), load(narrow_checkpoint, backend="onnx")
    ids = lt.tokenizer.encode(PROSE)[:90]
    assert_parity(lt, lo, ids, 8, 1e-3, prefill_chunk=13)
    _, so = assert_parity(lt, lo, ids, 24, 1e-3, all_logits=False, ctx_size=128, max_kv_size=72, prefill_chunk=16)
    assert so.slots.compactions > 0                                     # rows really moved


@needs_analyzer
def test_mlx_backend_matches_torch(narrow_checkpoint):
    pytest.importorskip("mlx.core")
    from asa_runtime.generate import load
    from asa_runtime.session import Session

    lt, lm = load(narrow_checkpoint), load(narrow_checkpoint, backend="mlx")
    ids = lt.tokenizer.encode(PROSE)[:90]
    assert_parity(lt, lm, ids, 16, 1e-3, prefill_chunk=13)
    _, sm = assert_parity(lt, lm, ids, 24, 1e-3, max_kv_size=72, prefill_chunk=16)
    assert sm.slots.compactions > 0
    st, sm = Session(lt), Session(lm)                                   # the bonds view: zeros agree
    st.feed(ids), sm.feed(ids)
    wt, wm = [], []
    st.step(5, wt), sm.step(5, wm)
    for a, b in zip(wt, wm):
        torch.testing.assert_close(b, a.to(b.dtype), rtol=1e-3, atol=1e-4)
        assert torch.equal(a == 0, b == 0)


def test_trains_and_saves_a_layer_dependent_plan(prepared, tmp_path):
    """The trainer reads the policy from the prepared plans' config, trains the narrowed model, and the saved
    model folder carries the policy (its evaluation reproduces the trainer's final loss)."""
    from asa_runtime.checkpoint import load_checkpoint
    from training.evaluate import evaluate
    from training.prepare import Prepared, prepare_plans
    from training.train import train

    _real_planner_or_skip()
    root = _copy_without_plans(prepared, tmp_path)
    cfg = PlanConfig(mode="full", k=16, window=4, sinks=2, narrow_k=6, wide_layers=[1])
    prepare_plans(root, "full", cfg, workers=1, progress=False, log=lambda *_: None)
    s = train(_train_cfg(root, tmp_path / "run", mode="full", max_steps=8, overrides={"n_layer": 2}),
              log=lambda *_: None)
    ck = load_checkpoint(tmp_path / "run" / "model")
    assert ck.config.plan == cfg
    res = evaluate(ck.model, Prepared.open(root), "full", ["valid"], "cpu")
    assert res["valid"]["loss"] == pytest.approx(s["final"]["valid"]["loss"], rel=1e-5)


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@gpu
@needs_analyzer
def test_graphed_decode_gives_the_eager_tokens(narrow_checkpoint):
    """On a GPU: the CUDA-graph step (mask narrowed on the device) generates the eager step's tokens."""
    from asa_runtime.generate import load, stream_generate

    lm = load(narrow_checkpoint, device="cuda")
    runs = []
    for graph in (False, True):
        lm.backend.cuda_graph = graph
        runs.append([r.token for r in stream_generate(lm, PROSE[:300], max_tokens=40, temp=0)])
    assert runs[0] == runs[1]


@pytest.mark.gpu
@gpu
def test_training_step_on_the_gpu_matches_the_cpu():
    """On a GPU the narrowed rows go through the Triton kernels (forward and backward): loss and gradients
    equal the CPU torch model's (float32; the kernels' dots may run in TF32: relative norms) on rows longer
    than narrow_k."""
    torch.manual_seed(0)
    m = Transformer(ModelConfig(**{**PRESETS["test"], "vocab_size": 97, "plan": PlanConfig(**{**TEST_PLAN, **NARROW})}))
    rows = torch.from_numpy(random_plan(np.random.default_rng(2), 128, 16))[None]
    idx = torch.randint(0, 97, (2, 128), generator=torch.Generator().manual_seed(3))
    rows = rows.expand(2, -1, -1).contiguous()
    out = []
    for dev in ("cpu", "cuda"):
        mm = Transformer(m.cfg).to(dev)
        mm.load_state_dict(m.state_dict())
        logits = mm(idx.to(dev), rows.to(dev))
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), idx[:, 1:].flatten().to(dev))
        loss.backward()
        out.append((loss.item(), {n: p.grad.cpu() for n, p in mm.named_parameters()}))
    assert out[1][0] == pytest.approx(out[0][0], rel=1e-3)
    for n, g in out[0][1].items():
        assert (out[1][1][n] - g).norm() <= 1e-2 * g.norm() + 1e-6, n


@needs_analyzer
def test_tensorrt_engine_builds_from_the_narrowed_export(narrow_checkpoint, tmp_path, monkeypatch):
    """The narrowing is ordinary ONNX ops in the exported graph: TensorRT-RTX parses it and builds an engine
    with one plugin layer per attention (engine execution is untested here: no supported GPU)."""
    pytest.importorskip("onnxscript")
    onnx = pytest.importorskip("onnx")
    try:
        from exporters.tensorrt.build import build_engine, decoder_shapes
    except (ImportError, RuntimeError) as e:
        pytest.skip(f"TensorRT-RTX unavailable: {' '.join(str(e).split())}")
    from asa_runtime.backends.onnx_backend import ensure_export
    from exporters.onnx import op_contract as oc

    monkeypatch.setenv("ASA_CACHE_DIR", str(tmp_path))
    graph = ensure_export(narrow_checkpoint, "float32", progress=False) / "model.onnx"
    proto = onnx.load(str(graph), load_external_data=False)
    n_nodes = sum(n.domain == oc.DOMAIN and n.op_type == oc.OP_TYPE for n in proto.graph.node)
    assert n_nodes == 2                                                # one per layer, narrow and wide
    res = build_engine(graph, shapes=decoder_shapes(proto, T=(1, 1, 32), S=(1, 64, 256), K=(1, 16, 16)))
    assert res.plugin_layers == n_nodes
