"""Every bad input we know of gets one line that says what to change, and exit status 2 (issue #13).

Each case builds its input in a temporary folder and calls launch.main in this process (a few run
as subprocesses where only a real process shows the behaviour). The same list makes the table of
docs/RELIABILITY.md:

    python tests/test_bad_inputs.py docs/RELIABILITY.md    # rewrites the table between its markers

A case is (id, what is wrong, argv builder, a fragment the message must hold).
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import launch  # noqa: E402
from conftest import SMOKE, write_smoke_spec  # noqa: E402

SMOKE_DATA = SMOKE.parent / "data" / "smoke.csv"


@dataclass(frozen=True)
class Case:
    id: str
    what: str  # the input, as the table shows it
    argv: Callable[[Path], list]  # folder -> launch.py arguments (the input built inside `folder`)
    expect: str  # a fragment of the one-line message


def spec(folder: Path, **changes) -> Path:
    """The smoke spec with `changes` (dotted keys through "__"), storage folder/exp; its path."""
    raw = yaml.safe_load(SMOKE.read_text())
    raw["datasets"]["smoke"]["path"] = str(SMOKE_DATA)
    raw["storage"] = str(folder / "exp")
    for dotted, value in changes.items():
        node, (*parents, last) = raw, dotted.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def text_spec(folder: Path, text: str) -> Path:
    path = folder / "spec.yaml"
    path.write_text(text)
    return path


def dry(**changes) -> Callable[[Path], list]:
    return lambda folder: ["run", spec(folder, **changes), "--dry-run"]


def dry_text(make: Callable[[Path], str]) -> Callable[[Path], list]:
    return lambda folder: ["run", text_spec(folder, make(folder)), "--dry-run"]


def smoke_text(folder: Path) -> str:
    return spec(folder).read_text()


def bomb(folder: Path) -> str:
    lines = [smoke_text(folder).rstrip(), "model_overrides:", "  gru4rec:", "    a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"    a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    return "\n".join(lines) + "\n"


def train(folder: Path, *extra, data=SMOKE_DATA) -> list:
    return ["train", "--data", data, "--model", "gru4rec", "--out", folder / "out", "--store", folder / "store",
            "--max-len", "8", "--epochs", "1", "--device", "cpu", "--threads", "1", *extra]


def data_file(name: str, text: str | bytes, *extra) -> Callable[[Path], list]:
    def build(folder: Path) -> list:
        path = folder / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return train(folder, *extra, data=path)
    return build


def started(folder: Path) -> Path:
    """An experiment directory as the runner leaves it once started (spec.yaml, experiment.json, plan.json)."""
    from csrec.runner import Experiment
    from csrec.runner.experiment import execute
    from csrec.runner.plan import make_plan, to_json

    path = spec(folder)
    experiment = Experiment.open(path, log=lambda _: None)
    experiment.initialise(path)
    (experiment.directory / "plan.json").write_text(to_json(make_plan(experiment.spec)))
    assert execute  # (a started directory needs no training for these cases)
    return experiment.directory


def damaged(name: str, command: str) -> Callable[[Path], list]:
    def build(folder: Path) -> list:
        directory = started(folder)
        (directory / name).write_text('{"cut short": ')
        return [command, directory] + (["--local"] if command == "resume" else [])
    return build


def changed_data(folder: Path) -> list:
    directory = started(folder)
    plan = json.loads((directory / "plan.json").read_text())
    plan["datasets"]["smoke"]["sha256"] = "0" * 64
    (directory / "plan.json").write_text(json.dumps(plan))
    return ["run", folder / "spec.yaml", "--dry-run"]


def locked(host: str | None) -> Callable[[Path], list]:
    """A started experiment whose lock is held: by a live driver (this process) or a driver on `host`."""
    def build(folder: Path) -> list:
        from csrec.runner.lock import ExperimentLock

        directory = started(folder)
        if host is None:
            HELD.append(ExperimentLock(directory, log=lambda _: None).__enter__())
        else:
            (directory / "driver.lock").write_text(json.dumps({"host": host, "pid": 4242, "started": 0}))
        return ["resume", directory, "--local"]
    return build


HELD: list = []  # locks this process holds for a case (released after it)


def wrong_rows(command: str) -> Callable[[Path], list]:
    """A started experiment whose plan.json is valid JSON with trials that are not objects."""
    def build(folder: Path) -> list:
        directory = started(folder)
        plan = json.loads((directory / "plan.json").read_text())
        (directory / "plan.json").write_text(json.dumps(plan | {"trials": ["x"]}))
        return [command, directory]
    return build


def attributes_file(text: str) -> Callable[[Path], list]:
    """A dry run of s3rec whose data set's attribute file holds `text`."""
    def build(folder: Path) -> list:
        (folder / "attributes.json").write_text(text)
        return ["run", spec(folder, datasets__smoke__attributes=str(folder / "attributes.json"), models=["sasrec"],
                            methods=["s3rec"]), "--dry-run"]
    return build


def runs(**changes) -> Callable[[Path], list]:
    """A real run (not --dry-run) of the smoke spec with `changes`: refused before anything is written."""
    return lambda folder: ["run", spec(folder, **changes), "--local"]


def run_on_data(name: str, content: str | bytes) -> Callable[[Path], list]:
    """A real run of the smoke spec on a data file holding `content`."""
    def build(folder: Path) -> list:
        path = folder / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return ["run", spec(folder, datasets__smoke__path=str(path)), "--local"]
    return build


ONE_ITEM = "session_id,item_id\n" + "".join(f"{u},7\n" for u in range(60) for _ in range(6))
QUOTED = SMOKE_DATA.read_text().replace("\n1,10,1\n", '\n1,"10",1\n', 1)


CASES = [
    # ---- experiment specs (run --dry-run: refused before anything is written) -------------------
    Case("spec-missing", "spec file that does not exist", lambda f: ["run", f / "nope.yaml", "--dry-run"], "not found"),
    Case("spec-folder", "spec path is a folder", lambda f: ["run", f, "--dry-run"], "not found"),
    Case("spec-empty", "empty spec file", dry_text(lambda f: ""), "expected a mapping"),
    Case("spec-list", "spec that is a YAML list", dry_text(lambda f: "- a\n- b\n"), "expected a mapping"),
    Case("spec-syntax", "YAML syntax error", dry_text(lambda f: "name: [unclosed\n"), "not valid YAML"),
    Case("spec-binary", "binary garbage as spec", dry_text(lambda f: "\x00\x01\x02\xff"), "not valid YAML"),
    Case("spec-duplicate", "a key given twice", dry_text(lambda f: "name: a\n" + smoke_text(f)), "appears twice"),
    Case("spec-bomb", "YAML bomb (aliases, 10^9 values)", dry_text(bomb), "YAML bomb"),
    Case("spec-deep", "50,000 levels of nesting", dry_text(lambda f: smoke_text(f) + "x: " + "[" * 50000 + "]" * 50000),
         "nested deeper than"),
    Case("spec-huge", "a 2 MB spec", dry_text(lambda f: smoke_text(f) + "#" * (2 << 20)), "a spec is at most"),
    Case("spec-unknown-key", "unknown top-level key", dry(colour="blue"), "unknown key 'colour'"),
    Case("spec-unknown-nested", "unknown key in train", dry(train__epochz=3), "unknown key 'epochz'"),
    Case("spec-type", "train.max_epochs: ten", dry(train__max_epochs="ten"), "expected int"),
    Case("spec-bool-int", "train.max_epochs: true", dry(train__max_epochs=True), "expected int"),
    Case("spec-name-empty", "name: ''", dry(name=""), "not a plain name"),
    Case("spec-name-path", "name with a path in it", dry(name="../../x"), "not a plain name"),
    Case("spec-dataset-name", "data set named ../../../../../tmp/x",
         lambda f: ["run", text_spec(f, smoke_text(f).replace("  smoke:", "  ../../../../../tmp/x:")), "--dry-run"],
         "not a plain name"),
    Case("spec-storage-empty", "storage: ''", dry(storage=""), "storage is empty"),
    Case("spec-storage-blank", "storage: '   '", dry(storage="   "), "storage is empty"),
    Case("spec-storage-file", "storage pointing at a file",
         lambda f: ["run", spec(f, storage=str(SMOKE_DATA)), "--dry-run"], "is a file"),
    Case("spec-storage-one-slash", "storage: s3:/bucket/x (one slash)", runs(storage="s3:/bucket/x"),
         "write s3://bucket/x for object storage"),
    Case("spec-storage-one-slash-gs", "storage: gs:/bucket (one slash)", runs(storage="gs:/bucket"),
         "write gs://bucket for object storage"),
    Case("spec-storage-other", "storage holding another spec's experiment",
         lambda f: (started(f), ["run", spec(f, seeds=[0, 1, 2]), "--dry-run"])[1], "another spec"),
    Case("spec-storage-foreign", "storage: a non-empty folder that is no experiment",
         lambda f: ((f / "exp").mkdir(), (f / "exp" / "x").write_text("x"), ["run", spec(f), "--dry-run"])[2],
         "not an experiment directory"),
    Case("spec-no-datasets", "datasets: {}", dry(datasets={}), "at least one entry"),
    Case("spec-no-models", "models: []", dry(models=[]), "at least one entry"),
    Case("spec-no-seeds", "seeds: []", dry(seeds=[]), "at least one entry"),
    Case("spec-seeds-repeat", "seeds: [0, 0]", dry(seeds=[0, 0]), "seeds must be distinct"),
    Case("spec-model", "unknown model", dry(models=["gru4rec", "bert4rec"]), "unknown model 'bert4rec'"),
    Case("spec-method", "unknown method", dry(methods=["base", "softlabel"]), "unknown method 'softlabel'"),
    Case("spec-search-method", "search for an unknown method", dry(search={"dvae": {}}), "unknown method 'dvae'"),
    Case("spec-s3rec-attributes", "s3rec on a data set without item attributes",
         dry(models=["sasrec"], methods=["base", "s3rec"]), "add `attributes:"),
    Case("spec-attributes-json", "attributes: a file that is not JSON", attributes_file("{1: [2"), "is not JSON"),
    Case("spec-attributes-zero", "attributes: an attribute id 0", attributes_file('{"10": [0, 1]}'), "ids start at 1"),
    Case("spec-overrides-model", "model_overrides of an unknown model", dry(model_overrides={"bert": {}}),
         "unknown model 'bert'"),
    Case("spec-alpha", "alpha 1.5", dry(**{"search__csrec-t__alpha": [0.5, 1.5]}), "alpha values must lie in [0, 1]"),
    Case("spec-beta-nan", "beta .nan", dry_text(lambda f: smoke_text(f).replace("beta:\n    - 0.5", "beta:\n    - .nan")),
         "expected a finite number"),
    Case("spec-temperature-0", "temperature 0", dry(search__softrec__temperature=[0]), "temperature values must be > 0"),
    Case("spec-temperature-inf", "temperature .inf",
         dry_text(lambda f: smoke_text(f).replace("temperature:\n    - 3.0", "temperature:\n    - .inf", 1)),
         "expected a finite number"),
    Case("spec-tpe-budget", "sampler tpe without a budget", dry(search__softrec__sampler="tpe"), "needs a budget"),
    Case("spec-sampler", "unknown sampler", dry(search__softrec__sampler="random"), "is not one of grid, tpe"),
    Case("spec-m", "teachers.m: 0", dry(teachers__m=0), "teachers.m must be >= 1"),
    Case("spec-p", "teachers.subsample_ratio: 1.2", dry(teachers__subsample_ratio=1.2), "must lie in (0, 1]"),
    Case("spec-ensemble", "teachers.ensemble: median", dry(teachers__ensemble="median"), "is not one of"),
    Case("spec-kl", "teachers.kl_direction: both", dry(teachers__kl_direction="both"), "is not one of"),
    Case("spec-batch", "train.batch_size: 0", dry(train__batch_size=0), "train.batch_size must be >= 1"),
    Case("spec-lr", "train.learning_rate: -1", dry(train__learning_rate=-1), "learning_rate must be > 0"),
    Case("spec-lr-inf", "train.learning_rate: .inf",
         dry_text(lambda f: smoke_text(f).replace("batch_size: 64", "batch_size: 64\n  learning_rate: .inf")),
         "expected a finite number"),
    Case("spec-device", "train.device: tpu", dry(train__device="tpu"), "train.device must be"),
    Case("spec-layout", "train.layout: bogus", dry(train__layout="bogus"), "train.layout must be one of"),
    Case("spec-batch-unit", "batch_unit sequences in the prefix layout", dry(train__batch_unit="sequences",
                                                                               train__layout="prefix"),
         "applies to layout 'sequence' only"),
    Case("spec-cpu-0", "trial_resources.cpu: 0", dry(trial_resources={"cpu": 0}), "cpu > 0"),
    Case("spec-gpu-neg", "teacher_resources.gpu: -1", dry(teacher_resources={"cpu": 1, "gpu": -1}), "gpu >= 0"),
    Case("spec-concurrent", "max_concurrent_trials: 0", dry(max_concurrent_trials=0), "max_concurrent_trials must be >= 1"),
    Case("spec-data-missing", "data set file that does not exist", dry(datasets__smoke__path="/nonexistent/data.csv"),
         "no file at /nonexistent/data.csv"),
    Case("spec-data-name", "data set name that is not registered", dry(datasets__smoke__path="lastfmx"),
         "is not a registered data set"),
    Case("spec-protocol", "protocol: sessions", dry(datasets__smoke__protocol="sessions"), "protocol 'sessions' is unknown"),
    Case("spec-max-len", "max_len: 2", dry(datasets__smoke__max_len=2), "max_len must be at least 3"),
    Case("spec-format", "format: parquet", dry(datasets__smoke__format="parquet"), "format 'parquet' is unknown"),
    Case("spec-fraction", "user_fraction: 0", dry(datasets__smoke__user_fraction=0), "user_fraction must lie in"),
    Case("spec-overlap", "overlap_head with user_loo", dry(datasets__smoke__protocol="user_loo",
                                                          datasets__smoke__overlap_head=True), "overlap_head applies"),
    Case("spec-reuse", "reuse of a folder that is no experiment",
         lambda f: ["run", spec(f, reuse=[str(f)]), "--local"], "neither an experiment directory nor a store"),
    Case("spec-data-changed", "the data file changed since the experiment started", changed_data, "changed"),
    # ---- issue 24: refused by `run` (not only --dry-run) before anything is written ---------------
    Case("spec-run-data-blank", "run on a data file of spaces and newlines", run_on_data("d.csv", "  \n \n"),
         "the file is empty"),
    Case("spec-run-data-utf16", "run on a UTF-16 data file", run_on_data("d.csv", "session_id,item_id\n1,2\n".encode("utf-16")),
         "not UTF-8"),
    Case("spec-run-inter-header", "run on an .inter file with a header only",
         run_on_data("d.inter", "user_id:token\titem_id:token\n"), "no interactions"),
    Case("spec-run-inter-untyped", "run on an .inter file with an untyped header",
         run_on_data("d.inter", "user_id\titem_id\n1\t2\n"), "is not 'name:type'"),
    Case("spec-run-data-tabs", "run on a tab-separated .csv",
         run_on_data("d.csv", SMOKE_DATA.read_text().replace(",", "\t")), "the header has no 'session_id"),
    Case("spec-run-rating-nan", "run on a data file with a rating nan",
         run_on_data("d.csv", SMOKE_DATA.read_text().replace("\n1,10,1\n", "\n1,10,nan\n", 1)), "not a finite number"),
    Case("spec-run-one-item", "run on a data file whose users all have the same one item",
         run_on_data("d.csv", ONE_ITEM), "1 item left after filtering"),
    Case("spec-run-quoted", "run on a partly quoted .csv (\"10\" and 10)", run_on_data("d.csv", QUOTED), "has quotes"),
    Case("spec-run-nul", "run on a data file with a NUL byte inside an id",
         run_on_data("d.csv", SMOKE_DATA.read_text().replace("\n1,10,1\n", "\n1,1\x000,1\n", 1)), "a NUL byte"),
    Case("spec-run-seed", "seeds: [-1, 0]", runs(seeds=[-1, 0]), "seeds must lie in [0, 2**32)"),
    Case("spec-run-hidden-0", "model_overrides hidden_size: 0", runs(model_overrides__gru4rec__hidden_size=0),
         "gru4rec.hidden_size must be >= 1"),
    Case("spec-run-hidden-neg", "model_overrides hidden_size: -4", runs(model_overrides__gru4rec__hidden_size=-4),
         "gru4rec.hidden_size must be >= 1"),
    Case("spec-run-override-key", "an unknown model_overrides key", runs(model_overrides__gru4rec__hiden_size=8),
         "unknown key(s) hiden_size"),
    Case("spec-run-dropout", "model_overrides dropout: 1.5", runs(model_overrides__gru4rec__dropout=1.5),
         "gru4rec.dropout must be in [0, 1)"),
    Case("spec-run-max-len", "max_len: 1000000000", runs(datasets__smoke__max_len=10**9), "max_len must be at most"),
    Case("spec-run-lr", "train.learning_rate: 1.0e10", runs(train__learning_rate=1e10), "and at most 1"),
    Case("spec-run-threads", "train.num_threads: 1000", runs(train__num_threads=1000), "CPUs; give at most"),
    Case("spec-run-beta-base", "beta given for base", runs(search__base={"beta": [0.5]}),
         "search.base: beta do(es) not apply to base"),
    # ---- train: data files -----------------------------------------------------------------------
    Case("data-missing", "--data file that does not exist", lambda f: train(f, data="/nonexistent/x.csv"), "no such file"),
    Case("data-folder", "--data a folder", lambda f: train(f, data=f), "is a folder"),
    Case("data-name", "--data a name that is not registered", lambda f: train(f, data="lastfmx"),
         "not a registered data set"),
    Case("data-empty", "empty data file", data_file("empty.csv", ""), "the file is empty"),
    Case("data-header-only", "header and no interactions", data_file("head.csv", "session_id,item_id\n"),
         "no interactions"),
    Case("data-fields", "a line with too many fields", data_file("bad.csv", "session_id,item_id\n1,10\n1,11,5\n"),
         "line 3"),
    Case("data-column", "a header without the item column", data_file("col.csv", "session_id,thing\n1,10\n"),
         "no 'item"),
    Case("data-duplicate-column", "a column named twice", data_file("dup.csv", "session_id,item_id,item_id\n1,2,3\n"),
         "appears twice"),
    Case("data-empty-field", "an empty item field", data_file("gap.csv", "session_id,item_id\n1,\n1,2\n"), "empty"),
    Case("data-rating", "a rating that is not a number",
         data_file("rate.csv", "session_id,item_id,rating\n1,2,good\n1,3,4\n"), "not a finite number"),
    Case("data-binary", "binary garbage as data", data_file("bin.csv", b"\xff\xfe\x00\x01" * 50), "not UTF-8"),
    Case("data-suffix", "an unknown suffix", data_file("data.xyz", "1 2 3\n"), "cannot tell the file format"),
    Case("data-txt", "S3Rec .txt line with a user only", data_file("seq.txt", "u1\n"), "line 1"),
    Case("data-filtered", "nothing left after the k-core filter", lambda f: train(f, "--user-min-count", "1000"),
         "user_min_count"),
    # ---- train: options --------------------------------------------------------------------------
    Case("train-model", "--model transformer", lambda f: train(f, "--model", "transformer"), "--model transformer"),
    Case("train-max-len", "--max-len 2", lambda f: train(f, "--max-len", "2"), "max_len must be at least 3"),
    Case("train-alpha-high", "--alpha 1.5 (csrec-t)",
         lambda f: train(f, "--method", "csrec-t", "--alpha", "1.5", "--beta", "0.5", "-T", "3"), "alpha must lie in"),
    Case("train-alpha-base", "--alpha with --method base", lambda f: train(f, "--alpha", "0.5"),
         "--alpha do(es) not apply to --method base"),
    Case("train-beta-base", "--beta with --method base", lambda f: train(f, "--beta", "0.5"), "do(es) not apply"),
    Case("train-alpha-softrec", "--alpha with --method softrec",
         lambda f: train(f, "--method", "softrec", "--beta", "0.5", "-T", "3", "--alpha", "0.5"), "do(es) not apply"),
    Case("train-missing-param", "--method csrec-t without --alpha",
         lambda f: train(f, "--method", "csrec-t", "--beta", "0.5", "-T", "3"), "needs alpha"),
    Case("train-temperature-inf", "-T inf", lambda f: train(f, "--method", "softrec", "--beta", "0.5", "-T", "inf"),
         "not a finite number"),
    Case("train-temperature-0", "-T 0", lambda f: train(f, "--method", "softrec", "--beta", "0.5", "-T", "0"),
         "temperature T must be > 0"),
    Case("train-lr-nan", "--lr nan", lambda f: train(f, "--lr", "nan"), "not a finite number"),
    Case("train-lr-0", "--lr 0", lambda f: train(f, "--lr", "0"), "learning_rate must be > 0"),
    Case("train-lr-word", "--lr fast", lambda f: train(f, "--lr", "fast"), "is not a number"),
    Case("train-epochs", "--epochs 0", lambda f: train(f, "--epochs", "0"), "max_epochs must be >= 1"),
    Case("train-batch", "--batch-size 0", lambda f: train(f, "--batch-size", "0"), "batch_size must be >= 1"),
    Case("train-threads", "--threads 0", lambda f: train(f, "--threads", "0"), "num_threads must be >= 1"),
    Case("train-p", "--subsample-ratio 0 (csrec-d)",
         lambda f: train(f, "--method", "csrec-d", "--beta", "0.5", "-T", "3", "-p", "0"), "must lie in (0, 1]"),
    Case("train-m", "--m 0 (csrec-m)", lambda f: train(f, "--method", "csrec-m", "--beta", "0.5", "-T", "3", "--m", "0"),
         "teachers.m must be >= 1"),
    Case("train-batch-unit", "--batch-unit sequences with --layout prefix",
         lambda f: train(f, "--layout", "prefix", "--batch-unit", "sequences"), "applies to layout 'sequence' only"),
    *([Case("train-device", "--device cuda on a machine without CUDA", lambda f: train(f)[:-4] + ["--device", "cuda"],
            "CUDA is not available")] if not torch.cuda.is_available() else []),
    Case("train-out-file", "--out an existing file",
         lambda f: ((f / "out").write_text("x"), train(f))[1], "--out"),
    Case("train-out-full", "--out a folder that is not empty",
         lambda f: ((f / "out").mkdir(), (f / "out" / "x").write_text("x"), train(f))[2], "is not empty"),
    Case("train-store-file", "--store an existing file",
         lambda f: ((f / "store").write_text("x"), train(f))[1], "--store"),
    Case("cli-unknown-option", "an unknown option", lambda f: train(f, "--colour", "blue"), "unrecognized arguments"),
    Case("cli-missing-option", "train without --data", lambda f: ["train", "--model", "gru4rec", "--out", f / "o"],
         "--data"),
    Case("cli-unknown-command", "an unknown command", lambda f: ["fly"], "invalid choice"),
    Case("cli-bad-choice", "table --format html", lambda f: ["table", f, "--format", "html"], "invalid choice"),
    # ---- experiment directories ------------------------------------------------------------------
    Case("dir-status-none", "status of a folder that does not exist", lambda f: ["status", f / "nope"], "does not exist"),
    Case("dir-status-file", "status of a file", lambda f: ["status", SMOKE_DATA], "is a file"),
    Case("dir-status-foreign", "status of a folder that is no experiment", lambda f: ["status", f], "no plan.json"),
    Case("dir-status-plan", "status with a damaged plan.json", damaged("plan.json", "status"), "plan.json is damaged"),
    Case("dir-table-none", "table of a folder that does not exist", lambda f: ["table", f / "nope"], "does not exist"),
    Case("dir-table-empty", "table of an empty folder", lambda f: ["table", f], "nothing to tabulate"),
    Case("dir-table-plan", "table with a damaged plan.json", damaged("plan.json", "table"), "plan.json is damaged"),
    Case("dir-table-failed", "table with a damaged failed.json", damaged("failed.json", "table"), "failed.json is damaged"),
    Case("dir-report-several", "report of two folders without --study", lambda f: ["report", f, f],
         "report takes one experiment directory"),
    Case("dir-report-study", "report --study without --out", lambda f: ["report", f, f, "--study", "m"], "needs --out"),
    Case("dir-teachers", "teachers of a folder that is no experiment", lambda f: ["teachers", f], "not found"),
    Case("dir-resume-none", "resume a folder that does not exist", lambda f: ["resume", f / "nope"], "does not exist"),
    Case("dir-resume-file", "resume a file", lambda f: ["resume", SMOKE_DATA], "is a file"),
    Case("dir-resume-foreign", "resume a folder that is no experiment", lambda f: ["resume", f], "no spec.yaml"),
    Case("dir-resume-spec", "resume with a damaged spec.yaml", damaged("spec.yaml", "resume"), "not valid YAML"),
    Case("dir-resume-unknown", "resume with experiment.json and spec.yaml both unreadable",
         lambda f: (damaged("spec.yaml", "resume")(f), (f / "exp" / "experiment.json").write_text("{"),
                    ["run", spec(f), "--local"])[2], "neither a readable experiment.json nor"),
    Case("dir-locked", "a second driver while one runs", locked(None), "is being run by another driver"),
    Case("dir-locked-elsewhere", "a lock left by a driver on another host", locked("elsewhere.example"),
         "names a driver on another host"),
    # ---- issue 24, points 7 and 8 -----------------------------------------------------------------------
    Case("dir-status-plan-rows", "status of a plan.json whose trials are not objects", wrong_rows("status"),
         "plan.json is damaged"),
    Case("dir-table-plan-rows", "table of a plan.json whose trials are not objects", wrong_rows("table"),
         "plan.json is damaged"),
    Case("dir-report-plan-rows", "report of a plan.json whose trials are not objects", wrong_rows("report"),
         "plan.json is damaged"),
    Case("spec-data-loop", "a data path that is a symlink loop",
         lambda f: ((f / "a.csv").symlink_to(f / "b.csv"), (f / "b.csv").symlink_to(f / "a.csv"),
                    ["run", spec(f, datasets__smoke__path="a.csv"), "--dry-run"])[2], "cannot be resolved"),
    Case("spec-address-closed", "run --address 127.0.0.1:1 (nothing listens)",
         lambda f: ["run", spec(f), "--address", "127.0.0.1:1"], "nothing answers there"),
    Case("spec-address-malformed", "run --address not-an-address",
         lambda f: ["run", spec(f), "--address", "not-an-address"], "is not host:port"),
    Case("dir-report-file", "report of a file that exists (README.md)", lambda f: ["report", ROOT / "README.md"],
         "is a file, not a folder"),
    Case("dir-report-out-taken", "report --out a file that exists and is no report",
         lambda f: (started(f), (f / "notes.md").write_text("# my notes\n"),
                    ["report", f / "exp", "--out", f / "notes.md"])[2], "exists and is not a report"),
    Case("data-fetch", "data fetch of an unknown name", lambda f: ["data", "fetch", "lastfmx"], "lastfmx"),
    Case("data-path", "data path of an unknown name", lambda f: ["data", "path", "lastfmx"], "lastfmx"),
]


def run_case(case: Case, folder: Path, capsys=None) -> tuple[int, str]:
    """(exit status, stderr) of the case's command, run in this process."""
    argv = [str(a) for a in case.argv(folder)]
    try:
        if capsys is None:
            import contextlib
            import io

            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                try:
                    code = launch.main(argv)
                except SystemExit as stop:  # argparse
                    code = stop.code
            return code, err.getvalue()
        try:
            code = launch.main(argv)
        except SystemExit as stop:
            code = stop.code
        return code, capsys.readouterr().err
    finally:
        while HELD:
            HELD.pop().release()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_exits_2_with_one_line(case, tmp_path, capsys):
    code, err = run_case(case, tmp_path, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert case.expect in lines[0], lines[0]
    if case.id.startswith("spec-") and case.id not in ("spec-storage-other", "spec-data-changed", "spec-storage-foreign"):
        assert not (tmp_path / "exp").exists()  # refused before anything was written


def test_repeated_lines_of_a_file_with_timestamps_are_said(tmp_path):
    """Issue 24, point 5: a file written twice over (the same user, item and time) passed without a
    word; repeated lines without timestamps are repeated plays (Last.FM) and stay unsaid."""
    from csrec.data import load_interactions

    body = "".join(f"{u}\t{i}\t{100 * u + i}\n" for u in range(3) for i in range(4))
    path = tmp_path / "twice.inter"
    path.write_text("user_id:token\titem_id:token\ttimestamp:float\n" + body + body)
    with pytest.warns(UserWarning, match=r"12 line\(s\) repeat an earlier line exactly \(first: line 14 repeats line 2\)"):
        assert len(load_interactions(path)) == 24
    plays = tmp_path / "plays.csv"
    plays.write_text("session_id,item_id\n1,2\n1,2\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(load_interactions(plays)) == 2


def test_a_search_block_of_a_method_not_run_is_said_by_the_plan(tmp_path):
    """Issue 24, point 5: it was ignored without a word; the plan's notes (run and --dry-run) say it."""
    from csrec.config import load_spec
    from csrec.runner.plan import make_plan

    notes = make_plan(load_spec(spec(tmp_path, methods=["base", "softrec"]))).notes
    assert [n for n in notes if n.startswith("search.")] == [
        f"search.{m} is not used: {m} is not in methods (base, softrec)" for m in ("csrec-m", "csrec-d", "csrec-t")]


def table(rows: list[tuple[Case, int, str]]) -> str:
    lines = ["| # | input | message (stderr, one line; temporary paths shown as TMP) | exit |", "|---|---|---|---|"]
    for number, (case, code, err) in enumerate(rows, 1):
        message = err.strip().replace("|", "\\|")
        lines.append(f"| {number} | {case.what} | {message} | {code} |")
    return "\n".join(lines) + "\n"


def main(doc: Path) -> None:
    rows = []
    for case in CASES:
        folder = Path(tempfile.mkdtemp(prefix="bad-input-"))
        try:
            code, err = run_case(case, folder)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        err = re.sub(re.escape(str(folder)) + r"[^\s,;:)'\"]*", lambda m: "TMP" + m.group(0)[len(str(folder)):], err)
        rows.append((case, code, err.replace(str(ROOT), "REPO").replace(socket.gethostname(), "HOST")))
        print(f"{case.id}: {code} {err.strip()[:120]}", file=sys.stderr)
    text = doc.read_text()
    begin, end = "<!-- bad inputs: begin -->\n", "<!-- bad inputs: end -->"
    head, rest = text.split(begin)
    doc.write_text(head + begin + table(rows) + end + rest.split(end, 1)[1])


if __name__ == "__main__":
    main(Path(sys.argv[1]))
