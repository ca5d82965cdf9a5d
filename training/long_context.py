"""Long-context evaluation on held-out books, one scorer for every model and every fair dense baseline.

A `Method` says how a model sees a sequence:
    model            the model as trained: its plan (ASA modes, built on the sequence's own pieces) or full
                     causal attention (a dense model, also past its training length)
    window:W         a dense model with a sliding window of W tokens in every layer
    sinks:S+W        a dense model with S attention sinks + a window of W (StreamingLLM); KV = S + W slots
(see training/windowed_dense.py). Each gives per-token NLL over a sequence, from which:

    by_context       perplexity over non-overlapping windows of L tokens (512 ... 32k) of the held-out stream,
                     every position scored, the model seeing nothing before its window;
    by_position      the held-out books cut into sequences of up to `seq_len` tokens from each book's start
                     (a long book gives several, the later ones starting at multiples of seq_len), perplexity
                     by the token's position in its sequence;
    far_context      training/far_context.py's recurring-word losses on those same book sequences.

Plans are built on the CPU (a process pool on the device), the forwards run on `device`.
"""
from __future__ import annotations

import math
import multiprocessing as mp
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from . import far_context
from .evaluate import autocast_for
from .windowed_dense import token_nll_from_hidden, windowed_hidden

CONTEXTS = (512, 1024, 2048, 4096, 8192, 16384, 32768)
POSITION_EDGES = (0, 512, 1024, 2048, 4096, 8192, 16384, 32768)


@dataclass(frozen=True)
class Method:
    kind: str = "model"          # model | window | sinks
    window: int = 0
    sinks: int = 0

    @classmethod
    def parse(cls, s: str) -> "Method":
        if s == "model":
            return cls()
        kind, _, arg = s.partition(":")
        if kind == "window" and arg.isdigit():
            return cls("window", int(arg))
        if kind == "sinks" and "+" in arg:
            a, b = arg.split("+", 1)
            if a.isdigit() and b.isdigit():
                return cls("sinks", int(b), int(a))
        raise ValueError(f"unknown method {s!r}: expected model, window:W or sinks:S+W")

    @property
    def name(self) -> str:
        return {"model": "model", "window": f"window:{self.window}", "sinks": f"sinks:{self.sinks}+{self.window}"}[self.kind]

    @property
    def kv_slots(self) -> int | None:
        """Cache rows per layer this method needs at any length (None: grows with the sequence)."""
        return None if self.kind == "model" else self.window + self.sinks


# ---- plans on all cores -----------------------------------------------------------------------------
_P: dict = {}


def _plan_init(plan_cfg: dict, pieces: list[str]):
    from asa_runtime.config import PlanConfig
    from asa_runtime.linguistics.planner import Planner

    _P.update(planner=Planner(PlanConfig.from_dict(plan_cfg)), pieces=pieces)


def _plan_one(ids: np.ndarray) -> np.ndarray:
    return _P["planner"].plan([_P["pieces"][i] for i in ids])


def plan_sequences(plan_cfg, pieces, seqs: list[np.ndarray], workers: int | None = None) -> list[np.ndarray]:
    """Plans (N, K) int32 of each sequence, in a fork pool of `workers` processes (1: in this process)."""
    workers = workers or max(1, min(len(seqs), os.cpu_count() or 1))
    cfg = plan_cfg.to_dict()
    if workers <= 1 or len(seqs) <= 1:
        _plan_init(cfg, pieces)
        return [_plan_one(s) for s in seqs]
    with mp.get_context("fork").Pool(workers, initializer=_plan_init, initargs=(cfg, pieces)) as pool:
        return pool.map(_plan_one, seqs, chunksize=1)


# ---- one sequence -----------------------------------------------------------------------------------
@torch.no_grad()
def sequence_nll(model, seq: np.ndarray, method: Method, keys: np.ndarray | None, device) -> np.ndarray:
    """seq: (L + 1,) token ids -> (L,) float32 NLL of seq[1:] given seq[:-1], the way `method` reads."""
    x = torch.from_numpy(np.ascontiguousarray(seq[:-1], dtype=np.int64))[None].to(device)
    y = torch.from_numpy(np.ascontiguousarray(seq[1:], dtype=np.int64))[None].to(device)
    with autocast_for(device):
        if method.kind == "model":
            k = None if keys is None else torch.from_numpy(np.asarray(keys, dtype=np.int32))[None].to(device)
            logits = model(x, k)                                            # (1, L, V)
            out = torch.empty(y.shape, dtype=torch.float32, device=logits.device)
            for s in range(0, y.shape[1], 4096):
                out[:, s:s + 4096] = F.cross_entropy(logits[:, s:s + 4096].float().transpose(1, 2),
                                                      y[:, s:s + 4096], reduction="none")
        else:
            if not model.cfg.plan.dense:
                raise ValueError(f"{method.name} is a baseline for dense models; this one has plan mode "
                                 f"{model.cfg.plan.mode!r}")
            h = windowed_hidden(model, x, method.window, method.sinks)      # (1, L, d)
            out = token_nll_from_hidden(model, h, y)
    return out[0].float().cpu().numpy()


def _summary(nll_sum: float, count: int, extra: dict | None = None) -> dict:
    loss = nll_sum / max(count, 1)
    return {"loss": loss, "ppl": math.exp(loss) if count else None, "tokens": count, **(extra or {})}


# ---- by context -------------------------------------------------------------------------------------
def context_windows(ids: np.ndarray, L: int, max_tokens: int) -> list[np.ndarray]:
    """Non-overlapping windows of L + 1 tokens from the start of the stream, within max_tokens (at least
    one window when the stream holds one)."""
    n = max(1, min(len(ids), max_tokens) // (L + 1)) if len(ids) > L else 0
    return [ids[w * (L + 1): (w + 1) * (L + 1)] for w in range(n)]


def by_context(model, method: Method, ids, contexts=CONTEXTS, max_tokens: int = 131072, device="cpu",
               plans=None, log=print, name: str = "") -> dict:
    """{L: {ppl, loss, tokens, windows}}. plans: {L: [keys per window]} (ASA models), else None."""
    out = {}
    for L in contexts:
        seqs = context_windows(ids, L, max_tokens)
        if not seqs:
            continue
        tot, cnt = 0.0, 0
        for w, seq in enumerate(seqs):
            nll = sequence_nll(model, seq, method, None if plans is None else plans[L][w], device)
            tot += float(nll.astype(np.float64).sum())
            cnt += nll.size
        out[str(L)] = _summary(tot, cnt, {"windows": len(seqs)})
        log(f"{name} {method.name} ctx {L}: ppl {out[str(L)]['ppl']:.2f} ({len(seqs)} windows)")
    return out


# ---- books: by position and far context -------------------------------------------------------------
def book_sequences(ids: np.ndarray, eos_id: int, seq_len: int = 32768, min_len: int = 1024) -> list[np.ndarray]:
    """Held-out books (split at eos) cut into sequences of up to seq_len + 1 tokens from each book start;
    pieces shorter than min_len + 1 are dropped."""
    ends = np.flatnonzero(ids == eos_id)
    starts = np.concatenate([[0], ends[:-1] + 1]) if ends.size else np.array([0])
    ends = ends if ends.size else np.array([len(ids)])
    out = []
    for a, b in zip(starts, ends):
        for s in range(int(a), int(b), seq_len):
            seq = ids[s: min(int(b), s + seq_len + 1)]
            if len(seq) >= min_len + 1:
                out.append(seq)
    return out


def by_position(nlls: list[np.ndarray], edges=POSITION_EDGES) -> dict:
    """Perplexity by the position (in its sequence) of the token being predicted, buckets [lo, hi)."""
    out = {}
    for lo, hi in zip(edges[:-1], edges[1:]):
        parts = [n[lo:hi] for n in nlls if len(n) > lo]
        cnt = sum(p.size for p in parts)
        if cnt:
            out[f"{lo}-{hi}"] = _summary(float(sum(p.astype(np.float64).sum() for p in parts)), cnt)
    return out


def book_eval(model, method: Method, seqs: list[np.ndarray], pieces, device="cpu", plans=None,
              lower_seen=None) -> dict:
    """by_position and far_context over book sequences (one forward each)."""
    nlls, parts = [], []
    for w, seq in enumerate(seqs):
        nll = sequence_nll(model, seq, method, None if plans is None else plans[w], device)
        nlls.append(nll)
        # nll[t] scores seq[t + 1]; far_context wants position t of the scored sequence seq[1:]... so shift:
        # targets are found on seq, and a target token at seq index u has NLL nll[u - 1].
        full = np.concatenate([[np.nan], nll]).astype(np.float32)          # full[u] = NLL of seq[u]
        parts.append((full, far_context.find_targets(seq, pieces, lower_seen)))
    return {"by_position": by_position(nlls), "far_context": far_context.merge_scores(parts),
            "sequences": len(seqs), "tokens": int(sum(n.size for n in nlls))}
