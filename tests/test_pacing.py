"""Reading the events and labels in step (consumers.pacing), as rules, without a broker.

A poll is simulated as the worst client could do it: it returns up to ``batch`` records of any partition
that is not paused and has records left (hypothesis picks which). The rules must keep reading going (never
all partitions with records left paused), keep what is read ahead of a partner that is still behind to one
poll's records, and give up a pause on a partner that brings nothing. The learner end to end (both topics
behind, a small store, a short TTL: every event joined) is in tests/test_delayed_labels.py; the kafka-python
work-around that lets a paused and resumed partition get its records again in tests/test_source_pause.py.
"""

from __future__ import annotations

from collections import namedtuple

from hypothesis import given, settings
from hypothesis import strategies as st
from kafka import TopicPartition

from consumers.pacing import STALLED_SECONDS, Pacer

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
