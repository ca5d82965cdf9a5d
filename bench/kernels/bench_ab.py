"""Same-run A/B of two versions of a kernel file: forward, forward+backward (and, narrow path, decode), timed
alternately in one process on the same inputs, with the outputs compared. Writes JSON.

    python bench/kernels/bench_ab.py --baseline OLD_triton_sparse.py --out results/ab.json [--N 4096 16384] [--S 32768 131072]
    python bench/kernels/bench_ab.py --path wide --baseline OLD_triton_wide.py --plans runs/wide_plans \
        --out results/ab_wide.json [--N 16384] [--plan-names w128 w256 k64]

OLD_*.py is e.g. `git show <commit>:kernels/triton_sparse.py` saved outside the tracked tree; it is loaded as a
module of the `kernels` package (its relative imports resolve to today's files: an old triton_wide.py gets
today's triton_sparse.py helpers, so an A/B of the wide path compares the wide kernels and their host code).
Narrow plans: the synthetic ASA-like plans of bench_sparse.py (kernels/synthetic_plans.py, K=128); wide plans:
bench_wide.py's real plans (`bench_wide.py --make-plans`): the forward on a prebuilt layout, the forward with
its layout, and fwd+bwd with the layout built per call by each version (as in bench_wide's "w+lay"). Timings: triton.testing.do_bench medians (ms; decode:
CUDA-graph replays); each version measured twice, alternately, and the lower median kept. "first_call_s" is
the first call's wall time: compilation, plus autotuning where a version autotunes.
"""
from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
import kernels  # noqa: E402
import kernels.triton_sparse as new  # noqa: E402
from kernels.synthetic_plans import asa_like  # noqa: E402

import triton  # noqa: E402

DEV, DT = "cuda", torch.bfloat16


def load_baseline(path: str, name: str = "kernels._baseline_triton_sparse"):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    mod.__package__ = kernels.__name__
    sys.modules[spec.name] = mod                    # Triton reads kernels' source and globals through it
    spec.loader.exec_module(mod)
    return mod


def plan(N, K, offset=0):
    rows = asa_like(N, K, window=64, sinks=4, sent=40, bonded=48, longrange=2, seed=0, offset=offset)
    return torch.from_numpy(rows).to(DEV)[None]                               # (1, N, K)


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def ab(fns, graph=False):
    """fns: {name: zero-arg callable}. First-call wall time, then the lower of two alternating medians."""
    res = {name: {} for name in fns}
    for name, fn in fns.items():
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        res[name]["first_call_s"] = time.perf_counter() - t0
    for _ in range(2):
        for name, fn in fns.items():
            if graph:
                t = triton.testing.do_bench_cudagraph(fn, rep=50, return_mode="median")
            else:
                t = triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
            res[name]["ms"] = min(res[name].get("ms", math.inf), float(t))
    return res


def fwd_bwd(mod, q, k, v, do, lay, s):
    o, lse = mod.sparse_attention_fwd(q, k, v, lay, s)
    return mod.sparse_attention_bwd(q, k, v, o, lse, do, lay, s)


def best_configs():
    return {n: str(getattr(new, n).best_config) for n in ("_fwd_kernel", "_bwd_dq_kernel", "_bwd_dkdv_kernel",
                                                          "_decode_kernel")
            if getattr(getattr(new, n), "best_config", None) is not None}


def wide_rows(args, old):
    """The wide path (kernels/triton_wide.py) on bench_wide's real plans: fwd+bwd with the layout per call."""
    import kernels.triton_wide as new_wide
    sys.path.insert(0, str(ROOT / "bench" / "kernels"))
    from bench_wide import load_plan, NS

    mods = {"old": old, "new": new_wide}
    rows = []
    H = args.H
    for name in args.plan_names:
        for N in args.N:
            src = min(n for n in NS if n >= N)
            keys = torch.from_numpy(load_plan(Path(args.plans) / name / f"plan_{src}.npz")[:N]).to(DEV)[None]
            for D in (64, 128):
                q, k, v = (torch.randn(1, H, N, D, device=DEV, dtype=DT) for _ in range(3))
                do = torch.randn_like(q)
                s = 1 / math.sqrt(D)

                def fb(m):
                    lay = m.build_wide_layout_triton(keys, N, transpose=True, force=True)
                    o, lse = m.wide_attention_fwd(q, k, v, lay, s)
                    return m.wide_attention_bwd(q, k, v, o, lse, do, lay, s)

                def fwd_lay(m):
                    lay = m.build_wide_layout_triton(keys, N, force=True)
                    return m.wide_attention_fwd(q, k, v, lay, s)[0]

                lays = {m: mods[m].build_wide_layout_triton(keys, N, force=True) for m in mods}
                fwd = {m: functools.partial(mods[m].wide_attention_fwd, q, k, v, lays[m], s) for m in mods}
                outs = {m: fwd[m]()[0] for m in mods}
                rows.append(dict(case="wide fwd", plan=name, N=N, D=D, H=H,        # GPU time: graph replays
                                 rel_new_vs_old=rel(outs["new"], outs["old"]), **ab(fwd, graph=True)))
                print(rows[-1], flush=True)
                fl = {m: functools.partial(fwd_lay, mods[m]) for m in mods}
                rows.append(dict(case="wide fwd+layout", plan=name, N=N, D=D, H=H, rel_new_vs_old=0.0, **ab(fl)))
                print(rows[-1], flush=True)
                if args.forward_only:
                    continue
                fns = {m: functools.partial(fb, mods[m]) for m in mods}
                g = {m: fns[m]() for m in mods}
                rows.append(dict(case="wide fwd+bwd+layout", plan=name, N=N, D=D, H=H,
                                 rel_new_vs_old=max(rel(a, b) for a, b in zip(g["new"], g["old"])), **ab(fns)))
                print(rows[-1], flush=True)
                del q, k, v, do, g
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--path", choices=["narrow", "wide"], default="narrow",
                    help="which kernel file the baseline is: triton_sparse.py (narrow) or triton_wide.py (wide)")
    ap.add_argument("--plans", default="runs/wide_plans", help="wide: bench_wide.py --make-plans folder")
    ap.add_argument("--plan-names", nargs="+", default=["w128", "w256", "k64"])
    ap.add_argument("--K", type=int, default=128)
    ap.add_argument("--H", type=int, default=8)
    ap.add_argument("--N", type=int, nargs="+", default=None,
                    help="prefill lengths (narrow: 4096 16384, fwd+bwd at the largest; wide: 16384)")
    ap.add_argument("--forward-only", action="store_true", help="wide: forward cases only")
    ap.add_argument("--S", type=int, nargs="+", default=[32768, 131072], help="decode cache lengths")
    args = ap.parse_args()
    if args.path == "wide":
        args.N = args.N or [16384]
        old = load_baseline(args.baseline, "kernels._baseline_triton_wide")
        rows = wide_rows(args, old)
        import kernels.triton_wide as new_wide
        return write(args, rows, {"_wide_fwd_kernel": str(getattr(new_wide._wide_fwd_kernel, "best_config", None))})
    args.N = args.N or [4096, 16384]
    old = load_baseline(args.baseline)
    mods = {"old": old, "new": new}
    rows = []
    H, K = args.H, args.K
    for N in args.N:
        keys = plan(N, K)
        for D in (64, 128):
            q, k, v = (torch.randn(1, H, N, D, device=DEV, dtype=DT) for _ in range(3))
            do = torch.randn_like(q)
            s = 1 / math.sqrt(D)
            lays = {m: mods[m].build_layout_triton(keys, N, transpose=True) for m in mods}
            fwd = {m: functools.partial(mods[m].sparse_attention_fwd, q, k, v, lays[m], s) for m in mods}
            outs = {m: fwd[m]()[0] for m in mods}
            rows.append(dict(case="fwd", N=N, D=D, H=H, K=K, rel_new_vs_old=rel(outs["new"], outs["old"]),
                             **ab(fwd)))
            print(rows[-1], flush=True)
            if N == max(args.N):
                fb = {m: functools.partial(fwd_bwd, mods[m], q, k, v, do, lays[m], s) for m in mods}
                g = {m: fb[m]() for m in mods}
                rows.append(dict(case="fwd+bwd", N=N, D=D, H=H, K=K,
                                 rel_new_vs_old=max(rel(a, b) for a, b in zip(g["new"], g["old"])), **ab(fb)))
                print(rows[-1], flush=True)
            del q, k, v, do
        lay = {m: functools.partial(mods[m].build_layout_triton, keys, N, transpose=False) for m in mods}
        rows.append(dict(case="layout", N=N, K=K, **ab(lay)))
        print(rows[-1], flush=True)
    for S in args.S:
        keys = plan(1, K, offset=S - 1)
        for D in (64, 128):
            q = torch.randn(1, 32, 1, D, device=DEV, dtype=DT)
            k, v = (torch.randn(1, 8, S, D, device=DEV, dtype=DT) for _ in range(2))
            dec = {m: functools.partial(mods[m].sparse_attention_decode, q, k, v, keys, 1 / math.sqrt(D))
                   for m in mods}
            outs = {m: dec[m]() for m in mods}
            rows.append(dict(case="decode", S=S, D=D, H=32, Hkv=8, K=K,
                             rel_new_vs_old=rel(outs["new"], outs["old"]), **ab(dec, graph=True)))
            print(rows[-1], flush=True)
            del k, v
    write(args, rows, best_configs())


def write(args, rows, configs):
    res = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
               baseline=args.baseline, path=args.path, rows=rows, new_best_configs_last=configs)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=1))
    tmp.replace(out)
    for r in rows:
        o, n = r["old"]["ms"], r["new"]["ms"]
        shape = " ".join(f"{k}={r[k]}" for k in ("plan", "N", "S", "D") if k in r)
        print(f"{r['case']:8s} {shape:24s} old {o:.4f} ms  new {n:.4f} ms  new/old {n / o:.2f}  "
              f"first call old {r['old']['first_call_s']:.2f}s new {r['new']['first_call_s']:.2f}s", flush=True)


if __name__ == "__main__":
    main()
