"""Analysis of an experiment directory: reads result files only (never torch or Ray).

collect (every finished trial as a tidy table; what is missing), select (best configuration per
cell on validation), significance (paired tests on per-user test metrics), tables (Table 2 / 3).
"""

from analysis.collect import Collection, Selected, cell_numbers, collect, select
from analysis.significance import comparisons, effect_size, holm, marker, paired_test, per_user_metric
from analysis.tables import ComparisonTable, build_table, comparison_table, to_csv, to_latex, to_markdown

__all__ = [
    "Collection", "ComparisonTable", "Selected", "build_table", "cell_numbers", "collect", "comparison_table",
    "comparisons", "effect_size", "holm", "marker", "paired_test", "per_user_metric", "select",
    "to_csv", "to_latex", "to_markdown",
]
