#!/usr/bin/env python3
"""Throughput of the Kafka learner against its ceiling (kafka-python polling + orjson decoding).

    python bench/bench_consumer.py                 # starts a broker (scripts/kafka_broker.py) unless
    KAFKA_BOOTSTRAP_SERVERS=host:port python bench/bench_consumer.py     # ... one is given

Produces ``--events`` (200,000) JSON events with ``--features`` (20) numeric features to a fresh
1-partition topic, then measures on the same topic:

(a) the ceiling: a ``KafkaConsumer`` with the learner's fetch settings polling the topic and
    ``orjson.loads``-ing each value, nothing else;
(b) the learner (``consumers.Learner``: decode, validate, predict, learn, stats, checkpoints every
    ``--checkpoint-every`` events) for each ``--batch-sizes``.

Rates are counted from the first polled batch to the last message (group join and connection set-up are
not the loop's cost), and (b)/(a) is printed. Checkpoints are real (fsync'd) and in a temporary directory.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import random
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kafka import __version__ as kafka_version  # noqa: E402

from consumers import Learner, LearnerConfig  # noqa: E402
from stream_logreg.codec import encode_event  # noqa: E402


def _broker_module():
    spec = importlib.util.spec_from_file_location("bench_kafka_broker", ROOT / "scripts" / "kafka_broker.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def produce(bootstrap: str, topic: str, n: int, n_features: int, seed: int = 0) -> float:
    """Create ``topic`` (1 partition) and send ``n`` labelled events; returns the seconds it took."""
    from kafka import KafkaAdminClient, KafkaProducer

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics({topic: {"num_partitions": 1, "replication_factor": 1}})
    admin.close()
    rng = random.Random(seed)
    w = [rng.gauss(0, 1) for _ in range(n_features)]
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=1 << 20,
                             max_request_size=8 << 20)
    t0 = time.perf_counter()
    for i in range(n):
        x = {f"f{j}": rng.gauss(0, 1) for j in range(n_features)}
        y = int(sum(wj * x[f"f{j}"] for j, wj in enumerate(w)) + rng.gauss(0, 0.5) > 0)
        producer.send(topic, encode_event(x, y, id=str(i)))
    producer.flush()
    producer.close()
    return time.perf_counter() - t0


def crc_impl() -> str:
    """Which CRC-32C kafka-python checks fetched batches with: without the ``crc32c`` package it is pure
    Python and dominates the ceiling (~12k events/s here instead of ~150k)."""
    from kafka.record import util

    if util.crc32c_c is not None:
        return "native (crc32c package)"
    return "pure Python (pip install crc32c, i.e. kafka-python[crc32c], for a ~10x faster ceiling)"


def fetch_settings(config: LearnerConfig) -> dict:
    """The learner's consumer settings that matter for fetching (so that (a) and (b) fetch alike)."""
    keep = ("max_poll_records", "fetch_max_bytes", "max_partition_fetch_bytes", "fetch_min_bytes",
            "fetch_max_wait_ms", "check_crcs")
    return {k: v for k, v in config.consumer_kwargs().items() if k in keep}


def ceiling(bootstrap: str, topic: str, n: int, settings: dict) -> float:
    """Events/s of kafka-python polling and orjson-decoding the topic, nothing else."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             auto_offset_reset="earliest", **settings)
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    loads = orjson.loads
    seen, t0, c0 = 0, None, 0
    while seen < n:
        for records in consumer.poll(timeout_ms=1000).values():
            if t0 is None:
                t0, c0 = time.perf_counter(), len(records)
            for r in records:
                loads(r.value)
            seen += len(records)
    elapsed = time.perf_counter() - t0
    consumer.close()
    return (seen - c0) / elapsed


def learner_rate(bootstrap: str, topic: str, n: int, batch_size: int, checkpoint_every: int,
                 overrides: dict) -> tuple[float, dict]:
    """Events/s of the learner (predict + learn + checkpoints) over the topic, and its final stats."""
    with tempfile.TemporaryDirectory() as tmp:
        config = LearnerConfig(
            bootstrap_servers=bootstrap, topics=[topic], group_id=f"bench-{uuid.uuid4().hex[:8]}",
            checkpoint_dir=tmp, batch_size=batch_size, checkpoint_every_messages=checkpoint_every,
            checkpoint_every_seconds=3600, **overrides,
        )
        learner = Learner(config)
        stats = learner.stats
        marks: dict[str, tuple[float, int]] = {}

        def watch() -> None:  # timestamps of the first and last consumed message, by polling the stats
            while True:
                consumed = stats.consumed
                if consumed and "first" not in marks:
                    marks["first"] = (time.perf_counter(), consumed)
                if consumed >= n:
                    marks["last"] = (time.perf_counter(), consumed)
                    learner.stop()
                    return
                time.sleep(0.001)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        learner.run()
        watcher.join()
        (t0, c0), (t1, c1) = marks["first"], marks["last"]
        return (c1 - c0) / (t1 - t0), stats.snapshot()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--features", type=int, default=20)
    ap.add_argument("--batch-sizes", default="1,32")
    ap.add_argument("--checkpoint-every", type=int, default=10_000)
    ap.add_argument("--max-poll-records", type=int, default=None, help="override the learner's default")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each measurement (the best is shown)")
    args = ap.parse_args()
    overrides = {} if args.max_poll_records is None else {"max_poll_records": args.max_poll_records}

    broker = None
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if not bootstrap:
        broker = _broker_module().KafkaBroker().start()
        bootstrap = broker.bootstrap_servers
    try:
        topic = f"bench-consumer-{uuid.uuid4().hex[:8]}"
        seconds = produce(bootstrap, topic, args.events, args.features)
        print(f"produced {args.events:,} events ({args.features} features) in {seconds:.1f}s to {topic}")
        print(f"kafka-python {kafka_version}, CRC-32C: {crc_impl()}")
        settings = fetch_settings(LearnerConfig(bootstrap_servers=bootstrap, topics=[topic], group_id="x",
                                                checkpoint_dir=tempfile.gettempdir(), **overrides))
        best_ceiling = max(ceiling(bootstrap, topic, args.events, settings) for _ in range(args.repeat))
        print(f"(a) ceiling, poll + orjson.loads:          {best_ceiling:10,.0f} events/s   {settings}")
        for batch_size in (int(b) for b in args.batch_sizes.split(",")):
            runs = [learner_rate(bootstrap, topic, args.events, batch_size, args.checkpoint_every, overrides)
                    for _ in range(args.repeat)]
            rate, snap = max(runs, key=lambda r: r[0])
            print(
                f"(b) learner, batch_size={batch_size:<3d}               {rate:10,.0f} events/s   "
                f"(b)/(a) = {rate / best_ceiling:.2f}   checkpoints={snap['checkpoints_written']} "
                f"(last {1000 * (snap['last_checkpoint_duration'] or 0):.1f} ms)  "
                f"n_samples_seen={snap['n_samples_seen']:,}  rolling log loss={snap['rolling_log_loss']:.4f}"
            )
    finally:
        if broker is not None:
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
