"""The Kafka state store against a real broker: exact round trips (also of a model larger than a Kafka
message), torn writes by a SIGKILLed writer, corrupt and foreign records, fencing of a second writer,
compaction, the topic's configuration, and outputs that share a checkpoint's transaction.

Records "written by hand" below follow the layout in ``consumers/state/kafka_store.py``'s docstring, so the
documented layout is checked too.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource
from river import datasets

from consumers.state.kafka_store import (
    KafkaStore,
    StateFenced,
    StateTopicError,
    state_partition,
)
from stream_logreg import OnlineLogisticRegression, optim
from stream_logreg.checkpoints import CheckpointError, CheckpointMismatch, CheckpointStore

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).resolve().parents[1]
PHISHING = list(datasets.Phishing())


def trained(
    n: int, n_bits: int | None = None, optimizer: optim.Optimizer | None = None
) -> OnlineLogisticRegression:
    """A model that learned the first ``n`` Phishing rows (a string feature too, for the vocabulary)."""
    model = OnlineLogisticRegression(optimizer=optimizer or optim.FTRL(alpha=0.1, l1=0.01), n_bits=n_bits)
    for x, y in PHISHING[:n]:
        model.learn_one({**x, "bucket": f"b{int(x['long_url'] * 4)}"}, y)
    return model


def same_model(a: OnlineLogisticRegression, b: OnlineLogisticRegression) -> None:
    """The complete state of a and b is bitwise the same."""
    (arrays_a, meta_a), (arrays_b, meta_b) = a.state(), b.state()
    assert sorted(arrays_a) == sorted(arrays_b)
    for name in arrays_a:
        assert np.asarray(arrays_a[name]).tobytes() == np.asarray(arrays_b[name]).tobytes(), name
    assert meta_a == meta_b


@pytest.fixture
def state_topic(kafka_topic) -> str:
    """A fresh compacted topic that holds chunks of the default size."""
    return kafka_topic(config={"cleanup.policy": "compact"})


@pytest.fixture
def stores(kafka_bootstrap: str) -> Iterator:
    """Factory ``stores(topic, key="member-1", **settings) -> KafkaStore``; all are closed after the test."""
    made: list[KafkaStore] = []

    def make(topic: str, key: str = "member-1", **settings) -> KafkaStore:
        store = KafkaStore(kafka_bootstrap, key, topic=topic, **{"timeout": 60.0, **settings})
        made.append(store)
        return store

    yield make
    for store in made:
        try:
            store.close()
        except Exception:  # cleanup only
            pass


def raw_records(bootstrap: str, topic: str, isolation: str = "read_committed") -> list:
    """Every record of partition 0 of ``topic`` (read to its end offset)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level=isolation)
    tp = TopicPartition(topic, 0)
    try:
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        end = consumer.end_offsets([tp], timeout_ms=30000)[tp]
        out = []
        for _ in range(600):
            if consumer.position(tp) >= end:
                return out
            for batch in consumer.poll(timeout_ms=500).values():
                out += [r for r in batch if r.offset < end]
        raise AssertionError(f"could not read {topic} to offset {end}")
    finally:
        consumer.close()


def plain_producer(bootstrap: str) -> KafkaProducer:
    return KafkaProducer(bootstrap_servers=bootstrap, max_block_ms=30000)


def test_round_trip_bitwise_with_metadata(stores, state_topic) -> None:
    model = trained(300, optimizer=optim.AdaGrad(lr=0.1))
    writer = stores(state_topic)
    assert isinstance(writer, CheckpointStore)
    assert writer.latest() is None and writer.list() == []
    metadata = {"offsets": {"payments:0": 300, "payments:1": 17}, "note": "é"}
    cid = writer.save(model, metadata)
    writer.close()

    checkpoint = stores(state_topic).latest(expect_config=model.config())  # another process, no disk
    assert checkpoint is not None and checkpoint.id == cid and checkpoint.metadata == metadata
    same_model(checkpoint.model, model)
    x = {**PHISHING[400][0], "bucket": "b1"}
    assert checkpoint.model.predict_proba_one(x) == model.predict_proba_one(x)


def densified(model: OnlineLogisticRegression, seed: int = 0) -> OnlineLogisticRegression:
    """``model`` with every array entry non-zero (checkpoints store sparse arrays sparsely)."""
    rng = np.random.default_rng(seed)
    arrays, meta = model.state()
    dense = {k: rng.uniform(0.1, 1.0, v.shape) if k.endswith(".n") else rng.normal(size=v.shape)
             for k, v in arrays.items()}
    return OnlineLogisticRegression.from_state(dense, meta)


def test_million_hashed_weights_with_ftrl_state_round_trip(stores, kafka_topic, kafka_bootstrap) -> None:
    model = densified(trained(200, n_bits=20))
    assert model.coef.size >= 10**6
    topic = kafka_topic(config={"cleanup.policy": "compact"})  # the broker's default message limit
    cid = stores(topic).save(model, {"offsets": {"t:0": 200}})

    checkpoint = stores(topic).latest(expect_config=model.config())
    assert checkpoint is not None and checkpoint.id == cid
    same_model(checkpoint.model, model)
    chunks = [r for r in raw_records(kafka_bootstrap, topic) if b"/chunk/" in r.key and r.value is not None]
    assert len(chunks) > 40 and max(len(r.value) for r in chunks) <= 512 * 1024
    assert sum(len(r.value) for r in chunks) > 24 * 10**6  # w and FTRL's z, n: 3 × 8 MB


TORN_WRITER = textwrap.dedent(
    """
    import sys, time
    from consumers.state.kafka_store import KafkaStore
    from stream_logreg import OnlineLogisticRegression, optim

    bootstrap, topic = sys.argv[1:3]
    store = KafkaStore(bootstrap, "member-1", topic=topic, chunk_bytes=4096)
    model = OnlineLogisticRegression(optimizer=optim.FTRL(), n_bits=18)
    model.learn_one({"a": 1.0}, True)
    print("saved", store.save(model, {"n": 1}), flush=True)
    # Checkpoints are sparse: enough features in use for many chunks.
    model.learn_one({f"f{i}": 1.0 for i in range(2000)}, False)
    send, sent = store._send, []

    def send_then_hang(name, value):  # the SIGKILL lands after a few chunks are on the broker
        send(name, value)
        sent.append(name)
        if len(sent) == 3:
            store.producer.flush(timeout=30)
            print("torn", name, flush=True)
            time.sleep(600)

    store._send = send_then_hang
    with store.transaction():
        store.write(model, {"n": 2})
    """
)


def test_writer_killed_mid_checkpoint_leaves_previous_one_and_torn_one_invisible(
    stores, state_topic, kafka_bootstrap
) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", TORN_WRITER, kafka_bootstrap, state_topic],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, text=True,
    )
    try:
        saved = child.stdout.readline().split()
        torn = child.stdout.readline().split()
        assert saved[:1] == ["saved"] and torn[:1] == ["torn"], (saved, torn)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    torn_id = torn[1].split("/")[1]
    assert torn_id > saved[1]
    everything = raw_records(kafka_bootstrap, state_topic, "read_uncommitted")
    torn_chunks = [r for r in everything if r.key.decode().startswith(f"member-1/{torn_id}/chunk/")]
    assert len(torn_chunks) == 3  # the write really was torn

    store = stores(state_topic)  # the replacement: fences the dead writer, aborting its transaction
    checkpoint = store.latest()
    assert checkpoint is not None and checkpoint.id == saved[1] and checkpoint.metadata == {"n": 1}
    assert store.skipped == [] and [info.id for info in store.list()] == [saved[1]]
    committed = raw_records(kafka_bootstrap, state_topic)
    assert not any(torn_id in r.key.decode() for r in committed)
    assert store.save(checkpoint.model, {"n": 3}) > torn_id  # and it writes on


def test_corrupt_chunk_and_foreign_commit_are_skipped_with_reasons(
    stores, state_topic, kafka_bootstrap
) -> None:
    store = stores(state_topic, chunk_bytes=4096)
    older, newer = trained(100), trained(200)
    first = store.save(older, {"n": 100})
    second = store.save(newer, {"n": 200})
    producer = plain_producer(kafka_bootstrap)
    producer.send(state_topic, key=f"member-1/{second}/chunk/0".encode(), value=b"\0" * 4096, partition=0)
    bogus = f"{int(second) + 1:020d}"
    producer.send(state_topic, key=f"member-1/{bogus}/commit".encode(), value=b"{not json", partition=0)
    producer.flush(timeout=30)
    producer.close()

    checkpoint = store.latest()
    assert checkpoint is not None and checkpoint.id == first
    same_model(checkpoint.model, older)
    reasons = dict(store.skipped)
    assert list(reasons) == [bogus, second]
    assert "not JSON" in reasons[bogus]
    assert f"chunk member-1/{second}/chunk/0" in reasons[second] and "sha256" in reasons[second]
    infos = {info.id: info for info in store.list()}
    assert infos[first].valid and not infos[second].valid and not infos[bogus].valid

    third = store.save(newer, {"n": 201})  # the damaged ones are deleted, the intact one kept (keep=2)
    assert third > bogus
    assert [(info.id, info.valid) for info in store.list()] == [(first, True), (third, True)]


def test_damaged_chunk_bytes_that_match_the_commit_still_fail_the_manifest_checks(
    stores, state_topic, kafka_bootstrap
) -> None:
    """A forged commit whose chunk list matches its wrong chunks: the checkpoint's own checksums refuse it."""
    store = stores(state_topic)
    first = store.save(trained(50), {"n": 50})
    forged = f"{int(first) + 1:020d}"
    manifest = b'{"manifest_sha256":"' + b"0" * 64 + b'","manifest":{}}'
    data = manifest + b"PK" * 100
    chunk = f"member-1/{forged}/chunk/0"
    commit = {
        "format": "stream-logreg-kafka-state", "version": 1, "key": "member-1", "id": forged,
        "created_at": "2026-01-01T00:00:00+00:00", "manifest_size": len(manifest), "size": len(data),
        "chunks": [[chunk, len(data), hashlib.sha256(data).hexdigest()]],
    }
    producer = plain_producer(kafka_bootstrap)
    producer.send(state_topic, key=chunk.encode(), value=data, partition=0)
    producer.send(state_topic, key=f"member-1/{forged}/commit".encode(), value=orjson.dumps(commit),
                  partition=0)
    producer.flush(timeout=30)
    producer.close()
    checkpoint = store.latest()
    assert checkpoint is not None and checkpoint.id == first
    assert [cid for cid, _ in store.skipped] == [forged] and "checksum" in store.skipped[0][1]


def test_second_writer_of_a_key_fences_the_first(stores, state_topic, kafka_bootstrap) -> None:
    model = trained(100)
    first = stores(state_topic)
    before = first.save(model, {"by": "first"})
    with pytest.raises(StateFenced, match="another writer of state key 'member-1'"):
        with first.transaction():  # the first writer is mid-checkpoint when the second one starts
            first.write(model, {"by": "first, fenced"})
            second = stores(state_topic)
    with pytest.raises(StateFenced, match="stop this member"):  # and stays unusable
        first.save(model, {"by": "first again"})
    assert second.latest().id == before  # nothing of the fenced transaction is visible
    after = second.save(model, {"by": "second"})
    third = stores(state_topic, key="member-1")  # e.g. the member that takes the partitions over next
    checkpoint = third.latest()
    assert checkpoint.id == after and checkpoint.metadata == {"by": "second"}
    with pytest.raises(StateFenced):  # the newest writer of a key always wins
        second.save(model, {"by": "second again"})
    other = stores(state_topic, key="member-2")  # another key in the same topic is independent
    assert other.latest() is None
    other.save(model, {"by": "member-2"})
    assert third.save(model, {"by": "third"}) > after
    assert third.latest().metadata == {"by": "third"} and other.latest().metadata == {"by": "member-2"}


def compacted(records: list) -> list[tuple[bytes, bytes]]:
    """What compaction can leave of ``records`` at most: the last record per key, in log order, without
    tombstones."""
    newest = {record.key: (record.offset, record.value) for record in records}
    return [(key, value) for key, (_, value) in sorted(newest.items(), key=lambda kv: kv[1][0]) if value]


def test_compaction_at_any_checkpoint_keeps_the_newest_and_drops_superseded_ones(
    stores, state_topic, kafka_topic, kafka_bootstrap
) -> None:
    """Compaction simulated exactly, of the log as it was after each checkpoint: keep the last record per
    key, drop tombstones, copy that into a new topic and restore from it."""
    store = stores(state_topic, keep=1, chunk_bytes=2048)
    models = [trained(n) for n in (50, 100, 150, 200)]
    ids = [store.save(m, {"n": i}) for i, m in enumerate(models)]
    log = raw_records(kafka_bootstrap, state_topic)
    assert len({r.key.split(b"/")[1] for r in log}) == len(ids)
    for i, cid in enumerate(ids):
        after = [r.offset for r in log if r.key.split(b"/")[1] > cid.encode()]
        prefix = [r for r in log if not after or r.offset < min(after)]  # the log right after save i
        kept = compacted(prefix)
        assert {key.split(b"/")[1] for key, _ in kept} == {cid.encode()}  # older ones all tombstoned
        topic = kafka_topic(config={"cleanup.policy": "compact"})
        producer = plain_producer(kafka_bootstrap)
        for key, value in kept:
            producer.send(topic, key=key, value=value, partition=0)
        producer.flush(timeout=30)
        producer.close()
        checkpoint = stores(topic).latest(expect_config=models[i].config())
        assert checkpoint is not None and checkpoint.id == cid and checkpoint.metadata == {"n": i}
        same_model(checkpoint.model, models[i])


def test_list_describes_the_kept_checkpoints_oldest_first(stores, state_topic) -> None:
    store = stores(state_topic, keep=2)
    ids = [store.save(trained(n), {"n": n}) for n in (10, 20, 30)]
    infos = store.list()
    assert [info.id for info in infos] == ids[1:]
    assert all(info.valid and info.reason is None and info.size > 0 for info in infos)
    assert infos[0].created_at < infos[1].created_at


def test_other_hyper_parameters_are_refused_not_skipped(stores, state_topic) -> None:
    store = stores(state_topic)
    store.save(trained(20))
    with pytest.raises(CheckpointMismatch, match="optimizer.alpha"):
        store.latest(expect_config=trained(0, optimizer=optim.FTRL(alpha=0.5, l1=0.01)).config())


def test_outputs_share_the_checkpoint_transaction(stores, state_topic, kafka_topic, kafka_bootstrap) -> None:
    outputs = kafka_topic()
    store = stores(state_topic)
    model = trained(30)
    before = store.save(model, {"n": 0})
    with pytest.raises(RuntimeError, match="the loop failed"):
        with store.transaction() as producer:
            producer.send(outputs, b"aborted prediction")
            store.write(model, {"n": 1})
            raise RuntimeError("the loop failed")
    with store.transaction() as producer:
        producer.send(outputs, b"committed prediction")
        after = store.write(model, {"n": 2})
    assert [r.value for r in raw_records(kafka_bootstrap, outputs)] == [b"committed prediction"]
    assert [info.id for info in store.list()] == [before, after]
    with pytest.raises(CheckpointError, match="needs an open transaction"):
        store.write(model)


def test_topic_from_the_group_id_is_created_compacted(kafka_bootstrap, stores) -> None:
    group = f"learners-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        store = KafkaStore(kafka_bootstrap, "member-1", group_id=group)
        store.close()
        assert store.topic == f"{group}-state"
        found = admin.describe_configs([ConfigResource("topic", store.topic)], config_filter="all")
        values = {k: v["value"] for k, v in found["topic"][store.topic].items()}
        assert values["cleanup.policy"] == "compact"
        assert int(values["max.message.bytes"]) >= 512 * 1024 + 4096
        (described,) = admin.describe_topics([store.topic])
        assert [len(p["replica_nodes"]) for p in described["partitions"]] == [1]  # min(3, one broker)
        assert state_partition("member-1", 1) == 0
    finally:
        admin.delete_topics([f"{group}-state"], raise_errors=False)
        admin.close()


@pytest.mark.parametrize("policy", ["delete", "compact,delete"])
def test_a_topic_that_may_delete_the_current_checkpoint_is_refused(
    kafka_topic, kafka_bootstrap, policy
) -> None:
    topic = kafka_topic(config={"cleanup.policy": policy})
    with pytest.raises(StateTopicError, match=f"cleanup.policy='{policy}'; it must be 'compact' only"):
        KafkaStore(kafka_bootstrap, "member-1", topic=topic)


def test_a_topic_with_too_small_messages_is_refused(kafka_topic, kafka_bootstrap) -> None:
    topic = kafka_topic(config={"cleanup.policy": "compact", "max.message.bytes": "100000"})
    with pytest.raises(StateTopicError, match="too small for chunks"):
        KafkaStore(kafka_bootstrap, "member-1", topic=topic)


def test_reading_the_topic_is_bounded_in_time(stores, state_topic) -> None:
    store = stores(state_topic)
    store.save(trained(10))
    store.timeout = 1e-6
    with pytest.raises(CheckpointError, match="state topic"):
        store.latest()


@pytest.mark.parametrize("key", ["", "a/b", "x" * 201, "naïve"])
def test_bad_state_keys_are_refused(key) -> None:
    with pytest.raises(ValueError, match="state key"):
        KafkaStore("127.0.0.1:1", key, topic="never-created")  # refused before any connection


def test_a_newer_commit_behind_another_keys_open_transaction_is_waited_for(stores, state_topic) -> None:
    """Keys share a partition: a reader never restores an older checkpoint because another writer's
    transaction is open in front of the newest one; it waits (bounded), then sees it."""
    model = trained(40)
    other = stores(state_topic, key="member-2")
    mine = stores(state_topic, key="member-1")
    older = mine.save(model, {"n": 1})
    open_transaction = other.transaction()
    open_transaction.__enter__()
    other.write(model, {"n": "member-2"})
    other.producer.flush(timeout=30)  # member-2's records are in the log, its transaction open
    newer = mine.save(model, {"n": 2})  # committed after them
    reader = stores(state_topic, key="member-1", timeout=3.0)
    with pytest.raises(CheckpointError, match="transaction of another writer may still be open"):
        reader.latest()
    open_transaction.__exit__(None, None, None)
    checkpoint = reader.latest()
    assert older < newer and checkpoint.id == newer and checkpoint.metadata == {"n": 2}
    assert other.latest().metadata == {"n": "member-2"}


def test_a_commit_the_cluster_does_not_answer_is_bounded_and_the_store_then_refuses_to_write(
    kafka_broker, stores, state_topic
) -> None:
    store = stores(state_topic, timeout=5.0)
    model = trained(20)
    before = store.save(model, {"n": 1})
    try:
        with pytest.raises(CheckpointError, match="commit did not complete within 5 s"):
            with store.transaction():
                store.write(model, {"n": 2})
                store.producer.flush(timeout=30)
                kafka_broker.stop()  # the commit finds no coordinator
        with pytest.raises(CheckpointError, match="can no longer write"):
            store.save(model, {"n": 3})
    finally:
        if not kafka_broker.is_running():
            kafka_broker.start()
    checkpoint = stores(state_topic).latest()  # a new store resolves the transaction either way
    assert checkpoint is not None and checkpoint.id >= before


@pytest.mark.parametrize("settings", [{"securty_protocol": "SSL"}, {"isolation_level": "read_uncommitted"}])
def test_unknown_or_reserved_client_settings_are_refused(settings) -> None:
    with pytest.raises(ValueError, match="client_settings"):
        KafkaStore("127.0.0.1:1", "member-1", topic="never-created", client_settings=settings)


def test_an_unreachable_cluster_is_a_clear_error_after_the_timeout() -> None:
    reached = "could not reach the Kafka cluster at '127.0.0.1:1' within 1 s"
    with pytest.raises(StateTopicError, match=reached):
        KafkaStore("127.0.0.1:1", "member-1", topic="never-created", timeout=1.0)
