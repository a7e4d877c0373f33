"""Training throughput of each student on Last.FM, and its FLOP rate against this machine's matmul peak.

    python benchmarks/train_throughput.py [--threads 2] [--batch-size 256] [--steps 40]

For every model: training samples per second over `steps` Adam steps (after warm-up) with plain CE,
the FLOPs of one training step counted by torch.utils.flop_counter.FlopCounterMode (matmuls,
convolutions, attention; elementwise work such as the GRU gates' sigmoid is not counted), hence the
achieved FLOP rate, and that rate as a fraction of the fp32 matrix-multiply rate measured in the same
run (a 1024 x 1024 x 1024 matmul repeated, same threads).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from csrec.data import DataConfig, load_sequence_data
from csrec.data.splits import training_samples
from csrec.losses import cross_entropy
from csrec.models import MODELS, build_model

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "lastfm.csv"


def matmul_rate(size: int = 1024, seconds: float = 2.0) -> float:
    """Achieved fp32 FLOP/s of a square matmul: the machine's practical peak for this work."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * size**3 * count / (time.perf_counter() - start)


def batches(samples, batch_size: int):
    item_seq, lengths, targets = (torch.as_tensor(x) for x in (samples.item_seq, samples.lengths, samples.targets))
    order = torch.randperm(len(targets), generator=torch.Generator().manual_seed(0))
    for start in range(0, len(order) - batch_size + 1, batch_size):
        index = order[start:start + batch_size]
        yield item_seq[index], lengths[index], targets[index]


def step(model, optimizer, batch) -> None:
    item_seq, lengths, targets = batch
    optimizer.zero_grad(set_to_none=True)
    loss = cross_entropy(model(item_seq, lengths), targets) + model.regularization()
    loss.backward()
    optimizer.step()


def measure(name: str, samples, n_items: int, max_len: int, batch_size: int, steps: int) -> dict:
    torch.manual_seed(0)
    model = build_model(name, n_items, max_len).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    stream = batches(samples, batch_size)
    for _ in range(5):
        step(model, optimizer, next(stream))
    with FlopCounterMode(display=False) as counter:
        step(model, optimizer, next(stream))
    flops = counter.get_total_flops()
    start = time.perf_counter()
    for _ in range(steps):
        step(model, optimizer, next(stream))
    seconds = time.perf_counter() - start
    return {"model": name, "samples_per_s": steps * batch_size / seconds, "flops_per_step": flops,
            "flop_rate": flops * steps / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_sequence_data(DataConfig(path=str(DATA), max_len=20, overlap_head=True))
    samples = training_samples(data)
    peak = matmul_rate()
    print(f"fp32 matmul rate (1024^3, {args.threads} threads): {peak / 1e9:.1f} GFLOP/s")
    print(f"Last.FM: {len(samples)} training samples, {data.n_items} items, batch {args.batch_size}")
    print("| model | samples/s | GFLOP per step | GFLOP/s | fraction of matmul rate |")
    print("|---|---|---|---|---|")
    for name in args.models:
        row = measure(name, samples, data.n_items, data.max_len, args.batch_size, args.steps)
        print(f"| {name} | {row['samples_per_s']:,.0f} | {row['flops_per_step'] / 1e9:.3f} | "
              f"{row['flop_rate'] / 1e9:.1f} | {row['flop_rate'] / peak:.2f} |", flush=True)
    print(f"fp32 matmul rate re-measured after the models: {matmul_rate() / 1e9:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
