"""launch.py: a user's mistake in `train` exits 2 with one line that names what to change and leaves
no --out folder; --help documents every option; a tiny `train` writes its three files; `status`
and `run --dry-run` report an experiment's counts, and --dry-run writes nothing.

Commands run in this process through launch.main (fast); one runs as a real subprocess, for the
exit status and the absence of a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import write_smoke_spec

import launch
from csrec.cli import COMMANDS
from csrec.evaluate import compute_metrics
from csrec.runner import run_experiment

ROOT = Path(__file__).resolve().parents[1]
SMOKE_DATA = ROOT / "experiments" / "data" / "smoke.csv"
PER_USER_COLUMNS = ["split", "sequence", "user", "target", "rank", "ties", "rating", "input_length"]  # docs/FORMATS.md


def train_args(tmp_path: Path, *extra: str, data: Path = SMOKE_DATA) -> list[str]:
    return ["train", "--data", str(data), "--model", "gru4rec", "--out", str(tmp_path / "out"),
            "--store", str(tmp_path / "store"), "--max-len", "8", "--epochs", "1", "--device", "cpu",
            "--threads", "1", *extra]


smoke_spec = write_smoke_spec


@pytest.fixture
def malformed(tmp_path) -> Path:
    path = tmp_path / "bad.csv"
    path.write_text("session_id,item_id\n1,10\n1,11,5\n1,12\n")
    return path


@pytest.mark.parametrize("case, extra, names", [
    ("missing file", ["--data", "/nonexistent/lastfm.csv"], ["--data", "no such file"]),
    ("malformed line", None, ["bad.csv, line 3", "fields"]),
    ("unknown model", ["--model", "transformer"], ["--model transformer", "gru4rec"]),
    ("empty after filtering", ["--user-min-count", "1000"], ["user_min_count", "lower"]),
    ("max_len below 3", ["--max-len", "2"], ["max_len must be at least 3"]),
    ("alpha above 1", ["--method", "csrec-t", "--alpha", "1.5", "--beta", "0.5", "-T", "3"], ["alpha must lie in"]),
    ("alpha below 0", ["--method", "csrec-t", "--alpha", "-0.1", "--beta", "0.5", "-T", "3"], ["alpha must lie in"]),
])
def test_train_mistakes_exit_2_with_one_line_and_no_out_folder(tmp_path, capsys, malformed, case, extra, names):
    args = train_args(tmp_path, data=malformed) if extra is None else train_args(tmp_path, *extra)
    assert launch.main(args) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert all(name in lines[0] for name in names), lines[0]
    assert not (tmp_path / "out").exists()


def test_a_mistake_exits_2_from_the_shell_without_a_traceback(tmp_path):
    done = subprocess.run([sys.executable, "launch.py", *train_args(tmp_path, "--data", "/nonexistent/x.csv")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["error: --data /nonexistent/x.csv: no such file"]
    assert not (tmp_path / "out").exists()


def documented_commands() -> list[tuple[str, str]]:
    """(file, arguments) of every `python launch.py ...` or `csrec ...` (the console script) in the fenced
    blocks of README.md and docs/:
    continuation lines joined, cut at a comment, a shell operator or a redirect, an optional
    `[...]` taken with its contents and `$NAME` from the block's own NAME="..." line."""
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for block in re.findall(r"^```[a-z]*\n(.*?)^```", path.read_text(), flags=re.S | re.M):
            block = block.replace("\\\n", " ")
            names = dict(re.findall(r'^(\w+)="([^"]*)"', block, flags=re.M))
            for line in block.splitlines():
                for part in re.split(r"&&|;|\||\)|\d?>|<|\s#", line):
                    if (m := re.search(r"(?:python launch\.py|^\s*csrec|(?<=&&) csrec) (.*)", part)):
                        arguments = re.sub(r"\$(\w+)", lambda v: names[v.group(1)], m.group(1))
                        found.append((path.name, arguments.replace("[", "").replace("]", "").strip()))
    return found


def test_every_documented_command_parses_and_names_files_that_exist(capsys):
    commands = documented_commands()
    assert len(commands) >= 40 and any(name == "README.md" for name, _ in commands)
    for name, arguments in commands:
        try:
            args = launch.build_parser().parse_args(shlex.split(arguments))
        except SystemExit as exit_:
            assert exit_.code == 0, f"{name}: launch.py {arguments}: {capsys.readouterr().err.strip()}"
            continue
        spec = getattr(args, "spec", None)
        if spec and str(spec).startswith("experiments/"):
            assert (ROOT / spec).is_file(), f"{name}: launch.py {arguments}: no such spec"


@pytest.mark.parametrize("command", list(COMMANDS))
def test_help_documents_every_option(capsys, command):
    with pytest.raises(SystemExit) as exit_:
        launch.main([command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    parser = argparse.ArgumentParser()
    COMMANDS[command][0](parser)
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"{command}: {action.option_strings or action.dest} has no help text"
        for option in action.option_strings:
            assert option in text, f"{command}: {option} is not in --help"


def test_tiny_train_writes_config_metrics_and_per_user(tmp_path, capsys):
    assert launch.main(train_args(tmp_path)) == 0
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "metrics.json", "per_user.parquet", "tensorboard"]
    config = json.loads((out / "config.json").read_text())
    assert config["arguments"]["model"] == "gru4rec" and config["data"]["max_len"] == 8
    assert config["train"]["max_epochs"] == 1 and len(config["key"]) == 20
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["best_epoch"] == 1
    per_user = pd.read_parquet(out / "per_user.parquet")
    assert list(per_user.columns) == PER_USER_COLUMNS
    assert set(per_user["split"]) == {"valid", "test"} and (per_user["rank"] >= 1).all()
    assert per_user["rating"].isna().all()  # smoke.csv's rating column is constant: no ratings
    for split in ("valid", "test"):  # the metrics are those of the per-user ranks written beside them
        rows = per_user[per_user["split"] == split]
        expected = compute_metrics(rows["rank"].to_numpy(), ties=rows["ties"].to_numpy())
        assert metrics[split] == pytest.approx(expected)
        if not rows["ties"].any():
            assert metrics[split]["recall@10"] == pytest.approx(np.mean(rows["rank"] <= 10))
    assert "best epoch 1" in capsys.readouterr().out


@pytest.fixture(scope="module")
def finished_smoke(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("finished")
    run_experiment(smoke_spec(folder, "smoke"), local=True, table=False, log=lambda _: None)
    return folder / "smoke"


def test_status_of_a_finished_experiment_prints_its_counts(finished_smoke, capsys):
    assert launch.main(["status", str(finished_smoke)]) == 0
    out = capsys.readouterr().out
    assert "teachers: 5 of 5 in the store" in out
    assert "planned trials (search + base runs): 7 of 7 finished" in out  # 2 Base runs + 5 grid points
    assert "all finished student trials in the store: 11" in out  # + 4 seed reruns
    assert "driver: stage done" in out
    # the best validation score per method, from the store's records (whichever backend ran them)
    records = [json.loads(p.read_text()) for p in (finished_smoke / "store" / "trials").glob("*/result.json")]
    best = max(r["valid"]["ndcg@10"] for r in records if r["method"] == "csrec-m")
    assert f"best valid ndcg@10 so far, csrec-m: {best:.4f}" in out


def test_status_during_a_tpe_search_prints_the_cells_running_total(tmp_path, finished_smoke, capsys):
    shutil.copy(finished_smoke / "plan.json", tmp_path / "plan.json")
    (tmp_path / "progress.json").write_text(json.dumps(
        {"stage": "tpe smoke/gru4rec/softrec", "tpe_evaluated": 2, "tpe_failed": 1, "tpe_target": 3}))
    assert launch.main(["status", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "driver: stage tpe smoke/gru4rec/softrec" in out
    assert "TPE search of this cell: 2 of 3 distinct points evaluated, 1 failed" in out


def test_status_says_which_earlier_failures_a_resume_is_running_again(tmp_path, finished_smoke, capsys):
    shutil.copy(finished_smoke / "plan.json", tmp_path / "plan.json")
    failed = {"k1": {"label": "smoke/gru4rec/softrec beta=0.5", "error": "OSError: disk full"},
              "k2": {"label": "smoke/gru4rec/csrec-m beta=0.5", "error": "OSError: disk full"}}
    (tmp_path / "failed.json").write_text(json.dumps(failed))
    running = {"smoke/gru4rec/csrec-m beta=0.5": {"epoch": 3, "max_epochs": 8, "valid": 0.1, "best": 0.1,
                                                  "seconds": 1.0}}
    (tmp_path / "progress.json").write_text(json.dumps({"stage": "search", "epochs": {
        "stage": "search", "total": 2, "finished": 0, "stopped": 0, "failed": 0, "running": running,
        "pending": 1, "eta_s": 5.0, "mean_epoch_s": 1.0}}))
    # No driver holds it (killed): what progress.json says was running is history.
    assert launch.main(["status", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "  smoke/gru4rec/csrec-m beta=0.5: OSError: disk full" in lines
    assert ("no driver runs now: the stage search stopped with 1 trial(s) running (`launch.py resume DIR` goes on "
            "from their last epoch checkpoints)") in lines
    assert not any("epoch 3 of 8" in line for line in lines)
    # A driver (this process) holds it: the resumed trial is running again.
    (tmp_path / "driver.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                                       "started": time.time()}))
    assert launch.main(["status", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "failed trials (no record; `launch.py resume` tries them again): 2" in lines
    assert "  smoke/gru4rec/softrec beta=0.5: OSError: disk full" in lines  # not running: failed as it was
    assert "  smoke/gru4rec/csrec-m beta=0.5: OSError: disk full (running again now)" in lines
    assert any("smoke/gru4rec/csrec-m beta=0.5: epoch 3 of 8" in line for line in lines)


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, finished_smoke, capsys):
    spec = smoke_spec(tmp_path, "fresh")
    assert launch.main(["run", str(spec), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "teachers and Base runs: 5 (0 in the store, 0 to copy from a reused experiment, 5 to train)" in out
    assert "student search trials: 5 (0 finished, 0 to copy from a reused experiment, 5 to run)" in out
    assert "seed reruns after the search: 4 cells x 1 seeds = 4 trials" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh.yaml"]

    finished = finished_smoke.parent / "smoke.yaml"
    files = {p: p.stat().st_mtime_ns for p in finished_smoke.rglob("*")}
    assert launch.main(["run", str(finished), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "teachers and Base runs: 5 (5 in the store, 0 to copy from a reused experiment, 0 to train)" in out
    assert "student search trials: 5 (5 finished, 0 to copy from a reused experiment, 0 to run)" in out
    # a new experiment reusing the finished one would copy everything and train nothing
    reusing = smoke_spec(tmp_path, "reusing", reuse=[str(finished_smoke)])
    assert launch.main(["run", str(reusing), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "teachers and Base runs: 5 (0 in the store, 5 to copy from a reused experiment, 0 to train)" in out
    assert "student search trials: 5 (0 finished, 5 to copy from a reused experiment, 0 to run)" in out
    assert {p: p.stat().st_mtime_ns for p in finished_smoke.rglob("*")} == files
    assert not (tmp_path / "reusing").exists()


def test_teachers_evaluates_each_students_teacher_module(finished_smoke, capsys):
    from csrec.config import load_spec
    from csrec.data import load_sequence_data
    from csrec.data.protocols import train_item_counts
    from csrec.data.splits import test_samples
    from csrec.runner.teacher_quality import teacher_quality

    frame = teacher_quality(finished_smoke)
    roles = frame.groupby("method")["role"].apply(list).to_dict()
    assert roles == {"csrec-d": ["teacher module", "teacher", "teacher", "student"],
                     "csrec-m": ["teacher module", "teacher", "teacher", "student"],
                     "csrec-t": ["teacher module", "teacher", "student"],
                     "softrec": ["teacher module", "student"]}
    metrics = ["valid_ndcg@10", "test_recall@10", "test_ndcg@10"]
    # CSRec-T's module is its one main teacher: evaluated here, it scores what its training stored.
    module, teacher = frame[frame["method"] == "csrec-t"][metrics].to_numpy()[:2]
    np.testing.assert_allclose(module, teacher, rtol=1e-12)
    # SoftRec's teacher ranks by training counts alone, items of the input excluded (windows protocol).
    data = load_sequence_data(load_spec(finished_smoke / "spec.yaml").datasets["smoke"])
    counts, test = train_item_counts(data), test_samples(data)
    recall = []  # items with the target's count are ties, broken at random: the share of top-10 places
    for seq, target in zip(test.item_seq, test.targets):
        others = np.setdiff1d(np.arange(1, data.n_items + 1), np.append(seq[seq > 0], target))
        above, ties = int((counts[others] > counts[target]).sum()), int((counts[others] == counts[target]).sum())
        recall.append(min(max(10 - above, 0), ties + 1) / (ties + 1))
    softrec = frame[(frame["method"] == "softrec") & (frame["role"] == "teacher module")].iloc[0]
    assert softrec["test_recall@10"] == pytest.approx(np.mean(recall))
    assert launch.main(["teachers", str(finished_smoke)]) == 0
    assert "| smoke | gru4rec | csrec-m | teacher module | mean logits of gru4rec ce seed=0, sequence layout + gru4rec ce seed=1, sequence layout |" \
        in capsys.readouterr().out
