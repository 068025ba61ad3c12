"""The compiled JSON → row decoder (stream_logreg/_json.pyx) against its oracle: ``JsonCodec.decode`` then the
model's own encoding (``_kernel.encode``, and ``FeatureSpace.encode``, the reference).

For any bytes, the decoder either declines or gives exactly the columns, values (bitwise) and label of the
oracle; and it does accept the common shape as producers write it (else declining everything would pass).
"""

from __future__ import annotations

import json
import math
import struct

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stream_logreg._json import MAX_KEYS, MAX_ROW, RowDecoder
from stream_logreg._kernel import encode

from stream_logreg import OnlineLogisticRegression
from stream_logreg.codec import Event, JsonCodec
from stream_logreg.features import FeatureSpace

# keys of every length around the 8-byte words the decoder reads; some JSON writes with escapes
KNOWN = ["a", "b", "feature_7", "", "x y", "k\x7f", "A" * 40, "é", "a\\b", 'q"t', "abcdefgh", "abcdefghi",
         "0123456789abcdef", "0123456789abcdefX", "after eight é", 'seven "q', "tab\tafter"]
UNKNOWN = ["c", "zz", "a ", "B", "abcdefgh2", "0123456789abcdeX", "abcdefg"]
CODEC = JsonCodec()


def vocabulary(keys=KNOWN) -> FeatureSpace:
    space = FeatureSpace()
    space.encode({k: 1.0 for k in keys}, grow=True)
    space.encode({"a": "FR"}, grow=True)  # an indicator column too: never served for a number
    return space


def bits(values) -> list[int]:
    return [struct.unpack("<Q", struct.pack("<d", v))[0] for v in values]


def check(rows: RowDecoder, value: bytes, space: FeatureSpace, codec: JsonCodec = CODEC) -> bool:
    """Assert the decoder declines ``value`` or agrees with the oracle; True if it accepted."""
    got = rows.row(value, space)
    if got is None:
        return False
    cols, vals, label = got
    ev = codec.decode(value)
    assert type(ev) is Event, (value, ev)
    assert ev.y == label and type(label) is int
    n_cols = max(len(ev.x), 1)
    ocols, ovals = np.zeros(n_cols, dtype=np.intp), np.zeros(n_cols)
    n = encode(ev.x, space.columns, ocols, ovals, False)
    assert n == len(ev.x) == len(cols), (value, ev.x, cols)
    assert ocols[:n].tolist() == cols
    assert bits(ovals[:n]) == bits(vals), (value, ovals[:n], vals)
    ref_cols, ref_vals = space.encode(ev.x, grow=False)
    assert ref_cols == cols and bits(ref_vals) == bits(vals)
    return True


# ----------------------------------------------------------------- the text of numbers, hostile on purpose

digits = st.text("0123456789", min_size=1, max_size=30)


@st.composite
def number_text(draw) -> str:
    """A JSON number token (or, at times, almost one): long mantissas, exponents, ±0, big integers."""
    kind = draw(st.sampled_from(["float", "repr", "int", "decimal", "edge", "junk"]))
    if kind == "float":
        f = draw(st.floats(allow_nan=False, allow_infinity=False))
        fmt = draw(st.sampled_from(["{!r}", "{:.17g}", "{:.25e}", "{:.3E}", "{:.0e}", "{:.40f}"]))
        text = fmt.format(f)
        return text if "e" in text or "E" in text or "." in text else text + ".0"
    if kind == "repr":
        return orjson.dumps(draw(st.floats(allow_nan=False, allow_infinity=False))).decode()
    if kind == "int":
        return str(draw(st.integers(min_value=-(1 << 70), max_value=1 << 70)
                        | st.integers(min_value=-(10 ** 19), max_value=10 ** 19)))
    if kind == "decimal":
        sign = draw(st.sampled_from(["", "-"]))
        head = draw(st.sampled_from(["0"]) | st.from_regex(r"[1-9][0-9]{0,25}", fullmatch=True))
        frac = draw(st.sampled_from([""]) | digits.map(lambda d: "." + d))
        exp = draw(st.sampled_from([""]) | st.builds(
            lambda e, s, n: e + s + str(n), st.sampled_from(["e", "E"]), st.sampled_from(["", "+", "-"]),
            st.integers(0, 400)))
        return sign + head + frac + exp
    if kind == "edge":
        return draw(st.sampled_from([
            "-0", "-0.0", "0e0", "-0e-0", "1.7976931348623157e308", "-1.7976931348623157e308",
            "1.7976931348623158e308", "1.7976931348623159e308", "1e308", "1e309", "4.9e-324", "2.5e-324",
            "2.4703282292062328e-324", "2.4703282292062327e-324", "2.2250738585072011e-308",
            "2.2250738585072012e-308", "9007199254740993", "9007199254740993.0", "123456789012345678",
            "1234567890123456789", "18446744073709551615", "18446744073709551616", "-9223372036854775808",
            "-9223372036854775809", "1e-400", "0.1e1", "1E+2", "1e-0", "100000000000000000000000e-23",
        ]))
    return draw(st.sampled_from(["01", "1.", ".5", "+1", "1e", "1e+", "--1", "0x10", "1_0", "NaN", "Infinity",
                                 "-Infinity", "1.0.0", "1ee2", "00", "-", "true", "false", "null", '"1"',
                                 "[1]", "{}", "tru", "1 2"]))


ws = st.sampled_from(["", "", "", " ", "\n", "\t", "\r\n ", "\x0c", "\xa0"])


@st.composite
def message(draw) -> tuple[bytes, bool]:
    """The bytes of a message of (mostly) the common shape, and whether it is plainly so."""
    keys = draw(st.lists(st.sampled_from(KNOWN + UNKNOWN), max_size=8))
    values = draw(st.lists(number_text() | st.sampled_from(["true", "false", "null", '"s"']),
                           min_size=len(keys), max_size=len(keys)))
    w = lambda: draw(ws)  # noqa: E731
    members = [w() + json.dumps(k, ensure_ascii=draw(st.booleans())) + w() + ":" + w() + v + w()
               for k, v in zip(keys, values, strict=True)]
    x = "{" + w() + ",".join(members) + "}"
    fields = [("x", x)]
    label = draw(st.sampled_from(["0", "1", "true", "false", None, "null", "0.0", "1.0", "2", '"1"', "-0"]))
    if label is not None:
        fields.append(("y", label))
    id_ = draw(st.sampled_from([None, '"e7"', "7", "-12", "null", "1.5", '"\\u00e9"', "18446744073709551615",
                                "18446744073709551616", "[1]"]))
    if id_ is not None:
        fields.append(("id", id_))
    if draw(st.integers(0, 9)) == 0:
        fields.append(("other", "[1, {}]"))
    if draw(st.integers(0, 9)) == 0:
        fields.append(draw(st.sampled_from(fields)))  # a repeated top-level field
    fields = draw(st.permutations(fields))
    text = w() + "{" + ",".join(w() + f'"{k}"' + w() + ":" + w() + v + w() for k, v in fields) + "}" + w()
    return text.encode("utf-8"), True


def mutate(data, value: bytes) -> bytes:
    out = bytearray(value)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate", "dup"]))
        at = data.draw(st.integers(0, max(len(out) - 1, 0)))
        if op == "flip" and out:
            out[at] = data.draw(st.sampled_from(b'{}[]":,.-+eE01 \\\x00\xff\xc3tfn9'))
        elif op == "insert":
            out[at:at] = data.draw(st.binary(min_size=1, max_size=3))
        elif op == "delete" and out:
            del out[at]
        elif op == "truncate":
            del out[at:]
        elif op == "dup":
            out[at:at] = out[at : at + data.draw(st.integers(1, 12))]
    return bytes(out)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message())
def test_messages_decline_or_agree_with_the_codec(msg):
    value, _ = msg
    check(RowDecoder(CODEC), value, vocabulary())


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message(), st.data())
def test_mutated_messages_decline_or_agree_with_the_codec(msg, data):
    value = mutate(data, msg[0])
    check(RowDecoder(CODEC), value, vocabulary())


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_random_bytes_decline_or_agree(value):
    check(RowDecoder(CODEC), value, vocabulary())


plain_value = (
    st.floats(allow_nan=False, allow_infinity=False)
    | st.integers(min_value=-(10 ** 18) + 1, max_value=10 ** 18 - 1)
    | st.booleans()
    | st.sampled_from([-0.0, 5e-324, -5e-324, 1.7976931348623157e308, -1.7976931348623157e308, 2.0 ** 53 + 2])
)
plain_key = st.sampled_from([k for k in KNOWN if json.dumps(k, ensure_ascii=True)[1:-1] == k])


@settings(max_examples=800, deadline=None)
@given(st.dictionaries(plain_key, plain_value, max_size=8), st.sampled_from([0, 1, True, False]),
       st.sampled_from([None, "e-17", 42, -(10 ** 17)]), st.booleans())
def test_producers_messages_are_accepted(x, y, id_, indent):
    """What producers write (orjson, the standard library, with or without indentation) is taken."""
    msg = {"x": x, "y": y} if id_ is None else {"id": id_, "y": y, "x": x}
    value = json.dumps(msg, indent=2).encode() if indent else orjson.dumps(msg)
    assert check(RowDecoder(CODEC), value, vocabulary()), value


def test_subnormals_extremes_and_integers_beyond_2_53():
    rows, space = RowDecoder(CODEC), vocabulary()
    for token, expected in [
        ("5e-324", 5e-324), ("-0.0", -0.0), ("-0", 0.0), ("1.7976931348623157e308", 1.7976931348623157e308),
        ("9007199254740993", 9007199254740992.0), ("9007199254740995", 9007199254740996.0),
        ("123456789012345678", 123456789012345678.0), ("1e-400", 0.0),
        ("0.30000000000000004", 0.30000000000000004),
    ]:
        value = f'{{"x": {{"a": {token}}}, "y": 1}}'.encode()
        assert check(rows, value, space), token
        got = rows.row(value, space)[1][0]
        assert bits([got]) == bits([expected]) and math.copysign(1, got) == math.copysign(1, expected)
    for token in ["1e309", "-1e999", "1234567890123456789", "18446744073709551616", "NaN", "Infinity"]:
        assert rows.row(f'{{"x": {{"a": {token}}}, "y": 1}}'.encode(), space) is None, token


def test_declines_what_the_codec_must_judge():
    rows, space = RowDecoder(CODEC), vocabulary()
    assert rows.row(b'{"x": {"a": 1, "b": 2}, "y": 1}', space) == ([0, 1], [1.0, 2.0], 1)
    for value in [
        b'{"x": {"a": 1, "a": 2}, "y": 1}',  # a repeated key (the codec keeps the last)
        b'{"x": {"a": 1}, "x": {"a": 1}, "y": 1}',
        b'{"x": {"a": 1}, "y": 1, "y": 0}',
        b'{"x": {"c": 1}, "y": 1}',  # not in the vocabulary
        b'{"x": {"a": "FR"}, "y": 1}',  # an indicator: the codec and the space decide
        b'{"x": {"\\u0061": 1}, "y": 1}',  # an escape
        b'{"x": {"a": null}, "y": 1}', b'{"x": {"a": [1]}, "y": 1}', b'{"x": {"a": {}}, "y": 1}',
        b'{"x": [1, 2], "y": 1}',  # an array: int keys
        b'{"x": {"a": 1}}', b'{"x": {"a": 1}, "y": null}', b'{"x": {"a": 1}, "y": 0.0}',
        b'{"x": {"a": 1}, "y": 2}', b'{"x": {"a": 1}, "y": "1"}',
        b'{"x": {"a": 1}, "y": 1, "id": 1.5}', b'{"x": {"a": 1}, "y": 1, "id": "\\u00e9"}',
        b'{"x": {"a": 1}, "y": 1, "other": 0}',
        b'{"x": {"a": 1}, "y": 1}x', b'{"x": {"a": 1}, "y": 1', b'{"x": {"a": 1,}, "y": 1}',
        b'\xef\xbb\xbf{"x": {"a": 1}, "y": 1}', b'{"x": {"a": 1}, "y": 1}\x00', b'{"x": {"a":\x0c1}, "y": 1}',
    ]:
        assert rows.row(value, space) is None, value
        check(rows, value, space)
    assert rows.row(bytearray(b'{"x": {"a": 1}, "y": 1}'), space) is None  # bytes only
    assert rows.row(None, space) is None


def test_settings_of_the_codec():
    codec = JsonCodec(x_field="features", y_field="label", id_field="key", max_features=2, max_bytes=60)
    rows, space = RowDecoder(codec), vocabulary()
    value = b'{"features": {"a": 1, "b": 0.5}, "label": false, "key": 3}'
    assert rows.row(value, space) == ([0, 1], [1.0, 0.5], 0)
    assert rows.row(b'{"x": {"a": 1}, "y": 1}', space) is None
    assert rows.row(b'{"features": {"a": 1, "b": 0.5, "feature_7": 1}, "label": 1}', space) is None
    long = b'{"features": {"a": 1}, "label": 1, "key": "' + b"k" * 40 + b'"}'
    assert rows.row(long, space) is None and codec.decode(long).reason == "oversize"


def test_a_hashing_space_is_declined():
    space = FeatureSpace(n_bits=4)
    space.encode({"a": 1.0}, grow=True)
    assert RowDecoder(CODEC).row(b'{"x": {"a": 1}, "y": 1}', space) is None


def test_never_a_stale_column():
    """A rollback, a rebuilt vocabulary, a restored model: the table never serves a column the space no
    longer gives its key."""
    rows, space = RowDecoder(CODEC), FeatureSpace()
    value = b'{"x": {"k": 2.5}, "y": 1}'
    assert rows.row(value, space) is None  # not in the vocabulary yet
    mark = space.mark()
    space.encode({"k": 1.0}, grow=True)
    assert rows.row(value, space) == ([0], [2.5], 1)
    space.rollback(mark)  # the key is gone, in place
    assert rows.row(value, space) is None
    space.encode({"j": 1.0, "k": 1.0}, grow=True)  # now at another column
    assert rows.row(value, space) == ([1], [2.5], 1)
    check(rows, value, space)
    # the vocabulary rebuilt in place, in another order
    space.keys[:] = ["k", "j"]
    space.columns.clear()
    space.columns.update({"k": 0, "j": 1})
    assert rows.row(value, space) in (None, ([0], [2.5], 1))  # the stale entry seen: declined, forgotten
    assert rows.row(value, space) == ([0], [2.5], 1)
    # another space (a restored model, a group-model sync)
    keys = {"kinds": "ss", "text": "jk", "lengths": [1, 1], "ints": [], "other": []}
    other = FeatureSpace.from_state({**space.to_state(), "keys": keys})
    assert rows.row(value, other) == ([1], [2.5], 1)
    model = OnlineLogisticRegression()
    model.learn_one({"z": 1.0, "k": 1.0}, True)
    assert rows.row(value, model.features) == ([1], [2.5], 1)
    restored = OnlineLogisticRegression.from_state(*model.state())
    assert rows.row(value, restored.features) == ([1], [2.5], 1)


def test_the_table_is_bounded():
    keys = [f"f{i}" for i in range(MAX_KEYS + 100)]
    space = FeatureSpace()
    space.columns_of(keys, grow=True)
    rows = RowDecoder(CODEC)
    accepted = 0
    for start in range(0, len(keys), 50):
        x = {k: 1.0 for k in keys[start : start + 50]}
        value = orjson.dumps({"x": x, "y": 1})
        if rows.row(value, space) is not None:
            accepted += 1
        assert rows.n_keys <= MAX_KEYS
        if rows.row(value, space) is not None:  # met again: served from the table
            accepted += 1
            check(rows, value, space)
    assert accepted >= len(keys) // 50
    assert rows.row(orjson.dumps({"x": {k: 1 for k in keys[: MAX_ROW + 1]}, "y": 1}), space) is None


@pytest.mark.parametrize("n", [0, 1, 20])
def test_empty_and_wide_rows(n):
    keys = [f"k{i}" for i in range(n)]
    space = FeatureSpace()
    space.columns_of(keys, grow=True)
    value = orjson.dumps({"x": {k: i + 0.5 for i, k in enumerate(keys)}, "y": 0, "id": "a"})
    assert check(RowDecoder(CODEC), value, space)
