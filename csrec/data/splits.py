"""Leave-one-out splits of cut sequences into next-item Samples (paper 4.1).

For a sequence seq: train part seq[:-2], validation target seq[-2], test target seq[-1].
  - training:   input train[:t], target train[t], for t = 1 .. len(train) - 1 (every prefix);
  - validation: input seq[:-2], target seq[-2];
  - test:       input seq[:-1], target seq[-1].
Inputs keep their last `max_len` items and are right-padded with 0 (real items first). Everything is
vectorised over one flat array of all items, so Yelp's ~316k interactions take a fraction of a second.

The `sequence` layout (`training_sequences`) holds the same (prefix, next item) pairs as rows that
are encoded once each: a train part's inputs train[0 .. len(train) - 2], cut into rows of max_len
aligned to the end (the last row holds the last max_len inputs; the oldest remainder is the first
row). Every prefix of up to max_len items is then exactly the `prefix` layout's input. A longer
prefix (only under `user_loo`, in histories longer than max_len + 2) starts at its row's first
item: its context is the last 1..max_len items of the `prefix` layout's input, and the most recent
max_len pairs sit in one full row, with the contexts SASRec's, S3Rec's and ELECRec's own training
gives them (they keep the last max_len items); the last training pair has its full context.
"""

from __future__ import annotations

import numpy as np

from csrec.data.samples import Samples, SequenceData, TrainSequences


def training_samples(data: SequenceData, sequence_indices: np.ndarray | None = None) -> Samples:
    """Every prefix of each chosen sequence's train part (all sequences when None)."""
    flat, offsets, ratings = _flatten(data)
    chosen = np.arange(len(data.sequences)) if sequence_indices is None else np.asarray(sequence_indices, np.int64)
    lengths = offsets[chosen + 1] - offsets[chosen]
    per_sequence = np.maximum(lengths - 3, 0)  # targets train[1 .. len(train) - 1], len(train) = len - 2
    sequence = np.repeat(chosen, per_sequence)  # [N]
    first_target = np.cumsum(per_sequence) - per_sequence  # [S'] index of each sequence's first sample
    t = np.arange(per_sequence.sum()) - np.repeat(first_target, per_sequence) + 1  # [N] 1-based prefix length
    return _samples(flat, ratings, offsets, sequence, offsets[sequence] + t, data.max_len)


def training_sequences(data: SequenceData, sequence_indices: np.ndarray | None = None) -> TrainSequences:
    """The pairs of `training_samples`, as rows of at most max_len inputs each (see the module's docstring)."""
    flat, offsets, _ = _flatten(data)
    chosen = np.arange(len(data.sequences)) if sequence_indices is None else np.asarray(sequence_indices, np.int64)
    n_targets = np.maximum(offsets[chosen + 1] - offsets[chosen] - 3, 0)  # [S'] pairs per sequence
    width = data.max_len
    rows_per_sequence = -(-n_targets // width)  # [S'] ceil
    sequence = np.repeat(chosen, rows_per_sequence)  # [R]
    first_row = np.cumsum(rows_per_sequence) - rows_per_sequence  # [S']
    chunk = np.arange(rows_per_sequence.sum()) - np.repeat(first_row, rows_per_sequence)  # [R] row within its sequence
    # Aligned to the end: the first row of a sequence holds the remainder, every later row max_len.
    remainder = np.repeat(n_targets - (rows_per_sequence - 1) * width, rows_per_sequence)  # [R] in 1..width
    lengths = np.where(chunk == 0, remainder, width)  # [R]
    start = offsets[sequence] + np.where(chunk == 0, 0, remainder + (chunk - 1) * width)  # [R] first input's flat index
    column = np.arange(width)  # [L]
    real = column[None, :] < lengths[:, None]  # [R, L]
    padded = np.append(flat, 0)  # padded[len(flat)] is the padding id 0
    inputs = np.where(real, start[:, None] + column[None, :], len(flat))  # [R, L]
    item_seq = padded[inputs]
    targets = padded[np.where(real, inputs + 1, len(flat))]
    return TrainSequences(item_seq=item_seq.astype(np.int64), lengths=lengths.astype(np.int64),
                          targets=targets.astype(np.int64), sequence_index=sequence.astype(np.int64))


def training_data(data: SequenceData, layout: str, sequence_indices: np.ndarray | None = None
                  ) -> Samples | TrainSequences:
    """The training pairs in a layout's form: Samples for "prefix", TrainSequences for "sequence"."""
    build = training_sequences if layout == "sequence" else training_samples
    return build(data, sequence_indices)


def validation_samples(data: SequenceData) -> Samples:
    """One sample per sequence: input seq[:-2], target seq[-2]."""
    flat, offsets, ratings = _flatten(data)
    sequence = np.arange(len(data.sequences), dtype=np.int64)
    return _samples(flat, ratings, offsets, sequence, offsets[1:] - 2, data.max_len)


def test_samples(data: SequenceData) -> Samples:
    """One sample per sequence: input seq[:-1], target seq[-1]."""
    flat, offsets, ratings = _flatten(data)
    sequence = np.arange(len(data.sequences), dtype=np.int64)
    return _samples(flat, ratings, offsets, sequence, offsets[1:] - 1, data.max_len)


def _flatten(data: SequenceData) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """All items in one array, offsets [S + 1] of each sequence, and the aligned ratings (or None)."""
    lengths = np.fromiter((len(s) for s in data.sequences), dtype=np.int64, count=len(data.sequences))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)  # [S + 1]
    flat = np.concatenate(data.sequences).astype(np.int64) if data.sequences else np.zeros(0, np.int64)
    ratings = None if data.ratings is None else np.concatenate(data.ratings).astype(np.float64)
    return flat, offsets, ratings


def _samples(flat: np.ndarray, ratings: np.ndarray | None, offsets: np.ndarray, sequence: np.ndarray,
             target: np.ndarray, max_len: int) -> Samples:
    """Samples whose inputs are flat[max(seq start, target - max_len):target] and targets flat[target]."""
    start = np.maximum(offsets[sequence], target - max_len)  # [N] truncate to the last max_len items
    lengths = target - start  # [N]
    column = np.arange(max_len)  # [L]
    padded = np.append(flat, 0)  # padded[len(flat)] is the padding id 0
    real = column[None, :] < lengths[:, None]  # [N, L]
    item_seq = padded[np.where(real, start[:, None] + column[None, :], len(flat))]  # [N, L]
    return Samples(item_seq=item_seq, lengths=lengths.astype(np.int64), targets=flat[target].astype(np.int64),
                   sequence_index=sequence.astype(np.int64),
                   ratings=None if ratings is None else ratings[target])
