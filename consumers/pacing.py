"""Reading the events and the labels in step, by record time, while the learner catches up (delayed labels).

A learner that is behind (after a stop or a crash, or started on a backlog) gets from its client as many
bytes of each partition as a fetch allows. Labels of ~30 bytes then run ahead of events of hundreds of
bytes, ten times or more in count and in record time; a fetch may as well bring events far ahead of their
labels. What is read ahead waits in the join store for a partner that is still in Kafka: it fills the store
(the oldest entries evicted, their events never learned) and the stream time it brings expires what waits
(``--label-ttl`` counts in record time). Live, neither topic is behind and none of this happens.

So the learner holds back the partition that has read ahead, as Kafka Streams does (it processes the
record with the smallest timestamp among its partitions). With kafka-python, which keeps what it fetched
for a paused partition, at any lead; with librdkafka, which drops it (a pause costs a fetch again), only
once reading ahead would cost: a lead of half the TTL, or a store half full.
With ``P(e)`` the labels partition of the same number as events partition ``e`` (they are co-partitioned),
after every poll

- labels partition ``L`` is paused when some events partition ``e`` with ``P(e) = L`` still has records to
  read (its position is before its end), the last label read from ``L`` has a later timestamp than the last
  event read from ``e``, and either by more than half the TTL (``max_lead_ms``) or the store is more than
  half full (``crowded()``);
- events partition ``e`` is paused likewise against ``P(e)``;
- a paused partition is resumed once its partner has caught up with it in time, or has nothing more to read.

A partition not read yet, or whose records carry no timestamp (-1), counts as the earliest while it has
records to read (its partner is held back until it has read them); one with no timestamp holds nothing
back. Whether a partition has records to read is its position (the record after the last one read, else
where it was sought to, else its start) against its end offset (the larger of the one found when it was
assigned and the last one fetched). A partition that should have records but brings none for
:data:`STALLED_SECONDS` (its records deleted by retention, say) holds nothing back until it brings some:
no pause waits on a partition that does not move.

The partition that is behind in time is never paused, so reading always goes on: a pause ends when its
partner reaches the paused one's time or the end of its log. What a poll had already brought is learned
(so a partition reads at most one poll's records, up to ``--max-poll-records``, past the point where it is
held back). This changes only when records are read, never which records are learned or in which order
within a partition: the exactly-once contract (design.md) is the same. A paused partition is resumed from
the record after the last one read, by either client.

The pacer only says which partitions should be held back; the pauses are the source's
(:meth:`consumers.source.Source.hold` with the reason ``"paced"``), which also pauses partitions for other
reasons (to seek them) and lets go of every pause of a revoked partition. Before each :meth:`Pacer.step`
the learner sets :attr:`Pacer.held` to what the source holds back, and after it pauses and resumes the
difference: a pause the pacer did not ask for is never lifted by it, nor one it asked for left behind.
"""

from __future__ import annotations

import time as _time
from collections.abc import Callable, Iterable
from typing import Any

from kafka import TopicPartition

__all__ = ["STALLED_SECONDS", "Pacer"]

#: A partition to read that brings no record for this long holds nothing back (see the module's docstring).
STALLED_SECONDS = 5.0


class Pacer:
    """Holds back the events or labels partitions that have read ahead, in record time, of their partner.

    ``labels_topic``: the labels topic (every other topic read is an events topic). ``record``: the client's
    record view (``topic partition offset timestamp``). ``max_lead_ms``: the lead in record time beyond
    which a partition is held back (half the TTL); ``crowded()``: whether the store is so full that any lead
    is (more than half its bounds). ``from_start``: whether a partition with no known position is read from
    its start (``auto_offset_reset="earliest"``), else from its end. :meth:`assigned` is told the end offsets
    of newly assigned partitions, :meth:`read` each poll's records (those that will be learned); :meth:`step`
    then returns the partitions to pause and to resume.

    >>> from collections import namedtuple
    >>> from kafka import TopicPartition as TP
    >>> R = namedtuple("R", "offset timestamp")
    >>> events, labels = TP("events", 0), TP("labels", 0)
    >>> pacer = Pacer("labels", record=lambda r: r, max_lead_ms=3_000, clock=lambda: 0.0)
    >>> pacer.assigned({events: 50, labels: 100})
    >>> pacer.read({labels: [R(99, 5_000)]})       # the labels came first: events 0-49 are still to read
    >>> pacer.step({events, labels}, lambda tp: None)
    ({TopicPartition(topic='labels', partition=0)}, set())
    >>> pacer.read({events: [R(29, 4_000)]})       # not caught up yet (though within 3 s)
    >>> pacer.step({events, labels}, lambda tp: None)
    (set(), set())
    >>> pacer.read({events: [R(49, 6_000)]})       # the events caught up in time
    >>> pacer.step({events, labels}, lambda tp: None)
    (set(), {TopicPartition(topic='labels', partition=0)})
    """

    def __init__(self, labels_topic: str, record: Callable[[Any], Any], max_lead_ms: int,
                 crowded: Callable[[], bool] = lambda: False, from_start: bool = True,
                 clock: Callable[[], float] = _time.monotonic) -> None:
        self.labels_topic = labels_topic
        self.record = record
        self.max_lead_ms = max_lead_ms
        self.crowded = crowded
        self.from_start = from_start
        self.clock = clock
        self.held: set[TopicPartition] = set()
        self._time: dict[TopicPartition, int] = {}  # the timestamp of the last record read
        self._next: dict[TopicPartition, int] = {}  # the offset after it
        self._end: dict[TopicPartition, int] = {}  # the end offset found when assigned
        self._moved: dict[TopicPartition, float] = {}  # when it was assigned or last brought records

    def assigned(self, ends: dict[TopicPartition, int]) -> None:
        """Partitions (re)assigned or sought, with their end offsets then."""
        now = self.clock()
        for tp, end in ends.items():
            self._end[tp], self._moved[tp] = end, now

    def read(self, batch: dict[TopicPartition, list]) -> None:
        """Note the last record read of each partition of a poll (records in offset order)."""
        view, now = self.record, self.clock()
        for tp, records in batch.items():
            if records:
                last = view(records[-1])
                self._time[tp], self._next[tp], self._moved[tp] = last.timestamp, last.offset + 1, now

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """Partitions sought, revoked or lost: what was read of them no longer says where they are (not
        held back any more: the next :meth:`step` does not pace them while they wait to be sought)."""
        for tp in partitions:
            self._time.pop(tp, None)
            self._next.pop(tp, None)
            self.held.discard(tp)

    def step(self, assignment: set[TopicPartition], fetched_end: Callable[[TopicPartition], int | None],
             position: Callable[[TopicPartition], int | None] = lambda tp: None
             ) -> tuple[set[TopicPartition], set[TopicPartition]]:
        """``(to_pause, to_resume)`` among the partitions of ``assignment``; :attr:`held` is updated.

        ``fetched_end(tp)``: a partition's end offset as last fetched; ``position(tp)``: where it was
        sought to (both None when not known)."""
        self.forget(self.held - assignment)
        for gone in set(self._end) - assignment:
            del self._end[gone]
            self._moved.pop(gone, None)
        labels, time, nxt, now = self.labels_topic, self._time, self._next, self.clock()

        def behind(tp: TopicPartition) -> bool:  # has records to read, and brings them
            ends = [e for e in (self._end.get(tp), fetched_end(tp)) if e is not None]
            if not ends or now - self._moved.get(tp, now) >= STALLED_SECONDS:
                return False
            n = nxt.get(tp)
            if n is None:
                n = position(tp)
            if n is None:
                return self.from_start and max(ends) > 0
            return n < max(ends)

        held, max_lead = self.held, self.max_lead_ms
        crowded: list[bool] = []  # asked once, when needed

        def ahead(t: int, of: int, tp: TopicPartition) -> bool:  # partner time ``of``: -1 if not known
            if t < 0 or t <= of:
                return False
            if tp in held or of < 0 or t - of > max_lead:  # held until the partner catches up
                return True
            if not crowded:
                crowded.append(self.crowded())
            return crowded[0]

        by_number: dict[int, tuple[list, list]] = {}
        for tp in assignment:
            by_number.setdefault(tp.partition, ([], []))[tp.topic == labels].append(tp)
        want: set[TopicPartition] = set()
        for events, label_tps in by_number.values():
            for lp in label_tps:
                tl = time.get(lp, -1)
                if any(behind(e) and ahead(tl, time.get(e, -1), lp) for e in events):
                    want.add(lp)
                if behind(lp):
                    want.update(e for e in events if ahead(time.get(e, -1), tl, e))
        pause, resume = want - self.held, self.held - want
        self.held = want
        return pause, resume
