"""Device smoke test (< 3 min): CUDA + bf16 training works, planner speed, and throughput of the tiny model
alone and with 10 runs sharing the GPU (the reproduction's layout). Needs runs/prep from
`python -m training.experiments.reproduce local` (carried). Plans here are a stand-in (the last 64
positions, same K as the real plans, so the attention cost is the same); no results of this script are
about ASA's quality.

    run(command="PYTHONUNBUFFERED=1 python3 -m training.experiments.smoke_device --out $OUT",
        carry=["runs/prep"], timeout_s=180)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]


def standin_plans(src: Path, dst: Path, K: int):
    from asa_runtime.config import PlanConfig

    dst.mkdir(parents=True, exist_ok=True)
    meta = json.loads((src / "meta.json").read_text())
    for f in src.iterdir():
        if f.name.endswith(".u16") or f.name == "tokenizer.json":
            shutil.copy(f, dst / f.name)
    ctx = meta["ctx"]
    row = np.full((ctx, K), -1, dtype=np.int16)
    for i in range(ctx):
        r = np.arange(max(0, i - K + 1), i + 1)
        row[i, : len(r)] = r
    cfg = PlanConfig(mode="full", k=K, window=K, sinks=0).to_dict()
    meta["plans"] = {"full": {"config": cfg, "k": K, "splits": ["train", "valid"]}}
    for split in ("train", "valid"):
        n = meta["splits"][split]["windows"]
        mm = np.memmap(dst / f"{split}.plan.full.i16", dtype=np.int16, mode="w+", shape=(n, ctx, K))
        mm[:] = row[None]
        mm.flush()
    (dst / "meta.json").write_text(json.dumps(meta))


def planner_speed(prep: Path, windows: int = 8) -> dict:
    try:
        from asa_runtime.config import PlanConfig
        from asa_runtime.linguistics.planner import Planner
        from training.prepare import Prepared

        p = Prepared.open(prep)
        pieces, tok, ctx = p.tokenizer().pieces, p.tokens("train"), p.ctx
        planner = Planner(PlanConfig(mode="full", k=64))
        planner.plan([pieces[t] for t in tok[:ctx]])             # load the analyzer once
        t = time.time()
        rows = [planner.plan([pieces[t] for t in tok[w * ctx:(w + 1) * ctx]]) for w in range(windows)]
        dt = time.time() - t
        mean_keys = float(np.mean([(r >= 0).sum(-1).mean() for r in rows]))
        return {"tok_per_s_one_core": round(windows * ctx / dt), "mean_keys": round(mean_keys, 1)}
    except Exception as e:  # the planner's artifacts may not be built yet
        return {"error": f"{type(e).__name__}: {e}"}


def launch(prep, out, mode, seed, budget, steps=100000, final_eval="valid", extra=()):
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2"}
    args = [sys.executable, "-m", "training.cli", "train", "--data", str(prep), "--out", str(out), "--mode", mode,
            "--seed", str(seed), "--preset", "tiny", "--batch-size", "32", "--max-steps", str(steps),
            "--eval-every", "0", "--final-eval", final_eval, "--log-every", "10", "--time-budget-s", str(budget),
            "--device", "cuda", *extra]
    log = open(str(out) + ".log", "w")
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT), log


def tok_s(run: Path) -> float | None:
    f = run / "metrics.jsonl"
    if not f.is_file():
        return None
    recs = [json.loads(l) for l in f.read_text().splitlines()]
    tr = [r for r in recs if r["kind"] == "train"][2:]          # skip warm-up
    return round(float(np.median([r["tok_s"] for r in tr])), 0) if tr else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prep", default="runs/prep")
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", default="runs/smoke")
    a = ap.parse_args()
    import torch

    res = {"torch": torch.__version__, "cuda": torch.cuda.is_available(),
           "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "cpus": os.cpu_count()}
    print(res, flush=True)
    work = Path(a.work)
    shutil.rmtree(work, ignore_errors=True)
    sp = work / "prep"
    standin_plans(Path(a.prep), sp, 64)
    res["planner"] = planner_speed(Path(a.prep))
    print("planner", res["planner"], flush=True)

    # alone: one dense, one sparse (sequential, 20 s of training each), then 2 dense + 8 sparse together
    for mode in ("none", "full"):
        p, log = launch(sp, work / f"alone_{mode}", mode, 0, 20)
        p.wait()
        log.close()
        res[f"alone_{mode}_tok_s"] = tok_s(work / f"alone_{mode}")
        print(mode, "alone", res[f"alone_{mode}_tok_s"], "tok/s", flush=True)
    smi = subprocess.Popen(["nvidia-smi", "--query-gpu=memory.used,utilization.gpu", "--format=csv,noheader",
                            "-l", "5"], stdout=open(work / "smi.log", "w"))
    procs = [launch(sp, work / f"conc_{m}_{i}", m, i, 40, final_eval="") for i, m in enumerate(["none"] * 2 + ["full"] * 8)]
    for p, log in procs:
        p.wait()
        log.close()
    smi.terminate()
    res["concurrent_tok_s"] = {d.name: tok_s(d) for d in sorted(work.glob("conc_*")) if d.is_dir()}
    res["concurrent_steps"] = {d.name: json.loads((d / "summary.json").read_text())["steps"]
                               for d in sorted(work.glob("conc_*")) if (d / "summary.json").is_file()}
    res["smi"] = (work / "smi.log").read_text().splitlines()
    res["final_valid_alone"] = {m: json.loads((work / f"alone_{m}" / "summary.json").read_text())["final"]
                                for m in ("none", "full") if (work / f"alone_{m}" / "summary.json").is_file()}
    print(json.dumps(res, indent=1), flush=True)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "smoke.json").write_text(json.dumps(res, indent=1))
    with open(Path(a.out) / "logs.txt", "w") as f:
        for lg in sorted(work.glob("*.log")):
            f.write(f"==== {lg.name}\n" + "\n".join(lg.read_text().splitlines()[-8:]) + "\n")


if __name__ == "__main__":
    main()
