"""Seed-level tests: is method A better than the reference across training seeds, on this test set?

The design is crossed: every run (a method trained with one seed) is scored on the same users.
A run's metric is the mean over those users of its per-user values, so, the test set held fixed,
the runs of one method are independent draws of one number: the method's mean plus the seed's
effect plus the mean over the users of the seed x user noise. Whatever the users contribute in
common cancels from a difference of run means; nothing of it must be resampled. The tests here
therefore work on the runs' means, one number per run, and keep their level under that design
(tests/test_seed_calibration.py simulates crossed seed and user effects and checks it):

- `permutation_test` ("seed-permutation", the table's seed-level test): H0: the runs' means of
  both methods come from one distribution (the method changes nothing but the seed's draw). The
  statistic is the difference of the two groups' mean; the two-sided p-value is the share of all
  C(S_a + S_b, S_a) splits of the runs into groups of S_a and S_b whose |difference| is at least
  the observed one (exact: every split enumerated, up to `EXACT_SPLITS`; beyond, a seeded sample).
  No distributional assumption. Its p-values are multiples of 1 / C: at 3 seeds against 3 the
  smallest is 2/20 = 0.1, so no cell with 3 seeds a method can be marked at p < 0.05 (`smallest_p`).
- `welch_test` ("seed-welch"): Welch's two-sample t-test on the runs' means, H0 equal expected
  means, the runs' means normal (means over thousands of users are), variances may differ. Its
  95% interval is the report's interval for the difference.
- `seed_ttest` ("seed-ttest"): the paired t-test over per-seed means, paired by seed number
  (soft-label students of one seed share initial weights and batch order, so pairing can help),
  >= 5 common seeds.

Seeds are treated as independent between methods (the two permutation groups, Welch's two
samples). Where shared seed streams correlate two methods' runs positively, the unpaired tests
overstate the variance of the difference: conservative, never liberal. What all the seeds of a
cell share (CSRec-M's teachers are the same Base runs at every seed) is held fixed, as the users are.

`seeds_needed` answers "how many seeds per method would detect this difference": the two-sample
t-test's power (noncentral t), which the permutation test's approaches for normal run means (the
calibration test checks the power the permutation test reaches at that number by simulation), and
never fewer seeds than let the permutation test reach the level at all.

Inputs are per-seed per-user matrices: a [S_a, U] and b [S_b, U], row s the per-user test values
of one seed's run, columns the same users in the same order (analysis.significance.seed_matrices).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from math import comb

import numpy as np

from csrec.errors import CSRecError

EXACT_SPLITS = 200_000  # enumerate every split up to this many (10 seeds against 10: 184,756)
MIN_SEEDS = {"seed-permutation": 2, "seed-welch": 2, "seed-ttest": 5}
_CHUNK = 8_000_000  # split x experiment entries per vectorised step (64 MB)


@dataclass(frozen=True)
class SeedTest:
    difference: float  # mean of a's run means minus mean of b's
    statistic: float  # the test's statistic (the difference itself for the permutation test)
    p_value: float  # two-sided; NaN when the seeds cannot reach `level` (see smallest_p)
    smallest_p: float  # the smallest p-value these seed counts can give
    n_seeds: tuple[int, int]


def run_means(x: np.ndarray) -> np.ndarray:
    """[S] the runs' means over the users of a [S, U] matrix (the metric each run reports)."""
    return np.asarray(x, dtype=np.float64).mean(axis=1)


def _check(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or a.shape[1] == 0:
        raise CSRecError(f"seed matrices must be [seeds, users] over the same (some) users, got {a.shape} and {b.shape}")
    return a, b


def smallest_p(n_a: int, n_b: int) -> float:
    """The smallest two-sided p-value the exact permutation test can give with n_a and n_b runs.

    With distinct run means the most extreme split is unique, and with n_a == n_b its mirror (the
    groups swapped) has the same |difference|: 2 / C(n_a + n_b, n_a), else 1 / C(n_a + n_b, n_a).
    """
    if min(n_a, n_b) < 1:
        return 1.0
    splits = comb(n_a + n_b, n_a)
    return min(1.0, (2 if n_a == n_b else 1) / splits)


def seeds_to_reach(level: float) -> int:
    """The fewest seeds per method (the same on both sides) at which the permutation test can give p < level."""
    n = 1
    while smallest_p(n, n) >= level:
        n += 1
    return n


def _splits(n_a: int, n_b: int, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """[C, n_a + n_b] 0/1 rows, 1 for the runs put in group a: every split when there are at most
    EXACT_SPLITS, else the observed split and n_resamples - 1 random ones."""
    n = n_a + n_b
    if comb(n, n_a) <= EXACT_SPLITS:
        # With equal counts a split and its mirror (groups swapped) have the same |difference|: the
        # splits that put run 0 in group a are half of them, in the same proportions.
        members = itertools.combinations(range(1, n), n_a - 1) if n_a == n_b else itertools.combinations(range(n), n_a)
        members = [((0,) if n_a == n_b else ()) + m for m in members]
        rows = np.zeros((len(members), n))
        for i, chosen in enumerate(members):
            rows[i, list(chosen)] = 1.0
        return rows
    rows = np.zeros((n_resamples, n))
    rows[0, :n_a] = 1.0
    for i in range(1, n_resamples):
        rows[i, rng.permutation(n)[:n_a]] = 1.0
    return rows


def permutation_p_values(means_a: np.ndarray, means_b: np.ndarray, n_resamples: int = 20_000,
                         seed: int = 0) -> np.ndarray:
    """[E] two-sided permutation p-values of E experiments at once: means_a [E, S_a], means_b [E, S_b].

    p = #{splits: |diff| >= |observed diff|} / #splits, the observed split counted (so p >= 1 / C);
    a relative tolerance of 1e-9 keeps a split equal to the observed one from being lost to rounding.
    """
    means_a, means_b = np.atleast_2d(means_a), np.atleast_2d(means_b)
    n_a, n_b = means_a.shape[1], means_b.shape[1]
    values = np.concatenate([means_a, means_b], axis=1)  # [E, n]
    splits = _splits(n_a, n_b, n_resamples, np.random.default_rng(seed))  # [C, n]
    # diff = sum_a / n_a - (total - sum_a) / n_b = (sum_a - centre) * scale: compare |sum_a - centre|
    scale = 1 / n_a + 1 / n_b
    centre = values.sum(axis=1) / n_b / scale  # [E]
    observed = np.abs(means_a.mean(axis=1) - means_b.mean(axis=1)) / scale  # [E]
    threshold = observed * (1 - 1e-9) - 1e-15
    counts = np.zeros(len(values))
    step = max(1, _CHUNK // len(splits))
    for start in range(0, len(values), step):
        part = slice(start, start + step)
        deviation = splits @ values[part].T  # [C, e] each split's sum_a
        deviation -= centre[part]
        np.abs(deviation, out=deviation)
        counts[part] = (deviation >= threshold[part]).sum(axis=0)
    return counts / len(splits)


def permutation_test(a: np.ndarray, b: np.ndarray, level: float | None = None, n_resamples: int = 20_000,
                     seed: int = 0) -> SeedTest:
    """Exact two-sided permutation test on the runs' means of a [S_a, U] against b [S_b, U].

    level: when the seed counts cannot give p < level (smallest_p >= level), p is NaN: the cell is
    untestable at that level, which is not "no difference". Identical runs give p = 1.
    """
    a, b = _check(a, b)
    x, y = run_means(a), run_means(b)
    floor = smallest_p(len(x), len(y)) if comb(len(x) + len(y), len(x)) <= EXACT_SPLITS else 1 / n_resamples
    difference = float(x.mean() - y.mean())
    if level is not None and floor >= level:
        return SeedTest(difference, difference, float("nan"), floor, (len(x), len(y)))
    p = 1.0 if np.all(np.concatenate([x, y]) == x[0]) else float(permutation_p_values(x, y, n_resamples, seed)[0])
    return SeedTest(difference, difference, p, floor, (len(x), len(y)))


def welch_test(a: np.ndarray, b: np.ndarray, confidence: float = 0.95) -> tuple[SeedTest, float, float]:
    """Welch's two-sided t-test on the runs' means, and its `confidence` interval for the difference.

    Needs >= 2 runs a side; NaN when both sides have no spread (p = 1 if their means are equal).
    """
    from scipy import stats

    a, b = _check(a, b)
    x, y = run_means(a), run_means(b)
    difference = float(x.mean() - y.mean())
    if min(len(x), len(y)) < 2:
        return SeedTest(difference, float("nan"), float("nan"), 0.0, (len(x), len(y))), float("nan"), float("nan")
    va, vb = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    if va + vb == 0:
        p = 1.0 if difference == 0 else float("nan")
        return SeedTest(difference, float("nan"), p, 0.0, (len(x), len(y))), difference, difference
    dof = (va + vb) ** 2 / (va ** 2 / (len(x) - 1) + vb ** 2 / (len(y) - 1))
    t = difference / np.sqrt(va + vb)
    half = stats.t.ppf((1 + confidence) / 2, dof) * np.sqrt(va + vb)
    p = float(2 * stats.t.sf(abs(t), dof))
    return SeedTest(difference, float(t), p, 0.0, (len(x), len(y))), difference - half, difference + half


def seed_ttest(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(t, two-sided p) of the paired t-test over per-seed means; a, b [S, U], row s of each the
    same seed number. NaN with fewer than 5 seeds; p = 1 when every seed's difference is 0."""
    from scipy import stats

    a, b = _check(a, b)
    if len(a) != len(b):
        raise CSRecError(f"the seed-level test pairs seeds: give the same seeds of both methods, got {len(a)} and {len(b)}")
    if len(a) < MIN_SEEDS["seed-ttest"]:
        return float("nan"), float("nan")
    x, y = run_means(a), run_means(b)
    if np.all(x == y):
        return 0.0, 1.0
    result = stats.ttest_rel(x, y)
    return float(result.statistic), float(result.pvalue)


def t_test_power(difference: float, sd_a: float, sd_b: float, n: int, alpha: float = 0.05) -> float:
    """Power of the two-sided two-sample t-test with n runs a side (pooled, 2n - 2 degrees of
    freedom) against a true difference of run means `difference`, run sds sd_a and sd_b (noncentral t)."""
    from scipy import stats

    if n < 2:
        return 0.0
    dof = 2 * n - 2
    ncp = abs(difference) / np.sqrt((sd_a ** 2 + sd_b ** 2) / n)
    critical = stats.t.ppf(1 - alpha / 2, dof)
    power = float(stats.nct.sf(critical, dof, ncp) + stats.nct.cdf(-critical, dof, ncp))
    if np.isnan(power):  # scipy's nct fails far in the tail (large ncp and dof), where the normal limit is exact enough
        power = float(stats.norm.sf(critical - ncp) + stats.norm.cdf(-critical - ncp))
    return power


def seeds_needed(difference: float, sd_a: float, sd_b: float, alpha: float = 0.05, power: float = 0.8,
                 most: int = 10_000) -> int | None:
    """The fewest runs per method (the same on both sides) that detect `difference` with `power` at
    two-sided level `alpha`: the two-sample t-test's power (t_test_power), and at least
    seeds_to_reach(alpha) so that the permutation test can reach the level. None when no number up
    to `most` does (a zero or NaN difference, or no spread known)."""
    if any(np.isnan(v) for v in (difference, sd_a, sd_b)) or difference == 0:
        return None
    if sd_a == 0 and sd_b == 0:
        return seeds_to_reach(alpha)
    n = max(2, seeds_to_reach(alpha))
    if t_test_power(difference, sd_a, sd_b, most, alpha) < power:
        return None
    low, high = n, most  # power grows with n: bisect for the first n that reaches it
    while low < high:
        middle = (low + high) // 2
        if t_test_power(difference, sd_a, sd_b, middle, alpha) >= power:
            high = middle
        else:
            low = middle + 1
    return low
