"""Mini-batches in the compiled pass (batch_size > 1): messages of the common shape decoded straight into the
next mini-batch's encoded rows (`stream_logreg._batch.MiniBatch`, `consumers.state.buffer.Buffer`) and
learned by the model's mini-batch step on them (`predict_learn_encoded_rows`), against the plain Python loop
of the service before it (each message decoded by the codec, the labelled ones buffered as dicts and learned
with `predict_learn_rows` every `batch_size`): the same model (its whole state, bitwise), predictions,
dead letters, counts per partition and checkpoint offsets, over mixed streams split into polls of several
partitions at random, with partitions let go in between."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kafka import TopicPartition
from stream_logreg._batch import MiniBatch
from stream_logreg._json import RowDecoder

from consumers import Learner, LearnerConfig
from consumers.settings import MODEL_SETTINGS, build_model
from consumers.state.buffer import Buffer
from stream_logreg import OnlineLogisticRegression
from stream_logreg.codec import Event, JsonCodec, Reason, encode_event

_FEATURES = [f"f{j}" for j in range(8)]
_KINDS = ["labelled"] * 8 + ["ints", "bools", "unlabelled", "garbage", "bad_label", "huge", "hostile",
                             "repeated", "new", "string", "empty"]
_MODELS = {
    "service": {},
    "sgd": {"optimizer": "sgd"},
    "sgd-scaled": {"optimizer": "sgd", "scale": True},
    "mixture": {"scale": False},
}


def _value(kind: str, rng: random.Random) -> bytes:
    x = {k: rng.gauss(0, 2) for k in rng.sample(_FEATURES, rng.randint(1, len(_FEATURES)))}
    y = rng.random() > 0.5
    if kind == "labelled":
        return encode_event(x, y, id=f"e{rng.randrange(1000)}" if rng.random() < 0.5 else None)
    if kind == "ints":
        return orjson.dumps({"x": {k: rng.randint(-5, 5) for k in x}, "y": int(y)})
    if kind == "bools":
        return orjson.dumps({"id": rng.randrange(100), "y": y, "x": {k: rng.random() > 0.5 for k in x}})
    if kind == "unlabelled":
        return encode_event(x, None, f"u{rng.randrange(1000)}")
    if kind == "garbage":
        return b"{not json"
    if kind == "bad_label":
        return orjson.dumps({"x": x, "y": 7})
    if kind == "huge":  # finite, but the update would not be: the whole batch is refused
        return orjson.dumps({"x": {"f0": 1e308, "f1": -1e308}, "y": 1})
    if kind == "hostile":  # a labelled message with a byte changed: most are invalid, some are not
        value = bytearray(encode_event(x, y))
        value[rng.randrange(len(value))] = rng.choice(b'{}[]":,.-eE0159 \\\x00\xfftfn')
        return bytes(value)
    if kind == "repeated":  # the codec keeps the last value of a repeated key
        return b'{"x": {"f0": 1.5, "f1": 2, "f0": -3.25}, "y": 1}'
    if kind == "new":  # a feature the model has not met (its batch creates it)
        return encode_event({f"n{rng.randrange(6)}": 1.0, "f0": 0.5}, y)
    if kind == "string":  # an indicator feature: the codec's way
        return encode_event({"f0": 0.5, "city": rng.choice(["Paris", "Oslo"])}, y)
    return encode_event({}, y)


class _Record:
    """A kafka-python-like record (what ``Source.record`` hands on)."""

    def __init__(self, tp: TopicPartition, offset: int, value: bytes) -> None:
        self.topic, self.partition, self.offset, self.key, self.value, self.timestamp = (
            tp.topic, tp.partition, offset, None, value, 0)


def _model(kind: str, warm: bool) -> OnlineLogisticRegression:
    defaults = {s.name: s.default for s in MODEL_SETTINGS}
    model = OnlineLogisticRegression() if kind == "library" else build_model({**defaults, **_MODELS[kind]})
    if warm:  # the features known from the start: every message of the common shape compiled
        model.learn_one({k: 0.25 for k in _FEATURES}, True)
    return model


def _state(model: OnlineLogisticRegression) -> tuple:
    arrays, meta = model.state()
    return tuple((k, np.asarray(v).tobytes()) for k, v in sorted(arrays.items())), orjson.dumps(meta)


def _reference(model, ops: list, batch_size: int, publish_labelled: bool) -> tuple:
    """The service's loop before the compiled mini-batches, in plain Python."""
    codec = JsonCodec()
    out, buffer, learned, positions = [], [], Counter(), {}
    for op in ops:
        if op[0] == "drop":
            buffer = [b for b in buffer if b[1] != op[1]]
            continue
        _, tp, records = op
        for r in records:
            ev = codec.decode(r.value)
            if ev.__class__ is not Event:
                out.append(("d", tp.partition, r.offset, ev.reason))
                continue
            if ev.y is None:
                try:
                    p = model.predict_proba_one(ev.x)[True]
                except ValueError:
                    out.append(("d", tp.partition, r.offset, Reason.BAD_VALUE.value))
                    continue
                out.append(("p", tp.partition, r.offset, ev.id, None, np.float64(p).tobytes(),
                            model.n_samples_seen))
                continue
            buffer.append((ev, tp, r.offset))
            if len(buffer) < batch_size:
                continue
            seen = model.n_samples_seen
            try:
                ps = model.predict_learn_rows([b[0].x for b in buffer], [b[0].y for b in buffer])
            except ValueError:
                out += [("d", b[1].partition, b[2], Reason.BAD_VALUE.value) for b in buffer]
                buffer = []
                continue
            if publish_labelled:
                out += [("p", b[1].partition, b[2], b[0].id, b[0].y, np.float64(p).tobytes(), seen)
                        for b, p in zip(buffer, ps, strict=True)]
            learned.update(b[1] for b in buffer)
            buffer = []
        positions[tp] = records[-1].offset + 1
    first: dict = {}
    for _, tp, offset in buffer:
        first.setdefault(tp, offset)
    return out, dict(learned), {**positions, **first}, len(buffer)


def _learner(tmp_path, model, batch_size: int, publish_labelled: bool) -> tuple[Learner, list]:
    cfg = LearnerConfig(bootstrap_servers="k:9092", topics=["t"], group_id="g", checkpoint_dir=str(tmp_path),
                        predictions_topic="p", publish_labelled=publish_labelled, batch_size=batch_size)
    learner = Learner(cfg)
    learner._state.model = model
    out: list = []
    learner._outputs.prediction = lambda r, ev, p, n, cid: out.append(
        ("p", r.partition, r.offset, ev.id, ev.y, np.float64(p).tobytes(), n))
    learner._outputs.dead_letter = lambda r, why, detail: out.append(("d", r.partition, r.offset, why))
    return learner, out


def _run(learner: Learner, ops: list) -> None:
    state = learner._state
    for op in ops:
        if op[0] == "drop":
            state.buffer.drop({op[1]})
        else:
            _, tp, records = op
            learner._process(tp, records, [r.value for r in records])


def _ops(program: list, seed: int) -> list:
    """The polls (partition, kinds) and drops (partition) of ``program`` as records of consecutive offsets."""
    rng = random.Random(seed)
    offsets: Counter = Counter()
    ops: list = []
    for step in program:
        tp = TopicPartition("t", step[1])
        if step[0] == "drop":
            ops.append(("drop", tp))
            continue
        kinds = step[2]
        records = [_Record(tp, offsets[tp] + k, _value(kind, rng)) for k, kind in enumerate(kinds)]
        offsets[tp] += len(records)
        ops.append(("poll", tp, records))
    return ops


_STEP = st.one_of(
    st.tuples(st.just("poll"), st.integers(0, 2), st.lists(st.sampled_from(_KINDS), min_size=1, max_size=40)),
    st.tuples(st.just("drop"), st.integers(0, 2)),
)


@pytest.mark.parametrize("kind", ["service", "sgd", "sgd-scaled", "mixture", "library"])
@settings(max_examples=50, deadline=None)
@given(program=st.lists(_STEP, max_size=14), batch_size=st.integers(2, 64), seed=st.integers(0, 2**16),
       warm=st.booleans(), publish_labelled=st.booleans())
def test_process_same_as_the_python_loop(tmp_path_factory, kind: str, program: list, batch_size: int,
                                         seed: int, warm: bool, publish_labelled: bool) -> None:
    """``Learner._process`` with batch_size 2..64 against the Python loop: the same model (bitwise, its
    whole state), predictions and dead letters (in order), events learned per partition, checkpoint
    offsets (the first buffered event of each partition) and buffered events, across polls, partitions
    and partitions let go."""
    ops = _ops(program, seed)
    model = _model(kind, warm)
    twin = model.clone(include_attributes=True)
    expected = _reference(twin, ops, batch_size, publish_labelled)
    learner, out = _learner(tmp_path_factory.mktemp("ckpt"), model, batch_size, publish_labelled)
    _run(learner, ops)
    state = learner._state
    assert (out, state.learned, state.offsets(), len(state.buffer)) == expected
    assert _state(learner.model) == _state(twin)
    assert learner.stats.learned == sum(expected[1].values())


def test_the_compiled_step_learns_the_common_shape(tmp_path) -> None:
    """The oracle test above is not vacuous: with the features known, every full batch of messages of the
    common shape goes to ``predict_learn_encoded_rows`` (no dict made), one with a message the row decoder
    declines to ``predict_learn_rows``; and the model still equals the Python loop's."""
    rng = random.Random(5)
    model = _model("service", warm=True)
    twin = model.clone(include_attributes=True)
    calls = Counter()
    for name in ("predict_learn_encoded_rows", "predict_learn_rows"):
        method = getattr(model, name)
        setattr(model, name, lambda *a, method=method, name=name: calls.update([name]) or method(*a))
    tp = TopicPartition("t", 0)
    values = [_value("labelled", rng) for _ in range(64)] + [_value("string", rng)] + [
        _value("labelled", rng) for _ in range(31)]
    records = [_Record(tp, k, v) for k, v in enumerate(values)]
    learner, out = _learner(tmp_path, model, 16, False)
    for a in range(0, len(records), 24):  # batches across polls
        learner._process(tp, records[a:a + 24], values[a:a + 24])
    assert calls == {"predict_learn_encoded_rows": 5, "predict_learn_rows": 1}
    assert out == [] and len(learner._state.buffer) == 0 and learner._state.learned == {tp: 96}
    expected = _reference(twin, [("poll", tp, records)], 16, False)
    assert expected[1] == {tp: 96}
    assert _state(model) == _state(twin)


def test_a_vocabulary_changed_under_a_waiting_batch(tmp_path) -> None:
    """Rows encoded against a vocabulary that changed before the batch is learned (the model replaced, as a
    restore or a group-model synchronisation does, or features rolled back): learned from their dicts on
    the model there is then, bitwise ``predict_learn_rows`` of the events' own ``x``."""
    codec = JsonCodec()
    rows = RowDecoder(codec)
    first = OnlineLogisticRegression()
    first.learn_one({"a": 1.0, "b": 1.0, "c": 1.0}, True)
    values = [b'{"x": {"a": 0.5, "c": 2}, "y": 1}', b'{"x": {"b": -1, "a": true}, "y": 0}']
    batch = MiniBatch(4)
    assert batch.take(rows, values, 0, first.features) == 2
    other = OnlineLogisticRegression()  # the same keys at other columns
    other.learn_one({"c": 3.0, "b": 1.0, "a": 2.0}, False)
    twin = other.clone(include_attributes=True)
    p = batch.learn(other)
    q = twin.predict_learn_rows([codec.decode(v).x for v in values], [1, 0])
    assert p.tobytes() == q.tobytes() and _state(other) == _state(twin)
    batch.clear()
    # rolled back: a key gone and another in its column
    model = OnlineLogisticRegression()
    model.learn_one({"a": 1.0}, True)
    mark = model.features.mark()
    model.features.encode({"b": 1.0}, grow=True)
    assert batch.take(rows, [b'{"x": {"b": 2.5}, "y": 1}'], 0, model.features) == 1
    model.features.rollback(mark)
    model.features.encode({"z": 1.0}, grow=True)  # now in b's column
    twin = model.clone(include_attributes=True)
    p = batch.learn(model)
    assert p.tobytes() == twin.predict_learn_rows([{"b": 2.5}], [1]).tobytes()
    assert _state(model) == _state(twin)


def test_buffer_drop_keeps_the_order_of_the_others() -> None:
    rows, model = RowDecoder(JsonCodec()), OnlineLogisticRegression()
    model.learn_one({"a": 1.0}, True)
    buffer = Buffer(12)
    tps = [TopicPartition("t", p) for p in range(3)]
    view = lambda r: r  # noqa: E731
    for round_ in range(2):
        for tp in tps:
            records = [_Record(tp, 10 * round_ + k, encode_event({"a": float(k)}, 1)) for k in range(2)]
            assert buffer.take(rows, [r.value for r in records], 0, model.features, tp, records, view) == 2
    assert buffer.first_offsets() == {tps[0]: 0, tps[1]: 0, tps[2]: 0}
    buffer.drop({tps[1]})
    assert [(r.partition, r.offset) for r in buffer.records(view)] == [
        (0, 0), (0, 1), (2, 0), (2, 1), (0, 10), (0, 11), (2, 10), (2, 11)]
    assert [(tp.partition, k) for tp, k in buffer.counts()] == [(0, 2), (2, 2), (0, 2), (2, 2)]
    assert buffer.batch.rows() == [{"a": float(k)} for k in (0, 1) * 4]
    buffer.drop({tps[0], tps[2]})
    assert len(buffer) == 0 and buffer.first_offsets() == {} and buffer.batch.rows() == []


def test_mini_batch_bounds_and_hostile_input() -> None:
    rows, model = RowDecoder(JsonCodec()), OnlineLogisticRegression()
    model.learn_one({"a": 1.0}, True)
    with pytest.raises(ValueError):
        MiniBatch(0)
    batch = MiniBatch(2)
    values = [encode_event({"a": 1.0}, 1)] * 5
    assert batch.take(rows, values, 0, model.features) == 2  # full: stops
    assert batch.take(rows, values, 2, model.features) == 2
    with pytest.raises(ValueError):
        batch.add({"a": 1.0}, 1, 0)
    with pytest.raises(ValueError):
        batch.take(rows, values, 6, model.features)
    batch.clear()
    assert batch.take(None, values, 0, model.features) == 0  # a codec without a row decoder
    for y in (2, None, "1", 0.5):
        with pytest.raises(ValueError):
            batch.add({"a": 1.0}, y, 0)
    hashed = OnlineLogisticRegression(n_bits=8)
    assert batch.take(rows, values, 0, hashed.features) == 0  # a hashing space: the codec's way


@pytest.mark.parametrize("bad", ["col", "negative", "nan", "inf", "indptr", "start", "label", "dtype"])
def test_predict_learn_encoded_rows_refuses_a_broken_contract(bad: str) -> None:
    model = OnlineLogisticRegression()
    model.learn_one({"a": 1.0, "b": 2.0}, True)
    before = _state(model)
    cols, vals = np.array([0, 1, 1], dtype=np.intp), np.array([1.0, 2.0, 3.0])
    indptr, y = np.array([0, 2, 3], dtype=np.intp), [1, 0]
    if bad == "col":
        cols[2] = 2
    elif bad == "negative":
        cols[0] = -1
    elif bad in ("nan", "inf"):
        vals[1] = np.nan if bad == "nan" else np.inf
    elif bad == "indptr":
        indptr[1] = 4
    elif bad == "start":
        indptr[0] = 1
    elif bad == "label":
        y = [1, 2]
    else:
        cols = cols.astype(np.int32)
    with pytest.raises(ValueError):
        model.predict_learn_encoded_rows(cols, vals, indptr, y)
    assert _state(model) == before


@settings(max_examples=60, deadline=None)
@given(data=st.data(), kind=st.sampled_from(["service", "sgd", "sgd-scaled", "mixture", "library"]))
def test_predict_learn_encoded_rows_is_predict_learn_rows(data, kind: str) -> None:
    """Bitwise the dict rows' ``predict_learn_rows``: predictions, model, and a refusal (huge values)."""
    model = _model(kind, warm=True)
    twin = model.clone(include_attributes=True)
    value = st.one_of(st.floats(-1e3, 1e3), st.sampled_from([1e308, -1e308, 0.0]))
    xs = data.draw(st.lists(st.dictionaries(st.sampled_from(_FEATURES), value, max_size=8), min_size=1,
                            max_size=40))
    ys = data.draw(st.lists(st.booleans(), min_size=len(xs), max_size=len(xs)))
    columns = model.features.columns
    cols = np.array([columns[k] for x in xs for k in x], dtype=np.intp)
    vals = np.array([float(v) for x in xs for v in x.values()])
    indptr = np.cumsum([0] + [len(x) for x in xs]).astype(np.intp)
    try:
        expected = twin.predict_learn_rows(xs, ys)
    except ValueError:
        expected = None
    if expected is None:
        with pytest.raises(ValueError):
            model.predict_learn_encoded_rows(cols, vals, indptr, ys)
    else:
        assert model.predict_learn_encoded_rows(cols, vals, indptr, ys).tobytes() == expected.tobytes()
    assert _state(model) == _state(twin)


def _numpy_standardize_entries(cols, vals, stats, numeric, before):
    """The oracle: the numpy formulas of the model's mini-batch standardization before it was compiled
    (River's ``StandardScaler.learn_many`` then ``transform_many`` on CSR entries)."""
    from stream_logreg.model import _MAX, _check_standardized, _merge_statistics, _standardize

    st_ = stats[cols]
    if before is not None:
        before[:] = np.clip(_standardize(vals, st_[:, 1], st_[:, 2], numeric[cols] != 0.0), -_MAX, _MAX)
    mask = numeric[cols] != 0.0
    if not mask.any():
        return vals, None
    c, v = cols[mask], vals[mask]
    stat_cols, inv = np.unique(c, return_inverse=True)
    count = np.bincount(inv).astype(np.float64)
    k = len(stat_cols)
    lo, hi = np.full(k, np.inf), np.full(k, -np.inf)
    np.minimum.at(lo, inv, v)
    np.maximum.at(hi, inv, v)
    const = lo == hi
    # A column of one value has that value as its mean: the first of its entries (0.0 and -0.0 are one value,
    # and np.minimum.at's pick between them is not specified).
    first = v[np.unique(inv, return_index=True)[1]]
    with np.errstate(over="ignore", invalid="ignore"):
        mean = np.where(const, first, np.bincount(inv, v / count[inv], minlength=k))
        var = np.where(const, 0.0, np.bincount(inv, np.square(v - mean[inv]) / count[inv], minlength=k))
    merged = _merge_statistics(stats[stat_cols], count, mean, var)
    out = vals.copy()
    out[mask] = _standardize(v, merged[inv, 1], merged[inv, 2], True)
    _check_standardized(merged, out)
    return out, (stat_cols, merged)


_FLOAT = st.one_of(st.floats(-1e3, 1e3), st.sampled_from([0.0, -0.0, 1.0, 1e154, -1e200, 1e308, 5e-324]))


@settings(max_examples=300, deadline=None)
@given(data=st.data(), n_cols=st.integers(1, 12))
def test_standardize_entries_is_the_numpy_formula(data, n_cols: int) -> None:
    """``_batch.standardize_entries`` against the numpy formulas it replaces, bitwise: the entries, the
    statistics learned, the predictions' entries and the refusals; running statistics fresh or not, columns
    of one value, indicators, values near the largest double."""
    from stream_logreg._batch import standardize_entries

    numeric = np.array(data.draw(st.lists(st.sampled_from([0.0, 1.0, 1.0]), min_size=n_cols,
                                          max_size=n_cols)))
    stats = np.array([[data.draw(st.sampled_from([0.0, 1.0, 3.0, 1e6])), data.draw(_FLOAT),
                       abs(data.draw(_FLOAT))] for _ in range(n_cols)])
    rows = data.draw(st.lists(st.lists(st.integers(0, n_cols - 1), unique=True, max_size=n_cols),
                              min_size=1, max_size=20))
    cols = np.array([j for r in rows for j in r], dtype=np.intp)
    vals = np.array([data.draw(_FLOAT) for _ in cols])
    got_before, want_before = np.full(len(cols), 7.0), np.full(len(cols), 7.0)
    try:
        want = _numpy_standardize_entries(cols, vals, stats, numeric, want_before)
    except ValueError as exc:
        want = str(exc)
    try:
        got = standardize_entries(cols, vals, stats, numeric, got_before)
    except ValueError as exc:
        got = str(exc)
    assert got_before.tobytes() == want_before.tobytes()
    if isinstance(want, str) or want[1] is None:
        assert got == want if isinstance(want, str) else (got[0] is vals and got[1] is None)
        return
    (out, (cs, merged)), (want_out, (want_cs, want_merged)) = got, want
    assert out.tobytes() == want_out.tobytes()
    order = np.argsort(cs)
    assert cs[order].tolist() == want_cs.tolist()
    assert merged[order].tobytes() == want_merged.tobytes()
