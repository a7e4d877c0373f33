"""The GPU path, checked on a machine without one (issue 26).

- A training step reads nothing back from the device: its aten ops are recorded (TorchDispatchMode)
  and none of them is a host read (`_local_scalar_dense`, what .item() and int() run), a count of
  True entries (`nonzero`, `masked_select`, indexing by a boolean mask), or a copy between host and
  device; the step is also run on the `meta` device, where any such read raises. Its result is
  bit for bit today's (the boolean-mask gathers it replaces).
- Devices under Ray: a Ray started in this process declares GPUs it does not have
  (`ray.init(num_gpus=2)`): a job granted a GPU sees Ray's ids and, torch having no CUDA, fails with
  one line; a job granted none runs on the CPU whatever CUDA_VISIBLE_DEVICES says.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from csrec.batching import Batch, TrainingData, batch_logits, epoch_generator, training_loss
from csrec.config import Resources
from csrec.data.splits import training_samples, training_sequences
from csrec.errors import CSRecError, FailedTrials
from csrec.models import MODELS, build_model
from csrec.objectives import (CrossEntropy, FrozenTeachers, SoftLabelStudent, TrainingLevelTeacher,
                              popularity_teacher)
from tests.conftest import make_sequence_data, quiet, write_smoke_spec

# aten ops that read a device tensor on the host, or make the device count a mask first
HOST_READS = {"aten._local_scalar_dense.default", "aten.item.default", "aten.nonzero.default",
              "aten.nonzero_static.default", "aten.masked_select.default", "aten.masked_scatter.default",
              "aten.masked_scatter_.default", "aten.unique_consecutive.default", "aten._unique2.default"}
INDEXING = ("aten.index.Tensor", "aten.index_put.default", "aten.index_put_.default", "aten._index_put_impl_.default")


class OpRecorder(TorchDispatchMode):
    """Every aten op run while active, with what makes it a host sync: a host read, indexing by a
    boolean mask, or a copy whose input and output live on different devices."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []
        self.syncs: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = str(func)
        self.ops.append(name)
        out = func(*args, **kwargs)
        if name in HOST_READS:
            self.syncs.append(name)
        if name in INDEXING and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1]):
            self.syncs.append(f"{name} by a boolean mask")
        if name in ("aten._to_copy.default", "aten.copy_.default"):
            source = args[1] if name == "aten.copy_.default" else args[0]
            target = args[0] if name == "aten.copy_.default" else out
            if source.device != target.device:
                self.syncs.append(f"{name} {source.device} -> {target.device}")
        return out


def small_model(name: str, data, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(name, data.n_items, data.max_len, embedding_size=16,
                       **({"num_heads": 2} if name == "sasrec" else {}))


def objective_of(kind: str, data, train):
    """Base and the soft-label objectives (SoftRec, CSRec-M/-D's cached teachers, CSRec-T's main teacher)."""
    if kind == "base":
        return CrossEntropy()
    if kind == "softrec":
        counts = torch.ones(data.n_items + 1)
        counts[1:5] = 10.0
        return SoftLabelStudent(0.5, 3.0, popularity=popularity_teacher(counts))
    teachers = [small_model("gru4rec", data, seed).eval() for seed in (1, 2)]
    if kind == "csrec-m":
        return SoftLabelStudent(0.75, 2.0, teacher=FrozenTeachers(teachers, train))
    torch.manual_seed(5)
    return TrainingLevelTeacher(FrozenTeachers(teachers[:1], train), data.n_items, alpha=0.25, rank=4)


OBJECTIVES = ("base", "softrec", "csrec-m", "training-level")


@pytest.fixture(scope="module")
def data():
    return make_sequence_data(n_sequences=60, n_items=40, max_len=8, seed=2)


def layout_data(data, layout: str):
    return training_sequences(data) if layout == "sequence" else training_samples(data)


def recorded_step(model, objective, batches, optimizer) -> OpRecorder:
    """One training step as fit runs it (the batch taken from the epoch's iterator included), recorded."""
    with OpRecorder() as recorder:
        batch = next(batches)
        loss = training_loss(model, objective, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return recorder


# ---- no host sync in a step ------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["sequence", "prefix"])
@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("name", MODELS)
def test_a_training_step_reads_nothing_back_from_the_device(data, name, objective, layout):
    train = layout_data(data, layout)
    model = small_model(name, data).train()
    loss_module = objective_of(objective, data, train)
    # Fused Adam is what fit uses on CUDA (train.make_optimizer); the for-each Adam of the CPU reads
    # its step counters, which live on the host there, with .item().
    optimizer = torch.optim.Adam(list(model.parameters()) + list(loss_module.parameters()), fused=True)
    batches = TrainingData(train, torch.device("cpu")).batches(16, "targets", seed=0, epoch=1)
    recorded_step(model, loss_module, batches, optimizer)  # the first step prepares the soft labels, once
    recorder = recorded_step(model, loss_module, batches, optimizer)
    assert len(recorder.ops) > 50  # the step ran under the recorder
    assert recorder.syncs == []


@pytest.mark.parametrize("layout", ["sequence", "prefix"])
@pytest.mark.parametrize("name", MODELS)
def test_a_step_on_the_meta_device_needs_no_value_of_a_tensor(data, name, layout):
    """On `meta` a tensor has no values: .item(), .tolist(), .cpu() or a boolean-mask gather raise.
    The step (batch, forward, loss, backward) runs there, and copies nothing from the host."""
    train = layout_data(data, layout)
    model = small_model(name, data).train().to("meta")
    loss_module = objective_of("softrec", data, train).to("meta")
    batches = TrainingData(train, torch.device("meta")).batches(16, "targets", seed=0, epoch=1)
    with OpRecorder() as recorder:
        for _ in range(2):
            training_loss(model, loss_module, next(batches)).backward()
    assert recorder.syncs == []


def test_the_default_cpu_adam_reads_its_step_counter_and_fused_adam_does_not():
    """Why fit takes fused Adam on CUDA: the for-each Adam's bias correction reads a step counter."""
    reads = {}
    for fused in (False, True):
        weight = torch.nn.Parameter(torch.ones(3))
        optimizer = torch.optim.Adam([weight], fused=fused)
        weight.grad = torch.ones(3)
        optimizer.step()
        with OpRecorder() as recorder:
            optimizer.step()
        reads[fused] = recorder.syncs
    assert reads == {False: ["aten._local_scalar_dense.default"], True: []}


# ---- the same batches and results as the boolean-mask gathers --------------------------------

def mask_batches(train, batch_size: int, seed: int, epoch: int) -> list[Batch]:
    """The sequence layout's batches as they were cut before issue 26 (one boolean-mask gather per
    field, the width read from the host): the reference."""
    tensors = {k: torch.as_tensor(np.asarray(v, dtype=np.int64))
               for k, v in (("item_seq", train.item_seq), ("lengths", train.lengths), ("targets", train.targets),
                            ("pair_index", train.pair_index))}
    row_lengths = tensors["lengths"]
    order = torch.randperm(len(row_lengths), generator=epoch_generator(seed, epoch))
    sizes = torch.unique_consecutive((row_lengths[order].cumsum(0) - 1) // batch_size, return_counts=True)[1]
    batches, start = [], 0
    for size in sizes.tolist():
        rows = order[start:start + size]
        width = int(row_lengths[rows].max())
        targets = tensors["targets"][rows, :width]
        positions = targets > 0
        batches.append(Batch(tensors["pair_index"][rows, :width][positions], tensors["item_seq"][rows, :width],
                             tensors["lengths"][rows], targets[positions], positions))
        start += size
    return batches


@pytest.mark.parametrize("name", MODELS)
def test_sequence_batches_and_step_results_equal_the_mask_gathers(data, name):
    train = training_sequences(data)
    reference = mask_batches(train, 16, seed=3, epoch=2)
    batches = list(TrainingData(train, torch.device("cpu")).batches(16, "targets", seed=3, epoch=2))
    assert len(batches) == len(reference) > 3
    for new, old in zip(batches, reference):
        for field in ("index", "item_seq", "lengths", "targets", "positions"):
            assert torch.equal(getattr(new, field), getattr(old, field)), field
        assert torch.equal(new.flat_positions, old.positions.flatten().nonzero().squeeze(1))
    # the step itself: loss and every gradient bit for bit, dropout drawn the same way
    results = []
    for batch in (batches[1], reference[1]):
        model = small_model(name, data).train()
        objective = objective_of("csrec-m", data, train)
        torch.manual_seed(7)
        loss = training_loss(model, objective, batch)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    assert torch.equal(results[0][0], results[1][0])
    assert len(results[0][1]) == len(results[1][1]) > 0
    assert all(torch.equal(a, b) for a, b in zip(results[0][1], results[1][1]))


def test_logits_by_index_equal_logits_by_mask(data):
    train = training_sequences(data)
    batch = next(TrainingData(train, torch.device("cpu")).batches(16, "targets", seed=0, epoch=1))
    model = small_model("sasrec", data).eval()
    by_mask = Batch(batch.index, batch.item_seq, batch.lengths, batch.targets, batch.positions)
    with torch.no_grad():
        assert torch.equal(batch_logits(model, batch), batch_logits(model, by_mask))


# ---- devices under Ray ------------------------------------------------------------------------

def test_granted_device_follows_rays_grant():
    from csrec.runner.ray_backend import granted_device

    two_gpus = lambda: 2  # noqa: E731 - torch.cuda.device_count() of a node with two GPUs visible
    # granted none: the CPU, whatever is visible (Ray >= 2.49 sets no CUDA_VISIBLE_DEVICES then)
    assert granted_device("auto", [], visible="0,1", cuda_count=two_gpus) == "cpu"
    assert granted_device("auto", [], visible=None, cuda_count=two_gpus) == "cpu"
    # granted one: the first of the visible set Ray made of the grant, or the id where Ray set none
    assert granted_device("auto", [1], visible="1", cuda_count=lambda: 1) == "cuda:0"
    assert granted_device("cuda", ["3"], visible="2,3", cuda_count=two_gpus) == "cuda:1"
    assert granted_device("auto", [1], visible="", cuda_count=two_gpus) == "cuda:1"
    assert granted_device("cpu", [0], visible="0", cuda_count=two_gpus) == "cpu"  # explicit: kept
    with pytest.raises(CSRecError, match=r"^Ray granted this job GPU 0 but torch .* sees no CUDA device .*gpu: 0"):
        granted_device("auto", [0], visible="0", cuda_count=lambda: 0)
    with pytest.raises(CSRecError, match="train.device is 'cuda' but Ray granted this job no GPU"):
        granted_device("cuda", [], visible="0", cuda_count=two_gpus)
    with pytest.raises(CSRecError, match="train.device is 'cuda:1', but a Ray job sees only the GPUs Ray granted"):
        granted_device("cuda:1", [1], visible="1", cuda_count=lambda: 1)


def test_gpu_counts_are_fixed_point_as_rays():
    from csrec.runner.ray_backend import how_many

    assert 1 // 0.2 == 4.0 and 2 // 0.2 == 9.0  # the floats the width was computed with
    assert [how_many(1, 0.2), how_many(2, 0.2), how_many(1, 0.25), how_many(1, 0.3), how_many(3, 1)] == [5, 10, 4, 3, 3]
    assert how_many(2, 0.1) == 20 and how_many(0.5, 1) == 0


def test_a_gpu_request_on_a_cluster_showing_no_gpu_stops_or_waits_never_turns_into_cpu():
    import warnings

    from csrec.runner.ray_backend import WAIT_FOR_GPUS, feasible

    no_gpu = {"CPU": 8.0}
    request = Resources(cpu=1, gpu=0.5)
    with pytest.raises(CSRecError, match=rf"^trial_resources asks for 0.5 GPU per task but the Ray cluster shows no "
                                         rf"GPU: set {WAIT_FOR_GPUS}=1 .* or gpu: 0"):
        feasible(request, joined=True, name="trial_resources", cluster=no_gpu)
    lines = []
    assert feasible(request, lines.append, joined=True, wait=True, cluster=no_gpu) == request
    assert "wait for GPU nodes to join" in lines[0]
    with pytest.warns(UserWarning, match="Ray started in this process, on a machine without a GPU"):
        assert feasible(request, joined=False, cluster=no_gpu) == Resources(cpu=1, gpu=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert feasible(request, joined=True, cluster={"CPU": 8.0, "GPU": 1.0}) == request


@pytest.fixture(scope="module")
def gpu_ray():
    """Ray in this process declaring two GPUs this machine does not have, its workers started with
    CUDA_VISIBLE_DEVICES set (as a GPU node's environment may have it)."""
    import shutil
    import tempfile

    import ray

    from csrec.runner.ray_backend import _loopback_only, start_ray

    folder = tempfile.mkdtemp(prefix="csr", dir="/tmp")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("RAY_ADDRESS", raising=False)
        patch.setenv("RAY_TMPDIR", folder)
        patch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
        _loopback_only()
        ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False,
                 _node_ip_address="127.0.0.1", object_store_memory=200 * 1024 * 1024, configure_logging=False)
        start_ray(log=quiet)  # the runner's settings; this Ray is kept
        yield ray
        ray.shutdown()
    shutil.rmtree(folder, ignore_errors=True)


def test_a_task_granted_a_gpu_runs_in_a_process_of_its_own(gpu_ray):
    """as_task: what the teachers and the stopped points' evaluations run as (max_calls=1 with a GPU)."""
    from csrec.runner.ray_backend import as_task

    def probe():  # where the task ran (defined here: Ray's workers cannot import this test module)
        import os

        import ray

        return (os.getpid(), [str(g) for g in ray.get_gpu_ids()], os.environ.get("CUDA_VISIBLE_DEVICES"),
                ray.get_runtime_context().get_assigned_resources())

    gpu = [gpu_ray.get(as_task(probe, Resources(cpu=1, gpu=0.5)).remote()) for _ in range(3)]
    assert len({pid for pid, *_ in gpu}) == 3  # a new worker process each time
    assert all(ids == ["0"] or ids == ["1"] for _, ids, _, _ in gpu)
    assert all(visible == ids[0] for _, ids, visible, _ in gpu)  # Ray made the grant the visible set
    assert all(resources == {"CPU": 1.0, "GPU": 0.5} for *_, resources in gpu)
    cpu = [gpu_ray.get(as_task(probe, Resources(cpu=1)).remote()) for _ in range(3)]
    assert len({pid for pid, *_ in cpu}) == 1  # workers without a GPU are reused, as before
    assert {(tuple(ids), visible) for _, ids, visible, _ in cpu} == {((), "0,1")}  # every GPU visible: Ray sets none


def smoke_spec(folder, name: str, **changes):
    """The smoke data, SoftRec only (no teachers): one search trial, no seed reruns."""
    return write_smoke_spec(folder, name, methods=["softrec"], seeds=[0],
                            search={"softrec": {"beta": [0.5], "temperature": [3.0]}}, **changes)


def test_cuda_n_and_cuda_without_a_gpu_request_are_refused_under_ray(tmp_path, gpu_ray):
    from csrec.config import load_spec
    from csrec.runner.ray_backend import RayBackend

    backend = RayBackend(log=quiet)
    with pytest.raises(CSRecError, match=r"^train.device is 'cuda:1', but a Ray job sees only the GPUs Ray granted "
                                         r"it \(as cuda:0\): set train.device: auto"):
        backend.check(load_spec(smoke_spec(tmp_path, "a", train={"device": "cuda:1"})))
    with pytest.raises(CSRecError, match="train.device is 'cuda' but teacher_resources asks for no GPU"):
        backend.check(load_spec(smoke_spec(tmp_path, "b", train={"device": "cuda"})))
    lines = []
    RayBackend(log=lines.append).check(load_spec(smoke_spec(tmp_path, "c", train={"device": "cpu"},
                                                            trial_resources={"cpu": 1, "gpu": 0.5})))
    assert lines == ["warning: train.device is 'cpu': the 0.5 GPU per task of trial_resources is reserved but unused"]


def test_the_width_counts_fractional_gpus_as_ray_does(tmp_path, gpu_ray):
    from csrec.runner.experiment import Experiment
    from csrec.runner.ray_backend import RayBackend

    experiment = Experiment.open(smoke_spec(tmp_path, "w", trial_resources={"cpu": 0.1, "gpu": 0.2}), log=quiet)
    assert RayBackend(log=quiet).width(experiment) == 10  # 2 GPUs / 0.2 (the float 2 // 0.2 is 9)


def final_reports(directory) -> list[dict]:
    return [json.loads(row) for path in (directory / "tune").glob("*/*/result.json")
            for row in path.read_text().splitlines() if json.loads(row)["done"]]


def test_a_trial_granted_half_a_gpu_fails_with_one_line_when_torch_has_no_cuda(tmp_path, gpu_ray):
    from csrec.runner import run_experiment

    spec = smoke_spec(tmp_path, "half", trial_resources={"cpu": 1, "gpu": 0.5})
    with pytest.raises(FailedTrials) as failed:
        run_experiment(spec, log=quiet, table=False)
    message = str(failed.value)
    assert "\n" not in message
    assert re.search(r"\(CSRecError: Ray granted this job GPU [01] but torch \S+ sees no CUDA device \(torch's CUDA: "
                     r"none, a CPU build; CUDA_VISIBLE_DEVICES='[01]'\): install a CUDA build of torch where the Ray "
                     r"workers run, or set gpu: 0", message), message
    assert not list((tmp_path / "half" / "store" / "models").glob("*/result.json"))  # nothing ran on the CPU


def test_a_trial_granted_no_gpu_runs_on_the_cpu_and_records_it(tmp_path, gpu_ray):
    import platform

    from csrec.runner import run_experiment

    spec = smoke_spec(tmp_path, "zero", trial_resources={"cpu": 1, "gpu": 0})
    run_experiment(spec, log=quiet, table=False)
    (report,) = final_reports(tmp_path / "zero")
    assert (report["gpu_ids"], report["device"], report["device_name"]) == ("", "cpu", platform.machine())
    store = tmp_path / "zero" / "store"
    (record,) = [json.loads(p.read_text()) for p in (store / "trials").glob("*/result.json")]
    (model,) = [json.loads(p.read_text()) for p in (store / "models").glob("*/result.json")]
    assert record["device"] == model["device"] == {"kind": "cpu", "name": platform.machine()}


def test_a_stopped_point_is_evaluated_as_a_ray_task_with_the_trials_resources(tmp_path, gpu_ray):
    """The driver's evaluator of stopped points (record_stopped): granted half a GPU it fails as a
    trial would here (torch has no CUDA), granted none it gives the scores of the CPU."""
    from csrec.jobs import evaluate_weights, splits_for
    from csrec.runner.experiment import Experiment
    from csrec.runner.plan import make_plan
    from csrec.runner.ray_backend import RayBackend

    experiment = Experiment.open(smoke_spec(tmp_path, "e", trial_resources={"cpu": 1, "gpu": 0.5}), log=quiet)
    (trial,) = make_plan(experiment.spec).trials
    data = splits_for(trial.job).data
    weights = build_model("gru4rec", data.n_items, data.max_len, **dict(trial.job.model_overrides)).state_dict()
    with pytest.raises(Exception, match="Ray granted this job GPU [01] but torch .* sees no CUDA device"):
        RayBackend(log=quiet)._evaluator(experiment)(trial.job, weights)
    on_cpu = Experiment.open(smoke_spec(tmp_path, "f", trial_resources={"cpu": 1, "gpu": 0}), log=quiet)
    metrics, frame = RayBackend(log=quiet)._evaluator(on_cpu)(trial.job, weights)
    local_metrics, local_frame = evaluate_weights(trial.job, weights, "cpu")
    assert metrics == local_metrics
    assert frame.equals(local_frame)


# ---- TF32, fused Adam, the memory cap, the recorded device -------------------------------------

def test_tf32_is_set_explicitly_off_by_default_and_an_option_and_in_the_key_when_on(data):
    from csrec.train import TrainConfig, fit, set_tf32

    set_tf32(True)
    assert (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision,
            torch.backends.cudnn.rnn.fp32_precision) == ("tf32", "tf32", "tf32")
    model = small_model("gru4rec", data)
    fit(model, training_sequences(data), lambda m: 0.0, TrainConfig(max_epochs=1, device="cpu", progress=False))
    assert (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision,
            torch.backends.cudnn.rnn.fp32_precision) == ("ieee", "ieee", "ieee")  # fit's default: off
    assert "allow_tf32" not in TrainConfig().key_fields  # keys made before the option name the same models
    assert TrainConfig(allow_tf32=True).key_fields["allow_tf32"] is True
    with pytest.raises(CSRecError, match="train.allow_tf32 must be true or false, got 1"):
        TrainConfig(allow_tf32=1)


def test_adam_is_fused_on_cuda_only():
    from csrec.train import TrainConfig, make_optimizer

    weight = torch.nn.Parameter(torch.ones(2))
    assert make_optimizer([weight], TrainConfig(), torch.device("cuda")).defaults["fused"] is True
    assert not make_optimizer([weight], TrainConfig(), torch.device("cpu")).defaults["fused"]


def test_the_memory_cap_applies_to_a_fraction_of_a_gpu_only():
    from csrec.train import cap_gpu_memory

    cap_gpu_memory("cpu", 0.25)  # no GPU: nothing to cap (and nothing asks torch for CUDA)
    cap_gpu_memory("cuda:0", 1.0)  # a whole GPU: no cap, so no CUDA call on this machine either
    cap_gpu_memory("cuda:0", 0.0)
    with pytest.raises((RuntimeError, AssertionError)):  # a fraction of a GPU: torch is asked (and has no CUDA here)
        cap_gpu_memory("cuda:0", 0.25)


def test_a_trained_model_and_its_checkpoint_record_the_device(tmp_path, data):
    import platform

    from csrec.train import TrainConfig, device_record, fit

    checkpoint = tmp_path / "last.pt"
    fit(small_model("gru4rec", data), training_sequences(data), lambda m: 0.0,
        TrainConfig(max_epochs=1, device="cpu", progress=False), checkpoint_path=checkpoint)
    assert torch.load(checkpoint, weights_only=True)["device"] == {"kind": "cpu", "name": platform.machine()}
    assert device_record(torch.device("cpu")) == device_record("cpu") == {"kind": "cpu", "name": platform.machine()}


@pytest.mark.cluster
def test_joining_a_cluster_without_gpus_stops_with_one_line_never_a_cpu_run(tmp_path):
    """`launch.py run --address` to a real cluster (`ray start --head --num-gpus 0`): the spec's GPU
    request is not turned into a CPU one (an autoscaler would never add GPU nodes for it)."""
    import subprocess
    import sys

    from tests.test_cluster import ROOT, Cluster

    cluster = Cluster()
    try:
        cluster._ray("start", "--head", "--port", cluster.address.split(":")[1], "--num-cpus", "1", "--num-gpus", "0",
                     "--include-dashboard", "false", "--temp-dir", str(cluster.folder / "ray"),
                     "--disable-usage-stats", "--object-store-memory", str(200 * 1024 * 1024))
        spec = smoke_spec(tmp_path, "joined", trial_resources={"cpu": 1, "gpu": 0.5})
        done = subprocess.run([sys.executable, "launch.py", "run", str(spec), "--address", cluster.address],
                              cwd=ROOT, env=cluster.env, capture_output=True, text=True, timeout=300)
    finally:
        cluster.stop()
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if "GPU" in line]
    assert errors == ["error: trial_resources asks for 0.5 GPU per task but the Ray cluster shows no GPU: set "
                      "CSREC_WAIT_FOR_GPUS=1 to wait for GPU nodes (an autoscaler's), or gpu: 0 in the spec to train "
                      "on CPUs"], done.stderr[-2000:]
    assert "running on CPU" not in done.stdout + done.stderr
    assert not (tmp_path / "joined" / "store").exists()  # nothing trained
