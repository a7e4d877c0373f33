"""The `sequence` training layout: every prefix from one pass, the same pairs and losses as `prefix`."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from csrec.batching import Batch, TrainingData, batch_logits
from csrec.data.samples import SequenceData
from csrec.data.splits import training_samples, training_sequences, validation_samples
from csrec.errors import CSRecError
from csrec.evaluate import validator
from csrec.methods import base_job
from csrec.models import MODELS, build_model
from csrec.objectives import (CrossEntropy, FrozenTeachers, SoftLabelStudent, TrainingLevelTeacher, encode_samples,
                              popularity_teacher)
from csrec.train import TrainConfig, fit, seed_everything
from tests.conftest import make_sequence_data

CPU = dict(device="cpu", progress=False)


def hand_data(sequences, max_len) -> SequenceData:
    n_items = max(max(s) for s in sequences)
    tokens = np.array(["[PAD]"] + [str(i) for i in range(1, n_items + 1)], dtype=object)
    users = np.array([f"u{i}" for i in range(len(sequences))], dtype=object)
    return SequenceData([np.array(s, dtype=np.int64) for s in sequences], None, users, tokens, max_len)


def small_model(name: str, data: SequenceData, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(name, data.n_items, data.max_len, embedding_size=16,
                       **({"num_heads": 2} if name == "sasrec" else {}))


# ---- data --------------------------------------------------------------------------------------

def test_rows_hold_the_prefix_layouts_pairs_in_its_order():
    # Train parts: [1..10] (9 pairs: rows of 1, 4, 4 at max_len 4, aligned to the end), [1, 2] (1 pair), [5] (none).
    data = hand_data([list(range(1, 13)), [1, 2, 3, 4], [5, 6, 7]], max_len=4)
    rows = training_sequences(data)
    assert rows.item_seq.tolist() == [[1, 0, 0, 0], [2, 3, 4, 5], [6, 7, 8, 9], [1, 0, 0, 0]]
    assert rows.targets.tolist() == [[2, 0, 0, 0], [3, 4, 5, 6], [7, 8, 9, 10], [2, 0, 0, 0]]
    assert rows.lengths.tolist() == [1, 4, 4, 1] and rows.sequence_index.tolist() == [0, 0, 0, 1]
    assert rows.pair_index.tolist() == [[0, -1, -1, -1], [1, 2, 3, 4], [5, 6, 7, 8], [9, -1, -1, -1]]
    samples = training_samples(data)
    assert len(rows) == len(samples) == 10
    real = rows.targets > 0
    assert rows.targets[real].tolist() == samples.targets.tolist()
    assert np.repeat(rows.sequence_index, rows.lengths).tolist() == samples.sequence_index.tolist()


@pytest.mark.parametrize("protocol, max_len", [("windows", 20), ("user_loo", 8)])
def test_every_pair_has_the_prefix_layouts_input_up_to_max_len(protocol, max_len):
    data = make_sequence_data(n_sequences=60, max_len=max_len if protocol == "windows" else 30, seed=3)
    data = dataclasses.replace(data, max_len=max_len)
    rows, samples = training_sequences(data), training_samples(data)
    pair = rows.pair_index
    for r, t in zip(*np.nonzero(pair >= 0)):
        k = pair[r, t]
        context = rows.item_seq[r, :t + 1]
        expected = samples.item_seq[k, :samples.lengths[k]]
        # the prefix layout's context up to max_len: its last t + 1 items, all of them in a sequence's
        # first row (which starts at the history's first item) or at a full row's last position
        assert context.tolist() == expected[-(t + 1):].tolist()
        first_row = r == np.flatnonzero(rows.sequence_index == rows.sequence_index[r])[0]
        if first_row or t + 1 == max_len:
            assert context.tolist() == expected.tolist()
        assert rows.targets[r, t] == samples.targets[k]
    # Rows aligned to the end of each history: every row but a sequence's first is full, so the last
    # training pair (the one before the validation target) has the prefix layout's whole context.
    for s in np.unique(rows.sequence_index):
        own = np.flatnonzero(rows.sequence_index == s)
        assert all(rows.lengths[own[1:]] == max_len)
        last = pair[own[-1], rows.lengths[own[-1]] - 1]
        assert rows.item_seq[own[-1], :rows.lengths[own[-1]]].tolist()[-samples.lengths[last]:] == \
            samples.item_seq[last, :samples.lengths[last]].tolist()
        assert rows.lengths[own[-1]] == min(samples.lengths[last], max_len)


# ---- models ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", MODELS)
def test_all_positions_equal_each_prefix_encoded_alone(name):
    """Eval mode: position t of encode_positions equals encode() of the row cut to t + 1 items,
    for right-padded rows of every length (1 included); padding positions never leak backwards."""
    data = hand_data([list(range(1, 30))], max_len=7)
    model = small_model(name, data).eval()
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([7, 1, 4, 2, 6])
    items = torch.randint(1, data.n_items + 1, (5, 7), generator=g)
    items[torch.arange(7) >= lengths.unsqueeze(1)] = 0  # [B, L] right-padded
    with torch.no_grad():
        positions = model.encode_positions(items)  # [B, L, H]
        for t in range(7):
            prefix = torch.where(torch.arange(7) <= t, items, 0)  # [B, L] the first t + 1 items
            alone = model.encode(prefix, torch.full((5,), t + 1))  # [B, H]
            real = lengths > t
            assert torch.allclose(positions[real, t], alone[real], atol=1e-5), (name, t)


# ---- objectives and cached teachers ------------------------------------------------------------

def _prefix_batch(samples, index: torch.Tensor) -> Batch:
    take = lambda x: torch.as_tensor(x)[index]  # noqa: E731
    return Batch(index, take(samples.item_seq), take(samples.lengths), take(samples.targets))


def _objectives(data, teachers, train, name):
    counts = torch.ones(data.n_items + 1)
    counts[1:5] = 10.0
    if name == "base":
        return CrossEntropy()
    if name == "softrec":
        return SoftLabelStudent(0.5, 3.0, popularity=popularity_teacher(counts))
    if name in ("csrec-m", "csrec-m-mean-probs"):
        ensemble = "mean_probs" if name.endswith("probs") else "mean_logits"
        return SoftLabelStudent(0.75, 2.0, teacher=FrozenTeachers(teachers, train), ensemble=ensemble)
    if name == "csrec-m-paper-kl":
        return SoftLabelStudent(0.5, 3.0, "paper", teacher=FrozenTeachers(teachers, train))
    torch.manual_seed(5)  # the same noise matrix for both layouts
    return TrainingLevelTeacher(FrozenTeachers(teachers[:1], train), data.n_items, alpha=0.25, rank=4).eval()


@pytest.mark.parametrize("objective", ["base", "softrec", "csrec-m", "csrec-m-mean-probs", "csrec-m-paper-kl",
                                       "training-level"])
def test_sequence_loss_is_the_mean_of_the_prefix_losses_over_the_same_pairs(tiny_data, objective):
    teachers = [small_model("gru4rec", tiny_data, seed).eval() for seed in (1, 2)]
    student = small_model("gru4rec", tiny_data).eval()  # dropout off
    rows, samples = training_sequences(tiny_data), training_samples(tiny_data)
    sequence_objective = _objectives(tiny_data, teachers, rows, objective)
    prefix_objective = _objectives(tiny_data, teachers, samples, objective)
    (batch,) = list(TrainingData(rows, torch.device("cpu")).batches(10 ** 6, "targets", seed=0, epoch=1))
    assert sorted(batch.index.tolist()) == list(range(len(samples)))
    with torch.no_grad():
        whole = sequence_objective(batch_logits(student, batch), batch)
        one_by_one = torch.stack([
            prefix_objective(batch_logits(student, _prefix_batch(samples, k.view(1))), _prefix_batch(samples, k.view(1)))
            for k in batch.index])
    assert whole.item() == pytest.approx(one_by_one.mean().item(), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("name", MODELS)
def test_cached_teacher_values_per_position_equal_fresh_outputs(tiny_data, name):
    teacher = small_model(name, tiny_data, 4).eval()
    rows, samples = training_sequences(tiny_data), training_samples(tiny_data)
    cached = FrozenTeachers([teacher], rows)
    with torch.no_grad():
        fresh = teacher(torch.as_tensor(samples.item_seq), torch.as_tensor(samples.lengths))  # [N, N_items]
    index = torch.arange(len(samples))
    assert torch.allclose(cached.logits(index)[0], fresh, atol=1e-4)
    assert torch.allclose(encode_samples(teacher, rows), encode_samples(teacher, samples), atol=1e-5)


# ---- batching and fit --------------------------------------------------------------------------

def test_batches_count_targets_or_sequences_and_cover_every_pair_once(tiny_data):
    rows = training_sequences(tiny_data)
    data = TrainingData(rows, torch.device("cpu"))
    by_targets = list(data.batches(16, "targets", seed=0, epoch=1))
    assert sorted(torch.cat([b.index for b in by_targets]).tolist()) == list(range(len(rows)))
    longest = int(rows.lengths.max())
    assert all(len(b.targets) <= 16 + longest for b in by_targets)
    assert abs(len(by_targets) - len(rows) / 16) <= 1
    by_rows = list(data.batches(4, "sequences", seed=0, epoch=1))
    assert [len(b.lengths) for b in by_rows[:-1]] == [4] * (len(by_rows) - 1)
    assert sum(len(b.lengths) for b in by_rows) == len(rows.lengths)
    again = list(data.batches(16, "targets", seed=0, epoch=1))  # a function of (seed, epoch) only
    assert all(torch.equal(a.index, b.index) for a, b in zip(by_targets, again))


class StopMidEpoch(CrossEntropy):
    """Cross entropy that stops the run (as a kill would) at its n-th call: mid-epoch."""

    def __init__(self, calls: int):
        super().__init__()
        self.calls = calls

    def forward(self, logits, batch):
        self.calls -= 1
        if self.calls == 0:
            raise KeyboardInterrupt
        return super().forward(logits, batch)


def _fit(data, train, config, checkpoint=None, interrupt_after=None, name="gru4rec", objective=None):
    seed_everything(7)
    model = build_model(name, data.n_items, data.max_len)

    def stop(record):
        if record.epoch == interrupt_after:
            raise KeyboardInterrupt

    result = fit(model, train, validator(validation_samples(data), exclude_history=False), config,
                 objective=objective, checkpoint_path=checkpoint, on_epoch_end=stop)
    return result, {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", ["gru4rec", "sasrec"])
def test_sequence_layout_learns(tiny_data, name):
    config = TrainConfig(batch_size=32, learning_rate=1e-2, max_epochs=8, layout="sequence", **CPU)
    result, _ = _fit(tiny_data, training_sequences(tiny_data), config, name=name)
    losses = [r.train_loss for r in result.history]
    assert losses[-1] < 0.8 * losses[0] and result.best_score > result.history[0].valid_score * 0.99


def test_sequence_layout_resumes_to_the_identical_model(tiny_data, tmp_path):
    config = TrainConfig(batch_size=32, learning_rate=1e-2, max_epochs=5, patience=100, layout="sequence", **CPU)
    rows = training_sequences(tiny_data)
    reference, reference_weights = _fit(tiny_data, rows, config)
    checkpoint = tmp_path / "last.pt"
    with pytest.raises(KeyboardInterrupt):
        _fit(tiny_data, rows, config, checkpoint, interrupt_after=2)
    resumed, resumed_weights = _fit(tiny_data, rows, config, checkpoint)
    assert [r.train_loss for r in resumed.history] == [r.train_loss for r in reference.history]
    assert all(torch.equal(resumed_weights[k], v) for k, v in reference_weights.items())
    # Stopped mid-epoch (epoch 3's second batch): the resume redoes epoch 3 from epoch 2's checkpoint.
    mid = tmp_path / "mid.pt"
    batches_per_epoch = len(list(TrainingData(rows, torch.device("cpu")).batches(32, "targets", 0, 1)))
    with pytest.raises(KeyboardInterrupt):
        _fit(tiny_data, rows, config, mid, objective=StopMidEpoch(2 * batches_per_epoch + 2))
    assert torch.load(mid, weights_only=True)["state"]["epoch"] == 2
    resumed, resumed_weights = _fit(tiny_data, rows, config, mid)
    assert all(torch.equal(resumed_weights[k], v) for k, v in reference_weights.items())
    with pytest.raises(CSRecError, match="layout: sequence -> prefix"):  # another layout's checkpoint
        _fit(tiny_data, training_samples(tiny_data), dataclasses.replace(config, layout="prefix"), checkpoint)


def test_layout_config_is_checked_and_keys_say_which_layout(tiny_data_config):
    with pytest.raises(CSRecError, match="train.layout must be one of prefix, sequence"):
        TrainConfig(layout="rows")
    with pytest.raises(CSRecError, match="applies to layout 'sequence' only"):
        TrainConfig(layout="prefix", batch_unit="sequences")
    assert TrainConfig().layout == "sequence"  # the default, since it proved as accurate (REPRODUCTION.md)
    data = tiny_data_config
    prefix = base_job(data, "gru4rec", TrainConfig(layout="prefix"))
    sequence = base_job(data, "gru4rec", TrainConfig(layout="sequence"))
    by_rows = base_job(data, "gru4rec", TrainConfig(layout="sequence", batch_unit="sequences"))
    # The prefix layout's key holds the fields it held before layouts existed: old stores stay valid.
    assert set(prefix.config()["train"]) == {"batch_size", "learning_rate", "weight_decay", "max_epochs",
                                             "patience", "seed"}
    assert sequence.config()["train"]["layout"] == "sequence"
    assert len({prefix.key, sequence.key, by_rows.key}) == 3
    with pytest.raises(ValueError, match="layout is 'sequence' but the training data is Samples"):
        _fit(make_sequence_data(), training_samples(make_sequence_data()), TrainConfig(layout="sequence", **CPU))


def test_an_experiment_recorded_before_the_sequence_default_stays_in_the_prefix_layout(tmp_path):
    """The default is `sequence` now; an experiment whose spec.yaml has no train.layout (written
    before layouts existed) resumes in the prefix layout it was trained in, and a spec without
    train.layout pointed at such a directory is refused with the line to add."""
    from csrec.config import load_spec
    from csrec.runner import SPEC_FILE, Experiment
    from tests.conftest import quiet, write_smoke_spec

    old = write_smoke_spec(tmp_path, "exp", train={"max_epochs": 2, "layout": "prefix", "progress": False})
    experiment = Experiment.open(old, log=quiet)
    experiment.initialise(old)
    recorded = experiment.directory / SPEC_FILE
    text = recorded.read_text()
    assert "layout: prefix" in text
    recorded.write_text(text.replace("  layout: prefix\n", ""))  # as csrec wrote it before layouts existed
    assert load_spec(recorded).train.layout == "sequence"  # a user's spec: today's default
    assert load_spec(recorded, recorded=True).train.layout == "prefix"  # the experiment's record: what it meant
    resumed = Experiment.open(recorded, directory=experiment.directory, log=quiet)
    assert resumed.spec.train.layout == "prefix"

    new = write_smoke_spec(tmp_path, "exp", train={"max_epochs": 2, "progress": False})
    with pytest.raises(CSRecError, match=r"was run in the prefix layout .* add `layout: prefix`"):
        Experiment.open(new, log=quiet)


@pytest.mark.parametrize("layout", ["prefix", "sequence"])
def test_a_recorded_spec_without_layout_means_the_layout_whose_keys_plan_json_holds(tmp_path, layout):
    """A spec.yaml put in by hand (the advice for a lost one) has no train.layout and means today's
    default; one written before the layouts existed means prefix. plan.json's keys tell them apart."""
    from csrec.runner import SPEC_FILE, Experiment
    from csrec.runner.plan import make_plan, to_json
    from tests.conftest import quiet, write_smoke_spec

    spec_path = write_smoke_spec(tmp_path, "exp", train={"max_epochs": 2, "layout": layout, "progress": False})
    experiment = Experiment.open(spec_path, log=quiet)
    experiment.initialise(spec_path)
    (experiment.directory / "plan.json").write_text(to_json(make_plan(experiment.spec)))
    recorded = experiment.directory / SPEC_FILE
    recorded.write_text(recorded.read_text().replace(f"  layout: {layout}\n", ""))
    lines: list[str] = []
    resumed = Experiment.open(recorded, directory=experiment.directory, log=lines.append)
    assert resumed.spec.train.layout == layout
    said = [line for line in lines if "has no train.layout" in line]
    assert len(said) == (layout == "sequence")  # the one that is not the recorded-spec rule is said
