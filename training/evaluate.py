"""Perplexity on prepared splits (held-out books, WikiText-2 valid/test).

Each split is cut into non-overlapping windows of ctx tokens (the training context; the model sees no
token before its window, and an ASA model gets the window's cached plan). Every position of every window
is scored once, so

    ppl_bpe  = exp( sum of NLL over scored BPE tokens / number of scored BPE tokens )
    ppl_word = exp( sum of NLL / scored tokens * (BPE tokens of the split / word-level tokens of the split) )

ppl_word spreads the same total NLL over word-level tokens instead of BPE tokens (NLL per word), which is
what word-level WikiText-2 numbers mean: for the tokenized WikiText-2 text (with its literal "<unk>")
words = whitespace tokens + one <eos> per line, as in the standard word-level setup. It is comparable in
kind, not in detail: the BPE model must spell "<unk>" and predicts newlines where a word model predicts <eos>.
For prose books, words = whitespace-separated words.
"""
from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
import torch.nn.functional as F

from .prepare import Prepared


def autocast_for(device, dtype: str = "auto"):
    if torch.device(device).type == "cuda" and dtype in ("auto", "bf16", "bfloat16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def split_nll(model, prep: Prepared, split: str, mode: str, device, batch_size: int = 32,
              max_windows: int | None = None, rank: int = 0, world: int = 1, amp: str = "auto") -> tuple[float, int]:
    """(sum of NLL in nats, scored tokens) over the windows of `split` (evenly spaced subset if max_windows),
    sharded over DDP ranks (the caller all-reduces)."""
    n = prep.windows(split)
    idx = np.arange(n) if not max_windows or max_windows >= n else \
        np.unique(np.linspace(0, n - 1, max_windows).round().astype(np.int64))
    idx = idx[rank::world]
    was_training = model.training
    model.eval()
    nll, count = 0.0, 0
    for s in range(0, len(idx), batch_size):
        x, y, keys = prep.batch(split, mode, idx[s: s + batch_size])
        x, y = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
        keys = None if keys is None else torch.from_numpy(keys).to(device)
        with autocast_for(device, amp):
            logits = model(x, keys)                                      # (B, T, V)
        nll += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum").item()
        count += y.numel()
    model.train(was_training)
    return nll, count


def perplexity(prep: Prepared, split: str, nll: float, count: int) -> dict:
    s = prep.meta["splits"][split]
    loss = nll / max(count, 1)
    out = {"loss": loss, "ppl_bpe": math.exp(loss), "scored_tokens": count, "bpe_tokens": s["tokens"],
           "words": s["words"]}
    if s.get("words"):
        out["ppl_word"] = math.exp(loss * s["tokens"] / s["words"])
    return out


def evaluate(model, prep: Prepared, mode: str, splits, device, batch_size: int = 32,
             max_windows: int | None = None, amp: str = "auto") -> dict:
    """{split: perplexity dict} on one process."""
    out = {}
    for split in splits:
        if split not in prep.meta["splits"]:
            continue
        nll, count = split_nll(model, prep, split, mode, device, batch_size, max_windows, amp=amp)
        out[split] = perplexity(prep, split, nll, count)
    return out
