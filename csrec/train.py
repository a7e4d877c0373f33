"""fit(): epochs of Adam on shuffled mini-batches, early stopping on a validation score, epoch
checkpoints and exact resume. Training computes no metrics; the caller's `validate` does.

Paper 4.1.4: Adam, lr 1e-3, the best epoch selected on validation NDCG@10.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import os
import pickle
import platform
import random
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from csrec.batching import (BATCH_UNITS, LAYOUTS, Batch, TrainingData, batch_logits, epoch_generator,  # noqa: F401
                            training_loss)
from csrec.data.samples import Samples, TrainSequences
from csrec.errors import CSRecError, NonFiniteLossError, disk_full, first_line
from csrec.objectives import CrossEntropy
from csrec.precision import PRECISIONS, autocast, check_precision, grad_scaler

# Train-config fields that change how a job runs but not what it computes (left out of store keys).
_RUNTIME_FIELDS = ("device", "num_threads", "progress", "eval_batch_size")
# Config fields that change what is computed: a checkpoint written under other values cannot resume.
_RESUME_FIELDS = ("batch_size", "learning_rate", "weight_decay", "patience", "seed", "layout", "batch_unit",
                  "selection_metric", "allow_tf32", "precision")
# What a config written before a field existed meant by its absence: the layouts came after the prefix
# layout, and the default became `sequence` after that (a spec.yaml or checkpoint without `layout` is prefix).
LEGACY_DEFAULTS = {"layout": "prefix", "batch_unit": "targets"}


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 256  # training targets (prefix, next item pairs) per Adam step; see batch_unit
    learning_rate: float = 1e-3  # Adam step size (paper 4.1.4)
    weight_decay: float = 0.0  # Adam L2 weight decay
    max_epochs: int = 100  # upper bound on epochs
    patience: int = 10  # stop after this many epochs without a better validation score
    seed: int = 0  # seeds the shuffling of every epoch (model init: seed_everything, the caller's)
    device: str = "auto"  # "auto" (cuda if available, else cpu), "cpu", "cuda" or "cuda:N"
    eval_batch_size: int = 1024  # users scored at once during evaluation
    num_threads: int | None = None  # torch CPU threads; None leaves the process setting alone
    progress: bool = True  # print one line per epoch
    layout: str = "sequence"  # "sequence": every prefix of a row from one pass | "prefix": each on its own (reference)
    batch_unit: str = "targets"  # sequence layout: batch_size counts "targets" or "sequences"
    selection_metric: str = "ndcg@10"  # validation metric of the best epoch and of patience (ELECRec's authors: ndcg@20)
    allow_tf32: bool = False  # CUDA: float32 matmuls and cuDNN (GRU, convolutions) in TF32 (faster, ~1e-3 relative)
    precision: str = "fp32"  # fp32 | bf16 (CPU with AVX512-BF16/AMX, CUDA) | fp16 (CUDA): the model's autocast (csrec.precision)

    @property
    def key_fields(self) -> dict:
        """The fields that change what is computed, as a store key sees them. The prefix layout is
        left out, so that keys made before the layouts existed still name the same models."""
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k not in _RUNTIME_FIELDS}
        if self.layout == "prefix":
            del fields["layout"], fields["batch_unit"]
        if self.selection_metric == "ndcg@10":  # keys made before the field existed
            del fields["selection_metric"]
        if not self.allow_tf32:  # full float32: what every model was trained in before the option
            del fields["allow_tf32"]
        if self.precision == "fp32":  # likewise: a bf16 or fp16 model is another artifact, fp32 keys unchanged
            del fields["precision"]
        return fields

    def __post_init__(self):
        for name in ("batch_size", "max_epochs", "patience", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise CSRecError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.learning_rate <= 1:  # above 1 Adam's first steps throw the weights to inf: a NaN loss
            raise CSRecError(f"train.learning_rate must be > 0 and at most 1 (Adam's step size; the paper's is "
                             f"1e-3), got {self.learning_rate}")
        if not self.weight_decay >= 0:
            raise CSRecError(f"train.weight_decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.seed < 2**32:
            raise CSRecError(f"train.seed must be in [0, 2**32) (numpy's seeding), got {self.seed}")
        if self.num_threads is not None and self.num_threads < 1:
            raise CSRecError(f"train.num_threads must be >= 1 or null, got {self.num_threads}")
        if self.layout not in LAYOUTS:
            raise CSRecError(f"train.layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        if self.batch_unit not in BATCH_UNITS:
            raise CSRecError(f"train.batch_unit must be one of {', '.join(BATCH_UNITS)}, got {self.batch_unit!r}")
        if self.batch_unit != "targets" and self.layout != "sequence":
            raise CSRecError("train.batch_unit 'sequences' applies to layout 'sequence' only (a prefix sample "
                             "is one target); set train.layout: sequence or remove batch_unit")
        name, _, k = self.selection_metric.partition("@")
        if name not in ("ndcg", "recall", "mrr") or not k.isdigit() or int(k) < 1:
            raise CSRecError(f"train.selection_metric must be ndcg@K, recall@K or mrr@K, got {self.selection_metric!r}")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise CSRecError(f"train.device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        if not isinstance(self.allow_tf32, bool):
            raise CSRecError(f"train.allow_tf32 must be true or false, got {self.allow_tf32!r}")
        if self.precision not in PRECISIONS:
            raise CSRecError(f"train.precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.precision == "fp16" and self.device == "cpu":  # the machine's checks: csrec.precision, in fit
            raise CSRecError("train.precision fp16 needs a CUDA device, and train.device is cpu; use fp32 or bf16 "
                             "(a CPU with AVX512-BF16 or AMX) on the CPU, or fp16 with device cuda")


@dataclass(frozen=True)
class EpochRecord:
    epoch: int  # 1-based
    train_loss: float  # mean over training samples of objective + regularization
    valid_score: float  # what validate(model) returned after this epoch
    seconds: float  # training plus validation time of this epoch
    best_score: float = float("nan")  # the best valid_score up to this epoch (NaN in checkpoints made before it)


@dataclass
class FitResult:
    best_epoch: int
    best_score: float
    history: list[EpochRecord] = field(default_factory=list)
    stopped_early: bool = False


def resolve_device(device: str) -> torch.device:
    """"auto" -> cuda when available, else cpu; a CUDA request without CUDA is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CSRecError(f"train.device is {device!r} but CUDA is not available; use 'auto' or 'cpu'")
    return torch.device(device)


def device_record(device: torch.device | str) -> dict:
    """What a result records about where it was computed: {"kind": "cpu" | "cuda", "name": the GPU's
    name, or the CPU's architecture}. Not part of a key (a GPU and a CPU run of one config share
    one); the tables' legend can read it where runs mix devices."""
    device = torch.device(device)
    if device.type == "cuda":
        return {"kind": "cuda", "name": torch.cuda.get_device_name(device)}
    return {"kind": device.type, "name": platform.machine() or "unknown"}


def set_tf32(allow: bool) -> None:
    """TF32 for CUDA's float32 matmuls and cuDNN, set explicitly either way: PyTorch's defaults differ
    (matmul off, cuDNN on: the GRU and NextItNet's convolutions would run in TF32 unasked). The
    flags are the process's; fit sets them from its config. No effect on the CPU."""
    precision = "tf32" if allow else "ieee"
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):  # torch >= 2.9; mixing in the old flags is an error
        torch.backends.cuda.matmul.fp32_precision = precision
        torch.backends.cudnn.conv.fp32_precision = precision
        torch.backends.cudnn.rnn.fp32_precision = precision
    else:
        torch.backends.cuda.matmul.allow_tf32 = allow
        torch.backends.cudnn.allow_tf32 = allow


def cap_gpu_memory(device: torch.device | str, fraction: float) -> None:
    """A process granted `fraction` < 1 of a GPU (Ray's fractional `gpu`) allocates at most that share
    of its memory: past it torch raises its out-of-memory error in this process, instead of taking
    the memory of the trials that share the GPU."""
    device = torch.device(device)
    if device.type == "cuda" and 0 < fraction < 1:
        torch.cuda.set_per_process_memory_fraction(fraction, device)


def make_optimizer(params: list[nn.Parameter], config: "TrainConfig", device: torch.device) -> torch.optim.Adam:
    """Adam; fused on CUDA: one kernel for all parameters, and its step counters on the device (the
    default Adam reads them on the host at every step). The default on the CPU: results as before."""
    return torch.optim.Adam(params, lr=config.learning_rate, weight_decay=config.weight_decay,
                            fused=device.type == "cuda")


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices): call before building the model."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def fit(model: nn.Module, train: Samples | TrainSequences, validate: Callable[[nn.Module], float], config: TrainConfig,
        objective: nn.Module | None = None, checkpoint_path: Path | None = None,
        on_epoch_end: Callable[[EpochRecord], None] | None = None, owner: str = "") -> FitResult:
    """Train `model` on `train`, keep the epoch with the highest validate(model), load its weights.

    `train` is the layout's data: Samples for `prefix`, TrainSequences for `sequence` (see
    csrec.batching and csrec.data.splits.training_data).

    Stops after `config.patience` epochs without improvement. After every epoch the full state is
    written atomically to `checkpoint_path`; if that file exists, training resumes from it and ends
    exactly as an uninterrupted run would (same seed and device). A NaN or inf loss raises
    NonFiniteLossError and leaves the last complete epoch's checkpoint as it was. `on_epoch_end`
    runs after the epoch's checkpoint is written, so an exception there loses no finished epoch.
    `owner` (csrec.jobs: the job's key) is written into the checkpoint, and a checkpoint of another
    owner (a file copied from another job's work folder) is discarded, never resumed from.
    """
    if len(train) == 0:
        raise CSRecError("the training set is empty; check the data filters and the protocol")
    if isinstance(train, TrainSequences) != (config.layout == "sequence"):
        raise ValueError(f"train.layout is {config.layout!r} but the training data is {type(train).__name__}")
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    device = resolve_device(config.device)
    check_precision(config.precision, device)  # refused with what is available, never run in another precision
    set_tf32(config.allow_tf32)
    model.to(device)
    objective = (objective if objective is not None else CrossEntropy()).to(device)
    optimizer = make_optimizer(trainable_parameters(model, objective), config, device)
    scaler = grad_scaler(config.precision, device)  # fp16 only
    state = _State(best_model=_copy(model), best_objective=_copy(objective))
    checkpoint_path = Path(checkpoint_path) if checkpoint_path is not None else None
    if checkpoint_path is not None and checkpoint_path.exists():
        state = _resume_or_discard(checkpoint_path, model, objective, optimizer, config, len(train), device,
                                   owner, scaler) or state
    data = TrainingData(train, device)
    epoch = state.epoch
    while not state.stopped_early and epoch < config.max_epochs:
        epoch += 1
        started = time.perf_counter()
        loss = _train_epoch(model, objective, optimizer, data, config, epoch, scaler)
        score = float(validate(model))
        if not np.isfinite(score):
            raise CSRecError(f"validate() returned {score} after epoch {epoch}; it must return a finite score")
        record = EpochRecord(epoch, loss, score, time.perf_counter() - started, max(score, state.best_score))
        state.update(record, model, objective, config.patience)
        if checkpoint_path is not None:
            _save(checkpoint_path, state, model, objective, optimizer, config, len(train), device, owner, scaler)
        if config.progress:
            print(f"epoch {epoch:3d}  loss {loss:.4f}  valid {config.selection_metric} {score:.4f}  "  # name the metric
                  f"best {state.best_score:.4f} @ {state.best_epoch}  {record.seconds:.1f}s", flush=True)
        if on_epoch_end is not None:
            on_epoch_end(record)
    model.load_state_dict(state.best_model)
    objective.load_state_dict(state.best_objective)
    return FitResult(state.best_epoch, state.best_score, list(state.history), state.stopped_early)


@dataclass
class _State:
    """Everything about the run so far that is not a module or optimizer state."""

    best_model: dict
    best_objective: dict
    epoch: int = 0
    best_epoch: int = 0
    best_score: float = float("-inf")
    epochs_without_improvement: int = 0
    stopped_early: bool = False
    history: list[EpochRecord] = field(default_factory=list)

    def update(self, record: EpochRecord, model: nn.Module, objective: nn.Module, patience: int) -> None:
        self.epoch = record.epoch
        self.history.append(record)
        if record.valid_score > self.best_score:
            self.best_epoch, self.best_score = record.epoch, record.valid_score
            self.best_model, self.best_objective = _copy(model), _copy(objective)
            self.epochs_without_improvement = 0
        else:
            self.epochs_without_improvement += 1
        self.stopped_early = self.epochs_without_improvement >= patience


def _train_epoch(model, objective, optimizer, data: TrainingData, config: TrainConfig, epoch: int,
                 scaler: "torch.amp.GradScaler | None" = None) -> float:
    """One pass over the shuffled training set; returns the target-weighted mean loss. Under
    train.precision bf16 / fp16 the model and its output layer run in autocast and the objective in
    float32 (csrec.precision); fp16's `scaler` scales the loss and skips steps whose gradients overflow."""
    model.train()
    objective.train()
    # Losses stay on the device and are checked once per epoch: no host sync per batch. A non-finite
    # batch only spoils weights that are discarded, since the error is raised before the checkpoint.
    losses = []
    for batch in data.batches(config.batch_size, config.batch_unit, config.seed, epoch):
        with autocast(config.precision, data.device):
            loss = training_loss(model, objective, batch)
        optimizer.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        losses.append(loss.detach() * len(batch.targets))
    losses = torch.stack(losses)  # [n_batches]
    finite = torch.isfinite(losses)
    if not bool(finite.all()):
        bad = int((~finite).nonzero()[0])
        raise NonFiniteLossError(
            f"the training loss is {float(losses[bad])} at epoch {epoch}, batch {bad + 1} of {len(losses)}: "
            f"lower train.learning_rate (now {config.learning_rate}) or check the data and the objective")
    return float(losses.sum()) / data.n_pairs


def trainable_parameters(model: nn.Module, objective: nn.Module) -> list[nn.Parameter]:
    """Model and objective parameters (CSRec-T's noise matrix), each once, in one Adam."""
    seen, params = set(), []
    for p in list(model.parameters()) + list(objective.parameters()):
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            params.append(p)
    return params


def _copy(module: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _save(path: Path, state: _State, model, objective, optimizer, config: TrainConfig, n_train: int,
          device: torch.device, owner: str = "", scaler=None) -> None:
    """Write the checkpoint to a temporary file next to `path`, then rename: never half a file."""
    payload = {
        "model": model.state_dict(), "objective": objective.state_dict(), "optimizer": optimizer.state_dict(),
        "state": {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
        | {"history": [dataclasses.asdict(r) for r in state.history]},
        "config": dataclasses.asdict(config), "n_train": n_train, "owner": owner,
        "rng": _rng_state(device), "device": device_record(device),
        "scaler": scaler.state_dict() if scaler is not None else None,  # fp16's loss scale: resumed exactly
    }
    save_atomic(payload, path)


def save_atomic(payload, path: Path) -> None:
    """torch.save to a temporary file next to `path`, synced, then renamed over it: never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(error, RuntimeError):  # torch's word for a full disk: said as one (csrec.errors.disk_full)
            raise disk_full(error, path.parent) from error
        raise


class DamagedCheckpoint(Exception):
    """A work checkpoint that cannot be read or applied (truncated, garbage, not ours)."""


def _resume_or_discard(path: Path, model, objective, optimizer, config: TrainConfig, n_train: int,
                       device: torch.device, owner: str = "", scaler=None) -> "_State | None":
    """`_resume`; a damaged checkpoint is deleted with a warning and the modules, optimizer and RNGs
    are put back as they were, so that training starts from epoch 1 exactly as a first run would
    (a damaged file would otherwise fail every retry and every resume the same way)."""
    before = (_copy(model), _copy(objective), copy.deepcopy(optimizer.state_dict()), _rng_state(device),
              scaler.state_dict() if scaler is not None else None)
    try:
        return _resume(path, model, objective, optimizer, config, n_train, owner, scaler)
    except DamagedCheckpoint as error:
        model.load_state_dict(before[0])
        objective.load_state_dict(before[1])
        optimizer.load_state_dict(before[2])
        _set_rng_state(before[3], device)
        if scaler is not None:
            scaler.load_state_dict(before[4])
        path.unlink(missing_ok=True)
        warnings.warn(f"work checkpoint {path} is damaged ({error}); discarded, training starts from epoch 1")
        return None


def _resume(path: Path, model, objective, optimizer, config: TrainConfig, n_train: int, owner: str = "",
            scaler=None) -> _State:
    """Load a checkpoint written by `_save` (for `owner`) into the modules and return the run's state."""
    try:
        # Read whole first: an OSError here is the storage's; torch.load on a path raises OSError
        # (EINVAL) for a truncated file too, which is the file's damage and must not keep it.
        raw = path.read_bytes()
    except (OSError, MemoryError) as error:  # the storage or the machine, not the file: keep it
        raise CSRecError(f"cannot read the work checkpoint {path} ({first_line(error)}); it is kept: "
                         "resume again once the storage is readable") from error
    try:
        # weights_only: a checkpoint in a shared experiment directory must never run code when read.
        payload = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
        saved = payload["config"]
        before = {k: saved.get(k, LEGACY_DEFAULTS.get(k, getattr(TrainConfig(), k))) for k in _RESUME_FIELDS}
        saved_n_train = payload["n_train"]
        saved_owner = payload.get("owner")
    except MemoryError as error:  # the machine, not the file: keep it
        raise CSRecError(f"cannot read the work checkpoint {path} ({first_line(error)}); it is kept: "
                         "resume again with more free memory") from error
    except pickle.UnpicklingError as error:  # refused by the safe loader: never retried unsafely
        raise DamagedCheckpoint("it holds objects other than tensors and plain values (written before work "
                                "checkpoints were made safe to load, or not by csrec); refused unread, since "
                                "loading it could run code") from error
    except Exception as error:
        raise DamagedCheckpoint(first_line(error)) from error
    if saved_owner != owner:  # another job's file (copied or moved here): its weights are not this job's
        raise DamagedCheckpoint(f"it was written for job {saved_owner or '(unnamed: before checkpoints named their job)'}, "
                                f"not for this one ({owner or 'unnamed'})")
    changed = [f"{k}: {before[k]} -> {getattr(config, k)}" for k in _RESUME_FIELDS if before[k] != getattr(config, k)]
    if changed or saved_n_train != n_train:
        what = ", ".join(changed) or f"training samples: {saved_n_train} -> {n_train}"
        raise CSRecError(f"the checkpoint {path} was written by another run ({what}); "
                         "restore those settings or delete the checkpoint to start over")
    try:
        model.load_state_dict(payload["model"])
        objective.load_state_dict(payload["objective"])
        optimizer.load_state_dict(payload["optimizer"])
        if scaler is not None and payload.get("scaler"):
            scaler.load_state_dict(payload["scaler"])
        _set_rng_state(payload["rng"], next(model.parameters()).device)
        state = dict(payload["state"])
        state["history"] = [EpochRecord(**r) for r in state["history"]]
        return _State(**state)
    except Exception as error:
        raise DamagedCheckpoint(first_line(error)) from error


def _rng_state(device: torch.device) -> dict:
    """Every RNG's state in types that torch.load(weights_only=True) reads (tensors, tuples, numbers)."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {"python": random.getstate(),
            "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def _set_rng_state(rng: dict, device: torch.device) -> None:
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = rng["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"], device)
