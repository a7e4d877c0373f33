"""How many model trainings a spec needs: our plan against the reference workflow.

    python benchmarks/plan_size.py experiments/paper_lastfm.yaml

Ours: every model once (keyed by the config that makes it), the grid's students, and each cell's
best point rerun on the other seeds. The reference workflow (the authors' scripts) trains a
student's teachers again for every student configuration it runs: a CSRec-M or CSRec-D student
costs m + 1 trainings, a CSRec-T student 3 (side teacher, main teacher, student), SoftRec and Base 1.
Both count the same students (grid points plus seed reruns).
"""

from __future__ import annotations

import sys

from csrec.config import load_spec
from csrec.methods import dependencies
from csrec.runner.experiment import all_teachers
from csrec.runner.plan import make_plan


def main(path: str) -> None:
    spec = load_spec(path)
    plan = make_plan(spec)
    models = all_teachers(plan)  # teachers and Base runs, each once
    cells = {t.cell for t in plan.grid_trials}
    reruns = len(cells) * (len(spec.seeds) - 1)
    ours = len(models) + len(plan.grid_trials) + reruns
    reference = sum(t.method == "base" for t in plan.trials)
    per_student = {}
    for trial in plan.grid_trials:
        per_student[trial.cell] = 1 + len(dependencies(trial.job))
        reference += per_student[trial.cell]
    reference += sum(per_student[cell] * (len(spec.seeds) - 1) for cell in cells)
    teacher_trainings_reference = reference - len(plan.grid_trials) - reruns - sum(t.method == "base" for t in plan.trials)
    print(f"{spec.name}: {len(spec.models)} models x {len(spec.methods)} methods, seeds {list(spec.seeds)}")
    print(f"students: {len(plan.grid_trials)} grid trials + {reruns} seed reruns")
    print(f"ours: {len(models)} teachers and Base runs (each once) + {len(plan.grid_trials) + reruns} students = {ours} trainings")
    print(f"reference workflow: {reference} trainings ({teacher_trainings_reference} of them teachers)")
    print(f"ratio: {reference / ours:.2f}x fewer trainings; teachers alone: "
          f"{teacher_trainings_reference / max(1, len(models) - sum(t.method == 'base' for t in plan.trials)):.1f}x")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "experiments/paper_lastfm.yaml")
