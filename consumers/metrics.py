"""Prometheus metrics and health endpoints of a :class:`~consumers.Learner`.

>>> server = serve_metrics(learner, "127.0.0.1", 9108)   # doctest: +SKIP
>>> learner.run()                                        # doctest: +SKIP
>>> server.shutdown()                                    # doctest: +SKIP

One small HTTP server (one daemon thread running an asyncio loop, bound to 127.0.0.1 unless told otherwise;
``port=0`` binds a free port, see :attr:`MetricsServer.port`). Clients cannot exhaust it: a connection costs
no thread, has :data:`REQUEST_TIMEOUT` seconds to send its request, and at most :data:`MAX_CONNECTIONS` are
open (a new one closes the oldest still silent).

``/metrics``
    The Prometheus exposition (text format, or OpenMetrics when the scraper asks for it) of a dedicated
    :class:`~prometheus_client.CollectorRegistry` — never the global one, so tests and several learners in
    one process do not clash. :class:`LearnerCollector` reads ``learner.stats.snapshot()`` at scrape time:
    nothing is counted twice and nothing is added to the learner's per-message path. The registry also
    carries prometheus-client's standard ``process_*``, ``python_gc_*`` and ``python_info`` collectors.
``/ready``
    200 once the learner is running (its checkpoint was restored when it was built), owns partitions (each
    sought to its checkpoint/committed offset), and is live; 503 before that (connecting, joining the group,
    a rebalance in progress, more learners than partitions), when stuck, and once stopped.
``/live`` (also ``/healthz``)
    200 while the consume loop has polled within ``live_timeout`` seconds (default
    max(60 s, 3 × the poll timeout)), and while it is starting; 503 "not connected" while the learner's
    stats say it is not connected to the brokers (``connected`` False), and when the loop is stuck or has
    stopped.

Both health endpoints answer a small JSON object saying why. Every metric is listed with its type, labels
and meaning in :data:`METRICS` (:func:`metrics_table_markdown` renders that for the README):

>>> [m.exposed_name for m in METRICS][:2]
['stream_logreg_events_consumed_total', 'stream_logreg_events_learned_total']

Liveness reads ``last_poll_time`` from the learner's stats: the wall clock of its last poll, answered or
failed (a loop retrying while the broker is away is alive; one stuck in a call is not).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

__all__ = [
    "METRICS",
    "Health",
    "LearnerCollector",
    "MetricSpec",
    "MetricsServer",
    "make_registry",
    "metrics_table_markdown",
    "serve_metrics",
]

log = logging.getLogger(__name__)

PREFIX = "stream_logreg_"
MIN_LIVE_TIMEOUT = 60.0


@dataclasses.dataclass(frozen=True)
class MetricSpec:
    """One metric family: ``name`` without the prefix (and without ``_total`` for counters)."""

    name: str
    kind: str  # "counter", "gauge" or "histogram"
    help: str
    labels: tuple[str, ...] = ()
    key: str | None = None  # the LearnerStats snapshot key it reads directly, if any

    @property
    def full_name(self) -> str:
        return PREFIX + self.name

    @property
    def exposed_name(self) -> str:
        """The sample name a scraper sees (counters get ``_total``)."""
        return self.full_name + ("_total" if self.kind == "counter" else "")


def _c(name: str, key: str | None, help: str, labels: tuple[str, ...] = ()) -> MetricSpec:
    return MetricSpec(name, "counter", help, labels, key)


def _g(name: str, key: str | None, help: str, labels: tuple[str, ...] = ()) -> MetricSpec:
    return MetricSpec(name, "gauge", help, labels, key)


def _m(name: str, kind: str, help: str) -> MetricSpec:
    return MetricSpec(name, kind, help)


#: Every metric of :class:`LearnerCollector`. Counters count since this process started.
METRICS: tuple[MetricSpec, ...] = (
    _c("events_consumed", "consumed", "Messages polled and processed: events and rejected messages."),
    _c("events_learned", "learned", "Labelled events learned into the model."),
    _c("events_scored", "scored", "Unlabelled events scored."),
    _c("events_rejected", None,
       "Messages rejected (dead-lettered when a dead-letter topic is set), by reason.", ("reason",)),
    _c("labelled_predicted", "predicted_labelled",
       "Labelled events predicted before being learned (progressive validation)."),
    _c("progressive_log_loss", "log_loss_total",
       "Sum of the log loss of the predictions of labelled events made before learning them; "
       "rate() of it over rate() of labelled_predicted_total is the log loss over any time window."),
    _c("progressive_correct", "correct_total",
       "Labelled events whose prediction made before learning them was right (p >= 0.5 for label 1)."),
    _c("dead_letters", "dead_lettered", "Messages sent to the dead-letter topic."),
    _c("predictions_published", "predictions_published", "Predictions sent to the predictions topic."),
    _c("produce_failures", "produce_failures",
       "Outputs (predictions, dead letters) whose send failed (re-sent)."),
    _c("checkpoints_written", "checkpoints_written", "Checkpoints written."),
    _c("checkpoint_failures", "checkpoint_failures",
       "Checkpoints not written: outputs not acknowledged in time, or the write failed."),
    _c("commits", "commits", "Offset commits that succeeded."),
    _c("commit_failures", "commit_failures",
       "Offset commits that failed (retried with the next checkpoint)."),
    _c("poll_errors", "poll_errors", "Polls that raised a Kafka error (retried with backoff)."),
    _c("rebalances", "rebalances", "Partition assignments received from the group."),
    _g("last_checkpoint_timestamp_seconds", None,
       "Unix time of the last checkpoint written by this process (absent before the first)."),
    _g("last_checkpoint_age_seconds", None,
       "Seconds since the last checkpoint written by this process (absent before the first)."),
    _g("last_checkpoint_duration_seconds", "last_checkpoint_duration",
       "How long the last checkpoint took (flushing outputs, then writing), in seconds."),
    _g("consumer_lag", None,
       "Messages of an owned partition not yet read: highwater minus position (as of the last fetch "
       "returning records from it).", ("topic", "partition")),
    _g("assigned_partitions", None, "Partitions this learner owns (assigned and sought)."),
    _g("buffered_events", "buffered", "Labelled events waiting for a full mini-batch (not learned yet)."),
    _g("rolling_log_loss", "rolling_log_loss",
       "Log loss of the predictions made before learning, over the last rolling_window_events labelled "
       "events (absent before the first)."),
    _g("rolling_accuracy", "rolling_accuracy",
       "Accuracy of the predictions made before learning, over the last rolling_window_events labelled "
       "events (absent before the first)."),
    _g("rolling_window_events", "rolling_window", "Labelled events in the rolling log loss and accuracy."),
    _g("model_samples_seen", "n_samples_seen",
       "Labelled events in the model, over its whole history (restored checkpoints included)."),
    _g("model_weights", "n_features",
       "Weights of the model: one per feature column (2^n_bits with hashing)."),
    _g("model_nonzero_weights", None,
       "Weights of the model that are not zero (counted on the model at scrape time)."),
    _g("running", None, "1 while the consume loop runs (connected and subscribed), else 0."),
    _g("ready", None, "1 when /ready answers 200, else 0."),
    _g("live", None, "1 when /live answers 200, else 0."),
    _g("last_poll_age_seconds", None, "Seconds since the consume loop last polled (absent if unknown)."),
    _c("features_dropped", None,
       "New feature names ignored because the model's vocabulary was full (--max-vocabulary), over the "
       "model's whole history (restored checkpoints included)."),
    _g("connected", "connected", "1 while the learner is connected to the brokers, else 0."),
    _c("connection_failures", "connection_failures", "Failed attempts to connect to the brokers."),
    _c("output_failures", None, "Outputs (predictions, dead letters) that could not be sent, by topic.",
       ("topic",)),
    _c("offset_resets", "offset_resets",
       "Partitions whose checkpointed offset was beyond the end of the log (topic re-created): read from "
       "the reset position instead."),
    # Delayed labels (--labels-topic; consumers.labels). The join counters are the join store's, kept in the
    # checkpoints: over the model's whole history.
    _g("pending_events", None, "Scored events waiting for their label in the join store."),
    _g("pending_labels", None, "Labels waiting for their event in the join store."),
    _g("pending_bytes", "join_bytes",
       "Estimated memory of the join store's entries, in bytes (bounded by --max-pending-bytes)."),
    _g("partitions_held_back", "held_back",
       "Partitions of the events or labels topic paused because they had read ahead, in record time, of "
       "their partner partition, which still has records to read (while catching up; 0 when live)."),
    _c("joined", None, "Events joined with their label and learned, over the model's whole history."),
    _c("duplicate_labels", None, "Labels of an id already joined or waiting (learned once, counted here)."),
    _c("duplicate_events", None, "Events whose id was already waiting or joined (the first one is kept)."),
    _c("duplicate_handoffs", None,
       "Entries handed over by a partition's previous owner that this member already held or had joined "
       "(a repeated hand-off after a crash: dropped, counted here)."),
    _c("orphan_labels", None, "Labels whose event never came within --label-ttl (or was never sent)."),
    _c("expired_events", None,
       "Events whose label never came within --label-ttl (dropped, or learned as negatives by "
       "--expired-policy)."),
    _c("join_store_full", None,
       "Entries dropped, oldest first, because the join store was full (--max-pending, "
       "--max-pending-bytes), by kind (event or label).", ("kind",)),
    _m("join_latency_seconds", "histogram",
       "Label record timestamp minus event record timestamp of the joined events, in seconds."),
    _c("delayed_predicted", "delayed_predicted",
       "Events joined with their label whose prediction made at scoring time was judged."),
    _c("delayed_log_loss", "delayed_log_loss_total",
       "Sum of the log loss of the predictions made at scoring time of the joined events; over "
       "delayed_predicted_total, the delayed progressive log loss."),
    _c("delayed_correct", "delayed_correct_total",
       "Joined events whose prediction made at scoring time was right (p > 0.5 for label 1)."),
    _g("delayed_log_loss_mean", "delayed_log_loss",
       "Delayed progressive log loss since start (absent before the first join)."),
    _g("delayed_accuracy", "delayed_accuracy",
       "Delayed progressive accuracy since start (absent before the first join)."),
)

_SPECS = {m.name: m for m in METRICS}


def metrics_table_markdown() -> str:
    """:data:`METRICS` as a Markdown table (name, type, labels, meaning), for the README."""
    rows = ["| Metric | Type | Labels | Meaning |", "|---|---|---|---|"]
    for m in METRICS:
        labels = ", ".join(f"`{label}`" for label in m.labels) or "—"
        rows.append(f"| `{m.exposed_name}` | {m.kind} | {labels} | {m.help.replace('|', '/')} |")
    return "\n".join(rows) + "\n"


def _latency_buckets(snap: Mapping[str, Any]) -> list[tuple[str, float]]:
    """The join latency histogram's cumulative buckets (``le`` in seconds, ``+Inf`` last); [] without a
    labels topic. The join store counts latency ``l`` in the first bucket whose edge is >= ``l``."""
    edges, counts = snap.get("join_latency_buckets_ms") or [], snap.get("join_latency_counts") or []
    if not edges or len(counts) != len(edges) + 1:
        return []
    total, out = 0, []
    for edge, n in zip([*(e / 1000 for e in edges), math.inf], counts, strict=True):
        total += n
        out.append(("+Inf" if edge == math.inf else repr(float(edge)), float(total)))
    return out


def _split_tp(key: str) -> tuple[str, str]:
    topic, _, partition = key.rpartition(":")
    return topic, partition


# ----------------------------------------------------------------------------------------------------------
# Health


class Health:
    """Readiness and liveness of a learner, from its stats.

    ``learner`` needs ``stats.snapshot()`` (with ``running``, ``assigned``, ``last_poll_time``);
    ``config.poll_timeout_ms`` sets the default ``live_timeout``.
    """

    def __init__(self, learner: Any, live_timeout: float | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.learner = learner
        if live_timeout is None:
            poll_ms = getattr(getattr(learner, "config", None), "poll_timeout_ms", 0) or 0
            live_timeout = max(MIN_LIVE_TIMEOUT, 3 * poll_ms / 1000)
        if not live_timeout > 0:
            raise ValueError(f"live_timeout must be > 0 seconds, got {live_timeout!r}")
        self.live_timeout = float(live_timeout)
        self._clock = clock

    def snapshot(self) -> dict[str, Any]:
        return self.learner.stats.snapshot()

    def last_poll_age(self, snap: Mapping[str, Any]) -> float | None:
        """Seconds since the loop last polled; ``None`` before its first poll."""
        wall = snap.get("last_poll_time")
        if isinstance(wall, int | float) and math.isfinite(wall):
            return max(0.0, self._clock() - wall)
        return None

    def live(self, snap: Mapping[str, Any] | None = None) -> tuple[bool, dict[str, Any]]:
        """(live?, details): 503-worthy only when the loop is stuck or stopped, not while connecting."""
        snap = self.snapshot() if snap is None else snap
        age = self.last_poll_age(snap)
        info: dict[str, Any] = {"last_poll_age_seconds": age, "live_timeout_seconds": self.live_timeout}
        if not snap.get("running") and age is not None:
            return False, {"status": "stopped", **info}
        if snap.get("connected", True) is False:
            return False, {"status": "not connected", **info,
                           "connection_failures": snap.get("connection_failures")}
        if not snap.get("running"):
            return True, {"status": "starting", **info}
        if age is None:
            return True, {"status": "joining", **info}
        if age > self.live_timeout:
            return False, {"status": f"stuck: no poll for {age:.0f}s", **info}
        return True, {"status": "ok", **info}

    def ready(self, snap: Mapping[str, Any] | None = None) -> tuple[bool, dict[str, Any]]:
        """(ready?, details): running, owning partitions, and live."""
        snap = self.snapshot() if snap is None else snap
        live, live_info = self.live(snap)
        assigned = list(snap.get("assigned") or ())
        info = {"assigned": assigned, "checkpoint": snap.get("last_checkpoint_id"),
                "n_samples_seen": snap.get("n_samples_seen"), "live": live_info}
        if not snap.get("running"):
            return False, {"status": "not running", **info}
        if not live:
            return False, {"status": "not live", **info}
        if not assigned:
            return False, {"status": "no partitions assigned", **info}
        return True, {"status": "ok", **info}


# ----------------------------------------------------------------------------------------------------------
# The collector


class LearnerCollector(Collector):
    """The metrics of :data:`METRICS`, read from ``learner.stats.snapshot()`` at every scrape.

    ``model_nonzero_weights`` is counted on ``learner.model`` itself (``numpy.count_nonzero``, about 1 ms
    per million weights, without the learner's lock: a read of a float array the loop may be writing, so at
    worst a count a few updates old), and counted again only when the stats show the model changed.
    """

    def __init__(self, learner: Any, health: Health | None = None) -> None:
        self.learner = learner
        self.health = health if health is not None else Health(learner)
        self._nonzero_lock = threading.Lock()
        self._nonzero: tuple[Any, Any, int] | None = None  # (model, n_samples_seen, count)

    def describe(self) -> Iterator[Metric]:
        for m in METRICS:
            yield self._family(m)

    def collect(self) -> Iterator[Metric]:
        snap = self.learner.stats.snapshot()
        values = self._values(snap)
        for m in METRICS:
            family = self._family(m)
            for labels, value in values.get(m.name, ()):
                family.add_metric(labels, value)
            if m.kind == "histogram":
                buckets = _latency_buckets(snap)
                if buckets:
                    family.add_metric([], buckets, None)
            yield family

    @staticmethod
    def _family(m: MetricSpec) -> Metric:
        cls = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily,
               "histogram": HistogramMetricFamily}[m.kind]
        return cls(m.full_name, m.help, labels=list(m.labels))

    def _values(self, snap: Mapping[str, Any]) -> dict[str, list[tuple[list[str], float]]]:
        values: dict[str, list[tuple[list[str], float]]] = {}

        def put(name: str, value: Any, labels: list[str] | None = None) -> None:
            assert name in _SPECS, name
            if isinstance(value, bool):
                value = int(value)
            if isinstance(value, int | float):
                values.setdefault(name, []).append((labels or [], float(value)))

        for m in METRICS:
            if m.key is not None:
                put(m.name, snap.get(m.key))
        for reason, n in sorted((snap.get("rejected") or {}).items()):
            put("events_rejected", n, [reason])
        last = snap.get("last_checkpoint_time")
        if last is not None:
            put("last_checkpoint_timestamp_seconds", last)
            put("last_checkpoint_age_seconds", max(0.0, time.time() - last))
        assigned = list(snap.get("assigned") or ())
        lag = snap.get("lag") or {}
        for key in sorted(set(assigned) & set(lag)):
            put("consumer_lag", lag[key], list(_split_tp(key)))
        put("assigned_partitions", len(assigned))
        put("model_nonzero_weights", self._nonzero_weights(snap))
        put("running", bool(snap.get("running")))
        put("ready", self.health.ready(snap)[0])
        put("live", self.health.live(snap)[0])
        put("last_poll_age_seconds", self.health.last_poll_age(snap))
        put("features_dropped", self._features_dropped())
        for topic, n in sorted((snap.get("output_failures") or {}).items()):
            put("output_failures", n, [str(topic)])
        join = snap.get("join") or {}
        for name in ("pending_events", "pending_labels", "joined", "duplicate_labels", "duplicate_events",
                     "duplicate_handoffs", "orphan_labels", "expired_events"):
            put(name, join.get(name))
        put("join_store_full", join.get("dropped_full_events"), ["event"])
        put("join_store_full", join.get("dropped_full_labels"), ["label"])
        return values

    def _features_dropped(self) -> int | None:
        """Names the model's full vocabulary ignored (an int, read without the learner's lock)."""
        features = getattr(getattr(self.learner, "model", None), "features", None)
        n = getattr(features, "n_dropped", None)
        return n if isinstance(n, int) else None

    def _nonzero_weights(self, snap: Mapping[str, Any]) -> int | None:
        model = getattr(self.learner, "model", None)
        coef = getattr(model, "coef", None) if model is not None else None
        if coef is None:
            return None
        seen = snap.get("n_samples_seen")
        with self._nonzero_lock:
            cached = self._nonzero
            if cached is not None and cached[0] is model and cached[1] == seen:
                return cached[2]
            import numpy as np

            try:
                count = int(np.count_nonzero(coef))
            except Exception:  # a model being swapped for its checkpoint: skip this scrape
                log.debug("counting the nonzero weights failed", exc_info=True)
                return None if cached is None else cached[2]
            self._nonzero = (model, seen, count)
            return count


def make_registry(learner: Any, health: Health | None = None, *, process_metrics: bool = True
                  ) -> CollectorRegistry:
    """A new registry with a :class:`LearnerCollector` (and the standard process/platform/GC collectors)."""
    registry = CollectorRegistry()
    registry.register(LearnerCollector(learner, health))
    if process_metrics:
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
    return registry


# ----------------------------------------------------------------------------------------------------------
# The HTTP server: one thread running an asyncio loop. A connection costs no thread, must send its request
# within REQUEST_TIMEOUT seconds, and at most MAX_CONNECTIONS are open (a new one closes the oldest still
# waiting for its request), so idle or slow clients cannot keep /metrics or the health checks from answering.

#: Seconds a client has to send its request line and headers.
REQUEST_TIMEOUT = 5.0
#: Connections open at once (beyond: the oldest one that has not sent its request is closed).
MAX_CONNECTIONS = 64
#: Longest request head (request line and headers) accepted, in bytes.
MAX_REQUEST_BYTES = 16 * 1024
ENDPOINTS = ("/metrics", "/ready", "/live", "/healthz")
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            431: "Request Header Fields Too Large", 500: "Internal Server Error", 503: "Service Unavailable"}
_TEXT = "text/plain; charset=utf-8"


class _App:
    """The answers of the server: (status, content type, body) of a method and a path."""

    def __init__(self, registry: CollectorRegistry, health: Health) -> None:
        self.registry = registry
        self.health = health

    def respond(self, path: str, accept: str) -> tuple[int, str, bytes]:
        path = path.split("?", 1)[0].rstrip("/") or "/"
        try:
            if path == "/metrics":
                encoder, content_type = choose_encoder(accept)
                return 200, content_type, encoder(self.registry)
            if path in ("/ready", "/live", "/healthz"):
                check = self.health.ready if path == "/ready" else self.health.live
                ok, info = check()
                body = json.dumps({"ok": ok, **info}).encode() + b"\n"
                return (200 if ok else 503), "application/json", body
            if path == "/":
                return 200, _TEXT, ("stream-logreg learner: " + " ".join(ENDPOINTS)
                                                          + "\n").encode()
            return 404, _TEXT, b"not found\n"
        except Exception as exc:
            log.exception("serving %s failed", path)
            return 500, _TEXT, f"error: {exc!r}\n".encode()


class MetricsServer:
    """A running metrics/health server; :meth:`shutdown` stops it (also as a context manager).

    ``max_connections`` and ``request_timeout`` bound what clients can hold (see :data:`MAX_CONNECTIONS`,
    :data:`REQUEST_TIMEOUT`).
    """

    def __init__(self, sock: socket.socket, registry: CollectorRegistry, health: Health, *,
                 max_connections: int = MAX_CONNECTIONS, request_timeout: float = REQUEST_TIMEOUT) -> None:
        self.host, self.port = sock.getsockname()[:2]
        self.registry = registry
        self.health = health
        self.max_connections = max_connections
        self.request_timeout = request_timeout
        self._app = _App(registry, health)
        self._sock = sock
        self._waiting: dict[asyncio.Task, None] = {}  # connections not yet answered, oldest first
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name=f"metrics-http-{self.port}", daemon=True)
        self._thread.start()
        self._started.wait(10)

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else "[::1]" if self.host == "::" else self.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    # -- the loop thread

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._connection, sock=self._sock, limit=MAX_REQUEST_BYTES)
        self._started.set()
        try:
            await self._stop.wait()
        finally:
            server.close()
            for task in list(self._waiting):
                task.cancel()
            await asyncio.gather(*self._waiting, return_exceptions=True)
            await server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._waiting[task] = None
        while len(self._waiting) > self.max_connections:  # the oldest waiting client makes room
            oldest = next(iter(self._waiting))
            self._waiting.pop(oldest)
            oldest.cancel()
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.request_timeout)
            except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                return  # too slow, or gone: close without an answer
            except asyncio.LimitOverrunError:
                await self._write(writer, "GET", 431, _TEXT, b"request too large\n")
                await self._discard(reader, writer)
                return
            finally:
                self._waiting.pop(task, None)
            method, path, accept = _parse_head(head)
            if method not in ("GET", "HEAD"):
                status, content_type, body = ((405, _TEXT, b"GET or HEAD only\n") if method
                                              else (400, _TEXT, b"bad request\n"))
            else:
                status, content_type, body = self._app.respond(path, accept)
            await self._write(writer, method, status, content_type, body)
            log.debug("%s %s %s", method, path, status)
        except asyncio.CancelledError:
            pass
        finally:
            self._waiting.pop(task, None)
            writer.close()

    async def _write(self, writer: asyncio.StreamWriter, method: str, status: int, content_type: str,
                     body: bytes) -> None:
        head = (f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\nServer: stream-logreg-metrics\r\n"
                f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\nCache-Control: no-store\r\n"
                "Connection: close\r\n\r\n").encode("latin-1")
        writer.write(head if method == "HEAD" else head + body)
        try:
            await asyncio.wait_for(writer.drain(), self.request_timeout)
        except (TimeoutError, ConnectionError):
            pass

    async def _discard(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Read and drop what the client still sends (a bounded time and size), so that closing does not
        reset the connection before it has read the answer."""
        with contextlib.suppress(Exception):
            writer.write_eof()
            loop = asyncio.get_running_loop()
            deadline, left = loop.time() + 1.0, 1 << 20
            while left > 0 and loop.time() < deadline:
                chunk = await asyncio.wait_for(reader.read(65536), deadline - loop.time())
                if not chunk:
                    break
                left -= len(chunk)

    # -- control

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop serving, close the socket and wait for the thread (idempotent)."""
        if self._thread.is_alive() and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed
                self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()


def _parse_head(head: bytes) -> tuple[str, str, str]:
    """(method, path, Accept header) of a request head; ``("", "", "")`` if it is not HTTP."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/") or not parts[1].startswith("/"):
        return "", "", ""
    accept = ""
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "accept":
            accept = value.strip()
    return parts[0], parts[1], accept


def serve_metrics(learner: Any, host: str = "127.0.0.1", port: int = 9108, *,
                  live_timeout: float | None = None, registry: CollectorRegistry | None = None,
                  max_connections: int = MAX_CONNECTIONS, request_timeout: float = REQUEST_TIMEOUT
                  ) -> MetricsServer:
    """Serve ``/metrics``, ``/ready`` and ``/live`` (also ``/healthz``) of ``learner`` on ``host:port`` from
    a daemon thread.

    ``port=0`` binds a free port (read it from the result's ``port``). ``registry`` defaults to a new one
    from :func:`make_registry`. Raises ``OSError`` if the address cannot be bound.
    """
    health = Health(learner, live_timeout)
    if registry is None:
        registry = make_registry(learner, health)
    family = socket.AF_INET
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        if infos:
            family = infos[0][0]
    except socket.gaierror:
        pass  # let bind() report the bad address
    sock = socket.create_server((host, port), family=family, backlog=128)
    return MetricsServer(sock, registry, health, max_connections=max_connections,
                         request_timeout=request_timeout)
