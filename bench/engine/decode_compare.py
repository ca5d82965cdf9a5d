"""Decode speed of two checkouts of the engine side by side (same run, alternating processes), e.g. before
and after a refactor:

    git worktree add /tmp/base <commit>
    python bench/engine/decode_compare.py --trees /tmp/base,. --contexts 512,32768 --repeats 3

Each measurement is a fresh process (PYTHONPATH = that tree) that loads asa-small (fp32, one thread),
prefills a context of book text, decodes 8 warm-up tokens, then times --gen greedy decode steps. Reports
the median over repeats of wall-clock and CPU-time tokens/s (CPU time is the steadier figure on a shared
machine) per tree and context, and the ratio to the first tree.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

WORKER = r"""
import json, sys, time, torch
torch.set_num_threads(1)
sys.path.insert(0, {latency!r})
import common                                  # (it puts this repo's root first on sys.path)
sys.path.insert(0, {tree!r})                   # ... so the tree under test goes back in front
import asa_runtime
from asa_runtime.generate import Session, load
L, gen = {context}, {gen}
lm = load("asa-small")
ids = common.text_ids(lm.tokenizer, L)
s = Session(lm, ctx_size=L + gen + 16)
logits = s.feed(ids)
for _ in range(8):
    logits = s.step(int(logits.argmax()))
t0, c0 = time.perf_counter(), time.process_time()
for _ in range(gen):
    logits = s.step(int(logits.argmax()))
t1, c1 = time.perf_counter(), time.process_time()
print(json.dumps({{"wall_tps": gen / (t1 - t0), "cpu_tps": gen / (c1 - c0), "code": asa_runtime.__file__}}))
"""


def measure(tree: Path, context: int, gen: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    code = WORKER.format(latency=str(HERE.parent / "latency"), tree=str(tree), context=context, gen=gen)
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tree, capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trees", required=True, help="comma list of checkouts; the first is the baseline")
    ap.add_argument("--contexts", default="512,32768")
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(HERE / "results" / "decode_compare.md"))
    a = ap.parse_args()
    trees = [Path(t).resolve() for t in a.trees.split(",")]
    contexts = [int(c) for c in a.contexts.split(",")]
    runs: dict = {}
    for r in range(a.repeats):
        for c in contexts:
            for t in (trees if r % 2 == 0 else trees[::-1]):       # alternate the order between repeats
                runs.setdefault((str(t), c), []).append(measure(t, c, a.gen))
                print(t.name, c, runs[(str(t), c)][-1], file=sys.stderr, flush=True)
    load = os.getloadavg()
    lines = [f"# Decode speed, side by side ({os.uname().nodename}, {os.cpu_count()} cores, 1 thread, "
             f"load average at the end {load[0]:.1f})", "",
             f"asa-small fp32, greedy, {a.gen} timed steps after 8 warm-up, median of {a.repeats} fresh processes.",
             "", "| tree | context | wall tok/s | CPU tok/s | CPU ratio to first |", "|---|---|---|---|---|"]
    for c in contexts:
        base = statistics.median(x["cpu_tps"] for x in runs[(str(trees[0]), c)])
        for t in trees:
            rs = runs[(str(t), c)]
            w, cpu = statistics.median(x["wall_tps"] for x in rs), statistics.median(x["cpu_tps"] for x in rs)
            lines.append(f"| {t} | {c} | {w:.1f} | {cpu:.1f} | {cpu / base:.3f} |")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
