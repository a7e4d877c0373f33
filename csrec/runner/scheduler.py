"""Early stopping of search points with Ray Tune's ASHA, one set of rungs per cell, the store as truth.

Tune's AsyncHyperBandScheduler compares every trial of a Tuner with every other; a stage here holds
the trials of many cells (dataset, model, method), and a point may only be compared with the points
of its own cell. `CellASHA` keeps one ASHA per cell and hands each trial's results to its cell's.

A Tuner lives for one stage (or one TPE round), and a new driver starts a new one (the Tune folder
is never restored, csrec.runner.ray_backend). So each cell's rungs are first filled from the store:
the per-epoch validation scores of the cell's search points that already have a record (trained to
the end, or stopped). A resumed stage, and a later TPE round, compare their points with the same
points as an uninterrupted run would. Each decision to stop is written at once to
`<work>/<key>/stopped.json` (csrec.runner.trials.STOPPED_FILE), before Tune ends the trial: a driver
killed before the stopped point's record is written finds the decision there, and the point is not
trained again.

ASHA's score at a rung is the point's best validation NDCG@10 up to that epoch (what it would be
selected by), not that epoch's: one noisy epoch does not stop a point that did better before.
Seed reruns never get a scheduler: they are the paper's protocol for the selected point.
"""

from __future__ import annotations

from pathlib import Path

from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler

from csrec.config import SchedulerSettings
from csrec.runner.plan import SELECTION_METRIC, Trial
from csrec.runner.trials import cell_histories, write_stop_decision

BEST_METRIC = f"best_valid_{SELECTION_METRIC}"  # reported every epoch: the best validation score so far
EPOCH = "epoch"  # reported every epoch; the final report has none, so ASHA ignores it


def stage_scheduler(stage: str, trials: list[Trial], settings: SchedulerSettings, max_epochs: int, store,
                    work_dir: Path) -> TrialScheduler:
    """The scheduler of a stage: CellASHA for search stages (grid and TPE rounds) under `asha`, else FIFO."""
    if not settings.early_stopping or stage == "seeds":
        return FIFOScheduler()
    return CellASHA(trials, settings, max_epochs, store, work_dir)


class CellASHA(FIFOScheduler):
    """One ASHA per cell, its rungs filled from the store; remembers and writes each stop decision."""

    def __init__(self, trials: list[Trial], settings: SchedulerSettings, max_epochs: int, store, work_dir: Path):
        super().__init__()
        self.trials, self.settings, self.max_epochs = trials, settings, max_epochs
        self.store, self.work_dir = store, Path(work_dir)
        self.cells: dict[tuple, AsyncHyperBandScheduler] = {}
        self.stopped: dict[str, dict] = {}  # trial key -> the decision (as in stopped.json)

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True  # metric and mode are ours (BEST_METRIC, max), whatever the searcher optimises

    def _cell(self, tune_trial) -> AsyncHyperBandScheduler:
        cell = self.trials[tune_trial.config["point"]].cell
        if cell not in self.cells:
            # stop_last_trials=False: a point that passed the last rung is not compared again.
            asha = AsyncHyperBandScheduler(time_attr=EPOCH, metric=BEST_METRIC, mode="max", max_t=self.max_epochs,
                                           grace_period=self.settings.grace_epochs,
                                           reduction_factor=self.settings.reduction_factor, stop_last_trials=False)
            # Tune puts a rung at max_t itself when max_epochs / grace_epochs is a power of the reduction
            # factor: a point would be stopped on its last epoch, its full-budget model never stored. The
            # rungs are the settings' (below max_epochs), the same list plan.json and the legend give.
            rungs = [(float(m), {}) for m in reversed(self.settings.rungs(self.max_epochs))]
            asha._brackets[0]._rungs = rungs  # [(milestone, {trial id: score})], highest milestone first
            for key, scores in cell_histories(self.store, cell).items():
                for milestone, recorded in rungs:
                    if len(scores) >= milestone:
                        recorded[f"store:{key}"] = max(scores[:int(milestone)])
            self.cells[cell] = asha
        return self.cells[cell]

    def on_trial_add(self, tune_controller, trial):
        self._cell(trial).on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        asha = self._cell(trial)
        action = asha.on_trial_result(tune_controller, trial, result)
        if action == TrialScheduler.STOP and int(result[EPOCH]) >= self.max_epochs:
            action = TrialScheduler.CONTINUE  # its budget is done: it ends by itself and stores its model
        if action == TrialScheduler.STOP:
            bracket = asha._brackets[0]
            # The rung just decided on: the highest one that now holds this trial (rungs come highest first).
            milestone, recorded = next((m, r) for m, r in bracket._rungs if trial.trial_id in r)
            others = {k: v for k, v in recorded.items() if k != trial.trial_id}
            ours = self.trials[trial.config["point"]]
            decision = {"by": "asha", "epoch": int(result[EPOCH]), "rung": int(milestone),
                        "score": float(result[BEST_METRIC]), "cutoff": float(bracket.cutoff(others)),
                        "compared_with": len(others), "grace_epochs": self.settings.grace_epochs,
                        "reduction_factor": self.settings.reduction_factor, "max_epochs": self.max_epochs}
            write_stop_decision(self.work_dir, ours, decision)
            self.stopped[ours.job.key] = decision
        return action

    def on_trial_complete(self, tune_controller, trial, result):
        self._cell(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial):
        self._cell(trial).on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return f"ASHA per cell ({self.settings.describe(self.max_epochs)}); {len(self.stopped)} point(s) stopped"
