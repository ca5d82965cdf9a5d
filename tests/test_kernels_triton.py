"""Triton sparse attention (forward, backward, decode) against the float64 reference, on a CUDA GPU.

Run on the device machine: python -m pytest -m gpu tests/test_kernels_triton.py
Tolerances (relative Frobenius error vs float64): fp32 2e-5 (ieee dots), bf16 2e-2 forward, 3e-2 gradients.
"""
from __future__ import annotations

import pytest
import torch

from kernel_cases import make_plan, make_qkv, poison_allocator, rel_err

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)
triton_sparse = pytest.importorskip("kernels.triton_sparse")
from kernels.reference import sparse_attention_reference  # noqa: E402

TOL_FWD = {torch.float32: 2e-5, torch.bfloat16: 2e-2}
TOL_BWD = {torch.float32: 5e-5, torch.bfloat16: 3e-2}
DEV = "cuda"


def _ref_grads(q, k, v, keys, do):
    q64, k64, v64 = (t.detach().double().requires_grad_(True) for t in (q, k, v))
    ref = sparse_attention_reference(q64, k64, v64, keys)
    return ref, torch.autograd.grad(ref, (q64, k64, v64), do.double())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind,N,K", [("asa", 200, 32), ("asa", 1000, 128), ("random", 333, 48),
                                      ("causal", 130, 130)])
@pytest.mark.parametrize("Hq,Hkv,D", [(4, 4, 64), (8, 2, 128), (3, 1, 32)])
def test_forward_backward(dtype, kind, N, K, Hq, Hkv, D):
    keys = make_plan(kind, 2, N, K, seed=N + D).to(DEV)
    q, k, v = make_qkv(2, Hq, Hkv, N, N, D, dtype, DEV, seed=D + K, requires_grad=True)
    do = torch.randn(q.shape, device=DEV, dtype=dtype)
    poison_allocator(DEV)
    out = triton_sparse.sparse_attention_triton(q, k, v, keys)
    got = torch.autograd.grad(out, (q, k, v), do)
    ref, want = _ref_grads(q, k, v, keys, do)
    assert torch.isfinite(out).all(), "an output element was never written (NaN poison survived)"
    assert rel_err(out, ref) < TOL_FWD[dtype]
    for name, a, b in zip("qkv", got, want):
        assert torch.isfinite(a).all(), f"d{name} not fully written"
        assert rel_err(a, b) < TOL_BWD[dtype], f"d{name}: {rel_err(a, b)}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("Nq,Hq,Hkv,D", [(1, 8, 8, 64), (4, 8, 2, 128), (16, 32, 8, 64), (100, 4, 4, 64)])
def test_decode_and_chunked_prefill(dtype, Nq, Hq, Hkv, D):
    # the last Nq rows of a 3000-token plan against a 3100-slot cache (extra slots never planned)
    Nt, S, K = 3000, 3100, 96
    keys = make_plan("asa", 2, Nq, K, seed=Nq, offset=Nt - Nq).to(DEV)
    q, k, v = make_qkv(2, Hq, Hkv, Nq, S, D, dtype, DEV, seed=Nq)
    poison_allocator(DEV)
    out = triton_sparse.sparse_attention_triton(q, k, v, keys)   # Nq <= 16: decode kernel; 100: tiles
    ref = sparse_attention_reference(q, k, v, keys)
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) < TOL_FWD[dtype]


def test_dispatch_auto_uses_triton_and_matches_torch():
    from kernels import sparse_attention

    keys = make_plan("asa", 1, 500, 64, seed=3).to(DEV)
    q, k, v = make_qkv(1, 4, 2, 500, 500, 64, torch.bfloat16, DEV, seed=3)
    a = sparse_attention(q, k, v, keys)
    b = sparse_attention(q, k, v, keys, backend="torch")
    assert rel_err(a, b) < 2e-2


def test_layout_cache_sees_a_new_plan():
    keys = make_plan("asa", 1, 300, 32, seed=1).to(DEV)
    q, k, v = make_qkv(1, 2, 2, 300, 300, 64, torch.float32, DEV, seed=1)
    a = triton_sparse.sparse_attention_triton(q, k, v, keys)
    keys2 = make_plan("random", 1, 300, 32, seed=2).to(DEV)
    b = triton_sparse.sparse_attention_triton(q, k, v, keys2)
    assert rel_err(a, sparse_attention_reference(q, k, v, keys)) < TOL_FWD[torch.float32]
    assert rel_err(b, sparse_attention_reference(q, k, v, keys2)) < TOL_FWD[torch.float32]


@pytest.mark.parametrize("kind,N,K", [("asa", 700, 48), ("random", 300, 64)])
def test_gpu_layout_builder_matches_torch_builder(kind, N, K):
    from kernels.layout import build_layout

    keys = make_plan(kind, 2, N, K, seed=5).to(DEV)
    a = build_layout(keys, N + 10)
    b = triton_sparse.build_layout_triton(keys, N + 10)
    assert torch.equal(a.kb_count, b.kb_count)
    U = a.kb.shape[-1]
    assert torch.equal(a.kb, b.kb[..., :U]) and (b.kb[..., U:] == -1).all()
    for bb in range(2):                                    # compare only written (row, slot) words
        for i in range(N):
            c = int(a.kb_count[bb, i // 64])
            assert torch.equal(a.bits[bb, i, :c], b.bits[bb, i, :c])
    assert torch.equal(a.qb_ptr, b.qb_ptr)


def test_backward_with_split_key_block_lists(monkeypatch):
    # sinks make key block 0 appear in every query block's list; force the split + fp32-atomic dk/dv path
    monkeypatch.setattr(triton_sparse, "DKDV_CHUNK", 2)
    keys = make_plan("asa", 2, 700, 48, seed=8).to(DEV)
    q, k, v = make_qkv(2, 4, 2, 700, 700, 64, torch.bfloat16, DEV, seed=8, requires_grad=True)
    do = torch.randn(q.shape, device=DEV, dtype=q.dtype)
    got = torch.autograd.grad(triton_sparse.sparse_attention_triton(q, k, v, keys), (q, k, v), do)
    _, want = _ref_grads(q, k, v, keys, do)
    for name, a, b in zip("qkv", got, want):
        assert rel_err(a, b) < TOL_BWD[torch.bfloat16], f"d{name}"


_TILE_KERNELS = ("_fwd_kernel", "_bwd_dq_kernel", "_bwd_dkdv_kernel")


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("i", range(len(triton_sparse.TILE_CONFIGS)))
def test_every_autotune_config_is_correct(monkeypatch, i, split):
    # autotuning may pick any config (timing noise), so each one alone must match the reference
    for name in _TILE_KERNELS:
        kern = getattr(triton_sparse, name)
        monkeypatch.setattr(kern, "configs", [triton_sparse.TILE_CONFIGS[i]])
        monkeypatch.setattr(kern, "cache", {})
    monkeypatch.setattr(triton_sparse._decode_kernel, "configs", [triton_sparse.DECODE_CONFIGS[i]])
    monkeypatch.setattr(triton_sparse._decode_kernel, "cache", {})
    if split:
        monkeypatch.setattr(triton_sparse, "DKDV_CHUNK", 2)
    keys = make_plan("asa", 2, 700, 48, seed=11).to(DEV)
    q, k, v = make_qkv(2, 4, 2, 700, 700, 64, torch.float32, DEV, seed=11, requires_grad=True)
    do = torch.randn(q.shape, device=DEV, dtype=q.dtype)
    poison_allocator(DEV)
    out = triton_sparse.sparse_attention_triton(q, k, v, keys)
    got = torch.autograd.grad(out, (q, k, v), do)
    ref, want = _ref_grads(q, k, v, keys, do)
    assert rel_err(out, ref) < TOL_FWD[torch.float32]
    for name, a, b in zip("qkv", got, want):
        assert rel_err(a, b) < TOL_BWD[torch.float32], f"config {i}: d{name} {rel_err(a, b)}"
    keys = make_plan("asa", 2, 4, 96, seed=12, offset=2000).to(DEV)      # decode: chunks of 32/64/128
    q, k, v = make_qkv(2, 8, 2, 4, 2100, 128, torch.float32, DEV, seed=12)
    out = triton_sparse.sparse_attention_triton(q, k, v, keys)
    assert rel_err(out, sparse_attention_reference(q, k, v, keys)) < TOL_FWD[torch.float32]


def test_autotuning_does_not_double_count_atomic_dkdv(monkeypatch):
    # the split dk/dv path adds into zeroed buffers; tuning runs the kernel once per config and timing rep,
    # so it must zero them before each run and before the real one (reset_to_zero)
    monkeypatch.setattr(triton_sparse, "DKDV_CHUNK", 2)
    monkeypatch.setattr(triton_sparse._bwd_dkdv_kernel, "cache", {})     # tuning happens in this call
    keys = make_plan("asa", 1, 500, 48, seed=13).to(DEV)
    q, k, v = make_qkv(1, 4, 1, 500, 500, 32, torch.float32, DEV, seed=13, requires_grad=True)
    do = torch.randn(q.shape, device=DEV, dtype=q.dtype)
    got = torch.autograd.grad(triton_sparse.sparse_attention_triton(q, k, v, keys), (q, k, v), do)
    assert triton_sparse._bwd_dkdv_kernel.cache, "no tuning happened"
    _, want = _ref_grads(q, k, v, keys, do)
    for name, a, b in zip("qkv", got, want):
        assert rel_err(a, b) < TOL_BWD[torch.float32], f"d{name}: {rel_err(a, b)}"


def test_layers_share_one_layout_and_inference_plans_work():
    # every layer passes the same plan tensor: one build; plans made under inference_mode (the runtime's
    # prefill) have no version counter, which the cache must not read
    keys = make_plan("asa", 1, 300, 32, seed=14).to(DEV)
    q, k, v = make_qkv(1, 2, 2, 300, 300, 64, torch.float32, DEV, seed=14)
    misses = triton_sparse.LAYOUTS.misses
    for _ in range(3):
        out = triton_sparse.sparse_attention_triton(q, k, v, keys)
    assert triton_sparse.LAYOUTS.misses == misses + 1
    with torch.inference_mode():
        ikeys = make_plan("asa", 1, 300, 32, seed=15).to(DEV)
        out = triton_sparse.sparse_attention_triton(q, k, v, ikeys)
        again = triton_sparse.sparse_attention_triton(q, k, v, ikeys)
    assert torch.equal(out, again)
    assert rel_err(out, sparse_attention_reference(q, k, v, ikeys)) < TOL_FWD[torch.float32]
