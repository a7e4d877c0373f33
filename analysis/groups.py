"""Robustness studies from result files: user groups, input length, and one setting varied across runs.

- Popular- vs niche-type users (paper Fig. 1 and 3): the real items are split 20% / 80% by training
  frequency (`popular_items`), and each evaluation user (a sequence) is "popular" or "niche" by its
  test target (`user_groups`); `group_metrics` gives each selected cell's test metric per group.
- Input length (Fig. 4a): `by_input_length` bins the users by the number of real items in their input.
- A setting varied across experiment directories (or data sets of one): sparsity through the data's
  `user_fraction` (Fig. 4b), the number of teachers m (Fig. 5), the sub-sampling ratio p (Fig. 6),
  CSRec-T's noise-matrix term (Fig. 7): `setting_study` reads the value from the configs the runner
  stored with the models (store/models/<key>/config.json), or takes one label per directory.

Every number is a test metric of the configuration chosen on validation (analysis.collect.select),
per user averaged over the cell's runs (seeds) first, then over the users of a group or bin.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from analysis.collect import Collection, Selected, cell_numbers, collect, per_user_metric, select
from analysis.significance import mean_over_runs
from csrec.errors import CSRecError

POPULAR_SHARE = 0.2  # paper Fig. 1: "the items are divided into two bins, 20% and 80%"
GROUPS = ("popular", "niche")
METRICS = ("recall@10", "ndcg@10")


def popular_items(item_train_counts, share: float = POPULAR_SHARE) -> np.ndarray:
    """The popular items (sorted ids): the top `share` of the real items by training frequency.

    Rule: index 0 of `item_train_counts` is padding and never an item; the real items 1..n are ordered
    by training count, highest first, ties by the smaller id (ids follow first appearance in the file,
    so the item seen first wins), and the first round(share * n) (half up, at least one) are popular.
    All the others, items never seen in training included, are niche.
    """
    counts = np.asarray(item_train_counts)
    if counts.ndim != 1 or len(counts) < 2:
        raise CSRecError("item_train_counts must be a list with the padding entry 0 and at least one item "
                         "(datasets/<name>.json as the runner writes it)")
    if not np.issubdtype(counts.dtype, np.integer) or (counts < 0).any():
        raise CSRecError("item_train_counts must be non-negative integers (training interactions per item)")
    if not 0 < share < 1:
        raise CSRecError(f"share of popular items must lie in (0, 1), got {share}")
    real = counts[1:]  # [n]
    n_popular = max(1, int(np.floor(share * len(real) + 0.5)))
    ids = np.arange(1, len(real) + 1)
    order = np.lexsort((ids, -real))  # last key first: count descending, then id ascending
    return np.sort(ids[order[:n_popular]])


def user_groups(per_user: pd.DataFrame, popular, split: str = "test") -> pd.Series:
    """"popular" or "niche" per user of `split` by its target item, indexed by sequence."""
    rows = per_user[per_user["split"] == split]
    targets = rows["target"].to_numpy()
    if (targets < 1).any():
        raise CSRecError("a target item id is below 1 (0 is padding); per_user.parquet is damaged")
    labels = np.where(np.isin(targets, np.asarray(popular)), "popular", "niche")
    return pd.Series(labels, index=pd.Index(rows["sequence"].to_numpy(), name="sequence"), name="group")


def length_bins(lengths, bins: int | Sequence[int] = 4) -> tuple[np.ndarray, list[str]]:
    """Bin index per input length, and each bin's label ("1-5", or "19" for a single length).

    bins: an int asks for at most that many equal-frequency bins: the cut points are the lengths at
    the k / bins quantiles (numpy's "lower" method), repeated cut points merged, so the users of one
    length always share a bin. A list gives increasing inclusive upper bounds; lengths above the
    last one form one more bin.
    """
    lengths = np.asarray(lengths, dtype=np.int64)  # [N]
    if len(lengths) == 0:
        raise CSRecError("no users to bin by input length")
    if isinstance(bins, (int, np.integer)):
        if bins < 1:
            raise CSRecError(f"bins must be >= 1, got {bins}")
        cuts = np.quantile(lengths, np.arange(1, bins) / bins, method="lower")
        uppers = np.unique(np.append(cuts, lengths.max()).astype(np.int64))
    else:
        uppers = np.asarray(list(bins), dtype=np.int64)
        if len(uppers) == 0 or (np.diff(uppers) <= 0).any():
            raise CSRecError(f"length bins must be increasing upper bounds, got {list(bins)}")
        if lengths.max() > uppers[-1]:
            uppers = np.append(uppers, lengths.max())
    lows = np.concatenate([[min(lengths.min(), uppers[0])], uppers[:-1] + 1])
    labels = [f"{lo}" if lo == hi else f"{lo}-{hi}" for lo, hi in zip(lows, uppers)]
    return np.searchsorted(uppers, lengths, side="left"), labels


class _Runs:
    """The per_user frames of the runs behind selected cells, read once each."""

    def __init__(self, collection: Collection, ties: str = "expected"):
        self.collection, self.frames, self.ties = collection, {}, ties

    def frames_of(self, sel: Selected) -> list[pd.DataFrame]:
        for key in sel.keys:
            if key not in self.frames:
                self.frames[key] = self.collection.per_user(key)
        return [self.frames[key] for key in sel.keys]

    def per_run(self, sel: Selected, metric: str) -> list[pd.Series]:
        """Per-user test `metric` of each of the cell's runs, indexed by sequence."""
        return [per_user_metric(frame, metric, ties=self.ties) for frame in self.frames_of(sel)]

    def metric(self, sel: Selected, metric: str) -> pd.Series:
        """Per-user test `metric` averaged over the cell's runs, indexed by sequence."""
        return mean_over_runs(self.per_run(sel, metric))

    def spread(self, sel: Selected, metric: str, labels: pd.Series, names) -> dict:
        """name -> the sample sd (ddof 1) over the cell's runs of each run's mean over the users
        labelled `name` (the seed error bar of a group or bin); NaN with one run."""
        per_run = [_means(values, labels, names) for values in self.per_run(sel, metric)]
        return {name: float(np.std([run[name][0] for run in per_run], ddof=1)) if len(per_run) > 1 else np.nan
                for name in names}


def _chosen(collection: Collection, selection_metric: str, cells, exclude_search_run: bool = False
            ) -> dict[tuple, Selected]:
    chosen = select(collection, selection_metric, exclude_search_run)
    wanted = None if cells is None else {tuple(c) for c in cells}
    return {c: s for c, s in chosen.items() if s.keys and (wanted is None or c in wanted)}


def _means(values: pd.Series, labels: pd.Series, names) -> dict:
    """name -> (mean of `values` over the users labelled `name`, their number); "all" is every user.

    Both series are indexed by sequence; only the users in both count. The mean is NaN for none."""
    joined = pd.concat([values.rename("value"), labels.rename("label")], axis=1, join="inner")
    out = {}
    for name in names:
        chosen = joined["value"] if name == "all" else joined.loc[joined["label"] == name, "value"]
        out[name] = (float(chosen.mean()) if len(chosen) else np.nan, len(chosen))
    return out


def _cell_row(cell: tuple, sel: Selected) -> dict:
    return {"dataset": cell[0], "model": cell[1], "method": cell[2], "config": sel.config, "n_runs": len(sel.keys)}


GROUP_COLUMNS = ["dataset", "model", "method", "config", "n_runs", "group", "metric", "value", "std", "n_users"]


def group_metrics(collection: Collection, metrics: Sequence[str] = METRICS, share: float = POPULAR_SHARE,
                  selection_metric: str = "ndcg@10", cells=None, ties: str = "expected",
                  exclude_search_run: bool = False) -> pd.DataFrame:
    """Test `metrics` of popular- and niche-type users (and of "all") per selected cell (Fig. 1, 3).

    The items come from datasets/<name>.json (training counts); `cells` limits the (dataset, model,
    method) cells (default: every selected cell). value is a fraction; NaN for an empty group. std:
    the sample sd over the cell's runs (seeds) of each run's value for the group; NaN with one run.
    ties and exclude_search_run: as Table 2's numbers (analysis.tables.build_table).
    """
    runs, rows, popular = _Runs(collection, ties), [], {}
    for cell, sel in _chosen(collection, selection_metric, cells, exclude_search_run).items():
        if cell[0] not in popular:
            popular[cell[0]] = popular_items(collection.dataset_info(cell[0])["item_train_counts"], share)
        groups = user_groups(runs.frames_of(sel)[0], popular[cell[0]])
        for metric in metrics:
            spread = runs.spread(sel, metric, groups, (*GROUPS, "all"))
            for group, (value, n_users) in _means(runs.metric(sel, metric), groups, (*GROUPS, "all")).items():
                rows.append(_cell_row(cell, sel) | {"group": group, "metric": metric, "value": value,
                                                    "std": spread[group], "n_users": n_users})
    return pd.DataFrame(rows, columns=GROUP_COLUMNS)


LENGTH_COLUMNS = ["dataset", "model", "method", "config", "n_runs", "bin", "bin_index", "metric", "value", "std",
                  "n_users"]


def by_input_length(collection: Collection, bins: int | Sequence[int] = 4, metrics: Sequence[str] = METRICS,
                    selection_metric: str = "ndcg@10", cells=None, ties: str = "expected",
                    exclude_search_run: bool = False) -> pd.DataFrame:
    """Test `metrics` per input-length bin per selected cell (Fig. 4a); see `length_bins`.

    The bins of a data set are cut once, on the test users of its first selected run, so every
    method of the data set is measured on the same bins (input lengths are a property of the data).
    ties and exclude_search_run: as Table 2's numbers (analysis.tables.build_table).
    """
    runs, rows, binned = _Runs(collection, ties), [], {}
    for cell, sel in _chosen(collection, selection_metric, cells, exclude_search_run).items():
        test = runs.frames_of(sel)[0].query("split == 'test'")
        if cell[0] not in binned:
            index, labels = length_bins(test["input_length"].to_numpy(), bins)
            binned[cell[0]] = (pd.Series(index, index=test["sequence"].to_numpy()), labels)
        index, labels = binned[cell[0]]
        for metric in metrics:
            means = _means(runs.metric(sel, metric), index, range(len(labels)))
            spread = runs.spread(sel, metric, index, range(len(labels)))
            for i, (value, n_users) in means.items():
                rows.append(_cell_row(cell, sel) | {"bin": labels[i], "bin_index": i, "metric": metric, "value": value,
                                                    "std": spread[i], "n_users": n_users})
    return pd.DataFrame(rows, columns=LENGTH_COLUMNS)


# Which methods a setting changes: a method outside gets value NaN in `setting_study` (a reference line).
SETTINGS = {
    "m": ("csrec-m", "csrec-d"),  # number of teachers (Fig. 5)
    "subsample_ratio": ("csrec-d", "csrec-t"),  # p of the data-level teachers (Fig. 6)
    "noise_term": ("csrec-t",),  # the -sum_j log h(i, j) P_g1(j | s) term of Eq. 12 (Fig. 7)
    "user_fraction": ("base", "softrec", "csrec-m", "csrec-d", "csrec-t"),  # sparsity (Fig. 4b)
}
STUDY_COLUMNS = ["directory", "setting", "value", "dataset", "model", "method", "config", "n_runs", "metric",
                 "mean", "std", "sparsity"]


def setting_study(directories: Sequence[str | Path], setting: str, labels: Sequence[float] | None = None,
                  metrics: Sequence[str] = METRICS, selection_metric: str = "ndcg@10") -> pd.DataFrame:
    """Test metrics of the selected cells of several experiments that differ in one `setting`.

    One row per (directory, selected cell, metric): mean and std over the cell's runs, and `value`,
    the setting there: labels[i] for directory i when given, else read from the stored job configs
    (m: the student's teachers; subsample_ratio: its data-level teachers' p; noise_term: CSRec-T's
    main teacher; user_fraction: the data config, 1.0 when absent). value is NaN for a method the
    setting does not change (Base for m, say); plots draw those as reference lines. sparsity is
    1 - training interactions / (sequences x items) of the cell's data set (NaN when unknown).
    """
    if setting not in SETTINGS:
        raise CSRecError(f"setting {setting!r}: use one of {', '.join(SETTINGS)}")
    if labels is not None and len(labels) != len(directories):
        raise CSRecError(f"{len(labels)} labels for {len(directories)} directories; give one label per directory")
    rows = []
    for i, directory in enumerate(directories):
        collection = collect(directory)
        chosen = _chosen(collection, selection_metric, None)
        sparsity = {d: _sparsity(collection, d) for d in {cell[0] for cell in chosen}}
        for metric in metrics:
            numbers = cell_numbers(collection, chosen, metric).set_index(["dataset", "model", "method"])
            for cell, sel in chosen.items():
                if cell[2] not in SETTINGS[setting]:
                    value = np.nan
                elif labels is not None:
                    value = float(labels[i])
                else:
                    value = _read_setting(collection.directory, sel, setting)
                row = numbers.loc[cell]
                rows.append({"directory": str(collection.directory), "setting": setting, "value": value,
                             "dataset": cell[0], "model": cell[1], "method": cell[2], "config": sel.config,
                             "n_runs": int(row["n_runs"]), "metric": metric, "mean": row["mean"], "std": row["std"],
                             "sparsity": sparsity[cell[0]]})
    return pd.DataFrame(rows, columns=STUDY_COLUMNS)


def _sparsity(collection: Collection, dataset: str) -> float:
    try:
        info = collection.dataset_info(dataset)
    except CSRecError:
        return np.nan
    if "n_sequences" not in info:
        return np.nan
    interactions = float(np.sum(info["item_train_counts"]))
    return 1.0 - interactions / (info["n_sequences"] * info["n_items"])


def _model_config(directory: Path, key: str) -> dict:
    path = directory / "store" / "models" / key / "config.json"
    if not path.is_file():
        raise CSRecError(f"{path} is missing, so the setting of trial {key} cannot be read; "
                         "give one label per directory instead")
    return json.loads(path.read_text())


def _read_setting(directory: Path, sel: Selected, setting: str) -> float:
    """The setting's value in the stored configs of the cell's runs (they must agree)."""
    values = set()
    for key in sel.keys:
        config = _model_config(directory, key)
        if setting == "user_fraction":
            values.add(float(config["data"].get("user_fraction", 1.0)))
        elif setting == "m":
            values.add(float(len(config["teachers"])))
        elif setting == "noise_term":  # csrec-t: the student learns from its main teacher g1 alone
            values.add(float(_model_config(directory, config["teachers"][0])["options"]["noise_term"]))
        else:  # p: csrec-d's teachers are data-level; csrec-t's main teacher has one, its side teacher
            teachers = [_model_config(directory, t) for t in config["teachers"]]
            if sel.cell[2] == "csrec-t":
                teachers = [_model_config(directory, t) for t in teachers[0]["teachers"]]
            values |= {float(t.get("subsample", {}).get("ratio", 1.0)) for t in teachers}
    if len(values) != 1:
        raise CSRecError(f"{setting} differs between the runs of {'/'.join(sel.cell)} in {directory}: "
                         f"{sorted(values)}; give one label per directory")
    return values.pop()
