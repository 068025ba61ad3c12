"""The checkpoint/offset bookkeeping of one learner, and the checkpoint-then-commit step.

A checkpoint holds the model and, for every partition the model has read, the next offset to read: the first
event NOT yet in the model. Labelled events waiting in an incomplete mini-batch (:attr:`Checkpointing.buffer`)
are not in the model, so the checkpoint records the offset of the first of them; after a crash they are
re-read and re-batched identically. Only once a checkpoint is durable are its offsets committed to the group
(metadata: the checkpoint id), only for the partitions this member owns and never below the group's
committed offset when the partition was taken (:attr:`Checkpointing.floor`). A failed commit is retried with
the next checkpoint (or the next time tick).

:class:`Checkpointing` works over any ``CheckpointStore`` (``save(model, metadata) -> id``,
``latest(expect_config=...)``): a local directory or a Kafka topic. It knows nothing about Kafka clients: the
learner passes it the callables that flush the outputs and commit offsets.

Commit metadata: with a directory store, the checkpoint id; with a store that has a state ``key`` (the Kafka
store), ``<key>/<checkpoint id>@<member>``: which state holds the events before the committed offset, and
which group member (``group_instance_id``) wrote it. A member with an empty disk reads it on assignment to
find the state of a lost member (:func:`parse_ref`, see :mod:`consumers.learner`). A member that was given a
lost member's partitions but could not continue its state (it has its own) appends
``;orphan=<key>@<member>`` to their metadata, so that a member with an empty disk that gets them later still
finds the lost state.

The group model (``group``, a :class:`consumers.state.group_model.GroupModel`): the checkpoint holds the
member's own contribution D (``own``) while ``model`` is the working model D + O; every checkpoint is a
synchronisation, and one happens every ``sync_every_seconds`` even with nothing to checkpoint. Without it
(``group=None``) ``model`` is what is checkpointed, as before.

Periodic checkpoints to a directory store are written in the background (:meth:`Checkpointing.tick`; the
Kafka store's stay synchronous, see :attr:`Checkpointing.background`): the loop flushes the outputs and takes
a snapshot (copies of the model's arrays, the offsets, the metadata, the delayed-label state), and a writer
thread writes it durably while the loop learns on. One write at most is in flight: a
checkpoint that falls due while the previous one is still being written waits for it (the loop blocks, at
most ``commit_timeout_ms``, then tries again at the next tick), so that checkpoints stay as frequent as
configured and one snapshot at most is held; these waits are counted in :attr:`Checkpointing.waits`. The
offsets of a background checkpoint are committed only once it is durable, from the loop (the clients are not
thread-safe), at the first tick that finds it written. A failed write is logged and counted as a synchronous
one is, its offsets are not committed and its events stay to be checkpointed. Revoke, stop and reload first
wait for the write in flight (:meth:`Checkpointing.settle`, bounded), then checkpoint and commit
synchronously.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from kafka import TopicPartition
from kafka.structs import OffsetAndMetadata

from consumers.state.buffer import Buffer
from consumers.state.kafka_store import StateFenced
from consumers.stats import LearnerStats
from stream_logreg.checkpoints import CheckpointError, Snapshot

__all__ = ["Checkpointing", "StateRef", "hold_directory", "parse_ref", "parse_tp_key", "tp_key", "tp_keys"]

log = logging.getLogger(__name__)


def tp_key(tp: TopicPartition) -> str:
    """``topic:partition``, as checkpoints and stats name a partition."""
    return f"{tp.topic}:{tp.partition}"


def tp_keys(partitions: Iterable[TopicPartition]) -> list[str]:
    return [tp_key(tp) for tp in sorted(partitions)]


def parse_tp_key(key: str) -> TopicPartition:
    topic, _, partition = key.rpartition(":")
    return TopicPartition(topic, int(partition))


_KEY, _MEMBER = r"[A-Za-z0-9._:,=+-]{1,200}", r"[A-Za-z0-9._-]{1,249}"
_REF = re.compile(rf"({_KEY})/(\d{{20}})@({_MEMBER})(?:;orphan=({_KEY})@({_MEMBER}))?")


def hold_directory(path: Any) -> Any:
    """Take the learner's lock on checkpoint directory ``path`` for as long as the returned file stays open
    (released by the kernel if the process dies): a second live learner on the directory gets a clear
    :class:`~stream_logreg.checkpoints.CheckpointError` instead of restoring the other one's checkpoints."""
    import fcntl
    import os

    os.makedirs(path, exist_ok=True)
    handle = open(os.path.join(path, ".learner.lock"), "a+b")  # noqa: SIM115  (held open on purpose)
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise CheckpointError(
            f"another learner is running on the checkpoint directory {os.fspath(path)!r}: give each learner "
            "its own --checkpoint-dir, or use --state-store kafka"
        ) from None
    return handle


@dataclass(frozen=True)
class StateRef:
    """What a committed offset's metadata says: the state key, the checkpoint and the member that wrote it,
    and (``orphan``) the state key and last writer of a lost member's state that once covered the partition
    and that nobody has continued yet, as far as the writer knew."""

    key: str
    checkpoint_id: str
    member: str
    orphan: tuple[str, str] | None = None


def parse_ref(metadata: str | None) -> StateRef | None:
    """The :class:`StateRef` of a committed offset's metadata, or None (a directory store's, or foreign).

    >>> parse_ref("lr-1/00000000000000000042@host-1")
    StateRef(key='lr-1', checkpoint_id='00000000000000000042', member='host-1', orphan=None)
    >>> parse_ref("lr-2/00000000000000000007@host-2;orphan=lr-1@host-1").orphan
    ('lr-1', 'host-1')
    >>> parse_ref("00000000000000000042") is None
    True
    """
    m = _REF.fullmatch(metadata or "")
    if not m:
        return None
    key, cid, member, orphan, orphan_member = m.groups()
    return StateRef(key, cid, member, None if orphan is None else (orphan, orphan_member))


class Checkpointing:
    """The model, the offsets it covers, and its durable checkpoints.

    Attributes read and written by the loop's hot path: ``model``, ``positions`` (next offset to read, per
    partition read), ``buffer`` (the labelled events read but not learned yet,
    :class:`~consumers.state.buffer.Buffer`), ``learned`` (events of each partition in the model, over its
    whole history), ``since_checkpoint`` (messages since the last checkpoint).

    >>> from stream_logreg.checkpoints import DirectoryStore          # doctest: +SKIP
    >>> state = Checkpointing(DirectoryStore("ckpt"), config, stats)   # doctest: +SKIP
    >>> state.checkpoint("periodic", flush=lambda timeout: True)       # doctest: +SKIP
    True
    """

    def __init__(self, store: Any, config: Any, stats: LearnerStats, member: str | None = None,
                 group_metadata: Callable[[], Any] | None = None, extra_state: Any = None,
                 group: Any = None) -> None:
        self.store = store
        # The group model: the checkpoint holds own (D), model is the working model D + O.
        self.group = group
        self.own: Any = None
        # exactly-once: the consumer's group metadata, for the offsets committed in the state's transaction
        self.group_metadata = group_metadata
        self.member = member  # this member's group_instance_id, named in the commit metadata
        # Delayed labels: state saved in each checkpoint beside the model (extras()) and restored with it
        # (restore(extras)); consumers.labels.Labels.
        self.extra_state = extra_state
        self.config = config
        self.stats = stats
        self.model_config = config.model_config()
        self.model: Any = None
        self.checkpoint_id: str | None = None
        self.positions: dict[TopicPartition, int] = {}
        self.buffer = Buffer(config.batch_size)
        self.learned: dict[TopicPartition, int] = {}
        self.ckpt_offsets: dict[TopicPartition, int] = {}  # the offsets of checkpoint_id
        # The group's committed offset when we took each partition: never commit below it (a checkpoint
        # written before a skip ahead must not move the group back).
        self.floor: dict[TopicPartition, int] = {}
        # Per owned partition, "<key>@<member>" of a lost member's state that covered it and that nobody
        # continues: carried in the commit metadata for a fresh member to find (consumers.learner).
        self.orphans: dict[TopicPartition, str] = {}
        # Per owned partition that started at auto_offset_reset, the offset of the first record read: a
        # rollback to a checkpoint that does not cover it reads it again from there (the client's own
        # position is past what the rolled-back model forgot).
        self.origins: dict[TopicPartition, int] = {}
        self.since_checkpoint = 0
        self.last_checkpoint_at = time.monotonic()
        self.commit_pending = False
        self.needs_reload = False  # the model is ahead of its offsets (a failed revoke checkpoint)
        self.fenced: Exception | None = None  # another writer took this state key over: stop
        self._writing: _Write | None = None  # the background write in flight
        self._writer = _Writer()
        self.waits = 0  # times a checkpoint fell due while the previous one was still being written
        self.restore()

    # ------------------------------------------------------------------ restore

    def restore(self) -> None:
        """Load the newest valid checkpoint (model, offsets), or start a fresh model (after the background
        write in flight, if any: a write still running after ``commit_timeout_ms`` is left to land on its
        own, a coherent checkpoint that nothing here commits)."""
        if not self.settle(self.config.commit_timeout_ms / 1000):
            log.warning("the checkpoint being written did not complete: restoring without it")
            self._writing = None
        ckpt = self.store.latest(expect_config=self.model_config)
        self.buffer.clear()
        if ckpt is None:
            self.model = self.config.make_model()
            self.checkpoint_id = None
            self.positions, self.ckpt_offsets, self.learned = {}, {}, {}
            log.info("no checkpoint in %r: starting a fresh model", self.store)
        else:
            self.model = ckpt.model
            self.checkpoint_id = ckpt.id
            offsets = {parse_tp_key(k): int(v) for k, v in (ckpt.metadata.get("offsets") or {}).items()}
            self.positions, self.ckpt_offsets = dict(offsets), dict(offsets)
            learned = ckpt.metadata.get("learned") or {}
            self.learned = {parse_tp_key(k): int(v) for k, v in learned.items()}
            log.info(
                "restored checkpoint %s (n_samples_seen=%d)", ckpt.id, self.model.n_samples_seen,
                extra={"checkpoint_id": ckpt.id, "offsets": ckpt.metadata.get("offsets")},
            )
        if self.extra_state is not None:
            try:
                self.extra_state.restore(None if ckpt is None else ckpt.extras)
            except ValueError as exc:
                raise CheckpointError(f"checkpoint {self.checkpoint_id}: its delayed-label state does not "
                                      f"load: {exc}") from None
        if self.group is not None:  # the working model: the group's, from the first prediction on
            self.own = self.model
            self.model = self.group.start(self.own, self.store.key)
        self.needs_reload = False
        self.since_checkpoint = 0
        with self.stats.lock:
            self.stats.last_checkpoint_id = self.checkpoint_id
            self.stats.n_samples_seen = self.model.n_samples_seen
            self.stats.n_features = self.model.n_features
            self.stats.buffered = 0

    @property
    def fresh(self) -> bool:
        """Nothing learned and no checkpoint: this member may take over a lost member's state."""
        learned = any(self.learned.values())
        own = self.model if self.group is None else self.own
        return self.checkpoint_id is None and own.n_samples_seen == 0 and not learned

    def adopt(self, store: Any) -> None:
        """Continue the state of ``store`` (another state key): its newest checkpoint becomes ours."""
        self.store = store
        self.restore()

    def ref(self, cid: str | None) -> str:
        """The commit metadata of checkpoint ``cid`` (see the module docstring)."""
        key = getattr(self.store, "key", None)
        if key is None or cid is None or self.member is None:
            return cid or ""
        return f"{key}/{cid}@{self.member}"

    # ------------------------------------------------------------------ checkpoints

    def due(self) -> bool:
        every = self.config.checkpoint_every_seconds
        if self.group is not None:  # every checkpoint is a synchronisation
            every = min(every, self.group.sync_every_seconds)
        writing = 0 if self._writing is None else self._writing.covered
        return (
            self.since_checkpoint - writing >= self.config.checkpoint_every_messages
            or time.monotonic() - self.last_checkpoint_at >= every
        )

    def quiet(self, more: int) -> bool:
        """Whether :meth:`tick` would do nothing once ``more`` messages more are counted in
        :attr:`since_checkpoint`: no checkpoint due, no background write ended (to take in and commit), no
        group model to synchronise. Read without the learner's lock while a batch is learned (the loop's
        hand-over, ``Learner._ready``): a count already added is counted twice, so the answer errs on
        the side of "no", never of "yes"."""
        write = self._writing
        if self.group is not None or (write is not None and write.done.is_set()):
            return False
        covered = 0 if write is None else write.covered
        return (self.since_checkpoint + more - covered < self.config.checkpoint_every_messages
                and time.monotonic() - self.last_checkpoint_at < self.config.checkpoint_every_seconds)

    def offsets(self) -> dict[TopicPartition, int]:
        """Per partition, the first event not in the model: the position, or the first buffered event."""
        return {**self.positions, **self.buffer.first_offsets()}

    def checkpoint(self, reason: str, flush: Callable[[float], bool], flush_timeout: float | None = None,
                   commit_to: Iterable[TopicPartition] = ()) -> bool:
        """Flush the outputs (``flush(timeout)``), then write a durable checkpoint of the model and its
        offsets. The caller holds the learner's lock. A background write in flight is waited for first
        (at most ``flush_timeout``); if it covered everything, nothing more is written.

        Exactly-once (``group_metadata`` given): the checkpoint, the offsets of the partitions
        ``commit_to`` and the outputs sent since the last checkpoint are one transaction of the store. If it
        fails it is aborted, and the model is to be rolled back to the last checkpoint
        (:attr:`needs_reload`): its events are read, learned and published again.
        """
        t0 = time.monotonic()
        if self.needs_reload:  # the model is ahead of its offsets: the last checkpoint stays the truth
            return False
        if flush_timeout is None:
            flush_timeout = self.config.commit_timeout_ms / 1000
        in_flight = self._writing is not None
        if not self.settle(flush_timeout):
            log.error("the checkpoint being written did not complete within %.1fs: no %s checkpoint",
                      flush_timeout, reason, extra={"reason": reason})
            with self.stats.lock:
                self.stats.checkpoint_failures += 1
            return False
        if in_flight and not self.since_checkpoint and not self.needs_reload:  # it covered everything
            return True
        prepared = self._prepare(reason, flush, flush_timeout, t0)
        if prepared is None:
            return False
        metadata, offsets, saved = prepared
        try:
            cid = self._save(metadata, offsets, commit_to, saved)
        except Exception as exc:
            self._failed(exc, reason, t0)
            return False
        self._written(cid, offsets, saved, reason, time.monotonic() - t0, self.since_checkpoint)
        self.last_checkpoint_at = time.monotonic()
        return True

    def _prepare(self, reason: str, flush: Callable[[float], bool], flush_timeout: float,
                 t0: float) -> tuple[dict, dict[TopicPartition, int], Any] | None:
        """Flush the outputs; then (metadata, offsets, model to save) of a checkpoint now, or None (the
        outputs are not acknowledged, or the group model's contribution is no model)."""
        if not flush(flush_timeout):
            log.warning("checkpoint postponed: outputs not acknowledged yet", extra={"reason": reason})
            with self.stats.lock:
                self.stats.checkpoint_failures += 1
            self.last_checkpoint_at = t0  # try again at the next tick, not at every poll
            return None
        offsets = self.offsets()
        try:  # the group model: what this member's own events changed
            saved = self.model if self.group is None else self.group.contribution(self.model)
        except ValueError:
            log.exception("the contribution to the group model is not a valid model: not checkpointed")
            self.last_checkpoint_at = t0
            return None
        metadata = {
            "offsets": {tp_key(tp): off for tp, off in sorted(offsets.items())},
            # events of each partition learned into this model, over its whole history (for audits)
            "learned": {tp_key(tp): n for tp, n in sorted(self.learned.items())},
            "group_id": self.config.group_id,
            "topics": list(self.config.topics),
            "batch_size": self.config.batch_size,
            "n_samples_seen": saved.n_samples_seen,
            "parent": self.checkpoint_id,
            "reason": reason,
        }
        return metadata, offsets, saved

    def _failed(self, exc: Exception, reason: str, t0: float) -> None:
        """A checkpoint could not be written: logged and counted; its offsets are not committed."""
        if isinstance(exc, StateFenced):
            self.fenced = exc
            log.error("%s", exc, extra={"reason": "state_fenced"})
            return
        # Logged before it is counted: whoever sees the count (a metric, a test) finds the log line already.
        log.error("writing a checkpoint to %r failed", self.store, exc_info=exc, extra={"reason": reason})
        with self.stats.lock:
            self.stats.checkpoint_failures += 1
        self.last_checkpoint_at = t0
        if self.group_metadata is not None:  # the interval's transaction was aborted: start it over
            self.needs_reload = True

    def _written(self, cid: str, offsets: dict[TopicPartition, int], saved: Any, reason: str, duration: float,
                 covered: int) -> None:
        """Checkpoint ``cid`` of ``offsets`` is durable (``duration`` seconds after it was asked for); it
        covers ``covered`` of the messages counted in :attr:`since_checkpoint`."""
        self.checkpoint_id = cid
        self.ckpt_offsets = offsets
        self.since_checkpoint = max(self.since_checkpoint - covered, 0)
        if not self.since_checkpoint and self.offsets() != offsets:  # sought since: checkpoint that too
            self.since_checkpoint = 1
        self.commit_pending = self.group_metadata is None  # exactly-once: committed with the state
        if self.group is not None:
            self.own = saved
            if reason == "periodic":  # not on the IO thread (revoke), nor when stopping
                self.model = self.group.sync(saved, self.model, self.store.key)
        with self.stats.lock:
            self.stats.checkpoints_written += 1
            self.stats.last_checkpoint_id = cid
            self.stats.last_checkpoint_time = time.time()
            self.stats.last_checkpoint_duration = duration
        log.debug("checkpoint %s (%s): n_samples_seen=%d", cid, reason, saved.n_samples_seen,
                  extra={"checkpoint_id": cid, "reason": reason})

    # ------------------------------------------------------------------ background checkpoints

    @property
    def background(self) -> bool:
        """Whether periodic checkpoints are written in the background: with a directory store. Not with a
        store that has a state ``key`` (the Kafka store: its save already sends the chunks asynchronously,
        through the producer, and waits only for the transaction's flush and commit; a lost member's state
        is taken over through it), hence not when checkpoints are part of the interval's transaction
        (exactly-once) nor synchronisations of the group model (both need the Kafka store)."""
        return self.group_metadata is None and self.group is None and not hasattr(self.store, "key")

    def _write_soon(self, reason: str, flush: Callable[[float], bool]) -> None:
        """Snapshot the checkpoint now and write it on the writer thread (nothing is in flight)."""
        t0 = time.monotonic()
        if self.needs_reload:
            return
        prepared = self._prepare(reason, flush, self.config.commit_timeout_ms / 1000, t0)
        if prepared is None:
            return
        metadata, offsets, model = prepared
        write = _Write(Snapshot(model), metadata, offsets, reason, t0, self.since_checkpoint,
                       None if self.extra_state is None else self.extra_state.extras())
        self._writing = write
        self.last_checkpoint_at = t0
        self._writer.submit(write, self.store)

    def settle(self, timeout: float | None = None) -> bool:
        """Wait (at most ``timeout`` seconds, in short slices) for the background write in flight, then take
        its outcome in (see :meth:`_harvest`). Returns whether no write is in flight any more."""
        write = self._writing
        if write is None:
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        while not write.done.wait(0.05):
            if deadline is not None and time.monotonic() >= deadline:
                return False
        self._harvest()
        return True

    def _harvest(self) -> bool:
        """If the background write has ended: it is durable (its offsets are to be committed) or failed
        (logged and counted, nothing to commit). Returns whether one ended."""
        write = self._writing
        if write is None or not write.done.is_set():
            return False
        self._writing = None
        if write.error is not None:
            self._failed(write.error, write.reason, write.t0)
        else:
            self._written(write.cid, write.offsets, write.snapshot, write.reason, write.finished - write.t0,
                          write.covered)
        return True

    def _save(self, metadata: dict, offsets: dict[TopicPartition, int], commit_to: Iterable[TopicPartition],
              model: Any = None) -> str:
        """Write the checkpoint of ``model`` (default: :attr:`model`; exactly-once: with the offsets, in the
        interval's transaction)."""
        store = self.store
        model = self.model if model is None else model
        extras = {} if self.extra_state is None else {"extras": self.extra_state.extras()}
        if self.group_metadata is None:
            return store.save(model, metadata, **extras)
        if not store.in_transaction:
            store.begin()
        try:
            cid = store.write(model, metadata, **extras)
            commits = self.commit_offsets(commit_to, set(), offsets, cid)
            if commits:
                store.send_offsets(commits, self.group_metadata())
        except BaseException:
            store.abort()
            raise
        store.commit()
        return cid

    # ------------------------------------------------------------------ commits

    def commit_offsets(self, partitions: Iterable[TopicPartition], pending: set[TopicPartition],
                       offsets: dict[TopicPartition, int] | None = None, cid: str | None = None
                       ) -> dict[TopicPartition, OffsetAndMetadata]:
        """The last durable checkpoint's offsets of ``partitions`` (those it knows, not ``pending`` a seek),
        with its id, never below the floor (or those of checkpoint ``cid`` with ``offsets``)."""
        meta = self.ref(self.checkpoint_id if cid is None else cid)
        ckpt = self.ckpt_offsets if offsets is None else offsets
        orphans = self.orphans if "@" in meta else {}
        return {
            tp: OffsetAndMetadata(ckpt[tp], f"{meta};orphan={orphans[tp]}" if tp in orphans else meta, -1)
            for tp in partitions
            if tp in ckpt and tp not in pending and ckpt[tp] >= self.floor.get(tp, 0)
        }

    def commit(self, partitions: Iterable[TopicPartition], pending: set[TopicPartition],
               commit: Callable[[dict], bool | None]) -> bool:
        """Commit the checkpoint's offsets of ``partitions`` with ``commit(offsets)`` (which raises on
        failure, and returns True when it has only sent them: the committer then counts the commit when
        it is answered, and a failure is reported by setting :attr:`commit_pending` again). Never raises."""
        offsets = self.commit_offsets(partitions, pending)
        if not offsets:
            self.commit_pending = False
            return True
        try:
            sent = commit(offsets)
        except Exception as exc:
            with self.stats.lock:
                self.stats.commit_failures += 1
            log.warning("commit failed (retried with the next checkpoint): %r", exc,
                        extra={"checkpoint_id": self.checkpoint_id, "reason": "commit_failed"})
            self.commit_pending = True
            return False
        self.commit_pending = False
        if sent is not True:
            with self.stats.lock:
                self.stats.commits += 1
        return True

    def sync_if_due(self) -> None:
        """The group model: synchronise with the others' contributions if ``sync_every_seconds`` passed
        since the last synchronisation. The contribution (``own``) stays the last checkpointed one, plus
        what was learned since, which stays in the working model."""
        if self.group is None or self.needs_reload or not self.group.due():
            return
        if self.since_checkpoint:  # learned since the last checkpoint: keep it, as W − O_old + O_new
            own = self.group.contribution(self.model)
        else:
            own = self.own
        self.model = self.group.sync(own, self.model, self.store.key)

    def tick(self, partitions: Iterable[TopicPartition], pending: set[TopicPartition],
             flush: Callable[[float], bool], commit: Callable[[dict], bool | None]) -> None:
        """The periodic step: commit a background checkpoint that became durable; when due, checkpoint (if
        anything changed; in the background when :attr:`background`) and then commit. With the group
        model, a synchronisation every ``sync_every_seconds`` also when nothing changed."""
        if self._writing is not None and self._harvest() and self.commit_pending:
            self.commit(partitions, pending, commit)
        if not self.since_checkpoint:
            self.sync_if_due()
        if not self.due():
            return
        if self._writing is not None:  # the previous one is still being written: wait for it (bounded)
            self.waits += 1
            if not self.settle(self.config.commit_timeout_ms / 1000):
                log.warning("the previous checkpoint is still being written: the next one waits",
                            extra={"reason": "checkpoint_slow"})
                return
            if self.commit_pending:
                self.commit(partitions, pending, commit)
        if self.since_checkpoint and self.background:
            self._write_soon("periodic", flush)
        elif self.since_checkpoint:
            done = self.checkpoint("periodic", flush, commit_to=set(partitions) - pending)
            if done and self.commit_pending:
                self.commit(partitions, pending, commit)
        elif self.commit_pending:
            self.last_checkpoint_at = time.monotonic()
            self.commit(partitions, pending, commit)

    # ------------------------------------------------------------------ partitions coming and going

    def let_go(self, partitions: set[TopicPartition]) -> None:
        """Forget buffered events of ``partitions`` and rewind them to the checkpoint.

        If the model had learned events of them beyond the last durable checkpoint (the checkpoint on
        revoke failed), it no longer matches any offsets: it is reloaded from the checkpoint before the
        next assignment is sought.
        """
        # which offsets are durable (bounded as the revoke's flush: this may run in a rebalance callback)
        self.settle(min(self.config.commit_timeout_ms / 1000, 2.0))
        current = self.offsets()
        self.buffer.drop(partitions)
        for tp in partitions:
            self.orphans.pop(tp, None)
            self.origins.pop(tp, None)
            durable = self.ckpt_offsets.get(tp)
            if current.get(tp) != durable:
                self.needs_reload = True
            if durable is None:
                self.positions.pop(tp, None)
            else:
                self.positions[tp] = durable

    def start_offsets(self, committed: dict[TopicPartition, int | None],
                      ends: dict[TopicPartition, int] | None = None) -> dict[TopicPartition, int]:
        """Where each newly assigned partition starts: max(checkpoint offset, group's committed offset);
        absent when neither has seen it (``auto_offset_reset``). Records the floor.

        An offset beyond the partition's end (``ends``: the topic was deleted and re-created) is a warning
        and counted in ``LearnerStats.offset_resets``: the partition starts at ``auto_offset_reset`` and its
        stale offsets are forgotten (neither checkpointed nor committed again).
        """
        starts = {}
        ends = ends or {}
        for tp, theirs in sorted(committed.items()):
            ours = self.positions.get(tp)
            candidates = [o for o in (ours, theirs) if o is not None]
            where = {"topic": tp.topic, "partition": tp.partition}
            end = ends.get(tp)
            if candidates and end is not None and max(candidates) > end:
                log.warning(
                    "%s: the offset to resume from (%d) is beyond the end of the partition (%d), was the "
                    "topic re-created? Starting at auto_offset_reset=%s", tp_key(tp), max(candidates), end,
                    self.config.auto_offset_reset, extra={**where, "offset": max(candidates), "end": end,
                                                          "reason": "offset_beyond_end"},
                )
                with self.stats.lock:
                    self.stats.offset_resets += 1
                self.positions.pop(tp, None)
                self.ckpt_offsets.pop(tp, None)
                self.floor.pop(tp, None)
                self.origins.pop(tp, None)
                self.since_checkpoint = max(self.since_checkpoint, 1)
                continue
            if theirs is not None:
                self.floor[tp] = theirs
            if not candidates and tp in self.origins:  # a rollback to before the first checkpoint of it
                log.info("%s: no checkpoint of it yet: reading it again from offset %d, where this model "
                         "started", tp_key(tp), self.origins[tp], extra={**where, "offset": self.origins[tp]})
                candidates = [self.origins[tp]]
            if not candidates:
                log.info("%s: new partition, starting at auto_offset_reset=%s", tp_key(tp),
                         self.config.auto_offset_reset, extra=where)
                continue
            start = max(candidates)
            starts[tp] = start
            self.positions[tp] = start
            if start != self.ckpt_offsets.get(tp):
                self.since_checkpoint = max(self.since_checkpoint, 1)  # offsets changed: checkpoint
            if ours is not None and start > ours:
                log.info("%s: the group is ahead of this model (%d > %d): skipping to %d",
                         tp_key(tp), theirs, ours, start, extra={**where, "offset": start})
        return starts


class _Writer:
    """The thread that writes background checkpoints, one after the other; parked between writes (starting
    a thread costs the loop a few ms of the GIL), and gone after :attr:`idle` seconds without any, so that
    a learner that stopped leaves no thread behind for long."""

    idle = 60.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._alive = False

    def submit(self, write: _Write, store: Any) -> None:
        with self._lock:
            self._jobs.put((write, store))
            if not self._alive:
                self._alive = True
                threading.Thread(target=self._run, name="stream-logreg-checkpoint", daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                write, store = self._jobs.get(timeout=self.idle)
            except queue.Empty:
                with self._lock:
                    if self._jobs.empty():
                        self._alive = False
                        return
                continue
            write.run(store)


class _Write:
    """A checkpoint being written on the writer thread: what it saves, and then its id or its error."""

    def __init__(self, snapshot: Snapshot, metadata: dict, offsets: dict[TopicPartition, int], reason: str,
                 t0: float, covered: int, extras: dict | None) -> None:
        self.snapshot, self.metadata, self.offsets, self.extras = snapshot, metadata, offsets, extras
        self.reason, self.t0, self.covered = reason, t0, covered
        self.done = threading.Event()
        self.cid: str | None = None
        self.error: Exception | None = None
        self.finished = t0

    def run(self, store: Any) -> None:
        try:
            extras = {} if self.extras is None else {"extras": self.extras}
            self.cid = store.save(self.snapshot, self.metadata, **extras)
        except Exception as exc:  # handed to the loop, which reports it
            self.error = exc
        finally:
            self.finished = time.monotonic()
            self.done.set()
