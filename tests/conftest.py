"""Shared fixtures: tiny synthetic data (made here) and the path to ../shared/data."""

from __future__ import annotations

import shutil
import tempfile
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


def quiet(_line: str) -> None:
    """A runner log that prints nothing."""


@pytest.fixture(scope="module")
def ray_session():
    """One in-process Ray for the module, in its own temp folder (short: Ray's socket paths are)."""
    import ray

    from csrec.runner.ray_backend import start_ray

    folder = tempfile.mkdtemp(prefix="csr", dir="/tmp")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("RAY_ADDRESS", raising=False)
        patch.setenv("RAY_TMPDIR", folder)
        start_ray(log=quiet)
        yield ray
        ray.shutdown()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def local_smoke(tmp_path_factory) -> Path:
    """The smoke spec run uninterrupted by the local backend: the reference every run must equal."""
    from csrec.runner import run_experiment
    folder = tmp_path_factory.mktemp("reference")
    run_experiment(write_smoke_spec(folder, "smoke"), local=True, table=False, log=quiet)
    return folder / "smoke"


@pytest.fixture
def tiny_data_config(tmp_path):
    """A 6-user x 6-item CSV as a DataConfig (windows of 5, nothing filtered): keys and plans, no training."""
    from csrec.data import DataConfig
    path = tmp_path / "d.csv"
    path.write_text("session_id,item_id\n" + "".join(f"{u},{i}\n" for u in range(6) for i in range(6)))
    return DataConfig(path=str(path), max_len=5, user_min_count=1, item_min_count=1)


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
