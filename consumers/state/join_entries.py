"""What a delayed-label join store holds, shared by the store (``join_store``) and its checkpoint form
(``join_state``), which both import it (it imports neither).

- the entries: :class:`_Event`, a scored event waiting for its label (its features, kept as given, and the
  bytes it is checkpointed as), and :class:`_Label`, a label waiting for its event; and what each is
  estimated to cost in memory (``ENTRY_BYTES``, ``FEATURE_BYTES``: see ``join_store``'s docstring);
- the rule of the features an event may hold (:func:`_encode_features` checks them and encodes them as JSON
  when the event is stored; :func:`_check_pairs` is the exact rule, used again on a restored state);
- the names of the store's counters (``COUNTERS``) and the integer check of its arguments and its state.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import orjson

# Measured in bench/bench_join_store.py: per pending event, what the entry costs beyond its id and its
# features' JSON bytes (the entry tuple, the bytes object's header, the ordered dict's slot and link, p).
ENTRY_BYTES = 400
# Per feature of a pending event, beyond its text: the decoded dict's slot and the value object (kept so that
# a join never decodes the event again). Calibrated beside ENTRY_BYTES.
FEATURE_BYTES = 120
COUNTERS = (
    "joined",
    "duplicate_labels",
    "duplicate_events",
    "orphan_labels",
    "expired_events",
    "dropped_full_events",
    "dropped_full_labels",
    "forgotten_joins",
    "duplicate_handoffs",
)
_MAX_TS = 2**63
_DUMPS_OPTIONS = (
    orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_SUBCLASS | orjson.OPT_PASSTHROUGH_DATACLASS
)
_FEATURES, _RECORD = 0, 1  # how an event's features are kept (the ``form`` column)
_OBJECT = ord("{")
_new = tuple.__new__  # builds a named tuple without its Python-level __new__


class _Event(NamedTuple):
    x: dict  # the features, as given (kept: a join never decodes them again)
    # form _FEATURES: the features as JSON; form _RECORD: the event's record value. Once packed by
    # to_state(), the int that finds its row there instead (the bytes are kept once, in the packed copy).
    blob: bytes | int
    p: float
    version: int
    ts: int
    stored_at: int
    topic: str
    partition: int
    offset: int
    nbytes: int
    form: int


class _Label(NamedTuple):
    y: int
    ts: int
    stored_at: int
    topic: str
    partition: int
    offset: int
    nbytes: int
    row: int | None  # None until packed by to_state(), then the int that finds its row there


def _check_int(value: Any, what: str, low: int, high: int = _MAX_TS) -> int:
    if type(value) is not int or not low <= value < high:
        raise ValueError(f"{what} must be an integer in [{low}, {high}), got {value!r:.60}")
    return value


def _check_scalar(v: Any, what: str) -> None:
    tv = type(v)
    if tv is float:
        if not math.isfinite(v):
            raise ValueError(f"{what} is not finite: {v!r}")
    elif tv is int:
        if not -(2**63) <= v < 2**64:
            raise ValueError(f"{what} is an integer beyond 64 bits")
    elif tv is not str and tv is not bool:
        raise ValueError(f"{what} is a {tv.__name__}; expected a float, int, bool or str")


def _check_pairs(pairs: Any) -> None:
    """The exact rule for stored features, keys and values alike: a ``float`` (finite), ``int`` (64 bits),
    ``bool`` or ``str`` -- the scalars that JSON round-trips with their type. (The slow path, taken when the
    JSON check of :func:`_proven` could not prove it.)"""
    if type(pairs) is not list:
        raise ValueError("features must be a dict")
    for pair in pairs:
        if type(pair) not in (list, tuple) or len(pair) != 2:
            raise ValueError("features must be a dict")
        k, v = pair
        _check_scalar(k, f"feature key {k!r:.60}")
        _check_scalar(v, f"the value of feature {k!r:.60}")


def _proven(blob: bytes, n: int) -> bool:
    """True when ``blob``, the JSON of ``n`` features, holds flat scalars only, none null: an object with no
    other ``{`` and no ``[``, or an array of ``n`` pairs with no ``{``. A string that contains those
    characters only sends the features to the slow check."""
    if b"null" in blob:
        return False
    if blob[0] == _OBJECT:
        return b"[" not in blob and blob.count(b"{") == 1
    return b"{" not in blob and blob.count(b"[") == n + 1


def _encode_features(x: dict) -> bytes:
    """The features as compact JSON bytes: an object when every key is a ``str`` (orjson refuses other keys
    without an option), else an array of ``[key, value]`` pairs, which keeps the keys' types."""
    if type(x) is not dict:
        raise ValueError(f"features must be a dict, got {type(x).__name__}")
    try:
        blob = orjson.dumps(x, option=_DUMPS_OPTIONS)
    except TypeError:
        try:
            blob = orjson.dumps(list(x.items()), option=_DUMPS_OPTIONS)
        except TypeError as exc:  # orjson.JSONEncodeError: ints beyond 64 bits, surrogates, other types
            _check_pairs(list(x.items()))
            raise ValueError(f"features cannot be stored: {exc}") from None
    if not _proven(blob, len(x)):
        _check_pairs(list(x.items()))
    return bytes(memoryview(blob))  # a compact copy: orjson's own buffer keeps 4 KiB allocated
