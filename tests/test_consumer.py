"""The Kafka learner against a real broker: exactly-once learning through crashes, stops and rebalances.

Every test compares with an offline replay of the same messages (``offline``): the learner's model must be
bitwise the one learned from the same sequence with the same batch size, which also proves that nothing was
learned twice or skipped. Synchronisation is by polling a condition with a deadline (``wait_for``), never
by fixed sleeps.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from polling import KeepProducing, read_topic, wait_for

from consumers import ConfigError, Learner, LearnerConfig
from stream_logreg import OnlineLogisticRegression
from stream_logreg.checkpoints import DirectoryStore
from stream_logreg.codec import Event, JsonCodec, Reason, encode_event

ROOT = Path(__file__).resolve().parents[1]

# Quick rebalances; 6000 ms is the broker's group.min.session.timeout.ms.
CONSUMER_SETTINGS: dict[str, Any] = {
    "session_timeout_ms": 6000,
    "heartbeat_interval_ms": 500,
    "max_poll_interval_ms": 30_000,
    "fetch_max_wait_ms": 100,
}
MODEL = {"optimizer": {"name": "SGD", "lr": 0.05}, "intercept_lr": None}


# --------------------------------------------------------------------------------------------------
# Helpers


def make_events(n: int, seed: int, unlabelled_every: int = 0) -> list[bytes]:
    """``n`` JSON events (numeric features and a categorical one); every k-th unlabelled if k > 0."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        x = {"a": rng.gauss(0, 1), "b": rng.gauss(0, 1), "c": rng.uniform(-2, 2),
             "city": rng.choice(["paris", "lyon", "nice", "lille"])}
        y = int(x["a"] - 0.5 * x["b"] + (0.7 if x["city"] == "nice" else 0) + rng.gauss(0, 0.3) > 0)
        if unlabelled_every and i % unlabelled_every == unlabelled_every - 1:
            y = None
        out.append(encode_event(x, y, id=f"e{seed}-{i}"))
    return out


def offline(values: list[bytes | None], batch_size: int, config: LearnerConfig | None = None
            ) -> tuple[OnlineLogisticRegression, list[tuple[str | None, float, int]]]:
    """Replay ``values`` as the learner does: (model, [(id, p, n_samples_seen) per unlabelled event])."""
    codec = config.make_codec() if config is not None else JsonCodec()
    model = OnlineLogisticRegression.from_config({**OnlineLogisticRegression().config(), **MODEL})
    scored, buffer = [], []
    for value in values:
        ev = codec.decode(value)
        if not isinstance(ev, Event):
            continue
        p = model.predict_proba_one(ev.x)[True]
        if ev.y is None:
            scored.append((ev.id, p, model.n_samples_seen))
        elif batch_size == 1:
            model.learn_one(ev.x, ev.y)
        else:
            buffer.append(ev)
            if len(buffer) == batch_size:
                model.learn_rows([e.x for e in buffer], [e.y for e in buffer])
                buffer.clear()
    return model, scored


def progressive_log_loss(values: list[bytes], batch_size: int) -> tuple[int, float]:
    """(labelled events learned, Σ of their log loss): each predicted by the model before its batch (the
    model it met on arrival), as the learner's progressive validation; events left in an incomplete batch
    are not learned, hence not counted."""
    codec = JsonCodec()
    model = OnlineLogisticRegression.from_config({**OnlineLogisticRegression().config(), **MODEL})
    events = [ev for ev in map(codec.decode, values) if isinstance(ev, Event) and ev.y is not None]
    n = len(events) - len(events) % batch_size
    loss = 0.0
    for i in range(0, n, batch_size):
        batch = events[i : i + batch_size]
        for ev in batch:
            p = model.predict_proba_one(ev.x)[True]
            loss -= math.log(max(p if ev.y else 1.0 - p, 1e-15))
        if batch_size == 1:
            model.learn_one(batch[0].x, batch[0].y)
        else:
            model.learn_rows([e.x for e in batch], [e.y for e in batch])
    return n, loss


def same_model(a: OnlineLogisticRegression, b: OnlineLogisticRegression) -> bool:
    return (
        a.n_samples_seen == b.n_samples_seen
        and a.features.keys == b.features.keys
        and a.coef.tobytes() == b.coef.tobytes()
        and a.intercept == b.intercept
    )


def produce(bootstrap: str, topic: str, values: list[bytes | None], *, partitions: int = 1,
            keys: list[bytes | None] | None = None) -> None:
    """Send ``values`` in order (round-robin over ``partitions``); wait for every acknowledgement."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    try:
        futures = [
            producer.send(topic, value=v, key=None if keys is None else keys[i], partition=i % partitions)
            for i, v in enumerate(values)
        ]
        producer.flush(timeout=60)
        for f in futures:
            f.get(timeout=60)
    finally:
        producer.close()


def committed(bootstrap: str, group: str) -> dict[TopicPartition, Any]:
    """The group's committed offsets. confluent-kafka 2.16 commits a metadata string with its C string's
    NUL (``strlen + 1`` in its conversion to librdkafka's list): one trailing NUL is dropped here."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        offsets = admin.list_group_offsets(group)[group]
    finally:
        admin.close()
    return {tp: om._replace(metadata=om.metadata.removesuffix("\x00")) if om.metadata else om
            for tp, om in offsets.items()}


def make_config(bootstrap: str, topic: str, ckpt: Path, **overrides: Any) -> LearnerConfig:
    settings: dict[str, Any] = dict(
        bootstrap_servers=bootstrap, topics=[topic], group_id=f"g-{topic}", checkpoint_dir=str(ckpt),
        consumer_settings=dict(CONSUMER_SETTINGS), model=MODEL, checkpoint_every_messages=500,
        checkpoint_every_seconds=30.0, poll_timeout_ms=100,
    )
    settings.update(overrides)
    return LearnerConfig(**settings)


class Running:
    """A :class:`Learner` running in a thread; ``stop()`` stops it and re-raises what ``run`` raised."""

    def __init__(self, learner: Learner) -> None:
        self.learner = learner
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="learner", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.learner.run()
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def stats(self) -> dict[str, Any]:
        if self.error is not None:
            raise AssertionError("the learner crashed") from self.error
        return self.learner.stats.snapshot()

    def wait_consumed(self, n: int, timeout: float = 60.0) -> dict[str, Any]:
        return wait_for(lambda: (s := self.stats())["consumed"] >= n and s, timeout, f"{n} messages consumed")

    def stop(self, timeout: float = 60.0) -> None:
        self.learner.stop()
        self.thread.join(timeout)
        if self.thread.is_alive():  # say where it is stuck
            import traceback

            frame = sys._current_frames().get(self.thread.ident)
            where = "".join(traceback.format_stack(frame)) if frame is not None else "?"
            raise AssertionError(f"the learner did not stop; it is at:\n{where}")
        if self.error is not None:
            raise AssertionError("the learner crashed") from self.error


@contextlib.contextmanager
def running(config: LearnerConfig) -> Iterator[Running]:
    r = Running(Learner(config))
    try:
        yield r
    finally:
        if r.thread.is_alive():
            r.stop()


def latest(ckpt: Path) -> Any:
    return DirectoryStore(ckpt, read_only=True).latest()  # a reader: a learner process may own the directory


# --------------------------------------------------------------------------------------------------
# Settings (no broker)


def test_config_errors_name_the_setting(tmp_path: Path) -> None:
    base = dict(bootstrap_servers="k:9092", topics=["t"], group_id="g", checkpoint_dir=str(tmp_path))
    cases = {
        "batch_size": {"batch_size": 0},
        "topics": {"topics": []},
        "group_id": {"group_id": ""},
        "checkpoint_every_seconds": {"checkpoint_every_seconds": 0},
        "dead_letter_topic": {"dead_letter_topic": "t"},
        "consumer_settings": {"consumer_settings": {"enable_auto_commit": True}},
        "client_settings": {"client_settings": {"no_such_setting": 1}},
        "model": {"model": {"optimizer": {"name": "Nope"}}},
        "auto_offset_reset": {"auto_offset_reset": "none"},
    }
    for name, bad in cases.items():
        with pytest.raises(ConfigError, match=f"^{name}"):
            LearnerConfig(**{**base, **bad})
    cfg = LearnerConfig(**base, client_settings={"security_protocol": "SSL", "acks": 1})
    assert cfg.consumer_kwargs()["security_protocol"] == "SSL" and "acks" not in cfg.consumer_kwargs()
    assert cfg.producer_kwargs()["acks"] == 1
    assert cfg.consumer_kwargs()["enable_auto_commit"] is False
    assert LearnerConfig.from_dict(cfg.to_dict()) == cfg


# --------------------------------------------------------------------------------------------------
# 1. Learn-through


@pytest.mark.kafka
@pytest.mark.parametrize("batch_size", [1, 8])
def test_learn_through_equals_offline(kafka_bootstrap: str, kafka_topic: Any, tmp_path: Path,
                                      kafka_client: str,
                                      batch_size: int) -> None:
    topic = kafka_topic(1)
    values = make_events(3003, seed=1)  # 3003 = 375 * 8 + 3: three events stay buffered with batch_size 8
    produce(kafka_bootstrap, topic, values)
    cfg = make_config(kafka_bootstrap, topic, tmp_path / "ckpt", batch_size=batch_size,
                      max_poll_records=300, kafka_client=kafka_client)
    with running(cfg) as r:
        r.wait_consumed(len(values))
        r.stop()
    expected, _ = offline(values, batch_size)
    learned = 3003 if batch_size == 1 else 3000
    assert expected.n_samples_seen == learned
    assert same_model(r.learner.model, expected)
    ckpt = latest(tmp_path / "ckpt")
    assert same_model(ckpt.model, expected)
    # the checkpoint's offset is the first event not in the model: the buffered ones are re-read later
    assert ckpt.metadata["offsets"] == {f"{topic}:0": learned}
    assert ckpt.metadata["learned"] == {f"{topic}:0": learned}
    offsets = committed(kafka_bootstrap, cfg.group_id)
    assert offsets[TopicPartition(topic, 0)].offset == learned
    assert offsets[TopicPartition(topic, 0)].metadata == ckpt.id
    snap = r.learner.stats.snapshot()
    assert snap["learned"] == learned and snap["consumed"] == 3003 and snap["rejected_total"] == 0
    assert snap["checkpoints_written"] >= 4 and snap["commit_failures"] == 0
    assert 0 < snap["rolling_log_loss"] < 0.69 and snap["rolling_accuracy"] > 0.7
    n, loss = progressive_log_loss(values, batch_size)
    assert snap["predicted_labelled"] == n == learned
    assert snap["log_loss_total"] == pytest.approx(loss, rel=1e-9)


@pytest.mark.kafka
def test_a_join_finished_after_poll_timed_out_is_not_lost(
    kafka_bootstrap: str, kafka_topic: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kafka-python 3.0.12 race (see ``Learner._unstick``): without metadata at the first assignment and
    with polls shorter than a JoinGroup, the leader's second join finishes after its poll() gave up and is
    never processed. The learner must still get its partition."""
    monkeypatch.setattr(KafkaConsumer, "partitions_for_topic", lambda self, topic: set())  # no warm-up
    topic = kafka_topic(1)
    values = make_events(300, seed=15)
    produce(kafka_bootstrap, topic, values)
    with running(make_config(kafka_bootstrap, topic, tmp_path / "ckpt", poll_timeout_ms=2)) as r:
        r.wait_consumed(len(values), timeout=30)
        r.stop()
    expected, _ = offline(values, 1)
    assert same_model(r.learner.model, expected)


# --------------------------------------------------------------------------------------------------
# 2. Crash (SIGKILL) and resume, and 3. graceful stop (SIGTERM): the service as a subprocess


def start_service(bootstrap: str, topic: str, group: str, ckpt: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [
        sys.executable, str(ROOT / "tests" / "learner_process.py"),
        "--bootstrap-servers", bootstrap, "--topic", topic,
        "--group", group, "--checkpoint-dir", str(ckpt), "--model", orjson.dumps(MODEL).decode(),
        "--consumer-setting", "session_timeout_ms=6000", "--consumer-setting", "heartbeat_interval_ms=500",
        "--consumer-setting", "fetch_max_wait_ms=100", "--log-level", "WARNING", *extra,
    ]  # fmt: skip
    return popen_logged(cmd, env=env)


def popen_logged(cmd: list[str], **kwargs: Any) -> subprocess.Popen:
    """Start ``cmd`` with its stderr written to an unlinked temporary file, and ``proc.stderr`` reading that
    file from its start. Not a pipe: a pipe nobody drains fills at 64 KiB of log lines and then blocks the
    child's next write, wedging a service whose test reads its stderr only once it has failed."""
    fd, path = tempfile.mkstemp(prefix="learner-stderr-", suffix=".log")
    try:
        with os.fdopen(fd, "wb") as err:
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err, **kwargs)
        proc.stderr = open(path, "rb")
    finally:
        os.unlink(path)  # (the open handles keep it; nothing is left behind)
    return proc


def read_status(path: Path) -> dict[str, Any]:
    """The service's ``--status-file`` (its stats), or {} before the first write."""
    with contextlib.suppress(FileNotFoundError, ValueError):
        return orjson.loads(path.read_bytes())
    return {}


def checkpointed(ckpt: Path) -> int:
    """n_samples_seen of the newest checkpoint (0 if none)."""
    c = latest(ckpt) if ckpt.exists() else None
    return 0 if c is None else c.model.n_samples_seen


@pytest.mark.kafka
def test_sigkill_and_restart_learns_every_event_exactly_once(
    kafka_bootstrap: str, kafka_topic: Any, tmp_path: Path, kafka_client: str
) -> None:
    topic = kafka_topic(1)
    batch_size, n = 5, 6002  # 6000 learned, 2 left buffered
    values = make_events(n, seed=2)
    produce(kafka_bootstrap, topic, values)
    ckpt, group = tmp_path / "ckpt", f"g-{topic}"
    # Static membership: a restarted member takes over its predecessor's assignment at once, instead of
    # waiting for the killed one's session to time out.
    extra = ("--batch-size", str(batch_size), "--checkpoint-every-messages", "250",
             "--max-poll-records", "50", "--group-instance-id", "crash-test")
    rng = random.Random(7)
    kill_points = sorted(rng.sample(range(300, 5700), 4))
    at_kill: list[int] = []
    for point in kill_points:
        proc = start_service(kafka_bootstrap, topic, group, ckpt, "--kafka-client", kafka_client, *extra)
        try:
            wait_for(lambda p=point, proc=proc: checkpointed(ckpt) >= p or proc.poll() is not None, 90,
                     f"a checkpoint past {point}")
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        at_kill.append(checkpointed(ckpt))
    assert min(at_kill) < 6000, f"every kill came too late to interrupt anything: {at_kill}"
    status = tmp_path / "status.json"
    proc = start_service(kafka_bootstrap, topic, group, ckpt, "--kafka-client", kafka_client, *extra,
                         "--status-file", str(status),
                         "--status-every", "0.05")
    try:  # until it has read everything (then SIGTERM: its handler is installed by then)
        wait_for(lambda: read_status(status).get("positions", {}).get(f"{topic}:0") == n
                 or proc.poll() is not None, 90, "all events read")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, proc.stderr.read().decode()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    expected, _ = offline(values, batch_size)
    final = latest(ckpt)
    assert final.model.n_samples_seen == 6000
    assert final.metadata["learned"] == {f"{topic}:0": 6000}
    assert final.metadata["offsets"] == {f"{topic}:0": 6000}
    assert same_model(final.model, expected)
    assert committed(kafka_bootstrap, group)[TopicPartition(topic, 0)].offset == 6000


@pytest.mark.kafka
def test_sigterm_checkpoints_commits_and_restart_learns_nothing_twice(
    kafka_bootstrap: str, kafka_topic: Any, tmp_path: Path, kafka_client: str
) -> None:
    topic = kafka_topic(1)
    batch_size = 3
    first, second = make_events(2000, seed=3), make_events(1000, seed=4)
    produce(kafka_bootstrap, topic, first)
    ckpt, group, status = tmp_path / "ckpt", f"g-{topic}", tmp_path / "status.json"
    # No periodic checkpoint: the only one is the one SIGTERM writes.
    proc = start_service(kafka_bootstrap, topic, group, ckpt, "--kafka-client", kafka_client,
                         "--batch-size", str(batch_size),
                         "--checkpoint-every-messages", "1000000", "--checkpoint-every-seconds", "3600",
                         "--status-file", str(status), "--status-every", "0.05")
    try:
        wait_for(lambda: read_status(status).get("consumed", 0) >= 2000 or proc.poll() is not None, 90,
                 "2000 messages consumed")
        assert checkpointed(ckpt) == 0 and not list(ckpt.glob("*.json"))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, proc.stderr.read().decode()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    stopped = latest(ckpt)
    assert stopped.metadata["reason"] == "stop"
    assert stopped.model.n_samples_seen == 1998  # 666 batches of 3; 2 buffered
    assert stopped.metadata["offsets"] == {f"{topic}:0": 1998}
    offset = committed(kafka_bootstrap, group)[TopicPartition(topic, 0)]
    assert (offset.offset, offset.metadata) == (1998, stopped.id)

    produce(kafka_bootstrap, topic, second)
    cfg = make_config(kafka_bootstrap, topic, ckpt, group_id=group, batch_size=batch_size,
                      kafka_client=kafka_client)
    with running(cfg) as r:
        r.wait_consumed(1002)  # the 2 buffered events are read again, then the 1000 new ones
        r.stop()
    expected, _ = offline(first + second, batch_size)
    assert expected.n_samples_seen == 3000
    assert same_model(r.learner.model, expected)
    assert r.learner.stats.snapshot()["learned"] == 3000 - 1998


# --------------------------------------------------------------------------------------------------
# 4. Poison messages


def poison_messages() -> dict[Reason, list[bytes | None]]:
    """At least one message of every rejection reason (with max_features=8, max_message_bytes=4000)."""
    return {
        Reason.TOMBSTONE: [None],
        Reason.OVERSIZE: [encode_event({"pad": "p" * 5000}, 1)],
        Reason.NOT_JSON: [b"{not json", b"\xff\xfe", b'{"x": {"a": NaN}, "y": 1}'],
        Reason.NOT_OBJECT: [b"[1, 2, 3]", b'"x"'],
        Reason.X_MISSING: [b'{"y": 1}'],
        Reason.X_TYPE: [b'{"x": 3, "y": 0}', b'{"x": null, "y": 1}'],
        Reason.BAD_VALUE: [b'{"x": {"a": null}, "y": 1}', b'{"x": {"a": 1e999}, "y": 0}',
                           b'{"x": {"a": [1]}, "y": 1}'],
        Reason.BAD_LABEL: [b'{"x": {"a": 1}, "y": 2}', b'{"x": {"a": 1}, "y": "1"}'],
        Reason.TOO_MANY_FEATURES: [encode_event({f"f{i}": 1.0 for i in range(9)}, 1)],
        Reason.BAD_ID: [b'{"x": {"a": 1}, "y": 1, "id": [1]}'],
    }


@pytest.mark.kafka
def test_poison_messages_go_to_the_dead_letter_topic_and_never_reach_the_model(
    kafka_bootstrap: str, kafka_topic: Any, tmp_path: Path, kafka_client: str
) -> None:
    topic, dlq = kafka_topic(1), kafka_topic(1)
    poison = poison_messages()
    assert set(poison) == set(Reason)
    good = make_events(600, seed=5)
    bad = [(reason, v) for reason, vs in poison.items() for v in vs]
    rng = random.Random(11)
    stream: list[tuple[Reason | None, bytes | None]] = [(None, v) for v in good]
    for item in bad:  # scatter the bad ones among the good ones
        stream.insert(rng.randrange(len(stream) + 1), item)
    values = [v for _, v in stream]
    keys = [f"k{i}".encode() for i in range(len(stream))]
    produce(kafka_bootstrap, topic, values, keys=keys)
    cfg = make_config(kafka_bootstrap, topic, tmp_path / "ckpt", batch_size=4, dead_letter_topic=dlq,
                      max_features=8, max_message_bytes=4000, kafka_client=kafka_client)
    with running(cfg) as r:
        r.wait_consumed(len(values))
        dead = read_topic(kafka_bootstrap, dlq, len(bad))
        # still running: more good events are learned
        more = make_events(100, seed=6)
        produce(kafka_bootstrap, topic, more)
        r.wait_consumed(len(values) + len(more))
        assert r.thread.is_alive() and r.stats()["running"]
        r.stop()
    assert len(dead) == len(bad)
    expected_by_offset = {i: (reason, values[i], keys[i]) for i, (reason, _) in enumerate(stream) if reason}
    for rec in dead:
        headers = dict(rec.headers)
        offset = int(headers["source_offset"])
        reason, value, key = expected_by_offset.pop(offset)
        assert headers["reason"].decode() == reason.value
        assert headers["source_topic"].decode() == topic and headers["source_partition"] == b"0"
        assert headers["detail"]
        assert rec.value == value and rec.key == key
    assert not expected_by_offset
    snap = r.learner.stats.snapshot()
    assert snap["rejected"] == {reason.value: len(vs) for reason, vs in poison.items()}
    assert snap["dead_lettered"] == len(bad)
    expected, _ = offline(good + more, 4)
    assert same_model(r.learner.model, expected)


# --------------------------------------------------------------------------------------------------
# 5. Rebalance: two members, one leaves midway


@pytest.mark.kafka
def test_two_members_and_a_graceful_leave_learn_every_event_once(
    kafka_bootstrap: str, kafka_topic: Any, tmp_path: Path, kafka_client: str,
) -> None:
    topic = kafka_topic(4)
    group = f"g-{topic}"
    phases = [make_events(1200, seed=s) for s in (7, 8, 9, 10)]
    total = sum(len(p) for p in phases)
    cfg_a = make_config(kafka_bootstrap, topic, tmp_path / "a", group_id=group, max_poll_records=100,
                        checkpoint_every_messages=200, kafka_client=kafka_client)
    cfg_b = make_config(kafka_bootstrap, topic, tmp_path / "b", group_id=group, max_poll_records=100,
                        checkpoint_every_messages=200, kafka_client=kafka_client)
    with running(cfg_a) as a:
        produce(kafka_bootstrap, topic, phases[0], partitions=4)
        a.wait_consumed(600)  # A alone, mid-stream
        with running(cfg_b) as b:
            wait_for(lambda: len(b.stats()["assigned"]) == 2 and len(a.stats()["assigned"]) == 2, 60,
                     "A and B sharing the partitions")
            produce(kafka_bootstrap, topic, phases[1], partitions=4)
            wait_for(lambda: a.stats()["consumed"] + b.stats()["consumed"] >= 2400, 60, "phase 2 consumed")
            produce(kafka_bootstrap, topic, phases[2], partitions=4)
            a.stop()  # A leaves while phase 3 is being consumed
            wait_for(lambda: len(b.stats()["assigned"]) == 4, 60, "B owning all partitions")
            produce(kafka_bootstrap, topic, phases[3], partitions=4)
            wait_for(lambda: sum(b.stats()["positions"].get(f"{topic}:{p}", 0) for p in range(4)) == total,
                     60, "B at the end of every partition")
            b.stop()
    ends = {f"{topic}:{p}": total // 4 for p in range(4)}
    assert a.learner.stats.snapshot()["commit_failures"] == 0  # incl. the commits of the revoke callbacks
    assert b.learner.stats.snapshot()["commit_failures"] == 0
    ckpt_a, ckpt_b = latest(tmp_path / "a"), latest(tmp_path / "b")
    learned_a, learned_b = Counter(ckpt_a.metadata["learned"]), Counter(ckpt_b.metadata["learned"])
    assert any(learned_a[k] and learned_b[k] for k in ends), "a partition moved from A to B mid-stream"
    assert dict(learned_a + learned_b) == ends  # per partition: every event learned exactly once
    assert ckpt_a.model.n_samples_seen + ckpt_b.model.n_samples_seen == total
    assert ckpt_b.metadata["offsets"] == ends
    offsets = committed(kafka_bootstrap, group)
    assert {f"{tp.topic}:{tp.partition}": o.offset for tp, o in offsets.items()} == ends


# --------------------------------------------------------------------------------------------------
# 6. The broker restarts mid-stream


@pytest.mark.kafka
def test_broker_restart_mid_stream(kafka_broker: Any, kafka_bootstrap: str, kafka_topic: Any,
                                   tmp_path: Path, kafka_client: str) -> None:
    topic, predictions = kafka_topic(1), kafka_topic(1)
    values = make_events(4000, seed=12, unlabelled_every=10)
    # A producer thread keeps the stream flowing across the restart; the learner consumes as they come.
    cfg = make_config(kafka_bootstrap, topic, tmp_path / "ckpt", batch_size=2, checkpoint_every_messages=400,
                      checkpoint_every_seconds=1.0, commit_timeout_ms=2000, predictions_topic=predictions,
                      max_poll_records=100, kafka_client=kafka_client)
    with running(cfg) as r:
        producing = KeepProducing(kafka_bootstrap, topic, values)
        r.wait_consumed(800)
        kafka_broker.restart()
        producing.join(180)
        r.wait_consumed(len(values), timeout=120)
        # commits that failed while the broker was away are made good by a later checkpoint's
        wait_for(lambda: committed(kafka_bootstrap, cfg.group_id)[TopicPartition(topic, 0)].offset == 4000,
                 60, "offset 4000 committed", every=0.2)
        r.stop()
    stream = [rec.value for rec in read_topic(kafka_bootstrap, topic, len(values))]
    assert stream == values  # the input itself has no duplicates or gaps
    expected, scored = offline(values, 2)
    assert expected.n_samples_seen == 3600
    assert same_model(r.learner.model, expected)
    final = latest(tmp_path / "ckpt")
    assert final.metadata["learned"] == {f"{topic}:0": 3600}
    records = read_topic(kafka_bootstrap, predictions, len(scored))
    published = {orjson.loads(rec.value)["id"] for rec in records}
    assert published == {i for i, _, _ in scored}  # at least once, across the outage


# --------------------------------------------------------------------------------------------------
# 7. Scoring: one prediction per unlabelled event, p as the model had it then


@pytest.mark.kafka
def test_predictions_of_unlabelled_events(kafka_bootstrap: str, kafka_topic: Any, tmp_path: Path,
                                          kafka_client: str) -> None:
    topic, predictions = kafka_topic(1), kafka_topic(1)
    values = make_events(2000, seed=14, unlabelled_every=4)
    produce(kafka_bootstrap, topic, values)
    cfg = make_config(kafka_bootstrap, topic, tmp_path / "ckpt", batch_size=4,
                      predictions_topic=predictions, checkpoint_every_messages=300, max_poll_records=100,
                      kafka_client=kafka_client)
    with running(cfg) as r:
        r.wait_consumed(len(values))
        r.stop()
    _, expected = offline(values, 4)
    assert len(expected) == 500
    records = read_topic(kafka_bootstrap, predictions, len(expected))
    got = [orjson.loads(rec.value) for rec in records]
    assert len(got) == len(expected)
    assert [(g["id"], g["p"], g["n_samples_seen"]) for g in got] == expected  # bitwise p (orjson round-trips)
    assert [g["offset"] for g in got] == [i for i in range(len(values)) if i % 4 == 3]
    assert all(g["topic"] == topic and g["partition"] == 0 for g in got)
    ids = [g["checkpoint"] for g in got]
    assert ids[0] is None and ids[-1] is not None and ids == sorted(ids, key=lambda i: i or "")
    assert r.learner.stats.snapshot()["scored"] == 500


def offline_predictions(values: list[bytes], batch_size: int) -> dict[int, tuple[str | None, float, int]]:
    """offset → (id, p, n_samples_seen of the predicting model) for every event the learner publishes with
    ``publish_labelled``: unlabelled ones when read, labelled ones when their mini-batch is learned, each
    predicted by the model it met on arrival (events of an incomplete last batch are not published)."""
    codec = JsonCodec()
    model = OnlineLogisticRegression.from_config({**OnlineLogisticRegression().config(), **MODEL})
    out, batch = {}, []
    for offset, value in enumerate(values):
        ev = codec.decode(value)
        if ev.y is None:
            out[offset] = (ev.id, model.predict_proba_one(ev.x)[True], model.n_samples_seen)
            continue
        batch.append((offset, ev))
        if len(batch) == batch_size:
            for o, e in batch:
                out[o] = (e.id, model.predict_proba_one(e.x)[True], model.n_samples_seen)
            model.learn_rows([e.x for _, e in batch], [e.y for _, e in batch])
            batch.clear()
    return out


@pytest.mark.kafka
@pytest.mark.parametrize("batch_size", [1, 4])
def test_predictions_of_labelled_events(kafka_bootstrap: str, kafka_topic: Any, tmp_path: Path,
                                        kafka_client: str,
                                        batch_size: int) -> None:
    topic, predictions = kafka_topic(1), kafka_topic(1)
    values = make_events(1003, seed=15, unlabelled_every=5)
    produce(kafka_bootstrap, topic, values)
    cfg = make_config(kafka_bootstrap, topic, tmp_path / "ckpt", batch_size=batch_size,
                      predictions_topic=predictions, publish_labelled=True, max_poll_records=100,
                      kafka_client=kafka_client)
    with running(cfg) as r:
        r.wait_consumed(len(values))
        r.stop()
    expected = offline_predictions(values, batch_size)
    assert len(expected) == (1003 if batch_size == 1 else 1003 - 3)  # 803 labelled: 3 left in a batch
    records = read_topic(kafka_bootstrap, predictions, len(expected))
    got = {g["offset"]: g for g in (orjson.loads(rec.value) for rec in records)}
    assert len(records) == len(got)  # one prediction per event
    assert {o: (g["id"], g["p"], g["n_samples_seen"]) for o, g in got.items()} == expected  # bitwise p
    assert all(("y" in g) == (o % 5 != 4) for o, g in got.items())


# --------------------------------------------------------------------------------------------------
# The client backends (--kafka-client): the same contract without a broker too


def test_confluent_settings_are_the_kafka_python_ones_mapped(tmp_path: Path) -> None:
    from consumers.confluent import consumer_conf, producer_conf

    base = dict(bootstrap_servers="k1:9092,k2:9092", topics=["t"], group_id="g", checkpoint_dir=str(tmp_path),
                kafka_client="confluent")
    secure = {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
              "sasl_plain_username": "u", "sasl_plain_password": "p", "ssl_cafile": "/ca.pem",
              "ssl_certfile": "/c.pem", "ssl_keyfile": "/k.pem", "ssl_password": "kp",
              "ssl_check_hostname": True, "client_id": "lr"}
    cfg = LearnerConfig(**base, client_settings=secure, consumer_settings={"session_timeout_ms": 7000},
                        producer_settings={"acks": -1, "linger_ms": 5})
    expected = {"security.protocol": "SASL_SSL", "sasl.mechanisms": "SCRAM-SHA-512", "sasl.username": "u",
                "sasl.password": "p", "ssl.ca.location": "/ca.pem", "ssl.certificate.location": "/c.pem",
                "ssl.key.location": "/k.pem", "ssl.key.password": "kp",
                "ssl.endpoint.identification.algorithm": "https", "client.id": "lr",
                "bootstrap.servers": "k1:9092,k2:9092"}
    consumer, producer = consumer_conf(cfg), producer_conf(cfg)
    assert expected.items() <= consumer.items() and expected.items() <= producer.items()
    assert consumer["group.id"] == "g" and consumer["session.timeout.ms"] == 7000
    # checkpoint-then-commit: nothing is committed or stored behind the learner's back
    assert consumer["enable.auto.commit"] is False and consumer["enable.auto.offset.store"] is False
    assert producer["acks"] == "all" and producer["linger.ms"] == 5 and "session.timeout.ms" not in producer
    assert producer["allow.auto.create.topics"] is False
    no_check = LearnerConfig(**base, client_settings={"security_protocol": "SSL",
                                                      "ssl_check_hostname": False})
    assert consumer_conf(no_check)["ssl.endpoint.identification.algorithm"] == "none"
    # a kafka-python setting without a librdkafka equivalent is refused, naming it and where it was given
    with pytest.raises(ConfigError, match="^consumer_settings: 'exclude_internal_topics' has no confluent"):
        LearnerConfig(**base, consumer_settings={"exclude_internal_topics": False})
    with pytest.raises(ConfigError, match="^kafka_client: must be one of kafka-python, confluent"):
        LearnerConfig(**{**base, "kafka_client": "librdkafka"})


def _free_address() -> str:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def test_no_broker_same_exit_status_and_message_on_both_backends(tmp_path: Path) -> None:
    address = _free_address()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    outcomes = {}
    for client in ("kafka-python", "confluent"):
        cmd = [sys.executable, "-m", "consumers", "consume", "--metrics-port", "0", "--bootstrap-servers",
               address, "--topics", "events", "--checkpoint-dir", str(tmp_path / client), "--connect-timeout",
               "1.5", "--kafka-client", client]
        t0 = time.monotonic()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, timeout=60)
        err = proc.stderr.decode()
        lines = [line for line in err.splitlines() if "cannot reach the Kafka brokers" in line]
        assert lines, err[-2000:]
        # the same sentence whatever the client; only the client's own reason in parentheses differs
        outcomes[client] = (proc.returncode, lines[-1].split(" (")[0], "--connect-timeout" in lines[-1])
        assert time.monotonic() - t0 < 1.5 + 15
    assert outcomes["kafka-python"] == outcomes["confluent"]
    assert outcomes["confluent"][0] == 1 and outcomes["confluent"][2]
    assert f"at {address} within 1.5 s" in outcomes["confluent"][1]


def test_a_stop_request_is_heard_while_connecting(tmp_path: Path, kafka_client: str) -> None:
    cfg = LearnerConfig(bootstrap_servers=_free_address(), topics=["t"], group_id="g",
                        checkpoint_dir=str(tmp_path / "c"), connect_timeout=60, kafka_client=kafka_client)
    learner, stop = Learner(cfg), threading.Event()
    done = threading.Event()
    thread = threading.Thread(target=lambda: (learner.run(stop_event=stop), done.set()), daemon=True)
    thread.start()
    wait_for(lambda: learner.stats.snapshot()["connection_failures"] >= 1, 30, "a failed connection attempt")
    stop.set()
    t0 = time.monotonic()
    assert done.wait(30), "the learner did not stop"
    assert time.monotonic() - t0 < 3.0, "the stop request waited for the connect timeout"
