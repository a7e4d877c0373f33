"""The GPU check: one call that answers the first GPU session's questions, as tables to paste.

    bash benchmarks/gpu_check.sh [--models ...] [--batch-sizes 256 1024] [--spec experiments/quickstart.yaml]
                                 [--rows N] [--out DIR]

In under 5 minutes on one GPU (docs/PERFORMANCE.md, "The GPU path"):
  1. each model's whole training epoch on Last.FM in both layouts, batch 256 and 1,024, fp32 (and
     on CUDA bf16 and fp16, train.precision, where the GPU has them): `fit`'s second epoch, so
     batch building, the step and the epoch's one host read are all inside the clock; the first
     epoch (CUDA start-up, cuDNN's choices) is left out;
  2. a CSRec-M student epoch (m = 2 cached teachers) against a Base epoch, sequence layout;
  3. the memory cap of a fractional trial (CUDA only): a process granted 0.25 of the GPU fails
     to allocate 0.3 of its memory;
  4. the quickstart grid (the spec) run by `launch.py run`, teachers and trials asking for
     `gpu: 0.25` (four at a time on one GPU) and then `gpu: 1` (one at a time): its wall time; it
     fails unless every trial reports a GPU id and cuda:0 and the CPU fallback never fired.
Without CUDA the same runs on the CPU and says so (CI: `--rows 64`, the first 64 training rows of
each layout, and the smoke spec): the grid then asks for `gpu: 0` and every trial must report the
CPU and no GPU id.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from step_timing import model_maker

from csrec.data import DataConfig, load_sequence_data
from csrec.data.samples import TrainSequences
from csrec.data.splits import training_data
from csrec.datasets import looks_like_name, resolve
from csrec.models import MODELS
from csrec.objectives import CrossEntropy, FrozenTeachers, SoftLabelStudent
from csrec.train import TrainConfig, fit

ROOT = Path(__file__).resolve().parents[1]
PRECISIONS = ("fp32", "bf16", "fp16")  # fp16: autocast with a GradScaler (csrec.precision)


def first_rows(train, rows: int | None):
    """The layout's training data cut to its first `rows` rows (samples or sequences); all of it for None."""
    if rows is None:
        return train
    n = len(train.item_seq)
    return dataclasses.replace(train, **{f.name: getattr(train, f.name)[:rows] for f in dataclasses.fields(train)
                                         if isinstance(getattr(train, f.name), np.ndarray)
                                         and len(getattr(train, f.name)) == n})


def precisions(cuda: bool) -> list[str]:
    """fp32, and on CUDA each of bf16 and fp16 that the GPU has (csrec.precision.available_precisions)."""
    if not cuda:
        return ["fp32"]
    from csrec.precision import available_precisions
    return [p for p in PRECISIONS if p in available_precisions("cuda")]


def epoch_seconds(model, objective, train, batch_size: int, device: str, precision: str = "fp32") -> float:
    """The second epoch of `fit` (its own batching, step and end-of-epoch read), in seconds."""
    extra = {"precision": precision} if precision != "fp32" else {}
    layout = "sequence" if isinstance(train, TrainSequences) else "prefix"
    config = TrainConfig(batch_size=batch_size, max_epochs=2, patience=2, device=device, progress=False,
                         layout=layout, **extra)
    result = fit(model, train, lambda _: 0.0, config, objective)
    return result.history[1].seconds  # training plus a validate that returns at once


def epoch_rows(data, device: str, models, batch_sizes, rows: int | None, cuda: bool) -> list[tuple[str, ...]]:
    table = []
    for layout in ("prefix", "sequence"):
        train = first_rows(training_data(data, layout), rows)
        for name in models:
            for precision in precisions(cuda):
                for batch_size in batch_sizes:
                    seconds = epoch_seconds(model_maker(name, data)(0), CrossEntropy(), train, batch_size, device,
                                            precision)
                    table.append((f"{name} epoch, {layout}, {precision}, batch {batch_size}", f"{seconds:.2f} s",
                                  f"{len(train) / seconds:,.0f} targets/s ({len(train):,} targets)"))
    if not (cuda and len(precisions(cuda)) > 1):
        table.append(("bf16 epochs", "not measured", "bf16 and fp16 (train.precision) are measured on CUDA only"))
    return table


def student_ratio(data, device: str, rows: int | None) -> tuple[str, str, str]:
    train = first_rows(training_data(data, "sequence"), rows)
    make = model_maker("gru4rec", data)
    teachers = [make(1).to(device).eval(), make(2).to(device).eval()]
    cache = FrozenTeachers(teachers, train)
    base = epoch_seconds(make(0), CrossEntropy(), train, 256, device)
    student = epoch_seconds(make(0), SoftLabelStudent(0.5, 3.0, teacher=cache), train, 256, device)
    return ("CSRec-M student / Base epoch (gru4rec, sequence, batch 256)", f"{student / base:.2f}x",
            f"{student:.2f} / {base:.2f} s")


MEMORY_CAP = """
import torch
from csrec.train import cap_gpu_memory
cap_gpu_memory("cuda:0", 0.25)
try:
    torch.empty(int(0.3 * torch.cuda.get_device_properties(0).total_memory), dtype=torch.uint8, device="cuda:0")
    print("allocated")
except torch.OutOfMemoryError:
    print("refused")
"""


def memory_cap(cuda: bool) -> tuple[str, str, str]:
    if not cuda:
        return ("memory cap of a 0.25-GPU process", "not measured", "needs CUDA")
    done = subprocess.run([sys.executable, "-c", MEMORY_CAP], cwd=ROOT, capture_output=True, text=True)
    answer = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else f"error: {done.stderr[-300:]}"
    if answer != "refused":
        raise SystemExit(f"a process capped to 0.25 of the GPU could allocate 0.3 of it: {answer}")
    return ("memory cap of a 0.25-GPU process", "0.3 of the GPU refused", "torch.cuda.set_per_process_memory_fraction")


def grid_spec(spec_path: Path, gpu: float, out: Path) -> tuple[Path, Path]:
    """The spec with its data paths absolute, its storage in `out`, every job asking for `gpu`."""
    raw = yaml.safe_load(spec_path.read_text())
    for entry in raw["datasets"].values():  # a relative file path is read against the spec's folder
        path = entry.get("path", "")
        if not looks_like_name(path) and not Path(path).is_absolute():
            entry["path"] = str((spec_path.parent / path).resolve())
    directory = out / f"grid_gpu{gpu:g}"
    raw.update(name=f"gpu_check_{raw['name']}", storage=str(directory),
               teacher_resources={"cpu": 1, "gpu": gpu}, trial_resources={"cpu": 1, "gpu": gpu})
    raw["train"] = {**raw.get("train", {}), "layout": "sequence", "device": "auto"}
    spec = out / f"gpu_check_gpu{gpu:g}.yaml"
    spec.write_text(yaml.safe_dump(raw, sort_keys=False))
    return spec, directory


def grid(spec_path: Path, gpu: float, cuda: bool, out: Path) -> tuple[str, str, str]:
    """Run the grid with `gpu` per job; fail unless every trial ran where Ray put it (module docstring)."""
    spec, directory = grid_spec(spec_path, gpu, out)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(ROOT / "launch.py"), "run", str(spec)], cwd=ROOT,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    log = out / f"grid_gpu{gpu:g}.log"
    log.write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise SystemExit(f"the grid with gpu {gpu:g} failed (exit {done.returncode}); its log: {log}\n"
                         f"{done.stderr[-2000:]}")
    if "running on CPU" in done.stdout + done.stderr:
        raise SystemExit(f"the grid with gpu {gpu:g} fell back to the CPU; its log: {log}")
    finals = [json.loads(row) for path in (directory / "tune").glob("*/*/result.json")
              for row in path.read_text().splitlines() if json.loads(row).get("done")]
    expected = ("cuda:0", True) if cuda else ("cpu", False)
    wrong = [r for r in finals if (r["device"], bool(r["gpu_ids"])) != expected]
    if not finals or wrong:
        raise SystemExit(f"the grid with gpu {gpu:g}: {len(wrong)} of {len(finals)} trial(s) not on "
                         f"{expected[0]} with a GPU id as expected; its log: {log}")
    names = sorted({r["device_name"] for r in finals})
    return (f"grid {spec_path.name}, gpu {gpu:g} per job", f"{seconds:.0f} s wall",
            f"{len(finals)} trials, each on {expected[0]} ({', '.join(names)}), GPU ids "
            f"{sorted({r['gpu_ids'] for r in finals})}; log: {log.name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[256, 1024])
    parser.add_argument("--rows", type=int, help="time epochs of the first ROWS training rows only (CI on the CPU)")
    parser.add_argument("--spec", default=str(ROOT / "experiments" / "quickstart.yaml"))
    parser.add_argument("--out", help="folder for the grids' experiments and logs (default: a temporary one)")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    where = torch.cuda.get_device_name(0) if cuda else "no CUDA device: CPU, the same checks"
    print(f"gpu check on {device} ({where}), torch {torch.__version__}", flush=True)
    data = load_sequence_data(DataConfig(path=str(resolve("lastfm")), max_len=20, overlap_head=True))
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="gpu_check_"))
    out.mkdir(parents=True, exist_ok=True)
    rows = epoch_rows(data, device, args.models, args.batch_sizes, args.rows, cuda)
    rows.append(student_ratio(data, device, args.rows))
    rows.append(memory_cap(cuda))
    for gpu in ((0.25, 1.0) if cuda else (0.0,)):
        rows.append(grid(Path(args.spec).resolve(), gpu, cuda, out))
    print(f"| check ({device}) | value | detail |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
