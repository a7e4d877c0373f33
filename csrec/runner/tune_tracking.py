"""Student trials tracked through Ray Tune's own callbacks (csrec.tracking says what a run carries).

A Tune trial's config is only its point number in the stage's trial list (csrec.runner.ray_backend),
and its reports use the runner's names (`valid_ndcg@10`: MLflow refuses '@'), so each callback is
Tune's with the three hooks that say what to log: a run named by the trial's label with its
parameters (csrec.tracking.params), one step per epoch report (the final report, which carries
no epoch, is left to the end), and at the end the final metrics of the trial's record in the store.
Run creation, tracking URIs and credentials, W&B's logging actors and run endings stay Tune's.
"""

from __future__ import annotations

from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.air.integrations.wandb import WandbLoggerCallback
from ray.tune.result import TRAINING_ITERATION

from csrec import tracking
from csrec.runner.plan import SELECTION_METRIC, Trial
from csrec.runner.scheduler import BEST_METRIC, EPOCH
from csrec.runner.trials import trial_result

# A Tune epoch report's keys (student_trainable's report_epoch) as fit() record fields (tracking.CURVES).
REPORT_FIELDS = {"train_loss": "train_loss", f"valid_{SELECTION_METRIC}": "valid_score", BEST_METRIC: "best_score",
                 "epoch_seconds": "seconds"}


class _Trials:
    """What both callbacks share: the stage's trials, and the store their records are read from."""

    def _bind(self, stage: str, trials: list[Trial], store) -> None:
        self.stage, self.trials, self.store = stage, trials, store

    def _ours(self, trial) -> Trial:
        return self.trials[trial.config["point"]]

    def _curve(self, result: dict) -> dict:
        return tracking.curve({field: result.get(key) for key, field in REPORT_FIELDS.items()})

    def _final(self, trial) -> dict | None:
        record = trial_result(self.store, self._ours(trial))  # written by the trial before its last report
        return tracking.final(record) if record is not None else None


class MLflowTrials(_Trials, MLflowLoggerCallback):
    def __init__(self, experiment, stage: str, trials: list[Trial]):
        settings = experiment.spec.tracking
        super().__init__(tracking.mlflow_uri(settings, experiment.directory),
                         experiment_name=tracking.name(settings, experiment.spec),
                         tags={"stage": stage, "role": "student"})
        self._bind(stage, trials, experiment.store)

    def log_trial_start(self, trial):
        ours = self._ours(trial)
        if trial not in self._trial_runs:  # a retried trial goes on in its run
            run = self.mlflow_util.start_run(run_name=ours.label(), tags=self.tags | {"trial_name": str(trial)})
            self._trial_runs[trial] = run.info.run_id
            self.mlflow_util.log_params(run_id=self._trial_runs[trial],
                                        params_to_log=tracking.params(ours.job, self.stage))

    def log_trial_result(self, iteration, trial, result):
        if EPOCH in result:
            self.mlflow_util.log_metrics(run_id=self._trial_runs[trial], metrics_to_log=self._curve(result),
                                         step=int(result[EPOCH]))

    def log_trial_end(self, trial, failed=False):
        final = None if failed else self._final(trial)
        if final and trial in self._trial_runs:
            self.mlflow_util.log_metrics(run_id=self._trial_runs[trial], metrics_to_log=final,
                                         step=int(final["final/best_epoch"]))
        super().log_trial_end(trial, failed)


class WandbTrials(_Trials, WandbLoggerCallback):
    def __init__(self, experiment, stage: str, trials: list[Trial]):
        super().__init__(project=tracking.name(experiment.spec.tracking, experiment.spec), group=stage,
                         job_type="student", **tracking.wandb_options(experiment.directory))
        self._bind(stage, trials, experiment.store)

    def log_trial_start(self, trial):
        # wandb.init's arguments are the constructor's kwargs, laid over Tune's (name, config): this
        # trial's label and parameters for the time of Tune's own start.
        ours, kept = self._ours(trial), self.kwargs
        self.kwargs = kept | {"name": ours.label(), "config": tracking.params(ours.job, self.stage)}
        try:
            super().log_trial_start(trial)
        finally:
            self.kwargs = kept

    def log_trial_result(self, iteration, trial, result):
        if EPOCH in result:  # the actor logs at step TRAINING_ITERATION: the epoch
            super().log_trial_result(iteration, trial, self._curve(result) | {TRAINING_ITERATION: int(result[EPOCH])})

    def log_trial_end(self, trial, failed=False):
        final = None if failed else self._final(trial)
        if final and trial in self._trial_queues:
            super().log_trial_result(0, trial, final)  # no step: at the last epoch's; the summary keeps them
        super().log_trial_end(trial, failed)


CALLBACKS = {"mlflow": MLflowTrials, "wandb": WandbTrials}


def tracking_callbacks(experiment, stage: str, trials: list[Trial]) -> list:
    """The Tune callbacks that track the stage's trials (none without `tracking`)."""
    backend = experiment.spec.tracking.backend
    return [CALLBACKS[backend](experiment, stage, trials)] if backend in CALLBACKS else []
