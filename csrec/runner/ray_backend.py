"""The plan on Ray: teachers as Ray tasks, students as Ray Tune trials chosen by Optuna.

- Teachers: one `ray.remote` task each, with the spec's resources, submitted as soon as the teachers
  they learn from are in the store (CSRec-T's main teacher waits for its side teacher). A task that
  dies is retried and resumes from its epoch checkpoint in the store's work folder.
- Students: one Tuner per stage ("search", "seeds"), whose points are the stage's pending trials,
  enumerated through OptunaSearch: one categorical over the trial list, each point enqueued in the
  study so that they start once each, in the list's order, and every cell of the grid shares one
  pool of workers (the tail of one cell never idles the cluster). TPE (csrec.runner.tpe) runs its
  rounds of proposals through the same `run_trials`. Trials report every epoch with a checkpoint,
  are retried from it (FailureConfig), and a restarted driver resumes them with
  Tuner.restore(resume_errored=True).
- Trials get artifact paths, never object refs, and never launch Ray tasks themselves.
"""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import optuna
import ray
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from csrec.config import Resources
from csrec.jobs import train_job
from csrec.methods import Job
from csrec.runner.plan import SELECTION_METRIC, Trial
from csrec.runner.progress import LiveView
from csrec.runner.trials import run_trial, trial_result
from csrec.store import Store, config_key, write_json_atomic

TRAINABLE = "csrec_student"


def start_ray(address: str | None = None, log=print) -> None:
    """Join `address` (or RAY_ADDRESS); without either, start Ray in this process."""
    address = address or os.environ.get("RAY_ADDRESS")
    # One checkpoint a trial epoch is the design (resume from the last epoch); Tune's warning about
    # frequent snapshots is expected here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    # OptunaSearch's warnings about its own study's bookkeeping are noise here: results live in
    # the store, not in the study.
    logging.getLogger("ray.tune.search.optuna.optuna_search").setLevel(logging.ERROR)
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=False)
        log(f"ray: joined the cluster at {address}: {ray.cluster_resources()}")
    else:
        # "local": a new instance even when `ray start` left its address in RAY_TMPDIR's
        # ray_current_cluster (address=None would join that cluster instead, or fail on the cap).
        ray.init(address="local", include_dashboard=False, log_to_driver=False,
                 object_store_memory=256 * 1024 * 1024, configure_logging=False)
        log(f"ray: started in this process: {ray.cluster_resources()}")


def feasible(resources: Resources, log=print) -> Resources:
    """A GPU request on a cluster without GPUs would stay pending forever: ask for CPU instead."""
    if resources.gpu > 0 and ray.cluster_resources().get("GPU", 0) <= 0:
        warnings.warn(f"the spec asks for {resources.gpu} GPU per task but the Ray cluster has none; "
                      "running on CPU (set gpu: 0 in the spec to silence this)")
        return Resources(cpu=resources.cpu, gpu=0.0)
    return resources


def threads(resources: Resources) -> int:
    return max(1, int(resources.cpu))


@ray.remote(max_retries=3)
def _train_model_task(job: Job, store_root: str, work_dir: str, num_threads: int) -> tuple[str, str]:
    """Returns the job's key and the Ray node it ran on (logged: where did the teachers go)."""
    import torch

    torch.set_num_threads(num_threads)
    train_job(job, Store(store_root), Path(work_dir))
    return job.key, ray.get_runtime_context().get_node_id()


def student_trainable(config: dict, stage_file: str, store_root: str, work_dir: str, num_threads: int) -> None:
    """One Tune trial: the student `config["point"]` of the stage's trial list.

    Its last report also says where it ran ("node_id") and on which GPUs ("gpu_ids", comma-separated
    ids Ray gave it, "" on CPU): with fractional GPU requests, several trials show the same id.
    """
    import torch

    torch.set_num_threads(num_threads)
    with open(stage_file, "rb") as handle:
        trial: Trial = pickle.load(handle)[config["point"]]
    store = Store(store_root)
    checkpoint_file = Path(work_dir) / trial.job.key / "last.pt"
    restored = tune.get_checkpoint()
    if restored is not None:  # a retry or a resumed experiment: go on from the last reported epoch
        checkpoint_file.parent.mkdir(parents=True, exist_ok=True)
        with restored.as_directory() as folder:
            shutil.copy(Path(folder) / "last.pt", checkpoint_file)

    def report_epoch(record) -> None:
        with tempfile.TemporaryDirectory() as folder:
            shutil.copy(checkpoint_file, Path(folder) / "last.pt")
            tune.report({"epoch": record.epoch, "train_loss": record.train_loss,
                         f"valid_{SELECTION_METRIC}": record.valid_score, "done": False},
                        checkpoint=tune.Checkpoint.from_directory(folder))

    try:
        result = run_trial(trial, store, Path(work_dir), report_epoch)
    finally:  # the actor runs the next trial (reuse_actors): give back the GPU memory torch cached
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    tune.report({"epoch": result["best_epoch"], f"valid_{SELECTION_METRIC}": result["valid"][SELECTION_METRIC],
                 f"test_{SELECTION_METRIC}": result["test"][SELECTION_METRIC], "done": True,
                 "node_id": ray.get_runtime_context().get_node_id(),
                 "gpu_ids": ",".join(str(g) for g in ray.get_gpu_ids())})


class RayBackend:
    def __init__(self, address: str | None = None, log=print):
        self.log = log
        start_ray(address, log)

    def train_models(self, jobs: list[Job], experiment) -> None:
        resources = feasible(experiment.spec.teacher_resources, self.log)
        task = _train_model_task.options(num_cpus=resources.cpu, num_gpus=resources.gpu)
        pending = {job.key: job for job in jobs}
        jobs_by_key = dict(pending)
        running: dict = {}
        done = 0
        view = LiveView(experiment, self.log)
        while pending or running:
            for key, job in list(pending.items()):
                if not any(t.key in pending or t.key in running.values() for t in job.teachers):
                    ref = task.remote(job, str(experiment.store.root), str(experiment.work_dir), threads(resources))
                    running[ref] = key
                    del pending[key]
            ready, _ = ray.wait(list(running), num_returns=1, timeout=5.0)
            for ref in ready:
                key, node = ray.get(ref)  # a task that failed all its retries raises here, with its error
                self.log(f"teacher {jobs_by_key[key].describe()} [{key}]: trained on node {node}")
                done += 1
                del running[ref]
            view.teachers(done=done, running=len(running), pending=len(pending), total=len(jobs))

    def run_trials(self, stage: str, trials: list[Trial], experiment) -> None:
        restored = self._tune(stage, trials, self._grid_searcher(f"{experiment.spec.name}-{stage}", len(trials)),
                              len(trials), experiment)
        # A restored Tune experiment only finishes its own trials; one whose result has left the
        # store since (a damaged artifact removed by verify) runs again in a Tuner of its own.
        leftover = [t for t in trials if trial_result(experiment.store, t) is None]
        if restored and leftover:
            again = f"{stage}-again-{config_key(sorted(t.job.key for t in leftover))[:8]}"
            self.log(f"{stage}: {len(leftover)} trial(s) have no result in the store; running them in {again}")
            self._tune(again, leftover, self._grid_searcher(f"{experiment.spec.name}-{again}", len(leftover)),
                       len(leftover), experiment)

    @staticmethod
    def _grid_searcher(study_name: str, n: int) -> OptunaSearch:
        """Hands the stage's points 0..n-1 out once each, in the order of its trial list (seed_trials
        lists reruns seed by seed): every point is enqueued in the study, and Tune asks for exactly n.
        (Optuna's GridSampler, the first design, hands a grid out in a seeded shuffle.) The sampler
        is never consulted: every point Tune asks for comes from the queue."""
        points = list(range(n))
        return OptunaSearch(space={"point": optuna.distributions.CategoricalDistribution(points)},
                            sampler=optuna.samplers.RandomSampler(seed=0),
                            points_to_evaluate=[{"point": i} for i in points],
                            study_name=study_name, metric=f"valid_{SELECTION_METRIC}", mode="max")

    def width(self, experiment, resources: Resources | None = None) -> int:
        """How many trials run at once: the spec's cap, or as many as the cluster's CPUs (and GPUs) hold."""
        resources = resources or feasible(experiment.spec.trial_resources, self.log)
        cluster = ray.cluster_resources()
        fits = cluster.get("CPU", 1) // resources.cpu
        if resources.gpu > 0:
            fits = min(fits, cluster.get("GPU", 0) // resources.gpu)
        return experiment.spec.max_concurrent_trials or max(1, int(fits))

    def _tune(self, stage: str, trials: list[Trial], searcher, num_samples: int, experiment) -> bool:
        """Run (or resume) the Tune experiment `stage` over `trials`; True when it was resumed."""
        resources = feasible(experiment.spec.trial_resources, self.log)
        tune_dir = experiment.directory / "tune"
        stage_file = tune_dir / f"{stage}.trials.pkl"
        path = tune_dir / stage
        restoring = tune.Tuner.can_restore(str(path))
        if not restoring:  # a resumed Tuner must see the point list it started with; a new one, today's
            tune_dir.mkdir(parents=True, exist_ok=True)
            tmp = stage_file.with_suffix(".tmp")
            tmp.write_bytes(pickle.dumps(trials))
            os.replace(tmp, stage_file)
        trials = pickle.loads(stage_file.read_bytes())
        trainable = tune.with_resources(
            tune.with_parameters(student_trainable, stage_file=str(stage_file), store_root=str(experiment.store.root),
                                 work_dir=str(experiment.work_dir), num_threads=threads(resources)),
            {"cpu": resources.cpu, "gpu": resources.gpu},
        )
        view = LiveView(experiment, self.log, trials)
        lanes = self.width(experiment, resources)  # `feasible` (and its GPU warning) once a stage
        if restoring:
            self.log(f"{stage}: resuming the Tune experiment in {path}")
            tuner = tune.Tuner.restore(str(path), trainable, resume_errored=True)
        else:
            tuner = tune.Tuner(
                trainable,
                # reuse_actors: a worker process (torch imported, data set loaded and cached by
                # jobs._load) runs trial after trial instead of being started for each one.
                tune_config=tune.TuneConfig(search_alg=searcher, num_samples=num_samples,
                                            max_concurrent_trials=lanes, reuse_actors=True),
                run_config=tune.RunConfig(name=stage, storage_path=str(tune_dir), verbose=0, callbacks=[view],
                                          failure_config=tune.FailureConfig(max_failures=3),
                                          checkpoint_config=tune.CheckpointConfig(num_to_keep=1)),
            )
        started = time.time()
        results = tuner.fit()
        # Tune ends `fit` quietly on Ctrl-C (it saves its state and returns): a trial that neither
        # finished (its last report says done) nor failed, or was never started, means the stage was
        # stopped. Say so and stop the run, never go on to the next stage as if it had finished.
        ended = sum(r.error is not None or bool((r.metrics or {}).get("done")) for r in results)
        if ended < len(trials):
            self.log(f"{stage}: stopped with {len(trials) - ended} of {len(trials)} trials unfinished")
            raise KeyboardInterrupt(stage)
        # The stage's wall time and lanes, for benchmarks/utilization.py (Ray and Tune cost per trial).
        write_json_atomic(tune_dir / f"{stage}.timing.json",
                          {"seconds": time.time() - started, "lanes": lanes, "resumed": restoring})
        failed = [r for r in results if r.error is not None]
        self.log(f"{stage}: {len(results) - len(failed)} trials finished, {len(failed)} failed "
                 f"({time.time() - started:.0f} s)")
        for result in failed:
            self.log(f"  failed: {trials[result.config['point']].label()}: {str(result.error).splitlines()[-1]}")
        return restoring
