"""The plan on Ray: teachers as Ray tasks, students as Ray Tune trials chosen by Optuna.

- Teachers: one `ray.remote` task each, with the spec's resources, submitted as soon as the teachers
  they learn from are in the store (CSRec-T's main teacher waits for its side teacher). A task that
  dies is retried and resumes from its epoch checkpoint in the store's work folder.
- Students: one Tuner per stage ("search", "seeds"), whose points are the stage's pending trials,
  enumerated through OptunaSearch: one categorical over the trial list, each point enqueued in the
  study so that they start once each, in the list's order, and every cell of the grid shares one
  pool of workers (the tail of one cell never idles the cluster). TPE (csrec.runner.tpe) runs its
  rounds of proposals through the same `run_trials`. Trials report every epoch with a checkpoint
  and are retried from it (FailureConfig). Under `scheduler: asha` the search stages' Tuners stop
  losing points (csrec.runner.scheduler); a stopped point's record is written by the driver from
  its work checkpoint (csrec.runner.trials.record_stopped), never by the trial Tune ended.
- The Tune folder is a cache of one driver's stage, never restored: Tuner.restore unpickles
  tuner.pkl (a file in a shared directory must never run code), and a driver killed while Tune
  writes it leaves a folder that cannot be restored. A new driver runs the stage's trials without a
  record in the store in a new Tuner; each goes on from its last epoch (the store's work folder).
- Trials get artifact paths and Trial values, never object refs, and never launch Ray tasks themselves.
- Resources are checked against the cluster's nodes before anything starts: a request no node can
  hold would wait forever.
- Devices (issue 26): a job uses exactly what Ray granted it (`on_granted_device`): the CPU when it
  was granted no GPU (since Ray 2.49 such a job sees every GPU of its node, and would take GPU 0),
  `cuda:0` of its visible set when it was, an error when it was and torch sees no GPU. `cuda:N`
  is refused. A GPU request becomes a CPU request only on a Ray started in this process on a
  machine without a GPU; on a cluster joined with --address or RAY_ADDRESS that shows no GPU, the
  run stops with one line, or waits for GPU nodes (an autoscaler's) when CSREC_WAIT_FOR_GPUS=1.
  The decision is taken once a run, for teachers and trials alike. GPU teacher tasks run one per
  worker process (max_calls=1: a reused process would keep the first task's CUDA context and
  device), stopped ASHA points are evaluated as Ray tasks with the trial's resources, and a
  process granted a fraction of a GPU may allocate that fraction of its memory only.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import socket
import tempfile
import time
import uuid
import warnings
from contextlib import closing
from pathlib import Path

import optuna
import ray
from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.search.optuna import OptunaSearch
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from csrec.config import Resources
from csrec.datafiles import use as use_data_files
from csrec.errors import CSRecError, first_line
from csrec.jobs import evaluate_weights, read_result, train_job
from csrec.methods import Job
from csrec.runner.experiment import teacher_failed
from csrec.runner.epochs import EpochProgress
from csrec.runner.plan import SELECTION_METRIC, Trial
from csrec.runner.progress import WARNINGS, LiveView, TeacherEpochs
from csrec.runner.scheduler import BEST_METRIC, EPOCH, stage_scheduler
from csrec.runner.signals import handlers_kept, sigterm_as_ctrl_c
from csrec.runner.tune_tracking import tracking_callbacks
from csrec.runner.trials import record_stopped, run_trial
from csrec.storage import RemotePath, remove_tree, tune_storage, work_dir
from csrec.store import Store, write_json_atomic
from csrec.train import cap_gpu_memory, device_record, set_tf32
from csrec.tensorboard import FOLDER, job_folder
from csrec.tracking import final as tracking_final
from csrec.tracking import open_tracker
from csrec.tracking import params as tracking_params

TRAINABLE = "csrec_student"
# On a cluster joined with --address or RAY_ADDRESS that shows no GPU, "1": wait for GPU nodes to join
# (an autoscaler adds them for the pending requests); unset: stop with one line.
WAIT_FOR_GPUS = "CSREC_WAIT_FOR_GPUS"
# Ray counts resources in fixed point, in units of 1/10,000: fractions are compared in those units.
RESOURCE_UNIT = 10_000


NODE_CHECK_TIMEOUT_S = 120  # RayBackend.check_nodes: a node busy starting a worker process
CONNECT_TIMEOUT_S = 10  # Ray itself retries an address where nothing answers for minutes, without a word


def check_address(address: str) -> None:
    """A cluster address (host:port, or ray://host:port for Ray Client) where something accepts a
    connection within CONNECT_TIMEOUT_S; "auto" and "local" are Ray's own and left to it."""
    if address in ("auto", "local"):
        return
    host, colon, port = address.removeprefix("ray://").rpartition(":")
    if not colon or not host or not port.isdigit():
        raise CSRecError(f"Ray address {address!r} (--address or RAY_ADDRESS) is not host:port; give the head's "
                         "address (`ray start --head` prints it), or leave both out to start Ray in this process")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as error:
        raise CSRecError(f"Ray address {address}: nothing answers there ({error.strerror or error}, within "
                         f"{CONNECT_TIMEOUT_S} s); start the head (`ray start --head`), check the address and the "
                         "network, or leave --address and RAY_ADDRESS out to start Ray in this process") from None


def start_ray(address: str | None = None, log=print) -> None:
    """Join `address` (or RAY_ADDRESS); without either, start Ray in this process, bound to 127.0.0.1
    (token authentication, on by default for local clusters, stays on)."""
    address = address or os.environ.get("RAY_ADDRESS")
    # One checkpoint a trial epoch is the design (resume from the last epoch); Tune's warning about
    # frequent snapshots is expected here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Tune's own TensorBoard logger writes under its session folder and prints that folder; the
    # training curves are the runner's, under the experiment (csrec.tensorboard). Its CSV and JSON
    # loggers are kept, given to each Tuner (`_tune`).
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    # OptunaSearch's warnings about its own study's bookkeeping are noise here: results live in
    # the store, not in the study.
    logging.getLogger("ray.tune.search.optuna.optuna_search").setLevel(logging.ERROR)
    if address:  # before the early return: a bad address is refused wherever Ray already runs
        check_address(address)
    if ray.is_initialized():
        return
    if address:
        try:
            ray.init(address=address, log_to_driver=False)
        except (ValueError, ConnectionError) as error:  # a malformed address, or no cluster answering there
            raise CSRecError(f"Ray address {address!r} (--address or RAY_ADDRESS): cannot join a cluster there "
                             f"({first_line(error)}); give the head's host:port (`ray start --head` prints it), "
                             "or leave both out to start Ray in this process") from None
        log(f"ray: joined the cluster at {address}: {ray.cluster_resources()}")
    else:
        # "local": a new instance even when `ray start` left its address in RAY_TMPDIR's
        # ray_current_cluster (address=None would join that cluster instead, or fail on the cap).
        _loopback_only()
        ray.init(address="local", include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1",
                 object_store_memory=256 * 1024 * 1024, configure_logging=False)
        log(f"ray: started in this process on 127.0.0.1: {ray.cluster_resources()}")
    sigterm_as_ctrl_c()  # ray.init makes SIGTERM a sys.exit with Ray's traceback; stop as on Ctrl-C instead


def _loopback_only() -> None:
    """Ray in this process serves this machine only: its node address is 127.0.0.1, and Ray's servers
    (GCS, raylet, workers) then listen on 127.0.0.1 instead of every interface. On Linux Ray turns a
    127.0.0.1 node address into the machine's external one unless clusters are switched off, which
    is read from RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER when Ray is imported (so also set in the module
    for this process; the variable reaches the processes Ray starts). Checked by tests/test_faults.py."""
    from ray._private import ray_constants

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


def feasible(resources: Resources, log=print, joined: bool = False, wait: bool = False, name: str = "resources",
             cluster: dict | None = None) -> Resources:
    """The request the run makes of Ray. A GPU request on a cluster without GPUs would stay pending
    forever: on a Ray started in this process (`joined` False: this machine has no GPU) it becomes a
    CPU request, with a warning. On a cluster the user joined, GPUs may be on their way (an
    autoscaler adds nodes for pending requests, never for requests turned into CPU ones): with
    `wait` the request stays as it is, else the run stops here with one line. `cluster`:
    ray.cluster_resources() (read when not given)."""
    cluster = ray.cluster_resources() if cluster is None else cluster
    if resources.gpu <= 0 or cluster.get("GPU", 0) > 0:
        return resources
    if not joined:
        warnings.warn(f"the spec asks for {resources.gpu:g} GPU per task but the Ray cluster has none; running on "
                      "CPU (Ray started in this process, on a machine without a GPU; set gpu: 0 in the spec to "
                      "silence this)")
        return Resources(cpu=resources.cpu, gpu=0.0)
    if wait:
        log(f"{name}: gpu {resources.gpu:g} per task; the Ray cluster shows no GPU yet, so its tasks wait "
            f"for GPU nodes to join ({WAIT_FOR_GPUS}=1)")
        return resources
    raise CSRecError(f"{name} asks for {resources.gpu:g} GPU per task but the Ray cluster shows no GPU: set "
                     f"{WAIT_FOR_GPUS}=1 to wait for GPU nodes (an autoscaler's), or gpu: 0 in the spec to train "
                     "on CPUs")


def how_many(total: float, each: float) -> int:
    """How many requests of `each` fit in `total`, as Ray counts (fixed point): 5 of 0.2 in 1, where
    the float 1 // 0.2 is 4.0."""
    return int(round(total * RESOURCE_UNIT)) // max(1, int(round(each * RESOURCE_UNIT)))


def as_task(function, resources: Resources):
    """`function` as a Ray task holding `resources`, retried on a lost worker. One granted a GPU runs
    in a worker process of its own (max_calls=1): a reused worker would keep the CUDA context,
    device and cached memory of its first task, whatever GPU Ray grants the next. Ray sets
    max_calls=1 only for functions that declare num_gpus in @ray.remote, and refuses it in .options()."""
    once = {"max_calls": 1} if resources.gpu > 0 else {}
    return ray.remote(max_retries=3, **once)(function).options(num_cpus=resources.cpu, num_gpus=resources.gpu)


def granted_device(device: str, gpu_ids: list, visible: str | None = None, cuda_count=None) -> str:
    """The device of a job that Ray granted the GPUs `gpu_ids` (ray.get_gpu_ids(); [] for none),
    for the spec's train.device. None granted: the CPU, without asking torch (Ray >= 2.49 leaves a
    zero-GPU job every GPU of its node visible; asking would open a CUDA context). Granted: cuda:i,
    i the place of the first granted id in CUDA_VISIBLE_DEVICES (`visible`; Ray sets it to the
    granted ids, so i = 0), or the id itself where Ray was told not to set it. An explicit "cpu"
    stays on the CPU (the GPU then only counts in Ray's scheduling). `cuda_count`: a function
    returning torch.cuda.device_count() (the default)."""
    if device.startswith("cuda:"):
        raise CSRecError(cuda_index_refused(device))
    if not gpu_ids:
        if device == "cuda":
            raise CSRecError("train.device is 'cuda' but Ray granted this job no GPU: set gpu > 0 in the spec's "
                             "teacher_resources and trial_resources, or train.device: auto")
        return "cpu"
    if device == "cpu":
        return "cpu"
    import torch

    visible = os.environ.get("CUDA_VISIBLE_DEVICES") if visible is None else visible
    count = (cuda_count or torch.cuda.device_count)()
    ids = ",".join(str(g) for g in gpu_ids)
    if count == 0:
        raise CSRecError(f"Ray granted this job GPU {ids} but torch {torch.__version__} sees no CUDA device "
                         f"(torch's CUDA: {torch.version.cuda or 'none, a CPU build'}; CUDA_VISIBLE_DEVICES="
                         f"{visible!r}): install a CUDA build of torch where the Ray workers run, or set gpu: 0 in "
                         "the spec's resources to train on CPUs")
    listed = [v.strip() for v in visible.split(",")] if visible else None
    first = str(gpu_ids[0])
    index = listed.index(first) if listed and first in listed else (0 if listed else int(first))
    if index >= count:
        raise CSRecError(f"Ray granted this job GPU {ids} but torch sees {count} CUDA device(s) "
                         f"(CUDA_VISIBLE_DEVICES={visible!r}); check the node's GPU setup")
    return f"cuda:{index}"


def cuda_index_refused(device: str) -> str:
    return (f"train.device is {device!r}, but a Ray job sees only the GPUs Ray granted it (as cuda:0): set "
            "train.device: auto (each job on the GPU Ray gives it), or run with --local to use that GPU")


def on_granted_device(job: Job) -> Job:
    """`job` as it runs in this Ray worker: on the device Ray granted it (`granted_device`), its
    process capped to its share of that GPU's memory, TF32 as its config says."""
    device = granted_device(job.train.device, ray.get_gpu_ids())
    cap_gpu_memory(device, ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0))
    set_tf32(job.train.allow_tf32)
    return dataclasses.replace(job, train=dataclasses.replace(job.train, device=device))


def check_fits(name: str, resources: Resources) -> None:
    """Refuse a request that no live node of the cluster can hold: Ray would leave it pending forever."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if any(n.get("CPU", 0) >= resources.cpu and n.get("GPU", 0) >= resources.gpu for n in nodes):
        return
    largest = max(nodes, key=lambda n: (n.get("CPU", 0), n.get("GPU", 0)), default={})
    raise CSRecError(
        f"{name}: cpu {resources.cpu:g}, gpu {resources.gpu:g} per task, but no node of the Ray cluster has that "
        f"much (largest node: {largest.get('CPU', 0):g} CPU, {largest.get('GPU', 0):g} GPU; {len(nodes)} node(s)), "
        f"so it would wait forever; lower {name} in the spec or join a bigger cluster with --address")


def threads(resources: Resources) -> int:
    return max(1, int(resources.cpu))


def on_node(store_root: str, files: dict[str, str], num_threads: int) -> Store:
    """A task's start on its node: torch's threads, the driver's data files (csrec.datafiles: read
    here, or from the store when this node lacks them); the store. Epoch checkpoints go to this
    node's work folder (csrec.storage.work_dir), never to a path of the driver's."""
    import torch

    torch.set_num_threads(num_threads)
    use_data_files(files, store_root)
    return Store(store_root)


def _train_model_task(job: Job, store_root: str, files: dict[str, str], num_threads: int, experiment_dir: str,
                      on_epoch_end=None) -> tuple[str, str]:
    """Returns the job's key and the Ray node it ran on (logged: where did the teachers go);
    `on_epoch_end`: its epochs to the driver's live view (csrec.runner.progress.TeacherEpochs)."""
    store = on_node(store_root, files, num_threads)
    job = on_granted_device(job)
    train_job(job, store, work_dir(store.root), on_epoch_end,
              curves=job_folder(experiment_dir, "teachers", job.describe(), job.key))
    return job.key, ray.get_runtime_context().get_node_id()


def student_trainable(config: dict, trials: list[Trial], store_root: str, files: dict[str, str], num_threads: int,
                      experiment_dir: str, stage: str) -> None:
    """One Tune trial: the student `trials[config["point"]]` of the stage's trial list; its curves go
    to csrec.tensorboard.job_folder(experiment_dir, stage, ...).

    Its last report also says where it ran ("node_id"), on which GPUs ("gpu_ids", comma-separated
    ids Ray gave it, "" on CPU: with fractional GPU requests, several trials show the same id), on
    which device ("device": "cpu" or "cuda:0"; "device_name": the GPU's, or the CPU's architecture)
    and when (wall-clock seconds "began_at" and "ended_at"; Tune's own "timestamp" is whole seconds).
    """
    import torch

    began_at = time.time()
    store = on_node(store_root, files, num_threads)
    trial = trials[config["point"]]
    trial = dataclasses.replace(trial, job=on_granted_device(trial.job))
    device = trial.job.train.device
    node_work = work_dir(store.root)
    checkpoint_file = node_work / trial.job.key / "last.pt"
    restored = tune.get_checkpoint()
    if restored is not None:  # a retry: go on from the last reported epoch (a damaged file is discarded by fit)
        checkpoint_file.parent.mkdir(parents=True, exist_ok=True)
        with restored.as_directory() as folder:
            shutil.copy(Path(folder) / "last.pt", checkpoint_file)

    # A worker's output does not reach the driver (log_to_driver=False): this trial's warnings (a
    # damaged work checkpoint discarded) go with its next report, and the driver says them (LiveView).
    said: list[str] = []

    def report_epoch(record) -> None:
        with tempfile.TemporaryDirectory() as folder:
            shutil.copy(checkpoint_file, Path(folder) / "last.pt")
            tune.report({EPOCH: record.epoch, "train_loss": record.train_loss, "epoch_seconds": record.seconds,
                         f"valid_{SELECTION_METRIC}": record.valid_score, BEST_METRIC: record.best_score,
                         "done": False, WARNINGS: "\n".join(said)},
                        checkpoint=tune.Checkpoint.from_directory(folder))
        said.clear()

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = lambda message, *args, **kwargs: said.append(str(message))
            result = run_trial(trial, store, node_work, report_epoch,
                               job_folder(experiment_dir, stage, trial.label(), trial.job.key))
    finally:  # the actor runs the next trial (reuse_actors): give back the GPU memory torch cached
        if device != "cpu":
            torch.cuda.empty_cache()
    # No EPOCH key: the scheduler (csrec.runner.scheduler) decides on the epoch reports only.
    tune.report({"best_epoch": result["best_epoch"], f"valid_{SELECTION_METRIC}": result["valid"][SELECTION_METRIC],
                 f"test_{SELECTION_METRIC}": result["test"][SELECTION_METRIC], "done": True,
                 "node_id": ray.get_runtime_context().get_node_id(),
                 "gpu_ids": ",".join(str(g) for g in ray.get_gpu_ids()),
                 "device": device, "device_name": device_record(device)["name"],
                 "began_at": began_at, "ended_at": time.time()})


@ray.remote(num_cpus=0)
def _missing_here(paths: dict[str, str]) -> tuple[str, list[str]]:
    """On one node (RayBackend.check_nodes): its host name, and the names of `paths` it cannot see."""
    return socket.gethostname(), [name for name, path in paths.items() if not os.path.exists(path)]


def _evaluate_task(job: Job, weights: dict, store_root: str, files: dict[str, str], num_threads: int) -> tuple:
    """A stopped point's best weights, evaluated on the device Ray granted the task (jobs.evaluate_weights)."""
    on_node(store_root, files, num_threads)
    job = on_granted_device(job)
    return evaluate_weights(job, weights, job.train.device)


def error_line(error: BaseException) -> str:
    """A Ray task's or trial's error as one line: its cause's, not Ray's wrapper traceback."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException):
        return first_line(cause)
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(error).__name__


def _fetch_stopped_checkpoints(results, trials: list[Trial], stopped: set[str], work_dir: Path) -> None:
    """A stopped trial's record is made here, on the driver, from its epoch checkpoint; on a cluster
    whose work folders are per node (object storage) that checkpoint is on the node that trained it,
    so it comes from the copy the trial reported to Tune's storage with its last epoch."""
    for result in results:
        trial = trials[result.config["point"]]
        target = Path(work_dir) / trial.job.key / "last.pt"
        if trial.job.key not in stopped or target.is_file() or result.checkpoint is None:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with result.checkpoint.as_directory() as folder:
            shutil.copy(Path(folder) / "last.pt", target)


class RayBackend:
    def __init__(self, address: str | None = None, log=print):
        self.log = log
        # A cluster the user named may gain GPU nodes (an autoscaler); a Ray started here has this machine's.
        self.joined = bool(address or os.environ.get("RAY_ADDRESS"))
        self._requests: dict[str, Resources] = {}
        start_ray(address, log)

    def request(self, name: str, spec) -> Resources:
        """What the run asks of Ray for `name` ("teacher_resources" or "trial_resources"): `feasible`,
        decided once a run, so that teachers and every stage's trials agree on the device."""
        if name not in self._requests:
            self._requests[name] = feasible(getattr(spec, name), self.log, self.joined,
                                            os.environ.get(WAIT_FOR_GPUS, "") == "1", name)
        return self._requests[name]

    def check(self, spec) -> None:
        """Every request of the spec fits a node of the cluster (after a GPU request became CPU), and
        train.device can be honoured on what Ray grants."""
        if spec.train.device.startswith("cuda:"):
            raise CSRecError(cuda_index_refused(spec.train.device))
        for name in ("teacher_resources", "trial_resources"):
            resources = self.request(name, spec)
            if resources.gpu > 0 and ray.cluster_resources().get("GPU", 0) <= 0:
                continue  # waiting for GPU nodes (feasible said so): no node of today's cluster holds it
            check_fits(name, resources)
            if spec.train.device == "cuda" and resources.gpu <= 0:
                raise CSRecError(f"train.device is 'cuda' but {name} asks for no GPU, and a Ray job uses only what "
                                 f"Ray grants it: set gpu in {name} (e.g. 0.25), or train.device: auto")
            if spec.train.device == "cpu" and resources.gpu > 0:
                self.log(f"warning: train.device is 'cpu': the {resources.gpu:g} GPU per task of {name} is "
                         "reserved but unused")

    def check_nodes(self, experiment) -> None:
        """On a cluster the user named, with the experiment in a folder (not on object storage): every
        node up now must see that folder (a file written here is looked for there) and the spec's data
        files at their paths, or the run is refused in one line before anything trains: a node's
        tasks would write models the driver never sees, or fail one by one. Nodes that join later
        are not checked. Object storage needs no check: data files travel through it (csrec.datafiles)."""
        if not self.joined or isinstance(experiment.directory, RemotePath):
            return
        marker = experiment.directory / f".csrec-node-check-{uuid.uuid4().hex}"
        marker.write_text("written by the driver; removed once every node has looked for it\n")
        try:
            paths = {"storage": str(marker)}
            for name, config in experiment.spec.datasets.items():
                paths[f"datasets.{name}.path"] = str(config.path)
                if config.attributes is not None:  # S3Rec's pretraining reads it on a node
                    paths[f"datasets.{name}.attributes"] = str(config.attributes)
            nodes = [n for n in ray.nodes() if n.get("Alive")]
            looks = {n["NodeManagerAddress"]: _missing_here.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
                n["NodeID"], soft=False)).remote(paths) for n in nodes}
            for address, ref in looks.items():
                host, missing = ray.get(ref, timeout=NODE_CHECK_TIMEOUT_S)
                if missing:
                    name = missing[0]
                    what = experiment.directory if name == "storage" else paths[name]
                    raise CSRecError(f"{name}: {what} is not on node {host} ({address}) of the cluster; nodes share "
                                     "nothing at that path: put it on a file system every node mounts at the same "
                                     "path, or the experiment on object storage (storage: s3://...), which carries "
                                     "the data files to the nodes")
        except ray.exceptions.GetTimeoutError:
            self.log(f"warning: a node did not answer within {NODE_CHECK_TIMEOUT_S} s whether it sees "
                     f"{experiment.directory}; going on")
        finally:
            marker.unlink(missing_ok=True)

    def _evaluator(self, experiment):
        """evaluate(job, weights) for record_stopped: a Ray task with the trial's resources."""
        resources = self.request("trial_resources", experiment.spec)
        task = as_task(_evaluate_task, resources)
        store_root, files = str(experiment.store.root), experiment.data_files
        return lambda job, weights: ray.get(task.remote(job, weights, store_root, files, threads(resources)))

    def train_models(self, jobs: list[Job], experiment) -> None:
        resources = self.request("teacher_resources", experiment.spec)
        task = as_task(_train_model_task, resources)
        pending = {job.key: job for job in jobs}
        jobs_by_key = dict(pending)
        running: dict = {}
        done = 0
        view = LiveView(experiment, self.log)
        lanes = max(1, int(ray.cluster_resources().get("CPU", 1) // resources.cpu))
        # Tracked on the driver (csrec.tracking): the teachers' epochs reach it through the board.
        with closing(open_tracker(experiment)) as tracker:
            epochs = TeacherEpochs(experiment, len(jobs), min(lanes, len(jobs)), self.log, tracker)
            while pending or running:
                for key, job in list(pending.items()):
                    if not any(t.key in pending or t.key in running.values() for t in job.teachers):
                        tracker.start(job.describe(), "teachers", "teacher", tracking_params(job, "teachers"))
                        ref = task.remote(job, str(experiment.store.root), experiment.data_files,
                                          threads(resources), str(experiment.directory), epochs.reporter(job.describe()))
                        running[ref] = key
                        del pending[key]
                ready, _ = ray.wait(list(running), num_returns=1, timeout=5.0)
                epochs.poll()
                for ref in ready:
                    job = jobs_by_key[running.pop(ref)]
                    try:
                        key, node = ray.get(ref)
                    except Exception as error:  # out of retries: the students of this teacher cannot run
                        epochs.ended(job.describe(), "failed")
                        tracker.end(job.describe(), failed=True)
                        raise teacher_failed(job, error_line(error)) from None
                    epochs.ended(job.describe())
                    tracker.end(job.describe(), tracking_final(read_result(experiment.store, job)))
                    self.log(f"teacher {job.describe()} [{key}]: trained on node {node[:8]}")  # Ray's ids are 56 long
                    done += 1
                view.teachers(done=done, running=len(running), pending=len(pending), total=len(jobs))

    def run_trials(self, stage: str, trials: list[Trial], experiment) -> dict[str, str]:
        """The stage's trials in one Tuner; returns trial key -> error of those that failed. A trial
        the scheduler stopped (in an earlier driver too) gets its record instead of a Tune trial."""
        trials = record_stopped(trials, experiment.store, experiment.work_dir, self.log,
                                self._evaluator(experiment))
        if not trials:
            return {}
        return self._tune(stage, trials, self._grid_searcher(f"{experiment.spec.name}-{stage}", len(trials)),
                          experiment)

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
        resources = resources or self.request("trial_resources", experiment.spec)
        cluster = ray.cluster_resources()
        fits = how_many(cluster.get("CPU", 1), resources.cpu)
        if resources.gpu > 0:
            fits = min(fits, how_many(cluster.get("GPU", 0), resources.gpu))
        return experiment.spec.max_concurrent_trials or max(1, fits)

    def _tune(self, stage: str, trials: list[Trial], searcher, experiment) -> dict[str, str]:
        """Run the Tune experiment `stage` over `trials` in a new folder (module docstring)."""
        spec, work = experiment.spec, experiment.work_dir
        scheduler = stage_scheduler(stage, trials, spec.scheduler, spec.train.max_epochs, experiment.store, work)
        resources = self.request("trial_resources", experiment.spec)
        tune_dir = experiment.directory / "tune"
        path = tune_dir / stage
        replaced = path.exists()
        if replaced:
            self.log(f"{stage}: the Tune folder {path} of an earlier driver is a cache, not restored; rebuilt from "
                     f"the store: {len(trials)} trial(s) without a record run in a new Tuner, each from its last "
                     "epoch checkpoint")
            remove_tree(path)
        # The point numbers Tune's folders show, for a reader (never read back: the trials travel in memory).
        write_json_atomic(tune_dir / f"{stage}.trials.json", [t.record() | {"label": t.label()} for t in trials])
        trainable = tune.with_resources(
            tune.with_parameters(student_trainable, trials=trials, store_root=str(experiment.store.root),
                                 files=experiment.data_files, num_threads=threads(resources),
                                 experiment_dir=str(experiment.directory), stage=stage),
            {"cpu": resources.cpu, "gpu": resources.gpu},
        )
        lanes = self.width(experiment, resources)
        view = LiveView(experiment, self.log, trials, EpochProgress(experiment, stage, len(trials), lanes, self.log))
        tuner = tune.Tuner(
            trainable,
            # reuse_actors: a worker process (torch imported, data set loaded and cached by
            # jobs._load) runs trial after trial instead of being started for each one.
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=len(trials),
                                        max_concurrent_trials=lanes, reuse_actors=True),
            run_config=tune.RunConfig(name=stage, **tune_storage(tune_dir), verbose=0,
                                      callbacks=[view, CSVLoggerCallback(), JsonLoggerCallback(),
                                                 *tracking_callbacks(experiment, stage, trials)],
                                      failure_config=tune.FailureConfig(max_failures=3),
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=1)),
        )
        how = "seed reruns train the full budget" if stage == "seeds" else spec.scheduler.describe(spec.train.max_epochs)
        curves = experiment.directory / FOLDER
        where = " (on object storage: copy it to this machine first)" if isinstance(curves, RemotePath) else ""
        self.log(f"{stage}: {how}; training curves: tensorboard --logdir {curves}{where}")
        started = time.time()
        with handlers_kept():  # Tune's Ctrl-C handler must not outlive its stage
            results = tuner.fit()
        stopped = set(getattr(scheduler, "stopped", {}))
        _fetch_stopped_checkpoints(results, trials, stopped, work)
        record_stopped(trials, experiment.store, work, self.log, self._evaluator(experiment))
        # Tune ends `fit` quietly on Ctrl-C (it saves its state and returns): a trial that neither
        # finished (its last report says done) nor failed, or was never started, means the stage was
        # stopped. Say so and stop the run, never go on to the next stage as if it had finished.
        ended = sum(r.error is not None or bool((r.metrics or {}).get("done"))
                    or trials[r.config["point"]].job.key in stopped for r in results)
        if ended < len(trials):
            self.log(f"{stage}: stopped with {len(trials) - ended} of {len(trials)} trials unfinished")
            raise KeyboardInterrupt(stage)
        # The stage's wall time and lanes, for benchmarks/utilization.py (Ray and Tune cost per trial).
        write_json_atomic(tune_dir / f"{stage}.timing.json",
                          {"seconds": time.time() - started, "lanes": lanes, "resumed": replaced})
        errors = {trials[r.config["point"]].job.key: error_line(r.error) for r in results if r.error is not None}
        self.log(f"{stage}: {len(results) - len(errors) - len(stopped)} trials finished, {len(stopped)} stopped early, "
                 f"{len(errors)} failed "
                 f"({time.time() - started:.0f} s)")
        for result in results:
            if result.error is not None:
                trial = trials[result.config["point"]]
                self.log(f"  failed: {trial.label()}: {errors[trial.job.key]}")
        return errors
