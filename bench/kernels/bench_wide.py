"""Wide-plan kernel benchmark (kernels/triton_wide.py): real plans with ~128 and ~256 keys per query against
dense causal SDPA, FlexAttention given the same plan, the narrow tile kernels (triton_sparse.py) and the wide
kernels; forward (4k/16k/64k), forward+backward (16k) and decode; the layout of each path timed and added.

    python bench/kernels/bench_wide.py --make-plans runs/wide_plans        # CPU, here: analyzer + planner
    python bench/kernels/bench_wide.py --plans runs/wide_plans --out bench/kernels/results --tag h200  # GPU

Plans (Dracula from ../shared/data/english_prose, as make_plans.py): "w128" PlanConfig(k=128, window=64,
sinks=16, stride=64), "w256" PlanConfig(k=256, window=128, sinks=64, stride=64), and "k64" (the default
PlanConfig, asa-small's plan: the narrow path, to show the dispatch leaves it alone). Stored delta-encoded
(np.diff of the rows compresses to a few MB even at 64k x 256).
Timings: triton.testing.do_bench medians (ms); decode: CUDA-graph replays. "+layout": the plan -> layout
build of that path (once per forward pass in a model, shared by every layer and head; charged to one call
here; "+lay/L": one layout per step shared by L layers, --layers, default 8 as asa-small). "layout wall":
back-to-back builds with one sync at the end (host launch cost included, no L2 flush). Floor as bench_sparse.py: max(bytes / copy bandwidth, useful FLOPs / bf16 matmul rate), bytes = read
Q, K, V and write O once + the plan.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

PLANS = {
    "w128": dict(k=128, window=64, sinks=16, stride=64),
    "w256": dict(k=256, window=128, sinks=64, stride=64),
    "k64": dict(k=64),
}
NS = (4096, 16384, 65536)
DECODE_S = (8192, 32768, 131072)


# ------------------------------------------------------------------------------------ plans (CPU)
def save_plan(path: Path, keys: np.ndarray) -> None:
    n = (keys >= 0).sum(1).astype(np.int32)
    d = np.diff(np.where(keys >= 0, keys, 0), axis=1, prepend=0).astype(np.int32)
    np.savez_compressed(path, delta=np.where(keys >= 0, d, 0), n=n)


def load_plan(path: Path) -> np.ndarray:
    z = np.load(path)
    keys = np.cumsum(z["delta"], axis=1, dtype=np.int64)
    keys[np.arange(keys.shape[1])[None, :] >= z["n"][:, None]] = -1
    return keys.astype(np.int32)


def make_plans(out: Path) -> None:
    from asa_runtime.config import PlanConfig
    from asa_runtime.linguistics.planner import Planner
    from bench.kernels.make_plans import long_book

    title, text = long_book()
    pieces = re.findall(r" ?\w+|[^\w\s]|\s+", text)
    for name, kw in PLANS.items():
        d = out / name
        d.mkdir(parents=True, exist_ok=True)
        cfg = PlanConfig(mode="full", **kw)
        t = time.time()
        full = Planner(cfg).plan(pieces[: DECODE_S[-1]]).astype(np.int32)    # causal: prefixes are plans
        for N in NS:
            save_plan(d / f"plan_{N}.npz", full[:N])
        save_plan(d / "decode_rows.npz", np.stack([full[s - 1] for s in DECODE_S]))
        (d / "SOURCE.txt").write_text(f"{title}; {cfg}; mean keys/row at 16k "
                                      f"{float((full[:16384] >= 0).sum(1).mean()):.1f}\n")
        print(f"{name}: {cfg} mean keys {float((full[:16384] >= 0).sum(1).mean()):.1f} at 16k "
              f"({time.time() - t:.1f}s)", flush=True)


# ---------------------------------------------------------------------------------------- GPU bench
def run(args):
    import torch
    import torch.nn.functional as F
    import triton

    from bench.kernels.bench_sparse import bench, ceilings, flex_block_mask, flex_setup, floor_ms
    from kernels.reference import sparse_attention_reference
    from kernels.triton_sparse import (build_layout_triton, sparse_attention_bwd, sparse_attention_decode,
                                       sparse_attention_fwd)
    from kernels.triton_wide import (build_wide_layout_triton, sparse_attention_auto, wide_attention_bwd,
                                     wide_attention_fwd, wide_layout_for)

    DEV, DT = "cuda", torch.bfloat16
    ns_fwd, n_fb, decode_s, n_check = NS, 16384, DECODE_S, 4096
    if args.smoke:              # CPU, TRITON_INTERPRET=1: each code path once, tiny sizes, timings meaningless
        DEV, DT = "cpu", torch.float32
        ns_fwd, n_fb, decode_s, n_check = (192,), 192, (1024,), 192
        import kernels.triton_sparse as ts
        for kern in (ts._fwd_kernel, ts._bwd_dq_kernel, ts._bwd_dkdv_kernel, ts._decode_kernel):
            kern.configs = kern.configs[:1]

        def bench(fn, *a, **kw):                                        # noqa: F811
            t = time.perf_counter()
            fn()
            return (time.perf_counter() - t) * 1e3

        def ceilings():                                                  # noqa: F811
            return {"copy_GBps": 4800.0, "bf16_mm_TFLOPs": 800.0}

        triton.testing.do_bench_cudagraph = lambda fn, **kw: bench(fn)
        args.no_flex = True
    plans_dir = Path(args.plans)
    t0 = time.time()
    cfg = ceilings()
    res = dict(device=torch.cuda.get_device_name() if DEV == "cuda" else "cpu (smoke)",
               torch=torch.__version__, triton=triton.__version__,
               ceilings=cfg, args=vars(args), forward=[], fwd_bwd=[], decode=[], checks=[])
    print(res["device"], {k: round(v, 1) for k, v in cfg.items()}, flush=True)

    def plan(name, N):
        src = min(n for n in NS if n >= N)                  # causal: a prefix is the shorter plan
        return torch.from_numpy(load_plan(plans_dir / name / f"plan_{src}.npz")[:N]).to(DEV)[None]

    def wide_layout(keys, N, transpose):
        return build_wide_layout_triton(keys, N, transpose=transpose, force=True)   # the GPU builder

    def wall_ms(fn, n=50):
        """Back-to-back calls, one sync at the end: host launch cost included (do_bench's L2 flush between
        calls can hide up to ~60 us of host time), no cache flush."""
        fn()
        torch.cuda.synchronize() if DEV == "cuda" else None
        t = time.perf_counter()
        for _ in range(n if DEV == "cuda" else 1):
            fn()
        torch.cuda.synchronize() if DEV == "cuda" else None
        return (time.perf_counter() - t) * 1e3 / (n if DEV == "cuda" else 1)

    def layout_graph_ms(keys, N, transpose):
        """GPU time alone of the wide layout build: replays of a CUDA graph that captured one build (the
        builder never syncs with force=True; its scratch exists from the calls before). None if capture
        fails."""
        if DEV != "cuda":
            return bench(lambda: wide_layout(keys, N, transpose))
        try:
            wide_layout(keys, N, transpose)
            torch.cuda.synchronize()
            return float(triton.testing.do_bench_cudagraph(lambda: wide_layout(keys, N, transpose), rep=20,
                                                           return_mode="median"))
        except Exception as e:                      # noqa: BLE001 - the figure is optional
            print(f"layout graph capture failed: {type(e).__name__}: {str(e)[:200]}", flush=True)
            return None

    def save():
        if args.out:
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            (out / f"wide_{args.tag}.json").write_text(json.dumps(res, indent=1))
            (out / f"wide_{args.tag}.md").write_text(to_markdown(res))

    # -- correctness on the real plans first (full tests: tests/test_kernels_wide.py)
    for name in args.plan_names:
        keys = plan(name, n_check)
        g = torch.Generator(device=DEV).manual_seed(1)
        q, k, v = (torch.randn(1, 2, n_check, 64, device=DEV, generator=g).to(DT).requires_grad_(True)
                   for _ in range(3))
        do = torch.randn(q.shape, device=DEV, generator=g).to(DT)
        lay = wide_layout(keys, n_check, True)
        o, lse = wide_attention_fwd(q, k, v, lay, 0.125)
        got = wide_attention_bwd(q, k, v, o, lse, do, lay, 0.125)
        q64, k64, v64 = (t.detach().double().requires_grad_(True) for t in (q, k, v))
        ref = sparse_attention_reference(q64, k64, v64, keys)
        want = torch.autograd.grad(ref, (q64, k64, v64), do.double())

        def rel(a, b):
            return ((a.double() - b).norm() / b.norm()).item()

        c = dict(plan=name, N=n_check, fwd=rel(o, ref), dq=rel(got[0], want[0]), dk=rel(got[1], want[1]),
                 dv=rel(got[2], want[2]))
        res["checks"].append(c)
        print("check bf16 vs fp64", c, flush=True)
        c["ok"] = c["fwd"] < 2e-2 and max(c["dq"], c["dk"], c["dv"]) < 3e-2
        if not c["ok"]:                             # keep timing (the numbers say how far off), but loudly
            print(f"CHECK FAILED on plan {name}: {c}", flush=True)
        del q, k, v, q64, k64, v64, ref

    BlockMask, flex = flex_setup() if not args.no_flex else (None, None)
    # -- forward
    if args.ns and not args.smoke:
        ns_fwd = tuple(args.ns)
    if args.no_forward:                             # e.g. fwd+bwd alone, within one device call
        ns_fwd = ()
    for name in args.plan_names:
        for N in (ns_fwd if name != "k64" else [n for n in ns_fwd if n == n_fb] or ns_fwd[:1]):
            keys = plan(name, N)
            kavg = float((keys >= 0).sum(-1).float().mean())
            t_nlay = bench(lambda: build_layout_triton(keys, N, transpose=False), 5, 30)
            t_wlay = bench(lambda: wide_layout(keys, N, False), 5, 30)
            t_wlay_wall = wall_ms(lambda: wide_layout(keys, N, False))
            t_wlay_graph = layout_graph_ms(keys, N, False)
            nlay = build_layout_triton(keys, N, transpose=False)
            wlay = wide_layout(keys, N, False)
            auto_wide = wide_layout_for(keys, N, transpose=False).wide
            for D in args.D:
                H = args.H
                q, k, v = (torch.randn(1, H, N, D, device=DEV, dtype=DT) for _ in range(3))
                scale = 1 / math.sqrt(D)
                r = dict(plan=name, N=N, D=D, H=H, K=keys.shape[-1], K_avg=kavg, auto="wide" if auto_wide else
                         "narrow", narrow_tiles=nlay.tiles, wide_tiles=int(wlay.kb_count.sum()),
                         wide_chunks=int(wlay.ux_count.sum()),
                         structured_mean=wlay.stats["structured_mean"], wide_layout_wall_ms=t_wlay_wall,
                         wide_layout_graph_ms=t_wlay_graph)
                r["dense_ms"] = bench(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
                r["narrow_ms"] = bench(lambda: sparse_attention_fwd(q, k, v, nlay, scale))
                r["narrow_layout_ms"] = t_nlay
                r["wide_ms"] = bench(lambda: wide_attention_fwd(q, k, v, wlay, scale))
                r["wide_layout_ms"] = t_wlay
                sparse_attention_auto(q, k, v, keys, scale)          # layout cached: dispatch cost only
                r["auto_ms"] = bench(lambda: sparse_attention_auto(q, k, v, keys, scale))
                wo = wide_attention_fwd(q, k, v, wlay, scale)[0].float()
                no = sparse_attention_fwd(q, k, v, nlay, scale)[0].float()
                r["wide_vs_narrow_rel"] = ((wo - no).norm() / no.norm()).item()
                nbytes = 2 * (4 * H * N * D) + keys.numel() * 4
                r["floor_ms"] = floor_ms(cfg, nbytes, 4 * N * kavg * D * H)
                if flex is not None and N in args.flex_N and D in args.flex_D and name in args.flex_plans:
                    try:
                        r["flex_layout_ms"] = bench(lambda: flex_block_mask(BlockMask, keys, N), 3, 20)
                        bm = flex_block_mask(BlockMask, keys, N)
                        opts = None
                        try:
                            fo = flex(q, k, v, block_mask=bm, scale=scale)
                        except Exception:            # default tiles can exceed shared memory: smaller ones
                            opts = dict(BLOCK_M=64, BLOCK_N=64, num_stages=2, num_warps=4)
                            fo = flex(q, k, v, block_mask=bm, scale=scale, kernel_options=opts)
                        r["flex_vs_wide_rel"] = ((fo.float() - wo).norm() / wo.norm()).item()
                        r["flex_ms"] = bench(lambda: flex(q, k, v, block_mask=bm, scale=scale,
                                                          kernel_options=opts))
                    except Exception as e:
                        r["flex_error"] = f"{type(e).__name__}: {str(e)[:200]}"
                res["forward"].append(r)
                print(f"fwd {name} N={N:6d} D={D:3d} Kavg {kavg:.0f} dense {r['dense_ms']:.4f} "
                      f"narrow {r['narrow_ms']:.4f}+{t_nlay:.4f} wide {r['wide_ms']:.4f}+{t_wlay:.4f} "
                      f"auto({r['auto']}) {r['auto_ms']:.4f} flex {r.get('flex_ms', float('nan')):.4f} "
                      f"floor {r['floor_ms']:.4f} diff {r['wide_vs_narrow_rel']:.1e} layout wall {t_wlay_wall:.4f} "
                      f"graph {_f(t_wlay_graph)}", flush=True)
                del q, k, v, wo, no
            save()
    # -- forward + backward at 16k
    for name in args.plan_names:
        N = n_fb
        keys = plan(name, N)
        kavg = float((keys >= 0).sum(-1).float().mean())
        t_nlay = bench(lambda: build_layout_triton(keys, N, transpose=True), 5, 30)
        t_wlay = bench(lambda: wide_layout(keys, N, True), 5, 30)
        t_wlay_wall = wall_ms(lambda: wide_layout(keys, N, True))
        t_wlay_graph = layout_graph_ms(keys, N, True)
        nlay = build_layout_triton(keys, N, transpose=True)
        wlay = wide_layout(keys, N, True)
        for D in args.D:
            H = args.H
            q, k, v = (torch.randn(1, H, N, D, device=DEV, dtype=DT) for _ in range(3))
            do = torch.randn_like(q)
            scale = 1 / math.sqrt(D)

            def narrow():
                o, lse = sparse_attention_fwd(q, k, v, nlay, scale)
                return sparse_attention_bwd(q, k, v, o, lse, do, nlay, scale)

            def wide(fused=None):
                o, lse = wide_attention_fwd(q, k, v, wlay, scale)
                return wide_attention_bwd(q, k, v, o, lse, do, wlay, scale, fused=fused)

            qd, kd, vd = (t.clone().requires_grad_(True) for t in (q, k, v))

            def dense():
                o = F.scaled_dot_product_attention(qd, kd, vd, is_causal=True)
                return torch.autograd.grad(o, (qd, kd, vd), do)

            gw, gn = wide(), narrow()
            diff = max(((a.float() - b.float()).norm() / b.float().norm()).item() for a, b in zip(gw, gn))
            nbytes = 2 * (4 * H * N * D) + 2 * (8 * H * N * D)
            r = dict(plan=name, N=N, D=D, H=H, K_avg=kavg, dense_ms=bench(dense), narrow_ms=bench(narrow),
                     narrow_layout_ms=t_nlay, wide_ms=bench(wide), wide_layout_ms=t_wlay,
                     wide_vs_narrow_grad_rel=diff, wide_layout_wall_ms=t_wlay_wall,
                     wide_layout_graph_ms=t_wlay_graph, layers=args.layers, floor_ms=floor_ms(cfg, nbytes, 4 * 2.5 * N * kavg * D * H),
                     wide_fused_ms=bench(lambda: wide(True)), wide_separate_ms=bench(lambda: wide(False)))
            res["fwd_bwd"].append(r)
            print(f"fwd+bwd {name} N={N} D={D} dense {r['dense_ms']:.4f} narrow {r['narrow_ms']:.4f}"
                  f"+{t_nlay:.4f} wide {r['wide_ms']:.4f}+{t_wlay:.4f} (fused {r['wide_fused_ms']:.4f}, "
                  f"separate {r['wide_separate_ms']:.4f}) floor {r['floor_ms']:.4f} diff {diff:.1e} layout wall "
                  f"{t_wlay_wall:.4f}; w+lay/{args.layers} {r['wide_ms'] + t_wlay / args.layers:.4f}", flush=True)
            del q, k, v, do, qd, kd, vd, gw, gn
        save()
    # -- decode: the row of query S-1 of the plan, against an S-slot cache
    for name in (args.plan_names if not args.no_decode else []):
        rows = load_plan(plans_dir / name / "decode_rows.npz")
        for S in decode_s:
            row = rows[DECODE_S.index(S)] if S in DECODE_S else plan(name, S)[0, -1].cpu().numpy()
            keys = torch.from_numpy(row).to(DEV)[None, None]                          # (1, 1, K)
            kavg = float((keys >= 0).sum())
            for (H, Hkv) in [(8, 8), (32, 8)]:
                for D in args.D:
                    q = torch.randn(1, H, 1, D, device=DEV, dtype=DT)
                    k, v = (torch.randn(1, Hkv, S, D, device=DEV, dtype=DT) for _ in range(2))
                    scale = 1 / math.sqrt(D)
                    rep = dict(rep=50, return_mode="median")
                    r = dict(plan=name, S=S, H=H, Hkv=Hkv, D=D, K=keys.shape[-1], K_avg=kavg)
                    r["narrow_ms"] = float(triton.testing.do_bench_cudagraph(
                        lambda: sparse_attention_decode(q, k, v, keys, scale), **rep))
                    r["dense_ms"] = float(triton.testing.do_bench_cudagraph(
                        lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=H != Hkv), **rep))
                    nbytes = 2 * Hkv * kavg * D * 2 + 2 * 2 * H * D
                    r["floor_ms"] = floor_ms(cfg, nbytes, 4 * kavg * D * H)
                    res["decode"].append(r)
                    print(f"decode {name} S={S} H={H}/{Hkv} D={D} narrow {r['narrow_ms'] * 1e3:.1f}us "
                          f"dense {r['dense_ms'] * 1e3:.1f}us", flush=True)
                    del k, v
        save()
    res["wall_s"] = time.time() - t0
    save()
    print(to_markdown(res, short=True))
    print(f"done in {res['wall_s']:.0f}s", flush=True)


# ------------------------------------------------------------------------ compile check (CPU, no GPU)
def compile_check(D: int, warps: int, block_m: int) -> bool:
    """Compile every tile kernel for sm_90 with the ptxas in Triton's wheel (no GPU needed) and print each
    one's registers, stack (spills), shared memory and fence / atomic instruction counts
    (kernels/compile_check.py): compile errors the interpreter cannot see, register pressure and fenced
    atomics, before a device call."""
    from kernels.compile_check import compile_sm90, jobs

    ok = True
    for name, kern, ce, launch in jobs(D, block_m):
        opts = dict(dict(num_warps=warps), **launch)
        try:
            print(f"{name:18s} D={D} warps={opts['num_warps']} BLOCK_M={block_m}: {compile_sm90(kern, ce, **opts)}",
                  flush=True)
        except Exception as e:
            ok = False
            print(f"{name}: FAILED {type(e).__name__}: {str(e)[-1500:]}", flush=True)
    return ok


# ----------------------------------------------------------------------------------------------- report
def _f(x, nd=4):
    return "-" if x is None else f"{x:.{nd}f}"


def _x(a, b):
    return "-" if a is None or b is None or b == 0 else f"{a / b:.1f}"


def tile_traffic(r: dict, tiles: int, block_k: int = 64, elem: int = 2) -> float:
    """Bytes a tile kernel names over the floor's bytes (a forward row of the results): every (query block,
    key block) tile or gathered chunk of `block_k` keys reads its K and V rows once per head, q is read and o
    written once. Above 1 by the re-reads of shared key blocks (window, sinks); a kernel gets below it only
    through L2 hits. The floor: q, k, v and o once plus the plan (int32), as floor_ms counts them."""
    N, D, H = r["N"], r["D"], r["H"]
    named = (tiles * block_k * 2 + 2 * N) * D * H * elem
    floor = 4 * N * D * H * elem + N * r["K"] * 4
    return named / floor


def to_markdown(res: dict, short: bool = False) -> str:
    L = [f"# Wide-plan kernels: {res['device']} (torch {res['torch']}, triton {res['triton']})", "",
         f"ceilings measured in the run: copy {res['ceilings']['copy_GBps']:.0f} GB/s, bf16 matmul "
         f"{res['ceilings']['bf16_mm_TFLOPs']:.0f} TFLOP/s. B=1, {res['args']['H']} heads, bf16, medians in ms. "
         "w = wide kernels (triton_wide.py), n = narrow tile kernels (triton_sparse.py); "
         "+lay = with that path's plan -> layout build in the same call (the layout charged to one layer); "
         f"+lay/{res['args'].get('layers', 8)} = one layout per step shared by "
         f"{res['args'].get('layers', 8)} layers (forward and backward), the training-relevant figure "
         "(a model builds one layout per plan and step: kernels/triton_wide.WIDE_LAYOUTS). floor: reading q, k, v "
         "and the plan and writing o once at the measured copy rate (or the plan's matmul FLOPs, if longer); "
         f"x/{res['args'].get('layers', 8)} / floor: the same with the layout shared by the layers. "
         "n / w tile bytes: the bytes the narrow / wide kernel's tiles and chunks name (K and V once per tile and "
         "head, q and o once) over the floor's bytes (bench_wide.tile_traffic): a kernel beats it only through L2 "
         "hits.", ""]
    if res.get("checks"):
        L += ["checks (bf16 vs float64 reference, 2 heads, D=64): " + "; ".join(
            f"{c['plan']} N={c['N']}: fwd {c['fwd']:.1e} dq {c['dq']:.1e} dk {c['dk']:.1e} dv {c['dv']:.1e}"
            for c in res["checks"]), ""]
    nl_ = res["args"].get("layers", 8)
    L += ["| plan | N | D | K avg | auto | dense | narrow | n+lay | wide | w layout | w+lay | auto | flex (+mask) |"
          f" x dense (w+lay) | x flex (w+lay) | w+lay / floor | x dense (w+lay/{nl_}) | w+lay/{nl_} / floor | "
          f"n+lay/{nl_} / floor | w layout wall | "
          "w layout GPU (graph) | n tiles | w tiles+chunks | n tile bytes / floor | w tile bytes / floor |",
          "|" + "---|" * 25]
    for r in res["forward"]:
        wl = r["wide_ms"] + r["wide_layout_ms"]
        wlL = r["wide_ms"] + r["wide_layout_ms"] / nl_
        flex = r.get("flex_ms")
        L.append(f"| {r['plan']} | {r['N']} | {r['D']} | {r['K_avg']:.0f} | {r['auto']} | {_f(r['dense_ms'])} | "
                 f"{_f(r['narrow_ms'])} | {_f(r['narrow_ms'] + r['narrow_layout_ms'])} | {_f(r['wide_ms'])} | "
                 f"{_f(r['wide_layout_ms'])} | {_f(wl)} | {_f(r['auto_ms'])} | "
                 f"{_f(flex)}{' (+' + _f(r['flex_layout_ms'], 2) + ')' if flex else ''} | "
                 f"{_x(r['dense_ms'], wl)} | {_x(flex, wl)} | {_x(wl, r['floor_ms'])} | {_x(r['dense_ms'], wlL)} | "
                 f"{_x(wlL, r['floor_ms'])} | {_x(r['narrow_ms'] + r['narrow_layout_ms'] / nl_, r['floor_ms'])} | "
                 f"{_f(r.get('wide_layout_wall_ms'))} | {_f(r.get('wide_layout_graph_ms'))} | {r['narrow_tiles']} | "
                 f"{r['wide_tiles']}+{r['wide_chunks']} | {tile_traffic(r, r['narrow_tiles']):.2f} | "
                 f"{tile_traffic(r, r['wide_tiles'] + r['wide_chunks']):.2f} |")
    L += ["", "| fwd+bwd plan | N | D | dense | narrow | n+lay | wide | w layout (+transpose) | w+lay | "
          f"x dense (w+lay) | x dense (n+lay) | w+lay / floor | w+lay/{nl_} (one layout per step, {nl_} layers) | "
          f"x dense (w+lay/{nl_}) | w layout wall | w layout GPU (graph) | w fused dk/dv | w separate dk/dv |",
          "|" + "---|" * 18]
    for r in res["fwd_bwd"]:
        wl = r["wide_ms"] + r["wide_layout_ms"]
        wlL = r["wide_ms"] + r["wide_layout_ms"] / nl_
        nl = r["narrow_ms"] + r["narrow_layout_ms"]
        L.append(f"| {r['plan']} | {r['N']} | {r['D']} | {_f(r['dense_ms'])} | {_f(r['narrow_ms'])} | {_f(nl)} | "
                 f"{_f(r['wide_ms'])} | {_f(r['wide_layout_ms'])} | {_f(wl)} | {_x(r['dense_ms'], wl)} | "
                 f"{_x(r['dense_ms'], nl)} | {_x(wl, r['floor_ms'])} | {_f(wlL)} | {_x(r['dense_ms'], wlL)} | "
                 f"{_f(r.get('wide_layout_wall_ms'))} | {_f(r.get('wide_layout_graph_ms'))} | {_f(r['wide_fused_ms'])} | "
                 f"{_f(r['wide_separate_ms'])} |")
    if not short:
        # decode of wide rows runs the narrow decode kernel (the dispatch's choice; a wide decode kernel measured
        # 2x slower was removed: its figures stay in results/wide_h200.md)
        L += ["", "| decode plan | S | H/Hkv | D | K | narrow us | dense us | x dense | / floor |",
              "|" + "---|" * 9]
        for r in res["decode"]:
            L.append(f"| {r['plan']} | {r['S']} | {r['H']}/{r['Hkv']} | {r['D']} | {r['K_avg']:.0f} | "
                     f"{r['narrow_ms'] * 1e3:.1f} | {r['dense_ms'] * 1e3:.1f} | "
                     f"{_x(r['dense_ms'], r['narrow_ms'])} | {_x(r['narrow_ms'], r['floor_ms'])} |")
    return "\n".join(L) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--make-plans", default=None, help="CPU: write the plans into this folder and stop")
    ap.add_argument("--render", default=None, help="rewrite the .md beside this wide_<tag>.json from it and stop")
    ap.add_argument("--plans", default="runs/wide_plans")
    ap.add_argument("--out", default=None, help="write wide_<tag>.json and .md here")
    ap.add_argument("--tag", default="run")
    ap.add_argument("--plan-names", nargs="+", default=list(PLANS))
    ap.add_argument("--H", type=int, default=8)
    ap.add_argument("--layers", type=int, default=8,
                    help="layers sharing one layout per step (asa-small: 8) for the 'lay/L' columns")
    ap.add_argument("--D", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--flex-N", type=int, nargs="*", default=[16384])
    ap.add_argument("--flex-D", type=int, nargs="*", default=[64])
    ap.add_argument("--flex-plans", nargs="*", default=["w128", "w256"], help="each is one torch.compile")
    ap.add_argument("--no-flex", action="store_true")
    ap.add_argument("--no-decode", action="store_true", help="skip the decode section")
    ap.add_argument("--no-forward", action="store_true", help="skip the forward section (fwd+bwd and decode run)")
    ap.add_argument("--ns", type=int, nargs="*", default=None, help="forward sizes (default 4k 16k 64k)")
    ap.add_argument("--smoke", action="store_true", help="CPU, TRITON_INTERPRET=1: every path, tiny sizes")
    ap.add_argument("--compile-check", action="store_true",
                    help="CPU: compile the wide kernels for sm_90 (ptxas), print registers and spills")
    args = ap.parse_args()
    if args.render:
        src = Path(args.render)
        res = json.loads(src.read_text())
        md = src.with_suffix(".md")
        tmp = md.with_suffix(".md.tmp")
        tmp.write_text(to_markdown(res))
        tmp.replace(md)
        print(f"wrote {md}")
        return
    if args.compile_check:
        ok = all([compile_check(D, w, bm) for D in args.D for w, bm in ((4, 64), (8, 64), (4, 32))])
        raise SystemExit(0 if ok else 1)
    if args.make_plans:
        make_plans(Path(args.make_plans))
    else:
        run(args)


if __name__ == "__main__":
    main()
