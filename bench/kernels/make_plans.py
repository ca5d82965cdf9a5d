"""Real plans for the kernel bench: the analyzer + planner over one long book of ../shared/data/english_prose,
split into pieces with a simple regex (until the project tokenizer is used here). Run on the CPU:

    python bench/kernels/make_plans.py --k 64 --out .plans/k64      # (ignored folder; carried to the device)

Writes plan_<N>.npz ((N, K) int32, compressed) for N = 1k..64k and decode_rows.npz (the rows of queries
S-1 of a 128k-token plan, S = 8k, 32k, 128k).
"""
from __future__ import annotations

import argparse
import json
import lzma
import re
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from asa_runtime.config import PlanConfig  # noqa: E402
from asa_runtime.linguistics.planner import Planner  # noqa: E402

PROSE = ROOT.parent / "shared/data/english_prose/standard_ebooks/standard_ebooks_selection.jsonl.xz"


def long_book(min_chars: int = 800_000) -> tuple[str, str]:
    with lzma.open(PROSE, "rt", encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            if len(d["text"]) > min_chars:
                return d["title"], d["text"]
    raise SystemExit("no long book found")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--out", default=".plans/k64")
    ap.add_argument("--window", type=int, default=16)
    ap.add_argument("--stride", type=int, default=0)
    ap.add_argument("--decode", action="store_true", help="also the 128k-token plan's decode rows")
    args = ap.parse_args()
    title, text = long_book()
    pieces = re.findall(r" ?\w+|[^\w\s]|\s+", text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = PlanConfig(mode="full", k=args.k, window=args.window, stride=args.stride)
    planner = Planner(cfg)
    for N in (1024, 4096, 16384, 65536):
        t = time.time()
        p = planner.plan(pieces[:N]).astype(np.int32)
        np.savez_compressed(out / f"plan_{N}.npz", keys=p)
        print(f"{title}: N={N} K={args.k} mean keys {float((p >= 0).sum(1).mean()):.1f} ({time.time() - t:.1f}s)")
    if args.decode:
        S = (8192, 32768, 131072)
        p = planner.plan(pieces[: S[-1]]).astype(np.int32)
        np.savez_compressed(out / "decode_rows.npz", keys=np.stack([p[s - 1] for s in S]), S=np.array(S))
    (out / "SOURCE.txt").write_text(f"{PROSE.name}: {title}; {cfg}\n")


if __name__ == "__main__":
    main()
