"""The one exception type for errors a user can cause (bad file, bad spec, bad value).

The CLI prints its message without a traceback and exits with status 2 (FailedTrials: 3), so every
message says what to change.
"""

import errno
import shutil


class CSRecError(Exception):
    """A problem the user can fix; the message says what to change."""

    exit_code = 2


class NonFiniteLossError(CSRecError):
    """A training loss became NaN or inf; the message names the epoch and batch."""


class FailedTrials(CSRecError):
    """The run went through every stage, but some trials failed: its table marks their cells."""

    exit_code = 3


# Below this many free bytes a failed write is taken for a full disk (torch.save's RuntimeError).
FULL_DISK_BYTES = 16 << 20


def disk_full(error: BaseException, folder) -> BaseException:
    """torch.save reports a full disk as a RuntimeError ("unexpected pos", "file write failed"): an
    OSError (ENOSPC) naming the folder when its disk has (almost) no space left, else `error`."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return error
    if free >= FULL_DISK_BYTES:
        return error
    return OSError(errno.ENOSPC, f"No space left on the disk of {folder} ({free} bytes free; {first_line(error)})")


def first_line(error: BaseException) -> str:
    """`Type: first line of the message`: an error as one log line (the full text goes to a file)."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
