"""Training throughput in fp32 against bf16 (train.precision), each model, in the same run.

    python benchmarks/precision_throughput.py [--data lastfm beauty yelp] [--threads 1] [--steps 20] [--repeats 3]

For every data set and model: training targets per second over `steps` Adam steps of `fit`'s own
batches (the sequence layout, batch_size 256 targets, plain CE) in fp32 and under bf16 autocast
(csrec.precision: model and output layer in bfloat16, the loss in float32), fp32 and bf16 steps
interleaved, best of `repeats`; the speed-up bf16 / fp32; and the output layer's share of each
step: the [T, 64] x [64, n_items + 1] product, the cross entropy and their backward on the same
batches' T targets, timed alone in the same precision.

Last.FM and Yelp: the paper's windows (max_len 20 and 10, overlap_head); Beauty: user_loo,
max_len 50 (the S3Rec/ELECRec protocol). Needs a CPU with bfloat16 arithmetic (AVX512-BF16 or AMX).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from csrec.batching import TrainingData, training_loss
from csrec.data import DataConfig, load_sequence_data
from csrec.data.splits import training_data
from csrec.losses import cross_entropy
from csrec.models import MODELS, build_model
from csrec.objectives import CrossEntropy
from csrec.precision import autocast, check_precision

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DATASETS = {
    "lastfm": DataConfig(path=str(SHARED / "lastfm.csv"), max_len=20, overlap_head=True),
    "beauty": DataConfig(path=str(SHARED / "beauty.txt"), protocol="user_loo", max_len=50),
    "yelp": DataConfig(path=str(SHARED / "yelp.txt"), max_len=10, overlap_head=True),
}
PRECISIONS = ("fp32", "bf16")


def batches(data, batch_size: int, steps: int) -> list:
    stream = TrainingData(training_data(data, "sequence"), torch.device("cpu")).batches(batch_size, "targets", 0, 1)
    return [next(stream) for _ in range(steps + 2)]


def seconds_per_target(model, optimizer, prepared: list, precision: str) -> float:
    """fit's step (csrec.train._train_epoch) on the prepared batches; the first two warm up."""
    objective = CrossEntropy()
    for i, batch in enumerate(prepared):
        if i == 2:
            start = time.perf_counter()
        with autocast(precision, "cpu"):
            loss = training_loss(model, objective, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - start) / sum(len(b.targets) for b in prepared[2:])


def output_layer_seconds_per_target(n_items: int, prepared: list, precision: str, width: int = 64) -> float:
    """The output layer alone: T random representations scored against the item table, CE, backward."""
    items = torch.nn.Parameter(torch.randn(n_items + 1, width) * 0.05)
    start = time.perf_counter()
    for batch in prepared[2:]:
        hidden = torch.randn(len(batch.targets), width, requires_grad=True)  # [T, H]
        with autocast(precision, "cpu"):
            logits = hidden @ items.T  # [T, N]
        cross_entropy(logits, batch.targets).backward()
    return (time.perf_counter() - start) / sum(len(b.targets) for b in prepared[2:])


def measure(name: str, data, prepared: list, repeats: int) -> dict:
    """Best seconds per target of each precision's step and output layer, interleaved repeats."""
    runs = {}
    for precision in PRECISIONS:
        torch.manual_seed(0)
        model = build_model(name, data.n_items, data.max_len).train()
        runs[precision] = (model, torch.optim.Adam(model.parameters(), lr=1e-3))
    best = {(kind, p): float("inf") for kind in ("step", "output") for p in PRECISIONS}
    for _ in range(repeats):
        for precision in PRECISIONS:
            model, optimizer = runs[precision]
            best["step", precision] = min(best["step", precision], seconds_per_target(model, optimizer, prepared,
                                                                                      precision))
            best["output", precision] = min(best["output", precision],
                                            output_layer_seconds_per_target(data.n_items, prepared, precision))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    check_precision("bf16", "cpu")  # refused with one line on a CPU without bfloat16 arithmetic
    print(f"{args.threads} thread(s), batch {args.batch_size} targets, {args.steps} steps, best of {args.repeats}, "
          f"{torch.backends.cpu.get_cpu_capability()}")
    print("| data | model | fp32 targets/s | bf16 targets/s | bf16 / fp32 | output layer share fp32 | "
          "output layer share bf16 | output layer bf16 speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    for dataset in args.data:
        data = load_sequence_data(DATASETS[dataset])
        prepared = batches(data, args.batch_size, args.steps)
        for name in args.models:
            best = measure(name, data, prepared, args.repeats)
            step, output = (best["step", "fp32"], best["step", "bf16"]), (best["output", "fp32"], best["output", "bf16"])
            print(f"| {dataset} ({data.n_items:,} items) | {name} | {1 / step[0]:,.0f} | {1 / step[1]:,.0f} | "
                  f"{step[0] / step[1]:.2f}x | {output[0] / step[0]:.0%} | {output[1] / step[1]:.0%} | "
                  f"{output[0] / output[1]:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
