"""int8 weight-only quantization: per-channel scales, both matmul paths, whole-model replacement."""
import pytest
import torch
import torch.nn.functional as F
from conftest import PARAGRAPHS, WindowPlanner
from torch import nn

import asa_runtime.quantize as q
from asa_runtime.generate import Session, load


def test_quantize_weight_per_channel():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 40, generator=g) * torch.logspace(-3, 1, 16)[:, None]   # rows of very different scale
    qw, s = q.quantize_weight(w)
    assert qw.dtype == torch.int8 and s.shape == (16,)
    assert torch.equal(qw.abs().amax(1), torch.full((16,), 127, dtype=torch.int8))   # each row uses the range
    err = (qw.float() * s[:, None] - w).abs()
    assert torch.all(err <= s[:, None] / 2 + 1e-7)                                   # round-to-nearest bound


@pytest.mark.parametrize("int8pack", [True, False])
def test_int8_linear_matches_dequantized(monkeypatch, int8pack):
    if int8pack and not q._has_int8pack_mm():
        pytest.skip("torch._weight_int8pack_mm not available in this build")
    monkeypatch.setattr(q, "_INT8PACK", int8pack)
    g = torch.Generator().manual_seed(1)
    lin = nn.Linear(48, 24, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(24, 48, generator=g))
    ql = q.Int8Linear(lin.weight)
    x = torch.randn(3, 5, 48, generator=g)
    y = ql(x)
    assert y.shape == (3, 5, 24)
    torch.testing.assert_close(y, F.linear(x, ql.dequantized()), atol=1e-4, rtol=1e-4)
    # and close to the float layer: relative error of a few tenths of a percent
    rel = (y - lin(x)).norm() / lin(x).norm()
    assert rel < 0.01


def test_quantize_model_replaces_linears(tiny_checkpoint):
    ref = load(tiny_checkpoint, planner=WindowPlanner())
    lm = load(tiny_checkpoint, planner=WindowPlanner(), quantize="int8")
    assert not any(isinstance(m, nn.Linear) for m in lm.model.modules())
    assert isinstance(lm.model.output, q.Int8Linear)                         # tied head: own int8 copy
    assert q.weight_bytes(lm.model) < 0.6 * q.weight_bytes(ref.model)
    ids = ref.tokenizer.encode(PARAGRAPHS[0])[:40]
    a = Session(ref, ctx_size=64).feed(ids, all_logits=True)
    b = Session(lm, ctx_size=64).feed(ids, all_logits=True)
    assert ((a - b).norm() / a.norm()) < 0.1            # random weights x5 amplify; trained models do better
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.8


def test_unknown_scheme():
    with pytest.raises(ValueError, match="unknown quantization"):
        q.quantize_model(nn.Sequential(nn.Linear(2, 2)), "int3")


def test_f16_linear_is_the_float_layer_to_half_precision():
    g = torch.Generator().manual_seed(2)
    lin = nn.Linear(64, 40, bias=True)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(40, 64, generator=g))
    fl = q.F16Linear(lin.weight, lin.bias)
    assert fl.weight_f16.dtype == torch.float16 and q.weight_bytes(fl) < 0.55 * q.weight_bytes(lin)
    for x in (torch.randn(64, generator=g), torch.randn(1, 1, 64, generator=g), torch.randn(3, 7, 64, generator=g)):
        y = fl(x)
        assert y.shape == x.shape[:-1] + (40,) and y.dtype == torch.float32
        ref = F.linear(x, lin.weight.half().float(), lin.bias)          # the same weights, float32 math
        rel = ((y - ref).norm() / ref.norm()).item()
        # many rows: float32 math on the fp16 weights (exact up to summation order); one row: fp16 math
        assert rel < (1e-3 if x.numel() == 64 else 1e-6), (x.shape, rel)


def test_f16_model_decodes_as_its_prefill(tiny_checkpoint):
    ref = load(tiny_checkpoint, planner=WindowPlanner())
    lm = load(tiny_checkpoint, planner=WindowPlanner(), quantize="f16")
    assert not any(isinstance(m, nn.Linear) for m in lm.model.modules())
    assert isinstance(lm.model.output, q.F16Linear)                          # tied head: own fp16 copy
    f16 = [m for m in lm.model.modules() if isinstance(m, q.F16Linear)]
    fp32 = [m for m in ref.model.modules() if isinstance(m, nn.Linear)]
    assert sum(m.weight_f16.nbytes for m in f16) * 2 == sum(m.weight.nbytes for m in fp32)   # half the bytes
    assert lm.model.tok_embeddings.weight.dtype == torch.float32           # a lookup: stays float32
    ids = ref.tokenizer.encode(PARAGRAPHS[0])[:40]
    a = Session(ref, ctx_size=64).feed(ids, all_logits=True)
    b = Session(lm, ctx_size=64).feed(ids, all_logits=True)
    assert ((a - b).norm() / a.norm()) < 1e-2
    s = Session(lm, ctx_size=64)
    s.feed(ids[:20])
    steps = torch.stack([s.step(t) for t in ids[20:]])                       # one-row products in fp16
    assert ((steps[:-1] - b[20:-1]).norm() / b[20:-1].norm()) < 1e-2
    assert (steps[:-1].argmax(-1) == b[20:-1].argmax(-1)).float().mean() > 0.9


def test_cli_offers_every_scheme():
    from asa_runtime.cli import main

    opts = {p.name: p for p in main.commands["generate"].params}
    assert tuple(opts["quantize"].type.choices) == q.SCHEMES
