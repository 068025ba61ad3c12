"""The Kafka learner: poll → decode → predict → learn → checkpoint → commit, crash-safe.

The loop
--------
Each polled message is decoded by :class:`stream_logreg.codec.JsonCodec`:

- a rejection goes to the dead-letter topic (original key and value; headers ``reason``, ``detail``,
  ``source_topic``, ``source_partition``, ``source_offset``), is counted and logged (rate-limited) and never
  reaches the model;
- a labelled event is first predicted (progressive validation: rolling log loss and accuracy in
  :class:`LearnerStats`) and then learned — with ``batch_size`` 1 both in one ``predict_learn_one``, else
  buffered until ``batch_size`` labelled events are waiting, then predicted and learned with one
  ``predict_learn_rows``. Nothing is learned while a batch fills, so each event is predicted by the model
  it met on arrival either way; its prediction is counted (and, with ``publish_labelled``, published)
  once its update is made, and not if the update is refused. Batches are cut from consecutive labelled
  events in stream order whatever the poll boundaries;
- an unlabelled event is scored, and the prediction ``{id, p, checkpoint, n_samples_seen, topic, partition,
  offset}`` is published to the predictions topic when one is configured (``n_samples_seen``: of the model
  that predicted ``p``).

The hot path costs ~1.2 µs per event on top of kafka-python and ``orjson.loads`` (20 features; mostly
compiled: the codec's ``decoder()``, the model's fused steps); the metrics are computed once per polled
batch.

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
retried with the next checkpoint (or the next time tick); the loop goes on.

The bookkeeping of offsets and checkpoints is :mod:`consumers.state.checkpointing`; the outputs, with their
bounds, :mod:`consumers.outputs`; the consumer, its group membership and the threading argument of the
rebalance callbacks :mod:`consumers.source`. This module is the loop that ties them together.

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

Guarantees
----------
Learning is exactly once per consumer group as long as checkpoints stay readable: every event of a partition
is in exactly one member's model, whatever crashes (SIGKILL included), restarts, rebalances and broker outages
happen. The outputs (predictions, dead letters) are at least once while their topics take records: events
re-read after a crash or a fall-back are predicted and published again. Two exceptions lose the exactly-once
property, both logged: an eviction (``lost``) after a checkpoint whose commit had failed (the new owner starts
at the older committed offset), and a newest checkpoint that is corrupt while its offsets were committed (the
fallback checkpoint is older than the group's offset: the events in between are skipped by this model).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter
from operator import itemgetter
from typing import Any

from kafka import TopicPartition
from kafka.errors import KafkaError

from consumers.config import LearnerConfig
from consumers.labels import Labels, check_co_partitioned
from consumers.outputs import Outputs, check_topics
from consumers.source import Source, wait_or_stop
from consumers.state.checkpointing import Checkpointing, tp_key, tp_keys
from consumers.stats import LearnerStats, progressive_metrics
from stream_logreg.checkpoints import DirectoryStore
from stream_logreg.codec import Event, Reason

__all__ = ["Fenced", "Learner"]

log = logging.getLogger(__name__)

_LOG_EVERY_SECONDS = 10.0
#: Seconds each step of the shutdown may take after a stop request (flush, commit, closing each client).
STOP_BUDGET = 1.0


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
        if store is None:
            store = DirectoryStore(config.checkpoint_dir, keep=config.keep_checkpoints)
        self._lock = threading.RLock()  # the model and the offset bookkeeping
        self._stopping = threading.Event()
        self._ratelog = _RateLimitedLog()
        # Delayed labels (--labels-topic): the join store, saved and restored with the model.
        self._labels = Labels(config, self.stats) if config.labels_topic else None
        self._state = Checkpointing(store, config, self.stats, extra_state=self._labels)
        self._source = Source(config, self.stats)
        self._outputs = Outputs(config, self.stats)
        self._topics_checked = False

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
        try:
            connected = source.connect(self, should_stop, cfg.connect_timeout, before=self._prepare_outputs)
        except BaseException:
            outputs.close(0)
            self._stopping.clear()
            raise
        if not connected:
            outputs.close(0)
            self._stopping.clear()
            return self.stats
        with self.stats.lock:
            self.stats.running = True
        fenced = None
        idle_since = last_progress = time.monotonic()
        next_progress = idle_since + cfg.progress_every_seconds
        self._progress_consumed = self.stats.consumed
        backoff = 0.1
        flush = self._flush
        try:
            while not should_stop():
                try:
                    batch = source.consumer.poll(timeout_ms=cfg.poll_timeout_ms)
                    self.stats.last_poll_time = time.time()
                except KafkaError as exc:
                    with self.stats.lock:
                        self.stats.last_poll_time = time.time()
                        self.stats.poll_errors += 1
                    self._ratelog("poll", logging.WARNING, "poll failed, retrying in %.1fs: %r", backoff, exc)
                    wait_or_stop(backoff, should_stop)
                    backoff = min(backoff * 2, 5.0)
                    continue
                backoff = 0.1
                source.unstick()
                n = 0
                with self._lock:
                    if state.needs_reload or source.pending:
                        self._init_partitions()
                    pending = source.pending
                    for tp, records in batch.items():
                        if tp in pending or not records:
                            continue  # not sought yet: these will be fetched again after the seek
                        self._process(tp, records)
                        n += len(records)
                    self._publish_stats()
                    state.tick(source.assignment(), source.pending, flush, source.commit)
                if source.fenced:  # learning on would learn the other member's events a second time
                    fenced = Fenced(f"another learner joined group {cfg.group_id} with this learner's "
                                    f"--group-instance-id {source.instance_id}: give each its own "
                                    "--checkpoint-dir or --group-instance-id")
                    log.error("%s", fenced, extra={"reason": "fenced"})
                    break
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
        finally:
            self._shutdown()
            self._stopping.clear()  # a later run() starts afresh
        if fenced is not None:
            raise fenced
        return self.stats

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
        if self._labels is not None:
            self._labels.connect()
        self._outputs.connect()

    def _flush(self, timeout: float) -> bool:
        return self._outputs.flush(timeout, self._stopping.is_set)

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
                flush = lambda t: self._outputs.flush(timeout)  # noqa: E731  (not interrupted: bounded)
                if state.since_checkpoint and not state.checkpoint("stop", flush):
                    log.error("no final checkpoint: a restart resumes from checkpoint %s",
                              state.checkpoint_id, extra={"checkpoint_id": state.checkpoint_id})
                if state.commit_pending:
                    state.commit(source.assignment(), source.pending,
                                 lambda offsets: source.commit(offsets, timeout_ms))
        finally:
            # unlocked: runs the revoke callback; a fenced member must not remove the one that fenced it
            source.close(timeout_ms, leave=connected and not source.fenced)
            self._outputs.close(timeout)
            if self._labels is not None:
                self._labels.close(timeout)
            with self.stats.lock:
                self.stats.running = False
                self.stats.assigned = []

    # ------------------------------------------------------------------ the hot loop

    def _process(self, tp: TopicPartition, records: list) -> None:
        """Decode, predict, learn or score, publish; ``records`` are consecutive messages of ``tp``."""
        cfg = self.config
        state = self._state
        labels = self._labels
        if labels is not None and tp.topic == labels.topic:
            self._process_labels(tp, records)
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
        for r in records:
            ev = decode(r.value)
            if ev.__class__ is not Event:
                self._reject(r, ev.reason, ev.detail)
                continue
            x, y, _ = ev
            if y is None:  # score only
                try:
                    p = predict(x)[True]
                except ValueError as exc:  # the codec should have caught it; never let it reach the model
                    self._reject(r, Reason.BAD_VALUE, str(exc))
                    continue
                scored += 1
                if publish is not None:
                    publish(r, ev, p, model.n_samples_seen, cid)
                if labels is not None and ev.id is not None:  # kept until its label comes
                    joined = labels.event(r, ev.id, x, p, model.n_samples_seen)
                    if joined:
                        self._learn_joined([(r, j) for j in joined])
            elif batch_size == 1:
                try:
                    p = predict_learn_one(x, y)  # progressive validation: p is from before the update
                except ValueError as exc:  # a bad value or a non-finite update: refused, the model unchanged
                    self._reject(r, Reason.BAD_VALUE, f"the model refused the update: {exc}")
                    continue
                ps_append(p)
                ys_append(y)
                if publish_labelled:  # p is the prediction of the model before this sample
                    publish(r, ev, p, model.n_samples_seen - 1, cid)
            else:
                buffer.append((ev, r, tp))
                if len(buffer) >= batch_size:
                    self._learn_buffer(ps, ys)
        state.positions[tp] = records[-1].offset + 1
        state.since_checkpoint += len(records)
        learned = len(ps)
        if batch_size == 1 and learned:
            state.learned[tp] = state.learned.get(tp, 0) + learned
        loss, hits = progressive_metrics(ps, ys) if learned else (0.0, 0)
        st = self.stats
        with st.lock:
            st.consumed += len(records)
            st.learned += learned
            st.scored += scored
            st._add_chunk(learned, loss, hits)

    def _process_labels(self, tp: TopicPartition, records: list) -> None:
        """Records of the labels topic: feed the join store, learn what it joins."""
        self._learn_joined(self._labels.records(records, self._reject))
        state = self._state
        state.positions[tp] = records[-1].offset + 1
        state.since_checkpoint += len(records)
        with self.stats.lock:
            self.stats.consumed += len(records)

    def _learn_joined(self, joined: list) -> None:
        """Learn joined events once each (delayed metrics in the stats), counted under their event's
        partition."""
        counts = self._state.learned
        for j in self._labels.learn(self._state.model, joined, self._reject):
            tp = TopicPartition(j.topic, j.partition)
            counts[tp] = counts.get(tp, 0) + 1

    def _learn_buffer(self, ps: list[float], ys: list[int]) -> None:
        """Predict and learn the buffered mini-batch, adding the predictions and labels of its events to
        ``ps`` and ``ys``; on refusal, dead-letter its events.

        The predictions are those of the model before the batch, which is the model each event met when
        it arrived (nothing is learned while a batch fills).
        """
        state = self._state
        buffer = state.buffer
        labels = [b[0].y for b in buffer]
        seen = state.model.n_samples_seen
        try:
            p = state.model.predict_learn_rows([b[0].x for b in buffer], labels).tolist()
        except ValueError as exc:  # refused before changing the model
            for b in buffer:
                self._reject(b[1], Reason.BAD_VALUE, f"the model refused the mini-batch: {exc}")
            buffer.clear()
            return
        ps += p
        ys += labels
        if self.config.predictions_topic and self.config.publish_labelled:
            for (ev, r, _), p_ev in zip(buffer, p, strict=True):
                self._outputs.prediction(r, ev, p_ev, seen, state.checkpoint_id)
        counts = state.learned
        for tp, k in Counter(map(itemgetter(2), buffer)).items():
            counts[tp] = counts.get(tp, 0) + k
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
        with self._lock:
            state, pending = self._state, self._source.pending
            owned = partitions - pending
            pending -= partitions
            # Bounded: this runs on the IO thread, where a long flush would delay heartbeats.
            flush_timeout = min(self.config.commit_timeout_ms / 1000, 2.0)
            if self._labels is not None and not self._source.closing and not state.needs_reload:
                # pending joins follow their partitions (on a stop they stay: a restart gets them back)
                if self._labels.hand_off(owned, flush_timeout):
                    state.since_checkpoint = max(state.since_checkpoint, 1)
            ok = state.checkpoint("revoke", self._flush, flush_timeout) if state.since_checkpoint else True
            # Nothing to commit when the checkpoint failed (its offsets are not durable), or when the last
            # checkpoint's offsets are committed already.
            offsets = state.commit_offsets(owned, set()) if ok and state.commit_pending else {}
            self._let_go(partitions, "revoked")
            return offsets

    def on_lost(self, partitions: set[TopicPartition]) -> None:
        """Evicted from the group: the partitions may already be another member's, which starts at the
        group's committed offset. No checkpoint and no commit; keeping what was learned since the last
        checkpoint would learn those events twice across the group, so the model falls back to its last
        durable checkpoint (the reload is flagged) and re-reads them if the partitions come back."""
        with self._lock:
            state, pending = self._state, self._source.pending
            owned = partitions - pending
            pending -= partitions
            if state.commit_pending and state.commit_offsets(owned, set()):
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
        with self.stats.lock:
            self.stats.rebalances += 1
        if partitions:
            log.info("assigned %s", tp_keys(partitions))

    def _init_partitions(self) -> None:
        """Seek newly assigned partitions to max(checkpoint offset, committed offset), then resume them."""
        state, source = self._state, self._source
        if state.needs_reload:
            log.warning("the model is ahead of its last checkpoint after a failed revoke: reloading it")
            state.restore()
            source.pending |= set(source.assignment())
            if source.pending:
                source.consumer.pause(*source.pending)
        assigned = source.assignment()
        source.pending &= assigned
        if not source.pending:
            return
        tps = sorted(source.pending)
        try:
            committed = source.committed(tps)
            ends = source.end_offsets(tps)
        except (KafkaError, OSError) as exc:
            self._ratelog(
                "committed", logging.WARNING, "fetching committed offsets failed, retrying: %r", exc
            )
            return  # stay paused; the next loop iteration tries again
        source.seek_and_resume(state.start_offsets(committed, ends))
        with self.stats.lock:
            self.stats.assigned = [tp_key(tp) for tp in sorted(assigned)]

    # ------------------------------------------------------------------ stats

    def _publish_stats(self) -> None:
        """Fold the model's size and every owned partition's position and highwater (lag) into the stats."""
        st, state, consumer = self.stats, self._state, self._source.consumer
        positions, highwaters = {}, {}
        for tp in consumer.assignment():  # local look-ups, no request
            key = tp_key(tp)
            if tp in state.positions:
                positions[key] = state.positions[tp]
            hw = consumer.highwater(tp)
            if hw is not None:
                highwaters[key] = hw
        with st.lock:
            st.positions, st.highwaters = positions, highwaters  # revoked partitions drop out
            st.n_samples_seen = state.model.n_samples_seen
            st.n_features = state.model.n_features
            st.buffered = len(state.buffer)
        if self._labels is not None:
            self._labels.publish()

