"""The model against oracles: the seed's formula in numpy (oracle 1), River's LogisticRegression (oracle 3).

Also: pickling and cloning, labels, the inspectable state, and the state()/from_state() round trip.
"""

from __future__ import annotations

import copy
import json
import pickle

import numpy as np
import pandas as pd
import pytest
from river import datasets, linear_model, preprocessing
from river import optim as river_optim

from stream_logreg import OnlineLogisticRegression, optim
from stream_logreg.features import IndicatorName

NAMES = [f"x{j}" for j in range(8)]


def oracle_sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def oracle_fit(X, y, lr, batch_size, s=None, class_weight=(1.0, 1.0)):
    """The seed's update on consecutive mini-batches: z = Xw+b, h = σ(z), ∇w = (1/m)Xᵀ(h−y), ∇b = mean(h−y).

    Returns the final (w, b) and the probability predicted for every row just before its batch was learned.
    """
    w, b = np.zeros(X.shape[1]), 0.0
    before = np.empty(len(X))
    for i in range(0, len(X), batch_size):
        Xb, yb = X[i : i + batch_size], y[i : i + batch_size]
        h = oracle_sigmoid(Xb @ w + b)
        before[i : i + batch_size] = h
        r = h - yb
        if s is not None:
            r = r * s[i : i + batch_size]
        r = r * np.where(yb == 1.0, class_weight[1], class_weight[0])
        m = len(yb)
        w = w - lr * (Xb.T @ r) / m
        b = b - lr * r.sum() / m
    return w, b, before


def make_stream(n_rows=600, seed=0, sparse=True):
    """Rows as dicts (a random ~30% of the features missing) and the same rows as a dense array."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_rows, len(NAMES))) * rng.uniform(0.5, 3.0, len(NAMES))
    if sparse:
        X[rng.random(X.shape) < 0.3] = 0.0
    y = (rng.random(n_rows) < oracle_sigmoid(X @ rng.standard_normal(len(NAMES)))).astype(np.float64)
    rows = [{k: float(v) for k, v in zip(NAMES, row, strict=True) if not (sparse and v == 0.0)} for row in X]
    return rows, X, y


def coef_by_name(model):
    return np.array([model.weights.get(k, 0.0) for k in NAMES])


# Oracle 1: the seed's formula


@pytest.mark.parametrize("lr", [0.5, 0.05])
def test_learn_one_matches_the_seed_formula(lr):
    rows, X, y = make_stream()
    model = OnlineLogisticRegression(optimizer=optim.SGD(lr))
    predicted = []
    for x, label in zip(rows, y, strict=True):
        predicted.append(model.predict_proba_one(x)[True])
        model.learn_one(x, bool(label))
    w, b, before = oracle_fit(X, y, lr, batch_size=1)
    np.testing.assert_allclose(coef_by_name(model), w, rtol=0, atol=1e-12)
    assert model.intercept == pytest.approx(b, rel=0, abs=1e-12)
    np.testing.assert_allclose(predicted, before, rtol=0, atol=1e-12)
    assert model.n_samples_seen == len(rows)


def batches_of(X, y, size):
    for i in range(0, len(X), size):
        yield X[i : i + size], y[i : i + size]


@pytest.mark.parametrize("path", ["learn_many", "learn_batch", "learn_rows"])
@pytest.mark.parametrize("lr", [0.5, 0.05])
def test_mini_batches_match_the_seed_formula(lr, path):
    rows, X, y = make_stream(n_rows=1000, sparse=path == "learn_rows")  # 31 batches of 32 and one of 8
    model = OnlineLogisticRegression(optimizer=optim.SGD(lr))
    predicted = []
    for i, (Xb, yb) in enumerate(batches_of(X, y, 32)):
        if path == "learn_many":
            frame = pd.DataFrame(Xb, columns=NAMES)
            predicted.extend(model.predict_proba_many(frame)[True])
            model.learn_many(frame, pd.Series(yb.astype(bool)))
        elif path == "learn_batch":
            predicted.extend(model.predict_proba_batch(Xb))
            model.learn_batch(Xb, yb)
        else:
            chunk = rows[32 * i : 32 * (i + 1)]
            predicted.extend(model.predict_proba_one(x)[True] for x in chunk)
            model.learn_rows(chunk, yb)
    w, b, before = oracle_fit(X, y, lr, batch_size=32)
    coef = model.coef if path == "learn_batch" else coef_by_name(model)  # array column j is feature j
    np.testing.assert_allclose(coef, w, rtol=0, atol=1e-12)
    assert model.intercept == pytest.approx(b, rel=0, abs=1e-12)
    np.testing.assert_allclose(predicted, before, rtol=0, atol=1e-12)
    assert model.n_samples_seen == len(X)


def test_sample_and_class_weights_match_the_weighted_formula():
    _, X, y = make_stream(n_rows=320, sparse=False)
    s = np.random.default_rng(5).uniform(0.0, 3.0, len(y))
    cw = (0.5, 4.0)
    w, b, _ = oracle_fit(X, y, 0.1, batch_size=32, s=s, class_weight=cw)
    many = OnlineLogisticRegression(optimizer=optim.SGD(0.1), class_weight={0: cw[0], 1: cw[1]})
    batch = OnlineLogisticRegression(optimizer=optim.SGD(0.1), class_weight={False: cw[0], True: cw[1]})
    for i, (Xb, yb) in enumerate(batches_of(X, y, 32)):
        many.learn_many(pd.DataFrame(Xb, columns=NAMES), pd.Series(yb), w=pd.Series(s[32 * i : 32 * (i + 1)]))
        batch.learn_batch(Xb, yb, sample_weight=s[32 * i : 32 * (i + 1)])
    np.testing.assert_allclose(coef_by_name(many), w, rtol=0, atol=1e-12)
    np.testing.assert_allclose(batch.coef, w, rtol=0, atol=1e-12)
    assert many.intercept == pytest.approx(b, abs=1e-12) and batch.intercept == pytest.approx(b, abs=1e-12)

    w1, b1, _ = oracle_fit(X, y, 0.1, batch_size=1, s=s, class_weight=cw)
    one = OnlineLogisticRegression(optimizer=optim.SGD(0.1), class_weight={0: cw[0], 1: cw[1]})
    for row, label, weight in zip(X, y, s, strict=True):
        one.learn_one(dict(zip(NAMES, row, strict=True)), label, w=weight)
    np.testing.assert_allclose(coef_by_name(one), w1, rtol=0, atol=1e-12)
    assert one.intercept == pytest.approx(b1, abs=1e-12)


# Oracle 3: River's LogisticRegression on the Phishing stream

PHISHING = list(datasets.Phishing())


def pair(lr, scaled):
    ours = OnlineLogisticRegression(optimizer=optim.SGD(lr))
    theirs = linear_model.LogisticRegression(optimizer=river_optim.SGD(lr), intercept_lr=lr)
    if scaled:
        return preprocessing.StandardScaler() | ours, preprocessing.StandardScaler() | theirs
    return ours, theirs


@pytest.mark.parametrize("scaled", [False, True], ids=["raw", "scaled"])
@pytest.mark.parametrize("lr", [0.1, 0.01, 0.5])
def test_learn_one_matches_river_on_phishing(lr, scaled):
    ours, theirs = pair(lr, scaled)
    p_ours, p_theirs = [], []
    for x, y in PHISHING:
        p_ours.append(ours.predict_proba_one(x)[True])
        p_theirs.append(theirs.predict_proba_one(x)[True])
        ours.learn_one(x, y)
        theirs.learn_one(x, y)
    np.testing.assert_allclose(p_ours, p_theirs, rtol=0, atol=1e-9)
    assert len(set(np.round(p_theirs, 3))) > 100  # the stream really moves the model


@pytest.mark.parametrize("batch_size", [32, 7])
@pytest.mark.parametrize("scaled", [False, True], ids=["raw", "scaled"])
@pytest.mark.parametrize("lr", [0.1, 0.01])
def test_learn_many_matches_river_on_phishing(lr, scaled, batch_size):
    ours, theirs = pair(lr, scaled)
    frame = pd.DataFrame([x for x, _ in PHISHING])
    labels = pd.Series([y for _, y in PHISHING])
    p_ours, p_theirs = [], []
    for i in range(0, len(frame), batch_size):
        X, y = frame.iloc[i : i + batch_size], labels.iloc[i : i + batch_size]
        p_ours.extend(ours.predict_proba_many(X)[True])
        p_theirs.extend(theirs.predict_proba_many(X)[True])
        ours.learn_many(X, y)
        theirs.learn_many(X, y)
    np.testing.assert_allclose(p_ours, p_theirs, rtol=0, atol=1e-9)
    assert len(set(np.round(p_theirs, 3))) > 50


# Pickle and clone


def trained(model, rows=PHISHING[:600]):
    for x, y in rows:
        model.learn_one(x, y)
    return model


@pytest.mark.parametrize(
    "make",
    [
        lambda: OnlineLogisticRegression(optimizer=optim.SGD(0.1)),
        lambda: OnlineLogisticRegression(),
        lambda: OnlineLogisticRegression(optimizer=optim.AdaGrad(), n_bits=5),
        lambda: preprocessing.StandardScaler() | OnlineLogisticRegression(optimizer=optim.FTRL(l1=0.01)),
    ],
    ids=["sgd", "default", "adagrad-hashing", "scaler-pipeline"],
)
def test_pickle_round_trip_of_a_trained_model(make):
    model = trained(make())
    restored = pickle.loads(pickle.dumps(model))
    for x, y in PHISHING[600:]:
        assert restored.predict_proba_one(x) == model.predict_proba_one(x)
        model.learn_one(x, y)
        restored.learn_one(x, y)
    frame = pd.DataFrame([x for x, _ in PHISHING[:100]])
    pd.testing.assert_frame_equal(restored.predict_proba_many(frame), model.predict_proba_many(frame))


def test_clone_is_fresh_and_learns_like_a_new_model():
    model = trained(OnlineLogisticRegression(optimizer=optim.SGD(0.1, power_t=0.25), l2=0.001))
    clone = model.clone()
    assert clone is not model and clone.optimizer is not model.optimizer
    assert clone._get_params() == model._get_params()
    assert clone.n_samples_seen == 0 and clone.weights == {} and clone.intercept == 0.0
    assert clone.optimizer.n_iterations == 0
    assert clone.predict_proba_one(PHISHING[0][0]) == {False: 0.5, True: 0.5}
    fresh = OnlineLogisticRegression(optimizer=optim.SGD(0.1, power_t=0.25), l2=0.001)
    trained(clone)
    trained(fresh)
    assert clone.weights == fresh.weights and clone.intercept == fresh.intercept
    assert clone.weights == model.weights and clone.intercept == model.intercept  # same stream, same model
    assert model.n_samples_seen == 600  # the original was not touched by cloning or by the clone learning


# Labels and inspectable state


def assert_same_state(a, b):
    arrays_a, meta_a = a.state()
    arrays_b, meta_b = b
    assert arrays_a.keys() == arrays_b.keys()
    for k in arrays_a:
        assert arrays_a[k].dtype == arrays_b[k].dtype and arrays_a[k].tobytes() == arrays_b[k].tobytes(), k
    assert meta_a == meta_b


@pytest.mark.parametrize("label", [2, -1, 0.5, "1", "True", None, float("nan"), [1]])
def test_bad_labels_raise_and_leave_the_model_alone(label):
    model = trained(OnlineLogisticRegression(optimizer=optim.SGD(0.1)), PHISHING[:20])
    before = copy.deepcopy(model.state())
    new_row = {**PHISHING[0][0], "brand_new": 1.0}
    with pytest.raises(ValueError, match="label"):
        model.learn_one(new_row, label)
    assert_same_state(model, before)
    if not isinstance(label, list):
        frame = pd.DataFrame([new_row, new_row])
        with pytest.raises(ValueError):
            model.learn_many(frame, pd.Series([1, label], dtype=object))
        assert_same_state(model, before)
        with pytest.raises(ValueError):
            model.learn_rows([new_row, new_row], [True, label])
        assert_same_state(model, before)
    if isinstance(label, (int, float)):
        with pytest.raises(ValueError, match="label"):
            model.learn_batch(np.ones((2, 12)), np.array([1.0, label]))
        assert_same_state(model, before)


@pytest.mark.parametrize("label, as_float", [(True, 1.0), (False, 0.0), (1, 1.0), (0, 0.0), (1.0, 1.0),
                                             (np.bool_(True), 1.0), (np.int64(0), 0.0)])
def test_accepted_labels_are_the_same_update(label, as_float):
    a = OnlineLogisticRegression(optimizer=optim.SGD(0.1))
    b = OnlineLogisticRegression(optimizer=optim.SGD(0.1))
    a.learn_one({"x": 2.0}, label)
    b.learn_one({"x": 2.0}, as_float == 1.0)
    assert a.weights == b.weights and a.intercept == b.intercept


def test_inspectable_state():
    model = OnlineLogisticRegression(optimizer=optim.SGD(0.5))
    assert model.weights == {} and model.intercept == 0.0 and model.n_samples_seen == 0
    model.learn_one({"age": 2.0, "city": "Paris", "vip": True}, True)
    # one step from zero: h = 0.5, so w = −η(h − y)x = 0.25·x and b = 0.25
    assert model.weights == {"age": 0.5, IndicatorName("city", "Paris"): 0.25, "vip": 0.25}
    assert model.intercept == 0.25 and model.n_samples_seen == 1
    model.learn_many(pd.DataFrame({"age": [1.0, 2.0, 3.0]}), pd.Series([False, True, False]))
    assert model.n_samples_seen == 4
    model.learn_batch(np.zeros((5, 2)), np.zeros(5))
    assert model.n_samples_seen == 9
    assert list(model.weights) == ["age", IndicatorName("city", "Paris"), "vip", 0, 1]  # the keys as given
    assert model.coef.tolist() == list(model.weights.values())
    with pytest.raises(ValueError):
        model.coef[0] = 1.0  # a read-only view


# state() / from_state(): learning the rest of the stream gives bitwise the same model


def phishing_with_strings():
    rng = np.random.default_rng(7)
    tlds = ["com", "org", "net", "io", "xyz"]
    return [({**x, "tld": tlds[int(rng.integers(5))], 3: float(rng.random())}, y) for x, y in PHISHING]


OPTIMIZERS = {
    "sgd": lambda: optim.SGD(0.1),
    "sgd-power_t": lambda: optim.SGD(0.5, power_t=0.5),
    "adagrad": lambda: optim.AdaGrad(0.1),
    "ftrl": lambda: optim.FTRL(alpha=0.2, beta=1.0, l1=0.01, l2=0.01),
}


@pytest.mark.parametrize("path", ["learn_one", "learn_many"])
@pytest.mark.parametrize(
    "space", [{}, {"n_bits": 5}, {"max_features": 12}], ids=["vocab", "hashing", "capped"]
)
@pytest.mark.parametrize("opt", OPTIMIZERS)
def test_state_round_trip_continues_bitwise(opt, space, path):
    extra = {"l2": 0.001, "intercept_lr": 0.05} if opt == "sgd" else {}
    model = OnlineLogisticRegression(optimizer=OPTIMIZERS[opt](), **space, **extra)
    stream = phishing_with_strings()
    first, rest = stream[:700], stream[700:]

    def learn(m, part):
        if path == "learn_one":
            for x, y in part:
                m.learn_one(x, y)
        else:
            frame = pd.DataFrame([{k: v for k, v in x.items() if k != "tld"} for x, _ in part])
            labels = pd.Series([y for _, y in part])
            for i in range(0, len(part), 32):
                m.learn_many(frame.iloc[i : i + 32], labels.iloc[i : i + 32])

    learn(model, first)
    arrays, meta = model.state()
    meta = json.loads(json.dumps(meta))  # the state is JSON + float arrays: no pickle
    arrays = {k: np.array(v, copy=True) for k, v in arrays.items()}
    restored = OnlineLogisticRegression.from_state(arrays, meta)
    assert restored.coef.tobytes() == model.coef.tobytes() and restored.intercept == model.intercept
    assert restored.n_samples_seen == model.n_samples_seen
    for x, _ in stream[:200]:  # predictions are a function of the state (not of caches)
        assert restored.predict_proba_one(x)[True].hex() == model.predict_proba_one(x)[True].hex()
    learn(model, rest)
    learn(restored, rest)
    assert restored.coef.tobytes() == model.coef.tobytes()
    assert restored.intercept == model.intercept
    assert restored.weights == model.weights
    assert restored.features.n_dropped == model.features.n_dropped
    assert_same_state(restored, model.state())
    x = stream[0][0]
    assert restored.predict_proba_one(x) == model.predict_proba_one(x)


@pytest.mark.parametrize("space", [{}, {"n_bits": 2}], ids=["vocab", "hashing-with-collisions"])
def test_predictions_depend_on_the_state_only(space):
    """A restored model (empty caches) predicts bitwise what the original (warm caches) predicts."""
    rng = np.random.default_rng(11)
    # large values: logits far from 0, where σ keeps the last bits of z (near 0.5 it would round them away)
    rows = [{f"f{j}": float(v) for j, v in enumerate(rng.standard_normal(10) * 40)} for _ in range(300)]
    model = OnlineLogisticRegression(optimizer=optim.AdaGrad(0.1), **space)
    for x in rows[:200]:
        model.learn_one(x, bool(rng.random() < 0.5))
    state = model.state()
    for x in rows:  # each time on a freshly restored model: its caches are empty
        fresh = OnlineLogisticRegression.from_state(*state)
        assert fresh.predict_proba_one(x)[True].hex() == model.predict_proba_one(x)[True].hex()
    restored = OnlineLogisticRegression.from_state(*state)
    for x in rows[200:]:
        model.learn_one(x, True)
        restored.learn_one(x, True)
    assert restored.coef.tobytes() == model.coef.tobytes() and restored.intercept == model.intercept


# predict_learn_one / predict_learn_rows: progressive validation in one pass, bitwise the two-step way

FUSED_OPTIMIZERS = {
    **OPTIMIZERS,
    "sgd-int-lr": lambda: optim.SGD(1, power_t=1),
    "adagrad-eps0": lambda: optim.AdaGrad(0.1, eps=0.0),
    "ftrl-default": lambda: optim.FTRL(),
}
MODEL_VARIANTS = {
    "vocab": {},
    "hashing": {"n_bits": 3},  # 8 columns: many collisions, merged per row
    "capped": {"max_features": 10},
    "l2-intercept_lr-class_weight": {"l2": 0.01, "intercept_lr": 0.05, "class_weight": {0: 1.0, 1: 3.0}},
}
LABELS = [0, 1, True, False, 0.0, 1.0, -0.0, np.bool_(True), np.int64(0), np.float32(1.0)]


def progressive_stream(n=600, seed=3, refused=True):
    """(x, y, w) rows: features that appear over time, strings, bools, ints and zeros, labels of every
    accepted type, sample weights (0 included), and (``refused``) a few rows whose update overflows."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        k = min(3 + i // 40, 14)
        x = {f"f{j}": float(rng.standard_normal() * 3) for j in range(k) if rng.random() < 0.8}
        x.update(city=["paris", "rome", "oslo"][i % 3], vip=bool(i % 2), n=int(rng.integers(-3, 4)), zero=0.0)
        x["mixed"] = [1.5, "a", True, -2, "b"][i % 5]  # one key, values of every kind
        w = float(rng.choice([1.0, 0.5, 2.0, 0.0]))
        if refused and i % 97 == 50:
            x["n"], w = 10**300, 1e300  # g·x overflows: the update is refused
        rows.append((x, LABELS[i % len(LABELS)], w))
    return rows


def general_path(model):
    """The model without its compiled step: encode, predict_gradient, optimizer.step (the reference)."""
    model._compile_step = lambda: False
    return model


@pytest.mark.parametrize("variant", MODEL_VARIANTS)
@pytest.mark.parametrize("opt", FUSED_OPTIMIZERS)
def test_predict_learn_one_is_bitwise_predict_then_learn(opt, variant):
    def make():
        return OnlineLogisticRegression(optimizer=FUSED_OPTIMIZERS[opt](), **MODEL_VARIANTS[variant])

    fused, reference = make(), general_path(make())
    refused = 0
    for x, y, w in progressive_stream():
        expected = reference.predict_proba_one(x)[True]
        try:
            reference.learn_one(x, y, w)
        except ValueError:
            refused += 1
            with pytest.raises(ValueError, match="not finite"):
                fused.predict_learn_one(x, y, w)
        else:
            p = fused.predict_learn_one(x, y, w)
            assert type(p) is float and p.hex() == expected.hex()
        assert_same_state(fused, reference.state())
    assert refused >= 2
    assert fused._step and not reference._step  # the compiled step did the work


@pytest.mark.parametrize("variant", MODEL_VARIANTS)
@pytest.mark.parametrize("opt", ["sgd-power_t", "adagrad", "ftrl-default"])
def test_learn_one_is_predict_learn_one(opt, variant):
    def make():
        return OnlineLogisticRegression(optimizer=FUSED_OPTIMIZERS[opt](), **MODEL_VARIANTS[variant])

    a, b = make(), make()
    for x, y, w in progressive_stream(refused=False):
        a.learn_one(x, y, w)
        b.predict_learn_one(x, y, w)
    assert_same_state(a, b.state())


@pytest.mark.parametrize("variant", MODEL_VARIANTS)
@pytest.mark.parametrize("opt", ["sgd-power_t", "adagrad-eps0", "ftrl"])
def test_predict_learn_rows_predicts_what_predict_proba_one_does(opt, variant):
    def make():
        return OnlineLogisticRegression(optimizer=FUSED_OPTIMIZERS[opt](), **MODEL_VARIANTS[variant])

    model, twin = make(), make()
    rows = progressive_stream(refused=False)
    for i in range(0, len(rows), 16):
        xs, ys, ws = (list(col) for col in zip(*rows[i : i + 16], strict=True))
        expected = [model.predict_proba_one(x)[True].hex() for x in xs]
        p = model.predict_learn_rows(xs, ys, ws)
        twin.learn_rows(xs, ys, ws)
        assert [v.hex() for v in p.tolist()] == expected
    assert_same_state(model, twin.state())
    assert model.n_samples_seen == len(rows)


def test_predict_learn_rows_refuses_a_batch_and_leaves_the_model_alone():
    model = OnlineLogisticRegression(optimizer=optim.SGD(0.1))
    model.learn_rows([{"a": 1.0}, {"b": 2.0}], [1, 0])
    before = copy.deepcopy(model.state())
    with pytest.raises(ValueError, match="not finite"):
        model.predict_learn_rows([{"a": 1.0, "new": 1e300}, {"b": 1.0}], [1, 0], [1e300, 1.0])
    with pytest.raises(ValueError, match="'bad'"):
        model.predict_learn_rows([{"a": 1.0, "new": 1.0}, {"bad": float("nan")}], [1, 0])
    with pytest.raises(ValueError, match="labels"):
        model.predict_learn_rows([{"a": 1.0, "new": 1.0}, {"b": 1.0}], [1, 2])
    assert_same_state(model, before)
    assert model.predict_learn_rows([], []).shape == (0,)


@pytest.mark.parametrize("copier", [lambda m: pickle.loads(pickle.dumps(m)), copy.deepcopy],
                         ids=["pickle", "deepcopy"])
def test_a_copy_learns_on_its_own_arrays(copier):
    """The compiled step is bound to its model's arrays: a copy binds its own, the original is left alone."""
    rows = progressive_stream(refused=False)
    model = OnlineLogisticRegression()
    for x, y, w in rows[:300]:
        model.predict_learn_one(x, y, w)
    assert model._step
    twin = copier(model)
    before = copy.deepcopy(model.state())
    for x, y, w in rows[300:]:
        twin.predict_learn_one(x, y, w)
    assert_same_state(model, before)
    for x, y, w in rows[300:]:
        model.predict_learn_one(x, y, w)
    assert_same_state(twin, model.state())


def test_the_row_layout_cache_forgets_keys_rolled_back():
    """A refused batch rolls back the columns it added; the model must not remember them by key."""
    k = "k"  # the same key object in every row, as orjson gives

    def stream(model, refused):
        model.learn_rows([{"a": 1.0}], [1])
        if refused:  # "k" gets column 1 and is cached by position; then the batch is refused
            with pytest.raises(ValueError, match="'bad'"):
                model.learn_rows([{k: 1.0}, {k: 2.0}, {"bad": float("nan")}], [1, 0, 1])
        model.learn_rows([{"j": 1.0}], [1])  # column 1 is now "j"'s
        for _ in range(3):
            model.predict_learn_one({k: 1.0}, 1)
            model.learn_rows([{k: 3.0}, {k: 1.0}], [0, 1])

    model, reference = OnlineLogisticRegression(optim.SGD(0.1)), OnlineLogisticRegression(optim.SGD(0.1))
    stream(model, refused=True)
    stream(reference, refused=False)
    assert_same_state(model, reference.state())
    assert model.features.names == ["a", "j", "k"]
