"""What the training-step benchmarks share: their command line, the timed training steps (Adam as
`fit`, the same batches for every way of training), and the interleaved best-of-`repeats` timing
that makes their ratios same-run ratios. Used by student_cost.py and noise_matrix_cost.py."""

from __future__ import annotations

import argparse
import time
from typing import Callable

import torch

from csrec.models import build_model
from csrec.batching import TrainingData, training_loss
from csrec.train import trainable_parameters


def step_parser(description: str, batch_size: int, steps: int) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description.split("\n\n")[0])
    parser.add_argument("--model", default="gru4rec")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--layout", default="prefix", choices=["prefix", "sequence"], help="training layout")
    return parser


def model_maker(name: str, data) -> Callable[[int], torch.nn.Module]:
    """seed -> a fresh (untrained) model of `name` for `data`, initialised from that seed."""
    def make(seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        return build_model(name, data.n_items, data.max_len)
    return make


def run_steps(model, objective, train, batch_size: int, steps: int, device: str = "cpu",
              batch_unit: str = "targets") -> float:
    """Seconds per training step of `model` under `objective` over the first `steps` batches of
    `fit`'s own batching for the layout of `train` (Samples: prefix; TrainSequences: sequence) in
    `batch_unit`s (train.batch_unit), after two warm-up steps, on `device` (CUDA work is waited for
    before the clock reads)."""
    device = torch.device(device)
    model, objective = model.to(device), objective.to(device)
    optimizer = torch.optim.Adam(trainable_parameters(model, objective), lr=1e-3)  # as `fit`
    stream = TrainingData(train, device).batches(batch_size, batch_unit, seed=0, epoch=1)
    batches = [next(stream) for _ in range(steps + 2)]  # cut before the clock starts
    model.train()
    for index, batch in enumerate(batches):
        if index == 2:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = training_loss(model, objective, batch)
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / steps


def best_step_times(objectives: dict[str, Callable[[], torch.nn.Module]], make, samples, args) -> dict[str, float]:
    """name -> the best of `args.repeats` seconds per step; the ways of training are interleaved
    within each repeat, each with a fresh student (seed 0) and a fresh objective."""
    times = {name: [] for name in objectives}
    for _ in range(args.repeats):
        for name, objective in objectives.items():
            times[name].append(run_steps(make(0), objective(), samples, args.batch_size, args.steps))
    return {name: min(values) for name, values in times.items()}
