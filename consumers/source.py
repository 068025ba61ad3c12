"""The learner's input: one ``KafkaConsumer``, its group membership and its rebalances.

:class:`Source` connects (bounded by ``connect_timeout`` and interruptible), subscribes with a rebalance
listener that forwards to a :class:`RebalanceHandler` (the learner), pauses newly assigned partitions until
the learner has sought them, commits, and closes within a bound.

Static membership (KIP-345)
---------------------------
The consumer joins with a ``group_instance_id`` (default: derived from the host name and the checkpoint
directory, see :func:`default_instance_id`). A member that restarts with the same id — after a crash or a
SIGKILL — takes its place back at once, with its partitions, instead of waiting for the broker to expire the
dead member after the session timeout (45 s by default). A static member does not send LeaveGroup on close,
so on a graceful stop :meth:`Source.close` removes it from the group explicitly (an admin LeaveGroup by
instance id): its partitions move to the other members at once. Two processes must not share an instance id
(the broker fences the older one): two learners on one host need two checkpoint directories, or their own
``--group-instance-id``.

Threads: where the rebalance callbacks run (kafka-python 3.0.12)
-----------------------------------------------------------------
``KafkaConsumer`` runs an IO thread (``kafka-io-*``) that owns the network loop. The rebalance listener is
invoked only from three coroutines of ``ConsumerCoordinator``: ``_on_join_prepare_async`` (revoked/lost) and
``_on_join_complete_async`` (assigned), both awaited by ``join_group_async`` ← ``ensure_active_group``, which
``coordinator.poll()`` runs through ``NetworkSelector.run()``, called from ``KafkaConsumer.poll()``; and
``_on_close_prepare_async`` (revoked at close), run the same way from ``KafkaConsumer.close()``. ``run()``
schedules the coroutine on the IO thread and parks the calling thread on a ``threading.Event`` until it
completes — no timeout. The heartbeat coroutine never calls the listener. So the callbacks execute on the IO
thread but strictly *inside* our own ``poll()``/``close()`` call, while the main loop is parked and not
touching the model: a hand-off, not concurrency.

Hence the design: the callbacks do the work themselves, under the learner's state lock (which the main loop
holds while processing a batch and releases before every ``poll()``/``close()``, so there is no deadlock and
the model is safe even if a future kafka-python ran callbacks concurrently):

- revoked: checkpoint and commit *before* the JoinGroup is sent. That ordering is what prevents the next
  owner from starting at a stale committed offset and learning events a second time, so it cannot be
  deferred to after ``poll()`` returns. Blocking consumer calls (``commit()``, ``committed()``) raise from
  the IO thread, so the listener is an :class:`~kafka.AsyncConsumerRebalanceListener` that ``await``s the
  future of the public ``commit_async()`` (the coordinator is known here: ``join_group_async`` has just
  awaited ``ensure_coordinator_ready``). The checkpoint itself is a short local write; the heartbeat loop
  keeps running during the awaited commit.
- assigned: only pauses the new partitions and records them (:attr:`Source.pending`). Right after
  ``poll()`` returns, the main loop fetches their committed offsets (a blocking call, fine on the main
  thread), seeks each to max(checkpoint, committed) and resumes them; records of a partition waiting for
  that are never processed.

Who pauses a partition, and why
-------------------------------
Every pause and resume of a partition goes through :meth:`Source.hold` and :meth:`Source.release`, each
with its reason: :data:`SOUGHT` while the partition waits to be sought (newly assigned, rewound by the
client, rolled back to the checkpoint: :attr:`Source.pending`), :data:`PACED` while it is held back for
having read ahead of its partner (consumers.pacing). :attr:`Source.paused` keeps the reasons of each
partition, and the client has a partition paused if and only if its set is not empty: a resume for one
reason never undoes a pause for another, and a partition resumed has no reason left to be paused. An
assignment (the eager protocol: the whole new one) starts every partition over with :data:`SOUGHT` alone;
a revoked or lost partition leaves the bookkeeping with every reason (:meth:`Source.drop`): no pause
outlives its partition. Each pause and resume is logged at DEBUG with its reason.
- lost (evicted from the group, e.g. after the broker was away longer than the session timeout): no
  checkpoint and no commit — the partitions may already be another member's, which starts at the group's
  committed offset.

Rebalance callbacks raising would surface from ``poll()``: ours catch and log instead.
:meth:`Source.unstick` works around a kafka-python 3.0.12 race in which a finished JoinGroup is never
processed (the member then has no partitions, for good).
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from kafka import AsyncConsumerRebalanceListener, KafkaConsumer, TopicPartition
from kafka.errors import FencedInstanceIdError, KafkaError

from consumers.state.checkpointing import tp_keys

__all__ = ["PACED", "SOUGHT", "ConnectTimeout", "RebalanceHandler", "Source", "default_instance_id",
           "wait_or_stop"]

log = logging.getLogger(__name__)

_ATTEMPT_MS = 1000  # one bootstrap attempt: short, so that a stop request is heard between attempts


#: Why a partition is paused: it waits to be sought (assigned, rewound, rolled back), the learner seeks it.
SOUGHT = "sought"
#: Why a partition is paused: it read ahead of its partner partition in record time (consumers.pacing).
PACED = "paced"


class ConnectTimeout(Exception):
    """The brokers could not be reached within the connect timeout."""


class RebalanceHandler(Protocol):
    def on_revoked(self, partitions: set[TopicPartition]) -> dict: ...
    def on_lost(self, partitions: set[TopicPartition]) -> None: ...
    def on_assigned(self, partitions: set[TopicPartition]) -> None: ...


def default_instance_id(checkpoint_dir: Any) -> str:
    """``<host name>-<12 hex digits of the checkpoint directory's absolute path>``: stable across restarts
    of one learner, distinct for two learners on one host."""
    path = os.path.abspath(os.fspath(checkpoint_dir))
    host = "".join(c if c.isalnum() or c in "._-" else "-" for c in socket.gethostname())[:100] or "host"
    return f"{host}-{hashlib.sha256(path.encode()).hexdigest()[:12]}"


class _Listener(AsyncConsumerRebalanceListener):
    """Forwards rebalance events (see the module docstring for the threading argument)."""

    def __init__(self, source: Source, handler: RebalanceHandler) -> None:
        self._source = source
        self._handler = handler

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        revoked = set(revoked)
        if not revoked:
            return
        try:
            offsets = self._handler.on_revoked(revoked)
            # On close, the learner has committed already (bounded); a commit here could not be bounded.
            if offsets and not self._source.closing:
                await self._source.commit_async(offsets)
        except Exception:  # an exception here would surface from poll(); log it instead
            log.exception("checkpoint/commit on revoke of %s failed", tp_keys(revoked))

    async def on_partitions_lost(self, lost: Iterable[TopicPartition]) -> None:
        try:
            self._handler.on_lost(set(lost))
        except Exception:
            log.exception("handling the loss of %s failed", tp_keys(lost))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        assigned = set(assigned)
        try:
            self._source.assigned(assigned)
            self._handler.on_assigned(assigned)
        except Exception:
            log.exception("handling the assignment of %s failed", tp_keys(assigned))


class Source:
    """The consumer side of the learner.

    >>> source = Source(config, stats)                                       # doctest: +SKIP
    >>> source.connect(handler, should_stop=lambda: False, timeout=60)        # doctest: +SKIP
    >>> batch = source.poll()                                                 # doctest: +SKIP
    """

    #: Whether a pause keeps what was fetched for the partition (kafka-python 3.0 parks it and hands it back
    #: on resume): pausing is then cheap (consumers.pacing holds back at any lead).
    pause_keeps_fetched = True

    def __init__(self, config: Any, stats: Any) -> None:
        self.config = config
        self.stats = stats
        self.consumer: KafkaConsumer | None = None
        #: Why each partition is paused (see the module docstring): the client has it paused iff the set
        #: is not empty. Changed only by hold(), release(), assigned() and drop().
        self.paused: dict[TopicPartition, set[str]] = {}
        self.closing = False
        self.fenced = False
        self.instance_id = config.group_instance_id or default_instance_id(config.checkpoint_dir)

    # ------------------------------------------------------------------ connecting

    def kwargs(self) -> dict[str, Any]:
        kwargs = self.config.consumer_kwargs()
        kwargs["group_instance_id"] = self.instance_id
        kwargs.setdefault("bootstrap_timeout_ms", _ATTEMPT_MS)
        return kwargs

    def connect(self, handler: RebalanceHandler, should_stop: Callable[[], bool], timeout: float,
                before: Callable[[], None] = lambda: None) -> bool:
        """Create the consumer (after ``before()``, e.g. the producer) and subscribe; retry with backoff,
        for at most ``timeout`` seconds (then :class:`ConnectTimeout`). False if asked to stop first."""
        cfg = self.config
        self.paused.clear()  # a new consumer: nothing of an old one is paused
        deadline = time.monotonic() + timeout
        backoff = 0.5
        while not should_stop():
            try:
                before()
                self.consumer = self._open(handler, deadline)
            except KafkaError as exc:
                with self.stats.lock:
                    self.stats.connection_failures += 1
                    self.stats.connected = False
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ConnectTimeout(
                        f"cannot reach the Kafka brokers at {cfg.bootstrap_servers} within {timeout:g} s "
                        f"({exc})") from None
                log.warning("cannot connect to %s, retrying in %.1fs: %r", cfg.bootstrap_servers, backoff,
                            exc, extra={"reason": "connect_failed"})
                wait_or_stop(min(backoff, left), should_stop)
                backoff = min(backoff * 2, 5.0)
                continue
            with self.stats.lock:
                self.stats.connected = True
            log.info("subscribed to %s as group %s (instance %s)", cfg.input_topics, cfg.group_id,
                     self.instance_id)
            return True
        return False

    def _open(self, handler: RebalanceHandler, deadline: float) -> KafkaConsumer:
        """One connection attempt: the subscribed consumer (raises ``KafkaError``)."""
        consumer = KafkaConsumer(**self.kwargs())
        consumer.subscribe(self.config.input_topics, listener=_Listener(self, handler))
        # Know the topics' partitions before the first JoinGroup: if this member leads the group and
        # assigns without them, the follow-up rebalance may hit the stuck join of unstick().
        for topic in self.config.input_topics:
            try:
                consumer.partitions_for_topic(topic)
            except KafkaError as exc:
                log.warning("no metadata for topic %s yet: %r", topic, exc, extra={"topic": topic})
        return consumer

    def connected(self) -> bool:
        """Whether the group coordinator is known (a local look-up; True on a kafka-python without it)."""
        coordinator = getattr(self.consumer, "_coordinator", None)
        try:
            return not coordinator.coordinator_unknown()
        except Exception:
            return True

    # ------------------------------------------------------------------ offsets

    def committed(self, tps: list[TopicPartition]) -> dict[TopicPartition, int | None]:
        """The group's committed offsets of ``tps`` (blocking, bounded; raises ``KafkaError``/``OSError``)."""
        timeout = self.config.commit_timeout_ms
        return {tp: self.consumer.committed(tp, timeout_ms=timeout) for tp in tps}

    def committed_metadata(self, tps: list[TopicPartition]) -> dict[TopicPartition, Any]:
        """The group's committed ``OffsetAndMetadata`` (or None) of ``tps`` (blocking, bounded; raises
        ``KafkaError``/``OSError``)."""
        timeout = self.config.commit_timeout_ms
        return {tp: self.consumer.committed(tp, metadata=True, timeout_ms=timeout) for tp in tps}

    def live_members(self) -> set[str]:
        """The ``group_instance_id`` of every member of the group now (an admin request, bounded)."""
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(**self.config.admin_kwargs(self.config.commit_timeout_ms))
        try:
            described = admin.describe_groups([self.config.group_id])[self.config.group_id]
        finally:
            admin.close()
        members = described.get("members") or []
        return {m["group_instance_id"] for m in members if m.get("group_instance_id")}

    def group_offsets(self) -> dict[TopicPartition, Any]:
        """Every offset committed in the group, with its metadata (an admin request, bounded)."""
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(**self.config.admin_kwargs(self.config.commit_timeout_ms))
        try:
            return dict(admin.list_group_offsets({self.config.group_id: None})[self.config.group_id])
        finally:
            admin.close()

    def commit(self, offsets: dict, timeout_ms: int | None = None) -> None:
        """Commit ``offsets`` (raises ``KafkaError``). A member fenced by another one with the same
        instance id is flagged (:attr:`fenced`): kafka-python only stops its heartbeats."""
        try:
            self.consumer.commit(offsets, timeout_ms=timeout_ms or self.config.commit_timeout_ms)
        except FencedInstanceIdError:
            self.fenced = True
            raise

    def commit_soon(self, offsets: dict) -> bool | None:
        """The periodic commit. A backend that can commits off the loop (sent now, answered while the loop
        goes on: :meth:`unconfirmed`, :meth:`commit_failures`) and returns True; kafka-python commits
        synchronously here, as :meth:`commit` (its ``commit_async`` is refused outright while the broker
        connection has its maximum of requests in flight, which a fetching consumer usually has)."""
        self.commit(offsets)
        return None

    def unconfirmed(self) -> bool:
        """Whether a :meth:`commit_soon` has not been answered yet (its offsets may not be committed)."""
        return False

    def commit_failures(self) -> list[BaseException]:
        """The failures of :meth:`commit_soon` commits answered since the last call (each logged)."""
        return []

    async def commit_async(self, offsets: dict) -> None:
        """The revoke callback's commit: await the public ``commit_async`` future on the IO loop."""
        try:
            await self.consumer.commit_async(offsets)
        except Exception as exc:
            with self.stats.lock:
                self.stats.commit_failures += 1
            log.warning("commit on revoke failed: %r", exc, extra={"reason": "commit_failed"})
            return
        with self.stats.lock:
            self.stats.commits += 1

    def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        """The partitions' end offsets (blocking, bounded; raises ``KafkaError``/``OSError``)."""
        return self.consumer.end_offsets(tps, timeout_ms=self.config.commit_timeout_ms)

    def seek_and_resume(self, starts: dict[TopicPartition, int]) -> None:
        """Seek the pending partitions (those in ``starts``; the others start at auto_offset_reset) and
        release them all from :data:`SOUGHT` (resumed unless paused for another reason too)."""
        for tp, offset in starts.items():
            self._seek(tp, offset)
        self.release(self.pending, SOUGHT)

    def _seek(self, tp: TopicPartition, offset: int) -> None:
        self.consumer.seek(tp, offset)

    def assignment(self) -> set[TopicPartition]:
        return self.consumer.assignment()

    # ------------------------------------------------------------------ polling (what the loop sees)

    def poll(self, timeout_ms: int) -> dict[TopicPartition, tuple[list, list]]:
        """``{partition: (records, values)}``: the polled records of each partition, in offset order, and
        their values (what the hot loop reads, alike for every client). A member fenced by another one
        with the same instance id is flagged (:attr:`fenced`) and gets nothing: with nothing new to commit
        this is where it finds out, and retrying the poll would never end."""
        self._unpark()
        try:
            polled = self.consumer.poll(timeout_ms=timeout_ms)
        except FencedInstanceIdError:
            self.fenced = True
            return {}
        if not polled and self._heartbeat_fenced():
            self.fenced = True
        return {tp: (rs, [r.value for r in rs]) for tp, rs in polled.items()}

    def _unpark(self) -> None:
        """Work around kafka-python 3.0.12 starving a resumed partition. It parks the records fetched for a
        partition while the partition is paused (as the learner does while it seeks newly assigned or
        rewound partitions, and while it holds back one that read ahead: consumers.pacing), and after its
        resume gives them back only when the slot for the partition being drained is empty: ``None``, not
        an emptied one, which it leaves there. Meanwhile it fetches nothing more for a partition whose
        records are parked, so a paused and resumed partition could get nothing for good. An emptied slot
        is cleared before each poll while records are parked (what kafka-python itself does with a new
        fetch)."""
        fetcher = getattr(self.consumer, "_fetcher", None)
        current = getattr(fetcher, "_next_partition_records", None)
        if current is not None and not current and getattr(fetcher, "_paused_partition_records", None):
            fetcher._next_partition_records = None

    def _heartbeat_fenced(self) -> bool:
        """Whether kafka-python's heartbeat thread was fenced (another member joined with this one's
        ``group_instance_id``). kafka-python then only stops heartbeating: the member stays "stable" and
        its poll goes on fetching, so an idle member (nothing to commit) would never find out. Read from
        the coordinator's state (kafka-python 3.0: stable with heartbeats disabled happens only then);
        False where that state is not there."""
        coordinator = getattr(self.consumer, "_coordinator", None)
        if coordinator is None or getattr(coordinator, "group_instance_id", None) is None:
            return False
        try:
            with coordinator._lock:
                return coordinator.stable() and not coordinator._heartbeat_enabled
        except Exception:
            return False

    @staticmethod
    def record(r: Any) -> Any:
        """The record with ``topic partition offset key value timestamp`` (kafka-python's own)."""
        return r

    # ------------------------------------------------------------------ pauses, each with its reason

    @property
    def pending(self) -> set[TopicPartition]:
        """The partitions waiting to be sought (paused for :data:`SOUGHT`): a copy."""
        return self.held(SOUGHT)

    def held(self, reason: str) -> set[TopicPartition]:
        """The partitions paused for ``reason`` (a copy)."""
        return {tp for tp, why in self.paused.items() if reason in why}

    def hold(self, partitions: Iterable[TopicPartition], reason: str) -> None:
        """Pause ``partitions`` for ``reason``; the client pauses those that had no reason yet."""
        new = []
        for tp in partitions:
            why = self.paused.setdefault(tp, set())
            if not why:
                new.append(tp)
            why.add(reason)
        if new:
            new.sort()
            self._pause(new)
            log.debug("paused %s (%s)", tp_keys(new), reason, extra={"reason": reason})

    def release(self, partitions: Iterable[TopicPartition], reason: str) -> None:
        """Lift the pause of ``partitions`` for ``reason``; the client resumes those left with no reason."""
        free = []
        for tp in partitions:
            why = self.paused.get(tp)
            if why is None or reason not in why:
                continue
            why.discard(reason)
            if not why:
                del self.paused[tp]
                free.append(tp)
        if free:
            free.sort()
            self._resume(free)
            log.debug("resumed %s (%s)", tp_keys(free), reason, extra={"reason": reason})

    def assigned(self, partitions: set[TopicPartition]) -> None:
        """A new assignment (the whole of it: the eager protocol): every partition paused for
        :data:`SOUGHT` alone (the client itself starts them unpaused), nothing else kept."""
        self.paused = {tp: {SOUGHT} for tp in partitions}
        if partitions:
            self._pause(sorted(partitions))
            log.debug("paused %s (%s)", tp_keys(partitions), SOUGHT, extra={"reason": SOUGHT})

    def drop(self, partitions: Iterable[TopicPartition]) -> None:
        """Partitions revoked or lost: out of the bookkeeping with all their reasons (the client forgets
        them; assigned again, they start over)."""
        gone = [tp for tp in partitions if self.paused.pop(tp, None) is not None]
        if gone:
            log.debug("let go of %s, paused until then", tp_keys(gone), extra={"reason": "revoked"})

    def _pause(self, partitions: list[TopicPartition]) -> None:
        self.consumer.pause(*partitions)

    def _resume(self, partitions: list[TopicPartition]) -> None:
        self.consumer.resume(*partitions)

    def highwater(self, tp: TopicPartition) -> int | None:
        """The partition's end offset as last fetched (a local look-up)."""
        return self.consumer.highwater(tp)

    # ------------------------------------------------------------------ closing

    def close(self, timeout_ms: int, leave: bool) -> None:
        """Close the consumer (its revoke callback runs in here) within ``timeout_ms``; with ``leave``,
        remove this static member from the group so that its partitions move at once."""
        consumer = self.consumer
        if consumer is None:
            return
        self.closing = True
        try:
            self._close_consumer(consumer, timeout_ms)
        except Exception:
            log.exception("closing the consumer failed")
        finally:
            self.consumer, self.closing = None, False
        if leave:
            self._leave_group(timeout_ms)
        with self.stats.lock:
            self.stats.connected = False

    @staticmethod
    def _close_consumer(consumer: KafkaConsumer, timeout_ms: int) -> None:
        consumer.close(timeout_ms=timeout_ms)

    def _leave_group(self, timeout_ms: int) -> None:
        from kafka import KafkaAdminClient
        from kafka.admin import MemberToRemove

        kwargs = self.config.admin_kwargs(timeout_ms)
        try:
            admin = KafkaAdminClient(**kwargs)
            try:
                admin.remove_group_members(self.config.group_id,
                                           [MemberToRemove(group_instance_id=self.instance_id)])
            finally:
                admin.close()
        except Exception as exc:  # the group then expires the member after the session timeout
            log.warning("could not leave the group as instance %s: %r", self.instance_id, exc,
                        extra={"reason": "leave_failed"})

    # ------------------------------------------------------------------ a kafka-python race

    def unstick(self) -> None:
        """Work around a kafka-python 3.0.12 race that leaves a member without partitions, for good.

        When ``poll()``'s timeout expires during a JoinGroup, the join goes on in the background and the
        next ``poll()`` awaits it — but only if the coordinator still says it needs to rejoin. A rejoin
        triggered by changed topic metadata (not by the ``rejoin_needed`` flag) stops "needing" it as soon
        as the leader has run the assignment in that background join, so the finished join is never
        processed: no assignment, no ``on_partitions_assigned``, heartbeats left disabled. Seen here when
        the first assignment ran before the topic's metadata arrived. Detected by its state (a finished,
        unconsumed join task while no rejoin is needed) and repaired by requesting a rejoin. Reads private
        attributes, guarded: on a kafka-python without them this does nothing.
        """
        coordinator = getattr(self.consumer, "_coordinator", None)
        task = getattr(coordinator, "_join_task", None)
        if task is None or not getattr(task, "is_done", False):
            return
        try:
            stuck = not coordinator.need_rejoin()
        except Exception:
            return
        if stuck:
            log.warning("kafka-python left a finished group join unprocessed: requesting a rejoin")
            coordinator.request_rejoin()


def wait_or_stop(seconds: float, should_stop: Callable[[], bool]) -> None:
    """Sleep ``seconds``, waking early (within 0.1 s) when asked to stop."""
    deadline = time.monotonic() + seconds
    while not should_stop():
        left = deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, 0.1))
