"""The learner's Prometheus metrics and health endpoints (``consumers.metrics``).

Broker-free: the collector over a real (not running) ``Learner`` and over plain snapshot dicts, the health
rules, the HTTP server, and the ``consume`` wiring (server up during ``run()``, down after). With a broker
(``kafka``): the ``consume`` command as a subprocess, scraped while it learns a topic of good and bad events.
Synchronisation is by polling with deadlines, never by fixed sleeps.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from polling import wait_for
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from consumers import Learner, LearnerConfig, cli
from consumers.metrics import (
    METRICS,
    Health,
    LearnerCollector,
    make_registry,
    metrics_table_markdown,
    serve_metrics,
)
from stream_logreg.codec import Reason, encode_event

ROOT = Path(__file__).resolve().parents[1]
P = "stream_logreg_"

# --------------------------------------------------------------------------------------------------
# Helpers


def parse(text: str) -> dict[tuple[str, frozenset], float]:
    """Exposition text → {(sample name, labels): value}."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((P + name, frozenset(labels.items())))


def scrape_registry(registry: Any) -> dict[tuple[str, frozenset], float]:
    return parse(generate_latest(registry).decode())


def get(url: str, headers: dict[str, str] | None = None, method: str = "GET") -> tuple[int, str, bytes]:
    """(status, content type, body) — HTTP errors are answers too."""
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()


def port_closed(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_learner(tmp_path: Path, **overrides: Any) -> Learner:
    """A real Learner, built (checkpoint restored) but not running: no broker is contacted."""
    settings: dict[str, Any] = dict(bootstrap_servers="127.0.0.1:9", topics=["events"], group_id="g",
                                    checkpoint_dir=str(tmp_path / "ckpt"))
    settings.update(overrides)
    return Learner(LearnerConfig(**settings))


def base_snapshot(**changes: Any) -> dict[str, Any]:
    """A snapshot shaped like ``LearnerStats.snapshot()`` of an idle, never-run learner."""
    snap: dict[str, Any] = {
        "started_at": time.time(), "running": False, "consumed": 0, "learned": 0, "scored": 0,
        "predicted_labelled": 0, "rejected": {r.value: 0 for r in Reason}, "dead_lettered": 0,
        "predictions_published": 0, "produce_failures": 0, "checkpoints_written": 0,
        "checkpoint_failures": 0, "last_checkpoint_time": None, "last_checkpoint_duration": None,
        "last_checkpoint_id": None, "commits": 0, "commit_failures": 0, "poll_errors": 0, "rebalances": 0,
        "assigned": [], "positions": {}, "highwaters": {}, "n_samples_seen": 0, "n_features": 0,
        "buffered": 0, "log_loss_total": 0.0, "correct_total": 0, "rejected_total": 0, "lag": {},
        "rolling_window": 0, "rolling_log_loss": None, "rolling_accuracy": None, "log_loss": None,
        "accuracy": None, "uptime_seconds": 0.0,
    }
    snap.update(changes)
    return snap


def fake_learner(snap: dict[str, Any], **attrs: Any) -> SimpleNamespace:
    """Learner-like: ``stats.snapshot()`` returns (a copy of) ``snap``, which the test may change."""
    return SimpleNamespace(stats=SimpleNamespace(snapshot=lambda: dict(snap)), **attrs)


# --------------------------------------------------------------------------------------------------
# The collector


def test_collector_reads_a_real_learners_stats(tmp_path: Path) -> None:
    learner = make_learner(tmp_path)
    model = learner.model
    model.learn_one({"a": 1.0, "b": 2.0}, True)
    model.learn_one({"c": 0.0}, False)  # a column whose weight stays 0 (its value is 0)
    st = learner.stats
    checkpoint_time = time.time() - 5
    with st.lock:
        st.running = st.connected = True
        st.consumed, st.learned, st.scored = 17, 12, 2
        st.rejected["not_json"] = 2
        st.rejected["tombstone"] = 1
        st.dead_lettered = 3
        st.checkpoints_written, st.checkpoint_failures = 4, 1
        st.last_checkpoint_time, st.last_checkpoint_duration = checkpoint_time, 0.25
        st.commits, st.commit_failures = 4, 2
        st.rebalances = 1
        st.assigned = ["events:0", "events:1"]
        st.positions = {"events:0": 10, "events:1": 7, "gone:0": 3}
        st.highwaters = {"events:0": 10, "events:1": 9, "gone:0": 50}
        st.n_samples_seen, st.n_features = model.n_samples_seen, model.n_features
        st._add_chunk(4, 2.0, 3)  # 4 labelled predictions: log loss sum 2.0, 3 right
    samples = scrape_registry(make_registry(learner, process_metrics=False))

    expected = {
        "events_consumed_total": 17, "events_learned_total": 12, "events_scored_total": 2,
        "dead_letters_total": 3, "checkpoints_written_total": 4, "checkpoint_failures_total": 1,
        "commits_total": 4, "commit_failures_total": 2, "rebalances_total": 1, "poll_errors_total": 0,
        "labelled_predicted_total": 4, "progressive_log_loss_total": 2.0, "progressive_correct_total": 3,
        "last_checkpoint_duration_seconds": 0.25, "last_checkpoint_timestamp_seconds": checkpoint_time,
        "rolling_log_loss": 0.5, "rolling_accuracy": 0.75, "rolling_window_events": 4,
        "model_samples_seen": 2, "model_weights": 3, "model_nonzero_weights": 2, "running": 1,
        "assigned_partitions": 2, "buffered_events": 0,
    }
    for name, want in expected.items():
        assert value(samples, name) == pytest.approx(want), name
    assert 5 <= value(samples, "last_checkpoint_age_seconds") < 60
    for reason in Reason:
        want = {"not_json": 2, "tombstone": 1}.get(reason.value, 0)
        assert value(samples, "events_rejected_total", reason=reason.value) == want, reason
    # Lag of the owned partitions only (a partition revoked earlier keeps stale positions in the stats).
    lags = {dict(k[1])["partition"]: v for k, v in samples.items() if k[0] == P + "consumer_lag"}
    assert lags == {"0": 0, "1": 2}
    assert value(samples, "consumer_lag", topic="events", partition="1") == 2
    # Running, owning partitions, no poll record yet (joining): live and ready.
    assert value(samples, "live") == 1 and value(samples, "ready") == 1


def test_collector_over_a_snapshot_dict_leaves_unknowns_out() -> None:
    snap = base_snapshot(assigned=["t.x:3"], lag={"t.x:3": 5, "t.x:4": 9})
    samples = scrape_registry(make_registry(fake_learner(snap), process_metrics=False))
    for absent in ("rolling_log_loss", "rolling_accuracy", "last_checkpoint_age_seconds",
                   "last_checkpoint_timestamp_seconds", "last_checkpoint_duration_seconds",
                   "model_nonzero_weights", "last_poll_age_seconds"):
        assert not any(k[0] == P + absent for k in samples), absent
    assert value(samples, "consumer_lag", topic="t.x", partition="3") == 5
    assert not any(k[0] == P + "consumer_lag" and ("partition", "4") in k[1] for k in samples)
    assert value(samples, "running") == 0
    assert value(samples, "ready") == 0 and value(samples, "live") == 1  # starting


def test_nonzero_weights_are_recounted_when_the_model_changed(tmp_path: Path) -> None:
    learner = make_learner(tmp_path)
    collector = LearnerCollector(learner)

    def nonzero() -> float:
        fam = next(f for f in collector.collect() if f.name == P + "model_nonzero_weights")
        return fam.samples[0].value

    assert nonzero() == 0
    learner.model.learn_one({"a": 1.0}, True)
    assert nonzero() == 0  # cached: the stats still say n_samples_seen == 0 (the loop has not published)
    with learner.stats.lock:
        learner.stats.n_samples_seen = 1
    assert nonzero() == 1
    learner.model = learner.config.make_model()  # a reload from the checkpoint: another model object
    assert nonzero() == 0


def test_every_metric_is_described_documented_and_prefixed(tmp_path: Path) -> None:
    learner = make_learner(tmp_path)
    collector = LearnerCollector(learner)
    described = [f.name for f in collector.describe()]
    collected = list(collector.collect())
    assert described == [f.name for f in collected] == [m.full_name for m in METRICS]
    assert len(set(described)) == len(described)
    for family, spec in zip(collected, METRICS, strict=True):
        assert family.name.startswith(P)
        assert family.type == spec.kind
        assert len(family.documentation) > 10
        for sample in family.samples:
            assert set(sample.labels) == set(spec.labels), family.name
    table = metrics_table_markdown()
    for spec in METRICS:
        assert f"`{spec.exposed_name}`" in table
    # Dedicated registries: two learners (or two tests) in one process never clash, and the standard
    # process collectors sit next to ours.
    text = [generate_latest(make_registry(make_learner(tmp_path / str(i)))).decode() for i in range(2)]
    assert all("process_cpu_seconds_total" in t or sys.platform != "linux" for t in text)
    assert all(P + "events_consumed_total 0.0" in t for t in text)


# --------------------------------------------------------------------------------------------------
# Health


def test_health_from_the_stats_poll_time() -> None:
    snap = base_snapshot()
    now = 1_000_000.0
    health = Health(fake_learner(snap), live_timeout=60, clock=lambda: now)

    assert health.live()[0] and health.live()[1]["status"] == "starting"
    assert not health.ready()[0] and health.ready()[1]["status"] == "not running"

    snap.update(running=True)
    assert health.live()[1]["status"] == "joining" and health.last_poll_age(snap) is None
    snap["last_poll_time"] = now - 1
    assert health.live()[0]
    assert health.ready()[1]["status"] == "no partitions assigned"
    snap["assigned"] = ["events:0"]
    ok, info = health.ready()
    assert ok and info["status"] == "ok" and info["assigned"] == ["events:0"]
    assert info["live"]["last_poll_age_seconds"] == 1.0

    snap["last_poll_time"] = now - 61  # stuck in a call for over a minute
    live, info = health.live()
    assert not live and info["status"].startswith("stuck")
    assert not health.ready()[0]

    snap.update(running=False, assigned=[])
    assert health.live()[1]["status"] == "stopped" and not health.live()[0]


def test_default_live_timeout_follows_the_poll_timeout(tmp_path: Path) -> None:
    assert Health(make_learner(tmp_path)).live_timeout == 60
    slow = make_learner(tmp_path, poll_timeout_ms=30_000)
    assert Health(slow).live_timeout == 90
    with pytest.raises(ValueError):
        Health(slow, live_timeout=0)


# --------------------------------------------------------------------------------------------------
# The HTTP server


def test_server_endpoints_and_shutdown() -> None:
    snap = base_snapshot()
    server = serve_metrics(fake_learner(snap), "127.0.0.1", 0)
    try:
        assert server.port > 0 and server.url == f"http://127.0.0.1:{server.port}"
        status, ctype, body = get(server.url + "/metrics")
        assert status == 200 and ctype.startswith("text/plain")
        samples = parse(body.decode())
        assert value(samples, "events_consumed_total") == 0
        assert ("process_cpu_seconds_total", frozenset()) in samples or sys.platform != "linux"

        status, ctype, body = get(server.url + "/metrics",
                                  {"Accept": "application/openmetrics-text; version=1.0.0"})
        assert status == 200 and ctype.startswith("application/openmetrics-text")
        assert body.rstrip().endswith(b"# EOF")

        status, ctype, body = get(server.url + "/ready")
        assert (status, ctype) == (503, "application/json") and b'"not running"' in body
        for path in ("/live", "/healthz", "/live/"):
            status, _, body = get(server.url + path)
            assert status == 200 and b'"starting"' in body, path

        snap.update(running=True, assigned=["events:0"], last_poll_time=time.time(), consumed=3)
        assert get(server.url + "/ready")[0] == 200
        assert value(parse(get(server.url + "/metrics")[2].decode()), "events_consumed_total") == 3
        status, _, body = get(server.url + "/ready", method="HEAD")
        assert status == 200 and body == b""
        assert get(server.url + "/nope")[0] == 404
        assert get(server.url + "/")[0] == 200
    finally:
        server.shutdown()
    assert port_closed(server.port)
    server.shutdown()  # idempotent


def test_server_refuses_a_busy_port() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(OSError):
            serve_metrics(fake_learner(base_snapshot()), "127.0.0.1", busy.getsockname()[1])


def test_a_failing_snapshot_is_a_500_not_a_dead_server() -> None:
    def broken() -> dict:
        raise RuntimeError("boom")

    learner = SimpleNamespace(stats=SimpleNamespace(snapshot=broken))
    with serve_metrics(learner, "127.0.0.1", 0) as server:
        assert get(server.url + "/metrics")[0] == 500
        assert get(server.url + "/live")[0] == 500
        assert get(server.url + "/nope")[0] == 404


# --------------------------------------------------------------------------------------------------
# The `consume` wiring (broker-free)


def test_consume_serves_metrics_during_run_and_stops_after(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    port = free_port()
    seen: dict[str, Any] = {}

    def fake_run(self: Learner, stop_event: Any = None, max_idle_seconds: float | None = None) -> Any:
        base = f"http://127.0.0.1:{port}"
        seen["metrics"] = parse(get(base + "/metrics")[2].decode())
        seen["live"] = get(base + "/live")[0]
        seen["ready"] = get(base + "/ready")[0]
        return self.stats

    monkeypatch.setattr(Learner, "run", fake_run)
    rc = cli.main(["consume", "--topics", "events", "--checkpoint-dir", str(tmp_path),
                   "--metrics-host", "127.0.0.1", "--metrics-port", str(port)])
    assert rc == 0
    assert value(seen["metrics"], "events_consumed_total") == 0
    # run() never connected: live says "not connected", and nothing is ready
    assert (seen["live"], seen["ready"]) == (503, 503)
    assert port_closed(port)


def test_consume_fails_on_a_busy_metrics_port(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        rc = cli.main(["consume", "--topics", "events", "--checkpoint-dir", str(tmp_path),
                       "--metrics-host", "127.0.0.1", "--metrics-port", str(port)])
    assert rc == 1
    err = capsys.readouterr().err
    assert f"cannot serve metrics on --metrics-host 127.0.0.1 --metrics-port {port}" in err


# --------------------------------------------------------------------------------------------------
# With a broker: the service scraped while it learns


def produce(bootstrap: str, topic: str, values: list[bytes | None], partitions: int) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    try:
        futures = [producer.send(topic, key=b"k%d" % i, value=v, partition=i % partitions)
                   for i, v in enumerate(values)]
        producer.flush(timeout=60)
        for f in futures:
            f.get(timeout=60)
    finally:
        producer.close()


@pytest.mark.kafka
def test_consume_metrics_match_what_was_produced(kafka_bootstrap: str, kafka_topic, tmp_path: Path) -> None:
    partitions = 2
    topic = kafka_topic(partitions=partitions)
    dead_letters = kafka_topic(partitions=1)
    n_good, unlabelled_every = 300, 10
    good = [
        encode_event({"a": (i % 7) - 3.0, "b": float(i % 3), "city": ["paris", "nice"][i % 2]},
                     None if i % unlabelled_every == unlabelled_every - 1 else int(i % 7 > 3), id=f"e{i}")
        for i in range(n_good)
    ]
    bad: list[tuple[bytes | None, str]] = [
        (b"not json", "not_json"), (b"{truncated", "not_json"), (b"[1, 2]", "not_object"),
        (None, "tombstone"), (b'{"y": 1}', "x_missing"), (b'{"x": {"a": 1.0}, "y": 7}', "bad_label"),
    ]
    n_unlabelled = n_good // unlabelled_every
    n_labelled = n_good - n_unlabelled
    values = good[:150] + [v for v, _ in bad] + good[150:]
    total = len(values)

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAM_LOGREG_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(
        STREAM_LOGREG_BOOTSTRAP_SERVERS=kafka_bootstrap, STREAM_LOGREG_TOPICS=topic,
        STREAM_LOGREG_GROUP_ID=f"g-{uuid.uuid4().hex[:8]}",
        STREAM_LOGREG_CHECKPOINT_DIR=str(tmp_path / "ckpt"),
        STREAM_LOGREG_DEAD_LETTER_TOPIC=dead_letters, STREAM_LOGREG_METRICS_HOST="127.0.0.1",
        STREAM_LOGREG_METRICS_PORT=str(port), STREAM_LOGREG_CHECKPOINT_EVERY_SECONDS="0.5",
        STREAM_LOGREG_SESSION_TIMEOUT_MS="10000", STREAM_LOGREG_POLL_TIMEOUT_MS="100",
    )
    log_path = tmp_path / "learner.log"

    def scrape() -> dict | None:
        with contextlib.suppress(OSError):
            status, _, body = get(base + "/metrics")
            if status == 200:
                return parse(body.decode())
        return None

    def status_of(path: str) -> int | None:
        with contextlib.suppress(OSError):
            return get(base + path)[0]
        return None

    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "consumers.cli", "consume"], env=env,
                                stdout=log_file, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            alive = lambda: proc.poll() is None  # noqa: E731
            # Up before any data: live at once, ready once it owns (and has sought) both partitions.
            wait_for(lambda: not alive() or status_of("/live") == 200, 60, "/live")
            assert alive(), log_path.read_text()
            wait_for(lambda: not alive() or status_of("/ready") == 200, 90, "/ready")
            assert alive(), log_path.read_text()
            samples = scrape()
            assert value(samples, "assigned_partitions") == partitions
            assert value(samples, "running") == 1 and value(samples, "ready") == 1

            produce(kafka_bootstrap, topic, values, partitions)
            samples = wait_for(
                lambda: not alive() or ((s := scrape()) and (value(s, "events_consumed_total") or 0) >= total
                                        and s),
                90, f"{total} messages consumed",
            )
            assert alive(), log_path.read_text()
            assert value(samples, "events_consumed_total") == total
            assert value(samples, "events_learned_total") == n_labelled
            assert value(samples, "events_scored_total") == n_unlabelled
            assert value(samples, "labelled_predicted_total") == n_labelled
            assert value(samples, "model_samples_seen") == n_labelled
            assert value(samples, "model_weights") == 4  # a, b, city=paris, city=nice
            assert 1 <= value(samples, "model_nonzero_weights") <= 4
            want_rejected = {r.value: 0 for r in Reason}
            for _, reason in bad:
                want_rejected[reason] += 1
            got_rejected = {r.value: value(samples, "events_rejected_total", reason=r.value) for r in Reason}
            assert got_rejected == want_rejected
            assert 0 <= value(samples, "rolling_accuracy") <= 1
            assert value(samples, "rolling_log_loss") > 0
            assert value(samples, "rolling_window_events") == n_labelled

            # Dead letters are sent and checkpoints written shortly after; the lag drains to 0 everywhere.
            def settled() -> dict | None:
                s = scrape()
                if not s or (value(s, "dead_letters_total") or 0) < len(bad):
                    return None
                if not value(s, "checkpoints_written_total"):
                    return None
                lags = [value(s, "consumer_lag", topic=topic, partition=str(p)) for p in range(partitions)]
                return s if lags == [0] * partitions else None

            samples = wait_for(lambda: not alive() or settled(), 60, "dead letters, checkpoint, lag 0")
            assert alive(), log_path.read_text()
            assert value(samples, "dead_letters_total") == len(bad)
            assert value(samples, "commit_failures_total") == 0
            assert value(samples, "last_checkpoint_age_seconds") >= 0
            assert value(samples, "last_poll_age_seconds") < 30
            assert status_of("/ready") == 200 and status_of("/live") == 200

            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert rc == 0, log_path.read_text()
    assert port_closed(port)


# --------------------------------------------------------------------------------------------------
# Connection, outputs, offset resets and the vocabulary cap


def test_connection_output_and_reset_metrics_from_the_stats(tmp_path: Path) -> None:
    """The attributes LearnerStats carries for the service's health are exposed as they are set."""
    learner = make_learner(tmp_path)
    st = learner.stats
    samples = scrape_registry(make_registry(learner, process_metrics=False))
    for name in ("connection_failures_total", "offset_resets_total", "connected"):
        # before the stats carry them (or once they do): absent or the stats' own value, never invented
        assert value(samples, name) in (None, getattr(st, name.removesuffix("_total"), None)), name
    with st.lock:
        st.connected = False
        st.connection_failures = 3
        st.output_failures = {"predictions": 2, "dead-letters": 5}
        st.offset_resets = 1
    samples = scrape_registry(make_registry(learner, process_metrics=False))
    assert value(samples, "connected") == 0
    assert value(samples, "connection_failures_total") == 3
    assert value(samples, "offset_resets_total") == 1
    assert value(samples, "output_failures_total", topic="predictions") == 2
    assert value(samples, "output_failures_total", topic="dead-letters") == 5
    assert value(samples, "live") == 0 and value(samples, "ready") == 0
    with st.lock:
        st.connected = True
    assert value(scrape_registry(make_registry(learner, process_metrics=False)), "connected") == 1


def test_live_says_not_connected() -> None:
    snap = base_snapshot(running=True, assigned=["t:0"], last_poll_time=time.time(), connected=False,
                         connection_failures=4)
    with serve_metrics(fake_learner(snap), "127.0.0.1", 0) as server:
        for path in ("/live", "/healthz", "/ready"):
            status, _, body = get(server.url + path)
            assert status == 503, path
        status, _, body = get(server.url + "/live")
        assert b'"not connected"' in body and b'"connection_failures": 4' in body
        snap["connected"] = True
        assert get(server.url + "/live")[0] == 200 and get(server.url + "/ready")[0] == 200
        snap.pop("connected")  # stats without the attribute: connected is not assumed lost
        assert get(server.url + "/live")[0] == 200


def test_features_dropped_counts_what_the_full_vocabulary_ignored(tmp_path: Path) -> None:
    learner = make_learner(tmp_path, model={"max_features": 2})
    for i in range(6):
        learner.model.learn_one({f"f{i}": 1.0}, i % 2)
    samples = scrape_registry(make_registry(learner, process_metrics=False))
    assert learner.model.features.n_dropped == 4  # the oracle: the model's own count
    assert value(samples, "features_dropped_total") == 4
    assert value(samples, "model_weights") is not None


# --------------------------------------------------------------------------------------------------
# The server: its address, its endpoints, and clients that try to exhaust it


def test_metrics_bind_to_localhost_by_default() -> None:
    import inspect

    from consumers import settings

    by_name = {s.name: s for s in settings.CONSUME_SETTINGS}
    assert by_name["metrics_host"].default == "127.0.0.1"
    assert inspect.signature(serve_metrics).parameters["host"].default == "127.0.0.1"
    dockerfile = (ROOT / "Dockerfile").read_text()
    compose = (ROOT / "docker-compose.yml").read_text()
    assert "STREAM_LOGREG_METRICS_HOST=0.0.0.0" in dockerfile.replace(" ", "")
    assert "STREAM_LOGREG_METRICS_HOST: 0.0.0.0" in compose


def test_the_documented_endpoints_are_the_real_ones() -> None:
    from consumers import settings
    from consumers.metrics import ENDPOINTS

    help_text = {s.name: s for s in settings.CONSUME_SETTINGS}["metrics_port"].help
    readme = (ROOT / "README.md").read_text()
    with serve_metrics(fake_learner(base_snapshot()), "127.0.0.1", 0) as server:
        for path in ENDPOINTS:
            assert get(server.url + path)[0] in (200, 503), path
            assert path in help_text and f"`{path}`" in readme, path
        assert get(server.url + "/other")[0] == 404
        assert get(server.url + "/metrics", method="POST")[0] == 405


def _idle_connections(port: int, n: int, partial: bytes) -> list[socket.socket]:
    out = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        if partial:
            s.sendall(partial)
        out.append(s)
    return out


@pytest.mark.parametrize("partial", [b"", b"GET /metrics HTTP/1.1\r\nHost: x\r\n"])
def test_idle_clients_cannot_exhaust_the_server(partial: bytes) -> None:
    """Slowloris: many more silent (or half-sent) connections than the server keeps; it still answers,
    without a thread per connection."""
    with serve_metrics(fake_learner(base_snapshot()), "127.0.0.1", 0, request_timeout=30) as server:
        threads_before = threading.active_count()
        idle = _idle_connections(server.port, 3 * server.max_connections, partial)
        try:
            for path in ("/metrics", "/live", "/ready"):
                status = get(server.url + path)[0]
                assert status in (200, 503), path
            assert threading.active_count() <= threads_before + 1
            # the oldest silent connections were closed to make room (they read EOF or a reset)
            closed = 0
            for s in idle[: server.max_connections]:
                s.settimeout(5)
                try:
                    closed += s.recv(1) == b""
                except (ConnectionResetError, TimeoutError):
                    closed += 1  # a reset is a close too; a timeout would mean still open
            assert closed == server.max_connections
        finally:
            for s in idle:
                s.close()


def test_a_silent_client_is_dropped_after_the_request_timeout() -> None:
    with serve_metrics(fake_learner(base_snapshot()), "127.0.0.1", 0, request_timeout=0.5) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\n")  # and never the end of the headers
            started = time.monotonic()
            assert s.recv(1) == b""  # closed by the server, well before our 10 s socket timeout
            assert time.monotonic() - started < 9
        assert get(server.url + "/metrics")[0] == 200


def test_an_oversized_request_is_refused() -> None:
    with serve_metrics(fake_learner(base_snapshot()), "127.0.0.1", 0) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n")
            reply = s.recv(100)
        assert reply.startswith(b"HTTP/1.1 431")
        assert get(server.url + "/metrics")[0] == 200
