#!/usr/bin/env bash
# The GPU check of issue 15, one script for a machine with a CUDA device (about 5 minutes; budget 10):
#   1. the CUDA tests (CUDA forward/gradients = CPU for every model; no host synchronisation in a train step),
#   2. the step benchmarks on CUDA: every family's step at batch 20,000 over a 512³ GEMM on the same device,
#      and Ahn et al.'s paper profile extrapolated from a measured block of 100 steps,
#   3. a quick study run on CUDA (pgd_depth, quick profile).
# Writes everything under ${OUT:-gpu_check}/ (bench JSON, study run directory, logs).
#
#   bash scripts/gpu_check.sh            # from the repository root
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu_check}"
mkdir -p "$out"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device here'; print(torch.cuda.get_device_name(0))"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null | tee "$out/nvidia_smi.txt" || true

echo "== 1. CUDA tests"
timeout 240 python -m pytest -q -rs -k cuda tests/test_models.py tests/test_no_sync.py 2>&1 | tee "$out/tests.log"

echo "== 2. step benchmarks on CUDA"
ICL_BENCH_DEVICE=cuda timeout 240 python -m experiments bench --only gemm_ratio --only paper_profile \
    --out "$out/bench_cuda.json" 2>&1 | tee "$out/bench.log"

echo "== 3. quick study on CUDA"
timeout 180 python -m experiments run pgd_depth --profile quick --device cuda --quiet --overwrite \
    --out "$out/pgd_depth_quick" 2>&1 | tee "$out/study.log"
echo "gpu check done: $out"
