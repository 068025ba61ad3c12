"""``stream-logreg replay``: produce a built-in dataset, or a file of events (JSON lines or CSV), into a Kafka
topic in the message format (:func:`stream_logreg.codec.encode_event`), keyed by id.

Input lines that cannot be sent (a bad label, a line that does not decode, a value not of its column's
kind) are skipped, reported on stderr and counted; any skipped line makes the exit status 1 unless
``--skip-bad-lines`` is given. The connection settings are those of ``consume`` (flags or
``STREAM_LOGREG_*`` environment variables).

CSV cells (stripped; an empty cell is a missing feature): the first non-empty cell of a column decides its
kind — ``true``/``false`` (any case) a boolean column, a decimal number (``3``, ``-2.5``, ``1e-3``; no
``nan``, ``inf`` or ``1_000``) a numeric one, anything else a text column (a string value: the indicator
feature ``column=value``). Then every cell must be of its column's kind: ``abc`` in a numeric column or
``yes`` in a boolean one skips the line with a reason; in a text column a cell that reads as a number
(``"3"``) skips its line too, since the model refuses numbers written as text (it cannot tell a category
from an unconverted number).
Integers stay integers; a number that overflows a double skips its line. The label column takes ``0``,
``1``, ``true``, ``false`` (and ``1.0``/``0.0``); empty: the event is unlabelled.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import math
import os
import re
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from consumers.demo import dataset_stream
from consumers.errors import EXIT_INTERRUPTED, EXIT_OK, CommandError, UsageError
from consumers.settings import (
    CONNECTION_SETTINGS,
    TOPIC_NAME,
    at_least,
    bootstrap_servers,
    check_security,
    client_settings,
    resolve_settings,
)
from consumers.terminal import Progress, bar, graceful_interrupt, plural, stdin_lines

__all__ = ["cmd_replay"]


_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_INTEGER = re.compile(r"[+-]?\d+")
_BOOLEANS = {"true": True, "false": False}


def _csv_kind(text: str) -> str:
    """The kind of a column whose first non-empty cell is ``text``: boolean, number or text."""
    if text.lower() in _BOOLEANS:
        return "boolean"
    return "number" if _NUMBER.fullmatch(text) else "text"


def _csv_value(column: str, kind: str, text: str) -> Any:
    """The feature value of a (stripped, non-empty) cell of a column of ``kind``; ``ValueError`` (a reason)
    for a cell that is not of the column's kind."""
    if kind == "text":
        return text
    if kind == "boolean":
        if text.lower() not in _BOOLEANS:
            raise ValueError(f"column {column!r} holds booleans (true/false), not {text!r}")
        return _BOOLEANS[text.lower()]
    if not _NUMBER.fullmatch(text):
        raise ValueError(f"column {column!r} holds numbers, not {text!r}")
    value: int | float = int(text) if _INTEGER.fullmatch(text) else float(text)
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"column {column!r}: {text!r} does not fit in a double")
    return value


_CSV_LABELS = {"1": 1, "0": 0, "1.0": 1, "0.0": 0, "true": 1, "false": 0}


class _Skips:
    """Counts input lines that cannot be sent, reporting the first few."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.count = 0

    def skip(self, where: str, why: str) -> None:
        self.count += 1
        if self.count <= 10:
            print(f"skipped {self.source} {where}: {why}", file=sys.stderr)
        elif self.count == 11:
            print("(further skipped lines are only counted)", file=sys.stderr)


_Records = Iterator[tuple[bytes, bytes | None]]  # (message value, key)


def _replay_source(args: argparse.Namespace, skips: _Skips) -> tuple[_Records, int | None]:
    """(iterator of (value, key), number of records if known) for ``--dataset`` or ``--file``."""
    from stream_logreg.codec import JsonCodec, Rejection, encode_event

    if args.file is None:
        stream, n = dataset_stream(args.dataset, args.n, args.seed)

        def from_dataset() -> _Records:
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
            yield from stdin_lines()
        else:
            with open(path, "rb") as f:
                yield from f

    if fmt == "jsonl":
        codec = JsonCodec()

        def from_jsonl() -> _Records:
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

    def from_csv() -> _Records:
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
        kinds: dict[str, str] = {}  # column -> its kind, set by its first non-empty cell
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
            try:
                x = {}
                for column, cell in record.items():
                    cell = cell.strip()
                    if cell:
                        kind = kinds.setdefault(column, _csv_kind(cell))
                        x[column] = _csv_value(column, kind, cell)
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

    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers(values), bootstrap_timeout_ms=timeout_ms,
                             **client_settings(values))
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


def cmd_replay(args: argparse.Namespace) -> int:
    """Produce the records of ``--dataset`` or ``--file`` to ``--topic`` (created if missing)."""
    from kafka import KafkaProducer
    from kafka.errors import KafkaError, KafkaTimeoutError

    values, _ = resolve_settings(args, CONNECTION_SETTINGS, os.environ)
    check_security(values)
    if args.file is not None and args.dataset is not None:
        raise UsageError("--file and --dataset are mutually exclusive: replay one source")
    args.dataset = args.dataset or "phishing"
    for flag, value in (("--limit", args.limit), ("--n", args.n), ("--partitions", args.partitions),
                        ("--replication-factor", args.replication_factor)):
        at_least(flag, value, 1)
    if not (args.connect_timeout > 0 and math.isfinite(args.connect_timeout)):
        raise UsageError(f"invalid value {args.connect_timeout} for --connect-timeout: expected seconds > 0")
    if args.rate is not None and not (args.rate >= 0 and math.isfinite(args.rate)):
        raise UsageError(
            f"invalid value {args.rate} for --rate: expected events per second >= 0 (0: no limit)"
        )
    if not TOPIC_NAME.fullmatch(args.topic):
        raise UsageError(f"invalid value {args.topic!r} for --topic: expected a Kafka topic name")
    skips = _Skips(args.file or args.dataset)
    records, total = _replay_source(args, skips)
    if args.limit is not None:
        records = itertools.islice(records, args.limit)
        total = args.limit if total is None else min(total, args.limit)

    servers = bootstrap_servers(values)
    try:
        timeout_ms = int(args.connect_timeout * 1000)
        if not args.no_create_topic and _ensure_topic(values, args.topic, args.partitions,
                                                      args.replication_factor, timeout_ms):
            print(f"created topic {args.topic} ({plural(args.partitions, 'partition')})", file=sys.stderr)
        producer = KafkaProducer(bootstrap_servers=servers, linger_ms=10, bootstrap_timeout_ms=timeout_ms,
                                 **client_settings(values))
    except KafkaTimeoutError:
        raise CommandError(
            f"cannot reach Kafka at {','.join(servers)} (--bootstrap-servers) within --connect-timeout "
            f"{args.connect_timeout:g}s"
        ) from None
    except KafkaError as exc:
        raise CommandError(f"cannot connect to Kafka at {','.join(servers)}: {exc!r}") from None

    failures: list[BaseException] = []
    progress = Progress(sys.stderr, enabled=not args.quiet)
    sent = 0

    def status() -> str:
        return f"replay -> {args.topic}  {bar(sent, total)}  {progress.rate(sent):,.0f} ev/s"
    interrupted = False
    try:
        with graceful_interrupt() as stop_requested:
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
    print(f"replayed {plural(delivered, 'event')} to topic {args.topic}"
          + (f" ({plural(skips.count, 'input line')} skipped)" if skips.count else "")
          + (" (interrupted)" if interrupted else ""), file=sys.stdout)
    if failures:
        raise CommandError(
            f"{len(failures):,} of {plural(sent, 'event')} were not delivered: {failures[0]!r}"
        )
    if skips.count and not args.skip_bad_lines:
        raise CommandError(
            f"{plural(skips.count, 'input line')} could not be sent (see above; the other lines were): fix "
            "them, or pass --skip-bad-lines to skip them without failing"
        )
    return EXIT_INTERRUPTED if interrupted else EXIT_OK
