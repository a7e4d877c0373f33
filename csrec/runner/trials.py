"""Running a student trial and keeping its record; choosing the best configuration per cell.

No Ray here: the local backend, Ray tasks and Tune trials all call these functions. A trial's
record (`store/trials/<key>/`: result.json and per_user.parquet, docs/FORMATS.md) is what the
analysis reads; it is written after the trained model's artifact, from it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable, Iterator

from csrec.errors import CSRecError
from csrec.jobs import MODELS, evaluate_checkpoint, read_result, train_job
from csrec.runner.plan import SELECTION_METRIC, Trial
from csrec.store import Store, artifact_problem, read_json, write_json_atomic

TRIALS = "trials"
STOPPED_FILE = "stopped.json"  # in a trial's work folder: the scheduler's decision to stop it (csrec.runner.scheduler)


def run_trial(trial: Trial, store: Store, work_dir: Path, on_epoch_end: Callable | None = None,
              curves: Path | None = None) -> dict:
    """Train the trial's student (or find it in the store) and write its record; `curves`: its
    TensorBoard folder (csrec.tensorboard.job_folder), which also gets the trial's HParams session
    (its grid values, its validation and test metrics) for TensorBoard's HParams tab."""
    train_job(trial.job, store, work_dir, on_epoch_end, curves)
    record = write_record(trial, store)
    if curves is not None:
        from csrec.tensorboard import final_metrics, hparams, write_hparams

        write_hparams(curves, hparams(trial.job) | {"stage": trial.stage}, final_metrics(record))
    return record


def write_record(trial: Trial, store: Store) -> dict:
    """store/trials/<key>/ from the model artifact; returns the result dict. Idempotent."""
    if store.verify(TRIALS, trial.job.key):
        return trial_result(store, trial)
    result = read_result(store, trial.job)
    source = store.require(MODELS, trial.job.key, f"the model of {trial.label()}") / "per_user.parquet"
    return _store_record(trial, store, result, lambda target: shutil.copy(source, target), **_device(result))


def _device(result: dict) -> dict:
    """The record's "device" (csrec.train.device_record): where the model trained, when its result says."""
    return {"device": result["device"]} if "device" in result else {}


def _store_record(trial: Trial, store: Store, result: dict, write_per_user: Callable[[Path], object],
                  **extra) -> dict:
    """store/trials/<key>/: result.json (the trial's identity, `result`'s scores, `extra`) and the
    per-user metrics that `write_per_user(path)` writes; returns the record."""
    record = trial.record() | {k: result[k] for k in ("best_epoch", "valid", "test")} | extra

    def fill(folder: Path) -> None:
        (folder / "result.json").write_text(json.dumps(record, indent=2, sort_keys=True))
        write_per_user(folder / "per_user.parquet")

    store.write(TRIALS, trial.job.key, trial.record(), fill)
    return record


def write_stop_decision(work_dir: Path, trial: Trial, decision: dict) -> None:
    """Keep the scheduler's decision to stop `trial` (the driver's, before Tune ends it): final from here on."""
    write_json_atomic(Path(work_dir) / trial.job.key / STOPPED_FILE, decision | {"label": trial.label()})


def record_stopped(trials: list[Trial], store: Store, work_dir: Path, log=print,
                   evaluate: Callable | None = None) -> list[Trial]:
    """Write the record of every unrecorded trial the scheduler stopped (a decision in its work
    folder): its best epoch so far, evaluated, marked "stopped". Returns the trials not stopped.
    `evaluate(job, weights)`: where the weights are scored (csrec.jobs.evaluate_checkpoint)."""
    pending = []
    for trial in trials:
        decision = read_json(Path(work_dir) / trial.job.key / STOPPED_FILE)
        if decision is None or store.verify(TRIALS, trial.job.key):
            pending.append(trial)
            continue
        try:
            result, frame = evaluate_checkpoint(trial.job, work_dir, evaluate=evaluate)
        except CSRecError as error:  # its checkpoint is gone or unreadable: train the point again, never a wedge
            log(f"warning: {error}; the decision to stop {trial.label()} is dropped and the point trains again")
            (Path(work_dir) / trial.job.key / STOPPED_FILE).unlink(missing_ok=True)
            pending.append(trial)
            continue
        stopped = {k: v for k, v in decision.items() if k != "label"} | {
            k: result[k] for k in ("epochs", "history", "seconds")}
        _store_record(trial, store, result, lambda target: frame.to_parquet(target, index=False), stopped=stopped,
                      **_device(result))
        shutil.rmtree(Path(work_dir) / trial.job.key, ignore_errors=True)
        log(f"stopped early: {trial.label()} after epoch {result['epochs']} (rung {decision['rung']}: best valid "
            f"{SELECTION_METRIC} {decision['score']:.4f} < cutoff {decision['cutoff']:.4f}); its best epoch "
            f"{result['best_epoch']} is its record")
    return pending


def cell_histories(store: Store, cell: tuple) -> dict[str, list[float]]:
    """trial key -> per-epoch validation scores, of every recorded search point of `cell` (stopped
    ones from their record, the others from their model's history)."""
    histories = {}
    for key, record in stored_records(store):
        if (record["dataset"], record["model"], record["method"]) != tuple(cell) or record["stage"] != "search":
            continue
        if "stopped" in record:
            histories[key] = list(record["stopped"]["history"])
        elif store.verify(MODELS, key):
            model = json.loads((store.path(MODELS, key) / "result.json").read_text())
            histories[key] = [float(r["valid_score"]) for r in model.get("history", [])]
    return histories


def record_stored(trials: list[Trial], store: Store) -> list[Trial]:
    """Write the record of every unrecorded trial whose model is already in the store (no training,
    no Tune trial for it); returns the trials still without a record. Recorded trials cost one check."""
    pending = []
    for trial in trials:
        if store.verify(TRIALS, trial.job.key):
            continue
        if store.verify(MODELS, trial.job.key):
            write_record(trial, store)
        else:
            pending.append(trial)
    return pending


def trial_result(store: Store, trial: Trial) -> dict | None:
    """The finished trial's result.json, or None when it has not finished."""
    if not store.verify(TRIALS, trial.job.key):
        return None
    return json.loads((store.path(TRIALS, trial.job.key) / "result.json").read_text())


def stored_records(store: Store) -> Iterator[tuple[str, dict]]:
    """(key, result.json) of every intact trial record in the store (files only; a damaged one is
    skipped here, never repaired: this is read by status and the schedulers while trials run)."""
    for key in store.keys(TRIALS):
        if artifact_problem(store.path(TRIALS, key)) is None:
            yield key, json.loads((store.path(TRIALS, key) / "result.json").read_text())


def best_valid_by_method(store: Store) -> dict[str, float]:
    """method -> the best validation NDCG@10 among all the finished trials in the store (files only)."""
    best: dict[str, float] = {}
    for _, record in stored_records(store):
        score = record["valid"].get(SELECTION_METRIC)
        if score is not None and score > best.get(record["method"], float("-inf")):
            best[record["method"]] = score
    return best


def best_points(trials: list[Trial], store: Store) -> dict[tuple, dict[str, float]]:
    """Per (dataset, model, method): the finished search point with the best validation NDCG@10.

    Test metrics are never looked at. Ties go to the point listed first (the plan's order).
    """
    best: dict[tuple, tuple[float, dict]] = {}
    for trial in trials:
        result = trial_result(store, trial)
        if trial.stage != "search" or result is None:
            continue
        score = result["valid"][SELECTION_METRIC]
        if trial.cell not in best or score > best[trial.cell][0]:
            best[trial.cell] = (score, dict(trial.params))
    return {cell: point for cell, (_, point) in best.items()}
