"""Shared pieces of the latency benchmarks: the model under test, long English text, machine description.

The model is asa-small when the package ships it; otherwise (or with --model random) a random-weight model
of the issue's size (d 384, 8 layers, 6 heads, vocab 16k) with a 16k BPE trained on public-domain prose
from ../shared/data, so that plans are built from real English. Random weights measure speed and memory,
not quality: perplexities of such a model only show whether a change alters the logits.
It is saved as a model folder under CACHE (model_folder), so the speed measurements of
asa_runtime.benchmark (which load a folder in a fresh process) run it like any other model.
"""
from __future__ import annotations

import json
import lzma
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
DATA = Path(os.environ.get("ASA_SHARED_DATA", ROOT.parent / "shared" / "data"))
PROSE = DATA / "english_prose" / "standard_ebooks" / "standard_ebooks_selection.jsonl.xz"
CACHE = Path(os.environ.get("ASA_BENCH_CACHE", "/tmp/asa_bench_cache"))


def books(n: int, skip: int = 0) -> list[str]:
    out = []
    with lzma.open(PROSE, "rt", encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i < skip:
                continue
            out.append(json.loads(line)["text"])
            if len(out) == n:
                break
    return out


def tokenizer_16k():
    from asa_runtime.tokenizer import Tokenizer

    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / "tok16k.json"
    if not path.exists():
        texts = [b[i: i + 4000] for b in books(20, skip=10) for i in range(0, len(b), 4000)]
        Tokenizer.train(texts, vocab_size=16384).save(path)
    return Tokenizer.from_file(path)


def text_ids(tok, n_tokens: int, held_out: bool = False) -> list[int]:
    """n_tokens of book text (training books of the tokenizer excluded; held_out picks other books)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    name = CACHE / f"ids_{'heldout' if held_out else 'main'}_{tok.vocab_size}.npy"
    if name.exists():
        ids = np.load(name)
        if len(ids) >= n_tokens:
            return ids[:n_tokens].tolist()
    ids: list[int] = []
    for b in books(12, skip=40 if held_out else 0):
        ids += tok.encode(b)
        if len(ids) >= max(n_tokens, 40000):
            break
    np.save(name, np.asarray(ids, dtype=np.int32))
    return ids[:n_tokens]


def model_folder(model: str, mode: str = "full") -> tuple[str, str]:
    """(model folder or registry name, description) of the model under test. `model`: "asa-small", a folder,
    or "random". The random-weight model (seed 0) is saved once as a model folder under CACHE with
    asa_runtime.checkpoint.save_checkpoint (fp32; one folder per ASA mode), so asa_runtime.benchmark's
    measurements (`load(path)` in a fresh process) and the perplexity scripts open the very same weights."""
    from asa_runtime.checkpoint import read_config
    from asa_runtime.registry import available, resolve

    if model != "random" and (model != "asa-small" or "asa-small" in available()):
        cfg, _ = read_config(resolve(model))
        return model, f"{model} (trained checkpoint, mode {cfg.plan.mode})"
    why = "asa-small not shipped yet" if model == "asa-small" else "requested"
    path = CACHE / f"random-small-{mode}"
    if not (path / "config.json").is_file():
        import shutil

        import torch

        from asa_runtime.checkpoint import save_checkpoint
        from asa_runtime.config import PRESETS, ModelConfig, PlanConfig
        from asa_runtime.model import Transformer

        tok = tokenizer_16k()
        torch.manual_seed(0)
        cfg = ModelConfig(**{**PRESETS["small"], "vocab_size": 16384, "max_seq_len": 2048,
                             "plan": PlanConfig(mode=mode)})
        m = Transformer(cfg).eval()
        desc = (f"random-weight model of asa-small's size: d 384, 8 layers, 6 heads, vocab 16384, "
                f"{m.num_params() / 1e6:.1f}M params, ASA mode {mode}")
        tmp = CACHE / f".random-small-{mode}.{os.getpid()}"
        save_checkpoint(tmp, m, tok, card=f"# {desc}\nRandom weights (seed 0), for speed and memory benchmarks.\n",
                        meta={"bench_desc": desc})
        try:
            tmp.rename(path)                  # atomic: a concurrent run may have made it first
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    _, raw = read_config(path)
    desc = raw.get("meta", {}).get("bench_desc", f"random-weight model, ASA mode {mode}")
    return str(path), desc.replace("asa-small's size:", f"asa-small's size ({why}):")


def build_model(model: str, mode: str = "full", device: str = "cpu", quantize: str | None = None,
                dtype: str | None = None):
    """(LoadedModel, description) in this process (perplexity scripts); `model` as in model_folder."""
    from asa_runtime.generate import load

    path, desc = model_folder(model, mode)
    return load(path, device=device, quantize=quantize, dtype=dtype), desc


def prose_file(n_tokens: int, held_out: bool = False) -> str:
    """A text file of book prose (the books text_ids reads) long enough for an n_tokens prompt: the
    `text_file` of asa_runtime.benchmark.Spec (which tokenizes it with the model's own tokenizer)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    n_chars = 8 * n_tokens + 4096           # BPE of English prose: ~4-5 characters a token
    path = CACHE / f"prose_{'heldout' if held_out else 'main'}_{n_chars}.txt"
    if not path.exists():
        text = ""
        for b in books(12, skip=40 if held_out else 0):
            text += b + "\n\n"
            if len(text) >= n_chars:
                break
        tmp = path.with_name(path.name + f".{os.getpid()}")
        tmp.write_text(text[:n_chars], encoding="utf-8")
        os.replace(tmp, path)
    return str(path)


def machine() -> dict:
    """asa_runtime.benchmark.machine() (CPU, cores, memory, versions) plus what these scripts record."""
    import torch

    from asa_runtime.benchmark import machine as runtime_machine

    m = runtime_machine()
    return {"host": m["host"], "cpu": m["cpu"], "cores": m["cores"],
            "memory_bytes": int(m["memory_gib"] * 2**30) if m["memory_gib"] else None,
            "python": m["python"], "torch": torch.__version__, "os": platform.platform(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def write_results(out: str | Path, stem: str, res: dict, md: str) -> None:
    """out/stem.json (res) and out/stem.md, each written to a temporary file and renamed (never half-written)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for path, text in ((out / f"{stem}.json", json.dumps(res, indent=2) + "\n"), (out / f"{stem}.md", md)):
        tmp = path.with_name(path.name + f".{os.getpid()}")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)


def loadavg() -> list[float] | None:
    try:
        return [float(x) for x in open("/proc/loadavg").read().split()[:3]]
    except OSError:
        return None
