"""The compiled per-sample step with built-in standardization (``scale=True``; issues 15 and 10).

With ``scale=True``, ``predict_learn_one``, ``learn_one`` and ``predict_proba_one`` of a row of known
features run in one compiled call: the statistics learn the row, it is standardized with them and learned,
and the prediction is made with the statistics before the update (River's ``StandardScaler`` then the
model). The oracles:

- the model's general (Python) path, which predates the compiled one: bitwise, on random rows of numbers,
  bools and strings from tiny to ±1e300, refusals included (a refused event leaves every array bitwise as
  it was, the statistics too), for the mixture, SGD, AdaGrad and FTRL;
- River's ``StandardScaler() | LogisticRegression(optimizer=SGD(η))``, to 1e-9;
- for rows already encoded (``predict_learn_encoded``, ``_kernel.predict_learn_row``): ``predict_learn_one``
  of the equivalent dict, bitwise.
"""

from __future__ import annotations

import math
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_logreg import OnlineLogisticRegression, _kernel, optim

OPTIMIZERS = {
    "mixture": lambda: optim.Mixture(),
    "sgd": lambda: optim.SGD(0.1),
    "sgd schedule": lambda: optim.SGD(0.5, power_t=0.25),
    "adagrad": lambda: optim.AdaGrad(),
    "ftrl": lambda: optim.FTRL(),
}


class GeneralPath(OnlineLogisticRegression):
    """The model whose compiled steps are made without the statistics: every scaled event then takes the
    general path (Python around the kernels' separate pieces), the path the compiled one must equal."""

    def _compile_step(self):
        self.scale = False
        try:
            return super()._compile_step()
        finally:
            self.scale = True


def snapshot(model: OnlineLogisticRegression) -> tuple:
    """Everything the model learned, bitwise: its checkpoint (arrays and metadata) and its raw arrays (of
    the feature space's columns: a refused row's new columns may leave a larger capacity behind)."""
    arrays, meta = model.state()
    n = model.n_features
    raw = [model._scale_stats[:n], model._numeric[:n]]
    opt = model.optimizer
    if model._mixture:  # its weights are the members' (w and b are unused; a checkpoint holds their means)
        raw += [opt.coef[:n], model._bias_optimizer.coef, opt.log_weights, opt.nag]
    else:
        raw += [model._w[:n], model._b]
    return ({k: v.tobytes() for k, v in arrays.items()}, meta, [a.tobytes() for a in raw])


def encoded(model: OnlineLogisticRegression, x: dict) -> tuple[np.ndarray, np.ndarray, int] | None:
    """Row x as the feature space encodes it, if every feature is known (else None)."""
    cols, vals = np.zeros(len(x) + 1, dtype=np.intp), np.zeros(len(x) + 1)
    n = _kernel.encode(x, model.features.columns, cols, vals, model.features.hashing)
    return None if n < 0 else (cols, vals, n)


VALUES = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, -0.0, 1e-300, -1e-300, 5e-324, 1e-150, 1e150, 1e300, -1e300, 1.7e308, 3.0, -2.5]),
    st.floats(-10, 10),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.sampled_from(["FR", "DE", "x"]),
)
ROWS = st.dictionaries(st.sampled_from(["a", "b", "c", "d", "e", "f"]), VALUES, min_size=0, max_size=6)
WEIGHTS = st.sampled_from([1.0, 0.5, 3.0, 1e300, 1.7e308])  # huge, with no clipping: steps that overflow
EVENTS = st.lists(st.tuples(ROWS, st.booleans(), WEIGHTS), min_size=1, max_size=40)

REFUSED: dict[str, int] = {}
STEP_REFUSED: dict[str, int] = {}  # refusals of the update itself, the statistics having learned the row


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=EVENTS, class_weight=st.sampled_from([None, {0: 1.0, 1: 2.5}]), l2=st.sampled_from([0.0, 0.01]),
       clip=st.sampled_from([1e12, 1e308]))
def test_the_compiled_scaled_step_is_the_general_path_bitwise(optimizer, events, class_weight, l2, clip):
    """predict_proba_one, predict_learn_one, learn_one and predict_learn_encoded (compiled) against the
    general path, event by event: the same p, the same refusals, the same state bitwise afterwards."""
    def make(cls):
        return cls(optimizer=OPTIMIZERS[optimizer](), scale=True, class_weight=class_weight, l2=l2,
                   clip_gradient=clip)

    oracle, fast, learner, rows = make(GeneralPath), make(OnlineLogisticRegression), \
        make(OnlineLogisticRegression), make(OnlineLogisticRegression)
    for x, y, w in events:
        before = snapshot(oracle)
        try:
            p = oracle.predict_learn_one(x, y, w)
        except ValueError as e:
            p = None
            REFUSED[optimizer] = REFUSED.get(optimizer, 0) + 1
            if "non-finite" in str(e) or "is not finite" in str(e):
                STEP_REFUSED[optimizer] = STEP_REFUSED.get(optimizer, 0) + 1
            assert snapshot(oracle) == before
        if p is None:
            q_before = snapshot(fast)
            with pytest.raises(ValueError):
                fast.predict_learn_one(x, y, w)
            assert snapshot(fast) == q_before
            with pytest.raises(ValueError):
                learner.learn_one(x, y, w)
            row = encoded(rows, x)
            if row is not None:
                with pytest.raises(ValueError):
                    rows.predict_learn_encoded(*row, y, w)
            else:
                with pytest.raises(ValueError):
                    rows.predict_learn_one(x, y, w)
        else:
            if not fast._mixture and encoded(fast, x) is not None:  # the compiled logit (predict_one)
                n = fast._scaled_encode(x)
                z = _kernel.dot(fast._w, fast._cols, fast._vals, n) + fast._b[0]
                assert fast._raw_dot(x) == z and fast.predict_one(x) == (z > 0.0)
            q = fast.predict_proba_one(x)[True]
            assert fast.predict_learn_one(x, y, w) == p == q
            learner.learn_one(x, y, w)
            row = encoded(rows, x)
            r = rows.predict_learn_encoded(*row, y, w) if row is not None else rows.predict_learn_one(x, y, w)
            assert r == p
        reference = snapshot(oracle)
        assert snapshot(fast) == reference
        assert snapshot(learner) == reference
        assert snapshot(rows) == reference


def test_the_property_exercised_refusals():
    """The property is vacuous without refusals: each optimizer's run must have refused some events."""
    if not REFUSED:
        pytest.skip("run together with the property above")
    assert set(OPTIMIZERS) <= set(REFUSED), REFUSED
    # Refusals of the update itself (the statistics having learned the row, so they must be put back): the
    # accumulators of the mixture, AdaGrad and FTRL overflow (g² with g ~ 1e300); SGD's step rarely does
    # on standardized values (|x| ≤ √count), so it is not required of SGD.
    assert {"mixture", "adagrad", "ftrl"} <= set(STEP_REFUSED), STEP_REFUSED


def test_the_compiled_path_is_taken():
    """After its first row, a scaled model of known features never enters the general path (else the
    comparison above would compare the general path with itself)."""
    calls = []

    class Spy(OnlineLogisticRegression):
        def _learn_encoded(self, *args):
            calls.append(args)
            return super()._learn_encoded(*args)

    for opt in OPTIMIZERS.values():
        model = Spy(optimizer=opt(), scale=True)
        rows = stream(50, 3)
        seen: set = set()
        new = 0  # rows with a feature not seen before: the general path creates its column
        for x, y in rows:
            features = {(k, v) if isinstance(v, str) else k for k, v in x.items()}
            new += not features <= seen
            seen |= features
            model.predict_proba_one(x)
            model.predict_learn_one(x, y)
            model.learn_one(x, y)
        assert len(calls) == new < 5, calls
        calls.clear()


def stream(n: int, seed: int) -> list[tuple[dict, bool]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        x = {"a": rng.gauss(5, 3), "b": rng.gauss(-1e3, 1e2), "c": float(rng.randrange(3)),
             "city": rng.choice(["Paris", "Lyon"]), "flag": i % 3 == 0}
        if i % 7 == 1:  # a feature that comes and goes
            x["d"] = rng.uniform(0, 1e4)
        rows.append((x, rng.random() < 1 / (1 + math.exp(-(x["a"] - 5) / 3))))
    return rows


@pytest.mark.parametrize("lr", [0.01, 0.1])
def test_predict_proba_one_then_learn_one_equals_river_scaler_pipeline(lr):
    """The two calls a River user makes (the compiled prediction, then the compiled update without one),
    against River's StandardScaler() | LogisticRegression(SGD), to 1e-9."""
    from river import linear_model, preprocessing
    from river import optim as river_optim

    ours = OnlineLogisticRegression(optimizer=optim.SGD(lr), scale=True)
    river = preprocessing.StandardScaler() | linear_model.LogisticRegression(
        optimizer=river_optim.SGD(lr), intercept_lr=lr)
    worst = 0.0
    for x, y in stream(1500, 9):
        numbers = {k: v for k, v in x.items() if k != "city"}  # River's scaler takes numbers only
        p, q = ours.predict_proba_one(numbers)[True], river.predict_proba_one(numbers)[True]
        assert ours.predict_one(numbers) == river.predict_one(numbers) or abs(q - 0.5) < 1e-9
        worst = max(worst, abs(p - q))
        ours.learn_one(numbers, y)
        river.learn_one(numbers, y)
    assert worst <= 1e-9, worst
    river_w = river["LogisticRegression"].weights
    assert max(abs(ours.weights[k] - river_w[k]) for k in river_w) <= 1e-9


def test_predict_learn_encoded_checks_its_contract_and_changes_nothing_when_it_refuses():
    model = OnlineLogisticRegression(optimizer=optim.SGD(0.1), scale=True)
    model.learn_one({"a": 1.0, "b": 2.0}, True)
    before = snapshot(model)
    good = np.array([0, 1], dtype=np.intp)
    for cols, vals, n, y, says in [
        (np.array([0, 2], dtype=np.intp), np.array([1.0, 1.0]), 2, True, "exist in the feature space"),
        (np.array([0, -1], dtype=np.intp), np.array([1.0, 1.0]), 2, True, "exist in the feature space"),
        (good, np.array([1.0, math.nan]), 2, True, "finite"),
        (good, np.array([1.0, math.inf]), 2, True, "finite"),
        (good.astype(np.int32), np.array([1.0, 1.0]), 2, True, "intp"),
        (good, np.array([1, 1]), 2, True, "float64"),
        (good, np.array([1.0, 1.0]), 3, True, "n entries"),
        (good, np.array([1.0, 1.0]), 2, 2, "label"),
        (good, np.array([1.7e308, -1.7e308]), 2, True, "non-finite"),  # the statistics overflow: refused
    ]:
        with pytest.raises(ValueError, match=says):
            model.predict_learn_encoded(cols, vals, n, y)
        assert snapshot(model) == before
    vals = np.array([3.0, 4.0])
    model.predict_learn_encoded(good, vals, 2, False)
    assert vals.tolist() == [3.0, 4.0]  # not written
    assert model.n_samples_seen == 2


@pytest.mark.parametrize("n_bits", [None, 4])
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_predict_learn_encoded_without_scaling_is_predict_learn_one(optimizer, n_bits):
    """Without standardization too, with a vocabulary or hashing (colliding features summed into one entry,
    as ``encode`` writes them): bitwise predict_learn_one of the dict. (With hashing, the rows' numbers
    only: a hashed indicator's column is not in ``features.columns``, which the helper encodes with.)"""
    model = OnlineLogisticRegression(optimizer=OPTIMIZERS[optimizer](), n_bits=n_bits)
    twin = OnlineLogisticRegression(optimizer=OPTIMIZERS[optimizer](), n_bits=n_bits)
    used = 0
    for x, y in stream(300, 17):
        if n_bits is not None:
            x = {k: v for k, v in x.items() if not isinstance(v, str)}
        row = encoded(model, x)
        used += row is not None
        p = model.predict_learn_encoded(*row, y) if row is not None else model.predict_learn_one(x, y)
        assert p == twin.predict_learn_one(x, y)
    assert used > 250
    assert snapshot(model) == snapshot(twin)


def test_predict_learn_encoded_without_a_compiled_rule_takes_the_general_path():
    """A River optimizer has no compiled twin: the encoded row is learned through the general path."""
    from river import optim as river_optim

    model = OnlineLogisticRegression(optimizer=river_optim.Adam(), scale=True)
    twin = OnlineLogisticRegression(optimizer=river_optim.Adam(), scale=True)
    for x, y in stream(40, 5):
        row = encoded(model, x)
        p = model.predict_learn_encoded(*row, y) if row is not None else model.predict_learn_one(x, y)
        assert p == twin.predict_learn_one(x, y)
    assert model.weights == twin.weights and model.n_samples_seen == twin.n_samples_seen


def test_a_checkpointed_scaled_model_resumes_on_the_compiled_path_bitwise(tmp_path):
    """from_state flags the columns again (numbers standardized, indicators not) before the first
    compiled step: the resumed model and the uninterrupted one stay bitwise equal."""
    from stream_logreg.checkpoints import DirectoryStore

    rows = stream(200, 7)
    model = OnlineLogisticRegression(scale=True)
    for x, y in rows[:100]:
        model.predict_learn_one(x, y)
    with DirectoryStore(tmp_path) as store:
        store.save(model, {})
        resumed = store.latest().model
    for x, y in rows[100:]:
        assert resumed.predict_learn_one(x, y) == model.predict_learn_one(x, y)
    assert snapshot(resumed) == snapshot(model)


CALLER = textwrap.dedent('''
    # cython: language_level=3
    cimport numpy as cnp
    from stream_logreg._kernel cimport predict_learn_row
    cnp.import_array()

    def learn(object step, cnp.ndarray cols, cnp.ndarray vals, cnp.ndarray indptr, cnp.ndarray y, out):
        cdef Py_ssize_t i
        cdef Py_ssize_t* c = <Py_ssize_t*> cnp.PyArray_DATA(cols)
        cdef Py_ssize_t* ip = <Py_ssize_t*> cnp.PyArray_DATA(indptr)
        cdef double* v = <double*> cnp.PyArray_DATA(vals)
        cdef double* yp = <double*> cnp.PyArray_DATA(y)
        for i in range(len(y)):
            out.append(predict_learn_row(step, c + ip[i], v + ip[i], ip[i + 1] - ip[i], yp[i], 1.0))
''')


def test_another_compiled_module_calls_predict_learn_row(tmp_path):
    """The C-level entry point, from a .pyx that cimports it (built here): bitwise predict_learn_one."""
    pytest.importorskip("Cython")
    import stream_logreg

    (tmp_path / "caller.pyx").write_text(CALLER)
    (tmp_path / "setup.py").write_text(textwrap.dedent(f'''
        import numpy
        from Cython.Build import cythonize
        from setuptools import Extension, setup
        setup(ext_modules=cythonize([Extension("caller", ["caller.pyx"], include_dirs=[numpy.get_include()],
              define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")])],
              include_path=[{str(stream_logreg.__path__[0] + "/..")!r}], quiet=True))
    '''))
    subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace", "-q"], cwd=tmp_path, check=True,
                   capture_output=True, timeout=300)
    sys.path.insert(0, str(tmp_path))
    try:
        import caller
    finally:
        sys.path.remove(str(tmp_path))
    rows = stream(300, 13)
    for opt in ("mixture", "sgd", "adagrad"):
        model = OnlineLogisticRegression(optimizer=OPTIMIZERS[opt](), scale=True)
        twin = OnlineLogisticRegression(optimizer=OPTIMIZERS[opt](), scale=True)
        for x, y in rows[:20]:  # every feature seen
            model.predict_learn_one(x, y)
            twin.predict_learn_one(x, y)
        known = [(x, y) for x, y in rows[20:] if encoded(model, x) is not None]
        cols, vals, indptr = [], [], [0]
        for x, _ in known:
            c, v, n = encoded(model, x)
            cols.extend(c[:n])
            vals.extend(v[:n])
            indptr.append(len(cols))
        out: list[float] = []
        caller.learn(model.compiled_step(), np.array(cols, dtype=np.intp), np.array(vals),
                     np.array(indptr, dtype=np.intp), np.array([float(y) for _, y in known]), out)
        model.n_samples_seen += len(out)  # the caller's part
        assert out == [twin.predict_learn_one(x, y) for x, y in known]
        assert snapshot(model) == snapshot(twin)
        with pytest.raises(ValueError, match="label 0 or 1"):
            caller.learn(model.compiled_step(), np.array([0], dtype=np.intp), np.array([1.0]),
                         np.array([0, 1], dtype=np.intp), np.array([0.5]), [])
        assert snapshot(model) == snapshot(twin)
