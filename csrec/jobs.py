"""Running one training job: data, model, objective, fit, evaluation, artifact in the store.

Shared by every way of running things (the `train` command, the local backend, Ray tasks and Tune
trials), so a Base model made by one is the same artifact for all. A job's model artifact
(`store/models/<key>/`) holds model.pt (weights and the resolved model config), config.json,
result.json (validation and test metrics, best epoch, history) and per_user.parquet. S3Rec's
pretraining artifact holds model.pt (the pretraining model's weights), config.json and result.json
(each epoch's losses): it is no recommender, and is only read to start S3Rec's fine-tuning.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import shutil
import time
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from csrec.data import DataConfig, load_sequence_data
from csrec.data.attributes import item_attributes
from csrec.data.protocols import subsample, train_item_counts
from csrec.data.samples import Samples, SequenceData, TrainSequences
from csrec.data.splits import test_samples, training_data, validation_samples
from csrec.datafiles import local_path
from csrec.elecrec import ELECRec
from csrec.errors import CSRecError, first_line
from csrec.evaluate import evaluate, history_before_target, validator
from csrec.methods import PRETRAINING, Job
from csrec.models import build_model, model_config
from csrec.objectives import CrossEntropy, FrozenTeachers, SoftLabelStudent, TrainingLevelTeacher, popularity_teacher
from csrec.s3rec import FineTuningBCE, S3RecPretraining, pair_sequences, pretrain, pretraining_data, student_state
from csrec.store import Store
from csrec.tensorboard import EpochScalars
from csrec.train import FitResult, device_record, fit, resolve_device, seed_everything

MODELS = "models"


@dataclasses.dataclass(frozen=True)
class Splits:
    data: SequenceData
    train: Samples | TrainSequences  # the training layout's form (csrec.data.splits.training_data)
    valid: Samples
    test: Samples


@lru_cache(maxsize=4)
def _load(data: DataConfig) -> SequenceData:
    """The data set, read from where this node has the driver's file (csrec.datafiles)."""
    return load_sequence_data(dataclasses.replace(data, path=local_path(data.path)))


def splits_for(job: Job) -> Splits:
    """The job's data: its training samples (a seeded p-subsample of sequences for data-level
    teachers), and the full validation and test samples."""
    data = _load(job.data)
    chosen = subsample(len(data.sequences), job.subsample_ratio, job.subsample_seed) if job.subsample_ratio < 1 else None
    train = training_data(data, job.train.layout, chosen)
    return Splits(data, train, validation_samples(data), test_samples(data))


def load_model(store: Store, job: Job, device: torch.device | str = "cpu") -> torch.nn.Module:
    """The trained model of `job` from the store; an error (never an untrained model) if absent."""
    folder = store.require(MODELS, job.key, f"the trained model for {job.describe()}")
    saved = _read_weights(folder / "model.pt", device)
    return _restored(job, saved["n_items"], saved["max_len"], saved["state_dict"], device)


def _restored(job: Job, n_items: int, max_len: int, state_dict: dict, device) -> torch.nn.Module:
    """`job`'s model built for the data's shape, holding `state_dict`, on `device`, in eval mode."""
    model = build_model(job.model, n_items, max_len, **dict(job.model_overrides))
    model.load_state_dict(state_dict)
    return model.to(device).eval()


def _read_weights(path: Path, device: torch.device | str = "cpu") -> dict:
    try:  # weights_only: a model in a shared (or reused) store must never run code when read
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError:
        raise CSRecError(f"{path} holds objects other than tensors and plain values; refused unread, since loading "
                         f"it could run code: remove {path.parent} so that the model is trained again") from None


def build_objective(job: Job, splits: Splits, store: Store, device, model: torch.nn.Module | None = None
                    ) -> torch.nn.Module:
    """The loss `fit` minimises for this job, with its teachers loaded from the store. `model` is the
    job's model, which ELECRec's objective trains as its discriminator (beside its own generator)."""
    if job.objective == "s3rec" and dict(job.options).get("finetuning") == "bce":  # its start: `initialise`
        return FineTuningBCE(splits.data.sequences, pair_sequences(splits.train), splits.data.n_items)
    if job.objective in ("ce", "s3rec"):  # S3Rec's "ce" fine-tuning (no option: the first version's keys)
        return CrossEntropy()
    if job.objective == "elecrec":
        return ELECRec(model, **dict(job.params), model_shared_type=job.option("model_shared_type"),
                       generator_normalisation=dict(job.options).get("generator_normalisation", "targets"))
    teachers = [load_model(store, t, device) for t in job.teachers]
    options = dict(job.options)
    if job.objective == "training-level":
        side = FrozenTeachers(teachers, splits.train)
        return TrainingLevelTeacher(side, splits.data.n_items, job.param("alpha"), options["noise_term"],
                                    options["noise_parametrization"])
    beta, temperature = job.param("beta"), job.param("temperature")
    if job.objective == "softrec":
        counts = train_item_counts(splits.data)  # training interactions only (never valid/test targets)
        return SoftLabelStudent(beta, temperature, options["kl_direction"], popularity=popularity_teacher(counts))
    return SoftLabelStudent(beta, temperature, options["kl_direction"], teacher=FrozenTeachers(teachers, splits.train),
                            ensemble=options.get("ensemble", "mean_logits"))


def train_job(job: Job, store: Store, work_dir: Path, on_epoch_end: Callable | None = None,
              curves: Path | None = None) -> dict:
    """Train `job` (resuming from work_dir's epoch checkpoint), evaluate, store the artifact.
    `curves`: a folder for its per-epoch TensorBoard scalars (csrec.tensorboard).

    Returns the result dict (as in result.json). Nothing is trained if the artifact exists.
    """
    if store.verify(MODELS, job.key):
        return read_result(store, job)
    if job.objective == PRETRAINING:
        return pretrain_job(job, store, work_dir)
    started = time.time()
    device = resolve_device(job.train.device)
    splits = splits_for(job)
    seed_everything(job.stream_seed)  # initial weights and dropout: the job's role's stream (csrec.methods)
    model = build_model(job.model, splits.data.n_items, splits.data.max_len, **dict(job.model_overrides)).to(device)
    initialise(job, model, store)
    objective = build_objective(job, splits, store, device, model).to(device)
    exclude = job.data.resolved_exclude_history

    validate = validator(splits.valid, exclude, job.train.selection_metric, job.train.eval_batch_size,
                         history=history_before_target(splits.data, "valid"))
    checkpoint = Path(work_dir) / job.key / "last.pt"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    train = dataclasses.replace(job.train, seed=job.stream_seed)  # batch order: the same stream
    scalars = EpochScalars(curves) if curves is not None else None

    def epoch_end(record) -> None:
        if scalars is not None:  # first: a scheduler's stop (raised by on_epoch_end) keeps the epoch's curve
            scalars(record)
        if on_epoch_end is not None:
            on_epoch_end(record)

    try:
        fitted = fit(model, splits.train, validate, train, objective, checkpoint, epoch_end, owner=job.key)
    finally:
        if scalars is not None:
            scalars.close()
    _store_model(job, store, model, splits, fitted, started)
    shutil.rmtree(checkpoint.parent, ignore_errors=True)
    return read_result(store, job)


def initialise(job: Job, model: torch.nn.Module, store: Store) -> None:
    """S3Rec's fine-tuning starts from its pretrained encoder and item embeddings (this project's
    pretraining job, or a registered published checkpoint, read weights-only); others as built."""
    if job.objective == "s3rec" and "pretrained" in dict(job.options):
        from csrec.datasets import resolve_checkpoint
        from csrec.s3rec import authors_student_state
        path = resolve_checkpoint(job.option("pretrained"))
        state = authors_student_state(_read_weights(path), _load(job.data).item_tokens)
        try:
            model.load_state_dict(state)
        except (RuntimeError, IndexError) as error:
            raise CSRecError(f"the checkpoint {job.option('pretrained')} does not fit this model or data "
                             f"({first_line(error)}); its model is SASRec with model_overrides sasrec: {{inner_size: "
                             "256, end_aligned_positions: 1}, on its own data set") from None
    elif job.objective == "s3rec":
        saved = _read_weights(store.require(MODELS, job.teachers[0].key, "S3Rec's pretrained model") / "model.pt")
        model.load_state_dict(student_state(saved["state_dict"], model.n_items))


def pretrain_job(job: Job, store: Store, work_dir: Path) -> dict:
    """S3Rec's pretraining (csrec.s3rec) on the whole training data, stored as the job's artifact."""
    started = time.time()
    data = _load(job.data)
    attributes = item_attributes(local_path(job.data.attributes), data.item_tokens)
    seed_everything(job.stream_seed)
    config = model_config(job.model, **dict(job.model_overrides))
    module = S3RecPretraining(data.n_items, data.max_len, config, attributes.n_attributes)
    checkpoint = Path(work_dir) / job.key / "pretraining.pt"
    train = dataclasses.replace(job.train, seed=job.stream_seed)
    history = pretrain(module, pretraining_data(data), torch.from_numpy(attributes.labels), dict(job.params), train,
                       checkpoint)
    result = {"key": job.key, "job": job.describe(), "attribute_coverage": attributes.coverage,
              "history": [dataclasses.asdict(h) for h in history],
              "started": started, "seconds": time.time() - started}

    _write_model(job, store, module, data, config, result, n_attributes=attributes.n_attributes)
    shutil.rmtree(checkpoint.parent, ignore_errors=True)
    return read_result(store, job)


def _evaluate(job: Job, model, splits: Splits) -> tuple[dict, pd.DataFrame]:
    """Validation and test metrics of `model`, and its per_user.parquet frame (both splits)."""
    # Every item before the target is masked under exclude_history, also the oldest of a merged
    # window that the truncated input no longer holds (csrec.evaluate.history_before_target).
    exclude = job.data.resolved_exclude_history
    valid = evaluate(model, splits.valid, exclude, batch_size=job.train.eval_batch_size,
                     history=history_before_target(splits.data, "valid"))
    test = evaluate(model, splits.test, exclude, batch_size=job.train.eval_batch_size,
                    history=history_before_target(splits.data, "test"))
    users = splits.data.users
    frame = pd.concat([valid.to_frame("valid", users), test.to_frame("test", users)], ignore_index=True)
    return {"valid": valid.metrics(), "test": test.metrics()}, frame


def _store_model(job: Job, store: Store, model, splits: Splits, fitted: FitResult, started: float) -> None:
    metrics, frame = _evaluate(job, model, splits)
    result = {
        "key": job.key, "job": job.describe(), "best_epoch": fitted.best_epoch, **metrics,
        "history": [dataclasses.asdict(r) for r in fitted.history],
        "started": started, "seconds": time.time() - started,  # this process's run (a resume: since resuming)
        "device": device_record(next(model.parameters()).device),  # where it trained and was evaluated
    }
    _write_model(job, store, model, splits.data, model_config(job.model, **dict(job.model_overrides)), result,
                 per_user=frame)


def _write_model(job: Job, store: Store, module: torch.nn.Module, data, config, result: dict,
                 per_user: pd.DataFrame | None = None, **saved) -> None:
    """The job's model artifact: model.pt (weights on the CPU, the data's shape, the model config,
    `saved`), config.json, result.json and, for a trained student, per_user.parquet."""

    def fill(folder: Path) -> None:
        state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
        torch.save({"state_dict": state, "n_items": data.n_items, "max_len": data.max_len, **saved,
                    "model_config": dataclasses.asdict(config)}, folder / "model.pt")
        (folder / "config.json").write_text(json.dumps(job.config(), indent=2, sort_keys=True))
        (folder / "result.json").write_text(json.dumps(result, indent=2, sort_keys=True, default=_json_number))
        if per_user is not None:
            per_user.to_parquet(folder / "per_user.parquet", index=False)

    store.write(MODELS, job.key, job.config(), fill)


def evaluate_checkpoint(job: Job, work_dir: Path, device: torch.device | str = "cpu",
                        evaluate: Callable | None = None) -> tuple[dict, pd.DataFrame]:
    """A job stopped before its budget (a search point stopped early): the best epoch so far of its
    work checkpoint, evaluated. Returns the result dict (best_epoch, valid, test, history, epochs,
    device: where it trained, when its checkpoint says) and the per_user frame; seconds: its
    epochs' training and validation time. Never a model artifact: the key names the model trained
    to the end. The checkpoint is read here; `evaluate(job, weights)` scores its best weights
    (default: `evaluate_weights` on `device`; the Ray backend's runs them as a Ray task with the
    trial's resources, so that a driver never ranks outside Ray's accounting of the GPUs)."""
    checkpoint = Path(work_dir) / job.key / "last.pt"
    if not checkpoint.is_file():
        raise CSRecError(f"{checkpoint} is missing, so the stopped {job.describe()} cannot be evaluated")
    try:  # a file of ours: the safe loader
        payload = torch.load(checkpoint, map_location="cpu", weights_only=True)
        saved, owner = payload["state"], payload.get("owner")
        best = saved["best_model"]
    except Exception as error:  # noqa: BLE001 - torch raises many kinds for a damaged file
        raise CSRecError(f"{checkpoint} is unreadable ({first_line(error)}), so the stopped {job.describe()} "
                         "cannot be evaluated") from None
    if owner != job.key:  # another job's weights (a copied file): never recorded as this point's
        raise CSRecError(f"{checkpoint} was written for job {owner}, not {job.key}, so the stopped {job.describe()} "
                         "cannot be evaluated from it")
    metrics, frame = (evaluate or (lambda j, w: evaluate_weights(j, w, device)))(job, best)
    trained_on = {"device": payload["device"]} if payload.get("device") else {}  # checkpoints since issue 26
    return {"best_epoch": int(saved["best_epoch"]), "epochs": int(saved["epoch"]), **metrics,
            "history": [float(r["valid_score"]) for r in saved["history"]],
            "seconds": sum(float(r["seconds"]) for r in saved["history"]), **trained_on}, frame


def evaluate_weights(job: Job, weights: dict, device: torch.device | str = "cpu") -> tuple[dict, pd.DataFrame]:
    """`job`'s model holding `weights`, evaluated on `device`: ({"valid", "test"} metrics, per_user frame)."""
    splits = splits_for(job)
    model = _restored(job, splits.data.n_items, splits.data.max_len, weights, device)
    return _evaluate(job, model, splits)


def read_result(store: Store, job: Job) -> dict:
    folder = store.require(MODELS, job.key, f"the result of {job.describe()}")
    return json.loads((folder / "result.json").read_text())


def _json_number(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
