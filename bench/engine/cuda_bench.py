"""The engine on CUDA: asa-small in ASA mode against the same weights dense (plan none), at long context,
decode eager and replayed from CUDA graphs (issue 14's H200 part). A thin caller of asa_runtime.benchmark
(each measurement in a fresh process, like `asa-run bench`).

Run on the device machine (book-like text carried in, or the benchmark's built-in paragraphs):
    python bench/engine/cuda_bench.py --contexts 8192,32768,131072 --text-file runs/bench_text/book.txt \\
        --out bench/engine/results/cuda-h200
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from asa_runtime import benchmark  # noqa: E402
from exporters.common import atomic_file  # noqa: E402


def label(r) -> str:
    return "graph + compile" if r.compile else "graph" if r.cuda_graph else "eager"


def markdown(rows, info: dict, gpu: str, args) -> str:
    head = [f"# The engine on CUDA: ASA vs dense, eager vs CUDA-graph decode ({gpu})", "",
            f"Model {args.model}, dtype {args.dtype or 'the model’s'}, {args.n_gen} generated tokens after a warm-up, "
            f"greedy; medians of {args.repeats} run(s); prefill in chunks of {args.prefill_chunk}; "
            f"CPU {info['cpu']} ({info['cores']} cores). "
            "pp: prompt tokens/s (TTFT includes the analyzer + planner on the CPU, timed apart as plan s); "
            "tg: generated tokens/s.", "",
            "| mode | decode | context | pp tok/s | TTFT s | plan s | tg tok/s | GPU peak MiB | KV MiB |",
            "|---|---|---|---|---|---|---|---|---|"]
    body = [f"| {r.mode} | {label(r)} | {r.context} | {r.pp_tps:.0f} | {r.ttft_s:.3f} | "
            f"{r.plan_s:.2f} | {r.tg_tps:.0f} | {r.gpu_peak_mib:.0f} | {r.kv_mib:.0f} |" for r in rows]
    by = {(r.mode, r.cuda_graph, r.context): r for r in rows if not r.compile}
    ratios = ["", "| context | graph / eager tg (ASA) | graph / eager tg (dense) | ASA / dense tg (graph) | "
              "ASA / dense TTFT sooner |", "|---|---|---|---|---|"]
    for c in args.contexts:
        g = lambda m, cg: by.get((m, cg, c))          # noqa: E731
        cell = lambda a, b: f"{a.tg_tps / b.tg_tps:.2f}x" if a and b else "–"   # noqa: E731
        ttft = f"{g('dense', True).ttft_s / g('asa', True).ttft_s:.2f}x" if g("dense", True) and g("asa", True) else "–"
        ratios.append(f"| {c} | {cell(g('asa', True), g('asa', False))} | {cell(g('dense', True), g('dense', False))} | "
                      f"{cell(g('asa', True), g('dense', True))} | {ttft} |")
    return "\n".join(head + body + ratios) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="asa-small")
    ap.add_argument("--contexts", type=lambda t: [int(x) for x in t.split(",")], default=[8192, 32768, 131072])
    ap.add_argument("--n-gen", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--modes", default="asa,dense")
    ap.add_argument("--text-file", default=None)
    ap.add_argument("--prefill-chunk", type=int, default=4096, help="a GPU wants larger chunks than a CPU")
    ap.add_argument("--compile-contexts", type=lambda t: [int(x) for x in t.split(",") if x], default=[],
                    help="also measure torch.compile + graph decode at these contexts")
    ap.add_argument("--out", default=None, help="path prefix: writes PREFIX.json and PREFIX.md")
    args = ap.parse_args()
    import torch

    gpu = torch.cuda.get_device_name(0)
    rows = []
    for c in args.contexts:              # results written after each context: a cut-off run keeps what it did
        rows += benchmark.run(args.model, [c], n_gen=args.n_gen, repeats=args.repeats,
                              modes=args.modes.split(","), text_file=args.text_file, device="cuda",
                              dtype=args.dtype, cuda_graphs=(False, True), prefill_chunk=args.prefill_chunk)
        if c in args.compile_contexts:
            rows += benchmark.run(args.model, [c], n_gen=args.n_gen, repeats=args.repeats,
                                  modes=args.modes.split(","), text_file=args.text_file, device="cuda",
                                  dtype=args.dtype, cuda_graphs=(True,), compile=True,
                                  prefill_chunk=args.prefill_chunk)
        info = {**benchmark.machine(), "gpu": gpu}
        md = markdown(rows, info, gpu, args)
        print(md, flush=True)
        if args.out:
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            for suffix, text in ((".json", benchmark.to_json(rows, info)), (".md", md)):
                with atomic_file(out.with_name(out.name + suffix)) as tmp:
                    tmp.write_text(text)
            print(json.dumps({"wrote": [str(out) + ".json", str(out) + ".md"]}))


if __name__ == "__main__":
    main()
