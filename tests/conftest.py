"""Shared fixtures: tiny synthetic data (made here) and the path to ../shared/data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from csrec.data.samples import SequenceData

# Tests share two cores with each other and with background jobs.
torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SMOKE = Path(__file__).resolve().parents[1] / "experiments" / "smoke.yaml"


def write_smoke_spec(folder: Path, name: str, **changes) -> Path:
    """experiments/smoke.yaml with its data path absolute, storage `folder/name`, top-level keys replaced."""
    raw = yaml.safe_load(SMOKE.read_text())
    raw["datasets"]["smoke"]["path"] = str(SMOKE.parent / raw["datasets"]["smoke"]["path"])
    raw["storage"] = str(folder / name)
    raw.update(changes)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data sets not found at {SHARED_DATA}")
    return SHARED_DATA


def make_sequence_data(n_sequences=40, n_items=30, max_len=8, seed=0, with_ratings=False) -> SequenceData:
    """Random sequences with a learnable pattern: item i is usually followed by item i + 1."""
    rng = np.random.default_rng(seed)
    sequences, ratings = [], []
    for _ in range(n_sequences):
        length = int(rng.integers(3, max_len + 1))
        start = int(rng.integers(1, n_items + 1))
        seq = (start - 1 + np.arange(length)) % n_items + 1
        noise = rng.random(length) < 0.2
        seq[noise] = rng.integers(1, n_items + 1, size=int(noise.sum()))
        sequences.append(seq.astype(np.int64))
        ratings.append(rng.integers(1, 6, size=length).astype(np.float64))
    tokens = np.array(["[PAD]"] + [f"i{i}" for i in range(1, n_items + 1)], dtype=object)
    users = np.array([f"u{s}" for s in range(n_sequences)], dtype=object)
    return SequenceData(sequences, ratings if with_ratings else None, users, tokens, max_len)


@pytest.fixture
def tiny_data() -> SequenceData:
    return make_sequence_data()
