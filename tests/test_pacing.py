"""Reading the events and labels in step (consumers.pacing), as rules, without a broker.

A poll is simulated as the worst client could do it: it returns up to ``batch`` records of any partition
that is not paused and has records left (hypothesis picks which). The rules must keep reading going (never
all partitions with records left paused), keep what is read ahead of a partner that is still behind to one
poll's records, and give up a pause on a partner that brings nothing. The learner end to end (both topics
behind, a small store, a short TTL: every event joined) is in tests/test_delayed_labels.py; the kafka-python
work-around that lets a paused and resumed partition get its records again in tests/test_source_pause.py.
"""

from __future__ import annotations

import random
from collections import namedtuple
from typing import Any, NamedTuple

from hypothesis import given, settings
from hypothesis import strategies as st
from kafka import TopicPartition
from kafka.errors import KafkaError

from consumers import Learner, LearnerConfig
from consumers.pacing import STALLED_SECONDS, Pacer
from consumers.source import PACED

R = namedtuple("R", "offset timestamp")
EV, LB = TopicPartition("events", 0), TopicPartition("labels", 0)


def times(draw_gaps: list[int]) -> list[int]:
    out, t = [], 0
    for g in draw_gaps:
        t += g
        out.append(t)
    return out


gaps = st.lists(st.integers(0, 50), min_size=0, max_size=120)


@settings(max_examples=300, deadline=None)
@given(gaps, gaps, st.integers(1, 20), st.lists(st.booleans(), min_size=1, max_size=400),
       st.sampled_from([0, 30, 200, 10**9]), st.booleans())
def test_reading_goes_on_and_nothing_runs_ahead_of_a_partner_still_behind_by_more_than_a_poll(
        ev_gaps: list[int], lb_gaps: list[int], batch: int, picks: list[bool], max_lead: int,
        crowded: bool) -> None:
    logs = {EV: times(ev_gaps), LB: times(lb_gaps)}
    read = {EV: 0, LB: 0}
    paused: set[TopicPartition] = set()
    pacer = Pacer("labels", record=lambda r: r, max_lead_ms=max_lead, crowded=lambda: crowded,
                  clock=lambda: 0.0)
    pacer.assigned({tp: len(log) for tp, log in logs.items()})
    lead = 0 if crowded else max_lead  # what may be read ahead of a partner still behind, beyond a poll
    for i in range(10 * (len(logs[EV]) + len(logs[LB])) + 2):
        open_ = [tp for tp in (EV, LB) if tp not in paused and read[tp] < len(logs[tp])]
        if not open_:
            assert all(read[tp] == len(logs[tp]) for tp in logs), (read, paused)  # never stuck
            break
        tp = open_[picks[i % len(picks)] % len(open_)]
        n0 = read[tp]
        read[tp] = min(n0 + batch, len(logs[tp]))
        pacer.read({tp: [R(o, logs[tp][o]) for o in range(n0, read[tp])]})
        pause, resume = pacer.step({EV, LB}, lambda tp: None)
        assert not pause & paused and resume <= paused
        paused = (paused | pause) - resume
        assert paused == pacer.held and len(paused) <= 1  # never both: one of them is the earlier
        for a, b in ((EV, LB), (LB, EV)):  # read ahead of a partner still behind: one poll at most
            if read[b] < len(logs[b]):
                limit = logs[b][read[b] - 1] + lead if read[b] else -1
                ahead = sum(t > limit for t in logs[a][:read[a]])
                assert ahead <= batch, (a, ahead, batch)
        for tp in paused:  # held only while its partner, behind, has not caught up
            other = LB if tp == EV else EV
            assert read[other] < len(logs[other])
            assert not read[other] or logs[other][read[other] - 1] < logs[tp][read[tp] - 1]
    else:
        raise AssertionError("reading did not end")


def test_a_partner_that_brings_nothing_holds_nothing_back() -> None:
    now = [0.0]
    pacer = Pacer("labels", record=lambda r: r, max_lead_ms=0, clock=lambda: now[0])
    pacer.assigned({EV: 100, LB: 100})
    pacer.read({LB: [R(9, 1_000)]})
    assert pacer.step({EV, LB}, lambda tp: None) == ({LB}, set())  # events 0-99 still to read
    now[0] = STALLED_SECONDS - 0.1
    assert pacer.step({EV, LB}, lambda tp: None) == (set(), set())
    now[0] = STALLED_SECONDS  # the events never came (deleted by retention, say)
    assert pacer.step({EV, LB}, lambda tp: None) == (set(), {LB})
    pacer.read({EV: [R(0, 10)]})  # they come after all: reading in step again
    assert pacer.step({EV, LB}, lambda tp: None) == ({LB}, set())


def test_no_pause_without_timestamps_or_without_a_partner_behind() -> None:
    pacer = Pacer("labels", record=lambda r: r, max_lead_ms=0, clock=lambda: 0.0)
    pacer.assigned({EV: 10, LB: 10})
    pacer.read({LB: [R(9, -1)], EV: [R(3, 5)]})  # labels without timestamps
    assert pacer.step({EV, LB}, lambda tp: None) == (set(), set())
    pacer.read({LB: [R(9, 50)], EV: [R(9, 5)]})  # events read to their end: nothing to wait for
    assert pacer.step({EV, LB}, lambda tp: None) == (set(), set())
    later = Pacer("labels", record=lambda r: r, max_lead_ms=0, from_start=False, clock=lambda: 0.0)
    later.assigned({EV: 10, LB: 10})  # read from the end (auto_offset_reset=latest): nothing behind
    later.read({LB: [R(10, 50)]})
    assert later.step({EV, LB}, lambda tp: None) == (set(), set())


def test_the_pair_is_by_partition_number_and_a_revoked_partition_is_forgotten() -> None:
    e1, l1 = TopicPartition("events", 1), TopicPartition("labels", 1)
    pacer = Pacer("labels", record=lambda r: r, max_lead_ms=0, clock=lambda: 0.0)
    pacer.assigned({EV: 100, LB: 100, e1: 100, l1: 100})
    pacer.read({LB: [R(5, 900)], EV: [R(5, 100)], l1: [R(5, 100)], e1: [R(5, 900)]})
    assert pacer.step({EV, LB, e1, l1}, lambda tp: None) == ({LB, e1}, set())
    assert pacer.step({EV, e1, l1}, lambda tp: None) == (set(), set())  # labels 0 revoked
    assert pacer.held == {e1}


# --------------------------------------------------------------------------------------------------
# Who pauses a partition: the learner's seeks and the pacing, through the source's reasons


class _Rec(NamedTuple):
    topic: str
    partition: int
    offset: int
    timestamp: int
    value: bytes


class _WorstClient:
    """A kafka-python-like consumer as unhelpful as a real one may be: a poll gives any number of records
    of any partitions that are assigned, not paused and not at their end (or none), a partition may go back
    on its own (as librdkafka once did after a seek), the committed offsets may not come (sought at a later
    poll), an assignment starts every partition unpaused (at offset 0: no offset is committed, and
    auto_offset_reset is earliest), and a pause, resume or seek of a partition not assigned is an error."""

    def __init__(self, logs: dict[TopicPartition, list[int]], rng: random.Random) -> None:
        self.logs, self.rng = logs, rng
        self.assigned: set[TopicPartition] = set()
        self.paused: set[TopicPartition] = set()
        self.position: dict[TopicPartition, int] = {}
        self.fair = False

    def assign(self, tps: set[TopicPartition]) -> None:
        self.assigned, self.paused = set(tps), set()
        self.position = dict.fromkeys(tps, 0)

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def _mine(self, tps: tuple) -> None:
        assert set(tps) <= self.assigned, f"{set(tps) - self.assigned} not assigned"

    def pause(self, *tps: TopicPartition) -> None:
        self._mine(tps)
        self.paused |= set(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self._mine(tps)
        self.paused -= set(tps)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self._mine((tp,))
        self.position[tp] = offset

    def committed(self, tp: TopicPartition, metadata: bool = False, timeout_ms: int = 0) -> None:
        if not self.fair and self.rng.random() < 0.3:  # the coordinator is away: sought at a later poll
            raise KafkaError("no coordinator")
        return None

    def end_offsets(self, tps: list, timeout_ms: int = 0) -> dict:
        return {tp: len(self.logs[tp]) for tp in tps}

    def highwater(self, tp: TopicPartition) -> int:
        return len(self.logs[tp])

    def poll(self, fair: bool) -> dict[TopicPartition, tuple[list[_Rec], list[bytes]]]:
        self.fair = fair
        rng, out = self.rng, {}
        for tp in sorted(self.assigned - self.paused):
            at, log = self.position[tp], self.logs[tp]
            if not fair and at and rng.random() < 0.03:  # back on its own
                at = self.position[tp] = rng.randrange(at)
            if at >= len(log) or (not fair and rng.random() < 0.4):
                continue
            n = min(rng.randint(1, 30), len(log) - at)
            records = [_Rec(tp.topic, tp.partition, o, log[o], b"") for o in range(at, at + n)]
            out[tp] = (records, [r.value for r in records])  # as Source.poll gives them
            self.position[tp] = at + n
        return out


@settings(max_examples=150, deadline=None)
@given(st.randoms(use_true_random=False), st.integers(20, 300), st.integers(20, 300))
def test_pauses_for_seeks_and_for_pacing_never_undo_each_other_and_reading_always_ends(
        tmp_path_factory: Any, rng: random.Random, n_events: int, n_labels: int) -> None:
    """The learner's settling of each poll (seeks of assigned, rewound and rolled back partitions; the
    pacing) against :class:`_WorstClient`, with rebalances and rollbacks in between: the client has a
    partition paused exactly when the source keeps a reason for it, every reason is one that still holds
    (waiting to be sought; held back while not waiting), never both partners held back, and once the client
    is fair and nothing more happens, everything is read within a bounded number of polls (a partner whose
    position the learner no longer knows, after a rollback without a checkpoint, counts as not read yet:
    the stall guard ends that pause)."""
    events, labels = TopicPartition("ev", 0), TopicPartition("lb", 0)
    logs = {events: sorted(rng.randrange(10_000) for _ in range(n_events)),
            labels: sorted(rng.randrange(10_000) for _ in range(n_labels))}
    cfg = LearnerConfig(bootstrap_servers="nowhere:9092", topics=["ev"], labels_topic="lb", group_id="g",
                        checkpoint_dir=str(tmp_path_factory.mktemp("ckpt")), label_ttl=rng.choice([0.1, 2.0]),
                        checkpoint_every_messages=10**9, checkpoint_every_seconds=10**6)
    learner = Learner(cfg)
    client = _WorstClient(logs, rng)
    source, state = learner._source, learner._state
    source.consumer = client
    now = [0.0]
    learner._pacer.clock = lambda: now[0]  # a poll every 50 ms: the stall guard ends a pause in 100 polls

    def rebalance() -> None:
        if client.assigned:
            learner.on_revoked(client.assignment())
        client.assign({events, labels})
        source.assigned(client.assignment())  # what the rebalance listener does
        learner.on_assigned(client.assignment())

    def check() -> None:
        assert client.paused == {tp for tp, why in source.paused.items() if why}, source.paused
        assert set(source.paused) <= client.assigned
        paced = source.held(PACED)
        assert not paced & source.pending and paced == learner._pacer.held
        assert len(paced) <= 1  # one of two partners is the earlier

    def settle(fair: bool) -> None:
        now[0] += 0.05
        work = learner._settle(client.poll(fair))
        for tp, (records, _) in work.items():  # learned: the model's position moves on
            state.positions[tp] = records[-1].offset + 1
        check()

    rebalance()
    for _ in range(rng.randint(0, 60)):
        roll = rng.random()
        if roll < 0.05:
            rebalance()
        elif roll < 0.08:
            state.needs_reload = True  # a failed checkpoint: every partition sought back
        settle(fair=False)
    ends = {tp: len(log) for tp, log in logs.items()}
    for _ in range(2 * (n_events + n_labels) + int(STALLED_SECONDS / 0.05)):  # fair now: reading must end
        if client.position == ends:
            break
        settle(fair=True)
    settle(fair=True)  # one more poll (empty): nothing left to hold back
    assert client.position == ends, (client.position, source.paused, learner._pacer._time)
    assert not source.paused and not client.paused
