"""The torch backend: runs asa_runtime.model.Transformer on the caches it makes with `make_cache`.

It calls only the model's own forward (`Transformer.forward` for prefill chunks, `Transformer.decode_one`
for a decode step) and chooses the plan's layout per chunk: on the CPU a chunk whose plan rows select a
small union of slots is attended as one masked dense SDPA over that union (kernels.torch_sparse.UnionPlan),
otherwise the rows go to kernels.sparse_attention. It never changes the model's parameters. On CUDA a decode step replays a CUDA graph of the same step
(backends/cuda_graph.py); ASA_CUDA_GRAPH=0 or `cuda_graph = False` runs it eagerly, ASA_CUDA_GRAPH=compile
fuses the step with torch.compile first (slow first call).
"""
from __future__ import annotations

import os

import numpy as np
import torch

from kernels.torch_sparse import UnionPlan

from ..model import narrow_rows

from .cuda_graph import graphed_decoder


class TorchBackend:
    name = "torch"

    def __init__(self, model, device="cpu", kv_dtype=None, source=None, union_prefill: bool = True):
        self.model = model
        self.device = torch.device(device)
        self.vocab_size = model.cfg.vocab_size
        self.kv_dtype = kv_dtype
        self.union_prefill = union_prefill
        mode = os.environ.get("ASA_CUDA_GRAPH", "1")        # 0: eager steps; compile: torch.compile, then graph
        self.cuda_graph = self.device.type == "cuda" and mode != "0"
        self.compile_decode = mode == "compile"

    def make_cache(self, n_slots: int):
        return self.model.make_cache(n_slots, dtype=self.kv_dtype)

    def _tensor(self, a) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64)).to(self.device)

    @torch.inference_mode()
    def prefill(self, cache, ids, plan_rows, positions, slots, all_logits: bool = False,
                plan_pos=None) -> torch.Tensor:
        idx, pos, sl = self._tensor(ids)[None], self._tensor(positions), self._tensor(slots)   # (1, T), (T,)
        keys = key_pos = None
        if plan_rows is not None:
            rows = np.asarray(plan_rows)
            if plan_pos is not None:
                plan_pos = np.asarray(plan_pos)
            if self.union_prefill and UnionPlan.worth_it(rows):
                keys = UnionPlan.from_rows(rows, self.device, plan_pos)
                p = self.model.cfg.plan
                if p.narrow_k:                                  # a layer-dependent plan: a union per part
                    def narrow(a):
                        return None if a is None else narrow_rows(torch.from_numpy(a), p.narrow_k, p.sinks).numpy()
                    keys = (keys, UnionPlan.from_rows(narrow(rows), self.device, narrow(plan_pos)))
            else:
                keys = self._tensor(rows)[None]                                             # (1, T, K)
                key_pos = None if plan_pos is None else self._tensor(plan_pos)[None]
        logits = self.model(idx, keys, pos, sl, cache=cache, last_only=not all_logits,
                            key_pos=key_pos)[0].float()
        return logits if all_logits else logits[-1]

    @torch.inference_mode()
    def decode(self, cache, token: int, plan_row, pos: int, slot: int, attn_out=None, plan_pos=None) -> torch.Tensor:
        if self.cuda_graph and attn_out is None:
            g = graphed_decoder(self.model, cache, plan_row, self.compile_decode)
            return g(int(token), plan_row, int(pos), int(slot), plan_pos)
        idx = key_pos = None
        if plan_row is not None:
            n = int(np.count_nonzero(plan_row >= 0))              # padding (-1) is trailing
            idx = self._tensor(plan_row[:n])
            if plan_pos is not None:
                key_pos = self._tensor(plan_pos[:n])
        return self.model.decode_one(int(token), idx, int(pos), int(slot), cache, attn_out, key_pos=key_pos)
