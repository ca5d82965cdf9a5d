"""What bounded KV memory (--max-kv-size) costs: perplexity of held-out text with and without eviction,
the largest logit difference, and the cache's size. Eviction drops only keys the selection policy can never
select again, so the cost should be zero up to float summation order (prefill chunks end at other places).

    python bench/latency/bench_eviction.py --tokens 4096 --bounds 256,512,1024

This script measures quality, not speed, so it runs its own teacher-forced loop in this process:
asa_runtime.benchmark (the code behind `asa-run bench`) has no perplexity measurement. The "seconds" of
each row in the JSON are only the time that loop took; the speed and memory of a bounded cache are
measured through the library by `bench_latency.py --max-kv-size` (`asa-run bench` runs the same code).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common


def teacher_forced(lm, ids, max_kv, chunk):
    """Feed ids chunk by chunk; returns (nll sum, count, list of logits chunks kept for comparison, session)."""
    import torch

    from asa_runtime.generate import Session

    s = Session(lm, ctx_size=len(ids) + 1, max_kv_size=max_kv, prefill_chunk=chunk)
    nll, count, outs, peak_used = 0.0, 0, [], 0
    for i in range(0, len(ids) - 1, chunk):
        part = ids[i: min(i + chunk, len(ids) - 1)]
        logits = s.feed(part, all_logits=True)[:, : s.n_vocab]             # (T, V)
        target = torch.tensor(ids[i + 1: i + 1 + len(part)])
        nll += torch.nn.functional.cross_entropy(logits, target, reduction="sum").item()
        count += len(part)
        outs.append(logits[:, :64].clone())                                 # a slice, to compare cheaply
        peak_used = max(peak_used, s.slots.n_used)
    return nll, count, torch.cat(outs), s, peak_used


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="asa-small")
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--bounds", default="256,512,1024")
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(HERE / "results"))
    a = ap.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    lm, desc = common.build_model(a.model, "full")
    ids = common.text_ids(lm.tokenizer, a.tokens, held_out=True)
    t = time.perf_counter()
    # the reference keeps every key (a cache of the whole context); without --max-kv-size a session is
    # bounded too (the lossless auto-sized bound, kv_policy.auto_kv_slots): that is the "default" row
    nll0, n, ref, s0, _ = teacher_forced(lm, ids, len(ids) + 1, a.chunk)
    rows = [{"max_kv_size": "every key", "ppl": math.exp(nll0 / n), "max_abs_logit_diff": 0.0,
             "kv_cache_bytes": s0.kv_bytes(), "keys_held_at_end": s0.slots.n_used, "evicted": s0.slots.evicted,
             "compactions": s0.slots.compactions, "seconds": time.perf_counter() - t}]
    reach = len(s0.plan.reachable())
    for b in [None] + [int(x) for x in a.bounds.split(",")]:
        t = time.perf_counter()
        try:
            nll, n2, out, s, peak = teacher_forced(lm, ids, b, a.chunk)
        except Exception as e:  # a bound below what the policy keeps: report it, go on
            rows.append({"max_kv_size": b, "error": " ".join(str(e).split())})
            continue
        rows.append({"max_kv_size": b, "ppl": math.exp(nll / n2), "max_abs_logit_diff": (out - ref).abs().max().item(),
                     "kv_cache_bytes": s.kv_bytes(), "keys_held_at_end": s.slots.n_used, "peak_keys_held": peak,
                     "evicted": s.slots.evicted, "compactions": s.slots.compactions,
                     "seconds": time.perf_counter() - t})
    res = {"model": desc, "machine": common.machine(), "tokens": a.tokens, "chunk": a.chunk,
           "reachable_at_end": reach, "loadavg": common.loadavg(),
           "command": "python bench/latency/bench_eviction.py " + " ".join(sys.argv[1:]), "runs": rows}
    md = [f"# Bounded KV cache: perplexity cost ({desc})", "",
          f"{a.tokens} held-out tokens, teacher-forced in chunks of {a.chunk}; machine {res['machine']['host']} "
          f"({res['machine']['cpu']}). Keys the policy could still select at the end: {reach}.", "",
          f"Command: `{res['command']}`", "",
          "| max KV | ppl | max abs logit diff | KV MiB | keys held | evicted | compactions |",
          "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            md.append(f"| {r['max_kv_size']} | error: {r['error']} | | | | | |")
            continue
        md.append(f"| {r['max_kv_size'] or 'default (auto)'} | {r['ppl']:.4f} | {r['max_abs_logit_diff']:.2e} | "
                  f"{r['kv_cache_bytes'] / 2**20:.1f} | {r['keys_held_at_end']} | {r['evicted']} | {r['compactions']} |")
    common.write_results(a.out, f"eviction-{res['machine']['host']}", res, "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
