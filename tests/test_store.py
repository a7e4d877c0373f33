"""The content-addressed store: atomic writes, checksums, damaged artifacts are remade, never loaded."""

import json
import shutil

import pytest

from csrec.errors import CSRecError
from csrec.store import Store, config_key


def _fill(text):
    def fill(folder):
        (folder / "model.pt").write_bytes(text.encode() * 100)
    return fill


def test_key_is_order_independent_and_content_sensitive():
    assert config_key({"a": 1, "b": [1, 2]}) == config_key({"b": [1, 2], "a": 1})
    assert config_key({"a": 1}) != config_key({"a": 2})


def test_write_then_verify_and_meta(tmp_path):
    store = Store(tmp_path)
    store.write("models", "k1", {"x": 1}, _fill("abc"))
    assert store.verify("models", "k1")
    meta = store.meta("models", "k1")
    assert meta["config"] == {"x": 1} and set(meta["files"]) == {"model.pt"}
    assert store.keys("models") == ["k1"]
    assert not any(p.name.startswith(".tmp") for p in (tmp_path / "models").iterdir())


def test_truncated_file_is_detected_and_removed(tmp_path):
    store = Store(tmp_path)
    path = store.write("models", "k1", {}, _fill("abc"))
    data = (path / "model.pt").read_bytes()
    (path / "model.pt").write_bytes(data[: len(data) // 2])  # a truncated checkpoint
    with pytest.warns(UserWarning, match="does not match its checksum"):
        assert not store.verify("models", "k1")
    assert not path.exists()  # removed, so that it is made again
    with pytest.raises(CSRecError, match="missing or damaged"):
        store.require("models", "k1", "the teacher")


def test_directory_without_meta_does_not_exist(tmp_path):
    store = Store(tmp_path)
    (tmp_path / "models" / "k2").mkdir(parents=True)
    (tmp_path / "models" / "k2" / "model.pt").write_text("half written")
    assert store.keys("models") == []
    with pytest.warns(UserWarning, match="no meta.json"):
        assert not store.verify("models", "k2")


def test_a_staging_folder_left_by_a_killed_writer_is_no_artifact(tmp_path):
    store = Store(tmp_path)
    store.write("models", "k", {"a": 1}, lambda d: (d / "w.bin").write_bytes(b"x"))
    # killed after writing meta.json into its staging folder, before the rename
    shutil.copytree(store.path("models", "k"), tmp_path / "models" / ".tmp-j-1234abcd")
    assert store.keys("models") == ["k"]


def test_failed_fill_leaves_nothing(tmp_path):
    store = Store(tmp_path)

    def broken(folder):
        (folder / "model.pt").write_text("partial")
        raise RuntimeError("crash while writing")

    with pytest.raises(RuntimeError):
        store.write("models", "k3", {}, broken)
    assert list((tmp_path / "models").iterdir()) == []


def test_second_writer_keeps_the_first_artifact(tmp_path):
    store = Store(tmp_path)
    store.write("models", "k4", {}, _fill("first"))
    store.write("models", "k4", {}, _fill("second"))
    assert (store.path("models", "k4") / "model.pt").read_text().startswith("first")
    assert json.loads((store.path("models", "k4") / "meta.json").read_text())["key"] == "k4"


def test_copy_from_another_store_checks_the_copy_and_only_reads_the_source(tmp_path):
    source, target = Store(tmp_path / "a"), Store(tmp_path / "b")
    source.write("models", "k", {"x": 1}, lambda d: (d / "model.pt").write_bytes(b"weights"))
    source.write("models", "bad", {"x": 2}, lambda d: (d / "model.pt").write_bytes(b"weights"))
    (source.path("models", "bad") / "model.pt").write_bytes(b"truncat")  # damaged after it was written
    assert target.copy_from(source, "models", "k") and target.verify("models", "k")
    assert (target.path("models", "k") / "model.pt").read_bytes() == b"weights"
    assert target.meta("models", "k")["config"] == {"x": 1}
    assert not target.copy_from(source, "models", "bad") and not target.path("models", "bad").exists()
    assert not target.copy_from(source, "models", "absent")
    assert (source.path("models", "bad") / "model.pt").is_file()  # the damaged source is left as it was
