"""Delayed labels end to end (issue 13): events scored at once, learned exactly once when their label comes.

Against the real broker: the join counters (labels before events, duplicates, unknown ids, TTL expiry, a
full store), SIGKILLs with restarts (the model equals an offline replay of the joins in label order), the
co-partitioning check (exit 2). Without a broker: the label codec, the checkpoint's extra part (verified,
hostile input refused), the settings.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from polling import read_topic, wait_for
from test_consumer import MODEL, Running, same_model
from test_consumer import make_config as consumer_config

from consumers import ConfigError, Learner, LearnerConfig
from consumers.labels import EXTRA_NAME, Labels, decode_handoff, decode_label, handoff_value
from consumers.state.join_store import JoinStore, Taken
from consumers.stats import LearnerStats
from stream_logreg import OnlineLogisticRegression
from stream_logreg.checkpoints import (
    CheckpointCorrupt,
    CheckpointError,
    DirectoryStore,
    decode_manifest,
    encode_checkpoint,
    encode_manifest,
    restore,
)
from stream_logreg.codec import Event, JsonCodec, Reason, encode_event

ROOT = Path(__file__).resolve().parents[1]
def fresh_model() -> OnlineLogisticRegression:
    return OnlineLogisticRegression.from_config({**OnlineLogisticRegression().config(), **MODEL})


def events(n: int, seed: int) -> list[tuple[str, dict, int]]:
    """(id, x, y) of ``n`` events whose label depends on their features."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        x = {"a": rng.gauss(0, 1), "b": rng.gauss(0, 1), "city": rng.choice(["paris", "lyon", "nice"])}
        y = int(x["a"] - 0.5 * x["b"] + (0.7 if x["city"] == "nice" else 0) + rng.gauss(0, 0.3) > 0)
        out.append((f"e{seed}-{i}", x, y))
    return out


def label(id_: str, y: int) -> bytes:
    return orjson.dumps({"id": id_, "y": y})


#: How old a record's timestamp may be here. The broker deletes the records older than its retention
#: (7 days by default) at each retention check (every 5 minutes), whatever their offsets: records with such
#: timestamps can vanish in the middle of a test, which then waits for them in vain.
MAX_RECORD_AGE_MS = 24 * 3600 * 1000


def recent_ms() -> int:
    """A record time of a few minutes ago (far within the broker's retention, not in its future)."""
    return int(time.time() * 1000) - 10 * 60 * 1000


def send(bootstrap: str, records: list[tuple[str, bytes | None, str | None, int | None]]) -> None:
    """Send ``(topic, value, key, timestamp_ms)`` in order; wait for every acknowledgement. Refuses a
    timestamp older than :data:`MAX_RECORD_AGE_MS` (the broker's retention check could delete it mid-test)."""
    oldest = int(time.time() * 1000) - MAX_RECORD_AGE_MS
    assert all(ts is None or ts >= oldest for *_, ts in records), "record times within the retention"
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    try:
        futures = [producer.send(t, value=v, key=None if k is None else k.encode(), timestamp_ms=ts)
                   for t, v, k, ts in records]
        producer.flush(timeout=60)
        for f in futures:
            f.get(timeout=60)
    finally:
        producer.close()


# --------------------------------------------------------------------------------------------------
# No broker


@pytest.mark.parametrize(("value", "reason"), [
    (None, Reason.TOMBSTONE), (b"{", Reason.NOT_JSON), (b"[1]", Reason.NOT_OBJECT),
    (b'{"y": 1}', Reason.BAD_ID), (b'{"id": 1.5, "y": 1}', Reason.BAD_ID), (b'{"id": "a"}', Reason.BAD_LABEL),
    (b'{"id": "a", "y": 2}', Reason.BAD_LABEL), (b'{"id": "a", "y": "1"}', Reason.BAD_LABEL),
    (b'{"id": "a", "y": null}', Reason.BAD_LABEL), (b"x" * 2000, Reason.OVERSIZE),
])
def test_a_bad_label_is_a_rejection_with_its_reason(value: bytes | None, reason: Reason) -> None:
    got = decode_label(value, max_bytes=1000)
    assert not isinstance(got, tuple) and got.reason == reason and got.detail


def test_labels_decode_like_the_event_codec() -> None:
    assert decode_label(b'{"id": 7, "y": true}') == ("7", 1)
    assert decode_label(b'{"key": "k", "label": 0.0}', "key", "label") == ("k", 0)
    assert decode_label(b'{"id": "a", "y": false}') == ("a", 0)
    assert JsonCodec().decode(encode_event({"a": 1.0}, id=7)).id == decode_label(b'{"id": 7, "y": 1}')[0]


_WS = st.sampled_from(["", "", "", "", "", "", " ", " ", " ", "\n", "\t ", "\r\n"] * 3 + ["\x0b", "\x00"])
_KEYS = st.sampled_from(['"id"', '"y"', '"ts"', '"i\\u0064"', '"\u00efd"', '"Id"', "id", '""'])
_VALUES = st.one_of(
    st.sampled_from(["0", "1", "true", "false", "1.0", "-0", "01", "2", "1e0", "0.", "null", '"1"', "[1]",
                     '{"y": 1}', '"a\\"b"', '"\u00e9t\u00e9"', '"\\u0061"', '"tab\tin"', "12", "-1"]),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=127), max_size=12).map(
        lambda t: orjson.dumps(t).decode()))


_PLAIN_TEXT = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=127), max_size=12).map(
    lambda t: orjson.dumps(t).decode())
_Y_TEXT = st.sampled_from(["0", "1", "0", "1", "1.0", "0.", "01", "1e0", "0E1", "10", "true", "-0", '"1"'])


@st.composite
def _label_like(draw: Any) -> bytes:
    """Bytes near the plain form ``{"id": "...", "y": 0|1}``: the two members in either order, near-miss
    values, extra or repeated members, whitespace, garbage after, a byte changed."""
    members = [('"id"', draw(_PLAIN_TEXT if draw(st.integers(0, 3)) else _VALUES)),
               ('"y"', draw(_Y_TEXT if draw(st.integers(0, 3)) else _VALUES))]
    if draw(st.booleans()):
        members.reverse()
    if draw(st.integers(0, 3)) == 0:  # an extra or a repeated member
        members.insert(draw(st.integers(0, 2)), (draw(_KEYS), draw(st.one_of(_Y_TEXT, _PLAIN_TEXT))))
    body = ",".join(f"{k}{draw(_WS)}:{draw(_WS)}{v}{draw(_WS)}" for k, v in members)
    text = f"{draw(_WS)}{{{draw(_WS)}{body}}}{draw(_WS)}{draw(st.sampled_from([''] * 9 + ['x', '}', ',']))}"
    raw = text.encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 4)) == 0 and raw:  # a byte changed at random
        i = draw(st.integers(0, len(raw) - 1))
        raw = raw[:i] + bytes([draw(st.integers(0, 255))]) + raw[i + 1:]
    return raw


@settings(max_examples=600, deadline=None)
@given(st.lists(_label_like(), max_size=6), st.sampled_from([(b"id", b"y"), (b"y", b"id"), (b"ts", b"y"),
                                                              (b"id", b"id")]))
def test_the_compiled_label_reader_reads_what_orjson_reads_or_declines(values: list, fields: tuple) -> None:
    from stream_logreg._json import plain_labels

    out: list = []
    n = len(values)
    stop = plain_labels(values, 0, *fields, 200, list(range(n)), "lb", 3, list(range(10, 10 + n)), out)
    assert 0 <= stop <= n and len(out) == stop
    id_field, y_field = (f.decode() for f in fields)
    for i, (id_, y, ts, topic, partition, offset) in enumerate(out):
        doc = orjson.loads(values[i])  # accepted: orjson reads exactly this object, with these types
        assert doc == {id_field: id_, y_field: y} and type(id_) is str and type(y) is int and len(doc) == 2
        assert (ts, topic, partition, offset) == (i, "lb", 3, 10 + i)
    if stop < n:  # declined: not the plain form (a bad label, another form, or a plain one read by orjson)
        with contextlib.suppress(orjson.JSONDecodeError):
            doc = orjson.loads(values[stop])
            plain = (type(doc) is dict and len(doc) == 2 and type(doc.get(id_field)) is str
                     and doc.get(id_field).isascii() and doc.get(id_field).isprintable()
                     and not {'"', "\\"} & set(doc.get(id_field)) and doc.get(y_field) in (0, 1)
                     and type(doc.get(y_field)) is int and fields[0] != fields[1])
            if plain:  # its canonical forms, either order, are read by the compiled reader
                assert values[stop] not in (orjson.dumps({id_field: doc[id_field], y_field: doc[y_field]}),
                                            orjson.dumps({y_field: doc[y_field], id_field: doc[id_field]}))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=127,
                                                         blacklist_characters='"\\'), max_size=20),
                          st.integers(0, 1)), min_size=1, max_size=20))
def test_plain_labels_are_read_by_the_compiled_reader_as_orjson_reads_them(labels: list) -> None:
    from stream_logreg._json import plain_labels

    values = [orjson.dumps({"id": i, "y": y}) for i, y in labels]
    out: list = []
    n = len(values)
    assert plain_labels(values, 0, b"id", b"y", 1 << 20, [7] * n, "lb", 0, [0] * n, out) == n
    assert [(i, y) for i, y, *_ in out] == labels
    assert out == [(i, y, 7, "lb", 0, 0) for i, y in labels]


def _store_with_entries() -> JoinStore:
    store = JoinStore(max_pending=100, label_ttl_ms=60_000)
    store.add_event("a", {"f": 1.5, "g": "x"}, 0.25, version=3, ts=1_000)
    store.add_label("b", 1, ts=2_000)
    store.add_event("c", {"f": -2.0}, 0.75, version=4, ts=3_000)
    store.add_label("c", 0, ts=3_500)
    return store


def test_the_join_store_rides_in_the_checkpoint(tmp_path: Path) -> None:
    model = fresh_model()
    model.learn_one({"f": 1.0}, 1)
    store = _store_with_entries()
    with DirectoryStore(tmp_path) as ds:
        ds.save(model, {"offsets": {"ev:0": 3, "lb:0": 2}}, extras={EXTRA_NAME: store.to_state()})
        ckpt = ds.latest(expect_config=model.config())
    back = JoinStore.from_state(*ckpt.extras[EXTRA_NAME])
    assert back.counters == store.counters and back.to_state()[1] == store.to_state()[1]
    for name, a in store.to_state()[0].items():
        assert back.to_state()[0][name].tobytes() == a.tobytes(), name
    # the same bytes through encode_checkpoint/restore (the Kafka store's path)
    npz, manifest = encode_checkpoint("00000000000000000042", model, {},
                                      extras={EXTRA_NAME: store.to_state()})
    again = restore(decode_manifest(manifest), npz)
    assert JoinStore.from_state(*again.extras[EXTRA_NAME]).counters == store.counters
    # a checkpoint without extras has none
    npz, manifest = encode_checkpoint("00000000000000000043", model)
    assert restore(decode_manifest(manifest), npz).extras == {}


def test_extras_that_would_not_read_back_are_refused_at_save() -> None:
    model = fresh_model()
    for extras in ({"bad name": ({}, {})}, {"x": ({"a": np.array([np.nan])}, {})},
                   {"x": ({"a": np.array([1], dtype=np.int32)}, {})}, {"x": ({"a": np.zeros((2, 2))}, {})},
                   {"x": ({}, {"t": (1, 2)})}):
        with pytest.raises(CheckpointError):
            encode_checkpoint("00000000000000000001", model, {}, extras=extras)


def _tamper(body: dict, npz: bytes, change: Any) -> tuple[dict, bytes]:
    body = orjson.loads(orjson.dumps(body))
    change(body)
    return decode_manifest(encode_manifest(body)), npz


@pytest.mark.parametrize("change", [
    lambda b: b["extras"]["join_store"]["arrays"].pop("p"),  # a member the manifest does not list
    lambda b: b["extras"]["join_store"]["arrays"]["p"].__setitem__(0, "|O"),  # an object dtype
    lambda b: b["extras"]["join_store"]["arrays"]["p"].__setitem__(1, 99),  # another length
    lambda b: b["extras"]["join_store"]["arrays"]["p"].__setitem__(1, 2**60),  # a huge length
    lambda b: b["extras"]["join_store"]["arrays"].__setitem__("zz", ["<i8", 0]),  # a listed array not there
    lambda b: b.__setitem__("extras", [1]),
    lambda b: b["extras"].__setitem__("../x", {"meta": {}, "arrays": {}}),
])
def test_a_tampered_extra_part_is_corrupt(change: Any) -> None:
    model = fresh_model()
    npz, manifest = encode_checkpoint("00000000000000000001", model, {},
                                      extras={EXTRA_NAME: _store_with_entries().to_state()})
    body, npz = _tamper(decode_manifest(manifest), npz, change)
    with pytest.raises(CheckpointCorrupt):
        restore(body, npz)


def test_a_non_finite_extra_float_is_corrupt() -> None:
    import hashlib
    import io

    from stream_logreg import checkpoints as ck

    members, meta, metadata, described = ck._model_state(fresh_model(), {},
                                                          {"x": ({"v": np.array([0.5, 1.0])}, {})})
    members["extras.x.v"] = np.array([0.5, np.inf])  # written behind the checks' back
    buffer = io.BytesIO()
    ck._write_npz(buffer, members, False)
    npz = buffer.getvalue()
    body = ck._body("00000000000000000001", ck._utc_now(), meta, metadata, len(npz),
                    hashlib.sha256(npz).hexdigest(), described)
    with pytest.raises(CheckpointCorrupt, match="non-finite"):
        restore(decode_manifest(encode_manifest(body)), npz)


def test_a_restored_store_takes_the_new_bounds() -> None:
    cfg = make_config("k:9092", "ev", "/tmp/unused", labels_topic="lb", label_ttl=5.0)
    labels = Labels(cfg, LearnerStats())
    labels.restore({EXTRA_NAME: _store_with_entries().to_state()})
    assert labels.store.label_ttl_ms == 5_000 and labels.store.counters["pending_events"] == 1
    labels.restore(None)
    assert len(labels.store) == 0


def make_config(bootstrap: str, topic: str, ckpt: Any, **overrides: Any) -> LearnerConfig:
    return consumer_config(bootstrap, topic, ckpt, **{"checkpoint_every_messages": 50, **overrides})


@pytest.mark.parametrize(("overrides", "name"), [
    ({"labels_topic": "ev"}, "labels_topic"), ({"labels_topic": "lb", "batch_size": 4}, "batch_size"),
    ({"labels_topic": "lb", "label_ttl": math.inf}, "label_ttl"),
    ({"labels_topic": "lb", "expired_policy": "keep"}, "expired_policy"),
    ({"labels_topic": "lb", "max_pending": 0}, "max_pending"),
    ({"labels_topic": "lb", "label_y_field": "id"}, "label_y_field"),
])
def test_label_settings_are_checked(overrides: dict, name: str) -> None:
    with pytest.raises(ConfigError, match=f"^{name}:"):
        make_config("k:9092", "ev", "/tmp/c", **overrides)


def test_the_range_assignor_is_pinned_with_a_labels_topic() -> None:
    from kafka.coordinator.assignors.range import RangePartitionAssignor

    cfg = make_config("k:9092", "ev", "/tmp/c", labels_topic="lb")
    assert cfg.consumer_kwargs()["partition_assignment_strategy"] == (RangePartitionAssignor,)
    assert cfg.input_topics == ["ev", "lb"]


class _Rec:
    def __init__(self, value: bytes, partition: int = 0, offset: int = 0, timestamp: int = 5,
                 topic: str = "lb") -> None:
        self.value, self.partition, self.offset, self.timestamp = value, partition, offset, timestamp
        self.topic, self.key = topic, None


def _labels(cfg: LearnerConfig) -> Labels:
    return Labels(cfg, LearnerStats())


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["event", "label"]), st.integers(0, 15), st.integers(0, 1),
                          st.integers(0, 400)), max_size=60),
       st.integers(1, 8), st.integers(1, 300), st.integers(2, 12), st.sampled_from(["drop", "negative"]))
def test_the_scorer_keeps_and_learns_as_labels_event_one_by_one(feed: list, batch: int, ttl: int,
                                                                 max_pending: int, policy: str) -> None:
    """Labels.scorer (the compiled pass's callbacks: events deferred to one add_events, an event whose label
    waits joined at once and learned by the pass) against Labels.event then Labels.learn event by event: the
    same model bit for bit, the same store (state, counters), the same learned counts, in polled batches of
    each topic."""
    from collections import Counter

    cfg = make_config("k:9092", "ev", "/tmp/c", labels_topic="lb", label_ttl=ttl / 1000,
                      expired_policy=policy, max_pending=max_pending)
    fast, slow = _labels(cfg), _labels(cfg)
    m_fast, m_slow = fresh_model(), fresh_model()
    tp = TopicPartition("ev", 0)
    counts: dict = {}
    slow_counts: Counter = Counter()
    codec = JsonCodec()
    offsets = {"ev": 0, "lb": 0}
    runs: list[tuple[str, list]] = []  # consecutive records of one topic, cut every `batch`
    for kind, k, y, ts in feed:
        topic = "ev" if kind == "event" else "lb"
        value = (encode_event({"a": k / 7, "b": float(ts % 5)}, None, f"id{k}") if kind == "event"
                 else label(f"id{k}", y))
        rec = _Rec(value, 0, offsets[topic], ts, topic)
        offsets[topic] += 1
        if not runs or runs[-1][0] != topic or len(runs[-1][1]) >= batch:
            runs.append((topic, []))
        runs[-1][1].append(rec)

    def learn_joined(joined: list) -> None:
        counts[tp] = counts.get(tp, 0) + len(fast.learn(m_fast, joined, None))

    for topic, recs in runs:
        if topic == "lb":
            fast.learn(m_fast, fast.records(recs, None), None)
            slow.learn(m_slow, slow.records(recs, None), None)
            continue
        score, given, (waiting, label_type, joined, refused) = fast.scorer(recs, m_fast, None, counts, tp,
                                                                           learn_joined, None, lambda r: r)
        for j, r in enumerate(recs):  # as the compiled pass calls them
            ev = codec.decode(r.value)
            p = m_fast.predict_proba_one(ev.x)[True]
            y = joined(j, ev.id, p) if ev.id is not None and type(waiting.get(ev.id)) is label_type else -1
            if y < 0:
                score(j, ev.x, ev.id, p)
            else:
                try:
                    m_fast.predict_learn_one(ev.x, y)
                except ValueError:
                    refused(j, ev.x, ev.id, y)
            p = m_slow.predict_proba_one(ev.x)[True]
            now = slow.event(r, ev.id, ev.x, p, m_slow.n_samples_seen)
            slow_counts[tp] += len(slow.learn(m_slow, [(r, jn) for jn in now], None))
        assert given() == len(recs)
    assert same_model(m_fast, m_slow) and m_fast.n_samples_seen == m_slow.n_samples_seen
    assert str(fast.store.to_state()) == str(slow.store.to_state())
    assert counts.get(tp, 0) == slow_counts[tp] and fast._ps == slow._ps and fast._ys == slow._ys


def test_a_hand_off_record_brings_the_entry_back_as_it_was_and_a_repeat_learns_nothing() -> None:
    cfg = make_config("k:9092", "ev", "/tmp/c", labels_topic="lb")
    sender, receiver = _labels(cfg), _labels(cfg)
    x = {"age": 42.5, "city": "Paris", "vip": True}
    value = encode_event(x, None, "a1")
    sender.event(_Rec(value, 1, 17, 1_000, "ev"), "a1", JsonCodec().decode(value).x, 0.8125, 3)
    sender.store.add_label("b2", 1, ts=1_100, topic="lb", partition=1, offset=4)
    sender.store.add_label("c3", 1, ts=1_100, topic="lb", partition=0, offset=5)  # stays: not partition 1
    taken = sender.store.take({("ev", 1), ("lb", 1)})
    assert len(sender.store) == 1
    sender.store.take({("lb", 0)})
    assert [t.id for t in taken] == ["a1", "b2"] and len(sender.store) == 0
    records = [_Rec(handoff_value(t), 1, 100 + i, t.ts) for i, t in enumerate(taken)]
    rejected: list = []
    joined = receiver.records(records + records, lambda *a: rejected.append(a))  # handed off twice
    assert rejected == [] and joined == []
    c = receiver.store.counters
    assert c["pending_events"] == 1 and c["pending_labels"] == 1 and c["duplicate_handoffs"] == 2
    [(_, j)] = receiver.records([_Rec(label("a1", 1), 1, 200, 2_000)], None)
    # the prediction made when the event was scored, its origin and features, exactly
    assert (j.x, j.p, j.version, j.latency_ms) == (x, 0.8125, 3, 1_000)
    assert (j.topic, j.partition, j.offset) == ("ev", 1, 17)


@pytest.mark.parametrize("mangle", [
    lambda v: v[:-2],                                                  # not JSON
    lambda v: v.replace(b'"partition":1', b'"partition":0'),           # read from another partition
    lambda v: v.replace(b'"p":0.5', b'"p":1.5'),                       # not a probability
    lambda v: v.replace(b'"version":2', b'"version":-2'),
    lambda v: v.replace(b'"id":"a1"', b'"id":7'),
    lambda v: v.replace(b'"f":1.0', b'"f":null'),                      # an event the codec refuses
    lambda v: v.replace(b'"id":"a1"}}', b'"id":"zz"}}'),               # the record of another event
    lambda v: v.replace(b'"a1"}}', b'"a1","pad":"' + b"a" * (3 << 20) + b'"}}'),  # too large (else good)
])
def test_a_malformed_hand_off_record_is_rejected(mangle: Any) -> None:
    t = Taken("a1", {"f": 1.0}, None, 5, "ev", 1, 9, None, 0.5, 2)
    good = handoff_value(t)
    codec = JsonCodec().decoder()
    assert decode_handoff(good, 1, codec)[0] == "event"
    bad = mangle(good)
    assert bad != good
    labels = _labels(make_config("k:9092", "ev", "/tmp/c", labels_topic="lb"))
    rejected: list = []
    assert labels.records([_Rec(bad, 1)], lambda *a: rejected.append(a)) == []
    assert len(rejected) == 1 and len(labels.store) == 0


# --------------------------------------------------------------------------------------------------
# Against the broker, in process


def test_early_duplicate_orphan_and_expired_labels_are_counted(kafka_bootstrap: str, kafka_topic: Any,
                                                                tmp_path: Path) -> None:
    ev, lb, preds, dlq = kafka_topic(), kafka_topic(), kafka_topic(), kafka_topic()
    data = events(10, seed=1)
    t0 = recent_ms()
    records = [(ev, encode_event(x, None, id_), id_, t0 + 100 * i) for i, (id_, x, _) in enumerate(data)]
    records.insert(0, (lb, label("early", 1), "early", t0))  # a label before its event
    records.append((ev, encode_event({"a": 1.0}, None, "early"), "early", t0 + 1_500))
    records += [(lb, label(id_, y), id_, t0 + 2_000 + i) for i, (id_, _, y) in enumerate(data[:5])]
    records += [(lb, label(data[0][0], 1), data[0][0], t0 + 2_100),  # a duplicate
                (lb, label("nobody", 1), "nobody", t0 + 2_200),  # no event will come
                (lb, b'{"id": "e1-9", "y": 7}', "e1-9", t0 + 2_300)]  # a bad label
    send(kafka_bootstrap, records)
    cfg = make_config(kafka_bootstrap, ev, tmp_path / "ckpt", labels_topic=lb, label_ttl=10.0,
                      predictions_topic=preds, dead_letter_topic=dlq)
    run = Running(Learner(cfg))
    try:
        wait_for(lambda: run.stats()["consumed"] >= len(records), 60, "every record consumed")
        snap = run.stats()
        assert snap["join"]["joined"] == 6 and snap["n_samples_seen"] == 6
        assert snap["join"]["duplicate_labels"] == 1 and snap["join"]["pending_labels"] == 1
        assert snap["join"]["pending_events"] == 5 and snap["rejected"]["bad_label"] == 1
        # stream time passes the TTL: the 5 unlabelled events expire, the label without event is an orphan
        send(kafka_bootstrap, [(ev, encode_event({"a": 0.0}, None, "late"), "late", t0 + 60_000)])
        snap = wait_for(lambda: (s := run.stats())["join"].get("expired_events") == 5 and s, 60, "expiry")
        assert snap["join"]["orphan_labels"] == 1 and snap["join"]["pending_events"] == 1
        assert snap["n_samples_seen"] == 6  # drop policy: nothing learned from the expired
        assert sum(snap["join_latency_counts"]) == 6
    finally:
        run.stop()
    # the delayed metrics judge the predictions published at scoring time
    ys = {id_: y for id_, _, y in data[:5]} | {"early": 1}
    published = {orjson.loads(r.value)["id"]: orjson.loads(r.value)["p"] for r in read_topic(kafka_bootstrap,
                                                                                           preds, 12)}
    loss = sum(-math.log(max(published[i] if y else 1 - published[i], 1e-15)) for i, y in ys.items())
    hits = sum((published[i] > 0.5) == bool(y) for i, y in ys.items())
    snap = run.stats()
    assert snap["delayed_predicted"] == 6 and snap["delayed_correct_total"] == hits
    assert math.isclose(snap["delayed_log_loss_total"], loss, rel_tol=1e-12)
    dead = read_topic(kafka_bootstrap, dlq, 1)
    assert [dict(d.headers)["reason"] for d in dead] == [b"bad_label"]


def test_a_full_store_drops_the_oldest_and_learns_them_as_negatives(kafka_bootstrap: str, kafka_topic: Any,
                                                                    tmp_path: Path) -> None:
    ev, lb = kafka_topic(), kafka_topic()
    data = events(20, seed=2)
    send(kafka_bootstrap, [(ev, encode_event(x, None, id_), id_, None) for id_, x, _ in data])
    cfg = make_config(kafka_bootstrap, ev, tmp_path / "ckpt", labels_topic=lb, max_pending=4,
                      expired_policy="negative")
    run = Running(Learner(cfg))
    try:
        snap = wait_for(lambda: (s := run.stats())["consumed"] >= 20 and s, 60, "every event consumed")
        assert snap["join"]["dropped_full_events"] == 16 and snap["join"]["pending_events"] == 4
        assert snap["n_samples_seen"] == 16 and snap["delayed_predicted"] == 0
    finally:
        run.stop()
    # offline: the 16 oldest learned as negatives, in order
    model = fresh_model()
    for _, x, _ in data[:16]:
        model.learn_one(JsonCodec().decode(encode_event(x)).x, 0)
    assert same_model(run.learner.model, model)


def test_a_learner_catching_up_reads_both_topics_in_step_and_joins_every_event(
        kafka_bootstrap: str, kafka_topic: Any, tmp_path: Path, kafka_client: str) -> None:
    """A backlog of events and of their labels (each 500 ms of record time after its event) read by a learner
    whose store holds 400 entries and whose TTL is 2 s of record time: read as fetched, one topic runs
    ahead of the other (whole fetches of labels fill the store, whole fetches of events expire before their
    labels are read); read in step (consumers.pacing), every event is joined, nothing dropped or expired."""
    ev, lb = kafka_topic(), kafka_topic()
    data = events(3000, seed=7)
    t0 = recent_ms()
    send(kafka_bootstrap, [(ev, encode_event(x, None, id_), id_, t0 + 10 * i) for i, (id_, x, _) in
                           enumerate(data)])
    send(kafka_bootstrap, [(lb, label(id_, y), id_, t0 + 10 * i + 500) for i, (id_, _, y) in enumerate(data)])
    cfg = make_config(kafka_bootstrap, ev, tmp_path / "ckpt", labels_topic=lb, label_ttl=2.0, max_pending=400,
                      max_poll_records=100, checkpoint_every_messages=1000, kafka_client=kafka_client)
    run = Running(Learner(cfg))

    def where() -> str:  # what the reading looked like, if it stops (and whether the records are still there)
        learner = run.learner
        pacer, source = learner._pacer, learner._source
        tps = sorted(source.assignment())
        with contextlib.closing(KafkaConsumer(bootstrap_servers=kafka_bootstrap)) as c:
            starts = c.beginning_offsets([TopicPartition(t, 0) for t in (ev, lb)])
        return (f"every record consumed: {run.stats()['consumed']} consumed; paused {source.paused}, held "
                f"{pacer.held}, last read {pacer._time} next {pacer._next}, ends {pacer._end}, fetched ends "
                f"{[source.highwater(tp) for tp in tps]}, positions {learner._state.positions}, log starts "
                f"{starts}")

    try:
        wait_for(lambda: run.stats()["consumed"] >= 6000, 120, where)
        # the worker counts a batch's records before it publishes what they did (model, join counters)
        snap = wait_for(lambda: (s := run.stats())["n_samples_seen"] >= 3000 and s, 10,
                        lambda: f"3000 learned: {run.stats()['join']}")
        join = snap["join"]
        assert (join["joined"], snap["n_samples_seen"]) == (3000, 3000), join
        assert join["dropped_full_events"] == join["dropped_full_labels"] == 0, join
        assert join["expired_events"] == join["orphan_labels"] == 0, join
        assert join["pending_events"] == join["pending_labels"] == 0, join
        assert snap["held_back"] == 0  # caught up: nothing held back any more
    finally:
        run.stop()


def test_labels_not_co_partitioned_exit_2(kafka_bootstrap: str, kafka_topic: Any, tmp_path: Path) -> None:
    ev, lb = kafka_topic(2), kafka_topic(1)
    for labels_topic, message in ((lb, "same number of partitions"), ("no-such-labels", "do not exist")):
        proc = subprocess.run(
            [sys.executable, "-m", "consumers", "consume", "--bootstrap-servers", kafka_bootstrap,
             "--topics", ev, "--labels-topic", labels_topic, "--group-id", "g", "--checkpoint-dir",
             str(tmp_path / "ckpt"), "--metrics-port", "0", "--connect-timeout", "20"],
            capture_output=True, text=True, timeout=60, cwd=ROOT,
        )
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert message in proc.stderr and "--labels-topic" in proc.stderr


# --------------------------------------------------------------------------------------------------
# SIGKILLs and restarts (the service as a subprocess)


def _start(kafka_bootstrap: str, ev: str, lb: str, ckpt: Path, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "consumers", "consume", "--bootstrap-servers", kafka_bootstrap, "--topics",
           ev, "--labels-topic", lb, "--group-id", f"g-{ev}", "--checkpoint-dir", str(ckpt),
           "--checkpoint-every-messages", "15",
           "--checkpoint-every-seconds", "1", "--metrics-port", "0", "--session-timeout-ms", "6000",
           "--consumer-config", "heartbeat_interval_ms=500", "--consumer-config", "fetch_max_wait_ms=100",
           "--max-poll-records", "7", "--optimizer", "sgd", "--lr", "0.05"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log.open("ab"))


def _sigterm(proc: subprocess.Popen, log: Path, starts: int) -> None:
    """Stop the service gracefully once it runs (its ``starts``-th assignment is in the log): exit 0."""
    wait_for(lambda: log.read_text().count("consumers.learner: assigned") >= starts, 60, "the service runs")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, log.read_text()[-3000:]


def _latest(ckpt: Path) -> Any:
    try:
        return DirectoryStore(ckpt, read_only=True).latest()
    except CheckpointError:
        return None


def _offset(ckpt: Path, topic: str) -> int:
    c = _latest(ckpt)
    return -1 if c is None else c.metadata["offsets"].get(f"{topic}:0", -1)


def test_sigkills_while_labels_arrive_learn_each_join_once_in_label_order(
        kafka_bootstrap: str, kafka_topic: Any, tmp_path: Path) -> None:
    ev, lb = kafka_topic(), kafka_topic()
    ckpt, log = tmp_path / "ckpt", tmp_path / "learner.log"
    data = events(120, seed=3)
    rng = random.Random(3)
    send(kafka_bootstrap, [(ev, encode_event(x, None, id_), id_, None) for id_, x, _ in data])
    # labels in random order, some twice, some never, some for ids no event has
    labelled = rng.sample(data, 100)
    labels = [(id_, y) for id_, _, y in labelled] + [(f"ghost-{i}", 1) for i in range(10)]
    labels += rng.sample([(id_, y) for id_, _, y in labelled], 15)
    rng.shuffle(labels)
    proc = _start(kafka_bootstrap, ev, lb, ckpt, log)
    try:
        wait_for(lambda: _offset(ckpt, ev) == len(data), 120, "every event scored and checkpointed")
        chunks = [labels[i : i + 25] for i in range(0, len(labels), 25)]
        sent = 0
        for chunk in chunks:
            send(kafka_bootstrap, [(lb, label(i, y), i, None) for i, y in chunk])
            sent += len(chunk)
            target = sent - rng.randrange(0, 20)
            alive = proc
            wait_for(lambda t=target, p=alive: p.poll() is None and _offset(ckpt, lb) >= t, 120,
                     f"labels to {target}")
            proc.send_signal(signal.SIGKILL)  # anywhere after that checkpoint
            proc.wait(30)
            proc = _start(kafka_bootstrap, ev, lb, ckpt, log)
        wait_for(lambda: _offset(ckpt, lb) == len(labels), 120, "every label checkpointed")
        _sigterm(proc, log, len(chunks) + 1)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    final = _latest(ckpt)
    store = JoinStore.from_state(*final.extras[EXTRA_NAME])
    assert store.counters["joined"] == 100 and store.counters["duplicate_labels"] == 15
    assert store.counters["pending_events"] == 20 and store.counters["pending_labels"] == 10
    # offline: each event with a label learned once, in the order of the first label of its id
    codec, by_id, seen = JsonCodec(), {id_: x for id_, x, _ in data}, set()
    model = OnlineLogisticRegression.from_config(final.model.config())
    for id_, y in labels:
        if id_ in by_id and id_ not in seen:
            seen.add(id_)
            ev_ = codec.decode(encode_event(by_id[id_], None, id_))
            assert isinstance(ev_, Event)
            model.learn_one(ev_.x, y)
    assert same_model(final.model, model)


def test_the_join_metrics_are_exposed() -> None:
    from types import SimpleNamespace

    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from consumers.metrics import make_registry

    cfg = make_config("k:9092", "ev", "/tmp/c", labels_topic="lb", max_pending=2)
    stats = LearnerStats()
    labels = Labels(cfg, stats)
    model = fresh_model()
    labels.store.add_event("a", {"f": 1.0}, 0.7, version=0, ts=1_000)
    labels.learn(model, [(None, j) for j in labels.store.add_label("a", 1, ts=3_500)], None)
    labels.store.add_label("a", 1, ts=3_600)
    for i in range(3):
        labels.store.add_event(f"b{i}", {"f": 2.0}, 0.4, version=1, ts=4_000)
    labels.publish()
    text = generate_latest(make_registry(SimpleNamespace(stats=stats, model=model), process_metrics=False))
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text.decode()) for s in f.samples}
    assert samples[("stream_logreg_joined_total", ())] == 1
    assert samples[("stream_logreg_duplicate_labels_total", ())] == 1
    assert samples[("stream_logreg_pending_events", ())] == 2
    assert samples[("stream_logreg_join_store_full_total", (("kind", "event"),))] == 1
    assert samples[("stream_logreg_join_latency_seconds_bucket", (("le", "1.0"),))] == 0
    assert samples[("stream_logreg_join_latency_seconds_bucket", (("le", "10.0"),))] == 1
    assert samples[("stream_logreg_delayed_log_loss_total", ())] == pytest.approx(-math.log(0.7))
    assert samples[("stream_logreg_delayed_accuracy", ())] == 1
    assert model.n_samples_seen == 1


def test_the_delayed_demo_accounts_for_every_event() -> None:
    proc = subprocess.run([sys.executable, "-m", "consumers", "demo", "--delayed-labels", "--n", "400",
                           "--label-delay", "30", "--label-ttl", "60"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    lines = {line[:22].strip(): line[22:] for line in proc.stdout.splitlines()}
    joined = int(lines["joined"].split()[0].replace(",", ""))
    expired = int(lines["expired"].split()[0].replace(",", ""))
    assert joined + expired == 400 and expired > 0
    assert f"({joined:,} judged)" in lines["delayed log loss"]
    assert "(400 judged)" in lines["immediate log loss"]


def test_sigkills_with_events_and_labels_in_random_order_learn_each_labelled_event_once(
        kafka_bootstrap: str, kafka_topic: Any, tmp_path: Path) -> None:
    ev, lb = kafka_topic(), kafka_topic()
    ckpt, log = tmp_path / "ckpt", tmp_path / "learner.log"
    rng = random.Random(4)
    data = events(80, seed=4)
    labelled = rng.sample(data, 70)
    # each label lands anywhere: before or after its event; plus duplicates and labels of unknown ids
    records = [(ev, encode_event(x, None, id_), id_) for id_, x, _ in data]
    for id_, _, y in labelled + rng.sample(labelled, 5) + [(f"ghost-{i}", None, 1) for i in range(5)]:
        records.insert(rng.randrange(len(records) + 1), (lb, label(id_, y), id_))
    n_labels = sum(t == lb for t, _, _ in records)
    proc = _start(kafka_bootstrap, ev, lb, ckpt, log)
    try:
        sent = {ev: 0, lb: 0}
        for start in range(0, len(records), 30):
            chunk = records[start : start + 30]
            send(kafka_bootstrap, [(t, v, k, None) for t, v, k in chunk])
            for t, _, _ in chunk:
                sent[t] += 1
            want = {t: n - rng.randrange(0, 8) for t, n in sent.items()}
            alive = proc
            wait_for(lambda w=want, p=alive: p.poll() is None
                     and all(_offset(ckpt, t) >= n for t, n in w.items()), 120, f"offsets {want}")
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            proc = _start(kafka_bootstrap, ev, lb, ckpt, log)
        wait_for(lambda: _offset(ckpt, ev) == len(data) and _offset(ckpt, lb) == n_labels, 120,
                 "every record checkpointed")
        _sigterm(proc, log, -(-len(records) // 30) + 1)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    final = _latest(ckpt)
    c = JoinStore.from_state(*final.extras[EXTRA_NAME]).counters
    assert final.model.n_samples_seen == 70 and c["joined"] == 70
    assert c["duplicate_labels"] == 5 and c["duplicate_events"] == 0
    assert c["pending_events"] == 10 and c["pending_labels"] == 5
    assert sum(final.metadata["learned"].values()) == 70


def test_a_rebalance_hands_pending_joins_to_the_new_owner(kafka_bootstrap: str, kafka_topic: Any,
                                                          tmp_path: Path) -> None:
    ev, lb = kafka_topic(2), kafka_topic(2)
    data = events(60, seed=5)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=5)

    def put(topic: str, items: list[tuple[int, bytes, str]]) -> None:
        for partition, value, key in items:
            producer.send(topic, value=value, key=key.encode(), partition=partition)
        producer.flush(timeout=60)

    try:
        put(ev, [(i % 2, encode_event(x, None, id_), id_) for i, (id_, x, _) in enumerate(data)])
        put(lb, [(i % 2, label(id_, y), id_) for i, (id_, _, y) in enumerate(data[:10])])  # some labels now
        group = {"group_id": f"g-{ev}"}
        a = Running(Learner(make_config(kafka_bootstrap, ev, tmp_path / "a", labels_topic=lb, **group)))
        b = None
        try:
            wait_for(lambda: a.stats()["consumed"] >= 70, 60, "member a read everything")
            assert a.stats()["join"]["pending_events"] == 50
            b = Running(Learner(make_config(kafka_bootstrap, ev, tmp_path / "b", labels_topic=lb, **group)))
            wait_for(lambda: len(a.stats()["assigned"]) == 2 and len(b.stats()["assigned"]) == 2, 60,
                     "each member owns one partition of each topic")
            assert {k.rsplit(":", 1)[1] for k in a.stats()["assigned"]} == {"0"} or {
                k.rsplit(":", 1)[1] for k in a.stats()["assigned"]} == {"1"}  # partition i of both
            put(lb, [(i % 2, label(id_, y), id_) for i, (id_, _, y) in enumerate(data)][10:])
            wait_for(lambda: a.stats()["join"]["joined"] + b.stats()["join"]["joined"] == 60, 60,
                     "every event joined")
            sa, sb = a.stats(), b.stats()
            # kafka-python revokes every partition at a rebalance (eager): a hands off all it waits for,
            # then reads back those of the partition it keeps
            assert sa["join"]["handed_off"] >= 25 and sa["n_samples_seen"] + sb["n_samples_seen"] == 60
            assert sa["join"]["pending_events"] == sb["join"]["pending_events"] == 0
            assert sa["join"]["duplicate_labels"] == sb["join"]["duplicate_labels"] == 0
        finally:
            a.stop()
            if b is not None:
                b.stop()
    finally:
        producer.close()


def test_entries_left_for_partitions_now_another_members_are_handed_off_once(kafka_bootstrap: str,
                                                                             kafka_topic: Any,
                                                                             tmp_path: Path) -> None:
    """A stop keeps the pending joins in the checkpoint; restarted without those partitions, the learner
    hands them to their owner. Restarted again from a copy of that checkpoint (as after a crash between the
    hand-off and the next checkpoint), it hands them off again: dropped by the owner as duplicates, every
    event learned once."""
    import shutil

    ev, lb = kafka_topic(2), kafka_topic(2)
    data = events(40, seed=6)
    send(kafka_bootstrap, [(ev, encode_event(x, None, id_), id_, None) for id_, x, _ in data])
    group = {"group_id": f"g-{ev}", "labels_topic": lb}
    a = Running(Learner(make_config(kafka_bootstrap, ev, tmp_path / "a", **group)))
    wait_for(lambda: a.stats()["join"].get("pending_events") == 40, 60, "member a holds every event")
    a.stop()  # a stop hands nothing off: the checkpoint holds all 40
    shutil.copytree(tmp_path / "a", tmp_path / "a-copy")
    b = Running(Learner(make_config(kafka_bootstrap, ev, tmp_path / "b", **group)))
    members: list[Running] = [b]
    try:
        wait_for(lambda: len(b.stats()["assigned"]) == 4, 60, "b owns every partition")
        a = Running(Learner(make_config(kafka_bootstrap, ev, tmp_path / "a", **group)))
        members.append(a)
        wait_for(lambda: (ja := a.stats()["join"]).get("handed_off", 0) > 0 and ja["pending_events"]
                 + ja["handed_off"] == 40 and b.stats()["join"]["pending_events"] == ja["handed_off"], 60,
                 "a hands b the events of b's partition")
        handed = a.stats()["join"]["handed_off"]
        a.stop()
        members.remove(a)
        a = Running(Learner(make_config(kafka_bootstrap, ev, tmp_path / "a-copy", **group)))  # the copy
        members.append(a)
        wait_for(lambda: len(a.stats()["assigned"]) == 2 and len(b.stats()["assigned"]) == 2
                 and a.stats()["join"].get("handed_off", 0) > 0
                 and a.stats()["join"]["pending_events"] + b.stats()["join"]["pending_events"] == 40, 60,
                 "the copy hands off again, each event pending once")
        send(kafka_bootstrap, [(lb, label(id_, y), id_, None) for id_, _, y in data])
        wait_for(lambda: sum(m.stats()["join"]["joined"] for m in members) == 40, 60, "every event joined")
        snaps = [m.stats() for m in members]
        assert sum(s["n_samples_seen"] for s in snaps) == 40
        assert sum(s["join"]["duplicate_handoffs"] for s in snaps) >= handed  # the repeat, dropped
        assert sum(s["join"]["duplicate_labels"] + s["join"]["duplicate_events"] for s in snaps) == 0
        assert sum(s["join"]["pending_events"] for s in snaps) == 0
    finally:
        for m in members:
            m.stop()


def test_the_kafka_state_store_carries_the_join_store(kafka_bootstrap: str, kafka_topic: Any) -> None:
    from consumers.state.kafka_store import KafkaStore

    topic = kafka_topic(config={"cleanup.policy": "compact"})
    model = fresh_model()
    model.learn_one({"f": 1.0}, 1)
    store = _store_with_entries()
    with KafkaStore(kafka_bootstrap, "member-1", topic=topic, timeout=60.0) as ks:
        ks.save(model, {"offsets": {"ev:0": 3, "lb:0": 2}}, extras={EXTRA_NAME: store.to_state()})
    with KafkaStore(kafka_bootstrap, "member-1", topic=topic, timeout=60.0) as ks:
        ckpt = ks.latest(expect_config=model.config())
    back = JoinStore.from_state(*ckpt.extras[EXTRA_NAME])
    assert back.counters == store.counters and back.to_state()[1] == store.to_state()[1]
    assert same_model(ckpt.model, model)


def test_exactly_once_with_sigkills_and_rebalances_learns_each_labelled_event_once(
        kafka_bootstrap: str, kafka_topic: Any, tmp_path: Path) -> None:
    """Two members, exactly-once, events and labels in random order, a random member SIGKILLed after each
    chunk (and restarted: a rebalance, hand-offs in transactions): every labelled event learned once across
    the group, and a read_committed reader sees each event's prediction once."""
    from collections import Counter

    from test_consumer import read_status, start_service
    from test_exactly_once import EOS, read_committed
    from test_state_kafka import state, stop

    ev, lb, preds = kafka_topic(2), kafka_topic(2), kafka_topic(2)
    group = f"g-{ev}"
    rng = random.Random(7)
    data = events(80, seed=7)
    labelled = rng.sample(data, 70)
    records = [(ev, encode_event(x, None, id_), id_) for id_, x, _ in data]
    for id_, _, y in labelled + [(f"ghost-{i}", None, 1) for i in range(3)]:
        records.insert(rng.randrange(len(records) + 1), (lb, label(id_, y), id_))
    extra = (*EOS, "--labels-topic", lb, "--predictions-topic", preds, "--checkpoint-every-messages", "15",
             "--checkpoint-every-seconds", "1", "--max-poll-records", "7", "--status-every", "0.05")
    runs = 0

    def member(name: str) -> tuple[Any, Path]:
        nonlocal runs
        runs += 1
        status = tmp_path / f"{name}-{runs}.json"
        return start_service(kafka_bootstrap, ev, group, tmp_path / f"{name}-{runs}", *extra,
                             "--group-instance-id", name, "--status-file", str(status)), status

    def positions(what: str = "positions") -> dict[str, int]:
        out: dict[str, int] = {}
        for proc, status in members.values():
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            owned = set(read_status(status).get("assigned") or [])
            out.update({k: v for k, v in (read_status(status).get(what) or {}).items() if k in owned})
        return out

    def read_everything() -> bool:  # (the labels topic also holds hand-off records and transaction markers)
        at = positions()
        joins = [read_status(status).get("join") or {} for _, status in members.values()]
        return (sum(v for k, v in at.items() if k.startswith(f"{ev}:")) == len(data)
                and sum(j.get("joined", 0) for j in joins) == 70 and sum(j.get("pending_events", 0)
                                                                         for j in joins) == 10)

    members = {name: member(name) for name in ("m-a", "m-b")}
    try:
        wait_for(lambda: all(len(read_status(s).get("assigned") or []) == 2 for _, s in members.values()), 90,
                 "each member owns partition i of both topics")
        sent: Counter = Counter()
        for start in range(0, len(records), 30):
            chunk = records[start : start + 30]
            send(kafka_bootstrap, [(t, v, k, None) for t, v, k in chunk])
            sent.update(t for t, _, _ in chunk)
            want = {t: n - rng.randrange(0, 6) for t, n in sent.items()}
            wait_for(lambda w=want: all(sum(v for k, v in positions().items() if k.rsplit(":", 1)[0] == t)
                                        >= n for t, n in w.items()), 120, f"positions {want}")
            name = rng.choice(sorted(members))
            proc, _ = members[name]
            proc.send_signal(signal.SIGKILL)  # mid-interval: its open transaction is aborted
            proc.wait(30)
            members[name] = member(name)
        # a rebalance with pending joins: m-b leaves (a stop: its joins stay in its state) and comes back;
        # m-a hands off what it holds at each revoke, in its transactions
        stop(members["m-b"][0])
        a_status = members["m-a"][1]
        wait_for(lambda: len(read_status(a_status).get("assigned") or []) == 4, 90, "m-a owns everything")
        members["m-b"] = member("m-b")
        wait_for(lambda: all(len(read_status(s).get("assigned") or []) == 2 for _, s in members.values()), 90,
                 "the two members share the partitions again")
        wait_for(read_everything, 180, "every record read")
        assert read_status(a_status)["join"]["handed_off"] > 0
        # m-a stops (its joins stay in its state); m-b hands off what it holds at the revoke, reads it back
        stop(members.pop("m-a")[0])
        kept = JoinStore.from_state(*state(kafka_bootstrap, group, "m-a").extras[EXTRA_NAME]).pending_events
        b_status = members["m-b"][1]
        wait_for(lambda: len((st := read_status(b_status)).get("assigned") or []) == 4
                 and st["join"]["pending_events"] == 10 - kept, 90, "the 10 events without a label held once")
        stop(members.pop("m-b")[0])
    finally:
        for proc, _ in members.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
    finals = [state(kafka_bootstrap, group, name) for name in ("m-a", "m-b")]
    stores = [JoinStore.from_state(*f.extras[EXTRA_NAME]) for f in finals]
    assert sum(f.model.n_samples_seen for f in finals) == 70
    assert sum(sum(f.metadata["learned"].values()) for f in finals) == 70
    assert sum(s.counters["joined"] for s in stores) == 70
    assert sum(s.counters["pending_events"] for s in stores) == 10
    got = Counter(orjson.loads(r.value)["id"] for r in read_committed(kafka_bootstrap, preds, len(data)))
    assert set(got) == {id_ for id_, _, _ in data} and max(got.values()) == 1
