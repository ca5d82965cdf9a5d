"""Token log-likelihoods through a Session: the served path (prefill, plan, KV cache, RoPE clamp) scoring a
known text, one prefill chunk at a time so memory stays bounded by the chunk. `asa-run perplexity`, the
latency and KV-dtype benches and the server's prompt logprobs use it."""
from __future__ import annotations

from collections.abc import Sequence

import torch


def score(session, ids: Sequence[int], first: int = 0, top: int = 0):
    """For j = first .. len(ids) - 2: -log p(ids[j + 1] | ids[: j + 1]) (float32, (n,)) and the `top` most
    likely ids there with their log-probabilities ((n, top) each). Feeds every id but the last (only a target)
    on `session`, which must be fresh."""
    ids = [int(i) for i in ids]
    nll, top_lp, top_id = [torch.zeros(0)], [torch.zeros(0, top)], [torch.zeros(0, top, dtype=torch.long)]
    for a in range(0, len(ids) - 1, session.prefill_chunk):
        piece = ids[a: min(a + session.prefill_chunk, len(ids) - 1)]
        lp = torch.log_softmax(session.feed(piece, all_logits=True)[:, : session.n_vocab].float(), -1)
        skip = max(0, first - a)
        lp = lp[skip:]
        nll.append(-lp.gather(1, torch.tensor(ids[a + 1 + skip: a + 1 + len(piece)])[:, None])[:, 0])
        v, i = lp.topk(min(top, lp.shape[1]), -1)
        top_lp.append(v)
        top_id.append(i)
    return torch.cat(nll), torch.cat(top_lp), torch.cat(top_id)


def token_nll(session, ids: Sequence[int], first: int = 0) -> torch.Tensor:
    """score() without the alternatives: the losses of ids[first + 1:]."""
    return score(session, ids, first)[0]
