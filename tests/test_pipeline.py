"""The learner's overlap (consumers.pipeline): a polled batch is learned on a worker thread while the loop
polls the next; its exceptions reach the loop's thread; a rebalance waits for the batch in flight, so that the
revoke checkpoint covers exactly what the model learned (a real broker, both backends)."""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from polling import wait_for

from consumers import Learner
from consumers.pipeline import Pipeline
from tests.test_consumer import Running, latest, make_config, make_events, produce, running


def test_the_batch_runs_on_the_worker_and_its_exception_reaches_the_caller() -> None:
    threads, done = [], []

    def work(batch):
        threads.append(threading.current_thread())
        if batch == "bad":
            raise KeyError("broken batch")
        done.append(batch)

    pipeline = Pipeline(work)
    try:
        pipeline.submit("one")
        pipeline.complete()
        assert done == ["one"] and threads[0] is not threading.current_thread()
        pipeline.submit("bad")
        pipeline.wait()  # a callback's wait does not raise: the loop's complete() does
        assert not pipeline.busy
        with pytest.raises(KeyError, match="broken batch"):
            pipeline.complete()
        pipeline.complete()  # raised once
        pipeline.submit("two")
        pipeline.complete()
        assert done == ["one", "two"]
    finally:
        pipeline.close()


def test_one_batch_at_a_time_and_close_logs_what_nobody_raised(caplog: pytest.LogCaptureFixture) -> None:
    release = threading.Event()
    pipeline = Pipeline(lambda batch: release.wait(30) and (_ for _ in ()).throw(ValueError(batch)))
    pipeline.submit("slow")
    with pytest.raises(RuntimeError, match="busy"):
        pipeline.submit("another")
    release.set()
    with caplog.at_level(logging.ERROR, logger="consumers.pipeline"):
        pipeline.close()
    assert any(r.exc_info and isinstance(r.exc_info[1], ValueError) for r in caplog.records)
    with pytest.raises(RuntimeError, match="closed"):
        pipeline.submit("late")


def test_submit_returns_once_the_worker_has_taken_the_batch_up() -> None:
    """The loop's next poll holds the GIL for long stretches of C (confluent-kafka builds its messages with
    it): the worker takes the batch up (and goes on into its GIL-free pass) before submit() returns, rather
    than waiting for the GIL behind the poll."""
    done = []
    pipeline = Pipeline(done.append)
    try:
        for i in range(50):
            pipeline.submit(i)
            assert pipeline._job is None, f"batch {i} not taken up yet"  # noqa: SLF001
            pipeline.complete()
        assert done == list(range(50))
    finally:
        pipeline.close()
    release = threading.Event()
    holding = Pipeline(lambda batch: release.wait(30), wait_taken=False)  # work that holds the GIL
    try:
        holding.submit("one")
        assert holding._job == "one"  # not waited for: the worker cannot have run yet  # noqa: SLF001
    finally:
        release.set()
        holding.close()


def test_a_batch_handed_over_runs_after_the_one_in_flight() -> None:
    """hand_over() while a batch is in flight: the worker takes the new one up as soon as the first is done
    (never both at once), and the call returns once it has (one batch in flight again)."""
    release, log = threading.Event(), []

    def work(batch):
        log.append(("start", batch))
        if batch == "first":
            release.wait(30)
        log.append(("end", batch))

    pipeline = Pipeline(work)
    try:
        pipeline.submit("first")
        threading.Timer(0.2, release.set).start()
        pipeline.hand_over("second")
        assert log[:3] == [("start", "first"), ("end", "first"), ("start", "second")]
        assert pipeline._job is None  # taken up  # noqa: SLF001
        pipeline.complete()
        assert log == [("start", "first"), ("end", "first"), ("start", "second"), ("end", "second")]
        pipeline.hand_over("third")  # nothing in flight: taken up at once
        pipeline.complete()
        assert log[-1] == ("end", "third")
    finally:
        pipeline.close()
    with pytest.raises(RuntimeError, match="wait_taken"):
        Pipeline(log.append, wait_taken=False).hand_over("x")


def test_a_batch_handed_over_behind_a_failing_one_is_dropped() -> None:
    """The batch in flight raises: the one handed over behind it is never run (what it would learn comes
    after a failure), and hand_over() raises the exception, once, as complete() would."""
    release, done = threading.Event(), []

    def work(batch):
        if batch == "bad":
            release.wait(30)
            raise KeyError("broken batch")
        done.append(batch)

    pipeline = Pipeline(work)
    try:
        pipeline.submit("bad")
        threading.Timer(0.2, release.set).start()
        with pytest.raises(KeyError, match="broken batch"):
            pipeline.hand_over("behind")
        assert not pipeline.busy and done == []
        pipeline.complete()  # raised once
        pipeline.submit("ok")
        pipeline.complete()
        assert done == ["ok"]
        pipeline.submit("bad")  # released: fails at once
        pipeline.wait()
        with pytest.raises(KeyError, match="broken batch"):  # failed before the hand-over
            pipeline.hand_over("after")
        assert done == ["ok"]
    finally:
        release.set()
        pipeline.close()


def _slow_worker(learner: Learner, seconds: float, gate: tuple | None = None) -> list[int]:
    """Each batch held ``seconds`` on the worker after it is learned, so that the loop's next poll finds
    it in flight (the hand-over behind it, Learner._ready, is then tried every poll); with ``gate`` (two
    events: armed, released), a batch in flight while it is armed is held until it is released. Returns
    the list of the sizes of the batches handed over behind one in flight."""
    learn_batch, hand_over = learner._learn_batch, learner._hand_over
    handed: list[int] = []

    def slow(work: dict) -> None:
        learn_batch(work)
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            if gate is not None and gate[0].is_set() and not gate[1].is_set():
                gate[1].wait(10)
                return
            time.sleep(0.001)

    def counted(pipeline: Pipeline, work: dict) -> int:
        handed.append(hand_over(pipeline, work))
        return handed[-1]

    learner._learn_batch, learner._hand_over = slow, counted
    return handed


@pytest.mark.kafka
def test_checkpoints_between_hand_overs_hold_exactly_their_offsets(kafka_bootstrap: str, kafka_topic: Any,
                                                                   tmp_path: Path, kafka_client: str) -> None:
    """With every poll finding a batch in flight, most batches are handed over behind it; the ticks still
    come as due (every 300 events) and each checkpoint's model is bitwise the offline model of exactly the
    events its offsets cover."""
    from stream_logreg.checkpoints import DirectoryStore
    from tests.test_consumer import offline, same_model

    topic = kafka_topic(1)
    values = make_events(3000, seed=8)
    produce(kafka_bootstrap, topic, values)
    cfg = make_config(kafka_bootstrap, topic, tmp_path / "ckpt", max_poll_records=50,
                      checkpoint_every_messages=300, keep_checkpoints=100, kafka_client=kafka_client)
    learner = Learner(cfg)
    handed = _slow_worker(learner, 0.01)
    key = f"{topic}:0"
    r = Running(learner)
    try:
        wait_for(lambda: r.stats()["positions"].get(key) == len(values), 90, "all read")
    finally:
        learner.stop()
        r.thread.join(60)
    assert r.error is None, r.error
    assert sum(handed) >= len(values) // 2, handed  # the hand-over behind a batch in flight was the rule
    store = DirectoryStore(tmp_path / "ckpt", read_only=True)
    ckpts = [store.load(info.id) for info in store.list() if info.valid]
    covered = sorted(c.metadata["offsets"][key] for c in ckpts if key in c.metadata["offsets"])
    assert len(covered) >= len(values) // 300 - 1, covered  # ticks as due
    for ckpt in ckpts:
        k = ckpt.metadata["offsets"].get(key, 0)
        assert ckpt.metadata["learned"].get(key, 0) == k == ckpt.model.n_samples_seen
        assert same_model(ckpt.model, offline(values[:k], 1)[0]), f"checkpoint at offset {k}"
    assert covered[-1] == len(values)


@pytest.mark.kafka
def test_what_exists_before_the_loop_is_frozen_while_it_runs(kafka_bootstrap: str, kafka_topic: Any,
                                                             tmp_path: Path, kafka_client: str) -> None:
    """The objects made before the loop (modules, the model, the clients) are left out of the cyclic
    collector while it runs (gc.freeze): the full collections that the client's messages trigger do not
    scan them with the GIL held. Once run() returns they are collectable again; the model is the
    uninterrupted offline run's, bitwise."""
    from tests.test_consumer import offline, same_model

    topic = kafka_topic(1)
    values = make_events(600, seed=7)
    produce(kafka_bootstrap, topic, values)
    cfg = make_config(kafka_bootstrap, topic, tmp_path / "ckpt", max_poll_records=100,
                      kafka_client=kafka_client)
    learner = Learner(cfg)
    before = gc.get_freeze_count()
    frozen: list[int] = []
    learn_batch = learner._learn_batch

    def counting(work: dict) -> None:
        frozen.append(gc.get_freeze_count())
        learn_batch(work)

    learner._learn_batch = counting
    r = Running(learner)
    try:
        wait_for(lambda: r.stats()["positions"].get(f"{topic}:0") == len(values), 60, "all read")
    finally:
        learner.stop()
        r.thread.join(60)
    assert r.error is None, r.error
    assert frozen and min(frozen) > before + 10_000  # the modules, at least
    assert gc.get_freeze_count() == before
    expected, _ = offline(values, 1)
    assert same_model(latest(tmp_path / "ckpt").model, expected)


@pytest.mark.kafka
def test_a_revoke_waits_for_the_batch_in_flight(kafka_bootstrap: str, kafka_topic: Any, tmp_path: Path,
                                                kafka_client: str) -> None:
    """Member A's batches are held on its worker for a while each (so that its polls, where the rebalance
    callbacks run, happen while one is in flight) when member B joins: A's revoke callback must wait for
    the batch in flight, so that it is learned before the revoke checkpoint and never after the
    partitions are gone; every event is learned exactly once across A and B."""
    topic = kafka_topic(2)
    group = f"g-{topic}"
    values = make_events(3000, seed=5)
    produce(kafka_bootstrap, topic, values, partitions=2)
    cfg_a = make_config(kafka_bootstrap, topic, tmp_path / "a", group_id=group, max_poll_records=100,
                        kafka_client=kafka_client)
    cfg_b = make_config(kafka_bootstrap, topic, tmp_path / "b", group_id=group, max_poll_records=100,
                        kafka_client=kafka_client)
    learner_a = Learner(cfg_a)
    holding, revoked = threading.Event(), threading.Event()
    learn_batch, on_revoked = learner_a._learn_batch, learner_a.on_revoked
    revokes: list[tuple[bool, bool]] = []  # (a batch in flight when it began, one in flight when it ended)

    def slow(work: dict) -> None:
        if holding.is_set():
            revoked.wait(0.5)  # not learned yet: a revoke now must wait for it
        learn_batch(work)

    def on_revoked_a(partitions: set) -> dict:
        pipeline = learner_a._pipeline
        began = pipeline is not None and pipeline.busy
        offsets = on_revoked(partitions)
        revokes.append((began, pipeline is not None and pipeline.busy))
        revoked.set()
        return offsets

    learner_a._learn_batch, learner_a.on_revoked = slow, on_revoked_a
    a = Running(learner_a)
    try:
        a.wait_consumed(300)
        holding.set()
        with running(cfg_b) as b:
            wait_for(lambda: revokes, 90, "A's revoke")
            assert revokes[0] == (True, False)  # a batch was in flight, and was complete before the revoke
            holding.clear()
            wait_for(lambda: b.stats()["assigned"] and a.stats()["assigned"], 60, "A and B sharing")
            wait_for(lambda: sum(a.stats()["positions"].values()) + sum(b.stats()["positions"].values())
                     >= len(values), 90, "every event read")
            b.stop()
        a.stop()
    finally:
        revoked.set()
        if a.thread.is_alive():
            a.stop()
    ckpt_a, ckpt_b = latest(tmp_path / "a"), latest(tmp_path / "b")
    learned_a, learned_b = Counter(ckpt_a.metadata["learned"]), Counter(ckpt_b.metadata["learned"])
    assert dict(learned_a + learned_b) == {f"{topic}:0": 1500, f"{topic}:1": 1500}  # exactly once
    assert ckpt_a.model.n_samples_seen + ckpt_b.model.n_samples_seen == len(values)


@pytest.mark.kafka
@pytest.mark.parametrize("in_flight", [False, True], ids=["worker-done", "batch-in-flight"])
def test_records_from_before_a_partitions_position_are_never_learned(
    kafka_bootstrap: str, kafka_topic: Any, tmp_path: Path, kafka_client: str,
    caplog: pytest.LogCaptureFixture, in_flight: bool,
) -> None:
    """Once 300 events are read, the client goes back to the partition's start on its own (a seek to 0
    behind the learner's back, between two polls: what librdkafka was seen doing once after a rollback's
    seek). The records it then returns start before the model's position: the learner must not learn them
    again but seek the partition back to its position; the model is the uninterrupted run's, bitwise. Also
    when the rewound records are polled while the batch before is in flight (the position to compare with
    is then the one that batch leaves: the hand-over behind it, Learner._ready, must refuse them)."""
    from tests.test_consumer import offline, same_model

    topic = kafka_topic(1)
    values = make_events(1200, seed=6)
    produce(kafka_bootstrap, topic, values)
    cfg = make_config(kafka_bootstrap, topic, tmp_path / "ckpt", max_poll_records=50,
                      kafka_client=kafka_client)
    learner = Learner(cfg)
    source, poll, rewound = learner._source, learner._source.poll, []
    key = f"{topic}:0"
    gate = (threading.Event(), threading.Event())  # with in_flight: the batch in flight waits for the rewind

    def rewinding_poll(timeout_ms: int) -> dict:
        if not rewound and (learner.stats.snapshot()["positions"].get(key) or 0) >= 300:
            (tp,) = source.assignment()
            gate[0].set()
            rewound.append(learner._state.positions[tp])
            if kafka_client == "confluent":
                from confluent_kafka import TopicPartition as CTopicPartition

                source.consumer.seek(CTopicPartition(tp.topic, tp.partition, 0))
            else:
                source.consumer.seek(tp, 0)
            if in_flight:  # the rewound records, polled while the batch before is still in flight
                deadline = time.monotonic() + 10
                while not (batch := poll(timeout_ms)) and time.monotonic() < deadline:
                    pass
                rewound.append(learner._pipeline.busy)
                gate[1].set()
                return batch
        return poll(timeout_ms)

    source.poll = rewinding_poll
    handed = _slow_worker(learner, 0.01, gate) if in_flight else None
    caplog.set_level(logging.WARNING, logger="consumers.learner")
    r = Running(learner)
    try:
        wait_for(lambda: r.stats()["positions"].get(key) == len(values), 60, "all read")
    finally:
        learner.stop()
        r.thread.join(60)
    assert r.error is None, r.error
    assert rewound and rewound[0] >= 300
    ckpt = latest(tmp_path / "ckpt")
    assert ckpt.metadata["learned"] == {key: len(values)} and ckpt.metadata["offsets"] == {key: len(values)}
    expected, _ = offline(values, 1)
    assert same_model(ckpt.model, expected)  # nothing learned twice
    assert any("seeking it back" in rec.getMessage() for rec in caplog.records)
    if in_flight:
        assert rewound[1] is True  # polled while the batch before was in flight
        assert sum(handed) >= len(values) // 2, handed
