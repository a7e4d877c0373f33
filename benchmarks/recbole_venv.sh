#!/usr/bin/env bash
# Install RecBole 1.2.1 on its own venv, for the same-run comparison (benchmarks/recbole_compare.py).
#
#     bash benchmarks/recbole_venv.sh [VENV]      # default benchmarks/.recbole-venv (git-ignored)
#
# RecBole 1.2.1 predates numpy 2, pandas 2.2 and scipy 1.14 (np.float_, DataFrame internals,
# scipy.sparse API), so it cannot share CSRec's venv. torch goes in first, pinned to the CPU build
# that lies on this machine: left to recbole's unpinned `torch>=1.10`, pip would fetch a CUDA build
# (GBs). torch >= 2.6 loads with weights_only=True, which RecBole's checkpoints fail; the benchmark
# never loads a checkpoint and benchmarks/recbole_throughput.py patches torch.load at run time
# instead of editing site-packages.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${1:-$here/.recbole-venv}"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet torch==2.13.0
"$venv/bin/pip" install --quiet recbole==1.2.1 'numpy<2' 'pandas<2.2' 'scipy<1.14'
"$venv/bin/python" -c "import recbole, torch, numpy
print('recbole', recbole.__version__, 'torch', torch.__version__, 'numpy', numpy.__version__)"
