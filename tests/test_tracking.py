"""Experiment tracking (issue 23): `tracking:` in a spec, MLflow on a local file store and W&B in its
offline mode, each read back with the library's own reader; the spec's forms and its errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from conftest import quiet, write_smoke_spec
from csrec.config import load_spec
from csrec.errors import CSRecError
from csrec.runner import run_experiment
from csrec.runner.plan import make_plan

mlflow = pytest.importorskip("mlflow", reason='the mlflow extra: pip install ".[mlflow]"')


def tracked(folder: Path, name: str, tracking, **changes) -> Path:
    return write_smoke_spec(folder, name, tracking=tracking, **changes)


def models(directory: Path) -> dict[str, dict]:
    """store key -> result.json of every model the experiment trained (teachers and trials alike)."""
    return {path.parent.name: json.loads(path.read_text())
            for path in (directory / "store" / "models").glob("*/result.json")}


def check_mlflow_store(uri: str, spec_path: Path) -> None:
    """One FINISHED run per teacher and per trial, with its parameters, its validation curve (one
    point an epoch) and the final metrics of its result in the store."""
    spec = load_spec(spec_path)
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=[spec.name])
    stored = models(spec.directory)
    trials = {path.parent.name for path in (spec.directory / "store" / "trials").glob("*/result.json")}
    by_stage = runs.groupby("tags.stage").size().to_dict()
    assert by_stage == {"teachers": 5, "search": 5, "seeds": 4}  # the smoke spec's plan
    assert sorted(runs["params.key"]) == sorted(stored)
    teachers = set(runs[runs["tags.stage"] == "teachers"]["params.key"])  # Base runs have a trial record too
    assert set(runs[runs["tags.stage"] != "teachers"]["params.key"]) == trials - teachers
    assert set(runs["status"]) == {"FINISHED"}
    client = mlflow.tracking.MlflowClient(uri)
    for _, run in runs.iterrows():
        result = stored[run["params.key"]]
        name = result["job"] if run["tags.stage"] == "teachers" else f"smoke/gru4rec/{run['params.method']} "
        assert run["tags.mlflow.runName"].startswith(name)  # a teacher's description, a trial's label
        assert run["params.model"] == "gru4rec" and run["params.max_epochs"] == "2"
        assert run["metrics.final/test_ndcg_at_10"] == pytest.approx(result["test"]["ndcg@10"])
        assert run["metrics.final/valid_recall_at_10"] == pytest.approx(result["valid"]["recall@10"])
        assert run["metrics.final/best_epoch"] == result["best_epoch"]
        curve = sorted((m.step, m.value) for m in client.get_metric_history(run["run_id"], "valid_ndcg_at_10"))
        assert curve == [(h["epoch"], pytest.approx(h["valid_score"])) for h in result["history"]]
    searched = runs[runs["tags.stage"] == "search"]
    assert sorted(searched[searched["params.method"] == "csrec-m"]["params.beta"].astype(float)) == [0.5, 0.75]
    assert set(runs[runs["tags.stage"] == "teachers"]["tags.role"]) == {"teacher"}


def test_mlflow_file_store_local(tmp_path):
    """--local logs with MLflow's own client: the same runs as under Ray."""
    uri = f"file:{tmp_path}/mlruns"
    spec = tracked(tmp_path, "smoke", {"backend": "mlflow", "uri": uri})
    assert run_experiment(spec, local=True, table=False, log=quiet) == 0
    check_mlflow_store(uri, spec)


def test_mlflow_file_store_ray(tmp_path, ray_session):
    """The must-show: teachers (driver, MLflow's client) and trials (Tune's MLflowLoggerCallback)."""
    spec = tracked(tmp_path, "smoke", "mlflow")  # `tracking: mlflow`, then its URI by --set
    assert run_experiment(spec, table=False, log=quiet, overrides=(f"tracking.uri=file:{tmp_path}/mlruns",)) == 0
    check_mlflow_store(f"file:{tmp_path}/mlruns", spec)


def wandb_records(path: Path) -> list:
    """The records of a W&B offline run file (run-<id>.wandb): W&B's own protobuf Records in a
    LevelDB-style log (7-byte file header; 32 KiB blocks; chunks of crc32, length, type 1 full /
    2 first / 3 middle / 4 last)."""
    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    position, chunks, out = 7, b"", []
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        length, kind = int.from_bytes(data[position + 4:position + 6], "little"), data[position + 6]
        chunks += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            out.append(wandb_internal_pb2.Record.FromString(chunks))
            chunks = b""
    return out


def items(entries) -> dict:
    """A record's key/value items (a key may come as its path, `nested_key`)."""
    return {entry.key or "/".join(entry.nested_key): json.loads(entry.value_json) for entry in entries}


def test_wandb_offline(tmp_path, ray_session, monkeypatch):
    """W&B in its offline mode (no network): a run folder per teacher (wandb.init from the driver)
    and per trial (Tune's WandbLoggerCallback), each with its config, curve and final summary."""
    pytest.importorskip("wandb", reason='the wandb extra: pip install ".[wandb]"')
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    spec = tracked(tmp_path, "wb", {"backend": "wandb", "experiment": "csrec-test"}, methods=["base", "softrec"],
                   seeds=[0])
    assert run_experiment(spec, table=False, log=quiet) == 0
    stored = models(tmp_path / "wb")
    runs = {}
    for path in (tmp_path / "wb" / "wandb").glob("offline-run-*/run-*.wandb"):
        found = {"config": {}, "summary": {}, "history": []}
        for record in wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                found |= {"name": record.run.display_name, "project": record.run.project, "group": record.run.run_group}
                found["config"] |= items(record.run.config.update)
            elif kind == "config":
                found["config"] |= items(record.config.update)
            elif kind == "summary":
                found["summary"] |= items(record.summary.update)
            elif kind == "history":
                found["history"].append(items(record.history.item))
        runs[found["config"]["key"]] = found
    # Base (a teacher-stage run) and SoftRec's one trial (SoftRec's teacher is item popularity).
    assert sorted(g["group"] for g in runs.values()) == ["search", "teachers"]
    assert sorted(runs) == sorted(stored)
    for key, run in runs.items():
        record = stored[key]
        assert run["project"] == "csrec-test"
        assert run["config"]["model"] == "gru4rec" and run["config"]["seed"] == 0
        assert run["summary"]["final/test_ndcg_at_10"] == pytest.approx(record["test"]["ndcg@10"])
        curve = [(h["_step"], h["valid_ndcg_at_10"]) for h in run["history"] if "valid_ndcg_at_10" in h]
        assert curve == [(h["epoch"], pytest.approx(h["valid_score"])) for h in record["history"]]
    trial = next(run for run in runs.values() if run["group"] == "search")
    assert trial["config"]["method"] == "softrec" and trial["config"]["beta"] == 0.5


def test_spec_forms_and_errors(tmp_path):
    """`tracking: mlflow` is {backend: mlflow}; a relative path is the spec folder's file store; an
    unknown backend, a W&B uri and a missing package are one-line errors."""
    spec = load_spec(tracked(tmp_path, "a", "mlflow"))
    assert (spec.tracking.backend, spec.tracking.uri) == ("mlflow", None)
    spec = load_spec(tracked(tmp_path, "b", {"backend": "mlflow", "uri": "mlruns", "experiment": "x"}))
    assert spec.tracking.uri == (tmp_path / "mlruns").as_uri()
    spec = load_spec(tracked(tmp_path, "c", {"backend": "mlflow", "uri": "sqlite:///m.db"}))
    assert spec.tracking.uri == f"sqlite:///{tmp_path}/m.db"
    assert load_spec(tracked(tmp_path, "d", "none")).tracking.backend == "none"
    for tracking, words in ((("comet"), "'comet' is not one of none, mlflow, wandb"),
                            ({"backend": "wandb", "uri": "x"}, "tracking.uri is MLflow's"),
                            ({"backend": "mlflow", "server": "x"}, "unknown key 'server'")):
        with pytest.raises(CSRecError, match=words) as error:
            load_spec(tracked(tmp_path, "e", tracking))
        assert "\n" not in str(error.value)


def test_missing_package_is_one_line(tmp_path, monkeypatch):
    """A backend whose package does not import stops the run before anything trains, naming the pip command."""
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` raises ImportError, as when not installed
    spec = tracked(tmp_path, "m", "mlflow")
    with pytest.raises(CSRecError) as error:
        run_experiment(spec, local=True, table=False, log=quiet)
    assert "\n" not in str(error.value)
    assert 'tracking: mlflow needs the mlflow package' in str(error.value)
    assert 'pip install ".[mlflow]"' in str(error.value)
    assert not (tmp_path / "m" / "store").exists()
