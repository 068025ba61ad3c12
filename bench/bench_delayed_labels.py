#!/usr/bin/env python3
"""Delayed labels through the real broker: the joined path against today's labelled path, and memory.

    python bench/bench_delayed_labels.py --events 20000      # starts a broker (scripts/kafka_broker.py)
    KAFKA_BOOTSTRAP_SERVERS=host:port python bench/bench_delayed_labels.py

Measures, in the same process, against the same broker, on the same ``--events`` events with
``--features`` numeric features, on each client backend (``--kafka-client``: kafka-python, confluent or
both):

(a) today's labelled path: one topic of the events with their label ``y``, each predicted and learned on
    arrival (``consumers.Learner``, batch size 1);
(b) the joined path: a topic of the same events without ``y`` (with ids) and a co-partitioned labels topic
    ``{"id", "y"}``, each label produced ``--lag`` events after its event; each event is scored and kept,
    then learned when its label is read (``--labels-topic``). It reads two messages per event learned.

Rates are events LEARNED per second (the model's count), from the delivery of the first polled batch
(group join and connection set-up excluded) to the batch that learns the last event, checkpoints real
(fsync'd), the same number of checkpoints per event in both. Beside each rate: the process's CPU time per
event (all threads, the client's included), which the machine's load disturbs less than the rates.
``--rounds`` rounds measure r1, (a), r2, (b) back to back; each round's figures, then the medians.

The ceiling: the raw client (kafka-python's ``KafkaConsumer`` / confluent-kafka's ``Consumer`` of the
learner's settings, no decoding, no model) reading (r1) the labelled topic and (r2) both the unlabelled
events and the labels topic, in events per second (r2: one event per two messages), timed the same way.
With a free join (b) is at most r2, so (b)/(a) is at most r2/(a); that is r2/r1 when the labelled path runs
at its client's speed ((a) = r1), and the faster the labelled path, the lower the bound. Measured here, the
goal of 0.8 is above it on kafka-python (r2/(a) 0.43-0.54) and below it on confluent-kafka (0.92-0.94: its raw
client, which decodes nothing, reads both topics at about the labelled path's rate), where the join's own
work is what stands in the way.

What bounds it (measured, 20 float features, the shared 2-core machine): kafka-python parses a record in
10-16 µs of CPU whatever its size, a 30-byte label as much as a 525-byte event, and reads one partition per
poll (the labels, tiny, come first, 2000 a poll): two messages per event cost twice the client's CPU, so
r2/r1 <= ~0.5 by CPU, less or more by wall time as fetches wait (bigger ``max_partition_fetch_bytes``
raises both r1 and r2, not their ratio). With confluent-kafka the client is cheap (~1-2 µs a message) and
the bound is the joined path's own CPU: scoring, keeping, then decoding a label and learning, where the
labelled path is one compiled decode-and-learn call per message.

(d) in this process, no broker: the learner's own CPU per event (``Learner._process`` on polled batches of
    client-like records, as the loop hands them over), for (a) and for (b) in both orders: every label before
    its event (labels that came first) and every event before its label (the live case, and how a backlog of
    both topics is read: in step by record time, consumers.pacing), batches of ``--lag`` each way. What a
    real client adds is r1 and r2.

(c) memory per pending event: ``tracemalloc`` around storing the events as the learner does (the record
value and its decoded features, kept so that a join does not decode again), beside the store's own
estimate (what ``--max-pending-bytes`` bounds).
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


def learn_rate(bootstrap: str, topic: str, n: int, labels_topic: str | None, checkpoint_every: int,
               client: str) -> tuple[float, float, dict]:
    """Events learned per second by a learner (backend ``client``) over ``topic`` (and ``labels_topic``:
    ``n`` events, ``n`` labels), the process's CPU seconds per event learned (all threads: the client's
    too), and its final stats: the model's count of samples learned, from the delivery of the first batch
    (before it is processed) to the batch that learns the last one. A checkpoint every
    ``checkpoint_every`` events' worth of messages (twice as many messages with labels: the same
    checkpoints per event)."""
    messages = 2 * n if labels_topic else n
    with tempfile.TemporaryDirectory() as tmp:
        config = LearnerConfig(
            bootstrap_servers=bootstrap, topics=[topic], group_id=f"bench-{uuid.uuid4().hex[:8]}",
            checkpoint_dir=tmp, checkpoint_every_messages=checkpoint_every * messages // n,
            checkpoint_every_seconds=3600, labels_topic=labels_topic, kafka_client=client,
        )
        learner = Learner(config)
        stats = learner.stats
        marks: list[tuple[float, float, int]] = []
        process = learner._process

        def timed_process(tp, records, values) -> None:
            if not marks:
                marks.append((time.perf_counter(), time.process_time(), learner.model.n_samples_seen))
            process(tp, records, values)
            learned = learner.model.n_samples_seen
            if learned >= n:
                marks.append((time.perf_counter(), time.process_time(), learned))
                learner.stop()

        learner._process = timed_process
        learner.run()
        (t0, p0, c0), (t1, p1, c1) = marks[0], marks[-1]
        return (c1 - c0) / (t1 - t0), (p1 - p0) / (c1 - c0), stats.snapshot()


def raw_rate(bootstrap: str, topics: list[str], messages: int, events: int, client: str, passes: int = 1
             ) -> tuple[float, float]:
    """Events per second of the raw client ``client`` (kafka-python's ``KafkaConsumer`` or confluent-kafka's
    ``Consumer``, of the learner's settings) reading ``messages`` messages of ``topics`` (``events``
    events), and its CPU seconds per event: polls of ``max_poll_records`` whose values are touched, no
    decoding and no model; timed as :func:`learn_rate` (from the delivery of the first batch, counted).
    ``passes`` readings, each by a new consumer from the start, summed: one reading of a fast client is
    too short to time (20,000 events in ~50 ms)."""
    read = wall = cpu = 0.0
    for _ in range(passes):
        n, t, c = _raw_pass(bootstrap, topics, messages, client)
        read, wall, cpu = read + n, wall + t, cpu + c
    return read * events / messages / wall, cpu / (read * events / messages)


def _raw_pass(bootstrap: str, topics: list[str], messages: int, client: str) -> tuple[int, float, float]:
    """One reading of :func:`raw_rate`: (messages read after the first batch, wall and CPU seconds)."""
    config = LearnerConfig(bootstrap_servers=bootstrap, topics=topics[:1],
                           checkpoint_dir=tempfile.gettempdir(), group_id=f"raw-{uuid.uuid4().hex[:8]}",
                           auto_offset_reset="earliest", labels_topic=topics[1] if len(topics) > 1 else None,
                           kafka_client=client)
    read, marks = 0, []
    deadline = time.monotonic() + 120
    if client == "confluent":
        from confluent_kafka import Consumer

        from consumers.confluent import consumer_conf

        consumer = Consumer(consumer_conf(config))
        consumer.subscribe(topics)
        try:
            while read < messages and time.monotonic() < deadline:
                msgs = consumer.consume(config.max_poll_records, 0.5)
                msgs = [m for m in msgs if m.error() is None]
                if msgs and not marks:
                    marks.append((time.perf_counter(), time.process_time(), 0))
                read += len(msgs)
                sum(len(m.value()) for m in msgs)  # touch the values, as the learner does
            marks.append((time.perf_counter(), time.process_time(), read))
        finally:
            consumer.close()
    else:
        from kafka import KafkaConsumer

        consumer = KafkaConsumer(**config.consumer_kwargs())
        consumer.subscribe(topics)
        try:
            while read < messages and time.monotonic() < deadline:
                batch = consumer.poll(timeout_ms=500, max_records=config.max_poll_records)
                if batch and not marks:
                    marks.append((time.perf_counter(), time.process_time(), 0))
                for records in batch.values():
                    read += len(records)
                    sum(len(r.value) for r in records)  # touch the values, as the learner does
            marks.append((time.perf_counter(), time.process_time(), read))
        finally:
            consumer.close(autocommit=False)
    (t0, p0, c0), (t1, p1, c1) = marks[0], marks[-1]
    return c1 - c0, t1 - t0, p1 - p0


class _Record:
    """A kafka-python-like record, as the source hands it over."""

    __slots__ = ("topic", "partition", "offset", "key", "value", "timestamp")

    def __init__(self, topic: str, offset: int, value: bytes, timestamp: int) -> None:
        self.topic, self.partition, self.offset, self.key, self.value, self.timestamp = (
            topic, 0, offset, None, value, timestamp)


def in_process(events: list[tuple[str, dict, int]], lag: int, order: str) -> float:
    """CPU µs per event learned of ``Learner._process`` alone (:func:`main`'s (d)): ``order`` "labelled"
    (the events with their labels), "labels first" or "events first" (batches of ``lag`` events and of
    their labels, alternating)."""
    from kafka import TopicPartition

    config = LearnerConfig(bootstrap_servers="localhost:9", topics=["ev"], group_id="g",
                           checkpoint_dir=tempfile.gettempdir(),
                           labels_topic=None if order == "labelled" else "lb")
    learner = Learner(config)
    ev_tp, lb_tp = TopicPartition("ev", 0), TopicPartition("lb", 0)
    batches: list[tuple] = []
    for start in range(0, len(events), lag):
        chunk = events[start:start + lag]
        if order == "labelled":
            batches.append((ev_tp, [encode_event(x, y, id_) for id_, x, y in chunk]))
            continue
        evs = (ev_tp, [encode_event(x, None, id_) for id_, x, _ in chunk])
        lbs = (lb_tp, [orjson.dumps({"id": id_, "y": y}) for id_, _, y in chunk])
        batches += [lbs, evs] if order == "labels first" else [evs, lbs]
    offsets = {"ev": 0, "lb": 0}
    polled = []
    for tp, values in batches:
        o = offsets[tp.topic]
        polled.append((tp, [_Record(tp.topic, o + k, v, o + k) for k, v in enumerate(values)], values))
        offsets[tp.topic] += len(values)
    t0 = time.process_time()
    for tp, records, values in polled:
        learner._process(tp, records, values)
    t1 = time.process_time()
    assert learner.model.n_samples_seen == len(events), (order, learner.model.n_samples_seen)
    return (t1 - t0) / len(events) * 1e6


def report_in_process(events: list[tuple[str, dict, int]], args: argparse.Namespace) -> int:
    """Print (d): the medians of ``--rounds`` rounds, the three orders interleaved."""
    us: dict[str, list[float]] = {o: [] for o in ("labelled", "labels first", "events first")}
    for _ in range(args.rounds):
        for o in us:
            us[o].append(in_process(events, args.lag, o))
    med = {o: statistics.median(v) for o, v in us.items()}
    print(f"(d) the learner's own CPU per event learned, in this process (medians of {args.rounds}): "
          f"labelled {med['labelled']:.2f} µs; joined, labels first {med['labels first']:.2f} µs "
          f"(x {med['labels first'] / med['labelled']:.2f}), events first {med['events first']:.2f} µs "
          f"(x {med['events first'] / med['labelled']:.2f})", flush=True)
    return 0


def memory_per_event(events: list[tuple[str, dict, int]]) -> tuple[float, float]:
    """(measured bytes, estimated bytes) per pending event of a JoinStore holding ``events`` as the learner
    keeps them: each record value and the features decoded from it (both made inside the measurement, and
    kept alive by the store only)."""
    codec = JsonCodec()
    decode = codec.decoder()
    values = [encode_event(x, None, id_) for id_, x, _ in events]
    store = JoinStore(max_pending=len(events) + 1, label_ttl_ms=10**12, event_fields=codec.fields)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i, v in enumerate(values):
        value = bytes(bytearray(v))  # the client's copy
        ev = decode(value)
        store.add_event(ev.id, ev.x, 0.5, version=i, ts=i, record_value=value)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return (after - before) / len(events), store.n_bytes / len(events)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--features", type=int, default=20)
    ap.add_argument("--checkpoint-every", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--lag", type=int, default=100, help="events between an event and its label")
    ap.add_argument("--kafka-client", choices=["kafka-python", "confluent", "both"], default="both")
    ap.add_argument("--raw-passes", type=int, default=5, help="readings summed per raw rate (r1, r2)")
    ap.add_argument("--in-process-only", action="store_true", help="only (d), no broker")
    args = ap.parse_args()
    events = make_events(args.events, args.features)
    if args.in_process_only:
        return report_in_process(events, args)
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
        n = args.events
        clients = ["kafka-python", "confluent"] if args.kafka_client == "both" else [args.kafka_client]
        for client in clients:
            rates: dict[str, list[float]] = {k: [] for k in ("a", "b", "r1", "r2")}
            cpu: dict[str, list[float]] = {k: [] for k in ("a", "b", "r1", "r2")}
            for i in range(args.rounds):  # interleaved: a drift in the machine's load hits all four alike
                got = {"r1": raw_rate(bootstrap, [labelled], n, n, client, args.raw_passes)}
                a, cpu_a, snap_a = learn_rate(bootstrap, labelled, n, None, args.checkpoint_every, client)
                got["r2"] = raw_rate(bootstrap, [unlabelled, labels], 2 * n, n, client, args.raw_passes)
                b, cpu_b, snap_b = learn_rate(bootstrap, unlabelled, n, labels, args.checkpoint_every, client)
                assert snap_b["join"]["joined"] == n and snap_a["n_samples_seen"] == n, (snap_a, snap_b)
                got.update(a=(a, cpu_a), b=(b, cpu_b))
                for k, (rate, sec) in got.items():
                    rates[k].append(rate)
                    cpu[k].append(sec * 1e6)
                us = {k: v[-1] for k, v in cpu.items()}
                print(f"{client} round {i + 1}: learned/s (a) labelled {a:8,.0f}  (b) joined {b:8,.0f}  "
                      f"(b)/(a) = {b / a:.2f};  raw client events/s (r1) one topic {rates['r1'][-1]:8,.0f}  "
                      f"(r2) two {rates['r2'][-1]:8,.0f}  r2/r1 = {rates['r2'][-1] / rates['r1'][-1]:.2f};  "
                      f"CPU µs/event a {us['a']:.1f} b {us['b']:.1f} r1 {us['r1']:.1f} r2 {us['r2']:.1f}",
                      flush=True)
            med = {k: statistics.median(v) for k, v in rates.items()}
            us = {k: statistics.median(v) for k, v in cpu.items()}
            ratio = statistics.median(b / a for a, b in zip(rates["a"], rates["b"], strict=True))
            ceiling = statistics.median(r2 / r1 for r1, r2 in zip(rates["r1"], rates["r2"], strict=True))
            bound = statistics.median(r2 / a for a, r2 in zip(rates["a"], rates["r2"], strict=True))
            print(f"{client}: (a) labelled median {med['a']:,.0f}, (b) joined median {med['b']:,.0f} events "
                  f"learned/s: (b)/(a) = {ratio:.2f} (median of the rounds' ratios; goal >= 0.8)")
            print(f"{client}: the client's ceiling, raw r1 {med['r1']:,.0f} and r2 {med['r2']:,.0f} events/s:"
                  f" two messages an event, so with a free join (b) <= r2 and (b)/(a) <= r2/(a) = {bound:.2f}"
                  f" (r2/r1 = {ceiling:.2f}, (a)/r1 = {med['a'] / med['r1']:.2f}); (b)/r2 = "
                  f"{statistics.median(b / r2 for b, r2 in zip(rates['b'], rates['r2'], strict=True)):.2f}")
            print(f"{client}: CPU per event (this process, all threads; medians): (a) {us['a']:.1f} µs, (b) "
                  f"{us['b']:.1f} µs = (a) x {us['b'] / us['a']:.2f}; the client alone r1 {us['r1']:.1f}, r2 "
                  f"{us['r2']:.1f} µs; the learner's own (a - r1) {us['a'] - us['r1']:.1f}, (b - r2) "
                  f"{us['b'] - us['r2']:.1f} µs")
            print(f"{client}: delayed log loss {snap_b['delayed_log_loss']:.4f}, immediate "
                  f"{snap_a['log_loss']:.4f}", flush=True)
    report_in_process(events, args)
    measured, estimated = memory_per_event(events[: min(args.events, 50_000)])
    print(f"(c) memory per pending event ({args.features} float features): {measured:,.0f} bytes measured "
          f"(tracemalloc), {estimated:,.0f} bytes estimated by the store (--max-pending-bytes counts this)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
