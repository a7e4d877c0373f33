"""Per-user ranking metrics from the target's rank and its ties: the one place they are defined.

numpy only, so that `analysis/` (which reads result files and never imports torch) and
`csrec.evaluate` compute every metric the same way.

Each evaluation user has one target. `rank` is 1 + a, with a the number of items scored strictly
above the target; `ties` is t, the number of other items scored exactly the same (items removed
from the ranking never count). How the t ties are broken (`TIES`):

- "expected" (default): uniformly at random. The target's 0-based position is uniform on a..a+t,
  and each metric is its exact expectation over those t + 1 positions (not the metric of the mean
  rank): Recall@k is the share of the positions inside the top k. A model that scores every item
  the same gets Recall@k = k / n_items, chance.
- "pessimistic": every tie goes above the target (position a + t).

The optimistic rule (position a, every tie in the target's favour) is not offered: under it a
constant-score model has Recall@k = 1. A per-user file without a `ties` column (written before
ties were recorded) reads as t = 0: its ranks were counted optimistically and cannot be redone.

At 0-based position p: recall@k = 1(p < k), ndcg@k = 1(p < k) / log2(p + 2), mrr@k = 1(p < k) / (p + 1).
"""

from __future__ import annotations

import numpy as np

from csrec.errors import CSRecError

TIES = ("expected", "pessimistic")
METRIC_NAMES = ("recall", "ndcg", "mrr", "recall+", "ndcg+")
DEFAULT_KS = (5, 10, 20)
TIE_RULES = {"expected": "ties with the target broken at random (expected metric over the tied positions)",
             "pessimistic": "ties with the target counted against it (pessimistic rank)"}


def parse_metric(metric: str) -> tuple[str, int]:
    """'ndcg+@10' -> ('ndcg+', 10); an error naming the accepted forms otherwise."""
    name, _, k = metric.partition("@")
    if name not in METRIC_NAMES or not k.isdigit() or int(k) < 1:
        raise CSRecError(f"metric {metric!r}: use name@k with name in {', '.join(METRIC_NAMES)}, e.g. 'ndcg@10'")
    return name, int(k)


# RecBole's names beside ours: with one target per user, Hit@k (the target is in the top k) is Recall@k.
METRIC_ALIASES = {"hit": "recall", "hit+": "recall+"}


def metric_name(metric: str) -> str:
    """A metric as written by a user ('NDCG@10', 'Recall@10', RecBole's 'Hit@10') -> ours ('ndcg@10',
    'recall@10', 'recall@10'): case does not matter. The one place names are matched (CLI, tables)."""
    name, at, k = str(metric).strip().lower().partition("@")
    canonical = f"{METRIC_ALIASES.get(name, name)}{at}{k}"
    try:
        parse_metric(canonical)
    except CSRecError:
        raise CSRecError(f"metric {metric!r}: use name@k with name in {', '.join(METRIC_NAMES)} (any case; hit is "
                         "recall), e.g. 'ndcg@10' or 'NDCG@10'") from None
    return canonical


def _check(ranks, ties, mode: str) -> tuple[np.ndarray, np.ndarray]:
    if mode not in TIES:
        raise CSRecError(f"ties {mode!r}: use one of {', '.join(TIES)}")
    ranks = np.asarray(ranks)
    if ranks.ndim != 1 or len(ranks) == 0:
        raise CSRecError(f"ranks must be a non-empty 1-d array, got shape {ranks.shape}")
    ranks = ranks.astype(np.int64)
    if (ranks < 1).any():
        raise CSRecError("ranks are 1-based; got a rank < 1")
    ties = np.zeros_like(ranks) if ties is None else np.asarray(ties).astype(np.int64)
    if ties.shape != ranks.shape or (ties < 0).any():
        raise CSRecError(f"ties must be counts >= 0, one per rank; got shape {ties.shape} for {ranks.shape}")
    return ranks, ties


def metric_values(metric: str, ranks, ties=None, mode: str = "expected") -> np.ndarray:
    """Per-user values [N] of `metric` ('ndcg@10'; a '+' name is its unfiltered value) under `mode`.

    With a = rank - 1 and t = ties, the value is sum of gain(p) over the positions p in [lo, hi),
    divided by hi - lo: lo = a, hi = a + t + 1 ("expected") or lo = a + t, hi = lo + 1 ("pessimistic").
    """
    name, k = parse_metric(metric)
    ranks, ties = _check(ranks, ties, mode)
    position = np.arange(k, dtype=np.float64)  # [k] 0-based positions inside the top k
    gain = {"recall": np.ones(k), "ndcg": 1.0 / np.log2(position + 2.0), "mrr": 1.0 / (position + 1.0)}[name.rstrip("+")]
    cumulative = np.concatenate([[0.0], np.cumsum(gain)])  # [k + 1]: gain of positions < m
    low = ranks - 1 + (ties if mode == "pessimistic" else 0)  # [N]
    high = ranks + ties  # [N] one past the last position the target can take
    inside = cumulative[np.minimum(high, k)] - cumulative[np.minimum(low, k)]  # [N]
    return inside / (high - low)


def expected_rank(ranks, ties=None) -> np.ndarray:
    """1-based rank expected under random tie-breaking: rank + ties / 2 ([N] float)."""
    ranks, ties = _check(ranks, ties, "expected")
    return ranks + ties / 2.0


# Paper Eq. 16: a target rated at least this counts as liked (Recall+ / NDCG+).
RATING_THRESHOLD = 4.0


def compute_metrics(ranks, ratings=None, ks=DEFAULT_KS, rating_threshold: float = RATING_THRESHOLD, ties=None,
                    mode: str = "expected") -> dict[str, float]:
    """recall@k, ndcg@k, mrr@k averaged over users; with ratings also recall+@k and ndcg+@k.

    ranks [N] 1-based (1 + items scored strictly higher), ties [N] (None: no ties recorded), mode
    as in `TIES`. The filtered versions (paper Eq. 16) average over the users whose target rating
    is >= rating_threshold only (numerator and denominator); when no user qualifies they are NaN
    (no value exists, and 0 would read as a model that never hits).
    """
    ranks, ties = _check(ranks, ties, mode)
    metrics: dict[str, float] = {}
    for k in ks:
        for name in ("recall", "ndcg", "mrr"):
            metrics[f"{name}@{k}"] = float(metric_values(f"{name}@{k}", ranks, ties, mode).mean())
    if ratings is not None:
        ratings = np.asarray(ratings, dtype=np.float64)
        if ratings.shape != ranks.shape:
            raise CSRecError(f"ratings shape {ratings.shape} does not match ranks shape {ranks.shape}")
        positive = ratings >= rating_threshold  # [N]; NaN ratings never qualify
        for k in ks:
            for name in ("recall", "ndcg"):
                value = metric_values(f"{name}@{k}", ranks, ties, mode)[positive]
                metrics[f"{name}+@{k}"] = float(value.mean()) if len(value) else float("nan")
    return metrics
