"""Fair long-context baselines for a DENSE model: the same weights evaluated with a bounded KV cache.

- sliding window of W (Mistral / Longformer style "window attention"): query i attends to keys
  [i-W+1, i] in every layer, RoPE at the tokens' own positions (only distances matter, all < W).
- sinks + window (StreamingLLM, Xiao et al. 2023): keys [0, S) plus [i-W+1, i], positions counted inside
  the rolling cache of S + W slots, as StreamingLLM does: a window key keeps its distance i - j, a sink s is
  seen at distance S + W - 1 - s once the cache is full (i >= S + W - 1), at i - s before that. Since RoPE
  scores depend only on the distance, the sink scores use the query rotated at min(i, S + W - 1).

Both are exactly what a streaming decoder with that cache computes token by token (each token's hidden
states come from its own window in every layer), evaluated in parallel over a whole sequence: queries in
chunks of `chunk`, each chunk against its (chunk + W - 1) window keys and the S sinks, so memory is
O(chunk * (chunk + W + S)) per head and time O(T * (chunk + W + S)), never T x T. Runs on any device (CUDA
for 32k contexts, CPU for tests). The model's own modules do the projections, RoPE, norms and FFN; only the
attention pattern differs from `Transformer.forward`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

CHUNK = 1024


def window_attention(q, k, v, window: int, sinks: int = 0, q_sink=None, chunk: int = CHUNK):
    """q: (B, H, T, hs); k, v: (B, Hkv, T, hs) with RoPE at absolute positions; q_sink: (B, H, T, hs) the
    queries rotated at min(i, sinks + window - 1) (needed when sinks > 0). -> (B, H, T, hs).
    Query i attends to [0, sinks) and [max(sinks, i - window + 1), i] (causal)."""
    B, H, T, hs = q.shape
    g = H // k.shape[1]
    if g > 1:                                                   # GQA: head h reads kv head h // g (as SDPA)
        k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    S = min(sinks, T)
    if S and q_sink is None:
        raise ValueError("sinks need q_sink (queries rotated at their cache-slot position)")
    scale = hs ** -0.5
    out = torch.empty_like(q)
    ks, vs = k[:, :, :S].float(), v[:, :, :S].float()           # (B, H, S, hs)
    for s in range(0, T, chunk):
        e = min(T, s + chunk)
        a = max(S, s - window + 1)                              # first window key any query here can see
        qi = torch.arange(s, e, device=q.device)[:, None]       # (C, 1)
        kj = torch.arange(a, e, device=q.device)[None, :]       # (1, L)
        ok = (kj <= qi) & (kj > qi - window)                    # (C, L)
        sc = q[:, :, s:e].float() @ k[:, :, a:e].float().transpose(-1, -2) * scale       # (B, H, C, L)
        sc = sc.masked_fill(~ok, float("-inf"))
        if S:
            ss = q_sink[:, :, s:e].float() @ ks.transpose(-1, -2) * scale                # (B, H, C, S)
            ss = ss.masked_fill(torch.arange(S, device=q.device)[None, :] > qi, float("-inf"))
            p = torch.softmax(torch.cat([ss, sc], -1), -1)
            o = p[..., :S] @ vs + p[..., S:] @ v[:, :, a:e].float()
        else:
            o = torch.softmax(sc, -1) @ v[:, :, a:e].float()    # every row holds its own key
        out[:, :, s:e] = o.to(q.dtype)
    return out


def windowed_hidden(model, idx, window: int, sinks: int = 0, chunk: int = CHUNK):
    """The dense model's final hidden states (after the last norm), (B, T, d), with window attention of
    `window` (+ `sinks` StreamingLLM sinks) in every layer instead of full causal attention."""
    B, T = idx.shape
    cfg = model.cfg
    H, hs = cfg.n_head, cfg.head_dim
    table = model.rope_table(T)
    pos = torch.arange(T, device=idx.device)
    rc = table[pos]                                             # (T, hs/2, 2)
    rc_sink = table[pos.clamp(max=sinks + window - 1)] if sinks else None
    x = model.tok_embeddings(idx)                               # (B, T, d)
    for layer in model.layers:
        att = layer.attention
        h = layer.attention_norm(x)
        q, k, v = att.project(h, rc)                            # (B, H, T, hs), (B, Hkv, T, hs) x2
        q_sink = att.project(h, rc_sink)[0] if sinks else None  # the same queries at their cache slots
        y = window_attention(q, k, v, window, sinks, q_sink, chunk)
        x = x + att.wo(y.transpose(1, 2).reshape(B, T, H * hs))
        x = x + layer.feed_forward(layer.ffn_norm(x))
    return model.norm(x)


def token_nll_from_hidden(model, h, y, chunk: int = 4096):
    """Per-token NLL (B, T) float32 of targets y from final hidden states h (B, T, d), the vocabulary
    projection done `chunk` positions at a time (a 32k x vocab logits tensor is never built whole)."""
    out = torch.empty(y.shape, dtype=torch.float32, device=h.device)
    for s in range(0, h.shape[1], chunk):
        logits = model.output(h[:, s:s + chunk]).float()        # (B, C, V)
        out[:, s:s + chunk] = F.cross_entropy(logits.transpose(1, 2), y[:, s:s + chunk], reduction="none")
    return out
