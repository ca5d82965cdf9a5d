"""`asa-run export --format onnx`: the folder (graph + external data, config.json with hashes, tokenizer,
analyzer), the graph (one asa.SparseAttention node per layer whose function body uses standard ops only;
onnx.checker full check and shape inference pass; dynamic T and S; a model without the RoPE clamp has no clamp
inputs), the op's body (plain and with the RoPE clamp's rope_delta / rope) against the contract's numpy
reference, `-m <onnx folder>` generating torch's tokens, and bad input (missing / corrupted checkpoint,
unwritable folder, a folder whose files do not match its config) -> one line, non-zero exit, nothing left.
"""
import json
import shutil

import numpy as np
import pytest
import torch
from cli_helpers import assert_one_line_error
from click.testing import CliRunner
from conftest import PARAGRAPHS

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import asa_runtime.cli.export  # noqa: E402,F401  (registers `export` on main)
from asa_runtime.cli import main  # noqa: E402
from asa_runtime.errors import BackendError  # noqa: E402
from asa_runtime.generate import generate, load  # noqa: E402
from asa_runtime.registry import available  # noqa: E402
from exporters.onnx import folder as F  # noqa: E402
from exporters.onnx import graph_op  # noqa: E402
from exporters.onnx import op_contract as C  # noqa: E402


def export(*args):
    return CliRunner().invoke(main, ["export", "--format", "onnx", "--no-progress", *map(str, args)])



@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_checkpoint):
    out = tmp_path_factory.mktemp("onnx") / "tiny-onnx"
    r = export("-m", tiny_checkpoint, "-o", out)
    assert r.exit_code == 0, r.output
    return out


# ---- the op's function body --------------------------------------------------------------------------
def _body_model(dtype=np.float32, rope=False):
    """A one-node model: asa.SparseAttention with its function body (what the exporter attaches); rope: the
    6-input form of the RoPE clamp."""
    from onnx import TensorProto, helper

    et = TensorProto.FLOAT if dtype == np.float32 else TensorProto.FLOAT16
    names = C.ALL_INPUT_NAMES if rope else C.INPUT_NAMES
    node = helper.make_node(C.OP_TYPE, list(names), list(C.OUTPUT_NAMES), domain=C.DOMAIN, scale=0.3)
    ins = [helper.make_tensor_value_info("q", et, ["B", "Hq", "T", "D"]),
           helper.make_tensor_value_info("k_cache", et, ["B", "Hkv", "S", "D"]),
           helper.make_tensor_value_info("v_cache", et, ["B", "Hkv", "S", "D"]),
           helper.make_tensor_value_info("rows", TensorProto.INT32, ["B", "T", "K"])]
    if rope:
        ins += [helper.make_tensor_value_info("rope_delta", TensorProto.INT32, ["B", "T", "K"]),
                helper.make_tensor_value_info("rope", TensorProto.FLOAT, ["P", "Dh", 2])]
    g = helper.make_graph([node], "g", ins, [helper.make_tensor_value_info("out", et, ["B", "Hq", "T", "D"])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", graph_op.OPSET),
                                            helper.make_opsetid(C.DOMAIN, C.VERSION)])
    m.functions.append(graph_op.function_proto(rope=rope))
    return m


@pytest.mark.parametrize("rope", [False, True], ids=["plain", "rope_clamp"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["f32", "f16"])
@pytest.mark.parametrize("B,Hq,Hkv,T,S,K", [(1, 4, 2, 5, 9, 4), (2, 6, 3, 3, 7, 5), (1, 2, 2, 1, 40, 8)])
def test_function_body_matches_the_contract_reference(B, Hq, Hkv, T, S, K, dtype, rope):
    rng = np.random.default_rng(B * 100 + S)
    q = rng.standard_normal((B, Hq, T, 16)).astype(dtype)
    k = rng.standard_normal((B, Hkv, S, 16)).astype(dtype)
    v = rng.standard_normal((B, Hkv, S, 16)).astype(dtype)
    rows = np.full((B, T, K), -1, np.int32)
    for b in range(B):
        for t in range(T):
            n = rng.integers(1, K + 1)
            rows[b, t, :n] = np.sort(rng.choice(S, n, replace=False))
    feed = {"q": q, "k_cache": k, "v_cache": v, "rows": rows}
    if rope:     # queries at positions S - T + t, w = 2: rows are slots = positions here
        from sparse_op_models import rope_table

        qpos = np.arange(S - T, S)[None, :, None]
        feed["rope_delta"] = np.where(rows >= 0, np.maximum(qpos - rows - 2, 0), 0).astype(np.int32)
        feed["rope"] = rope_table(int(feed["rope_delta"].max()) + 1, 16)
        assert feed["rope_delta"].max() > 0
    m = _body_model(dtype, rope)
    onnx.checker.check_model(m, full_check=True)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, feed)[0]
    want = C.reference(**{"q": q, "k": k, "v": v, "rows": rows}, scale=0.3, rope_delta=feed.get("rope_delta"),
                       rope=feed.get("rope"))
    tol = 1e-5 if dtype == np.float32 else 2e-3
    assert got.dtype == dtype and got.shape == want.shape
    assert np.abs(got.astype(np.float64) - want.astype(np.float64)).max() < tol


# ---- the exported folder and graph -------------------------------------------------------------------
def test_folder_layout_and_config(exported, tiny_checkpoint):
    names = sorted(p.name for p in exported.iterdir())
    assert names == ["analyzer", "config.json", F.GRAPH, F.GRAPH_DATA, "tokenizer.json"]
    assert sorted(p.name for p in exported.parent.iterdir()) == ["tiny-onnx"]   # no temporary folder left
    cfg = json.loads((exported / "config.json").read_text())
    src = json.loads((tiny_checkpoint / "config.json").read_text())
    assert cfg["format"] == F.FORMAT and cfg["dtype"] == "float32"
    assert cfg["model"]["n_layer"] == src["n_layer"] and cfg["plan"] == src["plan"]
    assert cfg["graph"]["ops"] == {"asa.SparseAttention": 1} and cfg["graph"]["opset"] == graph_op.OPSET
    assert cfg["source"] == F.source_hashes(tiny_checkpoint)
    assert cfg["tokenizer"]["sha256"] == src["tokenizer"]["sha256"]
    assert cfg["analyzer"] == src["analyzer"]
    assert cfg["files"] == F.file_hashes(exported)
    assert (exported / "analyzer").is_dir() and any((exported / "analyzer").iterdir())


def test_graph_has_one_custom_node_per_layer_and_passes_the_checker(exported, tiny_checkpoint):
    m = onnx.load(str(exported / F.GRAPH))
    n_layer = json.loads((tiny_checkpoint / "config.json").read_text())["n_layer"]
    custom = [n for n in m.graph.node if n.domain == C.DOMAIN]
    assert len(custom) == n_layer and {n.op_type for n in custom} == {C.OP_TYPE}
    assert {(o.domain, o.version) for o in m.opset_import} >= {(C.DOMAIN, C.VERSION), ("", graph_op.OPSET)}
    (fn,) = [f for f in m.functions if (f.domain, f.name) == (C.DOMAIN, C.OP_TYPE)]
    assert {n.domain for n in fn.node} == {""}                       # the body: standard ops only
    # no RoPE clamp (rope_clamp = 0): the plain 4-input op and graph, as before the clamp existed
    from exporters.onnx.export import io_names

    assert all(len(n.input) == len(C.INPUT_NAMES) for n in custom) and list(fn.input) == list(C.INPUT_NAMES)
    assert [i.name for i in m.graph.input] == io_names(n_layer)[0]
    assert "rope_clamp" not in json.loads((exported / "config.json").read_text())["graph"]
    assert not any(n.op_type == "Attention" for n in m.graph.node)
    onnx.checker.check_model(str(exported / F.GRAPH), full_check=True)
    inferred = onnx.shape_inference.infer_shapes_path(str(exported / F.GRAPH), str(exported.parent / "inf.onnx"),
                                                      check_type=True, strict_mode=True)
    assert inferred is None
    (exported.parent / "inf.onnx").unlink()
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in m.graph.input}
    assert isinstance(dims["input_ids"][1], str) and isinstance(dims["past_k.0"][2], str)    # dynamic T, S


def test_stock_onnxruntime_runs_prefill_and_decode_shapes(exported):
    sess = ort.InferenceSession(str(exported / F.GRAPH), providers=["CPUExecutionProvider"])   # nothing registered
    cfg = json.loads((exported / "config.json").read_text())["model"]
    Hkv, hs = cfg["n_kv_head"], cfg["d_model"] // cfg["n_head"]
    for T, S in ((7, 0), (1, 12)):
        feed = {"input_ids": np.zeros((1, T), np.int64), "positions": np.arange(S, S + T),
                "rows": np.tile(np.arange(S, S + T, dtype=np.int32)[None, :, None], (1, 1, 4))}
        for i in range(cfg["n_layer"]):
            feed[f"past_k.{i}"] = feed[f"past_v.{i}"] = np.zeros((1, Hkv, S, hs), np.float32)
        outs = sess.run(None, feed)
        assert outs[0].shape == (1, 1, cfg["vocab_size"]) and outs[1].shape == (1, Hkv, T, hs)


def test_onnx_folder_runs_with_m_and_matches_torch(exported, tiny_checkpoint):
    lm = load(exported, backend="onnx")
    assert lm.model is None and lm.backend.name == "onnx"
    want = generate(load(tiny_checkpoint), PARAGRAPHS[1], 20, temp=0)
    assert generate(lm, PARAGRAPHS[1], 20, temp=0) == want
    g = CliRunner().invoke(main, ["generate", "-m", str(exported), "--backend", "onnx", "-p", PARAGRAPHS[1],
                                  "-n", "20", "--temp", "0"])
    assert g.exit_code == 0, g.output
    assert g.stdout == want + "\n"
    r = CliRunner().invoke(main, ["generate", "-m", str(exported), "-p", "x", "-n", "2"])   # torch backend
    assert_one_line_error(r, "ONNX export", "--backend onnx")


def test_modified_export_is_refused(exported, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(exported, bad)
    tok = bad / "tokenizer.json"
    tok.write_text(tok.read_text().replace("{", "{ ", 1))
    with pytest.raises(BackendError, match="sha256 does not match"):
        load(bad, backend="onnx")
    r = CliRunner().invoke(main, ["generate", "-m", str(bad), "--backend", "onnx", "-p", "x", "-n", "2"])
    assert_one_line_error(r, "sha256")


# ---- bad input ---------------------------------------------------------------------------------------
def test_missing_checkpoint(tmp_path):
    assert_one_line_error(export("-m", tmp_path / "nope", "-o", tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_corrupted_checkpoint_leaves_nothing(tmp_path, tiny_checkpoint):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_checkpoint, bad)
    w = bad / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    out = tmp_path / "out"
    assert_one_line_error(export("-m", bad, "-o", out), "checksum")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad"]


def test_unwritable_output_and_bad_dtype(tmp_path, tiny_checkpoint):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_one_line_error(export("-m", tiny_checkpoint, "-o", blocker / "out"), "does not exist")
    assert_one_line_error(export("-m", tiny_checkpoint, "-o", blocker), "a file of that name exists")
    assert_one_line_error(export("-m", tiny_checkpoint, "-o", tmp_path / "o", "--dtype", "bfloat16"), "float16")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.slow
@pytest.mark.skipif("asa-small" not in available(), reason="asa-small not installed")
def test_asa_small_export_greedy_matches_torch(tmp_path):
    """Slow: exporting asa-small takes ~110 s on this shared 2-core machine (trace + translate)."""
    out = tmp_path / "small-onnx"
    assert export("-m", "asa-small", "-o", out).exit_code == 0
    lt, lo = load("asa-small"), load(out, backend="onnx")
    ids = lt.tokenizer.encode(" ".join(PARAGRAPHS))
    from asa_runtime.session import Session

    st, so = Session(lt, max_kv_size=256, prefill_chunk=64), Session(lo, max_kv_size=256, prefill_chunk=64)
    a, b = st.feed(ids), so.feed(ids)
    assert (a - b).abs().max().item() < 1e-3
    for _ in range(32):
        assert int(a.argmax()) == int(b.argmax())
        t = int(a.argmax())
        a, b = st.step(t), so.step(t)
        assert (a - b).abs().max().item() < 1e-3
    assert torch.equal(a.argmax(), b.argmax())
