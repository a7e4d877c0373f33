"""An experiment's data files on nodes that do not have them (csrec.datafiles, issue #24): the
driver's fingerprints make the keys, and a node reads the driver's content or stops."""

from __future__ import annotations

import uuid

import pytest

from csrec import datafiles
from csrec.errors import CSRecError
from csrec.store import Store, file_sha256


@pytest.fixture
def node(monkeypatch, tmp_path):
    """A node's process: nothing given by a driver yet, its own cache."""
    monkeypatch.setattr(datafiles, "_GIVEN", {})
    monkeypatch.setenv("CSREC_CACHE", str(tmp_path / "cache"))
    datafiles.forget_fingerprints()
    yield
    datafiles.forget_fingerprints()


def driver_file(tmp_path, content: bytes = b"session_id,item_id\n1,2\n1,3\n") -> tuple[str, str]:
    path = tmp_path / "driver" / "data.csv"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(content)
    return str(path), "sha256:" + file_sha256(path)


def test_the_driver_reads_its_files_and_a_node_takes_the_drivers_fingerprints(node, tmp_path):
    path, digest = driver_file(tmp_path)
    assert datafiles.fingerprint(path) == digest and datafiles.local_path(path) == path
    elsewhere = "/nowhere/on/this/node.csv"
    with pytest.raises(CSRecError, match="cannot read data file /nowhere"):
        datafiles.fingerprint(elsewhere)
    datafiles.use({elsewhere: digest}, str(tmp_path / "store"))
    assert datafiles.fingerprint(elsewhere) == digest  # the key is the driver's, without the file


def test_a_node_without_the_file_or_with_another_one_stops_when_the_store_has_no_copy(node, tmp_path):
    path, digest = driver_file(tmp_path)
    store = Store(tmp_path / "store")
    datafiles.publish({path: digest}, store)  # a local store: the nodes share its file system, no copy
    assert not (tmp_path / "store" / datafiles.KIND).exists()
    missing = str(tmp_path / "gone.csv")
    datafiles.use({missing: digest}, str(store.root))
    with pytest.raises(CSRecError, match=r"gone.csv is not on this node .*holds no copy: put the file on a file "
                                         r"system every node sees"):
        datafiles.local_path(missing)
    other = tmp_path / "other.csv"
    other.write_bytes(b"session_id,item_id\n9,9\n")  # the same path, other content: never trained on
    datafiles.use({str(other): digest}, str(store.root))
    with pytest.raises(CSRecError, match="holds other content than the driver's"):
        datafiles.local_path(str(other))
    datafiles.use({path: digest}, str(store.root))
    assert datafiles.local_path(path) == path  # the driver's content where it names it: read in place


def test_on_object_storage_a_node_reads_the_drivers_copy_once_and_checked(node, tmp_path):
    path, digest = driver_file(tmp_path)
    store = Store(f"memory://csrec-{uuid.uuid4().hex[:8]}/store")  # fsspec's in-memory object store
    said: list[str] = []
    datafiles.publish({path: digest}, store, said.append)
    datafiles.publish({path: digest}, store, said.append)  # once: the second finds it
    assert len(said) == 1 and "data.csv put in memory://" in said[0]
    other = tmp_path / "node" / "data.csv"
    other.parent.mkdir()
    other.write_bytes(b"session_id,item_id\n7,7\n")  # this node's file under the driver's path differs
    for here in (str(tmp_path / "not-here.csv"), str(other)):
        datafiles.use({here: digest}, str(store.root))
        copy = datafiles.local_path(here)
        assert copy != here and copy.startswith(str(tmp_path / "cache"))
        assert open(copy, "rb").read() == open(path, "rb").read()
