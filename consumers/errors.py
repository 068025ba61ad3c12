"""How a command of the ``stream-logreg`` command line fails: its two errors and the exit status each becomes.

Exit status: 0 success, 1 a runtime failure (:class:`CommandError`: a broker that cannot be reached, a missing
checkpoint, ...), 2 a usage error (:class:`UsageError`: a bad setting; the message names it and says what is
allowed), 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "PROG",
    "CommandError",
    "UsageError",
    "mismatch_text",
]

PROG = "stream-logreg"
EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    """A bad setting or argument: exit status 2. The message names the setting and what is allowed."""


class CommandError(Exception):
    """The command could not do its job (runtime failure): exit status 1."""


def mismatch_text(exc: Any) -> str:
    """The differences of a ``CheckpointMismatch``, short: ``optimizer.name 'FTRL' there, 'SGD' here``."""
    shown = [(n, a, b) for n, a, b in exc.differences if "<absent>" not in (a, b)] or exc.differences
    return "; ".join(f"{name} {a!r} there, {b!r} here" for name, a, b in shown)
