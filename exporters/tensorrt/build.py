"""Build a TensorRT-RTX engine from an exported ONNX graph, its asa.SparseAttention nodes as plugin layers.

    from exporters.tensorrt.build import build_engine
    res = build_engine("model.onnx", dims={"T": (1, 1, 512), "S": (1, 2048, 32768)})
    Path("model.engine").write_bytes(res.engine)   # or write_engine(res.engine, path): atomic

    # an exported decoder (exporters/onnx/export.py's graph), profile from its I/O names:
    python -m exporters.tensorrt.build ONNX_FOLDER_OR_FILE --out model.engine [--max-tokens 512 --max-past 32768]

Building works on a machine without any GPU (TensorRT-RTX compiles kernels when the engine first runs).
Running an engine is UNTESTED: TensorRT-RTX runs only on compute capability 8.0, 8.6, 8.9 and 12.x GPUs,
and none was available to this project (its H200 is 9.0). A process that loads an engine must call
exporters.tensorrt.plugin.register() first (the plugin is Python; the engine stores only its fields).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import onnx

from exporters.onnx import op_contract as oc

from . import plugin


class EngineBuildError(RuntimeError):
    """The ONNX graph could not be parsed or built into an engine; the message is one line."""


@dataclass
class BuildResult:
    engine: bytes                                    # the serialized engine
    plugin_layers: int                               # asa.SparseAttention nodes mapped to the plugin
    outputs: dict[str, tuple[tuple[int, ...], str]]  # network output name -> (dims, TensorRT dtype name)


def strip_op_function(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy without the op's ONNX function body: TensorRT's parser inlines a model-local function in
    preference to a plugin, so the body must go for the node to reach the plugin (found via its domain)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    keep = [f for f in out.functions if (f.domain, f.name) != (oc.DOMAIN, oc.OP_TYPE)]
    del out.functions[:]
    out.functions.extend(keep)
    return out


def _input_ranges(model: onnx.ModelProto, shapes, dims):
    """{input: (min, opt, max)} for every graph input with a symbolic dim; a dim without a range is an error."""
    inits = {i.name for i in model.graph.initializer}
    ranges = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        if shapes and vi.name in shapes:
            ranges[vi.name] = tuple(tuple(int(x) for x in s) for s in shapes[vi.name])
            continue
        lo, opt, hi, dynamic = [], [], [], False
        for i, d in enumerate(vi.type.tensor_type.shape.dim):
            if d.HasField("dim_value"):
                for lst in (lo, opt, hi):
                    lst.append(d.dim_value)
                continue
            dynamic = True
            if not d.dim_param or d.dim_param not in (dims or {}):
                raise EngineBuildError(f"input {vi.name!r} dim {i} ({d.dim_param or 'unnamed'}) has no range: "
                                       f"pass dims={{{d.dim_param or '?'!r}: (min, opt, max)}} or shapes=")
            a, b, c = dims[d.dim_param]
            lo.append(a), opt.append(b), hi.append(c)
        if dynamic:
            ranges[vi.name] = (tuple(lo), tuple(opt), tuple(hi))
    return ranges


def decoder_shapes(model: onnx.ModelProto, T=(1, 1, 512), S=(1, 2048, 32768), K=(1, 64, 256), P=None) -> dict:
    """{input: (min, opt, max)} for the exported decoder graph (exporters/onnx/export.py's I/O:
    input_ids (1, T), positions (T,), rows (1, T, K), past_k.l / past_v.l (1, Hkv, S, hs), and with the RoPE
    clamp rope_delta (1, T, K) and rope (P, hs/2, 2), P = the largest delta + 1, default the range of S);
    static dims keep their size, dynamic ones take the range of their role."""
    roles = {"input_ids": (None, T), "positions": (T,), "rows": (None, T, K), "rope_delta": (None, T, K),
             "rope": (P or S, None, None)}
    shapes = {}
    for vi in model.graph.input:
        role = roles.get(vi.name) or ((None, None, S, None) if vi.name.startswith(("past_k.", "past_v.")) else None)
        if role is None:
            continue
        dims = list(vi.type.tensor_type.shape.dim)
        if len(dims) != len(role):
            raise EngineBuildError(f"input {vi.name!r} has rank {len(dims)}, expected {len(role)} for an exported decoder")
        lo, opt, hi = [], [], []
        for d, r in zip(dims, role):
            if d.HasField("dim_value"):
                r = (d.dim_value,) * 3
            elif r is None:
                r = (1, 1, 1)                             # a batch dim left dynamic: one sequence
            lo.append(r[0]), opt.append(r[1]), hi.append(r[2])
        shapes[vi.name] = (tuple(lo), tuple(opt), tuple(hi))
    return shapes


def build_engine(model, shapes=None, dims=None, verbose: bool = False) -> BuildResult:
    """model: a path to an .onnx file (external data next to it is fine), bytes or an onnx.ModelProto.
    shapes: {input: (min, opt, max)} shapes; dims: {dim_param: (min, opt, max)} for the rest."""
    trt = plugin.trt
    path = None
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.is_file():
            raise EngineBuildError(f"no ONNX file at {path}")
        proto = onnx.load(str(path), load_external_data=False)     # weights stay on disk for the parser
    elif isinstance(model, bytes):
        proto = onnx.load_from_string(model)
    else:
        proto = model
    proto = strip_op_function(proto)
    plugin.register()
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse(proto.SerializeToString(), str(path) if path else None)
    if not ok:
        errs = [parser.get_error(i).desc() for i in range(parser.num_errors)]
        raise EngineBuildError("TensorRT could not parse the ONNX graph: " + (errs[0] if errs else "no reason given"))
    n_plugin = sum(network.get_layer(i).type == trt.LayerType.PLUGIN_V3 for i in range(network.num_layers))
    outputs = {}
    for i in range(network.num_outputs):
        t = network.get_output(i)
        outputs[t.name] = (tuple(t.shape), t.dtype.name)
    config = builder.create_builder_config()
    ranges = _input_ranges(proto, shapes, dims)
    if ranges:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in ranges.items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
    del plugin.config_errors[:]
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        why = plugin.config_errors[-1] if plugin.config_errors else "run with verbose=True for its log"
        raise EngineBuildError(f"TensorRT could not build the engine: {why}")
    return BuildResult(bytes(memoryview(engine)), n_plugin, outputs)


def write_engine(engine: bytes, path) -> Path:
    """Write atomically (tmp + os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(engine)
    os.replace(tmp, path)
    return path


def main(argv=None) -> int:
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m exporters.tensorrt.build",
                                 description="Build a TensorRT-RTX engine from an exported ONNX decoder (folder or .onnx). "
                                             "Running the engine is untested (see docs/export.md).")
    ap.add_argument("onnx", help="an ONNX folder from `asa-run export --format onnx`, or its model.onnx")
    ap.add_argument("--out", required=True, help="engine file to write (atomically)")
    ap.add_argument("--max-tokens", type=int, default=512, help="largest prefill chunk T")
    ap.add_argument("--max-past", type=int, default=32768, help="largest number of past cache rows S")
    ap.add_argument("--max-k", type=int, default=256, help="largest plan row width K")
    ap.add_argument("--max-position", type=int, default=None,
                    help="largest token position (bounds the table of a model with the RoPE clamp; "
                         "default --max-past)")
    a = ap.parse_args(argv)
    src = Path(a.onnx)
    src = src / "model.onnx" if src.is_dir() else src
    try:
        proto = onnx.load(str(src), load_external_data=False) if src.is_file() else None
        if proto is None:
            raise EngineBuildError(f"no ONNX file at {src}")
        pmax = a.max_position or a.max_past
        shapes = decoder_shapes(proto, T=(1, 1, a.max_tokens), S=(1, min(2048, a.max_past), a.max_past),
                                K=(1, min(64, a.max_k), a.max_k), P=(1, min(2048, pmax), pmax))
        res = build_engine(src, shapes=shapes)
        write_engine(res.engine, a.out)
    except Exception as e:     # EngineBuildError, OSError, onnx's DecodeError ...: one line, never a traceback
        print(f"Error: {' '.join(str(e).split())[:400]}", file=sys.stderr)
        return 1
    print(f"wrote {a.out} ({len(res.engine) / 2**20:.1f} MiB, {res.plugin_layers} asa.SparseAttention plugin layers)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
