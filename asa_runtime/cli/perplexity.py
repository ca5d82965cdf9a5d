"""`asa-run perplexity`: perplexity of a model on a text file, as llama.cpp's `llama-perplexity` measures it.

The text is tokenized once and cut into chunks of --ctx-size tokens; each chunk runs on a fresh session (the
same prefill, plan and KV cache as generation) and is scored on its second half, the first half being context
(llama-perplexity's rule, so the two tools' figures compare on the same text and context; llama.cpp also puts a
BOS token first, which this tokenizer has not). --all-tokens scores every token after the first instead. The
chunk is fed --prefill-chunk tokens at a time, so memory stays bounded by the chunk, not the context.
Prints the running estimate per chunk ("[1]17.31,[2]16.98,..."), then the final estimate with its standard
error (from the spread of the token losses, as llama-perplexity writes "PPL = x +/- y").
"""
from __future__ import annotations

import json
import math
import sys
import time

import click

from asa_runtime.errors import USER_ERRORS, GenerationError, one_line
from asa_runtime.scoring import token_nll

from . import main
from .generate import load_model, load_options, read_prompt


@main.command("perplexity")
@click.option("-f", "--file", "file", required=True, help="UTF-8 text file to score ('-' = stdin).")
@click.option("--chunks", type=click.IntRange(min=-1), default=-1, show_default=True,
              help="Score at most this many chunks (-1 = all the text gives).")
@click.option("--all-tokens", is_flag=True,
              help="Score every token after a chunk's first (default: the second half, as llama-perplexity).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON line at the end.")
@click.option("--mode", type=click.Choice(["plan", "none"]), default="plan", show_default=True,
              help="plan: the model's AttentionPlan; none: the same weights attending densely (what llama.cpp "
                   "runs from the GGUF export).")
@load_options
def perplexity_cmd(file, chunks, all_tokens, as_json, mode, **o):
    """Perplexity on a text file, chunk by chunk (llama-perplexity's method)."""
    from asa_runtime.generate import Session

    try:
        text = read_prompt(None, file)
        lm = load_model(o, mode=None if mode == "plan" else mode)
        ctx = o["ctx_size"] or 512                         # llama-perplexity's default context
        if ctx > lm.config.max_seq_len:
            raise GenerationError(f"--ctx-size {ctx} is above the model's max_seq_len {lm.config.max_seq_len}")
        if ctx < 4:
            raise GenerationError(f"--ctx-size {ctx} is too small to score (at least 4 tokens)")
        ids = lm.tokenizer.encode(text)
        n_chunks = len(ids) // ctx
        if n_chunks == 0:
            raise GenerationError(f"{file}: {len(ids)} tokens, fewer than one chunk of --ctx-size {ctx}")
        if chunks >= 0:
            n_chunks = min(n_chunks, chunks)
        first = 0 if all_tokens else ctx // 2
        click.echo(f"perplexity: {n_chunks} chunks of {ctx} tokens ({len(ids)} in the text), scoring "
                   f"{'every token after the first' if all_tokens else 'the second half of each'}", err=True)
        t0 = time.perf_counter()
        nlls: list[float] = []
        for c in range(n_chunks):
            session = Session(lm, ctx_size=ctx, max_kv_size=o["max_kv_size"] or None,
                              prefill_chunk=o["prefill_chunk"] or None)
            nlls.extend(token_nll(session, ids[c * ctx: (c + 1) * ctx], first).tolist())
            click.echo(f"[{c + 1}]{math.exp(sum(nlls) / len(nlls)):.4f},", nl=False)
            sys.stdout.flush()
        click.echo()
    except click.ClickException:
        raise
    except USER_ERRORS as e:
        raise click.ClickException(one_line(e)) from None
    n = len(nlls)
    mean = sum(nlls) / n
    var = sum((x - mean) ** 2 for x in nlls) / n
    ppl = math.exp(mean)
    err = ppl * math.sqrt(var / (n - 1)) if n > 1 else float("nan")   # delta method on the mean loss
    secs = time.perf_counter() - t0
    click.echo(f"Final estimate: PPL = {ppl:.4f} +/- {err:.5f} ({n} tokens scored, {secs:.1f} s, "
               f"{n_chunks * ctx / secs:.0f} tokens/s)")
    if as_json:
        click.echo(json.dumps({"ppl": ppl, "ppl_stderr": err, "mean_nll": mean, "tokens_scored": n,
                               "chunks": n_chunks, "ctx_size": ctx, "all_tokens": all_tokens, "mode": mode,
                               "seconds": secs}))
