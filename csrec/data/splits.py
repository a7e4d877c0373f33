"""Leave-one-out splits of cut sequences into next-item Samples (paper 4.1).

For a sequence seq: train part seq[:-2], validation target seq[-2], test target seq[-1].
  - training:   input train[:t], target train[t], for t = 1 .. len(train) - 1 (every prefix);
  - validation: input seq[:-2], target seq[-2];
  - test:       input seq[:-1], target seq[-1].
Inputs keep their last `max_len` items and are right-padded with 0 (real items first). Everything is
vectorised over one flat array of all items, so Yelp's ~316k interactions take a fraction of a second.
"""

from __future__ import annotations

import numpy as np

from csrec.data.samples import Samples, SequenceData


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
