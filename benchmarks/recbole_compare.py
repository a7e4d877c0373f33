"""Same-run training throughput: CSRec's two layouts against RecBole 1.2.1, Last.FM, one thread.

    bash benchmarks/recbole_venv.sh                  # once: RecBole on benchmarks/.recbole-venv
    python benchmarks/recbole_compare.py [--repeats 3] [--steps 30] [--threads 1]

For GRU4Rec and SASRec, interleaved over `repeats`: our `prefix` and `sequence` layouts' training
targets/s (benchmarks/layout_throughput.py: `fit`'s batches made beforehand, batch 256 targets,
CE, Adam) and RecBole's samples/s (benchmarks/recbole_throughput.py in RecBole's venv, a
subprocess: its own dataloader, calculate_loss, backward, Adam step; batch 256). Best of repeats.
A sample of RecBole is one (prefix, next item) pair, a training target, so the rates compare.
RecBole as it ships trains with autograd's anomaly detection on (its sine.py switches it on at
import); its rate with that switched off, the same loader and model, is shown too.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch
from layout_throughput import DATASETS, batches, seconds_per_target

from csrec.data import load_sequence_data
from csrec.data.splits import training_data

HERE = Path(__file__).resolve().parent
MODELS = {"gru4rec": "GRU4Rec", "sasrec": "SASRec"}  # ours -> RecBole's name


def recbole(python: Path, model: str, args) -> dict:
    """One RecBole measurement in a fresh process of its venv (its data preparation is not timed)."""
    command = [str(python), str(HERE / "recbole_throughput.py"), "--models", model, "--steps", str(args.steps),
               "--threads", str(args.threads), "--batch-size", str(args.batch_size)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--venv", type=Path, default=HERE / ".recbole-venv")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    args = parser.parse_args()
    python = args.venv / "bin" / "python"
    if not python.exists():
        print(f"no RecBole venv at {args.venv}; make it with:\n    bash {HERE / 'recbole_venv.sh'} {args.venv}",
              file=sys.stderr)
        sys.exit(2)
    torch.set_num_threads(args.threads)
    data = load_sequence_data(DATASETS["lastfm"])
    layouts = {layout: batches(data, layout, args.batch_size, args.steps) for layout in ("prefix", "sequence")}
    loader_ms, recbole_samples = {}, 0
    best = {name: {"prefix": 0.0, "sequence": 0.0, "recbole": 0.0, "recbole_no_anomaly": 0.0} for name in args.models}
    for repeat in range(args.repeats):  # interleaved, so a load change hits every column alike
        for name in args.models:
            for layout, prepared in layouts.items():
                best[name][layout] = max(best[name][layout], 1 / seconds_per_target(name, data, prepared))
            measured = recbole(python, MODELS[name], args)
            loader_ms[name] = min(loader_ms.get(name, float("inf")), measured["loader_ms_per_batch"])
            recbole_samples = measured["train_samples"]
            best[name]["recbole"] = max(best[name]["recbole"], measured["samples_per_s"])
            best[name]["recbole_no_anomaly"] = max(best[name]["recbole_no_anomaly"],
                                                   measured["no_anomaly_samples_per_s"])
            print(f"repeat {repeat + 1}/{args.repeats} {name}, best so far: "
                  + ", ".join(f"{key} {value:,.0f}" for key, value in best[name].items()), file=sys.stderr, flush=True)
    print(f"Last.FM, batch {args.batch_size}, {args.threads} thread(s), {args.steps} steps, best of "
          f"{args.repeats} interleaved repeats; training targets (samples) per second")
    print("| model | RecBole samples/s | ours prefix | ours sequence | sequence / RecBole | prefix / RecBole | "
          "RecBole, anomaly detection off | sequence / that | prefix / that |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in best.items():
        print(f"| {name} | {r['recbole']:,.0f} | {r['prefix']:,.0f} | {r['sequence']:,.0f} | "
              f"{r['sequence'] / r['recbole']:.1f}x | {r['prefix'] / r['recbole']:.1f}x | "
              f"{r['recbole_no_anomaly']:,.0f} | {r['sequence'] / r['recbole_no_anomaly']:.1f}x | "
              f"{r['prefix'] / r['recbole_no_anomaly']:.1f}x |")
    print(f"\nTraining samples per epoch: RecBole {recbole_samples:,} (its augmentation, leave-one-out), "
          f"ours {len(training_data(data, 'prefix')):,} (windows). RecBole's dataloader, ms per batch: "
          + ", ".join(f"{name} {ms:.1f}" for name, ms in loader_ms.items()) + " (inside its rate above).")


if __name__ == "__main__":
    main()
