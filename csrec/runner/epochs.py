"""Progress by epoch: what each running trial has reached, the stage's counts and the time left.

No Ray here: the local backend feeds it from fit's per-epoch callback, the Ray backend from Tune's
per-epoch reports (csrec.runner.progress.LiveView). It keeps progress.json's "epochs" entry current,
which `launch.py status` prints with `status_lines` from another shell, and on a terminal prints
one line per update, at most every `every` seconds; a log that is no terminal (CI, a file) gets no
such lines, only the runner's own (a trial started, finished, stopped).

The time left is measured: the mean seconds of the stage's epochs so far times the epochs still to
train (each running trial's rest of its budget, each pending trial's whole budget), over the trials
that run at once; trials that stop early (patience, or the scheduler) end sooner than it says.
"""

from __future__ import annotations

import sys
import time

from csrec.runner.plan import SELECTION_METRIC


class EpochProgress:
    def __init__(self, experiment, stage: str, total: int, lanes: int, log=print, every: float = 5.0,
                 terminal: bool | None = None):
        self.experiment, self.stage, self.total, self.lanes, self.log = experiment, stage, total, lanes, log
        self.max_epochs = experiment.spec.train.max_epochs
        self.every = every
        self.terminal = sys.stdout.isatty() if terminal is None else terminal
        self.running: dict[str, dict] = {}  # trial label -> its latest epoch
        self.finished = self.failed = self.stopped = 0
        self.epoch_seconds, self.epochs_measured = 0.0, 0  # over the stage's epochs, for the time left
        self._last = 0.0

    def __getstate__(self):  # pickled with Tune's callbacks: not the printer
        return {k: v for k, v in self.__dict__.items() if k != "log"} | {"log": print}

    def epoch(self, label: str, epoch: int, valid: float, best: float, seconds: float) -> None:
        self.running[label] = {"epoch": int(epoch), "max_epochs": self.max_epochs, "valid": float(valid),
                               "best": float(best), "seconds": float(seconds)}
        self.epoch_seconds += float(seconds)
        self.epochs_measured += 1
        self.update()

    def ended(self, label: str, how: str) -> None:
        """how: "finished", "stopped" (early, by the scheduler) or "failed"."""
        self.running.pop(label, None)
        setattr(self, how, getattr(self, how) + 1)
        self.update(force=True)

    def mean_epoch_seconds(self) -> float | None:
        return self.epoch_seconds / self.epochs_measured if self.epochs_measured else None

    @property
    def pending(self) -> int:
        return max(0, self.total - self.finished - self.failed - self.stopped - len(self.running))

    def eta_seconds(self) -> float | None:
        mean = self.mean_epoch_seconds()
        if mean is None:
            return None
        left = sum(self.max_epochs - r["epoch"] for r in self.running.values()) + self.pending * self.max_epochs
        return left * mean / max(1, min(self.lanes, len(self.running) + self.pending))

    def snapshot(self) -> dict:
        return {"stage": self.stage, "total": self.total, "finished": self.finished, "stopped": self.stopped,
                "failed": self.failed, "running": dict(self.running), "pending": self.pending,
                "eta_s": self.eta_seconds(),
                "mean_epoch_s": self.mean_epoch_seconds()}

    def update(self, force: bool = False) -> None:
        now = time.time()
        if not force and now - self._last < self.every:
            return
        self._last = now
        snapshot = self.snapshot()
        self.experiment.progress(epochs=snapshot)
        if self.terminal:
            self.log(one_line(snapshot))


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "time left unknown (no epoch measured yet)"
    # Every pending epoch at the mean measured time: points that stop early (patience, the scheduler) end sooner.
    return f"time left about {seconds / 60:.0f} min" if seconds >= 60 else f"time left about {seconds:.0f} s"


def _counts(s: dict) -> str:
    stopped = f" ({s['stopped']} stopped early)" if s.get("stopped") else ""
    failed = f", {s['failed']} failed" if s.get("failed") else ""
    return (f"{s['stage']}: {s['finished'] + s.get('stopped', 0)} of {s['total']} finished{stopped}, "
            f"{len(s['running'])} running, {s['pending']} pending{failed}")


def one_line(s: dict) -> str:
    """The terminal's line: counts, each running trial's epoch and scores, the time left."""
    trials = " | ".join(f"{label}: epoch {r['epoch']}/{r['max_epochs']} {r['valid']:.4f} (best {r['best']:.4f})"
                        for label, r in s["running"].items())
    return f"{_counts(s)}; {_eta(s['eta_s'])}" + (f" | {trials}" if trials else "")


def status_lines(s: dict) -> list[str]:
    """`launch.py status`: the same, one running trial a line."""
    mean = f", {s['mean_epoch_s']:.1f} s per epoch measured" if s.get("mean_epoch_s") else ""
    lines = [f"{_counts(s)}; {_eta(s['eta_s'])}{mean}"]
    lines += [f"  {label}: epoch {r['epoch']} of {r['max_epochs']}, valid {SELECTION_METRIC} {r['valid']:.4f}, "
              f"best {r['best']:.4f}, {r['seconds']:.1f} s for the last epoch" for label, r in s["running"].items()]
    return lines
