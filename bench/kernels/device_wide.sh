#!/usr/bin/env bash
# Issue 17 on the device (one H200): the wide layout build (run 3: relaxed atomics, one-pass split, 128-register
# cap) checked on the GPU, then the wide bench for the 4k/16k/64k figures. ~4-5 min; results under $OUT.
#
#   bash bench/kernels/device_wide.sh            # repo root; carry runs/wide_plans (2.4 MB)
#
# runs/wide_plans: `python bench/kernels/bench_wide.py --make-plans runs/wide_plans` (CPU, ~30 s); made here
# if missing (needs ../shared/data). Budget: BUDGET_S (default 320) for the whole script; the bench writes its
# json/md after every section, so a cut-off run still brings back what it measured.
set -u
OUT=${OUT:-/tmp/device_wide_out}
BUDGET_S=${BUDGET_S:-320}
mkdir -p "$OUT"
T0=$(date +%s)
left() { echo $((BUDGET_S - ($(date +%s) - T0))); }
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
    git log --oneline -1 2>/dev/null
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
if [ ! -f runs/wide_plans/w128/plan_65536.npz ]; then
    echo "runs/wide_plans missing: making it (~30 s)"
    timeout 120 python3 bench/kernels/bench_wide.py --make-plans runs/wide_plans > "$OUT/make_plans.txt" 2>&1
    tail -3 "$OUT/make_plans.txt"
fi

# 1. the layout on the GPU: equal to the torch builder field by field (six plan kinds, a many-chunk case,
# 4k-row real-sized w128/w256 plans, the cache), + the small fp32 forward/backward cases through it
timeout 110 python3 -m pytest -q -p no:cacheprovider tests/test_kernels_wide.py \
    -k "layout or small_forward_backward or gathered_dkdv" > "$OUT/pytest_gpu_wide_layout.txt" 2>&1
echo "pytest rc $? ($(( $(date +%s) - T0 )) s)"; tail -4 "$OUT/pytest_gpu_wide_layout.txt"

# 2. the bench: forward 4k/16k/64k, fwd+bwd 16k, w128/w256/k64, D 64/128; no FlexAttention, no decode
# (neither changes with the layout). Checks bf16 vs float64 on the real plans first (fwd and grads).
B=$(left); [ "$B" -gt 240 ] && B=240
if [ "$B" -gt 30 ]; then
    timeout "$B" python3 bench/kernels/bench_wide.py --plans runs/wide_plans --out "$OUT" --tag h200_layout3 \
        --no-flex --no-decode > "$OUT/bench_wide_h200_layout3.log" 2>&1
    echo "bench rc $? ($(( $(date +%s) - T0 )) s)"
    grep -E "^check|CHECK FAILED|layout graph capture failed|^fwd |^fwd\+bwd " "$OUT/bench_wide_h200_layout3.log" | cut -c1-260
else
    echo "no time left for the bench"
fi
echo "total $(( $(date +%s) - T0 )) s"
