"""SIGTERM (what Slurm, Kubernetes and `timeout` send) stops a driver as Ctrl-C does.

The handler sends this process SIGINT, so that whatever handles Ctrl-C at that moment handles it:
Tune's handler stops its trials, Python's raises KeyboardInterrupt; launch.py then says what was
kept and exits 130. ray.init installs its own SIGTERM handler (a sys.exit with a traceback), so
this is installed again after it.

Tune installs its Ctrl-C handler when `fit` starts and puts the previous one back only when a
signal arrives: after a `fit` that ended normally, its handler would swallow the next Ctrl-C or
SIGTERM (between stages, or during the table) and the run would go on. `handlers_kept` puts the
previous handlers back whatever `fit` did.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading


def sigterm_as_ctrl_c():
    """Install the handler; returns the one it replaces (None off the main thread, where signal
    handlers cannot be set)."""
    if threading.current_thread() is threading.main_thread():
        return signal.signal(signal.SIGTERM, _as_ctrl_c)
    return None


def _as_ctrl_c(signum, frame) -> None:
    # A driver started in the background by a script (`csrec run SPEC &`, no job control) has SIGINT
    # ignored from its start, which would make SIGTERM do nothing: it stops as Ctrl-C would instead.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        raise KeyboardInterrupt
    os.kill(os.getpid(), signal.SIGINT)


@contextlib.contextmanager
def handlers_kept():
    """The SIGINT and SIGUSR1 handlers at entry are the ones at exit (module docstring)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    kept = {number: signal.getsignal(number) for number in (signal.SIGINT, getattr(signal, "SIGUSR1", None))
            if number is not None}
    try:
        yield
    finally:
        for number, handler in kept.items():
            signal.signal(number, handler)
