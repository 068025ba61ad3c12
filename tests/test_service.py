"""The learner service against what the outside can do: hostile values, outputs that cannot be sent, missing
topics, no broker, SIGTERM in every state, SIGKILL and a restart with default settings.

Real broker (fixtures of conftest.py), real processes for exit codes and signals; every wait polls a condition
with a deadline. The oracles: the offline replay of the same stream (test_consumer.offline), the bytes and
sha256 of the original message, the group's committed offsets.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka import KafkaAdminClient, TopicPartition
from polling import read_topic, wait_for
from test_consumer import (
    ROOT,
    committed,
    latest,
    make_config,
    make_events,
    offline,
    popen_logged,
    produce,
    read_status,
    running,
    same_model,
)

from consumers.outputs import fit_dead_letter


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def consume(*args: str) -> subprocess.Popen:
    """``stream-logreg consume ARGS`` as a process (stdout+stderr piped, no metrics server)."""
    cmd = [sys.executable, "-m", "consumers", "consume", "--metrics-port", "0", *args]
    return subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def free_port() -> int:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------------
# No broker: bounded connect, non-zero exit; SIGTERM heard while connecting


def test_no_broker_exits_1_within_the_connect_timeout(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    proc = consume("--bootstrap-servers", address, "--topics", "events", "--checkpoint-dir",
                   str(tmp_path / "c"), "--connect-timeout", "2")
    out, _ = proc.communicate(timeout=30)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 1, out.decode()
    assert address in out.decode() and "--connect-timeout" in out.decode()
    assert elapsed < 2 + 10  # the timeout plus start-up, far below kafka-python's own 30 s bootstrap


def test_sigterm_while_connecting_is_honoured_within_2s(tmp_path: Path) -> None:
    log_file = tmp_path / "out.log"
    with log_file.open("wb") as out:
        cmd = [sys.executable, "-m", "consumers", "consume", "--metrics-port", "0", "--bootstrap-servers",
               f"127.0.0.1:{free_port()}", "--topics", "events", "--checkpoint-dir", str(tmp_path / "c")]
        proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: b"cannot connect" in log_file.read_bytes() or proc.poll() is not None, 30,
                 "a failed connection attempt")
        assert proc.poll() is None, log_file.read_text()
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        rc = proc.wait(10)
        waited = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 0, log_file.read_text()
    assert waited < 2.5, f"SIGTERM took {waited:.1f}s while connecting"


# --------------------------------------------------------------------------------------------------
# Output topics checked at start


@pytest.mark.kafka
def test_a_missing_output_topic_exits_2_unless_create_topics(kafka_bootstrap: str, kafka_topic: Any,
                                                             tmp_path: Path) -> None:
    topic = kafka_topic(2)
    produce(kafka_bootstrap, topic, make_events(40, seed=30), partitions=2)
    missing = f"{topic}.predictions"
    args = ("--bootstrap-servers", kafka_bootstrap, "--topics", topic, "--group-id", f"g-{topic}",
            "--checkpoint-dir", str(tmp_path / "c"), "--predictions-topic", missing)
    proc = consume(*args)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2, out.decode()
    assert missing in out.decode() and "--create-topics" in out.decode()

    proc = consume(*args, "--create-topics", "--max-idle-seconds", "1", "--session-timeout-ms", "6000")
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 0, out.decode()[-3000:]
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        (desc,) = admin.describe_topics([missing])
        assert len(desc["partitions"]) == 2  # as many as the input topic
    finally:
        admin.delete_topics([missing], raise_errors=False)
        admin.close()
    assert latest(tmp_path / "c").model.n_samples_seen == 40


# --------------------------------------------------------------------------------------------------
# Hostile messages mid-stream: a huge finite value, a dead letter over the producer's request size


@pytest.mark.kafka
def test_huge_value_and_oversize_dead_letter_mid_stream(kafka_bootstrap: str, kafka_topic: Any,
                                                        tmp_path: Path, caplog: pytest.LogCaptureFixture
                                                        ) -> None:
    caplog.set_level(logging.INFO, logger="consumers")
    topic, dlq = kafka_topic(1), kafka_topic(1)
    good = make_events(1200, seed=31)
    huge = orjson.dumps({"x": {"a": 1e300, "b": 1.0}, "y": 1, "id": "huge"})
    oversize = b"\x00not json" + os.urandom(200_000)  # rejected (not JSON), its copy exceeds 100 kB
    values = good[:400] + [huge] + good[400:800] + [oversize] + good[800:]
    produce(kafka_bootstrap, topic, values)
    cfg = make_config(kafka_bootstrap, topic, tmp_path / "ckpt", dead_letter_topic=dlq,
                      checkpoint_every_messages=200, checkpoint_every_seconds=0.5, max_poll_records=100,
                      progress_every_seconds=0.2,
                      producer_settings={"max_request_size": 100_000})
    with running(cfg) as r:
        r.wait_consumed(len(values))
        wait_for(lambda: getattr(committed(kafka_bootstrap, cfg.group_id).get(TopicPartition(topic, 0)),
                                 "offset", None) == len(values), 60, "every offset committed", every=0.2)
        snap = r.stats()
        r.stop()
    assert snap["checkpoints_written"] >= len(values) // 200
    dead = read_topic(kafka_bootstrap, dlq, 1 if snap["rejected"]["bad_value"] == 0 else 2)
    by_offset = {int(dict(rec.headers)["source_offset"]): rec for rec in dead}
    big = by_offset[801]
    headers = dict(big.headers)
    assert headers["truncated"] == b"true"
    assert headers["original_size"] == str(len(oversize)).encode()
    assert headers["original_sha256"] == hashlib.sha256(oversize).hexdigest().encode()
    assert 0 < len(big.value) < 100_000 and oversize.startswith(big.value)
    model = r.learner.model
    assert all(map(lambda v: v == v and abs(v) != float("inf"), model.coef.tolist()))
    if snap["rejected"]["bad_value"]:  # the model refused the huge value: the others are learned exactly
        assert 400 in by_offset and dict(by_offset[400].headers)["reason"] == b"bad_value"
        expected, _ = offline(good, 1)
        assert same_model(model, expected)
    else:  # accepted on this branch: the loop and the checkpoints went on
        assert model.n_samples_seen == len(good) + 1
    assert latest(tmp_path / "ckpt").metadata["offsets"] == {f"{topic}:0": len(values)}
    assert snap["output_healthy"]
    # operator logs: the rejection carries where it came from as fields; progress lines say events/s and lag
    (reject,) = [rec for rec in caplog.records if getattr(rec, "offset", None) == 801]
    assert reject.topic == topic and reject.partition == 0 and reject.reason == "not_json"
    progress = [rec for rec in caplog.records if rec.getMessage().startswith("progress:")]
    assert progress and all(hasattr(rec, "events_per_second") and hasattr(rec, "lag") for rec in progress)
    assert max(rec.learned for rec in progress) > 0
    assert not [rec for rec in caplog.records if rec.getMessage().startswith("revoked []")]


def test_a_dead_letter_is_cut_to_the_request_size() -> None:
    """The truncation arithmetic (no broker): what is sent fits the request size, headers included."""
    value, key = bytes(range(256)) * 100, b"k" * 100
    headers = [("reason", b"oversize"), ("source_offset", b"7")]
    assert fit_dead_letter(value, key, headers, 30_000) == (value, headers)  # fits: unchanged
    cut, cut_headers = fit_dead_letter(value, key, headers, 10_000)
    size = len(cut) + len(key) + sum(len(k) + len(v) for k, v in cut_headers)
    assert size <= 10_000 - 512 and value.startswith(cut) and len(cut) > 9000
    h = dict(cut_headers)
    assert h["original_size"] == b"25600" and h["truncated"] == b"true" and h["source_offset"] == b"7"
    assert h["original_sha256"] == hashlib.sha256(value).hexdigest().encode()


# --------------------------------------------------------------------------------------------------
# An output topic deleted mid-run


@pytest.mark.kafka
def test_an_output_topic_deleted_mid_run_is_bounded_and_counted(kafka_bootstrap: str, kafka_topic: Any,
                                                                tmp_path: Path) -> None:
    topic, predictions = kafka_topic(1), kafka_topic(1)
    first = make_events(300, seed=32, unlabelled_every=2)
    second = make_events(300, seed=33, unlabelled_every=2)
    produce(kafka_bootstrap, topic, first)
    cfg = make_config(kafka_bootstrap, topic, tmp_path / "ckpt", predictions_topic=predictions,
                      checkpoint_every_messages=50, checkpoint_every_seconds=0.5, commit_timeout_ms=2000,
                      max_poll_records=50)
    with running(cfg) as r:
        r.wait_consumed(len(first))
        wait_for(lambda: read_status_ok(r), 30, "the first predictions acknowledged")
        admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        try:
            admin.delete_topics([predictions])
            wait_for(lambda: predictions not in admin.list_topics(), 30, "the topic deleted")
        finally:
            admin.close()
        written = r.stats()["checkpoints_written"]
        produce(kafka_bootstrap, topic, second)
        r.wait_consumed(len(first) + len(second))
        snap = wait_for(lambda: (s := r.stats())["output_failures"].get(predictions) and s, 60,
                        "the failure counted")
        assert not snap["output_healthy"]
        # checkpoints and commits go on, to the end of the stream
        n = len(first) + len(second)
        wait_for(lambda: committed(kafka_bootstrap, cfg.group_id)[TopicPartition(topic, 0)].offset == n, 60,
                 "every offset committed", every=0.2)
        assert r.stats()["checkpoints_written"] > written
        t0 = time.monotonic()
        r.learner.stop()
        r.thread.join(10)
        stopped_in = time.monotonic() - t0
        assert not r.thread.is_alive()
    assert stopped_in < 5, f"stop took {stopped_in:.1f}s"
    snap = r.learner.stats.snapshot()
    assert snap["output_dropped"].get(predictions, 0) >= 1
    expected, _ = offline(first + second, 1)
    assert same_model(r.learner.model, expected)


def committed_offset(bootstrap: str, group: str, topic: str) -> int | None:
    """The group's committed offset of ``topic``'s partition 0 (None before the first commit)."""
    from kafka.errors import KafkaError

    try:
        found = committed(bootstrap, group).get(TopicPartition(topic, 0))
    except KafkaError:  # no coordinator for the group yet
        return None
    return None if found is None else found.offset


def refuse_sends(monkeypatch: pytest.MonkeyPatch, topic: str, first: int, last: float) -> list[int]:
    """Make kafka-python's producer refuse its sends number ``first`` to ``last`` to ``topic`` as it does when
    the topic's metadata does not come within ``max_block_ms`` (the brokers away, e.g. restarting); returns
    the numbers of the refused sends."""
    from kafka import KafkaProducer
    from kafka.errors import KafkaTimeoutError

    send, seen, refused = KafkaProducer.send, [0], []

    def patched(self: Any, t: str, *args: Any, **kwargs: Any) -> Any:
        if t == topic:
            seen[0] += 1
            if first <= seen[0] <= last:
                refused.append(seen[0])
                raise KafkaTimeoutError("Failed to update metadata after 1.0 secs.")
        return send(self, t, *args, **kwargs)

    monkeypatch.setattr(KafkaProducer, "send", patched)
    return refused


@pytest.mark.kafka
def test_records_without_metadata_for_a_while_are_held_in_order_and_none_is_lost(
    kafka_bootstrap: str, kafka_topic: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A send without metadata (a broker restart) holds its topic's records; each checkpoint's flush tries
    again (the checkpoint waits meanwhile) and, once the topic answers, they go out in order."""
    topic, predictions = kafka_topic(1), kafka_topic(1)
    values = make_events(1200, seed=34, unlabelled_every=3)
    produce(kafka_bootstrap, topic, values)
    refused = refuse_sends(monkeypatch, predictions, 150, 153)  # the send, then three flushes' tries
    cfg = make_config(kafka_bootstrap, topic, tmp_path / "ckpt", predictions_topic=predictions,
                      checkpoint_every_messages=100, checkpoint_every_seconds=0.5, max_poll_records=50)
    _, scored = offline(values, 1)
    with running(cfg) as r:
        wait_for(lambda: committed_offset(kafka_bootstrap, cfg.group_id, topic) == len(values), 60,
                 "every offset committed", every=0.2)
        snap = r.stats()
    assert refused == [150, 151, 152, 153]
    assert snap["output_dropped"] == {} and snap["output_healthy"] and snap["checkpoint_failures"] >= 3
    records = read_topic(kafka_bootstrap, predictions, len(scored))
    published = [orjson.loads(rec.value)["id"] for rec in records]
    assert published == [i for i, _, _ in scored]  # each once, in order


@pytest.mark.kafka
def test_records_held_for_too_long_are_dropped_and_counted(
    kafka_bootstrap: str, kafka_topic: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A topic without metadata for longer than the hold is unhealthy: its records are dropped and counted,
    and the checkpoints and commits go on (the same bound as a deleted topic)."""
    from consumers.outputs import Outputs

    monkeypatch.setattr(Outputs, "hold_seconds", 1.0)
    topic, predictions = kafka_topic(1), kafka_topic(1)
    values = make_events(600, seed=35, unlabelled_every=3)
    produce(kafka_bootstrap, topic, values)
    refused = refuse_sends(monkeypatch, predictions, 50, float("inf"))
    cfg = make_config(kafka_bootstrap, topic, tmp_path / "ckpt", predictions_topic=predictions,
                      checkpoint_every_messages=100, checkpoint_every_seconds=0.5, max_poll_records=50)
    with running(cfg) as r:
        wait_for(lambda: committed_offset(kafka_bootstrap, cfg.group_id, topic) == len(values), 60,
                 "every offset committed", every=0.2)
        snap = r.stats()
    assert refused and not snap["output_healthy"]
    assert snap["output_dropped"][predictions] == 200 - 49  # all but the 49 sent before the first refusal
    assert len(read_topic(kafka_bootstrap, predictions, 200, timeout=2)) == 49


def read_status_ok(r: Any) -> bool:
    s = r.stats()
    return s["predictions_published"] >= 150 and s["checkpoints_written"] >= 2


# --------------------------------------------------------------------------------------------------
# SIGKILL and restart with default settings: the partitions come back before the session timeout


@pytest.mark.kafka
def test_sigkill_and_restart_with_defaults_gets_the_partitions_back_fast(
    kafka_bootstrap: str, kafka_topic: Any, tmp_path: Path
) -> None:
    topic = kafka_topic(2)
    produce(kafka_bootstrap, topic, make_events(200, seed=34), partitions=2)
    ckpt, status = tmp_path / "ckpt", tmp_path / "status.json"

    def start() -> subprocess.Popen:
        cmd = [sys.executable, str(ROOT / "tests" / "learner_process.py"), "--bootstrap-servers",
               kafka_bootstrap, "--topic", topic, "--group", f"g-{topic}", "--checkpoint-dir", str(ckpt),
               "--log-level", "WARNING", "--status-file", str(status), "--status-every", "0.1",
               "--checkpoint-every-messages", "50"]
        return popen_logged(cmd, env=_env())

    def assigned() -> bool:
        return len(read_status(status).get("assigned", [])) == 2

    proc = start()
    try:
        wait_for(lambda: (assigned() and read_status(status)["consumed"] == 200) or proc.poll() is not None,
                 90, "the first run assigned and caught up")
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    status.unlink()
    session_timeout = 45.0  # kafka-python's default session_timeout_ms, which the learner leaves alone
    proc = start()
    t0 = time.monotonic()
    try:
        wait_for(lambda: assigned() or proc.poll() is not None, session_timeout / 2, "the partitions back")
        recovered = time.monotonic() - t0
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        print(f"partitions back {recovered:.1f}s after the restart (session timeout {session_timeout:.0f}s)")
        produce(kafka_bootstrap, topic, make_events(100, seed=35), partitions=2)
        wait_for(lambda: read_status(status).get("n_samples_seen") == 300, 30, "every event learned")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert latest(ckpt).model.n_samples_seen == 300


# --------------------------------------------------------------------------------------------------
# A checkpoint offset beyond the end of the log (the topic was re-created)


@pytest.mark.kafka
def test_a_recreated_topic_is_a_counted_offset_reset(kafka_bootstrap: str, kafka_topic: Any,
                                                     tmp_path: Path) -> None:
    topic = kafka_topic(1)
    before, after = make_events(300, seed=36), make_events(100, seed=37)
    produce(kafka_bootstrap, topic, before)
    cfg = make_config(kafka_bootstrap, topic, tmp_path / "ckpt", group_id=f"g1-{topic}")
    with running(cfg) as r:
        r.wait_consumed(len(before))
        r.stop()
    assert latest(tmp_path / "ckpt").metadata["offsets"] == {f"{topic}:0": 300}
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.delete_topics([topic])
        wait_for(lambda: topic not in admin.list_topics(), 30, "the topic deleted", every=0.2)

        def recreated() -> bool:
            try:
                admin.create_topics({topic: {"num_partitions": 1, "replication_factor": 1}})
            except Exception:  # still being deleted
                return False
            return True

        wait_for(recreated, 30, "the topic re-created", every=0.2)
    finally:
        admin.close()
    produce(kafka_bootstrap, topic, after)
    # a new group: the old one's committed offset is gone with nothing to compare; the checkpoint says 300
    with running(make_config(kafka_bootstrap, topic, tmp_path / "ckpt", group_id=f"g2-{topic}")) as r:
        r.wait_consumed(len(after))
        r.stop()
    snap = r.learner.stats.snapshot()
    assert snap["offset_resets"] == 1
    assert r.learner.model.n_samples_seen == len(before) + len(after)
    assert latest(tmp_path / "ckpt").metadata["offsets"] == {f"{topic}:0": len(after)}


# --------------------------------------------------------------------------------------------------
# Two learners with one instance id: the fenced one stops (instead of learning the other's events twice)


@pytest.mark.kafka
def test_a_fenced_member_stops_and_leaves_the_other_alone(kafka_bootstrap: str, kafka_topic: Any,
                                                          tmp_path: Path) -> None:
    from test_consumer import Running

    from consumers.learner import Fenced, Learner

    topic = kafka_topic(1)
    produce(kafka_bootstrap, topic, make_events(100, seed=38))

    def config(name: str) -> Any:
        return make_config(kafka_bootstrap, topic, tmp_path / name, group_instance_id="same",
                           checkpoint_every_seconds=0.5)

    first = Running(Learner(config("a")))
    first.wait_consumed(100)
    second = Running(Learner(config("b")))
    wait_for(lambda: not first.thread.is_alive(), 30, "the fenced learner stopped")
    assert isinstance(first.error, Fenced) and "--group-instance-id same" in str(first.error)
    # Still a member: the fenced one did not remove it on its way out. (Where the second one started
    # depends on whether the first had committed before it joined, so count from now.)
    before = second.learner.stats.snapshot()["consumed"]
    produce(kafka_bootstrap, topic, make_events(50, seed=39))
    second.wait_consumed(before + 50)
    second.stop()
    assert second.learner.stats.snapshot()["commit_failures"] == 0


def test_suppressed_warnings_are_counted_in_the_end(caplog: pytest.LogCaptureFixture) -> None:
    from consumers.learner import _RateLimitedLog

    caplog.set_level(logging.INFO, logger="consumers")
    ratelog = _RateLimitedLog(every=3600)
    for i in range(5):
        ratelog("reject:not_json", logging.WARNING, "rejected (%s)", "not_json", extra={"offset": i})
    assert [rec.offset for rec in caplog.records] == [0]  # the first one, then silence
    ratelog.flush()
    assert caplog.records[-1].getMessage() == "4 more like reject:not_json suppressed"
    assert caplog.records[-1].suppressed == 4
    ratelog.flush()
    assert len(caplog.records) == 2  # nothing left to tell
