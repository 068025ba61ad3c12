"""The delayed-label join store (consumers/state/join_store.py) against an independent plain-dict oracle.

The oracle below is written from the rules in the module docstring, not from the store's code: it scans every
pending entry for expiry (the store only looks at the oldest), keeps lists of tuples, and remembers joins in a
plain dict. Scenarios are random interleavings of events and labels with random delays, duplicates, orphans
and out-of-order timestamps (hypothesis).
"""

from __future__ import annotations

import json
import math
import tracemalloc
from collections import Counter

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumers.state.join_store import COUNTERS, ENTRY_BYTES, JoinStore
from stream_logreg.codec import JsonCodec, encode_event

# An oracle, written independently


class Oracle:
    """The join rules in their plainest form: stream time = max timestamp; stored at the stream time after
    the record; expired when stream time - stored_at > ttl; oldest evicted first; first label wins."""

    def __init__(self, ttl: int, max_pending: int, policy: str) -> None:
        self.ttl, self.max_pending, self.policy = ttl, max_pending, policy
        self.now = -1
        self.pending: dict[str, tuple] = {}  # id -> ("event", p, ts, at) | ("label", y, ts, at)
        self.recent: dict[str, int] = {}
        self.out: list[tuple] = []
        self.counts: Counter = Counter()

    def _clock(self, ts: int) -> None:
        if ts <= self.now:
            return
        self.now = ts
        for id in [i for i, e in self.pending.items() if self.now - e[3] > self.ttl]:
            self._lost(id, self.pending.pop(id), "expired")
        for id in [i for i, at in self.recent.items() if self.now - at > self.ttl]:
            del self.recent[id]

    def _lost(self, id: str, e: tuple, cause: str) -> None:
        if e[0] == "label":
            self.counts["orphan_labels" if cause == "expired" else "dropped_full_labels"] += 1
            return
        self.counts["expired_events" if cause == "expired" else "dropped_full_events"] += 1
        if self.policy == "negative":
            self.out.append((id, 0, e[1], None, cause))

    def _keep(self, id: str, e: tuple) -> None:
        while len(self.pending) >= self.max_pending:
            first = next(iter(self.pending))
            self._lost(first, self.pending.pop(first), "evicted")
        self.pending[id] = e

    def _joined(self, id: str, y: int, p: float, event_ts: int, label_ts: int) -> None:
        self.counts["joined"] += 1
        self.recent[id] = self.now
        self.out.append((id, y, p, label_ts - event_ts, "label"))

    def event(self, id: str, p: float, ts: int) -> None:
        self._clock(ts)
        e = self.pending.get(id)
        if e is not None and e[0] == "label":
            del self.pending[id]
            self._joined(id, e[1], p, ts, e[2])
        elif e is not None or id in self.recent:
            self.counts["duplicate_events"] += 1
        else:
            self._keep(id, ("event", p, ts, self.now))

    def label(self, id: str, y: int, ts: int) -> None:
        self._clock(ts)
        e = self.pending.get(id)
        if e is not None and e[0] == "event":
            del self.pending[id]
            self._joined(id, y, e[1], e[2], ts)
        elif e is not None or id in self.recent:
            self.counts["duplicate_labels"] += 1
        else:
            self._keep(id, ("label", y, ts, self.now))


# Scenarios


@st.composite
def scenarios(draw, max_events: int = 25) -> list[tuple]:
    """Records ("event", id, x, p, ts) and ("label", id, y, ts) in a random interleaving: labels 0-3 times per
    event, delayed, sometimes before the event; some labels for ids that never come; some repeated events."""
    n = draw(st.integers(0, max_events))
    records: list[tuple[int, int, tuple]] = []  # (arrival key, tie-break, record)
    for i in range(n):
        id = f"e{draw(st.integers(0, n + 2))}"  # ids may repeat: duplicate events
        ts = draw(st.integers(0, 1_000))
        x = {"f": float(i), 1: i % 3, "1": f"s{i}", "b": i % 2 == 0}
        p = draw(st.floats(0.0, 1.0))
        records.append((ts + draw(st.integers(-50, 50)), len(records), ("event", id, x, p, ts)))
        for _ in range(draw(st.integers(0, 3))):
            delay = draw(st.integers(-100, 400))
            y = draw(st.integers(0, 1))
            lts = max(0, ts + delay)
            records.append((lts + draw(st.integers(-50, 50)), len(records), ("label", id, y, lts)))
    for j in range(draw(st.integers(0, 3))):
        lts = draw(st.integers(0, 1_200))
        records.append((lts, len(records), ("label", f"orphan{j}", 1, lts)))
    records.sort()
    return [r for _, _, r in records]


def feed(store: JoinStore, record: tuple) -> list:
    if record[0] == "event":
        _, id, x, p, ts = record
        return store.add_event(id, x, p, version=7, ts=ts, topic="events", partition=0, offset=ts)
    _, id, y, ts = record
    return store.add_label(id, y, ts=ts, topic="labels", offset=ts)


def feed_oracle(oracle: Oracle, record: tuple) -> None:
    if record[0] == "event":
        oracle.event(record[1], record[3], record[4])
    else:
        oracle.label(record[1], record[2], record[3])


def run(store: JoinStore, records: list[tuple]) -> list:
    return [j for r in records for j in feed(store, r)]


def first_x(records: list[tuple]) -> dict:
    xs: dict = {}
    for r in records:
        if r[0] == "event":
            xs.setdefault(r[1], []).append(r[2])
    return xs


# The oracle agrees


@settings(max_examples=150, deadline=None)
@given(
    scenarios(),
    st.integers(0, 500),
    st.integers(1, 12),
    st.sampled_from(["drop", "negative"]),
)
def test_store_agrees_with_the_oracle(records, ttl, max_pending, policy):
    store = JoinStore(max_pending=max_pending, label_ttl_ms=ttl, expired_policy=policy, max_joined=10**6)
    oracle = Oracle(ttl, max_pending, policy)
    out = []
    for r in records:
        out += feed(store, r)
        feed_oracle(oracle, r)
        assert len(store) <= max_pending
        assert store.counters["pending_events"] + store.counters["pending_labels"] == len(oracle.pending)
    out += store.advance(10**6)
    oracle._clock(10**6)
    assert [(j.id, j.y, j.p, j.latency_ms, j.cause) for j in out] == oracle.out
    counters = store.counters
    assert {k: counters[k] for k in COUNTERS} == {k: oracle.counts[k] for k in COUNTERS}
    xs = first_x(records)
    for j in out:
        assert j.x in xs[j.id]  # the features of that id, types of keys and values included
        assert j.version == 7 and j.topic == "events"


@settings(max_examples=150, deadline=None)
@given(scenarios(), st.integers(0, 500), st.integers(1, 12), st.sampled_from(["drop", "negative"]))
def test_labels_fed_in_runs_do_what_they_do_one_by_one(records, ttl, max_pending, policy):
    """``add_labels`` (the labels loop's: a polled batch in one call) is ``add_label`` label by label: the
    same joins, expiries and evictions, each attributed to the label that caused it, and the same state."""
    one = JoinStore(max_pending=max_pending, label_ttl_ms=ttl, expired_policy=policy)
    runs = JoinStore(max_pending=max_pending, label_ttl_ms=ttl, expired_policy=policy)
    out_one, out_runs, run_, where = [], [], [], []

    def flush() -> None:
        out_runs.extend((where[i], j) for i, j in runs.add_labels(run_))
        run_.clear()
        where.clear()

    for k, r in enumerate(records):
        out_one += [(k, j) for j in feed(one, r)]
        if r[0] == "event":
            flush()
            out_runs += [(k, j) for j in feed(runs, r)]
        else:
            run_.append((r[1], bool(r[2]) if k % 3 == 0 else r[2], r[3], "labels", 0, r[3]))  # bools too
            where.append(k)
    flush()
    assert out_runs == out_one
    assert str(runs.to_state()) == str(one.to_state())


@settings(max_examples=150, deadline=None)
@given(scenarios(), st.integers(0, 500), st.integers(1, 12), st.sampled_from(["drop", "negative"]),
       st.booleans(), st.integers(1, 10**6))
def test_events_fed_in_runs_do_what_they_do_one_by_one(records, ttl, max_pending, policy, as_records,
                                                        max_bytes):
    """``add_events`` (the events loop's: the events of a polled batch in one call) is ``add_event`` event by
    event: the same joins, expiries and evictions, each attributed to the event that caused it, and the same
    state bit for bit; kept as their record values (the learner's way) or as features, bounded in bytes."""
    fields = JsonCodec().fields if as_records else None
    one = JoinStore(max_pending=max_pending, max_bytes=max_bytes, label_ttl_ms=ttl, expired_policy=policy,
                    event_fields=fields)
    runs = JoinStore(max_pending=max_pending, max_bytes=max_bytes, label_ttl_ms=ttl, expired_policy=policy,
                     event_fields=fields)
    out_one, out_runs, run_, where = [], [], [], []

    def flush() -> None:
        out_runs.extend((where[i], j) for i, j in runs.add_events(run_))
        run_.clear()
        where.clear()

    for k, r in enumerate(records):
        if r[0] == "label":
            out_one += [(k, j) for j in feed(one, r)]
            flush()
            out_runs += [(k, j) for j in feed(runs, r)]
            continue
        _, id, x, p, ts = r
        if as_records:  # string keys: a JSON record of the default codec
            x = {str(key): v for key, v in x.items()}
        value = encode_event(x, None, id) if as_records else None
        out_one += [(k, j) for j in one.add_event(id, x, p, version=k, ts=ts, topic="events", partition=k % 2,
                                                  offset=k, record_value=value)]
        run_.append((id, x, p, k, ts, "events", k % 2, k, value))
        where.append(k)
    flush()
    assert out_runs == out_one
    assert str(runs.to_state()) == str(one.to_state())
    assert runs.n_bytes == one.n_bytes <= max_bytes and len(runs) <= max_pending


@settings(max_examples=150, deadline=None)
@given(scenarios(), st.integers(0, 500), st.integers(1, 12), st.sampled_from(["drop", "negative"]))
def test_join_waiting_is_add_event_when_it_joins_and_nothing_otherwise(records, ttl, max_pending, policy):
    """``join_waiting`` (the scorer's path for an event whose label came first) leaves the store exactly as
    ``add_event`` does when it joins, returning the label that ``add_event``'s only join carries; when it
    declines (-1), it changed nothing."""
    a = JoinStore(max_pending=max_pending, label_ttl_ms=ttl, expired_policy=policy)
    b = JoinStore(max_pending=max_pending, label_ttl_ms=ttl, expired_policy=policy)
    joins = 0
    for r in records:
        if r[0] == "label":
            assert feed(a, r) == feed(b, r)
            continue
        _, id, x, p, ts = r
        before = str(a.to_state())
        y = a.join_waiting(id, p, 7, ts)
        out = feed(b, r)
        if y < 0:
            assert str(a.to_state()) == before
            feed(a, r)
        else:
            joins += 1
            assert [(j.id, j.y, j.p, j.cause) for j in out] == [(id, y, p, "label")]
        assert str(a.to_state()) == str(b.to_state())


def test_events_fed_in_runs_refuse_what_add_event_refuses():
    store = JoinStore(event_fields=JsonCodec().fields)
    good = ("a", {"f": 1.0}, 0.5, 0, 10, "events", 0, 0, encode_event({"f": 1.0}, None, "a"))
    for i, bad in ((2, 1.5), (3, -1), (4, 2**63), (0, 7)):
        with pytest.raises(ValueError):
            store.add_events([good[:i] + (bad,) + good[i + 1:]])
    assert store.add_events([good]) == [] and store.counters["pending_events"] == 1


@settings(max_examples=100, deadline=None)
@given(scenarios(), st.sampled_from(["drop", "negative"]))
def test_every_labelled_event_is_joined_exactly_once_within_the_ttl(records, policy):
    # TTL and bounds never reached: whatever the interleaving, each id with an event and a label joins once.
    store = JoinStore(max_pending=10**6, label_ttl_ms=10**9, expired_policy=policy)
    out = run(store, records)
    event_ids = {r[1] for r in records if r[0] == "event"}
    label_ids = [r[1] for r in records if r[0] == "label"]
    assert sorted(j.id for j in out) == sorted(event_ids & set(label_ids))
    c = store.counters
    assert c["joined"] == len(event_ids & set(label_ids))
    n_events = sum(r[0] == "event" for r in records)
    assert c["duplicate_events"] == n_events - len(event_ids)
    assert c["duplicate_labels"] == len(label_ids) - len(set(label_ids))
    assert c["pending_events"] == len(event_ids - set(label_ids))
    assert c["pending_labels"] == len(set(label_ids) - event_ids)
    out = store.advance(2 * 10**9)
    assert c["pending_events"] == (c := store.counters)["expired_events"]
    assert c["orphan_labels"] == len(set(label_ids) - event_ids)
    assert len(out) == (c["expired_events"] if policy == "negative" else 0)
    assert all(j.y == 0 and j.cause == "expired" and j.latency_ms is None for j in out)
    assert len(store) == 0 and store.n_bytes == 0


@settings(max_examples=100, deadline=None)
@given(scenarios(), st.integers(0, 500), st.integers(1, 12), st.sampled_from(["drop", "negative"]), st.data())
def test_checkpoint_and_restore_mid_stream_gives_the_joins_of_an_uninterrupted_run(
    records, ttl, max_pending, policy, data
):
    def make() -> JoinStore:
        return JoinStore(max_pending=max_pending, label_ttl_ms=ttl, expired_policy=policy, max_joined=5)

    whole = make()
    expected = run(whole, records) + whole.advance(10**6)
    cut = data.draw(st.integers(0, len(records)))
    first = make()
    out = run(first, records[:cut])
    arrays, meta = first.to_state()
    meta = json.loads(json.dumps(meta))  # JSON-able
    arrays = {k: np.frombuffer(v.tobytes(), dtype=v.dtype) for k, v in arrays.items()}  # bytes only
    second = JoinStore.from_state(arrays, meta)
    assert second.counters == first.counters and second.n_bytes == first.n_bytes
    out += run(second, records[cut:]) + second.advance(10**6)
    assert out == expected
    assert_same_state(second.to_state(), whole.to_state())


def assert_same_state(a: tuple, b: tuple) -> None:
    (arrays_a, meta_a), (arrays_b, meta_b) = a, b
    assert json.dumps(meta_a) == json.dumps(meta_b)
    assert sorted(arrays_a) == sorted(arrays_b)
    for k in arrays_a:
        assert arrays_a[k].dtype == arrays_b[k].dtype and arrays_a[k].tobytes() == arrays_b[k].tobytes(), k


@settings(max_examples=50, deadline=None)
@given(scenarios())
def test_state_is_bitwise_deterministic(records):
    a, b = JoinStore(max_pending=8, label_ttl_ms=300), JoinStore(max_pending=8, label_ttl_ms=300)
    run(a, records)
    run(b, records)
    assert_same_state(a.to_state(), b.to_state())
    for arr in a.to_state()[0].values():
        assert arr.dtype in (np.int64, np.float64)


# Features round-trip exactly

scalars = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(-(2**63), 2**64 - 1),
    st.booleans(),
    st.text(max_size=8),
)
keys = st.one_of(st.text(max_size=6), st.integers(-(2**63), 2**63 - 1))
features = st.dictionaries(keys, scalars, max_size=8)


def typed(x: dict) -> list:
    return [(type(k), k, type(v), v if not isinstance(v, float) else v.hex()) for k, v in x.items()]


@settings(max_examples=200, deadline=None)
@given(features, st.sampled_from(["before", "after", "restored"]))
def test_features_come_back_exactly_with_their_types(x, when):
    store = JoinStore()
    if when == "before":
        store.add_label("k", 1, ts=0)
        [j] = store.add_event("k", x, 0.5, version=0, ts=0)
    else:
        store.add_event("k", x, 0.5, version=0, ts=0)
        if when == "restored":
            store = JoinStore.from_state(*store.to_state())
        [j] = store.add_label("k", 1, ts=0)
    assert typed(j.x) == typed(x)


def test_int_and_str_keys_stay_distinct_and_awkward_strings_survive():
    x = {1: 1.0, "1": 2.0, 1.5: -0.0, "null": "null", "[": "{[", "b": True, "big": 2**64 - 1}
    x["é"] = "\U0001f600"
    store = JoinStore()
    store.add_event("id-é", x, 0.25, version=3, ts=5)
    restored = JoinStore.from_state(*store.to_state())
    [j] = restored.add_label("id-é", 0, ts=6)
    assert typed(j.x) == typed(x) and j.p == 0.25 and j.version == 3 and j.latency_ms == 1


@pytest.mark.parametrize(
    "x",
    [
        {"a": math.nan},
        {"a": math.inf},
        {"a": None},
        {"a": [1.0]},
        {"a": {"b": 1}},
        {"a": 2**64},
        {"a": "\ud800"},
        {None: 1.0},
        {("a", "b"): 1.0},
        {"a": np.float32(1.0)},
    ],
)
def test_features_that_cannot_round_trip_are_refused_when_stored(x):
    store = JoinStore()
    with pytest.raises(ValueError):
        store.add_event("k", x, 0.5, version=0, ts=0)
    assert len(store) == 0 and store.n_bytes == 0 and store.counters["pending_events"] == 0


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.add_event(None, {}, 0.5, version=0, ts=0),
        lambda s: s.add_event("k", {}, math.nan, version=0, ts=0),
        lambda s: s.add_event("k", {}, 1.5, version=0, ts=0),
        lambda s: s.add_event("k", {}, 0.5, version=-1, ts=0),
        lambda s: s.add_event("k", {}, 0.5, version=0, ts=-2),
        lambda s: s.add_event("k", {}, 0.5, version=0, ts=2**63),
        lambda s: s.add_event("k", {}, 0.5, version=0, ts=1.5),
        lambda s: s.add_label("k", 2, ts=0),
        lambda s: s.add_label("k", 0.5, ts=0),
        lambda s: s.add_label(7, 1, ts=0),
        lambda s: s.advance(None),
    ],
)
def test_bad_arguments_are_refused(call):
    store = JoinStore()
    with pytest.raises(ValueError):
        call(store)
    assert store.stream_time == -1 and len(store) == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_pending": 0},
        {"max_bytes": 0},
        {"label_ttl_ms": -1},
        {"expired_policy": "positive"},
        {"max_joined": -1},
        {"latency_buckets_ms": (10, 10)},
        {"latency_buckets_ms": ()},
    ],
)
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        JoinStore(**kwargs)


# TTL, duplicates, bounds


@pytest.mark.parametrize("policy", ["drop", "negative"])
def test_ttl_expiry_follows_the_policy(policy):
    store = JoinStore(label_ttl_ms=100, expired_policy=policy)
    store.add_event("a", {"f": 1.0}, 0.9, version=1, ts=1_000)
    store.add_label("early", 1, ts=1_050)
    assert store.advance(1_100) == []  # exactly the TTL: still waiting
    out = store.advance(1_101)
    assert [(j.id, j.y, j.cause) for j in out] == ([("a", 0, "expired")] if policy == "negative" else [])
    c = store.counters
    assert (c["expired_events"], c["orphan_labels"], c["pending_labels"]) == (1, 0, 1)
    assert store.add_label("a", 1, ts=1_102) == []  # too late: stored as a label waiting for an event
    store.advance(1_151)
    assert store.counters["orphan_labels"] == 1
    assert store.advance(1_000) == [] and store.stream_time == 1_151  # time never goes back


def test_old_timestamps_do_not_move_stream_time_and_are_stored_at_the_current_one():
    store = JoinStore(label_ttl_ms=100)
    store.add_event("new", {}, 0.5, version=0, ts=1_000)
    store.add_event("old", {}, 0.5, version=0, ts=-1)  # no timestamp: stored at stream time 1000
    store.advance(1_100)
    [j] = store.add_label("old", 1, ts=1_100)
    assert j.latency_ms is None and store.latency_counts == [0] * len(store.latency_counts)
    store.advance(1_101)
    assert store.counters["expired_events"] == 1  # "new"


def test_duplicate_labels_are_recognised_after_the_join_until_forgotten():
    store = JoinStore(max_pending=10, label_ttl_ms=1_000, max_joined=2)
    for i in range(3):
        store.add_event(f"e{i}", {"i": i}, 0.5, version=0, ts=i)
        assert len(store.add_label(f"e{i}", 1, ts=i)) == 1
    assert store.counters["forgotten_joins"] == 1  # e0 forgotten: only 2 remembered
    assert store.add_label("e2", 0, ts=3) == [] and store.counters["duplicate_labels"] == 1
    assert store.add_label("e0", 0, ts=3) == []  # forgotten: looks like a label before its event
    assert store.counters["pending_labels"] == 1
    store.advance(10_000)
    assert store.counters["orphan_labels"] == 1 and store.counters["duplicate_labels"] == 1
    store.add_label("e1", 1, ts=10_001)  # the join memory also lasts the TTL only
    assert store.counters["pending_labels"] == 1


@pytest.mark.parametrize("policy", ["drop", "negative"])
def test_a_full_store_evicts_the_oldest_and_counts_them_by_kind(policy):
    store = JoinStore(max_pending=3, label_ttl_ms=10**6, expired_policy=policy)
    store.add_label("l1", 1, ts=0)
    store.add_event("e1", {"f": 1.0}, 0.1, version=0, ts=1)
    store.add_label("l2", 0, ts=2)
    out = store.add_event("e2", {"f": 2.0}, 0.2, version=0, ts=3)  # evicts l1
    assert out == [] and store.counters["dropped_full_labels"] == 1
    out = store.add_event("e3", {"f": 3.0}, 0.3, version=0, ts=4)  # evicts e1
    assert [(j.id, j.y, j.p, j.cause, j.x) for j in out] == (
        [("e1", 0, 0.1, "evicted", {"f": 1.0})] if policy == "negative" else []
    )
    c = store.counters
    assert (c["dropped_full_events"], c["pending_events"], c["pending_labels"], len(store)) == (1, 2, 1, 3)
    assert store.add_event("l1", {}, 0.5, version=0, ts=5) == []  # l1's label was evicted: nothing to join


def test_the_byte_bound_is_respected_and_an_entry_too_large_is_dropped():
    x = {f"feature_{i:02d}": float(i) for i in range(20)}
    alone = JoinStore()
    alone.add_event("e00000", x, 0.5, version=0, ts=0)
    one = alone.n_bytes  # the estimate of one entry
    store = JoinStore(max_bytes=5 * one + 10, expired_policy="negative")
    for i in range(12):
        store.add_event(f"e{i:05d}", x, 0.5, version=0, ts=i)
        assert store.n_bytes <= store.max_bytes
    assert len(store) == 5 and store.counters["dropped_full_events"] == 7
    big = {f"k{i}": "v" * 100 for i in range(200)}
    [j] = store.add_event("big", big, 0.5, version=0, ts=20)
    assert j.cause == "evicted" and j.x == big and len(store) == 5
    assert store.counters["dropped_full_events"] == 8


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("rows_of", ["shared keys", "unique keys", "string values"])
@pytest.mark.parametrize("kept_as", ["features", "record"])
def test_the_byte_estimate_is_above_the_memory_really_held(kept_as, rows_of, packed):
    """The store keeps each event's decoded features (a join does not decode them again) and, with
    ``event_fields``, its record value: the estimate covers both, for features whose key objects the decoder
    shares between events, unique keys (nothing shared) and string values; before the first ``to_state``
    and after it (the bytes then kept in its packed copy, and the packed rows and numbers beside)."""
    from stream_logreg.codec import encode_event

    n, names = 2_000, [f"feature_{i:02d}" for i in range(20)]
    if rows_of == "shared keys":
        rows = [{k: float(i * 20 + j) + 0.5 for j, k in enumerate(names)} for i in range(n)]
    elif rows_of == "unique keys":
        rows = [{f"{k}_{i}": float(i * 20 + j) + 0.5 for j, k in enumerate(names)} for i in range(n)]
    else:
        rows = [{k: f"value-{i}-{j}" for j, k in enumerate(names)} for i in range(n)]
    ids = [f"evt-{i:09d}" for i in range(n)]
    values = [encode_event(x, None, id_) for id_, x in zip(ids, rows, strict=True)]
    store = JoinStore(max_pending=n, event_fields=FIELDS)
    decode = JsonCodec(*FIELDS).decoder()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(n):  # the record value and its decoded features are the store's to keep: made here
        value = bytes(bytearray(values[i]))
        x = decode(value).x
        assert x == rows[i]
        store.add_event(ids[i], x, 0.5, version=i, ts=i, topic="events", partition=0, offset=i + 10**6,
                        record_value=value if kept_as == "record" else None)
    if packed:
        state = store.to_state()
        del state
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(store) == n
    assert held <= store.n_bytes, (held / n, store.n_bytes / n)
    assert store.n_bytes <= 2 * held  # and not absurdly above
    assert ENTRY_BYTES > 0


@pytest.mark.parametrize("packed", [False, True])
def test_the_byte_estimate_of_a_label_is_above_the_memory_really_held(packed):
    n = 2_000
    store = JoinStore(max_pending=n)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(n):  # timestamps and offsets as Kafka's (int objects of their own)
        store.add_label(f"lab-{i:09d}", i % 2, ts=1_700_000_000_000 + i, topic="labels", partition=3,
                        offset=10**9 + i)
    if packed:
        state = store.to_state()
        del state
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert held <= store.n_bytes, (held / n, store.n_bytes / n)


def test_latency_histogram_counts_each_join_in_its_bucket():
    store = JoinStore(label_ttl_ms=10**9, latency_buckets_ms=(0, 10, 100))
    for i, delay in enumerate([-5, 0, 10, 11, 100, 5_000]):
        store.add_event(f"e{i}", {}, 0.5, version=0, ts=10_000)
        [j] = store.add_label(f"e{i}", 1, ts=10_000 + delay)
        assert j.latency_ms == delay
    assert store.latency_counts == [2, 1, 2, 1]
    assert JoinStore.from_state(*store.to_state()).latency_counts == [2, 1, 2, 1]


# Malformed state is refused


def good_state() -> tuple[dict, dict]:
    store = JoinStore(max_pending=10, label_ttl_ms=1_000)
    store.add_event("a", {"f": 1.0, 2: "x"}, 0.5, version=1, ts=10)
    store.add_label("b", 1, ts=20)
    store.add_event("c", {"g": True}, 0.25, version=2, ts=30)
    store.add_event("d", {}, 0.75, version=2, ts=31)
    store.add_label("d", 0, ts=40)
    return store.to_state()


def corrupt(arrays: dict, meta: dict, name: str, fn) -> tuple[dict, dict]:
    arrays = {k: v.copy() for k, v in arrays.items()}
    meta = json.loads(json.dumps(meta))
    if name == "meta":
        fn(meta)
    else:
        arrays[name] = fn(arrays[name])
    return arrays, meta


def _set(a, i, v):
    a[i] = v
    return a


@pytest.mark.parametrize(
    "name, fn",
    [
        ("p", lambda a: _set(a, 0, np.nan)),
        ("p", lambda a: _set(a, 0, 1.5)),
        ("p", lambda a: a.astype(np.float32)),
        ("kind", lambda a: _set(a, 0, 2)),
        ("kind", lambda a: a[:-1]),
        ("y", lambda a: _set(a, 1, 2)),
        ("ts", lambda a: _set(a, 0, -5)),
        ("stored_at", lambda a: _set(a, 0, 10**6)),
        ("stored_at", lambda a: a[::-1].copy()),
        ("topic", lambda a: _set(a, 0, 9)),
        ("offset", lambda a: _set(a, 0, -3)),
        ("id_len", lambda a: _set(a, 0, -1)),
        ("ids", lambda a: _set(a, 0, int.from_bytes(b"aac", "little"))),  # "a" twice
        ("ids", lambda a: _set(a, 0, int.from_bytes(b"\xff\xfe\xfd", "little"))),  # not UTF-8
        ("x_len", lambda a: _set(a, 0, a[0] + 1)),
        ("x", lambda a: a[:-1]),
        ("x", lambda a: np.full_like(a, 0x4141414141414141)),
        ("ids", lambda a: np.zeros_like(a)),
        ("joined.at", lambda a: a[:0]),
        ("meta", lambda m: m.update(format=3)),
        ("form", lambda a: _set(a, 0, 2)),
        ("form", lambda a: _set(a, 0, 1)),  # a record value without event_fields
        ("meta", lambda m: m.update(stream_time=-7)),
        ("meta", lambda m: m["counters"].update(joined=-1)),
        ("meta", lambda m: m["counters"].pop("joined")),
        ("meta", lambda m: m.update(latency_counts=[0])),
        ("meta", lambda m: m.update(x_bytes=m["x_bytes"] + 1)),
        ("meta", lambda m: m["params"].update(max_pending=1)),
        ("meta", lambda m: m["params"].update(max_bytes=100)),
        ("meta", lambda m: m["params"].update(label_ttl_ms=-1)),
        ("meta", lambda m: m.update(topics=[1])),
    ],
)
def test_malformed_state_is_refused_with_a_clear_error(name, fn):
    arrays, meta = good_state()
    JoinStore.from_state(arrays, meta)  # the good one loads
    with pytest.raises(ValueError, match="join store|must|max_|expired"):
        JoinStore.from_state(*corrupt(arrays, meta, name, fn))


def test_state_with_a_missing_or_extra_array_is_refused():
    arrays, meta = good_state()
    with pytest.raises(ValueError, match="arrays"):
        JoinStore.from_state({k: v for k, v in arrays.items() if k != "p"}, meta)
    with pytest.raises(ValueError, match="arrays"):
        JoinStore.from_state({**arrays, "extra": np.zeros(1)}, meta)


def test_features_forged_in_the_state_are_checked():
    store = JoinStore()
    store.add_event("a", {"f": 1.0}, 0.5, version=0, ts=0)
    arrays, meta = store.to_state()
    forged = (b'[["f",null]]', b'[["f",[1]]]', b"not json!", b'{"f": null}', b'{"f": {"g": 1}}', b"[1, 2]")
    forged += (b'[["a",1,2]]', b'{"a":1},{"b":2}')
    for blob in forged:
        words = np.frombuffer(blob + b"\0" * (-len(blob) % 8), dtype="<i8").astype(np.int64)
        a = {**arrays, "x": words, "x_len": np.array([len(blob)], dtype=np.int64)}
        with pytest.raises(ValueError, match="join store state"):
            JoinStore.from_state(a, {**meta, "x_bytes": len(blob)})


# Events kept as their record value (the learner's fast path)

FIELDS = ("x", "y", "id")


def record_store(**kwargs) -> tuple[JoinStore, list[tuple[str, dict, bytes]]]:
    from stream_logreg.codec import JsonCodec, encode_event

    codec = JsonCodec()
    out = []
    for i in range(6):  # features by name, and as an array (int keys)
        id_ = f"e{i}"
        value = (encode_event({"f": i + 0.25, "city": ["Paris", "Oslo"][i % 3 > 0], "ok": i > 2}, None, id_)
                 if i % 2 else orjson.dumps({"x": [i - 0.5, "a", True], "id": id_}))
        out.append((id_, codec.decode(value).x, value))
    store = JoinStore(max_pending=10, label_ttl_ms=1_000, event_fields=FIELDS, **kwargs)
    for i, (id_, x, value) in enumerate(out):
        store.add_event(id_, x, 0.5, version=i, ts=10 + i, topic="ev", partition=0, offset=i,
                        record_value=value)
    return store, out


def test_an_event_kept_as_its_record_joins_with_the_decoded_features():
    store, rows = record_store()
    for id_, x, _ in rows:
        [j] = store.add_label(id_, 1, ts=100)
        assert j.x is x  # kept as decoded when it was scored: the join decodes nothing again
    assert store.counters["joined"] == len(rows)


def test_a_restored_event_joins_with_the_features_of_its_record():
    store, rows = record_store()
    restored = JoinStore.from_state(*store.to_state())
    for id_, x, _ in rows:
        [j] = restored.add_label(id_, 1, ts=100)
        assert j.x == x and [type(k) for k in j.x] == [type(k) for k in x]
        assert [type(v) for v in j.x.values()] == [type(v) for v in x.values()]
    assert restored.n_bytes == 0 and restored.counters["joined"] == len(rows)


def test_records_kept_survive_a_checkpoint_and_are_checked_when_restored():
    store, rows = record_store()
    state = store.to_state()
    assert state[0]["form"].tolist() == [1] * len(rows) and state[1]["event_fields"] == list(FIELDS)
    back = JoinStore.from_state(*state)
    assert back.n_bytes == store.n_bytes and back.to_state()[1] == state[1]
    assert [j.x for j in back.add_label("e2", 0, ts=50)] == [rows[2][1]]
    # other fields from now on: the records kept are converted to features JSON, the features unchanged
    other = JoinStore.from_state(*state, event_fields=("features", "label", "key"))
    assert other.to_state()[0]["form"].tolist() == [0] * len(rows)
    assert [j.x for j in other.add_label("e3", 0, ts=50)] == [rows[3][1]]
    # a forged record: not an event of that id, not an event at all, no fields to decode it with
    for fields in (["x", "y", "other"], None, ["x", "x", "x"], ["x", "y"]):
        meta = {**json.loads(json.dumps(state[1])), "event_fields": fields}
        with pytest.raises(ValueError, match="join store"):
            JoinStore.from_state(state[0], meta)


def test_a_format_1_state_still_loads():
    store = JoinStore(max_pending=10, label_ttl_ms=1_000)
    store.add_event("a", {"f": 1.0}, 0.5, version=1, ts=10)
    arrays, meta = store.to_state()
    arrays = {k: v for k, v in arrays.items() if k != "form"}
    meta = {k: v for k, v in meta.items() if k != "event_fields"}
    meta["format"] = 1
    meta["counters"] = {k: v for k, v in meta["counters"].items() if k != "duplicate_handoffs"}
    back = JoinStore.from_state(arrays, meta)
    assert back.counters == store.counters and back.add_label("a", 1, ts=20)[0].x == {"f": 1.0}


def test_a_handed_off_duplicate_is_counted_apart():
    store, rows = record_store()
    id_, x, value = rows[0]
    assert store.add_event(id_, x, 0.5, version=0, ts=20, record_value=value, handed_off=True) == []
    store.add_label(id_, 1, ts=30)
    assert store.add_label(id_, 1, ts=31, handed_off=True) == []
    assert store.add_event(id_, x, 0.5, version=0, ts=32, handed_off=True) == []
    c = store.counters
    assert c["duplicate_handoffs"] == 3 and c["duplicate_events"] == c["duplicate_labels"] == 0


def test_the_record_form_is_no_larger_than_features_json_plus_the_envelope():
    store, rows = record_store()
    plain = JoinStore(max_pending=10, label_ttl_ms=1_000)
    for i, (id_, x, _) in enumerate(rows):
        plain.add_event(id_, x, 0.5, version=i, ts=10 + i)
    envelope = sum(len(v) - len(orjson.dumps(x if all(type(k) is str for k in x) else list(x.items())))
                   for _, x, v in rows)
    assert store.n_bytes <= plain.n_bytes + envelope


# to_state() packs only what changed since the previous call: bit for bit the whole store packed anew


def reference_state(store: JoinStore) -> tuple[dict, dict]:
    """The whole store packed anew, row by row: ``to_state`` as it was before it kept a packed copy (the
    oracle). ``store`` must never have been packed (every event still holds its bytes)."""
    from itertools import chain

    from consumers.state.join_entries import _Event
    from consumers.state.join_state import _EVENT, _INT_COLUMNS, _LABEL, FORMAT, _pack

    entries = store._entries
    vals = list(entries.values())
    assert all(type(e[1]) is bytes for e in vals if type(e) is _Event)
    code: dict[str, int] = {}
    number = code.setdefault
    rows = [(_EVENT, 0, e[3], e[4], e[5], number(e[6], len(code)), e[7], e[8], e[10])
            if e.__class__ is _Event
            else (_LABEL, e[0], 0, e[1], e[2], number(e[3], len(code)), e[4], e[5], 0) for e in vals]
    table = np.fromiter(chain.from_iterable(rows), dtype=np.int64, count=len(rows) * len(_INT_COLUMNS))
    table = table.reshape(len(rows), len(_INT_COLUMNS)).T
    arrays = {name: np.ascontiguousarray(table[i]) for i, name in enumerate(_INT_COLUMNS)}
    p = np.zeros(len(vals), dtype=np.float64)
    p[table[0] == _EVENT] = [e[2] for e in vals if e.__class__ is _Event]
    blobs = [e[1] if e.__class__ is _Event else b"" for e in vals]
    ids = [id.encode("utf-8", "surrogatepass") for id in entries]
    id_words, id_bytes = _pack(ids)
    x_words, x_bytes = _pack(blobs)
    joined_ids = [id.encode("utf-8", "surrogatepass") for id in store._joined]
    joined_words, joined_bytes = _pack(joined_ids)
    arrays.update({
        "p": p,
        "id_len": np.array(list(map(len, ids)), dtype=np.int64),
        "ids": id_words,
        "x_len": np.array(list(map(len, blobs)), dtype=np.int64),
        "x": x_words,
        "joined.at": np.array(list(store._joined.values()), dtype=np.int64),
        "joined.id_len": np.array(list(map(len, joined_ids)), dtype=np.int64),
        "joined.ids": joined_words,
    })
    meta = {
        "format": FORMAT,
        "params": store.params(),
        "stream_time": store.stream_time,
        "counters": dict(store._counts),
        "latency_counts": list(store.latency_counts),
        "topics": list(code),
        "id_bytes": id_bytes,
        "x_bytes": x_bytes,
        "joined_id_bytes": joined_bytes,
        "event_fields": None if store.event_fields is None else list(store.event_fields),
    }
    return arrays, meta


_ids = st.sampled_from([f"e{i}" for i in range(5)] + ["é1", "\ud800x"])
_ts = st.integers(-1, 600)
_event = st.tuples(st.just("event"), _ids, _ts, st.integers(0, 3), st.integers(0, 2), st.booleans())
_label = st.tuples(st.just("label"), _ids, st.integers(0, 1), _ts, st.integers(0, 2))
_op = st.one_of(
    _event,
    st.tuples(st.just("events"), st.lists(_event, max_size=6)),
    _label,
    st.tuples(st.just("labels"), st.lists(_label, max_size=6)),
    st.tuples(st.just("advance"), _ts),
    st.tuples(st.just("take"), st.integers(0, 2)),
    st.tuples(st.just("join_waiting"), _ids, _ts),
    st.just(("state",)),
    st.just(("state",)),
    st.just(("restore",)),
)


def _features(i: int, k: int) -> dict:
    return [{"f": float(k)}, {"f": 0.5, "g": "v" * (3 * k)}, {1: k, "1": True}, {}][i]


@settings(max_examples=300, deadline=None)
@given(st.lists(_op, max_size=40), st.integers(0, 400), st.integers(1, 8),
       st.sampled_from([10**9, 1_500, 3_000]), st.sampled_from(["drop", "negative"]),
       st.sampled_from([None, 0, 3]), st.booleans())
def test_to_state_is_the_whole_store_packed_anew_after_any_operations(ops, ttl, max_pending, max_bytes,
                                                                     policy, max_joined, as_records):
    """Random operations (events and labels one by one and in batches, joins, expiry, eviction, take, ids
    that come back) interleaved with ``to_state`` and ``from_state`` round trips: ``to_state`` equals, bit
    for bit, the reference (the whole store packed anew) of a twin store fed the same and never packed, and
    both give the same joins and the same entries taken (record values included)."""
    check_against_twin(ops, ttl, max_pending, max_bytes, policy, max_joined, as_records)


def check_against_twin(ops: list[tuple], ttl: int, max_pending: int, max_bytes: int, policy: str,
                       max_joined: int | None, as_records: bool) -> None:
    kwargs = dict(max_pending=max_pending, max_bytes=max_bytes, label_ttl_ms=ttl, expired_policy=policy,
                  max_joined=max_joined, event_fields=FIELDS if as_records else None)
    store, twin = JoinStore(**kwargs), JoinStore(**kwargs)

    def event_args(op: tuple, k: int) -> tuple:
        _, id_, ts, which, part, record = op
        x = _features(which, k)
        value = encode_event(x, None, id_) if record and which != 2 and id_.isprintable() else None
        return id_, x, (k % 5) / 4, k, ts, f"ev{part % 2}", part, k, value

    for k, op in enumerate(ops):
        if op[0] == "state":
            assert_same_state(store.to_state(), reference_state(twin))
            continue
        if op[0] == "restore":
            arrays, meta = store.to_state()
            arrays = {a: np.frombuffer(v.tobytes(), dtype=v.dtype) for a, v in arrays.items()}
            store = JoinStore.from_state(arrays, json.loads(json.dumps(meta)))
            continue
        outs = []
        for s in (store, twin):
            if op[0] == "event":
                id_, x, p, v, ts, tp, part, off, value = event_args(op, k)
                outs.append(s.add_event(id_, x, p, version=v, ts=ts, topic=tp, partition=part, offset=off,
                                        record_value=value))
            elif op[0] == "events":
                outs.append(s.add_events([event_args(e, k * 10 + i) for i, e in enumerate(op[1])]))
            elif op[0] == "label":
                _, id_, y, ts, part = op
                outs.append(s.add_label(id_, y, ts=ts, topic="lb", partition=part, offset=k))
            elif op[0] == "labels":
                outs.append(s.add_labels([(id_, y, ts, "lb", part, k * 10 + i)
                                          for i, (_, id_, y, ts, part) in enumerate(op[1])]))
            elif op[0] == "advance":
                outs.append(s.advance(op[1]))
            elif op[0] == "take":
                outs.append(s.take({("ev0", op[1]), ("lb", op[1])}))
            else:
                outs.append(s.join_waiting(op[1], 0.25, k, op[2]))
        assert outs[0] == outs[1]
        assert store.n_bytes == twin.n_bytes and store.counters == twin.counters
    assert_same_state(store.to_state(), reference_state(twin))
    assert_same_state(store.to_state(), reference_state(twin))  # twice: nothing changed in between


E, S = ("event", "e1", 10, 0, 0, True), ("state",)


@pytest.mark.parametrize("ops", [
    [E, S, ("label", "e1", 1, 20, 0), S],  # add_label joins a packed event
    [E, S, ("labels", [("label", "e1", 1, 20, 0)]), S],  # add_labels
    [("label", "e1", 1, 5, 0), S, E, S],  # add_event joins a packed label
    [("label", "e1", 1, 5, 0), S, ("join_waiting", "e1", 10), S],  # join_waiting
    [("label", "e1", 1, 5, 0), S, ("events", [E]), S],  # add_events
    [E, ("event", "e2", 11, 1, 1, False), S, ("take", 0), S],  # take: the record value from the packed copy
    [E, S, ("advance", 10**6), S],  # expiry
    [E, S] + [("event", f"e{i}", 20 + i, 1, 0, True) for i in range(2, 12)] + [S],  # eviction
    [E, S, ("label", "e1", 1, 20, 0), S, ("advance", 10**6), S],  # a joined id expires
    [E, ("event", "e2", 11, 0, 1, True), S, ("take", 0), ("event", "e3", 12, 0, 0, True), S],  # topics
    # renumbered: their first row left
    [E, S, ("restore",), ("label", "e1", 1, 20, 0), S],  # the copy a restored store starts from
    [E, ("event", "e2", 11, 0, 1, True), ("event", "e3", 12, 0, 2, True), S, ("label", "e1", 1, 20, 0), S],
])
def test_every_way_an_entry_leaves_is_packed_as_the_whole_store(ops):
    check_against_twin(ops, 100, 4, 10**9, "negative", 3, True)
