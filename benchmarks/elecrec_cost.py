"""Cost of an ELECRec step against a Base SASRec step, on Last.FM or Beauty, in the sequence layout.

    python benchmarks/elecrec_cost.py [--threads 1] [--steps 40] [--repeats 3] [--batch-size 256]
                                      [--data lastfm|beauty]

lastfm (default): SASRec's defaults, Last.FM windows of 20, ELECRec's defaults (embed_only sharing),
batches of about 256 targets. beauty: experiments/seed_methods_beauty.yaml's settings (the registered
`beauty`, user_loo, max_len 50, CSREC_DATA says where; SASRec inner 256, dropout 0.5, the authors'
left-padding positions; batches of 256 sequences) and ELECRec's Beauty preset (full sharing,
sample_ratio 0.45, dis_loss_weight 0.6, the authors' padded generator normalisation).

Two ways of training, timed in the same run over the same batches, interleaved `repeats` times,
each as `fit` runs it (csrec.batching.training_loss):
  base     SASRec with plain cross entropy (Base);
  elecrec  ELECRec (csrec.elecrec, embed_only), whose objective reads no logits of the model on the
           real input (`uses_logits = False`), so `fit` computes none.
An ELECRec step is a generator pass (encoder + full-softmax CE over the catalogue), a draw from its
softmax, and a discriminator pass on the replaced items (encoder + a [H, 1] head): about two
encoder passes and one output layer, against one of each for Base.
"""

from __future__ import annotations

from pathlib import Path

import torch
from step_timing import model_maker, run_steps, step_parser

from csrec import datasets
from csrec.data import DataConfig, load_sequence_data
from csrec.data.splits import training_data
from csrec.elecrec import ELECRec, preset
from csrec.models import build_model
from csrec.objectives import CrossEntropy

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "lastfm.csv"
BEAUTY_SASREC = {"inner_size": 256, "dropout": 0.5, "attention_dropout": 0.5, "end_aligned_positions": 1}


def main() -> None:
    parser = step_parser(__doc__, batch_size=256, steps=40)
    parser.add_argument("--data", default="lastfm", choices=["lastfm", "beauty"])
    parser.set_defaults(model="sasrec", layout="sequence")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.data == "beauty":
        data = load_sequence_data(DataConfig(path=str(datasets.resolve("beauty")), format="txt", protocol="user_loo",
                                             max_len=50, exclude_history=True))

        def make(seed):
            torch.manual_seed(seed)
            return build_model("sasrec", data.n_items, data.max_len, **BEAUTY_SASREC)
        settings, unit = preset("beauty"), "sequences"
    else:
        data = load_sequence_data(DataConfig(path=str(DATA), max_len=20, overlap_head=True))
        make, settings, unit = model_maker("sasrec", data), {}, "targets"
    train = training_data(data, "sequence")

    def elecrec():
        model = make(0)
        return model, ELECRec(model, **settings)

    ways = {"base": lambda: (make(0), CrossEntropy()), "elecrec": elecrec}
    times = {name: [] for name in ways}
    for _ in range(args.repeats):
        for name, build in ways.items():
            torch.manual_seed(0)  # the same draws for every way of training
            model, objective = build()
            times[name].append(run_steps(model, objective, train, args.batch_size, args.steps, batch_unit=unit))
    best = {name: min(values) for name, values in times.items()}
    print(f"sasrec, {args.data}, sequence layout ({len(train)} targets, {data.n_items} items), batch {args.batch_size} "
          f"{unit}, {args.threads} thread(s), best of {args.repeats} x {args.steps} steps; elecrec {settings or 'defaults'}")
    print("| training | ms per step | ratio to Base |")
    print("|---|---|---|")
    for name, seconds in best.items():
        print(f"| {name} | {seconds * 1000:.1f} | {seconds / best['base']:.2f} |")


if __name__ == "__main__":
    main()
