"""Decode steps replayed from a CUDA graph (gpt-fast's trick for launch-bound decoding).

A decode step of asa-small is a few hundred small kernels; on a GPU their launches, not the arithmetic, set
the speed. A CUDA graph records the step once and replays it with one launch. A graph needs static shapes and
addresses, so the step runs `Transformer.decode_one` in its static form (the same forward: see its
docstring): the token, position, slot and plan row travel in one int64 device buffer, the plan row padded to
the plan width K with slot 0 and masked, the dense baseline masked over every cache slot. With a RoPE clamp
(ModelConfig.rope_clamp) the row's token positions follow it in the buffer; while no planned key is more
than w back (short contexts) the step replays a graph without the clamp's rotations, after that one that
turns the whole row (static shapes). The host, which holds the row, picks (any_far). Graphs that turned only
a prefix of the row holding every far key were measured slower on an H100 (device_log session 14).

One graph per (cache, plan width, clamp on or not): the cache's tensors are baked into it. Compaction
(`move_slots`) copies in place, so a graph stays valid for its cache's life. Not used when the attention weights are asked for
(`attn_out`: the bonds view), which runs the eager step.
"""
from __future__ import annotations

import numpy as np
import torch


class GraphedDecode:
    def __init__(self, model, cache, width: int | None, compile: bool = False):
        self.model, self.cache, self.width = model, cache, width
        # compile: inductor fuses the step's few hundred small kernels before the graph records them
        self.fn = torch.compile(self._step, dynamic=False) if compile else self._step
        dev = cache[0].k.device
        self.clamp = bool(width and model.cfg.rope_clamp)
        n = 4 + (width or 0) * (2 if self.clamp else 1)         # token, pos, slot, n valid, row..., positions...
        self.host = torch.zeros(n, dtype=torch.int64).pin_memory()
        self.buf = torch.zeros(n, dtype=torch.int64, device=dev)
        self.ar = torch.arange(width or cache.n_slots, device=dev)
        self.graphs: dict = {}                                  # turn far keys? -> (graph, its output)
        self.rope_ptr = None                                    # the RoPE table the graphs read

    def _step(self, turn: bool = False) -> torch.Tensor:
        b = self.buf
        key_pos = None
        if self.width:                                          # sparse: the padded plan row, masked
            idx, mask = b[4: 4 + self.width], self.ar < b[3]
            if self.clamp:
                # empty: no key is far, the step without the clamp's rotations
                key_pos = b[4 + self.width:] if turn else b[:0]
        else:                                                   # dense: every slot up to the position
            idx, mask = None, self.ar <= b[1]
        return self.model.decode_one(b[0], idx, b[1], b[2], self.cache, mask=mask, key_pos=key_pos)

    def _capture(self, turn: bool):
        # warm-up on a side stream first (cuBLAS / SDPA pick their kernels); it runs the real step, so its
        # cache write is the one the replay repeats
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(2):
                self.fn(turn)
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self.fn(turn)
        return graph, out

    def __call__(self, token: int, plan_row: np.ndarray | None, pos: int, slot: int,
                 plan_pos: np.ndarray | None = None) -> torch.Tensor:
        h = self.host.numpy()
        h[0], h[1], h[2] = token, pos, slot
        turn = False
        if self.width:
            n = int(np.count_nonzero(plan_row >= 0))            # padding (-1) is trailing
            h[3] = n
            h[4: 4 + n] = plan_row[:n]
            h[4 + n: 4 + self.width] = 0                        # a valid slot; masked out
            if self.clamp:
                if plan_pos is None:
                    raise ValueError("the RoPE clamp needs the plan row's token positions (plan_pos)")
                h[4 + self.width: 4 + self.width + n] = plan_pos[:n]
                h[4 + self.width + n:] = pos                    # padding: distance 0, masked out
                turn = any_far(plan_pos[:n], pos, self.model.cfg.rope_clamp)
        self.buf.copy_(self.host)                               # synchronous: the host buffer is reused
        rope = self.model.rope_table(pos + 1)                   # grown outside the capture, if at all
        if rope.data_ptr() != self.rope_ptr:                    # (re)grown, here or by another session
            self.rope_ptr = rope.data_ptr()
            self.graphs.clear()
        g = self.graphs.get(turn)
        if g is None:
            g = self.graphs[turn] = self._capture(turn)
        g[0].replay()
        return g[1].clone()                                     # the next replay overwrites the output


def any_far(positions: np.ndarray, pos: int, w: int) -> bool:
    """Whether the RoPE clamp turns any of these keys (one more than w tokens before pos)."""
    return bool((np.asarray(positions) < pos - w).any())


def graphed_decoder(model, cache, plan_row: np.ndarray | None, compile: bool = False) -> GraphedDecode:
    """The graph for this cache and plan width, made on first use and kept on the cache object."""
    width = None if plan_row is None else int(plan_row.shape[-1])
    graphs = getattr(cache, "graphs", None)
    if graphs is None:
        graphs = cache.graphs = {}
    g = graphs.get(width)
    if g is None:
        g = graphs[width] = GraphedDecode(model, cache, width, compile)
    return g
