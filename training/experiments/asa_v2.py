"""asa-small v2, first device batch (issue 16): fair baselines, a local-only control, one plan policy.

Trained side by side on one GPU, with asa-small's data, steps (5170), schedule and seed:
  dense   mode none: the dense twin, re-created (its checkpoint was never kept)
  local   mode local: self, word, 4 sinks, window 16, k 64, no bonds (the locality control at asa-small's K)
  w64     mode full, window 64, k 96 (the window is the one thing changed; K grows so that the window
          leaves the bonds their room: at k 64 a 64-token window would fill every row)
and evaluated beside asa-small itself (the shipped weights, mode full, k 64, window 16), every model by
context (512 ... 32k), by position in held-out books (sequences of 32k from each book start) and on the
far-context measure (training/far_context.py); the dense twin also with the fair bounded-KV baselines:
a sliding window of 2048 and of 512, and StreamingLLM sinks (4) + window with the same KV (2044, 508).

Phases (the device cannot read ../shared/data: tokens are made here and carried, as for asa-small):
  here:    asa-train prepare --out runs/asa_prep --ctx 2048 --vocab-size 12288 --train-words 0 --valid-books 4 \
               --valid-words 300000 --tokenizer asa_runtime/models/asa-small/tokenizer.json --no-wikitext
           python -m training.experiments.asa_v2 pack                      # -> runs/carry_prep (~23 MB)
           python -m training.experiments.carry_parts split runs/carry_prep --parts 2   # the tree (43.6 MB) +
               23.7 MB is over a call's 64 MiB: carry it in two parts (training/experiments/carry_parts.py)
  device:  call 0 (carry runs/carry_prep.part1): python3 -m training.experiments.carry_parts stash runs/carry_prep.part1
  device:  python3 -m training.experiments.carry_parts stash runs/carry_prep.part2 && python3 -m
               training.experiments.carry_parts join runs/carry_prep && \
           python3 -m training.experiments.asa_v2 start  --call-s 540      (carry runs/carry_prep.part2)
               unpacks, starts a detached supervisor (setsid: it outlives the call) that trains dense at once,
               builds each policy's plans on the CPUs (dense training meanwhile), starts each policy's
               training when its plans are ready, evaluates each model as soon as it is trained (asa-small
               first) and writes the report; `start` itself watches until --call-s.
  device:  python3 -m training.experiments.asa_v2 watch  --seconds 570     (keeps the lease, prints progress)
  device:  python3 -m training.experiments.asa_v2 finish --out $OUT        waits for the report (--wait-s),
               puts asa_v2_results.json, asa_v2.md and runs.tar.gz (metrics, summaries, logs) into $OUT;
               --export best also puts the fp16 weights of the best ASA model that the ship rule
               accepts there (asa_v2_ship.pick; asa_v2_ship.py ships them).
  here:    python -m training.experiments.asa_v2 install --from <files_at> -> training/results/asa_v2/
               (--to training/results/asa_v2/<batch> for a later batch: scale/, seeds/)

Resumable: `start` again (same machine) relaunches a supervisor if none is alive; it keeps what is done
(summary.json of a run, eval/<name>.json of an evaluation), leaves running trainers alone and restarts a
dead one from its last state (every 500 steps, --resume). runs/asa_v2/state.json says where each model is.

Later batches: --train with any of MODELS (second seeds, the medium scale point, the untried policies: more
sinks, strides, window 128, layer-dependent plans); asa_v2_policies.py measures a policy's keys, KV and reach
without training it.

Evaluated as served: `start --serve-clamp 2048` evaluates the trained full-mode models with far keys scored at
2048 (ModelConfig.rope_clamp, the clamp asa-small ships with; nothing changes up to 2048 tokens), and
`--no-shipped` skips re-evaluating the shipped model (the ship step then takes its evaluation from an earlier
batch: asa_v2_ship --shipped-eval). Session 15's batch ran both.

A dense model's evaluation also runs H6 (training/h6.py: its attention mass on the pairs asa-small v1's and v3/v4's
plans allow, against random masks of equal density; --h6-windows N validation windows, 0 skips it), and
--dense-windows 2048 keeps only the 2048-slot bounded baselines (window, sinks 4 + 2044) when time is short.

Fewer models or steps: --train dense,local (any of MODELS) and --max-steps N (N < 5170 is no longer
asa-small's budget: the report says so).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ASA_SMALL_STEPS = 5170
ASA_SMALL_PLAN = dict(k=64, window=16, sinks=4, stride=0, lookback_words=96, cross_sentence=True)
TRAIN_ARGS = ["--preset", "small", "--batch-size", "16", "--lr", "1.5e-3", "--min-lr", "1.5e-4", "--warmup", "300",
              "--eval-every", "500", "--eval-windows", "64", "--log-every", "50", "--ckpt-every", "500",
              "--final-eval", "valid"]                     # asa_small.py's, minus WikiText-2 (not carried)
# the scale point: the medium preset (~48M), a learning rate for its width, the same tokens and schedule shape;
# the time budget only guards the device lease (a run cut by it says "stopped: time_budget" in its summary)
# 4000 steps (131M tokens, 5.3 epochs; asa-small: 5170, 169M, 6.9): two of them fit one session's lease
MEDIUM_ARGS = ("--preset", "medium", "--lr", "1e-3", "--min-lr", "1e-4", "--max-steps", "4000",
               "--time-budget-s", "950")
# the same at ~3 epochs (2300 steps, 75M tokens): session 8's medium runs overfit past ~3-3.5 epochs (their
# eval minimum), so the scale comparison at 4000 steps says more about the data than about the size
MEDIUM3_ARGS = (*MEDIUM_ARGS, "--max-steps", "2300")
DENSE_WINDOWS = (2048, 512)                             # KV slots of the bounded dense baselines
SINKS = 4


@dataclass(frozen=True)
class Spec:
    name: str
    mode: str                        # plan mode ("none": dense)
    plan: dict = field(default_factory=dict)   # PlanConfig fields over asa-small's
    seed: int = 0
    label: str = ""
    shipped: bool = False            # not trained here: the package's asa-small
    args: tuple = ()                 # trainer options over TRAIN_ARGS (the last value of an option wins)

    def plan_config(self):
        from asa_runtime.config import PlanConfig

        return PlanConfig(mode=self.mode, **{**ASA_SMALL_PLAN, **self.plan})


COH4_W64 = {"cohesion": 4, "window": 64, "k": 96}        # the shipped asa-small v2's policy
MODELS = {s.name: s for s in (
    Spec("dense", "none", label="dense twin"),
    Spec("local", "local", label="local only (k 64, window 16)"),
    Spec("w64", "full", {"window": 64, "k": 96}, label="ASA full, window 64, k 96"),
    Spec("local_w64", "local", {"window": 64, "k": 96}, label="local only, window 64, k 96"),
    Spec("asa_small", "full", label="asa-small (shipped)", shipped=True),
    Spec("coh4", "full", {"cohesion": 4}, label="ASA full + lexical cohesion 4 (k 64, window 16)"),
    Spec("coh4_w64", "full", COH4_W64,
         label="ASA full + lexical cohesion 4, window 64, k 96"),
    # second seeds of the finalist and its control
    Spec("coh4_w64_s1", "full", COH4_W64, seed=1,
         label="ASA full + lexical cohesion 4, window 64, k 96, seed 1"),
    Spec("local_w64_s1", "local", {"window": 64, "k": 96}, seed=1, label="local only, window 64, k 96, seed 1"),
    # the other policies, each one change from the shipped coh4_w64 (UNTRAINED until a device batch:
    # `start --train ...`; their plans' cost is measured here by asa_v2_policies.py)
    Spec("coh4_w64_sk16", "full", {**COH4_W64, "sinks": 16}, label="coh4_w64 with 16 sinks"),
    Spec("coh4_w64_st256", "full", {**COH4_W64, "stride": 256}, label="coh4_w64 + strided keys every 256"),
    Spec("coh4_w64_k128", "full", {**COH4_W64, "k": 128}, label="coh4_w64 with k 128"),
    Spec("coh4_w128", "full", {**COH4_W64, "window": 128, "k": 160},
         label="ASA full + lexical cohesion 4, window 128, k 160"),
    # layer-dependent: the whole row in layers 3 and 7 only, the others its sinks + nearest keys
    Spec("coh4_w64_wide2", "full", {**COH4_W64, "narrow_k": 68, "wide_layers": (3, 7)},
         label="coh4_w64 in layers 3, 7; sinks + nearest 64 elsewhere"),
    Spec("st64_k192_wide2", "full", {**COH4_W64, "stride": 64, "k": 192, "narrow_k": 72, "wide_layers": (3, 7)},
         label="coh4_w64 + strided keys every 64, k 192, in layers 3, 7; sinks + nearest 68 elsewhere"),
    # what wide2 says (session 10: six window-only layers lose nothing at 2048): spend the two wide layers'
    # keys on a longer window (256) instead; the narrow layers stay sinks + nearest 64
    Spec("coh4_w256_wide2", "full", {**COH4_W64, "window": 256, "k": 288, "narrow_k": 68, "wide_layers": (3, 7)},
         label="coh4 + window 256, k 288, in layers 3, 7; sinks + nearest 64 elsewhere"),
    # the frontier's fit (asa_v2_frontier: the gap falls as ~K^-0.96) puts the 2% target at ~270 keys per
    # query: the same 256 window in every layer (~260 keys) tests it directly
    Spec("coh4_w256", "full", {**COH4_W64, "window": 256, "k": 288},
         label="ASA full + lexical cohesion 4, window 256, k 288"),
    # session 12's batch put coh4_w256 (+0.8%) and coh4_w256_wide2 (+0.6%) within the 2% target on one seed:
    # their second seeds, and the locality control at the same window and K (does the linguistics still buy
    # anything once the window is 256?)
    Spec("coh4_w256_s1", "full", {**COH4_W64, "window": 256, "k": 288}, seed=1,
         label="ASA full + lexical cohesion 4, window 256, k 288, seed 1"),
    Spec("coh4_w256_wide2_s1", "full", {**COH4_W64, "window": 256, "k": 288, "narrow_k": 68, "wide_layers": (3, 7)},
         seed=1, label="coh4 + window 256, k 288, in layers 3, 7; sinks + nearest 64 elsewhere, seed 1"),
    Spec("local_w256", "local", {"window": 256, "k": 288}, label="local only, window 256, k 288"),
    Spec("local_w256_s1", "local", {"window": 256, "k": 288}, seed=1, label="local only, window 256, k 288, seed 1"),
    # session 14's serve-time probe (rope_clamp_probe --plan cohesion=8,k=320): asa-small v3 (trained with 4
    # mentions) scores 0.2-0.45% better when served 8; trained with 8 is the next policy to try (UNTRAINED)
    Spec("coh8_w256", "full", {**COH4_W64, "cohesion": 8, "window": 256, "k": 320},
         label="ASA full + lexical cohesion 8, window 256, k 320"),
    # session 15: seed 1 of coh4_w256 (shipped as v4) and coh8_w256 beat the dense twin's bounded-KV baselines at
    # 8k / 32k by 0.1-0.4%, seed 0 of coh4_w256 lost by 0.5-0.7%: the margins are inside the seed spread.
    # A second dense seed measures the baselines' own spread; the other two firm up the ASA side (UNTRAINED)
    Spec("dense_s1", "none", seed=1, label="dense twin, seed 1"),
    Spec("coh8_w256_s1", "full", {**COH4_W64, "cohesion": 8, "window": 256, "k": 320}, seed=1,
         label="ASA full + lexical cohesion 8, window 256, k 320, seed 1"),
    Spec("coh4_w256_s2", "full", {**COH4_W64, "window": 256, "k": 288}, seed=2,
         label="ASA full + lexical cohesion 4, window 256, k 288, seed 2"),
    # one size above asa-small: the finalist policy and its dense twin
    Spec("dense_m", "none", args=MEDIUM_ARGS, label="dense twin, medium (48M)"),
    Spec("coh4_w64_m", "full", COH4_W64, args=MEDIUM_ARGS,
         label="ASA full + lexical cohesion 4, window 64, k 96, medium (48M)"),
    Spec("dense_m3", "none", args=MEDIUM3_ARGS, label="dense twin, medium (48M), 2300 steps (3 epochs)"),
    Spec("coh4_w64_m3", "full", COH4_W64, args=MEDIUM3_ARGS,
         label="ASA full + lexical cohesion 4, window 64, k 96, medium (48M), 2300 steps (3 epochs)"),
    # the scale point for today's best policy (asa-small v3/v4's plan) beside dense_m3 (UNTRAINED)
    Spec("coh4_w256_m3", "full", {**COH4_W64, "window": 256, "k": 288}, args=MEDIUM3_ARGS,
         label="ASA full + lexical cohesion 4, window 256, k 288, medium (48M), 2300 steps (3 epochs)"),
)}
DEFAULT_TRAIN = ("dense", "local", "w64")
# H6 on every trained dense model: how much of its attention falls on the pairs these plans allow (the research's
# plan, asa-small v1's, and today's asa-small v3/v4's), against a random mask of equal density: the issue asks
# whether H6 still holds one size up; the reproduction measured it on the tiny models only
H6_PLANS = ("asa_small", "coh4_w256")


# ---- paths and settings (one object, so a test can point everything at a temporary folder) -----------
@dataclass
class Setup:
    prep: Path = REPO / "runs" / "asa_prep"
    runs: Path = REPO / "runs" / "asa_v2"
    carry: Path = REPO / "runs" / "carry_prep"
    train: tuple = DEFAULT_TRAIN
    max_steps: int = ASA_SMALL_STEPS
    train_args: tuple = tuple(TRAIN_ARGS)
    contexts: tuple = (512, 1024, 2048, 4096, 8192, 16384, 32768)
    max_tokens: int = 131072
    seq_len: int = 32768
    dense_windows: tuple = DENSE_WINDOWS
    shipped_dir: str = ""            # asa-small's folder ("" = the package's)
    workers: int = 0                 # plan processes (0: all CPUs but 2)
    max_books: int = 0               # book sequences evaluated (0: all; a cap for quick checks)
    serve_clamp: int = 0             # evaluate trained full-mode models with this rope_clamp (the product
                                     # serves asa-small with 2048); 0: as trained
    shipped: bool = True             # evaluate the shipped asa-small beside the trained models
    h6_windows: int = 64             # a dense model's H6 (training/h6.py) on this many held-out windows; 0: skip

    @classmethod
    def load(cls, runs: Path) -> "Setup":
        d = json.loads((runs / "setup.json").read_text())
        return cls(**{k: (Path(v) if k in ("prep", "runs", "carry") else tuple(v) if isinstance(v, list) else v)
                      for k, v in d.items()})

    def save(self):
        self.runs.mkdir(parents=True, exist_ok=True)
        d = {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
             for k, v in self.__dict__.items()}
        (self.runs / "setup.json").write_text(json.dumps(d, indent=1) + "\n")

    def evaluated(self) -> list[str]:
        return [n for n in self.train if n in MODELS] + (["asa_small"] if self.shipped else [])

    def n_workers(self) -> int:
        return self.workers or max(1, (os.cpu_count() or 3) - 2)


def env():
    return {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "4"}


def log(msg: str):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---- state -----------------------------------------------------------------------------------------
def read_state(s: Setup) -> dict:
    p = s.runs / "state.json"
    return json.loads(p.read_text()) if p.is_file() else {"models": {}}


def write_state(s: Setup, st: dict):
    tmp = s.runs / "state.json.tmp"
    tmp.write_text(json.dumps(st, indent=1) + "\n")
    os.replace(tmp, s.runs / "state.json")


def alive(pid) -> bool:
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError):
        return False
    try:                                                    # a zombie is not alive
        with open(f"/proc/{int(pid)}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


# ---- data ------------------------------------------------------------------------------------------
def policy_path(s: Setup, spec: Spec) -> Path:
    """Where one model's prepared data lives: runs/asa_prep itself for dense, else its policy's own folder
    (a folder holds one plan config per mode). Only a path: policy_folder makes it."""
    return s.prep if spec.mode == "none" else s.runs / f"prep_{spec.name}"


def policy_folder(s: Setup, spec: Spec) -> Path:
    """Make policy_path: for a policy, a folder of links to runs/asa_prep's tokens, for its plans."""
    root = policy_path(s, spec)
    if spec.mode == "none":
        return root
    root.mkdir(parents=True, exist_ok=True)
    for f in ("train.tokens.u16", "valid.tokens.u16", "tokenizer.json"):
        if not (root / f).exists():
            os.symlink((s.prep / f).resolve(), root / f)
    if not (root / "meta.json").is_file():
        meta = json.loads((s.prep / "meta.json").read_text())
        meta["plans"] = {}
        meta["splits"] = {k: v for k, v in meta["splits"].items() if k in ("train", "valid")}
        (root / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return root


def build_plans(s: Setup, spec: Spec):
    from training.prepare import prepare_plans

    prepare_plans(policy_folder(s, spec), spec.mode, spec.plan_config(), splits=("train", "valid"),
                  workers=s.n_workers(), progress=False, log=log)


def train_cmd(s: Setup, spec: Spec) -> list[str]:
    return [sys.executable, "-m", "training.cli", "train", "--data", str(policy_path(s, spec)),
            "--out", str(s.runs / spec.name), "--mode", spec.mode, "--max-steps", str(s.max_steps),
            "--seed", str(spec.seed), *s.train_args, *spec.args, "--resume"]


# ---- the supervisor ---------------------------------------------------------------------------------
def supervise(s: Setup, max_restarts: int = 2):
    """Train, plan, evaluate and report; everything it finished stays finished when it is run again."""
    st = read_state(s)
    st["supervisor"] = os.getpid()
    st.setdefault("started", time.time())
    models = st["models"]
    for n in s.train:
        models.setdefault(n, {"status": "waiting", "restarts": 0})
    write_state(s, st)
    procs: dict[str, subprocess.Popen] = {}

    def trained(n):
        return (s.runs / n / "summary.json").is_file()

    def launch(n):
        m = models[n]
        if trained(n):
            m["status"] = "trained"
            return
        if alive(m.get("pid")) and m.get("status") == "training":
            return                                          # a trainer from an earlier supervisor goes on
        out = open(s.runs / f"{n}.log", "a")
        p = subprocess.Popen(train_cmd(s, MODELS[n]), env=env(), stdout=out, stderr=subprocess.STDOUT,
                             cwd=REPO, start_new_session=True)
        procs[n] = p
        m.update(status="training", pid=p.pid, launched=time.time())
        log(f"training {n} (pid {p.pid})")
        write_state(s, st)

    def poll():
        for n in list(models):
            m = models[n]
            if m["status"] != "training":
                continue
            p = procs.get(n)
            running = p.poll() is None if p is not None else alive(m.get("pid"))
            if running:
                continue
            if trained(n):
                m["status"] = "trained"
                log(f"{n} trained")
            elif m["restarts"] < max_restarts:
                m["restarts"] += 1
                log(f"{n} stopped without a summary: restart {m['restarts']} from its last state")
                m["status"] = "waiting"
                launch(n)
            else:
                m["status"] = "failed"
                log(f"{n} failed; see {s.runs / (n + '.log')}")
            write_state(s, st)

    # 1. models without plans start at once; then plans for the others, one policy at a time
    for n in s.train:
        if MODELS[n].mode == "none":
            launch(n)
    for n in s.train:
        spec = MODELS[n]
        if spec.mode == "none" or trained(n):
            launch(n)
            continue
        models[n]["status"] = "planning"
        write_state(s, st)
        t0 = time.time()
        build_plans(s, spec)
        log(f"plans {n}: {time.time() - t0:.0f} s")
        models[n]["plans_s"] = round(time.time() - t0, 1)
        launch(n)
        poll()
    # 2. evaluate asa-small while the others train, then each model once it is trained
    pending = [n for n in s.evaluated() if not (s.runs / "eval" / f"{n}.json").is_file()]
    while pending:
        poll()
        ready = [n for n in pending if n == "asa_small" or models.get(n, {}).get("status") == "trained"]
        for n in ready[:1]:
            t0 = time.time()
            r = subprocess.run([sys.executable, "-m", "training.experiments.asa_v2", "evaluate", "--runs",
                                str(s.runs), "--model", n], env=env(), cwd=REPO,
                               stdout=open(s.runs / f"eval_{n}.log", "a"), stderr=subprocess.STDOUT)
            log(f"evaluated {n}: exit {r.returncode}, {time.time() - t0:.0f} s")
            pending.remove(n)
            write_report(s)
        failed = [n for n in pending if models.get(n, {}).get("status") == "failed"]
        for n in failed:
            pending.remove(n)
        if not ready:
            time.sleep(5)
    poll()
    write_report(s)
    st["status"] = "done"
    st["done"] = time.time()
    write_state(s, st)
    log("all done")


# ---- evaluation of one model -------------------------------------------------------------------------
def held_out(s: Setup, prep):
    """The held-out books as every evaluation reads them: (pieces, valid ids, book sequences, the lowercase
    vocabulary, far-context targets per book)."""
    import numpy as np

    from training import far_context as fc
    from training.long_context import book_sequences

    pieces = prep.tokenizer().pieces
    ids = np.asarray(prep.tokens("valid"), dtype=np.int64)
    books = book_sequences(ids, prep.meta["eos_id"], s.seq_len, min_len=min(1024, s.seq_len // 4))
    books = books[: s.max_books] if s.max_books else books
    lower = fc.lowercase_vocabulary(fc.words(ids, pieces))
    return pieces, ids, books, lower, [fc.find_targets(b, pieces, lower) for b in books]


def plan_stats(plan_cfg, n_layer: int, book_plans, pieces, books, targets) -> dict:
    """What a policy costs and reaches on the book sequences: `reach` (far_context.plan_reach of the rows),
    `kv_bound` (rows an evicting session keeps over the first book) and, for a layer-dependent plan,
    `reach_narrow` (its narrow layers' rows) and `mean_keys_layers` (keys per query averaged over layers:
    what the attention computes); `rows_full`: rows holding k keys (the rows a larger k could change)."""
    import numpy as np
    import torch

    from asa_runtime.linguistics.planner import Planner
    from asa_runtime.model import narrow_rows
    from training import far_context as fc

    out = {"reach": fc.plan_reach(list(book_plans), plan_cfg.sinks, targets)}
    out["mean_keys_layers"] = out["reach"]["mean_keys"]
    out["rows_full"] = int(sum((np.asarray(p)[:, -1] >= 0).sum() for p in book_plans))   # rows K capped
    if plan_cfg.narrow_k:
        narrow = [narrow_rows(torch.from_numpy(np.asarray(p)), plan_cfg.narrow_k, plan_cfg.sinks).numpy()
                  for p in book_plans]
        out["reach_narrow"] = fc.plan_reach(narrow, plan_cfg.sinks, targets)
        w = len(plan_cfg.wide_layers)
        out["mean_keys_layers"] = (w * out["reach"]["mean_keys"] + (n_layer - w) * out["reach_narrow"]["mean_keys"]) \
            / n_layer
    if books:
        out["kv_bound"] = fc.kv_bound(Planner(plan_cfg), [pieces[i] for i in books[0][:-1]])
    return out


def evaluate_model(s: Setup, name: str, device: str | None = None) -> dict:
    import torch

    from asa_runtime.checkpoint import load_checkpoint
    from training.long_context import Method, book_eval, by_context, context_windows, plan_sequences
    from training.prepare import Prepared

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    spec = MODELS[name]
    if spec.shipped:
        from asa_runtime.registry import resolve

        model_dir = Path(s.shipped_dir) if s.shipped_dir else resolve("asa-small")
    else:
        model_dir = s.runs / name / "model"
    ck = load_checkpoint(model_dir, device="cpu")          # to the GPU after the plans: fork before CUDA
    model, plan_cfg = ck.model.eval(), ck.config.plan
    if s.serve_clamp and spec.mode == "full" and not spec.shipped and not ck.config.rope_clamp:
        model.cfg.rope_clamp = s.serve_clamp              # as the product would serve it (asa-small's config)
    prep = Prepared.open(s.prep)
    sha = json.loads((Path(model_dir) / "config.json").read_text())["tokenizer"]["sha256"]
    if sha != prep.meta["tokenizer_sha256"]:
        raise SystemExit(f"{model_dir}: its tokenizer is not the one of {s.prep}")
    pieces, ids, books, lower, targets = held_out(s, prep)
    t0 = time.time()
    res = {"name": name, "label": spec.label, "model_dir": str(model_dir), "plan": plan_cfg.to_dict(),
           "rope_clamp": model.cfg.rope_clamp, "device": device, "methods": {}}
    if plan_cfg.dense:
        methods = [Method()] + [m for w in s.dense_windows
                                for m in (Method("window", w), Method("sinks", w - SINKS, SINKS))]
        ctx_plans = book_plans = None
    else:
        methods = [Method()]
        ctx_seqs = {L: context_windows(ids, L, s.max_tokens) for L in s.contexts}
        flat = [w[:-1] for L in s.contexts for w in ctx_seqs[L]] + [b[:-1] for b in books]
        plans = plan_sequences(plan_cfg, pieces, flat, s.n_workers())
        ctx_plans, k = {}, 0
        for L in s.contexts:
            ctx_plans[L] = plans[k: k + len(ctx_seqs[L])]
            k += len(ctx_seqs[L])
        book_plans = plans[k:]
        res["plan_s"] = round(time.time() - t0, 1)
        res.update(plan_stats(plan_cfg, ck.config.n_layer, book_plans, pieces, books, targets))
    model = model.to(device)
    for m in methods:
        t1 = time.time()
        r = {"kv_slots": m.kv_slots,
             "by_context": by_context(model, m, ids, s.contexts, s.max_tokens, device, ctx_plans, log=log, name=name)}
        r.update(book_eval(model, m, books, pieces, device, book_plans, lower))
        r["seconds"] = round(time.time() - t1, 1)
        res["methods"][m.name] = r
        log(f"{name} {m.name}: {r['seconds']} s")
    if plan_cfg.dense and s.h6_windows:
        res["h6"] = h6_summary(s, model, prep, device)
    summary = s.runs / name / "summary.json"
    if summary.is_file():
        res["summary"] = json.loads(summary.read_text())
    res["seconds"] = round(time.time() - t0, 1)
    out = s.runs / "eval"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json.tmp").write_text(json.dumps(res, indent=1) + "\n")
    os.replace(out / f"{name}.json.tmp", out / f"{name}.json")
    return res


def h6_summary(s: Setup, model, prep, device: str) -> dict:
    """H6 of a dense model for each of H6_PLANS on the training data's validation windows (held out from
    training, like training/h6.py's default): per plan, the share of attention mass, of above-uniform pairs and
    of each row's top 5 keys that the plan allows, overall and per layer, beside a random mask of equal density."""
    from training.h6 import run_h6

    out = {}
    for n in H6_PLANS:
        t = time.time()
        r = run_h6(model, prep, split="valid", windows=s.h6_windows, device=device, batch_size=4,
                   plan_cfg=MODELS[n].plan_config())
        out[n] = {"label": MODELS[n].label, "windows": r["windows"], "rows": r["rows"], "density": r["density"],
                  "overall": r["overall"], "layers": r["layers"], "seconds": round(time.time() - t, 1)}
        log(f"h6 {n}: mass {r['overall']['asa']['mass']:.3f} vs random {r['overall']['random']['mass']:.3f}")
    return out


# ---- report ----------------------------------------------------------------------------------------
def collect(s: Setup) -> dict:
    res = {"setup": {k: (str(v) if isinstance(v, Path) else v) for k, v in s.__dict__.items()},
           "state": read_state(s), "models": {}}
    import torch

    if torch.cuda.is_available():              # the card names the GPU (batches before session 12 did not record it)
        res["setup"]["gpu"] = torch.cuda.get_device_name(0)
    for n in s.evaluated():
        p = s.runs / "eval" / f"{n}.json"
        if p.is_file():
            res["models"][n] = json.loads(p.read_text())
    return res


def _fmt(v, nd=2):
    return "–" if v is None else f"{v:.{nd}f}"


def columns(res: dict) -> list[tuple[str, str, str]]:
    """(label, model name, method) of every scored column, the dense twin's baselines after it."""
    cols = []
    for n, r in res["models"].items():
        for m in r["methods"]:
            lab = r["label"] if m == "model" else f"dense, {m.replace(':', ' ').replace('+', ' + ')}"
            cols.append((lab, n, m))
    return cols


def plan_label(p: dict) -> str:
    """A plan config dict in a table cell: "full k96 w64 s4 coh4", a layer-dependent plan's narrow part after."""
    if p["mode"] == "none":
        return "dense"
    s = f"{p['mode']} k{p['k']} w{p['window']} s{p['sinks']}" + (f" st{p['stride']}" if p.get("stride") else "") \
        + (f" coh{p['cohesion']}" if p.get("cohesion") else "")
    if p.get("narrow_k"):
        s += f", narrow k{p['narrow_k']} but layers {','.join(map(str, p['wide_layers']))}"
    return s


def markdown(res: dict) -> str:
    cols = columns(res)
    ms = res["models"]
    steps = res["setup"]["max_steps"]
    lines = [f"# asa-small v2 (issue 16): {', '.join(res['setup']['train'])} beside the shipped asa-small", "",
             f"Trained here: {', '.join(res['setup']['train'])}, batches of 16 x 2048 tokens, "
             f"{steps} steps unless the table says otherwise"
             + (" (asa-small's budget)" if steps == ASA_SMALL_STEPS else
                f" (NOT asa-small's {ASA_SMALL_STEPS}: not comparable with its numbers)")
             + "; asa-small is the shipped model. Held-out books only (4 books, never trained on).", "",
             "## Models", "", "| model | params | plan | mean keys / query | KV rows kept (max, sampled) | "
             "held-out ppl (every 2048 window) | steps | stopped | train s |", "|---|---|---|---|---|---|---|---|---|"]
    for n, r in ms.items():
        p = r["plan"]
        plan = plan_label(p) + (f", RoPE clamp {r['rope_clamp']}" if r.get("rope_clamp") else "")
        reach = r.get("reach", {})
        if "mean_keys_layers" in r:                 # averaged over layers (a layer-dependent plan's narrow ones)
            reach = {**reach, "mean_keys": r["mean_keys_layers"]}
        kv = r.get("kv_bound", {})
        sm = r.get("summary", {})
        fin = sm.get("final", {}).get("valid", {}).get("ppl_bpe")
        params = f"{sm['params'] / 1e6:.1f}M" if sm.get("params") else "–"
        lines.append(f"| {r['label']} | {params} | {plan} | {_fmt(reach.get('mean_keys'), 1) if reach else 'all'} | "
                     f"{kv.get('max', 'grows with N') if kv else 'grows with N'} | {_fmt(fin)} | "
                     f"{sm.get('steps', '–')} | {sm.get('stopped', '–')} | {sm.get('elapsed_s', '–')} |")
    for key, title, note in (
            ("by_context", "Perplexity by context length",
             "first ~128k held-out tokens, non-overlapping windows of that length, every token scored"),
            ("by_position", "Perplexity by position in the book sequences",
             "held-out books cut into sequences of up to 32k tokens from each book start; query position")):
        lines += ["", f"## {title}", "", f"({note}; dense baselines: KV rows = window + sinks)", "",
                  "| | " + " | ".join(c[0] for c in cols) + " |", "|---|" + "---|" * len(cols)]
        rows = []
        for c in cols:
            rows += [k for k in ms[c[1]]["methods"][c[2]][key] if k not in rows]
        for k in rows:
            vals = [ms[n]["methods"][m][key].get(k, {}).get("ppl") for _, n, m in cols]
            lines.append(f"| {k} | " + " | ".join(_fmt(v) for v in vals) + " |")
    lines += ["", "## Far context: words that recur long after their last mention", "",
              "Loss (nats per token) on the first piece / the continuation pieces of names and rare (BPE-split) "
              "words, by the gap in tokens to their last mention in the same book sequence (training/far_context.py; "
              "gap > 2048 is past the training context); first mentions are the same kinds of words with nothing to "
              "copy. Words scored in brackets; a single-piece name has no continuation.", "",
              "| kind, gap | " + " | ".join(c[0] for c in cols) + " |", "|---|" + "---|" * len(cols)]
    keys = []
    for _, n, m in cols:
        for kind, b in ms[n]["methods"][m]["far_context"].items():
            keys += [(kind, x) for x in b if (kind, x) not in keys]
    for kind, b in sorted(keys):
        vals = []
        for _, n, m in cols:
            e = ms[n]["methods"][m]["far_context"].get(kind, {}).get(b)
            vals.append("–" if not e else f"{_fmt(e['first_piece']['loss'])} / {_fmt(e['continuation']['loss'])} "
                        f"({e['words']})")
        lines.append(f"| {kind}, {b} | " + " | ".join(vals) + " |")
    lines += ["", "## What the plans reach", "",
              "One plan row is one layer's direct reach (stacked layers compose rows). Distances exclude the sinks.", "",
              "| model | max key distance | p99.9 | rows reaching > 256 | rows reaching > 2048 | far targets whose "
              "predicting rows hold the last mention |", "|---|---|---|---|---|---|"]
    for n, r in ms.items():
        if "reach" not in r:
            continue
        x = r["reach"]
        hits = "; ".join(f"{b}: {100 * h['share']:.1f}% of {h['words']}"
                         for b, h in sorted(x.get("targets_reaching_last_mention", {}).items()))
        lines.append(f"| {r['label']} | {x['max_distance']} | {x['distance_p999']:.0f} | "
                     f"{100 * x['rows_reaching_256']:.2f}% | {100 * x['rows_reaching_2048']:.2f}% | {hits} |")
    h6 = [(r["label"], h) for r in ms.values() for h in r.get("h6", {}).values()]
    if h6:
        lines += ["", "## H6: where a dense model already attends", "",
                  "Share of the dense model's attention on the pairs a plan allows (training/h6.py), against a "
                  "random mask with the same keys per row; validation windows; rows the plan covers whole left out. "
                  "mass: attention mass; top 5: of each row's 5 most attended keys.", "",
                  "| dense model | plan | windows | density | mass (random) | above uniform (random) | top 5 (random) "
                  "| mass by layer |", "|---|---|---|---|---|---|---|---|"]
        for label, h in h6:
            if not h["rows"]:
                lines.append(f"| {label} | {h['label']} | {h['windows']} | – | the plan covers every row of these "
                             f"windows: nothing to compare | | | |")
                continue
            o = h["overall"]
            cell = lambda k: f"{100 * o['asa'][k]:.1f}% ({100 * o['random'][k]:.1f}%)"
            lines.append(f"| {label} | {h['label']} | {h['windows']} | {100 * h['density']:.1f}% | {cell('mass')} | "
                         f"{cell('count')} | {cell('topk')} | "
                         + " / ".join(f"{100 * x['asa']['mass']:.0f}" for x in h["layers"]) + " |")
    st = res["state"].get("models", {})
    bad = [n for n, m in st.items() if m.get("status") != "trained"]
    if bad:
        lines += ["", "Not finished: " + ", ".join(f"{n} ({st[n].get('status')})" for n in bad)]
    return "\n".join(lines) + "\n"


def write_report(s: Setup) -> dict:
    res = collect(s)
    (s.runs / "asa_v2_results.json").write_text(json.dumps(res, indent=1) + "\n")
    (s.runs / "asa_v2.md").write_text(markdown(res))
    return res


# ---- phases ------------------------------------------------------------------------------------------
def status(s: Setup):
    st = read_state(s)
    from training.experiments.asa_small import last_metric

    for n in s.train:
        m = st.get("models", {}).get(n, {})
        r = last_metric(s.runs / n / "metrics.jsonl")
        e = last_metric(s.runs / n / "metrics.jsonl", "eval")
        log(f"{n}: {m.get('status', '?')}; train " + (f"step {r['step']} loss {r['loss']:.3f} {r['tok_s']:.0f} tok/s "
                                                    f"{r['elapsed_s']:.0f} s" if r else "-")
            + (f"; eval ppl {e['ppl']:.2f} at {e['step']}" if e else ""))
    done = sorted(p.stem for p in (s.runs / "eval").glob("*.json")) if (s.runs / "eval").is_dir() else []
    log(f"evaluated: {done}; supervisor {'alive' if alive(st.get('supervisor')) else 'not running'}; "
        f"{st.get('status', 'running')}")
    return st


def watch(s: Setup, seconds: float):
    t_end = time.time() + seconds
    while True:
        st = status(s)
        if st.get("status") == "done" or time.time() >= t_end:
            return st
        time.sleep(min(60, max(1, t_end - time.time())))


def start(s: Setup, call_s: float, foreground: bool = False):
    t0 = time.time()
    if not (s.prep / "meta.json").is_file():
        unpack(s)
    s.runs.mkdir(parents=True, exist_ok=True)
    if (s.runs / "setup.json").is_file():
        old = Setup.load(s.runs)
        if (old.train, old.max_steps) != (s.train, s.max_steps):
            log(f"note: {s.runs} was started with train={old.train}, max_steps={old.max_steps}; now "
                f"train={s.train}, max_steps={s.max_steps}")
    s.save()
    st = read_state(s)
    if foreground:
        supervise(s)
        return
    if alive(st.get("supervisor")):
        log(f"supervisor {st['supervisor']} is running")
    else:
        p = subprocess.Popen([sys.executable, "-m", "training.experiments.asa_v2", "supervise", "--runs", str(s.runs)],
                             env=env(), cwd=REPO, stdout=open(s.runs / "supervisor.log", "a"),
                             stderr=subprocess.STDOUT, start_new_session=True)
        log(f"supervisor started (pid {p.pid}); log {s.runs / 'supervisor.log'}")
    watch(s, call_s - (time.time() - t0))


def finish(s: Setup, out: Path, wait_s: float, export: str = ""):
    t_end = time.time() + wait_s
    while read_state(s).get("status") != "done" and time.time() < t_end:
        status(s)
        time.sleep(15)
    res = write_report(s)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(s.runs / "asa_v2_results.json", out / "asa_v2_results.json")
    shutil.copy(s.runs / "asa_v2.md", out / "asa_v2.md")
    with tarfile.open(out / "runs.tar.gz", "w:gz") as tar:
        for n in s.train:
            for f in ("metrics.jsonl", "summary.json", "config.json"):
                if (s.runs / n / f).is_file():
                    tar.add(s.runs / n / f, arcname=f"{n}/{f}")
        for f in sorted(s.runs.glob("*.log")) + [s.runs / "state.json", s.runs / "setup.json"]:
            if f.is_file():
                tar.add(f, arcname=f.name)
    print((s.runs / "asa_v2.md").read_text())
    if export:                                          # the weights to ship (training/experiments/asa_v2_ship.py)
        from training.experiments.asa_v2_ship import export as export_model

        export_model(s.runs, res, out, export)
    return res


def install(src: Path, dst: Path = REPO / "training" / "results" / "asa_v2"):
    dst.mkdir(parents=True, exist_ok=True)
    for f in ("asa_v2_results.json", "asa_v2.md"):
        shutil.copy(src / f, dst / f)
    with tarfile.open(src / "runs.tar.gz") as tar:
        for m in tar.getmembers():
            if m.isfile() and (m.name.endswith("metrics.jsonl") or m.name.endswith("summary.json")):
                m.name = m.name.replace("/", "_")
                tar.extract(m, dst)
    print(f"installed into {dst}")


def pack(s: Setup):
    from training.experiments import asa_small

    meta = json.loads((s.prep / "meta.json").read_text()) if (s.prep / "meta.json").is_file() else {}
    words = meta.get("settings", {}).get("train_words", 0)
    if words:                   # e.g. asa_v2_policies' quick prep: carried, it would train on a sliver
        raise SystemExit(f"{s.prep} holds a {words:,}-word training slice; asa-small's data is every book: "
                         f"prepare again with --train-words 0 (this module's docstring)")
    asa_small.PREP, asa_small.CARRY = s.prep, s.carry
    asa_small.pack(None)


def unpack(s: Setup):
    from training.experiments import asa_small

    asa_small.PREP, asa_small.CARRY = s.prep, s.carry
    asa_small.unpack(None)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("phase", choices=["pack", "unpack", "start", "supervise", "watch", "status", "evaluate",
                                      "report", "finish", "install"])
    ap.add_argument("--runs", default=str(Setup.runs), help="run folder (default runs/asa_v2)")
    ap.add_argument("--prep", default=str(Setup.prep))
    ap.add_argument("--train", default=",".join(DEFAULT_TRAIN), help=f"start: models to train, of "
                    f"{[n for n in MODELS if not MODELS[n].shipped]}")
    ap.add_argument("--max-steps", type=int, default=ASA_SMALL_STEPS)
    ap.add_argument("--call-s", type=float, default=570, help="start: return after this long")
    ap.add_argument("--seconds", type=float, default=570, help="watch: how long")
    ap.add_argument("--wait-s", type=float, default=420, help="finish: how long to wait for the supervisor")
    ap.add_argument("--model", help="evaluate: which model")
    ap.add_argument("--foreground", action="store_true", help="start: supervise in this process (tests)")
    ap.add_argument("--serve-clamp", type=int, default=0, help="start: evaluate the trained full-mode models "
                    "with this rope_clamp, as asa-small is served (2048); 0: as trained")
    ap.add_argument("--no-shipped", action="store_true", help="start: do not re-evaluate the shipped asa-small")
    ap.add_argument("--h6-windows", type=int, default=Setup.h6_windows,
                    help="start: H6 of each trained dense model on this many validation windows (0: skip)")
    ap.add_argument("--dense-windows", default=",".join(map(str, DENSE_WINDOWS)),
                    help="start: KV slots of the dense twin's bounded baselines (a sliding window, and StreamingLLM "
                         f"sinks {SINKS} + the rest), comma-separated; fewer evaluate faster")
    ap.add_argument("--out", default="runs/asa_v2_out")
    ap.add_argument("--export", default="", help="finish: also export this model's fp16 weights to OUT/asa-small "
                    "('best': the trained ASA model with the lowest held-out perplexity)")
    ap.add_argument("--from", dest="src", default="runs/asa_v2_out")
    ap.add_argument("--to", default=str(REPO / "training" / "results" / "asa_v2"),
                    help="install: results folder (a later batch goes to a subfolder, beside the first batch's)")
    a = ap.parse_args(argv)
    runs = Path(a.runs)
    if a.phase in ("supervise", "watch", "status", "evaluate", "report", "finish") and (runs / "setup.json").is_file():
        s = Setup.load(runs)
    else:
        train = tuple(n for n in a.train.split(",") if n)
        bad = [n for n in train if n not in MODELS or MODELS[n].shipped]
        if bad:
            raise SystemExit(f"--train: unknown model(s) {bad}; choose from "
                             f"{[n for n in MODELS if not MODELS[n].shipped]}")
        if a.serve_clamp < 0:
            raise SystemExit("--serve-clamp: must be >= 0")
        windows = tuple(int(w) if w.strip().isdigit() else 0 for w in a.dense_windows.split(",") if w)
        if any(w <= SINKS for w in windows):
            raise SystemExit(f"--dense-windows: comma-separated integers above {SINKS} (the sinks), got "
                             f"{a.dense_windows!r}")
        if a.h6_windows < 0:
            raise SystemExit("--h6-windows: must be >= 0")
        s = Setup(prep=Path(a.prep), runs=runs, train=train, max_steps=a.max_steps, serve_clamp=a.serve_clamp,
                  shipped=not a.no_shipped, dense_windows=windows, h6_windows=a.h6_windows)
    if a.phase == "pack":
        pack(s)
    elif a.phase == "unpack":
        unpack(s)
    elif a.phase == "start":
        start(s, a.call_s, a.foreground)
    elif a.phase == "supervise":
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        supervise(s)
    elif a.phase in ("watch", "status"):
        watch(s, a.seconds if a.phase == "watch" else 0)
    elif a.phase == "evaluate":
        evaluate_model(s, a.model)
    elif a.phase == "report":
        write_report(s)
        print((s.runs / "asa_v2.md").read_text())
    elif a.phase == "finish":
        finish(s, Path(a.out), a.wait_s, a.export)
    elif a.phase == "install":
        install(Path(a.src), Path(a.to))


if __name__ == "__main__":
    main()
