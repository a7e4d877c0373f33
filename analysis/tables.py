"""Table 2 / Table 3 of the paper from an experiment directory, as Markdown, LaTeX (booktabs) or CSV.

Rows are dataset x method (Base, SoftRec, CSRec-M, CSRec-D, CSRec-T), columns a pair of metrics per
model; each number is the test metric in % (3 decimals) of the configuration chosen on validation
(analysis.collect.select), followed by the marker of its test against SoftRec (or Base): ** / * for
a significant improvement, ↓ for a significant deterioration. The legend under the table states
the test, the question it answers, the correction, the runs behind the numbers and the tie rule:
every one of those is a claim about the numbers above it. The best number of each column within a
data set is bold. Table 3 is the same with the filtered metrics
recall+@10 / ndcg+@10 (paper Eq. 16) and only the data sets with ratings. A partial experiment gives
the same table with its missing cells marked (Markdown "—", LaTeX "---", CSV "n/a"), and a cell
missing some of its planned runs (a failed or damaged trial: analysis.collect) marked ‡, and a
number not tested against the reference (no reference number, too few values) marked °.
When the search stopped points early (`scheduler: asha`), the legend says so with its settings and
how many search runs were stopped, and a number that averages a stopped run is marked §.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.collect import Collection, cell_numbers, collect, select
from analysis.seed_tests import MIN_SEEDS, seeds_to_reach
from analysis.significance import (IMPROVEMENT_LEVELS, LEVEL, SEED_TESTS, TESTS, WORSE, WORSE_LEVEL, comparisons,
                                  parse_metric)
from csrec.errors import CSRecError
from csrec.metrics import TIE_RULES, TIES
from csrec.metrics import metric_name as canonical_metric

METHOD_NAMES = {"base": "Base", "softrec": "SoftRec", "csrec-m": "CSRec-M", "csrec-d": "CSRec-D", "csrec-t": "CSRec-T",
                "elecrec": "ELECRec", "s3rec": "S3Rec"}
MODEL_NAMES = {"gru4rec": "GRU4Rec", "nextitnet": "NextItNet", "narm": "NARM", "sasrec": "SASRec"}
DATASET_NAMES = {"lastfm": "Last.FM", "yelp": "Yelp", "beauty": "Beauty", "ml-100k": "ML-100K"}
_METRIC_NAMES = {"recall": "Recall", "ndcg": "NDCG", "mrr": "MRR", "recall+": "Recall+", "ndcg+": "NDCG+"}
_PER_USER = ("on the users' test values, each user's value averaged over the seeds; it asks whether these "
             "trained models differ on these users, not whether the method is better across seeds")
_SEED_LEVEL = ("it asks whether the method is better than {versus} across training seeds, on this test set, "
               "counting the variance between seeds")
_TEST_NAMES = {
    "ttest": f"paired two-sided t-test {_PER_USER}",
    "wilcoxon": f"two-sided Wilcoxon signed-rank test {_PER_USER}",
    "randomisation": "paired two-sided randomisation (sign-flip) test ({n_resamples} resamples, seed {seed}) " + _PER_USER,
    "seed-permutation": ("exact two-sided permutation test on the runs' means over the users (every split of the runs "
                         f"into the two methods' counts); {_SEED_LEVEL}"),
    "seed-welch": f"Welch's two-sided t-test on the runs' means over the users; {_SEED_LEVEL}",
    "seed-ttest": (f"paired two-sided t-test over the per-seed means, paired by seed; {_SEED_LEVEL}; "
                   f"needs >= {MIN_SEEDS['seed-ttest']} common seeds"),
}


@dataclass(frozen=True)
class ComparisonTable:
    """One row per (dataset, method, model, metric) position of the table, missing ones included."""

    cells: pd.DataFrame  # dataset method model metric mean std n_runs source config n_configs p_value p_adjusted
    #                      mean_difference marker best
    datasets: tuple[str, ...]
    methods: tuple[str, ...]
    models: tuple[str, ...]
    metrics: tuple[str, ...]
    versus: str
    test: str
    correction: str | None
    selection_metric: str
    n_resamples: int
    seed: int
    ties: str = "expected"
    left_out: tuple[int, ...] = ()  # seeds of the search runs left out (exclude_search_run)
    runs_without_ties: tuple[int, int] = (0, 0)  # (reported runs whose files predate tie counting, all)
    early_stopping: str = ""  # the legend's sentence on the search's early stopping; "" when it was off
    devices: tuple[tuple[str, int], ...] = ()  # (device, reported runs on it), where the records say


def build_table(collection: Collection, metrics=("recall@10", "ndcg@10"), versus: str = "softrec",
                test: str = "ttest", correction: str | None = None, selection_metric: str = "ndcg@10",
                n_resamples: int = 10000, seed: int = 0, ties: str = "expected",
                exclude_search_run: bool = False) -> ComparisonTable:
    """Select (on validation), summarise (test mean/std over the reported runs) and test every cell.

    Rows and columns are those of the plan, so a cell with nothing to report is present with
    n_runs 0. `best` marks the highest number of its (dataset, model, metric) column as shown
    (3 decimals in %), so ties at that precision are all bold. ties: the tie rule of every number
    (csrec.metrics). exclude_search_run: report the seed reruns only (analysis.collect.select).
    """
    metrics = tuple(canonical_metric(m) for m in metrics)  # NDCG@10, Hit@10 (RecBole's) are ours in any case
    if test not in TESTS:
        raise CSRecError(f"test {test!r}: use one of {', '.join(TESTS)}")
    if ties not in TIES:
        raise CSRecError(f"ties {ties!r}: use one of {', '.join(TIES)}")
    if versus not in METHOD_NAMES:
        raise CSRecError(f"versus {versus!r}: use one of {', '.join(METHOD_NAMES)}")
    cells = collection.expected_cells
    if not cells:
        raise CSRecError(f"{collection.directory} has no plan.json and no finished trial; nothing to tabulate "
                         "(give the directory of an experiment that was started)")
    known = set(collection.results["metric"])
    unknown = [m for m in metrics if known and m not in known]
    if any(not parse_metric(m)[0].endswith("+") for m in unknown):
        raise CSRecError(f"metric(s) {', '.join(unknown)} are not in the results; use some of: {', '.join(sorted(known))}")
    datasets = _datasets_with(collection, [c[0] for c in cells], metrics)
    models = _ordered([c[1] for c in cells], MODEL_NAMES)
    methods = _ordered([c[2] for c in cells], METHOD_NAMES)

    chosen = {cell: sel for cell, sel in select(collection, selection_metric, exclude_search_run).items()
              if cell[0] in datasets}
    numbers = pd.concat([cell_numbers(collection, chosen, m, ties).assign(metric=m) for m in metrics], ignore_index=True)
    numbers["n_configs"] = [chosen[(r.dataset, r.model, r.method)].n_configs for r in numbers.itertuples()]
    tests = comparisons(collection, chosen, metrics, versus, test, correction, n_resamples, seed, ties=ties)
    grid = pd.DataFrame(list(itertools.product(datasets, methods, models, metrics)),
                        columns=["dataset", "method", "model", "metric"])
    keys = ["dataset", "model", "method", "metric"]
    table = grid.merge(numbers, on=keys, how="left").merge(
        tests[keys + ["p_value", "p_adjusted", "mean_difference", "marker", "n_seeds", "n_seeds_versus", "untestable"]],
        on=keys, how="left")
    table["n_runs"] = table["n_runs"].fillna(0).astype(int)
    table["incomplete"] = [(r.dataset, r.model, r.method) in collection.incomplete for r in table.itertuples()]
    stopped_keys = set(collection.stopped["key"])
    stopped_cells = {cell for cell, sel in chosen.items() if stopped_keys & set(sel.keys)}
    table["stopped"] = [(r.dataset, r.model, r.method) in stopped_cells for r in table.itertuples()]
    table["marker"] = table["marker"].astype(object).fillna("")
    table["untestable"] = table["untestable"].astype(object).fillna(False).astype(bool)
    shown = table["mean"].map(lambda v: float(f"{v * 100:.3f}"))  # exactly the printed number
    column = shown.groupby([table["dataset"], table["model"], table["metric"]])
    # A lone number is no "best": bold needs another number in its column to be better than.
    table["best"] = shown.notna() & (shown == column.transform("max")) & (column.transform("count") >= 2)
    # Not tested: a number of a method other than the reference without a p-value (no reference
    # number in its column, too few paired values or seeds): its missing mark is no "no difference".
    table["untested"] = (table["n_runs"] > 0) & table["p_adjusted"].isna() & (table["method"] != versus)
    reported = [key for sel in chosen.values() for key in sel.keys]
    left_out = tuple(sorted({s for sel in chosen.values() for s in sel.left_out}))
    without_ties = (sum(not collection.has_ties(key) for key in reported), len(reported))
    where = collection.trials.drop_duplicates("key").set_index("key")["device"].reindex(reported)
    devices = tuple((str(d), int(n)) for d, n in where.fillna("unrecorded").value_counts().sort_index().items())
    return ComparisonTable(table, datasets, methods, models, metrics, versus, test, correction, selection_metric,
                           n_resamples, seed, ties, left_out, without_ties, _early_stopping(collection, datasets),
                           devices)


def _early_stopping(collection: Collection, datasets: tuple[str, ...]) -> str:
    """The legend's sentence on the scheduler of the search (plan.json), "" for fifo (every point to the
    end); its counts are those of the table's data sets (Table 3 shows only those with ratings)."""
    if not collection.early_stopping:
        return ""
    s = collection.scheduler
    trials = collection.trials
    search = trials[(trials["stage"] == "search") & (trials["method"] != "base")  # Base has no grid to search
                    & trials["dataset"].isin(datasets)]
    rungs = ", ".join(map(str, s.get("rungs", [])))
    return (f"early stopping in the search: ASHA on validation NDCG@10 (grace {s.get('grace_epochs')} epochs, reduction "
            f"factor {s.get('reduction_factor')}, rungs at epochs {rungs} of {s.get('max_epochs')}) stopped "
            f"{search['stopped_epochs'].notna().sum()} of {len(search)} search runs, each selected on with its best "
            "epoch before the stop; seed reruns train the full budget. ASHA's stop decisions depend on the order in "
            "which concurrent trials report, so this table is not reproducible run to run (a fifo table is)")


def _ordered(names: list[str], canonical: dict[str, str]) -> tuple[str, ...]:
    """The known names in the paper's order, then the others in order of appearance."""
    seen = list(dict.fromkeys(names))
    return tuple([n for n in canonical if n in seen] + [n for n in seen if n not in canonical])


def _datasets_with(collection: Collection, names: list[str], metrics: tuple[str, ...]) -> tuple[str, ...]:
    """Data sets in plan order; for filtered ("+") metrics only those with ratings (Table 3).

    A data set without ratings writes no "+" metrics; one with no finished trial yet is kept (its
    cells show as missing) since its ratings are not known.
    """
    datasets = list(dict.fromkeys(names))
    filtered = [m for m in metrics if parse_metric(m)[0].endswith("+")]
    if not filtered:
        return tuple(datasets)
    results = collection.results
    kept = [d for d in datasets
            if not (results["dataset"] == d).any()
            or results.loc[results["dataset"] == d, "metric"].isin(filtered).any()]
    if not kept:
        raise CSRecError(f"no data set of {collection.directory} has ratings, so {', '.join(filtered)} do not "
                         "exist; Table 3 needs data with ratings (e.g. ml-100k.inter); use recall@10 ndcg@10")
    return tuple(kept)


def metric_name(metric: str) -> str:
    name, k = parse_metric(metric)
    return f"{_METRIC_NAMES[name]}@{k}"


def _caption(table: ComparisonTable) -> str:
    metrics = " and ".join(metric_name(m) for m in table.metrics)
    return (f"Test {metrics} (%) of the configuration best on validation {metric_name(table.selection_metric)} "
            f"(never selected on test)")


INCOMPLETE = "‡"  # a cell selected without some of its planned runs (failed, damaged or not finished)
NOT_TESTED = "°"  # a number that was not tested against the reference (so no mark says nothing)
INCOMPLETE_MEANING = ("some of the cell's planned runs are missing (failed, damaged or not finished{where}): a missing "
                      "search point may change the selected configuration, a missing seed rerun is left out of the mean")
STOPPED_MEANING = "the number averages a search run stopped early (its best epoch before the stop, not the full budget)"
STOPPED = "§"  # a number averaging a run that the scheduler stopped early


def _note(table: ComparisonTable, mark, dagger: str, missing: str, latex: bool = False) -> str:
    """The legend: markers, test, correction, runs behind the numbers, tie rule, bold, missing."""
    less, ge = (r"$<$", r"$\geq$") if latex else ("<", "≥")
    code = (lambda text: rf"\texttt{{{_latex(text)}}}") if latex else (lambda text: f"`{text}`")
    versus = METHOD_NAMES.get(table.versus, table.versus)
    better = ", ".join(f"{mark(m)} p {less} {level}" for m, level in IMPROVEMENT_LEVELS)
    test = _TEST_NAMES[table.test].format(n_resamples=table.n_resamples, seed=table.seed, versus=versus)
    test = test.replace(">=", ge) if latex else test
    behind = ("tested on the seeds each number shares with {versus}'s (paired by seed number), which may be fewer "
              "than the runs behind the number" if table.test == "seed-ttest" else "tested on the runs behind each number")
    parts = [f"{better}: significantly better than {versus}; {mark(WORSE)} p {less} {WORSE_LEVEL}: significantly "
             f"worse; no mark: tested, neither significantly better (p {ge} {IMPROVEMENT_LEVELS[-1][1]}) nor "
             f"significantly worse (p {ge} {WORSE_LEVEL}); {versus}'s own row is the reference; test: {test}; "
             + behind.format(versus=versus)]
    if table.test in SEED_TESTS:
        parts.append(_seeds_note(table))
    if table.cells["untested"].any():
        parts.append(f"{mark(NOT_TESTED)}: " + _untested_note(table, versus, code))
    if table.correction == "holm":
        parts.append(f"p-values Holm-adjusted across the table's {int(table.cells['p_value'].notna().sum())} comparisons")
    parts.append(_runs_note(table, dagger))
    parts.append(f"ranks: {TIE_RULES[table.ties]}")
    finetuning = _finetuning(table)
    if finetuning:
        parts.append(finetuning)
    if len(table.devices) > 1:  # a GPU and a CPU run of one config differ (dropout streams, TF32, kernels)
        parts.append("the runs behind the numbers trained on different devices: "
                     + ", ".join(f"{n} on {device}" for device, n in table.devices))
    old, reported = table.runs_without_ties
    if old:
        parts.append(f"{old} of the {reported} runs were evaluated before ties were recorded: their ties count in the "
                     "target's favour")
    parts.append("bold: best per column within a data set, where the column has two or more numbers")
    if (table.cells["incomplete"] & (table.cells["n_runs"] > 0)).any():
        where = f"; {code('launch.py status DIR')} and the report name them"
        parts.append(f"{mark(INCOMPLETE)}: " + INCOMPLETE_MEANING.format(where=where))
    if table.early_stopping:
        parts.append(table.early_stopping)
    if (table.cells["stopped"] & (table.cells["n_runs"] > 0)).any():
        parts.append(f"{mark(STOPPED)}: {STOPPED_MEANING}")
    parts.append(f"{missing}: no finished trial" + (" or no seed rerun" if table.left_out else ""))
    return "; ".join(parts) + "."


_FINETUNING = {"bce": "the authors' pointwise BCE with one negative outside the user's sequence",
               "ce": "full-softmax cross entropy"}


def _finetuning(table: ComparisonTable) -> str:
    """The legend's word on S3Rec's fine-tuning objective (csrec.s3rec), read from the selected
    configurations' labels (analysis.collect: "... finetuning=bce"); "" without S3Rec numbers."""
    shown = table.cells[(table.cells["method"] == "s3rec") & (table.cells["n_runs"] > 0)]
    objectives = sorted({m.group(1) for c in shown["config"].dropna() if (m := re.search(r"finetuning=(\w+)", c))})
    if not objectives:
        return ""
    return "S3Rec fine-tuned with " + " and ".join(f"{o} ({_FINETUNING.get(o, o)})" for o in objectives)


def _seeds_note(table: ComparisonTable) -> str:
    """How many runs a side the seed-level test compared, over the tested cells."""
    tested = table.cells[table.cells["p_adjusted"].notna()]
    if tested.empty:
        return "seeds: no cell had enough to be tested"
    pairs = sorted({(int(a), int(b)) for a, b in zip(tested["n_seeds"], tested["n_seeds_versus"])})
    listed = ", ".join(f"{a} against {b}" for a, b in pairs)
    return f"seeds: {listed} runs (method against reference) in the tested cells"


def _untested_note(table: ComparisonTable, versus: str, code) -> str:
    """What ° means under this table's test: which cells could not be tested, and why."""
    if table.test not in SEED_TESTS:
        return f"not tested (no {versus} number in its column, or too few paired values)"
    if table.test == "seed-permutation":
        need = seeds_to_reach(LEVEL)
        reach = (f"its seeds cannot give p < {LEVEL} under this test: with n runs a method the smallest p is "
                 f"2 / C(2n, n), 0.1 at 3 against 3, so it needs >= {need} runs a method")
    else:
        reach = f"too few seeds (>= {MIN_SEEDS[table.test]} a method)"
    return (f"untestable, never 'no difference': no {versus} number in its column, or {reach}; "
            f"{code('launch.py power DIR')} gives the seeds that would detect each difference")


def _runs_note(table: ComparisonTable, dagger: str) -> str:
    """Which runs each number averages, and how many configurations each was selected from."""
    shown = table.cells[table.cells["n_runs"] > 0]
    sources = set(shown["source"])
    if sources == {"search"}:
        runs = "no seed reruns: each number is the search run of the selected configuration"
    elif sources == {"reruns"}:
        seeds = ", ".join(map(str, table.left_out))
        runs = (f"each number is the mean over the seed reruns of the selected configuration; the search run that won "
                f"the selection (seed {seeds}) left out")
    elif sources == {"seeds"}:
        runs = "each number is the mean over the selected configuration's search run and its seed reruns"
    else:
        runs = (f"each number is the mean over the selected configuration's search run and its seed reruns; "
                f"{dagger}: no reruns, the configuration's search run(s)")
    counts = shown.drop_duplicates(["dataset", "model", "method"]).groupby("method", sort=False)["n_configs"]
    spans = [(method, int(c.min()), int(c.max())) for method, c in counts if c.max() > 1]
    if spans:
        listed = ", ".join(f"{METHOD_NAMES.get(m, m)} {lo}" + (f"-{hi}" if hi > lo else "") for m, lo, hi in spans)
        runs += f"; selected on validation from {listed} configurations"
    return runs


def _format_cells(table: ComparisonTable, bold, mark, dagger: str, missing: str) -> dict[tuple, str]:
    """(dataset, method, model, metric) -> the text of its cell; `bold` and `mark` wrap the pieces."""
    mixed = {"seeds", "search"} <= set(table.cells.loc[table.cells["n_runs"] > 0, "source"])
    texts = {}
    for row in table.cells.itertuples(index=False):
        key = (row.dataset, row.method, row.model, row.metric)
        if row.n_runs == 0 or np.isnan(row.mean):
            texts[key] = missing
            continue
        number = f"{row.mean * 100:.3f}"
        number = bold(number) if row.best else number
        suffix = (row.marker + (NOT_TESTED if row.untested else "") + (dagger if mixed and row.source == "search" else "")
                  + (INCOMPLETE if row.incomplete else "") + (STOPPED if row.stopped else ""))
        texts[key] = number + (mark(suffix) if suffix else "")
    return texts


def to_markdown(table: ComparisonTable) -> str:
    texts = _format_cells(table, lambda s: f"**{s}**", lambda s: s.replace("*", r"\*"), "†", "—")
    header = ["Dataset", "Method"] + [f"{MODEL_NAMES.get(m, m)} {metric_name(x)}"
                                      for m in table.models for x in table.metrics]
    lines = [f"Table: {_caption(table)}.", "", "| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|"]
    for dataset in table.datasets:
        for i, method in enumerate(table.methods):
            row = [DATASET_NAMES.get(dataset, dataset) if i == 0 else "", METHOD_NAMES.get(method, method)]
            row += [texts[(dataset, method, m, x)] for m in table.models for x in table.metrics]
            lines.append("| " + " | ".join(row) + " |")
    note = _note(table, lambda s: s.replace("*", r"\*"), "†", "—")
    return "\n".join(lines + ["", note]) + "\n"


def _latex_mark(text: str) -> str:
    return "$^{" + (text.replace(WORSE, r"\downarrow").replace(INCOMPLETE, r"\ddagger").replace(STOPPED, r"\S")
                    .replace(NOT_TESTED, r"\circ")) + "}$"


def to_latex(table: ComparisonTable) -> str:
    texts = _format_cells(table, lambda s: rf"\textbf{{{s}}}", _latex_mark, r"\dagger", "---")
    n = len(table.metrics)
    groups = " & ".join(rf"\multicolumn{{{n}}}{{c}}{{{_latex(MODEL_NAMES.get(m, m))}}}" for m in table.models)
    rules = " ".join(rf"\cmidrule(lr){{{3 + i * n}-{2 + (i + 1) * n}}}" for i in range(len(table.models)))
    names = " & ".join(_latex(metric_name(x)) for _ in table.models for x in table.metrics)
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{_latex(_caption(table))}.}}",
             rf"\begin{{tabular}}{{ll{'r' * n * len(table.models)}}}", r"\toprule",
             rf" & & {groups} \\", rules, rf"Dataset & Method & {names} \\"]
    for dataset in table.datasets:
        lines.append(r"\midrule")
        for i, method in enumerate(table.methods):
            row = [_latex(DATASET_NAMES.get(dataset, dataset)) if i == 0 else "", _latex(METHOD_NAMES.get(method, method))]
            row += [texts[(dataset, method, m, x)] for m in table.models for x in table.metrics]
            lines.append(" & ".join(row) + r" \\")
    note = _note(table, _latex_mark, r"$^\dagger$", "---", latex=True)
    lines += [r"\bottomrule", r"\end{tabular}", r"\par\smallskip", rf"{{\footnotesize {note}}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def _latex(text: str) -> str:
    """Escape LaTeX's special characters in plain text (names, captions)."""
    special = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
               "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
    return "".join(special.get(c, c) for c in text)


def to_csv(table: ComparisonTable) -> str:
    """One line per table position, ids as in the files, mean and std in %, missing values as n/a; the
    marks as columns (`best` at the printed tables' precision, 3 decimals in %: docs/FORMATS.md)."""
    frame = table.cells.assign(mean_pct=table.cells["mean"] * 100, std_pct=table.cells["std"] * 100,
                               difference_pct=table.cells["mean_difference"] * 100, versus=table.versus,
                               test=table.test, correction=table.correction or "none", ties=table.ties)
    columns = ["dataset", "method", "model", "metric", "mean_pct", "std_pct", "n_runs", "source", "config", "n_configs",
               "versus", "test", "correction", "ties", "difference_pct", "p_value", "p_adjusted", "marker", "untested", "best",
               "incomplete", "stopped"]
    return frame[columns].to_csv(index=False, float_format="%.6g", na_rep="n/a", lineterminator="\n")
