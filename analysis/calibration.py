"""Simulated experiments with crossed seed and user effects: the seed-level tests' level and power.

A simulated experiment draws a test set of `n_users` users from a real per-user file (their values
are the users' effects, shared by every run of both methods) and trains `n_seeds` runs of each of
two methods on it. A run's per-user values are

    value[m, s, u] = user[u] + effect * (m == a) + seed[m, s] + noise[m, s, u]

seed[m, s] ~ N(0, seed_sd): what a training seed moves the whole run by;
noise[m, s, u]: the seed x user term, drawn from the same real file's values centred on their mean
(so its spread and shape, mostly zeros with a long tail for NDCG@10, are the real per-user spread).
The user term of a run's mean thus has sd `user_term(values, n_users)` = sd(values) / sqrt(n_users);
settings give seed_sd as a multiple of it. Under the null (effect 0) a test's rejection rate at
level alpha is its false-positive rate; under an alternative it is its power.

    python -m analysis.calibration PER_USER_VALUES.csv   # the level and power tables of docs/REPRODUCTION.md
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.seed_tests import MIN_SEEDS, permutation_p_values, seeds_needed

SEED_TESTS = ("seed-permutation", "seed-welch", "seed-ttest")


def user_term(values: np.ndarray, n_users: int) -> float:
    """sd of a run's mean over n_users users due to the seed x user noise alone."""
    return float(np.std(values, ddof=1) / np.sqrt(n_users))


def simulate(values: np.ndarray, n_seeds: int, seed_sd: float, effect: float, n_experiments: int,
             n_users: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The runs' means of both methods, [E, S] each, of n_experiments simulated experiments (module doc).

    Per-user values are drawn [E, S, U] and averaged, a block of experiments at a time, so that
    the users' shared term and the seed x user noise enter the means as they would from files.
    """
    values = np.asarray(values, dtype=np.float64)
    centred = values - values.mean()
    means = np.empty((2, n_experiments, n_seeds))
    block = max(1, 2_000_000 // (n_seeds * n_users))
    for start in range(0, n_experiments, block):
        e = min(block, n_experiments - start)
        users = rng.choice(values, size=(e, 1, n_users))  # [e, 1, U] one test set per experiment
        for m in range(2):
            noise = rng.choice(centred, size=(e, n_seeds, n_users))  # [e, S, U]
            seeds = rng.normal(0.0, seed_sd, size=(e, n_seeds, 1)) if seed_sd > 0 else 0.0  # [e, S, 1]
            runs = users + seeds + noise + (effect if m == 0 else 0.0)  # [e, S, U]
            means[m, start:start + e] = runs.mean(axis=2)
    return means[0], means[1]


def p_values(test: str, means_a: np.ndarray, means_b: np.ndarray) -> np.ndarray:
    """[E] two-sided p-values of one seed-level test on E simulated experiments' run means [E, S]."""
    from scipy import stats

    if test == "seed-permutation":
        return permutation_p_values(means_a, means_b)
    if test == "seed-welch":
        return stats.ttest_ind(means_a, means_b, axis=1, equal_var=False).pvalue
    if test == "seed-ttest":
        return stats.ttest_rel(means_a, means_b, axis=1).pvalue
    raise ValueError(f"unknown seed-level test {test!r}")


def rejection_rate(test: str, values: np.ndarray, n_seeds: int, seed_sd: float, effect: float = 0.0,
                   n_experiments: int = 2000, n_users: int = 300, alpha: float = 0.05, seed: int = 0) -> float:
    """Share of simulated experiments in which `test` gives p < alpha (NaN where it needs more seeds)."""
    if n_seeds < MIN_SEEDS[test]:
        return float("nan")
    rng = np.random.default_rng(seed)
    means_a, means_b = simulate(values, n_seeds, seed_sd, effect, n_experiments, n_users, rng)
    return float(np.mean(p_values(test, means_a, means_b) < alpha))


def power_table(values: np.ndarray, n_users: int, ratios=(0.5, 1.0, 2.0), effects=(1.0, 2.0, 3.0, 4.0),
                alpha: float = 0.05, n_experiments: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Effect size against seeds needed: for each seed sd (a multiple of the user term) and each
    effect (in units of the run's total sd), the seeds per method for 80% power (seeds_needed) and
    the permutation test's simulated power at that number."""
    rows = []
    term = user_term(values, n_users)
    for ratio in ratios:
        seed_sd = ratio * term
        run_sd = float(np.hypot(seed_sd, term))  # sd of one run's mean
        for size in effects:
            effect = size * run_sd
            n = seeds_needed(effect, run_sd, run_sd, alpha)
            simulated = rejection_rate("seed-permutation", values, n, seed_sd, effect, n_experiments, n_users, alpha,
                                       seed) if n is not None and n <= 30 else float("nan")
            rows.append({"seed sd / user term": ratio, "run sd": run_sd, "effect (run sds)": size,
                         "effect": effect, "seeds needed": n, "simulated power": simulated})
    return pd.DataFrame(rows)


def level_table(values: np.ndarray, n_users: int = 300, seeds=(3, 5, 10), ratios=(0.0, 0.5, 1.0, 2.0, 4.0),
                n_experiments: int = 4000, alpha: float = 0.05) -> pd.DataFrame:
    """False-positive rate at `alpha` of each seed-level test, per seeds per method and seed sd (a
    multiple of the user term), each from n_experiments null experiments (the test suite's seeds)."""
    term = user_term(values, n_users)
    rows = []
    for test in SEED_TESTS:
        for n_seeds in seeds:
            rates = [rejection_rate(test, values, n_seeds, ratio * term, 0.0, n_experiments, n_users, alpha,
                                    seed=int(ratio * 10) + n_seeds) for ratio in ratios]
            rows.append({"test": test, "seeds per method": n_seeds} | {f"seed sd {r:g}x": v for r, v in zip(ratios, rates)})
    return pd.DataFrame(rows)


def main(argv: list[str]) -> None:
    values = pd.read_csv(argv[0])["value"].to_numpy()
    print(f"{len(values)} users, per-user sd {np.std(values, ddof=1):.4f}; user term of a run's mean over 300 users "
          f"{user_term(values, 300):.5f}, over all {len(values)}: {user_term(values, len(values)):.5f}")
    print("\nFalse-positive rate at 0.05 (300 users an experiment, 4,000 experiments a cell):\n")
    print(level_table(values).to_markdown(index=False, floatfmt=".4f"))
    print(f"\nSeeds per method for 80% power at 0.05, on all {len(values)} users (1,000 experiments a row):\n")
    print(power_table(values, len(values)).to_markdown(index=False, floatfmt=".4g"))


if __name__ == "__main__":
    main(sys.argv[1:])
