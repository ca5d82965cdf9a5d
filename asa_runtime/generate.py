"""Generation engine: the Python API that the CLI, the chat, the server and the benchmarks share.

    lm = load("asa-small")                                   # weights + tokenizer + planner + backend
    for r in stream_generate(lm, "Once upon a time", max_tokens=64, temp=0.7, seed=1):
        print(r.text, end="", flush=True)
    text = generate(lm, "Once upon a time", max_tokens=64)

Shaped after mlx-lm (`generate_step` generator -> `stream_generate` yielding text + statistics) over
gpt-fast-style sessions (asa_runtime/session.py: a static cache written by index, prefill then one-token
decode steps). A LoadedModel is shared and read-only; each generation runs on its own Session.
"""
from __future__ import annotations

import hashlib
import json
import operator
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .backends import Backend, make_backend
from .checkpoint import load_checkpoint, model_analyzer, parse_dtype, read_config
from .config import ModelConfig, PlanConfig
from .errors import BackendError, CacheFull, GenerationError, require_unicode
from .linguistics.planner import Planner
from .process_memory import peak_rss_bytes
from .quantize import SCHEMES, quantize_model
from .registry import resolve
from .sampling import Sampler
from .session import Session
from .streaming import StopMatcher, StreamingDetokenizer


# ---- loading ---------------------------------------------------------------------------------------
@dataclass
class LoadedModel:
    """What `load` returns: everything needed to start sessions on one model (shared, read-only)."""
    model: torch.nn.Module | None
    tokenizer: object
    planner: object | None                   # None: dense baseline (mode "none")
    config: ModelConfig
    backend: Backend
    path: Path | None = None
    device: str = "cpu"
    model_hash: str = ""                     # identifies the exact weights + config (prompt caches check it)
    quantize: str | None = None
    meta: dict = field(default_factory=dict)

    @property
    def dense(self) -> bool:
        return self.planner is None or self.config.plan.dense


def check_device(device: str) -> str:
    device = str(device)
    kind = device.split(":")[0]
    if kind == "cpu":
        return device
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise GenerationError("device cuda requested but CUDA is not available on this machine")
        return device
    if kind == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise GenerationError("device mps requested but Metal (MPS) is not available on this machine")
        return device
    raise GenerationError(f"unknown device {device!r}; expected cpu, cuda or mps")


def model_hash(config_dict: dict, quantize: str | None = None, dtype: str | None = None) -> str:
    """sha256 over config.json (which records the sha256 of every weight file) + how it was loaded."""
    blob = json.dumps({"config": config_dict, "quantize": quantize, "dtype": dtype}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def load(name_or_path, device: str = "cpu", quantize: str | None = None, dtype=None,
         backend: str = "torch", kv_dtype=None, planner=None, verify: bool = True,
         mode: str | None = None, rope_clamp: int | None = None) -> LoadedModel:
    """Load a registry name or model folder. Raises RegistryError / CheckpointError / GenerationError /
    BackendError (all one-line) on bad input. `planner` overrides the planner built from the model's
    PlanConfig. verify=False loads a folder whose files do not match (or lack) recorded checksums. mode
    overrides the plan's ASA mode (e.g. "none": the same weights as a dense causal model, for comparisons).
    kv_dtype: None keeps the cache in the weights' dtype; "auto" (the CLI's default) picks bfloat16 for a sparse
    fp32 model on the torch backend. rope_clamp overrides the model's RoPE clamp (ModelConfig.rope_clamp; 0 = off;
    None keeps the model's)."""
    device = check_device(device)
    path = resolve(name_or_path)
    auto_kv = kv_dtype == "auto"              # the CLI's default: bfloat16 where it is lossless, else the model's
    try:
        dtype, kv_dtype = parse_dtype(dtype), parse_dtype(None if auto_kv else kv_dtype)
    except ValueError as e:
        raise GenerationError(str(e)) from None
    if quantize and quantize not in SCHEMES:                   # before the weights are read
        raise GenerationError(f"unknown quantization {quantize!r}; available: {', '.join(SCHEMES)}")
    _check_planner(planner)
    if rope_clamp is not None and (isinstance(rope_clamp, bool) or not isinstance(rope_clamp, int) or rope_clamp < 0):
        raise GenerationError(f"rope_clamp must be an integer >= 0 (0 = off), got {rope_clamp!r}")
    if rope_clamp is not None and _export_format(path) in ("asa-mlx/1", "asa-onnx/1"):
        raise BackendError(f"{path} is an export: its RoPE clamp was fixed when it was exported (re-export the "
                           f"model to change it)")
    if _export_format(path) == "asa-mlx/1":           # `asa-run export --format mlx` folder: no torch model
        return _load_mlx_export(path, device, quantize, dtype, backend, kv_dtype, planner)
    if _export_format(path) == "asa-onnx/1":          # `asa-run export --format onnx` folder: no torch model
        return _load_onnx_export(path, device, quantize, dtype, backend, kv_dtype, planner)
    ck = load_checkpoint(path, device=device, dtype=dtype, verify=verify)
    if mode is not None and mode != ck.config.plan.mode:
        try:
            ck.config.plan = PlanConfig.from_dict({**ck.config.plan.to_dict(), "mode": mode})
        except ValueError as e:
            raise GenerationError(str(e)) from None
        ck.model.cfg = ck.config
    if rope_clamp is not None and rope_clamp != ck.config.rope_clamp:
        ck.config.rope_clamp = rope_clamp                      # before a backend is built from the config
        ck.model.cfg = ck.config
    if auto_kv and backend == "torch" and not ck.config.plan.dense \
            and ck.model.tok_embeddings.weight.dtype == torch.float32:
        # half the cache memory at no measured cost: asa-small v2's held-out perplexity 36.6709 (fp32 KV) vs
        # 36.6711 (bf16 KV) (bench/engine/results/kv_dtype_ppl.md; v1: greedy tokens identical, greedy_fingerprint)
        kv_dtype = torch.bfloat16
    if kv_dtype is not None and ck.config.plan.dense and kv_dtype != ck.model.tok_embeddings.weight.dtype:
        raise GenerationError("a KV cache dtype other than the model's needs a sparse ASA model (the dense "
                              "baseline attends the cache in the model's dtype)")
    _, raw = read_config(path)
    if quantize:
        if backend != "torch":
            raise BackendError(f"--quantize is a torch-backend option (backend {backend!r} has no quantized path)")
        quantize_model(ck.model, quantize)
    if planner is None and not ck.config.plan.dense:
        planner = Planner(ck.config.plan, analyzer=model_analyzer(path, raw))
    be = make_backend(backend, ck.model, device=device, kv_dtype=kv_dtype, source=path)
    return LoadedModel(model=ck.model, tokenizer=ck.tokenizer, planner=planner, config=ck.config, backend=be,
                       path=path, device=device,
                       model_hash=model_hash(raw, quantize, f"{dtype}/{kv_dtype}/{ck.config.plan.mode}"
                                             + (f"/rope_clamp={rope_clamp}" if rope_clamp is not None else "")),
                       quantize=quantize, meta=ck.meta)


def _export_format(path: Path) -> str | None:
    try:
        return json.loads((path / "config.json").read_text()).get("format")
    except (OSError, ValueError, UnicodeDecodeError, AttributeError):
        return None                                    # load_checkpoint reports a bad config.json


def _load_onnx_export(path, device, quantize, dtype, backend, kv_dtype, planner) -> LoadedModel:
    """An ONNX export folder (exporters/onnx/folder.py): tokenizer, planner and backend from the folder (the
    backend checks the files' sha256); LoadedModel.model is None."""
    from .checkpoint import CheckpointError
    from .tokenizer import Tokenizer

    if backend != "onnx" or quantize or dtype is not None:
        raise BackendError(f"{path} is an ONNX export: run it with --backend onnx (its dtype is set at export; "
                           f"no --dtype or --quantize)")
    raw = json.loads((path / "config.json").read_text())
    try:
        cfg = ModelConfig.from_dict(raw["model"])
        tokenizer = Tokenizer.from_file(path / "tokenizer.json")
    except Exception as e:
        raise CheckpointError(f"{path}: not a usable ONNX export ({' '.join(str(e).split())})") from None
    be = make_backend("onnx", None, device=device, kv_dtype=kv_dtype, source=path)
    if planner is None and not cfg.plan.dense:
        planner = Planner(cfg.plan, analyzer=model_analyzer(path, raw))
    return LoadedModel(model=None, tokenizer=tokenizer, planner=planner, config=cfg, backend=be, path=path,
                       device=device, model_hash=model_hash(raw, None, f"onnx/{kv_dtype}"), meta={})


def _load_mlx_export(path, device, quantize, dtype, backend, kv_dtype, planner) -> LoadedModel:
    """An MLX export folder: tokenizer, planner and backend from the folder; LoadedModel.model is None."""
    from .checkpoint import CheckpointError
    from .tokenizer import Tokenizer

    if backend != "mlx" or quantize or dtype is not None:
        raise BackendError(f"{path} is an MLX export: run it with --backend mlx (its dtype is set at export; "
                           f"no --dtype or --quantize)")
    cfg, raw = read_config(path)
    try:
        tokenizer = Tokenizer.from_file(path / "tokenizer.json")
    except Exception as e:
        raise CheckpointError(f"{path}: cannot load tokenizer.json ({' '.join(str(e).split())})") from None
    if planner is None and not cfg.plan.dense:
        planner = Planner(cfg.plan, analyzer=model_analyzer(path, raw))
    be = make_backend("mlx", None, device=device, kv_dtype=kv_dtype, source=path)
    return LoadedModel(model=None, tokenizer=tokenizer, planner=planner, config=cfg, backend=be, path=path,
                       device=device, model_hash=model_hash(raw, None, f"mlx/{kv_dtype}"),
                       meta=raw.get("meta", {}))


def _check_planner(planner) -> None:
    if planner is not None and not (hasattr(planner, "incremental") and hasattr(planner, "incremental_from_state")):
        raise GenerationError(f"planner must be a Planner (asa_runtime.linguistics.planner), got "
                              f"{type(planner).__name__}")


def from_model(model, tokenizer, planner=None, device="cpu", backend="torch", kv_dtype=None) -> LoadedModel:
    """Wrap an in-memory model (tests, training evaluation) like `load` does. The model is not changed."""
    if not isinstance(model, torch.nn.Module) or not isinstance(getattr(model, "cfg", None), ModelConfig):
        raise GenerationError(f"from_model needs an asa_runtime Transformer (a module with a ModelConfig .cfg), "
                              f"got {type(model).__name__}")
    if not all(hasattr(tokenizer, a) for a in ("encode", "decode", "pieces", "vocab_size")):
        raise GenerationError(f"from_model needs an asa_runtime Tokenizer, got {type(tokenizer).__name__}")
    _check_planner(planner)
    device = check_device(device)
    cfg = model.cfg
    if planner is None and not cfg.plan.dense:
        planner = Planner(cfg.plan)
    # in-memory weights have no file checksums: fingerprint the first values of every tensor instead
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().flatten()[:256].float().cpu().numpy().tobytes())
    be = make_backend(backend, model, device=device, kv_dtype=kv_dtype)
    return LoadedModel(model=model, tokenizer=tokenizer, planner=planner, config=cfg, backend=be, device=device,
                       model_hash=model_hash(cfg.to_dict(), dtype=f"{h.hexdigest()}/{kv_dtype}"))


# ---- generation ------------------------------------------------------------------------------------
@dataclass
class GenerationResponse:
    text: str                      # new text since the previous response
    token: int                     # the token sampled this step
    prompt_tokens: int
    prompt_tps: float              # prompt tokens computed per second (cached prefix excluded)
    generation_tokens: int
    generation_tps: float          # decode steps per second after the first token
    ttft: float                    # seconds from the call to the first sampled token
    peak_memory: int               # bytes: process peak RSS (CPU) or peak allocated (CUDA)
    kv_cache_bytes: int
    finish_reason: str | None = None   # None while streaming; "stop" (EOS / stop string) or "length"
    cached_tokens: int = 0             # prompt tokens reused from the session / prompt cache, not computed


def peak_memory_bytes(device: str = "cpu") -> int:
    if str(device).startswith("cuda") and torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    return peak_rss_bytes()


def generate_step(session: Session, logits: torch.Tensor, sampler: Sampler,
                  max_tokens: int) -> Iterator[int]:
    """Tokens drawn one by one from the prompt's last `logits` (see Session.prepare). Each token is fed to
    the model lazily, when the next one is requested, so stopping early wastes no decode step. Stops after
    max_tokens or when the context is full."""
    history = list(session.tokens)
    token = -1
    version = session.version
    for n in range(max_tokens):
        if n:
            if session.version != version:     # another generation (or a feed / reset) moved the session
                raise GenerationError("the session changed during this generation (another generation, feed, "
                                      "reset or restore on it): one generation at a time per Session")
            if session.room < 1:
                return
            logits = session.step(token)
            version = session.version
        token = sampler(logits[: session.n_vocab], history)
        history.append(token)
        yield token


def stream_generate(lm: LoadedModel, prompt: str | Sequence[int], max_tokens: int = 256, *,
                    sampler: Sampler | None = None, stop: Sequence[str] = (), session: Session | None = None,
                    ctx_size: int | None = None, max_kv_size: int | None = None,
                    prefill_chunk: int | None = None, stop_at_eos: bool = True,
                    on_prompt: Callable[[Session, int], None] | None = None,
                    **sampler_kw) -> Iterator[GenerationResponse]:
    """Stream a completion of `prompt` (text or token ids). Sampling options (temp, top_k, top_p, min_p,
    repeat_penalty, repeat_last_n, seed) go to `Sampler` unless a `sampler` is given. `session` continues
    an existing sequence (its cached prefix is reused); `on_prompt(session, n_computed)` runs once the
    prompt is in the cache (the CLI saves its prompt cache there). The last response has finish_reason
    set and carries any text held back until then."""
    t0 = time.perf_counter()
    if not isinstance(lm, LoadedModel):
        raise GenerationError(f"expected a LoadedModel (from load() or from_model()), got {type(lm).__name__}")
    tok = lm.tokenizer
    if isinstance(prompt, str):
        ids = tok.encode(require_unicode(prompt, "the prompt"))
    elif isinstance(prompt, (bytes, bytearray)):
        raise GenerationError("prompt is bytes: decode it to text first (token ids go in a list)")
    else:
        try:
            ids = [operator.index(i) for i in prompt]          # ints, numpy / torch integers; not floats
        except TypeError:
            raise GenerationError("prompt must be text or a sequence of integer token ids") from None
    if not ids:
        raise GenerationError("empty prompt")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
        raise GenerationError(f"max_tokens must be an integer, got {max_tokens!r}")
    if max_tokens < 0:
        raise GenerationError(f"max_tokens must be >= 0, got {max_tokens}")
    stop = (stop,) if isinstance(stop, str) else (() if stop is None else stop)
    try:
        stop = tuple(stop)
    except TypeError:
        raise GenerationError(f"stop must be a string or a list of strings, got {type(stop).__name__}") from None
    if not all(isinstance(s, str) for s in stop):
        raise GenerationError("stop must be a string or a list of strings")
    if on_prompt is not None and not callable(on_prompt):
        raise GenerationError(f"on_prompt must be callable, got {type(on_prompt).__name__}")
    if sampler is None:
        sampler = Sampler(**sampler_kw)              # unknown or out-of-range options: GenerationError
    elif sampler_kw:
        raise GenerationError(f"sampling options ({', '.join(sorted(sampler_kw))}) and a sampler given: "
                              f"set them on the sampler")
    elif not callable(sampler):
        raise GenerationError(f"sampler must be a Sampler, got {type(sampler).__name__}")
    if session is None:
        session = Session(lm, ctx_size=ctx_size, max_kv_size=max_kv_size,
                          prefill_chunk=prefill_chunk)
    elif not isinstance(session, Session) or session.lm is not lm:
        raise GenerationError("session must be a Session of this LoadedModel" if isinstance(session, Session)
                              else f"session must be a Session, got {type(session).__name__}")
    if len(ids) >= session.ctx_size:
        raise GenerationError(f"prompt has {len(ids)} tokens but the context holds {session.ctx_size} "
                              f"(raise --ctx-size or shorten the prompt)")
    t_p = time.perf_counter()
    logits, computed = session.prepare(ids)
    prompt_time = time.perf_counter() - t_p
    if on_prompt is not None:
        on_prompt(session, computed)
    prompt_tps = computed / prompt_time if computed and prompt_time > 0 else 0.0

    detok, stops = StreamingDetokenizer(tok), StopMatcher(stop)
    eos = tok.eos_id if stop_at_eos else None
    ttft, t_first, n_gen, token = 0.0, 0.0, 0, -1

    def resp(text, finish=None):
        now = time.perf_counter()
        gtps = (n_gen - 1) / (now - t_first) if n_gen > 1 and now > t_first else 0.0
        return GenerationResponse(text, token, len(ids), prompt_tps, n_gen, gtps, ttft,
                                  peak_memory_bytes(lm.device), session.kv_bytes(), finish, len(ids) - computed)

    def tail() -> tuple[str, bool]:
        text, stopped = stops.push(detok.flush())
        return (text, True) if stopped else (text + stops.flush(), False)

    for token in generate_step(session, logits, sampler, max_tokens):
        n_gen += 1
        if n_gen == 1:
            t_first = time.perf_counter()
            ttft = t_first - t0
        if token == eos:
            yield resp(tail()[0], "stop")
            return
        text, stopped = stops.push(detok.add(token))
        if stopped:
            yield resp(text, "stop")
            return
        if n_gen < max_tokens and session.room >= 1:
            yield resp(text)
        else:
            rest, stopped = tail()
            yield resp(text + rest, "stop" if stopped else "length")
            return
    yield resp("", "length")             # max_tokens == 0: prompt statistics only


def generate(lm: LoadedModel, prompt: str | Sequence[int], max_tokens: int = 256, verbose: bool = False,
             **kw) -> str:
    """The whole completion as one string (a thin wrapper over stream_generate)."""
    out, last = [], None
    for r in stream_generate(lm, prompt, max_tokens, **kw):
        out.append(r.text)
        last = r
        if verbose:
            print(r.text, end="", flush=True)
    if verbose and last is not None:
        print()
        print(format_stats(last))
    return "".join(out)


def format_stats(r: GenerationResponse) -> str:
    cached = f" ({r.cached_tokens} cached)" if r.cached_tokens else ""
    return (f"prompt: {r.prompt_tokens} tokens{cached}, {r.prompt_tps:.1f} tok/s | generation: {r.generation_tokens} "
            f"tokens, {r.generation_tps:.1f} tok/s | TTFT {r.ttft * 1000:.0f} ms | peak memory "
            f"{r.peak_memory / 2**20:.1f} MiB (KV cache {r.kv_cache_bytes / 2**20:.1f} MiB)")


__all__ = [
    "CacheFull",
    "GenerationError",
    "GenerationResponse",
    "LoadedModel",
    "Session",
    "StopMatcher",
    "StreamingDetokenizer",
    "format_stats",
    "from_model",
    "generate",
    "generate_step",
    "load",
    "stream_generate",
]
