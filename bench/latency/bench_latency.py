"""Latency benchmark of the generation engine (CPU, torch backend): llama-bench style.

A thin caller of asa_runtime.benchmark (the code behind `asa-run bench`): each measurement is a
benchmark.Spec run by benchmark.run_one in a fresh process (its own peak RSS); this script picks the grid
(threads x modes x contexts x KV bounds), the model (asa-small, a folder, or the random-weight model saved
as a folder by common.model_folder), the prompt (book prose from ../shared/data, common.prose_file) and
writes its own result files. For each context length L: prefill an L-token prompt (prompt tok/s, time to
first token), then decode --gen tokens at depth L (generation tok/s). Also reports the KV cache against a
dense cache of the same length, and the same runs with a bounded cache (--max-kv-size) to show memory
staying flat past the window.

    python bench/latency/bench_latency.py                      # 512, 8k, 32k; writes results/latency-<host>.*
    python bench/latency/bench_latency.py --contexts 512 --threads 1,2 --gen 64

Figures are wall-clock (what a user sees) and CPU-time based (process_time): on a shared machine the
second is closer to what the code costs when it has the cores to itself. The load average is recorded.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common

from asa_runtime.benchmark import Spec, run_one


def measure(model_path: str, desc: str, cfg: dict, text_file: str) -> dict:
    """One run through asa_runtime.benchmark, in the result-file schema of this script."""
    spec = Spec(system="asa-run", model=model_path, backend="torch", mode="dense" if cfg["mode"] == "none" else "asa",
                context=cfg["context"], n_gen=cfg["gen"], threads=cfg["threads"], text_file=text_file,
                max_kv_size=cfg["max_kv_size"], warmup=cfg["warmup"], dtype=cfg["dtype"], quantize=cfg["quantize"],
                prefill_chunk=cfg["prefill_chunk"])
    try:
        r = run_one(spec)
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        return {**cfg, "error": " ".join(str(e).split())}
    mib = 2**20
    return {**cfg, "model_desc": desc,
            "prompt_tps": r["pp_tps"], "prompt_tps_cpu": r["pp_cpu_tps"], "ttft_s": r["ttft_s"],
            "gen_tps": r["tg_tps"], "gen_tps_cpu": r["tg_cpu_tps"], "kv_cache_bytes": round(r["kv_mib"] * mib),
            "kv_keys_held": r["kv_keys_held"], "evicted": r["evicted"],
            "peak_rss_bytes": round(r["peak_rss_mib"] * mib),
            "rss_before_prompt_bytes": round(r["rss_before_prompt_mib"] * mib), "loadavg_after": common.loadavg()}


def fmt_mib(b):
    return "-" if b is None else f"{b / 2**20:.0f}"


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
    ap.add_argument("--model", default="asa-small", help="asa-small, a model folder, or random")
    ap.add_argument("--contexts", default="512,8192,32768")
    ap.add_argument("--modes", default="full", help="ASA modes, e.g. full,none (none: the same weights dense; other modes need --model random, a model folder runs its own plan)")
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
    runs, start = [], common.loadavg()
    contexts = [int(c) for c in a.contexts.split(",")]
    text_file = common.prose_file(max(contexts))
    folders = {mode: common.model_folder(a.model, "full" if mode == "none" else mode) for mode in a.modes.split(",")}
    for threads in [int(t) for t in a.threads.split(",")]:
        for mode in a.modes.split(","):
            for L in contexts:
                if mode == "none" and L > a.dense_max:
                    continue
                base = dict(model=a.model, mode=mode, threads=threads, context=L, gen=a.gen,
                            prefill_chunk=a.prefill_chunk, dtype=a.dtype, quantize=a.quantize, warmup=a.warmup)
                bounds = [None] + ([a.max_kv_size] if a.max_kv_size and mode != "none" and L > a.max_kv_size
                                   else [])
                for kv in bounds:
                    r = measure(*folders[mode], {**base, "max_kv_size": kv}, text_file)
                    if "error" not in r:      # the dense cache of the same length: the unbounded run's
                        dense = r["kv_cache_bytes"] if kv is None else next(
                            (u.get("kv_cache_bytes") for u in runs[::-1] if u.get("max_kv_size") is None
                             and all(u[k] == r[k] for k in ("mode", "threads", "context"))), None)
                        r["kv_dense_bytes"] = dense
                    runs.append(r)
                    print(json.dumps(r), flush=True)
    desc = next((r["model_desc"] for r in runs if "model_desc" in r), a.model)
    res = {"model": desc, "weights": a.quantize or a.dtype, "machine": common.machine(), "loadavg_start": start, "loadavg_end": common.loadavg(),
           "command": "python bench/latency/bench_latency.py " + " ".join(sys.argv[1:]), "runs": runs}
    common.write_results(a.out, f"latency-{res['machine']['host']}{('-' + a.tag) if a.tag else ''}", res, markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
