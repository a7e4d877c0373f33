"""Training layouts: how `fit` cuts an epoch into mini-batches, and a batch's logits.

- `prefix` (the reference code's and RecBole's): one sample per prefix, each encoded on its own.
  A batch is `batch_size` samples of a shuffled order.
- `sequence`: each training sequence (a `TrainSequences` row) is encoded once, and the loss covers
  the (prefix, next item) pair at every real position: the same pairs, the same objective, about
  (pairs per row) times less encoder work. A batch is a run of shuffled rows holding about
  `batch_size` targets (`batch_unit: targets`, so Adam takes about as many steps per epoch as in
  the `prefix` layout) or `batch_size` rows (`batch_unit: sequences`, as SASRec's own training).

Either way a batch ends up as T (input, target) pairs: logits [T, N], targets [T] and each pair's
number `index` [T] (the sample number of the `prefix` layout, which the cached teachers use), so
the objectives never see the layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from csrec.data.samples import Samples, TrainSequences

LAYOUTS = ("prefix", "sequence")
BATCH_UNITS = ("targets", "sequences")


@dataclass(frozen=True)
class Batch:
    """What an objective sees besides the logits, as tensors on the training device."""

    index: torch.Tensor  # [T] int64 pair numbers (sample numbers of the prefix layout; for cached teachers)
    item_seq: torch.Tensor  # [B, L] int64 inputs (B = T in the prefix layout)
    lengths: torch.Tensor  # [B] int64
    targets: torch.Tensor  # [T] int64
    positions: torch.Tensor | None = None  # [B, L] bool, sequence layout: where the T pairs sit


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The shuffling RNG of one epoch: a function of (seed, epoch) only, so resume needs no state."""
    state = int(np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.Generator().manual_seed(state)


class TrainingData:
    """A layout's training arrays as tensors on the device, moved once (a few MB even for Yelp)."""

    def __init__(self, train: Samples | TrainSequences, device: torch.device):
        self.sequence_layout = isinstance(train, TrainSequences)
        arrays = {"item_seq": train.item_seq, "lengths": train.lengths, "targets": train.targets}
        if self.sequence_layout:
            arrays["pair_index"] = train.pair_index
        self.tensors = {k: torch.as_tensor(np.asarray(v, dtype=np.int64)).to(device) for k, v in arrays.items()}
        self.row_lengths = torch.as_tensor(np.asarray(train.lengths, dtype=np.int64))  # [R] on the CPU
        self.n_pairs = len(train)

    def batches(self, batch_size: int, batch_unit: str, seed: int, epoch: int) -> Iterator[Batch]:
        """The epoch's batches, in an order that depends on (seed, epoch) only."""
        order = torch.randperm(len(self.row_lengths), generator=epoch_generator(seed, epoch))  # [R]
        if not self.sequence_layout:
            yield from self._prefix_batches(order.to(self.tensors["targets"].device), batch_size)
            return
        if batch_unit == "sequences":
            sizes = [batch_size] * (len(order) // batch_size) + ([len(order) % batch_size] if len(order) % batch_size else [])
        else:  # a row joins the batch its last target falls into: about batch_size targets each
            batch_of_row = (self.row_lengths[order].cumsum(0) - 1) // batch_size  # [R] non-decreasing
            sizes = torch.unique_consecutive(batch_of_row, return_counts=True)[1].tolist()
        start = 0
        for size in sizes:
            yield self._sequence_batch(order[start:start + size])
            start += size

    def _prefix_batches(self, order: torch.Tensor, batch_size: int) -> Iterator[Batch]:
        t = self.tensors
        for first in range(0, len(order), batch_size):
            index = order[first:first + batch_size]  # [B]
            yield Batch(index, t["item_seq"][index], t["lengths"][index], t["targets"][index])

    def _sequence_batch(self, rows: torch.Tensor) -> Batch:
        # Cut the padding columns no row of the batch uses: every model is causal, so this is exact.
        width = int(self.row_lengths[rows].max())
        t = self.tensors
        rows = rows.to(t["targets"].device)  # [B]
        targets = t["targets"][rows, :width]  # [B, W]
        positions = targets > 0  # [B, W]
        return Batch(t["pair_index"][rows, :width][positions], t["item_seq"][rows, :width], t["lengths"][rows],
                     targets[positions], positions)


def batch_logits(model, batch: Batch) -> torch.Tensor:
    """The model's logits of the batch's T pairs: [T, n_items + 1]."""
    if batch.positions is None:
        return model(batch.item_seq, batch.lengths)  # [B, N]
    hidden = model.encode_positions(batch.item_seq)  # [B, W, H]
    return model.scores(hidden[batch.positions])  # [T, N]


def training_loss(model, objective, batch: Batch) -> torch.Tensor:
    """What `fit` minimises on one batch: objective(logits, batch) + model.regularization(). An
    objective that declares `uses_logits = False` (ELECRec, which runs its own passes) gets None
    for the logits, so the model's forward pass and [T, H] x [H, N] product are not computed unread."""
    logits = batch_logits(model, batch) if getattr(objective, "uses_logits", True) else None
    return objective(logits, batch) + model.regularization()
