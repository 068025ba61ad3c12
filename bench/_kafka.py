"""The Kafka broker of a benchmark: the one ``KAFKA_BOOTSTRAP_SERVERS`` names, or one started for it.

    with kafka_bootstrap() as bootstrap:
        ...  # "127.0.0.1:<port>"

Without ``KAFKA_BOOTSTRAP_SERVERS`` a real single-node broker is started from ``scripts/kafka_broker.py``
(jars from Maven Central, cached) and stopped when the block ends, however it ends.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]

__all__ = ["kafka_bootstrap", "stop_processes"]


def _broker_module() -> ModuleType:
    """``scripts/kafka_broker.py``, imported by path (``scripts/`` is not a package)."""
    spec = importlib.util.spec_from_file_location("bench_kafka_broker", ROOT / "scripts" / "kafka_broker.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@contextmanager
def kafka_bootstrap() -> Iterator[str]:
    """The bootstrap servers of ``KAFKA_BOOTSTRAP_SERVERS``, or of a broker started for the block."""
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if bootstrap:
        yield bootstrap
        return
    broker = _broker_module().KafkaBroker().start()
    try:
        yield broker.bootstrap_servers
    finally:
        broker.close()  # and its work directory


def stop_processes(procs: Iterable[subprocess.Popen], timeout: float = 30.0) -> None:
    """SIGTERM to each process still running, then wait up to ``timeout`` seconds for each; kill one that
    has not exited by then."""
    procs = list(procs)
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
