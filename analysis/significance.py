"""Paired significance tests of a method against a reference method, and the table's markers.

Each evaluation "user" (a sequence) has one test target, so a run's metric is the mean of its
per-user values (analysis.collect.per_user_metric). Two families of tests, answering two questions:

- per user (the paper's): each method's per-user value averaged over its seeds, paired over the
  same users (inner join on `sequence`); the paired two-sided t-test by default, Wilcoxon
  signed-rank or a paired randomisation (sign-flip) test as options. They ask "do these trained
  models differ on these users?"; seed-to-seed variance is not in them, so a rerun that happens to
  be better on every user is evidence enough.
- seed-level (analysis.seed_tests): the exact permutation test on the runs' means
  ("seed-permutation"), Welch's t-test on them ("seed-welch") and the t-test over per-seed means
  paired by seed ("seed-ttest", >= 5 seeds). They ask "is the method better than the reference
  across training seeds, on this test set?", and keep their level in the crossed seed x user
  design (tests/test_seed_calibration.py). A cell whose seeds cannot give p below the table's
  strictest level (3 runs a side under the permutation test) gets no p-value: untestable.

`marker` follows the paper's caption: ** and * mark significant *improvements* over the reference;
a significant deterioration gets its own mark. Holm's correction is available across a table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from analysis.collect import RATING_THRESHOLD, Collection, Selected, per_user_metric  # noqa: F401 (re-exported)
from analysis.seed_tests import MIN_SEEDS, permutation_test, run_means, seed_ttest, seeds_needed, welch_test
from csrec.errors import CSRecError
from csrec.metrics import parse_metric  # noqa: F401 (re-exported)

PER_USER_TESTS = ("ttest", "wilcoxon", "randomisation")
SEED_TESTS = ("seed-permutation", "seed-welch", "seed-ttest")
TESTS = PER_USER_TESTS + SEED_TESTS
_PERMUTATION_ELEMENTS = 4_000_000  # floats per vectorised permutation step (32 MB)


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
    if test not in PER_USER_TESTS:
        raise CSRecError(f"per-user test {test!r}: use one of {', '.join(PER_USER_TESTS)}")
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


IMPROVEMENT_LEVELS = (("**", 0.05), ("*", 0.1))  # the paper's caption: significant improvements
WORSE, WORSE_LEVEL = "↓", 0.05  # a significant deterioration: its own mark


def marker(p_value: float, difference: float) -> str:
    """'**' (p < 0.05) or '*' (p < 0.1) for a significant improvement (difference > 0, method minus
    reference), '↓' for a significant deterioration (difference < 0, p < 0.05), '' otherwise and for NaN."""
    if p_value is None or difference is None or np.isnan(p_value) or np.isnan(difference):
        return ""
    if difference > 0:
        return next((mark for mark, level in IMPROVEMENT_LEVELS if p_value < level), "")
    return WORSE if difference < 0 and p_value < WORSE_LEVEL else ""


CORRECTIONS = (None, "holm")
LEVEL = min([level for _, level in IMPROVEMENT_LEVELS] + [WORSE_LEVEL])  # a seed-level test must reach it to mark
COMPARISON_COLUMNS = ["dataset", "model", "method", "metric", "versus", "test", "n_users", "n_seeds", "n_seeds_versus",
                      "statistic", "p_value", "p_adjusted", "marker", "mean_difference", "ci_low", "ci_high",
                      "smallest_p", "untestable"]


def seed_matrices(collection: Collection, sel: Selected, reference: Selected, metric: str, ties: str = "expected",
                  paired_seeds: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Per-seed per-user test values of two cells: [S_a, U] and [S_b, U], on the users every run
    evaluated, in sequence order. `paired_seeds` keeps only the seed numbers both cells ran, in order."""
    keys_a, keys_b = dict(zip(sel.seeds, sel.keys)), dict(zip(reference.seeds, reference.keys))
    if paired_seeds:
        common = sorted(set(keys_a) & set(keys_b))
        keys_a, keys_b = {s: keys_a[s] for s in common}, {s: keys_b[s] for s in common}
    runs = [per_user_metric(collection.per_user(key), metric, ties=ties) for key in [*keys_a.values(), *keys_b.values()]]
    if not runs:
        return np.zeros((0, 0)), np.zeros((0, 0))
    joined = pd.concat(runs, axis=1, join="inner").sort_index().to_numpy().T  # [S_a + S_b, U]
    return joined[:len(keys_a)], joined[len(keys_a):]


def comparisons(collection: Collection, chosen: dict[tuple[str, str, str], Selected], metrics: tuple[str, ...],
                versus: str = "softrec", test: str = "ttest", correction: str | None = None,
                n_resamples: int = 10000, seed: int = 0, bootstrap: int = 0, ties: str = "expected") -> pd.DataFrame:
    """Every selected cell against the `versus` method of its (dataset, model), per metric.

    Both sides use the runs their numbers are reported from (Selected.keys), on the users every
    run evaluated. Per-user tests (PER_USER_TESTS) pair the per-user means over seeds; seed-level
    tests (SEED_TESTS, analysis.seed_tests) compare the runs' means: "seed-permutation" exactly
    (n_resamples and seed only beyond EXACT_SPLITS splits), "seed-welch" (its 95% interval fills
    ci_low / ci_high), "seed-ttest" pairs per-seed means by seed number. `untestable`: a seed-level
    test whose seeds cannot give p < LEVEL (fewer than MIN_SEEDS, or the permutation test's
    smallest_p >= LEVEL): p is NaN and the cell gets no marker. mean_difference is method minus
    reference over the values tested; the marker needs its sign. `correction="holm"` adjusts across
    all the rows returned (a table's comparisons); `marker` follows the adjusted p-value.
    `bootstrap` > 0 adds to a per-user test a user-level paired-bootstrap 95% interval with that
    many resamples.
    """
    if correction not in CORRECTIONS:
        raise CSRecError(f"correction {correction!r}: use none or 'holm'")
    if test not in TESTS:
        raise CSRecError(f"test {test!r}: use one of {', '.join(TESTS)}")
    rows = []
    for cell, sel, reference in _against(chosen, versus):
        for metric in metrics:
            a, b = seed_matrices(collection, sel, reference, metric, ties, paired_seeds=test == "seed-ttest")
            row = {"dataset": cell[0], "model": cell[1], "method": cell[2], "metric": metric, "versus": versus,
                   "test": test, "n_users": a.shape[1], "n_seeds": len(a), "n_seeds_versus": len(b),
                   "statistic": np.nan, "p_value": np.nan, "ci_low": np.nan, "ci_high": np.nan,
                   "smallest_p": np.nan, "untestable": False,
                   "mean_difference": float(a.mean() - b.mean()) if a.size and b.size else np.nan}
            rows.append(row | _test(a, b, test, n_resamples, seed, bootstrap))
    table = pd.DataFrame(rows, columns=COMPARISON_COLUMNS)
    table["p_adjusted"] = holm(table["p_value"]) if correction == "holm" else table["p_value"]
    table["marker"] = [marker(p, d) for p, d in zip(table["p_adjusted"], table["mean_difference"])]
    return table


def _against(chosen: dict[tuple[str, str, str], Selected], versus: str):
    """(cell, its selection, the `versus` method's selection in its (dataset, model)) for every cell
    other than the reference's own that has runs on both sides."""
    for cell, sel in chosen.items():
        reference = chosen.get((cell[0], cell[1], versus))
        if cell[2] != versus and reference is not None and sel.keys and reference.keys:
            yield cell, sel, reference


def _test(a: np.ndarray, b: np.ndarray, test: str, n_resamples: int, seed: int, bootstrap: int) -> dict:
    """The columns one test fills, from the seed matrices a [S_a, U] and b [S_b, U]."""
    if test in PER_USER_TESTS:
        x, y = (a.mean(axis=0), b.mean(axis=0)) if a.size and b.size else (np.zeros(0), np.zeros(0))
        result = paired_test(x, y, test, n_resamples, seed)
        out = {"statistic": result.statistic, "p_value": result.p_value}
        if bootstrap > 0 and len(x):
            effect = effect_size(x, y, bootstrap, seed)
            out |= {"ci_low": effect.low, "ci_high": effect.high}
        return out
    if a.shape[1] == 0:
        return {}
    if min(len(a), len(b)) < MIN_SEEDS[test]:
        return {"untestable": True}
    if test == "seed-ttest":
        statistic, p_value = seed_ttest(a, b)
        return {"statistic": statistic, "p_value": p_value}
    if test == "seed-welch":
        result, low, high = welch_test(a, b)
        return {"statistic": result.statistic, "p_value": result.p_value, "ci_low": low, "ci_high": high}
    result = permutation_test(a, b, level=LEVEL, n_resamples=n_resamples, seed=seed)
    return {"statistic": result.statistic, "p_value": result.p_value, "smallest_p": result.smallest_p,
            "untestable": bool(np.isnan(result.p_value))}


POWER_COLUMNS = ["dataset", "model", "method", "metric", "versus", "n_seeds", "n_seeds_versus", "mean_difference",
                 "sd", "sd_versus", "p_value", "seeds_needed"]


def seed_power(collection: Collection, chosen: dict[tuple[str, str, str], Selected], metrics: tuple[str, ...],
               versus: str = "softrec", alpha: float = LEVEL, power: float = 0.8, ties: str = "expected") -> pd.DataFrame:
    """Every selected cell against `versus`: the observed difference of the runs' means (method minus
    reference), the sd of the runs' means on each side (ddof 1; NaN with one run), the exact
    permutation test's p (NaN where its seeds cannot reach `alpha`) and the runs per method that
    would detect the observed difference with `power` at two-sided `alpha` if it were the true one
    (analysis.seed_tests.seeds_needed; None where the difference is 0 or a side has one run).
    The count is an estimate: it takes the observed difference and sds for the true ones."""
    rows = []
    for cell, sel, reference in _against(chosen, versus):
        for metric in metrics:
            a, b = seed_matrices(collection, sel, reference, metric, ties)
            if a.size == 0 or b.size == 0:
                continue
            x, y = run_means(a), run_means(b)
            sd_a = float(x.std(ddof=1)) if len(x) > 1 else np.nan
            sd_b = float(y.std(ddof=1)) if len(y) > 1 else np.nan
            test = permutation_test(a, b, level=alpha)
            rows.append({"dataset": cell[0], "model": cell[1], "method": cell[2], "metric": metric, "versus": versus,
                         "n_seeds": len(x), "n_seeds_versus": len(y), "mean_difference": test.difference,
                         "sd": sd_a, "sd_versus": sd_b, "p_value": test.p_value,
                         "seeds_needed": seeds_needed(test.difference, sd_a, sd_b, alpha, power)})
    return pd.DataFrame(rows, columns=POWER_COLUMNS)
