"""The ASA model in MLX: one file laid out like mlx-lm's models/llama.py (ModelArgs, Attention, MLP,
TransformerBlock, LlamaModel, Model with `make_cache()`), whose attention is kernels/mlx_sparse.py's sparse
attention for prefill and decode, and masked SDPA for the dense baseline (plan mode "none").

It differs from mlx-lm's llama in one place on purpose, the cache: mlx-lm grows its KVCache by
concatenation, but the engine's slot map (asa_runtime/kv_policy.py) needs rows written by index (plan
rows hold cache SLOTS; eviction moves rows). So each layer preallocates k/v (1, Hkv, S, hs) and writes
`k[:, :, slots, :] = new`; MLX turns that into a scatter that reuses the buffer (O(T) per step, not O(S):
bench/mlx/results). RoPE rotates interleaved pairs (x[2i], x[2i+1]) like the torch model: that is
mx.fast.rope(traditional=True).

RoPE clamp (ModelArgs.rope_clamp, 0 = off; asa_runtime.config.ModelConfig.rope_clamp): a planned key more than
w = rope_clamp tokens behind its query is scored as if exactly w back. The cache keeps keys rotated at their
true positions; the sparse attention rotates each gathered key forward by max(0, q_pos - key_pos - w)
(kernels/mlx_sparse.py), from the plan rows as token positions (`key_pos`, beside the slot rows `keys`).

Weights use mlx-lm's (Hugging Face) names: model.embed_tokens, model.layers.{i}.self_attn.{q,k,v,o}_proj,
model.layers.{i}.mlp.{gate,up,down}_proj, input_layernorm, post_attention_layernorm, model.norm, lm_head
(absent when tied); `from_llama_state` maps the torch model's Llama (Meta) names to them.

Runs on mx.default_device(): tested on mlx[cpu] (Linux); Metal (Apple silicon) is untested here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from kernels.mlx_sparse import rope_deltas, rope_table, rotate, sparse_attention_mlx, sparse_decode_mlx


@dataclass
class ModelArgs:
    model_type: str = "llama"
    hidden_size: int = 384
    num_hidden_layers: int = 8
    intermediate_size: int = 1024
    num_attention_heads: int = 6
    num_key_value_heads: int = 6
    rms_norm_eps: float = 1e-5
    vocab_size: int = 16384
    rope_theta: float = 10000.0
    rope_traditional: bool = True          # interleaved pairs, as the torch model (and GGUF) rotate
    tie_word_embeddings: bool = True
    max_position_embeddings: int = 2048
    rope_clamp: int = 0                    # the RoPE clamp (0 = off): far planned keys scored at distance w

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_model_config(cls, cfg) -> "ModelArgs":
        """From asa_runtime.config.ModelConfig."""
        return cls(hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layer, intermediate_size=cfg.ffn_hidden,
                   num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_kv_head, rms_norm_eps=cfg.norm_eps,
                   vocab_size=cfg.vocab_size, rope_theta=cfg.rope_theta, tie_word_embeddings=cfg.tie_embeddings,
                   max_position_embeddings=cfg.max_seq_len, rope_clamp=int(getattr(cfg, "rope_clamp", 0) or 0))

    @classmethod
    def from_dict(cls, d: dict) -> "ModelArgs":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        if not self.rope_clamp:
            del d["rope_clamp"]             # off: an export's config.json is as before (as ModelConfig.to_dict)
        return d


# ---- KV cache ----------------------------------------------------------------------------------------
class KVCache:
    """One layer's preallocated cache (1, Hkv, S, hs), written by slot index."""

    def __init__(self, n_kv_heads: int, head_dim: int, n_slots: int, dtype=mx.float32):
        # stale rows need no zeroing: every row a step reads was written earlier in the same sequence
        self.k = mx.zeros((1, n_kv_heads, n_slots, head_dim), dtype=dtype)   # (1, Hkv, S, hs)
        self.v = mx.zeros((1, n_kv_heads, n_slots, head_dim), dtype=dtype)

    def update(self, slots: mx.array, k: mx.array, v: mx.array):
        # slots (T,) int32; k, v (1, Hkv, T, hs). A scatter into the held buffer (donated: no copy of S rows)
        self.k[:, :, slots, :] = k.astype(self.k.dtype)
        self.v[:, :, slots, :] = v.astype(self.v.dtype)
        return self.k, self.v


# ---- layers ------------------------------------------------------------------------------------------
def _rope(x: mx.array, positions, dims: int, base: float) -> mx.array:
    """x: (B, H, T, hs). positions: an int offset (positions offset..offset+T-1), or a (T,) array of any
    ascending positions (slower path: explicit cos/sin on interleaved pairs, as asa_runtime.model)."""
    if isinstance(positions, int):
        return mx.fast.rope(x, dims, traditional=True, base=base, scale=1.0, offset=positions)
    freqs = 1.0 / (base ** (mx.arange(0, dims, 2).astype(mx.float32) / dims))       # (hs/2,)
    ang = positions.astype(mx.float32)[:, None] * freqs[None]                       # (T, hs/2)
    cos, sin = mx.cos(ang), mx.sin(ang)
    xs = x.astype(mx.float32).reshape(*x.shape[:-1], dims // 2, 2)                  # (B, H, T, hs/2, 2)
    a, b = xs[..., 0], xs[..., 1]
    out = mx.stack([a * cos - b * sin, b * cos + a * sin], axis=-1)
    return out.reshape(x.shape).astype(x.dtype)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        dim = args.hidden_size
        self.n_heads = args.num_attention_heads
        self.n_kv_heads = args.num_key_value_heads
        self.head_dim = hd = args.head_dim
        self.scale = hd ** -0.5
        self.rope_theta = args.rope_theta
        self.q_proj = nn.Linear(dim, self.n_heads * hd, bias=False)
        self.k_proj = nn.Linear(dim, self.n_kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(dim, self.n_kv_heads * hd, bias=False)
        self.o_proj = nn.Linear(self.n_heads * hd, dim, bias=False)

    def __call__(self, x, positions, cache: KVCache | None = None, keys=None, slots=None, mask=None,
                 n_ctx: int | None = None, attn_out: list | None = None, rope_delta=None, rope=None):
        """x: (B, T, d). positions: int offset or (T,) array (RoPE). With a cache: K/V are written at
        `slots` (T,); keys (B, T, K) plan rows of slots -> sparse prefill, (n,) one row's valid slots ->
        sparse decode, None -> dense over slots 0..n_ctx-1 with `mask` (T, n_ctx) bool (None: all).
        rope_delta (keys' shape) with rope (P, hs/2, 2): the RoPE clamp's rotations of the gathered keys."""
        B, T, _ = x.shape
        H, Hkv, hd = self.n_heads, self.n_kv_heads, self.head_dim
        q = self.q_proj(x).reshape(B, T, H, hd).transpose(0, 2, 1, 3)          # (B, H, T, hs)
        k = self.k_proj(x).reshape(B, T, Hkv, hd).transpose(0, 2, 1, 3)        # (B, Hkv, T, hs)
        v = self.v_proj(x).reshape(B, T, Hkv, hd).transpose(0, 2, 1, 3)        # (B, Hkv, T, hs)
        q, k = _rope(q, positions, hd, self.rope_theta), _rope(k, positions, hd, self.rope_theta)
        if cache is None:                                                      # no cache: dense causal
            y = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale, mask="causal")
        else:
            kc, vc = cache.update(slots, k, v)                                 # (1, Hkv, S, hs)
            if keys is None:                                                   # dense: slot == position
                kk, vv = kc[:, :, :n_ctx].astype(q.dtype), vc[:, :, :n_ctx].astype(q.dtype)
                y = mx.fast.scaled_dot_product_attention(q, kk, vv, scale=self.scale, mask=mask)
                if attn_out is not None:
                    attn_out.append(self._weights(q, kk))
            elif keys.ndim == 1:                                               # decode: one row
                y = sparse_decode_mlx(q, kc, vc, keys, scale=self.scale, rope_delta=rope_delta,
                                      rope=rope)                               # (B, H, 1, hs)
                if attn_out is not None:
                    kg = mx.take(kc, keys, axis=2)
                    if rope_delta is not None:
                        kg = rotate(kg, rope_delta, rope)
                    attn_out.append(self._weights(q, kg.astype(q.dtype)))
            else:
                y = sparse_attention_mlx(q, kc, vc, keys, scale=self.scale, rope_delta=rope_delta,
                                         rope=rope)                            # (B, H, T, hs)
        return self.o_proj(y.transpose(0, 2, 1, 3).reshape(B, T, H * hd))

    def _weights(self, q, kg):
        """Head-averaged softmax weights of one query over the gathered keys (the bonds view): (n,)."""
        Hkv, hd = self.n_kv_heads, self.head_dim
        g = self.n_heads // Hkv
        qg = q[0, :, 0].reshape(Hkv, g, hd).astype(mx.float32)                 # (Hkv, g, hs)
        s = (qg @ kg[0].astype(mx.float32).transpose(0, 2, 1)) * self.scale    # (Hkv, g, n)
        return mx.softmax(s, axis=-1).reshape(Hkv * g, -1).mean(0)             # (n,)


class MLP(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.gate_proj = nn.Linear(args.hidden_size, args.intermediate_size, bias=False)
        self.down_proj = nn.Linear(args.intermediate_size, args.hidden_size, bias=False)
        self.up_proj = nn.Linear(args.hidden_size, args.intermediate_size, bias=False)

    def __call__(self, x) -> mx.array:
        return self.down_proj(nn.silu(self.gate_proj(x)) * self.up_proj(x))


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.self_attn = Attention(args)
        self.mlp = MLP(args)
        self.input_layernorm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)     # mx.fast.rms_norm
        self.post_attention_layernorm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)

    def __call__(self, x, positions, cache=None, **attn):
        h = x + self.self_attn(self.input_layernorm(x), positions, cache, **attn)
        return h + self.mlp(self.post_attention_layernorm(h))


class LlamaModel(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = [TransformerBlock(args) for _ in range(args.num_hidden_layers)]
        self.norm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)

    def __call__(self, inputs, positions, cache=None, last_only: bool = False, **attn):
        h = self.embed_tokens(inputs)                                          # (B, T, d)
        keys = attn.pop("keys", None)
        deltas = attn.pop("rope_delta", None)
        for i, layer in enumerate(self.layers):                                # a list: one plan per layer
            lk = keys[i] if isinstance(keys, list) else keys
            ld = deltas[i] if isinstance(deltas, list) else deltas
            h = layer(h, positions, None if cache is None else cache[i], keys=lk, rope_delta=ld, **attn)
        if last_only:
            h = h[:, -1:]                                                      # (B, 1, d)
        return self.norm(h)


class _RopeTable:
    """The RoPE clamp's cos/sin table (rope_table), grown on demand and shared by the sessions of a model. A
    plain object, not an mx.array attribute: nn.Module would take that for a parameter."""

    def __init__(self, dims: int, base: float):
        self.dims, self.base, self.table = dims, base, None

    def get(self, n: int) -> mx.array:
        t = self.table
        if t is None or t.shape[0] < n:
            t = rope_table(max(1024, 1 << (n - 1).bit_length()), self.dims, self.base)
            mx.eval(t)
            self.table = t                                     # one assignment: a concurrent reader sees either
        return t


class Model(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.model_type = args.model_type
        self.model = LlamaModel(args)
        if not args.tie_word_embeddings:
            self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)
        self._rope_table = _RopeTable(args.head_dim, args.rope_theta)

    def __call__(self, inputs, positions=0, cache=None, keys=None, slots=None, last_only: bool = False,
                 attn_out: list | None = None, key_pos=None):
        """inputs: (B, T) ids. positions: int offset or (T,) array. With a cache, `slots` (T,) are the rows
        written and `keys` the plan rows (slots): (B, T, K) for a chunk, (n,) for one decode row (a list of
        them, one per layer, for a layer-dependent plan), None for the dense baseline (it never evicts: slot == position). Returns logits (B, T or 1, V).
        key_pos: keys as token positions (same shapes, a list where keys is one), needed for the RoPE clamp
        (args.rope_clamp) once a planned key can be more than rope_clamp tokens back."""
        T = inputs.shape[1]
        attn: dict = {"attn_out": attn_out}
        if cache is not None:
            if slots is None:
                slots = mx.arange(T) + positions if isinstance(positions, int) else positions
            attn.update(keys=keys, slots=slots.astype(mx.int32))
            if keys is not None and self.args.rope_clamp:
                attn.update(self._clamp(keys, key_pos, positions, T))
            if keys is None:
                pos = mx.arange(T) + positions if isinstance(positions, int) else positions
                n_ctx = (positions + T) if isinstance(positions, int) else int(positions[-1].item()) + 1
                attn["n_ctx"] = n_ctx
                if T > 1:                                                      # (T, n_ctx): slot <= position
                    attn["mask"] = mx.arange(n_ctx)[None, :] <= pos[:, None]
        out = self.model(inputs, positions, cache, last_only=last_only, **attn)
        if self.args.tie_word_embeddings:
            return self.model.embed_tokens.as_linear(out)
        return self.lm_head(out)

    def _clamp(self, keys, key_pos, positions, T: int) -> dict:
        """The RoPE clamp's attention arguments: rope_delta per layer (in keys' layout) and the table, or {}
        when no query is more than rope_clamp past position 0 (no key can be that far back)."""
        w = self.args.rope_clamp
        last = positions + T - 1 if isinstance(positions, int) else int(positions[-1].item())
        if last <= w:
            return {}
        if key_pos is None:
            raise ValueError("the RoPE clamp (rope_clamp) needs the plan rows as token positions (key_pos) when "
                             "the rows hold cache slots")
        q_pos = mx.arange(positions, positions + T) if isinstance(positions, int) else positions   # (T,)

        def deltas(kp):
            if kp.ndim == 1:                                   # decode: one row of the last query
                return rope_deltas(q_pos[-1:], kp[None], w)[0]  # (n,)
            return rope_deltas(q_pos, kp, w)                   # (B, T, K)

        if isinstance(keys, list) != isinstance(key_pos, list):
            raise ValueError("key_pos must have keys' layout (a list per layer where keys is one)")
        if isinstance(key_pos, list):
            done: dict = {}                                    # layers sharing a row share its deltas
            for kp in key_pos:
                if id(kp) not in done:
                    done[id(kp)] = deltas(kp)
            d = [done[id(kp)] for kp in key_pos]
        else:
            d = deltas(key_pos)
        return {"rope_delta": d, "rope": self._rope_table.get(last - w + 1)}   # deltas <= last - w

    @property
    def layers(self):
        return self.model.layers

    def make_cache(self, n_slots: int, dtype=None) -> list[KVCache]:
        """Per-layer preallocated caches of n_slots rows (the engine's Session owns them)."""
        a = self.args
        dtype = dtype or self.model.embed_tokens.weight.dtype
        return [KVCache(a.num_key_value_heads, a.head_dim, n_slots, dtype) for _ in self.layers]

    def sanitize(self, weights: dict) -> dict:
        if self.args.tie_word_embeddings:
            weights.pop("lm_head.weight", None)
        return weights


# ---- weights -----------------------------------------------------------------------------------------
_LAYER_NAMES = {"attention_norm": "input_layernorm", "attention.wq": "self_attn.q_proj",
                "attention.wk": "self_attn.k_proj", "attention.wv": "self_attn.v_proj",
                "attention.wo": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
                "feed_forward.w1": "mlp.gate_proj", "feed_forward.w3": "mlp.up_proj",
                "feed_forward.w2": "mlp.down_proj"}


def mlx_name(llama_name: str) -> str:
    """A Llama (Meta) tensor name of the torch model -> the name this MLX model uses."""
    if llama_name == "tok_embeddings.weight":
        return "model.embed_tokens.weight"
    if llama_name == "norm.weight":
        return "model.norm.weight"
    if llama_name == "output.weight":
        return "lm_head.weight"
    parts = llama_name.split(".")
    if parts[0] == "layers" and len(parts) >= 4 and parts[-1] == "weight":
        inner = ".".join(parts[2:-1])
        if inner in _LAYER_NAMES:
            return f"model.layers.{parts[1]}.{_LAYER_NAMES[inner]}.weight"
    raise KeyError(f"no MLX name for tensor {llama_name}")


def to_mx(t, dtype=None) -> mx.array:
    """A torch tensor -> mx.array (bfloat16 goes through float32: numpy has no bfloat16)."""
    import torch

    t = t.detach().to("cpu")
    src = t.dtype
    a = mx.array(t.float().numpy() if src == torch.bfloat16 else t.numpy())
    if src == torch.bfloat16 and dtype is None:
        dtype = mx.bfloat16
    return a.astype(dtype) if dtype is not None else a


def to_numpy(a: mx.array) -> np.ndarray:
    """mx.array -> numpy (bfloat16 as float32)."""
    return np.array(a.astype(mx.float32) if a.dtype == mx.bfloat16 else a)


def from_llama_state(state: dict, tie: bool, dtype=None) -> dict[str, mx.array]:
    """Torch Llama-named weights (model.llama_state_dict()) -> {MLX name: mx.array} (dtype: an mx dtype)."""
    out = {}
    for k, v in state.items():
        if tie and k == "output.weight":
            continue                                   # tied: the embedding is the output head
        out[mlx_name(k)] = to_mx(v, dtype)
    return out


def build(args: ModelArgs, weights: dict[str, mx.array]) -> Model:
    """A Model with exactly these weights (ValueError naming the first missing/extra/misshapen tensor)."""
    m = Model(args)
    want = dict(nn.utils.tree_flatten(m.parameters()))
    weights = m.sanitize(dict(weights))
    missing, extra = sorted(want.keys() - weights.keys()), sorted(weights.keys() - want.keys())
    if missing:
        raise ValueError(f"missing tensor {missing[0]} ({len(missing)} missing)")
    if extra:
        raise ValueError(f"unexpected tensor {extra[0]} ({len(extra)} extra)")
    for k, v in want.items():
        if tuple(weights[k].shape) != tuple(v.shape):
            raise ValueError(f"tensor {k} has shape {tuple(weights[k].shape)}, config implies {tuple(v.shape)}")
    m.load_weights(list(weights.items()))
    mx.eval(m.parameters())
    return m


def n_params(m: Model) -> int:
    return sum(math.prod(v.shape) for _, v in nn.utils.tree_flatten(m.parameters()))
