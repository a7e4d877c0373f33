"""The GPU check: one short run that says whether training and the grid use a GPU as they should.

    bash benchmarks/gpu_check.sh [--steps 50] [--spec experiments/quickstart.yaml] [--out DIR]

Prints one table, in under 5 minutes on one GPU:
  1. each model's training steps/s (and targets/s) in both layouts, Last.FM, batch 256, plain CE;
  2. the CSRec-M student step (m = 2 cached teachers) against a Base step, sequence layout;
  3. a quickstart-sized grid (the spec, sequence layout) run by `launch.py run` with fractional-GPU
     teachers and trials (`gpu: 0.25`, four at a time on one GPU), its wall time and table.
Without CUDA it runs the same on the CPU and says so (CI runs it on the smoke spec that way); the
grid then asks for no GPU, as the runner does on a cluster without one.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from step_timing import model_maker, run_steps

from csrec.data import DataConfig, load_sequence_data
from csrec.data.splits import training_data
from csrec.datasets import looks_like_name, resolve
from csrec.models import MODELS
from csrec.objectives import CrossEntropy, FrozenTeachers, SoftLabelStudent

ROOT = Path(__file__).resolve().parents[1]


def step_rates(data, device: str, steps: int, models) -> list[tuple[str, str, float]]:
    rows = []
    for layout in ("prefix", "sequence"):
        train = training_data(data, layout)
        for name in models:
            seconds = run_steps(model_maker(name, data)(0), CrossEntropy(), train, 256, steps, device)
            rows.append((f"{name} step, {layout} layout", f"{1 / seconds:,.1f} steps/s", f"{256 / seconds:,.0f} targets/s"))
    return rows


def student_ratio(data, device: str, steps: int) -> tuple[str, str, str]:
    train = training_data(data, "sequence")
    make = model_maker("gru4rec", data)
    teachers = [make(1).to(device).eval(), make(2).to(device).eval()]
    cache = FrozenTeachers(teachers, train)
    base = run_steps(make(0), CrossEntropy(), train, 256, steps, device)
    student = run_steps(make(0), SoftLabelStudent(0.5, 3.0, teacher=cache), train, 256, steps, device)
    return ("CSRec-M student / Base step (gru4rec, sequence)", f"{student / base:.2f}x",
            f"{student * 1000:.1f} / {base * 1000:.1f} ms")


def grid(spec_path: Path, cuda: bool, out: Path) -> tuple[str, str, str]:
    raw = yaml.safe_load(spec_path.read_text())
    for entry in raw["datasets"].values():  # a relative file path is read against the spec's folder
        path = entry.get("path", "")
        if not looks_like_name(path) and not Path(path).is_absolute():
            entry["path"] = str((spec_path.parent / path).resolve())
    gpu = 0.25 if cuda else 0.0
    raw.update(name=f"gpu_check_{raw['name']}", storage=str(out / "grid"),
               teacher_resources={"cpu": 1, "gpu": gpu}, trial_resources={"cpu": 1, "gpu": gpu})
    raw["train"] = {**raw.get("train", {}), "layout": "sequence", "device": "cuda" if cuda else "cpu"}
    spec = out / "gpu_check.yaml"
    spec.write_text(yaml.safe_dump(raw, sort_keys=False))
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(ROOT / "launch.py"), "run", str(spec)], cwd=ROOT,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    (out / "grid.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise SystemExit(f"the grid failed (exit {done.returncode}); its log: {out / 'grid.log'}\n{done.stderr[-2000:]}")
    return (f"grid {spec_path.name}, sequence layout, gpu {gpu:g} per trial", f"{seconds:.0f} s wall",
            f"log: {out / 'grid.log'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--spec", default=str(ROOT / "experiments" / "quickstart.yaml"))
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--out", help="folder for the grid's experiment and log (default: a temporary one)")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    where = torch.cuda.get_device_name(0) if cuda else "no CUDA device: CPU, the same checks"
    print(f"gpu check on {device} ({where}), torch {torch.__version__}", flush=True)
    data = load_sequence_data(DataConfig(path=str(resolve("lastfm")), max_len=20, overlap_head=True))
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="gpu_check_"))
    out.mkdir(parents=True, exist_ok=True)
    rows = step_rates(data, device, args.steps, args.models)
    rows.append(student_ratio(data, device, args.steps))
    rows.append(grid(Path(args.spec).resolve(), cuda, out))
    print(f"| check ({device}) | value | detail |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
