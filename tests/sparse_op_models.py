"""One-node ONNX models of asa.SparseAttention and random inputs obeying its contract, shared by the ONNX
Runtime kernel tests and the TensorRT plugin tests."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from exporters.onnx import op_contract as oc

ELEM = {np.float32: TensorProto.FLOAT, np.float16: TensorProto.FLOAT16}
SYMBOLIC = (["B", "Hq", "T", "D"], ["B", "Hkv", "S", "D"], ["B", "Hkv", "S", "D"], ["B", "T", "K"])
SYMBOLIC_ROPE = SYMBOLIC + (["B", "T", "K"], ["P", "Dh", 2])     # + rope_delta, rope (the RoPE clamp)


def one_node_model(dtype=np.float32, scale=None, body=None, shapes=None, rows_type=TensorProto.INT32,
                   rope: bool = False) -> bytes:
    """A graph holding only the op. body: None (no function) or nodes of a model-local function.
    shapes: per input (q, k_cache, v_cache, rows[, rope_delta, rope]), dim names or sizes; the output takes
    q's. rope: the 6-input form of the RoPE clamp (op_contract.py)."""
    et = ELEM[dtype]
    names = list(oc.ALL_INPUT_NAMES if rope else oc.INPUT_NAMES)
    shapes = shapes or (SYMBOLIC_ROPE if rope else SYMBOLIC)
    attrs = {} if scale is None else {oc.ATTR_SCALE: float(scale)}
    node = helper.make_node(oc.OP_TYPE, names, list(oc.OUTPUT_NAMES), domain=oc.DOMAIN, **attrs)
    types = (et, et, et, rows_type, TensorProto.INT32, TensorProto.FLOAT)
    inputs = [helper.make_tensor_value_info(n, t, list(s)) for n, t, s in zip(names, types, shapes)]
    outputs = [helper.make_tensor_value_info(oc.OUTPUT_NAMES[0], et, list(shapes[0]))]
    graph = helper.make_graph([node], "sparse_attention_only", inputs, outputs)
    functions = []
    if body is not None:
        functions = [helper.make_function(oc.DOMAIN, oc.OP_TYPE, names, list(oc.OUTPUT_NAMES),
                                          body, opset_imports=[helper.make_opsetid("", 18)],
                                          attributes=[oc.ATTR_SCALE])]
    model = helper.make_model(graph, functions=functions, opset_imports=[
        helper.make_opsetid("", 18), helper.make_opsetid(oc.DOMAIN, oc.VERSION)])
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def ragged_rows(rng, B, T, K, S, offset):
    """(B, T, K) int32: ascending distinct causal slots (query t sits at slot offset + t), -1 padded, 1..K
    valid per row; row 0 of batch 0 holds exactly one key, the last row of the last batch the full K."""
    rows = np.full((B, T, K), -1, dtype=np.int32)
    for b in range(B):
        for t in range(T):
            pos = offset + t
            n = int(rng.integers(1, min(K, pos + 1) + 1))
            if (b, t) == (0, 0):
                n = 1
            if (b, t) == (B - 1, T - 1):
                n = min(K, pos + 1)
            picked = rng.choice(pos, size=n - 1, replace=False) if n > 1 else np.array([], dtype=np.int64)
            rows[b, t, :n] = np.sort(np.concatenate([picked, [pos]]))
    return rows


def rope_table(P, D, theta=10000.0):
    """(P, D/2, 2) float32: the model's RoPE table (asa_runtime.model.rope_cache)."""
    from asa_runtime.model import rope_cache

    return rope_cache(P, D, theta).numpy()


def inputs(seed, B, Hq, Hkv, T, S, D, K, dtype, rope: int = 0):
    """Feeds by input name: standard-normal q/k/v in dtype, ragged causal rows (queries at the cache's end).
    rope = w > 0: also the RoPE clamp's rope_delta (the rows taken as token positions, clamped at distance w)
    and a table just long enough for them."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, Hq, T, D)).astype(dtype)
    k = rng.standard_normal((B, Hkv, S, D)).astype(dtype)
    v = rng.standard_normal((B, Hkv, S, D)).astype(dtype)
    f = dict(q=q, k_cache=k, v_cache=v, rows=ragged_rows(rng, B, T, K, S, offset=S - T))
    if rope:
        qpos = np.arange(S - T, S)[None, :, None]                       # query t sits at slot S - T + t
        d = np.where(f["rows"] >= 0, np.maximum(qpos - f["rows"] - rope, 0), 0).astype(np.int32)
        f["rope_delta"], f["rope"] = d, rope_table(int(d.max()) + 1, D)
    return f
