"""The one exception type for errors a user can cause (bad file, bad spec, bad value).

The CLI prints its message without a traceback and exits with status 2 (FailedTrials: 3), so every
message says what to change.
"""


class CSRecError(Exception):
    """A problem the user can fix; the message says what to change."""

    exit_code = 2


class NonFiniteLossError(CSRecError):
    """A training loss became NaN or inf; the message names the epoch and batch."""


class FailedTrials(CSRecError):
    """The run went through every stage, but some trials failed: its table marks their cells."""

    exit_code = 3


def first_line(error: BaseException) -> str:
    """`Type: first line of the message`: an error as one log line (the full text goes to a file)."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
