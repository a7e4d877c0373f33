"""Early stopping with ASHA (`scheduler: asha`), progress by epoch, TensorBoard curves.

Two SoftRec points that are clearly apart on the smoke data: beta 0 (cross-entropy) learns the
data's "item i, then i + 1" pattern; beta 1 with the paper's KL direction learns the item
popularity only (validation NDCG@10 about 0.30 against 0.18 after two epochs, lr 0.01). One trial at
a time, the good point first: at the rung (epoch 2) the bad one is below the good one's score.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import quiet, write_smoke_spec

from analysis import collect, comparison_table, tables
from analysis.report import write_report
from csrec.config import load_spec
from csrec.errors import CSRecError
from csrec.runner import run_experiment
from csrec.tensorboard import read_scalars

GOOD, BAD = 0.0, 1.0  # softrec beta


def asha_spec(folder: Path, name: str, **changes) -> Path:
    settings = dict(methods=["softrec"], seeds=[0, 1], max_concurrent_trials=1,
                    search={"softrec": {"beta": [GOOD, BAD], "temperature": [1.0]}},
                    teachers={"m": 2, "subsample_ratio": 0.8, "kl_direction": "paper"},
                    train={"max_epochs": 4, "patience": 4, "batch_size": 64, "progress": False, "num_threads": 1,
                           "learning_rate": 0.01},
                    scheduler={"kind": "asha", "grace_epochs": 2, "reduction_factor": 2})
    return write_smoke_spec(folder, name, **(settings | changes))


def records(directory: Path) -> dict[str, dict]:
    """trial key -> result.json of every finished trial."""
    folder = directory / "store" / "trials"
    return {p.name: json.loads((p / "result.json").read_text()) for p in folder.iterdir() if (p / "meta.json").is_file()}


def search_record(directory: Path, beta: float) -> dict:
    (record,) = [r for r in records(directory).values() if r["stage"] == "search" and r["params"]["beta"] == beta]
    return record



@pytest.fixture(scope="module")
def asha_run(tmp_path_factory, ray_session) -> tuple[Path, list[str]]:
    folder = tmp_path_factory.mktemp("asha")
    lines: list[str] = []
    run_experiment(asha_spec(folder, "asha"), log=lines.append, table=False)
    return folder / "asha", lines


# ---- the spec ------------------------------------------------------------------------------------

@pytest.mark.parametrize("scheduler, message", [
    ({"kind": "hyperband"}, "is not one of fifo, asha"),
    ({"kind": "asha", "grace_epochs": 4}, "scheduler.grace_epochs (4) must be below train.max_epochs (4)"),
    ({"kind": "asha", "reduction_factor": 1}, "scheduler.reduction_factor must be >= 2"),
    ({"kind": "asha", "grace_epochs": 0}, "scheduler.grace_epochs must be >= 1"),
    ({"kind": "asha", "patience": 3}, "unknown key 'patience'"),
])
def test_a_bad_scheduler_is_refused_saying_what_to_change(tmp_path, scheduler, message):
    with pytest.raises(CSRecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_spec(asha_spec(tmp_path, "bad", scheduler=scheduler))


def test_scheduler_asha_alone_takes_the_defaults_and_fifo_keeps_old_fingerprints(tmp_path):
    from csrec.runner.experiment import spec_fingerprint

    spec = load_spec(asha_spec(tmp_path, "short", scheduler="asha", train={"max_epochs": 80}))
    assert (spec.scheduler.kind, spec.scheduler.grace_epochs, spec.scheduler.reduction_factor) == ("asha", 10, 3)
    assert spec.scheduler.rungs(80) == (10, 30)
    fifo = load_spec(write_smoke_spec(tmp_path, "fifo"))
    assert fifo.scheduler.kind == "fifo"
    assert spec_fingerprint(fifo) == spec_fingerprint(load_spec(write_smoke_spec(tmp_path, "fifo2", scheduler="fifo")))


def test_the_local_backend_refuses_asha(tmp_path):
    with pytest.raises(CSRecError, match="run without --local, or set scheduler: fifo"):
        run_experiment(asha_spec(tmp_path, "local"), local=True, table=False, log=quiet)


# ---- ASHA through Ray ----------------------------------------------------------------------------

@pytest.mark.parametrize("max_epochs, grace, factor", [(90, 10, 3), (80, 10, 2), (30, 10, 3), (80, 10, 3)])
def test_asha_rungs_are_the_settings_and_a_point_at_its_last_epoch_is_never_stopped(tmp_path, max_epochs, grace,
                                                                                    factor):
    # Tune alone puts a rung at max_epochs when max_epochs / grace is a power of the factor (90 = 10 x 3^2),
    # and would stop a point there, on its last epoch, before its model is stored.
    from types import SimpleNamespace

    from ray.tune.schedulers import TrialScheduler

    from csrec.config import SchedulerSettings
    from csrec.runner.scheduler import BEST_METRIC, EPOCH, CellASHA
    from csrec.store import Store

    settings = SchedulerSettings("asha", grace, factor)
    points = [SimpleNamespace(cell=("d", "m", "softrec"), job=SimpleNamespace(key=f"k{i}"), label=lambda: "point")
              for i in range(4)]
    scheduler = CellASHA(points, settings, max_epochs, Store(tmp_path / "store"), tmp_path / "work")
    tune_trials = [SimpleNamespace(config={"point": i}, trial_id=f"t{i}") for i in range(4)]
    for tune_trial in tune_trials:
        scheduler.on_trial_add(None, tune_trial)
    rungs = [int(m) for m, _ in scheduler._cell(tune_trials[0])._brackets[0]._rungs]
    assert sorted(rungs) == list(settings.rungs(max_epochs)) and max(rungs) < max_epochs
    actions = []
    for epoch in range(1, max_epochs + 1):  # three good points pass every rung; the last is far below
        for i, tune_trial in enumerate(tune_trials):
            score = 0.01 if i == 3 else 0.5 + i / 100
            action = scheduler.on_trial_result(None, tune_trial, {EPOCH: epoch, BEST_METRIC: score})
            actions.append((i, epoch, action))
    stops = [(i, epoch) for i, epoch, action in actions if action == TrialScheduler.STOP]
    assert stops and all(i == 3 and epoch in rungs for i, epoch in stops)  # the bad point, at rungs only
    assert not any(epoch == max_epochs for _, epoch in stops)


def test_asha_stops_the_worse_point_at_its_rung_and_not_the_better(asha_run):
    directory, lines = asha_run
    good, bad = search_record(directory, GOOD), search_record(directory, BAD)
    assert "stopped" not in good and good["best_epoch"] >= 3
    stop = bad["stopped"]
    assert (stop["by"], stop["epoch"], stop["epochs"], stop["rung"]) == ("asha", 2, 2, 2)
    assert stop["score"] < stop["cutoff"] and stop["compared_with"] == 1 and len(stop["history"]) == 2
    assert bad["best_epoch"] <= 2 and bad["valid"]["ndcg@10"] < good["valid"]["ndcg@10"]
    # a stopped point is no model: its key names the model trained to the end
    assert not (directory / "store" / "models" / bad["key"]).exists()
    assert (directory / "store" / "models" / good["key"] / "meta.json").is_file()
    assert not json.loads((directory / "failed.json").read_text())
    assert any(line.startswith("stopped early: smoke/gru4rec/softrec beta=1") for line in lines)


def test_seed_reruns_of_the_selected_point_train_the_full_budget(asha_run):
    directory, _ = asha_run
    (rerun,) = [r for r in records(directory).values() if r["stage"] == "seeds"]
    assert rerun["params"]["beta"] == GOOD and rerun["seed"] == 1 and "stopped" not in rerun
    model = json.loads((directory / "store" / "models" / rerun["key"] / "result.json").read_text())
    assert len(model["history"]) == 4


def test_a_stopped_point_is_in_the_table_and_report_as_stopped_not_failed(asha_run, tmp_path):
    directory, _ = asha_run
    collection = collect(directory)
    assert list(collection.stopped["config"]) == ["beta=1.0 temperature=1.0"] and not collection.incomplete
    assert "search runs stopped early by ASHA (finished, not failed" in collection.report()
    table = comparison_table(directory)
    assert ("early stopping in the search: ASHA on validation NDCG@10 (grace 2 epochs, reduction factor 2, rungs "
            "at epochs 2 of 4) stopped 1 of 2 search runs") in table
    assert "‡" not in table and "§" not in table  # the selected point trained to the end: no mark
    # the counts are the table's data sets' (Table 3 leaves out those without ratings)
    assert "stopped 0 of 0 search runs" in tables._early_stopping(collection, ("ml-100k",))
    report = write_report(directory, tmp_path / "report.md", html_too=False).read_text()
    assert "after epoch 2" in report and "failed (" not in report
    # the mark: with the good point's record gone, the stopped point is selected and marked §
    copy = tmp_path / "copy"
    shutil.copytree(directory, copy)
    good = search_record(directory, GOOD)
    for key in [good["key"]] + [r["key"] for r in records(directory).values() if r["stage"] == "seeds"]:
        shutil.rmtree(copy / "store" / "trials" / key)
    marked = comparison_table(copy)
    row = next(line for line in marked.splitlines() if line.startswith("| smoke | SoftRec"))
    assert row.count("§") == 2  # both metrics of the cell
    assert "§: the number averages a search run stopped early (its best epoch before the stop" in marked
    csv = comparison_table(copy, "csv")
    assert csv.splitlines()[0].endswith("incomplete,stopped") and csv.splitlines()[1].endswith(",True")


def test_tensorboard_curves_are_under_the_experiment_and_hold_each_epoch(asha_run):
    directory, lines = asha_run
    good, bad = search_record(directory, GOOD), search_record(directory, BAD)
    history = json.loads((directory / "store" / "models" / good["key"] / "result.json").read_text())["history"]
    (good_folder,) = (directory / "tensorboard" / "search").glob(f"*-{good['key'][:8]}")
    (bad_folder,) = (directory / "tensorboard" / "search").glob(f"*-{bad['key'][:8]}")
    scalars = read_scalars(good_folder)
    assert [step for step, _ in scalars["valid/ndcg_10"]] == [1, 2, 3, 4]
    assert [v for _, v in scalars["valid/ndcg_10"]] == pytest.approx([h["valid_score"] for h in history], rel=1e-6)
    assert [v for _, v in scalars["train/loss"]] == pytest.approx([h["train_loss"] for h in history], rel=1e-6)
    stopped = read_scalars(bad_folder)["valid/ndcg_10"]
    assert [v for _, v in stopped] == pytest.approx(bad["stopped"]["history"], rel=1e-6)
    assert any(f"tensorboard --logdir {directory / 'tensorboard'}" in line for line in lines)
    assert not any("/tmp/ray" in line for line in lines)


def test_resume_keeps_the_stop_decisions(asha_run, tmp_path):
    """A second run trains nothing; a driver killed after the decision but before the record finds
    the decision and records the point from its checkpoint; with no decision kept, the resumed
    stage's rungs (filled from the store) stop the point again."""
    from csrec.jobs import train_job
    from csrec.runner.plan import trial_for
    from csrec.runner.trials import write_stop_decision
    from csrec.store import Store

    directory, _ = asha_run
    before = {key: (directory / "store" / "trials" / key / "meta.json").read_text() for key in records(directory)}
    spec_path = directory.parent / "asha.yaml"
    run_experiment(spec_path, log=quiet, table=False)
    assert {key: (directory / "store" / "trials" / key / "meta.json").read_text() for key in records(directory)} == before

    bad = search_record(directory, BAD)
    killed = tmp_path / "killed"
    shutil.copytree(directory, killed)
    shutil.rmtree(killed / "store" / "trials" / bad["key"])
    spec = load_spec(spec_path)
    trial = trial_for(spec, ("smoke", "gru4rec", "softrec"), {"beta": BAD, "temperature": 1.0}, 0, "search")

    def tune_stops_it(record):  # what Tune does to a stopped trial: SystemExit inside its report
        if record.epoch == 2:
            raise SystemExit(0)

    with pytest.raises(SystemExit):
        train_job(trial.job, Store(killed / "store"), killed / "store" / "work", tune_stops_it)
    measured = ("epochs", "history", "seconds")  # from the checkpoint, not the decision
    decision = {k: v for k, v in bad["stopped"].items() if k not in measured}
    write_stop_decision(killed / "store" / "work", trial, decision)
    lines: list[str] = []
    run_experiment(spec_path, directory=killed, log=lines.append, table=False)
    again = search_record(killed, BAD)
    assert {k: v for k, v in again["stopped"].items() if k != "seconds"} == \
        {k: v for k, v in bad["stopped"].items() if k != "seconds"} and again["valid"] == bad["valid"]
    assert not (killed / "store" / "models" / bad["key"]).exists()
    assert any(line.startswith("stopped early: smoke/gru4rec/softrec beta=1") for line in lines)
    assert not any(line.startswith("search: ASHA") for line in lines)  # no Tuner: nothing to train

    shutil.rmtree(killed / "store" / "trials" / bad["key"])  # no record and no decision: trained again
    run_experiment(spec_path, directory=killed, log=quiet, table=False)
    assert search_record(killed, BAD)["stopped"]["epoch"] == 2  # stopped again: the rung holds the good point


def test_a_stopped_points_checkpoint_comes_from_tune_storage_and_a_lost_one_means_training_it_again(tmp_path):
    # On object storage each node has its own work folder: the driver records a stopped point from
    # the checkpoint the trial reported to Tune; a checkpoint lost or damaged drops the decision.
    from types import SimpleNamespace

    from ray import tune

    from csrec.runner.plan import trial_for
    from csrec.runner.ray_backend import _fetch_stopped_checkpoints
    from csrec.runner.trials import STOPPED_FILE, record_stopped, write_stop_decision
    from csrec.store import Store

    spec = load_spec(asha_spec(tmp_path, "unit"))
    trial = trial_for(spec, ("smoke", "gru4rec", "softrec"), {"beta": BAD, "temperature": 1.0}, 0, "search")
    reported = tmp_path / "reported"
    reported.mkdir()
    (reported / "last.pt").write_bytes(b"the trial's checkpoint")
    result = SimpleNamespace(config={"point": 0}, checkpoint=tune.Checkpoint.from_directory(str(reported)))
    work = tmp_path / "driver-work"
    _fetch_stopped_checkpoints([result], [trial], set(), work)
    assert not (work / trial.job.key).exists()  # not stopped: nothing to fetch
    _fetch_stopped_checkpoints([result], [trial], {trial.job.key}, work)
    assert (work / trial.job.key / "last.pt").read_bytes() == b"the trial's checkpoint"

    write_stop_decision(work, trial, {"by": "asha", "epoch": 2, "rung": 2, "score": 0.1, "cutoff": 0.2})
    lines: list[str] = []
    pending = record_stopped([trial], Store(tmp_path / "store"), work, lines.append)  # those bytes are no checkpoint
    assert pending == [trial] and not (work / trial.job.key / STOPPED_FILE).exists()
    assert "is unreadable" in lines[0] and "the point trains again" in lines[0]
    assert not (tmp_path / "store" / "trials").exists()


# ---- progress by epoch ---------------------------------------------------------------------------

def test_status_of_a_running_experiment_shows_each_trial_epoch_and_the_time_left(tmp_path, monkeypatch):
    from csrec.runner import epochs
    from csrec.runner.status import status

    seen: list[str] = []
    original = epochs.EpochProgress.epoch

    def epoch_then_status(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if self.stage == "search" and not seen:  # the driver is inside a trial, between two epochs
            seen.append(status(tmp_path / "smoke"))

    monkeypatch.setattr(epochs.EpochProgress, "epoch", epoch_then_status)
    run_experiment(write_smoke_spec(tmp_path, "smoke", methods=["base", "csrec-m"]), local=True, table=False,
                   log=quiet)
    (text,) = seen
    assert "search: 0 of 2 finished, 1 running, 1 pending; time left about " in text
    assert "smoke/gru4rec/csrec-m beta=0.5 temperature=3 seed=0: epoch 1 of 2, valid ndcg@10 0." in text
    teachers = read_scalars(next((tmp_path / "smoke" / "tensorboard" / "teachers").iterdir()))
    assert [step for step, _ in teachers["valid/ndcg_10"]] == [1, 2]


def test_the_live_line_is_printed_on_a_terminal_at_most_every_few_seconds_and_never_in_a_log(tmp_path):
    from csrec.runner.epochs import EpochProgress
    from csrec.runner.experiment import Experiment

    experiment = Experiment(load_spec(write_smoke_spec(tmp_path, "live")), tmp_path / "live")
    printed, logged = [], []
    terminal = EpochProgress(experiment, "search", 3, 2, printed.append, every=3600, terminal=True)
    log = EpochProgress(experiment, "search", 3, 2, logged.append, every=0, terminal=False)
    for progress in (terminal, log):
        progress.epoch("a", 1, 0.1, 0.1, 2.0)
        progress.epoch("a", 2, 0.2, 0.2, 2.0)  # within `every`: no line
        progress.epoch("b", 1, 0.3, 0.3, 4.0)
    assert logged == [] and len(printed) == 1
    assert printed[0].startswith("search: 0 of 3 finished, 1 running, 2 pending; time left about ")
    line = terminal.snapshot()
    # 8/3 s an epoch measured; left of the 2-epoch budget: a none, b 1, the pending one 2; 2 lanes
    assert line["eta_s"] == pytest.approx((0 + 1 + 2) * (8.0 / 3) / 2)
    assert line["running"]["b"] == {"epoch": 1, "max_epochs": 2, "valid": 0.3, "best": 0.3, "seconds": 4.0}


def test_tpe_rounds_with_asha_compare_each_point_with_the_earlier_rounds(tmp_path, ray_session):
    """One point a round: the second round's ASHA has only the first round's point to compare with,
    from the store. TPE's sampler, seeded with the search seed (2 here), proposes the good point
    first; the bad one is stopped at its rung, and the study learns its best score before the stop."""
    import optuna

    from csrec.runner.experiment import Experiment
    from csrec.runner.tpe import open_study

    spec = asha_spec(tmp_path, "tpe", seeds=[2],
                     search={"softrec": {"sampler": "tpe", "budget": 2, "beta": [GOOD, BAD], "temperature": [1.0]}})
    run_experiment(spec, log=quiet, table=False)
    good, bad = search_record(tmp_path / "tpe", GOOD), search_record(tmp_path / "tpe", BAD)
    assert "stopped" not in good and bad["stopped"]["epoch"] == 2 and bad["stopped"]["compared_with"] == 1
    assert len(list((tmp_path / "tpe" / "tune").glob("tpe-*/*/result.json"))) == 2  # two rounds
    last_round = json.loads((tmp_path / "tpe" / "progress.json").read_text())["epochs"]  # the live view's, via Ray
    assert (last_round["stopped"], last_round["finished"], last_round["running"]) == (1, 0, {})
    study = open_study(("smoke", "gru4rec", "softrec"), Experiment(load_spec(spec), tmp_path / "tpe"))
    told = {t.params["beta"]: t.value for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE}
    assert told == {GOOD: pytest.approx(good["valid"]["ndcg@10"]), BAD: pytest.approx(bad["valid"]["ndcg@10"])}
