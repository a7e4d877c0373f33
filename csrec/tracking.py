"""Experiment tracking: every model an experiment trains, teacher or student trial, logged as one
MLflow or Weights & Biases run with its parameters, its curves and its final metrics.

A spec's `tracking:` (csrec.config.TrackingSettings) picks the library. Student trials under Ray
log through Ray Tune's own callbacks (MLflowLoggerCallback, WandbLoggerCallback;
csrec.runner.tune_tracking); teachers, and every job under `--local`, through the library's own API
here. Both log from the driver, where the epochs are reported (Tune's results, the teachers'
epoch board), so Ray's workers need neither the package nor credentials.

What a run carries, the same in both libraries and both backends:
- its name: the job's label (`base gru4rec smoke seed 0`, a trial's label); tags (MLflow) or the
  group (W&B): its stage ("teachers", "search", "seeds", a TPE round) and role (teacher, student);
- parameters (MLflow params, W&B config): `params` (model, method, seed, grid values, training
  settings, stage, the store key);
- curves, one step an epoch: CURVES;
- final metrics: `final/valid_<metric>` and `final/test_<metric>` for every metric of its
  result.json (recall, ndcg, mrr at each cut-off, the filtered '+' versions; TensorBoard's HParams
  names: MLflow takes no '@' or '+' in a name), and `final/best_epoch`.
A run whose job failed ends FAILED (W&B: exit code 1). Models found in the store are not trained
and get no run.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from csrec.errors import CSRecError, first_line
from csrec.tensorboard import final_metrics, hparams

# The package each backend imports, and the install command a missing one's error names. MLflow:
# mlflow-skinny is the tracking client with the file and sqlite stores, without the server and
# the model flavours' dependencies (setup.cfg's extra).
PACKAGES = {"mlflow": ("mlflow", 'pip install "csrec[mlflow]" (in a clone: pip install ".[mlflow]", or pip install '
                                 'mlflow-skinny)'),
            "wandb": ("wandb", 'pip install "csrec[wandb]" (in a clone: pip install ".[wandb]", or pip install wandb)')}
# A training epoch's values under their tracked names (a fit() record's fields, or a Tune report's keys).
CURVES = {"train_loss": "train_loss", "valid_score": "valid_ndcg_at_10", "best_score": "best_valid_ndcg_at_10",
          "seconds": "epoch_seconds"}
SQLITE_FILE = "mlflow.db"  # the default MLflow store: in the experiment's folder


def check(settings) -> None:
    """The backend's package imports; else a one-line error with the pip command (never a silent skip)."""
    if settings.backend == "none":
        return
    module, command = PACKAGES[settings.backend]
    try:
        importlib.import_module(module)
    except ImportError as error:
        raise CSRecError(f"tracking: {settings.backend} needs the {module} package, which does not import here "
                         f"({first_line(error)}): {command}, or remove `tracking` from the spec") from None


def params(job, stage: str) -> dict:
    """A run's parameters: TensorBoard's HParams values (csrec.tensorboard.hparams), its stage and key."""
    return hparams(job) | {"stage": stage, "key": job.key, "job": job.describe()}


def curve(values: dict) -> dict:
    """An epoch's tracked values from a fit() record's fields (train_loss, valid_score, best_score, seconds)."""
    return {name: float(values[field]) for field, name in CURVES.items() if values.get(field) is not None}


def final(result: dict) -> dict:
    """A finished job's final metrics (its result.json): every validation and test metric, the best epoch."""
    return final_metrics(result) | {"final/best_epoch": float(result.get("best_epoch", 0))}


def mlflow_uri(settings, experiment_dir) -> str | None:
    """The spec's URI, else MLFLOW_TRACKING_URI, else a sqlite store in the experiment's folder
    (MLflow's recommended local store; an experiment on object storage: MLflow's own default)."""
    uri = settings.uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri is None and isinstance(experiment_dir, Path):
        uri = f"sqlite:///{experiment_dir / SQLITE_FILE}"
    if uri is not None and (uri.startswith("file:") or "://" not in uri):
        # MLflow 3 refuses its file store unless told (it only affects file stores): a spec that names one asked for it.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return uri


def name(settings, spec) -> str:
    """The MLflow experiment or the W&B project: the spec's `experiment`, else the spec's name."""
    return settings.experiment or spec.name


def wandb_options(experiment_dir) -> dict:
    """wandb.init's folder and mode: WANDB_DIR, else the experiment's folder (its runs under
    <experiment>/wandb/); WANDB_MODE passed on as `mode`, so that the Tune callback's logging actor
    (another process, perhaps on another node) honours it too."""
    folder = os.environ.get("WANDB_DIR") or (str(experiment_dir) if isinstance(experiment_dir, Path) else None)
    options = {"dir": folder} if folder else {}
    if os.environ.get("WANDB_MODE"):
        options["mode"] = os.environ["WANDB_MODE"]
    return options


class Tracker:
    """Runs by label: start, one `epoch` per training epoch, `end` with the final metrics (or failed)."""

    def start(self, label: str, stage: str, role: str, values: dict) -> None: ...

    def epoch(self, label: str, epoch: int, values: dict) -> None: ...

    def end(self, label: str, metrics: dict | None = None, failed: bool = False) -> None: ...

    def close(self) -> None:
        for label in list(getattr(self, "runs", {})):  # a run left open (an interrupted stage) ends as failed
            self.end(label, failed=True)


class MLflowTracker(Tracker):
    def __init__(self, uri: str | None, experiment: str):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(uri)
        found = self.client.get_experiment_by_name(experiment)
        self.experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
        self.runs: dict[str, str] = {}

    def start(self, label, stage, role, values):
        from mlflow.entities import Param

        run = self.client.create_run(self.experiment_id, run_name=label, tags={"stage": stage, "role": role})
        self.runs[label] = run.info.run_id
        self.client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in values.items()])

    def epoch(self, label, epoch, values):
        self._metrics(label, values, int(epoch))

    def end(self, label, metrics=None, failed=False):
        if label not in self.runs:
            return
        if metrics:
            self._metrics(label, metrics, int(metrics.get("final/best_epoch", 0)))
        self.client.set_terminated(self.runs.pop(label), "FAILED" if failed else "FINISHED")

    def _metrics(self, label, values, step):
        import time

        from mlflow.entities import Metric

        if label in self.runs:
            now = int(time.time() * 1000)
            self.client.log_batch(self.runs[label], metrics=[Metric(k, float(v), now, step) for k, v in values.items()])


class WandbTracker(Tracker):
    def __init__(self, project: str, options: dict):
        import wandb

        self.wandb, self.project, self.options = wandb, project, options
        self.runs: dict = {}

    def start(self, label, stage, role, values):
        # create_new: several runs open at once in this process (teachers train in parallel); console
        # off: the driver's live line is not the run's output.
        self.runs[label] = self.wandb.init(project=self.project, name=label, group=stage, job_type=role,
                                           config=values, reinit="create_new",
                                           settings=self.wandb.Settings(console="off"), **self.options)

    def epoch(self, label, epoch, values):
        if label in self.runs:
            self.runs[label].log(dict(values), step=int(epoch))

    def end(self, label, metrics=None, failed=False):
        run = self.runs.pop(label, None)
        if run is None:
            return
        if metrics:
            run.summary.update(metrics)
        run.finish(exit_code=1 if failed else 0)


def open_tracker(experiment) -> Tracker:
    """The experiment's tracker (a Tracker that does nothing without `tracking`)."""
    settings, spec = experiment.spec.tracking, experiment.spec
    if settings.backend == "mlflow":
        return MLflowTracker(mlflow_uri(settings, experiment.directory), name(settings, spec))
    if settings.backend == "wandb":
        return WandbTracker(name(settings, spec), wandb_options(experiment.directory))
    return Tracker()
