#!/usr/bin/env python3
"""What one model for the whole group costs: CPU-seconds per event over all members, 4 members vs 1.

    python bench/bench_group.py                     # starts a broker (scripts/kafka_broker.py) unless
    KAFKA_BOOTSTRAP_SERVERS=host:port python bench/bench_group.py     # ... one is given

``--events`` labelled events (20 features, default 100,000; encoded beforehand) are produced to an
8-partition topic at once (confluent-kafka's producer) once every member has its partitions, so that the
members read a backlog at full speed (not at the producer's pace, which charged the idle polling of
waiting consumers to every event). The members are subprocesses of
``tests/learner_process.py`` (``--state-store kafka``, batch size 1, the group model synchronising every
``--sync-every-seconds``): 1 member, 4 members, and the peer that separates the group model's cost from
that of running four processes, 4 members with a model each (``--sync-every-seconds 0``), ``--rounds``
rounds back to back. On a machine with few cores this measures cost, not speed-up.

The members' status files carry their own CPU time (``time.process_time()``: user + system of every
thread, since the process started) with each snapshot (every 0.1 s). Two views, in CPU-µs per event
summed over the members:

- **steady**: each member from its first snapshot with events learned (with its final partitions) to its
  first snapshot with its last event, CPU time over the events learned in that window (the events before
  the window are in neither). Start-up and group join are not in it.
- **total**: the whole processes' CPU time (``/proc/<pid>/stat``) from their start to the group's last
  event, over all events: interpreter start and imports (numpy, river, kafka: ~1 CPU-s per process, shown
  as *fixed*: the CPU-seconds of a process when every member has its partitions), joins, rebalances.

Also printed: the share of the steady CPU time spent synchronising (reading the others' contributions,
decoding and summing them: the loop's thread inside the synchronisation, ``GroupModel.sync_cpu_seconds``;
kafka-python's IO thread is not in it), the CPU rate of a member with nothing to read (measured for 2 s
after the last event: client IO thread, heartbeats, status writes), and the 4 − 1 gap split into that idle
rate over the members' windows and the syncs.

Measured (2-core machine shared with other work; ``python bench/bench_group.py --rounds 2`` and one
default run, 100,000 events, AdaGrad(0.3), batch size 1, kafka-python): steady 1 member 20.6–25.0
CPU-µs/event, 4 members 20.5–21.8, 4/1 = 0.83–1.04 (goal ≤ 1.1: met); 4 members with the group model /
with a model each 0.89–1.06 (the group model costs nothing measurable beyond noise of ±10%); the
synchronisation's share 0.8% (1 member) and 3.6–3.8% (4 members: ~0.8 CPU-µs/event). Total, fixed costs
included: 4/1 = 1.80–2.41 — each process costs 1.0–1.3 CPU-s before its first batch (interpreter,
imports, join), ~35 CPU-µs/event for three extra processes on this stream, plus ~15–21 CPU-ms/s per idle
member (client IO thread, heartbeats). The earlier figures (67.7 CPU-µs/event for 1 member, 4/1 = 1.6–2.4)
came from members following the producer (kafka-python's, slower than they learn): idle polling of
small fetches was charged to each event.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench._kafka import kafka_bootstrap, stop_processes  # noqa: E402

_TICK = os.sysconf("SC_CLK_TCK")
MODEL = {"optimizer": {"name": "AdaGrad", "lr": 0.3}}
_IDLE_SECONDS = 2.0  # members measured idle (nothing left to read) after the last event
_STATUS_EVERY = 0.1  # seconds between two status snapshots of a member


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def status(path: Path) -> dict:
    try:
        return orjson.loads(path.read_bytes())
    except (FileNotFoundError, ValueError):
        return {}


def stream(n: int, n_features: int = 20, seed: int = 0) -> list[bytes]:
    """``n`` encoded labelled events of a fixed logistic model (encoded before the run: the producer then
    sends faster than the members learn, and they read a backlog, not the producer's pace)."""
    import random

    from stream_logreg.codec import encode_event

    rng = random.Random(seed)
    w = [rng.gauss(0, 1) for _ in range(n_features)]
    values = []
    for i in range(n):
        x = {f"f{j}": rng.gauss(0, 1) for j in range(n_features)}
        y = int(sum(wj * x[f"f{j}"] for j, wj in enumerate(w)) + rng.gauss(0, 0.5) > 0)
        values.append(encode_event(x, y, id=str(i)))
    return values


def produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    """Send ``values`` round-robin to the 8 partitions with confluent-kafka's producer (librdkafka: a few
    µs per message, so the members find a backlog rather than following the producer)."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.size": 1 << 20})
    for i, value in enumerate(values):
        while True:
            try:
                producer.produce(topic, value, partition=i % 8)
                break
            except BufferError:  # the local queue is full: let it drain
                producer.poll(0.1)
    if producer.flush(60):
        raise SystemExit("could not deliver the events")


def wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.1)


@dataclass
class Cost:
    """One run's CPU cost (seconds, summed over the members)."""

    steady: float  # CPU-seconds per event from each member's first processed batch to its last event
    sync_share: float  # the share of that steady CPU time spent synchronising
    total: float  # CPU-seconds per event of the whole processes, from their start to the group's last event
    fixed: float  # CPU-seconds per process before it learned anything (start-up, imports, group join)
    window_events: int  # the events in the steady window (the first snapshot's events are not in it)
    window_seconds: float  # the members' steady windows, summed (wall-clock)
    idle: float  # CPU-seconds per second of one member with nothing to read (client threads, heartbeats)


def run(bootstrap: str, members: int, values: list[bytes], sync: float, workdir: Path) -> Cost:
    from kafka import KafkaAdminClient

    events = len(values)
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
               "--status-every", str(_STATUS_EVERY), "--consumer-setting", "session_timeout_ms=10000",
               "--consumer-setting", "heartbeat_interval_ms=1000", "--log-level", "WARNING"]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL))
    history: list[list[dict]] = [[] for _ in files]

    def at_end() -> bool:  # every partition's position, as its latest owner reports it, at the end
        positions: dict[str, int] = {}
        for f, seen in zip(files, history, strict=True):
            snap = status(f)
            if snap and (not seen or snap.get("cpu_seconds") != seen[-1].get("cpu_seconds")):
                seen.append(snap)
            for tp, offset in (snap.get("positions") or {}).items():
                positions[tp] = max(positions.get(tp, 0), offset)
        return sum(positions.values()) >= events

    try:
        wait(lambda: all(len(status(f).get("assigned") or []) == 8 // members for f in files), 120,
             "the members sharing the partitions")
        fixed = [cpu_seconds(p.pid) for p in procs]  # start-up, imports, joining the group
        at_end()
        producer = threading.Thread(target=produce, args=(bootstrap, topic, values), daemon=True)
        producer.start()  # at once: a backlog, read at full speed
        wait(at_end, 300, "the members at the end of every partition")
        producer.join()
        total = sum(cpu_seconds(p.pid) for p in procs)
        time.sleep(3 * _STATUS_EVERY)
        at_end()  # the snapshots written after each member's last event
        before, t0 = sum(cpu_seconds(p.pid) for p in procs), time.monotonic()
        time.sleep(_IDLE_SECONDS)  # with nothing left to read
        idle = (sum(cpu_seconds(p.pid) for p in procs) - before) / (time.monotonic() - t0) / members
    finally:
        stop_processes(procs)
    cpu = n = synced = seconds = 0.0
    for seen in history:
        if not seen:
            continue
        final = seen[-1]
        # its steady window: from its first processed batch with its final partitions to its last event
        steady = [s for s in seen if s.get("learned") and s.get("assigned") == final.get("assigned")]
        if not steady:
            continue
        first = steady[0]
        last = next(s for s in steady if s["learned"] == final["learned"])
        cpu += last["cpu_seconds"] - first["cpu_seconds"]
        n += last["learned"] - first["learned"]
        seconds += last["status_monotonic"] - first["status_monotonic"]
        synced += last.get("group_sync_cpu_seconds", 0.0) - first.get("group_sync_cpu_seconds", 0.0)
    return Cost(cpu / n if n else float("nan"), synced / cpu if cpu else 0.0, total / events,
                statistics.mean(fixed), int(n), seconds, idle)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--sync-every-seconds", type=float, default=5.0)
    args = ap.parse_args()
    ratios: dict[str, list[float]] = {"steady": [], "total": [], "apart": []}
    with kafka_bootstrap() as bootstrap:
        with tempfile.TemporaryDirectory() as tmp:
            sync = args.sync_every_seconds
            values = stream(args.events)
            print(f"{args.events:,} events, 8 partitions, a synchronisation every {sync:g} s; "
                  "CPU-µs per event summed over the members: steady = from each member's first batch to its "
                  "last event, "
                  "total = whole processes from their start (fixed: CPU-s per process before learning)")
            for r in range(args.rounds):
                costs = {"1": run(bootstrap, 1, values, sync, Path(tmp)),
                         "4": run(bootstrap, 4, values, sync, Path(tmp)),
                         "4 apart": run(bootstrap, 4, values, 0.0, Path(tmp))}
                one, four, apart = costs.values()
                ratios["steady"].append(four.steady / one.steady)
                ratios["total"].append(four.total / one.total)
                ratios["apart"].append(four.steady / apart.steady)
                print(f"round {r + 1}:")
                for name, c in costs.items():
                    label = {"1": "1 member", "4": "4 members", "4 apart": "4, a model each"}[name]
                    print(f"  {label:16s} steady {c.steady * 1e6:6.1f} (sync {c.sync_share:5.1%}, "
                          f"{c.window_events:,} events in {c.window_seconds:4.1f} s)  "
                          f"total {c.total * 1e6:6.1f}  "
                          f"fixed {c.fixed:4.2f} s  idle {c.idle * 1e3:4.1f} CPU-ms/s")
                idle = four.idle * four.window_seconds / four.window_events - one.idle * one.window_seconds \
                    / one.window_events
                print(f"  the gap, 4 - 1 members: {(four.steady - one.steady) * 1e6:.1f} CPU-µs/event, "
                      "of which "
                      f"idle-time cost (the idle rate over the windows) {idle * 1e6:.1f}, syncs "
                      f"{(four.steady * four.sync_share - one.steady * one.sync_share) * 1e6:.1f}")
                print(f"  4/1: steady {ratios['steady'][-1]:.2f}, total {ratios['total'][-1]:.2f}; "
                      f"group model / a model each (steady): {ratios['apart'][-1]:.2f}")
        print(f"median 4/1: steady {statistics.median(ratios['steady']):.2f} (goal ≤ 1.1), total "
              f"{statistics.median(ratios['total']):.2f}; median group model / a model each "
              f"{statistics.median(ratios['apart']):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
