"""Cost of an ELECRec step against a Base SASRec step, on Last.FM, in the sequence layout.

    python benchmarks/elecrec_cost.py [--threads 1] [--steps 40] [--repeats 3] [--batch-size 256]

Three ways of training, timed in the same run over the same batches, interleaved `repeats` times:
  base             SASRec with plain cross entropy (Base);
  elecrec          ELECRec (csrec.elecrec, embed_only) as `fit` runs it: fit also computes the
                   discriminator's logits on the real input, which ELECRec does not use;
  elecrec-no-extra the same without those unused logits (what a fit that skipped them would cost).
An ELECRec step is a generator pass (encoder + full-softmax CE over the catalogue), a draw from its
softmax, and a discriminator pass on the replaced items (encoder + a [H, 1] head): about two
encoder passes and one output layer, against one of each for Base.
"""

from __future__ import annotations

from pathlib import Path

import torch
from step_timing import model_maker, run_steps, step_parser
from torch import nn

from csrec.data import DataConfig, load_sequence_data
from csrec.data.splits import training_data
from csrec.elecrec import ELECRec
from csrec.objectives import CrossEntropy

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "lastfm.csv"


class WithoutRealInputLogits(nn.Module):
    """The discriminator as `run_steps` sees it, minus the logits on the real input ELECRec ignores."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def encode_positions(self, item_seq: torch.Tensor) -> torch.Tensor:
        return item_seq.new_zeros(*item_seq.shape, 0, dtype=torch.float32)  # [B, W, 0]: nothing computed

    def scores(self, hidden: torch.Tensor) -> None:
        return None

    def regularization(self) -> float:
        return 0.0


def main() -> None:
    parser = step_parser(__doc__, batch_size=256, steps=40)
    parser.set_defaults(model="sasrec", layout="sequence")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_sequence_data(DataConfig(path=str(DATA), max_len=20, overlap_head=True))
    train = training_data(data, "sequence")
    make = model_maker("sasrec", data)

    def elecrec_without_extra():
        model = make(0)
        return WithoutRealInputLogits(model), ELECRec(model)

    def elecrec():
        model = make(0)
        return model, ELECRec(model)

    ways = {"base": lambda: (make(0), CrossEntropy()), "elecrec": elecrec, "elecrec-no-extra": elecrec_without_extra}
    times = {name: [] for name in ways}
    for _ in range(args.repeats):
        for name, build in ways.items():
            torch.manual_seed(0)  # the same draws for every way of training
            model, objective = build()
            times[name].append(run_steps(model, objective, train, args.batch_size, args.steps))
    best = {name: min(values) for name, values in times.items()}
    print(f"sasrec, Last.FM, sequence layout ({len(train)} targets, {data.n_items} items), batch {args.batch_size} "
          f"targets, {args.threads} thread(s), best of {args.repeats} x {args.steps} steps")
    print("| training | ms per step | ratio to Base |")
    print("|---|---|---|")
    for name, seconds in best.items():
        print(f"| {name} | {seconds * 1000:.1f} | {seconds / best['base']:.2f} |")


if __name__ == "__main__":
    main()
