"""The data types every part of the library shares: cut sequences and next-item samples."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SequenceData:
    """Interaction sequences after k-core filtering, id mapping and cutting by a protocol.

    Each sequence is one evaluation "user" (a window of a user's history under `windows`, the whole
    history under `user_loo`): train part seq[:-2], validation target seq[-2], test target seq[-1].
    Item ids run 1..n_items; 0 is padding.
    """

    sequences: list[np.ndarray]  # int64 item ids in time order, each of length >= 3
    ratings: list[np.ndarray] | None  # float ratings aligned with `sequences`; None without ratings
    users: np.ndarray  # [S] original user token of each sequence (str)
    item_tokens: np.ndarray  # [n_items + 1] original item token of each id; [0] is "[PAD]"
    max_len: int  # inputs are truncated to their last max_len items

    @property
    def n_items(self) -> int:
        return len(self.item_tokens) - 1


@dataclass(frozen=True)
class Samples:
    """Next-item samples as right-padded arrays (the real items of a row come first)."""

    item_seq: np.ndarray  # [N, L] int64, right-padded with 0
    lengths: np.ndarray  # [N] int64, >= 1
    targets: np.ndarray  # [N] int64, in 1..n_items
    sequence_index: np.ndarray  # [N] int64, the sequence each sample comes from
    ratings: np.ndarray | None = None  # [N] float rating of the target; None without ratings

    def __len__(self) -> int:
        return len(self.targets)


@dataclass(frozen=True)
class TrainSequences:
    """Training data of the `sequence` layout: each row is encoded once, and the prefix that ends at
    each real position t (items 0..t of the row) has the next item targets[r, t] as its target.

    Pairs are numbered row by row, position by position (`pair_index`), which is the order of the
    `prefix` layout's Samples over the same sequences: pair k here is sample k there.
    """

    item_seq: np.ndarray  # [R, L] int64 right-padded inputs
    lengths: np.ndarray  # [R] int64 >= 1: real inputs of each row, each with a target
    targets: np.ndarray  # [R, L] int64 next item after each position, in 1..n_items; 0 on padding
    sequence_index: np.ndarray  # [R] int64, the sequence each row comes from

    def __len__(self) -> int:
        """The number of (prefix, next item) pairs: what a batch size counts."""
        return int(self.lengths.sum())

    @property
    def pair_index(self) -> np.ndarray:
        """[R, L] int64: the number of each pair (0..len-1, row by row), -1 on padding."""
        real = self.targets > 0  # [R, L]
        return np.where(real, np.cumsum(real.ravel()).reshape(real.shape) - 1, -1)
