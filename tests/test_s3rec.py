"""S3Rec (csrec.s3rec): its four pretraining objectives on hand-worked inputs and against a
position-by-position recomputation, the masking and segment samplers' statistics, the pretraining
samples, batches cut into length groups against the padded computation (losses, gradients, the
authors' left-padding positions, whole epochs), the artifact's key and its reuse, fine-tuning from
the pretrained weights, the attribute file's checks, a local run that pretrains once for two seeds,
and `launch.py train --method s3rec`."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import launch
from csrec.config import TeacherSettings, load_spec
from csrec.data import DataConfig
from csrec.data.samples import SequenceData
from csrec.data.attributes import item_attributes, read_attribute_file
from csrec.errors import CSRecError
from csrec.jobs import MODELS, initialise, train_job
from csrec.methods import GRID_PARAMS, PRETRAINING, S3REC_DEFAULTS, base_job, dependencies, student_job
from csrec.models import SASRecConfig, build_model
from csrec.runner import run_experiment
from csrec.runner.plan import make_plan
from csrec.batching import TrainingData
from csrec.data.splits import training_sequences
from csrec.jobs import build_objective, splits_for
from csrec.s3rec import (FineTuningBCE, PretrainingBatch, S3RecPretraining, attribute_loss, cut, finetuning_bce,
                         length_groups, pair_sequences, pairwise_loss, pretrain, pretraining_data, sample_batch,
                         student_state, total_loss)
from csrec.store import Store
from csrec.train import TrainConfig
from tests.conftest import make_sequence_data, write_smoke_spec

ROOT = Path(__file__).resolve().parents[1]
SMOKE_DATA = ROOT / "experiments" / "data" / "smoke.csv"
SMALL = SASRecConfig(embedding_size=8, num_heads=2, inner_size=16, dropout=0.0, attention_dropout=0.0)


def write_attributes(path: Path, items) -> Path:
    """Item i (an integer's text) has attributes (i % 3) + 1 and (i % 5) + 4."""
    path.write_text(json.dumps({str(i): [int(i) % 3 + 1, int(i) % 5 + 4] for i in items}))
    return path


@pytest.fixture
def smoke_attributes(tmp_path) -> Path:
    items = {line.split(",")[1] for line in SMOKE_DATA.read_text().split()[1:]}
    return write_attributes(tmp_path / "smoke_attributes.json", items)


# ---- the objectives on hand-worked inputs ---------------------------------------------------------

def test_attribute_loss_is_sigmoid_bce_summed_over_positions_and_attributes():
    # logit 0 for a present attribute: -log(1/2); logit ln 3 for an absent one: -log(1 - 3/4)
    loss = attribute_loss(torch.tensor([[0.0, math.log(3)], [0.0, 0.0]]),
                          torch.tensor([[True, False], [False, False]]))
    assert loss.item() == pytest.approx(math.log(2) + math.log(4) + 2 * math.log(2), abs=1e-6)


def test_pairwise_loss_is_minus_log_sigmoid_of_the_difference_of_sigmoids():
    # equal scores: -log sigmoid(0) = ln 2; a sure positive and a sure negative: -log sigmoid(1 - 0)
    loss = pairwise_loss(torch.tensor([0.0, 40.0]), torch.tensor([0.0, -40.0]))
    assert loss.item() == pytest.approx(math.log(2) + math.log(1 + math.exp(-1)), abs=1e-6)
    # the authors' F is itself a sigmoid: the loss never falls below -log sigmoid(1)
    assert pairwise_loss(torch.tensor([1e4]), torch.tensor([-1e4])).item() >= math.log(1 + math.exp(-1)) - 1e-6


def hand_batch() -> PretrainingBatch:
    """Two prefixes over items 1..5 (mask token 6): [1, 2, 3] with item 2 and the last masked and the
    segment [2] at position 1; [4] alone (no segment)."""
    items = torch.tensor([[1, 2, 3], [4, 0, 0]])
    return PretrainingBatch(
        items=items, lengths=torch.tensor([3, 1]),
        masked_items=torch.tensor([[1, 6, 6], [6, 0, 0]]), negative_items=torch.tensor([[1, 5, 4], [2, 0, 0]]),
        masked_segment=torch.tensor([[1, 6, 3], [6, 0, 0]]), positive_segment=torch.tensor([[6, 2, 6], [4, 0, 0]]),
        negative_segment=torch.tensor([[6, 5, 6], [6, 0, 0]]), has_segment=torch.tensor([True, False]))


def test_each_objective_matches_a_position_by_position_recomputation():
    torch.manual_seed(0)
    module = S3RecPretraining(n_items=5, max_len=3, config=SMALL, n_attributes=3).eval()
    attributes = torch.zeros(6, 4, dtype=torch.bool)  # item i has attribute (i % 3) + 1
    for item in range(1, 6):
        attributes[item, item % 3 + 1] = True
    batch = hand_batch()
    with torch.no_grad():
        losses = module.losses(batch, attributes)
        hidden = module.encode(batch.masked_items)  # [2, 3, H]
        table, embedding = module.attribute_embedding.weight, module.encoder.item_embedding.weight

        def bce(query, item):  # sum over attributes 1..3 of BCE(sigmoid(query . a_j), item has j)
            return sum(-math.log(torch.sigmoid(query @ table[j]).item()) if attributes[item, j]
                       else -math.log(1 - torch.sigmoid(query @ table[j]).item()) for j in (1, 2, 3))

        def pair(query, positive, negative):
            f = lambda e: torch.sigmoid(query @ e).item()  # noqa: E731
            return -math.log(1 / (1 + math.exp(-(f(positive) - f(negative)))))

        aap = bce(module.aap_projection(hidden[0, 0]), 1)  # the only unmasked real position: (0, 0)
        masked = [(0, 1), (0, 2), (1, 0)]
        map_ = sum(bce(module.map_projection(hidden[r, t]), int(batch.items[r, t])) for r, t in masked)
        mip = sum(pair(module.mip_projection(hidden[r, t]), embedding[batch.items[r, t]],
                       embedding[batch.negative_items[r, t]]) for r, t in masked)
        last = lambda seq: module.encode(seq[None, :3])[0, 2]  # noqa: E731 - row 0's last real position
        sp = pair(module.sp_projection(last(batch.masked_segment[0])), last(batch.positive_segment[0]),
                  last(batch.negative_segment[0]))  # row 1 (one item) has no segment
    expected = {"aap": aap / 2, "mip": mip / 2, "map": map_ / 2, "sp": sp / 2}  # per prefix of the batch
    assert {k: v.item() for k, v in losses.items()} == pytest.approx(expected, rel=1e-5)
    total = total_loss(losses, S3REC_DEFAULTS)
    assert total.item() == pytest.approx(0.2 * aap / 2 + mip / 2 + map_ / 2 + 0.5 * sp / 2, rel=1e-5)


def test_pretraining_attends_both_ways_and_ignores_padding():
    torch.manual_seed(0)
    module = S3RecPretraining(n_items=5, max_len=4, config=SMALL, n_attributes=2).eval()
    with torch.no_grad():
        a = module.encode(torch.tensor([[1, 2, 3, 0]]))
        b = module.encode(torch.tensor([[1, 2, 4, 0]]))
        assert not torch.allclose(a[0, 0], b[0, 0])  # position 0 sees the item after it
        assert torch.allclose(module.encode(torch.tensor([[1, 2, 3]]))[0], a[0, :3], atol=1e-6)  # padding unseen
        causal = module.encoder.encode_positions(torch.tensor([[1, 2, 3, 0], [1, 2, 4, 0]]))
        assert torch.allclose(causal[0, :2], causal[1, :2])  # fine-tuning's encoder stays causal


# ---- the samplers -------------------------------------------------------------------------------

def test_masking_hits_about_mask_ratio_of_the_items_but_the_last_which_always_is():
    n_items, rows, width = 50, 4000, 10
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, width + 1, (rows,), generator=generator)
    items = torch.randint(1, n_items + 1, (rows, width), generator=generator) * (torch.arange(width) < lengths[:, None])
    long_sequence = torch.arange(1, n_items + 1)
    batch = sample_batch(items, lengths, long_sequence, n_items + 1, 0.3, generator)
    real, masked = items > 0, batch.masked_items == n_items + 1
    last = torch.arange(width) == (lengths - 1)[:, None]
    assert masked[last].all() and not masked[~real].any()
    assert masked[real & ~last].float().mean().item() == pytest.approx(0.3, abs=0.01)
    negatives = batch.negative_items[masked]
    assert negatives.min() >= 1 and negatives.max() <= n_items  # never padding nor the mask token
    in_row = (batch.negative_items[:, :, None] == items[:, None, :]).any(-1)
    assert not in_row[masked].any()  # MIP's negatives lie outside their prefix
    assert torch.equal(batch.negative_items[~masked], items[~masked])


def test_segments_have_uniform_lengths_up_to_half_and_cut_the_right_items():
    n_items, rows, width, mask = 30, 6000, 8, 31
    generator = torch.Generator().manual_seed(1)
    items = torch.randint(1, n_items + 1, (rows, width), generator=generator)
    lengths = torch.full((rows,), width)
    long_sequence = torch.arange(100, 200)  # its items tell where a negative segment was cut
    batch = sample_batch(items, lengths, long_sequence, mask, 0.2, generator)
    inside = batch.masked_segment == mask  # [B, L]: the segment, one run per row
    size = inside.sum(1)
    assert size.min() == 1 and size.max() == width // 2
    counts = torch.bincount(size, minlength=width // 2 + 1)[1:].float() / rows
    assert torch.allclose(counts, torch.full((width // 2,), 1 / (width // 2)), atol=0.02)  # uniform in 1..len // 2
    start = inside.float().argmax(1)
    assert (inside.long().diff(dim=1) == 1).sum(1).le(1).all()  # contiguous
    assert torch.equal(torch.where(inside, batch.positive_segment, mask), torch.where(inside, items, mask))
    assert (batch.positive_segment[~inside] == mask).all() and (batch.negative_segment[~inside] == mask).all()
    cut = batch.negative_segment[inside]  # consecutive items of long_sequence, per row
    assert cut.min() >= 100 and cut.max() < 200
    rows_cut = torch.where(inside, batch.negative_segment - torch.arange(width), 0).amax(1)
    assert torch.equal(torch.where(inside, batch.negative_segment - torch.arange(width), rows_cut[:, None]),
                       rows_cut[:, None].expand(-1, width))
    assert start.float().mean().item() == pytest.approx(np.mean([(width - s) / 2 for s in range(1, 5)]), abs=0.1)


def test_pretraining_samples_are_every_prefix_of_the_training_parts_last_max_len_items():
    data = SequenceData([np.array([1, 2, 3, 4, 5]), np.array([6, 7, 8])], None, np.array(["u1", "u2"], dtype=object),
                        np.array(["[PAD]"] + [str(i) for i in range(1, 9)], dtype=object), max_len=2)
    samples = pretraining_data(data)  # training parts [1, 2, 3] (kept: [2, 3]) and [6]
    assert samples.prefixes.tolist() == [[2, 0], [2, 3], [6, 0]]
    assert samples.lengths.tolist() == [1, 2, 1]
    assert samples.long_sequence.tolist() == [1, 2, 3, 6]  # no validation or test item


def test_the_student_starts_from_the_encoder_without_the_mask_tokens_row():
    torch.manual_seed(0)
    module = S3RecPretraining(n_items=5, max_len=4, config=SMALL, n_attributes=2)
    state = student_state(module.state_dict(), 5)
    assert state["item_embedding.weight"].shape == (6, SMALL.embedding_size)
    student = build_model("sasrec", 5, 4, **{k: getattr(SMALL, k) for k in ("embedding_size", "inner_size")},
                          dropout=0.0, attention_dropout=0.0)
    student.load_state_dict(state)  # every key, every shape
    assert torch.equal(student.item_embedding.weight, module.encoder.item_embedding.weight[:6])


# ---- jobs: the key, the artifact, fine-tuning ----------------------------------------------------

def s3rec_jobs(config: DataConfig, seed=0, params=None, settings=TeacherSettings(), **train):
    base = base_job(config, "sasrec", TrainConfig(layout="sequence", seed=seed, **train),
                    {"embedding_size": 8, "inner_size": 16})
    job = student_job("s3rec", base, params or {}, settings)
    return job, job.teachers[0]


def test_the_pretraining_key_follows_its_own_settings_only(tiny_data_config, tmp_path):
    config = DataConfig(**{**tiny_data_config.__dict__, "attributes": str(write_attributes(tmp_path / "a.json", range(6)))})
    job, pretraining = s3rec_jobs(config)
    assert pretraining.objective == PRETRAINING and pretraining.role == "pretraining"
    assert dict(pretraining.params) == S3REC_DEFAULTS and set(GRID_PARAMS["s3rec"]) == set(S3REC_DEFAULTS)
    assert dependencies(job) == [pretraining] and job.objective == "s3rec" and job.role == "student"
    # shared: another seed, other fine-tuning epochs, batch or patience
    for other_job, other in (s3rec_jobs(config, seed=1), s3rec_jobs(config, max_epochs=7, batch_size=32, patience=2)):
        assert other.key == pretraining.key and other_job.key != job.key
    # its own: each weight, the mask ratio, epochs, batch, learning rate, model and attribute file
    changed = [s3rec_jobs(config, params={"aap_weight": 1.0})[1], s3rec_jobs(config, params={"mask_ratio": 0.3})[1],
               s3rec_jobs(config, settings=TeacherSettings(pretrain_epochs=2))[1],
               s3rec_jobs(config, settings=TeacherSettings(pretrain_batch_size=50))[1],
               s3rec_jobs(config, learning_rate=5e-4)[1]]
    write_attributes(tmp_path / "b.json", range(1, 6))
    changed.append(s3rec_jobs(DataConfig(**{**config.__dict__, "attributes": str(tmp_path / "b.json")}))[1])
    assert len({pretraining.key, *(j.key for j in changed)}) == len(changed) + 1
    assert pretraining.stream_seed != 0  # not the seed-0 Base model's initial weights
    # the attribute file keys S3Rec's pretraining only: a Base model's key ignores it
    assert base_job(config, "sasrec", TrainConfig()).key == base_job(tiny_data_config, "sasrec", TrainConfig()).key


def test_pretrained_once_then_reused_and_fine_tuning_starts_from_it(tmp_path, smoke_attributes):
    config = DataConfig(path=str(SMOKE_DATA), max_len=8, attributes=str(smoke_attributes))
    settings = TeacherSettings(pretrain_epochs=1, pretrain_batch_size=64)
    job, pretraining = s3rec_jobs(config, settings=settings, progress=False, num_threads=1, device="cpu")
    store = Store(tmp_path / "store")
    result = train_job(pretraining, store, tmp_path / "work")
    assert [h["epoch"] for h in result["history"]] == [1] and result["attribute_coverage"] == 1.0
    stamp = store.meta(MODELS, pretraining.key)["created"]
    train_job(pretraining, store, tmp_path / "work")  # by key: nothing trained again
    assert store.meta(MODELS, pretraining.key)["created"] == stamp
    saved = torch.load(store.path(MODELS, pretraining.key) / "model.pt", weights_only=True)
    student = build_model("sasrec", saved["n_items"], 8, embedding_size=8, inner_size=16)
    initialise(job, student, store)
    expected = student_state(saved["state_dict"], saved["n_items"])
    assert all(torch.equal(student.state_dict()[k], v) for k, v in expected.items())
    fresh = build_model("sasrec", saved["n_items"], 8, embedding_size=8, inner_size=16)
    initialise(s3rec_jobs(config)[0].teachers[0], fresh, store)  # not s3rec's fine-tuning: left as built
    assert not torch.equal(fresh.item_embedding.weight, student.item_embedding.weight)


# ---- fine-tuning: the authors' BCE or cross entropy ----------------------------------------------

def test_finetuning_bce_is_the_authors_pointwise_loss_with_one_negative():
    # positive 0 and negative 0: ln 2 each; positive ln 3 (p = 3/4) and negative -ln 3 (p = 1/4): -ln(3/4) each
    loss = finetuning_bce(torch.tensor([0.0, math.log(3)]), torch.tensor([0.0, -math.log(3)]))
    assert loss.item() == pytest.approx((2 * math.log(2) + 2 * math.log(4 / 3)) / 2, abs=1e-6)
    # limiting case: a confident, right model costs nothing
    assert finetuning_bce(torch.tensor([40.0]), torch.tensor([-40.0])).item() < 1e-12


def test_finetuning_negatives_lie_outside_the_users_whole_sequence_uniformly():
    """The authors draw outside set(items), the user's whole sequence: validation and test items too."""
    torch.manual_seed(0)
    sequences = [np.array([1, 2, 3, 4, 5, 6, 7, 8]), np.array([9, 10, 1, 2])]  # items 1..10
    objective = FineTuningBCE(sequences, np.array([0, 0, 0, 0, 0, 1, 1]), n_items=10)
    index = torch.tensor([0, 1, 2, 3, 4] * 4000)  # pairs of sequence 0: only 9 and 10 are outside
    draws = objective.negatives(index)
    assert set(draws.tolist()) == {9, 10} and (draws == 9).float().mean().item() == pytest.approx(0.5, abs=0.02)
    draws = objective.negatives(torch.tensor([5, 6] * 4000))  # sequence 1: the six items 3..8
    assert set(draws.tolist()) == set(range(3, 9))


def test_finetuning_bce_reads_the_targets_and_negatives_scores():
    data = make_sequence_data(n_sequences=12, max_len=6, seed=2)
    train = training_sequences(data)
    objective = FineTuningBCE(data.sequences, pair_sequences(train), data.n_items)
    batch = next(TrainingData(train, torch.device("cpu")).batches(5, "sequences", 0, 1))
    logits = torch.randn(len(batch.targets), data.n_items + 1)
    torch.manual_seed(1)
    loss = objective(logits, batch)
    torch.manual_seed(1)
    negative = objective.negatives(batch.index)
    rows = torch.arange(len(batch.targets))
    expected = -(torch.log(torch.sigmoid(logits[rows, batch.targets])) + torch.log(1 - torch.sigmoid(logits[rows, negative])))
    assert loss.item() == pytest.approx(expected.mean().item(), rel=1e-5)
    # pair numbers map to their sequences: no negative is an item of its pair's sequence
    sequence = pair_sequences(train)[batch.index.numpy()]
    assert all(int(n) not in set(data.sequences[s].tolist()) for n, s in zip(negative, sequence))


def test_s3rec_fine_tunes_with_bce_by_default_and_ce_keeps_the_first_versions_keys(tiny_data_config, tmp_path):
    config = DataConfig(**{**tiny_data_config.__dict__, "attributes": str(write_attributes(tmp_path / "a.json", range(6)))})
    bce, pretraining = s3rec_jobs(config)
    ce, same_pretraining = s3rec_jobs(config, settings=TeacherSettings(s3rec_finetuning="ce"))
    assert dict(bce.options) == {"finetuning": "bce"} and ce.options == () and pretraining.key == same_pretraining.key
    assert bce.key != ce.key
    splits = splits_for(bce)
    assert isinstance(build_objective(bce, splits, None, "cpu"), FineTuningBCE)
    assert type(build_objective(ce, splits, None, "cpu")).__name__ == "CrossEntropy"


def test_the_trial_record_and_the_tables_config_name_the_finetuning_objective(tmp_path, smoke_attributes):
    from analysis.collect import _tidy
    spec = load_spec(write_smoke_spec(tmp_path, "s", models=["sasrec"], methods=["s3rec"], model_overrides={},
                                      datasets={"smoke": {"path": str(SMOKE_DATA), "max_len": 8,
                                                          "attributes": str(smoke_attributes)}},
                                      train={"layout": "sequence", "max_epochs": 1}))
    (trial,) = make_plan(spec).trials
    record = trial.record()
    assert record["finetuning"] == "bce"
    _, trials = _tidy([record | {"valid": {}, "test": {}}])
    assert trials["config"].tolist()[0].endswith("finetuning=bce")


# ---- the authors' published checkpoint ------------------------------------------------------------

AUTHORS_CHECKPOINT = ROOT.parent / "shared" / "data" / "s3rec_beauty_epochs_150.pt"


@pytest.mark.skipif(not AUTHORS_CHECKPOINT.is_file(), reason="needs ../shared/data/s3rec_beauty_epochs_150.pt")
def test_the_authors_beauty_checkpoint_loads_into_our_sasrec(monkeypatch, tmp_path):
    from csrec import datasets
    from csrec.data import load_sequence_data
    from csrec.s3rec import authors_student_state
    monkeypatch.setenv("CSREC_DATA", str(AUTHORS_CHECKPOINT.parent))
    path = datasets.resolve_checkpoint("s3rec-beauty")  # checked against the registered sha256
    authors = torch.load(path, weights_only=True)  # the legacy pickle holds tensors only
    data = load_sequence_data(DataConfig(path=str(AUTHORS_CHECKPOINT.parent / "beauty.txt"), protocol="user_loo",
                                         max_len=50))
    model = build_model("sasrec", data.n_items, 50, inner_size=256, end_aligned_positions=1)
    model.load_state_dict(authors_student_state(authors, data.item_tokens))  # strict: every weight, right shapes
    token = int(data.item_tokens[7])
    assert torch.equal(model.item_embedding.weight[7], authors["item_embeddings.weight"][token])
    assert torch.equal(model.layers[1].qkv.weight[64:128], authors["item_encoder.layer.1.attention.key.weight"])
    assert torch.equal(model.layers[0].ffn_norm.bias, authors["item_encoder.layer.0.intermediate.LayerNorm.bias"])
    # a fine-tuning job from it: no pretraining job, the checkpoint's name in its key, weights loaded
    config = DataConfig(path=str(AUTHORS_CHECKPOINT.parent / "beauty.txt"), protocol="user_loo", max_len=50)
    base = base_job(config, "sasrec", TrainConfig(layout="sequence"), {"inner_size": 256, "end_aligned_positions": 1})
    job = student_job("s3rec", base, {}, TeacherSettings(s3rec_pretrained="s3rec-beauty"))
    assert job.teachers == () and job.option("pretrained") == "s3rec-beauty" and job.option("finetuning") == "bce"
    fresh = build_model("sasrec", data.n_items, 50, inner_size=256, end_aligned_positions=1)
    initialise(job, fresh, Store(tmp_path / "store"))
    assert torch.equal(fresh.position_embedding.weight, authors["position_embeddings.weight"])
    with pytest.raises(CSRecError, match="inner_size: 256, end_aligned_positions: 1"):
        initialise(job, build_model("sasrec", data.n_items, 50), Store(tmp_path / "store"))


def test_a_missing_checkpoint_offline_says_where_to_get_it(monkeypatch, tmp_path):
    from csrec import datasets
    monkeypatch.setenv("CSREC_DATA", str(tmp_path))
    source = datasets.CHECKPOINTS["s3rec-beauty"]
    monkeypatch.setitem(datasets.CHECKPOINTS, "s3rec-beauty",
                        datasets.Source(source.file, "http://127.0.0.1:9/Beauty-epochs-150.pt", source.sha256, source.size))
    with pytest.raises(CSRecError, match="by hand and put it at .*s3rec_beauty_epochs_150.pt"):
        datasets.resolve_checkpoint("s3rec-beauty")
    assert list(tmp_path.iterdir()) == []  # nothing partial left
    with pytest.raises(CSRecError, match="not a registered checkpoint"):
        datasets.resolve_checkpoint("bert")


def test_end_aligned_positions_are_the_authors_left_padding_positions():
    m = build_model("sasrec", 10, 6, embedding_size=8, inner_size=16, end_aligned_positions=1)
    items = torch.tensor([[3, 4, 0, 0], [1, 2, 3, 4]])
    assert m.positions(items).tolist() == [[4, 5, 5, 5], [2, 3, 4, 5]]  # the last item at max_len - 1
    assert build_model("sasrec", 10, 6, embedding_size=8, inner_size=16).positions(items).tolist() == [0, 1, 2, 3]


# ---- cut batches: the padded computation's losses over fewer positions ----------------------------

def varied_batch(mask_item: int):
    """A batch of 30 prefixes of lengths 1..10 at width max_len 10 (some rows full), masks, negatives
    and segments drawn at full width as `pretrain` draws them; its data."""
    data = dataclasses.replace(make_sequence_data(n_sequences=40, n_items=30, max_len=14, seed=5), max_len=10)
    samples = pretraining_data(data)
    rows = torch.randperm(len(samples), generator=torch.Generator().manual_seed(0))[:30]
    batch = sample_batch(samples.prefixes[rows], samples.lengths[rows], samples.long_sequence, mask_item, 0.3,
                         torch.Generator().manual_seed(1))
    return batch, data


def random_attributes(n_items: int) -> torch.Tensor:
    attributes = torch.zeros(n_items + 1, 5, dtype=torch.bool)  # [n_items + 1, A + 1]; column 0 padding
    attributes[1:, 1:] = torch.rand(n_items, 4, generator=torch.Generator().manual_seed(2)) < 0.4
    return attributes


@pytest.mark.parametrize("end_aligned", [0, 1])
def test_a_batch_cut_into_length_groups_has_the_padded_batchs_losses_and_gradients(end_aligned):
    config = dataclasses.replace(SMALL, end_aligned_positions=end_aligned)
    torch.manual_seed(0)
    module = S3RecPretraining(30, 10, config, n_attributes=4)
    batch, _ = varied_batch(module.mask_item)
    attributes = random_attributes(30)
    groups = length_groups(batch.lengths, group_cost=4)
    parts = [cut(batch, g) for g in groups]
    assert sorted(torch.cat(groups).tolist()) == list(range(30))  # every row once
    assert [p.items.shape[1] for p in parts] == [int(p.lengths.max()) for p in parts]
    assert len(parts) >= 3 and parts[-1].items.shape[1] == 10 and parts[0].items.shape[1] < 5
    assert sum(p.items.numel() for p in parts) < 0.75 * batch.items.numel()

    def losses_and_gradients(given):
        module.zero_grad()
        losses = module.losses(given, attributes)
        total_loss(losses, S3REC_DEFAULTS).backward()
        return {k: v.item() for k, v in losses.items()}, [p.grad.clone() for p in module.parameters()]

    padded, padded_gradients = losses_and_gradients(batch)
    grouped, grouped_gradients = losses_and_gradients(parts)
    assert min(padded.values()) > 0.01 and grouped == pytest.approx(padded, rel=1e-5)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(grouped_gradients, padded_gradients))
    assert module.losses(cut(batch), attributes)["sp"].item() == pytest.approx(padded["sp"], rel=1e-5)


def test_a_cut_rows_items_sit_at_the_positions_of_the_authors_left_padding():
    torch.manual_seed(0)
    module = S3RecPretraining(30, 10, dataclasses.replace(SMALL, end_aligned_positions=1), n_attributes=4).eval()
    encoder = module.encoder
    batch, _ = varied_batch(module.mask_item)
    part = cut(batch, length_groups(batch.lengths, group_cost=4)[0])  # the shortest prefixes
    n = part.lengths  # [B]
    # the authors' row: the items at the right end of max_len columns, position index = column
    left = torch.zeros(len(n), 10, dtype=torch.long)
    for r, length in enumerate(n.tolist()):
        left[r, 10 - length:] = part.masked_items[r, :length]
    real = left > 0
    with torch.no_grad():
        x = encoder.embedding_norm(encoder.item_embedding(left) + encoder.position_embedding(torch.arange(10)))
        for layer in encoder.layers:
            x = layer(x, real)  # [B, 10, H], bidirectional over the real keys as the authors' pretraining
        ours = module.encode(part.masked_items)  # [B, width, H]
    column = torch.arange(part.items.shape[1])
    for r, length in enumerate(n.tolist()):
        assert encoder.positions(part.masked_items)[r, :length].tolist() == list(range(10 - length, 10))
        assert torch.allclose(ours[r, :length], x[r, 10 - length:], atol=1e-5)
    assert part.items.shape[1] < 10 and not (part.items[column >= n[:, None]]).any()


def test_length_groups_minimise_positions_plus_the_cost_of_a_group():
    lengths = torch.tensor([1] * 20 + [50])
    assert [g.tolist() for g in length_groups(lengths, group_cost=100)] == [list(range(20)), [20]]  # 270 < 1,150
    assert [g.tolist() for g in length_groups(lengths, group_cost=2000)] == [list(range(21))]
    assert [g.tolist() for g in length_groups(torch.tensor([3, 1, 3, 2]), 0)] == [[1], [3], [0, 2]]
    generator = torch.Generator().manual_seed(0)
    for cost in (0, 3, 10, 40):
        lengths = torch.randint(1, 9, (15,), generator=generator)
        values = sorted(set(lengths.tolist()))

        def cost_of(groups):
            return sum(len(g) * int(lengths[g].max()) + cost for g in groups)

        def every_split(k):  # every grouping of the distinct lengths into runs: its smallest cost
            best = math.inf
            for mask in range(2 ** (k - 1)):
                bounds = [0] + [i + 1 for i in range(k - 1) if mask >> i & 1] + [k]
                best = min(best, sum(int(((lengths >= values[a]) & (lengths <= values[b - 1])).sum()) * values[b - 1]
                                     + cost for a, b in zip(bounds, bounds[1:])))
            return best

        assert cost_of(length_groups(lengths, cost)) == every_split(len(values))


def test_pretraining_on_cut_batches_ends_as_the_padded_pretraining(tmp_path):
    data = dataclasses.replace(make_sequence_data(n_sequences=20, n_items=15, max_len=14, seed=3), max_len=10)
    samples = pretraining_data(data)
    attributes = random_attributes(data.n_items)
    config = TrainConfig(max_epochs=2, batch_size=16, seed=4, device="cpu")
    runs = {}
    for cut_batches in (False, True):
        torch.manual_seed(0)
        module = S3RecPretraining(data.n_items, data.max_len, dataclasses.replace(SMALL, end_aligned_positions=1), 4)
        history = pretrain(module, samples, attributes, S3REC_DEFAULTS, config, tmp_path / f"{cut_batches}.pt",
                           log=lambda _: None, cut_batches=cut_batches)
        runs[cut_batches] = module, history
    (padded, padded_history), (grouped, grouped_history) = runs[False], runs[True]
    for a, b in zip(padded_history, grouped_history):  # the same masks each epoch: the same losses
        assert b.losses == pytest.approx(a.losses, rel=1e-5)
    assert padded_history[1].losses["total"] < padded_history[0].losses["total"]
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(padded.state_dict().values(),
                                                               grouped.state_dict().values()))


# ---- attributes: missing or malformed --------------------------------------------------------------

def test_s3rec_without_attributes_is_refused_saying_what_to_add(tmp_path, tiny_data_config):
    with pytest.raises(CSRecError, match=r"datasets.smoke: s3rec pretrains on item attributes.*add `attributes:"):
        load_spec(write_smoke_spec(tmp_path, "s", models=["sasrec"], methods=["base", "s3rec"]))
    with pytest.raises(CSRecError, match="launch.py train --attributes"):
        s3rec_jobs(tiny_data_config)
    load_spec(write_smoke_spec(tmp_path, "g", methods=["base", "s3rec"]))  # gru4rec only: no s3rec cell, no need


@pytest.mark.parametrize("text, names", [
    ("{not json", ["is not JSON"]),
    ("[1, 2]", ["JSON list", "one non-empty object"]),
    ('{"1": 3}', ["item '1' has 3", "list of integer"]),
    ('{"1": [1, "a"]}', ["list of integer"]),
    ('{"1": [0, 2]}', ["attribute id 0", "start at 1"]),
    ('{"1": [], "2": []}', ["gives no item any attribute"]),
])
def test_malformed_attribute_files_are_refused_at_spec_load(tmp_path, text, names):
    (tmp_path / "bad.json").write_text(text)
    spec = write_smoke_spec(tmp_path, "s", models=["sasrec"], methods=["s3rec"])
    raw = yaml.safe_load(spec.read_text())
    raw["datasets"]["smoke"]["attributes"] = "bad.json"  # relative: against the spec's folder
    spec.write_text(yaml.safe_dump(raw))
    read_attribute_file.cache_clear()
    with pytest.raises(CSRecError) as error:
        load_spec(spec)
    assert "datasets.smoke.attributes" in str(error.value) and all(n in str(error.value) for n in names), str(error.value)


def test_an_attribute_file_of_other_items_is_refused(tmp_path):
    path = write_attributes(tmp_path / "other.json", [7, 8])
    with pytest.raises(CSRecError, match="lists none of the data's 3 items"):
        item_attributes(str(path), np.array(["[PAD]", "1", "2", "3"], dtype=object))
    read_attribute_file.cache_clear()
    found = item_attributes(str(write_attributes(tmp_path / "some.json", ["1", "3"])),
                            np.array(["[PAD]", "1", "2", "3"], dtype=object))
    assert found.coverage == pytest.approx(2 / 3) and not found.labels[2].any() and not found.labels[0].any()
    assert found.labels[1].nonzero()[0].tolist() == [2, 5]


# ---- the runner and the command line ---------------------------------------------------------------

def s3rec_spec(tmp_path, attributes, **changes) -> Path:
    spec = write_smoke_spec(tmp_path, "s3", **({
        "models": ["sasrec"], "methods": ["base", "s3rec"], "seeds": [0, 1],
        "search": {"s3rec": {"aap_weight": [0.2], "mask_ratio": [0.2]}},
        "model_overrides": {"sasrec": {"embedding_size": 8, "inner_size": 16}},
        "teachers": {"pretrain_epochs": 1, "pretrain_batch_size": 64},
        "train": {"max_epochs": 1, "layout": "sequence", "batch_unit": "sequences", "batch_size": 64,
                  "progress": False, "num_threads": 1}} | changes))
    raw = yaml.safe_load(spec.read_text())
    raw["datasets"]["smoke"]["attributes"] = str(attributes)
    spec.write_text(yaml.safe_dump(raw))
    return spec


def test_plan_leaves_sasrec_only_methods_out_of_other_models_and_says_so(tmp_path, smoke_attributes):
    plan = make_plan(load_spec(s3rec_spec(tmp_path, smoke_attributes, models=["gru4rec", "sasrec"],
                                          methods=["base", "elecrec", "s3rec"])))
    assert {t.cell[1:] for t in plan.trials} == {("gru4rec", "base"), ("sasrec", "base"), ("sasrec", "elecrec"),
                                                 ("sasrec", "s3rec")}
    assert plan.notes == ["elecrec is defined over sasrec only: no elecrec cells for gru4rec",
                          "s3rec is defined over sasrec only: no s3rec cells for gru4rec"]
    assert [j.objective for j in plan.teachers].count(PRETRAINING) == 1


def test_a_local_run_pretrains_once_and_fine_tunes_two_seeds_from_it(tmp_path, smoke_attributes):
    lines = []
    assert run_experiment(s3rec_spec(tmp_path, smoke_attributes), local=True, table=False, log=lines.append) == 0
    store = Store(tmp_path / "s3" / "store")
    objectives = {k: json.loads((store.path(MODELS, k) / "config.json").read_text()) for k in store.keys(MODELS)}
    pretrained = [k for k, c in objectives.items() if c["objective"] == PRETRAINING]
    students = [c for c in objectives.values() if c["objective"] == "s3rec"]
    assert len(pretrained) == 1 and len(students) == 2
    assert all(c["teachers"] == pretrained for c in students) and students[0]["train"]["seed"] != students[1]["train"]["seed"]
    records = [json.loads((store.path("trials", k) / "result.json").read_text()) for k in store.keys("trials")]
    assert sorted((r["method"], r["seed"], r["stage"]) for r in records if r["method"] == "s3rec") == [
        ("s3rec", 0, "search"), ("s3rec", 1, "seeds")]
    assert any("teachers: 0 of 3 in the store, 3 to train" in line for line in lines)  # 2 Base runs + 1 pretraining


def _train(tmp_path, *extra):
    return ["train", "--data", str(SMOKE_DATA), "--model", "sasrec", "--out", str(tmp_path / "out"),
            "--store", str(tmp_path / "store"), "--max-len", "8", "--epochs", "1", "--device", "cpu",
            "--threads", "1", "--layout", "sequence", "--batch-unit", "sequences", *extra]


def test_launch_train_method_s3rec(tmp_path, capsys, smoke_attributes):
    args = _train(tmp_path, "--method", "s3rec", "--attributes", str(smoke_attributes), "--pretrain-epochs", "1",
                  "--pretrain-batch-size", "64", "--aap-weight", "1.0", "--mip-weight", "0.2")
    assert launch.main(args) == 0
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["job"]["objective"] == "s3rec" and len(config["job"]["teachers"]) == 1
    pretrained = json.loads((tmp_path / "store" / "models" / config["job"]["teachers"][0] / "config.json").read_text())
    assert pretrained["params"] == S3REC_DEFAULTS | {"aap_weight": 1.0, "mip_weight": 0.2}
    assert pretrained["train"]["max_epochs"] == 1 and pretrained["train"]["batch_size"] == 64
    assert "s3rec-pretraining" in capsys.readouterr().out


@pytest.mark.parametrize("extra, names", [
    (["--method", "s3rec"], ["attributes", "--attributes"]),
    (["--method", "base", "--mask-ratio", "0.5"], ["--mask-ratio", "--method base"]),
    (["--method", "s3rec", "--attributes", "nowhere.json"], ["--attributes nowhere.json", "no file"]),
])
def test_launch_train_s3rec_mistakes_exit_2(tmp_path, capsys, extra, names):
    assert launch.main(_train(tmp_path, *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(name in err[0] for name in names), err
    assert not (tmp_path / "out").exists()


def test_pretraining_resumed_from_its_epoch_checkpoint_ends_as_an_uninterrupted_run(tmp_path):
    data = make_sequence_data(n_sequences=12, n_items=9, max_len=6, seed=3)
    samples = pretraining_data(data)
    attributes = torch.zeros(data.n_items + 1, 4, dtype=torch.bool)
    attributes[1:, 1:] = torch.rand(data.n_items, 3, generator=torch.Generator().manual_seed(0)) < 0.5
    with_dropout = SASRecConfig(embedding_size=8, num_heads=2, inner_size=16)  # dropout 0.3: its stream counts too

    class Stop(Exception):
        pass

    def run(checkpoint, stop_after=None, epochs=2):
        torch.manual_seed(0)
        module = S3RecPretraining(data.n_items, data.max_len, with_dropout, 3)
        config = TrainConfig(max_epochs=epochs, batch_size=5, seed=4, device="cpu")

        def log(line):  # called after each epoch's checkpoint is written
            if stop_after is not None and line.startswith(f"pretraining epoch {stop_after:3d}"):
                raise Stop

        return module, pretrain(module, samples, attributes, S3REC_DEFAULTS, config, checkpoint, log)

    whole, history = run(tmp_path / "a.pt")
    with pytest.raises(Stop):
        run(tmp_path / "b.pt", stop_after=1)  # killed after epoch 1
    resumed, again = run(tmp_path / "b.pt")
    assert [h.epoch for h in history] == [1, 2] and [h.losses for h in again] == [h.losses for h in history]
    assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()))
    with pytest.warns(UserWarning, match="cannot be used"):  # another run's checkpoint (3 epochs): discarded
        run(tmp_path / "b.pt", epochs=3)
    assert history[0].losses["total"] == pytest.approx(
        sum(S3REC_DEFAULTS[f"{k}_weight"] * history[0].losses[k] for k in ("aap", "mip", "map", "sp")), rel=1e-6)


def test_a_non_finite_pretraining_loss_stops_naming_epoch_and_batch_and_keeps_the_earlier_epoch(tmp_path,
                                                                                                monkeypatch):
    from csrec.errors import NonFiniteLossError
    data = make_sequence_data(n_sequences=12, n_items=9, max_len=6, seed=3)
    samples = pretraining_data(data)
    attributes = torch.zeros(data.n_items + 1, 4, dtype=torch.bool)
    attributes[1:, 1] = True
    module = S3RecPretraining(data.n_items, data.max_len, SMALL, 3)
    calls = {"n": 0}
    real = S3RecPretraining.losses

    def spoiled(self, batch, attrs):  # NaN in the 2nd epoch's 2nd batch
        calls["n"] += 1
        losses = real(self, batch, attrs)
        if calls["n"] == per_epoch + 2:
            losses["mip"] = losses["mip"] * float("nan")
        return losses

    per_epoch = math.ceil(len(samples) / 5)
    monkeypatch.setattr(S3RecPretraining, "losses", spoiled)
    config = TrainConfig(max_epochs=3, batch_size=5, seed=4, device="cpu")
    with pytest.raises(NonFiniteLossError, match="loss is nan at epoch 2, batch 2: lower train.learning_rate"):
        pretrain(module, samples, attributes, S3REC_DEFAULTS, config, tmp_path / "p.pt", log=lambda _: None)
    saved = torch.load(tmp_path / "p.pt", weights_only=True)  # the checkpoint holds epoch 1 only
    assert [h["epoch"] for h in saved["history"]] == [1]
