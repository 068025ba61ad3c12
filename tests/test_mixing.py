"""The group model's math (stream_logreg.mixing): identity, order independence, and the sequential oracle."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_logreg import OnlineLogisticRegression, optim
from stream_logreg.features import FeatureSpace
from stream_logreg.mixing import check_mixable, combine, difference, n_samples, to_model

OPTIMIZERS = {
    "sgd": lambda: optim.SGD(lr=0.1),
    "adagrad": lambda: optim.AdaGrad(lr=0.3),
    "ftrl": lambda: optim.FTRL(alpha=0.3, beta=1.0, l1=0.01, l2=0.01),
    "mixture": lambda: optim.Mixture(),
}

# Values of ordinary magnitudes: NAG rescales a weight by (s/x)² when a feature's scale s jumps, and a jump
# by many orders of magnitude (1e-27 → 1) leaves a difference of two huge numbers (see stream_logreg.mixing).
values = st.one_of(st.just(0.0), st.floats(1e-3, 3), st.floats(-3, -1e-3))
rows = st.lists(
    st.tuples(
        st.dictionaries(st.sampled_from("abcdefg"), values, min_size=1, max_size=4),
        st.booleans(),
    ),
    min_size=1, max_size=25,
)


def _learned(kind: str, events: list, **params) -> OnlineLogisticRegression:
    model = OnlineLogisticRegression(optimizer=OPTIMIZERS[kind](), **params)
    for x, y in events:
        model.learn_one(x, y)
    return model


def _close(a: OnlineLogisticRegression, b: OnlineLogisticRegression, tol: float = 1e-9) -> None:
    """Same names, weights and bias within ``tol`` (relative), same samples seen."""
    wa, wb = a.weights, b.weights
    assert set(wa) == set(wb)
    for name in wa:
        assert math.isclose(wa[name], wb[name], rel_tol=tol, abs_tol=tol), name
    assert math.isclose(a.intercept, b.intercept, rel_tol=tol, abs_tol=tol)
    assert a.n_samples_seen == b.n_samples_seen


@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
@given(events=rows)
@settings(max_examples=25, deadline=None)
def test_one_contribution_is_itself_bitwise(kind, events):
    state = _learned(kind, events).state()
    assert combine([state]) is state
    assert difference(state, None) is state
    model = to_model(combine([state]))
    again = to_model(state)
    assert model.coef.tobytes() == again.coef.tobytes() and model.intercept == again.intercept


@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
@given(events=rows, cut=st.integers(0, 25), cut2=st.integers(0, 25))
@settings(max_examples=25, deadline=None)
def test_the_sum_does_not_depend_on_the_order(kind, events, cut, cut2):
    lo, hi = sorted((min(cut, len(events)), min(cut2, len(events))))
    parts = [_learned(kind, events[:lo]), _learned(kind, events[lo:hi]), _learned(kind, events[hi:])]
    states = [p.state() for p in parts]
    forward, backward = to_model(combine(states)), to_model(combine(states[::-1]))
    _close(forward, backward, 1e-12)
    assert forward.n_samples_seen == len(events)


@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
@given(events=rows, members=st.integers(1, 4), owner=st.randoms(use_true_random=False))
@settings(max_examples=30, deadline=None)
def test_one_sync_per_event_is_the_sequential_model(kind, events, members, owner):
    """The oracle: members learn disjoint events, each from the group model of all events before it (a
    synchronisation per event); the sum of their contributions is the model learned sequentially."""
    sequential = _learned(kind, events)
    base = OnlineLogisticRegression(optimizer=OPTIMIZERS[kind]())
    contributions: list = [None] * members
    for x, y in events:
        k = owner.randrange(members)
        others = [c for j, c in enumerate(contributions) if j != k and c is not None]
        o_state = combine(others) if others else None
        own = contributions[k]
        if own is None and o_state is None:
            working = base.clone()
        elif own is None:
            working = to_model(o_state)
        else:
            working = to_model(own if o_state is None else combine([own, o_state]))
        working.learn_one(x, y)
        contributions[k] = difference(working.state(), o_state)
    group = to_model(combine([c for c in contributions if c is not None]))
    _close(group, sequential, 1e-9)
    probe = {"a": 1.0, "b": -2.0, "g": 0.5}
    assert math.isclose(group.predict_proba_one(probe)[True], sequential.predict_proba_one(probe)[True],
                        rel_tol=1e-9)


@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
@given(events=rows, cut=st.integers(0, 25))
@settings(max_examples=25, deadline=None)
def test_difference_then_sum_gives_the_working_model_back(kind, events, cut):
    cut = min(cut, len(events))
    others = _learned(kind, events[:cut]).state()
    working = to_model(others)
    for x, y in events[cut:]:
        working.learn_one(x, y)
    own = difference(working.state(), others)
    assert n_samples(own) == len(events) - cut
    _close(to_model(combine([own, others])), working, 1e-9)


def test_hashed_columns_align_by_index_and_need_the_same_bits():
    a = OnlineLogisticRegression(optimizer=optim.SGD(lr=0.1), n_bits=4)
    b = OnlineLogisticRegression(optimizer=optim.SGD(lr=0.1), n_bits=4)
    a.learn_one({"x": 1.0}, True)
    b.learn_one({"x": 1.0}, True)
    arrays, meta = combine([a.state(), b.state()])
    np.testing.assert_array_equal(arrays["w"], a.state()[0]["w"] * 2)
    c = OnlineLogisticRegression(optimizer=optim.SGD(lr=0.1), n_bits=5)
    with pytest.raises(ValueError, match="hyper-parameters"):
        combine([a.state(), c.state()])


def test_the_vocabulary_cap_drops_and_counts_names():
    a = OnlineLogisticRegression(optimizer=optim.SGD(lr=0.1), max_features=2)
    b = OnlineLogisticRegression(optimizer=optim.SGD(lr=0.1), max_features=2)
    a.learn_one({"x": 1.0, "y": 1.0}, True)
    b.learn_one({"z": 1.0, "x": 1.0}, False)
    group = to_model(combine([a.state(), b.state()]))
    assert sorted(group.weights) == ["x", "y"]
    assert group.features.n_dropped == 1
    assert math.isclose(group.weights["x"], a.weights["x"] + b.weights["x"])


def test_what_has_no_sound_combine_is_refused():
    from river import optim as river_optim

    for model, why in [
        (OnlineLogisticRegression(optimizer=river_optim.Adam()), "Adam"),
        (OnlineLogisticRegression(optimizer=optim.FTRL(l1=1.0)), "FTRL on its own"),
        (OnlineLogisticRegression(optimizer=optim.SGD(lr=0.1), l1=0.1), "l1"),
        (OnlineLogisticRegression(optimizer=optim.SGD(lr=0.1), intercept_init=0.5), "starting at 0"),
    ]:
        with pytest.raises(ValueError, match=why):
            check_mixable(model)
    check_mixable(OnlineLogisticRegression(scale=True))


def _rows(seed: int, n: int) -> list[dict]:
    rng = random.Random(seed)
    features = (("a", 5.0, 2.0), ("b", -300.0, 40.0))
    return [{k: rng.gauss(mu, sd) for k, mu, sd in features if rng.random() < 0.8} for _ in range(n)]


def test_standardization_statistics_merge_as_one_scaler_over_every_members_values():
    """scale=True: the group's count, mean and variance per feature are those of one StandardScaler that
    saw every member's values (River's), and a member's difference gives its own values' back."""
    from river.preprocessing import StandardScaler

    base = OnlineLogisticRegression(optimizer=optim.SGD(lr=0.01), scale=True)
    a, b = base.clone(), base.clone()
    rows_a, rows_b = _rows(1, 300), _rows(2, 200)
    for x in rows_a:
        a.learn_one(x, True)
    for x in rows_b:
        b.learn_one(x, False)
    group = to_model(combine([a.state(), b.state()]))
    scaler = StandardScaler()
    for x in rows_a + rows_b:
        scaler.learn_one(x)
    arrays, meta = group.state()
    keys = FeatureSpace.from_state(meta["features"]).keys
    for i, key in enumerate(keys):
        assert arrays["scale.count"][i] == scaler.counts[key]
        assert math.isclose(arrays["scale.mean"][i], scaler.means[key], rel_tol=1e-12)
        assert math.isclose(arrays["scale.var"][i], scaler.vars[key], rel_tol=1e-9)
    own = difference(combine([a.state(), b.state()]), b.state())[0]
    mine = a.state()[0]
    assert np.array_equal(own["scale.count"], mine["scale.count"])
    np.testing.assert_allclose(own["scale.mean"], mine["scale.mean"], rtol=1e-9)
    np.testing.assert_allclose(own["scale.var"], mine["scale.var"], rtol=1e-7)


def test_different_hyper_parameters_are_refused():
    a = OnlineLogisticRegression(optimizer=optim.SGD(lr=0.1)).state()
    b = OnlineLogisticRegression(optimizer=optim.SGD(lr=0.2)).state()
    with pytest.raises(ValueError, match="hyper-parameters"):
        difference(a, b)
