"""The methods (Base, SoftRec, CSRec-M, CSRec-D, CSRec-T, ELECRec, S3Rec) as training jobs and their teachers.

Everything that is trained is a `Job`: a Base model, a teacher, a student. A job names the jobs whose
models it learns from (`teachers`), and its key is the hash of its resolved config, in which a teacher
appears by its own key. So a teacher is one artifact whichever student needs it: CSRec-M's teachers
are Base models with other seeds (the Base runs of those seeds), CSRec-T's side teacher is CSRec-D's
first data-level teacher, and every point of a student grid shares the same teachers.

Seed streams. A job's random streams (initial weights, dropout, batch order) come from its role
and its seed (`Job.stream_seed`), so that no student shares any of them with one of its teachers:
- role "model" (Base runs, and the CSRec-M/-D teachers and CSRec-T side teacher made of them):
  the seed itself, so a Base run of seed k is still CSRec-M's k-th teacher, by key;
- role "student" (every soft-label student) and role "main-teacher" (CSRec-T's g1): a seed drawn
  from numpy's SeedSequence([seed, role code]), and the role in the job's key.
So the seed-s student of every method starts from the same weights and batch order (paired runs
across methods), which no teacher of any seed has, and CSRec-T's g1 and g2 start apart. (Dropout
masks differ between methods on a CPU: loading a method's teachers after the student is built
draws from torch's CPU generator.)

ELECRec (csrec.elecrec) has no teacher job: its generator is trained with the discriminator, in the
same job (role "student"), whose stored model is the discriminator.

S3Rec (csrec.s3rec) has one, its pretraining (objective "s3rec-pretraining", role "pretraining": a
seed drawn from SeedSequence([0, 3])), keyed by its data (with the attribute file's content), model,
objective weights, mask ratio, epochs, batch size and learning rate only: every fine-tuning run of
every seed and grid point with the same pretraining settings shares it. The fine-tuning job (role
"student") starts from it and trains with the authors' BCE (option finetuning: bce) or with cross
entropy (no option: the keys of the first version).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from csrec.config import (ELECREC_DEFAULTS, METHOD_NAMES, S3REC_DEFAULTS, UNIT_PARAMS, WEIGHT_PARAMS,
                          TeacherSettings)
from csrec.data import DataConfig
from csrec.errors import CSRecError
from csrec.datafiles import fingerprint
from csrec.store import config_key
from csrec.train import TrainConfig

# Roles whose seeds are drawn from (seed, code); the role "model" keeps its seed (module docstring).
SEED_STREAM_CODES = {"student": 1, "main-teacher": 2, "pretraining": 3}

# What each method's student grid varies (paper 4.1.4); alpha weighs CSRec-T's teacher loss (Eq. 12).
GRID_PARAMS = {
    "base": (),
    "softrec": ("beta", "temperature"),
    "csrec-m": ("beta", "temperature"),
    "csrec-d": ("beta", "temperature"),
    "csrec-t": ("alpha", "beta", "temperature"),
    "elecrec": tuple(ELECREC_DEFAULTS),  # each has a default: the authors'
    "s3rec": tuple(S3REC_DEFAULTS),
}

# Methods defined over the SASRec backbone only: a spec's other models get no cell of them.
SASREC_METHODS = ("elecrec", "s3rec")

PRETRAINING = "s3rec-pretraining"  # the objective of S3Rec's pretraining job


@dataclass(frozen=True)
class Job:
    """One model to train. `objective` is "ce" (Base, teachers), "training-level" (CSRec-T's main
    teacher, Eq. 13), "s3rec-pretraining" (S3Rec's pretraining, csrec.s3rec) or a student method
    name (soft labels, Eq. 14-15; "elecrec": csrec.elecrec; "s3rec": CE from the pretrained model)."""

    data: DataConfig
    model: str
    train: TrainConfig
    objective: str = "ce"
    params: tuple[tuple[str, float], ...] = ()  # beta, temperature, alpha as used by the objective
    options: tuple[tuple[str, Any], ...] = ()  # ensemble, kl_direction, noise_term, ... (where used)
    model_overrides: tuple[tuple[str, Any], ...] = ()
    subsample_ratio: float = 1.0  # p of Alg. 2-3; 1.0 is the full training data
    subsample_seed: int = 0
    teachers: tuple["Job", ...] = ()

    @property
    def seed(self) -> int:
        return self.train.seed

    @property
    def role(self) -> str:
        """Which seed stream the job draws from: "model", "student", "main-teacher" or "pretraining"."""
        roles = {"ce": "model", "training-level": "main-teacher", PRETRAINING: "pretraining"}
        return roles.get(self.objective, "student")

    @property
    def stream_seed(self) -> int:
        """The seed of the job's initial weights, dropout and batch order (module docstring)."""
        return stream_seed(self.role, self.seed)

    def param(self, name: str) -> float:
        return dict(self.params)[name]

    def option(self, name: str) -> Any:
        return dict(self.options)[name]

    def config(self) -> dict:
        """The resolved config that identifies the artifact (teachers by key, data by content)."""
        data = dataclasses.asdict(self.data)
        data["path"] = fingerprint(self.data.path)
        del data["attributes"]  # read by S3Rec's pretraining only: the other models' keys ignore it
        if self.objective == PRETRAINING:
            data["attributes"] = fingerprint(self.data.attributes)
        if data["user_fraction"] == 1.0:  # the full data: keys as before the sparsity option existed
            del data["user_fraction"], data["user_fraction_seed"]
        train = self.train.key_fields
        config = {
            "data": data, "model": self.model, "model_overrides": dict(self.model_overrides),
            "train": train, "objective": self.objective, "params": dict(self.params),
            "options": dict(self.options), "teachers": [t.key for t in self.teachers],
        }
        if self.role != "model":
            config["seed_stream"] = self.role
        if self.subsample_ratio < 1.0:
            config["subsample"] = {"ratio": self.subsample_ratio, "seed": self.subsample_seed}
        return config

    @property
    def key(self) -> str:
        return _job_key(self)

    def describe(self) -> str:
        params = ", ".join(f"{k}={v:g}" for k, v in self.params)
        sub = f", p={self.subsample_ratio:g}" if self.subsample_ratio < 1 else ""
        layout = ", sequence layout" if self.train.layout == "sequence" else ""
        if self.objective == PRETRAINING:
            layout = f", {self.train.max_epochs} epochs of {self.train.batch_size} prefixes"
        precision = f", {self.train.precision}" if self.train.precision != "fp32" else ""
        return f"{self.model} {self.objective} seed={self.seed}{sub}{', ' + params if params else ''}{layout}{precision}"


def stream_seed(role: str, seed: int) -> int:
    """The seed of `role`'s streams at `seed`: the seed itself for "model", else one drawn from
    SeedSequence([seed, code]) (31 bits: numpy's legacy seeding takes < 2**32), the same on every
    machine and numpy version."""
    if role == "model":
        return seed
    return int(np.random.SeedSequence([seed, SEED_STREAM_CODES[role]]).generate_state(1, dtype=np.uint32)[0] >> 1)


@lru_cache(maxsize=None)
def _job_key(job: Job) -> str:
    return config_key(job.config())


def check_params(method: str, params: dict[str, float]) -> None:
    """alpha and beta in [0, 1], temperature > 0, and exactly the method's grid parameters."""
    if method not in GRID_PARAMS:
        raise CSRecError(f"unknown method '{method}'; known: {', '.join(METHOD_NAMES)}")
    missing = [p for p in GRID_PARAMS[method] if p not in params]
    if missing:
        raise CSRecError(f"method {method} needs {', '.join(missing)} (give --{missing[0]} or a grid)")
    for name in UNIT_PARAMS:
        if name in params and not 0 <= params[name] <= 1:
            raise CSRecError(f"{name} must lie in [0, 1], got {params[name]}")
    if "temperature" in params and params["temperature"] <= 0:
        raise CSRecError(f"temperature T must be > 0, got {params['temperature']}")
    for name in WEIGHT_PARAMS:
        if name in params and not params[name] >= 0:
            raise CSRecError(f"{name} must be >= 0, got {params[name]}")


def base_job(data: DataConfig, model: str, train: TrainConfig, overrides: dict | None = None,
             subsample_ratio: float = 1.0, subsample_seed: int = 0) -> Job:
    """A model trained with plain cross entropy (Base; CSRec-M/-D teachers; CSRec-T's side teacher)."""
    return Job(data=data, model=model, train=train, model_overrides=tuple(sorted((overrides or {}).items())),
               subsample_ratio=subsample_ratio, subsample_seed=subsample_seed if subsample_ratio < 1 else 0)


def teacher_jobs(method: str, base: Job, params: dict[str, float], settings: TeacherSettings) -> tuple[Job, ...]:
    """The teacher module of `method` for a student like `base` (Alg. 1, 2, 3); SoftRec's
    popularity teacher is computed from the data and needs no job."""
    with_seed = lambda seed: dataclasses.replace(base.train, seed=seed)  # noqa: E731
    if method in ("base", "softrec", "elecrec"):
        return ()
    if method == "s3rec":
        return (pretraining_job(base, params, settings),)
    if method == "csrec-m":  # Alg. 1: m seeds, full data
        return tuple(dataclasses.replace(base, train=with_seed(k)) for k in range(settings.m))
    data_level = tuple(  # Alg. 2: m seeded p-subsamples
        dataclasses.replace(base, train=with_seed(k), subsample_ratio=settings.subsample_ratio, subsample_seed=k)
        for k in range(settings.m if method == "csrec-d" else 1)
    )
    if settings.subsample_ratio >= 1:
        data_level = tuple(dataclasses.replace(t, subsample_ratio=1.0, subsample_seed=0) for t in data_level)
    if method == "csrec-d":
        return data_level
    side = data_level[0]  # Alg. 3: side teacher g2 pretrained with CE on a p-subsample
    options = (("noise_parametrization", settings.noise_parametrization), ("noise_term", settings.noise_term))
    # Fixed seed, like the other methods' teachers: the student's seed reruns share one teacher module.
    # Its role gives it streams apart from the side teacher's, which has the same seed.
    main = dataclasses.replace(base, train=with_seed(0), objective="training-level",
                               params=(("alpha", params["alpha"]),), options=options, teachers=(side,))
    return (main,)


def student_job(method: str, base: Job, params: dict[str, float], settings: TeacherSettings) -> Job:
    """The student of `method` with grid point `params`, learning from its teacher module."""
    if method == "elecrec":
        return elecrec_job(base, params, settings)
    if method == "s3rec":  # fine-tuning: "ce" is no option, so its keys are those made before the option
        options = (("finetuning", settings.s3rec_finetuning),) if settings.s3rec_finetuning != "ce" else ()
        if settings.s3rec_pretrained is not None:  # a published checkpoint (csrec.datasets.CHECKPOINTS): no job
            from csrec.datasets import CHECKPOINTS
            if settings.s3rec_pretrained not in CHECKPOINTS:
                raise CSRecError(f"teachers.s3rec_pretrained: '{settings.s3rec_pretrained}' is not a registered "
                                 f"checkpoint; known: {', '.join(CHECKPOINTS)}")
            check_sasrec_method("s3rec", base, "fine-tunes a SASRec")
            options += (("pretrained", settings.s3rec_pretrained),)
            return dataclasses.replace(base, objective="s3rec", options=options)
        return dataclasses.replace(base, objective="s3rec", options=options,
                                   teachers=teacher_jobs(method, base, params, settings))
    check_params(method, params)
    if method == "base":
        return base
    teachers = teacher_jobs(method, base, params, settings)
    options = [("kl_direction", settings.kl_direction)]
    if len(teachers) > 1:
        options.append(("ensemble", settings.ensemble))
    used = {k: float(params[k]) for k in ("beta", "temperature")}
    return dataclasses.replace(base, objective=method, params=tuple(sorted(used.items())),
                               options=tuple(options), teachers=teachers)


def elecrec_job(base: Job, params: dict[str, float], settings: TeacherSettings) -> Job:
    """ELECRec over SASRec (csrec.elecrec): its four weights (ELECRec's defaults where not given), the
    sharing type and the generator loss's normalisation (an option only when "padded": a run without
    it is "targets", as before the option existed); the `sequence` layout is required."""
    check_sasrec_method("elecrec", base, "trains SASRec encoders as generator and discriminator")
    used = method_params("elecrec", params, ELECREC_DEFAULTS)
    options = [("model_shared_type", settings.model_shared_type)]
    if settings.generator_normalisation != "targets":  # "targets" keeps the keys made before the option
        options.append(("generator_normalisation", settings.generator_normalisation))
    return dataclasses.replace(base, objective="elecrec", params=tuple(sorted(used.items())), options=tuple(options))


def pretraining_job(base: Job, params: dict[str, float], settings: TeacherSettings) -> Job:
    """S3Rec's pretraining (csrec.s3rec) for a fine-tuning run like `base`: its objective weights and
    mask ratio (the authors' defaults where not given), settings.pretrain_epochs epochs of
    settings.pretrain_batch_size prefixes, base's learning rate and model; seed 0 (its role's stream),
    whatever base's seed, so that every seed's fine-tuning shares it."""
    check_sasrec_method("s3rec", base, "pretrains and fine-tunes a SASRec")
    if base.data.attributes is None:
        raise CSRecError("s3rec pretrains on item attributes and the data set has none: add `attributes: <a "
                         "registered data set's name or an item2attributes JSON file>` to its entry in the spec's "
                         "datasets (launch.py train --attributes)")
    used = method_params("s3rec", params, S3REC_DEFAULTS)
    train = TrainConfig(batch_size=settings.pretrain_batch_size, max_epochs=settings.pretrain_epochs,
                        learning_rate=base.train.learning_rate, weight_decay=base.train.weight_decay,
                        **{k: getattr(base.train, k) for k in ("device", "num_threads", "progress")})
    return Job(data=base.data, model=base.model, train=train, objective=PRETRAINING,
               params=tuple(sorted(used.items())), model_overrides=base.model_overrides)


def check_sasrec_method(method: str, base: Job, what: str) -> None:
    """ELECRec and S3Rec: a SASRec in the sequence layout, or an error saying what to change."""
    if base.model != "sasrec":
        raise CSRecError(f"{method} {what}; model {base.model} cannot be one: use the model sasrec")
    if base.train.layout != "sequence":
        raise CSRecError(f"{method} trains on every position of a sequence at once: set train.layout: sequence "
                         "(launch.py train --layout sequence)")


def method_params(method: str, params: dict[str, float], defaults: dict[str, float]) -> dict[str, float]:
    """`params` over the method's `defaults`, checked: an unknown name or a value out of range is an error."""
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise CSRecError(f"{method} takes {', '.join(defaults)}, not {', '.join(unknown)}")
    used = defaults | {k: float(v) for k, v in params.items()}
    check_params(method, used)
    return used


def dependencies(job: Job) -> list[Job]:
    """Every job `job` needs, teachers before the jobs that learn from them, each once."""
    order: dict[str, Job] = {}

    def visit(node: Job) -> None:
        for teacher in node.teachers:
            visit(teacher)
            order.setdefault(teacher.key, teacher)

    visit(job)
    return list(order.values())
