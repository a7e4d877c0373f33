"""analysis.significance: p-values against scipy and against values worked out by hand."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis.seed_tests import permutation_test, seed_ttest, welch_test
from analysis.significance import (align, effect_size, holm, marker, mean_over_runs, paired_test, parse_metric,
                                   per_user_metric)
from csrec.errors import CSRecError
from csrec.evaluate import compute_metrics

# d = x - y = [0.2, 0.1, 0.3, -0.1, 0.5]: mean 0.2, sum of squared deviations 0.2, sd = sqrt(0.05),
# t = 0.2 / (sqrt(0.05) / sqrt(5)) = 2 exactly, 4 degrees of freedom.
X = np.array([0.5, 0.2, 0.9, 0.4, 0.7])
Y = np.array([0.3, 0.1, 0.6, 0.5, 0.2])


def _pairs(n: int, shift: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.random(n)
    return y + shift + rng.normal(0.0, 0.3, n), y


def test_t_statistic_and_p_value_by_hand():
    result = paired_test(X, Y, "ttest")
    assert result.statistic == pytest.approx(2.0, abs=1e-12)
    assert result.n == 5
    # Student t with 4 dof: P(|T| < t) = I_x(1/2, 2) = sqrt(x) (3 - x) / 2 with x = t^2 / (t^2 + 4) = 0.5.
    x = 0.5
    assert result.p_value == pytest.approx(1 - np.sqrt(x) * (3 - x) / 2, abs=1e-12)  # 0.11611652
    assert marker(result.p_value, 0.2) == ""


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ttest_and_wilcoxon_equal_scipy(seed):
    x, y = _pairs(60, 0.08 * seed, seed)
    t = paired_test(x, y, "ttest")
    expected = stats.ttest_rel(x, y)
    assert (t.statistic, t.p_value) == pytest.approx((expected.statistic, expected.pvalue), rel=1e-12)
    w = paired_test(x, y, "wilcoxon")
    expected = stats.wilcoxon(x, y)
    assert (w.statistic, w.p_value) == pytest.approx((expected.statistic, expected.pvalue), rel=1e-12)


def test_wilcoxon_statistic_by_hand():
    # |d| ranks 0.5:1, 1.0:2, 1.5:3, 2.0:4, 2.5:5, 3.0:6; W+ = 3+4+6+2 = 15, W- = 1+5 = 6.
    d = np.array([1.5, -0.5, 2.0, 3.0, 1.0, -2.5])
    result = paired_test(d, np.zeros(6), "wilcoxon")
    assert result.statistic == 6.0
    # exact: 14 of the 64 sign patterns have W- <= 6 (subset sums of 1..6 that are <= 6), two-sided
    assert result.p_value == pytest.approx(2 * 14 / 64)


def test_randomisation_equals_scipy_and_exact_enumeration():
    x, y = _pairs(8, 0.2, 3)
    result = paired_test(x, y, "randomisation", n_resamples=10000, seed=0)
    expected = stats.permutation_test((x, y), lambda a, b, axis: np.mean(a - b, axis=axis), vectorized=True,
                                      permutation_type="samples", n_resamples=10000, random_state=np.random.default_rng(0))
    assert result.p_value == pytest.approx(expected.pvalue, rel=1e-12)
    # 2^8 = 256 <= n_resamples: every sign flip of d is enumerated, p = share with |mean| >= observed
    d = x - y
    flips = np.array(list(itertools.product([1.0, -1.0], repeat=8)))  # [256, 8]
    by_hand = np.mean(np.abs((flips * d).mean(axis=1)) >= abs(d.mean()) * (1 - 1e-12))
    assert result.p_value == pytest.approx(by_hand, rel=1e-12)
    assert result.statistic == pytest.approx(d.mean())


def test_randomisation_is_seeded():
    x, y = _pairs(40, 0.05, 4)
    first = paired_test(x, y, "randomisation", n_resamples=500, seed=7).p_value
    assert paired_test(x, y, "randomisation", n_resamples=500, seed=7).p_value == first
    ref = stats.permutation_test((x, y), lambda a, b, axis: np.mean(a - b, axis=axis), vectorized=True,
                                 permutation_type="samples", n_resamples=500, random_state=np.random.default_rng(7))
    assert first == pytest.approx(ref.pvalue, rel=1e-12)
    assert 0 < first <= 1


def test_degenerate_pairs():
    assert paired_test(X, X, "ttest").p_value == 1.0  # no difference at all (scipy: NaN)
    assert paired_test(X, X, "wilcoxon").p_value == 1.0
    assert np.isnan(paired_test(X[:1], Y[:1]).p_value)
    with pytest.raises(CSRecError, match="ttest, wilcoxon, randomisation"):
        paired_test(X, Y, "sign")
    with pytest.raises(CSRecError, match="per-user test 'bootstrap'"):
        paired_test(X, Y, "bootstrap")
    with pytest.raises(CSRecError, match="equal length"):
        paired_test(X, Y[:4])


def test_holm_by_hand():
    # sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> running max 0.06
    adjusted = holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02], rtol=1e-12)
    # NaN is no comparison (m = 2 here); adjusted values are capped at 1
    np.testing.assert_allclose(holm([0.5, np.nan, 0.4]), [0.8, np.nan, 0.8], rtol=1e-12)
    np.testing.assert_allclose(holm([0.6, 0.7]), [1.0, 1.0])
    assert holm([]).shape == (0,)


@pytest.mark.parametrize("p, expected", [(0.001, "**"), (0.049, "**"), (0.05, "*"), (0.099, "*"), (0.1, ""),
                                         (0.5, ""), (float("nan"), "")])
def test_marker_thresholds(p, expected):
    assert marker(p, 0.01) == expected


@pytest.mark.parametrize("p, expected", [(0.001, "↓"), (0.049, "↓"), (0.05, ""), (0.099, ""), (float("nan"), "")])
def test_a_worse_method_gets_no_improvement_marker(p, expected):
    # The paper's caption: ** and * mark significant improvements; a significant deterioration has its own mark.
    assert marker(p, -0.01) == expected
    assert marker(p, 0.0) == "" and marker(0.01, float("nan")) == ""


def _per_user_frame() -> pd.DataFrame:
    return pd.DataFrame({"split": ["test"] * 5 + ["valid"], "sequence": [0, 1, 2, 3, 4, 0],
                         "rank": [1, 3, 10, 11, 2, 1], "rating": [5.0, 3.0, 4.0, np.nan, 4.0, 5.0]})


def test_per_user_metrics_by_hand():
    frame = _per_user_frame()
    np.testing.assert_allclose(per_user_metric(frame, "recall@10"), [1, 1, 1, 0, 1])
    np.testing.assert_allclose(per_user_metric(frame, "ndcg@10"), [1, 0.5, 1 / np.log2(11), 0, 1 / np.log2(3)])
    np.testing.assert_allclose(per_user_metric(frame, "mrr@10"), [1, 1 / 3, 0.1, 0, 0.5])
    plus = per_user_metric(frame, "ndcg+@10")  # targets rated >= 4 only (Eq. 16): sequences 0, 2, 4
    assert list(plus.index) == [0, 2, 4]
    np.testing.assert_allclose(plus, [1, 1 / np.log2(11), 1 / np.log2(3)])
    assert len(per_user_metric(frame, "recall@10", split="valid")) == 1


def test_per_user_metrics_read_ties_and_old_files_read_as_none():
    frame = _per_user_frame().assign(ties=[1, 0, 2, 0, 0, 0])
    # user 0: positions 0 or 1 at random; user 2: positions 9, 10, 11 -> recall@10 1/3
    np.testing.assert_allclose(per_user_metric(frame, "recall@10"), [1, 1, 1 / 3, 0, 1])
    np.testing.assert_allclose(per_user_metric(frame, "ndcg@10"),
                               [(1 + 1 / np.log2(3)) / 2, 0.5, 1 / np.log2(11) / 3, 0, 1 / np.log2(3)])
    np.testing.assert_allclose(per_user_metric(frame, "recall@10", ties="pessimistic"), [1, 1, 0, 0, 1])
    np.testing.assert_allclose(per_user_metric(_per_user_frame(), "recall@10", ties="pessimistic"), [1, 1, 1, 0, 1])
    with pytest.raises(CSRecError, match="ties 'optimistic'"):
        per_user_metric(frame, "recall@10", ties="optimistic")


def test_per_user_means_equal_the_evaluation_metrics():
    rng = np.random.default_rng(5)
    ranks, ratings = rng.integers(1, 40, 200), rng.integers(1, 6, 200).astype(float)
    frame = pd.DataFrame({"split": "test", "sequence": np.arange(200), "rank": ranks, "rating": ratings})
    expected = compute_metrics(ranks, ratings)
    for metric in ("recall@10", "ndcg@10", "mrr@5", "recall+@10", "ndcg+@20"):
        assert per_user_metric(frame, metric).mean() == pytest.approx(expected[metric], rel=1e-12)


def test_metric_names_are_checked():
    assert parse_metric("ndcg+@10") == ("ndcg+", 10)
    for bad in ("hits@10", "ndcg", "ndcg@0", "ndcg@x"):
        with pytest.raises(CSRecError, match="name@k"):
            parse_metric(bad)
    frame = _per_user_frame()
    with pytest.raises(CSRecError, match="repeat a sequence"):
        per_user_metric(pd.concat([frame, frame]), "recall@10")


def test_align_and_mean_over_runs_join_on_users():
    a = pd.Series([0.1, 0.2, 0.3, 0.4], index=pd.Index([0, 1, 2, 3], name="sequence"))
    b = pd.Series([0.9, 0.8, 0.7], index=pd.Index([4, 3, 2], name="sequence"))
    x, y = align(a, b)
    np.testing.assert_allclose(x, [0.3, 0.4])  # sequences 2 and 3, in sequence order
    np.testing.assert_allclose(y, [0.7, 0.8])
    mean = mean_over_runs([a, b])
    assert list(mean.index) == [2, 3]
    np.testing.assert_allclose(mean, [0.5, 0.6])
    with pytest.raises(CSRecError):
        mean_over_runs([])


def test_seed_level_tests_read_only_the_runs_means():
    # Users alike within a run, so a run is its mean: a's runs 1 and 3, b's 0 and 2, observed d = 1.
    a = np.array([[1.0, 1.0, 1.0], [3.0, 3.0, 3.0]])
    b = np.array([[0.0, 0.0, 0.0], [2.0, 2.0, 2.0]])
    # splits of {0, 1, 2, 3} into two pairs: {0,1}|{2,3} d=-2, {0,2}|{1,3} d=-1 (the observed, mirrored),
    # {0,3}|{1,2} d=0, and their mirrors: |d| >= 1 in 4 of 6.
    assert permutation_test(a, b).p_value == pytest.approx(4 / 6)
    assert np.isnan(permutation_test(a, b, level=0.05).p_value)  # 2 against 2: the smallest p is 1/3
    shuffled = a[:, ::-1] + np.array([[0.0, 0.5, -0.5]])  # another spread over users, the same run means
    assert permutation_test(shuffled, b).p_value == permutation_test(a, b).p_value
    assert welch_test(shuffled, b)[0].p_value == pytest.approx(welch_test(a, b)[0].p_value)
    with pytest.raises(CSRecError, match="same"):
        permutation_test(a, b[:, :1])


def _experiment(rng: np.random.Generator, n_seeds: int, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-seed per-user values of two methods with a true mean difference of 0.1: users differ in
    difficulty (shared) and a little in the method's effect; each seed shifts all its users."""
    user = rng.normal(0.0, 0.2, n_users)  # [U]
    effect = 0.1 + rng.normal(0.0, 0.05, n_users)  # [U]
    a = 0.2 + user + effect + rng.normal(0.0, 0.05, (n_seeds, 1)) + rng.normal(0.0, 0.1, (n_seeds, n_users))
    b = 0.2 + user + rng.normal(0.0, 0.05, (n_seeds, 1)) + rng.normal(0.0, 0.1, (n_seeds, n_users))
    return a, b


def test_welch_interval_covers_the_true_difference():
    # 400 simulated experiments, 10 seeds a method, seed variance larger than the users' share of
    # the error: about 95% of Welch's intervals on the runs' means hold the true difference 0.1
    # (binomial sd 1.1 points). An interval over users alone (seeds averaged first) ignores the seed
    # variance and misses.
    rng = np.random.default_rng(0)
    covered, per_user = 0, 0
    for experiment in range(400):
        a, b = _experiment(rng, n_seeds=10, n_users=100)
        _, low, high = welch_test(a, b)
        covered += low <= 0.1 <= high
        users_only = effect_size(a.mean(axis=0), b.mean(axis=0), n_resamples=400, seed=experiment)
        per_user += users_only.low <= 0.1 <= users_only.high
    assert 0.92 <= covered / 400 <= 0.98
    assert per_user / 400 < 0.6


def test_seed_ttest_is_the_paired_t_test_of_per_seed_means():
    a, b = _experiment(np.random.default_rng(3), n_seeds=6, n_users=30)
    statistic, p_value = seed_ttest(a, b)
    expected = stats.ttest_rel(a.mean(axis=1), b.mean(axis=1))
    assert (statistic, p_value) == pytest.approx((expected.statistic, expected.pvalue), rel=1e-12)
    assert all(np.isnan(seed_ttest(a[:4], b[:4])))  # fewer than 5 seeds: no test
    assert seed_ttest(a, a) == (0.0, 1.0)
    with pytest.raises(CSRecError, match="same seeds"):
        seed_ttest(a, b[:5])


def test_effect_size_bootstrap():
    x, y = _pairs(400, 0.1, 6)
    first = effect_size(x, y, n_resamples=1000, seed=3)
    assert first == effect_size(x, y, n_resamples=1000, seed=3)  # seeded
    assert first.mean_difference == pytest.approx(np.mean(x - y))
    assert first.low < first.mean_difference < first.high
    # the percentile interval of a mean is close to mean +/- 1.96 standard errors for n = 400
    se = np.std(x - y, ddof=1) / np.sqrt(400)
    assert first.high - first.low == pytest.approx(2 * 1.96 * se, rel=0.15)
    constant = effect_size(X + 0.25, X, n_resamples=50)
    assert constant.low == pytest.approx(0.25) and constant.high == pytest.approx(0.25)
    with pytest.raises(CSRecError):
        effect_size(x, y, confidence=1.5)
