"""Analysis of an experiment directory: reads result files only (never torch or Ray).

collect (every finished trial as a tidy table; what is missing), select (best configuration per
cell on validation), significance (paired tests on per-user test metrics, and the table's markers),
seed_tests (seed-level tests on the runs' means: exact permutation, Welch, paired t; seeds needed for
power), calibration (their level and power in simulated crossed seed x user experiments),
tables (Table 2 / 3).
groups (popular/niche users, input length, a setting across experiments), plots (Fig. 3-7 as PNG),
report (one Markdown/HTML report of an experiment or of a study across experiments).
"""

from analysis.collect import Collection, Selected, cell_numbers, collect, per_user_metric, select
from analysis.seed_tests import permutation_test, seed_ttest, seeds_needed, welch_test
from analysis.significance import comparisons, effect_size, holm, marker, paired_test
from analysis.tables import ComparisonTable, build_table, to_csv, to_latex, to_markdown
from analysis.formats import comparison_table
from analysis.groups import by_input_length, group_metrics, length_bins, popular_items, setting_study, user_groups
from analysis.plots import plot_by_length, plot_groups, plot_noise_term, plot_setting
from analysis.report import markdown_to_html, write_report, write_study_report

__all__ = [
    "Collection", "ComparisonTable", "Selected", "build_table", "cell_numbers", "collect", "comparison_table",
    "comparisons", "effect_size", "holm", "marker", "paired_test", "per_user_metric", "select",
    "permutation_test", "seed_ttest", "seeds_needed", "welch_test",
    "to_csv", "to_latex", "to_markdown",
    "by_input_length", "group_metrics", "length_bins", "popular_items", "setting_study", "user_groups",
    "plot_by_length", "plot_groups", "plot_noise_term", "plot_setting",
    "markdown_to_html", "write_report", "write_study_report",
]
