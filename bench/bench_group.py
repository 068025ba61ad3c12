#!/usr/bin/env python3
"""What one model for the whole group costs: CPU-seconds per event over all members, 4 members vs 1.

    python bench/bench_group.py                     # starts a broker (scripts/kafka_broker.py) unless
    KAFKA_BOOTSTRAP_SERVERS=host:port python bench/bench_group.py     # ... one is given

``--events`` labelled events (20 features) on an 8-partition topic, learned by 1 and then by 4 members
(subprocesses of ``tests/learner_process.py``, ``--state-store kafka``, the group model synchronising every
``--sync-every-seconds``), ``--rounds`` rounds of (1, 4) back to back. The events are produced once every
member has its partitions; the CPU time (user + system, from ``/proc/<pid>/stat``) of every member is
taken then and when the members together are at the end of every partition: start-up is not counted. On
a machine with few cores this measures cost, not speed-up. The peer that separates the group model's cost
from that of running four processes: 4 members with a model each (``--sync-every-seconds 0``).

Printed: CPU-µs per event for 1 and 4 members, their ratio (goal ≤ 1.1), the ratio against the peer, and
the share of the members' CPU time spent synchronising (reading the others' contributions, decoding and
summing them: the CPU time of the loop's thread inside the synchronisation, ``GroupModel.sync_cpu_seconds``;
kafka-python's IO thread is not in it).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_consumer import _broker_module  # noqa: E402

_TICK = os.sysconf("SC_CLK_TCK")
MODEL = {"optimizer": {"name": "AdaGrad", "lr": 0.3}}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def status(path: Path) -> dict:
    try:
        return orjson.loads(path.read_bytes())
    except (FileNotFoundError, ValueError):
        return {}


def produce(bootstrap: str, topic: str, n: int, n_features: int = 20, seed: int = 0) -> None:
    import random

    from kafka import KafkaProducer

    from stream_logreg.codec import encode_event

    rng = random.Random(seed)
    w = [rng.gauss(0, 1) for _ in range(n_features)]
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=1 << 20)
    for i in range(n):
        x = {f"f{j}": rng.gauss(0, 1) for j in range(n_features)}
        y = int(sum(wj * x[f"f{j}"] for j, wj in enumerate(w)) + rng.gauss(0, 0.5) > 0)
        producer.send(topic, encode_event(x, y, id=str(i)), partition=i % 8)
    producer.flush()
    producer.close()


def wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.1)


def run(bootstrap: str, members: int, events: int, sync: float, workdir: Path) -> tuple[float, float]:
    """(CPU-seconds per event over all members, share of their CPU time spent synchronising)."""
    from kafka import KafkaAdminClient

    topic = f"bench-group-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics({topic: {"num_partitions": 8, "replication_factor": 1}})
    admin.close()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    procs, files = [], []
    for i in range(members):
        files.append(workdir / f"{topic}-{i}.json")
        cmd = [sys.executable, str(ROOT / "tests" / "learner_process.py"), "--bootstrap-servers", bootstrap,
               "--topic", topic, "--group", f"g-{topic}", "--checkpoint-dir", str(workdir / "none"),
               "--state-store", "kafka", "--sync-every-seconds", str(sync), "--group-instance-id",
               f"m-{i}", "--model", orjson.dumps(MODEL).decode(), "--status-file", str(files[-1]),
               "--status-every", "0.2", "--consumer-setting", "session_timeout_ms=10000",
               "--consumer-setting", "heartbeat_interval_ms=1000", "--log-level", "WARNING"]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL))
    try:
        wait(lambda: all(len(status(f).get("assigned") or []) == 8 // members for f in files), 120,
             "the members sharing the partitions")
        before = [cpu_seconds(p.pid) for p in procs]
        sync_before = sum(status(f).get("group_sync_cpu_seconds", 0.0) for f in files)
        produce(bootstrap, topic, events)
        wait(lambda: sum(sum((status(f).get("positions") or {}).values()) for f in files) >= events, 300,
             "the members at the end of every partition")
        cpu = sum(cpu_seconds(p.pid) - b for p, b in zip(procs, before, strict=True))
        time.sleep(0.5)  # one more status write
        synced = sum(status(f).get("group_sync_cpu_seconds", 0.0) for f in files) - sync_before
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
    return cpu / events, synced / cpu if cpu else 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--sync-every-seconds", type=float, default=5.0)
    args = ap.parse_args()
    broker = None
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if not bootstrap:
        broker = _broker_module().KafkaBroker().start()
        bootstrap = broker.bootstrap_servers
    ratios, alone = [], []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            sync = args.sync_every_seconds
            print(f"{args.events:,} events, 8 partitions, a synchronisation every {sync:g} s")
            for r in range(args.rounds):
                one, share1 = run(bootstrap, 1, args.events, sync, Path(tmp))
                four, share4 = run(bootstrap, 4, args.events, sync, Path(tmp))
                apart, _ = run(bootstrap, 4, args.events, 0.0, Path(tmp))
                ratios.append(four / one)
                alone.append(four / apart)
                print(f"round {r + 1}: 1 member {one * 1e6:6.1f} CPU-µs/event (sync {share1:.1%}), "
                      f"4 members {four * 1e6:6.1f} (sync {share4:.1%}), 4 members with a model each "
                      f"{apart * 1e6:6.1f}; 4/1 = {four / one:.2f}, group/apart = {four / apart:.2f}")
        print(f"median 4/1 = {statistics.median(ratios):.2f} (goal ≤ 1.1); median 4 members, group model / "
              f"a model each = {statistics.median(alone):.2f}")
    finally:
        if broker is not None:
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
