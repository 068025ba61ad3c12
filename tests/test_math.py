"""The seed's math (stream_logreg.math) against oracles written here, and its numerical stability.

Oracle 1 is the seed's formula in a few lines of numpy (it does not import stream_logreg.math); oracle 2 is
the finite-difference gradient of the mean log loss. The stability tests turn warnings into errors.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from stream_logreg.math import (
    gradients,
    log_loss,
    log_loss_scalar,
    sgd_update,
    sigmoid,
    sigmoid_scalar,
    softplus,
)

# Oracle 1: the seed's formulas, literally (fine for moderate z; the library must also be fine for any z).


def oracle_sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def oracle_loss(z, y):
    h = oracle_sigmoid(z)
    return -(y * np.log(h) + (1 - y) * np.log(1 - h))


def oracle_gradients(X, y, w, b, s=None):
    r = oracle_sigmoid(X @ w + b) - y
    if s is not None:
        r = s * r
    m = X.shape[0]
    return X.T @ r / m, r.sum() / m


def oracle_step(X, y, w, b, lr):
    gw, gb = oracle_gradients(X, y, w, b)
    return w - lr * gw, b - lr * gb


def random_problem(rng, m, n, scale=1.0):
    X = rng.standard_normal((m, n)) * scale
    y = (rng.random(m) < 0.5).astype(np.float64)
    w = rng.standard_normal(n)
    b = float(rng.standard_normal())
    return X, y, w, b


# Pure functions against oracle 1


def test_sigmoid_matches_formula():
    z = np.linspace(-30, 30, 1001)
    np.testing.assert_allclose(sigmoid(z), oracle_sigmoid(z), rtol=1e-14, atol=0)
    assert all(
        math.isclose(sigmoid_scalar(float(v)), float(o), rel_tol=1e-14, abs_tol=0)
        for v, o in zip(z, oracle_sigmoid(z), strict=True)
    )


def test_softplus_and_log_loss_match_formula():
    rng = np.random.default_rng(0)
    z = rng.uniform(-30, 30, 500)
    np.testing.assert_allclose(softplus(z), np.log1p(np.exp(z)), rtol=1e-13, atol=0)
    np.testing.assert_allclose(softplus(z), np.logaddexp(0.0, z), rtol=1e-14, atol=0)
    moderate = np.abs(z) < 8  # where the naive −[y log h + (1 − y) log(1 − h)] is itself accurate
    for label in (0.0, 1.0):
        y = np.full_like(z, label)
        loss = log_loss(z, y)
        np.testing.assert_allclose(loss[moderate], oracle_loss(z, y)[moderate], rtol=1e-11, atol=1e-15)
        np.testing.assert_allclose(loss, np.logaddexp(0.0, z) - y * z, rtol=1e-12, atol=1e-14)
        scalar = [log_loss_scalar(float(v), label) for v in z]
        np.testing.assert_allclose(scalar, loss, rtol=1e-15, atol=0)


@pytest.mark.parametrize("m", [1, 7, 32])
def test_gradients_match_formula(m):
    rng = np.random.default_rng(m)
    for _ in range(5):
        X, y, w, b = random_problem(rng, m, 6)
        gw, gb = gradients(X, y, w, b)
        ow, ob = oracle_gradients(X, y, w, b)
        np.testing.assert_allclose(gw, ow, rtol=0, atol=1e-12)
        assert gb == pytest.approx(ob, rel=0, abs=1e-12)
        s = rng.uniform(0.0, 3.0, m)
        gw, gb = gradients(X, y, w, b, sample_weight=s)
        ow, ob = oracle_gradients(X, y, w, b, s)
        np.testing.assert_allclose(gw, ow, rtol=0, atol=1e-12)
        assert gb == pytest.approx(ob, rel=0, abs=1e-12)


def test_sgd_update_matches_formula_and_leaves_inputs_alone():
    rng = np.random.default_rng(1)
    X, y, w, b = random_problem(rng, 32, 5)
    w_before = w.copy()
    gw, gb = gradients(X, y, w, b)
    new_w, new_b = sgd_update(w, b, gw, gb, lr=0.3)
    ow, ob = oracle_step(X, y, w, b, 0.3)
    np.testing.assert_allclose(new_w, ow, rtol=0, atol=1e-12)
    assert new_b == pytest.approx(ob, rel=0, abs=1e-12)
    assert np.array_equal(w, w_before)
    assert new_w is not w


@pytest.mark.parametrize("m", [1, 32])
def test_a_stream_of_updates_matches_the_oracle(m):
    rng = np.random.default_rng(2)
    X_all, y_all, _, _ = random_problem(rng, 40 * m, 8)
    w, b = np.zeros(8), 0.0
    ow, ob = np.zeros(8), 0.0
    for i in range(0, len(X_all), m):
        X, y = X_all[i : i + m], y_all[i : i + m]
        w, b = sgd_update(w, b, *gradients(X, y, w, b), lr=0.2)
        ow, ob = oracle_step(X, y, ow, ob, 0.2)
    np.testing.assert_allclose(w, ow, rtol=0, atol=1e-12)
    assert b == pytest.approx(ob, rel=0, abs=1e-12)


# Oracle 2: central finite differences of the mean log loss


def mean_loss(X, y, w, b, s=None):
    per_sample = log_loss(X @ w + b, y)
    if s is not None:
        per_sample = s * per_sample
    return float(per_sample.mean())


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "sample_weight"])
@pytest.mark.parametrize("seed", range(4))
def test_gradients_match_finite_differences(seed, weighted):
    rng = np.random.default_rng(100 + seed)
    m, n = int(rng.integers(1, 20)), 5
    X, y, w, b = random_problem(rng, m, n, scale=2.0)
    s = rng.uniform(0.1, 4.0, m) if weighted else None
    gw, gb = gradients(X, y, w, b, sample_weight=s)
    eps = 1e-6
    numeric = np.empty(n)
    for j in range(n):
        e = np.zeros(n)
        e[j] = eps
        numeric[j] = (mean_loss(X, y, w + e, b, s) - mean_loss(X, y, w - e, b, s)) / (2 * eps)
    numeric_b = (mean_loss(X, y, w, b + eps, s) - mean_loss(X, y, w, b - eps, s)) / (2 * eps)
    np.testing.assert_allclose(gw, numeric, rtol=1e-6, atol=1e-8)
    assert gb == pytest.approx(numeric_b, rel=1e-6, abs=1e-8)


# Stability: extreme logits, warnings are errors


@pytest.fixture
def strict_floats():
    """numpy warns on overflow, invalid values and division by zero (not underflow); warnings are errors."""
    with warnings.catch_warnings(), np.errstate(over="warn", invalid="warn", divide="warn", under="ignore"):
        warnings.simplefilter("error", RuntimeWarning)
        yield


EXTREME = [1e4, -1e4, 1e300, -1e300]


@pytest.mark.parametrize("z", EXTREME)
def test_sigmoid_and_loss_are_exact_for_extreme_logits(z, strict_floats):
    arr = np.array([z])
    p = 1.0 if z > 0 else 0.0
    assert sigmoid(arr).tolist() == [p]
    assert sigmoid_scalar(z) == p
    # The true loss is softplus(z) − y·z = max(z, 0) − y·z + log1p(e^-|z|): |z| if the label disagrees, else
    # e^-|z| (which is 0 in float64 at these magnitudes).
    for y in (0.0, 1.0):
        agrees = (z > 0) == (y == 1.0)
        expected = 0.0 if agrees else abs(z)
        assert log_loss(arr, np.array([y])).tolist() == [expected]
        assert log_loss_scalar(z, y) == expected
    assert softplus(arr).tolist() == [max(z, 0.0)]


@pytest.mark.parametrize("z", EXTREME)
def test_gradients_are_finite_for_extreme_logits(z, strict_floats):
    p = 1.0 if z > 0 else 0.0
    for y in (0.0, 1.0):
        # the logit through the weights (x = 1, w = z) ...
        gw, gb = gradients(np.array([[1.0]]), np.array([y]), np.array([z]), 0.0)
        assert gw.tolist() == [p - y] and gb == p - y
        # ... through the bias ...
        gw, gb = gradients(np.array([[1.0, -2.0]]), np.array([y]), np.zeros(2), z)
        assert gw.tolist() == [p - y, -2.0 * (p - y)] and gb == p - y
        # ... and through the features (x = z, w = 1): ∇w = (σ(z) − y)·z
        gw, gb = gradients(np.array([[z]]), np.array([y]), np.array([1.0]), 0.0)
        assert gw.tolist() == [(p - y) * z] and gb == p - y
    X = np.array([[1.0], [1.0], [1.0], [1.0]])
    gw, gb = gradients(X, np.array([1.0, 0.0, 1.0, 0.0]), np.array([z]), 0.0, sample_weight=np.full(4, 2.0))
    assert np.isfinite(gw).all() and math.isfinite(gb)


@pytest.mark.parametrize(
    "w, b, grad_w, grad_b, lr",
    [
        (np.array([1e308, 0.0]), 0.0, np.array([-1e308, 0.0]), 0.0, 10.0),  # w overflows
        (np.zeros(2), 1e308, np.zeros(2), -1e308, 10.0),  # b overflows
        (np.zeros(2), 0.0, np.array([np.nan, 0.0]), 0.0, 0.1),  # a NaN gradient
        (np.zeros(2), 0.0, np.zeros(2), np.inf, 0.1),  # an infinite bias gradient
    ],
    ids=["w-overflow", "b-overflow", "nan-gradient", "inf-bias-gradient"],
)
def test_sgd_update_refuses_non_finite_results(w, b, grad_w, grad_b, lr, strict_floats):
    w_before = w.copy()
    with pytest.raises(FloatingPointError, match="refused"):
        sgd_update(w, b, grad_w, grad_b, lr)
    assert np.array_equal(w, w_before)
