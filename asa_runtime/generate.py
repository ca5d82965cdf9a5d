"""Generation engine: the Python API that the CLI, the chat and the benchmarks share.

    lm = load("asa-small")                                   # model + tokenizer + planner (+ backend)
    for r in stream_generate(lm, "Once upon a time", max_tokens=64, temp=0.7, seed=1):
        print(r.text, end="", flush=True)
    text = generate(lm, "Once upon a time", max_tokens=64)

Shaped after gpt-fast (`prefill`, `decode_one_token` over a static cache written by index) and mlx-lm
(`generate_step` generator -> `stream_generate` yielding text + statistics). A `Session` is one sequence
in flight: token positions, the incremental plan, the slot map and the backend's KV cache. Each decode
step extends the plan by one row, maps it to cache slots and calls the backend. The backend (torch now;
ONNX Runtime / MLX later) only sees ids, slot rows, positions and slots, so sampling, plans, the KV policy
and the CLI do not change with it.
"""
from __future__ import annotations

import hashlib
import json
import resource
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .backends import Backend, make_backend
from .config import ModelConfig
from .kv_policy import CacheFull, SlotMap
from .sampling import Sampler, SamplerConfig

DEFAULT_PREFILL_CHUNK = 512


class GenerationError(ValueError):
    """Bad input to the engine (the CLI prints its one-line message)."""


# ---- loading ---------------------------------------------------------------------------------------
@dataclass
class LoadedModel:
    """What `load` returns: everything needed to start sessions on one model."""
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
         backend: str = "torch", kv_dtype=None, planner=None) -> LoadedModel:
    """Load a registry name or model folder. Raises RegistryError / CheckpointError / GenerationError
    (all one-line) on bad input. `planner` overrides the planner built from the model's PlanConfig."""
    from .checkpoint import load_checkpoint, parse_dtype, read_config
    from .registry import resolve

    device = check_device(device)
    path = resolve(name_or_path)
    try:
        dtype, kv_dtype = parse_dtype(dtype), parse_dtype(kv_dtype)
    except ValueError as e:
        raise GenerationError(str(e)) from None
    ck = load_checkpoint(path, device=device, dtype=dtype)
    if kv_dtype is not None and ck.config.plan.dense and kv_dtype != ck.model.tok_embeddings.weight.dtype:
        raise GenerationError("a KV cache dtype other than the model's needs a sparse ASA model (the dense "
                              "baseline attends the cache in the model's dtype)")
    _, raw = read_config(path)
    if quantize:
        from .quantize import quantize_model

        quantize_model(ck.model, quantize)
    if planner is None and not ck.config.plan.dense:
        from .checkpoint import model_analyzer
        from .linguistics.planner import Planner

        planner = Planner(ck.config.plan, analyzer=model_analyzer(path, raw))
    be = make_backend(backend, ck.model, device=device, kv_dtype=kv_dtype)
    return LoadedModel(model=ck.model, tokenizer=ck.tokenizer, planner=planner, config=ck.config, backend=be,
                       path=path, device=device, model_hash=model_hash(raw, quantize, f"{dtype}/{kv_dtype}"),
                       quantize=quantize, meta=ck.meta)


def from_model(model, tokenizer, planner=None, device="cpu", backend="torch", kv_dtype=None) -> LoadedModel:
    """Wrap an in-memory model (tests, training evaluation) like `load` does."""
    cfg = model.cfg
    if planner is None and not cfg.plan.dense:
        from .linguistics.planner import Planner

        planner = Planner(cfg.plan)
    # in-memory weights have no file checksums: fingerprint the first values of every tensor instead
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().flatten()[:256].float().cpu().numpy().tobytes())
    be = make_backend(backend, model, device=device, kv_dtype=kv_dtype)
    return LoadedModel(model=model, tokenizer=tokenizer, planner=planner, config=cfg, backend=be, device=device,
                       model_hash=model_hash(cfg.to_dict(), dtype=f"{h.hexdigest()}/{kv_dtype}"))


# ---- one sequence in flight ------------------------------------------------------------------------
@dataclass
class _Mark:
    n_pos: int
    n_used: int
    compactions: int
    plan_state: dict | None
    logits: torch.Tensor


class Session:
    """KV cache + plan + slot map of one sequence. One session per LoadedModel at a time (the torch
    backend keeps its cache on the model)."""

    MAX_MARKS = 4

    def __init__(self, lm: LoadedModel, ctx_size: int | None = None, max_kv_size: int | None = None,
                 prefill_chunk: int = DEFAULT_PREFILL_CHUNK):
        self.lm = lm
        self.ctx_size = int(ctx_size or lm.config.max_seq_len)
        if self.ctx_size < 2:
            raise GenerationError(f"ctx_size must be >= 2, got {self.ctx_size}")
        if prefill_chunk < 1:
            raise GenerationError(f"prefill chunk must be >= 1, got {prefill_chunk}")
        n_slots = self.ctx_size
        if max_kv_size:
            if max_kv_size < 1:
                raise GenerationError(f"max_kv_size must be >= 1, got {max_kv_size}")
            if lm.dense and max_kv_size < self.ctx_size:
                raise GenerationError("--max-kv-size needs a sparse ASA plan: this model is dense (mode none), "
                                      "every cached key stays selectable")
            n_slots = min(max_kv_size, self.ctx_size)
        self.prefill_chunk = prefill_chunk
        self.slots = SlotMap(self.ctx_size, n_slots)
        self.backend = lm.backend
        self.pieces = lm.tokenizer.pieces
        # a model may have more output rows than the tokenizer has ids: those are never sampled
        self.n_vocab = min(lm.config.vocab_size, lm.tokenizer.vocab_size)
        self.dense = lm.dense
        self._row = np.full(lm.config.plan.k, -1, dtype=np.int64)   # decode step's slot row, reused
        self.reset()

    def reset(self) -> None:
        self.backend.reset(self.slots.n_slots)
        self.slots.reset()
        self.plan = None if self.dense else self.lm.planner.incremental()
        self.tokens: list[int] = []
        self.marks: list[_Mark] = []
        self.last_logits: torch.Tensor | None = None

    @property
    def n_past(self) -> int:
        return len(self.tokens)

    @property
    def room(self) -> int:
        """Positions left in the context."""
        return self.ctx_size - len(self.tokens)

    def _reachable(self) -> np.ndarray:
        return self.plan.reachable()

    def feed(self, ids: Sequence[int], all_logits: bool = False) -> torch.Tensor:
        """Prefill `ids` in chunks; returns the last token's logits (V,), or (len(ids), V) if all_logits."""
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) == 0:
            raise GenerationError("nothing to feed")
        if ids.min() < 0 or ids.max() >= len(self.pieces):
            raise GenerationError(f"token ids must lie in [0, {len(self.pieces)}) for this tokenizer")
        if len(ids) > self.room:
            raise GenerationError(f"{len(ids)} tokens do not fit: {self.room} of {self.ctx_size} context "
                                  f"positions left")
        try:
            return self._feed(ids, all_logits)
        except BaseException:
            self.reset()               # a half-fed chunk leaves plan, slots and cache out of step
            raise

    def _feed(self, ids: np.ndarray, all_logits: bool) -> torch.Tensor:
        outs, i = [], 0
        while i < len(ids):
            n, moves = self.slots.room(min(self.prefill_chunk, len(ids) - i), self._reachable)
            if moves is not None:
                self.backend.move_slots(*moves)
            chunk = ids[i: i + n]
            pos, sl = self.slots.assign(n)
            rows = None
            if not self.dense:
                prow = self.plan.extend_many([self.pieces[t] for t in chunk.tolist()])   # (n, K) positions
                rows = self.slots.map_rows(prow)                                     # (n, K) slots
            out = self.backend.prefill(chunk, rows, pos, sl, all_logits=all_logits)
            outs.append(out)
            self.tokens.extend(chunk.tolist())
            i += n
        self.last_logits = outs[-1] if not all_logits else outs[-1][-1]
        return torch.cat(outs) if all_logits else self.last_logits

    def step(self, token: int) -> torch.Tensor:
        """Decode one token: extend the plan by one row, map it to slots, run the backend."""
        if not 0 <= token < len(self.pieces):
            raise GenerationError(f"token id {token} is outside the tokenizer's {len(self.pieces)} ids")
        try:
            return self._step(token)
        except BaseException:
            self.reset()
            raise

    def _step(self, token: int) -> torch.Tensor:
        n, moves = self.slots.room(1, self._reachable)
        if moves is not None:
            self.backend.move_slots(*moves)
        pos, sl = self.slots.assign(1)
        row = None
        if not self.dense:
            prow = self.plan.extend(self.pieces[token])                       # (K,) positions
            row = self.slots.map_rows(prow, out=self._row)                    # (K,) slots
        self.last_logits = self.backend.decode(token, row, int(pos[0]), int(sl[0]))
        self.tokens.append(int(token))
        return self.last_logits

    # ---- reuse of a common prefix (chat turns, prompt caches) ------------------------------------
    def mark(self) -> None:
        """Remember the state at the current end so a later prompt sharing this prefix can rewind to it."""
        if self.last_logits is None:
            return
        state = None if self.dense else _copy_state(self.plan.state_dict())
        self.marks = [m for m in self.marks if m.n_pos != self.n_past][-(self.MAX_MARKS - 1):]
        self.marks.append(_Mark(self.n_past, self.slots.n_used, self.slots.compactions, state,
                                self.last_logits.clone()))

    def prepare(self, ids: Sequence[int]) -> tuple[torch.Tensor, int]:
        """Bring the session to `ids`, reusing the longest cached prefix it can: returns (last logits,
        number of tokens actually computed)."""
        ids = list(ids)
        common = _common_prefix(self.tokens, ids)
        if common < len(self.tokens):
            usable = [m for m in self.marks
                      if m.n_pos <= common and m.compactions == self.slots.compactions]
            if usable:
                self._rewind(max(usable, key=lambda m: m.n_pos))
            else:
                self.reset()
        rest = ids[len(self.tokens):]
        if rest:
            logits = self.feed(rest)
        elif self.last_logits is not None:
            logits = self.last_logits
        else:                                                  # empty session, empty prompt
            raise GenerationError("empty prompt")
        self.mark()
        return logits, len(rest)

    def _rewind(self, m: _Mark) -> None:
        if m.n_pos == self.n_past:
            self.last_logits = m.logits
            return
        self.slots.truncate(m.n_pos, m.n_used)
        if not self.dense:
            self.plan = self.lm.planner.incremental_from_state(_copy_state(m.plan_state))
        del self.tokens[m.n_pos:]
        self.last_logits = m.logits
        self.marks = [x for x in self.marks if x.n_pos <= m.n_pos]

    def kv_bytes(self) -> int:
        return self.backend.cache_bytes()


def _copy_state(state: dict) -> dict:
    return {"arrays": {k: np.array(v, copy=True) for k, v in state["arrays"].items()},
            "meta": json.loads(json.dumps(state["meta"]))}


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


# gpt-fast style free functions over a session
def prefill(session: Session, ids: Sequence[int]) -> torch.Tensor:
    return session.feed(ids)


def decode_one_token(session: Session, token: int) -> torch.Tensor:
    return session.step(token)


# ---- streaming text --------------------------------------------------------------------------------
class StreamingDetokenizer:
    """Text of a growing token list, emitted as new segments. Holds back an incomplete UTF-8 character
    (a trailing U+FFFD) until its bytes arrive. Decoding restarts at the last clean boundary, so a step
    costs O(tokens since then), not O(all tokens) (byte-level BPE decodes by concatenation)."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.pending: list[int] = []

    def add(self, token: int) -> str:
        self.pending.append(int(token))
        text = self.tok.decode(self.pending)
        if text.endswith("\ufffd") and len(self.pending) < 8:
            return ""
        self.pending = []
        return text

    def flush(self) -> str:
        text = self.tok.decode(self.pending) if self.pending else ""
        self.pending = []
        return text


class StopMatcher:
    """Finds stop strings in streamed text; holds back a tail that could still become a stop string."""

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.buf = ""

    def push(self, text: str) -> tuple[str, bool]:
        """Returns (text safe to emit, stopped)."""
        self.buf += text
        if not self.stops:
            out, self.buf = self.buf, ""
            return out, False
        hits = [i for i in (self.buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.buf = self.buf[: min(hits)], ""
            return out, True
        hold = 0                                    # longest tail that is a proper prefix of a stop string
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.buf)), hold, -1):
                if self.buf.endswith(s[:k]):
                    hold = k
                    break
        out = self.buf[: len(self.buf) - hold]
        self.buf = self.buf[len(self.buf) - hold:]
        return out, False

    def flush(self) -> str:
        out, self.buf = self.buf, ""
        return out


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
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)     # macOS reports bytes, Linux KiB


def generate_step(session: Session, logits: torch.Tensor, sampler: Sampler,
                  max_tokens: int) -> Iterator[int]:
    """Tokens drawn one by one from the prompt's last `logits` (see Session.prepare). Each token is fed to
    the model lazily, when the next one is requested, so stopping early wastes no decode step. Stops after
    max_tokens or when the context is full."""
    history = list(session.tokens)
    token = -1
    for n in range(max_tokens):
        if n:
            if session.room < 1:
                return
            logits = session.step(token)
        token = sampler(logits[: session.n_vocab], history)
        history.append(token)
        yield token


def stream_generate(lm: LoadedModel, prompt: str | Sequence[int], max_tokens: int = 256, *,
                    sampler: Sampler | None = None, stop: Sequence[str] = (), session: Session | None = None,
                    ctx_size: int | None = None, max_kv_size: int | None = None,
                    prefill_chunk: int = DEFAULT_PREFILL_CHUNK, prompt_cache: str | Path | None = None,
                    stop_at_eos: bool = True, **sampler_kw) -> Iterator[GenerationResponse]:
    """Stream a completion of `prompt` (text or token ids). Sampling options (temp, top_k, top_p, min_p,
    repeat_penalty, repeat_last_n, seed) go to `Sampler` unless a `sampler` is given. The last response
    has finish_reason set and carries any text held back until then."""
    t0 = time.perf_counter()
    tok = lm.tokenizer
    ids = tok.encode(prompt) if isinstance(prompt, str) else [int(i) for i in prompt]
    if not ids:
        raise GenerationError("empty prompt")
    if max_tokens < 0:
        raise GenerationError(f"max_tokens must be >= 0, got {max_tokens}")
    if sampler is None:
        try:
            sampler = Sampler(SamplerConfig(**sampler_kw))
        except ValueError as e:
            raise GenerationError(str(e)) from None
    session = session or Session(lm, ctx_size=ctx_size, max_kv_size=max_kv_size, prefill_chunk=prefill_chunk)
    if len(ids) >= session.ctx_size:
        raise GenerationError(f"prompt has {len(ids)} tokens but the context holds {session.ctx_size} "
                              f"(raise --ctx-size or shorten the prompt)")
    if prompt_cache is not None:
        from .prompt_cache import load_prompt_cache, save_prompt_cache

        if Path(prompt_cache).exists():
            load_prompt_cache(prompt_cache, session)

    t_p = time.perf_counter()
    logits, computed = session.prepare(ids)
    prompt_time = time.perf_counter() - t_p
    if prompt_cache is not None and computed:
        save_prompt_cache(prompt_cache, session)
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
    "decode_one_token",
    "format_stats",
    "from_model",
    "generate",
    "generate_step",
    "load",
    "prefill",
    "stream_generate",
]
