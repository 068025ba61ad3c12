"""The learner's second client backend: confluent-kafka (librdkafka), behind the same source and outputs.

``--kafka-client confluent`` (``LearnerConfig.kafka_client``; ``pip install 'stream-logreg[confluent]'``)
swaps :class:`consumers.source.Source` and :class:`consumers.outputs.Outputs` for :class:`ConfluentSource`
and :class:`ConfluentOutputs`, which keep their contract; the loop does not know which client it runs on:

- the partitions it sees are ``kafka.TopicPartition`` tuples, errors ``kafka.errors.KafkaError``;
- :meth:`ConfluentSource.poll` gives, per partition, the raw ``confluent_kafka.Message`` objects and their
  values (the hot loop reads only the values); :meth:`ConfluentSource.record` makes the neutral
  :class:`Record` (``topic partition offset key value timestamp``) of a message, only where one is needed
  (a dead letter, a prediction, the first event of each run of a mini-batch);
- checkpoint-then-commit: ``enable.auto.commit`` and ``enable.auto.offset.store`` are off, offsets are
  committed explicitly and synchronously, bounded by ``commit_timeout_ms`` (:func:`bounded`);
- the settings are the learner's kafka-python ones, mapped to librdkafka names (:func:`consumer_conf`,
  :func:`producer_conf`); one without a librdkafka equivalent is refused, naming it.

Exactly-once (transactions)
---------------------------
With ``processing_guarantee="exactly-once"`` the outputs send on the learner's transactional producer
(:class:`consumers.confluent_tx.TransactionalProducer`, a ``Producer``), not on one of their own. Its
properties are :func:`producer_conf`'s plus ``transactional.id`` (``stream-logreg-state.<state topic>.<key>``,
as on kafka-python), ``transaction.timeout.ms`` (kafka-python's ``transaction_timeout_ms``: 2 ×
``checkpoint_every_seconds``, 60 s to 15 min) and ``message.max.bytes`` 1 MiB unless set (kafka-python's
``max_request_size`` default); librdkafka enables idempotence and ``acks=all`` itself. The offsets go into the
transaction with the consumer's ``consumer_group_metadata()``.

Threads: where the rebalance callbacks run
------------------------------------------
librdkafka's background threads fetch and heartbeat, but ``on_assign``, ``on_revoke`` and ``on_lost`` are
served *on the calling thread*, inside ``Consumer.consume()`` (and ``close()``) — a hand-off, as with
kafka-python's IO thread, except that the callback may make blocking calls. So the same learner methods do
the work: on revoke, checkpoint and commit (synchronously) before the partitions go; on assign, assign and
pause (the loop seeks and resumes them right after ``consume()`` returns); on loss, neither checkpoint nor
commit.

Fetching, tuned fairly
----------------------
librdkafka prefetches into a local queue; with its defaults a consumer slower than the fetcher stalls:
once ``queued.min.messages`` (100,000) are queued, the next fetch is postponed by ``fetch.queue.backoff.ms``
(1 s) — the queue runs dry while the fetcher sleeps. Both the learner and the raw client of
``bench/bench_consumer.py`` set ``fetch.queue.backoff.ms`` to :data:`FETCH_BACKOFF_MS` (10 ms: the queue
then holds ~0.5 s of events at 200,000 events/s, so it never runs dry; 0 was measured ~25% slower on the
shared 2-core machine here, the fetcher re-checking a full queue in a loop and taking CPU from the learner).
The queue stays bounded by ``queued.max.messages.kbytes`` (:data:`QUEUE_KBYTES`, 16 MB a partition).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from confluent_kafka import OFFSET_INVALID, Consumer, KafkaException, Producer
from confluent_kafka import KafkaError as CKError
from confluent_kafka import TopicPartition as CTopicPartition
from kafka import TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from consumers.config import ConfigError
from consumers.outputs import Outputs
from consumers.source import RebalanceHandler, Source
from consumers.state.checkpointing import tp_keys

__all__ = ["ConfluentOutputs", "ConfluentSource", "Record", "bounded", "consumer_conf", "producer_conf"]

log = logging.getLogger(__name__)

#: Bound of the local fetch queue, per partition (librdkafka's default is 64 MB).
QUEUE_KBYTES = 16_384
#: How long librdkafka waits before fetching again into a full local queue (its default: 1000 ms).
FETCH_BACKOFF_MS = 10

# kafka-python setting -> librdkafka property (both clients / consumer only / producer only).
_COMMON = {
    "client_id": "client.id",
    "security_protocol": "security.protocol",
    "sasl_mechanism": "sasl.mechanisms",
    "sasl_plain_username": "sasl.username",
    "sasl_plain_password": "sasl.password",
    "sasl_kerberos_service_name": "sasl.kerberos.service.name",
    "ssl_cafile": "ssl.ca.location",
    "ssl_certfile": "ssl.certificate.location",
    "ssl_keyfile": "ssl.key.location",
    "ssl_password": "ssl.key.password",
    "ssl_crlfile": "ssl.crl.location",
    "ssl_ciphers": "ssl.cipher.suites",
    "reconnect_backoff_ms": "reconnect.backoff.ms",
    "reconnect_backoff_max_ms": "reconnect.backoff.max.ms",
    "retry_backoff_ms": "retry.backoff.ms",
    "metadata_max_age_ms": "metadata.max.age.ms",
    "connections_max_idle_ms": "connections.max.idle.ms",
    "receive_buffer_bytes": "socket.receive.buffer.bytes",
    "send_buffer_bytes": "socket.send.buffer.bytes",
    "allow_auto_create_topics": "allow.auto.create.topics",
}
_CONSUMER = {
    **_COMMON,
    "request_timeout_ms": "socket.timeout.ms",
    "session_timeout_ms": "session.timeout.ms",
    "heartbeat_interval_ms": "heartbeat.interval.ms",
    "max_poll_interval_ms": "max.poll.interval.ms",
    "fetch_max_wait_ms": "fetch.wait.max.ms",
    "fetch_min_bytes": "fetch.min.bytes",
    "fetch_max_bytes": "fetch.max.bytes",
    "max_partition_fetch_bytes": "max.partition.fetch.bytes",
    "check_crcs": "check.crcs",
    "isolation_level": "isolation.level",
}
_PRODUCER = {
    **_COMMON,
    "request_timeout_ms": "request.timeout.ms",
    "acks": "acks",
    "linger_ms": "linger.ms",
    "batch_size": "batch.size",
    "compression_type": "compression.type",
    "max_request_size": "message.max.bytes",
    "retries": "retries",
    "enable_idempotence": "enable.idempotence",
    "delivery_timeout_ms": "delivery.timeout.ms",
    "max_in_flight_requests_per_connection": "max.in.flight.requests.per.connection",
}
# kafka-python settings that mean nothing to librdkafka (its own bounds apply), dropped silently.
_IGNORED = frozenset({"api_version", "bootstrap_timeout_ms", "max_block_ms", "api_version_auto_timeout_ms"})


def _mapped(settings: dict[str, Any], table: dict[str, str], name: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in settings.items():
        if key in _IGNORED or value is None:
            continue
        if key == "ssl_check_hostname":
            out["ssl.endpoint.identification.algorithm"] = "https" if value else "none"
        elif key == "acks":
            out["acks"] = "all" if value == -1 else value
        elif key in table:
            out[table[key]] = value
        else:
            raise ConfigError(f"{name}: {key!r} has no confluent-kafka equivalent here: leave it out, or use "
                              "--kafka-client kafka-python")
    return out


def _bootstrap(config: Any) -> str:
    servers = config.bootstrap_servers
    return servers if isinstance(servers, str) else ",".join(servers)


def consumer_conf(config: Any) -> dict[str, Any]:
    """The librdkafka properties of the learner's consumer (no group instance id, no callbacks); raises
    :class:`~consumers.config.ConfigError` naming a setting that has no equivalent.

    >>> from consumers.config import LearnerConfig
    >>> cfg = LearnerConfig(bootstrap_servers="k:9092", topics=["t"], group_id="g", checkpoint_dir="/tmp/c",
    ...                     client_settings={"security_protocol": "SSL", "ssl_check_hostname": False})
    >>> conf = consumer_conf(cfg)
    >>> conf["security.protocol"], conf["ssl.endpoint.identification.algorithm"], conf["enable.auto.commit"]
    ('SSL', 'none', False)
    """
    shared = {k: v for k, v in config.client_settings.items() if k in _CONSUMER or k == "ssl_check_hostname"}
    conf = _mapped(shared, _CONSUMER, "client_settings")
    conf.update(_mapped(config.consumer_settings, _CONSUMER, "consumer_settings"))
    conf.update({
        "bootstrap.servers": _bootstrap(config),
        "group.id": config.group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": config.auto_offset_reset,
        "fetch.queue.backoff.ms": FETCH_BACKOFF_MS,
        "queued.max.messages.kbytes": QUEUE_KBYTES,
    })
    return conf


def producer_conf(config: Any) -> dict[str, Any]:
    """The librdkafka properties of the learner's producer (see :func:`consumer_conf`)."""
    shared = {k: v for k, v in config.client_settings.items() if k in _PRODUCER or k == "ssl_check_hostname"}
    conf = {"allow.auto.create.topics": False}  # a deleted output topic is not re-created by sending to it
    conf.update(_mapped(shared, _PRODUCER, "client_settings"))
    conf.update(_mapped(config.producer_settings, _PRODUCER, "producer_settings"))
    conf["bootstrap.servers"] = _bootstrap(config)
    return conf


def check_config(config: Any) -> None:
    """Raise :class:`~consumers.config.ConfigError` unless both clients' settings map."""
    consumer_conf(config)
    producer_conf(config)


class Record:
    """A consumed message as the loop's outputs and checkpoints see it, whatever the client: ``topic
    partition offset key value timestamp``, read from the ``confluent_kafka.Message`` when asked (cheap to
    make: each run of a mini-batch holds one, and usually only its offset is ever read)."""

    __slots__ = ("_m",)

    def __init__(self, message: Any) -> None:
        self._m = message

    topic = property(lambda self: self._m.topic())
    partition = property(lambda self: self._m.partition())
    offset = property(lambda self: self._m.offset())
    key = property(lambda self: self._m.key())
    value = property(lambda self: self._m.value())
    timestamp = property(lambda self: self._m.timestamp()[1])

    def __repr__(self) -> str:
        return f"Record({self.topic!r}, {self.partition}, {self.offset})"


def bounded(fn: Callable[[], Any], timeout: float, what: str) -> Any:
    """``fn()``, waited for at most ``timeout`` seconds (librdkafka's synchronous calls take no timeout):
    its result, its exception, or ``KafkaError`` on timeout (the call goes on in a daemon thread)."""
    box: list[Any] = []

    def call() -> None:
        try:
            box.append((True, fn()))
        except BaseException as exc:  # noqa: BLE001  (handed to the caller)
            box.append((False, exc))

    thread = threading.Thread(target=call, name=f"stream-logreg-{what}", daemon=True)
    thread.start()
    thread.join(timeout)
    if not box:
        raise KafkaError(f"{what} did not complete within {timeout:g} s")
    ok, value = box[0]
    if not ok:
        raise _neutral(value) if isinstance(value, KafkaException) else value
    return value


def _neutral(exc: KafkaException) -> KafkaError:
    """A ``kafka.errors.KafkaError`` saying what the confluent-kafka exception says."""
    return KafkaError(str(exc.args[0]) if exc.args else repr(exc))


def _ctp(tp: TopicPartition, offset: int = OFFSET_INVALID, metadata: str | None = None) -> CTopicPartition:
    if metadata is None:
        return CTopicPartition(tp.topic, tp.partition, offset)
    return CTopicPartition(tp.topic, tp.partition, offset, metadata)


def _tps(partitions: Iterable[CTopicPartition]) -> set[TopicPartition]:
    return {TopicPartition(p.topic, p.partition) for p in partitions}


class ConfluentSource(Source):
    """:class:`~consumers.source.Source` on a ``confluent_kafka.Consumer`` (same methods, same contract;
    static membership and the admin LeaveGroup on a graceful stop are inherited)."""

    probe_every = 1.0  # seconds between two connection probes while the brokers seem away
    highwater_every = 1.0  # seconds between two look-ups of a partition's end offset (for the lag)
    pause_keeps_fetched = False  # librdkafka drops what it fetched for a paused partition: fetched again

    def __init__(self, config: Any, stats: Any) -> None:
        super().__init__(config, stats)
        self._handler: RebalanceHandler | None = None
        self._down = False  # all brokers down, as librdkafka last said
        self._probed = 0.0
        self._max = config.max_poll_records
        self._keys: dict[Any, TopicPartition] = {}  # partition, or (topic, partition) -> TopicPartition
        self._one_topic = len(config.input_topics) == 1
        # The assignment, kept by the rebalance callbacks (librdkafka's assignment() is a round trip to
        # its main thread, ~0.5 ms: too slow for every poll).
        self._assigned: set[TopicPartition] = set()
        self._highwaters: dict[TopicPartition, tuple[float, int | None]] = {}
        self._idle = threading.Event()  # no synchronous commit is running (in a bounded() thread)
        self._idle.set()
        self._sent = 0  # commit_soon() commits not answered yet
        self._refused: list[BaseException] = []  # their failures, not yet taken by commit_failures()
        self._answers = threading.Lock()

    # ------------------------------------------------------------------ connecting

    def conf(self) -> dict[str, Any]:
        conf = consumer_conf(self.config)
        conf.update({"group.instance.id": self.instance_id, "error_cb": self._on_error, "logger": log,
                     "on_commit": self._on_commit})
        return conf

    def _open(self, handler: RebalanceHandler, deadline: float) -> Consumer:
        """One connection attempt: a consumer whose brokers answered a metadata request (librdkafka
        connects lazily), subscribed (raises ``KafkaError``)."""
        self._handler = handler
        try:
            consumer = Consumer(self.conf())
        except KafkaException as exc:  # e.g. an unreadable certificate file: said at the connect timeout
            raise _neutral(exc) from None
        try:
            attempt = max(min(1.0, deadline - time.monotonic()), 0.1)
            consumer.list_topics(self.config.topics[0], timeout=attempt)
        except KafkaException as exc:
            consumer.close()
            raise _neutral(exc) from None
        self._down = False
        self._assigned = set()
        self._sent, self._refused = 0, []  # a new consumer: nothing of an old one is to be answered
        consumer.subscribe(self.config.input_topics, on_assign=self._on_assign, on_revoke=self._on_revoke,
                           on_lost=self._on_lost)
        return consumer

    def _on_error(self, err: CKError) -> None:
        """librdkafka's client-level errors (served inside ``consume()``)."""
        code = err.code()
        if code == CKError._ALL_BROKERS_DOWN:  # noqa: SLF001  (librdkafka's local error codes)
            self._down = True
        elif code in (CKError.FENCED_INSTANCE_ID, CKError._FENCED) or (  # noqa: SLF001
                err.fatal() and "fenced" in err.str().lower()):
            self.fenced = True
        log.warning("kafka client: %s", err.str(), extra={"reason": err.name()})

    def connected(self) -> bool:
        """Whether the brokers answer (after librdkafka said all were down: a bounded probe, at most every
        :attr:`probe_every` seconds)."""
        if not self._down or self.consumer is None:
            return self.consumer is not None
        now = time.monotonic()
        if now - self._probed >= self.probe_every:
            self._probed = now
            try:
                self.consumer.list_topics(self.config.topics[0], timeout=0.2)
                self._down = False
            except KafkaException:
                pass
        return not self._down

    # ------------------------------------------------------------------ rebalance callbacks

    def _on_assign(self, consumer: Consumer, partitions: list[CTopicPartition]) -> None:
        assigned = _tps(partitions)
        try:
            consumer.assign(partitions)
            self._assigned = assigned  # eager protocol: the whole new assignment
            self.assigned(assigned)  # paused until sought
            self._handler.on_assigned(assigned)
        except Exception:
            log.exception("handling the assignment of %s failed", tp_keys(assigned))

    def _on_revoke(self, consumer: Consumer, partitions: list[CTopicPartition]) -> None:
        revoked = _tps(partitions)
        self._assigned = self._assigned - revoked
        if not revoked:
            return
        try:
            offsets = self._handler.on_revoked(revoked)
            # On close, the learner has committed already (bounded). Otherwise: on this thread and
            # asynchronously. confluent-kafka lets a consumer be called during consume() (which runs this
            # callback) only from consume()'s own thread: a call from another thread waits at its gate
            # until consume() returns, after this callback (a synchronous commit bounded in a helper thread
            # timed out there, every time a revoke had offsets to commit). librdkafka ends the revoke and
            # rejoins only once the commits in flight are answered, so the offsets are in before the
            # partitions are handed out again; the answer is counted by on_commit, as a periodic commit's.
            if offsets and not self.closing:
                try:
                    self.commit_soon(offsets)
                except Exception as exc:
                    with self.stats.lock:
                        self.stats.commit_failures += 1
                    log.warning("commit on revoke failed: %r", exc, extra={"reason": "commit_failed"})
        except Exception:  # an exception here would surface from consume(); log it instead
            log.exception("checkpoint/commit on revoke of %s failed", tp_keys(revoked))

    def _on_lost(self, consumer: Consumer, partitions: list[CTopicPartition]) -> None:
        self._assigned = self._assigned - _tps(partitions)
        try:
            self._handler.on_lost(_tps(partitions))
        except Exception:
            log.exception("handling the loss of %s failed", tp_keys(_tps(partitions)))

    # ------------------------------------------------------------------ polling

    def poll(self, timeout_ms: int) -> dict[TopicPartition, tuple[list, list]]:
        """Up to ``max_poll_records`` messages: ``{partition: (messages, values)}``, in offset order."""
        try:
            msgs = self.consumer.consume(self._max, timeout_ms / 1000)
        except KafkaException as exc:
            raise _neutral(exc) from None
        if not msgs:
            return {}
        self._down = False
        out: dict[TopicPartition, tuple[list, list]] = {}
        keys = self._keys
        one_topic = self._one_topic
        last = None
        run = vals = None
        for m in msgs:
            if m.error() is not None:
                self._message_error(m)
                continue
            # one topic (the usual case): the partition tells the run apart, one call less per message
            key = m.partition() if one_topic else (m.topic(), m.partition())
            if key != last:
                tp = keys.get(key)
                if tp is None:
                    tp = keys[key] = TopicPartition(m.topic(), m.partition())
                pair = out.get(tp)
                if pair is None:
                    pair = out[tp] = ([], [])
                run, vals = pair
                last = key
            run.append(m)
            vals.append(m.value())
        return out

    def _message_error(self, m: Any) -> None:
        err = m.error()
        if err.code() == CKError._PARTITION_EOF:  # noqa: SLF001
            return
        with self.stats.lock:
            self.stats.poll_errors += 1
        log.warning("consume error on %s [%s]: %s", m.topic(), m.partition(), err.str(),
                    extra={"reason": err.name()})

    #: The neutral record of a consumed message.
    record = Record

    def _pause(self, partitions: list[TopicPartition]) -> None:
        self.consumer.pause([_ctp(tp) for tp in partitions])

    def _resume(self, partitions: list[TopicPartition]) -> None:
        self.consumer.resume([_ctp(tp) for tp in partitions])

    def highwater(self, tp: TopicPartition) -> int | None:
        """The partition's end offset as last fetched, refreshed at most every :attr:`highwater_every`
        seconds (even librdkafka's cached look-up waits on its threads, ~1 ms: too slow for every poll)."""
        now = time.monotonic()
        seen = self._highwaters.get(tp)
        if seen is not None and now - seen[0] < self.highwater_every:
            return seen[1]
        try:
            _, high = self.consumer.get_watermark_offsets(_ctp(tp), cached=True)
        except KafkaException:
            return None
        high = high if high >= 0 else None
        self._highwaters[tp] = (now, high)
        return high

    # ------------------------------------------------------------------ offsets

    def committed_metadata(self, tps: list[TopicPartition]) -> dict[TopicPartition, Any]:
        """The group's committed ``OffsetAndMetadata`` (or None) of ``tps`` (blocking, bounded; raises
        ``KafkaError``). confluent-kafka 2.16 commits a metadata string with its C string's NUL
        (``strlen + 1``): one trailing NUL is dropped, so the metadata reads as it was written."""
        timeout = self.config.commit_timeout_ms / 1000
        try:
            got = self.consumer.committed([_ctp(tp) for tp in tps], timeout=timeout)
        except KafkaException as exc:
            raise _neutral(exc) from None
        out: dict[TopicPartition, Any] = {}
        for p in got:
            if p.error is not None:
                raise KafkaError(f"committed offset of {p.topic}:{p.partition}: {p.error}")
            meta = (p.metadata or "").removesuffix("\x00")
            out[TopicPartition(p.topic, p.partition)] = (
                OffsetAndMetadata(p.offset, meta, -1) if p.offset >= 0 else None)
        return out

    def committed(self, tps: list[TopicPartition]) -> dict[TopicPartition, int | None]:
        """The group's committed offsets of ``tps`` (None: none)."""
        return {tp: None if om is None else om.offset for tp, om in self.committed_metadata(tps).items()}

    def commit(self, offsets: dict, timeout_ms: int | None = None) -> None:
        """Commit ``offsets`` synchronously, bounded by ``timeout_ms`` (raises ``KafkaError``)."""
        timeout = (timeout_ms or self.config.commit_timeout_ms) / 1000
        deadline = time.monotonic() + timeout
        parts = self._parts(offsets)
        # one commit at a time: a commit that outlived its bound holds no second thread
        if not self._idle.wait(timeout):
            raise KafkaError("the previous commit has not completed yet (the group coordinator is away?)")
        self._idle.clear()
        bounded(lambda: self._commit_parts(parts), max(deadline - time.monotonic(), 0.001), "commit")

    def commit_soon(self, offsets: dict) -> bool:
        """The periodic commit, off the loop, and the revoke's: librdkafka's asynchronous commit, answered
        through ``on_commit`` inside a later ``consume()`` (see :meth:`Source.commit_soon
        <consumers.source.Source.commit_soon>`); returns True. librdkafka sends the commits of one consumer
        in order, so a later synchronous commit is not overtaken."""
        parts = self._parts(offsets)
        with self._answers:
            self._sent += 1
        try:
            self.consumer.commit(offsets=parts, asynchronous=True)
        except KafkaException as exc:
            with self._answers:
                self._sent -= 1
            raise _neutral(exc) from None
        return True

    def _on_commit(self, err: CKError | None, partitions: list[CTopicPartition]) -> None:
        """librdkafka's answer to a :meth:`commit_soon` (served inside ``consume()``; synchronous commits
        are answered to their caller, not here)."""
        failed = [f"{p.topic}:{p.partition}: {p.error}" for p in partitions or () if p.error is not None]
        exc = KafkaError(f"commit failed: {err.str() if err is not None else '; '.join(failed)}") if (
            err is not None or failed) else None
        with self._answers:
            self._sent = max(self._sent - 1, 0)
            if exc is not None:
                self._refused.append(exc)
        if err is not None and err.code() in (CKError.FENCED_INSTANCE_ID, CKError._FENCED):  # noqa: SLF001
            self.fenced = True
        with self.stats.lock:
            if exc is None:
                self.stats.commits += 1
            else:
                self.stats.commit_failures += 1

    def unconfirmed(self) -> bool:
        return self._sent > 0

    def commit_failures(self) -> list[BaseException]:
        if not self._refused:
            return []
        with self._answers:
            refused, self._refused = self._refused, []
        for exc in refused:
            log.warning("commit failed (retried with the next checkpoint): %r", exc,
                        extra={"reason": "commit_failed"})
        return refused

    @staticmethod
    def _parts(offsets: dict) -> list[CTopicPartition]:
        return [_ctp(tp, om.offset, om.metadata or "") for tp, om in offsets.items()]

    def _commit_parts(self, parts: list[CTopicPartition]) -> None:
        """librdkafka's synchronous commit (raises ``KafkaError``; a fencing is flagged); marks the end of
        the synchronous commit in flight."""
        try:
            result = self.consumer.commit(offsets=parts, asynchronous=False)
        except KafkaException as exc:
            exc = _neutral(exc)
            if "FENCED_INSTANCE_ID" in str(exc) or "fenced" in str(exc).lower():
                self.fenced = True
            raise exc from None
        finally:
            self._idle.set()
        for p in result or ():
            if p.error is not None:
                raise KafkaError(f"commit of {p.topic}:{p.partition}: {p.error}")

    def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        timeout = self.config.commit_timeout_ms / 1000
        try:
            return {tp: self.consumer.get_watermark_offsets(_ctp(tp), timeout=timeout)[1] for tp in tps}
        except KafkaException as exc:
            raise _neutral(exc) from None

    def _seek(self, tp: TopicPartition, offset: int) -> None:
        self.consumer.seek(_ctp(tp, offset))

    def assignment(self) -> set[TopicPartition]:
        return set(self._assigned)

    # ------------------------------------------------------------------ closing

    @staticmethod
    def _close_consumer(consumer: Consumer, timeout_ms: int) -> None:
        """librdkafka's ``close()`` takes no timeout (it waits for the group to be left): bounded here."""
        try:
            bounded(consumer.close, timeout_ms / 1000, "close")
        except KafkaError as exc:
            log.warning("closing the consumer: %r", exc, extra={"reason": "close_timeout"})

    def unstick(self) -> None:
        """Nothing to work around: the kafka-python race of :meth:`Source.unstick` is not librdkafka's."""


def _delivered(entry: list, err: Any, msg: Any) -> None:
    entry[0] = err if err is not None else True


class _Failure(Exception):
    """A delivery error of librdkafka (``error``: its ``KafkaError``)."""

    def __init__(self, error: CKError) -> None:
        super().__init__(error.str())
        self.error = error


_FATAL_CODES = frozenset({
    CKError.MSG_SIZE_TOO_LARGE, CKError.TOPIC_AUTHORIZATION_FAILED, CKError.TOPIC_EXCEPTION,
    CKError._UNKNOWN_TOPIC, CKError.UNKNOWN_TOPIC_OR_PART, CKError._INVALID_ARG,  # noqa: SLF001
})
_TOO_LARGE = frozenset({CKError.MSG_SIZE_TOO_LARGE})


class ConfluentOutputs(Outputs):
    """:class:`~consumers.outputs.Outputs` on a ``confluent_kafka.Producer``: the same outbox, bounds and
    accounting; deliveries are acknowledged through delivery callbacks (served by ``poll``/``flush``)."""

    queue_wait = 1.0  # seconds a send may wait for room in librdkafka's queue

    def connect(self) -> None:
        if self.producer is None and self.enabled:
            conf = producer_conf(self.config)
            conf.update({"logger": log, "error_cb": self._on_error})
            try:
                self.producer = Producer(conf)
            except KafkaException as exc:
                raise _neutral(exc) from None

    @staticmethod
    def _on_error(err: CKError) -> None:
        log.warning("kafka producer: %s", err.str(), extra={"reason": err.name()})

    def send(self, topic: str, value: bytes | None, key: bytes | None, headers: list, attempts: int = 0
             ) -> None:
        if topic in self._down:
            self._dropped(topic, 1)
            return
        entry = [None, topic, value, key, headers, attempts]
        producer = self.producer
        deadline = None
        while True:
            try:
                producer.produce(topic, value, key, headers=headers or None,
                                 on_delivery=functools.partial(_delivered, entry))
                break
            except BufferError:  # the local queue is full: serve deliveries, bounded
                now = time.monotonic()
                deadline = deadline or now + self.queue_wait
                if now >= deadline:
                    self._failed(topic, BufferError("the producer's queue stayed full"), down=False)
                    self._dropped(topic, 1)
                    return
                producer.poll(0.05)
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                fatal = isinstance(err, CKError) and err.code() in _FATAL_CODES
                too_large = isinstance(err, CKError) and err.code() in _TOO_LARGE
                self._failed(topic, _neutral(exc), down=fatal and not too_large)
                self._dropped(topic, 1)
                return
        self._outbox.append(entry)

    # flush() is Outputs.flush: what librdkafka's delivery callbacks said (entry[0]) decides.

    @staticmethod
    def _outcome(o: list) -> Any:
        state = o[0]
        return state if state is None or state is True else _Failure(state)

    @staticmethod
    def _verdict(exc: BaseException) -> tuple[bool, bool]:
        code = exc.error.code()
        return code in _FATAL_CODES, code not in _TOO_LARGE

    def _gone(self, topics: set[str]) -> dict[str, BaseException]:
        return {t: KafkaError(f"topic {t} does not exist") for t in sorted(topics) if not self._exists(t)}

    def _exists(self, topic: str) -> bool:
        """Whether ``topic`` exists (True when the cluster cannot tell within 1 s)."""
        try:
            meta = self.producer.list_topics(topic, timeout=1.0)
        except KafkaException:
            return True
        t = meta.topics.get(topic)
        return t is not None and (t.error is None or t.error.code() != CKError.UNKNOWN_TOPIC_OR_PART)

    def _wait_done(self, deadline: float, should_stop: Callable[[], bool]) -> None:
        self.producer.poll(0)  # the deliveries already acknowledged count, even if a stop ends the wait
        while not should_stop():
            left = deadline - time.monotonic()
            if left <= 0 or all(o[0] is not None for o in self._outbox):
                return
            self.producer.flush(min(left, 0.5))

    def _topic_exists(self, topic: str) -> bool:
        """Whether the cluster says that ``topic`` exists, without an error (False when it does not answer
        within 1 s, whereas :meth:`_exists` counts a topic it cannot tell about as existing)."""
        try:
            meta = self.producer.list_topics(topic, timeout=1.0)
        except KafkaException:
            return False
        t = meta.topics.get(topic)
        return t is not None and t.error is None

    def _forget(self, topic: str) -> None:
        """librdkafka asks for an unknown topic's metadata on its own schedule: nothing to do."""

    def close(self, timeout: float) -> None:
        producer, self.producer = self.producer, None
        if producer is not None:
            try:
                left = producer.flush(timeout)
                if left:
                    log.warning("closing the producer: %d undelivered records dropped", left,
                                extra={"reason": "close_timeout"})
                    producer.purge()
                    producer.flush(0)
                # librdkafka's close() takes no timeout; exactly-once: the learner's transactional producer,
                # which the outputs close as kafka-python's do
                bounded(producer.close, max(timeout, 0.1), "close")
            except Exception:
                log.exception("closing the producer failed")
        self._outbox = []
