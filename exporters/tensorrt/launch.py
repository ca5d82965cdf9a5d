"""What the TensorRT plugin's enqueue does, importable without TensorRT: wrap the raw buffers TensorRT hands
over as torch tensors (no copy), run the project's sparse attention on them (Triton on CUDA when it imports,
else the torch reference) on TensorRT's stream, and write the result into the output buffer.

Kept apart from plugin.py so that a machine with a GPU and torch but no TensorRT (our H200) can test it.
"""
from __future__ import annotations

import ctypes

import numpy as np
import torch

# TensorRT DataType names -> (torch dtype, numpy typestr); only what the op contract allows
DTYPES = {"FLOAT": (torch.float32, "<f4"), "HALF": (torch.float16, "<f2"), "INT32": (torch.int32, "<i4")}


class _CudaBuffer:
    """A device pointer presented through __cuda_array_interface__, which torch.as_tensor adopts in place."""

    def __init__(self, ptr: int, shape: tuple[int, ...], typestr: str):
        self.__cuda_array_interface__ = {"data": (int(ptr), False), "shape": tuple(shape), "typestr": typestr,
                                         "strides": None, "version": 2}


def wrap(ptr: int, shape, dtype_name: str, device: str) -> torch.Tensor:
    """A tensor view of `ptr` (contiguous, shape, dtype): device 'cuda' for TensorRT's buffers; 'cpu' for
    host memory (tests on machines without a GPU run the same path on host buffers)."""
    tdt, typestr = DTYPES[dtype_name]
    shape = tuple(int(s) for s in shape)
    if device == "cpu":
        n = int(np.prod(shape, dtype=np.int64))
        buf = (ctypes.c_byte * (n * torch.empty((), dtype=tdt).element_size())).from_address(int(ptr))
        return torch.frombuffer(buf, dtype=tdt, count=n).view(shape) if n else torch.empty(shape, dtype=tdt)
    return torch.as_tensor(_CudaBuffer(ptr, shape, typestr), device=device)


def sparse_attention_into(shapes, dtype_names, ptrs, out_ptr: int, stream: int, scale, device: str = "cuda"):
    """shapes/dtype_names/ptrs: of q (B, Hq, T, D), k_cache, v_cache (B, Hkv, S, D), rows (B, T, K), and with
    the RoPE clamp rope_delta (B, T, K) int32 and rope (P, D/2, 2) float32; writes (B, Hq, T, D) at out_ptr.
    stream: the CUDA stream TensorRT enqueues on (ignored on cpu)."""
    from kernels import sparse_attention

    q, k, v, rows, *rope = (wrap(p, s, d, device) for p, s, d in zip(ptrs, shapes, dtype_names))
    out = wrap(out_ptr, shapes[0], dtype_names[0], device)
    kw = dict(rope_delta=rope[0], rope=rope[1]) if rope else {}
    if device == "cpu":
        out.copy_(sparse_attention(q, k, v, rows, scale=scale, **kw))
        return
    with torch.cuda.stream(torch.cuda.ExternalStream(int(stream), device=q.device)):
        out.copy_(sparse_attention(q, k, v, rows, scale=scale, **kw))
