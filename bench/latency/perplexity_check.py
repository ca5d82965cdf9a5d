"""`asa-run perplexity` on held-out book text, with the model's plan and with `--mode none` (the same weights
attending densely: what llama.cpp runs from the GGUF export), beside the step-by-step perplexity of the same
tokens through Session.step (f16_decode_check.run, another code path: the two must agree).

    python bench/latency/perplexity_check.py [--model asa-small] [--tokens 1024] [--threads 2]

Writes results/perplexity-<host>.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402
from f16_decode_check import run as stepwise  # noqa: E402


def cli(model_path: str, text_file: str, n: int, threads: int, mode: str) -> dict:
    """The CLI's --json result (asa-run, in its own process): one chunk of n + 1 tokens, every token after the
    first scored."""
    out = subprocess.run([sys.executable, "-c", "from asa_runtime.cli import main; main()", "perplexity", "-m", model_path, "-f", text_file,
                          "-c", str(n + 1), "--chunks", "1", "--all-tokens", "--kv-dtype", "float32", "-t",
                          str(threads), "--mode", mode, "--json"], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="asa-small")
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(HERE / "results"))
    a = ap.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    lm, _ = common.build_model(a.model, "full")
    ids = common.text_ids(lm.tokenizer, a.tokens + 1, held_out=True)
    text = lm.tokenizer.decode(ids)
    if lm.tokenizer.encode(text)[: len(ids)] != list(ids):
        raise SystemExit("the held-out tokens do not survive a decode / encode round trip: pick another --tokens")
    path, _ = common.model_folder(a.model, "full")
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write(text)
    try:
        plan, dense = (cli(str(path), f.name, a.tokens, a.threads, m) for m in ("plan", "none"))
    finally:
        Path(f.name).unlink()
    step_ppl = stepwise(a.model, None, a.tokens)[0]
    res = {"model": a.model, "tokens": a.tokens, "machine": common.machine(),
           "command": "python bench/latency/perplexity_check.py " + " ".join(sys.argv[1:]),
           "cli_plan": plan, "cli_dense": dense, "stepwise_plan_ppl": step_ppl}
    md = [f"# asa-run perplexity on held-out text ({a.model})", "",
          f"{a.tokens} held-out tokens (one chunk, every token after the first), fp32 KV; machine "
          f"{res['machine']['host']} ({res['machine']['cpu']}), {a.threads} thread(s).", "",
          f"Command: `{res['command']}`", "",
          "| path | ppl |", "|---|---|",
          f"| `asa-run perplexity` (the model's plan) | {plan['ppl']:.4f} |",
          f"| Session.step one token at a time (the same plan) | {step_ppl:.4f} |",
          f"| `asa-run perplexity --mode none` (dense: llama.cpp's view of the GGUF) | {dense['ppl']:.4f} |"]
    common.write_results(a.out, f"perplexity-{res['machine']['host']}", res, "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
