"""ONNX export with the asa.SparseAttention custom op (portable function body; a registered ORT kernel
replaces it where available). `export(model_path, out, dtype=, progress=)` writes an ONNX model folder
(exporters/onnx/folder.py); the graph's layout is described in exporters/onnx/export.py, the op in
exporters/onnx/op_contract.py. The runtime side is asa_runtime/backends/onnx_backend.py."""
from __future__ import annotations


def export(model_path, out, *, dtype=None, progress=True, all_logits=False):
    from .export import export as _export

    return _export(model_path, out, dtype=dtype, progress=progress, all_logits=all_logits)


__all__ = ["export"]
