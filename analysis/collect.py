"""Every finished trial of an experiment directory as one tidy table, and the best configuration per cell.

Reads files only (docs/FORMATS.md): `store/trials/<key>/{result.json, per_user.parquet, meta.json}`,
`plan.json` for the cells the experiment is meant to fill, `datasets/<name>.json`. It works while an
experiment runs: a trial directory without a valid meta.json (or whose files do not match their
checksums) is unfinished and listed as such, never read and never removed (that is the runner's job).

A cell is (dataset, model, method); a configuration is one grid point of a cell, named by its
hyperparameters ("beta=0.5 temperature=3.0"; Base has none and is "default"). `per_user_metric`
turns a run's per_user.parquet into per-user metric values (a run's number is their mean).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from csrec.errors import CSRecError
from csrec.metrics import TIES, metric_values, parse_metric
from csrec.storage import check_reachable, location
from csrec.store import artifact_problem, fetch

TRIALS = Path("store") / "trials"
FAILED = "failed.json"  # the runner's record of trials that failed (csrec.runner.experiment.FAILED_FILE)
STAGES = ("search", "seeds")
SPLITS = ("valid", "test")
ID_COLUMNS = ["key", "dataset", "model", "method", "config", "seed", "stage"]


def config_label(params: dict) -> str:
    """A configuration's name: its non-null hyperparameters in name order, exactly (repr of floats)."""
    items = [(k, v) for k, v in sorted(params.items()) if v is not None]
    return " ".join(f"{k}={float(v)!r}" for k, v in items) if items else "default"


RATING_THRESHOLD = 4.0  # paper Eq. 16: a target counts as relevant when rated >= 4


def per_user_metric(per_user: pd.DataFrame, metric: str, split: str = "test",
                    rating_threshold: float = RATING_THRESHOLD, ties: str = "expected") -> pd.Series:
    """Per-user values of `metric` on `split`, indexed by sequence (rows of per_user.parquet).

    From each row's rank and ties under the tie rule `ties` (csrec.metrics; a file without a ties
    column reads as no ties). The "+" versions keep only users whose target rating is >=
    rating_threshold (Eq. 16). A run's metric is the mean of these values.
    """
    name, _ = parse_metric(metric)
    rows = per_user[per_user["split"] == split]
    if rows["sequence"].duplicated().any():
        raise CSRecError(f"per_user rows of split {split!r} repeat a sequence; the file is not one run's output")
    if name.endswith("+"):
        rows = rows[rows["rating"].to_numpy(dtype=float) >= rating_threshold]  # NaN ratings never qualify
    index = pd.Index(rows["sequence"].to_numpy(), name="sequence")
    if rows.empty:
        return pd.Series([], index=index, name=metric, dtype=np.float64)
    tie_counts = rows["ties"].to_numpy() if "ties" in rows.columns else None
    return pd.Series(metric_values(metric, rows["rank"].to_numpy(), tie_counts, ties), index=index, name=metric)


@dataclass(frozen=True)
class Collection:
    """What an experiment directory holds now.

    results: one row per (finished trial, split, metric): key, dataset, model, method, config, one
        column per hyperparameter (NaN where unset), seed, stage, split, metric, value (a fraction).
    trials: one row per finished trial (the same identifying columns, its best epoch, no metrics, and
        stopped_epochs: the epochs it trained when the scheduler stopped it early, NaN when it trained to
        the end; a stopped search point is finished, its record its best epoch before the stop).
    unfinished: one row per trial directory that is not (yet) a finished trial: key, reason, and the
        cell when its result.json could be read.
    expected_cells: the cells the plan asks for, in the plan's order (the found cells without a plan).
    incomplete: cell -> why its selection misses runs: a planned trial (plan.json) or one the runner
        recorded as failed (failed.json) without a finished record, or a damaged record. The table
        marks these cells: the full grid might select otherwise.
    """

    directory: Path
    results: pd.DataFrame
    trials: pd.DataFrame
    unfinished: pd.DataFrame
    expected_cells: tuple[tuple[str, str, str], ...]
    _per_user: dict = field(default_factory=dict, repr=False, compare=False)  # key -> frame, read once
    incomplete: dict = field(default_factory=dict)  # cell -> tuple of reasons
    scheduler: dict = field(default_factory=dict)  # plan.json's: kind (fifo | asha), its settings, max_epochs, rungs

    @property
    def early_stopping(self) -> bool:
        return self.scheduler.get("kind") == "asha"

    @property
    def stopped(self) -> pd.DataFrame:
        """The finished trials the scheduler stopped early (search points only)."""
        return self.trials[self.trials["stopped_epochs"].notna()]

    @property
    def missing_cells(self) -> list[tuple[str, str, str]]:
        """Cells of the plan with no finished trial at all."""
        done = set(self.trials[["dataset", "model", "method"]].itertuples(index=False, name=None))
        return [cell for cell in self.expected_cells if cell not in done]

    def per_user(self, key: str) -> pd.DataFrame:
        """The per_user.parquet rows of finished trial `key` (both splits); read once, then kept."""
        if key not in self._per_user:
            if key not in set(self.trials["key"]):
                raise CSRecError(f"trial {key} is not a finished trial of {self.directory}; see Collection.trials")
            # fetch: a record on object storage is copied to this machine once, its checksums checked
            self._per_user[key] = pd.read_parquet(fetch(self.directory / TRIALS / key) / "per_user.parquet")
        return self._per_user[key]

    def has_ties(self, key: str) -> bool:
        """Whether trial `key`'s per-user file records ties (files written before did not: docs/FORMATS.md)."""
        return "ties" in self.per_user(key).columns

    def dataset_info(self, name: str) -> dict:
        """datasets/<name>.json: n_items and item_train_counts (item popularity for user groups)."""
        path = self.directory / "datasets" / f"{name}.json"
        if not path.is_file():
            raise CSRecError(f"{path} does not exist; the runner writes it when the data set is first loaded")
        return read_json(path, "`launch.py resume DIR` writes it again")

    def report(self) -> str:
        """What is there and what is missing, in a few lines (for a running or partial experiment)."""
        lines = [f"{self.directory}: {len(self.trials)} finished trials, {len(self.unfinished)} unfinished"]
        for row in self.unfinished.itertuples(index=False):
            where = f" ({row.dataset}/{row.model}/{row.method})" if isinstance(row.dataset, str) else ""
            lines.append(f"  unfinished {row.key}{where}: {row.reason}")
        missing = self.missing_cells
        lines.append(f"cells with no finished trial: {len(missing)} of {len(self.expected_cells)}")
        lines += [f"  {'/'.join(cell)}" for cell in missing]
        if self.early_stopping:
            lines.append(f"search runs stopped early by ASHA (finished, not failed; each selected on with its best epoch "
                         f"before the stop): {len(self.stopped)}")
            lines += [f"  {row.dataset}/{row.model}/{row.method} {row.config} seed={row.seed}: after epoch "
                      f"{int(row.stopped_epochs)} of {self.scheduler.get('max_epochs', '?')}"
                      for row in self.stopped.itertuples(index=False)]
        lines.append(f"cells missing some of their planned runs (marked ‡ in the tables where they have a number, "
                     f"— where none finished): {len(self.incomplete)}")
        lines += [f"  {'/'.join(cell)}: {why}" for cell, reasons in self.incomplete.items() for why in reasons]
        return "\n".join(lines)


def collect(directory: str | Path) -> Collection:
    """Read every trial directory of experiment `directory` (see the module docstring)."""
    directory = location(directory, "experiment directory")
    check_reachable(directory, write=False, what="experiment directory")
    if not directory.is_dir():
        what = "is a file, not a folder" if directory.exists() else "does not exist"
        raise CSRecError(f"experiment directory {directory} {what}; give the `storage` folder of a spec")
    folder = directory / TRIALS
    records, unfinished = [], []
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if not path.is_dir() or path.name == "work":
            continue
        problem = _problem(path)
        record = _read_result(path)
        if problem is None and record is None:
            problem = "result.json is unreadable"
        if problem is None:
            records.append(record | {"key": path.name})
        else:
            cell = {k: record.get(k) for k in ("dataset", "model", "method")} if record else {}
            unfinished.append({"key": path.name, "reason": problem} | cell)
    unfinished_frame = pd.DataFrame(unfinished, columns=["key", "reason", "dataset", "model", "method"])
    results, trials = _tidy(records)
    plan = read_json(directory / "plan.json", "`launch.py resume DIR` writes it again")
    return Collection(directory, results, trials, unfinished_frame, _expected_cells(plan, trials),
                      incomplete=_incomplete(directory, plan, trials, unfinished), scheduler=plan.get("scheduler", {}))


def read_json(path: Path, repair: str) -> dict:
    """A runner file's JSON object; {} when absent; a damaged one is an error naming it."""
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        value = None
    if isinstance(value, dict) and path.name == "plan.json" and not all(
            isinstance(rows, list) and all(isinstance(row, dict) for row in rows)
            for rows in (value.get("teachers", []), value.get("trials", []))):
        value = None  # valid JSON whose rows are not objects: as damaged as a cut file (issue 24)
    if not isinstance(value, dict):
        raise CSRecError(f"{path} is damaged (not a JSON object); {repair}")
    return value


def _incomplete(directory: Path, plan: dict, trials: pd.DataFrame, unfinished: list[dict]) -> dict:
    """Collection.incomplete: trial key -> reason, grouped by cell (a key listed once)."""
    finished = set(trials["key"])
    why: dict[str, tuple[tuple, str]] = {}
    for row in plan.get("trials", []):
        if "key" in row and row["key"] not in finished:
            label = f"{config_label(row.get('params', {}))} seed={row.get('seed')}"
            why[row["key"]] = ((row["dataset"], row["model"], row["method"]), f"{label}: no finished record")
    failed = read_json(directory / FAILED, "`launch.py resume DIR` writes it again")  # csrec.runner.experiment
    for key, entry in failed.items():
        if key not in finished and isinstance(entry, dict):
            cell = (entry.get("dataset"), entry.get("model"), entry.get("method"))
            why[key] = (cell, f"{entry.get('label', key)}: failed ({entry.get('error', '?')})")
    for row in unfinished:
        if "damaged" in row["reason"] and isinstance(row.get("dataset"), str):
            why[row["key"]] = ((row["dataset"], row["model"], row["method"]), f"record {row['key']}: {row['reason']}")
    cells: dict[tuple, tuple[str, ...]] = {}
    for cell, reason in why.values():
        cells[cell] = cells.get(cell, ()) + (reason,)
    return cells


def _problem(path: Path) -> str | None:
    """Why `path` is not a finished trial, or None; reads only (store.Store.verify would delete it)."""
    if path.name.startswith("."):
        return "being written (temporary directory)"
    problem = artifact_problem(path)
    if problem == "no meta.json":
        return "no meta.json (unfinished)"
    if problem is not None:
        return problem + (" (damaged)" if "checksum" in problem else "")
    if not (path / "per_user.parquet").is_file():
        return "per_user.parquet is missing"
    return None


def _read_result(path: Path) -> dict | None:
    try:
        return json.loads((path / "result.json").read_text())
    except (OSError, ValueError):
        return None


def _tidy(records: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    param_names = sorted({name for r in records for name in r.get("params", {})})
    trial_rows, rows = [], []
    for r in records:
        params = r.get("params", {})
        ident = {"key": r["key"], "dataset": r["dataset"], "model": r["model"], "method": r["method"],
                 "config": config_label(params) + (f" finetuning={r['finetuning']}" if r.get("finetuning") else ""),
                 "seed": int(r["seed"]), "stage": r["stage"]}
        hyper = {name: np.nan if params.get(name) is None else float(params[name]) for name in param_names}
        stopped = r.get("stopped", {}).get("epochs", np.nan)  # csrec.runner.trials.record_stopped
        device = r.get("device") or {}  # csrec.train.device_record; records written before it have none
        where = f"{device['kind']} ({device.get('name', 'unknown')})" if device.get("kind") else None
        trial_rows.append(ident | hyper | {"best_epoch": r.get("best_epoch"), "stopped_epochs": stopped,
                                           "device": where})
        for split in SPLITS:
            for metric, value in sorted(r.get(split, {}).items()):
                rows.append(ident | hyper | {"split": split, "metric": metric,
                                             "value": np.nan if value is None else float(value)})
    columns = ID_COLUMNS + param_names
    trials = pd.DataFrame(trial_rows, columns=columns + ["best_epoch", "stopped_epochs", "device"])
    results = pd.DataFrame(rows, columns=columns + ["split", "metric", "value"])
    return results, trials


def _expected_cells(plan: dict, trials: pd.DataFrame) -> tuple[tuple[str, str, str], ...]:
    """The plan's cells (grid trials, Base runs and TPE cells) in the plan's order."""
    cells: dict[tuple[str, str, str], None] = {}
    for row in plan.get("trials", []):
        cells.setdefault((row["dataset"], row["model"], row["method"]), None)
    for row in plan.get("tpe_cells", []):
        cells.setdefault(tuple(row[:3]), None)
    for cell in trials[["dataset", "model", "method"]].itertuples(index=False, name=None):
        cells.setdefault(cell, None)  # a trial outside the plan (an older spec) still counts
    return tuple(cells)


@dataclass(frozen=True)
class Selected:
    """The chosen configuration of one cell and the runs its test numbers come from."""

    cell: tuple[str, str, str]
    config: str
    valid_score: float  # mean selection metric over the config's search trials
    source: str  # SOURCES: which runs `keys` holds
    keys: tuple[str, ...]  # the runs reported, by trial key, in seed order
    seeds: tuple[int, ...] = ()  # the seed of each run in `keys`
    n_configs: int = 1  # configurations of the cell the choice was made among
    left_out: tuple[int, ...] = ()  # seeds of search runs left out (exclude_search_run)


# "seeds": the search run(s) and the reruns; "search": no reruns yet; "reruns": the reruns only, the
# search run that won left out; "none": the search run left out and no rerun to report.
SOURCES = ("seeds", "search", "reruns", "none")


def select(collection: Collection, metric: str = "ndcg@10",
           exclude_search_run: bool = False) -> dict[tuple[str, str, str], Selected]:
    """Per cell, the configuration best on validation `metric` among its "search" trials.

    Never looks at test: only split == "valid" rows of stage "search" enter the choice. A config
    with several search seeds is scored by its mean. Ties go to the config whose name sorts first.
    The reported runs are every finished run of that config: its search trial(s) and its reruns
    on the other seeds (Selected.source is "seeds" when there are reruns, else "search").
    With `exclude_search_run` the search trial(s) are left out: a run that won a selection among
    n_configs is biased upwards on test (a little: selection is on validation); the reruns are not
    (source "reruns", or "none" when there is no rerun).
    """
    results = collection.results
    if len(results) and metric not in set(results.loc[results["split"] == "valid", "metric"]):
        known = ", ".join(sorted(set(results["metric"])))
        raise CSRecError(f"selection metric {metric!r} is not in the results; use one of: {known}")
    valid = results[(results["split"] == "valid") & (results["stage"] == "search") & (results["metric"] == metric)]
    scores = valid.groupby(["dataset", "model", "method", "config"], sort=True)["value"].mean()
    chosen: dict[tuple[str, str, str], Selected] = {}
    trials = collection.trials
    for (dataset, model, method), group in scores.groupby(level=[0, 1, 2], sort=True):
        group = group.dropna()
        if group.empty:
            continue
        config = group.idxmax()[3]  # first maximum in sorted config order
        runs = trials[(trials["dataset"] == dataset) & (trials["model"] == model)
                      & (trials["method"] == method) & (trials["config"] == config)]
        reruns = (runs["stage"] == "seeds").any()
        left_out = ()
        if exclude_search_run:
            left_out = tuple(sorted(set(runs.loc[runs["stage"] == "search", "seed"].astype(int))))
            runs = runs[runs["stage"] == "seeds"]
            source = "reruns" if reruns else "none"
        else:
            source = "seeds" if reruns else "search"
        runs = runs.sort_values(["seed", "key"]).drop_duplicates("seed")
        chosen[(dataset, model, method)] = Selected((dataset, model, method), config, float(group.max()), source,
                                                    tuple(runs["key"]), tuple(int(s) for s in runs["seed"]),
                                                    len(group), left_out)
    return chosen


def cell_numbers(collection: Collection, chosen: dict[tuple[str, str, str], Selected],
                 metric: str, ties: str = "expected") -> pd.DataFrame:
    """Per selected cell: mean and sample std (ddof 1; NaN for one run) of test `metric` over its runs.

    Each run's number is the mean of its per-user test values (per_user.parquet) under the tie rule
    `ties` (csrec.metrics), so that the table and its tests use one rule; it equals result.json's
    number under the default rule.
    """
    if ties not in TIES:
        raise CSRecError(f"ties {ties!r}: use one of {', '.join(TIES)}")
    rows = []
    for cell, sel in chosen.items():
        values = pd.Series([per_user_metric(collection.per_user(key), metric, ties=ties).mean() for key in sel.keys],
                           dtype=np.float64).dropna()
        rows.append({"dataset": cell[0], "model": cell[1], "method": cell[2], "config": sel.config,
                     "source": sel.source, "n_runs": len(values),
                     "mean": float(values.mean()) if len(values) else np.nan,
                     "std": float(values.std(ddof=1)) if len(values) > 1 else np.nan})
    return pd.DataFrame(rows, columns=["dataset", "model", "method", "config", "source", "n_runs", "mean", "std"])
