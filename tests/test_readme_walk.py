"""Walk the README as a new user would: its shell commands, exactly as written, in an empty directory.

The README marks what is walked; everything else in it is prose to this test. A marker is an HTML comment
on the line before a fenced block:

- ``<!-- walk -->`` before a ```` ```sh ```` block: run it (``bash -e -o pipefail``); it must exit 0.
- ``<!-- walk: until -->``: the same, retried until it exits 0 and shows its output (a user re-running a
  ``curl`` until the counters are there), up to a deadline.
- ``<!-- walk: service -->``: a long-running command (the learner); started in the background, it must
  still be running when the walk needs it, and exit 0 on SIGTERM.
- ``<!-- walk: after the service stops -->``: SIGTERM the service first (it must exit 0), then run.
- ``<!-- walk: broker -->``: commands of ``scripts/kafka_broker.py``, not run (the session's test broker
  stands in for them): each option they use must be one the script offers.
- ``<!-- walk: output -->`` before a ```` ```text ```` block right after a walked block: each of its lines
  must appear in that block's stdout, in order; ``…`` in a line stands for anything (ids, timings).

The commands run with the project's CLI as ``stream-logreg`` (this checkout's code) on ``PATH``. Two
addresses are substituted and nothing else: the broker's ``localhost:9092`` becomes the test broker's
``localhost:<port>``, and the metrics port 9108 a free one (given to the learner through
``STREAM_LOGREG_METRICS_PORT``, a setting the README's command leaves at its default; several test runs
share this machine).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCK = re.compile(r"<!-- walk(?:: (?P<kind>[a-z ]+))? -->\n```(?P<lang>\w+)\n(?P<body>.*?)\n```", re.S)
UNTIL_TIMEOUT = 90.0
STOP_TIMEOUT = 60.0


@dataclass
class Step:
    kind: str  # "run", "until", "service", "after the service stops", "broker"
    script: str
    expected: list[str]  # lines of the output block after it (may be empty)


def walk_steps(text: str = README) -> list[Step]:
    """The walked blocks of ``text``, in order, each with the output block that follows it."""
    steps: list[Step] = []
    previous_end = 0
    for match in BLOCK.finditer(text):
        kind = match["kind"] or "run"
        if kind == "output":
            assert match["lang"] == "text", "a walk output block is ```text"
            assert steps and not steps[-1].expected, "an output block must follow a walked ```sh block"
            between = text[previous_end:match.start()]
            assert not between.strip(), f"only blank lines between a walked block and its output: {between!r}"
            steps[-1].expected = match["body"].splitlines()
        else:
            assert match["lang"] == "sh", f"walked blocks are ```sh, not {match['lang']}"
            assert kind in ("run", "until", "service", "after the service stops", "broker"), kind
            steps.append(Step(kind, match["body"], []))
        previous_end = match.end()
    return steps


def missing_lines(expected: list[str], output: str) -> list[str]:
    """The expected lines not found in ``output`` (in order; ``…`` matches anything)."""
    lines = [line.rstrip() for line in output.splitlines()]
    at, missing = 0, []
    for want in (w.rstrip() for w in expected):
        if not want:
            continue
        pattern = re.compile(".*?".join(re.escape(part) for part in want.split("…")), re.S)
        for i in range(at, len(lines)):
            if pattern.fullmatch(lines[i]):
                at = i + 1
                break
        else:
            missing.append(want)
    return missing


def test_missing_lines_rule() -> None:
    out = "a 1\nid 01796 in checkpoints\nb\n"
    assert missing_lines(["a 1", "id … in checkpoints", "b"], out) == []
    assert missing_lines(["b", "a 1"], out) == ["a 1"]  # in order
    assert missing_lines(["a"], out) == ["a"]  # whole lines
    assert missing_lines(["id …"], "x\n") == ["id …"]


def test_the_readme_walks_every_command_a_new_user_runs() -> None:
    """The walk covers demo, report, inspect, score, replay and consume (a README edit that drops a marker
    fails here, not silently)."""
    steps = walk_steps()
    walked = "\n".join(s.script for s in steps if s.kind != "broker")
    for command in ("demo", "report", "inspect", "score", "replay", "consume"):
        assert re.search(rf"^stream-logreg {command}\b|\| stream-logreg {command}\b", walked, re.M), command
    assert [s.kind for s in steps].count("service") == 1
    assert any(s.kind == "broker" for s in steps)
    assert all(s.expected for s in steps if s.kind == "until"), "an until block needs its output"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_broker_commands_are_those_of_the_script() -> None:
    """The README's broker commands use only subcommands and options ``scripts/kafka_broker.py`` has."""
    lines = [line.split("#", 1)[0].strip() for s in walk_steps() if s.kind == "broker"
             for line in s.script.splitlines()]
    commands = [shlex.split(line) for line in lines if line]
    assert commands
    for words in commands:
        assert words[:2] == ["python", "scripts/kafka_broker.py"], words
        proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "kafka_broker.py"), words[2], "--help"],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        for option in (w.split("=", 1)[0] for w in words[3:] if w.startswith("--")):
            assert re.search(rf"(^|\s){re.escape(option)}\b", proc.stdout), (option, proc.stdout)
    run = next(w for w in commands if w[2] == "run")
    assert run[run.index("--port") + 1] == "9092"  # the address the walked commands use


@pytest.fixture
def walk_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a new user's shell: ``stream-logreg`` on PATH (this checkout), no settings."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "stream-logreg"
    script.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m consumers.cli \"$@\"\n")
    script.chmod(0o755)
    keep = ("STREAM_LOGREG_KAFKA_CACHE", "STREAM_LOGREG_KAFKA_VERSION")
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAM_LOGREG_") or k in keep}
    env["PATH"] = os.pathsep.join([str(bin_dir), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["COLUMNS"] = "110"
    return env


def _reset_broker(bootstrap: str) -> None:
    """The walk's topics and group start empty (the session broker is shared by the tests)."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        existing = set(admin.list_topics()) & {"events", "predictions", "dead-letters"}
        if existing:
            admin.delete_topics(list(existing), raise_errors=False)
            deadline = time.monotonic() + 30
            while set(admin.list_topics()) & existing and time.monotonic() < deadline:
                time.sleep(0.2)
        if "learners" in str(admin.list_groups()):
            admin.delete_groups(["learners"])
    finally:
        admin.close()


@pytest.mark.kafka
def test_walk_the_readme(kafka_bootstrap: str, walk_env: dict[str, str], tmp_path: Path) -> None:
    host, port = kafka_bootstrap.split(",")[0].rsplit(":", 1)
    broker = f"localhost:{port}" if host in ("127.0.0.1", "localhost") else kafka_bootstrap
    metrics_port = _free_port()
    _reset_broker(kafka_bootstrap)
    work = tmp_path / "walk"
    work.mkdir()
    env = {**walk_env, "STREAM_LOGREG_METRICS_PORT": str(metrics_port)}

    def substitute(script: str) -> str:
        return script.replace("localhost:9092", broker).replace("localhost:9108", f"localhost:{metrics_port}")

    def run(script: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-e", "-o", "pipefail", "-c", substitute(script)], cwd=work, env=env,
                              capture_output=True, text=True, timeout=120)

    service: subprocess.Popen | None = None
    service_log = tmp_path / "service.log"

    def service_tail() -> str:
        return service_log.read_text(errors="replace")[-3000:] if service_log.exists() else ""

    try:
        for step in walk_steps():
            where = f"README block:\n{step.script}"
            if step.kind == "broker":
                continue
            if step.kind == "service":
                assert service is None, "one service at a time"
                with open(service_log, "wb") as log_file:
                    service = subprocess.Popen(
                        ["bash", "-c", substitute(step.script)], cwd=work, env=env, stdout=log_file,
                        stderr=subprocess.STDOUT, start_new_session=True,
                    )
                continue
            if step.kind == "after the service stops":
                assert service is not None, "no service to stop"
                assert service.poll() is None, (
                    f"the service exited early ({service.returncode}):\n{service_tail()}")
                os.killpg(service.pid, signal.SIGTERM)
                rc = service.wait(timeout=STOP_TIMEOUT)
                assert rc == 0, f"the service exited {rc} on SIGTERM:\n{service_tail()}"
                service = None
            if step.kind == "until":
                deadline = time.monotonic() + UNTIL_TIMEOUT
                while True:
                    proc = run(step.script)
                    missing = (missing_lines(step.expected, proc.stdout) if proc.returncode == 0
                               else ["(exit 0)"])
                    if not missing:
                        break
                    assert service is None or service.poll() is None, (
                        f"the service exited ({service.returncode}) before: {where}\n{service_tail()}")
                    assert time.monotonic() < deadline, (
                        f"{where}\nnever showed {missing} in {UNTIL_TIMEOUT:.0f}s; last exit "
                        f"{proc.returncode}, stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}\n"
                        f"service:\n{service_tail()}")
                    time.sleep(0.5)
                continue
            proc = run(step.script)
            assert proc.returncode == 0, f"{where}\nexit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
            missing = missing_lines(step.expected, proc.stdout)
            assert not missing, f"{where}\ndid not show {missing}; stdout:\n{proc.stdout}"
        assert service is None, "the service was never stopped by the walk"
    finally:
        if service is not None and service.poll() is None:
            os.killpg(service.pid, signal.SIGKILL)
            service.wait(timeout=30)
