"""Shared pytest fixtures: a real Apache Kafka broker for the tests marked ``kafka``.

- ``kafka_bootstrap`` (session): the bootstrap string. Uses ``$KAFKA_BOOTSTRAP_SERVERS`` when set; otherwise
  starts one KRaft broker for the whole session with ``scripts/kafka_broker.py`` (jars from Maven Central,
  cached) and stops it at the end. Its configs, data and logs are under pytest's basetemp (``kafka0/``), which
  pytest keeps for the last few runs.
- ``kafka_broker`` (session): the :class:`KafkaBroker` itself, e.g. to ``restart()`` it mid-stream. Tests
  using it are skipped when an external broker is used.
- ``kafka_topic`` (function): factory ``kafka_topic(partitions=1) -> name`` creating a unique topic whose
  partitions all have leaders; the topics are deleted after the test.

Without ``java`` (or without ``mvn`` before the jars are cached) these fixtures skip the test and say how to
run it, except with ``CI=true``, where that is a failure. Tests using them are marked ``kafka`` automatically
(so ``-m "not kafka"`` deselects them); mark them explicitly anyway.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

import pytest

ROOT = Path(__file__).resolve().parents[1]
KAFKA_FIXTURES = frozenset({"kafka_bootstrap", "kafka_broker", "kafka_topic"})
HOW_TO_RUN = (
    "To run the Kafka tests, install a JDK >= 17 and Apache Maven "
    "(e.g. `apt-get install openjdk-17-jdk-headless maven`; the broker jars are fetched once with "
    "`python scripts/kafka_broker.py fetch`), or point KAFKA_BOOTSTRAP_SERVERS at a running Kafka 4.x "
    "broker (e.g. `docker compose up`)."
)


def _load_broker_module() -> ModuleType:
    """Import ``scripts/kafka_broker.py`` by path (``scripts/`` is not a package)."""
    name = "stream_logreg_scripts_kafka_broker"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / "kafka_broker.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1"}


def _unavailable(reason: str) -> NoReturn:
    """Skip with instructions — or fail under ``CI=true``, where Kafka tests must not silently vanish."""
    if _in_ci():
        pytest.fail(
            f"Kafka tests cannot run: {reason} (CI=true, so this is a failure). {HOW_TO_RUN}", pytrace=False
        )
    pytest.skip(f"Kafka tests need a broker: {reason}. {HOW_TO_RUN}")


def _java_available() -> bool:
    home = os.environ.get("JAVA_HOME")
    return bool(home and (Path(home) / "bin" / "java").is_file()) or shutil.which("java") is not None


def pytest_configure(config: pytest.Config) -> None:
    if not any(str(line).startswith("kafka") for line in config.getini("markers")):
        config.addinivalue_line("markers", "kafka: needs a real Apache Kafka broker")
    # kafka-python 3.0 loads protocol schemas via the legacy importlib.resources API (hundreds of warnings).
    for message in ("read_text is deprecated", "open_text is deprecated"):
        config.addinivalue_line("filterwarnings", f"ignore:{message}:DeprecationWarning")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        uses_kafka = KAFKA_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        if uses_kafka and item.get_closest_marker("kafka") is None:
            item.add_marker(pytest.mark.kafka)


@pytest.fixture(scope="session")
def _kafka_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any | None]]:
    """(bootstrap servers, KafkaBroker); the broker is None if ``$KAFKA_BOOTSTRAP_SERVERS`` is used."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if external:
        yield external, None
        return
    kb = _load_broker_module()
    if not _java_available():
        _unavailable("`java` was not found (PATH or JAVA_HOME)")
    if not kb.jars_cached() and shutil.which("mvn") is None:
        _unavailable(f"`mvn` was not found and the Kafka {kb.default_version()} jars are not cached yet")
    broker = kb.KafkaBroker(work_dir=tmp_path_factory.mktemp("kafka"))
    try:
        broker.start()
        yield broker.bootstrap_servers, broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(_kafka_service: tuple[str, Any | None]) -> str:
    """Bootstrap servers of the session's Kafka broker, e.g. ``127.0.0.1:40123``."""
    return _kafka_service[0]


@pytest.fixture(scope="session")
def kafka_broker(_kafka_service: tuple[str, Any | None]) -> Any:
    """The session's self-started ``KafkaBroker`` (for ``restart()``); skips with an external broker."""
    broker = _kafka_service[1]
    if broker is None:
        pytest.skip(
            "needs the self-started broker (it controls the broker process), but KAFKA_BOOTSTRAP_SERVERS "
            "names an external one; unset it to run this test"
        )
    return broker


def _wait_for_leaders(admin: Any, topic: str, partitions: int, timeout: float) -> None:
    """Poll topic metadata until ``topic`` reports ``partitions`` partitions, each with a leader."""
    deadline = time.monotonic() + timeout
    state = "not queried yet"
    while True:
        try:
            described = {t["name"]: t for t in admin.describe_topics([topic])}
            info = described.get(topic)
            if info is None:
                state = "missing from metadata"
            elif info.get("error_code", 0):
                state = f"topic error_code {info['error_code']}"
            else:
                parts = info.get("partitions") or []
                leaders = [p.get("leader_id", -1) for p in parts if not p.get("error_code", 0)]
                if len(parts) == partitions and len(leaders) == partitions and min(leaders) >= 0:
                    return
                state = f"partitions={len(parts)} leaders={leaders}"
        except Exception as exc:  # broker busy or reconnecting: keep polling until the deadline
            state = repr(exc)
        if time.monotonic() >= deadline:
            raise TimeoutError(f"topic {topic!r} not ready after {timeout:.0f}s: {state}")
        time.sleep(0.05)


@pytest.fixture
def kafka_topic(kafka_bootstrap: str, request: pytest.FixtureRequest) -> Iterator[Callable[..., str]]:
    """Factory: ``kafka_topic(partitions=1, config=None) -> name`` of a new, unique, ready topic."""
    from kafka import KafkaAdminClient

    admin: KafkaAdminClient | None = None
    created: list[str] = []
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", request.node.name).strip("-")[:100]

    def make(partitions: int = 1, *, config: dict[str, str] | None = None, timeout: float = 30.0) -> str:
        nonlocal admin
        if admin is None:
            admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="pytest-kafka-topic")
        name = f"test-{stem}-{uuid.uuid4().hex[:10]}"
        spec = {"num_partitions": partitions, "replication_factor": 1, "configs": dict(config or {})}
        admin.create_topics({name: spec})
        created.append(name)
        _wait_for_leaders(admin, name, partitions, timeout)
        return name

    yield make

    if admin is not None:
        try:
            if created:
                admin.delete_topics(created, raise_errors=False)
        except Exception:  # cleanup only (e.g. a test left the broker stopped)
            pass
        finally:
            admin.close()


@pytest.fixture(params=["kafka-python", "confluent"])
def kafka_client(request: pytest.FixtureRequest) -> str:
    """The learner's client backend (``LearnerConfig.kafka_client``): a test taking this fixture runs on
    both. Without confluent-kafka the confluent run is skipped (a failure under ``CI=true``)."""
    if request.param == "confluent":
        try:
            import confluent_kafka  # noqa: F401
        except ImportError:
            if _in_ci():
                pytest.fail("confluent-kafka is not installed (CI=true): pip install -e '.[dev]'")
            pytest.skip("confluent-kafka is not installed: pip install 'stream-logreg[confluent]'")
    return request.param
