"""The message codec: a Kafka record value (bytes) → an :class:`Event`, or a :class:`Rejection` with a reason.

The default value format (``design.md``, "Messages") is a JSON object::

    {"x": {"feature": value, ...} | [v0, v1, ...], "y": 0 | 1 | true | false, "id": "..." | 123}

Rules, checked in this order (the first failure is the reason reported):

1. a ``None`` value (Kafka tombstone) → ``tombstone``; more than ``max_bytes`` bytes → ``oversize``;
2. the bytes must be JSON (UTF-8, RFC 8259; ``NaN``/``Infinity`` literals are not JSON) → ``not_json``,
   and an object → ``not_object``. Duplicate keys: the last one wins. Other top-level fields are ignored;
3. ``x`` (the features) must be present → ``x_missing``, and an object or an array → ``x_type`` (``null``
   is present, hence ``x_type``). An array ``[v0, v1, ...]`` becomes ``{0: v0, 1: v1, ...}`` (int keys).
   An empty ``x`` (``{}`` or ``[]``) is valid: the model uses the bias only. More than ``max_features``
   entries → ``too_many_features``;
4. ``y`` absent or ``null`` = score only (``Event.y is None``). Otherwise it must be ``0``, ``1``,
   ``true``, ``false`` or the floats ``0.0``/``1.0`` (what float label columns serialize to), giving the
   int 0 or 1; anything else (``"1"``, ``2``, ``0.5``, an object, ...) → ``bad_label``;
5. ``id`` absent or ``null`` → ``None``; a string is kept; an integer becomes its decimal string;
   anything else → ``bad_id``, including an integer outside 64 bits ``[-2**63, 2**64)``: orjson reads
   those as floats, so their digits are already lost (send such ids as strings);
6. every feature value must pass :func:`stream_logreg.features.encode_value`, the rule the model applies
   (a finite number, a bool or a string) → ``bad_value`` otherwise: ``null``, nested objects/arrays,
   numbers that overflow a double such as ``1e999``.

Numbers that overflow a double (``1e999``, a 400-digit integer) make orjson refuse the whole document. On
that error path the codec re-reads the message with the standard library to name the field that holds
one (``bad_value``, ``bad_label`` or ``bad_id``), and says ``not_json`` when it is in an ignored field.
The re-read only turns a failure into a more precise failure: a message orjson refuses is never accepted.

The hot path: one ``orjson.loads`` and one compiled call (``_kernel.json_event``) that checks the fields
and the value types and builds the :class:`Event`, no exception: ~0.2 µs on top of the parse for a
20-feature row (:meth:`JsonCodec.decoder` also compiles the call of ``orjson.loads``). Hotter still,
:meth:`JsonCodec.row_decoder` reads a message of the common shape (numbers of features the model knows)
from its bytes straight into the model's columns and values, no Python object per feature, and declines
anything else, which then takes this way. Values of exact type
``str``, ``bool``, ``int`` or ``float`` are accepted without a call to ``encode_value`` each (~0.5 µs per
value: ~10 µs for a 20-feature row, 7x the JSON parse): orjson only produces finite floats and 64-bit
ints, and ``encode_value`` accepts those types over that whole range, which is checked against
``encode_value`` itself at import (:data:`FAST_TYPES`; with fewer fast types the compiled call is not
used). A message the compiled call does not take as it is goes through the same checks in Python, which
find the reason; there any value not of a fast type is judged by ``encode_value``, whose message names
the feature in the rejection.

>>> codec = JsonCodec()
>>> codec.decode(b'{"x": {"age": 42, "city": "Paris", "vip": true}, "y": 1, "id": 7}')
Event(x={'age': 42, 'city': 'Paris', 'vip': True}, y=1, id='7')
>>> codec.decode(b'{"x": [0.5, -2]}')
Event(x={0: 0.5, 1: -2}, y=None, id=None)
>>> r = codec.decode(b'{"x": {"age": 1e999}, "y": 0}')
>>> r.reason, r.detail
(<Reason.BAD_VALUE: 'bad_value'>, "field 'x': feature 'age' has a non-finite value inf")
>>> r.reason == "bad_value"
True
>>> codec.decode(encode_event({"age": 42.0}, y=0, id="a1"))
Event(x={'age': 42.0}, y=0, id='a1')

"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from collections.abc import Callable, Mapping
from enum import StrEnum
from functools import partial
from typing import Any, NamedTuple

import numpy as np
import orjson

from stream_logreg._json import RowDecoder
from stream_logreg._kernel import JsonDecoder, json_event
from stream_logreg.features import encode_value

__all__ = ["DEFAULT_FIELDS", "Event", "JsonCodec", "Reason", "Rejection", "encode_event"]

DEFAULT_FIELDS = ("x", "y", "id")
MAX_DETAIL = 200


class Reason(StrEnum):
    """Why a message was rejected: stable strings, used in dead-letter headers and as metrics labels.

    - ``tombstone``: the record value is ``None`` (a Kafka tombstone);
    - ``oversize``: the value is longer than ``max_bytes``;
    - ``not_json``: orjson cannot decode it (invalid UTF-8, ``NaN``/``Infinity`` literals, truncated, ...);
    - ``not_object``: the top-level JSON value is not an object;
    - ``x_missing``: the features field is absent;
    - ``x_type``: the features field is neither an object nor an array (``null`` included);
    - ``bad_value``: a feature value ``encode_value`` refuses (``null``, nested, non-finite, e.g. ``1e999``);
    - ``bad_label``: the label is present and not ``0``, ``1``, ``true``, ``false`` (or ``0.0``/``1.0``);
    - ``too_many_features``: more than ``max_features`` features;
    - ``bad_id``: the id is present and not a string or a 64-bit integer.
    """

    TOMBSTONE = "tombstone"
    OVERSIZE = "oversize"
    NOT_JSON = "not_json"
    NOT_OBJECT = "not_object"
    X_MISSING = "x_missing"
    X_TYPE = "x_type"
    BAD_VALUE = "bad_value"
    BAD_LABEL = "bad_label"
    TOO_MANY_FEATURES = "too_many_features"
    BAD_ID = "bad_id"


class Event(NamedTuple):
    """A decoded message: features ``x`` (name → value; int keys for an array), label ``y`` (0/1, ``None`` =
    score only) and ``id`` (a string, or ``None``). Immutable; a named tuple so that the compiled decoder
    builds it without a Python call."""

    x: dict
    y: int | None
    id: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class Rejection:
    """A message that must not reach the model: the ``reason`` and a short ``detail`` (<= 200 characters) that
    names the offending field or feature."""

    reason: Reason
    detail: str


TOMBSTONE = Rejection(Reason.TOMBSTONE, "the record value is null (a Kafka tombstone)")

# Labels: dict look-up by value equality, so True/1/1.0 → 1 and False/0/0.0/-0.0 → 0 (only for these types).
_LABELS = {0: 0, 1: 1}
_LABEL_TYPES = frozenset({int, bool, float})
_INT_MIN, _INT_END = -(1 << 63), 1 << 64  # the ints orjson produces; beyond, it gives (inexact) floats
_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number",
               bool: "a boolean", type(None): "null"}
_MISSING = object()
_loads = orjson.loads
_JSONDecodeError = orjson.JSONDecodeError


def _orjson_numbers_are_bounded() -> bool:
    """True if orjson refuses or rounds numbers beyond a double/64-bit int, never giving inf or a big int."""
    for literal in (b"1e999", b"-1e999", b"1" + b"0" * 400, b"-1" + b"0" * 400):
        try:
            v = _loads(literal)
        except _JSONDecodeError:
            continue
        if type(v) is not float or not math.isfinite(v):
            return False
    return True


def _fast_types() -> frozenset[type]:
    """Value types accepted without a per-value ``encode_value`` call: those orjson produces that it accepts.

    Checked against ``encode_value`` itself on the extreme values orjson can produce, so a stricter rule in
    ``features`` makes the codec fall back to calling it per value rather than disagree with the model.
    """
    probes: dict[type, tuple[Any, ...]] = {
        str: ("", "a", "é\u2603\U0001f600", "x" * 1000),
        bool: (True, False),
        int: (0, 1, -1, _INT_MIN, _INT_END - 1),
        float: (0.0, -0.0, 5e-324, -1.5, 1.7976931348623157e308, -1.7976931348623157e308),
    }
    if not _orjson_numbers_are_bounded():
        del probes[int], probes[float]
    fast = set()
    for t, values in probes.items():
        try:
            for v in values:
                encode_value("probe", v)
        except ValueError:
            continue
        fast.add(t)
    return frozenset(fast)


FAST_TYPES = _fast_types()
# The compiled happy path (``_kernel.json_event``) accepts values of exactly these types without a call.
_COMPILED = FAST_TYPES == frozenset({str, bool, int, float})


def _clip(text: str) -> str:
    return text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 1] + "…"


def _json_type(v: Any) -> str:
    return _JSON_TYPES.get(type(v), type(v).__name__)


def _brief(v: Any) -> str:
    """``v``'s JSON type and the start of its repr, e.g. ``a string ('abc')`` (safe for deep nesting)."""
    try:
        text = repr(v)
    except RecursionError:
        text = "deeply nested"
    return f"{_json_type(v)} ({text:.40})"


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class JsonCodec:
    """Decodes JSON message values into :class:`Event` or :class:`Rejection` (see the module docstring).

    Parameters
    ----------
    x_field, y_field, id_field
        The names of the features, label and id fields (three distinct strings).
    max_features
        The most entries ``x`` may have; more → ``too_many_features``.
    max_bytes
        The longest value accepted, in bytes; longer → ``oversize`` (checked before parsing).

    ``decode`` never raises for a ``bytes``/``bytearray``/``memoryview``/``None`` value.
    """

    __slots__ = ("x_field", "y_field", "id_field", "max_features", "max_bytes")

    def __init__(
        self,
        x_field: str = "x",
        y_field: str = "y",
        id_field: str = "id",
        max_features: int = 10_000,
        max_bytes: int = 1_048_576,
    ) -> None:
        fields = (x_field, y_field, id_field)
        if not all(isinstance(f, str) and f for f in fields) or len(set(fields)) != 3:
            raise ValueError(f"x_field, y_field, id_field must be distinct non-empty strings: {fields!r}")
        for name, n in (("max_features", max_features), ("max_bytes", max_bytes)):
            if type(n) is not int or n < 1:
                raise ValueError(f"{name} must be a positive integer, got {n!r}")
        self.x_field = x_field
        self.y_field = y_field
        self.id_field = id_field
        self.max_features = max_features
        self.max_bytes = max_bytes

    @property
    def fields(self) -> tuple[str, str, str]:
        """``(x_field, y_field, id_field)``, e.g. for :func:`encode_event`."""
        return self.x_field, self.y_field, self.id_field

    def __repr__(self) -> str:
        return (
            f"JsonCodec(x_field={self.x_field!r}, y_field={self.y_field!r}, id_field={self.id_field!r}, "
            f"max_features={self.max_features!r}, max_bytes={self.max_bytes!r})"
        )

    def decode(self, value: bytes | None) -> Event | Rejection:
        """The :class:`Event` in a record value, or the :class:`Rejection` saying why there is none."""
        if value is None:
            return TOMBSTONE
        if len(value) > self.max_bytes:
            return Rejection(
                Reason.OVERSIZE, f"the value is {len(value)} bytes, more than max_bytes={self.max_bytes}"
            )
        try:
            doc = _loads(value)
        except _JSONDecodeError as e:
            return self._diagnose(value, e)
        if _COMPILED:  # valid as it is: one compiled pass; else (or a rejection) the checks below decide
            event = json_event(doc, self.x_field, self.y_field, self.id_field, self.max_features, Event)
            if event is not None:
                return event
        return self._check(doc, FAST_TYPES)

    def decoder(self) -> Callable[[bytes | None], Event | Rejection]:
        """:meth:`decode` as one compiled callable (``_kernel.JsonDecoder``), for hot loops: the same result
        for every value, ~0.15 µs less per message. It keeps the codec's settings as they are now."""
        if not _COMPILED:
            return self.decode
        return JsonDecoder(
            _loads, self.x_field, self.y_field, self.id_field, self.max_features, self.max_bytes, Event,
            partial(self._check, fast_types=FAST_TYPES), self.decode,
        )

    def row_decoder(self) -> RowDecoder | None:
        """A compiled decoder of the messages of the common shape straight into a model's columns and
        values (``stream_logreg._json.RowDecoder``), with this codec's settings as they are now; None when
        the compiled path is off (:data:`FAST_TYPES`). What it accepts, :meth:`decode` accepts as the same
        event; what it declines goes through :meth:`decode`.

        >>> from stream_logreg import OnlineLogisticRegression
        >>> model = OnlineLogisticRegression()
        >>> model.learn_one({"age": 30.0}, True)
        >>> JsonCodec().row_decoder().row(b'{"x": {"age": 42}, "y": 0}', model.features)
        ([0], [42.0], 0)
        """
        return RowDecoder(self) if _COMPILED else None

    def _check(self, doc: Any, fast_types: frozenset[type]) -> Event | Rejection:
        """Validate a parsed document; values whose type is not in ``fast_types`` go to ``encode_value``."""
        if type(doc) is not dict:
            return Rejection(Reason.NOT_OBJECT, f"the JSON value is {_json_type(doc)}, not an object")
        x = doc.get(self.x_field, _MISSING)
        tx = type(x)
        if tx is dict:
            values = x.values()
        elif tx is list:
            values = x
        elif x is _MISSING:
            return Rejection(Reason.X_MISSING, _clip(f"the features field {self.x_field!r} is missing"))
        else:
            return Rejection(
                Reason.X_TYPE, f"field {self.x_field!r} is {_json_type(x)}, expected an object or an array"
            )
        if len(x) > self.max_features:
            return Rejection(
                Reason.TOO_MANY_FEATURES,
                f"field {self.x_field!r} has {len(x)} features, more than max_features={self.max_features}",
            )
        y = doc.get(self.y_field)
        if y is not None:
            label = _LABELS.get(y) if type(y) in _LABEL_TYPES else None
            if label is None:
                return Rejection(
                    Reason.BAD_LABEL,
                    f"field {self.y_field!r} is {_brief(y)}; expected 0, 1, true or false",
                )
            y = label
        id_ = doc.get(self.id_field)
        if id_ is not None and type(id_) is not str:
            if type(id_) is int and _INT_MIN <= id_ < _INT_END:
                id_ = str(id_)
            else:
                return self._bad_id(id_)
        if not fast_types.issuperset(map(type, values)):
            rejection = self._bad_value(x, fast_types)
            if rejection is not None:
                return rejection
        return Event(x if tx is dict else dict(enumerate(x)), y, id_)

    def _bad_value(self, x: dict | list, fast_types: frozenset[type]) -> Rejection | None:
        """The first value of ``x`` that ``encode_value`` refuses, as a rejection; ``None`` if none."""
        items = x.items() if type(x) is dict else enumerate(x)
        for key, v in items:
            if type(v) not in fast_types:
                try:
                    encode_value(key, v)
                except ValueError as e:
                    return Rejection(Reason.BAD_VALUE, _clip(f"field {self.x_field!r}: {e}"))
                except RecursionError:  # its message shows the value, too deeply nested to repr
                    return Rejection(
                        Reason.BAD_VALUE,
                        _clip(f"field {self.x_field!r}: feature {key!r} has a value of {_brief(v)}"),
                    )
        return None

    def _bad_id(self, id_: Any) -> Rejection:
        # orjson reads integers beyond 64 bits as floats; -2**63 - 1 rounds to the float -2**63
        if type(id_) is int or (type(id_) is float and id_.is_integer() and abs(id_) >= 1 << 63):
            what = "an integer beyond 64 bits (send it as a string)"
        else:
            what = _brief(id_)
        return Rejection(Reason.BAD_ID, f"field {self.id_field!r} is {what}; expected a string or an integer")

    def _diagnose(self, value: bytes, error: ValueError) -> Rejection:
        """Error path: orjson refused the value. If the standard library reads it (``1e999`` as ``inf``, big
        ints exact), validate that with ``encode_value`` on every value to name the field at fault; if that
        finds nothing, or the standard library cannot read it either, the reason is ``not_json``."""
        not_json = Rejection(Reason.NOT_JSON, _clip(f"not JSON: {error}"))
        try:
            text = value if isinstance(value, str) else bytes(value).decode("utf-8")
            doc = json.loads(text, parse_constant=_refuse_constant)
        except (ValueError, RecursionError):
            return not_json
        result = self._check(doc, frozenset())
        return result if isinstance(result, Rejection) else not_json


def encode_event(
    x: Mapping[Any, Any] | list[Any] | tuple[Any, ...],
    y: int | bool | None = None,
    id: str | int | None = None,
    fields: tuple[str, str, str] = DEFAULT_FIELDS,
) -> bytes:
    """The JSON message for features ``x``, label ``y`` and ``id`` (``None`` fields are omitted).

    ``fields`` are the ``(x, y, id)`` field names (``JsonCodec.fields``). ``x`` is a mapping with string
    keys, a sequence (or 1-d numpy array), or a mapping with keys ``0..n-1`` in order (an array ``x`` as
    decoded), which is written as an array so that ``codec.decode(encode_event(e.x, e.y, e.id)) == e``.
    Values are checked with ``encode_value``; numpy scalars and arrays are written as numbers. A bad value,
    label or id raises ``ValueError``: better at the producer than in the dead-letter topic. An integer id
    beyond 64 bits is written as its string (which is what decoding gives for any integer id).

    >>> encode_event({"age": 42, "city": "Paris"}, y=True, id=7)
    b'{"x":{"age":42,"city":"Paris"},"y":1,"id":7}'
    >>> encode_event([0.5, 1.0], fields=("features", "label", "key"))
    b'{"features":[0.5,1.0]}'
    """
    x_field, y_field, id_field = fields
    if isinstance(x, np.ndarray):
        x = x.tolist()
    if isinstance(x, Mapping):
        keys = list(x)
        for k, v in x.items():
            encode_value(k, v)
        if keys and all(type(k) is int for k in keys) and keys == list(range(len(keys))):
            x = list(x.values())
        elif not all(isinstance(k, str) for k in keys):
            raise ValueError("feature names must all be strings, or the ints 0..n-1 in order (an array)")
    else:
        for i, v in enumerate(x):
            encode_value(i, v)
    msg: dict[str, Any] = {x_field: x}
    if y is not None:
        label = _LABELS.get(y) if isinstance(y, (numbers.Real, np.bool_)) else None
        if label is None:
            raise ValueError(f"label must be 0, 1, True, False or None, got {y!r}")
        msg[y_field] = label
    if id is not None:
        if isinstance(id, numbers.Integral) and not isinstance(id, (bool, np.bool_)):
            id = int(id)
            if not _INT_MIN <= id < _INT_END:
                id = str(id)  # orjson cannot write it as a number; decoded, an id is this string anyway
        elif not isinstance(id, str):
            raise ValueError(f"id must be a string or an integer, got {id!r}")
        msg[id_field] = id
    return orjson.dumps(msg, option=orjson.OPT_SERIALIZE_NUMPY)
