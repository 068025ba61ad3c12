"""Logging of the command line: human-readable text or JSON lines (one object a record) on stderr.

``configure_logging("json", "INFO")`` is what ``--log-format json`` does; :class:`JsonFormatter` writes the
record's extra fields (``log.info("...", extra={"partition": 3})``) as keys of the object.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
from collections.abc import Callable
from typing import Any, TextIO

__all__ = ["JsonFormatter", "configure_logging"]

_RECORD_ATTRS = frozenset(vars(logging.LogRecord("n", 0, "p", 0, "m", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``ts`` (UTC, ISO-8601), ``level``, ``logger``, ``message``, the
    record's extra fields (``log.info("...", extra={"partition": 3})``) and ``exc_info`` if any."""

    def format(self, record: logging.LogRecord) -> str:
        import orjson

        ts = dt.datetime.fromtimestamp(record.created, dt.UTC)
        doc: dict[str, Any] = {
            "ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRS and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            doc["stack_info"] = self.formatStack(record.stack_info)
        return orjson.dumps(doc, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


def configure_logging(fmt: str, level: str, stream: TextIO | None = None) -> Callable[[], None]:
    """Log to stderr (or ``stream``) as text or JSON lines; replaces the handler a previous call added.

    Returns a function that puts the previous logging set-up back (``main`` calls it when it returns, so
    that in-process callers, e.g. tests, keep their own).
    """
    root = logging.getLogger()
    kafka_logger = logging.getLogger("kafka")
    saved = (list(root.handlers), root.level, kafka_logger.level)

    def restore() -> None:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        kafka_logger.setLevel(saved[2])

    for handler in list(root.handlers):
        if getattr(handler, "_stream_logreg", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler._stream_logreg = True  # type: ignore[attr-defined]
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
    # kafka-python logs every connection and rebalance step at INFO.
    kafka_logger.setLevel(level if level == "DEBUG" else "WARNING")
    return restore
