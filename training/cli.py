"""`asa-train`: a thin click shell over training/*.py (each command calls one library function).
Bad input ends in a one-line click error (exit code 1), never a traceback."""
from __future__ import annotations

import json
from pathlib import Path

import click

from asa_runtime.config import MODES, PRESETS, PlanConfig


def _fail(e: Exception):
    raise click.ClickException(" ".join(str(e).split()) or type(e).__name__)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """Prepare data, train ASA / dense models, evaluate them and run the research's experiments."""


@main.command()
@click.option("--out", required=True, type=click.Path(file_okay=False), help="prepared data folder")
@click.option("--ctx", default=256, show_default=True, help="window length in tokens")
@click.option("--vocab-size", default=16384, show_default=True, help="BPE vocabulary when training one")
@click.option("--tokenizer", type=click.Path(exists=True, dir_okay=False), help="reuse this tokenizer.json")
@click.option("--train-words", default=2_000_000, show_default=True, help="training slice (0: every book)")
@click.option("--valid-books", default=4, show_default=True, help="whole books held out for validation")
@click.option("--valid-words", default=250_000, show_default=True, help="cap on held-out words (0: all)")
@click.option("--seed", default=0, show_default=True, help="book split seed")
@click.option("--data-dir", type=click.Path(exists=True, file_okay=False), help="shared data (default ../shared/data)")
@click.option("--no-wikitext", is_flag=True, help="skip the WikiText-2 valid/test splits")
@click.option("--mode", "modes", multiple=True, type=click.Choice(MODES), help="plan modes to cache (repeatable)")
@click.option("--k", default=64, show_default=True, help="plan width (max keys per query)")
@click.option("--workers", default=0, help="planner processes (0: all CPUs)")
def prepare(out, ctx, vocab_size, tokenizer, train_words, valid_books, valid_words, seed, data_dir, no_wikitext,
            modes, k, workers):
    """Corpus -> tokenizer -> token ids in windows of CTX -> cached plans per mode."""
    from .prepare import prepare_plans, prepare_tokens

    try:
        prepare_tokens(out, ctx=ctx, vocab_size=vocab_size, train_words=train_words or None,
                       valid_books=valid_books, valid_words=valid_words or None, seed=seed,
                       tokenizer_path=tokenizer, data_root=data_dir, wikitext=not no_wikitext, log=click.echo)
        for mode in modes:
            prepare_plans(out, mode, PlanConfig(mode=mode, k=k), workers=workers or None, log=click.echo)
    except (OSError, ValueError, KeyError, ImportError) as e:
        _fail(e)


def _parse_overrides(items) -> dict:
    out = {}
    for it in items:
        if "=" not in it:
            raise click.BadParameter(f"expected KEY=VALUE, got {it!r}", param_hint="--set")
        key, val = it.split("=", 1)
        try:
            out[key] = json.loads(val)
        except ValueError:
            out[key] = val
    return out


@main.command()
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False), help="prepared folder")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="run folder")
@click.option("--mode", default="none", type=click.Choice(MODES), show_default=True)
@click.option("--preset", default="tiny", type=click.Choice(list(PRESETS)), show_default=True)
@click.option("--set", "overrides", multiple=True, help="ModelConfig field over the preset, e.g. n_layer=4")
@click.option("--seed", default=0, show_default=True)
@click.option("--batch-size", default=32, show_default=True, help="windows per step per process")
@click.option("--lr", default=3e-3, show_default=True)
@click.option("--min-lr", default=3e-4, show_default=True)
@click.option("--warmup", default=100, show_default=True)
@click.option("--max-steps", default=2000, show_default=True)
@click.option("--weight-decay", default=0.1, show_default=True)
@click.option("--grad-clip", default=1.0, show_default=True)
@click.option("--log-every", default=20, show_default=True)
@click.option("--eval-every", default=200, show_default=True)
@click.option("--eval-windows", default=256, show_default=True, help="held-out windows per periodic eval (0: all)")
@click.option("--final-eval", default=",".join(("valid", "wt2_valid", "wt2_test")), show_default=True)
@click.option("--ckpt-every", default=0, show_default=True, help="resume state every N steps (0: at the end)")
@click.option("--time-budget-s", type=float, help="stop (and save resume state) after this much training time")
@click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda", "mps"]), show_default=True)
@click.option("--amp", default="auto", type=click.Choice(["auto", "bf16", "fp32"]), show_default=True)
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the model")
@click.option("--resume", is_flag=True, help="continue from OUT/state if present")
def train(data, out, mode, preset, overrides, seed, batch_size, lr, min_lr, warmup, max_steps, weight_decay,
          grad_clip, log_every, eval_every, eval_windows, final_eval, ckpt_every, time_budget_s, device, amp,
          compile_, resume):
    """Train one model (runs under torchrun for DDP)."""
    from .train import TrainConfig
    from .train import train as run

    try:
        c = TrainConfig(data=data, out=out, mode=mode, preset=preset, seed=seed, batch_size=batch_size, lr=lr,
                        min_lr=min_lr, warmup=warmup, max_steps=max_steps, weight_decay=weight_decay,
                        grad_clip=grad_clip, log_every=log_every, eval_every=eval_every,
                        eval_windows=eval_windows or None,
                        final_eval=tuple(s for s in final_eval.split(",") if s), ckpt_every=ckpt_every,
                        time_budget_s=time_budget_s, device=device, amp=amp, compile=compile_, resume=resume,
                        overrides=_parse_overrides(overrides))
        run(c, log=click.echo)
    except (OSError, ValueError, KeyError, TypeError) as e:
        _fail(e)


@main.command("eval")
@click.option("--model", "model_dir", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False), help="prepared folder")
@click.option("--split", "splits", multiple=True, help="default: valid, wt2_valid, wt2_test")
@click.option("--batch-size", default=32, show_default=True)
@click.option("--max-windows", default=0, help="evenly spaced subset of windows (0: all)")
@click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda", "mps"]))
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="write the results here")
def eval_(model_dir, data, splits, batch_size, max_windows, device, json_out):
    """Perplexity (per BPE token and per word) of a model folder on prepared splits."""
    from asa_runtime.checkpoint import CheckpointError, load_checkpoint

    from .evaluate import evaluate
    from .prepare import Prepared
    from .train import pick_device

    try:
        dev = pick_device(device)
        ck = load_checkpoint(model_dir, device=dev)
        prep = Prepared.open(data)
        if prep.meta["tokenizer_sha256"] != _sha(Path(model_dir) / "tokenizer.json"):
            raise ValueError("the model's tokenizer differs from the prepared folder's")
        res = evaluate(ck.model, prep, ck.config.plan.mode, splits or ("valid", "wt2_valid", "wt2_test"), dev,
                       batch_size, max_windows or None)
    except (OSError, ValueError, KeyError, CheckpointError) as e:
        _fail(e)
    for split, r in res.items():
        click.echo(f"{split}: loss {r['loss']:.4f}  ppl/BPE-token {r['ppl_bpe']:.2f}  ppl/word {r.get('ppl_word', float('nan')):.2f}")
    if json_out:
        Path(json_out).write_text(json.dumps(res, indent=1) + "\n")


def _sha(p: Path) -> str:
    import hashlib

    return hashlib.sha256(p.read_bytes()).hexdigest()


@main.command()
@click.option("--model", "model_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="a DENSE (mode none) model folder")
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False), help="prepared folder")
@click.option("--mode", default="full", type=click.Choice([m for m in MODES if m != "none"]), show_default=True,
              help="whose cached plans define the ASA-allowed pairs")
@click.option("--split", default="valid", show_default=True)
@click.option("--windows", default=64, show_default=True, help="windows analysed (evenly spaced)")
@click.option("--topk", default=5, show_default=True)
@click.option("--k", type=int, help="plan width (default: the prepared plans' k, else 64)")
@click.option("--window", type=int, help="plan local window (default 16; 0 = bonds, sinks and self only)")
@click.option("--sinks", type=int, help="plan sink tokens (default 4)")
@click.option("--seed", default=0, show_default=True, help="random-mask seed")
@click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda", "mps"]))
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="write the results here")
def h6(model_dir, data, mode, split, windows, topk, k, window, sinks, seed, device, json_out):
    """H6: how much of a dense model's attention falls on ASA-allowed pairs vs a random mask."""
    from asa_runtime.checkpoint import CheckpointError, load_checkpoint

    from .h6 import format_h6, run_h6
    from .prepare import Prepared
    from .train import pick_device

    try:
        dev = pick_device(device)
        ck = load_checkpoint(model_dir, device=dev)
        prep = Prepared.open(data)
        base = prep.meta.get("plans", {}).get(mode, {}).get("config") or {"mode": mode}
        over = {n: v for n, v in (("k", k), ("window", window), ("sinks", sinks)) if v is not None}
        plan_cfg = PlanConfig.from_dict({**base, **over})
        res = run_h6(ck.model, prep, mode, split, windows, topk, seed, dev, plan_cfg=plan_cfg)
    except (OSError, ValueError, KeyError, ImportError, CheckpointError) as e:
        _fail(e)
    click.echo(format_h6(res))
    if json_out:
        Path(json_out).write_text(json.dumps(res, indent=1) + "\n")


@main.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", type=click.Path(file_okay=False), help="write report.md, compare.json and PNG plots here")
@click.option("--baseline-mode", default="none", show_default=True)
def compare(runs, out, baseline_mode):
    """Table (and plots) of several run folders: final ppl, steps to the baseline's final ppl, H6."""
    from .compare import compare_runs

    try:
        md = compare_runs(runs, out, baseline_mode)
    except (OSError, ValueError, KeyError) as e:
        _fail(e)
    click.echo(md)


if __name__ == "__main__":
    main()
