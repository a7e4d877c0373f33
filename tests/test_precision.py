"""train.precision (csrec.precision): a bf16 step computes the fp32 step's loss within bfloat16's
rounding, for every model and every soft-label objective; the losses, soft labels, teachers and
ranking stay float32; an unsupported precision is refused with what is available; a bf16 model has
its own key and fp32 keys are those made before the option.

Needs a CPU with bfloat16 arithmetic for the bf16 steps (skipped elsewhere); the refusals run anywhere.
"""

from __future__ import annotations

import dataclasses
import json
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import make_sequence_data
from csrec import losses, precision
from csrec.batching import TrainingData, batch_logits, training_loss
from csrec.config import TeacherSettings
from csrec.data.splits import training_data, validation_samples
from csrec.errors import CSRecError
from csrec.evaluate import rank_targets
from csrec.methods import base_job, student_job
from csrec.models import build_model
from csrec.objectives import CrossEntropy, FrozenTeachers, SoftLabelStudent, TrainingLevelTeacher, popularity_teacher
from csrec.train import TrainConfig, fit

needs_bf16 = pytest.mark.skipif(not precision.cpu_has_bf16(), reason="this CPU has no bfloat16 arithmetic")

MODELS = ("gru4rec", "nextitnet", "narm", "sasrec")
OBJECTIVES = ("ce", "csrec-m", "mean_probs", "paper", "softrec", "csrec-t")
# bfloat16 keeps 8 significant bits (relative rounding 2^-9 = 0.2%); the sums over the catalogue
# are float32, so a batch's loss moves by far less. Measured: at most 2e-4 relative (NextItNet),
# gradient cosine >= 0.9997 on these batches; the bounds leave a 10x margin.
LOSS_RTOL = 2e-3
GRADIENT_COSINE = 0.997


@pytest.fixture(scope="module")
def setting():
    """A 400-item catalogue, the sequence layout's first batch of 128 targets, two teachers."""
    data = make_sequence_data(n_sequences=60, n_items=400, max_len=20)
    train = training_data(data, "sequence")
    batch = next(iter(TrainingData(train, "cpu").batches(128, "targets", 0, 1)))
    return data, train, batch


def _sharp(model):
    """Logits of a trained model's scale (about +-10), not an initialisation's (about +-0.1): the
    low precision's rounding grows with them."""
    with torch.no_grad():
        model.item_embedding.weight.mul_(8.0)
    return model.eval()  # no dropout: the two passes differ by their precision only


def _objective(name, data, train, teachers):
    if name == "ce":
        return CrossEntropy()
    if name == "softrec":
        counts = torch.as_tensor(np.bincount(np.concatenate(data.sequences), minlength=data.n_items + 1), dtype=torch.float32)
        return SoftLabelStudent(0.5, 3.0, popularity=popularity_teacher(counts))
    if name == "csrec-t":
        return TrainingLevelTeacher(FrozenTeachers(teachers[:1], train), data.n_items, alpha=0.5)
    options = {"csrec-m": {}, "mean_probs": {"ensemble": "mean_probs"}, "paper": {"kl_direction": "paper"}}[name]
    return SoftLabelStudent(0.5, 3.0, teacher=FrozenTeachers(teachers, train), **options)


@needs_bf16
@pytest.mark.parametrize("model_name", MODELS)
def test_bf16_step_loss_and_gradient_match_fp32(setting, model_name):
    data, train, batch = setting
    torch.manual_seed(0)
    teachers = [_sharp(build_model(model_name, data.n_items, data.max_len)) for _ in range(2)]
    model = _sharp(build_model(model_name, data.n_items, data.max_len))
    for name in OBJECTIVES:
        objective = _objective(name, data, train, teachers)
        full = training_loss(model, objective, batch)
        (g_full,) = torch.autograd.grad(full, model.item_embedding.weight)
        with precision.autocast("bf16", "cpu"):
            assert batch_logits(model, batch).dtype == torch.bfloat16  # the output layer does run in bf16
            mixed = training_loss(model, objective, batch)
        (g_mixed,) = torch.autograd.grad(mixed, model.item_embedding.weight)
        assert mixed.dtype == torch.float32 and g_mixed.dtype == torch.float32
        assert mixed.item() == pytest.approx(full.item(), rel=LOSS_RTOL), name
        assert mixed.item() != full.item(), name  # it ran in another precision, not silently in fp32
        assert F.cosine_similarity(g_full.flatten(), g_mixed.flatten(), dim=0) > GRADIENT_COSINE, name


class DtypeRecorder(TorchDispatchMode):
    """Every aten op of a pass with the dtypes of its floating-point inputs (after autocast's casts)."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        dtypes = {a.dtype for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()}
        self.ops.append((func.overloadpacket.__name__, dtypes))
        return func(*args, **(kwargs or {}))


SUMS_OVER_ITEMS = {"_log_softmax", "_softmax", "logsumexp", "sum", "mean", "xlogy", "special_entr", "exp", "log"}


@needs_bf16
@pytest.mark.parametrize("name", ["csrec-m", "mean_probs", "paper", "softrec", "csrec-t"])
def test_float32_parts_stay_float32_under_bf16(setting, name):
    data, train, batch = setting
    torch.manual_seed(0)
    teachers = [_sharp(build_model("sasrec", data.n_items, data.max_len)) for _ in range(2)]
    model = _sharp(build_model("sasrec", data.n_items, data.max_len))
    objective = _objective(name, data, train, teachers)
    recorder = DtypeRecorder()
    with precision.autocast("bf16", "cpu"), recorder:
        loss = training_loss(model, objective, batch)
    assert loss.dtype == torch.float32
    low = [op for op, dtypes in recorder.ops if torch.bfloat16 in dtypes]
    assert "mm" in low or "addmm" in low  # the model's products
    assert not SUMS_OVER_ITEMS & set(low), SUMS_OVER_ITEMS & set(low)  # every softmax, log, sum in float32
    teacher = getattr(objective, "teacher", None) or getattr(objective, "side", None)
    if teacher is not None:  # the teachers' cached representations and items
        assert teacher.hidden.dtype == teacher.items.dtype == torch.float32
    if isinstance(objective, SoftLabelStudent) and objective.kl_direction == "reference":
        assert objective.self_information.dtype == torch.float32  # computed at the first (bf16) step
        if objective.probability_table is not None:
            assert objective.probability_table.dtype == torch.float32


@pytest.mark.parametrize("function, args", [
    (losses.cross_entropy, (torch.tensor([[0.1, 2.0, -1.0, 0.5]]), torch.tensor([1]))),
    (losses.tempered_log_softmax, (torch.tensor([[0.1, 2.0, -1.0, 0.5]]), 3.0)),
    (losses.tempered_softmax, (torch.tensor([[0.1, 2.0, -1.0, 0.5]]), 3.0)),
])
def test_losses_compute_in_float32_under_autocast(function, args):
    """Given bfloat16 inputs inside an autocast (CPU autocast alone would keep softmax in bfloat16),
    a loss returns float32 equal to the float32 computation on the same (rounded) values."""
    rounded = (args[0].bfloat16(),) + args[1:]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = function(*rounded)
    assert mixed.dtype == torch.float32
    assert torch.equal(mixed, function(rounded[0].float(), *args[1:]))


def test_ranking_is_float32_under_autocast(setting):
    """Evaluation inside an autocast (as a caller might) ranks as in float32: the same ranks and ties."""
    data, _, _ = setting
    torch.manual_seed(0)
    model = _sharp(build_model("sasrec", data.n_items, data.max_len))
    samples = validation_samples(data)
    plain = rank_targets(model, samples, exclude_history=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = rank_targets(model, samples, exclude_history=False)
    assert np.array_equal(plain[0], inside[0]) and np.array_equal(plain[1], inside[1])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # what ranking bf16 scores would give
        scores = model(torch.as_tensor(samples.item_seq), torch.as_tensor(samples.lengths))
    assert scores.dtype == torch.bfloat16


@needs_bf16
def test_fit_in_bf16_trains_float32_weights(setting):
    data, train, _ = setting
    losses_by_precision = {}
    for name in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = build_model("gru4rec", data.n_items, data.max_len)
        config = TrainConfig(max_epochs=2, batch_size=128, device="cpu", progress=False, precision=name)
        result = fit(model, train, lambda m: 0.0, config)
        assert all(p.dtype == torch.float32 for p in model.parameters())
        losses_by_precision[name] = [r.train_loss for r in result.history]
    assert losses_by_precision["bf16"] == pytest.approx(losses_by_precision["fp32"], rel=LOSS_RTOL)
    assert losses_by_precision["bf16"] != losses_by_precision["fp32"]


def test_refusals_name_what_is_available(monkeypatch, setting):
    with pytest.raises(CSRecError, match="one of fp32, bf16, fp16"):
        TrainConfig(precision="fp8")
    with pytest.raises(CSRecError, match="fp16 needs a CUDA device"):
        TrainConfig(precision="fp16", device="cpu")
    with pytest.raises(CSRecError, match=r"fp16 needs a CUDA device .*available on cpu: fp32"):
        precision.check_precision("fp16", "cpu")  # device auto resolved to the CPU
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    with pytest.raises(CSRecError, match=r"bf16 needs a CPU with bfloat16 arithmetic .*available on cpu: fp32$"):
        precision.check_precision("bf16", "cpu")
    data, train, _ = setting
    model = build_model("gru4rec", data.n_items, data.max_len)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CSRecError, match="bf16 needs a CPU"):  # before any step: nothing trained in fp32 instead
        fit(model, train, lambda m: 0.0, TrainConfig(max_epochs=1, device="cpu", progress=False, precision="bf16"))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("asked, without_bf16, says", [
    ("fp16", False, "fp16 needs a CUDA device"),
    ("bf16", True, "--precision bf16: train.precision bf16: bf16 needs a CPU with bfloat16 arithmetic"),
])
def test_cli_refuses_in_one_line_before_the_store(tmp_path, capsys, monkeypatch, asked, without_bf16, says):
    import launch
    if without_bf16:
        monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    data = tmp_path / "d.csv"
    data.write_text("session_id,item_id\n" + "".join(f"{u},{i}\n" for u in range(6) for i in range(6)))
    assert launch.main(["train", "--data", str(data), "--model", "gru4rec", "--out", str(tmp_path / "out"),
                        "--store", str(tmp_path / "store"), "--max-len", "5", "--user-min-count", "1",
                        "--item-min-count", "1", "--device", "cpu", "--precision", asked]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], lines
    assert not (tmp_path / "out").exists() and not (tmp_path / "store").exists()


# Keys of these jobs computed by commit 3106839, before train.precision existed: fp32 must keep
# naming the same stored models.
FP32_BASE_KEY = "af82c933619293e2f2a1"
FP32_STUDENT_KEY = "5ce7e1abec254687bf7c"


def test_precision_in_the_key_only_when_not_fp32(tiny_data_config):
    jobs = {}
    for name in ("fp32", "bf16", "fp16"):
        base = base_job(tiny_data_config, "sasrec", TrainConfig(precision=name))
        jobs[name] = (base, student_job("csrec-m", base, {"beta": 0.5, "temperature": 3.0}, TeacherSettings()))
    assert jobs["fp32"][0].key == FP32_BASE_KEY and jobs["fp32"][1].key == FP32_STUDENT_KEY
    assert "precision" not in jobs["fp32"][0].config()["train"]
    assert len({jobs[n][i].key for n in jobs for i in (0, 1)}) == 6
    assert jobs["bf16"][0].config()["train"]["precision"] == "bf16"  # config.json records it
    assert jobs["bf16"][1].describe().endswith(", bf16") and "fp32" not in jobs["fp32"][1].describe()
    # teachers train in the student's precision: their keys follow it too
    assert all(t.train.precision == "bf16" for t in jobs["bf16"][1].teachers)


def test_plan_records_the_precision(tmp_path):
    from conftest import write_smoke_spec
    from csrec.config import load_spec
    from csrec.runner.plan import make_plan, to_json

    spec = load_spec(write_smoke_spec(tmp_path, "p", train={"precision": "bf16", "max_epochs": 2}))
    plan = json.loads(to_json(make_plan(spec)))
    assert plan["precision"] == "bf16"
    assert all(row["job"].endswith(", bf16") for row in plan["trials"] + plan["teachers"])


def test_fp16_scaler_steps_and_resumes_exactly(setting, tmp_path, monkeypatch):
    """fp16's path (autocast, GradScaler, the scaler's state in the work checkpoint) run on the CPU,
    where torch has float16 autocast and a CPU GradScaler but train.precision refuses fp16 (slow):
    the machine check is lifted here only. Two epochs in one go equal one epoch, then a resume."""
    import csrec.train
    monkeypatch.setattr(csrec.train, "check_precision", lambda precision, device: None)
    data, train, _ = setting
    config = TrainConfig(max_epochs=2, batch_size=128, device="auto", progress=False, precision="fp16")

    def run(epochs, checkpoint):
        torch.manual_seed(0)
        model = build_model("sasrec", data.n_items, data.max_len)
        result = fit(model, train, lambda m: 0.0, dataclasses.replace(config, max_epochs=epochs), checkpoint_path=checkpoint)
        return model, result

    whole, whole_result = run(2, tmp_path / "whole.pt")
    run(1, tmp_path / "cut.pt")
    saved = torch.load(tmp_path / "cut.pt", weights_only=True)["scaler"]
    assert saved["scale"] > 0  # the loss scale is checkpointed
    resumed, resumed_result = run(2, tmp_path / "cut.pt")
    assert [r.train_loss for r in resumed_result.history] == [r.train_loss for r in whole_result.history]
    assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()))
