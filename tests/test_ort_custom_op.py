"""The asa.SparseAttention ONNX Runtime kernel (exporters/onnx/csrc, built by exporters/onnx/custom_ops.py)
against the contract's numpy reference, on one-node ONNX models run by stock onnxruntime; in its plain 4-input
form and in the 6-input form of the RoPE clamp (rope_delta, rope: each gathered key rotated by rope[delta]).

Tolerances: float32 outputs within 2e-5 of the float64 reference; float16 within 2e-3 (the kernel
accumulates in float32 and rounds once to float16, about one half-precision ulp at |out| ~ 1)."""
from __future__ import annotations

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from onnx import helper  # noqa: E402

from exporters.onnx import custom_ops, op_contract as oc  # noqa: E402

from sparse_op_models import inputs, one_node_model  # noqa: E402

TOL = {np.float32: 2e-5, np.float16: 2e-3}


@pytest.fixture(scope="module")
def lib():
    try:
        custom_ops.compiler()
    except custom_ops.KernelBuildError as e:
        pytest.skip(str(e))
    return str(custom_ops.library_path())          # a build failure fails the test


def session(model: bytes, lib_path=None):
    opts = ort.SessionOptions()
    opts.log_severity_level = 4                    # expected failures below should not spam the log
    if lib_path:
        opts.register_custom_ops_library(lib_path)
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


CASES = {  # B, Hq, Hkv, T, S, D, K
    "decode_T1_long_cache": (1, 6, 6, 1, 700, 64, 64),
    "decode_gqa_batch2": (2, 8, 2, 1, 300, 32, 16),
    "prefill_T_eq_S": (1, 4, 4, 48, 48, 16, 12),
    "chunk_S_gt_T_gqa": (2, 6, 2, 20, 90, 24, 10),
    "mqa_K1": (1, 4, 1, 5, 9, 8, 1),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["f32", "f16"])
@pytest.mark.parametrize("case", list(CASES))
def test_kernel_matches_reference(lib, case, dtype):
    B, Hq, Hkv, T, S, D, K = CASES[case]
    feeds = inputs(list(CASES).index(case), B, Hq, Hkv, T, S, D, K, dtype)
    for scale in (None, 0.37):
        out = session(one_node_model(dtype, scale), lib).run(None, feeds)[0]
        ref = oc.reference(feeds["q"], feeds["k_cache"], feeds["v_cache"], feeds["rows"], scale)
        assert out.dtype == dtype and out.shape == (B, Hq, T, D)
        np.testing.assert_allclose(out.astype(np.float64), ref.astype(np.float64), atol=TOL[dtype], rtol=TOL[dtype])


def test_numpy_reference_agrees_with_torch_reference():
    torch = pytest.importorskip("torch")
    from kernels.torch_sparse import sparse_attention_torch

    f = inputs(3, *CASES["chunk_S_gt_T_gqa"], np.float32)
    t = sparse_attention_torch(*(torch.from_numpy(f[n]) for n in oc.INPUT_NAMES), scale=0.3).numpy()
    np.testing.assert_allclose(oc.reference(f["q"], f["k_cache"], f["v_cache"], f["rows"], 0.3), t, atol=1e-5)


ROPE_CASES = ["decode_T1_long_cache", "decode_gqa_batch2", "prefill_T_eq_S", "chunk_S_gt_T_gqa"]


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["f32", "f16"])
@pytest.mark.parametrize("case", ROPE_CASES)
def test_kernel_with_the_rope_clamp_matches_reference(lib, case, dtype):
    B, Hq, Hkv, T, S, D, K = CASES[case]
    w = max(1, S // 8)                                          # rows reach back to slot 0: many far keys
    feeds = inputs(10 + ROPE_CASES.index(case), B, Hq, Hkv, T, S, D, K, dtype, rope=w)
    valid = feeds["rows"] >= 0
    assert (feeds["rope_delta"][valid] > 0).any() and (feeds["rope_delta"][valid] == 0).any()
    plain = oc.reference(feeds["q"], feeds["k_cache"], feeds["v_cache"], feeds["rows"], 0.37)
    for scale in (None, 0.37):
        out = session(one_node_model(dtype, scale, rope=True), lib).run(None, feeds)[0]
        ref = oc.reference(feeds["q"], feeds["k_cache"], feeds["v_cache"], feeds["rows"], scale,
                           feeds["rope_delta"], feeds["rope"])
        assert out.dtype == dtype and out.shape == (B, Hq, T, D)
        np.testing.assert_allclose(out.astype(np.float64), ref.astype(np.float64), atol=TOL[dtype],
                                   rtol=TOL[dtype])
    assert np.abs(ref.astype(np.float64) - plain).max() > 1e-2      # the rotation changes the result


def test_zero_deltas_are_the_plain_op_bit_for_bit(lib):
    feeds = inputs(4, *CASES["chunk_S_gt_T_gqa"], np.float32, rope=1)
    plain = session(one_node_model(), lib).run(None, {n: feeds[n] for n in oc.INPUT_NAMES})[0]
    feeds["rope_delta"][:] = 0
    np.testing.assert_array_equal(session(one_node_model(rope=True), lib).run(None, feeds)[0], plain)


def test_numpy_reference_with_the_rope_clamp_agrees_with_torch_reference():
    torch = pytest.importorskip("torch")
    from kernels.torch_sparse import sparse_attention_torch

    f = inputs(3, *CASES["chunk_S_gt_T_gqa"], np.float64, rope=10)
    t = {n: torch.from_numpy(a) for n, a in f.items()}
    got = sparse_attention_torch(*(t[n] for n in oc.INPUT_NAMES), scale=0.3, rope_delta=t["rope_delta"],
                                 rope=t["rope"]).numpy()                      # float64, like the reference
    want = oc.reference(f["q"], f["k_cache"], f["v_cache"], f["rows"], 0.3, f["rope_delta"], f["rope"])
    np.testing.assert_allclose(want, got, atol=1e-12)
    t32 = {n: (a.float() if a.is_floating_point() else a) for n, a in t.items()}
    got32 = sparse_attention_torch(*(t32[n] for n in oc.INPUT_NAMES), scale=0.3, rope_delta=t["rope_delta"],
                                   rope=t["rope"]).numpy()                    # the float32 kernels' way
    np.testing.assert_allclose(want, got32, atol=1e-5)
    with pytest.raises(ValueError, match="outside the table"):
        oc.reference(f["q"], f["k_cache"], f["v_cache"], f["rows"], 0.3, f["rope_delta"], f["rope"][:3])
    with pytest.raises(ValueError, match="both or neither"):
        oc.reference(f["q"], f["k_cache"], f["v_cache"], f["rows"], 0.3, f["rope_delta"])


def test_threaded_prefill_equals_single_thread(lib, monkeypatch):
    """A prefill chunk large enough to be split over threads gives bit-identical results with one thread."""
    B, Hq, Hkv, T, S, D, K = 1, 6, 6, 256, 1024, 64, 64
    feeds = inputs(7, B, Hq, Hkv, T, S, D, K, np.float32)
    model = one_node_model()
    monkeypatch.setenv("ASA_ORT_THREADS", "2")
    two = session(model, lib).run(None, feeds)[0]
    monkeypatch.setenv("ASA_ORT_THREADS", "1")
    one = session(model, lib).run(None, feeds)[0]
    np.testing.assert_array_equal(two, one)
    np.testing.assert_allclose(one, oc.reference(**{"q": feeds["q"], "k": feeds["k_cache"], "v": feeds["v_cache"],
                                                    "rows": feeds["rows"]}), atol=2e-5)


def test_kernel_not_function_body_is_what_runs(lib):
    """Without a function body the node only runs with the library; with a (deliberately wrong) body, the
    registered kernel still wins, so the body is a fallback and not what ran."""
    feeds = inputs(1, 1, 4, 2, 3, 10, 8, 4, np.float32)
    ref = oc.reference(feeds["q"], feeds["k_cache"], feeds["v_cache"], feeds["rows"])
    bare = one_node_model()
    with pytest.raises(Exception, match="SparseAttention"):
        session(bare)
    np.testing.assert_allclose(session(bare, lib).run(None, feeds)[0], ref, atol=2e-5)
    wrong_body = one_node_model(body=[helper.make_node("Neg", ["q"], ["out"])])
    np.testing.assert_allclose(session(wrong_body).run(None, feeds)[0], -feeds["q"])      # body without library
    np.testing.assert_allclose(session(wrong_body, lib).run(None, feeds)[0], ref, atol=2e-5)


@pytest.mark.parametrize("bad, message", [
    ("slot_past_cache", "names slot 10 but the cache holds S=10"),
    ("empty_row", "has no valid slot"),
    ("heads", "not a multiple of Hkv"),
    ("rows_shape", "must be (B, T, K)"),
])
def test_contract_violations_are_clear_errors(lib, bad, message):
    feeds = inputs(2, 1, 4, 2, 3, 10, 8, 4, np.float32)
    if bad == "slot_past_cache":
        feeds["rows"][0, 1, 0] = 10
    elif bad == "empty_row":
        feeds["rows"][0, 2, :] = -1
    elif bad == "heads":
        feeds["k_cache"] = feeds["v_cache"] = np.ones((1, 3, 10, 8), np.float32)   # Hq=4 over Hkv=3
    elif bad == "rows_shape":
        feeds["rows"] = feeds["rows"][:, :2]
    with pytest.raises(Exception, match=message.replace("(", r"\(").replace(")", r"\)")):
        session(one_node_model(), lib).run(None, feeds)


@pytest.mark.parametrize("bad, message", [
    ("delta_past_table", "is 50, outside the rope table's [0, "),
    ("negative_delta", "is -1, outside the rope table's"),
    ("table_width", "must be (P, D/2, 2) for D=8"),
    ("delta_shape", "must have the shape of rows"),
])
def test_rope_contract_violations_are_clear_errors(lib, bad, message):
    feeds = inputs(2, 1, 4, 2, 3, 10, 8, 4, np.float32, rope=2)
    if bad == "delta_past_table":
        feeds["rope_delta"][0, 2, 0] = 50
    elif bad == "negative_delta":
        feeds["rope_delta"][0, 0, 3] = -1                       # on padding too: every entry indexes the table
    elif bad == "table_width":
        feeds["rope"] = np.zeros((4, 3, 2), np.float32)
    elif bad == "delta_shape":
        feeds["rope_delta"] = feeds["rope_delta"][:, :, :2].copy()
    with pytest.raises(Exception, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        session(one_node_model(rope=True), lib).run(None, feeds)


def test_custom_ops_cli_prints_library_path(lib):
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "exporters.onnx.custom_ops"], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip() == lib


def test_build_failure_is_one_line_error(tmp_path, monkeypatch):
    """A compiler that fails gives KernelBuildError naming the problem, not a traceback from subprocess."""
    fake = tmp_path / "c++"
    fake.write_text("#!/bin/sh\n[ \"$1\" = --version ] && echo fake && exit 0\necho 'x.cc:1: error: nope' >&2; exit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CXX", str(fake))
    monkeypatch.setenv("ASA_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(custom_ops.KernelBuildError, match="error: nope"):
        custom_ops.library_path()
    assert not list((tmp_path / "cache").rglob("*.so"))
