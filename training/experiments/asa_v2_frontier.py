"""What K buys (issue 16): held-out perplexity at the 2048 training context against the keys each query reads,
for every model a device batch has trained, seeds pooled; the dense twin beside them, the 2% target line, and
a log-linear fit through the best model at each cost, extrapolated to where it would meet the target.

No model and no device: it reads the committed results (asa_v2_policies.trained_ppl: batch 1, batch 2, the
scale point, the seeds, any later batch folder) and the plans' costs (policies/policies.json, made by
`python -m training.experiments.asa_v2_policies`; batch 1's transcribed figures for the two models that file
does not plan). Small-preset models only: the scale point is another curve.

    python -m training.experiments.asa_v2_frontier [--out training/results/asa_v2/frontier]

Run it again after a batch is installed (asa_v2 install --to training/results/asa_v2/<batch>) and after
asa_v2_policies has measured the batch's policies (the cost of a policy it has not planned is unknown: left out).
"""
from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

from training.experiments import asa_v2
from training.experiments.asa_v2_policies import RESULTS, trained_ppl

TRAIN_CTX = 2048
TARGET_GAP = 0.02                      # the target: within 2% of the dense twin at 2048


def costs(results: Path = RESULTS) -> dict[str, dict]:
    """name -> {"keys": mean keys per query over the layers, "kv": KV rows max over 32k (None: grows)}."""
    out = {}
    b1 = results / "batch1.json"
    if b1.is_file():
        for n, m in json.loads(b1.read_text())["models"].items():
            if m.get("mean_keys"):          # its labels too: its asa_small is v1, not today's shipped model
                out[n] = {"keys": m["mean_keys"], "kv": m.get("kv_max"), "label": m.get("label")}
    pol = results / "policies" / "policies.json"
    if pol.is_file():
        for n, r in json.loads(pol.read_text())["policies"].items():
            out[n] = {"keys": r["mean_keys_layers"], "kv": r["kv_bound"]["max"]}
    # a model no policies run measured: the batch's own plan statistics (the same measures, on the book sequences)
    for f in (results / "asa_v2_results.json", *sorted(results.glob("*/asa_v2_results.json"))):
        for n, m in json.loads(f.read_text())["models"].items() if f.is_file() else ():
            keys = m.get("mean_keys_layers", m.get("reach", {}).get("mean_keys"))
            if n not in out and n != "asa_small" and keys and m.get("summary", {}).get("final"):
                out[n] = {"keys": keys, "kv": m.get("kv_bound", {}).get("max")}
    # a causal dense model reads (t + 1) keys at position t: (ctx + 1) / 2 on average over a window
    out["dense"] = {"keys": (TRAIN_CTX + 1) / 2, "kv": None}
    return out


LONG = (8192, 32768)
# the dense twin's bounded-KV baselines (label -> KV rows) and their method names in an asa_v2 results file
DENSE_BASELINES = {"window 512": 512, "window 2048": 2048, "sinks 4 + 2044": 2048}
DENSE_METHODS = {"window:512": "window 512", "window:2048": "window 2048", "sinks:4+2044": "sinks 4 + 2044"}
# a batch folder whose re-evaluated shipped model (`asa_small`) was a trained seed served as shipped: that seed's
# name and the RoPE clamp it was served with (session 13's batch evaluated v3 = coh4_w256 seed 0 with clamp 2048;
# its record predates the rope_clamp field). Its figures count as that seed's served long-context figures.
SHIPPED_EVALS = {"local_w256": ("coh4_w256", 2048)}


def long_context(results: Path = RESULTS) -> tuple[dict[str, dict[int, float]], dict[str, dict]]:
    """Perplexity by evaluation context past the training length: (trained model -> {ctx: ppl}, the dense
    twin's bounded-KV baselines -> {"kv": rows, "seeds": n, "range": {ctx: (min, max)}, ctx: mean}), the
    baselines pooled over the dense twin's seeds (batch 1's seed 0, a later batch's `dense_s1`). A batch's
    re-evaluated shipped model (`asa_small`, no training summary) is skipped: in batch 1 that name is v1,
    later it is v2 = coh4_w64 seed 0."""
    models, seeds, served = {}, {}, {}  # seeds: baseline label -> [{ctx: ppl} per dense seed]
    b1 = results / "batch1.json"
    if b1.is_file():
        for n, m in json.loads(b1.read_text())["models"].items():
            bc = m.get("by_context") or {}
            if n == "dense":
                for w in DENSE_BASELINES:
                    if w in bc:
                        seeds.setdefault(w, []).append({c: bc[w][str(c)] for c in LONG if str(c) in bc[w]})
            elif bc:
                models[n] = {c: bc[str(c)] for c in LONG if str(c) in bc}
    for f in (results / "asa_v2_results.json", *sorted(results.glob("*/asa_v2_results.json"))):
        if not f.is_file():
            continue
        for n, m in json.loads(f.read_text())["models"].items():
            if n == "asa_small" and f.parent.name in SHIPPED_EVALS:
                seed, clamp = SHIPPED_EVALS[f.parent.name]
                bc = m.get("methods", {}).get("model", {}).get("by_context", {})
                served[seed] = {**{c: bc[str(c)]["ppl"] for c in LONG if str(c) in bc}, "clamp": clamp}
            if not m.get("summary", {}).get("final"):
                continue
            methods = m.get("methods", {})
            bc = methods.get("model", {}).get("by_context", {})
            models[n] = {c: bc[str(c)]["ppl"] for c in LONG if str(c) in bc}
            if m.get("rope_clamp"):                 # evaluated as served (asa_v2 --serve-clamp): not pooled with
                models[n]["clamp"] = m["rope_clamp"]   # a seed evaluated as trained
            spec = asa_v2.MODELS.get(n)
            if spec is not None and spec.mode == "none" and not spec.args:     # a dense twin's other seed
                for meth, w in DENSE_METHODS.items():
                    mc = methods.get(meth, {}).get("by_context", {})
                    if mc:
                        seeds.setdefault(w, []).append({c: mc[str(c)]["ppl"] for c in LONG if str(c) in mc})
    models.update(served)              # served as shipped: replaces the seed's as-trained figures
    base = {}
    for w, runs in seeds.items():
        ctx = [c for c in LONG if all(c in r for r in runs)]
        base[f"dense twin, {w}"] = {"kv": DENSE_BASELINES[w], "seeds": len(runs),
                                    "range": {c: (min(r[c] for r in runs), max(r[c] for r in runs)) for c in ctx
                                              if len(runs) > 1},
                                    **{c: sum(r[c] for r in runs) / len(runs) for c in ctx}}
    return models, base


def group_key(spec: asa_v2.Spec) -> tuple:
    """Models that differ only by their seed form one group."""
    return spec.mode, json.dumps(spec.plan, sort_keys=True), spec.args


def pooled(ppl: dict[str, float], cost: dict[str, dict], long: dict[str, dict[int, float]] | None = None) -> list[dict]:
    """One point per policy (its seeds pooled): ppl mean, min, max, seeds, cost, and the mean perplexity at
    each long context its seeds were all evaluated at. Models without a cost, and other presets than the
    small one, are left out."""
    groups: dict[tuple, list[str]] = {}
    for n in ppl:
        spec = asa_v2.MODELS.get(n)
        if spec is None or spec.args:
            continue
        groups.setdefault(group_key(spec), []).append(n)
    pts = []
    for names in groups.values():
        if not any(n in cost for n in names):
            continue
        names.sort(key=lambda n: asa_v2.MODELS[n].seed)
        vals = [ppl[n] for n in names]
        c = next(cost[n] for n in names if n in cost)
        # long context: the seeds evaluated the same way (the RoPE clamp changes every figure past 2048); the
        # served form (the largest clamp) when the seeds differ
        ev = [n for n in names if long and long.get(n)]
        clamp = max((long[n].get("clamp", 0) for n in ev), default=0)
        ev = [n for n in ev if long[n].get("clamp", 0) == clamp]
        pts.append({"name": names[0], "models": names, "label": c.get("label") or asa_v2.MODELS[names[0]].label,
                    "ppl": sum(vals) / len(vals), "ppl_min": min(vals), "ppl_max": max(vals), "seeds": len(vals),
                    "keys": c["keys"], "kv": c["kv"],
                    "long": {c: sum(long[n][c] for n in ev) / len(ev) for c in LONG
                             if ev and all(c in long[n] for n in ev)},
                    "long_range": {c: (min(long[n][c] for n in ev), max(long[n][c] for n in ev)) for c in LONG
                                   if len(ev) > 1 and all(c in long[n] for n in ev)},
                    "long_seeds": len(ev), "long_clamp": clamp})
    return sorted(pts, key=lambda p: p["keys"])


def pareto(pts: list[dict]) -> list[dict]:
    """The sparse models no cheaper model beats: ascending keys, strictly falling perplexity."""
    out, best = [], math.inf
    for p in sorted((p for p in pts if p["name"] != "dense"), key=lambda p: (p["keys"], p["ppl"])):
        if p["ppl"] < best:
            out.append(p)
            best = p["ppl"]
    return out


def fit(front: list[dict], dense_ppl: float) -> dict | None:
    """Least squares of log(gap to dense) on log(keys) through the Pareto points (the gap falling as a power
    of K), and the keys per query where it would reach the target. None below 3 points or a 2x spread of K,
    or if the gap does not fall with K."""
    xs = [math.log(p["keys"]) for p in front if p["ppl"] > dense_ppl]
    ys = [math.log(p["ppl"] / dense_ppl - 1) for p in front if p["ppl"] > dense_ppl]
    if len(xs) < 3 or max(xs) - min(xs) < math.log(2):
        return None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    if slope >= 0:
        return None
    icpt = my - slope * mx
    resid = [y - (icpt + slope * x) for x, y in zip(xs, ys)]
    return {"points": len(xs), "exponent": slope, "intercept": icpt,
            "rms_log_residual": math.sqrt(sum(r * r for r in resid) / len(resid)),
            "keys_at_target": math.exp((math.log(TARGET_GAP) - icpt) / slope)}


def long_table(pts: list[dict], base: dict[str, dict]) -> list[str]:
    """Past the training length: every policy with long-context figures and the dense twin's bounded-KV
    baselines, by KV rows (what a long session holds)."""
    rows = [(p["label"] + (f" (served: RoPE clamp {p['long_clamp']}" if p.get("long_clamp") else " (as trained")
             + (f"; {p['long_seeds']} of {p['seeds']} seeds)" if p.get("long_seeds", p["seeds"]) != p["seeds"] else ")"),
             p["kv"], p["long"], p.get("long_range", {})) for p in pts if p["long"] and p["name"] != "dense"]
    rows += [(n + (f" ({b['seeds']} seeds)" if b.get("seeds", 1) > 1 else ""), b["kv"],
              {c: b[c] for c in LONG if c in b}, b.get("range", {})) for n, b in base.items()]
    if not rows:
        return []
    rows.sort(key=lambda r: (r[1] is None, r[1] or 0))
    best = {c: min(r[2][c] for r in rows if c in r[2]) for c in LONG if any(c in r[2] for r in rows)}
    out = ["", "Past the training length (perplexity by evaluation context; seeds pooled: mean (min-max); the dense "
           "twin with a sliding window is the fair bounded-KV baseline):", "",
           "| model | KV rows (32k) | " + " | ".join(f"ppl @ {c // 1024}k" for c in LONG) + " |",
           "|---|---|" + "---|" * len(LONG)]
    for label, kv, lc, rg in rows:
        cells = [("**" if lc.get(c) == best.get(c) else "") + (f"{lc[c]:.2f}" if c in lc else "–") +
                 ("**" if lc.get(c) == best.get(c) else "") +
                 (f" ({rg[c][0]:.2f}-{rg[c][1]:.2f})" if c in rg else "") for c in LONG]
        out.append(f"| {label} | {'grows' if kv is None else f'{kv:,}'} | " + " | ".join(cells) + " |")
    return out


def markdown(pts: list[dict], front: list[dict], f: dict | None, dense_ppl: float,
             base: dict[str, dict] | None = None) -> str:
    lines = ["# What K buys: held-out perplexity against keys per query (issue 16)", "",
             f"Small preset (asa-small's size, data, 5170 steps, schedule); held-out perplexity over every {TRAIN_CTX} "
             "window, final checkpoint, seeds pooled (mean, range). Keys per query: averaged over the layers "
             f"(dense: ({TRAIN_CTX} + 1) / 2, causal). KV rows: what an evicting session keeps over 32k tokens. "
             "`python -m training.experiments.asa_v2_frontier` (from the committed results; no model).", "",
             "| policy | keys / query | KV rows (32k) | held-out ppl | seeds (range) | gap to dense | best at its cost |",
             "|---|---|---|---|---|---|---|"]
    on_front = {p["name"] for p in front}
    for p in pts:
        rng = f"{p['seeds']} ({p['ppl_min']:.2f}-{p['ppl_max']:.2f})" if p["seeds"] > 1 else "1"
        kv = "grows" if p["kv"] is None else f"{p['kv']:,}"
        gap = "–" if p["name"] == "dense" else f"{100 * (p['ppl'] / dense_ppl - 1):+.1f}%"
        lines.append(f"| {p['label']} | {p['keys']:.1f} | {kv} | {p['ppl']:.2f} | {rng} | {gap} | "
                     f"{'yes' if p['name'] in on_front else ''} |")
    lines.append("")
    if front:
        b = front[-1]
        lines.append(f"Closest to the dense twin: {b['label']} ({b['ppl']:.2f}, "
                     f"{100 * (b['ppl'] / dense_ppl - 1):+.1f}% at {b['keys']:.1f} keys per query); target "
                     f"{100 * TARGET_GAP:.0f}% ({dense_ppl * (1 + TARGET_GAP):.2f}).")
    if f:
        lines.append(f"Log-linear fit through the {f['points']} best-at-their-cost points: the gap falls as "
                     f"K^{f['exponent']:.2f} (rms residual {f['rms_log_residual']:.2f} in log gap); extrapolated, the "
                     f"{100 * TARGET_GAP:.0f}% target needs ~{f['keys_at_target']:.0f} keys per query at this size. "
                     "A rough guide from few points, not a measurement.")
    else:
        lines.append("No fit: fewer than three best-at-their-cost points over a 2x range of K (or a gap that "
                     "does not fall with K).")
    lines += long_table(pts, base or {})
    return "\n".join(lines) + "\n"


def plot(pts: list[dict], front: list[dict], f: dict | None, dense_ppl: float, path: Path,
         base: dict[str, dict] | None = None) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    for p in pts:
        dense = p["name"] == "dense"
        ax.errorbar([p["keys"]], [p["ppl"]], yerr=[[p["ppl"] - p["ppl_min"]], [p["ppl_max"] - p["ppl"]]],
                    fmt="s" if dense else "o", color="black" if dense else "tab:blue", capsize=3)
        ax.annotate(p["name"] + (" v1" if p["name"] == "asa_small" else ""), (p["keys"], p["ppl"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.plot([p["keys"] for p in front], [p["ppl"] for p in front], color="tab:blue", alpha=0.5)
    ax.axhline(dense_ppl * (1 + TARGET_GAP), color="tab:red", ls="--", lw=1, label="target: dense + 2%")
    if f:
        lo, hi = front[0]["keys"], max(f["keys_at_target"], front[-1]["keys"])
        ks = [lo * (hi / lo) ** (i / 40) for i in range(41)]
        ax.plot(ks, [dense_ppl * (1 + math.exp(f["intercept"] + f["exponent"] * math.log(k))) for k in ks],
                color="gray", ls=":", label=f"fit: gap ~ K^{f['exponent']:.2f} (extrapolated)")
    ax.set_xscale("log")
    ax.set_xlabel("keys per query (mean over layers)")
    ax.set_ylabel(f"held-out perplexity at {TRAIN_CTX}")
    ax.set_title("asa-small size: perplexity against attention cost")
    ax.legend(fontsize=8)
    # right: past the training length, against the memory a long session holds
    for p in pts:
        if p["long"].get(32768) and p["kv"]:
            ax2.plot([p["kv"]], [p["long"][32768]], "o", color="tab:blue")
            ax2.annotate(p["name"] + (" v1" if p["name"] == "asa_small" else ""), (p["kv"], p["long"][32768]),
                         textcoords="offset points", xytext=(5, 4), fontsize=8)
    for n, b in (base or {}).items():
        if 32768 in b:
            ax2.plot([b["kv"]], [b[32768]], "s", color="black")
            ax2.annotate(n.replace("dense twin, ", "dense "), (b["kv"], b[32768]), textcoords="offset points",
                         xytext=(5, 4), fontsize=8)
    ax2.set_xscale("log")
    ax2.set_xlabel("KV rows held at 32k (max)")
    ax2.set_ylabel("perplexity at 32k context")
    ax2.set_title("past the training length: perplexity against KV memory")
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", type=Path, default=RESULTS, help="the committed batch results (asa_v2 install)")
    ap.add_argument("--out", type=Path, default=RESULTS / "frontier", help="writes frontier.{json,md,png}")
    ap.add_argument("--no-plot", action="store_true")
    a = ap.parse_args(argv)
    ppl = trained_ppl(a.results)
    if "dense" not in ppl:
        raise SystemExit("no dense twin among the committed results: nothing to compare with")
    long, base = long_context(a.results)
    pts = pooled(ppl, costs(a.results), long)
    dense_ppl = next(p["ppl"] for p in pts if p["name"] == "dense")
    front = pareto(pts)
    f = fit(front, dense_ppl)
    a.out.mkdir(parents=True, exist_ok=True)
    md = markdown(pts, front, f, dense_ppl, base)
    for name, text in (("frontier.json", json.dumps({"points": pts, "fit": f, "dense_baselines": base}, indent=1)
                        + "\n"),
                       ("frontier.md", md)):
        tmp = a.out / f"{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, a.out / name)
    if not a.no_plot:
        plot(pts, front, f, dense_ppl, a.out / "frontier.png", base)
    print(md)


if __name__ == "__main__":
    main()
