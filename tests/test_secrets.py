"""Secrets never reach a log line, at any level, whoever logs them: our code or kafka-python (its admin
client logs its whole configuration at DEBUG). In-process checks of the redaction filter, then `replay` and
`consume` run for real against the test broker at DEBUG, in text and JSON, with dummy secrets."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from consumers import logs
from consumers.logs import RedactSecrets, add_secret, configure_logging, redact
from stream_logreg.codec import encode_event

ROOT = Path(__file__).resolve().parents[1]
SECRET = "S3cr3tDummy-" + uuid.uuid4().hex[:8]
OTHER = "Sasl-Pr0ducer-" + uuid.uuid4().hex[:8]


@pytest.fixture(autouse=True, scope="module")
def _forget_the_secrets_after() -> Iterator[None]:
    """The secrets are process-wide: those of this module must not redact other modules' log lines."""
    saved = logs._secrets
    yield
    logs._secrets = saved


def logged(fmt: str, emit) -> str:
    stream = io.StringIO()
    restore = configure_logging(fmt, "DEBUG", stream)
    try:
        emit()
    finally:
        restore()
    return stream.getvalue()


# -- in process --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_every_part_of_a_record_is_redacted(fmt: str) -> None:
    add_secret(SECRET)
    config = {"sasl_plain_password": SECRET, "security_protocol": "SASL_SSL"}

    def emit() -> None:
        kafka_log = logging.getLogger("kafka.admin.client")  # a library's logger, propagating to the root
        kafka_log.debug("Starting KafkaAdminClient with configuration: %s", config)
        logging.getLogger("consumers.x").info("plain %s and %r", SECRET, SECRET, extra={"password": SECRET,
                                                                                       "nested": config})
        try:
            raise RuntimeError(f"login failed for password {SECRET}")
        except RuntimeError:
            logging.getLogger("consumers.x").exception("it failed", stack_info=True)
        logging.getLogger("consumers.x").warning(f"an f-string with {SECRET} inside")

    out = logged(fmt, emit)
    assert SECRET not in out
    assert out.count("***") >= (5 if fmt == "text" else 7)  # the text format does not show extra fields
    assert "sasl_plain_password" in out and "SASL_SSL" in out  # only the value goes, not the context
    if fmt == "json":
        docs = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        assert docs[1]["password"] == "***" and "***" in docs[1]["nested"]
        assert "RuntimeError" in docs[2]["exc_info"] and "***" in docs[2]["exc_info"]


def test_quoted_forms_of_a_secret_are_redacted_too() -> None:
    tricky = "pa'ss\"wo\\rd\u00e9-" + uuid.uuid4().hex[:6]
    add_secret(tricky)
    for text in (tricky, repr(tricky), str({"p": tricky}), json.dumps(tricky), json.dumps({"p": tricky})):
        assert redact(text).count("***") == 1, text
        assert "pa'ss" not in redact(text) and "ss\\\"wo" not in redact(text)


@given(st.text(min_size=1, max_size=30), st.text(max_size=30), st.text(max_size=30))
@hyp_settings(max_examples=200, deadline=None)
def test_redaction_leaves_no_trace_of_any_secret(secret: str, before: str, after: str) -> None:
    saved = logs._secrets
    try:
        add_secret(secret)
        assert secret not in redact(before + secret + after) or secret in "***"
    finally:
        logs._secrets = saved


def test_the_filter_is_on_every_root_handler_and_removed_after() -> None:
    root = logging.getLogger()
    other = logging.StreamHandler(io.StringIO())
    root.addHandler(other)
    try:
        restore = configure_logging("text", "INFO", io.StringIO())
        assert all(any(isinstance(f, RedactSecrets) for f in h.filters) for h in root.handlers)
        restore()
        assert not any(isinstance(f, RedactSecrets) for f in other.filters)
    finally:
        root.removeHandler(other)


# -- the commands, against the real broker -----------------------------------------------------------------


def run_cli(args: list[str], extra_env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAM_LOGREG_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra_env)
    return subprocess.run([sys.executable, "-m", "consumers", *args], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


@pytest.mark.kafka
@pytest.mark.parametrize("fmt", ["text", "json"])
def test_replay_at_debug_logs_no_secret(kafka_bootstrap: str, kafka_topic, tmp_path: Path, fmt: str) -> None:
    topic = f"secrets-{uuid.uuid4().hex[:10]}"  # created by replay: its admin client logs its configuration
    data = tmp_path / "events.jsonl"
    data.write_text("".join(encode_event({"a": float(i)}, i % 2, id=f"e{i}").decode() + "\n"
                            for i in range(5)))
    proc = run_cli(["replay", "--topic", topic, "--file", str(data), "-q", "--bootstrap-servers",
                    kafka_bootstrap, "--log-level", "DEBUG", "--log-format", fmt],
                   {"STREAM_LOGREG_SASL_PLAIN_PASSWORD": SECRET})
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert "replayed 5 events" in proc.stdout
    # the configuration was logged (so the secrets were there to leak), and they did not
    assert "Starting KafkaAdminClient with configuration" in output
    assert "'sasl_plain_password': '***'" in output
    assert SECRET not in output
    if fmt == "json":
        assert all(json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{"))


@pytest.mark.kafka
@pytest.mark.parametrize("fmt", ["text", "json"])
def test_consume_at_debug_logs_no_secret(kafka_bootstrap: str, kafka_topic, tmp_path: Path, fmt: str) -> None:
    topic = kafka_topic(partitions=1)
    proc = run_cli(
        ["consume", "--topics", topic, "--bootstrap-servers", kafka_bootstrap, "--group-id",
         f"g-{uuid.uuid4().hex[:8]}", "--checkpoint-dir", str(tmp_path / "ckpt"), "--metrics-port", "0",
         "--max-idle-seconds", "2", "--log-level", "DEBUG", "--log-format", fmt,
         "--consumer-config", f"sasl_plain_password={SECRET}", "--producer-config",
         f"sasl.plain.password={OTHER}", "--print-config"],
        {},
    )
    # --print-config first: the resolved settings on stdout, secrets masked
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert SECRET not in proc.stdout and OTHER not in proc.stdout
    assert '"sasl_plain_password": "***"' in proc.stdout
    proc = run_cli(
        ["consume", "--topics", topic, "--bootstrap-servers", kafka_bootstrap, "--group-id",
         f"g-{uuid.uuid4().hex[:8]}", "--checkpoint-dir", str(tmp_path / "ckpt"), "--metrics-port", "0",
         "--max-idle-seconds", "2", "--log-level", "DEBUG", "--log-format", fmt,
         "--consumer-config", f"sasl_plain_password={SECRET}", "--producer-config",
         f"sasl.plain.password={OTHER}"],
        {"STREAM_LOGREG_SSL_PASSWORD": ""},
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert "kafka." in output  # kafka-python's DEBUG records were written
    assert SECRET not in output and OTHER not in output
