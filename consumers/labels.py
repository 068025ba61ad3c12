"""Delayed labels: score an event when it arrives, learn it when its label does (``--labels-topic``).

The learner calls :class:`Labels` at three points, and nowhere else:

- an unlabelled event with an id, once scored (and published as always): :meth:`Labels.event` keeps its
  features and the prediction ``p`` in the :class:`~consumers.state.join_store.JoinStore`;
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
positions move together. On a revoke while running, :meth:`Labels.hand_off` appends what waits for the revoked
partitions again to the end of those partitions, for their next owner, before the revoke checkpoint; on a
stop nothing is handed off (the restarted learner gets its store back with its partitions).

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

from consumers.state.join_store import Joined, JoinStore
from consumers.stats import progressive_metrics
from stream_logreg.codec import Reason, Rejection, encode_event

__all__ = ["Labels", "NotCoPartitioned", "check_co_partitioned", "decode_label"]

log = logging.getLogger(__name__)

EXTRA_NAME = "join_store"
_INT_MIN, _INT_END = -(2**63), 2**64
_Y = {0: 0, 1: 1}
_Y_TYPES = frozenset({int, bool, float})


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
        self.store = self._new_store()
        self.producer: Any = None  # for hand_off, made by connect()
        self._ps: list[float] = []  # the delayed metrics since the last publish(): predictions, labels
        self._ys: list[int] = []
        self._learned = 0
        self.handed_off = 0  # entries handed to the next owner of their partition, by this process

    def connect(self) -> None:
        """Make the producer of :meth:`hand_off` (at start, with the learner's producer settings)."""
        if self.producer is None:
            from kafka import KafkaProducer

            self.producer = KafkaProducer(**self.config.producer_kwargs())

    def close(self, timeout: float) -> None:
        if self.producer is not None:
            self.producer.close(timeout=timeout)
            self.producer = None

    def hand_off(self, partitions: set, timeout: float) -> int:
        """Give the entries waiting for revoked ``partitions`` to their next owner: each is appended again
        to the end of its own partition (same key, value rebuilt from what is kept, original timestamp),
        and, once every one is acknowledged within ``timeout`` seconds, removed from the store. The caller
        then checkpoints (the store without them) and commits. Returns how many were handed off; on a
        failed send, none are removed (they stay here and expire, counted) and 0 is returned."""
        keys = {(tp.topic, tp.partition) for tp in partitions}
        if not keys or self.producer is None:
            return 0
        before = self.store.to_state()
        taken = self.store.take(keys)
        if not taken:
            return 0
        cfg = self.config
        fields = (cfg.x_field, cfg.y_field, cfg.id_field)
        futures = []
        try:
            for (id_, x, y, ts), (topic, partition) in zip(taken, self._origins(before, keys), strict=True):
                value = (encode_event(x, None, id_, fields) if x is not None
                         else orjson.dumps({cfg.label_id_field: id_, cfg.label_y_field: y}))
                futures.append(self.producer.send(topic, value=value, key=id_.encode("utf-8", "replace"),
                                                  partition=partition, timestamp_ms=ts if ts >= 0 else None))
            self.producer.flush(timeout=timeout)
            for f in futures:
                f.get(timeout=0)
        except Exception as exc:  # keep them: a duplicate at the next owner is counted, a loss is not
            self.store = JoinStore.from_state(*before)
            log.warning("could not hand %d waiting events and labels to the next owner of %s: %r", len(taken),
                        sorted(keys), exc, extra={"reason": "hand_off_failed"})
            return 0
        self.handed_off += len(taken)
        log.info("handed %d waiting events and labels to the next owner of %s", len(taken), sorted(keys))
        return len(taken)

    @staticmethod
    def _origins(state: tuple, keys: set) -> list[tuple[str, int]]:
        """(topic, partition) of the entries of ``state`` in ``keys``, in store order (as take() returns)."""
        arrays, meta = state
        topics = meta["topics"]
        pairs = zip(arrays["topic"].tolist(), arrays["partition"].tolist(), strict=True)
        return [o for o in ((topics[t], p) for t, p in pairs) if o in keys]

    def _new_store(self) -> JoinStore:
        cfg = self.config
        return JoinStore(
            max_pending=cfg.max_pending,
            max_bytes=cfg.max_pending_bytes,
            label_ttl_ms=int(cfg.label_ttl * 1000),
            expired_policy=cfg.expired_policy,
        )

    # ------------------------------------------------------------------ state (checkpoint hooks)

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
            store = JoinStore.from_state(*part)
            fresh = self._new_store()
            if store.params() != fresh.params():
                arrays, meta = store.to_state()
                store = JoinStore.from_state(arrays, {**meta, "params": fresh.params()})
            self.store = store
        self.publish()

    # ------------------------------------------------------------------ the hot path

    def event(self, record: Any, id_: str, x: dict, p: float, version: int) -> list[Joined]:
        """Keep a scored, unlabelled event until its label comes: the events to learn now."""
        return self.store.add_event(id_, x, p, version=version, ts=record.timestamp, topic=record.topic,
                                    partition=record.partition, offset=record.offset)

    def records(self, records: list, reject: Any) -> list[tuple[Any, Joined]]:
        """Decode and feed consecutive records of the labels topic: ``(record, joined)`` to learn now. A bad
        label is ``reject(record, reason, detail)``-ed and never reaches the store."""
        cfg = self.config
        id_field, y_field, max_bytes = cfg.label_id_field, cfg.label_y_field, cfg.max_message_bytes
        add = self.store.add_label
        out = []
        for r in records:
            label = decode_label(r.value, id_field, y_field, max_bytes)
            if label.__class__ is Rejection:
                reject(r, label.reason, label.detail)
                out.extend((r, j) for j in self.store.advance(r.timestamp))  # stream time moves on
                continue
            for j in add(label[0], label[1], ts=r.timestamp, topic=r.topic, partition=r.partition,
                         offset=r.offset):
                out.append((r, j))
        return out

    def learn(self, model: Any, joined: list[tuple[Any, Joined]], reject: Any) -> list[Joined]:
        """Learn each joined event once (``model.learn_one``) and keep, for the delayed metrics, the
        prediction and label of those that came with their label (folded into the stats by
        :meth:`publish`); returns those learned. An update the model refuses is ``reject``-ed with the
        record that completed the join."""
        ps, ys = self._ps, self._ys
        learned = []
        for r, j in joined:
            try:
                model.learn_one(j.x, j.y)
            except ValueError as exc:
                reject(r, Reason.BAD_VALUE, f"the model refused to learn joined event {j.id!r:.60}: {exc}")
                continue
            learned.append(j)
            if j.cause == "label":
                ps.append(j.p)
                ys.append(j.y)
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
