"""OnlineLogisticRegression as a drop-in for ``river.linear_model.LogisticRegression`` (issue 10).

The oracle is River itself: its LogisticRegression with the same optimizer type and settings, run on the
same stream, must give the same probabilities and weights to 1e-9.
"""

from __future__ import annotations

import copy
import itertools
import json

import numpy as np
import pandas as pd
import pytest
from river import datasets, linear_model
from river import optim as river_optim
from river.optim import initializers, schedulers

from stream_logreg import OnlineLogisticRegression, optim
from stream_logreg.features import IndicatorName

N = 400  # events of Phishing per comparison (enough for every optimizer's state to matter)

RIVER_OPTIMIZERS = {
    "SGD": lambda: river_optim.SGD(0.1),
    "SGD-InverseScaling": lambda: river_optim.SGD(schedulers.InverseScaling(0.5, power=0.6)),
    "SGD-Optimal": lambda: river_optim.SGD(schedulers.Optimal(river_optim.losses.Log(), alpha=1e-3)),
    "Adam": lambda: river_optim.Adam(0.05),
    "AdaGrad": lambda: river_optim.AdaGrad(0.1),
    "FTRLProximal": lambda: river_optim.FTRLProximal(alpha=0.1, beta=1.0, l1=0.01, l2=0.1),
    "RMSProp": lambda: river_optim.RMSProp(0.01),
    "Momentum": lambda: river_optim.Momentum(0.05),
    "AMSGrad": lambda: river_optim.AMSGrad(0.05),
    "AdaDelta": lambda: river_optim.AdaDelta(),
}


def compare(ours, river_model, n=N, sample_weight=None):
    """Progressive validation of both on Phishing: every probability and the final weights to 1e-9."""
    for i, (x, y) in enumerate(itertools.islice(datasets.Phishing(), n)):
        p_ours, p_river = ours.predict_proba_one(x)[True], river_model.predict_proba_one(x)[True]
        assert p_ours == pytest.approx(p_river, abs=1e-9, rel=1e-9), f"event {i}"
        w = 1.0 if sample_weight is None else sample_weight(i)
        ours.learn_one(x, y, w)
        river_model.learn_one(x, y, w)
    expected = river_model.weights
    assert set(ours.weights) == set(expected)
    for k, v in expected.items():
        assert ours.weights[k] == pytest.approx(v, abs=1e-9, rel=1e-9), k
    assert ours.intercept == pytest.approx(river_model.intercept, abs=1e-9, rel=1e-9)


@pytest.mark.parametrize("name", RIVER_OPTIMIZERS)
def test_rivers_optimizers_give_rivers_results(name):
    ours = OnlineLogisticRegression(optimizer=RIVER_OPTIMIZERS[name](), intercept_lr=0.01)
    compare(ours, linear_model.LogisticRegression(optimizer=RIVER_OPTIMIZERS[name]()))


@pytest.mark.parametrize("name", ["SGD", "SGD-InverseScaling"])
def test_rivers_sgd_runs_compiled_and_checkpoints(name):
    """River's SGD with a Constant or InverseScaling rate is our rule: compiled, and checkpointable."""
    ours = OnlineLogisticRegression(optimizer=RIVER_OPTIMIZERS[name](), intercept_lr=0.01)
    river_model = linear_model.LogisticRegression(optimizer=RIVER_OPTIMIZERS[name]())
    compare(ours, river_model, n=100)
    assert ours._step  # the compiled step did the work
    restored = OnlineLogisticRegression.from_state(*ours.state())
    for x, y in itertools.islice(datasets.Phishing(), 100, 200):
        assert restored.predict_proba_one(x)[True] == ours.predict_proba_one(x)[True]
        restored.learn_one(x, y)
        ours.learn_one(x, y)
    assert restored.state()[0]["w"].tobytes() == ours.state()[0]["w"].tobytes()


def test_other_river_optimizers_refuse_checkpoints_clearly():
    model = OnlineLogisticRegression(optimizer=river_optim.Adam())
    model.learn_one({"a": 1.0}, True)
    with pytest.raises(ValueError, match="Adam has no checkpoint format"):
        model.state()


@pytest.mark.parametrize(
    "intercept_lr",
    [0.05, 0.0, schedulers.Constant(0.05), schedulers.InverseScaling(0.3, power=0.5)],
    ids=["number", "zero", "Constant", "InverseScaling"],
)
def test_intercept_lr_as_number_or_river_scheduler(intercept_lr):
    ours = OnlineLogisticRegression(optimizer=optim.SGD(0.1), intercept_lr=copy.deepcopy(intercept_lr))
    compare(ours, linear_model.LogisticRegression(optimizer=river_optim.SGD(0.1), intercept_lr=intercept_lr))


@pytest.mark.parametrize("opt", ["ours", "river"])
def test_l2_vs_river(opt):
    make = (lambda: optim.SGD(0.1)) if opt == "ours" else (lambda: river_optim.SGD(0.1))
    ours = OnlineLogisticRegression(optimizer=make(), l2=0.01, intercept_lr=0.01)
    compare(ours, linear_model.LogisticRegression(optimizer=river_optim.SGD(0.1), l2=0.01))


def test_clip_gradient_vs_river():
    """Large sample weights make |g| exceed clip_gradient: both clip it the same way."""
    ours = OnlineLogisticRegression(optimizer=optim.SGD(0.01), intercept_lr=0.01, clip_gradient=0.2)
    river_model = linear_model.LogisticRegression(optimizer=river_optim.SGD(0.01), clip_gradient=0.2)
    compare(ours, river_model, sample_weight=lambda i: [0.1, 1.0, 5.0, 30.0][i % 4])


def test_clip_gradient_in_mini_batches_vs_river():
    frames = [pd.DataFrame([x for x, _ in chunk]).fillna(0.0) for chunk in _chunks(8)]
    labels = [pd.Series([y for _, y in chunk]) for chunk in _chunks(8)]
    ours = OnlineLogisticRegression(optimizer=optim.SGD(0.1), intercept_lr=0.01, clip_gradient=0.1)
    river_model = linear_model.LogisticRegression(optimizer=river_optim.SGD(0.1), clip_gradient=0.1)
    for X, y in zip(frames, labels, strict=True):
        np.testing.assert_allclose(ours.predict_proba_many(X)[True], river_model.predict_proba_many(X)[True],
                                   rtol=1e-9, atol=1e-9)
        ours.learn_many(X, y, w=3.0)
        river_model.learn_many(X, y, w=3.0)
    for k, v in river_model.weights.items():
        assert ours.weights[k] == pytest.approx(v, abs=1e-9)


def _chunks(m):
    it = iter(itertools.islice(datasets.Phishing(), 200))
    while chunk := list(itertools.islice(it, m)):
        yield chunk


def test_intercept_init_and_initializer_vs_river():
    ours = OnlineLogisticRegression(optimizer=optim.SGD(0.1), intercept_lr=0.01, intercept_init=0.3,
                                    initializer=initializers.Constant(0.05))
    river_model = linear_model.LogisticRegression(optimizer=river_optim.SGD(0.1), intercept_init=0.3,
                                                  initializer=initializers.Constant(0.05))
    compare(ours, river_model)


def test_random_initializer_is_refused_clearly():
    with pytest.raises(ValueError, match="initializer must be"):
        OnlineLogisticRegression(initializer=initializers.Normal(seed=1))


def test_mutate_as_river():
    model = OnlineLogisticRegression(optimizer=optim.SGD(0.1), intercept_lr=0.01)
    river_model = linear_model.LogisticRegression(optimizer=river_optim.SGD(0.1))
    compare(model, river_model, n=50)
    model.mutate({"l2": 0.5})
    river_model.mutate({"l2": 0.5})
    assert model.l2 == 0.5
    compare(model, river_model, n=50)
    with pytest.raises(ValueError):
        model.mutate({"n_bits": 3})  # not mutable, as in River
    with pytest.raises(ValueError, match="l2 must be >= 0"):
        model.mutate({"l2": -1.0})


@pytest.mark.parametrize("how", ["clone", "deepcopy"])
def test_clone_with_attributes_and_deepcopy(how):
    model = OnlineLogisticRegression()
    for x, y in itertools.islice(datasets.Phishing(), 100):
        model.learn_one(x, y)
    copied = model.clone(include_attributes=True) if how == "clone" else copy.deepcopy(model)
    for x, y in itertools.islice(datasets.Phishing(), 100, 150):
        assert copied.predict_proba_one(x) == model.predict_proba_one(x)
        copied.learn_one(x, y)
        model.learn_one(x, y)
    assert copied.state()[0]["w"].tobytes() == model.state()[0]["w"].tobytes()
    copied.learn_one({"new": 1.0}, True)
    assert "new" not in model.weights  # independent


def test_predict_one_is_a_python_bool():
    model = OnlineLogisticRegression()
    model.learn_one({"a": 1.0}, True)
    for x in ({"a": 1.0}, {"a": -1.0}, {}):
        assert type(model.predict_one(x)) is bool
        json.dumps(model.predict_one(x))


@pytest.mark.parametrize("x", [None, [1.0, 2.0], "a=1"])
def test_a_row_that_is_not_a_dict_raises_and_changes_nothing(x):
    model = OnlineLogisticRegression()
    model.learn_one({"a": 1.0}, True)
    before = model.state()
    with pytest.raises(ValueError, match="a row must be a dict"):
        model.learn_one(x, True)
    with pytest.raises(ValueError, match="a row must be a dict"):
        model.predict_proba_one(x)
    with pytest.raises(ValueError, match="row 1: a row must be a dict"):
        model.learn_rows([{"a": 1.0}, x], [True, False])
    assert model.state()[0]["b"].tobytes() == before[0]["b"].tobytes()
    assert model.state()[1] == before[1]


def test_unknown_optimizer_is_refused_clearly():
    with pytest.raises(ValueError, match="optimizer must be one of"):
        OnlineLogisticRegression(optimizer="sgd")
    with pytest.raises(ValueError, match="look_ahead"):
        OnlineLogisticRegression(optimizer=river_optim.NesterovMomentum())


def test_distinct_keys_stay_distinct():
    """1 and "1", a tuple key (River's bigrams) and the indicator of {"a": "FR"}, a feature literally named
    "a=FR": each has its own weight, and ``weights`` keeps River's keys."""
    model = OnlineLogisticRegression(optimizer=optim.SGD(0.5), intercept_lr=0.0)
    model.learn_one({1: 1.0}, True)
    model.learn_one({"1": 1.0}, False)
    model.learn_one({("a", "FR"): 1.0}, True)
    model.learn_one({"a": "FR"}, False)
    model.learn_one({"a=FR": 2.0}, True)
    w = model.weights
    assert model.n_features == 5 and len(w) == 5
    assert w[1] == 0.25 and w["1"] == -0.25 and w[("a", "FR")] == 0.25
    assert w[IndicatorName("a", "FR")] < 0 < w["a=FR"]
    assert ("a", "FR") in w and str(next(k for k in w if isinstance(k, IndicatorName))) == "a=FR"
    restored = OnlineLogisticRegression.from_state(*model.state())
    assert restored.weights == w
    assert copy.deepcopy(model).predict_proba_one({"a": "FR"}) == model.predict_proba_one({"a": "FR"})
    assert model.predict_proba_one({"a": "FR"}) != model.predict_proba_one({("a", "FR"): 1.0})


def _mixed_rows(n=60):
    rng = np.random.default_rng(3)
    rows = []
    for i in range(n):
        x = {"n": float(rng.normal()), "city": ["Paris", "Rome", "Oslo"][i % 3]}
        x["mixed"] = [1.5, "a", -2.0][i % 3]  # one column with numbers and strings
        rows.append(x)
    return rows, [bool(i % 2) for i in range(n)]


@pytest.mark.parametrize("n_bits", [None, 6])
def test_string_and_category_columns_in_frames(n_bits):
    """learn_many / predict_proba_many read string and category columns as learn_one reads them: the same
    model as learn_rows on the dict rows (the same batch formula), and the same probabilities as
    predict_proba_one."""
    rows, ys = _mixed_rows()
    frame = pd.DataFrame(rows)
    frame["city"] = frame["city"].astype("category")
    by_frame = OnlineLogisticRegression(optimizer=optim.SGD(0.5), n_bits=n_bits)
    by_rows = OnlineLogisticRegression(optimizer=optim.SGD(0.5), n_bits=n_bits)
    for start in range(0, len(rows), 10):
        X, y = frame.iloc[start:start + 10], pd.Series(ys[start:start + 10])
        expected = [by_rows.predict_proba_one(x)[True] for x in rows[start:start + 10]]
        np.testing.assert_allclose(by_frame.predict_proba_many(X)[True], expected, rtol=1e-12)
        by_frame.learn_many(X, y)
        by_rows.learn_rows(rows[start:start + 10], ys[start:start + 10])
    expected = by_rows.weights  # the columns may come in another order: compare feature by feature
    assert by_frame.weights.keys() == expected.keys()
    for k, v in by_frame.weights.items():
        assert v == pytest.approx(expected[k], rel=1e-12, abs=1e-15), k


@pytest.mark.parametrize("value", ["42", " -1.5e3 ", "nan", "inf"])
def test_numeric_looking_strings_raise(value):
    """A string that reads as a number is refused (as River refuses it), never silently a category."""
    model = OnlineLogisticRegression()
    with pytest.raises(ValueError, match="reads as a number"):
        model.learn_one({"age": value}, True)
    with pytest.raises(ValueError, match="reads as a number"):
        model.learn_many(pd.DataFrame({"age": [value, "x"]}), pd.Series([True, False]))
    assert model.n_features == 0 and model.n_samples_seen == 0
    model.learn_one({"age": "forty-two", "code": "id:42"}, True)  # categories that do not read as numbers
    assert model.n_features == 2


@pytest.mark.parametrize("opt", ["ours", "river", "river-InverseScaling"])
def test_l1_vs_river(opt):
    """River's cumulative L1 penalty: the same weights (many exactly 0) and probabilities."""
    make = {"ours": lambda: optim.SGD(0.1), "river": lambda: river_optim.SGD(0.1),
            "river-InverseScaling": lambda: river_optim.SGD(schedulers.InverseScaling(0.5))}[opt]
    ours = OnlineLogisticRegression(optimizer=make(), l1=0.05, intercept_lr=0.01)
    river_opt = river_optim.SGD(0.1) if opt != "river-InverseScaling" else make()
    river_model = linear_model.LogisticRegression(optimizer=river_opt, l1=0.05)
    compare(ours, river_model)
    assert any(v == 0.0 for v in ours.weights.values())
    restored = OnlineLogisticRegression.from_state(*ours.state())
    for x, y in itertools.islice(datasets.Phishing(), N, N + 50):
        restored.learn_one(x, y)
        ours.learn_one(x, y)
    assert restored.state()[0]["w"].tobytes() == ours.state()[0]["w"].tobytes()


def test_l1_needs_a_learning_rate():
    with pytest.raises(ValueError, match="FTRL has its own l1"):
        OnlineLogisticRegression(optimizer=optim.FTRL(), l1=0.1)
    with pytest.raises(ValueError, match="FTRLProximal has none"):
        OnlineLogisticRegression(optimizer=river_optim.FTRLProximal(), l1=0.1)
