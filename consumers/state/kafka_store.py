"""Checkpoints in a compacted Kafka topic: :class:`KafkaStore`, a ``CheckpointStore`` that needs no disk.

A checkpoint is stored in today's verified format (the manifest bytes and the ``.npz`` bytes of
:func:`stream_logreg.checkpoints.encode_checkpoint`, read back with ``decode_manifest`` and ``restore``:
checksums, array checks, no pickle), split into chunks, on a compacted topic (``<group id>-state`` by
default) that several writers share, each under its own *state key*.

Records
-------
All records of one state key ``K`` go to one partition of the topic, ``murmur2(K) % partitions`` (the
Kafka default partitioner's hash), so they are totally ordered. For checkpoint id ``I`` (20 digits, ns,
larger than every id of ``K`` already in the topic):

- ``K/I/chunk/<n>``: the n-th slice (``chunk_bytes``, 512 KiB by default; brokers accept 1 MB) of the
  manifest's bytes followed by the array file's bytes;
- ``K/I/commit``: the commit record, JSON ``{"format": "stream-logreg-kafka-state", "version": 1, "key": K,
  "id": I, "created_at", "manifest_size", "size", "chunks": [[chunk key, size, sha256], ...]}``, written
  after its chunks;
- then tombstones (null values) for the commit records and chunks of the checkpoints of ``K`` beyond the
  newest ``keep`` (default 2, so a damaged newest falls back to the previous one), for damaged commits,
  and for chunks of ``K`` that no kept commit names (debris of foreign records, as the store last read
  the partition: at its first save, or its last ``latest()``).

The chunks, the commit record and the tombstones of one checkpoint are **one Kafka transaction**, by a
producer whose ``transactional_id`` is ``stream-logreg-state.<topic>.<K>``. Readers read with
``isolation_level=read_committed``: an open or aborted transaction (a writer killed mid-write) is never
seen, a committed one is seen whole.

What compaction may delete
--------------------------
Compaction keeps the newest record of each key and eventually drops tombstones and aborted records. Every
key above is written once with a value (ids never repeat), and tombstoned only by a *later* transaction
that has committed ``keep`` newer checkpoints first. So compaction deletes exactly the superseded
checkpoints and debris; the chunks a kept commit names are never overwritten and never deleted. (Reusing
chunk keys across checkpoints, e.g. ``K/chunk/<n>``, would let compaction mix two checkpoints; that is why
the id is in the key.) Compaction does not reorder records, so a compacted log reads like the original.

What a reader does (:meth:`KafkaStore.latest`)
----------------------------------------------
1. Reads the key's partition from the beginning to its high watermark as of the start, within
   ``timeout`` seconds, keeping for ``K`` only an index: each commit record (parsed), and each chunk key's
   offset, size and sha256 (a tombstone removes the entry). No chunk bytes are held: memory is the index
   plus one checkpoint. Reading to the high watermark (not the last stable offset) waits for the
   transactions open in the partition at the start to end, so a newer commit of ``K`` behind another
   key's open transaction is not missed; a writer killed mid-transaction holds readers of the keys on its
   partition up to its transaction timeout (60 s by default, then Kafka aborts it; at once when its key's
   next owner opens its store). Give the topic more partitions to keep keys apart.
2. Takes the commits newest first; one whose record is malformed, or whose chunks are missing or differ
   from what it records, is skipped with the reason (``store.skipped``, a warning); the first whose chunks
   all match is read back (seek to its first chunk, read to its last), and its manifest and arrays are
   verified and restored by ``stream_logreg.checkpoints.restore``. A damaged one there is skipped too.

Intact checkpoints of another schema version raise ``UnsupportedCheckpoint``; of other hyper-parameters
(``expect_config``) ``CheckpointMismatch``, as with the directory store.

State keys and partitions
-------------------------
The caller chooses the key (``[A-Za-z0-9._:,=+-]``, at most 200 characters). A key names what the state
covers, not the host: e.g. the member's static identity, or the input partition set
(``"payments:0,1"``), with the offsets the checkpoint covers in its metadata. When partitions move, the
member that takes them over opens a ``KafkaStore`` with the same key on any host (no disk), which fences
the previous owner and restores its newest checkpoint. Several keys may share the topic (the group model,
issue 12, keeps one key per member's contribution plus one for the combined model). Never add partitions
to an existing state topic: keys would hash to other partitions and their state would not be found.

One writer per key; fencing
---------------------------
Opening a store calls ``init_transactions()`` with the key's transactional id (a producer given to the
store: its owner calls it, and its transactional id is the fence). Kafka then aborts any open transaction
of that id and fences every older producer with it: the older store's next write or commit raises
:class:`StateFenced` (its checkpoint in flight is aborted, nothing of it is visible, and so are the
outputs and offsets in the same transaction), and that store stays unusable; the process should stop,
its partitions belong to someone else now. Two live writers of one key are therefore not possible: the
newer one wins, the older one gets a clear error. On revoke or SIGTERM the service ends its open
transaction itself (commit what it covers, or abort: the ``with`` block aborts on any exception); one left
open by a killed process is aborted by the next owner's ``init_transactions`` or after the transaction
timeout.

Exactly-once with the service's outputs
---------------------------------------
:meth:`KafkaStore.transaction` opens a transaction on the store's producer (which may be one the caller
gave, with its own ``transactional_id``) and commits it at the end of the ``with`` block (aborts on an
exception). Inside it the caller sends its predictions and dead letters on ``store.producer``, calls
:meth:`KafkaStore.write` for the checkpoint and ``store.producer.send_offsets_to_transaction(offsets,
consumer.group_metadata())``: outputs, state and offsets commit together or not at all.
:meth:`KafkaStore.save` is ``write`` in a transaction of its own.

Limits
------
Every wait is bounded by ``timeout`` seconds and stays responsive to signals: opening the producer,
reading the topic, flushing a transaction, and its commit or abort (kafka-python has no timeout for
these two, so they run in a helper thread that the store stops waiting for). A commit that does not
complete in time has an unknown outcome: the store then refuses to write (a new store resolves it, as
``init_transactions`` completes or aborts it). The transaction timeout is the producer's
(``transaction_timeout_ms``, kafka-python's default 60 s): a checkpoint interval's transaction must end
within it, and Kafka aborts a dead writer's transaction after it.

Examples
--------
The tests (tests/test_kafka_store.py) run these against a real broker::

    store = KafkaStore("localhost:9092", key="member-1", group_id="learners")   # topic learners-state
    store.save(model, {"offsets": {"payments:0": 1234}})
    checkpoint = store.latest(expect_config=model.config())
"""

from __future__ import annotations

import builtins
import contextlib
import datetime as dt
import hashlib
import logging
import math
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka import errors as kafka_errors
from kafka.admin import ConfigResource
from kafka.partitioner.default import murmur2

from stream_logreg.checkpoints import (
    Checkpoint,
    CheckpointCorrupt,
    CheckpointError,
    CheckpointInfo,
    UnsupportedCheckpoint,
    decode_manifest,
    encode_checkpoint,
    new_checkpoint_id,
    restore,
)
from stream_logreg.model import OnlineLogisticRegression

__all__ = [
    "CHUNK_BYTES", "KafkaStore", "StateFenced", "StateTopicError", "decode_checkpoint", "own_settings",
    "record_name", "state_partition", "topic_configs",
]

logger = logging.getLogger("consumers.state.kafka_store")

#: The default size of one chunk; brokers and topics accept 1 MB messages by default.
CHUNK_BYTES = 512 * 1024
_MAX_CHUNK_BYTES = 960 * 1024  # below kafka-python's default max_request_size (1 MiB) with headroom
_RECORD_OVERHEAD = 4096  # key, headers and batch framing of one chunk record, generously
COMMIT_FORMAT = "stream-logreg-kafka-state"
COMMIT_VERSION = 1
_STATE_KEY = re.compile(r"[A-Za-z0-9._:,=+-]{1,200}")
_ID = re.compile(r"\d{20}")
_FETCH_BYTES = 16 * 1024 * 1024  # per fetch: 32 chunks a round trip (the default, 1 MiB, is one or two)
_POLL_MS = 500  # the longest single wait inside a bounded read (stays responsive to signals)
_OWN_SETTINGS = frozenset({
    "bootstrap_servers", "transactional_id", "max_block_ms", "group_id", "enable_auto_commit",
    "isolation_level", "max_partition_fetch_bytes", "fetch_max_bytes", "request_timeout_ms",
    "bootstrap_timeout_ms",
})
#: The kafka-python settings the store sets itself (refused in ``client_settings``).
own_settings = _OWN_SETTINGS
_FENCED = (
    kafka_errors.ProducerFencedError,
    kafka_errors.InvalidProducerEpochError,
    kafka_errors.TransactionCoordinatorFencedError,
)


def _is_fenced(exc: BaseException) -> bool:
    """Whether ``exc`` says a newer producer with the same transactional id took over (kafka-python raises
    the fencing error itself first, then a plain ``KafkaError`` naming it for every later call)."""
    return isinstance(exc, _FENCED) or (
        isinstance(exc, kafka_errors.KafkaError) and any(cls.__name__ in str(exc) for cls in _FENCED)
    )


class StateTopicError(CheckpointError):
    """The state topic cannot hold checkpoints safely (wrong cleanup policy, too small messages, ...)."""


class StateFenced(CheckpointError):
    """Another store with the same state key (a newer owner of its partitions) took over; this one can no
    longer write. Its checkpoint in flight was aborted."""


def topic_configs(chunk_bytes: int = CHUNK_BYTES) -> dict[str, str]:
    """The configuration a new state topic is created with.

    Compacted only (never deleted by age or size); superseded records become compactable after a minute
    (``min.compaction.lag.ms``) in segments rolled every 64 MiB or hour (the active segment is never
    compacted); tombstones stay a day for slow readers; one message holds a chunk.
    """
    return {
        "cleanup.policy": "compact",
        "min.compaction.lag.ms": "60000",
        "delete.retention.ms": "86400000",
        "segment.bytes": str(64 * 1024 * 1024),
        "segment.ms": "3600000",
        "max.message.bytes": str(max(1048588, chunk_bytes + _RECORD_OVERHEAD)),
    }


def state_partition(key: str, partitions: int) -> int:
    """The partition of the state topic that holds state key ``key`` (Kafka's default key hash)."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def _client_settings(cls: type, settings: dict[str, Any]) -> dict[str, Any]:
    """The part of ``settings`` (e.g. security settings) that client class ``cls`` accepts."""
    return {k: v for k, v in settings.items() if k in cls.DEFAULT_CONFIG}


@dataclass(frozen=True)
class _Commit:
    """A parsed commit record."""

    id: str
    created_at: dt.datetime
    manifest_size: int
    size: int
    chunks: tuple[tuple[str, int, str], ...]


def _parse_commit(state_key: str, cid: str, raw: bytes) -> _Commit:
    """The commit record ``raw`` of checkpoint ``cid`` of ``state_key``, checked field by field."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise CheckpointCorrupt(f"its commit record is not JSON: {exc}") from None
    if not isinstance(body, dict) or body.get("format") != COMMIT_FORMAT:
        raise CheckpointCorrupt(f"its commit record's format is not {COMMIT_FORMAT!r}")
    if body.get("version") != COMMIT_VERSION:
        raise UnsupportedCheckpoint(
            f"checkpoint {cid} has a commit record of version {body.get('version')!r}; this library reads "
            f"version {COMMIT_VERSION}"
        )
    if body.get("key") != state_key or body.get("id") != cid:
        raise CheckpointCorrupt(
            f"its commit record is of state key {body.get('key')!r}, id {body.get('id')!r}"
        )
    chunks, size, manifest_size = body.get("chunks"), body.get("size"), body.get("manifest_size")
    prefix = f"{state_key}/{cid}/chunk/"
    if not (
        isinstance(size, int) and isinstance(manifest_size, int) and 0 < manifest_size < size
        and isinstance(chunks, list) and chunks
        and all(
            isinstance(c, list) and len(c) == 3 and isinstance(c[0], str) and c[0].startswith(prefix)
            and isinstance(c[1], int) and 0 < c[1] <= _MAX_CHUNK_BYTES
            and isinstance(c[2], str) and re.fullmatch(r"[0-9a-f]{64}", c[2])
            for c in chunks
        )
        and sum(c[1] for c in chunks) == size
    ):
        raise CheckpointCorrupt("its commit record's sizes or chunk list are malformed")
    try:
        created_at = dt.datetime.fromisoformat(body.get("created_at"))
    except (TypeError, ValueError):
        raise CheckpointCorrupt("its commit record's created_at is not ISO-8601") from None
    return _Commit(cid, created_at, manifest_size, size, tuple((k, n, h) for k, n, h in chunks))


def record_name(raw: bytes | None) -> tuple[str, str, tuple[str, ...]] | None:
    """``(state key, checkpoint id, the rest)`` of a state record's key ``K/I/commit`` or
    ``K/I/chunk/<n>``, or ``None`` for a key of another form (foreign records are ignored).

    >>> record_name(b"member-1/00000000000000000042/chunk/0")
    ('member-1', '00000000000000000042', ('chunk', '0'))
    >>> record_name(b"not a state record") is None
    True
    """
    try:
        name = raw.decode() if raw else ""
    except UnicodeDecodeError:
        return None
    parts = name.split("/")
    if len(parts) < 3 or not _STATE_KEY.fullmatch(parts[0]) or not _ID.fullmatch(parts[1]):
        return None
    return parts[0], parts[1], tuple(parts[2:])


def decode_checkpoint(cid: str, commit: _Commit, data: bytes, expect_config: dict | None) -> Checkpoint:
    """The checkpoint ``cid`` whose chunks' bytes are ``data`` (verified by ``restore``: sizes, sha256,
    arrays; ``CheckpointCorrupt`` if anything does not match)."""
    body = decode_manifest(data[: commit.manifest_size])
    if body["id"] != cid:
        raise CheckpointCorrupt(f"its manifest is of checkpoint {body['id']}")
    return restore(body, data[commit.manifest_size :], expect_config)


@dataclass
class _Index:
    """What a read of the partition found for one state key: commits (or why they do not parse), the
    live chunks' ``(offset, size, sha256)``, and the largest id in any of its record keys."""

    commits: dict[str, _Commit | CheckpointError]
    chunks: dict[str, tuple[int, int, str]]
    newest: str = ""

    def add(self, state_key: str, cid: str, rest: tuple[str, ...], record: Any) -> None:
        """Index ``record`` of checkpoint ``cid`` of ``state_key`` (``rest``: its key after the id): a
        commit (parsed, or why not) or a chunk's offset, size and sha256; a tombstone removes it."""
        self.newest = max(self.newest, cid)
        if rest == ("commit",):
            if record.value is None:
                self.commits.pop(cid, None)
            else:
                try:
                    self.commits[cid] = _parse_commit(state_key, cid, record.value)
                except CheckpointError as exc:
                    self.commits[cid] = exc
        elif len(rest) == 2 and rest[0] == "chunk":
            name = f"{state_key}/{cid}/chunk/{rest[1]}"
            if record.value is None:
                self.chunks.pop(name, None)
            else:
                digest = hashlib.sha256(record.value).hexdigest()
                self.chunks[name] = (record.offset, len(record.value), digest)

    def problem(self, commit: _Commit) -> str | None:
        """Why ``commit``'s chunks are not all present as it records them, or ``None``."""
        for key, size, digest in commit.chunks:
            found = self.chunks.get(key)
            if found is None:
                return f"its chunk {key} is missing (deleted, or never written)"
            if found[1:] != (size, digest):
                return (
                    f"its chunk {key} has {found[1]} bytes with sha256 {found[2]}, the commit record says "
                    f"{size} bytes with sha256 {digest}"
                )
        return None


class KafkaStore:
    """Checkpoints of state key ``key`` in a compacted Kafka topic (see the module's docstring).

    Parameters
    ----------
    bootstrap_servers
        The Kafka cluster.
    key
        The state key this store reads and writes (``[A-Za-z0-9._:,=+-]``, at most 200 characters).
    group_id
        The consumer group; the topic is ``<group_id>-state`` unless ``topic`` is given.
    topic
        The state topic. Created with :func:`topic_configs` if absent (replication factor
        ``min(3, brokers)``, ``partitions`` partitions); an existing topic must be ``compact`` only and
        accept messages of a chunk, else :class:`StateTopicError`.
    keep
        How many committed checkpoints of the key stay in the topic (older ones are tombstoned).
    chunk_bytes
        The size of one chunk record.
    timeout
        Seconds any one step may take: creating or checking the topic, opening the producer (fencing),
        reading the partition to its end, flushing a transaction.
    producer
        A transactional ``KafkaProducer`` to write with, ``init_transactions()`` already called (e.g. the
        service's, so that its outputs share the checkpoint's transaction). Its transactional id is then
        the fence. By default the store makes its own, with id ``stream-logreg-state.<topic>.<key>``.
    partitions
        The partitions of a topic this store creates.
    client_settings
        Settings passed to each kafka-python client that accepts them (e.g. ``security_protocol``).
    read_only
        Only read (``latest``, ``list``): no producer, so opening it fences no writer of the key.

    After each :meth:`latest`, ``skipped`` lists ``(id, reason)`` of the newer checkpoints it passed over.
    """

    def __init__(
        self,
        bootstrap_servers: str | builtins.list[str],
        key: str,
        *,
        group_id: str | None = None,
        topic: str | None = None,
        keep: int = 2,
        chunk_bytes: int = CHUNK_BYTES,
        timeout: float = 60.0,
        producer: KafkaProducer | None = None,
        partitions: int = 1,
        client_settings: dict[str, Any] | None = None,
        read_only: bool = False,
    ) -> None:
        if not isinstance(key, str) or not _STATE_KEY.fullmatch(key):
            raise ValueError(
                f"the state key must be 1-200 characters of A-Z a-z 0-9 . _ : , = + -, got {key!r}"
            )
        if topic is None:
            if not group_id:
                raise ValueError("give the consumer group (group_id) or the state topic (topic)")
            topic = f"{group_id}-state"
        if not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep must be an integer >= 1, got {keep!r}")
        if not isinstance(chunk_bytes, int) or not 1024 <= chunk_bytes <= _MAX_CHUNK_BYTES:
            raise ValueError(
                f"chunk_bytes must be an integer from 1024 to {_MAX_CHUNK_BYTES}, got {chunk_bytes!r}"
            )
        if not (isinstance(timeout, int | float) and math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"timeout must be a finite number of seconds > 0, got {timeout!r}")
        if not isinstance(partitions, int) or partitions < 1:
            raise ValueError(f"partitions must be an integer >= 1, got {partitions!r}")
        settings = dict(client_settings or {})
        known = set().union(*(c.DEFAULT_CONFIG for c in (KafkaProducer, KafkaConsumer, KafkaAdminClient)))
        if set(settings) - known or set(settings) & _OWN_SETTINGS:
            raise ValueError(
                f"client_settings: {sorted(set(settings) - known)} are not kafka-python settings, and "
                f"{sorted(set(settings) & _OWN_SETTINGS)} are set by the store itself"
            )
        if producer is not None and not producer.config.get("transactional_id"):
            raise ValueError("the producer given must be transactional (transactional_id set)")
        self.bootstrap_servers = bootstrap_servers
        self.key = key
        self.group_id = group_id
        self.topic = topic
        self.keep = keep
        self.chunk_bytes = chunk_bytes
        self.timeout = timeout
        self.partitions = partitions
        self.client_settings = settings
        self.skipped: builtins.list[tuple[str, str]] = []
        self._index: _Index | None = None
        self._pending: _Index | None = None
        self._in_transaction = False
        self._unusable: CheckpointError | None = None  # why this store may no longer write
        self._consumer: KafkaConsumer | None = None
        self._probe: KafkaConsumer | None = None
        self._own_producer = producer is None
        self._partition = TopicPartition(topic, state_partition(key, self._ensure_topic()))
        if read_only:  # no producer: no fencing, no writes
            self.transactional_id = None
            self._unusable = CheckpointError(f"this store of state key {key!r} was opened read-only")
        elif producer is None:
            self.transactional_id = f"stream-logreg-state.{topic}.{key}"
            producer = KafkaProducer(
                bootstrap_servers=bootstrap_servers,
                transactional_id=self.transactional_id,
                max_block_ms=int(timeout * 1000),
                bootstrap_timeout_ms=int(timeout * 1000),
                **_client_settings(KafkaProducer, self.client_settings),
            )
            try:
                producer.init_transactions()  # fences every older writer of this key
            except Exception as exc:
                producer.close(timeout=0)
                raise CheckpointError(
                    f"could not open the state topic {topic!r} for writing state key {key!r}: {exc}"
                ) from exc
        else:
            self.transactional_id = producer.config["transactional_id"]
        self.producer = producer

    def __repr__(self) -> str:
        return f"KafkaStore(topic={self.topic!r}, key={self.key!r}, keep={self.keep})"

    # The topic

    def _ensure_topic(self) -> int:
        """Create the topic if absent, check it otherwise; return its number of partitions."""
        try:
            admin = KafkaAdminClient(
                bootstrap_servers=self.bootstrap_servers,
                request_timeout_ms=int(self.timeout * 1000),
                bootstrap_timeout_ms=int(self.timeout * 1000),
                **_client_settings(KafkaAdminClient, self.client_settings),
            )
        except kafka_errors.KafkaError as exc:
            raise StateTopicError(
                f"could not reach the Kafka cluster at {self.bootstrap_servers!r} within {self.timeout:g} s "
                f"to open the state topic {self.topic!r}: {exc}"
            ) from exc
        try:
            brokers = len(admin.describe_cluster()["brokers"])
            configs = topic_configs(self.chunk_bytes)
            replication = min(3, brokers)
            if replication >= 3:
                configs["min.insync.replicas"] = "2"
            spec = {"num_partitions": self.partitions, "replication_factor": replication, "configs": configs}
            with contextlib.suppress(kafka_errors.TopicAlreadyExistsError):
                admin.create_topics({self.topic: spec}, wait_for_metadata=True)
            self._check_topic(admin)
            (described,) = admin.describe_topics([self.topic])
            return len(described["partitions"])
        except kafka_errors.KafkaError as exc:
            raise StateTopicError(f"could not create or check the state topic {self.topic!r}: {exc}") from exc
        finally:
            admin.close()

    def _check_topic(self, admin: KafkaAdminClient) -> None:
        names = ["cleanup.policy", "max.message.bytes"]
        found = admin.describe_configs([ConfigResource("topic", self.topic, names)], config_filter="all")
        values = {k: v["value"] for k, v in found["topic"][self.topic].items()}
        policy = values.get("cleanup.policy")
        if policy != "compact":
            raise StateTopicError(
                f"the state topic {self.topic!r} has cleanup.policy={policy!r}; it must be 'compact' only "
                "(with 'delete', Kafka would delete the current checkpoint by age or size). Use another "
                "topic, or change its policy with kafka-configs --alter --add-config cleanup.policy=compact"
            )
        limit = int(values.get("max.message.bytes") or 0)
        if limit < self.chunk_bytes + _RECORD_OVERHEAD:
            raise StateTopicError(
                f"the state topic {self.topic!r} accepts messages of {limit} bytes, too small for chunks of "
                f"{self.chunk_bytes} bytes; lower chunk_bytes or raise the topic's max.message.bytes"
            )

    # Reading

    def _consumers(self) -> tuple[KafkaConsumer, KafkaConsumer]:
        """(a read_committed consumer of the key's partition, a read_uncommitted one for its end offset)."""
        if self._consumer is None:
            self._consumer, self._probe = (
                KafkaConsumer(
                    bootstrap_servers=self.bootstrap_servers,
                    group_id=None,
                    enable_auto_commit=False,
                    isolation_level=isolation,
                    max_partition_fetch_bytes=_FETCH_BYTES,
                    fetch_max_bytes=_FETCH_BYTES,
                    request_timeout_ms=max(30500, int(self.timeout * 1000) + 500),
                    bootstrap_timeout_ms=int(self.timeout * 1000),
                    **_client_settings(KafkaConsumer, self.client_settings),
                )
                for isolation in ("read_committed", "read_uncommitted")
            )
            self._consumer.assign([self._partition])
        return self._consumer, self._probe

    def _records(self, start: int | None, stop: int | None = None) -> Iterator[Any]:
        """The committed records of the key's partition from ``start`` (``None``: the beginning) until
        its high watermark as of now, or until offset ``stop``; within ``timeout`` seconds.

        The high watermark, not the last stable offset: a transaction of another key that is open in the
        partition would otherwise hide this key's newer commits behind it. So this waits for the
        transactions open now to end (Kafka aborts a dead writer's after its transaction timeout).
        """
        (consumer, probe), tp = self._consumers(), self._partition
        deadline = time.monotonic() + self.timeout
        try:
            end = probe.end_offsets([tp], timeout_ms=int(self.timeout * 1000))[tp]
            if stop is not None:
                end = min(end, stop + 1)
            if start is None:
                consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, start)
            while (position := consumer.position(tp, timeout_ms=int(self.timeout * 1000))) < end:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CheckpointError(
                        f"could not read the state topic {self.topic!r} partition {tp.partition} to its end "
                        f"within {self.timeout:g} s (at offset {position} of {end}; a transaction of another "
                        "writer may still be open there); raise the timeout"
                    )
                for records in consumer.poll(timeout_ms=int(min(left * 1000, _POLL_MS))).values():
                    for record in records:
                        if record.offset < end:
                            yield record
        except kafka_errors.KafkaError as exc:
            raise CheckpointError(f"could not read the state topic {self.topic!r}: {exc}") from exc

    def _scan(self) -> _Index:
        """Read the key's partition to its end, indexing this key's commits and chunks (not their bytes)."""
        index = _Index({}, {})
        for record in self._records(None):
            name = record_name(record.key)
            if name is not None and name[0] == self.key:
                index.add(self.key, name[1], name[2], record)
        return index

    def _read_bytes(self, index: _Index, commit: _Commit) -> bytes:
        """The bytes of ``commit``'s chunks, read back from their offsets."""
        wanted = {index.chunks[key][0]: key for key, _, _ in commit.chunks}
        got: dict[str, bytes] = {}
        for record in self._records(min(wanted), max(wanted)):
            if record.offset in wanted and record.value is not None:
                got[wanted[record.offset]] = record.value
        missing = [key for key, _, _ in commit.chunks if key not in got]
        if missing:
            raise CheckpointCorrupt(f"its chunk {missing[0]} disappeared while it was read")
        return b"".join(got[key] for key, _, _ in commit.chunks)

    def _usable(self, index: _Index) -> builtins.list[_Commit]:
        """The commits of ``index`` whose chunks are all there as recorded, newest first."""
        commits = (index.commits[cid] for cid in sorted(index.commits, reverse=True))
        return [c for c in commits if isinstance(c, _Commit) and index.problem(c) is None]

    def latest(self, expect_config: dict | None = None) -> Checkpoint | None:
        """The newest checkpoint of the key that verifies, or ``None``; damaged ones are skipped (see
        ``skipped``). Raises :class:`UnsupportedCheckpoint` or :class:`CheckpointMismatch` (with
        ``expect_config``) for the newest intact checkpoint rather than falling back past it."""
        self._check_no_transaction("latest")
        self.skipped = []
        index = self._index = self._scan()
        for cid in sorted(index.commits, reverse=True):
            commit = index.commits[cid]
            try:
                if isinstance(commit, CheckpointError):
                    raise commit
                problem = index.problem(commit)
                if problem:
                    raise CheckpointCorrupt(problem)
                return decode_checkpoint(cid, commit, self._read_bytes(index, commit), expect_config)
            except CheckpointCorrupt as exc:
                self.skipped.append((cid, str(exc)))
                logger.warning(
                    "checkpoint %s of state key %r in %s skipped: %s", cid, self.key, self.topic, exc
                )
        return None

    def list(self) -> builtins.list[CheckpointInfo]:
        """The key's checkpoints in the topic, oldest first; ``valid`` says whether the commit record
        parses and all its chunks are there with the recorded sizes and sha256 (the arrays are not
        loaded)."""
        self._check_no_transaction("list")
        index = self._scan()
        infos = []
        for cid in sorted(index.commits):
            commit = index.commits[cid]
            if isinstance(commit, CheckpointError):
                infos.append(CheckpointInfo(cid, None, 0, False, str(commit)))
            else:
                problem = index.problem(commit)
                infos.append(CheckpointInfo(cid, commit.created_at, commit.size, problem is None, problem))
        return infos

    # Writing

    def _check_no_transaction(self, what: str) -> None:
        if self._in_transaction:  # the read would wait for this very transaction to end
            raise CheckpointError(f"KafkaStore.{what}() cannot be called inside the store's transaction")

    def _check_usable(self) -> None:
        if self._unusable is not None:
            raise type(self._unusable)(str(self._unusable))

    def _fence(self, exc: BaseException) -> StateFenced:
        self._unusable = StateFenced(
            f"another writer of state key {self.key!r} in {self.topic!r} (transactional id "
            f"{self.transactional_id!r}) took over; this store can no longer write and its checkpoint in "
            f"flight was aborted: stop this member ({type(exc).__name__})"
        )
        return self._unusable

    @contextlib.contextmanager
    def transaction(self) -> Iterator[KafkaProducer]:
        """A Kafka transaction on ``producer``: committed when the block ends, aborted on an exception.

        Inside it, :meth:`write` adds a checkpoint; the caller may send its own records on the producer
        and :meth:`send_offsets`. Raises :class:`StateFenced` if a newer writer of the key took over (the
        transaction is then aborted by Kafka). :meth:`begin`, :meth:`commit` and :meth:`abort` are the
        same steps for a transaction that spans a loop (the service's checkpoint interval).
        """
        self.begin()
        try:
            yield self.producer
        except BaseException as exc:
            err = self._aborted(exc)
            if err is exc:
                raise
            raise err from exc
        self.commit()

    @property
    def in_transaction(self) -> bool:
        """Whether a transaction of this store is open."""
        return self._in_transaction

    def begin(self) -> None:
        """Open a transaction (a local step: nothing is sent until the first record)."""
        self._check_usable()
        if self._in_transaction:
            raise CheckpointError("a transaction of this store is already open")
        try:
            self.producer.begin_transaction()
        except kafka_errors.KafkaError as exc:
            raise self._fence(exc) if _is_fenced(exc) else CheckpointError(
                f"could not begin a state transaction: {exc}"
            ) from exc
        self._in_transaction = True

    def send_offsets(self, offsets: dict, group_metadata: Any) -> None:
        """``send_offsets_to_transaction(offsets, group_metadata)`` on the open transaction, waiting at
        most ``timeout`` seconds (kafka-python waits without a timeout). On failure the transaction is
        aborted and :class:`StateFenced` or ``CheckpointError`` raised."""
        if not self._in_transaction:
            raise CheckpointError("KafkaStore.send_offsets needs an open transaction")
        try:
            self._end(lambda: self.producer.send_offsets_to_transaction(offsets, group_metadata), "offsets")
        except BaseException as exc:
            err = self._aborted(exc)
            if err is exc:
                raise
            raise err from exc

    def commit(self) -> None:
        """Flush and commit the open transaction; on failure it is aborted and :class:`StateFenced` or
        ``CheckpointError`` raised."""
        if not self._in_transaction:
            raise CheckpointError("KafkaStore.commit needs an open transaction")
        try:
            self.producer.flush(timeout=self.timeout)
            self._end(self.producer.commit_transaction, "commit")
        except BaseException as exc:
            err = self._aborted(exc)
            if err is exc:
                raise
            raise err from exc
        if self._pending is not None:
            self._index = self._pending
        self._pending = None
        self._in_transaction = False

    def abort(self) -> None:
        """Abort the open transaction, if any: nothing of it becomes visible. Raises :class:`StateFenced`
        if a newer writer took over (Kafka aborted it then), ``CheckpointError`` if the abort failed."""
        if self._in_transaction:
            err = self._aborted(None)
            if err is not None:
                raise err

    def _aborted(self, exc: BaseException | None) -> BaseException | None:
        """Abort the open transaction after ``exc``; return what to raise (``exc`` itself when it is no
        Kafka error, so that e.g. a KeyboardInterrupt goes on)."""
        try:
            if exc is not None and _is_fenced(exc):
                return self._fence(exc)
            if self._unusable is None:
                try:
                    self._end(self.producer.abort_transaction, "abort")
                except Exception as abort_exc:
                    if _is_fenced(abort_exc):
                        return self._fence(abort_exc)
                    self._unusable = CheckpointError(
                        f"the state transaction could not be aborted ({abort_exc}); this store can no longer "
                        "write: open a new one (it resolves the transaction)"
                    )
                    return self._unusable
            if isinstance(exc, kafka_errors.KafkaError):
                return CheckpointError(f"the state transaction failed and was aborted: {exc}")
            return exc
        finally:
            self._pending = None
            self._in_transaction = False

    def _end(self, call: Any, what: str) -> None:
        """Run ``call`` (the producer's commit or abort, which kafka-python waits for without a timeout)
        in a helper thread, waiting at most ``timeout`` seconds, in short slices (signals stay heard)."""
        failure: builtins.list[BaseException] = []

        def run() -> None:
            try:
                call()
            except BaseException as exc:  # handed to the waiting thread
                failure.append(exc)

        worker = threading.Thread(target=run, name=f"state-{what}", daemon=True)
        worker.start()
        deadline = time.monotonic() + self.timeout
        while worker.is_alive() and time.monotonic() < deadline:
            worker.join(timeout=_POLL_MS / 1000)
        if worker.is_alive():
            self._unusable = CheckpointError(
                f"the state transaction's {what} did not complete within {self.timeout:g} s (the cluster did "
                "not answer); whether it committed is unknown, and this store can no longer write: open a "
                "new one (it resolves the transaction)"
            )
            raise self._unusable
        if failure:
            raise failure[0]

    def write(
        self, model: OnlineLogisticRegression, metadata: dict | None = None, extras: dict | None = None
    ) -> str:
        """Add a checkpoint of ``model`` and ``metadata`` to the open :meth:`transaction`; return its id.

        It becomes visible (and older ones beyond ``keep`` are deleted) when the transaction commits.
        """
        self._check_usable()
        if not self._in_transaction:
            raise CheckpointError(
                "KafkaStore.write needs an open transaction: use save(), or `with store.transaction():`"
            )
        if self._pending is not None:
            raise CheckpointError("this transaction already holds a checkpoint")
        index = self._index if self._index is not None else self._scan()
        cid = new_checkpoint_id([index.newest] if index.newest else [])
        npz, manifest = encode_checkpoint(cid, model, metadata, extras=extras)
        data = manifest + npz
        step = self.chunk_bytes
        chunks = []
        try:
            for n, start in enumerate(range(0, len(data), step)):
                piece = data[start : start + step]
                name = f"{self.key}/{cid}/chunk/{n}"
                self._send(name, piece)
                chunks.append((name, len(piece), hashlib.sha256(piece).hexdigest()))
            created_at = dt.datetime.now(dt.UTC)
            commit = _Commit(cid, created_at, len(manifest), len(data), tuple(chunks))
            self._send(f"{self.key}/{cid}/commit", orjson.dumps({
                "format": COMMIT_FORMAT, "version": COMMIT_VERSION, "key": self.key, "id": cid,
                "created_at": created_at.isoformat(), "manifest_size": len(manifest), "size": len(data),
                "chunks": [list(c) for c in chunks],
            }))
            kept = [commit, *self._usable(index)[: self.keep - 1]]
            live = {key for c in kept for key, _, _ in c.chunks}
            for old in sorted(set(index.commits) - {c.id for c in kept}):
                self._send(f"{self.key}/{old}/commit", None)
            for name in sorted(set(index.chunks) - live):
                self._send(name, None)
        except kafka_errors.KafkaError as exc:
            if _is_fenced(exc):
                raise self._fence(exc) from exc
            raise
        self._pending = _Index(
            {c.id: c for c in kept},
            {key: (-1, size, digest) for c in kept for key, size, digest in c.chunks},
            cid,
        )
        return cid

    def _send(self, name: str, value: bytes | None) -> None:
        self.producer.send(self.topic, key=name.encode(), value=value, partition=self._partition.partition)

    def save(
        self, model: OnlineLogisticRegression, metadata: dict | None = None, extras: dict | None = None
    ) -> str:
        """Write a checkpoint in a transaction of its own; return its id once it is committed."""
        with self.transaction():
            return self.write(model, metadata, extras)

    def close(self) -> None:
        """Close the clients this store made (a producer it was given stays open)."""
        for consumer in (self._consumer, self._probe):
            if consumer is not None:
                consumer.close()
        self._consumer = self._probe = None
        if self._own_producer and self.producer is not None:
            self.producer.close(timeout=self.timeout)

    def __enter__(self) -> KafkaStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
