#!/usr/bin/env python3
"""A real single-node Apache Kafka 4.x broker (KRaft combined mode) for tests, CI and local runs.

The broker is assembled from Maven Central jars (no Docker, no Apache download mirrors) and runs as one JVM
that is both broker and controller, listening on loopback only.

Library use (tests import this file by path; ``scripts/`` is not a package)::

    with KafkaBroker() as broker:
        print(broker.bootstrap_servers)   # "127.0.0.1:<port>"
        broker.restart()                  # same data dir, same ports: committed offsets and logs survive

Command line::

    python scripts/kafka_broker.py fetch  # resolve the jars into the cache (needs mvn once; then offline)
    python scripts/kafka_broker.py run    # start, print KAFKA_BOOTSTRAP_SERVERS=..., up until SIGTERM/SIGINT

Environment:
    STREAM_LOGREG_KAFKA_CACHE    cache root (default ``~/.cache/stream-logreg``); jars go to
                                 ``<root>/kafka-<version>/libs``.
    STREAM_LOGREG_KAFKA_VERSION  Kafka version to use instead of :data:`KAFKA_VERSION`.

Only the standard library is required. If kafka-python is importable, readiness additionally waits for a
metadata response that lists the broker.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, NoReturn

__all__ = [
    "KAFKA_VERSION",
    "KafkaBroker",
    "KafkaBrokerError",
    "cache_root",
    "fetch_jars",
    "jars_cached",
    "libs_dir",
]

#: Kafka version used by default (resolves from Maven Central; 4.1.1 is the tested fallback).
KAFKA_VERSION = "4.2.1"

#: Log4j 2 version matching each supported Kafka release (the SLF4J 1.x binding ``log4j-slf4j-impl``).
LOG4J_VERSIONS: dict[str, str] = {
    "4.2.1": "2.25.4",
    "4.1.1": "2.24.3",
    "4.1.0": "2.24.3",
    "4.0.1": "2.24.3",
    "4.0.0": "2.24.3",
}

#: Maven 3.8 defaults to maven-dependency-plugin 2.8; pin a current one.
DEPENDENCY_PLUGIN_VERSION = "3.8.1"

DEFAULT_STARTUP_TIMEOUT = 90.0
DEFAULT_STOP_TIMEOUT = 30.0
DEFAULT_HEAP = "512m"

_MARKER = ".complete"
_HOST = "127.0.0.1"


class KafkaBrokerError(RuntimeError):
    """Raised when the jars cannot be resolved or the broker cannot be formatted, started or reached."""


# --------------------------------------------------------------------------------------------------
# Jar resolution
# --------------------------------------------------------------------------------------------------


def default_version() -> str:
    """The Kafka version to use: ``$STREAM_LOGREG_KAFKA_VERSION`` or :data:`KAFKA_VERSION`."""
    return os.environ.get("STREAM_LOGREG_KAFKA_VERSION") or KAFKA_VERSION


def cache_root() -> Path:
    """The cache root: ``$STREAM_LOGREG_KAFKA_CACHE`` or ``~/.cache/stream-logreg``."""
    env = os.environ.get("STREAM_LOGREG_KAFKA_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "stream-logreg"


def libs_dir(version: str | None = None, root: Path | None = None) -> Path:
    """Directory holding the broker jars for ``version``: ``<root>/kafka-<version>/libs``."""
    return (root or cache_root()) / f"kafka-{version or default_version()}" / "libs"


def _read_marker(libs: Path) -> list[str] | None:
    marker = libs.parent / _MARKER
    try:
        names = [line.strip() for line in marker.read_text().splitlines() if line.strip()]
    except OSError:
        return None
    return names or None


def jars_cached(version: str | None = None, root: Path | None = None) -> bool:
    """True if a complete download of the jars for ``version`` is in the cache (no Maven needed)."""
    libs = libs_dir(version, root)
    names = _read_marker(libs)
    return names is not None and all((libs / name).is_file() for name in names)


def _pom(version: str, log4j_version: str) -> str:
    """A pom whose runtime dependencies are exactly the broker, the storage tool and a Log4j 2 binding."""
    deps = [
        ("org.apache.kafka", "kafka_2.13", version),
        # SLF4J 1.x binding: Kafka 4.0-4.2 use slf4j-api 1.7.36 (not log4j-slf4j2-impl).
        ("org.apache.logging.log4j", "log4j-slf4j-impl", log4j_version),
        ("org.apache.logging.log4j", "log4j-api", log4j_version),
        ("org.apache.logging.log4j", "log4j-core", log4j_version),
    ]
    dep_xml = "\n".join(
        f"    <dependency><groupId>{g}</groupId><artifactId>{a}</artifactId>"
        f"<version>{v}</version></dependency>"
        for g, a, v in deps
    )
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0"
         xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
         xsi:schemaLocation="http://maven.apache.org/POM/4.0.0 http://maven.apache.org/xsd/maven-4.0.0.xsd">
  <modelVersion>4.0.0</modelVersion>
  <groupId>stream-logreg.local</groupId>
  <artifactId>kafka-broker-libs</artifactId>
  <version>{version}</version>
  <packaging>pom</packaging>
  <dependencies>
{dep_xml}
  </dependencies>
  <build>
    <plugins>
      <plugin>
        <groupId>org.apache.maven.plugins</groupId>
        <artifactId>maven-dependency-plugin</artifactId>
        <version>{DEPENDENCY_PLUGIN_VERSION}</version>
      </plugin>
    </plugins>
  </build>
</project>
"""


def fetch_jars(
    version: str | None = None,
    *,
    root: Path | None = None,
    log4j_version: str | None = None,
    mvn: str | None = None,
    quiet: bool = True,
) -> Path:
    """Resolve the broker jars with Maven into the cache and return the ``libs`` directory.

    Does nothing (and needs neither Maven nor the network) when a complete download is already cached. A
    download goes to a temporary directory that replaces ``libs`` only when Maven succeeded; then a marker
    file listing the jars is written. Concurrent callers are serialised with a file lock.
    """
    version = version or default_version()
    libs = libs_dir(version, root)
    if jars_cached(version, root):
        return libs
    if log4j_version is None:
        try:
            log4j_version = LOG4J_VERSIONS[version]
        except KeyError:
            raise KafkaBrokerError(
                f"no known Log4j version for Kafka {version}; pass log4j_version= "
                f"(known: {', '.join(sorted(LOG4J_VERSIONS))})"
            ) from None
    mvn = mvn or shutil.which("mvn")
    if not mvn:
        raise KafkaBrokerError(
            f"Apache Maven ('mvn') is needed once to download the Kafka {version} jars into {libs}; "
            "install it (e.g. apt-get install maven) or point KAFKA_BOOTSTRAP_SERVERS at a running broker"
        )
    base = libs.parent
    base.mkdir(parents=True, exist_ok=True)
    with open(base / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if jars_cached(version, root):  # another process finished while we waited
            return libs
        (base / _MARKER).unlink(missing_ok=True)
        pom = base / "pom.xml"
        pom.write_text(_pom(version, log4j_version))
        staging = Path(tempfile.mkdtemp(prefix="libs-", dir=base))
        try:
            cmd = [
                mvn, "-B", "-f", str(pom),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={staging}",
                "-DincludeScope=runtime",
            ]  # fmt: skip
            if quiet:
                cmd.insert(1, "-q")
            proc = subprocess.run(cmd, cwd=base, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            if not quiet and proc.stdout:
                sys.stderr.write(proc.stdout)
            jars = sorted(p.name for p in staging.glob("*.jar"))
            if proc.returncode != 0 or not any(n.startswith("kafka_2.13-") for n in jars):
                raise KafkaBrokerError(
                    f"mvn failed to resolve Kafka {version} (exit {proc.returncode}):\n"
                    f"{_tail(proc.stdout, 40)}"
                )
            if libs.exists():
                shutil.rmtree(libs)
            staging.rename(libs)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        tmp_marker = base / (_MARKER + ".tmp")
        tmp_marker.write_text("".join(f"{n}\n" for n in jars))
        tmp_marker.replace(base / _MARKER)
    return libs


# --------------------------------------------------------------------------------------------------
# Broker
# --------------------------------------------------------------------------------------------------

_LOG4J2_PROPERTIES = """\
name = stream-logreg-kafka
status = warn
# Keep logging through Kafka's own shutdown hook (controlled shutdown messages would be lost otherwise).
shutdownHook = disable
appender.file.type = RollingFile
appender.file.name = FILE
appender.file.fileName = ${sys:kafka.logs.dir}/server.log
appender.file.filePattern = ${sys:kafka.logs.dir}/server.log.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 50MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((_HOST, 0))
        return int(s.getsockname()[1])


def _tail(text: str, lines: int) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _tail_file(path: Path, lines: int = 60) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return "(missing)"
    return _tail(data, lines) or "(empty)"


def _error_lines(path: Path, offset: int = 0, limit: int = 20) -> str:
    """The first ``limit`` ERROR/FATAL/``Caused by:`` lines of ``path`` after byte ``offset``."""
    found: list[str] = []
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            for raw in f:
                line = raw.decode("utf-8", "replace").rstrip()
                if "] ERROR " in line or "] FATAL " in line or line.startswith("Caused by: "):
                    found.append(line)
                    if len(found) >= limit:
                        break
    except OSError:
        return ""
    return "\n".join(found)


def _pdeathsig_preexec() -> Callable[[], None] | None:
    """A ``preexec_fn`` making the kernel SIGTERM the child when the thread that started it dies (Linux).

    Everything is resolved here, in the parent: between fork and exec the child must not import or dlopen
    (another thread of the parent may have held those locks at fork time).
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig, sigterm = 1, int(signal.SIGTERM)

    def preexec() -> None:
        prctl(pr_set_pdeathsig, sigterm)

    return preexec


class KafkaBroker:
    """One Kafka broker+controller JVM on 127.0.0.1, formatted and started from cached Maven jars.

    Ports are picked on the first :meth:`start` and kept, together with the data directory, for every later
    start, so :meth:`restart` brings back the same cluster (topics, logs, committed offsets) at the same
    :attr:`bootstrap_servers`. Files live in ``work_dir`` (a fresh temporary directory unless given)::

        work_dir/data/             log.dirs (or ``data_dir`` when given; formatted once, reused if formatted)
        work_dir/logs/server.log   the broker's Log4j output
        work_dir/stdout.log        the JVM's stdout/stderr (errors before logging starts)
        work_dir/server.properties, work_dir/log4j2.properties

    Use as a context manager, or call :meth:`start` and :meth:`close`.
    """

    def __init__(
        self,
        *,
        version: str | None = None,
        libs: Path | str | None = None,
        work_dir: Path | str | None = None,
        data_dir: Path | str | None = None,
        port: int | None = None,
        controller_port: int | None = None,
        heap: str = DEFAULT_HEAP,
        java: str | None = None,
        startup_timeout: float = DEFAULT_STARTUP_TIMEOUT,
        extra_properties: Mapping[str, str] | None = None,
        kill_with_parent: bool = True,
    ) -> None:
        """Configure a broker; nothing is started or downloaded until :meth:`start`.

        Args:
            version: Kafka version (default ``$STREAM_LOGREG_KAFKA_VERSION`` or :data:`KAFKA_VERSION`).
            libs: a directory of jars to use instead of the cache (skips :func:`fetch_jars`).
            work_dir: directory for configs, logs and (by default) data; a new temp dir if None,
                removed again by :meth:`close`.
            data_dir: ``log.dirs``; formatted on first start unless it already holds ``meta.properties``.
            port: PLAINTEXT port (default: a free one); controller_port likewise for the CONTROLLER listener.
            heap: JVM ``-Xms``/``-Xmx``.
            java: the ``java`` executable (default: ``$JAVA_HOME/bin/java`` or ``java`` on PATH).
            startup_timeout: seconds to wait for readiness before failing with the log tails.
            extra_properties: extra/overriding ``server.properties`` entries.
            kill_with_parent: on Linux, have the kernel SIGTERM the JVM when the *thread* that called
                :meth:`start` exits (so a killed test run leaves no broker behind). Turn it off when starting
                the broker from a short-lived thread.
        """
        self.version = version or default_version()
        self._libs = Path(libs) if libs is not None else None
        self._owns_work_dir = work_dir is None
        self._work_dir_arg = Path(work_dir) if work_dir is not None else None
        self._work_dir: Path | None = None
        self._data_dir_arg = Path(data_dir).resolve() if data_dir is not None else None
        self.port = port
        self.controller_port = controller_port
        self.heap = heap
        self.java = java
        self.startup_timeout = startup_timeout
        self.extra_properties = dict(extra_properties or {})
        self.kill_with_parent = kill_with_parent
        self.cluster_id: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._stdout: IO[bytes] | None = None
        self._log_offset = 0
        self._lock = threading.Lock()

    # -- paths and properties

    @property
    def work_dir(self) -> Path:
        """Directory with configs and logs (created on first use)."""
        if self._work_dir is None:
            if self._work_dir_arg is not None:
                self._work_dir_arg.mkdir(parents=True, exist_ok=True)
                self._work_dir = self._work_dir_arg.resolve()
            else:
                self._work_dir = Path(tempfile.mkdtemp(prefix="stream-logreg-kafka-"))
        return self._work_dir

    @property
    def data_dir(self) -> Path:
        """The broker's ``log.dirs``."""
        return self._data_dir_arg or self.work_dir / "data"

    @property
    def log_dir(self) -> Path:
        """Where ``server.log`` is written."""
        return self.work_dir / "logs"

    @property
    def server_log(self) -> Path:
        """The broker's main Log4j log file."""
        return self.log_dir / "server.log"

    @property
    def stdout_log(self) -> Path:
        """The JVM's captured stdout and stderr (appended across restarts)."""
        return self.work_dir / "stdout.log"

    @property
    def bootstrap_servers(self) -> str:
        """``127.0.0.1:<port>`` — stable across :meth:`restart`."""
        if self.port is None:
            raise KafkaBrokerError("broker has not been started; its port is not known yet")
        return f"{_HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        """PID of the running JVM, or None."""
        return self._proc.pid if self.is_running() else None

    def is_running(self) -> bool:
        """True while the JVM process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def _java(self) -> str:
        if self.java:
            return self.java
        home = os.environ.get("JAVA_HOME")
        if home and (Path(home) / "bin" / "java").is_file():
            return str(Path(home) / "bin" / "java")
        found = shutil.which("java")
        if not found:
            raise KafkaBrokerError(
                "'java' not found: install a JDK >= 17 (e.g. apt-get install openjdk-17-jdk-headless)"
            )
        return found

    def _classpath(self) -> str:
        if self._libs is None:
            self._libs = fetch_jars(self.version)
        return f"{self._libs}/*"

    def server_properties(self) -> dict[str, str]:
        """The ``server.properties`` entries for this node (ports must be assigned)."""
        if self.port is None or self.controller_port is None:
            raise KafkaBrokerError("ports are assigned by start()")
        plain = f"PLAINTEXT://{_HOST}:{self.port}"
        ctrl = f"CONTROLLER://{_HOST}:{self.controller_port}"
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"{_HOST}:{self.controller_port}",
            "listeners": f"{plain},{ctrl}",
            "advertised.listeners": f"{plain},{ctrl}",
            "inter.broker.listener.name": "PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            "num.partitions": "1",
            # Single node: the internal topics' defaults (replication 3) would break consumer groups.
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "share.coordinator.state.topic.num.partitions": "1",
            "group.initial.rebalance.delay.ms": "0",
        }
        props.update(self.extra_properties)
        return props

    def _write_configs(self) -> Path:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        (self.work_dir / "log4j2.properties").write_text(_LOG4J2_PROPERTIES)
        path = self.work_dir / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in self.server_properties().items()))
        return path

    def _jvm_cmd(self, *jvm_options: str) -> list[str]:
        """``java <jvm_options> <logging properties> -cp <libs>/*``; append a main class and its args."""
        return [
            self._java(),
            *jvm_options,
            f"-Dkafka.logs.dir={self.log_dir}",
            f"-Dlog4j2.configurationFile={self.work_dir / 'log4j2.properties'}",
            "-Djava.awt.headless=true",
            "-cp",
            self._classpath(),
        ]

    def _run_tool(self, *args: str) -> str:
        # Short-lived tool JVM: C1 only and serial GC start ~0.4 s faster.
        cmd = [
            *self._jvm_cmd("-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC"),
            "kafka.tools.StorageTool",
            *args,
        ]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
        if proc.returncode != 0:
            raise KafkaBrokerError(
                f"StorageTool {args[0]} failed (exit {proc.returncode}):\n{_tail(proc.stdout, 40)}"
            )
        return proc.stdout

    def _format(self, server_properties: Path) -> None:
        if (self.data_dir / "meta.properties").exists():
            return
        if self.cluster_id is None:
            lines = [ln.strip() for ln in self._run_tool("random-uuid").splitlines() if ln.strip()]
            if not lines:
                raise KafkaBrokerError("StorageTool random-uuid printed nothing")
            self.cluster_id = lines[-1]
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._run_tool("format", "-t", self.cluster_id, "-c", str(server_properties), "--standalone")

    # -- lifecycle

    def start(self) -> KafkaBroker:
        """Format (first time only) and start the broker, returning when it serves metadata requests.

        Raises :class:`KafkaBrokerError` with the tails of ``server.log`` and ``stdout.log`` if the JVM exits
        or the broker is not ready within ``startup_timeout`` seconds.
        """
        with self._lock:
            if self.is_running():
                raise KafkaBrokerError(f"broker already running at {self.bootstrap_servers}")
            picked = self.port is None and self.controller_port is None
            self._pick_ports()
            try:
                self._start_once()
            except KafkaBrokerError:
                # Rare: a port we picked was taken before the JVM bound it. The standalone format records the
                # controller endpoint, so retry once with new ports and a fresh data dir.
                log = _error_lines(self.server_log, self._log_offset) + _tail_file(self.stdout_log)
                if not picked or self._data_dir_arg is not None or "Address already in use" not in log:
                    raise
                shutil.rmtree(self.data_dir, ignore_errors=True)
                self.port = self.controller_port = None
                self._pick_ports()
                self._start_once()
        return self

    def _pick_ports(self) -> None:
        if self.port is None:
            self.port = _free_port()
        while self.controller_port is None or self.controller_port == self.port:
            self.controller_port = _free_port()

    def _start_once(self) -> None:
        server_properties = self._write_configs()
        self._log_offset = self.server_log.stat().st_size if self.server_log.exists() else 0
        self._format(server_properties)
        jvm_options = (
            f"-Xms{self.heap}",
            f"-Xmx{self.heap}",
            "-server",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
        )
        cmd = [*self._jvm_cmd(*jvm_options), "kafka.Kafka", str(server_properties)]
        self._stdout = open(self.stdout_log, "ab")  # closed in stop()
        self._stdout.write(
            f"\n===== starting Kafka {self.version} at {time.strftime('%F %T')} =====\n".encode()
        )
        self._stdout.flush()
        self._proc = subprocess.Popen(
            cmd,
            cwd=self.work_dir,
            stdin=subprocess.DEVNULL,
            stdout=self._stdout,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # terminal Ctrl-C goes to us; we stop the JVM cleanly
            preexec_fn=_pdeathsig_preexec() if self.kill_with_parent else None,
        )
        try:
            self._wait_ready(time.monotonic() + self.startup_timeout)
        except BaseException:
            self.stop(timeout=10)
            raise

    def _wait_ready(self, deadline: float) -> None:
        """Poll a TCP connect to the PLAINTEXT port, then a metadata request, until ``deadline``."""
        assert self._proc is not None and self.port is not None
        last_error = "no attempt yet"
        tcp_ok = False
        while True:
            code = self._proc.poll()
            if code is not None:
                self._fail(f"the Kafka JVM exited with code {code} during startup")
            if not tcp_ok:
                try:
                    with socket.create_connection((_HOST, self.port), timeout=1.0):
                        tcp_ok = True
                except OSError as exc:
                    last_error = f"TCP connect: {exc}"
            if tcp_ok:
                try:
                    # Short attempts: a listening broker answers in milliseconds, and a JVM exit (or another
                    # process on the port) must be noticed promptly.
                    if _metadata_lists_broker(
                        self.bootstrap_servers, timeout=max(1.0, min(3.0, deadline - time.monotonic()))
                    ):
                        return
                    last_error = "metadata response listed no brokers"
                except Exception as exc:  # reported on timeout
                    last_error = f"metadata request: {exc!r}"
            if time.monotonic() >= deadline:
                self._fail(f"broker not ready after {self.startup_timeout:.0f}s ({last_error})")
            time.sleep(0.1)

    def _fail(self, message: str) -> NoReturn:
        errors = _error_lines(self.server_log, self._log_offset) or "(none)"
        raise KafkaBrokerError(
            f"{message}\n--- errors in {self.server_log} ---\n{errors}"
            f"\n--- {self.server_log} (tail) ---\n{_tail_file(self.server_log, 30)}"
            f"\n--- {self.stdout_log} (tail) ---\n{_tail_file(self.stdout_log, 30)}"
        )

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> int | None:
        """Stop the JVM: SIGTERM (controlled shutdown), SIGKILL after ``timeout`` s. Returns the exit code."""
        proc, self._proc = self._proc, None
        code: int | None = None
        if proc is not None:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    proc.wait()
            code = proc.returncode
        if self._stdout is not None:
            self._stdout.close()
            self._stdout = None
        return code

    def restart(self, stop_timeout: float = DEFAULT_STOP_TIMEOUT) -> KafkaBroker:
        """Stop and start again on the same data dir and ports (a broker bounce mid-stream)."""
        self.stop(timeout=stop_timeout)
        return self.start()

    def close(self) -> None:
        """Stop the broker and remove the work dir if this object created it."""
        self.stop()
        if self._owns_work_dir and self._work_dir is not None:
            shutil.rmtree(self._work_dir, ignore_errors=True)
            self._work_dir = None

    def __enter__(self) -> KafkaBroker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"KafkaBroker(version={self.version!r}, port={self.port}, {state}, work_dir={self._work_dir})"


def _metadata_lists_broker(bootstrap: str, timeout: float) -> bool:
    """True if a metadata request to ``bootstrap`` lists a broker (always True without kafka-python)."""
    try:
        from kafka import KafkaAdminClient
    except ImportError:
        return True
    ms = int(timeout * 1000)
    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="stream-logreg-readiness",
        request_timeout_ms=ms,
        bootstrap_timeout_ms=ms,
    )
    try:
        return bool(admin.describe_cluster().get("brokers"))
    finally:
        admin.close()


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def _cmd_fetch(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    cached = jars_cached(args.version)
    libs = fetch_jars(args.version, quiet=not args.verbose)
    n = len(list(libs.glob("*.jar")))
    how = "already cached" if cached else "resolved"
    print(f"Kafka {args.version}: {n} jars {how} in {libs} ({time.monotonic() - t0:.1f}s)", file=sys.stderr)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    stop = threading.Event()

    def handler(signum: int, frame: object) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)
    broker = KafkaBroker(
        version=args.version,
        work_dir=args.work_dir,
        data_dir=args.data_dir,
        port=args.port,
        controller_port=args.controller_port,
    )
    t0 = time.monotonic()
    try:
        broker.start()
        print(f"KAFKA_BOOTSTRAP_SERVERS={broker.bootstrap_servers}", flush=True)
        print(
            f"Kafka {broker.version} ready in {time.monotonic() - t0:.1f}s; logs in {broker.log_dir}; "
            "stop with SIGTERM or Ctrl-C",
            file=sys.stderr,
            flush=True,
        )
        while not stop.wait(0.5):
            if not broker.is_running():
                print(f"Kafka exited unexpectedly; see {broker.server_log}", file=sys.stderr)
                return 1
        return 0
    finally:
        broker.close() if args.work_dir is None else broker.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python scripts/kafka_broker.py {fetch,run}``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", default=default_version(), help="Kafka version (default: %(default)s)")
    sub = parser.add_subparsers(dest="command", required=True)
    p_fetch = sub.add_parser("fetch", help="resolve the broker jars into the cache")
    p_fetch.add_argument("-v", "--verbose", action="store_true", help="show Maven's output")
    p_fetch.set_defaults(func=_cmd_fetch)
    p_run = sub.add_parser("run", help="start a broker and keep it up until SIGTERM/SIGINT")
    p_run.add_argument("--port", type=int, default=None, help="PLAINTEXT port (default: a free one)")
    p_run.add_argument(
        "--controller-port", type=int, default=None, help="CONTROLLER port (default: a free one)"
    )
    p_run.add_argument(
        "--work-dir", type=Path, default=None, help="keep configs/logs/data here (default: temp dir)"
    )
    p_run.add_argument("--data-dir", type=Path, default=None, help="log.dirs (reused if already formatted)")
    p_run.set_defaults(func=_cmd_run)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except KafkaBrokerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
