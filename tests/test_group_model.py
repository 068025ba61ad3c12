"""One model for the whole consumer group (issue 12), against a real broker.

Members run as threads of :class:`~consumers.Learner` in this process (each a separate member of the
group, with its own consumer, producers and state key) or as processes (``tests/learner_process.py``)
where one is SIGKILLed. The group model in the topic is read as any member reads it
(:class:`~consumers.state.group_model.StateTail`), and Σ_k n_k over the keys' newest contributions is the
count checked against the events produced.
"""

from __future__ import annotations

import math
import random
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from kafka import KafkaConsumer
from polling import wait_for
from test_consumer import Running, make_config, produce, read_status, same_model, start_service

from consumers import Learner
from consumers.state.group_model import StateTail
from stream_logreg.codec import encode_event
from stream_logreg.mixing import combine, to_model

W_STAR = {"f0": 1.5, "f1": -2.0, "f2": 0.7, "f3": 0.0, "f4": -0.4}
B_STAR = 0.3
SYNC = 1.0  # seconds between synchronisations in these tests


def events(n: int, seed: int, unlabelled_every: int = 0) -> list[tuple[dict, int]]:
    """A known generator: x ~ N(0, I₅), y ~ Bernoulli(σ(w*·x + b*))."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        x = {k: rng.gauss(0, 1) for k in W_STAR}
        z = B_STAR + sum(W_STAR[k] * v for k, v in x.items())
        out.append((x, int(rng.random() < 1 / (1 + math.exp(-z)))))
    return out


def encoded(evs: list[tuple[dict, int]], tag: str, unlabelled_every: int = 0) -> list[bytes]:
    return [encode_event(x, None if unlabelled_every and i % unlabelled_every == 0 else y, id=f"{tag}-{i}")
            for i, (x, y) in enumerate(evs)]


def group_state(bootstrap: str, group: str) -> tuple[dict[str, Any], int]:
    """The newest contribution of every key of ``<group>-state`` and Σ_k n_k."""
    tail = StateTail(bootstrap, f"{group}-state", timeout=30)
    try:
        assert tail.read(60), "could not read the state topic to its end"
        found = dict(tail.contributions)
    finally:
        tail.close()
    return found, sum(c.n_samples_seen for c in found.values())


def held_out_loss(model: Any, evs: list[tuple[dict, int]]) -> float:
    ps = np.clip([model.predict_proba_one(x)[True] for x, _ in evs], 1e-15, 1 - 1e-15)
    ys = np.array([y for _, y in evs])
    return float(-np.mean(ys * np.log(ps) + (1 - ys) * np.log(1 - ps)))


def config(bootstrap: str, topic: str, tmp: Path, name: str, sync: float = SYNC, **kw: Any) -> Any:
    return make_config(bootstrap, topic, tmp / name / "ckpt", state_store="kafka", group_instance_id=name,
                       checkpoint_every_messages=kw.pop("every", 100), sync_every_seconds=sync, **kw)


@pytest.mark.kafka
def test_a_single_member_with_the_group_model_is_bitwise_the_per_member_learner(
    kafka_bootstrap: str, kafka_topic: Any, tmp_path: Path
) -> None:
    topic = kafka_topic(1)
    produce(kafka_bootstrap, topic, encoded(events(3000, seed=1), "one"))
    models = {}
    for sync in (SYNC, 0.0):
        cfg = config(kafka_bootstrap, topic, tmp_path, f"solo-{int(sync)}", sync,
                     group_id=f"g-{topic}-{int(sync)}", checkpoint_every_seconds=0.5)
        learner = Learner(cfg)
        assert (learner.group is None) == (sync == 0.0)
        learner.run(max_idle_seconds=3)
        assert learner.model.n_samples_seen == 3000
        if learner.group is not None:
            assert learner.group.syncs > 2 and learner.group.others is None  # synchronised, alone
        models[sync] = learner.model
    assert same_model(models[SYNC], models[0.0])


@pytest.mark.kafka
def test_one_two_and_four_members_learn_one_model(kafka_bootstrap: str, kafka_topic: Any,
                                                  tmp_path: Path) -> None:
    train, held_out = events(4000, seed=2), events(3000, seed=3)
    # AdaGrad(0.1): in a simulation of this stream with 4 members synchronising every 10, 20, 40 events,
    # the progressive log loss is 1.2% and 1.1% below one learner's and 0.3% above (margin for a loaded
    # machine, where a member may read the others' checkpoints late); with AdaGrad(0.3), every 10 and
    # 20 events, it is 1.8% and 4.6% above.
    model = {"optimizer": {"name": "AdaGrad", "lr": 0.1}}
    results = {}
    for k in (1, 2, 4):
        topic = kafka_topic(8)
        group = f"g-{topic}"
        # A synchronisation every 10 events of each member (a poll brings at most 10): the members' views
        # are at most ~k × 10 events stale; see stream_logreg.mixing for what more staleness costs.
        members = [Running(Learner(config(kafka_bootstrap, topic, tmp_path, f"m{k}-{i}", group_id=group,
                                          model=model, every=10, max_poll_records=10)))
                   for i in range(k)]
        try:
            wait_for(lambda ms=members, k=k: all(len(m.stats()["assigned"]) == 8 // k for m in ms), 90,
                     f"{k} members sharing the 8 partitions")
            produce(kafka_bootstrap, topic, encoded(train, "train"), partitions=8)
            # every member at the end of its partitions and synchronised with all the others' final state
            wait_for(lambda ms=members: all(m.stats()["n_samples_seen"] == len(train) for m in ms)
                     and sum(sum(m.stats()["positions"].values()) for m in ms) == len(train),
                     150, f"{k} members synchronised over every event")
        finally:
            for m in members:
                m.stop()
        found, total = group_state(kafka_bootstrap, group)
        assert total == len(train)  # Σ_k n_k: every event once
        assert len(found) == k
        g = to_model(combine([c.state for c in found.values()]))
        finals = [m.learner.model for m in members]
        w = np.array([g.weights[f] for f in W_STAR])
        for f in finals:  # each member's final model is the group model (up to rounding)
            wf = np.array([f.weights[name] for name in W_STAR])
            assert np.linalg.norm(wf - w) <= 1e-9 * np.linalg.norm(w)
            assert abs(f.intercept - g.intercept) <= 1e-9
        snaps = [m.stats() for m in members]
        progressive = sum(s["log_loss_total"] for s in snaps) / sum(s["predicted_labelled"] for s in snaps)
        results[k] = (progressive, held_out_loss(g, held_out))
    for k in (2, 4):
        assert results[k][0] <= 1.02 * results[1][0], results  # progressive log loss within 2%
        assert results[k][1] <= 1.01 * results[1][1], results  # held-out log loss within 1%


def read_predictions(bootstrap: str, topic: str, n: int, timeout: float = 90) -> list[tuple[int, dict]]:
    """(record timestamp ms, prediction) of the first ``n`` predictions, read_committed."""
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             isolation_level="read_committed", enable_auto_commit=False,
                             consumer_timeout_ms=1000)
    out: list[tuple[int, dict]] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < n and time.monotonic() < deadline:
            for r in consumer:
                out.append((r.timestamp, orjson.loads(r.value)))
    finally:
        consumer.close()
    return out


@pytest.mark.kafka
def test_a_killed_member_replaced_on_an_empty_disk_serves_the_group_model_and_counts_stay_exact(
    kafka_bootstrap: str, kafka_topic: Any, tmp_path: Path
) -> None:
    topic, predictions = kafka_topic(6), kafka_topic(1)
    group = f"g-{topic}"
    phase1 = encoded(events(3000, seed=4), "p1")
    phase2 = encoded(events(3000, seed=5), "p2", unlabelled_every=10)
    labelled = len(phase1) + sum(1 for v in phase2 if b'"y"' in v)
    extra = ("--state-store", "kafka", "--processing-guarantee", "exactly-once", "--sync-every-seconds",
             str(SYNC), "--checkpoint-every-messages", "200", "--max-poll-records", "50",
             "--predictions-topic", predictions, "--status-every", "0.1")
    produce(kafka_bootstrap, topic, phase1, partitions=6)
    procs: dict[str, Any] = {}
    status = {}

    def member(name: str) -> None:
        status[name] = tmp_path / f"{name}.json"
        procs[name] = start_service(kafka_bootstrap, topic, group, tmp_path / name / "ckpt", *extra,
                                    "--group-instance-id", name, "--status-file", str(status[name]))

    try:
        for name in ("m-a", "m-b", "m-c"):
            member(name)
        wait_for(lambda: all(p.poll() is None for p in procs.values())
                 and group_state(kafka_bootstrap, group)[1] == len(phase1), 150,
                 "phase 1 learned and checkpointed by the three members")
        procs["m-a"].send_signal(signal.SIGKILL)
        procs["m-a"].wait(30)
        member("m-0")  # an empty disk, a new identity
        wait_for(lambda: all(len(read_status(status[n]).get("assigned") or []) == 2
                             for n in ("m-b", "m-c", "m-0")), 90, "B, C and the replacement sharing")
        mine = {int(k.rsplit(":", 1)[1]) for k in read_status(status["m-0"])["assigned"]}
        produce(kafka_bootstrap, topic, phase2, partitions=6)
        wait_for(lambda: group_state(kafka_bootstrap, group)[1] == labelled, 150,
                 "every labelled event of both phases in the group model")
        assert {int(k.rsplit(":", 1)[1]) for k in read_status(status["m-0"])["assigned"]} == mine
        for name in ("m-b", "m-c", "m-0"):
            assert procs[name].poll() is None, procs[name].stderr.read().decode()[-3000:]
            procs[name].send_signal(signal.SIGTERM)
        for name in ("m-b", "m-c", "m-0"):
            assert procs[name].wait(60) == 0
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
    found, total = group_state(kafka_bootstrap, group)
    assert total == labelled  # Σ_k n_k == events learned, exactly (exactly-once; a SIGKILL mid-interval)
    got = read_predictions(kafka_bootstrap, predictions, len(phase2) // 10)
    assert len(got) == len(phase2) // 10
    # Nobody served an untrained model. (A survivor may lack the last checkpoint of another member for a
    # moment: one whose state partition the killed member's open transaction holds back until it is fenced.)
    stale = [p for _, p in got if p["n_samples_seen"] < 0.9 * len(phase1)]
    assert not stale, (stale[:5], len(stale))
    first = next(p for _, p in got if p["partition"] in mine)
    # the replacement's first prediction: the group model (the others' and the lost member's events)
    assert first["n_samples_seen"] >= len(phase1) and first["group_version"] >= len(phase1)


@pytest.mark.kafka
def test_a_rebalance_storm_keeps_counts_exact_and_models_fresh(kafka_bootstrap: str, kafka_topic: Any,
                                                              tmp_path: Path) -> None:
    """Members (threads) join and leave every ~2 s while the events arrive; at the end Σ_k n_k is the number
    of labelled events, and every prediction was made by a model synchronised at most two sync intervals
    (plus a second for the batch it was in) before it was published."""
    import threading

    topic, predictions = kafka_topic(6), kafka_topic(1)
    group = f"g-{topic}"
    values = encoded(events(3000, seed=6), "storm", unlabelled_every=10)
    labelled = sum(1 for v in values if b'"y"' in v)
    done = threading.Event()

    def feed() -> None:  # ~250 events/s
        for i in range(0, len(values), 50):
            produce(kafka_bootstrap, topic, values[i:i + 50], partitions=6)
            time.sleep(0.2)
        done.set()

    def member(i: int) -> Running:
        return Running(Learner(config(kafka_bootstrap, topic, tmp_path, f"s-{i}", group_id=group, every=50,
                                      max_poll_records=50, predictions_topic=predictions)))

    members, started = [member(0)], 1
    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    rng = random.Random(7)
    try:
        while not done.is_set():
            if len(members) < 3 and (len(members) == 1 or rng.random() < 0.5):
                members.append(member(started))
                started += 1
            else:
                members.pop(rng.randrange(len(members))).stop()
            done.wait(2.0)
        wait_for(lambda: group_state(kafka_bootstrap, group)[1] == labelled, 120,
                 "every labelled event in the group model")
    finally:
        for m in members:
            m.stop()
        feeder.join(60)
    assert started >= 4  # a storm indeed
    found, total = group_state(kafka_bootstrap, group)
    assert total == labelled  # Σ_k n_k: exactly once across every join and leave
    got = read_predictions(kafka_bootstrap, predictions, len(values) - labelled)
    assert len(got) >= len(values) - labelled
    ages = [ts / 1000 - p["group_synced_at"] for ts, p in got]
    assert max(ages) <= 2 * SYNC + 1.0, sorted(ages)[-5:]
