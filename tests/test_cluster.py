"""A real two-node Ray cluster on this machine: a head with 1 CPU, a second node with 2 CPUs and 1 GPU
(logical: Ray declares it, no device is needed), joined by `launch.py run SPEC --address`.

Teachers (cpu 1) may go to either node; student trials ask for {cpu: 1, gpu: 0.5}, so they must all
run on the GPU node, two at a time on its one GPU. Token authentication stays on, with a token of
this test's own (RAY_AUTH_TOKEN_PATH). The nodes live in their own Ray temp folder and carry an
environment marker; teardown ends exactly those processes by pid (`ray stop` would end every Ray
on the machine, other users' included). Deselect with `-m "not cluster"`.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from conftest import write_smoke_spec

from csrec.config import load_spec
from csrec.runner.experiment import seed_trials
from csrec.runner.plan import make_plan
from csrec.runner.trials import trial_result
from csrec.store import Store

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[1]
MARK = "CSREC_TEST_CLUSTER"
RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Cluster:
    """Head and GPU node started with `ray start`, each process marked in its environment."""

    def __init__(self):
        self.folder = Path(tempfile.mkdtemp(prefix="csr", dir="/tmp"))  # short: Ray's socket paths
        self.mark = uuid.uuid4().hex
        token = self.folder / "auth_token"
        token.write_text(secrets.token_hex(32))
        # Without this process's RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, set by a Ray started in it by an
        # earlier test (csrec.runner.ray_backend._loopback_only): `ray start --address` refuses under it.
        left_out = ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
        self.env = {k: v for k, v in os.environ.items() if k not in left_out} | {
            "RAY_TMPDIR": str(self.folder), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
            "OMP_NUM_THREADS": "1", MARK: self.mark}
        self.address = f"127.0.0.1:{free_port()}"

    def start(self) -> None:
        common = ["--disable-usage-stats", "--object-store-memory", str(200 * 1024 * 1024)]
        self._ray("start", "--head", "--port", self.address.split(":")[1], "--num-cpus", "1", "--num-gpus", "0",
                  "--include-dashboard", "false", "--temp-dir", str(self.folder / "ray"), *common)
        self._ray("start", "--address", self.address, "--num-cpus", "2", "--num-gpus", "1", *common)

    def _ray(self, *args: str) -> None:
        done = subprocess.run([RAY, *args], env=self.env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    def processes(self) -> list[int]:
        mark = f"{MARK}={self.mark}".encode()
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if mark in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                    found.append(int(pid))
            except OSError:  # gone, or not ours to read
                continue
        return found

    def stop(self) -> None:
        for pid in self.processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.time() + 10
        while self.processes() and time.time() < deadline:
            time.sleep(0.2)
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    cluster = Cluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
    assert not cluster.processes()


write_spec = write_smoke_spec


def test_smoke_runs_on_both_nodes_with_half_a_gpu_per_trial(tmp_path, cluster):
    # Three teachers at once (a Base run, CSRec-D's two), then two CSRec-D trials sharing the GPU.
    # Sixty epochs: a trial lasts seconds, so the second's actor start-up cannot outlast the first.
    spec = write_spec(tmp_path, "exp", methods=["base", "csrec-d"], seeds=[0],
                      search={"csrec-d": {"beta": [0.5, 0.75], "temperature": [3.0]}},
                      # device cpu: the GPU is logical (Ray's scheduling only); under `auto` a trial granted it
                      # fails, torch having no CUDA here (tests/test_gpu_path.py)
                      train={"max_epochs": 60, "patience": 60, "batch_size": 64, "progress": False, "num_threads": 1,
                             "device": "cpu"},
                      teacher_resources={"cpu": 1}, trial_resources={"cpu": 1, "gpu": 0.5})
    done = subprocess.run([sys.executable, "launch.py", "run", str(spec), "--address", cluster.address],
                          cwd=ROOT, env=cluster.env, capture_output=True, text=True, timeout=500)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    assert "'GPU': 1.0" in log and "has none" not in log  # the driver saw the GPU and kept the request

    plan = make_plan(load_spec(spec))
    store = Store(tmp_path / "exp" / "store")
    planned = plan.trials + seed_trials(plan, store)
    assert len(planned) == 3 and all(trial_result(store, t) is not None for t in planned)

    teacher_nodes = [line.rsplit(" ", 1)[1] for line in log.splitlines() if ": trained on node " in line]
    assert len(teacher_nodes) == len(plan.teachers) == 3
    runs = []
    for path in (tmp_path / "exp" / "tune" / "search").glob("*/result.json"):
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        final = rows[-1]
        assert final["done"]
        runs.append((final["began_at"], final["ended_at"], final["node_id"], final["gpu_ids"]))
    assert len(runs) == 2
    assert {gpus for *_, gpus in runs} == {"0"}  # both trials were given GPU 0
    (gpu_node,) = {node for _, _, node, _ in runs}  # all trials on the GPU node
    assert len(set(teacher_nodes) | {gpu_node[:8]}) == 2  # and work went to the head node too (the log shows 8 chars)
    (a_start, a_end, *_), (b_start, b_end, *_) = runs
    assert a_start < b_end and b_start < a_end  # two trials on one GPU at the same time


def test_without_an_address_ray_starts_in_the_process_even_after_ray_start(cluster):
    # `ray start` left this cluster's address in RAY_TMPDIR/ray/ray_current_cluster; the runner's
    # Ray without --address must still be its own single node, not that cluster.
    code = ("from csrec.runner.ray_backend import start_ray; import ray; start_ray(log=lambda _: None); "
            "print(len(ray.nodes()), ray.cluster_resources().get('GPU', 0.0))")
    assert (cluster.folder / "ray" / "ray_current_cluster").is_file()
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=cluster.env, capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-2:] == ["1", "0.0"]
