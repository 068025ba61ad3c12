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
checkpoint records the offset of the first of them; after a crash they are re-read and re-batched
identically. A checkpoint is written every ``checkpoint_every_messages`` messages or
``checkpoint_every_seconds`` seconds, after flushing the producer (so every dead letter and prediction derived
from the covered messages is acknowledged — failed sends are re-sent, and the checkpoint waits until they
are). Only once the checkpoint is durable are its offsets committed to the group (metadata: the checkpoint
id), and only for the partitions this member owns. A failed commit is logged and retried with the next
checkpoint (or the next time tick); the loop goes on.

On start the newest valid checkpoint is restored. On assignment each partition is sought to
max(checkpoint offset, group's committed offset): the max matters when the partition was learned by another
member in between. Partitions neither has seen start at ``auto_offset_reset``. On revoke, and on
SIGTERM/SIGINT (:meth:`Learner.stop`), the learner checkpoints, commits, and lets go.

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
- assigned: only pauses the new partitions and records them. Right after ``poll()`` returns, the main loop
  fetches their committed offsets (a blocking call, fine on the main thread), seeks each to
  max(checkpoint, committed) and resumes them; records of a partition waiting for that are never processed.
- lost (evicted from the group, e.g. after the broker was away longer than the session timeout): no
  checkpoint and no commit — the partitions may already be another member's, which starts at the group's
  committed offset. The model falls back to its last durable checkpoint (reloaded by the main loop), so
  that what it learned since is learned again only by whoever owns the partitions now.

Rebalance callbacks raising would surface from ``poll()``: ours catch and log instead. The flush before the
revoke checkpoint is bounded (2 s) because it holds up the IO loop; if it fails, nothing is committed and
the model falls back to its last checkpoint as for ``lost``. ``Learner._unstick`` works around a
kafka-python 3.0.12 race in which a finished JoinGroup is never processed (the member then has no
partitions, for good).

Guarantees
----------
Learning is exactly once per consumer group as long as checkpoints stay readable: every event of a partition
is in exactly one member's model, whatever crashes (SIGKILL included), restarts, rebalances and broker
outages happen. The outputs (predictions, dead letters) are at least once: events re-read after a crash or a
fall-back are predicted and published again. Two exceptions lose the exactly-once property, both logged:
an eviction (``lost``) after a checkpoint whose commit had failed (the new owner starts at the older
committed offset), and a newest checkpoint that is corrupt while its offsets were committed (the fallback
checkpoint is older than the group's offset: the events in between are skipped by this model).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Iterable
from operator import itemgetter
from typing import Any

import orjson
from kafka import AsyncConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from consumers.config import LearnerConfig
from consumers.stats import LearnerStats, progressive_metrics
from stream_logreg.checkpoints import DirectoryStore
from stream_logreg.codec import Event, Reason

__all__ = ["Learner"]

log = logging.getLogger(__name__)

_LOG_EVERY_SECONDS = 10.0


def _tp_key(tp: TopicPartition) -> str:
    return f"{tp.topic}:{tp.partition}"


def _tp_keys(partitions: Iterable[TopicPartition]) -> list[str]:
    return [_tp_key(tp) for tp in sorted(partitions)]


def _parse_tp_key(key: str) -> TopicPartition:
    topic, _, partition = key.rpartition(":")
    return TopicPartition(topic, int(partition))


class _RebalanceListener(AsyncConsumerRebalanceListener):
    """Forwards rebalance events to the learner (see the module docstring for the threading argument)."""

    def __init__(self, learner: Learner) -> None:
        self._learner = learner

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        try:
            offsets = self._learner._on_revoked(set(revoked), lost=False)
            if offsets:
                await self._learner._commit_from_io_thread(offsets)
        except Exception:  # an exception here would surface from poll(); log it instead
            log.exception("checkpoint/commit on revoke of %s failed", _tp_keys(revoked))

    async def on_partitions_lost(self, lost: Iterable[TopicPartition]) -> None:
        try:
            self._learner._on_revoked(set(lost), lost=True)
        except Exception:
            log.exception("handling the loss of %s failed", _tp_keys(lost))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        try:
            self._learner._on_assigned(set(assigned))
        except Exception:
            log.exception("handling the assignment of %s failed", _tp_keys(assigned))


class _RateLimitedLog:
    """At most one log line per key every ``every`` seconds, telling how many were suppressed."""

    def __init__(self, every: float = _LOG_EVERY_SECONDS) -> None:
        self.every = every
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def __call__(self, key: str, level: int, msg: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last.get(key, -math.inf) < self.every:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._last[key] = now
        n = self._suppressed.pop(key, 0)
        if n:
            msg += f" ({n} similar suppressed in the last {self.every:.0f}s)"
        log.log(level, msg, *args)


class Learner:
    """Learns an :class:`~stream_logreg.OnlineLogisticRegression` from Kafka topics; see the module docs.

    >>> learner = Learner(config)                        # doctest: +SKIP
    >>> signal.signal(signal.SIGTERM, lambda *_: learner.stop())   # doctest: +SKIP
    >>> learner.run()                                    # doctest: +SKIP

    ``model``, ``checkpoint_id`` and ``stats`` are public. The model is restored from the newest valid
    checkpoint in ``config.checkpoint_dir`` on construction (a fresh one if there is none).
    """

    def __init__(self, config: LearnerConfig, *, store: Any = None) -> None:
        self.config = config
        self.stats = LearnerStats(window=config.metrics_window)
        self._codec = config.make_codec()
        self._decode = self._codec.decoder()  # compiled: what self._codec.decode gives
        self._model_config = config.model_config()
        self._store = store if store is not None else DirectoryStore(
            config.checkpoint_dir, keep=config.keep_checkpoints
        )
        self._lock = threading.RLock()  # the model and the offset bookkeeping
        self._stopping = threading.Event()
        self._consumer: KafkaConsumer | None = None
        self._producer: KafkaProducer | None = None
        self._ratelog = _RateLimitedLog()
        # Outputs sent since the last checkpoint: (future or None, topic, value, key, headers).
        self._outbox: list[tuple[Any, str, bytes | None, bytes | None, list]] = []
        self._buffer: list[tuple[Event, Any, TopicPartition]] = []  # (event, record, tp) not learned yet
        self._pending_init: set[TopicPartition] = set()  # assigned, waiting to be sought
        self._needs_reload = False
        self._commit_pending = False
        self._since_checkpoint = 0
        self._last_checkpoint_at = time.monotonic()
        self.model: Any = None
        self.checkpoint_id: str | None = None
        self._positions: dict[TopicPartition, int] = {}  # next offset to read, per partition read
        self._ckpt_offsets: dict[TopicPartition, int] = {}  # the offsets of checkpoint_id
        self._learned_by_tp: dict[TopicPartition, int] = {}  # events of each partition in the model
        # The group's committed offset when we took each partition: never commit below it (a checkpoint
        # written before a skip ahead must not move the group back).
        self._floor: dict[TopicPartition, int] = {}
        self._restore()

    # ------------------------------------------------------------------ public API

    def stop(self) -> None:
        """Ask :meth:`run` to checkpoint, commit and return (safe from signal handlers and other threads)."""
        self._stopping.set()

    def run(
        self, stop_event: threading.Event | None = None, max_idle_seconds: float | None = None
    ) -> LearnerStats:
        """Consume until :meth:`stop`, ``stop_event`` is set, or no message came for ``max_idle_seconds``.

        Returns the stats. Before returning: a final checkpoint, a commit, and leaving the group.
        """
        cfg = self.config
        self._pending_init.clear()  # partitions of an earlier run's consumer
        consumer = self._connect(stop_event)
        if consumer is None:
            self._close_producer()
            self._stopping.clear()
            return self.stats
        with self.stats.lock:
            self.stats.running = True
        idle_since = time.monotonic()
        backoff = 0.1
        try:
            while not self._should_stop(stop_event):
                try:
                    batch = consumer.poll(timeout_ms=cfg.poll_timeout_ms)
                    self.stats.last_poll_time = time.time()
                except KafkaError as exc:
                    with self.stats.lock:
                        self.stats.last_poll_time = time.time()
                        self.stats.poll_errors += 1
                    self._ratelog("poll", logging.WARNING, "poll failed, retrying in %.1fs: %r", backoff, exc)
                    self._wait(backoff, stop_event)
                    backoff = min(backoff * 2, 5.0)
                    continue
                backoff = 0.1
                self._unstick(consumer)
                n = 0
                with self._lock:
                    if self._needs_reload or self._pending_init:
                        self._init_partitions(consumer)
                    for tp, records in batch.items():
                        if tp in self._pending_init or not records:
                            continue  # not sought yet: these will be fetched again after the seek
                        self._process(tp, records)
                        n += len(records)
                    self._publish_stats(consumer)
                    if self._checkpoint_due():
                        if self._since_checkpoint and self._checkpoint("periodic"):
                            self._commit(consumer)
                        elif self._commit_pending:
                            self._last_checkpoint_at = time.monotonic()
                            self._commit(consumer)
                now = time.monotonic()
                if n:
                    idle_since = now
                elif max_idle_seconds is not None and now - idle_since >= max_idle_seconds:
                    log.info("no message for %.1fs: stopping", max_idle_seconds)
                    break
        finally:
            self._shutdown(consumer)
            self._stopping.clear()  # a later run() starts afresh
        return self.stats

    # ------------------------------------------------------------------ setup and teardown

    def _restore(self) -> None:
        """Load the newest valid checkpoint (model, offsets), or start a fresh model."""
        ckpt = self._store.latest(expect_config=self._model_config)
        self._buffer.clear()
        if ckpt is None:
            self.model = self.config.make_model()
            self.checkpoint_id = None
            self._positions, self._ckpt_offsets, self._learned_by_tp = {}, {}, {}
            log.info("no checkpoint in %s: starting a fresh model", self.config.checkpoint_dir)
        else:
            self.model = ckpt.model
            self.checkpoint_id = ckpt.id
            offsets = {_parse_tp_key(k): int(v) for k, v in (ckpt.metadata.get("offsets") or {}).items()}
            self._positions, self._ckpt_offsets = dict(offsets), dict(offsets)
            learned = ckpt.metadata.get("learned") or {}
            self._learned_by_tp = {_parse_tp_key(k): int(v) for k, v in learned.items()}
            log.info(
                "restored checkpoint %s (n_samples_seen=%d, offsets=%s)",
                ckpt.id, self.model.n_samples_seen, ckpt.metadata.get("offsets"),
            )
        self._needs_reload = False
        self._since_checkpoint = 0
        with self.stats.lock:
            self.stats.last_checkpoint_id = self.checkpoint_id
            self.stats.n_samples_seen = self.model.n_samples_seen
            self.stats.n_features = self.model.n_features
            self.stats.buffered = 0

    def _connect(self, stop_event: threading.Event | None) -> KafkaConsumer | None:
        """Create the clients and subscribe; retry with backoff while the brokers are unreachable."""
        cfg = self.config
        backoff = 0.5
        while not self._should_stop(stop_event):
            try:
                if self._producer is None and (cfg.predictions_topic or cfg.dead_letter_topic):
                    self._producer = KafkaProducer(**cfg.producer_kwargs())
                consumer = KafkaConsumer(**cfg.consumer_kwargs())
            except KafkaError as exc:
                log.warning(
                    "cannot connect to %s, retrying in %.1fs: %r", cfg.bootstrap_servers, backoff, exc
                )
                self._wait(backoff, stop_event)
                backoff = min(backoff * 2, 10.0)
                continue
            self._consumer = consumer
            consumer.subscribe(cfg.topics, listener=_RebalanceListener(self))
            # Know the topics' partitions before the first JoinGroup: if this member leads the group and
            # assigns without them, the follow-up rebalance may hit the stuck join of _unstick().
            for topic in cfg.topics:
                try:
                    consumer.partitions_for_topic(topic)
                except KafkaError as exc:
                    log.warning("no metadata for topic %s yet: %r", topic, exc)
            log.info("subscribed to %s as group %s", cfg.topics, cfg.group_id)
            return consumer
        return None

    def _shutdown(self, consumer: KafkaConsumer) -> None:
        """Final checkpoint and commit, then leave the group (the revoke callback then has nothing to do)."""
        try:
            with self._lock:
                if self._since_checkpoint and not self._checkpoint("stop"):
                    log.error("no final checkpoint: a restart resumes from checkpoint %s", self.checkpoint_id)
                if self._commit_pending:
                    self._commit(consumer)
        finally:
            try:
                consumer.close(timeout_ms=self.config.commit_timeout_ms)  # unlocked: runs the revoke callback
            except Exception:
                log.exception("closing the consumer failed")
            self._close_producer()
            self._consumer = None
            with self.stats.lock:
                self.stats.running = False
                self.stats.assigned = []

    @staticmethod
    def _unstick(consumer: KafkaConsumer) -> None:
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
        coordinator = getattr(consumer, "_coordinator", None)
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

    def _close_producer(self) -> None:
        if self._producer is not None:
            try:
                self._producer.close(timeout=self.config.commit_timeout_ms / 1000)
            except Exception:
                log.exception("closing the producer failed")
            self._producer = None

    def _should_stop(self, stop_event: threading.Event | None) -> bool:
        return self._stopping.is_set() or (stop_event is not None and stop_event.is_set())

    def _wait(self, seconds: float, stop_event: threading.Event | None) -> None:
        """Back off for ``seconds``, waking early when asked to stop."""
        deadline = time.monotonic() + seconds
        while not self._should_stop(stop_event):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._stopping.wait(min(left, 0.1))

    # ------------------------------------------------------------------ the hot loop

    def _process(self, tp: TopicPartition, records: list) -> None:
        """Decode, predict, learn or score, publish; ``records`` are consecutive messages of ``tp``."""
        cfg = self.config
        decode = self._decode
        model = self.model
        predict = model.predict_proba_one
        predict_learn_one = model.predict_learn_one
        batch_size = cfg.batch_size
        buffer = self._buffer
        publish = self._publish_prediction if cfg.predictions_topic else None
        publish_labelled = publish is not None and cfg.publish_labelled
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
                    publish(r, ev, p, model.n_samples_seen)
            elif batch_size == 1:
                try:
                    p = predict_learn_one(x, y)  # progressive validation: p is from before the update
                except ValueError as exc:  # a bad value or a non-finite update: refused, the model unchanged
                    self._reject(r, Reason.BAD_VALUE, f"the model refused the update: {exc}")
                    continue
                ps_append(p)
                ys_append(y)
                if publish_labelled:  # p is the prediction of the model before this sample
                    publish(r, ev, p, model.n_samples_seen - 1)
            else:
                buffer.append((ev, r, tp))
                if len(buffer) >= batch_size:
                    self._learn_buffer(ps, ys)
        self._positions[tp] = records[-1].offset + 1
        self._since_checkpoint += len(records)
        learned = len(ps)
        if batch_size == 1 and learned:
            self._learned_by_tp[tp] = self._learned_by_tp.get(tp, 0) + learned
        loss, hits = progressive_metrics(ps, ys) if learned else (0.0, 0)
        st = self.stats
        with st.lock:
            st.consumed += len(records)
            st.learned += learned
            st.scored += scored
            st._add_chunk(learned, loss, hits)

    def _learn_buffer(self, ps: list[float], ys: list[int]) -> None:
        """Predict and learn the buffered mini-batch, adding the predictions and labels of its events to
        ``ps`` and ``ys``; on refusal, dead-letter its events.

        The predictions are those of the model before the batch, which is the model each event met when
        it arrived (nothing is learned while a batch fills).
        """
        buffer = self._buffer
        labels = [b[0].y for b in buffer]
        seen = self.model.n_samples_seen
        try:
            p = self.model.predict_learn_rows([b[0].x for b in buffer], labels).tolist()
        except ValueError as exc:  # refused before changing the model
            for b in buffer:
                self._reject(b[1], Reason.BAD_VALUE, f"the model refused the mini-batch: {exc}")
            buffer.clear()
            return
        ps += p
        ys += labels
        if self.config.predictions_topic and self.config.publish_labelled:
            for (ev, r, _), p_ev in zip(buffer, p, strict=True):
                self._publish_prediction(r, ev, p_ev, seen)
        counts = self._learned_by_tp
        for tp, k in Counter(map(itemgetter(2), buffer)).items():
            counts[tp] = counts.get(tp, 0) + k
        buffer.clear()

    def _reject(self, record: Any, reason: Reason, detail: str) -> None:
        reason = Reason(reason)
        with self.stats.lock:
            self.stats.rejected[reason.value] = self.stats.rejected.get(reason.value, 0) + 1
        self._ratelog(
            "reject:" + reason.value, logging.WARNING, "rejected %s:%d@%d (%s): %s",
            record.topic, record.partition, record.offset, reason.value, detail[:300],
        )
        topic = self.config.dead_letter_topic
        if topic is not None:
            headers = [
                ("reason", reason.value.encode()),
                ("detail", detail[:1000].encode("utf-8", "replace")),
                ("source_topic", record.topic.encode()),
                ("source_partition", str(record.partition).encode()),
                ("source_offset", str(record.offset).encode()),
            ]
            self._send(topic, record.value, record.key, headers)
            with self.stats.lock:
                self.stats.dead_lettered += 1

    def _publish_prediction(self, record: Any, ev: Event, p: float, n_samples_seen: int) -> None:
        """Publish ``p``, predicted for ``ev`` by the model when it had learned ``n_samples_seen`` samples."""
        out = {
            "id": ev.id,
            "p": p,
            "checkpoint": self.checkpoint_id,
            "n_samples_seen": n_samples_seen,
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
        }
        if ev.y is not None:
            out["y"] = ev.y
        self._send(self.config.predictions_topic, orjson.dumps(out), record.key, [])
        with self.stats.lock:
            self.stats.predictions_published += 1

    def _send(self, topic: str, value: bytes | None, key: bytes | None, headers: list) -> None:
        try:
            future = self._producer.send(topic, value=value, key=key, headers=headers)
        except KafkaError as exc:  # e.g. no metadata while the broker is away: re-sent before the checkpoint
            self._ratelog("send", logging.WARNING, "sending to %s failed, will retry: %r", topic, exc)
            future = None
        self._outbox.append((future, topic, value, key, headers))

    # ------------------------------------------------------------------ checkpoints and commits

    def _checkpoint_due(self) -> bool:
        return (
            self._since_checkpoint >= self.config.checkpoint_every_messages
            or time.monotonic() - self._last_checkpoint_at >= self.config.checkpoint_every_seconds
        )

    def _checkpoint_offsets(self) -> dict[TopicPartition, int]:
        """Per partition, the first event not in the model: the position, or the first buffered event."""
        offsets = dict(self._positions)
        seen: set[TopicPartition] = set()
        for _, r, tp in self._buffer:
            if tp not in seen:
                seen.add(tp)
                offsets[tp] = r.offset
        return offsets

    def _flush_outbox(self, timeout: float) -> bool:
        """Make sure every output since the last checkpoint is acknowledged (re-sending failures)."""
        if not self._outbox:
            return True
        for _ in range(3):
            try:
                self._producer.flush(timeout=timeout)
            except KafkaError as exc:
                self._ratelog("flush", logging.WARNING, "flushing the producer failed: %r", exc)
                return False
            failed = [o for o in self._outbox if o[0] is None or not o[0].succeeded()]
            if not failed:
                self._outbox.clear()
                return True
            with self.stats.lock:
                self.stats.produce_failures += len(failed)
            self._outbox = []
            for _, topic, value, key, headers in failed:
                self._send(topic, value, key, headers)
        return False

    def _checkpoint(self, reason: str, flush_timeout: float | None = None) -> bool:
        """Flush the outputs, then write a durable checkpoint of the model and its offsets. Lock held."""
        t0 = time.monotonic()
        if self._needs_reload:  # the model is ahead of its offsets: the last checkpoint stays the truth
            return False
        if flush_timeout is None:
            flush_timeout = self.config.commit_timeout_ms / 1000
        if not self._flush_outbox(flush_timeout):
            with self.stats.lock:
                self.stats.checkpoint_failures += 1
            self._last_checkpoint_at = t0  # try again at the next tick, not at every poll
            log.warning("checkpoint postponed: outputs not acknowledged yet")
            return False
        offsets = self._checkpoint_offsets()
        metadata = {
            "offsets": {_tp_key(tp): off for tp, off in sorted(offsets.items())},
            # events of each partition learned into this model, over its whole history (for audits)
            "learned": {_tp_key(tp): n for tp, n in sorted(self._learned_by_tp.items())},
            "group_id": self.config.group_id,
            "topics": list(self.config.topics),
            "batch_size": self.config.batch_size,
            "n_samples_seen": self.model.n_samples_seen,
            "parent": self.checkpoint_id,
            "reason": reason,
        }
        try:
            cid = self._store.save(self.model, metadata)
        except Exception:
            with self.stats.lock:
                self.stats.checkpoint_failures += 1
            self._last_checkpoint_at = t0
            log.exception("writing a checkpoint to %s failed", self.config.checkpoint_dir)
            return False
        self.checkpoint_id = cid
        self._ckpt_offsets = offsets
        self._since_checkpoint = 0
        self._commit_pending = True
        now = time.monotonic()
        self._last_checkpoint_at = now
        with self.stats.lock:
            self.stats.checkpoints_written += 1
            self.stats.last_checkpoint_id = cid
            self.stats.last_checkpoint_time = time.time()
            self.stats.last_checkpoint_duration = now - t0
        log.debug("checkpoint %s (%s): n_samples_seen=%d", cid, reason, self.model.n_samples_seen)
        return True

    def _commit_offsets(
        self, partitions: Iterable[TopicPartition]
    ) -> dict[TopicPartition, OffsetAndMetadata]:
        """The last durable checkpoint's offsets of ``partitions`` (those it knows), with its id."""
        meta = self.checkpoint_id or ""
        return {
            tp: OffsetAndMetadata(self._ckpt_offsets[tp], meta, -1)
            for tp in partitions
            if tp in self._ckpt_offsets
            and tp not in self._pending_init
            and self._ckpt_offsets[tp] >= self._floor.get(tp, 0)
        }

    def _commit(self, consumer: KafkaConsumer) -> bool:
        """Commit the checkpoint's offsets of the owned partitions (main thread). Never raises."""
        offsets = self._commit_offsets(consumer.assignment())
        if not offsets:
            self._commit_pending = False
            return True
        try:
            consumer.commit(offsets, timeout_ms=self.config.commit_timeout_ms)
        except (KafkaError, OSError) as exc:
            with self.stats.lock:
                self.stats.commit_failures += 1
            self._ratelog(
                "commit", logging.WARNING, "commit failed (retried with the next checkpoint): %r", exc
            )
            self._commit_pending = True
            return False
        self._commit_pending = False
        with self.stats.lock:
            self.stats.commits += 1
        return True

    async def _commit_from_io_thread(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        """The revoke callback's commit: await the public ``commit_async`` future on the IO loop."""
        try:
            await self._consumer.commit_async(offsets)
        except Exception as exc:
            with self.stats.lock:
                self.stats.commit_failures += 1
            log.warning("commit on revoke failed: %r", exc)
            return
        with self.stats.lock:
            self.stats.commits += 1

    # ------------------------------------------------------------------ rebalances

    def _on_revoked(self, partitions: set[TopicPartition], lost: bool) -> dict:
        """Checkpoint, then let go of ``partitions``; returns the offsets to commit.

        ``lost`` (evicted from the group: the partitions may already be another member's, which starts at
        the group's committed offset): no checkpoint and no commit. Keeping what was learned since the last
        checkpoint would learn those events twice across the group, so the model falls back to its last
        durable checkpoint (``_let_go`` flags the reload) and re-reads them if the partitions come back.
        """
        with self._lock:
            owned = partitions - self._pending_init
            self._pending_init -= partitions
            ok = False
            if not lost:
                # Bounded: this runs on the IO thread, where a long flush would delay heartbeats.
                flush_timeout = min(self.config.commit_timeout_ms / 1000, 2.0)
                ok = self._checkpoint("revoke", flush_timeout) if self._since_checkpoint else True
            # Nothing to commit when evicted, when the checkpoint failed (its offsets are not durable), or
            # when the last checkpoint's offsets are committed already.
            offsets = self._commit_offsets(owned) if ok and self._commit_pending else {}
            if lost and self._commit_pending and self._commit_offsets(owned):
                log.warning(
                    "evicted before checkpoint %s was committed: if another member takes the partitions, it "
                    "starts at an older offset and learns events again", self.checkpoint_id,
                )
            self._let_go(partitions)
            with self.stats.lock:
                gone = {_tp_key(tp) for tp in partitions}
                self.stats.assigned = [k for k in self.stats.assigned if k not in gone]
            log.info("%s %s (checkpoint %s)", "lost" if lost else "revoked", _tp_keys(partitions),
                     self.checkpoint_id)
            return offsets

    def _let_go(self, partitions: set[TopicPartition]) -> None:
        """Forget buffered events of ``partitions`` and rewind them to the checkpoint.

        If the model had learned events of them beyond the last durable checkpoint (the checkpoint on
        revoke failed), it no longer matches any offsets: it is reloaded from the checkpoint before the
        next assignment is sought.
        """
        current = self._checkpoint_offsets()
        self._buffer[:] = [b for b in self._buffer if b[2] not in partitions]
        for tp in partitions:
            durable = self._ckpt_offsets.get(tp)
            if current.get(tp) != durable:
                self._needs_reload = True
            if durable is None:
                self._positions.pop(tp, None)
            else:
                self._positions[tp] = durable

    def _on_assigned(self, partitions: set[TopicPartition]) -> None:
        """Pause the new partitions; the main loop seeks them right after ``poll()`` returns."""
        with self._lock:
            self._pending_init |= partitions
            if partitions and self._consumer is not None:
                self._consumer.pause(*partitions)
            with self.stats.lock:
                self.stats.rebalances += 1
            log.info("assigned %s", _tp_keys(partitions))

    def _init_partitions(self, consumer: KafkaConsumer) -> None:
        """Seek newly assigned partitions to max(checkpoint offset, committed offset), then resume them."""
        if self._needs_reload:
            log.warning("the model is ahead of its last checkpoint after a failed revoke: reloading it")
            self._restore()
            self._pending_init |= set(consumer.assignment())
            if self._pending_init:
                consumer.pause(*self._pending_init)
        assigned = consumer.assignment()
        self._pending_init &= assigned
        if not self._pending_init:
            return
        tps = sorted(self._pending_init)
        try:
            committed = {tp: consumer.committed(tp, timeout_ms=self.config.commit_timeout_ms) for tp in tps}
        except (KafkaError, OSError) as exc:
            self._ratelog(
                "committed", logging.WARNING, "fetching committed offsets failed, retrying: %r", exc
            )
            return  # stay paused; the next loop iteration tries again
        for tp in tps:
            ours, theirs = self._positions.get(tp), committed[tp]
            if theirs is not None:
                self._floor[tp] = theirs
            candidates = [o for o in (ours, theirs) if o is not None]
            if candidates:
                start = max(candidates)
                consumer.seek(tp, start)
                self._positions[tp] = start
                if start != self._ckpt_offsets.get(tp):
                    self._since_checkpoint = max(self._since_checkpoint, 1)  # offsets changed: checkpoint
                if ours is not None and start > ours:
                    log.info("%s: the group is ahead of this model (%d > %d): skipping to %d",
                             _tp_key(tp), theirs, ours, start)
            else:
                log.info("%s: new partition, starting at auto_offset_reset=%s", _tp_key(tp),
                         self.config.auto_offset_reset)
        consumer.resume(*tps)
        self._pending_init.clear()
        with self.stats.lock:
            self.stats.assigned = [_tp_key(tp) for tp in sorted(assigned)]

    # ------------------------------------------------------------------ stats

    def _publish_stats(self, consumer: KafkaConsumer) -> None:
        """Fold the model's size and every owned partition's position and highwater (lag) into the stats."""
        st = self.stats
        positions, highwaters = {}, {}
        for tp in consumer.assignment():  # local look-ups, no request
            key = _tp_key(tp)
            if tp in self._positions:
                positions[key] = self._positions[tp]
            hw = consumer.highwater(tp)
            if hw is not None:
                highwaters[key] = hw
        with st.lock:
            st.positions, st.highwaters = positions, highwaters  # revoked partitions drop out
            st.n_samples_seen = self.model.n_samples_seen
            st.n_features = self.model.n_features
            st.buffered = len(self._buffer)
