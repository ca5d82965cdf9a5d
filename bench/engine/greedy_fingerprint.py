"""Fingerprint of asa-small's greedy outputs: a sha256 of the generated token ids per engine setting.

    python bench/engine/greedy_fingerprint.py > before.txt      # on one commit
    python bench/engine/greedy_fingerprint.py > after.txt       # on another; `diff` them

An engine refactor must leave every line identical. Settings: the shipped plan (chunked prefill, unbounded
cache), eviction (--max-kv-size), bfloat16 weights and cache, int8 weights, the same weights in dense mode
(plan none), and a prompt cache saved on one run and loaded by the next (through the CLI, which owns files).
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile

import torch

from asa_runtime.generate import load, stream_generate

PROMPTS = [
    "It was a dark and stormy night; the rain fell in torrents, except at occasional intervals, when",
    "The old man looked at the children and said",
    "In the morning the ship came into the harbour, and the captain, who had not slept, went ashore to find",
]
N = 160   # long enough that eviction compacts the 128-slot cache several times


def fingerprint(lm, **kw) -> str:
    h = hashlib.sha256()
    for p in PROMPTS:
        ids = [r.token for r in stream_generate(lm, p, N, temp=0.0, stop_at_eos=False, **kw)]
        h.update(repr(ids).encode())
    return h.hexdigest()[:16]


def main():
    torch.set_num_threads(1)
    lm = load("asa-small")
    print("asa-small fp32, chunk 512     ", fingerprint(lm))
    print("asa-small fp32, chunk 7       ", fingerprint(lm, prefill_chunk=7))
    print("asa-small fp32, max-kv 128    ", fingerprint(lm, ctx_size=512, max_kv_size=128, prefill_chunk=16))
    print("asa-small bf16 weights + kv   ", fingerprint(load("asa-small", dtype="bfloat16")))
    print("asa-small fp32 weights, bf16 kv", fingerprint(load("asa-small", kv_dtype="bfloat16")))
    print("asa-small int8                ", fingerprint(load("asa-small", quantize="int8")))
    from asa_runtime.linguistics.planner import Planner  # noqa: F401  (dense: no planner is used)

    dense = load("asa-small")
    dense.config.plan.mode = "none"
    dense.planner = None
    dense.model.cfg.plan.mode = "none"
    print("asa-small weights, dense      ", fingerprint(dense))
    with tempfile.TemporaryDirectory() as d:
        cache = os.path.join(d, "p.cache")
        outs = []
        for _ in range(2):    # first run saves the cache, second loads it
            r = subprocess.run([sys.executable, "-c", "from asa_runtime.cli import main; main()", "generate", "-m", "asa-small", "-p",
                                PROMPTS[0], "-n", str(N), "--temp", "0", "--prompt-cache", cache, "-t", "1"],
                               capture_output=True, text=True, check=True)
            outs.append(r.stdout)
        print("prompt cache save / load      ", hashlib.sha256(outs[0].encode()).hexdigest()[:16],
              "same" if outs[0] == outs[1] else "DIFFERENT")


if __name__ == "__main__":
    main()
