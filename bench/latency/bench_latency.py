"""Latency benchmark of the generation engine (CPU, torch backend): llama-bench style.

For each context length L: prefill an L-token prompt of book text (prompt tok/s, time to first token),
then decode --gen tokens at depth L (generation tok/s), each measurement in a fresh process so the peak
RSS is its own. Also reports the KV cache against a dense cache of the same length, and the same runs
with a bounded cache (--max-kv-size) to show memory staying flat past the window.

    python bench/latency/bench_latency.py                      # 512, 8k, 32k; writes results/latency-<host>.*
    python bench/latency/bench_latency.py --contexts 512 --threads 1,2 --gen 64

Figures are wall-clock (what a user sees) and CPU-time based (process_time): on a shared machine the
second is closer to what the code costs when it has the cores to itself. The load average is recorded.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common


def kv_bytes_dense(cfg, n: int, elem: int = 4) -> int:
    return 2 * cfg.n_layer * cfg.n_kv_head * cfg.head_dim * n * elem


def kv_elem_size(cfg, session) -> int:
    """Bytes per cached number (the dense comparison uses the same dtype as the cache measured)."""
    return session.kv_bytes() // (2 * cfg.n_layer * cfg.n_kv_head * cfg.head_dim * session.slots.n_slots)


def worker(cfg: dict) -> dict:
    import torch

    torch.set_num_threads(cfg["threads"])
    from asa_runtime.generate import Session
    from asa_runtime.sampling import Sampler

    lm, desc = common.build_model(cfg["model"], cfg["mode"], quantize=cfg.get("quantize"), dtype=cfg.get("dtype"))
    L, gen = cfg["context"], cfg["gen"]
    ids = common.text_ids(lm.tokenizer, L)
    session = Session(lm, ctx_size=L + gen + cfg.get("warmup", 0) + 8, max_kv_size=cfg.get("max_kv_size"),
                      prefill_chunk=cfg["prefill_chunk"])
    sampler = Sampler(temp=0.0)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0, c0 = time.perf_counter(), time.process_time()
    logits = session.feed(ids)
    tok = sampler(logits[: session.n_vocab], ids)
    t1, c1 = time.perf_counter(), time.process_time()
    for _ in range(cfg.get("warmup", 0)):       # llama-bench style warm-up: first-call costs are not speed
        logits = session.step(tok)
        tok = sampler(logits[: session.n_vocab], ())
    t1w, c1w = time.perf_counter(), time.process_time()
    n = 0
    for _ in range(gen):
        logits = session.step(tok)
        tok = sampler(logits[: session.n_vocab], ())
        n += 1
    t2, c2 = time.perf_counter(), time.process_time()
    return {**cfg, "model_desc": desc,
            "prompt_tps": L / (t1 - t0), "prompt_tps_cpu": L / (c1 - c0),
            "ttft_s": t1 - t0, "gen_tps": n / (t2 - t1w), "gen_tps_cpu": n / (c2 - c1w),
            "kv_cache_bytes": session.kv_bytes(),
            "kv_dense_bytes": kv_bytes_dense(lm.config, session.ctx_size, elem=kv_elem_size(lm.config, session)),
            "kv_keys_held": int(session.slots.n_used), "evicted": int(session.slots.evicted),
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "rss_before_prompt_bytes": rss0, "loadavg_after": common.loadavg()}


def fmt_mib(b):
    return f"{b / 2**20:.0f}"


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = [f"# Latency: {res['model']}" + (f", weights {res['weights']}" if res.get("weights") else ""), "",
             f"Machine: {m['host']}, {m['cpu']}, {m['cores']} cores, "
             f"{(m['memory_bytes'] or 0) / 2**30:.0f} GiB, torch {m['torch']}, {m['date']}. "
             f"Load average at start {res['loadavg_start']}, end {res['loadavg_end']} "
             "(the machine is shared: wall figures are pessimistic; CPU-time figures divide by the "
             "process's own CPU seconds).", "",
             f"Command: `{res['command']}`", "",
             "| mode | threads | context | max KV | prompt tok/s (cpu) | gen tok/s (cpu) | TTFT s | "
             "KV MiB | dense KV MiB | peak RSS MiB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["runs"]:
        if "error" in r:
            lines.append(f"| {r['mode']} | {r['threads']} | {r['context']} | {r.get('max_kv_size') or '-'} | "
                         f"error: {r['error']} | | | | | |")
            continue
        lines.append(
            f"| {r['mode']} | {r['threads']} | {r['context']} | {r.get('max_kv_size') or '-'} | "
            f"{r['prompt_tps']:.0f} ({r['prompt_tps_cpu']:.0f}) | {r['gen_tps']:.1f} ({r['gen_tps_cpu']:.1f}) | "
            f"{r['ttft_s']:.2f} | {fmt_mib(r['kv_cache_bytes'])} | {fmt_mib(r['kv_dense_bytes'])} | "
            f"{fmt_mib(r['peak_rss_bytes'])} |")
    lines += ["", "Reference (issue, llama.cpp, random 20M llama, 2 threads, flash attention, f16): prompt / gen "
              "tok/s 3406 / 466 at 512, 878 / 99 at 8k, 199 / 41 at 32k; TTFT of a 32k prompt 165 s. "
              "Targets for asa-small: gen >= 230 tok/s at 512, >= 120 at 32k, 32k prefill <= 30 s.", ""]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--model", default="asa-small", help="asa-small, a model folder, or random")
    ap.add_argument("--contexts", default="512,8192,32768")
    ap.add_argument("--modes", default="full", help="ASA modes to run (random model only), e.g. full,none")
    ap.add_argument("--dense-max", type=int, default=8192, help="skip dense runs above this context (O(N^2))")
    ap.add_argument("--threads", default="1", help="comma list of torch thread counts")
    ap.add_argument("--dtype", default=None, help="weights: bfloat16 (AMX / avx512_bf16 CPUs) or float32")
    ap.add_argument("--quantize", default=None, help="int8 weight-only")
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=8, help="decode steps before timing generation")
    ap.add_argument("--prefill-chunk", type=int, default=512)
    ap.add_argument("--max-kv-size", type=int, default=2048, help="also run bounded at contexts above it (0 = no)")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--tag", default="", help="suffix for the result file names")
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(json.loads(a.worker))))
        return
    runs, start = [], common.loadavg()
    for threads in [int(t) for t in a.threads.split(",")]:
        for mode in a.modes.split(","):
            for L in [int(c) for c in a.contexts.split(",")]:
                if mode == "none" and L > a.dense_max:
                    continue
                base = dict(model=a.model, mode=mode, threads=threads, context=L, gen=a.gen,
                            prefill_chunk=a.prefill_chunk, dtype=a.dtype, quantize=a.quantize, warmup=a.warmup)
                bounds = [None] + ([a.max_kv_size] if a.max_kv_size and mode != "none" and L > a.max_kv_size
                                   else [])
                for kv in bounds:
                    r = common.run_worker(Path(__file__), {**base, "max_kv_size": kv})
                    runs.append(r)
                    print(json.dumps(r), flush=True)
    desc = next((r["model_desc"] for r in runs if "model_desc" in r), a.model)
    res = {"model": desc, "weights": a.quantize or a.dtype, "machine": common.machine(), "loadavg_start": start, "loadavg_end": common.loadavg(),
           "command": "python bench/latency/bench_latency.py " + " ".join(sys.argv[1:]), "runs": runs}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"latency-{res['machine']['host']}{('-' + a.tag) if a.tag else ''}"
    (out / f"{stem}.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / f"{stem}.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
