"""The compiled feature encoder (stream_logreg._features) against the reference, FeatureSpace.encode.

Oracle: the pure-Python reference. On random rows of mixed keys and values (strings incl. numeric-looking
ones and lone surrogates, bools, ints, floats incl. huge finite ones and non-finite ones, other types), for
the vocabulary, a capped vocabulary and hashed spaces, the compiled encoder either writes bitwise what the
reference returns and leaves the space in the state the reference leaves it in, or declines (-1) having
changed nothing but the hash cache; a model encoding through it is bitwise a model encoding through the
reference; BLAKE2b equals hashlib's; caches stay bounded; refused rows leave no trace.
"""

from __future__ import annotations

import copy
import hashlib

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_logreg import FeatureSpace, OnlineLogisticRegression, _features, optim
from stream_logreg.features import IndicatorKey, looks_numeric

SPACES = [{}, {"max_features": 7}, {"n_bits": 18}, {"n_bits": 3}]
SPACE_IDS = ["vocabulary", "capped", "hashed", "hashed-3-bits"]

NUMERIC_LOOKING = ["42", " 1e3", "nan", "-inf", "+Infinity", "1_000", "1__0", "_1", "0x10", "١٢", " \t",
                   "", "05db9164", "1e5a", "838969e1", ".5", "5.", "1e", "e5", "\u20031.5", "1.5\n", "NaN",
                   "in", "infinit", "1\x00", "--1", "1e+5", "00000000"]

any_text = st.text(st.characters(exclude_categories=()), max_size=6)  # surrogates included
keys = st.one_of(
    st.sampled_from(["a", "b", "a=FR", "1", "city", "é", "\ud800"]),
    any_text,
    st.integers(-3, 3),
    st.booleans(),
    st.floats(allow_nan=False, width=16),
    st.tuples(st.sampled_from(["a", "b"]), st.integers(0, 2)),
)
values = st.one_of(
    st.sampled_from(["FR", "DE", "a=FR", "x"]),
    st.sampled_from(NUMERIC_LOOKING),
    any_text,
    st.booleans(),
    st.integers(-(10**3), 10**3),
    st.sampled_from([10**308, 10**309, -(10**400), 2**53 + 1]),
    st.floats(),  # NaN, ±inf and huge finite ones included
    st.sampled_from([1.7e308, -1.7e308, 5e-324]),
    st.sampled_from([None, [1.0], np.float64(2.5), np.int64(3), np.bool_(True), np.float32(1.5)]),
)
rows = st.dictionaries(keys, values, max_size=8)


def snapshot(space: FeatureSpace) -> tuple:
    """Everything that is state: the keys in order with their types, their columns, the dropped count."""
    columns = None if space.hashing else [(type(k), k, c) for k, c in space.columns.items()]
    return [(type(k), k) for k in space.keys], columns, space.n_dropped


def reference(space: FeatureSpace, x: dict, grow: bool):
    try:
        return space.encode(x, grow)
    except ValueError as e:
        return str(e)


@pytest.mark.parametrize("space", SPACES, ids=SPACE_IDS)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=st.lists(st.tuples(rows, st.booleans()), max_size=12))
def test_compiled_encoding_is_the_reference(space, stream):
    compiled, ref = FeatureSpace(**space), FeatureSpace(**space)
    cols, vals = np.full(16, -7, dtype=np.intp), np.full(16, np.nan)
    for x, grow in stream:
        before = snapshot(compiled)
        expected = reference(ref, x, grow)
        n = _features.encode_into(compiled, x, grow, cols, vals, 3)
        if n < 0:  # declined: nothing changed, and the reference has something to say
            assert snapshot(compiled) == before
            assert reference(compiled, x, grow) == expected
        else:
            assert not isinstance(expected, str), f"compiled accepted {x!r}, the reference says {expected}"
            assert cols[3 : 3 + n].tolist() == expected[0]
            assert vals[3 : 3 + n].tobytes() == np.array(expected[1], dtype=np.float64).tobytes()
        assert snapshot(compiled) == snapshot(ref)
        if compiled.hashing:  # the cache holds what the reference's holds (equal keys, same columns)
            assert all(compiled.columns[k] == c for k, c in ref.columns.items() if k in compiled.columns)
        # encode_into (the method, with its fallback) agrees too, and leaves both spaces equal
        try:
            m = compiled.encode_into(x, grow, cols, vals, 3)
            got = (cols[3 : 3 + m].tolist(), vals[3 : 3 + m].tolist())
        except ValueError as e:
            got = str(e)
        assert got == reference(ref, x, grow)
        assert snapshot(compiled) == snapshot(ref)
    assert cols[:3].tolist() == [-7] * 3  # nothing written before start


plain_rows = st.dictionaries(
    st.text(st.characters(codec="utf-8"), max_size=5),
    st.one_of(st.text(st.characters(codec="utf-8"), max_size=8).filter(lambda s: not looks_numeric(s)),
              st.booleans(), st.integers(-(10**6), 10**6), st.floats(allow_nan=False, allow_infinity=False)),
    max_size=10,
)


@pytest.mark.parametrize("space", SPACES, ids=SPACE_IDS)
@settings(max_examples=100, deadline=None)
@given(x=plain_rows)
def test_plain_rows_take_the_compiled_path(space, x):
    """Strings, bools, ints and finite floats under str keys are never left to the reference (bar a
    hashed sum that overflows)."""
    values = [1.0 if isinstance(v, str) else float(v) for v in x.values()]
    if "n_bits" in space and any(abs(v) > 1e307 for v in values):
        return
    cols, vals = np.zeros(len(x), dtype=np.intp), np.zeros(len(x))
    assert _features.encode_into(FeatureSpace(**space), x, True, cols, vals) >= 0


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=400))
def test_blake2b_is_hashlibs(data):
    expected = int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")
    assert _features.blake2b64(data) == expected


def test_blake2b_every_length_around_its_blocks():
    """Every length from 0 to 300 bytes: the short form (a message of at most 16 bytes, one block with 14
    zero words), one block, a full block, and more."""
    for n in range(301):
        data = bytes((37 * i + n) & 0xFF for i in range(n))
        expected = int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")
        assert _features.blake2b64(data) == expected, n


@pytest.mark.parametrize("s", NUMERIC_LOOKING + ["1e5", "1.5e-3", "-0", "+.5e+5", "infinity", "iNfInItY"])
def test_numeric_strings_follow_the_policy(s):
    """A string the reference calls a number is declined (the reference raises); any other is a category."""
    cols, vals = np.zeros(1, dtype=np.intp), np.zeros(1)
    space = FeatureSpace()
    n = _features.encode_into(space, {"k": s}, True, cols, vals)
    assert (n < 0) == looks_numeric(s)
    if n >= 0:
        assert space.keys == [IndicatorKey("k", s)]


def categorical_stream(n: int, seed: int) -> list[tuple[dict, bool]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x = {f"c{j}": f"v{int(rng.integers(0, 40 * (j + 1)))}" for j in range(6)}
        x["n"] = float(rng.standard_normal())
        x[("bi", 1)] = int(rng.integers(0, 3))
        x["flag"] = bool(rng.integers(0, 2))
        out.append((x, bool(rng.integers(0, 2))))
    return out


@pytest.mark.parametrize("space", SPACES, ids=SPACE_IDS)
@pytest.mark.parametrize("opt", ["default", "sgd"])
def test_a_model_encoding_in_c_is_bitwise_the_reference_model(space, opt, monkeypatch):
    stream = categorical_stream(400, seed=5)

    def make():
        return OnlineLogisticRegression(**space) if opt == "default" else OnlineLogisticRegression(
            optimizer=optim.SGD(0.05), **space)

    compiled = make()
    ps = [compiled.predict_learn_one(x, y) for x, y in stream]
    qs = [compiled.predict_proba_one(x)[True] for x, _ in stream[:50]]
    compiled.learn_rows([x for x, _ in stream[:30]], [y for _, y in stream[:30]])
    monkeypatch.setattr(_features, "encode_into", lambda *args: -1)  # every row through the reference
    ref = make()
    assert [ref.predict_learn_one(x, y) for x, y in stream] == ps
    assert [ref.predict_proba_one(x)[True] for x, _ in stream[:50]] == qs
    ref.learn_rows([x for x, _ in stream[:30]], [y for _, y in stream[:30]])
    a, b = compiled.state(), ref.state()
    assert a[1] == b[1] and a[0].keys() == b[0].keys()
    assert all(a[0][k].tobytes() == b[0][k].tobytes() for k in a[0])


@pytest.mark.parametrize("space", SPACES, ids=SPACE_IDS)
def test_a_refused_row_with_new_categories_leaves_no_trace(space):
    model = OnlineLogisticRegression(optimizer=optim.SGD(0.05), **space)
    for x, y in categorical_stream(50, seed=2):
        model.predict_learn_one(x, y)
    before = copy.deepcopy(model.state())
    names_before = list(model.features.keys)
    # new categories, then an update that overflows (g·x with x = 10^300 and weight 10^300)
    with pytest.raises(ValueError, match="not finite|non-finite"):
        model.learn_one({"c0": "brand-new", "zz": "also-new", "n": 10**300}, True, w=1e300)
    with pytest.raises(ValueError, match="reads as a number"):
        model.learn_one({"c0": "brand-new", "c1": "12"}, True)
    with pytest.raises(ValueError, match="row 1"):
        model.learn_rows([{"c0": "new-in-batch"}, {"c1": float("inf")}], [True, False])
    after = model.state()
    assert after[1] == before[1] and list(model.features.keys) == names_before
    assert all(after[0][k].tobytes() == before[0][k].tobytes() for k in after[0])


def test_the_hash_cache_stays_bounded_in_the_compiled_path(monkeypatch):
    monkeypatch.setattr("stream_logreg.features.HASH_CACHE_SIZE", 50)
    space, big = FeatureSpace(n_bits=12), FeatureSpace(n_bits=12)
    cols, vals = np.zeros(8, dtype=np.intp), np.zeros(8)
    largest = 0
    for i in range(2000):
        x = {f"f{j}": f"v{i}-{j}" for j in range(8)}
        n = _features.encode_into(space, x, True, cols, vals)
        largest = max(largest, len(space.columns))
        expected = [big.hash_column(IndicatorKey(k, v)) for k, v in x.items()]
        assert cols[:n].tolist() == list(dict.fromkeys(expected))  # merged, in order of first appearance
    assert 0 < largest <= 50


def test_a_key_that_keeps_the_look_up_key_sees_it_unchanged():
    """The look-up tuple is reused across a row only while nothing else holds it."""
    from stream_logreg._kernel import INDICATOR

    kept = []

    class Keeper:
        def __hash__(self) -> int:
            return hash((INDICATOR, "a", "FR"))

        def __eq__(self, other: object) -> bool:
            kept.append(other)
            return False

    space = FeatureSpace()
    cols, vals = np.zeros(4, dtype=np.intp), np.zeros(4)
    assert _features.encode_into(space, {Keeper(): 1.0}, True, cols, vals) == 1
    assert _features.encode_into(space, {"a": "FR", "b": "DE", "c": "IT"}, True, cols, vals) == 3
    assert kept and all(k == (INDICATOR, "a", "FR") for k in kept)
    assert space.names[1:] == ["a=FR", "b=DE", "c=IT"]


# The model's cache of indicator look-ups (RowLayout's pair cache) and the compiled steps' new features

small_rows = st.dictionaries(
    st.sampled_from(["a", "b", "c", "é", 1]),
    st.one_of(st.sampled_from(["FR", "DE", "IT", "a=FR", "x", "12"]), st.integers(0, 2)),
    max_size=4,
)


@pytest.mark.parametrize("space", SPACES, ids=SPACE_IDS)
@pytest.mark.parametrize("max_pairs", [0, 2, 5], ids=["default-bound", "2-pairs", "5-pairs"])
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=st.lists(st.tuples(st.one_of(small_rows, rows),
                                 st.sampled_from(["cached", "cached", "uncached", "reference"])),
                       max_size=25))
def test_the_pair_cache_changes_no_column(space, max_pairs, stream):
    """Encoding through the cache (the compiled encoder and the kernel's known-row path), without it, or
    through the reference, in any mix, with a cache that forgets (2 or 5 entries): the columns, values and
    the space are always the reference's."""
    from stream_logreg._kernel import RowLayout, encode_rows

    cached, ref = FeatureSpace(**space), FeatureSpace(**space)
    layout = RowLayout(max_pairs=max_pairs)
    cols, vals, indptr = np.zeros(16, dtype=np.intp), np.zeros(16), np.zeros(2, dtype=np.intp)
    for x, how in stream:
        expected = reference(ref, x, True)
        if how == "reference":
            got = reference(cached, x, True)
        else:
            n = _features.encode_into(cached, x, True, cols, vals, 0, layout if how == "cached" else None)
            got = reference(cached, x, True) if n < 0 else (cols[:n].tolist(), vals[:n].tolist())
        assert got == expected
        assert snapshot(cached) == snapshot(ref)
        if encode_rows([x], 0, cached.columns, cols, vals, indptr, cached.hashing, layout) == 1:  # all known
            assert (cols[: indptr[1]].tolist(), vals[: indptr[1]].tolist()) == reference(ref, x, False)
        assert layout.n_pairs <= (max_pairs or 1 << 20)


def test_the_pair_cache_keeps_a_pair_seen_recently_when_it_is_full():
    """A full cache does not forget everything (it did: it started again empty): the pairs of the last
    half of its bound survive any stream (here a table of 8 slots, 4 pairs in each of its two
    generations; a pair seen, then 4 new ones: still cached). The oracle: the look-up finds the pair
    without the feature dict, which no longer has it."""
    from stream_logreg._kernel import RowLayout, encode_rows

    space, layout = FeatureSpace(), RowLayout(max_pairs=8)
    cols, vals, indptr = np.zeros(4, dtype=np.intp), np.zeros(4), np.zeros(2, dtype=np.intp)

    def cached(x: dict) -> bool:  # found by the pair cache alone
        columns = {k: c for k, c in space.columns.items() if k != IndicatorKey("k", x["k"])}
        return encode_rows([x], 0, columns, cols, vals, indptr, False, layout) == 1

    for i in range(60):
        hot = {"k": "hot"}
        space.encode(hot, True)
        encode_rows([hot], 0, space.columns, cols, vals, indptr, False, layout)
        for j in range(4):
            cold = {"k": f"cold{i}-{j}"}
            space.encode(cold, True)
            assert encode_rows([cold], 0, space.columns, cols, vals, indptr, False, layout) == 1
            assert layout.n_pairs <= 8
        assert cached(hot) and indptr[1] == 1 and cols[0] == space.columns[IndicatorKey("k", "hot")]
        assert cached({"k": f"cold{i}-3"})
    assert not cached({"k": "cold0-0"})  # bounded: the old ones are forgotten


def test_the_pair_cache_keeps_its_pairs_in_tables_of_megabytes():
    """From 2 MiB on (65,536 slots of 32 bytes) a table is mapped memory that only the kernel zeroes: a
    cache that grows to that size, fills it and rotates it (the previous table mapped too) holds the
    columns the vocabulary has, finds the pairs of both tables without the feature dict, and is released
    cleanly. The oracle: the feature dict, and the reference encoder."""
    from stream_logreg._kernel import RowLayout, encode_rows

    space, layout = FeatureSpace(), RowLayout(max_pairs=1 << 16)
    cols, vals, indptr = np.zeros(4, dtype=np.intp), np.zeros(4), np.zeros(2, dtype=np.intp)
    n = 40_000  # past half of the 65,536 slots: one rotation, both tables mapped
    for i in range(n):
        x = {"k": f"v{i}"}
        assert _features.encode_into(space, x, True, cols, vals, 0, layout) == 1
        assert cols[0] == space.columns[IndicatorKey("k", f"v{i}")] == i
    assert len(space.keys) == n and 1 << 15 <= layout.n_pairs <= 1 << 16
    for i in range(n - 1000, n):  # recent: found by the cache alone, with the right column
        x = {"k": f"v{i}"}
        assert encode_rows([x], 0, {}, cols, vals, indptr, False, layout) == 1 and cols[0] == i
    # the first ones: in the previous table (mapped too), copied back to the current one when found
    assert encode_rows([{"k": "v0"}], 0, {}, cols, vals, indptr, False, layout) == 1 and cols[0] == 0
    ref = FeatureSpace()
    for i in range(n):  # and the space is the reference's
        reference(ref, {"k": f"v{i}"}, True)
    assert snapshot(space) == snapshot(ref)
    layout.clear()
    del layout


def test_a_restored_model_has_the_look_ups_of_its_vocabulary(monkeypatch):
    """After ``from_state`` the pair cache holds every indicator of the vocabulary (``complete``): a new
    value is created without asking the vocabulary's dict first, as in the model that was saved; and what
    the restored model learns is bitwise what the saved one does."""
    model = OnlineLogisticRegression()
    for x, y in click_rows(200, seed=5):
        model.predict_learn_one(x, y)
    restored = OnlineLogisticRegression.from_state(*model.state())
    layout = restored._layout
    assert layout.complete and layout.synced == len(restored.features.keys) == layout.n_pairs
    for x, y in click_rows(200, seed=6):
        assert restored.predict_learn_one(x, y) == model.predict_learn_one(x, y)
    assert restored._layout.complete and restored.state()[1] == model.state()[1]
    # bounded: a cache smaller than the vocabulary holds what fits and is not complete
    from stream_logreg._kernel import RowLayout

    small = RowLayout(max_pairs=16)
    assert not small.fill(restored.features.keys) and not small.complete and small.n_pairs == 8


@pytest.mark.parametrize("space", SPACES, ids=SPACE_IDS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=st.lists(st.tuples(st.one_of(small_rows, rows), st.booleans()), max_size=20),
       scale=st.sampled_from([1.0, 1e150, 1e300]))
def test_the_compiled_prediction_is_the_general_paths(space, stream, scale):
    """``predict_proba_one`` through the compiled step (every feature known) is bitwise the general path's
    (the dict look-ups, the overflow-safe dot, ``sigmoid_scalar``), whatever the row (unknown features,
    bad values: the general path answers or raises), after weights that make the dot overflow. (The
    mixture's prediction always was its compiled step's.)"""
    model = OnlineLogisticRegression(optimizer=optim.SGD(0.05), **space)
    for x, y in [({"a": "FR", "b": 1.0, 1: 2.0}, True), ({"a": "DE", "b": -1.0, "c": True}, False)] * 3:
        model.learn_one(x, y)
    model._w[:] *= scale  # a dot that overflows in double, which the compiled dot sums again wide
    for x, y in stream:
        for row in (x, {"a": "FR", "b": 1.0, 1: 2.0}, {"b": 1e308, 1: -1e308, "c": True}):
            try:
                fast = model.predict_proba_one(row)
            except (ValueError, TypeError) as e:
                fast = type(e)
            model._step = False  # the general path (then compiled again)
            try:
                slow = model.predict_proba_one(row)
            except (ValueError, TypeError) as e:
                slow = type(e)
            model._step = None
            assert fast == slow
        try:
            model.learn_one(x, y)
        except (ValueError, TypeError):
            pass


def click_rows(n: int, seed: int) -> list[tuple[dict, bool]]:
    """Rows of 8 string fields with 50–400 values each: new values in most rows, known ones in all."""
    rng = np.random.default_rng(seed)
    return [({f"C{j}": f"v{int(rng.integers(0, 50 * (j + 1)))}" for j in range(8)}, bool(rng.integers(0, 2)))
            for _ in range(n)]


@pytest.mark.parametrize("space", SPACES, ids=SPACE_IDS)
@pytest.mark.parametrize("opt", ["default", "sgd"])
def test_new_categories_learned_in_the_compiled_step_are_the_reference_model(space, opt, monkeypatch):
    """New features created inside the compiled step (no Python per row), mixed with batches and a
    checkpoint round trip: bitwise the model that encodes every row through the reference."""
    stream = click_rows(600, seed=3)

    def make():
        return OnlineLogisticRegression(**space) if opt == "default" else OnlineLogisticRegression(
            optimizer=optim.SGD(0.05), **space)

    def run(model):
        ps = [model.predict_learn_one(x, y) for x, y in stream[:300]]
        batch = stream[300:310]
        model.learn_many(pd.DataFrame([x for x, _ in batch]), pd.Series([y for _, y in batch]))
        model = OnlineLogisticRegression.from_state(*model.state())
        ps += [model.predict_learn_one(x, y) for x, y in stream[310:]]
        return ps, model

    slow = []
    original = OnlineLogisticRegression._encode_slow
    monkeypatch.setattr(OnlineLogisticRegression, "_encode_slow",
                        lambda self, x, grow: slow.append(x) or original(self, x, grow))
    ps, compiled = run(make())
    assert len(slow) < 60  # the general path only when the weights must grow (or after the round trip)
    monkeypatch.setattr(_features, "encode_into", lambda *args: -1)  # every row through the reference
    qs, ref = run(make())
    assert ps == qs
    a, b = compiled.state(), ref.state()
    assert a[1] == b[1] and a[0].keys() == b[0].keys()
    assert all(a[0][k].tobytes() == b[0][k].tobytes() for k in a[0])


@pytest.mark.parametrize("opt", ["default", "sgd"])
def test_new_categories_enter_the_feature_dict_when_it_is_read(opt):
    """While the pair cache knows every indicator, the compiled step leaves the dict entries of the ones
    it creates out (the costliest part of a new value: a miss in a large table); reading
    ``features.columns`` adds them, in column order, as if they had been there all along. With new numbers
    among the new values, a copy taken meanwhile, and a pair cache that forgets (so the dict is needed
    again): the dict is always the vocabulary's, and the models learn bitwise what one with the default
    cache learns."""
    from stream_logreg._kernel import RowLayout

    def make(max_pairs=0):
        model = OnlineLogisticRegression() if opt == "default" else OnlineLogisticRegression(
            optimizer=optim.SGD(0.05))
        if max_pairs:
            model._layout, model._step = RowLayout(max_pairs=max_pairs), None
        return model

    stream = [({**x, f"n{i}": 1.5} if i % 37 == 0 else x, y) for i, (x, y) in enumerate(click_rows(900, 7))]
    model, forgetful = make(), make(max_pairs=64)
    ps = [model.predict_learn_one(x, y) for x, y in stream[:300]]
    features = model.features
    assert len(features._columns) < len(features.keys)  # left out
    twin = copy.deepcopy(model)

    def vocabulary(space):
        return list(zip(space.keys, range(len(space.keys)), strict=True))

    assert list(features.columns.items()) == vocabulary(features)
    assert len(features._columns) == len(features.keys) and features._unindexed is None
    ps += [model.predict_learn_one(x, y) for x, y in stream[300:]]
    qs = [twin.predict_learn_one(x, y) for x, y in stream[300:]]
    rs = [forgetful.predict_learn_one(x, y) for x, y in stream]
    assert ps[300:] == qs and ps == rs
    for m in (twin, forgetful, model):
        assert list(m.features.columns.items()) == vocabulary(m.features) == vocabulary(model.features)
    a, b, c = model.state(), twin.state(), forgetful.state()
    assert a[1] == b[1] == c[1]
    assert all(a[0][k].tobytes() == b[0][k].tobytes() == c[0][k].tobytes() for k in a[0])


def test_a_rollback_forgets_the_new_keys_in_the_dict_and_those_left_out():
    """Rows whose new numbers enter the feature dict and whose new categories wait (the pair cache knows
    all of them), rolled back: the dict is the vocabulary's again, whichever came first."""
    from stream_logreg._kernel import RowLayout

    space, layout = FeatureSpace(), RowLayout()
    cols, vals = np.zeros(4, dtype=np.intp), np.zeros(4)

    def vocabulary():
        return list(zip(space.keys, range(len(space.keys)), strict=True))

    for x in ({"n": 1.0, "a": "FR"}, {"a": "FR", "n": 1.0}, {"m": 2.0, "b": "DE", "k": 3.0, "c": "IT"}):
        mark = space.mark()
        assert _features.encode_into(space, x, True, cols, vals, 0, layout) == len(x)
        assert (len(space._columns) < len(space.keys)) == (type(list(x.values())[-1]) is str)
        space.rollback(mark)
        layout.fill(space.keys)  # (complete again, as after a checkpoint)
        assert list(space.columns.items()) == vocabulary()
        _features.encode_into(space, {"a": "FR"}, True, cols, vals, 0, layout)  # and again, kept
    assert space.names == ["a=FR"] and list(space.columns.items()) == vocabulary()


@pytest.mark.parametrize("space", [{}, {"n_bits": 18}], ids=["vocabulary", "hashed"])
@pytest.mark.parametrize("opt", ["default", "sgd"])
def test_a_refused_update_forgets_the_columns_its_compiled_step_created(space, opt, monkeypatch):
    model = OnlineLogisticRegression(**space) if opt == "default" else OnlineLogisticRegression(
        optimizer=optim.SGD(0.05), **space)
    for x, y in click_rows(40, seed=1):
        model.predict_learn_one(x, y)
    bad = {"C0": "brand-new", "C1": "also-new", "n": 10**300}
    assert len(model._w) >= len(model.features.keys) + len(bad)  # room: the compiled step creates them
    before, keys_before = copy.deepcopy(model.state()), list(model.features.keys)
    monkeypatch.setattr(OnlineLogisticRegression, "_encode_slow", None)  # not the general path
    with pytest.raises(ValueError, match="not finite|non-finite"):
        model.predict_learn_one(bad, True, w=1e300)
    monkeypatch.undo()
    after = model.state()
    assert list(model.features.keys) == keys_before and after[1] == before[1]
    assert all(after[0][k].tobytes() == before[0][k].tobytes() for k in after[0])
    # and the same categories learned normally get the columns a model that never saw the refusal gives
    twin = OnlineLogisticRegression.from_state(*before)
    good = {"C0": "brand-new", "C1": "also-new", "n": 1.0}
    assert model.predict_learn_one(good, True) == twin.predict_learn_one(good, True)
    assert list(model.features.keys) == list(twin.features.keys)


class _EncodingInPython:
    """A compiled step whose own encoding is switched off (every row takes the model's general path, and
    so the reference encoder there): its updates are still the compiled ones."""

    def __init__(self, step):
        self.step = step

    def __call__(self, x, y, w):
        return -1.0

    def __getattr__(self, name):
        return getattr(self.step, name)


@pytest.mark.parametrize("space", [{}, {"n_bits": 10}], ids=["vocabulary", "hashed-with-collisions"])
@pytest.mark.parametrize("opt", ["default", "sgd"])
def test_the_compiled_steps_new_values_are_the_reference_encoders(space, opt, monkeypatch):
    """Rows with new values, numbers before, between and after them, encoded inside the compiled step
    (which hands its pair cache's answers to the encoder): predictions and state bitwise those of a model
    whose every row goes through the reference encoder (``FeatureSpace.encode``)."""
    rng = np.random.default_rng(5)
    stream = []
    for x, y in click_rows(500, seed=4):
        items = list(x.items())
        for at in rng.choice(len(items) + 1, size=int(rng.integers(0, 3)), replace=False):
            items.insert(int(at), (f"n{int(at)}", float(rng.normal())))
        stream.append((dict(items), y))

    def make():
        return OnlineLogisticRegression(**space) if opt == "default" else OnlineLogisticRegression(
            optimizer=optim.SGD(0.05), **space)

    compiled = make()
    ps = [compiled.predict_learn_one(x, y) for x, y in stream]
    original = OnlineLogisticRegression._compile_step
    monkeypatch.setattr(OnlineLogisticRegression, "_compile_step",
                        lambda self: _EncodingInPython(original(self)))
    calls = []
    monkeypatch.setattr(_features, "encode_into", lambda *args: calls.append(args) or -1)
    ref = make()
    qs = [ref.predict_learn_one(x, y) for x, y in stream]
    assert len(calls) > 100  # the reference encoded the rows with new values
    assert ps == qs
    if not compiled.features.hashing:  # the compiled encoder's dict entries are found by Python's hash
        columns = compiled.features.columns
        assert all(columns[k] == i for i, k in enumerate(compiled.features.keys))
    a, b = compiled.state(), ref.state()
    assert a[1] == b[1] and a[0].keys() == b[0].keys()
    assert all(a[0][k].tobytes() == b[0][k].tobytes() for k in a[0])


def _with_holes(x: dict) -> dict:
    """The same entries in the same order, in a table with deleted entries between them (and after)."""
    row: dict = {}
    for i, (k, v) in enumerate(x.items()):  # str keys: a table of str keys stays one
        row[f"gone{i}"] = 0.0
        row[k] = v
        del row[f"gone{i}"]
    row["gone"] = 1.0
    del row["gone"]
    return row


class _Row:
    pass


def _split(x: dict) -> dict:
    """The same entries as an instance's dict (split keys, str keys only)."""
    o = _Row()
    for k, v in x.items():
        setattr(o, k, v)
    return o.__dict__


@pytest.mark.parametrize("space", [{}, {"n_bits": 18}], ids=["vocabulary", "hashed"])
@pytest.mark.parametrize("n_bits_optimizer", ["default", "sgd"])
def test_rows_read_inline_are_read_as_pydict_next_reads_them(space, n_bits_optimizer):
    """The row loops read a dict's table inline (_dictnext.h) once the import's self-check confirmed the
    layout: on this CPython it must have (else the inline path goes untested). Rows whose tables have
    deleted entries, other keys than str, or split keys, then learn bitwise as the same rows built plainly."""
    from stream_logreg import _kernel

    assert _kernel.DICT_NEXT_INLINE and _features.DICT_NEXT_INLINE
    rng = np.random.default_rng(3)

    def make() -> OnlineLogisticRegression:
        opt = {} if n_bits_optimizer == "default" else {"optimizer": optim.SGD(0.05)}
        return OnlineLogisticRegression(**space, **opt)

    plain, holes, split = make(), make(), make()
    for i in range(300):
        x = {f"c{j}": f"v{rng.integers(0, 30)}" for j in range(int(rng.integers(1, 6)))}
        x["num"] = float(rng.normal())
        y = bool(rng.random() < 0.4)
        p = plain.predict_learn_one(dict(x), y)
        assert holes.predict_learn_one(_with_holes(x), y) == p
        assert split.predict_learn_one(_split(x), y) == p
        if i % 7 == 0:
            z = {**x, 3: 1.5, ("pair", 1): "a"}
            q = plain.predict_learn_one(z, y)
            assert holes.predict_learn_one(_with_holes(z), y) == q
            split.predict_learn_one(z, y)
    assert np.array_equal(plain.coef, holes.coef) and np.array_equal(plain.coef, split.coef)
