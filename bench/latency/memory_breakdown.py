"""Where asa-small's process memory goes (issue 14: "find where the baseline goes"), step by step, in one
fresh process per dtype: RSS after each stage and the bytes the tensors themselves hold.

    python bench/latency/memory_breakdown.py --out bench/latency/results/memory-breakdown.md
"""
from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def rss_mib() -> float:
    from asa_runtime.process_memory import current_rss_bytes

    b = current_rss_bytes()
    return float("nan") if b is None else b / 2**20


def worker(dtype: str | None, context: int) -> list:
    out = [("python started", rss_mib(), "")]
    import numpy  # noqa: F401
    import torch
    torch.set_num_threads(1)
    out.append(("import torch, numpy", rss_mib(), f"torch {torch.__version__}"))
    sys.path.insert(0, str(ROOT))
    from asa_runtime.benchmark import prompt_ids
    from asa_runtime.generate import load
    from asa_runtime.session import Session
    out.append(("import asa_runtime", rss_mib(), ""))
    lm = load("asa-small", dtype=dtype, kv_dtype="auto")
    gc.collect()
    w = {p.data_ptr(): p.numel() * p.element_size() for p in lm.model.parameters()}
    out.append(("load asa-small (weights, tokenizer, analyzer)", rss_mib(),
                f"parameters hold {sum(w.values()) / 2**20:.1f} MiB ({lm.model.tok_embeddings.weight.dtype}, "
                f"tied embedding counted once)"))
    ids = prompt_ids(lm.tokenizer, context)
    s = Session(lm, ctx_size=context + 64)
    out.append((f"Session for {context} tokens", rss_mib(), f"KV cache {s.kv_bytes() / 2**20:.1f} MiB (default bound)"))
    s.feed(ids)
    for _ in range(16):
        s.step(int(s.last_logits.argmax()))
    from asa_runtime.process_memory import peak_rss_bytes
    peak = peak_rss_bytes() / 2**20
    out.append((f"after a {context}-token prompt + 16 tokens", rss_mib(),
                f"peak RSS {peak:.0f} MiB; KV {s.kv_bytes() / 2**20:.1f} MiB, {s.slots.n_used} keys held"))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", default=None)
    ap.add_argument("--context", type=int, default=8192)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    if a.worker is not None:
        print("RESULT " + json.dumps(worker(a.worker or None, a.context)))
        return
    md = ["# Where the process memory goes (asa-small, CPU, torch backend)", "",
          f"One fresh process per weights dtype; RSS after each stage. Command: `python bench/latency/memory_breakdown.py "
          f"--context {a.context}`", ""]
    for dtype in ("", "bfloat16"):
        r = subprocess.run([sys.executable, __file__, "--worker", dtype, "--context", str(a.context)],
                           capture_output=True, text=True, check=True)
        rows = json.loads(next(x for x in r.stdout.splitlines() if x.startswith("RESULT "))[7:])
        md += [f"## weights {dtype or 'float32 (default)'}", "", "| stage | RSS MiB | + MiB | what |", "|---|---|---|---|"]
        prev = 0.0
        for name, rss, note in rows:
            md.append(f"| {name} | {rss:.0f} | {rss - prev:+.0f} | {note} |")
            prev = rss
        md.append("")
    text = "\n".join(md) + "\n"
    print(text)
    if a.out:
        sys.path.insert(0, str(ROOT))
        from exporters.common import atomic_file

        with atomic_file(a.out) as tmp:
            tmp.write_text(text)


if __name__ == "__main__":
    main()
