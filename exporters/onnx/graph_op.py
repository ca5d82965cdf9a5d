"""The asa.SparseAttention node in the exported graph: a torch custom op the model calls while exporting,
and its onnxscript translation (exporters/onnx/op_contract.py is the contract).

- `torch.ops.asa_onnx.sparse_attention(q, k, v, rows, scale)`: eager implementation = the torch kernel
  (kernels/torch_sparse.py), so an exported program still runs in torch; a fake implementation for tracing.
  `torch.ops.asa_onnx.sparse_attention_rope(q, k, v, rows, rope_delta, rope, scale)`: the same with the RoPE
  clamp's two optional inputs (op_contract.py), for models with ModelConfig.rope_clamp > 0.
- `TRANSLATIONS`: the custom_translation_table entries for torch.onnx.export(dynamo=True). Each translation
  emits ONE node `asa.SparseAttention` (domain "asa", version 1) per call: 4 inputs, or 6 with the clamp.
- `function_proto(rope=False)`: the node's ONNX function body (onnxscript, standard ops only: Gather, MatMul,
  Softmax, Where ...), added to the model's functions so stock onnxruntime runs the file with nothing
  registered; a registered kernel (exporters/onnx/custom_ops.py) replaces it. A model holds one form: the
  4-input body (as before the clamp existed) or, for a clamped model, the 6-input body (same name; it rotates
  the gathered keys by rope[rope_delta] before the scores).

Why the function is attached after export and not called from the translation: torch 2.13's exporter
always runs onnxscript's version converter, whose first pass inlines every model-local function, so a
function called from the translation would be dissolved into plain ops. A node of an op the exporter does
not know survives, and the function proto is then added beside it (onnxscript still writes its body).

Importing this module registers the op and installs it as kernels' export hook (kernels.EXPORT_OP): the
model's own attention (kernels.sparse_attention) calls it when torch.compiler.is_exporting().
"""
from __future__ import annotations

from typing import TypeVar, Union

import onnx
import onnxscript
import torch
from onnx.defs import OpSchema
from onnxscript.onnx_types import FLOAT, FLOAT16

import kernels
from kernels.torch_sparse import sparse_attention_torch

from . import op_contract as C

# The graph's standard opset: the function body imports the same version as the model (checker rule).
OPSET = 20
op = onnxscript.opset20

ASA_OPSET = onnxscript.values.Opset(C.DOMAIN, C.VERSION)
TFloat = TypeVar("TFloat", bound=Union[FLOAT, FLOAT16])


# ---- torch side ------------------------------------------------------------------------------------
@torch.library.custom_op("asa_onnx::sparse_attention", mutates_args=())
def sparse_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows: torch.Tensor,
                        scale: float) -> torch.Tensor:
    # q: (B, Hq, T, D); k, v: (B, Hkv, S, D); rows: (B, T, K) slots, -1 padded -> (B, Hq, T, D)
    return sparse_attention_torch(q, k, v, rows.long(), scale=scale)


@sparse_attention_op.register_fake
def _(q, k, v, rows, scale):
    return torch.empty_like(q)


@torch.library.custom_op("asa_onnx::sparse_attention_rope", mutates_args=())
def sparse_attention_rope_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows: torch.Tensor,
                             rope_delta: torch.Tensor, rope: torch.Tensor, scale: float) -> torch.Tensor:
    # as sparse_attention_op; rope_delta (B, T, K) int, rope (P, D/2, 2) float32: the RoPE clamp
    return sparse_attention_torch(q, k, v, rows.long(), scale=scale, rope_delta=rope_delta.long(), rope=rope)


@sparse_attention_rope_op.register_fake
def _(q, k, v, rows, rope_delta, rope, scale):
    return torch.empty_like(q)


def export_hook(q, k, v, keys, scale=None, rope_delta=None, rope=None):
    """What kernels.sparse_attention calls while exporting (rope_delta with rope: the RoPE clamp)."""
    scale = float(scale or C.default_scale(q.shape[-1]))
    if rope_delta is None:
        return torch.ops.asa_onnx.sparse_attention(q, k, v, keys, scale)
    return torch.ops.asa_onnx.sparse_attention_rope(q, k, v, keys, rope_delta.to(torch.int32), rope.float(),
                                                    scale)


kernels.EXPORT_OP = export_hook


# ---- ONNX side -------------------------------------------------------------------------------------
@onnxscript.script(ASA_OPSET, default_opset=op)
def SparseAttention(q: TFloat, k_cache: TFloat, v_cache: TFloat, rows: onnxscript.INT32,
                    scale: float) -> TFloat:
    """Portable body: gather each row's K planned keys, masked softmax, weighted sum (float32 inside)."""
    shape_q = op.Shape(q)                                        # [B, Hq, T, D]
    shape_k = op.Shape(k_cache)                                  # [B, Hkv, S, D]
    B = op.Slice(shape_q, [0], [1])
    Hq = op.Slice(shape_q, [1], [2])
    T = op.Slice(shape_q, [2], [3])
    D = op.Slice(shape_q, [3], [4])
    Hkv = op.Slice(shape_k, [1], [2])
    S = op.Slice(shape_k, [2], [3])
    K = op.Slice(op.Shape(rows), [2], [3])
    G = op.Div(Hq, Hkv)                                          # query heads per kv head
    r64 = op.Cast(rows, to=7)                                    # int64 (B, T, K)
    zero = op.Constant(value_int=0)
    valid = op.GreaterOrEqual(r64, zero)                         # (B, T, K)
    safe = op.Where(valid, r64, zero)
    # flat row index into (B*Hkv*S, D): ((b * Hkv + h) * S + slot)
    b_idx = op.Reshape(op.Range(op.Constant(value_int=0), op.Squeeze(B, [0]), op.Constant(value_int=1)),
                       op.Constant(value_ints=[-1, 1, 1, 1]))    # (B, 1, 1, 1)
    h_idx = op.Reshape(op.Range(op.Constant(value_int=0), op.Squeeze(Hkv, [0]), op.Constant(value_int=1)),
                       op.Constant(value_ints=[1, -1, 1, 1]))    # (1, Hkv, 1, 1)
    flat = op.Add(op.Mul(op.Add(op.Mul(b_idx, Hkv), h_idx), S), op.Unsqueeze(safe, [1]))  # (B, Hkv, T, K)
    k2 = op.Reshape(k_cache, op.Concat(op.Constant(value_ints=[-1]), D, axis=0))        # (B*Hkv*S, D)
    v2 = op.Reshape(v_cache, op.Concat(op.Constant(value_ints=[-1]), D, axis=0))
    kg = op.Cast(op.Gather(k2, flat, axis=0), to=1)              # (B, Hkv, T, K, D) float32
    vg = op.Cast(op.Gather(v2, flat, axis=0), to=1)
    # q (B, Hq, T, D) -> (B, Hkv, G, T, D) -> (B, Hkv, T, G, D)
    q5 = op.Reshape(op.Cast(q, to=1), op.Concat(B, Hkv, G, T, D, axis=0))
    q5 = op.Transpose(q5, perm=[0, 1, 3, 2, 4])
    s = op.MatMul(q5, op.Transpose(kg, perm=[0, 1, 2, 4, 3]))   # (B, Hkv, T, G, K)
    s = op.Mul(s, op.Constant(value_float=scale))
    mask = op.Unsqueeze(valid, [1, 3])                           # (B, 1, T, 1, K)
    s = op.Where(mask, s, op.Constant(value_float=float("-inf")))
    p = op.Softmax(s, axis=-1)
    o = op.MatMul(p, vg)                                         # (B, Hkv, T, G, D)
    o = op.Transpose(o, perm=[0, 1, 3, 2, 4])                    # (B, Hkv, G, T, D)
    o = op.Reshape(o, op.Concat(B, Hq, T, D, axis=0))            # (B, Hq, T, D)
    return op.CastLike(o, q)


@onnxscript.script(ASA_OPSET, default_opset=op)
def SparseAttentionRope(q: TFloat, k_cache: TFloat, v_cache: TFloat, rows: onnxscript.INT32,
                        rope_delta: onnxscript.INT32, rope: FLOAT, scale: float) -> TFloat:
    """Portable body with the RoPE clamp: SparseAttention's, each gathered key rotated by rope[rope_delta]
    (interleaved pairs, float32) before the scores. Attached under the name SparseAttention."""
    shape_q = op.Shape(q)                                        # [B, Hq, T, D]
    shape_k = op.Shape(k_cache)                                  # [B, Hkv, S, D]
    B = op.Slice(shape_q, [0], [1])
    Hq = op.Slice(shape_q, [1], [2])
    T = op.Slice(shape_q, [2], [3])
    D = op.Slice(shape_q, [3], [4])
    Hkv = op.Slice(shape_k, [1], [2])
    S = op.Slice(shape_k, [2], [3])
    K = op.Slice(op.Shape(rows), [2], [3])
    G = op.Div(Hq, Hkv)                                          # query heads per kv head
    r64 = op.Cast(rows, to=7)                                    # int64 (B, T, K)
    zero = op.Constant(value_int=0)
    one = op.Constant(value_int=1)
    valid = op.GreaterOrEqual(r64, zero)                         # (B, T, K)
    safe = op.Where(valid, r64, zero)
    b_idx = op.Reshape(op.Range(op.Constant(value_int=0), op.Squeeze(B, [0]), op.Constant(value_int=1)),
                       op.Constant(value_ints=[-1, 1, 1, 1]))    # (B, 1, 1, 1)
    h_idx = op.Reshape(op.Range(op.Constant(value_int=0), op.Squeeze(Hkv, [0]), op.Constant(value_int=1)),
                       op.Constant(value_ints=[1, -1, 1, 1]))    # (1, Hkv, 1, 1)
    flat = op.Add(op.Mul(op.Add(op.Mul(b_idx, Hkv), h_idx), S), op.Unsqueeze(safe, [1]))  # (B, Hkv, T, K)
    k2 = op.Reshape(k_cache, op.Concat(op.Constant(value_ints=[-1]), D, axis=0))        # (B*Hkv*S, D)
    v2 = op.Reshape(v_cache, op.Concat(op.Constant(value_ints=[-1]), D, axis=0))
    kg = op.Cast(op.Gather(k2, flat, axis=0), to=1)              # (B, Hkv, T, K, D) float32
    vg = op.Cast(op.Gather(v2, flat, axis=0), to=1)
    # the clamp: (x0, x1) -> (x0 cos - x1 sin, x1 cos + x0 sin), (cos, sin) = rope[delta] per entry
    cs = op.Unsqueeze(op.Gather(rope, op.Cast(rope_delta, to=7), axis=0), [1])   # (B, 1, T, K, D/2, 2)
    cos = op.Gather(cs, zero, axis=-1)                           # (B, 1, T, K, D/2)
    sin = op.Gather(cs, one, axis=-1)
    pairs = op.Reshape(kg, op.Concat(B, Hkv, T, K, op.Constant(value_ints=[-1, 2]), axis=0))  # (..., D/2, 2)
    x0 = op.Gather(pairs, zero, axis=-1)                         # (B, Hkv, T, K, D/2)
    x1 = op.Gather(pairs, one, axis=-1)
    r0 = op.Sub(op.Mul(x0, cos), op.Mul(x1, sin))
    r1 = op.Add(op.Mul(x1, cos), op.Mul(x0, sin))
    kg = op.Reshape(op.Concat(op.Unsqueeze(r0, [-1]), op.Unsqueeze(r1, [-1]), axis=-1), op.Shape(kg))
    q5 = op.Reshape(op.Cast(q, to=1), op.Concat(B, Hkv, G, T, D, axis=0))
    q5 = op.Transpose(q5, perm=[0, 1, 3, 2, 4])
    s = op.MatMul(q5, op.Transpose(kg, perm=[0, 1, 2, 4, 3]))   # (B, Hkv, T, G, K)
    s = op.Mul(s, op.Constant(value_float=scale))
    mask = op.Unsqueeze(valid, [1, 3])                           # (B, 1, T, 1, K)
    s = op.Where(mask, s, op.Constant(value_float=float("-inf")))
    p = op.Softmax(s, axis=-1)
    o = op.MatMul(p, vg)                                         # (B, Hkv, T, G, D)
    o = op.Transpose(o, perm=[0, 1, 3, 2, 4])                    # (B, Hkv, G, T, D)
    o = op.Reshape(o, op.Concat(B, Hq, T, D, axis=0))            # (B, Hq, T, D)
    return op.CastLike(o, q)


def _schema(rope: bool = False) -> OpSchema:
    # Only for the exporter's node builder (input/output names and the type constraint); never registered
    # globally: checker and shape inference read the function body.
    P = OpSchema.FormalParameter
    ins = [P("q", "T"), P("k_cache", "T"), P("v_cache", "T"), P("rows", "tensor(int32)")]
    if rope:
        opt = OpSchema.FormalParameterOption.Optional
        ins += [P("rope_delta", "tensor(int32)", param_option=opt),
                P("rope", "tensor(float)", param_option=opt)]
    return OpSchema(
        C.OP_TYPE, C.DOMAIN, C.VERSION,
        inputs=ins,
        outputs=[P("out", "T")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "q, caches and output")],
        attributes=[OpSchema.Attribute(C.ATTR_SCALE, OpSchema.AttrType.FLOAT, "softmax scale")],
    )


_NODE = onnxscript.values.Op(ASA_OPSET, C.OP_TYPE, op_schema=_schema())
_NODE_ROPE = onnxscript.values.Op(ASA_OPSET, C.OP_TYPE, op_schema=_schema(rope=True))


def _translate(q, k, v, rows, scale: float):
    return _NODE(q, k, v, rows, scale=scale)


def _translate_rope(q, k, v, rows, rope_delta, rope, scale: float):
    return _NODE_ROPE(q, k, v, rows, rope_delta, rope, scale=scale)


TRANSLATIONS = {torch.ops.asa_onnx.sparse_attention.default: _translate,
                torch.ops.asa_onnx.sparse_attention_rope.default: _translate_rope}


def function_proto(rope: bool = False) -> onnx.FunctionProto:
    """The op's function body: the plain 4-input form, or (rope) the 6-input form of the RoPE clamp."""
    f = (SparseAttentionRope if rope else SparseAttention).to_function_proto()
    f.name = C.OP_TYPE
    assert f.domain == C.DOMAIN and list(f.input) == list(C.ALL_INPUT_NAMES if rope else C.INPUT_NAMES)
    return f


__all__ = ["OPSET", "TRANSLATIONS", "SparseAttention", "SparseAttentionRope", "export_hook", "function_proto",
           "sparse_attention_op", "sparse_attention_rope_op"]
