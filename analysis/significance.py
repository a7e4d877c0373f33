"""Paired significance tests on per-user test metrics, as the paper marks Table 2 (** p < 0.05, * p < 0.1).

Each evaluation "user" (a sequence) has one test target, so a run's Recall@10 is the mean of the
per-user vector 1(rank <= 10) and its NDCG@10 the mean of 1(rank <= 10) / log2(rank + 1). Two
methods are compared on the same users (inner join on `sequence`); with several seeds a method's
per-user value is its mean over the seeds. The paper names its test only as a significance test
against SoftRec; the default here is the paired two-sided t-test, with Wilcoxon signed-rank and a
paired randomisation (sign-flip) test as options, and Holm's correction across a table.

The filtered metrics recall+@k / ndcg+@k (paper Eq. 16) average over the users whose target is
rated >= 4 only, so their per-user vectors hold those users only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from analysis.collect import Collection, Selected
from csrec.errors import CSRecError

TESTS = ("ttest", "wilcoxon", "randomisation")
RATING_THRESHOLD = 4.0  # paper Eq. 16: a target counts as relevant when rated >= 4
_METRICS = ("recall", "ndcg", "mrr", "recall+", "ndcg+")
_PERMUTATION_ELEMENTS = 4_000_000  # floats per vectorised permutation step (32 MB)


def parse_metric(metric: str) -> tuple[str, int]:
    """'ndcg+@10' -> ('ndcg+', 10); an error naming the accepted forms otherwise."""
    name, _, k = metric.partition("@")
    if name not in _METRICS or not k.isdigit() or int(k) < 1:
        raise CSRecError(f"metric {metric!r}: use name@k with name in {', '.join(_METRICS)}, e.g. 'ndcg@10'")
    return name, int(k)


def per_user_metric(per_user: pd.DataFrame, metric: str, split: str = "test",
                    rating_threshold: float = RATING_THRESHOLD) -> pd.Series:
    """Per-user values of `metric` on `split`, indexed by sequence (rows of per_user.parquet).

    recall@k = 1(rank <= k); ndcg@k = 1(rank <= k) / log2(rank + 1); mrr@k = 1(rank <= k) / rank.
    The "+" versions keep only users whose target rating is >= rating_threshold (Eq. 16).
    """
    name, k = parse_metric(metric)
    rows = per_user[per_user["split"] == split]
    if rows["sequence"].duplicated().any():
        raise CSRecError(f"per_user rows of split {split!r} repeat a sequence; the file is not one run's output")
    if name.endswith("+"):
        rows = rows[rows["rating"].to_numpy(dtype=float) >= rating_threshold]  # NaN ratings never qualify
    rank = rows["rank"].to_numpy(dtype=np.float64)  # [N]
    hit = rank <= k  # [N]
    if name.startswith("recall"):
        value = hit.astype(np.float64)
    elif name.startswith("ndcg"):
        value = np.where(hit, 1.0 / np.log2(rank + 1.0), 0.0)
    else:
        value = np.where(hit, 1.0 / rank, 0.0)
    return pd.Series(value, index=pd.Index(rows["sequence"].to_numpy(), name="sequence"), name=metric)


def mean_over_runs(vectors: list[pd.Series]) -> pd.Series:
    """Per-user mean over several runs (seeds), on the users every run evaluated, in sequence order."""
    if not vectors:
        raise CSRecError("no runs to average; a cell needs at least one finished trial")
    joined = pd.concat(vectors, axis=1, join="inner").sort_index()
    return joined.mean(axis=1).rename(vectors[0].name)


def align(a: pd.Series, b: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """The two vectors on their common users (inner join on sequence), in sequence order."""
    joined = pd.concat([a.rename("a"), b.rename("b")], axis=1, join="inner").sort_index()
    return joined["a"].to_numpy(), joined["b"].to_numpy()


@dataclass(frozen=True)
class PairedTest:
    test: str
    statistic: float
    p_value: float
    n: int  # paired users


def paired_test(x: np.ndarray, y: np.ndarray, test: str = "ttest", n_resamples: int = 10000,
                seed: int = 0) -> PairedTest:
    """Two-sided paired test of H0: mean(x - y) = 0 (t-test, Wilcoxon) or symmetric x - y (sign flip).

    ttest: scipy.stats.ttest_rel, t = mean(d) / (sd(d) / sqrt(n)), sd with ddof 1, n - 1 dof.
    wilcoxon: scipy.stats.wilcoxon, zero differences dropped (Wilcoxon's convention).
    randomisation: scipy.stats.permutation_test swapping x and y within each pair (a sign flip of
    d), statistic mean(d), `n_resamples` draws seeded by `seed` (exact when 2^n <= n_resamples).
    When every difference is 0 there is no evidence of a difference: p = 1 (scipy gives NaN or
    fails there). With fewer than 2 pairs p is NaN.
    """
    if test not in TESTS:
        raise CSRecError(f"test {test!r}: use one of {', '.join(TESTS)}")
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise CSRecError(f"paired vectors must be 1-d of equal length, got {x.shape} and {y.shape}")
    n = len(x)
    if n < 2:
        return PairedTest(test, float("nan"), float("nan"), n)
    if np.all(x == y):
        return PairedTest(test, 0.0, 1.0, n)
    if test == "ttest":
        result = stats.ttest_rel(x, y)
    elif test == "wilcoxon":
        result = stats.wilcoxon(x, y)
    else:
        batch = max(1, _PERMUTATION_ELEMENTS // n)  # resamples per step: memory batch x n, not n_resamples x n
        result = stats.permutation_test((x, y), _mean_difference, permutation_type="samples", vectorized=True,
                                        n_resamples=n_resamples, alternative="two-sided", batch=batch,
                                        random_state=np.random.default_rng(seed))
    return PairedTest(test, float(result.statistic), float(result.pvalue), n)


def _mean_difference(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(a - b, axis=axis)


@dataclass(frozen=True)
class EffectSize:
    mean_difference: float  # mean over users of x - y
    low: float
    high: float  # percentile bootstrap interval at `confidence`


def effect_size(x: np.ndarray, y: np.ndarray, n_resamples: int = 2000, seed: int = 0,
                confidence: float = 0.95, chunk: int = 256) -> EffectSize:
    """Mean paired difference with a percentile bootstrap interval (users resampled with their pair).

    Resamples are drawn `chunk` at a time so memory stays chunk x n whatever n_resamples is.
    """
    d = np.asarray(x, dtype=np.float64) - np.asarray(y, dtype=np.float64)  # [n]
    if len(d) == 0:
        return EffectSize(float("nan"), float("nan"), float("nan"))
    if not 0 < confidence < 1 or n_resamples < 1:
        raise CSRecError("effect_size needs 0 < confidence < 1 and n_resamples >= 1")
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        index = rng.integers(0, len(d), size=(size, len(d)))  # [size, n]
        means[start:start + size] = d[index].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return EffectSize(float(d.mean()), float(low), float(high))


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjusted p-values, in the input order; NaN entries are ignored and stay NaN.

    With the m p-values sorted p_(1) <= ... <= p_(m): adj_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)).
    """
    p = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full(p.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    order = valid[np.argsort(p[valid], kind="stable")]
    m = len(order)
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])  # [m]
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted


def marker(p_value: float) -> str:
    """The paper's markers: '**' for p < 0.05, '*' for p < 0.1, '' otherwise (and for NaN)."""
    if p_value is None or np.isnan(p_value):
        return ""
    return "**" if p_value < 0.05 else "*" if p_value < 0.1 else ""


CORRECTIONS = (None, "holm")
COMPARISON_COLUMNS = ["dataset", "model", "method", "metric", "versus", "test", "n_users", "statistic",
                      "p_value", "p_adjusted", "marker", "mean_difference", "ci_low", "ci_high"]


def comparisons(collection: Collection, chosen: dict[tuple[str, str, str], Selected], metrics: tuple[str, ...],
                versus: str = "softrec", test: str = "ttest", correction: str | None = None,
                n_resamples: int = 10000, seed: int = 0, bootstrap: int = 0) -> pd.DataFrame:
    """Every selected cell against the `versus` method of its (dataset, model), per metric.

    Each side is the per-user test vector of the runs its numbers are reported from (averaged over
    seeds), joined on the users both evaluated. `correction="holm"` adjusts across all the rows
    returned (a table's comparisons); `marker` follows the adjusted p-value. `bootstrap` > 0 adds a
    seeded paired-bootstrap 95% interval of the mean difference (method - versus) with that many resamples.
    """
    if correction not in CORRECTIONS:
        raise CSRecError(f"correction {correction!r}: use none or 'holm'")
    frames: dict[str, pd.DataFrame] = {}

    def vector(sel: Selected, metric: str) -> pd.Series:
        for key in sel.keys:
            if key not in frames:
                frames[key] = collection.per_user(key)
        return mean_over_runs([per_user_metric(frames[key], metric) for key in sel.keys])

    rows = []
    for cell, sel in chosen.items():
        reference = chosen.get((cell[0], cell[1], versus))
        if cell[2] == versus or reference is None or not sel.keys or not reference.keys:
            continue
        for metric in metrics:
            x, y = align(vector(sel, metric), vector(reference, metric))
            result = paired_test(x, y, test, n_resamples, seed)
            effect = effect_size(x, y, bootstrap, seed) if bootstrap > 0 and len(x) else None
            rows.append({"dataset": cell[0], "model": cell[1], "method": cell[2], "metric": metric,
                         "versus": versus, "test": test, "n_users": result.n, "statistic": result.statistic,
                         "p_value": result.p_value,
                         "mean_difference": float(np.mean(x - y)) if len(x) else np.nan,
                         "ci_low": effect.low if effect else np.nan, "ci_high": effect.high if effect else np.nan})
    table = pd.DataFrame(rows, columns=COMPARISON_COLUMNS)
    table["p_adjusted"] = holm(table["p_value"]) if correction == "holm" else table["p_value"]
    table["marker"] = [marker(p) for p in table["p_adjusted"]]
    return table
