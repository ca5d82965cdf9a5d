"""Prompt cache files: a Session's `state()` (KV cache rows, slot map, plan/analyzer state, tokens, last
logits) in one safetensors file, JSON metadata in its header. Only the edges (CLI, server) open these
files; the engine sees states. A cache made by another model (other config, weights, dtype or
quantization: `LoadedModel.model_hash`) is refused. Written atomically: a crash never leaves half a file.

    layers.{l}.k / layers.{l}.v   (Hkv, n_used, hs)   cache rows 0..n_used-1
    tokens                        (n_pos,) int64
    slot2pos                      (n_used,) int64     which position each kept row holds (eviction)
    last_logits                   (V,) float32
    plan.{name}                   planner state arrays
    header: format, model_hash, json = {n_pos, plan_meta, dense}
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import GenerationError, PromptCacheError, one_line

FORMAT = "asa-prompt-cache/1"


def write_state(path, state: dict, model_hash: str) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: v.contiguous() for k, v in state["tensors"].items()}
    meta = {"format": FORMAT, "model_hash": model_hash, "json": json.dumps(state["meta"])}
    tmp = path.with_name(path.name + ".tmp")
    try:
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, path)
    except Exception as e:  # safetensors raises its own type for I/O errors; os.replace an OSError
        raise PromptCacheError(f"{path}: cannot write prompt cache ({one_line(e)})") from None
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
    return path


def read_state(path, model_hash: str) -> dict:
    """The state stored in `path`, checked to come from the model with this hash."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own types for truncated / garbled files
        raise PromptCacheError(f"{path}: unreadable prompt cache ({one_line(e)})") from None
    if meta.get("format") != FORMAT:
        raise PromptCacheError(f"{path}: not an ASA prompt cache (format {meta.get('format')!r})")
    if meta.get("model_hash") != model_hash:
        raise PromptCacheError(f"{path}: prompt cache was made by another model (or another dtype / "
                               f"quantization); delete it or pass another file")
    try:
        info = json.loads(meta["json"])
    except (KeyError, ValueError) as e:
        raise PromptCacheError(f"{path}: incomplete prompt cache ({one_line(e)})") from None
    return {"tensors": tensors, "meta": info}


def save_prompt_cache(path, session) -> Path:
    """Write `session`'s state to `path`."""
    try:
        return write_state(path, session.state(), session.lm.model_hash)
    except PromptCacheError:
        raise
    except GenerationError as e:
        raise PromptCacheError(f"{path}: {e}") from None


def load_prompt_cache(path, session) -> int:
    """Restore `session` from `path`; returns the number of cached tokens."""
    state = read_state(path, session.lm.model_hash)
    try:
        return session.restore(state)
    except GenerationError as e:
        raise PromptCacheError(f"{path}: {e}") from None
