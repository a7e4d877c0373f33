"""`launch.py status DIR`: read from files only, so it works from another shell while a run goes on."""

from __future__ import annotations

import json
import time
from pathlib import Path

from csrec.jobs import MODELS
from csrec.runner.plan import SELECTION_METRIC
from csrec.runner.trials import TRIALS, best_valid_by_method
from csrec.store import Store


def status(directory: str | Path) -> str:
    """What is done, running and failed, read from files only (works while the driver runs)."""
    directory = Path(directory)
    plan_file = directory / "plan.json"
    if not plan_file.is_file():
        return f"{directory}: no plan.json; not an experiment directory (or not started)"
    plan = json.loads(plan_file.read_text())
    store = Store(directory / "store")
    models, trials = set(store.keys(MODELS)), set(store.keys(TRIALS))
    teachers = plan["teachers"]
    teachers_done = sum(t["key"] in models for t in teachers)
    search = [t for t in plan["trials"]]
    search_done = sum(t["key"] in trials for t in search)
    progress_file = directory / "progress.json"
    progress = json.loads(progress_file.read_text()) if progress_file.is_file() else {}
    age = time.time() - progress.get("updated", 0)
    lines = [
        f"experiment {directory}",
        f"teachers: {teachers_done} of {len(teachers)} in the store",
        f"planned trials (search + base runs): {search_done} of {len(search)} finished",
        f"all finished student trials in the store: {len(trials)}",
        f"driver: stage {progress.get('stage', '?')}, last update {age:.0f} s ago (pid {progress.get('pid', '?')})",
    ]
    if str(progress.get("stage", "")).startswith("tpe ") and "tpe_target" in progress:
        lines.append(f"TPE search of this cell: {progress['tpe_evaluated']} of {progress['tpe_target']} distinct "
                     f"points evaluated, {progress.get('tpe_failed', 0)} failed")
    if progress.get("trials_running") is not None:
        lines.append(f"trials now: {progress.get('trials_running')} running, {progress.get('trials_failed', 0)} failed")
    for method, score in sorted(best_valid_by_method(store).items()):
        lines.append(f"best valid {SELECTION_METRIC} so far, {method}: {score:.4f}")
    return "\n".join(lines)
