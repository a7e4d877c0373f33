"""The plan run in this process, one job after another: no Ray (tests, debugging, one machine)."""

from __future__ import annotations

from csrec.jobs import train_job
from csrec.methods import Job
from csrec.runner.plan import SELECTION_METRIC, Trial
from csrec.runner.trials import run_trial


class LocalBackend:
    def __init__(self, log=print):
        self.log = log

    def train_models(self, jobs: list[Job], experiment) -> None:
        for number, job in enumerate(jobs, 1):  # dependency order: side teachers before main teachers
            self.log(f"[{number}/{len(jobs)}] teacher {job.describe()}")
            train_job(job, experiment.store, experiment.work_dir)
            experiment.progress(teachers_done=number)

    def run_trials(self, stage: str, trials: list[Trial], experiment) -> None:
        for number, trial in enumerate(trials, 1):
            result = run_trial(trial, experiment.store, experiment.work_dir)
            self.log(f"[{stage} {number}/{len(trials)}] {trial.label()}: valid {SELECTION_METRIC} "
                     f"{result['valid'][SELECTION_METRIC]:.4f}")

    def width(self, experiment) -> int:
        return 1  # one trial at a time
