"""Fair dense baselines (training/windowed_dense.py): sliding window and StreamingLLM sinks + window, checked
against references written independently (a T x T mask; a per-query loop over cache slots with RoPE applied
at slot positions, as a streaming decoder with a rolling cache computes it)."""
import pytest
import torch
import torch.nn.functional as F

from asa_runtime.config import PRESETS, ModelConfig, PlanConfig
from asa_runtime.model import Transformer, apply_rope
from training.windowed_dense import token_nll_from_hidden, window_attention, windowed_hidden


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    m = Transformer(ModelConfig(**{**PRESETS["test"], "plan": PlanConfig(mode="none"), **kw})).eval()
    with torch.no_grad():                     # sharper attention than the init, so masks matter
        for p in m.parameters():
            p.mul_(4.0)
    return m


def _ids(T, seed=1, V=512):
    return torch.randint(0, V, (1, T), generator=torch.Generator().manual_seed(seed))


def _reference_masked(model, idx, allowed):
    """Dense forward with an explicit (T, T) boolean mask in every layer."""
    B, T = idx.shape
    cfg = model.cfg
    rc = model.rope_table(T)[:T]
    x = model.tok_embeddings(idx)
    for layer in model.layers:
        q, k, v = layer.attention.project(layer.attention_norm(x), rc)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, enable_gqa=True)
        x = x + layer.attention.wo(y.transpose(1, 2).reshape(B, T, cfg.n_head * cfg.head_dim))
        x = x + layer.feed_forward(layer.ffn_norm(x))
    return model.norm(x)


def _reference_streaming(model, idx, window, sinks):
    """Per query: the rolling cache (sinks, then the last `window` tokens) with RoPE at cache-slot positions."""
    B, T = idx.shape
    cfg = model.cfg
    H, Hkv, hs = cfg.n_head, cfg.n_kv_head, cfg.head_dim
    table = model.rope_table(T + sinks + window)
    zero = torch.stack([torch.ones(T, hs // 2), torch.zeros(T, hs // 2)], -1)   # identity rotation
    x = model.tok_embeddings(idx)
    for layer in model.layers:
        q, k, v = layer.attention.project(layer.attention_norm(x), zero)        # un-rotated
        k, v = k.repeat_interleave(H // Hkv, 1), v.repeat_interleave(H // Hkv, 1)
        ys = []
        for i in range(T):
            if i < sinks + window:
                cache = list(range(i + 1))
            else:
                cache = list(range(sinks)) + list(range(i - window + 1, i + 1))
            slots = torch.arange(len(cache))
            qi = apply_rope(q[:, :, i:i + 1], table[slots[-1:]])                 # the query sits in the last slot
            kc = apply_rope(k[:, :, cache], table[slots])
            att = torch.softmax((qi @ kc.transpose(-1, -2)) * hs ** -0.5, -1)
            ys.append(att @ v[:, :, cache])
        y = torch.cat(ys, 2)
        x = x + layer.attention.wo(y.transpose(1, 2).reshape(B, T, H * hs))
        x = x + layer.feed_forward(layer.ffn_norm(x))
    return model.norm(x)


def test_window_covering_the_sequence_is_the_dense_model():
    m, idx = _model(), _ids(37)
    with torch.no_grad():
        h = windowed_hidden(m, idx, window=64, chunk=8)
        assert torch.allclose(m.output(h), m(idx), atol=1e-4)


@pytest.mark.parametrize("window,chunk", [(5, 4), (8, 64), (1, 7)])
def test_sliding_window_equals_masked_reference(window, chunk):
    m, idx = _model(), _ids(41)
    T = idx.shape[1]
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    with torch.no_grad():
        ref = _reference_masked(m, idx, (j <= i) & (j > i - window))
        got = windowed_hidden(m, idx, window, chunk=chunk)
    assert torch.allclose(got, ref, atol=1e-4)
    with torch.no_grad():                      # and it is not the dense model: the window changes the output
        assert not torch.allclose(got, m.norm(_hidden_dense(m, idx)), atol=1e-3)


def _hidden_dense(m, idx):
    B, T = idx.shape
    rc = m.rope_table(T)[:T]
    x = m.tok_embeddings(idx)
    for layer in m.layers:
        x = layer(x, rc, None, None, None)
    return x


@pytest.mark.parametrize("window,sinks,chunk", [(6, 2, 5), (4, 3, 64), (9, 1, 4)])
def test_sinks_plus_window_equals_a_streaming_cache(window, sinks, chunk):
    m, idx = _model(seed=2), _ids(33, seed=3)
    with torch.no_grad():
        ref = _reference_streaming(m, idx, window, sinks)
        got = windowed_hidden(m, idx, window, sinks, chunk=chunk)
    assert torch.allclose(got, ref, atol=1e-4), (got - ref).abs().max()


def test_sinks_change_the_output_only_once_the_cache_is_full():
    m, idx = _model(), _ids(30)
    W, S = 6, 2
    with torch.no_grad():
        a = windowed_hidden(m, idx, W + S)     # a plain window as long as the whole cache
        b = windowed_hidden(m, idx, W, S)
    n = W + S                                   # queries 0 .. S+W-1 see the same keys at the same distances
    assert torch.allclose(a[:, :n], b[:, :n], atol=1e-5)
    assert not torch.allclose(a[:, n:], b[:, n:], atol=1e-3)


def test_window_attention_needs_rotated_queries_for_sinks():
    q = k = v = torch.randn(1, 2, 5, 4)
    with pytest.raises(ValueError, match="q_sink"):
        window_attention(q, k, v, 3, sinks=1)


def test_token_nll_in_chunks_equals_cross_entropy():
    m, idx = _model(), _ids(20)
    y = _ids(20, seed=9)
    with torch.no_grad():
        h = windowed_hidden(m, idx, 100)
        nll = token_nll_from_hidden(m, h, y, chunk=7)
        ref = F.cross_entropy(m(idx)[0], y[0], reduction="none")
    assert nll.shape == (1, 20) and torch.allclose(nll[0], ref, atol=1e-4)
