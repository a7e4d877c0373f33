"""Teacher building blocks: popularity logits, ensembles and the noise matrix, by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from csrec import losses
from csrec.errors import CSRecError
from csrec.models.base import PADDING_SCORE
from csrec.teachers import NoiseMatrix, ensemble_probs, popularity_logits
from csrec.teachers.noise_matrix import UNIFORM_MIX

LN3 = math.log(3.0)


# --- popularity (SoftRec) -------------------------------------------------------------------

def test_popularity_logits_by_hand():
    # c = (2, 6, 10, 4): c_min + c_max = 12, e_i = 5 (2 c_i / 12 - 1); entry 0 (padding) ignored.
    logits = popularity_logits(np.array([100, 2, 6, 10, 4]))
    assert logits.dtype == torch.float32 and logits.shape == (5,)
    assert logits[0].item() == PADDING_SCORE
    torch.testing.assert_close(logits[1:], torch.tensor([-10 / 3, 0.0, 10 / 3, -5 / 3]))


def test_popularity_logits_span_minus_five_to_five_when_an_item_is_unseen():
    logits = popularity_logits(torch.tensor([0, 0, 3, 7]))
    torch.testing.assert_close(logits[1:], torch.tensor([-5.0, 5 * (6 / 7 - 1), 5.0]))


def test_popularity_logits_reject_bad_counts():
    for counts in ([0, 1, -2], [0, 0, 0], [[0, 1], [2, 3]], [5]):
        with pytest.raises(CSRecError):
            popularity_logits(np.array(counts))


# --- ensembles (CSRec-M, CSRec-D) -----------------------------------------------------------

def two_teachers() -> list[torch.Tensor]:
    first = torch.tensor([[PADDING_SCORE, 0.0, LN3]], dtype=torch.float64)  # softmax (1/4, 3/4)
    second = torch.tensor([[PADDING_SCORE, 0.0, 0.0]], dtype=torch.float64)  # softmax (1/2, 1/2)
    return [first, second]


def test_mean_logits_by_hand():
    # e = (0, ln 3 / 2): softmax(e) = (1, sqrt 3) / (1 + sqrt 3); at T = 2, (1, 3^(1/4)) / (1 + 3^(1/4)).
    s3, q3 = math.sqrt(3.0), 3.0 ** 0.25
    probs = ensemble_probs(two_teachers(), 1.0, "mean_logits")
    torch.testing.assert_close(probs, torch.tensor([[0.0, 1 / (1 + s3), s3 / (1 + s3)]], dtype=torch.float64))
    probs_t2 = ensemble_probs(torch.stack(two_teachers()), 2.0, "mean_logits")
    torch.testing.assert_close(probs_t2, torch.tensor([[0.0, 1 / (1 + q3), q3 / (1 + q3)]], dtype=torch.float64))


def test_mean_probs_by_hand_uniform_and_weighted():
    uniform = ensemble_probs(two_teachers(), 1.0, "mean_probs")
    torch.testing.assert_close(uniform, torch.tensor([[0.0, 0.375, 0.625]], dtype=torch.float64))
    weighted = ensemble_probs(two_teachers(), 1.0, "mean_probs", weights=[0.25, 0.75])
    torch.testing.assert_close(weighted, torch.tensor([[0.0, 0.4375, 0.5625]], dtype=torch.float64))


@pytest.mark.parametrize("method", ["mean_logits", "mean_probs"])
def test_one_teacher_ensemble_is_that_teacher(method):
    torch.manual_seed(0)
    z = torch.randn(3, 6).index_fill(1, torch.tensor([0]), PADDING_SCORE)
    probs = ensemble_probs([z], 3.0, method)
    by_hand = torch.exp(z[:, 1:] / 3.0) / torch.exp(z[:, 1:] / 3.0).sum(-1, keepdim=True)
    torch.testing.assert_close(probs[:, 1:], by_hand)
    assert probs[:, 0].abs().max().item() == 0.0
    torch.testing.assert_close(probs.sum(-1), torch.ones(3))


def test_ensemble_rejects_bad_settings():
    teachers = two_teachers()
    for bad in (dict(temperature=0.0), dict(temperature=-1.0), dict(weights=[0.5, 0.6]),
                dict(weights=[1.5, -0.5]), dict(weights=[1.0]), dict(method="median")):
        kwargs = dict(temperature=1.0, method="mean_probs") | bad
        with pytest.raises(CSRecError):
            ensemble_probs(teachers, **kwargs)
    with pytest.raises(CSRecError, match="m >= 1"):
        ensemble_probs([], 1.0)


# --- noise matrix (CSRec-T) -----------------------------------------------------------------

def test_stochastic_noise_matrix_columns_are_distributions_of_rank_at_most_d():
    torch.manual_seed(0)
    noise = NoiseMatrix(6, rank=3).double()
    with torch.no_grad():  # away from the near-uniform start, so the checks have something to see
        noise.M.normal_(std=2.0)
        noise.N.normal_(std=2.0)
    h = noise.dense()  # [6, 6]
    torch.testing.assert_close(h.sum(dim=0), torch.ones(6, dtype=torch.float64))
    assert (h > 0).all() and torch.linalg.matrix_rank(h).item() == 3
    rows = noise.log_rows(torch.tensor([2, 5]))  # [2, 7]
    assert rows[:, 0].abs().max().item() == 0.0
    torch.testing.assert_close(rows[:, 1:].exp(), h[[1, 4]])


def test_stochastic_noise_matrix_by_hand():
    noise = NoiseMatrix(3, rank=2).double()
    with torch.no_grad():  # softmax over items: M = [[1/4, 1/2], [1/4, 1/4], [1/2, 1/4]]
        noise.M.copy_(torch.tensor([[0.0, math.log(2)], [0.0, 0.0], [math.log(2), 0.0]]))
        # softmax over factors: N[:, j] = (1/2, 1/2), (3/4, 1/4), (1/4, 3/4)
        noise.N.copy_(torch.tensor([[0.0, LN3, 0.0], [0.0, 0.0, LN3]]))
    m1, m2 = [(1 - UNIFORM_MIX) * m + UNIFORM_MIX / 3 for m in (0.25, 0.5)]  # row 1 of M, floored
    h_row_1 = [m1 * 0.5 + m2 * 0.5, m1 * 0.75 + m2 * 0.25, m1 * 0.25 + m2 * 0.75]
    expected = torch.tensor([[0.0] + [math.log(v) for v in h_row_1]], dtype=torch.float64)
    torch.testing.assert_close(noise.log_rows(torch.tensor([1])), expected)


def test_stochastic_noise_matrix_stays_finite_at_extreme_parameters():
    torch.manual_seed(1)
    noise = NoiseMatrix(50, rank=4)
    with torch.no_grad():
        noise.M.normal_(std=200.0)
        noise.N.normal_(std=200.0)
    rows = noise.log_rows(torch.arange(1, 51))
    rows.sum().backward()
    assert torch.isfinite(rows).all() and torch.isfinite(noise.M.grad).all() and torch.isfinite(noise.N.grad).all()


def test_reference_noise_matrix_by_hand_and_its_running_column_max():
    noise = NoiseMatrix(3, rank=1, parametrization="reference")
    with torch.no_grad():
        noise.M.copy_(torch.tensor([[1.0], [-2.0], [0.5]]))
        noise.N.copy_(torch.tensor([[2.0, -1.0, 0.0]]))
    log_sig = lambda x: -math.log1p(math.exp(-x))  # noqa: E731
    noise.eval()  # eval: the bound uses this batch's rows but is not stored
    rows = noise.log_rows(torch.tensor([1, 2]))
    assert torch.isinf(noise.column_max).all()
    x = [[2.0, -1.0, 0.0], [-4.0, 2.0, 0.0]]  # (M N)[i, j] for observed items 1 and 2
    col_max = [max(log_sig(x[0][j]), log_sig(x[1][j])) for j in range(3)]
    expected = [[0.0] + [log_sig(x[r][j]) - col_max[j] - math.log(3) for j in range(3)] for r in range(2)]
    torch.testing.assert_close(rows, torch.tensor(expected))
    noise.train()
    noise.log_rows(torch.tensor([1]))
    torch.testing.assert_close(noise.column_max, torch.tensor([log_sig(v) for v in x[0]]))
    noise.log_rows(torch.tensor([2]))  # the running maximum only grows
    torch.testing.assert_close(noise.column_max, torch.tensor(col_max))
    assert (noise.log_rows(torch.tensor([3])) <= -math.log(3) + 1e-6)[:, 1:].all()


@pytest.mark.parametrize("parametrization", ["stochastic", "reference"])
def test_noise_term_gradient_reaches_m_and_n_only_with_the_term(parametrization):
    torch.manual_seed(2)
    noise = NoiseMatrix(5, rank=3, parametrization=parametrization)
    main = torch.randn(4, 6).index_fill(1, torch.tensor([0]), PADDING_SCORE).requires_grad_()
    side = torch.randn(4, 6).index_fill(1, torch.tensor([0]), PADDING_SCORE)
    targets = torch.tensor([1, 3, 5, 3])
    losses.training_level_loss(main, side, targets, noise.log_rows(targets), 0.5).backward()
    for param in (noise.M, noise.N):
        assert torch.isfinite(param.grad).all() and param.grad.abs().sum().item() > 0
    assert torch.isfinite(main.grad).all()
    noise.zero_grad(set_to_none=True)
    losses.training_level_loss(main, side, targets, None, 0.5, noise_term=False).backward()
    assert noise.M.grad is None and noise.N.grad is None


def test_noise_matrix_rejects_bad_settings():
    with pytest.raises(CSRecError, match="parametrization"):
        NoiseMatrix(5, parametrization="sigmoid")
    with pytest.raises(CSRecError, match="rank"):
        NoiseMatrix(5, rank=0)
