"""analysis.collect and analysis.tables on small fixed experiment directories built here.

The builder writes what the runner writes (docs/FORMATS.md) through the real Store (checksummed
meta.json) and the real metric code (csrec.evaluate.compute_metrics), from per-user ranks given by
fixed arithmetic (no random numbers), so the golden tables under tests/fixtures/analysis/ are
stable. Set CSREC_UPDATE_GOLDEN=1 to rewrite them after a deliberate change, then read the diff.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis import build_table, cell_numbers, collect, comparison_table, comparisons, select, to_markdown
from analysis.collect import config_label
from analysis.tables import DATASET_NAMES, METHOD_NAMES
from analysis.significance import per_user_metric
from csrec.errors import CSRecError
from csrec.evaluate import compute_metrics
from csrec.store import Store, config_key

GOLDEN = Path(__file__).parent / "fixtures" / "analysis"
N_USERS = 80
MODELS = ("gru4rec", "sasrec")
METHODS = ("base", "softrec", "csrec-m", "csrec-d", "csrec-t")
# method -> its configs: (params, valid gain, test gain); a gain lowers most users' ranks (see _ranks).
CONFIGS = {
    "base": [({}, 0, 0)],
    "softrec": [({"beta": 0.5, "temperature": 3.0}, 2, 2), ({"beta": 0.75, "temperature": 3.0}, 1, 1)],
    # the best on validation (beta 0.25) is not the best on test (beta 0.75): selection must ignore test
    "csrec-m": [({"beta": 0.25, "temperature": 3.0}, 5, 5), ({"beta": 0.75, "temperature": 3.0}, 3, 8)],
    "csrec-d": [({"beta": 0.5, "temperature": 6.0}, 4, 4)],
    "csrec-t": [({"alpha": 0.5, "beta": 0.5, "temperature": 3.0}, 3, 3)],
}
RERUN_SEEDS = (1, 2)


def _ranks(split: str, dataset: str, model: str, gain: int, seed: int) -> np.ndarray:
    """Fixed per-user ranks: a base pattern, improved by `gain` places for users u % 3 != 0 (so the
    improvement is steady, testably significant) and perturbed for a few users by the seed."""
    u = np.arange(N_USERS)
    salt = len(dataset) * 3 + len(model) + (7 if split == "valid" else 0)
    rank = 1 + (u * 37 + salt) % 25
    rank = np.where(u % 3 != 0, rank - gain, rank)
    rank = np.where((u + 5 * seed) % 11 == 0, rank + 4 + seed, rank)
    return np.maximum(rank, 1).astype(np.int64)


def _ties(split: str, dataset: str) -> np.ndarray:
    """On Last.FM a few users whose target ties with other items (3 of them, or 1 in validation)."""
    u = np.arange(N_USERS)
    return np.where((u % 9 == 4) & (dataset == "lastfm"), 1 if split == "valid" else 3, 0).astype(np.int64)


def _ratings(dataset: str) -> np.ndarray | None:
    return (1.0 + (np.arange(N_USERS) * 7) % 5) if dataset == "ml-100k" else None


def write_trial(store: Store, dataset: str, model: str, method: str, params: dict, seed: int, stage: str,
                gains: tuple[int, int], with_ties: bool = True, device: dict | None = None,
                finetuning: str | None = None) -> str:
    """One finished trial as the runner writes it: result.json + per_user.parquet + meta.json
    (`with_ties=False`: as written before ties were recorded, no ties column)."""
    record = {"dataset": dataset, "model": model, "method": method, "seed": seed, "stage": stage,
              "params": {"alpha": None, "beta": None, "temperature": None} | params}
    key = config_key(record)
    ratings = _ratings(dataset)
    frames, metrics = [], {}
    for split, gain in zip(("valid", "test"), gains):
        ranks = _ranks(split, dataset, model, gain if method != "base" else 0, seed)
        ties = _ties(split, dataset) if with_ties else np.zeros(N_USERS, dtype=np.int64)
        metrics[split] = compute_metrics(ranks, ratings, ties=ties)
        frame = pd.DataFrame({"split": split, "sequence": np.arange(N_USERS), "user": [f"u{i}" for i in range(N_USERS)],
                              "target": 1 + np.arange(N_USERS) % 30, "rank": ranks, "ties": ties,
                              "rating": ratings if ratings is not None else np.nan, "input_length": 5})
        frames.append(frame if with_ties else frame.drop(columns="ties"))
    result = (record | {"key": key, "best_epoch": 3} | metrics | ({"device": device} if device else {})
              | ({"finetuning": finetuning} if finetuning else {}))

    def fill(folder: Path) -> None:
        (folder / "result.json").write_text(json.dumps(result, indent=2, sort_keys=True))
        pd.concat(frames, ignore_index=True).to_parquet(folder / "per_user.parquet", index=False)

    store.write("trials", key, record, fill)
    return key


def build_experiment(root: Path, datasets=("lastfm", "ml-100k"), skip=(), reruns=True) -> Path:
    """A finished (or, with `skip` cells, partial) experiment: search trials on seed 0, the best
    configuration rerun on seeds 1 and 2 for every cell but (lastfm, sasrec, *) (search fallback)."""
    store = Store(root / "store")
    plan = []
    for dataset in datasets:
        (root / "datasets").mkdir(parents=True, exist_ok=True)
        (root / "datasets" / f"{dataset}.json").write_text(json.dumps({"n_items": 30, "item_train_counts": [0] + [5] * 30}))
        for model in MODELS:
            for method in METHODS:
                configs = CONFIGS[method]
                plan += [{"dataset": dataset, "model": model, "method": method, "seed": 0, "stage": "search",
                          "params": params} for params, *_ in configs]
                if (dataset, model, method) in skip:
                    continue
                for params, valid_gain, test_gain in configs:
                    write_trial(store, dataset, model, method, params, 0, "search", (valid_gain, test_gain))
                if reruns and (dataset, model) != ("lastfm", "sasrec"):
                    params, valid_gain, test_gain = max(configs, key=lambda c: c[1])
                    for seed in RERUN_SEEDS:
                        write_trial(store, dataset, model, method, params, seed, "seeds", (valid_gain, test_gain))
    (root / "plan.json").write_text(json.dumps({"teachers": [], "trials": plan, "tpe_cells": []}))
    return root


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Path:
    return build_experiment(tmp_path_factory.mktemp("experiment"))


@pytest.fixture(scope="module")
def partial(tmp_path_factory) -> Path:
    """Two cells never ran (one is ML-100K/GRU4Rec's SoftRec, the reference), one rerun is damaged,
    one trial directory has no meta.json yet (still running)."""
    root = build_experiment(tmp_path_factory.mktemp("partial"),
                            skip={("lastfm", "sasrec", "csrec-t"), ("ml-100k", "gru4rec", "softrec")})
    store = Store(root / "store")
    damaged = write_trial(store, "ml-100k", "sasrec", "csrec-d", {"beta": 0.5, "temperature": 6.0}, 9, "seeds", (4, 4))
    with open(root / "store" / "trials" / damaged / "per_user.parquet", "ab") as handle:
        handle.write(b"truncated?")
    running = write_trial(store, "ml-100k", "sasrec", "csrec-t", CONFIGS["csrec-t"][0][0], 3, "seeds", (3, 3))
    (root / "store" / "trials" / running / "meta.json").unlink()
    return root


def _golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("CSREC_UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.is_file(), f"{path} is missing; run with CSREC_UPDATE_GOLDEN=1 once and check it"
    assert text == path.read_text()


def _markdown_cells(markdown: str) -> dict[tuple[str, str], list[str]]:
    """(dataset, method) -> the cells of its row, from a Markdown table (dataset named on a block's first row)."""
    cells, dataset = {}, ""
    for line in markdown.splitlines():
        if not line.startswith("| ") or line.startswith("| Dataset"):
            continue
        parts = [part.strip() for part in line.strip("|").split("|")]
        dataset = parts[0] or dataset
        cells[(dataset, parts[1])] = parts[2:]
    return cells


def test_collect_is_tidy_and_matches_the_files(experiment):
    collection = collect(experiment)
    results, trials = collection.results, collection.trials
    assert len(trials) == 58 and collection.unfinished.empty and collection.missing_cells == []
    assert list(results.columns) == ["key", "dataset", "model", "method", "config", "seed", "stage", "alpha", "beta",
                                     "temperature", "split", "metric", "value"]
    assert set(results["split"]) == {"valid", "test"} and set(results["stage"]) == {"search", "seeds"}
    # lastfm has no ratings: 9 metrics a split; ml-100k adds recall+@k and ndcg+@k
    per_trial = results.groupby("key").size()
    assert set(per_trial[trials.set_index("key")["dataset"] == "lastfm"]) == {18}
    assert set(per_trial[trials.set_index("key")["dataset"] == "ml-100k"]) == {30}
    row = trials[(trials["method"] == "csrec-t")].iloc[0]
    assert (row["alpha"], row["beta"], row["temperature"]) == (0.5, 0.5, 3.0)
    assert row["config"] == "alpha=0.5 beta=0.5 temperature=3.0" and config_label({"beta": None}) == "default"
    # the per-user arrays are those of the trial: their mean is the result.json number
    key = row["key"]
    value = results[(results["key"] == key) & (results["split"] == "test") & (results["metric"] == "ndcg@10")]["value"]
    assert per_user_metric(collection.per_user(key), "ndcg@10").mean() == pytest.approx(value.item(), rel=1e-12)
    assert collection.dataset_info("lastfm")["n_items"] == 30


def test_collect_reports_what_is_missing(partial):
    collection = collect(partial)
    assert collection.missing_cells == [("lastfm", "sasrec", "csrec-t"), ("ml-100k", "gru4rec", "softrec")]
    unfinished = collection.unfinished.set_index("method")
    assert set(unfinished.index) == {"csrec-d", "csrec-t"}
    assert unfinished.loc["csrec-t", "reason"] == "no meta.json (unfinished)"
    assert "per_user.parquet does not match its checksum" in unfinished.loc["csrec-d", "reason"]
    # the damaged rerun is left out: the cell reports its search run and its two intact reruns
    chosen = select(collection)[("ml-100k", "sasrec", "csrec-d")]
    assert len(chosen.keys) == 3 and unfinished.loc["csrec-d", "key"] not in chosen.keys
    report = collection.report()
    assert "cells with no finished trial: 2 of 20" in report and "ml-100k/gru4rec/softrec" in report
    assert report.count("unfinished ") == 2
    with pytest.raises(CSRecError, match="not a finished trial"):
        collection.per_user(unfinished.loc["csrec-t", "key"])


def test_selection_never_looks_at_test(experiment):
    collection = collect(experiment)
    search = collection.results[(collection.results["stage"] == "search") & (collection.results["metric"] == "ndcg@10")
                                & (collection.results["dataset"] == "lastfm") & (collection.results["model"] == "gru4rec")
                                & (collection.results["method"] == "csrec-m")]
    best_on = {split: search[search["split"] == split].set_index("config")["value"].idxmax() for split in ("valid", "test")}
    assert best_on["valid"] != best_on["test"]  # the fixture's premise
    chosen = select(collection)[("lastfm", "gru4rec", "csrec-m")]
    assert chosen.config == best_on["valid"] == "beta=0.25 temperature=3.0"


def test_selection_averages_search_seeds_and_reports_reruns(tmp_path, experiment):
    store = Store(tmp_path / "store")
    lucky, steady = {"beta": 0.25, "temperature": 1.0}, {"beta": 0.5, "temperature": 1.0}
    write_trial(store, "yelp", "narm", "csrec-d", lucky, 0, "search", (9, 0))  # best single trial...
    write_trial(store, "yelp", "narm", "csrec-d", lucky, 1, "search", (0, 0))  # ...but mean gain 4.5 vs 6
    for seed in (0, 1):
        write_trial(store, "yelp", "narm", "csrec-d", steady, seed, "search", (6, 6))
    chosen = select(collect(tmp_path))  # no plan.json: the cells are those found
    assert chosen[("yelp", "narm", "csrec-d")].config == "beta=0.5 temperature=1.0"
    assert chosen[("yelp", "narm", "csrec-d")].source == "search" and len(chosen[("yelp", "narm", "csrec-d")].keys) == 2

    collection = collect(experiment)
    chosen = select(collection)
    numbers = cell_numbers(collection, chosen, "recall@10").set_index(["dataset", "model", "method"])
    test = collection.results[(collection.results["split"] == "test") & (collection.results["metric"] == "recall@10")]
    runs = test[test["key"].isin(chosen[("lastfm", "gru4rec", "csrec-d")].keys)]
    assert sorted(runs["stage"]) == ["search", "seeds", "seeds"]
    reruns = runs["value"]
    row = numbers.loc[("lastfm", "gru4rec", "csrec-d")]
    assert (row["source"], row["n_runs"]) == ("seeds", 3)  # the search run and its two reruns
    assert row["mean"] == pytest.approx(reruns.mean()) and row["std"] == pytest.approx(reruns.std(ddof=1))
    fallback = numbers.loc[("lastfm", "sasrec", "csrec-d")]
    assert (fallback["source"], fallback["n_runs"]) == ("search", 1) and np.isnan(fallback["std"])


def test_markers_are_the_paired_test_of_the_reported_runs(experiment):
    collection = collect(experiment)
    chosen = select(collection)
    table = comparisons(collection, chosen, ("recall@10",), versus="softrec").set_index(["dataset", "model", "method"])
    assert len(table) == 2 * 2 * 4 and "softrec" not in table.index.get_level_values("method")

    def vector(method):
        runs = [per_user_metric(collection.per_user(k), "recall@10") for k in chosen[("ml-100k", "gru4rec", method)].keys]
        return pd.concat(runs, axis=1).mean(axis=1)

    expected = stats.ttest_rel(vector("csrec-t"), vector("softrec"))
    row = table.loc[("ml-100k", "gru4rec", "csrec-t")]
    assert row["p_value"] == pytest.approx(expected.pvalue, rel=1e-12) and row["n_users"] == N_USERS
    assert row["marker"] == ("**" if expected.pvalue < 0.05 else "*" if expected.pvalue < 0.1 else "")
    assert row["mean_difference"] == pytest.approx((vector("csrec-t") - vector("softrec")).mean())
    holm = comparisons(collection, chosen, ("recall@10",), correction="holm")
    assert (holm["p_adjusted"] >= holm["p_value"]).all()
    assert holm["p_adjusted"].min() == pytest.approx(holm["p_value"].min() * len(holm))
    versus_base = comparisons(collection, chosen, ("ndcg@10",), versus="base", bootstrap=200)
    assert set(versus_base["method"]) == {"softrec", "csrec-m", "csrec-d", "csrec-t"}
    assert (versus_base["ci_low"] <= versus_base["mean_difference"]).all()
    assert (versus_base["mean_difference"] <= versus_base["ci_high"]).all()


def test_golden_tables(experiment):
    _golden("table2.md", comparison_table(experiment))
    _golden("table2.tex", comparison_table(experiment, fmt="latex"))
    _golden("table3.md", comparison_table(experiment, metrics=("recall+@10", "ndcg+@10")))


def test_bold_marks_the_best_of_each_column(experiment):
    table = build_table(collect(experiment))
    cells = table.cells
    for (dataset, model, metric), group in cells.groupby(["dataset", "model", "metric"]):
        best = group.loc[group["mean"].idxmax(), "method"]
        assert list(group.loc[group["best"], "method"]) == [best]
    shown = _markdown_cells(comparison_table(experiment))
    assert all(text.startswith("**") for text in shown[("Last.FM", "CSRec-M")])  # bold in all four columns
    assert not any(text.startswith("**") for key, row in shown.items() if key[1] != "CSRec-M" for text in row)
    # ties at the shown precision are all bold (ML-100K/SASRec Recall+@10: 54.688 three times)
    plus = build_table(collect(experiment), metrics=("recall+@10",)).cells
    tied = plus[(plus["model"] == "sasrec") & plus["best"]]
    assert sorted(tied["method"]) == ["csrec-d", "csrec-m", "csrec-t"]


def test_partial_experiment_gives_a_table_with_missing_cells(partial):
    markdown = comparison_table(partial)
    _golden("partial.md", markdown)
    cells = _markdown_cells(markdown)
    assert len(cells) == 10 and all(len(row) == 4 for row in cells.values())
    assert cells[("Last.FM", "CSRec-T")][2:] == ["—", "—"]  # SASRec columns
    assert cells[("ML-100K", "SoftRec")][:2] == ["—", "—"]  # GRU4Rec columns
    missing = [(key, i) for key, row in cells.items() for i, text in enumerate(row) if text == "—"]
    assert len(missing) == 4
    # ML-100K/GRU4Rec has no SoftRec, so nothing there is tested against it; SASRec still is
    assert not any("\\*" in cells[("ML-100K", method)][i] for method in ("Base", "CSRec-M", "CSRec-D") for i in (0, 1))
    assert "\\*" in cells[("ML-100K", "CSRec-M")][3]
    latex = comparison_table(partial, fmt="latex")
    assert latex.count(" & ---") == 4
    frame = pd.read_csv(io.StringIO(comparison_table(partial, fmt="csv")))
    assert frame["mean_pct"].isna().sum() == 4 and len(frame) == 2 * 5 * 2 * 2
    assert_csv_marks(frame)


def assert_csv_marks(frame: pd.DataFrame) -> None:
    """The CSV's mark columns mean what the printed legend says."""
    tested = frame["p_adjusted"].notna() | (frame["method"] == frame["versus"])
    assert (frame["untested"] == (frame["mean_pct"].notna() & ~tested)).all()
    shown = frame["mean_pct"].round(3)
    column = shown.groupby([frame["dataset"], frame["model"], frame["metric"]])
    assert (frame["best"] == (shown.notna() & (shown == column.transform("max")) & (column.transform("count") >= 2))).all()


def test_csv_holds_every_position(experiment):
    frame = pd.read_csv(io.StringIO(comparison_table(experiment, fmt="csv", correction="holm")))
    assert len(frame) == 40 and frame["mean_pct"].notna().all()
    assert frame["p_value"].notna().sum() == 32 and (frame["correction"] == "holm").all()
    row = frame[(frame["dataset"] == "lastfm") & (frame["method"] == "csrec-m") & (frame["model"] == "gru4rec")
                & (frame["metric"] == "recall@10")].iloc[0]
    assert row["best"] and row["config"] == "beta=0.25 temperature=3.0" and row["source"] == "seeds"
    assert not frame["untested"].any()
    assert_csv_marks(frame)


def test_table_options_and_errors(experiment, tmp_path):
    holm_md = comparison_table(experiment, correction="holm", test="wilcoxon")
    assert "Holm-adjusted across the table's 32 comparisons" in holm_md and "Wilcoxon" in holm_md
    assert "(1000 resamples, seed 3)" in comparison_table(experiment, test="randomisation", n_resamples=1000, seed=3)
    assert "better than Base" in comparison_table(experiment, versus="base")
    for kwargs, message in [({"fmt": "html"}, "md, latex, csv"), ({"metrics": ("ndcg@15",)}, "not in the results"),
                            ({"metrics": ("hits@10",)}, "name@k"), ({"versus": "csrec"}, "versus"),
                            ({"correction": "bonferroni"}, "holm"), ({"selection_metric": "ndcg@15"}, "selection")]:
        with pytest.raises(CSRecError, match=message):
            comparison_table(experiment, **kwargs)
    lastfm_only = build_experiment(tmp_path / "lastfm", datasets=("lastfm",), reruns=False)
    with pytest.raises(CSRecError, match="has ratings"):
        comparison_table(lastfm_only, metrics=("recall+@10", "ndcg+@10"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CSRecError, match="nothing to tabulate"):
        comparison_table(tmp_path / "empty")
    with pytest.raises(CSRecError, match="does not exist"):
        comparison_table(tmp_path / "nowhere")


def test_analysis_never_imports_torch_or_ray(experiment):
    code = ("import sys; from analysis import comparison_table; comparison_table(sys.argv[1]); "
            "assert 'torch' not in sys.modules and 'ray' not in sys.modules, sorted(sys.modules)")
    done = subprocess.run([sys.executable, "-c", code, str(experiment)], cwd=Path(__file__).parents[1],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def _shown_markers(markdown: str) -> dict[tuple[str, str, int], str]:
    """(dataset, method, column) -> the mark printed after the number ('**', '*', '↓' or '')."""
    marks = {}
    for (dataset, method), row in _markdown_cells(markdown).items():
        for i, text in enumerate(row):
            mark = text.split("**")[-1] if text.startswith("**") else text.lstrip("0123456789.")
            marks[(dataset, method, i)] = mark.replace("\\*", "*").replace("†", "")
    return marks


@pytest.mark.parametrize("test, correction", [("ttest", None), ("ttest", "holm"), ("seed-permutation", None)])
def test_every_marker_is_the_claim_the_legend_makes(experiment, test, correction):
    table = build_table(collect(experiment), test=test, correction=correction, n_resamples=500)
    marks = _shown_markers(to_markdown(table))
    columns = [(m, x) for m in table.models for x in table.metrics]
    checked = untested = 0
    for row in table.cells[table.cells["n_runs"] > 0].itertuples(index=False):
        shown = marks[(DATASET_NAMES[row.dataset], METHOD_NAMES[row.method], columns.index((row.model, row.metric)))]
        p, difference = row.p_adjusted, row.mean_difference
        if shown == "**":
            assert p < 0.05 and difference > 0
        elif shown == "*":
            assert 0.05 <= p < 0.1 and difference > 0
        elif shown == "↓":
            assert p < 0.05 and difference < 0
        elif shown == "°":  # not tested: no p-value at all
            assert np.isnan(p) and row.method != "softrec"
        else:  # no mark: tested, and neither threshold met (SoftRec's own row: the reference)
            assert row.method == "softrec" or (not np.isnan(p) and not (p < 0.1 and difference > 0)
                                               and not (p < 0.05 and difference < 0))
        versus = table.cells[(table.cells["dataset"] == row.dataset) & (table.cells["model"] == row.model)
                             & (table.cells["metric"] == row.metric) & (table.cells["method"] == "softrec")]
        significant = shown in ("**", "*", "↓")
        if significant and len(versus) and versus["n_runs"].item():  # the sign is that of the numbers shown
            assert np.sign(row.mean - versus["mean"].item()) == (1 if shown != "↓" else -1)
        checked += significant
        untested += shown == "°"
    note = to_markdown(table).splitlines()[-1]
    if test == "seed-permutation":  # 3 runs a method at most here: no cell can reach p < 0.05, so every one is °
        assert checked == 0 and untested == (table.cells["n_runs"] > 0).sum() - (table.cells["method"] == "softrec").sum()
        assert "°: untestable, never 'no difference'" in note and "it needs >= 4 runs a method" in note
        assert "exact two-sided permutation test on the runs' means" in note and "launch.py power DIR" in note
    else:
        assert checked >= 8
        assert ("°: not tested (no SoftRec number in its column, or too few" in note) == (untested > 0)
        # Base is worse than SoftRec everywhere here: never an improvement marker, a deterioration mark instead
        base = [mark for (dataset, method, i), mark in marks.items() if method == "Base" and mark]
        assert base and set(base) == {"↓"}
    assert "significantly better than SoftRec" in note and "↓ p < 0.05: significantly worse" in note
    assert ("Holm-adjusted" in note) == (correction == "holm")
    assert "ties with the target broken at random" in note and "search run and its seed reruns" in note


def test_seed_level_tests_need_their_seeds(experiment, tmp_path):
    permutation = comparisons(collect(experiment), select(collect(experiment)), ("recall@10",),
                              test="seed-permutation").set_index(["dataset", "model", "method"])
    one_seed = permutation.loc[("lastfm", "sasrec", "csrec-m")]  # no reruns: one seed a method
    assert np.isnan(one_seed["p_value"]) and one_seed["marker"] == "" and one_seed["n_seeds"] == 1
    assert one_seed["untestable"]
    three = permutation.loc[("lastfm", "gru4rec", "csrec-m")]  # 3 against 3: the smallest p is 0.1
    assert three["n_seeds"] == 3 and three["untestable"] and three["smallest_p"] == pytest.approx(0.1)
    welch = comparisons(collect(experiment), select(collect(experiment)), ("recall@10",),
                        test="seed-welch").set_index(["dataset", "model", "method"]).loc[("lastfm", "gru4rec", "csrec-m")]
    assert welch["ci_low"] <= welch["mean_difference"] <= welch["ci_high"] and not welch["untestable"]
    seed_t = comparisons(collect(experiment), select(collect(experiment)), ("recall@10",), test="seed-ttest")
    assert seed_t["p_value"].isna().all()  # three seeds: below the 5 the seed-level test needs
    assert "needs >= 5 common seeds" in comparison_table(experiment, test="seed-ttest")
    # six seeds of two methods: the seed-level test is scipy's paired t-test of the per-seed means
    store = Store(tmp_path / "store")
    for seed in range(6):
        for method, gains in (("softrec", (2, 2)), ("csrec-m", (5, 5 + seed % 3))):
            write_trial(store, "lastfm", "gru4rec", method, {"beta": 0.5}, seed, "search" if seed == 0 else "seeds", gains)
    collection = collect(tmp_path)
    row = comparisons(collection, select(collection), ("ndcg@10",), test="seed-ttest").iloc[0]
    chosen = select(collection)
    means = {m: [per_user_metric(collection.per_user(k), "ndcg@10").mean() for k in chosen[("lastfm", "gru4rec", m)].keys]
             for m in ("softrec", "csrec-m")}
    expected = stats.ttest_rel(means["csrec-m"], means["softrec"])
    assert row["n_seeds"] == 6 and row["p_value"] == pytest.approx(expected.pvalue, rel=1e-12)
    # the exact permutation test on the same six runs a side: scipy's, and the table marks what its legend says
    row = comparisons(collection, chosen, ("ndcg@10",), test="seed-permutation").iloc[0]
    exact = stats.permutation_test((means["csrec-m"], means["softrec"]), lambda x, y: np.mean(x) - np.mean(y),
                                   permutation_type="independent", n_resamples=np.inf).pvalue
    assert row["p_value"] == pytest.approx(exact) and not row["untestable"]
    assert exact == pytest.approx(2 / 924)  # csrec-m above softrec at every seed: the two extreme splits of 12 runs
    table = comparison_table(tmp_path, test="seed-permutation", metrics=("ndcg@10",))
    assert _markdown_cells(table)[("Last.FM", "CSRec-M")][0].endswith("\\*\\*")  # ** as the legend says
    assert "seeds: 6 against 6 runs (method against reference) in the tested cells" in table


def test_exclude_search_run_reports_the_reruns_only(experiment):
    collection = collect(experiment)
    table = build_table(collection, exclude_search_run=True)
    cells = table.cells.set_index(["dataset", "model", "method", "metric"])
    test = collection.results[(collection.results["split"] == "test") & (collection.results["metric"] == "recall@10")]
    for method, configs in (("csrec-m", 2), ("base", 1)):
        sel = select(collection)[("lastfm", "gru4rec", method)]
        reruns = test[test["key"].isin(sel.keys) & (test["stage"] == "seeds")]["value"]
        row = cells.loc[("lastfm", "gru4rec", method, "recall@10")]
        assert (row["n_runs"], row["source"], row["n_configs"]) == (2, "reruns", configs)
        assert row["mean"] == pytest.approx(reruns.mean()) and row["std"] == pytest.approx(reruns.std(ddof=1))
    assert (cells.xs(("lastfm", "sasrec"), level=[0, 1])["n_runs"] == 0).all()  # no reruns there
    note = to_markdown(table).splitlines()[-1]
    assert "the search run that won the selection (seed 0) left out" in note
    assert "selected on validation from SoftRec 2, CSRec-M 2 configurations" in note
    assert "—: no finished trial or no seed rerun" in note
    shown = _markdown_cells(to_markdown(table))
    assert shown[("Last.FM", "CSRec-M")][2:] == ["—", "—"]


def test_ties_rule_is_applied_to_every_number(experiment, tmp_path):
    collection = collect(experiment)
    chosen = select(collection)
    expected = cell_numbers(collection, chosen, "ndcg@10").set_index(["dataset", "model", "method"])
    pessimistic = cell_numbers(collection, chosen, "ndcg@10", ties="pessimistic").set_index(["dataset", "model", "method"])
    # under the default rule each run's number is its result.json number (written with the same rule)
    test = collection.results[(collection.results["split"] == "test") & (collection.results["metric"] == "ndcg@10")]
    keys = chosen[("lastfm", "gru4rec", "softrec")].keys
    assert expected.loc[("lastfm", "gru4rec", "softrec"), "mean"] == pytest.approx(
        test.set_index("key").loc[list(keys), "value"].mean(), rel=1e-12)
    assert (pessimistic["mean"] <= expected["mean"] + 1e-15).all()
    assert (pessimistic["mean"] < expected["mean"]).any()  # Last.FM's users with ties
    ml = [c for c in expected.index if c[0] == "ml-100k"]  # no ties there
    assert np.allclose(pessimistic.loc[ml, "mean"], expected.loc[ml, "mean"], rtol=1e-12)
    frame = pd.read_csv(io.StringIO(comparison_table(experiment, fmt="csv", ties="pessimistic")))
    assert (frame["ties"] == "pessimistic").all()
    assert "ties with the target counted against it" in comparison_table(experiment, ties="pessimistic")
    with pytest.raises(CSRecError, match="ties"):
        comparison_table(experiment, ties="optimistic")
    # a run written before ties were recorded says so in the legend
    store = Store(tmp_path / "store")
    for method in ("base", "softrec"):
        write_trial(store, "lastfm", "gru4rec", method, {}, 0, "search", (1, 1), with_ties=False)
    assert "2 of the 2 runs were evaluated before ties were recorded" in comparison_table(tmp_path)


def test_cli_table_names_its_options(experiment, capsys):
    import launch

    assert launch.main(["table", str(experiment), "--test", "seed-permutation", "--exclude-search-run",
                        "--ties", "pessimistic"]) == 0
    out = capsys.readouterr().out
    assert "exact two-sided permutation test" in out and "left out" in out and "counted against it" in out
    with pytest.raises(SystemExit):
        launch.main(["table", str(experiment), "--test", "z-test"])
    assert "seed-ttest" in capsys.readouterr().err


def test_published_view_sets_each_cell_beside_the_papers_number_as_its_legend_says(experiment, partial):
    from analysis.published import PUBLISHED, published, to_published

    collection = collect(experiment)
    table = build_table(collection)
    text = comparison_table(experiment, fmt="published")
    rows = [[p.strip() for p in line.strip("|").split("|")] for line in text.splitlines()
            if line.startswith("| ") and not line.startswith("| Dataset")]
    ours = _markdown_cells(to_markdown(table))
    names = {v: k for k, v in {**DATASET_NAMES, **METHOD_NAMES}.items()}
    models = {"GRU4Rec": "gru4rec", "SASRec": "sasrec"}
    assert len(rows) == 2 * len(METHODS) and {r[0] for r in rows} == {"Last.FM"}  # ML-100K: no published number
    assert f"only cells with both numbers are listed ({len(rows)})" in text
    chosen = select(collection, "ndcg@10")
    for row in rows:
        dataset, method, model = names[row[0]], names[row[1]], models[row[2]]
        column = MODELS.index(model) * 2
        for i, metric in enumerate(("recall@10", "ndcg@10")):
            shown, paper, difference = row[3 + 3 * i: 6 + 3 * i]
            number = ours[(row[0], row[1])][column + i].strip("*\\↓‡§†")
            assert shown.startswith(number)  # the comparison table's number, as printed there
            runs = cell_numbers(collection, {k: v for k, v in chosen.items() if k == (dataset, model, method)}, metric)
            n_runs, std = runs["n_runs"].iloc[0], runs["std"].iloc[0] * 100
            spread = "" if n_runs == 1 else f" ± {std:.3f}"  # the sample std over those runs; none of one run
            assert shown == f"{number}{spread} ({n_runs})"
            assert float(paper) == published(dataset, model, method, metric) == PUBLISHED[(dataset, model, method, metric)]
            assert float(difference) == pytest.approx(float(number) - float(paper), abs=1e-9)
    assert {row[2] for row in rows if row[1] == "CSRec-T"} == {"GRU4Rec", "SASRec"}
    assert "‡" not in text and "§" not in text  # nothing incomplete or stopped: no mark, no legend for one

    # In the partial experiment Last.FM SASRec's CSRec-T never ran: no number of ours, so no line.
    rows = [line for line in comparison_table(partial, fmt="published").splitlines() if line.startswith("| Last.FM")]
    assert len(rows) == 2 * len(METHODS) - 1 and not any("| CSRec-T | SASRec |" in line for line in rows)
    # A cell selected without some of its planned runs carries ‡, and then the legend says what ‡ means.
    flagged = build_table(collection)
    flagged.cells.loc[(flagged.cells["method"] == "base") & (flagged.cells["model"] == "gru4rec"), "incomplete"] = True
    text = to_published(flagged)
    line = next(line for line in text.splitlines() if line.startswith("| Last.FM | Base | GRU4Rec |"))
    assert line.count("‡") == 2 and text.count("‡") == 3 and "‡: some of the cell's planned runs are missing" in text


def test_published_numbers_are_the_reference_table(tmp_path):
    from analysis.published import PUBLISHED

    reference = Path(__file__).resolve().parents[2] / "shared" / "REFERENCE.md"
    if not reference.is_file():
        pytest.skip(f"{reference} is not on this machine")
    text = reference.read_text()
    found = 0
    for dataset, title in (("lastfm", "Last.FM"), ("yelp", "Yelp")):
        block = text.split(f"| {title} | GRU4Rec | NextItNet | NARM | SASRec |")[1].split("\n\n")[0]
        for line in block.splitlines()[2:]:
            parts = [p.strip() for p in line.strip("|").split("|")]
            method = {v: k for k, v in METHOD_NAMES.items()}[parts[0]]
            for model, pair in zip(("gru4rec", "nextitnet", "narm", "sasrec"), parts[1:]):
                recall, ndcg = (float(x) for x in pair.split("/"))
                assert PUBLISHED[(dataset, model, method, "recall@10")] == recall
                assert PUBLISHED[(dataset, model, method, "ndcg@10")] == ndcg
                found += 2
    assert found == len(PUBLISHED) == 80


def test_a_lone_number_in_its_column_is_not_bold(tmp_path):
    lone = build_experiment(tmp_path / "lone", datasets=("lastfm",),
                            skip={("lastfm", "sasrec", m) for m in METHODS if m != "base"})
    table = build_table(collect(lone))
    cells = table.cells.set_index(["model", "method", "metric"])
    assert cells.loc[("sasrec", "base", "recall@10"), "n_runs"] > 0
    assert not cells.loc[("sasrec", "base", "recall@10"), "best"]  # nothing beside it to be better than
    assert cells.loc["gru4rec"]["best"].sum() >= 2  # a full column keeps its bold
    assert "bold: best per column within a data set, where the column has two or more numbers" in to_markdown(table)
    row = _markdown_cells(to_markdown(table))[("Last.FM", "Base")]
    assert not row[2].startswith("**") and "°" in row[2]  # and untested: no SoftRec number there


def test_report_p_values_never_round_across_a_marked_level():
    from analysis.report import _p

    assert [_p(p) for p in (0.018, 0.00031, 0.12, 0.0496, 0.0996, 0.04999, 0.05, 0.1)] == \
        ["0.018", "0.00031", "0.12", "0.0496", "0.0996", "0.04999", "0.05", "0.1"]
    assert _p(float("nan")) is None


def test_the_reports_per_group_numbers_follow_the_tables_tie_rule_and_runs(experiment):
    from analysis.groups import group_metrics

    collection = collect(experiment)
    for options in ({"ties": "pessimistic", "exclude_search_run": True}, {}):
        table = build_table(collection, **options).cells.set_index(["dataset", "model", "method", "metric"])
        groups = group_metrics(collection, metrics=("recall@10",), **options)
        every = groups[groups["group"] == "all"]
        assert len(every) > 0
        for row in every.itertuples(index=False):
            shown = table.loc[(row.dataset, row.model, row.method, "recall@10")]
            assert row.value == pytest.approx(shown["mean"], abs=1e-12) and row.n_runs == shown["n_runs"]


def test_the_legend_says_when_the_runs_trained_on_different_devices(tmp_path):
    store = Store(tmp_path / "store")
    gpu = {"kind": "cuda", "name": "NVIDIA H100 80GB HBM3"}
    for seed in range(2):
        for method in ("softrec", "csrec-m"):
            write_trial(store, "lastfm", "gru4rec", method, {"beta": 0.5}, seed, "search" if seed == 0 else "seeds",
                        (2, 2), device=gpu if seed == 1 else {"kind": "cpu", "name": "x86_64"})
    note = comparison_table(tmp_path).splitlines()[-1]
    assert "trained on different devices: 2 on cpu (x86_64), 2 on cuda (NVIDIA H100 80GB HBM3)" in note
    one = tmp_path / "one"
    store = Store(one / "store")
    for method in ("softrec", "csrec-m"):
        write_trial(store, "lastfm", "gru4rec", method, {"beta": 0.5}, 0, "search", (2, 2), device=gpu)
    assert "different devices" not in comparison_table(one)


def test_power_gives_the_seeds_a_difference_needs(tmp_path, capsys):
    """`csrec power DIR` on five seeds a method: each cell's difference and seed sds are those of the
    runs' means, and its seeds needed is the closed form's count (normal approximation, plus the
    t distribution's one or two) for the observed difference and sds."""
    import launch

    store = Store(tmp_path / "store")
    for seed in range(5):
        for method, gains in (("softrec", (2, 2 + seed % 2)), ("csrec-m", (3, 3 + seed % 3))):
            write_trial(store, "lastfm", "gru4rec", method, {"beta": 0.5}, seed, "search" if seed == 0 else "seeds", gains)
    assert launch.main(["power", str(tmp_path), "--format", "csv", "--metric", "NDCG@10"]) == 0
    row = pd.read_csv(io.StringIO(capsys.readouterr().out)).iloc[0]
    collection = collect(tmp_path)
    chosen = select(collection)
    means = {m: np.array([per_user_metric(collection.per_user(k), "ndcg@10").mean()
                          for k in chosen[("lastfm", "gru4rec", m)].keys]) for m in ("csrec-m", "softrec")}
    difference = means["csrec-m"].mean() - means["softrec"].mean()
    sd_a, sd_b = means["csrec-m"].std(ddof=1), means["softrec"].std(ddof=1)
    assert (row["n_seeds"], row["n_seeds_versus"]) == (5, 5)
    assert (row["mean_difference"], row["sd"], row["sd_versus"]) == pytest.approx((difference, sd_a, sd_b), rel=1e-5)
    normal = (stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) ** 2 * (sd_a ** 2 + sd_b ** 2) / difference ** 2
    assert max(4, np.ceil(normal)) <= row["seeds_needed"] <= max(4, np.ceil(normal) + 2)
    exact = stats.permutation_test((means["csrec-m"], means["softrec"]), lambda x, y: abs(np.mean(x) - np.mean(y)),
                                   permutation_type="independent", alternative="greater", n_resamples=np.inf).pvalue
    assert row["p_value"] == pytest.approx(exact)
    assert launch.main(["power", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    line = next(line for line in text.splitlines() if "CSRec-M" in line)
    assert [c.strip() for c in line.split("|")][5] == "5 / 5" and line.split("|")[-2].strip() == str(row["seeds_needed"])
    assert "seeds needed" in text and "80% power at two-sided 0.05" in text


def test_the_legend_names_s3recs_finetuning_objective(tmp_path):
    store = Store(tmp_path / "store")
    write_trial(store, "beauty", "sasrec", "base", {}, 0, "search", (2, 2))
    assert "S3Rec fine-tuned" not in comparison_table(tmp_path, versus="base")
    write_trial(store, "beauty", "sasrec", "s3rec", {}, 0, "search", (3, 3), finetuning="bce")
    note = comparison_table(tmp_path, versus="base").splitlines()[-1]
    assert "S3Rec fine-tuned with bce (the authors' pointwise BCE with one negative outside the user's sequence)" in note
