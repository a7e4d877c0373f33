"""SIGTERM (what Slurm, Kubernetes and `timeout` send) stops a driver as Ctrl-C does.

The handler sends this process SIGINT, so that whatever handles Ctrl-C at that moment handles it:
Tune's handler stops its trials, Python's raises KeyboardInterrupt; launch.py then says what was
kept and exits 130. ray.init installs its own SIGTERM handler (a sys.exit with a traceback), so
this is installed again after it.
"""

from __future__ import annotations

import os
import signal
import threading


def sigterm_as_ctrl_c():
    """Install the handler; returns the one it replaces (None off the main thread, where signal
    handlers cannot be set)."""
    if threading.current_thread() is threading.main_thread():
        return signal.signal(signal.SIGTERM, lambda signum, frame: os.kill(os.getpid(), signal.SIGINT))
    return None
