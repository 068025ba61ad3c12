"""Client settings pass-through (--consumer-config / --producer-config), bootstrap addresses, misspelled
STREAM_LOGREG_* variables and the vocabulary cap of `consume`: what reaches the Kafka clients and the model,
and what is refused (exit 2, a message naming the setting, never a traceback)."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st
from kafka import KafkaConsumer, KafkaProducer

from consumers import cli, settings
from consumers.client_config import (
    CONTROLLED,
    ClientConfigError,
    check_bootstrap,
    parse_client_config,
    split_pairs,
)

BASE = ["consume", "--topics", "events", "--checkpoint-dir", "/tmp/unused-ckpt"]


def print_config(capsys: pytest.CaptureFixture, *args: str) -> dict[str, Any]:
    assert cli.main([*BASE, *args, "--print-config"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def usage_error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    return captured.err


def learner_config(argv: list[str], environ: dict[str, str] | None = None) -> Any:
    values, _ = settings.resolve_settings(cli.build_parser().parse_args([*BASE, *argv]),
                                          settings.CONSUME_SETTINGS, environ or {})
    return settings.learner_config(values)


# -- pass-through ------------------------------------------------------------------------------------------


def test_flags_reach_the_consumer_and_the_producer(capsys: pytest.CaptureFixture) -> None:
    doc = print_config(capsys, "--consumer-config", "fetch.max.bytes=1048576", "--consumer-config",
                       "check_crcs=false", "--producer-config", "linger.ms=25", "--producer-config",
                       "acks=all", "--producer-config", "compression_type=gzip")
    assert doc["learner"]["consumer_settings"] == {"fetch_max_bytes": 1048576, "check_crcs": False}
    assert doc["learner"]["producer_settings"] == {"linger_ms": 25, "acks": -1, "compression_type": "gzip"}
    assert doc["sources"]["consumer_config"] == "flag"

    config = learner_config(["--consumer-config", "fetch.max.bytes=1048576", "--producer-config",
                             "linger_ms=25", "--session-timeout-ms", "6000"])
    consumer, producer = config.consumer_kwargs(), config.producer_kwargs()
    assert consumer["fetch_max_bytes"] == 1048576 and consumer["session_timeout_ms"] == 6000
    assert "linger_ms" not in consumer and producer["linger_ms"] == 25 and "fetch_max_bytes" not in producer
    assert consumer["enable_auto_commit"] is False  # still the learner's own


def test_environment_lists_comma_or_newline_separated() -> None:
    config = learner_config([], {
        "STREAM_LOGREG_CONSUMER_CONFIG": "fetch.max.bytes=2048, ssl_ciphers=ECDHE+AESGCM,AES256,"
                                         "request_timeout_ms=40000",
        "STREAM_LOGREG_PRODUCER_CONFIG": "linger_ms=5\nmax.request.size=2097152\n",
    })
    assert config.consumer_settings == {"fetch_max_bytes": 2048, "ssl_ciphers": "ECDHE+AESGCM,AES256",
                                        "request_timeout_ms": 40000}
    assert config.producer_settings == {"linger_ms": 5, "max_request_size": 2097152}
    # the flag wins over the environment variable, as for every setting
    config = learner_config(["--producer-config", "linger_ms=7"],
                            {"STREAM_LOGREG_PRODUCER_CONFIG": "linger_ms=5"})
    assert config.producer_settings == {"linger_ms": 7}


@pytest.mark.parametrize(("item", "client", "words"), [
    ("fetch_max_byte=1", "consumer", ["'fetch_max_byte'", "did you mean 'fetch_max_bytes'"]),
    ("linger.msec=1", "producer", ["'linger_msec'", "did you mean 'linger_ms'"]),
    ("linger_ms=5", "consumer", ["'linger_ms' is not a kafka-python consumer setting"]),
    ("fetch_max_bytes=lots", "consumer", ["fetch_max_bytes must be an integer", "'lots'"]),
    ("fetch_max_bytes=-1", "consumer", ["fetch_max_bytes must be an integer >= 0"]),
    ("check_crcs=maybe", "consumer", ["check_crcs must be true or false"]),
    ("acks=2", "producer", ["acks must be all, -1, 0 or 1"]),
    ("retries=nan", "producer", ["retries must be a number"]),
    ("api_version=two", "consumer", ["api_version must be a version like 2.5.0"]),
    ("no-equals-sign", "consumer", ["expected key=value"]),
    ("ssl_context=x", "consumer", ["'ssl_context' takes a Python object"]),
    ("group.id=other", "consumer", ["'group_id' is set by the learner itself", "--group-id"]),
    ("enable_auto_commit=true", "consumer", ["set by the learner itself", "once a checkpoint covers them"]),
    ("value_serializer=x", "producer", ["set by the learner itself", "raw bytes"]),
    ("transactional.id=t", "producer", ["set by the learner itself", "transactions"]),
])
def test_a_bad_client_setting_exits_2_naming_it(capsys: pytest.CaptureFixture, item: str, client: str,
                                                words: list[str]) -> None:
    err = usage_error(capsys, [*BASE, f"--{client}-config", item, "--print-config"])
    assert f"--{client}-config" in err
    for word in words:
        assert word in err, err


def test_every_controlled_key_is_refused_for_each_client_that_has_it() -> None:
    for client, cls in (("consumer", KafkaConsumer), ("producer", KafkaProducer)):
        for key in set(CONTROLLED) & set(cls.DEFAULT_CONFIG):
            with pytest.raises(ClientConfigError, match="set by the learner itself"):
                parse_client_config([f"{key}=x"], client)


def test_a_secret_value_is_never_shown_in_an_error(capsys: pytest.CaptureFixture) -> None:
    err = usage_error(capsys, [*BASE, "--consumer-config", "sasl_plain_password=", "--print-config"])
    assert "sasl_plain_password" in err
    err = usage_error(capsys, [*BASE, "--consumer-config", "sasl.plain.password", "--print-config"])
    assert "***" in err


def test_a_setting_given_by_its_flag_and_the_pass_through_is_refused(capsys: pytest.CaptureFixture) -> None:
    err = usage_error(capsys, [*BASE, "--session-timeout-ms", "6000", "--consumer-config",
                               "session.timeout.ms=7000", "--print-config"])
    assert "session_timeout_ms" in err and "--session-timeout-ms" in err


def test_library_use_refuses_controlled_and_unknown_keys() -> None:
    from consumers.config import ConfigError, LearnerConfig

    base = dict(bootstrap_servers="k:9092", topics=["t"], group_id="g", checkpoint_dir="/tmp/c")
    with pytest.raises(ConfigError, match="consumer_settings: 'enable_auto_commit' is set by the learner"):
        LearnerConfig(**base, consumer_settings={"enable_auto_commit": True})
    with pytest.raises(ConfigError, match=r"producer_settings: 'linger_msec' .*\(did you mean 'linger_ms'"):
        LearnerConfig(**base, producer_settings={"linger_msec": 1})


@given(st.sampled_from(sorted(k for k, v in KafkaConsumer.DEFAULT_CONFIG.items()
                              if type(v) in (int, bool) and k not in CONTROLLED)),
       st.integers(min_value=0, max_value=2**40), st.booleans())
@hyp_settings(max_examples=200, deadline=None)
def test_values_parse_by_the_type_of_the_default(key: str, number: int, flag: bool) -> None:
    """A value written as text parses back to the value, typed as kafka-python's default."""
    default = KafkaConsumer.DEFAULT_CONFIG[key]
    value: Any = flag if isinstance(default, bool) else number
    java = key.replace("_", ".")
    parsed = parse_client_config([f"{java}={str(value).lower()}"], "consumer")
    assert parsed == {key: value} and type(parsed[key]) is type(default)


@given(st.dictionaries(st.sampled_from(["linger_ms", "batch_size", "request_timeout_ms", "ssl_ciphers"]),
                       st.text(alphabet="abcXYZ019+:,", min_size=1, max_size=12), min_size=1))
def test_environment_list_splitting_keeps_commas_inside_values(pairs: dict[str, str]) -> None:
    text = ",".join(f"{k}={v}" for k, v in pairs.items())
    items = split_pairs(text)
    # every key=value item comes back whole, unless a value itself looks like ",key=..."
    if not any("=" in v for v in pairs.values()):
        assert items == [f"{k}={v}".strip() for k, v in pairs.items()]


# -- bootstrap addresses -----------------------------------------------------------------------------------


@pytest.mark.parametrize("servers", [" , ", "localhost", "localhost:", ":9092", "host:0", "host:65536",
                                     "host:http", "host:9092:1", "host name:9092", "[::1:9092", "a:9092,b"])
@pytest.mark.parametrize("command", ["consume", "replay"])
def test_bad_bootstrap_addresses_exit_2(capsys: pytest.CaptureFixture, servers: str, command: str) -> None:
    argv = [*BASE, "--print-config"] if command == "consume" else ["replay", "--topic", "t", "--limit", "1"]
    err = usage_error(capsys, [*argv, "--bootstrap-servers", servers])
    assert "--bootstrap-servers" in err


def test_good_bootstrap_addresses() -> None:
    assert check_bootstrap("a:1, b.example.com:65535,[::1]:9092,10.0.0.1:9092") == [
        "a:1", "b.example.com:65535", "[::1]:9092", "10.0.0.1:9092"]
    assert learner_config(["--bootstrap-servers", "k1:9092,k2:9093"]).bootstrap_servers == "k1:9092,k2:9093"


# -- misspelled environment variables ----------------------------------------------------------------------


def test_a_misspelled_variable_is_reported_with_the_closest_one(
        capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAM_LOGREG_BATCH_SIZ", "32")
    monkeypatch.setenv("STREAM_LOGREG_KAFKA_CACHE", "/tmp/x")  # read by the test broker: not a typo
    doc = print_config(capsys)
    assert doc["learner"]["batch_size"] == 1
    assert cli.main([*BASE, "--print-config"]) == 0
    err = capsys.readouterr().err
    assert "STREAM_LOGREG_BATCH_SIZ " in err and "did you mean STREAM_LOGREG_BATCH_SIZE" in err
    assert "KAFKA_CACHE" not in err
    assert settings.unknown_environment({"STREAM_LOGREG_BATCH_SIZ": "1", "PATH": "/bin",
                                         "STREAM_LOGREG_TOPICS": "t"}) == [
        ("STREAM_LOGREG_BATCH_SIZ", "STREAM_LOGREG_BATCH_SIZE")]


def test_the_warning_is_a_log_record(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="consumers.settings"):
        learner_config([], {"STREAM_LOGREG_GROUPID": "x"})
    assert any("STREAM_LOGREG_GROUPID" in r.getMessage() and "STREAM_LOGREG_GROUP_ID" in r.getMessage()
               for r in caplog.records)


# -- the vocabulary cap ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("argv", "expected"), [
    ([], 1_000_000), (["--max-vocabulary", "500"], 500), (["--max-vocabulary", "none"], None),
    (["--max-vocabulary", "0"], None), (["--max-vocabulary", "5", "--n-bits", "10"], None),
])
def test_vocabulary_cap_reaches_the_model(argv: list[str], expected: int | None) -> None:
    model = learner_config(argv).make_model()
    assert model.max_features == expected
    assert model.features.max_features == expected


def test_vocabulary_cap_drops_new_names_and_counts_them() -> None:
    model = learner_config(["--max-vocabulary", "3"]).make_model()
    for i in range(10):
        model.learn_one({f"f{i}": 1.0, "f0": 1.0}, i % 2)
    assert model.features.names == ["f0", "f1", "f2"]
    assert model.features.n_dropped == 7  # f3 .. f9, each seen once


def test_a_bad_vocabulary_cap_exits_2(capsys: pytest.CaptureFixture) -> None:
    err = usage_error(capsys, [*BASE, "--max-vocabulary", "-1", "--print-config"])
    assert "--max-vocabulary" in err and "no limit" in err
