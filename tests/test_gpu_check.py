"""benchmarks/gpu_check.sh runs on a machine without CUDA too (on the CPU, said so): CI exercises it."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_on_the_cpu_and_prints_its_table(tmp_path):
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--steps", "2", "--models", "gru4rec",
                           "--spec", str(ROOT / "experiments" / "smoke.yaml"), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600,
                          env=os.environ | {"PYTHON": sys.executable})  # this interpreter, wherever the venv is
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "gpu check on cpu (no CUDA device" in out
    for layout in ("prefix", "sequence"):
        assert re.search(rf"\| gru4rec step, {layout} layout \| [\d,.]+ steps/s \| [\d,]+ targets/s \|", out)
    ratio = re.search(r"\| CSRec-M student / Base step \(gru4rec, sequence\) \| ([\d.]+)x \|", out)
    assert ratio and float(ratio.group(1)) > 0  # a timing: its value is the benchmark's, not the test's
    assert re.search(r"\| grid smoke.yaml, sequence layout, gpu 0 per trial \| \d+ s wall \|", out)
    log = (tmp_path / "grid.log").read_text()
    assert re.search(r"\| CSRec-T \| \S*\d+\.\d+\S* \|", log)  # the grid ran to its comparison table
