"""`asa-train compare RUN...`: one markdown table (and PNG plots with the `plots` extra) over run folders.

Per run: final perplexities, and the first evaluated step at which its held-out perplexity reached the
dense baseline's final one (mean over the baseline runs, mode `none`). Per mode: means over seeds.
H6 results (any h6*.json inside a run folder, from `asa-train h6 --json`) become a per-layer table + bars.
"""
from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path


def load_run(path) -> dict:
    path = Path(path)
    if not (path / "metrics.jsonl").is_file():
        raise FileNotFoundError(f"{path}: not a run folder (no metrics.jsonl)")
    recs = [json.loads(l) for l in (path / "metrics.jsonl").read_text().splitlines() if l.strip()]
    # a resumed run may repeat steps: keep the last record of each (kind, split, step)
    seen: dict = {}
    for r in recs:
        seen[(r["kind"], r.get("split"), r["step"], bool(r.get("final")))] = r
    recs = sorted(seen.values(), key=lambda r: r["step"])
    cfg = json.loads((path / "config.json").read_text()) if (path / "config.json").is_file() else {}
    summary = json.loads((path / "summary.json").read_text()) if (path / "summary.json").is_file() else {}
    train = cfg.get("train", {})
    return {"name": path.name, "path": str(path), "mode": summary.get("mode", train.get("mode", "?")),
            "seed": summary.get("seed", train.get("seed")), "summary": summary,
            "train": [r for r in recs if r["kind"] == "train"],
            # periodic evals (same held-out windows each time); the final full-split eval is in summary.json
            "eval": [r for r in recs if r["kind"] == "eval" and r.get("split") == "valid" and not r.get("final")],
            "h6": [json.loads(p.read_text()) | {"file": p.name} for p in sorted(path.glob("h6*.json"))]}


def final_ppl(run: dict, split: str = "valid", key: str = "ppl_bpe"):
    r = run["summary"].get("final", {}).get(split)
    return r.get(key) if r else None


def last_periodic(run: dict):
    return run["eval"][-1]["ppl"] if run["eval"] else None


def steps_to(run: dict, target: float):
    for r in run["eval"]:
        if r["ppl"] <= target:
            return r["step"]
    return None


def _fmt(v, nd=2):
    return "-" if v is None else f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return statistics.fmean(xs) if xs else None


def compare_runs(paths, out=None, baseline_mode: str = "none") -> str:
    runs = [load_run(p) for p in paths]
    # the target is measured like the curve it is compared with: the baseline's last periodic eval
    base = [last_periodic(r) for r in runs if r["mode"] == baseline_mode]
    target = _mean(base)
    base_steps = _mean([steps_to(r, target) for r in runs if r["mode"] == baseline_mode]) if target else None
    rows, by_mode = [], defaultdict(list)
    for r in runs:
        s = r["summary"]
        st = steps_to(r, target) if target else None
        tok_s = _mean([t.get("tok_s") for t in r["train"][1:]])
        row = {"run": r["name"], "mode": r["mode"], "seed": r["seed"], "steps": s.get("steps"),
               "tokens": s.get("tokens"), "valid_ppl": final_ppl(r),
               "wt2_valid_ppl_word": final_ppl(r, "wt2_valid", "ppl_word"),
               "wt2_test_ppl_word": final_ppl(r, "wt2_test", "ppl_word"),
               "wt2_test_ppl_bpe": final_ppl(r, "wt2_test", "ppl_bpe"),
               "steps_to_baseline": st, "tok_s": tok_s, "elapsed_s": s.get("elapsed_s")}
        rows.append(row)
        by_mode[r["mode"]].append(row)

    md = ["## Runs", "",
          f"Baseline (`{baseline_mode}`) held-out ppl at its last periodic eval: {_fmt(target)}; steps to reach it = "
          "first periodic eval (same held-out windows) at or below it. `valid ppl` is the final eval on every "
          "held-out window.", "",
          "| run | mode | seed | steps | valid ppl/BPE | WT2 valid ppl/word | WT2 test ppl/word | steps to baseline ppl | tok/s |",
          "|---|---|---|---|---|---|---|---|---|"]
    for w in rows:
        md.append(f"| {w['run']} | {w['mode']} | {w['seed']} | {_fmt(w['steps'])} | {_fmt(w['valid_ppl'])} | "
                  f"{_fmt(w['wt2_valid_ppl_word'])} | {_fmt(w['wt2_test_ppl_word'])} | {_fmt(w['steps_to_baseline'])} | "
                  f"{_fmt(w['tok_s'], 0)} |")
    md += ["", "## Per mode (mean over seeds)", "",
           "| mode | runs | valid ppl/BPE | WT2 test ppl/word | steps to baseline ppl | vs baseline steps |",
           "|---|---|---|---|---|---|"]
    agg = {}
    for mode, ws in by_mode.items():
        st = [w["steps_to_baseline"] for w in ws]
        reached = None if any(x is None for x in st) else _mean(st)
        agg[mode] = {"runs": len(ws), "valid_ppl": _mean([w["valid_ppl"] for w in ws]),
                     "wt2_test_ppl_word": _mean([w["wt2_test_ppl_word"] for w in ws]),
                     "steps_to_baseline": reached,
                     "relative_steps": reached / base_steps if reached and base_steps else None}
        a = agg[mode]
        md.append(f"| {mode} | {a['runs']} | {_fmt(a['valid_ppl'])} | {_fmt(a['wt2_test_ppl_word'])} | "
                  f"{_fmt(a['steps_to_baseline'], 0) if a['steps_to_baseline'] else 'not reached'} | "
                  f"{_fmt(a['relative_steps'], 3)} |")

    h6 = [(r["name"], h) for r in runs for h in r["h6"]]
    if h6:
        md += ["", "## H6: dense attention on ASA-allowed pairs vs a random mask of equal row counts", "",
               "| run | file | plan | density | layer | mass ASA | mass random | count ASA | count random | top-k ASA | top-k random |",
               "|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, h in h6:
            plan = f"{h['mode']} w{h['plan']['window']} s{h['plan']['sinks']} k{h['plan']['k']}"
            for l in h["layers"] + [{"layer": "all", **h["overall"]}]:
                a, rnd = l["asa"], l["random"]
                md.append(f"| {name} | {h['file']} | {plan} | {h['density']:.3f} | {l['layer']} | {a['mass']:.3f} | "
                          f"{rnd['mass']:.3f} | {a['count']:.3f} | {rnd['count']:.3f} | {a['topk']:.3f} | {rnd['topk']:.3f} |")
    text = "\n".join(md) + "\n"
    if out:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.md").write_text(text)
        (out / "compare.json").write_text(json.dumps({"baseline_ppl": target, "runs": rows, "modes": agg,
                                                      "h6": [{"run": n, **h} for n, h in h6]}, indent=1) + "\n")
        plots = make_plots(runs, h6, out)
        if plots:
            text += "\n" + "\n".join(f"![{p.stem}]({p.name})" for p in plots) + "\n"
            (out / "report.md").write_text(text)
    return text


def make_plots(runs, h6, out: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []                                  # plots are the optional `plots` extra
    made = []
    modes = sorted({r["mode"] for r in runs})
    color = {m: plt.get_cmap("tab10")(i) for i, m in enumerate(modes)}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for r in runs:
        ls = "-" if not r["seed"] else "--"
        if r["train"]:
            axes[0].plot([t["step"] for t in r["train"]], [t["loss"] for t in r["train"]], ls, color=color[r["mode"]],
                         lw=1, label=f"{r['mode']} s{r['seed']}")
        if r["eval"]:
            axes[1].plot([e["step"] for e in r["eval"]], [e["ppl"] for e in r["eval"]], ls, color=color[r["mode"]],
                         marker=".", lw=1, label=f"{r['mode']} s{r['seed']}")
    axes[0].set(xlabel="step", ylabel="train loss (nats / BPE token)", title="training loss")
    axes[1].set(xlabel="step", ylabel="held-out ppl (per BPE token)", title="held-out perplexity", yscale="log")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "loss_curves.png", dpi=120)
    plt.close(fig)
    made.append(out / "loss_curves.png")
    for i, (name, h) in enumerate(h6):
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
        labels = [str(l["layer"]) for l in h["layers"]] + ["all"]
        layers = h["layers"] + [{"layer": "all", **h["overall"]}]
        for ax, metric in zip(axes, ("mass", "count", "topk")):
            xs = range(len(labels))
            ax.bar([x - 0.2 for x in xs], [l["asa"][metric] for l in layers], 0.4, label="ASA-allowed")
            ax.bar([x + 0.2 for x in xs], [l["random"][metric] for l in layers], 0.4, label="random, same counts")
            ax.set(xticks=list(xs), xticklabels=labels, xlabel="layer", title=metric, ylim=(0, 1))
            ax.grid(alpha=0.3, axis="y")
        axes[0].legend(fontsize=8)
        fig.suptitle(f"H6 {name} ({h['mode']}, window {h['plan']['window']}, sinks {h['plan']['sinks']}; "
                     f"density {h['density']:.2f})", fontsize=10)
        fig.tight_layout()
        p = out / f"h6_{i}_{Path(h['file']).stem}.png"
        fig.savefig(p, dpi=120)
        plt.close(fig)
        made.append(p)
    return made
