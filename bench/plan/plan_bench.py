"""Analyzer + planner benchmark (CPU, one core): throughput, a 32k-token plan's time and peak memory,
extend() cost versus context length, and plan statistics per mode on WikiText-2.

    python bench/plan/plan_bench.py [--tokens 32768] [--stats-tokens 200000] [--out bench/results]

Writes plan_bench.json and plan_bench.md. Pieces come from the asa-small tokenizer when it is installed,
otherwise from word-level pre-tokenization (stated in the results)."""
from __future__ import annotations

import argparse
import json
import lzma
import os
import platform
import statistics
import time
import tracemalloc
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")

from asa_runtime.config import PlanConfig  # noqa: E402
from asa_runtime.linguistics.pieces import word_pieces  # noqa: E402
from asa_runtime.linguistics.planner import Planner  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"


def load_pieces(text: str):
    try:
        from asa_runtime.registry import resolve
        from asa_runtime.tokenizer import Tokenizer

        tok = Tokenizer.from_file(resolve("asa-small") / "tokenizer.json")
        return [tok.pieces[i] for i in tok.encode(text)], "asa-small BPE"
    except Exception:
        return word_pieces(text), "word pieces (no asa-small tokenizer installed)"


def prose(n_chars: int) -> str:
    path = SHARED / "english_prose" / "eltec_eng" / "eltec_eng_level1.jsonl.xz"
    out, size = [], 0
    with lzma.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            t = json.loads(line)["text"]
            out.append(t)
            size += len(t)
            if size >= n_chars:
                break
    return "\n\n".join(out)[:n_chars]


def throughput(pieces, cfg):
    """CPU time of this (single-threaded) process: the number a dedicated core would give, even when other
    work shares the machine; wall time beside it. `cold`: the first pass of a freshly loaded analyzer (empty
    per-word tagger caches, load time excluded); `warm`: the median of 3 passes after it (steady state, as in a
    long session)."""
    from asa_runtime.linguistics.analyzer import Analyzer

    planner = Planner(cfg, analyzer=Analyzer.load())
    planner.plan(pieces[:1])
    times = []
    for _ in range(4):
        t, c = time.perf_counter(), time.process_time()
        planner.plan(pieces)
        times.append((time.perf_counter() - t, time.process_time() - c))
    wall = statistics.median(t for t, _ in times[1:])
    cpu = statistics.median(c for _, c in times[1:])
    return {"cpu_tok_s": len(pieces) / cpu, "wall_tok_s": len(pieces) / wall, "cold_cpu_tok_s": len(pieces) / times[0][1]}


def plan_32k(pieces, cfg):
    planner = Planner(cfg)
    planner.plan(pieces[:100])
    t = time.perf_counter()
    keys = planner.plan(pieces)
    dt = time.perf_counter() - t                    # timed without tracemalloc (it slows Python ~10x)
    tracemalloc.start()
    planner.plan(pieces)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    nxn = len(pieces) ** 2                          # bytes of an N x N bool mask, for scale
    return {"tokens": len(pieces), "seconds": dt, "peak_mib": peak / 2**20, "plan_mib": keys.nbytes / 2**20,
            "nxn_bool_mask_mib": nxn / 2**20}


def extend_cost(pieces, cfg, contexts=(1024, 4096, 16384, 32768), probe=512):
    inc = Planner(cfg).incremental()
    out, done = {}, 0
    for c in contexts:
        if c + probe > len(pieces):
            break
        inc.extend_many(pieces[done:c])
        ts = []
        for p in pieces[c:c + probe]:
            t = time.perf_counter()
            inc.extend(p)
            ts.append(time.perf_counter() - t)
        done = c + probe
        out[str(c)] = {"median_us": statistics.median(ts) * 1e6, "p90_us": float(np.percentile(ts, 90)) * 1e6}
    return out


def stats(pieces, mode):
    cfg = PlanConfig(mode=mode, k=64)
    inc = Planner(cfg).incremental()
    keys = inc.extend_many(pieces)
    st = inc.st
    sent = np.asarray(st.w_sent)[np.asarray(st.tok_word)]             # (N,) sentence of each token
    valid = keys >= 0
    ksent = np.where(valid, sent[np.clip(keys, 0, None)], -1)
    within = (ksent == sent[:, None]) & valid
    n = valid.sum()
    return {"mean_keys": float(valid.sum(1).mean()), "share_within_sentence": float(within.sum() / n),
            "share_beyond_sentence": float(1 - within.sum() / n), "rows_full": float((valid.sum(1) == 64).mean())}


def wikitext_text(max_chars: int) -> str:
    with lzma.open(SHARED / "wikitext2_tokenized" / "wiki.valid.tokens.xz", "rt", encoding="utf-8") as f:
        return f.read()[:max_chars]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=32768)
    ap.add_argument("--stats-tokens", type=int, default=100_000)
    ap.add_argument("--out", default=str(ROOT / "bench" / "plan" / "results"))
    a = ap.parse_args()
    text = prose(a.tokens * 8)
    pieces, tok_name = load_pieces(text)
    pieces = pieces[: a.tokens + 1024]
    cfg = PlanConfig(mode="full", k=64)
    res = {"machine": f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                      f"Python {platform.python_version()} (one core: single-threaded)",
           "pieces": tok_name, "config": cfg.to_dict()}
    res["throughput_tok_s"] = {m: throughput(pieces[:20000], PlanConfig(mode=m, k=64))
                               for m in ("full", "pos_only", "features_only", "random")}
    res["plan_32k"] = plan_32k(pieces[: a.tokens], cfg)
    res["extend_cost"] = extend_cost(pieces, cfg)
    wt, wt_name = load_pieces(wikitext_text(a.stats_tokens * 6))
    wt = wt[: a.stats_tokens]
    res["wikitext2_valid_stats"] = {"tokens": len(wt), "pieces": wt_name,
                                    **{m: stats(wt, m) for m in ("full", "pos_only", "features_only", "random")}}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "plan_bench.json").write_text(json.dumps(res, indent=2))
    lines = [f"# Plan bench\n\nMachine: {res['machine']}. Pieces: {tok_name}. Command: `python bench/plan/plan_bench.py`\n",
             "| mode | analyze+plan tok/s (CPU time, warm) | (wall time) | first pass, fresh analyzer |", "|---|---|---|---|"]
    lines += [f"| {m} | {v['cpu_tok_s']:,.0f} | {v['wall_tok_s']:,.0f} | {v['cold_cpu_tok_s']:,.0f} |"
              for m, v in res["throughput_tok_s"].items()]
    p = res["plan_32k"]
    lines += ["", f"32k plan: {p['tokens']} tokens in {p['seconds']:.2f} s, peak traced memory {p['peak_mib']:.1f} MiB "
              f"(plan itself {p['plan_mib']:.1f} MiB; an N x N bool mask would be {p['nxn_bool_mask_mib']:.0f} MiB)", "",
              "| context | extend() median us | p90 us |", "|---|---|---|"]
    lines += [f"| {c} | {v['median_us']:.1f} | {v['p90_us']:.1f} |" for c, v in res["extend_cost"].items()]
    lines += ["", f"WikiText-2 valid ({res['wikitext2_valid_stats']['tokens']} tokens), k=64 window=16 sinks=4:", "",
              "| mode | mean keys/query | within sentence | beyond sentence | rows at K |", "|---|---|---|---|---|"]
    for m in ("full", "pos_only", "features_only", "random"):
        s = res["wikitext2_valid_stats"][m]
        lines.append(f"| {m} | {s['mean_keys']:.1f} | {s['share_within_sentence']:.1%} | "
                     f"{s['share_beyond_sentence']:.1%} | {s['rows_full']:.1%} |")
    (out / "plan_bench.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
