"""Cost of a soft-label student step against a Base step, on Last.FM (issue: at most 1.15x with m = 2).

    python benchmarks/student_cost.py [--model gru4rec] [--threads 1] [--steps 60] [--repeats 3]

Three ways of training the same student, timed in the same run, interleaved `repeats` times:
  base       plain cross entropy (Base);
  cached     CSRec-M with m = 2 teachers through csrec.objectives (the teachers' sequence
             representations of every training sample computed once, before training; a step
             costs the teachers one [B, 2H] x [2H, N] product);
  on-the-fly the reference code's way: every step runs both teachers' full forward passes.
The one-off cost of the cache (encoding every training sample with each teacher) is reported too,
as a fraction of one Base epoch. Teachers are untrained models of the same architecture: the cost
does not depend on their weights.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import nn

from csrec import losses
from csrec.data import DataConfig, load_sequence_data
from csrec.data.splits import training_samples
from csrec.models import build_model
from csrec.objectives import CrossEntropy, FrozenTeachers, SoftLabelStudent
from csrec.train import Batch, trainable_parameters

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "lastfm.csv"


class OnTheFlyTeachers(nn.Module):
    """The reference's student loss: both teachers' forward passes on every batch (eval mode)."""

    def __init__(self, teachers, beta: float, temperature: float):
        super().__init__()
        self.teachers, self.beta, self.temperature = nn.ModuleList(teachers), beta, temperature
        self.teachers.requires_grad_(False)  # frozen, as in training: nothing of theirs in the optimiser

    def forward(self, logits, batch):
        with torch.no_grad():
            z = torch.stack([t(batch.item_seq, batch.lengths) for t in self.teachers])  # [m, B, N]
            probs = losses.tempered_softmax(z.mean(0), self.temperature)
        soft = losses.soft_label(probs, batch.targets)
        return losses.student_loss(logits, batch.targets, soft, self.beta)


def run_steps(model, objective, samples, batch_size: int, steps: int) -> float:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gru4rec")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_sequence_data(DataConfig(path=str(DATA), max_len=20, overlap_head=True))
    samples = training_samples(data)
    make = lambda seed: (torch.manual_seed(seed), build_model(args.model, data.n_items, data.max_len))[1]  # noqa: E731
    teachers = [make(1).eval(), make(2).eval()]
    start = time.perf_counter()
    cache = FrozenTeachers(teachers, samples)
    cache_seconds = time.perf_counter() - start
    objectives = {
        "base": CrossEntropy(),
        "cached": SoftLabelStudent(0.5, 3.0, teacher=cache),
        "on-the-fly": OnTheFlyTeachers(teachers, 0.5, 3.0),
    }
    times = {name: [] for name in objectives}
    for _ in range(args.repeats):
        for name, objective in objectives.items():
            times[name].append(run_steps(make(0), objective, samples, args.batch_size, args.steps))
    best = {name: min(values) for name, values in times.items()}
    steps_per_epoch = len(samples) // args.batch_size
    print(f"{args.model}, Last.FM ({len(samples)} samples, {data.n_items} items), batch {args.batch_size}, "
          f"{args.threads} thread(s), best of {args.repeats} x {args.steps} steps")
    print("| training | ms per step | ratio to Base |")
    print("|---|---|---|")
    for name, seconds in best.items():
        print(f"| {name} | {seconds * 1000:.1f} | {seconds / best['base']:.3f} |")
    print(f"teacher cache, built once: {cache_seconds:.2f} s = {cache_seconds / (best['base'] * steps_per_epoch):.3f} "
          f"of one Base epoch ({steps_per_epoch} steps)")


if __name__ == "__main__":
    main()
