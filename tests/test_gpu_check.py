"""benchmarks/gpu_check.sh runs on a machine without CUDA too (on the CPU, said so): CI exercises it."""

import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_on_the_cpu_and_prints_its_table(tmp_path):
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--rows", "64", "--models", "gru4rec",
                           "--batch-sizes", "32", "64", "--spec", str(ROOT / "experiments" / "smoke.yaml"),
                           "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=900,
                          env=os.environ | {"PYTHON": sys.executable})  # this interpreter, wherever the venv is
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "gpu check on cpu (no CUDA device" in out
    for layout in ("prefix", "sequence"):
        for batch in (32, 64):
            # a whole epoch of the first 64 rows: 64 samples (prefix), their rows' pairs (sequence)
            assert re.search(rf"\| gru4rec epoch, {layout}, fp32, batch {batch} \| [\d.]+ s \| [\d,]+ targets/s "
                             rf"\(([\d,]+) targets\) \|", out), (layout, batch)
    assert re.search(r"\| gru4rec epoch, prefix, fp32, batch 32 \| [\d.]+ s \| [\d,]+ targets/s \(64 targets\) \|", out)
    assert "| bf16 epochs | not measured |" in out and "| memory cap of a 0.25-GPU process | not measured |" in out
    ratio = re.search(r"\| CSRec-M student / Base epoch \(gru4rec, sequence, batch 256\) \| ([\d.]+)x \|", out)
    assert ratio and float(ratio.group(1)) > 0  # a timing: its value is the benchmark's, not the test's
    grid = re.search(r"\| grid smoke.yaml, gpu 0 per job \| \d+ s wall \| (\d+) trials, each on cpu \((\S+)\), "
                     r"GPU ids \[''\]; log: grid_gpu0.log \|", out)
    assert grid and grid.group(2) == platform.machine()
    finals = [json.loads(row) for path in (tmp_path / "grid_gpu0" / "tune").glob("*/*/result.json")
              for row in path.read_text().splitlines() if json.loads(row)["done"]]
    assert len(finals) == int(grid.group(1)) == 9  # the smoke spec's 5 search points and 4 seed reruns
    assert {(r["device"], r["gpu_ids"]) for r in finals} == {("cpu", "")}
    log = (tmp_path / "grid_gpu0.log").read_text()
    assert re.search(r"\| CSRec-T \| \S*\d+\.\d+\S* \|", log)  # the grid ran to its comparison table
