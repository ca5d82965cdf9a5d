"""One sequence in flight: its KV cache (made by the backend, owned here), token positions, the incremental
plan and the slot map. Each decode step extends the plan by one row, maps it to cache slots and calls the
backend with this session's cache, so many Sessions of one LoadedModel run side by side.

State protocol (prompt caches, the server's saved conversations): `state()` returns
{"tensors": {name: CPU tensor}, "meta": json-able dict}; `Session.from_state(lm, state, ...)` (or
`restore(state)` on an existing session) continues from it. The parts keep their own states: the cache
(`Cache.state`), the slot map (`SlotMap.state`) and the plan/analyzer (`IncrementalPlan.state_dict`).
Files are the caller's business (asa_runtime/prompt_cache.py, opened by the CLI or the server).
"""
from __future__ import annotations

import json
import operator
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .errors import CacheFull, GenerationError
from .kv_policy import SlotMap, auto_kv_slots
from .resources import check_fits, session_bytes

DEFAULT_PREFILL_CHUNK = 512        # CPU: bounds prefill memory, the union layout stays small
GPU_PREFILL_CHUNK = 4096           # CUDA: fewer, larger launches (32k prefill on an H200 ~3.5x faster than 512)


@dataclass
class _Mark:
    n_pos: int
    reachable: np.ndarray | None    # positions the plan could still select then (a rewind needs them cached)
    plan_state: dict | None
    logits: torch.Tensor


class Session:
    MAX_MARKS = 4

    def __init__(self, lm, ctx_size: int | None = None, max_kv_size: int | None = None,
                 prefill_chunk: int | None = None):
        if not all(hasattr(lm, a) for a in ("config", "backend", "tokenizer", "planner")):
            raise GenerationError(f"Session needs a LoadedModel (from load() or from_model()), got "
                                  f"{type(lm).__name__}")
        self.lm = lm
        self.version = 0               # bumped on every change of the sequence (generate_step checks it)
        for name, v in (("ctx_size", ctx_size), ("max_kv_size", max_kv_size), ("prefill_chunk", prefill_chunk)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer))):
                raise GenerationError(f"{name} must be an integer, got {v!r}")
        self.ctx_size = int(ctx_size or lm.config.max_seq_len)
        if self.ctx_size < 2:
            raise GenerationError(f"ctx_size must be >= 2, got {self.ctx_size}")
        if prefill_chunk is None:                       # the device's default chunk
            prefill_chunk = GPU_PREFILL_CHUNK if str(lm.device).startswith("cuda") else DEFAULT_PREFILL_CHUNK
        if prefill_chunk < 1:
            raise GenerationError(f"prefill chunk must be >= 1, got {prefill_chunk}")
        n_slots = self.ctx_size
        # no bound given: a sparse plan gets the lossless bound anyway, sized on its own (kv_policy.py);
        # the random controls can select any past key, so they keep every one
        growable = (not max_kv_size and not lm.dense
                    and lm.config.plan.mode not in ("random", "random_bonds"))
        if growable:
            n_slots = auto_kv_slots(lm.config.plan.k, self.ctx_size)
        if max_kv_size:
            if max_kv_size < 1:
                raise GenerationError(f"max_kv_size must be >= 1, got {max_kv_size}")
            if lm.dense and max_kv_size < self.ctx_size:
                raise GenerationError("--max-kv-size needs a sparse ASA plan: this model is dense (mode none), "
                                      "every cached key stays selectable")
            n_slots = min(max_kv_size, self.ctx_size)
        self.prefill_chunk = prefill_chunk
        kv_dtype = getattr(lm.backend, "kv_dtype", None)          # a backend may name it in its own types
        if not isinstance(kv_dtype, torch.dtype):
            kv_dtype = lm.model.tok_embeddings.weight.dtype if lm.model is not None else torch.float32
        kv_elem = torch.empty(0, dtype=kv_dtype).element_size()
        check_fits(session_bytes(lm.config, n_slots, self.ctx_size, kv_elem),
                   f"a context of {self.ctx_size} tokens ({n_slots} cached keys)", lm.device)
        self.kv_elem = kv_elem
        self.slots = SlotMap(self.ctx_size, n_slots, growable=growable)
        self.backend = lm.backend
        self.cache = lm.backend.make_cache(n_slots)
        self.pieces = lm.tokenizer.pieces
        # a model may have more output rows than the tokenizer has ids: those are never sampled
        self.n_vocab = min(lm.config.vocab_size, lm.tokenizer.vocab_size)
        self.dense = lm.dense
        # the RoPE clamp scores far keys by their token positions: backends get the rows as positions too
        self.clamp = bool(getattr(lm.config, "rope_clamp", 0)) and not self.dense
        self._row = np.full(lm.config.plan.k, -1, dtype=np.int64)   # decode step's slot row, reused
        self.reset()

    def reset(self) -> None:
        """Forget the sequence (the cache's memory is kept: stale rows are never read)."""
        self.version += 1
        self.slots.reset()
        self.plan = None if self.dense else self.lm.planner.incremental()
        self.tokens: list[int] = []
        self.marks: list[_Mark] = []
        self.last_logits: torch.Tensor | None = None
        self.last_row: np.ndarray | None = None        # the last decode step's plan row (positions)

    @property
    def n_past(self) -> int:
        return len(self.tokens)

    @property
    def room(self) -> int:
        """Positions left in the context."""
        return self.ctx_size - len(self.tokens)

    def kv_bytes(self) -> int:
        return self.cache.nbytes()

    def _reachable(self) -> np.ndarray:
        # what later rows may select, and what the marks' plans could (so a chat turn can still rewind)
        extra = [m.reachable for m in self.marks if m.reachable is not None]
        r = self.plan.reachable()
        return np.union1d(r, np.concatenate(extra)) if extra else r

    def _make_room(self, want: int) -> int:
        sm = self.slots
        if sm.growable and sm.bounded and sm.n_used + min(want, self.room) > sm.n_slots:
            moves = sm.compact(self._reachable())          # first free what no later row can select
            if len(moves[0]):
                self.cache.move_slots(*moves)
            grow_to = sm.wants_growth(want)
            if grow_to:
                self._grow(grow_to)
        n, moves = sm.room(want, self._reachable)
        if moves is not None:
            self.cache.move_slots(*moves)
        return n

    def _grow(self, n_slots: int) -> None:
        """A larger cache with the kept rows copied over (rare: the bound doubles each time)."""
        check_fits(session_bytes(self.lm.config, n_slots, self.ctx_size, self.kv_elem),
                   f"a KV cache of {n_slots} keys (the plan can still select {self.slots.n_used})", self.lm.device)
        cache = self.backend.make_cache(n_slots)
        if self.slots.n_used:
            cache.load_state(self.cache.state(self.slots.n_used))
        self.cache = cache
        self.slots.grow(n_slots)

    # ---- feeding tokens ----------------------------------------------------------------------------
    def feed(self, ids: Sequence[int], all_logits: bool = False) -> torch.Tensor:
        """Prefill `ids` in chunks; returns the last token's logits (V,), or (len(ids), V) if all_logits."""
        try:
            arr = np.asarray(ids)
        except (TypeError, ValueError, OverflowError):
            arr = np.asarray(None)
        if arr.ndim != 1:
            raise GenerationError(f"feed takes a flat sequence of token ids, got {type(ids).__name__}")
        if len(arr) == 0:
            raise GenerationError("nothing to feed")
        if arr.dtype.kind not in "iu" or arr.min() < 0 or arr.max() >= len(self.pieces):
            raise GenerationError(f"token ids must be integers in [0, {len(self.pieces)}) for this tokenizer")
        ids = arr.astype(np.int64, copy=False)
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
            n = self._make_room(min(self.prefill_chunk, len(ids) - i))
            chunk = ids[i: i + n]
            pos, sl = self.slots.assign(n)
            rows = None
            if not self.dense:
                prow = self.plan.extend_many([self.pieces[t] for t in chunk.tolist()])   # (n, K) positions
                rows = self.slots.map_rows(prow)                                     # (n, K) slots
            kw = {"plan_pos": prow} if self.clamp else {}
            outs.append(self.backend.prefill(self.cache, chunk, rows, pos, sl, all_logits=all_logits, **kw))
            self.tokens.extend(chunk.tolist())
            self.version += 1
            i += n
        self.last_logits = outs[-1] if not all_logits else outs[-1][-1]
        return torch.cat(outs) if all_logits else self.last_logits

    def step(self, token: int, attn_out: list | None = None) -> torch.Tensor:
        """Decode one token: extend the plan by one row, map it to slots, run the backend. If attn_out is
        a list (and the backend supports it), it receives per layer the attention weights over the row.
        A full context raises CacheFull and keeps the sequence."""
        try:
            token = operator.index(token)
        except TypeError:
            raise GenerationError(f"token must be an integer id, got {type(token).__name__}") from None
        if not 0 <= token < len(self.pieces):
            raise GenerationError(f"token id {token} is outside the tokenizer's {len(self.pieces)} ids")
        if self.room < 1:
            raise CacheFull(f"context full ({self.ctx_size} positions)")
        try:
            return self._step(token, attn_out)
        except BaseException:
            self.reset()
            raise

    def _step(self, token: int, attn_out) -> torch.Tensor:
        self._make_room(1)
        pos, sl = self.slots.assign(1)
        row = None
        if not self.dense:
            self.last_row = self.plan.extend(self.pieces[token])                   # (K,) positions
            row = self.slots.map_rows(self.last_row, out=self._row)                # (K,) slots
        kw = {"plan_pos": self.last_row} if self.clamp else {}
        self.last_logits = self.backend.decode(self.cache, token, row, int(pos[0]), int(sl[0]), attn_out, **kw)
        self.tokens.append(int(token))
        self.version += 1
        return self.last_logits

    # ---- reuse of a common prefix (chat turns, prompt caches) --------------------------------------
    def mark(self) -> None:
        """Remember the state at the current end so a later prompt sharing this prefix can rewind to it."""
        if self.last_logits is None:
            return
        state = None if self.dense else _copy_plan_state(self.plan.state_dict())
        self.marks = [m for m in self.marks if m.n_pos != self.n_past][-(self.MAX_MARKS - 1):]
        need = None if self.dense or not self.slots.bounded else self.plan.reachable()
        self.marks.append(_Mark(self.n_past, need, state, self.last_logits.clone()))

    def prepare(self, ids: Sequence[int]) -> tuple[torch.Tensor, int]:
        """Bring the session to `ids`, reusing the longest cached prefix it can: returns (last logits,
        number of tokens actually computed)."""
        ids = list(ids)
        common = _common_prefix(self.tokens, ids)
        if common < len(self.tokens):
            cached = self.slots.cached_positions() if self.slots.bounded else None
            usable = [m for m in self.marks if m.n_pos <= common
                      and (m.reachable is None or cached is None or np.isin(m.reachable, cached).all())]
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
        self.version += 1
        if m.n_pos == self.n_past:
            self.last_logits = m.logits
            return
        self.slots.truncate(m.n_pos)
        if not self.dense:
            self.plan = self.lm.planner.incremental_from_state(_copy_plan_state(m.plan_state))
        del self.tokens[m.n_pos:]
        self.last_logits = m.logits
        self.marks = [x for x in self.marks if x.n_pos <= m.n_pos]

    # ---- state -------------------------------------------------------------------------------------
    def state(self) -> dict:
        """Everything needed to continue this sequence elsewhere: {"tensors", "meta"} (see module doc)."""
        if self.last_logits is None:
            raise GenerationError("nothing to save: the session holds no tokens")
        slots = self.slots.state()
        tensors = dict(self.cache.state(self.slots.n_used))          # layers.{l}.k / .v  (Hkv, n_used, hs)
        tensors["tokens"] = torch.tensor(self.tokens, dtype=torch.int64)
        tensors["slot2pos"] = torch.from_numpy(slots["slot2pos"])
        tensors["last_logits"] = self.last_logits.detach().float().cpu().contiguous()
        plan_meta = None
        if not self.dense:
            plan = self.plan.state_dict()
            for k, v in plan["arrays"].items():
                tensors[f"plan.{k}"] = torch.from_numpy(np.ascontiguousarray(v))
            plan_meta = plan["meta"]
        return {"tensors": tensors, "meta": {"n_pos": slots["n_pos"], "plan_meta": plan_meta,
                                             "dense": self.dense}}

    @classmethod
    def from_state(cls, lm, state: dict, **session_kw) -> "Session":
        s = cls(lm, **session_kw)
        s.restore(state)
        return s

    def restore(self, state: dict) -> int:
        """Continue from `state()` of a session of the same model; returns the number of tokens restored.
        Raises GenerationError (one line) if it does not fit or is inconsistent; the session is then empty."""
        try:
            return self._restore(state)
        except GenerationError:
            self.reset()
            raise

    def _restore(self, state: dict) -> int:
        if not (isinstance(state, dict) and isinstance(state.get("tensors"), dict)
                and isinstance(state.get("meta"), dict)):
            raise GenerationError("restore takes a Session.state() dict ({'tensors', 'meta'}); a prompt cache "
                                  "file is read by asa_runtime.prompt_cache.load_prompt_cache")
        t, meta = state["tensors"], state["meta"]
        for name in ("tokens", "slot2pos"):          # ids and positions: a float tensor may hold inf / NaN
            v = t.get(name)
            if isinstance(v, torch.Tensor) and (v.is_floating_point() or v.is_complex() or v.dtype == torch.bool):
                raise GenerationError(f"session state {name} must be an integer tensor, got {v.dtype}")
        try:
            tokens = [int(x) for x in t["tokens"].tolist()]
            slot2pos = t["slot2pos"].numpy().astype(np.int64)
            last = t["last_logits"].float()
            plan_arrays = {k[len("plan."):]: v.numpy() for k, v in t.items() if k.startswith("plan.")}
            n_pos = int(meta["n_pos"])
        except (KeyError, ValueError, TypeError, AttributeError, OverflowError) as e:
            raise GenerationError(f"incomplete session state (missing {e})") from None
        if bool(meta.get("dense")) != self.dense or len(tokens) != n_pos \
                or tuple(last.shape) != (self.lm.config.vocab_size,):
            raise GenerationError("inconsistent session state")
        if self.slots.growable and self.slots.n_slots < len(slot2pos) <= self.ctx_size:
            self.reset()
            n = self.slots.n_slots
            while n < len(slot2pos):
                n *= 2
            self._grow(n)
        if len(tokens) >= self.ctx_size or len(slot2pos) > self.slots.n_slots:
            raise GenerationError(f"cached prefix ({len(tokens)} tokens, {len(slot2pos)} cached keys) does "
                                  f"not fit this context ({self.ctx_size}) / KV size ({self.slots.n_slots})")
        if tokens and (min(tokens) < 0 or max(tokens) >= len(self.pieces)):
            raise GenerationError("session state holds token ids outside this tokenizer")
        if not bool(torch.isfinite(last).all()):
            raise GenerationError("session state holds non-finite logits")
        self.reset()
        try:
            kv = {k: v for k, v in t.items() if k.startswith("layers.")}
            if not all(bool(torch.isfinite(v).all()) for v in kv.values()):
                raise ValueError("non-finite cache rows")
            self.cache.load_state(kv)
            self.slots.load_state({"slot2pos": slot2pos, "n_pos": n_pos})
            if not self.dense:
                # the plan is a pure function of the tokens: rebuild it (cheap next to a prefill) and
                # require the saved state to be exactly that, so a crafted plan state is never used
                plan = self.lm.planner.incremental()
                plan.extend_many([self.pieces[i] for i in tokens])
                if not _same_plan_state(plan.state_dict(), {"arrays": plan_arrays, "meta": meta["plan_meta"]}):
                    raise ValueError("plan state is not the plan of its tokens")
                self.plan = plan
            # every key the plan can still select must be cached (all of them when nothing was evicted)
            need = np.arange(n_pos) if self.dense or not self.slots.bounded else self.plan.reachable()
            if not np.isin(need, slot2pos).all():
                raise ValueError("the slot map lacks positions the plan can still select")
            kv_rows = kv["layers.0.k"].shape[1] if "layers.0.k" in kv else -1
            if kv_rows != len(slot2pos):
                raise ValueError(f"{kv_rows} cached rows for {len(slot2pos)} slots")
        except (ValueError, KeyError, TypeError, CacheFull) as e:
            self.reset()
            raise GenerationError(f"session state does not match this session ({e})") from None
        self.tokens = tokens
        self.last_logits = last
        self.version += 1
        self.mark()
        return len(tokens)


def _same_plan_state(a: dict, b: dict) -> bool:
    if a["arrays"].keys() != b["arrays"].keys():
        return False
    if any(not np.array_equal(a["arrays"][k], np.asarray(b["arrays"][k])) for k in a["arrays"]):
        return False
    return json.loads(json.dumps(a["meta"])) == json.loads(json.dumps(b["meta"]))


def _copy_plan_state(state: dict) -> dict:
    return {"arrays": {k: np.array(v, copy=True) for k, v in state["arrays"].items()},
            "meta": json.loads(json.dumps(state["meta"]))}


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
