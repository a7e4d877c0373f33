"""Cost of a soft-label student step against a Base step, on Last.FM (issue: at most 1.15x with m = 2).

    python benchmarks/student_cost.py [--model gru4rec] [--layout prefix|sequence] [--threads 1] [--steps 60] [--repeats 3]

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

import time
from pathlib import Path

import torch
from step_timing import best_step_times, model_maker, step_parser
from torch import nn

from csrec import losses
from csrec.data import DataConfig, load_sequence_data
from csrec.batching import batch_logits
from csrec.data.splits import training_data
from csrec.objectives import CrossEntropy, FrozenTeachers, SoftLabelStudent

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "lastfm.csv"


class OnTheFlyTeachers(nn.Module):
    """The reference's student loss: both teachers' forward passes on every batch (eval mode)."""

    def __init__(self, teachers, beta: float, temperature: float):
        super().__init__()
        self.teachers, self.beta, self.temperature = nn.ModuleList(teachers), beta, temperature
        self.teachers.requires_grad_(False)  # frozen, as in training: nothing of theirs in the optimiser

    def forward(self, logits, batch):
        with torch.no_grad():
            z = torch.stack([batch_logits(t, batch) for t in self.teachers])  # [m, B, N]
            probs = losses.tempered_softmax(z.mean(0), self.temperature)
        soft = losses.soft_label(probs, batch.targets)
        return losses.student_loss(logits, batch.targets, soft, self.beta)


def main() -> None:
    args = step_parser(__doc__, batch_size=256, steps=60).parse_args()
    torch.set_num_threads(args.threads)
    data = load_sequence_data(DataConfig(path=str(DATA), max_len=20, overlap_head=True))
    samples = training_data(data, args.layout)
    make = model_maker(args.model, data)
    teachers = [make(1).eval(), make(2).eval()]
    start = time.perf_counter()
    cache = FrozenTeachers(teachers, samples)
    cache_seconds = time.perf_counter() - start
    objectives = {
        "base": CrossEntropy,
        "cached": lambda: SoftLabelStudent(0.5, 3.0, teacher=cache),
        "on-the-fly": lambda: OnTheFlyTeachers(teachers, 0.5, 3.0),
    }
    best = best_step_times(objectives, make, samples, args)
    start = time.perf_counter()
    SoftLabelStudent(0.5, 3.0, teacher=cache).prepare(torch.device("cpu"))  # done at a student's first step
    prepare_seconds = time.perf_counter() - start
    steps_per_epoch = len(samples) // args.batch_size
    print(f"{args.model}, Last.FM, {args.layout} layout ({len(samples)} targets, {data.n_items} items), batch {args.batch_size}, "
          f"{args.threads} thread(s), best of {args.repeats} x {args.steps} steps")
    print("| training | ms per step | ratio to Base |")
    print("|---|---|---|")
    for name, seconds in best.items():
        print(f"| {name} | {seconds * 1000:.1f} | {seconds / best['base']:.3f} |")
    print(f"teacher cache, built once: {cache_seconds:.2f} s = {cache_seconds / (best['base'] * steps_per_epoch):.3f} "
          f"of one Base epoch ({steps_per_epoch} steps)")
    print(f"soft-label constants (and the probability table when it fits), built once at the first step: "
          f"{prepare_seconds:.2f} s = {prepare_seconds / (best['base'] * steps_per_epoch):.3f} of one Base epoch")


if __name__ == "__main__":
    main()
