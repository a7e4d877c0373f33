"""Data: load an interaction file, k-core filter, map item ids, cut sequences by a protocol.

    load_sequence_data(DataConfig(path="lastfm.csv", max_len=20)) -> SequenceData

The pieces are in loaders.py (file formats), protocols.py (k-core, id map, windows | user_loo,
p-subsamples, training item counts) and splits.py (next-item Samples for train / valid / test).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from csrec.data.loaders import LOADERS, load_interactions
from csrec.data.protocols import (item_id_map, kcore_filter, subsample, train_item_counts, user_loo,
                                  window_bounds, windows)
from csrec.data.samples import Samples, SequenceData, TrainSequences
from csrec.data.splits import test_samples, training_data, training_samples, training_sequences, validation_samples
from csrec.errors import CSRecError
from csrec.metrics import DEFAULT_KS, RATING_THRESHOLD

PROTOCOLS = ("windows", "user_loo")
MAX_LEN = 1000


@dataclass(frozen=True)
class DataConfig:
    """One data set and its evaluation protocol (defaults: the paper's, section 4.1)."""

    path: str  # interaction file: .inter (RecBole), .txt (S3Rec/ELECRec), .csv (CSRec)
    format: str | None = None  # "inter" | "txt" | "csv"; None: from the file suffix
    protocol: str = "windows"  # "windows" (the paper's) | "user_loo" (RecBole, S3Rec, ELECRec)
    max_len: int = 20  # window length and input truncation (paper: 20 Last.FM, 10 others)
    overlap_head: bool = False  # windows only: reproduce the reference code's overlapping head window
    user_min_count: int = 5  # k-core: users with fewer interactions are removed (iterated)
    item_min_count: int = 5  # k-core: items with fewer interactions are removed (iterated)
    exclude_history: bool | None = None  # mask items already in the input before ranking; None: by protocol
    user_fraction: float = 1.0  # sparsity study (Fig. 4b): share of users kept, drawn at random
    user_fraction_seed: int = 0
    # S3Rec's pretraining input: an item2attributes JSON file (csrec.data.attributes); a spec entry
    # may name a registered data set instead (its attribute file). Only the s3rec method reads it.
    attributes: str | None = None

    def __post_init__(self):
        if self.format is not None and self.format not in LOADERS:
            raise CSRecError(f"format '{self.format}' is unknown; use one of {', '.join(LOADERS)} "
                             "or leave it out to use the file suffix")
        if self.protocol not in PROTOCOLS:
            raise CSRecError(f"protocol '{self.protocol}' is unknown; use one of {', '.join(PROTOCOLS)}")
        if self.max_len < 3:
            raise CSRecError(f"max_len must be at least 3 (one train item, a validation and a test "
                             f"target), got {self.max_len}")
        if self.max_len > MAX_LEN:  # models hold max_len positions (SASRec attends over max_len^2 pairs)
            raise CSRecError(f"max_len must be at most {MAX_LEN} (the longest input a model is built for; the "
                             f"papers use 10 to 200), got {self.max_len}")
        for name in ("user_min_count", "item_min_count"):
            if getattr(self, name) < 1:
                raise CSRecError(f"{name} must be at least 1 (1 keeps everything), got {getattr(self, name)}")
        if not 0 < self.user_fraction <= 1:
            raise CSRecError(f"user_fraction must lie in (0, 1] (the share of users kept), got {self.user_fraction}")
        if self.overlap_head and self.protocol != "windows":
            raise CSRecError("overlap_head applies to the windows protocol only; set protocol: windows "
                             "or remove overlap_head")

    @property
    def resolved_exclude_history(self) -> bool:
        """Whether items already in the input are masked before ranking: the reference masks them
        under `windows`; RecBole-style `user_loo` evaluation does not."""
        if self.exclude_history is None:
            return self.protocol == "windows"
        return self.exclude_history


def load_sequence_data(config: DataConfig) -> SequenceData:
    """Load, k-core filter, map item ids (first appearance, 1..n; 0 = padding), cut by the protocol.

    Ratings are kept when the file has a rating column with more than one distinct value; a constant
    column (Last.FM's is all 1: implicit feedback) carries no preference and is treated as absent, so
    the rating-filtered metrics (Eq. 16) are not computed on it.
    """
    frame = kcore_filter(load_interactions(config.path, config.format), config.user_min_count,
                         config.item_min_count)
    if frame.empty:
        raise CSRecError(f"{config.path}: no interactions are left after removing users with fewer than "
                         f"{config.user_min_count} and items with fewer than {config.item_min_count} "
                         "interactions; lower user_min_count / item_min_count")
    item_ids, item_tokens = item_id_map(frame["item"])
    _check_catalogue(config.path, len(item_tokens) - 1)
    user_code, user_tokens = _factorize(frame["user"])
    lengths = np.bincount(user_code, minlength=len(user_tokens))  # [U]; rows are grouped by user
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    if config.protocol == "windows":
        cut = windows(lengths, config.max_len, config.overlap_head)
    else:
        cut = user_loo(lengths)
    if config.user_fraction < 1:  # after filtering and id mapping: same catalogue, fewer users
        kept = subsample(len(user_tokens), config.user_fraction, config.user_fraction_seed)
        cut = cut[np.isin(cut[:, 0], kept)]
    if len(cut) == 0:
        raise CSRecError(f"{config.path}: no user has the 3 interactions a sequence needs (train, "
                         "validation, test) after filtering; lower user_min_count / item_min_count")
    begin, end = offsets[cut[:, 0]] + cut[:, 1], offsets[cut[:, 0]] + cut[:, 2]
    sequences = [item_ids[b:e] for b, e in zip(begin.tolist(), end.tolist())]
    rating = frame["rating"].to_numpy(dtype=np.float64)
    has_ratings = not np.isnan(rating).all() and np.unique(rating).size > 1
    ratings = [rating[b:e] for b, e in zip(begin.tolist(), end.tolist())] if has_ratings else None
    if has_ratings and not (rating >= RATING_THRESHOLD).any():
        warnings.warn(f"{config.path}: ratings present but none is >= {RATING_THRESHOLD:g} (paper Eq. 16's "
                      "liked items): Recall+ and NDCG+ are not defined for this file and show as NaN")
    return SequenceData(sequences=sequences, ratings=ratings, users=user_tokens[cut[:, 0]],
                        item_tokens=item_tokens, max_len=config.max_len)


def _check_catalogue(path: str, n_items: int) -> None:
    """One item is no ranking (every metric is 100 for any model): refused. A catalogue no larger
    than a metric's cutoff makes that metric 100 too: said, since the others still rank."""
    if n_items < 2:
        raise CSRecError(f"{path}: {n_items} item left after filtering, so every model ranks it first and every "
                         "metric is 100; give a file with more items (or lower item_min_count)")
    if n_items <= max(DEFAULT_KS):
        warnings.warn(f"{path}: only {n_items} items after filtering: metrics at a cutoff of {n_items} or more "
                      "rank the whole catalogue and are 100 for any model")


def _factorize(users) -> tuple[np.ndarray, np.ndarray]:
    """Users (grouped, first-appearance order) -> (code [N] int64, tokens [U] object of str)."""
    codes, uniques = pd.factorize(users, sort=False)
    return codes.astype(np.int64), np.asarray(uniques, dtype=object)


__all__ = ["DataConfig", "PROTOCOLS", "LOADERS", "load_interactions", "load_sequence_data", "kcore_filter",
           "item_id_map", "window_bounds", "windows", "user_loo", "subsample", "train_item_counts",
           "Samples", "SequenceData", "TrainSequences", "training_data", "training_samples", "training_sequences", "validation_samples", "test_samples"]
