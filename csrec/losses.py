"""The paper's losses as pure functions (CSRec, arXiv 2311.02446, Eq. 12-15).

Shapes: B rows of a batch, N = n_items + 1 columns. Column 0 is padding: model logits hold
`PADDING_SCORE` (a finite -1e4) there, so every probability in that column is exactly 0 and its
log-probability is finite. Every function below treats 0 * log 0 as 0 without producing NaN in the
value or in the gradient: a probability that may be 0 and carries gradient is always paired with
its log-probability from `log_softmax` (finite), never with `log(softmax(...))`.

All losses are means over the batch (the reference's `batchmean`). Every function here computes in
float32 whatever its inputs and an enclosing autocast (`csrec.precision.float32`): under
train.precision bf16 / fp16 the logits arrive in the low precision, and these sums over the
catalogue must not be taken in it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from csrec.errors import CSRecError
from csrec.precision import float32

KL_DIRECTIONS = ("reference", "paper")


def _check_unit_interval(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise CSRecError(f"{name} must lie in [0, 1] (the paper's grid is 0.25, 0.5, 0.75), got {value}")


@float32
def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """l_ce: softmax cross-entropy over the full catalogue, mean over the batch.

    logits [B, N] (column 0 at PADDING_SCORE), targets [B] int64 item ids in 1..N-1 -> scalar.
    """
    return F.cross_entropy(logits, targets)


@float32
def tempered_softmax(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(e / T) of Eq. 14 over the real items; the padding column gets probability 0.

    logits [..., N] -> probabilities [..., N]. The padding column is left out of the softmax
    instead of relying on PADDING_SCORE: at a large T (-1e4 / T -> 0) it would otherwise take a
    share of the mass, and T -> infinity would not be label smoothing over the real items.
    """
    if not temperature > 0:
        raise CSRecError(f"temperature T must be > 0, got {temperature}")
    real = torch.softmax(logits[..., 1:] / temperature, dim=-1)  # [..., N - 1]
    return F.pad(real, (1, 0))  # [..., N]


@float32
def tempered_log_softmax(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax(e / T) over the real items, the log of `tempered_softmax` computed without
    underflow: [..., N], finite on the real items, -inf on the padding column."""
    if not temperature > 0:
        raise CSRecError(f"temperature T must be > 0, got {temperature}")
    real = torch.log_softmax(logits[..., 1:] / temperature, dim=-1)  # [..., N - 1]
    return F.pad(real, (1, 0), value=float("-inf"))  # [..., N]


@float32
def soft_label(teacher_probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Eq. 14: r = 1/2 (softmax(e / T) + onehot(target)).

    teacher_probs [B, N]: softmax(e / T) from `tempered_softmax` or an ensemble's tempered
    probabilities (`csrec.teachers.ensemble_probs`); targets [B] -> soft labels r [B, N], rows sum to 1.
    """
    onehot = F.one_hot(targets, teacher_probs.size(-1)).to(teacher_probs.dtype)  # [B, N]
    return 0.5 * (teacher_probs + onehot)


@float32
def kl_divergence(p: torch.Tensor, log_q: torch.Tensor, log_p: torch.Tensor | None = None) -> torch.Tensor:
    """KL(p || q) = sum_j p_j (log p_j - log q_j), mean over the batch.

    p [B, N] probabilities (exact zeros allowed: 0 log 0 = 0); log_q [B, N] finite log-probabilities;
    log_p [B, N] optional finite log p. Pass log_p (from log_softmax) whenever p carries gradient:
    d(p log p)/dp = log p + 1 is -inf at p = 0, and softmax's backward would turn 0 * inf into NaN.
    Each row is clamped at 0: for valid inputs a negative row is float rounding (about 1e-7) only.
    """
    p_log_p = torch.xlogy(p, p) if log_p is None else p * log_p  # [B, N]
    rows = (p_log_p - p * log_q).sum(dim=-1)  # [B]
    return rows.clamp_min(0.0).mean()


@float32
def log_soft_label(teacher_log_probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log r of Eq. 14, exactly, from the teacher's log-probabilities (`tempered_log_softmax`).

    teacher_log_probs [B, N] = log softmax(e / T), targets [B] -> log r [B, N]:
    log r_j = log p_j - log 2 for j other than the target i, log r_i = log((p_i + 1) / 2). Finite
    however sharp the teacher, where log(r) from probabilities would meet p_j = 0 (underflow) and
    need a floor. The padding column (log p = -inf) is set to the dtype's lowest finite value: the
    student's probability there is exactly 0, so it adds 0 to KL(P_f || r) and no NaN to its gradient.
    """
    log_r = teacher_log_probs - math.log(2.0)  # [B, N]
    at_target = teacher_log_probs.gather(1, targets.view(-1, 1))  # [B, 1] log p_i
    log_r = log_r.scatter(1, targets.view(-1, 1), torch.log1p(at_target.exp()) - math.log(2.0))
    return log_r.clamp_min(torch.finfo(log_r.dtype).min)


@float32
def log_probs_of(probs: torch.Tensor) -> torch.Tensor:
    """log of a probability table that may hold zeros, floored at the dtype's smallest normal.

    probs [B, N] -> [B, N], finite. A soft label is 0 on the padding column (where the student's
    probability is exactly 0 too, so the floor has no effect on the loss) and can underflow to 0 on
    a real item when the teacher is sharp; mathematically it is positive there, so flooring at
    about 1e-38 (log = -87.3) bounds an otherwise infinite KL(P_f || r) from a rounding artefact.
    """
    return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()


@float32
def student_loss(student_logits: torch.Tensor, targets: torch.Tensor, soft_labels: torch.Tensor,
                 beta: float, kl_direction: str = "reference",
                 log_soft_labels: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 15: l_s = (1 - beta) l_ce + beta KL, mean over the batch.

    student_logits [B, N], targets [B], soft_labels r [B, N] from `soft_label` -> scalar.
    kl_direction "reference" (default) is KL(r || P_f), what the authors' code computes (standard
    distillation); "paper" is KL(P_f || r) as Eq. 15 is written, which needs log r: give it exactly
    as `log_soft_labels` (`log_soft_label`); without it log r is taken from r, floored at the
    dtype's smallest normal (`log_probs_of`), which is wrong where a sharp teacher underflowed.
    The soft labels are detached: the teachers never receive gradient from the student. beta = 0
    is exactly l_ce; beta = 1 the KL alone.
    """
    _check_unit_interval("beta", beta)
    if kl_direction not in KL_DIRECTIONS:
        raise CSRecError(f"kl_direction must be one of {KL_DIRECTIONS}, got '{kl_direction}'")
    if beta == 0.0:
        return cross_entropy(student_logits, targets)
    r = soft_labels.detach()  # [B, N]
    log_p = F.log_softmax(student_logits, dim=-1)  # [B, N]
    if kl_direction == "reference":
        kl = kl_divergence(r, log_p)
    else:
        log_r = log_probs_of(r) if log_soft_labels is None else log_soft_labels.detach()  # [B, N]
        kl = kl_divergence(log_p.exp(), log_r, log_p=log_p)
    if beta == 1.0:
        return kl
    return (1.0 - beta) * cross_entropy(student_logits, targets) + beta * kl


@float32
def soft_label_self_information(teacher_probs: torch.Tensor, targets: torch.Tensor,
                                entropy: torch.Tensor | None = None) -> torch.Tensor:
    """sum_j r_j log r_j for r = (p + onehot(i)) / 2 (Eq. 14), per row, from the teacher's entropy and
    its target term: teacher_probs p [B, N], targets [B] -> [B]. It does not depend on the student:
    a frozen teacher's value per training pair can be computed once (csrec.objectives). `entropy`
    [B], optional: each row's H(p) when known (one distribution for every row, an expanded p)."""
    p_target = teacher_probs.gather(1, targets.view(-1, 1)).squeeze(1)  # [B]
    if entropy is None:
        entropy = torch.special.entr(teacher_probs).sum(dim=-1)  # [B] H(p)
    return (-0.5 * entropy - 0.5 * math.log(2.0) + torch.special.entr(0.5 * p_target)
            - torch.special.entr(0.5 * (p_target + 1.0)))  # [B]


@float32
def student_loss_from_teacher(student_logits: torch.Tensor, targets: torch.Tensor, teacher_probs: torch.Tensor | None,
                              beta: float, kl_direction: str = "reference",
                              teacher_log_probs: torch.Tensor | None = None,
                              self_information: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 14 and 15 together: `student_loss(student_logits, targets, soft_label(teacher_probs, targets), ...)`.

    student_logits [B, N], targets [B], teacher_probs softmax(e / T) [B, N] -> scalar.
    teacher_log_probs [B, N] (`tempered_log_softmax`), optional, makes the "paper" direction exact
    (`log_soft_label`) however sharp the teacher; teacher_probs may then be None (its exp). In the
    reference direction the loss is a cross entropy against one target distribution plus a term
    that does not depend on the student:
        (1 - beta) CE + beta KL(r || P_f) = -sum_j q_j log P_f(j) + beta sum_j r_j log r_j,
        q = (1 - beta / 2) onehot(i) + (beta / 2) softmax(e / T),
    which takes a few passes over the [B, N] scores instead of about fifteen (same value and
    gradient; `tests/test_losses.py` checks both). `self_information` [B], optional, is the second
    term's sum_j r_j log r_j (`soft_label_self_information`) when the caller has it already: it then
    costs nothing here. The "paper" direction goes the general way.
    """
    if teacher_probs is None:
        if teacher_log_probs is None:
            raise ValueError("give teacher_probs or teacher_log_probs")
        teacher_probs = teacher_log_probs.exp()  # [B, N]
    if kl_direction != "reference" or beta == 0.0:
        log_r = None if teacher_log_probs is None else log_soft_label(teacher_log_probs.detach(), targets)
        return student_loss(student_logits, targets, soft_label(teacher_probs, targets), beta, kl_direction, log_r)
    _check_unit_interval("beta", beta)
    p = teacher_probs.detach()  # [B, N]
    q = p * (0.5 * beta)  # [B, N]
    q.scatter_add_(1, targets.view(-1, 1), q.new_full((len(targets), 1), 1.0 - 0.5 * beta))
    if self_information is None:
        self_information = soft_label_self_information(p, targets)  # [B]
    return F.cross_entropy(student_logits, q) + beta * self_information.mean()


@float32
def noise_expectation(main_probs: torch.Tensor, log_noise_rows: torch.Tensor) -> torch.Tensor:
    """The last term of Eq. 12: -sum_j log h(i, j) P_g1(j | s), mean over the batch.

    main_probs [B, N] = P_g1(. | s); log_noise_rows [B, N] = log h(i, :) for each row's observed
    item i (finite everywhere, 0 on the padding column; see csrec.teachers.NoiseMatrix.log_rows).
    """
    return -(main_probs * log_noise_rows).sum(dim=-1).mean()


@float32
def training_level_loss(main_logits: torch.Tensor, side_logits: torch.Tensor, targets: torch.Tensor,
                        log_noise_rows: torch.Tensor | None, alpha: float,
                        noise_term: bool = True) -> torch.Tensor:
    """Eq. 12-13, CSRec-T's main teacher g1: l_t = l_ce + l_r with
    l_r = alpha KL(P_g2 || P_g1) + (1 - alpha) KL(P_g1 || P_g2) - sum_j log h(i, j) P_g1(j | s).

    main_logits [B, N] of g1 (trained), side_logits [B, N] of the frozen side teacher g2 (detached
    here), targets [B] the observed items i, log_noise_rows [B, N] = log h(i, :) -> scalar.
    noise_term=False drops exactly the last term (the paper's Fig. 7 ablation); log_noise_rows may
    then be None. Deviation from the authors' code, which weights the two KL terms the other way
    round and divides g2's logits by 3: this follows Eq. 12 as written.
    """
    _check_unit_interval("alpha", alpha)
    log_p_main = F.log_softmax(main_logits, dim=-1)  # [B, N]
    log_p_side = F.log_softmax(side_logits.detach(), dim=-1)  # [B, N]
    p_main, p_side = log_p_main.exp(), log_p_side.exp()  # [B, N] each
    kl_side_main = kl_divergence(p_side, log_p_main, log_p=log_p_side)  # KL(P_g2 || P_g1)
    kl_main_side = kl_divergence(p_main, log_p_side, log_p=log_p_main)  # KL(P_g1 || P_g2)
    loss = cross_entropy(main_logits, targets) + alpha * kl_side_main + (1.0 - alpha) * kl_main_side
    if noise_term:
        if log_noise_rows is None:
            raise ValueError("noise_term=True needs log_noise_rows (NoiseMatrix.log_rows(targets))")
        loss = loss + noise_expectation(p_main, log_noise_rows)
    return loss
