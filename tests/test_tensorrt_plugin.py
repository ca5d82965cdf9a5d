"""The TensorRT-RTX plugin for asa.SparseAttention (exporters/tensorrt).

What runs where:
- engine builds (parser -> plugin shape/type/format logic -> serialized engine): here, on CPU-only CI, for the
  plain 4-input node and the RoPE clamp's 6-input one (+ rope_delta, rope); the clamped decoder export's
  build is in tests/test_onnx_rope_clamp.py;
- the plugin's enqueue code: on host buffers here (device="cpu"), on CUDA buffers on a GPU with torch;
- an engine executing inside TensorRT: only on a GPU TensorRT-RTX supports (compute capability 8.0, 8.6,
  8.9, 12.x); no such GPU exists on this project's machines, so that test skips and the path is UNTESTED.
"""
from __future__ import annotations

import ctypes

import numpy as np
import pytest

pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

from exporters.onnx import op_contract as oc  # noqa: E402
from sparse_op_models import inputs, one_node_model  # noqa: E402

try:   # TensorRT-RTX is optional: without it only the CUDA enqueue-path test can run (e.g. on our H200)
    from exporters.tensorrt import plugin
    from exporters.tensorrt.build import (EngineBuildError, build_engine, decoder_shapes, strip_op_function,
                                          write_engine)
    trt, WHY_NO_TRT = plugin.trt, ""
except (ImportError, RuntimeError) as e:     # not installed / TensorRTUnavailable
    plugin = trt = None
    WHY_NO_TRT = " ".join(str(e).split())

needs_trt = pytest.mark.skipif(trt is None, reason=f"TensorRT-RTX unavailable: {WHY_NO_TRT}")
DIMS = {"B": (1, 1, 2), "Hq": (6, 6, 6), "Hkv": (2, 2, 2), "T": (1, 1, 64), "S": (1, 512, 4096),
        "D": (64, 64, 64), "K": (1, 64, 64), "P": (1, 512, 8192), "Dh": (32, 32, 32)}   # P, Dh: the rope table
TRT_RTX_CC = {(8, 0), (8, 6), (8, 9), (12, 0), (12, 1)}     # where TensorRT-RTX runs engines


@pytest.fixture
def created(monkeypatch):
    """Scales of the plugins the ONNX parser creates (the creator is what the node's attributes reach)."""
    seen = []
    orig = plugin.SparseAttentionCreator.create_plugin

    def spy(self, name, fc, phase):
        p = orig(self, name, fc, phase)
        seen.append(p.scale)
        return p

    monkeypatch.setattr(plugin.SparseAttentionCreator, "create_plugin", spy)
    return seen


@pytest.mark.parametrize("dtype, trt_type", [(np.float32, "FLOAT"), (np.float16, "HALF")])
@needs_trt
def test_engine_builds_from_one_node_graph(dtype, trt_type, created, tmp_path):
    res = build_engine(one_node_model(dtype, scale=0.3), dims=DIMS)
    assert res.plugin_layers == 1
    assert res.outputs == {"out": ((-1, -1, -1, -1), trt_type)}     # output type follows q
    assert len(res.engine) > 1000 and created == [pytest.approx(0.3)]
    p = write_engine(res.engine, tmp_path / "e" / "m.engine")
    assert p.read_bytes() == res.engine and not list(p.parent.glob(".*tmp"))


@pytest.mark.parametrize("dtype, trt_type", [(np.float32, "FLOAT"), (np.float16, "HALF")])
@needs_trt
def test_engine_builds_from_one_node_graph_with_the_rope_clamp(dtype, trt_type, created):
    """The 6-input node (rope_delta int32, rope float32 whatever q's type) maps to the same plugin."""
    res = build_engine(one_node_model(dtype, scale=0.3, rope=True), dims=DIMS)
    assert res.plugin_layers == 1 and res.outputs == {"out": ((-1, -1, -1, -1), trt_type)}
    assert created == [pytest.approx(0.3)]


@needs_trt
def test_output_shape_is_q_shape_and_default_scale(created):
    shapes = ((2, 8, 5, 32), (2, 2, 40, 32), (2, 2, 40, 32), (2, 5, 7))
    res = build_engine(one_node_model(shapes=shapes))
    assert res.outputs["out"] == ((2, 8, 5, 32), "FLOAT")
    assert created == [None]                                        # no attribute: 1/sqrt(D) at run time


@needs_trt
def test_function_body_is_stripped_so_the_plugin_is_used():
    wrong_body = [helper.make_node("Neg", ["q"], ["out"])]
    model = one_node_model(body=wrong_body)
    import onnx

    stripped = strip_op_function(onnx.load_from_string(model))
    assert len(onnx.load_from_string(model).functions) == 1 and len(stripped.functions) == 0
    assert build_engine(model, dims=DIMS).plugin_layers == 1


@pytest.mark.parametrize("shapes, rows_type, why", [
    (((1, 6, 1, 64), (1, 4, 9, 64), (1, 4, 9, 64), (1, 1, 3)), TensorProto.INT32, "Hq=6 is not a multiple of Hkv=4"),
    (((1, 4, 1, 64), (1, 4, 9, 64), (1, 4, 9, 32), (1, 1, 3)), TensorProto.INT32, "differ"),
    (((1, 4, 2, 64), (1, 4, 9, 64), (1, 4, 9, 64), (1, 3, 3)), TensorProto.INT32, "must be \\(B, T, K\\)"),
    (((1, 4, 1, 64), (1, 4, 9, 64), (1, 4, 9, 64), (1, 1, 3)), TensorProto.FLOAT, "could not build"),  # no format
])
@needs_trt
def test_contract_violations_fail_the_build(shapes, rows_type, why):
    with pytest.raises(EngineBuildError, match=why):
        build_engine(one_node_model(shapes=shapes, rows_type=rows_type))


ROPE_SHAPES = ((1, 4, 2, 64), (1, 4, 9, 64), (1, 4, 9, 64), (1, 2, 3), (1, 2, 3), (20, 32, 2))


@pytest.mark.parametrize("shapes, types, why", [
    (ROPE_SHAPES[:4] + ((1, 2, 4), (20, 32, 2)), (TensorProto.INT32, TensorProto.FLOAT), "the shape of rows"),
    (ROPE_SHAPES[:5] + ((20, 16, 2),), (TensorProto.INT32, TensorProto.FLOAT), "must be \\(P, D/2, 2\\)"),
    (ROPE_SHAPES, (TensorProto.INT32, TensorProto.FLOAT16), "could not build"),     # the table is float32
    (ROPE_SHAPES, (TensorProto.FLOAT, TensorProto.FLOAT), "could not build"),       # deltas are int32
])
@needs_trt
def test_rope_contract_violations_fail_the_build(shapes, types, why):
    import onnx

    model = onnx.ModelProto()
    model.ParseFromString(one_node_model(shapes=shapes, rope=True))
    for vi, t in zip(model.graph.input[4:], types):
        vi.type.tensor_type.elem_type = t
    with pytest.raises(EngineBuildError, match=why):
        build_engine(model)


@needs_trt
def test_check_dims_messages():
    with pytest.raises(plugin.PluginConfigError, match="not a multiple"):
        plugin.check_dims([(1, 6, 1, 64), (1, 4, -1, 64), (1, 4, -1, 64), (1, 1, 8)])
    with pytest.raises(plugin.PluginConfigError, match="rank 3"):
        plugin.check_dims([(1, 6, 1, 64), (1, 6, -1, 64), (1, 6, -1, 64), (1, 8)])
    plugin.check_dims([(-1, 6, -1, 64), (-1, 2, -1, 64), (-1, 2, -1, 64), (-1, -1, -1)])   # unknowns pass
    with pytest.raises(plugin.PluginConfigError, match="takes 4 inputs or 6"):
        plugin.check_dims([(1, 6, 1, 64), (1, 6, -1, 64), (1, 6, -1, 64), (1, 1, 8), (1, 1, 8)])
    with pytest.raises(plugin.PluginConfigError, match="rope .* must be"):
        plugin.check_dims([(1, 6, 1, 64), (1, 6, -1, 64), (1, 6, -1, 64), (1, 1, 8), (1, 1, 8), (-1, 32, 3)])
    plugin.check_dims([(1, 6, -1, 64), (1, 2, -1, 64), (1, 2, -1, 64), (1, -1, -1), (1, -1, -1), (-1, 32, 2)])


@needs_trt
def test_missing_dim_range_is_a_clear_error():
    with pytest.raises(EngineBuildError, match="has no range: pass dims="):
        build_engine(one_node_model(), dims={"B": (1, 1, 1)})
    with pytest.raises(EngineBuildError, match="no ONNX file"):
        build_engine("/nonexistent/model.onnx")


@needs_trt
def test_engine_builds_from_exported_asa_small():
    """The whole asa-small decoder as exported for ONNX Runtime (cached export, external weights): every
    layer's asa.SparseAttention node becomes a plugin layer and the engine builds."""
    import onnx

    backend = pytest.importorskip("asa_runtime.backends.onnx_backend")
    from exporters.common import resolve_model

    folder = backend.ensure_export(resolve_model("asa-small"), "float32", progress=False)
    graph = folder / "model.onnx"
    proto = onnx.load(str(graph), load_external_data=False)
    n_nodes = sum(n.domain == oc.DOMAIN and n.op_type == oc.OP_TYPE for n in proto.graph.node)
    assert n_nodes >= 1 and any(f.name == oc.OP_TYPE for f in proto.functions)        # body present...
    res = build_engine(graph, shapes=decoder_shapes(proto, T=(1, 1, 64), S=(1, 256, 4096), K=(1, 64, 128)))
    assert res.plugin_layers == n_nodes                                                # ...yet plugins used
    dims, dtype = res.outputs["logits"]
    assert dtype == "FLOAT" and dims[-1] == proto.graph.output[0].type.tensor_type.shape.dim[-1].dim_value
    assert len(res.engine) > 10 << 20                                                  # the weights are in it


@needs_trt
def test_build_cli_one_line_errors(tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not an onnx file")
    for arg in (str(tmp_path / "missing"), str(tmp_path)):
        r = subprocess.run([sys.executable, "-m", "exporters.tensorrt.build", arg, "--out", str(tmp_path / "e")],
                           capture_output=True, text=True)
        assert r.returncode == 1 and r.stderr.startswith("Error: ") and len(r.stderr.strip().splitlines()) == 1
        assert "Traceback" not in r.stderr


def _desc(shape, type_name):
    d = trt.PluginTensorDesc()
    d.dims, d.type, d.format = trt.Dims(list(shape)), getattr(trt.DataType, type_name), trt.TensorFormat.LINEAR
    return d


def _ptr(a: np.ndarray) -> int:
    return a.ctypes.data_as(ctypes.c_void_p).value


@pytest.mark.parametrize("dtype, type_name", [(np.float32, "FLOAT"), (np.float16, "HALF")])
@needs_trt
def test_enqueue_on_host_buffers(dtype, type_name):
    """The plugin's own enqueue method (as TensorRT would call it) on host memory: pointer wrapping,
    dims/dtype plumbing and the call into kernels.sparse_attention, against the numpy reference."""
    f = inputs(5, 1, 6, 2, 3, 50, 16, 8, dtype)
    out = np.full(f["q"].shape, np.nan, dtype=dtype)
    p = plugin.SparseAttentionPlugin(0.4)
    p.device = "cpu"
    names = [type_name] * 3 + ["INT32"]
    descs = [_desc(f[n].shape, t) for n, t in zip(oc.INPUT_NAMES, names)]
    p.enqueue(descs, [_desc(out.shape, type_name)], [_ptr(f[n]) for n in oc.INPUT_NAMES], [_ptr(out)], 0, 0)
    ref = oc.reference(f["q"], f["k_cache"], f["v_cache"], f["rows"], 0.4)
    np.testing.assert_allclose(out.astype(np.float64), ref.astype(np.float64), atol=2e-3 if dtype == np.float16 else 1e-5)


@pytest.mark.parametrize("dtype, type_name", [(np.float32, "FLOAT"), (np.float16, "HALF")])
@needs_trt
def test_enqueue_on_host_buffers_with_the_rope_clamp(dtype, type_name):
    """enqueue with the 6 inputs of the RoPE clamp (host memory), against the numpy reference."""
    f = inputs(9, 1, 6, 2, 3, 50, 16, 8, dtype, rope=5)
    assert f["rope_delta"].max() > 0
    out = np.full(f["q"].shape, np.nan, dtype=dtype)
    p = plugin.SparseAttentionPlugin(0.4)
    p.device = "cpu"
    names = [type_name] * 3 + ["INT32", "INT32", "FLOAT"]
    descs = [_desc(f[n].shape, t) for n, t in zip(oc.ALL_INPUT_NAMES, names)]
    ptrs = [_ptr(f[n]) for n in oc.ALL_INPUT_NAMES]
    p.enqueue(descs, [_desc(out.shape, type_name)], ptrs, [_ptr(out)], 0, 0)
    ref = oc.reference(f["q"], f["k_cache"], f["v_cache"], f["rows"], 0.4, f["rope_delta"], f["rope"])
    atol = 2e-3 if dtype == np.float16 else 1e-5
    np.testing.assert_allclose(out.astype(np.float64), ref.astype(np.float64), atol=atol)


@needs_trt
def test_serialized_fields_round_trip_through_the_creator():
    p = plugin.SparseAttentionPlugin(0.125)
    fields = p.get_fields_to_serialize()
    again = plugin.SparseAttentionCreator().create_plugin("x", fields, None)
    assert again.scale == pytest.approx(0.125)
    none = plugin.SparseAttentionCreator().create_plugin("x", plugin.SparseAttentionPlugin().get_fields_to_serialize(), None)
    assert none.scale is None
    assert (p.plugin_name, p.plugin_version, p.plugin_namespace) == (oc.OP_TYPE, str(oc.VERSION), oc.DOMAIN)


def _cuda_cc():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU here (the CUDA enqueue path and engine execution need one)")
    return torch.cuda.get_device_capability()


@pytest.mark.gpu
@pytest.mark.parametrize("rope", [0, 40], ids=["plain", "rope_clamp"])
@pytest.mark.parametrize("T", [4, 64], ids=["decode", "prefill"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_enqueue_path_on_cuda_buffers(dtype, T, rope):
    """launch.sparse_attention_into on CUDA memory and a side stream, as the plugin's enqueue calls it (with
    the RoPE clamp's two inputs too: rope = w)."""
    import torch

    from exporters.tensorrt.launch import sparse_attention_into

    _cuda_cc()
    f = inputs(6, 1, 6, 2, T, 300, 64, 32, np.float32, rope=rope)
    names_in = oc.ALL_INPUT_NAMES if rope else oc.INPUT_NAMES
    t = {n: torch.from_numpy(a).cuda() for n, a in f.items()}
    for n in ("q", "k_cache", "v_cache"):
        t[n] = t[n].to(getattr(torch, dtype))
    out = torch.full_like(t["q"], float("nan"))
    stream = torch.cuda.Stream()
    names = ["FLOAT" if dtype == "float32" else "HALF"] * 3 + ["INT32"] + ["INT32", "FLOAT"][: len(names_in) - 4]
    torch.cuda.synchronize()
    sparse_attention_into([tuple(t[n].shape) for n in names_in], names,
                          [t[n].data_ptr() for n in names_in], out.data_ptr(), stream.cuda_stream, 0.2)
    stream.synchronize()
    ref = oc.reference(*(t[n].float().cpu().numpy() for n in oc.INPUT_NAMES), 0.2,
                       *((f["rope_delta"], f["rope"]) if rope else ()))
    np.testing.assert_allclose(out.float().cpu().numpy(), ref, atol=2e-3 if dtype == "float16" else 2e-5)


@pytest.mark.gpu
def test_engine_executes_on_a_supported_gpu():
    """UNTESTED on this project's machines: runs only where TensorRT-RTX supports the GPU."""
    cc = _cuda_cc()
    if cc not in TRT_RTX_CC:
        pytest.skip(f"TensorRT-RTX does not run engines on compute capability {cc[0]}.{cc[1]} "
                    f"(it supports 8.0, 8.6, 8.9, 12.x)")
    if trt is None:
        pytest.skip(f"TensorRT-RTX unavailable: {WHY_NO_TRT}")
    import torch

    f = inputs(8, 1, 6, 2, 1, 200, 64, 32, np.float32)
    res = build_engine(one_node_model(scale=0.3), dims=DIMS)
    engine = trt.Runtime(trt.Logger(trt.Logger.ERROR)).deserialize_cuda_engine(res.engine)
    ctx = engine.create_execution_context()
    t = {n: torch.from_numpy(a).cuda() for n, a in f.items()}
    out = torch.empty_like(t["q"])
    for n in oc.INPUT_NAMES:
        ctx.set_input_shape(n, tuple(t[n].shape))
        ctx.set_tensor_address(n, t[n].data_ptr())
    ctx.set_tensor_address("out", out.data_ptr())
    assert ctx.execute_async_v3(torch.cuda.current_stream().cuda_stream)
    torch.cuda.synchronize()
    ref = oc.reference(f["q"], f["k_cache"], f["v_cache"], f["rows"], 0.3)
    np.testing.assert_allclose(out.cpu().numpy(), ref, atol=2e-5)
