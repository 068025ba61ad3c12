"""The transactions of exactly-once (``processing_guarantee="exactly-once"``, needs the Kafka store).

One transactional producer per state key (transactional id ``stream-logreg-state.<state topic>.<key>``, the
store's own) sends the predictions, the dead letters and the state records; the consumer offsets of the
interval are added with ``send_offsets_to_transaction`` and the consumer's ``group_metadata()`` (KIP-447:
a member of an older generation is refused). A transaction opens before the first record of an interval and
commits at the checkpoint: outputs, state and offsets are visible together (to ``read_committed``
readers) or not at all, so an event's outputs are published exactly once whatever crashes and rebalances
happen. The transaction timeout is ``2 × checkpoint_every_seconds`` (60 s to 15 min). What happens to the
open transaction:

- on revoke: checkpoint and commit before the partitions go (bounded: 2 s for the flush); what could not be
  committed is aborted and the model rolled back to the last checkpoint, so nothing of the revoked
  partitions outlives them here;
- on SIGTERM: the final checkpoint commits it (or it is aborted);
- on a fencing (another process opened the key): Kafka has aborted it, nothing of the zombie is visible;
  the member stops (:class:`~consumers.learner.Fenced`, exit 1) without committing anything;
- on a failure (a send or the commit refused, the transaction timed out): it is aborted, the model rolled
  back to the last checkpoint and its partitions sought to their offsets: the events are read, learned and
  published again in a new transaction. A commit whose outcome is unknown (the cluster did not answer within
  ``connect_timeout``) leaves the store unusable: the member stops with an error and its restart (which
  opens the key again) resolves it;
- on SIGKILL: the next owner of the key aborts it when it opens the key (or Kafka after the timeout).
  Until then it holds back ``read_committed`` readers of the partitions it wrote to.

This holds on both client backends. ``send_offsets_to_transaction`` needs the group metadata of the same
client's consumer, so on ``kafka_client="confluent"`` the transactional producer is librdkafka's
(:class:`consumers.confluent_tx.TransactionalProducer`: the same transactional id, the kafka-python methods
the store calls, librdkafka's fencing error read as kafka-python's) with ``consumer_group_metadata()``, each
call bounded by librdkafka's own timeouts; the store's readers stay on kafka-python.

kafka-python 3.0.12 quirks handled here: ``commit_transaction``, ``abort_transaction`` and
``send_offsets_to_transaction`` wait without a timeout (the store runs them in a helper thread it stops
waiting for); ``init_transactions`` is bounded by ``max_block_ms`` (1 s) and retried until
``connect_timeout``.

The commit itself (state records, then the offsets, then ``commit_transaction``) is the checkpoint's:
:meth:`consumers.state.checkpointing.Checkpointing.checkpoint`, given :meth:`Transactions.group_metadata`.
:class:`Transactions` opens the producer, opens each interval's transaction and aborts it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kafka import errors as kafka_errors
from kafka.errors import KafkaError

from consumers.state.kafka_store import StateFenced
from stream_logreg.checkpoints import CheckpointError

if TYPE_CHECKING:
    from consumers.config import LearnerConfig
    from consumers.outputs import Outputs
    from consumers.state.checkpointing import Checkpointing

__all__ = ["Transactions"]

log = logging.getLogger(__name__)


class Transactions:
    """The exactly-once transactions of one learner (see the module docs).

    ``config`` is the learner's; ``stopping()`` says that a stop was requested (opening a producer gives up
    then); ``consumer()`` is the learner's consumer, whose group metadata goes with the offsets.

    >>> transactions = Transactions(config, stopping.is_set, lambda: source.consumer)  # doctest: +SKIP
    >>> store = KafkaStore(..., producer=transactions.producer("m-1"))  # doctest: +SKIP
    >>> transactions.begin(state)  # before the first record of an interval   # doctest: +SKIP
    >>> transactions.abort(state, outputs, "revoked")  # back to the last checkpoint   # doctest: +SKIP
    """

    def __init__(self, config: LearnerConfig, stopping: Callable[[], bool], consumer: Callable[[], Any]
                 ) -> None:
        self.config = config
        self.stopping = stopping
        self.consumer = consumer

    def producer(self, key: str) -> Any:
        """The one producer of this member's outputs and state, its transactional id that of the state key
        (``stream-logreg-state.<state topic>.<key>``, as the store's own), so that opening it fences every
        older writer of the key: outputs, state and offsets of a zombie are never visible.

        Its transaction timeout outlasts a checkpoint interval (``2 × checkpoint_every_seconds``, at least
        60 s, at most 15 min: the brokers' default ``transaction.max.timeout.ms``).
        """
        from kafka import KafkaProducer

        cfg = self.config
        transactional_id = f"stream-logreg-state.{cfg.group_id}-state.{key}"
        timeout_ms = int(min(900_000, max(60_000, 2000 * cfg.checkpoint_every_seconds)))
        if cfg.kafka_client == "confluent":  # the group metadata must be of the same client's consumer
            from consumers.confluent import producer_conf
            from consumers.confluent_tx import open_transactional

            conf = {**producer_conf(cfg), "transactional.id": transactional_id,
                    "transaction.timeout.ms": timeout_ms}
            try:
                return open_transactional(conf, cfg.connect_timeout, self.stopping)
            except KafkaError as exc:
                raise CheckpointError(f"could not open the state of key {key!r} for writing: {exc}") from exc
        kwargs = cfg.producer_kwargs()
        kwargs.update(transactional_id=transactional_id, transaction_timeout_ms=timeout_ms)
        producer = KafkaProducer(**kwargs)
        deadline = time.monotonic() + cfg.connect_timeout
        while True:  # bounded by max_block_ms per try (1 s), so a stop request is heard between tries
            try:
                producer.init_transactions()
                return producer
            except KafkaError as exc:
                if time.monotonic() >= deadline or self.stopping() or not isinstance(
                    exc, kafka_errors.KafkaTimeoutError
                ):
                    producer.close(timeout=0)
                    raise CheckpointError(
                        f"could not open the state of key {key!r} for writing: {exc}"
                    ) from exc

    def group_metadata(self) -> Any:
        """The consumer's group metadata, sent with the offsets (KIP-447: an older generation is refused)."""
        consumer = self.consumer()
        if self.config.kafka_client == "confluent":
            return consumer.consumer_group_metadata()
        return consumer.group_metadata()

    @staticmethod
    def begin(state: Checkpointing) -> None:
        """Open the interval's transaction before anything of it is sent."""
        if state.fenced is None and not state.store.in_transaction:
            try:
                state.store.begin()
            except StateFenced as exc:
                state.fenced = exc

    @staticmethod
    def abort(state: Checkpointing, outputs: Outputs, why: str) -> None:
        """Abort the open transaction (outputs, state, offsets) and roll the model back to the last
        checkpoint; its events are read, learned and published again."""
        if not state.store.in_transaction:
            return
        log.warning("aborting the open transaction (%s): rolling back to checkpoint %s", why,
                    state.checkpoint_id, extra={"checkpoint_id": state.checkpoint_id, "reason": "aborted"})
        try:
            state.store.abort()
        except StateFenced as exc:
            state.fenced = exc
        except CheckpointError:
            log.exception("aborting the transaction failed")
        state.needs_reload = True
        outputs.reset()
