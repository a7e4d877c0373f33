"""Frozen dataclass configs and their strict loading from YAML.

`load_dataclass(cls, raw, where)` builds any (nested) frozen dataclass from plain YAML data and
refuses an unknown key or a value of the wrong type with a CSRecError that names the key and the
file. The experiment spec (`ExperimentSpec`) is defined here; the data and training configs live
next to the code that uses them (csrec.data.DataConfig, csrec.train.TrainConfig).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from csrec import datasets
from csrec.data import DataConfig
from csrec.data.attributes import read_attribute_file
from csrec.errors import CSRecError
from csrec.storage import location
from csrec.train import LEGACY_DEFAULTS, TrainConfig


def load_dataclass(cls, raw: Any, where: str):
    """Build dataclass `cls` from a mapping; `where` names the file and key path in errors."""
    if not isinstance(raw, dict):
        raise CSRecError(f"{where}: expected a mapping of keys to values, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise CSRecError(f"{where}: unknown key '{unknown[0]}'; valid keys are: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    values = {name: _convert(hints[name], value, f"{where}.{name}") for name, value in raw.items()}
    try:
        return cls(**values)
    except CSRecError as error:
        raise CSRecError(f"{where}: {error}") from None
    except TypeError as error:  # a required key is missing
        raise CSRecError(f"{where}: {error}".replace("__init__() ", "")) from None


def _convert(hint, value, where: str):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _convert(option, value, where)
            except CSRecError as error:
                errors.append(str(error))
        raise CSRecError(errors[0])
    if origin is Literal:
        if value not in args:
            raise CSRecError(f"{where}: '{value}' is not one of {', '.join(map(str, args))}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise CSRecError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        return tuple(_convert(inner, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise CSRecError(f"{where}: expected a mapping, got {value!r}")
        return {str(k): _convert(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        return load_dataclass(hint, value, where)
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, float) and not math.isfinite(value):
        raise CSRecError(f"{where}: expected a finite number, got {value!r}")
    if hint in (int, float, str, bool) and (type(value) is not hint):
        raise CSRecError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


@dataclass(frozen=True)
class Resources:
    """What one Ray task or Tune trial holds; gpu may be fractional (e.g. 0.25)."""

    cpu: float = 1.0
    gpu: float = 0.0

    def __post_init__(self):
        if self.cpu <= 0 or self.gpu < 0:
            raise CSRecError(f"resources need cpu > 0 and gpu >= 0, got cpu={self.cpu}, gpu={self.gpu}")


# ELECRec's defaults (the authors' src/main.py): its one grid point when a spec gives none, and the
# values a `train` command leaves out.
ELECREC_DEFAULTS = {"sample_ratio": 0.7, "prob_power": 1.0, "gen_loss_weight": 1.0, "dis_loss_weight": 0.5}
# S3Rec's pretraining defaults: the authors' run_pretrain.py (RecBole's page has aap 1.0, mip 0.2,
# map 1.0, sp 0.5, mask_ratio 0.2; csrec.s3rec).
S3REC_DEFAULTS = {"aap_weight": 0.2, "mip_weight": 1.0, "map_weight": 1.0, "sp_weight": 0.5, "mask_ratio": 0.2}
UNIT_PARAMS = ("alpha", "beta", "sample_ratio", "mask_ratio")  # grid parameters that lie in [0, 1]
# ELECRec's and S3Rec's other parameters are weights (and a power): >= 0.
WEIGHT_PARAMS = tuple(name for name in {**ELECREC_DEFAULTS, **S3REC_DEFAULTS} if name not in UNIT_PARAMS)


def _default(defaults: dict, name: str) -> Any:
    """A SearchSpace field whose one point is the method's default."""
    return field(default=(defaults[name],))


@dataclass(frozen=True)
class SearchSpace:
    """The student grid of one method (paper 4.1.4). `alpha` matters to csrec-t only (Eq. 12);
    sample_ratio, prob_power, gen_loss_weight and dis_loss_weight to elecrec only (csrec.elecrec;
    defaults: one point, ELECRec's own defaults from its src/main.py); aap_weight, mip_weight,
    map_weight, sp_weight and mask_ratio to s3rec's pretraining only (csrec.s3rec; defaults: one
    point, the S3Rec authors' run_pretrain.py).

    sampler "grid" runs every point, in order; "tpe" draws `budget` points from the same
    choices with Optuna's TPE.
    """

    beta: tuple[float, ...] = (0.25, 0.5, 0.75)
    temperature: tuple[float, ...] = (1.0, 3.0, 6.0, 9.0)
    alpha: tuple[float, ...] = (0.25, 0.5, 0.75)
    sample_ratio: tuple[float, ...] = _default(ELECREC_DEFAULTS, "sample_ratio")  # elecrec: positions drawn anew
    prob_power: tuple[float, ...] = _default(ELECREC_DEFAULTS, "prob_power")  # elecrec: generator softmax power
    gen_loss_weight: tuple[float, ...] = _default(ELECREC_DEFAULTS, "gen_loss_weight")  # elecrec: generator CE
    dis_loss_weight: tuple[float, ...] = _default(ELECREC_DEFAULTS, "dis_loss_weight")  # elecrec: discriminator BCE
    aap_weight: tuple[float, ...] = _default(S3REC_DEFAULTS, "aap_weight")  # s3rec: associated attribute prediction
    mip_weight: tuple[float, ...] = _default(S3REC_DEFAULTS, "mip_weight")  # s3rec: masked item prediction
    map_weight: tuple[float, ...] = _default(S3REC_DEFAULTS, "map_weight")  # s3rec: masked attribute prediction
    sp_weight: tuple[float, ...] = _default(S3REC_DEFAULTS, "sp_weight")  # s3rec: segment prediction
    mask_ratio: tuple[float, ...] = _default(S3REC_DEFAULTS, "mask_ratio")  # s3rec: P(an item, not the last, masked)
    sampler: Literal["grid", "tpe"] = "grid"
    budget: int | None = None

    def __post_init__(self):
        for name in UNIT_PARAMS:
            values = getattr(self, name)
            if not values or any(not 0 <= v <= 1 for v in values):
                raise CSRecError(f"{name} values must lie in [0, 1] (and be at least one), got {list(values)}")
        for name in WEIGHT_PARAMS:
            values = getattr(self, name)
            if not values or any(not v >= 0 for v in values):
                raise CSRecError(f"{name} values must be >= 0 (and be at least one), got {list(values)}")
        if not self.temperature or any(t <= 0 for t in self.temperature):
            raise CSRecError(f"temperature values must be > 0, got {list(self.temperature)}")
        if self.sampler == "tpe" and (self.budget is None or self.budget < 1):
            raise CSRecError("sampler 'tpe' needs a budget >= 1 (the number of trials)")


@dataclass(frozen=True)
class TeacherSettings:
    """How the teacher module is built (paper 3.1-3.2, 4.1.4: m = 2, p = 0.8)."""

    m: int = 2  # number of teachers for csrec-m and csrec-d
    subsample_ratio: float = 0.8  # p: fraction of sequences each data-level teacher sees
    ensemble: Literal["mean_logits", "mean_probs"] = "mean_logits"  # paper | reference
    kl_direction: Literal["reference", "paper"] = "reference"  # KL(r || P_f) | KL(P_f || r)
    noise_term: bool = True  # csrec-t: the -sum_j log h(i, j) P_g1(j|s) term of Eq. 12 (Fig. 7)
    # "reference": the authors' sigmoid form; its detached column bound drives h to uniform, where the
    # noise term is log n and carries no signal at convergence (csrec.teachers.noise_matrix).
    noise_parametrization: Literal["stochastic", "reference"] = "stochastic"
    # elecrec: what its generator shares with the discriminator (ELECRec's --model_shared_type):
    # "embed_only" the item and position embeddings (its default), "full" the transformer layers too.
    model_shared_type: Literal["embed_only", "full"] = "embed_only"
    # elecrec: the generator CE's denominator: "padded" the B x max_len positions of the batch's rows
    # (the authors'), "targets" its real positions (csrec.elecrec).
    generator_normalisation: Literal["padded", "targets"] = "padded"
    # s3rec: its fine-tuning objective: "bce" one negative outside the user's sequence (the authors'),
    # "ce" full-softmax cross entropy (csrec.s3rec).
    s3rec_finetuning: Literal["bce", "ce"] = "bce"
    # s3rec: fine-tune from a registered published checkpoint (csrec.datasets.CHECKPOINTS, e.g.
    # "s3rec-beauty", the authors' Beauty model) instead of this project's pretraining job.
    s3rec_pretrained: str | None = None
    # s3rec: its pretraining job's epochs and batch (prefixes per Adam step). The authors' published
    # checkpoints are from epoch 150 (Beauty) and 100 (Yelp); their batch is 100 (RecBole: 500 epochs).
    pretrain_epochs: int = 150
    pretrain_batch_size: int = 100

    def __post_init__(self):
        if self.m < 1:
            raise CSRecError(f"teachers.m must be >= 1, got {self.m}")
        for name in ("pretrain_epochs", "pretrain_batch_size"):
            if getattr(self, name) < 1:
                raise CSRecError(f"teachers.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.subsample_ratio <= 1:
            raise CSRecError(f"teachers.subsample_ratio (p) must lie in (0, 1], got {self.subsample_ratio}")


@dataclass(frozen=True)
class SchedulerSettings:
    """Which search points train to the end (`scheduler:` in a spec; the grid and TPE stages only).

    "fifo" (the paper's protocol): every point trains its full budget. "asha": Ray Tune's
    asynchronous successive halving stops a point at a rung (grace_epochs, grace_epochs x
    reduction_factor, ... below train.max_epochs) when its best validation NDCG@10 so far is below
    the top 1/reduction_factor of the cell's points that reached that rung. A stopped point keeps
    its record with its best epoch so far ("stopped early", never failed). Seed reruns of the
    selected point always train the full budget (csrec.runner.scheduler).
    """

    kind: Literal["fifo", "asha"] = "fifo"
    grace_epochs: int = 10  # asha: no point is stopped before this many epochs (the first rung)
    reduction_factor: int = 3  # asha: rung spacing, and 1/reduction_factor of the points go on at each rung

    def __post_init__(self):
        if self.grace_epochs < 1:
            raise CSRecError(f"scheduler.grace_epochs must be >= 1, got {self.grace_epochs}")
        if self.reduction_factor < 2:
            raise CSRecError(f"scheduler.reduction_factor must be >= 2, got {self.reduction_factor}")

    @property
    def early_stopping(self) -> bool:
        return self.kind == "asha"

    def rungs(self, max_epochs: int) -> tuple[int, ...]:
        """The epochs at which ASHA compares points: grace_epochs x reduction_factor^k < max_epochs."""
        rungs, epoch = [], self.grace_epochs
        while epoch < max_epochs:
            rungs.append(epoch)
            epoch *= self.reduction_factor
        return tuple(rungs)

    def describe(self, max_epochs: int) -> str:
        if not self.early_stopping:
            return "fifo: every search point trains its full budget"
        return (f"ASHA on validation NDCG@10: grace {self.grace_epochs} epochs, reduction factor "
                f"{self.reduction_factor}, rungs at epochs {', '.join(map(str, self.rungs(max_epochs)))} of {max_epochs}")


@dataclass(frozen=True)
class TrackingSettings:
    """Experiment tracking (`tracking:` in a spec; csrec.tracking): every teacher and student trial
    the run trains becomes one MLflow or W&B run with its parameters, curves and final metrics.
    `tracking: mlflow` is short for {backend: mlflow}. How the run goes and what it computes do not
    depend on it (not part of the experiment's identity: it may be added on a resume)."""

    backend: Literal["none", "mlflow", "wandb"] = "none"
    # mlflow: the tracking URI (a server, sqlite:///..., or file:... / a path for a file store); default
    # MLFLOW_TRACKING_URI, else sqlite:///<experiment>/mlflow.db. A relative path is the spec folder's.
    uri: str | None = None
    experiment: str | None = None  # mlflow: the experiment's name; wandb: the project. Default: the spec's name

    def __post_init__(self):
        if self.backend == "none" and (self.uri is not None or self.experiment is not None):
            raise CSRecError("tracking: uri and experiment need a backend: add backend: mlflow (or wandb)")
        if self.backend == "wandb" and self.uri is not None:
            raise CSRecError("tracking.uri is MLflow's tracking URI; W&B's server is `wandb login --host` (or "
                             "WANDB_BASE_URL) and its offline mode WANDB_MODE=offline: remove uri")
        if self.uri is not None and not self.uri.strip():
            raise CSRecError("tracking.uri is empty; give an MLflow tracking URI or leave it out")


METHOD_NAMES = ("base", "softrec", "csrec-m", "csrec-d", "csrec-t", "elecrec", "s3rec")


def registered_name(value, known) -> str | None:
    """`value` as spelled in the registry `known`, matched without regard to case (RecBole writes
    GRU4Rec and SASRec, the paper CSRec-M); None when no name matches."""
    return next((name for name in known if isinstance(value, str) and name.lower() == value.lower()), None)


def _registered(values, known, key: str, what: str) -> tuple:
    """Each of `values` in its registered spelling; an unknown one is refused naming `key`."""
    names = []
    for value in values:
        name = registered_name(value, known)
        if name is None:
            raise CSRecError(f"{key}: unknown {what} '{value}'; known: {', '.join(known)} (any case)")
        names.append(name)
    return tuple(names)


@dataclass(frozen=True)
class ExperimentSpec:
    """One YAML file: datasets x models x methods, each method's grid, seeds, resources, storage."""

    name: str
    storage: str  # experiment directory or URI (s3://bucket/prefix, csrec.storage); a path is made absolute
    datasets: dict[str, DataConfig]
    models: tuple[str, ...]
    methods: tuple[str, ...]
    seeds: tuple[int, ...] = (0,)  # the search runs on seeds[0]; the best config reruns on all
    search: dict[str, SearchSpace] = field(default_factory=dict)  # per method; absent = paper grid
    teachers: TeacherSettings = TeacherSettings()
    train: TrainConfig = TrainConfig()
    model_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    teacher_resources: Resources = Resources()
    trial_resources: Resources = Resources()
    max_concurrent_trials: int | None = None  # None = as many as the cluster holds
    # Other experiments' directories (or stores) whose trained models this one copies in by key
    # instead of training them again; made absolute against the current directory, like storage.
    reuse: tuple[str, ...] = ()
    scheduler: SchedulerSettings = SchedulerSettings()  # `scheduler: asha` is short for {kind: asha}
    tracking: TrackingSettings = TrackingSettings()  # `tracking: mlflow` is short for {backend: mlflow}

    def __post_init__(self):
        from csrec.models import MODELS, model_config  # late: keeps `import csrec.config` light

        check_plain_name("name", self.name)
        for name in self.datasets:
            check_plain_name(f"datasets.{name}", name)
        if not self.storage.strip():
            raise CSRecError("storage is empty; give the experiment's folder (e.g. runs/<name>)")
        location(self.storage, "storage")  # a URI with credentials or an unknown scheme: refused here
        for entry in self.reuse:
            location(entry, "reuse")
        # Names in any case (GRU4Rec, CSRec-M) are kept in the registry's spelling: keys and folders use it.
        object.__setattr__(self, "models", _registered(self.models, MODELS, "models", "model"))
        object.__setattr__(self, "methods", _registered(self.methods, METHOD_NAMES, "methods", "method"))
        object.__setattr__(self, "search", dict(zip(_registered(self.search, METHOD_NAMES, "search", "method"),
                                                    self.search.values())))
        object.__setattr__(self, "model_overrides", dict(zip(
            _registered(self.model_overrides, MODELS, "model_overrides", "model"), self.model_overrides.values())))
        if not self.datasets or not self.models or not self.methods or not self.seeds:
            raise CSRecError("datasets, models, methods and seeds must each name at least one entry")
        if len(set(self.seeds)) != len(self.seeds):
            raise CSRecError(f"seeds must be distinct, got {list(self.seeds)}")
        if any(not 0 <= seed < 2**32 for seed in self.seeds):
            raise CSRecError(f"seeds must lie in [0, 2**32) (numpy's seeding), got {list(self.seeds)}")
        self._check_search_blocks()
        threads, cpus = self.train.num_threads, os.cpu_count() or 1
        if threads is not None and threads > cpus:  # more threads than CPUs only oversubscribe them
            raise CSRecError(f"train.num_threads is {threads} but this machine has {cpus} CPUs; give at most "
                             f"{cpus}, or null (torch's own choice)")
        for name, overrides in self.model_overrides.items():  # sizes, dropout: the model's own checks, now
            model_config(name, **overrides)
        if self.max_concurrent_trials is not None and self.max_concurrent_trials < 1:
            raise CSRecError("max_concurrent_trials must be >= 1 (or left out)")
        if "s3rec" in self.methods and "sasrec" in self.models:
            for name, data in self.datasets.items():
                if data.attributes is None:
                    raise CSRecError(f"datasets.{name}: s3rec pretrains on item attributes and this entry has none; "
                                     "add `attributes: <a registered data set's name or an item2attributes JSON "
                                     f"file>` to it (e.g. attributes: {name if name in datasets.REGISTRY else 'beauty'})")
        if self.scheduler.early_stopping and self.scheduler.grace_epochs >= self.train.max_epochs:
            raise CSRecError(f"scheduler.grace_epochs ({self.scheduler.grace_epochs}) must be below train.max_epochs "
                             f"({self.train.max_epochs}), or ASHA never stops a point; lower grace_epochs or use "
                             "scheduler: fifo")

    def _check_search_blocks(self) -> None:
        """A search block of a method the spec runs gives only that method's parameters: another
        would be ignored without a word, so it is refused (a block of a method not in `methods` is
        said by the plan's notes)."""
        from csrec.methods import GRID_PARAMS  # late: csrec.methods imports this module

        default = SearchSpace()
        for method, space in self.search.items():
            if method not in self.methods:  # kept for a later run: the plan's notes say it is not used
                continue
            unused = [f.name for f in dataclasses.fields(SearchSpace) if isinstance(getattr(default, f.name), tuple)
                      and f.name not in GRID_PARAMS[method] and getattr(space, f.name) != getattr(default, f.name)]
            if unused:
                raise CSRecError(f"search.{method}: {', '.join(unused)} do(es) not apply to {method} (its parameters: "
                                 f"{', '.join(GRID_PARAMS[method]) or 'none'}); remove {'it' if len(unused) == 1 else 'them'}")

    def search_space(self, method: str) -> SearchSpace:
        return self.search.get(method, SearchSpace())

    @property
    def directory(self):
        """The experiment's folder: an absolute Path, or a RemotePath for a URI (csrec.storage)."""
        return location(self.storage, "storage").resolve()

    @property
    def reuse_directories(self) -> tuple:
        return tuple(location(p, "reuse").resolve() for p in self.reuse)


_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def check_plain_name(key: str, name: str) -> None:
    """Names become file and folder names (datasets/<name>.json, study names): letters, digits, . _ -"""
    if not _PLAIN_NAME.fullmatch(name):
        raise CSRecError(f"{key}: {name!r} is not a plain name; use letters, digits, '.', '_' and '-' "
                         "(at most 100, starting with a letter or digit), no '/' or spaces")


# A spec is a page of YAML: these bound what a hostile or broken file can cost before it is refused.
MAX_SPEC_BYTES = 1 << 20
MAX_SPEC_DEPTH = 32
MAX_SPEC_NODES = 100_000  # values after aliases are expanded (a "billion laughs" file is refused here)


class _SpecLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (YAML would keep the last one)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise CSRecError(f"line {key_node.start_mark.line + 1}: key {key!r} appears twice in one mapping; "
                                 "keep one")
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(path: Path):
    """A YAML file's data, within the size, depth and expanded-size bounds above; each bound broken,
    a syntax error or a duplicate key is a one-line CSRecError naming the file."""
    if path.stat().st_size > MAX_SPEC_BYTES:
        raise CSRecError(f"{path}: {path.stat().st_size} bytes; a spec is at most {MAX_SPEC_BYTES} bytes")
    text = path.read_text(errors="replace")
    try:
        _check_shape(text)
        return yaml.load(text, Loader=_SpecLoader)  # noqa: S506 - a SafeLoader
    except CSRecError as error:
        raise CSRecError(f"{path}: {error}") from None
    except yaml.YAMLError as error:
        raise CSRecError(f"{path}: not valid YAML ({' '.join(str(error).split())}); fix the syntax") from None


def _check_shape(text: str) -> None:
    """Walk the YAML events (an iterative parser: no recursion on deep files) counting nesting depth
    and the values each anchor stands for, so that aliases are counted as expanded."""
    depth, sizes, stack = 0, {}, [[0, None]]  # stack: [values inside, anchor] per open collection
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_SPEC_DEPTH:
                raise CSRecError(f"nested deeper than {MAX_SPEC_DEPTH} levels; a spec is a few levels deep")
            stack.append([1, event.anchor])
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1
            count, anchor = stack.pop()
            if anchor is not None:
                sizes[anchor] = count
            stack[-1][0] += count
        elif isinstance(event, (yaml.ScalarEvent, yaml.AliasEvent)):
            count = sizes.get(event.anchor, 1) if isinstance(event, yaml.AliasEvent) else 1
            if isinstance(event, yaml.ScalarEvent) and event.anchor is not None:
                sizes[event.anchor] = 1
            stack[-1][0] += count
        if stack[0][0] + sum(c for c, _ in stack[1:]) > MAX_SPEC_NODES:
            raise CSRecError(f"more than {MAX_SPEC_NODES} values once its aliases are expanded; a spec is far "
                             "smaller (is it a YAML bomb?)")


def load_spec(path: str | Path, recorded: bool = False, overrides: tuple[str, ...] = ()) -> ExperimentSpec:
    """Read and check an experiment YAML; each data set's `path` becomes an absolute file path.

    One rule for relative paths (storage, reuse, datasets.*.path, datasets.*.attributes): they are
    read against the folder of the file that holds them, the spec's; those of `overrides` (`run
    --set KEY=VALUE`, apply_overrides), written on a command line, against the current directory.

    recorded=True reads an experiment's own spec.yaml, written whole by `spec_to_yaml`: a train
    field it lacks was written before that field existed and means what it meant then
    (csrec.train.LEGACY_DEFAULTS: no `layout` is the prefix layout), not today's default."""
    path = location(path, "spec")  # a resume of an experiment on object storage reads its spec.yaml there
    if not path.is_file():
        raise CSRecError(f"experiment spec {path} not found: give the path of a YAML file")
    raw = read_yaml(path)
    given = apply_overrides(raw, overrides) if overrides else set()  # before presets: --set may name one

    def folder(key: str) -> Path:
        return Path.cwd() if key in given else path.parent

    if isinstance(raw, dict) and isinstance(raw.get("storage"), str):
        raw["storage"] = _against(raw["storage"], folder("storage"))
    if isinstance(raw, dict) and isinstance(raw.get("reuse"), list):
        raw["reuse"] = [_against(p, folder("reuse")) if isinstance(p, str) else p for p in raw["reuse"]]
    if isinstance(raw, dict):  # `search: {elecrec: {preset: beauty}}` -> the preset's values (csrec.elecrec)
        from csrec.elecrec import expand_preset
        try:
            raw = expand_preset(raw)
        except CSRecError as error:
            raise CSRecError(f"{path}: search.elecrec.preset: {error}") from None
    if recorded and isinstance(raw, dict) and isinstance(raw.get("train", {}), dict):
        raw["train"] = LEGACY_DEFAULTS | (raw.get("train") or {})
    if isinstance(raw, dict) and isinstance(raw.get("scheduler"), str):  # `scheduler: asha` -> its defaults
        raw["scheduler"] = {"kind": raw["scheduler"]}
    if isinstance(raw, dict) and isinstance(raw.get("tracking"), str):  # `tracking: mlflow` -> its defaults
        raw["tracking"] = {"backend": raw["tracking"]}
    if isinstance(raw, dict) and isinstance(raw.get("tracking"), dict) and isinstance(raw["tracking"].get("uri"), str):
        raw["tracking"]["uri"] = tracking_uri_against(raw["tracking"]["uri"], folder("tracking.uri"))
    if isinstance(raw, dict) and isinstance(raw.get("datasets"), dict):
        for name, data in raw["datasets"].items():
            if isinstance(data, dict) and isinstance(data.get("path"), str):
                data = raw["datasets"][name] = _resolve_data(data, folder(f"datasets.{name}.path"),
                                                             f"{path}: datasets.{name}.path")
            if isinstance(data, dict) and isinstance(data.get("attributes"), str):
                where = f"{path}: datasets.{name}.attributes"
                data["attributes"] = _resolve_attributes(data["attributes"], folder(f"datasets.{name}.attributes"),
                                                         where)
    return load_dataclass(ExperimentSpec, raw, str(path) + (f" with --set {' '.join(overrides)}" if overrides else ""))


def _against(value: str, folder: Path) -> str:
    """A relative local path made absolute against `folder`; a URI or an absolute path unchanged."""
    if "://" in value or not value.strip():
        return value
    location(value, "path")  # "s3:/bucket" (a URI missing a slash) is refused, not made a folder "s3:"
    place = Path(value).expanduser()
    return str(place if place.is_absolute() else resolved_path(folder / place, value))


def tracking_uri_against(uri: str, folder: Path) -> str:
    """An MLflow tracking URI with its local path made absolute against `folder` (the one rule for a
    spec's relative paths): a plain path or file:PATH becomes file:///ABSOLUTE (a file store),
    sqlite:///RELATIVE sqlite:////ABSOLUTE; a server's URI (http://, databricks) is left as it is."""
    scheme = re.match(r"[A-Za-z][A-Za-z0-9+.-]+:", uri)
    if scheme is None or uri.startswith("file:"):
        path = Path(uri.removeprefix("file://") if uri.startswith("file://") else uri.removeprefix("file:"))
        return (path.expanduser() if path.expanduser().is_absolute() else folder / path).resolve().as_uri()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str((folder / uri.removeprefix("sqlite:///")).resolve())
    return uri


def apply_overrides(raw, overrides) -> set[str]:
    """`KEY=VALUE` changes (`run --set`) made to a spec's YAML data before it is checked: KEY is a
    dotted path (train.max_epochs, search.softrec.beta, datasets.NAME.path), VALUE is read as YAML
    (10 is a number, [0.5, 0.75] a list, runs/x a string). Mappings missing on the way are made; the
    strict loader then refuses an unknown key or a wrong type as in the file. Returns the keys set."""
    if not isinstance(raw, dict):
        raise CSRecError("--set: the spec is not a mapping of keys to values")
    given = set()
    for text in overrides:
        key, equals, value = text.partition("=")
        parts = key.strip().split(".")
        if not equals or not all(parts):
            raise CSRecError(f"--set {text!r}: write KEY=VALUE with a dotted KEY, e.g. --set train.max_epochs=10")
        try:
            _check_shape(value)
            parsed = yaml.load(value, Loader=_SpecLoader)  # noqa: S506 - a SafeLoader
        except (CSRecError, yaml.YAMLError) as error:
            raise CSRecError(f"--set {key}: {value!r} is not a YAML value ({' '.join(str(error).split())})") from None
        node = raw
        for depth, part in enumerate(parts[:-1]):
            if isinstance(node.get(part), str) and (depth, part) == (0, "scheduler"):  # the `scheduler: asha` form
                node[part] = {"kind": node[part]}
            if isinstance(node.get(part), str) and (depth, part) == (0, "tracking"):  # the `tracking: mlflow` form
                node[part] = {"backend": node[part]}
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise CSRecError(f"--set {key}: {'.'.join(parts[:depth + 1])} is not a mapping in the spec, so it "
                                 "has no keys to set")
        node[parts[-1]] = parsed
        given.add(".".join(parts))
    return given


def resolve_attributes(value: str, folder: Path | None = None) -> str:
    """An attribute file given by a registered data set's name (its checked attribute file) or a path
    (relative to `folder`, else the current directory) -> the checked file's absolute path."""
    if value in datasets.REGISTRY:
        resolved = datasets.resolve(value, attributes=True)
    else:
        resolved = Path(value).expanduser()
        resolved = resolved if resolved.is_absolute() else resolved_path((folder or Path.cwd()) / resolved, value)
        if not resolved.is_file():
            also = (f" and '{value}' is not a registered data set ({', '.join(datasets.REGISTRY)})"
                    if datasets.looks_like_name(value) else "")
            raise CSRecError(f"no file at {resolved}{also}; give an item2attributes JSON file or a registered name")
    read_attribute_file(str(resolved))  # a malformed file is refused here, before anything trains
    return str(resolved)


def _resolve_attributes(value: str, folder: Path, where: str) -> str:
    try:
        return resolve_attributes(value, folder)
    except CSRecError as error:
        raise CSRecError(f"{where}: {error}") from None


def _resolve_data(data: dict, folder: Path, where: str) -> dict:
    """`path` names a registered data set (csrec.datasets: shipped, cached or downloaded, checked;
    its paper settings fill the keys the entry leaves out) or a file, relative to the spec's folder."""
    value = data["path"]
    if value in datasets.REGISTRY:
        try:
            resolved = datasets.resolve(value)
        except CSRecError as error:
            raise CSRecError(f"{where}: {error}") from None
        return datasets.protocol_settings(datasets.REGISTRY[value], data) | data | {"path": str(resolved)}
    data_path = Path(value).expanduser()
    if not data_path.is_absolute():
        data_path = resolved_path(folder / data_path, where)
    if not data_path.is_file():
        also = (f" and '{value}' is not a registered data set ({', '.join(datasets.REGISTRY)})"
                if datasets.looks_like_name(value) else "")
        raise CSRecError(f"{where}: no file at {data_path}{also}; fix the path")
    return data | {"path": str(data_path)}


def resolved_path(path: Path, where: str) -> Path:
    """path.resolve(), with a symlink loop (RuntimeError in Python < 3.13) as one line naming it."""
    try:
        return path.resolve()
    except (RuntimeError, OSError) as error:
        raise CSRecError(f"{where}: {path} cannot be resolved ({error}); fix the link or give another path") from None


def spec_to_yaml(spec: ExperimentSpec) -> str:
    """The resolved spec (absolute data paths and storage) as YAML that `load_spec` reads back.

    A data set named in the spec is written as its resolved file with every setting spelled out, so
    a resume reads the same file and needs neither the registry nor the network."""

    def plain(value):
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    raw = plain(dataclasses.asdict(spec))
    raw["storage"] = str(spec.directory)
    raw["reuse"] = [str(p) for p in spec.reuse_directories]
    return yaml.safe_dump(raw, sort_keys=False)
