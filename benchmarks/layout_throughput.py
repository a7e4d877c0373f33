"""Training throughput of the two layouts, each model, in the same run, and the output-layer floor.

    python benchmarks/layout_throughput.py [--data lastfm|beauty|yelp] [--threads 1] [--steps 30] [--repeats 3]

For every model and layout: training targets ((prefix, next item) pairs) per second over `steps`
Adam steps of `fit`'s own batches (csrec.batching, batch_size 256 targets, plain CE), best of
`repeats` interleaved repeats; the ratio sequence / prefix; and the share of a `sequence` step
spent in the output layer, the floor of full-softmax training: the [T, H] x [H, n_items] product,
the cross entropy and their backward, timed alone on the same T targets.

Last.FM and Yelp: the paper's windows (max_len 20 and 10, overlap_head). Beauty: user_loo with
max_len 50 (the S3Rec/ELECRec protocol). The FLOP ratio printed beside the measured one is the
encoder's saving (targets per row) folded with the output layer, which both layouts pay in full,
counted by torch.utils.flop_counter on the same steps.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from csrec.batching import TrainingData, batch_logits
from csrec.data import DataConfig, load_sequence_data
from csrec.data.splits import training_data
from csrec.losses import cross_entropy
from csrec.models import MODELS, build_model

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DATASETS = {
    "lastfm": DataConfig(path=str(SHARED / "lastfm.csv"), max_len=20, overlap_head=True),
    "beauty": DataConfig(path=str(SHARED / "beauty.txt"), protocol="user_loo", max_len=50),
    "yelp": DataConfig(path=str(SHARED / "yelp.txt"), max_len=10, overlap_head=True),
}


def batches(data, layout: str, batch_size: int, steps: int) -> list:
    prepared = TrainingData(training_data(data, layout), torch.device("cpu"))
    stream = prepared.batches(batch_size, "targets", seed=0, epoch=1)
    return [next(stream) for _ in range(steps + 2)]


def step(model, optimizer, batch) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss = cross_entropy(batch_logits(model, batch), batch.targets) + model.regularization()
    loss.backward()
    optimizer.step()


def seconds_per_target(name: str, data, prepared: list) -> float:
    torch.manual_seed(0)
    model = build_model(name, data.n_items, data.max_len).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for batch in prepared[:2]:  # warm-up
        step(model, optimizer, batch)
    start = time.perf_counter()
    for batch in prepared[2:]:
        step(model, optimizer, batch)
    return (time.perf_counter() - start) / sum(len(b.targets) for b in prepared[2:])


def output_layer_seconds_per_target(data, prepared: list, width: int = 64) -> float:
    """The floor: scores of T random representations against the item table, CE, backward."""
    items = torch.nn.Parameter(torch.randn(data.n_items + 1, width) * 0.05)
    start = time.perf_counter()
    for batch in prepared[2:]:
        hidden = torch.randn(len(batch.targets), width, requires_grad=True)  # [T, H]
        cross_entropy(hidden @ items.T, batch.targets).backward()
    return (time.perf_counter() - start) / sum(len(b.targets) for b in prepared[2:])


def flops_per_target(name: str, data, prepared: list) -> float:
    torch.manual_seed(0)
    model = build_model(name, data.n_items, data.max_len).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    with FlopCounterMode(display=False) as counter:
        for batch in prepared[2:6]:
            step(model, optimizer, batch)
    return counter.get_total_flops() / sum(len(b.targets) for b in prepared[2:6])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="lastfm", choices=list(DATASETS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_sequence_data(DATASETS[args.data])
    layouts = {layout: batches(data, layout, args.batch_size, args.steps) for layout in ("prefix", "sequence")}
    rows = training_data(data, "sequence")
    print(f"{args.data}: {len(rows)} targets in {len(rows.lengths)} rows ({len(rows) / len(rows.lengths):.1f} "
          f"per row), {data.n_items} items, batch {args.batch_size} targets, {args.threads} thread(s)")
    print("| model | prefix targets/s | sequence targets/s | measured ratio | FLOP ratio | "
          "output layer share of a sequence step |")
    print("|---|---|---|---|---|---|")
    for name in args.models:
        best = {layout: min(seconds_per_target(name, data, layouts[layout]) for _ in range(args.repeats))
                for layout in layouts}
        floor = min(output_layer_seconds_per_target(data, layouts["sequence"]) for _ in range(args.repeats))
        flops = {layout: flops_per_target(name, data, layouts[layout]) for layout in layouts}
        print(f"| {name} | {1 / best['prefix']:,.0f} | {1 / best['sequence']:,.0f} | "
              f"{best['prefix'] / best['sequence']:.2f}x | {flops['prefix'] / flops['sequence']:.2f}x | "
              f"{floor / best['sequence']:.0%} |", flush=True)


if __name__ == "__main__":
    main()
