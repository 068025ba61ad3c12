"""The periodic commit off the loop on confluent-kafka: what is counted when, and what an unanswered or
refused commit makes the learner do. librdkafka's answers are driven by hand here (``_on_commit`` is what
it calls inside ``consume()``); that the offsets really land in the group, on both backends and through
SIGKILLs, is what tests/test_consumer.py and tests/test_service.py check against the real broker."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("confluent_kafka")

from confluent_kafka import KafkaError as CKError  # noqa: E402
from confluent_kafka import KafkaException  # noqa: E402
from confluent_kafka import TopicPartition as CTopicPartition  # noqa: E402
from kafka import TopicPartition  # noqa: E402
from kafka.errors import KafkaError  # noqa: E402
from kafka.structs import OffsetAndMetadata  # noqa: E402

from consumers import LearnerConfig  # noqa: E402
from consumers.confluent import ConfluentSource  # noqa: E402
from consumers.state.checkpointing import Checkpointing  # noqa: E402
from consumers.stats import LearnerStats  # noqa: E402
from stream_logreg.checkpoints import DirectoryStore  # noqa: E402

TP = TopicPartition("t", 0)


class _Consumer:
    """Records the commits it is asked for (a stand-in for ``confluent_kafka.Consumer``)."""

    def __init__(self, refuse: bool = False) -> None:
        self.commits: list[tuple[list, bool]] = []
        self.refuse = refuse

    def commit(self, offsets: list, asynchronous: bool) -> Any:
        if self.refuse:
            raise KafkaException(CKError(CKError._STATE))  # noqa: SLF001
        self.commits.append(([(p.topic, p.partition, p.offset) for p in offsets], asynchronous))
        return None if asynchronous else [CTopicPartition(p.topic, p.partition, p.offset) for p in offsets]


def _source(tmp_path, consumer: _Consumer) -> ConfluentSource:
    cfg = LearnerConfig(bootstrap_servers="k:9092", topics=["t"], group_id="g", checkpoint_dir=str(tmp_path),
                        kafka_client="confluent")
    source = ConfluentSource(cfg, LearnerStats())
    source.consumer = consumer
    return source


def _offsets(offset: int) -> dict:
    return {TP: OffsetAndMetadata(offset, "ckpt", -1)}


def test_a_sent_commit_is_counted_when_answered(tmp_path) -> None:
    consumer = _Consumer()
    source = _source(tmp_path, consumer)
    assert source.commit_soon(_offsets(7)) is True
    assert consumer.commits == [([("t", 0, 7)], True)]
    assert source.unconfirmed() and source.stats.commits == 0
    source._on_commit(None, [CTopicPartition("t", 0, 7)])
    assert not source.unconfirmed() and source.stats.commits == 1 and source.commit_failures() == []


def test_a_refused_answer_is_reported_once_and_counted(tmp_path) -> None:
    source = _source(tmp_path, _Consumer())
    source.commit_soon(_offsets(7))
    bad = SimpleNamespace(topic="t", partition=0, offset=7, error=CKError(CKError.REBALANCE_IN_PROGRESS))
    source._on_commit(None, [bad])
    failures = source.commit_failures()
    assert len(failures) == 1 and "t:0" in str(failures[0])
    assert source.commit_failures() == []
    assert (source.stats.commits, source.stats.commit_failures) == (0, 1)
    assert not source.unconfirmed()
    source.commit_soon(_offsets(8))
    source._on_commit(CKError(CKError.FENCED_INSTANCE_ID), [])
    assert source.fenced and len(source.commit_failures()) == 1


def test_a_commit_that_cannot_be_sent_raises_and_is_not_awaited(tmp_path) -> None:
    source = _source(tmp_path, _Consumer(refuse=True))
    with pytest.raises(KafkaError):
        source.commit_soon(_offsets(7))
    assert not source.unconfirmed()


def test_checkpointing_counts_a_sent_commit_only_once_answered(tmp_path) -> None:
    """``Checkpointing.commit`` with ``commit_soon``: not counted on sending (the source counts the answer);
    a refusal found later sets ``commit_pending`` again in the loop, and the next commit goes out."""
    cfg = LearnerConfig(bootstrap_servers="k:9092", topics=["t"], group_id="g", checkpoint_dir=str(tmp_path))
    stats = LearnerStats()
    state = Checkpointing(DirectoryStore(tmp_path / "c"), cfg, stats, member="m")
    state.positions[TP] = 5
    assert state.checkpoint("periodic", lambda t: True)
    source = _source(tmp_path, _Consumer())
    source.stats = stats
    assert state.commit({TP}, set(), source.commit_soon)
    assert not state.commit_pending and stats.commits == 0
    source._on_commit(CKError(CKError._TRANSPORT), [])  # noqa: SLF001
    if source.commit_failures():  # what the loop does
        state.commit_pending = True
    assert state.commit_pending and stats.commit_failures == 1
    assert state.commit({TP}, set(), lambda offsets: source.commit(offsets, 1000))  # synchronous: counted
    assert not state.commit_pending and stats.commits == 1
    assert [c[1] for c in source.consumer.commits] == [True, False]
    assert all(c[0] == [("t", 0, 5)] for c in source.consumer.commits)


def test_the_revoke_commit_is_sent_from_the_callbacks_own_thread_and_counted_when_answered(tmp_path) -> None:
    """confluent-kafka lets the consumer be called during ``consume()`` (which runs the rebalance callbacks)
    only from ``consume()``'s thread; a commit from a helper thread waits until ``consume()`` returns, after
    the callback. So the revoke's commit is librdkafka's asynchronous one, on the callback's thread
    (librdkafka rejoins only once it is answered), and it is counted when the answer comes."""
    import threading

    threads: list[int] = []

    class _Recording(_Consumer):
        def commit(self, offsets: list, asynchronous: bool) -> Any:
            threads.append(threading.get_ident())
            return super().commit(offsets, asynchronous)

    class _Handler:
        def on_revoked(self, partitions: set) -> dict:
            return _offsets(9)

    consumer = _Recording()
    source = _source(tmp_path, consumer)
    source._handler = _Handler()
    source._assigned = {TP}
    source._on_revoke(consumer, [CTopicPartition("t", 0)])
    assert consumer.commits == [([("t", 0, 9)], True)] and threads == [threading.get_ident()]
    assert source.unconfirmed() and (source.stats.commits, source.stats.commit_failures) == (0, 0)
    source._on_commit(None, [CTopicPartition("t", 0, 9)])
    assert not source.unconfirmed() and source.stats.commits == 1
    # a commit that cannot be sent is counted as failed, and the revoke goes on
    refusing = _source(tmp_path, _Consumer(refuse=True))
    refusing._handler = _Handler()
    refusing._on_revoke(refusing.consumer, [CTopicPartition("t", 0)])
    assert refusing.stats.commit_failures == 1 and not refusing.unconfirmed()
