"""The tile kernels compiled for an H200 (sm_90) on the CPU (kernels/compile_check.py): every accumulating
atomic is a fire-and-forget reduction (REDG), none a fenced returning atomic (ATOMG + MEMBAR), which the
Triton interpreter cannot tell apart. Needs Triton with its bundled ptxas / cuobjdump; skipped without it (CI)."""
from __future__ import annotations

import os

import pytest

triton = pytest.importorskip("triton")
if os.environ.get("TRITON_INTERPRET") == "1":      # the interpreter's kernels are plain functions: nothing to compile
    pytest.skip("compiles real kernels: run without TRITON_INTERPRET", allow_module_level=True)
from kernels.compile_check import compile_sm90, jobs, tools_dir  # noqa: E402

if not os.path.exists(os.path.join(tools_dir(), "cuobjdump")):
    pytest.skip("Triton without its CUDA tools (cuobjdump)", allow_module_level=True)

ATOMIC = {"dq+gathered dkdv", "gathered dkdv", "structured dkdv", "narrow dkdv", "layout K=128"}


@pytest.mark.parametrize("name", ["dq+gathered dkdv", "gathered dkdv", "structured dkdv", "narrow dkdv",
                                  "layout K=128", "delta"])
def test_atomics_compile_to_reductions_without_fences(name):
    job = {j[0]: j for j in jobs(64, 64)}[name]
    _, kern, ce, launch = job
    c = compile_sm90(kern, ce, **dict(dict(num_warps=4), **launch))
    assert c.atomg == 0, f"{name}: {c}"                        # acq_rel atomics would be ATOMG
    assert (c.redg > 0) == (name in ATOMIC), f"{name}: {c}"
    assert c.membar <= 8, f"{name}: {c}"                       # was 64-71 with one fence per atomic
