"""Settings of the Kafka clients (kafka-python) given as text: ``--consumer-config key=value`` and
``--producer-config key=value``, and the bootstrap addresses.

A key is a kafka-python setting (``KafkaConsumer.DEFAULT_CONFIG`` / ``KafkaProducer.DEFAULT_CONFIG``) or its
Java-style name (``fetch.max.bytes`` is ``fetch_max_bytes``); the value is parsed by the type of the setting's
default. The settings the learner controls itself (its group, offset commits, the raw bytes of messages) are
refused with the reason, and so are the ones that take a Python object. An unknown name is refused with the
closest known one.

>>> parse_client_config(["fetch.max.bytes=1048576", "check_crcs=false"], "consumer")
{'fetch_max_bytes': 1048576, 'check_crcs': False}
>>> try:
...     parse_client_config(["fetch_max_byte=1"], "consumer")
... except ClientConfigError as exc:
...     print(exc)
'fetch_max_byte' is not a kafka-python consumer setting (did you mean 'fetch_max_bytes'?)
>>> try:
...     parse_client_config(["enable.auto.commit=true"], "consumer")
... except ClientConfigError as exc:
...     print(exc)
'enable_auto_commit' is set by the learner itself: it commits offsets only once a checkpoint covers them
>>> split_pairs("ssl_ciphers=A,B,linger_ms=5")
['ssl_ciphers=A,B', 'linger_ms=5']
>>> check_bootstrap("broker-1:9092, [::1]:9093")
['broker-1:9092', '[::1]:9093']
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "CONTROLLED",
    "ClientConfigError",
    "check_bootstrap",
    "check_client_settings",
    "client_defaults",
    "is_secret",
    "parse_client_config",
    "split_pairs",
]


class ClientConfigError(ValueError):
    """A client setting that is unknown, refused, or has a value of the wrong type (the message says
    which)."""


#: Settings the learner sets itself, with the reason a user may not (both clients).
CONTROLLED: dict[str, str] = {
    "bootstrap_servers": "use --bootstrap-servers (LearnerConfig.bootstrap_servers)",
    "group_id": "use --group-id (LearnerConfig.group_id)",
    "enable_auto_commit": "it commits offsets only once a checkpoint covers them",
    "auto_offset_reset": "use --auto-offset-reset (LearnerConfig.auto_offset_reset)",
    "max_poll_records": "use --max-poll-records (LearnerConfig.max_poll_records)",
    "group_instance_id": "use --group-instance-id (LearnerConfig.group_instance_id)",
    "default_offset_commit_callback": "it handles the results of its own commits",
    "key_deserializer": "it reads the raw bytes of messages",
    "value_deserializer": "it reads the raw bytes of messages",
    "key_serializer": "it writes the raw bytes of its outputs",
    "value_serializer": "it writes the raw bytes of its outputs",
    "transactional_id": "it does not produce in transactions",
}

# Settings whose value is a Python object: not settable from text.
_OBJECTS = frozenset({
    "ssl_context", "sasl_oauth_token_provider", "selector", "kafka_client", "partitioner", "metric_reporters",
    "socket_options", "partition_assignment_strategy",
})

# Settings whose default is None (so the default does not tell the type): their type.
_NONE_DEFAULT_TYPES: dict[str, type] = {"receive_buffer_bytes": int, "send_buffer_bytes": int}

_SECRET_WORDS = re.compile(r"password|secret|token|credential", re.IGNORECASE)
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
# A comma followed by what looks like the next key: "a=1,b=2" is two pairs, "ssl_ciphers=A,B" one.
_NEXT_PAIR = re.compile(r",(?=\s*[A-Za-z_][A-Za-z0-9_.\-]*\s*=)")
_HOST_PORT = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9_.\-]+)):(?P<port>[0-9]{1,5})")


def is_secret(key: str) -> bool:
    """Whether the value of client setting ``key`` is a secret (never shown or logged)."""
    return _SECRET_WORDS.search(key) is not None


def client_defaults(client: str) -> Mapping[str, Any]:
    """kafka-python's settings of ``client`` (``"consumer"`` or ``"producer"``) with their defaults."""
    from kafka import KafkaConsumer, KafkaProducer

    return {"consumer": KafkaConsumer, "producer": KafkaProducer}[client].DEFAULT_CONFIG


def split_pairs(text: str) -> list[str]:
    """The ``key=value`` items of an environment variable: one a line, or comma-separated (a comma not
    followed by ``key=`` stays in the value)."""
    lines = text.splitlines() if "\n" in text else _NEXT_PAIR.split(text)
    return [item.strip() for item in lines if item.strip()]


def _closest(key: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _parse_value(key: str, text: str, default: Any) -> Any:
    if key == "acks" and text.lower() == "all":
        return -1
    if key == "api_version":
        parts = text.replace(",", ".").split(".")
        if not all(p.isdigit() for p in parts):
            raise ClientConfigError(f"{key} must be a version like 2.5.0, got {text!r}")
        return tuple(int(p) for p in parts)
    kind = _NONE_DEFAULT_TYPES.get(key, str) if default is None else type(default)
    if kind is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ClientConfigError(f"{key} must be true or false, got {text!r}")
    if kind is int:
        try:
            number = int(text.replace("_", ""), 10)
        except ValueError:
            raise ClientConfigError(f"{key} must be an integer, got {text!r}") from None
        if key == "acks" and number not in (-1, 0, 1):
            raise ClientConfigError(f"acks must be all, -1, 0 or 1, got {text!r}")
        if key != "acks" and number < 0:
            raise ClientConfigError(f"{key} must be an integer >= 0, got {text!r}")
        return number
    if kind is float:
        try:
            value = float(text)
        except ValueError:
            raise ClientConfigError(f"{key} must be a number, got {text!r}") from None
        if math.isnan(value) or value < 0:
            raise ClientConfigError(f"{key} must be a number >= 0 (inf allowed), got {text!r}")
        return value
    if kind is str:
        if not text:
            raise ClientConfigError(f"{key} must not be empty")
        return text
    raise ClientConfigError(f"{key} takes a Python object and cannot be set from text")  # pragma: no cover


def _check_key(key: str, client: str, known: Mapping[str, Any]) -> None:
    if key in CONTROLLED:
        raise ClientConfigError(f"{key!r} is set by the learner itself: {CONTROLLED[key]}")
    if key in _OBJECTS:
        raise ClientConfigError(f"{key!r} takes a Python object and cannot be set from text")
    if key not in known:
        raise ClientConfigError(f"{key!r} is not a kafka-python {client} setting{_closest(key, known)}")


def parse_client_config(items: Iterable[str], client: str) -> dict[str, Any]:
    """The kafka-python settings of ``key=value`` items for ``client`` (``"consumer"`` or ``"producer"``).

    Raises :class:`ClientConfigError` naming the key (never showing the value of a secret one).
    """
    known = client_defaults(client)
    out: dict[str, Any] = {}
    for item in items:
        key_text, eq, text = item.partition("=")
        raw_key = key_text.strip()
        if not eq or not raw_key:
            shown = "***" if is_secret(raw_key) else repr(item)
            raise ClientConfigError(f"expected key=value, got {shown}")
        key = raw_key.replace(".", "_").replace("-", "_").lower()
        _check_key(key, client, known)
        if key in out:
            raise ClientConfigError(f"{key!r} is given twice")
        try:
            out[key] = _parse_value(key, text.strip(), known[key])
        except ClientConfigError as exc:
            if is_secret(key):
                raise ClientConfigError(f"{key}: invalid value") from None
            raise exc from None
    return out


def check_client_settings(settings: Mapping[str, Any], client: str) -> None:
    """Refuse a dict of settings for ``client`` (``"consumer"``, ``"producer"`` or ``"both"``) that holds an
    unknown key or one the learner controls (:class:`ClientConfigError`)."""
    if client == "both":
        known: Mapping[str, Any] = {**client_defaults("consumer"), **client_defaults("producer")}
    else:
        known = client_defaults(client)
    for key in settings:
        if not isinstance(key, str):
            raise ClientConfigError(f"{key!r} is not a kafka-python setting name")
        if key in CONTROLLED:
            raise ClientConfigError(f"{key!r} is set by the learner itself: {CONTROLLED[key]}")
        if key not in known:
            what = "" if client == "both" else f" {client}"
            raise ClientConfigError(f"{key!r} is not a kafka-python{what} setting{_closest(key, known)}")


def check_bootstrap(servers: str | Iterable[str]) -> list[str]:
    """The ``host:port`` entries of a bootstrap list (a comma-separated string or a list); raises
    :class:`ClientConfigError` unless there is at least one and each has a host and a port in 1–65535."""
    entries = servers.split(",") if isinstance(servers, str) else list(servers)
    out = []
    for entry in entries:
        if not isinstance(entry, str):
            raise ClientConfigError(f"{entry!r} is not host:port")
        entry = entry.strip()
        if not entry:
            continue
        match = _HOST_PORT.fullmatch(entry)
        if match is None:
            raise ClientConfigError(f"{entry!r} is not host:port (e.g. localhost:9092 or [::1]:9092)")
        port = int(match["port"])
        if not 1 <= port <= 65535:
            raise ClientConfigError(f"{entry!r}: the port must be in 1-65535, got {port}")
        out.append(entry)
    if not out:
        raise ClientConfigError("must name at least one host:port")
    return out
