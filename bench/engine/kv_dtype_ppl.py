"""Does a half-precision KV cache keep asa-small's perplexity on the CPU? (issue 14: make it the default if so)

Held-out perplexity of the engine (Session.feed, all logits, chunked prefill as in generation) with the
cache in float32, bfloat16 and float16, fp32 weights; also bf16 weights + bf16 cache. Held-out tokens are
asa-small's own held-out books (`asa-train prepare --out runs/asa_prep --ctx 2048 --vocab-size 12288
--train-words 0 --valid-books 4 --valid-words 300000`, see training/experiments/asa_small.py).

    python bench/engine/kv_dtype_ppl.py --windows 6 --ctx 2048 --out bench/engine/results/kv_dtype_ppl.md
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from asa_runtime.benchmark import machine  # noqa: E402
from exporters.common import atomic_file  # noqa: E402
from asa_runtime.generate import load  # noqa: E402
from asa_runtime.scoring import token_nll  # noqa: E402
from asa_runtime.session import Session  # noqa: E402


def nll(lm, windows) -> tuple[float, int]:
    scored = [token_nll(Session(lm, ctx_size=len(w) + 1), w) for w in windows]
    return float(sum(x.sum() for x in scored)), sum(len(x) for x in scored)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", default="runs/asa_prep/valid.tokens.u16")
    ap.add_argument("--windows", type=int, default=6)
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    ids = np.fromfile(a.tokens, dtype=np.uint16).astype(np.int64)
    stride = len(ids) // a.windows
    windows = [ids[i * stride: i * stride + a.ctx + 1].tolist() for i in range(a.windows)]
    settings = [("fp32 weights, fp32 KV", dict()), ("fp32 weights, bf16 KV", dict(kv_dtype="bfloat16")),
                ("fp32 weights, fp16 KV", dict(kv_dtype="float16")), ("bf16 weights, bf16 KV", dict(dtype="bfloat16"))]
    rows, base = [], None
    for name, kw in settings:
        lm = load("asa-small", **kw)
        t0 = time.perf_counter()
        tot, n = nll(lm, windows)
        ppl = math.exp(tot / n)
        base = base or ppl
        s = Session(lm, ctx_size=a.ctx + 1)
        rows.append(f"| {name} | {ppl:.4f} | {100 * (ppl / base - 1):+.3f}% | {s.kv_bytes() / 2**20:.1f} | "
                    f"{time.perf_counter() - t0:.0f} |")
        print(rows[-1], flush=True)
    m = machine()
    md = "\n".join([f"# KV cache dtype and held-out perplexity (asa-small, CPU: {m['cpu']})", "",
                    f"{a.windows} windows of {a.ctx} tokens spread over asa-small's 4 held-out books "
                    f"({a.windows * a.ctx} predicted tokens), prefill in chunks of 512, "
                    f"{a.threads} threads, load average {m['load_average'][0]:.1f}.", "",
                    f"Command: `python bench/engine/kv_dtype_ppl.py --windows {a.windows} --ctx {a.ctx}`", "",
                    "| setting | perplexity | vs fp32 | KV MiB (this context, default bound) | seconds |",
                    "|---|---|---|---|---|", *rows]) + "\n"
    print(md)
    if a.out:
        with atomic_file(a.out) as tmp:
            tmp.write_text(md)


if __name__ == "__main__":
    main()
