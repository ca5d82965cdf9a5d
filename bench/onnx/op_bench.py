"""asa.SparseAttention alone in ONNX Runtime: the C++ kernel (exporters/onnx/csrc) vs the same op computed by
standard ONNX ops (a function body), on one-node models, same inputs, same process, outputs compared.

    python bench/onnx/op_bench.py [--repeats 50] [--out bench/onnx/results/op_bench.md]

The body: the exporter's own function body when exporters/onnx provides one (graph_op.function_proto()), else
STANDARD_BODY below (gather the planned K/V rows of the flattened cache with Gather -- O(T*K*D) like the
kernel, never O(S) -- then batched MatMul, masked Softmax, MatMul), written with onnxscript.
Shapes: Hq = Hkv = 6, D = 64, K = 64, B = 1; decode T = 1 at S = 512, 8k, 32k; prefill chunks T = 512 at
S = 512 and at S = 8k. Plans: kernels.synthetic_plans.asa_like (window, sinks, sentence, long-range keys).
Timing: median wall time of `repeats` runs after warm-up, inputs bound once as OrtValues (no copies).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402
from onnxscript import FLOAT, INT32, script  # noqa: E402
from onnxscript import opset18 as op  # noqa: E402
from onnxscript.values import Opset  # noqa: E402

from exporters.onnx import custom_ops, op_contract as oc  # noqa: E402
from kernels.synthetic_plans import asa_like  # noqa: E402

asa = Opset(oc.DOMAIN, oc.VERSION)


@script(asa, default_opset=op)
def STANDARD_BODY(q: FLOAT, k_cache: FLOAT, v_cache: FLOAT, rows: INT32, scale: float) -> FLOAT:
    qs = op.Shape(q)                                             # (B, Hq, T, D)
    ks = op.Shape(k_cache)                                       # (B, Hkv, S, D)
    B, Hq, T, D = op.Slice(qs, [0], [1]), op.Slice(qs, [1], [2]), op.Slice(qs, [2], [3]), op.Slice(qs, [3], [4])
    Hkv = op.Slice(ks, [1], [2])
    K = op.Slice(op.Shape(rows), [2], [3])
    g = op.Div(Hq, Hkv)
    zero = op.CastLike(0, rows)
    valid = op.GreaterOrEqual(rows, zero)                      # (B, T, K)
    safe = op.Cast(op.Where(valid, rows, zero), to=7)          # int64 slots, padding -> slot 0 (masked)
    S = op.Slice(ks, [2], [3])
    BH = op.Mul(B, Hkv)
    base = op.Reshape(op.Mul(op.Range(op.Constant(value_int=0), op.Squeeze(BH), op.Constant(value_int=1)), S),
                      op.Concat(B, Hkv, [1], [1], axis=0))      # (B, Hkv, 1, 1): first row of each head
    idx = op.Add(base, op.Unsqueeze(safe, [1]))                 # (B, Hkv, T, K) rows of the flat cache
    kg = op.Gather(op.Reshape(k_cache, op.Concat([-1], D, axis=0)), idx, axis=0)   # (B, Hkv, T, K, D)
    vg = op.Gather(op.Reshape(v_cache, op.Concat([-1], D, axis=0)), idx, axis=0)
    qg = op.Transpose(op.Reshape(q, op.Concat(B, Hkv, g, T, D, axis=0)), perm=[0, 1, 3, 2, 4])  # (B,Hkv,T,g,D)
    s = op.Mul(op.MatMul(qg, op.Transpose(kg, perm=[0, 1, 2, 4, 3])), op.CastLike(scale, q))   # (B,Hkv,T,g,K)
    mask = op.Unsqueeze(op.Unsqueeze(valid, [1]), [3])          # (B, 1, T, 1, K)
    s = op.Where(mask, s, op.CastLike(op.Constant(value_float=float("-inf")), q))
    o = op.MatMul(op.Softmax(s, axis=-1), vg)                  # (B, Hkv, T, g, D)
    return op.Reshape(op.Transpose(o, perm=[0, 1, 3, 2, 4]), qs)


def body_function():
    """(FunctionProto, its standard opset, where it came from): the exporter's body (what an exported model
    carries) when exporters/onnx/graph_op.py provides it, else STANDARD_BODY."""
    try:
        from exporters.onnx import graph_op

        return graph_op.function_proto(), graph_op.OPSET, "exporters/onnx/graph_op.py function_proto() (the export's body)"
    except (ImportError, AttributeError):
        fn = STANDARD_BODY.to_function_proto()
        fn.name = oc.OP_TYPE                                     # the node's op type, in domain asa
        return fn, 18, "bench/onnx/op_bench.py STANDARD_BODY (onnxscript)"


def model(with_body: bool, scale: float) -> bytes:
    node = helper.make_node(oc.OP_TYPE, list(oc.INPUT_NAMES), list(oc.OUTPUT_NAMES), domain=oc.DOMAIN, scale=scale)
    dims = (["B", "Hq", "T", "D"], ["B", "Hkv", "S", "D"], ["B", "Hkv", "S", "D"], ["B", "T", "K"])
    types = (TensorProto.FLOAT,) * 3 + (TensorProto.INT32,)
    ins = [helper.make_tensor_value_info(n, t, d) for n, t, d in zip(oc.INPUT_NAMES, types, dims)]
    outs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, dims[0])]
    fn, opset, _ = body_function()
    m = helper.make_model(helper.make_graph([node], "op", ins, outs), functions=[fn] if with_body else [],
                          opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(oc.DOMAIN, oc.VERSION)])
    onnx.checker.check_model(m, full_check=True)
    return m.SerializeToString()


def session(m: bytes, kernel: bool, threads: int):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    if kernel:
        custom_ops.register(so)
    return ort.InferenceSession(m, so, providers=["CPUExecutionProvider"])


def timed(sess, feeds, repeats):
    binding = sess.io_binding()
    for n, a in feeds.items():
        binding.bind_ortvalue_input(n, ort.OrtValue.ortvalue_from_numpy(a))
    binding.bind_output("out")
    for _ in range(3):
        sess.run_with_iobinding(binding)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sess.run_with_iobinding(binding)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), min(ts), binding.copy_outputs_to_cpu()[0]


def case_inputs(T, S, H=6, D=64, K=64, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((1, H, T, D)).astype(np.float32)
    k = rng.standard_normal((1, H, S, D)).astype(np.float32)
    v = rng.standard_normal((1, H, S, D)).astype(np.float32)
    rows = asa_like(T, K, seed=seed, offset=S - T, nk=S)[None]     # (1, T, K): queries at the cache's end
    return dict(q=q, k_cache=k, v_cache=v, rows=np.ascontiguousarray(rows, dtype=np.int32))


CASES = [("decode", 1, 512), ("decode", 1, 8192), ("decode", 1, 32768), ("prefill", 512, 512),
         ("prefill", 512, 8192)]


def machine() -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    return f"{cpu}, {os.cpu_count()} logical cores, {platform.system()} {platform.machine()}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: its default)")
    ap.add_argument("--out", default=str(ROOT / "bench/onnx/results/op_bench.md"))
    ap.add_argument("--note", default="", help="a line about the machine's load, written into the results")
    a = ap.parse_args(argv)
    scale = oc.default_scale(64)
    kern = session(model(False, scale), kernel=True, threads=a.threads)
    body = session(model(True, scale), kernel=False, threads=a.threads)
    rows = []
    load0 = os.getloadavg()[0]
    for kind, T, S in CASES:
        f = case_inputs(T, S)
        tk, mk, ok = timed(kern, f, a.repeats)
        tb, mb, ob = timed(body, f, a.repeats)
        ref = oc.reference(f["q"], f["k_cache"], f["v_cache"], f["rows"], scale)
        err_k, err_b = float(np.abs(ok - ref).max()), float(np.abs(ob - ref).max())
        flops = 4 * 6 * T * 64 * int((f["rows"] >= 0).sum(-1).mean())      # QK^T and PV, over valid keys
        rows.append((kind, T, S, tk, tb, mk, mb, err_k, err_b, flops))
        print(f"{kind:8s} T={T:4d} S={S:6d}  kernel {tk * 1e6:9.1f} us  body {tb * 1e6:9.1f} us  "
              f"x{tb / tk:5.1f}  max|err| {err_k:.1e} / {err_b:.1e}", flush=True)
    lines = [
        "# asa.SparseAttention in ONNX Runtime: C++ kernel vs standard-op function body",
        "",
        f"Machine: {machine()} -- a shared 2-core development machine: other people's jobs ran beside this "
        f"one (1-minute load average {load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end), so wall "
        "times are inflated and noisy; the min column is the least disturbed run. " + a.note,
        f"onnxruntime {ort.__version__}, intra-op threads: {a.threads or 'default'}; "
        f"body: {body_function()[2]}.",
        "Shapes B=1, Hq=Hkv=6, D=64, K=64 (synthetic ASA-like plan rows); float32; median of "
        f"{a.repeats} runs after warm-up; `python bench/onnx/op_bench.py`.",
        "",
        "| case | T | S (cache) | kernel median (us) | body median (us) | body / kernel | kernel min (us) | body min (us) | kernel GFLOP/s (min) | max abs err kernel / body |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, T, S, tk, tb, mk, mb, ek, eb, fl in rows:
        lines.append(f"| {kind} | {T} | {S} | {tk * 1e6:.1f} | {tb * 1e6:.1f} | {tb / tk:.1f}x | {mk * 1e6:.1f} | "
                     f"{mb * 1e6:.1f} | {fl / mk / 1e9:.2f} | {ek:.1e} / {eb:.1e} |")
    lines += ["", "Errors are against the float64 numpy reference (exporters/onnx/op_contract.py)."]
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
