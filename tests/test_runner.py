"""The runner end to end on copies of experiments/smoke.yaml: Ray against the local backend, teacher
deduplication, resume after the driver or a trial's worker is killed, damaged store files, and GPU
requests on a cluster without GPUs.

Everything runs on CPU with fixed seeds, so a run that went through Ray, or was killed and resumed,
must give exactly the per-user ranks of one uninterrupted local run (the `local_smoke` fixture, or
`long_spec`'s reference where the run is killed mid-stage).
Drivers run as subprocesses with one torch thread and their own Ray temp folder; the Ray processes a
killed driver leaves behind carry an environment marker and are ended here by pid, never anyone
else's (no `ray stop`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import quiet, write_smoke_spec

from csrec.config import Resources, load_spec
from csrec.errors import CSRecError
from csrec.runner import run_experiment
from csrec.runner.experiment import seed_trials
from csrec.runner.plan import make_plan
from csrec.runner.trials import trial_result
from csrec.store import Store

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "experiments" / "smoke.yaml"
MARK = "CSREC_TEST_DRIVER"


write_spec = write_smoke_spec


def results(directory: Path) -> dict[str, tuple[dict, pd.DataFrame]]:
    """Every finished trial record: key -> (result.json, per_user.parquet)."""
    folder = directory / "store" / "trials"
    return {p.name: (json.loads((p / "result.json").read_text()), pd.read_parquet(p / "per_user.parquet"))
            for p in sorted(folder.iterdir()) if (p / "meta.json").is_file()}


def assert_same_results(directory: Path, reference: Path) -> None:
    """Each trial of `directory` equals the reference's trial of the same key (metrics and ranks)."""
    ours, theirs = results(directory), results(reference)
    assert ours and set(ours) <= set(theirs)
    for key, (record, per_user) in ours.items():
        assert record == theirs[key][0], key
        pd.testing.assert_frame_equal(per_user, theirs[key][1])


def assert_plan_finished(spec_path: Path) -> None:
    """Every planned trial (Base runs, search points, seed reruns) has its record, and no other does."""
    spec = load_spec(spec_path)
    plan, store = make_plan(spec), Store(spec.directory / "store")
    planned = plan.trials + seed_trials(plan, store)
    assert all(trial_result(store, t) is not None for t in planned)
    assert set(store.keys("trials")) == {t.job.key for t in planned}


def test_seed_reruns_go_seed_by_seed_so_a_cut_run_has_its_cells_at_the_same_number_of_seeds(tmp_path, monkeypatch):
    from csrec.runner import experiment

    spec = load_spec(write_smoke_spec(tmp_path, "order", seeds=[0, 1, 2]))
    plan = make_plan(spec)
    best = {t.cell: dict(t.params) for t in plan.grid_trials}  # one point per cell, as if searched
    monkeypatch.setattr(experiment, "best_points", lambda trials, store: best)
    order = [(t.seed, t.method) for t in seed_trials(plan, Store(tmp_path / "store"))]
    methods = sorted(cell[2] for cell in best)
    assert order == [(1, m) for m in methods] + [(2, m) for m in methods]


def test_ray_grid_searcher_hands_the_stage_points_out_in_list_order():
    # GridSampler alone hands a grid out in a seeded shuffle (5, 2, 1, 3, 0, 4 for six points);
    # the order of seed_trials must hold on Ray too.
    from csrec.runner.ray_backend import RayBackend

    searcher = RayBackend._grid_searcher("order", 6)
    assert [searcher.suggest(f"t{i}")["point"] for i in range(6)] == list(range(6))


def test_an_experiment_reusing_another_copies_its_models_and_trains_nothing(tmp_path, local_smoke, monkeypatch):
    from csrec import jobs
    from csrec.runner.experiment import spec_fingerprint

    def no_training(*args, **kwargs):
        raise AssertionError("a model was trained although the reused experiment holds it")

    monkeypatch.setattr(jobs, "fit", no_training)
    source = tmp_path / "source"
    shutil.copytree(local_smoke, source)
    before = created(source)
    spec_path = write_spec(tmp_path, "again", reuse=[str(source)])
    lines = []
    run_experiment(spec_path, local=True, table=False, log=lines.append)
    assert any(line.startswith("reuse: ") and "copied from" in line for line in lines)
    assert_plan_finished(spec_path)
    assert_same_results(tmp_path / "again", local_smoke)
    assert set(results(tmp_path / "again")) == set(results(local_smoke))
    assert created(source) == before  # the reused store is only read
    # `reuse` says where models come from, not what is computed: adding it keeps the experiment's identity
    plain = load_spec(write_spec(tmp_path, "plain"))
    assert spec_fingerprint(load_spec(spec_path)) == spec_fingerprint(plain)
    # the copies are this experiment's own: it resumes (from its spec.yaml) with the source gone
    shutil.rmtree(source)
    lines.clear()
    run_experiment(tmp_path / "again" / "spec.yaml", local=True, table=False, log=lines.append)
    assert any("holds no models any more" in line for line in lines)
    assert_plan_finished(spec_path)


def test_reuse_of_a_folder_that_is_no_experiment_is_refused_when_the_experiment_starts(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CSRecError, match="reuse: .*empty is neither an experiment directory nor a store"):
        run_experiment(write_spec(tmp_path, "bad", reuse=[str(tmp_path / "empty")]), local=True, log=quiet)
    assert not (tmp_path / "bad").exists()  # refused before anything was written


def created(directory: Path) -> dict[str, float]:
    """kind/key -> meta.json 'created' of every artifact in the store."""
    root = directory / "store"
    return {f"{kind}/{p.name}": json.loads((p / "meta.json").read_text())["created"]
            for kind in ("models", "trials") if (root / kind).is_dir()
            for p in (root / kind).iterdir() if (p / "meta.json").is_file()}



# ---- local backend: deduplication, damaged files -------------------------------------------------

def test_teachers_are_trained_once_and_a_second_run_trains_nothing(tmp_path):
    spec = write_spec(tmp_path, "dedup", methods=["base", "csrec-m"], seeds=[0, 1])
    plan = make_plan(load_spec(spec))
    teachers = {job.key for job in plan.teachers}
    assert len(teachers) == 2  # the Base runs of seeds 0 and 1 are CSRec-M's two teachers
    first = []
    run_experiment(spec, local=True, table=False, log=first.append)
    assert "teachers: 0 of 2 in the store, 2 to train" in first
    assert sum(" teacher " in line for line in first) == 2
    store = Store(tmp_path / "dedup" / "store")
    students = {t.job.key for t in plan.grid_trials + seed_trials(plan, store)}
    assert len(students) == 3 and set(store.keys("models")) == teachers | students
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "dedup" / "store").rglob("meta.json")}

    second = []
    run_experiment(spec, local=True, table=False, log=second.append)
    assert "teachers: 2 of 2 in the store, 0 to train" in second
    assert "search: 2 of 2 trials finished, 0 to run" in second
    assert "seeds: 1 of 1 reruns of the best points finished, 0 to run" in second
    assert not [line for line in second if line.startswith("[")]  # nothing trained, no trial run
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "dedup" / "store").rglob("meta.json")} == stamps


def test_a_truncated_teacher_is_remade_never_loaded(tmp_path):
    spec = write_spec(tmp_path, "damaged", methods=["base", "csrec-m"], seeds=[0])
    run_experiment(spec, local=True, table=False, log=quiet)
    directory = tmp_path / "damaged"
    store = Store(directory / "store")
    plan = make_plan(load_spec(spec))
    student = plan.grid_trials[0]
    teacher = student.job.teachers[1]  # seed 1: a teacher only, not a Base run of this spec
    before_results, before_created = results(directory), created(directory)
    before_model = json.loads((store.path("models", teacher.key) / "result.json").read_text())
    model_file = store.path("models", teacher.key) / "model.pt"
    model_file.write_bytes(model_file.read_bytes()[:1000])
    # the student is trained again, so it must load its teachers: a damaged one would break it
    shutil.rmtree(store.path("models", student.job.key))
    shutil.rmtree(store.path("trials", student.job.key))

    lines = []
    with pytest.warns(UserWarning, match=rf"models/{teacher.key} is damaged \(model.pt does not match its checksum\)"):
        run_experiment(spec, local=True, table=False, log=lines.append)
    assert "teachers: 1 of 2 in the store, 1 to train" in lines
    assert "search: 1 of 2 trials finished, 1 to run" in lines
    assert store.verify("models", teacher.key)
    assert created(directory)[f"models/{teacher.key}"] > before_created[f"models/{teacher.key}"]
    remade = json.loads((store.path("models", teacher.key) / "result.json").read_text())
    fields = ("best_epoch", "valid", "test")
    assert {k: remade[k] for k in fields} == {k: before_model[k] for k in fields}
    after = results(directory)
    assert set(after) == set(before_results)
    for key, (record, per_user) in after.items():
        assert record == before_results[key][0]
        pd.testing.assert_frame_equal(per_user, before_results[key][1])


# ---- the in-process Ray ----------------------------------------------------------------------------

def test_a_gpu_request_without_gpus_becomes_a_cpu_request(ray_session):
    from csrec.runner.ray_backend import feasible

    assert ray_session.cluster_resources().get("GPU", 0) == 0
    with pytest.warns(UserWarning, match="the Ray cluster has none; running on CPU"):
        assert feasible(Resources(cpu=2, gpu=0.5)) == Resources(cpu=2, gpu=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert feasible(Resources(cpu=1)) == Resources(cpu=1)


def test_smoke_through_ray_equals_the_local_backend(tmp_path, ray_session, local_smoke):
    # GPU requests on this CPU-only Ray: the run must go on CPU (with a warning), not stay pending
    spec = write_spec(tmp_path, "ray", teacher_resources={"cpu": 1, "gpu": 1}, trial_resources={"cpu": 1, "gpu": 0.5})
    lines = []
    handler = signal.getsignal(signal.SIGINT)
    with pytest.warns(UserWarning, match="running on CPU"):
        run_experiment(spec, log=lines.append)
    # Tune's Ctrl-C handler is gone with its stages: a Ctrl-C or SIGTERM after them is never swallowed
    assert signal.getsignal(signal.SIGINT) is handler
    directory = tmp_path / "ray"
    assert_plan_finished(spec)
    assert set(results(directory)) == set(results(local_smoke))
    assert_same_results(directory, local_smoke)
    assert sum("trained on node" in line for line in lines) == 5  # each teacher once, as a Ray task
    table = next(line for line in lines if line.startswith("Table"))
    assert all(f"| {name} |" in table for name in ("SoftRec", "CSRec-M", "CSRec-D", "CSRec-T"))
    finals = [json.loads(row) for path in (directory / "tune").glob("*/*/result.json")
              for row in path.read_text().splitlines() if json.loads(row)["done"]]
    assert len(finals) == 5 + 4 and {r["gpu_ids"] for r in finals} == {""}  # ran on CPU

    # a finished trial that has left the store (damaged, removed) is made again on the next run: the
    # stage's Tune folder is a cache, rebuilt from the store with the trials that have no record
    softrec = next(k for k, (record, _) in results(directory).items() if record["method"] == "softrec"
                   and record["stage"] == "search")
    for kind in ("trials", "models"):
        shutil.rmtree(directory / "store" / kind / softrec)
    lines.clear()
    with pytest.warns(UserWarning, match="running on CPU"):
        run_experiment(spec, log=lines.append, table=False)
    assert any(line.startswith("search: the Tune folder") and "rebuilt from the store: 1 trial(s)" in line
               for line in lines)
    assert_plan_finished(spec)
    assert_same_results(directory, local_smoke)


def fails_for_beta(beta: float):
    """student_trainable that raises for the trial of one beta (every retry), as a broken point would."""
    def trainable(config, trials, **kwargs):
        from csrec.runner import ray_backend

        if dict(trials[config["point"]].params)["beta"] == beta:
            raise RuntimeError(f"injected failure at beta {beta}")
        ray_backend.student_trainable(config, trials=trials, **kwargs)

    return trainable


def test_a_ray_trial_out_of_retries_is_recorded_named_and_exits_the_run_with_failed_trials(tmp_path, ray_session,
                                                                                            monkeypatch):
    from csrec.errors import FailedTrials
    from csrec.runner import ray_backend

    monkeypatch.setattr(ray_backend, "student_trainable", fails_for_beta(0.75))
    spec = write_spec(tmp_path, "failing", methods=["softrec"], seeds=[0],
                      search={"softrec": {"beta": [0.5, 0.75], "temperature": [3.0]}})
    lines = []
    with pytest.raises(FailedTrials, match=r"1 trial\(s\) failed: smoke/gru4rec/softrec beta=0.75 temperature=3 "
                                           r"seed=0 \(RuntimeError: injected failure at beta 0.75\)"):
        run_experiment(spec, log=lines.append)
    assert any(line.startswith("  failed: smoke/gru4rec/softrec beta=0.75") for line in lines)
    table = next(line for line in lines if line.startswith("Table"))
    assert "| SoftRec |" in table and "‡" in table.split("| SoftRec |")[1].splitlines()[0]
    (entry,) = json.loads((tmp_path / "failing" / "failed.json").read_text()).values()
    assert entry["error"] == "RuntimeError: injected failure at beta 0.75" and entry["params"]["beta"] == 0.75


def dies_once_before_epoch_3(marker: str):
    """student_trainable whose first attempt is SIGKILLed as it is about to report epoch 3, once
    Tune has its epoch-2 checkpoint; `marker` (the killed pid) keeps the retry from dying too.

    A closure, so cloudpickle ships it by value to the Ray worker, which cannot import this module.
    """
    def trainable(config, **kwargs):
        import os
        import signal
        import time

        from ray import tune

        from csrec.runner import ray_backend

        if not os.path.exists(marker):
            report = tune.report

            def report_or_die(metrics, **options):
                if metrics.get("epoch") == 3 and not metrics.get("done"):
                    time.sleep(3)  # the driver takes in epoch 2's result and checkpoint meanwhile
                    with open(marker, "w") as handle:
                        handle.write(str(os.getpid()))
                    os.kill(os.getpid(), signal.SIGKILL)
                report(metrics, **options)

            tune.report = report_or_die
        ray_backend.student_trainable(config, **kwargs)

    return trainable


def test_a_trial_whose_worker_dies_resumes_from_its_checkpoint(tmp_path, ray_session, monkeypatch):
    from csrec.runner import ray_backend

    train = yaml.safe_load(SMOKE.read_text())["train"] | {"max_epochs": 4, "patience": 4}
    changes = dict(methods=["softrec"], seeds=[0], train=train)
    marker = tmp_path / "killed-pid"
    monkeypatch.setattr(ray_backend, "student_trainable", dies_once_before_epoch_3(str(marker)))
    run_experiment(write_spec(tmp_path, "killed", **changes), table=False, log=quiet)
    run_experiment(write_spec(tmp_path, "uninterrupted", **changes), local=True, table=False, log=quiet)

    assert marker.is_file()
    (trial_log,) = (tmp_path / "killed" / "tune" / "search").glob("*/result.json")
    rows = [json.loads(line) for line in trial_log.read_text().splitlines()]
    assert [r["epoch"] for r in rows if not r["done"]] == [1, 2, 3, 4] and rows[-1]["done"]
    killed = int(marker.read_text())
    assert [r["pid"] for r in rows[:2]] == [killed, killed]
    retry = rows[2]  # the new worker's first report: epoch 3, its first iteration since restoring
    assert retry["pid"] != killed and retry["epoch"] == 3 and retry["iterations_since_restore"] == 1
    assert set(results(tmp_path / "killed")) == set(results(tmp_path / "uninterrupted")) != set()
    assert_same_results(tmp_path / "killed", tmp_path / "uninterrupted")


# ---- resume after the driver is SIGKILLed ------------------------------------------------------------

class Driver:
    """`python launch.py ...` in its own Ray temp folder; its processes carry a marker in their
    environment, so what a killed driver leaves behind is found, and only that."""

    def __init__(self, log: Path):
        self.mark = uuid.uuid4().hex
        self.ray_tmp = tempfile.mkdtemp(prefix="csr", dir="/tmp")
        self.log = log
        self.env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {
            "OMP_NUM_THREADS": "1", "RAY_TMPDIR": self.ray_tmp, MARK: self.mark}

    def start(self, *args: str) -> subprocess.Popen:
        with open(self.log, "a") as out:
            return subprocess.Popen([sys.executable, "launch.py", *args], cwd=ROOT, env=self.env,
                                    stdout=out, stderr=subprocess.STDOUT)

    def run(self, *args: str) -> None:
        process = self.start(*args)
        assert process.wait(timeout=500) == 0, self.log.read_text()[-3000:]

    def kill_when(self, process: subprocess.Popen, moment, timeout: float = 400, how=signal.SIGKILL) -> int:
        deadline = time.time() + timeout
        while not moment():
            assert process.poll() is None, "ended before the moment to kill it:\n" + self.log.read_text()[-3000:]
            assert time.time() < deadline
            time.sleep(0.05)
        process.send_signal(how)
        return process.wait()

    def leftovers(self) -> list[int]:
        mark, found = f"{MARK}={self.mark}".encode(), []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            with contextlib.suppress(OSError):  # gone, or not ours to read
                if mark in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                    found.append(int(pid))
        return found

    def end_leftovers(self, grace: float = 10.0) -> None:
        """Ray's processes follow their killed driver within seconds; after `grace`, SIGKILL the rest."""
        deadline = time.time() + grace
        while (pids := self.leftovers()) and time.time() < deadline + 5:
            for pid in pids if time.time() > deadline else []:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.3)

    def close(self) -> None:
        self.end_leftovers(grace=0)
        shutil.rmtree(self.ray_tmp, ignore_errors=True)


def progress(directory: Path) -> dict:
    path = directory / "progress.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def assert_resumed(spec: Path, before: dict[str, float], reference: Path) -> None:
    """Finished, equal to the uninterrupted reference, and nothing that existed was made again."""
    assert_plan_finished(spec)
    directory = load_spec(spec).directory
    assert_same_results(directory, reference)
    after = created(directory)
    assert {k: after[k] for k in before} == before


def long_train(epochs: int) -> dict:
    """The smoke spec's train section at `epochs` (patience as long): a stage that outlasts a signal
    sent at its first report, which the smoke spec's 2 epochs (0.04 s each) may not."""
    return {"max_epochs": epochs, "patience": epochs, "batch_size": 64, "progress": False, "num_threads": 1}


def long_spec(folder: Path, methods: list[str]) -> tuple[Path, Path]:
    """The smoke spec with `methods` at 40 epochs, and its uninterrupted local run: (spec, reference
    directory). A kill at a trial's first report, or once some jobs are stored, lands while the rest
    still trains; with the smoke spec's 2 epochs the stage can end first."""
    changes = {"methods": methods, "seeds": [0, 1], "train": long_train(40)}
    reference = folder / "reference"
    reference.mkdir()
    run_experiment(write_spec(reference, "exp", **changes), local=True, table=False, log=quiet)
    return write_spec(folder, "exp", **changes), reference / "exp"


@pytest.mark.parametrize("moment", ["teachers", "trials"])
def test_local_run_killed_then_resumed_equals_an_uninterrupted_run(tmp_path, moment):
    # teachers: four, the CSRec-T main teacher after its side teacher
    spec, reference = long_spec(tmp_path, ["base", "csrec-t" if moment == "teachers" else "csrec-m"])
    directory = tmp_path / "exp"
    trials = directory / "store" / "trials"

    def now() -> bool:
        if moment == "teachers":
            return progress(directory).get("teachers_done", 0) >= 1
        return trials.is_dir() and len(Store(directory / "store").keys("trials")) >= 3  # 2 Base + 1 search

    driver = Driver(tmp_path / "driver.log")
    try:
        driver.kill_when(driver.start("run", str(spec), "--local"), now)
        stage = progress(directory)["stage"]
        assert stage == ("teachers" if moment == "teachers" else "search")
        before = created(directory)
        assert before
        driver.run("resume", str(directory), "--local")
    finally:
        driver.close()
    counts = [line for line in (tmp_path / "driver.log").read_text().splitlines()
              if line.startswith("teachers: ") and "in the store" in line]
    assert not counts[-1].startswith("teachers: 0 of")  # the resume found teachers already made
    assert_resumed(spec, before, reference)


def test_ctrl_c_during_the_trials_stops_the_run_and_says_so(tmp_path):
    """Tune answers SIGINT by saving its state and returning from fit: the run must stop there (exit
    130, "interrupted"), not take the stage as finished and go on to the seeds and the table."""
    # Enough epochs that the search trial is still training when the signal lands (at its first
    # report): on an idle machine the smoke spec's 2 epochs end before it, and the run with them.
    spec = write_spec(tmp_path, "exp", methods=["base", "softrec"], seeds=[0, 1], train=long_train(60))
    directory = tmp_path / "exp"
    search = directory / "tune" / "search"

    def now() -> bool:
        return any(p.stat().st_size > 0 for p in search.glob("*/result.json"))

    driver = Driver(tmp_path / "driver.log")
    try:
        code = driver.kill_when(driver.start("run", str(spec)), now, how=signal.SIGINT)
        driver.end_leftovers()
    finally:
        driver.close()
    log = (tmp_path / "driver.log").read_text()
    assert code == 130 and "interrupted: finished work is kept" in log
    assert "search: stopped with" in log and "seeds:" not in log and "Table:" not in log
    assert progress(directory)["stage"] == "search"


def test_ray_run_killed_during_the_trials_then_resumed(tmp_path):
    spec, reference = long_spec(tmp_path, ["base", "softrec"])  # killed at the search trial's first report
    directory = tmp_path / "exp"
    search = directory / "tune" / "search"

    def now() -> bool:  # the driver has logged the trial's first epoch, and Tune has saved its state
        reported = any(p.stat().st_size > 0 for p in search.glob("*/result.json"))
        return reported and any(search.glob("experiment_state-*.json"))

    driver = Driver(tmp_path / "driver.log")
    try:
        driver.kill_when(driver.start("run", str(spec)), now)
        driver.end_leftovers()
        assert not driver.leftovers()
        before = created(directory)
        base_runs = {f"models/{t.job.key}" for t in make_plan(load_spec(spec)).trials if t.method == "base"}
        assert base_runs <= set(before)  # the teacher stage had finished
        assert progress(directory)["stage"] == "search"
        driver.run("resume", str(directory))
    finally:
        driver.close()
    log = (tmp_path / "driver.log").read_text()
    assert "rebuilt from the store: 1 trial(s) without a record" in log  # the killed driver's Tune folder
    (trial_log,) = search.glob("*/result.json")  # the new Tuner's only trial: it went on from its checkpoint
    rows = [json.loads(line) for line in trial_log.read_text().splitlines()]
    assert rows[-1]["done"] and all(r["epoch"] > 1 for r in rows if not r["done"])  # epoch 1 not redone
    assert_resumed(spec, before, reference)


def test_tpe_search_runs_its_budget_and_reruns_the_best(tmp_path):
    spec = write_spec(tmp_path, "tpe", methods=["base", "csrec-m"],
                      search={"csrec-m": {"sampler": "tpe", "budget": 2, "beta": [0.25, 0.5, 0.75],
                                          "temperature": [1.0, 3.0]}})
    run_experiment(spec, local=True, table=False, log=quiet)
    records = [record for record, _ in results(tmp_path / "tpe").values() if record["method"] == "csrec-m"]
    search = [r for r in records if r["stage"] == "search"]
    assert len(search) == 2 and len({(r["params"]["beta"], r["params"]["temperature"]) for r in search}) == 2
    best = max(search, key=lambda r: r["valid"]["ndcg@10"])
    (rerun,) = [r for r in records if r["stage"] == "seeds"]
    assert rerun["params"] == best["params"] and rerun["seed"] == 1
    lines = []
    run_experiment(spec, local=True, table=False, log=lines.append)  # resumed study: budget already spent
    assert len([r for r, _ in results(tmp_path / "tpe").values() if r["method"] == "csrec-m"]) == 3


def test_tpe_through_ray_runs_rounds_of_distinct_points_within_its_budget(tmp_path, ray_session):
    """As many trials at once as the Ray has CPUs: budget 3 gives 3 distinct points in rounds of that
    many (2 + 1 on 2 CPUs); a TPE proposal of a point already evaluated is answered without training
    and not counted."""
    import optuna

    from csrec.runner.experiment import Experiment
    from csrec.runner.tpe import open_study

    spec = write_spec(tmp_path, "tpe-ray", methods=["base", "softrec"],
                      search={"softrec": {"sampler": "tpe", "budget": 3, "beta": [0.25, 0.5, 0.75],
                                          "temperature": [1.0, 3.0]}})
    lines = []
    run_experiment(spec, log=lines.append, table=False)
    records = [r for r, _ in results(tmp_path / "tpe-ray").values() if r["method"] == "softrec"]
    search = [r for r in records if r["stage"] == "search"]
    assert len({(r["params"]["beta"], r["params"]["temperature"]) for r in search}) == len(search) == 3
    assert len([r for r in records if r["stage"] == "seeds"]) == 1
    rounds = sorted((tmp_path / "tpe-ray" / "tune").glob("tpe-*/*/result.json"))
    lanes = int(ray_session.cluster_resources()["CPU"])  # one CPU a trial
    assert len({p.parent.parent for p in rounds}) == -(-3 // lanes) and len(rounds) == 3
    study = open_study(("smoke", "gru4rec", "softrec"), Experiment(load_spec(spec), tmp_path / "tpe-ray"))
    told = {tuple(sorted(t.params.items())): t.value for t in study.trials
            if t.state == optuna.trial.TrialState.COMPLETE}
    assert len(told) == 3
    for r in search:  # the study learnt each trial's validation NDCG@10
        assert told[(("beta", r["params"]["beta"]), ("temperature", r["params"]["temperature"]))] == \
            pytest.approx(r["valid"]["ndcg@10"])


def test_tpe_that_proposes_nothing_new_fills_the_round_from_the_grid_and_says_so(tmp_path, monkeypatch):
    from csrec.runner import tpe

    monkeypatch.setattr(tpe, "_MAX_REPEATS", 0)  # every round: no proposal accepted
    spec = write_spec(tmp_path, "tpe-fill", methods=["base", "softrec"], seeds=[0],
                      search={"softrec": {"sampler": "tpe", "budget": 2, "beta": [0.25, 0.5],
                                          "temperature": [1.0, 3.0]}})
    lines = []
    run_experiment(spec, local=True, table=False, log=lines.append)
    search = [r for r, _ in results(tmp_path / "tpe-fill").values() if r["method"] == "softrec"]
    assert len({(r["params"]["beta"], r["params"]["temperature"]) for r in search}) == len(search) == 2
    assert sum("unevaluated grid point(s) drawn at random" in line for line in lines) == 2


class FailingPoint:
    """The local backend, except that the trial of one point fails (as a Ray trial out of retries)."""

    def __init__(self, beta: float):
        from csrec.runner.local_backend import LocalBackend

        self.local, self.beta, self.asked = LocalBackend(log=quiet), beta, []

    def width(self, experiment) -> int:
        return 1

    def run_trials(self, stage, trials, experiment) -> None:
        self.asked += [dict(t.params)["beta"] for t in trials]
        self.local.run_trials(stage, [t for t in trials if dict(t.params)["beta"] != self.beta], experiment)


def tpe_spec(tmp_path, name: str, budget: int) -> Path:
    return write_spec(tmp_path, name, methods=["softrec"], seeds=[0],
                      search={"softrec": {"sampler": "tpe", "budget": budget, "beta": [0.25, 0.5, 0.75],
                                          "temperature": [3.0]}})


def test_tpe_goes_on_after_a_failed_trial_and_a_resume_tries_it_again(tmp_path):
    import optuna

    from csrec.runner.experiment import Experiment
    from csrec.runner.tpe import open_study, run_tpe

    experiment = Experiment(load_spec(tpe_spec(tmp_path, "tpe-fail", 3)), tmp_path / "tpe-fail")
    experiment.directory.mkdir(parents=True)
    cell = ("smoke", "gru4rec", "softrec")
    backend, lines = FailingPoint(beta=0.5), []
    run_tpe(cell, 3, experiment, backend, lines.append)
    assert sorted(backend.asked) == [0.25, 0.5, 0.75]  # all three tried, the failure did not stop it
    assert any("beta=0.5" in line and "failed" in line for line in lines)
    states = [t.state for t in open_study(cell, experiment).trials if t.params.get("beta") == 0.5]
    assert optuna.trial.TrialState.FAIL in states
    totals = {k: progress(experiment.directory)[k] for k in ("tpe_evaluated", "tpe_failed", "tpe_target")}
    assert totals == {"tpe_evaluated": 2, "tpe_failed": 1, "tpe_target": 3}  # the cell's running total
    backend.beta = None  # the cause is gone: a resume tries beta 0.5 again, and only it
    backend.asked.clear()
    run_tpe(cell, 3, experiment, backend, lines.append)
    assert backend.asked == [0.5]


def test_tpe_resume_runs_proposals_left_unanswered_and_closes_broken_ones(tmp_path):
    import optuna

    from csrec.runner.experiment import Experiment
    from csrec.runner.local_backend import LocalBackend
    from csrec.runner.tpe import distributions, open_study, run_tpe

    experiment = Experiment(load_spec(tpe_spec(tmp_path, "tpe-left", 1)), tmp_path / "tpe-left")
    experiment.directory.mkdir(parents=True)
    cell = ("smoke", "gru4rec", "softrec")
    study = open_study(cell, experiment)  # a driver stopped mid-round left these in the journal:
    study.enqueue_trial({"beta": 0.75, "temperature": 3.0})
    left = study.ask(distributions(experiment.spec, "softrec"))  # a proposal never answered
    broken = study.ask()  # a proposal cut short before its parameters were sampled
    run_tpe(cell, 1, experiment, LocalBackend(log=quiet), quiet)
    trials = {t.number: t for t in open_study(cell, experiment).trials}
    assert trials[left.number].state == optuna.trial.TrialState.COMPLETE  # run, not replaced
    assert trials[broken.number].state == optuna.trial.TrialState.FAIL
    (record,) = [r for r, _ in results(tmp_path / "tpe-left").values()]
    assert record["params"]["beta"] == 0.75
