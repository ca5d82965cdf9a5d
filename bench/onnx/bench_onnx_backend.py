"""Decode tokens/s at several contexts and the prefill time, torch backend vs ONNX Runtime (op function body)
vs ONNX Runtime (C++ kernel), side by side in one run, each in its own process (so peak RSS is its own).

    python bench/onnx/bench_onnx_backend.py                        # asa-small, contexts 512,8192,32768
    python bench/onnx/bench_onnx_backend.py --contexts 512,8192 --steps 16

One pass per backend: the prompt (book prose from ../shared/data) is fed in chunks of 512 up to each context in
turn; after reaching a context, `--steps` greedy decode steps are timed there (tok/s). "prefill_s" is the total
feed time to reach the largest context. RSS: after load (before any prompt) and the process peak. The ONNX
variants run from the cached export folder (exported on first use, not timed; exporters/onnx/folder.py), so
their process holds no torch weights.
Results: bench/onnx/results/backend-<machine>.json and .md (machine = hostname + cores; the load average is recorded,
the machine is shared).
"""
from __future__ import annotations

import argparse
import json
import lzma
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BOOKS = ROOT.parent / "shared/data/english_prose/standard_ebooks/standard_ebooks_selection.jsonl.xz"
VARIANTS = {"torch": ("torch", None), "onnx-body": ("onnx", "0"), "onnx-kernel": ("onnx", "1")}


def rss_mib() -> float:
    from asa_runtime.process_memory import current_rss_bytes

    b = current_rss_bytes()
    return float("nan") if b is None else b / 2**20


def peak_mib() -> float:
    from asa_runtime.process_memory import peak_rss_bytes   # VmHWM: ru_maxrss would carry the parent's peak

    return peak_rss_bytes() / 2**20


def prose_ids(tokenizer, n: int) -> list[int]:
    ids: list[int] = []
    with lzma.open(BOOKS, "rt", encoding="utf-8") as f:
        for line in f:
            ids += tokenizer.encode(json.loads(line)["text"])
            if len(ids) >= n:
                break
    if len(ids) < n:
        raise SystemExit(f"not enough prose for {n} tokens ({len(ids)})")
    return ids[:n]


def one(variant: str, model: str, contexts: list[int], steps: int, threads: int) -> dict:
    """Runs in the child process."""
    import torch

    from asa_runtime.generate import load
    from asa_runtime.session import Session

    backend, kernel = VARIANTS[variant]
    torch.set_num_threads(threads)
    os.environ["ASA_ORT_THREADS"] = str(threads)
    src = model
    if kernel is not None:
        os.environ["ASA_ORT_KERNEL"] = kernel
        from asa_runtime.backends.onnx_backend import ensure_export
        from asa_runtime.registry import resolve

        src = ensure_export(resolve(model))        # the cached export folder: a process without torch weights
    t0 = time.perf_counter()
    lm = load(src, backend=backend)
    load_s = time.perf_counter() - t0
    rss_load = rss_mib()
    top = max(contexts)
    ids = prose_ids(lm.tokenizer, top)
    s = Session(lm, ctx_size=top + (steps + 1) * len(contexts) + 1, prefill_chunk=512)
    out = {"variant": variant, "load_s": round(load_s, 2), "rss_after_load_mib": round(rss_load, 1),
           "threads": torch.get_num_threads(), "decode_tok_s": {}, "prefill_s_to": {},
           "note": getattr(lm.backend, "kernel_note", "")}
    fed, prefill_s = 0, 0.0
    logits = None
    for c in sorted(contexts):
        t = time.perf_counter()
        logits = s.feed(ids[fed:c])
        prefill_s += time.perf_counter() - t
        fed = c
        out["prefill_s_to"][c] = round(prefill_s, 2)
        tok = int(logits.argmax())
        s.step(tok)                                             # warm-up step (not timed)
        t = time.perf_counter()
        for _ in range(steps):
            logits = s.step(int(logits.argmax()))
        out["decode_tok_s"][c] = round(steps / (time.perf_counter() - t), 1)
        # the decoded tokens stay in the sequence; the prose continues after them (context c + steps + 1)
    out["prefill_s"] = round(prefill_s, 2)
    out["peak_rss_mib"] = round(peak_mib(), 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="asa-small")
    ap.add_argument("--contexts", default="512,8192,32768")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--threads", type=int, default=1,
                    help="intra-op threads for torch and onnxruntime (1: a shared 2-core machine)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(ROOT / "bench/onnx/results"))
    a = ap.parse_args()
    contexts = [int(c) for c in a.contexts.split(",")]
    if a.one:
        print(json.dumps(one(a.one, a.model, contexts, a.steps, a.threads)))
        return
    machine = f"{platform.node()}-{os.cpu_count()}cores"
    rows = []
    for v in a.variants.split(","):
        load_before = os.getloadavg()[0]
        r = subprocess.run([sys.executable, __file__, "--one", v, "--model", a.model, "--contexts", a.contexts,
                            "--steps", str(a.steps), "--threads", str(a.threads)], capture_output=True, text=True, cwd=ROOT)
        if r.returncode != 0:
            rows.append({"variant": v, "error": (r.stderr.strip().splitlines() or ["?"])[-1]})
        else:
            rows.append({**json.loads(r.stdout.strip().splitlines()[-1]),
                         "loadavg_1m": [round(load_before, 1), round(os.getloadavg()[0], 1)]})
        print(json.dumps(rows[-1]), flush=True)
    res = {"machine": machine, "cpu": platform.processor() or platform.machine(), "model": a.model,
           "contexts": contexts, "steps": a.steps, "threads": a.threads, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "results": rows}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"backend-{machine}.json").write_text(json.dumps(res, indent=2) + "\n")
    lines = [f"# ONNX backend vs torch: {a.model} on {machine} ({res['date']})", "",
             f"Threads: {a.threads} (torch and onnxruntime). Shared machine: the 1-minute load average before/after "
             "each variant is in the last column. The ONNX variants load the cached export folder (no torch "
             "weights in the process).", "",
             "| variant | " + " | ".join(f"decode tok/s @{c}" for c in contexts)
             + f" | prefill {max(contexts)} (s) | RSS after load (MiB) | peak RSS (MiB) | load avg |",
             "|---" * (len(contexts) + 5) + "|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['variant']} | error: {r['error']} |")
            continue
        lines.append(f"| {r['variant']} | " + " | ".join(str(r["decode_tok_s"][str(c)] if str(c) in r["decode_tok_s"]
                                                             else r["decode_tok_s"].get(c)) for c in contexts)
                     + f" | {r['prefill_s']} | {r['rss_after_load_mib']} | {r['peak_rss_mib']} | "
                       f"{r['loadavg_1m'][0]}-{r['loadavg_1m'][1]} |")
    (out / f"backend-{machine}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
