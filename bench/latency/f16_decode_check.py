"""Does `--quantize f16` change what the decode path computes? Teacher-forced perplexity through Session.step
(the one-token path, where f16 weights multiply in float16: quantize.F16Linear) with float32 and with f16
weights, the largest logit difference, how often the greedy token agrees, and the steps per second of each.

    python bench/latency/f16_decode_check.py [--model asa-small] [--tokens 1024] [--threads 1]

Held-out book text (common.text_ids). Writes results/f16-decode-<host>.{json,md}.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402


def run(model: str, quantize: str | None, n: int):
    """(perplexity, decode steps per second, (n, V) logits) of n held-out tokens fed one step at a time."""
    import torch

    from asa_runtime.generate import Session

    lm, _ = common.build_model(model, "full", quantize=quantize)
    ids = common.text_ids(lm.tokenizer, n + 1, held_out=True)
    s = Session(lm, ctx_size=n + 8)
    logits, rows, nll, step_s = s.feed(ids[:1]), [], 0.0, 0.0
    for i in range(1, n + 1):
        lg = logits[: s.n_vocab].float()
        nll -= torch.log_softmax(lg, -1)[ids[i]].item()
        rows.append(lg)
        if i < n:
            t = time.perf_counter()
            logits = s.step(int(ids[i]))
            step_s += time.perf_counter() - t
    return math.exp(nll / n), (n - 1) / step_s, torch.stack(rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="asa-small")
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(HERE / "results"))
    a = ap.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    (p32, s32, l32), (p16, s16, l16) = run(a.model, None, a.tokens), run(a.model, "f16", a.tokens)
    res = {"model": a.model, "tokens": a.tokens, "threads": a.threads, "machine": common.machine(),
           "loadavg": common.loadavg(), "command": "python bench/latency/f16_decode_check.py " + " ".join(sys.argv[1:]),
           "fp32": {"ppl": p32, "steps_per_s": s32}, "f16": {"ppl": p16, "steps_per_s": s16},
           "max_abs_logit_diff": (l32 - l16).abs().max().item(),
           "greedy_agreement": (l32.argmax(-1) == l16.argmax(-1)).float().mean().item()}
    md = [f"# f16 weights on the decode path ({a.model})", "",
          f"{a.tokens} held-out tokens teacher-forced through Session.step; machine {res['machine']['host']} "
          f"({res['machine']['cpu']}), {a.threads} thread(s), load average {res['loadavg']}.", "",
          f"Command: `{res['command']}`", "",
          "| weights | ppl | steps/s |", "|---|---|---|",
          f"| fp32 | {p32:.4f} | {s32:.0f} |", f"| f16 | {p16:.4f} ({100 * (p16 / p32 - 1):+.3f}%) | {s16:.0f} "
          f"({s16 / s32:.2f}x) |", "",
          f"Largest logit difference {res['max_abs_logit_diff']:.4f}; the greedy token agrees at "
          f"{100 * res['greedy_agreement']:.2f}% of positions."]
    common.write_results(a.out, f"f16-decode-{res['machine']['host']}", res, "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
