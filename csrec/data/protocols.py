"""Evaluation protocols: k-core filtering, the item id map, cutting histories into sequences,
p-subsamples of sequences and training item counts.

A cut is an int64 array [S, 3] of (history index, start, stop): sequence s is
history[cut[s, 1]:cut[s, 2]] of user cut[s, 0]. Every sequence has at least MIN_SEQUENCE_LENGTH items
(one train item, a validation target and a test target; paper section 4.1).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from csrec.data.samples import SequenceData
from csrec.errors import CSRecError

MIN_SEQUENCE_LENGTH = 3
PADDING_TOKEN = "[PAD]"


def kcore_filter(frame: pd.DataFrame, user_min_count: int = 5, item_min_count: int = 5) -> pd.DataFrame:
    """Drop users with fewer than `user_min_count` and items with fewer than `item_min_count`
    interactions, repeatedly, until both hold (paper 4.1: "filter ... fewer than 5", iterated).

    Interactions are counted with repeats (a user who plays an item twice has two). Row order is kept.
    """
    while True:
        users = frame.groupby("user", sort=False)["user"].transform("size").to_numpy()
        items = frame.groupby("item", sort=False)["item"].transform("size").to_numpy()
        keep = (users >= user_min_count) & (items >= item_min_count)
        if keep.all():
            return frame.reset_index(drop=True)
        frame = frame[keep]


def item_id_map(items: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Items -> (ids [N] int64 in 1..n, item_tokens [n + 1] with "[PAD]" at 0).

    Ids follow first appearance in the given (user-grouped, time-ordered) rows, so the map depends
    only on the file's content and order, never on hashing; 0 stays free for padding.
    """
    codes, uniques = pd.factorize(items, sort=False)
    tokens = np.empty(len(uniques) + 1, dtype=object)
    tokens[0] = PADDING_TOKEN
    tokens[1:] = np.asarray(uniques, dtype=object)
    return codes.astype(np.int64) + 1, tokens


def window_bounds(length: int, max_len: int, overlap_head: bool = False) -> list[tuple[int, int]]:
    """Cut one history of `length` items into windows (start, stop), oldest first.

    Default (no overlap): windows of max_len aligned to the end of the history (the most recent
    items always form full windows); the oldest remainder length % max_len is a window of its own if
    it has at least 3 items, else it is merged into the following window, which then has max_len + 1
    or max_len + 2 items (its inputs are still truncated to the last max_len items when samples are
    built). So every interaction lies in exactly one window. A history shorter than 3 gives none.

    overlap_head=True reproduces the reference code: full windows of max_len aligned to the end,
    stepping back by max_len while the start is > 0, plus the head window [0, min(max_len, length)),
    which overlaps the oldest full window whenever length is not a multiple of max_len. No
    remainder window is cut, so no window is shorter than min(max_len, length); windows shorter
    than 3 (only a whole history shorter than 3) are dropped. On lastfm.csv with max_len 20 this
    gives 3,173 sequences and 48,307 training samples (REFERENCE.md).
    """
    if length < MIN_SEQUENCE_LENGTH:
        return []
    if overlap_head:
        bounds = [(start, start + max_len) for start in range(length - max_len, 0, -max_len)]
        return [(0, min(max_len, length))] + bounds[::-1]
    head = length % max_len
    bounds = [(start, start + max_len) for start in range(head, length, max_len)]
    if head >= MIN_SEQUENCE_LENGTH:
        bounds.insert(0, (0, head))
    elif head > 0 and bounds:
        bounds[0] = (0, bounds[0][1])  # too short for train + valid + test: merge forward
    return bounds


def windows(lengths: np.ndarray, max_len: int, overlap_head: bool = False) -> np.ndarray:
    """The `windows` protocol (paper 4.1): every history cut by `window_bounds` -> cut [S, 3]."""
    rows = [(user, start, stop) for user, length in enumerate(np.asarray(lengths).tolist())
            for start, stop in window_bounds(length, max_len, overlap_head)]
    return np.array(rows, dtype=np.int64).reshape(-1, 3)


def user_loo(lengths: np.ndarray) -> np.ndarray:
    """The `user_loo` protocol (RecBole, S3Rec, ELECRec): each whole history is one sequence
    (last item test, second last validation) -> cut [S, 3]; histories shorter than 3 are dropped.

    Inputs are truncated to the last max_len items when samples are built (csrec.data.splits).
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    users = np.flatnonzero(lengths >= MIN_SEQUENCE_LENGTH)
    return np.stack([users, np.zeros_like(users), lengths[users]], axis=1).reshape(-1, 3)


def subsample(n_sequences: int, ratio: float, seed: int) -> np.ndarray:
    """Seeded random subset of round(ratio * n_sequences) sequence indices, sorted (at least one).

    The data-level teachers of CSRec-D and CSRec-T's side teacher each see such a p-fraction of the
    sequences (paper Alg. 2-3, p = 0.8). ratio 1 returns every index.
    """
    if not 0 < ratio <= 1:
        raise CSRecError(f"subsample ratio (p) must lie in (0, 1], got {ratio}")
    if n_sequences < 1:
        raise CSRecError("cannot subsample an empty data set; check the data and its min counts")
    if ratio == 1:
        return np.arange(n_sequences, dtype=np.int64)
    size = max(1, int(round(ratio * n_sequences)))
    chosen = np.random.default_rng(seed).choice(n_sequences, size=size, replace=False)
    return np.sort(chosen).astype(np.int64)


def train_item_counts(data: SequenceData, sequence_indices: np.ndarray | None = None) -> np.ndarray:
    """How often each item occurs in the training parts seq[:-2] -> counts [n_items + 1] int64.

    Validation and test targets are never counted (the reference's popularity teacher counts them,
    a leak: REFERENCE.md). counts[0] (padding) is 0.
    """
    chosen = range(len(data.sequences)) if sequence_indices is None else np.asarray(sequence_indices).tolist()
    parts = [data.sequences[s][:-2] for s in chosen]
    flat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return np.bincount(flat, minlength=data.n_items + 1).astype(np.int64)
