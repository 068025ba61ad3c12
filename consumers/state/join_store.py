"""The delayed-label join store: events scored now, learned when their label arrives (issue 13).

This module holds the store (:class:`JoinStore`: events and labels waiting for each other, joins, expiry by
record time, eviction, take) and what it returns (:class:`Joined`, :class:`Taken`); its entries and the rule
of the features an event may hold are in ``join_entries``, its checkpoint form in ``join_state``.

An unlabelled event is scored at once; its features ``x``, the probability ``p`` predicted then and the model
version that made it are kept here under the event's id until its label arrives on the labels topic. A label
may also come first: it is kept until its event arrives. Either way the pair comes back once, as a
:class:`Joined`, for the caller to learn (``model.learn_one(j.x, j.y)``) and to judge ``j.p``, the prediction
made at scoring time (the delayed progressive log loss and accuracy). The wiring in the loop is three calls::

    for j in store.add_event(event.id, event.x, p, version=model.n_samples_seen, ts=record.timestamp, ...):
        learn(j)                        # an event whose label was already here (or expired negatives)
    for j in store.add_label(label.id, label.y, ts=record.timestamp, ...):
        learn(j)
    arrays, meta = store.to_state()     # saved in the same checkpoint as the model and both topics' offsets

Rules
-----
- **Time is the stream time**: the largest Kafka record timestamp fed so far (events and labels alike), as in
  Kafka Streams; never the wall clock, so that a replay after a crash expires exactly what the first run
  expired. ``add_event``/``add_label`` advance it with their record's timestamp, :meth:`advance` advances it
  alone (e.g. on an idle poll, with the latest timestamp seen). Timestamps ``-1`` (none) do not move it.
- **An entry is stored at** the stream time after its record was fed (``stored_at``) and **expires** once the
  stream time exceeds ``stored_at + label_ttl_ms``. ``stored_at`` never decreases in arrival order, so the
  oldest entry is always the next to expire. An expired event is counted (``expired_events``) and, with
  ``expired_policy="negative"``, returned as a :class:`Joined` with ``y=0`` and ``cause="expired"`` (an
  explicit choice, e.g. for clicks: no click within the TTL is a negative); with ``"drop"`` it is forgotten.
  An expired label had no event: an orphan (``orphan_labels``).
- **Labels come once, or more**: the first label of an id wins; every later one is counted in
  ``duplicate_labels`` and learns nothing. To recognise a duplicate that arrives after its join, the ids of
  recent joins are remembered for ``label_ttl_ms`` of stream time, at most ``max_joined`` of them (the oldest
  forgotten first, counted in ``forgotten_joins``). A duplicate that arrives after its id was forgotten is
  indistinguishable from a label that came before its event: it is stored, and expires as an orphan (it is
  learned again only if an event with the same id arrives again within the TTL). An event whose id is pending
  or was recently joined is a duplicate event (``duplicate_events``): the first one is kept.
- **Bounded**: at most ``max_pending`` entries (events + labels) and ``max_bytes`` of estimated memory. When a
  new entry does not fit, the oldest entries are evicted first and counted in ``dropped_full_events`` /
  ``dropped_full_labels``. An evicted event follows the expired policy (``"negative"``: returned with ``y=0``
  and ``cause="evicted"``), so the policy decides the fate of every event that never got its label. An entry
  larger than ``max_bytes`` on its own is dropped at once the same way.
- **An event keeps its features** ``x`` as given (the dict itself, not a copy: the caller must not change
  it afterwards), so that its join learns it without decoding it again, beside the bytes it is
  checkpointed as: its record value when the caller gives it (``record_value``, with ``event_fields``: no
  re-encoding, the learner's path), else the features serialized as JSON (which also checks them).
- **The memory estimate** of an entry is ``ENTRY_BYTES`` + the UTF-8-length of its id, and for an event +
  the length of those bytes + ``FEATURE_BYTES`` per feature (the dict's slot and the key and value objects
  beyond their text). It depends on the content only, so a store rebuilt from its state has exactly the
  same estimate and evicts exactly the same entries (unless it is rebuilt with other ``event_fields``: its
  record values are then converted to features JSON). Both constants are calibrated with tracemalloc
  (``bench/bench_join_store.py``, ``tests/test_join_store.py``): for 20 float features decoded by the
  codec, about 1890 bytes held per pending event (id, record value and dict) against 3255 estimated; with
  unique keys (no key object shared between events) about 3245 against 3345, the case the constant covers;
  a pending label about 350 against 413. After a :meth:`~JoinStore.to_state` about 30 bytes more per event
  and 50 per label (below): the estimate covers them.
- **A checkpoint costs what changed**: :meth:`~JoinStore.to_state` keeps a packed copy of what it wrote
  (its int columns narrowed: each as its smallest value and the differences to it in the smallest unsigned
  dtype), and each entry it packed holds its row number there instead of its bytes, so that an event's
  record value or features JSON is held once. The next call writes that copy's rows still present (those
  of the entries removed since are masked out), then the entries added since: Python work for the entries
  added and removed in between only, bulk copies of the rest; and the result is the new copy, a single
  segment with no removed rows. Between two calls, the packed rows of the entries removed since are still
  held: at most the size of the last copy (for events of 20 float features about 500 bytes per event,
  against about 3300 estimated); the next call lets them go. The joined ids are kept packed likewise
  (they leave oldest first). ``to_state``'s output is the same, bit for bit, whenever it was called before
  (the checkpoint form and its packed copy: ``consumers/state/join_state.py``).
- **Features** are dicts whose keys and values are ``str``, ``int`` (64 bits), finite ``float`` or ``bool``
  (the codec produces ``str``/``int`` keys): they round-trip exactly, key and value types included (``1``,
  ``1.0`` and ``"1"`` stay distinct). Anything else (NaN, ``None``, nested values, ints beyond 64 bits,
  unencodable strings) is refused with a ``ValueError`` when the event is stored, never later when it is
  checkpointed.

Exactly once
------------
The store is part of the model's state: ``to_state()`` is saved in the same checkpoint as the model and the
next offsets of BOTH topics (events and labels), and the offsets are committed only after it (design.md).
After a crash, the model, the store and both positions are restored together and every record after them is
fed again. The store's effect of a record depends only on the store's state and the record (stream time is
part of the state; no wall clock, no randomness; ``to_state`` is bitwise deterministic), so:

- every event is learned at most once: a join removes the event and its label from the store in the same
  step in which the model learns it, and both are in the next checkpoint together, or neither is;
- every event whose label arrives within the TTL and that is not evicted is learned exactly once, whatever
  the order in which the two topics' records are fed (a label before its event waits for it, an event waits
  for its label);
- which records are fed is deterministic per topic-partition (offset order), but the interleaving of the two
  topics is not: a poll after a restart may return them in other batches. Interleaving changes the stream
  time at which each record is seen, hence which joins fall inside the TTL and what a full store evicts. The
  loop must therefore feed the records of each partition in offset order; the guarantee is then: with TTL
  and bounds never reached, the same set of joins as any other run, and, fed in the same interleaving (e.g.
  one partition per topic, replayed in the order recorded), the same joins in the same order, bit for bit.

>>> store = JoinStore(max_pending=1000, label_ttl_ms=60_000)
>>> store.add_event("a1", {"age": 42, "city": "Paris"}, 0.8, version=10, ts=1_000)
[]
>>> [j] = store.add_label("a1", 1, ts=4_000)
>>> j.x, j.y, j.p, j.version, j.latency_ms, j.cause
({'age': 42, 'city': 'Paris'}, 1, 0.8, 10, 3000, 'label')
>>> store.add_label("a1", 1, ts=5_000)          # a duplicate: learned once
[]
>>> store.counters["joined"], store.counters["duplicate_labels"]
(1, 1)
>>> store.add_label("b2", 0, ts=6_000)          # a label before its event
[]
>>> store.add_event("b2", {"age": 7}, 0.3, version=11, ts=5_500)[0].y
0
>>> restored = JoinStore.from_state(*store.to_state())
>>> restored.counters == store.counters
True

"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from consumers.state.join_entries import (
    _FEATURES,
    _MAX_TS,
    _RECORD,
    COUNTERS,
    ENTRY_BYTES,
    FEATURE_BYTES,
    _check_int,
    _encode_features,
    _Event,
    _Label,
    _new,
)
from consumers.state.join_state import FORMAT, PackedState
from stream_logreg.codec import JsonCodec

__all__ = ["DEFAULT_LATENCY_BUCKETS_MS", "ENTRY_BYTES", "FEATURE_BYTES", "Joined", "JoinStore", "Taken"]


DEFAULT_LATENCY_BUCKETS_MS = (
    0,
    10,
    100,
    1_000,
    10_000,
    60_000,
    600_000,
    3_600_000,
    86_400_000,
    7 * 86_400_000,
)
POLICIES = ("drop", "negative")
_NEVER = _MAX_TS  # beyond any stream time


class Joined(NamedTuple):
    """What the caller must learn now: ``x`` with label ``y``, exactly once.

    ``p`` is the probability predicted when the event was scored, by the model at ``version`` (its
    ``n_samples_seen``): judge it against ``y`` for the delayed metrics. ``cause`` is ``"label"`` (the
    label arrived), ``"expired"`` or ``"evicted"`` (no label; learned as ``y=0`` under
    ``expired_policy="negative"``). ``latency_ms`` is the label's record timestamp minus the event's
    (``None`` without a label or a timestamp; negative if the label's timestamp is earlier).
    ``topic``/``partition``/``offset`` locate the event's record.
    """

    id: str
    x: dict
    y: int
    p: float
    version: int
    latency_ms: int | None
    cause: str
    topic: str
    partition: int
    offset: int


class Taken(NamedTuple):
    """An entry removed by :meth:`JoinStore.take`: an event (``x``, ``y=None``, its ``p`` and ``version``;
    ``value``: its record value when that is what was kept, else ``None``) or a label (``x=None``, ``y``),
    with its record's timestamp and origin."""

    id: str
    x: dict | None
    y: int | None
    ts: int
    topic: str
    partition: int
    offset: int
    value: bytes | None
    p: float | None
    version: int | None


def _check_origin(topic: Any, partition: Any, offset: Any) -> None:
    if type(topic) is not str:
        raise ValueError(f"topic must be a string, got {topic!r:.60}")
    _check_int(partition, "partition", -1)
    _check_int(offset, "offset", -1)


class JoinStore:
    """Scored events waiting for their labels, and labels waiting for their events, keyed by id.

    Parameters
    ----------
    max_pending
        The most entries held (pending events + pending labels); the oldest are evicted first.
    max_bytes
        The most estimated memory held by the entries (see the module docstring); the oldest are evicted
        first.
    label_ttl_ms
        How long, in stream time, an entry waits for its other half before it expires.
    expired_policy
        ``"drop"``: an event without a label is forgotten. ``"negative"``: it is returned to be learned as
        ``y=0`` (when it expires or is evicted).
    max_joined
        How many ids of recent joins are remembered to recognise late duplicate labels (default
        ``max_pending``).
    latency_buckets_ms
        Upper bounds of the join-latency histogram (increasing); :attr:`latency_counts` has one more count,
        for latencies above the last bound.
    event_fields
        ``(x_field, y_field, id_field)`` of the events' JSON records
        (:class:`~stream_logreg.codec.JsonCodec`'s): with them, :meth:`add_event` may be given the event's
        ``record_value`` and keeps those bytes as they are instead of re-encoding ``x`` (the fast path of
        the learner); ``x`` is decoded from them again when the event joins.

    Examples
    --------
    >>> store = JoinStore(max_pending=2, label_ttl_ms=100, expired_policy="negative")
    >>> store.add_event("e1", {"f": 1.0}, 0.6, version=0, ts=0)
    []
    >>> [j] = store.advance(101)                 # no label within 100 ms of stream time
    >>> j.id, j.y, j.cause
    ('e1', 0, 'expired')
    >>> store.add_label("nobody", 1, ts=150)
    []
    >>> store.advance(300), store.counters["orphan_labels"]
    ([], 1)
    """

    def __init__(
        self,
        max_pending: int = 100_000,
        max_bytes: int = 256 * 2**20,
        label_ttl_ms: int = 3_600_000,
        expired_policy: str = "drop",
        max_joined: int | None = None,
        latency_buckets_ms: tuple[int, ...] = DEFAULT_LATENCY_BUCKETS_MS,
        event_fields: tuple[str, str, str] | None = None,
    ) -> None:
        self.max_pending = _check_int(max_pending, "max_pending", 1)
        self.max_bytes = _check_int(max_bytes, "max_bytes", 1)
        self.label_ttl_ms = _check_int(label_ttl_ms, "label_ttl_ms", 0)
        if expired_policy not in POLICIES:
            raise ValueError(f"expired_policy must be one of {POLICIES}, got {expired_policy!r}")
        self.expired_policy = expired_policy
        self.max_joined = max_pending if max_joined is None else _check_int(max_joined, "max_joined", 0)
        buckets = tuple(latency_buckets_ms)
        for b in buckets:
            _check_int(b, "a latency bucket", -_MAX_TS)
        if not buckets or any(a >= b for a, b in zip(buckets, buckets[1:], strict=False)):
            raise ValueError(f"latency_buckets_ms must be increasing and not empty, got {buckets!r}")
        self.latency_buckets_ms = buckets
        self.latency_counts = [0] * (len(buckets) + 1)
        self.stream_time = -1
        self.n_bytes = 0
        self.pending_events = 0
        self._entries: OrderedDict[str, _Event | _Label] = OrderedDict()
        self._joined: OrderedDict[str, int] = OrderedDict()  # id -> stream time of the join
        self._negative = expired_policy == "negative"
        self._counts = dict.fromkeys(COUNTERS, 0)
        self._next_expiry = _NEVER
        self._joined_expired = 0  # the joined ids expired so far (with those forgotten: those that left)
        self._set_packed(PackedState())
        self.event_fields: tuple[str, str, str] | None = None
        if event_fields is not None:
            self._set_event_fields(tuple(event_fields))

    def _set_event_fields(self, fields: tuple) -> None:
        JsonCodec(*fields)  # a ValueError for bad fields
        self.event_fields = fields

    def _set_packed(self, packed: PackedState) -> None:
        """What the last to_state wrote (the checkpoint form's packed copy): an entry that holds a row number
        there (an int in place of its bytes) is handed to ``self._row_left`` when it leaves."""
        self._packed = packed
        self._row_left = packed.gone.append

    # Counters

    @property
    def pending_labels(self) -> int:
        return len(self._entries) - self.pending_events

    @property
    def counters(self) -> dict[str, int]:
        """Every count, for metrics: pending events and labels, and the totals since the store began."""
        return {"pending_events": self.pending_events, "pending_labels": self.pending_labels, **self._counts}

    def __len__(self) -> int:
        return len(self._entries)

    def has_label(self, id: str) -> bool:
        """True when a label of ``id`` waits for its event (an event of that id would join now)."""
        return self._entries.get(id).__class__ is _Label

    def join_waiting(self, id: str, p: float, version: int, ts: int) -> int:
        """Exactly :meth:`add_event` for an event whose label waits and that moves the stream time past no
        expiry (the labels loop's common case when labels come first): the label ``y`` of the join, which
        the caller learns with the event's features now (``p``, its prediction, is what the delayed metrics
        judge); the join is counted as any. Returns -1, having done nothing, in every other case (then
        :meth:`add_event` decides)."""
        entry = self._entries.get(id)
        if (entry.__class__ is not _Label or p.__class__ is not float or not 0.0 <= p <= 1.0
                or version.__class__ is not int or not 0 <= version < _MAX_TS
                or ts.__class__ is not int or not -1 <= ts < _MAX_TS):
            return -1
        if ts > self.stream_time:
            if ts > self._next_expiry:
                return -1
            self.stream_time = ts
        del self._entries[id]
        self.n_bytes -= entry.nbytes
        if entry[7] is not None:
            self._row_left(entry[7])
        counts = self._counts  # _count_join, inline
        counts["joined"] += 1
        if ts >= 0 and entry.ts >= 0:
            self.latency_counts[bisect.bisect_left(self.latency_buckets_ms, entry.ts - ts)] += 1
        if self.max_joined:
            joined = self._joined
            if len(joined) >= self.max_joined:
                joined.popitem(last=False)
                counts["forgotten_joins"] += 1
            joined[id] = self.stream_time
        return entry.y

    # Feeding

    def add_event(
        self,
        id: str,
        x: dict,
        p: float,
        *,
        version: int,
        ts: int,
        topic: str = "",
        partition: int = 0,
        offset: int = -1,
        record_value: bytes | None = None,
        handed_off: bool = False,
    ) -> list[Joined]:
        """Feed a scored, unlabelled event: what to learn now (its join if its label was waiting, and any
        entries that expired or were evicted as negatives), else ``[]`` (the event is stored).

        ``record_value``, with ``event_fields``: the record value ``x`` was decoded from (by a
        :class:`~stream_logreg.codec.JsonCodec` with those fields), kept instead of ``x`` re-encoded. It is
        the caller's promise that the codec decodes it to ``x``; a restored state is checked.
        ``handed_off``: the event comes from a hand-off (another member's store): if this store holds it
        or has joined it already, it is counted in ``duplicate_handoffs`` (not ``duplicate_events``)."""
        if type(id) is not str:
            raise ValueError(f"an event needs a string id to be joined, got {id!r:.60}")
        if not isinstance(p, float) or not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be a probability (a float in [0, 1]), got {p!r:.60}")
        p = float(p)
        if type(version) is not int or not 0 <= version < _MAX_TS:
            _check_int(version, "version", 0)
        out = self._tick(ts)
        entries = self._entries
        entry = entries.get(id)
        if entry is not None:
            if type(entry) is _Label:
                del entries[id]
                self.n_bytes -= entry.nbytes
                if entry[7] is not None:
                    self._row_left(entry[7])
                out.append(self._join(id, x, entry.y, p, version, ts, entry.ts, topic, partition, offset))
            else:
                self._counts["duplicate_handoffs" if handed_off else "duplicate_events"] += 1
        elif id in self._joined:
            self._counts["duplicate_handoffs" if handed_off else "duplicate_events"] += 1
        else:
            if type(topic) is not str or type(partition) is not int or type(offset) is not int:
                _check_origin(topic, partition, offset)
            elif not (-1 <= partition < _MAX_TS and -1 <= offset < _MAX_TS):
                _check_origin(topic, partition, offset)
            if record_value is not None and self.event_fields is not None:
                blob, form = record_value if type(record_value) is bytes else bytes(record_value), _RECORD
            else:
                blob, form = _encode_features(x), _FEATURES
            nbytes = ENTRY_BYTES + len(id) + len(blob) + FEATURE_BYTES * len(x)
            event = _new(_Event, (x, blob, p, version, ts, self.stream_time, topic, partition, offset, nbytes,
                                  form))
            if len(entries) < self.max_pending and self.n_bytes + nbytes <= self.max_bytes and entries:
                entries[id] = event
                self.n_bytes += nbytes
                self.pending_events += 1
            else:
                self._store(id, event, out)
        return out

    def add_events(self, events: list[tuple]) -> list[tuple[int, Joined]]:
        """Feed consecutive scored events ``(id, x, p, version, ts, topic, partition, offset, record_value)``,
        exactly as :meth:`add_event` would one by one: ``(i, joined)`` for each event to learn now, ``i``
        the index of the event that brought it. The events loop's path: one call per polled batch, the
        common case (a new id that fits, kept as its record value) inline.

        >>> store = JoinStore(label_ttl_ms=60_000)
        >>> store.add_label("b", 1, ts=5)
        []
        >>> events = [("a", {"f": 1.0}, 0.25, 0, 10, "ev", 0, 0, None),
        ...           ("b", {"f": 2.0}, 0.5, 0, 20, "ev", 0, 1, None)]
        >>> [(i, j.id, j.y, j.p) for i, j in store.add_events(events)], store.counters["pending_events"]
        ([(1, 'b', 1, 0.5)], 1)
        """
        out: list[tuple[int, Joined]] = []
        entries = self._entries
        joined_ids = self._joined
        records = self.event_fields is not None
        max_pending, max_bytes = self.max_pending, self.max_bytes
        for i, (id, x, p, version, ts, topic, partition, offset, value) in enumerate(events):
            if (records and value.__class__ is bytes and id.__class__ is str and p.__class__ is float
                    and 0.0 <= p <= 1.0 and version.__class__ is int and 0 <= version < _MAX_TS
                    and ts.__class__ is int and -1 <= ts < _MAX_TS and x.__class__ is dict
                    and topic.__class__ is str and partition.__class__ is int and offset.__class__ is int
                    and -1 <= partition < _MAX_TS and -1 <= offset < _MAX_TS):
                if ts > self.stream_time:  # _tick, inline
                    self.stream_time = ts
                    if ts > self._next_expiry:
                        out.extend([(i, j) for j in self._expire(ts)])
                if id not in entries and id not in joined_ids and entries:
                    nbytes = ENTRY_BYTES + len(id) + len(value) + FEATURE_BYTES * len(x)
                    if len(entries) < max_pending and self.n_bytes + nbytes <= max_bytes:  # new, and it fits
                        entries[id] = _new(_Event, (x, value, p, version, ts, self.stream_time, topic,
                                                    partition, offset, nbytes, _RECORD))
                        self.n_bytes += nbytes
                        self.pending_events += 1
                        continue
            # a join, a duplicate, one that does not fit, features to encode, or a bad one: the general path
            out.extend([(i, j) for j in self.add_event(id, x, p, version=version, ts=ts, topic=topic,
                                                       partition=partition, offset=offset,
                                                       record_value=value)])
        return out

    def add_label(
        self, id: str, y: int, *, ts: int, topic: str = "", partition: int = 0, offset: int = -1,
        handed_off: bool = False,
    ) -> list[Joined]:
        """Feed a label: what to learn now (its event's join if the event was waiting, and any entries that
        expired or were evicted as negatives), else ``[]`` (stored, or a duplicate: ``duplicate_handoffs``
        for a label ``handed_off`` by another member's store)."""
        if type(id) is not str:
            raise ValueError(f"a label needs a string id, got {id!r:.60}")
        if y is not True and y is not False and (type(y) is not int or y not in (0, 1)):
            raise ValueError(f"a label must be 0 or 1, got {y!r:.60}")
        y = int(y)
        out = self._tick(ts)
        entries = self._entries
        entry = entries.get(id)
        if entry is not None:
            if type(entry) is _Event:
                del entries[id]
                self.n_bytes -= entry.nbytes
                self.pending_events -= 1
                if entry[1].__class__ is int:
                    self._row_left(entry[1])
                e = entry
                out.append(self._join(id, e.x, y, e.p, e.version, e.ts, ts, e.topic, e.partition, e.offset))
            else:
                self._counts["duplicate_handoffs" if handed_off else "duplicate_labels"] += 1
        elif id in self._joined:
            self._counts["duplicate_handoffs" if handed_off else "duplicate_labels"] += 1
        else:
            _check_origin(topic, partition, offset)
            label = _new(_Label, (y, ts, self.stream_time, topic, partition, offset, ENTRY_BYTES + len(id),
                                  None))
            self._store(id, label, out)
        return out

    def add_labels(self, labels: list[tuple]) -> list[tuple[int, Joined]]:
        """Feed consecutive labels ``(id, y, ts, topic, partition, offset)``, as :meth:`add_label` would one
        by one: ``(i, joined)`` for each event to learn now, ``i`` the index of the label that brought it (its
        join, or entries that expired or were evicted as negatives when it moved the stream time). The
        labels loop's path: one call per polled batch, the common join inline.

        >>> store = JoinStore(label_ttl_ms=60_000)
        >>> store.add_event("a", {"f": 1.0}, 0.25, version=0, ts=10)
        []
        >>> labels = [("z", 0, 20, "labels", 0, 0), ("a", 1, 30, "labels", 0, 1)]
        >>> [(i, j.id, j.y, j.p) for i, j in store.add_labels(labels)]
        [(1, 'a', 1, 0.25)]
        """
        out: list[tuple[int, Joined]] = []
        entries = self._entries
        joined_ids = self._joined
        counts = self._counts
        latency_counts, buckets = self.latency_counts, self.latency_buckets_ms
        max_joined = self.max_joined
        row_left = self._row_left
        for i, (id, y, ts, topic, partition, offset) in enumerate(labels):
            checked = (id.__class__ is str and y.__class__ is int and (y == 0 or y == 1)
                       and ts.__class__ is int and -1 <= ts < _MAX_TS)
            if checked:
                if ts > self.stream_time:  # _tick, inline
                    self.stream_time = ts
                    if ts > self._next_expiry:
                        out.extend([(i, j) for j in self._expire(ts)])
                entry = entries.get(id)
            else:
                entry = None
            if entry.__class__ is not _Event:
                if (checked and entry is None and id not in joined_ids and entries
                        and len(entries) < self.max_pending and topic.__class__ is str
                        and partition.__class__ is int and offset.__class__ is int
                        and -1 <= partition < _MAX_TS and -1 <= offset < _MAX_TS):  # a label first, that fits
                    nbytes = ENTRY_BYTES + len(id)
                    if self.n_bytes + nbytes <= self.max_bytes:
                        label = (y, ts, self.stream_time, topic, partition, offset, nbytes, None)
                        entries[id] = _new(_Label, label)
                        self.n_bytes += nbytes
                        continue
                # a label that does not fit, a duplicate, or a bad one: the general path
                out.extend([(i, j) for j in self.add_label(id, y, ts=ts, topic=topic, partition=partition,
                                                           offset=offset)])
                continue
            # The common case, _join inline: its event waits.
            del entries[id]
            self.n_bytes -= entry.nbytes
            self.pending_events -= 1
            if entry[1].__class__ is int:
                row_left(entry[1])
            counts["joined"] += 1
            event_ts = entry.ts
            latency = None
            if event_ts >= 0 and ts >= 0:
                latency = ts - event_ts
                latency_counts[bisect.bisect_left(buckets, latency)] += 1
            if max_joined:
                if len(joined_ids) >= max_joined:
                    joined_ids.popitem(last=False)
                    counts["forgotten_joins"] += 1
                joined_ids[id] = self.stream_time
            out.append((i, _new(Joined, (id, entry.x, y, entry.p, entry.version, latency, "label",
                                         entry.topic, entry.partition, entry.offset))))
        return out

    def advance(self, ts: int) -> list[Joined]:
        """Move the stream time to ``ts`` if it is later, and expire what waited longer than the TTL: returns
        the expired events to learn as negatives (``expired_policy="negative"``), else ``[]``."""
        return self._tick(ts)

    def take(self, partitions: set[tuple[str, int]]) -> list[Taken]:
        """Remove the entries whose record came from one of ``partitions`` (``(topic, partition)``) and
        return them, oldest first, as :class:`Taken` (e.g. to hand them to the partitions' next owner).
        Nothing is counted: they did not leave by a join, an expiry or an eviction."""
        entries = self._entries
        taken = [(id, e) for id, e in entries.items() if (e.topic, e.partition) in partitions]
        packed = self._packed.values([e.blob for _, e in taken if e.__class__ is _Event and e.form == _RECORD
                                      and e.blob.__class__ is int])
        out = []
        for id, e in taken:
            del entries[id]
            self.n_bytes -= e.nbytes
            row = e[1] if e.__class__ is _Event else e[7]
            if row.__class__ is int:
                self._row_left(row)
            if type(e) is _Event:
                self.pending_events -= 1
                value = (packed[row] if row.__class__ is int else row) if e.form == _RECORD else None
                out.append(Taken(id, e.x, None, e.ts, e.topic, e.partition, e.offset, value,
                                 e.p, e.version))
            else:
                out.append(Taken(id, None, e.y, e.ts, e.topic, e.partition, e.offset, None, None, None))
        self._update_next_expiry()
        return out

    def origins(self) -> set[tuple[str, int]]:
        """The ``(topic, partition)`` of every entry's record."""
        return {(e.topic, e.partition) for e in self._entries.values()}

    # Internals
    #
    # _next_expiry is at most the stream time after which the oldest entry or the oldest remembered join
    # expires (stored_at + ttl; they are the first of their ordered dicts): _expire runs only when the stream
    # time passes it. Removing an entry by a join may leave it too early, which only costs a call. A join
    # needs a pending entry, stored at or before the join's stream time: _next_expiry covers the join's id.

    def _tick(self, ts: int) -> list[Joined]:
        """Check a record's timestamp, move the stream time to it if later, expire what is due."""
        if type(ts) is not int or not -1 <= ts < _MAX_TS:
            _check_int(ts, "the record timestamp", -1)
        if ts <= self.stream_time:
            return []
        self.stream_time = ts
        return self._expire(ts) if ts > self._next_expiry else []

    def _expire(self, ts: int) -> list[Joined]:
        out: list[Joined] = []
        horizon = ts - self.label_ttl_ms  # entries stored before it have expired
        entries = self._entries
        while entries:
            entry = entries[next(iter(entries))]
            if entry.stored_at >= horizon:
                break
            self._drop_oldest(out, "expired_events", "orphan_labels", "expired")
        joined = self._joined
        while joined and joined[next(iter(joined))] < horizon:
            joined.popitem(last=False)
            self._joined_expired += 1
        self._update_next_expiry()
        return out

    def _update_next_expiry(self) -> None:
        entries, joined = self._entries, self._joined
        first = entries[next(iter(entries))].stored_at if entries else _NEVER
        if joined:
            first = min(first, joined[next(iter(joined))])
        self._next_expiry = first + self.label_ttl_ms

    def _join(
        self,
        id: str,
        x: dict,
        y: int,
        p: float,
        version: int,
        event_ts: int,
        label_ts: int,
        topic: str,
        partition: int,
        offset: int,
    ) -> Joined:
        latency = self._count_join(id, event_ts, label_ts)
        return _new(Joined, (id, x, y, p, version, latency, "label", topic, partition, offset))

    def _count_join(self, id: str, event_ts: int, label_ts: int) -> int | None:
        """Count a join (its latency in the histogram, its id remembered against late duplicates); the
        latency, or None without both timestamps."""
        counts = self._counts
        counts["joined"] += 1
        latency = None
        if event_ts >= 0 and label_ts >= 0:
            latency = label_ts - event_ts
            self.latency_counts[bisect.bisect_left(self.latency_buckets_ms, latency)] += 1
        joined = self._joined
        if self.max_joined:
            if len(joined) >= self.max_joined:
                joined.popitem(last=False)
                counts["forgotten_joins"] += 1
            joined[id] = self.stream_time
        return latency

    def _drop_oldest(self, out: list[Joined], event_counter: str, label_counter: str, cause: str) -> None:
        id, entry = self._entries.popitem(last=False)
        self.n_bytes -= entry.nbytes
        row = entry[1] if entry.__class__ is _Event else entry[7]
        if row.__class__ is int:
            self._row_left(row)
        self.pending_events -= type(entry) is _Event
        self._discard(id, entry, out, event_counter, label_counter, cause)

    def _discard(
        self,
        id: str,
        entry: _Event | _Label,
        out: list[Joined],
        event_counter: str,
        label_counter: str,
        cause: str,
    ) -> None:
        """Count an entry that leaves without its other half; an event becomes a negative by that policy."""
        if type(entry) is _Label:
            self._counts[label_counter] += 1
            return
        self._counts[event_counter] += 1
        if self._negative:
            e = entry
            out.append(Joined(id, e.x, 0, e.p, e.version, None, cause, e.topic, e.partition, e.offset))

    def _store(self, id: str, entry: _Event | _Label, out: list[Joined]) -> None:
        """Store an entry, evicting the oldest while it does not fit (the slow path of a store)."""
        if entry.nbytes > self.max_bytes:  # can never fit: dropped as if evicted at once
            self._discard(id, entry, out, "dropped_full_events", "dropped_full_labels", "evicted")
            return
        entries = self._entries
        while entries and (len(entries) >= self.max_pending or self.n_bytes + entry.nbytes > self.max_bytes):
            self._drop_oldest(out, "dropped_full_events", "dropped_full_labels", "evicted")
        entries[id] = entry
        self.n_bytes += entry.nbytes
        self.pending_events += type(entry) is _Event
        self._update_next_expiry()

    # State

    def params(self) -> dict:
        """The settings, as JSON."""
        return {
            "max_pending": self.max_pending,
            "max_bytes": self.max_bytes,
            "label_ttl_ms": self.label_ttl_ms,
            "expired_policy": self.expired_policy,
            "max_joined": self.max_joined,
            "latency_buckets_ms": list(self.latency_buckets_ms),
        }

    def to_state(self) -> tuple[dict[str, np.ndarray], dict]:
        """Everything the store holds, as int64/float64 arrays and a JSON-able dict (no pickle).

        Bitwise deterministic: the same operations give the same arrays and the same dict, whenever
        ``to_state`` was called before. ``JoinStore.from_state(*store.to_state())`` behaves exactly as
        ``store`` from then on.

        What it costs: Python work for the entries added and removed since the previous call only, and
        bulk copies (memcpy speed) of the rest. The store keeps a packed copy of what the previous call
        wrote, and the entries it covers hold their row number there instead of their bytes: an event's
        record value or features JSON is kept once (:meth:`PackedState.pack
        <consumers.state.join_state.PackedState.pack>`).
        """
        left = self._counts["forgotten_joins"] + self._joined_expired
        arrays, form = self._packed.pack(self._entries, self._joined, left)
        meta = {
            "format": FORMAT,
            "params": self.params(),
            "stream_time": self.stream_time,
            "counters": dict(self._counts),
            "latency_counts": list(self.latency_counts),
            **form,  # topics, id_bytes, x_bytes, joined_id_bytes
            "event_fields": None if self.event_fields is None else list(self.event_fields),
        }
        return arrays, meta

    @classmethod
    def from_state(cls, arrays: Mapping[str, np.ndarray], meta: Mapping, *, event_fields: Any = "as saved"
                   ) -> JoinStore:
        """The store that :meth:`to_state` described; a ``ValueError`` naming the fault for any state it could
        not have written (missing or extra arrays, wrong dtypes or lengths, non-finite or out-of-range values,
        bounds exceeded, malformed features, record values that do not decode to their event).

        ``event_fields``: those of the events to come (default: the state's). Events kept as record values
        of other fields are converted to features JSON (their memory estimate changes with their form)."""
        r = PackedState.unpack(arrays, meta, cls, event_fields)
        store = r.store
        store._entries, store._joined, store.stream_time = r.entries, r.joined, r.stream_time
        store._counts, store.latency_counts = r.counters, r.latency_counts
        store.n_bytes, store.pending_events = r.n_bytes, r.pending_events
        if r.event_fields is not None:
            store._set_event_fields(r.event_fields)
        store._set_packed(r.packed)
        store._update_next_expiry()
        return store
