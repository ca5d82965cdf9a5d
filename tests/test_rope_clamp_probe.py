"""The long-context probe's attention (training/experiments/rope_clamp_probe.py): unclamped it is the model's
own attention; clamped, a far key scores exactly as the same key would at distance w; near keys are untouched."""
import torch

from asa_runtime import model as M
from kernels.reference import sparse_attention_reference as ref_attention
from training.experiments.rope_clamp_probe import clamped_attention

HS, THETA = 16, 10000.0


def _inputs(T=40, H=2, Hkv=1, K=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, h, T, HS, generator=g, dtype=torch.float64) for h in (H, Hkv, Hkv))
    keys = torch.full((1, T, K), -1, dtype=torch.int32)
    for i in range(T):                                   # sinks 0-1, the 4 nearest, one far key: ascending, has i
        row = sorted({0, 1, *range(max(0, i - 3), i + 1), i // 3})
        row = [j for j in row if j <= i][:K]
        keys[0, i, :len(row)] = torch.tensor(row, dtype=torch.int32)
    return q, k, v, keys


def test_unclamped_equals_the_reference():
    q, k, v, keys = _inputs()
    rc = M.rope_cache(q.shape[2], HS, THETA).double()
    want = ref_attention(M.apply_rope(q, rc), M.apply_rope(k, rc), v, keys)
    got = clamped_attention(q, k, v, rc, keys, None, M.rope_cache(1, HS, THETA)[-1:].double())
    assert torch.allclose(got, want, atol=1e-5, rtol=0)          # the probe computes in float32


def test_a_far_key_scores_as_if_w_back_and_near_keys_do_not_change():
    T, w = 40, 5
    q, k, v, keys = _inputs(T=T)
    rc = M.rope_cache(T, HS, THETA).double()
    rc_w = M.rope_cache(w + 1, HS, THETA)[-1:].double()
    got = clamped_attention(q, k, v, rc, keys, w, rc_w)
    # reference per query: every key more than w back is re-placed at position i - w (same raw k and v)
    for i in (3, 20, 39):
        row = keys[0, i][keys[0, i] >= 0].long()
        kpos = torch.where(i - row > w, torch.full_like(row, i - w), row)
        qi = M.apply_rope(q[:, :, i:i + 1], rc[i:i + 1])                       # (1, H, 1, hs)
        kj = M.apply_rope(k[:, :, row], rc[kpos])                               # (1, Hkv, n, hs)
        kj, vj = kj.repeat_interleave(2, 1), v[:, :, row].repeat_interleave(2, 1)
        p = torch.softmax((qi @ kj.transpose(-1, -2)) * HS ** -0.5, -1)
        assert torch.allclose(got[:, :, i:i + 1], p @ vj, atol=1e-5, rtol=0)
    near = torch.tensor([i for i in range(T) if (i - keys[0, i][keys[0, i] >= 0]).max() <= w])
    plain = clamped_attention(q, k, v, rc, keys, None, rc_w)
    assert len(near) and torch.allclose(got[:, :, near], plain[:, :, near], atol=1e-6, rtol=0)
    assert (got[:, :, 39] - plain[:, :, 39]).abs().max() > 1e-3          # row 39 holds keys 0, 1, 13: far
