"""Exactly-once on the confluent backend: a transactional confluent-kafka producer that speaks kafka-python.

With ``--processing-guarantee exactly-once`` the predictions, dead letters, state records and consumer offsets
of one checkpoint interval are one Kafka transaction, and ``send_offsets_to_transaction`` needs the group
metadata of a consumer of the *same* client library. On ``--kafka-client confluent`` the consumer is
librdkafka's (:class:`~consumers.confluent.ConfluentSource`), so the transactional producer is too:
:class:`TransactionalProducer`, a ``confluent_kafka.Producer`` (so
:class:`~consumers.confluent.ConfluentOutputs` sends on it as on its own) with the few
``kafka.KafkaProducer`` methods that :class:`~consumers.state.kafka_store.KafkaStore` and the learner
call: ``init_transactions``, ``begin_transaction``, ``send`` (returning a future: ``is_done``,
``succeeded()``, ``failed()``, ``exception``, ``get(timeout)``), ``flush``,
``send_offsets_to_transaction(offsets, group_metadata)``
(kafka-python's ``{TopicPartition: OffsetAndMetadata}`` and the consumer's ``consumer_group_metadata()``),
``commit_transaction``, ``abort_transaction``, ``close`` and ``config["transactional_id"]``. The store's
readers stay on kafka-python (reading is reading).

Settings (librdkafka names): the learner's producer settings mapped by
:func:`~consumers.confluent.producer_conf`, plus ``transactional.id`` = the state key's,
``stream-logreg-state.<state topic>.<key>`` (as on kafka-python: opening it fences every older writer of the
key), ``transaction.timeout.ms`` = the learner's (``2 × checkpoint_every_seconds``, 60 s to 15 min), and
``message.max.bytes`` 1 MiB unless set (kafka-python's ``max_request_size`` default; librdkafka's is 1 MB).
librdkafka then enables idempotence and ``acks=all`` itself.

Bounds and errors: every call takes librdkafka's own timeout (``timeout``, the learner's ``connect_timeout``);
``init_transactions`` is tried in 1 s slices so that a stop request is heard in between. librdkafka's errors
become kafka-python's: a fencing (``_FENCED``, ``PRODUCER_FENCED``, ``INVALID_PRODUCER_EPOCH``,
``TRANSACTION_COORDINATOR_FENCED``, or a fatal error saying so) ``ProducerFencedError`` (what
``kafka_store._is_fenced`` recognises: the store raises ``StateFenced``, the learner exits 1), a timeout
``KafkaTimeoutError``, another retriable one ``RetriableError``, anything else (abortable: the store aborts
the transaction either way) a ``KafkaError``; each names librdkafka's error.

>>> producer = TransactionalProducer({"bootstrap.servers": "127.0.0.1:9", "transactional.id": "t"}, 5.0)
>>> producer.config["transactional_id"]
't'
>>> producer.close(timeout=1)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError as CKError
from confluent_kafka import KafkaException, Producer
from confluent_kafka import TopicPartition as CTopicPartition
from kafka import errors as kafka_errors

from consumers.confluent import bounded

__all__ = ["TransactionalProducer", "kafka_error", "open_transactional"]

log = logging.getLogger(__name__)

_FENCED_CODES = frozenset({
    CKError._FENCED, CKError.PRODUCER_FENCED, CKError.INVALID_PRODUCER_EPOCH,  # noqa: SLF001
    CKError.TRANSACTION_COORDINATOR_FENCED,
})
# e.g. CONCURRENT_TRANSACTIONS from init_transactions while the coordinator aborts a zombie's transaction
_RETRIABLE_CODES = frozenset({
    CKError.CONCURRENT_TRANSACTIONS, CKError.COORDINATOR_LOAD_IN_PROGRESS, CKError.COORDINATOR_NOT_AVAILABLE,
    CKError.NOT_COORDINATOR,
})
_QUEUE_POLL = 0.05  # seconds between two looks at a full local queue


def kafka_error(exc: KafkaException) -> kafka_errors.KafkaError:
    """The kafka-python error saying what librdkafka's ``exc`` says (fencing: ``ProducerFencedError``)."""
    err = exc.args[0] if exc.args else None
    if not isinstance(err, CKError):
        return kafka_errors.KafkaError(repr(exc))
    text = f"{err.name()}: {err.str()}"
    if err.code() in _FENCED_CODES or (err.fatal() and "fenced" in err.str().lower()):
        return kafka_errors.ProducerFencedError(text)
    if err.code() in (CKError._TIMED_OUT, CKError._TIMED_OUT_QUEUE):  # noqa: SLF001
        return kafka_errors.KafkaTimeoutError(text)
    if err.retriable() or err.code() in _RETRIABLE_CODES:
        return kafka_errors.RetriableError(text)
    return kafka_errors.KafkaError(text)


class _Delivery:
    """What ``send`` returns: kafka-python's future shape (``is_done``, ``succeeded()``, ``failed()``,
    ``exception``, ``get(timeout)``), settled by librdkafka's delivery callback."""

    __slots__ = ("_producer", "exception", "is_done", "value")

    def __init__(self, producer: Producer) -> None:
        self._producer = producer
        self.is_done = False
        self.exception: kafka_errors.KafkaError | None = None
        self.value: Any = None

    def __call__(self, err: CKError | None, msg: Any) -> None:
        if err is not None:
            self.exception = kafka_error(KafkaException(err))
        else:
            self.value = (msg.topic(), msg.partition(), msg.offset())
        self.is_done = True

    def succeeded(self) -> bool:
        return self.is_done and self.exception is None

    def failed(self) -> bool:
        return self.is_done and self.exception is not None

    def get(self, timeout: float | None = None) -> Any:
        """``(topic, partition, offset)`` once delivered (serving callbacks, at most ``timeout`` s)."""
        bound = 60.0 if timeout is None else timeout  # kafka-python would wait forever
        deadline = time.monotonic() + bound
        while not self.is_done and time.monotonic() < deadline:
            self._producer.poll(min(0.1, max(deadline - time.monotonic(), 0)))
        if not self.is_done:
            raise kafka_errors.KafkaTimeoutError(f"not delivered within {bound:g} s")
        if self.exception is not None:
            raise self.exception
        return self.value


class TransactionalProducer(Producer):
    """A transactional ``confluent_kafka.Producer`` with kafka-python's transactional methods (see the module
    docstring); ``conf`` are librdkafka properties with ``transactional.id``, ``timeout`` the bound (seconds)
    of every call."""

    def __init__(self, conf: dict[str, Any], timeout: float) -> None:
        if not conf.get("transactional.id"):
            raise ValueError("a TransactionalProducer needs transactional.id")
        self._fatal: CKError | None = None  # librdkafka's fatal error (a fencing), once it said one
        conf = {"message.max.bytes": 1_048_576, "logger": log, "error_cb": self._on_error, **conf}
        try:
            super().__init__(conf)
        except KafkaException as exc:
            raise kafka_error(exc) from None
        self.timeout = timeout
        self.config = {"transactional_id": conf["transactional.id"]}

    def _on_error(self, err: CKError) -> None:
        if err.fatal():
            self._fatal = err
        log.warning("kafka transactional producer: %s", err.str(), extra={"reason": err.name()})

    def _error(self, exc: KafkaException) -> kafka_errors.KafkaError:
        """``exc`` as kafka-python's error; librdkafka's generic ``_FATAL`` (every call after a fencing says
        only "Fatal error") as the fatal error it reported first."""
        err = exc.args[0] if exc.args else None
        if self._fatal is not None and isinstance(err, CKError) and err.code() == CKError._FATAL:  # noqa: SLF001
            return kafka_error(KafkaException(self._fatal))
        return kafka_error(exc)

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except KafkaException as exc:
            raise self._error(exc) from None

    def init_transactions(self, timeout: float | None = None) -> None:
        """Fence every older producer of the transactional id (aborting its open transaction)."""
        self._call(super().init_transactions, self.timeout if timeout is None else timeout)

    def begin_transaction(self) -> None:
        self._call(super().begin_transaction)

    def send(self, topic: str, value: bytes | None = None, key: bytes | None = None,
             headers: list | None = None, partition: int | None = None) -> _Delivery:
        """kafka-python's ``send``: queue one record, waiting at most ``timeout`` s for room in the queue."""
        future = _Delivery(self)
        kwargs: dict[str, Any] = {"on_delivery": future}
        if partition is not None:
            kwargs["partition"] = partition
        if headers:
            kwargs["headers"] = headers
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                self.produce(topic, value, key, **kwargs)
                return future
            except BufferError:
                if time.monotonic() >= deadline:
                    raise kafka_errors.KafkaTimeoutError(
                        f"the producer's queue stayed full for {self.timeout:g} s") from None
                self.poll(_QUEUE_POLL)
            except KafkaException as exc:
                raise self._error(exc) from None

    def flush(self, timeout: float | None = None) -> int:
        """Serve deliveries until none is outstanding, at most ``timeout`` s (``timeout`` by default);
        returns how many are still outstanding (librdkafka's answer). After a fatal error (a fencing)
        confluent-kafka 2.16 raises ``SystemError`` once the failed deliveries are served: the count then,
        and the next transactional call says why."""
        try:
            return super().flush(self.timeout if timeout is None else timeout)
        except (KafkaException, SystemError) as exc:
            log.debug("flush after a fatal error: %r", exc)
            return len(self)

    def poll(self, timeout: float | None = None) -> int:
        """Serve deliveries (as :meth:`flush` after a fatal error: 0)."""
        try:
            return super().poll(-1 if timeout is None else timeout)
        except (KafkaException, SystemError) as exc:
            log.debug("poll after a fatal error: %r", exc)
            return 0

    def send_offsets_to_transaction(self, offsets: dict, group_metadata: Any) -> None:
        """Add the consumer offsets ``{TopicPartition: OffsetAndMetadata}`` (kafka-python's) to the open
        transaction; ``group_metadata``: the confluent consumer's ``consumer_group_metadata()``."""
        positions = [CTopicPartition(tp.topic, tp.partition, om.offset, om.metadata or "")
                     for tp, om in offsets.items()]
        self._call(super().send_offsets_to_transaction, positions, group_metadata, self.timeout)

    def commit_transaction(self) -> None:
        self._call(super().commit_transaction, self.timeout)

    def abort_transaction(self) -> None:
        """Abort the open transaction. What is queued is delivered first (at most ``timeout`` s; it stays
        invisible): librdkafka's abort right after records whose partitions are not added to the
        transaction yet can fail with the fatal ``INVALID_TXN_STATE`` (librdkafka issue 4849)."""
        self.flush(self.timeout)
        self._call(super().abort_transaction, self.timeout)

    def close(self, timeout: float | None = None) -> None:
        """Abort an open transaction, deliver what is queued (at most ``timeout`` s), and close."""
        wait = self.timeout if timeout is None else timeout
        try:
            if super().flush(wait):
                self.purge()
            bounded(super().close, max(wait, 0.1), "closing the transactional producer")
        except Exception as exc:
            log.warning("closing the transactional producer: %r", exc, extra={"reason": "close_timeout"})


def open_transactional(conf: dict[str, Any], timeout: float, should_stop: Callable[[], bool]
                       ) -> TransactionalProducer:
    """A :class:`TransactionalProducer` of ``conf`` with ``init_transactions()`` done: tried in 1 s slices
    until ``timeout`` s have passed or ``should_stop()`` (then, or on an error that is no timeout, the last
    error is raised, a kafka-python ``KafkaError``); a retriable error is retried after 0.1 s."""
    producer = TransactionalProducer(conf, timeout)
    deadline = time.monotonic() + timeout
    while True:
        try:
            producer.init_transactions(max(min(1.0, deadline - time.monotonic()), 0.1))
            return producer
        except kafka_errors.KafkaError as exc:
            retriable = isinstance(exc, kafka_errors.RetriableError)
            if time.monotonic() >= deadline or should_stop() or not retriable:
                producer.close(timeout=0)
                raise
            if not isinstance(exc, kafka_errors.KafkaTimeoutError):
                time.sleep(0.1)
