"""One driver per experiment: `DIR/driver.lock` names the driver that holds it (host, pid, start).

The holder keeps an exclusive `flock` on the file for its whole run; the kernel drops it when the
process ends, however it ends (kill -9 included). So on one host a lock file whose flock can be
taken is stale: its driver is gone, and the new driver takes it over and says so. A lock written on
another host cannot be checked from here (flock over NFS is not to be relied on): it is refused with
its holder named and the way to remove it once that driver is known to be gone.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from csrec.errors import CSRecError

LOCK_FILE = "driver.lock"


class ExperimentLock:
    """`with ExperimentLock(directory, log):` holds the experiment for this process."""

    def __init__(self, directory: Path, log=print):
        self.path = Path(directory) / LOCK_FILE
        self.log = log
        self.handle = None

    def __enter__(self) -> "ExperimentLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        while True:
            handle = open(self.path, "a+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _describe(_read(self.path))
                handle.close()
                raise CSRecError(f"{self.path.parent} is being run by another driver ({holder}); wait for it to end "
                                 "or stop it, then resume; `launch.py status DIR` shows its progress") from None
            if _same_file(handle, self.path):  # not a file another driver removed meanwhile
                break
            handle.close()
        previous = _read(self.path)
        if previous and previous.get("host") != socket.gethostname():
            handle.close()
            raise CSRecError(f"{self.path} names a driver on another host ({_describe(previous)}), which cannot be "
                             "checked from here; if it is no longer running, delete the lock file and resume")
        if previous:
            self.log(f"lock: the driver that held {self.path.parent} ({_describe(previous)}) is gone; taking over")
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}))
        handle.flush()
        self.handle = handle

    def release(self) -> None:
        if self.handle is not None:
            self.path.unlink(missing_ok=True)  # while still holding it: a waiting driver then sees a new file
            self.handle.close()
            self.handle = None


def holder(directory: Path) -> str | None:
    """Who holds the experiment, as `status` says it (reads only; a pid on this host is checked)."""
    path = Path(directory) / LOCK_FILE
    if not path.exists():
        return None
    content = _read(path)
    if content.get("host") == socket.gethostname() and isinstance(content.get("pid"), int):
        try:
            os.kill(content["pid"], 0)
        except ProcessLookupError:
            return f"none: the lock of {_describe(content)} is stale (no such process); the next run takes it over"
        except PermissionError:
            pass  # alive, another user's
    return _describe(content)


def _read(path: Path) -> dict:
    try:
        content = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {"unreadable": True}
    return content if isinstance(content, dict) else {"unreadable": True}


def _describe(holder: dict) -> str:
    if not holder or holder.get("unreadable"):
        return "holder unknown: the lock file is empty or unreadable"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, since {started}"


def _same_file(handle, path: Path) -> bool:
    try:
        return os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False
