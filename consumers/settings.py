"""The settings of the command line: one table for flags, environment variables, validation and the README's
configuration table.

The learner service (``consume``) reads every setting from its flag or from a ``STREAM_LOGREG_*`` environment
variable (the flag wins). The settings are one table, :data:`CONSUME_SETTINGS`; :func:`config_table_markdown`
renders it for the README (``stream-logreg consume --print-config-table``). :func:`learner_config` turns the
resolved values into a :class:`consumers.LearnerConfig`, :func:`build_model` the model settings into a model.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from consumers.client_config import (
    ClientConfigError,
    check_bootstrap,
    is_secret,
    parse_client_config,
    split_pairs,
)
from consumers.config import ConfigError, LearnerConfig
from consumers.errors import PROG, UsageError
from consumers.logs import add_secret

__all__ = [
    "COMMON_SETTINGS",
    "CONNECTION_SETTINGS",
    "CONSUME_SETTINGS",
    "MODEL_SETTINGS",
    "TOPIC_NAME",
    "Setting",
    "add_settings",
    "at_least",
    "bootstrap_servers",
    "build_model",
    "check_security",
    "client_settings",
    "config_table_markdown",
    "learner_config",
    "resolve_settings",
    "unknown_environment",
]

log = logging.getLogger(__name__)

ENV_PREFIX = "STREAM_LOGREG_"
#: A Kafka topic name (also refuse "." and "..").
TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})

@dataclasses.dataclass(frozen=True)
class Setting:
    """One setting: its flag ``--name-with-dashes``, its environment variable ``STREAM_LOGREG_NAME``, its
    type (``kind``), default, allowed values and help.

    ``kind`` is one of ``str``, ``int``, ``float``, ``bool``, ``choice``, ``topics`` (comma-separated topic
    names), ``topic`` (one topic name), ``file`` (an existing file) and ``client`` (kafka-python settings of
    the ``client`` named by its ``client`` field, ``key=value`` items: a repeatable flag, or one environment
    variable holding a comma- or newline-separated list). ``default=None`` means unset; with ``unbounded``,
    an int setting also takes ``none`` (or 0) for no limit, which is ``None``.
    """

    name: str
    kind: str
    default: Any
    help: str
    group: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    required: bool = False
    secret: bool = False
    metavar: str | None = None
    client: str | None = None
    unbounded: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def type_name(self) -> str:
        return {
            "str": "string", "int": "integer", "float": "number", "bool": "boolean", "choice": "choice",
            "topics": "list of topics", "topic": "topic", "file": "file path", "client": "key=value list",
        }[self.kind]

    def allowed(self) -> str:
        """What values are allowed, in words (used in error messages and the table)."""
        if self.kind == "choice":
            return "one of: " + ", ".join(self.choices)
        if self.kind == "bool":
            return "true or false (also 1/0, yes/no, on/off)"
        if self.kind == "topics":
            return "a comma-separated list of Kafka topic names (letters, digits, '.', '_', '-')"
        if self.kind == "topic":
            return "a Kafka topic name (letters, digits, '.', '_', '-'), or empty for none"
        if self.kind == "file":
            return "the path of an existing file"
        if self.kind == "client":
            return f"key=value settings of kafka-python's {self.client} (e.g. fetch.max.bytes=1048576)"
        if self.kind in ("int", "float"):
            what = "an integer" if self.kind == "int" else "a number"
            bounds = []
            if self.minimum is not None:
                bounds.append(f"{'>' if self.exclusive_minimum else '>='} {_num(self.minimum)}")
            if self.maximum is not None:
                bounds.append(f"<= {_num(self.maximum)}")
            return (what + (" " + " and ".join(bounds) if bounds else "")
                    + (" (0 or none: no limit)" if self.unbounded else ""))
        return "a non-empty string"

    def default_text(self) -> str:
        if self.default is None:
            return "required" if self.required else "unset"
        if isinstance(self.default, bool):
            return "true" if self.default else "false"
        if isinstance(self.default, list | tuple):
            return ",".join(self.default)
        return str(self.default)

    def parse(self, raw: Any) -> Any:
        """The typed value of a raw string (from a flag or the environment); ``ValueError`` if not allowed.

        An empty string means unset (the default) for optional settings.
        """
        if isinstance(raw, bool) and self.kind == "bool":
            return raw
        if self.kind == "client":  # a list of flag values, or one environment variable
            items = [str(r).strip() for r in raw] if isinstance(raw, list | tuple) else split_pairs(str(raw))
            return parse_client_config([i for i in items if i], self.client or "consumer")
        text = str(raw).strip()
        if text == "" and not self.required:
            return self.default
        if self.kind == "str":
            if not text:
                raise ValueError("empty")
            return text
        if self.kind == "bool":
            low = text.lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError("not a boolean")
        if self.kind == "choice":
            for choice in self.choices:
                if text.lower() == choice.lower():
                    return choice
            raise ValueError("not one of the choices")
        if self.unbounded and text.lower() in ("none", "0"):
            return None
        if self.kind == "int":
            value: Any = int(text.replace("_", ""), 10)
        elif self.kind == "float":
            value = float(text)
            if not math.isfinite(value):
                raise ValueError("not finite")
        elif self.kind == "topics":
            topics = [t.strip() for t in text.split(",") if t.strip()]
            if not topics or not all(TOPIC_NAME.fullmatch(t) and t not in (".", "..") for t in topics):
                raise ValueError("not topic names")
            if len(set(topics)) != len(topics):
                raise ValueError("a topic is repeated")
            return topics
        elif self.kind == "topic":
            if not TOPIC_NAME.fullmatch(text) or text in (".", ".."):
                raise ValueError("not a topic name")
            return text
        elif self.kind == "file":
            if not Path(text).is_file():
                raise ValueError("no such file")
            return text
        else:  # pragma: no cover - a bug in the table
            raise AssertionError(f"unknown kind {self.kind!r}")
        if self.minimum is not None and (
            value <= self.minimum if self.exclusive_minimum else value < self.minimum
        ):
            raise ValueError("too small")
        if self.maximum is not None and value > self.maximum:
            raise ValueError("too large")
        return value


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


COMMON_SETTINGS: tuple[Setting, ...] = (
    Setting("log_format", "choice", "text",
            "Log lines as human-readable text or as JSON objects (one a line).", "Logging",
            choices=("text", "json")),
    Setting("log_level", "choice", "INFO", "The least severe level logged.", "Logging",
            choices=("DEBUG", "INFO", "WARNING", "ERROR")),
)

#: The model's hyper-parameters and the mini-batch size (``demo`` and ``consume``).
MODEL_SETTINGS: tuple[Setting, ...] = (
    Setting("optimizer", "choice", "mixture",
            "Update rule of the weights: a Bayes mixture of SGD at six rates, NAG and FTRL that needs no "
            "tuning (the default), plain SGD (the textbook rule), AdaGrad, or FTRL-Proximal (alpha=0.17 "
            "beta=0.5).", "Model", choices=("mixture", "sgd", "adagrad", "ftrl")),
    Setting("lr", "float", None,
            "Learning rate: SGD's and AdaGrad's rate, FTRL's alpha. Unset: the optimizer's default "
            "(sgd 0.01, adagrad 0.15, ftrl 0.17).", "Model", minimum=0, exclusive_minimum=True),
    Setting("l1", "float", 0.0, "L1 penalty (FTRL only: its proximal step gives exact zeros).", "Model",
            minimum=0),
    Setting("l2", "float", 0.0,
            "L2 penalty: FTRL's lambda2 with --optimizer ftrl, else added to the weights' gradient.", "Model",
            minimum=0),
    Setting("n_bits", "int", None,
            "Hash features into 2^n_bits weights (bounded memory). Unset: a growing vocabulary.", "Model",
            minimum=1, maximum=30),
    Setting("scale", "bool", None,
            "Standardize numeric features online inside the model (River's StandardScaler: running mean and "
            "variance per feature; string indicators untouched; checkpointed). Unset: on with the default "
            "optimizer and a vocabulary, off with --optimizer sgd, adagrad or ftrl (their textbook rule, "
            "exactly) or with --n-bits (not possible there). Helps features of unequal scales a lot; costs "
            "on sparse counts such as word counts (bench/ACCURACY.md section 9).", "Model"),
    Setting("batch_size", "int", 1,
            "Events per update: 1 learns each labelled event on its own, k > 1 one mini-batch of k "
            "consecutive labelled events.", "Model", minimum=1),
    Setting("max_vocabulary", "int", 1_000_000,
            "Most feature names the model learns (its vocabulary; bounds memory and checkpoint size). Once "
            "full, new names are ignored (they count as 0, as if absent; counted in "
            "stream_logreg_features_dropped_total) and known ones keep learning. Not used with --n-bits "
            "(already bounded).", "Model", minimum=0, unbounded=True),
)

_KAFKA = "Kafka connection"
_SECURITY = "Kafka security"

#: Connection settings shared by ``consume`` and ``replay``.
CONNECTION_SETTINGS: tuple[Setting, ...] = (
    Setting("bootstrap_servers", "str", "localhost:9092",
            "Kafka brokers to bootstrap from, host:port[,host:port].", _KAFKA, metavar="HOST:PORT[,...]"),
    Setting("client_id", "str", "stream-logreg", "Client id reported to the brokers (logs, quotas).", _KAFKA),
    Setting("security_protocol", "choice", "PLAINTEXT", "Protocol to talk to the brokers.", _SECURITY,
            choices=("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")),
    Setting("sasl_mechanism", "choice", None, "SASL mechanism (with SASL_PLAINTEXT or SASL_SSL).", _SECURITY,
            choices=("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "GSSAPI")),
    Setting("sasl_plain_username", "str", None, "Username for SASL PLAIN and SCRAM.", _SECURITY),
    Setting("sasl_plain_password", "str", None,
            "Password for SASL PLAIN and SCRAM (prefer the environment variable: flags show in `ps`).",
            _SECURITY, secret=True),
    Setting("ssl_cafile", "file", None, "CA certificate (PEM) to verify the brokers (SSL, SASL_SSL).",
            _SECURITY),
    Setting("ssl_certfile", "file", None, "Client certificate (PEM) for mutual TLS.", _SECURITY),
    Setting("ssl_keyfile", "file", None, "Client private key (PEM) for mutual TLS.", _SECURITY),
    Setting("ssl_password", "str", None, "Password of the client private key.", _SECURITY, secret=True),
    Setting("ssl_check_hostname", "bool", True, "Check that the broker's certificate matches its host name.",
            _SECURITY),
)

_CHECKPOINTS = "Checkpoints"
_OUTPUTS = "Outputs"
_MESSAGES = "Messages"
_OPERATIONS = "Operations"

#: Everything ``consume`` reads: flag ``--x-y`` or environment variable ``STREAM_LOGREG_X_Y``.
CONSUME_SETTINGS: tuple[Setting, ...] = (
    CONNECTION_SETTINGS[0],
    Setting("kafka_client", "choice", "kafka-python",
            "Kafka client library: kafka-python, or confluent (librdkafka: faster; needs the confluent "
            "extra, pip install 'stream-logreg[confluent]').", _KAFKA, choices=("kafka-python", "confluent")),
    Setting("topics", "topics", None, "Topics to learn from (comma-separated).", _KAFKA, required=True,
            metavar="TOPIC[,...]"),
    Setting("group_id", "str", "stream-logreg", "Consumer group of the learners.", _KAFKA),
    *CONNECTION_SETTINGS[1:2],
    Setting("auto_offset_reset", "choice", "earliest",
            "Where to start in partitions that neither a checkpoint nor the group has seen.", _KAFKA,
            choices=("earliest", "latest")),
    Setting("max_poll_records", "int", 2000, "Most records returned by one poll.", _KAFKA, minimum=1),
    Setting("poll_timeout_ms", "int", 200, "How long one poll waits for records, in milliseconds.", _KAFKA,
            minimum=1),
    Setting("session_timeout_ms", "int", None,
            "Consumer group session timeout in milliseconds. Unset: kafka-python's default (45000).", _KAFKA,
            minimum=1),
    *CONNECTION_SETTINGS[2:],
    *MODEL_SETTINGS,
    Setting("checkpoint_dir", "str", "./checkpoints", "Directory of the checkpoints (model and offsets).",
            _CHECKPOINTS, metavar="DIR"),
    Setting("checkpoint_every_messages", "int", 10_000, "Checkpoint (then commit offsets) every N messages.",
            _CHECKPOINTS, minimum=1),
    Setting("checkpoint_every_seconds", "float", 60.0, "... or every T seconds, whichever comes first.",
            _CHECKPOINTS, minimum=0, exclusive_minimum=True),
    Setting("keep_checkpoints", "int", 5, "How many of the newest checkpoints to keep.", _CHECKPOINTS,
            minimum=1),
    Setting("predictions_topic", "topic", None, "Topic to publish predictions to (unset: none).", _OUTPUTS),
    Setting("publish_labelled", "bool", False,
            "Also publish predictions of labelled events (made before learning them).", _OUTPUTS),
    Setting("dead_letter_topic", "topic", None,
            "Topic for rejected messages (original bytes, reason in headers; unset: none).", _OUTPUTS),
    Setting("x_field", "str", "x", "Name of the features field of a message.", _MESSAGES),
    Setting("y_field", "str", "y", "Name of the label field of a message.", _MESSAGES),
    Setting("id_field", "str", "id", "Name of the id field of a message.", _MESSAGES),
    Setting("labels_topic", "topic", None,
            "Topic of delayed labels ({\"id\": ..., \"y\": 0|1}): an unlabelled event waits for its label "
            "and is learned when it arrives. Same partition count as the events topic, keyed by id.",
            _MESSAGES),
    Setting("label_id_field", "str", "id", "Name of the id field of a label message.", _MESSAGES),
    Setting("label_y_field", "str", "y", "Name of the label field of a label message.", _MESSAGES),
    Setting("label_ttl", "float", 86_400.0,
            "Seconds (of record timestamps) an event waits for its label, and a label for its event.",
            _MESSAGES, minimum=0, exclusive_minimum=True),
    Setting("expired_policy", "choice", "drop",
            "What becomes of an event whose label never came (expired, or dropped from a full store): "
            "drop it, or learn it as a negative (y=0).", _MESSAGES, choices=("drop", "negative")),
    Setting("max_pending", "int", 1_000_000, "Most events and labels waiting to be joined.", _MESSAGES,
            minimum=1),
    Setting("max_pending_bytes", "int", 1 << 30,
            "Most memory (estimated, bytes) of the events and labels waiting to be joined.", _MESSAGES,
            minimum=1),
    Setting("max_features", "int", 10_000,
            "Most features one message may have (per message; more: the message is rejected). The model's "
            "total is --max-vocabulary.", _MESSAGES,
            minimum=1),
    Setting("max_message_bytes", "int", 1_048_576,
            "Longest message value accepted, in bytes (longer: rejected).", _MESSAGES, minimum=1),
    Setting("metrics_port", "int", 9108,
            "Port of the HTTP server for Prometheus metrics (/metrics) and health (/ready; /live, also "
            "/healthz); 0: off.", _OPERATIONS, minimum=0, maximum=65535),
    Setting("metrics_host", "str", "127.0.0.1",
            "Address the metrics server binds to (0.0.0.0: every interface, as in a container).",
            _OPERATIONS),
    Setting("metrics_window", "int", 10_000, "Labelled events in the rolling log loss and accuracy.",
            _OPERATIONS, minimum=1),
    Setting("commit_timeout_ms", "int", 10_000,
            "How long a commit (and the final flush of outputs) may take, in milliseconds.", _OPERATIONS,
            minimum=1),
    Setting("connect_timeout", "float", 60.0,
            "Seconds to keep trying to reach the brokers at start; then exit with status 1.", _OPERATIONS,
            minimum=0, exclusive_minimum=True),
    Setting("group_instance_id", "str", None,
            "Static group membership: a restarted learner with the same id takes its partitions back at "
            "once. Unset: the host name and a hash of --checkpoint-dir.", _KAFKA),
    Setting("create_topics", "bool", False,
            "Create missing output topics (with the input topic's partition count) instead of exiting with "
            "status 2.", _OUTPUTS),
    Setting("state_store", "choice", "directory",
            "Where checkpoints live: 'directory' (--checkpoint-dir, one host) or 'kafka' (the compacted "
            "topic <group-id>-state; no local disk, a member on any host resumes the state of the "
            "partitions it takes over).", _CHECKPOINTS, choices=("directory", "kafka")),
    Setting("processing_guarantee", "choice", "at-least-once",
            "'exactly-once': the predictions, dead letters, state and offsets of one checkpoint interval are "
            "one Kafka transaction (read them with isolation.level=read_committed; needs --state-store "
            "kafka). 'at-least-once': outputs may repeat after a crash.", _OUTPUTS,
            choices=("at-least-once", "exactly-once")),
    Setting("sync_every_seconds", "float", None,
            "With --state-store kafka: one model for the whole group; each member adds its own events' "
            "contribution to the others' and synchronises at least this often (every checkpoint is a "
            "synchronisation). Unset: 5 with --state-store kafka. 0: one model per member.", _CHECKPOINTS,
            minimum=0),
    Setting("progress_every_seconds", "float", 30.0,
            "Seconds between progress log lines (events/s, lag, last checkpoint).", _OPERATIONS,
            minimum=0, exclusive_minimum=True),
    Setting("max_idle_seconds", "float", None,
            "Stop (checkpoint, commit, exit 0) after this many seconds without a message. Unset: run until "
            "SIGTERM or Ctrl-C.", _OPERATIONS, minimum=0, exclusive_minimum=True),
    Setting("consumer_config", "client", None,
            "A kafka-python consumer setting, key=value (repeatable; Java-style names like fetch.max.bytes "
            "too; the environment variable takes a comma- or newline-separated list). Settings the learner "
            "controls (group, offset commits, deserializers) are refused.", _KAFKA, metavar="KEY=VALUE",
            client="consumer"),
    Setting("producer_config", "client", None,
            "A kafka-python producer setting of the outputs, key=value (repeatable, as --consumer-config).",
            _KAFKA, metavar="KEY=VALUE", client="producer"),
    *COMMON_SETTINGS,
)

_BY_NAME = {s.name: s for s in CONSUME_SETTINGS}
_METAVARS = {"int": "N", "float": "X", "topic": "TOPIC", "file": "FILE"}


def add_settings(parser: argparse.ArgumentParser, settings: Iterable[Setting], env: bool) -> None:
    """Add one flag per setting (grouped); values are parsed later by :func:`resolve_settings`."""
    groups: dict[str, Any] = {}
    for s in settings:
        group = groups.get(s.group)
        if group is None:
            group = groups[s.group] = parser.add_argument_group(s.group)
        notes = [f"env {s.env}"] if env else []
        if s.required:
            notes.append("required")
        elif s.default is not None:
            notes.append(f"default: {s.default_text()}")
        extra = f" ({'; '.join(notes)})" if notes else ""
        if s.kind == "bool":
            group.add_argument(
                s.flag, dest=s.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                help=(s.help + extra).replace("%", "%%"),
            )
            continue
        metavar = s.metavar or (
            "{" + ",".join(s.choices) + "}" if s.kind == "choice" else _METAVARS.get(s.kind, s.name.upper())
        )
        group.add_argument(
            s.flag, dest=s.name, default=argparse.SUPPRESS, metavar=metavar,
            action="append" if s.kind == "client" else "store", help=(s.help + extra).replace("%", "%%"),
        )


def resolve_settings(
    args: argparse.Namespace, settings: Iterable[Setting], environ: Mapping[str, str] | None
) -> tuple[dict[str, Any], dict[str, str]]:
    """(value of each setting, where it came from: ``flag``, ``env`` or ``default``).

    The flag wins over the environment variable (``environ=None``: flags only). A value that is not
    allowed raises :class:`UsageError` naming the flag, the environment variable and the allowed values.
    """
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    settings = tuple(settings)
    if environ is not None and settings != COMMON_SETTINGS:  # those are read before logging is set up
        for name, closest in unknown_environment(environ):
            log.warning("environment variable %s is not a setting of %s%s: ignored", name, PROG,
                        f" (did you mean {closest}?)" if closest else "")
    for s in settings:
        if hasattr(args, s.name):
            raw, source = getattr(args, s.name), "flag"
        elif environ is not None and environ.get(s.env, "").strip() != "":
            raw, source = environ[s.env], "env"
        else:
            raw, source = None, "default"
        if raw is None:
            if s.required:
                how = f"{s.flag} or {s.env}" if environ is not None else s.flag
                raise UsageError(f"{s.flag} is required (set {how}): {s.allowed()}")
            values[s.name], sources[s.name] = s.default, "default"
            continue
        try:
            values[s.name] = s.parse(raw)
        except ClientConfigError as exc:
            where = s.flag if source == "flag" else f"{s.env} (for {s.flag})"
            raise UsageError(f"invalid {where}: {exc}") from None
        except ValueError:
            shown = "***" if s.secret else repr(raw)
            where = s.flag if source == "flag" else f"{s.env} (for {s.flag})"
            raise UsageError(f"invalid value {shown} for {where}: expected {s.allowed()}") from None
        sources[s.name] = source
        _remember_secrets(s, values[s.name])
    return values, sources


def _remember_secrets(s: Setting, value: Any) -> None:
    """Tell the logs the secret values of a setting, so that no log line shows them."""
    if s.secret and value is not None:
        add_secret(str(value))
    if s.kind == "client" and value:
        for key, v in value.items():
            if is_secret(key):
                add_secret(str(v))


#: ``STREAM_LOGREG_*`` variables that are not settings of a command but are read elsewhere (the test broker).
OTHER_VARIABLES = frozenset({"STREAM_LOGREG_KAFKA_CACHE", "STREAM_LOGREG_KAFKA_VERSION"})


def unknown_environment(environ: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """The ``STREAM_LOGREG_*`` variables of ``environ`` that no command reads, each with the closest
    known variable (or ``None``): most likely misspelled."""
    known = {s.env for s in (*CONSUME_SETTINGS, *CONNECTION_SETTINGS, *COMMON_SETTINGS, *MODEL_SETTINGS)}
    known |= OTHER_VARIABLES
    out = []
    for name in sorted(environ):
        if name.upper().startswith(ENV_PREFIX) and name not in known:
            close = difflib.get_close_matches(name.upper(), sorted(known), n=1, cutoff=0.7)
            out.append((name, close[0] if close else None))
    return out


def config_table_markdown(settings: Sequence[Setting] = CONSUME_SETTINGS) -> str:
    """The settings of ``consume`` as a Markdown table (for the README), grouped as in ``--help``."""
    lines = [
        "| Flag | Environment variable | Type | Default | Description |",
        "|---|---|---|---|---|",
    ]
    groups = list(dict.fromkeys(s.group for s in settings))  # in order of first appearance
    for s in sorted(settings, key=lambda s: groups.index(s.group)):
        kind = s.type_name + (f" ({', '.join(s.choices)})" if s.choices else "")
        if s.kind in ("int", "float") and (s.minimum is not None or s.maximum is not None):
            kind = s.allowed()
        default = s.default_text()
        desc = s.help.replace("|", "\\|")
        lines.append(f"| `{s.flag}` | `{s.env}` | {kind} | `{default}` | {s.group}: {desc} |")
    return "\n".join(lines) + "\n"


def at_least(flag: str, value: int | None, low: int) -> None:
    """Refuse an integer argument below ``low`` (``None``: not given) with a :class:`UsageError`."""
    if value is not None and value < low:
        raise UsageError(f"invalid value {value} for {flag}: expected an integer >= {low}")


# ----------------------------------------------------------------------------------------------------------
# The model and the Kafka clients from settings


def build_model(values: Mapping[str, Any]) -> Any:
    """An :class:`~stream_logreg.OnlineLogisticRegression` for the ``MODEL_SETTINGS`` values."""
    from stream_logreg import OnlineLogisticRegression, optim

    name, lr, l1, l2 = values["optimizer"], values["lr"], values["l1"], values["l2"]
    if name != "ftrl" and l1:
        raise UsageError(f"--l1 applies only to --optimizer ftrl (got --optimizer {name}); "
                         "L1 needs FTRL's proximal step to give exact zeros")
    if name == "mixture" and lr is not None:
        raise UsageError("--lr does not apply to --optimizer mixture (its members have their own rates)")
    rate = {} if lr is None else {"alpha" if name == "ftrl" else "lr": lr}
    if name == "mixture":
        opt: Any = optim.Mixture()
    elif name == "sgd":
        opt = optim.SGD(**rate)
    elif name == "adagrad":
        opt = optim.AdaGrad(**rate)
    else:
        opt = optim.FTRL(**rate, l1=l1, l2=l2)
    scale = values["scale"]
    if scale is None:  # the service's default: standardize, unless it would change a textbook rule
        scale = name == "mixture" and values["n_bits"] is None
    elif scale and values["n_bits"] is not None:
        raise UsageError("--scale needs a vocabulary (no --n-bits): a hashed weight is shared by every "
                         "feature that hashes to it, so it has no feature's mean and variance")
    # With hashing the model is bounded by 2^n_bits already (and takes no vocabulary cap).
    vocabulary = values["max_vocabulary"] if values["n_bits"] is None else None
    return OnlineLogisticRegression(
        optimizer=opt, l2=0.0 if name == "ftrl" else l2, n_bits=values["n_bits"], max_features=vocabulary,
        scale=scale,
    )


def check_security(values: Mapping[str, Any]) -> None:
    """Refuse security settings that do not go together (SASL without a mechanism or credentials, SSL
    files without SSL)."""
    protocol = values["security_protocol"]
    sasl = protocol.startswith("SASL_")
    if sasl and values["sasl_mechanism"] is None:
        choices = ", ".join(_BY_NAME["sasl_mechanism"].choices)
        raise UsageError(f"--security-protocol {protocol} needs --sasl-mechanism "
                         f"(STREAM_LOGREG_SASL_MECHANISM): one of: {choices}")
    if not sasl and values["sasl_mechanism"] is not None:
        raise UsageError(f"--sasl-mechanism is set but --security-protocol is {protocol}: use SASL_PLAINTEXT "
                         "or SASL_SSL")
    if sasl and values["sasl_mechanism"] in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
        for name in ("sasl_plain_username", "sasl_plain_password"):
            if not values[name]:
                s = _BY_NAME[name]
                raise UsageError(f"--sasl-mechanism {values['sasl_mechanism']} needs {s.flag} ({s.env})")
    if not protocol.endswith("SSL"):
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_password"):
            if values[name] is not None:
                s = _BY_NAME[name]
                raise UsageError(
                    f"{s.flag} is set but --security-protocol is {protocol}: use SSL or SASL_SSL"
                )


def client_settings(values: Mapping[str, Any]) -> dict[str, Any]:
    """kafka-python keyword arguments shared by consumers, producers and admin clients (no bootstrap)."""
    kwargs = {"client_id": values["client_id"], "security_protocol": values["security_protocol"]}
    for name in ("sasl_mechanism", "sasl_plain_username", "sasl_plain_password", "ssl_cafile", "ssl_certfile",
                 "ssl_keyfile", "ssl_password"):
        if values[name] is not None:
            kwargs[name] = values[name]
    if values["security_protocol"].endswith("SSL"):
        kwargs["ssl_check_hostname"] = values["ssl_check_hostname"]
    return kwargs


def bootstrap_servers(values: Mapping[str, Any]) -> list[str]:
    """The ``host:port`` entries of the bootstrap_servers setting (at least one)."""
    try:
        return check_bootstrap(values["bootstrap_servers"])
    except ClientConfigError as exc:
        raise UsageError(f"invalid --bootstrap-servers (STREAM_LOGREG_BOOTSTRAP_SERVERS): {exc}") from None


def learner_config(values: Mapping[str, Any]) -> LearnerConfig:
    """The :class:`consumers.LearnerConfig` of resolved ``CONSUME_SETTINGS`` values; a setting it refuses
    becomes a :class:`UsageError` naming its flag and environment variable."""
    check_security(values)
    consumer_settings = dict(values["consumer_config"] or {})
    if values["session_timeout_ms"] is not None:
        if "session_timeout_ms" in consumer_settings:
            raise UsageError("session_timeout_ms is set by both --session-timeout-ms and --consumer-config: "
                             "set it once")
        consumer_settings["session_timeout_ms"] = values["session_timeout_ms"]
    own = {
        "bootstrap_servers", "topics", "group_id", "checkpoint_dir", "auto_offset_reset", "batch_size",
        "checkpoint_every_messages", "checkpoint_every_seconds", "keep_checkpoints", "predictions_topic",
        "publish_labelled", "dead_letter_topic", "x_field", "y_field", "id_field", "max_features",
        "max_message_bytes", "max_poll_records", "poll_timeout_ms", "metrics_window", "commit_timeout_ms",
        "connect_timeout", "group_instance_id", "create_topics", "progress_every_seconds",
        "state_store", "processing_guarantee", "kafka_client",
        "labels_topic", "label_id_field", "label_y_field", "label_ttl", "expired_policy", "max_pending",
        "max_pending_bytes", "sync_every_seconds",
    }
    kwargs = {name: values[name] for name in own}
    kwargs["bootstrap_servers"] = ",".join(bootstrap_servers(values))
    kwargs["model"] = build_model(values).config()
    kwargs["client_settings"] = client_settings(values)
    kwargs["consumer_settings"] = consumer_settings
    kwargs["producer_settings"] = dict(values["producer_config"] or {})
    try:
        return LearnerConfig(**kwargs)
    except ConfigError as exc:
        name = str(exc).split(":", 1)[0]
        setting = _BY_NAME.get({"consumer_settings": "consumer_config",
                                "producer_settings": "producer_config"}.get(name, name))
        if setting is None:
            raise UsageError(str(exc)) from None
        raise UsageError(f"{setting.flag} ({setting.env}): {str(exc).split(':', 1)[1].strip()}") from None


