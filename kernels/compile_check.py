"""Compile the Triton kernels for an H200 (sm_90) on a machine without a GPU and read what ptxas made of them:
registers, stack (spills), shared memory, and the SASS instructions that cost latency the CPU interpreter cannot
show: fences (MEMBAR) and returning atomics (ATOMG) where a fire-and-forget reduction (REDG) would do.

Why: an accumulating `tl.atomic_add` with Triton's default semantics (acq_rel) compiles to ATOMG with a MEMBAR
around each one; ours need no ordering inside a kernel (the kernel boundary orders them), so they are
`sem="relaxed"` and compile to REDG. The layout kernel's atomic_or had the same issue (docs/kernels.md, run 3).

    python bench/kernels/bench_wide.py --compile-check          # every kernel, D 64 / 128, three launch shapes
Needs Triton with its bundled ptxas / cuobjdump (the `triton` wheel has them); no GPU.
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass

PTR = {n: "*bf16" for n in ("Q", "K", "V", "O", "DO", "DQ")}
PTR.update({n: "*fp32" for n in ("DK", "DV", "LSE", "DELTA", "DKX", "DVX")}, XBITS="*i64", TAB="*i64", BITS="*i64")
PTR.update({n: "*i32" for n in ("NS", "LO", "HI", "SB", "WB", "KBCNT", "UX", "UXCNT", "QBCNT", "QBIDX", "KEYS",
                                "STATS", "PREF", "KB", "QBPTR", "QBSLOT")})


@dataclass
class Compiled:
    regs: int
    stack: int
    shared: int
    membar: int
    redg: int
    atomg: int

    def __str__(self):
        return (f"REG:{self.regs} STACK:{self.stack} shared {self.shared} B MEMBAR {self.membar} "
                f"REDG {self.redg} ATOMG {self.atomg}")


def tools_dir() -> str:
    import triton
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")


def compile_sm90(kernel, constexprs: dict, num_warps: int = 4, num_stages: int = 2, **options) -> Compiled:
    """kernel: a @triton.jit function (autotuned or not); constexprs: its constexpr arguments. Pointer
    arguments are typed by name (PTR), the rest are i32 scalars except the *scale ones (fp32)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    fn = kernel
    while not isinstance(fn, JITFunction):          # through the autotuner / heuristics wrappers
        fn = fn.fn
    sig = {a: "constexpr" if a in constexprs else PTR.get(a, "fp32" if "scale" in a else "i32")
           for a in fn.arg_names}
    src = ASTSource(fn, sig, constexprs={(fn.arg_names.index(k),): v for k, v in constexprs.items()})
    c = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                       options=dict(num_warps=num_warps, num_stages=num_stages, **options))
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(c.asm["cubin"])
    try:
        tools = tools_dir()
        use = subprocess.run([os.path.join(tools, "cuobjdump"), "-res-usage", f.name],
                             capture_output=True, text=True, check=True).stdout
        sass = subprocess.run([os.path.join(tools, "cuobjdump"), "-sass", f.name],
                              capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(f.name)
    m = re.search(r"REG:(\d+) STACK:(\d+)", use)
    return Compiled(int(m.group(1)), int(m.group(2)), int(c.metadata.shared), sass.count("MEMBAR"),
                    sass.count("REDG"), sass.count("ATOMG"))


def jobs(D: int, block_m: int):
    """(name, kernel, constexprs, extra launch options) of every tile kernel, wide and narrow."""
    from kernels import triton_sparse as ts
    from kernels import triton_wide as tw

    tile = dict(LQ=64, BLOCK_K=64, D=D, PREC="tf32", BLOCK_M=block_m)
    cap = {"maxnreg": tw.LAYOUT_MAXNREG} if tw.LAYOUT_MAXNREG else {}
    return [("fwd", tw._wide_fwd_kernel, tile, {}),
            ("dq+gathered dkdv", tw._wide_bwd_dq_kernel, dict(tile, GATHER_DKDV=True), {}),
            ("dq", tw._wide_bwd_dq_kernel, dict(tile, GATHER_DKDV=False), {}),
            ("gathered dkdv", tw._wide_bwd_xdkdv_kernel, tile, {}),
            ("structured dkdv", tw._wide_bwd_dkdv_kernel, dict(tile, CH=32, ATOMIC=True), {}),
            ("narrow dkdv", ts._bwd_dkdv_kernel, dict(tile, CH=32, ATOMIC=True), {}),
            ("delta", ts._bwd_delta_kernel, dict(D=D, BLOCK_M=64), {}),
            # launched with 8 warps, registers capped (WideLayoutBuilder)
            ("layout K=256", tw._wide_layout_kernel, dict(BLOCK_Q=64, BLOCK_K=64, KP=256, XC=32, TC=256),
             dict(num_warps=8, **cap)),
            ("layout K=128", tw._wide_layout_kernel, dict(BLOCK_Q=64, BLOCK_K=64, KP=128, XC=32, TC=1024),
             dict(num_warps=8, **cap)),
            ("layout K=64", tw._wide_layout_kernel, dict(BLOCK_Q=64, BLOCK_K=64, KP=64, XC=32, TC=256),
             dict(num_warps=8, **cap)),
            ("transpose", tw._wide_transpose_kernel, dict(QC=256), {})]
