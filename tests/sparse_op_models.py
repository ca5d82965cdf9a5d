"""One-node ONNX models of asa.SparseAttention and random inputs obeying its contract, shared by the ONNX
Runtime kernel tests and the TensorRT plugin tests."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from exporters.onnx import op_contract as oc

ELEM = {np.float32: TensorProto.FLOAT, np.float16: TensorProto.FLOAT16}
SYMBOLIC = (["B", "Hq", "T", "D"], ["B", "Hkv", "S", "D"], ["B", "Hkv", "S", "D"], ["B", "T", "K"])


def one_node_model(dtype=np.float32, scale=None, body=None, shapes=SYMBOLIC, rows_type=TensorProto.INT32) -> bytes:
    """A graph holding only the op. body: None (no function) or nodes of a model-local function.
    shapes: per input (q, k_cache, v_cache, rows), dim names or sizes; the output takes q's."""
    et = ELEM[dtype]
    attrs = {} if scale is None else {oc.ATTR_SCALE: float(scale)}
    node = helper.make_node(oc.OP_TYPE, list(oc.INPUT_NAMES), list(oc.OUTPUT_NAMES), domain=oc.DOMAIN, **attrs)
    types = (et, et, et, rows_type)
    inputs = [helper.make_tensor_value_info(n, t, list(s)) for n, t, s in zip(oc.INPUT_NAMES, types, shapes)]
    outputs = [helper.make_tensor_value_info(oc.OUTPUT_NAMES[0], et, list(shapes[0]))]
    graph = helper.make_graph([node], "sparse_attention_only", inputs, outputs)
    functions = []
    if body is not None:
        functions = [helper.make_function(oc.DOMAIN, oc.OP_TYPE, list(oc.INPUT_NAMES), list(oc.OUTPUT_NAMES),
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


def inputs(seed, B, Hq, Hkv, T, S, D, K, dtype):
    """Feeds by input name: standard-normal q/k/v in dtype, ragged causal rows (queries at the cache's end)."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, Hq, T, D)).astype(dtype)
    k = rng.standard_normal((B, Hkv, S, D)).astype(dtype)
    v = rng.standard_normal((B, Hkv, S, D)).astype(dtype)
    return dict(q=q, k_cache=k, v_cache=v, rows=ragged_rows(rng, B, T, K, S, offset=S - T))
