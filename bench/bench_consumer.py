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

Rates are counted from the end of the first processed batch to the last message (group join and
connection set-up are not the loop's cost). The machine may be shared, so ``--rounds`` (3) rounds each
measure (a) and then every (b) back to back; each round's (b)/(a) is printed, then the medians. Checkpoints
are real (fsync'd) and in a temporary directory.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import random
import statistics
import sys
import tempfile
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
            for r in records:
                loads(r.value)
            seen += len(records)
            if t0 is None:  # as for the learner: from the end of the first batch
                t0, c0 = time.perf_counter(), seen
    elapsed = time.perf_counter() - t0
    consumer.close()
    return (seen - c0) / elapsed


def learner_rate(bootstrap: str, topic: str, n: int, batch_size: int, checkpoint_every: int,
                 overrides: dict) -> tuple[float, dict]:
    """Events/s of the learner (predict + learn + checkpoints) over the topic, and its final stats.

    Timed as the ceiling is: from the end of the first processed batch (its events not counted) to the
    end of the one that reaches ``n`` events, stamped by the loop itself (no watcher thread taking the GIL).
    """
    with tempfile.TemporaryDirectory() as tmp:
        config = LearnerConfig(
            bootstrap_servers=bootstrap, topics=[topic], group_id=f"bench-{uuid.uuid4().hex[:8]}",
            checkpoint_dir=tmp, batch_size=batch_size, checkpoint_every_messages=checkpoint_every,
            checkpoint_every_seconds=3600, **overrides,
        )
        learner = Learner(config)
        stats = learner.stats
        marks: list[tuple[float, int]] = []
        process = learner._process

        def timed_process(tp, records) -> None:  # the learner's own per-batch step, then a timestamp
            process(tp, records)
            consumed = stats.consumed
            if not marks or consumed >= n:
                marks.append((time.perf_counter(), consumed))
            if consumed >= n:
                learner.stop()

        learner._process = timed_process
        learner.run()
        (t0, c0), (t1, c1) = marks[0], marks[-1]
        return (c1 - c0) / (t1 - t0), stats.snapshot()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--features", type=int, default=20)
    ap.add_argument("--batch-sizes", default="1,32")
    ap.add_argument("--checkpoint-every", type=int, default=10_000)
    ap.add_argument("--max-poll-records", type=int, default=None, help="override the learner's default")
    ap.add_argument("--rounds", type=int, default=3,
                    help="rounds of (a) then (b) for each batch size; the medians are shown")
    args = ap.parse_args()
    overrides = {} if args.max_poll_records is None else {"max_poll_records": args.max_poll_records}
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]

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
        print(f"fetch settings of both (a) and (b): {settings}")
        # The machine may be shared: each round measures (a) and then (b) back to back, and the ratio is
        # taken within the round.
        ceilings: list[float] = []
        rates: dict[int, list[float]] = {b: [] for b in batch_sizes}
        ratios: dict[int, list[float]] = {b: [] for b in batch_sizes}
        snaps: dict[int, dict] = {}
        for i in range(args.rounds):
            ceilings.append(ceiling(bootstrap, topic, args.events, settings))
            line = f"round {i + 1}: (a) {ceilings[-1]:9,.0f}"
            for batch_size in batch_sizes:
                rate, snap = learner_rate(bootstrap, topic, args.events, batch_size, args.checkpoint_every,
                                          overrides)
                rates[batch_size].append(rate)
                snaps[batch_size] = snap
                ratios[batch_size].append(rate / ceilings[-1])
                line += f"   (b) batch_size={batch_size}: {rate:9,.0f} ({rate / ceilings[-1]:.2f})"
            print(line, flush=True)
        print(f"(a) ceiling, poll + orjson.loads:     median {statistics.median(ceilings):10,.0f} events/s")
        for batch_size in batch_sizes:
            snap = snaps[batch_size]
            rate, ratio = statistics.median(rates[batch_size]), statistics.median(ratios[batch_size])
            print(
                f"(b) learner, batch_size={batch_size:<3d}          median {rate:10,.0f} events/s   "
                f"(b)/(a) = {ratio:.2f} (median of the rounds' ratios)   "
                f"checkpoints={snap['checkpoints_written']} "
                f"(last {1000 * (snap['last_checkpoint_duration'] or 0):.1f} ms)  "
                f"n_samples_seen={snap['n_samples_seen']:,}  rolling log loss={snap['rolling_log_loss']:.4f}"
            )
    finally:
        if broker is not None:
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
