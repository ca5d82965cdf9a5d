"""The ASA model: a Llama-style decoder (RMSNorm, RoPE, SwiGLU, no biases) whose attention reads an
AttentionPlan. Mode "none" is dense causal SDPA; every other mode calls kernels.sparse_attention.

Shapes: B batch, T new tokens, S cache slots, H query heads, Hkv key/value heads, hs head size, K plan width.
Weights use Llama names so the same tensors run densely in llama.cpp (exporters/gguf).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from kernels import sparse_attention

from .config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def rope_cache(max_pos: int, hs: int, theta: float, device=None) -> torch.Tensor:
    freqs = 1.0 / (theta ** (torch.arange(0, hs, 2, device=device).float() / hs))
    t = torch.arange(max_pos, device=device).float()
    ang = torch.outer(t, freqs)                                   # (P, hs/2)
    return torch.stack([ang.cos(), ang.sin()], -1)                # (P, hs/2, 2)


def apply_rope(x: torch.Tensor, rc: torch.Tensor) -> torch.Tensor:
    # x: (B, H, T, hs); rc: (T, hs/2, 2). Rotates interleaved pairs (Llama / GGUF convention).
    xs = x.float().reshape(*x.shape[:-1], -1, 2)                  # (B, H, T, hs/2, 2)
    cos, sin = rc[..., 0], rc[..., 1]
    out = torch.stack([xs[..., 0] * cos - xs[..., 1] * sin, xs[..., 1] * cos + xs[..., 0] * sin], -1)
    return out.flatten(-2).type_as(x)


class KVCache(nn.Module):
    """Static cache written by index (gpt-fast). Slots are cache rows; the runtime maps token positions
    to slots (identity unless it evicts), and plan rows given to the model already hold slots."""

    def __init__(self, batch: int, slots: int, n_kv_head: int, hs: int, dtype=torch.float32, device=None):
        super().__init__()
        shape = (batch, n_kv_head, slots, hs)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        # slots: (T,); k, v: (B, Hkv, T, hs)
        self.k.index_copy_(2, slots, k.to(self.k.dtype))
        self.v.index_copy_(2, slots, v.to(self.v.dtype))
        return self.k, self.v


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        hs = cfg.head_dim
        self.wq = nn.Linear(cfg.d_model, cfg.n_head * hs, bias=False)
        self.wk = nn.Linear(cfg.d_model, cfg.n_kv_head * hs, bias=False)
        self.wv = nn.Linear(cfg.d_model, cfg.n_kv_head * hs, bias=False)
        self.wo = nn.Linear(cfg.n_head * hs, cfg.d_model, bias=False)
        self.kv_cache: KVCache | None = None

    def forward(self, x, rc, keys, slots, attn_mask):
        B, T, _ = x.shape
        H, Hkv, hs = self.cfg.n_head, self.cfg.n_kv_head, self.cfg.head_dim
        q = self.wq(x).view(B, T, H, hs).transpose(1, 2)          # (B, H, T, hs)
        k = self.wk(x).view(B, T, Hkv, hs).transpose(1, 2)        # (B, Hkv, T, hs)
        v = self.wv(x).view(B, T, Hkv, hs).transpose(1, 2)        # (B, Hkv, T, hs)
        q, k = apply_rope(q, rc), apply_rope(k, rc)
        if self.kv_cache is not None:
            k, v = self.kv_cache.update(slots, k, v)              # (B, Hkv, S, hs)
        if keys is None:                                          # dense causal baseline
            if attn_mask is None:
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=H != Hkv)
            else:                                                 # cached: only the slots written so far
                S = attn_mask.shape[-1]
                k, v = k[:, :, :S].to(q.dtype), v[:, :, :S].to(q.dtype)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, enable_gqa=H != Hkv)
        else:
            y = sparse_attention(q, k, v, keys)                   # (B, H, T, hs)
        return self.wo(y.transpose(1, 2).reshape(B, T, H * hs))


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.w1 = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=False)   # gate
        self.w3 = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=False)   # up
        self.w2 = nn.Linear(cfg.ffn_hidden, cfg.d_model, bias=False)   # down

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attention_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attention = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.feed_forward = FeedForward(cfg)

    def forward(self, x, rc, keys, slots, attn_mask):
        x = x + self.attention(self.attention_norm(x), rc, keys, slots, attn_mask)
        return x + self.feed_forward(self.ffn_norm(x))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.output = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        self._rope_len = 0
        self.register_buffer("rope", torch.empty(0), persistent=False)
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    def _rope(self, upto: int) -> torch.Tensor:
        if upto > self._rope_len:
            n = max(upto, 2 * self._rope_len, self.cfg.max_seq_len)
            self.rope = rope_cache(n, self.cfg.head_dim, self.cfg.rope_theta, self.tok_embeddings.weight.device)
            self._rope_len = n
        return self.rope

    def setup_caches(self, batch: int, slots: int, dtype=None):
        dtype = dtype or self.tok_embeddings.weight.dtype
        dev = self.tok_embeddings.weight.device
        for layer in self.layers:
            layer.attention.kv_cache = KVCache(batch, slots, self.cfg.n_kv_head, self.cfg.head_dim, dtype, dev)

    def clear_caches(self):
        for layer in self.layers:
            layer.attention.kv_cache = None

    @property
    def has_cache(self) -> bool:
        return self.layers[0].attention.kv_cache is not None

    def forward(self, idx, keys=None, input_pos=None, slots=None):
        """idx: (B, T) token ids. keys: (B, T, K) plan rows (cache slots when a cache is set up; token
        positions otherwise), or None for the dense baseline. input_pos: (T,) token positions (RoPE);
        defaults to 0..T-1. slots: (T,) cache rows to write (defaults to input_pos)."""
        B, T = idx.shape
        if input_pos is None:
            input_pos = torch.arange(T, device=idx.device)
        rc = self._rope(int(input_pos.max()) + 1)[input_pos]       # (T, hs/2, 2)
        attn_mask = None
        if self.has_cache:
            slots = input_pos if slots is None else slots
            if keys is None:                                       # dense with a cache: mask by position
                S = int(input_pos.max()) + 1                       # dense never evicts: slot == position
                attn_mask = torch.arange(S, device=idx.device)[None, :] <= input_pos[:, None]  # (T, S)
        keys = None if keys is None else keys.to(idx.device)
        x = self.tok_embeddings(idx)                               # (B, T, d)
        for layer in self.layers:
            x = layer(x, rc, keys, slots, attn_mask)
        return self.output(self.norm(x))                           # (B, T, vocab)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
