#!/usr/bin/env python3
"""What the Kafka state store and exactly-once cost, and how fast a lost member's state is back.

    python bench/bench_exactly_once.py                 # starts a broker (scripts/kafka_broker.py) unless
    KAFKA_BOOTSTRAP_SERVERS=host:port python bench/bench_exactly_once.py     # ... one is given

(1) Throughput, in one run on the same stream (``--events`` labelled events, 20 features, one partition,
    each prediction published with ``publish_labelled``, a checkpoint every ``--checkpoint-every``):
    (a) the directory store with at-least-once (the default), (b) the Kafka store with at-least-once,
    (c) the Kafka store with exactly-once; on the confluent backend (``--kafka-client confluent``), (d) the
    directory store with at-least-once and (e) the Kafka store with exactly-once. ``--rounds`` rounds of a
    to e back to back (the machine may be shared); the ratios b/a, c/a and e/d are taken within each round,
    their medians printed.
(2) Failover: two members (subprocesses, exactly-once, empty disks) on two partitions while events keep
    coming; one is SIGKILLed, and its replacement starts at once on another empty disk: seconds from the kill
    to the replacement learning again, (i) with the lost member's ``--group-instance-id`` (static
    membership: it takes the place at once) and (ii) with a new identity (it waits for the group to expire
    the lost member, ``session_timeout_ms`` 6 s here, then takes its state over).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_consumer import learner_rate, produce  # noqa: E402

from bench._kafka import kafka_bootstrap, stop_processes  # noqa: E402

EOS = {"state_store": "kafka", "processing_guarantee": "exactly-once"}


def throughput(bootstrap: str, events: int, checkpoint_every: int, rounds: int) -> None:
    topic = f"bench-eos-{uuid.uuid4().hex[:8]}"
    produce(bootstrap, topic, events, 20)
    # mode -> (client, overrides, the mode its ratio is taken against)
    modes = {
        "a directory, at-least-once": ("kafka-python", {}, None),
        "b kafka, at-least-once": ("kafka-python", {"state_store": "kafka"}, "a"),
        "c kafka, exactly-once": ("kafka-python", EOS, "a"),
        "d confluent: directory, at-least-once": ("confluent", {}, None),
        "e confluent: kafka, exactly-once": ("confluent", EOS, "d"),
    }
    rates: dict[str, list[float]] = {m: [] for m in modes}
    by_letter = {m[0]: m for m in modes}
    for i in range(rounds):
        line = f"round {i + 1}:"
        for mode, (client, extra, _) in modes.items():
            overrides = {"predictions_topic": f"{topic}-predictions", "publish_labelled": True,
                         "create_topics": True, "group_instance_id": f"bench-{uuid.uuid4().hex[:8]}", **extra}
            rate, _, _ = learner_rate(bootstrap, topic, events, 1, checkpoint_every, overrides, client)
            rates[mode].append(rate)
            line += f"  ({mode[0]}) {rate:9,.0f}"
        line += "".join(f"  {m[0]}/{base}={rates[m][-1] / rates[by_letter[base]][-1]:.2f}"
                        for m, (_, _, base) in modes.items() if base)
        print(line, flush=True)
    for mode, (_, _, base) in modes.items():
        text = f"({mode}): median {statistics.median(rates[mode]):9,.0f} events/s"
        if base:
            ratio = statistics.median(r / b for r, b in zip(rates[mode], rates[by_letter[base]], strict=True))
            text += f"   /{base} = {ratio:.3f}"
        print(text)


def _member(bootstrap: str, topic: str, group: str, name: str, tmp: Path) -> tuple[subprocess.Popen, Path]:
    status = tmp / f"{name}-{uuid.uuid4().hex[:6]}.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(ROOT / "tests" / "learner_process.py"), "--bootstrap-servers", bootstrap,
           "--topic", topic, "--group", group, "--checkpoint-dir", str(tmp / uuid.uuid4().hex / "ckpt"),
           "--state-store", "kafka", "--processing-guarantee", "exactly-once",
           "--checkpoint-every-messages", "500", "--checkpoint-every-seconds", "1",
           "--consumer-setting", "session_timeout_ms=6000", "--consumer-setting", "heartbeat_interval_ms=500",
           "--consumer-setting", "fetch_max_wait_ms=100", "--group-instance-id", name,
           "--status-file", str(status), "--status-every", "0.05", "--log-level", "WARNING"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), status


def _status(path: Path) -> dict:
    try:
        return orjson.loads(path.read_bytes())
    except (FileNotFoundError, ValueError):
        return {}


def _wait(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def failover(bootstrap: str, same_identity: bool) -> float:
    """Seconds from a member's SIGKILL to its replacement (empty disk) learning again."""
    from kafka import KafkaAdminClient, KafkaProducer

    from stream_logreg.codec import encode_event

    topic = f"bench-failover-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics({topic: {"num_partitions": 2, "replication_factor": 1}})
    admin.close()
    stop = threading.Event()

    def feed() -> None:  # 400 events/s over both partitions, until told to stop
        producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
        i = 0
        while not stop.wait(0.01):
            for _ in range(4):
                producer.send(topic, encode_event({"a": i % 7 - 3.0, "b": 1.0}, i % 2, id=str(i)),
                              partition=i % 2)
                i += 1
        producer.close()

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    group = f"bench-{uuid.uuid4().hex[:8]}"
    procs = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            a, a_status = _member(bootstrap, topic, group, "m-a", Path(tmp))
            b, b_status = _member(bootstrap, topic, group, "m-b", Path(tmp))
            procs += [a, b]
            assert _wait(lambda: all(len(_status(s).get("assigned") or []) == 1 for s in (a_status, b_status))
                         and (_status(a_status).get("checkpoints_written") or 0) >= 2, 90), "no start"
            a.send_signal(signal.SIGKILL)
            t0 = time.monotonic()
            a.wait()
            c, c_status = _member(bootstrap, topic, group, "m-a" if same_identity else "m-0", Path(tmp))
            procs.append(c)
            assert _wait(lambda: (_status(c_status).get("learned") or 0) > 0, 120), "no replacement"
            seconds = time.monotonic() - t0
            restored = _status(c_status).get("n_samples_seen", 0) - _status(c_status).get("learned", 0)
            print(f"  the replacement resumed the lost member's state at n_samples_seen={restored:,}")
            return seconds
        finally:
            stop.set()
            stop_processes(procs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=60_000)
    ap.add_argument("--checkpoint-every", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skip-failover", action="store_true")
    args = ap.parse_args()
    with kafka_bootstrap() as bootstrap:
        print(f"(1) throughput: {args.events:,} events, a checkpoint every {args.checkpoint_every:,}, "
              "every prediction published")
        throughput(bootstrap, args.events, args.checkpoint_every, args.rounds)
        if not args.skip_failover:
            print("(2) failover, SIGKILL to the replacement learning again (goal < 10 s):")
            same = failover(bootstrap, same_identity=True)
            print(f"  (i) same --group-instance-id, empty disk: {same:.1f} s")
            other = failover(bootstrap, same_identity=False)
            print(f"  (ii) new identity, empty disk (takes the state over): {other:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
