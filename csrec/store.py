"""Content-addressed artifacts: one key, one artifact, written once.

An artifact is a directory `<root>/<kind>/<key>/` whose `meta.json` lists the sha256 of every other
file in it. It is written under a temporary name and renamed into place when complete, so a reader
sees either nothing or the whole artifact. A directory without a valid meta.json, or whose files do
not match their checksums (a truncated checkpoint, say), does not exist: `verify` removes it so that
it is made again, and `require` refuses to load it.
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

from csrec.errors import CSRecError

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


def write_text_atomic(path: Path, text: str) -> None:
    """Write text to a temporary file beside `path`, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def read_json(path: Path, log=None, consequence: str = "") -> dict | None:
    """The JSON object in `path`; None when the file is missing or is no readable JSON object (then,
    with `log`, one line says so and what follows: `consequence`)."""
    try:
        value = json.loads(Path(path).read_text())
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
    """Artifacts under `root`, grouped by kind ("models", "trials")."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def keys(self, kind: str) -> list[str]:
        folder = self.root / kind
        return sorted(p.name for p in folder.iterdir() if (p / META).is_file()) if folder.is_dir() else []

    def verify(self, kind: str, key: str) -> bool:
        """True when the artifact is complete and intact; a damaged one is removed (to be remade)."""
        folder = self.path(kind, key)
        if not folder.is_dir():
            return False
        problem = artifact_problem(folder)
        if problem is None:
            return True
        warnings.warn(f"store: {kind}/{key} is damaged ({problem}); removing it so that it is made again")
        shutil.rmtree(folder, ignore_errors=True)
        return False

    def require(self, kind: str, key: str, what: str) -> Path:
        """The artifact's folder, or an error naming what is missing (never an untrained stand-in)."""
        if not self.verify(kind, key):
            raise CSRecError(
                f"{what} ({kind}/{key}) is missing or damaged in the store {self.root}; "
                "train it first (launch.py run/train make missing teachers) or point --store at the right folder"
            )
        return self.path(kind, key)

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
                    shutil.copy2(source / name, folder / name)
                    if file_sha256(folder / name) != digest:
                        raise ValueError(f"{name} does not match its checksum")

            self.write(kind, key, meta["config"], fill)
        except (OSError, ValueError, KeyError):
            return False
        return True

    def write(self, kind: str, key: str, config: Any, fill: Callable[[Path], None]) -> Path:
        """Make artifact `key`: `fill(tmp_dir)` writes its files; checksums and rename follow."""
        final = self.path(kind, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            fill(tmp)
            files = {p.name: file_sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
            meta = {"key": key, "config": config, "files": files, "created": time.time()}
            write_json_atomic(tmp / META, meta)
            if self.verify(kind, key):  # another writer finished the same artifact first
                return final
            try:
                os.rename(tmp, final)
            except OSError:
                if not self.verify(kind, key):  # not another writer's complete artifact: a real error
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return final


def artifact_problem(folder: Path) -> str | None:
    """Why `folder` is not a complete, intact artifact, or None. Reads only."""
    meta_path = folder / META
    if not meta_path.is_file():
        return "no meta.json"
    try:
        files = json.loads(meta_path.read_text())["files"]
    except (ValueError, KeyError):
        return "unreadable meta.json"
    for name, digest in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if file_sha256(path) != digest:
            return f"{name} does not match its checksum"
    return None
