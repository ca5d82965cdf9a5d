"""`asa-run export`: a model folder (or registry name) in another runtime's format.

Each format is an exporter module in exporters/ exposing
    export(model_path: Path, out: Path, *, dtype: str | None, progress: bool) -> Path
named in FORMATS below (imported only when chosen, so a missing optional package fails only that format).
Bad input (missing model, corrupted checkpoint, unwritable output, unsupported option) ends in one line
`Error: ...` and a non-zero exit; the output is written atomically, so a failure leaves no partial file.
"""
from __future__ import annotations

import importlib
from pathlib import Path

import click

from asa_runtime.errors import USER_ERRORS, one_line

from . import OneLineCommand, main

# format name -> exporter module. Add a format here (one line) and in its module.
FORMATS: dict[str, str] = {
    "gguf": "exporters.gguf",        # dense llama-architecture GGUF for llama.cpp
    "onnx": "exporters.onnx.export",  # decoder graph with the asa.SparseAttention op (exporters/onnx/)
    "mlx": "exporters.mlx",          # mlx-lm style folder run by --backend mlx (exporters/mlx.py)
}

# the pip extra each format's exporter needs (named in the error when its import fails)
EXTRAS: dict[str, str] = {"gguf": "gguf", "onnx": "onnx"}


def exporter(fmt: str):
    """The exporter module for `fmt`, with a one-line error when its optional package is missing."""
    try:
        return importlib.import_module(FORMATS[fmt])
    except ImportError as e:
        extra = EXTRAS.get(fmt, fmt)
        raise click.ClickException(f"--format {fmt} needs an optional package ({one_line(e)}); "
                                   f"install it with: pip install 'asa-runtime[{extra}]'") from None


@main.command("export", cls=OneLineCommand)
@click.option("-m", "--model", "model", default="asa-small", show_default=True,
              help="Registry name (asa-small) or model folder.")
@click.option("--format", "fmt", type=click.Choice(sorted(FORMATS)), default=None,
              help=f"Output format: {', '.join(sorted(FORMATS))}.")
@click.option("-o", "--out", type=click.Path(), required=True, help="Output file (or folder, per format).")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default=None,
              help="Weight dtype of the export (default: the format's choice; see docs/export.md).")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bars on stderr.")
def export_cmd(model, fmt, out, dtype, progress):
    """Export a model's weights (and tokenizer) for another runtime."""
    from exporters.common import ExportError, check_output, resolve_model

    if fmt is None:                              # not required=True: click's message for that is two lines
        raise click.UsageError(f"missing --format (one of: {', '.join(sorted(FORMATS))})")
    mod = exporter(fmt)
    try:
        out_path = check_output(out)             # before the (slow) load: fail fast on a bad --out
        path = resolve_model(model)
        written = mod.export(path, out_path, dtype=dtype, progress=progress)
    except click.ClickException:
        raise
    except (ExportError, *USER_ERRORS) as e:
        raise click.ClickException(one_line(e)) from None
    size = sum(p.stat().st_size for p in ([written] if written.is_file() else written.rglob("*"))
               if p.is_file())
    click.echo(f"wrote {written} ({size / 2**20:.1f} MiB, {fmt})", err=True)
    return Path(written)
