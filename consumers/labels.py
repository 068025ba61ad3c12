"""Delayed labels: score an event when it arrives, learn it when its label does (``--labels-topic``).

The learner calls :class:`Labels` at three points, and nowhere else:

- an unlabelled event with an id, once scored (and published as always): :meth:`Labels.event` keeps its
  features and the prediction ``p`` in the :class:`~consumers.state.join_store.JoinStore` (in the compiled
  pass, :meth:`Labels.scorer`'s callback: the events of a polled batch are fed in one
  :meth:`~consumers.state.join_store.JoinStore.add_events` before the store is next read);
- records of the labels topic: :meth:`Labels.records` decodes each label (a bad one is a rejection with a
  reason, dead-lettered like any bad input) and feeds it to the store;
- both return the :class:`~consumers.state.join_store.Joined` events to learn now; :meth:`Labels.learn`
  learns each one (``learn_one``, exactly once) and records its **delayed progressive metrics**: the log
  loss and accuracy of ``p``, the prediction made at scoring time, by
  :func:`consumers.stats.progressive_metrics`'s definition (events learned as negatives because no label
  came are learned, not judged).

The store is part of the model's state: :meth:`Labels.extras` goes into every checkpoint, beside the model
and the offsets of both topics (one consumer reads both, so the one contract of
:mod:`consumers.state.checkpointing` covers them), and :meth:`Labels.restore` brings it back with the model.
A crash therefore neither loses a pending event nor learns one twice: the model, the store and both topics'
positions move together. An event is kept with its decoded features (learned as they are when it joins:
no second decode) and its record value (what it is checkpointed and handed off as: the bytes it was
decoded from, not ``x`` re-encoded, ``event_fields`` of the store).

Hand-offs. On a revoke while running, :meth:`Labels.hand_off` appends what waits for the revoked partitions to
partition *i* of the labels topic, for their next owner, before the revoke checkpoint: hand-off records
(:func:`handoff_value`) that carry each entry's origin (topic, partition, offset, timestamp) and an event's
prediction; the next owner stores them as they were (:meth:`Labels.records`), and drops one it already holds
or has joined (``duplicate_handoffs``). On a stop nothing is handed off (the restarted learner gets its store
back with its partitions); a restarted learner hands off at its assignment what its checkpoint holds for
partitions that are now another member's (:meth:`Labels.strays`), so a crash between a hand-off and the next
checkpoint repeats the hand-off, and the repeat is dropped. With exactly-once the hand-off records are in the
transaction the revoke checkpoint commits (aborted with it by a crash).

A label message is a JSON object ``{"id": "..." | 123, "y": 0 | 1 | true | false}`` (field names
``label_id_field`` / ``label_y_field``); an integer id is its decimal string, as for events.

Partitioning (a requirement for producers)
------------------------------------------
A label must reach the member that holds its event: produce events and labels **keyed by the id**, with the
same partitioner, to topics with the **same partition count**. :func:`check_co_partitioned` refuses to start
otherwise (:class:`NotCoPartitioned`: exit status 2), and the consumer's assignor is pinned to Kafka's range
assignor, which gives partition *i* of both topics to the same member.

>>> decode_label(b'{"id": 7, "y": true}')
('7', 1)
>>> decode_label(b'{"id": "a", "y": 2}')
Rejection(reason=<Reason.BAD_LABEL: 'bad_label'>, detail="the label field 'y' must be 0 or 1, got 2")
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from stream_logreg._json import plain_labels

from consumers.state.join_store import Joined, JoinStore, Taken, _Label
from consumers.stats import progressive_metrics
from stream_logreg.codec import Event, Reason, Rejection, encode_event

__all__ = ["HANDOFF", "Labels", "NotCoPartitioned", "check_co_partitioned", "decode_handoff", "decode_label",
           "handoff_value"]

log = logging.getLogger(__name__)

EXTRA_NAME = "join_store"
_INT_MIN, _INT_END = -(2**63), 2**64
_Y = {0: 0, 1: 1}
_Y_TYPES = frozenset({int, bool, float})


def _same(record: Any) -> Any:
    return record


class NotCoPartitioned(Exception):
    """The labels topic and the events topic(s) are not co-partitioned (or one does not exist)."""


def decode_label(value: bytes | None, id_field: str = "id", y_field: str = "y",
                 max_bytes: int = 1_048_576) -> tuple[str, int] | Rejection:
    """``(id, y)`` of a label message, or a :class:`~stream_logreg.codec.Rejection` saying why not."""
    if value is None:
        return Rejection(Reason.TOMBSTONE, "the record value is null (a Kafka tombstone)")
    if len(value) > max_bytes:
        return Rejection(Reason.OVERSIZE, f"the label is {len(value)} bytes, more than {max_bytes}")
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        return Rejection(Reason.NOT_JSON, f"the label is not JSON: {str(exc)[:150]}")
    if type(doc) is not dict:
        return Rejection(Reason.NOT_OBJECT, f"a label must be a JSON object, got {type(doc).__name__}")
    id_ = doc.get(id_field)
    if type(id_) is int and _INT_MIN <= id_ < _INT_END:
        id_ = str(id_)
    elif type(id_) is not str:
        return Rejection(Reason.BAD_ID, f"the label's id field {id_field!r} must be a string or an integer, "
                                        f"got {orjson.dumps(id_).decode()[:60]}")
    y = doc.get(y_field)
    label = _Y.get(y) if type(y) in _Y_TYPES else None
    if label is None:
        return Rejection(Reason.BAD_LABEL, f"the label field {y_field!r} must be 0 or 1, got "
                                           f"{orjson.dumps(y).decode()[:60]}")
    return id_, label


#: The field that marks a hand-off record in the labels topic (an entry moved to its partition's next owner).
HANDOFF = "stream_logreg_handoff"
_HANDOFF_PREFIX = b'{"' + HANDOFF.encode() + b'":'


def handoff_value(t: Taken, fields: tuple[str, str, str] = ("x", "y", "id")) -> bytes:
    """The hand-off record of an entry taken from the store: a JSON object ``{"stream_logreg_handoff":
    {"kind": "event"|"label", "topic", "partition", "offset", "ts"[, "p", "version"]}, "id": ...,
    "record": <the event's JSON record> | "y": 0|1}`` (the origin: the original record's topic, partition,
    offset and timestamp; for an event, the prediction made when it was scored and the model version).

    >>> from consumers.state.join_store import Taken
    >>> v = handoff_value(Taken("a", None, 1, 5, "labels", 0, 7, None, None, None))
    >>> decode_handoff(v, 0)
    ('label', 'a', 1, {'kind': 'label', 'topic': 'labels', 'partition': 0, 'offset': 7, 'ts': 5})
    """
    origin = {"topic": t.topic, "partition": t.partition, "offset": t.offset, "ts": t.ts}
    if t.x is None:
        return orjson.dumps({HANDOFF: {"kind": "label", **origin}, "id": t.id, "y": t.y})
    record = t.value if t.value is not None else encode_event(t.x, None, t.id, fields)
    head = orjson.dumps({HANDOFF: {"kind": "event", **origin, "p": t.p, "version": t.version}, "id": t.id})
    return head[:-1] + b',"record":' + record + b"}"


def decode_handoff(value: bytes, partition: int, decode_event: Any = None) -> tuple | Rejection:
    """``("event", id, event, record_bytes, origin)`` or ``("label", id, y, origin)`` of a hand-off record
    read from ``partition`` (``origin``: its checked ``stream_logreg_handoff`` object), or a
    :class:`~stream_logreg.codec.Rejection` saying why not. ``decode_event`` decodes the event's record
    (the learner's codec)."""
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        return Rejection(Reason.NOT_JSON, f"the hand-off record is not JSON: {str(exc)[:150]}")
    meta = doc.get(HANDOFF) if type(doc) is dict else None
    id_ = doc.get("id") if type(doc) is dict else None
    ok = (type(meta) is dict and meta.get("kind") in ("event", "label") and type(meta.get("topic")) is str
          and meta.get("partition") == partition and type(meta.get("partition")) is int
          and all(type(meta.get(k)) is int and -1 <= meta[k] < 2**63 for k in ("offset", "ts"))
          and type(id_) is str)
    if not ok:
        return Rejection(Reason.BAD_LABEL, f"a malformed hand-off record (its origin, id or partition): "
                                           f"{bytes(value[:100])!r}")
    if meta["kind"] == "label":
        y = doc.get("y")
        if type(y) is not int or y not in (0, 1):
            return Rejection(Reason.BAD_LABEL, f"the hand-off record of label {id_!r:.60}: no label 0 or 1")
        return "label", id_, y, meta
    p, version = meta.get("p"), meta.get("version")
    if type(p) is not float or not 0.0 <= p <= 1.0 or type(version) is not int or not 0 <= version < 2**63:
        return Rejection(Reason.BAD_LABEL, f"the hand-off record of event {id_!r:.60} has no valid p/version")
    record = orjson.dumps(doc.get("record"))  # the same values as the original record: JSON round-trips
    ev = decode_event(record) if decode_event is not None else None
    if ev.__class__ is not Event or ev.y is not None or ev.id != id_:
        detail = ev.detail if ev.__class__ is Rejection else "not the unlabelled event of that id"
        return Rejection(Reason.BAD_VALUE, f"the hand-off record of event {id_!r:.60}: {detail}")
    return "event", id_, ev, record, meta


def check_co_partitioned(admin_kwargs: dict[str, Any], events_topics: list[str], labels_topic: str) -> int:
    """The partition count shared by ``labels_topic`` and every events topic; :class:`NotCoPartitioned`
    naming the counts otherwise. Raises ``KafkaError`` when the cluster cannot be asked."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(**admin_kwargs)
    try:
        topics = [*events_topics, labels_topic]
        existing = set(admin.list_topics())
        missing = [t for t in topics if t not in existing]
        if missing:
            raise NotCoPartitioned(f"topic(s) {', '.join(missing)} do not exist: create the labels topic "
                                   "with "
                                   "the events topic's partition count")
        desc = {t.get("topic", t.get("name")): t for t in admin.describe_topics(topics)}
        counts = {t: len((desc.get(t) or {}).get("partitions") or []) for t in topics}
    finally:
        admin.close()
    if len(set(counts.values())) != 1:
        listed = ", ".join(f"{t} has {n}" for t, n in counts.items())
        raise NotCoPartitioned(
            f"the labels topic must have the same number of partitions as the events topic ({listed}): a "
            "label must reach the learner that holds its event. Re-create --labels-topic with "
            f"{counts[events_topics[0]]} partitions, and key events and labels by their id"
        )
    return counts[labels_topic]


class Labels:
    """The delayed-label side of a learner: the join store, its checkpointed state and its metrics.

    >>> from types import SimpleNamespace
    >>> from consumers.stats import LearnerStats
    >>> cfg = SimpleNamespace(labels_topic="labels", label_id_field="id", label_y_field="y", label_ttl=60.0,
    ...                       expired_policy="drop", max_pending=100, max_pending_bytes=1 << 20,
    ...                       max_message_bytes=1 << 20)
    >>> labels = Labels(cfg, LearnerStats())
    >>> labels.store.add_event("a1", {"age": 42}, 0.8, version=0, ts=1_000)
    []
    >>> [j] = labels.store.add_label("a1", 1, ts=2_000)
    >>> j.y, j.p, j.latency_ms
    (1, 0.8, 1000)
    """

    def __init__(self, config: Any, stats: Any) -> None:
        self.config = config
        self.stats = stats
        self.topic: str = config.labels_topic
        self._store = self._new_store()
        self._pending: list[tuple] = []  # events kept by the scorer, not yet fed (see :meth:`scorer`)
        self.producer: Any = None  # for hand_off, made by connect()
        self._ps: list[float] = []  # the delayed metrics since the last publish(): predictions, labels
        self._ys: list[int] = []
        self._learned = 0
        self.handed_off = 0  # entries handed to the next owner of their partition, by this process
        make_codec = getattr(config, "make_codec", None)
        self._decode_event = make_codec().decoder() if make_codec is not None else None

    @property
    def store(self) -> JoinStore:
        """The join store, with every event kept so far fed to it (:meth:`scorer` defers them)."""
        if self._pending:
            self._flush()
        return self._store

    @store.setter
    def store(self, store: JoinStore) -> None:
        self._pending.clear()  # a store replaced (restored): what it had not been fed goes with the old one
        self._store = store

    def _flush(self) -> None:
        """Feed the events the scorer kept, in one :meth:`~consumers.state.join_store.JoinStore.add_events`
        (none of them joins: :meth:`scorer` keeps only those)."""
        pending = self._pending
        try:
            joined = self._store.add_events(pending)
        finally:
            pending.clear()  # in place: the scorer of the batch appends to this very list
        if joined:  # a broken promise: fail loudly rather than learn out of order
            raise RuntimeError("an event kept for the batch joined: the scorer's rule is broken")

    def connect(self) -> None:
        """Make the producer of :meth:`hand_off` (at start, with the learner's producer settings)."""
        if self.producer is None:
            from kafka import KafkaProducer

            self.producer = KafkaProducer(**self.config.producer_kwargs())

    def close(self, timeout: float) -> None:
        if self.producer is not None:
            self.producer.close(timeout=timeout)
            self.producer = None

    def hand_off(self, keys: set[tuple[str, int]], timeout: float, producer: Any = None) -> int:
        """Give the entries waiting for the partitions ``keys`` (``(topic, partition)``: revoked, or not
        this member's after a restore) to their next owner; returns how many were handed off.

        Each entry is appended to partition *i* of the labels topic (the co-partitioned partition of the
        same owner) as a hand-off record (:func:`handoff_value`): the event's features (its record value as
        kept), its prediction ``p`` and model version, or the label, with its **origin** (topic, partition,
        offset and timestamp of the original record). The next owner stores it as it was
        (:meth:`records`: not scored nor published again) and drops one it already holds or has joined
        (counted in ``duplicate_handoffs``), so a hand-off repeated after a crash learns nothing twice.

        With ``producer`` (exactly-once: the transactional producer, its transaction open) the records go
        into the transaction the caller's next checkpoint commits, with the store without them and the
        offsets: a crash before that commit aborts them, and the last checkpoint still holds the entries.
        Without (at-least-once), they are sent by this member's own producer and removed once every one is
        acknowledged within ``timeout`` seconds; a crash before the next checkpoint hands them off again
        from it (dropped as duplicates by the next owner). On a failed send none are removed (they stay
        here, and are handed off again at the next assignment) and 0 is returned.
        """
        transactional = producer is not None
        producer = producer if transactional else self.producer
        if not keys or producer is None:
            return 0
        before = self.store.to_state()
        taken = self.store.take(keys)
        if not taken:
            return 0
        fields = self._event_fields() or ("x", "y", "id")
        futures = []
        try:
            for t in taken:
                futures.append(producer.send(self.topic, value=handoff_value(t, fields),
                                             key=t.id.encode("utf-8", "replace"), partition=t.partition,
                                             timestamp_ms=t.ts if t.ts >= 0 else None))
            if not transactional:
                producer.flush(timeout=timeout)
                for f in futures:
                    f.get(timeout=0)
        except Exception as exc:  # keep them: a duplicate at the next owner is dropped, a loss is not
            self.store = JoinStore.from_state(*before, event_fields=self._event_fields())
            log.warning("could not hand %d waiting events and labels to the next owner of %s: %r", len(taken),
                        sorted(keys), exc, extra={"reason": "hand_off_failed"})
            return 0
        self.handed_off += len(taken)
        log.info("handed %d waiting events and labels to the next owner of %s", len(taken), sorted(keys))
        return len(taken)

    def strays(self, assigned: set) -> set[tuple[str, int]]:
        """The ``(topic, partition)`` of the entries of partitions not in ``assigned`` (after a restore:
        what a crash or a stop left here for partitions that are now another member's)."""
        mine = {(tp.topic, tp.partition) for tp in assigned}
        return {k for k in self.store.origins() if k not in mine}

    def _new_store(self) -> JoinStore:
        cfg = self.config
        return JoinStore(
            max_pending=cfg.max_pending,
            max_bytes=cfg.max_pending_bytes,
            label_ttl_ms=int(cfg.label_ttl * 1000),
            expired_policy=cfg.expired_policy,
            event_fields=self._event_fields(),
        )

    def _event_fields(self) -> tuple[str, str, str] | None:
        """The events' field names, when the store may keep their record values (the JSON codec's)."""
        cfg = self.config
        fields = tuple(getattr(cfg, name, None) for name in ("x_field", "y_field", "id_field"))
        return fields if all(type(f) is str for f in fields) else None

    # ------------------------------------------------------------------ state (checkpoint hooks)

    def crowded(self) -> bool:
        """Whether the join store holds more than half its bounds (entries or bytes): reading one topic
        ahead of the other is then held back (consumers.pacing)."""
        store = self.store
        return 2 * len(store) > store.max_pending or 2 * store.n_bytes > store.max_bytes

    def extras(self) -> dict:
        """The checkpoint's extra part: the join store's arrays and meta."""
        return {EXTRA_NAME: self.store.to_state()}

    def restore(self, extras: dict | None) -> None:
        """The join store of a restored checkpoint (an empty one for a fresh model, or a checkpoint written
        without a labels topic). A store of other settings is rebuilt with these settings: its entries are
        kept (within the new bounds), its counters too. Raises ``ValueError`` for a state no store wrote."""
        part = (extras or {}).get(EXTRA_NAME)
        if part is None:
            self.store = self._new_store()
        else:
            fields = self._event_fields()
            store = JoinStore.from_state(*part, event_fields=fields)
            fresh = self._new_store()
            if store.params() != fresh.params():
                arrays, meta = store.to_state()
                store = JoinStore.from_state(arrays, {**meta, "params": fresh.params()}, event_fields=fields)
            self.store = store
        self.publish()

    # ------------------------------------------------------------------ the hot path

    def event(self, record: Any, id_: str, x: dict, p: float, version: int) -> list[Joined]:
        """Keep a scored, unlabelled event until its label comes: the events to learn now. ``x`` is kept
        (learned as it is when the label comes), and its record value (what ``x`` was decoded from) as it
        is, not ``x`` re-encoded. ``record``: a record with ``topic partition offset value timestamp``, or
        a confluent-kafka message (read by its methods: no view made)."""
        if record.offset.__class__ is int:
            return self.store.add_event(id_, x, p, version=version, ts=record.timestamp, topic=record.topic,
                                        partition=record.partition, offset=record.offset,
                                        record_value=record.value)
        m = record
        return self.store.add_event(id_, x, p, version=version, ts=m.timestamp()[1], topic=m.topic(),
                                    partition=m.partition(), offset=m.offset(), record_value=m.value())

    def scorer(self, records: list, model: Any, publish: Any, counts: dict, tp: Any, learn_joined: Any,
               reject: Any, view: Any) -> tuple[Any, Any, tuple]:
        """The ``score`` and ``join`` callbacks of the compiled pass
        (:func:`stream_logreg._stream.learn_values`) over ``records`` (consecutive records of partition ``tp``
        of an events topic, kafka-python's or confluent-kafka's), and a function that says how many events
        they were given.

        ``score(j, x, id, p)`` publishes the scored event ``j`` (``publish(j, x, id, p)``, unless None) and
        keeps it. An event that cannot join now (its label is not waiting, and ``expired_policy="drop"``:
        keeping it expires or evicts nothing to learn) is only appended to a list, fed to the store with the
        others of the batch in one :meth:`~consumers.state.join_store.JoinStore.add_events` before anything
        else reads or changes the store (:attr:`store`): the same store, in the same order, as one by one,
        since nothing else reaches the store in between. Any other outcome goes to ``learn_joined(joined)``
        (records already viewed). Returns True when it changed the model.

        ``join``, for an event whose label waits (the pass looks its id up in the store's entries):
        ``joined(j, id, p)`` feeds it at once (after those kept before it,
        :meth:`~consumers.state.join_store.JoinStore.join_waiting`), publishes it and counts it as learned
        (``counts[tp]``, the delayed metrics), and returns the label, with which the pass learns it from its
        encoded row, in its place among the batch's labelled events: exactly :meth:`event` then
        :meth:`learn`. If the step refuses that update, ``refused(j, x, id, y)`` learns ``x`` the general way
        (``model.predict_learn_one``) or, refused again, takes the counts back and ``reject(view(record),
        ...)``-s it. ``joined`` returns -1, having published and counted nothing, where the store would do
        more than this join (an expiry due, a bad timestamp): ``score`` then does it all."""
        store = self._store
        waiting, join = store.has_label, store.join_waiting
        defer = store.expired_policy == "drop"
        pending = self._pending
        keep = pending.append
        learn = model.predict_learn_one
        ps, ys = self._ps, self._ys
        ps_append, ys_append = ps.append, ys.append
        confluent = bool(records) and records[0].offset.__class__ is not int
        topic, partition = tp.topic, tp.partition  # every record's
        n = 0

        def score(j: int, x: dict, id_: str | None, p: float) -> bool:
            nonlocal n
            n += 1
            if publish is not None:
                publish(j, x, id_, p)
            if id_ is None:
                return False
            m = records[j]
            if confluent:
                ts, offset, value = m.timestamp()[1], m.offset(), m.value()
            else:
                ts, offset, value = m.timestamp, m.offset, m.value
            version = model.n_samples_seen
            if defer and not waiting(id_):
                keep((id_, x, p, version, ts, topic, partition, offset, value))
                return False
            if pending:
                self._flush()
            joined = store.add_event(id_, x, p, version=version, ts=ts, topic=topic, partition=partition,
                                     offset=offset, record_value=value)
            if joined:
                learn_joined([(view(m), jn) for jn in joined])
            return bool(joined)

        def joined(j: int, id_: str, p: float) -> int:
            nonlocal n
            if pending:
                self._flush()
            m = records[j]
            y = join(id_, p, model.n_samples_seen, m.timestamp()[1] if confluent else m.timestamp)
            if y < 0:
                return -1
            n += 1
            if publish is not None:
                publish(j, None, id_, p)
            ps_append(p)
            ys_append(y)
            self._learned += 1
            counts[tp] = counts.get(tp, 0) + 1
            return y

        def refused(j: int, x: dict, id_: str, y: int) -> bool:
            try:
                learn(x, y)
            except ValueError as exc:
                ps.pop()
                ys.pop()
                self._learned -= 1
                if counts[tp] == 1:
                    del counts[tp]
                else:
                    counts[tp] -= 1
                reject(view(records[j]), Reason.BAD_VALUE,
                       f"the model refused to learn joined event {id_!r:.60}: {exc}")
                return False
            return True

        def given() -> int:
            return n

        return score, given, (store._entries, _Label, joined, refused)

    def records(self, records: list, reject: Any, values: list | None = None, view: Any = None
                ) -> list[tuple[Any, Joined]]:
        """Decode and feed consecutive records of one partition of the labels topic: ``(record, joined)``
        to learn now. A bad label is ``reject(record, reason, detail)``-ed and never reaches the store.

        ``records`` are the client's (``view(r)`` is the record with ``topic partition offset value
        timestamp``, made only for a record that needs it) and ``values`` their values, as the source
        polled them; without them, ``records`` are such records.

        One pass: a label of the plain form (an object whose id is a string and whose label is the integer 0
        or 1) is fed with the batch's others in one :meth:`~consumers.state.join_store.JoinStore.add_labels`,
        read by the compiled :func:`stream_logreg._json.plain_labels` (exactly ``{"id": "...", "y": 0|1}``
        in ASCII, no escapes: no Python object but the id and the tuple) or else by one ``orjson.loads``;
        any other record (a hand-off, an integer id, a bad label) takes :func:`decode_label`'s path, in its
        place in the order."""
        if not records:
            return []
        if view is None:
            view = _same
        if values is None:
            values = [r.value for r in records]
        r0 = view(records[0])
        topic, partition = r0.topic, r0.partition
        if callable(records[0].offset):  # confluent-kafka's messages: their methods, no view made
            offsets = [m.offset() for m in records]
            stamps = [m.timestamp()[1] for m in records]
        else:
            offsets = [r.offset for r in records]
            stamps = [r.timestamp for r in records]
        cfg = self.config
        id_field, y_field, max_bytes = cfg.label_id_field, cfg.label_y_field, cfg.max_message_bytes
        id_bytes, y_bytes = id_field.encode(), y_field.encode()
        loads, JSONDecodeError = orjson.loads, orjson.JSONDecodeError
        out: list[tuple[Any, Joined]] = []
        plain: list[tuple] = []  # the labels fed in one call, and the index of their records
        where: list[int] = []
        i, n = 0, len(values)
        while i < n:
            stop = plain_labels(values, i, id_bytes, y_bytes, max_bytes, stamps, topic, partition, offsets,
                                plain)
            where.extend(range(i, stop))
            if stop == n:
                break
            i, value = stop + 1, values[stop]  # not the compiled form: orjson's plain form, or the way below
            doc = None
            if value is not None and len(value) <= max_bytes and not value.startswith(_HANDOFF_PREFIX):
                try:
                    doc = loads(value)
                except JSONDecodeError:
                    pass
            if doc.__class__ is dict:
                id_, y = doc.get(id_field), doc.get(y_field)
                if id_.__class__ is str and y.__class__ is int and (y == 0 or y == 1):
                    plain.append((id_, y, stamps[stop], topic, partition, offsets[stop]))
                    where.append(stop)
                    continue
            if plain:  # keep the order: what came before this record first
                out.extend([(view(records[where[k]]), j) for k, j in self.store.add_labels(plain)])
                plain, where = [], []
            out.extend(self._one(view(records[stop]), reject))
        if plain:
            out.extend([(view(records[where[k]]), j) for k, j in self.store.add_labels(plain)])
        return out

    def _one(self, r: Any, reject: Any) -> list[tuple[Any, Joined]]:
        """A record of the labels topic that is not a plain label: a hand-off, or a label to decode."""
        cfg = self.config
        value = r.value
        if value is not None and value.startswith(_HANDOFF_PREFIX):
            return [(r, j) for j in self._handed(r, reject)]
        label = decode_label(value, cfg.label_id_field, cfg.label_y_field, cfg.max_message_bytes)
        if label.__class__ is Rejection:
            reject(r, label.reason, label.detail)
            return [(r, j) for j in self.store.advance(r.timestamp)]  # stream time moves on
        return [(r, j) for j in self.store.add_label(label[0], label[1], ts=r.timestamp, topic=r.topic,
                                                     partition=r.partition, offset=r.offset)]

    def _handed(self, r: Any, reject: Any) -> list[Joined]:
        """Store an entry handed off by the previous owner of the partition, as it was (its origin, its
        prediction): not scored or published again. A malformed one is ``reject``-ed."""
        store = self.store
        limit = 2 * self.config.max_message_bytes + 4096  # an event's record and the envelope
        if len(r.value) > limit:
            reject(r, Reason.OVERSIZE, f"the hand-off record is {len(r.value)} bytes, more than {limit}")
            return store.advance(r.timestamp)
        h = decode_handoff(r.value, r.partition, self._decode_event)
        if h.__class__ is Rejection:
            reject(r, h.reason, h.detail)
            return store.advance(r.timestamp)
        meta = h[-1]
        origin = {"topic": meta["topic"], "partition": meta["partition"], "offset": meta["offset"]}
        if h[0] == "label":
            return store.add_label(h[1], h[2], ts=meta["ts"], handed_off=True, **origin)
        _, id_, ev, record, _ = h
        return store.add_event(id_, ev.x, meta["p"], version=meta["version"], ts=meta["ts"], handed_off=True,
                               record_value=record, **origin)

    def learn(self, model: Any, joined: list[tuple[Any, Joined]], reject: Any) -> list[Joined]:
        """Learn each joined event once, in order (exactly ``model.learn_one(x, y)``: its compiled fused
        step, ``predict_learn_one``, whose prediction is not needed) and keep, for the delayed metrics, the
        prediction and label of those that came with their label (folded into the stats by
        :meth:`publish`); returns those learned. An update the model refuses is ``reject``-ed with the
        record that completed the join."""
        ps_append, ys_append = self._ps.append, self._ys.append
        learned = []
        keep = learned.append
        learn = model.predict_learn_one
        for r, j in joined:
            try:
                learn(j[1], j[2])
            except ValueError as exc:
                reject(r, Reason.BAD_VALUE, f"the model refused to learn joined event {j.id!r:.60}: {exc}")
                continue
            keep(j)
            if j[6] == "label":
                ps_append(j[3])
                ys_append(j[2])
        self._learned += len(learned)
        return learned

    def publish(self) -> None:
        """Fold what was learned since the last call (the delayed metrics: one vectorised
        :func:`~consumers.stats.progressive_metrics`) and the store's gauges and counters into the stats
        (once per polled batch)."""
        store, st = self.store, self.stats
        ps, ys = self._ps, self._ys
        loss, hits = progressive_metrics(ps, ys) if ps else (0.0, 0)
        with st.lock:
            st.learned += self._learned
            st.delayed_predicted += len(ps)
            st.delayed_log_loss_total += loss
            st.delayed_correct_total += hits
            st.join = {**store.counters, "handed_off": self.handed_off}
            st.join_bytes = store.n_bytes
            st.join_latency_buckets_ms = list(store.latency_buckets_ms)
            st.join_latency_counts = list(store.latency_counts)
        ps.clear()
        ys.clear()
        self._learned = 0
