"""The ``stream-logreg`` command line: ``demo``, ``inspect``, ``score``, ``report``, ``replay``, ``consume``.

Every subcommand has ``--help`` with examples. Exit status: 0 success, 1 a runtime failure (a broker that
cannot be reached, a missing checkpoint, ...), 2 a usage error (a bad setting: the message names it and says
what is allowed), 130 interrupted (Ctrl-C).

The learner service (``consume``) reads every setting from its flag or from a ``STREAM_LOGREG_*`` environment
variable (the flag wins). The settings are one table, :data:`consumers.settings.CONSUME_SETTINGS`;
:func:`consumers.settings.config_table_markdown` renders it for the README
(``stream-logreg consume --print-config-table``).

This module holds the parser, :func:`main` (the dispatch) and the two small commands that read a checkpoint,
``inspect`` and ``score``; each other command is the module named after it (:mod:`consumers.demo`,
:mod:`consumers.report`, :mod:`consumers.replay`, :mod:`consumers.consume`).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from consumers.consume import cmd_consume
from consumers.demo import DATASETS, SYNTHETIC_DEFAULT_N, cmd_demo, dataset_help, validate_demo
from consumers.errors import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    PROG,
    CommandError,
    UsageError,
)
from consumers.logs import configure_logging
from consumers.replay import cmd_replay
from consumers.report import cmd_report
from consumers.settings import (
    COMMON_SETTINGS,
    CONNECTION_SETTINGS,
    CONSUME_SETTINGS,
    MODEL_SETTINGS,
    add_settings,
    at_least,
    resolve_settings,
)
from consumers.terminal import plural, stdin_lines

__all__ = ["build_parser", "main"]

log = logging.getLogger("consumers.cli")  # also when run as `python -m consumers.cli`


# ----------------------------------------------------------------------------------------------------------
# inspect


def _open_checkpoint(target: str, checkpoint_dir: str | None) -> tuple[Any, str]:
    """The checkpoint that ``target`` names (a store directory: its latest; a checkpoint file or
    ``<dir>/<id>``; a bare id in ``checkpoint_dir``) and where it was found. Read only: no lock is taken
    and nothing is written, so a running learner may own the directory."""
    from stream_logreg.checkpoints import CheckpointError, DirectoryStore, load_checkpoint

    path = Path(target)
    try:
        if path.is_dir():
            store = DirectoryStore(path, read_only=True)
            checkpoint = store.latest()
            for cid, reason in store.skipped:
                print(_printable(f"skipped damaged checkpoint {cid}: {reason}"), file=sys.stderr)
            if checkpoint is None:
                raise CommandError(f"no valid checkpoint in {_printable(str(path))}")
            return checkpoint, str(path)
        if re.fullmatch(r"\d{20}", target) and not path.exists():
            directory = Path(checkpoint_dir or "checkpoints")
            if not directory.is_dir():
                raise CommandError(f"{target} looks like a checkpoint id, but --checkpoint-dir "
                                   f"{_printable(str(directory))} is not a directory")
            return DirectoryStore(directory, read_only=True).load(target), str(directory)
        stem = path.with_suffix("") if path.suffix in (".json", ".npz") else path
        if stem.with_name(stem.name + ".json").exists():
            return load_checkpoint(stem), str(stem.parent)
    except CheckpointError as exc:
        raise CommandError(_printable(f"cannot read checkpoint {target}: {exc}")) from None
    raise CommandError(_printable(
        f"{target}: not a checkpoint directory, a checkpoint file (<id>.json / <id>.npz) or a checkpoint id"
    ))


_DEL_AND_C1 = re.compile("[\x7f-\x9f]")  # controls JSON may carry raw (it escapes only C0)


def _printable(text: str) -> str:
    """``text`` safe for a terminal: C0 and C1 control characters and DEL (escape sequences), and other
    unprintable characters (e.g. bidirectional overrides), escaped as ``repr`` does (``\\x1b``)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _describe_checkpoint(checkpoint: Any, where: str, top: int) -> dict[str, Any]:
    """What ``inspect`` shows of a checkpoint, as a JSON-able dict (``top``: how many weights)."""
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
    """Print the checkpoint ``args.checkpoint`` names, as text or (``--json``) one JSON object."""
    import orjson

    at_least("--top", args.top, 0)
    checkpoint, where = _open_checkpoint(args.checkpoint, args.checkpoint_dir)
    info = _describe_checkpoint(checkpoint, where, args.top)
    out = sys.stdout
    if args.json:  # orjson escapes C0 controls; DEL and C1 controls are escaped here (\u009b: valid JSON)
        text = orjson.dumps(info, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode()
        out.write(_DEL_AND_C1.sub(lambda m: f"\\u{ord(m[0]):04x}", text) + "\n")
        return EXIT_OK

    def say(line: str) -> None:  # names, metadata and versions come from the checkpoint: never raw
        print(_printable(line), file=out)

    opt = dict(info["optimizer"])
    opt_text = f"{opt.pop('name')}(" + ", ".join(f"{k}={v}" for k, v in opt.items()) + ")"
    rest = {k: v for k, v in info["config"].items() if k != "optimizer"}
    features = (f"{info['n_features']:,} columns (hashing, 2^{rest['n_bits']})" if info["hashing"]
                else f"{info['n_features']:,} (vocabulary)")
    say(f"checkpoint     {info['id']}")
    say(f"written        {info['created_at']} (stream-logreg {info['library_version']})")
    say(f"directory      {where}")
    say(f"samples seen   {info['n_samples_seen']:,}")
    say(f"features       {features}, {info['n_nonzero_weights']:,} non-zero weights")
    say(f"optimizer      {opt_text}")
    say("model          " + ", ".join(f"{k}={v}" for k, v in rest.items()))
    say(f"bias           {info['bias']:+.6g}")
    offsets = info["offsets"]
    if offsets:
        say("offsets        " + ", ".join(f"{tp}={off}" for tp, off in offsets.items()))
    others = {k: v for k, v in info["metadata"].items() if k != "offsets"}
    if others:
        say("metadata       " + ", ".join(f"{k}={v}" for k, v in others.items()))
    if info["top_weights"]:
        say(f"top {len(info['top_weights'])} weights by |w|:")
        names = [_printable(str(t["feature"])) for t in info["top_weights"]]
        width = max(map(len, names))
        for rank, (name, t) in enumerate(zip(names, info["top_weights"], strict=True), 1):
            say(f"  {rank:>3}  {name:<{width}}  {t['weight']:+.6g}")
    return EXIT_OK


# ----------------------------------------------------------------------------------------------------------
# score


def _best_effort_id(line: bytes, id_field: str) -> str | int | None:
    """The id of a message as it was written (a string, or an integer kept an integer), read on its own so
    that a line the codec rejects keeps its id too: the standard library's parser also reads the JSON that
    orjson refuses (``NaN``, a number overflowing a double elsewhere in the line). ``None`` when the line
    is no JSON object or its id is neither a string nor an integer; an integer beyond 64 bits is given as
    its decimal string."""
    import json

    import orjson

    def read(parse: Callable[[bytes], Any]) -> Any:
        try:
            doc = parse(line)
        except (ValueError, RecursionError):  # not JSON, bad UTF-8, an integer of > 4,300 digits
            return None
        return doc.get(id_field) if isinstance(doc, dict) else None

    value = read(orjson.loads)
    if value is None or type(value) is float:  # orjson refused the line, or read a > 64-bit int as a float
        value = read(json.loads)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    if isinstance(value, int) and not -(1 << 63) <= value < 1 << 64:
        return str(value)  # beyond 64 bits JSON writers lose digits: its decimal string
    return value


def _cmd_score(args: argparse.Namespace) -> int:
    """Score the JSON lines of stdin with a checkpoint, one JSON line out per line in."""
    import orjson

    from stream_logreg.codec import JsonCodec, Rejection

    checkpoint, _ = _open_checkpoint(args.checkpoint or args.checkpoint_dir, args.checkpoint_dir)
    model = checkpoint.model
    try:
        codec = JsonCodec(x_field=args.x_field, y_field=args.y_field, id_field=args.id_field)
    except ValueError as exc:
        raise UsageError(f"--x-field/--y-field/--id-field: {exc}") from None
    out = sys.stdout
    n = errors = 0
    for lineno, raw in enumerate(stdin_lines(), 1):
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
            # The codec gives every id as a string (the Kafka key); the output keeps the id's own type.
            event_id = _best_effort_id(line, args.id_field) if result.id is not None else None
            doc = {"id": event_id, "p": model.predict_proba_one(result.x)[True]}
        out.write(orjson.dumps(doc).decode() + "\n")
        out.flush()
    log.info("scored %s with checkpoint %s (%s)", plural(n - errors, "line"), checkpoint.id,
             plural(errors, "error"))
    return EXIT_OK


# ----------------------------------------------------------------------------------------------------------
# The parser


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and examples as written (line breaks kept), as wide as the terminal (80 to 110)."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=34, width=min(110, max(80, _terminal_width())))


def _terminal_width() -> int:
    try:
        return os.get_terminal_size().columns
    except OSError:
        return 100


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def _command(
    sub: Any, name: str, handler: Callable[[argparse.Namespace], int], *, help: str, description: str,
    examples: Iterable[str],
) -> argparse.ArgumentParser:
    """Add the subcommand ``name`` (its help, description and examples) that runs ``handler(args)``."""
    parser = sub.add_parser(name, formatter_class=_Formatter, help=help, description=description,
                            epilog=_examples(*examples))
    parser.set_defaults(handler=handler)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``stream-logreg`` and its subcommands; each sets ``handler`` (and ``validate``)."""
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
    p = _command(
        sub, "demo", cmd_demo, help="learn a built-in dataset (no network), checkpointing",
        description=(
            "Stream a built-in dataset through the model with progressive validation (each event is\n"
            "predicted, then learned), checkpointing every --checkpoint-every events and at the end. A\n"
            "second run with the same options resumes from the latest checkpoint and skips the events it\n"
            "covers (and appends to its --curve). Ctrl-C stops at the next batch boundary with a\n"
            "checkpoint (exit 130). The model gets the raw features (standardized inside it unless\n"
            "--no-scale); the progressive log loss and accuracy are computed as the consumer's metrics\n"
            "compute them.\n\n"
            "datasets:\n" + dataset_help()
        ),
        examples=(
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
                        f"accuracy) for `{PROG} report`; a resumed run appends to the curve it continues "
                        "(and refuses a file of another run)")
    p.add_argument("--window", type=int, default=100, metavar="N",
                   help="events in the rolling log loss and accuracy of --curve (default: 100)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress line on stderr")
    p.add_argument("--delayed-labels", action="store_true",
                   help="labels arrive after a random (seeded) delay: each event is scored at once, kept "
                        "and learned when its label comes (the join of `consume --labels-topic`); prints the "
                        "delayed metrics. No checkpoints, no --curve")
    p.add_argument("--label-delay", type=float, default=60.0, metavar="SECONDS",
                   help="with --delayed-labels: mean delay of a label (exponential; one event a second; "
                        "default: 60)")
    p.add_argument("--label-ttl", type=float, default=300.0, metavar="SECONDS",
                   help="with --delayed-labels: how long an event waits for its label (default: 300)")
    p.add_argument("--expired-policy", choices=("drop", "negative"), default="drop",
                   help="with --delayed-labels: what becomes of an event whose label came too late")
    add_settings(p, MODEL_SETTINGS, env=False)
    add_settings(p, COMMON_SETTINGS, env=True)
    p.set_defaults(validate=validate_demo)

    # inspect
    p = _command(
        sub, "inspect", _cmd_inspect, help="print a checkpoint: counters, config, top weights",
        description=(
            "Print a checkpoint: its id, when it was written, samples seen, features, optimizer and\n"
            "hyper-parameters, bias, the largest weights by |w|, and the offsets in its metadata.\n"
            "CHECKPOINT is a checkpoint directory (its latest valid checkpoint), a checkpoint file\n"
            "(<id>.json or <id>.npz), or a checkpoint id looked up in --checkpoint-dir."
        ),
        examples=(
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
    add_settings(p, COMMON_SETTINGS, env=True)

    # score
    p = _command(
        sub, "score", _cmd_score, help="score JSON lines from stdin with a checkpoint",
        description=(
            "Read messages as JSON lines on stdin ({\"x\": {...} | [...], \"id\": ...}, the Kafka message\n"
            "format; a label is ignored) and write one JSON line per input line on stdout:\n"
            "{\"id\": ..., \"p\": P(y=1)}, or {\"id\": ..., \"error\": REASON, \"detail\": ...,\n"
            "\"line\": N} for a line that does not decode (the rest are still scored; exit 0). The id is\n"
            "the line's own, as written (an integer stays an integer; best effort for a rejected line).\n"
            "Blank lines are skipped."
        ),
        examples=(
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
    add_settings(p, COMMON_SETTINGS, env=True)

    # report
    p = _command(
        sub, "report", cmd_report, help="draw a learning curve (demo --curve CSV) as an image",
        description=(
            f"Draw the learning curve of a run (the CSV of `{PROG} demo --curve`): progressive and rolling\n"
            "log loss and accuracy against the number of events, titled with what was run (dataset,\n"
            "optimizer, rolling window). The format is that of the -o file name: .png, .jpg/.jpeg, .svg or\n"
            ".pdf (matplotlib, Agg backend); any other suffix is refused (exit 2)."
        ),
        examples=(
            f"{PROG} demo --curve run.csv && {PROG} report run.csv -o curve.png",
            f"{PROG} report run.csv -o curve.svg --title 'FTRL on Phishing'",
            f"{PROG} report run.csv -o curve.jpg --dpi 150",
        ),
    )
    p.add_argument("run", metavar="RUN.csv")
    p.add_argument("-o", "--output", required=True, metavar="FILE.png",
                   help="the image to write: .png, .jpg, .jpeg, .svg or .pdf")
    p.add_argument("--title", help="figure title (default: what was run, from the CSV's first note)")
    p.add_argument("--dpi", type=int, default=100, help="resolution (default: 100)")
    add_settings(p, COMMON_SETTINGS, env=True)

    # replay
    p = _command(
        sub, "replay", cmd_replay, help="produce a dataset or a file of events into a topic",
        description=(
            "Produce events into a Kafka topic in the message format (codec.encode_event), keyed by id,\n"
            "with a progress bar on stderr; the topic is created if missing. Sources: a built-in dataset\n"
            "(--dataset, the default), JSON lines (--file data.jsonl: {\"x\":..,\"y\":..,\"id\":..}), or\n"
            "CSV (--file data.csv: a header row; --label-column, default \"y\" or the last column, is the\n"
            "label (0/1/true/false, empty: unlabelled); the other columns are features: the first\n"
            "non-empty cell of a column makes it numeric, boolean (true/false) or text, and a later cell\n"
            "of another kind (\"abc\" in a numeric column) skips its line; an empty cell is a missing\n"
            "feature). Skipped lines are reported on stderr and make the exit status 1 unless\n"
            "--skip-bad-lines. The connection settings also come from the STREAM_LOGREG_* environment\n"
            "variables, as for `consume`.\n\n"
            "datasets:\n" + dataset_help()
        ),
        examples=(
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
    p.add_argument("--skip-bad-lines", action="store_true",
                   help="--file: skip input lines that cannot be sent and still exit 0 (default: they are "
                        "skipped, reported, and the exit status is 1)")
    p.add_argument("--connect-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="give up if no broker answers within this time (default: 30)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar on stderr")
    add_settings(p, CONNECTION_SETTINGS, env=True)
    add_settings(p, COMMON_SETTINGS, env=True)

    # consume
    p = _command(
        sub, "consume", cmd_consume, help="the Kafka learner service",
        description=(
            "The learner service: poll the --topics, decode each message, predict (publishing to\n"
            "--predictions-topic), learn the labelled events, and every N messages or T seconds write a\n"
            "checkpoint (model + offsets) and then commit the offsets it covers. Restarted, it resumes from\n"
            "the latest checkpoint: nothing is lost or learned twice. Rejected messages go to\n"
            "--dead-letter-topic. SIGTERM (exit 0) and Ctrl-C (exit 130) checkpoint, commit and leave.\n\n"
            "Every setting is a flag or a STREAM_LOGREG_* environment variable; the flag wins. Empty\n"
            "variables count as unset."
        ),
        examples=(
            f"{PROG} consume --bootstrap-servers localhost:9092 --topics events",
            f"STREAM_LOGREG_TOPICS=events STREAM_LOGREG_BATCH_SIZE=32 {PROG} consume --log-format json",
            f"{PROG} consume --topics events --predictions-topic predictions --dead-letter-topic dlq",
            f"{PROG} consume --topics events --print-config       # the resolved settings, then exit",
            f"{PROG} consume --print-config-table                 # the settings as a Markdown table",
        ),
    )
    add_settings(p, CONSUME_SETTINGS, env=True)  # ends with the COMMON_SETTINGS
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved settings as JSON (secrets masked) and exit")
    p.add_argument("--print-config-table", action="store_true",
                   help="print every setting as a Markdown table (for the README) and exit")
    return parser


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
