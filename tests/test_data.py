"""The data layer: loaders, k-core, id map, protocols, subsamples, item counts and splits."""

from __future__ import annotations

import numpy as np
import pytest

from csrec.data import (LOADERS, DataConfig, kcore_filter, load_interactions, load_sequence_data, subsample,
                        train_item_counts, training_samples, user_loo, validation_samples, window_bounds, windows)
from csrec.data import test_samples as make_test_samples  # aliased: pytest would collect test_*
from csrec.data.samples import SequenceData
from csrec.errors import CSRecError


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def hand_data(sequences, ratings=None, max_len=3):
    arrays = [np.array(s, dtype=np.int64) for s in sequences]
    n_items = max(max(s) for s in sequences)
    tokens = np.array(["[PAD]"] + [str(i) for i in range(1, n_items + 1)], dtype=object)
    users = np.array([f"u{i}" for i in range(len(sequences))], dtype=object)
    rated = None if ratings is None else [np.array(r, dtype=np.float64) for r in ratings]
    return SequenceData(arrays, rated, users, tokens, max_len)


# ---- loaders -------------------------------------------------------------------------------------

def test_registry_covers_the_three_formats():
    assert set(LOADERS) == {"inter", "txt", "csv"}


def test_inter_typed_header_in_any_order_sorted_by_timestamp(tmp_path):
    path = write(tmp_path, "x.inter", "timestamp:float\titem_id:token\trating:float\tuser_id:token\n"
                 "30\ta\t4\tu2\n20\tb\t5\tu1\n10\tc\t3\tu2\n\n20\td\t1\tu1\n5\te\t2\tu1\n")
    frame = load_interactions(path)
    assert list(frame.columns) == ["user", "item", "rating", "timestamp"]
    assert frame["user"].tolist() == ["u2", "u2", "u1", "u1", "u1"]  # users by first appearance
    assert frame["item"].tolist() == ["c", "a", "e", "b", "d"]  # stable on the tie b, d at 20
    assert frame["rating"].tolist() == [3.0, 4.0, 2.0, 5.0, 1.0]
    assert frame["timestamp"].tolist() == [10.0, 30.0, 5.0, 20.0, 20.0]


def test_inter_optional_columns_absent_keeps_file_order(tmp_path):
    path = write(tmp_path, "x.inter", "item_id:token\tuser_id:token\nb\t1\na\t2\nc\t1\n")
    frame = load_interactions(path)
    assert frame["user"].tolist() == ["1", "1", "2"] and frame["item"].tolist() == ["b", "c", "a"]
    assert frame["rating"].isna().all() and frame["timestamp"].isna().all()


def test_txt_one_user_per_line(tmp_path):
    path = write(tmp_path, "x.txt", "7 3 1 3\n2 9\n")
    frame = load_interactions(path)
    assert frame["user"].tolist() == ["7", "7", "7", "2"] and frame["item"].tolist() == ["3", "1", "3", "9"]
    assert frame["rating"].isna().all()


def test_csv_session_id_file_order_and_user_id_with_timestamp(tmp_path):
    plain = load_interactions(write(tmp_path, "a.csv", "session_id,item_id,rating\n1,5,1\n1,4,1\n2,5,1\n"))
    assert plain["item"].tolist() == ["5", "4", "5"] and plain["rating"].tolist() == [1.0] * 3
    timed = load_interactions(write(tmp_path, "b.csv", "item_id,timestamp,user_id\nx,3,u\ny,1,u\nz,2,u\n"))
    assert timed["item"].tolist() == ["y", "z", "x"] and timed["rating"].isna().all()


def test_format_given_overrides_suffix(tmp_path):
    frame = load_interactions(write(tmp_path, "data.dat", "1 2 3\n"), format="txt")
    assert frame["item"].tolist() == ["2", "3"]


@pytest.mark.parametrize("name, text, fmt, expected", [
    ("x.csv", "", None, "line 1: the file is empty"),
    ("x.csv", "\n  \n", None, "line 1: the file is empty"),
    ("x.csv", "session_id,item_id\n", None, "line 2: the file has a header but no interactions"),
    ("x.csv", "session_id,item_id\n1,2\n\n1,2,3\n", None, "line 4: 3 fields"),
    ("x.csv", "session_id,item_id,rating\n1,2,1\n1,3\n", None, "line 3: 2 fields"),
    ("x.csv", "session_id,item_id,rating\n1,2,1\n1,3,good\n", None, "line 3: rating 'good' is not a finite number"),
    ("x.csv", "user_id,item_id,timestamp\n1,2,\n", None, "line 2: timestamp '' is not a finite number"),
    ("x.csv", "session,item_id\n1,2\n", None, "no 'session_id or user_id' column"),
    ("x.csv", "user_id,item,rating\n1,2,3\n", None, "no 'item_id' column"),
    ("x.csv", "user_id,item_id\n1,\n", None, "line 2: empty item field"),
    ("x.inter", "user_id\titem_id:token\n1\t2\n", None, "line 1: header field 'user_id' is not 'name:type'"),
    ("x.inter", "user_id:token\titem_id:token\n1\t2\n1\t2\t3\n", None, "line 3: 3 fields"),
    ("x.inter", "user_id:token\titem_id:token\ttimestamp:float\n1\t2\tnan\n", None, "line 2: timestamp 'nan'"),
    ("x.txt", "1 2 3\n2\n", None, "line 2: expected 'user item item ...'"),
    ("x.txt", "1 2 3\n2 4\n1 5\n", None, "line 3: user '1' already has line 1"),
    ("x.json", "{}", None, "cannot tell the file format from the suffix '.json'"),
    ("x.csv", "a,b\n", "parquet", "unknown format 'parquet'"),
])
def test_malformed_input_names_file_line_and_fix(tmp_path, name, text, fmt, expected):
    path = write(tmp_path, name, text)
    with pytest.raises(CSRecError) as error:
        load_interactions(path, fmt)
    assert str(path) in str(error.value) and expected in str(error.value)


def test_missing_file(tmp_path):
    with pytest.raises(CSRecError, match="no such file"):
        load_interactions(tmp_path / "absent.csv")


# ---- protocols -----------------------------------------------------------------------------------

def test_kcore_iterates_until_stable(tmp_path):
    # Pass 1 removes item z (1 interaction); then user b has 1 interaction and goes; then item y
    # has 1 and goes. One pass alone would keep b and y.
    path = write(tmp_path, "k.csv", "user_id,item_id\na,x\na,x\nb,y\nb,z\nc,x\nc,y\nc,x\n")
    frame = kcore_filter(load_interactions(path), user_min_count=2, item_min_count=2)
    assert frame["user"].tolist() == ["a", "a", "c", "c"] and frame["item"].tolist() == ["x"] * 4
    everything = kcore_filter(load_interactions(path), user_min_count=1, item_min_count=1)
    assert len(everything) == 7


def test_id_map_first_appearance_deterministic(tmp_path):
    path = write(tmp_path, "m.txt", "u1 q p q r s\nu2 s t p q r\n")
    config = DataConfig(path=str(path), user_min_count=1, item_min_count=1, max_len=5)
    first, second = load_sequence_data(config), load_sequence_data(config)
    assert first.item_tokens.tolist() == ["[PAD]", "q", "p", "r", "s", "t"]
    assert np.array_equal(first.item_tokens, second.item_tokens)
    assert [s.tolist() for s in first.sequences] == [[1, 2, 1, 3, 4], [4, 5, 2, 1, 3]]
    assert first.users.tolist() == ["u1", "u2"] and first.ratings is None


@pytest.mark.parametrize("length, overlap, expected", [
    (2, False, []),
    (5, False, [(0, 5)]),
    (10, False, [(0, 5), (5, 10)]),
    (11, False, [(0, 6), (6, 11)]),  # remainder 1 merged forward
    (12, False, [(0, 7), (7, 12)]),  # remainder 2 merged forward
    (13, False, [(0, 3), (3, 8), (8, 13)]),
    (4, True, [(0, 4)]),
    (10, True, [(0, 5), (5, 10)]),
    (13, True, [(0, 5), (3, 8), (8, 13)]),  # the head window overlaps (reference code)
    (6, True, [(0, 5), (1, 6)]),
])
def test_window_bounds(length, overlap, expected):
    assert window_bounds(length, 5, overlap) == expected


def test_windows_and_user_loo_cuts():
    assert windows(np.array([7, 2, 3]), 3).tolist() == [[0, 0, 4], [0, 4, 7], [2, 0, 3]]
    assert windows(np.array([7]), 3, overlap_head=True).tolist() == [[0, 0, 3], [0, 1, 4], [0, 4, 7]]
    assert user_loo(np.array([7, 2, 3])).tolist() == [[0, 0, 7], [2, 0, 3]]


def test_subsample_size_reproducible_and_seeded():
    a, b, c = subsample(100, 0.8, seed=0), subsample(100, 0.8, seed=0), subsample(100, 0.8, seed=1)
    assert len(a) == 80 and np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.all(np.diff(a) > 0) and a.min() >= 0 and a.max() < 100
    assert np.array_equal(subsample(7, 1.0, seed=3), np.arange(7))
    assert len(subsample(7, 0.5, seed=3)) == 4  # round(3.5) is 4
    for ratio in (0.0, 1.5):
        with pytest.raises(CSRecError, match="must lie in"):
            subsample(10, ratio, seed=0)


def test_train_item_counts_ignore_validation_and_test_targets():
    data = hand_data([[1, 2, 3, 4], [2, 2, 5, 6, 3]])
    assert train_item_counts(data).tolist() == [0, 1, 3, 0, 0, 1, 0]
    assert train_item_counts(data, np.array([0])).tolist() == [0, 1, 1, 0, 0, 0, 0]


# ---- splits --------------------------------------------------------------------------------------

def test_splits_hand_case_exact_arrays():
    data = hand_data([[1, 2, 3, 4, 5, 6], [7, 8, 9]], ratings=[[1, 2, 3, 4, 5, 6], [7, 8, 9]], max_len=3)
    train = training_samples(data)
    assert train.item_seq.tolist() == [[1, 0, 0], [1, 2, 0], [1, 2, 3]]
    assert train.targets.tolist() == [2, 3, 4] and train.lengths.tolist() == [1, 2, 3]
    assert train.sequence_index.tolist() == [0, 0, 0] and train.ratings.tolist() == [2, 3, 4]
    valid = validation_samples(data)
    assert valid.item_seq.tolist() == [[2, 3, 4], [7, 0, 0]] and valid.targets.tolist() == [5, 8]
    assert valid.lengths.tolist() == [3, 1] and valid.ratings.tolist() == [5, 8]
    test = make_test_samples(data)
    assert test.item_seq.tolist() == [[3, 4, 5], [7, 8, 0]] and test.targets.tolist() == [6, 9]
    assert test.sequence_index.tolist() == [0, 1] and test.item_seq.dtype == np.int64
    only_second = training_samples(data, np.array([1]))
    assert len(only_second) == 0 and only_second.item_seq.shape == (0, 3)


def test_training_samples_of_a_subset():
    data = hand_data([[1, 2, 3, 4], [5, 6, 7, 8, 9]], max_len=4)
    train = training_samples(data, np.array([1]))
    assert train.item_seq.tolist() == [[5, 0, 0, 0], [5, 6, 0, 0]] and train.targets.tolist() == [6, 7]
    assert train.sequence_index.tolist() == [1, 1] and train.ratings is None


# ---- config and the whole pipeline ---------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    (dict(max_len=2), "max_len must be at least 3"),
    (dict(protocol="sliding"), "protocol 'sliding' is unknown"),
    (dict(user_min_count=0), "user_min_count must be at least 1"),
    (dict(item_min_count=0), "item_min_count must be at least 1"),
    (dict(format="xlsx"), "format 'xlsx' is unknown"),
    (dict(protocol="user_loo", overlap_head=True), "overlap_head applies to the windows protocol only"),
])
def test_config_validation(kwargs, message):
    with pytest.raises(CSRecError, match=message):
        DataConfig(path="x.csv", **kwargs)


def test_exclude_history_resolved_by_protocol():
    assert DataConfig(path="x").resolved_exclude_history is True
    assert DataConfig(path="x", protocol="user_loo").resolved_exclude_history is False
    assert DataConfig(path="x", protocol="user_loo", exclude_history=True).resolved_exclude_history is True


def test_empty_after_filtering_suggests_lower_counts(tmp_path):
    path = write(tmp_path, "s.txt", "1 2 3 4\n2 5 6\n")
    with pytest.raises(CSRecError, match="no interactions are left.*lower user_min_count"):
        load_sequence_data(DataConfig(path=str(path)))


def test_user_loo_and_constant_ratings(tmp_path):
    path = write(tmp_path, "c.csv", "user_id,item_id,rating\na,1,1\na,2,1\na,3,1\na,4,1\nb,1,1\nb,2,1\n")
    data = load_sequence_data(DataConfig(path=str(path), protocol="user_loo", max_len=3,
                                         user_min_count=1, item_min_count=1))
    assert [s.tolist() for s in data.sequences] == [[1, 2, 3, 4]]  # b has only 2 interactions
    assert data.ratings is None  # a constant rating column is implicit feedback
    assert validation_samples(data).item_seq.tolist() == [[1, 2, 0]]


def test_lastfm_numbers(shared_data):
    config = DataConfig(path=str(shared_data / "lastfm.csv"), max_len=20, overlap_head=True)
    data = load_sequence_data(config)
    assert len(set(data.users)) == 1090 and data.n_items == 3646
    assert len(data.sequences) == 3173 and len(training_samples(data)) == 48307  # reference code
    leaks = 0  # test targets that are another window's training item (REFERENCE.md: 458)
    for length in np.bincount(load_interactions(config.path)["user"].factorize()[0]):
        bounds = window_bounds(int(length), 20, overlap_head=True)
        leaks += sum(any(a <= stop - 1 < b - 2 for a, b in bounds if (a, b) != (start, stop))
                     for start, stop in bounds)
    assert leaks == 458
    ours = load_sequence_data(DataConfig(path=config.path, max_len=20))
    assert sum(len(s) for s in ours.sequences) == 52551  # every interaction in exactly one window
    assert len(ours.sequences) == 3107 and len(training_samples(ours)) == 43230
    assert max(len(s) for s in ours.sequences) <= 22 and ours.ratings is None


def test_yelp_via_txt_loader(shared_data):
    data = load_sequence_data(DataConfig(path=str(shared_data / "yelp.txt"), max_len=10))
    assert len(set(data.users)) == 30431 and data.n_items == 20033
    assert sum(len(s) for s in data.sequences) == 316354 and len(data.sequences) == 41321


def test_ml100k_ratings_reach_samples(shared_data):
    path = str(shared_data / "ml-100k.inter")
    data = load_sequence_data(DataConfig(path=path, max_len=10))
    assert len(set(data.users)) == 943 and data.n_items == 1349 and sum(map(len, data.sequences)) == 99287
    test = make_test_samples(data)
    assert np.array_equal(test.ratings, [r[-1] for r in data.ratings])
    assert set(np.unique(test.ratings)) == {1.0, 2.0, 3.0, 4.0, 5.0}
    frame = kcore_filter(load_interactions(path))  # user 196's earliest kept item and its rating
    first = frame[frame["user"] == "196"].iloc[0]
    s = int(np.flatnonzero(data.users == "196")[0])
    assert data.item_tokens[data.sequences[s][0]] == first["item"] and data.ratings[s][0] == first["rating"]


def test_ratings_with_no_liked_item_are_said_not_silently_nan(tmp_path):
    """Negative (or all < 4) ratings: Recall+ / NDCG+ have no users; loading says so."""
    path = write(tmp_path, "n.inter", "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                 + "".join(f"u\t{i}\t{-i}\t{i}\n" for i in range(1, 6)))
    with pytest.warns(UserWarning, match="none is >= 4 .*Recall\\+ and NDCG\\+ are not defined"):
        data = load_sequence_data(DataConfig(path=str(path), protocol="user_loo", user_min_count=1,
                                             item_min_count=1))
    assert data.ratings is not None
