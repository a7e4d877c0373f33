"""The comparison tables as text: `launch.py table DIR --format md|latex|csv|published`, and `launch.py power DIR`.

Its own module so that analysis.tables (the table and its Markdown, LaTeX and CSV forms) and
analysis.published (the view beside the paper, built on the table) import in one direction only.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis.collect import collect, select
from analysis.published import to_published
from analysis.significance import LEVEL, seed_power
from analysis.tables import (DATASET_NAMES, METHOD_NAMES, MODEL_NAMES, build_table, metric_name, to_csv, to_latex,
                             to_markdown)
from csrec.errors import CSRecError
from csrec.metrics import metric_name as canonical_metric

FORMATS = ("md", "latex", "csv", "published")


def comparison_table(experiment_dir: str | Path, fmt: str = "md", metrics=("recall@10", "ndcg@10"),
                     versus: str = "softrec", test: str = "ttest", correction: str | None = None,
                     selection_metric: str = "ndcg@10", n_resamples: int = 10000, seed: int = 0,
                     ties: str = "expected", exclude_search_run: bool = False) -> str:
    """Table 2 (or Table 3 with metrics=("recall+@10", "ndcg+@10")) of `experiment_dir` as text.

    fmt: "md" | "latex" | "csv" | "published" (beside the paper's Table 2: analysis.published);
    versus: the method every other is tested against ("softrec" as in the paper, or "base"); test:
    per user "ttest" | "wilcoxon" | "randomisation", or seed-level "seed-permutation" | "seed-welch"
    | "seed-ttest" (analysis.significance; n_resamples, seed); correction: None |
    "holm" (across the table's comparisons); ties: "expected" | "pessimistic"; exclude_search_run:
    the seed reruns only, without the search run that won the selection.
    """
    if fmt not in FORMATS:
        raise CSRecError(f"format {fmt!r}: use one of {', '.join(FORMATS)}")
    table = build_table(collect(experiment_dir), metrics, versus, test, correction, selection_metric, n_resamples, seed,
                        ties, exclude_search_run)
    return {"md": to_markdown, "latex": to_latex, "csv": to_csv, "published": to_published}[fmt](table)


POWER_FORMATS = ("md", "csv")


def seed_power_table(experiment_dir: str | Path, fmt: str = "md", metrics=("recall@10", "ndcg@10"),
                     versus: str = "softrec", power: float = 0.8, ties: str = "expected",
                     exclude_search_run: bool = False) -> str:
    """`launch.py power DIR`: per cell against `versus`, the observed difference of the runs' means, each
    side's seed sd, the exact permutation test's p and the seeds per method that would detect the
    difference with `power` at the tables' level (analysis.significance.seed_power)."""
    if fmt not in POWER_FORMATS:
        raise CSRecError(f"format {fmt!r}: use one of {', '.join(POWER_FORMATS)}")
    if not 0 < power < 1:
        raise CSRecError(f"power {power}: give a probability between 0 and 1, e.g. 0.8")
    metrics = tuple(canonical_metric(m) for m in metrics)
    collection = collect(experiment_dir)
    frame = seed_power(collection, select(collection, exclude_search_run=exclude_search_run), metrics, versus,
                       LEVEL, power, ties)
    if frame.empty:
        raise CSRecError(f"no cell of {experiment_dir} has both its method and {METHOD_NAMES.get(versus, versus)} "
                         "finished yet; nothing to compare")
    if fmt == "csv":
        return frame.to_csv(index=False, float_format="%.6g", na_rep="n/a", lineterminator="\n")
    shown = pd.DataFrame({
        "Dataset": frame["dataset"].map(lambda d: DATASET_NAMES.get(d, d)),
        "Model": frame["model"].map(lambda m: MODEL_NAMES.get(m, m)),
        "Method": frame["method"].map(lambda m: METHOD_NAMES.get(m, m)), "Metric": frame["metric"].map(metric_name),
        "runs": [f"{a} / {b}" for a, b in zip(frame["n_seeds"], frame["n_seeds_versus"])],
        "difference": frame["mean_difference"].map(lambda v: f"{v * 100:+.3f}"),
        "seed sd": frame["sd"].map(_points), "seed sd ref.": frame["sd_versus"].map(_points),
        "permutation p": frame["p_value"].map(lambda p: "untestable" if pd.isna(p) else f"{p:.3g}"),
        "seeds needed": frame["seeds_needed"].map(lambda n: "—" if n is None or pd.isna(n) else str(int(n)))})
    versus_name = METHOD_NAMES.get(versus, versus)
    legend = (f"Per cell against {versus_name}: difference of the runs' mean test metric (method minus {versus_name}, "
              f"points of %); seed sd: the sample sd of the runs' means (points; n/a with one run); runs: method / "
              f"{versus_name}; permutation p: the exact two-sided permutation test on the runs' means (untestable: its "
              f"runs cannot give p < {LEVEL}); seeds needed: runs per method for {power:.0%} power at two-sided "
              f"{LEVEL}, were the observed difference and sds the true ones (two-sample t-test power, at least the 4 "
              "runs a method the permutation test needs to reach the level; — where the difference is 0 or a side "
              "has one run). An estimate from few runs: a small observed difference can be noise, and its count says "
              "how many runs would tell.")
    return shown.to_markdown(index=False) + "\n\n" + legend + "\n"


def _points(value: float) -> str:
    return "n/a" if pd.isna(value) else f"{value * 100:.3f}"
