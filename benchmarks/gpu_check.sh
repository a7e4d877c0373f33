#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): steps/s of each model in both layouts, the student step
# ratio and a quickstart-sized grid with fractional-GPU trials, as one table in under 5 minutes on
# one GPU. On a machine without CUDA it runs on the CPU and says so.
#   bash benchmarks/gpu_check.sh [--steps 50] [--spec experiments/quickstart.yaml] [--out DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
exec "$PYTHON" benchmarks/gpu_check.py "$@"
