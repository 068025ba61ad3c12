"""``--processing-guarantee exactly-once`` against a real broker.

The predictions, dead letters, state records and consumer offsets of one checkpoint interval are one Kafka
transaction. Oracles: a downstream ``read_committed`` consumer must see each unlabelled event's prediction
and each bad message's dead letter exactly once (by id, and by source offset) whatever SIGKILLs and
rebalances happen; the states in the topic must have learned every event exactly once (per-partition
counts); in-process, the published predictions must be those of an offline replay.
"""

from __future__ import annotations

import random
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from polling import KeepProducing, read_topic, wait_for
from test_consumer import make_config, make_events, offline, produce, read_status, running, start_service
from test_state_kafka import state, stop

from consumers import ConfigError
from stream_logreg.codec import Event, JsonCodec

EOS = ("--state-store", "kafka", "--processing-guarantee", "exactly-once")


def read_committed(bootstrap: str, topic: str, expected: int, timeout: float = 60.0, require: bool = True
                   ) -> list[Any]:
    """Every record of ``topic``'s committed transactions once ``expected`` have arrived (``require``: fewer
    after ``timeout`` s fail, saying whether the rest is held back by an open transaction or never sent)."""
    records = read_topic(bootstrap, topic, expected, timeout, isolation_level="read_committed")
    if require and len(records) < expected:
        raise AssertionError(f"{len(records)} of {expected} records of {topic} committed after "
                             f"{timeout:.0f}s; {ends(bootstrap, topic)}")
    return records


def ends(bootstrap: str, topic: str) -> str:
    """Each partition's last stable offset (where ``read_committed`` readers stop: an open transaction holds
    it back), its high watermark and how many data records it holds, committed or not."""
    from kafka import KafkaConsumer, TopicPartition

    said = []
    for level in ("read_committed", "read_uncommitted"):
        consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, isolation_level=level)
        try:
            parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
            offsets = sorted((tp.partition, o) for tp, o in consumer.end_offsets(parts).items())
            said.append(f"{level} end offsets {offsets}")
        finally:
            consumer.close()
    said.append(f"data records in the log, committed or not: {len(read_topic(bootstrap, topic, 10**9, 2.0))}")
    return "; ".join(said)


def with_poison(values: list[bytes], every: int, seed: int) -> tuple[list[bytes], int]:
    """``values`` with a bad message after every ``every``-th one; (stream, number of bad messages)."""
    rng = random.Random(seed)
    out, bad = [], 0
    for i, v in enumerate(values):
        out.append(v)
        if i % every == every - 1:
            out.append(rng.choice([b"not json", b'{"x": {"a": "NaN"}, "y": 2}', b'{"y": 1}']))
            bad += 1
    return out, bad


def fail_the_second_transaction(monkeypatch: pytest.MonkeyPatch, key: str) -> list[dict]:
    """Make the first transaction of state ``key`` after its first commit fail once, after its outputs and
    state were sent (its offsets refused); returns the list that then holds the refused offsets."""
    from kafka.errors import KafkaError

    from consumers.state.kafka_store import KafkaStore

    send_offsets, failures = KafkaStore.send_offsets, []

    def fail_the_second(self: KafkaStore, offsets: dict, group_metadata: Any) -> None:
        if len(failures) < 1 and self.key == key and self._index is not None and self._index.commits:
            failures.append(offsets)  # after the outputs and the state were sent in this transaction
            self.abort()
            raise KafkaError("injected: the offsets could not be added to the transaction")
        send_offsets(self, offsets, group_metadata)

    monkeypatch.setattr(KafkaStore, "send_offsets", fail_the_second)
    return failures


def test_exactly_once_needs_the_kafka_store(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="processing_guarantee: exactly-once needs the state in Kafka"):
        make_config("127.0.0.1:9", "t", tmp_path, processing_guarantee="exactly-once")


def test_exactly_once_runs_on_both_clients(tmp_path: Path, kafka_client: str) -> None:
    cfg = make_config("127.0.0.1:9", "t", tmp_path, state_store="kafka", processing_guarantee="exactly-once",
                      kafka_client=kafka_client)
    assert (cfg.kafka_client, cfg.processing_guarantee) == (kafka_client, "exactly-once")


@pytest.mark.parametrize("code, fenced, retriable", [
    ("_FENCED", True, False), ("PRODUCER_FENCED", True, False), ("INVALID_PRODUCER_EPOCH", True, False),
    ("TRANSACTION_COORDINATOR_FENCED", True, False), ("_TIMED_OUT", False, True),
    ("CONCURRENT_TRANSACTIONS", False, True), ("INVALID_TXN_STATE", False, False),
    ("TRANSACTIONAL_ID_AUTHORIZATION_FAILED", False, False),
])
def test_librdkafka_transaction_errors_read_as_kafka_pythons(code: str, fenced: bool, retriable: bool
                                                             ) -> None:
    """The store and the learner tell a fencing (exit 1) from a failure (abort, learn again) on either
    client; a retriable error (opening a key while Kafka aborts a killed writer's transaction) is retried."""
    confluent_kafka = pytest.importorskip("confluent_kafka")
    from kafka.errors import RetriableError

    from consumers.confluent_tx import kafka_error
    from consumers.state.kafka_store import _is_fenced

    ck = confluent_kafka.KafkaError(getattr(confluent_kafka.KafkaError, code))
    exc = kafka_error(confluent_kafka.KafkaException(ck))
    assert _is_fenced(exc) is fenced
    assert isinstance(exc, RetriableError) is retriable
    assert ck.name() in str(exc)
    errors = confluent_kafka.KafkaError
    # librdkafka's later calls on a fenced producer fail with its generic fatal error, saying why
    fatal = errors(errors._FATAL, "fenced by a newer instance", fatal=True)
    assert _is_fenced(kafka_error(confluent_kafka.KafkaException(fatal)))
    flagged = errors(errors.INVALID_TXN_STATE, retriable=True)  # librdkafka's own retriable flag counts
    assert isinstance(kafka_error(confluent_kafka.KafkaException(flagged)), RetriableError)


@pytest.mark.kafka
def test_a_fenced_confluent_producer_says_so_on_every_later_call(kafka_bootstrap: str, kafka_topic: Any
                                                                  ) -> None:
    """The adapter's contract with the store: records, then a newer producer of the transactional id; the
    older one's flush still answers (confluent-kafka 2.16 raises SystemError there), and each later
    transactional call raises what the store reads as a fencing."""
    pytest.importorskip("confluent_kafka")
    import uuid

    from consumers.confluent_tx import open_transactional
    from consumers.state.kafka_store import _is_fenced

    topic = kafka_topic(1)
    conf = {"bootstrap.servers": kafka_bootstrap, "transactional.id": f"fence-{uuid.uuid4().hex[:8]}"}
    old = open_transactional(dict(conf), 30, lambda: False)
    newer = None
    try:
        old.begin_transaction()
        assert old.send(topic, b"before", b"k").get(30) == (topic, 0, 0)
        newer = open_transactional(dict(conf), 30, lambda: False)  # aborts the older one's transaction
        late = old.send(topic, b"after", b"k")
        assert old.flush(10) == 0  # answers (librdkafka purges what a fenced producer queued)
        assert not late.succeeded()
        for call in (old.commit_transaction, old.abort_transaction, old.begin_transaction):
            with pytest.raises(Exception) as caught:
                call()
            assert _is_fenced(caught.value), caught.value
    finally:
        old.close(timeout=1)
        if newer is not None:
            newer.close(timeout=1)
    assert read_committed(kafka_bootstrap, topic, 1, timeout=3, require=False) == []


@pytest.mark.kafka
def test_outputs_are_those_of_an_offline_replay_and_visible_once_committed(
    kafka_bootstrap: str, kafka_topic: Any, tmp_path: Path, kafka_client: str
) -> None:
    topic, predictions, dlq = kafka_topic(1), kafka_topic(1), kafka_topic(1)
    values, bad = with_poison(make_events(1500, seed=41, unlabelled_every=3), every=50, seed=41)
    produce(kafka_bootstrap, topic, values)
    cfg = make_config(kafka_bootstrap, topic, tmp_path / "none", state_store="kafka",
                      processing_guarantee="exactly-once", predictions_topic=predictions,
                      dead_letter_topic=dlq, checkpoint_every_messages=300, max_poll_records=100,
                      group_instance_id="eos-1", kafka_client=kafka_client)
    with running(cfg) as r:
        wait_for(lambda: r.stats()["positions"].get(f"{topic}:0") == len(values), 60, "all read")
    _, scored = offline(values, 1)
    got = [orjson.loads(rec.value) for rec in read_committed(kafka_bootstrap, predictions, len(scored))]
    assert [(g["id"], g["p"], g["n_samples_seen"]) for g in got] == scored
    dead = read_committed(kafka_bootstrap, dlq, bad)
    assert len(dead) == bad
    final = state(kafka_bootstrap, f"g-{topic}", "eos-1")
    assert final.metadata["offsets"] == {f"{topic}:0": len(values)}
    assert not (tmp_path / "none").exists()


def refuse_one_send(monkeypatch: pytest.MonkeyPatch, kafka_client: str, topic: str, after: int) -> list[int]:
    """Make the learner's producer refuse its ``after``-th send to ``topic``, once, as for good
    (kafka-python: not authorised; librdkafka: unknown topic), so that the outputs drop it and mark the
    topic unhealthy; returns the list that then holds the refused send's number."""
    seen, refused = [0], []

    def refuse(send: Any, make_error: Any) -> Any:
        def patched(self: Any, t: str, *args: Any, **kwargs: Any) -> Any:
            if t == topic and not refused:
                seen[0] += 1
                if seen[0] == after:
                    refused.append(seen[0])
                    raise make_error()
            return send(self, t, *args, **kwargs)
        return patched

    if kafka_client == "confluent":
        from confluent_kafka import KafkaError as CKError
        from confluent_kafka import KafkaException

        from consumers.confluent_tx import TransactionalProducer

        monkeypatch.setattr(TransactionalProducer, "produce", refuse(
            TransactionalProducer.produce, lambda: KafkaException(CKError(CKError._UNKNOWN_TOPIC))))
    else:
        from kafka import KafkaProducer
        from kafka.errors import TopicAuthorizationFailedError

        monkeypatch.setattr(KafkaProducer, "send", refuse(
            KafkaProducer.send, lambda: TopicAuthorizationFailedError({topic})))
    return refused


@pytest.mark.kafka
@pytest.mark.parametrize("after", [10, 150])  # before the first checkpoint, after it
def test_an_output_the_producer_refuses_is_published_again_not_committed_without(
    kafka_bootstrap: str, kafka_topic: Any, tmp_path: Path, kafka_client: str,
    monkeypatch: pytest.MonkeyPatch, after: int
) -> None:
    """A refused send marks its topic unhealthy and drops its records until it is back (at-least-once:
    counted, so that checkpoints go on); exactly-once, the open transaction must not commit without them:
    it is aborted and its events are read, learned and published again (from where this model started
    reading, when there was no checkpoint yet)."""
    topic, predictions = kafka_topic(1), kafka_topic(1)
    values = make_events(1500, seed=43, unlabelled_every=3)
    produce(kafka_bootstrap, topic, values)
    refused = refuse_one_send(monkeypatch, kafka_client, predictions, after=after)
    cfg = make_config(kafka_bootstrap, topic, tmp_path / "none", state_store="kafka",
                      processing_guarantee="exactly-once", predictions_topic=predictions,
                      checkpoint_every_messages=300, max_poll_records=100, group_instance_id="eos-refused",
                      kafka_client=kafka_client)
    with running(cfg) as r:
        wait_for(lambda: r.stats()["positions"].get(f"{topic}:0") == len(values), 60, "all read")
        dropped = r.stats()["output_dropped"]
    assert refused == [after] and dropped.get(predictions, 0) >= 1  # the drop happened
    _, scored = offline(values, 1)
    got = [orjson.loads(rec.value) for rec in read_committed(kafka_bootstrap, predictions, len(scored))]
    assert [(g["id"], g["p"], g["n_samples_seen"]) for g in got] == scored  # each once, in order
    final = state(kafka_bootstrap, f"g-{topic}", "eos-refused")
    assert final.metadata["offsets"] == {f"{topic}:0": len(values)}


@pytest.mark.kafka
def test_sigkills_mid_transaction_and_a_rebalance_publish_each_output_exactly_once(
    kafka_bootstrap: str, kafka_topic: Any, tmp_path: Path, kafka_client: str
) -> None:
    topic, predictions, dlq = kafka_topic(2), kafka_topic(2), kafka_topic(2)
    group = f"g-{topic}"
    phases = [with_poison(make_events(1500, seed=s, unlabelled_every=4), every=40, seed=s) for s in (51, 52)]
    values = [v for p, _ in phases for v in p]
    bad = sum(b for _, b in phases)
    events = [e for e in map(JsonCodec().decode, values) if isinstance(e, Event)]
    unlabelled = {e.id for e in events if e.y is None}
    extra = (*EOS, "--kafka-client", kafka_client, "--predictions-topic", predictions,
             "--dead-letter-topic", dlq, "--checkpoint-every-messages", "150", "--max-poll-records", "20",
             "--status-every", "0.05",
             # a killed member's restart (same instance id) replaces it at once; a session that outlasts a
             # slow start on a busy machine keeps the killed member in the group meanwhile (else the other
             # member takes over its state as a lost member's, and fences the restarted one)
             "--consumer-setting", "session_timeout_ms=30000")
    runs = 0

    def member(name: str) -> tuple[Any, Path]:
        nonlocal runs
        runs += 1
        status = tmp_path / f"{name}-{runs}.json"
        proc = start_service(kafka_bootstrap, topic, group, tmp_path / f"{name}-{runs}" / "ckpt", *extra,
                             "--group-instance-id", name, "--status-file", str(status))
        return proc, status

    def consumed(status: Path) -> int:
        return read_status(status).get("consumed") or 0

    procs = []
    try:
        produce(kafka_bootstrap, topic, phases[0][0], partitions=2)
        a, a_status = member("m-a")
        procs.append(a)
        wait_for(lambda: consumed(a_status) >= 500 or a.poll() is not None, 60, "A consuming")
        a.send_signal(signal.SIGKILL)  # mid-interval: its transaction holds ~0-150 events' outputs
        a.wait(30)
        a, a_status = member("m-a")  # the same member on a new empty disk: aborts the zombie's transaction
        procs.append(a)
        b, b_status = member("m-b")  # and a rebalance
        procs.append(b)
        wait_for(lambda: all(len(read_status(s).get("assigned") or []) == 1 for s in (a_status, b_status)),
                 60, "A and B sharing the partitions")
        produce(kafka_bootstrap, topic, phases[1][0], partitions=2)
        wait_for(lambda: consumed(b_status) >= 300 or b.poll() is not None, 60, "B consuming")
        b.send_signal(signal.SIGKILL)
        b.wait(30)
        b, b_status = member("m-b")
        procs.append(b)

        def done() -> bool:
            assert a.poll() is None and b.poll() is None
            positions = {**read_status(a_status).get("positions", {}),
                         **read_status(b_status).get("positions", {})}
            return len(positions) == 2 and sum(positions.values()) == len(values)

        wait_for(done, 90, "A and B at the end of both partitions")
        stop(a)
        stop(b)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    got = Counter(orjson.loads(r.value)["id"]
                  for r in read_committed(kafka_bootstrap, predictions, len(unlabelled)))
    assert set(got) == unlabelled
    assert max(got.values()) == 1, [k for k, n in got.items() if n > 1][:5]
    dead = Counter((dict(r.headers)["source_partition"], dict(r.headers)["source_offset"])
                   for r in read_committed(kafka_bootstrap, dlq, bad))
    assert sum(dead.values()) == bad and max(dead.values()) == 1
    learned = Counter()
    for key in ("m-a", "m-b"):
        learned.update(state(kafka_bootstrap, group, key).metadata["learned"])
    assert sum(learned.values()) == len(values) - bad - len(unlabelled)


@pytest.mark.kafka
def test_killed_between_writing_state_and_committing_offsets_learns_nothing_twice(
    kafka_bootstrap: str, kafka_topic: Any, tmp_path: Path
) -> None:
    """The window of issue 11: with local state, a member killed after its checkpoint and before its commit
    had the events learned again by whoever took its partitions. Here both are one transaction."""
    topic = kafka_topic(4)
    group = f"g-{topic}"
    values = make_events(4000, seed=61)
    chunks = [values[i : i + 1000] for i in range(0, 4000, 1000)]
    produce(kafka_bootstrap, topic, chunks[0], partitions=4)
    extra = (*EOS, "--checkpoint-every-messages", "100", "--max-poll-records", "10", "--status-every", "0.05")
    b_status = tmp_path / "b.json"
    b = start_service(kafka_bootstrap, topic, group, tmp_path / "b" / "ckpt", *extra,
                      "--group-instance-id", "m-b", "--status-file", str(b_status))
    procs = [b]
    try:
        wait_for(lambda: len(read_status(b_status).get("assigned") or []) == 4, 60, "B alone")
        for i in range(2):
            a_status = tmp_path / f"a-{i}.json"
            a = start_service(kafka_bootstrap, topic, group, tmp_path / f"a-{i}" / "ckpt", *extra,
                              "--group-instance-id", "m-a", "--status-file", str(a_status),
                              "--kill-after-writes", "3")
            procs.append(a)
            wait_for(lambda s=a_status, a=a: len(read_status(s).get("assigned") or []) == 2 or a.poll(), 60,
                     "A taking half the partitions")
            produce(kafka_bootstrap, topic, chunks[i + 1], partitions=4)
            assert a.wait(90) == -signal.SIGKILL  # killed itself between writing state and committing
            # B takes A's partitions over once A's session expires
            wait_for(lambda: len(read_status(b_status).get("assigned") or []) == 4 and b.poll() is None,
                     60, "B owning every partition again")
        produce(kafka_bootstrap, topic, chunks[3], partitions=4)
        wait_for(lambda: sum(read_status(b_status).get("positions", {}).values()) == len(values)
                 or b.poll() is not None, 90, "B at the end")
        stop(b)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    learned = Counter()
    for key in ("m-a", "m-b"):
        found = state(kafka_bootstrap, group, key, fence=True)  # A's last transaction: still open
        if found is not None:
            learned.update(found.metadata["learned"])
    assert dict(learned) == {f"{topic}:{p}": 1000 for p in range(4)}  # exactly once, across the group


@pytest.mark.kafka
def test_a_fresh_member_continues_a_lost_members_state_in_its_transactions(
    kafka_bootstrap: str, kafka_topic: Any, tmp_path: Path, kafka_client: str
) -> None:
    """The take-over: a member with a new identity and nothing learned is given the partitions of one that
    is gone; the offsets' metadata names the lost state, which it opens (fencing the lost member) and goes on
    with, its outputs now in that state's transactions. Oracle: one uninterrupted run."""
    from test_consumer import same_model

    topic, predictions = kafka_topic(1), kafka_topic(1)
    values = make_events(1200, seed=101, unlabelled_every=3)
    common = dict(state_store="kafka", processing_guarantee="exactly-once", predictions_topic=predictions,
                  checkpoint_every_messages=200, max_poll_records=50, kafka_client=kafka_client)
    produce(kafka_bootstrap, topic, values[:600])
    lost = make_config(kafka_bootstrap, topic, tmp_path / "a", group_instance_id="lost", **common)
    with running(lost) as r:
        wait_for(lambda: r.stats()["positions"].get(f"{topic}:0") == 600, 60, "the first half read")
    produce(kafka_bootstrap, topic, values[600:])
    with running(make_config(kafka_bootstrap, topic, tmp_path / "b", group_instance_id="new", **common)) as r:
        wait_for(lambda: r.stats()["positions"].get(f"{topic}:0") == len(values), 60, "all read")
    expected, scored = offline(values, 1)
    got = [orjson.loads(rec.value) for rec in read_committed(kafka_bootstrap, predictions, len(scored))]
    assert [(g["id"], g["p"], g["n_samples_seen"]) for g in got] == scored  # each once, as one run
    assert same_model(state(kafka_bootstrap, f"g-{topic}", "lost").model, expected)
    assert state(kafka_bootstrap, f"g-{topic}", "new") is None  # it went on under the lost member's key


@pytest.mark.kafka
def test_a_fenced_member_stops_and_nothing_of_its_transaction_is_visible(
    kafka_bootstrap: str, kafka_topic: Any, tmp_path: Path, kafka_client: str
) -> None:
    from test_consumer import Running

    from consumers.learner import Fenced, Learner
    from consumers.state.kafka_store import KafkaStore

    topic, predictions = kafka_topic(1), kafka_topic(1)
    values = make_events(600, seed=71, unlabelled_every=2)
    cfg = make_config(kafka_bootstrap, topic, tmp_path / "none", state_store="kafka",
                      processing_guarantee="exactly-once", predictions_topic=predictions,
                      checkpoint_every_messages=1_000_000, checkpoint_every_seconds=300.0,
                      group_instance_id="zombie", kafka_client=kafka_client)
    r = Running(Learner(cfg))
    try:
        wait_for(lambda: r.stats()["running"], 60, "the learner running")
        produce(kafka_bootstrap, topic, values)
        wait_for(lambda: r.stats()["positions"].get(f"{topic}:0") == len(values), 60, "all read")
        # a newer owner of the state key (as a replacement taking it over): Kafka aborts the open
        # transaction of the older one, whose next commit fails
        with KafkaStore(kafka_bootstrap, key="zombie", group_id=cfg.group_id, timeout=30) as newer:
            assert newer.latest() is None
            r.learner.stop()
            r.thread.join(60)
            assert not r.thread.is_alive()
            assert isinstance(r.error, Fenced), r.error
            assert "took over" in str(r.error)
            assert newer.latest() is None  # its state of the interval never became visible
    finally:
        if r.thread.is_alive():
            r.learner.stop()
            r.thread.join(60)
    # nor its 300 predictions
    assert read_committed(kafka_bootstrap, predictions, 1, timeout=3, require=False) == []


@pytest.mark.kafka
def test_a_failed_transaction_is_aborted_and_its_interval_learned_and_published_again(
    kafka_bootstrap: str, kafka_topic: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kafka_client: str
) -> None:
    from test_consumer import same_model

    topic, predictions = kafka_topic(1), kafka_topic(1)
    values = make_events(1200, seed=81, unlabelled_every=3)
    produce(kafka_bootstrap, topic, values)
    failures = fail_the_second_transaction(monkeypatch, "eos-fail")
    cfg = make_config(kafka_bootstrap, topic, tmp_path / "none", state_store="kafka",
                      processing_guarantee="exactly-once", predictions_topic=predictions,
                      checkpoint_every_messages=300, max_poll_records=50, group_instance_id="eos-fail",
                      kafka_client=kafka_client)
    with running(cfg) as r:
        wait_for(lambda: r.stats()["positions"].get(f"{topic}:0") == len(values), 60, "all read")
    assert failures, "the failure was never injected"
    assert r.learner.stats.snapshot()["checkpoint_failures"] >= 1
    expected, scored = offline(values, 1)
    got = [orjson.loads(rec.value) for rec in read_committed(kafka_bootstrap, predictions, len(scored))]
    assert [(g["id"], g["p"], g["n_samples_seen"]) for g in got] == scored  # each once, as never failed
    final = state(kafka_bootstrap, f"g-{topic}", "eos-fail")
    assert same_model(final.model, expected)  # rolled back and learned again: nothing twice


@pytest.mark.kafka
def test_a_client_that_rewinds_after_the_rollback_is_sought_back_and_nothing_is_learned_twice(
    kafka_bootstrap: str, kafka_topic: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kafka_client: str
) -> None:
    """As above, and the client then goes back to the partition's start on its own, as librdkafka was seen
    to do once after the rollback's seek (the next records it returned started at offset 0 while the model
    had been restored to offset 300: 100 predictions were published twice). The learner must not learn
    records from before its position: it seeks the partition back to it, and every prediction is published
    once, by the model an uninterrupted run has."""
    from test_consumer import Running, same_model

    from consumers.learner import Learner

    topic, predictions = kafka_topic(1), kafka_topic(1)
    values = make_events(1200, seed=82, unlabelled_every=3)
    produce(kafka_bootstrap, topic, values)
    failures, rewound = fail_the_second_transaction(monkeypatch, "eos-rewind"), []
    cfg = make_config(kafka_bootstrap, topic, tmp_path / "none", state_store="kafka",
                      processing_guarantee="exactly-once", predictions_topic=predictions,
                      checkpoint_every_messages=300, max_poll_records=50, group_instance_id="eos-rewind",
                      kafka_client=kafka_client)
    learner = Learner(cfg)
    seek_and_resume = learner._source.seek_and_resume

    def rewinding(starts: dict) -> None:
        if failures and starts and not rewound:  # the rollback's seek: the client goes to offset 0 instead
            rewound.append(dict(starts))
            starts = {tp: 0 for tp in starts}
        seek_and_resume(starts)

    learner._source.seek_and_resume = rewinding
    r = Running(learner)
    try:
        wait_for(lambda: r.stats()["positions"].get(f"{topic}:0") == len(values), 60, "all read")
    finally:
        r.learner.stop()
        r.thread.join(60)
    assert r.error is None, r.error
    assert rewound and all(o > 0 for o in rewound[0].values()), rewound  # the rewind did happen
    expected, scored = offline(values, 1)
    got = [orjson.loads(rec.value) for rec in read_committed(kafka_bootstrap, predictions, len(scored))]
    assert [(g["id"], g["p"], g["n_samples_seen"]) for g in got] == scored  # each once, as never failed
    final = state(kafka_bootstrap, f"g-{topic}", "eos-rewind")
    assert same_model(final.model, expected)


@pytest.mark.kafka
def test_a_broker_restart_mid_stream_publishes_each_prediction_exactly_once(
    kafka_broker: Any, kafka_bootstrap: str, kafka_topic: Any, tmp_path: Path
) -> None:
    from test_consumer import same_model

    topic, predictions = kafka_topic(1), kafka_topic(1)
    values = make_events(3000, seed=91, unlabelled_every=5)
    cfg = make_config(kafka_bootstrap, topic, tmp_path / "none", state_store="kafka",
                      processing_guarantee="exactly-once", predictions_topic=predictions,
                      checkpoint_every_messages=300, checkpoint_every_seconds=1.0, commit_timeout_ms=2000,
                      max_poll_records=100, group_instance_id="eos-restart")
    with running(cfg) as r:
        producing = KeepProducing(kafka_bootstrap, topic, values)  # flows across the restart
        r.wait_consumed(600)
        kafka_broker.restart()
        producing.join(180)
        wait_for(lambda: r.stats()["positions"].get(f"{topic}:0") == len(values), 120, "all read",
                 every=0.2)
        r.stop()
    expected, scored = offline(values, 1)
    got = [orjson.loads(rec.value) for rec in read_committed(kafka_bootstrap, predictions, len(scored))]
    assert [(g["id"], g["p"], g["n_samples_seen"]) for g in got] == scored  # each once, in order
    final = state(kafka_bootstrap, cfg.group_id, "eos-restart")
    assert final.metadata["offsets"] == {f"{topic}:0": len(values)}
    assert same_model(final.model, expected)
