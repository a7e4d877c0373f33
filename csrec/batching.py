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
    positions: torch.Tensor | None = None  # [B, W] bool, sequence layout: where the T pairs sit
    flat_positions: torch.Tensor | None = None  # [T] int64, the same places as rows of the [B * W] flattened batch


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The shuffling RNG of one epoch: a function of (seed, epoch) only, so resume needs no state."""
    state = int(np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.Generator().manual_seed(state)


class TrainingData:
    """A layout's training arrays as tensors on the device, moved once (a few MB even for Yelp).

    No step reads a device tensor back on the host (a host sync, which leaves a GPU idle between
    the small kernels of these models): an epoch's plan (its row order, each batch's width and
    where its pairs sit) is made on the host from host arrays when the epoch starts, moved to the
    device in two copies, and each batch is cut from it by slicing and gathering by index (a
    boolean mask would make the device count its True entries first). tests/test_gpu_path.py
    checks a step's aten ops.
    """

    def __init__(self, train: Samples | TrainSequences, device: torch.device):
        self.sequence_layout = isinstance(train, TrainSequences)
        self.device = torch.device(device)
        arrays = {"item_seq": train.item_seq, "lengths": train.lengths, "targets": train.targets}
        if self.sequence_layout:
            arrays["pair_index"] = train.pair_index
            self.real = np.asarray(train.targets) > 0  # [R, L] on the host: where the pairs sit
        self.tensors = {k: torch.as_tensor(np.asarray(v, dtype=np.int64)).to(device) for k, v in arrays.items()}
        self.row_lengths = torch.as_tensor(np.asarray(train.lengths, dtype=np.int64))  # [R] on the CPU
        self.n_pairs = len(train)

    def batches(self, batch_size: int, batch_unit: str, seed: int, epoch: int) -> Iterator[Batch]:
        """The epoch's batches, in an order that depends on (seed, epoch) only. The epoch's plan is
        made here, before the first batch is asked for; the batches themselves sync nothing."""
        order = torch.randperm(len(self.row_lengths), generator=epoch_generator(seed, epoch))  # [R]
        if not self.sequence_layout:
            return self._prefix_batches(self._to_device(order), batch_size)
        if batch_unit == "sequences":
            sizes = [batch_size] * (len(order) // batch_size) + ([len(order) % batch_size] if len(order) % batch_size else [])
        else:  # a row joins the batch its last target falls into: about batch_size targets each
            batch_of_row = (self.row_lengths[order].cumsum(0) - 1) // batch_size  # [R] non-decreasing
            sizes = torch.unique_consecutive(batch_of_row, return_counts=True)[1].tolist()
        return self._sequence_batches(order, sizes)

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        """A host tensor on the training device; to a GPU from pinned memory, without waiting for it."""
        if self.device.type != "cuda":
            return tensor.to(self.device)
        return tensor.pin_memory().to(self.device, non_blocking=True)

    def _prefix_batches(self, order: torch.Tensor, batch_size: int) -> Iterator[Batch]:
        t = self.tensors
        for first in range(0, len(order), batch_size):
            index = order[first:first + batch_size]  # [B]
            yield Batch(index, t["item_seq"][index], t["lengths"][index], t["targets"][index])

    def _sequence_batches(self, order: torch.Tensor, sizes: list[int]) -> Iterator[Batch]:
        # Cut the padding columns no row of a batch uses: every model is causal, so this is exact.
        rows_of = np.split(order.numpy(), np.cumsum(sizes)[:-1])  # each batch's rows, on the host
        widths = [int(self.row_lengths.numpy()[rows].max()) for rows in rows_of]
        flat = [np.flatnonzero(self.real[rows, :width]) for rows, width in zip(rows_of, widths)]  # [T_b] each
        counts = [len(f) for f in flat]
        order_on_device = self._to_device(order)  # [R]
        flat_on_device = self._to_device(torch.from_numpy(np.concatenate(flat).astype(np.int64)))  # [sum T_b]
        return self._cut(order_on_device, flat_on_device, sizes, widths, counts)

    def _cut(self, order: torch.Tensor, flat: torch.Tensor, sizes: list[int], widths: list[int],
             counts: list[int]) -> Iterator[Batch]:
        t = self.tensors
        row_start = pair_start = 0
        for size, width, count in zip(sizes, widths, counts):
            rows = order[row_start:row_start + size]  # [B]
            flat_positions = flat[pair_start:pair_start + count]  # [T] into [B * W], row by row
            targets = t["targets"][rows, :width]  # [B, W]
            yield Batch(t["pair_index"][rows, :width].reshape(-1)[flat_positions], t["item_seq"][rows, :width],
                        t["lengths"][rows], targets.reshape(-1)[flat_positions], targets > 0, flat_positions)
            row_start += size
            pair_start += count


def batch_logits(model, batch: Batch) -> torch.Tensor:
    """The model's logits of the batch's T pairs: [T, n_items + 1]."""
    if batch.positions is None:
        return model(batch.item_seq, batch.lengths)  # [B, N]
    hidden = model.encode_positions(batch.item_seq)  # [B, W, H]
    if batch.flat_positions is None:  # a batch made by hand (tests)
        return model.scores(hidden[batch.positions])  # [T, N]
    return model.scores(hidden.flatten(0, 1)[batch.flat_positions])  # [T, N]


def training_loss(model, objective, batch: Batch) -> torch.Tensor:
    """What `fit` minimises on one batch: objective(logits, batch) + model.regularization(). An
    objective that declares `uses_logits = False` (ELECRec, which runs its own passes) gets None
    for the logits, so the model's forward pass and [T, H] x [H, N] product are not computed unread."""
    logits = batch_logits(model, batch) if getattr(objective, "uses_logits", True) else None
    return objective(logits, batch) + model.regularization()
