"""`asa-run bench`: llama-bench-shaped latency table over asa_runtime.benchmark (a thin click layer)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import click

from asa_runtime.backends import BACKENDS
from asa_runtime.errors import USER_ERRORS, one_line

from . import main
from .generate import OneLineCommand


def _ints(text: str, what: str) -> list[int]:
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise click.UsageError(f"{what} takes a comma list of whole numbers, got {text!r}") from None
    if not out or min(out) < 1:
        raise click.UsageError(f"{what} values must be >= 1")
    return out


def _names(text: str, allowed, what: str) -> list[str]:
    out = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in out if x not in allowed]
    if bad or not out:
        raise click.UsageError(f"{what}: unknown {bad[0] if bad else '(empty)'!r}; choose from {', '.join(allowed)}")
    return out


def gguf_for(model: str) -> str:
    """The dense GGUF of `model` made once by exporters/gguf.py into the user cache (keyed by the weights'
    sha256), with the model's tokenizer beside it so llama.cpp is fed the very same token ids."""
    from exporters import gguf as gguf_export

    from asa_runtime.checkpoint import TOKENIZER, read_config
    from asa_runtime.registry import resolve

    path = resolve(model)
    _, raw = read_config(path)
    key = hashlib.sha256(json.dumps(raw.get("files", {}), sort_keys=True).encode()).hexdigest()[:16]
    cache = Path(os.environ.get("ASA_CACHE", Path.home() / ".cache" / "asa-runtime")) / "gguf"
    out = cache / f"{path.name}-{key}.gguf"
    if not out.exists():
        cache.mkdir(parents=True, exist_ok=True)
        gguf_export.export(path, out, progress=True)
    tok = out.with_suffix(".tokenizer.json")
    if not tok.exists():
        shutil.copyfile(path / TOKENIZER, tok)
    return str(out)


@main.command("bench", cls=OneLineCommand)
@click.option("-m", "--model", default="asa-small", show_default=True, help="Registry name or model folder.")
@click.option("-p", "--contexts", default="512,8192,32768", show_default=True, help="Context lengths (comma list).")
@click.option("-n", "--n-gen", type=click.IntRange(min=1), default=128, show_default=True,
              help="Tokens generated per measurement.")
@click.option("-r", "--repeats", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--backend", "backends", default="torch", show_default=True, help="Backends in ASA mode (comma list).")
@click.option("--mode", "modes", default="asa,dense", show_default=True,
              help="asa (the model's plan), dense (plan none on the torch backend), or both.")
@click.option("--llama-cpp", is_flag=True, help="Add llama.cpp on the dense GGUF of the same weights "
              "(pip install 'asa-runtime[llamacpp]').")
@click.option("--quantize", "quantize", default="none", show_default=True,
              help="Weight schemes of the torch rows (comma list of none, int8, f16): one set of rows each.")
@click.option("--rope-clamp", "rope_clamps", default="model", show_default=True,
              help="RoPE clamps of the ASA rows (comma list of model = the model's own, or integers; 0 = off): one "
                   "set of rows each.")
@click.option("-t", "--threads", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("-f", "--text-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Prompt text (UTF-8) instead of the built-in paragraphs.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="cuda: the torch backend on the GPU, decode from CUDA graphs, bf16 weights (llama.cpp "
                   "rows are CPU-only and left out).")
@click.option("--warmup/--no-warmup", default=None,
              help="One untimed run of each configuration before its repeats (default: on with --device cuda, "
                   "where the first run also compiles and captures; off on the CPU).")
@click.option("-o", "--output", type=click.Choice(["md", "json", "csv"]), default="md", show_default=True)
@click.option("--out", "out_file", type=click.Path(dir_okay=False), default=None,
              help="Write the table here (atomically) as well as to stdout.")
@click.option("--plot", "plot_file", type=click.Path(dir_okay=False), default=None,
              help="Save a plot (PNG): tokens/s and peak memory against context (needs matplotlib).")
def bench_cmd(model, contexts, n_gen, repeats, backends, modes, llama_cpp, quantize, rope_clamps, threads, text_file,
              device, warmup, output, out_file, plot_file):
    """Latency table: prompt and generation tokens/s, time to first token, peak memory, per system."""
    from asa_runtime import benchmark

    ctx = _ints(contexts, "-p/--contexts")
    bks = _names(backends, BACKENDS, "--backend")
    mds = _names(modes, ("asa", "dense"), "--mode")
    qs = [None if q == "none" else q for q in _names(quantize, ("none", "int8", "f16"), "--quantize")]
    clamps = []
    for c in rope_clamps.split(","):
        c = c.strip()
        if c != "model" and not (c.isdigit() and c.isascii()):
            raise click.UsageError(f"--rope-clamp: {c!r} is neither 'model' nor an integer >= 0")
        clamps.append(None if c == "model" else int(c))
    gguf = None
    try:
        if device == "cuda":
            from asa_runtime.generate import check_device

            check_device("cuda")
            if bks != ["torch"] or llama_cpp:
                raise click.UsageError("--device cuda runs the torch backend only (no --llama-cpp, --backend torch)")
        if llama_cpp:
            try:
                import llama_cpp as _  # noqa: F401
            except ImportError:
                raise click.ClickException("--llama-cpp needs llama-cpp-python: pip install "
                                           "'asa-runtime[llamacpp]'") from None
            gguf = gguf_for(model)
        gpu = dict(device="cuda", dtype="bfloat16", prefill_chunk=4096) if device == "cuda" else {}
        use_warmup = device == "cuda" if warmup is None else warmup
        rows = benchmark.run(model, ctx, n_gen=n_gen, repeats=repeats, backends=bks, modes=mds, gguf=gguf,
                             threads=threads, text_file=text_file, quantize=qs, rope_clamps=clamps,
                             warmup=use_warmup, **gpu)
    except click.ClickException:
        raise
    except (RuntimeError, *USER_ERRORS) as e:
        raise click.ClickException(one_line(e)) from None
    info = {**benchmark.machine(device), "warmup": use_warmup}
    text = {"md": lambda: benchmark.to_markdown(rows, info, threads), "json": lambda: benchmark.to_json(rows, info),
            "csv": lambda: benchmark.to_csv(rows)}[output]()
    sys.stdout.write(text)
    if out_file:
        tmp = Path(out_file).with_name(Path(out_file).name + ".tmp")
        try:
            tmp.write_text(text)
            os.replace(tmp, out_file)
        except OSError as e:
            raise click.ClickException(f"cannot write {out_file}: {e.strerror or one_line(e)}") from None
    if plot_file:
        try:
            benchmark.plot(rows, plot_file, title=f"{model} on {info['cpu']}, {threads} thread(s)")
        except ImportError:
            raise click.ClickException("--plot needs matplotlib: pip install 'asa-runtime[plots]'") from None
