"""Fault injection on the smoke spec: every fault ends in the reference table or in a clean refusal
(exit 2 and one line), never in a wrong table or a traceback (issue #13).

One uninterrupted local run is the reference (`reference`, module-scoped). Most tests copy it to a
new place (so each is also a moved experiment: `resume` must work where the copy is and leave the
original alone), take some of its work away or damage a file, and resume. The local backend runs
what Ray does not change; the tuner.pkl window and SIGTERM run through Ray. Drivers that are killed
run as subprocesses (test_runner.Driver: their Ray processes are found by a marker and ended).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import write_smoke_spec
from test_runner import ROOT, Driver, assert_same_results, created, progress, results

import launch
from analysis import comparison_table
from csrec.config import load_spec
from csrec.runner.plan import make_plan


@pytest.fixture(scope="module")
def reference(local_smoke) -> Path:
    """The smoke spec run uninterrupted by the local backend (conftest)."""
    return local_smoke


@pytest.fixture(scope="module")
def reference_table(reference) -> str:
    return comparison_table(reference)


def copy_of(reference: Path, folder: Path) -> Path:
    """The reference experiment, copied elsewhere (its spec.yaml still names the reference's storage)."""
    shutil.copytree(reference, folder / "moved")
    return folder / "moved"


def search_key(directory: Path, method: str, winner: bool = True) -> str:
    """The search trial of `method` that was selected (or, winner=False, the other one)."""
    records = [r for r, _ in results(directory).values() if r["method"] == method and r["stage"] == "search"]
    records.sort(key=lambda r: r["valid"]["ndcg@10"], reverse=winner)
    return records[0]["key"]


def forget(directory: Path, *keys: str) -> None:
    """Take finished work away: the model and the trial record of each key."""
    for key in keys:
        for kind in ("models", "trials"):
            shutil.rmtree(directory / "store" / kind / key, ignore_errors=True)


def launch_main(capsys, *args: str) -> tuple[int, str, str]:
    code = launch.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_refused(code: int, err: str, *fragments: str) -> None:
    """Exit 2 with one line that says what is wrong (no traceback)."""
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert all(f in lines[0] for f in fragments), lines[0]


def row_of(table: str, method: str) -> str:
    return next(line for line in table.splitlines() if line.startswith("|") and f"| {method} |" in line)


# ---- a failed point ----------------------------------------------------------------------------------

def test_a_failed_point_exits_3_names_it_and_marks_its_cell_until_a_resume_runs_it(tmp_path, reference,
                                                                                    reference_table, capsys,
                                                                                    monkeypatch):
    from csrec.runner import local_backend

    directory = copy_of(reference, tmp_path)
    winner = search_key(reference, "csrec-m")
    forget(directory, winner)
    real = local_backend.run_trial

    def failing(trial, *args, **kwargs):
        if trial.job.key == winner:
            raise RuntimeError("injected failure")
        return real(trial, *args, **kwargs)

    monkeypatch.setattr(local_backend, "run_trial", failing)
    code, out, err = launch_main(capsys, "resume", directory, "--local")
    assert code == 3
    (line,) = err.strip().splitlines()
    assert line.startswith("error: 1 trial(s) failed: smoke/gru4rec/csrec-m beta=") and "RuntimeError: injected" in line
    assert "--allow-failed" in line
    assert "‡" in row_of(out, "CSRec-M") and "‡: some of the cell's planned runs are missing" in out
    assert "‡" not in row_of(out, "SoftRec")
    failed = json.loads((directory / "failed.json").read_text())
    assert list(failed) == [winner] and failed[winner]["error"] == "RuntimeError: injected failure"
    code, out, _ = launch_main(capsys, "status", directory)
    assert code == 0 and "failed trials (no record; `launch.py resume` tries them again): 1" in out
    code, out, _ = launch_main(capsys, "table", directory)  # the table alone marks it too
    assert code == 0 and "‡" in row_of(out, "CSRec-M")
    code, out, err = launch_main(capsys, "resume", directory, "--local", "--allow-failed")
    assert code == 0 and "--allow-failed: 1 trial(s) failed" in out and not err.strip()

    monkeypatch.setattr(local_backend, "run_trial", real)  # the cause is gone
    code, out, _ = launch_main(capsys, "resume", directory, "--local")
    assert code == 0 and comparison_table(directory) == reference_table
    assert json.loads((directory / "failed.json").read_text()) == {}


# ---- damaged files -----------------------------------------------------------------------------------

class Payload:
    """Unpickling this runs a shell command: what a crafted checkpoint in a shared directory would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_damaged_work_checkpoints_are_discarded_and_a_crafted_one_runs_no_code(tmp_path, reference,
                                                                               reference_table, capsys):
    directory = copy_of(reference, tmp_path)
    plan = make_plan(load_spec(directory / "spec.yaml"))
    student = search_key(reference, "softrec")
    no_config = search_key(reference, "csrec-d")
    teacher = next(j for t in plan.grid_trials if t.method == "csrec-t" for j in t.job.teachers)
    forget(directory, student, no_config, teacher.key)
    work = directory / "store" / "work"
    marker = tmp_path / "code-ran"
    for key in (student, no_config, teacher.key):
        (work / key).mkdir(parents=True)
    (work / student / "last.pt").write_bytes(b"\x00garbage" * 100)
    torch.save({"model": {}, "n_train": 3}, work / no_config / "last.pt")  # no "config" key
    torch.save({"config": Payload(marker)}, work / teacher.key / "last.pt")
    code, out, err = launch_main(capsys, "resume", directory, "--local")
    assert code == 0, err
    warnings = [line for line in err.splitlines() if "is damaged" in line]
    assert len(warnings) == 3 and all(w.startswith("warning: work checkpoint ") and
                                      w.endswith("; discarded, training starts from epoch 1") for w in warnings)
    assert "refused unread, since loading it could run code" in next(w for w in warnings if teacher.key in w)
    assert not marker.exists()
    assert comparison_table(directory) == reference_table
    assert_same_results(directory, reference)
    assert not work.exists() or not any(work.iterdir())  # finished: no work checkpoint left behind


def test_a_crafted_stored_model_is_refused_unread(tmp_path, reference):
    """A model.pt in a store (a colleague's, reused) whose checksums match but which holds a pickle
    that runs code: refused with one line, nothing run."""
    from csrec.errors import CSRecError
    from csrec.jobs import load_model
    from csrec.store import Store

    directory = copy_of(reference, tmp_path)
    teacher = next(j for t in make_plan(load_spec(directory / "spec.yaml")).grid_trials for j in t.job.teachers)
    store, marker = Store(directory / "store"), tmp_path / "code-ran"
    forget(directory, teacher.key)
    store.write("models", teacher.key, teacher.config(), lambda d: torch.save({"state_dict": Payload(marker)},
                                                                              d / "model.pt"))
    with pytest.raises(CSRecError, match="refused unread, since loading it could run code: remove"):
        load_model(store, teacher)
    assert not marker.exists()


def test_a_damaged_trial_record_is_marked_in_the_table_then_rewritten_by_resume(tmp_path, reference,
                                                                                reference_table, capsys):
    directory = copy_of(reference, tmp_path)
    record = directory / "store" / "trials" / search_key(reference, "csrec-m", winner=False) / "result.json"
    record.write_text(record.read_text().replace('"seed": 0', '"seed": 7'))  # no longer its checksum
    code, out, _ = launch_main(capsys, "table", directory)  # selected from 1 of its 2 points: marked
    assert code == 0 and "‡" in row_of(out, "CSRec-M") and "‡: some of the cell's planned runs are missing" in out
    assert row_of(out, "CSRec-M").replace("‡", "") == row_of(reference_table, "CSRec-M")
    code, out, _ = launch_main(capsys, "resume", directory, "--local")
    assert code == 0 and "[search" not in out and "[seeds" not in out  # rewritten from its model: nothing trained
    assert comparison_table(directory) == reference_table


def test_damaged_bookkeeping_files_are_said_and_rebuilt_or_refused_in_one_line(tmp_path, reference,
                                                                              reference_table, capsys):
    directory = copy_of(reference, tmp_path)
    for name in ("experiment.json", "progress.json", "plan.json", "datasets/smoke.json", "failed.json"):
        (directory / name).write_text('{"truncated": ')
    assert_refused(*launch_main(capsys, "status", directory)[::2], "plan.json is damaged", "resume")
    assert_refused(*launch_main(capsys, "table", directory)[::2], "plan.json is damaged", "resume")
    code, out, err = launch_main(capsys, "resume", directory, "--local")
    assert code == 0, err
    for said in ("experiment.json is missing or unreadable; rebuilt from spec.yaml",
                 "plan.json is unreadable", "progress.json is unreadable", "smoke.json is unreadable",
                 "failed.json is unreadable"):
        assert said in out, said
    assert "[search" not in out and "[seeds" not in out and "teacher " not in out  # nothing trained
    assert comparison_table(directory) == reference_table
    assert json.loads((directory / "datasets" / "smoke.json").read_text())["n_items"] > 0

    (directory / "experiment.json").unlink()  # deleted: rebuilt from spec.yaml as well
    code, out, _ = launch_main(capsys, "resume", directory, "--local")
    assert code == 0 and "experiment.json is missing or unreadable; rebuilt" in out
    (directory / "experiment.json").unlink()
    (directory / "spec.yaml").write_text("name: [unclosed")
    assert_refused(*launch_main(capsys, "resume", directory, "--local")[::2], "spec.yaml: not valid YAML")
    spec = write_smoke_spec(tmp_path, "again", storage=str(directory))
    assert_refused(*launch_main(capsys, "run", spec, "--local")[::2], "neither a readable experiment.json nor",
                   "put the spec it was run with at")


# ---- a moved experiment, two drivers -------------------------------------------------------------------

def test_a_moved_experiment_resumes_where_it_is_and_leaves_the_original_alone(tmp_path, reference,
                                                                              reference_table, capsys):
    before = {p: p.stat().st_mtime_ns for p in reference.rglob("*")}
    directory = copy_of(reference, tmp_path)
    key = search_key(reference, "csrec-t")
    forget(directory, key)
    code, out, _ = launch_main(capsys, "resume", directory, "--local")
    assert code == 0 and "[search 1/1]" in out
    assert (directory / "store" / "trials" / key).is_dir()
    assert load_spec(directory / "spec.yaml").directory == directory.resolve()  # rewritten: where it is now
    assert comparison_table(directory) == reference_table
    assert {p: p.stat().st_mtime_ns for p in reference.rglob("*")} == before  # the original: not a byte


def test_a_second_driver_is_refused_naming_the_first_and_a_stale_lock_is_taken_over(tmp_path, reference,
                                                                                    reference_table, capsys):
    directory = copy_of(reference, tmp_path)
    forget(directory, *[r["key"] for r, _ in results(reference).values() if r["stage"] == "seeds"
                        and r["method"] != "base"])
    driver = Driver(tmp_path / "driver.log")
    lock = directory / "driver.lock"
    try:
        first = driver.start("resume", str(directory), "--local")
        while not (lock.is_file() and lock.read_text()):
            assert first.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
            time.sleep(0.05)
        code, _, err = launch_main(capsys, "resume", directory, "--local")
        assert_refused(code, err, "is being run by another driver", f"pid {first.pid} on host {socket.gethostname()}")
        code, out, _ = launch_main(capsys, "status", directory)
        assert f"driver holding the experiment: pid {first.pid}" in out
        assert first.wait(timeout=500) == 0, (tmp_path / "driver.log").read_text()[-3000:]
    finally:
        driver.close()
    assert not lock.exists() and comparison_table(directory) == reference_table

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout), "started": 0}))
    code, out, _ = launch_main(capsys, "status", directory)
    assert "is stale (no such process)" in out
    code, out, _ = launch_main(capsys, "resume", directory, "--local")
    assert code == 0 and f"pid {int(dead.stdout)} on host {socket.gethostname()}" in out and "is gone; taking over" in out
    lock.write_text(json.dumps({"host": "elsewhere.example", "pid": 1, "started": 0}))
    code, _, err = launch_main(capsys, "resume", directory, "--local")
    assert_refused(code, err, "names a driver on another host (pid 1 on host elsewhere.example",
                   "delete the lock file")


# ---- kill -9 at each stage boundary, the tuner.pkl window, SIGTERM ----------------------------------

def test_kill_9_at_each_stage_boundary_resumes_to_the_reference_table(tmp_path, reference, reference_table):
    spec = write_smoke_spec(tmp_path, "exp")
    directory = tmp_path / "exp"
    driver = Driver(tmp_path / "driver.log")
    try:
        process = driver.start("run", str(spec), "--local")
        for stage in ("search", "seeds", "done"):  # each written as its stage starts (the table after "done")
            driver.kill_when(process, lambda: progress(directory).get("stage") == stage)
            before = created(directory)
            process = driver.start("resume", str(directory), "--local")
        assert process.wait(timeout=500) == 0, (tmp_path / "driver.log").read_text()[-3000:]
    finally:
        driver.close()
    after = created(directory)
    assert {k: after[k] for k in before} == before  # nothing finished before the last kill was made again
    assert_same_results(directory, reference) and set(results(directory)) == set(results(reference))
    assert comparison_table(directory) == reference_table


def listening_addresses(pids: list[int]) -> set[str]:
    """The local addresses the processes `pids` listen on (TCP), from `ss`."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout.splitlines()
    return {line.split()[3].rsplit(":", 1)[0] for line in out if any(f"pid={pid}," in line for pid in pids)}


def test_ray_tuner_pkl_window_then_sigterm_then_resume(tmp_path, reference, reference_table):
    """kill -9 of the driver once Tune has written tuner.pkl, its experiment state taken away (the
    window a probe hit: every resume used to fail); the next driver rebuilds the stage from the store
    and says so; SIGTERM stops it as Ctrl-C does (exit 130, no traceback); a last resume finishes."""
    directory = copy_of(reference, tmp_path)
    forget(directory, search_key(reference, "softrec"), search_key(reference, "csrec-d"))
    search = directory / "tune" / "search"
    log = tmp_path / "driver.log"
    driver = Driver(log)
    try:
        driver.kill_when(driver.start("resume", str(directory)), lambda: (search / "tuner.pkl").is_file())
        driver.end_leftovers()
        for state in search.glob("experiment_state-*.json"):
            state.unlink()
        with open(log, "a") as out:
            out.write("---- second driver\n")
        reported = lambda: any(p.stat().st_size > 0 for p in search.glob("*/result.json"))  # noqa: E731
        process = driver.start("resume", str(directory))
        while not reported():
            assert process.poll() is None, log.read_text()[-3000:]
            time.sleep(0.05)
        if shutil.which("ss"):  # local Ray listens on the loopback interface only
            addresses = listening_addresses(driver.leftovers())
            assert addresses and addresses <= {"127.0.0.1", "[::ffff:127.0.0.1]"}, addresses
        assert driver.kill_when(process, lambda: True, how=signal.SIGTERM) == 130
        driver.end_leftovers()
    finally:
        driver.close()
    second = log.read_text().split("---- second driver\n")[1]
    assert "search: the Tune folder" in second and "rebuilt from the store: 2 trial(s) without a record" in second
    assert "interrupted: finished work is kept" in second and "Traceback" not in second
    driver = Driver(log)
    try:
        driver.run("resume", str(directory), "--local")
    finally:
        driver.close()
    assert comparison_table(directory) == reference_table


def test_sigterm_stops_a_driver_started_in_the_background_of_a_script(tmp_path):
    """`csrec run SPEC &` in a script (no job control) starts the driver with SIGINT ignored; SIGTERM
    (Slurm, Kubernetes, `timeout`, kill) must still stop it as Ctrl-C does: it did nothing there."""
    spec = write_smoke_spec(tmp_path, "bg", train={"max_epochs": 200, "patience": 200, "batch_size": 64,
                                                   "progress": False, "num_threads": 1})
    log = tmp_path / "driver.log"
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "launch.py", "run", str(spec), "--local"], cwd=ROOT,
                                   env=os.environ | {"PYTHONUNBUFFERED": "1"}, stdout=out, stderr=subprocess.STDOUT,
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        deadline = time.time() + 120
        while "to train" not in log.read_text():
            assert process.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
        time.sleep(1)  # into the first teacher's epochs
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 130, log.read_text()[-3000:]
    finally:
        process.kill()
    assert "interrupted: finished work is kept" in log.read_text() and "Traceback" not in log.read_text()


def test_a_request_no_node_can_hold_is_refused_before_anything_is_written(tmp_path):
    spec = write_smoke_spec(tmp_path, "big", trial_resources={"cpu": 8})
    driver = Driver(tmp_path / "driver.log")
    try:
        process = driver.start("run", str(spec))
        code = process.wait(timeout=300)
    finally:
        driver.close()
    lines = [line for line in (tmp_path / "driver.log").read_text().splitlines() if line.startswith("error: ")]
    assert code == 2 and len(lines) == 1
    assert "trial_resources: cpu 8, gpu 0 per task, but no node of the Ray cluster has that much" in lines[0]
    assert not (tmp_path / "big").exists()


# ---- work checkpoints (issue 24, points 1 and 2) -------------------------------------------------------

def fit_tiny(checkpoint: Path, owner: str, interrupt_after: int | None = None):
    """gru4rec fitted for 3 epochs on synthetic data, with a work checkpoint owned by `owner`."""
    from conftest import make_sequence_data

    from csrec.data.splits import training_sequences, validation_samples
    from csrec.evaluate import validator
    from csrec.models import build_model
    from csrec.train import TrainConfig, fit, seed_everything

    data = make_sequence_data()
    config = TrainConfig(batch_size=32, learning_rate=1e-2, max_epochs=3, patience=100, device="cpu", progress=False)
    seed_everything(7)
    model = build_model("gru4rec", data.n_items, data.max_len, embedding_size=16, hidden_size=16)

    def stop(record):
        if record.epoch == interrupt_after:
            raise KeyboardInterrupt

    result = fit(model, training_sequences(data), validator(validation_samples(data), exclude_history=False), config,
                 checkpoint_path=checkpoint, on_epoch_end=stop, owner=owner)
    return [r.train_loss for r in result.history], {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("size", [5_000, 20_000, 50_000])
def test_a_truncated_work_checkpoint_is_discarded_not_kept(tmp_path, size):
    """torch.load raises OSError (EINVAL) for these cuts, which was taken for unreadable storage: the
    file was kept and the trial failed on every resume. Now: discarded with a warning, a first run."""
    reference = fit_tiny(tmp_path / "reference.pt", "job-a")
    checkpoint = tmp_path / "work" / "last.pt"
    with pytest.raises(KeyboardInterrupt):
        fit_tiny(checkpoint, "job-a", interrupt_after=2)
    whole = checkpoint.read_bytes()
    assert len(whole) > size
    checkpoint.write_bytes(whole[:size])
    with pytest.warns(UserWarning, match=r"is damaged \(.*\); discarded, training starts from epoch 1"):
        losses, weights = fit_tiny(checkpoint, "job-a")
    assert losses == reference[0] and all(torch.equal(weights[k], v) for k, v in reference[1].items())


def test_another_jobs_work_checkpoint_is_discarded_not_resumed(tmp_path):
    """A checkpoint copied from another job's work folder (same model, data and train settings) was
    resumed from without a word; it is bound to its job now."""
    reference = fit_tiny(tmp_path / "reference.pt", "job-b")
    checkpoint = tmp_path / "work" / "last.pt"
    with pytest.raises(KeyboardInterrupt):
        fit_tiny(checkpoint, "job-a", interrupt_after=2)
    with pytest.warns(UserWarning, match="it was written for job job-a, not for this one \\(job-b\\)"):
        losses, weights = fit_tiny(checkpoint, "job-b")
    assert len(losses) == 3 and losses == reference[0]
    assert all(torch.equal(weights[k], v) for k, v in reference[1].items())
    assert torch.load(checkpoint, weights_only=True)["owner"] == "job-b"  # rewritten by its own job


# ---- the machine and the storage (issue 24, points 7 and 8) --------------------------------------------

@pytest.mark.parametrize("where, error", [
    ("csrec.runner.local_backend.LocalBackend.train_models",  # object storage gone mid-run
     OSError("When reading information for key 'x' in bucket 'b': AWS Error NETWORK_CONNECTION during HeadObject")),
    ("csrec.runner.experiment.write_text_atomic", OSError(30, "Read-only file system")),  # EROFS
    ("csrec.runner.experiment.write_text_atomic", OSError(28, "No space left on device")),  # ENOSPC
])
def test_the_machine_or_the_storage_failing_is_one_line_and_a_resume_goes_on(tmp_path, capsys, monkeypatch,
                                                                             where, error):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(where, fail)
    code, out, err = launch_main(capsys, "run", write_smoke_spec(tmp_path, "broken"), "--local")
    assert_refused(code, err, first_line_of(error), "finished work is kept", "resume DIR")


def first_line_of(error: OSError) -> str:
    from csrec.errors import first_line
    return first_line(error)


def test_a_full_disk_that_torch_reports_as_a_runtime_error_is_said_as_one(tmp_path, monkeypatch):
    """torch.save on a full disk raises RuntimeError ("unexpected pos"): a traceback of `train --store`."""
    import shutil as shutil_module
    from collections import namedtuple

    from csrec import errors
    from csrec.store import Store
    from csrec.train import save_atomic

    usage, disk_usage = namedtuple("usage", "total used free"), shutil_module.disk_usage
    monkeypatch.setattr(errors.shutil, "disk_usage", lambda folder: usage(1 << 30, (1 << 30) - 8192, 8192))
    real_save = torch.save

    def full(obj, f, *args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed, unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError, match=r"No space left on the disk of .* \(8192 bytes free; RuntimeError"):
        Store(tmp_path / "store").write("models", "k", {}, lambda d: torch.save({}, d / "model.pt"))
    with pytest.raises(OSError, match="No space left on the disk of"):
        save_atomic({}, tmp_path / "work" / "last.pt")
    assert not list((tmp_path / "work").iterdir())  # no temporary file left behind
    monkeypatch.setattr(errors.shutil, "disk_usage", disk_usage)  # space left: torch's error as it is
    with pytest.raises(RuntimeError, match="unexpected pos"):
        save_atomic({}, tmp_path / "work" / "last.pt")
    monkeypatch.setattr(torch, "save", real_save)


def test_status_with_a_progress_file_of_wrong_types_says_so(tmp_path, capsys):
    from test_bad_inputs import started

    directory = started(tmp_path)
    (directory / "progress.json").write_text(json.dumps({"updated": "x", "stage": 3}))
    code, out, err = launch_main(capsys, "status", directory)
    assert code == 0 and "progress.json is damaged (updated is not a time); the driver's progress is not known" in out


def test_a_bad_ray_address_in_the_environment_is_one_line_before_anything_is_written(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "not-an-address")
    code, out, err = launch_main(capsys, "run", write_smoke_spec(tmp_path, "addressed"))
    assert_refused(code, err, "Ray address 'not-an-address' (--address or RAY_ADDRESS) is not host:port")
    assert not (tmp_path / "addressed").exists()


def test_under_ray_a_discarded_work_checkpoint_is_said_by_the_driver(tmp_path, reference, reference_table, capsys):
    """Issue 24, point 10: `--local` said it, a Ray worker's output never reached the driver."""
    directory = copy_of(reference, tmp_path)
    student = search_key(reference, "softrec")
    forget(directory, student)
    (directory / "store" / "work" / student).mkdir(parents=True)
    (directory / "store" / "work" / student / "last.pt").write_bytes(b"\x00garbage" * 100)
    import ray

    try:
        code, out, err = launch_main(capsys, "resume", directory)
    finally:
        ray.shutdown()  # Ray started in this process by the driver: not left to the tests after this one
    assert code == 0, err
    said = [line for line in err.splitlines() if "is damaged" in line]
    assert len(said) == 1 and said[0].startswith(f"warning: work checkpoint ") and student in said[0], err
    assert said[0].endswith("; discarded, training starts from epoch 1")
    assert comparison_table(directory) == reference_table


def test_an_asha_table_says_it_is_not_reproducible_run_to_run():
    """Issue 24, point 6: identical ASHA runs gave different tables (stop decisions follow the order
    trials report in); the legend says so, a fifo legend has no such sentence."""
    from types import SimpleNamespace

    import pandas as pd

    from analysis import tables

    trials = pd.DataFrame({"stage": ["search", "search"], "method": ["softrec", "softrec"],
                           "dataset": ["smoke", "smoke"], "stopped_epochs": [2.0, float("nan")]})
    scheduler = {"kind": "asha", "grace_epochs": 2, "reduction_factor": 2, "rungs": [2], "max_epochs": 4}
    asha = SimpleNamespace(early_stopping=True, scheduler=scheduler, trials=trials)
    legend = tables._early_stopping(asha, ("smoke",))
    assert legend.startswith("early stopping in the search: ASHA") and "stopped 1 of 2 search runs" in legend
    assert legend.endswith("ASHA's stop decisions depend on the order in which concurrent trials report, so this "
                           "table is not reproducible run to run (a fifo table is)")
    assert tables._early_stopping(SimpleNamespace(early_stopping=False), ("smoke",)) == ""
