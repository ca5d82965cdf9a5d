"""`asa-run generate`: llama.cpp / mlx-lm style flags over asa_runtime.generate (a thin click layer).

Every bad input ends in one line `Error: ...` and a non-zero exit, never a traceback: usage errors (out
of range values, missing files) lose click's usage banner, and the library's one-line errors (registry,
checkpoint, engine, prompt cache) become click.ClickException.
"""
from __future__ import annotations

import sys

import click

from asa_runtime.backends import BACKENDS
from asa_runtime.errors import USER_ERRORS, GenerationError, one_line, require_unicode

from . import OneLineCommand, main  # noqa: F401  (OneLineCommand re-exported for chat)

DEVICES = ("cpu", "cuda", "mps")


def read_prompt(prompt: str | None, file: str | None) -> str:
    if prompt is not None and file is not None:
        raise click.UsageError("give either --prompt or -f/--file, not both")
    if prompt is None and file is None:
        raise click.UsageError("no prompt: give --prompt TEXT or -f FILE")
    if file is not None:
        try:
            data = sys.stdin.buffer.read() if file == "-" else open(file, "rb").read()
        except OSError as e:
            raise click.ClickException(f"cannot read {file}: {e.strerror or one_line(e)}") from None
        try:
            prompt = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise click.ClickException(f"{file} is not UTF-8 text (invalid byte at offset {e.start})") \
                from None
    try:
        require_unicode(prompt, "the prompt")
    except GenerationError as e:
        raise click.ClickException(str(e)) from None
    if not prompt.strip():
        raise click.ClickException("empty prompt" + (f" ({file} has no text)" if file else ""))
    return prompt


def load_options(f):
    """Options that load a model and size its session (generate, chat, perplexity)."""
    opts = [
        click.option("-m", "--model", "model", default="asa-small", show_default=True,
                     help="Registry name (asa-small) or model folder."),
        click.option("--device", type=click.Choice(DEVICES), default="cpu", show_default=True),
        click.option("--no-verify", is_flag=True,
                     help="Load a model folder whose files are not covered by the checksums in its config."),
        click.option("--backend", type=click.Choice(list(BACKENDS)), default="torch", show_default=True,
                     help="Execution backend (ONNX Runtime and MLX come with the exporters)."),
        click.option("--quantize", type=click.Choice(["int8", "f16"]), default=None,   # = quantize.SCHEMES
                     help="Weight-only quantization of the linear layers: int8, or f16 (float16 weights, "
                          "float32 activations: on CPU the fastest decode, lossless for asa-small)."),
        click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default=None,
                     help="Weight dtype (default: float32 on CPU, as stored elsewhere)."),
        click.option("--kv-dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default="auto",
                     show_default=True,
                     help="KV cache dtype. auto: bfloat16 for a sparse model on the torch backend (half the "
                          "memory, same perplexity), the model's dtype otherwise."),
        click.option("--rope-clamp", type=click.IntRange(min=-1), default=-1, show_default=True,
                     help="Score planned keys more than N tokens back as if N back (ReRoPE-style; keeps far keys "
                          "at distances the model was trained on). -1: the model's setting (asa-small: 2048, "
                          "its training length); 0: off."),
        click.option("-c", "--ctx-size", type=click.IntRange(min=0), default=0, show_default=True,
                     help="Context length in tokens (0 = the model's max_seq_len)."),
        click.option("--max-kv-size", type=click.IntRange(min=0), default=0, show_default=True,
                     help="Bound the KV cache to this many keys; keys the plan can never select again are "
                          "evicted (sparse models only). 0: a sparse model's cache is bounded the same lossless "
                          "way, sized automatically (it grows when the plan keeps more keys reachable)."),
        click.option("--prefill-chunk", type=click.IntRange(min=0), default=0, show_default=True,
                     help="Prompt tokens per prefill step (bounds prefill memory). 0: 512 on the CPU, 4096 "
                          "on CUDA."),
        click.option("-t", "--threads", type=click.IntRange(min=1), default=None,
                     help="CPU threads (default: torch's choice)."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def model_options(f):
    """Options shared by generate and chat (model, device, memory, sampling)."""
    opts = [
        click.option("--temp", type=click.FloatRange(min=0), default=0.8, show_default=True,
                     help="Temperature; 0 = greedy."),
        click.option("--top-k", type=click.IntRange(min=0), default=40, show_default=True, help="0 = off."),
        click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=0.95, show_default=True),
        click.option("--min-p", type=click.FloatRange(0, 1, max_open=True), default=0.05, show_default=True),
        click.option("--repeat-penalty", type=click.FloatRange(min=0, min_open=True), default=1.0,
                     show_default=True, help="1.0 = off."),
        click.option("--repeat-last-n", type=click.IntRange(min=-1), default=64, show_default=True,
                     help="Tokens the repeat penalty looks back over (-1 = all, 0 = off)."),
        click.option("-s", "--seed", type=int, default=-1, show_default=True, help="-1 = random."),
        click.option("-v", "--verbose", is_flag=True,
                     help="Print prompt tok/s, generation tok/s, time to first token and peak memory."),
    ]
    for o in reversed(opts):
        f = o(f)
    return load_options(f)


def sampler_kwargs(o: dict) -> dict:
    return dict(temp=o["temp"], top_k=o["top_k"], top_p=o["top_p"], min_p=o["min_p"],
                repeat_penalty=o["repeat_penalty"], repeat_last_n=o["repeat_last_n"],
                seed=None if o["seed"] < 0 else o["seed"])


def load_model(o: dict, mode: str | None = None):
    import torch

    from asa_runtime.generate import load

    if o.get("threads"):
        torch.set_num_threads(o["threads"])
    if o.get("no_verify"):
        click.echo("warning: --no-verify: loading model files without checking their checksums", err=True)
    return load(o["model"], device=o["device"], quantize=o["quantize"], backend=o["backend"], dtype=o["dtype"],
                kv_dtype=o["kv_dtype"], verify=not o.get("no_verify"),
                rope_clamp=None if o.get("rope_clamp", -1) < 0 else o["rope_clamp"], mode=mode)


def use_prompt_cache(path, session):
    """Load `path` into `session` if the file exists (llama.cpp's --prompt-cache); returns the callback that
    saves the prompt's state there once it is computed (nothing is written on an exact hit)."""
    import os
    from pathlib import Path

    from asa_runtime.prompt_cache import load_prompt_cache, save_prompt_cache

    folder = Path(path).resolve().parent
    if not folder.is_dir() or not os.access(folder, os.W_OK):     # found now, not after the prompt ran
        raise GenerationError(f"--prompt-cache {path}: folder {folder} does not exist or is not writable")
    if Path(path).exists():
        load_prompt_cache(path, session)

    def save(s, computed: int) -> None:
        if computed:
            save_prompt_cache(path, s)
    return save


@main.command("generate", cls=OneLineCommand)
@click.option("-p", "--prompt", default=None, help="Prompt text.")
@click.option("-f", "--file", "file", default=None, help="Read the prompt from a UTF-8 file ('-' = stdin).")
@click.option("-n", "--max-tokens", type=click.IntRange(min=-1), default=256, show_default=True,
              help="Tokens to generate (-1 = until the context is full).")
@click.option("--stop", multiple=True, help="Stop when this string is generated (repeatable).")
@click.option("--prompt-cache", type=click.Path(dir_okay=False), default=None,
              help="Load the prompt's KV cache + plan state from FILE if it matches; save it there otherwise.")
@click.option("--echo", is_flag=True, help="Print the prompt before the completion.")
@model_options
def generate_cmd(prompt, file, max_tokens, stop, prompt_cache, echo, **o):
    """Complete a prompt, streaming the text to stdout."""
    import time

    from asa_runtime.generate import Session, format_stats, stream_generate

    try:
        text = read_prompt(prompt, file)
        t0 = time.perf_counter()
        lm = load_model(o)
        load_s = time.perf_counter() - t0
        ctx = o["ctx_size"] or lm.config.max_seq_len
        n = ctx if max_tokens < 0 else max_tokens
        for s_ in stop:
            require_unicode(s_, "--stop")
        session = Session(lm, ctx_size=ctx, max_kv_size=o["max_kv_size"] or None,
                          prefill_chunk=o["prefill_chunk"] or None)
        on_prompt = None
        if prompt_cache is not None:
            on_prompt = use_prompt_cache(prompt_cache, session)
        if echo:
            click.echo(text, nl=False)
        last = None
        for r in stream_generate(lm, text, n, stop=stop, session=session, on_prompt=on_prompt,
                                 **sampler_kwargs(o)):
            click.echo(r.text, nl=False)
            sys.stdout.flush()
            last = r
        click.echo()
    except click.ClickException:
        raise
    except USER_ERRORS as e:
        raise click.ClickException(one_line(e)) from None
    if o["verbose"] and last is not None:
        click.echo(f"load: {load_s:.2f} s | finish: {last.finish_reason} | " + format_stats(last), err=True)
