"""Sparse attention on the CPU: the torch path (any device) and the MLX path against the dense reference.

Tolerances (relative Frobenius error against a float64 reference): fp64 1e-10, fp32 1e-5, bf16 2e-2.
"""
from __future__ import annotations

import pytest
import torch

from kernels import sparse_attention
from kernels.layout import build_layout
from kernels.reference import plan_mask, sparse_attention_reference
from kernels.torch_sparse import sparse_attention_torch

from kernel_cases import make_plan, make_qkv, rel_err

TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 2e-2}


@pytest.mark.parametrize("kind", ["asa", "random", "causal"])
@pytest.mark.parametrize("Hq,Hkv,D", [(2, 2, 16), (4, 1, 32), (6, 2, 64)])
def test_torch_forward_matches_reference(kind, Hq, Hkv, D):
    N, K = 70, (70 if kind == "causal" else 24)
    keys = make_plan(kind, 2, N, K, seed=Hq + D)
    q, k, v = make_qkv(2, Hq, Hkv, N, N, D, torch.float32, seed=D)
    out = sparse_attention_torch(q, k, v, keys, chunk=16)          # several chunks, a ragged last one
    ref = sparse_attention_reference(q, k, v, keys)
    assert out.shape == q.shape and torch.isfinite(out).all()
    assert rel_err(out, ref) < TOL[torch.float32]


def test_causal_plan_equals_dense_sdpa():
    keys = make_plan("causal", 1, 40, 40, seed=1)
    q, k, v = make_qkv(1, 3, 3, 40, 40, 16, torch.float64, seed=3)
    out = sparse_attention(q, k, v, keys)
    dense = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert rel_err(out, dense) < TOL[torch.float64]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_torch_gradients_match_float64_reference(dtype):
    keys = make_plan("asa", 2, 50, 16, seed=7)
    q, k, v = make_qkv(2, 4, 2, 50, 50, 32, dtype, seed=11, requires_grad=True)
    do = torch.randn(q.shape, generator=torch.Generator().manual_seed(5)).to(dtype)
    out = sparse_attention_torch(q, k, v, keys, chunk=20)
    got = torch.autograd.grad(out, (q, k, v), do)
    q64, k64, v64 = (t.detach().double().requires_grad_(True) for t in (q, k, v))
    ref = sparse_attention_reference(q64, k64, v64, keys)
    want = torch.autograd.grad(ref, (q64, k64, v64), do.double())
    tol = TOL[dtype] * (10 if dtype == torch.bfloat16 else 1)
    for name, a, b in zip("qkv", got, want):
        assert a.dtype == dtype
        assert rel_err(a, b) < max(tol, 1e-9), f"d{name}"


def test_torch_gradcheck_float64():
    keys = make_plan("random", 1, 9, 5, seed=2)
    q, k, v = make_qkv(1, 2, 1, 9, 9, 4, torch.float64, seed=2, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: sparse_attention_torch(a, b, c, keys, chunk=4), (q, k, v))


def test_decode_and_chunked_prefill_against_longer_cache():
    # queries are the last rows of a 90-token sequence; the cache holds 128 slots (38 never planned)
    full = make_plan("asa", 1, 90, 24, seed=4)
    q, k, v = make_qkv(1, 4, 2, 90, 128, 32, torch.float32, seed=4)
    for s in (89, 60):                                              # one decode step, then a 30-query chunk
        out = sparse_attention(q[:, :, s:], k, v, full[:, s:])
        ref = sparse_attention_reference(q[:, :, s:], k, v, full[:, s:])
        assert rel_err(out, ref) < TOL[torch.float32]


def test_torch_memory_is_per_chunk():
    # a chunk's gathered keys are (B, Hkv, chunk, K, D); the plan never becomes an N x N matrix
    N, K = 4096, 8
    keys = make_plan("random", 1, N, K, seed=0)
    q, k, v = make_qkv(1, 1, 1, N, N, 8, torch.float32)
    out = sparse_attention_torch(q, k, v, keys, chunk=256)
    i = 3000
    ref = sparse_attention_reference(q[:, :, i:i + 1], k, v, keys[:, i:i + 1])
    assert rel_err(out[:, :, i:i + 1], ref) < TOL[torch.float32]


def test_layout_covers_plan_exactly():
    keys = make_plan("asa", 2, 300, 20, seed=9)
    nk = 333
    lay = build_layout(keys, nk, block_q=64, block_k=64)
    mask = plan_mask(keys, nk)                                      # (B, Nq, Nk)
    rebuilt = torch.zeros_like(mask)
    for b in range(2):
        for i in range(300):
            qb = i // 64
            for j in range(int(lay.kb_count[b, qb])):
                kb, w = int(lay.kb[b, qb, j]), int(lay.bits[b, i, j])
                for t in range(64):
                    if (w >> t) & 1:
                        rebuilt[b, i, kb * 64 + t] = True
    assert torch.equal(rebuilt, mask)
    # transposed CSR names each (query block, key block) tile once, with the right slot
    for b in range(2):
        seen = 0
        for kb in range(lay.qb_ptr.shape[1] - 1):
            for i in range(int(lay.qb_ptr[b, kb]), int(lay.qb_ptr[b, kb + 1])):
                qb, j = int(lay.qb_idx[b, i]), int(lay.qb_slot[b, i])
                assert int(lay.kb[b, qb, j]) == kb
                seen += 1
        assert seen == int(lay.kb_count[b].sum())


def test_unknown_backend_is_rejected():
    keys = make_plan("asa", 1, 4, 4, seed=0)
    q, k, v = make_qkv(1, 1, 1, 4, 4, 8, torch.float32)
    with pytest.raises(ValueError, match="unknown sparse attention backend"):
        sparse_attention(q, k, v, keys, backend="cuda-magic")


def test_mlx_matches_reference():
    mx = pytest.importorskip("mlx.core")
    import numpy as np

    from kernels.mlx_sparse import sparse_attention_mlx, sparse_attention_mlx_take

    keys = make_plan("asa", 2, 80, 24, seed=6)
    q, k, v = make_qkv(2, 4, 2, 80, 96, 32, torch.float32, seed=6)
    args = [mx.array(t.numpy()) for t in (q, k, v, keys)]
    ref = sparse_attention_reference(q, k, v, keys)
    for out in (sparse_attention_mlx(*args, chunk=32), sparse_attention_mlx_take(*args)):
        assert out.shape == tuple(q.shape)
        assert rel_err(torch.from_numpy(np.array(out)), ref) < TOL[torch.float32]
