"""The learner's outputs: predictions and dead letters through one ``KafkaProducer``, every failure bounded.

:class:`Outputs` sends and remembers what it sent since the last checkpoint (the outbox);
:meth:`Outputs.flush` makes sure that all of it is acknowledged before a checkpoint covers the messages the
outputs came from.

Every wait is bounded and no output can hold up a checkpoint or the shutdown for long:

- a flush waits at most its timeout (in short slices, so a stop request is heard) and re-sends failed
  records at most ``retries`` times; what is still not acknowledged then is **dropped and counted**
  (``LearnerStats.output_dropped`` and ``output_failures``, by topic), and the checkpoint goes on. Outputs
  are at least once while the topics are healthy, and best-effort beyond that bound (with exactly-once,
  a dropped record is never committed: :attr:`Outputs.lost` counts them, and the learner aborts the
  transaction and publishes its events' outputs again instead);
- a send that gets no metadata for its topic within the producer's ``max_block_ms`` (the brokers are away,
  e.g. restarting, or the topic is gone) holds that topic's records, in order and without blocking the loop
  again, for at most :attr:`Outputs.hold_seconds` and ``buffer_memory`` bytes: each flush tries to hand them
  to the producer again (the checkpoint waits meanwhile); past either bound the topic is unhealthy;
- a topic that cannot take records (deleted, not authorised, held for too long) is marked unhealthy
  (``LearnerStats.output_healthy`` false): records for it are dropped and counted at once instead of each
  blocking the loop, and it is probed again at every checkpoint;
- a dead letter bigger than the producer's ``max_request_size`` is sent truncated: the original headers,
  as much of the value as fits, and ``original_size``, ``original_sha256`` and ``truncated=true``.

``check_topics`` is the start-up check of the output topics (missing: :class:`MissingTopics`, or created
with the partition count of the input topic when asked).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import orjson
from kafka import KafkaProducer
from kafka import errors as kerr
from kafka.errors import KafkaError

from consumers.stats import LearnerStats

__all__ = ["MissingTopics", "Outputs", "check_topics", "fit_dead_letter"]

log = logging.getLogger(__name__)

# Room for the record's framing beyond key, value and headers (record batch header, varints).
_RECORD_OVERHEAD = 512
# Errors after which re-sending the same record cannot help.
_FATAL: tuple[type[Exception], ...] = tuple(
    getattr(kerr, name) for name in ("MessageSizeTooLargeError", "RecordTooLargeError",
                                     "TopicAuthorizationFailedError", "InvalidTopicError")
    if hasattr(kerr, name)
)


class MissingTopics(Exception):
    """Output topics that do not exist (``topics``)."""

    def __init__(self, topics: list[str]) -> None:
        super().__init__(", ".join(topics))
        self.topics = topics


class _Held:
    """The outbox's stand-in for the future of a record not handed to the producer yet (its topic is held:
    no metadata came within ``max_block_ms``); :meth:`Outputs.flush` sends it."""

    is_done = False

    @staticmethod
    def failed() -> bool:
        return False


_HELD = _Held()


class Outputs:
    """The producer side of the learner: ``dead_letter``, ``prediction``, ``flush``, ``close``.

    >>> outputs = Outputs(config, stats)                    # doctest: +SKIP
    >>> outputs.dead_letter(record, "bad_json", "...")       # doctest: +SKIP
    >>> outputs.flush(10.0, should_stop=lambda: False)       # doctest: +SKIP
    True
    """

    retries = 3  # re-sends of a failed record within one flush
    probe_every = 30.0  # seconds between two look-ups of an unhealthy topic
    hold_seconds = 30.0  # how long a topic without metadata holds its records before it is unhealthy

    def __init__(self, config: Any, stats: LearnerStats, producer: KafkaProducer | None = None) -> None:
        self.config = config
        self.stats = stats
        self.producer = producer
        self.max_request_size = config.producer_kwargs().get("max_request_size", 1_048_576)
        # Sent since the last checkpoint: (future or None, topic, value, key, headers, attempts).
        self._outbox: list[list[Any]] = []
        self._down: dict[str, str] = {}  # unhealthy topic -> why
        self._probed: dict[str, float] = {}  # unhealthy topic -> when last asked about
        self._held: dict[str, float] = {}  # topic without metadata -> since when its records are held
        self._held_bytes = 0  # what the held records take, at most ``buffer_memory``
        self.max_held_bytes = int(config.producer_kwargs().get("buffer_memory", 33_554_432))
        # Records dropped since the last reset(): exactly-once, the open transaction lacks them, so it may
        # not commit (the learner aborts it and publishes its events' outputs again).
        self.lost = 0
        # The group model (consumers.state.group_model.GroupModel), or None: its version goes into each
        # prediction (group_version: events it covered at the last synchronisation; group_synced_at).
        self.group: Any = None

    @property
    def enabled(self) -> bool:
        return bool(self.config.predictions_topic or self.config.dead_letter_topic)

    def connect(self) -> None:
        """Create the producer (raises ``KafkaError`` if the brokers cannot be reached)."""
        if self.producer is None and self.enabled:
            kwargs = self.config.producer_kwargs()
            self.producer = KafkaProducer(**kwargs)
            # kafka-python 3.0.12 does not pass allow_auto_create_topics on to its metadata (its requests
            # always allow creation): a deleted output topic would be re-created behind the operator's back
            # by a broker with auto.create.topics.enable. Guarded: does nothing where the attribute differs.
            cluster_config = getattr(getattr(self.producer, "_metadata", None), "config", None)
            if isinstance(cluster_config, dict) and "allow_auto_create_topics" in cluster_config:
                cluster_config["allow_auto_create_topics"] = kwargs.get("allow_auto_create_topics", True)

    # ------------------------------------------------------------------ sending

    def dead_letter(self, record: Any, reason: str, detail: str) -> None:
        """The original key and value of ``record`` to the dead-letter topic, with why and where from (cut
        to the producer's ``max_request_size``, see :func:`fit_dead_letter`)."""
        topic = self.config.dead_letter_topic
        if topic is None:
            return
        headers = [
            ("reason", reason.encode()),
            ("detail", detail[:1000].encode("utf-8", "replace")),
            ("source_topic", record.topic.encode()),
            ("source_partition", str(record.partition).encode()),
            ("source_offset", str(record.offset).encode()),
        ]
        value, headers = fit_dead_letter(record.value, record.key, headers, self.max_request_size)
        self.send(topic, value, record.key, headers)
        with self.stats.lock:
            self.stats.dead_lettered += 1

    def prediction(self, record: Any, ev: Any, p: float, n_samples_seen: int, checkpoint_id: str | None
                   ) -> None:
        """Publish ``p``, predicted for ``ev`` by the model when it had learned ``n_samples_seen`` samples
        (with the group model: ``group_version`` and ``group_synced_at`` of its last synchronisation)."""
        out = {
            "id": ev.id,
            "p": p,
            "checkpoint": checkpoint_id,
            "n_samples_seen": n_samples_seen,
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
        }
        if ev.y is not None:
            out["y"] = ev.y
        group = self.group
        if group is not None:  # the group model it synchronised to last (consumers.state.group_model)
            out["group_version"] = group.version
            out["group_synced_at"] = group.synced_at
        self.send(self.config.predictions_topic, orjson.dumps(out), record.key, [])
        with self.stats.lock:
            self.stats.predictions_published += 1

    def send(self, topic: str, value: bytes | None, key: bytes | None, headers: list, attempts: int = 0
             ) -> None:
        if topic in self._down:
            self._dropped(topic, 1)
            return
        entry = [_HELD, topic, value, key, headers, attempts]
        if topic in self._held:  # in order behind the held ones, without waiting for metadata again
            self._hold(entry)
        elif self._hand(entry):
            self._outbox.append(entry)

    def _hand(self, entry: list) -> bool | None:
        """Hand ``entry`` to the producer (its future into ``entry[0]``): True; False if it was dropped,
        None if it is held (no metadata for its topic within ``max_block_ms``)."""
        topic, value, key, headers = entry[1:5]
        try:
            entry[0] = self.producer.send(topic, value=value, key=key, headers=headers)
        except _FATAL as exc:
            self._failed(topic, exc, down=not isinstance(exc, kerr.MessageSizeTooLargeError))
            self._dropped(topic, 1)
            return False
        except KafkaError as exc:  # no metadata in max_block_ms: the brokers are away or the topic is gone
            if topic not in self._held:
                self._held[topic] = time.monotonic()
                log.warning("no metadata for %s within max_block_ms (%r): holding its records for at most "
                            "%.0fs", topic, exc, self.hold_seconds, extra={"topic": topic, "reason": "held"})
                with self.stats.lock:
                    self.stats.output_healthy = False
            self._hold(entry)
            return None
        return True

    @staticmethod
    def _size(entries: list[list]) -> int:
        return sum(len(o[2] or b"") + len(o[3] or b"") for o in entries)

    def _hold(self, entry: list) -> None:
        """Keep ``entry`` in the outbox, to be sent by the next flush (dropped past ``max_held_bytes``)."""
        size = self._size([entry])
        if self._held_bytes + size > self.max_held_bytes:
            self._failed(entry[1], kerr.KafkaTimeoutError("the records held for it exceed buffer_memory"),
                         down=False)
            self._dropped(entry[1], 1)
            return
        entry[0] = _HELD
        self._held_bytes += size
        self._outbox.append(entry)

    def _take_held(self, topic: str) -> list[list]:
        """The held records of ``topic``, in order, out of the outbox."""
        held = [o for o in self._outbox if o[0] is _HELD and o[1] == topic]
        self._outbox = [o for o in self._outbox if o[0] is not _HELD or o[1] != topic]
        self._held_bytes -= self._size(held)
        return held

    def _release_held(self) -> None:
        """Hand each held topic's records to the producer again, in order; a topic held for longer than
        :attr:`hold_seconds` is unhealthy (its records dropped and counted)."""
        for topic, since in list(self._held.items()):
            entries = self._take_held(topic)
            for i, entry in enumerate(entries):
                if topic in self._down:  # refused for good meanwhile
                    self._dropped(topic, len(entries) - i)
                    break
                sent = self._hand(entry)
                if sent:
                    self._outbox.append(entry)
                elif sent is None:  # still no metadata: the rest stay held, behind it
                    for rest in entries[i + 1:]:
                        self._hold(rest)
                    break
            else:
                del self._held[topic]
                continue
            if topic in self._down:
                del self._held[topic]
            elif time.monotonic() - since >= self.hold_seconds:
                del self._held[topic]
                held = self._take_held(topic)
                self._failed(topic, kerr.KafkaTimeoutError(f"no metadata for {self.hold_seconds:.0f}s"),
                             down=True)
                self._dropped(topic, len(held))
        with self.stats.lock:
            self.stats.output_healthy = not (self._down or self._held)

    # ------------------------------------------------------------------ flushing

    def flush(self, timeout: float, should_stop: Callable[[], bool] = lambda: False) -> bool:
        """Wait (at most ``timeout`` s, in slices that hear ``should_stop``) until every output since the
        last checkpoint is acknowledged, re-sending failures at most :attr:`retries` times.

        Records that cannot be sent (too large, topic deleted or not authorised, out of retries) are dropped
        and counted. Returns False if some records are still unacknowledged while their topics exist (the
        brokers are slow or away): they stay in the outbox and the caller postpones its checkpoint.
        """
        self._probe_down_topics()
        self._release_held()
        deadline = time.monotonic() + timeout
        while self._outbox:
            self._wait_done(deadline, should_stop)
            pending, retry = [], []
            for o in self._outbox:
                outcome = self._outcome(o)
                if outcome is None:
                    pending.append(o)
                elif outcome is not True:
                    fatal, down = self._verdict(outcome)
                    if fatal or o[5] >= self.retries:
                        self._failed(o[1], outcome, down=down)
                        self._dropped(o[1], 1)
                    else:
                        retry.append(o)
            self._outbox = pending
            for _, topic, value, key, headers, attempts in retry:
                with self.stats.lock:
                    self.stats.produce_failures += 1
                self.send(topic, value, key, headers, attempts + 1)
            if not retry:
                break
        if not self._outbox:
            return True
        gone = self._gone({o[1] for o in self._outbox if o[0] is not _HELD})
        for topic, exc in gone.items():  # deleted while its records waited: they can never be delivered
            self._failed(topic, exc, down=True)
        for o in self._outbox:
            if o[1] in gone and o[0] is not _HELD:
                self._dropped(o[1], 1)
        self._outbox = [o for o in self._outbox if o[1] not in gone or o[0] is _HELD]
        return not self._outbox

    # What a client backend says about its sends (flush() decides with these).

    @staticmethod
    def _outcome(o: list) -> Any:
        """The outbox entry's delivery: None (not acknowledged yet), True (delivered), or the exception."""
        future = o[0]
        if not future.is_done:
            return None
        return future.exception if future.failed() else True

    @staticmethod
    def _verdict(exc: BaseException) -> tuple[bool, bool]:
        """(never deliverable: drop without a retry; the topic takes no records: mark it down)."""
        return isinstance(exc, _FATAL), not isinstance(exc, kerr.MessageSizeTooLargeError)

    def _gone(self, topics: set[str]) -> dict[str, BaseException]:
        """The topics among ``topics`` that no longer exist (a non-blocking look-up), each with its error."""
        known = self.producer._metadata.partitions_for_topic  # noqa: SLF001  (non-blocking look-up)
        return {t: kerr.UnknownTopicOrPartitionError(t) for t in sorted(topics) if not known(t)}

    def reset(self) -> None:
        """Forget the outbox and the unhealthy topics: the transaction they were sent in was aborted (its
        records are never visible), and the events they came from are read and published again."""
        self._outbox, self._down, self._probed, self._held, self._held_bytes = [], {}, {}, {}, 0
        self.lost = 0
        with self.stats.lock:
            self.stats.output_healthy = True

    def drop_pending(self) -> int:
        """Give up on every unacknowledged output (counted as dropped); returns how many."""
        for o in self._outbox:
            self._dropped(o[1], 1)
        n, self._outbox, self._held, self._held_bytes = len(self._outbox), [], {}, 0
        return n

    def _wait_done(self, deadline: float, should_stop: Callable[[], bool]) -> None:
        while not should_stop():
            left = deadline - time.monotonic()
            if left <= 0 or all(o[0].is_done or o[0] is _HELD for o in self._outbox):
                return
            try:
                self.producer.flush(timeout=min(left, 0.5))
            except KafkaError:  # the slice expired
                pass

    def _probe_down_topics(self) -> None:
        """Ask the cluster again about each unhealthy topic, at most every :attr:`probe_every` seconds (a
        metadata look-up bounded by the producer's ``max_block_ms``)."""
        if not self._down or self.producer is None:
            return
        now = time.monotonic()
        for topic in list(self._down):
            if now - self._probed.get(topic, -math.inf) < self.probe_every:
                continue
            self._probed[topic] = now
            if not self._topic_exists(topic):
                self._forget(topic)
                continue
            del self._down[topic]
            log.info("output topic %s is back", topic, extra={"topic": topic})
        with self.stats.lock:
            self.stats.output_healthy = not self._down

    def _topic_exists(self, topic: str) -> bool:
        """Whether the cluster says that ``topic`` exists (False when it does not answer): a metadata
        look-up bounded by the producer's ``max_block_ms``."""
        try:
            self.producer.partitions_for(topic)
        except KafkaError:
            return False
        return True

    def _forget(self, topic: str) -> None:
        """Stop the producer from asking for the metadata of ``topic`` (it logs an error ~10 times a second
        for a topic that does not exist). Guarded: does nothing on a kafka-python without ``_metadata``."""
        cluster = getattr(self.producer, "_metadata", None)
        topics = getattr(cluster, "_topics", None)
        if isinstance(topics, set) and topic in topics:
            cluster.set_topics(topics - {topic})

    # ------------------------------------------------------------------ accounting

    def _failed(self, topic: str, exc: Any, down: bool) -> None:
        with self.stats.lock:
            self.stats.produce_failures += 1
            self.stats.output_failures[topic] = self.stats.output_failures.get(topic, 0) + 1
            if down:
                self.stats.output_healthy = False
        if down and topic not in self._down:
            self._down[topic] = repr(exc)
            self._probed[topic] = time.monotonic()
            self._forget(topic)
            log.error("cannot send to %s (%r): dropping its records until it is back", topic, exc,
                      extra={"topic": topic, "reason": type(exc).__name__})
        elif not down:
            log.warning("cannot send a record to %s: %r", topic, exc,
                        extra={"topic": topic, "reason": type(exc).__name__})

    def _dropped(self, topic: str, n: int) -> None:
        self.lost += n
        with self.stats.lock:
            self.stats.output_dropped[topic] = self.stats.output_dropped.get(topic, 0) + n

    def close(self, timeout: float) -> None:
        producer, self.producer = self.producer, None
        if producer is not None:
            try:
                producer.close(timeout=timeout)
            except KafkaError as exc:  # records it could not deliver in time (kafka-python then skips
                # its own force-close: do it, so that the sender thread ends and __del__ does not retry)
                log.warning("closing the producer: undelivered records dropped (%r)", exc,
                            extra={"reason": "close_timeout"})
                sender = getattr(producer, "_sender", None)
                if sender is not None:
                    sender.force_close()
                    sender.join(timeout)
                producer._closed = True  # noqa: SLF001
            except Exception:
                log.exception("closing the producer failed")
        self._outbox = []


def fit_dead_letter(value: bytes | None, key: bytes | None, headers: list[tuple[str, bytes]], limit: int
                    ) -> tuple[bytes | None, list[tuple[str, bytes]]]:
    """``(value, headers)`` unchanged if the record fits ``limit`` bytes (with room for its framing), else
    the value's first bytes that fit and the headers plus ``original_size``, ``original_sha256`` and
    ``truncated=true``.

    >>> value, headers = fit_dead_letter(b"a" * 5000, None, [("reason", b"oversize")], 2000)
    >>> len(value), dict(headers)["original_size"], dict(headers)["truncated"]
    (1365, b'5000', b'true')
    """
    fixed = (len(key) if key else 0) + sum(len(k) + len(v) for k, v in headers) + _RECORD_OVERHEAD
    if not value or len(value) + fixed <= limit:
        return value, headers
    extra = [
        ("original_size", str(len(value)).encode()),
        ("original_sha256", hashlib.sha256(value).hexdigest().encode()),
        ("truncated", b"true"),
    ]
    room = limit - fixed - sum(len(k) + len(v) for k, v in extra)
    return value[: max(room, 0)], headers + extra


def check_topics(admin_kwargs: dict[str, Any], topics: list[str], input_topic: str, create: bool
                 ) -> list[str]:
    """Raise :class:`MissingTopics` for the ``topics`` that do not exist, or create them (``create``) with
    the partition count of ``input_topic``; returns the topics created. Raises ``KafkaError`` when the
    cluster cannot be asked."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(**admin_kwargs)
    try:
        existing = set(admin.list_topics())
        missing = [t for t in topics if t not in existing]
        if not missing:
            return []
        if not create:
            raise MissingTopics(missing)
        desc = {t.get("name"): t for t in admin.describe_topics([input_topic])}
        partitions = (desc.get(input_topic) or {}).get("partitions") or []
        n = max(len(partitions), 1)
        admin.create_topics({t: {"num_partitions": n} for t in missing}, raise_errors=False,
                            wait_for_metadata=True)
        log.info("created output topics %s with %d partitions", missing, n,
                 extra={"topic": ",".join(missing)})
        return missing
    finally:
        admin.close()
