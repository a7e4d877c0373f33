"""An experiment's data files on every node of a cluster, with or without a shared file system.

Keys follow a data file's content, not its path (`fingerprint`: "sha256:..."). The driver has the
files; a worker node may not (a cluster without a shared file system, the case object storage is
for). So the driver gives every task the files' fingerprints (`manifest`) and, when the store is on
object storage, puts each file in it once as the artifact `data/<sha256>` (`publish`). A node that
is given them (`use`) computes the driver's keys without the files, and reads a file
(`local_path`) from its path when the file there has the driver's content, else from the store's
copy (copied once into the node's cache and checked, csrec.store.fetch); otherwise it stops with a
line that says where the file must be. A node with another file under the same path never trains
on it.
"""

from __future__ import annotations

import shutil
import socket
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable

from csrec.errors import CSRecError
from csrec.storage import RemotePath
from csrec.store import META, Store, file_sha256

KIND = "data"
_GIVEN: dict[str, tuple[str, str]] = {}  # path -> (fingerprint, store root) from the driver (`use`)


def fingerprint(path: str | Path) -> str:
    """"sha256:<hex>" of the data file `path`: the driver's when it gave one (`use`), else read here."""
    given = _GIVEN.get(str(path))
    return given[0] if given else _read_fingerprint(str(path))


@lru_cache(maxsize=64)
def _read_fingerprint(path: str) -> str:
    """Cached per path for the process's life: a file changed under a running driver is caught by
    plan.json's check (csrec.datasets.check_unchanged)."""
    try:
        return "sha256:" + file_sha256(Path(path))
    except OSError as error:
        raise CSRecError(f"cannot read data file {path} ({error.strerror}); check datasets.*.path") from None


def manifest(configs: Iterable) -> dict[str, str]:
    """{path: fingerprint} of every file the DataConfigs `configs` name (interactions, attributes)."""
    paths = {str(c.path) for c in configs} | {str(c.attributes) for c in configs if c.attributes is not None}
    return {path: fingerprint(path) for path in sorted(paths)}


def publish(files: dict[str, str], store: Store, log: Callable[[str], None] = print) -> None:
    """On the driver: each file of `files` into a store on object storage, once (nodes without the
    file read it from there). A local store is on a file system the nodes share, or on one machine."""
    if not isinstance(store.root, RemotePath):
        return
    for path, digest in files.items():
        key = digest.removeprefix("sha256:")
        if not store.verify(KIND, key):
            store.write(KIND, key, {"path": path}, lambda folder, source=Path(path): shutil.copy(source, folder))
            log(f"data: {path} put in {store.path(KIND, key)}, for the nodes that do not have it")


def use(files: dict[str, str], store_root: str) -> None:
    """On a node, at the start of a task: the driver's fingerprints, and the store that may hold the files."""
    _GIVEN.update({path: (digest, store_root) for path, digest in files.items()})


def local_path(path: str | Path) -> str:
    """Where this node reads the data file `path` (module docstring); `path` itself on the driver."""
    path = str(path)
    if path not in _GIVEN:
        return path
    digest, store_root = _GIVEN[path]
    here = Path(path).is_file()
    if here and _read_fingerprint(path) == digest:
        return path
    store = Store(store_root)
    key = digest.removeprefix("sha256:")
    if isinstance(store.root, RemotePath) and store.verify(KIND, key):
        folder = store.require(KIND, key, f"the data file {path}")
        (name,) = [p.name for p in folder.iterdir() if p.name != META]
        return str(folder / name)
    problem = "holds other content than the driver's" if here else "is not on this node"
    raise CSRecError(f"data file {path} {problem} ({socket.gethostname()}), and the store {store.root} holds no copy: "
                     "put the file on a file system every node sees (the same path), or put the experiment on "
                     "object storage (storage: s3://...), which carries it to the nodes")


def forget_fingerprints() -> None:
    """Forget the hashes read in this process (a file changed in place under a long-lived process)."""
    _read_fingerprint.cache_clear()
