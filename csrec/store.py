"""Content-addressed artifacts: one key, one artifact, written once.

An artifact is a directory `<root>/<kind>/<key>/` whose `meta.json` lists the sha256 of every other
file in it. It is written under a temporary name and renamed into place when complete, so a reader
sees either nothing or the whole artifact. A directory without a valid meta.json, or whose files do
not match their checksums (a truncated checkpoint, say), does not exist: `verify` removes it so that
it is made again, and `require` refuses to load it.

On object storage (csrec.storage.RemotePath) there is no rename: the files are uploaded first and
meta.json last, each object whole, so a folder without meta.json (an upload cut short, or one still
going on elsewhere) is not an artifact; it is passed over, not removed (its writer may still be at
it), and the next writer of the key overwrites it. `verify` checks there that every listed file is
present with its recorded size (one list request); every byte is checked against its sha256 when a
node copies the artifact into its cache (`require`, `fetch`), keyed by the checksum of its
meta.json, so a model is downloaded once per node, not read over the network every epoch.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, Callable

import pyarrow.fs as pafs

from csrec import storage
from csrec.errors import CSRecError, disk_full
from csrec.storage import RemotePath

META = "meta.json"


def config_key(config: Any) -> str:
    """Hash of a resolved config (JSON-able): the artifact's name in the store."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON to a temporary file beside `path`, then rename it over `path`."""
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True, default=str))


def write_text_atomic(path: Path | RemotePath, text: str) -> None:
    """Write text so that readers see the old or the new file, never part of one (storage.write_atomic)."""
    storage.write_atomic(path, text.encode())


def read_json(path: Path | RemotePath, log=None, consequence: str = "") -> dict | None:
    """The JSON object in `path`; None when the file is missing or is no readable JSON object (then,
    with `log`, one line says so and what follows: `consequence`)."""
    try:
        value = json.loads(storage.location(path).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        problem = str(error).splitlines()[0] if str(error) else type(error).__name__
    else:
        if isinstance(value, dict):
            return value
        problem = f"a JSON {type(value).__name__}, not an object"
    if log is not None:
        log(f"{path} is unreadable ({problem}){'; ' + consequence if consequence else ''}")
    return None


class Store:
    """Artifacts under `root` (a local folder or a URI), grouped by kind ("models", "trials")."""

    def __init__(self, root: str | Path | RemotePath):
        self.root = storage.location(root, "store")

    def path(self, kind: str, key: str) -> Path | RemotePath:
        return self.root / kind / key

    def keys(self, kind: str) -> list[str]:
        folder = self.root / kind
        if isinstance(folder, RemotePath):  # one listing of the kind, not a request per artifact
            selector = pafs.FileSelector(folder.path, allow_not_found=True, recursive=True)
            prefix = folder.path.strip("/") + "/"  # fsspec's file systems answer with a leading "/"
            names = [info.path.strip("/")[len(prefix):] for info in folder.fs.get_file_info(selector)]
            return sorted(name.split("/")[0] for name in names if name.count("/") == 1 and name.endswith("/" + META))
        # A `.tmp-` staging folder of a writer killed before its rename may hold a meta.json: not an artifact.
        return (sorted(p.name for p in folder.iterdir() if not p.name.startswith(".") and (p / META).is_file())
                if folder.is_dir() else [])

    def verify(self, kind: str, key: str) -> bool:
        """True when the artifact is complete and intact; a damaged one is removed (to be remade)."""
        folder = self.path(kind, key)
        if not folder.is_dir():
            return False
        problem = artifact_problem(folder)
        if problem is None:
            return True
        if problem == "no meta.json" and isinstance(folder, RemotePath):
            return False  # an upload cut short, or going on elsewhere: not an artifact, and not ours to remove
        warnings.warn(f"store: {kind}/{key} is damaged ({problem}); removing it so that it is made again")
        storage.remove_tree(folder)
        return False

    def require(self, kind: str, key: str, what: str) -> Path:
        """The artifact's folder on this node (a remote one copied into the cache), or an error naming
        what is missing (never an untrained stand-in)."""
        problem = None if self.verify(kind, key) else "missing or damaged"
        if problem is None:
            try:
                return _fetch_checked(self.path(kind, key))
            except OSError as error:  # a read that failed (network, the node's disk): the artifact may be intact
                raise CSRecError(f"{what} ({kind}/{key}) could not be copied from the store {self.root} to this node "
                                 f"({error}); nothing was removed: run again, or check access to the store and the "
                                 "node's free space") from None
            except (ValueError, KeyError) as error:  # twice a file that does not match its checksum
                warnings.warn(f"store: {kind}/{key} is damaged ({error}); removing it so that it is made again")
                storage.remove_tree(self.path(kind, key))
                problem = "damaged"
        raise CSRecError(
            f"{what} ({kind}/{key}) is {problem} in the store {self.root}; "
            "train it first (launch.py run/train make missing teachers) or point --store at the right folder"
        )

    def meta(self, kind: str, key: str) -> dict:
        return json.loads((self.path(kind, key) / META).read_text())

    def copy_from(self, other: "Store", kind: str, key: str) -> bool:
        """Copy artifact `key` from `other` (only read) when it is intact there: the files its meta
        lists, each checked against its digest, the config kept. False when `other` has no intact
        copy, or it changed or vanished while being copied (another run removing a damaged one)."""
        source = other.path(kind, key)
        try:
            meta = json.loads((source / META).read_text())
            files = meta["files"]

            def fill(folder: Path) -> None:
                for name, digest in files.items():
                    checked_copy(source / name, folder / name, digest)

            self.write(kind, key, meta["config"], fill)
        except (OSError, ValueError, KeyError):
            return False
        return True

    def write(self, kind: str, key: str, config: Any, fill: Callable[[Path], None]) -> Path | RemotePath:
        """Make artifact `key`: `fill(tmp_dir)` writes its files (a local folder); checksums, then the
        rename (local) or the upload with meta.json last (object storage) follow."""
        final = self.path(kind, key)
        staging = storage.cache_dir() / "staging" if isinstance(final, RemotePath) else final.parent
        staging.mkdir(parents=True, exist_ok=True)
        tmp = staging / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            try:
                fill(tmp)
            except RuntimeError as error:  # torch.save's word for a full disk: said as one (errors.disk_full)
                raise disk_full(error, tmp) from error
            paths = [p for p in sorted(tmp.iterdir()) if p.is_file()]
            meta = {"key": key, "config": config, "files": {p.name: file_sha256(p) for p in paths},
                    "sizes": {p.name: p.stat().st_size for p in paths}, "created": time.time()}
            write_json_atomic(tmp / META, meta)
            if self.verify(kind, key):  # another writer finished the same artifact first
                return final
            if isinstance(final, RemotePath):  # no rename there: every file, then meta.json
                for path in paths:
                    storage.upload(path, final / path.name)
                storage.upload(tmp / META, final / META)
                return final
            try:
                os.rename(tmp, final)
            except OSError:
                if not self.verify(kind, key):  # not another writer's complete artifact: a real error
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return final


def _fetch_checked(folder: Path | RemotePath) -> Path:
    """fetch, tried again once when a file does not match its checksum (a read garbled on the way is
    not damage); a second mismatch raises ValueError."""
    try:
        return fetch(folder)
    except ValueError:
        return fetch(folder)


def checked_copy(source: Path | RemotePath, target: Path, digest: str) -> None:
    """Copy one artifact file onto this node; ValueError when the copy does not match `digest`."""
    storage.copy_to_local(source, target)
    if file_sha256(target) != digest:
        raise ValueError(f"{source.name} does not match its checksum")


def fetch(folder: Path | RemotePath) -> Path:
    """A complete artifact's files on this node: a local folder as it is; a remote one copied into
    the cache, keyed by the sha256 of its meta.json (which names every file's digest), each file
    checked against its digest (ValueError when one does not match). Copied once per node; a cached
    file that no longer matches its digest is fetched again, with a warning."""
    if not isinstance(folder, RemotePath):
        return folder
    meta_bytes = (folder / META).read_bytes()
    target = storage.cache_dir() / "artifacts" / hashlib.sha256(meta_bytes).hexdigest()[:32]
    files = json.loads(meta_bytes)["files"]
    # Every cached file is checked again at each use (a hash of a few MB, no request): the node's
    # disk can change a file after it was fetched, and a damaged copy would fail every trial.
    cached = {name for name in files if (target / name).is_file() and file_sha256(target / name) == files[name]}
    if len(cached) == len(files) and (target / META).is_file():  # meta.json written last: complete
        return target
    if (target / META).is_file():
        warnings.warn(f"cache: {', '.join(sorted(set(files) - cached))} of {target} no longer matches its checksum "
                      f"(this node's disk); fetched again from {folder}")
        (target / META).unlink(missing_ok=True)
    target.mkdir(parents=True, exist_ok=True)
    for name, digest in files.items():
        if name in cached:
            continue
        tmp = target / f".{name}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            checked_copy(folder / name, tmp, digest)
            os.replace(tmp, target / name)
        finally:
            tmp.unlink(missing_ok=True)
    storage.write_atomic(target / META, meta_bytes)
    return target


def artifact_problem(folder: Path | RemotePath) -> str | None:
    """Why `folder` is not a complete, intact artifact, or None. Reads only. On object storage the
    files are checked by presence and size here, by content when fetched (module docstring)."""
    remote = folder.listing() if isinstance(folder, RemotePath) else None
    meta_path = folder / META
    if (META not in remote) if remote is not None else not meta_path.is_file():
        return "no meta.json"
    try:
        meta = json.loads(meta_path.read_text())
        files, sizes = meta["files"], meta.get("sizes", {})
    except (ValueError, KeyError, TypeError):
        return "unreadable meta.json"
    for name, digest in files.items():
        if remote is not None:
            if name not in remote:
                return f"{name} is missing"
            if name in sizes and remote[name].size != sizes[name]:
                return f"{name} does not match its recorded size"
            continue
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if file_sha256(path) != digest:
            return f"{name} does not match its checksum"
    return None
