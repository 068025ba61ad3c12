"""The learner's settings: one dataclass, validated on construction, with errors that name the setting.

>>> cfg = LearnerConfig(bootstrap_servers="127.0.0.1:9092", topics=["events"], group_id="lr",
...                     checkpoint_dir="/tmp/ckpt", batch_size=8)
>>> cfg.batch_size, cfg.auto_offset_reset
(8, 'earliest')
>>> LearnerConfig(bootstrap_servers="k:9092", topics=["events"], group_id="lr", checkpoint_dir="/tmp/c",
...               batch_size=0)
Traceback (most recent call last):
...
consumers.config.ConfigError: batch_size: must be an integer >= 1, got 0
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["KAFKA_CLIENTS", "ConfigError", "LearnerConfig"]

#: The client backends (``LearnerConfig.kafka_client``).
KAFKA_CLIENTS = ("kafka-python", "confluent")

class ConfigError(ValueError):
    """A setting is missing or invalid; the message starts with the setting's name."""


def _default_model() -> dict:
    from stream_logreg import OnlineLogisticRegression

    return OnlineLogisticRegression().config()


@dataclass
class LearnerConfig:
    """Everything the Kafka learner needs; validated by ``__post_init__`` (raises :class:`ConfigError`).

    Kafka
        ``bootstrap_servers`` ("host:port,host:port" or a list), ``topics`` to learn from, ``group_id``.
        ``client_settings`` go to both the consumer and the producer (``security_protocol``, ``sasl_*``,
        ``ssl_*``, ``client_id``, ``request_timeout_ms`` ...; each one only to the client that knows it);
        ``consumer_settings`` / ``producer_settings`` only to one of them (e.g. ``session_timeout_ms``,
        ``linger_ms``).
        ``auto_offset_reset`` applies to partitions that neither a checkpoint nor the group has seen.
        ``group_instance_id``: static group membership (None: the host name and a hash of
        ``checkpoint_dir``, see :func:`consumers.source.default_instance_id`). ``connect_timeout``: seconds
        to reach the brokers at start. ``kafka_client``: ``"kafka-python"`` (the default) or
        ``"confluent"`` (confluent-kafka, the ``confluent`` extra; the same kafka-python setting names,
        mapped, see :mod:`consumers.confluent`).
    Learning
        ``batch_size`` 1 learns each labelled event on its own (``learn_one``); k > 1 learns one mini-batch
        of k consecutive labelled events (``learn_rows``). ``model`` is the model's hyper-parameters in the
        form of ``OnlineLogisticRegression.config()`` (keys left out keep their defaults).
    Checkpoints
        Every ``checkpoint_every_messages`` consumed messages or ``checkpoint_every_seconds`` seconds
        (whichever comes first) into ``checkpoint_dir``, keeping the newest ``keep_checkpoints``.
        ``state_store``: ``"directory"`` (``checkpoint_dir``, one host) or ``"kafka"`` (a compacted topic
        ``<group_id>-state``, no local disk; see :mod:`consumers.learner`). ``processing_guarantee``:
        ``"at-least-once"`` outputs, or ``"exactly-once"`` (outputs, state and offsets of one checkpoint
        interval in one Kafka transaction; needs ``state_store="kafka"``).
    Outputs
        ``predictions_topic`` receives one JSON prediction per unlabelled event (and per labelled one if
        ``publish_labelled``); ``dead_letter_topic`` receives every rejected message. Both optional; they
        must exist at start unless ``create_topics``.
    Operations
        ``progress_every_seconds`` between two progress log lines; ``commit_timeout_ms`` bounds commits
        and flushes.
    Codec
        ``x_field``, ``y_field``, ``id_field``, ``max_features``, ``max_message_bytes``.
    Delayed labels (:mod:`consumers.labels`)
        ``labels_topic``: labels ``{label_id_field: ..., label_y_field: 0|1}`` joined by id with the
        unlabelled events (None: off). It must have the events topics' partition count and be keyed by id
        like them (checked at start). Events wait ``label_ttl`` seconds of stream time (record timestamps),
        then follow ``expired_policy`` (``drop``, or ``negative``: learned as y=0); at most ``max_pending``
        events and labels and ``max_pending_bytes`` of memory wait (the oldest go first, counted).
        Requires ``batch_size`` 1.
    The group model (:mod:`consumers.state.group_model`, issue 12)
        ``sync_every_seconds``: with ``state_store="kafka"``, one model for the whole group, each member
        synchronising with the others' contributions at least this often (None: 5 s with the Kafka store;
        0: one model per member). Refused with the directory store, and for models whose state has no
        sound combine (:func:`stream_logreg.mixing.check_mixable`).
    """

    bootstrap_servers: str | list[str]
    topics: list[str]
    group_id: str
    checkpoint_dir: str | Path
    client_settings: dict[str, Any] = field(default_factory=dict)
    consumer_settings: dict[str, Any] = field(default_factory=dict)
    producer_settings: dict[str, Any] = field(default_factory=dict)
    auto_offset_reset: str = "earliest"
    batch_size: int = 1
    model: dict[str, Any] = field(default_factory=dict)
    checkpoint_every_messages: int = 10_000
    checkpoint_every_seconds: float = 60.0
    keep_checkpoints: int = 5
    predictions_topic: str | None = None
    publish_labelled: bool = False
    dead_letter_topic: str | None = None
    x_field: str = "x"
    y_field: str = "y"
    id_field: str = "id"
    max_features: int = 10_000
    max_message_bytes: int = 1_048_576
    max_poll_records: int = 2_000
    poll_timeout_ms: int = 200
    metrics_window: int = 10_000
    commit_timeout_ms: int = 10_000
    connect_timeout: float = 60.0
    group_instance_id: str | None = None
    create_topics: bool = False
    progress_every_seconds: float = 30.0
    state_store: str = "directory"
    processing_guarantee: str = "at-least-once"
    kafka_client: str = "kafka-python"
    labels_topic: str | None = None
    label_id_field: str = "id"
    label_y_field: str = "y"
    label_ttl: float = 86_400.0
    expired_policy: str = "drop"
    max_pending: int = 1_000_000
    max_pending_bytes: int = 1 << 30
    sync_every_seconds: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.topics, str):
            self.topics = [t for t in self.topics.split(",") if t]
        self.topics = list(self.topics) if isinstance(self.topics, list | tuple) else self.topics
        self.validate()

    # -- validation

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid setting."""
        servers = self.bootstrap_servers
        if isinstance(servers, str):
            servers = [s for s in servers.split(",") if s.strip()]
        if not isinstance(servers, list | tuple) or not servers or not all(
            isinstance(s, str) and s.strip() for s in servers
        ):
            _fail("bootstrap_servers", "must name at least one host:port", self.bootstrap_servers)
        if not isinstance(self.topics, list) or not self.topics:
            _fail("topics", "must be a non-empty list of topic names", self.topics)
        for t in self.topics:
            _check_topic("topics", t)
        if len(set(self.topics)) != len(self.topics):
            _fail("topics", "must not repeat a topic", self.topics)
        if not isinstance(self.group_id, str) or not self.group_id.strip():
            _fail("group_id", "must be a non-empty string", self.group_id)
        if not isinstance(self.checkpoint_dir, str | Path) or not str(self.checkpoint_dir).strip():
            _fail("checkpoint_dir", "must be a directory path", self.checkpoint_dir)
        if self.auto_offset_reset not in ("earliest", "latest"):
            _fail("auto_offset_reset", "must be 'earliest' or 'latest'", self.auto_offset_reset)
        _positive_int("batch_size", self.batch_size)
        _positive_int("checkpoint_every_messages", self.checkpoint_every_messages)
        s = self.checkpoint_every_seconds
        if isinstance(s, bool) or not isinstance(s, int | float) or not (s > 0 and math.isfinite(s)):
            _fail("checkpoint_every_seconds", "must be a finite number of seconds > 0", s)
        _positive_int("keep_checkpoints", self.keep_checkpoints)
        for name in ("predictions_topic", "dead_letter_topic"):
            value = getattr(self, name)
            if value is not None:
                _check_topic(name, value)
                if value in self.topics:
                    _fail(name, "must not be one of the input topics (the learner would read its own output)",
                          value)
        if (self.predictions_topic is not None and self.predictions_topic == self.dead_letter_topic):
            _fail("dead_letter_topic", "must differ from predictions_topic", self.dead_letter_topic)
        if not isinstance(self.publish_labelled, bool):
            _fail("publish_labelled", "must be true or false", self.publish_labelled)
        for name in ("x_field", "y_field", "id_field"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                _fail(name, "must be a non-empty string", value)
        if len({self.x_field, self.y_field, self.id_field}) != 3:
            _fail("x_field", "x_field, y_field and id_field must be three different names",
                  (self.x_field, self.y_field, self.id_field))
        _positive_int("max_features", self.max_features)
        _positive_int("max_message_bytes", self.max_message_bytes)
        _positive_int("max_poll_records", self.max_poll_records)
        _positive_int("poll_timeout_ms", self.poll_timeout_ms)
        _positive_int("metrics_window", self.metrics_window)
        _positive_int("commit_timeout_ms", self.commit_timeout_ms)
        for name in ("connect_timeout", "progress_every_seconds"):
            s = getattr(self, name)
            if isinstance(s, bool) or not isinstance(s, int | float) or not (s > 0 and math.isfinite(s)):
                _fail(name, "must be a finite number of seconds > 0", s)
        gid = self.group_instance_id
        valid_id = isinstance(gid, str) and re.fullmatch(r"[A-Za-z0-9._-]{1,249}", gid) is not None
        if gid is not None and (not valid_id or gid in {".", ".."}):
            _fail("group_instance_id", "must be letters, digits, '.', '_' or '-' (at most 249)", gid)
        if not isinstance(self.create_topics, bool):
            _fail("create_topics", "must be true or false", self.create_topics)
        if self.state_store not in ("directory", "kafka"):
            _fail("state_store", "must be 'directory' or 'kafka'", self.state_store)
        if self.processing_guarantee not in ("at-least-once", "exactly-once"):
            _fail("processing_guarantee", "must be 'at-least-once' or 'exactly-once'",
                  self.processing_guarantee)
        if self.processing_guarantee == "exactly-once" and self.state_store != "kafka":
            _fail("processing_guarantee", "exactly-once needs the state in Kafka (state_store 'kafka'), "
                  "not in a local directory", self.processing_guarantee)
        self._validate_labels()
        self._validate_group_model()
        self._validate_client_settings()
        self._validate_kafka_client()
        if not isinstance(self.model, dict):
            _fail("model", "must be a dict like OnlineLogisticRegression.config()", self.model)
        try:
            self.make_model()
        except (TypeError, ValueError, KeyError) as exc:
            raise ConfigError(f"model: invalid hyper-parameters {self.model!r}: {exc}") from None

    @property
    def group_sync_seconds(self) -> float:
        """Seconds between a member's synchronisations with the group model; 0: one model per member."""
        if self.sync_every_seconds is None:
            return 5.0 if self.state_store == "kafka" else 0.0
        return float(self.sync_every_seconds)

    def _validate_group_model(self) -> None:
        s = self.sync_every_seconds
        if s is not None and (isinstance(s, bool) or not isinstance(s, int | float) or not math.isfinite(s)
                              or s < 0):
            _fail("sync_every_seconds", "must be a finite number of seconds >= 0 (0: one model per member)",
                  s)
        if s and self.state_store != "kafka":
            _fail("sync_every_seconds", "one model for the group needs the state in Kafka (state_store "
                  "'kafka'); with a local directory each member keeps its own model", s)
        if self.group_sync_seconds:
            from stream_logreg.mixing import check_mixable

            try:
                model = self.make_model()
            except (TypeError, ValueError, KeyError):
                return  # the model itself is invalid: reported by its own check
            try:
                check_mixable(model)
            except ValueError as exc:
                _fail("sync_every_seconds", f"{exc}; or set it to 0 for one model per member", s)

    def _validate_labels(self) -> None:
        if self.labels_topic is None:
            return
        _check_topic("labels_topic", self.labels_topic)
        if self.labels_topic in (*self.topics, self.predictions_topic, self.dead_letter_topic):
            _fail("labels_topic", "must differ from the input, predictions and dead-letter topics",
                  self.labels_topic)
        for name in ("label_id_field", "label_y_field"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                _fail(name, "must be a non-empty string", value)
        if self.label_id_field == self.label_y_field:
            _fail("label_y_field", "must differ from label_id_field", self.label_y_field)
        t = self.label_ttl
        if isinstance(t, bool) or not isinstance(t, int | float) or not (t > 0 and math.isfinite(t)) or (
                t * 1000 >= 2**62):
            _fail("label_ttl", "must be a finite number of seconds > 0", t)
        if self.expired_policy not in ("drop", "negative"):
            _fail("expired_policy", "must be 'drop' or 'negative'", self.expired_policy)
        _positive_int("max_pending", self.max_pending)
        _positive_int("max_pending_bytes", self.max_pending_bytes)
        if self.batch_size != 1:
            _fail("batch_size", "must be 1 with a labels topic (joined events are learned one at a time)",
                  self.batch_size)

    @property
    def input_topics(self) -> list[str]:
        """The topics the consumer subscribes to: ``topics``, and the labels topic if any."""
        return [*self.topics, self.labels_topic] if self.labels_topic else list(self.topics)

    def _validate_client_settings(self) -> None:
        from consumers.client_config import ClientConfigError, check_bootstrap, check_client_settings

        try:
            check_bootstrap(self.bootstrap_servers)
        except ClientConfigError as exc:
            raise ConfigError(f"bootstrap_servers: {exc}") from None
        for name, client in (("client_settings", "both"), ("consumer_settings", "consumer"),
                             ("producer_settings", "producer")):
            settings = getattr(self, name)
            if not isinstance(settings, dict):
                _fail(name, "must be a dict of kafka-python settings", settings)
            try:
                check_client_settings(settings, client)
            except ClientConfigError as exc:
                raise ConfigError(f"{name}: {exc}") from None

    def _validate_kafka_client(self) -> None:
        if self.kafka_client not in KAFKA_CLIENTS:
            _fail("kafka_client", "must be one of " + ", ".join(KAFKA_CLIENTS), self.kafka_client)
        if self.kafka_client == "confluent":
            try:
                from consumers.confluent import check_config
            except ImportError as exc:
                raise ConfigError(f"kafka_client: 'confluent' needs confluent-kafka (pip install "
                                  f"'stream-logreg[confluent]'): {exc}") from None
            check_config(self)

    # -- derived objects

    def model_config(self) -> dict:
        """The model's full ``config()``: the defaults updated with ``model`` (the optimizer as a whole),
        normalised (every optimizer parameter present), as checkpoints record it."""
        return self.make_model().config()

    def make_model(self):
        """A fresh :class:`~stream_logreg.OnlineLogisticRegression` with these hyper-parameters."""
        from stream_logreg import OnlineLogisticRegression

        return OnlineLogisticRegression.from_config({**_default_model(), **self.model})

    def make_codec(self):
        from stream_logreg.codec import JsonCodec

        return JsonCodec(
            x_field=self.x_field, y_field=self.y_field, id_field=self.id_field,
            max_features=self.max_features, max_bytes=self.max_message_bytes,
        )

    def consumer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``KafkaConsumer`` (the learner's own settings win over nothing: they are
        rejected in the user's dicts)."""
        from kafka import KafkaConsumer

        known = KafkaConsumer.DEFAULT_CONFIG
        kwargs = {k: v for k, v in self.client_settings.items() if k in known}
        kwargs.update(self.consumer_settings)
        kwargs.update(
            bootstrap_servers=self.bootstrap_servers,
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset=self.auto_offset_reset,
            max_poll_records=self.max_poll_records,
        )
        if self.labels_topic:
            # Partition i of the events and of the labels topic to the same member (equal partition counts).
            from kafka.coordinator.assignors.range import RangePartitionAssignor

            kwargs["partition_assignment_strategy"] = (RangePartitionAssignor,)
            if self.processing_guarantee == "exactly-once":  # hand-off records are sent in transactions
                kwargs["isolation_level"] = "read_committed"
        return kwargs

    def producer_kwargs(self) -> dict[str, Any]:
        from kafka import KafkaProducer

        known = KafkaProducer.DEFAULT_CONFIG
        kwargs = {k: v for k, v in self.client_settings.items() if k in known}
        # Bounded waits: a send waits at most 1 s for a topic's metadata (a deleted topic must not stall the
        # loop for kafka-python's 60 s), and topics are never created by sending to them (see create_topics).
        kwargs.update(max_block_ms=1000, allow_auto_create_topics=False)
        kwargs.update(self.producer_settings)
        kwargs["bootstrap_servers"] = self.bootstrap_servers
        return kwargs

    def admin_kwargs(self, timeout_ms: int) -> dict[str, Any]:
        """Keyword arguments of a ``KafkaAdminClient`` with the consumer's connection settings, each request
        and the bootstrap bounded by ``timeout_ms``."""
        from kafka import KafkaAdminClient

        known = KafkaAdminClient.DEFAULT_CONFIG
        kwargs = {k: v for k, v in self.consumer_kwargs().items() if k in known and k != "group_id"}
        kwargs.update(request_timeout_ms=timeout_ms, bootstrap_timeout_ms=timeout_ms)
        return kwargs

    # -- plain-dict round trip (for a CLI or a config file)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["checkpoint_dir"] = str(self.checkpoint_dir)
        return d

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> LearnerConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"{unknown[0]}: unknown setting (known: {', '.join(sorted(names))})")
        try:
            return cls(**values)
        except TypeError as exc:  # a required setting is missing
            raise ConfigError(str(exc)) from None


def _fail(name: str, requirement: str, value: Any) -> None:
    raise ConfigError(f"{name}: {requirement}, got {value!r}")


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        _fail(name, "must be an integer >= 1", value)


def _check_topic(name: str, topic: Any) -> None:
    valid = isinstance(topic, str) and re.fullmatch(r"[A-Za-z0-9._-]{1,249}", topic) is not None
    if not valid or topic in {".", ".."}:
        _fail(name, "must be a valid Kafka topic name (letters, digits, '.', '_', '-')", topic)
