"""``--state-store kafka`` against a real broker: no local disk, and the state follows the partitions.

Every member here runs on a checkpoint directory that does not exist (and must still not exist at the end):
its state lives in the compacted topic ``<group>-state`` only. Oracles: an offline replay of the same events
(bitwise), and per-partition counts of what the states in the topic have learned (every event exactly once).
"""

from __future__ import annotations

import random
import signal
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from polling import wait_for
from test_consumer import (
    make_config,
    make_events,
    offline,
    produce,
    read_status,
    same_model,
    start_service,
)

from consumers import Learner
from consumers.state.kafka_store import KafkaStore
from stream_logreg.checkpoints import CheckpointError

KAFKA = ("--state-store", "kafka")


def state(bootstrap: str, group: str, key: str, fence: bool = False) -> Any:
    """The newest checkpoint of state key ``key`` in ``<group>-state``: read-only (fences nobody), or with
    ``fence`` as the key's next owner would (which aborts a killed writer's open transaction at once)."""
    with KafkaStore(bootstrap, key=key, group_id=group, read_only=not fence, timeout=30) as store:
        return store.latest()


def stop(proc: Any, sig: int = signal.SIGTERM) -> None:
    proc.send_signal(sig)
    code = proc.wait(60)
    if sig == signal.SIGTERM:
        assert code == 0, proc.stderr.read().decode()[-3000:]


@pytest.mark.kafka
def test_sigkill_and_restart_on_an_empty_disk_each_time_is_bitwise_an_uninterrupted_run(
    kafka_bootstrap: str, kafka_topic: Any, tmp_path: Path
) -> None:
    topic = kafka_topic(1)
    batch_size, n = 5, 6002  # 6000 learned, 2 left buffered
    values = make_events(n, seed=21)
    produce(kafka_bootstrap, topic, values)
    group = f"g-{topic}"
    extra = (*KAFKA, "--batch-size", str(batch_size), "--checkpoint-every-messages", "250",
             "--max-poll-records", "50", "--group-instance-id", "crash-test")
    rng = random.Random(11)
    kill_points = sorted(rng.sample(range(300, 5700), 4))
    disks = []
    for i, point in enumerate(kill_points):
        disk, status = tmp_path / f"disk-{i}" / "ckpt", tmp_path / f"status-{i}.json"
        disks.append(disk)
        proc = start_service(kafka_bootstrap, topic, group, disk, *extra, "--status-file", str(status),
                             "--status-every", "0.05")
        try:
            wait_for(lambda p=point, s=status, proc=proc: (read_status(s).get("n_samples_seen") or 0) >= p
                     or proc.poll() is not None, 90, f"past {point} samples")
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
    at_kill = state(kafka_bootstrap, group, "crash-test", fence=True).model.n_samples_seen
    assert at_kill < 6000, "the last kill came too late to interrupt anything"
    status = tmp_path / "status.json"
    disk = tmp_path / "disk-last" / "ckpt"
    disks.append(disk)
    proc = start_service(kafka_bootstrap, topic, group, disk, *extra, "--status-file", str(status),
                         "--status-every", "0.05")
    try:
        wait_for(lambda: read_status(status).get("positions", {}).get(f"{topic}:0") == n
                 or proc.poll() is not None, 90, "all events read")
        stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    final = state(kafka_bootstrap, group, "crash-test")
    expected, _ = offline(values, batch_size)
    assert final.model.n_samples_seen == 6000
    assert final.metadata["learned"] == {f"{topic}:0": 6000}
    assert final.metadata["offsets"] == {f"{topic}:0": 6000}
    assert same_model(final.model, expected)
    assert not any(d.exists() for d in disks), "the Kafka store must not touch the local disk"


@pytest.mark.kafka
@pytest.mark.parametrize("replacement", ["before the group expires the lost member",
                                         "after the survivor took its partitions"])
def test_a_replacement_on_an_empty_disk_resumes_the_lost_members_state(
    kafka_bootstrap: str, kafka_topic: Any, tmp_path: Path, replacement: str
) -> None:
    """Two members on four partitions, one SIGKILLed, a third with an empty disk replacing it. The
    replacement either joins while the lost member's (long) session still holds its partitions, or only
    after the group expired it (short session) and the survivor has taken and checkpointed every partition:
    in both cases the replacement continues the lost member's state under its key, and across the group every
    event is learned exactly once."""
    topic = kafka_topic(4)
    group = f"g-{topic}"
    phases = [make_events(2000, seed=s) for s in (31, 32)]
    total = sum(map(len, phases))
    late = replacement.startswith("after")
    # A survivor given the lost partitions starts at their committed offsets: with at-least-once, a member
    # killed between its checkpoint and its commit leaves events in its state that the survivor learns again
    # (the documented window). Exactly-once writes them together, so the late case runs with it.
    guarantee = ("--processing-guarantee", "exactly-once") if late else ()
    extra = (*KAFKA, *guarantee, "--checkpoint-every-messages", "100", "--max-poll-records", "20",
             "--status-every", "0.05")

    def member(name: str) -> tuple[Any, Path]:
        status = tmp_path / f"{name}.json"
        # (long enough that the replacement, started after the kill and a read of the lost state, joins
        # before it ends on a loaded machine: with 20 s it sometimes did not)
        session = "40000" if name == "m-a" and not late else "6000"
        proc = start_service(kafka_bootstrap, topic, group, tmp_path / name / "ckpt", *extra,
                             "--group-instance-id", name, "--status-file", str(status),
                             "--consumer-setting", f"session_timeout_ms={session}")
        return proc, status

    a, a_status = member("m-a")
    b, b_status = member("m-b")
    procs = [a, b]
    try:
        def sharing() -> bool:
            assert a.poll() is None and b.poll() is None
            return all(len(read_status(s).get("assigned") or []) == 2 for s in (a_status, b_status))

        wait_for(sharing, 90, "A and B sharing the partitions")
        # Only now the first events: produced before, they could all be learned by whichever member joined
        # first, alone with the four partitions, and A would then have nothing left to learn (and so to
        # checkpoint) on the two it is given.
        produce(kafka_bootstrap, topic, phases[0], partitions=4)
        def a_checkpointed() -> bool:
            assert a.poll() is None, a.stderr.read().decode(errors="replace")[-3000:]
            return (read_status(a_status).get("checkpoints_written") or 0) >= 3

        wait_for(a_checkpointed, 60, lambda: f"A checkpointing (A: {read_status(a_status)}, B: "
                 f"{read_status(b_status)}, A's stderr: {a.stderr.read().decode(errors='replace')[-3000:]})")
        lost_partitions = sorted(read_status(a_status)["assigned"])
        a.send_signal(signal.SIGKILL)
        a.wait(30)
        # the killed member's open transaction, aborted as the key's next owner (or Kafka, after its
        # timeout) would: until then it holds back the group's offsets and the state's readers
        lost = state(kafka_bootstrap, group, "m-a", fence=True)
        assert lost is not None and 0 < lost.model.n_samples_seen
        if late:  # the survivor takes every partition and commits them (marking the lost state) first
            wait_for(lambda: len(read_status(b_status).get("assigned") or []) == 4, 90,
                     "B owning every partition")
            written = read_status(b_status).get("checkpoints_written") or 0
            produce(kafka_bootstrap, topic, phases[1][:200], partitions=4)
            # (exactly-once: each checkpoint commits the offsets of every partition in its transaction)
            wait_for(lambda: (read_status(b_status).get("checkpoints_written") or 0) >= written + 2, 60,
                     "B checkpointing every partition")
        c, c_status = member("m-0")
        procs.append(c)
        wait_for(lambda: len(read_status(c_status).get("assigned") or []) == 2 or c.poll() is not None, 90,
                 "C given its partitions")
        produce(kafka_bootstrap, topic, phases[1][200:] if late else phases[1], partitions=4)

        def done() -> bool:
            for p in (b, c):
                assert p.poll() is None, p.stderr.read().decode(errors="replace")[-3000:]
            positions = {**read_status(b_status).get("positions", {}),
                         **read_status(c_status).get("positions", {})}
            return sum(positions.values()) == total and len(positions) == 4

        wait_for(done, 150, "B and C at the end of every partition")
        assert sorted(read_status(c_status)["assigned"]) == lost_partitions  # m-0 sorts where m-a did
        stop(c)
        stop(b)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    ends = {f"{topic}:{p}": total // 4 for p in range(4)}
    states = {key: state(kafka_bootstrap, group, key) for key in ("m-a", "m-b", "m-0")}
    assert states["m-0"] is None, "the replacement went on under the lost member's state key"
    learned = Counter()
    for key in ("m-a", "m-b"):
        learned.update(states[key].metadata["learned"])
    assert dict(learned) == ends  # per partition, across the group: every event learned exactly once
    resumed = states["m-a"]
    # the replacement continued the lost member's model: its history starts with the lost member's samples
    assert resumed.model.n_samples_seen == sum(resumed.metadata["learned"].values())
    assert resumed.model.n_samples_seen > lost.model.n_samples_seen
    # (the events came after A and B shared the partitions: A learned those of its own; a rebalance may have
    # given it others for a while too)
    assert all(resumed.metadata["learned"].get(k) for k in lost_partitions)
    if late:  # the survivor learned the lost partitions in between: both states hold some of their events
        assert all(states["m-b"].metadata["learned"].get(k) for k in lost_partitions)
    assert not any((tmp_path / name).exists() for name in ("m-a", "m-b", "m-0"))


@pytest.mark.kafka
def test_two_live_learners_on_one_checkpoint_directory_are_refused(
    kafka_bootstrap: str, kafka_topic: Any, tmp_path: Path
) -> None:
    topic = kafka_topic(1)
    first = Learner(make_config(kafka_bootstrap, topic, tmp_path / "ckpt", group_instance_id="one"))
    second = Learner(make_config(kafka_bootstrap, topic, tmp_path / "ckpt", group_instance_id="two"))

    stop_first = threading.Event()
    thread = threading.Thread(target=first.run, kwargs={"stop_event": stop_first}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: first.stats.snapshot()["running"], 60, "the first learner running")
        with pytest.raises(CheckpointError, match="another learner is running on the checkpoint directory"):
            second.run()
    finally:
        stop_first.set()
        thread.join(60)
    assert not thread.is_alive()
    second_stop = threading.Event()
    second_stop.set()
    second.run(stop_event=second_stop)  # once the first has stopped, the directory is free
