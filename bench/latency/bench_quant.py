"""int8 weight-only quantization (and bf16) against float32: held-out perplexity, weight bytes, speed.

Speed (prompt tok/s, generation tok/s by wall clock and CPU time, peak RSS) is measured by
asa_runtime.benchmark (the code behind `asa-run bench`): a benchmark.Spec with `quantize` / `dtype`, run by
benchmark.run_one in a fresh process, prefilling --tokens of held-out prose and decoding --gen tokens after
--warmup steps. Perplexity (teacher-forced, chunk by chunk) and weight bytes have no counterpart in the
library, so this script computes them itself, in this process, on the same model folder.

    python bench/latency/bench_quant.py --tokens 2048
"""
from __future__ import annotations

import argparse
import math
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common

from asa_runtime.benchmark import Spec, run_one


VARIANTS = {"fp32": (None, None), "int8": ("int8", None), "bf16": (None, "bfloat16"),   # (quantize, dtype)
            "fp16": (None, "float16"), "f16": ("f16", None)}


def perplexity(model, variant, ids, chunk):
    """Held-out perplexity (asa_runtime.scoring, in this process) and weight bytes."""
    from asa_runtime.generate import Session
    from asa_runtime.quantize import weight_bytes
    from asa_runtime.scoring import token_nll

    quant, dtype = VARIANTS[variant]
    lm, desc = common.build_model(model, "full", quantize=quant, dtype=dtype)
    nll = token_nll(Session(lm, ctx_size=len(ids) + 2, prefill_chunk=chunk), ids).mean().item()
    return {"variant": variant, "model": desc, "ppl": math.exp(nll), "nll_per_token": nll,
            "weight_bytes": weight_bytes(lm.model)}


def speed(model_path, variant, a, text_file):
    """Prompt and decode speed through asa_runtime.benchmark (a fresh process)."""
    quant, dtype = VARIANTS[variant]
    spec = Spec(system="asa-run", model=model_path, context=a.tokens, n_gen=a.gen, threads=a.threads,
                text_file=text_file, warmup=a.warmup, prefill_chunk=a.chunk, quantize=quant, dtype=dtype)
    try:
        r = run_one(spec)
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        return {"speed_error": " ".join(str(e).split())}
    return {"prompt_tps": r["pp_tps"], "gen_tps": r["tg_tps"], "gen_tps_cpu": r["tg_cpu_tps"],
            "ttft_s": r["ttft_s"], "peak_rss_bytes": round(r["peak_rss_mib"] * 2**20)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="asa-small")
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=4, help="decode steps before timing generation")
    ap.add_argument("--chunk", type=int, default=512)
    ap.add_argument("--variants", default="fp32,int8,bf16")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(HERE / "results"))
    a = ap.parse_args()
    unknown = [v for v in a.variants.split(",") if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant(s) {', '.join(unknown)}; available: {', '.join(VARIANTS)}")
    import torch

    torch.set_num_threads(a.threads)
    lm, _ = common.build_model(a.model, "full")
    ids = common.text_ids(lm.tokenizer, a.tokens, held_out=True)
    del lm
    path, _ = common.model_folder(a.model, "full")
    text_file = common.prose_file(a.tokens, held_out=True)
    rows = [{**perplexity(a.model, v, ids, a.chunk), **speed(path, v, a, text_file)} for v in a.variants.split(",")]
    base = rows[0]
    for r in rows:
        r["ppl_change_pct"] = 100 * (r["ppl"] / base["ppl"] - 1)
    res = {"model": base["model"], "machine": common.machine(), "tokens": a.tokens, "loadavg": common.loadavg(),
           "command": "python bench/latency/bench_quant.py " + " ".join(sys.argv[1:]), "runs": rows}
    md = [f"# Weight quantization: perplexity change ({base['model']})", "",
          f"{a.tokens} held-out tokens; machine {res['machine']['host']} ({res['machine']['cpu']}), "
          f"{a.threads} thread(s), load average {res['loadavg']}.", "", f"Command: `{res['command']}`", "",
          "Speed by asa_runtime.benchmark (fresh process per variant): prompt of the same length, "
          f"{a.gen} generated tokens after {a.warmup} warm-up steps.", "",
          "| weights | ppl | change | weight MiB | prompt tok/s | gen tok/s (cpu) | peak RSS MiB |",
          "|---|---|---|---|---|---|---|"]
    for r in rows:
        sp = (f"error: {r['speed_error']} | | |" if "speed_error" in r else
              f"{r['prompt_tps']:.0f} | {r['gen_tps']:.1f} ({r['gen_tps_cpu']:.1f}) | {r['peak_rss_bytes'] / 2**20:.0f} |")
        md.append(f"| {r['variant']} | {r['ppl']:.3f} | {r['ppl_change_pct']:+.2f}% | {r['weight_bytes'] / 2**20:.1f} | {sp}")
    common.write_results(a.out, f"quant-{res['machine']['host']}", res, "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
