"""fit(): learning, early stopping, best weights, exact resume, non-finite losses, objective parameters."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from csrec.data import training_samples, validation_samples
from csrec.data.samples import Samples, SequenceData
from csrec.errors import CSRecError, NonFiniteLossError
from csrec.evaluate import validator
from csrec.models import build_model
from csrec.train import TrainConfig, epoch_generator, fit, seed_everything

CPU = dict(device="cpu", progress=False, layout="prefix")  # these fits train on Samples


@pytest.fixture
def splits(tiny_data):
    return tiny_data, training_samples(tiny_data), validation_samples(tiny_data)


def new_model(data: SequenceData, name: str = "gru4rec", seed: int = 0) -> nn.Module:
    seed_everything(seed)
    return build_model(name, data.n_items, data.max_len)


def weights(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class Sequence:
    """A validate() that returns fixed scores and records the weights it was shown."""

    def __init__(self, scores):
        self.scores, self.seen = list(scores), []

    def __call__(self, model):
        self.seen.append(weights(model))
        return self.scores[len(self.seen) - 1]


@pytest.mark.parametrize("name", ["gru4rec", "sasrec"])
def test_training_lowers_the_loss_and_improves_validation(splits, name):
    data, train, valid = splits
    model = new_model(data, name)
    validate = validator(valid, exclude_history=False)
    before = validate(model)
    result = fit(model, train, validate, TrainConfig(batch_size=32, learning_rate=1e-2, max_epochs=8, **CPU))
    losses = [r.train_loss for r in result.history]
    assert len(result.history) == 8 and losses[-1] < 0.8 * losses[0]
    assert result.best_score > before and result.best_score == max(r.valid_score for r in result.history)
    assert validate(model) == pytest.approx(result.best_score)  # the best epoch's weights are loaded


def test_early_stopping_and_best_weights(splits):
    data, train, _ = splits
    model = new_model(data)
    # Best at epoch 2 (a tie is no improvement); epochs 3, 4, 5 do not improve -> stop after 5.
    validate = Sequence([0.1, 0.3, 0.2, 0.25, 0.3, 0.9, 0.9])
    result = fit(model, train, validate, TrainConfig(batch_size=32, patience=3, max_epochs=7, **CPU))
    assert result.stopped_early and result.best_epoch == 2 and result.best_score == 0.3
    assert [r.epoch for r in result.history] == [1, 2, 3, 4, 5]
    assert [r.valid_score for r in result.history] == [0.1, 0.3, 0.2, 0.25, 0.3]
    assert same_weights(weights(model), validate.seen[1])
    assert not same_weights(validate.seen[1], validate.seen[4])  # training did move the weights


def test_max_epochs_without_early_stop(splits):
    data, train, _ = splits
    result = fit(new_model(data), train, Sequence([0.1, 0.2, 0.3]), TrainConfig(max_epochs=3, patience=1, **CPU))
    assert not result.stopped_early and result.best_epoch == 3 and len(result.history) == 3


def run(data, train, valid, tmp: Path | None, config, interrupt_after: int | None = None):
    """fit a fresh model (its init must not matter to a resume); returns result, weights, epochs trained."""
    model = new_model(data, seed=7)
    trained = []

    def stop(record):
        trained.append(record.epoch)
        if record.epoch == interrupt_after:
            raise KeyboardInterrupt

    result = fit(model, train, validator(valid, exclude_history=True), config, checkpoint_path=tmp, on_epoch_end=stop)
    return result, weights(model), trained


def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(splits, tmp_path):
    data, train, valid = splits
    config = TrainConfig(batch_size=32, learning_rate=1e-2, max_epochs=6, patience=100, **CPU)
    # GRU4Rec has dropout 0.5: the resumed run only matches if the torch RNG state is restored too.
    reference, reference_weights, _ = run(data, train, valid, None, config)
    checkpoint = tmp_path / "ckpt" / "last.pt"
    with pytest.raises(KeyboardInterrupt):
        run(data, train, valid, checkpoint, config, interrupt_after=3)
    assert torch.load(checkpoint, weights_only=False)["state"]["epoch"] == 3
    resumed, resumed_weights, trained = run(data, train, valid, checkpoint, config)
    assert trained == [4, 5, 6]  # resumed, not restarted
    assert [dataclasses.replace(r, seconds=0) for r in resumed.history] == \
        [dataclasses.replace(r, seconds=0) for r in reference.history]
    assert (resumed.best_epoch, resumed.best_score) == (reference.best_epoch, reference.best_score)
    assert same_weights(resumed_weights, reference_weights)
    # Raising max_epochs continues a finished run from its checkpoint, epoch 7 onwards.
    longer, _, trained = run(data, train, valid, checkpoint, dataclasses.replace(config, max_epochs=8))
    assert trained == [7, 8]
    assert [r.epoch for r in longer.history] == list(range(1, 9))
    assert [r.train_loss for r in longer.history[:6]] == [r.train_loss for r in reference.history]
    assert list(checkpoint.parent.iterdir()) == [checkpoint]  # no temporary files left behind


def test_resume_refuses_a_checkpoint_of_another_run(splits, tmp_path):
    data, train, valid = splits
    config = TrainConfig(max_epochs=1, **CPU)
    run(data, train, valid, tmp_path / "last.pt", config)
    with pytest.raises(CSRecError, match="learning_rate"):
        run(data, train, valid, tmp_path / "last.pt", dataclasses.replace(config, learning_rate=0.1))


def test_a_checkpoint_written_before_the_layouts_is_the_prefix_layouts(splits, tmp_path):
    """A work checkpoint without `layout` was made in the prefix layout (the only one then): a prefix
    run resumes from it, though the default layout is `sequence` now."""
    data, train, valid = splits
    checkpoint = tmp_path / "last.pt"
    run(data, train, valid, checkpoint, TrainConfig(max_epochs=1, **CPU))
    payload = torch.load(checkpoint, weights_only=True)
    del payload["config"]["layout"], payload["config"]["batch_unit"]
    torch.save(payload, checkpoint)
    _, _, trained = run(data, train, valid, checkpoint, TrainConfig(max_epochs=2, **CPU))
    assert trained == [2]


class NanOnBatch(nn.Module):
    """Cross entropy, except NaN on one (epoch, batch) of training."""

    def __init__(self, epoch: int, batch: int):
        super().__init__()
        self.when, self.epoch, self.batch = (epoch, batch), 1, 0

    def forward(self, logits, batch):
        self.batch += 1
        loss = F.cross_entropy(logits, batch.targets)
        return loss * float("nan") if (self.epoch, self.batch) == self.when else loss


def test_non_finite_loss_names_epoch_and_batch_and_keeps_the_checkpoint(splits, tmp_path):
    data, train, valid = splits
    objective = NanOnBatch(epoch=2, batch=3)

    def next_epoch(record):
        objective.epoch, objective.batch = record.epoch + 1, 0

    checkpoint = tmp_path / "last.pt"
    model = new_model(data)
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, batch 3 of \d+.*learning_rate"):
        fit(model, train, validator(valid, False), TrainConfig(batch_size=16, max_epochs=5, **CPU),
            objective=objective, checkpoint_path=checkpoint, on_epoch_end=next_epoch)
    saved = torch.load(checkpoint, weights_only=False)
    assert saved["state"]["epoch"] == 1 and len(saved["state"]["history"]) == 1
    assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())
    assert list(tmp_path.iterdir()) == [checkpoint]


class PulledScalar(nn.Module):
    """Cross entropy plus (w - 3)^2: an objective with a parameter of its own (as CSRec-T's noise)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, logits, batch):
        return F.cross_entropy(logits, batch.targets) + (self.w - 3.0) ** 2


def test_objective_parameters_are_optimised_and_checkpointed(splits, tmp_path):
    data, train, _ = splits
    objective = PulledScalar()
    config = TrainConfig(batch_size=16, learning_rate=5e-2, max_epochs=3, **CPU)
    fit(new_model(data), train, Sequence([0.1, 0.2, 0.3]), config, objective=objective,
        checkpoint_path=tmp_path / "last.pt")
    assert 1.0 < objective.w.item() <= 3.5  # Adam moved it from 0 towards 3
    saved = torch.load(tmp_path / "last.pt", weights_only=False)
    assert torch.equal(saved["objective"]["w"], objective.w.detach())  # best epoch == last epoch here


def test_shuffling_depends_only_on_seed_and_epoch():
    perm = lambda seed, epoch: torch.randperm(50, generator=epoch_generator(seed, epoch))  # noqa: E731
    assert torch.equal(perm(0, 3), perm(0, 3))
    assert not torch.equal(perm(0, 3), perm(0, 4)) and not torch.equal(perm(0, 3), perm(1, 3))


@pytest.mark.parametrize("field, value", [("batch_size", 0), ("learning_rate", 0.0), ("weight_decay", -1.0),
                                          ("max_epochs", 0), ("patience", 0), ("num_threads", 0),
                                          ("device", "tpu"), ("eval_batch_size", 0), ("seed", -1)])
def test_train_config_rejects_bad_values(field, value):
    with pytest.raises(CSRecError, match=field):
        TrainConfig(**{field: value})


def test_empty_training_set_is_an_error(splits):
    data, train, _ = splits
    empty = Samples(train.item_seq[:0], train.lengths[:0], train.targets[:0], train.sequence_index[:0])
    with pytest.raises(CSRecError, match="empty"):
        fit(new_model(data), empty, Sequence([0.0]), TrainConfig(**CPU))


def test_an_unreadable_checkpoint_is_kept_and_said(splits, tmp_path, monkeypatch):
    """A read error of the storage (not of the file's content) stops with a message and keeps the file."""
    data, train, valid = splits
    checkpoint = tmp_path / "last.pt"
    run(data, train, valid, checkpoint, TrainConfig(max_epochs=1, **CPU))

    read_bytes = Path.read_bytes

    def unreadable(path, *args, **kwargs):
        if path == checkpoint:
            raise OSError(5, "Input/output error")
        return read_bytes(path, *args, **kwargs)

    monkeypatch.setattr(Path, "read_bytes", unreadable)
    with pytest.raises(CSRecError, match="cannot read the work checkpoint .* it is kept"):
        run(data, train, valid, checkpoint, TrainConfig(max_epochs=2, **CPU))
    assert checkpoint.is_file()


def test_seeds_numpy_cannot_take_are_refused():
    with pytest.raises(CSRecError, match=r"train.seed must be in \[0, 2\*\*32\)"):
        TrainConfig(seed=2**32)
