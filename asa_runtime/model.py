"""The ASA model: a Llama-style decoder (RMSNorm, RoPE, SwiGLU, no biases) whose attention reads an
AttentionPlan. Mode "none" is dense causal SDPA; every other mode calls kernels.sparse_attention.

One forward for everything: training, prefill and one-token decode all run the modules below; backends
call `Transformer.forward` / `Transformer.decode_one` (or an export of them), never a copy of the math.
The KV cache is not part of the model: `make_cache()` returns per-layer cache objects (mlx-lm's hook) that
a Session owns and passes in, so many sequences can share one set of weights.

Shapes: B batch, T new tokens, S cache slots, H query heads, Hkv key/value heads, hs head size, K plan width.
Projections are fused (wqkv = [wq; wk; wv], w13 = [w1 (gate); w3 (up)]) for fewer, larger matmuls; on disk
and in `llama_state_dict` they are split under Llama names, so the same tensors run in llama.cpp.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from kernels import sparse_attention
from kernels.torch_sparse import UnionPlan, rope_deltas, union_attention

from .cache_state import state_rows
from .config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        if x.dtype == torch.float32:
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        # half precision: normalise in float32, round like Llama's reference, then scale
        return F.rms_norm(x.float(), self.weight.shape, None, self.eps).to(x.dtype) * self.weight


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


def _turn(kg: torch.Tensor, far: torch.Tensor) -> torch.Tensor:
    """Gathered keys (1, Hkv, n, hs), a fresh tensor (index_select's), with its first len(far) keys turned by the
    complex rotations far (nf, hs/2): float32 (the RoPE clamp; far keys lead an ascending row)."""
    kf = kg.float()
    nf = far.shape[0]
    kc = torch.view_as_complex(kf[..., :nf, :].reshape(*kf.shape[:-2], nf, -1, 2).contiguous())
    kf[..., :nf, :] = torch.view_as_real(kc * far).flatten(-2)
    return kf


def _mv(lin: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # one-token decode: a matrix-vector product is faster than linear on a 1-row batch (bf16 most of all)
    return torch.mv(lin.weight, x) if type(lin) is nn.Linear else lin(x)


# ---- KV cache --------------------------------------------------------------------------------------
class KVCache:
    """One layer's static cache written by index (gpt-fast). Slots are cache rows; the runtime maps token
    positions to slots (identity unless it evicts), and plan rows given to the model already hold slots."""

    def __init__(self, batch: int, slots: int, n_kv_head: int, hs: int, dtype=torch.float32, device=None):
        shape = (batch, n_kv_head, slots, hs)
        # stale rows need no zeroing: every row a step reads was written earlier in the same sequence
        self.k = torch.zeros(shape, dtype=dtype, device=device)  # (B, Hkv, S, hs)
        self.v = torch.zeros(shape, dtype=dtype, device=device)

    def update(self, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        # slots: (T,); k, v: (B, Hkv, T, hs) -> the whole cache (B, Hkv, S, hs)
        self.k.index_copy_(2, slots, k.to(self.k.dtype))
        self.v.index_copy_(2, slots, v.to(self.v.dtype))
        return self.k, self.v


class ModelCache(list):
    """The per-layer KVCache list of one sequence (what `Transformer.make_cache` returns), with the cache
    state protocol every backend's cache follows (asa_runtime/backends: `Cache`)."""

    @property
    def n_slots(self) -> int:
        return self[0].k.shape[2]

    @property
    def dtype(self) -> torch.dtype:
        return self[0].k.dtype

    def nbytes(self) -> int:
        return sum(c.k.numel() * c.k.element_size() + c.v.numel() * c.v.element_size() for c in self)

    @torch.inference_mode()
    def move_slots(self, src: np.ndarray, dst: np.ndarray) -> None:
        """Copy rows src -> dst (compaction: dst[i] <= src[i], both ascending)."""
        dev = self[0].k.device
        s = torch.from_numpy(np.ascontiguousarray(src, dtype=np.int64)).to(dev)
        d = torch.from_numpy(np.ascontiguousarray(dst, dtype=np.int64)).to(dev)
        for c in self:
            c.k.index_copy_(2, d, c.k.index_select(2, s))       # index_select copies first: overlap is safe
            c.v.index_copy_(2, d, c.v.index_select(2, s))

    @torch.inference_mode()
    def state(self, n: int) -> dict[str, torch.Tensor]:
        """Rows 0..n-1 of sequence 0: {"layers.{l}.k" / ".v": (Hkv, n, hs)} on the CPU."""
        out = {}
        for i, c in enumerate(self):
            out[f"layers.{i}.k"] = c.k[0, :, :n].to("cpu").clone()
            out[f"layers.{i}.v"] = c.v[0, :, :n].to("cpu").clone()
        return out

    @torch.inference_mode()
    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        """Inverse of state(): fill rows 0..n-1. Raises ValueError if the tensors do not fit."""
        for c, (k, v) in zip(self, state_rows(tensors, len(self), tuple(self[0].k.shape))):
            c.k[0, :, : k.shape[1]].copy_(k)
            c.v[0, :, : v.shape[1]].copy_(v)


def narrow_rows(keys: torch.Tensor, width: int, sinks: int) -> torch.Tensor:
    """The rows a layer-dependent plan's narrow layers attend to (PlanConfig.narrow_k): of each row (..., K)
    its first `sinks` entries and its nearest `width - sinks` (the last valid ones), -1 padded, (..., width).
    A row is ascending with trailing padding whether it holds positions or slots, so this is a pure function
    of the row: causal, and the same in training, prefill and decode (the query itself is its last entry)."""
    n = (keys >= 0).sum(-1, keepdim=True)                          # (..., 1) valid entries
    j = torch.arange(width, device=keys.device)                     # (width,)
    long = n > width
    src = torch.where(long & (j >= sinks), n - width + j, j)        # long rows: sinks, then the nearest
    out = keys.gather(-1, torch.minimum(src, torch.full_like(src, keys.shape[-1] - 1)))
    return torch.where(long | (j < n), out, torch.full_like(out, -1))


def narrow_keep(n, width: int, sinks: int, length: int, device=None) -> torch.Tensor:
    """narrow_rows as a mask over one row's `length` entries, n of them valid (an int, or a 0-d tensor in the
    CUDA-graph step): the entries a narrow layer reads, in the row's order."""
    j = torch.arange(length, device=device)
    return (j < n) & ((n <= width) | (j < sinks) | (j >= n - (width - sinks)))


# ---- layers ----------------------------------------------------------------------------------------
class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        hs = cfg.head_dim
        self.wqkv = nn.Linear(cfg.d_model, (cfg.n_head + 2 * cfg.n_kv_head) * hs, bias=False)
        self.wo = nn.Linear(cfg.n_head * hs, cfg.d_model, bias=False)

    def project(self, x, rc):
        """x: (B, T, d) -> q (B, H, T, hs), k and v (B, Hkv, T, hs), RoPE applied to q and k."""
        B, T, _ = x.shape
        H, Hkv, hs = self.cfg.n_head, self.cfg.n_kv_head, self.cfg.head_dim
        q, k, v = self.wqkv(x).split([H * hs, Hkv * hs, Hkv * hs], -1)
        q = q.reshape(B, T, H, hs).transpose(1, 2)                # (B, H, T, hs)
        k = k.reshape(B, T, Hkv, hs).transpose(1, 2)              # (B, Hkv, T, hs)
        v = v.reshape(B, T, Hkv, hs).transpose(1, 2)              # (B, Hkv, T, hs)
        return apply_rope(q, rc), apply_rope(k, rc), v

    def forward(self, x, rc, keys, slots, attn_mask, cache: KVCache | None, clamp=None):
        """clamp: when the RoPE clamp applies (Transformer.layer_clamps): (rope_delta, RoPE table) for plan rows,
        (UnionPlan.clamp, RoPE table) for a UnionPlan."""
        B, T, _ = x.shape
        H, Hkv, hs = self.cfg.n_head, self.cfg.n_kv_head, self.cfg.head_dim
        q, k, v = self.project(x, rc)
        if cache is not None:
            k, v = cache.update(slots, k, v)                      # (B, Hkv, S, hs)
        if keys is None:                                          # dense causal baseline
            if attn_mask is None:
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=H != Hkv)
            else:                                                 # cached: only the slots written so far
                S = attn_mask.shape[-1]
                k, v = k[:, :, :S].to(q.dtype), v[:, :, :S].to(q.dtype)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, enable_gqa=H != Hkv)
        elif isinstance(keys, UnionPlan):                         # CPU prefill layout (kernels/torch_sparse)
            y = union_attention(q, k, v, keys, *(clamp or ()))
        else:
            y = sparse_attention(q, k, v, keys, **({} if clamp is None else dict(rope_delta=clamp[0], rope=clamp[1])))
        return self.wo(y.transpose(1, 2).reshape(B, T, H * hs))

    def decode_one(self, h, rot, idx, pos, slot, cache: KVCache, attn_out: list | None, mask=None, far=None):
        """One token of one sequence on 1-D vectors. h: (d,); rot: (hs/2,) complex cos + i sin of the
        position; idx: (n,) planned slots, or None for the dense baseline (slots 0..pos are positions).
        Static shapes (a CUDA graph replays it): pos and slot 0-d tensors, mask (n,) bool over idx (padded
        to the plan width) or, with idx None, over every cache slot. far: (nf, hs/2) complex rotations of the
        RoPE clamp for idx's first nf keys (Transformer._far), or None."""
        H, Hkv, hs = self.cfg.n_head, self.cfg.n_kv_head, self.cfg.head_dim
        nqk = (H + Hkv) * hs
        dt = h.dtype
        qkv = _mv(self.wqkv, h)                                   # ((H + 2 Hkv) hs,)
        # RoPE on interleaved pairs = complex multiplication by cos + i sin (Llama / GGUF convention)
        qk = torch.view_as_complex(qkv[:nqk].float().view(H + Hkv, hs // 2, 2))
        r = torch.view_as_real(qk * rot).view(H + Hkv, hs).to(dt)  # (H + Hkv, hs)
        if mask is not None:                                      # static: write by a device-side index
            cache.k[0].index_copy_(1, slot.view(1), r[H:, None].to(cache.k.dtype))
            cache.v[0].index_copy_(1, slot.view(1), qkv[nqk:].view(Hkv, 1, hs).to(cache.v.dtype))
            kg, vg = (cache.k, cache.v) if idx is None else (cache.k.index_select(2, idx),
                                                             cache.v.index_select(2, idx))
            if far is not None:
                kg = _turn(kg, far).to(kg.dtype)
            # the cache's dtype, not float32: dense reads every slot, an upcast copy would dominate
            y = F.scaled_dot_product_attention(r[:H].view(1, H, 1, hs).to(kg.dtype), kg, vg, attn_mask=mask[None],
                                               enable_gqa=H != Hkv)
            return _mv(self.wo, y.view(H * hs).to(dt))
        cache.k[0, :, slot] = r[H:]                               # (Hkv, hs)
        cache.v[0, :, slot] = qkv[nqk:].view(Hkv, hs)
        if idx is None:
            kg, vg = cache.k[:, :, : pos + 1], cache.v[:, :, : pos + 1]          # (1, Hkv, n, hs) views
        else:
            kg, vg = cache.k.index_select(2, idx), cache.v.index_select(2, idx)  # (1, Hkv, n, hs)
        q = r[:H].float().view(1, H, 1, hs)                       # (1, H, 1, hs)
        kg, vg = (kg.float() if far is None else _turn(kg, far)), vg.float()
        y = F.scaled_dot_product_attention(q, kg, vg, enable_gqa=H != Hkv)       # (1, H, 1, hs)
        if attn_out is not None:                                  # the weights, for the bonds view only
            kr = kg[0].repeat_interleave(H // Hkv, 0)             # (H, n, hs)
            p = torch.softmax((kr @ q[0, :, 0, :, None])[..., 0] * hs ** -0.5, -1)  # (H, n)
            attn_out.append(p.mean(0))                            # (n,)
        return _mv(self.wo, y.view(H * hs).to(dt))


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ffn = cfg.ffn_hidden
        self.w13 = nn.Linear(cfg.d_model, 2 * cfg.ffn_hidden, bias=False)   # [gate; up]
        self.w2 = nn.Linear(cfg.ffn_hidden, cfg.d_model, bias=False)        # down

    def forward(self, x):
        gate, up = self.w13(x).split(self.ffn, -1)
        return self.w2(F.silu(gate) * up)

    def decode_one(self, h):
        gu = _mv(self.w13, h)                                     # (2 ffn,)
        return _mv(self.w2, F.silu(gu[: self.ffn]) * gu[self.ffn:])


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attention_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attention = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.feed_forward = FeedForward(cfg)

    def forward(self, x, rc, keys, slots, attn_mask, cache=None, clamp=None):
        x = x + self.attention(self.attention_norm(x), rc, keys, slots, attn_mask, cache, clamp)
        return x + self.feed_forward(self.ffn_norm(x))

    def decode_one(self, x, rot, idx, pos, slot, cache, attn_out=None, mask=None, far=None):
        # .forward: a decode step is ~100 small ops, the hook dispatch of Module.__call__ shows in its time
        x = x + self.attention.decode_one(self.attention_norm.forward(x), rot, idx, pos, slot, cache, attn_out,
                                          mask, far)
        return x + self.feed_forward.decode_one(self.ffn_norm.forward(x))


# ---- the model -------------------------------------------------------------------------------------
_SPLITS = {"attention.wqkv.weight": ("attention.wq.weight", "attention.wk.weight", "attention.wv.weight"),
           "feed_forward.w13.weight": ("feed_forward.w1.weight", "feed_forward.w3.weight")}


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
        # checkpoints (and old training states) hold the split Llama-named projections: fuse them on load
        self._register_load_state_dict_pre_hook(self._fuse_on_load)

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    # ---- weight layouts -------------------------------------------------------------------------
    @staticmethod
    def fuse_state_dict(state: dict, prefix: str = "") -> dict:
        """Split Llama-named projections (wq, wk, wv / w1, w3) -> this model's fused ones, in place."""
        for key in [k for k in state if k.startswith(prefix) and k.endswith("attention.wq.weight")]:
            base = key[: -len("attention.wq.weight")]
            for fused, parts in _SPLITS.items():
                if all(base + p in state for p in parts):
                    state[base + fused] = torch.cat([state.pop(base + p) for p in parts])
        return state

    def _fuse_on_load(self, state, prefix, *args, **kwargs):
        self.fuse_state_dict(state, prefix)

    def llama_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights under Llama names with split projections (checkpoints, GGUF, MLX). Tensors are
        views of the model's own (no copy); `output.weight` is present even when tied."""
        cfg, out = self.cfg, {}
        hs = cfg.head_dim
        qkv_split = [cfg.n_head * hs, cfg.n_kv_head * hs, cfg.n_kv_head * hs]
        for k, v in self.state_dict().items():
            for fused, parts in _SPLITS.items():
                if k.endswith(fused):
                    base = k[: -len(fused)]
                    sizes = qkv_split if fused.startswith("attention") else [cfg.ffn_hidden] * 2
                    out.update({base + p: t for p, t in zip(parts, v.split(sizes))})
                    break
            else:
                out[k] = v
        return out

    # ---- caches and positions -------------------------------------------------------------------
    def make_cache(self, n_slots: int, dtype=None, batch: int = 1) -> ModelCache:
        """Empty per-layer KV caches of n_slots rows for one sequence (the Session owns them)."""
        dtype = dtype or self.tok_embeddings.weight.dtype
        dev = self.tok_embeddings.weight.device
        return ModelCache(KVCache(batch, n_slots, self.cfg.n_kv_head, self.cfg.head_dim, dtype, dev)
                          for _ in self.layers)

    def rope_table(self, upto: int) -> torch.Tensor:
        """(P, hs/2, 2) cos/sin for positions < P (P >= upto), grown on demand."""
        if upto > self._rope_len:
            n = max(upto, 2 * self._rope_len, self.cfg.max_seq_len)
            self.rope = rope_cache(n, self.cfg.head_dim, self.cfg.rope_theta, self.tok_embeddings.weight.device)
            self._rope_len = n
        return self.rope

    # ---- forward --------------------------------------------------------------------------------
    def forward(self, idx, keys=None, input_pos=None, slots=None, cache: ModelCache | None = None,
                last_only: bool = False, key_pos=None):
        """idx: (B, T) token ids. keys: (B, T, K) plan rows (cache slots when a cache is given; token
        positions otherwise), a kernels.torch_sparse.UnionPlan of them, or None for the dense baseline.
        input_pos: (T,) ascending token positions (RoPE), default 0..T-1. slots: (T,) cache rows to write
        (default input_pos). last_only: project only the last position to the vocabulary (prefill).
        key_pos: (B, T, K) the plan rows as token positions, when keys hold slots and the RoPE clamp
        (cfg.rope_clamp) may apply; a UnionPlan carries its own (UnionPlan.pos)."""
        B, T = idx.shape
        if input_pos is None:
            input_pos = torch.arange(T, device=idx.device)
        rc = self.rope_table(int(input_pos[-1]) + 1)[input_pos]   # (T, hs/2, 2)
        attn_mask = None
        if cache is not None:
            slots = input_pos if slots is None else slots
            if keys is None:                                       # dense with a cache: mask by position
                S = int(input_pos[-1]) + 1                         # dense never evicts: slot == position
                attn_mask = torch.arange(S, device=idx.device)[None, :] <= input_pos[:, None]  # (T, S)
        if isinstance(keys, torch.Tensor):
            keys = keys.to(idx.device)
        elif isinstance(keys, tuple) and not self.cfg.plan.narrow_k:
            raise ValueError("a (wide, narrow) pair of plans is for a layer-dependent plan (narrow_k)")
        x = self.tok_embeddings(idx)                               # (B, T, d)
        lks = self.layer_keys(keys)
        clamps = self.layer_clamps(lks, key_pos, input_pos, cache is not None)
        for i, (layer, lk, cl) in enumerate(zip(self.layers, lks, clamps)):
            x = layer(x, rc, lk, slots, attn_mask, None if cache is None else cache[i], cl)
        if last_only:
            x = x[:, -1:]                                          # (B, 1, d)
        return self.output(self.norm(x))                           # (B, T or 1, vocab)

    def layer_keys(self, keys) -> list:
        """Each layer's plan: `keys` itself, or for a layer-dependent plan the wide rows in its wide layers and
        narrow_rows of them in the others. A backend with its own layout (UnionPlan) passes (wide, narrow)."""
        p = self.cfg.plan
        if not p.narrow_k or keys is None:
            return [keys] * len(self.layers)
        wide, narrow = keys if isinstance(keys, tuple) else (keys, narrow_rows(keys, p.narrow_k, p.sinks))
        return [wide if i in p.wide_layers else narrow for i in range(len(self.layers))]

    def layer_clamps(self, lks: list, key_pos, input_pos, cached: bool) -> list:
        """Each layer's RoPE clamp for Attention.forward, given its plan (layer_keys): (rope_delta (B, T, K), the
        RoPE table) for plan rows, (UnionPlan.clamp, the RoPE table) for a UnionPlan, or None where no planned key
        is more than cfg.rope_clamp tokens back (always inside the training length when rope_clamp >=
        max_seq_len: training never takes this path's rotations). Computed once per distinct plan."""
        w, n = self.cfg.rope_clamp, len(self.layers)
        if not w or lks[0] is None or int(input_pos[-1]) <= w:   # no key can be that far back
            return [None] * n
        if key_pos is not None:
            kps = self.layer_keys(key_pos)                         # narrowed like the rows
        elif cached and not isinstance(lks[0], UnionPlan):         # a UnionPlan carries its own positions
            raise ValueError("the RoPE clamp needs the plan rows as token positions (key_pos) when the rows "
                             "hold cache slots")
        else:
            kps = lks                                              # no cache: the rows are positions

        def one(k, kp):
            if isinstance(k, UnionPlan):
                if k.pos is None:
                    raise ValueError("the RoPE clamp needs the union's token positions (UnionPlan.from_rows "
                                     "positions=)")
                c = k.clamp(input_pos, w)
                return None if c is None else (c, self.rope)
            d = rope_deltas(input_pos, kp.to(k.device), w)
            return (d, self.rope) if bool(d.any()) else None

        done = {}
        for k, kp in zip(lks, kps):
            if id(k) not in done:
                done[id(k)] = one(k, kp)
        return [done[id(k)] for k in lks]

    def decode_one(self, token, idx: torch.Tensor | None, pos, slot, cache: ModelCache,
                   attn_out: list | None = None, mask: torch.Tensor | None = None,
                   key_pos: torch.Tensor | None = None) -> torch.Tensor:
        """One token of one sequence (the decode step, few large ops): logits (V,) float32. idx: (n,) the
        plan row's slots without padding, or None (dense). attn_out, if a list, receives per layer the
        head-averaged attention weights over idx (n,). With a mask the step has static shapes for a CUDA
        graph (asa_runtime/backends/cuda_graph.py): token, pos and slot are 0-d device tensors, idx is
        padded and mask (n,) marks its valid entries (dense: idx None, mask over every slot); call
        rope_table(ctx) before, so the table is not grown inside a capture. key_pos: idx's token positions
        (same shape; static: empty when no key is far, the graph without rotations), needed when the RoPE
        clamp (cfg.rope_clamp) applies."""
        if mask is None:
            rot = torch.view_as_complex(self.rope_table(pos + 1)[pos].contiguous())   # (hs/2,)
        else:
            # index_select: indexing by a 0-d tensor reads it back to the host, which a capture forbids
            rot = torch.view_as_complex(self.rope.index_select(0, pos.view(1))[0])    # (hs/2,)
        far = self._far(idx, pos, key_pos, mask is not None)      # after rope_table grew the table
        emb = self.tok_embeddings.weight
        x = emb[token] if mask is None else emb.index_select(0, token.view(1))[0]    # (d,)
        p, narrow = self.cfg.plan, None
        if p.narrow_k and idx is not None:                         # the narrow layers' part of the row
            if mask is None:
                keep = narrow_keep(len(idx), p.narrow_k, p.sinks, len(idx), idx.device)
                narrow = (idx[keep], None, keep, None if far is None else far[keep[: len(far)]])
            else:                                                  # static shapes: narrow the mask instead
                narrow = (idx, mask & narrow_keep(mask.sum(), p.narrow_k, p.sinks, len(mask), mask.device), None,
                          far)
        for i, (layer, c) in enumerate(zip(self.layers, cache)):
            if narrow is None or i in p.wide_layers:
                x = layer.decode_one(x, rot, idx, pos, slot, c, attn_out, mask, far)
                continue
            x = layer.decode_one(x, rot, narrow[0], pos, slot, c, attn_out, narrow[1], narrow[3])
            if attn_out is not None and narrow[2] is not None:     # weights over the whole row, 0 where unread
                w = attn_out[-1].new_zeros(len(idx))
                w[narrow[2]] = attn_out[-1]
                attn_out[-1] = w
        return _mv(self.output, self.norm.forward(x)).float()      # (V,)

    def _far(self, idx, pos, key_pos, static: bool):
        """decode_one's RoPE clamp: complex rotations (nf, hs/2) that move idx's keys more than w back to
        distance w, or None when off or when no key is that far (eager: found here; static: key_pos empty,
        the host found it, cuda_graph.any_far). Static: one per entry (1 for a near key). Eager: only for the
        far keys, which lead the row (rows ascend), so only they are turned."""
        w = self.cfg.rope_clamp
        if not w or idx is None:
            return None
        if not static and pos <= w:                                # no key can be that far back
            return None
        if key_pos is None:
            raise ValueError("the RoPE clamp needs the plan row's token positions (key_pos)")
        if static and key_pos.shape[0] == 0:
            return None
        delta = (pos - key_pos.to(idx.device) - w).clamp_min(0)   # (n,); padding is masked anyway
        if not static:
            far = delta > 0
            nf = int(far.sum())
            if nf == 0:
                return None
            if bool(far[:nf].all()):                               # the usual case: a prefix of the row
                delta = delta[:nf]
        return torch.view_as_complex(self.rope.index_select(0, delta.long()).contiguous())   # (nf or n, hs/2)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
