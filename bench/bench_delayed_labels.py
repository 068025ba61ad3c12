#!/usr/bin/env python3
"""Delayed labels through the real broker: the joined path against today's labelled path, and memory.

    python bench/bench_delayed_labels.py --events 20000      # starts a broker (scripts/kafka_broker.py)
    KAFKA_BOOTSTRAP_SERVERS=host:port python bench/bench_delayed_labels.py

Measures, in the same process, on ``--events`` events with ``--features`` numeric features:

(a) today's labelled path: one topic of labelled events, each predicted and learned on arrival
    (``consumers.Learner``, batch size 1);
(b) the joined path: a topic of the same events unlabelled (with ids) and a co-partitioned labels topic
    with their labels, each label produced ``--lag`` events after its event; each event is scored and
    kept, then learned when its label is read (``--labels-topic``). It reads twice as many messages for
    the same events learned.

Rates are events learned per second, from the end of the first processed batch to the batch that learns
the last event (group join and connection set-up excluded), checkpoints real (fsync'd). ``--rounds``
rounds measure (a) then (b) back to back; each round's (b)/(a) is printed, then the medians.

(c) memory per pending event: ``tracemalloc`` around storing the decoded events in a ``JoinStore``, beside
the store's own estimate (what ``--max-pending-bytes`` bounds).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
import tracemalloc
import uuid
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_consumer import _broker_module  # noqa: E402

from consumers import Learner, LearnerConfig  # noqa: E402
from consumers.state.join_store import JoinStore  # noqa: E402
from stream_logreg.codec import JsonCodec, encode_event  # noqa: E402


def make_events(n: int, n_features: int, seed: int = 0) -> list[tuple[str, dict, int]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        x = {f"f{j}": rng.gauss(0, 1) for j in range(n_features)}
        out.append((f"ev-{i}", x, int(x["f0"] + rng.gauss(0, 0.5) > 0)))
    return out


def produce(bootstrap: str, records: list[tuple[str, bytes, bytes]]) -> None:
    """Create the topics (1 partition each) and send the (topic, key, value) records in order."""
    from kafka import KafkaAdminClient, KafkaProducer

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    topics = dict.fromkeys(t for t, _, _ in records)
    admin.create_topics({t: {"num_partitions": 1, "replication_factor": 1} for t in topics})
    admin.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=256 * 1024)
    for topic, key, value in records:
        producer.send(topic, key=key, value=value)
    producer.flush(timeout=120)
    producer.close()


def learn_rate(bootstrap: str, topic: str, n: int, labels_topic: str | None, checkpoint_every: int
               ) -> tuple[float, dict]:
    """Events learned per second by a learner over ``topic`` (and ``labels_topic``: ``n`` events, ``n``
    labels), and its final stats. Stopped once every message is read (each join is learned as its second
    half is read)."""
    messages = 2 * n if labels_topic else n
    with tempfile.TemporaryDirectory() as tmp:
        config = LearnerConfig(
            bootstrap_servers=bootstrap, topics=[topic], group_id=f"bench-{uuid.uuid4().hex[:8]}",
            checkpoint_dir=tmp, checkpoint_every_messages=checkpoint_every, checkpoint_every_seconds=3600,
            labels_topic=labels_topic,
        )
        learner = Learner(config)
        stats = learner.stats
        marks: list[tuple[float, int]] = []
        process = learner._process

        def timed_process(tp, records) -> None:
            process(tp, records)
            consumed = stats.consumed
            if not marks or consumed >= messages:
                marks.append((time.perf_counter(), consumed * n // messages))
            if consumed >= messages:
                learner.stop()

        learner._process = timed_process
        learner.run()
        (t0, c0), (t1, c1) = marks[0], marks[-1]
        return (c1 - c0) / (t1 - t0), stats.snapshot()


def memory_per_event(events: list[tuple[str, dict, int]]) -> tuple[float, float]:
    """(measured bytes, estimated bytes) per pending event of a JoinStore holding ``events``."""
    codec = JsonCodec()
    decoded = [(id_, codec.decode(encode_event(x, None, id_)).x) for id_, x, _ in events]
    store = JoinStore(max_pending=len(events) + 1, label_ttl_ms=10**12)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i, (id_, x) in enumerate(decoded):
        store.add_event(id_, x, 0.5, version=i, ts=i)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return (after - before) / len(events), store.n_bytes / len(events)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=50_000)
    ap.add_argument("--features", type=int, default=20)
    ap.add_argument("--checkpoint-every", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--lag", type=int, default=100, help="events between an event and its label")
    args = ap.parse_args()
    events = make_events(args.events, args.features)
    broker = None
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if not bootstrap:
        broker = _broker_module().KafkaBroker().start()
        bootstrap = broker.bootstrap_servers
    try:
        stem = f"bench-labels-{uuid.uuid4().hex[:8]}"
        labelled, unlabelled, labels = f"{stem}-labelled", f"{stem}-events", f"{stem}-labels"
        records = [(labelled, id_.encode(), encode_event(x, y, id_)) for id_, x, y in events]
        for i, (id_, x, _) in enumerate(events):
            records.append((unlabelled, id_.encode(), encode_event(x, None, id_)))
            if i >= args.lag:
                lid, _, ly = events[i - args.lag]
                records.append((labels, lid.encode(), orjson.dumps({"id": lid, "y": ly})))
        records += [(labels, i.encode(), orjson.dumps({"id": i, "y": y})) for i, _, y in events[-args.lag:]]
        produce(bootstrap, records)
        print(f"produced {args.events:,} events ({args.features} features): labelled; unlabelled + labels")
        rates: dict[str, list[float]] = {"a": [], "b": []}
        ratios = []
        for i in range(args.rounds):
            a, snap_a = learn_rate(bootstrap, labelled, args.events, None, args.checkpoint_every)
            b, snap_b = learn_rate(bootstrap, unlabelled, args.events, labels, args.checkpoint_every)
            rates["a"].append(a)
            rates["b"].append(b)
            ratios.append(b / a)
            print(f"round {i + 1}: (a) labelled {a:9,.0f} events/s   (b) joined {b:9,.0f} events/s   "
                  f"(b)/(a) = {b / a:.2f}", flush=True)
        assert snap_b["join"]["joined"] == args.events and snap_a["n_samples_seen"] == args.events
        print(f"(a) labelled path  median {statistics.median(rates['a']):10,.0f} events learned/s")
        print(f"(b) joined path    median {statistics.median(rates['b']):10,.0f} events learned/s   "
              f"(b)/(a) = {statistics.median(ratios):.2f} (median of the rounds' ratios; goal >= 0.8)   "
              f"delayed log loss {snap_b['delayed_log_loss']:.4f}, immediate {snap_a['log_loss']:.4f}")
    finally:
        if broker is not None:
            broker.stop()
    measured, estimated = memory_per_event(events[: min(args.events, 50_000)])
    print(f"(c) memory per pending event ({args.features} float features): {measured:,.0f} bytes measured "
          f"(tracemalloc), {estimated:,.0f} bytes estimated by the store (--max-pending-bytes counts this)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
