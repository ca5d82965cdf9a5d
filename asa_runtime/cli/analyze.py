"""`asa-run analyze`: show what the analyzer and the planner make of a text, token by token."""
from __future__ import annotations

import json

import click

from . import main
from ..config import MODES, PlanConfig


def _pieces_for(text: str, model: str | None):
    """Token pieces from the model's tokenizer when one is given or asa-small is installed; otherwise
    word-level pieces (GPT-2 pre-tokenization)."""
    if model is not None or _default_model_available():
        from ..registry import resolve
        from ..tokenizer import Tokenizer

        try:
            path = resolve(model or "asa-small")
            tok = Tokenizer.from_file(path / "tokenizer.json")
        except (FileNotFoundError, ValueError, LookupError, OSError) as e:
            raise click.ClickException(str(e).splitlines()[0] if str(e) else repr(e))
        ids = tok.encode(text)
        return [tok.pieces[i] for i in ids], f"{path.name}/tokenizer.json"
    from ..linguistics.pieces import word_pieces

    return word_pieces(text), "words"


def _default_model_available() -> bool:
    try:
        from ..registry import resolve

        resolve("asa-small")
        return True
    except Exception:
        return False


@main.command()
@click.option("--text", "-t", required=True, help="Text to analyze.")
@click.option("--mode", type=click.Choice(MODES), default="full", show_default=True, help="ASA bonding mode.")
@click.option("--k", "k", type=click.IntRange(1, 4096), default=64, show_default=True, help="Max keys per query.")
@click.option("--window", type=click.IntRange(0), default=16, show_default=True)
@click.option("--sinks", type=click.IntRange(0), default=4, show_default=True)
@click.option("--model", default=None, help="Model name or folder whose tokenizer to use (default: asa-small if installed, else word pieces).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def analyze(text, mode, k, window, sinks, model, as_json):
    """Per token: its text, word, UPOS, lexical features and AttentionPlan row."""
    from ..linguistics.planner import Planner

    if not text:
        raise click.ClickException("empty --text")
    pieces, tok_name = _pieces_for(text, model)
    cfg = PlanConfig(mode=mode, k=k, window=window, sinks=sinks)
    inc = Planner(cfg).incremental()
    rows = []
    for i, p in enumerate(pieces):
        row = inc.extend(p)
        f = inc.st.features(i)
        rows.append({"i": i, "token": p, "word": f.word_text, "upos": f.upos_name,
                     "features": f.feature_names(),
                     "keys": list(range(i + 1)) if row is None else [int(x) for x in row if x >= 0]})
    if as_json:
        click.echo(json.dumps({"mode": mode, "k": k, "tokenizer": tok_name, "tokens": rows}, ensure_ascii=False))
        return
    click.echo(f"mode={mode} k={k} tokenizer={tok_name} tokens={len(rows)}")
    for r in rows:
        keys = r["keys"] if len(r["keys"]) <= 16 else r["keys"][:6] + ["..."] + r["keys"][-9:]
        click.echo(f"{r['i']:>5} {r['token']!r:<14} {r['upos']:<6} {','.join(r['features'])[:40]:<40} "
                   f"{' '.join(map(str, keys))}")
