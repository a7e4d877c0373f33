"""Live view of a running experiment (a Tune callback plus the teacher stage's counts)."""

from __future__ import annotations

import time

from ray.tune import Callback

from csrec.runner.plan import SELECTION_METRIC

METRIC = f"valid_{SELECTION_METRIC}"


class LiveView(Callback):
    """Prints one line per finished or failed trial and a summary every `every` seconds; keeps
    progress.json current (teachers done/running/pending, trials done/running/failed, best so far)."""

    def __init__(self, experiment, log=print, trials=None, every: float = 15.0):
        self.experiment, self.log, self.trials, self.every = experiment, log, trials or [], every
        self.running, self.done, self.failed, self.best = set(), 0, 0, {}
        self.last = 0.0

    def __getstate__(self):  # Tune pickles callbacks with its state; the printer is not needed there
        return {k: v for k, v in self.__dict__.items() if k != "log"} | {"log": print}

    def teachers(self, done: int, running: int, pending: int, total: int) -> None:
        self.experiment.progress(teachers_done=done, teachers_running=running, teachers_pending=pending)
        line = f"teachers: {done} done, {running} submitted to Ray, {pending} waiting for their own teachers (of {total})"
        if line != getattr(self, "_last_teachers", None):
            self._last_teachers = line
            self.log(line)

    def _trial(self, tune_trial):
        point = (tune_trial.config or {}).get("point")
        return self.trials[point] if point is not None and point < len(self.trials) else None

    def on_trial_start(self, iteration, trials, trial, **info):
        self.running.add(trial.trial_id)
        self._summary()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.running.discard(trial.trial_id)
        self.done += 1
        ours, score = self._trial(trial), (trial.last_result or {}).get(METRIC)
        if ours is not None and score is not None:
            method = ours.method
            if score > self.best.get(method, (-1.0, ""))[0]:
                self.best[method] = (score, ours.label())
            self.log(f"done {ours.label()}: {METRIC} {score:.4f}")
        self._summary()

    def on_trial_error(self, iteration, trials, trial, **info):
        self.running.discard(trial.trial_id)
        self.failed += 1
        ours = self._trial(trial)
        self.log(f"FAILED {ours.label() if ours else trial.trial_id} (retried up to the failure limit)")
        self._summary()

    def _summary(self) -> None:
        best = {m: round(s, 4) for m, (s, _) in self.best.items()}
        self.experiment.progress(trials_done=self.done, trials_running=len(self.running), trials_failed=self.failed,
                                 best_valid=best)
        self._maybe(f"trials: {self.done} done, {len(self.running)} running, {self.failed} failed; best {METRIC} "
                    + ", ".join(f"{m} {s:.4f}" for m, s in best.items()))

    def _maybe(self, line: str) -> None:
        if time.time() - self.last >= self.every:
            self.last = time.time()
            self.log(line)
