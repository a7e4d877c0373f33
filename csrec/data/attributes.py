"""Item attributes (S3Rec's pretraining input): a JSON object `{item id: [attribute ids]}`.

    read_attribute_file(path) -> {item token: attribute ids}      # checked, at spec load
    item_attributes(path, item_tokens) -> ItemAttributes           # multi-hot rows by our item ids

The file is the S3Rec authors' `*_item2attributes.json` format: keys are the item ids of the
interaction file (as text), values lists of attribute ids >= 1 (0 is the attribute padding of the
authors' attribute embedding). A list may repeat an id (Last.FM's does) or be empty (Yelp has one);
an item of the data that the file does not list has no attributes (the authors' loader does the
same). A file that lists none of the data's items cannot be its attribute file and is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from csrec.errors import CSRecError

MAX_ATTRIBUTE_FILE_BYTES = 256 << 20  # the registered files are under 1 MB


@dataclass(frozen=True)
class ItemAttributes:
    """Multi-hot attributes of every item id: labels[i, a] is True when item i has attribute a.
    Row 0 (padding) and column 0 (attribute padding) are all False."""

    labels: np.ndarray  # [n_items + 1, n_attributes + 1] bool
    coverage: float  # share of the data's items the file lists

    @property
    def n_attributes(self) -> int:
        return self.labels.shape[1] - 1


@lru_cache(maxsize=8)
def read_attribute_file(path: str) -> dict[str, tuple[int, ...]]:
    """The checked content of an attribute file; each problem is a CSRecError naming the file and
    what to change."""
    file = Path(path)
    if not file.is_file():
        raise CSRecError(f"no file at {file}; give an item2attributes JSON file or a registered "
                         "data set's name (`launch.py data list`)")
    if file.stat().st_size > MAX_ATTRIBUTE_FILE_BYTES:
        raise CSRecError(f"{file} has {file.stat().st_size} bytes, more than the "
                         f"{MAX_ATTRIBUTE_FILE_BYTES} an attribute file may have")
    try:
        raw = json.loads(file.read_text(encoding="utf-8-sig"))
    except (UnicodeDecodeError, ValueError) as error:
        raise CSRecError(f"{file} is not JSON ({str(error).splitlines()[0]}); write one object "
                         '{"item id": [attribute ids], ...}') from None
    if not isinstance(raw, dict) or not raw:
        raise CSRecError(f"{file} holds a JSON {type(raw).__name__}{' that is empty' if not raw else ''}; "
                         'write one non-empty object {"item id": [attribute ids], ...}')
    checked = {}
    for item, ids in raw.items():
        if not isinstance(ids, list) or any(type(a) is not int for a in ids):
            raise CSRecError(f"{file}: item {item!r} has {ids!r}; give each item a list of integer "
                             "attribute ids")
        if any(a < 1 for a in ids):
            raise CSRecError(f"{file}: item {item!r} has attribute id {min(ids)}; ids start at 1 "
                             "(0 is padding): add 1 to every id of a file that counts from 0")
        checked[str(item)] = tuple(ids)
    if not any(checked.values()):
        raise CSRecError(f"{file} gives no item any attribute; S3Rec's attribute objectives need some")
    return checked


def item_attributes(path: str, item_tokens: np.ndarray) -> ItemAttributes:
    """The file's attributes by item id (item_tokens[i] is the file's id of our item i; [0] padding)."""
    listed = read_attribute_file(path)
    n_attributes = max(a for ids in listed.values() for a in ids)
    labels = np.zeros((len(item_tokens), n_attributes + 1), dtype=bool)  # [n_items + 1, A + 1]
    found = 0
    for item, token in enumerate(item_tokens[1:].tolist(), start=1):
        ids = listed.get(str(token))
        if ids is not None:
            found += 1
            labels[item, list(ids)] = True
    if found == 0:
        raise CSRecError(f"attributes: {path} lists none of the data's {len(item_tokens) - 1} items (e.g. "
                         f"{item_tokens[1]!r}); its keys must be the item ids of the interaction file: give the "
                         "attribute file that belongs to the data")
    return ItemAttributes(labels=labels, coverage=found / max(len(item_tokens) - 1, 1))
