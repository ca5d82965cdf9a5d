"""Export a checkpoint's whole decoder to ONNX (torch.onnx.export, dynamo=True) as an ONNX model folder
(exporters/onnx/folder.py).

The graph (one graph for chunked prefill and one-token decode: T, S and K are dynamic):

    inputs   input_ids  (1, T) int64        token ids
             positions  (T,) int64           token positions (RoPE computed in the graph from them)
             rows       (1, T, K) int32      plan rows, indices into [past rows ; new rows] (see below), -1 padded
             rope_delta (1, T, K) int32      only with the RoPE clamp (ModelConfig.rope_clamp = w > 0):
                                             max(0, position - key position - w) per entry, 0 on padding
                                             (kernels/torch_sparse.rope_deltas; the caller computes it)
             rope       (P, hs/2, 2) float32 only with the clamp: the RoPE cos/sin table, P > max(rope_delta)
                                             (asa_runtime.model.rope_cache(P, hs, theta))
             past_k.{l}, past_v.{l}  (1, Hkv, S, hs)   cache rows the rows may name, read-only
    outputs  logits     (1, 1, V)  (or (1, T, V) when exported with all_logits)
             new_k.{l}, new_v.{l}  (1, Hkv, T, hs)     this call's K/V rows (RoPE applied to k)

Per layer the attention sees the concatenation [past (S rows); new (T rows)] and is ONE node
asa.SparseAttention(q, concat_k, concat_v, rows) (exporters/onnx/graph_op.py). The graph writes nothing:
the caller owns the cache, writes new_k/new_v at its slots, and passes as `past` only the rows this call
reads (for a decode step: the <= K planned slots, not the whole cache), so a decode step is O(K) in the
cache size, not O(S). The caller passing the whole cache as past (rows = slots, new token t at S + t) is
also valid. Dense models (plan mode "none") take the rows 0..p0-1 as past and mask by position in the graph
(plain SDPA, no custom op); `rows` is then unused.

The RoPE clamp: each node then gets the two optional inputs of op_contract.py (rope_delta in the layer's plan
layout: a layer-dependent plan's narrow layers narrow it in the graph like their rows); the graph does not
know w, the caller's rope_delta carries it (asa_runtime/backends/onnx_backend.py computes it from the plan
rows as token positions). A model without the clamp exports exactly as before (no such inputs, 4-input nodes).

The wrapper calls the model's own modules (tok_embeddings, each Block's forward, norm, output): one forward,
no copy of the attention or MLP math; only the RoPE angles are computed here, from positions, with the
model's formula (asa_runtime.model.rope_cache).
"""
from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
import warnings
from pathlib import Path

import onnx  # noqa: F401  (imported here so `--format onnx` without the extra fails at once)
import onnxscript  # noqa: F401
import torch
import torch.nn as nn

from asa_runtime.checkpoint import ANALYZER_DIR, ARTIFACTS, CONFIG, TOKENIZER, analyzer_info, read_config

from ..common import ExportError, atomic_dir, load_model, resolve_model
from . import folder as F
from . import op_contract as C

DTYPES = {"float32": torch.float32, "float16": torch.float16}


class _PastCache:
    """Stands in for a layer's KVCache while tracing: update() returns [past; new] and keeps the new rows
    as graph outputs (the caller writes them into its own cache)."""

    def __init__(self, past_k, past_v):
        self.past_k, self.past_v = past_k, past_v      # (1, Hkv, S, hs)
        self.new = None

    def update(self, slots, k, v):
        k, v = k.to(self.past_k.dtype), v.to(self.past_v.dtype)   # (1, Hkv, T, hs)
        self.new = (k, v)
        return torch.cat([self.past_k, k], 2), torch.cat([self.past_v, v], 2)   # (1, Hkv, S + T, hs)


def rope_from_positions(positions, hs: int, theta: float):
    """(T, hs/2, 2) cos/sin at `positions`: asa_runtime.model.rope_cache's formula, in the graph."""
    freqs = 1.0 / (theta ** (torch.arange(0, hs, 2, device=positions.device).float() / hs))
    ang = positions.float()[:, None] * freqs[None, :]            # (T, hs/2)
    return torch.stack([ang.cos(), ang.sin()], -1)


def has_clamp(cfg) -> bool:
    """Whether cfg's export takes the RoPE clamp's inputs (a sparse model with rope_clamp > 0)."""
    return bool(getattr(cfg, "rope_clamp", 0)) and not cfg.plan.dense


class DecoderGraph(nn.Module):
    """The traced module: the model's modules over [past; new] caches, see the module docstring."""

    def __init__(self, model, all_logits: bool = False):
        super().__init__()
        self.model = model
        self.all_logits = all_logits
        self.dense = model.cfg.plan.dense
        self.clamp = has_clamp(model.cfg)

    def layer_clamps(self, rows, rope_delta, rope) -> list:
        """Each layer's (rope_delta, rope) in its plan's layout (Attention.forward's `clamp`), or Nones."""
        m, p = self.model, self.model.cfg.plan
        if not self.clamp:
            return [None] * len(m.layers)
        if not p.narrow_k:
            return [(rope_delta, rope)] * len(m.layers)
        # narrow_rows picks entries by the row's padding: the deltas, -1 padded like the rows, narrow alike
        from asa_runtime.model import narrow_rows

        padded = torch.where(rows >= 0, rope_delta, torch.full_like(rope_delta, -1))
        narrow = narrow_rows(padded, p.narrow_k, p.sinks).clamp_min(0)
        return [(rope_delta if i in p.wide_layers else narrow, rope) for i in range(len(m.layers))]

    def forward(self, input_ids, positions, rows, *past):
        # the name `past` stays: torch.export names the dynamic dims after it (an unclamped export as before)
        m, cfg = self.model, self.model.cfg
        rope_delta = rope = None
        if self.clamp:                                           # past = (rope_delta, rope, *caches)
            rope_delta, rope, *past = past
        caches = [_PastCache(past[2 * i], past[2 * i + 1]) for i in range(cfg.n_layer)]
        rc = rope_from_positions(positions, cfg.head_dim, cfg.rope_theta)   # (T, hs/2, 2)
        keys, mask = rows, None
        if self.dense:       # slot == position; past holds positions 0..p0-1, new rows follow
            keys = None
            S = past[0].shape[2] + input_ids.shape[1]
            mask = torch.arange(S, device=positions.device)[None, :] <= positions[:, None]   # (T, S)
        x = m.tok_embeddings(input_ids)                          # (1, T, d)
        clamps = self.layer_clamps(rows, rope_delta, rope)
        for layer, c, lk, cl in zip(m.layers, caches, m.layer_keys(keys), clamps):   # narrowing in the graph
            x = layer(x, rc, lk, None, mask, c, cl)
        if not self.all_logits:
            x = x[:, -1:]                                        # (1, 1, d)
        logits = m.output(m.norm(x)).float()                     # (1, T or 1, V)
        return (logits, *[t for c in caches for t in c.new])


ROPE_INPUTS = ("rope_delta", "rope")     # the graph inputs of the RoPE clamp (op_contract.ROPE_INPUT_NAMES)


def io_names(n_layer: int, clamp: bool = False) -> tuple[list[str], list[str]]:
    past = [f"past_{kv}.{i}" for i in range(n_layer) for kv in ("k", "v")]
    new = [f"new_{kv}.{i}" for i in range(n_layer) for kv in ("k", "v")]
    return ["input_ids", "positions", "rows", *(ROPE_INPUTS if clamp else ()), *past], ["logits", *new]


def _sample_inputs(cfg, dtype, T=3, S=5, P=7):
    Hkv, hs, K = cfg.n_kv_head, cfg.head_dim, max(cfg.plan.k, 2)
    ids = torch.zeros(1, T, dtype=torch.long)
    pos = torch.arange(S, S + T)
    rows = torch.full((1, T, K), -1, dtype=torch.int32)
    rows[0, :, 0] = torch.arange(S, S + T, dtype=torch.int32)
    past = [torch.zeros(1, Hkv, S, hs, dtype=dtype) for _ in range(2 * cfg.n_layer)]
    if has_clamp(cfg):
        from asa_runtime.model import rope_cache

        rope = (torch.zeros(1, T, K, dtype=torch.int32), rope_cache(P, hs, cfg.rope_theta))   # (P, hs/2, 2)
        return (ids, pos, rows, *rope, *past)
    return (ids, pos, rows, *past)


def build_graph(model, dtype: str = "float32", all_logits: bool = False):
    """torch.onnx.export of DecoderGraph(model): returns the onnx ModelProto with the asa.SparseAttention
    function attached (sparse models)."""
    from . import graph_op

    if dtype not in DTYPES:
        raise ExportError(f"--dtype {dtype} is not supported by the ONNX export (float32 or float16)")
    model = model.to(DTYPES[dtype]).eval()
    wrapper = DecoderGraph(model, all_logits).eval()
    args = _sample_inputs(model.cfg, DTYPES[dtype])
    ins, outs = io_names(model.cfg.n_layer, wrapper.clamp)
    D = torch.export.Dim.DYNAMIC
    rest = tuple({2: D} for _ in range(2 * model.cfg.n_layer))                       # *past
    if wrapper.clamp:
        rest = ({1: D, 2: D}, {0: D}, *rest)                                          # rope_delta, rope
    shapes = ({1: D}, {0: D}, {1: D, 2: D}, rest)
    with torch.no_grad(), _quiet():
        prog = torch.onnx.export(wrapper, args, dynamo=True, dynamic_shapes=shapes, input_names=ins,
                                 output_names=outs, opset_version=graph_op.OPSET, optimize=True,
                                 custom_translation_table=graph_op.TRANSLATIONS, verbose=False)
    proto = prog.model_proto
    if any(n.domain == C.DOMAIN for n in proto.graph.node):
        proto.functions.append(graph_op.function_proto(rope=wrapper.clamp))
    return proto


@contextlib.contextmanager
def _quiet():
    """torch.onnx's own progress lines and warnings go away (the CLI shows its own progress)."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(_Null()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


class _Null:
    def write(self, s):
        return len(s)

    def flush(self):
        pass


def check_graph(proto_or_path) -> None:
    """onnx.checker (full check, which includes strict shape inference); raises on failure."""
    import onnx

    onnx.checker.check_model(str(proto_or_path) if isinstance(proto_or_path, Path) else proto_or_path,
                             full_check=True)


def export(model_path, out, *, dtype: str | None = None, progress: bool = True,
           all_logits: bool = False) -> Path:
    """Export the checkpoint at model_path (registry name or folder) into the ONNX folder `out`."""
    import onnx

    from .graph_op import OPSET

    dtype = dtype or "float32"
    if dtype not in DTYPES:
        raise ExportError(f"--dtype {dtype} is not supported by the ONNX export (float32 or float16)")
    path = resolve_model(model_path)
    steps = ["load checkpoint", "trace + translate", "write", "check"]
    bar = _Progress(steps, progress)
    ck = load_model(path)                                  # CheckpointError (one line) if bad
    _, raw = read_config(path)
    cfg = ck.config
    bar.next()
    t0 = time.perf_counter()
    try:
        proto = build_graph(ck.model, dtype, all_logits)
    except ExportError:
        raise
    except Exception as e:     # the exporter's own failures are long; keep the first line
        raise ExportError(f"ONNX export of {path.name} failed: {' '.join(str(e).split())[:300]}") from None
    trace_s = time.perf_counter() - t0
    bar.next()
    with atomic_dir(out) as tmp:
        onnx.save_model(proto, str(tmp / F.GRAPH), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=F.GRAPH_DATA, size_threshold=1024)
        del proto
        bar.next()
        try:
            check_graph(tmp / F.GRAPH)      # by path: works past protobuf's 2 GiB limit too
        except Exception as e:              # onnx's ValidationError / InferenceError
            raise ExportError(f"the exported graph fails onnx.checker: {' '.join(str(e).split())[:300]}") \
                from None
        shutil.copyfile(path / TOKENIZER, tmp / TOKENIZER)
        src_an = path / ANALYZER_DIR
        an_files = sorted(src_an.iterdir()) if src_an.is_dir() and any(src_an.iterdir()) else \
            sorted(p for p in ARTIFACTS.glob("*") if p.is_file())
        (tmp / ANALYZER_DIR).mkdir()
        for p in an_files:
            if p.is_file():
                shutil.copyfile(p, tmp / ANALYZER_DIR / p.name)
        clamp = has_clamp(cfg)
        ins, outs = io_names(cfg.n_layer, clamp)
        config = {
            "format": F.FORMAT,
            "model": cfg.to_dict(),
            "plan": cfg.plan.to_dict(),
            "dtype": dtype,
            "graph": {"file": F.GRAPH, "opset": OPSET,
                      "ops": {} if cfg.plan.dense else {f"{C.DOMAIN}.{C.OP_TYPE}": C.VERSION},
                      "inputs": ins, "outputs": outs, "all_logits": all_logits,
                      "layout": "rows index [past ; new]; outputs are the new K/V rows only "
                                "(exporters/onnx/export.py)",
                      **({"rope_clamp": cfg.rope_clamp} if clamp else {})},
            "source": F.source_hashes(path),
            "source_name": path.name,
            "tokenizer": {**(raw.get("tokenizer") or {}), "file": TOKENIZER},
            "analyzer": raw.get("analyzer") or analyzer_info(),
            "export_seconds": round(trace_s, 1),
            "files": F.file_hashes(tmp),
        }
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        bar.next()
    bar.close()
    return Path(out)


class _Progress:
    """One tqdm bar over the export's stages (the dynamo trace is one opaque call)."""

    def __init__(self, steps, enabled):
        self.steps, self.i, self.bar = steps, 0, None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=len(steps), desc=f"onnx: {steps[0]}", unit="step", leave=False,
                            dynamic_ncols=True)

    def next(self):
        self.i += 1
        if self.bar is not None:
            self.bar.update(1)
            if self.i < len(self.steps):
                self.bar.set_description(f"onnx: {self.steps[self.i]}")

    def close(self):
        if self.bar is not None:
            self.bar.close()


__all__ = ["ROPE_INPUTS", "DecoderGraph", "build_graph", "check_graph", "export", "has_clamp", "io_names",
           "rope_from_positions"]
