"""The one exception type for errors a user can cause (bad file, bad spec, bad value).

The CLI prints its message without a traceback and exits with status 2, so every message
says what to change.
"""


class CSRecError(Exception):
    """A problem the user can fix; the message says what to change."""


class NonFiniteLossError(CSRecError):
    """A training loss became NaN or inf; the message names the epoch and batch."""
