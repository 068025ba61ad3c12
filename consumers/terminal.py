"""The commands and the terminal: a live progress line on stderr and a Ctrl-C that stops at a safe point
(the long runs: ``demo``, ``replay``), and stdin as bytes (``score``, ``replay --file -``).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TextIO

__all__ = ["Progress", "bar", "graceful_interrupt", "plural", "stdin_lines"]


class Progress:
    """A live status line on stderr: rewritten in place (carriage return) on a terminal, else a plain line
    every ``interval`` seconds. ``due`` is cheap to call for every event."""

    def __init__(self, stream: TextIO | None, enabled: bool, interval: float | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        isatty = getattr(self.stream, "isatty", None)
        self.tty = bool(isatty and isatty())
        self.interval = interval if interval is not None else (0.1 if self.tty else 10.0)
        self.start = time.monotonic()
        self._next = self.start + self.interval
        self._width = 0

    def rate(self, done: int) -> float:
        elapsed = time.monotonic() - self.start
        return done / elapsed if elapsed > 0 else 0.0

    def due(self) -> bool:
        return self.enabled and time.monotonic() >= self._next

    def show(self, text: str, final: bool = False) -> None:
        if not self.enabled:
            return
        self._next = time.monotonic() + self.interval
        if self.tty:
            pad = max(0, self._width - len(text))
            self._width = len(text)
            self.stream.write("\r" + text + " " * pad + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def plural(n: int, word: str) -> str:
    """``1 event``, ``2 events``, ``1,000 partitions``: a count and its noun in the right number.

    >>> plural(1, "partition"), plural(0, "event"), plural(1250, "input line")
    ('1 partition', '0 events', '1,250 input lines')
    """
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def bar(done: int, total: int | None, width: int = 24) -> str:
    """``[######..................]  25% 250/1,000``; without a total, just the count."""
    if not total:
        return f"{done:,}"
    frac = min(1.0, done / total)
    filled = int(frac * width)
    return f"[{'#' * filled}{'.' * (width - filled)}] {frac:4.0%} {done:,}/{total:,}"


@contextlib.contextmanager
def graceful_interrupt() -> Iterator[Callable[[], bool]]:
    """Within the block, the first Ctrl-C only sets a flag (polled with the yielded function) so the loop
    can stop at a safe point; a second one interrupts at once. Outside the main thread: no-op."""
    state = {"interrupted": False}

    def handler(signum: int, frame: Any) -> None:
        if state["interrupted"]:
            raise KeyboardInterrupt
        state["interrupted"] = True

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread
        yield lambda: False
        return
    try:
        yield lambda: state["interrupted"]
    finally:
        signal.signal(signal.SIGINT, previous)


def stdin_lines() -> Iterable[bytes]:
    """The lines of stdin as bytes (its binary buffer; encoded text when stdin has none, e.g. in tests)."""
    stdin = getattr(sys.stdin, "buffer", None)
    return stdin if stdin is not None else (s.encode() for s in sys.stdin)
