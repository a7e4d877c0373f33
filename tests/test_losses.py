"""csrec.losses against numbers worked out by hand, and their limiting cases (STYLE.md, 3)."""

from __future__ import annotations

import math

import pytest
import torch

from csrec import losses
from csrec.errors import CSRecError
from csrec.models.base import PADDING_SCORE

LN2 = math.log(2.0)


def logits_of(*probs: float) -> torch.Tensor:
    """One row of logits [1, n + 1] whose softmax over the real items is `probs`."""
    return torch.tensor([[PADDING_SCORE] + [math.log(p) for p in probs]], dtype=torch.float64)


def test_cross_entropy_matches_hand_values():
    logits = torch.cat([logits_of(0.5, 0.25, 0.25), logits_of(0.5, 0.25, 0.25),
                        torch.tensor([[PADDING_SCORE, 1.0, 2.0, 3.0]], dtype=torch.float64)])
    targets = torch.tensor([1, 3, 3])
    by_hand = (LN2 + 2 * LN2 + (math.log(math.e + math.e ** 2 + math.e ** 3) - 3.0)) / 3
    assert losses.cross_entropy(logits, targets).item() == pytest.approx(by_hand, abs=1e-12)


def test_tempered_softmax_leaves_padding_at_zero_even_at_huge_temperature():
    logits = torch.tensor([[PADDING_SCORE, 1.0, 5.0, -2.0, 0.0]])
    probs = losses.tempered_softmax(logits, 1e6)
    assert probs[0, 0].item() == 0.0
    torch.testing.assert_close(probs[0, 1:], torch.full((4,), 0.25), atol=1e-5, rtol=0)
    with pytest.raises(CSRecError, match="temperature"):
        losses.tempered_softmax(logits, 0.0)


def test_soft_label_equals_hand_value_and_sums_to_one():
    teacher = torch.tensor([[0.0, 0.5, 0.3, 0.2]])
    r = losses.soft_label(teacher, torch.tensor([2]))
    torch.testing.assert_close(r, torch.tensor([[0.0, 0.25, 0.65, 0.1]]))
    assert r.sum().item() == pytest.approx(1.0)


def test_huge_temperature_makes_the_soft_label_label_smoothing():
    # T -> infinity: softmax(e / T) is uniform over the 4 real items, so r = 0.5 onehot + 0.5 / 4.
    e = torch.tensor([[PADDING_SCORE, 1.0, 5.0, -2.0, 0.0]])
    r = losses.soft_label(losses.tempered_softmax(e, 1e6), torch.tensor([2]))
    torch.testing.assert_close(r, torch.tensor([[0.0, 0.125, 0.625, 0.125, 0.125]]), atol=1e-5, rtol=0)


def test_kl_divergence_is_zero_for_identical_and_never_negative():
    torch.manual_seed(0)
    z = torch.randn(5, 7).index_fill(1, torch.tensor([0]), PADDING_SCORE)
    log_p = torch.log_softmax(z, dim=-1)
    # from probabilities, log(exp(x)) need not give x back to the last bit: zero up to float32 rounding
    assert losses.kl_divergence(log_p.exp(), log_p).item() == pytest.approx(0.0, abs=1e-7)
    assert losses.kl_divergence(log_p.exp(), log_p, log_p=log_p).item() == 0.0
    for seed in range(30):
        torch.manual_seed(seed)
        a = torch.randn(1, 9).index_fill(1, torch.tensor([0]), PADDING_SCORE)
        b = a + 1e-4 * torch.randn(1, 9) if seed % 2 else torch.randn(1, 9) * 3
        kl = losses.kl_divergence(torch.softmax(a, -1), torch.log_softmax(b, -1))
        assert torch.isfinite(kl) and kl.item() >= 0.0


def test_both_kl_directions_on_a_hand_example():
    student = logits_of(0.5, 0.25, 0.25)  # P_f = (0.5, 0.25, 0.25)
    r = torch.tensor([[0.0, 0.6, 0.3, 0.1]], dtype=torch.float64)  # r of teacher (0.2, 0.6, 0.2), target 1
    target = torch.tensor([1])
    kl_r_f = 0.6 * math.log(0.6 / 0.5) + 0.3 * math.log(0.3 / 0.25) + 0.1 * math.log(0.1 / 0.25)
    kl_f_r = 0.5 * math.log(0.5 / 0.6) + 0.25 * math.log(0.25 / 0.3) + 0.25 * math.log(0.25 / 0.1)
    assert kl_r_f != pytest.approx(kl_f_r, abs=1e-3)  # the example tells the directions apart
    reference = losses.student_loss(student, target, r, beta=1.0, kl_direction="reference")
    paper = losses.student_loss(student, target, r, beta=1.0, kl_direction="paper")
    assert reference.item() == pytest.approx(kl_r_f, abs=1e-12)
    assert paper.item() == pytest.approx(kl_f_r, abs=1e-12)
    mixed = losses.student_loss(student, target, r, beta=0.25)
    assert mixed.item() == pytest.approx(0.75 * LN2 + 0.25 * kl_r_f, abs=1e-12)


def test_beta_zero_is_exactly_cross_entropy_and_beta_one_the_kl():
    torch.manual_seed(1)
    student = torch.randn(4, 6).index_fill(1, torch.tensor([0]), PADDING_SCORE)
    targets = torch.tensor([1, 5, 2, 2])
    r = losses.soft_label(losses.tempered_softmax(torch.randn(4, 6), 3.0), targets)
    assert torch.equal(losses.student_loss(student, targets, r, 0.0), losses.cross_entropy(student, targets))
    kl = losses.kl_divergence(r, torch.log_softmax(student, -1))
    assert torch.equal(losses.student_loss(student, targets, r, 1.0), kl)


@pytest.mark.parametrize("direction", ["reference", "paper"])
def test_gradient_reaches_the_student_only(direction):
    torch.manual_seed(2)
    student = torch.randn(3, 6, requires_grad=True)
    teacher = torch.randn(3, 6, requires_grad=True)
    targets = torch.tensor([1, 2, 5])
    padded = student.index_fill(1, torch.tensor([0]), PADDING_SCORE)
    r = losses.soft_label(losses.tempered_softmax(teacher, 3.0), targets)
    losses.student_loss(padded, targets, r, 0.5, direction).backward()
    assert teacher.grad is None
    assert torch.isfinite(student.grad).all() and student.grad[:, 1:].abs().sum() > 0


def test_paper_direction_stays_finite_when_the_teacher_underflows():
    # A sharp teacher: softmax(e / 1) is exactly 0 on item 3 in float32, so log r there is -inf
    # without the floor; the loss and its gradient must stay finite.
    student = torch.tensor([[PADDING_SCORE, 0.0, 1.0, 2.0]], requires_grad=True)
    teacher = torch.tensor([[PADDING_SCORE, 0.0, 10.0, -500.0]])
    r = losses.soft_label(losses.tempered_softmax(teacher, 1.0), torch.tensor([2]))
    assert r[0, 3].item() == 0.0
    loss = losses.student_loss(student, torch.tensor([2]), r, 0.5, "paper")
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()


def test_log_soft_label_is_the_log_of_the_soft_label():
    torch.manual_seed(4)
    e = torch.randn(3, 7, dtype=torch.float64).index_fill(1, torch.tensor([0]), PADDING_SCORE)
    targets = torch.tensor([1, 6, 3])
    log_p = losses.tempered_log_softmax(e, 3.0)
    assert torch.isneginf(log_p[:, 0]).all()
    torch.testing.assert_close(log_p[:, 1:].exp(), losses.tempered_softmax(e, 3.0)[:, 1:], rtol=1e-12, atol=0)
    log_r = losses.log_soft_label(log_p, targets)
    r = losses.soft_label(losses.tempered_softmax(e, 3.0), targets)
    torch.testing.assert_close(log_r[:, 1:], r[:, 1:].log(), rtol=1e-12, atol=1e-12)
    assert (log_r[:, 0] == torch.finfo(torch.float64).min).all()  # padding: finite, and P_f is 0 there


def test_exact_paper_kl_equals_the_formula_on_a_very_sharp_teacher():
    # The teacher puts exp(-250) and exp(-350) on items 2 and 3: exactly 0 in float32, so log r from
    # probabilities is floored at log(tiny / 2), about -88, where the formula has log p_j - log 2.
    teacher = torch.tensor([[PADDING_SCORE, 0.0, -250.0, -350.0, 50.0, 10.0]])
    student = torch.tensor([[PADDING_SCORE, 0.3, 0.1, -0.2, 1.0, 0.5]], requires_grad=True)
    target = torch.tensor([4])
    log_p = losses.tempered_log_softmax(teacher, 1.0)
    probs = losses.tempered_softmax(teacher, 1.0)
    assert probs[0, 2].item() == 0.0 and probs[0, 3].item() == 0.0
    # By hand, in float64: KL(P_f || r) = sum_j q_j (log q_j - log r_j), q = softmax(student) over the items.
    t64 = torch.log_softmax(teacher[0, 1:].double(), 0)  # log p_j
    q = torch.softmax(student[0, 1:].detach().double(), 0)
    log_r = t64 - math.log(2.0)
    log_r[3] = math.log((t64[3].exp().item() + 1.0) / 2.0)  # the target, item 4
    by_hand = float((q * (q.log() - log_r)).sum())
    exact = losses.student_loss_from_teacher(student, target, probs, 1.0, "paper", teacher_log_probs=log_p)
    assert exact.item() == pytest.approx(by_hand, rel=1e-5)
    assert by_hand > 40  # items 2 and 3 weigh about q_j * 250 each
    floored = losses.student_loss_from_teacher(student, target, probs, 1.0, "paper")
    assert floored.item() < by_hand - 20  # the floor understates it badly
    exact.backward()
    assert torch.isfinite(student.grad).all()
    mixed = losses.student_loss_from_teacher(student, target, None, 0.5, "paper", teacher_log_probs=log_p)
    assert mixed.item() == pytest.approx(0.5 * losses.cross_entropy(student, target).item() + 0.5 * exact.item(), rel=1e-5)
    # the reference direction does not need log r: the same value with or without the log-probabilities
    assert losses.student_loss_from_teacher(student, target, probs, 0.5, teacher_log_probs=log_p).item() == \
        pytest.approx(losses.student_loss_from_teacher(student, target, probs, 0.5).item(), rel=1e-6)


def test_invalid_beta_alpha_and_direction_raise():
    logits, targets = logits_of(0.5, 0.5), torch.tensor([1])
    r = losses.soft_label(losses.tempered_softmax(logits, 1.0), targets)
    for beta in (-0.1, 1.5):
        with pytest.raises(CSRecError, match="beta"):
            losses.student_loss(logits, targets, r, beta)
    with pytest.raises(CSRecError, match="kl_direction"):
        losses.student_loss(logits, targets, r, 0.5, kl_direction="forward")
    for alpha in (-0.5, 2.0):
        with pytest.raises(CSRecError, match="alpha"):
            losses.training_level_loss(logits, logits, targets, None, alpha, noise_term=False)
    with pytest.raises(ValueError, match="log_noise_rows"):
        losses.training_level_loss(logits, logits, targets, None, 0.5, noise_term=True)


def hand_training_level_example():
    main = logits_of(0.5, 0.25, 0.25)  # P_g1
    side = logits_of(0.8, 0.1, 0.1)  # P_g2
    log_rows = torch.tensor([[0.0, math.log(0.5), math.log(0.3), math.log(0.2)]], dtype=torch.float64)
    kl_side_main = 0.8 * math.log(0.8 / 0.5) + 2 * 0.1 * math.log(0.1 / 0.25)  # KL(P_g2 || P_g1)
    kl_main_side = 0.5 * math.log(0.5 / 0.8) + 2 * 0.25 * math.log(0.25 / 0.1)  # KL(P_g1 || P_g2)
    noise = -(0.5 * math.log(0.5) + 0.25 * math.log(0.3) + 0.25 * math.log(0.2))
    return main, side, log_rows, kl_side_main, kl_main_side, noise


def test_training_level_loss_terms_against_hand_values():
    main, side, log_rows, kl_side_main, kl_main_side, noise = hand_training_level_example()
    target = torch.tensor([1])
    full = losses.training_level_loss(main, side, target, log_rows, alpha=0.25)
    assert full.item() == pytest.approx(LN2 + 0.25 * kl_side_main + 0.75 * kl_main_side + noise, abs=1e-12)
    # alpha = 1 keeps KL(P_g2 || P_g1) alone, alpha = 0 KL(P_g1 || P_g2): the weights are not swapped.
    only_side_main = losses.training_level_loss(main, side, target, log_rows, alpha=1.0, noise_term=False)
    only_main_side = losses.training_level_loss(main, side, target, log_rows, alpha=0.0, noise_term=False)
    assert only_side_main.item() == pytest.approx(LN2 + kl_side_main, abs=1e-12)
    assert only_main_side.item() == pytest.approx(LN2 + kl_main_side, abs=1e-12)


def test_noise_term_false_removes_exactly_the_noise_term():
    torch.manual_seed(3)
    main = torch.randn(4, 8).index_fill(1, torch.tensor([0]), PADDING_SCORE)
    side = torch.randn(4, 8).index_fill(1, torch.tensor([0]), PADDING_SCORE)
    log_rows = torch.log_softmax(torch.randn(4, 8), -1).index_fill(1, torch.tensor([0]), 0.0)
    targets = torch.tensor([1, 2, 7, 3])
    with_term = losses.training_level_loss(main, side, targets, log_rows, 0.5, noise_term=True)
    without = losses.training_level_loss(main, side, targets, log_rows, 0.5, noise_term=False)
    term = losses.noise_expectation(torch.softmax(main, -1), log_rows)
    assert term.item() > 0
    torch.testing.assert_close(with_term - without, term)


def test_side_teacher_is_frozen_in_the_training_level_loss():
    main, side, log_rows, *_ = hand_training_level_example()
    main, side = main.clone().requires_grad_(), side.clone().requires_grad_()
    losses.training_level_loss(main, side, torch.tensor([2]), log_rows, 0.5).backward()
    assert side.grad is None
    assert torch.isfinite(main.grad).all() and main.grad[0, 0].item() == 0.0
