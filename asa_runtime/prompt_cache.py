"""Prompt cache: the state of a processed prefix (KV cache rows, slot map, planner/analyzer state, last
logits) in one safetensors file, with JSON metadata in its header. A cache made by another model (other
config, weights, dtype or quantization: `LoadedModel.model_hash`) is refused.

    layers.{l}.k / layers.{l}.v   (Hkv, n_used, hs)   cache rows 0..n_used-1
    tokens                        (n_pos,) int64
    slot2pos                      (n_used,) int64     which position each kept row holds (eviction)
    last_logits                   (V,) float32
    plan.{name}                   planner state arrays (IncrementalPlan.state_dict()["arrays"])
    header: format, model_hash, json = {n_pos, plan_meta, dense}
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from .generate import GenerationError, Session

FORMAT = "asa-prompt-cache/1"


class PromptCacheError(GenerationError):
    """A prompt cache that cannot be used (one-line message)."""


def save_prompt_cache(path, session: Session) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    if session.last_logits is None:
        raise PromptCacheError("nothing to save: the session holds no tokens")
    n_used = session.slots.n_used
    tensors: dict[str, torch.Tensor] = {}
    kv = session.backend.read_cache(n_used)
    for i in range(0, len(kv), 2):
        tensors[f"layers.{i // 2}.k"] = kv[i].contiguous()
        tensors[f"layers.{i // 2}.v"] = kv[i + 1].contiguous()
    tensors["tokens"] = torch.tensor(session.tokens, dtype=torch.int64)
    tensors["slot2pos"] = torch.from_numpy(session.slots.state()["slot2pos"])
    tensors["last_logits"] = session.last_logits.detach().float().cpu().contiguous()
    plan_meta = None
    if not session.dense:
        state = session.plan.state_dict()
        for k, v in state["arrays"].items():
            tensors[f"plan.{k}"] = torch.from_numpy(np.ascontiguousarray(v))
        plan_meta = state["meta"]
    meta = {"format": FORMAT, "model_hash": session.lm.model_hash,
            "json": json.dumps({"n_pos": session.slots.n_pos, "plan_meta": plan_meta, "dense": session.dense})}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)                                     # never leave a half-written cache behind
    return path


def load_prompt_cache(path, session: Session) -> int:
    """Restore `session` from the file; returns the number of cached tokens."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own types for truncated / garbled files
        raise PromptCacheError(f"{path}: unreadable prompt cache ({' '.join(str(e).split())})") from None
    if meta.get("format") != FORMAT:
        raise PromptCacheError(f"{path}: not an ASA prompt cache (format {meta.get('format')!r})")
    if meta.get("model_hash") != session.lm.model_hash:
        raise PromptCacheError(f"{path}: prompt cache was made by another model (or another dtype / "
                               f"quantization); delete it or pass another file")
    try:
        info = json.loads(meta["json"])
        n_layer = session.lm.config.n_layer
        kv = [tensors[f"layers.{i}.{kind}"] for i in range(n_layer) for kind in ("k", "v")]
        tokens = tensors["tokens"].tolist()
        slot2pos = tensors["slot2pos"].numpy().astype(np.int64)
        last = tensors["last_logits"]
        plan_arrays = {k[len("plan."):]: v.numpy() for k, v in tensors.items() if k.startswith("plan.")}
    except (KeyError, ValueError, TypeError) as e:
        raise PromptCacheError(f"{path}: incomplete prompt cache (missing {e})") from None
    if bool(info.get("dense")) != session.dense or len(tokens) != info["n_pos"]:
        raise PromptCacheError(f"{path}: inconsistent prompt cache")
    if len(tokens) >= session.ctx_size or len(slot2pos) > session.slots.n_slots:
        raise PromptCacheError(f"{path}: cached prefix ({len(tokens)} tokens, {len(slot2pos)} cached keys) "
                               f"does not fit this context ({session.ctx_size}) / KV size "
                               f"({session.slots.n_slots})")
    session.reset()
    try:
        session.backend.write_cache(kv)
        session.slots.load_state(slot2pos, len(tokens))
        if not session.dense:
            session.plan = session.lm.planner.incremental_from_state(
                {"arrays": plan_arrays, "meta": info["plan_meta"]})
    except (ValueError, KeyError, TypeError) as e:
        session.reset()
        raise PromptCacheError(f"{path}: prompt cache does not match this session ({e})") from None
    session.tokens = [int(t) for t in tokens]
    session.last_logits = last.float()
    session.mark()
    return len(tokens)
