"""Running an experiment spec: plan, teachers, student grid, seed reruns, table.

Ray is imported here only (and lazily): `local=True` runs the same plan in this process.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from csrec import tracking
from csrec.errors import CSRecError
from csrec.jobs import MODELS
from csrec.runner.experiment import (SPEC_FILE, Experiment, all_teachers, execute, failed_trials_error, missing,
                                     reuse_stores)
from csrec.runner.lock import experiment_lock
from csrec.runner.plan import make_plan
from csrec.runner.trials import trial_result
from csrec.store import read_json, write_json_atomic

__all__ = ["SPEC_FILE", "Experiment", "execute", "print_plan", "run_experiment"]


def run_experiment(spec_path: str | Path, dry_run: bool = False, address: str | None = None,
                   local: bool = False, log=print, table: bool = True, directory: str | Path | None = None,
                   allow_failed: bool = False, overrides: tuple[str, ...] = (), table_log=None) -> int:
    """Run (or go on with) the experiment of `spec_path`; `directory` replaces its storage (resume).
    `overrides`: `KEY=VALUE` changes to the spec (`run --set`; csrec.config.apply_overrides), kept in
    the experiment's spec.yaml (resolved) and experiment.json (as given). `table_log` prints the
    table (default: `log`; `-q` drops the log lines but not the table).

    Raises FailedTrials when trials failed (after the table, which marks their cells), unless
    `allow_failed`; a second driver on the same experiment is refused (csrec.runner.lock)."""
    experiment = Experiment.open(spec_path, directory, log, overrides=tuple(overrides))
    tracking.check(experiment.spec.tracking)  # a missing package stops the run before anything trains
    if dry_run:
        print_plan(experiment, log)
        return 0
    quiet_ray()
    if local:
        from csrec.runner.local_backend import LocalBackend

        backend = LocalBackend(log)
    else:
        from csrec.runner.ray_backend import RayBackend

        backend = RayBackend(address, log)
    backend.check(experiment.spec)  # before anything is written: a request no node holds waits forever
    folder = experiment.directory
    made = [p for p in (folder, *folder.parents) if not p.exists()] if isinstance(folder, Path) else []
    folder.mkdir(parents=True, exist_ok=True)  # nothing to make on object storage
    try:
        backend.check_nodes(experiment)  # a cluster's nodes see the folder and the data files
    except CSRecError:
        for path in made:  # refused: the folders made for it go again (the deepest first)
            path.rmdir()
        raise
    with experiment_lock(experiment.directory, log):
        recorded = read_json(experiment.directory / "experiment.json") or {}
        experiment.initialise(spec_path)
        _record_overrides(experiment, list(overrides) or recorded.get("overrides", []))
        execute(experiment, backend, log)
        failures = experiment.failures()
    if table:
        from analysis import comparison_table

        (table_log or log)(comparison_table(experiment.directory))
    if failures and not allow_failed:
        raise failed_trials_error(experiment, failures)
    if failures:
        log(f"--allow-failed: {len(failures)} trial(s) failed and the table is selected without them (marked ‡): "
            + "; ".join(entry["label"] for entry in failures.values()))
    return 0


def _record_overrides(experiment: Experiment, overrides: list[str]) -> None:
    """experiment.json's "overrides": the `--set` changes the experiment was started with (a resume
    keeps them: its spec.yaml holds their values already)."""
    if overrides:
        path = experiment.directory / "experiment.json"
        write_json_atomic(path, (read_json(path) or {}) | {"overrides": overrides})


# Ray's and Tune's own output that ours replaces or that a user cannot act on: the token
# authentication notice (it stays on, csrec.runner.ray_backend), Tune's restore advice on Ctrl-C
# (Tuner.restore is not how a csrec experiment resumes: `launch.py resume DIR` is, and we print it).
QUIETED_LOGGERS = ("ray._private.authentication.authentication_token_setup", "ray.tune.tune")


def quiet_ray() -> None:
    """Quiet by default: the loggers above at ERROR and Tune's configuration box off (its legacy
    reporter at the runner's verbose=0 prints nothing); CSREC_LOG_LEVEL=verbose (`-v`) keeps them all."""
    verbose = os.environ.get("CSREC_LOG_LEVEL", "").strip().lower() in ("verbose", "debug")
    for name in QUIETED_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.ERROR)
    if not verbose:
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"


def print_plan(experiment: Experiment, log=print) -> None:
    plan = make_plan(experiment.spec)
    store = experiment.store
    teachers = all_teachers(plan)
    todo = missing(teachers, store)
    reusable = {key for s in reuse_stores(experiment.spec, log) for key in s.keys(MODELS)}  # a run checks each copy
    reused = {j.key for j in todo if j.key in reusable}
    grid = plan.grid_trials
    finished = sum(trial_result(store, t) is not None for t in grid)
    in_reuse = sum(t.job.key in reusable for t in grid if trial_result(store, t) is None)
    log(f"experiment {experiment.spec.name} in {experiment.directory}")
    for note in plan.notes:
        log(note)
    log(f"teachers and Base runs: {len(teachers)} ({len(teachers) - len(todo)} in the store, "
        f"{len(reused)} to copy from a reused experiment, {len(todo) - len(reused)} to train)")
    for job in teachers:
        state = "done " if job not in todo else "reuse" if job.key in reused else "todo "
        log(f"  {state} {job.key}  {job.describe()}")
    log(f"student search trials: {len(grid)} ({finished} finished, {in_reuse} to copy from a reused experiment, "
        f"{len(grid) - finished - in_reuse} to run)")
    log(f"scheduler of the search: {experiment.spec.scheduler.describe(experiment.spec.train.max_epochs)}")
    for cell, budget in plan.tpe_cells.items():
        log(f"TPE search of {'/'.join(cell)}: {budget} trials")
    cells = {t.cell for t in grid} | set(plan.tpe_cells)
    log(f"seed reruns after the search: {len(cells)} cells x {len(experiment.spec.seeds) - 1} seeds = "
        f"{len(cells) * (len(experiment.spec.seeds) - 1)} trials")
