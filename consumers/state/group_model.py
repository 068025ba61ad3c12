"""One model for the whole consumer group, over the state topic (issue 12): :class:`GroupModel`.

The math is :mod:`stream_logreg.mixing` (read its docstring first: why the group model is the *sum* of the
members' contributions, how each part of the state combines). This module is the Kafka side.

What each state key holds
-------------------------
With the group model on (``state_store="kafka"``, ``sync_every_seconds`` > 0, the default 5 s), the
checkpoint of state key k is **D_k, the member's own contribution** (a full model state: everything its
own events changed, with its own ``n_samples_seen``), together with the offsets it covers, written in the
same checkpoint (with ``exactly-once``: in the same transaction as the consumer offsets). So each event's
update is in exactly one D_k exactly once, whatever crashes and rebalances happen — the per-member
contract of :mod:`consumers.learner` applies unchanged to D_k. The group model is G = Σ_k D_k over the
newest committed checkpoint of every key of the topic: a pure function of the topic, with no coordinator.
Counting is the check: Σ_k n_k (each checkpoint's ``n_samples_seen``) is the number of events learned.

The member's loop
-----------------
The member learns on its *working* model W = D_self + O, where O = Σ_{k≠self} D_k as of its last
synchronisation. Every checkpoint is a synchronisation, and the checkpoint interval is at most
``sync_every_seconds``:

1. D_self := W − O (:func:`~stream_logreg.mixing.difference`), checkpointed with the offsets;
2. the state topic is read (:class:`StateTail`, what is new since the last read, within a bounded time);
3. if any other key has a newer contribution, O := Σ_{k≠self} D_k and W := D_self + O; else W stays.

A member with nothing to checkpoint still synchronises every ``sync_every_seconds`` (steps 2-3). On
start, on a roll-back to the last checkpoint and on taking over a lost member's key, W := D_self + O with
O read to the end of the topic first: a new or replacement member's first prediction is the group
model's. **A single member is bitwise the per-member learner**: with no other contribution, O is empty,
D_self *is* W (the same object) and nothing is computed.

Versions and staleness
----------------------
``version`` is the number of events the group model covered at this member's last synchronisation
(``n_samples_seen`` of W just after it: Σ_k n_k as read); ``synced_at`` the wall-clock time of that
synchronisation. Both go into every prediction (``group_version``, ``group_synced_at``): a prediction is
made by a model that lacks at most the others' events of the last ``sync_every_seconds`` plus one read
(and ``version`` never decreases for a member, as each key's committed n_k never does). Which events are
in a member's W at a given moment depends on timing: bitwise reproducibility holds for a single member
only; the counts are exact.

Staleness in events, and what it costs
--------------------------------------
The sum applies each event's update once, computed on a model that lacks the other members' events since
their last checkpoint. When many events pass between synchronisations (a backlog read at full speed), the
members' concurrent corrections add up and overshoot: on a fixed logistic stream with AdaGrad(0.3), 4
members each synchronising every 10 of their events stay within 1.2% of one learner's progressive log
loss (held-out: 0.04%), every 100 events cost 18% (held-out 2%), and with no synchronisation until the
end the held-out loss doubles (the sum of four full solutions). A checkpoint is due every
``checkpoint_every_messages`` or ``sync_every_seconds``, whichever comes first: keep the events between
two of them small against what the model needs to converge (tests/test_group_model.py uses 10).

State keys and their number
---------------------------
One key per member identity (``group_instance_id``). A replacement that takes over a lost member's key
continues it (its D, its offsets); the keys of members that never come back stay in the topic and in
the sum (their events counted once, their contribution frozen). Their number is bounded by the number of
distinct member identities ever used with the group: give members stable identities (StatefulSets,
``--group-instance-id``) to keep it small. Memory: one decoded model state per key, plus the chunks of a
checkpoint in flight.

Misuse: a checkpoint of other hyper-parameters under another key is skipped with a warning (it is not
part of this group model); a sum that would not be a valid model (non-finite) is refused, logged, and
the member keeps its previous O.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka import errors as kafka_errors

from consumers.state.kafka_store import _client_settings, _Commit, _Index, decode_checkpoint, record_name
from stream_logreg.checkpoints import CheckpointError
from stream_logreg.mixing import State, combine, difference, to_model

__all__ = ["Contribution", "GroupModel", "StateTail"]

log = logging.getLogger(__name__)

_POLL_MS = 200
_FETCH_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Contribution:
    """The newest committed checkpoint of one state key, decoded."""

    key: str
    checkpoint_id: str
    state: State
    n_samples_seen: int


class StateTail:
    """A ``read_committed`` reader of every partition of the state topic that keeps, per state key, its
    newest committed checkpoint that verifies (:attr:`contributions`). Each :meth:`read` reads what is
    new since the last one.

    The record parsing and verification are :mod:`consumers.state.kafka_store`'s (``record_name``, the
    index of commits and chunks, ``decode_checkpoint``). A chunk's bytes are held only until the commit
    record of its checkpoint is read (the chunks and the commit of one checkpoint are one transaction,
    in order); chunks of checkpoints older than a key's newest are dropped.
    """

    def __init__(self, bootstrap_servers: Any, topic: str, *, expect_config: dict | None = None,
                 timeout: float = 30.0, client_settings: dict[str, Any] | None = None) -> None:
        self.topic = topic
        self.expect_config = expect_config
        self.timeout = timeout
        self.contributions: dict[str, Contribution] = {}
        self.skipped = 0  # checkpoints that did not verify or do not belong to this group model
        self.ignore: set[str] = set()  # state keys not to decode (the member's own)
        self._indexes: dict[str, _Index] = {}
        self._bytes: dict[str, dict[str, bytes]] = {}
        self.bootstrap_servers = bootstrap_servers
        self.client_settings = dict(client_settings or {})
        self._consumer: KafkaConsumer | None = None
        self._partitions: list[TopicPartition] = []

    def _assign(self, deadline: float) -> bool:
        if self._consumer is None:  # (again after close(): from the beginning)
            self._consumer = KafkaConsumer(
                bootstrap_servers=self.bootstrap_servers, group_id=None, enable_auto_commit=False,
                isolation_level="read_committed", max_partition_fetch_bytes=_FETCH_BYTES,
                fetch_max_bytes=_FETCH_BYTES, request_timeout_ms=max(30500, int(self.timeout * 1000) + 500),
                bootstrap_timeout_ms=int(self.timeout * 1000),
                **_client_settings(KafkaConsumer, self.client_settings),
            )
            self._partitions = []
        if self._partitions:
            return True
        while time.monotonic() < deadline:
            found = self._consumer.partitions_for_topic(self.topic)
            if found:
                self._partitions = [TopicPartition(self.topic, p) for p in sorted(found)]
                self._consumer.assign(self._partitions)
                self._consumer.seek_to_beginning(*self._partitions)
                return True
            time.sleep(0.1)
        return False

    def read(self, budget: float) -> bool:
        """Read the topic up to its end as of now, for at most ``budget`` seconds; return whether the end
        was reached (else the rest is read next time). Raises ``CheckpointError`` if the topic cannot be
        read at all."""
        deadline = time.monotonic() + budget
        try:
            if not self._assign(deadline):
                return False
            consumer = self._consumer
            assert consumer is not None
            ends = consumer.end_offsets(self._partitions)
            behind = list(self._partitions)
            while True:  # a partition at its end stays there (positions only grow): asked once, not again
                behind = [tp for tp in behind
                          if consumer.position(tp, timeout_ms=max(1, int(budget * 1000))) < ends[tp]]
                left = deadline - time.monotonic()
                if not behind:
                    return True
                if left <= 0:
                    return False
                for records in consumer.poll(timeout_ms=int(min(left * 1000, _POLL_MS))).values():
                    for record in records:
                        self._add(record)
        except kafka_errors.KafkaError as exc:
            raise CheckpointError(f"could not read the state topic {self.topic!r}: {exc}") from exc

    def _add(self, record: Any) -> None:
        name = record_name(record.key)
        if name is None:
            return
        key, cid, rest = name
        if key in self.ignore:
            self.contributions.pop(key, None)
            return
        current = self.contributions.get(key)
        if current is not None and cid < current.checkpoint_id:
            return  # superseded (compaction leftovers, tombstones of old checkpoints)
        index = self._indexes.setdefault(key, _Index({}, {}))
        index.add(key, cid, rest, record)
        if len(rest) == 2 and rest[0] == "chunk":
            chunk = f"{key}/{cid}/chunk/{rest[1]}"
            held = self._bytes.setdefault(key, {})
            if record.value is None:
                held.pop(chunk, None)
            else:
                held[chunk] = record.value
        elif rest == ("commit",):
            if record.value is None:
                if current is not None and current.checkpoint_id == cid:
                    del self.contributions[key]  # its state was deleted
                return
            commit = index.commits.get(cid)
            if isinstance(commit, _Commit):
                self._decode(key, cid, commit, index)

    def _decode(self, key: str, cid: str, commit: _Commit, index: _Index) -> None:
        held = self._bytes.get(key, {})
        try:
            problem = index.problem(commit)
            if problem:
                raise CheckpointError(problem)
            data = b"".join(held[name] for name, _, _ in commit.chunks)
            ckpt = decode_checkpoint(cid, commit, data, self.expect_config)
            state = ckpt.model.state()
        except (CheckpointError, KeyError, ValueError) as exc:
            self.skipped += 1
            log.warning("the contribution %s of state key %r is not part of the group model: %s", cid, key,
                        exc, extra={"checkpoint_id": cid, "reason": "contribution_skipped"})
            return
        self.contributions[key] = Contribution(key, cid, state, int(ckpt.model.n_samples_seen))
        # what is older than the newest is no longer needed
        self._bytes[key] = {k: v for k, v in held.items() if k.split("/")[1] > cid}
        index.chunks = {k: v for k, v in index.chunks.items() if k.split("/")[1] > cid}
        index.commits = {c: v for c, v in index.commits.items() if c >= cid}

    def close(self) -> None:
        """Close the consumer (a later :meth:`read` opens a new one)."""
        if self._consumer is not None:
            self._consumer.close()
        self._consumer, self._partitions = None, []


class GroupModel:
    """A member's view of the group model (see the module docstring): the others' sum O, its version, and
    the steps the checkpointing calls.

    >>> group = GroupModel(StateTail("localhost:9092", "lr-state"), sync_every_seconds=5)  # doctest: +SKIP
    >>> working = group.start(own_contribution, key="member-1")          # doctest: +SKIP
    >>> to_save = group.contribution(working)                            # doctest: +SKIP
    >>> working = group.sync(to_save, working, key="member-1")           # doctest: +SKIP
    """

    def __init__(self, tail: StateTail, sync_every_seconds: float = 5.0, read_budget: float = 1.0) -> None:
        self.tail = tail
        self.sync_every_seconds = sync_every_seconds
        self.read_budget = read_budget
        self.others: State | None = None
        self._others_ids: dict[str, str] = {}
        self.version = 0
        self.synced_at: float | None = None
        self.syncs = 0
        self.sync_seconds = 0.0  # wall time spent synchronising (reading and summing), for the benchmark
        self.sync_cpu_seconds = 0.0  # CPU time of the synchronising thread in it (not the client's IO)
        self._last = time.monotonic()

    def due(self) -> bool:
        return time.monotonic() - self._last >= self.sync_every_seconds

    def start(self, own: Any, key: str) -> Any:
        """The working model of a member whose own contribution is ``own`` (restored, or fresh): the
        state topic is read to its end first (within the tail's ``timeout``)."""
        self._others_ids = {}
        self.others = None
        return self._sync(own, own, key, self.tail.timeout)

    def contribution(self, working: Any) -> Any:
        """D_self = W − O, the model to checkpoint (``working`` itself when there are no others)."""
        if self.others is None:
            return working
        return to_model(difference(working.state(), self.others))

    def sync(self, own: Any, working: Any, key: str) -> Any:
        """After a checkpoint of ``own`` (or every ``sync_every_seconds``): read what is new; the new
        working model (``working`` itself if no other contribution changed)."""
        return self._sync(own, working, key, self.read_budget)

    def _sync(self, own: Any, working: Any, key: str, budget: float) -> Any:
        t0, cpu0 = time.monotonic(), time.thread_time()
        self.tail.ignore = {key}
        try:
            try:
                self.tail.read(budget)
            except CheckpointError as exc:
                log.warning("could not read the group's contributions (retried at the next sync): %s", exc,
                            extra={"reason": "group_read_failed"})
            found = {k: c for k, c in self.tail.contributions.items() if k != key}
            ids = {k: c.checkpoint_id for k, c in found.items()}
            if ids != self._others_ids:
                try:
                    others = combine([found[k].state for k in sorted(found)]) if found else None
                    rebuilt = own if others is None else to_model(combine([own.state(), others]))
                except ValueError as exc:
                    log.error("the group's contributions do not sum to a valid model, keeping the previous "
                              "one: %s", exc, extra={"reason": "group_sum_refused"})
                else:
                    self.others, self._others_ids, working = others, ids, rebuilt
            self.version = max(self.version, int(working.n_samples_seen))
            self.synced_at = time.time()
            self.syncs += 1
            return working
        finally:
            self._last = time.monotonic()
            self.sync_seconds += self._last - t0
            self.sync_cpu_seconds += time.thread_time() - cpu0

    def close(self) -> None:
        self.tail.close()
