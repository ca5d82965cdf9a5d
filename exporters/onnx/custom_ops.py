"""The asa.SparseAttention kernel for ONNX Runtime: built once, lazily, and registered on SessionOptions.

    import onnxruntime as ort
    from exporters.onnx import custom_ops
    opts = ort.SessionOptions()
    custom_ops.register(opts)                  # compiles csrc/ on first use (a few seconds), then cached
    sess = ort.InferenceSession("model.onnx", opts)

The library is C++ (exporters/onnx/csrc), compiled with the system C++ compiler into the user cache
(`$ASA_CACHE_DIR`, else `$XDG_CACHE_HOME/asa-runtime`, else `~/.cache/asa-runtime`), in a folder keyed by
the sources, the compiler, its flags and the CPU (it is built with -march=native), so `pip install` stays
light and an edit to the sources rebuilds. A registered kernel replaces the node's ONNX function body;
without it, onnxruntime runs the body. A failed build raises KernelBuildError with a one-line reason.
Linux and macOS (gcc or clang); Windows is not supported (the exported file still runs there on its body).
"""
from __future__ import annotations

import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

CSRC = Path(__file__).resolve().parent / "csrc"
SOURCES = ("ort_abi.h", "sparse_attention_cpu.h", "ort_sparse_attention.cc")
MAIN_SOURCE = "ort_sparse_attention.cc"
LIB_NAME = "libasa_ort_ops.dylib" if sys.platform == "darwin" else "libasa_ort_ops.so"


class KernelBuildError(RuntimeError):
    """The kernel library could not be built or loaded here; the message is one line."""


def cache_root() -> Path:
    if os.environ.get("ASA_CACHE_DIR"):
        return Path(os.environ["ASA_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "asa-runtime"


def compiler() -> str:
    for c in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if c and shutil.which(c):
            return c
    raise KernelBuildError("no C++ compiler found (set CXX, or install g++/clang++) to build the "
                           "asa.SparseAttention kernel; without it onnxruntime runs the op's function body")


def flags() -> list[str]:
    f = ["-O3", "-std=c++17", "-fopenmp-simd", "-shared", "-fPIC", "-fvisibility=hidden", "-pthread"]
    if os.environ.get("ASA_ORT_PORTABLE") != "1":     # a cache shared by different CPUs: set ASA_ORT_PORTABLE=1
        f.insert(1, "-march=native" if platform.machine() in ("x86_64", "AMD64") else "-mcpu=native")
    return f


@functools.lru_cache(maxsize=None)
def _compiler_id(cxx: str) -> str:
    try:
        return subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise KernelBuildError(f"C++ compiler {cxx!r} does not run: {e}") from None


def _cpu_id() -> str:
    try:  # the model name and feature flags: -march=native code must not move to another CPU
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "\n".join(sorted({ln for ln in lines if ln.startswith(("model name", "flags", "Features"))}))
    except OSError:
        return platform.processor()


def build_key(cxx: str | None = None) -> str:
    cxx = cxx or compiler()
    h = hashlib.sha256()
    for name in SOURCES:
        h.update(name.encode() + b"\0" + (CSRC / name).read_bytes() + b"\0")
    h.update("\0".join([_compiler_id(cxx), *flags(), platform.machine(), sys.platform, _cpu_id()]).encode())
    return h.hexdigest()[:16]


def library_path(build: bool = True) -> Path:
    """Path of the built library; builds it first when missing (build=False: raise instead)."""
    if os.name == "nt":
        raise KernelBuildError("the asa.SparseAttention kernel is not built on Windows; "
                               "onnxruntime runs the op's function body there")
    cxx = compiler()
    out = cache_root() / "ort-ops" / build_key(cxx) / LIB_NAME
    if out.exists():
        return out
    if not build:
        raise KernelBuildError(f"the asa.SparseAttention kernel is not built yet (expected {out})")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{LIB_NAME}.{os.getpid()}.tmp")
    cmd = [cxx, *flags(), str(CSRC / MAIN_SOURCE), "-o", str(tmp)]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as e:
        raise KernelBuildError(f"building the asa.SparseAttention kernel failed: {e}") from None
    if res.returncode != 0:
        tmp.unlink(missing_ok=True)
        first = next((ln for ln in res.stderr.splitlines() if "error" in ln), res.stderr.strip()[:300])
        raise KernelBuildError(f"building the asa.SparseAttention kernel failed ({' '.join(cmd)}): {first}")
    os.replace(tmp, out)                               # atomic: a concurrent build never sees half a file
    return out


def register(session_options) -> Path:
    """Register the kernel on an onnxruntime.SessionOptions; returns the library's path."""
    path = library_path()
    try:
        session_options.register_custom_ops_library(str(path))
    except Exception as e:  # onnxruntime raises its own exception types
        raise KernelBuildError(f"onnxruntime could not load {path}: {str(e).splitlines()[0]}") from None
    return path


def available() -> tuple[bool, str]:
    """(True, path) when the kernel builds and loads here, else (False, the reason)."""
    try:
        import onnxruntime as ort

        return True, str(register(ort.SessionOptions()))
    except (KernelBuildError, ImportError) as e:
        return False, str(e)


if __name__ == "__main__":  # `python -m exporters.onnx.custom_ops`: build now and print the path
    ok, msg = available()
    print(msg)
    raise SystemExit(0 if ok else 1)
