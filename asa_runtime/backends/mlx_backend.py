"""The MLX backend: runs the MLX port of the model (asa_runtime/backends/mlx_model.py, mlx-lm's llama layout with the
project's sparse attention from kernels/mlx_sparse.py) behind the Backend protocol.

Weights come from the torch model in memory (`model.llama_state_dict()`, no folder needed) or, with
model None, from an MLX export folder (`asa-run export --format mlx`, config.json format "asa-mlx/1").
MLX picks its own device (mx.default_device()): tested on mlx[cpu] (Linux); Metal is untested here. The
torch `device` argument only says where the torch model lives. Logits come back as torch float32 tensors
and cache states as torch CPU tensors, so sampling, plans, --max-kv-size and prompt caches are unchanged.

The MLX model file lives beside this backend (the runtime runs it); exporters/mlx.py writes folders for it.

RoPE clamp (ModelConfig.rope_clamp, carried as ModelArgs.rope_clamp): prefill and decode then need the plan rows
as token positions (`plan_pos`, which Session passes) beside the slot rows, and refuse rows without them.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..cache_state import state_rows
from ..config import PlanConfig
from ..errors import BackendError
from ..model import narrow_keep, narrow_rows

try:
    import mlx.core as mx

    from . import mlx_model as mm
except ImportError as e:             # make_backend turns this into "install the extra" (one line)
    raise ImportError(e.msg, name="mlx") from None

FORMAT = "asa-mlx/1"
WEIGHTS = "model.safetensors"

_MX = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
_TORCH = {v: k for k, v in _MX.items()}


def mx_dtype(d) -> "mx.Dtype":
    """A torch dtype or its name -> the mx dtype."""
    name = _MX.get(d, d)
    if name not in _TORCH:
        raise BackendError(f"mlx backend: unsupported dtype {d}")
    return getattr(mx, name)


def torch_dtype(d: "mx.Dtype") -> torch.dtype:
    return _TORCH[str(d).split(".")[-1]]


def is_mlx_folder(path) -> bool:
    p = Path(path) / "config.json"
    if not p.is_file():
        return False
    try:
        return json.loads(p.read_text()).get("format") == FORMAT
    except (ValueError, UnicodeDecodeError, AttributeError):
        return False


class MlxCache(list):
    """The per-layer KVCache list of one sequence, with the engine's Cache protocol (move_slots, state,
    load_state, nbytes). Its arrays are mx arrays; states cross over as torch CPU tensors."""

    @property
    def n_slots(self) -> int:
        return self[0].k.shape[2]

    def nbytes(self) -> int:
        return sum(c.k.nbytes + c.v.nbytes for c in self)

    def move_slots(self, src: np.ndarray, dst: np.ndarray) -> None:
        s = mx.array(np.ascontiguousarray(src, dtype=np.int32))
        d = mx.array(np.ascontiguousarray(dst, dtype=np.int32))
        for c in self:
            c.k[:, :, d, :] = c.k[:, :, s, :]           # the gather is an input of the scatter: overlap is safe
            c.v[:, :, d, :] = c.v[:, :, s, :]
        mx.eval([a for c in self for a in (c.k, c.v)])

    def state(self, n: int) -> dict[str, torch.Tensor]:
        out = {}
        td = torch_dtype(self[0].k.dtype)
        for i, c in enumerate(self):
            out[f"layers.{i}.k"] = torch.from_numpy(mm.to_numpy(c.k[0, :, :n])).to(td)     # (Hkv, n, hs)
            out[f"layers.{i}.v"] = torch.from_numpy(mm.to_numpy(c.v[0, :, :n])).to(td)
        return out

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        for c, (k, v) in zip(self, state_rows(tensors, len(self), tuple(self[0].k.shape))):
            n = k.shape[1]
            c.k[0, :, :n] = mm.to_mx(k, c.k.dtype)
            c.v[0, :, :n] = mm.to_mx(v, c.v.dtype)
        mx.eval([a for c in self for a in (c.k, c.v)])


class MlxBackend:
    name = "mlx"

    def __init__(self, model=None, device="cpu", kv_dtype=None, source=None, dtype=None):
        """model: the torch Transformer (its weights are copied into MLX), or None to load the MLX export
        folder `source`. dtype: compute dtype (default: the torch model's; for a folder, float32 on the CPU
        device, else as stored). kv_dtype: cache dtype (default: the compute dtype)."""
        self._mm = mm
        if model is not None:
            self.args = mm.ModelArgs.from_model_config(model.cfg)
            self.plan = model.cfg.plan
            src = model.tok_embeddings.weight.dtype
            dt = mx_dtype(dtype or src)
            weights = mm.from_llama_state(model.llama_state_dict(), self.args.tie_word_embeddings, dt)
            self.source = None
        else:
            if source is None or not is_mlx_folder(source):
                raise BackendError("mlx backend needs a torch model or an MLX export folder "
                                   "(asa-run export --format mlx)")
            self.args, weights, stored, raw = load_folder(source)
            try:
                self.plan = PlanConfig.from_dict(raw.get("plan") or {"mode": "none"})
            except (TypeError, ValueError) as e:
                raise BackendError(f"{source}/config.json: bad plan settings ({e})") from None
            if dtype is None:
                dtype = "float32" if mx.default_device() == mx.cpu else stored
            dt = mx_dtype(dtype)
            weights = {k: v.astype(dt) for k, v in weights.items()}
            self.source = Path(source)
        try:
            self.model = mm.build(self.args, weights)
        except ValueError as e:
            raise BackendError(f"mlx backend: {e}") from None
        self.dtype = dt
        self._kv = mx_dtype(kv_dtype) if kv_dtype is not None else dt
        self.kv_dtype = torch_dtype(self._kv)          # torch dtype, as the torch backend reports it
        self.vocab_size = self.args.vocab_size

    def make_cache(self, n_slots: int) -> MlxCache:
        cache = MlxCache(self.model.make_cache(n_slots, self._kv))
        mx.eval([a for c in cache for a in (c.k, c.v)])
        return cache

    @staticmethod
    def _eval(logits, cache) -> None:
        mx.eval(logits, *[a for c in cache for a in (c.k, c.v)])   # keep each step's graph small

    @staticmethod
    def _positions(positions: np.ndarray):
        """An int offset when the positions are consecutive (mx.fast.rope), else the (T,) array."""
        p = np.asarray(positions, dtype=np.int64)
        if len(p) == 1 or np.all(np.diff(p) == 1):
            return int(p[0])
        return mx.array(p.astype(np.int32))

    def _plan_pos(self, plan_pos, shape) -> np.ndarray | None:
        """The plan rows as token positions (int32) when the model has a RoPE clamp; refuses rows without them."""
        if not self.args.rope_clamp:
            return None
        if plan_pos is None:
            raise BackendError(f"mlx backend: this model has a RoPE clamp (rope_clamp {self.args.rope_clamp}): "
                               f"prefill and decode need the plan rows as token positions (plan_pos)")
        pp = np.asarray(plan_pos, dtype=np.int32)
        if pp.shape[:len(shape)] != tuple(shape):
            raise BackendError(f"mlx backend: plan_pos has shape {pp.shape}, the plan rows {tuple(shape)}")
        return pp

    def _per_layer(self, wide, narrow):
        return [wide if i in self.plan.wide_layers else narrow for i in range(self.args.num_hidden_layers)]

    def prefill(self, cache, ids, plan_rows, positions, slots, all_logits: bool = False,
                plan_pos=None) -> torch.Tensor:
        x = mx.array(np.asarray(ids, dtype=np.int32))[None]                    # (1, T)
        sl = mx.array(np.asarray(slots, dtype=np.int32))                       # (T,)
        keys = key_pos = None
        if plan_rows is not None:
            rows = np.asarray(plan_rows, dtype=np.int32)
            pp = self._plan_pos(plan_pos, rows.shape)
            keys = mx.array(rows)[None]                                          # (1, T, K)
            key_pos = None if pp is None else mx.array(pp)[None]
            if self.plan.narrow_k:                      # a layer-dependent plan: each layer's rows
                def narrow(a):
                    return mx.array(narrow_rows(torch.from_numpy(a), self.plan.narrow_k, self.plan.sinks).numpy())[None]
                keys = self._per_layer(keys, narrow(rows))
                if pp is not None:
                    key_pos = self._per_layer(key_pos, narrow(pp))
        logits = self.model(x, self._positions(positions), cache, keys=keys, slots=sl,
                            last_only=not all_logits, key_pos=key_pos)[0]      # (T or 1, V)
        self._eval(logits, cache)
        out = torch.from_numpy(self._mm.to_numpy(logits.astype(mx.float32)))
        return out if all_logits else out[-1]

    def decode(self, cache, token: int, plan_row, pos: int, slot: int, attn_out=None, plan_pos=None) -> torch.Tensor:
        keys = key_pos = pp = None
        if plan_row is not None:
            n = int(np.count_nonzero(plan_row >= 0))                           # padding (-1) is trailing
            row = np.asarray(plan_row[:n], dtype=np.int32)
            keys = mx.array(row)                                               # (n,)
            pp = self._plan_pos(plan_pos, np.shape(plan_row))
            if pp is not None:
                pp = pp[:n]
                key_pos = mx.array(pp)                                         # (n,)
        keep = None
        if keys is not None and self.plan.narrow_k:     # a layer-dependent plan: each layer's part of the row
            keep = narrow_keep(n, self.plan.narrow_k, self.plan.sinks, n)
            k = keep.numpy()
            keys = self._per_layer(keys, mx.array(row[k]))
            if pp is not None:
                key_pos = self._per_layer(key_pos, mx.array(pp[k]))
        x = mx.array([[int(token)]], dtype=mx.int32)                           # (1, 1)
        weights = [] if attn_out is not None else None
        logits = self.model(x, int(pos), cache, keys=keys, slots=mx.array([int(slot)], dtype=mx.int32),
                            attn_out=weights, key_pos=key_pos)[0, 0]           # (V,)
        self._eval(logits, cache)
        if attn_out is not None:
            for i, w in enumerate(weights):
                w = torch.from_numpy(self._mm.to_numpy(w))
                if keep is not None and i not in self.plan.wide_layers:   # over the whole row, 0 where unread
                    w = torch.zeros(n, dtype=w.dtype).masked_scatter_(keep, w)
                attn_out.append(w)
        return torch.from_numpy(self._mm.to_numpy(logits.astype(mx.float32)))


def load_folder(path) -> tuple:
    """(ModelArgs, {name: mx.array}, stored dtype name, config.json) of an MLX export folder; BackendError (one line)
    when it is incomplete or corrupted (the weights' sha256 is checked against config.json)."""
    from asa_runtime.checkpoint import sha256_file
    ModelArgs = mm.ModelArgs

    path = Path(path)
    try:
        raw = json.loads((path / "config.json").read_text())
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise BackendError(f"{path}: cannot read config.json ({e})") from None
    f = path / WEIGHTS
    if not f.is_file():
        raise BackendError(f"{path}: missing {WEIGHTS}")
    want = (raw.get("files") or {}).get(WEIGHTS)
    if want and sha256_file(f) != want:
        raise BackendError(f"{f}: checksum mismatch (file truncated or corrupted)")
    try:
        weights = mx.load(str(f))
    except Exception as e:  # mlx raises RuntimeError/ValueError of its own for garbled files
        raise BackendError(f"{f}: unreadable safetensors ({' '.join(str(e).split())})") from None
    try:
        args = ModelArgs.from_dict(raw)             # mlx-lm's argument names, at the top level
    except (KeyError, TypeError, ValueError) as e:
        raise BackendError(f"{path}/config.json: bad MLX model arguments ({e})") from None
    return args, weights, raw.get("dtype", "float32"), raw
