"""Data sets by name: the registry, and a name's resolution to a checked local file.

    resolve("yelp") -> Path    # the shipped file, else the cache, else a download

A name resolves, in order, to the file shipped inside the package (Last.FM, for the quickstart),
then the cache folder (`$CSREC_DATA`, else `$XDG_CACHE_HOME/csrec`, else `~/.cache/csrec`), then a
download from the record's source into the cache: into a temporary file beside the target, checked
against the record's sha256, renamed into place. Every file a name resolves to is checked against
that sha256, so a name always means the same bytes; a job's key hashes the file's content
(`csrec.datafiles.fingerprint`), so a name and a path to the same file give the same keys.
Offline or on a wrong checksum the user gets a CSRecError that says what to download from where and
where to put it; no partial or wrong file is left behind.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from csrec.errors import CSRecError
from csrec.store import file_sha256

SHIPPED = Path(__file__).resolve().parent / "data" / "shipped"
TIMEOUT_S = 60  # per network operation (connect, each read), not for the whole download


@dataclass(frozen=True)
class Source:
    """One public file: its name here (shipped folder and cache), where it comes from, its bytes."""

    file: str  # the suffix tells the loader (.csv, .txt, .inter), as for any other path
    url: str
    sha256: str
    size: int  # bytes


@dataclass(frozen=True)
class Dataset:
    """One registered data set. `settings` are the paper protocol's DataConfig values; they fill
    what a spec (or `train`) leaves out when it keeps their protocol. `batch_size` is the authors'
    where they changed it from 256 (a training setting: specs set it in `train`, it is shown here)."""

    name: str
    title: str
    data: Source
    format: str  # "csv" | "txt" | "inter" (csrec.data.LOADERS)
    settings: dict[str, Any]
    terms: str  # license or terms of use, and who prepared the file
    batch_size: int | None = None
    attributes: Source | None = None  # {item_id: [attribute ids]} (S3Rec pretraining)
    note: str = ""


_S3REC = "https://raw.githubusercontent.com/RUCAIBox/CIKM2020-S3Rec/master/data/"

# One registry: name -> record (each file's source, checked against its sha256 on every use).
REGISTRY: dict[str, Dataset] = {
    "lastfm": Dataset(
        name="lastfm",
        title="Last.FM (HetRec 2011) as preprocessed by the CSRec authors; the paper's Table 1 file",
        data=Source("lastfm.csv", "https://raw.githubusercontent.com/Furyton/CSRec/main/Data/lastfm_small.csv",
                    "2f4d73958aedb0697ee2f715779e74b3fb44397f197b24b7fb4907141ad817fa", 548_840),
        format="csv",
        settings={"protocol": "windows", "max_len": 20, "overlap_head": True},
        attributes=Source("lastfm_item2attributes.json", _S3REC + "LastFM_item2attributes.json",
                          "a4ccd678dc9ff6d43fe5073f491db5c9b02eb98dfa4f8c0382913a784be217ef", 524_368),
        terms="HetRec 2011 Last.FM data (GroupLens, Last.fm): research use, cite HetRec 2011; file from "
              "Furyton/CSRec, shipped unchanged in csrec/data/shipped for the quickstart",
    ),
    "yelp": Dataset(
        name="yelp",
        title="Yelp as preprocessed by the S3Rec authors; the paper's Table 1 file",
        data=Source("yelp.txt", _S3REC + "Yelp.txt",
                    "724b219106b81dd2349027da997334ddb6da9fe2f152ad6e0d97a93170f7caed", 1_814_224),
        format="txt",
        settings={"protocol": "windows", "max_len": 10, "overlap_head": True},
        batch_size=64,
        attributes=Source("yelp_item2attributes.json", _S3REC + "Yelp_item2attributes.json",
                          "f25acd5e1e680e0b22fd4e3f4fb6be4b2a7461e9222610616e3e1ee6702dd58d", 600_360),
        terms="Yelp Open Dataset: Yelp's Dataset Terms of Use (non-commercial, academic use); file from "
              "RUCAIBox/CIKM2020-S3Rec",
    ),
    "beauty": Dataset(
        name="beauty",
        title="Amazon Beauty as preprocessed by the S3Rec authors (used by S3Rec and ELECRec)",
        data=Source("beauty.txt", _S3REC + "Beauty.txt",
                    "226cce9c3105299ca0db9615d7d3fb32b3175e90da43100ae352599f0f0107b8", 1_090_094),
        format="txt",
        settings={"protocol": "windows", "max_len": 10, "overlap_head": False},
        attributes=Source("beauty_item2attributes.json", _S3REC + "Beauty_item2attributes.json",
                          "129e40f67486f6877eff0f5318cfa8530ee8ac23d8b0d1de04e1bb7a2ba0b2d4", 305_674),
        terms="Amazon product reviews (McAuley et al.): research use, cite the Amazon reviews papers; file "
              "from RUCAIBox/CIKM2020-S3Rec",
        note="not in the paper: its protocol for data sets other than Last.FM (windows of 10), cut "
             "without the reference code's overlapping head window (no published CSRec numbers to match)",
    ),
    "ml-100k": Dataset(
        name="ml-100k",
        title="MovieLens 100K, RecBole's atomic file (ratings 1-5 serve the filtered metrics)",
        data=Source("ml-100k.inter", "https://raw.githubusercontent.com/RUCAIBox/RecBole/master/dataset/ml-100k/ml-100k.inter",
                    "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff", 1_979_230),
        format="inter",
        settings={"protocol": "windows", "max_len": 10, "overlap_head": False},
        terms="MovieLens 100K (GroupLens) usage license: research use, cite Harper & Konstan 2015, no "
              "redistribution without permission; the file is RecBole's atomic conversion (RUCAIBox/RecBole)",
        note="not in the paper: as beauty",
    ),
}


# Published pretrained models, registered like data sets (shipped never; cached, else downloaded; sha256).
CHECKPOINTS = {
    "s3rec-beauty": Source(
        "s3rec_beauty_epochs_150.pt",
        "https://github.com/RUCAIBox/CIKM2020-S3Rec/raw/2a81540ae186/reproduce/Beauty-epochs-150.pt",
        "a196408d383719bccd1898b5f3f879bd2cdf6490ad9ee21ce0291cae97bd0508", 3_750_013),
}


def resolve_checkpoint(name: str, log: Callable[[str], None] | None = None) -> Path:
    """A registered checkpoint's name (CHECKPOINTS) -> its checked local file: cached, else
    downloaded; offline, a CSRecError saying where to get it and where to put it."""
    if name not in CHECKPOINTS:
        raise CSRecError(f"'{name}' is not a registered checkpoint; known: {', '.join(CHECKPOINTS)}")
    return locate(name, CHECKPOINTS[name]) or download(CHECKPOINTS[name], cache_dir(), log)


def cache_dir() -> Path:
    """Where downloaded data sets are kept: $CSREC_DATA, else $XDG_CACHE_HOME/csrec, else ~/.cache/csrec."""
    if os.environ.get("CSREC_DATA"):
        return Path(os.environ["CSREC_DATA"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "csrec"


def dataset(name: str) -> Dataset:
    if name not in REGISTRY:
        raise CSRecError(f"'{name}' is not a registered data set; known: {', '.join(REGISTRY)} "
                         "(`python launch.py data list`), or give the path of a file")
    return REGISTRY[name]


def looks_like_name(value: str) -> bool:
    """No folder and no suffix: meant as a data set name rather than a file (for error messages)."""
    return "/" not in value and os.sep not in value and not Path(value).suffix


def locate(name: str, source: Source) -> Path | None:
    """The shipped file, else the cached one; None if neither exists. A file whose sha256 is not
    the record's is refused, never used and never replaced behind the user's back."""
    for folder in (SHIPPED, cache_dir()):
        path = folder / source.file
        if path.is_file():
            found = file_sha256(path)
            if found != source.sha256:
                raise CSRecError(f"{path} is not the registered {name} file (sha256 {found}, expected "
                                 f"{source.sha256}); `python launch.py data fetch {name}` replaces it with a "
                                 "checked download, or set CSREC_DATA to another folder")
            return path
    return None


def resolve(name: str, attributes: bool = False, log: Callable[[str], None] | None = None) -> Path:
    """A registered name -> its checked local file (or its attribute file): shipped, else cached,
    else downloaded."""
    record = dataset(name)
    source = record.attributes if attributes else record.data
    if source is None:
        raise CSRecError(f"{name} has no attribute file in the registry; ask for its interactions")
    return locate(name, source) or download(source, cache_dir(), log)


def fetch(name: str, log: Callable[[str], None] | None = None) -> list[Path]:
    """Make the data set's files (interactions and attributes) present; a wrong cached file is
    replaced by a checked download. Returns their paths."""
    record = dataset(name)
    paths = []
    for source in (record.data, record.attributes):
        if source is None:
            continue
        try:
            path = locate(name, source)
        except CSRecError:  # a wrong cached file: the user asked for a fetch, so replace it
            path = None
        paths.append(path or download(source, cache_dir(), log))
    return paths


def download(source: Source, folder: Path, log: Callable[[str], None] | None = None) -> Path:
    """Download `source.url` to `folder / source.file`: a temporary file beside it, checked against
    the sha256, then renamed into place. On any failure or interruption nothing is left behind."""
    target = folder / source.file
    by_hand = (f"download {source.url} by hand and put it at {target} (sha256 {source.sha256}), or set "
               f"CSREC_DATA to a folder that holds {source.file}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = tempfile.NamedTemporaryFile(dir=folder, prefix=f".{source.file}.", suffix=".part", delete=False)
    except OSError as error:
        raise CSRecError(f"cannot write to the data cache {folder} ({error.strerror}); set CSREC_DATA to a "
                         f"writable folder, or {by_hand}") from None
    partial = Path(handle.name)
    progress = Progress(source, log)
    try:
        with handle:
            try:
                digest, size = _copy(source.url, handle, progress)
            except (OSError, http.client.HTTPException) as error:  # URLError, timeouts, refused, cut off
                raise CSRecError(f"could not download {source.file} from {source.url} ({_reason(error)}); "
                                 f"{by_hand}") from None
        if digest != source.sha256:
            raise CSRecError(f"the download of {source.file} from {source.url} ({size} bytes) has sha256 {digest}, "
                             f"not the registered {source.sha256}, and was not kept; the source may have "
                             f"changed or the transfer was damaged: {by_hand}")
        os.replace(partial, target)
        progress.done(target)
        return target
    finally:
        progress.end_bar()
        partial.unlink(missing_ok=True)


def _copy(url: str, handle, progress: "Progress") -> tuple[str, int]:
    """Stream `url` into `handle`; (sha256 hex, bytes). A body shorter than its Content-Length
    (a dropped connection) is an error: urllib alone returns what arrived."""
    digest, size = hashlib.sha256(), 0
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
        expected = int(response.headers.get("Content-Length") or 0)
        while block := response.read(1 << 16):
            handle.write(block)
            digest.update(block)
            size += len(block)
            progress.update(size, expected)
    if expected and size != expected:
        raise http.client.IncompleteRead(b"", expected - size)
    return digest.hexdigest(), size


def _reason(error: Exception) -> str:
    if isinstance(error, http.client.IncompleteRead):
        return f"the connection closed with {error.expected} bytes still to come"
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    reason = getattr(error, "reason", None) or error
    return str(reason) or type(error).__name__


class Progress:
    """A progress bar on stderr when it is a terminal; otherwise one line before and one after."""

    def __init__(self, source: Source, log: Callable[[str], None] | None):
        self.source, self.log = source, log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.bar, self.drawn = sys.stderr.isatty() and log is None, False
        self.log(f"downloading {source.file} ({source.size / 1e6:.1f} MB) from {source.url}")

    def update(self, done: int, total: int) -> None:
        if self.bar:
            self.drawn = True
            total = total or self.source.size
            filled = min(30, 30 * done // max(total, 1))
            print(f"\r  [{'#' * filled}{'.' * (30 - filled)}] {done / 1e6:5.1f} / {total / 1e6:.1f} MB",
                  end="", file=sys.stderr, flush=True)

    def end_bar(self) -> None:
        """Close the bar's line, so that what follows (the result or an error) starts on its own."""
        if self.drawn:
            print(file=sys.stderr, flush=True)
            self.drawn = False

    def done(self, target: Path) -> None:
        self.end_bar()
        self.log(f"{self.source.file}: sha256 checked, saved as {target}")


def protocol_settings(record: Dataset, given: dict[str, Any]) -> dict[str, Any]:
    """The record's paper settings for the DataConfig keys `given` leaves out (None = left out).

    They come as a unit with their protocol: with another protocol given, none of them apply (the
    windows length and cutting mean nothing to user_loo), and DataConfig's defaults stand."""
    given = {k: v for k, v in given.items() if v is not None}
    if given.get("protocol", record.settings["protocol"]) != record.settings["protocol"]:
        return {}
    return {k: v for k, v in record.settings.items() if k not in given}


def data_checksums(datasets: dict[str, Any]) -> dict[str, dict[str, str]]:
    """{dataset: {"path", "sha256"}} of a spec's data files, as the experiment's plan records them."""
    return {name: {"path": str(config.path), "sha256": file_sha256(Path(config.path))}
            for name, config in datasets.items()}


def check_unchanged(recorded: dict[str, dict[str, str]], datasets: dict[str, Any]) -> None:
    """Refuse a data file that differs from the one the experiment started with (same path, other
    content): its models and trials would be mixed with those of the first file."""
    for name, entry in recorded.items():
        config = datasets.get(name)
        if config is None or str(config.path) != entry["path"]:
            continue  # a different path changes the spec itself, which the runner refuses
        now = file_sha256(Path(config.path)) if Path(config.path).is_file() else "missing"
        if now != entry["sha256"]:
            raise CSRecError(f"datasets.{name}: {config.path} has changed since this experiment started "
                             f"(sha256 {entry['sha256'][:16]}... then, {now[:16]}... now); put the original file "
                             "back, or run the new file as a new experiment (another storage)")


def describe(record: Dataset) -> list[str]:
    """`launch.py data list`: where the files are (checked), size, source, protocol, terms."""
    settings = record.settings
    protocol = (f"{settings['protocol']}, max_len {settings['max_len']}"
                + (", overlap_head" if settings.get("overlap_head") else "")
                + f", batch size {record.batch_size or '256 (default)'}")
    lines = [f"{record.name}: {record.title}"]
    for label, source in (("file", record.data), ("attributes", record.attributes)):
        if source is not None:
            lines += [f"  {label + ':':12s}{_presence(record.name, source)}", f"  {'source:':12s}{source.url}"]
    lines.append(f"  {'protocol:':12s}{protocol}")
    lines += [f"  {'note:':12s}{record.note}"] if record.note else []
    lines.append(f"  {'terms:':12s}{record.terms}")
    return lines


def _presence(name: str, source: Source) -> str:
    size = f"{source.size / 1024:,.0f} KB"
    try:
        path = locate(name, source)
    except CSRecError:
        return f"WRONG CONTENT in {cache_dir() / source.file} (sha256 differs); `data fetch {name}` replaces it"
    if path is None:
        return f"not present ({size}; `python launch.py data fetch {name}` puts it in {cache_dir()})"
    where = "shipped" if path.parent == SHIPPED else "cached"
    return f"present, {where}, sha256 checked ({size}): {path}"
