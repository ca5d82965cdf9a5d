"""The RoPE clamp (ModelConfig.rope_clamp) through ONNX: the export (6-input asa.SparseAttention nodes, the
rope_delta / rope graph inputs, the 6-input function body), the ONNX Runtime backend (deltas from the plan rows
as token positions, the model's RoPE table) with the op's function body and with the C++ kernel, and the
TensorRT-RTX engine build of the clamped export (building only: engines cannot run on this project's machines).

A tiny random model with w = 20 over 100 prompt tokens + 20 decode steps: its plans (WindowPlanner with sinks at
0 and 1 and keys up to 39 back, or the model's own planner) name keys far more than w back, so most positions
past w rotate some key. Logits must equal the torch backend's within 1e-3 (float32; measured ~2e-5), and the
clamp must matter: an unclamped torch run differs by > 1e-2 at every position past w. One export per plan
(~10 s each here), into a temporary cache.
"""
import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import PARAGRAPHS, TEST_PLAN, WindowPlanner
from parity import assert_parity, greedy_run

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from asa_runtime.checkpoint import save_checkpoint  # noqa: E402
from asa_runtime.cli import main  # noqa: E402
from asa_runtime.config import PRESETS, ModelConfig, PlanConfig  # noqa: E402
from asa_runtime.errors import BackendError  # noqa: E402
from asa_runtime.generate import generate, load  # noqa: E402
from asa_runtime.model import Transformer  # noqa: E402
from exporters.onnx import folder as F  # noqa: E402
from exporters.onnx import graph_op  # noqa: E402
from exporters.onnx import op_contract as C  # noqa: E402
from exporters.onnx.export import io_names  # noqa: E402
from test_onnx_backend import KERNELS, onnx_cache  # noqa: E402,F401 (onnx_cache: autouse, a temporary cache)

W = 20
TOL = 1e-3
N_PROMPT, N_STEPS = 100, 20
NARROW = dict(narrow_k=6, wide_layers=(1,))


def _checkpoint(path, tokenizer, **plan):
    torch.manual_seed(0)
    cfg = ModelConfig(**{**PRESETS["test"], "vocab_size": tokenizer.vocab_size, "rope_clamp": W,
                         "plan": PlanConfig(mode="full", **{**TEST_PLAN, **plan})})
    model = Transformer(cfg)
    with torch.no_grad():              # sharper attention: the clamp's effect shows in the logits
        for p in model.parameters():
            p.mul_(4.0)
    return save_checkpoint(path, model, tokenizer, card="# tiny clamped test model\nRandom weights.\n")


@pytest.fixture(scope="module")
def clamped(tmp_path_factory, tiny_tokenizer):
    return _checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-clamped", tiny_tokenizer)


@pytest.fixture(scope="module")
def clamped_narrow(tmp_path_factory, tiny_tokenizer):
    return _checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-clamped-narrow", tiny_tokenizer, **NARROW)


def _planner():
    return WindowPlanner(k=16, sinks=2, window=4, lookback=40, every=5)     # keys up to 39 back


def _ids(tok, n=N_PROMPT):
    ids = []
    while len(ids) < n:
        ids += tok.encode(" ".join(PARAGRAPHS))
    return ids[:n]


def _parity_past_the_clamp(ckpt):
    """Prefill in one chunk, in chunks, and evicting (compactions), then greedy decode: ONNX == torch."""
    lt, lo = load(ckpt, planner=_planner()), load(ckpt, backend="onnx", planner=_planner())
    ids = _ids(lt.tokenizer)
    assert_parity(lt, lo, ids, N_STEPS, TOL, prefill_chunk=512)
    assert_parity(lt, lo, ids, N_STEPS, TOL, prefill_chunk=16)
    _, so = assert_parity(lt, lo, ids, N_STEPS, TOL, all_logits=False, ctx_size=256, max_kv_size=48,
                          prefill_chunk=16)
    assert so.slots.compactions > 0                                   # rows really moved
    return lt, lo, ids


# ---- the export --------------------------------------------------------------------------------------
def test_clamped_export_has_the_rope_inputs(clamped):
    lo = load(clamped, backend="onnx", planner=_planner())            # exports into the module's cache
    folder = lo.backend.folder
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["model"]["rope_clamp"] == W and cfg["graph"]["rope_clamp"] == W
    m = onnx.load(str(folder / F.GRAPH))
    n_layer = cfg["model"]["n_layer"]
    ins, outs = io_names(n_layer, clamp=True)
    assert [i.name for i in m.graph.input] == ins == cfg["graph"]["inputs"]
    assert ins[3:5] == ["rope_delta", "rope"]
    types = {i.name: i.type.tensor_type.elem_type for i in m.graph.input}
    assert types["rope_delta"] == onnx.TensorProto.INT32 and types["rope"] == onnx.TensorProto.FLOAT
    nodes = [n for n in m.graph.node if n.domain == C.DOMAIN]
    assert len(nodes) == n_layer and all(len(n.input) == 6 and n.input[5] == "rope" for n in nodes)
    assert all(n.input[4] == "rope_delta" for n in nodes)           # no narrow layers: the input itself
    (fn,) = [f for f in m.functions if (f.domain, f.name) == (C.DOMAIN, C.OP_TYPE)]
    assert list(fn.input) == list(C.ALL_INPUT_NAMES) and {n.domain for n in fn.node} == {""}
    onnx.checker.check_model(str(folder / F.GRAPH), full_check=True)


# ---- parity with torch past the clamp distance -------------------------------------------------------
@pytest.mark.parametrize("kernel", KERNELS)
def test_parity_past_the_clamp(clamped, kernel, monkeypatch):
    monkeypatch.setenv("ASA_ORT_KERNEL", kernel)
    lt, lo, ids = _parity_past_the_clamp(clamped)
    assert lo.backend.kernel == (kernel == "1")
    # the clamp matters here: unclamped torch differs past w (and only there)
    pre_o, _, _, _ = greedy_run(lo, ids, 0, prefill_chunk=16)
    lt.model.cfg.rope_clamp = 0
    try:
        pre_t, _, _, _ = greedy_run(lt, ids, 0, prefill_chunk=16)
    finally:
        lt.model.cfg.rope_clamp = W
    d = (pre_o - pre_t).abs().amax(-1)                                # (T,)
    assert d[: W + 1].max().item() <= TOL and d[W + 1:].min().item() > 1e-2


def test_layer_dependent_plan_narrows_the_deltas(clamped_narrow):
    """narrow_k: the narrow layers' nodes take rope_delta narrowed in the graph like their rows."""
    _, lo, _ = _parity_past_the_clamp(clamped_narrow)
    m = onnx.load(str(lo.backend.folder / F.GRAPH), load_external_data=False)
    nodes = [n for n in m.graph.node if n.domain == C.DOMAIN]
    assert len({n.input[4] for n in nodes}) == 2                      # the wide layer's and the narrow one's


def test_model_planner_generate_and_cli(clamped):
    """The model's own planner (sinks far back) through load() and the CLI: the greedy text equals torch's."""
    prompt = " ".join(PARAGRAPHS[:2])
    lt = load(clamped)
    assert len(lt.tokenizer.encode(prompt)) > 2 * W
    want = generate(lt, prompt, 16, temp=0)
    lo = load(clamped, backend="onnx")
    fed, feed = [], lo.backend._clamp_feed

    def spy(*a):
        out = feed(*a)
        fed.append(int(out["rope_delta"].max()))
        return out

    lo.backend._clamp_feed = spy
    assert generate(lo, prompt, 16, temp=0) == want
    assert max(fed) > W                                               # the plans' sinks are far back
    r = CliRunner().invoke(main, ["generate", "-m", str(clamped), "--backend", "onnx", "-p", prompt, "-n", "16",
                                  "--temp", "0"])
    assert r.exit_code == 0, r.output
    assert r.stdout == want + "\n"


# ---- misuse ------------------------------------------------------------------------------------------
def test_backend_needs_plan_positions(clamped):
    be = load(clamped, backend="onnx", planner=_planner()).backend
    cache = be.make_cache(8)
    with pytest.raises(BackendError, match="plan_pos"):
        be.decode(cache, 1, np.array([0, -1]), 0, 0)
    be.decode(cache, 1, np.array([0, -1]), 0, 0, plan_pos=np.array([0, -1]))     # with them: fine


def test_graph_and_config_must_agree(clamped, tmp_path):
    src = load(clamped, backend="onnx", planner=_planner()).backend.folder
    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["model"]["rope_clamp"] = 0
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(BackendError, match="RoPE clamp.*export it again"):
        load(bad, backend="onnx")


def test_rope_table_grows_and_is_the_models(clamped):
    from asa_runtime.model import rope_cache

    be = load(clamped, backend="onnx", planner=_planner()).backend
    cfg = be.cfg
    t = be.rope_table(3 * cfg.max_seq_len + 1)
    assert len(t) >= 3 * cfg.max_seq_len + 1 and t.dtype == np.float32
    np.testing.assert_array_equal(t, rope_cache(len(t), cfg.head_dim, cfg.rope_theta).numpy())
    feed = be._clamp_feed(np.array([30, 31]), np.array([[0, 29, -1], [1, 5, 31]]),
                          np.array([[0, 29, -1], [1, 5, 31]]))
    np.testing.assert_array_equal(feed["rope_delta"], [[[10, 0, 0], [10, 6, 0]]])
    assert len(feed["rope"]) == 11 and np.shares_memory(feed["rope"], be.rope_table(1))   # a view, no copy


# ---- TensorRT-RTX: the clamped export builds (running an engine is untested: no supported GPU here) ----
def test_clamped_export_builds_a_tensorrt_engine(clamped_narrow):
    try:
        from exporters.tensorrt.build import build_engine, decoder_shapes
    except (ImportError, RuntimeError) as e:                          # not installed / TensorRTUnavailable
        pytest.skip(f"TensorRT-RTX unavailable: {' '.join(str(e).split())}")
    graph = load(clamped_narrow, backend="onnx", planner=_planner()).backend.folder / F.GRAPH
    proto = onnx.load(str(graph), load_external_data=False)
    shapes = decoder_shapes(proto, T=(1, 1, 64), S=(1, 256, 4096), K=(1, 16, 16), P=(1, 64, 8192))
    assert shapes["rope"] == ((1, 8, 2), (64, 8, 2), (8192, 8, 2))        # head_dim 16
    res = build_engine(graph, shapes=shapes)
    assert res.plugin_layers == sum(n.domain == C.DOMAIN for n in proto.graph.node) == 2
    assert res.outputs["logits"][1] == "FLOAT"


def test_graph_op_forms():
    """Both forms of the op's body; a node of either form is built by the translation table."""
    assert list(graph_op.function_proto().input) == list(C.INPUT_NAMES)
    assert list(graph_op.function_proto(rope=True).input) == list(C.ALL_INPUT_NAMES)
    assert graph_op.function_proto(rope=True).name == C.OP_TYPE
    assert len(graph_op.TRANSLATIONS) == 2
