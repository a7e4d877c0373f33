"""A two-node Ray cluster whose nodes share no file system and no network but a veth pair: the case
object storage exists for (issue #24).

Each node is a network, a mount and a host-name namespace of its own, held open by a `sleep`
process (`unshare --net --mount --uts`): its own host name; its /tmp a folder of this test's own
(bound over /tmp, so what one node writes there the other cannot see), but for /tmp/shared, which
both see (a shared file system); its /dev/shm a tmpfs of its own; its HOME inside its /tmp, under a
name of its own (/tmp/home-head, /tmp/home-worker).
The two are joined by a veth pair made inside the namespaces (never on the host) with addresses of
a 10.213.X.0/24 that no host interface has. The head runs Ray's head, the S3-protocol test server
(moto, on the head's veth address, reachable from both) and the driver; the other node runs a Ray
worker node. The code and the virtual environment are the only host paths both see.

The smoke spec and its data file lie in the head's /tmp only. It runs with `storage: s3://...`,
is killed (-9) once trials are stored, is resumed, and must give the local run's table with nothing
finished made again. Both nodes must have trained: whatever the worker node read, it read from
object storage. Teardown ends every process in the namespaces (which removes them and the veth
pair) in every outcome. Namespaces that cannot be made fail the test: CI has root, as this does.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import SMOKE, write_smoke_spec
from test_object_storage import BUCKET, SECRET, assert_same_results, created, unexpected_tracebacks

from analysis import comparison_table

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
RAY_PORT, S3_PORT = 6379, 9000


def free_subnet() -> ipaddress.IPv4Network:
    """A 10.213.X.0/24 that none of the host's interfaces has an address in."""
    shown = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True).stdout
    used = [ipaddress.ip_interface(word) for line in shown.splitlines() for word in line.split()[3:4]]
    for third in secrets.SystemRandom().sample(range(256), 256):
        subnet = ipaddress.ip_network(f"10.213.{third}.0/24")
        if not any(address.ip in subnet or subnet.overlaps(address.network) for address in used):
            return subnet
    raise AssertionError("every 10.213.X.0/24 is used by the host")


def shown_paths() -> list[Path]:
    """Host paths under /tmp that every node must still see once its own /tmp covers the host's:
    the code, the virtual environment and the Python they run (a clean clone for CI may lie in /tmp)."""
    wanted = {ROOT, Path(sys.prefix), Path(sys.base_prefix), Path(sys.executable).resolve().parent}
    return sorted(p for p in wanted if p.is_relative_to("/tmp") and p != Path("/tmp"))


class Node:
    """A process holding a network and a mount namespace open; commands run inside through nsenter."""

    def __init__(self, name: str, folder: Path, address: str, env: dict[str, str], shared: Path):
        self.name, self.folder, self.address = name, folder, address
        folder.mkdir(parents=True)
        places = [(p, p.relative_to("/tmp")) for p in shown_paths()] + [(shared, "shared")]
        binds = "".join(f"mkdir -p '{folder / inside}' && mount --bind '{host}' '{folder / inside}' && "
                        for host, inside in places)
        script = (f"set -e; hostname csrec-{name}; {binds}mount --rbind '{folder}' /tmp && "
                  f"mount -t tmpfs -o size=1g tmpfs /dev/shm && mkdir -p /tmp/home-{name} && echo ready && "
                  "exec sleep infinity")
        self.holder = subprocess.Popen(["unshare", "--net", "--mount", "--uts", "--propagation", "private", "--",
                                        "sh", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        said = self.holder.stdout.readline().strip()
        if said != "ready":
            self.holder.wait(timeout=10)
            pytest.fail(f"cannot make the network and mount namespaces of node {name} (unshare --net --mount: "
                        f"{self.holder.stderr.read().strip() or 'exit ' + str(self.holder.returncode)}); this test "
                        "needs root on Linux, which CI has, and is never skipped")
        self.pid = self.holder.pid
        self.namespace = os.readlink(f"/proc/{self.pid}/ns/net")
        self.env = env | {"HOME": f"/tmp/home-{name}", "RAY_AUTH_TOKEN_PATH": "/tmp/ray_token"}

    def command(self, *args: str) -> list[str]:
        return ["nsenter", "-t", str(self.pid), "--net", "--mount", "--uts", f"--wd={ROOT}", "--", *args]

    def start(self, *args: str, log: Path) -> subprocess.Popen:
        with open(log, "a") as out:
            return subprocess.Popen(self.command(*args), env=self.env, stdout=out, stderr=subprocess.STDOUT)

    def run(self, *args: str, timeout: float = 180) -> str:
        done = subprocess.run(self.command(*args), env=self.env, capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, f"{self.name}: {' '.join(args)[:200]}\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        return done.stdout

    def python(self, code: str, timeout: float = 180) -> str:
        return self.run(sys.executable, "-c", code, timeout=timeout)

    def processes(self) -> list[int]:
        """Every process in this node's network namespace (the holder, Ray's, the driver, moto)."""
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/ns/net") == self.namespace:
                    found.append(int(pid))
        return found

    def end(self) -> None:
        deadline = time.time() + 30
        while (pids := self.processes()) and time.time() < deadline:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.holder.wait(timeout=5)


class NamespaceCluster:
    """Head (Ray head, moto, the driver) and worker, each in its own namespaces, joined by a veth pair."""

    def __init__(self, folder: Path):
        subnet = free_subnet()
        self.folder = folder
        self.head_ip, self.worker_ip = (str(subnet.network_address + i) for i in (1, 2))
        self.s3 = f"http://{self.head_ip}:{S3_PORT}"
        self.env = {"PATH": os.environ["PATH"], "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
                    "RAY_AUTH_MODE": "token", "AWS_ENDPOINT_URL_S3": self.s3, "AWS_ACCESS_KEY_ID": "dummy-key-id",
                    "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1",
                    "AWS_EC2_METADATA_DISABLED": "true"}
        self.nodes: list[Node] = []  # each one as soon as it exists: `end` ends what `start` made
        self.veth = f"csr{secrets.token_hex(3)}"
        self.shared = folder / "shared"  # /tmp/shared on both nodes: a file system they share (NFS, say)

    def start(self, log: Path) -> None:
        self.shared.mkdir()
        for name, address in (("head", self.head_ip), ("worker", self.worker_ip)):
            self.nodes.append(Node(name, self.folder / name, address, self.env, self.shared))
        self.head, self.worker = self.nodes
        subprocess.run(["ip", "link", "add", "name", f"{self.veth}h", "netns", str(self.head.pid), "type", "veth",
                        "peer", "name", f"{self.veth}w", "netns", str(self.worker.pid)],
                       check=True, capture_output=True)
        token = secrets.token_hex(32)
        for node, end in ((self.head, "h"), (self.worker, "w")):
            (node.folder / "ray_token").write_text(token)  # given to each node, as an operator would
            for step in (["ip", "link", "set", "lo", "up"],
                         ["ip", "addr", "add", f"{node.address}/24", "dev", self.veth + end],
                         ["ip", "link", "set", self.veth + end, "up"]):
                node.run(*step)
        self.moto = self.head.start(sys.executable, "-m", "moto.server", "-H", self.head_ip, "-p", str(S3_PORT),
                                    log=log)
        self.head.python(f"""
import time, pyarrow.fs as fs
deadline = time.time() + 60
while True:
    try:
        fs.S3FileSystem(endpoint_override="{self.s3}", allow_bucket_creation=True).create_dir("{BUCKET}"); break
    except OSError:
        assert time.time() < deadline, "moto did not start"; time.sleep(0.3)
""")
        common = ["--disable-usage-stats", "--object-store-memory", str(200 * 1024 * 1024)]
        self.head.run(RAY, "start", "--head", "--node-ip-address", self.head_ip, "--port", str(RAY_PORT), "--num-cpus",
                      "1", "--num-gpus", "0", "--include-dashboard", "false", *common)
        self.worker.run(RAY, "start", "--address", f"{self.head_ip}:{RAY_PORT}", "--node-ip-address", self.worker_ip,
                        "--num-cpus", "1", "--num-gpus", "0", *common)

    def end(self) -> None:
        for node in self.nodes:
            node.end()


def snapshot(node: Node, uri: str, target: str) -> None:
    """Copy the experiment at `uri` into `target` on `node` (its /tmp: the test reads it from the host)."""
    node.python(f"import pyarrow.fs as fs; from csrec.storage import location; place = location('{uri}'); "
                f"fs.copy_files(place.path, '{target}', source_filesystem=place.fs)")


@pytest.fixture(scope="module")
def namespace_run(tmp_path_factory):
    """The smoke spec on S3 from the head, killed once trials are stored, resumed. Returns the head's
    folder (its /tmp), the stored artifacts' creation times before the kill, and the drivers' log."""
    folder = tmp_path_factory.mktemp("namespaces")
    cluster = NamespaceCluster(folder)
    try:
        cluster.start(folder / "moto.log")
        head_tmp = cluster.head.folder
        experiment = head_tmp / "exp"
        experiment.mkdir()
        data = SMOKE.parent / yaml.safe_load(SMOKE.read_text())["datasets"]["smoke"]["path"]
        shutil.copy(data, experiment / "smoke.csv")
        spec = write_smoke_spec(experiment, "smoke", storage=f"s3://{BUCKET}/runs/smoke")
        raw = yaml.safe_load(spec.read_text())
        raw["datasets"]["smoke"]["path"] = "/tmp/exp/smoke.csv"  # the head's /tmp: no other node has it
        spec.write_text(yaml.safe_dump(raw, sort_keys=False))
        log = folder / "driver.log"
        address = f"{cluster.head_ip}:{RAY_PORT}"
        driver = cluster.head.start(sys.executable, "launch.py", "run", "/tmp/exp/smoke.yaml", "--address", address,
                                    log=log)
        deadline = time.time() + 500
        while sum(line.startswith("done ") for line in log.read_text().splitlines()) < 2:
            assert driver.poll() is None, "the driver ended before the moment to kill it:\n" + log.read_text()[-4000:]
            assert time.time() < deadline, log.read_text()[-4000:]
            time.sleep(0.2)
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        snapshot(cluster.head, f"s3://{BUCKET}/runs/smoke", "/tmp/killed")
        before = created(head_tmp / "killed")
        resumed = cluster.head.start(sys.executable, "launch.py", "resume", f"s3://{BUCKET}/runs/smoke", "--address",
                                     address, log=log)
        assert resumed.wait(timeout=500) == 0, log.read_text()[-4000:]
        snapshot(cluster.head, f"s3://{BUCKET}/runs/smoke", "/tmp/final")
        yield cluster, before, log.read_text()
    finally:
        cluster.end()
        left = [p for node in cluster.nodes for p in node.processes()]
        shown = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
        shutil.rmtree(folder, ignore_errors=True)
    assert not left, f"processes left in the namespaces: {left}"
    assert cluster.veth not in shown, "the veth pair outlived its namespaces"


def test_the_namespaces_share_no_file_and_no_host_address(namespace_run):
    cluster, _, _ = namespace_run
    (cluster.head.folder / "only-here").write_text("head")
    assert "only-here" not in cluster.worker.run("ls", "-a", "/tmp")
    assert cluster.head.run("cat", "/tmp/only-here") == "head"
    assert [node.run("hostname").strip() for node in cluster.nodes] == ["csrec-head", "csrec-worker"]
    shown = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True).stdout
    assert cluster.head_ip not in shown and cluster.worker_ip not in shown  # on the veth pair only
    assert cluster.veth not in subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout


def test_killed_and_resumed_across_two_nodes_gives_the_local_table(namespace_run, local_smoke):
    cluster, before, log = namespace_run
    final = cluster.head.folder / "final"
    assert before and {k: v for k, v in created(final).items() if k in before} == before  # nothing finished remade
    assert_same_results(final, local_smoke)
    assert comparison_table(final) == comparison_table(local_smoke)
    assert not (found := unexpected_tracebacks(log)), "\n----\n".join(found)
    assert f"ray: joined the cluster at {cluster.head_ip}:{RAY_PORT}" in log
    assert "(no such process); taking over" in log  # the resume took the killed driver's lock over


def test_both_nodes_trained(namespace_run):
    # Teachers go to either node (1 CPU each); the worker node, without the data file, must have read
    # it from object storage.
    cluster, _, log = namespace_run
    nodes = {line.rsplit(" ", 1)[1] for line in log.splitlines() if ": trained on node " in line}
    final = cluster.head.folder / "final"
    for path in (final / "tune").glob("*/*/result.json"):
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        nodes |= {row["node_id"][:8] for row in rows if row.get("done")}
    assert len(nodes) == 2, nodes
    assert list((cluster.worker.folder / "ray").glob("session_*/logs/worker-*.out"))  # Ray's workers ran there
    # It read the data file from the bucket into its own cache, and made no folder of the head's.
    cache = cluster.worker.folder / "home-worker" / ".cache" / "csrec" / "storage"
    assert [p.read_bytes() for p in cache.glob("artifacts/*/smoke.csv")] == [(final.parent / "exp" / "smoke.csv")
                                                                              .read_bytes()]
    assert not (cluster.worker.folder / "home-head").exists()


@pytest.mark.parametrize("storage, data, refused", [
    ("/tmp/exp/local", "/tmp/shared/smoke.csv", "storage: /tmp/exp/local is not on node csrec-worker"),
    ("/tmp/shared/runs/x", "/tmp/exp/smoke.csv", "datasets.smoke.path: /tmp/exp/smoke.csv is not on node csrec-worker"),
])
def test_a_folder_or_data_file_a_node_lacks_is_refused_before_anything_trains(namespace_run, storage, data, refused):
    # Storage in a folder (no object storage) on a cluster: every node must see it and the data files.
    cluster, _, _ = namespace_run
    head = cluster.head
    shutil.copy(head.folder / "exp" / "smoke.csv", cluster.shared / "smoke.csv")
    raw = yaml.safe_load((head.folder / "exp" / "smoke.yaml").read_text())
    raw["storage"], raw["datasets"]["smoke"]["path"] = storage, data
    (head.folder / "exp" / "folder.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    done = subprocess.run(head.command(sys.executable, "launch.py", "run", "/tmp/exp/folder.yaml", "--address",
                                       f"{cluster.head_ip}:{RAY_PORT}"), env=head.env, capture_output=True, text=True,
                          timeout=300)
    said = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert done.returncode == 2 and len(said) == 1 and refused in said[0], done.stderr[-3000:]
    assert f"({cluster.worker_ip})" in said[0] and "object storage" in said[0]
    made = head.folder / "exp" / "local" if storage.startswith("/tmp/exp") else cluster.shared / "runs"
    assert not made.exists()  # refused before anything was written, the folders made for the check gone again
