"""Full-ranking evaluation: per-user rank of the target and its ties, then Recall / NDCG / MRR @k (+ Eq. 16).

Evaluation returns per-user arrays (`EvalResult`) so that every metric, user group or significance
test can be computed later from files; the metrics themselves are defined once, in csrec.metrics
(ties broken at random by default: their expectation over the tied positions). The reference code
averages per-batch means (wrong whenever the last batch is smaller); we do not.

`exclude_history` masks the sample's input unless a `history` is passed: the input is truncated to
the last max_len items, so in a window merged to max_len + 2 items (csrec.data.protocols) the test
target's oldest predecessor is outside the input and stays in the ranking. `history_before_target`
gives every item before the target, which is what masking is meant to remove.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from csrec.data.samples import Samples, SequenceData
from csrec.errors import CSRecError
from csrec.metrics import DEFAULT_KS, compute_metrics, parse_metric
from csrec.precision import float32

SPLITS = ("valid", "test")


def history_before_target(data: SequenceData, split: str) -> list[np.ndarray]:
    """Per sequence, every item before its `split` target (valid: seq[:-2], test: seq[:-1]).

    What `exclude_history` should mask. The sample's input is truncated to the last max_len items,
    so a window merged with a short remainder (max_len + 2 items; see csrec.data.protocols) has its
    oldest item before the test target outside the input: masking the input alone leaves it in the
    ranking. Under user_loo this is the whole history before the target (RecBole's masking).
    """
    if split not in SPLITS:
        raise CSRecError(f"split must be one of {SPLITS}, got {split!r}")
    stop = -2 if split == "valid" else -1
    return [np.asarray(seq[:stop], dtype=np.int64) for seq in data.sequences]


@torch.no_grad()
@float32  # scores in float32 whatever train.precision: bfloat16 scores (3 digits) would tie far more often
def rank_targets(model: nn.Module, samples: Samples, exclude_history: bool, batch_size: int = 1024,
                 device: torch.device | str | None = None,
                 history: Sequence[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(ranks, ties): 1 + the number of items scored strictly above each target, and the number of
    other items scored exactly as the target ([N] int64 each; csrec.metrics breaks the ties).

    Removed from the ranking (never above the target, never a tie): padding (column 0), the target's
    own column, and with `exclude_history` the items already seen: `history[sequence_index]` when
    given (per sequence, e.g. `history_before_target`), else the sample's input. No sort of the
    [N, n_items] matrix is needed; users are scored `batch_size` at a time so memory stays at
    batch_size x (n_items + 1) scores whatever the catalogue size. The model runs without autocast
    (a bf16-trained model too: its weights are float32) and ranks float32 scores.
    """
    if batch_size < 1:
        raise CSRecError(f"evaluation batch_size must be >= 1, got {batch_size}")
    if history is not None and len(samples) and samples.sequence_index.max() >= len(history):
        raise CSRecError(f"history holds {len(history)} sequences but the samples reach sequence "
                         f"{samples.sequence_index.max()}; pass the history of the data these samples came from")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    item_seq = torch.as_tensor(samples.item_seq)  # [N, L] (no copy of the numpy array)
    lengths = torch.as_tensor(samples.lengths)  # [N]
    targets = torch.as_tensor(samples.targets)  # [N]
    ranks, ties = np.empty(len(samples), dtype=np.int64), np.empty(len(samples), dtype=np.int64)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(samples), batch_size):
            stop = start + batch_size
            seq = item_seq[start:stop].to(device)  # [B, L]
            target = targets[start:stop].to(device).unsqueeze(1)  # [B, 1]
            logits = model(seq, lengths[start:stop].to(device)).float()  # [B, n_items + 1]
            if torch.isnan(logits).any():
                raise CSRecError("the model scores items as NaN; its weights are not finite (retrain it, "
                                 "e.g. with a lower learning rate)")
            target_score = logits.gather(1, target)  # [B, 1], read before masking
            # NaN compares false with everything: a removed item is neither above nor tied, even when
            # the target itself scores -inf (masking with -inf would make every removed item a tie).
            if exclude_history:
                seen = seq if history is None else _padded(history, samples.sequence_index[start:stop], device)
                logits.scatter_(1, seen, float("nan"))  # padding positions land in column 0
            logits[:, 0] = float("nan")
            logits.scatter_(1, target, float("nan"))
            ranks[start:stop] = ((logits > target_score).sum(dim=1) + 1).cpu().numpy()  # [B]
            ties[start:stop] = (logits == target_score).sum(dim=1).cpu().numpy()  # [B]
    finally:
        model.train(was_training)
    return ranks, ties


def _padded(history: Sequence[np.ndarray], sequences: np.ndarray, device) -> torch.Tensor:
    """The histories of `sequences` as one right-padded [B, H] tensor (0 is padding)."""
    rows = [history[s] for s in sequences]
    out = np.zeros((len(rows), max(1, max(len(r) for r in rows))), dtype=np.int64)  # [B, H]
    for i, row in enumerate(rows):
        out[i, :len(row)] = row
    return torch.from_numpy(out).to(device)


@dataclass(frozen=True)
class EvalResult:
    """Per-user arrays of one evaluated split, aligned with the samples that were ranked."""

    ranks: np.ndarray  # [N] int64, 1-based: 1 + items scored strictly higher
    ties: np.ndarray  # [N] int64, other items scored exactly as the target
    ratings: np.ndarray | None  # [N] float rating of the target; None without ratings
    targets: np.ndarray  # [N] int64 target item ids
    lengths: np.ndarray  # [N] int64 number of real input items
    sequence_index: np.ndarray  # [N] int64 sequence (evaluation "user") of each row

    def metrics(self, ks=DEFAULT_KS, rating_threshold: float = 4.0, ties: str = "expected") -> dict[str, float]:
        return compute_metrics(self.ranks, self.ratings, ks, rating_threshold, self.ties, ties)

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
            "ties": self.ties.astype(np.int64),
            "rating": np.asarray(ratings, dtype=np.float64),
            "input_length": self.lengths.astype(np.int64),
        })


def evaluate(model: nn.Module, samples: Samples, exclude_history: bool, batch_size: int = 1024,
             device: torch.device | str | None = None, history: Sequence[np.ndarray] | None = None) -> EvalResult:
    """Rank every sample's target over the full catalogue and keep the per-user arrays (see rank_targets)."""
    ranks, ties = rank_targets(model, samples, exclude_history, batch_size, device, history)
    ratings = None if samples.ratings is None else np.asarray(samples.ratings, dtype=np.float64)
    return EvalResult(ranks, ties, ratings, np.asarray(samples.targets), np.asarray(samples.lengths),
                      np.asarray(samples.sequence_index))


def validator(samples: Samples, exclude_history: bool, metric: str = "ndcg@10", batch_size: int = 1024,
              history: Sequence[np.ndarray] | None = None) -> Callable[[nn.Module], float]:
    """The `validate` callable that `csrec.train.fit` selects epochs with (default: NDCG@10, ties at
    random, so that a collapsed epoch scoring every item alike is worth chance, not a perfect score)."""
    try:
        _, k = parse_metric(metric)
    except CSRecError:
        raise CSRecError(f"validation metric {metric!r}: use e.g. 'ndcg@10', 'recall@20' or 'mrr@5'") from None

    def validate(model: nn.Module) -> float:
        return evaluate(model, samples, exclude_history, batch_size, history=history).metrics(ks=(k,))[metric]

    return validate
