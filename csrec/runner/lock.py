"""One driver per experiment: `DIR/driver.lock` names the driver that holds it (host, pid, machine, started).

The holder keeps an exclusive `flock` on the file for its whole run; the kernel drops it when the
process ends, however it ends (kill -9 included). So on one host a lock file whose flock can be
taken is stale: its driver is gone, and the new driver takes it over and says so. A lock written on
another host cannot be checked from here (flock over NFS is not to be relied on): it is refused with
its holder named and the way to remove it once that driver is known to be gone.

On object storage there is no flock: `LeaseLock` writes the lock object with an owner token and the
end of a lease that a thread renews every LEASE_S / 4 seconds, and reads it back SETTLE_S seconds
later: of two drivers starting together the later write wins and the other is refused. A lock whose
lease has ended (its driver stopped renewing it: killed, or its machine lost), or whose driver is a
dead process of this machine (same host name, boot id and pid namespace), is taken over and said; a
lock that cannot be read (the store unreachable) is never taken over, and a renewal that cannot read
it tries again. A driver that finds its lock taken over (it paused for longer than the lease) stops
as on Ctrl-C, keeping finished work. (S3's conditional write, If-None-Match, would close the gap of
a driver paused between reading and writing for longer than SETTLE_S; pyarrow, which gives us every
file system through one interface, cannot send it. Hosts' clocks must agree to well within LEASE_S.)
"""

from __future__ import annotations

import _thread
import contextlib
import fcntl
import functools
import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from csrec.errors import CSRecError
from csrec.storage import RemotePath

LOCK_FILE = "driver.lock"
LEASE_S = 60.0  # a lease not renewed for this long is stale: its driver is gone
SETTLE_S = 2.0  # from writing the lock to reading it back: a second driver's write in between wins


def experiment_lock(directory, log=print) -> "ExperimentLock | LeaseLock":
    """The lock for an experiment directory: an flock locally, a lease on object storage."""
    return LeaseLock(directory, log) if isinstance(directory, RemotePath) else ExperimentLock(directory, log)


class _HeldWhileInside:
    """`with lock:` acquires on entry and releases on exit, whatever ends the block."""

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class ExperimentLock(_HeldWhileInside):
    """`with ExperimentLock(directory, log):` holds the experiment for this process."""

    def __init__(self, directory: Path, log=print):
        self.path = Path(directory) / LOCK_FILE
        self.log = log
        self.handle = None

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
        handle.write(json.dumps({**_this_process(), "started": time.time()}))
        handle.flush()
        self.handle = handle

    def release(self) -> None:
        if self.handle is not None:
            self.path.unlink(missing_ok=True)  # while still holding it: a waiting driver then sees a new file
            self.handle.close()
            self.handle = None


class LeaseLock(_HeldWhileInside):
    """`with LeaseLock(directory, log):` holds an experiment on object storage (module docstring)."""

    def __init__(self, directory: RemotePath, log=print):
        self.path = directory / LOCK_FILE
        self.log = log
        self.owner = uuid.uuid4().hex
        self.started = time.time()  # when this driver took the lock: renewals keep it
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def acquire(self) -> None:
        try:
            self._take()
        except OSError as error:  # never a take-over on a failed read: the holder may be running
            raise CSRecError(f"cannot read or write {self.path} ({error}); nothing was started: run again, or check "
                             "access to the store") from None
        self._renewer = threading.Thread(target=self._renew, name="csrec-lock-lease", daemon=True)
        self._renewer.start()

    def _take(self) -> None:
        previous = _read(self.path, strict=True) if self.path.exists() else None
        if previous is not None:
            stale = _stale(previous, lease=True)
            if stale is None:
                raise CSRecError(f"{self.path.parent} is being run by another driver ({_describe(previous)}); wait for "
                                 "it to end or stop it, then resume; `launch.py status DIR` shows its progress")
            self.log(f"lock: the driver that held {self.path.parent} ({_describe(previous)}) is gone ({stale}); "
                     "taking over")
        self._write()
        time.sleep(SETTLE_S)
        current = _read(self.path, strict=True)
        if current.get("owner") != self.owner:
            raise CSRecError(f"{self.path.parent} was taken by another driver starting at the same time "
                             f"({_describe(current)}); wait for it to end or stop it, then resume")

    def _write(self) -> None:
        self.path.write_text(json.dumps({**_this_process(), "started": self.started, "owner": self.owner,
                                         "expires": time.time() + LEASE_S}))

    def _renew(self) -> None:
        while not self._stop.wait(LEASE_S / 4):
            try:
                current = _read(self.path, strict=True)
                if current.get("owner") != self.owner:
                    # Two drivers on one experiment would write the same files: this one stops as on Ctrl-C
                    # (finished work is kept), the other goes on.
                    self.log(f"error: lock: {self.path} was taken over by another driver ({_describe(current)}) "
                             "while this one ran (a pause longer than the lease?); stopping this driver")
                    _thread.interrupt_main()
                    return
                self._write()
            except OSError:  # the store unreachable for a moment: the next renewal tries again
                continue

    def release(self) -> None:
        if self._renewer is None:
            return
        self._stop.set()
        self._renewer.join()
        self._renewer = None
        try:
            if _read(self.path, strict=True).get("owner") == self.owner:
                self.path.unlink(missing_ok=True)
        except OSError as error:  # left in place: its lease ends within LEASE_S and the next driver takes it
            self.log(f"warning: lock: could not remove {self.path} ({error}); the next driver takes it over once "
                     f"its lease ends ({LEASE_S:.0f} s)")


def holder(directory) -> str | None:
    """Who holds the experiment, as `status` says it (reads only; a pid on this host is checked, and
    on object storage the lease)."""
    path = directory / LOCK_FILE
    if not path.exists():
        return None
    content = _read(path)
    stale = _stale(content, lease=isinstance(path, RemotePath))
    if stale is not None and not content.get("unreadable"):
        return f"none: the lock of {_describe(content)} is stale ({stale}); the next run takes it over"
    return _describe(content)


def _stale(content: dict, lease: bool) -> str | None:
    """Why the driver a lock names is gone, or None when it may be running."""
    if content.get("unreadable"):
        return "its lock is unreadable" if lease else None  # a lock object is written whole: not a driver's
    # The pid is checked only where it is a process of this machine: a host name alone can be shared
    # (containers on the host's network, images that all call themselves "localhost"). A lock written
    # before locks named their machine is checked by its host.
    same = "machine" if "machine" in content else "host"
    if content.get(same) == _this_process()[same] and isinstance(content.get("pid"), int):
        try:
            os.kill(content["pid"], 0)
        except ProcessLookupError:
            return "no such process"
        except PermissionError:
            pass  # alive, another user's
    if lease and not content.get("expires", 0) > time.time():
        return f"its lease ended at {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(content.get('expires', 0)))}"
    return None


def _this_process() -> dict:
    """Who writes a lock: host name, pid, and `machine`, the process space the pid belongs to."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "machine": _machine()}


@functools.cache
def _machine() -> str:
    """The host name, the kernel's boot id and the pid namespace, where /proc has them (read once:
    they do not change while this process runs)."""
    machine = [socket.gethostname()]
    with contextlib.suppress(OSError):
        machine += [Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
                    str(os.stat("/proc/self/ns/pid").st_ino)]
    return "/".join(machine)


def _read(path, strict: bool = False) -> dict:
    """The lock's content; {"unreadable": True} for content that is not a lock's. A failed read is
    that too, unless `strict` (the lease's decisions): then the OSError is raised, since a lock
    that could not be read is not a stale one."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError:
        if strict:
            raise
        return {"unreadable": True}
    try:
        content = json.loads(text or "{}")
    except ValueError:
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
