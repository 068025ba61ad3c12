"""The Kafka learner: poll → decode → predict → learn → checkpoint → commit, crash-safe.

The loop
--------
Each polled message is decoded by :class:`stream_logreg.codec.JsonCodec`:

- a rejection goes to the dead-letter topic (original key and value; headers ``reason``, ``detail``,
  ``source_topic``, ``source_partition``, ``source_offset``), is counted and logged (rate-limited) and never
  reaches the model;
- a labelled event is first predicted (progressive validation: rolling log loss and accuracy in
  :class:`LearnerStats`) and then learned — with ``batch_size`` 1 both in one ``predict_learn_one``, else
  buffered until ``batch_size`` labelled events are waiting, then predicted and learned in one mini-batch
  step (a message of the common shape is read from its bytes straight into the batch's encoded rows,
  :class:`~consumers.state.buffer.Buffer`; any other is decoded by the codec and kept as its dict row).
  Nothing is learned while a batch fills, so each event is predicted by the model
  it met on arrival either way; its prediction is counted (and, with ``publish_labelled``, published)
  once its update is made, and not if the update is refused. Batches are cut from consecutive labelled
  events in stream order whatever the poll boundaries;
- an unlabelled event is scored, and the prediction ``{id, p, checkpoint, n_samples_seen, topic, partition,
  offset}`` is published to the predictions topic when one is configured (``n_samples_seen``: of the model
  that predicted ``p``).

With ``batch_size`` 1 the labelled events of a polled batch are decoded and learned in one compiled pass
(:func:`stream_logreg._stream.learn_values`): a message of the common shape is read from its bytes straight
into the model's columns by the codec's ``row_decoder()`` and learned by the model's compiled step; any
other takes the codec's ``decoder()`` and the model's fused step. The Python loop sees only the messages it
stops at (rejections, unlabelled events, refused updates); with delayed labels an unlabelled event of the
common shape is predicted in the pass too (from its encoded row) and handed to Python only to be published
and kept for its label. Per event (20 float features, the service's
default model: the standardized mixture of eight learners), the whole pass costs ~3.3 µs, less than
``orjson.loads`` of the same messages alone (~4.4 µs); the metrics, positions and counters are folded once
per polled batch. The runs of such messages are learned with the GIL released, and each polled batch is
learned on a worker thread while the loop polls the next (:mod:`consumers.pipeline`): the client's poll and
the learning overlap on two cores. While the loop runs, what existed before it is left out of the cyclic
garbage collector (``gc.freeze()``, undone when :meth:`Learner.run` returns): the client's message objects,
thousands a poll, trigger a full collection every few polls, which would otherwise scan the whole heap with
the GIL held and stall the worker. Everything else that touches the state (the rebalance callbacks, the
periodic checkpoint and commit, seeks, the group model's sync, the transactions, the shutdown) waits for
the batch in flight first, so that a checkpoint always holds exactly the events its offsets cover. After
each poll the seeks come first (newly assigned partitions, a rollback to the last checkpoint, a partition
whose records start before the model's position: a client that went back on its own, as librdkafka once
did after a rollback's seek), then the periodic checkpoint and commit, then the hand-over of what is left
of the polled batch (nothing of a partition sought in that step; nothing at all if the checkpoint failed
and the model must roll back). When none of these has anything to do (batch size 1, no tick due even
counting the batch in flight, nothing to seek, no rebalance, no records before the position the batch in
flight leaves; not with exactly-once, delayed labels or the group model), the polled batch is handed over
behind the one in flight instead (``Learner._ready``, :meth:`~consumers.pipeline.Pipeline.hand_over`): the
worker takes it up as soon as it is done, without waiting for the loop.

The checkpoint/offset contract
------------------------------
A checkpoint holds the model and, for every partition the model has read, the next offset to read: the first
event NOT yet in the model. Labelled events waiting in an incomplete mini-batch are not in the model, so the
checkpoint records the offset of the first of them; after a crash they are re-read and re-batched identically.
A checkpoint is written every ``checkpoint_every_messages`` messages or ``checkpoint_every_seconds`` seconds,
after flushing the producer (so every dead letter and prediction derived from the covered messages is
acknowledged: failed sends are re-sent, and the checkpoint waits while the brokers are away; records that can
never be sent — too large, topic deleted or not authorised — are dropped and counted instead, see
:mod:`consumers.outputs`). Only once the checkpoint is durable are its offsets committed to the group
(metadata: the checkpoint id), and only for the partitions this member owns. A failed commit is logged and
retried with the next checkpoint (or the next time tick); the loop goes on. The periodic commit does not
hold up the loop: it is sent and answered while the loop goes on (``Source.commit_soon``), and one not
answered yet is made again, synchronously, on revoke and on stop.

The bookkeeping of offsets and checkpoints is :mod:`consumers.state.checkpointing`; the transactions of
exactly-once :mod:`consumers.state.transactions`; the outputs, with their bounds, :mod:`consumers.outputs`;
the consumer, its group membership and the threading argument of the rebalance callbacks
:mod:`consumers.source`. This module is the loop that ties them together.

On start the newest valid checkpoint is restored. On assignment each partition is sought to
max(checkpoint offset, group's committed offset): the max matters when the partition was learned by another
member in between. Partitions neither has seen start at ``auto_offset_reset``. On revoke, and on
SIGTERM/SIGINT (:meth:`Learner.stop`), the learner checkpoints, commits, and lets go, each step bounded
(:data:`STOP_BUDGET`) so that it exits within a couple of seconds.

Rebalances (see :mod:`consumers.source` for where the callbacks run): on revoke, checkpoint and commit
before the partitions go; on loss (evicted), no checkpoint and no commit, and the model falls back to its
last durable checkpoint (reloaded by the main loop), so that what it learned since is learned again only by
whoever owns the partitions now. The flush before the revoke checkpoint is bounded (2 s) because it holds
up the IO loop; if it fails, nothing is committed and the model falls back to its last checkpoint as for a
loss.

State in Kafka (``state_store="kafka"``)
----------------------------------------
The checkpoints live in the compacted topic ``<group id>-state`` (:class:`~consumers.state.kafka_store.
KafkaStore`, created with 16 partitions if absent); the learner creates, reads and writes nothing on the local
disk. One model per member, so the state is keyed by **member**: the state key is the member's
``group_instance_id`` (``--group-instance-id``; by default the host name and a hash of ``--checkpoint-dir``),
and each checkpoint records the offsets of every partition it has read. Every offset the member commits
carries the metadata ``<state key>/<checkpoint id>@<member>``: which state holds the events before it, and who
wrote it. So the state moves with the partitions:

- a member restarted with the same instance id (a StatefulSet pod, ``--group-instance-id``), on any host,
  opens its key and resumes exactly where its last checkpoint was;
- a member with another identity and nothing learned yet (a replacement on a new host: a fresh member) reads,
  on its first assignment, the metadata of its partitions' committed offsets. A state key named there whose
  writer is no longer in the group (a lost member: ``describe_groups``) is taken over, the one covering most
  of the new partitions first: opening its store fences the lost member (a zombie's next transaction fails),
  its newest checkpoint becomes this member's model and the member goes on under that key. A state whose
  writer is still in the group is never taken (the survivor that got a lost member's partitions keeps its
  own model and starts them at the committed offsets: the lost member's events stay counted in its state);
- two live writers of one key cannot both write: the newer fences the older, which stops (:class:`Fenced`,
  exit 1). Two live learners on one ``--checkpoint-dir`` are refused too (a lock held while running).

A replacement continues a lost member's state whether it joins before the group expires the lost member (its
``session_timeout_ms``: it is given the lost partitions, whose offsets name the lost state) or after it (the
survivors were given them first and go on with them in their own models; their commits mark those partitions
with the lost state, ``;orphan=<key>@<member>``, so a fresh member given one later finds it and continues it
from its checkpoint: the events the survivors learned in between stay counted in theirs). Two fresh members
given a lost member's partitions at the same moment both try to take its state: the later
one fences the earlier, which exits 1 and, restarted, starts fresh. With ``at-least-once`` the window between
a checkpoint and its commit stays: a member killed inside it leaves the newer state under its key and older
offsets in the group; whoever takes the key resumes from the state (no event learned twice), but a survivor
given those partitions starts at the committed offsets and learns the events in between a second time.
Exactly-once closes it.

Exactly-once (``processing_guarantee="exactly-once"``, needs the Kafka store)
-----------------------------------------------------------------------------
The outputs, the state records and the consumer offsets of one checkpoint interval are one Kafka
transaction: see :mod:`consumers.state.transactions` for what happens to the open transaction on revoke,
SIGTERM, a fencing, a failure and SIGKILL, on both client backends.

Guarantees
----------
Learning is exactly once per consumer group as long as checkpoints stay readable: every event of a partition
is in exactly one member's model, whatever crashes (SIGKILL included), restarts, rebalances and broker outages
happen (with the Kafka store and at-least-once, see the window above). The outputs (predictions, dead
letters) are at least once while their topics take records: events re-read after a crash or a fall-back are
predicted and published again; exactly once with ``exactly-once``. Two exceptions lose the exactly-once
property, both logged: an eviction (``lost``) after a checkpoint whose commit had failed (the new owner starts
at the older committed offset), and a newest checkpoint that is corrupt while its offsets were committed (the
fallback checkpoint is older than the group's offset: the events in between are skipped by this model).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import threading
import time
from collections import Counter
from operator import itemgetter
from typing import Any

from kafka import TopicPartition
from kafka.errors import KafkaError
from stream_logreg._stream import learn_values

from consumers.config import LearnerConfig
from consumers.labels import Labels, check_co_partitioned
from consumers.outputs import Outputs, check_topics
from consumers.pacing import Pacer
from consumers.pipeline import Pipeline
from consumers.source import PACED, SOUGHT, Source, default_instance_id, wait_or_stop
from consumers.state.checkpointing import Checkpointing, hold_directory, parse_ref, tp_key, tp_keys
from consumers.state.takeover import find_orphans
from consumers.state.transactions import Transactions
from consumers.stats import LearnerStats, progressive_metrics
from stream_logreg.checkpoints import CheckpointError, DirectoryStore
from stream_logreg.codec import Event, Reason

__all__ = ["Fenced", "Learner"]

log = logging.getLogger(__name__)

_LOG_EVERY_SECONDS = 10.0
#: Partitions of a state topic the learner creates: keys apart, so that a member killed mid-transaction
#: holds up the readers of few other keys (until the next owner of its key fences it, or Kafka aborts it).
STATE_PARTITIONS = 16
#: Seconds each step of the shutdown may take after a stop request (flush, commit, closing each client).
STOP_BUDGET = 1.0


def _clients(config: LearnerConfig, stats: LearnerStats) -> tuple[Any, Any]:
    """The source and the outputs on the client backend of ``config.kafka_client``."""
    if config.kafka_client == "confluent":
        from consumers.confluent import ConfluentOutputs, ConfluentSource

        return ConfluentSource(config, stats), ConfluentOutputs(config, stats)
    return Source(config, stats), Outputs(config, stats)


class Fenced(Exception):
    """Another member joined the group with this learner's ``group_instance_id``."""


class _RateLimitedLog:
    """At most one log line per key every ``every`` seconds, telling how many were suppressed."""

    def __init__(self, every: float = _LOG_EVERY_SECONDS) -> None:
        self.every = every
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def __call__(self, key: str, level: int, msg: str, *args: Any, extra: dict | None = None) -> None:
        now = time.monotonic()
        if now - self._last.get(key, -math.inf) < self.every:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._last[key] = now
        n = self._suppressed.pop(key, 0)
        if n:
            msg += f" ({n} similar suppressed in the last {self.every:.0f}s)"
        log.log(level, msg, *args, extra={**(extra or {}), "suppressed": n})

    def flush(self) -> None:
        """Say how many lines of each key were suppressed since its last line (none would follow)."""
        for key, n in sorted(self._suppressed.items()):
            log.info("%d more like %s suppressed", n, key, extra={"suppressed": n, "reason": key})
        self._suppressed.clear()


class Learner:
    """Learns an :class:`~stream_logreg.OnlineLogisticRegression` from Kafka topics; see the module docs.

    >>> learner = Learner(config)                        # doctest: +SKIP
    >>> signal.signal(signal.SIGTERM, lambda *_: learner.stop())   # doctest: +SKIP
    >>> learner.run()                                    # doctest: +SKIP

    ``model``, ``checkpoint_id`` and ``stats`` are public. The model is restored from the newest valid
    checkpoint in ``config.checkpoint_dir`` (or ``store``) on construction (a fresh one if there is none).
    """

    def __init__(self, config: LearnerConfig, *, store: Any = None) -> None:
        self.config = config
        self.stats = LearnerStats(window=config.metrics_window)
        self._codec = config.make_codec()
        self._decode = self._codec.decoder()  # compiled: what self._codec.decode gives
        self._rows = self._codec.row_decoder()  # the common shape, bytes → the model's columns (or None)
        self._instance_id = config.group_instance_id or default_instance_id(config.checkpoint_dir)
        self._exactly_once = config.processing_guarantee == "exactly-once"
        self._stopping = threading.Event()
        self._transactions = Transactions(config, self._stopping.is_set, lambda: self._source.consumer)
        if store is None:
            if config.state_store == "kafka":
                store = self._open_store(self._instance_id)
            else:
                store = DirectoryStore(config.checkpoint_dir, keep=config.keep_checkpoints)
        self._lock = threading.RLock()  # the model and the offset bookkeeping
        self._ratelog = _RateLimitedLog()
        # Delayed labels (--labels-topic): the join store, saved and restored with the model.
        self._labels = Labels(config, self.stats) if config.labels_topic else None
        # One model for the group (consumers.state.group_model): the others' contributions, read from the
        # state topic; the checkpointing synchronises with them.
        self.group = self._open_group(store) if config.group_sync_seconds and hasattr(store, "key") else None
        self._state = Checkpointing(store, config, self.stats, member=self._instance_id,
                                    group_metadata=(self._transactions.group_metadata if self._exactly_once
                                                    else None),
                                    extra_state=self._labels, group=self.group)
        self._source, self._outputs = _clients(config, self.stats)
        # Delayed labels: the events and labels topics read in step by record time (consumers.pacing)
        # (a lead in record time of half the TTL, or a half-full store; any lead where a pause is cheap)
        self._pacer = (Pacer(config.labels_topic, self._source.record,
                             0 if self._source.pause_keeps_fetched else int(config.label_ttl * 500),
                             self._labels.crowded, from_start=config.auto_offset_reset == "earliest")
                       if self._labels is not None else None)
        self._outputs.group = self.group  # predictions carry the group model's version
        self._topics_checked = False
        self._pipeline: Pipeline | None = None  # while running: the polled batch being learned
        self._rebalanced = False  # a rebalance callback ran since the loop last settled (Learner._ready)
        self._ends: dict[TopicPartition, int] = {}  # the positions after the last batch handed over
        self._in_flight = 0  # the records of the last batch handed over
        self._unpublished = 0  # records processed, counted in stats.consumed by _publish_learned

    @property
    def model(self) -> Any:
        """The model being learned (the one of :class:`~consumers.state.checkpointing.Checkpointing`)."""
        return self._state.model

    @model.setter
    def model(self, model: Any) -> None:
        self._state.model = model

    @property
    def checkpoint_id(self) -> str | None:
        return self._state.checkpoint_id

    def _open_store(self, key: str) -> Any:
        """The Kafka store of state key ``key`` (opening it fences every older writer of the key)."""
        from consumers.state.kafka_store import KafkaStore, own_settings

        cfg = self.config
        settings = {k: v for k, v in cfg.client_settings.items() if k not in own_settings}
        producer = self._transactions.producer(key) if self._exactly_once else None
        try:
            return KafkaStore(
                cfg.bootstrap_servers, key=key, group_id=cfg.group_id, keep=cfg.keep_checkpoints,
                timeout=cfg.connect_timeout, partitions=STATE_PARTITIONS, client_settings=settings,
                producer=producer,
            )
        except BaseException:
            if producer is not None:
                producer.close(timeout=0)
            raise

    def _open_group(self, store: Any) -> Any:
        """The group model's view of the state topic of ``store`` (see :mod:`consumers.state.group_model`)."""
        from consumers.state.group_model import GroupModel, StateTail
        from consumers.state.kafka_store import own_settings

        cfg = self.config
        settings = {k: v for k, v in cfg.client_settings.items() if k not in own_settings}
        tail = StateTail(cfg.bootstrap_servers, store.topic, expect_config=cfg.model_config(),
                         timeout=cfg.connect_timeout, client_settings=settings)
        return GroupModel(tail, cfg.group_sync_seconds)

    # ------------------------------------------------------------------ public API

    def stop(self) -> None:
        """Ask :meth:`run` to checkpoint, commit and return (safe from signal handlers and other threads)."""
        self._stopping.set()

    def run(
        self, stop_event: threading.Event | None = None, max_idle_seconds: float | None = None
    ) -> LearnerStats:
        """Consume until :meth:`stop`, ``stop_event`` is set, or no message came for ``max_idle_seconds``
        (counted only while connected and assigned partitions).

        Returns the stats. Before returning: a final checkpoint, a commit, and leaving the group. Raises
        :class:`~consumers.source.ConnectTimeout` if the brokers cannot be reached within
        ``config.connect_timeout`` seconds, :class:`~consumers.outputs.MissingTopics` if an output topic
        does not exist (and ``create_topics`` is off), :class:`Fenced` if another member took this one's
        ``group_instance_id``.
        """
        cfg = self.config
        should_stop = self._stop_check(stop_event)
        source, state, outputs = self._source, self._state, self._outputs
        path = getattr(state.store, "path", None)
        held = hold_directory(path) if isinstance(state.store, DirectoryStore) else None
        try:
            connected = source.connect(self, should_stop, cfg.connect_timeout, before=self._prepare_outputs)
        except BaseException:
            outputs.close(0)
            self._stopping.clear()
            if held is not None:
                held.close()
            raise
        if not connected:
            outputs.close(0)
            self._stopping.clear()
            if held is not None:
                held.close()
            return self.stats
        with self.stats.lock:
            self.stats.running = True
        fenced = None
        idle_since = last_progress = time.monotonic()
        next_progress = idle_since + cfg.progress_every_seconds
        self._progress_consumed = self.stats.consumed
        backoff = 0.1
        # Batch k is polled while the worker learns batch k - 1 (consumers.pipeline). After the poll, in this
        # order: batch k - 1 is completed; the partitions batch k cannot be learned from are settled (newly
        # assigned ones sought, a rollback's reload and seek, a partition the client rewound sought back);
        # then the tick checkpoints and commits batch k - 1; then batch k is synced, begun and handed over,
        # without the records of a partition sought in this step, or at all if the tick failed and the model
        # must roll back (read again after the next poll's seek).
        # With batch size 1 the worker is soon in its GIL-free pass: the loop polls once it is there. When
        # nothing of the above has anything to do, batch k is handed over behind batch k - 1 (_ready).
        pipeline = self._pipeline = Pipeline(self._learn_batch, wait_taken=cfg.batch_size == 1)
        # What exists by now (modules, the model, the clients) is left out of the cyclic collector's passes
        # while the loop runs: the client's message objects (GC-tracked, thousands a poll, alive until the
        # worker is done with them) trigger a full collection every few polls, which would otherwise scan
        # the whole heap with the GIL held, stalling the worker (~30 ms each, 1-2 per 200,000 events here).
        gc.freeze()
        try:
            while not should_stop():
                try:
                    batch = source.poll(cfg.poll_timeout_ms)
                    self.stats.last_poll_time = time.time()
                except KafkaError as exc:
                    self._complete(pipeline)  # checkpointed after a poll that works
                    with self.stats.lock:
                        self.stats.last_poll_time = time.time()
                        self.stats.poll_errors += 1
                    self._ratelog("poll", logging.WARNING, "poll failed, retrying in %.1fs: %r", backoff, exc)
                    wait_or_stop(backoff, should_stop)
                    backoff = min(backoff * 2, 5.0)
                    continue
                backoff = 0.1
                work = self._ready(batch) if pipeline.busy else None
                if work is not None:  # nothing due: handed over while the batch before is learned
                    n = self._hand_over(pipeline, work)
                    now = time.monotonic()
                    if now >= next_progress:
                        self._log_progress(now - last_progress)
                        last_progress, next_progress = now, now + cfg.progress_every_seconds
                    self._watch_connection()
                    idle_since = now
                    continue
                self._complete(pipeline)
                if state.fenced is None and source.fenced:
                    fenced = Fenced(f"another learner joined group {cfg.group_id} with this learner's "
                                    f"--group-instance-id {source.instance_id}: give each its own "
                                    "--checkpoint-dir or --group-instance-id")
                    log.error("%s", fenced, extra={"reason": "fenced"})
                    break
                source.unstick()
                self._rebalanced = False  # settled from here on
                with self._lock:
                    work = self._settle(batch) if state.fenced is None else {}
                if state.fenced is not None:  # another member took this state over: learning on would
                    fenced = Fenced(f"{state.fenced}")  # learn its events a second time
                    break
                n = sum(len(rv[0]) for rv in work.values())
                if work:
                    self._submitted(work, n)
                    pipeline.submit(work)
                now = time.monotonic()
                if now >= next_progress:
                    self._log_progress(now - last_progress)
                    last_progress, next_progress = now, now + cfg.progress_every_seconds
                connected = self._watch_connection()
                if n or not connected or source.pending or not source.assignment():
                    idle_since = now  # an outage or a wait for partitions is not idleness
                elif max_idle_seconds is not None and now - idle_since >= max_idle_seconds:
                    log.info("no message for %.1fs: stopping", max_idle_seconds)
                    break
            pipeline.complete()  # the last batch, checkpointed by the shutdown
            with self._lock:
                self._publish_stats()
        finally:
            gc.unfreeze()  # collectable again (by the next full collection)
            pipeline.close()  # the batch in flight completes first
            self._pipeline = None
            self._shutdown()
            self._stopping.clear()  # a later run() starts afresh
            if held is not None:
                held.close()
        if fenced is None and state.fenced is not None:  # found out by the final checkpoint
            fenced = Fenced(str(state.fenced))
        if fenced is not None:
            raise fenced
        return self.stats

    def _learn_batch(self, work: dict) -> None:
        """The worker's part (consumers.pipeline): process the records of each partition of a polled batch."""
        with self._lock:
            for tp, (records, values) in work.items():
                self._process(tp, records, values)
            self._publish_learned(work)

    def _ready(self, batch: dict) -> dict | None:
        """The work of ``batch`` if it may be handed over while the batch before is still being learned
        (:meth:`Pipeline.hand_over`), else None: the loop then completes that one and settles as usual.

        Only when nothing would be done between the two batches: batch size 1 with neither exactly-once,
        delayed labels nor the group model; no rebalance since the last settling; nothing to seek or
        reload; no tick due even counting the batch in flight (:meth:`Checkpointing.quiet`); and every
        partition's records starting at or after the position the model has once the batch in flight is
        learned (its last offset + 1: what ``_process`` sets), so that none was rewound. What
        :meth:`_settle` would have done then is nothing but this hand-over, so the model, its positions and
        every checkpoint are the same as if the loop had waited (no lock taken: the worker holds it; every
        state read here is the loop's own, or only grows while the worker runs, which makes the answer
        None, not wrong)."""
        state, source = self._state, self._source
        if (not batch or not self._pipeline.wait_taken or self._rebalanced or self._exactly_once
                or self._pacer is not None or self.group is not None or state.needs_reload
                or state.fenced is not None or source.fenced or source.pending
                or not state.quiet(self._in_flight)):
            return None
        ends, positions, view = self._ends, state.positions, source.record
        for tp, (records, _) in batch.items():
            if records:
                expected = ends.get(tp)
                if expected is None:
                    expected = positions.get(tp)
                if expected is None or view(records[0]).offset < expected:
                    return None  # a new partition's first records (origins), or rewound: _settle's
        if source.commit_failures():  # a periodic commit was refused: commit again (at the next tick)
            state.commit_pending = True
        return {tp: rv for tp, rv in batch.items() if rv[0]}

    def _submitted(self, work: dict, n: int) -> None:
        """Note what the batch handed over leaves the positions at (:meth:`_ready`)."""
        view = self._source.record
        self._ends = {tp: view(records[-1]).offset + 1 for tp, (records, _) in work.items()}
        self._in_flight = n

    def _hand_over(self, pipeline: Pipeline, work: dict) -> int:
        """Hand ``work`` over behind the batch in flight (:meth:`_ready`), then fold the lag into the stats
        (the positions, the model's size and the counts are the worker's, :meth:`_publish_learned`);
        returns how many records it has."""
        n = sum(len(rv[0]) for rv in work.values())
        self._submitted(work, n)
        pipeline.hand_over(work)
        self._publish_highwaters()
        return n

    def _complete(self, pipeline: Pipeline) -> None:
        """Complete the batch in flight (its exception raised here), then fold the stats."""
        pipeline.complete()
        with self._lock:
            self._publish_stats()

    def _settle(self, batch: dict) -> dict:
        """After the poll of ``batch`` and the completion of the batch before: seek what must be sought,
        checkpoint and commit what is due, and return the part of ``batch`` to learn (the caller holds the
        lock; nothing is in flight).

        The records of a partition that is sought here were fetched from before the seek: they are
        dropped, and fetched again from where it was sought. These are the newly assigned partitions, all
        of them when the model rolls back to its last checkpoint (a failed checkpoint or transaction, a
        loss), and a partition whose records start before its position (the client rewound it on its own:
        learning them would learn events twice; it is sought back to its position). The tick comes after
        the seeks, so that a checkpoint never holds the offsets of a partition not sought yet; if the tick
        itself fails and the model must roll back, the whole batch is dropped (the next poll's reload seeks
        every partition back to the checkpoint)."""
        state, source = self._state, self._source
        if self._exactly_once and self._outputs.lost:  # the open transaction may not commit without them
            self._transactions.abort(state, self._outputs, f"{self._outputs.lost} of its outputs could not "
                                     "be sent; they are published again")
            state.needs_reload = True
        pending = set(source.pending)
        if state.needs_reload:  # every partition is sought back to the checkpoint
            pending |= source.assignment()
        pending |= self._rewound(batch, pending)
        if state.needs_reload or source.pending:
            self._init_partitions()
        pending |= source.pending  # still waiting (committed offsets not fetched yet)
        if self._pacer is not None:  # sought or waiting: what was read of them says nothing any more
            self._pacer.forget(pending)
        if source.commit_failures():  # a periodic commit was refused: commit again
            state.commit_pending = True
        state.tick(source.assignment(), source.pending, self._flush, source.commit_soon)
        if state.needs_reload or state.fenced is not None:
            return {}
        work = {tp: rv for tp, rv in batch.items() if tp not in pending and rv[0]}
        if self._pacer is not None:  # after every poll, an empty one too: a pause may end without records
            self._pace(work)
        if not batch:
            return {}
        if self.group is not None:  # never predict with a model staler than that
            state.sync_if_due()
        if self._exactly_once:
            self._transactions.begin(state)
        return work

    def _pace(self, work: dict) -> None:
        """Hold back (:data:`~consumers.source.PACED`) the events or labels partitions that read ahead of
        their partner in record time, release those that no longer do (:class:`~consumers.pacing.Pacer`).

        The source says which partitions are held back (a revoke or an assignment lets go of them), the
        pacer which should be: the difference is paused and resumed, every poll. A partition waiting to be
        sought is not paced (released if it was: the pacer forgot what was read of it)."""
        pacer, source = self._pacer, self._source
        pacer.read({tp: records for tp, (records, _) in work.items()})
        held = source.held(PACED)
        pacer.held = set(held)
        pacer.step(source.assignment() - source.pending, source.highwater, self._state.positions.get)
        want = pacer.held
        source.release(held - want, PACED)
        source.hold(want - held, PACED)
        with self.stats.lock:
            self.stats.held_back = len(want)

    def _rewound(self, batch: dict, pending: set[TopicPartition]) -> set[TopicPartition]:
        """The partitions of ``batch`` (not ``pending``) whose records start before their position (the
        next offset the model has not read): paused and pending, to be sought back to it."""
        view, positions, origins = self._source.record, self._state.positions, self._state.origins
        rewound = set()
        for tp, (records, _) in batch.items():
            if not records:
                continue
            expected = positions.get(tp)
            if expected is None:  # started at auto_offset_reset: where a rollback reads it again from (also
                origins.setdefault(tp, view(records[0]).offset)  # when these records are dropped: pending)
                continue
            if tp in pending:
                continue
            first = view(records[0]).offset
            if first < expected:
                log.warning("%s: the client returned offset %d while the model has read up to %d: seeking it "
                            "back (those events are not learned again)", tp_key(tp), first, expected,
                            extra={"topic": tp.topic, "partition": tp.partition, "offset": first,
                                   "reason": "rewound"})
                rewound.add(tp)
        if rewound:
            self._source.hold(rewound, SOUGHT)
        return rewound

    def _await_batch(self) -> None:
        """For the rebalance callbacks: the batch in flight completes first (its model, positions and
        counts are what a checkpoint here covers)."""
        pipeline = self._pipeline
        if pipeline is not None:
            pipeline.wait()

    # ------------------------------------------------------------------ setup and teardown

    def _stop_check(self, stop_event: threading.Event | None) -> Any:
        stopping = self._stopping
        if stop_event is None:
            return stopping.is_set
        return lambda: stopping.is_set() or stop_event.is_set()

    def _log_progress(self, seconds: float) -> None:
        """The periodic INFO line: events/s since the last one, the lag, the last checkpoint (and how many
        warnings were suppressed since their last line)."""
        self._ratelog.flush()
        snap = self.stats.snapshot()
        rate = (snap["consumed"] - self._progress_consumed) / max(seconds, 1e-9)
        self._progress_consumed = snap["consumed"]
        lag = sum(snap["lag"].values())
        ckpt, at = snap["last_checkpoint_id"], snap["last_checkpoint_time"]
        age = f"{time.time() - at:.0f}s ago" if at is not None else "none yet"
        log.info(
            "progress: %.0f events/s, lag %d, %d learned, %d rejected, last checkpoint %s (%s)",
            rate, lag, snap["learned"], snap["rejected_total"], ckpt, age,
            extra={"events_per_second": round(rate, 1), "lag": lag, "checkpoint_id": ckpt,
                   "learned": snap["learned"], "rejected": snap["rejected_total"]},
        )

    def _watch_connection(self) -> bool:
        """Whether the group coordinator is reachable; a loss is logged and counted."""
        connected = self._source.connected()
        st = self.stats
        if connected != st.connected:
            with st.lock:
                st.connected = connected
                if not connected:
                    st.connection_failures += 1
            if connected:
                log.info("connected to the group coordinator again")
            else:
                log.warning("lost the connection to the group coordinator", extra={"reason": "disconnected"})
        return connected

    def _prepare_outputs(self) -> None:
        """Create the producer, and check (or create) the output topics once (``MissingTopics``)."""
        cfg = self.config
        topics = [t for t in (cfg.predictions_topic, cfg.dead_letter_topic) if t]
        if (topics or cfg.labels_topic) and not self._topics_checked:
            if topics:
                check_topics(cfg.admin_kwargs(1000), topics, cfg.topics[0], cfg.create_topics)
            if cfg.labels_topic:  # NotCoPartitioned: refuse to start
                check_co_partitioned(cfg.admin_kwargs(1000), cfg.topics, cfg.labels_topic)
            self._topics_checked = True
        if self._exactly_once:  # the outputs go into the state's transactions
            self._outputs.producer = self._state.store.producer
        if self._labels is not None:
            self._labels.connect()
        self._outputs.connect()

    def _flush(self, timeout: float, interruptible: bool = True) -> bool:
        """Whether every output since the last checkpoint is acknowledged (waiting at most ``timeout``).
        Exactly-once: never when one was dropped, which the transaction would otherwise commit without."""
        done = self._outputs.flush(timeout, self._stopping.is_set if interruptible else lambda: False)
        return done and not (self._exactly_once and self._outputs.lost)

    def _shutdown(self) -> None:
        """Final checkpoint and commit, then leave the group (the revoke callback then has nothing to do).

        After a stop request (SIGTERM, Ctrl-C) every step is bounded by :data:`STOP_BUDGET` seconds (the
        final flush, the commit, closing each client), so that the process exits within a couple of
        seconds whatever the cluster does; otherwise by ``commit_timeout_ms``.
        """
        state, source, cfg = self._state, self._source, self.config
        timeout = cfg.commit_timeout_ms / 1000
        connected = source.consumer is not None and source.connected()
        if self._stopping.is_set():
            # without a group coordinator, the commit and the leave cannot succeed: do not wait for them
            timeout = min(timeout, STOP_BUDGET if connected else 0.2)
        timeout_ms = max(int(timeout * 1000), 1)
        try:
            with self._lock:
                flush = lambda t: self._flush(timeout, interruptible=False)  # noqa: E731  (bounded)
                owned = source.assignment() - source.pending if source.consumer is not None else set()
                if state.fenced is None and state.since_checkpoint and not state.checkpoint(
                    "stop", flush, commit_to=owned
                ):
                    log.error("no final checkpoint: a restart resumes from checkpoint %s",
                              state.checkpoint_id, extra={"checkpoint_id": state.checkpoint_id})
                if self._exactly_once and state.fenced is None:
                    self._transactions.abort(state, self._outputs, "stopping")
                if state.commit_pending or source.unconfirmed():  # a periodic commit not answered yet
                    state.commit(source.assignment(), source.pending,
                                 lambda offsets: source.commit(offsets, timeout_ms))
        finally:
            # unlocked: runs the revoke callback; a fenced member must not remove the one that fenced it
            source.close(timeout_ms, leave=connected and not source.fenced)
            self._outputs.close(timeout)
            close_store = getattr(state.store, "close", None)
            if close_store is not None:
                try:
                    close_store()
                except Exception:
                    log.exception("closing the state store failed")
            if self._labels is not None:
                self._labels.close(timeout)
            if self.group is not None:
                self.group.close()
            with self.stats.lock:
                self.stats.running = False
                self.stats.assigned = []

    # ------------------------------------------------------------------ the hot loop

    def _process(self, tp: TopicPartition, records: list, values: list) -> None:
        """Decode, predict, learn or score, publish; ``records`` are consecutive messages of ``tp`` (as the
        client gives them) and ``values`` their values. The hot path reads only the values: the records
        are made neutral (``source.record``) only for an output (and once per partition and poll for a
        mini-batch's bookkeeping, :class:`~consumers.state.buffer.Buffer`)."""
        cfg = self.config
        view = self._source.record
        state = self._state
        labels = self._labels
        if labels is not None and tp.topic == labels.topic:
            self._process_labels(tp, records, values)
            return
        decode = self._decode
        model = state.model
        predict = model.predict_proba_one
        predict_learn_one = model.predict_learn_one
        batch_size = cfg.batch_size
        buffer = state.buffer
        publish = self._outputs.prediction if cfg.predictions_topic else None
        publish_labelled = publish is not None and cfg.publish_labelled
        cid = state.checkpoint_id
        # The predictions of the labelled events learned, and their labels: the metrics, once at the end.
        ps: list[float] = []
        ys: list[int] = []
        ps_append, ys_append = ps.append, ys.append
        scored = 0
        # With batch_size 1 (and no prediction to publish per labelled event) the labelled events are decoded
        # and learned in one compiled pass; it stops at each message that needs this loop (a rejection, an
        # unlabelled event, a refused update), which is handled here, and goes on from the next one. A message
        # of the common shape (numbers of known features) is read by the row decoder from its bytes straight
        # into the model's columns, no Python object per feature; any other takes the codec's way.
        fast = batch_size == 1 and not publish_labelled
        rows = self._rows
        i, n = 0, len(values)
        if len(records) != n:
            raise ValueError(f"{len(records)} records but {n} values")
        score = join = None
        if fast and labels is not None:
            # With delayed labels, an unlabelled event of the common shape is predicted in the compiled pass
            # too (from its encoded row, bitwise predict_proba_one); here only its publication and its keeping
            # (Labels.scorer: kept with the batch's others in one store call, or joined and learned at once).
            def published(j: int, x: dict, id_: str | None, p: float) -> None:
                publish(view(records[j]), Event(x, None, id_), p, model.n_samples_seen, cid)

            score, n_scored, join = labels.scorer(records, model, published if publish is not None else None,
                                                  state.learned, tp, self._learn_joined, self._reject, view)
        while i < n:
            if fast:
                i, ev, refused = learn_values(decode, predict_learn_one, values, i, ps, ys, Event,
                                              rows, model, score, join=join)
                if i == n:
                    break
            elif batch_size > 1:  # labelled events of the common shape: straight into the next mini-batch
                i = buffer.take(rows, values, i, model.features, tp, records, view)
                if len(buffer) >= batch_size:
                    self._learn_buffer(ps, ys)
                    continue
                if i == n:
                    break
                ev, refused = decode(values[i]), None
            else:
                ev, refused = decode(values[i]), None
            r = records[i]
            i += 1
            if refused is not None:  # a bad value or a non-finite update: the model unchanged
                self._reject(view(r), Reason.BAD_VALUE, f"the model refused the update: {refused}")
                continue
            if ev.__class__ is not Event:
                self._reject(view(r), ev.reason, ev.detail)
                continue
            x, y, _ = ev
            if y is None:  # score only
                try:
                    p = predict(x)[True]
                except ValueError as exc:  # the codec should have caught it; never let it reach the model
                    self._reject(view(r), Reason.BAD_VALUE, str(exc))
                    continue
                scored += 1
                if publish is not None:
                    publish(view(r), ev, p, model.n_samples_seen, cid)
                if labels is not None and ev.id is not None:  # kept until its label comes
                    joined = labels.event(r, ev.id, x, p, model.n_samples_seen)
                    if joined:
                        self._learn_joined([(view(r), j) for j in joined])
            elif batch_size == 1:
                try:
                    p = predict_learn_one(x, y)  # progressive validation: p is from before the update
                except ValueError as exc:  # a bad value or a non-finite update: refused, the model unchanged
                    self._reject(view(r), Reason.BAD_VALUE, f"the model refused the update: {exc}")
                    continue
                ps_append(p)
                ys_append(y)
                if publish_labelled:  # p is the prediction of the model before this sample
                    publish(view(r), ev, p, model.n_samples_seen - 1, cid)
            else:
                buffer.add(x, y, i - 1, tp, records, view)
                if len(buffer) >= batch_size:
                    self._learn_buffer(ps, ys)
        if score is not None:
            scored += n_scored()
        state.positions[tp] = view(records[-1]).offset + 1
        state.since_checkpoint += len(records)
        learned = len(ps)
        if batch_size == 1 and learned:
            state.learned[tp] = state.learned.get(tp, 0) + learned
        loss, hits = progressive_metrics(ps, ys) if learned else (0.0, 0)
        self._unpublished += len(records)
        st = self.stats
        with st.lock:
            st.learned += learned
            st.scored += scored
            st._add_chunk(learned, loss, hits)

    def _process_labels(self, tp: TopicPartition, records: list, values: list) -> None:
        """Records of the labels topic (the client's, and their values): feed the join store, learn what it
        joins, in one pass each."""
        view = self._source.record
        self._learn_joined(self._labels.records(records, self._reject, values, view))
        state = self._state
        state.positions[tp] = view(records[-1]).offset + 1
        state.since_checkpoint += len(records)
        self._unpublished += len(records)

    def _learn_joined(self, joined: list) -> None:
        """Learn joined events once each (delayed metrics in the stats), counted under their event's
        partition."""
        counts = self._state.learned
        learned = self._labels.learn(self._state.model, joined, self._reject)
        if len(learned) == 1:  # an event whose label was waiting
            tp = TopicPartition(learned[0].topic, learned[0].partition)
            counts[tp] = counts.get(tp, 0) + 1
            return
        for (topic, partition), k in Counter(map(itemgetter(7, 8), learned)).items():
            tp = TopicPartition(topic, partition)
            counts[tp] = counts.get(tp, 0) + k

    def _learn_buffer(self, ps: list[float], ys: list[int]) -> None:
        """Predict and learn the buffered mini-batch, adding the predictions and labels of its events to
        ``ps`` and ``ys``; on refusal, dead-letter its events.

        The predictions are those of the model before the batch, which is the model each event met when
        it arrived (nothing is learned while a batch fills).
        """
        state = self._state
        buffer = state.buffer
        view = self._source.record
        seen = state.model.n_samples_seen
        try:
            try:
                p = buffer.batch.learn(state.model).tolist()
            except ValueError as exc:  # refused before changing the model
                for r in buffer.records(view):
                    self._reject(r, Reason.BAD_VALUE, f"the model refused the mini-batch: {exc}")
                return
            ps += p
            ys += buffer.batch.labels()
            if self.config.predictions_topic and self.config.publish_labelled:
                decode, cid = self._decode, state.checkpoint_id
                for r, p_ev in zip(buffer.records(view), p, strict=True):
                    self._outputs.prediction(r, decode(r.value), p_ev, seen, cid)
            counts = state.learned
            for tp, k in buffer.counts():
                counts[tp] = counts.get(tp, 0) + k
        finally:
            buffer.clear()

    def _reject(self, record: Any, reason: Reason, detail: str) -> None:
        reason = Reason(reason)
        with self.stats.lock:
            self.stats.rejected[reason.value] = self.stats.rejected.get(reason.value, 0) + 1
        self._ratelog(
            "reject:" + reason.value, logging.WARNING, "rejected a message (%s): %s", reason.value,
            detail[:300], extra={"topic": record.topic, "partition": record.partition,
                                 "offset": record.offset, "reason": reason.value},
        )
        self._outputs.dead_letter(record, reason.value, detail)

    # ------------------------------------------------------------------ rebalances (RebalanceHandler)

    def on_revoked(self, partitions: set[TopicPartition]) -> dict:
        """Checkpoint, then let go of ``partitions``; returns the offsets to commit."""
        self._await_batch()
        self._rebalanced = True
        with self._lock:
            state = self._state
            owned = partitions - self._source.pending
            self._source.drop(partitions)  # no pause outlives its partition
            # Bounded: this runs on the IO thread, where a long flush would delay heartbeats.
            flush_timeout = min(self.config.commit_timeout_ms / 1000, 2.0)
            if self._labels is not None and not self._source.closing and not state.needs_reload:
                # pending joins follow their partitions (on a stop they stay: a restart gets them back)
                self._hand_off({(tp.topic, tp.partition) for tp in owned}, flush_timeout)
            ok = (state.checkpoint("revoke", self._flush, flush_timeout, commit_to=owned)
                  if state.since_checkpoint else True)
            if self._exactly_once:  # what the transaction did not commit may not outlive the partitions
                self._transactions.abort(state, self._outputs, "revoked")
            # Nothing to commit when the checkpoint failed (its offsets are not durable), or when the last
            # checkpoint's offsets are committed already.
            unanswered = self._source.unconfirmed()  # a periodic commit may not be in yet
            offsets = (state.commit_offsets(owned, set()) if ok and (state.commit_pending or unanswered)
                       else {})
            self._let_go(partitions, "revoked")
            return offsets

    def on_lost(self, partitions: set[TopicPartition]) -> None:
        """Evicted from the group: the partitions may already be another member's, which starts at the
        group's committed offset. No checkpoint and no commit; keeping what was learned since the last
        checkpoint would learn those events twice across the group, so the model falls back to its last
        durable checkpoint (the reload is flagged) and re-reads them if the partitions come back."""
        self._await_batch()
        self._rebalanced = True
        with self._lock:
            state = self._state
            owned = partitions - self._source.pending
            self._source.drop(partitions)  # no pause outlives its partition
            if (state.commit_pending or self._source.unconfirmed()) and state.commit_offsets(owned, set()):
                log.warning(
                    "evicted before checkpoint %s was committed: if another member takes the partitions, it "
                    "starts at an older offset and learns events again", state.checkpoint_id,
                    extra={"checkpoint_id": state.checkpoint_id},
                )
            self._let_go(partitions, "lost")

    def _let_go(self, partitions: set[TopicPartition], how: str) -> None:
        self._state.let_go(partitions)
        with self.stats.lock:
            gone = {tp_key(tp) for tp in partitions}
            self.stats.assigned = [k for k in self.stats.assigned if k not in gone]
        log.info("%s %s (checkpoint %s)", how, tp_keys(partitions), self._state.checkpoint_id,
                 extra={"checkpoint_id": self._state.checkpoint_id})

    def on_assigned(self, partitions: set[TopicPartition]) -> None:
        """The source has paused them; the main loop seeks them right after ``poll()`` returns."""
        self._await_batch()
        self._rebalanced = True
        with self.stats.lock:
            self.stats.rebalances += 1
        if partitions:
            log.info("assigned %s", tp_keys(partitions))

    def _init_partitions(self) -> None:
        """Seek newly assigned partitions to max(checkpoint offset, committed offset), then resume them."""
        state, source = self._state, self._source
        if state.needs_reload:
            log.warning("the model is ahead of its last checkpoint (a failed checkpoint): reloading it")
            if self._exactly_once:
                self._transactions.abort(state, self._outputs, "rolling back")
                self._outputs.reset()  # also after a failed commit, whose transaction is gone already
            state.restore()
            source.hold(source.assignment(), SOUGHT)
        assigned = source.assignment()
        source.drop(set(source.paused) - assigned)  # not ours any more (the client forgets them too)
        tps = sorted(source.pending)
        if not tps:
            return
        try:
            found = source.committed_metadata(tps)
            if hasattr(state.store, "key"):
                self._take_over(found)
            committed = {tp: (None if m is None else m.offset) for tp, m in found.items()}
            ends = source.end_offsets(tps)
        except (KafkaError, OSError, CheckpointError) as exc:
            self._ratelog(
                "committed", logging.WARNING, "fetching committed offsets failed, retrying: %r", exc
            )
            return  # stay paused; the next loop iteration tries again
        source.seek_and_resume(state.start_offsets(committed, ends))
        if self._pacer is not None:
            self._pacer.assigned(ends)
        with self.stats.lock:
            self.stats.assigned = [tp_key(tp) for tp in sorted(assigned)]
        if self._labels is not None:  # entries a crash or a stop left here for partitions now another's
            self._hand_off(self._labels.strays(assigned), min(self.config.commit_timeout_ms / 1000, 2.0))

    def _hand_off(self, keys: set, timeout: float) -> None:
        """Hand the pending joins of partitions ``keys`` to their next owner (:meth:`Labels.hand_off`);
        exactly-once: in the open transaction, which the next checkpoint commits."""
        if not keys:
            return
        producer = None
        if self._exactly_once:
            self._transactions.begin(self._state)
            if self._state.fenced is not None:
                return
            producer = self._outputs.producer
        if self._labels.hand_off(keys, timeout, producer):
            self._state.since_checkpoint = max(self._state.since_checkpoint, 1)

    def _take_over(self, committed: dict[TopicPartition, Any]) -> None:
        """On an assignment with the Kafka store: mark the new partitions with the lost members' states
        that covered them, and continue the one covering most of them if this member is fresh (nothing
        learned, no state of its own): :mod:`consumers.state.takeover` decides, from the committed offsets'
        metadata."""
        state, source = self._state, self._source
        refs = {tp: r for tp, m in committed.items()
                if m is not None and (r := parse_ref(m.metadata)) is not None}

        def held_keys(live: set[str]) -> set[str]:
            return {r.key for m in source.group_offsets().values()
                    if (r := parse_ref(getattr(m, "metadata", None))) is not None and r.member in live}

        found = find_orphans(refs, state.store.key, self._instance_id, source.live_members, held_keys)
        for tp, mark in found.marks.items():
            if mark is None:
                state.orphans.pop(tp, None)
            else:
                state.orphans[tp] = mark
        key = found.key
        if key is None or not state.fresh:
            return
        store = self._open_store(key)
        previous = state.store
        with contextlib.suppress(CheckpointError):
            previous.abort()
        state.adopt(store)
        previous.close()
        if self._exactly_once:  # the outputs go into the transactions of the state taken over
            self._outputs.producer = store.producer
            previous.producer.close(timeout=1)
        for tp in [tp for tp, o in state.orphans.items() if o.startswith(f"{key}@")]:
            del state.orphans[tp]
        log.info("took over the state %r of a lost member (checkpoint %s, n_samples_seen=%d)", key,
                 state.checkpoint_id, state.model.n_samples_seen,
                 extra={"checkpoint_id": state.checkpoint_id, "reason": "took_over"})

    # ------------------------------------------------------------------ stats

    def _publish_stats(self) -> None:
        """Fold the model's size and every owned partition's position and highwater (lag) into the stats."""
        st, positions = self.stats, self._state.positions
        owned = {tp_key(tp): positions[tp] for tp in self._source.assignment() if tp in positions}
        highwaters = self._highwaters()
        with st.lock:
            st.positions, st.highwaters = owned, highwaters  # revoked partitions drop out
        self._publish_learned(())

    def _publish_highwaters(self) -> None:
        """Fold every owned partition's highwater (lag) into the stats (the loop's own look-ups: no lock)."""
        highwaters = self._highwaters()
        with self.stats.lock:
            self.stats.highwaters = highwaters

    def _highwaters(self) -> dict[str, int]:
        """Every owned partition's highwater the client knows (local look-ups, no request)."""
        source = self._source
        out = {}
        for tp in source.assignment():
            hw = source.highwater(tp)
            if hw is not None:
                out[tp_key(tp)] = hw
        return out

    def _publish_learned(self, tps: Any) -> None:
        """Fold what learning the records of partitions ``tps`` changed into the stats: their positions, the
        model's size (the worker's part, at the end of each batch: no call of the client)."""
        st, state = self.stats, self._state
        with st.lock:
            for tp in tps:
                if tp in state.positions:
                    st.positions[tp_key(tp)] = state.positions[tp]
            st.n_samples_seen = state.model.n_samples_seen
            st.n_features = state.model.n_features
            st.buffered = len(state.buffer)
        if self._labels is not None:
            self._labels.publish()
        if self._unpublished:  # last: whoever sees the records counted sees all the rest of them
            with st.lock:
                st.consumed += self._unpublished
            self._unpublished = 0

