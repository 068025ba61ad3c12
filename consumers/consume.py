"""``stream-logreg consume``: the Kafka learner service.

:func:`cmd_consume` resolves the settings (flags, then ``STREAM_LOGREG_*`` environment variables, see
:mod:`consumers.settings`); :func:`run_learner` assembles the service: the :class:`~consumers.Learner`, its
signal handlers and the metrics/health HTTP server.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
from collections.abc import Mapping
from typing import Any

from consumers.config import LearnerConfig
from consumers.errors import EXIT_INTERRUPTED, EXIT_OK, CommandError, UsageError, mismatch_text
from consumers.settings import CONSUME_SETTINGS, config_table_markdown, learner_config, resolve_settings

__all__ = ["cmd_consume", "run_learner"]

log = logging.getLogger(__name__)


def _redacted(config: LearnerConfig) -> dict[str, Any]:
    """``config.to_dict()`` with the secret settings' values masked."""
    secret = {s.name for s in CONSUME_SETTINGS if s.secret}
    d = config.to_dict()
    for key in ("client_settings", "consumer_settings", "producer_settings"):
        d[key] = {k: ("***" if k in secret else v) for k, v in d[key].items()}
    return d


def cmd_consume(args: argparse.Namespace) -> int:
    """``--print-config-table``, ``--print-config``, or run the learner."""
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
    return run_learner(config, values)


def _learned_unscaled(exc: Any, values: Mapping[str, Any]) -> bool:
    """Whether a checkpoint mismatch is only the service's default standardization (``--scale`` unset)
    meeting a model learned without it."""
    return values.get("scale") is None and [d[0] for d in exc.differences] == ["scale"] \
        and exc.differences[0][1] in ("<absent>", False)


def run_learner(config: LearnerConfig, values: Mapping[str, Any]) -> int:
    """Run the Kafka learner until SIGTERM (exit 0), Ctrl-C (exit 130) or ``--max-idle-seconds``.

    This is the one place where the service is assembled: the learner, its signal handlers and the
    metrics/health HTTP server on ``--metrics-port`` (:mod:`consumers.metrics`; 0: none).
    """
    from kafka.errors import KafkaError

    from consumers.labels import NotCoPartitioned
    from consumers.learner import Fenced, Learner
    from consumers.outputs import MissingTopics
    from consumers.source import ConnectTimeout
    from stream_logreg.checkpoints import CheckpointError, CheckpointMismatch

    where = (f"--checkpoint-dir {config.checkpoint_dir}" if config.state_store == "directory"
             else f"the state topic {config.group_id}-state")
    try:
        try:
            learner = Learner(config)
        except CheckpointMismatch as exc:
            if not _learned_unscaled(exc, values):
                raise
            # Learned by a version whose default did not standardize: continue that model as it was.
            log.warning("the latest checkpoint in %s was learned without standardization (the default "
                        "before --scale existed): continuing it unscaled; for a standardized model pass "
                        "--scale with another %s", where,
                        "--checkpoint-dir" if config.state_store == "directory" else "--group-id")
            config = dataclasses.replace(
                config, model={k: v for k, v in config.model.items() if k != "scale"})
            learner = Learner(config)
    except CheckpointMismatch as exc:
        other = "--checkpoint-dir" if config.state_store == "directory" else "--group-id"
        raise UsageError(
            f"the latest checkpoint in {where} has other model options "
            f"({mismatch_text(exc)}): use the same options, or another {other}"
        ) from None
    except (CheckpointError, OSError, KafkaError) as exc:
        raise CommandError(f"cannot restore from {where}: {exc}") from None

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
                 config.bootstrap_servers, config.group_id, where)
        try:
            stats = learner.run(max_idle_seconds=values["max_idle_seconds"])
        except ConnectTimeout as exc:
            raise CommandError(f"{exc}: check --bootstrap-servers, or raise --connect-timeout") from None
        except (Fenced, CheckpointError) as exc:  # another member took over, or shares the directory
            raise CommandError(str(exc)) from None
        except NotCoPartitioned as exc:
            raise UsageError(f"--labels-topic {config.labels_topic}: {exc}") from None
        except MissingTopics as exc:
            names = ", ".join(exc.topics)
            raise UsageError(f"output topic(s) missing in the cluster: {names}; create them, or pass "
                             "--create-topics") from None
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
