"""Wide-plan kernels (kernels/triton_wide.py) and the plan split they use (kernels/plan_split.py).

* split + layout (plain torch): always, on the CPU: the mask the layout encodes equals the plan's mask.
* kernels vs the float64 reference on fresh random inputs: on a CUDA GPU (marked gpu: the device machine,
  `python -m pytest -m gpu tests/test_kernels_wide.py`), every case; on the CPU only under Triton's
  interpreter (`TRITON_INTERPRET=1`, Triton installed; skipped otherwise, as in CI), a few small fp32 cases.
Tolerances (relative Frobenius error vs float64): fp32 2e-5 forward / 5e-5 gradients (ieee dots),
fp16 5e-3 / 1e-2, bf16 2e-2 / 3e-2.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from kernel_cases import make_plan, make_qkv, poison_allocator, rel_err
from kernels.plan_split import build_wide_layout, split_rows, wide_mask
from kernels.reference import plan_mask, sparse_attention_reference
from kernels.synthetic_plans import asa_like, random_rows

ON_GPU = torch.cuda.is_available()
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
try:
    import triton  # noqa: F401
    HAVE_TRITON = True
except ImportError:
    HAVE_TRITON = False
DEV = "cuda" if ON_GPU else "cpu"
# kernel tests: GPU-marked on CUDA; on the CPU they run only in the interpreter
kernel = (pytest.mark.gpu if ON_GPU else
          pytest.mark.skipif(not (INTERPRET and HAVE_TRITON),
                             reason="needs CUDA, or Triton with TRITON_INTERPRET=1"))
# GPU cases; ASA_INTERPRET_ALL=1 with TRITON_INTERPRET=1 runs them in the interpreter too (slow; no bf16 there)
gpu_only = (pytest.mark.gpu if ON_GPU else
            pytest.mark.skipif(not (INTERPRET and HAVE_TRITON and os.environ.get("ASA_INTERPRET_ALL") == "1"),
                               reason="needs a CUDA GPU"))

TOL_FWD = {torch.float32: 2e-5, torch.float16: 5e-3, torch.bfloat16: 2e-2}
TOL_BWD = {torch.float32: 5e-5, torch.float16: 1e-2, torch.bfloat16: 3e-2}


def wide_plan(kind: str, B: int, N: int, K: int, seed: int, offset: int = 0, window: int = 24,
              sinks: int = 6) -> torch.Tensor:
    """(B, N, K) plans: "wide" sinks + window + sentence bonds + strided keys (a wide real plan's shape),
    "structured" sinks + window only, "bonds" self + random earlier keys only, "causal", "asa" (narrow)."""
    if kind in ("causal", "asa"):
        return make_plan(kind, B, N, K, seed, offset=offset)
    rows = []
    for b in range(B):
        s = seed * 100 + b
        if kind == "wide":
            rows.append(asa_like(N, K, window=window, sinks=sinks, sent=16, bonded=8, longrange=3,
                                 stride=16, seed=s, offset=offset))
        elif kind == "structured":
            rows.append(asa_like(N, K, window=window, sinks=sinks, bonded=0, longrange=0, seed=s,
                                 offset=offset))
        elif kind == "bonds":
            rows.append(random_rows(N, K, seed=s, offset=offset))
        else:
            raise ValueError(kind)
    return torch.from_numpy(np.stack(rows))


# ------------------------------------------------------------------------------- split + layout (CPU)
@pytest.mark.parametrize("kind,N,K,nk", [("wide", 300, 64, 300), ("structured", 200, 48, 210),
                                         ("bonds", 333, 48, 333), ("causal", 130, 130, 130),
                                         ("asa", 1000, 128, 1000), ("wide", 5, 16, 70)])
def test_wide_layout_encodes_the_plan_exactly(kind, N, K, nk):
    keys = wide_plan(kind, 2, N, K, seed=N + K)
    lay = build_wide_layout(keys, nk, force=True)
    assert torch.equal(wide_mask(lay, N, nk), plan_mask(keys, nk))
    assert (lay.ux_count <= lay.chunks).all()


def test_split_of_known_rows():
    #            sinks 0..2 | bonds 7, 20 | window 30..33
    row = [0, 1, 2, 7, 20, 30, 31, 32, 33, -1, -1]
    full = [0, 1, 2, 3, 4, -1]                          # one run: all of it is the window, nothing extra
    single = [5, -1, -1, -1, -1, -1]                      # only the query itself
    keys = torch.tensor([[row], [full + [-1] * 5], [single + [-1] * 5]], dtype=torch.int32)
    sp = split_rows(keys)
    assert sp.ns.tolist() == [[3], [0], [0]]
    assert sp.lo.tolist() == [[30], [0], [5]] and sp.hi.tolist() == [[33], [4], [5]]
    assert sp.n_extra.tolist() == [[2], [0], [0]]


def test_narrow_plans_stay_narrow_and_wide_plans_go_wide():
    narrow = make_plan("asa", 1, 500, 32, seed=1)               # window 8: ~12 structured keys per row
    assert not build_wide_layout(narrow, 500).wide
    wide = wide_plan("wide", 1, 500, 128, seed=1, window=64, sinks=16)
    lay = build_wide_layout(wide, 500)
    assert lay.wide and lay.stats["structured_mean"] > 48


# ------------------------------------------------------------------------------------------- kernels
if HAVE_TRITON and (ON_GPU or INTERPRET):
    from kernels import triton_wide
else:
    triton_wide = None


def _ref_grads(q, k, v, keys, do):
    q64, k64, v64 = (t.detach().double().requires_grad_(True) for t in (q, k, v))
    ref = sparse_attention_reference(q64, k64, v64, keys)
    return ref, torch.autograd.grad(ref, (q64, k64, v64), do.double())


def _check_fwd_bwd(keys, dtype, Hq, Hkv, D, nk=None, seed=0, attention=None):
    """attention(q, k, v, keys): the wide path (default) or another kernel entry point, against float64."""
    B, N, _ = keys.shape
    nk = nk or N
    keys = keys.to(DEV)
    q, k, v = make_qkv(B, Hq, Hkv, N, nk, D, dtype, DEV, seed=seed, requires_grad=True)
    do = torch.randn(q.shape, generator=torch.Generator().manual_seed(seed + 1)).to(DEV, dtype)
    poison_allocator(DEV)
    out = (attention or triton_wide.sparse_attention_wide)(q, k, v, keys)
    got = torch.autograd.grad(out, (q, k, v), do)
    ref, want = _ref_grads(q, k, v, keys, do)
    assert torch.isfinite(out).all(), "an output element was never written (NaN poison survived)"
    assert rel_err(out, ref) < TOL_FWD[dtype], rel_err(out, ref)
    for name, a, b in zip("qkv", got, want):
        assert torch.isfinite(a).all(), f"d{name} not fully written"
        assert rel_err(a, b) < TOL_BWD[dtype], f"d{name}: {rel_err(a, b)}"


# the interpreter (CPU) runs the small fp32 cases; the GPU all of them
SMALL = [("wide", 150, 48, 2, 1, 32), ("structured", 130, 40, 2, 2, 32), ("bonds", 100, 24, 2, 1, 32)]


@kernel
@pytest.mark.parametrize("kind,N,K,Hq,Hkv,D", SMALL)
def test_small_forward_backward_fp32(kind, N, K, Hq, Hkv, D):
    _check_fwd_bwd(wide_plan(kind, 2, N, K, seed=N), torch.float32, Hq, Hkv, D, seed=N + D)


@kernel
@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("split", [False, True])
def test_gathered_dkdv_fused_or_separate(monkeypatch, fused, split):
    # D <= FUSED_MAX_D: the dq kernel adds the gathered chunks' dk/dv; above it a separate kernel does. Split
    # structured lists: dk/dv are fp32 and the gathered part goes straight into them, else into fp32 buffers
    monkeypatch.setattr(triton_wide, "FUSED_MAX_D", 256 if fused else 0)
    monkeypatch.setattr(triton_wide, "DKDV_CHUNK", 1 if split else 32)
    _check_fwd_bwd(wide_plan("wide", 1, 140, 48, seed=5), torch.float32, 4, 2, 32, seed=5)


@kernel
@pytest.mark.parametrize("N,D,strided", [(1, 32, False), (130, 64, True), (77, 128, False)])
def test_backward_delta_kernel_is_rowsum_of_out_times_dout(N, D, strided):
    # the backward's preprocess (kernels/triton_sparse.bwd_delta, both paths): rowsum(out * dout) in fp32,
    # out in the (B, N, H, D) memory order attention outputs often have
    from kernels.triton_sparse import bwd_delta

    g = torch.Generator().manual_seed(N + D)
    shape = (2, N, 3, D) if strided else (2, 3, N, D)
    out = torch.randn(shape, generator=g).to(DEV)
    out = out.transpose(1, 2) if strided else out
    dout = torch.randn(out.shape, generator=g).to(DEV)
    want = (out.double() * dout.double()).sum(-1)
    got = bwd_delta(out, dout)
    assert got.dtype == torch.float32 and got.shape == (2, 3, N)
    assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-5)


@kernel
@pytest.mark.parametrize("split", [False, True])
def test_narrow_forward_backward_fp32(monkeypatch, split):
    # the narrow tile kernels (kernels/triton_sparse.py) share the backward's delta kernel; split: every
    # key block's list is split over programs (fp32 atomics), as the sink block's is at long N
    from kernels import triton_sparse

    monkeypatch.setattr(triton_sparse, "DKDV_CHUNK", 1 if split else 32)
    _check_fwd_bwd(make_plan("asa", 1, 160, 40, seed=3), torch.float32, 4, 2, 32, seed=3,
                   attention=triton_sparse.sparse_attention_triton)


@kernel
def test_small_split_lists_and_chunked_prefill_fp32(monkeypatch):
    monkeypatch.setattr(triton_wide, "DKDV_CHUNK", 1)           # split structured dk/dv lists, fp32 atomics
    _check_fwd_bwd(wide_plan("wide", 1, 200, 64, seed=8, window=40, sinks=10), torch.float32, 2, 1, 32,
                   seed=8)
    monkeypatch.setattr(triton_wide, "DKDV_CHUNK", 32)
    # the last 40 rows of a 340-token plan against a 360-slot cache (Nq < Nk, tile path)
    _check_fwd_bwd(wide_plan("wide", 1, 40, 64, seed=7, offset=300, window=40, sinks=10), torch.float32,
                   2, 1, 32, nk=360, seed=7)


def _same_layout(g, r, N, nk, keys):
    """The GPU builder's layout equals the reference's: the encoded mask, every per-row / per-block number,
    the union lists and membership words in use (the GPU ones are sized from shapes: wider, read only up to
    ux_count), and the transpose."""
    assert torch.equal(wide_mask(g, N, nk), plan_mask(keys, nk))
    for f in ("ns", "lo", "hi", "sb", "wb", "kb_count", "ux_count"):
        assert torch.equal(getattr(g, f), getattr(r, f)), f
    assert torch.equal(g.structured_lists(), r.structured_lists())
    B, nqb = r.ux_count.shape
    bk = r.block_k
    for b in range(B):
        for qb in range(nqb):
            c = int(r.ux_count[b, qb])
            assert torch.equal(g.ux[b, qb, :c * bk], r.ux[b, qb, :c * bk]), (b, qb)
            assert torch.equal(g.xbits[b, qb, :c], r.xbits[b, qb, :c]), (b, qb)
    g.ensure_transpose()
    r.ensure_transpose()
    assert torch.equal(g.qb_cnt, r.qb_cnt)
    for b in range(B):
        for kb in range(r.qb_cnt.shape[1]):
            c = int(r.qb_cnt[b, kb])
            assert torch.equal(g.qb_idx[b, kb, :c], r.qb_idx[b, kb, :c]), (b, kb)
    assert max(g.stats["chunks"], 1) == r.stats["chunks"] and g.stats["extra_max"] == r.stats["extra_max"]
    assert abs(g.stats["structured_mean"] - r.stats["structured_mean"]) < 1e-9


@kernel
@pytest.mark.parametrize("kind,N,K,nk", [("wide", 300, 64, 300), ("structured", 200, 48, 210),
                                         ("causal", 130, 130, 130), ("wide", 5, 16, 70),
                                         ("bonds", 200, 48, 200), ("asa", 260, 64, 260)])
def test_layout_kernel_matches_the_torch_builder(kind, N, K, nk):
    keys = wide_plan(kind, 2, N, K, seed=N + K).to(DEV)
    g = triton_wide.build_wide_layout_triton(keys, nk, force=True)
    r = build_wide_layout(keys, nk, force=True)
    _same_layout(g, r, N, nk, keys)
    assert g.wide
    # the dispatch decision (force=None: the one sync) matches the reference's
    assert triton_wide.build_wide_layout_triton(keys, nk, force=None).wide == build_wide_layout(keys, nk).wide


@kernel
def test_layout_kernel_dense_irregular_rows_many_chunks():
    # rows whose irregular part is a whole random past: a block's union spans many chunks and key blocks
    # (the sizing bound, chunk_cap, not a guess); rows of the last block partly past Nq
    keys = wide_plan("bonds", 1, 170, 96, seed=3).to(DEV)
    g = triton_wide.build_wide_layout_triton(keys, 170, force=True)
    r = build_wide_layout(keys, 170, force=True)
    assert r.stats["chunks"] >= 2
    _same_layout(g, r, 170, 170, keys)


def _split_stress_rows(N: int, K: int, seed: int, offset: int = 0) -> torch.Tensor:
    """(1, N, K) rows whose split lands anywhere in the row: per row a random sink count, a random window
    length (a trailing run from 1 key to all of the row), random keys between, -1 padding; row widths from
    1 to K, so the window's run crosses the kernel's 32-column chunks at every offset."""
    rng = np.random.default_rng(seed)
    out = np.full((N, K), -1, dtype=np.int32)
    for i in range(N):
        p = offset + i
        w = int(rng.integers(1, min(K, p + 1) + 1))
        win = np.arange(p - w + 1, p + 1)
        room = K - w
        s = int(rng.integers(0, min(room, p - w + 1) + 1)) if room > 0 else 0
        sinks = np.arange(s)
        between = np.arange(s, max(s, p - w))
        m = int(rng.integers(0, min(room - s, len(between)) + 1)) if room > s and len(between) else 0
        mid = rng.choice(between, size=m, replace=False) if m else np.zeros(0, np.int64)
        r = np.unique(np.concatenate([sinks, mid, win]))
        out[i, :len(r)] = r
    return torch.from_numpy(out)[None]


@kernel
@pytest.mark.parametrize("N,K,offset", [(130, 31, 0), (140, 33, 0), (129, 64, 40), (70, 97, 0)])
def test_layout_kernel_split_stress(N, K, offset):
    # the kernel's one-pass split (run counted as the multiplicity of max(key - t)) against the torch
    # builder's two-pass one, on rows whose sinks / window / rest boundaries fall anywhere
    keys = _split_stress_rows(N, K, seed=N + K, offset=offset).to(DEV)
    nk = offset + N
    g = triton_wide.build_wide_layout_triton(keys, nk, force=True)
    r = build_wide_layout(keys, nk, force=True)
    _same_layout(g, r, N, nk, keys)


@kernel
def test_one_layout_shared_by_layers_and_backward():
    # the cache: one build per plan tensor for every layer (forward and backward), transpose added once
    keys = wide_plan("wide", 1, 150, 96, seed=9, window=48, sinks=12).to(DEV)
    triton_wide.WIDE_LAYOUTS.clear()
    triton_wide.WIDE_LAYOUTS.hits = triton_wide.WIDE_LAYOUTS.misses = 0
    a = triton_wide.wide_layout_for(keys, 150, transpose=False)
    assert a.qb_idx is None
    assert a.wide
    b = triton_wide.wide_layout_for(keys, 150, transpose=True)
    assert b is a and a.qb_idx is not None
    assert triton_wide.WIDE_LAYOUTS.misses == 1 and triton_wide.WIDE_LAYOUTS.hits == 1


@gpu_only
@pytest.mark.parametrize("name,K,window,sinks", [("w128", 128, 64, 16), ("w256", 256, 128, 64)])
def test_layout_kernel_on_wide_real_sized_plans(name, K, window, sinks):
    # 4k rows: many chunks per query block, long sink lists in the transpose
    keys = wide_plan("wide", 1, 4096, K, seed=K, window=window, sinks=sinks).to(DEV)
    g = triton_wide.WideLayoutBuilder()(keys, 4096, force=True)
    _same_layout(g, build_wide_layout(keys, 4096, force=True), 4096, 4096, keys)


BF, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32
PLANS = {"wide128": ("wide", 700, 128), "wide256": ("wide", 1000, 256), "structured": ("structured", 333, 96),
         "bonds": ("bonds", 300, 64), "causal": ("causal", 130, 130)}
MHA64, GQA128 = (4, 4, 64), (8, 2, 128)
# every plan kind in bf16 with both head shapes where it matters; fp16 and fp32 on a spread of the rest
CASES = [(BF, "wide128", MHA64), (BF, "wide128", GQA128), (BF, "wide256", MHA64), (BF, "wide256", GQA128),
         (BF, "structured", GQA128), (BF, "bonds", MHA64), (BF, "causal", GQA128),
         (FP16, "wide128", GQA128), (FP16, "structured", MHA64), (FP16, "bonds", MHA64),
         (FP32, "wide128", MHA64), (FP32, "wide256", GQA128), (FP32, "structured", MHA64),
         (FP32, "bonds", GQA128), (FP32, "causal", MHA64)]


@gpu_only
@pytest.mark.parametrize("dtype,plan,heads", CASES, ids=[f"{str(d)[6:]}-{p}-D{h[2]}" for d, p, h in CASES])
def test_forward_backward(dtype, plan, heads):
    (kind, N, K), (Hq, Hkv, D) = PLANS[plan], heads
    window, sinks = (64, 16) if K == 128 else (128, 48)
    _check_fwd_bwd(wide_plan(kind, 2, N, K, seed=N + D, window=window, sinks=sinks), dtype, Hq, Hkv, D,
                   seed=D + K)


@gpu_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_prefill_against_a_longer_cache(dtype):
    # the last 100 rows of a 2000-token plan against a 2100-slot cache: tile path with Nq < Nk
    keys = wide_plan("wide", 2, 100, 128, seed=7, offset=1900, window=64, sinks=16)
    _check_fwd_bwd(keys, dtype, 8, 2, 64, nk=2100, seed=7)


@gpu_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("Nq,Hq,Hkv,D,K", [(1, 8, 8, 64, 128), (4, 8, 2, 128, 256), (16, 32, 8, 64, 256),
                                           (2, 4, 4, 64, 48)])
def test_decode(dtype, Nq, Hq, Hkv, D, K):
    Nt, S = 3000, 3100
    for kind in ("wide", "structured", "bonds"):
        keys = wide_plan(kind, 2, Nq, K, seed=Nq + K, offset=Nt - Nq, window=min(K // 2, 128),
                         sinks=16).to(DEV)
        q, k, v = make_qkv(2, Hq, Hkv, Nq, S, D, dtype, DEV, seed=Nq)
        poison_allocator(DEV)
        out = triton_wide.sparse_attention_auto(q, k, v, keys, D ** -0.5)     # decode of wide rows
        assert torch.isfinite(out).all()
        assert rel_err(out, sparse_attention_reference(q, k, v, keys)) < TOL_FWD[dtype], kind


@gpu_only
def test_backward_with_split_structured_lists(monkeypatch):
    # sinks put key block 0 in every query block's list: force the split + fp32-atomic dk/dv path
    monkeypatch.setattr(triton_wide, "DKDV_CHUNK", 2)
    _check_fwd_bwd(wide_plan("wide", 2, 900, 128, seed=8, window=64, sinks=16), torch.bfloat16, 4, 2, 64,
                   seed=8)


@gpu_only
@pytest.mark.parametrize("D", [64, 128])
def test_autotuning_call_keeps_the_gathered_dkdv(monkeypatch, D):
    # split lists: the dq kernel adds the gathered chunks' dk/dv into dk/dv themselves, so the dk/dv kernel's
    # autotuning (its first call per key) must restore them after each trial, not zero them
    monkeypatch.setattr(triton_wide, "DKDV_CHUNK", 2)
    for name in ("_wide_bwd_dq_kernel", "_wide_bwd_xdkdv_kernel", "_wide_bwd_dkdv_kernel"):
        monkeypatch.setattr(getattr(triton_wide, name), "cache", {})      # this call tunes again
    _check_fwd_bwd(wide_plan("wide", 1, 700, 96, seed=11, window=48, sinks=16), torch.float32, 4, 2, D, seed=11)


_WIDE_KERNELS = ("_wide_fwd_kernel", "_wide_bwd_dq_kernel", "_wide_bwd_dkdv_kernel")


@gpu_only
@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("i", range(len(triton_wide.W_FWD_CONFIGS) if triton_wide else 1))
def test_every_autotune_config_is_correct(monkeypatch, i, split):
    for name in _WIDE_KERNELS:
        kern = getattr(triton_wide, name)
        cfgs = triton_wide.W_FWD_CONFIGS if name == "_wide_fwd_kernel" else triton_wide.TILE_CONFIGS
        monkeypatch.setattr(kern, "configs", [cfgs[i % len(cfgs)]])
        monkeypatch.setattr(kern, "cache", {})
    if split:
        monkeypatch.setattr(triton_wide, "DKDV_CHUNK", 2)
    _check_fwd_bwd(wide_plan("wide", 2, 700, 128, seed=11, window=64, sinks=16), torch.float32, 4, 2, 64,
                   seed=11)


@gpu_only
def test_dispatch_picks_wide_for_wide_plans_and_leaves_narrow_ones_unchanged():
    from kernels import sparse_attention
    from kernels.triton_sparse import sparse_attention_triton

    wide = wide_plan("wide", 1, 800, 128, seed=3, window=64, sinks=16).to(DEV)
    narrow = make_plan("asa", 1, 800, 64, seed=3).to(DEV)
    q, k, v = make_qkv(1, 4, 2, 800, 800, 64, torch.bfloat16, DEV, seed=3)
    a = sparse_attention(q, k, v, wide)
    assert triton_wide.wide_layout_for(wide, 800, transpose=False).wide
    assert rel_err(a, sparse_attention_reference(q, k, v, wide)) < TOL_FWD[torch.bfloat16]
    b = sparse_attention(q, k, v, narrow)
    assert not triton_wide.wide_layout_for(narrow, 800, transpose=False).wide
    assert torch.equal(b, sparse_attention_triton(q, k, v, narrow))          # narrow path, bit for bit
    # decode: every row width takes the narrow decode kernel
    q1 = q[:, :, -1:].contiguous()
    assert torch.equal(sparse_attention(q1, k, v, narrow[:, -1:]),
                       sparse_attention_triton(q1, k, v, narrow[:, -1:]))
    assert torch.equal(sparse_attention(q1, k, v, wide[:, -1:]), sparse_attention_triton(q1, k, v, wide[:, -1:]))
    # training through the dispatch: gradients of a wide plan
    qg, kg, vg = (t.clone().float().requires_grad_(True) for t in (q, k, v))
    do = torch.randn_like(qg)
    got = torch.autograd.grad(sparse_attention(qg, kg, vg, wide), (qg, kg, vg), do)
    _, want = _ref_grads(qg, kg, vg, wide, do)
    for name, x, y in zip("qkv", got, want):
        assert rel_err(x, y) < TOL_BWD[torch.float32], name
