"""int8 weight-only quantization (and bf16) against float32: held-out perplexity, weight bytes, decode speed.

    python bench/latency/bench_quant.py --tokens 2048
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common


def measure(model, variant, ids, gen, chunk):
    import torch

    from asa_runtime.generate import Session
    from asa_runtime.quantize import weight_bytes

    quant = "int8" if variant == "int8" else None
    dtype = "bfloat16" if variant == "bf16" else None
    lm, desc = common.build_model(model, "full", quantize=quant, dtype=dtype)
    s = Session(lm, ctx_size=len(ids) + gen + 2, prefill_chunk=chunk)
    nll, n = 0.0, 0
    t = time.perf_counter()
    for i in range(0, len(ids) - 1, chunk):
        part = ids[i: min(i + chunk, len(ids) - 1)]
        logits = s.feed(part, all_logits=True)[:, : s.n_vocab]
        target = torch.tensor(ids[i + 1: i + 1 + len(part)])
        nll += torch.nn.functional.cross_entropy(logits.float(), target, reduction="sum").item()
        n += len(part)
    prefill_s = time.perf_counter() - t
    tok = int(logits[-1].argmax())
    t, c = time.perf_counter(), time.process_time()
    for _ in range(gen):
        tok = int(s.step(tok)[: s.n_vocab].argmax())
    return {"variant": variant, "model": desc, "ppl": math.exp(nll / n), "nll_per_token": nll / n,
            "weight_bytes": weight_bytes(lm.model), "prompt_tps": n / prefill_s,
            "gen_tps": gen / (time.perf_counter() - t), "gen_tps_cpu": gen / (time.process_time() - c)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="asa-small")
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=512)
    ap.add_argument("--variants", default="fp32,int8,bf16")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(HERE / "results"))
    a = ap.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    lm, _ = common.build_model(a.model, "full")
    ids = common.text_ids(lm.tokenizer, a.tokens, held_out=True)
    del lm
    rows = [measure(a.model, v, ids, a.gen, a.chunk) for v in a.variants.split(",")]
    base = rows[0]
    for r in rows:
        r["ppl_change_pct"] = 100 * (r["ppl"] / base["ppl"] - 1)
    res = {"model": base["model"], "machine": common.machine(), "tokens": a.tokens, "loadavg": common.loadavg(),
           "command": "python bench/latency/bench_quant.py " + " ".join(sys.argv[1:]), "runs": rows}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"quant-{res['machine']['host']}"
    (out / f"{stem}.json").write_text(json.dumps(res, indent=2) + "\n")
    md = [f"# Weight quantization: perplexity change ({base['model']})", "",
          f"{a.tokens} held-out tokens; machine {res['machine']['host']} ({res['machine']['cpu']}), "
          f"{a.threads} thread(s), load average {res['loadavg']}.", "", f"Command: `{res['command']}`", "",
          "| weights | ppl | change | weight MiB | prompt tok/s | gen tok/s (cpu) |", "|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['variant']} | {r['ppl']:.3f} | {r['ppl_change_pct']:+.2f}% | {r['weight_bytes'] / 2**20:.1f} | "
                  f"{r['prompt_tps']:.0f} | {r['gen_tps']:.1f} ({r['gen_tps_cpu']:.1f}) |")
    (out / f"{stem}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
