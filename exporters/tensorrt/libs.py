"""Import TensorRT for RTX (`tensorrt_rtx_bindings`, from the tensorrt-rtx-cu12/cu13 wheels) ready for plugins.

The wheels ship libtensorrt_rtx.so.1 only, but the ONNX parser dlopen()s the unversioned
"libtensorrt_rtx.so" when it imports a node as a plugin, and aborts the process when that fails (measured
with 1.7.1: std::terminate inside parse()). The dynamic loader matches a dlopen() by name against the
SONAMEs of libraries already loaded, so we load a tiny shim whose SONAME is "libtensorrt_rtx.so" and which
only depends on the wheel's libtensorrt_rtx.so.1: the parser's dlopen then returns the shim, and symbol
lookups through it reach the real library. The shim is linked once with the system compiler into the user
cache (next to the ONNX Runtime kernel, exporters/onnx/custom_ops.py).
"""
from __future__ import annotations

import ctypes
import functools
import glob
import hashlib
import os
import subprocess
import sys
from pathlib import Path

from exporters.onnx.custom_ops import cache_root, compiler

UNVERSIONED = "libtensorrt_rtx.so"


class TensorRTUnavailable(RuntimeError):
    """TensorRT for RTX cannot be used here; the message is one line."""


def _real_library() -> Path:
    import tensorrt_rtx_libs

    hits = sorted(glob.glob(os.path.join(os.path.dirname(tensorrt_rtx_libs.__file__), UNVERSIONED + ".*")))
    if not hits:
        raise TensorRTUnavailable(f"the tensorrt-rtx libs wheel has no {UNVERSIONED}.* next to it")
    return Path(hits[0]).resolve()


def _shim(real: Path) -> Path:
    key = hashlib.sha256(f"{real}\0{real.stat().st_size}\0{real.stat().st_mtime_ns}".encode()).hexdigest()[:16]
    out = cache_root() / "trt-rtx-shim" / key / UNVERSIONED
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    src = out.parent / "shim.c"
    src.write_text("/* empty: this library exists for its SONAME and its dependency */\n")
    tmp = out.with_name(f".{UNVERSIONED}.{os.getpid()}.tmp")
    cmd = [compiler(), "-x", "c", "-shared", "-fPIC", str(src), "-o", str(tmp), f"-Wl,-soname,{UNVERSIONED}",
           "-Wl,--no-as-needed", f"-L{real.parent}", f"-l:{real.name}", f"-Wl,-rpath,{real.parent}"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if res.returncode != 0:
        raise TensorRTUnavailable(f"linking the {UNVERSIONED} shim failed: {res.stderr.strip()[:300]}")
    os.replace(tmp, out)
    return out


@functools.lru_cache(maxsize=None)
def load_trt():
    """The tensorrt_rtx_bindings module, with "libtensorrt_rtx.so" resolvable for the ONNX parser."""
    if not sys.platform.startswith("linux"):
        raise TensorRTUnavailable("the TensorRT-RTX wheels used here are Linux builds")
    try:
        import tensorrt_rtx_bindings as trt
    except ImportError as e:
        raise TensorRTUnavailable("TensorRT for RTX is not installed: pip install 'asa-runtime[tensorrt]' "
                                  f"(Linux; wheels tensorrt-rtx-cu12-libs/-bindings) ({e})") from None
    try:
        ctypes.CDLL(UNVERSIONED, mode=ctypes.RTLD_GLOBAL)         # already resolvable (e.g. an SDK install)
    except OSError:
        ctypes.CDLL(str(_shim(_real_library())), mode=ctypes.RTLD_GLOBAL)
    return trt
