"""Kernel benchmark: Triton sparse attention vs dense causal SDPA vs FlexAttention (BlockMask from the same
plan), forward, forward+backward and decode, with the memory/compute floor. Writes JSON; report.py turns it
into markdown + PNG.

    python bench/kernels/bench_sparse.py --out results/ [--plans DIR] [--quick]

--plans DIR: real plans saved as DIR/plan_<N>.npy ((N, K) int32, from the analyzer); else synthetic ASA-like.
Timings: triton.testing.do_bench medians (ms) after warm-up; "+layout" adds plan -> layout time (built once
per forward and shared by all layers and heads in a model; reported separately so both views are visible).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from kernels.synthetic_plans import asa_like, random_rows  # noqa: E402
from kernels.layout import _compact, build_layout  # noqa: E402
from kernels.reference import sparse_attention_reference  # noqa: E402
from kernels.triton_sparse import (build_layout_triton, sparse_attention_bwd,  # noqa: E402
                                   sparse_attention_decode, sparse_attention_fwd, sparse_attention_triton)

import triton  # noqa: E402

DEV = "cuda"
DT = torch.bfloat16


def bench(fn, warmup=25, rep=100):
    return float(triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))


def ceilings():
    x = torch.randn(256 << 20, device=DEV, dtype=torch.float16)            # 512 MiB
    y = torch.empty_like(x)
    t = bench(lambda: y.copy_(x))
    bw = 2 * x.numel() * 2 / (t * 1e-3)
    a = torch.randn(8192, 8192, device=DEV, dtype=DT)
    b = torch.randn(8192, 8192, device=DEV, dtype=DT)
    t = bench(lambda: a @ b)
    del x, y
    return {"copy_GBps": bw / 1e9, "bf16_mm_TFLOPs": 2 * 8192 ** 3 / (t * 1e-3) / 1e12}


def synthetic_plan(kind, N, K, seed=0, offset=0):
    if kind == "asa":
        return asa_like(N, K, window=64, sinks=4, sent=40, bonded=48, longrange=2, seed=seed, offset=offset)
    if kind == "random":                                  # worst case for tiles: keys from the whole past
        return random_rows(N, K, seed=seed, window=64, offset=offset)
    raise ValueError(kind)


def get_plan(args, N, K):
    if args.plans:
        p = Path(args.plans) / f"plan_{N}.npz"
        if p.exists():
            return np.load(p)["keys"], "real:" + Path(args.plans).name
    return synthetic_plan("asa", N, K), "asa-synthetic"


def floor_ms(cfg, nbytes, flops):
    return max(nbytes / (cfg["copy_GBps"] * 1e9), flops / (cfg["bf16_mm_TFLOPs"] * 1e12)) * 1e3


# ------------------------------------------------------------------------------------------ FlexAttention
def flex_setup():
    from torch.nn.attention.flex_attention import BlockMask, flex_attention
    return BlockMask, torch.compile(flex_attention, dynamic=False)


def flex_block_mask(BlockMask, keys, N):
    """BlockMask (128 x 128 tiles: the union the plan touches) + exact mask_mod from 64-bit row words."""
    B, Nq, K = keys.shape
    lay = build_layout(keys, N, 64, 64, transpose=False)
    kl = keys.long()
    valid = kl >= 0
    nqb, nkb = -(-Nq // 128), -(-N // 128)
    kblk = torch.where(valid, kl // 128, nkb)
    qblk = (torch.arange(Nq, device=keys.device) // 128).view(1, Nq, 1)
    table = torch.zeros(B * nqb * (nkb + 1), dtype=torch.bool, device=keys.device)
    table[((torch.arange(B, device=keys.device).view(B, 1, 1) * nqb + qblk) * (nkb + 1) + kblk).reshape(-1)] = True
    table = table.view(B, nqb, nkb + 1)[..., :nkb]
    idx, cnt, _ = _compact(table)
    kv_indices = torch.zeros(B, 1, nqb, nkb, dtype=torch.int32, device=keys.device)
    kv_indices[..., : idx.shape[-1]] = idx.clamp_min(0).view(B, 1, nqb, -1)
    # 64-granularity slot table: which column of bits holds (row, key block); untouched -> zero column U
    nqb64, nkb64 = lay.kb.shape[1], -(-N // 64)
    U = lay.kb.shape[2]
    slot = torch.full((B, nqb64, nkb64 + 1), U, dtype=torch.int64, device=keys.device)
    jj = torch.arange(U, device=keys.device).view(1, 1, U).expand_as(lay.kb)
    slot.scatter_(2, torch.where(lay.kb >= 0, lay.kb.long(), nkb64), jj.long())
    slot = slot[..., :nkb64].contiguous()
    bits = torch.cat([lay.bits, torch.zeros_like(lay.bits[..., :1])], -1)

    def mask_mod(b, h, q_idx, kv_idx):
        w = bits[b, q_idx, slot[b, q_idx // 64, kv_idx // 64]]
        return ((w >> (kv_idx % 64)) & 1) == 1

    return BlockMask.from_kv_blocks(cnt.view(B, 1, nqb), kv_indices, BLOCK_SIZE=128, mask_mod=mask_mod,
                                    seq_lengths=(Nq, N))


# ------------------------------------------------------------------------------------------------ sections
def check_small(results):
    """Quick correctness on the device before timing (full tests: tests/test_kernels_triton.py)."""
    torch.manual_seed(0)
    keys = torch.from_numpy(synthetic_plan("asa", 2048, 128)).to(DEV)[None]
    q, k, v = (torch.randn(1, 4, 2048, 64, device=DEV, dtype=DT, requires_grad=True) for _ in range(3))
    out = sparse_attention_triton(q, k, v, keys)
    ref = sparse_attention_reference(q.double(), k.double(), v.double(), keys)
    err = ((out.double() - ref).norm() / ref.norm()).item()
    results["check_fwd_rel_err_bf16"] = err
    print(f"check fwd bf16 rel err {err:.2e}", flush=True)
    assert err < 2e-2


def forward_section(args, cfg, results):
    rows = []
    Ns = [1024, 4096, 16384] if args.quick else [1024, 4096, 16384, 65536]
    BlockMask, flex = flex_setup() if not args.no_flex else (None, None)
    for N in Ns:
        plan, source = get_plan(args, N, args.K)
        keys = torch.from_numpy(plan).to(DEV)[None]                          # (1, N, K)
        kavg = float((plan >= 0).sum(1).mean())
        t_layout = bench(lambda: build_layout_triton(keys, N, transpose=False), 5, 30)
        lay = build_layout_triton(keys, N, transpose=False)
        for D in args.D:
            H = args.H
            q, k, v = (torch.randn(1, H, N, D, device=DEV, dtype=DT) for _ in range(3))
            scale = 1 / math.sqrt(D)
            t_ours = bench(lambda: sparse_attention_fwd(q, k, v, lay, scale))
            t_dense = bench(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
            nbytes = 2 * (4 * H * N * D) + keys.numel() * 4
            flops = 4 * N * kavg * D * H
            tiles = lay.tiles
            r = dict(N=N, D=D, H=H, K=args.K, K_avg=kavg, plan=source, tiles_per_head=tiles,
                     tile_density=tiles * 64 * 64 / (N * N / 2), useful_frac=N * kavg / (tiles * 4096),
                     ours_ms=t_ours, layout_ms=t_layout, ours_plus_layout_ms=t_ours + t_layout,
                     dense_ms=t_dense, floor_ms=floor_ms(cfg, nbytes, flops),
                     tile_flop_floor_ms=4 * tiles * 4096 * D * H / (cfg["bf16_mm_TFLOPs"] * 1e12) * 1e3)
            if flex is not None and N in args.flex_N and D == 64:
                try:
                    t_bm = bench(lambda: flex_block_mask(BlockMask, keys, N), 3, 20)
                    bm = flex_block_mask(BlockMask, keys, N)
                    opts = None
                    try:
                        o = flex(q, k, v, block_mask=bm, scale=scale)
                    except Exception:                  # default tiles can exceed shared memory: smaller ones
                        opts = dict(BLOCK_M=64, BLOCK_N=64, num_stages=2, num_warps=4)
                        o = flex(q, k, v, block_mask=bm, scale=scale, kernel_options=opts)
                    r["flex_kernel_options"] = opts
                    ref = sparse_attention_fwd(q, k, v, lay, scale)[0]
                    r["flex_vs_ours_rel"] = ((o.float() - ref.float()).norm() / ref.float().norm()).item()
                    r["flex_ms"] = bench(lambda: flex(q, k, v, block_mask=bm, scale=scale, kernel_options=opts))
                    r["flex_layout_ms"] = t_bm
                except Exception as e:                                        # report, keep going
                    r["flex_error"] = f"{type(e).__name__}: {str(e)[:200]}"
            rows.append(r)
            print(f"fwd N={N:6d} D={D:3d} ours {t_ours:.4f} (+layout {t_layout:.4f}) dense {t_dense:.4f} "
                  f"flex {r.get('flex_ms', float('nan')):.4f} floor {r['floor_ms']:.4f} "
                  f"tiles {tiles} useful {r['useful_frac']:.2f}", flush=True)
            del q, k, v
        if "random" in args.extra and N == 16384:
            plan_r = synthetic_plan("random", N, args.K)
            keys_r = torch.from_numpy(plan_r).to(DEV)[None]
            lay_r = build_layout_triton(keys_r, N, transpose=False)
            q, k, v = (torch.randn(1, args.H, N, 64, device=DEV, dtype=DT) for _ in range(3))
            rows.append(dict(N=N, D=64, H=args.H, K=args.K, plan="random-whole-past",
                             K_avg=float((plan_r >= 0).sum(1).mean()), tiles_per_head=lay_r.tiles,
                             ours_ms=bench(lambda: sparse_attention_fwd(q, k, v, lay_r, 0.125)),
                             layout_ms=bench(lambda: build_layout_triton(keys_r, N, transpose=False), 3, 20),
                             dense_ms=bench(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))))
            print("random plan", rows[-1], flush=True)
    results["forward"] = rows


def fwdbwd_section(args, cfg, results):
    rows = []
    for N in ([4096, 16384] if not args.quick else [16384]):
        plan, source = get_plan(args, N, args.K)
        keys = torch.from_numpy(plan).to(DEV)[None]
        kavg = float((plan >= 0).sum(1).mean())
        t_layout = bench(lambda: build_layout_triton(keys, N, transpose=True), 5, 30)
        lay = build_layout_triton(keys, N, transpose=True)
        for D in args.D:
            H = args.H
            q, k, v = (torch.randn(1, H, N, D, device=DEV, dtype=DT) for _ in range(3))
            do = torch.randn_like(q)
            scale = 1 / math.sqrt(D)

            def ours():
                o, lse = sparse_attention_fwd(q, k, v, lay, scale)
                return sparse_attention_bwd(q, k, v, o, lse, do, lay, scale)

            qd, kd, vd = (t.clone().requires_grad_(True) for t in (q, k, v))

            def dense():
                o = F.scaled_dot_product_attention(qd, kd, vd, is_causal=True)
                return torch.autograd.grad(o, (qd, kd, vd), do)

            t_ours, t_dense = bench(ours), bench(dense)
            nbytes = 2 * (4 * H * N * D) + 2 * (8 * H * N * D)                 # fwd + bwd reads/writes
            r = dict(N=N, D=D, H=H, plan=source, K_avg=kavg, ours_ms=t_ours, layout_ms=t_layout,
                     ours_plus_layout_ms=t_ours + t_layout, dense_ms=t_dense,
                     floor_ms=floor_ms(cfg, nbytes, 4 * 2.5 * N * kavg * D * H))
            rows.append(r)
            print(f"fwd+bwd N={N} D={D} ours {t_ours:.4f} (+layout {t_layout:.4f}) dense {t_dense:.4f}", flush=True)
    results["fwd_bwd"] = rows


def decode_section(args, cfg, results):
    rows = []
    for S in [8192, 32768, 131072]:
        for (H, Hkv) in [(8, 8), (32, 8)]:
            for D in args.D:
                row, source = synthetic_plan("asa", 1, args.K, offset=S - 1), "asa-synthetic"
                if args.plans and (Path(args.plans) / "decode_rows.npz").exists():
                    z = np.load(Path(args.plans) / "decode_rows.npz")
                    row, source = z["keys"][list(z["S"]).index(S)][None], "real:" + Path(args.plans).name
                keys = torch.from_numpy(row).to(DEV)[None]
                kavg = float((keys >= 0).sum())
                q = torch.randn(1, H, 1, D, device=DEV, dtype=DT)
                k, v = (torch.randn(1, Hkv, S, D, device=DEV, dtype=DT) for _ in range(2))
                scale = 1 / math.sqrt(D)
                # tiny kernels: time CUDA-graph replays so launch gaps and timer noise stay out
                t_ours = float(triton.testing.do_bench_cudagraph(
                    lambda: sparse_attention_decode(q, k, v, keys, scale), rep=50, return_mode="median"))
                t_dense = float(triton.testing.do_bench_cudagraph(
                    lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=H != Hkv), rep=50,
                    return_mode="median"))
                nbytes = 2 * Hkv * kavg * D * 2 + 2 * 2 * H * D
                r = dict(S=S, H=H, Hkv=Hkv, D=D, K_avg=kavg, plan=source, ours_ms=t_ours, dense_ms=t_dense,
                         floor_ms=floor_ms(cfg, nbytes, 4 * kavg * D * H),
                         dense_floor_ms=2 * Hkv * S * D * 2 / (cfg["copy_GBps"] * 1e9) * 1e3)
                rows.append(r)
                print(f"decode S={S} H={H}/{Hkv} D={D} ours {t_ours * 1e3:.1f}us dense {t_dense * 1e3:.1f}us",
                      flush=True)
                del k, v
    results["decode"] = rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "bench/kernels/results"))
    ap.add_argument("--tag", default="run")
    ap.add_argument("--plans", default=None)
    ap.add_argument("--K", type=int, default=128)
    ap.add_argument("--H", type=int, default=8)
    ap.add_argument("--D", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--flex-N", type=int, nargs="*", default=[4096, 16384])
    ap.add_argument("--no-flex", action="store_true")
    ap.add_argument("--extra", nargs="*", default=["random"])
    ap.add_argument("--sections", nargs="+", default=["check", "forward", "fwdbwd", "decode"])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    t0 = time.time()
    cfg = ceilings()
    results = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                   ceilings=cfg, args=vars(args))
    print(results["device"], cfg, flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fns = dict(check=check_small, forward=forward_section, fwdbwd=fwdbwd_section, decode=decode_section)
    for s in args.sections:
        try:
            fns[s](*((results,) if s == "check" else (args, cfg, results)))
        except Exception as e:
            results[f"{s}_error"] = f"{type(e).__name__}: {str(e)[:500]}"
            print(f"section {s} failed: {results[f'{s}_error']}", flush=True)
        (out / f"kernels_{args.tag}.json").write_text(json.dumps(results, indent=1))
    results["wall_s"] = time.time() - t0
    (out / f"kernels_{args.tag}.json").write_text(json.dumps(results, indent=1))
    print(f"done in {results['wall_s']:.0f}s", flush=True)


if __name__ == "__main__":
    main()
