#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): whole-epoch times of each model in both layouts at batch
# 256 and 1,024 (fp32, and bf16 / fp16 where the GPU has them), the student/Base epoch ratio, a
# fractional trial's memory cap and the quickstart grid with gpu: 0.25 and gpu: 1 per job (failing
# unless every trial ran on the GPU Ray gave it), as one table in under 5 minutes on one GPU. On a
# machine without CUDA it runs on the CPU and says so.
#   bash benchmarks/gpu_check.sh [--models ...] [--batch-sizes 256 1024] [--spec SPEC] [--rows N] [--out DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
exec "$PYTHON" benchmarks/gpu_check.py "$@"
