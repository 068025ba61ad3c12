"""Logging of the command line: human-readable text or JSON lines (one object a record) on stderr, with
secrets redacted.

``configure_logging("json", "INFO")`` is what ``--log-format json`` does; :class:`JsonFormatter` writes the
record's extra fields (``log.info("...", extra={"partition": 3})``) as top-level keys of the object.

Secrets never reach a log line, at any level, whoever logs them (kafka-python logs its whole configuration at
DEBUG): the settings tell :func:`add_secret` every secret value they read, and :class:`RedactSecrets`, a
filter on every handler of the root logger, replaces each one with ``***`` in the message, its arguments, the
extra fields and the exception text of every record.

>>> import io
>>> add_secret("hunter2")
>>> stream = io.StringIO()
>>> restore = configure_logging("json", "INFO", stream)
>>> logging.getLogger("demo").warning("login with %s", {"password": "hunter2"}, extra={"topic": "events"})
>>> restore()
>>> doc = json.loads(stream.getvalue())
>>> doc["message"], doc["topic"]
("login with {'password': '***'}", 'events')
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
import threading
from collections.abc import Callable
from typing import Any, TextIO

__all__ = ["JsonFormatter", "RedactSecrets", "add_secret", "configure_logging", "redact"]

_RECORD_ATTRS = frozenset(vars(logging.LogRecord("n", 0, "p", 0, "m", None, None))) | {"message", "asctime"}
REDACTED = "***"

_secrets_lock = threading.Lock()
_secrets: tuple[str, ...] = ()  # longest first, so that a secret inside another is not half-replaced


def add_secret(value: str) -> None:
    """Redact ``value`` (and its quoted forms, as ``repr`` and JSON write it) from every later log record."""
    global _secrets
    if not isinstance(value, str) or not value:
        return
    forms = {value, repr(value)[1:-1], json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]}
    with _secrets_lock:
        _secrets = tuple(sorted(set(_secrets) | {f for f in forms if f}, key=len, reverse=True))


def redact(text: str) -> str:
    """``text`` with every secret given to :func:`add_secret` replaced by ``***``."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def _contains_secret(text: str) -> bool:
    return any(secret in text for secret in _secrets)


class RedactSecrets(logging.Filter):
    """Replace the secrets of :func:`add_secret` in a record's message (with its arguments merged in), extra
    fields, exception and stack text. Never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _secrets:
            return True
        message = _message(record)
        if _contains_secret(message):
            record.msg, record.args = redact(message), None
        for key, value in list(vars(record).items()):
            if key in _RECORD_ATTRS or key.startswith("_"):
                continue
            text = value if isinstance(value, str) else _safe_str(value)
            if _contains_secret(text):
                setattr(record, key, redact(text))
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text and _contains_secret(record.exc_text):
            record.exc_text = redact(record.exc_text)
        if record.stack_info and _contains_secret(record.stack_info):
            record.stack_info = redact(record.stack_info)
        return True


def _message(record: logging.LogRecord) -> str:
    """The record's message with its arguments merged in; both side by side if they do not fit."""
    try:
        return record.getMessage()
    except Exception:
        return f"{_safe_str(record.msg)} {_safe_str(record.args)}"


def _safe_str(value: Any) -> str:
    try:
        return str(value)
    except Exception:
        return object.__repr__(value)


def _clean(text: str) -> str:
    """``text`` as valid UTF-8 (lone surrogates escaped)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``ts`` (UTC, ISO-8601), ``level``, ``logger``, ``message``, the
    record's extra fields as top-level keys (``log.info("...", extra={"partition": 3})``; one named like a
    key above becomes ``extra_<name>``) and ``exc_info`` if any.

    Every value is serialised safely: what JSON cannot hold (bytes, objects, integers beyond 64 bits, cycles)
    becomes its ``str``; non-finite floats become ``null``; invalid UTF-8 is escaped.
    """

    def format(self, record: logging.LogRecord) -> str:
        ts = dt.datetime.fromtimestamp(record.created, dt.UTC)
        doc: dict[str, Any] = {
            "ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": _clean(_message(record)),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRS and not key.startswith("_"):
                doc[f"extra_{key}" if key in doc else _clean(str(key))] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            doc["exc_info"] = _clean(record.exc_text)
        if record.stack_info:
            doc["stack_info"] = _clean(self.formatStack(record.stack_info))
        return _dumps(doc)


# Line breaks other than "\n" that line-splitting readers honour (Python's splitlines, JavaScript): escaped,
# so that a record is always exactly one line.
_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def _dumps(doc: dict[str, Any]) -> str:
    import orjson

    option = orjson.OPT_NON_STR_KEYS
    try:
        return orjson.dumps(doc, default=_safe_str, option=option).decode().translate(_LINE_BREAKS)
    except TypeError:  # one value JSON cannot hold even as its str: fall back value by value
        pass
    safe: dict[str, Any] = {}
    for key, value in doc.items():
        try:
            orjson.dumps(value, default=_safe_str, option=option)
            safe[key] = value
        except TypeError:
            safe[key] = _clean(_safe_str(value))
    return orjson.dumps(safe, default=_safe_str, option=option).decode().translate(_LINE_BREAKS)


def configure_logging(fmt: str, level: str, stream: TextIO | None = None) -> Callable[[], None]:
    """Log to stderr (or ``stream``) as text or JSON lines; replaces the handler a previous call added.

    Returns a function that puts the previous logging set-up back (``main`` calls it when it returns, so
    that in-process callers, e.g. tests, keep their own).
    """
    root = logging.getLogger()
    kafka_logger = logging.getLogger("kafka")
    saved = (list(root.handlers), root.level, kafka_logger.level)
    redactor = RedactSecrets()

    def restore() -> None:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        kafka_logger.setLevel(saved[2])
        for h in saved[0]:
            h.removeFilter(redactor)

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
    for h in root.handlers:  # every handler: redact before anything is written, whoever logged it
        h.addFilter(redactor)
    root.setLevel(level)
    # kafka-python logs every connection and rebalance step at INFO.
    kafka_logger.setLevel(level if level == "DEBUG" else "WARNING")
    return restore
