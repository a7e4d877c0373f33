"""Live view of a running experiment (a Tune callback plus the teacher stage's counts); the
per-epoch part (each running trial's epoch, scores, time left) is csrec.runner.epochs'."""

from __future__ import annotations

import warnings

from ray.tune import Callback

from csrec.runner.epochs import EpochProgress
from csrec.runner.plan import SELECTION_METRIC
from csrec.runner.scheduler import BEST_METRIC, EPOCH
from csrec.runner.trials import best_valid_by_method
from csrec.tracking import curve

METRIC = f"valid_{SELECTION_METRIC}"
WARNINGS = "warnings"  # a trial's report: its warnings since the last report, one a line (csrec.runner.ray_backend)


class LiveView(Callback):
    """Prints one line per finished or failed trial and a summary whenever the counts change; keeps
    progress.json current (teachers done/running/pending, trials done/running/failed). The best
    score so far starts from every trial already in the store (earlier stages, runs, reused models)."""

    def __init__(self, experiment, log=print, trials=None, epochs: EpochProgress | None = None):
        self.experiment, self.log, self.trials, self.epochs = experiment, log, trials or [], epochs
        self.counts = {}
        self.best = best_valid_by_method(experiment.store)  # method -> best validation score

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

    def on_step_end(self, iteration, trials, **info):
        self._summary(trials)  # counts from Tune's own trial states, looked at every loop step

    def on_trial_result(self, iteration, trials, trial, result, **info):
        for line in filter(None, str(result.get(WARNINGS) or "").split("\n")):  # said where the trial ran
            warnings.warn(line)
        ours = self._trial(trial)
        if self.epochs is not None and ours is not None and EPOCH in result:  # an epoch report, not the last one
            self.epochs.epoch(ours.label(), result[EPOCH], result[METRIC], result[BEST_METRIC], result["epoch_seconds"])

    def on_trial_complete(self, iteration, trials, trial, **info):
        ours, last = self._trial(trial), trial.last_result or {}
        # Its last report an epoch's (the final one has no EPOCH): the scheduler stopped it. ("done" says
        # nothing here: Tune sets it on the result a STOP decision was made on.)
        stopped = EPOCH in last
        score = last.get(BEST_METRIC) if stopped else last.get(METRIC)
        if self.epochs is not None and ours is not None:
            self.epochs.ended(ours.label(), "stopped" if stopped else "finished")
        if ours is not None and score is not None:
            method = ours.method
            if score > self.best.get(method, float("-inf")):
                self.best[method] = score
            if stopped:
                self.log(f"stopped early {ours.label()} after epoch {last[EPOCH]}: best {METRIC} {score:.4f}")
            else:
                self.log(f"done {ours.label()}: {METRIC} {score:.4f}")

    def on_trial_error(self, iteration, trials, trial, **info):
        ours = self._trial(trial)
        if self.epochs is not None and ours is not None:
            self.epochs.ended(ours.label(), "failed")
        self.log(f"FAILED {ours.label() if ours else trial.trial_id} (retried up to the failure limit)")

    def _summary(self, trials) -> None:
        """done = terminated, running = running now (a retry included), failed = out of retries."""
        states = [t.status for t in trials]
        counts = {"done": states.count("TERMINATED"), "running": states.count("RUNNING"),
                  "failed": states.count("ERROR")}
        if counts == self.counts:
            return
        self.counts = counts
        best = {m: round(s, 4) for m, s in self.best.items()}
        self.experiment.progress(trials_done=counts["done"], trials_running=counts["running"],
                                 trials_failed=counts["failed"])
        self.log(f"trials: {counts['done']} done, {counts['running']} running, {counts['failed']} failed; "
                 f"best {METRIC} " + ", ".join(f"{m} {s:.4f}" for m, s in best.items()))


class TeacherEpochs:
    """The teacher stage's progress by epoch, as the search stage's: each teacher task reports its
    epochs to a small actor (a task cannot call the driver), which the driver's loop drains into an
    EpochProgress of stage "teachers" (the live line, progress.json's "epochs", `launch.py status`)
    and, with `tracker` (csrec.tracking), into each teacher's tracked run."""

    def __init__(self, experiment, total: int, lanes: int, log=print, tracker=None):
        import ray

        self.epochs = EpochProgress(experiment, "teachers", total, lanes, log)
        self.board = ray.remote(num_cpus=0)(_EpochBoard).remote()
        self.tracker = tracker

    def reporter(self, label: str):
        """The task's on_epoch_end: one fire-and-forget call an epoch (never waits on the driver)."""
        board = self.board

        def report(record) -> None:
            board.add.remote(label, record.epoch, record.valid_score, record.best_score, record.seconds,
                             record.train_loss)

        return report

    def poll(self) -> None:
        import ray

        for label, epoch, valid, best, seconds, train_loss in ray.get(self.board.drain.remote()):
            if label not in self.done:
                self.epochs.epoch(label, epoch, valid, best, seconds)
                if self.tracker is not None:
                    self.tracker.epoch(label, epoch, curve({"train_loss": train_loss, "valid_score": valid,
                                                            "best_score": best, "seconds": seconds}))

    def ended(self, label: str, how: str = "finished") -> None:
        self.poll()  # its last epochs first, so that none arrives after its end
        self.done.add(label)
        self.epochs.ended(label, how)

    @property
    def done(self) -> set:
        return self.__dict__.setdefault("_done", set())


class _EpochBoard:
    """The actor behind TeacherEpochs: epoch reports held until the driver drains them."""

    def __init__(self):
        self.records: list[tuple] = []

    def add(self, *record) -> None:
        self.records.append(record)

    def drain(self) -> list[tuple]:
        records, self.records = self.records, []
        return records
