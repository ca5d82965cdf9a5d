"""Does asa-small lose past its training length because far keys sit at relative positions it never saw?

Issue 16's long-context target: asa-small v3 scores 27.08 at 2048 tokens but 28.49 at 8k and 29.36 at 32k, while
its dense twin with a sliding window (which never sees a key more than 2048 tokens back) gets *better* with
length. ASA rows hold keys from anywhere in the document (the 4 sinks, lexical-cohesion mentions), so past 2048
tokens the attention reads RoPE rotations of distances the model was never trained on. The probe: score every
far key (distance > w) as if it were exactly w tokens back, ReRoPE-style (Su, 2023): with RoPE, q_i . k_j
depends on j - i only, and R(w) q_raw . k_raw is the score at distance w for any i, j. Near keys keep their true
distance; the plan (which keys) is unchanged. CPU, no training: `python -m training.experiments.rope_clamp_probe`
(needs runs/asa_prep, `asa-train prepare`). Session 12 ran it with its own copy of the attention; since session 13
the clamp is the runtime's (ModelConfig.rope_clamp, set here per run) and the scoring is the evaluation's own
(training.long_context.by_context), so the numbers are the product's.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from training.long_context import Method, by_context

REPO = Path(__file__).resolve().parents[2]


def main(argv=None):
    from asa_runtime.checkpoint import load_checkpoint
    from asa_runtime.registry import resolve
    from training.long_context import context_windows, plan_sequences
    from training.prepare import Prepared

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="asa-small")
    ap.add_argument("--prep", default=str(REPO / "runs" / "asa_prep"))
    # the defaults are the committed run on the evaluation's windows (rope_clamp/full; ~32 min on 2 cores)
    ap.add_argument("--contexts", default="8192,32768")
    ap.add_argument("--clamps", default="2048,none", help="w values: far keys scored at distance w")
    ap.add_argument("--max-tokens", type=int, default=131072, help="held-out tokens per context (from the start)")
    ap.add_argument("--out", default=str(REPO / "training" / "results" / "asa_v2" / "rope_clamp" / "full"))
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--plan", default="", help="serve-time plan changes, e.g. window=512,k=544 (the weights are "
                    "the model's; only the keys each query reads change)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    ck = load_checkpoint(resolve(a.model), device="cpu", dtype=torch.float32)
    model, cfg = ck.model.eval(), ck.config.plan
    if a.plan:
        try:
            cfg = replace(cfg, **{k: int(v) for k, v in (kv.split("=") for kv in a.plan.split(","))})
        except (ValueError, TypeError) as e:
            ap.error(f"--plan {a.plan!r}: {e} (expected name=integer pairs of PlanConfig, comma-separated)")
    prep = Prepared.open(Path(a.prep))
    pieces = prep.tokenizer().pieces
    ids = np.asarray(prep.tokens("valid"), dtype=np.int64)
    ctxs = [int(c) for c in a.contexts.split(",")]
    clamps = [None if c == "none" else int(c) for c in a.clamps.split(",")]

    res = {"model": a.model, "plan": cfg.to_dict(), "max_tokens": a.max_tokens, "ppl": {}, "seconds": {}}
    for L in ctxs:
        wins = context_windows(ids, L, a.max_tokens)
        plans = {L: plan_sequences(cfg, pieces, [w[:-1] for w in wins], 2)}
        for c in clamps:
            if c is not None and c >= L and None in clamps:
                continue                                   # the clamp changes nothing here: 'none' is the same run
            t = time.time()
            model.cfg.rope_clamp = c or 0
            r = by_context(model, Method(), ids, [L], a.max_tokens, "cpu", plans, log=lambda *_: None)[str(L)]
            key = f"{L}/{c or 'none'}"
            res["ppl"][key] = r["ppl"]
            res["seconds"][key] = round(time.time() - t, 1)
            print(f"context {L}, far keys at {c or 'their true distance'}: ppl {r['ppl']:.3f} "
                  f"({r['windows']} windows, {res['seconds'][key]} s)", flush=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "rope_clamp.json.tmp"
    tmp.write_text(json.dumps(res, indent=1) + "\n")
    tmp.replace(out / "rope_clamp.json")


if __name__ == "__main__":
    main()
