"""The message codec: every rejection reason, good messages, and a randomized property test (no broker)."""

from __future__ import annotations

import doctest
import random

import numpy as np
import orjson
import pytest

from stream_logreg import codec as codec_module
from stream_logreg.codec import (
    FAST_TYPES,
    TOMBSTONE,
    Event,
    JsonCodec,
    Reason,
    Rejection,
    encode_event,
)
from stream_logreg.features import FeatureSpace, encode_value

CODEC = JsonCodec()


def rejected(value: bytes | None, reason: Reason, codec: JsonCodec = CODEC) -> Rejection:
    result = codec.decode(value)
    assert isinstance(result, Rejection), result
    assert result.reason is reason, result
    assert result.detail and len(result.detail) <= 200
    return result


# ---------------------------------------------------------------------------------------------------------
# Good messages


@pytest.mark.parametrize(
    ("message", "event"),
    [
        (b'{"x": {"a": 1.5, "b": -2}, "y": 1, "id": "e1"}', Event({"a": 1.5, "b": -2}, 1, "e1")),
        (b'{"x": [0.5, 2, "red", true]}', Event({0: 0.5, 1: 2, 2: "red", 3: True}, None, None)),
        (b'{"x": {"a": 1}, "y": true}', Event({"a": 1}, 1, None)),
        (b'{"x": {"a": 1}, "y": false}', Event({"a": 1}, 0, None)),
        (b'{"x": {"a": 1}, "y": 0}', Event({"a": 1}, 0, None)),
        (b'{"x": {"a": 1}, "y": 1.0}', Event({"a": 1}, 1, None)),
        (b'{"x": {"a": 1}, "y": 0.0}', Event({"a": 1}, 0, None)),
        (b'{"x": {"a": 1}, "y": -0.0}', Event({"a": 1}, 0, None)),
        (b'{"x": {"a": 1}, "y": null, "id": null}', Event({"a": 1}, None, None)),
        (b'{"x": {"a": 1}, "id": 42}', Event({"a": 1}, None, "42")),
        (b'{"x": {"a": 1}, "id": -7}', Event({"a": 1}, None, "-7")),
        (b'{"x": {"a": 1}, "id": 18446744073709551615}', Event({"a": 1}, None, "18446744073709551615")),
        (b'{"x": {"a": 1}, "id": -9223372036854775808}', Event({"a": 1}, None, "-9223372036854775808")),
        (b'{"x": {"a": 1}, "id": ""}', Event({"a": 1}, None, "")),
        (b'{"x": {}, "y": 1}', Event({}, 1, None)),
        (b'{"x": []}', Event({}, None, None)),
        (b'{"x": {"city": "Paris", "vip": false}}', Event({"city": "Paris", "vip": False}, None, None)),
        (b'{"x": {"big": 18446744073709551616}}', Event({"big": 1.8446744073709552e19}, None, None)),
        (b'{"x": {"tiny": 1e-999, "max": 1.7976931348623157e308}}', Event({"tiny": 0.0, "max": 1.7976931348623157e308}, None, None)),  # noqa: E501
        (b'{"x": {"a": 1, "a": 2}}', Event({"a": 2}, None, None)),
        (b'{"other": [1, {"n": null}], "x": {"a": 1}, "ts": "2024"}', Event({"a": 1}, None, None)),
        ('{"x": {"caf\u00e9": "\u2603"}}'.encode(), Event({"caf\u00e9": "\u2603"}, None, None)),
        (b' \n{"x": {"a": 1}}\n ', Event({"a": 1}, None, None)),
    ],
)
def test_good_messages(message: bytes, event: Event) -> None:
    result = CODEC.decode(message)
    assert result == event
    assert type(result) is Event
    assert type(result.y) in (int, type(None)) and type(result.y) is not bool
    for k, v in result.x.items():
        encode_value(k, v)


def test_event_is_frozen_and_same_as_constructed() -> None:
    event = CODEC.decode(b'{"x": {"a": 1}, "y": 1, "id": "k"}')
    assert event == Event({"a": 1}, 1, "k")
    assert repr(event) == repr(Event({"a": 1}, 1, "k"))
    with pytest.raises(AttributeError):  # immutable
        event.y = 0  # type: ignore[misc]
    x, y, id_ = event  # a named tuple
    assert (x, y, id_) == ({"a": 1}, 1, "k")


def test_bytes_like_values() -> None:
    message = b'{"x": {"a": 1}, "y": 0}'
    expected = Event({"a": 1}, 0, None)
    assert CODEC.decode(bytearray(message)) == expected
    assert CODEC.decode(memoryview(message)) == expected
    assert CODEC.decode(message.decode()) == expected


def test_configurable_field_names() -> None:
    codec = JsonCodec(x_field="features", y_field="label", id_field="key")
    assert codec.fields == ("features", "label", "key")
    message = b'{"features": {"a": 1}, "label": true, "key": "k1", "x": 5, "y": "no", "id": []}'
    assert codec.decode(message) == Event({"a": 1}, 1, "k1")
    assert "'features'" in rejected(b'{"x": {"a": 1}}', Reason.X_MISSING, codec).detail
    assert "'label'" in rejected(b'{"features": {}, "label": 3}', Reason.BAD_LABEL, codec).detail
    assert "'key'" in rejected(b'{"features": {}, "key": 1.5}', Reason.BAD_ID, codec).detail
    assert "'features'" in rejected(b'{"features": {"a": null}}', Reason.BAD_VALUE, codec).detail
    assert CODEC.decode(message) == rejected(message, Reason.X_TYPE)  # default names: x is 5


@pytest.mark.parametrize(
    "kwargs",
    [
        {"x_field": "a", "y_field": "a"},
        {"id_field": ""},
        {"x_field": 1},
        {"max_features": 0},
        {"max_bytes": -1},
        {"max_bytes": 1.5},
    ],
)
def test_bad_configuration(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        JsonCodec(**kwargs)


# ---------------------------------------------------------------------------------------------------------
# Every rejection reason


def test_reason_strings_are_stable() -> None:
    assert {r.name: r.value for r in Reason} == {
        "TOMBSTONE": "tombstone",
        "OVERSIZE": "oversize",
        "NOT_JSON": "not_json",
        "NOT_OBJECT": "not_object",
        "X_MISSING": "x_missing",
        "X_TYPE": "x_type",
        "BAD_VALUE": "bad_value",
        "BAD_LABEL": "bad_label",
        "TOO_MANY_FEATURES": "too_many_features",
        "BAD_ID": "bad_id",
    }
    assert Reason.BAD_VALUE == "bad_value" and str(Reason.BAD_VALUE) == "bad_value"


def test_tombstone() -> None:
    assert rejected(None, Reason.TOMBSTONE) is TOMBSTONE


def test_oversize_boundary() -> None:
    codec = JsonCodec(max_bytes=64)
    message = b'{"x": {"a": 1}}'
    at_limit = message + b" " * (64 - len(message))
    assert codec.decode(at_limit) == Event({"a": 1}, None, None)
    detail = rejected(at_limit + b" ", Reason.OVERSIZE, codec).detail
    assert "65" in detail and "64" in detail
    rejected(b"x" * 1_048_577, Reason.OVERSIZE)  # default 1 MiB, checked before parsing


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"   ",
        b"{",
        b'{"x": {"a": 1}',
        b'{"x": {"a": 1},}',
        b"{'x': {}}",
        b'{"x": {"a": NaN}}',
        b'{"x": {"a": Infinity}}',
        b'{"x": {"a": -Infinity}}',
        b'{"x": {"a": "\xff"}}',  # invalid UTF-8
        b'{"x": {"a": "\xed\xa0\x80"}}',  # an encoded surrogate: not UTF-8
        b'{"x": {"a": "\\ud800"}}',  # a lone surrogate escape
        b"\xef\xbb\xbf{}",  # BOM
        b'{"x": {}} {"x": {}}',
        b'{"x": {"a": 01}}',
        b'{"x": {}, "note": 1e999}',  # overflow in an ignored field: orjson refuses the document
        b"[" * 2000 + b"]" * 2000,
    ],
)
def test_not_json(message: bytes) -> None:
    assert rejected(message, Reason.NOT_JSON).detail.startswith("not JSON: ")


@pytest.mark.parametrize("message", [b"[]", b'[{"x": {}}]', b"1", b'"x"', b"null", b"true"])
def test_not_object(message: bytes) -> None:
    rejected(message, Reason.NOT_OBJECT)


def test_x_missing() -> None:
    assert "'x'" in rejected(b'{"y": 1, "id": "a"}', Reason.X_MISSING).detail
    rejected(b"{}", Reason.X_MISSING)
    rejected(b'{"X": {}}', Reason.X_MISSING)


@pytest.mark.parametrize("x", [b"null", b"1", b'"a=1"', b"true", b"1.5"])
def test_x_type(x: bytes) -> None:
    assert "'x'" in rejected(b'{"x": ' + x + b"}", Reason.X_TYPE).detail


@pytest.mark.parametrize(
    ("x", "named"),
    [
        (b'{"a": 1, "b": null}', "'b'"),
        (b'{"a": {"nested": 1}}', "'a'"),
        (b'{"a": [1, 2]}', "'a'"),
        (b'{"a": []}', "'a'"),
        (b'{"huge": 1e999}', "'huge'"),
        (b'{"huge": -1E400}', "'huge'"),
        (b'{"huge": 1' + b"0" * 400 + b"}", "'huge'"),
        (b'{"huge": 1' + b"0" * 400 + b".5}", "'huge'"),
        (b"[1, 2, null]", "feature 2"),
        (b"[1, 1e999]", "feature 1"),
        (b"[[1]]", "feature 0"),
    ],
)
def test_bad_value(x: bytes, named: str) -> None:
    detail = rejected(b'{"x": ' + x + b', "y": 1}', Reason.BAD_VALUE).detail
    assert named in detail


def test_bad_value_with_deep_nesting_does_not_raise() -> None:
    for depth in (900, 1000, 1020):
        deep = b"[" * depth + b"]" * depth
        assert "'a'" in rejected(b'{"x": {"a": ' + deep + b"}}", Reason.BAD_VALUE).detail
        rejected(b'{"x": {}, "y": ' + deep + b"}", Reason.BAD_LABEL)
        rejected(b'{"x": {}, "id": ' + deep + b"}", Reason.BAD_ID)


def test_bad_value_detail_is_short_and_names_a_long_feature() -> None:
    name = "feature_" + "n" * 500
    detail = rejected(orjson.dumps({"x": {name: None}}), Reason.BAD_VALUE).detail
    assert len(detail) <= 200
    assert "'feature_nnn" in detail


@pytest.mark.parametrize(
    "y", [b'"1"', b'"true"', b"2", b"-1", b"0.5", b"1.0000001", b"[1]", b"{}", b"1e999", b'""', b"2" * 20]
)
def test_bad_label(y: bytes) -> None:
    assert "'y'" in rejected(b'{"x": {"a": 1}, "y": ' + y + b"}", Reason.BAD_LABEL).detail


def test_too_many_features_boundary() -> None:
    codec = JsonCodec(max_features=3)
    assert codec.decode(b'{"x": {"a": 1, "b": 2, "c": 3}}') == Event({"a": 1, "b": 2, "c": 3}, None, None)
    assert "4" in rejected(b'{"x": {"a": 1, "b": 2, "c": 3, "d": 4}}', Reason.TOO_MANY_FEATURES, codec).detail
    rejected(b'{"x": [1, 2, 3, 4]}', Reason.TOO_MANY_FEATURES, codec)
    rejected(orjson.dumps({"x": list(range(10_001))}), Reason.TOO_MANY_FEATURES)


@pytest.mark.parametrize("id_", [b"1.5", b"true", b"false", b"[]", b'{"a": 1}', b"1.0", b"1e999"])
def test_bad_id(id_: bytes) -> None:
    assert "'id'" in rejected(b'{"x": {}, "id": ' + id_ + b"}", Reason.BAD_ID).detail


@pytest.mark.parametrize(
    "id_", [b"18446744073709551616", b"-9223372036854775809", b"1" + b"0" * 30, b"1" + b"0" * 400, b"1e20"]
)
def test_id_beyond_64_bits(id_: bytes) -> None:
    assert "64 bits" in rejected(b'{"x": {}, "id": ' + id_ + b"}", Reason.BAD_ID).detail


def test_check_order_first_failure_wins() -> None:
    rejected(b'{"y": 5, "id": []}', Reason.X_MISSING)
    rejected(b'{"x": [1, 2, null], "y": 5}', Reason.TOO_MANY_FEATURES, JsonCodec(max_features=2))
    rejected(b'{"x": {"a": null}, "y": 5, "id": []}', Reason.BAD_LABEL)
    rejected(b'{"x": {"a": null}, "id": []}', Reason.BAD_ID)


# ---------------------------------------------------------------------------------------------------------
# The fast path agrees with encode_value


def test_fast_types_are_what_encode_value_accepts() -> None:
    """The value types accepted without calling encode_value, at the extremes orjson can produce."""
    assert FAST_TYPES == {str, bool, int, float}  # with this orjson; fewer would only be slower
    for v in ("", "\u2603", True, False, 0, -(2**63), 2**64 - 1, 0.0, -0.0, 5e-324, 1.7976931348623157e308):
        encode_value("k", v)
    for literal in (b"1e999", b"-1e999", b"1" + b"0" * 400):
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(literal)
    assert orjson.loads(b"18446744073709551616") == 2.0**64  # beyond 64 bits: a (finite) float


def test_module_doctests() -> None:
    failures, tried = doctest.testmod(codec_module, optionflags=doctest.ELLIPSIS)
    assert tried > 0 and failures == 0


# ---------------------------------------------------------------------------------------------------------
# encode_event


def test_encode_event_round_trips() -> None:
    codec = JsonCodec("f", "l", "k")
    for event in [
        Event({"a": 1.25, "b": "red", "c": True}, 1, "id-1"),
        Event({0: 0.5, 1: 2}, 0, None),
        Event({}, None, "7"),
    ]:
        assert codec.decode(encode_event(event.x, event.y, event.id, fields=codec.fields)) == event
    assert CODEC.decode(encode_event({"a": 1}, y=False, id=2**70)) == Event({"a": 1}, 0, str(2**70))


def test_encode_event_numpy_and_sequences() -> None:
    assert encode_event(np.array([1.5, 2.0])) == b'{"x":[1.5,2.0]}'
    assert encode_event(np.arange(6.0).reshape(2, 3)[:, 1]) == b'{"x":[1.0,4.0]}'  # not contiguous
    assert encode_event((1, "a")) == b'{"x":[1,"a"]}'
    message = encode_event({"a": np.float64(0.5), "b": np.bool_(True)}, y=np.int64(1), id=np.int64(9))
    assert CODEC.decode(message) == Event({"a": 0.5, "b": True}, 1, "9")


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        (({"a": float("nan")},), {}),
        (({"a": None},), {}),
        (([1.0, float("inf")],), {}),
        (({"a": [1]},), {}),
        (({"a": 1},), {"y": 2}),
        (({"a": 1},), {"y": "1"}),
        (({"a": 1},), {"id": True}),
        (({"a": 1},), {"id": 1.5}),
        (({1: 1.0},), {}),
        (({"a": 1, 0: 1},), {}),
    ],
)
def test_encode_event_refuses_what_the_codec_would_reject(args: tuple, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        encode_event(*args, **kwargs)


# ---------------------------------------------------------------------------------------------------------
# Property test: random good and bad messages


MAX_FEATURES = 40
GOOD_VALUES = [
    "0", "1", "-1", "0.5", "-3.25e-7", "1e308", "-1.7976931348623157e308", "5e-324", "1e-999", "-0.0",
    "18446744073709551615", "-9223372036854775808", "18446744073709551616", "123456789012345678901234567890",
    "true", "false", '"red"', '""', '"caf\\u00e9 \\ud83d\\ude00"', '"a\\"b"',
]  # fmt: skip
BAD_VALUES = ["null", "[]", "[1]", "{}", '{"a": 1}', "1e999", "-1e999", "1" + "0" * 400]
NOT_JSON_VALUES = ["NaN", "Infinity", "-Infinity", '"\\udc00"', "01", ".5", "1.", "+1", "tru", "'a'"]
GOOD_LABELS = ["0", "1", "true", "false", "0.0", "1.0", "null"]
BAD_LABELS = ['"1"', "2", "-1", "0.5", "[]", "{}", '"yes"', "1e999"]
GOOD_IDS = ['"a"', '""', "0", "-5", "18446744073709551615", "null"]
BAD_IDS = ["1.5", "true", "[]", "{}", "18446744073709551616", "1e999"]


def random_message(rng: random.Random) -> tuple[bytes, bool | None]:
    """A message built from JSON fragments, and whether it is good (``None``: mutated, unknown)."""
    good = True

    def pick(good_pool: list[str], bad_pools: list[list[str]], p_bad: float) -> str:
        nonlocal good
        if rng.random() < p_bad:
            good = False
            return rng.choice(rng.choice(bad_pools))
        return rng.choice(good_pool)

    n = rng.choice([0, 1, 3, 20, rng.randrange(50)])
    p_bad_value = rng.choice([0.0, 0.0, 0.02, 0.2])
    values = [pick(GOOD_VALUES, [BAD_VALUES, NOT_JSON_VALUES], p_bad_value) for _ in range(n)]
    if rng.random() < 0.5:
        names = [orjson.dumps(rng.choice(["f", "g", "h\u00e9", ""]) + str(i)).decode() for i in range(n)]
        x = "{" + ", ".join(f"{k}: {v}" for k, v in zip(names, values, strict=True)) + "}"
    else:
        x = "[" + ", ".join(values) + "]"
    fields = []
    if rng.random() < 0.97:
        fields.append(f'"x": {x}')
    else:
        good = False
    if rng.random() < 0.8:
        fields.append(f'"y": {pick(GOOD_LABELS, [BAD_LABELS], 0.05)}')
    if rng.random() < 0.8:
        fields.append(f'"id": {pick(GOOD_IDS, [BAD_IDS], 0.05)}')
    if rng.random() < 0.2:
        fields.append(f'"extra": {rng.choice(GOOD_VALUES + BAD_VALUES)}')  # 1e999 here: not_json
        good = good and "e999" not in fields[-1] and "0" * 400 not in fields[-1]
    rng.shuffle(fields)
    data = ("{" + ", ".join(fields) + "}").encode()
    mutation = rng.random()
    if mutation < 0.05:
        return data[: rng.randrange(len(data) + 1)], None
    if mutation < 0.10:
        i = rng.randrange(len(data))
        return data[:i] + bytes([rng.randrange(256)]) + data[i + 1 :], None  # may still be valid
    if mutation < 0.12:
        return rng.choice([b"[" + data + b"]", b"null", b'"' + data.replace(b'"', b"'") + b'"']), False
    return data, good and n <= MAX_FEATURES


def test_random_messages_never_raise_and_events_are_model_ready() -> None:
    rng = random.Random(20240611)
    codec = JsonCodec(max_features=MAX_FEATURES)
    space = FeatureSpace()
    counts: dict[str, int] = {}
    for _ in range(5000):
        data, good = random_message(rng)
        result = codec.decode(data)
        if good is not None:
            assert isinstance(result, Event) is good, (data, result)
        if isinstance(result, Event):
            counts["event"] = counts.get("event", 0) + 1
            assert type(result.x) is dict and len(result.x) <= MAX_FEATURES
            for k, v in result.x.items():
                encode_value(k, v)  # the model's rule accepts every entry
            space.encode(result.x, grow=True)
            assert result.y in (None, 0, 1) and type(result.y) is not bool
            assert result.id is None or type(result.id) is str
            assert codec.decode(encode_event(result.x, result.y, result.id)) == result
        else:
            assert isinstance(result, Rejection)
            assert isinstance(result.reason, Reason)
            assert type(result.detail) is str and 0 < len(result.detail) <= 200
            counts[result.reason] = counts.get(result.reason, 0) + 1
    assert counts["event"] > 2000
    assert {Reason.NOT_JSON, Reason.NOT_OBJECT, Reason.X_MISSING, Reason.BAD_VALUE, Reason.BAD_LABEL,
            Reason.BAD_ID, Reason.TOO_MANY_FEATURES} <= set(counts), counts  # fmt: skip


def test_compiled_path_agrees_with_the_python_checks() -> None:
    """``_kernel.json_event`` (the hot path) accepts only what ``_check`` accepts, with the same event, and
    everything ``_check`` accepts when the values are of the fast types; it declines the rest."""
    assert codec_module._COMPILED
    rng = random.Random(99)
    codec = JsonCodec(max_features=MAX_FEATURES)
    fields = codec.x_field, codec.y_field, codec.id_field, codec.max_features
    declined = accepted = 0
    extra = [b'{"x": {"a": 1}, "y": 18446744073709551616}', b'{"x": {"a": 1}, "id": -9223372036854775809}',
             b'{"x": {"a": 1}, "id": 9223372036854775808}', b'{"x": [1, 2, 3], "y": -0.0, "id": -1}',
             b'{"x": {"a": 1}, "y": 1, "id": 18446744073709551615}']  # fmt: skip
    messages = [random_message(rng)[0] for _ in range(5000)] + extra
    for data in messages:
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError:
            continue
        expected = codec._check(doc, FAST_TYPES)
        event = codec_module.json_event(doc, *fields, Event)
        if event is None:
            declined += 1
            assert not isinstance(expected, Event), (data, expected)
        else:
            accepted += 1
            assert type(event) is Event and event == expected, (data, event, expected)
            assert [type(v) for v in event] == [type(v) for v in expected]
        assert codec.decode(data) == expected
    assert accepted > 2000 and declined > 500


@pytest.mark.parametrize("codec", [JsonCodec(max_features=MAX_FEATURES, max_bytes=400),
                                   JsonCodec("features", "label", "key")], ids=["limits", "fields"])
def test_the_compiled_decoder_gives_what_decode_gives(codec: JsonCodec) -> None:
    decoder = codec.decoder()
    assert decoder is not codec.decode  # compiled
    rng = random.Random(5)
    messages = [random_message(rng)[0] for _ in range(3000)]
    messages += [None, b"", b"null", b'{"x": {}}', b"x" * 500, bytearray(b'{"x": [1]}'), '{"x": [1]}',
                 memoryview(b'{"x": {"a": 1}, "y": 1}'), b'{"features": {"a": 1}, "label": true, "key": 3}']
    for data in messages:
        assert decoder(data) == codec.decode(data), data
        assert type(decoder(data)) is type(codec.decode(data))


def test_random_good_messages_are_all_accepted() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        n = rng.randrange(30)
        x = {f"k{i}": rng.choice([rng.gauss(0, 1e6), rng.randrange(-(2**63), 2**64), rng.random() < 0.5,
                                  rng.choice(["a", "b", "\u2603"])]) for i in range(n)}  # fmt: skip
        y = rng.choice([None, 0, 1, True, False])
        id_ = rng.choice([None, "e" + str(rng.random()), rng.randrange(-(2**63), 2**64)])
        result = CODEC.decode(encode_event(x, y, id_))
        assert result == Event(x, None if y is None else int(y), None if id_ is None else str(id_))
