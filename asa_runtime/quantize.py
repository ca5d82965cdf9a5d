"""Weight-only quantization of nn.Linear layers: int8 (4x smaller weights than float32) and f16.

f16: weights stored in float16, activations in the model's dtype (float32 on CPU), as llama.cpp runs an F16
GGUF. A one-row decode multiplies in float16 (torch's fp16 matrix-vector product reads half the bytes of fp32;
the CPU decode is memory-bound: 2.5x the fp32 tokens/s measured, bench/latency/README.md); prefill chunks
convert the weight to the activations' dtype and use that matmul (fp16 GEMM is slow on CPUs). Lossless for a
checkpoint stored in float16, as asa-small is.


Symmetric, per output channel: w ~= q * s with q int8 in [-127, 127] and s = max|w_row| / 127.
Activations stay in floating point. On CPU a few rows (decode) run through torch._weight_int8pack_mm (int8
weights, float activations) when this torch build has it; otherwise, and for prefill chunks, the weight is
dequantized in forward. int8 saves memory; on the machines measured so far it is not faster than float32.
A tied output head gets its own int8 copy; the embedding table stays float (it is a lookup, not a matmul).
The perplexity cost is measured by bench/latency/bench_quant.py.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SCHEMES = ("int8", "f16")


def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, in) float -> (int8 (out, in), float scales (out,))."""
    wf = w.detach().float()
    scales = wf.abs().amax(dim=1).clamp_min(1e-12) / 127.0                 # (out,)
    q = torch.round(wf / scales[:, None]).clamp_(-127, 127).to(torch.int8)  # (out, in)
    return q, scales


def _has_int8pack_mm() -> bool:
    if not hasattr(torch, "_weight_int8pack_mm"):
        return False
    try:
        x = torch.ones(1, 32)
        q = torch.ones(8, 32, dtype=torch.int8)
        out = torch._weight_int8pack_mm(x, q, torch.ones(8))
        return bool(torch.allclose(out, torch.full((1, 8), 32.0)))
    except (RuntimeError, NotImplementedError):
        return False


_INT8PACK: bool | None = None


class Int8Linear(nn.Module):
    """Drop-in for a bias-free nn.Linear holding int8 weights and per-output-channel scales."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        q, s = quantize_weight(weight)
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.register_buffer("weight_int8", q)
        self.register_buffer("scales", s.to(weight.dtype if weight.is_floating_point() else torch.float32))
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    @classmethod
    def from_parts(cls, weight_int8: torch.Tensor, scales: torch.Tensor) -> Int8Linear:
        """An Int8Linear over already quantized weights (e.g. several layers' rows concatenated)."""
        m = cls.__new__(cls)
        nn.Module.__init__(m)
        m.out_features, m.in_features = weight_int8.shape
        m.register_buffer("weight_int8", weight_int8)
        m.register_buffer("scales", scales)
        m.bias = None
        return m

    def dequantized(self) -> torch.Tensor:
        return self.weight_int8.to(self.scales.dtype) * self.scales[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        global _INT8PACK
        rows = x.numel() // x.shape[-1]
        # int8pack_mm reads 4x fewer weight bytes but its CPU kernel is slow for many rows (measured:
        # 40x slower than float32 at 512 rows): prefill chunks dequantize once and use the float matmul.
        if x.device.type == "cpu" and rows <= 8:
            if _INT8PACK is None:
                _INT8PACK = _has_int8pack_mm()
            if _INT8PACK and x.dtype == self.scales.dtype:
                shape = x.shape
                y = torch._weight_int8pack_mm(x.reshape(-1, shape[-1]).contiguous(), self.weight_int8,
                                              self.scales)                            # (M, out)
                y = y.view(*shape[:-1], self.out_features)
                return y if self.bias is None else y + self.bias
        return F.linear(x, self.dequantized().to(x.dtype), self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-channel"


class F16Linear(nn.Module):
    """Drop-in for an nn.Linear holding its weight in float16; outputs in the input's dtype."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight_f16", weight.detach().to(torch.float16).contiguous())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if rows == 1:                       # decode: memory-bound, so multiply the half-size weight directly
            y = torch.mv(self.weight_f16, x.reshape(-1).to(torch.float16)).to(x.dtype)
            y = y.view(*x.shape[:-1], self.out_features)
        else:                               # many rows: the activations' dtype (fp16 GEMM is slow on CPUs)
            y = F.linear(x, self.weight_f16.to(x.dtype))
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, float16 weights"


_LINEAR = {"int8": Int8Linear, "f16": F16Linear}


def quantize_model(model: nn.Module, scheme: str = "int8") -> nn.Module:
    """Replace every nn.Linear in place by its `scheme` version (the model is for inference afterwards)."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown quantization {scheme!r}; available: {', '.join(SCHEMES)}")
    for name, child in list(model.named_children()):
        if isinstance(child, nn.Linear):
            setattr(model, name, _LINEAR[scheme](child.weight, child.bias))
        else:
            quantize_model(child, scheme)
    return model


def weight_bytes(model: nn.Module) -> int:
    """Bytes of parameters and weight buffers (tied tensors counted once; the RoPE table excluded)."""
    seen, total = set(), 0
    bufs = [b for name, b in model.named_buffers() if name != "rope"]
    for t in list(model.parameters()) + bufs:
        if t.data_ptr() in seen or t.numel() == 0:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total
