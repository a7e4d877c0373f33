"""Evaluation: metrics on hand-made rankings, ranks from a hand-set scoring, per-user frames."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from csrec import data as csrec_data
from csrec.data import validation_samples
from csrec.data.samples import Samples, SequenceData
from csrec.errors import CSRecError
from tests.conftest import make_sequence_data
from csrec.evaluate import compute_metrics, evaluate, history_before_target, rank_targets, validator
from csrec.metrics import expected_rank, metric_values
from csrec.models import build_model
from csrec.models.base import SequentialRecommender


class LastItemTable(SequentialRecommender):
    """Scores set by hand: row `table[last input item]` is the score of every item.

    The item embedding is the identity, so scores(encode(...)) returns the table row exactly
    (column 0 then set to PADDING_SCORE by the base class, as for every real model).
    """

    def __init__(self, table: torch.Tensor):
        n_items = table.size(1) - 1
        super().__init__(n_items, embedding_size=n_items + 1)
        with torch.no_grad():
            self.item_embedding.weight.copy_(torch.eye(n_items + 1))
        self.table = nn.Parameter(table.clone())

    def encode_positions(self, item_seq):
        return self.table[item_seq]  # [B, L, n_items + 1]: the row of the last item at each position


def samples(inputs: list[list[int]], targets: list[int], ratings=None, width: int = 4) -> Samples:
    item_seq = np.zeros((len(inputs), width), dtype=np.int64)
    for row, seq in enumerate(inputs):
        item_seq[row, :len(seq)] = seq
    return Samples(item_seq, np.array([len(s) for s in inputs]), np.array(targets),
                   np.arange(len(inputs)), None if ratings is None else np.array(ratings, dtype=float))


# Scores for n_items = 5; row index = last input item. Row 2 is far below PADDING_SCORE (-1e4).
TABLE = torch.zeros(6, 6)
TABLE[1] = torch.tensor([0.0, 0.5, 0.9, 0.1, 0.9, 0.3])
TABLE[2] = torch.full((6,), -5e4)
TABLE[3] = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])


def test_metrics_on_hand_made_ranks():
    m = compute_metrics(np.array([1, 3, 11, 2]), ks=(1, 2, 10))
    assert m["recall@10"] == pytest.approx(0.75)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / 2 + 0 + 1 / math.log2(3)) / 4)
    assert m["mrr@10"] == pytest.approx((1 + 1 / 3 + 0 + 1 / 2) / 4)
    assert m["recall@1"] == pytest.approx(0.25) and m["ndcg@1"] == pytest.approx(0.25)
    assert m["recall@2"] == pytest.approx(0.5)
    assert m["ndcg@2"] == pytest.approx((1 + 1 / math.log2(3)) / 4)
    assert m["mrr@2"] == pytest.approx((1 + 1 / 2) / 4)
    assert not any("+" in key for key in m)  # no ratings, no filtered metrics


@pytest.mark.parametrize("metric", ["recall@10", "ndcg@10", "mrr@10", "ndcg@3"])
def test_expected_metric_under_ties_equals_the_mean_over_random_tie_breaks(metric):
    rng = np.random.default_rng(0)
    above = np.array([0, 0, 3, 7, 9, 9, 12, 0, 5])  # a: items strictly above the target
    tied = np.array([0, 4, 2, 5, 0, 3, 1, 30, 9])  # t: other items with the target's score
    expected = metric_values(metric, above + 1, tied)
    draws = 20000
    for a, t, value in zip(above, tied, expected):
        # Monte Carlo: random keys order the tied block; the target is element 0 of the block.
        keys = rng.random((draws, t + 1))  # [draws, t + 1]
        position = a + (keys[:, 1:] < keys[:, :1]).sum(axis=1)  # [draws] 0-based
        sampled = metric_values(metric, position + 1).mean()
        assert abs(sampled - value) < 4 * 0.5 / np.sqrt(draws)  # 4 standard errors at most
        every = metric_values(metric, a + 1 + np.arange(t + 1)).mean()  # each position once
        assert value == pytest.approx(every, rel=1e-12, abs=1e-15)
        pessimistic = metric_values(metric, np.array([a + 1]), np.array([t]), mode="pessimistic")
        assert pessimistic[0] == pytest.approx(metric_values(metric, np.array([a + t + 1]))[0], abs=1e-15)
    assert expected_rank(above + 1, tied).tolist() == (above + 1 + tied / 2).tolist()
    with pytest.raises(CSRecError, match="ties 'optimistic'"):
        metric_values(metric, above + 1, tied, mode="optimistic")


def test_filtered_metrics_count_only_positive_users():
    # Eq. 16: users 0 (rank 1) and 2 (rank 11) are rated >= 4; users 1 and 3 do not count at all.
    m = compute_metrics(np.array([1, 3, 11, 2]), ratings=np.array([5.0, 3.0, 4.0, 1.0]), ks=(2, 10))
    assert m["recall+@10"] == pytest.approx(0.5)
    assert m["ndcg+@10"] == pytest.approx(0.5)
    assert m["recall+@2"] == pytest.approx(0.5)
    assert m["recall@10"] == pytest.approx(0.75)  # the unfiltered ones are unchanged
    lenient = compute_metrics(np.array([1, 3, 11, 2]), np.array([5.0, 3.0, 4.0, 1.0]), ks=(10,), rating_threshold=3)
    assert lenient["recall+@10"] == pytest.approx(2 / 3)
    assert lenient["ndcg+@10"] == pytest.approx((1 + 0.5) / 3)


def test_filtered_metrics_are_nan_when_no_user_qualifies():
    m = compute_metrics(np.array([1, 2]), ratings=np.array([1.0, 3.0]), ks=(10,))
    assert math.isnan(m["recall+@10"]) and math.isnan(m["ndcg+@10"])
    assert m["recall@10"] == 1.0


def test_metrics_reject_bad_ranks():
    with pytest.raises(CSRecError, match="1-based"):
        compute_metrics(np.array([0, 1]))
    with pytest.raises(CSRecError, match="non-empty"):
        compute_metrics(np.array([], dtype=np.int64))
    with pytest.raises(CSRecError, match="ratings shape"):
        compute_metrics(np.array([1, 2]), ratings=np.array([5.0]))


def test_rank_is_one_plus_items_scored_strictly_higher_and_ties_are_counted():
    model = LastItemTable(TABLE)
    s = samples([[1], [1], [1], [1], [3], [3]], [2, 4, 5, 3, 5, 1])
    # Row 1 scores: 0.5 0.9 0.1 0.9 0.3; items 2 and 4 tie (0.9): one tie each, none above.
    ranks, ties = rank_targets(model, s, exclude_history=False)
    assert ranks.tolist() == [1, 1, 4, 5, 1, 5] and ties.tolist() == [1, 1, 0, 0, 0, 0]
    # Random tie-breaking: item 2 is first or second with equal chance.
    assert evaluate(model, s, False).metrics(ks=(1,))["recall@1"] == pytest.approx((0.5 + 0.5 + 1) / 6)


def test_padding_and_removed_items_are_never_ranked_nor_ties():
    # Every item scores -5e4, below the model's padding score -1e4: padding must not count.
    model = LastItemTable(TABLE)
    s = samples([[2], [1, 2]], [3, 5])
    ranks, ties = rank_targets(model, s, exclude_history=False)
    assert ranks.tolist() == [1, 1] and ties.tolist() == [4, 4]  # the other four items tie
    ranks, ties = rank_targets(model, s, exclude_history=True)
    assert ranks.tolist() == [1, 1] and ties.tolist() == [3, 2]  # minus the input items


def test_a_target_scored_minus_infinity_does_not_tie_with_removed_items():
    class Scores(nn.Module):  # the same scores for every input, -inf included (a matrix product gives NaN)
        def __init__(self):
            super().__init__()
            self.row = nn.Parameter(torch.tensor([0.0, 0.5, -math.inf, 0.1, -math.inf, -math.inf]))

        def forward(self, item_seq, lengths):
            return self.row.expand(len(item_seq), -1).clone()  # [B, 6]

    model = Scores()
    # Input [4, 1], target 5 (-inf): items 4 (-inf) and 1 are removed, item 2 (-inf) is a real tie,
    # item 3 is above; padding never counts.
    ranks, ties = rank_targets(model, samples([[4, 1]], [5]), exclude_history=True)
    assert ranks.tolist() == [2] and ties.tolist() == [1]
    ranks, ties = rank_targets(model, samples([[4, 1]], [5]), exclude_history=False)
    assert ranks.tolist() == [3] and ties.tolist() == [2]


def test_a_constant_score_model_scores_at_chance():
    n_items, n_users = 50, 400
    model = LastItemTable(torch.zeros(n_items + 1, n_items + 1))  # every item scores 0
    rng = np.random.default_rng(0)
    s = samples([[int(i)] for i in rng.integers(1, n_items + 1, n_users)],
                list(rng.integers(1, n_items + 1, n_users)), width=1)
    result = evaluate(model, s, exclude_history=False)
    assert (result.ranks == 1).all() and (result.ties == n_items - 1).all()
    expected = result.metrics(ks=(10,))
    assert expected["recall@10"] == pytest.approx(10 / n_items, rel=1e-12)
    assert expected["mrr@10"] == pytest.approx(sum(1 / r for r in range(1, 11)) / n_items, rel=1e-12)
    assert result.metrics(ks=(10,), ties="pessimistic")["recall@10"] == 0.0
    # Within sampling error of a model that breaks the ties by a random jitter (the item's share of
    # top-10 places is 10 / 50 = 0.2, standard error sqrt(0.2 * 0.8 / 400) = 0.02).
    jittered = LastItemTable(torch.rand(n_items + 1, n_items + 1, generator=torch.Generator().manual_seed(1)) * 1e-3)
    sampled = evaluate(jittered, s, exclude_history=False).metrics(ks=(10,))["recall@10"]
    assert abs(sampled - 10 / n_items) < 3 * 0.02
    # With the input item removed, chance is 10 among the 49 items left (the target is never removed).
    masked = evaluate(model, s, exclude_history=True).metrics(ks=(10,))["recall@10"]
    in_input = s.item_seq[:, 0] == s.targets
    assert masked == pytest.approx(np.mean(np.where(in_input, 10 / n_items, 10 / (n_items - 1))), rel=1e-12)


def test_exclude_history_masks_input_items_but_not_the_target():
    model = LastItemTable(TABLE)
    # Input [2, 4, 1], target 5: items 1, 2, 4 beat it, but all three are in the input.
    # Input [5, 4, 1], target 5: the target is in the input too; it is still ranked, 4 and 1 masked.
    s = samples([[2, 4, 1], [5, 4, 1], [5, 1]], [5, 5, 5])
    assert rank_targets(model, s, exclude_history=False)[0].tolist() == [4, 4, 4]
    assert rank_targets(model, s, exclude_history=True)[0].tolist() == [1, 2, 3]


def test_history_masks_the_items_a_truncated_input_leaves_out():
    # A window merged to max_len + 2 = 6 items (max_len 4): the test input is seq[1:5], so item 2
    # (seq[0]) is outside it. Row 3 of TABLE (last input item 3) scores items 5 > 4 > 3 > 2 > 1.
    data = SequenceData([np.array([2, 1, 4, 5, 3, 1])], None, np.array(["ann"]), np.array(["[PAD]", *"abcde"]), 4)
    test = csrec_data.test_samples(data)
    assert test.item_seq.tolist() == [[1, 4, 5, 3]] and test.targets.tolist() == [1]
    model = LastItemTable(TABLE)
    assert rank_targets(model, test, exclude_history=True)[0].tolist() == [2]  # item 2 still above
    history = history_before_target(data, "test")
    assert [h.tolist() for h in history] == [[2, 1, 4, 5, 3]]
    assert rank_targets(model, test, exclude_history=True, history=history)[0].tolist() == [1]
    assert [h.tolist() for h in history_before_target(data, "valid")] == [[2, 1, 4, 5]]
    assert evaluate(model, test, exclude_history=False, history=history).ranks.tolist() == [5]  # no masking
    with pytest.raises(CSRecError, match="history holds 0 sequences"):
        rank_targets(model, test, exclude_history=True, history=[])


def test_chunked_ranks_equal_unchunked_and_a_full_sort():
    gen = torch.Generator().manual_seed(0)
    n_items, n = 40, 57
    table = torch.randn(n_items + 1, n_items + 1, generator=gen)
    model = LastItemTable(table)
    rng = np.random.default_rng(0)
    inputs = [list(rng.integers(1, n_items + 1, size=rng.integers(1, 6))) for _ in range(n)]
    s = samples(inputs, list(rng.integers(1, n_items + 1, size=n)), width=5)
    for exclude in (False, True):
        full, ties = rank_targets(model, s, exclude, batch_size=1024)
        assert not ties.any()  # random scores
        for batch_size in (1, 7):
            assert all(np.array_equal(a, b) for a, b in zip((full, ties), rank_targets(model, s, exclude, batch_size)))
        # Reference: sort each row (random scores have no ties) and find the target's position.
        expected = []
        for seq, target in zip(inputs, s.targets):
            scores = table[seq[-1]].numpy().copy()
            scores[0] = -np.inf
            if exclude:
                scores[[i for i in seq if i != target]] = -np.inf
            expected.append(int(np.where(np.argsort(-scores) == target)[0][0]) + 1)
        assert full.tolist() == expected


def test_rank_targets_keeps_the_model_mode_and_refuses_nan_scores():
    model = LastItemTable(TABLE)
    model.train()
    rank_targets(model, samples([[1]], [2]), exclude_history=False)
    assert model.training
    with torch.no_grad():
        model.table[1, 3] = float("nan")
    with pytest.raises(CSRecError, match="NaN"):
        rank_targets(model, samples([[1]], [2]), exclude_history=False)


def test_evaluate_keeps_per_user_arrays_and_writes_the_per_user_frame():
    model = LastItemTable(TABLE)
    s = samples([[1], [2, 4, 1], [3]], [5, 5, 1], ratings=[4.0, 2.0, 5.0])
    s = Samples(s.item_seq, s.lengths, s.targets, np.array([2, 0, 1]), s.ratings)
    result = evaluate(model, s, exclude_history=True)  # each input's own items are masked
    assert result.ranks.tolist() == [3, 1, 4] and result.ties.tolist() == [0, 0, 0]
    assert result.metrics(ks=(1,)) == compute_metrics(np.array([3, 1, 4]), np.array([4.0, 2.0, 5.0]), ks=(1,),
                                                      ties=np.array([0, 0, 0]))
    frame = result.to_frame("test", np.array(["ann", "bob", "cid"], dtype=object))
    assert list(frame.columns) == ["split", "sequence", "user", "target", "rank", "ties", "rating", "input_length"]
    assert frame["user"].tolist() == ["cid", "ann", "bob"]
    assert frame["rank"].tolist() == [3, 1, 4] and frame["input_length"].tolist() == [1, 3, 1]
    assert frame["ties"].tolist() == [0, 0, 0]
    assert frame["split"].unique().tolist() == ["test"] and frame["rating"].tolist() == [4.0, 2.0, 5.0]
    no_ratings = evaluate(model, samples([[1]], [2]), exclude_history=False)
    assert no_ratings.ratings is None and "recall+@10" not in no_ratings.metrics()
    assert np.isnan(no_ratings.to_frame("valid", np.array(["ann"]))["rating"]).all()
    with pytest.raises(CSRecError, match="split"):
        result.to_frame("train", np.array(["ann", "bob", "cid"]))
    with pytest.raises(CSRecError, match="out of range"):
        result.to_frame("test", np.array(["ann"]))


def test_validator_returns_the_selection_metric():
    model = LastItemTable(TABLE)
    s = samples([[1], [1]], [5, 2])  # ranks 4 and 1; item 2 ties with item 4: first or second at random
    tied = (1 + 1 / math.log2(3)) / 2
    assert validator(s, exclude_history=False)(model) == pytest.approx((1 / math.log2(5) + tied) / 2)
    assert validator(s, exclude_history=False, metric="recall@3")(model) == pytest.approx(0.5)
    with pytest.raises(CSRecError, match="validation metric"):
        validator(s, exclude_history=False, metric="auc")


def test_real_model_ranks_on_the_validation_split():
    data = make_sequence_data(n_sequences=30, n_items=200, max_len=8, with_ratings=True)
    torch.manual_seed(0)
    model = build_model("sasrec", data.n_items, data.max_len)
    valid = validation_samples(data)
    kept = evaluate(model, valid, exclude_history=False, batch_size=8)
    masked = evaluate(model, valid, exclude_history=True, batch_size=8)
    assert ((kept.ranks >= 1) & (kept.ranks <= data.n_items)).all()
    assert (masked.ranks <= kept.ranks).all() and (masked.ranks < kept.ranks).any()
    frame = masked.to_frame("valid", data.users)
    assert len(frame) == len(data.sequences) and frame["sequence"].tolist() == list(range(30))
    assert frame["rating"].tolist() == [r[-2] for r in data.ratings]
    assert set(masked.metrics()) >= {"recall+@10", "ndcg+@10", "mrr@20"}
