"""The learner service as a test subprocess: run it until SIGTERM/SIGINT (then checkpoint, commit, exit 0).

A minimal front end over :class:`~consumers.LearnerConfig` and :class:`~consumers.Learner` for the crash and
restart tests, with what they need beyond ``stream-logreg consume``: any model config as JSON, any
kafka-python setting, and ``--status-file`` (the learner's stats as JSON, polled by the tests)::

    python tests/learner_process.py --bootstrap-servers 127.0.0.1:9092 --topic events --group lr \\
        --checkpoint-dir ./checkpoints --batch-size 8 --dead-letter-topic events.dlq

kafka-python settings go through ``--client-setting`` (both clients), ``--consumer-setting`` and
``--producer-setting`` as ``KEY=VALUE`` (VALUE parsed as JSON when it is JSON, else kept as a string), e.g.
``--consumer-setting session_timeout_ms=10000 --client-setting security_protocol=SSL``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from consumers.config import ConfigError, LearnerConfig


def _key_value(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return key, value


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def _keep_status(path: Path, learner: Any, done: threading.Event, every: float) -> None:
    """Write ``learner.stats.snapshot()`` (and the process's CPU seconds, ``cpu_seconds``) to ``path`` every
    ``every`` seconds, and once more at the end."""
    tmp = path.with_name(f".{path.name}.tmp")
    while True:
        finished = done.wait(every)
        snap = learner.stats.snapshot()
        # the process's own CPU time (user + system, all threads, since it started: interpreter start and
        # imports included) at this snapshot, for the CPU cost per event (bench/bench_group.py)
        snap["cpu_seconds"] = time.process_time()
        snap["status_monotonic"] = time.monotonic()  # when (CLOCK_MONOTONIC: comparable across processes)
        group = getattr(learner, "group", None)
        if group is not None:  # the group model's synchronisations (bench/bench_group.py)
            snap.update(group_syncs=group.syncs, group_sync_seconds=group.sync_seconds,
                        group_sync_cpu_seconds=group.sync_cpu_seconds, group_version=group.version)
        tmp.write_bytes(orjson.dumps(snap))
        os.replace(tmp, path)
        if finished:
            return


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="learner_process.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bootstrap-servers", required=True, help="host:port[,host:port]")
    p.add_argument("--topic", dest="topics", action="append", required=True,
                   help="input topic (repeat, or comma-separate, for several)")
    p.add_argument("--group", dest="group_id", required=True, help="consumer group id")
    p.add_argument("--checkpoint-dir", required=True)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--checkpoint-every-messages", type=int, default=10_000)
    p.add_argument("--checkpoint-every-seconds", type=float, default=60.0)
    p.add_argument("--keep-checkpoints", type=int, default=5)
    p.add_argument("--predictions-topic")
    p.add_argument("--publish-labelled", action="store_true")
    p.add_argument("--dead-letter-topic")
    p.add_argument("--labels-topic", help="delayed labels: the co-partitioned topic of {id, y} labels")
    p.add_argument("--auto-offset-reset", default="earliest", choices=("earliest", "latest"))
    p.add_argument("--max-poll-records", type=int, default=2_000)
    p.add_argument("--model", type=_json_object, default={},
                   help='hyper-parameters as JSON, e.g. \'{"optimizer": {"name": "SGD", "lr": 0.1}}\'')
    p.add_argument("--client-setting", action="append", type=_key_value, default=[], metavar="KEY=VALUE")
    p.add_argument("--consumer-setting", action="append", type=_key_value, default=[], metavar="KEY=VALUE")
    p.add_argument("--producer-setting", action="append", type=_key_value, default=[], metavar="KEY=VALUE")
    p.add_argument("--group-instance-id", help="static group membership id (default: derived, see Source)")
    p.add_argument("--connect-timeout", type=float, default=60.0)
    p.add_argument("--state-store", default="directory", choices=("directory", "kafka"))
    p.add_argument("--processing-guarantee", default="at-least-once",
                   choices=("at-least-once", "exactly-once"))
    p.add_argument("--kafka-client", default="kafka-python", choices=("kafka-python", "confluent"))
    p.add_argument("--sync-every-seconds", type=float,
                   help="the group model's synchronisation interval (0: one model per member)")
    p.add_argument("--max-idle-seconds", type=float, help="stop after this long without a message")
    p.add_argument("--kill-after-writes", type=int,
                   help="SIGKILL this process right after its N-th state write, before its transaction "
                        "commits (the window between writing state and committing offsets)")
    p.add_argument("--status-file", help="keep the learner's stats here as JSON (rewritten atomically)")
    p.add_argument("--status-every", type=float, default=1.0, help="seconds between status-file writes")
    p.add_argument("--log-level", default="INFO")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    topics = [t for arg in args.topics for t in arg.split(",") if t]
    try:
        config = LearnerConfig(
            bootstrap_servers=args.bootstrap_servers,
            topics=topics,
            group_id=args.group_id,
            checkpoint_dir=args.checkpoint_dir,
            batch_size=args.batch_size,
            checkpoint_every_messages=args.checkpoint_every_messages,
            checkpoint_every_seconds=args.checkpoint_every_seconds,
            keep_checkpoints=args.keep_checkpoints,
            predictions_topic=args.predictions_topic,
            publish_labelled=args.publish_labelled,
            dead_letter_topic=args.dead_letter_topic,
            auto_offset_reset=args.auto_offset_reset,
            max_poll_records=args.max_poll_records,
            model=args.model,
            client_settings=dict(args.client_setting),
            consumer_settings=dict(args.consumer_setting),
            producer_settings=dict(args.producer_setting),
            group_instance_id=args.group_instance_id,
            connect_timeout=args.connect_timeout,
            state_store=args.state_store,
            processing_guarantee=args.processing_guarantee,
            kafka_client=args.kafka_client,
            labels_topic=args.labels_topic,
            sync_every_seconds=args.sync_every_seconds,
        )
    except ConfigError as exc:
        print(f"learner_process.py: error: {exc}", file=sys.stderr)
        return 2

    from consumers.learner import Learner

    if args.kill_after_writes:
        from consumers.state.kafka_store import KafkaStore

        write, writes = KafkaStore.write, []

        def write_then_die(self: Any, *a: Any, **k: Any) -> str:
            cid = write(self, *a, **k)
            writes.append(cid)
            if len(writes) >= args.kill_after_writes:
                self.producer.flush(timeout=10)  # the state records are in the log, uncommitted
                os.kill(os.getpid(), signal.SIGKILL)
            return cid

        KafkaStore.write = write_then_die

    learner = Learner(config)  # with the Kafka store: restores (or takes over) the state now

    def on_signal(signum: int, frame: Any) -> None:
        logging.getLogger("consumers").info("%s: stopping", signal.Signals(signum).name)
        learner.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    done = threading.Event()
    writer = None
    if args.status_file:
        writer = threading.Thread(
            target=_keep_status, args=(Path(args.status_file), learner, done, args.status_every),
            name="status-file", daemon=True,
        )
        writer.start()
    try:
        try:
            stats = learner.run(max_idle_seconds=args.max_idle_seconds)
        except Exception as exc:  # e.g. Fenced: exit 1 with the reason, as `stream-logreg consume` does
            print(f"learner_process.py: error: {exc}", file=sys.stderr)
            return 1
    finally:
        done.set()
        if writer is not None:
            writer.join()
    snap = stats.snapshot()
    logging.getLogger("consumers").info(
        "stopped: consumed=%d learned=%d scored=%d rejected=%d n_samples_seen=%d checkpoint=%s",
        snap["consumed"], snap["learned"], snap["scored"], snap["rejected_total"], snap["n_samples_seen"],
        snap["last_checkpoint_id"],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
