"""The compiled decode-and-learn pass (`stream_logreg._stream.learn_values`) against the plain Python loop it
replaces: the same predictions, the same stops, the same model, bitwise, with and without the row decoder
(`stream_logreg._json.RowDecoder`) in the loop, for the model the service builds by default and the
library's; and the learner's `_process` on both paths (compiled with batch_size 1, Python with
publish_labelled) gives the same model and metrics."""

from __future__ import annotations

import random

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kafka import TopicPartition
from stream_logreg._stream import learn_values

from consumers import Learner, LearnerConfig
from consumers.settings import MODEL_SETTINGS, build_model
from stream_logreg import OnlineLogisticRegression, optim
from stream_logreg.codec import Event, JsonCodec, Rejection, encode_event

# Messages of every kind the loop meets: labelled, unlabelled, undecodable, invalid, and values that the model
# refuses (a finite value so large that the update is not finite).
_KINDS = st.sampled_from(["labelled", "labelled", "labelled", "unlabelled", "garbage", "bad_label", "huge",
                          "hostile", "repeated", "ints", "new"])


def _value(kind: str, rng: random.Random) -> bytes:
    x = {f"f{j}": rng.gauss(0, 1) for j in range(rng.randint(1, 5))}
    if kind == "labelled":
        return encode_event(x, rng.random() > 0.5)
    if kind == "unlabelled":
        return encode_event(x)
    if kind == "garbage":
        return b"{not json"
    if kind == "bad_label":
        return orjson.dumps({"x": x, "y": 7})
    if kind == "hostile":  # a labelled message with a byte changed: most are invalid, some are not
        value = bytearray(encode_event(x, rng.random() > 0.5))
        value[rng.randrange(len(value))] = rng.choice(b'{}[]":,.-eE0159 \\\x00\xfftfn')
        return bytes(value)
    if kind == "repeated":  # the codec keeps the last value of a repeated key
        return b'{"x": {"f0": 1.5, "f1": 2, "f0": -3.25}, "y": 1}'
    if kind == "ints":  # integers beyond 2^53, and beyond 64 bits
        big = rng.choice([2**53 + 1, 10**18 - 1, 2**64 + 1, -(2**63)])
        return f'{{"x": {{"f0": {big}}}, "y": 0}}'.encode()
    if kind == "new":  # a feature the model has not met
        return encode_event({f"n{rng.randrange(10**6)}": 1.0, "f0": 0.5}, rng.random() > 0.5)
    return orjson.dumps({"x": {"f0": 1e308, "f1": 1e308}, "y": 1})


def _python_loop(decode, learn, values):
    """The reference: decode each value, learn the labelled ones, note where the caller would step in."""
    ps, ys, stops = [], [], []
    for i, value in enumerate(values):
        ev = decode(value)
        if ev.__class__ is not Event or ev.y is None:
            stops.append((i, ev, None))
            continue
        try:
            p = learn(ev.x, ev.y)
        except ValueError as exc:
            stops.append((i, ev, type(exc)))
            continue
        ps.append(p)
        ys.append(ev.y)
    return ps, ys, stops


def _compiled_loop(decode, learn, values, rows=None, model=None):
    ps, ys, stops = [], [], []
    i = 0
    while True:
        i, ev, exc = learn_values(decode, learn, values, i, ps, ys, Event, rows, model)
        if i == len(values):
            assert ev is None and exc is None
            return ps, ys, stops
        stops.append((i, ev, None if exc is None else type(exc)))
        i += 1


def _scored_loops(decode, a, b, values, rows):
    """Both loops with unlabelled events scored: the reference predicts each with ``predict_proba_one``;
    the compiled pass (``score``) predicts those of the common shape itself, and those it stops at are
    predicted here. Each: ``(i, x as floats, id, p)``, in order, and the loop's own results."""
    def scored(ev, i, model, out):
        try:
            p = model.predict_proba_one(ev.x)[True]
        except ValueError:
            return
        out.append((i, {k: float(v) for k, v in ev.x.items()}, ev.id, np.float64(p).tobytes()))

    expected_scores, got_scores = [], []
    ps, ys, stops = [], [], []
    for i, value in enumerate(values):
        ev = decode(value)
        if ev.__class__ is Event and ev.y is None:
            scored(ev, i, a, expected_scores)
            continue
        if ev.__class__ is not Event:
            stops.append((i, ev, None))
            continue
        try:
            p = a.predict_learn_one(ev.x, ev.y)
        except ValueError as exc:
            stops.append((i, ev, type(exc)))
            continue
        ps.append(p)
        ys.append(ev.y)
    expected = (ps, ys, stops)

    def score(i, x, id_, p):
        got_scores.append((i, x, id_, np.float64(p).tobytes()))
        in_pass.append(i)
        return False

    in_pass: list[int] = []

    ps, ys, stops = [], [], []
    i = 0
    while True:
        i, ev, exc = learn_values(decode, b.predict_learn_one, values, i, ps, ys, Event, rows, b, score)
        if i == len(values):
            break
        if ev.__class__ is Event and ev.y is None and exc is None:
            scored(ev, i, b, got_scores)
        else:
            stops.append((i, ev, None if exc is None else type(exc)))
        i += 1
    return expected, expected_scores, (ps, ys, stops), got_scores, in_pass


@pytest.mark.parametrize("kind", ["library", "service", "uncompiled"])
@settings(max_examples=40, deadline=None)
@given(kinds=st.lists(_KINDS, max_size=40), seed=st.integers(0, 2**16), ids=st.booleans())
def test_scoring_same_as_the_python_loop(kind: str, kinds: list[str], seed: int, ids: bool) -> None:
    """With ``score``, the unlabelled events of the common shape are predicted in the pass, bitwise
    ``predict_proba_one``, in order, with their ids; everything else as without."""
    rng = random.Random(seed)
    values = [_value(k, rng) for k in kinds]
    if ids:
        values = [v.replace(b'{"x"', b'{"id":"e%d","x"' % j, 1) for j, v in enumerate(values)]
    values.insert(0, encode_event({f"f{j}": 0.25 for j in range(5)}, 1))  # the features known
    codec = JsonCodec()
    a, b = _model(kind), _model(kind)
    expected, expected_scores, got, got_scores, in_pass = _scored_loops(codec.decoder(), a, b, values,
                                                                        codec.row_decoder())
    assert got == expected and got_scores == expected_scores
    # the events of the common shape were scored in the pass (not a pass that declines them all)
    unlabelled = {i + 1 for i, k in enumerate(kinds) if k == "unlabelled"}
    assert set(in_pass) >= unlabelled if kind != "uncompiled" else not in_pass
    assert _weights(a) == _weights(b)
    assert a.coef.tobytes() == b.coef.tobytes() and a.intercept == b.intercept


def _model(kind: str = "library"):
    """The library's default model, the one ``stream-logreg consume`` builds by default (``service``), or
    one without a compiled step (``uncompiled``: L1 outside FTRL)."""
    if kind == "service":
        return build_model({s.name: s.default for s in MODEL_SETTINGS})
    if kind == "uncompiled":
        return OnlineLogisticRegression(optimizer=optim.SGD(0.1), l1=0.01)
    return LearnerConfig(bootstrap_servers="k:9092", topics=["t"], group_id="g",
                         checkpoint_dir="/nonexistent").make_model()


def _weights(model) -> bytes:
    probe = {f"f{j}": 0.5 - j for j in range(5)}
    return np.float64(model.predict_proba_one(probe)[True]).tobytes() + str(model.n_samples_seen).encode()


@pytest.mark.parametrize("kind", ["library", "service", "uncompiled"])
@pytest.mark.parametrize("rows", [False, True], ids=["codec", "row-decoder"])
@settings(max_examples=40, deadline=None)
@given(kinds=st.lists(_KINDS, max_size=40), seed=st.integers(0, 2**16))
def test_same_as_the_python_loop(rows: bool, kind: str, kinds: list[str], seed: int) -> None:
    rng = random.Random(seed)
    values = [_value(k, rng) for k in kinds]
    codec = JsonCodec()
    decode = codec.decoder()
    a, b = _model(kind), _model(kind)
    assert (b.compiled_step() is None) == (kind == "uncompiled")
    expected = _python_loop(decode, a.predict_learn_one, values)
    if rows:
        got = _compiled_loop(decode, b.predict_learn_one, values, codec.row_decoder(), b)
    else:
        got = _compiled_loop(decode, b.predict_learn_one, values)
    assert got == expected
    assert _weights(a) == _weights(b)
    assert a.coef.tobytes() == b.coef.tobytes() and a.intercept == b.intercept


def test_the_row_decoder_takes_the_common_shape() -> None:
    """Not a decoder that declines everything: known features of the common shape are learned from their
    bytes by the compiled step (the codec is never asked), bitwise as ``predict_learn_one``."""
    codec = JsonCodec()
    a, b = _model("service"), _model("service")
    for m in (a, b):
        m.learn_one({"f0": 0.0, "f1": 0.0}, True)
    values = [b'{"x": {"f1": 2.5, "f0": -1}, "y": true, "id": "a"}', b'{"x": {"f0": 1e-3}, "y": 0}']
    ps: list[float] = []
    ys: list[int] = []
    assert learn_values(decode_never, decode_never, values, 0, ps, ys, Event, codec.row_decoder(),
                        b) == (2, None, None)
    expected = [a.predict_learn_one({"f1": 2.5, "f0": -1}, 1), a.predict_learn_one({"f0": 1e-3}, 0)]
    assert ys == [1, 0] and np.array(ps).tobytes() == np.array(expected).tobytes()
    assert b.n_samples_seen == a.n_samples_seen == 3
    assert b.coef.tobytes() == a.coef.tobytes() and _weights(a) == _weights(b)


def decode_never(value):
    raise AssertionError("the codec's way was taken")


def test_stops_and_resumes() -> None:
    values = [encode_event({"a": 1.0}, 1), b"oops", encode_event({"a": 2.0}), encode_event({"a": 3.0}, 0)]
    ps: list[float] = []
    ys: list[int] = []
    calls = []

    def learn(x, y):
        calls.append(x["a"])
        return 0.25

    decode = JsonCodec().decoder()
    i, ev, exc = learn_values(decode, learn, values, 0, ps, ys, Event)
    assert (i, exc) == (1, None) and isinstance(ev, Rejection)
    i, ev, exc = learn_values(decode, learn, values, 2, ps, ys, Event)
    assert (i, ev, exc) == (2, Event({"a": 2.0}, None, None), None)
    assert learn_values(decode, learn, values, 3, ps, ys, Event) == (4, None, None)
    assert (ps, ys, calls) == ([0.25, 0.25], [1, 0], [1.0, 3.0])
    assert learn_values(decode, learn, values, 99, ps, ys, Event) == (4, None, None)  # past the end


def test_refusal_is_returned_not_raised_and_other_errors_propagate() -> None:
    values = [encode_event({"a": 1.0}, 1)]

    def refuse(x, y):
        raise ValueError("no")

    i, ev, exc = learn_values(JsonCodec().decoder(), refuse, values, 0, [], [], Event)
    assert i == 0 and ev.y == 1 and isinstance(exc, ValueError)

    def broken(x, y):
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError):
        learn_values(JsonCodec().decoder(), broken, values, 0, [], [], Event)
    with pytest.raises(TypeError):
        learn_values(JsonCodec().decoder(), broken, values, 0, [], [], dict)


class _Record:
    """A kafka-python-like record (what ``Source.record`` hands on)."""

    def __init__(self, offset: int, value: bytes) -> None:
        self.topic, self.partition, self.offset, self.key, self.value, self.timestamp = (
            "t", 0, offset, None, value, 0)


@pytest.mark.parametrize("seed", [1, 2])
def test_process_paths_agree(tmp_path, seed: int) -> None:
    """``Learner._process`` on the compiled path (batch_size 1) and on the Python path (publish_labelled
    makes it take that one) ends with the same model, metrics, counts and dead letters."""
    rng = random.Random(seed)
    kinds = rng.choices(["labelled"] * 6 + ["unlabelled", "garbage", "bad_label", "huge"], k=300)
    values = [_value(k, rng) for k in kinds]
    records = [_Record(i, v) for i, v in enumerate(values)]
    tp = TopicPartition("t", 0)
    results = []
    for publish in (False, True):
        cfg = LearnerConfig(bootstrap_servers="k:9092", topics=["t"], group_id="g",
                            checkpoint_dir=str(tmp_path / f"c{publish}"), predictions_topic="p",
                            publish_labelled=publish)
        learner = Learner(cfg)
        sent = []
        learner._outputs.prediction = lambda r, ev, p, n, cid, sent=sent: sent.append(("p", r.offset, p))
        learner._outputs.dead_letter = lambda r, why, detail, sent=sent: sent.append(("d", r.offset, why))
        for a in range(0, len(values), 64):
            learner._process(tp, records[a:a + 64], values[a:a + 64])
        snap = learner.stats.snapshot()
        dead = [s for s in sent if s[0] == "d"]
        labelled = [s for s in sent if s[0] == "p" and kinds[s[1]] == "labelled"]
        results.append((_weights(learner.model), snap["consumed"], snap["learned"], snap["scored"],
                        snap["rejected"], snap["rolling_log_loss"], dead, learner._state.positions[tp]))
        if publish:  # the Python path published every labelled event learned, with its prediction
            assert len(labelled) == snap["learned"]
    assert results[0] == results[1]
    assert results[0][2] > 0 and results[0][6]  # something learned, something dead-lettered


def _store_state(store) -> tuple:
    arrays, meta = store.to_state()
    return tuple((k, np.asarray(v).tobytes()) for k, v in sorted(arrays.items())), orjson.dumps(meta)


@pytest.mark.parametrize("model", [{}, {"optimizer": "sgd"}, {"optimizer": "sgd", "scale": True},
                                   {"scale": False}], ids=["service", "sgd", "sgd-scaled", "mixture"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_process_paths_agree_with_delayed_labels(tmp_path, seed: int, model: dict) -> None:
    """With delayed labels, the compiled pass predicts unlabelled events of the common shape itself: against
    the Python path (publish_labelled) the same model, predictions published (bitwise), join store (its
    checkpointed state), metrics and dead letters, with labels waiting for their events, duplicates, events
    without id and integer ids, interleaved with labelled events and rejections."""
    rng = random.Random(seed)
    ids = [f"e{j}" for j in range(120)]
    batches = []  # (topic, values)
    labelled = {0}  # the offsets of the labelled events in "t"
    events = set()  # the unlabelled events of the common shape
    n_t = 0
    for b in range(12):
        values = [] if b else [encode_event({f"f{j}": 0.5 for j in range(5)}, 1)]  # the features known
        for _ in range(rng.randint(1, 40)):
            kind = rng.choice(["event"] * 6 + ["labelled", "labelled", "garbage", "huge", "new", "no_id",
                                               "int_id", "huge_event"])
            x = {f"f{j}": rng.gauss(0, 3) for j in range(rng.randint(0, 5))}
            if kind == "event":
                values.append(encode_event(x, None, rng.choice(ids)))
                events.add(values[-1])
            elif kind == "no_id":
                values.append(encode_event(x))
            elif kind == "int_id":
                values.append(encode_event(x, None, rng.randrange(10**6)))
            elif kind == "huge_event":  # its update refused, its label waiting or not
                values.append(orjson.dumps({"x": {"f0": 1e308, "f1": -1e308}, "id": rng.choice(ids)}))
            elif kind == "new":
                new = {f"n{rng.randrange(10**6)}": 1.0, "f0": 0.5}
                values.append(encode_event(new, None, rng.choice(ids)))
            else:
                labelled.add(n_t + len(values))
                values.append(_value(kind, rng))
        n_t += len(values)
        batches.append(("t", values))
        labels = [orjson.dumps({"id": rng.choice(ids), "y": rng.randint(0, 1)})
                  for _ in range(rng.randint(0, 30))]
        if labels:
            batches.append(("labels", labels))
    settings_ = {s.name: s.default for s in MODEL_SETTINGS}
    results = []
    for publish in (False, True):
        cfg = LearnerConfig(bootstrap_servers="k:9092", topics=["t"], group_id="g",
                            checkpoint_dir=str(tmp_path / f"c{publish}"), predictions_topic="p",
                            publish_labelled=publish, labels_topic="labels")
        learner = Learner(cfg)
        learner._state.model = build_model({**settings_, **model})
        decoded = []
        learner._decode = lambda v, decode=learner._decode, decoded=decoded: decoded.append(v) or decode(v)
        sent = []
        learner._outputs.prediction = lambda r, ev, p, n, cid, sent=sent: sent.append(
            ("p", r.topic, r.offset, ev.id, np.float64(p).tobytes(), n))
        learner._outputs.dead_letter = lambda r, why, detail, sent=sent: sent.append(("d", r.offset, why))
        offsets = {"t": 0, "labels": 0}
        for topic, values in batches:
            records = [_Record(offsets[topic] + k, v) for k, v in enumerate(values)]
            for r in records:
                r.topic, r.timestamp = topic, r.offset
            offsets[topic] += len(values)
            learner._process(TopicPartition(topic, 0), records, values)
        learner._labels.publish()
        snap = learner.stats.snapshot()
        scored = [s for s in sent if s[0] == "p" and s[3] is not None and s[2] not in labelled]
        results.append((_weights(learner.model), learner.model.n_samples_seen, snap["consumed"],
                        snap["learned"], snap["scored"], snap["rejected"], snap["join"],
                        snap["delayed_predicted"], snap["delayed_log_loss_total"],
                        snap["delayed_correct_total"],
                        sorted(learner._state.learned.items()), [s for s in sent if s[0] == "d"],
                        [s for s in sent if s[0] == "p" and s[2] not in labelled],
                        _store_state(learner._labels.store)))
        assert scored and snap["join"]["joined"] > 0  # something scored and joined
        if not publish:  # the compiled pass scored the events of the common shape (all but a new feature's)
            assert sum(v in events for v in decoded) < len(events) / 4
    assert results[0] == results[1]
