"""docker-compose.yml and the Dockerfile cannot rot unnoticed.

The file is parsed and checked for coherence (services, healthchecks, dependencies, volumes, topic names,
settings), then the learner service's own command and environment run NATIVELY (the console script, or
``python -m consumers.cli``) against the test broker — only the bootstrap address, the checkpoint
directory and the metrics port are replaced — while the producer service's command replays events into it.
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
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from polling import read_topic

from consumers import cli, settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def env_of(service: str) -> dict[str, str]:
    env = SERVICES[service].get("environment", {})
    if isinstance(env, list):  # the "KEY=value" form
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def created_topics() -> dict[str, int]:
    """Topic → partitions, from the ``topics`` service's kafka-topics.sh commands."""
    script = "\n".join(SERVICES["topics"]["command"])
    topics = {}
    for line in script.splitlines():
        if "kafka-topics.sh" in line or "$$topics" in line:
            words = shlex.split(line)
            if "--create" in words:
                topics[words[words.index("--topic") + 1]] = int(words[words.index("--partitions") + 1])
    return topics


def volume_targets(service: str) -> dict[str, str]:
    """Mount target → named volume of a service (short syntax ``name:/path``)."""
    out = {}
    for item in SERVICES[service].get("volumes", []):
        source, target = item.split(":")[:2]
        out[target] = source
    return out


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


# ---------------------------------------------------------------------------------------------------------
# Static coherence


def test_services_exist() -> None:
    assert set(SERVICES) >= {"kafka", "topics", "learner", "producer"}


def test_broker_service() -> None:
    kafka = SERVICES["kafka"]
    assert re.fullmatch(r"apache/kafka:4\.\d+\.\d+", kafka["image"])
    env = env_of("kafka")
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["CLUSTER_ID"]  # required by the image in KRaft mode
    for key, value in env.items():  # one node: internal topics with a single replica
        if key.endswith(("_REPLICATION_FACTOR", "_MIN_ISR")):
            assert value == "1", key
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"  # topics come from the topics service
    listeners = dict(item.split("://") for item in env["KAFKA_LISTENERS"].split(","))
    advertised = dict(item.split("://") for item in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    protocols = dict(item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(listeners) == set(protocols)
    assert set(advertised) == set(listeners) - {env["KAFKA_CONTROLLER_LISTENER_NAMES"]}
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in advertised
    for name, address in advertised.items():
        assert listeners[name].rsplit(":", 1)[1] == address.rsplit(":", 1)[1]
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].endswith(":" + listeners["CONTROLLER"].rsplit(":", 1)[1])
    # Clients: containers use the internal address, the host the published one.
    internal = {a for a in advertised.values() if not a.startswith("localhost:")}
    for service in ("learner", "producer"):
        assert env_of(service)["STREAM_LOGREG_BOOTSTRAP_SERVERS"] in internal, service
    published = {p.split(":")[-1] for p in kafka.get("ports", [])}
    assert any(a.startswith("localhost:") and a.rsplit(":", 1)[1] in published for a in advertised.values())
    # Healthcheck: the broker answers API-versions requests on one of its listeners.
    test = " ".join(kafka["healthcheck"]["test"])
    assert "kafka-broker-api-versions.sh" in test
    port = re.search(r"--bootstrap-server\s+\S+:(\d+)", test).group(1)
    assert any(address.endswith(":" + port) for address in listeners.values())
    # Data survives a restart, with the learner's checkpoints (whose offsets refer to this log).
    assert env["KAFKA_LOG_DIRS"] in volume_targets("kafka")


def test_topics_service() -> None:
    topics = SERVICES["topics"]
    assert topics["image"] == SERVICES["kafka"]["image"]
    assert topics["depends_on"]["kafka"]["condition"] == "service_healthy"
    created = created_topics()
    assert created["events"] == 3
    learner = env_of("learner")
    needed = {*learner["STREAM_LOGREG_TOPICS"].split(","), learner["STREAM_LOGREG_PREDICTIONS_TOPIC"],
              learner["STREAM_LOGREG_DEAD_LETTER_TOPIC"]}
    assert needed <= set(created)
    script = "\n".join(topics["command"])
    for address in re.findall(r"--bootstrap-server\s+(\S+)", script):
        assert address == learner["STREAM_LOGREG_BOOTSTRAP_SERVERS"]


def test_learner_service() -> None:
    learner = SERVICES["learner"]
    assert learner["build"] == "."
    assert learner["command"] == ["consume"]
    assert learner["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert learner["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    env = env_of("learner")
    known = {s.env for s in settings.CONSUME_SETTINGS}
    assert set(env) <= known, set(env) - known
    # The environment is a valid configuration of `consume` (as the container will parse it).
    args = cli.build_parser().parse_args(learner["command"])
    values, sources = settings.resolve_settings(args, settings.CONSUME_SETTINGS, env)
    assert all(sources[s.name] == "env" for s in settings.CONSUME_SETTINGS if s.env in env)
    config = settings.learner_config(values)
    # `docker compose up --scale learner=N`: the state is in Kafka, no shared volume, no instance id or
    # host port that two replicas would share.
    assert config.state_store == "kafka"
    assert not volume_targets("learner")
    assert "STREAM_LOGREG_GROUP_INSTANCE_ID" not in env and "container_name" not in learner
    # The image's own default (docker run, one host) is the checkpoint directory, on its volume.
    assert "STREAM_LOGREG_CHECKPOINT_DIR=/var/lib/stream-logreg" in DOCKERFILE.replace(" ", "")
    # Metrics: published on a range of host ports (one per replica), and the healthcheck asks the
    # readiness endpoint on that port.
    port = str(values["metrics_port"])
    ranges = [p.rsplit(":", 1) for p in learner["ports"]]
    assert any(target == port and "-" in host for host, target in ranges)
    test = " ".join(learner["healthcheck"]["test"])
    assert f":{port}/ready" in test
    assert "stop_grace_period" in learner  # SIGTERM: final checkpoint and commit


def test_producer_service() -> None:
    producer = SERVICES["producer"]
    command = producer["command"]
    assert command[0] == "replay"
    args = cli.build_parser().parse_args(command)
    assert args.topic in env_of("learner")["STREAM_LOGREG_TOPICS"].split(",")
    assert args.topic in created_topics()
    known = {s.env for s in (*settings.CONNECTION_SETTINGS, *settings.COMMON_SETTINGS)}
    assert set(env_of("producer")) <= known
    assert producer["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    assert producer.get("image") == SERVICES["learner"].get("image")


def test_named_volumes_are_declared() -> None:
    for name in SERVICES:
        for source in volume_targets(name).values():
            if not source.startswith((".", "/")):
                assert source in COMPOSE["volumes"], (name, source)


def test_dockerignore_keeps_the_build_context_small() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", "build", "checkpoints", "**/__pycache__"} <= ignored
    # nothing the build copies is ignored
    assert not ignored & {"stream_logreg", "consumers", "pyproject.toml", "setup.py", "README.md"}


def test_dockerfile_healthcheck_is_a_stdlib_probe_of_the_metrics_port() -> None:
    (check,) = [rest for kw, rest in dockerfile_instructions() if kw == "HEALTHCHECK"]
    probe = orjson.loads(check[check.index("CMD") + 3:].strip())
    assert probe[:2] == ["python", "-c"]
    assert "urllib.request" in probe[2] and "/live" in probe[2] and "STREAM_LOGREG_METRICS_PORT" in probe[2]
    compile(probe[2], "healthcheck", "exec")  # valid Python


def test_dockerfile() -> None:
    instructions = dockerfile_instructions()
    froms = [rest for kw, rest in instructions if kw == "FROM"]
    assert all(f.startswith("python:3.11-slim") for f in froms)
    assert any("gcc" in rest for kw, rest in instructions if kw == "RUN")
    assert ("ENTRYPOINT", '["stream-logreg"]') in instructions
    assert ("CMD", '["consume"]') in instructions
    user = [rest for kw, rest in instructions if kw == "USER"]
    assert user and not user[-1].startswith(("root", "0"))
    assert ("EXPOSE", "9108") in instructions
    volumes = [rest for kw, rest in instructions if kw == "VOLUME"]
    assert volumes == ['["/var/lib/stream-logreg"]']
    # Everything the build copies exists in the repository (README.md: pyproject's readme).
    missing = []
    for kw, rest in instructions:
        if kw == "COPY" and not rest.startswith("--from"):
            for source in rest.split()[:-1]:
                if not list(ROOT.glob(source)):
                    missing.append(source)
    if missing == ["README.md"]:
        pytest.xfail("README.md does not exist yet: `pip install .` (and the image build) need it")
    assert not missing



def test_the_image_and_the_wheel_carry_every_module() -> None:
    """Every Python package in the repository is in pyproject's package list (else a wheel, and the image
    built from one, lacks it), and every module and compiled source of them is copied into the image."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    packages = {str(p.parent.relative_to(ROOT)).replace("/", ".")
                for top in ("stream_logreg", "consumers") for p in (ROOT / top).rglob("__init__.py")}
    assert packages <= listed, f"not in pyproject's packages: {sorted(packages - listed)}"
    copied = [source for kw, rest in dockerfile_instructions()
              if kw == "COPY" and not rest.startswith("--from") for source in rest.split()[:-1]]
    needed = [p for top in ("stream_logreg", "consumers") for ext in ("py", "pyx", "pxd", "h")
              for p in (ROOT / top).rglob(f"*.{ext}") if "__pycache__" not in p.parts]

    def is_copied(path: Path) -> bool:
        rel = path.relative_to(ROOT)
        return any(rel.match(s) if not s.endswith("/") else str(rel).startswith(s) for s in copied)

    missing = sorted(str(p.relative_to(ROOT)) for p in needed if not is_copied(p))
    assert not missing, f"the Dockerfile does not copy {missing}"

# ---------------------------------------------------------------------------------------------------------
# The services' commands, run natively against the test broker


def cli_command() -> list[str]:
    """The installed ``stream-logreg`` console script, else ``python -m consumers.cli``."""
    script = Path(sys.executable).parent / "stream-logreg"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "consumers.cli"]


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAM_LOGREG_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


def state_of(bootstrap: str, group: str, ckpt: Path) -> Any:
    """The newest checkpoint of the learner's state in Kafka (its key: its default instance id)."""
    from consumers.source import default_instance_id
    from consumers.state.kafka_store import KafkaStore

    key = default_instance_id(ckpt)
    with KafkaStore(bootstrap, key=key, group_id=group, read_only=True, timeout=30) as store:
        return store.latest()


def wait_for_state(bootstrap: str, group: str, ckpt: Path, condition: Callable[[Any], bool],
                   alive: Callable[[], bool], timeout: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout
    found = None
    while time.monotonic() < deadline and alive():
        found = state_of(bootstrap, group, ckpt)
        if found is not None and condition(found):
            return found
        time.sleep(0.2)
    raise AssertionError(f"the learner's state never got there (last: {found and found.metadata})")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.kafka
def test_learner_and_producer_commands_against_the_broker(kafka_bootstrap: str, tmp_path: Path) -> None:
    from kafka import KafkaAdminClient, KafkaProducer

    topics = created_topics()
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    # Topic names as in the file; with an external broker (or names already taken), a unique suffix, so
    # that the test never touches someone's data.
    external = bool(os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip())
    taken = set(topics) & set(admin.list_topics())
    suffix = f"-{uuid.uuid4().hex[:8]}" if external or taken else ""
    rename = {name: name + suffix for name in topics}
    admin.create_topics(
        {rename[name]: {"num_partitions": n, "replication_factor": 1} for name, n in topics.items()}
    )
    admin.wait_for_topics(list(rename.values()), timeout_ms=30_000)

    ckpt = tmp_path / "checkpoints"
    learner_env = env_of("learner")
    learner_env.update(
        STREAM_LOGREG_BOOTSTRAP_SERVERS=kafka_bootstrap,
        STREAM_LOGREG_CHECKPOINT_DIR=str(ckpt),
        STREAM_LOGREG_METRICS_PORT=str(free_port()),
        STREAM_LOGREG_GROUP_ID=learner_env["STREAM_LOGREG_GROUP_ID"] + suffix,
    )
    for key in ("STREAM_LOGREG_TOPICS", "STREAM_LOGREG_PREDICTIONS_TOPIC", "STREAM_LOGREG_DEAD_LETTER_TOPIC"):
        learner_env[key] = ",".join(rename[t] for t in learner_env[key].split(","))
    group = learner_env["STREAM_LOGREG_GROUP_ID"]
    events, predictions, dead_letters = (learner_env[k] for k in (
        "STREAM_LOGREG_TOPICS", "STREAM_LOGREG_PREDICTIONS_TOPIC", "STREAM_LOGREG_DEAD_LETTER_TOPIC"))

    producer_command = list(SERVICES["producer"]["command"])
    i = producer_command.index("--topic") + 1
    producer_command[i] = rename[producer_command[i]]
    producer_env = {**env_of("producer"), "STREAM_LOGREG_BOOTSTRAP_SERVERS": kafka_bootstrap}
    n = 60

    log_path = tmp_path / "learner.log"
    with open(log_path, "wb") as log_file:
        learner = subprocess.Popen([*cli_command(), *SERVICES["learner"]["command"]],
                                   env=cli_env(**learner_env), stdout=subprocess.DEVNULL, stderr=log_file)
        try:
            produced = subprocess.run([*cli_command(), *producer_command, "--limit", str(n)],
                                      env=cli_env(**producer_env), capture_output=True, timeout=120)
            assert produced.returncode == 0, produced.stderr.decode()
            assert f"replayed {n} events to topic {events}" in produced.stdout.decode()

            checkpoint = wait_for_state(kafka_bootstrap, group, ckpt, lambda c: c.model.n_samples_seen == n,
                                        alive=lambda: learner.poll() is None)
            assert sum(checkpoint.metadata["offsets"].values()) == n

            # A message that cannot be decoded goes to the dead-letter topic; an unlabelled event is scored
            # onto the predictions topic.
            producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
            producer.send(events, value=b"not json", key=b"junk")
            producer.send(events, value=b'{"x": {"https": 1.0, "long_url": 0.0}, "id": "to-score"}', key=b"s")
            producer.flush()
            producer.close()
            (dead,) = read_topic(kafka_bootstrap, dead_letters, 1)
            assert dead.value == b"not json"
            assert dict(dead.headers)["reason"] == b"not_json"
            (prediction,) = read_topic(kafka_bootstrap, predictions, 1)
            doc = orjson.loads(prediction.value)
            assert doc["id"] == "to-score" and 0.0 < doc["p"] < 1.0

            wait_for_state(kafka_bootstrap, group, ckpt,
                           lambda c: sum(c.metadata["offsets"].values()) == n + 2,
                           alive=lambda: learner.poll() is None)
            learner.send_signal(signal.SIGTERM)  # docker stop
            rc = learner.wait(timeout=60)
        finally:
            if learner.poll() is None:
                learner.kill()
                learner.wait()
            admin.delete_topics(list(rename.values()), raise_errors=False)
            admin.close()
    log_text = log_path.read_text()
    assert rc == 0, log_text
    latest = state_of(kafka_bootstrap, group, ckpt)
    assert not ckpt.exists()  # the state is in Kafka only
    assert latest.model.n_samples_seen == n  # the junk and the unlabelled event are not learned
    assert sum(latest.metadata["offsets"].values()) == n + 2
    # STREAM_LOGREG_LOG_FORMAT=json: every line the service logged is a JSON object.
    lines = [line for line in log_text.splitlines() if line.strip()]
    assert lines
    assert all(isinstance(orjson.loads(line), dict) for line in lines), log_text[:2000]
