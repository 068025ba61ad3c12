"""The feature space as seen by the model: growth, missing keys, strings, bools, hashing, cap, bad values."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
import warnings
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest

from stream_logreg import FeatureSpace, OnlineLogisticRegression, optim
from stream_logreg.features import HASH_CACHE_SIZE, IndicatorName


def sgd(lr=0.5, **kwargs):
    return OnlineLogisticRegression(optimizer=optim.SGD(lr), **kwargs)


def sigma(z):
    return 1.0 / (1.0 + math.exp(-z))


def assert_same_state(model, before):
    arrays, meta = model.state()
    arrays_before, meta_before = before
    assert arrays.keys() == arrays_before.keys()
    for k in arrays:
        assert arrays[k].tobytes() == arrays_before[k].tobytes(), k
    assert meta == meta_before


@pytest.fixture
def strict_warnings():
    """RuntimeWarnings (numpy's floating-point warnings) are errors: a refused row or batch must raise its
    ValueError, not a RuntimeWarning first. (Only those: a ResourceWarning of an earlier test's socket,
    collected by the garbage collector here, must not fail this test.)"""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        yield


# Growth and missing keys


def test_unseen_keys_grow_with_weight_zero():
    model = sgd()
    model.learn_one({"a": 1.0}, True)
    w_a, b = model.weights["a"], model.intercept
    x = {"a": 1.0, "b": 2.0}
    # a new feature has weight 0: the prediction is that of the row without it ...
    assert model.predict_proba_one(x) == model.predict_proba_one({"a": 1.0})
    assert "b" not in model.weights  # ... and predicting does not add it
    model.learn_one(x, False)
    h = sigma(w_a * 1.0 + b)
    # ... and its first update starts from 0: w_b = 0 − η(h − y)·x_b
    assert model.weights["b"] == pytest.approx(-0.5 * h * 2.0, rel=1e-15)
    assert model.weights["a"] == pytest.approx(w_a - 0.5 * h * 1.0, rel=1e-15)
    assert list(model.weights) == ["a", "b"] and model.n_features == 2


def test_missing_keys_count_as_zero():
    model = sgd()
    for x, y in [({"a": 1.0, "b": -2.0}, True), ({"a": -1.0, "b": 0.5}, False)]:
        model.learn_one(x, y)
    assert model.predict_proba_one({"a": 3.0}) == model.predict_proba_one({"a": 3.0, "b": 0.0})
    w_b = model.weights["b"]
    model.learn_one({"a": 3.0}, True)  # b absent: gradient x_b = 0, w_b unchanged
    assert model.weights["b"] == w_b
    twin = sgd()
    for x, y in [({"a": 1.0, "b": -2.0}, True), ({"a": -1.0, "b": 0.5}, False), ({"a": 3.0, "b": 0.0}, True)]:
        twin.learn_one(x, y)
    assert twin.weights == model.weights and twin.intercept == model.intercept


def test_string_values_are_indicators():
    model = sgd()
    model.learn_one({"city": "Paris", "n": 1.0}, True)
    model.learn_one({"city": "Rome", "n": 1.0}, False)
    paris, rome = IndicatorName("city", "Paris"), IndicatorName("city", "Rome")
    assert set(model.weights) == {paris, "n", rome}
    twin = sgd()  # features literally named "city=Paris" learn the same numbers, under their own keys
    twin.learn_one({"city=Paris": 1.0, "n": 1.0}, True)
    twin.learn_one({"city=Rome": 1.0, "n": 1.0}, False)
    assert list(twin.weights.values()) == list(model.weights.values()) and twin.intercept == model.intercept
    assert set(twin.weights) == {"city=Paris", "n", "city=Rome"}
    # an unseen value is an unseen indicator: weight 0
    assert model.predict_proba_one({"city": "Oslo", "n": 1.0}) == model.predict_proba_one({"n": 1.0})
    assert model.predict_proba_one({"city": "Paris"})[True] == pytest.approx(
        sigma(model.weights[paris] + model.intercept), rel=1e-15
    )


@pytest.mark.parametrize(
    "value, number",
    [(True, 1.0), (False, 0.0), (np.bool_(True), 1.0), (np.float64(2.5), 2.5), (np.int64(-3), -3.0),
     (np.float32(0.5), 0.5), (7, 7.0), (Fraction(1, 4), 0.25), (10**20, 1e20)],
    ids=["True", "False", "np.bool_", "np.float64", "np.int64", "np.float32", "int", "Fraction", "big-int"],
)
def test_bools_and_numbers_are_their_value(value, number):
    a, b = sgd(), sgd()
    for _ in range(3):  # the first time through the feature space, then through the compiled fast path
        a.learn_one({"k": value, "z": 1.0}, True)
        b.learn_one({"k": number, "z": 1.0}, True)
        assert a.predict_proba_one({"k": value}) == b.predict_proba_one({"k": number})
    assert a.weights == b.weights and a.intercept == b.intercept
    assert list(a.weights) == ["k", "z"]


def test_bool_frame_columns_are_zero_one():
    a, b = sgd(), sgd()
    a.learn_many(pd.DataFrame({"vip": [True, False, True]}), pd.Series([True, False, False]))
    b.learn_many(pd.DataFrame({"vip": [1.0, 0.0, 1.0]}), pd.Series([True, False, False]))
    assert a.weights == b.weights and a.intercept == b.intercept


# Hashing


def test_hash_columns_are_stable_blake2b():
    space = FeatureSpace(n_bits=10)
    for name in ["a", "city=Paris", "ünïcode", "x" * 100]:
        expected = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little") % 1024
        key = ("city", "Paris") if name == "city=Paris" else name
        if name == "city=Paris":
            cols, _ = space.encode({"city": "Paris"}, grow=True)
            assert cols == [expected]
        else:
            assert space.column(key, grow=True) == expected


def test_hash_collisions_are_merged():
    model = sgd(n_bits=1)  # two columns: most rows collide
    row = {f"f{i}": float(i) for i in range(6)}
    model.learn_one(row, True)
    cols = [model.features.hash_column(k) for k in row]
    x = np.zeros(2)
    for c, v in zip(cols, row.values(), strict=True):
        x[c] += v
    # one step from 0 on the merged row: w = −η(0.5 − 1)·x
    np.testing.assert_allclose(model.coef, 0.25 * x, rtol=1e-15)
    batch = sgd(n_bits=1)
    batch.learn_many(pd.DataFrame([row]), pd.Series([True]))
    np.testing.assert_allclose(batch.coef, model.coef, rtol=1e-15)


def test_hashing_bounds_memory_on_a_million_feature_names():
    n_bits, per_row, n_rows = 12, 50, 20_000  # 10^6 distinct names
    model = OnlineLogisticRegression(optimizer=optim.AdaGrad(0.1), n_bits=n_bits)
    rng = np.random.default_rng(0)
    values = rng.standard_normal((n_rows, per_row)).tolist()
    labels = (rng.random(n_rows) < 0.5).tolist()
    max_cache = 0
    start = time.perf_counter()
    for i in range(n_rows):
        model.learn_one({f"u{i * per_row + j}": values[i][j] for j in range(per_row)}, labels[i])
        if i % 500 == 0:
            max_cache = max(max_cache, len(model.features.columns))
            assert len(model._w) == 2**n_bits and model.coef.shape == (2**n_bits,)
    elapsed = time.perf_counter() - start
    max_cache = max(max_cache, len(model.features.columns))
    assert model.n_samples_seen == n_rows
    assert model.coef.shape == (2**n_bits,) and len(model._w) == 2**n_bits
    assert len(model.optimizer.G) == 2**n_bits  # the optimizer's state too
    assert model.features.keys == [] and model.n_features == 2**n_bits
    assert 0 < max_cache <= HASH_CACHE_SIZE
    assert np.count_nonzero(model.coef) > 0.99 * 2**n_bits  # the names did spread over the columns
    arrays, meta = model.state()
    assert arrays["w"].shape == (2**n_bits,) and meta["features"]["keys"] == []
    assert elapsed < 30  # it is a few seconds; the bound only catches a pathological slowdown


def test_hashing_is_consistent_after_the_cache_is_cleared(monkeypatch):
    monkeypatch.setattr("stream_logreg.features.HASH_CACHE_SIZE", 4)
    model = sgd(n_bits=8)
    rows = [{f"k{j}": 1.0 for j in range(i, i + 3)} for i in range(10)]
    for x in rows:
        model.learn_one(x, True)
    assert len(model.features.columns) <= 4
    twin = sgd(n_bits=8)
    monkeypatch.setattr("stream_logreg.features.HASH_CACHE_SIZE", 1 << 16)
    for x in rows:
        twin.learn_one(x, True)
    assert twin.coef.tobytes() == model.coef.tobytes()


# The vocabulary cap


def test_max_features_ignores_new_features_and_keeps_learning_known_ones():
    capped = sgd(max_features=3)
    plain = sgd()
    stream = [
        ({"a": 1.0, "b": 2.0}, True),
        ({"a": -1.0, "c": 0.5, "d": 3.0}, False),  # d is the 4th feature: ignored
        ({"b": 1.0, "e": 1.0, "f": "x"}, True),  # e and f=x ignored
        ({"a": 2.0, "d": -1.0}, False),
    ]
    for x, y in stream:
        capped.learn_one(x, y)
        plain.learn_one({k: v for k, v in x.items() if k in ("a", "b", "c")}, y)  # as if absent
    assert list(capped.weights) == ["a", "b", "c"]
    assert capped.weights == plain.weights and capped.intercept == plain.intercept
    assert capped.features.n_dropped == 4  # d, e, f=x, d
    assert capped.weights["a"] != sgd().weights.get("a", 0.0)
    assert capped.predict_proba_one({"a": 1.0, "zzz": 5.0}) == capped.predict_proba_one({"a": 1.0})

    frame = pd.DataFrame({"a": [1.0, -2.0], "new1": [3.0, 4.0], "b": [0.5, 0.5]})
    capped.learn_many(frame, pd.Series([True, False]))
    plain.learn_many(frame[["a", "b"]], pd.Series([True, False]))
    assert capped.weights == plain.weights and capped.intercept == plain.intercept
    assert capped.features.n_dropped == 5


def test_max_features_with_arrays():
    capped, plain = sgd(max_features=2), sgd()
    X = np.arange(12.0).reshape(3, 4) / 10
    for _ in range(3):
        capped.learn_batch(X, np.array([1.0, 0.0, 1.0]))
        plain.learn_batch(X[:, :2], np.array([1.0, 0.0, 1.0]))
    assert capped.coef.tobytes() == plain.coef.tobytes() and capped.intercept == plain.intercept
    assert capped.features.n_dropped == 6  # columns 2 and 3, on each of the three batches
    np.testing.assert_array_equal(capped.predict_proba_batch(X), plain.predict_proba_batch(X[:, :2]))


# Bad values: a ValueError naming the feature, and the model left bitwise as it was

SPACES, SPACE_IDS = [{}, {"n_bits": 6}, {"max_features": 3}], ["vocab", "hashing", "capped"]
BAD_VALUES = [float("nan"), float("inf"), -float("inf"), np.float64("nan"), None, [1.0], {"v": 1}, b"x",
              complex(1, 1), object(), 10**400]
BAD_IDS = ["nan", "inf", "-inf", "np-nan", "None", "list", "dict", "bytes", "complex", "object", "huge-int"]


def trained_model(**kwargs):
    model = OnlineLogisticRegression(optimizer=optim.AdaGrad(0.1), **kwargs)
    for i in range(20):
        model.learn_one({"known": float(i % 3), "city": ["Paris", "Rome"][i % 2], "other": 1.0}, i % 2 == 0)
    return model


@pytest.mark.parametrize("space", SPACES, ids=SPACE_IDS)
@pytest.mark.parametrize("feature", ["known", "brand_new"])
@pytest.mark.parametrize("value", BAD_VALUES, ids=BAD_IDS)
def test_bad_value_in_learn_one_raises_and_leaves_the_model_untouched(value, feature, space, strict_warnings):
    model = trained_model(**space)
    before = copy.deepcopy(model.state())
    named = f"feature {feature!r}"
    # The bad value comes after features that would be created (so a half-done row would show) ...
    row = {"new_a": 1.0, "city": "Oslo", "known": 1.0, feature: value, "new_z": 2.0}
    # ... or it is the only thing wrong with a row of known features (the compiled fast path).
    known_row = {"other": 1.0, "city": "Paris", feature: value}
    for x in (row, known_row):
        with pytest.raises(ValueError, match=named):
            model.learn_one(x, True)
        assert_same_state(model, before)
        with pytest.raises(ValueError, match=named):
            model.predict_proba_one(x)
        with pytest.raises(ValueError, match=named):
            model.predict_one(x)
        assert_same_state(model, before)
        with pytest.raises(ValueError, match=named):
            model.learn_rows([{"new_b": 1.0}, x], [True, False])
        assert_same_state(model, before)


def test_refused_update_leaves_the_model_untouched(strict_warnings):
    model = trained_model()
    before = copy.deepcopy(model.state())
    with pytest.raises(ValueError, match="not finite"):
        model.learn_one({"new": 1.0, "known": 1.0}, True, w=float("nan"))
    assert_same_state(model, before)


FRAME_BAD = {
    "nan": [1.0, float("nan")],
    "inf": [float("inf"), 1.0],
    "None-in-objects": ["a", None],
    "lists": [[1.0], [2.0]],
    "nullable-NA": pd.array([1, None], dtype="Int64"),
}


@pytest.mark.parametrize("space", SPACES, ids=SPACE_IDS)
@pytest.mark.parametrize("bad", FRAME_BAD)
@pytest.mark.parametrize("feature", ["known", "brand_new"])
def test_bad_column_in_learn_many_raises_and_leaves_the_model_untouched(feature, bad, space, strict_warnings):
    model = trained_model(**space)
    model.learn_many(pd.DataFrame({"known": [1.0, 2.0], "other": [0.0, 1.0]}), pd.Series([True, False]))
    before = copy.deepcopy(model.state())
    frame = pd.DataFrame({"new_a": [1.0, 2.0], "known": [1.0, 0.5], "new_z": [3.0, 4.0]})
    frame[feature] = FRAME_BAD[bad]
    with pytest.raises(ValueError, match=f"feature {feature!r}"):
        model.learn_many(frame, pd.Series([True, False]))
    assert_same_state(model, before)
    with pytest.raises(ValueError, match=f"feature {feature!r}"):
        model.predict_proba_many(frame)
    assert_same_state(model, before)


@pytest.mark.parametrize("space", SPACES, ids=SPACE_IDS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("column", [1, 4])  # a known array column, a new one
def test_bad_value_in_learn_batch_raises_and_leaves_the_model_untouched(column, bad, space, strict_warnings):
    model = sgd(**space)
    model.learn_batch(np.ones((4, 2)), np.array([1.0, 0.0, 1.0, 1.0]))
    before = copy.deepcopy(model.state())
    X = np.ones((4, 6))
    X[2, column] = bad
    with pytest.raises(ValueError, match=f"feature {column}"):
        model.learn_batch(X, np.array([1.0, 0.0, 0.0, 1.0]))
    assert_same_state(model, before)
    model.learn_batch(np.ones((4, 6)), np.ones(4))  # still learns afterwards (no stale column plans)
    assert model.n_samples_seen == 8
    assert model.n_features == {"n_bits": 64, "max_features": 3}.get(next(iter(space), None), 6)


def test_too_large_values_are_refused_without_a_trace(strict_warnings):
    model = sgd()
    model.learn_one({"a": 1.0}, True)
    before = copy.deepcopy(model.state())
    X = np.full((4, 3), 1e308)  # finite, but Xᵀr overflows (r ≈ σ(b) > 0.5 on each row)
    with pytest.raises(ValueError, match="not finite"):
        model.learn_batch(X, np.zeros(4))
    assert_same_state(model, before)
    with pytest.raises(ValueError, match="not finite"):
        model.learn_many(pd.DataFrame(X, columns=["a", "b", "c"]), pd.Series([False] * 4))
    assert_same_state(model, before)
    with pytest.raises(ValueError, match="not finite"):
        model.learn_one({"a": 1e308, "b": 1e308}, False, w=1e308)
    assert_same_state(model, before)


# The vocabulary's state: columnar, and every key comes back as itself (type included), in column order

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from stream_logreg.features import IndicatorKey  # noqa: E402


def typed(key):
    """A key with the type of every part spelled out (1, 1.0, True and "1" are all different)."""
    if isinstance(key, tuple):
        return type(key).__name__, tuple(typed(k) for k in key)
    return type(key).__name__, key


_ATOMS = st.one_of(st.text(max_size=6), st.integers(min_value=-(2**70), max_value=2**70), st.booleans(),
                   st.floats(allow_nan=False, allow_infinity=False))
_KEYS = st.one_of(
    st.text(max_size=6),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.builds(IndicatorKey, st.one_of(st.text(max_size=4), st.integers()), st.text(max_size=4)),
    st.recursive(st.tuples(_ATOMS, _ATOMS), lambda inner: st.tuples(_ATOMS, inner), max_leaves=4),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_KEYS, max_size=12))
def test_the_vocabulary_state_round_trips_every_key_exactly(keys):
    space = FeatureSpace()
    space.columns_of(keys, grow=True)  # equal keys (1, 1.0, True) share a column, as in a model
    state = json.loads(json.dumps(space.to_state()))  # JSON-able
    back = FeatureSpace.from_state(state)
    assert [typed(k) for k in back.keys] == [typed(k) for k in space.keys]
    assert back.columns == space.columns and back.to_state() == space.to_state()


def test_the_vocabulary_state_is_columnar():
    space = FeatureSpace()
    space.encode({"a": 1.0, "b": "FR", 7: 2.0, ("t", 1): 3.0, "é": "ü"}, grow=True)
    assert space.to_state()["keys"] == {
        "kinds": "sxiox", "text": "abFRéü", "lengths": [1, 1, 2, 1, 1], "ints": [7],
        "other": [{"k": {"tuple": ["t", 1]}}],
    }


def test_an_old_vocabulary_state_of_one_entry_per_key_still_loads():
    old = {"n_bits": None, "max_features": None, "n_dropped": 2,
           "keys": [{"k": "a"}, {"k": "b", "v": "FR"}, {"k": 1}, {"k": {"tuple": ["t", 1.5]}}]}
    space = FeatureSpace.from_state(old)
    assert [typed(k) for k in space.keys] == [typed(k) for k in ["a", IndicatorKey("b", "FR"), 1, ("t", 1.5)]]
    assert space.n_dropped == 2 and space.columns[("t", 1.5)] == 3


@pytest.mark.parametrize(("change", "reason"), [
    ({"kinds": "sq"}, "letter other than"),
    ({"kinds": "s"}, "do not have the lengths"),
    ({"lengths": [2]}, "do not add up"),
    ({"kinds": "xi", "lengths": [-1, 2]}, "do not add up"),  # the sum is right, a length is negative
    ({"ints": []}, "do not have the lengths"),
])
def test_a_vocabulary_state_whose_columns_disagree_is_refused(change, reason):
    space = FeatureSpace()
    space.encode({"a": 1.0, "bc": 2.0}, grow=True)
    state = space.to_state()
    state["keys"] = {**state["keys"], "kinds": "si", "ints": [5], "lengths": [1], "text": "a"}
    FeatureSpace.from_state(state)  # consistent: loads
    state["keys"].update(change)
    with pytest.raises(ValueError, match=reason):
        FeatureSpace.from_state(state)
