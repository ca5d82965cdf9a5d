"""The torch backend: runs asa_runtime.model.Transformer with its static KV cache.

Decode is built for low Python overhead (gpt-fast): the token, position, slot and plan row live in
preallocated numpy buffers shared with torch tensors (torch.from_numpy), so a step allocates nothing of
cache size; everything runs under torch.inference_mode. The forward below walks the model's own modules
(embeddings, blocks, norm, head) like Transformer.forward, but projects only the last position to the
vocabulary during prefill (the head is ~30% of a prefill's FLOPs otherwise) and keeps the dense
baseline's slot index preallocated. Tests compare it with Transformer.forward recomputing everything.

Decode has a fast path for one token on one sequence: the same math on 1-D vectors with fewer, larger ops
(q/k/v and gate/up projections fused into one matmul each, RoPE once for q and k, the planned cache rows
fetched with index_select and attended with two small matmuls; the dense baseline attends a view of the
first pos+1 rows instead of masking the whole cache). The fused weights are the model's own storage: the
model's Linear layers are re-pointed at row slices of the fused tensors, so nothing is duplicated.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class TorchBackend:
    name = "torch"

    def __init__(self, model, device="cpu", kv_dtype=None, fast_decode: bool = True,
                 union_prefill: bool = True):
        self.model = model
        self.cfg = model.cfg
        self.device = torch.device(device)
        self.vocab_size = model.cfg.vocab_size
        self.kv_dtype = kv_dtype
        self.dense = model.cfg.plan.dense
        self.n_slots = 0
        self._cpu = self.device.type == "cpu"
        # Decode-step inputs: numpy buffers viewed by torch tensors (no per-step tensor construction on CPU).
        self._idx_np = np.zeros((1, 1), dtype=np.int64)
        self._pos_np = np.zeros(1, dtype=np.int64)
        self._slot_np = np.zeros(1, dtype=np.int64)
        self._row_np = np.full((1, 1, model.cfg.plan.k), -1, dtype=np.int64)
        self._idx, self._pos, self._slot, self._row = (
            torch.from_numpy(a) for a in (self._idx_np, self._pos_np, self._slot_np, self._row_np))
        self._slot_ar: torch.Tensor | None = None    # (S,) arange for the dense baseline's mask
        self.fast_decode = fast_decode and self._fuse_weights()
        self.union_prefill = union_prefill

    # ---- fused weights for the fast decode path --------------------------------------------------
    @torch.no_grad()
    def _fuse_weights(self) -> bool:
        from ..quantize import Int8Linear

        def fuse(mods):
            if all(type(m) is nn.Linear and m.bias is None for m in mods):
                W = torch.cat([m.weight.detach() for m in mods])                  # (sum out, in)
                off = 0
                for m in mods:
                    n = m.weight.shape[0]
                    m.weight = nn.Parameter(W[off: off + n], requires_grad=False)  # a view: no copy kept
                    off += n
                # 1-D input (decode): mv is faster than linear for bf16
                return lambda x: torch.mv(W, x) if x.dim() == 1 else F.linear(x, W)
            if all(type(m) is Int8Linear and m.bias is None for m in mods):
                fused = Int8Linear.from_parts(torch.cat([m.weight_int8 for m in mods]),
                                              torch.cat([m.scales for m in mods]))
                off = 0
                for m in mods:
                    n = m.out_features
                    m.weight_int8, m.scales = fused.weight_int8[off: off + n], fused.scales[off: off + n]
                    off += n
                return fused
            return None

        def matvec(m):
            if type(m) is nn.Linear and m.bias is None:
                return lambda x: torch.mv(m.weight, x)
            return m

        self._qkv, self._w13, self._wo, self._w2 = [], [], [], []
        for layer in self.model.layers:
            a, f = layer.attention, layer.feed_forward
            qkv, w13 = fuse([a.wq, a.wk, a.wv]), fuse([f.w1, f.w3])
            if qkv is None or w13 is None:
                return False
            self._qkv.append(qkv)
            self._w13.append(w13)
            self._wo.append(matvec(a.wo))
            self._w2.append(matvec(f.w2))
        self._head = matvec(self.model.output)
        return True

    def _norm(self, norm, x):
        # RMSNorm as one fused op; float32 models match the module exactly, others round like it does
        if x.dtype == torch.float32:
            return F.rms_norm(x, norm.weight.shape, norm.weight, norm.eps)
        return F.rms_norm(x.float(), norm.weight.shape, None, norm.eps).to(x.dtype) * norm.weight

    def _decode_fast(self, token: int, n_keys: int, pos: int, slot: int) -> torch.Tensor:
        m, cfg = self.model, self.cfg
        H, Hkv, hs = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        nqk, ffn = (cfg.n_head + cfg.n_kv_head) * cfg.head_dim, cfg.ffn_hidden
        rc = m._rope(pos + 1)[pos]                                      # (hs/2, 2)
        rot_c = torch.view_as_complex(rc.contiguous())                  # (hs/2,) cos + i sin
        idx = None if n_keys < 0 else self._row[0, 0, :n_keys]          # (n,) slots, padding stripped
        x = m.tok_embeddings.weight[token]                              # (d,)
        dt = x.dtype
        for li, layer in enumerate(m.layers):
            cache = layer.attention.kv_cache
            qkv = self._qkv[li](self._norm(layer.attention_norm, x))    # ((H + 2 Hkv) hs,)
            # RoPE on interleaved pairs = complex multiplication by cos + i sin (Llama / GGUF convention)
            qk = torch.view_as_complex(qkv[:nqk].float().view(H + Hkv, hs // 2, 2))
            rot = torch.view_as_real(qk * rot_c).view(H + Hkv, hs).to(dt)       # (H + Hkv, hs)
            cache.k[0, :, slot] = rot[H:]                               # (Hkv, hs)
            cache.v[0, :, slot] = qkv[nqk:].view(Hkv, hs)
            if idx is None:                                             # dense: slots 0..pos are positions
                kg, vg = cache.k[:, :, : pos + 1], cache.v[:, :, : pos + 1]     # (1, Hkv, n, hs) views
            else:
                kg, vg = cache.k.index_select(2, idx), cache.v.index_select(2, idx)  # (1, Hkv, n, hs)
            q = rot[:H].float().view(1, H, 1, hs)                       # (1, H, 1, hs)
            y = F.scaled_dot_product_attention(q, kg.float(), vg.float(), enable_gqa=H != Hkv)  # (1,H,1,hs)
            x = x + self._wo[li](y.view(H * hs).to(dt))
            gu = self._w13[li](self._norm(layer.ffn_norm, x))           # (2 ffn,)
            x = x + self._w2[li](F.silu(gu[:ffn]) * gu[ffn:])
        return self._head(self._norm(m.norm, x)).float()                # (V,)

    # ---- cache ----------------------------------------------------------------------------------
    @torch.inference_mode()
    def reset(self, n_slots: int) -> None:
        # Stale rows need no zeroing: every row a step reads was written earlier in the same sequence.
        first = self.model.layers[0].attention.kv_cache
        dtype = self.kv_dtype or self.model.tok_embeddings.weight.dtype
        if first is None or first.k.shape[2] != n_slots or first.k.dtype != dtype:
            self.model.setup_caches(1, n_slots, dtype=dtype)
        if self._slot_ar is None or len(self._slot_ar) != n_slots:
            self._slot_ar = torch.arange(n_slots, device=self.device)
        self.n_slots = n_slots

    def _caches(self):
        return [layer.attention.kv_cache for layer in self.model.layers]

    @torch.inference_mode()
    def move_slots(self, src: np.ndarray, dst: np.ndarray) -> None:
        s = torch.from_numpy(np.ascontiguousarray(src, dtype=np.int64)).to(self.device)
        d = torch.from_numpy(np.ascontiguousarray(dst, dtype=np.int64)).to(self.device)
        for c in self._caches():
            c.k.index_copy_(2, d, c.k.index_select(2, s))   # index_select copies first: overlap is safe
            c.v.index_copy_(2, d, c.v.index_select(2, s))

    @torch.inference_mode()
    def read_cache(self, n: int) -> list[torch.Tensor]:
        out = []
        for c in self._caches():
            out += [c.k[0, :, :n].to("cpu").clone(), c.v[0, :, :n].to("cpu").clone()]   # (Hkv, n, hs)
        return out

    @torch.inference_mode()
    def write_cache(self, tensors: list[torch.Tensor]) -> None:
        caches = self._caches()
        if len(tensors) != 2 * len(caches):
            raise ValueError(f"expected {2 * len(caches)} cache tensors, got {len(tensors)}")
        for i, c in enumerate(caches):
            k, v = tensors[2 * i], tensors[2 * i + 1]
            if tuple(k.shape[0:1] + k.shape[2:]) != (c.k.shape[1], c.k.shape[3]) or k.shape[1] > c.k.shape[2]:
                raise ValueError(f"cache tensor of shape {tuple(k.shape)} does not fit cache "
                                 f"{tuple(c.k.shape)}")
            n = k.shape[1]
            c.k[0, :, :n].copy_(k)
            c.v[0, :, :n].copy_(v)

    def cache_bytes(self) -> int:
        return sum(2 * c.k.numel() * c.k.element_size() for c in self._caches() if c is not None)

    # ---- forward --------------------------------------------------------------------------------
    def _forward(self, idx, keys, input_pos, slots, last_only: bool) -> torch.Tensor:
        # Transformer.forward with a cache, minus the full-width head when only the last logits are needed.
        m = self.model
        rc = m._rope(int(input_pos[-1]) + 1)[input_pos]             # positions are ascending: last is max
        attn_mask = None
        if keys is None:                                            # dense: slot == position, mask by it
            attn_mask = self._slot_ar[None, :] <= input_pos[:, None]  # (T, S)
        x = m.tok_embeddings(idx)                                   # (1, T, d)
        for layer in m.layers:
            x = layer(x, rc, keys, slots, attn_mask)
        if last_only:
            x = x[:, -1:]                                           # (1, 1, d)
        return m.output(m.norm(x))[0].float()                       # (T or 1, V)

    def _prefill_union(self, idx, rows: np.ndarray, input_pos, slots, last_only: bool):
        """Prefill a chunk attending to the union U of the cache slots its plan rows select: one
        (T, |U|) masked SDPA per layer instead of T*K gathers. Equal to the gather path (the softmax runs
        over exactly the planned keys; masked entries contribute exact zeros), much faster on CPU because
        U is mostly the chunk itself plus a few hundred earlier keys (sinks, sentence, antecedents)."""
        m, cfg = self.model, self.cfg
        T = rows.shape[0]
        H, Hkv, hs = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        from ..model import apply_rope

        valid = rows >= 0
        U = np.unique(rows[valid])                                       # sorted slots
        loc = np.searchsorted(U, np.where(valid, rows, U[0]))            # (T, K) index into U
        mask_np = np.zeros((T, len(U)), dtype=bool)
        mask_np[np.nonzero(valid)[0], loc[valid]] = True
        mask = torch.from_numpy(mask_np).to(self.device)                 # (T, |U|)
        u = torch.from_numpy(U.astype(np.int64)).to(self.device)
        rc = m._rope(int(input_pos[-1]) + 1)[input_pos]                  # (T, hs/2, 2)
        x = m.tok_embeddings(idx)                                        # (1, T, d)
        for li, layer in enumerate(m.layers):
            a = layer.attention
            h = layer.attention_norm(x)
            if self.fast_decode:
                qkv = self._qkv[li](h)                                   # (1, T, (H + 2 Hkv) hs)
                q, k, v = qkv.split([H * hs, Hkv * hs, Hkv * hs], -1)
            else:
                q, k, v = a.wq(h), a.wk(h), a.wv(h)
            q = apply_rope(q.view(1, T, H, hs).transpose(1, 2), rc)      # (1, H, T, hs)
            k = apply_rope(k.view(1, T, Hkv, hs).transpose(1, 2), rc)    # (1, Hkv, T, hs)
            v = v.view(1, T, Hkv, hs).transpose(1, 2)
            ck, cv = a.kv_cache.update(slots, k, v)                      # (1, Hkv, S, hs)
            ku, vu = ck.index_select(2, u), cv.index_select(2, u)        # (1, Hkv, |U|, hs)
            y = F.scaled_dot_product_attention(q, ku.to(q.dtype), vu.to(q.dtype), attn_mask=mask,
                                               enable_gqa=H != Hkv)      # (1, H, T, hs)
            x = x + a.wo(y.transpose(1, 2).reshape(1, T, H * hs))
            x = x + layer.feed_forward(layer.ffn_norm(x))
        if last_only:
            x = x[:, -1:]
        return m.output(m.norm(x))[0].float()

    @torch.inference_mode()
    def prefill(self, ids, plan_rows, positions, slots, all_logits: bool = False) -> torch.Tensor:
        dev = self.device
        idx = torch.from_numpy(np.asarray(ids, dtype=np.int64))[None].to(dev)            # (1, T)
        pos = torch.from_numpy(np.asarray(positions, dtype=np.int64)).to(dev)            # (T,)
        sl = torch.from_numpy(np.asarray(slots, dtype=np.int64)).to(dev)                 # (T,)
        if plan_rows is not None and self.union_prefill:
            rows = np.asarray(plan_rows)
            n_union = len(np.unique(rows[rows >= 0]))
            if n_union <= 2 * len(rows) + 1024:          # else (e.g. mode random) the gathers are cheaper
                logits = self._prefill_union(idx, rows, pos, sl, last_only=not all_logits)
                return logits if all_logits else logits[-1]
        keys = None
        if plan_rows is not None:
            keys = torch.from_numpy(np.asarray(plan_rows, dtype=np.int64))[None].to(dev)  # (1, T, K)
        logits = self._forward(idx, keys, pos, sl, last_only=not all_logits)
        return logits if all_logits else logits[-1]

    @torch.inference_mode()
    def decode(self, token: int, plan_row, pos: int, slot: int) -> torch.Tensor:
        self._idx_np[0, 0] = token
        self._pos_np[0] = pos
        self._slot_np[0] = slot
        if self.fast_decode and self._cpu and (plan_row is None or len(plan_row) == self._row_np.shape[2]):
            n_keys = -1
            if plan_row is not None:
                self._row_np[0, 0] = plan_row
                n_keys = int(np.count_nonzero(plan_row >= 0))          # padding (-1) is trailing
            return self._decode_fast(int(token), n_keys, int(pos), int(slot))
        keys = None
        if plan_row is not None:
            if len(plan_row) == self._row_np.shape[2]:
                self._row_np[0, 0] = plan_row
                keys = self._row
            else:
                keys = torch.from_numpy(np.asarray(plan_row, dtype=np.int64)).view(1, 1, -1)
        if self._cpu:
            return self._forward(self._idx, keys, self._pos, self._slot, last_only=True)[0]
        dev = self.device
        keys = None if keys is None else keys.to(dev)
        return self._forward(self._idx.to(dev), keys, self._pos.to(dev), self._slot.to(dev), True)[0]
