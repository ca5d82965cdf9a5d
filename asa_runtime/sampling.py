"""Sampling: pure functions on logits, composed llama.cpp-style.

Order (llama.cpp's default chain): repeat penalty -> top-k -> top-p -> min-p -> temperature -> draw.
top-p and min-p are judged on the probabilities before temperature, as in llama.cpp. `temp == 0` is greedy
(argmax after the repeat penalty). Every filter returns new logits with removed tokens set to -inf and
never removes the most likely token, so a draw is always possible.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch

from .errors import GenerationError

NEG_INF = float("-inf")


def apply_repeat_penalty(logits: torch.Tensor, recent: Sequence[int] | torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL / llama.cpp repeat penalty: for every distinct token in `recent`, divide its logit by `penalty`
    if positive, multiply if negative. logits: (V,) or (B, V) (the same ids penalised in every row)."""
    if penalty == 1.0 or len(recent) == 0:
        return logits
    ids = torch.as_tensor(recent, dtype=torch.long, device=logits.device).unique()
    out = logits.clone()
    sel = out[..., ids]
    out[..., ids] = torch.where(sel > 0, sel / penalty, sel * penalty)
    return out


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits (k <= 0 or k >= V: keep all). Ties at the k-th value are all kept."""
    V = logits.shape[-1]
    if k <= 0 or k >= V:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]          # (..., 1)
    return logits.masked_fill(logits < kth, NEG_INF)


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus: keep the smallest set of most likely tokens whose probability mass reaches p (p >= 1: keep all)."""
    if p >= 1.0:
        return logits
    sorted_l, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_l.float(), dim=-1)
    mass_before = probs.cumsum(-1) - probs                         # mass of strictly more likely tokens
    drop_sorted = mass_before >= p                                 # already reached p without this token
    drop_sorted[..., 0] = False                                    # the top token always survives
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, NEG_INF)


def min_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep tokens whose probability is at least p times the top token's (p <= 0: keep all)."""
    if p <= 0.0:
        return logits
    # prob_i >= p * prob_max  <=>  logit_i >= logit_max + log p   (no softmax needed)
    thresh = logits.max(dim=-1, keepdim=True).values + torch.log(torch.tensor(p, dtype=torch.float32))
    return logits.masked_fill(logits < thresh.to(logits.dtype), NEG_INF)


def draw(logits: torch.Tensor, temp: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Greedy if temp == 0, else a draw from softmax(logits / temp). Returns (...,) long indices."""
    if temp == 0:
        return logits.argmax(-1)
    # subtract the max before dividing: any positive temp keeps the top token at 0 (never inf - inf = NaN)
    lf = logits.float()
    probs = torch.softmax((lf - lf.max(-1, keepdim=True).values) / temp, dim=-1)
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1])


@dataclass
class SamplerConfig:
    temp: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    seed: int | None = None

    @classmethod
    def from_options(cls, **kw) -> "SamplerConfig":
        """A validated config from keyword options; an unknown name (e.g. `temperature` for `temp`) is a
        GenerationError naming the options there are, not a TypeError."""
        unknown = sorted(set(kw) - {f.name for f in fields(cls)})
        if unknown:
            raise GenerationError(f"unknown sampling option{'s' if len(unknown) > 1 else ''} "
                                  f"{', '.join(map(repr, unknown))}; expected {', '.join(f.name for f in fields(cls))}")
        cfg = cls(**kw)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise GenerationError (a ValueError) naming the first out-of-range value, in one line."""
        for name in ("temp", "top_p", "min_p", "repeat_penalty"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise GenerationError(f"{name} must be a finite number, got {v!r}")
        for name in ("top_k", "repeat_last_n"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise GenerationError(f"{name} must be an integer, got {v!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or not -2**63 <= self.seed < 2**64):       # torch's generator range
            raise GenerationError(f"seed must be an integer in [-2**63, 2**64), got {self.seed!r}")
        if not self.temp >= 0:
            raise GenerationError(f"temp must be >= 0, got {self.temp}")
        if self.top_k < 0:
            raise GenerationError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise GenerationError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0.0 <= self.min_p < 1.0:
            raise GenerationError(f"min_p must be in [0, 1), got {self.min_p}")
        if not self.repeat_penalty > 0:
            raise GenerationError(f"repeat_penalty must be > 0, got {self.repeat_penalty}")
        if self.repeat_last_n < -1:
            raise GenerationError(f"repeat_last_n must be >= -1 (-1 = whole history), got {self.repeat_last_n}")


class Sampler:
    """Stateful only in its seeded generator: `sampler(logits, history) -> token id`."""

    def __init__(self, cfg: SamplerConfig | None = None, **kw):
        """`Sampler(SamplerConfig(...))` or `Sampler(temp=..., ...)`, not both. Bad options: GenerationError."""
        if cfg is not None and not isinstance(cfg, SamplerConfig):
            raise GenerationError(f"Sampler takes a SamplerConfig (or keyword options), got {type(cfg).__name__}")
        if cfg is not None and kw:
            raise GenerationError("give Sampler a SamplerConfig or keyword options, not both")
        self.cfg = cfg if cfg is not None else SamplerConfig.from_options(**kw)
        self.cfg.validate()
        self.generator = torch.Generator()
        if self.cfg.seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(int(self.cfg.seed))

    def __call__(self, logits: torch.Tensor, history: Sequence[int] = ()) -> int:
        """Raises GenerationError if the model's logits are not all finite (greedy included: an argmax of
        NaNs is a silent garbage token)."""
        c = self.cfg
        logits = logits.float().reshape(-1).cpu()                  # (V,)
        if not bool(torch.isfinite(logits).all()):
            raise GenerationError("the model produced non-finite logits (NaN or Inf): broken weights or an "
                                  "overflow in this dtype")
        if c.repeat_penalty != 1.0 and c.repeat_last_n != 0:
            recent = history if c.repeat_last_n < 0 else history[-c.repeat_last_n:]
            logits = apply_repeat_penalty(logits, recent, c.repeat_penalty)
            # an extreme penalty can overflow to -inf; keep the top token drawable
            logits = torch.nan_to_num(logits, nan=NEG_INF, posinf=torch.finfo(torch.float32).max)
        if c.temp == 0:
            return int(logits.argmax())
        # Reduce to the top-k candidates first (sorted), so top-p / min-p work on k values, not the vocab.
        if 0 < c.top_k < logits.shape[-1]:
            vals, idx = torch.topk(logits, c.top_k)
        else:
            vals, idx = logits, None
        vals = min_p_filter(top_p_filter(vals, c.top_p), c.min_p)
        j = int(draw(vals, c.temp, self.generator))
        return j if idx is None else int(idx[j])
