"""The ``stream-logreg`` command line: ``demo``, ``inspect``, ``score``, ``report``, ``replay``, ``consume``.

Every subcommand has ``--help`` with examples. Exit status: 0 success, 1 a runtime failure (a broker that
cannot be reached, a missing checkpoint, ...), 2 a usage error (a bad setting: the message names it and says
what is allowed), 130 interrupted (Ctrl-C).

The learner service (``consume``) reads every setting from its flag or from a ``STREAM_LOGREG_*`` environment
variable (the flag wins). The settings are one table, :data:`CONSUME_SETTINGS`; :func:`config_table_markdown`
renders it for the README (``stream-logreg consume --print-config-table``).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import datetime as dt
import itertools
import logging
import math
import os
import re
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

__all__ = [
    "COMMON_SETTINGS",
    "CONSUME_SETTINGS",
    "DATASETS",
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "JsonFormatter",
    "MODEL_SETTINGS",
    "Setting",
    "build_parser",
    "config_table_markdown",
    "main",
    "plot_curve",
    "read_curve",
]

PROG = "stream-logreg"
ENV_PREFIX = "STREAM_LOGREG_"
EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
CURVE_COLUMNS = ("event", "y", "p", "log_loss", "accuracy", "rolling_log_loss", "rolling_accuracy")

log = logging.getLogger("stream_logreg.cli")


class UsageError(Exception):
    """A bad setting or argument: exit status 2. The message names the setting and what is allowed."""


class CommandError(Exception):
    """The command could not do its job (runtime failure): exit status 1."""


# ----------------------------------------------------------------------------------------------------------
# Settings: one table for flags, environment variables, validation and the README's configuration table


_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


@dataclasses.dataclass(frozen=True)
class Setting:
    """One setting: its flag ``--name-with-dashes``, its environment variable ``STREAM_LOGREG_NAME``, its
    type (``kind``), default, allowed values and help.

    ``kind`` is one of ``str``, ``int``, ``float``, ``bool``, ``choice``, ``topics`` (comma-separated topic
    names), ``topic`` (one topic name) and ``file`` (an existing file). ``default=None`` means unset.
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
            "topics": "list of topics", "topic": "topic", "file": "file path",
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
        if self.kind in ("int", "float"):
            what = "an integer" if self.kind == "int" else "a number"
            bounds = []
            if self.minimum is not None:
                bounds.append(f"{'>' if self.exclusive_minimum else '>='} {_num(self.minimum)}")
            if self.maximum is not None:
                bounds.append(f"<= {_num(self.maximum)}")
            return what + (" " + " and ".join(bounds) if bounds else "")
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
        if self.kind == "int":
            value: Any = int(text.replace("_", ""), 10)
        elif self.kind == "float":
            value = float(text)
            if not math.isfinite(value):
                raise ValueError("not finite")
        elif self.kind == "topics":
            topics = [t.strip() for t in text.split(",") if t.strip()]
            if not topics or not all(_TOPIC.fullmatch(t) and t not in (".", "..") for t in topics):
                raise ValueError("not topic names")
            if len(set(topics)) != len(topics):
                raise ValueError("a topic is repeated")
            return topics
        elif self.kind == "topic":
            if not _TOPIC.fullmatch(text) or text in (".", ".."):
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


def _S(name: str, kind: str, default: Any, help: str, group: str, **kw: Any) -> Setting:
    return Setting(name, kind, default, help, group, **kw)


#: Logging: every subcommand has these.
COMMON_SETTINGS: tuple[Setting, ...] = (
    _S("log_format", "choice", "text", "Log lines as human-readable text or as JSON objects (one a line).",
       "Logging", choices=("text", "json")),
    _S("log_level", "choice", "INFO", "The least severe level logged.", "Logging",
       choices=("DEBUG", "INFO", "WARNING", "ERROR")),
)

#: The model's hyper-parameters and the mini-batch size (``demo`` and ``consume``).
MODEL_SETTINGS: tuple[Setting, ...] = (
    _S("optimizer", "choice", "ftrl",
       "Update rule of the weights: plain SGD (the seed's rule), AdaGrad, or FTRL-Proximal (the model's "
       "default, FTRL alpha=0.1 beta=1).", "Model", choices=("sgd", "adagrad", "ftrl")),
    _S("lr", "float", None,
       "Learning rate: SGD's and AdaGrad's rate, FTRL's alpha. Unset: the optimizer's default "
       "(sgd 0.01, adagrad 0.1, ftrl 0.1).", "Model", minimum=0, exclusive_minimum=True),
    _S("l1", "float", 0.0, "L1 penalty (FTRL only: its proximal step gives exact zeros).", "Model",
       minimum=0),
    _S("l2", "float", 0.0,
       "L2 penalty: FTRL's lambda2 with --optimizer ftrl, else added to the weights' gradient.", "Model",
       minimum=0),
    _S("n_bits", "int", None,
       "Hash features into 2^n_bits weights (bounded memory). Unset: a growing vocabulary.", "Model",
       minimum=1, maximum=30),
    _S("batch_size", "int", 1,
       "Events per update: 1 learns each labelled event on its own, k > 1 one mini-batch of k "
       "consecutive labelled events.", "Model", minimum=1),
)

_KAFKA = "Kafka connection"
_SECURITY = "Kafka security"

#: Connection settings shared by ``consume`` and ``replay``.
CONNECTION_SETTINGS: tuple[Setting, ...] = (
    _S("bootstrap_servers", "str", "localhost:9092",
       "Kafka brokers to bootstrap from, host:port[,host:port].", _KAFKA, metavar="HOST:PORT[,...]"),
    _S("client_id", "str", "stream-logreg", "Client id reported to the brokers (logs, quotas).", _KAFKA),
    _S("security_protocol", "choice", "PLAINTEXT", "Protocol to talk to the brokers.", _SECURITY,
       choices=("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")),
    _S("sasl_mechanism", "choice", None, "SASL mechanism (with SASL_PLAINTEXT or SASL_SSL).", _SECURITY,
       choices=("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "GSSAPI")),
    _S("sasl_plain_username", "str", None, "Username for SASL PLAIN and SCRAM.", _SECURITY),
    _S("sasl_plain_password", "str", None,
       "Password for SASL PLAIN and SCRAM (prefer the environment variable: flags show in `ps`).",
       _SECURITY, secret=True),
    _S("ssl_cafile", "file", None, "CA certificate (PEM) to verify the brokers (SSL, SASL_SSL).", _SECURITY),
    _S("ssl_certfile", "file", None, "Client certificate (PEM) for mutual TLS.", _SECURITY),
    _S("ssl_keyfile", "file", None, "Client private key (PEM) for mutual TLS.", _SECURITY),
    _S("ssl_password", "str", None, "Password of the client private key.", _SECURITY, secret=True),
    _S("ssl_check_hostname", "bool", True, "Check that the broker's certificate matches its host name.",
       _SECURITY),
)

_LEARNER = "Learner"
_CHECKPOINTS = "Checkpoints"
_OUTPUTS = "Outputs"
_MESSAGES = "Messages"
_OPERATIONS = "Operations"

#: Everything ``consume`` reads: flag ``--x-y`` or environment variable ``STREAM_LOGREG_X_Y``.
CONSUME_SETTINGS: tuple[Setting, ...] = (
    CONNECTION_SETTINGS[0],
    _S("topics", "topics", None, "Topics to learn from (comma-separated).", _KAFKA, required=True,
       metavar="TOPIC[,...]"),
    _S("group_id", "str", "stream-logreg", "Consumer group of the learners.", _KAFKA),
    *CONNECTION_SETTINGS[1:2],
    _S("auto_offset_reset", "choice", "earliest",
       "Where to start in partitions that neither a checkpoint nor the group has seen.", _KAFKA,
       choices=("earliest", "latest")),
    _S("max_poll_records", "int", 2000, "Most records returned by one poll.", _KAFKA, minimum=1),
    _S("poll_timeout_ms", "int", 200, "How long one poll waits for records, in milliseconds.", _KAFKA,
       minimum=1),
    _S("session_timeout_ms", "int", None,
       "Consumer group session timeout in milliseconds. Unset: kafka-python's default (45000).", _KAFKA,
       minimum=1),
    *CONNECTION_SETTINGS[2:],
    *MODEL_SETTINGS,
    _S("checkpoint_dir", "str", "./checkpoints", "Directory of the checkpoints (model and offsets).",
       _CHECKPOINTS, metavar="DIR"),
    _S("checkpoint_every_messages", "int", 10_000, "Checkpoint (then commit offsets) every N messages.",
       _CHECKPOINTS, minimum=1),
    _S("checkpoint_every_seconds", "float", 60.0, "... or every T seconds, whichever comes first.",
       _CHECKPOINTS, minimum=0, exclusive_minimum=True),
    _S("keep_checkpoints", "int", 5, "How many of the newest checkpoints to keep.", _CHECKPOINTS, minimum=1),
    _S("predictions_topic", "topic", None, "Topic to publish predictions to (unset: none).", _OUTPUTS),
    _S("publish_labelled", "bool", False,
       "Also publish predictions of labelled events (made before learning them).", _OUTPUTS),
    _S("dead_letter_topic", "topic", None,
       "Topic for rejected messages (original bytes, reason in headers; unset: none).", _OUTPUTS),
    _S("x_field", "str", "x", "Name of the features field of a message.", _MESSAGES),
    _S("y_field", "str", "y", "Name of the label field of a message.", _MESSAGES),
    _S("id_field", "str", "id", "Name of the id field of a message.", _MESSAGES),
    _S("max_features", "int", 10_000, "Most features a message may have (more: rejected).", _MESSAGES,
       minimum=1),
    _S("max_message_bytes", "int", 1_048_576, "Longest message value accepted, in bytes (longer: rejected).",
       _MESSAGES, minimum=1),
    _S("metrics_port", "int", 9108,
       "Port of the HTTP server for Prometheus metrics (/metrics) and health (/healthz, /ready); 0: off.",
       _OPERATIONS, minimum=0, maximum=65535),
    _S("metrics_host", "str", "0.0.0.0", "Address the metrics server binds to.", _OPERATIONS),
    _S("metrics_window", "int", 10_000, "Labelled events in the rolling log loss and accuracy.", _OPERATIONS,
       minimum=1),
    _S("commit_timeout_ms", "int", 10_000,
       "How long a commit (and the final flush of outputs) may take, in milliseconds.", _OPERATIONS,
       minimum=1),
    _S("max_idle_seconds", "float", None,
       "Stop (checkpoint, commit, exit 0) after this many seconds without a message. Unset: run until "
       "SIGTERM or Ctrl-C.", _OPERATIONS, minimum=0, exclusive_minimum=True),
    *COMMON_SETTINGS,
)


_METAVARS = {"int": "N", "float": "X", "topic": "TOPIC", "file": "FILE"}


def _add_settings(parser: argparse.ArgumentParser, settings: Iterable[Setting], env: bool) -> None:
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
            help=(s.help + extra).replace("%", "%%"),
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
        except ValueError:
            shown = "***" if s.secret else repr(raw)
            where = s.flag if source == "flag" else f"{s.env} (for {s.flag})"
            raise UsageError(f"invalid value {shown} for {where}: expected {s.allowed()}") from None
        sources[s.name] = source
    return values, sources


def config_table_markdown(settings: Sequence[Setting] = CONSUME_SETTINGS) -> str:
    """The settings of ``consume`` as a Markdown table (for the README), grouped as in ``--help``."""
    lines = [
        "| Flag | Environment variable | Type | Default | Description |",
        "|---|---|---|---|---|",
    ]
    for s in sorted(settings, key=lambda s: _group_order(settings, s.group)):
        kind = s.type_name + (f" ({', '.join(s.choices)})" if s.choices else "")
        if s.kind in ("int", "float") and (s.minimum is not None or s.maximum is not None):
            kind = s.allowed()
        default = s.default_text()
        desc = s.help.replace("|", "\\|")
        lines.append(f"| `{s.flag}` | `{s.env}` | {kind} | `{default}` | {s.group}: {desc} |")
    return "\n".join(lines) + "\n"


def _group_order(settings: Sequence[Setting], group: str) -> int:
    order: list[str] = []
    for s in settings:
        if s.group not in order:
            order.append(s.group)
    return order.index(group)


# ----------------------------------------------------------------------------------------------------------
# Logging


_RECORD_ATTRS = frozenset(vars(logging.LogRecord("n", 0, "p", 0, "m", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``ts`` (UTC, ISO-8601), ``level``, ``logger``, ``message``, the
    record's extra fields (``log.info("...", extra={"partition": 3})``) and ``exc_info`` if any."""

    def format(self, record: logging.LogRecord) -> str:
        import orjson

        ts = dt.datetime.fromtimestamp(record.created, dt.UTC)
        doc: dict[str, Any] = {
            "ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRS and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            doc["stack_info"] = self.formatStack(record.stack_info)
        return orjson.dumps(doc, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


def configure_logging(fmt: str, level: str, stream: TextIO | None = None) -> Callable[[], None]:
    """Log to stderr (or ``stream``) as text or JSON lines; replaces the handler a previous call added.

    Returns a function that puts the previous logging set-up back (``main`` calls it when it returns, so
    that in-process callers, e.g. tests, keep their own).
    """
    root = logging.getLogger()
    kafka_logger = logging.getLogger("kafka")
    saved = (list(root.handlers), root.level, kafka_logger.level)

    def restore() -> None:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        kafka_logger.setLevel(saved[2])

    for handler in list(root.handlers):
        if getattr(handler, "_stream_logreg", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler._stream_logreg = True  # type: ignore[attr-defined]
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
    # kafka-python logs every connection and rebalance step at INFO.
    kafka_logger.setLevel(level if level == "DEBUG" else "WARNING")
    return restore


# ----------------------------------------------------------------------------------------------------------
# The model from settings


def build_model(values: Mapping[str, Any]) -> Any:
    """An :class:`~stream_logreg.OnlineLogisticRegression` for the ``MODEL_SETTINGS`` values."""
    from stream_logreg import OnlineLogisticRegression, optim

    name, lr, l1, l2 = values["optimizer"], values["lr"], values["l1"], values["l2"]
    if name != "ftrl" and l1:
        raise UsageError(f"--l1 applies only to --optimizer ftrl (got --optimizer {name}); "
                         "L1 needs FTRL's proximal step to give exact zeros")
    if name == "sgd":
        opt: Any = optim.SGD(lr=0.01 if lr is None else lr)
    elif name == "adagrad":
        opt = optim.AdaGrad(lr=0.1 if lr is None else lr)
    else:
        opt = optim.FTRL(alpha=0.1 if lr is None else lr, beta=1.0, l1=l1, l2=l2)
    return OnlineLogisticRegression(
        optimizer=opt, l2=0.0 if name == "ftrl" else l2, n_bits=values["n_bits"]
    )


# ----------------------------------------------------------------------------------------------------------
# Datasets (no network: River's bundled files and synthetic generators)


@dataclasses.dataclass(frozen=True)
class _Dataset:
    description: str
    size: int | None  # None: synthetic, endless
    make: Callable[[int], Iterable[tuple[dict, Any]]]


def _phishing(seed: int) -> Iterable[tuple[dict, Any]]:
    from river import datasets

    return datasets.Phishing()


def _bananas(seed: int) -> Iterable[tuple[dict, Any]]:
    from river import datasets

    return datasets.Bananas()


def _sea(seed: int) -> Iterable[tuple[dict, Any]]:
    from river.datasets import synth

    return synth.ConceptDriftStream(
        stream=synth.SEA(variant=0, noise=0.05, seed=seed),
        drift_stream=synth.SEA(variant=3, noise=0.05, seed=seed + 1),
        position=5000, width=1000, seed=seed,
    )


def _hyperplane(seed: int) -> Iterable[tuple[dict, Any]]:
    from river.datasets import synth

    return synth.Hyperplane(seed=seed, n_features=10, n_drift_features=2, mag_change=0.001,
                            noise_percentage=0.05)


DATASETS: dict[str, _Dataset] = {
    "phishing": _Dataset("River's Phishing websites: 1,250 events, 9 features (bundled)", 1250, _phishing),
    "bananas": _Dataset("River's Bananas: 5,300 events, 2 features, not linearly separable (bundled)", 5300,
                        _bananas),
    "sea": _Dataset("SEA concepts (synthetic): 3 features, 5% noise, the concept drifts around event "
                    "5,000", None, _sea),
    "hyperplane": _Dataset("rotating hyperplane (synthetic): 10 features, 2 of them drifting, 5% noise",
                           None, _hyperplane),
}
SYNTHETIC_DEFAULT_N = 10_000


def _dataset_stream(name: str, n: int | None, seed: int) -> tuple[Iterable[tuple[dict, Any]], int]:
    """The (x, y) pairs of a built-in dataset and how many of them to use."""
    spec = DATASETS[name]
    if n is None:
        n = spec.size if spec.size is not None else SYNTHETIC_DEFAULT_N
    elif spec.size is not None and n > spec.size:
        raise UsageError(f"--n {n} is larger than the {name} dataset ({spec.size} events)")
    return spec.make(seed), n


def _dataset_help() -> str:
    return "\n".join(f"  {name:<11} {spec.description}" for name, spec in DATASETS.items())


# ----------------------------------------------------------------------------------------------------------
# Progress on stderr


class _Progress:
    """A live status line on stderr: rewritten in place (carriage return) on a terminal, else a plain line
    every ``interval`` seconds. ``update`` is cheap to call for every event."""

    def __init__(self, stream: TextIO | None, enabled: bool, interval: float | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        isatty = getattr(self.stream, "isatty", None)
        self.tty = bool(isatty and isatty())
        self.interval = interval if interval is not None else (0.1 if self.tty else 10.0)
        self.start = time.monotonic()
        self._next = self.start + self.interval
        self._width = 0

    def rate(self, done: int) -> float:
        elapsed = time.monotonic() - self.start
        return done / elapsed if elapsed > 0 else 0.0

    def due(self) -> bool:
        return self.enabled and time.monotonic() >= self._next

    def show(self, text: str, final: bool = False) -> None:
        if not self.enabled:
            return
        self._next = time.monotonic() + self.interval
        if self.tty:
            pad = max(0, self._width - len(text))
            self._width = len(text)
            self.stream.write("\r" + text + " " * pad + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def _bar(done: int, total: int | None, width: int = 24) -> str:
    if not total:
        return f"{done:,}"
    frac = min(1.0, done / total)
    filled = int(frac * width)
    return f"[{'#' * filled}{'.' * (width - filled)}] {frac:4.0%} {done:,}/{total:,}"


@contextlib.contextmanager
def _graceful_interrupt() -> Iterator[Callable[[], bool]]:
    """Within the block, the first Ctrl-C only sets a flag (polled with the yielded function) so the loop
    can stop at a safe point; a second one interrupts at once. Outside the main thread: no-op."""
    state = {"interrupted": False}

    def handler(signum: int, frame: Any) -> None:
        if state["interrupted"]:
            raise KeyboardInterrupt
        state["interrupted"] = True

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread
        yield lambda: False
        return
    try:
        yield lambda: state["interrupted"]
    finally:
        signal.signal(signal.SIGINT, previous)


# ----------------------------------------------------------------------------------------------------------
# demo


def _mismatch_text(exc: Any) -> str:
    """The differences of a ``CheckpointMismatch``, short: ``optimizer.name 'FTRL' there, 'SGD' here``."""
    shown = [(n, a, b) for n, a, b in exc.differences if "<absent>" not in (a, b)] or exc.differences
    return "; ".join(f"{name} {a!r} there, {b!r} here" for name, a, b in shown)


def _log_loss(p: float, y: bool) -> float:
    """Cross-entropy of probability ``p`` against ``y``, with p clipped to [1e-15, 1 - 1e-15]."""
    p = min(max(p, 1e-15), 1.0 - 1e-15)
    return -math.log(p) if y else -math.log1p(-p)


def _cmd_demo(args: argparse.Namespace) -> int:
    from stream_logreg.checkpoints import CheckpointError, CheckpointMismatch, DirectoryStore

    model_values, _ = resolve_settings(args, MODEL_SETTINGS, None)
    model = build_model(model_values)
    batch_size = model_values["batch_size"]
    stream, n = _dataset_stream(args.dataset, args.n, args.seed)
    synthetic = DATASETS[args.dataset].size is None
    identity = {"dataset": args.dataset, "seed": args.seed if synthetic else None, "batch_size": batch_size}

    try:
        store = DirectoryStore(args.checkpoint_dir, keep=args.keep)
    except OSError as exc:
        raise CommandError(f"cannot use --checkpoint-dir {args.checkpoint_dir}: {exc}") from None
    position, totals, resumed_from = 0, {"n": 0, "log_loss_sum": 0.0, "correct": 0}, None
    if not args.fresh:
        try:
            checkpoint = store.latest(expect_config=model.config())
        except CheckpointMismatch as exc:
            raise UsageError(
                f"the latest checkpoint in --checkpoint-dir {args.checkpoint_dir} has other model options "
                f"({_mismatch_text(exc)}): use the same options, another --checkpoint-dir, or --fresh"
            ) from None
        except CheckpointError as exc:
            raise CommandError(f"cannot resume from {args.checkpoint_dir}: {exc}") from None
        if checkpoint is not None:
            meta = checkpoint.metadata
            theirs = {k: meta.get(k) for k in identity}
            if theirs != identity or not isinstance(meta.get("position"), int):
                raise UsageError(
                    f"the latest checkpoint in --checkpoint-dir {args.checkpoint_dir} ({checkpoint.id}) is "
                    f"of another run ({theirs}, this run: {identity}): use another --checkpoint-dir, or "
                    "--fresh"
                )
            model, position, resumed_from = checkpoint.model, meta["position"], checkpoint.id
            totals.update(meta.get("progressive") or {})
            print(
                f"resumed from checkpoint {checkpoint.id} in {args.checkpoint_dir}: skipping the "
                f"{position:,} events it covers",
                file=sys.stderr,
            )

    def save() -> str:
        try:
            return store.save(model, {**identity, "position": position, "progressive": dict(totals)})
        except (CheckpointError, OSError) as exc:
            raise CommandError(f"cannot write a checkpoint to {args.checkpoint_dir}: {exc}") from None

    curve_file = None
    writer = None
    if args.curve is not None:
        try:
            curve_file = open(args.curve, "w", newline="")  # closed in the finally below
        except OSError as exc:
            raise CommandError(f"cannot write --curve {args.curve}: {exc}") from None
        writer = csv.writer(curve_file)
        writer.writerow(CURVE_COLUMNS)

    progress = _Progress(sys.stderr, enabled=not args.quiet)
    window: deque[tuple[float, int]] = deque(maxlen=args.window)
    rolling = [0.0, 0]
    learned = 0
    last_saved = position if resumed_from is not None else -1
    checkpoint_id = resumed_from
    interrupted = False
    start = time.monotonic()

    def status() -> str:
        k = max(totals["n"], 1)
        return (
            f"demo {args.dataset}  {_bar(position, n)} events  {progress.rate(learned):,.0f} ev/s  "
            f"log loss {totals['log_loss_sum'] / k:.4f}  accuracy {totals['correct'] / k:.2%}"
        )

    try:
        with _graceful_interrupt() as stop_requested:
            events = itertools.islice(stream, position, n) if position < n else iter(())
            while True:
                batch = list(itertools.islice(events, batch_size))
                if not batch:
                    break
                for i, (x, y) in enumerate(batch):
                    p = model.predict_proba_one(x)[True]
                    truth = bool(y)
                    loss, hit = _log_loss(p, truth), int((p > 0.5) == truth)
                    totals["n"] += 1
                    totals["log_loss_sum"] += loss
                    totals["correct"] += hit
                    if len(window) == window.maxlen:
                        old_loss, old_hit = window[0]
                        rolling[0] -= old_loss
                        rolling[1] -= old_hit
                    window.append((loss, hit))
                    rolling[0] += loss
                    rolling[1] += hit
                    if writer is not None:
                        k = totals["n"]
                        writer.writerow((
                            position + i + 1, int(truth), repr(p),
                            repr(totals["log_loss_sum"] / k), repr(totals["correct"] / k),
                            repr(rolling[0] / len(window)), repr(rolling[1] / len(window)),
                        ))
                if batch_size == 1:
                    model.learn_one(*batch[0])
                else:
                    model.learn_rows([x for x, _ in batch], [y for _, y in batch])
                position += len(batch)
                learned += len(batch)
                if position // args.checkpoint_every > max(last_saved, 0) // args.checkpoint_every:
                    checkpoint_id, last_saved = save(), position
                if progress.due():
                    progress.show(status())
                if stop_requested():
                    interrupted = True
                    break
        if last_saved != position:
            checkpoint_id, last_saved = save(), position
    finally:
        if curve_file is not None:
            curve_file.close()
    elapsed = time.monotonic() - start
    progress.show(status(), final=True)

    k = max(totals["n"], 1)
    out = sys.stdout
    print(f"dataset               {args.dataset} ({DATASETS[args.dataset].description})", file=out)
    if resumed_from is not None:
        print(f"resumed from          checkpoint {resumed_from} (event {position - learned:,} of {n:,})",
              file=out)
    print(f"events                {position:,} of {n:,} ({learned:,} learned in this run"
          f"{', interrupted' if interrupted else ''})", file=out)
    print(f"throughput            {learned / elapsed if elapsed > 0 else 0.0:,.0f} events/s", file=out)
    print(f"progressive log loss  {totals['log_loss_sum'] / k:.4f}", file=out)
    print(f"progressive accuracy  {totals['correct'] / k:.2%}", file=out)
    print(f"samples seen          {model.n_samples_seen:,}", file=out)
    print(f"checkpoint            {checkpoint_id} in {args.checkpoint_dir}", file=out)
    if args.curve is not None:
        print(f"learning curve        {args.curve} (draw it: {PROG} report {args.curve} -o curve.png)",
              file=out)
    return EXIT_INTERRUPTED if interrupted else EXIT_OK



# ----------------------------------------------------------------------------------------------------------
# inspect


def _open_checkpoint(target: str, checkpoint_dir: str | None) -> tuple[Any, str]:
    """The checkpoint that ``target`` names (a store directory: its latest; a checkpoint file or
    ``<dir>/<id>``; a bare id in ``checkpoint_dir``) and where it was found."""
    from stream_logreg.checkpoints import CheckpointError, DirectoryStore, load_checkpoint

    path = Path(target)
    try:
        if path.is_dir():
            store = DirectoryStore(path)
            checkpoint = store.latest()
            for cid, reason in store.skipped:
                print(f"skipped damaged checkpoint {cid}: {reason}", file=sys.stderr)
            if checkpoint is None:
                raise CommandError(f"no valid checkpoint in {path}")
            return checkpoint, str(path)
        if re.fullmatch(r"\d{20}", target) and not path.exists():
            directory = Path(checkpoint_dir or "checkpoints")
            if not directory.is_dir():
                raise CommandError(f"{target} looks like a checkpoint id, but --checkpoint-dir {directory} "
                                   "is not a directory")
            return DirectoryStore(directory).load(target), str(directory)
        stem = path.with_suffix("") if path.suffix in (".json", ".npz") else path
        if stem.with_name(stem.name + ".json").is_file():
            return load_checkpoint(stem), str(stem.parent)
    except CheckpointError as exc:
        raise CommandError(f"cannot read checkpoint {target}: {exc}") from None
    raise CommandError(
        f"{target}: not a checkpoint directory, a checkpoint file (<id>.json / <id>.npz) or a checkpoint id"
    )


def _describe_checkpoint(checkpoint: Any, where: str, top: int) -> dict[str, Any]:
    model = checkpoint.model
    weights = model.weights
    ranked = sorted(
        ((name, w) for name, w in weights.items() if w != 0.0), key=lambda item: (-abs(item[1]), str(item[0]))
    )
    config = model.config()
    return {
        "id": checkpoint.id,
        "created_at": checkpoint.created_at.isoformat(),
        "directory": where,
        "library_version": checkpoint.library_version,
        "n_samples_seen": model.n_samples_seen,
        "n_features": model.n_features,
        "n_nonzero_weights": int(sum(1 for w in weights.values() if w != 0.0)),
        "hashing": model.features.hashing,
        "optimizer": config["optimizer"],
        "config": config,
        "bias": model.intercept,
        "top_weights": [{"feature": name, "weight": w} for name, w in ranked[:top]],
        "offsets": checkpoint.metadata.get("offsets"),
        "metadata": checkpoint.metadata,
    }


def _cmd_inspect(args: argparse.Namespace) -> int:
    import orjson

    if args.top < 0:
        raise UsageError(f"invalid value {args.top} for --top: expected an integer >= 0")
    checkpoint, where = _open_checkpoint(args.checkpoint, args.checkpoint_dir)
    info = _describe_checkpoint(checkpoint, where, args.top)
    out = sys.stdout
    if args.json:
        out.write(orjson.dumps(info, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode() + "\n")
        return EXIT_OK
    opt = dict(info["optimizer"])
    opt_text = f"{opt.pop('name')}(" + ", ".join(f"{k}={v}" for k, v in opt.items()) + ")"
    rest = {k: v for k, v in info["config"].items() if k != "optimizer"}
    features = (f"{info['n_features']:,} columns (hashing, 2^{rest['n_bits']})" if info["hashing"]
                else f"{info['n_features']:,} (vocabulary)")
    print(f"checkpoint     {info['id']}", file=out)
    print(f"written        {info['created_at']} (stream-logreg {info['library_version']})", file=out)
    print(f"directory      {where}", file=out)
    print(f"samples seen   {info['n_samples_seen']:,}", file=out)
    print(f"features       {features}, {info['n_nonzero_weights']:,} non-zero weights", file=out)
    print(f"optimizer      {opt_text}", file=out)
    print("model          " + ", ".join(f"{k}={v}" for k, v in rest.items()), file=out)
    print(f"bias           {info['bias']:+.6g}", file=out)
    offsets = info["offsets"]
    if offsets:
        print("offsets        " + ", ".join(f"{tp}={off}" for tp, off in offsets.items()), file=out)
    others = {k: v for k, v in info["metadata"].items() if k != "offsets"}
    if others:
        print("metadata       " + ", ".join(f"{k}={v}" for k, v in others.items()), file=out)
    if info["top_weights"]:
        print(f"top {len(info['top_weights'])} weights by |w|:", file=out)
        width = max(len(str(t["feature"])) for t in info["top_weights"])
        for rank, t in enumerate(info["top_weights"], 1):
            print(f"  {rank:>3}  {str(t['feature']):<{width}}  {t['weight']:+.6g}", file=out)
    return EXIT_OK


# ----------------------------------------------------------------------------------------------------------
# score


def _best_effort_id(line: bytes, id_field: str) -> Any:
    """The id of a message the codec rejected, if it is a JSON object with a string or integer id."""
    import orjson

    try:
        doc = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    value = doc.get(id_field) if isinstance(doc, dict) else None
    if isinstance(value, bool):
        return None
    return value if isinstance(value, str) else str(value) if isinstance(value, int) else None


def _cmd_score(args: argparse.Namespace) -> int:
    import orjson

    from stream_logreg.codec import JsonCodec, Rejection

    checkpoint, _ = _open_checkpoint(args.checkpoint or args.checkpoint_dir, args.checkpoint_dir)
    model = checkpoint.model
    try:
        codec = JsonCodec(x_field=args.x_field, y_field=args.y_field, id_field=args.id_field)
    except ValueError as exc:
        raise UsageError(f"--x-field/--y-field/--id-field: {exc}") from None
    stdin = getattr(sys.stdin, "buffer", None)
    lines: Iterable[bytes] = stdin if stdin is not None else (s.encode() for s in sys.stdin)
    out = sys.stdout
    n = errors = 0
    for lineno, raw in enumerate(lines, 1):
        line = raw.rstrip(b"\r\n")
        if not line.strip():
            continue
        n += 1
        result = codec.decode(line)
        if isinstance(result, Rejection):
            errors += 1
            doc: dict[str, Any] = {
                "id": _best_effort_id(line, args.id_field), "error": str(result.reason),
                "detail": result.detail, "line": lineno,
            }
        else:
            doc = {"id": result.id, "p": model.predict_proba_one(result.x)[True]}
        out.write(orjson.dumps(doc).decode() + "\n")
        out.flush()
    log.info("scored %d lines with checkpoint %s (%d errors)", n - errors, checkpoint.id, errors)
    return EXIT_OK


# ----------------------------------------------------------------------------------------------------------
# report


def read_curve(path: str | os.PathLike) -> dict[str, list[float]]:
    """The columns of a learning-curve CSV written by ``demo --curve`` (each as a list of floats)."""
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            missing = [c for c in ("event", "log_loss", "accuracy") if c not in header]
            if missing:
                raise CommandError(
                    f"{path} is not a learning curve from `{PROG} demo --curve`: missing columns {missing} "
                    f"(it has {header})"
                )
            columns: dict[str, list[float]] = {name: [] for name in header}
            for lineno, row in enumerate(reader, 2):
                try:
                    for name in header:
                        columns[name].append(float(row[name]))
                except (TypeError, ValueError):
                    raise CommandError(f"{path}, line {lineno}: not a number in {row}") from None
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc}") from None
    if not columns["event"]:
        raise CommandError(f"{path} has no rows")
    return columns


def plot_curve(curve: Mapping[str, Sequence[float]], title: str) -> Any:
    """A matplotlib ``Figure`` (Agg canvas, no pyplot state): log loss above, accuracy below, vs events."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 6.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax_loss, ax_acc = fig.subplots(2, 1, sharex=True)
    events = curve["event"]
    ax_loss.plot(events, curve["log_loss"], label="progressive", color="C0")
    if curve.get("rolling_log_loss"):
        ax_loss.plot(events, curve["rolling_log_loss"], label="rolling", color="C1", alpha=0.7)
    ax_loss.set_ylabel("log loss")
    ax_loss.set_title("progressive validation log loss (predict, then learn)")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend(loc="upper right")
    ax_acc.plot(events, curve["accuracy"], label="progressive", color="C0")
    if curve.get("rolling_accuracy"):
        ax_acc.plot(events, curve["rolling_accuracy"], label="rolling", color="C1", alpha=0.7)
    ax_acc.set_ylabel("accuracy")
    ax_acc.set_xlabel("events")
    ax_acc.set_title("progressive validation accuracy")
    ax_acc.set_ylim(-0.02, 1.02)
    ax_acc.grid(alpha=0.3)
    ax_acc.legend(loc="lower right")
    fig.suptitle(title)
    return fig


def _cmd_report(args: argparse.Namespace) -> int:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CommandError("report needs matplotlib: pip install 'stream-logreg[report]'") from None
    if args.dpi < 10:
        raise UsageError(f"invalid value {args.dpi} for --dpi: expected an integer >= 10")
    curve = read_curve(args.run)
    title = args.title or f"Learning curve of {Path(args.run).name} ({len(curve['event']):,} events)"
    fig = plot_curve(curve, title)
    try:
        fig.savefig(args.output, format="png", dpi=args.dpi)
    except OSError as exc:
        raise CommandError(f"cannot write -o {args.output}: {exc}") from None
    print(f"wrote {args.output}", file=sys.stdout)
    return EXIT_OK


# ----------------------------------------------------------------------------------------------------------
# Kafka clients (replay, consume)


def _check_security(values: Mapping[str, Any]) -> None:
    protocol = values["security_protocol"]
    sasl = protocol.startswith("SASL_")
    if sasl and values["sasl_mechanism"] is None:
        choices = ", ".join(CONNECTION_SETTINGS[3].choices)
        raise UsageError(f"--security-protocol {protocol} needs --sasl-mechanism "
                         f"(STREAM_LOGREG_SASL_MECHANISM): one of: {choices}")
    if not sasl and values["sasl_mechanism"] is not None:
        raise UsageError(f"--sasl-mechanism is set but --security-protocol is {protocol}: use SASL_PLAINTEXT "
                         "or SASL_SSL")
    if sasl and values["sasl_mechanism"] in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
        for name in ("sasl_plain_username", "sasl_plain_password"):
            if not values[name]:
                s = next(s for s in CONNECTION_SETTINGS if s.name == name)
                raise UsageError(f"--sasl-mechanism {values['sasl_mechanism']} needs {s.flag} ({s.env})")
    if not protocol.endswith("SSL"):
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_password"):
            if values[name] is not None:
                s = next(s for s in CONNECTION_SETTINGS if s.name == name)
                raise UsageError(
                    f"{s.flag} is set but --security-protocol is {protocol}: use SSL or SASL_SSL"
                )


def _client_settings(values: Mapping[str, Any]) -> dict[str, Any]:
    """kafka-python keyword arguments shared by consumers, producers and admin clients (no bootstrap)."""
    kwargs = {"client_id": values["client_id"], "security_protocol": values["security_protocol"]}
    for name in ("sasl_mechanism", "sasl_plain_username", "sasl_plain_password", "ssl_cafile", "ssl_certfile",
                 "ssl_keyfile", "ssl_password"):
        if values[name] is not None:
            kwargs[name] = values[name]
    if values["security_protocol"].endswith("SSL"):
        kwargs["ssl_check_hostname"] = values["ssl_check_hostname"]
    return kwargs


def _bootstrap(values: Mapping[str, Any]) -> list[str]:
    servers = [s.strip() for s in values["bootstrap_servers"].split(",") if s.strip()]
    if not servers:
        raise UsageError(
            "--bootstrap-servers (STREAM_LOGREG_BOOTSTRAP_SERVERS) must name at least one host:port"
        )
    return servers


# ----------------------------------------------------------------------------------------------------------
# replay


def _csv_value(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


_CSV_LABELS = {"1": 1, "0": 0, "1.0": 1, "0.0": 0, "true": 1, "false": 0}


class _Skips:
    """Counts input records that cannot be sent, warning about the first few."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.count = 0

    def skip(self, where: str, why: str) -> None:
        self.count += 1
        if self.count <= 10:
            print(f"skipped {self.source} {where}: {why}", file=sys.stderr)
        elif self.count == 11:
            print("(further skipped records are only counted)", file=sys.stderr)


_Records = Iterator[tuple[bytes, bytes | None]]


def _replay_source(args: argparse.Namespace, skips: _Skips) -> tuple[_Records, int | None]:
    """(iterator of (value, key), number of records if known) for ``--dataset`` or ``--file``."""
    from stream_logreg.codec import JsonCodec, Rejection, encode_event

    if args.file is None:
        stream, n = _dataset_stream(args.dataset, args.n, args.seed)

        def from_dataset() -> Iterator[tuple[bytes, bytes | None]]:
            for i, (x, y) in enumerate(itertools.islice(stream, n)):
                event_id = f"{args.dataset}-{i}"
                yield encode_event(x, y, event_id), event_id.encode()

        return from_dataset(), n

    path = args.file
    fmt = args.format or ("csv" if path.lower().endswith(".csv") else "jsonl")
    if path != "-" and not Path(path).is_file():
        raise UsageError(f"--file {path}: no such file")
    total = None
    if path != "-":
        with open(path, "rb") as f:
            total = sum(1 for line in f if line.strip()) - (1 if fmt == "csv" else 0)

    def lines_of() -> Iterator[bytes]:
        if path == "-":
            stdin = getattr(sys.stdin, "buffer", None)
            yield from (stdin if stdin is not None else (s.encode() for s in sys.stdin))
        else:
            with open(path, "rb") as f:
                yield from f

    if fmt == "jsonl":
        codec = JsonCodec()

        def from_jsonl() -> Iterator[tuple[bytes, bytes | None]]:
            for lineno, raw in enumerate(lines_of(), 1):
                line = raw.strip()
                if not line:
                    continue
                if args.raw:
                    yield line, None
                    continue
                event = codec.decode(line)
                if isinstance(event, Rejection):
                    skips.skip(f"line {lineno}", f"{event.reason}: {event.detail}")
                    continue
                key = event.id.encode() if event.id is not None else None
                yield encode_event(event.x, event.y, event.id), key

        return from_jsonl(), total

    def from_csv() -> Iterator[tuple[bytes, bytes | None]]:
        text = (raw.decode("utf-8-sig") for raw in lines_of())
        reader = csv.reader(text)
        header = next(reader, None)
        if header is None:
            return
        label = args.label_column or ("y" if "y" in header else header[-1])
        if label not in header:
            raise UsageError(f"--label-column {label!r} is not a column of {path} (columns: {header})")
        if args.id_column is not None and args.id_column not in header:
            raise UsageError(f"--id-column {args.id_column!r} is not a column of {path} (columns: {header})")
        for lineno, row in enumerate(reader, 2):
            if not row:
                continue
            if len(row) != len(header):
                skips.skip(f"line {lineno}", f"{len(row)} fields, the header has {len(header)}")
                continue
            record = dict(zip(header, row, strict=True))
            raw_label = record.pop(label).strip()
            event_id = record.pop(args.id_column).strip() or None if args.id_column else None
            y = _CSV_LABELS.get(raw_label.lower()) if raw_label else None
            if raw_label and y is None:
                skips.skip(f"line {lineno}", f"label {raw_label!r} is not 0, 1, true or false")
                continue
            x = {k: _csv_value(v.strip()) for k, v in record.items() if v.strip() != ""}
            try:
                value = encode_event(x, y, event_id)
            except ValueError as exc:
                skips.skip(f"line {lineno}", str(exc))
                continue
            yield value, event_id.encode() if event_id is not None else None

    return from_csv(), total


def _ensure_topic(
    values: Mapping[str, Any], topic: str, partitions: int, replication: int, timeout_ms: int
) -> bool:
    """Create ``topic`` if it does not exist; True if it was created."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    admin = KafkaAdminClient(bootstrap_servers=_bootstrap(values), bootstrap_timeout_ms=timeout_ms,
                             **_client_settings(values))
    try:
        if topic in admin.list_topics():
            return False
        result = admin.create_topics(
            {topic: {"num_partitions": partitions, "replication_factor": replication}}, raise_errors=False
        )
        for entry in result.get("topics", []):
            code = entry.get("error_code", 0)
            if code not in (0, 36):  # 36: TOPIC_ALREADY_EXISTS (created concurrently)
                message = entry.get("error_message") or f"error code {code}"
                raise CommandError(f"cannot create topic {topic!r}: {message}")
        admin.wait_for_topics([topic], timeout_ms=30_000)
        return True
    except KafkaError as exc:
        raise CommandError(f"cannot create topic {topic!r}: {exc!r}") from None
    finally:
        admin.close()


def _cmd_replay(args: argparse.Namespace) -> int:
    from kafka import KafkaProducer
    from kafka.errors import KafkaError, KafkaTimeoutError

    values, _ = resolve_settings(args, CONNECTION_SETTINGS, os.environ)
    _check_security(values)
    if args.file is not None and args.dataset_given:
        raise UsageError("--file and --dataset are mutually exclusive: replay one source")
    for name, value, low in (("--limit", args.limit, 1), ("--n", args.n, 1),
                             ("--partitions", args.partitions, 1),
                             ("--replication-factor", args.replication_factor, 1)):
        if value is not None and value < low:
            raise UsageError(f"invalid value {value} for {name}: expected an integer >= {low}")
    if not (args.connect_timeout > 0 and math.isfinite(args.connect_timeout)):
        raise UsageError(f"invalid value {args.connect_timeout} for --connect-timeout: expected seconds > 0")
    if args.rate is not None and not (args.rate >= 0 and math.isfinite(args.rate)):
        raise UsageError(
            f"invalid value {args.rate} for --rate: expected events per second >= 0 (0: no limit)"
        )
    if not _TOPIC.fullmatch(args.topic):
        raise UsageError(f"invalid value {args.topic!r} for --topic: expected a Kafka topic name")
    skips = _Skips(args.file or args.dataset)
    records, total = _replay_source(args, skips)
    if args.limit is not None:
        records = itertools.islice(records, args.limit)
        total = args.limit if total is None else min(total, args.limit)

    servers = _bootstrap(values)
    try:
        timeout_ms = int(args.connect_timeout * 1000)
        if not args.no_create_topic and _ensure_topic(values, args.topic, args.partitions,
                                                      args.replication_factor, timeout_ms):
            print(f"created topic {args.topic} ({args.partitions} partitions)", file=sys.stderr)
        producer = KafkaProducer(bootstrap_servers=servers, linger_ms=10, bootstrap_timeout_ms=timeout_ms,
                                 **_client_settings(values))
    except KafkaTimeoutError:
        raise CommandError(
            f"cannot reach Kafka at {','.join(servers)} (--bootstrap-servers) within --connect-timeout "
            f"{args.connect_timeout:g}s"
        ) from None
    except KafkaError as exc:
        raise CommandError(f"cannot connect to Kafka at {','.join(servers)}: {exc!r}") from None

    failures: list[BaseException] = []
    progress = _Progress(sys.stderr, enabled=not args.quiet)
    sent = 0

    def status() -> str:
        return f"replay -> {args.topic}  {_bar(sent, total)}  {progress.rate(sent):,.0f} ev/s"
    interrupted = False
    try:
        with _graceful_interrupt() as stop_requested:
            for value, key in records:
                if args.rate:
                    delay = progress.start + sent / args.rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                future = producer.send(args.topic, value=value, key=key)
                future.add_errback(failures.append)
                sent += 1
                if progress.due():
                    progress.show(status())
                if stop_requested():
                    interrupted = True
                    break
        producer.flush(timeout=60)
    except KafkaError as exc:
        raise CommandError(f"sending to {args.topic} failed after {sent:,} events: {exc!r}") from None
    finally:
        producer.close(timeout=10)
    progress.show(status(), final=True)
    delivered = sent - len(failures)
    print(f"replayed {delivered:,} events to topic {args.topic}"
          + (f" ({skips.count:,} input records skipped)" if skips.count else "")
          + (" (interrupted)" if interrupted else ""), file=sys.stdout)
    if failures:
        raise CommandError(f"{len(failures):,} of {sent:,} events were not delivered: {failures[0]!r}")
    return EXIT_INTERRUPTED if interrupted else EXIT_OK


# ----------------------------------------------------------------------------------------------------------
# consume


def learner_config(values: Mapping[str, Any]) -> Any:
    """The :class:`consumers.LearnerConfig` of resolved ``CONSUME_SETTINGS`` values; a setting it refuses
    becomes a :class:`UsageError` naming its flag and environment variable."""
    from consumers.config import ConfigError, LearnerConfig

    _check_security(values)
    consumer_settings = {}
    if values["session_timeout_ms"] is not None:
        consumer_settings["session_timeout_ms"] = values["session_timeout_ms"]
    own = {
        "bootstrap_servers", "topics", "group_id", "checkpoint_dir", "auto_offset_reset", "batch_size",
        "checkpoint_every_messages", "checkpoint_every_seconds", "keep_checkpoints", "predictions_topic",
        "publish_labelled", "dead_letter_topic", "x_field", "y_field", "id_field", "max_features",
        "max_message_bytes", "max_poll_records", "poll_timeout_ms", "metrics_window", "commit_timeout_ms",
    }
    kwargs = {name: values[name] for name in own}
    kwargs["bootstrap_servers"] = ",".join(_bootstrap(values))
    kwargs["model"] = build_model(values).config()
    kwargs["client_settings"] = _client_settings(values)
    kwargs["consumer_settings"] = consumer_settings
    try:
        return LearnerConfig(**kwargs)
    except ConfigError as exc:
        name = str(exc).split(":", 1)[0]
        setting = next((s for s in CONSUME_SETTINGS if s.name == name), None)
        if setting is None:
            raise UsageError(str(exc)) from None
        raise UsageError(f"{setting.flag} ({setting.env}): {str(exc).split(':', 1)[1].strip()}") from None


def _redacted(config: Any) -> dict[str, Any]:
    secret = {s.name for s in CONSUME_SETTINGS if s.secret}
    d = config.to_dict()
    for key in ("client_settings", "consumer_settings", "producer_settings"):
        d[key] = {k: ("***" if k in secret else v) for k, v in d[key].items()}
    return d


def _cmd_consume(args: argparse.Namespace) -> int:
    if args.print_config_table:
        sys.stdout.write(config_table_markdown())
        return EXIT_OK
    values, sources = resolve_settings(args, CONSUME_SETTINGS, os.environ)
    config = learner_config(values)
    if args.print_config:
        import orjson

        doc = {"learner": _redacted(config),
               "service": {k: values[k] for k in ("metrics_port", "metrics_host", "max_idle_seconds",
                                                  "log_format", "log_level")},
               "sources": {k: v for k, v in sources.items() if v != "default"}}
        sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
        return EXIT_OK
    return _run_learner(config, values)


def _run_learner(config: Any, values: Mapping[str, Any]) -> int:
    """Run the Kafka learner until SIGTERM (exit 0), Ctrl-C (exit 130) or ``--max-idle-seconds``.

    This is the one place where the service is assembled: the learner, its signal handlers and the
    metrics/health HTTP server on ``--metrics-port`` (:mod:`consumers.metrics`; 0: none).
    """
    from consumers.learner import Learner
    from stream_logreg.checkpoints import CheckpointError, CheckpointMismatch

    try:
        learner = Learner(config)
    except CheckpointMismatch as exc:
        raise UsageError(
            f"the latest checkpoint in --checkpoint-dir {config.checkpoint_dir} has other model options "
            f"({_mismatch_text(exc)}): use the same options, or another --checkpoint-dir"
        ) from None
    except (CheckpointError, OSError) as exc:
        raise CommandError(f"cannot restore from --checkpoint-dir {config.checkpoint_dir}: {exc}") from None

    received: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and received:
            raise KeyboardInterrupt  # second Ctrl-C: give up on the graceful stop
        received.append(signum)
        log.info("received %s: checkpointing, committing and leaving the group", signal.Signals(signum).name)
        learner.stop()

    previous = {}
    try:
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, on_signal)
    except ValueError:  # not the main thread (embedded use): the caller stops the learner
        pass
    # The Prometheus/health server (consumers.metrics: /metrics, /ready, /live): up for the whole run,
    # stopped once the final checkpoint is written. --metrics-port 0: no server.
    server = None
    try:
        if values["metrics_port"]:
            from consumers.metrics import serve_metrics

            host, port = values["metrics_host"], values["metrics_port"]
            try:
                server = serve_metrics(learner, host, port)
            except OSError as exc:
                raise CommandError(f"cannot serve metrics on --metrics-host {host} --metrics-port {port}: "
                                   f"{exc.strerror or exc}") from None
            log.info("metrics on http://%s:%d/metrics, health on /ready and /live", host, server.port)
        log.info("learning from %s at %s as group %s; checkpoints in %s", ",".join(config.topics),
                 config.bootstrap_servers, config.group_id, config.checkpoint_dir)
        stats = learner.run(max_idle_seconds=values["max_idle_seconds"])
    finally:
        if server is not None:
            server.shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    snap = stats.snapshot()
    log.info(
        "stopped: %d messages consumed, %d learned, %d rejected; checkpoint %s (n_samples_seen=%d)",
        snap["consumed"], snap["learned"], snap["rejected_total"], learner.checkpoint_id,
        learner.model.n_samples_seen,
    )
    return EXIT_INTERRUPTED if signal.SIGINT in received else EXIT_OK


# ----------------------------------------------------------------------------------------------------------
# The parser


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=34, width=min(110, max(80, _terminal_width())))


def _terminal_width() -> int:
    try:
        return os.get_terminal_size().columns
    except OSError:
        return 100


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def _add_common(parser: argparse.ArgumentParser) -> None:
    _add_settings(parser, COMMON_SETTINGS, env=True)


def build_parser() -> argparse.ArgumentParser:
    from stream_logreg import __version__

    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=_Formatter,
        description="Online logistic regression learned from an event stream, and its Kafka learner service.",
        epilog=_examples(
            f"{PROG} demo                     # learn River's Phishing stream, checkpoint to ./checkpoints",
            f"{PROG} inspect ./checkpoints    # what the latest checkpoint learned",
            f"echo '{{\"x\": {{\"https\": 1}}, \"id\": \"a\"}}' | {PROG} score --checkpoint-dir checkpoints",
            f"{PROG} demo --curve run.csv && {PROG} report run.csv -o curve.png",
            f"{PROG} replay --bootstrap-servers localhost:9092 --topic events --dataset phishing",
            f"{PROG} consume --bootstrap-servers localhost:9092 --topics events",
            "",
            f"Run `{PROG} COMMAND --help` for the options of each command.",
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")

    # demo
    p = sub.add_parser(
        "demo", formatter_class=_Formatter, help="learn a built-in dataset (no network), checkpointing",
        description=(
            "Stream a built-in dataset through the model with progressive validation (each event is\n"
            "predicted, then learned), checkpointing every --checkpoint-every events and at the end. A\n"
            "second run with the same options resumes from the latest checkpoint and skips the events it\n"
            "covers. Ctrl-C stops at the next batch boundary with a checkpoint (exit 130).\n\n"
            "datasets:\n" + _dataset_help()
        ),
        epilog=_examples(
            f"{PROG} demo",
            f"{PROG} demo --dataset bananas --optimizer adagrad --lr 0.05 --curve bananas.csv",
            f"{PROG} demo --dataset sea --n 20000 --batch-size 16 --checkpoint-dir /tmp/sea",
            f"{PROG} demo --fresh --quiet            # start over, no progress line",
        ),
    )
    p.add_argument("--dataset", choices=tuple(DATASETS), default="phishing",
                   help="the stream to learn (default: phishing)")
    p.add_argument("--n", type=int, default=None,
                   help="events to stream (default: the whole bundled dataset, "
                        f"{SYNTHETIC_DEFAULT_N:,} for a synthetic one)")
    p.add_argument("--seed", type=int, default=42, help="seed of the synthetic datasets (default: 42)")
    p.add_argument("--checkpoint-dir", default="checkpoints", metavar="DIR",
                   help="where checkpoints go and are resumed from (default: ./checkpoints)")
    p.add_argument("--checkpoint-every", type=int, default=500, metavar="N",
                   help="checkpoint every N events (default: 500), and at the end")
    p.add_argument("--keep", type=int, default=5, help="checkpoints to keep (default: 5)")
    p.add_argument("--fresh", action="store_true", help="ignore existing checkpoints and start over")
    p.add_argument("--curve", metavar="FILE.csv",
                   help="write the learning curve (per event: progressive and rolling log loss and "
                        f"accuracy) for `{PROG} report`")
    p.add_argument("--window", type=int, default=100, metavar="N",
                   help="events in the rolling log loss and accuracy of --curve (default: 100)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress line on stderr")
    _add_settings(p, MODEL_SETTINGS, env=False)
    _add_common(p)
    p.set_defaults(handler=_cmd_demo, validate=_validate_demo)

    # inspect
    p = sub.add_parser(
        "inspect", formatter_class=_Formatter, help="print a checkpoint: counters, config, top weights",
        description=(
            "Print a checkpoint: its id, when it was written, samples seen, features, optimizer and\n"
            "hyper-parameters, bias, the largest weights by |w|, and the offsets in its metadata.\n"
            "CHECKPOINT is a checkpoint directory (its latest valid checkpoint), a checkpoint file\n"
            "(<id>.json or <id>.npz), or a checkpoint id looked up in --checkpoint-dir."
        ),
        epilog=_examples(
            f"{PROG} inspect ./checkpoints",
            f"{PROG} inspect ./checkpoints/01733011123456789012.json --top 20",
            f"{PROG} inspect 01733011123456789012 --checkpoint-dir ./checkpoints",
            f"{PROG} inspect ./checkpoints --json | jq .top_weights",
        ),
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT_DIR_OR_ID")
    p.add_argument("--checkpoint-dir", metavar="DIR",
                   help="where to look up a bare id (default: ./checkpoints)")
    p.add_argument("--top", type=int, default=10, metavar="K", help="largest weights to show (default: 10)")
    p.add_argument("--json", action="store_true", help="one JSON object (machine-readable)")
    _add_common(p)
    p.set_defaults(handler=_cmd_inspect)

    # score
    p = sub.add_parser(
        "score", formatter_class=_Formatter, help="score JSON lines from stdin with a checkpoint",
        description=(
            "Read messages as JSON lines on stdin ({\"x\": {...} | [...], \"id\": ...}, the Kafka message\n"
            "format; a label is ignored) and write one JSON line per input line on stdout:\n"
            "{\"id\": ..., \"p\": P(y=1)}, or {\"id\": ..., \"error\": REASON, \"detail\": ...,\n"
            "\"line\": N} for a line that does not decode (the rest are still scored; exit 0). Blank lines\n"
            "are skipped."
        ),
        epilog=_examples(
            f"echo '{{\"x\": {{\"https\": 1, \"long_url\": 0}}, \"id\": \"a\"}}' | {PROG} score",
            f"{PROG} score --checkpoint-dir ./checkpoints < events.jsonl > scores.jsonl",
        ),
    )
    p.add_argument("--checkpoint-dir", default="checkpoints", metavar="DIR",
                   help="use the latest valid checkpoint of DIR (default: ./checkpoints)")
    p.add_argument("--checkpoint", metavar="ID_OR_FILE", help="use this checkpoint instead of the latest")
    p.add_argument("--x-field", default="x", help="name of the features field (default: x)")
    p.add_argument("--y-field", default="y", help="name of the label field (default: y)")
    p.add_argument("--id-field", default="id", help="name of the id field (default: id)")
    _add_common(p)
    p.set_defaults(handler=_cmd_score)

    # report
    p = sub.add_parser(
        "report", formatter_class=_Formatter, help="draw a learning curve (demo --curve CSV) as a PNG",
        description=(
            f"Draw the learning curve of a run (the CSV of `{PROG} demo --curve`): progressive and rolling\n"
            "log loss and accuracy against the number of events, as a PNG (matplotlib, Agg backend)."
        ),
        epilog=_examples(
            f"{PROG} demo --curve run.csv && {PROG} report run.csv -o curve.png",
            f"{PROG} report run.csv -o curve.png --title 'FTRL on Phishing' --dpi 150",
        ),
    )
    p.add_argument("run", metavar="RUN.csv")
    p.add_argument("-o", "--output", required=True, metavar="FILE.png", help="the PNG to write")
    p.add_argument("--title", help="figure title (default: from the file name)")
    p.add_argument("--dpi", type=int, default=100, help="resolution (default: 100)")
    _add_common(p)
    p.set_defaults(handler=_cmd_report)

    # replay
    p = sub.add_parser(
        "replay", formatter_class=_Formatter, help="produce a dataset or a file of events into a topic",
        description=(
            "Produce events into a Kafka topic in the message format (codec.encode_event), keyed by id,\n"
            "with a progress bar on stderr; the topic is created if missing. Sources: a built-in dataset\n"
            "(--dataset, the default), JSON lines (--file data.jsonl: {\"x\":..,\"y\":..,\"id\":..}), or\n"
            "CSV (--file data.csv: a header row; --label-column, default \"y\" or the last column, is the\n"
            "label (0/1/true/false, empty: unlabelled); the other columns are features). The connection\n"
            "settings also come from the STREAM_LOGREG_* environment variables, as for `consume`.\n\n"
            "datasets:\n" + _dataset_help()
        ),
        epilog=_examples(
            f"{PROG} replay --bootstrap-servers localhost:9092 --topic events --dataset phishing --rate 100",
            f"{PROG} replay --topic events --file data.csv --label-column clicked --limit 10000",
            f"{PROG} replay --topic events --file data.jsonl --partitions 3",
        ),
    )
    p.add_argument("--topic", required=True, help="the topic to produce to")
    source = p.add_argument_group("source")
    source.add_argument("--dataset", choices=tuple(DATASETS), default=None,
                        help="a built-in dataset (default: phishing)")
    source.add_argument("--file", metavar="FILE", help="a .jsonl or .csv file ('-': JSON lines on stdin)")
    source.add_argument("--format", choices=("jsonl", "csv"), help="format of --file (default: by extension)")
    source.add_argument("--label-column", help="CSV: the label column (default: y, else the last column)")
    source.add_argument("--id-column", help="CSV: a column holding the event id (default: none)")
    source.add_argument("--raw", action="store_true",
                        help="JSON lines: send each line as it is, without validation")
    source.add_argument("--n", type=int, default=None, help="dataset: events to take (default: all; "
                        f"{SYNTHETIC_DEFAULT_N:,} for a synthetic one)")
    source.add_argument("--seed", type=int, default=42, help="dataset: seed of a synthetic one (default: 42)")
    p.add_argument("--limit", type=int, metavar="N", help="stop after N events")
    p.add_argument("--rate", type=float, metavar="EV_PER_S",
                   help="events per second (default: as fast as possible)")
    p.add_argument("--partitions", type=int, default=1, help="partitions of a topic created (default: 1)")
    p.add_argument("--replication-factor", type=int, default=1, help="of a topic created (default: 1)")
    p.add_argument("--no-create-topic", action="store_true", help="do not create the topic if it is missing")
    p.add_argument("--connect-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="give up if no broker answers within this time (default: 30)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar on stderr")
    _add_settings(p, CONNECTION_SETTINGS, env=True)
    _add_common(p)
    p.set_defaults(handler=_cmd_replay)

    # consume
    p = sub.add_parser(
        "consume", formatter_class=_Formatter, help="the Kafka learner service",
        description=(
            "The learner service: poll the --topics, decode each message, predict (publishing to\n"
            "--predictions-topic), learn the labelled events, and every N messages or T seconds write a\n"
            "checkpoint (model + offsets) and then commit the offsets it covers. Restarted, it resumes from\n"
            "the latest checkpoint: nothing is lost or learned twice. Rejected messages go to\n"
            "--dead-letter-topic. SIGTERM (exit 0) and Ctrl-C (exit 130) checkpoint, commit and leave.\n\n"
            "Every setting is a flag or a STREAM_LOGREG_* environment variable; the flag wins. Empty\n"
            "variables count as unset."
        ),
        epilog=_examples(
            f"{PROG} consume --bootstrap-servers localhost:9092 --topics events",
            f"STREAM_LOGREG_TOPICS=events STREAM_LOGREG_BATCH_SIZE=32 {PROG} consume --log-format json",
            f"{PROG} consume --topics events --predictions-topic predictions --dead-letter-topic dlq",
            f"{PROG} consume --topics events --print-config       # the resolved settings, then exit",
            f"{PROG} consume --print-config-table                 # the settings as a Markdown table",
        ),
    )
    _add_settings(p, [s for s in CONSUME_SETTINGS if s not in COMMON_SETTINGS], env=True)
    _add_common(p)
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved settings as JSON (secrets masked) and exit")
    p.add_argument("--print-config-table", action="store_true",
                   help="print every setting as a Markdown table (for the README) and exit")
    p.set_defaults(handler=_cmd_consume)
    return parser


def _validate_demo(args: argparse.Namespace) -> None:
    for name, value, low in (("--n", args.n, 1), ("--checkpoint-every", args.checkpoint_every, 1),
                             ("--keep", args.keep, 1), ("--window", args.window, 1)):
        if value is not None and value < low:
            raise UsageError(f"invalid value {value} for {name}: expected an integer >= {low}")


# ----------------------------------------------------------------------------------------------------------
# main


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 failure, 2 usage error, 130 interrupted)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or an argparse usage error
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    if args.command == "replay":
        args.dataset_given = args.dataset is not None
        args.dataset = args.dataset or "phishing"
    restore_logging = None
    try:
        if getattr(args, "validate", None) is not None:
            args.validate(args)
        common, _ = resolve_settings(args, COMMON_SETTINGS, os.environ)
        restore_logging = configure_logging(common["log_format"], common["log_level"])
        return args.handler(args)
    except UsageError as exc:
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        print(f"(see `{PROG} {args.command} --help`)", file=sys.stderr)
        return EXIT_USAGE
    except CommandError as exc:
        print(f"{PROG} {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `stream-logreg score ... | head`: the reader is gone; not an error
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    finally:
        if restore_logging is not None:
            restore_logging()


if __name__ == "__main__":
    sys.exit(main())
