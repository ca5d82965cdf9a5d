"""TensorRT for RTX: the asa.SparseAttention plugin (plugin.py), engine builds from exported ONNX (build.py).
Engine building is tested on CPU-only machines; engine execution is UNTESTED (see docs/export.md)."""
