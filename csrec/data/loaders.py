"""Interaction file loaders: RecBole atomic `.inter`, S3Rec/ELECRec `.txt`, CSRec `.csv`.

Every loader returns one normalised DataFrame (see `normalise`):

    user (str), item (str), rating (float, NaN if the file has none), timestamp (float, NaN if none)

with the rows of a user together, users in order of first appearance in the file, and each user's
rows in time order (a stable sort by timestamp when the file has one, else file order). Parsing is
strict: a malformed line is a CSRecError naming the file, the 1-based line number and what to change,
never a silently dropped or NaN-filled row. Blank lines are skipped (line numbers still count them).
"""

from __future__ import annotations

import csv
import io
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from csrec.errors import CSRecError

COLUMNS = ["user", "item", "rating", "timestamp"]


def load_interactions(path: str | Path, format: str | None = None) -> pd.DataFrame:
    """Load `path` with the loader of `format` ("inter", "txt", "csv"), or of its suffix if None."""
    path = Path(path)
    if format is None:
        format = path.suffix.lstrip(".").lower()
        if format not in LOADERS:
            raise CSRecError(f"{path}: cannot tell the file format from the suffix '{path.suffix}'; "
                             f"rename it to one of {', '.join('.' + f for f in LOADERS)} or set format "
                             f"to one of {', '.join(LOADERS)}")
    elif format not in LOADERS:
        raise CSRecError(f"{path}: unknown format '{format}'; use one of {', '.join(LOADERS)}")
    return LOADERS[format](path)


def load_inter(path: str | Path) -> pd.DataFrame:
    """RecBole atomic file: tab separated, typed header `name:type`, columns in any order.

    `user_id` and `item_id` are required; `rating` and `timestamp` are optional; other columns are
    ignored (RecBole files may carry more fields).
    """
    path = Path(path)
    numbers, lines = _lines(path, "a tab-separated header such as 'user_id:token\\titem_id:token'")
    names = []
    for field in lines[0].split("\t"):
        name, colon, _ = field.partition(":")
        if not colon or not name.strip():
            raise CSRecError(f"{path}, line {numbers[0]}: header field '{field}' is not 'name:type'; "
                             "write RecBole typed headers such as 'user_id:token' or 'rating:float'")
        names.append(name.strip())
    return _table(path, numbers, lines, names, "\t", user_names=("user_id",))


def load_csv(path: str | Path) -> pd.DataFrame:
    """CSRec CSV: header with `session_id` (or `user_id`), `item_id`, optional `rating`, `timestamp`.

    Comma separated without quoting. `session_id` wins when both it and `user_id` are present (a
    session is the sequence unit). Without a timestamp, file order is time order (`lastfm.csv`).
    """
    path = Path(path)
    numbers, lines = _lines(path, "a header such as 'session_id,item_id,rating'")
    names = [name.strip() for name in lines[0].split(",")]
    return _table(path, numbers, lines, names, ",", user_names=("session_id", "user_id"))


def load_txt(path: str | Path) -> pd.DataFrame:
    """S3Rec/ELECRec text: one user per line, `user item item ...` in time order, no header."""
    path = Path(path)
    numbers, lines = _lines(path, "one line per user: 'user item item ...'")
    users, items, lengths, first_line = [], [], [], {}
    for number, line in zip(numbers, lines):
        fields = line.split()
        if len(fields) < 2:
            raise CSRecError(f"{path}, line {number}: expected 'user item item ...' but found only "
                             f"'{line.strip()}'; give each user at least one item or delete the line")
        if fields[0] in first_line:
            raise CSRecError(f"{path}, line {number}: user '{fields[0]}' already has line "
                             f"{first_line[fields[0]]}; put all of a user's items on one line")
        first_line[fields[0]] = number
        users.append(fields[0])
        items.extend(fields[1:])
        lengths.append(len(fields) - 1)
    frame = pd.DataFrame({"user": np.repeat(np.array(users, dtype=object), lengths),
                          "item": np.array(items, dtype=object)})
    return normalise(frame)


def normalise(frame: pd.DataFrame) -> pd.DataFrame:
    """Group rows by user (first appearance order), stable-sort each user's rows by timestamp."""
    frame = frame.reindex(columns=COLUMNS)
    frame["rating"] = frame["rating"].astype(np.float64)
    frame["timestamp"] = frame["timestamp"].astype(np.float64)
    user_code = pd.factorize(frame["user"])[0]
    if frame["timestamp"].notna().any():
        order = np.lexsort((frame["timestamp"].to_numpy(), user_code))  # lexsort is stable
    else:
        order = np.argsort(user_code, kind="stable")
    return frame.iloc[order].reset_index(drop=True)


def _lines(path: Path, expected: str) -> tuple[np.ndarray, list[str]]:
    """Non-blank lines of `path` and their 1-based line numbers; errors for a missing or empty file."""
    if not path.is_file():
        raise CSRecError(f"{path}: no such file; check the data path")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a leading BOM is not part of the header
    except UnicodeDecodeError as error:
        raise CSRecError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start}); "
                         "save the file as UTF-8") from None
    if "\x00" in text:  # ids with a NUL byte print like others: a damaged or binary file, not data
        raise CSRecError(f"{path}, line {text.count(chr(10), 0, text.index(chr(0))) + 1}: a NUL byte (\\x00) in the "
                         "text; the file is damaged or not text: write it again")
    numbered = [(i + 1, line) for i, line in enumerate(text.splitlines()) if line.strip()]
    if not numbered:
        raise CSRecError(f"{path}, line 1: the file is empty; expected {expected}")
    numbers, lines = zip(*numbered)
    return np.array(numbers, dtype=np.int64), list(lines)


def _table(path: Path, numbers: np.ndarray, lines: list[str], names: list[str], sep: str,
           user_names: tuple[str, ...]) -> pd.DataFrame:
    """Header + data lines -> normalised frame, checking field counts, columns and numbers first.

    `numbers` are the 1-based line numbers of `lines` (the header, then one line per interaction).
    """
    header = numbers[0]
    if len(lines) == 1:
        raise CSRecError(f"{path}, line {header + 1}: the file has a header but no interactions; "
                         "add one line per interaction below the header")
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise CSRecError(f"{path}, line {header}: column '{duplicated[0]}' appears twice in the header; keep one")
    user = next((name for name in user_names if name in names), None)
    for present, missing in ((user is not None, " or ".join(user_names)), ("item_id" in names, "item_id")):
        if not present:
            raise CSRecError(f"{path}, line {header}: the header has no '{missing}' column (it has "
                             f"{', '.join(names)}); rename the column or add it")
    counts = np.fromiter((line.count(sep) + 1 for line in lines), dtype=np.int64, count=len(lines))
    bad = np.flatnonzero(counts != len(names))
    if len(bad):
        i = bad[0]
        raise CSRecError(f"{path}, line {numbers[i]}: {counts[i]} fields separated by {sep!r}, but the header "
                         f"has {len(names)}; give every line one value per header column")
    # Field counts are checked above, so the fast C parser sees a well-formed table.
    table = pd.read_csv(io.StringIO("\n".join(lines[1:])), sep=sep, header=None, names=names, dtype=str,
                        na_filter=False, quoting=csv.QUOTE_NONE, skip_blank_lines=False, engine="c")
    numbers = numbers[1:]
    frame = pd.DataFrame({"user": table[user].str.strip(), "item": table["item_id"].str.strip()})
    for column in ("user", "item"):
        empty = np.flatnonzero((frame[column] == "").to_numpy())
        if len(empty):
            raise CSRecError(f"{path}, line {numbers[empty[0]]}: empty {column} field; give every "
                             "interaction a user and an item")
        # Fields are read as written (no quoting), so "10" and 10 would be two items: refused.
        quoted = np.flatnonzero(frame[column].str.contains('"', regex=False).to_numpy())
        if len(quoted):
            raise CSRecError(f"{path}, line {numbers[quoted[0]]}: {column} {frame[column].iloc[quoted[0]]} has "
                             f"quotes; fields are read as written, so \"10\" and 10 would be two {column}s: remove the "
                             "quotes from the file")
    for column in ("rating", "timestamp"):
        if column in names:
            frame[column] = _numbers(path, numbers, table[column], column)
    if "timestamp" in names:
        _warn_repeated_lines(path, numbers, lines[1:])
    return normalise(frame)


def _warn_repeated_lines(path: Path, numbers: np.ndarray, lines: list[str]) -> None:
    """Lines that repeat an earlier line exactly, in a file with timestamps (the same interaction at
    the same time: a file written twice over): kept, but said. Without timestamps a repeated line is
    a repeated interaction (Last.FM's plays), and nothing can tell the two apart."""
    first: dict[str, int] = {}
    repeats = []
    for number, line in zip(numbers.tolist(), lines):
        key = line.strip()
        if key in first:
            repeats.append((number, first[key]))
        else:
            first[key] = number
    if repeats:
        warnings.warn(f"{path}: {len(repeats)} line(s) repeat an earlier line exactly (first: line {repeats[0][0]} "
                      f"repeats line {repeats[0][1]}); kept as interactions: remove them if they are duplicates")


def _numbers(path: Path, numbers: np.ndarray, text: pd.Series, column: str) -> np.ndarray:
    try:
        values = text.astype(np.float64).to_numpy()
    except ValueError:  # find the offending line (slower path, only on bad input)
        values = pd.to_numeric(text.str.strip(), errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
        i = bad[0]
        raise CSRecError(f"{path}, line {numbers[i]}: {column} '{text.iloc[i]}' is not a finite number; "
                         f"write a number there or remove the {column} column")
    return values


# One registry: format name (also the file suffix) -> loader.
LOADERS = {"inter": load_inter, "txt": load_txt, "csv": load_csv}
