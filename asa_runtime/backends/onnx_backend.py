"""The ONNX Runtime backend: runs the exported decoder graph (exporters/onnx/export.py) on the CPU.

    OnnxBackend(model, device="cpu", kv_dtype=None, source=<checkpoint folder or ONNX folder>)

- source is an ONNX export folder (config format "asa-onnx/1"): used as it is, after checking the sha256 of
  its files against its config.json (a mismatch is a one-line BackendError).
- source is a checkpoint folder: the export lives in the user cache (exporters/onnx/folder.cache_dir, keyed
  by the checkpoint's hashes); the first use exports it there (atomically, with a progress bar), later uses
  reuse it after checking that its recorded source hashes are the checkpoint's.

Cache layout and why a decode step is O(K), not O(S): the cache is numpy, per layer k, v (1, Hkv, S, hs).
The graph never sees the whole cache: for each call the backend gathers only the slots the plan rows
name (past, U <= T*K rows), remaps the rows to indices into [past ; new], and after the call writes the
graph's new K/V rows at their slots. A decode step therefore moves O(K) rows per layer whatever the
context length (the dense baseline passes positions 0..p0-1: dense attention is O(S) anyway).

The RoPE clamp (ModelConfig.rope_clamp = w > 0): the export then takes rope_delta (1, T, K) and the RoPE table
(exporters/onnx/export.py); the backend computes the deltas from the plan rows as token positions (plan_pos,
which sessions hand over for such models) and passes the model's own table (asa_runtime.model.rope_cache, grown
by doubling like Transformer.rope_table, sliced to the rows the call needs: no copy).

Kernel vs portable body: ASA_ORT_KERNEL=1 registers the asa.SparseAttention C++ kernel
(exporters/onnx/custom_ops.py; an error if it cannot be built), =0 runs the op's ONNX function body, unset:
the kernel when it builds here, else the body. ASA_ORT_THREADS sets onnxruntime's intra-op threads
(default: torch's thread count).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from ..cache_state import state_rows
from ..errors import BackendError, one_line

_NP = {torch.float32: np.float32, torch.float16: np.float16}


class OnnxCache:
    """One sequence's cache: numpy arrays k[l], v[l] of shape (1, Hkv, S, hs) (the Cache protocol)."""

    def __init__(self, n_layer: int, n_kv_head: int, hs: int, n_slots: int, dtype=np.float32):
        shape = (1, n_kv_head, n_slots, hs)
        self.k = [np.zeros(shape, dtype) for _ in range(n_layer)]
        self.v = [np.zeros(shape, dtype) for _ in range(n_layer)]
        self.n_slots = n_slots
        self.lut = np.full(n_slots, -1, dtype=np.int32)      # slot -> index in [past ; new], reset after use

    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.k + self.v)

    def move_slots(self, src: np.ndarray, dst: np.ndarray) -> None:
        src, dst = np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64)
        for a in self.k + self.v:
            a[:, :, dst] = a[:, :, src]                       # fancy indexing copies src first: overlap is safe

    def state(self, n: int) -> dict[str, torch.Tensor]:
        out = {}
        for i, (k, v) in enumerate(zip(self.k, self.v)):
            out[f"layers.{i}.k"] = torch.from_numpy(k[0, :, :n].copy())
            out[f"layers.{i}.v"] = torch.from_numpy(v[0, :, :n].copy())
        return out

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        for k, v, (tk, tv) in zip(self.k, self.v, state_rows(tensors, len(self.k), self.k[0].shape)):
            n = tk.shape[1]
            k[0, :, :n] = tk.to(torch.float32).numpy().astype(k.dtype, copy=False)
            v[0, :, :n] = tv.to(torch.float32).numpy().astype(v.dtype, copy=False)


def _kernel_choice() -> str | None:
    v = os.environ.get("ASA_ORT_KERNEL", "").strip()
    if v in ("", "auto"):
        return None
    if v not in ("0", "1"):
        raise BackendError(f"ASA_ORT_KERNEL must be 0 (function body), 1 (kernel) or unset, got {v!r}")
    return v


def ensure_export(source: Path, dtype: str = "float32", progress: bool = True) -> Path:
    """The cached ONNX folder of checkpoint `source` (exported now if missing). BackendError if bad."""
    from exporters.common import ExportError
    from exporters.onnx import folder as F
    from exporters.onnx.export import export

    out = F.cache_dir(source, dtype)
    if out.is_dir():
        try:
            F.read_folder(out, source=source)
        except F.OnnxFolderError as e:
            raise BackendError(f"cached ONNX export unusable ({one_line(e)}); delete {out} to export again") \
                from None
        return out
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BackendError(f"cannot create the ONNX cache folder {out.parent}: {e.strerror or one_line(e)} "
                           f"(set ASA_CACHE_DIR)") from None
    if progress:
        print(f"exporting {source.name} to ONNX (first use) into {out}", file=sys.stderr)
    try:
        export(source, out, dtype=dtype, progress=progress)
    except ExportError as e:
        raise BackendError(one_line(e)) from None
    return out


class OnnxBackend:
    name = "onnx"

    def __init__(self, model=None, device="cpu", kv_dtype=None, source=None, progress: bool = True):
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendError("backend 'onnx' needs onnxruntime; install: pip install 'asa-runtime[onnx]'") \
                from None
        from exporters.onnx import folder as F

        if str(device).split(":")[0] != "cpu":
            raise BackendError(f"backend 'onnx' runs on the CPU here (device {device!r} asked); "
                               f"use --backend torch for {device}")
        if kv_dtype not in (None, torch.float32, torch.float16):
            raise BackendError(f"backend 'onnx' keeps the cache in float32 or float16, not {kv_dtype}")
        dtype = "float16" if kv_dtype == torch.float16 else "float32"
        if source is None:
            raise BackendError("backend 'onnx' needs a model folder (an in-memory model has no export)")
        source = Path(source)
        if F.is_onnx_folder(source):
            folder = source
        else:
            folder = ensure_export(source, dtype, progress)
        try:
            raw = F.read_folder(folder)
        except F.OnnxFolderError as e:
            raise BackendError(one_line(e)) from None
        from ..config import ModelConfig

        self.folder, self.raw = folder, raw
        self.cfg = ModelConfig.from_dict(raw["model"])
        self.vocab_size = self.cfg.vocab_size
        self.dense = self.cfg.plan.dense
        self.all_logits_graph = bool(raw["graph"].get("all_logits"))
        self.np_dtype = np.float16 if raw.get("dtype") == "float16" else np.float32

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(os.environ.get("ASA_ORT_THREADS") or torch.get_num_threads())
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.kernel, self.kernel_note = False, "function body"
        choice = _kernel_choice()
        if not self.dense and choice != "0":
            from exporters.onnx import custom_ops

            try:
                custom_ops.register(opts)
                self.kernel, self.kernel_note = True, "kernel"
            except custom_ops.KernelBuildError as e:
                if choice == "1":
                    raise BackendError(f"ASA_ORT_KERNEL=1 but {one_line(e)}") from None
                self.kernel_note = f"function body ({one_line(e)})"
        try:
            self.sess = ort.InferenceSession(str(folder / raw["graph"]["file"]), opts,
                                             providers=["CPUExecutionProvider"])
        except Exception as e:   # onnxruntime's own exception types
            raise BackendError(f"onnxruntime cannot load {folder}: {one_line(e)[:300]}") from None
        self.in_names = [i.name for i in self.sess.get_inputs()]
        self.out_names = [o.name for o in self.sess.get_outputs()]
        # the RoPE clamp: w, the graph's two extra inputs, and the table they index (grown on demand)
        self.rope_clamp = 0 if self.dense else int(getattr(self.cfg, "rope_clamp", 0) or 0)
        has_inputs = {"rope_delta", "rope"} <= set(self.in_names)
        if bool(self.rope_clamp) != has_inputs:
            raise BackendError(f"{folder}: the graph {'lacks' if self.rope_clamp else 'has'} the RoPE clamp's "
                               f"inputs but its config has rope_clamp={self.rope_clamp}; export it again")
        self._rope = np.zeros((0, self.cfg.head_dim // 2, 2), np.float32)

    # ---- caches ----------------------------------------------------------------------------------
    def make_cache(self, n_slots: int) -> OnnxCache:
        c = self.cfg
        return OnnxCache(c.n_layer, c.n_kv_head, c.head_dim, n_slots, self.np_dtype)

    # ---- the RoPE clamp ---------------------------------------------------------------------------
    def rope_table(self, upto: int) -> np.ndarray:
        """The model's RoPE table (asa_runtime.model.rope_cache), at least `upto` rows (grown by doubling)."""
        t = self._rope
        if upto > len(t):
            from ..model import rope_cache

            n = max(upto, 2 * len(t), self.cfg.max_seq_len)
            t = rope_cache(n, self.cfg.head_dim, self.cfg.rope_theta).numpy()
            self._rope = t                     # replaced, never written: sessions may share the backend
        return t

    def _clamp_feed(self, positions, rows, plan_pos) -> dict:
        """rope_delta (1, T, K) int32 (kernels/torch_sparse.rope_deltas, in numpy) and the table rows it
        reads."""
        if plan_pos is None:
            raise BackendError("the RoPE clamp needs the plan rows as token positions (plan_pos)")
        kp = np.asarray(plan_pos, dtype=np.int64).reshape(np.shape(rows))
        d = np.where(kp >= 0, np.maximum(positions[:, None] - kp - self.rope_clamp, 0), 0)
        n = int(d.max(initial=0)) + 1
        return {"rope_delta": d.astype(np.int32)[None], "rope": self.rope_table(n)[:n]}   # a view: no copy

    # ---- one call of the graph -------------------------------------------------------------------
    def _run(self, cache: OnnxCache, ids, rows, positions, slots, plan_pos=None) -> np.ndarray:
        """ids (T,), rows (T, K) slots or None, positions (T,), slots (T,), plan_pos (T, K) rows as token
        positions (the RoPE clamp) -> logits (1 or T, V)."""
        ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(1, -1)
        positions = np.ascontiguousarray(positions, dtype=np.int64).reshape(-1)
        slots = np.asarray(slots, dtype=np.int64).reshape(-1)
        T = ids.shape[1]
        if self.dense:
            p0 = int(positions[0])                                 # dense: slot == position
            past = [np.ascontiguousarray(a[:, :, :p0]) for kv in zip(cache.k, cache.v) for a in kv]
            rows_c = np.zeros((1, T, 1), dtype=np.int32)           # unused by the dense graph
        else:
            rows = np.asarray(rows)
            valid = rows >= 0
            used = np.unique(rows[valid])
            old = used[~np.isin(used, slots)]                      # slots read but not written now
            U = len(old)
            lut = cache.lut
            lut[old] = np.arange(U, dtype=np.int32)
            lut[slots] = U + np.arange(T, dtype=np.int32)          # a slot written now holds the new row
            rows_c = np.where(valid, lut[np.where(valid, rows, 0)], -1).astype(np.int32)[None]   # (1, T, K)
            lut[old] = -1
            lut[slots] = -1
            past = [a[:, :, old] for kv in zip(cache.k, cache.v) for a in kv]   # (1, Hkv, U, hs) copies
        feed = {"input_ids": ids, "positions": positions, "rows": rows_c}
        if self.rope_clamp:
            feed.update(self._clamp_feed(positions, rows, plan_pos))
        names = [f"past_{kv}.{i}" for i in range(len(cache.k)) for kv in ("k", "v")]
        feed.update(zip(names, past))
        outs = self.sess.run(None, feed)
        for i, (k, v) in enumerate(zip(cache.k, cache.v)):
            k[:, :, slots] = outs[1 + 2 * i]                       # (1, Hkv, T, hs)
            v[:, :, slots] = outs[2 + 2 * i]
        return outs[0][0]                                          # (1 or T, V)

    def prefill(self, cache, ids, plan_rows, positions, slots, all_logits: bool = False,
                plan_pos=None) -> torch.Tensor:
        if all_logits and not self.all_logits_graph and len(ids) > 1:
            # the graph projects only its last token: one call per token gives every row (slow, exact)
            def part(a, t):
                return None if a is None else a[t:t + 1]

            outs = [self._run(cache, ids[t:t + 1], part(plan_rows, t), positions[t:t + 1], slots[t:t + 1],
                              part(plan_pos, t))[-1] for t in range(len(ids))]
            return torch.from_numpy(np.stack(outs)).float()
        logits = self._run(cache, ids, plan_rows, positions, slots, plan_pos)
        return torch.from_numpy(logits).float() if all_logits else torch.from_numpy(logits[-1]).float()

    def decode(self, cache, token: int, plan_row, pos: int, slot: int, attn_out=None,
               plan_pos=None) -> torch.Tensor:
        rows = None if plan_row is None else np.asarray(plan_row).reshape(1, -1)
        kp = None if plan_pos is None else np.asarray(plan_pos).reshape(1, -1)
        logits = self._run(cache, np.array([token]), rows, np.array([pos]), np.array([slot]), kp)
        return torch.from_numpy(logits[-1]).float()            # attn_out: not available from the graph


def folder_config(path) -> dict | None:
    """config.json of an ONNX export folder, or None when `path` is not one."""
    p = Path(path) / "config.json"
    try:
        raw = json.loads(p.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return raw if isinstance(raw, dict) and raw.get("format") == "asa-onnx/1" else None


__all__ = ["OnnxBackend", "OnnxCache", "ensure_export", "folder_config"]
