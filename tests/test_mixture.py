"""The default learner, the Bayes mixture (``optim.Mixture``), against independent oracles.

- bench/candidates.py's Python prototype of "Mix8" (the rule the accuracy research chose), run on the
  same events: the compiled mixture's predictions agree to 1e-9 on every event;
- the aggregating algorithm's bound: the mixture's total log loss is at most each member's run alone
  (our SGD and FTRL models, the prototype's NAG) + ln 8;
- checkpoints: a run stopped mid-stream and restored from ``state()`` (and from a checkpoint directory)
  continues bitwise as the uninterrupted run;
- the paths agree bitwise: predict_learn_one = predict_proba_one + learn_one, learn_rows of one row =
  learn_one, learn_batch = learn_rows on the same dense rows.
"""

from __future__ import annotations

import math
import random
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_logreg import OnlineLogisticRegression, optim
from stream_logreg.features import IndicatorKey

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import candidates as cand  # noqa: E402  (the prototypes, bench/candidates.py)


class FTRLMember(cand.AdaGradFloor):
    """FTRL-Proximal(0.17, 0.5) without L1/L2 as the identical per-coordinate gradient descent, without the
    prototype's ε inside the square root (the model's FTRL has none): n ← n + g², w ← w − α/(β + √n) g."""

    def __init__(self) -> None:
        super().__init__(0.17, 0.0, beta=0.5)

    def learn(self, x: dict, y: bool, p: float | None = None) -> None:
        r = (self.predict_proba(x) if p is None else p) - y
        for k, v in cand.coords(x):
            g = r * v
            self.G[k] = self.G.get(k, 0.0) + g * g
            self.w[k] = self.w.get(k, 0.0) - 0.17 / (0.5 + math.sqrt(self.G[k])) * g


def prototype() -> cand.Mixture:
    sgd = [cand.SGD(r) for r in (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)]
    return cand.Mixture([*sgd, cand.NAG(0.5), FTRLMember()])


def one_hot(x: dict) -> dict:
    """The prototype's input: strings as ``k=v`` indicators (what the model does with them)."""
    return {(f"{k}={v}" if isinstance(v, str) else k): (1.0 if isinstance(v, str) else float(v))
            for k, v in x.items()}


def gaussian_stream(n: int, seed: int, scale: float = 1.0) -> list[tuple[dict, bool]]:
    rng = random.Random(seed)
    truth = [rng.gauss(0, 1) for _ in range(5)]
    rows = []
    for i in range(n):
        x = {f"x{j}": rng.gauss(0, 1) * scale * (10.0 ** j if scale != 1.0 else 1.0) for j in range(5)}
        if i > n // 2:  # drift: the truth flips half way
            truth = [-t for t in truth] if i == n // 2 + 1 else truth
        z = sum(t * v / (scale * (10.0 ** j if scale != 1.0 else 1.0)) for j, (t, v) in enumerate(
            zip(truth, x.values(), strict=True)))
        rows.append((x, rng.random() < 1 / (1 + math.exp(-2 * z))))
    return rows


def categorical_stream(n: int, seed: int) -> list[tuple[dict, bool]]:
    rng = random.Random(seed)
    effect = {f"c{j}": rng.gauss(0, 1) for j in range(30)}
    rows = []
    for _ in range(n):
        city, shop = f"c{rng.randrange(30)}", f"s{rng.randrange(200)}"  # new shops keep appearing
        x = {"city": city, "shop": shop, "age": rng.uniform(-2, 2), "vip": rng.random() < 0.2}
        rows.append((x, rng.random() < 1 / (1 + math.exp(-(effect[city] + x["age"])))))
    return rows


def phishing(n: int) -> list[tuple[dict, bool]]:
    from river import datasets

    return [(dict(x), bool(y)) for x, y in list(datasets.Phishing())[:n]]  # raw features: NAG matters


STREAMS = {
    "gaussian_drift": lambda: gaussian_stream(1500, 1),
    "scales_1_to_1e4": lambda: gaussian_stream(800, 2, scale=3.0),
    "categorical": lambda: categorical_stream(1500, 3),
    "phishing_raw": lambda: phishing(1250),
}


@pytest.mark.parametrize("name", STREAMS)
def test_equals_the_prototype(name):
    model, oracle = OnlineLogisticRegression(), prototype()
    worst = 0.0
    for x, y in STREAMS[name]():
        p, q = model.predict_proba_one(x)[True], oracle.predict_proba(one_hot(x))
        worst = max(worst, abs(p - q))
        assert model.predict_learn_one(x, y) == p
        oracle.learn(one_hot(x), y)
    assert worst <= 1e-9, worst
    assert np.allclose(model.optimizer.posterior, oracle.weights, rtol=0, atol=1e-9)


def total_log_loss(model, rows, proba) -> float:
    loss = 0.0
    for x, y in rows:
        p = proba(model, x)
        loss -= math.log(min(max(p if y else 1.0 - p, 1e-300), 1.0))
        model.learn_one(x, y) if hasattr(model, "learn_one") else model.learn(one_hot(x), y)
    return loss


@pytest.mark.parametrize("name", STREAMS)
def test_regret_at_most_ln_8_against_each_member(name):
    rows = STREAMS[name]()

    def ours(model, x):
        return model.predict_proba_one(x)[True]

    def proto(model, x):
        return model.predict_proba(one_hot(x))

    mixture = total_log_loss(OnlineLogisticRegression(), rows, ours)
    members = {f"SGD({r})": total_log_loss(OnlineLogisticRegression(optimizer=optim.SGD(r)), rows, ours)
               for r in (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)}
    members["FTRL"] = total_log_loss(OnlineLogisticRegression(optimizer=optim.FTRL(0.17, 0.5)), rows, ours)
    members["NAG"] = total_log_loss(cand.NAG(0.5), rows, proto)
    for member, loss in members.items():
        assert mixture <= loss + math.log(8) + 1e-6, (member, mixture, loss)
    # and it is not vacuous: the members differ by more than ln 8 on these streams
    assert max(members.values()) - min(members.values()) > math.log(8)


def encoded(rows):
    return [(x, y) for x, y in rows]


@pytest.mark.parametrize("n_bits", [None, 3])
def test_paths_agree_bitwise(n_bits):
    rows = categorical_stream(300, 4)
    a, b, c = (OnlineLogisticRegression(n_bits=n_bits) for _ in range(3))
    for x, y in rows:
        p = a.predict_proba_one(x)[True]
        a.learn_one(x, y)
        assert b.predict_learn_one(x, y) == p
        assert c.predict_learn_rows([x], [y])[0] == p
    for m in (b, c):
        assert_same_state(a, m)


def test_learn_batch_equals_learn_rows_on_dense_rows():
    rng = np.random.default_rng(5)
    a, b = OnlineLogisticRegression(), OnlineLogisticRegression()
    for _ in range(30):
        X = rng.normal(size=(8, 4)) * [1.0, 10.0, 0.1, 1.0]
        X[:, 3] = 0.0  # a column of zeros: NAG skips it, the others take a zero gradient
        y = rng.random(8) < 0.5
        b.learn_rows([{j: float(v) for j, v in enumerate(row)} for row in X], y)
        a.learn_batch(X, y)
    assert_same_state(a, b)
    X = rng.normal(size=(5, 4))
    assert a.predict_proba_batch(X).tolist() == [b.predict_proba_one(dict(enumerate(r)))[True] for r in X]
    frame = pd.DataFrame(X)
    assert a.predict_proba_many(frame)[True].tolist() == a.predict_proba_batch(X).tolist()


def assert_same_state(a: OnlineLogisticRegression, b: OnlineLogisticRegression) -> None:
    (arrays_a, meta_a), (arrays_b, meta_b) = a.state(), b.state()
    assert sorted(arrays_a) == sorted(arrays_b)
    for name in arrays_a:
        assert arrays_a[name].tobytes() == arrays_b[name].tobytes(), name
    assert meta_a == meta_b


@pytest.mark.parametrize("path", ["learn_one", "learn_rows"])
def test_checkpoint_resumes_bitwise_mid_stream(path, tmp_path):
    from stream_logreg.checkpoints import DirectoryStore

    rows = categorical_stream(400, 6) + gaussian_stream(200, 7)

    def learn(model, chunk):
        if path == "learn_one":
            return [model.predict_learn_one(x, y) for x, y in chunk]
        return [p for i in range(0, len(chunk), 7) for p in model.predict_learn_rows(
            [x for x, _ in chunk[i:i + 7]], [y for _, y in chunk[i:i + 7]]).tolist()]

    whole = OnlineLogisticRegression()
    expected = learn(whole, rows)
    first = OnlineLogisticRegression()
    got = learn(first, rows[:301])
    store = DirectoryStore(tmp_path)
    store.save(first, metadata={})
    resumed_from_dir = store.latest().model
    store.close()
    resumed = OnlineLogisticRegression.from_state(*first.state())
    rest = rows[301:]
    assert got + learn(resumed, rest) == expected
    assert learn(resumed_from_dir, rest) == expected[301:]
    assert_same_state(whole, resumed)
    assert_same_state(whole, resumed_from_dir)


def test_checkpoint_of_a_mixture_without_its_weights_is_refused():
    model = OnlineLogisticRegression()
    model.learn_one({"a": 1.0}, True)
    arrays, meta = model.state()
    meta = {k: v for k, v in meta.items() if k != "mixture"}
    with pytest.raises(ValueError, match="mixture"):
        OnlineLogisticRegression.from_state(arrays, meta)
    bad = dict(model.state()[1])
    bad["mixture"] = {**bad["mixture"], "log_weights": [0.0] * 7 + [float("nan")]}
    with pytest.raises(ValueError, match="log weights"):
        OnlineLogisticRegression.from_state(arrays, bad)


def test_weights_are_the_posterior_mean_of_the_members():
    model = OnlineLogisticRegression()
    for x, y in gaussian_stream(300, 8):
        model.learn_one(x, y)
    pi = np.array(model.optimizer.posterior)
    members = model.optimizer.coef[: model.n_features, :8]
    assert np.allclose(model.coef, members @ pi, rtol=0, atol=1e-15)
    assert model.weights == dict(zip(model.features.keys, (members @ pi).tolist(), strict=True))
    bias = model._bias_optimizer.coef[0, :8]
    assert model.intercept == pytest.approx(float(bias @ pi), abs=1e-15)
    assert math.isclose(sum(pi), 1.0)


def test_parameters_that_do_not_apply_are_refused():
    for params in ({"intercept_lr": 0.1}, {"l1": 0.1}):
        with pytest.raises(ValueError, match="[Mm]ixture"):
            OnlineLogisticRegression(**params)
    with pytest.raises(ValueError, match="six"):
        optim.Mixture(rates=(0.1, 0.2))
    with pytest.raises(ValueError, match="nag_lr"):
        optim.Mixture(nag_lr=float("nan"))


def test_an_explicit_optimizer_is_the_textbook_rule_not_the_mixture():
    x, y = {"a": 2.0}, True
    model = OnlineLogisticRegression(optimizer=optim.SGD(0.5))
    model.learn_one(x, y)
    assert model.weights["a"] == -0.5 * (0.5 - 1.0) * 2.0
    assert model.intercept == -0.5 * (0.5 - 1.0)


# (|x| >= 1e-100 or 0: below ~1e-154 the prototype's NAG divides 0 by 0, where the kernel skips the step)
small = st.floats(-1e3, 1e3).filter(lambda v: v == 0.0 or abs(v) >= 1e-100)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.dictionaries(st.sampled_from("abc"), small, min_size=1),
                          st.booleans()), min_size=1, max_size=30))
def test_equals_the_prototype_on_any_small_stream(rows):
    model, oracle = OnlineLogisticRegression(), prototype()
    for x, y in rows:
        q = oracle.predict_proba(x)
        assert abs(model.predict_learn_one(x, y) - q) <= 1e-9
        oracle.learn(x, y)


# Built-in standardization (scale=True): River's StandardScaler, learn then transform, inside the model.


def scaled_stream(n: int, seed: int) -> list[tuple[dict, bool]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        x = {"a": rng.gauss(5, 3), "b": rng.gauss(-1e3, 1e2), "c": float(rng.randrange(3))}
        if i % 7:  # features that come and go
            x["d"] = rng.uniform(0, 1e4)
        rows.append((x, rng.random() < 1 / (1 + math.exp(-(x["a"] - 5) / 3))))
    return rows


@pytest.mark.parametrize("lr", [0.01, 0.1])
def test_scale_equals_river_standard_scaler_pipeline(lr):
    from river import linear_model, preprocessing
    from river import optim as river_optim

    ours = OnlineLogisticRegression(optimizer=optim.SGD(lr), scale=True)
    river = preprocessing.StandardScaler() | linear_model.LogisticRegression(
        optimizer=river_optim.SGD(lr), intercept_lr=lr)
    worst = 0.0
    for x, y in scaled_stream(1500, 9):
        p, q = ours.predict_proba_one(x)[True], river.predict_proba_one(x)[True]
        worst = max(worst, abs(p - q))
        assert ours.predict_learn_one(x, y) == p
        river.learn_one(x, y)
    assert worst <= 1e-9, worst
    frame = pd.DataFrame([x for x, _ in scaled_stream(20, 10)]).fillna(0.0)
    assert np.allclose(ours.predict_proba_many(frame)[True], river.predict_proba_many(frame)[True], atol=1e-9)


def test_scaled_mixture_equals_the_prototype_behind_river_scaler():
    from river import preprocessing

    model, oracle, scaler = OnlineLogisticRegression(scale=True), prototype(), preprocessing.StandardScaler()
    for x, y in scaled_stream(800, 11):
        q = oracle.predict_proba(scaler.transform_one(x))  # the prediction: the statistics so far
        oracle._predicted = None  # the mixture is charged with the members' p on the row it learns
        assert abs(model.predict_learn_one(x, y) - q) <= 1e-9
        scaler.learn_one(x)
        oracle.learn(scaler.transform_one(x), y)


def test_scale_leaves_indicators_alone_and_checkpoints(tmp_path):
    from stream_logreg.checkpoints import DirectoryStore

    rows = [({"a": float(i), "city": "c" + str(i % 3)}, i % 2 == 0) for i in range(60)]
    model = OnlineLogisticRegression(optimizer=optim.SGD(0.1), scale=True)
    for x, y in rows[:30]:
        model.learn_one(x, y)
    arrays, _ = model.state()
    assert arrays["scale.count"].tolist() == [30.0, 0.0, 0.0, 0.0]  # only "a"; the indicators are not scaled
    with DirectoryStore(tmp_path) as store:
        store.save(model, {})
        resumed = store.latest().model
    for x, y in rows[30:]:
        assert resumed.predict_learn_one(x, y) == model.predict_learn_one(x, y)
    assert_same_state(model, resumed)


def test_scale_refuses_what_it_cannot_standardize_and_leaves_no_trace():
    model = OnlineLogisticRegression(scale=True)
    model.learn_one({"a": 1.0}, True)
    before = model.state()
    with pytest.raises(ValueError):
        model.learn_one({"a": 1.7e308, "b": -1.7e308}, True)
    after = model.state()
    assert {k: v.tobytes() for k, v in before[0].items()} == {k: v.tobytes() for k, v in after[0].items()}
    assert before[1] == after[1]
    assert 0.0 <= model.predict_proba_one({"a": 1.7e308})[True] <= 1.0
    with pytest.raises(ValueError, match="vocabulary"):
        OnlineLogisticRegression(scale=True, n_bits=10)


class ExactMixture:
    """The kernel's per-sample mixture rule written out in Python floats (IEEE doubles, the same libm exp
    and log), operation for operation as `MixtureStep._learn` does it for a batch of one row: the batch's
    sums start from 0.0 and its mean divides by 1.0. An independent oracle, bitwise, for the one-row path."""

    RATES = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)

    def __init__(self, l2: float, neg_w: float, pos_w: float) -> None:
        self.l2, self.neg_w, self.pos_w = l2, neg_w, pos_w
        self.rows: dict = {}
        self.bias = [0.0] * 11
        self.a = [0.0] * 8
        self.t = self.n = 0.0

    @staticmethod
    def encode(x: dict) -> list[tuple[object, float]]:
        """Row x as the model encodes it, by feature: (k, v) for a number v of key k, ((k, v), 1.0) for the
        indicator of a string v."""
        return [((k, v) if isinstance(v, str) else k, 1.0 if isinstance(v, str) else v) for k, v in x.items()]

    def assert_state_of(self, model: OnlineLogisticRegression) -> None:
        """Every number of the model's state (the columns' rows, the bias's, a_k, t and N) is the oracle's."""
        opt, columns = model.optimizer, model.features.columns
        for key, row in self.rows.items():
            col = columns[IndicatorKey(*key) if isinstance(key, tuple) else key]
            assert opt.coef[col].tolist() == row
        assert model._bias_optimizer.coef[0].tolist() == self.bias
        assert opt.log_weights.tolist() == self.a and opt.nag.tolist() == [self.t, self.n]

    @staticmethod
    def sigmoid(z: float) -> float:
        if z >= 0.0:
            return 1.0 / (1.0 + math.exp(-z))
        e = math.exp(z)
        return e / (1.0 + e)

    @staticmethod
    def clip(z: float) -> float:
        return 35.0 if z > 35.0 else (-35.0 if z < -35.0 else z)

    def steps(self, r: list, g: list, step: float) -> None:
        for k in range(6):
            r[k] = r[k] - self.RATES[k] * g[k]
        if g[6] != 0.0:
            r[9] = r[9] + g[6] * g[6]
            if r[9] > 0.0:
                r[6] = r[6] - step * (g[6] / math.sqrt(r[9])) / r[8]
        if g[7] != 0.0:
            r[10] = r[10] + g[7] * g[7]
            if r[10] > 0.0:
                r[7] = r[7] - 0.17 / (0.5 + math.sqrt(r[10])) * g[7]

    def learn(self, x: list[tuple[object, float]], y: float, sw: float) -> float:
        rows, b = [self.rows.setdefault(key, [0.0] * 11) for key, _ in x], self.bias
        z = [0.0] * 8
        for r, (_, v) in zip(rows, x, strict=True):
            for k in range(8):
                z[k] = z[k] + r[k] * v
        p = [self.sigmoid(self.clip(z[k] + b[k])) for k in range(8)]
        e = [math.exp(a) if a > -745.2 else 0.0 for a in self.a]
        s = t = 0.0
        for k in range(8):
            s, t = s + e[k], t + e[k] * p[k]
        out = t / s
        wt = sw * (self.pos_w if y == 1.0 else self.neg_w)
        acc = [self.a[k] + (0.0 + wt * math.log(p[k] if y == 1.0 else 1.0 - p[k])) for k in range(8)]
        top = max(acc)
        self.a = [d - top if d - top > -1e4 else -1e4 for d in acc]
        for r, (_, v) in zip([*rows, b], [*x, (None, 1.0)], strict=True):  # NAG's rescaling
            if abs(v) > r[8]:
                r[6] = r[6] * ((r[8] / abs(v)) * (r[8] / abs(v))) if r[8] > 0.0 else 0.0
                r[8] = abs(v)
        zn = total = 0.0
        for r, (_, v) in zip(rows, x, strict=True):
            zn = zn + r[6] * v
            if v != 0.0:
                total = total + (v / r[8]) * (v / r[8])
        p[6] = self.sigmoid(self.clip(zn + b[6]))
        self.t, self.n = self.t + 1.0, self.n + (total + 1.0) / 1.0
        grad = [min(max((p[k] - y) * wt, -1e12), 1e12) for k in range(8)]
        step = 0.5 * math.sqrt(self.t / self.n)
        for r, (_, v) in zip(rows, x, strict=True):
            self.steps(r, [(0.0 + grad[k] * v) / 1.0 + self.l2 * r[k] for k in range(8)], step)
        self.steps(b, [(0.0 + g) / 1.0 for g in grad], step)
        return out

    def learn_batch(self, xs: list[list[tuple[object, float]]], ys: list[float], sws: list[float]
                    ) -> list[float]:
        """The kernel's mini-batch rule (m > 1 rows), operation for operation as `MixtureStep._learn`: each
        distinct column's gradients summed over the rows in order, then one step per distinct column."""
        m, b = float(len(xs)), self.bias
        rows = [[self.rows.setdefault(key, [0.0] * 11) for key, _ in x] for x in xs]
        e = [math.exp(a) if a > -745.2 else 0.0 for a in self.a]
        ps, out, delta = [], [], [0.0] * 8
        for r_i, x, y, sw in zip(rows, xs, ys, sws, strict=True):
            z = [0.0] * 8
            for r, (_, v) in zip(r_i, x, strict=True):
                for k in range(8):
                    z[k] = z[k] + r[k] * v
            p = [self.sigmoid(self.clip(z[k] + b[k])) for k in range(8)]
            s = t = 0.0
            for k in range(8):
                s, t = s + e[k], t + e[k] * p[k]
            out.append(t / s)
            wt = sw * (self.pos_w if y == 1.0 else self.neg_w)
            delta = [delta[k] + wt * math.log(p[k] if y == 1.0 else 1.0 - p[k]) for k in range(8)]
            ps.append(p)
        acc = [self.a[k] + delta[k] for k in range(8)]
        top = max(acc)
        self.a = [d - top if d - top > -1e4 else -1e4 for d in acc]
        entries = [(r, v) for r_i, x in zip(rows, xs, strict=True) for r, (_, v) in zip(r_i, x, strict=True)]
        for r, v in [*entries, (b, 1.0)]:  # NAG's rescaling: every entry in order, then the bias
            if abs(v) > r[8]:
                r[6] = r[6] * ((r[8] / abs(v)) * (r[8] / abs(v))) if r[8] > 0.0 else 0.0
                r[8] = abs(v)
        total = 0.0
        for p, r_i, x in zip(ps, rows, xs, strict=True):
            zn = 0.0
            for r, (_, v) in zip(r_i, x, strict=True):
                zn = zn + r[6] * v
                if v != 0.0:
                    total = total + (v / r[8]) * (v / r[8])
            p[6] = self.sigmoid(self.clip(zn + b[6]))
            total = total + 1.0
        self.t, self.n = self.t + 1.0, self.n + total / m
        grads: dict = {}  # each distinct column's sums, in order of first appearance
        gb = [0.0] * 8
        for p, x, y, sw in zip(ps, xs, ys, sws, strict=True):
            wt = sw * (self.pos_w if y == 1.0 else self.neg_w)
            for k in range(8):
                rk = min(max((p[k] - y) * wt, -1e12), 1e12)
                gb[k] = gb[k] + rk
                for key, v in x:
                    g = grads.setdefault(key, [0.0] * 8)
                    g[k] = g[k] + rk * v
        step = 0.5 * math.sqrt(self.t / self.n)
        for key, g in grads.items():
            r = self.rows[key]
            self.steps(r, [g[k] / m + self.l2 * r[k] for k in range(8)], step)
        self.steps(b, [g / m for g in gb], step)
        return out


@pytest.mark.parametrize("params", [{}, {"l2": 0.01, "class_weight": {0: 1.0, 1: 2.5}}])
def test_one_row_step_is_the_exact_rule_bitwise(params):
    """predict_learn_one (the compiled one-row step) against ExactMixture: every prediction and, at the
    end, every number of the state bitwise; sample weights, indicators, floats, zeros, growing scales."""
    rng = random.Random(7)
    model = OnlineLogisticRegression(**params)
    w = params.get("class_weight", {0: 1.0, 1: 1.0})
    oracle = ExactMixture(params.get("l2", 0.0), w[0], w[1])
    for i in range(400):
        x = {"shop": f"s{rng.randrange(60)}", "city": f"c{rng.randrange(9)}",
             "age": rng.choice([0.0, rng.gauss(0, 1), rng.gauss(0, 1) * 10.0 ** (i // 100)])}
        y, sw = rng.random() < 0.4, rng.choice([1.0, 0.5, 3.0])
        assert model.predict_learn_one(x, y, sw) == oracle.learn(oracle.encode(x), float(y), sw)
    oracle.assert_state_of(model)


@pytest.mark.parametrize("params", [{}, {"l2": 0.01, "class_weight": {0: 1.0, 1: 2.5}}])
def test_mini_batch_step_is_the_exact_rule_bitwise(params):
    """predict_learn_rows (the compiled mini-batch step, m > 1) against ExactMixture.learn_batch: every
    prediction and, at the end, every number of the state bitwise. The batches share columns (few cities,
    many shops), so each distinct column must be found again among those of the rows before it."""
    rng = random.Random(11)
    model = OnlineLogisticRegression(**params)
    w = params.get("class_weight", {0: 1.0, 1: 1.0})
    oracle = ExactMixture(params.get("l2", 0.0), w[0], w[1])
    for i in range(120):
        m = rng.choice([2, 3, 7, 16, 40])
        xs = [{"shop": f"s{rng.randrange(300)}", "city": f"c{rng.randrange(5)}",
               "age": rng.choice([0.0, rng.gauss(0, 1), rng.gauss(0, 1) * 10.0 ** (i // 30)])}
              for _ in range(m)]
        ys, sws = [rng.random() < 0.4 for _ in range(m)], [rng.choice([1.0, 0.5, 3.0]) for _ in range(m)]
        expected = oracle.learn_batch([oracle.encode(x) for x in xs], [float(y) for y in ys], sws)
        assert model.predict_learn_rows(xs, ys, sws).tolist() == expected
    oracle.assert_state_of(model)
