"""How good is each student's teacher module on its own? `launch.py teachers DIR`.

A student learns from softmax(e / T) of its teacher module, e the mean of its teachers' logits
(Alg. 1-2; CSRec-T's module is its one main teacher). This evaluates e as a recommender on the
validation and test users, next to each teacher's and the student's own stored metrics, for every
soft-label method of the experiment (seed 0's search points: the teachers are shared across seeds).
SoftRec's teacher (item popularity) is the same for every input and is ranked as such. Teachers
must be in the store; nothing is trained.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from torch import nn

from csrec.config import load_spec
from csrec.data.protocols import train_item_counts
from csrec.evaluate import evaluate, history_before_target
from csrec.jobs import MODELS, load_model, read_result, splits_for
from csrec.methods import SASREC_METHODS, Job
from csrec.objectives import popularity_teacher
from csrec.runner.experiment import searched_tpe_trials
from csrec.runner.plan import make_plan
from csrec.storage import location
from csrec.store import Store

METRICS = ("recall@10", "ndcg@10")
# Methods whose student learns from no soft labels: ELECRec's generator is trained with it, S3Rec's
# pretrained model is where it starts.
NO_TEACHER_MODULE = ("base", *SASREC_METHODS)


class MeanLogits(nn.Module):
    """The paper's ensemble e = mean_k z_k of trained teachers, scored like one model."""

    def __init__(self, teachers: list[nn.Module]):
        super().__init__()
        self.teachers = nn.ModuleList(teachers)

    def forward(self, item_seq: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return torch.stack([t(item_seq, lengths) for t in self.teachers]).mean(0)  # [B, n_items + 1]


class Popularity(nn.Module):
    """SoftRec's teacher as a recommender: the same popularity logits for every input."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.register_buffer("logits", logits.float())

    def forward(self, item_seq: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(len(item_seq), -1).clone()  # [B, n_items + 1]


def teacher_module(job: Job, store: Store) -> tuple[str, nn.Module]:
    """(description, module) of the student job's teacher module, loaded from the store."""
    if job.objective == "softrec":
        counts = train_item_counts(splits_for(job).data)  # training interactions only, as in training
        return "item popularity (training counts)", Popularity(popularity_teacher(counts))
    teachers = [load_model(store, t) for t in job.teachers]
    names = " + ".join(t.describe() for t in job.teachers)
    return (f"mean logits of {names}" if len(teachers) > 1 else names), MeanLogits(teachers)


def teacher_quality(directory: str | Path) -> pd.DataFrame:
    """Per soft-label cell (its best finished search point on validation NDCG@10): the teacher
    module (evaluated here), each of its teachers and the student (their stored metrics). Metrics
    are fractions."""
    directory = location(directory, "experiment directory")
    spec = load_spec(directory / "spec.yaml", recorded=True)
    store = Store(directory / "store")
    plan = make_plan(spec)
    best: dict[tuple, tuple[float, Job]] = {}
    for trial in plan.grid_trials + searched_tpe_trials(plan, store):
        if trial.method not in NO_TEACHER_MODULE and store.verify(MODELS, trial.job.key):
            score = read_result(store, trial.job)["valid"]["ndcg@10"]
            if trial.cell not in best or score > best[trial.cell][0]:
                best[trial.cell] = (score, trial.job)
    rows = []
    for cell, (_, job) in sorted(best.items()):
        splits = splits_for(job)
        name, module = teacher_module(job, store)
        scores = {split: evaluate(module, getattr(splits, split), job.data.resolved_exclude_history,
                                   device="cpu", history=history_before_target(splits.data, split)).metrics()
                  for split in ("valid", "test")}
        rows.append(_row(cell, "teacher module", name, scores))
        rows += [_row(cell, "teacher", t.describe(), read_result(store, t)) for t in job.teachers]
        rows.append(_row(cell, "student", job.describe(), read_result(store, job)))
    return pd.DataFrame(rows, columns=COLUMNS)


COLUMNS = ["dataset", "model", "method", "role", "what", "valid_ndcg@10", *(f"test_{m}" for m in METRICS)]


def _row(cell: tuple, role: str, what: str, result: dict) -> dict:
    return dict(zip(COLUMNS, (*cell, role, what, result["valid"]["ndcg@10"], *(result["test"][m] for m in METRICS))))


def to_markdown(frame: pd.DataFrame) -> str:
    """The table in %, one line per model."""
    lines = ["| dataset | model | method | role | what | valid NDCG@10 | test Recall@10 | test NDCG@10 |",
             "|---|---|---|---|---|---:|---:|---:|"]
    for row in frame[COLUMNS].itertuples(index=False):
        lines.append("| " + " | ".join(map(str, row[:5])) + " | " + " | ".join(f"{100 * v:.3f}" for v in row[5:]) + " |")
    return "\n".join(lines)
