"""Spec -> plan: the teacher jobs (each once, keyed by the config that makes it) and the student trials.

A trial is one student training of the grid: (dataset, model, method, grid point, seed). The search
stage runs every grid point (or a TPE budget) on the spec's first seed; the seeds stage reruns the
best configuration of each (dataset, model, method), chosen on validation NDCG@10, on the other
seeds. Base has no grid: its runs are plain models, trained with the teachers. ELECRec and S3Rec
are defined over SASRec only: a spec's other models get no cell of them, which the plan's notes say.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass, field, replace

from csrec.config import ExperimentSpec
from csrec.datasets import data_checksums
from csrec.methods import GRID_PARAMS, SASREC_METHODS, Job, base_job, dependencies, student_job

SELECTION_METRIC = "ndcg@10"


@dataclass(frozen=True)
class Trial:
    """One student run; `job` is what is trained, `params` the grid point as the user sees it."""

    dataset: str
    model: str
    method: str
    seed: int
    params: tuple[tuple[str, float], ...]
    stage: str  # "search" | "seeds"
    job: Job

    @property
    def cell(self) -> tuple[str, str, str]:
        return (self.dataset, self.model, self.method)

    def label(self) -> str:
        point = " ".join(f"{k}={v:g}" for k, v in self.params)
        return f"{self.dataset}/{self.model}/{self.method} {point} seed={self.seed}".replace("  ", " ")

    def record(self) -> dict:
        """What result.json says about the trial besides its metrics (docs/FORMATS.md)."""
        params = {"alpha": None, "beta": None, "temperature": None} | dict(self.params)
        record = {"dataset": self.dataset, "model": self.model, "method": self.method, "seed": self.seed,
                  "stage": self.stage, "params": params, "key": self.job.key}
        if self.method == "s3rec":  # its fine-tuning objective, named in the tables' configurations
            record["finetuning"] = dict(self.job.options).get("finetuning", "ce")
        return record


@dataclass
class Plan:
    spec: ExperimentSpec
    trials: list[Trial]  # search stage, and Base runs over every seed
    tpe_cells: dict[tuple[str, str, str], int] = field(default_factory=dict)  # cell -> budget
    notes: list[str] = field(default_factory=list)  # what the spec asks for that the plan leaves out, and why

    @property
    def teachers(self) -> list[Job]:
        """Every model a trial learns from, plus the Base runs: trained as tasks, before the grid."""
        seen: dict[str, Job] = {}
        for trial in self.trials:
            for job in dependencies(trial.job) + ([trial.job] if trial.method == "base" else []):
                seen.setdefault(job.key, job)
        return list(seen.values())

    @property
    def grid_trials(self) -> list[Trial]:
        """The students Tune runs (Base runs are plain models, made with the teachers)."""
        return [t for t in self.trials if t.method != "base"]

    def summary(self) -> dict:
        return {"teachers": len(self.teachers), "search_trials": len(self.grid_trials),
                "base_runs": sum(t.method == "base" for t in self.trials),
                "seed_reruns_per_cell": len(self.spec.seeds) - 1}


def grid_points(spec: ExperimentSpec, method: str) -> list[dict[str, float]]:
    space = spec.search_space(method)
    names = GRID_PARAMS[method]
    values = [getattr(space, name) for name in names]
    return [dict(zip(names, combo)) for combo in itertools.product(*values)]


def make_plan(spec: ExperimentSpec) -> Plan:
    trials, tpe_cells, left_out = [], {}, {}
    for (dataset, data), model, method in itertools.product(spec.datasets.items(), spec.models, spec.methods):
        if method in SASREC_METHODS and model != "sasrec":
            left_out.setdefault(method, {})[model] = None
            continue
        overrides = spec.model_overrides.get(model, {})
        base = base_job(data, model, spec.train, overrides)
        if method == "base":
            for seed in spec.seeds:
                job = replace(base, train=replace(spec.train, seed=seed))
                trials.append(Trial(dataset, model, method, seed, (), "search" if seed == spec.seeds[0] else "seeds", job))
            continue
        space = spec.search_space(method)
        if space.sampler == "tpe":
            tpe_cells[(dataset, model, method)] = space.budget
            continue
        for point in grid_points(spec, method):
            job = student_job(method, replace(base, train=replace(spec.train, seed=spec.seeds[0])), point, spec.teachers)
            trials.append(Trial(dataset, model, method, spec.seeds[0], tuple(sorted(point.items())), "search", job))
    notes = [f"{method} is defined over sasrec only: no {method} cells for {', '.join(models)}"
             for method, models in left_out.items()]
    notes += [f"search.{method} is not used: {method} is not in methods ({', '.join(spec.methods)})"
              for method in spec.search if method not in spec.methods]
    return Plan(spec, trials, tpe_cells, notes)


def trial_for(spec: ExperimentSpec, cell: tuple[str, str, str], point: dict[str, float], seed: int, stage: str) -> Trial:
    """The trial of `cell` at grid point `point` with `seed` (TPE draws and seed reruns)."""
    dataset, model, method = cell
    base = base_job(spec.datasets[dataset], model, replace(spec.train, seed=seed), spec.model_overrides.get(model, {}))
    job = student_job(method, base, point, spec.teachers)
    return Trial(dataset, model, method, seed, tuple(sorted(point.items())), stage, job)


def tpe_teachers(spec: ExperimentSpec, cell: tuple[str, str, str]) -> list[Job]:
    """Every teacher a TPE cell may need (each grid point's alpha for CSRec-T)."""
    jobs: dict[str, Job] = {}
    for point in grid_points(spec, cell[2]):
        for job in dependencies(trial_for(spec, cell, point, spec.seeds[0], "search").job):
            jobs.setdefault(job.key, job)
    return list(jobs.values())


def to_json(plan: Plan) -> str:
    rows = [t.record() | {"job": t.job.describe()} for t in plan.trials]
    teachers = [{"key": j.key, "job": j.describe()} for j in plan.teachers]
    # The scheduler of the search stages, for the tables' legend (analysis.collect.Collection.scheduler).
    scheduler = asdict(plan.spec.scheduler) | {"max_epochs": plan.spec.train.max_epochs,
                                               "rungs": list(plan.spec.scheduler.rungs(plan.spec.train.max_epochs))}
    return json.dumps({"summary": plan.summary(), "datasets": data_checksums(plan.spec.datasets),
                       "teachers": teachers, "trials": rows, "notes": plan.notes, "scheduler": scheduler,
                       "precision": plan.spec.train.precision,  # every job's (S3Rec's pretraining: fp32)
                       "tpe_cells": [list(c) + [b] for c, b in plan.tpe_cells.items()]}, indent=2)
