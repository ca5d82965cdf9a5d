"""asa-small, the default model, and its dense twin: same data, same steps, same seed.

Data: every book of the English prose corpus except 4 held-out books (ELTeC-eng + Standard Ebooks, public
domain; ../shared/data/english_prose), byte-level BPE 12,288, windows of 2,048 tokens.
Model: preset "small" (8 layers, d_model 384, 6 heads, SwiGLU 1024, tied embeddings): 18.9M parameters,
37.8 MB in fp16, so it ships inside the 40 MB budget and decodes fast on a laptop CPU.

Phases (the device cannot read ../shared/data, so tokens are made here and carried):
  1. here:    asa-train prepare --out runs/asa_prep --ctx 2048 --vocab-size 12288 --train-words 0 \
                  --valid-books 4 --valid-words 300000
  2. device:  python3 -m training.experiments.asa_small start  --budget-s 1500   (carry runs/asa_prep)
              plans (mode full) on all cores, a 30-step throughput probe of both models side by side, then
              both trainings in the background (setsid) with the same --max-steps sized to the budget.
  3. device:  python3 -m training.experiments.asa_small watch --seconds 540     (keeps the lease, prints progress)
  4. device:  python3 -m training.experiments.asa_small finish --out $OUT
              waits for both, perplexity by context length (512 ... 8192) for both, sample generations,
              the fp16 model folder of asa-small (sharded) and the twin's results, into $OUT.
  5. here:    python -m training.experiments.asa_small install --from <files_at>  -> asa_runtime/models/asa-small
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PREP = REPO / "runs" / "asa_prep"
RUNS = REPO / "runs" / "asa_small"
MODES = {"asa": "full", "dense": "none"}
TRAIN_ARGS = ["--preset", "small", "--batch-size", "16", "--lr", "1.5e-3", "--min-lr", "1.5e-4", "--warmup", "300",
              "--seed", "0", "--eval-every", "500", "--eval-windows", "64", "--log-every", "50",
              "--ckpt-every", "500", "--final-eval", "valid,wt2_valid,wt2_test"]
CONTEXTS = (512, 1024, 2048, 4096, 8192)
PROMPTS = ("It was a dark and stormy night, and",
           "The old man looked at the children and said",
           "She opened the letter slowly. Inside, she found",
           "In the morning the ship")


def env():
    return {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "4"}


def train_cmd(name: str, out: Path, max_steps: int, extra=()):
    return [sys.executable, "-m", "training.cli", "train", "--data", str(PREP), "--out", str(out),
            "--mode", MODES[name], "--max-steps", str(max_steps), *TRAIN_ARGS, *extra]


def last_metric(path: Path, kind="train"):
    rec = None
    if path.is_file():
        for line in path.read_text().splitlines():
            r = json.loads(line)
            if r.get("kind") == kind:
                rec = r
    return rec


def start(a):
    t0 = time.time()
    # the Triton kernels' GPU tests run on the GPU while the plans are built on the CPUs
    RUNS.mkdir(parents=True, exist_ok=True)
    gpu_log = open(RUNS / "gpu_tests.log", "w")
    gpu_tests = subprocess.Popen([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-x", "-n", "4", "-p",
                                  "no:cacheprovider", "tests/test_kernels_triton.py"], cwd=REPO, env=env(),
                                 stdout=gpu_log, stderr=subprocess.STDOUT)
    subprocess.run([sys.executable, "-m", "training.cli", "prepare", "--out", str(PREP), "--ctx", "2048",
                    "--vocab-size", "12288", "--train-words", "0", "--valid-books", "4", "--valid-words", "300000",
                    "--mode", "full", "--k", "64"], env=env(), check=True)
    print(f"plans ready at {time.time() - t0:.0f} s", flush=True)
    rc = gpu_tests.wait()
    print(f"Triton GPU tests: exit {rc}; " + (RUNS / "gpu_tests.log").read_text().strip().splitlines()[-1], flush=True)
    if rc != 0:
        os.environ["ASA_SPARSE_BACKEND"] = "torch"        # train on the portable path rather than a failing kernel
        print("training on the torch sparse path", flush=True)
    # throughput probe: both models side by side, as they will train
    probe = RUNS / "probe"
    shutil.rmtree(probe, ignore_errors=True)
    ps = [subprocess.Popen(train_cmd(n, probe / n, a.probe_steps, ["--final-eval", "valid", "--eval-every", "0"]),
                           env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT) for n in MODES]
    for p in ps:
        p.wait()
    rates = {n: (last_metric(probe / n / "metrics.jsonl") or {}).get("tok_s") for n in MODES}
    print("probe tok/s side by side:", rates, flush=True)
    slow = min(r for r in rates.values() if r) if any(rates.values()) else 20000.0
    budget = a.budget_s - (time.time() - t0)
    steps = int(0.85 * budget * slow / (16 * 2048))
    print(f"max_steps {steps} for both (budget {budget:.0f} s at {slow:,.0f} tok/s)", flush=True)
    (RUNS / "plan.json").write_text(json.dumps({"max_steps": steps, "probe_tok_s": rates, "budget_s": a.budget_s}))
    for n in MODES:
        log = open(RUNS / f"{n}.log", "w")
        subprocess.Popen(train_cmd(n, RUNS / n, steps, ["--time-budget-s", str(int(budget))]), env=env(),
                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)   # outlives this call
    a.seconds = a.call_s - (time.time() - t0)
    watch(a)


def status():
    for n in MODES:
        r = last_metric(RUNS / n / "metrics.jsonl")
        e = last_metric(RUNS / n / "metrics.jsonl", "eval")
        print(n, "train:", r and {k: r[k] for k in ("step", "loss", "tok_s", "elapsed_s")},
              "eval:", e and {k: e[k] for k in ("step", "ppl")}, flush=True)


def watch(a):
    t_end = time.time() + a.seconds
    while time.time() < t_end:
        status()
        if all((RUNS / n / "summary.json").is_file() for n in MODES):
            break
        time.sleep(min(60, max(1, t_end - time.time())))


def ppl_by_context(model_dir: Path, device: str, max_tokens: int = 131072) -> dict:
    """Perplexity per BPE token on held-out books, windows of each context length (whole window scored)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from asa_runtime.checkpoint import load_checkpoint
    from asa_runtime.linguistics.planner import Planner

    ck = load_checkpoint(model_dir, device=device)
    model, tok = ck.model.eval(), ck.tokenizer
    planner = Planner(ck.config.plan)
    ids = np.memmap(PREP / "valid.tokens.u16", dtype=np.uint16, mode="r")[:max_tokens].astype(np.int64)
    out = {}
    for L in CONTEXTS:
        n = len(ids) // (L + 1)
        nll, cnt = 0.0, 0
        for w in range(n):
            seq = ids[w * (L + 1): (w + 1) * (L + 1)]
            x = torch.from_numpy(seq[:-1])[None].to(device)
            y = torch.from_numpy(seq[1:])[None].to(device)
            keys = planner.plan([tok.pieces[i] for i in seq[:-1]])
            keys = None if keys is None else torch.from_numpy(keys)[None].to(device)
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
                logits = model(x, keys)
            nll += F.cross_entropy(logits.float()[0], y[0], reduction="sum").item()
            cnt += L
        out[str(L)] = {"ppl": math.exp(nll / max(cnt, 1)), "windows": n, "tokens": cnt}
        print(model_dir.parent.name, L, out[str(L)], flush=True)
    return out


def finish(a):
    import torch

    from asa_runtime.checkpoint import load_checkpoint, save_checkpoint
    from asa_runtime.generate import from_model, generate

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t_end = time.time() + a.wait_s
    while not all((RUNS / n / "summary.json").is_file() for n in MODES) and time.time() < t_end:
        status()
        time.sleep(20)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    res = {"plan": json.loads((RUNS / "plan.json").read_text())}
    for n in MODES:
        res[n] = {"summary": json.loads((RUNS / n / "summary.json").read_text()),
                  "ppl_by_context": ppl_by_context(RUNS / n / "model", dev)}
        ck = load_checkpoint(RUNS / n / "model", device="cpu")
        lm = from_model(ck.model.eval(), ck.tokenizer)
        torch.manual_seed(0)
        res[n]["samples"] = {p: generate(lm, p, max_tokens=80, temp=0.8, top_p=0.95, seed=0) for p in PROMPTS}
        shutil.copy(RUNS / n / "metrics.jsonl", out / f"{n}_metrics.jsonl")
    (out / "asa_small_results.json").write_text(json.dumps(res, indent=1))
    ck = load_checkpoint(RUNS / "asa" / "model", device="cpu")
    save_checkpoint(out / "asa-small", ck.model, ck.tokenizer, card="(card written at install)",
                    dtype=torch.float16, meta=ck.meta)
    print(json.dumps({n: {"ppl_by_context": res[n]["ppl_by_context"], "final": res[n]["summary"]["final"]}
                      for n in MODES}, indent=1))


def install(a):
    src = Path(a.src)
    dst = REPO / "asa_runtime" / "models" / "asa-small"
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src / "asa-small", dst)
    shutil.copy(src / "asa_small_results.json", REPO / "training" / "results" / "asa_small_results.json")
    print(f"installed {dst} ({sum(f.stat().st_size for f in dst.iterdir()) / 1e6:.1f} MB)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("phase", choices=["start", "watch", "finish", "install"])
    ap.add_argument("--budget-s", type=float, default=1500, help="start: training wall time for both runs")
    ap.add_argument("--probe-steps", type=int, default=30)
    ap.add_argument("--call-s", type=float, default=560, help="start: return after this long (the call's limit)")
    ap.add_argument("--seconds", type=float, default=540, help="watch: how long to watch")
    ap.add_argument("--wait-s", type=float, default=420, help="finish: how long to wait for the runs to end")
    ap.add_argument("--out", default="runs/asa_small_out")
    ap.add_argument("--from", dest="src", default="runs/asa_small_out")
    a = ap.parse_args()
    {"start": start, "watch": watch, "finish": finish, "install": install}[a.phase](a)


if __name__ == "__main__":
    main()
