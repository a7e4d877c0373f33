"""What a new user trips on (issue 23): `train` says when a model comes from the store and retrains
on --retrain, after this machine's checks; names in any case (GRU4Rec, CSRec-M, NDCG@10, Hit@10);
--help shows every default and choice; --out, --overwrite, --version, `list`, the console script;
`run --set` and the one rule for relative paths; -q / -v / CSREC_LOG_LEVEL; teacher epochs in the
progress; TensorBoard curves and HParams for `train` and for trials.

Commands run in this process through launch.main on experiments/data/smoke.csv, one epoch each.
"""

from __future__ import annotations

import argparse
import configparser
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import quiet, write_smoke_spec

import launch
from csrec.cli import COMMANDS, DefaultsHelp
from csrec.config import load_spec
from csrec.errors import CSRecError
from csrec.metrics import metric_name
from csrec.tensorboard import read_scalars

ROOT = Path(__file__).resolve().parents[1]
SMOKE_DATA = ROOT / "experiments" / "data" / "smoke.csv"


def train_args(tmp_path: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(SMOKE_DATA), "--model", "gru4rec", "--out", str(tmp_path / "out"),
            "--store", str(tmp_path / "store"), "--max-len", "8", "--epochs", "2", "--device", "cpu",
            "--threads", "1", *extra]


def metrics(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "out" / "metrics.json").read_text())


# 1. The store is said, --retrain, the device checked first.

def test_train_says_a_stored_model_comes_from_the_store_and_retrain_trains_it_again(tmp_path, capsys):
    assert launch.main(train_args(tmp_path)) == 0
    first = capsys.readouterr().out
    assert ": training" in first and first.count("\nepoch ") + first.startswith("epoch ") == 2
    trained = metrics(tmp_path)

    assert launch.main(train_args(tmp_path, "--overwrite")) == 0
    second = capsys.readouterr().out
    key = json.loads((tmp_path / "out" / "config.json").read_text())["key"]
    stored = next(line for line in second.splitlines() if "from the store" in line)
    assert f"[{key}]" in stored and str(tmp_path / "store" / "models" / key) in stored
    assert f"best epoch {trained['best_epoch']}" in stored
    assert f"valid ndcg@10 {trained['valid']['ndcg@10']:.4f}" in stored and "--retrain" in stored
    assert "epoch   1" not in second and metrics(tmp_path) == trained

    assert launch.main(train_args(tmp_path, "--overwrite", "--retrain")) == 0
    third = capsys.readouterr().out
    assert f"--retrain: the stored model {key} is removed" in third and "epoch   2" in third
    again = metrics(tmp_path)  # the same seed on the CPU: the same model again
    assert again["best_epoch"] == trained["best_epoch"]
    assert again["test"] == pytest.approx(trained["test"]) and again["valid"] == pytest.approx(trained["valid"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_device_this_machine_lacks_is_refused_although_the_model_is_stored(tmp_path, capsys):
    assert launch.main(train_args(tmp_path)) == 0
    capsys.readouterr()
    args = train_args(tmp_path, "--overwrite")
    args[args.index("--device") + 1] = "cuda"
    assert launch.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --device cuda: train.device is 'cuda' but CUDA is not available; use 'auto' or 'cpu'"


# 3. Names in any case, RecBole's spellings.

def test_model_and_method_names_are_taken_in_any_case(tmp_path, capsys):
    args = train_args(tmp_path, "--method", "SoftRec", "--beta", "0.5", "-T", "3", "--epochs", "1")
    args[args.index("--model") + 1] = "GRU4Rec"
    assert launch.main(args) == 0
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["job"]["model"] == "gru4rec" and config["job"]["objective"] == "softrec"
    assert "unknown" not in capsys.readouterr().err

    spec = load_spec(write_smoke_spec(tmp_path, "names", models=["GRU4Rec"], methods=["Base", "SoftRec", "CSRec-M"],
                                      search={"SOFTREC": {"beta": [0.5], "temperature": [3.0]}},
                                      model_overrides={"gru4rec": {"embedding_size": 16, "hidden_size": 16}}))
    assert spec.models == ("gru4rec",) and spec.methods == ("base", "softrec", "csrec-m")
    assert spec.search_space("softrec").beta == (0.5,)
    with pytest.raises(CSRecError, match="models: unknown model 'BERT4Rec'; known: gru4rec, .* \\(any case\\)"):
        load_spec(write_smoke_spec(tmp_path, "bad", models=["BERT4Rec"]))


@pytest.mark.parametrize("given, ours", [("NDCG@10", "ndcg@10"), ("Recall@10", "recall@10"), ("Hit@10", "recall@10"),
                                         ("MRR@20", "mrr@20"), ("ndcg+@5", "ndcg+@5"), ("HIT+@10", "recall+@10")])
def test_metric_names_in_recbole_spelling(given, ours):
    assert metric_name(given) == ours
    assert launch.build_parser().parse_args(["table", "d", "--metric", given]).metric == [ours]


def test_an_unknown_metric_is_one_line_naming_the_forms(capsys):
    with pytest.raises(SystemExit) as exit_:
        launch.main(["table", "d", "--metric", "AUC"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "metric 'AUC'" in err and "recall, ndcg, mrr" in err


# 4. Every default and every choice in --help; log lines name their metric.

def _options(parser: argparse.ArgumentParser, prefix: str):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _options(sub, f"{prefix} {name}")
        elif action.option_strings and not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            yield prefix, parser, action


@pytest.mark.parametrize("command", list(COMMANDS))
def test_help_shows_every_default_and_every_choice(command):
    parser = argparse.ArgumentParser(formatter_class=DefaultsHelp)
    COMMANDS[command][0](parser)
    checked = 0
    for where, owner, action in _options(parser, command):
        text = owner._get_formatter()._expand_help(action)
        if action.nargs != 0 and not action.required:  # a flag's default is its absence
            assert "default" in text, f"{where} {action.option_strings}: no default in {text!r}"
            if action.default not in (None, False) and "(default:" in text:
                shown = action.default if not isinstance(action.default, list) else " ".join(action.default)
                assert f"(default: {shown})" in text
            checked += 1
        for choice in action.choices or ():
            assert choice in owner.format_help(), f"{where} {action.option_strings}: choice {choice} not listed"
    assert checked >= {"train": 30, "table": 5}.get(command, 0)


def test_the_epoch_line_names_its_metric(tmp_path, capsys):
    assert launch.main(train_args(tmp_path, "--epochs", "1")) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch "))
    assert "  valid ndcg@10 0." in line and "best 0." in line


# 7. --out, --overwrite, --version, list, the console script.

def test_out_may_be_empty_and_overwrite_replaces_only_a_train_folder(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    assert launch.main(train_args(tmp_path, "--epochs", "1")) == 0  # empty: taken
    assert launch.main(train_args(tmp_path, "--epochs", "1")) == 2
    assert "--out" in capsys.readouterr().err and "--overwrite" in capsys.readouterr().err + "--overwrite"
    before = (tmp_path / "out" / "metrics.json").read_text()
    assert launch.main(train_args(tmp_path, "--epochs", "1", "--overwrite")) == 0
    assert (tmp_path / "out" / "metrics.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "store"]  # no temporary folder left
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("mine")
    args = train_args(tmp_path, "--epochs", "1", "--overwrite")
    args[args.index("--out") + 1] = str(tmp_path / "mine")
    capsys.readouterr()
    assert launch.main(args) == 2
    assert "holds files that `train` does not write (thesis.tex)" in capsys.readouterr().err
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "mine"


def test_version(capsys):
    from csrec import __version__

    with pytest.raises(SystemExit) as exit_:
        launch.main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"csrec {__version__}"


def test_the_console_script_is_declared_and_runs_the_same_commands():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    scripts = dict(line.split(" = ") for line in config["options.entry_points"]["console_scripts"].split("\n") if line)
    assert scripts == {"csrec": "csrec.cli:console_script"}
    code = "import sys; sys.argv = ['csrec', 'train', '--help']; from csrec.cli import console_script; console_script()"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("usage: csrec train ")
    assert "--retrain" in done.stdout


def test_list_names_each_experiment_with_its_stage_and_trials(tmp_path, capsys):
    for name, stage, done in (("a", "search", 1), ("b", "done", 2)):
        folder = tmp_path / ("group" if name == "b" else ".") / name
        (folder / "store" / "trials").mkdir(parents=True)
        (folder / "experiment.json").write_text(json.dumps({"name": f"exp-{name}"}))
        (folder / "progress.json").write_text(json.dumps({"stage": stage, "updated": 0}))
        (folder / "plan.json").write_text(json.dumps({"teachers": [], "trials": [{"key": "k1"}, {"key": "k2"}]}))
        for key in ("k1", "k2")[:done]:
            (folder / "store" / "trials" / key).mkdir()
            (folder / "store" / "trials" / key / "meta.json").write_text("{}")
    (tmp_path / "store").mkdir()  # not an experiment
    assert launch.main(["list", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "STAGE", "TRIALS", "LAST", "UPDATE", "DIRECTORY"]
    assert [line.split()[:5] for line in lines[1:]] == [["exp-a", "search", "1", "of", "2"],
                                                        ["exp-b", "done", "2", "of", "2"]]
    assert lines[2].endswith(str(tmp_path / "group" / "b"))
    assert launch.main(["list", str(tmp_path / "nothing")]) == 2


# 5. run --set, and the one rule for relative paths.

def test_set_changes_a_spec_with_yaml_values_through_the_strict_loader(tmp_path, monkeypatch):
    spec = write_smoke_spec(tmp_path, "s")
    loaded = load_spec(spec, overrides=("train.max_epochs=7", "seeds=[3, 4]", "scheduler.kind=asha", "scheduler.grace_epochs=2",
                                        "search.softrec.beta=[0.25]", "teachers.m=3"))
    assert loaded.train.max_epochs == 7 and loaded.seeds == (3, 4) and loaded.scheduler.kind == "asha"
    assert loaded.search_space("softrec").beta == (0.25,) and loaded.teachers.m == 3
    monkeypatch.chdir(tmp_path)
    assert load_spec(spec, overrides=("storage=elsewhere/x",)).storage == str(tmp_path / "elsewhere" / "x")
    for override, message in (("train.max_epoch=3", "unknown key 'max_epoch'"),
                              ("train.max_epochs=ten", "train.max_epochs: expected int, got 'ten'"),
                              ("max_epochs", "write KEY=VALUE"), ("train.max_epochs=[1", "not a YAML value"),
                              ("name.x=1", "name is not a mapping")):
        with pytest.raises(CSRecError, match=message.replace("[", "\\[")):
            load_spec(spec, overrides=(override,))


def test_relative_paths_in_a_spec_are_read_against_its_folder(tmp_path, monkeypatch):
    folder = tmp_path / "specs"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "clicks.csv").write_text(SMOKE_DATA.read_text())
    spec = write_smoke_spec(folder, "rel", storage="../runs/rel", reuse=["../runs/other"])
    raw = yaml.safe_load(spec.read_text())
    raw["datasets"]["smoke"]["path"] = "data/clicks.csv"
    spec.write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path / "specs" / "data")  # wherever it is launched from
    loaded = load_spec(spec)
    assert loaded.storage == str(tmp_path / "runs" / "rel") and loaded.reuse == (str(tmp_path / "runs" / "other"),)
    assert loaded.datasets["smoke"].path == str(folder / "data" / "clicks.csv")
    for name in ("quickstart.yaml", "paper_lastfm.yaml", "smoke.yaml"):  # the shipped specs land in ./runs
        assert yaml.safe_load((ROOT / "experiments" / name).read_text())["storage"].startswith("../runs/")


def test_run_records_its_overrides(tmp_path):
    from csrec.runner import run_experiment

    spec = write_smoke_spec(tmp_path, "o", methods=["base"], seeds=[0], search={})
    assert run_experiment(spec, local=True, table=False, log=quiet,
                          overrides=("train.max_epochs=1", "name=renamed")) == 0
    directory = tmp_path / "o"
    assert json.loads((directory / "experiment.json").read_text())["overrides"] == ["train.max_epochs=1",
                                                                                    "name=renamed"]
    recorded = yaml.safe_load((directory / "spec.yaml").read_text())
    assert recorded["train"]["max_epochs"] == 1 and recorded["name"] == "renamed"
    # A resume reads the recorded spec: the overrides hold, and stay recorded.
    assert run_experiment(directory / "spec.yaml", local=True, table=False, log=quiet, directory=directory) == 0
    assert json.loads((directory / "experiment.json").read_text())["overrides"][0] == "train.max_epochs=1"


# 6. Quiet by default, -v / -q, CSREC_LOG_LEVEL.

def test_ray_and_tune_notices_are_off_unless_verbose(monkeypatch):
    from csrec.runner import QUIETED_LOGGERS, quiet_ray

    monkeypatch.delenv("CSREC_LOG_LEVEL", raising=False)
    monkeypatch.delenv("RAY_AIR_NEW_OUTPUT", raising=False)
    quiet_ray()
    assert all(logging.getLogger(name).level == logging.ERROR for name in QUIETED_LOGGERS)
    assert os.environ["RAY_AIR_NEW_OUTPUT"] == "0"  # Tune's legacy reporter at verbose=0: no configuration box
    monkeypatch.setenv("CSREC_LOG_LEVEL", "verbose")
    quiet_ray()
    assert all(logging.getLogger(name).level == logging.NOTSET for name in QUIETED_LOGGERS)


def test_quiet_train_prints_the_results_only(tmp_path, capsys, monkeypatch):
    assert launch.main(train_args(tmp_path, "--epochs", "1", "-q")) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out] == ["best", "valid", "test"]
    assert "CSREC_LOG_LEVEL" not in os.environ  # -q ends with its command
    monkeypatch.setenv("CSREC_LOG_LEVEL", "loud")
    assert launch.main(train_args(tmp_path, "--epochs", "1", "--overwrite")) == 2
    assert "CSREC_LOG_LEVEL='loud': use one of quiet, info, verbose" in capsys.readouterr().err
    monkeypatch.setenv("CSREC_LOG_LEVEL", "quiet")
    assert launch.main(train_args(tmp_path, "--epochs", "1", "--overwrite")) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("best epoch")


# 2. Teachers report epochs as trials do.

def teachers_with_progress(tmp_path, backend) -> list:
    """CSRec-M's two teachers trained by `backend` on the smoke data; every `epochs` block of the
    progress the experiment recorded meanwhile."""
    from csrec.runner.experiment import Experiment, all_teachers
    from csrec.runner.plan import make_plan

    spec = write_smoke_spec(tmp_path, "t", methods=["base", "csrec-m"], seeds=[0],
                            search={"csrec-m": {"beta": [0.5], "temperature": [3.0]}})
    experiment = Experiment.open(spec, log=quiet)
    experiment.initialise(spec)
    snapshots = []
    record = experiment.progress
    experiment.progress = lambda **fields: (snapshots.append(fields.get("epochs")), record(**fields))
    backend.train_models(all_teachers(make_plan(experiment.spec)), experiment)
    return snapshots


def test_teachers_report_their_epochs_to_the_progress(tmp_path):
    from csrec.runner.local_backend import LocalBackend

    snapshots = teachers_with_progress(tmp_path, LocalBackend(quiet))
    seen = [s for s in snapshots if s and s["running"]]
    assert seen and all(s["stage"] == "teachers" and s["total"] == 2 for s in seen)
    epoch = next(iter(seen[0]["running"].values()))
    assert epoch["epoch"] == 1 and epoch["max_epochs"] == 2 and 0 <= epoch["valid"] <= epoch["best"] <= 1
    assert snapshots[-2]["finished"] == 2  # the last ended() before the teachers_done count
    from csrec.runner.epochs import status_lines
    assert "teachers: 2 of 2 finished" in status_lines(snapshots[-2])[0]


# 9. TensorBoard for train, and HParams.

def test_train_writes_curves_and_an_hparams_session(tmp_path):
    assert launch.main(train_args(tmp_path, "--method", "softrec", "--beta", "0.5", "-T", "3", "-q")) == 0
    folder = tmp_path / "out" / "tensorboard"
    scalars = read_scalars(folder)
    assert [step for step, _ in scalars["train/loss"]] == [1, 2]
    history = json.loads((tmp_path / "store" / "models" / json.loads((tmp_path / "out" / "config.json").read_text())[
        "key"] / "result.json").read_text())["history"]
    assert [v for _, v in scalars["valid/ndcg_10"]] == pytest.approx([r["valid_score"] for r in history])
    test_ndcg = metrics(tmp_path)["test"]["ndcg@10"]
    assert scalars["final/test_ndcg_at_10"] == [(0, pytest.approx(test_ndcg))]  # the HParams tab's metric
    assert len(scalars["valid/ndcg_10"]) == 2  # the curve alone
    assert list(folder.glob("events.out.tfevents.*.hparams"))
    text = b"".join(p.read_bytes() for p in folder.glob("events.out.tfevents.*"))
    assert b"_hparams_/session_start_info" in text and b"temperature" in text


def test_teacher_tasks_on_ray_report_their_epochs_to_the_driver(tmp_path, ray_session):
    from csrec.runner.ray_backend import RayBackend

    lines = []
    snapshots = teachers_with_progress(tmp_path, RayBackend(log=lines.append))
    seen = [s for s in snapshots if s and s["stage"] == "teachers"]
    epochs = sorted(r["epoch"] for s in seen for r in s["running"].values())
    assert epochs and set(epochs) <= {1, 2} and seen[-1]["finished"] == 2 and not seen[-1]["running"]
    assert all(r["max_epochs"] == 2 for s in seen for r in s["running"].values())
    trained = [line for line in lines if "trained on node" in line]
    assert len(trained) == 2 and all(len(line.split("trained on node ")[1]) == 8 for line in trained)
