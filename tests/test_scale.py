"""Built-in standardization on the mini-batch paths (``scale=True``; issue 10).

A mini-batch is River's ``StandardScaler.learn_many`` then ``transform_many``: the statistics learn the
whole batch, then every row of the batch is standardized with them and learned; a prediction uses the
statistics so far. The oracles: River's ``StandardScaler() | LogisticRegression()`` pipeline on frames,
River's scaler fed each feature's present values on sparse rows, and our own model behind River's scaler.
"""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest
from river import datasets, linear_model, preprocessing
from river import optim as river_optim

from stream_logreg import OnlineLogisticRegression, optim

PHISHING = list(datasets.Phishing())


def batches(rows: list, size: int):
    for i in range(0, len(rows), size):
        yield rows[i : i + size]


def arrays_of(model: OnlineLogisticRegression) -> dict[str, bytes]:
    return {k: v.tobytes() for k, v in model.state()[0].items()}


@pytest.mark.parametrize("batch_size", [1, 7, 32])
@pytest.mark.parametrize("lr", [0.1, 0.01])
def test_learn_many_equals_river_scaler_pipeline(lr, batch_size):
    """The oracle: River's StandardScaler() | LogisticRegression(SGD) on the same frames, to 1e-9."""
    ours = OnlineLogisticRegression(optimizer=optim.SGD(lr), scale=True)
    river = preprocessing.StandardScaler() | linear_model.LogisticRegression(
        optimizer=river_optim.SGD(lr), intercept_lr=lr
    )
    p_ours, p_river = [], []
    for rows in batches(PHISHING, batch_size):
        X, y = pd.DataFrame([x for x, _ in rows]), pd.Series([y for _, y in rows])
        p_ours.extend(ours.predict_proba_many(X)[True])
        p_river.extend(river.predict_proba_many(X)[True])
        ours.learn_many(X, y)
        river.learn_many(X, y)
    np.testing.assert_allclose(p_ours, p_river, rtol=0, atol=1e-9)
    assert len(set(np.round(p_river, 3))) > 100  # the stream really moves the model
    scaler = river["StandardScaler"]
    arrays = ours.state()[0]
    names = list(ours.weights)
    np.testing.assert_allclose(arrays["scale.mean"], [scaler.means[k] for k in names], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(arrays["scale.var"], [scaler.vars[k] for k in names], rtol=1e-9, atol=1e-12)
    assert arrays["scale.count"].tolist() == [scaler.counts[k] for k in names]
    river_w = river["LogisticRegression"].weights
    np.testing.assert_allclose([ours.weights[k] for k in names], [river_w[k] for k in names], atol=1e-9)


def test_learn_batch_and_learn_many_are_the_same_update():
    """Array column j is the feature with key j: the two dense paths are one computation (bitwise)."""
    X = np.array([list(x.values()) for x, _ in PHISHING])
    y = np.array([float(v) for _, v in PHISHING])
    a = OnlineLogisticRegression(optimizer=optim.SGD(0.1), scale=True)
    b = OnlineLogisticRegression(optimizer=optim.SGD(0.1), scale=True)
    for i in range(0, len(X), 50):
        pa = a.predict_proba_batch(X[i : i + 50])
        pb = b.predict_proba_many(pd.DataFrame(X[i : i + 50]))[True].to_numpy()
        assert pa.tobytes() == pb.tobytes()
        a.learn_batch(X[i : i + 50], y[i : i + 50])
        b.learn_many(pd.DataFrame(X[i : i + 50]), pd.Series(y[i : i + 50]))
    assert arrays_of(a) == arrays_of(b)


@pytest.mark.parametrize("make", [lambda: optim.SGD(0.1), lambda: optim.Mixture()], ids=["sgd", "mixture"])
def test_learn_rows_equals_learn_many_on_complete_rows(make):
    """Dict rows that all have every feature are the frame of these rows: the same statistics and
    update (summed in another order, so to 1e-12); predict_learn_rows returns what predict_proba_many
    gave before the update."""
    a = OnlineLogisticRegression(optimizer=make(), scale=True)
    b = OnlineLogisticRegression(optimizer=make(), scale=True)
    for rows in batches(PHISHING, 25):
        xs, ys = [x for x, _ in rows], [y for _, y in rows]
        before = b.predict_proba_many(pd.DataFrame(xs))[True].to_numpy()
        p = a.predict_learn_rows(xs, ys)
        np.testing.assert_allclose(p, before, rtol=0, atol=1e-12)
        b.learn_many(pd.DataFrame(xs), pd.Series(ys))
    sa, sb = a.state()[0], b.state()[0]
    assert sa.keys() == sb.keys()
    for k in sa:
        np.testing.assert_allclose(sa[k], sb[k], rtol=1e-10, atol=1e-12, err_msg=k)


def sparse_rows(n: int, seed: int) -> list[tuple[dict, bool]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        x = {"a": rng.gauss(5, 3), "city": rng.choice(["Paris", "Lyon", "Nice"])}
        if i % 3:  # features that come and go
            x["b"] = rng.gauss(-1e3, 1e2)
        if i % 5 == 0:
            x["c"] = 2.0  # constant: variance 0, standardized to 0
        if i % 11 == 0:
            x["d"] = rng.uniform(0, 1e4)
        rows.append((x, rng.random() < 1 / (1 + np.exp(-(x["a"] - 5) / 3))))
    return rows


def standardized_frame(xs: list[dict], scalers: dict, learn: bool) -> pd.DataFrame:
    """The oracle's batch: each numeric feature's present values through its own River scaler
    (``learn_many`` with them first if ``learn``), absent ones 0; strings one-hot, unscaled."""
    numeric = sorted({k for x in xs for k, v in x.items() if not isinstance(v, str)})
    columns = {}
    for k in numeric:
        scaler = scalers.setdefault(k, preprocessing.StandardScaler())
        if learn:
            scaler.learn_many(pd.DataFrame({k: [x[k] for x in xs if k in x]}))
        mean, var = scaler.means[k], scaler.vars[k]
        columns[k] = [(x[k] - mean) / var**0.5 if k in x and var > 0 else 0.0 for x in xs]
    for i, x in enumerate(xs):
        columns.setdefault(f"city={x['city']}", [0.0] * len(xs))[i] = 1.0
    return pd.DataFrame(columns)


def test_learn_rows_with_absent_features_equals_river_per_feature():
    """Sparse rows: a feature's statistics learn the rows that have it (River's scaler fed each feature's
    present values), absent features stay absent, indicators are not scaled; then the batch update is
    River's LogisticRegression.learn_many on the standardized frame (absent = 0)."""
    lr = 0.1
    ours = OnlineLogisticRegression(optimizer=optim.SGD(lr), scale=True)
    river = linear_model.LogisticRegression(optimizer=river_optim.SGD(lr), intercept_lr=lr)
    scalers: dict[str, preprocessing.StandardScaler] = {}
    p_ours, p_river = [], []
    for rows in batches(sparse_rows(900, 3), 16):
        xs, ys = [x for x, _ in rows], [y for _, y in rows]
        p_ours.extend(ours.predict_learn_rows(xs, ys))
        p_river.extend(river.predict_proba_many(standardized_frame(xs, scalers, learn=False))[True])
        river.learn_many(standardized_frame(xs, scalers, learn=True), pd.Series(ys))
    np.testing.assert_allclose(p_ours, p_river, rtol=0, atol=1e-9)
    arrays = ours.state()[0]
    keys = [str(k) for k in ours.weights]
    for k, scaler in scalers.items():
        j = keys.index(k)
        assert arrays["scale.count"][j] == scaler.counts[k]
        assert arrays["scale.mean"][j] == pytest.approx(scaler.means[k], rel=1e-12, abs=1e-12)
        assert arrays["scale.var"][j] == pytest.approx(scaler.vars[k], rel=1e-9, abs=1e-12)
    assert arrays["scale.var"][keys.index("c")] == 0.0  # a constant column, however it is summed
    for k in keys:
        if k.startswith("city="):
            assert arrays["scale.count"][keys.index(k)] == 0.0  # indicators are not scaled


def test_mixture_with_scale_equals_mixture_behind_river_scaler():
    """The default optimizer: scale=True on raw frames is scale=False behind River's scaler."""
    ours = OnlineLogisticRegression(scale=True)
    pipeline = preprocessing.StandardScaler() | OnlineLogisticRegression()
    for rows in batches(PHISHING, 20):
        X, y = pd.DataFrame([x for x, _ in rows]), pd.Series([y for _, y in rows])
        np.testing.assert_allclose(
            ours.predict_proba_many(X)[True], pipeline.predict_proba_many(X)[True], rtol=0, atol=1e-9
        )
        ours.learn_many(X, y)
        pipeline.learn_many(X, y)
    inner = pipeline["OnlineLogisticRegression"]
    np.testing.assert_allclose(ours.coef, inner.coef, rtol=0, atol=1e-9)


def test_mixed_per_sample_and_batch_checkpoint_round_trip():
    """Batches and events in any order; a checkpoint of the statistics resumes bitwise."""
    rows = sparse_rows(400, 5)
    model = OnlineLogisticRegression(optimizer=optim.AdaGrad(), scale=True)
    for i, chunk in enumerate(batches(rows[:200], 10)):
        if i % 2:
            model.learn_rows([x for x, _ in chunk], [y for _, y in chunk])
        else:
            for x, y in chunk:
                model.learn_one(x, y)
    resumed = OnlineLogisticRegression.from_state(*model.state())
    for chunk in batches(rows[200:], 10):
        xs, ys = [x for x, _ in chunk], [y for _, y in chunk]
        assert resumed.predict_learn_rows(xs, ys).tobytes() == model.predict_learn_rows(xs, ys).tobytes()
    assert arrays_of(resumed) == arrays_of(model)


@pytest.mark.parametrize("optimizer", [lambda: optim.SGD(0.1), optim.Mixture], ids=["sgd", "mixture"])
def test_a_batch_too_large_to_standardize_is_refused_without_trace(optimizer):
    model = OnlineLogisticRegression(optimizer=optimizer(), scale=True)
    model.learn_rows([{"a": 1.0, "b": 2.0}, {"a": 3.0, "b": 1.0}], [True, False])
    before = model.state()
    poisons = [
        lambda: model.learn_rows([{"a": 1.7e308}, {"a": -1.7e308, "new": 1.0}], [True, False]),
        lambda: model.learn_many(pd.DataFrame({"a": [1e200, -1e200], "b": [0.0, 1.0]}), [True, False]),
        lambda: model.learn_batch(np.array([[1.7e308, 0.0], [-1.7e308, 0.0]]), np.array([1.0, 0.0])),
        lambda: model.learn_many(pd.DataFrame({"a": [np.inf, 1.0]}), [True, False]),
    ]
    for poison in poisons:
        with pytest.raises(ValueError, match="too large to standardize|non-finite"):
            poison()
        after = model.state()
        assert {k: v.tobytes() for k, v in after[0].items()} == {k: v.tobytes() for k, v in before[0].items()}
        assert after[1] == before[1]
    p = model.predict_proba_many(pd.DataFrame({"a": [1.7e308, -1.7e308], "b": [0.0, 1.0]}))[True]
    assert ((p >= 0) & (p <= 1)).all()
    model.learn_rows([{"a": 2.0, "b": 0.5}], [True])  # still learns ordinary rows
    assert model.state()[0]["scale.count"].tolist()[:2] == [3.0, 3.0]


def test_scale_refuses_hashing_with_its_reason():
    with pytest.raises(ValueError, match="vocabulary.*indicator"):
        OnlineLogisticRegression(scale=True, n_bits=10)


# The service's setting: --scale / --no-scale goes into the model's configuration (and so its checkpoints)


def test_the_scale_setting_reaches_the_model_config():
    from consumers import cli, settings

    def config(*flags: str) -> dict:
        values, _ = settings.resolve_settings(
            cli.build_parser().parse_args(["consume", "--topics", "t", "--checkpoint-dir", "/tmp/x", *flags]),
            settings.CONSUME_SETTINGS, {},
        )
        return settings.learner_config(values).model_config()

    # unset: on with the default optimizer and a vocabulary, off where it would change a textbook rule
    assert config()["scale"] is True and "scale" not in config("--no-scale")
    assert "scale" not in config("--optimizer", "sgd") and "scale" not in config("--n-bits", "12")
    assert config("--scale")["scale"] is True and config("--scale", "--optimizer", "sgd")["scale"] is True
    assert OnlineLogisticRegression.from_config(config("--scale", "--batch-size", "8")).scale
    with pytest.raises(settings.UsageError, match="--scale needs a vocabulary"):
        config("--scale", "--n-bits", "12")
    values, _ = settings.resolve_settings(
        cli.build_parser().parse_args(["consume", "--topics", "t", "--checkpoint-dir", "/tmp/x"]),
        settings.CONSUME_SETTINGS, {"STREAM_LOGREG_SCALE": "false"},
    )
    assert "scale" not in settings.learner_config(values).model_config()


def test_a_checkpoint_of_one_scale_setting_is_refused_by_the_other(tmp_path, capsys):
    from consumers import cli

    d = str(tmp_path / "ckpt")
    assert cli.main(["demo", "--checkpoint-dir", d, "--n", "100", "--batch-size", "4", "-q"]) == 0  # scaled
    capsys.readouterr()
    demo = ["demo", "--checkpoint-dir", d, "--batch-size", "4", "-q"]
    assert cli.main([*demo, "--n", "100", "--no-scale"]) == 2
    err = capsys.readouterr().err
    assert "scale" in err and "--fresh" in err
    assert cli.main(["demo", "--checkpoint-dir", d, "--n", "200", "--scale", "--batch-size", "4", "-q"]) == 0


def test_a_full_vocabulary_ignores_new_features_in_scaled_batches():
    """Features a full vocabulary ignores are neither learned nor counted; rows keep their other entries."""
    model = OnlineLogisticRegression(optimizer=optim.SGD(0.1), scale=True, max_features=2)
    oracle = OnlineLogisticRegression(optimizer=optim.SGD(0.1), scale=True)
    rows = sparse_rows(120, 8)
    for chunk in batches(rows, 12):
        xs, ys = [x for x, _ in chunk], [y for _, y in chunk]
        full = [{"a": x["a"], "city": "Paris", **{k: v for k, v in x.items() if k not in ("a", "city")}}
                for x in xs]  # "a" and "city=Paris" fill the vocabulary; "b", "c", "d" are ignored
        p = model.predict_learn_rows(full, ys)
        q = oracle.predict_learn_rows([{"a": x["a"], "city": "Paris"} for x in xs], ys)
        np.testing.assert_allclose(p, q, rtol=0, atol=1e-12)
    assert model.n_features == 2 and model.features.n_dropped > 0
    np.testing.assert_allclose(model.state()[0]["scale.mean"], oracle.state()[0]["scale.mean"], atol=1e-12)
