"""Waiting in tests by polling a condition with a deadline (never a bare sleep as synchronisation), and the
topics' records the tests wait for: read back, or kept flowing from a thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stream_logreg.checkpoints import Checkpoint, DirectoryStore


def wait_for(condition: Callable[[], Any], timeout: float, what: str | Callable[[], str],
             every: float = 0.02) -> Any:
    """Poll ``condition`` until it returns something truthy (returned), or fail after ``timeout`` s. ``what``
    names the condition; a callable is called on failure (to say what the processes were doing then)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            said = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {said}")
        time.sleep(every)


def wait_for_checkpoint(
    directory: Path, n_samples: int, alive: Callable[[], bool] = lambda: True, timeout: float = 90.0
) -> Checkpoint:
    """Poll ``directory`` until its latest checkpoint has learned ``n_samples`` events (while ``alive()``)."""
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline and alive():
        if directory.is_dir():
            checkpoint = DirectoryStore(directory, read_only=True).latest()
            seen = None if checkpoint is None else checkpoint.model.n_samples_seen
            if seen == n_samples:
                return checkpoint
        time.sleep(0.1)
    raise AssertionError(f"no checkpoint with n_samples_seen={n_samples} in {directory} (last: {seen})")


def read_topic(bootstrap: str, topic: str, expected: int, timeout: float = 60.0,
               isolation_level: str = "read_uncommitted") -> list[Any]:
    """All records of ``topic`` from the beginning (``isolation_level="read_committed"``: those of committed
    transactions) once ``expected`` have arrived, then one more short poll so that extra (duplicate) records
    would be seen. Partitions are assigned, not subscribed: no consumer group, no rebalance to wait for."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             auto_offset_reset="earliest", isolation_level=isolation_level,
                             fetch_max_wait_ms=100)
    records: list[Any] = []
    try:
        deadline = time.monotonic() + timeout
        partitions = wait_for(lambda: consumer.partitions_for_topic(topic), timeout, f"topic {topic}", 0.1)
        consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
        for batch in consumer.poll(timeout_ms=500).values():
            records.extend(batch)
    finally:
        consumer.close()
    return records


class KeepProducing:
    """Send ``values`` to ``topic`` from a thread, a hundred at a time, each hundred flushed: the producer's
    idempotent retries carry the records sent while the broker is away, so the stream flows across a broker
    restart.

    >>> producing = KeepProducing(bootstrap, topic, values)   # doctest: +SKIP
    >>> broker.restart()                                      # doctest: +SKIP
    >>> producing.join(180)   # every record sent, else an AssertionError   # doctest: +SKIP
    """

    def __init__(self, bootstrap: str, topic: str, values: list[bytes]) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.values = values
        self.sent = threading.Event()
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        from kafka import KafkaProducer

        producer = KafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5, delivery_timeout_ms=120_000)
        try:
            for i in range(0, len(self.values), 100):
                for v in self.values[i : i + 100]:
                    producer.send(self.topic, v)
                producer.flush(timeout=120)
            self.sent.set()
        except BaseException as exc:
            self.errors.append(exc)
        finally:
            producer.close()

    def join(self, timeout: float) -> None:
        """Wait for the thread (at most ``timeout`` s); fail unless every record was sent."""
        self.thread.join(timeout)
        assert self.sent.is_set() and not self.errors, self.errors
