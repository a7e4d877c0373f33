"""Objectives: cached teachers equal on-the-fly ones, a student step changes only the student,
and the fused student loss equals Eq. 14-15 computed term by term."""

import pytest
import torch

from csrec import losses
from csrec.data.splits import training_samples
from csrec.models import build_model
from csrec.objectives import FrozenTeachers, SoftLabelStudent, TrainingLevelTeacher, popularity_teacher
from csrec.teachers import ensemble_probs
from csrec.train import Batch


def _models(data, seeds):
    out = []
    for seed in seeds:
        torch.manual_seed(seed)
        out.append(build_model("gru4rec", data.n_items, data.max_len, embedding_size=16, hidden_size=16).eval())
    return out


def _batch(samples, index):
    index = torch.as_tensor(index)
    take = lambda x: torch.as_tensor(x)[index]  # noqa: E731
    return Batch(index, take(samples.item_seq), take(samples.lengths), take(samples.targets))


def test_cached_teacher_logits_equal_a_forward_pass(tiny_data):
    teachers = _models(tiny_data, [1, 2])
    train = training_samples(tiny_data)
    cache = FrozenTeachers(teachers, train)
    batch = _batch(train, [0, 3, 5, 7])
    with torch.no_grad():
        direct = torch.stack([t(batch.item_seq, batch.lengths) for t in teachers])  # [m, B, N]
    assert torch.allclose(cache.logits(batch.index), direct, atol=1e-5)
    assert torch.allclose(cache.mean_logits(batch.index), direct.mean(0), atol=1e-5)
    probs = cache.mean_logits_probs(batch.index, 3.0)
    assert torch.allclose(probs, ensemble_probs(direct, 3.0, "mean_logits"), atol=1e-6)
    assert torch.all(probs[:, 0] == 0) and torch.allclose(probs.sum(-1), torch.ones(4))


@pytest.mark.parametrize("kl_direction", ["reference", "paper"])
@pytest.mark.parametrize("beta", [0.0, 0.25, 0.75, 1.0])
def test_fused_student_loss_equals_eq_14_15(beta, kl_direction):
    torch.manual_seed(0)
    logits = torch.randn(6, 12, dtype=torch.float64, requires_grad=True)
    probs = losses.tempered_softmax(torch.randn(6, 12, dtype=torch.float64) * 4, 3.0)
    targets = torch.randint(1, 12, (6,))
    fused = losses.student_loss_from_teacher(logits, targets, probs, beta, kl_direction)
    (g_fused,) = torch.autograd.grad(fused, logits)
    plain = losses.student_loss(logits, targets, losses.soft_label(probs, targets), beta, kl_direction)
    (g_plain,) = torch.autograd.grad(plain, logits)
    assert fused.item() == pytest.approx(plain.item(), abs=1e-12)
    assert torch.allclose(g_fused, g_plain, atol=1e-12)


def test_student_step_changes_only_the_student(tiny_data):
    teachers = _models(tiny_data, [1, 2])
    before = [{k: v.clone() for k, v in t.state_dict().items()} for t in teachers]
    train = training_samples(tiny_data)
    objective = SoftLabelStudent(0.5, 3.0, teacher=FrozenTeachers(teachers, train))
    (student,) = _models(tiny_data, [0])
    student.train()
    start = {k: v.clone() for k, v in student.state_dict().items()}
    optimizer = torch.optim.Adam(list(student.parameters()) + list(objective.parameters()), lr=1e-2)
    batch = _batch(train, range(16))
    loss = objective(student(batch.item_seq, batch.lengths), batch)
    loss.backward()
    optimizer.step()
    assert list(objective.parameters()) == []  # the teachers are buffers, never parameters
    for teacher, saved in zip(teachers, before):
        assert all(torch.equal(v, saved[k]) for k, v in teacher.state_dict().items())
        assert all(p.grad is None for p in teacher.parameters())
    assert any(not torch.equal(v, start[k]) for k, v in student.state_dict().items())


def test_popularity_teacher_is_the_same_for_every_input(tiny_data):
    counts = torch.arange(tiny_data.n_items + 1, dtype=torch.float64)
    objective = SoftLabelStudent(0.5, 2.0, popularity=popularity_teacher(counts))
    probs = objective.teacher_probs(torch.tensor([0, 4, 9]))
    assert torch.allclose(probs[0], probs[2]) and probs[0, 0] == 0
    assert torch.allclose(probs[0], losses.tempered_softmax(popularity_teacher(counts), 2.0).float())
    assert probs[0, -1] > probs[0, 1]  # the most frequent item gets the largest soft label


def test_ensemble_weights_are_used_or_refused(tiny_data):
    teachers = _models(tiny_data, [1, 2])
    cache = FrozenTeachers(teachers, training_samples(tiny_data))
    weighted = SoftLabelStudent(0.5, 3.0, teacher=cache, ensemble="mean_probs", weights=[0.9, 0.1])
    index = torch.tensor([0, 2])
    expected = ensemble_probs(cache.logits(index), 3.0, "mean_probs", [0.9, 0.1])
    assert torch.allclose(weighted.teacher_probs(index), expected)
    with pytest.raises(ValueError, match="mean_probs"):  # the paper's mean of logits has no weights
        SoftLabelStudent(0.5, 3.0, teacher=cache, weights=[0.9, 0.1])
    with pytest.raises(ValueError, match="mean_probs"):
        SoftLabelStudent(0.5, 3.0, popularity=torch.zeros(tiny_data.n_items + 1), weights=[1.0])


def test_training_level_objective_trains_the_noise_matrix(tiny_data):
    (side,) = _models(tiny_data, [3])
    train = training_samples(tiny_data)
    objective = TrainingLevelTeacher(FrozenTeachers([side], train), tiny_data.n_items, alpha=0.5, rank=4)
    (main,) = _models(tiny_data, [0])
    batch = _batch(train, range(8))
    objective(main(batch.item_seq, batch.lengths), batch).backward()
    grads = {name: p.grad for name, p in objective.named_parameters()}
    assert set(grads) == {"noise.M", "noise.N"} and all(g is not None and g.abs().sum() > 0 for g in grads.values())
    assert all(p.grad is None for p in side.parameters())


@pytest.mark.parametrize("table", [True, False])
@pytest.mark.parametrize("kl_direction", ["reference", "paper"])
@pytest.mark.parametrize("module", ["popularity", "mean_logits", "mean_probs"])
def test_student_objective_equals_eq_14_15_with_its_constants_computed_once(tiny_data, module, kl_direction, table,
                                                                           monkeypatch):
    """The soft labels' self-information, precomputed per training pair (per item for SoftRec), the
    teacher probabilities kept in a table (or, when they do not fit, computed at each step), and the
    paper direction's exact log r leave the loss equal to Eq. 14-15 computed term by term."""
    import csrec.objectives
    monkeypatch.setattr(csrec.objectives, "PROBABILITY_TABLE_BYTES", (1 << 30) if table else 0)
    train = training_samples(tiny_data)
    counts = torch.arange(tiny_data.n_items + 1, dtype=torch.float64)
    if module == "popularity":
        objective = SoftLabelStudent(0.5, 2.0, kl_direction, popularity=popularity_teacher(counts))
    else:
        weights = [0.3, 0.7] if module == "mean_probs" else None
        objective = SoftLabelStudent(0.75, 3.0, kl_direction, teacher=FrozenTeachers(_models(tiny_data, [1, 2]), train),
                                     ensemble=module, weights=weights)
    (student,) = _models(tiny_data, [0])
    for index in ([0, 3, 5, 7], [1, 2, 4, 8, 9]):  # the second batch reads the constants computed at the first
        batch = _batch(train, index)
        logits = student(batch.item_seq, batch.lengths)
        probs = objective.teacher_probs(batch.index)
        assert torch.allclose(objective.teacher_log_probs(batch.index).exp(), probs, atol=1e-6)
        expected = losses.student_loss(logits, batch.targets, losses.soft_label(probs, batch.targets),
                                       objective.beta, kl_direction)
        assert objective(logits, batch).item() == pytest.approx(expected.item(), rel=1e-5)
    kept = objective.probability_table is not None
    assert kept == (table and module != "popularity" and kl_direction == "reference")
