"""Where an experiment lives: a local folder, or a folder on object storage (`s3://bucket/prefix`,
`gs://...`, any file system that pyarrow or fsspec knows), behind one small path type.

A local path stays a `pathlib.Path`, so local experiments work exactly as they always have. A URI
becomes a `RemotePath`: the part of pathlib's interface the runner and the analysis use (`/`, name,
parent, exists, is_file, is_dir, iterdir, read_text/bytes, write_text/bytes, mkdir, unlink, stat)
over a pyarrow file system (fsspec's, wrapped, for schemes pyarrow lacks). What cannot be the same
on both is here, once: removing a tree, an atomic write, copying to and from the node, the node's
cache and work folder, Tune's storage arguments, and the reachability check. Object stores write an
object whole or not at all, which is what the store's meta.json-written-last rule builds on
(csrec.store).

Credentials come only from the file system's standard chain (for S3: the AWS_* variables, profiles,
instance roles; the endpoint from AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL, which pyarrow reads). A
URI that carries credentials or options is refused, so none is ever written into a spec, a plan,
Tune's files or a log.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import uuid
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from csrec.errors import CSRecError, first_line

ENVIRONMENT = ("AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE for "
               "S3; GOOGLE_APPLICATION_CREDENTIALS for gs")


# "scheme:/..." (a URI missing a slash); one letter before the colon is a Windows drive, not a scheme.
_ONE_SLASH_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+:/")


def location(value, what: str = "storage") -> "Path | RemotePath":
    """A local path as a Path (expanded, not resolved), a URI as a RemotePath (checked: `what` names
    the setting in the error)."""
    if isinstance(value, (Path, RemotePath)):
        return value
    value = str(value)
    if value.startswith("file://"):
        return Path(value[len("file://"):]).expanduser()
    if "://" not in value:
        if _ONE_SLASH_URI.match(value):  # s3:/bucket/x would be made as a folder "s3:" here, without a word
            scheme, rest = value.split(":", 1)
            raise CSRecError(f"{what}: {value} looks like a URI with one slash after '{scheme}:'; write "
                             f"{scheme}://{rest.lstrip('/')} for object storage, or ./{value} for a local folder of "
                             "that name")
        return Path(value).expanduser()
    parts = urlsplit(value)
    if parts.username or parts.password or parts.query or "@" in parts.netloc:
        raise CSRecError(f"{what}: {parts.scheme}://{parts.hostname or ''}/...: the URI carries credentials or options; "
                         f"give them through the environment instead ({ENVIRONMENT}), so that they are never written "
                         "into the spec or the logs")
    if not parts.netloc:
        raise CSRecError(f"{what}: {value} names no bucket; write it as {parts.scheme}://BUCKET/PREFIX")
    remote = RemotePath(f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}")
    _filesystem(parts.scheme, parts.netloc, what)  # an unknown scheme fails here, with `what` named
    return remote


@functools.lru_cache(maxsize=None)
def _filesystem(scheme: str, netloc: str, what: str = "storage") -> pafs.FileSystem:
    """One file system per (scheme, bucket) and process: pyarrow's own, else fsspec's wrapped for pyarrow.
    Built by `from_uri`, which reads the endpoint from AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL (pyarrow
    26; `S3FileSystem()` called directly does not), and credentials from the standard chain only."""
    try:
        return pafs.FileSystem.from_uri(f"{scheme}://{netloc}/")[0]
    except Exception as pyarrow_error:  # noqa: BLE001 - pyarrow has no file system for the scheme: try fsspec
        try:
            import fsspec

            return pafs.PyFileSystem(pafs.FSSpecHandler(fsspec.filesystem(scheme)))
        except Exception:  # noqa: BLE001 - neither knows it (or its package is missing)
            raise CSRecError(f"{what}: no file system for '{scheme}://' ({first_line(pyarrow_error)}); use a local "
                             "path, s3://BUCKET/PREFIX, gs://BUCKET/PREFIX, or a scheme whose fsspec package is "
                             "installed") from None


class RemotePath:
    """A file or folder on a remote file system, named by its URI; pickled as that URI (so a Ray
    worker rebuilds the file system from its own node's credential chain)."""

    def __init__(self, uri: str, known_type: pafs.FileType | None = None):
        self.uri = uri
        self._known_type = known_type  # from the listing that found it (iterdir): no request to ask again
        parts = urlsplit(uri)
        self.scheme, self.bucket = parts.scheme, parts.netloc
        self.path = (parts.netloc + parts.path).rstrip("/")  # the file system's own path

    @property
    def fs(self) -> pafs.FileSystem:
        return _filesystem(self.scheme, self.bucket)

    def __reduce__(self):
        return RemotePath, (self.uri,)

    def __str__(self) -> str:
        return self.uri

    def __repr__(self) -> str:
        return f"RemotePath({self.uri!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, RemotePath) and other.uri == self.uri

    def __hash__(self) -> int:
        return hash(self.uri)

    def __lt__(self, other: "RemotePath") -> bool:
        return self.uri < other.uri

    def __truediv__(self, name) -> "RemotePath":
        return RemotePath(f"{self.uri}/{str(name).strip('/')}")

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def parent(self) -> "RemotePath":
        return RemotePath(self.uri.rsplit("/", 1)[0]) if "/" in self.path else self

    def with_name(self, name: str) -> "RemotePath":
        return self.parent / name

    def expanduser(self) -> "RemotePath":
        return self

    def resolve(self) -> "RemotePath":
        return self

    def _info(self) -> pafs.FileInfo:
        return self.fs.get_file_info(self.path)

    def _type(self) -> pafs.FileType:
        return self._known_type if self._known_type is not None else self._info().type

    def exists(self) -> bool:
        return self._type() != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self._type() == pafs.FileType.File

    def is_dir(self) -> bool:
        return self._type() == pafs.FileType.Directory

    def stat(self) -> SimpleNamespace:
        info = self._info()
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(self.uri)
        return SimpleNamespace(st_size=info.size or 0, st_mtime=info.mtime.timestamp() if info.mtime else 0.0,
                               st_mtime_ns=info.mtime_ns or 0)

    def listing(self) -> dict[str, pafs.FileInfo]:
        """name -> FileInfo of what the folder holds directly (one list request; {} when absent)."""
        selector = pafs.FileSelector(self.path, allow_not_found=True, recursive=False)
        return {info.base_name: info for info in self.fs.get_file_info(selector)}

    def iterdir(self):
        listing = self.listing()
        return iter([RemotePath(f"{self.uri}/{name}", listing[name].type) for name in sorted(listing)])

    def read_bytes(self) -> bytes:
        try:
            with self.fs.open_input_stream(self.path) as stream:
                return stream.read()
        except FileNotFoundError:
            raise
        except OSError as error:
            if self._info().type == pafs.FileType.NotFound:
                raise FileNotFoundError(self.uri) from None
            raise

    def read_text(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return self.read_bytes().decode(encoding, errors)

    def write_bytes(self, data: bytes) -> None:
        """One object, written whole or not at all (a single PUT on object storage)."""
        with self.fs.open_output_stream(self.path) as stream:
            stream.write(data)

    def write_text(self, text: str, encoding: str = "utf-8") -> None:
        self.write_bytes(text.encode(encoding))

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Object storage has no folders: a prefix exists once an object is under it."""

    def unlink(self, missing_ok: bool = False) -> None:
        try:
            self.fs.delete_file(self.path)
        except FileNotFoundError:
            if not missing_ok:
                raise


def remove_tree(place) -> None:
    """Remove a folder and all it holds; nothing when it is absent."""
    if isinstance(place, RemotePath):
        try:
            place.fs.delete_dir(place.path)
        except FileNotFoundError:
            pass
    else:
        shutil.rmtree(place, ignore_errors=True)


def write_atomic(place, data: bytes) -> None:
    """Readers see the old content or the new, never part of it: a temporary file renamed over
    `place` locally; one object written whole on object storage."""
    if isinstance(place, RemotePath):
        place.write_bytes(data)
        return
    place.parent.mkdir(parents=True, exist_ok=True)
    tmp = place.with_name(f".{place.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, place)


def copy_to_local(source, target: Path) -> None:
    """Copy the file `source` (local or remote) to the local file `target`, streamed, not held in memory."""
    if not isinstance(source, RemotePath):
        shutil.copy2(source, target)
        return
    with source.fs.open_input_stream(source.path) as stream, open(target, "wb") as out:
        while block := stream.read(1 << 20):
            out.write(block)


def upload(source: Path, target: "RemotePath") -> None:
    with open(source, "rb") as handle, target.fs.open_output_stream(target.path) as stream:
        while block := handle.read(1 << 20):
            stream.write(block)


def cache_dir() -> Path:
    """This node's folder for copies of remote artifacts and work checkpoints ($CSREC_CACHE, else
    ~/.cache/csrec/storage)."""
    return Path(os.environ.get("CSREC_CACHE") or Path.home() / ".cache" / "csrec" / "storage").expanduser()


def work_dir(store_root) -> Path:
    """Where a store's epoch checkpoints are kept: `<store>/work` for a local store; for a remote
    one, a folder on this node (a checkpoint is rewritten every epoch: not a thing to upload)."""
    if isinstance(store_root, RemotePath):
        return cache_dir() / "work" / hashlib.sha256(store_root.uri.encode()).hexdigest()[:16]
    return Path(store_root) / "work"


def tune_storage(folder) -> dict:
    """RunConfig's storage arguments for Tune's folder `folder`, with our file system (one for all)."""
    if isinstance(folder, RemotePath):
        return {"storage_path": folder.path, "storage_filesystem": folder.fs}
    return {"storage_path": str(folder)}


def check_reachable(place, write: bool = True, what: str = "storage") -> None:
    """A remote folder's bucket exists and these credentials may list it (and, with `write`, write
    to it): each problem one CSRecError, before anything is trained. Nothing to check locally."""
    if not isinstance(place, RemotePath):
        return
    try:
        bucket = place.fs.get_file_info(place.bucket)
        if bucket.type == pafs.FileType.NotFound:
            raise CSRecError(f"{what}: {place}: the bucket '{place.bucket}' does not exist (or these credentials "
                             "cannot see it); create it, or fix the bucket's name")
        place.listing()
        if write:
            probe = place / f".csrec-probe-{uuid.uuid4().hex[:8]}"
            probe.write_bytes(b"")
            probe.unlink(missing_ok=True)
    except CSRecError:
        raise
    except OSError as error:
        text = str(error)
        denied = any(word in text.upper() for word in ("ACCESS_DENIED", "ACCESSDENIED", "FORBIDDEN", "403"))
        cause = " ".join(text.split())[:200]
        raise CSRecError(f"{what}: {place}: {'access denied' if denied else 'cannot be reached'} ({cause}); check "
                         f"the credentials and endpoint in the environment ({ENVIRONMENT}) and the bucket's "
                         "permissions") from None
