"""Cost of S3Rec pretraining on Beauty: batches padded to max_len (the authors') against batches cut
into length groups (csrec.s3rec, the default), same run, same batches and masks.

    python benchmarks/s3rec_pretraining_cost.py [--threads 1] [--batches 20] [--repeats 2]
                                                [--group-costs 0 50 100 200 400]

The data and model are experiments/seed_methods_beauty_s3rec.yaml's: the registered `beauty`
(user_loo, max_len 50; CSREC_DATA says where it is), its attribute file, SASRec 64 wide with inner
size 256, dropout 0.5 and the authors' left-padding positions, batches of 100 prefixes, the
authors' weights and mask ratio. Both ways run `csrec.s3rec.pretrain` (one epoch, Adam, sampling
included) over the same `--batches` batches: the first ones of pretraining epoch 1's shuffled order.
An epoch's time is extrapolated from them (seconds per batch x batches per epoch); the repeats are
interleaved and the best of each way is kept, so the ratio is a same-run ratio.

--group-costs also times the cut way with other values of `length_groups`' group_cost (what one
more group costs in positions) over the same batches: how csrec.s3rec.GROUP_COST was chosen.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from csrec import datasets
from csrec.batching import epoch_generator
from csrec.data import DataConfig, load_sequence_data
from csrec.data.attributes import item_attributes
from csrec.methods import S3REC_DEFAULTS
from csrec.models import SASRecConfig
from csrec.s3rec import (GROUP_COST, PretrainingData, S3RecPretraining, cut, length_groups, pretrain,
                         pretraining_data, sample_batch, total_loss)
from csrec.train import TrainConfig

BATCH = 100  # the authors' pre_batch_size
CONFIG = SASRecConfig(inner_size=256, dropout=0.5, attention_dropout=0.5, end_aligned_positions=1)


def first_batches(data: PretrainingData, n_batches: int, seed: int) -> PretrainingData:
    """The prefixes of pretraining epoch 1's first n_batches batches (pretrain's own order)."""
    rows = torch.randperm(len(data), generator=epoch_generator(seed, 1))[: n_batches * BATCH]
    return PretrainingData(data.prefixes[rows], data.lengths[rows], data.long_sequence)


def one_epoch(data, samples, attributes, n_attributes, cut_batches: bool) -> float:
    """Seconds of one `pretrain` epoch over `samples`, from the same initial weights every call."""
    torch.manual_seed(0)
    module = S3RecPretraining(data.n_items, data.max_len, CONFIG, n_attributes)
    config = TrainConfig(max_epochs=1, batch_size=BATCH, learning_rate=1e-3, seed=0, device="cpu", progress=False)
    with tempfile.TemporaryDirectory() as folder:
        history = pretrain(module, samples, attributes, S3REC_DEFAULTS, config, Path(folder) / "p.pt",
                           cut_batches=cut_batches)
    return history[0].seconds


def group_cost_steps(data, samples, attributes, n_attributes, group_cost: float) -> float:
    """Seconds of pretrain's steps over `samples` (in order) with length groups of this group_cost."""
    torch.manual_seed(0)
    module = S3RecPretraining(data.n_items, data.max_len, CONFIG, n_attributes).train()
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    started = time.perf_counter()
    for rows in torch.arange(len(samples)).split(BATCH):
        batch = sample_batch(samples.prefixes[rows], samples.lengths[rows], samples.long_sequence,
                             module.mask_item, S3REC_DEFAULTS["mask_ratio"], generator)
        losses = module.losses([cut(batch, g) for g in length_groups(batch.lengths, group_cost)], attributes)
        optimizer.zero_grad(set_to_none=True)
        total_loss(losses, S3REC_DEFAULTS).backward()
        optimizer.step()
    return time.perf_counter() - started


def encoded_share(lengths: torch.Tensor, seed: int, max_len: int) -> tuple[float, float, float]:
    """Over a whole epoch's batches: positions encoded when padded, cut to each batch's longest
    prefix, and in length groups, each as a share of the padded count."""
    order = torch.randperm(len(lengths), generator=epoch_generator(seed, 1))
    padded = longest = grouped = 0
    for rows in order.split(BATCH):
        batch = lengths[rows]
        padded += len(batch) * max_len
        longest += len(batch) * int(batch.max())
        grouped += sum(len(g) * int(batch[g].max()) for g in length_groups(batch))
    return 1.0, longest / padded, grouped / padded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--group-costs", type=float, nargs="*", default=[])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_sequence_data(DataConfig(path=str(datasets.resolve("beauty")), format="txt", protocol="user_loo",
                                         max_len=50, exclude_history=True))
    attributes = item_attributes(str(datasets.resolve("beauty", attributes=True)), data.item_tokens)
    labels = torch.from_numpy(attributes.labels)
    everything = pretraining_data(data)
    samples = first_batches(everything, args.batches, seed=0)
    n_batches = -(-len(everything) // BATCH)

    times = {"padded": [], "cut": []}
    costs = {cost: [] for cost in args.group_costs}
    for _ in range(args.repeats):
        for name in times:
            times[name].append(one_epoch(data, samples, labels, attributes.n_attributes, name == "cut"))
        for cost in costs:
            costs[cost].append(group_cost_steps(data, samples, labels, attributes.n_attributes, cost))

    shares = encoded_share(everything.lengths, 0, data.max_len)
    print(f"S3Rec pretraining, Beauty (user_loo, max_len 50): {len(everything)} prefixes (mean length "
          f"{everything.lengths.float().mean():.2f}), {n_batches} batches of {BATCH} an epoch, {data.n_items} items, "
          f"{attributes.n_attributes} attributes; {args.threads} thread(s); best of {args.repeats} interleaved "
          f"repeats of epoch 1's first {args.batches} batches, epoch extrapolated")
    print(f"positions encoded per epoch, share of padded: padded 1.00, each batch cut to its longest prefix "
          f"{shares[1]:.3f}, length groups (group_cost {GROUP_COST}) {shares[2]:.3f}")
    print("| pretraining | s per batch | epoch (extrapolated) | ratio to padded |")
    print("|---|---|---|---|")
    best = {name: min(values) / args.batches for name, values in times.items()}
    for name, seconds in best.items():
        print(f"| {name} | {seconds:.3f} | {seconds * n_batches / 60:.1f} min | {seconds / best['padded']:.3f} |")
    if costs:
        print("\n| group_cost | s per batch (own loop) |\n|---|---|")
        for cost, values in costs.items():
            print(f"| {cost:g} | {min(values) / args.batches:.3f} |")


if __name__ == "__main__":
    main()
