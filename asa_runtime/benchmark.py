"""`asa-run bench`: llama-bench-style latency of the runtime against llama.cpp on the same weights.

One row per (system, context): prompt processing (pp, tokens/s), text generation (tg, tokens/s, by wall
clock and by CPU time), time to first token, peak process memory (RSS) and KV-cache bytes; medians over
repeats with their spread. Every measurement runs in a fresh process (`python -m asa_runtime.benchmark`),
so its peak RSS is its own and one system's arenas never count against another.

Systems: the model on each requested backend in ASA mode; the same weights in dense mode (plan `none`) on
the torch backend; llama.cpp (llama-cpp-python, optional) on the dense GGUF of the same weights made by
exporters/gguf.py (cached), same threads, flash attention on, fed the very same token ids.

The prompt is book-like English (plans depend on real sentence structure): a text file given by the
caller, or the paragraphs below (written for this benchmark) cycled to length.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .process_memory import peak_rss_bytes   # the process's own peak (ru_maxrss carries the parent's)

TEXT = (
    "The ferry left the harbour an hour before dawn, and the few passengers who had slept on the benches "
    "woke to the sound of the engine and the smell of tar. Anna stood at the rail with her brother. He "
    "had promised their mother that he would bring her back before winter, and he meant to keep his word, "
    "although neither of them knew what they would find on the island.\n\n"
    "When the fog lifted they saw the lighthouse, white against the grey cliffs, and the village below "
    "it. \"Is that where he lived?\" she asked. Her brother nodded. He did not say that the old man had "
    "written to him only once in twenty years, or that the letter had asked for nothing but money.\n\n"
    "The inn was full of fishermen who looked at the strangers without speaking. The landlady, a tall "
    "woman with a voice like a gull, gave them a room above the kitchen and told them that the keeper had "
    "died in March. She had kept his books and his clock, because nobody else wanted them, and she would "
    "sell them for what they were worth, which was little enough.\n\n"
    "That night Anna read the books by candlelight. They were not books at all but journals, one for every "
    "year, filled with the weather, the ships that passed and the birds that rested on the rail. In the "
    "last of them, between two pages about a storm, she found a map of the island drawn in a careful hand, "
    "and beside a cove on its northern shore the keeper had written her name.\n\n"
)
COLUMNS = ("system", "backend", "mode", "context", "pp_tps", "tg_tps", "tg_cpu_tps", "ttft_s", "peak_rss_mib",
           "kv_mib")


@dataclass
class Spec:
    """One measurement: which system, at which context, with how many generated tokens."""
    system: str                  # "asa-run" or "llama.cpp"
    model: str
    backend: str = "torch"
    mode: str = "asa"            # "asa" (the model's plan) or "dense" (plan none, same weights)
    context: int = 512
    n_gen: int = 128
    threads: int = 1
    text_file: str | None = None
    gguf: str | None = None
    max_kv_size: int | None = None
    warmup: int = 4
    device: str = "cpu"
    dtype: str | None = None     # weights (and KV) dtype; None: the model's own
    kv_dtype: str | None = "auto"   # as asa-run generate: bfloat16 for a sparse fp32 model
    cuda_graph: bool = True      # CUDA only: decode replayed from a CUDA graph (False: eager steps)
    compile: bool = False        # CUDA only: torch.compile the decode step before the graph records it
    prefill_chunk: int | None = None   # None: the engine's default (512, sized for CPUs)
    quantize: str | None = None  # weight-only scheme passed to load ("int8"; torch backend)
    rope_clamp: int | None = None   # ASA rows: override the model's RoPE clamp (None: the model's; 0: off)


@dataclass
class Row:
    system: str
    backend: str
    mode: str
    context: int
    n_gen: int
    repeats: int
    pp_tps: float
    tg_tps: float
    tg_cpu_tps: float
    ttft_s: float
    peak_rss_mib: float
    kv_mib: float
    spread: dict = field(default_factory=dict)     # column -> [min, max] over repeats
    device: str = "cpu"
    cuda_graph: bool = False
    compile: bool = False
    gpu_peak_mib: float = 0.0    # CUDA: torch's peak allocated memory
    plan_s: float = 0.0          # CUDA, ASA: the analyzer + planner's share of TTFT (timed apart, on the CPU)
    pp_cpu_tps: float = 0.0      # asa-run: prompt tokens per CPU second of the process
    rss_before_prompt_mib: float = 0.0   # asa-run: peak RSS with the model loaded, before the prompt
    kv_keys_held: float = 0.0    # asa-run: cache slots in use at the end (below the context when bounded)
    evicted: float = 0.0         # asa-run: keys dropped by a bounded cache (max_kv_size)


# ---- the text ------------------------------------------------------------------------------------------
def prompt_ids(tokenizer, n: int, text_file: str | None = None) -> list[int]:
    text = Path(text_file).read_text(encoding="utf-8") if text_file else TEXT
    base = tokenizer.encode(text)
    if not base:
        raise ValueError(f"{text_file}: no text to build a prompt from")
    ids = []
    while len(ids) < n:
        ids += base
    return ids[:n]


# ---- one measurement (runs in its own process) ------------------------------------------------------------
def measure_runtime(spec: Spec) -> dict:
    import torch

    from .generate import load
    from .session import Session

    torch.set_num_threads(spec.threads)
    cuda = spec.device.startswith("cuda")
    lm = load(spec.model, backend=spec.backend, mode="none" if spec.mode == "dense" else None, device=spec.device,
              dtype=spec.dtype, quantize=spec.quantize, kv_dtype=spec.kv_dtype if spec.mode != "dense" else None,
              rope_clamp=spec.rope_clamp if spec.mode != "dense" else None)
    if cuda:
        lm.backend.cuda_graph, lm.backend.compile_decode = spec.cuda_graph, spec.compile
    ids = prompt_ids(lm.tokenizer, spec.context, spec.text_file)
    extra = {}
    if cuda and spec.mode != "dense":      # the CPU-side share of TTFT, timed apart (a GPU waits for it)
        p0 = time.perf_counter()
        lm.planner.plan([lm.tokenizer.pieces[t] for t in ids])
        extra["plan_s"] = time.perf_counter() - p0
    if cuda:                               # compile and autotune the kernels outside the timed prefill
        w = Session(lm, ctx_size=1024)
        w.feed(ids[:512])
        for _ in range(2):
            w.step(ids[0])
        del w
        torch.cuda.synchronize()
    s = Session(lm, ctx_size=spec.context + spec.n_gen + spec.warmup + 8, max_kv_size=spec.max_kv_size,
                prefill_chunk=spec.prefill_chunk)
    rss0 = peak_rss_bytes()
    t0, pc0 = time.perf_counter(), time.process_time()
    logits = s.feed(ids)
    tok = int(logits[: s.n_vocab].argmax())
    t1, pc1 = time.perf_counter(), time.process_time()
    for _ in range(spec.warmup):             # first-call costs are not speed (llama-bench warms up too)
        tok = int(s.step(tok)[: s.n_vocab].argmax())
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(spec.n_gen):
        tok = int(s.step(tok)[: s.n_vocab].argmax())
    w1, c1 = time.perf_counter(), time.process_time()     # int(argmax) each step: the GPU is synchronised
    if cuda:
        extra["gpu_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return {"pp_tps": len(ids) / (t1 - t0), "ttft_s": t1 - t0, "tg_tps": spec.n_gen / (w1 - w0),
            "tg_cpu_tps": spec.n_gen / max(c1 - c0, 1e-9), "peak_rss_mib": peak_rss_bytes() / 2**20,
            "kv_mib": s.kv_bytes() / 2**20, "pp_cpu_tps": len(ids) / max(pc1 - pc0, 1e-9),
            "rss_before_prompt_mib": rss0 / 2**20, "kv_keys_held": int(s.slots.n_used),
            "evicted": int(s.slots.evicted), **extra}


def measure_llama_cpp(spec: Spec) -> dict:
    import llama_cpp
    import numpy as np
    from llama_cpp import Llama

    from .tokenizer import Tokenizer

    n_ctx = spec.context + spec.n_gen + spec.warmup + 8
    llm = Llama(model_path=spec.gguf, n_ctx=n_ctx, n_threads=spec.threads, n_threads_batch=spec.threads,
                n_batch=512, flash_attn=True, verbose=False)
    tok_path = Path(spec.gguf).with_suffix(".tokenizer.json")
    ids = prompt_ids(Tokenizer.from_file(tok_path), spec.context, spec.text_file)   # the same token ids
    n_vocab = llm.n_vocab()

    def greedy() -> int:     # the last token's logits (without logits_all, llama.cpp keeps only those)
        return int(np.argmax(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))))
    t0 = time.perf_counter()
    llm.eval(ids)
    tok = greedy()
    t1 = time.perf_counter()
    for _ in range(spec.warmup):
        llm.eval([tok])
        tok = greedy()
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(spec.n_gen):
        llm.eval([tok])
        tok = greedy()
    w1, c1 = time.perf_counter(), time.process_time()
    meta = llm.metadata
    n_layer, n_kv = int(meta.get("llama.block_count", 0)), int(meta.get("llama.attention.head_count_kv", 0))
    d, n_head = int(meta.get("llama.embedding_length", 0)), int(meta.get("llama.attention.head_count", 1))
    kv = 2 * n_layer * n_kv * (d // n_head) * n_ctx * 2          # llama.cpp's default f16 KV cache
    return {"pp_tps": len(ids) / (t1 - t0), "ttft_s": t1 - t0, "tg_tps": spec.n_gen / (w1 - w0),
            "tg_cpu_tps": spec.n_gen / max(c1 - c0, 1e-9), "peak_rss_mib": peak_rss_bytes() / 2**20,
            "kv_mib": kv / 2**20}


def _worker(argv: list[str]) -> None:
    spec = Spec(**json.loads(argv[0]))
    out = measure_llama_cpp(spec) if spec.system == "llama.cpp" else measure_runtime(spec)
    print("RESULT " + json.dumps(out), flush=True)


def run_one(spec: Spec, timeout: float = 3600) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(spec.threads)}
    r = subprocess.run([sys.executable, "-m", "asa_runtime.benchmark", json.dumps(asdict(spec))], env=env,
                       capture_output=True, text=True, timeout=timeout)
    for line in r.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = " ".join((r.stderr or r.stdout).strip().splitlines()[-1:]) or f"exit code {r.returncode}"
    raise RuntimeError(f"{spec.system} ({spec.backend}, {spec.mode}) at {spec.context}: {tail}")


# ---- the whole bench --------------------------------------------------------------------------------------
def systems(model: str, backends: list[str], modes: list[str], llama_cpp: bool) -> list[dict]:
    out = [dict(system="asa-run", backend=b, mode="asa") for b in backends if "asa" in modes]
    if "dense" in modes:
        out.append(dict(system="asa-run", backend="torch", mode="dense"))
    if llama_cpp:
        out.append(dict(system="llama.cpp", backend="llama.cpp", mode="dense"))
    return out


def run(model: str, contexts: list[int], n_gen: int = 128, repeats: int = 3, backends=("torch",),
        modes=("asa", "dense"), gguf: str | None = None, threads: int = 1, text_file: str | None = None,
        progress: bool = True, device: str = "cpu", dtype: str | None = None,
        cuda_graphs=(True,), compile: bool = False, prefill_chunk: int | None = None,
        quantize=(None,), rope_clamps=(None,), warmup: bool = False) -> list[Row]:
    """gguf: the dense GGUF of the same weights (with `<name>.tokenizer.json` beside it) to run llama.cpp on;
    None leaves llama.cpp out. On CUDA, `cuda_graphs=(False, True)` measures eager and graphed decode.
    quantize: weight schemes for the asa-run torch rows (None: the model's dtype), one row set each; a
    quantized row's backend reads e.g. "torch f16". rope_clamps: RoPE clamps of the ASA rows (None: the model's),
    one row set each; an overridden row's backend reads e.g. "torch rope_clamp=0". warmup: one untimed run of
    each configuration before its repeats (llama-bench's warm-up): on CUDA the first process of a configuration
    also compiles kernels and captures graphs, which would otherwise sit in the medians of few repeats."""
    from tqdm import tqdm

    found = systems(model, list(backends), list(modes), gguf is not None)
    found = [{**d, "quantize": q} if d["backend"] == "torch" else d
             for d in found for q in (quantize if d["backend"] == "torch" else (None,))]
    found = [{**d, "rope_clamp": c} if d["mode"] == "asa" and d["system"] == "asa-run" else d
             for d in found for c in (rope_clamps if d["mode"] == "asa" and d["system"] == "asa-run" else (None,))]
    if device.startswith("cuda"):
        found = [{**d, "device": device, "dtype": dtype, "cuda_graph": g, "compile": compile and g,
                  "prefill_chunk": prefill_chunk} for d in found if d["system"] == "asa-run" for g in cuda_graphs]
    elif dtype:
        found = [{**d, "dtype": dtype} if d["system"] == "asa-run" else d for d in found]
    plan = [(sysd, c) for c in contexts for sysd in found]
    rows, bar = [], tqdm(total=len(plan) * (repeats + bool(warmup)), desc="bench", unit="run", disable=not progress,
                         file=sys.stderr)
    for sysd, c in plan:
        spec = Spec(model=model, context=c, n_gen=n_gen, threads=threads, text_file=text_file, gguf=gguf,
                    **sysd)
        if warmup:
            bar.set_postfix_str(f"warm-up {sysd['system']} {sysd['backend']} {sysd['mode']} {c} {spec.device}")
            run_one(spec)
            bar.update()
        results = []
        for _ in range(repeats):
            bar.set_postfix_str(f"{sysd['system']} {sysd['backend']} {sysd['mode']} {c} {spec.device}")
            results.append(run_one(spec))
            bar.update()
        med = {k: statistics.median(r[k] for r in results) for k in results[0]}
        spread = {k: [min(r[k] for r in results), max(r[k] for r in results)] for k in results[0]}
        label = sysd["backend"] + (f" {spec.quantize}" if spec.quantize else "") \
            + (f" rope_clamp={spec.rope_clamp}" if spec.rope_clamp is not None else "")
        rows.append(Row(system=sysd["system"], backend=label, mode=sysd["mode"], context=c,
                        n_gen=n_gen, repeats=repeats, spread=spread, device=spec.device,
                        cuda_graph=spec.device.startswith("cuda") and spec.cuda_graph, compile=spec.compile,
                        **med))
    bar.close()
    return rows


# ---- reporting --------------------------------------------------------------------------------------------
def machine(device: str = "cpu") -> dict:
    """The machine the rows ran on; with device cuda also the GPU's name (the rows measured it, not the CPU)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        mem = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        pass
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for dist in ("torch", "numpy", "onnxruntime", "mlx", "llama_cpp_python"):
        try:
            versions[dist] = version(dist)
        except PackageNotFoundError:
            pass
    gpu = None
    if device.startswith("cuda"):
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"host": platform.node(), "cpu": cpu, "gpu": gpu, "cores": os.cpu_count(), "memory_gib": mem and mem / 2**30,
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
            "python": platform.python_version(), "versions": versions}


def _fmt(v: float) -> str:
    return f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 1000 else f"{v:.0f}"


def to_markdown(rows: list[Row], info: dict, threads: int) -> str:
    la = info.get("load_average")
    load = f"; load average {la[0]:.2f} / {la[1]:.2f} / {la[2]:.2f} at the end" if la else ""
    head = [f"# asa-run bench ({info['host']}{', ' + info['gpu'] if info.get('gpu') else ''})", "",
            *([f"GPU {info['gpu']} (the asa-run rows ran on it; the CPU line is the host's)", ""] if info.get("gpu") else []),
            f"CPU {info['cpu']}, {info['cores']} cores, {threads} thread(s), "
            f"{(info['memory_gib'] or 0):.1f} GiB{load}", "", "versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()),
            "", "Medians over repeats" + (" after one untimed warm-up run of each configuration" if info.get("warmup")
                                          else "") + " (spread min-max in the JSON). pp: prompt tokens/s; tg: generated tokens/s "
            "(wall clock; CPU-time figure beside it, steadier on a busy machine); TTFT: prefill + first token.",
            "", "| system | backend | mode | context | pp tok/s | tg tok/s | tg tok/s (CPU) | TTFT s | "
            "peak RSS MiB | KV MiB |", "|---|---|---|---|---|---|---|---|---|---|"]
    body = [f"| {r.system} | {r.backend} | {r.mode} | {r.context} | {_fmt(r.pp_tps)} | {_fmt(r.tg_tps)} | "
            f"{_fmt(r.tg_cpu_tps)} | {r.ttft_s:.3f} | {r.peak_rss_mib:.0f} | {r.kv_mib:.1f} |" for r in rows]
    ref = {r.context: r for r in rows if r.system == "llama.cpp"}
    ratios = []
    for r in rows:
        b = ref.get(r.context)
        if b is not None and r.system != "llama.cpp":
            ratios.append(f"| {r.backend} {r.mode} | {r.context} | {r.tg_tps / b.tg_tps:.2f}x | "
                          f"{b.ttft_s / r.ttft_s:.2f}x | {r.peak_rss_mib / b.peak_rss_mib:.2f}x |")
    if ratios:
        ratios = ["", "Against llama.cpp at the same context (same weights, same token ids):", "",
                  "| asa-run | context | tg speed | TTFT sooner | peak memory |", "|---|---|---|---|---|"] + ratios
    return "\n".join(head + body + ratios) + "\n"


def to_csv(rows: list[Row]) -> str:
    lines = [",".join(COLUMNS)]
    for r in rows:
        d = asdict(r)
        lines.append(",".join(str(d[c]) for c in COLUMNS))
    return "\n".join(lines) + "\n"


def to_json(rows: list[Row], info: dict) -> str:
    return json.dumps({"machine": info, "rows": [asdict(r) for r in rows]}, indent=1) + "\n"


def plot(rows: list[Row], out: str | Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for key, ax, label in (("tg_tps", axes[0], "generation tokens/s"), ("pp_tps", axes[1], "prompt tokens/s"),
                           ("peak_rss_mib", axes[2], "peak RSS (MiB)")):
        for name in dict.fromkeys(f"{r.system} {r.backend} {r.mode}" for r in rows):
            rs = sorted((r for r in rows if f"{r.system} {r.backend} {r.mode}" == name), key=lambda r: r.context)
            ax.plot([r.context for r in rs], [getattr(r, key) for r in rs], marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context (tokens)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, out)
    return out


if __name__ == "__main__":
    _worker(sys.argv[1:])
