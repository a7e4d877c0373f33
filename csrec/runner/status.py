"""`launch.py status DIR`: read from files only, so it works from another shell while a run goes on."""

from __future__ import annotations

import time
from pathlib import Path

from csrec.errors import CSRecError
from csrec.jobs import MODELS
from csrec.runner.epochs import status_lines
from csrec.runner.experiment import FAILED_FILE
from csrec.runner.lock import holder
from csrec.runner.plan import SELECTION_METRIC
from csrec.runner.trials import TRIALS, best_valid_by_method
from csrec.storage import location
from csrec.store import Store, read_json


def status(directory: str | Path) -> str:
    """What is done, running and failed, read from files only (works while the driver runs)."""
    directory = location(directory, "experiment directory")
    plan_file = directory / "plan.json"
    if not plan_file.is_file():
        raise CSRecError(f"{directory}: no plan.json, so not an experiment directory (or one never started); give "
                         "the storage folder of a spec that was run")
    plan = read_json(plan_file)
    if plan is None or not all(isinstance(plan.get(part), list) and all(isinstance(row, dict) and "key" in row
                                                                         for row in plan[part])
                               for part in ("teachers", "trials")):
        raise CSRecError(f"{plan_file} is damaged (not the plan the runner writes); `launch.py resume {directory}` "
                         "writes it again")
    store = Store(directory / "store")
    models, trials = set(store.keys(MODELS)), set(store.keys(TRIALS))
    teachers = plan["teachers"]
    teachers_done = sum(t["key"] in models for t in teachers)
    search = [t for t in plan["trials"]]
    search_done = sum(t["key"] in trials for t in search)
    notes: list[str] = []
    progress = read_json(directory / "progress.json", notes.append, "the driver's progress is not known") or {}
    if not isinstance(progress.get("updated", 0), (int, float)):  # valid JSON, wrong types: as damaged as a cut file
        notes.append(f"{directory / 'progress.json'} is damaged (updated is not a time); the driver's progress is not "
                     "known")
        progress = {}
    age = time.time() - progress.get("updated", 0)
    lines = [
        f"experiment {directory}",
        f"teachers: {teachers_done} of {len(teachers)} in the store",
        f"planned trials (search + base runs): {search_done} of {len(search)} finished",
        f"all finished student trials in the store: {len(trials)}",
        f"driver: stage {progress.get('stage', '?')}, last update {age:.0f} s ago (pid {progress.get('pid', '?')})",
    ]
    lines += notes
    driver = holder(directory)
    if driver is not None:
        lines.append(f"driver holding the experiment: {driver}")
    # What the driver last wrote of running trials is news only while a driver runs: after a kill it is history.
    live = driver is not None and not driver.startswith("none:")
    epochs = progress.get("epochs") if isinstance(progress.get("epochs"), dict) else None
    failed = read_json(directory / FAILED_FILE, lines.append, "failures of earlier runs are not known") or {}
    failed = {k: v for k, v in failed.items() if k not in trials}
    if failed:
        # A resume's driver trains them again: say which of them run now, so no running trial reads as failed.
        running = set(epochs.get("running", {})) if epochs and live else set()
        lines.append(f"failed trials (no record; `launch.py resume` tries them again): {len(failed)}")
        lines += [f"  {entry.get('label', key)}: {entry.get('error', '?')}"
                  + (" (running again now)" if entry.get("label") in running else "") for key, entry in failed.items()]
    if str(progress.get("stage", "")).startswith("tpe ") and "tpe_target" in progress:
        lines.append(f"TPE search of this cell: {progress['tpe_evaluated']} of {progress['tpe_target']} distinct "
                     f"points evaluated, {progress.get('tpe_failed', 0)} failed")
    if epochs and live:
        lines += status_lines(epochs)
    elif epochs and epochs.get("running"):
        lines.append(f"no driver runs now: the stage {epochs.get('stage', '?')} stopped with "
                     f"{len(epochs.get('running', {}))} trial(s) running (`launch.py resume DIR` goes on from their "
                     "last epoch checkpoints)")
    if live and progress.get("trials_running") is not None:
        lines.append(f"trials now: {progress.get('trials_running')} running, {progress.get('trials_failed', 0)} failed")
    for method, score in sorted(best_valid_by_method(store).items()):
        lines.append(f"best valid {SELECTION_METRIC} so far, {method}: {score:.4f}")
    return "\n".join(lines)


def experiments_under(folder: Path) -> list[Path]:
    """The experiment directories (an experiment.json or spec.yaml in them) in `folder` and one level
    down (runs/NAME, runs/GROUP/NAME), sorted; what lies inside an experiment is not searched."""
    found = []
    for child in sorted(p for p in Path(folder).iterdir() if p.is_dir()):
        if _is_experiment(child):
            found.append(child)
        else:
            found += [g for g in sorted(child.iterdir()) if g.is_dir() and _is_experiment(g)]
    return found


def _is_experiment(folder: Path) -> bool:
    return (folder / "experiment.json").is_file() or (folder / "spec.yaml").is_file()


def list_lines(directories: list[Path]) -> list[str]:
    """`launch.py list`: one aligned line an experiment: name, stage, planned trials finished of all
    planned (search and Base runs; seed reruns are planned once the search ends), last update, folder."""
    rows = [("NAME", "STAGE", "TRIALS", "LAST UPDATE", "DIRECTORY")]
    for directory in directories:
        experiment = read_json(directory / "experiment.json") or {}
        progress = read_json(directory / "progress.json") or {}
        plan = read_json(directory / "plan.json") or {}
        planned = plan.get("trials") if isinstance(plan.get("trials"), list) else None
        if planned is None:
            trials = "-"
        else:
            stored = set(Store(directory / "store").keys(TRIALS))
            trials = f"{sum(t.get('key') in stored for t in planned)} of {len(planned)}"
        updated = progress.get("updated")
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(updated)) if isinstance(updated, (int, float)) else "-"
        rows.append((str(experiment.get("name") or directory.name), str(progress.get("stage", "not started")),
                     trials, when, str(directory)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1] for row in rows]
