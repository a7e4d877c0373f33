"""Bad specs are refused before anything starts: exit 2, one message naming the key, nothing written."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from csrec.config import load_spec, spec_to_yaml

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "experiments" / "smoke.yaml"


def _spec(tmp_path, **changes):
    raw = yaml.safe_load(SMOKE.read_text())
    raw["datasets"]["smoke"]["path"] = str(SMOKE.parent / "data" / "smoke.csv")
    raw["storage"] = str(tmp_path / "exp")
    for dotted, value in changes.items():
        node = raw
        *parents, last = dotted.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _launch(*args):
    return subprocess.run([sys.executable, str(ROOT / "launch.py"), *map(str, args)], capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, cwd=ROOT, timeout=120)


BAD = [
    ({"colour": "blue"}, "unknown key 'colour'"),
    ({"train__max_epochs": "ten"}, "train.max_epochs: expected int"),
    ({"search__csrec-t__alpha": [0.5, 1.5]}, "alpha values must lie in [0, 1]"),
    ({"search__softrec__temperature": [0]}, "temperature values must be > 0"),
    ({"teachers__subsample_ratio": 1.2}, "subsample_ratio (p) must lie in (0, 1]"),
    ({"teachers__m": 0}, "teachers.m must be >= 1"),
    ({"datasets__smoke__path": "/nonexistent/data.csv"}, "no file at /nonexistent/data.csv"),
    ({"models": ["gru4rec", "bert4rec"]}, "unknown model 'bert4rec'"),
    ({"methods": ["base", "softlabel"]}, "unknown method 'softlabel'"),
]


@pytest.mark.parametrize("changes, message", BAD, ids=[m for _, m in BAD])
def test_bad_spec_exits_2_and_writes_nothing(tmp_path, changes, message):
    path = _spec(tmp_path, **changes)
    done = _launch("run", path, "--dry-run")
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "exp").exists()


def test_storage_of_another_spec_is_refused(tmp_path):
    first = _spec(tmp_path)
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "experiment.json").write_text('{"fingerprint": "something else", "spec": "other.yaml"}')
    done = _launch("run", first, "--dry-run")
    assert done.returncode == 2 and "holds the experiment of another spec" in done.stderr
    assert sorted(p.name for p in exp.iterdir()) == ["experiment.json"]


def test_resolved_spec_round_trips(tmp_path):
    spec = load_spec(_spec(tmp_path))
    again = tmp_path / "again.yaml"
    again.write_text(spec_to_yaml(spec))
    assert load_spec(again) == spec


def test_a_spec_naming_the_same_file_elsewhere_is_the_same_experiment(tmp_path):
    """Data sets count by content: a copy of the data file at another path (or a name that resolves
    to it) opens the same experiment; a file with other content is another spec."""
    import json
    import shutil

    from csrec.runner.experiment import Experiment

    first = _spec(tmp_path)  # _spec writes tmp_path/spec.yaml: each call replaces the last
    Experiment.open(first).initialise(first)
    copy = tmp_path / "copy.csv"
    shutil.copy(SMOKE.parent / "data" / "smoke.csv", copy)
    moved = _spec(tmp_path, datasets__smoke__path=str(copy))
    assert Experiment.open(moved).directory == tmp_path / "exp"
    # An experiment recorded before (fingerprint by path) still opens from its own spec's data.
    marker = tmp_path / "exp" / "experiment.json"
    from csrec.runner.experiment import spec_fingerprint
    known = json.loads(marker.read_text())
    recorded = load_spec(tmp_path / "exp" / "spec.yaml")  # the first spec, as the experiment keeps it
    marker.write_text(json.dumps(known | {"fingerprint": spec_fingerprint(recorded, by_content=False)}))
    assert Experiment.open(moved).directory == tmp_path / "exp"
    copy.write_text(copy.read_text() + "999,1\n")
    from csrec.datafiles import forget_fingerprints
    forget_fingerprints()  # hashes are cached per path for one process's life
    with pytest.raises(Exception, match="holds the experiment of another spec"):
        Experiment.open(_spec(tmp_path, datasets__smoke__path=str(copy)))


def test_a_spec_changed_in_how_it_runs_only_opens_its_experiment(tmp_path):
    """device: cuda is caught only once the directory exists; the spec fixed to cpu is the same
    experiment (said), while a change in what is computed is still another spec."""
    from csrec.runner.experiment import Experiment

    first = _spec(tmp_path, train__device="cuda")
    Experiment.open(first).initialise(first)
    lines = []
    fixed = _spec(tmp_path, train__device="cpu", train__num_threads=2)
    assert Experiment.open(fixed, log=lines.append).directory == tmp_path / "exp"
    assert lines == [f"the spec differs from the one {tmp_path / 'exp'} was run with in how it runs only (device, "
                     "threads, progress); going on with it"]
    with pytest.raises(Exception, match="holds the experiment of another spec"):
        Experiment.open(_spec(tmp_path, train__device="cpu", train__max_epochs=3))


def test_an_experiment_made_by_an_earlier_version_resumes_from_its_own_spec(tmp_path):
    """A fingerprint this version does not compute (an earlier csrec's specs had fewer fields) is not
    a reason to refuse the experiment's own spec.yaml; another spec is still refused."""
    import json

    from csrec.runner.experiment import Experiment

    spec = _spec(tmp_path)
    Experiment.open(spec).initialise(spec)
    marker = tmp_path / "exp" / "experiment.json"
    marker.write_text(json.dumps(json.loads(marker.read_text()) | {"fingerprint": "0" * 20}))
    said = []
    assert Experiment.open(tmp_path / "exp" / "spec.yaml", log=said.append).directory == tmp_path / "exp"
    assert any("made by an earlier version of csrec" in line for line in said)
    with pytest.raises(Exception, match="holds the experiment of another spec"):
        Experiment.open(_spec(tmp_path, seeds=[0, 1, 2]))
