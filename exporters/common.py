"""Helpers every exporter shares: load a checkpoint with one-line errors, the weights under Llama names,
atomic output (a tmp name beside the target, then os.replace), and a progress bar on stderr.

An exporter raises ExportError (or the runtime's RegistryError / CheckpointError) for bad input; the CLI
prints any of them as one line.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, TypeVar

import torch

from asa_runtime.errors import one_line

T = TypeVar("T")


class ExportError(ValueError):
    """Bad input to an exporter (unsupported option, unwritable output); its message is one line."""


def resolve_model(name_or_path: str | os.PathLike) -> Path:
    """A registry name ("asa-small") or model folder -> the folder's Path (RegistryError if neither)."""
    from asa_runtime.registry import resolve

    return resolve(name_or_path)


def load_model(name_or_path: str | os.PathLike):
    """Load a checkpoint on the CPU in float32 (exact for the float16/bfloat16 files we store): returns
    asa_runtime.checkpoint.Checkpoint (model, tokenizer, config, meta). A missing, truncated or corrupted
    folder raises CheckpointError / RegistryError with a one-line message."""
    from asa_runtime.checkpoint import load_checkpoint

    return load_checkpoint(resolve_model(name_or_path), device="cpu", dtype=torch.float32)


def stored_dtype(model_path: str | os.PathLike) -> str | None:
    """The dtype name config.json records for the weights on disk ("float16", ...), or None."""
    from asa_runtime.checkpoint import read_config

    _, raw = read_config(resolve_model(model_path))
    return raw.get("torch_dtype")


def llama_weights(model) -> dict[str, torch.Tensor]:
    """The model's weights under Llama names (tok_embeddings.weight, layers.{i}.attention.wq.weight, ...,
    feed_forward.w1/w2/w3 = gate/down/up, norm.weight, output.weight), detached CPU tensors. The model's
    own parameters may be fused (wqkv, w13): never read model.state_dict() names directly."""
    import asa_runtime.model as m

    if hasattr(m, "llama_state_dict"):
        sd = m.llama_state_dict(model)
    elif hasattr(model, "llama_state_dict"):
        sd = model.llama_state_dict()
    else:                                   # older model: parameters already under Llama names
        sd = model.state_dict()
    return {k: v.detach().to("cpu") for k, v in sd.items()}


def check_output(out: str | os.PathLike) -> Path:
    """Fail early (before a slow load) when `out` cannot be written: its folder must exist and be
    writable, and `out` must not be an existing folder when a file is wanted."""
    out = Path(out).expanduser()
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise ExportError(f"cannot write {out}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ExportError(f"cannot write {out}: folder {parent} is not writable")
    return out


@contextlib.contextmanager
def atomic_file(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `out`; on success it replaces `out` (os.replace), on any error it
    is removed, so a failed export never leaves a half-written file at `out`."""
    out = check_output(out)
    if out.is_dir():
        raise ExportError(f"cannot write {out}: it is a folder (give a file name)")
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, 0o666 & ~_umask())            # mkstemp makes 0600; a finished export gets the usual mode
    try:
        yield tmp
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike) -> Iterator[Path]:
    """Like atomic_file for a folder output (MLX, ONNX with external data): fill the yielded temporary
    folder; on success it takes `out`'s place (an existing `out` folder is replaced), on error it is
    removed."""
    out = check_output(out)
    if out.exists() and not out.is_dir():
        raise ExportError(f"cannot write folder {out}: a file of that name exists")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old / out.name)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def progress(items: Iterable[T], desc: str, enabled: bool = True, total: int | None = None,
             unit: str = "tensor") -> Iterable[T]:
    """`items`, wrapped in a tqdm bar on stderr when `enabled` (the CLI's --progress/--no-progress)."""
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, total=total, unit=unit, leave=False, dynamic_ncols=True)


def io_error(out: str | os.PathLike, e: OSError) -> ExportError:
    """An OSError while writing `out` as a one-line ExportError."""
    return ExportError(f"cannot write {out}: {e.strerror or one_line(e)}")
