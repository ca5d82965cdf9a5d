"""TensorRT-RTX plugin (IPluginV3) for the exported asa.SparseAttention node.

Its name, version and namespace are the node's op type, version and domain ("SparseAttention", "1", "asa"),
so TensorRT's ONNX parser maps the node to it (exporters/tensorrt/build.py strips the node's ONNX function
body first, which the parser would otherwise inline). Written against the Python plugin classes of
`tensorrt_rtx_bindings` (the `tensorrt-rtx-cu12/cu13-bindings` wheels):

- build time (tested on CPU-only CI: engines are built from a one-node graph and the exported model):
  output shape = q's shape, output type = q's type; q, k_cache, v_cache and the output share one of
  float32 / float16, rows are int32, all in linear (row-major) layout; configure_plugin checks ranks and
  the GQA head ratio wherever the dims are known. A node of a model with the RoPE clamp has 6 inputs (+
  rope_delta int32 (B, T, K), rope float32 (P, D/2, 2): exporters/onnx/op_contract.py); a node has 4 or 6.
- run time (enqueue): the project's own kernel on TensorRT's stream (exporters/tensorrt/launch.py: Triton
  on CUDA when it imports, else the torch reference; with the RoPE clamp and a far key in the call, the torch
  gathers, as kernels.sparse_attention does, after a host sync that checks for far keys). UNTESTED inside a
  TensorRT engine, with or without the clamp: TensorRT-RTX runs engines only on compute capability 8.0, 8.6,
  8.9 and 12.x GPUs and we have none (our H200 is 9.0); the same enqueue code is tested on host buffers (CI)
  and on CUDA buffers with torch (the H200).

Engines hold no Python code: a process that deserializes one must call register() first.
"""
from __future__ import annotations

import math

import numpy as np

from exporters.onnx import op_contract as oc

from .libs import load_trt

trt = load_trt()          # raises TensorRTUnavailable (one line) where TensorRT-RTX cannot be used

N_INPUTS = len(oc.INPUT_NAMES)
N_INPUTS_ROPE = len(oc.ALL_INPUT_NAMES)     # with the RoPE clamp's rope_delta and rope
FLOAT_TYPES = (trt.DataType.FLOAT, trt.DataType.HALF)
RANKS = (4, 4, 4, 3, 3, 3)                  # q, k_cache, v_cache, rows, [rope_delta, rope]


class PluginConfigError(ValueError):
    """The tensors wired to the node do not fit the op contract (found at engine build time)."""


# TensorRT reports a failed configure_plugin only as "non-zero return code"; build.py reads the reason here
config_errors: list[str] = []


def check_dims(dims: list[tuple[int, ...]]) -> None:
    """Contract checks on (q, k_cache, v_cache, rows[, rope_delta, rope]) dims; -1: a dim not known yet."""
    if len(dims) not in (N_INPUTS, N_INPUTS_ROPE):
        raise PluginConfigError(f"asa.SparseAttention takes {N_INPUTS} inputs or {N_INPUTS_ROPE} (with the "
                                f"RoPE clamp's rope_delta and rope), got {len(dims)}")
    names = oc.ALL_INPUT_NAMES
    for name, d, r in zip(names, dims, RANKS):
        if len(d) != r:
            raise PluginConfigError(f"asa.SparseAttention: {name} must have rank {r}, got dims {d}")
    q, k, v, rows = dims[:4]

    def clash(a, b):
        return a >= 0 and b >= 0 and a != b

    if any(clash(a, b) for a, b in zip(k, v)):
        raise PluginConfigError(f"asa.SparseAttention: k_cache {k} and v_cache {v} differ")
    if clash(q[0], k[0]) or clash(q[3], k[3]):
        raise PluginConfigError(f"asa.SparseAttention: q {q} and k_cache {k} disagree on B or D")
    if q[1] > 0 and k[1] > 0 and q[1] % k[1]:
        raise PluginConfigError(f"asa.SparseAttention: Hq={q[1]} is not a multiple of Hkv={k[1]}")
    if clash(rows[0], q[0]) or clash(rows[1], q[2]):
        raise PluginConfigError(f"asa.SparseAttention: rows {rows} must be (B, T, K) for q {q}")
    if len(dims) == N_INPUTS_ROPE:
        delta, rope = dims[4:]
        if any(clash(a, b) for a, b in zip(delta, rows)):
            raise PluginConfigError(f"asa.SparseAttention: rope_delta {delta} must have the shape of rows "
                                    f"{rows}")
        if clash(rope[2], 2) or (rope[1] >= 0 and q[3] >= 0 and rope[1] * 2 != q[3]):
            raise PluginConfigError(f"asa.SparseAttention: rope {rope} must be (P, D/2, 2) for q {q}")


class SparseAttentionPlugin(trt.IPluginV3, trt.IPluginV3OneCore, trt.IPluginV3OneBuild, trt.IPluginV3OneRuntime):
    def __init__(self, scale: float | None = None):
        trt.IPluginV3.__init__(self)
        trt.IPluginV3OneCore.__init__(self)
        trt.IPluginV3OneBuild.__init__(self)
        trt.IPluginV3OneRuntime.__init__(self)
        self.plugin_name = oc.TRT_PLUGIN_NAME
        self.plugin_version = oc.TRT_PLUGIN_VERSION
        self.plugin_namespace = oc.TRT_PLUGIN_NAMESPACE
        self.num_outputs = 1
        self.timing_cache_id = ""            # python plugins must set every attribute TensorRT reads
        self.scale = None if scale is None or math.isnan(scale) else float(scale)
        self.device = "cuda"                 # tests set "cpu" to run enqueue on host buffers

    # ---- core / capabilities ----
    def get_capability_interface(self, type):
        return self

    def clone(self):
        c = SparseAttentionPlugin(self.scale)
        c.__dict__.update(self.__dict__)
        return c

    # ---- build ----
    def get_output_data_types(self, input_types):
        return [input_types[0]]

    def get_output_shapes(self, inputs, shape_inputs, expr_builder):
        return [trt.DimsExprs(inputs[0])]                      # (B, Hq, T, D), as q

    def supports_format_combination(self, pos, in_out, num_inputs):
        desc = in_out[pos].desc
        if desc.format != trt.TensorFormat.LINEAR:
            return False
        if pos in (3, 4) and pos < num_inputs:                  # rows, rope_delta
            return desc.type == trt.DataType.INT32
        if pos == 5 and pos < num_inputs:                       # rope: the float32 table, whatever q's type
            return desc.type == trt.DataType.FLOAT
        if pos == 0:
            return desc.type in FLOAT_TYPES
        return desc.type == in_out[0].desc.type                 # k_cache, v_cache, out follow q

    def configure_plugin(self, inp, out):
        dims = [tuple(int(x) for x in t.desc.dims) for t in inp]      # -1 where a dim is dynamic
        try:
            check_dims(dims)
        except PluginConfigError as e:
            config_errors.append(str(e))
            raise

    def get_workspace_size(self, inp, out):
        return 0

    def get_valid_tactics(self):
        return []

    # ---- serialization: the only state is `scale` ----
    def get_fields_to_serialize(self):
        s = np.array([np.nan if self.scale is None else self.scale], dtype=np.float32)
        return trt.PluginFieldCollection([trt.PluginField(oc.ATTR_SCALE, s, trt.PluginFieldType.FLOAT32)])

    # ---- runtime ----
    def on_shape_change(self, inp, out):
        check_dims([tuple(int(x) for x in t.dims) for t in inp])

    def set_tactic(self, tactic):
        pass

    def attach_to_context(self, context):
        return self.clone()

    def enqueue(self, input_desc, output_desc, inputs, outputs, workspace, stream):
        # UNTESTED inside a TensorRT engine (see the module docstring); tested by direct calls.
        from .launch import sparse_attention_into

        shapes = [tuple(int(x) for x in d.dims) for d in input_desc]
        dtypes = [d.type.name for d in input_desc]
        sparse_attention_into(shapes, dtypes, list(inputs), outputs[0], stream, self.scale, device=self.device)


class SparseAttentionCreator(trt.IPluginCreatorV3One):
    def __init__(self):
        trt.IPluginCreatorV3One.__init__(self)
        self.name = oc.TRT_PLUGIN_NAME
        self.plugin_version = oc.TRT_PLUGIN_VERSION
        self.plugin_namespace = oc.TRT_PLUGIN_NAMESPACE
        self.field_names = trt.PluginFieldCollection([
            trt.PluginField(oc.ATTR_SCALE, np.array([], dtype=np.float32), trt.PluginFieldType.FLOAT32)])

    def create_plugin(self, name, fc, phase):
        scale = None
        for f in fc:                       # the ONNX parser passes node attributes as fields
            if f.name == oc.ATTR_SCALE and len(np.asarray(f.data)):
                scale = float(np.asarray(f.data, dtype=np.float32).reshape(-1)[0])
        return SparseAttentionPlugin(scale)


_CREATOR = None


def register(registry=None) -> SparseAttentionCreator:
    """Register the creator once per process (under namespace "asa") and return it."""
    global _CREATOR
    registry = registry or trt.get_plugin_registry()
    if _CREATOR is None:
        _CREATOR = SparseAttentionCreator()
    if registry.get_creator(oc.TRT_PLUGIN_NAME, oc.TRT_PLUGIN_VERSION, oc.TRT_PLUGIN_NAMESPACE) is None:
        registry.register_creator(_CREATOR, oc.TRT_PLUGIN_NAMESPACE)
    return _CREATOR
