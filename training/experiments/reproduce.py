"""The research's experiments, reproduced: 5 modes x 2 seeds of the tiny model, same data, steps and seeds,
then H6 on the dense models and one comparison report.

Two phases, because the device machine cannot read ../shared/data (only the repository travels):

  1. here (CPU, ~1 min): tokenizer + token ids of a WikiText-2-sized slice into runs/prep (~10 MB, git-ignored)
       python -m training.experiments.reproduce local
  2. on the device (one call, <= 10 min), carrying runs/prep:
       run(command="PYTHONUNBUFFERED=1 python3 -m training.experiments.reproduce device --out $OUT",
           carry=["runs/prep"], timeout_s=600)
     -> plans for the 4 ASA modes (all CPU cores), the 10 runs CONCURRENTLY on the one GPU as background
        processes (same --max-steps; a --time-budget-s guard keeps the call inside its limit), final eval on
        the held-out books and WikiText-2 valid/test, H6 on both dense models (plan as trained, and
        bonds only: window 0, sinks 0), `asa-train compare`. Results come back in $OUT:
        report.md, compare.json, loss_curves.png and reproduction.tar.gz (results/ with every plot, and every
        run's metrics, summary, logs, H6 json).
  3. here: unpack into training/results/ and commit (JSON, markdown, PNG; no weights).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ASA_MODES = ("full", "pos_only", "features_only", "random", "random_bonds")
ALL_MODES = ("none",) + ASA_MODES


def sh(args: list[str], log=None, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2"}
    return subprocess.Popen([sys.executable, "-m", "training.cli", *args], cwd=REPO, env=env,
                            stdout=log or None, stderr=subprocess.STDOUT if log else None, **kw)


def prep_args(a) -> list[str]:
    return ["prepare", "--out", a.prep, "--ctx", str(a.ctx), "--vocab-size", str(a.vocab_size), "--train-words",
            str(a.train_words), "--valid-books", "4", "--valid-words", str(a.valid_words)] + \
        (["--no-wikitext"] if a.no_wikitext else [])


def run_ok(args: list[str]):
    p = sh(args)
    if p.wait() != 0:
        raise SystemExit(f"failed: asa-train {' '.join(args)}")


def local(a):
    run_ok(prep_args(a))
    size = sum(f.stat().st_size for f in Path(a.prep).iterdir())
    print(f"{a.prep}: {size / 2**20:.1f} MiB (carry it to the device)")


def device(a):
    t0 = time.time()
    out = Path(a.out)
    runs = Path(a.runs)
    runs.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    # 1. plans for every ASA mode (cached in the prepared folder; multiprocessing over all cores)
    for mode in [m for m in ASA_MODES if m in a.modes]:
        t = time.time()
        run_ok(prep_args(a) + ["--mode", mode, "--k", str(a.k)])
        print(f"plans {mode}: {time.time() - t:.0f} s", flush=True)
    left = a.deadline_s - (time.time() - t0) - a.reserve_s
    print(f"prepare done at {time.time() - t0:.0f} s; training budget {left:.0f} s per run", flush=True)

    # 2. the 10 runs at once on the one GPU
    procs = []
    for seed in a.seeds:
        for mode in a.modes:
            name = f"{mode}_s{seed}"
            log = open(runs / f"{name}.log", "w")
            args = ["train", "--data", a.prep, "--out", str(runs / name), "--mode", mode, "--seed", str(seed),
                    "--preset", a.preset, "--batch-size", str(a.batch_size), "--max-steps", str(a.max_steps),
                    "--warmup", str(a.warmup), "--lr", str(a.lr), "--min-lr", str(a.lr / 10),
                    "--eval-every", str(a.eval_every), "--eval-windows", str(a.eval_windows), "--log-every", "25",
                    "--time-budget-s", str(max(30, int(left))), "--device", a.device]
            if a.compile:
                args.append("--compile")
            procs.append((name, sh(args, log=log), log))
    for name, p, log in procs:
        rc = p.wait()
        log.close()
        print(f"{name}: exit {rc}", flush=True)
    print(f"training done at {time.time() - t0:.0f} s", flush=True)

    # 3. H6 on the dense models: the plan as trained, and bonds only (no window, no sinks)
    for seed in a.seeds:
        dense = runs / f"none_s{seed}"
        if not (dense / "model" / "config.json").is_file():
            continue
        for tag, extra in (("trained", []), ("bonds", ["--window", "0", "--sinks", "0"])):
            p = sh(["h6", "--model", str(dense / "model"), "--data", a.prep, "--mode", "full", "--windows",
                    str(a.h6_windows), "--device", a.device, "--json", str(dense / f"h6_{tag}.json"), *extra])
            p.wait()
    print(f"h6 done at {time.time() - t0:.0f} s", flush=True)

    # 4. report + bundle (no weights)
    res = out / "results"
    p = sh(["compare", *[str(d) for d in sorted(runs.iterdir()) if d.is_dir()], "--out", str(res)])
    p.wait()
    for name in ("report.md", "compare.json", "loss_curves.png"):      # $OUT returns at most 8 files
        if (res / name).is_file():
            shutil.copy(res / name, out / name)
    with tarfile.open(out / "reproduction.tar.gz", "w:gz") as tar:
        tar.add(res, arcname="results")
        for f in sorted(runs.rglob("*")):
            if f.is_file() and (f.suffix in (".json", ".jsonl", ".log") or f.name == "README.md") \
                    and "state" not in f.parts and f.name != "tokenizer.json":
                tar.add(f, arcname=str(f.relative_to(runs.parent)))
        tar.add(Path(a.prep) / "meta.json", arcname="prep_meta.json")
    shutil.rmtree(res)
    (out / "timing.json").write_text(json.dumps({"total_s": round(time.time() - t0, 1)}) + "\n")
    print(f"all done at {time.time() - t0:.0f} s", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("phase", choices=["local", "device"])
    ap.add_argument("--prep", default="runs/prep")
    ap.add_argument("--runs", default="runs/repro")
    ap.add_argument("--out", default="runs/repro_out")
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--vocab-size", type=int, default=16384)
    ap.add_argument("--train-words", type=int, default=2_000_000)
    ap.add_argument("--valid-words", type=int, default=250_000)
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--no-wikitext", action="store_true", help="(dry runs) skip WikiText-2")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--modes", nargs="+", default=list(ALL_MODES), choices=ALL_MODES,
                    help="modes to train (random_bonds: the control that keeps the local window and sinks)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-steps", type=int, default=4000)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--eval-windows", type=int, default=512, help="held-out windows per periodic eval")
    ap.add_argument("--h6-windows", type=int, default=128)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--device", default="cuda", help="cpu for a dry run of the pipeline")
    ap.add_argument("--deadline-s", type=float, default=560, help="whole device phase must end by then")
    ap.add_argument("--reserve-s", type=float, default=90, help="kept for final eval, H6 and the report")
    a = ap.parse_args()
    local(a) if a.phase == "local" else device(a)


if __name__ == "__main__":
    main()
