"""What the training-step benchmarks share: their command line, the timed training steps (Adam as
`fit`, the same batches for every way of training), and the interleaved best-of-`repeats` timing
that makes their ratios same-run ratios. Used by student_cost.py and noise_matrix_cost.py."""

from __future__ import annotations

import argparse
import time
from typing import Callable

import torch

from csrec.models import build_model
from csrec.train import Batch, trainable_parameters


def step_parser(description: str, batch_size: int, steps: int) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description.split("\n\n")[0])
    parser.add_argument("--model", default="gru4rec")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--repeats", type=int, default=3)
    return parser


def model_maker(name: str, data) -> Callable[[int], torch.nn.Module]:
    """seed -> a fresh (untrained) model of `name` for `data`, initialised from that seed."""
    def make(seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        return build_model(name, data.n_items, data.max_len)
    return make


def run_steps(model, objective, samples, batch_size: int, steps: int) -> float:
    """Seconds per training step of `model` under `objective` over the first `steps` batches."""
    optimizer = torch.optim.Adam(trainable_parameters(model, objective), lr=1e-3)  # as `fit`
    item_seq, lengths, targets = (torch.as_tensor(x) for x in (samples.item_seq, samples.lengths, samples.targets))
    order = torch.randperm(len(targets), generator=torch.Generator().manual_seed(0))
    model.train()
    start = time.perf_counter()
    for step in range(steps):
        index = order[step * batch_size:(step + 1) * batch_size]
        batch = Batch(index, item_seq[index], lengths[index], targets[index])
        optimizer.zero_grad(set_to_none=True)
        loss = objective(model(batch.item_seq, batch.lengths), batch) + model.regularization()
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - start) / steps


def best_step_times(objectives: dict[str, Callable[[], torch.nn.Module]], make, samples, args) -> dict[str, float]:
    """name -> the best of `args.repeats` seconds per step; the ways of training are interleaved
    within each repeat, each with a fresh student (seed 0) and a fresh objective."""
    times = {name: [] for name in objectives}
    for _ in range(args.repeats):
        for name, objective in objectives.items():
            times[name].append(run_steps(make(0), objective(), samples, args.batch_size, args.steps))
    return {name: min(values) for name, values in times.items()}
