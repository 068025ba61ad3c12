"""The optimizers, and the model's use of them, against independent oracles.

Each oracle is a few lines of plain Python or numpy written from the published rule (the seed's formula,
Duchi et al. 2011 for AdaGrad, McMahan et al. 2013 Algorithm 1 for FTRL-Proximal); none of them calls
into ``stream_logreg``. Fast and broker-free.
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pandas as pd
import pytest

from stream_logreg import OnlineLogisticRegression, optim


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def sparse_gradients(seed: int, n_coords: int, rounds: int, quiet: tuple[int, ...] = ()) -> list[dict]:
    """Rounds of {coordinate: gradient} touching a random subset; ``quiet`` coordinates get tiny ones."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(rounds):
        touched = [i for i in range(n_coords) if rng.random() < 0.5]
        out.append({i: float(rng.normal()) * (0.01 if i in quiet else 1.0) for i in touched})
    return out


def run_optimizer(opt: optim.Optimizer, rounds: list[dict], size: int) -> np.ndarray:
    opt.resize(size)
    w = np.zeros(size)
    for grads in rounds:
        cols = np.array(sorted(grads), dtype=np.intp)
        g = np.array([grads[i] for i in sorted(grads)])
        opt.step(w, cols, g, len(cols))
    return w


def bits(a) -> bytes:
    return np.asarray(a, dtype=np.float64).tobytes()


# FTRL-Proximal


class PaperFTRL:
    """McMahan et al. (2013), Algorithm 1: per-coordinate z and n, weights computed lazily from them."""

    def __init__(self, alpha: float, beta: float, l1: float, l2: float) -> None:
        self.alpha, self.beta, self.l1, self.l2 = alpha, beta, l1, l2
        self.z: dict = {}
        self.n: dict = {}

    def weight(self, i) -> float:
        z, n = self.z.get(i, 0.0), self.n.get(i, 0.0)
        if abs(z) <= self.l1:
            return 0.0
        return -(z - math.copysign(self.l1, z)) / ((self.beta + math.sqrt(n)) / self.alpha + self.l2)

    def update(self, grads: dict) -> None:
        """One round: every coordinate's σ uses the weight it had before the round."""
        weights = {i: self.weight(i) for i in grads}
        for i, g in grads.items():
            n = self.n.get(i, 0.0)
            sigma = (math.sqrt(n + g * g) - math.sqrt(n)) / self.alpha
            self.z[i] = self.z.get(i, 0.0) + g - sigma * weights[i]
            self.n[i] = n + g * g


def test_ftrl_two_steps_by_hand():
    opt = optim.FTRL(alpha=1.0, beta=1.0, l1=0.5, l2=0.0)
    w = run_optimizer(opt, [{0: 0.4, 1: -2.0}], 2)
    # n = (0.16, 4); σ = (0.4, 2) / α; z = g (w was 0); |z0| = 0.4 ≤ λ1 → 0; w1 = −(−2 + 0.5) / ((1 + 2) / 1)
    assert w[0] == 0.0
    assert w[1] == pytest.approx(0.5, rel=1e-15)
    opt.step(w, np.array([0, 1]), np.array([0.4, 1.0]), 2)
    # coordinate 0: n = 0.32, σ = √0.32 − 0.4, z = 0.4 + 0.4 − σ·0 = 0.8 > λ1
    assert w[0] == pytest.approx(-(0.8 - 0.5) / (1.0 + math.sqrt(0.32)), rel=1e-14)
    # coordinate 1: n = 5, σ = √5 − 2, z = −2 + 1 − σ·0.5
    z1 = -2.0 + 1.0 - (math.sqrt(5.0) - 2.0) * 0.5
    assert w[1] == pytest.approx(-(z1 + 0.5) / (1.0 + math.sqrt(5.0)), rel=1e-14)
    assert opt.n_iterations == 2


@pytest.mark.parametrize(
    ("alpha", "beta", "l1", "l2"),
    [(0.1, 1.0, 0.0, 0.0), (0.5, 1.0, 0.3, 0.0), (0.2, 0.1, 0.0, 2.0), (1.0, 0.5, 0.4, 1.5)],
)
def test_ftrl_matches_algorithm_1(alpha, beta, l1, l2):
    rounds = sparse_gradients(seed=3, n_coords=8, rounds=60, quiet=(5, 6, 7))
    opt = optim.FTRL(alpha=alpha, beta=beta, l1=l1, l2=l2)
    opt.resize(8)
    w = np.zeros(8)
    paper = PaperFTRL(alpha, beta, l1, l2)
    for grads in rounds:
        cols = np.array(sorted(grads), dtype=np.intp)
        opt.step(w, cols, np.array([grads[i] for i in cols]), len(cols))
        paper.update(grads)
        expected = [paper.weight(i) for i in range(8)]
        np.testing.assert_allclose(w, expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(opt.z[:8], [paper.z.get(i, 0.0) for i in range(8)], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(opt.n[:8], [paper.n.get(i, 0.0) for i in range(8)], rtol=1e-12)
    assert opt.n_iterations == len(rounds)
    # L1: exact zeros where |z| ≤ λ1, nonzero elsewhere; both kinds occur here when λ1 > 0
    sparse = [i for i in range(8) if abs(paper.z.get(i, 0.0)) <= l1]
    dense = [i for i in range(8) if i not in sparse]
    assert all(w[i] == 0.0 for i in sparse)
    assert all(w[i] != 0.0 for i in dense)
    if l1 > 0:
        assert sparse and dense


def stream_rows(seed: int, n: int) -> list[tuple[dict, bool]]:
    """Small mixed stream: numeric features (sometimes absent or 0) and a categorical one."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        x: dict = {}
        for name in ("a", "b", "c"):
            if rng.random() < 0.7:
                x[name] = float(np.round(rng.normal(), 3)) if rng.random() < 0.9 else 0.0
        x["color"] = str(rng.choice(["red", "green", "blue", "teal"]))
        z = 1.5 * x.get("a", 0.0) - x.get("b", 0.0) + (0.8 if x["color"] == "red" else -0.3)
        rows.append((x, bool(rng.random() < sigmoid(z))))
    return rows


def oracle_names(x: dict) -> dict:
    """Feature name → value, the model's naming: a string value v of key k is the indicator 'k=v'."""
    return {
        (f"{k}={v}" if isinstance(v, str) else k): (1.0 if isinstance(v, str) else v) for k, v in x.items()
    }


@pytest.mark.parametrize("model_l2", [0.0, 0.01])
def test_model_with_ftrl_matches_logistic_ftrl(model_l2):
    params = {"alpha": 0.3, "beta": 0.7, "l1": 0.05, "l2": 0.5}
    model = OnlineLogisticRegression(optimizer=optim.FTRL(**params), l2=model_l2)
    paper = PaperFTRL(**params)
    bias = object()  # the bias is one more coordinate, with its own z and n (intercept_lr=None)
    for x, y in stream_rows(seed=11, n=300):
        feats = oracle_names(x)
        p = sigmoid(sum(paper.weight(k) * v for k, v in feats.items()) + paper.weight(bias))
        assert model.predict_proba_one(x)[True] == pytest.approx(p, rel=1e-12)
        r = p - float(y)
        grads = {k: r * v + model_l2 * paper.weight(k) for k, v in feats.items()}
        grads[bias] = r
        paper.update(grads)
        model.learn_one(x, y)
    weights = {str(k): wk for k, wk in model.weights.items()}  # indicators by their name "k=v"
    assert set(weights) == {k for k in paper.z if k is not bias}
    for k, wk in weights.items():
        assert wk == pytest.approx(paper.weight(k), rel=1e-11, abs=1e-15)
    assert model.intercept == pytest.approx(paper.weight(bias), rel=1e-11)


# AdaGrad and SGD


@pytest.mark.parametrize(("lr", "eps"), [(0.1, 1e-8), (0.7, 0.0), (0.3, 0.5)])
def test_adagrad_accumulators_and_weights(lr, eps):
    k, rounds = 6, sparse_gradients(seed=5, n_coords=6, rounds=50)
    opt = optim.AdaGrad(lr=lr, eps=eps)
    w = run_optimizer(opt, rounds, k)
    g = np.array([[r.get(i, 0.0) for i in range(k)] for r in rounds])  # T × k, 0 where untouched
    G = np.cumsum(g**2, axis=0)  # G_t after round t's gradient
    np.testing.assert_allclose(opt.G[:k], (g**2).sum(axis=0), rtol=1e-14)
    touched = g != 0.0
    steps = np.where(touched, lr * g / (np.sqrt(np.where(touched, G, 1.0)) + eps), 0.0)
    np.testing.assert_allclose(w, -steps.sum(axis=0), rtol=1e-12, atol=1e-15)
    assert opt.n_iterations == len(rounds)


@pytest.mark.parametrize("eps", [0.0, 1e-8])
def test_adagrad_zero_gradient_changes_nothing(eps):
    """A feature of value 0 (or a sample of weight 0) has gradient 0: no NaN, even with ε = 0."""
    model = OnlineLogisticRegression(optimizer=optim.AdaGrad(lr=0.5, eps=eps))
    model.learn_one({"a": 0.0, "b": 1.0}, True)
    model.learn_one({"c": 2.0}, False, w=0.0)
    assert model.weights == {"a": 0.0, "b": pytest.approx(0.5), "c": 0.0}
    assert model.optimizer.G[:3].tolist() == [0.0, 0.25, 0.0]
    model.learn_one({"a": 1.0, "b": 1.0}, True)
    assert np.isfinite(model.coef).all()


@pytest.mark.parametrize("power_t", [0.0, 0.25, 0.5, 1.0])
def test_sgd_inverse_scaling_schedule(power_t):
    lr = 0.5
    opt = optim.SGD(lr=lr, power_t=power_t)
    opt.resize(2)
    w = np.zeros(2)
    expected = 0.0
    for t in range(12):
        eta = lr / (t + 1) ** power_t
        assert opt.learning_rate == pytest.approx(eta, rel=1e-15)
        g = math.cos(t)
        opt.step(w, np.array([1]), np.array([g]), 1)
        expected -= eta * g
        assert w[1] == pytest.approx(expected, rel=1e-13)
        assert w[0] == 0.0


def test_sgd_schedule_counts_updates_not_samples():
    """In the model, t counts updates: a mini-batch of m rows advances the schedule by one, as does a row."""
    lr, p = 0.8, 0.5
    model = OnlineLogisticRegression(optimizer=optim.SGD(lr, power_t=p))
    X = np.array([[1.0, -1.0], [0.5, 2.0], [-1.0, 0.3]])
    y = np.array([1.0, 0.0, 1.0])
    model.learn_batch(X, y)
    model.learn_one({0: 2.0, 1: -0.5}, True)
    w, b = np.zeros(2), 0.0
    r = 1.0 / (1.0 + np.exp(-(X @ w + b))) - y
    w, b = w - lr * (X.T @ r) / 3, b - lr * r.mean()
    eta = lr / 2**p  # t = 1
    x1 = np.array([2.0, -0.5])
    r1 = sigmoid(float(x1 @ w) + b) - 1.0
    w, b = w - eta * r1 * x1, b - eta * r1
    np.testing.assert_allclose(model.coef, w, rtol=1e-14)
    assert model.intercept == pytest.approx(b, rel=1e-14)


def seed_rows(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = np.round(rng.normal(size=(n, 3)), 3)
    y = (rng.random(n) < 1 / (1 + np.exp(-(X @ [1.0, -2.0, 0.5])))).astype(float)
    return X, y


def seed_sgd(X, y, eta, residual_scale):
    """The seed's per-sample rule with the residual h − y scaled: w ← w − η s (h − y) x, b likewise."""
    w, b = np.zeros(X.shape[1]), 0.0
    for x, t, s in zip(X, y, residual_scale, strict=True):
        r = s * (sigmoid(float(x @ w) + b) - t)
        w, b = w - eta * r * x, b - eta * r
    return w, b


@pytest.mark.parametrize("intercept_lr", [None, 0.3])
def test_explicit_sgd_is_the_seed_rule(intercept_lr):
    X, y = seed_rows(40)
    model = OnlineLogisticRegression(optimizer=optim.SGD(0.3), intercept_lr=intercept_lr)
    for x, t in zip(X, y, strict=True):
        model.learn_one(dict(enumerate(x)), bool(t))
    w, b = seed_sgd(X, y, 0.3, np.ones(len(y)))
    np.testing.assert_allclose(model.coef, w, rtol=1e-13)
    assert model.intercept == pytest.approx(b, rel=1e-13)


# Sample weights and class weights


def test_sample_weight_scales_the_residual():
    X, y = seed_rows(40, seed=1)
    k = np.array([0.0, 0.5, 1.0, 2.0, 3.5] * 8)
    model = OnlineLogisticRegression(optimizer=optim.SGD(0.2))
    for x, t, wk in zip(X, y, k, strict=True):
        model.learn_one(dict(enumerate(x)), bool(t), w=float(wk))
    w, b = seed_sgd(X, y, 0.2, k)
    np.testing.assert_allclose(model.coef, w, rtol=1e-13)
    assert model.intercept == pytest.approx(b, rel=1e-13)


def test_zero_sample_weight_leaves_sgd_weights_alone():
    model = OnlineLogisticRegression(optimizer=optim.SGD(0.2))
    model.learn_one({"a": 1.0}, True)
    before = (bits(model.coef), model.intercept)
    model.learn_one({"a": 3.0}, False, w=0.0)
    assert (bits(model.coef), model.intercept) == before


@pytest.mark.parametrize("class_weight", [{0: 0.25, 1: 4.0}, {False: 2.0, True: 1.0}, {1: 3.0}])
def test_class_weight_scales_the_residual_by_class(class_weight):
    X, y = seed_rows(50, seed=2)
    k = np.array([1.0, 2.0] * 25)
    model = OnlineLogisticRegression(optimizer=optim.SGD(0.2), class_weight=class_weight)
    for x, t, wk in zip(X, y, k, strict=True):
        model.learn_one(dict(enumerate(x)), bool(t), w=float(wk))
    per_class = np.where(y == 1.0, class_weight.get(1, 1.0), class_weight.get(0, 1.0))
    w, b = seed_sgd(X, y, 0.2, k * per_class)
    np.testing.assert_allclose(model.coef, w, rtol=1e-13)
    assert model.intercept == pytest.approx(b, rel=1e-13)


@pytest.mark.parametrize("class_weight", [None, {0: 0.5, 1: 3.0}])
def test_learn_many_with_a_weight_series(class_weight):
    X, y = seed_rows(30, seed=3)
    sw = np.linspace(0.0, 2.0, 30)
    eta = 0.4
    model = OnlineLogisticRegression(optimizer=optim.SGD(eta), class_weight=class_weight)
    w, b = np.zeros(3), 0.0
    cw = class_weight or {}
    for start in range(0, 30, 10):  # three mini-batches of 10
        sl = slice(start, start + 10)
        frame = pd.DataFrame(X[sl], columns=["a", "b", "c"])
        model.learn_many(frame, pd.Series(y[sl] == 1.0), w=pd.Series(sw[sl]))
        r = 1.0 / (1.0 + np.exp(-(X[sl] @ w + b))) - y[sl]
        r = r * sw[sl] * np.where(y[sl] == 1.0, cw.get(1, 1.0), cw.get(0, 1.0))
        w, b = w - eta * (X[sl].T @ r) / 10, b - eta * r.mean()
    np.testing.assert_allclose(model.coef, w, rtol=1e-13)
    assert model.intercept == pytest.approx(b, rel=1e-13)
    assert model.n_samples_seen == 30


# Checkpoint round trip: from_state(*state()) then continuing is bitwise the uninterrupted run


OPTIMIZERS = [
    optim.SGD(0.1),
    optim.SGD(0.5, power_t=0.5),
    optim.AdaGrad(),
    optim.AdaGrad(lr=0.3, eps=1e-6),
    optim.FTRL(),
    optim.FTRL(alpha=0.3, beta=0.5, l1=0.02, l2=0.1),
]
SETTINGS = [
    {},
    {"class_weight": {0: 0.5, 1: 3.0}},
    {"l2": 1e-3},
    {"intercept_lr": 0.05},
    {"n_bits": 6, "l2": 1e-4, "class_weight": {True: 2.0}},
]


def continue_stream(model: OnlineLogisticRegression, rows: list, start: int) -> None:
    """Learn rows[start:]: one by one with varied weights, then a dict mini-batch, then a frame."""
    part = rows[start:]
    for i, (x, y) in enumerate(part[:-20]):
        model.learn_one(x, y, w=1.0 + (i % 3) / 2)
    batch = part[-20:-10]
    model.learn_rows([x for x, _ in batch], [y for _, y in batch])
    frame = pd.DataFrame([{k: x.get(k, 0.0) for k in ("a", "b", "c")} for x, _ in part[-10:]])
    model.learn_many(frame, pd.Series([y for _, y in part[-10:]]), w=pd.Series(np.linspace(0.5, 1.5, 10)))


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: ",".join(s) or "defaults")
@pytest.mark.parametrize(
    "optimizer",
    OPTIMIZERS,
    ids=lambda o: f"{type(o).__name__}({','.join(f'{k}={v}' for k, v in o._get_params().items())})",
)
def test_state_round_trip_is_bitwise(optimizer, settings):
    rows = stream_rows(seed=21, n=200)
    rows[150:] = [({**x, "late": 1.0}, y) for x, y in rows[150:]]  # a feature first seen after the stop
    uninterrupted = OnlineLogisticRegression(optimizer=copy.deepcopy(optimizer), **settings)
    for x, y in rows[:100]:
        uninterrupted.learn_one(x, y)
    arrays, meta = uninterrupted.state()
    arrays = {k: np.array(v) for k, v in arrays.items()}
    meta = json.loads(json.dumps(meta))  # what a checkpoint stores: JSON, no pickle
    restored = OnlineLogisticRegression.from_state(arrays, meta)
    assert restored.config() == uninterrupted.config()
    continue_stream(uninterrupted, rows, 100)
    continue_stream(restored, rows, 100)
    assert bits(restored.coef) == bits(uninterrupted.coef)
    assert bits([restored.intercept]) == bits([uninterrupted.intercept])
    a1, m1 = restored.state()
    a2, m2 = uninterrupted.state()
    assert m1 == m2
    assert a1.keys() == a2.keys()
    assert all(bits(a1[k]) == bits(a2[k]) for k in a1)
    x = {"a": 0.3, "color": "teal", "late": 1.0}
    assert restored.predict_proba_one(x) == uninterrupted.predict_proba_one(x)


# Hyper-parameter validation


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: optim.SGD(lr=0), "SGD: lr must be > 0"),
        (lambda: optim.SGD(lr=-0.1), "SGD: lr must be > 0"),
        (lambda: optim.SGD(lr=float("nan")), "SGD: lr must be > 0 and finite, got nan"),
        (lambda: optim.SGD(lr=float("inf")), "SGD: lr must be > 0 and finite, got inf"),
        (lambda: optim.SGD(lr="0.1"), "SGD: lr must be > 0 and finite, got '0.1'"),
        (lambda: optim.SGD(lr=True), "SGD: lr must be > 0 and finite, got True"),
        (lambda: optim.SGD(power_t=-0.5), "SGD: power_t must be >= 0"),
        (lambda: optim.AdaGrad(lr=0.0), "AdaGrad: lr must be > 0"),
        (lambda: optim.AdaGrad(eps=-1e-8), "AdaGrad: eps must be >= 0"),
        (lambda: optim.FTRL(alpha=0.0), "FTRL: alpha must be > 0"),
        (lambda: optim.FTRL(beta=-1.0), "FTRL: beta must be >= 0"),
        (lambda: optim.FTRL(l1=-0.1), "FTRL: l1 must be >= 0"),
        (lambda: optim.FTRL(l2=float("inf")), "FTRL: l2 must be >= 0 and finite"),
        (lambda: optim.FTRL(l1=None), "FTRL: l1 must be >= 0 and finite, got None"),
        (lambda: OnlineLogisticRegression(l2=-1.0), "l2 must be >= 0"),
        (lambda: OnlineLogisticRegression(intercept_lr=-0.1), "intercept_lr must be None, a number >= 0"),
        (lambda: OnlineLogisticRegression(class_weight={2: 1.0}), "class_weight keys must be 0/1"),
        (lambda: OnlineLogisticRegression(class_weight={1: -2.0}), "class weights must be finite and >= 0"),
    ],
)
def test_invalid_hyper_parameters_are_refused_clearly(make, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make()


def test_valid_boundaries_and_numpy_scalars_are_accepted():
    optim.SGD(lr=np.float64(0.1), power_t=0)
    optim.AdaGrad(lr=1, eps=0)
    opt = optim.FTRL(alpha=np.float32(0.5), beta=0, l1=0, l2=0)
    assert opt.clone()._get_params() == opt._get_params()


def test_load_state_names_a_missing_array():
    opt = optim.FTRL()
    with pytest.raises(ValueError, match=r"FTRL state lacks the array\(s\) \['n'\]"):
        opt.load_state({"z": np.zeros(3)}, 0, 3)


@pytest.mark.parametrize("width", [0, 3, 11])
def test_grown_state_arrays_keep_their_values_and_what_others_hold(width):
    """``_kernel.grown`` (the models' and optimizers' state arrays as the vocabulary grows: doubling, from
    tables whose pages are moved rather than copied past 2 MiB): after each growth, the old values then
    zeros, as ``np.zeros`` plus assignment gives; an array or a view kept from before a growth (which then
    copies instead of moving) keeps its values."""
    from stream_logreg import _kernel

    class Owner:
        pass

    rng = np.random.default_rng(3)
    shape = (0,) if width == 0 else (0, width)
    owner, oracle, kept = Owner(), np.zeros(shape), []
    owner.a = np.zeros(shape)
    for rows in [1, 16, 40_000, 80_000, 90_000, 300_000, 700_000]:
        _kernel.grown(owner, "a", rows)
        grown = np.zeros((rows,) + oracle.shape[1:])
        grown[: len(oracle)] = oracle
        oracle = grown
        assert owner.a.shape == oracle.shape and owner.a.dtype == np.float64 and owner.a.flags.c_contiguous
        assert owner.a.tobytes() == oracle.tobytes()
        touched = rng.integers(0, rows, 50)
        owner.a[touched] = oracle[touched] = rng.normal(size=oracle[touched].shape)
        if rows in (80_000, 300_000):  # held from outside across the next growth: copied, still valid
            kept.append((owner.a, owner.a[touched], touched))
        if rows == 90_000:  # a view of it kept
            low = touched[touched < rows // 2]
            kept.append((owner.a[: rows // 2], owner.a[low], low))
        _kernel.grown(owner, "a", rows // 2)  # fewer rows: left as it is
        assert owner.a.shape[0] == rows
    for array, values, at in kept:
        assert array[at].tobytes() == values.tobytes()
    assert owner.a.tobytes() == oracle.tobytes()
