"""Seed-aware comparisons of two methods: is the method better, counting seed-to-seed variance?

The paper's per-user test (analysis.significance.paired_test on per-user values averaged over the
seeds) answers "do these trained models differ on these users?": a rerun that is better on every
user counts as evidence, though another seed might have lost. These answer "is the method better?":

- `two_level_bootstrap`: resample each method's seeds, then the users, and take the mean
  difference; a percentile interval and a two-sided p-value. Needs >= 2 seeds per method.
- `seed_ttest`: the paired two-sided t-test over the per-seed means (paired by seed number), with
  >= 5 common seeds (below that it has too few degrees of freedom to mean much).

Inputs are per-seed per-user matrices: a [S_a, U] and b [S_b, U], row s the per-user test values of
one seed's run, columns the same users in the same order (analysis.significance.seed_matrices).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from csrec.errors import CSRecError

MIN_SEEDS = {"bootstrap": 2, "seed-ttest": 5}


@dataclass(frozen=True)
class Bootstrap:
    difference: float  # mean(a) - mean(b) over all seeds and users
    low: float
    high: float  # percentile interval at `confidence`
    p_value: float  # two-sided, see two_level_bootstrap
    n_users: int


def _check(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise CSRecError(f"seed matrices must be [seeds, users] over the same users, got {a.shape} and {b.shape}")
    return a, b


def _seed_resample(x: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """[size, U]: per-user means over S seeds drawn with replacement from x [S, U], S >= 2.

    The seed deviations from the per-user mean are scaled by sqrt(S / (S - 1)) first, so that the
    resampled seed mean has the unbiased variance s^2 / S (plain resampling gives (S - 1) / S of it:
    2/3 at three seeds, an interval too narrow where it matters most).
    """
    n_seeds = x.shape[0]
    centre = x.mean(axis=0)  # [U]
    scaled = centre + (x - centre) * np.sqrt(n_seeds / (n_seeds - 1))  # [S, U]
    counts = rng.multinomial(n_seeds, np.full(n_seeds, 1.0 / n_seeds), size=size)  # [size, S]
    return counts @ scaled / n_seeds  # [size, U]


def two_level_bootstrap(a: np.ndarray, b: np.ndarray, n_resamples: int = 2000, seed: int = 0,
                        confidence: float = 0.95, chunk: int = 256) -> Bootstrap:
    """Two-level paired bootstrap of mean(a) - mean(b); a [S_a, U], b [S_b, U] (S >= 2 each).

    One resample: draw S_a seeds of a and, independently, S_b seeds of b with replacement (the seed
    deviations scaled as in `_seed_resample`); then draw U users with replacement, the same users
    for both (the users are paired: the same test targets); the statistic is the mean over those
    users of the two per-user seed means' difference. Seeds are resampled independently rather than
    paired by seed number: a seed number means different things to different methods (two
    soft-label students of one seed share the "student" stream, initial weights and batch order,
    while a Base run of that seed does not; csrec.methods), and the seed sets may differ in size.
    Independent resampling is valid either way; if shared streams correlate two runs positively it
    overstates the variance (a wider, conservative interval), never understates it. What all the
    seeds of a cell share (CSRec-M's teachers are the same Base runs at every seed) is not resampled.

    interval: the (1 - confidence) / 2 and (1 + confidence) / 2 percentiles of the resampled
    differences. p-value: 2 min(P*(d <= 0), P*(d >= 0)), each share counted as (count + 1) /
    (n_resamples + 1) so that it is never 0, capped at 1. Like any percentile interval from a few
    seeds it is a normal-theory interval in disguise, narrower than a t-interval would be: on
    synthetic data whose seed variance dominates (1,000 experiments, 100 users) the 95% interval
    covered the true difference 88% of the time at 3 seeds per method, 92% at 5 and 95% at 10; a
    per-user interval that ignores the seeds covered it 34-41% of the time. `seed_ttest` is exact
    under normality.
    Resamples are drawn `chunk` at a time (memory chunk x U), seeded by `seed`.
    """
    a, b = _check(a, b)
    if min(len(a), len(b)) < MIN_SEEDS["bootstrap"] or a.shape[1] == 0:
        raise CSRecError(f"the two-level bootstrap needs >= 2 seeds per method and some users, got "
                         f"{len(a)} and {len(b)} seeds, {a.shape[1]} users")
    if not 0 < confidence < 1 or n_resamples < 1:
        raise CSRecError("the bootstrap needs 0 < confidence < 1 and n_resamples >= 1")
    rng = np.random.default_rng(seed)
    n_users = a.shape[1]
    differences = np.empty(n_resamples)  # [n_resamples]
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        per_user = _seed_resample(a, size, rng) - _seed_resample(b, size, rng)  # [size, U]
        users = rng.integers(0, n_users, size=(size, n_users))  # [size, U]
        differences[start:start + size] = np.take_along_axis(per_user, users, axis=1).mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(differences, [tail, 100 - tail])
    shares = [(np.sum(differences <= 0) + 1) / (n_resamples + 1), (np.sum(differences >= 0) + 1) / (n_resamples + 1)]
    return Bootstrap(float(a.mean() - b.mean()), float(low), float(high), float(min(1.0, 2 * min(shares))), n_users)


def seed_ttest(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(t, two-sided p) of the paired t-test over per-seed means; a, b [S, U], row s of each the
    same seed number. NaN with fewer than 5 seeds; p = 1 when every seed's difference is 0."""
    from scipy import stats

    a, b = _check(a, b)
    if len(a) != len(b):
        raise CSRecError(f"the seed-level test pairs seeds: give the same seeds of both methods, got {len(a)} and {len(b)}")
    if len(a) < MIN_SEEDS["seed-ttest"]:
        return float("nan"), float("nan")
    x, y = a.mean(axis=1), b.mean(axis=1)  # [S] per-seed means
    if np.all(x == y):
        return 0.0, 1.0
    result = stats.ttest_rel(x, y)
    return float(result.statistic), float(result.pvalue)
