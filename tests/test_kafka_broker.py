"""The test broker is a real Kafka: messages round-trip, and a restart keeps logs and committed offsets."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.consumer.fetcher import ConsumerRecord
from polling import read_topic

pytestmark = pytest.mark.kafka

CONSUMER_SETTINGS: dict[str, Any] = {
    "auto_offset_reset": "earliest",
    "enable_auto_commit": False,
    "session_timeout_ms": 6000,  # the broker's group.min.session.timeout.ms
    "heartbeat_interval_ms": 1000,
    "fetch_max_wait_ms": 100,
}


def _produce(
    producer: KafkaProducer, topic: str, values: range
) -> dict[tuple[int, int], tuple[bytes, bytes]]:
    """Send ``key-i``/``value-i`` for each i; return {(partition, offset): (key, value)} as acknowledged."""
    futures = [
        (
            f"key-{i}".encode(),
            f"value-{i}".encode(),
            producer.send(topic, key=f"key-{i}".encode(), value=f"value-{i}".encode()),
        )
        for i in values
    ]
    producer.flush(timeout=60)
    acked = {}
    for key, value, future in futures:
        md = future.get(timeout=60)
        acked[(md.partition, md.offset)] = (key, value)
    return acked


def _consume(
    bootstrap: str, topic: str, group: str, expected: int, timeout: float = 60.0
) -> list[ConsumerRecord]:
    """Poll with consumer group ``group`` until ``expected`` records arrived (or the deadline), commit, close.

    After the expected count, polls once more briefly so that extra (duplicate) records would be noticed.
    """
    consumer = KafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=group, client_id=group, **CONSUMER_SETTINGS
    )
    records: list[ConsumerRecord] = []
    try:
        deadline = time.monotonic() + timeout
        # the topic's partitions known before the first JoinGroup (the poll): a leader that assigns without
        # them assigns nothing, and kafka-python's rejoin on the next metadata can take longer than the test
        # (seen on a loaded machine: "No partition metadata for topic", 0 records in 60 s)
        consumer.partitions_for_topic(topic)
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
        for batch in consumer.poll(timeout_ms=500).values():
            records.extend(batch)
        if records:
            consumer.commit()
    finally:
        consumer.close()
    return records


def _by_position(records: list[ConsumerRecord]) -> dict[tuple[int, int], tuple[bytes, bytes]]:
    return {(r.partition, r.offset): (r.key, r.value) for r in records}


def test_produce_and_consume_100_messages(kafka_bootstrap: str, kafka_topic: Any) -> None:
    topic = kafka_topic(partitions=3)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=5)
    try:
        acked = _produce(producer, topic, range(100))
    finally:
        producer.close()
    assert len(acked) == 100
    assert {p for p, _ in acked} <= {0, 1, 2}

    records = _consume(kafka_bootstrap, topic, f"roundtrip-{uuid.uuid4().hex[:8]}", expected=100)

    assert len(records) == 100
    assert _by_position(records) == acked
    for partition in {r.partition for r in records}:
        offsets = [r.offset for r in records if r.partition == partition]
        assert offsets == list(range(len(offsets))), f"partition {partition} out of order: {offsets}"


def test_restart_keeps_messages_and_committed_offsets(
    kafka_bootstrap: str, kafka_broker: Any, kafka_topic: Any
) -> None:
    topic = kafka_topic(partitions=2)
    group = f"restart-{uuid.uuid4().hex[:8]}"
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=5)
    try:
        before = _produce(producer, topic, range(50))
        first = _consume(kafka_bootstrap, topic, group, expected=50)
        assert _by_position(first) == before  # consumed and committed before the bounce

        kafka_broker.restart()
        assert kafka_broker.bootstrap_servers == kafka_bootstrap

        after = _produce(producer, topic, range(50, 100))  # same producer, reconnects by itself
    finally:
        producer.close()

    resumed = _consume(kafka_bootstrap, topic, group, expected=50)
    assert _by_position(resumed) == after, "the group should resume exactly after its committed offsets"

    everything = read_topic(kafka_bootstrap, topic, 100)  # no group: no rebalance race
    assert _by_position(everything) == before | after
