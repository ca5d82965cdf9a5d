"""The exported ONNX model folder and where exports are cached.

    model.onnx (+ model.onnx.data)   the decoder graph (exporters/onnx/export.py), weights as external data
    config.json                      format "asa-onnx/1": the ModelConfig, plan policy, graph I/O, opset and
                                     op versions, and sha256 of the source checkpoint (config + weights),
                                     of every file here (graph, tokenizer, analyzer artifacts)
    tokenizer.json                   copied from the checkpoint
    analyzer/                        the analyzer artifacts the plans need (checkpoint's copy or the package's)

The first use of `--backend onnx` on a checkpoint exports into cache_dir(...) = $ASA_CACHE_DIR/onnx/<key>
(default ~/.cache/asa-runtime, or $XDG_CACHE_HOME/asa-runtime), key = the checkpoint's hashes + export options.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from asa_runtime.checkpoint import ANALYZER_DIR, CONFIG, TOKENIZER, sha256_file

FORMAT = "asa-onnx/1"
GRAPH = "model.onnx"
GRAPH_DATA = "model.onnx.data"


class OnnxFolderError(ValueError):
    """An ONNX folder that cannot be used (missing file, not ours, hashes that do not match)."""


def source_hashes(model_path: Path) -> dict:
    """sha256 of the checkpoint's config.json and of each weight file it records (what an export derives from)."""
    model_path = Path(model_path)
    raw = json.loads((model_path / CONFIG).read_text())
    return {"config_sha256": sha256_file(model_path / CONFIG), "files": dict(raw.get("files") or {})}


def cache_root() -> Path:
    env = os.environ.get("ASA_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "asa-runtime"


def cache_key(model_path: Path, dtype: str, all_logits: bool) -> str:
    blob = json.dumps({"format": FORMAT, "source": source_hashes(model_path), "dtype": dtype,
                       "all_logits": all_logits}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def cache_dir(model_path: Path, dtype: str = "float32", all_logits: bool = False) -> Path:
    return cache_root() / "onnx" / cache_key(model_path, dtype, all_logits)


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file of an export (relative names), config.json excluded."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != CONFIG}


def is_onnx_folder(path) -> bool:
    p = Path(path) / CONFIG
    if not p.is_file():
        return False
    try:
        return json.loads(p.read_text()).get("format") == FORMAT
    except (ValueError, AttributeError, UnicodeDecodeError):
        return False


def read_folder(folder, source: Path | None = None, verify: bool = True) -> dict:
    """config.json of an ONNX folder, checked: format, every file's sha256 (verify) and, when `source`
    (the checkpoint folder it should come from) is given, the source hashes. OnnxFolderError otherwise."""
    folder = Path(folder)
    p = folder / CONFIG
    if not p.is_file():
        raise OnnxFolderError(f"{folder}: missing {CONFIG} (not an ONNX export)")
    try:
        raw = json.loads(p.read_text())
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as e:
        raise OnnxFolderError(f"{p}: cannot parse ({' '.join(str(e).split())})") from None
    if raw.get("format") != FORMAT:
        raise OnnxFolderError(f"{folder}: format {raw.get('format')!r} is not {FORMAT!r}")
    if verify:
        want = raw.get("files") or {}
        for name in (GRAPH, TOKENIZER):
            if name not in want:
                raise OnnxFolderError(f"{p}: records no sha256 for {name}")
        for name, digest in want.items():
            f = folder / name
            if not f.is_file():
                raise OnnxFolderError(f"{folder}: missing {name}")
            if sha256_file(f) != digest:
                raise OnnxFolderError(f"{f}: sha256 does not match {CONFIG} (modified or corrupted export)")
    if source is not None:
        have = source_hashes(source)
        if raw.get("source") != have:
            raise OnnxFolderError(f"{folder}: exported from a different checkpoint than {source} "
                                  f"(source hashes do not match); export it again")
    return raw


__all__ = ["ANALYZER_DIR", "FORMAT", "GRAPH", "GRAPH_DATA", "OnnxFolderError", "cache_dir", "cache_key",
           "cache_root", "file_hashes", "is_onnx_folder", "read_folder", "source_hashes"]
