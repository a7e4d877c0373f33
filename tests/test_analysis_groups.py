"""analysis.groups and analysis.plots on hand-made catalogues, per-user frames and experiment directories.

The directories are written as the runner writes them (docs/FORMATS.md) through the real Store; the
model configs of the setting study are the real Job.config() of csrec.methods, so reading m, p and
the noise term back checks the reader against the writer. Expected numbers are worked out by hand.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from analysis import (by_input_length, collect, group_metrics, length_bins, plot_by_length, plot_groups,
                      plot_noise_term, plot_setting, popular_items, setting_study, user_groups)
from analysis.plots import figure_size
from csrec.config import TeacherSettings, load_spec
from csrec.data import DataConfig
from csrec.errors import CSRecError
from csrec.methods import base_job, dependencies, student_job
from csrec.store import Store, config_key
from csrec.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
SMOKE_DATA = ROOT / "experiments" / "data" / "smoke.csv"


# ---------------------------------------------------------------- popular / niche split (Fig. 1, 3)

def test_popular_items_on_a_hand_made_catalogue():
    counts = [0, 5, 9, 1, 9, 0, 3, 7, 2, 4, 6]  # padding, then items 1..10
    assert popular_items(counts).tolist() == [2, 4]  # 20% of 10: the two with count 9
    assert popular_items(counts, share=0.3).tolist() == [2, 4, 7]
    assert popular_items(counts, share=0.5).tolist() == [1, 2, 4, 7, 10]  # counts 9, 9, 7, 6, 5


def test_popular_items_rule_ties_padding_and_rounding():
    assert popular_items([0, 3, 8, 8, 8, 1]).tolist() == [2]  # round(0.2 * 5) = 1; tie -> smaller id
    assert popular_items([0, 3, 8, 8, 8, 1], share=0.5).tolist() == [2, 3, 4]  # 2.5 rounds half up to 3
    assert popular_items([100, 1, 2, 3, 4, 5]).tolist() == [5]  # index 0 (padding) is never an item
    assert popular_items([0, 0, 0, 0]).tolist() == [1]  # all unseen: at least one, by id
    assert popular_items(np.array([0, 2, 1], dtype=np.int32), share=0.1).tolist() == [1]


@pytest.mark.parametrize("counts, share, message", [
    ([0, 1, 2], 0.0, "must lie in (0, 1)"), ([0, 1, 2], 1.0, "must lie in (0, 1)"),
    ([0, -1, 2], 0.2, "non-negative integers"), ([0.0, 1.5, 2.0], 0.2, "non-negative integers"),
    ([0], 0.2, "padding entry 0 and at least one item"),
])
def test_popular_items_refuses_bad_input(counts, share, message):
    with pytest.raises(CSRecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        popular_items(counts, share)


def _per_user(targets, ranks, lengths=None, split="test") -> pd.DataFrame:
    n = len(targets)
    return pd.DataFrame({"split": split, "sequence": np.arange(n), "user": [f"u{i}" for i in range(n)],
                         "target": targets, "rank": ranks, "rating": np.nan,
                         "input_length": lengths if lengths is not None else [5] * n})


def test_user_groups_by_test_target():
    frame = pd.concat([_per_user([2, 4, 1], [1, 1, 1], split="valid"),  # valid targets must not count
                       _per_user([1, 2, 7], [1, 1, 1])], ignore_index=True)
    groups = user_groups(frame, popular=[2, 4])
    assert groups.to_dict() == {0: "niche", 1: "popular", 2: "niche"}
    assert user_groups(frame, [2, 4], split="valid").tolist() == ["popular", "popular", "niche"]
    with pytest.raises(CSRecError, match="padding"):
        user_groups(_per_user([0, 2], [1, 1]), [2])


# ---------------------------------------------------------------- input-length bins (Fig. 4a)

def test_length_bins_equal_frequency_and_explicit():
    lengths = [1, 2, 2, 3, 5, 8, 8, 8, 9, 19]
    index, labels = length_bins(lengths, 3)  # cut at the 1/3 and 2/3 quantiles ("lower"): 3 and 8
    assert labels == ["1-3", "4-8", "9-19"]
    assert index.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
    index, labels = length_bins(lengths, [2, 5])  # inclusive upper bounds; the rest in one more bin
    assert labels == ["1-2", "3-5", "6-19"]
    assert index.tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 2, 2]
    index, labels = length_bins([19] * 4 + [18] * 2, 4)  # cut points 18, 19, 19 merge; one length, one bin
    assert labels == ["18", "19"] and index.tolist() == [1] * 4 + [0] * 2
    index, labels = length_bins([19] * 5 + [18], 4)  # the 1/4 quantile is already 19: a single bin
    assert labels == ["18-19"] and index.tolist() == [0] * 6
    for bad in (0, [5, 5], []):
        with pytest.raises(CSRecError):
            length_bins(lengths, bad)


# ---------------------------------------------------------------- a hand-made experiment directory

USERS = 6
TARGETS = [2, 4, 1, 3, 2, 7]  # with popular {2, 4}: users 0, 1, 4 popular-type, 2, 3, 5 niche-type
LENGTHS = [1, 2, 5, 5, 9, 19]
COUNTS = [0, 5, 9, 1, 9, 0, 3, 7, 2, 4, 6]
# method -> [(params, stage, seed, valid ranks, test ranks)]
RUNS = {
    "base": [({}, "search", 0, [1] * 6, [1, 12, 3, 1, 20, 5]), ({}, "seeds", 1, [1] * 6, [1, 12, 3, 15, 2, 5])],
    "softrec": [({"beta": 0.5, "temperature": 3.0}, "search", 0, [2] * 6, [1, 1, 1, 1, 1, 1]),  # worse on valid
                ({"beta": 0.75, "temperature": 3.0}, "search", 0, [1] * 6, [11, 11, 1, 2, 1, 11])],
}


def _metrics(ranks) -> dict:
    r = np.asarray(ranks, dtype=float)
    return {"recall@10": float(np.mean(r <= 10)), "ndcg@10": float(np.mean(np.where(r <= 10, 1 / np.log2(r + 1), 0)))}


def write_trial(root: Path, dataset: str, model: str, method: str, params: dict, stage: str, seed: int,
                valid, test, key: str | None = None) -> str:
    """One finished trial as the runner writes it (result.json, per_user.parquet, meta.json)."""
    record = {"dataset": dataset, "model": model, "method": method, "seed": seed, "stage": stage,
              "params": {"alpha": None, "beta": None, "temperature": None} | params}
    key = key or config_key(record)
    frame = pd.concat([_per_user(TARGETS, valid, LENGTHS, "valid"), _per_user(TARGETS, test, LENGTHS)],
                      ignore_index=True)
    result = record | {"key": key, "best_epoch": 1, "valid": _metrics(valid), "test": _metrics(test)}

    def fill(folder: Path) -> None:
        (folder / "result.json").write_text(json.dumps(result))
        frame.to_parquet(folder / "per_user.parquet", index=False)

    Store(root / "store").write("trials", key, record, fill)
    return key


def write_dataset(root: Path, name: str, counts=COUNTS, n_sequences: int = USERS) -> None:
    (root / "datasets").mkdir(parents=True, exist_ok=True)
    (root / "datasets" / f"{name}.json").write_text(json.dumps(
        {"n_items": len(counts) - 1, "n_sequences": n_sequences, "item_train_counts": list(counts)}))


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("groups")
    write_dataset(root, "toy")
    for method, runs in RUNS.items():
        for params, stage, seed, valid, test in runs:
            write_trial(root, "toy", "gru4rec", method, params, stage, seed, valid, test)
    return root


def _ndcg(rank: int) -> float:
    return 1 / math.log2(rank + 1) if rank <= 10 else 0.0


def test_group_metrics_by_hand(experiment):
    frame = group_metrics(collect(experiment)).set_index(["method", "group", "metric"])
    # Base: per-user mean over seeds 0 and 1 first. Recall: users 0..5 -> 1, 0, 1, .5, .5, 1
    assert frame.loc[("base", "popular", "recall@10"), "value"] == pytest.approx((1 + 0 + 0.5) / 3)
    assert frame.loc[("base", "niche", "recall@10"), "value"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert frame.loc[("base", "all", "recall@10"), "value"] == pytest.approx(4 / 6)
    popular = (_ndcg(1) + 0 + (0 + _ndcg(2)) / 2) / 3
    niche = (_ndcg(3) + (_ndcg(1) + 0) / 2 + _ndcg(5)) / 3
    assert frame.loc[("base", "popular", "ndcg@10"), "value"] == pytest.approx(popular)
    assert frame.loc[("base", "niche", "ndcg@10"), "value"] == pytest.approx(niche)
    assert frame.loc[("base", "popular", "ndcg@10"), "n_users"] == 3
    assert frame.loc[("base", "all", "ndcg@10"), "n_runs"] == 2
    # SoftRec: the config best on validation (beta 0.75) is reported, although beta 0.5 is better on test
    assert frame.loc[("softrec", "popular", "recall@10"), "config"] == "beta=0.75 temperature=3.0"
    assert frame.loc[("softrec", "popular", "recall@10"), "value"] == pytest.approx(1 / 3)  # ranks 11, 11, 1
    assert frame.loc[("softrec", "niche", "recall@10"), "value"] == pytest.approx(2 / 3)  # ranks 1, 2, 11


def test_group_and_length_frames_carry_the_seed_sd_of_each_runs_value(experiment):
    """Error bars: the sd over the cell's runs of each run's own group (or bin) mean, not of users."""
    collection = collect(experiment)
    frame = group_metrics(collection, metrics=("recall@10",)).set_index(["method", "group"])
    # Base's two runs (seeds 0 and 1): popular users 0, 1, 3 and niche users 2, 4, 5 (test_group_metrics_by_hand)
    runs = {seed: json.loads(p.read_text())["test"] for p in (experiment / "store" / "trials").glob("*/result.json")
            for seed in [json.loads(p.read_text())["seed"]] if json.loads(p.read_text())["method"] == "base"}
    assert len(runs) == 2
    assert frame.loc[("base", "all"), "std"] == pytest.approx(np.std([r["recall@10"] for r in runs.values()], ddof=1))
    assert np.isnan(frame.loc[("softrec", "all"), "std"])  # one run: no spread to draw
    lengths = by_input_length(collection, bins=[2, 5], metrics=("recall@10",))
    base = lengths[lengths["method"] == "base"]
    assert base["std"].notna().all() and (base["std"] >= 0).all()
    pooled = group_metrics(collection, metrics=("recall@10",)).query("method == 'base' and group != 'all'")
    assert (pooled["std"] >= 0).all()


def test_a_length_plot_needs_three_bins_and_says_why(experiment, tmp_path):
    """One input length for every user (Last.FM's windows): one bin, three dots at one x on a zoomed
    axis; the plot is refused with the bins it found, and the report says so instead of drawing it."""
    lengths = by_input_length(collect(experiment), bins=[5], metrics=("recall@10",))  # 1-5 and 6-19
    with pytest.raises(CSRecError, match=r"give 2 bin\(s\) \(1-5 \(4 users\), 6-19 \(2 users\)\); .* at least 3"):
        plot_by_length(lengths, tmp_path / "l.png")
    assert not (tmp_path / "l.png").exists()
    assert plot_by_length(by_input_length(collect(experiment), bins=[2, 5]), tmp_path / "l3.png").exists()


def test_group_metrics_all_equals_the_stored_test_metric(experiment):
    collection = collect(experiment)
    frame = group_metrics(collection, metrics=("ndcg@10",), share=0.5)
    softrec = frame[(frame["method"] == "softrec") & (frame["group"] == "all")]["value"].item()
    stored = json.loads(next(p for p in (experiment / "store" / "trials").glob("*/result.json")
                             if json.loads(p.read_text())["params"]["beta"] == 0.75).read_text())["test"]["ndcg@10"]
    assert softrec == pytest.approx(stored)
    # share 0.5: popular items {1, 2, 4, 7, 10}: users 0, 1, 2, 4, 5 popular-type
    counts = frame[(frame["method"] == "base")].set_index("group")["n_users"]
    assert counts.to_dict() == {"popular": 5, "niche": 1, "all": 6}


def test_by_input_length_by_hand(experiment):
    frame = by_input_length(collect(experiment), bins=[2, 5], metrics=("recall@10",))
    base = frame[frame["method"] == "base"].set_index("bin")
    assert list(base.index) == ["1-2", "3-5", "6-19"]
    assert base["n_users"].tolist() == [2, 2, 2]
    assert base["value"].tolist() == pytest.approx([(1 + 0) / 2, (1 + 0.5) / 2, (0.5 + 1) / 2])
    softrec = frame[frame["method"] == "softrec"].set_index("bin")["value"]
    assert softrec.tolist() == pytest.approx([0, 1, 0.5])  # test ranks 11 11 | 1 2 | 1 11


# ---------------------------------------------------------------- one setting across experiments

def _real_jobs(m: int, p: float, noise_term: bool):
    """The students of CSRec-M/-D/-T and Base as csrec.methods builds them (the runner's writer)."""
    data = DataConfig(path=str(SMOKE_DATA), max_len=8)
    base = base_job(data, "gru4rec", TrainConfig(max_epochs=1))
    settings = TeacherSettings(m=m, subsample_ratio=p, noise_term=noise_term)
    params = {"alpha": 0.5, "beta": 0.5, "temperature": 3.0}
    jobs = {"base": base} | {method: student_job(method, base, {k: v for k, v in params.items()
                                                                 if method == "csrec-t" or k != "alpha"}, settings)
                             for method in ("csrec-m", "csrec-d", "csrec-t")}
    return jobs, params


def _study_experiment(root: Path, m: int, p: float, noise_term: bool) -> Path:
    jobs, params = _real_jobs(m, p, noise_term)
    write_dataset(root, "toy", n_sequences=20)
    for method, job in jobs.items():
        for node in [*dependencies(job), job]:
            folder = root / "store" / "models" / node.key
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "config.json").write_text(json.dumps(node.config()))
        used = {k: v for k, v in params.items() if method != "base" and (method == "csrec-t" or k != "alpha")}
        write_trial(root, "toy", "gru4rec", method, used, "search", 0, [1] * 6, [1, 2, 3, 20, 20, 8 + m],
                    key=job.key)
    return root


def test_setting_study_reads_m_p_and_noise_term_from_the_stored_configs(tmp_path):
    first = _study_experiment(tmp_path / "a", m=1, p=0.6, noise_term=True)
    second = _study_experiment(tmp_path / "b", m=3, p=1.0, noise_term=False)
    for setting, expected in {"m": {"csrec-m": [1, 3], "csrec-d": [1, 3]},
                              "subsample_ratio": {"csrec-d": [0.6, 1.0], "csrec-t": [0.6, 1.0]},
                              "noise_term": {"csrec-t": [1.0, 0.0]},
                              "user_fraction": {"base": [1.0, 1.0], "csrec-m": [1.0, 1.0]}}.items():
        frame = setting_study([first, second], setting, metrics=("recall@10",))
        for method, values in expected.items():
            assert frame[frame["method"] == method]["value"].tolist() == values, setting
        untouched = frame[~frame["method"].isin(expected) & ~frame["method"].isin(["softrec"])]
        if setting != "user_fraction":
            assert untouched["value"].isna().all() and len(untouched) > 0  # Base has no teachers
    frame = setting_study([first, second], "m", metrics=("recall@10",))
    # the last user's test rank is 8 + m: 9 (a hit) with m = 1, 11 (a miss) with m = 3
    assert frame[frame["method"] == "csrec-m"]["mean"].tolist() == pytest.approx([4 / 6, 3 / 6])
    assert frame["sparsity"].unique().tolist() == pytest.approx([1 - 46 / (20 * 10)])


def test_setting_study_labels_and_errors(tmp_path):
    first = _study_experiment(tmp_path / "a", m=2, p=0.8, noise_term=True)
    frame = setting_study([first, first], "m", labels=[5, 6], metrics=("ndcg@10",))
    assert frame[frame["method"] == "csrec-m"]["value"].tolist() == [5.0, 6.0]
    assert frame[frame["method"] == "base"]["value"].isna().all()
    with pytest.raises(CSRecError, match="one label per directory"):
        setting_study([first], "m", labels=[1, 2])
    with pytest.raises(CSRecError, match="use one of"):
        setting_study([first], "temperature")
    for path in (first / "store" / "models").glob("*/config.json"):
        path.unlink()
    with pytest.raises(CSRecError, match="give one label per directory instead"):
        setting_study([first], "m")
    assert setting_study([first], "m", labels=[2])["value"].notna().any()  # labels need no config


# ---------------------------------------------------------------- plots: PNG files of a fixed size

def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")


def test_plots_write_pngs_of_the_expected_size(experiment, tmp_path):
    collection = collect(experiment)
    groups = group_metrics(collection)
    lengths = by_input_length(collection, bins=[2, 5])
    first = _study_experiment(tmp_path / "a", m=1, p=0.6, noise_term=True)
    second = _study_experiment(tmp_path / "b", m=3, p=1.0, noise_term=False)
    m_study = setting_study([first, second], "m")
    noise = setting_study([first, second], "noise_term")
    written = {plot_groups(groups, tmp_path / "g.png"): 2, plot_by_length(lengths, tmp_path / "l.png"): 2,
               plot_setting(m_study, tmp_path / "m.png"): 2, plot_setting(m_study, tmp_path / "s.png", x="sparsity"): 2,
               plot_noise_term(noise, tmp_path / "sub" / "n.png"): 1}
    for path, panels in written.items():
        assert path.stat().st_size > 5000, path  # axes, bars, labels: not an empty canvas
        assert png_size(path) == figure_size(panels) == (400 * panels, 320)
    again = plot_groups(groups, tmp_path / "g2.png")
    assert again.read_bytes() == (tmp_path / "g.png").read_bytes()  # deterministic, no date metadata


def test_plots_refuse_frames_they_cannot_draw(experiment, tmp_path):
    groups = group_metrics(collect(experiment))
    two = pd.concat([groups, groups.assign(dataset="other")])
    with pytest.raises(CSRecError, match="filter it to one model and one data set"):
        plot_groups(two, tmp_path / "x.png")
    with pytest.raises(CSRecError, match="no rows to plot"):
        plot_by_length(groups.iloc[0:0], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


# ---------------------------------------------------------------- the ablation specs

HAS_USER_FRACTION = "user_fraction" in {f.name for f in dataclasses.fields(DataConfig)}
SPECS = sorted((ROOT / "experiments").glob("ablation_*.yaml"))


@pytest.mark.parametrize("path", [pytest.param(p, marks=pytest.mark.skipif(
    "user_fraction" in p.read_text() and not HAS_USER_FRACTION, reason="needs DataConfig.user_fraction"))
    for p in SPECS], ids=[p.stem for p in SPECS])
def test_ablation_specs_load_and_vary_what_their_name_says(path):
    spec = load_spec(path)
    raw = yaml.safe_load(path.read_text())
    # a spec's paths are read against its folder: ../runs/NAME is runs/NAME in the clone
    assert spec.seeds == (0,) and spec.name == path.stem and raw["storage"] == f"../runs/{path.stem}"
    name = path.stem.removeprefix("ablation_")
    if name.startswith("m"):
        assert spec.teachers.m == int(name[1:]) and spec.models == ("narm",)
    elif name.startswith("p"):
        assert spec.teachers.subsample_ratio == pytest.approx(int(name[1:]) / 10) and "csrec-d" in spec.methods
    elif name.startswith("noise"):
        assert spec.teachers.noise_term == (name == "noise_with") and "csrec-t" in spec.methods
    else:
        fractions = sorted(d.user_fraction for d in spec.datasets.values())
        assert fractions == [0.4, 0.6, 0.8, 1.0]


def test_the_ablation_specs_cover_the_papers_figures():
    names = {p.stem for p in SPECS}
    assert {f"ablation_m{k}" for k in range(1, 5)} <= names  # Fig. 5
    assert {f"ablation_p{k:02d}" for k in (2, 4, 6, 8, 10)} <= names  # Fig. 6
    assert {"ablation_noise_with", "ablation_noise_without", "ablation_sparsity"} <= names  # Fig. 7, 4b
