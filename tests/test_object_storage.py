"""Experiments on object storage (`storage: s3://...`, issue #16), against a real S3-protocol server:
moto's, started by this module as a subprocess on 127.0.0.1, its endpoint given through the standard
variable (AWS_ENDPOINT_URL_S3) and dummy credentials through AWS_ACCESS_KEY_ID/SECRET, as a user's
cluster would have them. Drivers run as subprocesses (test_runner.Driver) and inherit them, and so
do their Ray workers.

The smoke spec on S3 is run through Ray, killed (-9) once trials are in the store, resumed, and must
give the local reference's table with nothing finished made again; then reused into a local store.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pyarrow.fs as pafs
import pytest
from conftest import quiet, write_smoke_spec
from test_faults import assert_refused, launch_main
from test_runner import Driver

from analysis import comparison_table
from csrec import storage
from csrec.errors import CSRecError
from csrec.storage import RemotePath, location
from csrec.store import Store, fetch

BUCKET = "csrec-test"
SECRET = "dummy-secret-that-must-never-be-written"


@contextlib.contextmanager
def moto_server(log: Path, **environment):
    """A moto S3 server on a free port of 127.0.0.1 (`environment`: moto's settings); yields its URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with open(log, "w") as out:
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                  stdout=out, stderr=subprocess.STDOUT, env=os.environ | environment)
    try:
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert server.poll() is None and time.time() < deadline, "the moto server did not start"
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server with bucket BUCKET; the standard variables point everything (pyarrow here,
    drivers and their Ray workers) at it. Yields the bucket's URI."""
    with moto_server(tmp_path_factory.mktemp("moto") / "moto.log") as url:
        variables = {"AWS_ENDPOINT_URL_S3": url, "AWS_ACCESS_KEY_ID": "dummy-key-id", "AWS_SECRET_ACCESS_KEY": SECRET,
                     "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
                     "CSREC_CACHE": str(tmp_path_factory.mktemp("cache"))}
        saved = {name: os.environ.get(name) for name in variables}
        os.environ.update(variables)
        try:
            pafs.S3FileSystem(endpoint_override=url, allow_bucket_creation=True).create_dir(BUCKET)
            yield f"s3://{BUCKET}"
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def objects(uri: str) -> dict[str, bytes]:
    """Every object under `uri`: path -> content."""
    place = location(uri)
    infos = place.fs.get_file_info(pafs.FileSelector(place.path, recursive=True, allow_not_found=True))
    return {i.path: place.fs.open_input_stream(i.path).read() for i in infos if i.type == pafs.FileType.File}


def results(directory) -> dict[str, tuple[dict, pd.DataFrame]]:
    """Every finished trial record (local or remote): key -> (result.json, per_user.parquet)."""
    store = Store(directory / "store")
    return {key: (json.loads((store.path("trials", key) / "result.json").read_text()),
                  pd.read_parquet(fetch(store.path("trials", key)) / "per_user.parquet"))
            for key in store.keys("trials")}


def created(directory) -> dict[str, float]:
    store = Store(directory / "store")
    return {f"{kind}/{key}": store.meta(kind, key)["created"] for kind in ("models", "trials") for key in store.keys(kind)}


def assert_same_results(directory, reference: Path) -> None:
    ours, theirs = results(directory), results(reference)
    assert ours and set(ours) == set(theirs)
    for key, (record, per_user) in ours.items():
        assert record == theirs[key][0], key
        pd.testing.assert_frame_equal(per_user, theirs[key][1])


# ---- the file system layer and the store ------------------------------------------------------------

def test_a_remote_path_reads_writes_lists_and_removes(s3):
    from csrec.storage import remove_tree, write_atomic

    folder = location(f"{s3}/basics")
    assert isinstance(folder, RemotePath) and not folder.exists() and list(folder.iterdir()) == []
    write_atomic(folder / "a" / "x.json", b'{"x": 1}')
    (folder / "b.txt").write_text("hello")
    assert (folder / "a").is_dir() and (folder / "b.txt").is_file() and (folder / "b.txt").read_text() == "hello"
    assert [p.name for p in folder.iterdir()] == ["a", "b.txt"] and (folder / "b.txt").stat().st_size == 5
    with pytest.raises(FileNotFoundError):
        (folder / "nope").read_text()
    remove_tree(folder)
    assert not folder.exists()
    assert isinstance(location("runs/x"), Path) and location("file:///tmp/x") == Path("/tmp/x")


def test_bad_uris_are_refused_in_one_line(s3):
    for value, said in [("s4://bucket/x", "no file system for 's4://'"), ("s3:///x", "names no bucket"),
                        ("s3://AKIA:secret@bucket/x", "carries credentials"),
                        ("s3://bucket/x?access_key=AKIA", "carries credentials")]:
        with pytest.raises(CSRecError, match=said) as error:
            location(value)
        assert "secret" not in str(error.value) and "AKIA" not in str(error.value)


def test_a_partial_upload_is_never_taken_for_an_artifact(s3):
    store = Store(f"{s3}/partial/store")
    store.write("models", "whole", {"x": 1}, lambda d: (d / "model.pt").write_bytes(b"weights" * 100))
    partial = store.path("models", "cut")  # an upload cut short before its meta.json
    (partial / "model.pt").write_bytes(b"weights")
    assert store.keys("models") == ["whole"] and store.verify("models", "whole")
    assert not store.verify("models", "cut") and (partial / "model.pt").is_file()  # passed over, not removed
    with pytest.raises(CSRecError, match="missing or damaged"):
        store.require("models", "cut", "the teacher")
    assert (store.require("models", "whole", "the teacher") / "model.pt").read_bytes() == b"weights" * 100
    # damaged after it was written: a size that differs is seen by verify, equal-size bytes when fetched
    store.write("models", "short", {}, lambda d: (d / "model.pt").write_bytes(b"abcd"))
    (store.path("models", "short") / "model.pt").write_bytes(b"ab")
    with pytest.warns(UserWarning, match="does not match its recorded size"):
        assert not store.verify("models", "short")
    store.write("models", "flip", {}, lambda d: (d / "model.pt").write_bytes(b"abcd"))
    (store.path("models", "flip") / "model.pt").write_bytes(b"abce")
    with pytest.warns(UserWarning, match="does not match its checksum"), pytest.raises(CSRecError, match="damaged"):
        store.require("models", "flip", "the teacher")
    assert store.keys("models") == ["whole"]


def test_a_store_on_a_file_system_only_fsspec_knows(tmp_path, monkeypatch):
    monkeypatch.setenv("CSREC_CACHE", str(tmp_path))
    store = Store("memory://csrec-test/store")  # fsspec's in-memory file system, wrapped for pyarrow
    store.write("models", "k", {"x": 1}, lambda d: (d / "model.pt").write_bytes(b"weights"))
    (store.path("models", "cut") / "model.pt").write_bytes(b"w")  # no meta.json
    assert store.keys("models") == ["k"] and not store.verify("models", "cut")
    assert (store.require("models", "k", "the teacher") / "model.pt").read_bytes() == b"weights"
    assert str(store.root) == "memory://csrec-test/store"


def test_a_failed_or_garbled_read_of_a_remote_artifact_never_removes_it(tmp_path, monkeypatch):
    from csrec import storage, store as store_module

    monkeypatch.setenv("CSREC_CACHE", str(tmp_path))
    store = Store("memory://csrec-test/reads")
    store.write("models", "k", {"x": 1}, lambda d: (d / "model.pt").write_bytes(b"weights" * 10))
    real = storage.copy_to_local
    calls = {"n": 0}

    def failing(source, target):  # the network drops once
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError("connection reset by peer")
        real(source, target)

    monkeypatch.setattr(store_module.storage, "copy_to_local", failing)
    with pytest.raises(CSRecError, match=r"could not be copied .* \(connection reset by peer\); nothing was removed"):
        store.require("models", "k", "the teacher")
    assert store.verify("models", "k")  # still in the bucket
    assert (store.require("models", "k", "the teacher") / "model.pt").read_bytes() == b"weights" * 10

    calls["n"] = 0
    shutil.rmtree(tmp_path / "artifacts", ignore_errors=True)  # the node's cache: fetched anew

    def garbling(source, target):  # one read comes back with other bytes of the same size
        calls["n"] += 1
        real(source, target)
        if calls["n"] == 1:
            target.write_bytes(b"x" * target.stat().st_size)

    monkeypatch.setattr(store_module.storage, "copy_to_local", garbling)
    assert (store.require("models", "k", "the teacher") / "model.pt").read_bytes() == b"weights" * 10
    assert calls["n"] == 2 and store.verify("models", "k")


def test_the_lease_lock_refuses_a_second_driver_and_takes_over_a_dead_one(s3, monkeypatch):
    from csrec.runner import lock

    monkeypatch.setattr(lock, "SETTLE_S", 0.0)
    directory = location(f"{s3}/locked")
    lines = []
    with lock.experiment_lock(directory, lines.append) as held:
        assert isinstance(held, lock.LeaseLock)
        with pytest.raises(CSRecError, match=f"is being run by another driver \\(pid {os.getpid()} on host"):
            lock.experiment_lock(directory).acquire()
        assert lock.holder(directory).startswith(f"pid {os.getpid()}")
    assert lock.holder(directory) is None and not lines
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    path = directory / lock.LOCK_FILE
    this_machine = {**lock._this_process(), "pid": int(dead.stdout), "started": 0, "expires": time.time() + 600}
    path.write_text(json.dumps(this_machine))
    assert "is stale (no such process)" in lock.holder(directory)
    # the same host name on another machine (or in another pid namespace): its pid means nothing here,
    # and the lease is live
    path.write_text(json.dumps({**this_machine, "machine": f"{socket.gethostname()}/another-boot/1"}))
    assert lock.holder(directory).startswith(f"pid {int(dead.stdout)} on host {socket.gethostname()}")
    with pytest.raises(CSRecError, match="is being run by another driver"):
        lock.experiment_lock(directory).acquire()
    path.write_text(json.dumps({k: v for k, v in this_machine.items() if k != "machine"}))  # written before `machine`
    assert "is stale (no such process)" in lock.holder(directory)
    path.write_text(json.dumps({"host": "elsewhere.example", "pid": 1, "started": 0, "expires": time.time() - 1}))
    assert "its lease ended at" in lock.holder(directory)
    with lock.experiment_lock(directory, lines.append):
        assert "is gone (its lease ended at" in lines[0] and "taking over" in lines[0]


def test_curves_on_object_storage_each_writer_its_own_file_and_a_failed_upload_never_ends_training(tmp_path,
                                                                                                   monkeypatch):
    from types import SimpleNamespace

    from csrec import tensorboard

    monkeypatch.setenv("CSREC_CACHE", str(tmp_path))
    folder = location("memory://csrec-test/curves/search/point")
    record = SimpleNamespace(epoch=1, train_loss=2.0, valid_score=0.1, best_score=0.1, seconds=1.0)
    first, retry = tensorboard.EpochScalars(folder), tensorboard.EpochScalars(folder)  # within one second
    assert len(first.files) == len(retry.files) == 1 and first.files != retry.files
    first(record)
    retry(record)
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in first.files + retry.files)

    def unreachable(source, target):
        raise OSError("connection reset by peer")

    monkeypatch.setattr(tensorboard, "upload", unreachable)
    with pytest.warns(UserWarning, match="could not upload the curves .* training goes on") as said:
        first(SimpleNamespace(**(vars(record) | {"epoch": 2})))
        first(SimpleNamespace(**(vars(record) | {"epoch": 3})))
    assert len(said) == 1  # said once, not every epoch
    first.close()
    retry.close()


def test_the_lease_survives_a_failed_read_and_a_failed_read_never_takes_over(tmp_path, monkeypatch):
    from csrec.runner import lock

    monkeypatch.setattr(lock, "SETTLE_S", 0.0)
    monkeypatch.setattr(lock, "LEASE_S", 0.4)  # renewed every 0.1 s
    directory = location("memory://csrec-test/lease")
    path = directory / lock.LOCK_FILE
    real = type(path).read_text
    failures = {"csrec-lock-lease": 0, "MainThread": 0}  # reads to fail, by the thread that reads

    def flaky(self):
        thread = threading.current_thread().name
        if self.name == lock.LOCK_FILE and failures.get(thread, 0) > 0:
            failures[thread] -= 1
            raise OSError("connection reset by peer")
        return real(self)

    monkeypatch.setattr(type(path), "read_text", flaky)
    interrupted = []
    monkeypatch.setattr(lock._thread, "interrupt_main", lambda: interrupted.append(True))
    lines = []
    held = lock.experiment_lock(directory, lines.append)
    with held:
        failures["csrec-lock-lease"] = 2  # two renewals cannot read the lock
        time.sleep(1.0)  # > LEASE_S: had renewal stopped, the lease would have ended
        assert held._renewer.is_alive() and json.loads(real(path))["expires"] > time.time()
        failures["MainThread"] = 1  # a second driver cannot read it: refused, not taken over
        with pytest.raises(CSRecError, match=r"cannot read or write .*connection reset by peer.*nothing was started"):
            lock.experiment_lock(directory).acquire()
        assert json.loads(real(path))["owner"] == held.owner and not interrupted
        # another driver really took it (this one paused past its lease): this driver stops as on Ctrl-C
        # (written again until seen: a renewal that read its own lock just before may write over it once)
        deadline = time.time() + 5
        while not interrupted and time.time() < deadline:
            path.write_text(json.dumps({"host": "elsewhere.example", "pid": 1, "started": 0, "owner": "other",
                                        "expires": time.time() + 600}))
            time.sleep(0.3)
        assert interrupted and "taken over by another driver" in lines[-1] and not held._renewer.is_alive()
    assert json.loads(real(path))["owner"] == "other"  # release leaves the other driver's lock alone


# ---- the smoke experiment on S3 ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def s3_smoke(s3, tmp_path_factory):
    """The smoke spec run through Ray with its storage on S3, killed -9 once trials are stored, resumed
    (through Ray). Returns the experiment's URI, what was stored before the kill, and the drivers' log."""
    folder = tmp_path_factory.mktemp("s3smoke")
    uri = f"{s3}/runs/smoke"
    spec = write_smoke_spec(folder, "smoke", storage=uri)
    store = Store(f"{uri}/store")
    driver = Driver(folder / "driver.log")
    try:
        driver.kill_when(driver.start("run", str(spec)), lambda: len(store.keys("trials")) >= 3, timeout=500)
        driver.end_leftovers()
        before = created(location(uri))
        driver.run("resume", uri)
    finally:
        driver.close()
    return location(uri), before, (folder / "driver.log").read_text()


# Tune logs a failed upload of its own state (a busy moto server) with a traceback and uploads it again
# at its next save (ray/train/_internal/syncer.py, ray/tune/execution/experiment_state.py). Any other
# traceback in a driver's log is a defect.
TUNE_RETRIES = ("Last sync command failed with the following error:", "Saving experiment state to storage at")
CHAINED = ("During handling of the above exception", "The above exception was the direct cause")


def unexpected_tracebacks(log: str) -> list[str]:
    """Each traceback of `log` (with the line before it) that is not one of Tune's retried uploads."""
    parts = log.split("Traceback (most recent call last):")
    found, retried = [], False
    for before, after in zip(parts, parts[1:]):
        said = ([line for line in before.splitlines() if line.strip()] or [""])[-1]
        retried = any(m in said for m in TUNE_RETRIES) or (retried and any(m in said for m in CHAINED))
        if not retried:
            found.append(f"{said}\nTraceback (most recent call last):{after[:3000]}")
    return found


def test_unexpected_tracebacks_passes_over_tunes_retried_uploads_only():
    tune_retry = ("WARNING syncer.py:347 -- Last sync command failed with the following error:\n"
                  "Traceback (most recent call last):\n  File x\nOSError: timeout\n\n"
                  "During handling of the above exception, another exception occurred:\n\n"
                  "Traceback (most recent call last):\n  File y\nOSError: again\n")
    ours = "error: something\nTraceback (most recent call last):\n  File z\nKeyError: 'k'\n"
    assert unexpected_tracebacks("plain log\n" + tune_retry) == []
    (found,) = unexpected_tracebacks(tune_retry + ours)
    assert found.startswith("error: something\nTraceback") and "KeyError" in found


def test_the_smoke_experiment_on_s3_killed_and_resumed_gives_the_local_table(s3_smoke, local_smoke, capsys):
    directory, before, log = s3_smoke
    assert before and {k: v for k, v in created(directory).items() if k in before} == before  # nothing remade
    assert_same_results(directory, local_smoke)
    assert comparison_table(directory) == comparison_table(local_smoke)
    assert not (found := unexpected_tracebacks(log)), "\n----\n".join(found)
    assert "lock: the driver that held s3://csrec-test/runs/smoke (pid " in log and "(no such process); taking over" in log
    code, out, _ = launch_main(capsys, "table", directory)
    assert code == 0 and out.strip() == comparison_table(local_smoke).strip()
    code, out, _ = launch_main(capsys, "status", directory)
    assert code == 0 and f"experiment {directory}" in out and "teachers: 5 of 5 in the store" in out
    assert (directory / "tune" / "search").is_dir()  # Tune's own state went to the bucket too
    assert not (directory / "driver.lock").exists()
    # every job's training curves are in the bucket, under the experiment (uploaded after each epoch)
    events = [name for name in objects(str(directory / "tensorboard")) if "events.out.tfevents" in name]
    assert {name.split("/tensorboard/")[1].split("/")[0] for name in events} >= {"teachers", "search", "seeds"}


def test_no_credential_is_written_to_the_bucket_or_the_logs(s3_smoke, s3):
    directory, _, log = s3_smoke
    stored = objects(str(directory))
    assert any(name.endswith("spec.yaml") for name in stored) and any(name.endswith("experiment.json") for name in stored)
    assert all(SECRET.encode() not in content and b"dummy-key-id" not in content for content in stored.values())
    assert SECRET not in log and "dummy-key-id" not in log


def test_report_of_an_experiment_on_s3_is_written_on_this_machine(s3_smoke, tmp_path, monkeypatch, capsys):
    directory, _, _ = s3_smoke
    monkeypatch.chdir(tmp_path)
    code, out, _ = launch_main(capsys, "report", directory, "--no-html")
    assert code == 0 and (tmp_path / "report-smoke" / "report.md").is_file()
    assert f"Experiment directory `{directory}`" in (tmp_path / "report-smoke" / "report.md").read_text()


def test_reuse_from_an_s3_store_into_a_local_one_trains_nothing(s3_smoke, local_smoke, tmp_path, monkeypatch):
    from csrec import jobs
    from csrec.runner import run_experiment

    def no_training(*args, **kwargs):
        raise AssertionError("a model was trained although the reused experiment on S3 holds it")

    monkeypatch.setattr(jobs, "fit", no_training)
    directory, _, _ = s3_smoke
    lines = []
    run_experiment(write_smoke_spec(tmp_path, "local", reuse=[str(directory)]), local=True, table=False,
                   log=lines.append)
    assert any(line.startswith("reuse: ") and f"copied from {directory}/store" in line for line in lines)
    assert_same_results(tmp_path / "local", local_smoke)


def test_a_missing_bucket_or_a_bad_uri_exits_2_before_anything_is_trained(s3, tmp_path, capsys):
    spec = write_smoke_spec(tmp_path, "nobucket", storage="s3://no-such-bucket-here/runs/smoke")
    assert_refused(*launch_main(capsys, "run", spec, "--local")[::2], "storage: s3://no-such-bucket-here/runs/smoke",
                   "the bucket 'no-such-bucket-here' does not exist")
    spec = write_smoke_spec(tmp_path, "scheme", storage="s4://bucket/runs/smoke")
    assert_refused(*launch_main(capsys, "run", spec, "--local")[::2], "no file system for 's4://'")
    assert_refused(*launch_main(capsys, "status", "s3://no-such-bucket-here/x")[::2], "does not exist")
    assert_refused(*launch_main(capsys, "table", "s3://no-such-bucket-here/x")[::2], "does not exist")
    assert_refused(*launch_main(capsys, "train", "--data", "experiments/data/smoke.csv", "--model", "gru4rec",
                                "--out", tmp_path / "out",
                                "--store", "s3://no-such-bucket-here/store")[::2], "--store: s3://no-such-bucket-here")
    assert not (tmp_path / "out").exists()


def test_denied_access_exits_2_in_one_line(s3, tmp_path, capsys, monkeypatch):
    """A server that checks credentials (moto's IAM, after the bucket is made) refuses these: one line."""
    with moto_server(tmp_path / "moto.log", INITIAL_NO_AUTH_ACTION_COUNT="2") as url:
        pafs.S3FileSystem(endpoint_override=url, allow_bucket_creation=True).create_dir("denied-bucket")
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", url)
        monkeypatch.setattr(storage, "_filesystem", functools.lru_cache(storage._filesystem.__wrapped__))
        spec = write_smoke_spec(tmp_path, "denied", storage="s3://denied-bucket/runs/smoke")
        code, _, err = launch_main(capsys, "run", spec, "--local")
    assert_refused(code, err, "storage: s3://denied-bucket/runs/smoke: access denied", "check the credentials")
    assert SECRET not in err


def test_train_with_its_store_on_s3_trains_a_model_once(s3, tmp_path, capsys):
    args = ["train", "--data", "experiments/data/smoke.csv", "--model", "gru4rec", "--max-len", "8", "--epochs", "1",
            "--device", "cpu", "--threads", "1", "--store", f"{s3}/train-store"]
    code, first, _ = launch_main(capsys, *args, "--out", tmp_path / "a")
    assert code == 0 and Store(f"{s3}/train-store").keys("models")
    created_before = {k: Store(f"{s3}/train-store").meta("models", k)["created"]
                      for k in Store(f"{s3}/train-store").keys("models")}
    code, second, _ = launch_main(capsys, *args, "--out", tmp_path / "b")
    assert code == 0 and first.splitlines()[-3:] == second.splitlines()[-3:]  # the same metrics, from the store
    assert {k: Store(f"{s3}/train-store").meta("models", k)["created"] for k in created_before} == created_before
    assert (tmp_path / "b" / "per_user.parquet").read_bytes() == (tmp_path / "a" / "per_user.parquet").read_bytes()


def test_a_damaged_file_in_the_nodes_cache_is_fetched_again_not_loaded(tmp_path, monkeypatch):
    """Issue 24, point 3: a cached model.pt filled with random bytes failed every trial on every resume
    ("holds objects other than tensors"); the cache is checked at each use and a damaged copy fetched again."""
    monkeypatch.setenv("CSREC_CACHE", str(tmp_path))
    store = Store("memory://csrec-test/cache")
    weights = os.urandom(4096)
    store.write("models", "k", {"x": 1}, lambda d: (d / "model.pt").write_bytes(weights))
    cached = store.require("models", "k", "the teacher") / "model.pt"
    assert cached.read_bytes() == weights and str(cached).startswith(str(tmp_path))
    cached.write_bytes(os.urandom(4096))  # the node's disk, after the fetch
    with pytest.warns(UserWarning, match=r"cache: model.pt of .* no longer matches its checksum .*; fetched again"):
        again = store.require("models", "k", "the teacher") / "model.pt"
    assert again == cached and again.read_bytes() == weights
    cached.unlink()  # a cached file gone: fetched again too
    with pytest.warns(UserWarning, match="no longer matches its checksum"):
        assert store.require("models", "k", "the teacher").joinpath("model.pt").read_bytes() == weights
