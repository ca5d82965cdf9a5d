"""Decode speed of the MLX backend beside the torch backend, on this machine's CPU (mlx[cpu]), at 512 and
8k tokens of context. Not a target here: Metal on Apple silicon would be the real one (untested).

Both backends decode from the same state: the prompt is prefilled once with the torch backend and its
session state (the prompt-cache protocol: Session.state / Session.from_state) is loaded into a session of
each backend, so the 8k prefill is not repeated on the slow MLX CPU path. Each then runs the same greedy
steps; the greedy tokens of the two are compared. MLX's own prefill speed is measured at 512 only.
Also measured: the cost of one slot-indexed cache write (`k[:, :, slots, :] = new`) against the cache
length S, which must stay flat (MLX reuses the buffer) for decode to be O(T), not O(S), per step.

    python bench/mlx/bench_mlx.py [--model asa-small] [--steps 32] [--threads 1] [--tag cpu2]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench" / "latency"))

import common  # noqa: E402  (bench/latency/common.py: book text, machine description)


def decode(lm, state, steps: int, ctx: int):
    """Greedy decode `steps` tokens from `state`: (tokens, seconds for steps-2 timed steps)."""
    from asa_runtime.session import Session

    s = Session.from_state(lm, state, ctx_size=ctx)
    logits, toks = s.last_logits, []
    t0 = None
    for i in range(steps):
        if i == 2:                                          # two warm-up steps (first-call setup)
            t0 = time.perf_counter()
        t = int(logits[: s.n_vocab].argmax())
        toks.append(t)
        logits = s.step(t)
    return toks, time.perf_counter() - t0


def cache_write_us(n_slots: int, reps: int = 200) -> float:
    import mlx.core as mx

    from asa_runtime.backends.mlx_model import KVCache

    c = KVCache(6, 64, n_slots)
    mx.eval(c.k, c.v)
    new = mx.ones((1, 6, 1, 64))
    t0 = time.perf_counter()
    for i in range(reps):
        c.update(mx.array([i % n_slots], dtype=mx.int32), new, new)
        mx.eval(c.k, c.v)
    return (time.perf_counter() - t0) / reps * 1e6


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="asa-small")
    ap.add_argument("--contexts", default="512,8192")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--tag", default="cpu", help="machine tag in the result file name")
    ap.add_argument("--out", default=str(HERE / "results"))
    a = ap.parse_args()

    import mlx.core as mx
    import torch

    from asa_runtime.generate import load
    from asa_runtime.session import Session

    torch.set_num_threads(a.threads)
    lt = load(a.model)
    lm = load(a.model, backend="mlx")
    rows = []
    for ctx in (int(x) for x in a.contexts.split(",")):
        ids = common.text_ids(lt.tokenizer, ctx)
        room = ctx + a.steps + 1
        s = Session(lt, ctx_size=room)
        t0 = time.perf_counter()
        s.feed(ids)
        t_pre = time.perf_counter() - t0
        state = s.state()
        row = {"context": ctx, "torch_prefill_tok_s": round(ctx / t_pre, 1), "load_before": common.loadavg()}
        if ctx <= 512:                                      # MLX prefill on the netlib-BLAS CPU path
            sm = Session(lm, ctx_size=room)
            t0 = time.perf_counter()
            sm.feed(ids)
            row["mlx_prefill_tok_s"] = round(ctx / (time.perf_counter() - t0), 1)
        for name, l in (("torch", lt), ("mlx", lm)):
            toks, dt = decode(l, state, a.steps, room)
            row[f"{name}_decode_tok_s"] = round((a.steps - 2) / dt, 2)
            row[f"{name}_tokens"] = toks
        row["same_greedy_tokens"] = row.pop("torch_tokens") == row.pop("mlx_tokens")
        row["load_after"] = common.loadavg()
        rows.append(row)
        print(json.dumps(row), flush=True)

    writes = {S: round(cache_write_us(S), 1) for S in (512, 8192, 131072)}
    print("cache write us by S:", writes, flush=True)
    result = {"model": a.model, "steps": a.steps, "torch_threads": a.threads, "mlx_device": str(mx.default_device()),
              "mlx_version": mx.__version__, "machine": common.machine(), "rows": rows,
              "cache_write_us_by_slots": writes,
              "note": "mlx[cpu] Linux wheel bundles the reference (netlib) BLAS; shared machine (see loadavg)"}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"decode_{a.tag}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
