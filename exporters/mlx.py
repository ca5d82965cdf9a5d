"""MLX export: an mlx-lm style folder that the mlx backend runs with the project's sparse attention.

    DIR/model.safetensors   weights under the MLX model's names (asa_runtime/backends/mlx_model.py), mx.save_safetensors
    DIR/config.json         format "asa-mlx/1": mlx-lm's llama arguments (model_type, hidden_size, ...,
                            rope_traditional true; rope_clamp when the model has a RoPE clamp, which the
                            mlx backend applies and mlx-lm would ignore), the ModelConfig fields with the plan
                            policy, the source checkpoint's file hashes, tokenizer and analyzer hashes, this
                            file's sha256
    DIR/tokenizer.json      the byte-level BPE, unchanged
    DIR/analyzer/           the analyzer artifacts a sparse model was trained with (its plans depend on them)

Run it with `asa-run generate -m DIR --backend mlx`. The folder is written atomically (a tmp folder
beside DIR, then renamed), so a failed export leaves nothing at DIR. Metal is untested here (mlx[cpu] only).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from asa_runtime.errors import one_line

from .common import _umask, ExportError, atomic_dir, io_error, llama_weights, load_model, progress as bar, stored_dtype

FORMAT = "asa-mlx/1"
WEIGHTS = "model.safetensors"
DTYPES = ("float32", "float16", "bfloat16")


def _analyzer_source(model_path: Path, raw: dict) -> Path | None:
    """The folder of analyzer artifacts to copy: the checkpoint's analyzer/, else the package's own when
    their sha256 match what the checkpoint recorded (model_analyzer raises CheckpointError otherwise)."""
    from asa_runtime.checkpoint import ANALYZER_DIR, ARTIFACTS, model_analyzer

    model_analyzer(model_path, raw)                 # validates; a mismatch is a one-line CheckpointError
    local = model_path / ANALYZER_DIR
    if local.is_dir() and any(local.iterdir()):
        return local
    return ARTIFACTS if ARTIFACTS.is_dir() and any(ARTIFACTS.iterdir()) else None


def export(model_path: Path, out: Path, *, dtype: str | None = None, progress: bool = True) -> Path:
    """Write `model_path` as an MLX folder at `out`. dtype: float32, float16 or bfloat16 (default: the
    checkpoint's stored dtype, which is lossless). Returns `out`."""
    import mlx.core as mx

    from asa_runtime import __version__
    from asa_runtime.checkpoint import TOKENIZER, analyzer_info, read_config, sha256_file

    from asa_runtime.backends.mlx_model import ModelArgs, from_llama_state

    if dtype is not None and dtype not in DTYPES:
        raise ExportError(f"MLX export supports --dtype {', '.join(DTYPES)}, not {dtype}")
    model_path = Path(model_path)
    dtype = dtype or stored_dtype(model_path) or "float32"
    if dtype not in DTYPES:
        dtype = "float32"
    ckpt = load_model(model_path)                   # one-line CheckpointError on a missing/corrupted folder
    _, raw = read_config(model_path)
    cfg = ckpt.config
    analyzer_dir = None if cfg.plan.dense else _analyzer_source(model_path, raw)   # dense: no plans
    args = ModelArgs.from_model_config(cfg)

    state = llama_weights(ckpt.model)
    weights = {}
    for name in bar(list(state), "mlx weights", enabled=progress):
        weights.update(from_llama_state({name: state[name]}, cfg.tie_embeddings, getattr(mx, dtype)))
    try:
        with atomic_dir(out) as tmp:
            os.chmod(tmp, 0o777 & ~_umask())        # mkdtemp makes 0700; a finished export gets the usual mode
            mx.save_safetensors(str(tmp / WEIGHTS), weights, metadata={"format": "mlx"})
            shutil.copyfile(model_path / TOKENIZER, tmp / TOKENIZER)
            arts = {}
            if analyzer_dir is not None:
                (tmp / "analyzer").mkdir()
                for f in sorted(analyzer_dir.iterdir()):
                    if f.is_file():
                        shutil.copyfile(f, tmp / "analyzer" / f.name)
                        arts[f.name] = sha256_file(f)
            config = {
                "format": FORMAT,
                **args.to_dict(),                       # mlx-lm's llama arguments
                **cfg.to_dict(),                        # the runtime's ModelConfig, plan policy included
                "dtype": dtype,
                "architecture": "asa-llama",
                "asa_runtime_version": __version__,
                "tokenizer": {**(raw.get("tokenizer") or {}), "file": TOKENIZER,
                              "sha256": sha256_file(tmp / TOKENIZER)},
                "analyzer": {"version": (raw.get("analyzer") or analyzer_info()).get("version"),
                             "artifacts": arts},
                "source": {"model": model_path.name, "format": raw.get("format"),
                           "torch_dtype": raw.get("torch_dtype"), "files": raw.get("files") or {},
                           "config_sha256": sha256_file(model_path / "config.json")},
                "files": {WEIGHTS: sha256_file(tmp / WEIGHTS)},
                "meta": raw.get("meta") or {},
            }
            (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    except OSError as e:
        raise io_error(out, e) from None
    except RuntimeError as e:                       # mlx reports its own write failures this way
        raise ExportError(f"cannot write {out}: {one_line(e)}") from None
    return Path(out)
