"""TPE search of one (dataset, model, method) cell, the same for every backend.

Optuna's TPESampler proposes points over the method's named parameters (beta, temperature, alpha:
categoricals of the spec's values, so TPE models each one); the driver runs them in rounds of as
many trials as the backend runs at once (`backend.width`), through the backend's `run_trials`, and
tells the study each trial's validation NDCG@10. The budget counts distinct points: a proposal of a
point already evaluated is answered from the store without training and does not count, and one
round never holds the same point twice. Should TPE propose nothing new 200 times in a row, the
first unevaluated grid point is taken instead, and the log says so.

The study lives in a journal file in the experiment directory. After a crash its proposals that
were never answered are run first (their partly trained students resume from their epoch
checkpoints), so a resumed search goes on where it stopped and spends no more than its budget.
"""

from __future__ import annotations

import itertools

import optuna

from csrec.errors import CSRecError
from csrec.runner.plan import SELECTION_METRIC, trial_for
from csrec.runner.trials import trial_result

# Proposals in a row that only repeat evaluated or chosen points before a round is closed as it is
# (or, when the round is still empty, the first unevaluated grid point is taken, with a log line).
_MAX_REPEATS = 200


def distributions(spec, method: str) -> dict[str, optuna.distributions.CategoricalDistribution]:
    from csrec.methods import GRID_PARAMS

    space = spec.search_space(method)
    return {name: optuna.distributions.CategoricalDistribution(list(getattr(space, name)))
            for name in GRID_PARAMS[method]}


def open_study(cell: tuple, experiment) -> optuna.Study:
    """One Optuna study per cell, kept in the experiment directory (a journal file) for resume."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(experiment.directory / "optuna.journal")))
    name = f"{experiment.spec.name}-{'-'.join(cell)}"
    sampler = optuna.samplers.TPESampler(seed=experiment.spec.seeds[0], constant_liar=True)
    return optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True,
                               sampler=sampler)


def _point(params: dict) -> tuple:
    return tuple(sorted(params.items()))


def run_tpe(cell: tuple, budget: int, experiment, backend, log=print) -> None:
    """Evaluate min(budget, grid size) distinct points of the cell chosen by TPE."""
    spec = experiment.spec
    space = distributions(spec, cell[2])
    grid = [_point(dict(zip(space, values))) for values in itertools.product(*(d.choices for d in space.values()))]
    target = min(budget, len(grid))
    study = open_study(cell, experiment)

    def evaluated() -> dict[tuple, float]:
        return {_point(t.params): t.value for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE}

    rounds = 0
    while len(evaluated()) < target:
        done = evaluated()
        # Proposals left unanswered by a stopped driver come first, then new ones.
        batch = {_point(t.params): t.number for t in study.trials
                 if t.state == optuna.trial.TrialState.RUNNING and _point(t.params) not in done}
        width = min(backend.width(experiment), target - len(done))
        repeats = 0
        while len(batch) < width and repeats < _MAX_REPEATS:
            ask = study.ask(space)
            point = _point(ask.params)
            if point in done:  # known value: answer it, it costs nothing and does not count
                study.tell(ask, done[point])
            elif point in batch:  # already chosen this round
                study.tell(ask, state=optuna.trial.TrialState.FAIL)
            else:
                batch[point] = ask.number
                continue
            repeats += 1
        if not batch:  # TPE has settled on evaluated points; the budget asks for more: say so, go on
            point = next(p for p in grid if p not in done)
            log(f"tpe {'/'.join(cell)}: {_MAX_REPEATS} proposals in a row were points already evaluated; "
                f"evaluating the first unevaluated grid point {dict(point)} to reach the budget")
            study.enqueue_trial(dict(point))
            batch[point] = study.ask(space).number
        trials = {point: trial_for(spec, cell, dict(point), spec.seeds[0], "search") for point in batch}
        pending = [t for t in trials.values() if trial_result(experiment.store, t) is None]
        rounds += 1
        if pending:
            backend.run_trials(f"tpe-{'-'.join(cell)}-{pending[0].job.key[:8]}", pending, experiment)
        for point, number in batch.items():
            result = trial_result(experiment.store, trials[point])
            if result is None:  # the backend has logged why; stop before asking for more
                raise CSRecError(f"TPE trial {trials[point].label()} did not finish (its error is above); "
                                 "`launch.py resume` runs it again")
            study.tell(number, result["valid"][SELECTION_METRIC])
    log(f"tpe {'/'.join(cell)}: {len(evaluated())} distinct points evaluated (budget {budget})")
