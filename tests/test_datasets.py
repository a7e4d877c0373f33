"""Data sets by name (csrec.datasets): the registry's records, resolution shipped -> cache -> download,
the checked atomic download (served from a local HTTP server on 127.0.0.1: no internet here), the
errors a user sees offline or on a wrong file (exit 2, what to download from where, no file left),
names in specs and `train --data`, keys that follow the content, a resume refused when a data
file changed, `launch.py data`, and a clean clone of HEAD with no ../shared beside it.
"""

from __future__ import annotations

import argparse
import configparser
import dataclasses
import fnmatch
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from conftest import SHARED_DATA, write_smoke_spec

import launch
from csrec import datasets
from csrec.cli import _train_data
from csrec.config import load_spec
from csrec.data import LOADERS, DataConfig
from csrec.errors import CSRecError
from csrec.runner import run_experiment
from csrec.runner.plan import make_plan

ROOT = Path(__file__).resolve().parents[1]
SMOKE_DATA = ROOT / "experiments" / "data" / "smoke.csv"
PROXY_VARIABLES = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "no_proxy", "NO_PROXY")


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("CSREC_DATA", str(folder))
    monkeypatch.setenv("no_proxy", "*")  # a proxy set in the environment must not see 127.0.0.1
    return folder


@pytest.fixture
def server():
    """Files served on 127.0.0.1; `cut[path] = n` closes the connection after n bytes of the body."""
    state = SimpleNamespace(files={}, cut={}, requests=[])

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            state.requests.append(self.path)
            body = state.files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[:state.cut.get(self.path, len(body))])

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    state.url = lambda name: f"http://127.0.0.1:{httpd.server_port}/{name}"
    yield state
    httpd.shutdown()
    httpd.server_close()


def register(monkeypatch, url: str, body: bytes, sha256: str | None = None, name: str = "tiny") -> datasets.Dataset:
    """A registry record `name` for a CSRec CSV served at `url` (sha256 of `body` unless given)."""
    source = datasets.Source(f"{name}.csv", url, sha256 or hashlib.sha256(body).hexdigest(), len(body))
    record = datasets.Dataset(name=name, title="test file", data=source, format="csv",
                              settings={"protocol": "windows", "max_len": 8, "overlap_head": False}, terms="test")
    monkeypatch.setitem(datasets.REGISTRY, name, record)
    return record


@pytest.fixture
def tiny(server, cache, monkeypatch) -> datasets.Dataset:
    """smoke.csv served as the registered data set `tiny`."""
    server.files["/tiny.csv"] = SMOKE_DATA.read_bytes()
    return register(monkeypatch, server.url("tiny.csv"), SMOKE_DATA.read_bytes())


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- the registry -------------------------------------------------------------------------------


def test_every_record_is_complete_and_its_settings_are_a_valid_data_config():
    assert {"lastfm", "yelp", "beauty", "ml-100k"} <= set(datasets.REGISTRY)
    for name, record in datasets.REGISTRY.items():
        assert record.name == name and record.terms and record.title
        assert record.format in LOADERS and record.data.file.endswith("." + record.format)  # keys: format left None
        for source in filter(None, (record.data, record.attributes)):
            assert source.url.startswith("https://raw.githubusercontent.com/"), source.url
            assert len(source.sha256) == 64 and int(source.sha256, 16) >= 0 and source.size > 0
        DataConfig(path=record.data.file, **record.settings)  # raises if the settings do not fit together
    assert datasets.REGISTRY["yelp"].batch_size == 64 and datasets.REGISTRY["lastfm"].settings["max_len"] == 20


def test_shipped_lastfm_is_the_registered_file_and_is_package_data():
    record = datasets.REGISTRY["lastfm"].data
    shipped = datasets.SHIPPED / record.file
    assert hashlib.sha256(shipped.read_bytes()).hexdigest() == record.sha256
    assert shipped.stat().st_size == record.size == 548_840
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    patterns = setup["options.package_data"]["csrec.data"].split()
    assert any(fnmatch.fnmatch(str(shipped.relative_to(ROOT / "csrec" / "data")), p) for p in patterns)


def test_the_shared_files_are_the_registered_files(shared_data):
    for record in datasets.REGISTRY.values():
        for source in filter(None, (record.data, record.attributes)):
            path = shared_data / source.file
            assert hashlib.sha256(path.read_bytes()).hexdigest() == source.sha256, source.file
            assert path.stat().st_size == source.size


# --- download, checksum, cache, order -----------------------------------------------------------


def test_a_download_is_checked_and_moved_into_the_cache(tiny, cache, server):
    lines = []
    path = datasets.resolve("tiny", log=lines.append)
    assert path == cache / "tiny.csv" and path.read_bytes() == SMOKE_DATA.read_bytes()
    assert sorted(p.name for p in cache.iterdir()) == ["tiny.csv"]  # no temporary file left
    assert server.requests == ["/tiny.csv"]
    assert lines[0].startswith("downloading tiny.csv") and "sha256 checked" in lines[-1]


def test_a_wrong_checksum_is_refused_and_leaves_no_file(server, cache, monkeypatch):
    server.files["/tiny.csv"] = SMOKE_DATA.read_bytes()
    record = register(monkeypatch, server.url("tiny.csv"), SMOKE_DATA.read_bytes(), sha256="0" * 64)
    with pytest.raises(CSRecError) as error:
        datasets.resolve("tiny", log=lambda _: None)
    message = str(error.value)
    assert "not the registered " + "0" * 64 in message and "was not kept" in message
    assert record.data.url in message and str(cache / "tiny.csv") in message  # from where, to where
    assert list(cache.iterdir()) == []


@pytest.mark.parametrize("how", ["connection closed", "ctrl-c"])
def test_an_interrupted_download_leaves_no_file(tiny, cache, server, monkeypatch, how):
    if how == "connection closed":
        server.cut["/tiny.csv"] = 1000
        with pytest.raises(CSRecError, match="the connection closed with .* bytes still to come"):
            datasets.resolve("tiny", log=lambda _: None)
    else:
        def interrupt(self, done, total):
            raise KeyboardInterrupt

        monkeypatch.setattr(datasets.Progress, "update", interrupt)
        with pytest.raises(KeyboardInterrupt):
            datasets.resolve("tiny", log=lambda _: None)
    assert list(cache.iterdir()) == []


def test_the_cache_is_used_on_a_second_call_with_no_request(tiny, cache, server):
    first = datasets.resolve("tiny", log=lambda _: None)
    second = datasets.resolve("tiny", log=lambda _: None)
    assert first == second == cache / "tiny.csv"
    assert server.requests == ["/tiny.csv"]


def test_resolution_order_is_shipped_then_cache_then_download(tiny, cache, server, tmp_path, monkeypatch):
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    monkeypatch.setattr(datasets, "SHIPPED", shipped)
    cache.mkdir()
    for folder in (shipped, cache):
        shutil.copy(SMOKE_DATA, folder / "tiny.csv")
    assert datasets.resolve("tiny") == shipped / "tiny.csv"
    (shipped / "tiny.csv").unlink()
    assert datasets.resolve("tiny") == cache / "tiny.csv"
    assert server.requests == []
    (cache / "tiny.csv").unlink()
    assert datasets.resolve("tiny", log=lambda _: None) == cache / "tiny.csv"
    assert server.requests == ["/tiny.csv"]


def test_the_shipped_lastfm_wins_over_the_cache(cache):
    cache.mkdir()
    (cache / "lastfm.csv").write_text("session_id,item_id\n1,1\n")  # not even the registered file
    assert datasets.resolve("lastfm") == datasets.SHIPPED / "lastfm.csv"


def test_a_wrong_cached_file_is_refused_and_kept_until_fetch_replaces_it(tiny, cache, server):
    cache.mkdir()
    (cache / "tiny.csv").write_text("session_id,item_id\n1,1\n")
    with pytest.raises(CSRecError, match=r"not the registered tiny file .*data fetch tiny"):
        datasets.resolve("tiny")
    assert (cache / "tiny.csv").read_text() == "session_id,item_id\n1,1\n" and server.requests == []
    assert datasets.fetch("tiny", log=lambda _: None) == [cache / "tiny.csv"]
    assert (cache / "tiny.csv").read_bytes() == SMOKE_DATA.read_bytes()


# --- what a user sees ---------------------------------------------------------------------------


def test_offline_says_what_to_download_from_where_and_exits_2(cache, monkeypatch, capsys, tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/tiny.csv"
    record = register(monkeypatch, url, SMOKE_DATA.read_bytes())
    assert launch.main(["data", "fetch", "tiny"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"error: could not download tiny.csv from {url} (")
    assert f"download {url} by hand and put it at {cache / 'tiny.csv'} (sha256 {record.data.sha256})" in error
    spec = write_smoke_spec(tmp_path, "exp")
    raw = yaml.safe_load(spec.read_text())
    raw["datasets"]["smoke"]["path"] = "tiny"
    spec.write_text(yaml.safe_dump(raw))
    assert launch.main(["run", str(spec), "--dry-run"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"error: {spec}: datasets.smoke.path: could not download tiny.csv")
    assert not (tmp_path / "exp").exists()
    assert not cache.exists() or list(cache.iterdir()) == []


def test_offline_from_the_shell_is_one_error_line_and_exit_2(tmp_path):
    dead = f"http://127.0.0.1:{closed_port()}"
    env = {k: v for k, v in os.environ.items() if k not in PROXY_VARIABLES}
    env |= {"CSREC_DATA": str(tmp_path / "cache"), "http_proxy": dead, "https_proxy": dead}
    done = subprocess.run([sys.executable, "launch.py", "data", "path", "yelp"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert "Traceback" not in done.stderr
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("error: could not download yelp.txt from https://raw.githubusercontent.com/")
    assert str(tmp_path / "cache" / "yelp.txt") in error
    assert list((tmp_path / "cache").iterdir()) == []


def test_an_unknown_name_says_it_is_neither_a_file_nor_registered(tmp_path, capsys):
    assert launch.main(["train", "--data", "lastfn", "--model", "gru4rec", "--out", str(tmp_path / "out")]) == 2
    assert "--data lastfn: no such file and not a registered data set" in capsys.readouterr().err
    assert launch.main(["data", "path", "lastfn"]) == 2
    assert "'lastfn' is not a registered data set; known: lastfm" in capsys.readouterr().err


def test_data_list_path_and_fetch(tiny, cache, server, capsys):
    assert launch.main(["data", "list"]) == 0
    out = capsys.readouterr().out
    for record in datasets.REGISTRY.values():
        assert f"{record.name}: {record.title}" in out and record.data.url in out and record.terms in out
    assert f"present, shipped, sha256 checked (536 KB): {datasets.SHIPPED / 'lastfm.csv'}" in out
    assert "not present (1,772 KB; `python launch.py data fetch yelp`" in out
    assert launch.main(["data", "path", "lastfm"]) == 0
    assert capsys.readouterr().out.strip() == str(datasets.SHIPPED / "lastfm.csv")
    assert launch.main(["data", "fetch", "tiny"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == f"tiny: {cache / 'tiny.csv'}"
    assert "downloading tiny.csv" in captured.err and "sha256 checked" in captured.err  # stderr is no terminal here
    assert launch.main(["data", "list"]) == 0
    assert f"present, cached, sha256 checked ({tiny.data.size / 1024:,.0f} KB): {cache / 'tiny.csv'}" in capsys.readouterr().out


# --- names in specs and train, keys, resume -----------------------------------------------------


def _spec(folder: Path, data: dict, name: str = "exp") -> Path:
    path = write_smoke_spec(folder, name, methods=["base"], seeds=[0])
    raw = yaml.safe_load(path.read_text())
    raw["datasets"] = {"lastfm": data}
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("entry, expected", [
    ({}, {"protocol": "windows", "max_len": 20, "overlap_head": True}),  # the registry's paper settings
    ({"max_len": 30}, {"protocol": "windows", "max_len": 30, "overlap_head": True}),  # the spec wins
    ({"overlap_head": False}, {"protocol": "windows", "max_len": 20, "overlap_head": False}),
    ({"protocol": "user_loo"}, {"protocol": "user_loo", "max_len": 20, "overlap_head": False}),  # none apply
])
def test_a_named_data_set_fills_the_keys_a_spec_leaves_out(tmp_path, entry, expected):
    spec = load_spec(_spec(tmp_path, {"path": "lastfm", **entry}))
    data = spec.datasets["lastfm"]
    assert data.path == str(datasets.SHIPPED / "lastfm.csv") and data.format is None
    assert {k: getattr(data, k) for k in expected} == expected


def test_train_data_takes_a_name_with_its_settings_or_a_path_with_the_defaults():
    def args(data, **given):
        return argparse.Namespace(data=data, **({"protocol": None, "max_len": None, "overlap_head": None} | given))

    shipped = str(datasets.SHIPPED / "lastfm.csv")
    assert _train_data(args("lastfm")) == {"path": shipped, "protocol": "windows", "max_len": 20, "overlap_head": True}
    assert _train_data(args("lastfm", overlap_head=False))["overlap_head"] is False
    assert _train_data(args(str(SMOKE_DATA), max_len=8)) == {"path": str(SMOKE_DATA), "max_len": 8}


def test_a_name_and_a_path_to_the_same_bytes_share_keys(tmp_path):
    copy = tmp_path / "elsewhere" / "lastfm.csv"
    copy.parent.mkdir()
    shutil.copy(datasets.SHIPPED / "lastfm.csv", copy)
    settings = {"protocol": "windows", "max_len": 20, "overlap_head": True}
    by_name = load_spec(_spec(tmp_path, {"path": "lastfm"}, "by_name"))
    by_path = load_spec(_spec(tmp_path, {"path": str(copy), **settings}, "by_path"))
    assert by_name.datasets["lastfm"].path != by_path.datasets["lastfm"].path
    keys = [[j.key for j in make_plan(spec).teachers] for spec in (by_name, by_path)]
    assert keys[0] == keys[1] and len(keys[0]) == 1


def test_a_changed_data_file_under_the_same_path_is_refused_on_resume(tmp_path, capsys):
    data = tmp_path / "data.csv"
    shutil.copy(SMOKE_DATA, data)
    spec = write_smoke_spec(tmp_path, "exp", methods=["base"], seeds=[0],
                            train={"max_epochs": 1, "patience": 1, "batch_size": 64, "progress": False, "num_threads": 1})
    raw = yaml.safe_load(spec.read_text())
    raw["datasets"]["smoke"]["path"] = str(data)
    spec.write_text(yaml.safe_dump(raw))
    assert run_experiment(spec, local=True, table=False, log=lambda _: None) == 0
    plan = json.loads((tmp_path / "exp" / "plan.json").read_text())
    assert plan["datasets"]["smoke"] == {"path": str(data), "sha256": hashlib.sha256(data.read_bytes()).hexdigest()}
    original = data.read_text()
    data.write_text(original.replace("1,11,1", "1,12,1", 1))
    assert launch.main(["resume", str(tmp_path / "exp"), "--local"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"error: datasets.smoke: {data} has changed since this experiment started")
    data.write_text(original)
    assert launch.main(["resume", str(tmp_path / "exp"), "--local"]) == 0  # the same bytes again: nothing to redo


# --- a clean clone ------------------------------------------------------------------------------

LOAD_SPECS = """
import sys
from csrec.config import load_spec
for path in sys.argv[1:]:
    print(path, *sorted(str(d.path) for d in load_spec(path).datasets.values()))
"""


@pytest.mark.clean_clone
def test_a_clean_clone_without_shared_runs_the_quickstart_plan_and_loads_every_spec(tmp_path, server, cache,
                                                                                    monkeypatch):
    """The README's main command from a clone of HEAD with no ../shared beside it (the dry run: the
    full quickstart takes minutes and was run by hand), and every spec in experiments/ loads there,
    with the network unreachable: Last.FM from the clone's own package, the other names from a
    cache filled by a checked download (as `data fetch` does; served here from ../shared/data when
    this machine has it, else the specs naming them are left out), a file path only inside the clone."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs git and a git checkout")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
    assert not (clone.parent / "shared").exists()
    # what each spec names that the clone does not ship: data sets but Last.FM (shipped), and
    # attribute files (none shipped)
    specs = {f"experiments/{f.name}": {v for d in yaml.safe_load(f.read_text())["datasets"].values()
                                       for k, v in d.items()
                                       if k == "attributes" or (k == "path" and v != "lastfm")}
             for f in sorted((clone / "experiments").glob("*.yaml"))}
    downloads = set().union(*specs.values()) & set(datasets.REGISTRY)  # e.g. yelp
    if SHARED_DATA.is_dir():
        for name in sorted(downloads):
            record = datasets.REGISTRY[name]
            sources = {"data": record.data, "attributes": record.attributes}
            served = {}
            for field, source in sources.items():
                if source is not None:
                    server.files[f"/{source.file}"] = (SHARED_DATA / source.file).read_bytes()
                    served[field] = dataclasses.replace(source, url=server.url(source.file))
            monkeypatch.setitem(datasets.REGISTRY, name, dataclasses.replace(record, **served))
            datasets.resolve(name, log=lambda _: None)
            if record.attributes is not None:
                datasets.resolve(name, attributes=True, log=lambda _: None)
    else:
        specs = {path: names for path, names in specs.items() if not names & downloads}
    dead = f"http://127.0.0.1:{closed_port()}"  # any attempt to reach the network fails at once
    env = {k: v for k, v in os.environ.items() if k not in PROXY_VARIABLES and k != "PYTHONPATH"}
    env |= {"CSREC_DATA": str(cache), "http_proxy": dead, "https_proxy": dead}

    def run(*command):
        return subprocess.run([sys.executable, *command], cwd=clone, env=env, capture_output=True, text=True,
                              timeout=300)

    where = run("-c", "import csrec; print(csrec.__file__)")
    assert where.stdout.strip() == str(clone / "csrec" / "__init__.py"), where.stderr
    dry = run("launch.py", "run", "experiments/quickstart.yaml", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"experiment quickstart in {clone / 'runs' / 'quickstart'}" in dry.stdout
    assert "teachers and Base runs: 2 (0 in the store, 0 to copy from a reused experiment, 2 to train)" in dry.stdout
    assert "student search trials: 4 (0 finished" in dry.stdout
    assert not (clone / "runs").exists()  # a dry run writes nothing
    loaded = run("-c", LOAD_SPECS, *specs)
    assert loaded.returncode == 0, loaded.stderr
    lines = loaded.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines] == list(specs) and "experiments/quickstart.yaml" in specs
    for line in lines:
        for path in line.split()[1:]:
            assert path.startswith((str(clone), str(cache))) and "shared" not in path, line
    assert any(str(clone / "csrec" / "data" / "shipped" / "lastfm.csv") in line for line in lines)
