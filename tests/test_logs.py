"""JSON log lines: structured fields as top-level keys, and every record serialised safely whatever its
values (a log line must never be lost, or be invalid JSON, because of what an outside message contained)."""

from __future__ import annotations

import io
import json
import logging
import math
from collections.abc import Callable

from hypothesis import given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from consumers.logs import JsonFormatter, configure_logging

log = logging.getLogger("consumers.test_logs")


def json_lines(emit: Callable[[], None], level: str = "DEBUG") -> list[dict]:
    stream = io.StringIO()
    restore = configure_logging("json", level, stream)
    try:
        emit()
    finally:
        restore()
    text = stream.getvalue()
    text.encode("utf-8")  # valid UTF-8 (no lone surrogates)
    assert text.splitlines() == text.split("\n")[:-1]  # one record a line, for any line-splitting reader
    return [json.loads(line) for line in text.splitlines()]


def test_structured_fields_are_top_level_keys_with_their_types() -> None:
    def emit() -> None:
        log.warning("rejected a message", extra={
            "topic": "events", "partition": 3, "offset": 1234567890123, "reason": "not_json",
            "checkpoint_id": "01733011123456789012", "detail": {"line": 2, "ok": False}, "ratio": 0.25})

    (doc,) = json_lines(emit)
    assert doc["message"] == "rejected a message" and doc["level"] == "WARNING"
    assert doc["logger"] == "consumers.test_logs"
    assert (doc["topic"], doc["partition"], doc["offset"]) == ("events", 3, 1234567890123)
    assert (doc["reason"], doc["checkpoint_id"]) == ("not_json", "01733011123456789012")
    assert doc["detail"] == {"line": 2, "ok": False} and doc["ratio"] == 0.25
    assert not any(k in doc for k in ("args", "msg", "levelno", "pathname", "thread"))  # record internals


def test_hostile_values_are_serialised_safely() -> None:
    cycle: list = []
    cycle.append(cycle)

    class Broken:
        def __str__(self) -> str:
            raise RuntimeError("no str")

        __repr__ = __str__

    def emit() -> None:
        log.info("bytes, big ints, non-finite floats", extra={
            "raw": b"\x00\xff", "big": 2**70, "nested_big": {"n": -(2**80)}, "nan": math.nan,
            "inf": -math.inf,
            "surrogate": "a\ud800b", "tuple": (1, "x"), "cycle": cycle, "broken": Broken(), "level": "mine",
        })
        log.info("a message with a lone surrogate \udcff and %s", "args")
        log.info("line breaks \x85 \u2028 \u2029 and a \x1b[31m terminal escape")

    docs = json_lines(emit)
    assert len(docs) == 3
    first = docs[0]
    assert first["raw"] == "b'\\x00\\xff'"
    assert first["big"] == str(2**70) and str(-(2**80)) in first["nested_big"]
    assert first["nan"] is None and first["inf"] is None
    assert first["surrogate"] == "a\\ud800b"
    assert first["tuple"] == [1, "x"] and isinstance(first["cycle"], str)
    assert first["broken"].startswith("<") and "Broken" in first["broken"]
    assert first["level"] == "INFO" and first["extra_level"] == "mine"  # a clash never overwrites
    assert docs[1]["message"] == "a message with a lone surrogate \\udcff and args"
    assert docs[2]["message"] == "line breaks \x85 \u2028 \u2029 and a \x1b[31m terminal escape"


def test_arguments_that_do_not_fit_the_format_still_make_a_line() -> None:
    record = logging.LogRecord("x", logging.INFO, "p", 1, "arguments that do not fit %d", ("not a number",),
                               None)
    doc = json.loads(JsonFormatter().format(record))
    assert "arguments that do not fit" in doc["message"] and "not a number" in doc["message"]


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(st.characters(blacklist_categories=("Cs",))),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_names = st.from_regex(r"[a-z][a-z0-9_]{0,15}", fullmatch=True).filter(
    lambda k: k not in vars(logging.LogRecord("n", 0, "p", 0, "m", None, None)) and k not in ("message",
                                                                                            "asctime"))


@given(st.dictionaries(_names, _json_values, max_size=6))
@hyp_settings(max_examples=150, deadline=None)
def test_json_representable_extras_round_trip(extra: dict) -> None:
    (doc,) = json_lines(lambda: log.info("event", extra=extra))
    for key, value in extra.items():
        got = doc[f"extra_{key}" if key in ("ts", "level", "logger") else key]
        assert got == value or (isinstance(value, float) and math.isclose(got, value)), key


@given(st.dictionaries(_names, st.binary() | st.integers() | st.floats() | st.text() | st.tuples(st.text()),
                       max_size=6), st.text())
@hyp_settings(max_examples=150, deadline=None)
def test_any_record_is_one_valid_json_line(extra: dict, message: str) -> None:
    docs = json_lines(lambda: log.error("%s", message, extra=extra))
    assert len(docs) == 1 and docs[0]["level"] == "ERROR"
