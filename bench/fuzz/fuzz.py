"""The fuzz suite of tests/test_fuzz.py, run long: the same targets and strategies, `--n` inputs in all.

    python bench/fuzz/fuzz.py --n 100000 [--out bench/fuzz/results.md]

Reports per target the inputs run, the time, and the failures: a contract violation (an AssertionError: a
plan breaking the AttentionPlan contract, an error of the wrong type or a message of several lines) or a
crash (any other exception). Hypothesis stops a target at its first failure (after shrinking it), so a
failing target runs fewer inputs than asked. Exit status 1 if anything failed."""
from __future__ import annotations

import argparse
import os
import platform
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("OMP_NUM_THREADS", "1")

import test_fuzz as tf  # noqa: E402
from hypothesis import settings  # noqa: E402

# share of the inputs per target (the loaders build and read files: fewer, slower inputs)
TARGETS = [("tokenizer", tf.test_fuzz_tokenizer, 0.20), ("analyzer", tf.test_fuzz_analyzer, 0.25),
           ("planner", tf.test_fuzz_planner_contract, 0.22), ("config", tf.test_fuzz_config_from_dict, 0.25),
           ("model_folder", tf.test_fuzz_model_folder_loaders, 0.04),
           ("prompt_cache", tf.test_fuzz_prompt_cache_and_restore, 0.04)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--only", default="", help="comma-separated target names")
    ap.add_argument("--out", default="", help="append a results section (markdown) to this file")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    rows, bad = [], 0
    loads, done = [os.getloadavg()[0]], threading.Event()

    def sample_load():            # the 1-minute load average every 30 s: the machine is shared
        while not done.wait(30):
            loads.append(os.getloadavg()[0])

    threading.Thread(target=sample_load, daemon=True).start()
    started = time.gmtime()
    t_all = time.perf_counter()
    for name, fn, share in TARGETS:
        if a.only and name not in a.only.split(","):
            continue
        n = max(1, int(a.n * share))
        # the test's own settings, with this budget (hypothesis reads them from this attribute at call time)
        fn._hypothesis_internal_use_settings = settings(tf.FUZZ, max_examples=n, print_blob=True)
        run = fn
        tf.COUNTS[name] = 0
        t = time.perf_counter()
        status = "ok"
        try:
            run()
        except AssertionError as e:
            status, bad = f"CONTRACT VIOLATION: {' '.join(str(e).split())[:300]}", bad + 1
        except Exception as e:  # noqa: BLE001 - a crash is what this looks for
            status, bad = f"CRASH {type(e).__name__}: {' '.join(str(e).split())[:300]}", bad + 1
        dt = time.perf_counter() - t
        rows.append((name, tf.COUNTS[name], dt, status))
        print(f"{name:13} {tf.COUNTS[name]:8d} inputs {dt:8.1f} s  {status}", flush=True)
    total = sum(r[1] for r in rows)
    dt_all = time.perf_counter() - t_all
    done.set()
    loads.append(os.getloadavg()[0])
    load = (f"1-min load average {loads[0]:.1f} at the start, {loads[-1]:.1f} at the end, min {min(loads):.1f} / "
            f"mean {sum(loads) / len(loads):.1f} / max {max(loads):.1f} over {len(loads)} samples (every 30 s)")
    print(f"total         {total:8d} inputs {dt_all:8.1f} s  failures: {bad}")
    print(load)
    if a.out:
        only = f" --only {a.only}" if a.only else ""
        lines = [f"\n## {time.strftime('%Y-%m-%d %H:%M UTC', started)}: `fuzz.py --n {a.n}{only}`\n",
                 f"Machine: {platform.node()}, {platform.machine()}, {os.cpu_count()} cores (shared), Python "
                 f"{platform.python_version()}, niceness {os.nice(0)}, one torch thread, one process. {load}.\n",
                 "| target | inputs | time (s) | result |", "|---|---:|---:|---|"]
        lines += [f"| {n} | {c} | {d:.0f} | {s} |" for n, c, d, s in rows]
        lines.append(f"| **total** | **{total}** | **{dt_all:.0f}** | {bad} failing targets |\n")
        with open(a.out, "a") as f:
            f.write("\n".join(lines) + "\n")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
