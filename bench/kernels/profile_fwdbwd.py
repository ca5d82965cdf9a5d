"""Where forward+backward time goes at N=16k (real plan): per-kernel CUDA time from torch.profiler and the
wall time of the same step, so launch overhead vs GPU work is visible. Prints a short table; writes JSON.

    python bench/kernels/profile_fwdbwd.py --plans .plans_carry/k64 --out $OUT
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from kernels.triton_sparse import build_layout_triton, sparse_attention_bwd, sparse_attention_fwd  # noqa: E402

import triton  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--plans", default=".plans_carry/k64")
ap.add_argument("--N", type=int, default=16384)
ap.add_argument("--D", type=int, default=64)
ap.add_argument("--out", default=".")
a = ap.parse_args()
keys = torch.from_numpy(np.load(f"{a.plans}/plan_{a.N}.npz")["keys"]).cuda()[None]
q, k, v, do = (torch.randn(1, 8, a.N, a.D, device="cuda", dtype=torch.bfloat16) for _ in range(4))
scale = 1 / math.sqrt(a.D)


def step(lay):
    o, lse = sparse_attention_fwd(q, k, v, lay, scale)
    return sparse_attention_bwd(q, k, v, o, lse, do, lay, scale)


lay = build_layout_triton(keys, a.N, transpose=True)
step(lay)
res = {"wall_ms_step": float(triton.testing.do_bench(lambda: step(lay), return_mode="median")),
       "graph_ms_step": float(triton.testing.do_bench_cudagraph(lambda: step(lay), return_mode="median")),
       "wall_ms_layout": float(triton.testing.do_bench(lambda: build_layout_triton(keys, a.N), return_mode="median"))}
with profile(activities=[ProfilerActivity.CUDA]) as prof:
    for _ in range(10):
        step(build_layout_triton(keys, a.N))
    torch.cuda.synchronize()
rows = []
for e in prof.key_averages():
    if e.device_time_total > 0:
        rows.append((e.key[:60], e.count // 10, e.device_time_total / 10 / 1e3))
rows.sort(key=lambda r: -r[2])
res["kernels_ms_per_step"] = rows[:15]
res["split"] = triton.cdiv(lay.max_segment(), 32)
print(json.dumps(res, indent=0))
Path(a.out, "profile_fwdbwd.json").write_text(json.dumps(res, indent=1))
