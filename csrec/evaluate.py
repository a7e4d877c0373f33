"""Full-ranking evaluation: per-user rank of the target, then Recall / NDCG / MRR @k (+ Eq. 16).

Evaluation returns per-user arrays (`EvalResult`) so that every metric, user group or significance
test can be computed later from files; the metric functions only average those arrays over users.
The reference code averages per-batch means (wrong whenever the last batch is smaller); we do not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch import nn

from csrec.data.samples import Samples
from csrec.errors import CSRecError

DEFAULT_KS = (5, 10, 20)
SPLITS = ("valid", "test")


@torch.no_grad()
def rank_targets(model: nn.Module, samples: Samples, exclude_history: bool, batch_size: int = 1024,
                 device: torch.device | str | None = None) -> np.ndarray:
    """1-based rank of each target in the full catalogue ranking: [N] int64.

    rank = 1 + number of items scored strictly higher than the target (ties go in the target's
    favour, and no sort of the [N, n_items] matrix is needed). Padding (column 0) is never ranked.
    With `exclude_history` the items of the input sequence other than the target are removed from
    the ranking first (the reference code's protocol). Users are scored `batch_size` at a time so
    memory stays at batch_size x (n_items + 1) scores whatever the catalogue size.
    """
    if batch_size < 1:
        raise CSRecError(f"evaluation batch_size must be >= 1, got {batch_size}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    item_seq = torch.as_tensor(samples.item_seq)  # [N, L] (no copy of the numpy array)
    lengths = torch.as_tensor(samples.lengths)  # [N]
    targets = torch.as_tensor(samples.targets)  # [N]
    ranks = np.empty(len(samples), dtype=np.int64)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(samples), batch_size):
            stop = start + batch_size
            seq = item_seq[start:stop].to(device)  # [B, L]
            target = targets[start:stop].to(device)  # [B]
            logits = model(seq, lengths[start:stop].to(device))  # [B, n_items + 1]
            if torch.isnan(logits).any():
                raise CSRecError("the model scores items as NaN; its weights are not finite (retrain it, "
                                 "e.g. with a lower learning rate)")
            target_score = logits.gather(1, target.unsqueeze(1))  # [B, 1], read before masking
            if exclude_history:
                # Padding positions scatter into column 0, which is masked anyway; the target's own
                # column may be masked too, harmless since its score was read above.
                logits.scatter_(1, seq, float("-inf"))
            logits[:, 0] = float("-inf")
            ranks[start:stop] = ((logits > target_score).sum(dim=1) + 1).cpu().numpy()  # [B]
    finally:
        model.train(was_training)
    return ranks


def compute_metrics(ranks: np.ndarray, ratings: np.ndarray | None = None, ks=DEFAULT_KS,
                    rating_threshold: float = 4.0) -> dict[str, float]:
    """recall@k, ndcg@k, mrr@k averaged over users; with ratings also recall+@k and ndcg+@k.

    One target per user, so recall@k = 1(rank <= k), ndcg@k = 1(rank <= k) / log2(rank + 1) and
    mrr@k = 1(rank <= k) / rank, each averaged over all users. The filtered versions (paper Eq. 16)
    average over the users whose target rating is >= rating_threshold only (numerator and
    denominator); when no user qualifies they are NaN (no value exists, and 0 would read as a
    model that never hits).
    """
    ranks = np.asarray(ranks, dtype=np.int64)
    if ranks.ndim != 1 or len(ranks) == 0:
        raise CSRecError(f"ranks must be a non-empty 1-d array, got shape {ranks.shape}")
    if (ranks < 1).any():
        raise CSRecError("ranks are 1-based; got a rank < 1")
    metrics: dict[str, float] = {}
    gain = 1.0 / np.log2(ranks + 1.0)  # [N]
    for k in ks:
        hit = ranks <= k  # [N]
        metrics[f"recall@{k}"] = float(hit.mean())
        metrics[f"ndcg@{k}"] = float(np.where(hit, gain, 0.0).mean())
        metrics[f"mrr@{k}"] = float(np.where(hit, 1.0 / ranks, 0.0).mean())
    if ratings is not None:
        ratings = np.asarray(ratings, dtype=np.float64)
        if ratings.shape != ranks.shape:
            raise CSRecError(f"ratings shape {ratings.shape} does not match ranks shape {ranks.shape}")
        positive = ratings >= rating_threshold  # [N]; NaN ratings never qualify
        n_positive = int(positive.sum())
        for k in ks:
            hit = positive & (ranks <= k)  # [N]
            metrics[f"recall+@{k}"] = float(hit.sum() / n_positive) if n_positive else float("nan")
            metrics[f"ndcg+@{k}"] = float(np.where(hit, gain, 0.0).sum() / n_positive) if n_positive else float("nan")
    return metrics


@dataclass(frozen=True)
class EvalResult:
    """Per-user arrays of one evaluated split, aligned with the samples that were ranked."""

    ranks: np.ndarray  # [N] int64, 1-based
    ratings: np.ndarray | None  # [N] float rating of the target; None without ratings
    targets: np.ndarray  # [N] int64 target item ids
    lengths: np.ndarray  # [N] int64 number of real input items
    sequence_index: np.ndarray  # [N] int64 sequence (evaluation "user") of each row

    def metrics(self, ks=DEFAULT_KS, rating_threshold: float = 4.0) -> dict[str, float]:
        return compute_metrics(self.ranks, self.ratings, ks, rating_threshold)

    def to_frame(self, split: str, users: np.ndarray) -> pd.DataFrame:
        """Rows of docs/FORMATS.md `per_user.parquet`; `users` is SequenceData.users ([S] tokens)."""
        if split not in SPLITS:
            raise CSRecError(f"split must be one of {SPLITS}, got {split!r}")
        users = np.asarray(users)
        if len(self.sequence_index) and self.sequence_index.max() >= len(users):
            raise CSRecError(f"sequence index {self.sequence_index.max()} is out of range for {len(users)} "
                             "users; pass the SequenceData.users of the data set these samples came from")
        n = len(self.ranks)
        ratings = self.ratings if self.ratings is not None else np.full(n, np.nan)
        return pd.DataFrame({
            "split": np.full(n, split, dtype=object),
            "sequence": self.sequence_index.astype(np.int64),
            "user": users[self.sequence_index].astype(str).astype(object),
            "target": self.targets.astype(np.int64),
            "rank": self.ranks.astype(np.int64),
            "rating": np.asarray(ratings, dtype=np.float64),
            "input_length": self.lengths.astype(np.int64),
        })


def evaluate(model: nn.Module, samples: Samples, exclude_history: bool, batch_size: int = 1024,
             device: torch.device | str | None = None) -> EvalResult:
    """Rank every sample's target over the full catalogue and keep the per-user arrays."""
    ranks = rank_targets(model, samples, exclude_history, batch_size, device)
    ratings = None if samples.ratings is None else np.asarray(samples.ratings, dtype=np.float64)
    return EvalResult(ranks, ratings, np.asarray(samples.targets), np.asarray(samples.lengths),
                      np.asarray(samples.sequence_index))


def validator(samples: Samples, exclude_history: bool, metric: str = "ndcg@10",
              batch_size: int = 1024) -> Callable[[nn.Module], float]:
    """The `validate` callable that `csrec.train.fit` selects epochs with (default: NDCG@10)."""

    name, _, k = metric.partition("@")
    if name not in ("recall", "ndcg", "mrr", "recall+", "ndcg+") or not k.isdigit():
        raise CSRecError(f"validation metric {metric!r}: use e.g. 'ndcg@10', 'recall@20' or 'mrr@5'")

    def validate(model: nn.Module) -> float:
        return evaluate(model, samples, exclude_history, batch_size).metrics(ks=(int(k),))[metric]

    return validate
