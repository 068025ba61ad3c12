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

The ceiling. (b) reads two messages per event learned, so it cannot reach (a) however cheap the join:
beside them, each round measures raw kafka-python (a ``KafkaConsumer`` of the same settings, no
decoding, no model) reading (r1) the labelled topic and (r2) both the unlabelled events and the labels
topic, in events per second (r2: one event per two messages). r2/r1 is the most (b)/(a) can be with a
free join; (b)/r2 says how much of its ceiling the joined path reaches, beside (a)/r1 for the labelled
path. (kafka-python's record parsing costs about as much per message as the labelled path's own work:
r2/r1 measured 0.26-0.53 on the shared 2-core machine, so the issue's 0.8 is out of reach of a second topic
read by the same client; the joined path's own cost is what (b)/r2 shows.)

(c) memory per pending event: ``tracemalloc`` around storing the decoded events in a ``JoinStore``, beside
the store's own estimate (what ``--max-pending-bytes`` bounds).
"""

from __future__ import annotations

import argparse
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

from bench._kafka import kafka_bootstrap  # noqa: E402
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

        def timed_process(tp, records, values) -> None:
            process(tp, records, values)
            consumed = stats.consumed
            if not marks or consumed >= messages:
                marks.append((time.perf_counter(), consumed * n // messages))
            if consumed >= messages:
                learner.stop()

        learner._process = timed_process
        learner.run()
        (t0, c0), (t1, c1) = marks[0], marks[-1]
        return (c1 - c0) / (t1 - t0), stats.snapshot()


def raw_rate(bootstrap: str, topics: list[str], messages: int, events: int) -> float:
    """Events per second of raw kafka-python reading ``messages`` messages of ``topics`` (``events`` events):
    the same consumer settings as the learner's, no decoding and no model; timed as :func:`learn_rate`."""
    from kafka import KafkaConsumer

    config = LearnerConfig(bootstrap_servers=bootstrap, topics=topics, checkpoint_dir=tempfile.gettempdir(),
                           group_id=f"raw-{uuid.uuid4().hex[:8]}",
                           auto_offset_reset="earliest")
    consumer = KafkaConsumer(**config.consumer_kwargs())
    consumer.subscribe(topics)
    read, marks = 0, []
    deadline = time.monotonic() + 120
    try:
        while read < messages and time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=500, max_records=config.max_poll_records)
            for records in batch.values():
                read += len(records)
                sum(len(r.value) for r in records)  # touch the values, as the learner does
            if batch and (not marks or read >= messages):
                marks.append((time.perf_counter(), read))
    finally:
        consumer.close(autocommit=False)
    (t0, c0), (t1, c1) = marks[0], marks[-1]
    return (c1 - c0) * events / messages / (t1 - t0)


def memory_per_event(events: list[tuple[str, dict, int]]) -> tuple[float, float]:
    """(measured bytes, estimated bytes) per pending event of a JoinStore holding ``events``, their record
    values included (kept alive by the store)."""
    codec = JsonCodec()
    values = [encode_event(x, None, id_) for id_, x, _ in events]
    decoded = [(id_, codec.decode(v).x, v) for (id_, _, _), v in zip(events, values, strict=True)]
    store = JoinStore(max_pending=len(events) + 1, label_ttl_ms=10**12, event_fields=codec.fields)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i, (id_, x, value) in enumerate(decoded):  # as the learner does: the record value is kept (a copy
        store.add_event(id_, x, 0.5, version=i, ts=i, record_value=bytes(bytearray(value)))  # made here)
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
    with kafka_bootstrap() as bootstrap:
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
        rates: dict[str, list[float]] = {"a": [], "b": [], "r1": [], "r2": []}
        ratios, ceilings = [], []
        n = args.events
        for i in range(args.rounds):
            r1 = raw_rate(bootstrap, [labelled], n, n)
            a, snap_a = learn_rate(bootstrap, labelled, n, None, args.checkpoint_every)
            r2 = raw_rate(bootstrap, [unlabelled, labels], 2 * n, n)
            b, snap_b = learn_rate(bootstrap, unlabelled, n, labels, args.checkpoint_every)
            for k, v in (("a", a), ("b", b), ("r1", r1), ("r2", r2)):
                rates[k].append(v)
            ratios.append(b / a)
            ceilings.append(r2 / r1)
            print(f"round {i + 1}: (a) labelled {a:9,.0f} events/s   (b) joined {b:9,.0f} events/s   "
                  f"(b)/(a) = {b / a:.2f}   raw kafka-python (r1) {r1:9,.0f}  (r2) {r2:9,.0f} events/s   "
                  f"r2/r1 = {r2 / r1:.2f}", flush=True)
        assert snap_b["join"]["joined"] == args.events and snap_a["n_samples_seen"] == args.events
        print(f"(a) labelled path  median {statistics.median(rates['a']):10,.0f} events learned/s")
        print(f"(b) joined path    median {statistics.median(rates['b']):10,.0f} events learned/s   "
              f"(b)/(a) = {statistics.median(ratios):.2f} (median of the rounds' ratios; goal >= 0.8)   "
              f"delayed log loss {snap_b['delayed_log_loss']:.4f}, immediate {snap_a['log_loss']:.4f}")
        med = {k: statistics.median(v) for k, v in rates.items()}
        print(f"ceiling: raw kafka-python r1 {med['r1']:,.0f}, r2 {med['r2']:,.0f} events/s; the most "
              f"(b)/(a) can be with two messages per event: r2/r1 = {statistics.median(ceilings):.2f}; "
              f"(a)/r1 = {med['a'] / med['r1']:.2f}, (b)/r2 = {med['b'] / med['r2']:.2f}")
    measured, estimated = memory_per_event(events[: min(args.events, 50_000)])
    print(f"(c) memory per pending event ({args.features} float features): {measured:,.0f} bytes measured "
          f"(tracemalloc), {estimated:,.0f} bytes estimated by the store (--max-pending-bytes counts this)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
