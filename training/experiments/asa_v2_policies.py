"""What issue 16's plan policies cost and reach, before (or without) training them: no model, CPU only.

For each policy of asa_v2.MODELS, on the held-out book sequences asa_v2 evaluates on (up to 32k tokens from
each of the 4 book starts): keys per query (averaged over the layers for a layer-dependent plan: what the
attention computes), the KV rows an evicting session keeps (sampled every 64 tokens over the first book), how
far rows reach and how often the row that predicts a recurring word holds its last mention, and the planner's
time here. Beside them, the held-out perplexity of the policies a device batch has trained (batch 1, batch 2,
the scale point, the second seeds); the others say "not trained".

    asa-train prepare --out runs/asa_prep ... (asa_v2.py's docstring; --train-words 20000 is enough here:
        only the held-out split is read)
    python -m training.experiments.asa_v2_policies [--models a,b,...] [--out training/results/asa_v2/policies]
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from training.experiments import asa_v2

RESULTS = asa_v2.REPO / "training" / "results" / "asa_v2"
DEFAULT = ("local_w64", "w64", "coh4_w64", "coh4_w64_sk16", "coh4_w64_st256", "coh4_w64_k128", "coh4_w128",
           "coh4_w64_wide2", "st64_k192_wide2", "coh4_w256_wide2", "coh4_w256")


def trained_ppl(results: Path = RESULTS) -> dict[str, float]:
    """Held-out perplexity (every 2048 window, final checkpoint) of each trained model, from the committed
    results of the device batches: batch 1's transcription, batch 2 (the folder itself), then every batch
    installed in a subfolder (`asa_v2 install --to training/results/asa_v2/<batch>`), in name order."""
    out = {}
    b1 = results / "batch1.json"
    if b1.is_file():
        out.update({n: m["valid_ppl"] for n, m in json.loads(b1.read_text())["models"].items() if m.get("valid_ppl")})
    for f in (results / "asa_v2_results.json", *sorted(results.glob("*/asa_v2_results.json"))):
        if f.is_file():
            for n, m in json.loads(f.read_text())["models"].items():
                ppl = m.get("summary", {}).get("final", {}).get("valid", {}).get("ppl_bpe")
                if ppl:
                    out[n] = ppl                    # batch 2 re-trained w64: its number replaces batch 1's
    return out


def measure(names, s: asa_v2.Setup, n_layer: int = 8, log=print) -> dict:
    from training.long_context import plan_sequences
    from training.prepare import Prepared

    prep = Prepared.open(s.prep)
    pieces, _, books, _, targets = asa_v2.held_out(s, prep)
    tokens = sum(len(b) - 1 for b in books)
    out = {"books": len(books), "tokens": tokens, "workers": s.n_workers(), "policies": {}}
    for n in names:
        spec = asa_v2.MODELS[n]
        cfg = spec.plan_config()
        t0 = time.time()
        plans = plan_sequences(cfg, pieces, [b[:-1] for b in books], s.n_workers())
        plan_s = time.time() - t0
        r = {"label": spec.label, "plan": cfg.to_dict(), "plan_s": round(plan_s, 1),
             **asa_v2.plan_stats(cfg, n_layer, plans, pieces, books, targets)}
        out["policies"][n] = r
        log(f"{n}: {r['mean_keys_layers']:.1f} keys/query, KV max {r['kv_bound']['max']}, {plan_s:.0f} s")
    return out


def markdown(res: dict, ppl: dict[str, float]) -> str:
    lines = ["# Plan policies: cost and reach (issue 16)", "",
             f"{res['books']} held-out book sequences, {res['tokens']:,} tokens; no model "
             f"(`python -m training.experiments.asa_v2_policies`). Keys per query are averaged over the 8 layers "
             "(a layer-dependent plan's narrow layers read fewer); KV rows: what an evicting session keeps over "
             "the first book (32k tokens), every layer holding the wide plan's rows; reach excludes the sinks; "
             "\"last mention\": share of recurring words whose predicting row holds a token of their last "
             "mention, by gap. Planner time: this machine, "
             f"{res['workers']} processes.", "",
             "| policy | plan | keys / query, all layers (whole rows) | rows holding k keys | KV rows max (mean) | "
             "rows reaching > 2048 | last mention, gap 256-2048 / > 2048 | planner s | held-out ppl |",
             "|---|---|---|---|---|---|---|---|---|"]
    for n, r in res["policies"].items():
        x = r["reach"]
        hit = x.get("targets_reaching_last_mention", {})
        share = " / ".join(f"{100 * hit[b]['share']:.0f}%" if b in hit else "–" for b in ("gap 256-2048", "gap > 2048"))
        kv = r["kv_bound"]
        lines.append(f"| {n} | {asa_v2.plan_label(r['plan'])} | {r['mean_keys_layers']:.1f} ({x['mean_keys']:.1f}) | "
                     f"{r['rows_full']:,} | {kv['max']} ({kv['mean']:.0f}) | "
                     f"{100 * x['rows_reaching_2048']:.1f}% | {share} | {r['plan_s']:.0f} | "
                     f"{f'{ppl[n]:.2f}' if n in ppl else 'not trained'} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(DEFAULT), help="policies of asa_v2.MODELS, comma-separated")
    ap.add_argument("--prep", type=Path, default=asa_v2.Setup.prep)
    ap.add_argument("--out", type=Path, default=RESULTS / "policies", help="writes policies.json and policies.md")
    ap.add_argument("--max-books", type=int, default=0, help="book sequences read (0: all)")
    ap.add_argument("--workers", type=int, default=0, help="planner processes (0: all CPUs but 2, at least 1)")
    a = ap.parse_args(argv)
    names = [n for n in a.models.split(",") if n]
    bad = [n for n in names if n not in asa_v2.MODELS or asa_v2.MODELS[n].mode == "none"]
    if bad:
        raise SystemExit(f"unknown or dense policy: {', '.join(bad)}")
    if not (a.prep / "meta.json").is_file():
        raise SystemExit(f"{a.prep}: no prepared data; run asa-train prepare first (this module's docstring)")
    res = measure(names, asa_v2.Setup(prep=a.prep, max_books=a.max_books, workers=a.workers))
    a.out.mkdir(parents=True, exist_ok=True)
    md = markdown(res, trained_ppl())
    for name, text in (("policies.json", json.dumps(res, indent=1) + "\n"), ("policies.md", md)):
        tmp = a.out / f"{name}.tmp"                 # never a half-written result
        tmp.write_text(text)
        os.replace(tmp, a.out / name)
    print(md)


if __name__ == "__main__":
    main()
