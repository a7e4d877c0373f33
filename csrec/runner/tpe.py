"""TPE search of one (dataset, model, method) cell, the same for every backend.

Optuna's TPESampler proposes points over the method's named parameters (beta, temperature, alpha:
categoricals of the spec's values, so TPE models each one); the driver runs them in rounds of as
many trials as the backend runs at once (`backend.width`), through the backend's `run_trials`, and
tells the study each trial's validation NDCG@10. The budget counts distinct points: a proposal of a
point already evaluated is answered from the store without training and does not count, and one
round never holds the same point twice. Should TPE propose nothing new 50 times in a row, the round
is filled with unevaluated grid points drawn at random, and the log says so. A trial that fails
(after the backend's retries) is logged, told to the study as failed and counted against this
run's budget; the search goes on, and a resume tries the point again (as the grid does).

The study lives in a journal file in the experiment directory. After a crash its proposals that
were never answered are run first (their partly trained students resume from their epoch
checkpoints); proposals cut short while being sampled are closed as failed. A point counts as
evaluated when the study has its value and the store its record.
"""

from __future__ import annotations

import itertools
import random

import optuna

from csrec.errors import CSRecError, first_line
from csrec.storage import RemotePath
from csrec.runner.plan import SELECTION_METRIC, trial_for
from csrec.runner.trials import record_stored, trial_result

# Proposals in a row that only repeat known points before the round is filled with unevaluated grid
# points drawn at random (with a log line).
_MAX_REPEATS = 50
COMPLETE, RUNNING, FAIL = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING,
                           optuna.trial.TrialState.FAIL)


def distributions(spec, method: str) -> dict[str, optuna.distributions.CategoricalDistribution]:
    from csrec.methods import GRID_PARAMS

    space = spec.search_space(method)
    return {name: optuna.distributions.CategoricalDistribution(list(getattr(space, name)))
            for name in GRID_PARAMS[method]}


def open_study(cell: tuple, experiment) -> optuna.Study:
    """One Optuna study per cell, kept in the experiment directory (a journal file) for resume."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not a line per trial: the runner logs its own
    # Optuna's journal is a local file: an experiment on object storage keeps it in this node's work
    # folder (resumed on another machine, a TPE cell starts a new study; points in the store are answered from it).
    folder = experiment.work_dir if isinstance(experiment.directory, RemotePath) else experiment.directory
    folder.mkdir(parents=True, exist_ok=True)
    journal = folder / "optuna.journal"
    name = f"{experiment.spec.name}-{'-'.join(cell)}"
    sampler = optuna.samplers.TPESampler(seed=experiment.spec.seeds[0], constant_liar=True)
    try:
        storage = JournalStorage(JournalFileBackend(str(journal)))
        return optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True,
                                   sampler=sampler)
    except Exception as error:  # noqa: BLE001 - Optuna's own errors on a damaged journal vary
        raise CSRecError(f"{journal} cannot be read ({first_line(error)}); move it aside and resume: the TPE "
                         "studies start again, and points whose trials are in the store are answered from it") from None


def _point(params: dict) -> tuple:
    return tuple(sorted(params.items()))


def run_tpe(cell: tuple, budget: int, experiment, backend, log=print) -> None:
    """Evaluate min(budget, grid size) distinct points of the cell, chosen by TPE, round by round."""
    spec, store, name = experiment.spec, experiment.store, "/".join(cell)
    space = distributions(spec, cell[2])
    grid = [_point(dict(zip(space, values))) for values in itertools.product(*(d.choices for d in space.values()))]
    target = min(budget, len(grid))
    study = open_study(cell, experiment)
    rng = random.Random(spec.seeds[0])
    failed: set[tuple] = set()  # failed in this run: counted against the budget, tried again on resume

    def trial_of(point: tuple):
        return trial_for(spec, cell, dict(point), spec.seeds[0], "search")

    while True:
        # Evaluated: answered in the study and its record in the store (a record the store dropped
        # as damaged makes its point unevaluated again, so it is run again if proposed).
        told = {_point(t.params): t.value for t in study.trials if t.state == COMPLETE and set(t.params) == set(space)}
        done = {point: value for point, value in told.items() if trial_result(store, trial_of(point)) is not None}
        # The cell's running total, for `launch.py status` (a round's live view counts that round only).
        experiment.progress(tpe_evaluated=len(done), tpe_failed=len(failed), tpe_target=target)
        if len(done) + len(failed) >= target:
            break
        width = min(backend.width(experiment), target - len(done) - len(failed))
        batch = _leftovers(study, space, done, failed)
        repeats = 0
        while len(batch) < width and repeats < _MAX_REPEATS:
            ask = study.ask(space)
            point = _point(ask.params)
            if point in done:  # known value: answer it, it costs nothing and does not count
                study.tell(ask, done[point])
            elif point in batch or point in failed:  # FAIL: TPE leaves it out of its model
                study.tell(ask, state=FAIL)
            else:
                batch[point] = ask.number
                repeats = 0
                continue
            repeats += 1
        if len(batch) < width:  # TPE keeps proposing what it has: fill the round with unevaluated points
            fresh = [p for p in grid if p not in done and p not in failed and p not in batch]
            extra = rng.sample(fresh, min(width - len(batch), len(fresh)))
            log(f"tpe {name}: {_MAX_REPEATS} proposals in a row repeated known points; adding "
                f"{len(extra)} unevaluated grid point(s) drawn at random: {[dict(p) for p in extra]}")
            for point in extra:
                study.enqueue_trial(dict(point))
                ask = study.ask(space)
                if _point(ask.params) != point:
                    raise CSRecError(f"tpe {name}: Optuna did not hand out the enqueued point {dict(point)}")
                batch[point] = ask.number
        trials = {point: trial_of(point) for point in batch}
        experiment.adopt([t.job for t in trials.values()], log)
        pending = record_stored(list(trials.values()), store)
        if pending:
            backend.run_trials(f"tpe-{'-'.join(cell)}-{pending[0].job.key[:8]}", pending, experiment)
        for point, number in batch.items():
            result = trial_result(store, trials[point])
            if result is None:  # the backend has logged its error; the search goes on without it
                study.tell(number, state=FAIL)
                failed.add(point)
                log(f"tpe {name}: {trials[point].label()} failed (its error is above); it counts against "
                    "the budget now, and `launch.py resume` tries it again")
            else:
                study.tell(number, result["valid"][SELECTION_METRIC])
    log(f"tpe {name}: {len(done)} distinct points evaluated, {len(failed)} failed (budget {budget})")


def _leftovers(study: optuna.Study, space: dict, done: dict, failed: set) -> dict[tuple, int]:
    """Proposals a stopped driver left unanswered (RUNNING in the journal): complete, new ones are run
    first; the others (cut short while being sampled, a repeat, already evaluated) are closed as FAIL."""
    batch: dict[tuple, int] = {}
    for trial in study.trials:
        if trial.state != RUNNING:
            continue
        point = _point(trial.params)
        if set(trial.params) == set(space) and point not in done and point not in failed and point not in batch:
            batch[point] = trial.number
        else:
            study.tell(trial.number, state=FAIL)
    return batch
