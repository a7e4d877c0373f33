"""The plan run in this process, one job after another: no Ray (tests, debugging, one machine)."""

from __future__ import annotations

import optuna

from csrec.jobs import train_job
from csrec.methods import Job
from csrec.runner.plan import SELECTION_METRIC, Trial, trial_for
from csrec.runner.trials import run_trial


class LocalBackend:
    def __init__(self, log=print):
        self.log = log

    def train_models(self, jobs: list[Job], experiment) -> None:
        for number, job in enumerate(jobs, 1):  # dependency order: side teachers before main teachers
            self.log(f"[{number}/{len(jobs)}] teacher {job.describe()}")
            train_job(job, experiment.store, experiment.work_dir)
            experiment.progress(teachers_done=number)

    def run_trials(self, stage: str, trials: list[Trial], experiment) -> None:
        for number, trial in enumerate(trials, 1):
            result = run_trial(trial, experiment.store, experiment.work_dir)
            self.log(f"[{stage} {number}/{len(trials)}] {trial.label()}: valid {SELECTION_METRIC} "
                     f"{result['valid'][SELECTION_METRIC]:.4f}")

    def run_tpe(self, cell: tuple, budget: int, experiment) -> None:
        study = tpe_study(cell, experiment)
        spec = experiment.spec
        space = tpe_distributions(spec, cell[2])
        grid_size = 1
        for distribution in space.values():
            grid_size *= len(distribution.choices)

        def distinct() -> int:  # TPE may draw a point again: the budget counts distinct points
            return len({tuple(sorted(t.params.items())) for t in study.trials if t.state.is_finished()})

        while distinct() < min(budget, grid_size):
            ask = study.ask(space)
            trial = trial_for(spec, cell, dict(ask.params), spec.seeds[0], "search")
            result = run_trial(trial, experiment.store, experiment.work_dir)
            study.tell(ask, result["valid"][SELECTION_METRIC])


def tpe_distributions(spec, method: str) -> dict[str, optuna.distributions.BaseDistribution]:
    from csrec.methods import GRID_PARAMS

    space = spec.search_space(method)
    return {name: optuna.distributions.CategoricalDistribution(list(getattr(space, name)))
            for name in GRID_PARAMS[method]}


def tpe_study(cell: tuple, experiment) -> optuna.Study:
    """One Optuna study per cell, kept in the experiment directory (a journal file) for resume."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path = experiment.directory / "optuna.journal"
    storage = JournalStorage(JournalFileBackend(str(path)))
    name = f"{experiment.spec.name}-{'-'.join(cell)}"
    return optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True,
                               sampler=optuna.samplers.TPESampler(seed=experiment.spec.seeds[0]))
