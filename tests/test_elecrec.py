"""ELECRec (csrec.elecrec): its losses on hand-worked inputs, the replacement sampler's statistics,
which parameters each loss trains under each sharing type, a fit in the sequence layout, the job
and the refusals, and `launch.py train --method elecrec`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import launch
from csrec.batching import TrainingData
from csrec.config import SearchSpace, TeacherSettings, load_spec
from csrec.data.splits import training_samples, training_sequences, validation_samples
from csrec.elecrec import ELECRec, discriminator_loss, generator_loss, replace_items
from csrec.errors import CSRecError
from csrec.evaluate import validator
from csrec.methods import ELECREC_DEFAULTS, GRID_PARAMS, base_job, dependencies, student_job
from csrec.models import PADDING_SCORE, build_model
from csrec.runner.plan import make_plan
from csrec.train import TrainConfig, fit, seed_everything
from tests.conftest import make_sequence_data, write_smoke_spec

ROOT = Path(__file__).resolve().parents[1]
SMOKE_DATA = ROOT / "experiments" / "data" / "smoke.csv"


def small_sasrec(data, seed=0, **overrides):
    torch.manual_seed(seed)
    return build_model("sasrec", data.n_items, data.max_len, embedding_size=16, inner_size=32, **overrides)


def first_batch(data, rows=8):
    return next(TrainingData(training_sequences(data), torch.device("cpu")).batches(rows, "sequences", 0, 1))


# ---- the losses on hand-worked inputs -------------------------------------------------------------

def test_generator_loss_is_full_softmax_cross_entropy_at_every_position():
    # Row 1: scores (pad, 0, ln 3) -> p = (1/4, 3/4); row 2: (pad, ln 2, 0) -> p = (2/3, 1/3).
    logits = torch.tensor([[PADDING_SCORE, 0.0, math.log(3)], [PADDING_SCORE, math.log(2), 0.0]])
    loss = generator_loss(logits, torch.tensor([2, 2]))
    assert loss.item() == pytest.approx((-math.log(3 / 4) - math.log(1 / 3)) / 2, abs=1e-6)


def test_padded_generator_loss_divides_the_real_positions_sum_by_the_padded_positions():
    # The authors' nn.CrossEntropyLoss() mean over B x max_len: the same two terms, summed, over 10 positions.
    logits = torch.tensor([[PADDING_SCORE, 0.0, math.log(3)], [PADDING_SCORE, math.log(2), 0.0]])
    loss = generator_loss(logits, torch.tensor([2, 2]), padded_positions=10)
    assert loss.item() == pytest.approx((-math.log(3 / 4) - math.log(1 / 3)) / 10, abs=1e-6)
    # limiting case: rows without padding (T = B x max_len) give the per-target mean
    assert generator_loss(logits, torch.tensor([2, 2]), 2).item() == pytest.approx(
        generator_loss(logits, torch.tensor([2, 2])).item(), abs=1e-7)


@pytest.mark.parametrize("normalisation", ["padded", "targets"])
def test_the_objective_normalises_the_generator_as_the_authors_unless_told(normalisation):
    """Default "padded": generator CE summed over the T real positions / (B rows x max_len), whatever
    width the batch was cut to; the discriminator's BCE is a mean over the real positions either way."""
    data = make_sequence_data(n_sequences=12, max_len=6, seed=2)
    model = small_sasrec(data, dropout=0.0, attention_dropout=0.0)
    objective = ELECRec(model, sample_ratio=0.5) if normalisation == "padded" else \
        ELECRec(model, sample_ratio=0.5, generator_normalisation="targets")
    batch = first_batch(data, rows=5)
    torch.manual_seed(0)
    out = objective.losses(batch)
    hidden = objective.generator.encode_positions(batch.item_seq)[batch.positions]  # [T, H]
    per_target = torch.nn.functional.cross_entropy(objective.generator.scores(hidden), batch.targets)
    share = len(batch.targets) / (5 * data.max_len) if normalisation == "padded" else 1.0
    assert share < 1 or normalisation == "targets"
    assert out["generator"].item() == pytest.approx(per_target.item() * share, rel=1e-5)
    head = objective.head(objective.discriminator.encode_positions(
        torch.zeros_like(batch.item_seq).index_put_(tuple(batch.positions.nonzero().T), out["items"])
    )[batch.positions]).squeeze(-1)
    assert out["discriminator"].item() == pytest.approx(
        discriminator_loss(head, out["items"] == batch.targets).item(), rel=1e-5)
    with pytest.raises(CSRecError, match="generator_normalisation must be one of padded, targets"):
        ELECRec(model, generator_normalisation="mean")


def test_discriminator_loss_is_sigmoid_bce_of_real_against_replaced():
    # real at logit 0: -log sigmoid(0) = ln 2; replaced at logit ln 3: -log(1 - 3/4) = ln 4.
    loss = discriminator_loss(torch.tensor([0.0, math.log(3)]), torch.tensor([True, False]))
    assert loss.item() == pytest.approx((math.log(2) + math.log(4)) / 2, abs=1e-6)
    # limiting case: a confident, right discriminator costs nothing
    assert discriminator_loss(torch.tensor([30.0, -30.0]), torch.tensor([True, False])).item() < 1e-12


# ---- the replacement sampler ----------------------------------------------------------------------

@pytest.mark.parametrize("sample_ratio", [0.0, 0.3, 0.8, 1.0])
def test_about_one_minus_sample_ratio_keep_the_true_item_under_a_uniform_generator(sample_ratio):
    torch.manual_seed(0)
    n_real, count = 9, 40_000
    logits = torch.zeros(count, n_real + 1)
    logits[:, 0] = PADDING_SCORE
    targets = torch.randint(1, n_real + 1, (count,))
    items = replace_items(logits, targets, sample_ratio, prob_power=1.0)
    kept = (items == targets).float().mean().item()
    # kept = (1 - s) + s * p_gen(target): the generator may draw the true item itself (then it is "real")
    assert kept == pytest.approx(1 - sample_ratio + sample_ratio / n_real, abs=0.01)
    assert items.min() >= 1 and items.max() <= n_real  # padding never drawn


def test_replaced_positions_hold_generator_draws_raised_to_prob_power():
    torch.manual_seed(1)
    count = 40_000
    # the generator: p(1) = 0.8, p(2) = 0.2, item 3 (the target) probability 0
    logits = torch.log(torch.tensor([1e-30, 0.8, 0.2, 1e-30])).expand(count, -1).clone()
    logits[:, 0] = PADDING_SCORE
    targets = torch.full((count,), 3)
    items = replace_items(logits, targets, sample_ratio=0.5, prob_power=2.0)
    replaced = items != 3
    assert replaced.float().mean().item() == pytest.approx(0.5, abs=0.01)
    # p^2 renormalised: 0.64 / 0.68 and 0.04 / 0.68
    assert (items[replaced] == 2).float().mean().item() == pytest.approx(0.04 / 0.68, abs=0.006)
    # power 0: uniform over the real items, padding still excluded
    uniform = replace_items(logits, targets, sample_ratio=1.0, prob_power=0.0)
    assert uniform.min() >= 1
    assert (uniform == 3).float().mean().item() == pytest.approx(1 / 3, abs=0.01)


def test_the_discriminator_reads_the_next_items_with_padding_kept():
    data = make_sequence_data(n_sequences=12, max_len=6, seed=2)
    objective = ELECRec(small_sasrec(data), sample_ratio=0.0)  # nothing replaced: the true next items
    batch = first_batch(data)
    seen = []
    original = objective.discriminator.encode_positions
    objective.discriminator.encode_positions = lambda seq: seen.append(seq.clone()) or original(seq)
    out = objective.losses(batch)
    expected = torch.zeros_like(batch.item_seq)
    expected[batch.positions] = batch.targets
    assert torch.equal(seen[0], expected) and torch.equal(out["items"], batch.targets)


# ---- which parameters each loss trains --------------------------------------------------------------

def _touched(objective, loss) -> set[str]:
    objective.zero_grad(set_to_none=True)
    loss.backward()
    return {name for name, p in objective.named_parameters(remove_duplicate=False)
            if p.grad is not None and p.grad.abs().sum() > 0}


@pytest.mark.parametrize("shared", ["embed_only", "full"])
def test_gradients_reach_what_each_loss_should_under_each_sharing_type(shared):
    data = make_sequence_data(n_sequences=16, max_len=6, seed=4)
    model = small_sasrec(data)
    objective = ELECRec(model, sample_ratio=0.5, model_shared_type=shared)
    generator, discriminator = objective.generator, objective.discriminator
    assert generator.item_embedding is model.item_embedding and generator.position_embedding is model.position_embedding
    assert (generator.layers is model.layers) == (shared == "full")
    assert generator.embedding_norm is not model.embedding_norm  # as the reference: its own layer norm
    batch = first_batch(data)

    torch.manual_seed(0)
    from_generator = _touched(objective, objective.losses(batch)["generator"])
    torch.manual_seed(0)
    from_discriminator = _touched(objective, objective.losses(batch)["discriminator"])

    assert not any(n.startswith("head.") for n in from_generator)
    assert not any(n.startswith("discriminator.embedding_norm") for n in from_generator)
    assert {"head.weight", "head.bias"} <= from_discriminator
    assert not any(n.startswith("generator.embedding_norm") for n in from_discriminator)
    # shared embeddings: trained by both losses
    for name in ("item_embedding.weight", "position_embedding.weight"):
        assert f"generator.{name}" in from_generator and f"discriminator.{name}" in from_discriminator
    generator_layers = {n for n in from_generator if n.startswith("generator.layers.")}
    discriminator_layers = {n for n in from_discriminator if n.startswith("discriminator.layers.")}
    assert generator_layers and discriminator_layers
    if shared == "embed_only":  # the multinomial draw passes no gradient: each encoder has its own loss
        assert not any(n.startswith("discriminator.layers.") for n in from_generator)
        assert not any(n.startswith("generator.layers.") for n in from_discriminator)
    else:  # one encoder, trained by both
        assert {n.replace("generator.", "discriminator.") for n in generator_layers} <= {
            n.replace("generator.", "discriminator.") for n in from_discriminator | from_generator}
        assert any(n.startswith("generator.layers.") or n.startswith("discriminator.layers.")
                   for n in from_discriminator)


def test_the_sequences_own_logits_get_no_gradient():
    """fit passes the discriminator's logits on the real input; ELECRec has no loss on them."""
    data = make_sequence_data(n_sequences=16, max_len=6, seed=4)
    objective = ELECRec(small_sasrec(data))
    logits = torch.zeros(3, data.n_items + 1, requires_grad=True)
    objective(logits, first_batch(data)).backward()
    assert logits.grad is None


# ---- training ------------------------------------------------------------------------------------

@pytest.mark.parametrize("shared", ["embed_only", "full"])
def test_a_tiny_fit_in_the_sequence_layout_lowers_the_loss(shared):
    data = make_sequence_data(n_sequences=60, n_items=20, max_len=8, seed=5)
    seed_everything(0)
    model = build_model("sasrec", data.n_items, data.max_len, embedding_size=16, inner_size=32,
                        dropout=0.1, attention_dropout=0.1)
    objective = ELECRec(model, sample_ratio=0.5, dis_loss_weight=0.5, model_shared_type=shared)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    validate = validator(validation_samples(data), False)
    config = TrainConfig(batch_size=16, batch_unit="sequences", layout="sequence", max_epochs=8, patience=8,
                         learning_rate=5e-3, device="cpu", progress=False)
    result = fit(model, training_sequences(data), validate, config, objective)
    losses = [r.train_loss for r in result.history]
    assert losses[-1] < 0.9 * losses[0], losses
    # the model fit trains, stores and evaluates is the discriminator
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert objective.discriminator is model


def test_fit_computes_no_logits_of_the_discriminator_on_the_real_input():
    """ELECRec reads no logits of `fit`'s model (uses_logits = False): a step scores items with the
    generator only, and its loss is the objective's total."""
    from csrec.batching import training_loss
    data = make_sequence_data(n_sequences=20, n_items=20, max_len=8, seed=1)
    model = small_sasrec(data, dropout=0.0, attention_dropout=0.0)
    objective = ELECRec(model, sample_ratio=0.5)
    calls = []
    original = model.scores
    model.scores = lambda hidden: calls.append(hidden.shape) or original(hidden)
    batch = first_batch(data)
    torch.manual_seed(3)
    loss = training_loss(model, objective, batch)
    assert calls == []
    torch.manual_seed(3)
    assert loss.item() == pytest.approx(objective.losses(batch)["total"].item(), abs=1e-6)


# ---- the job and its refusals ------------------------------------------------------------------------

@pytest.fixture
def data_config(tiny_data_config):
    return tiny_data_config


def test_the_job_has_no_teachers_and_elecrecs_defaults(data_config):
    base = base_job(data_config, "sasrec", TrainConfig(layout="sequence"))
    job = student_job("elecrec", base, {"sample_ratio": 0.45}, TeacherSettings(model_shared_type="full"))
    assert job.objective == "elecrec" and job.role == "student" and dependencies(job) == []
    assert dict(job.params) == ELECREC_DEFAULTS | {"sample_ratio": 0.45}
    assert job.option("model_shared_type") == "full"
    assert job.option("generator_normalisation") == "padded"  # the authors', by default
    other = student_job("elecrec", base, {"sample_ratio": 0.45}, TeacherSettings())
    assert other.key != job.key  # the sharing type is part of the key
    # "targets" (the first version's) is no option at all: its keys are those of the runs made before
    targets = student_job("elecrec", base, {"sample_ratio": 0.45},
                          TeacherSettings(model_shared_type="full", generator_normalisation="targets"))
    assert dict(targets.options) == {"model_shared_type": "full"} and targets.key != job.key
    assert set(GRID_PARAMS["elecrec"]) == set(ELECREC_DEFAULTS)
    assert {k: getattr(SearchSpace(), k) for k in ELECREC_DEFAULTS} == {k: (v,) for k, v in ELECREC_DEFAULTS.items()}


@pytest.mark.parametrize("model, layout, params, names", [
    ("sasrec", "prefix", {}, ["train.layout: sequence"]),
    ("gru4rec", "sequence", {}, ["model gru4rec", "sasrec"]),
    ("sasrec", "sequence", {"sample_ratio": 1.5}, ["sample_ratio must lie in [0, 1]"]),
    ("sasrec", "sequence", {"prob_power": -1.0}, ["prob_power must be >= 0"]),
    ("sasrec", "sequence", {"beta": 0.5}, ["elecrec takes", "beta"]),
])
def test_refusals_name_what_to_change(data_config, model, layout, params, names):
    base = base_job(data_config, model, TrainConfig(layout=layout))
    with pytest.raises(CSRecError) as error:
        student_job("elecrec", base, params, TeacherSettings())
    assert all(name in str(error.value) for name in names), str(error.value)


def test_the_objective_refuses_prefix_batches_and_other_models():
    data = make_sequence_data(n_sequences=12, max_len=6, seed=2)
    objective = ELECRec(small_sasrec(data))
    prefix = next(TrainingData(training_samples(data), torch.device("cpu")).batches(4, "targets", 0, 1))
    with pytest.raises(CSRecError, match="train.layout: sequence"):
        objective(None, prefix)
    torch.manual_seed(0)
    with pytest.raises(CSRecError, match="use the model sasrec"):
        ELECRec(build_model("gru4rec", data.n_items, data.max_len))


def test_a_spec_grid_over_elecrecs_parameters(tmp_path):
    spec = load_spec(write_smoke_spec(
        tmp_path, "e", models=["sasrec"], methods=["base", "elecrec"], seeds=[0],
        search={"elecrec": {"sample_ratio": [0.45, 0.8], "dis_loss_weight": [0.6]}},
        teachers={"model_shared_type": "full"}, model_overrides={},
        train={"max_epochs": 1, "layout": "sequence", "batch_unit": "sequences", "progress": False}))
    plan = make_plan(spec)
    trials = [t for t in plan.trials if t.method == "elecrec"]
    assert [dict(t.params)["sample_ratio"] for t in trials] == [0.45, 0.8]
    assert all(dict(t.params)["dis_loss_weight"] == 0.6 and dict(t.params)["prob_power"] == 1.0 for t in trials)
    assert all(t.job.option("model_shared_type") == "full" for t in trials)
    assert [j.objective for j in plan.teachers] == ["ce"]  # the Base run only: ELECRec needs no teacher


@pytest.mark.parametrize("name, expected, shared", [
    ("beauty", {"sample_ratio": 0.45, "prob_power": 1.0, "gen_loss_weight": 1.0, "dis_loss_weight": 0.6}, "full"),
    ("yelp", {"sample_ratio": 0.8, "prob_power": 4.4, "gen_loss_weight": 1.0, "dis_loss_weight": 0.7}, "embed_only"),
])
def test_a_spec_names_the_authors_preset(tmp_path, name, expected, shared):
    spec = load_spec(write_smoke_spec(
        tmp_path, "e", models=["sasrec"], methods=["elecrec"], seeds=[0], search={"elecrec": {"preset": name}},
        model_overrides={}, train={"max_epochs": 1, "layout": "sequence", "selection_metric": "ndcg@20",
                                   "patience": 40, "progress": False}))
    (trial,) = make_plan(spec).trials
    assert dict(trial.job.params) == expected
    assert dict(trial.job.options) == {"model_shared_type": shared, "generator_normalisation": "padded"}
    assert spec.train.selection_metric == "ndcg@20" and spec.train.patience == 40
    assert trial.job.config()["train"]["selection_metric"] == "ndcg@20"
    # a value the spec gives wins over the preset's
    spec = load_spec(write_smoke_spec(
        tmp_path, "f", models=["sasrec"], methods=["elecrec"], seeds=[0], model_overrides={},
        search={"elecrec": {"preset": name, "sample_ratio": [0.5]}}, teachers={"generator_normalisation": "targets"},
        train={"max_epochs": 1, "layout": "sequence", "progress": False}))
    (trial,) = make_plan(spec).trials
    assert dict(trial.job.params) == expected | {"sample_ratio": 0.5}
    assert dict(trial.job.options) == {"model_shared_type": shared}


def test_unknown_presets_and_selection_metrics_are_refused(tmp_path):
    with pytest.raises(CSRecError, match="preset 'amazon' is unknown; known: beauty, yelp"):
        load_spec(write_smoke_spec(tmp_path, "e", models=["sasrec"], methods=["elecrec"],
                                   search={"elecrec": {"preset": "amazon"}}))
    with pytest.raises(CSRecError, match="selection_metric must be"):
        TrainConfig(selection_metric="auc")
    assert "selection_metric" not in TrainConfig().key_fields  # the default: keys as before the field


# ---- the command line --------------------------------------------------------------------------------

def _train(tmp_path, *extra):
    return ["train", "--data", str(SMOKE_DATA), "--model", "sasrec", "--out", str(tmp_path / "out"),
            "--store", str(tmp_path / "store"), "--max-len", "8", "--epochs", "1", "--device", "cpu",
            "--threads", "1", *extra]


def test_launch_train_method_elecrec(tmp_path, capsys):
    args = _train(tmp_path, "--method", "elecrec", "--layout", "sequence", "--batch-unit", "sequences",
                  "--sample-ratio", "0.45", "--dis-loss-weight", "0.6", "--model-shared-type", "full")
    assert launch.main(args) == 0
    out = tmp_path / "out"
    config = json.loads((out / "config.json").read_text())
    assert config["job"]["objective"] == "elecrec"
    assert config["job"]["options"] == {"model_shared_type": "full", "generator_normalisation": "padded"}
    assert config["job"]["params"] == {"sample_ratio": 0.45, "prob_power": 1.0, "gen_loss_weight": 1.0,
                                       "dis_loss_weight": 0.6}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["best_epoch"] == 1 and 0 <= metrics["test"]["ndcg@10"] <= 1
    assert "elecrec" in capsys.readouterr().out


def test_launch_train_elecrec_preset_and_selection_metric(tmp_path):
    args = _train(tmp_path, "--method", "elecrec", "--layout", "sequence", "--preset", "yelp", "--dis-loss-weight",
                  "0.5", "--selection-metric", "ndcg@20", "--patience", "40")
    assert launch.main(args) == 0
    job = json.loads((tmp_path / "out" / "config.json").read_text())["job"]
    assert job["params"] == {"sample_ratio": 0.8, "prob_power": 4.4, "gen_loss_weight": 1.0, "dis_loss_weight": 0.5}
    assert job["options"] == {"model_shared_type": "embed_only", "generator_normalisation": "padded"}
    assert job["train"]["selection_metric"] == "ndcg@20" and job["train"]["patience"] == 40


@pytest.mark.parametrize("extra, names", [
    (["--method", "base", "--preset", "beauty"], ["--preset applies to --method elecrec"]),
    (["--method", "elecrec", "--layout", "prefix"], ["train.layout: sequence"]),
    (["--method", "base", "--sample-ratio", "0.5"], ["--sample-ratio", "--method base"]),
])
def test_launch_train_elecrec_mistakes_exit_2(tmp_path, capsys, extra, names):
    assert launch.main(_train(tmp_path, *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(name in err[0] for name in names), err
    assert not (tmp_path / "out").exists()
