"""The plan run in this process, one job after another: no Ray (tests, debugging, one machine)."""

from __future__ import annotations

from contextlib import closing

from csrec.errors import CSRecError, first_line
from csrec.jobs import train_job
from csrec.methods import Job
from csrec.runner.experiment import teacher_failed
from csrec.runner.epochs import EpochProgress
from csrec.runner.plan import SELECTION_METRIC, Trial
from csrec.runner.trials import run_trial
from csrec.tensorboard import job_folder
from csrec.tracking import curve, final, open_tracker, params


class LocalBackend:
    def __init__(self, log=print):
        self.log = log

    def check(self, spec) -> None:
        """This process runs one job at a time, whatever the spec's resources; early stopping is Tune's."""
        if spec.scheduler.early_stopping:
            raise CSRecError(f"scheduler: {spec.scheduler.kind} is Ray Tune's early stopping; run without --local, "
                             "or set scheduler: fifo to train every point in this process")

    def check_nodes(self, experiment) -> None:
        """One machine: the experiment's folder and data files are where the driver has them."""

    def train_models(self, jobs: list[Job], experiment) -> None:
        epochs = EpochProgress(experiment, "teachers", len(jobs), 1, self.log)  # as the trials' (status, live line)
        with closing(open_tracker(experiment)) as tracker:  # the library's own API (csrec.tracking), as under Ray
            for number, job in enumerate(jobs, 1):  # dependency order: side teachers before main teachers
                self.log(f"[{number}/{len(jobs)}] teacher {job.describe()}")
                on_epoch_end = _reporter(job.describe(), epochs, tracker)
                tracker.start(job.describe(), "teachers", "teacher", params(job, "teachers"))
                try:
                    result = train_job(job, experiment.store, experiment.work_dir, on_epoch_end,
                                       curves=job_folder(experiment.directory, "teachers", job.describe(), job.key))
                except Exception as error:  # noqa: BLE001 - as a Ray task out of retries: one line, the run stops
                    epochs.ended(job.describe(), "failed")
                    tracker.end(job.describe(), failed=True)
                    message = str(error) if isinstance(error, CSRecError) else first_line(error)
                    raise teacher_failed(job, message) from error
                epochs.ended(job.describe(), "finished")
                tracker.end(job.describe(), final(result))
                experiment.progress(teachers_done=number)

    def run_trials(self, stage: str, trials: list[Trial], experiment) -> dict[str, str]:
        """Each trial in turn; one that raises is logged and left out, as a Ray trial out of retries
        is, and the others go on. Returns trial key -> its error, for the failed ones."""
        errors = {}
        epochs = EpochProgress(experiment, stage, len(trials), 1, self.log)
        with closing(open_tracker(experiment)) as tracker:
            for number, trial in enumerate(trials, 1):
                tracker.start(trial.label(), stage, "student", params(trial.job, stage))
                try:
                    result = run_trial(trial, experiment.store, experiment.work_dir,
                                       _reporter(trial.label(), epochs, tracker),
                                       job_folder(experiment.directory, stage, trial.label(), trial.job.key))
                except Exception as error:  # noqa: BLE001 - recorded and reported by the run (failed.json)
                    epochs.ended(trial.label(), "failed")
                    tracker.end(trial.label(), failed=True)
                    errors[trial.job.key] = first_line(error)
                    self.log(f"[{stage} {number}/{len(trials)}] {trial.label()}: FAILED: {errors[trial.job.key]}")
                    continue
                epochs.ended(trial.label(), "finished")
                tracker.end(trial.label(), final(result))
                self.log(f"[{stage} {number}/{len(trials)}] {trial.label()}: valid {SELECTION_METRIC} "
                         f"{result['valid'][SELECTION_METRIC]:.4f}")
        return errors

    def width(self, experiment) -> int:
        return 1  # one trial at a time


def _reporter(label: str, epochs: EpochProgress, tracker):
    """fit()'s on_epoch_end for the job `label`: the live view's epoch line and its tracked run's curves."""
    def on_epoch_end(record) -> None:
        epochs.epoch(label, record.epoch, record.valid_score, record.best_score, record.seconds)
        tracker.epoch(label, record.epoch, curve(vars(record)))

    return on_epoch_end
