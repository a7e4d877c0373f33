"""Cost of CSRec-T's noise matrix h = M N on a 20,000-item catalogue (Yelp: 20,033 items).

    python benchmarks/noise_matrix_cost.py [--model gru4rec] [--threads 1] [--batch-size 64] [--steps 40] [--repeats 3]

Four ways of training the same model on Yelp (the paper's Yelp data, the authors' batch of 64),
timed in the same run, interleaved `repeats` times:
  base            plain cross entropy (Base), the reference unit;
  main, h off     CSRec-T's main teacher without the noise term (CE + both KL terms against the
                  side teacher; the paper's Fig. 7 ablation);
  main, stochastic  with h = M N column-stochastic (our default, a valid P(i | j));
  main, reference   with the authors' log sigmoid(M N) and running column maximum.
M and N are trained with the model in one Adam, as in `fit`. The side teacher is an untrained model
of the same architecture, its representations cached as in training: the cost does not depend on
its weights. Also printed: the memory of M, N and Adam's moments, and of the dense h never built.
"""

from __future__ import annotations

from pathlib import Path

import torch
from step_timing import best_step_times, model_maker, step_parser

from csrec.data import DataConfig, load_sequence_data
from csrec.data.splits import training_samples
from csrec.objectives import CrossEntropy, FrozenTeachers, TrainingLevelTeacher

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "yelp.txt"
RANK = 64  # the paper's d


def main() -> None:
    parser = step_parser(__doc__, batch_size=64, steps=40)
    parser.add_argument("--alpha", type=float, default=0.75)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_sequence_data(DataConfig(path=str(DATA), max_len=10, overlap_head=True))
    samples = training_samples(data)
    make = model_maker(args.model, data)
    side = FrozenTeachers([make(1).eval()], samples)
    objectives = {
        "base": lambda: CrossEntropy(),
        "main, h off": lambda: TrainingLevelTeacher(side, data.n_items, args.alpha, noise_term=False),
        "main, stochastic": lambda: TrainingLevelTeacher(side, data.n_items, args.alpha),
        "main, reference": lambda: TrainingLevelTeacher(side, data.n_items, args.alpha,
                                                        noise_parametrization="reference"),
    }
    best = best_step_times(objectives, make, samples, args)
    n = data.n_items
    print(f"{args.model}, Yelp ({len(samples)} samples, {n} items), batch {args.batch_size}, "
          f"{args.threads} thread(s), best of {args.repeats} x {args.steps} steps, d = {RANK}")
    print("| training step | ms per step | ratio to Base | ratio to h off |")
    print("|---|---|---|---|")
    for name, seconds in best.items():
        print(f"| {name} | {seconds * 1000:.1f} | {seconds / best['base']:.3f} | "
              f"{seconds / best['main, h off']:.3f} |")
    factors = 2 * n * RANK * 4
    print(f"M and N: {factors / 1e6:.1f} MB, with Adam's two moments {3 * factors / 1e6:.1f} MB; "
          f"the dense h (never built): {n * n * 4 / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
