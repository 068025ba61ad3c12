"""The ``stream-logreg`` command line, end to end: every subcommand runs in-process through ``main([...])``
and, where the process boundary matters (exit status, stdin/stdout pipes, no network), as the console script.

Broker tests are marked ``kafka`` and use the session broker of ``tests/conftest.py``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import os
import signal
import struct
import subprocess
import sys
import threading
import tomllib
import uuid
from pathlib import Path

import pytest
from polling import read_topic, wait_for, wait_for_checkpoint
from river import datasets

from consumers import cli, demo, logs, report, settings
from stream_logreg import OnlineLogisticRegression, optim
from stream_logreg.checkpoints import DirectoryStore
from stream_logreg.codec import Event, JsonCodec, encode_event

ROOT = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PHISHING = list(datasets.Phishing())


def cli_command() -> list[str]:
    """The installed ``stream-logreg`` console script of this interpreter's environment, else
    ``python -m consumers.cli`` (a source checkout without ``pip install -e .``)."""
    script = Path(sys.executable).parent / "stream-logreg"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "consumers.cli"]


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAM_LOGREG_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


def run_cli(*args: str, stdin: bytes | None = None, cwd: Path | None = None, timeout: float = 120,
            **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*cli_command(), *args], input=stdin, capture_output=True, cwd=cwd, env=cli_env(**env),
        timeout=timeout,
    )


def offline_model(n: int = len(PHISHING), batch_size: int = 1, **kwargs) -> OnlineLogisticRegression:
    """The model the demo should end with: the same stream learned in one go, outside the CLI (the CLI
    standardizes by default with the default optimizer and a vocabulary)."""
    kwargs.setdefault("scale", "optimizer" not in kwargs and kwargs.get("n_bits") is None)
    model = OnlineLogisticRegression(**kwargs)
    events = PHISHING[:n]
    if batch_size == 1:
        for x, y in events:
            model.learn_one(x, y)
    else:
        for i in range(0, n, batch_size):
            chunk = events[i : i + batch_size]
            model.learn_rows([x for x, _ in chunk], [y for _, y in chunk])
    return model


def assert_same_model(a: OnlineLogisticRegression, b: OnlineLogisticRegression) -> None:
    assert a.n_samples_seen == b.n_samples_seen
    assert a.features.names == b.features.names
    assert a.coef.tobytes() == b.coef.tobytes()
    assert a.intercept == b.intercept
    for x, _ in PHISHING[:50]:
        assert a.predict_proba_one(x) == b.predict_proba_one(x)


@pytest.fixture(autouse=True)
def _no_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests set the STREAM_LOGREG_* variables they need; none leak in from the outer environment."""
    for key in list(os.environ):
        if key.startswith("STREAM_LOGREG_") and key not in ("STREAM_LOGREG_KAFKA_CACHE",
                                                            "STREAM_LOGREG_KAFKA_VERSION"):
            monkeypatch.delenv(key)


@pytest.fixture
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint directory after one full ``demo`` run on Phishing (with a learning curve)."""
    d = tmp_path_factory.mktemp("demo")
    rc = cli.main(["demo", "--checkpoint-dir", str(d / "ckpt"), "--curve", str(d / "run.csv"), "-q"])
    assert rc == 0
    return d


# ---------------------------------------------------------------------------------------------------------
# demo


def test_demo_console_script_learns_the_dataset_without_network(tmp_path: Path) -> None:
    # No proxy and an unroutable one: the bundled dataset must not need the network.
    proc = run_cli("demo", cwd=tmp_path, http_proxy="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9")
    assert proc.returncode == 0, proc.stderr.decode()
    out, err = proc.stdout.decode(), proc.stderr.decode()
    assert "progressive log loss" in out and "progressive accuracy" in out
    assert "1,250 of 1,250" in out
    # stderr is not a terminal here: plain progress lines, no carriage returns.
    assert "events" in err and "\r" not in err
    checkpoint = DirectoryStore(tmp_path / "checkpoints").latest()  # the default --checkpoint-dir
    assert checkpoint is not None
    assert checkpoint.model.n_samples_seen == len(PHISHING)
    assert checkpoint.metadata["dataset"] == "phishing"
    assert checkpoint.metadata["position"] == len(PHISHING)
    assert_same_model(checkpoint.model, offline_model())


def test_demo_checkpoint_equals_an_offline_model(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    d = tmp_path / "ckpt"
    assert cli.main(["demo", "--checkpoint-dir", str(d), "--checkpoint-every", "400", "-q"]) == 0
    store = DirectoryStore(d)
    checkpoint = store.latest()
    assert checkpoint.model.n_samples_seen == len(PHISHING)
    assert_same_model(checkpoint.model, offline_model())
    positions = sorted(store.load(info.id).metadata["position"] for info in store.list())
    assert positions == [400, 800, 1200, 1250]
    # The summary's metrics are those of progressive validation, recomputed here.
    model, loss, hits = OnlineLogisticRegression(scale=True), 0.0, 0  # the CLI's default
    for x, y in PHISHING:
        p = model.predict_proba_one(x)[True]
        loss -= math.log(max(p if y else 1.0 - p, 1e-15))
        hits += (p > 0.5) == y  # the consumer's definition (consumers.stats.progressive_metrics)
        model.learn_one(x, y)
    out = capsys.readouterr().out
    assert f"progressive log loss  {loss / len(PHISHING):.4f}" in out
    assert f"progressive accuracy  {hits / len(PHISHING):.2%}" in out


def test_demo_resumes_without_learning_anything_twice(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    d = str(tmp_path / "ckpt")
    assert cli.main(["demo", "--checkpoint-dir", d, "--n", "600", "--checkpoint-every", "500", "-q"]) == 0
    assert DirectoryStore(d).latest().model.n_samples_seen == 600
    capsys.readouterr()

    # Resumed at 600: the remaining 650 events, and the result is that of one uninterrupted run.
    assert cli.main(["demo", "--checkpoint-dir", d, "-q"]) == 0
    captured = capsys.readouterr()
    assert "resumed from checkpoint" in captured.err and "skipping the 600 events" in captured.err
    assert "650 learned in this run" in captured.out
    assert_same_model(DirectoryStore(d).latest().model, offline_model())

    # Everything is covered: a third run learns nothing.
    latest_id = DirectoryStore(d).latest().id
    assert cli.main(["demo", "--checkpoint-dir", d, "-q"]) == 0
    captured = capsys.readouterr()
    assert "resumed" in captured.err and "nothing left to learn" in captured.out
    assert "throughput" not in captured.out
    checkpoint = DirectoryStore(d).latest()
    assert checkpoint.model.n_samples_seen == len(PHISHING)
    assert checkpoint.id == latest_id  # nothing new to save


def test_demo_resume_continues_the_progressive_metrics(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    d = str(tmp_path / "ckpt")
    assert cli.main(["demo", "--checkpoint-dir", str(tmp_path / "once"), "-q"]) == 0
    once = capsys.readouterr().out
    assert cli.main(["demo", "--checkpoint-dir", d, "--n", "700", "-q"]) == 0
    assert cli.main(["demo", "--checkpoint-dir", d, "-q"]) == 0
    twice = capsys.readouterr().out
    pick = [line for line in once.splitlines() if line.startswith("progressive")]
    assert pick and all(line in twice for line in pick)


def test_demo_minibatches(tmp_path: Path) -> None:
    d = str(tmp_path / "ckpt")
    # Stopped after 296 = 37 batches of 8: resuming cuts the same batches as one uninterrupted run.
    assert cli.main(["demo", "--checkpoint-dir", d, "--batch-size", "8", "--n", "296",
                     "--checkpoint-every", "100", "-q"]) == 0
    positions = sorted(DirectoryStore(d).load(i.id).metadata["position"] for i in DirectoryStore(d).list())
    assert positions == [104, 200, 296]  # checkpoints at batch boundaries only
    assert cli.main(["demo", "--checkpoint-dir", d, "--batch-size", "8", "-q"]) == 0
    assert_same_model(DirectoryStore(d).latest().model, offline_model(batch_size=8))


def test_demo_model_options(tmp_path: Path) -> None:
    d = str(tmp_path / "ckpt")
    args = ["--optimizer", "sgd", "--lr", "0.5", "--l2", "0.001", "--n-bits", "6"]
    assert cli.main(["demo", "--checkpoint-dir", d, "-q", *args]) == 0
    model = DirectoryStore(d).latest().model
    assert model.config()["optimizer"] == {"name": "SGD", "lr": 0.5, "power_t": 0.0}
    assert model.l2 == 0.001 and model.n_bits == 6
    assert_same_model(model, offline_model(optimizer=optim.SGD(0.5), l2=0.001, n_bits=6))
    # FTRL's own L1/L2; --lr is its alpha.
    d2 = str(tmp_path / "ftrl")
    args = ["--optimizer", "ftrl", "--lr", "0.3", "--l1", "0.5", "--l2", "1"]
    assert cli.main(["demo", "--checkpoint-dir", d2, "-q", *args]) == 0
    assert DirectoryStore(d2).latest().model.config()["optimizer"] == {
        "name": "FTRL", "alpha": 0.3, "beta": 0.5, "l1": 0.5, "l2": 1.0
    }


def test_demo_refuses_checkpoints_of_other_options(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    d = str(tmp_path / "ckpt")
    assert cli.main(["demo", "--checkpoint-dir", d, "--n", "100", "-q"]) == 0
    capsys.readouterr()
    assert cli.main(["demo", "--checkpoint-dir", d, "--optimizer", "adagrad", "-q"]) == 2
    err = capsys.readouterr().err
    assert "optimizer.name 'Mixture' there, 'AdaGrad' here" in err and "--fresh" in err
    assert cli.main(["demo", "--checkpoint-dir", d, "--dataset", "bananas", "-q"]) == 2
    assert "another run" in capsys.readouterr().err
    # --fresh starts over in the same directory.
    assert cli.main(["demo", "--checkpoint-dir", d, "--optimizer", "adagrad", "--n", "50", "--fresh",
                     "-q"]) == 0
    assert DirectoryStore(d).latest().model.n_samples_seen == 50


@pytest.mark.parametrize("dataset", ["bananas", "sea", "hyperplane"])
def test_demo_other_datasets(tmp_path: Path, dataset: str) -> None:
    d = str(tmp_path / "ckpt")
    assert cli.main(["demo", "--dataset", dataset, "--n", "300", "--checkpoint-dir", d, "-q"]) == 0
    checkpoint = DirectoryStore(d).latest()
    assert checkpoint.model.n_samples_seen == 300
    assert checkpoint.metadata["dataset"] == dataset


def test_demo_synthetic_seed_is_part_of_the_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    d = str(tmp_path / "ckpt")
    sea = ["demo", "--dataset", "sea", "--checkpoint-dir", d, "-q"]
    assert cli.main([*sea, "--n", "200", "--seed", "1"]) == 0
    assert cli.main([*sea, "--n", "400", "--seed", "2"]) == 2
    assert "another run" in capsys.readouterr().err


def curve_rows(path: Path) -> list[dict[str, str]]:
    """The data rows of a ``demo --curve`` CSV (its ``#`` note lines skipped)."""
    with open(path, newline="") as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


def test_demo_curve_csv(demo_dir: Path) -> None:
    rows = curve_rows(demo_dir / "run.csv")
    assert tuple(rows[0]) == demo.CURVE_COLUMNS
    assert [int(r["event"]) for r in rows] == list(range(1, len(PHISHING) + 1))
    assert [int(r["y"]) for r in rows] == [int(y) for _, y in PHISHING]
    model = OnlineLogisticRegression(scale=True)  # the CLI's default
    for row, (x, y) in zip(rows[:100], PHISHING, strict=False):
        assert float(row["p"]) == model.predict_proba_one(x)[True]
        model.learn_one(x, y)
    acc = sum((float(r["p"]) > 0.5) == bool(int(r["y"])) for r in rows) / len(rows)
    assert float(rows[-1]["accuracy"]) == pytest.approx(acc)
    window = rows[-100:]
    assert float(rows[-1]["rolling_accuracy"]) == pytest.approx(
        sum((float(r["p"]) > 0.5) == bool(int(r["y"])) for r in window) / 100
    )


def test_demo_resumed_curve_continues_the_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A resumed run appends to its curve: the rows are those of one uninterrupted run (the rolling window
    refilled from the file), with a note where it resumed; and `report` draws it."""
    once = tmp_path / "once.csv"
    assert cli.main(["demo", "--checkpoint-dir", str(tmp_path / "c1"), "--curve", str(once), "-q"]) == 0
    run, ckpt = tmp_path / "run.csv", str(tmp_path / "c2")
    assert cli.main(["demo", "--checkpoint-dir", ckpt, "--n", "700", "--curve", str(run), "-q"]) == 0
    assert cli.main(["demo", "--checkpoint-dir", ckpt, "--curve", str(run), "-q"]) == 0
    assert cli.main(["demo", "--checkpoint-dir", ckpt, "--curve", str(run), "-q"]) == 0  # nothing left
    resumed, whole = curve_rows(run), curve_rows(once)
    assert [r["event"] for r in resumed] == [r["event"] for r in whole]
    for a, b in zip(resumed, whole, strict=True):
        assert (a["y"], a["p"], a["accuracy"]) == (b["y"], b["p"], b["accuracy"])
        for column in ("log_loss", "rolling_log_loss", "rolling_accuracy"):
            assert float(a[column]) == pytest.approx(float(b[column]), rel=1e-12, abs=1e-12)
    notes = [line for line in run.read_text().splitlines() if line.startswith("#")]
    assert len(notes) == 3 and notes[1].startswith("# resumed at event 700 from checkpoint")
    assert notes[2].startswith("# resumed at event 1,250")
    assert cli.main(["report", str(run), "-o", str(tmp_path / "curve.png")]) == 0
    assert png_size((tmp_path / "curve.png").read_bytes()) == (900, 650)


def test_demo_resumed_curve_refuses_another_runs_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ckpt, run = str(tmp_path / "ckpt"), tmp_path / "run.csv"
    assert cli.main(["demo", "--checkpoint-dir", ckpt, "--n", "300", "-q"]) == 0
    assert cli.main(["demo", "--checkpoint-dir", str(tmp_path / "other"), "--n", "200", "--curve", str(run),
                     "-q"]) == 0
    before = run.read_bytes()
    capsys.readouterr()
    assert cli.main(["demo", "--checkpoint-dir", ckpt, "--curve", str(run), "-q"]) == 2
    err = capsys.readouterr().err
    assert "ends at event 200" in err and "resumes at event 300" in err
    assert run.read_bytes() == before  # untouched
    # Nor a curve of the same run with another rolling window.
    assert cli.main(["demo", "--checkpoint-dir", str(tmp_path / "other"), "--curve", str(run),
                     "--window", "50", "-q"]) == 2
    assert "curve of another run" in capsys.readouterr().err
    assert run.read_bytes() == before
    assert DirectoryStore(ckpt).latest().model.n_samples_seen == 300  # and nothing learned
    # A resumed run without a curve file starts one at the event it resumes from.
    fresh_curve = tmp_path / "rest.csv"
    assert cli.main(["demo", "--checkpoint-dir", ckpt, "--curve", str(fresh_curve), "-q"]) == 0
    assert [int(r["event"]) for r in curve_rows(fresh_curve)] == list(range(301, len(PHISHING) + 1))


class _FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_demo_progress_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tty = _FakeTTY()
    monkeypatch.setattr(sys, "stderr", tty)
    assert cli.main(["demo", "--checkpoint-dir", str(tmp_path / "c"), "--n", "200"]) == 0
    text = tty.getvalue()
    assert text.startswith("\r") and text.endswith("\n")  # rewritten in place, ended by a newline
    last = text.rstrip("\n").split("\r")[-1]
    assert "200/200" in last and "ev/s" in last and "log loss" in last and "accuracy" in last


def test_demo_quiet(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["demo", "--checkpoint-dir", str(tmp_path / "c"), "--n", "50", "--quiet"]) == 0
    assert capsys.readouterr().err == ""


# ---------------------------------------------------------------------------------------------------------
# inspect and score


def test_inspect_json(demo_dir: Path, capsys: pytest.CaptureFixture) -> None:
    capsys.readouterr()
    assert cli.main(["inspect", str(demo_dir / "ckpt"), "--json", "--top", "3"]) == 0
    info = json.loads(capsys.readouterr().out)
    checkpoint = DirectoryStore(demo_dir / "ckpt").latest()
    assert info["id"] == checkpoint.id
    assert info["created_at"] == checkpoint.created_at.isoformat()
    assert info["n_samples_seen"] == len(PHISHING)
    assert info["n_features"] == checkpoint.model.n_features == 9
    assert info["config"] == checkpoint.model.config()
    assert info["optimizer"]["name"] == "Mixture"
    assert info["bias"] == checkpoint.model.intercept
    ranked = sorted(checkpoint.model.weights.items(), key=lambda kv: -abs(kv[1]))[:3]
    assert [(t["feature"], t["weight"]) for t in info["top_weights"]] == ranked
    assert info["metadata"]["dataset"] == "phishing"
    assert info["offsets"] is None  # a demo checkpoint has no Kafka offsets


def test_inspect_text_and_the_ways_to_name_a_checkpoint(demo_dir: Path, capsys) -> None:
    d = demo_dir / "ckpt"
    checkpoint = DirectoryStore(d).latest()
    capsys.readouterr()
    for target in ([str(d)], [str(d / f"{checkpoint.id}.json")], [str(d / f"{checkpoint.id}.npz")],
                   [checkpoint.id, "--checkpoint-dir", str(d)]):
        assert cli.main(["inspect", *target]) == 0
        out = capsys.readouterr().out
        assert f"checkpoint     {checkpoint.id}" in out
        assert "samples seen   1,250" in out
        assert "optimizer      Mixture(rates=[0.003, 0.01, 0.03, 0.1, 0.3, 1.0], nag_lr=0.5" in out
        assert "top 9 weights by |w|" in out  # 9 non-zero weights, fewer than --top 10
        assert "bias" in out and "position=1250" in out


def test_inspect_consumer_offsets(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    store = DirectoryStore(tmp_path)
    model = OnlineLogisticRegression()
    model.learn_one({"a": 1.0}, True)
    store.save(model, {"offsets": {"events:0": 12, "events:1": 7}, "group_id": "g"})
    assert cli.main(["inspect", str(tmp_path)]) == 0
    assert "offsets        events:0=12, events:1=7" in capsys.readouterr().out


def test_inspect_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["inspect", str(tmp_path)]) == 1
    assert "no valid checkpoint" in capsys.readouterr().err
    assert cli.main(["inspect", str(tmp_path / "nope")]) == 1
    assert "not a checkpoint directory" in capsys.readouterr().err
    assert not (tmp_path / "nope").exists()


def score_input() -> tuple[bytes, list[dict]]:
    """Lines for ``score``: Phishing rows (one without id, one as an array), junk, and a blank line."""
    lines, expected = [], []
    for i, (x, _) in enumerate(PHISHING[:20]):
        lines.append(encode_event(x, id=f"e{i}"))
        expected.append({"id": f"e{i}", "x": x})
    lines.append(b'{"x": {"https": 1.0}}')
    expected.append({"id": None, "x": {"https": 1.0}})
    lines.append(b"")
    lines.append(b"this is not json")
    expected.append({"id": None, "error": "not_json"})
    lines.append(b'{"x": {"https": null}, "id": "bad"}')
    expected.append({"id": "bad", "error": "bad_value"})
    lines.append(b'{"x": [1, 2], "y": 1, "id": 99}')  # a label is ignored; an integer id stays one
    expected.append({"id": 99, "x": {0: 1, 1: 2}})
    lines.append(b'{"x": {"https": NaN}, "id": 7}')  # not JSON for the codec: its id all the same
    expected.append({"id": 7, "error": "not_json"})
    lines.append(b'{"x": {"https": 1e999}, "id": "huge"}')
    expected.append({"id": "huge", "error": "bad_value"})
    lines.append(b'{"x": {}, "id": 1.5}')  # an id neither string nor integer: none
    expected.append({"id": None, "error": "bad_id"})
    lines.append(b'{"x": {}, "y": 2, "id": 123456789012345678901234567890}')  # beyond 64 bits: its digits
    expected.append({"id": "123456789012345678901234567890", "error": "bad_label"})
    return b"\n".join(lines) + b"\n", expected


def check_scores(output: bytes, expected: list[dict], model: OnlineLogisticRegression) -> None:
    got = [json.loads(line) for line in output.decode().splitlines()]
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert g["id"] == e["id"] and type(g["id"]) is type(e["id"])
        if "error" in e:
            assert g["error"] == e["error"] and g["detail"] and "p" not in g
        else:
            assert g["p"] == model.predict_proba_one(e["x"])[True]  # exactly: JSON floats round-trip


def test_score_in_process(demo_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    data, expected = score_input()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    capsys.readouterr()
    assert cli.main(["score", "--checkpoint-dir", str(demo_dir / "ckpt")]) == 0
    check_scores(capsys.readouterr().out.encode(), expected, DirectoryStore(demo_dir / "ckpt").latest().model)


def test_score_console_script_pipes(demo_dir: Path) -> None:
    data, expected = score_input()
    proc = run_cli("score", "--checkpoint-dir", str(demo_dir / "ckpt"), stdin=data)
    assert proc.returncode == 0, proc.stderr.decode()
    model = DirectoryStore(demo_dir / "ckpt").latest().model
    check_scores(proc.stdout, expected, model)
    # And the probabilities are those `inspect` describes: the same checkpoint.
    proc = run_cli("inspect", str(demo_dir / "ckpt"), "--json")
    assert json.loads(proc.stdout)["id"] == DirectoryStore(demo_dir / "ckpt").latest().id


def test_score_without_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "empty").mkdir()
    assert cli.main(["score", "--checkpoint-dir", str(tmp_path / "empty")]) == 1
    assert "no valid checkpoint" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------
# report


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_report_writes_the_curve_of_the_run(demo_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "curve.png"
    assert cli.main(["report", str(demo_dir / "run.csv"), "-o", str(out)]) == 0
    data = out.read_bytes()
    assert png_size(data) == (900, 650)  # figsize 9 x 6.5 in at --dpi 100
    assert len(data) > 20_000
    assert data.endswith(b"IEND\xaeB`\x82")

    # The figure plots the run's own columns.
    curve, notes = report.read_curve(demo_dir / "run.csv")
    setup = demo.setup_text(OnlineLogisticRegression(), 1)
    assert notes == [f"stream-logreg demo --dataset phishing: {setup}, rolling window 100"]
    fig = report.plot_curve(curve, "t")
    loss_ax, acc_ax = fig.axes
    assert list(loss_ax.lines[0].get_xdata()) == curve["event"]
    assert list(loss_ax.lines[0].get_ydata()) == curve["log_loss"]
    assert list(loss_ax.lines[1].get_ydata()) == curve["rolling_log_loss"]
    assert list(acc_ax.lines[0].get_ydata()) == curve["accuracy"]
    assert loss_ax.get_ylabel() == "log loss" and acc_ax.get_ylabel() == "accuracy"
    assert acc_ax.get_xlabel() == "events" and fig.get_suptitle() == "t"

    # Other data, other picture.
    other_csv, other_png = tmp_path / "other.csv", tmp_path / "other.png"
    assert cli.main(["demo", "--checkpoint-dir", str(tmp_path / "c2"), "--optimizer", "sgd",
                     "--curve", str(other_csv), "-q"]) == 0
    assert cli.main(["report", str(other_csv), "-o", str(other_png),
                     "--title", f"Learning curve of run.csv ({len(PHISHING):,} events)"]) == 0
    assert png_size(other_png.read_bytes()) == (900, 650)
    assert other_png.read_bytes() != data


@pytest.mark.parametrize(("suffix", "magic"), [(".png", PNG_SIGNATURE), (".jpg", b"\xff\xd8\xff"),
                                              (".JPEG", b"\xff\xd8\xff"), (".svg", b"<?xml"),
                                              (".pdf", b"%PDF-")])
def test_report_writes_the_format_its_file_name_asks_for(demo_dir: Path, tmp_path: Path, suffix: str,
                                                           magic: bytes) -> None:
    out = tmp_path / f"curve{suffix}"
    assert cli.main(["report", str(demo_dir / "run.csv"), "-o", str(out)]) == 0
    assert out.read_bytes().startswith(magic)


def test_report_title_names_what_was_run(demo_dir: Path) -> None:
    curve, notes = report.read_curve(demo_dir / "run.csv")
    title = report.curve_title(notes, curve, "run.csv")
    assert title.startswith("phishing: Mixture(rates=") and "rolling window 100" in title
    assert "1,250 events" in title and "run.csv" not in title


def test_report_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    assert cli.main(["report", str(bad), "-o", str(tmp_path / "x.png")]) == 1
    assert "missing columns" in capsys.readouterr().err
    assert cli.main(["report", str(tmp_path / "none.csv"), "-o", str(tmp_path / "x.png")]) == 1
    assert cli.main(["report", str(bad)]) == 2  # -o is required
    capsys.readouterr()
    assert cli.main(["report", str(bad), "-o", str(tmp_path / "x.gif")]) == 2
    assert "unknown image format '.gif'" in capsys.readouterr().err
    assert not (tmp_path / "x.gif").exists()
    assert not (tmp_path / "x.png").exists()


# ---------------------------------------------------------------------------------------------------------
# Settings, help, logging


@pytest.mark.parametrize(
    ("argv", "env", "names"),
    [
        (["demo", "--optimizer", "adam"], {}, ["--optimizer", "sgd", "adagrad", "ftrl"]),
        (["demo", "--lr", "-1"], {}, ["--lr", "> 0"]),
        (["demo", "--lr", "fast"], {}, ["--lr", "a number"]),
        (["demo", "--optimizer", "sgd", "--l1", "0.1"], {}, ["--l1", "ftrl"]),
        (["demo", "--n-bits", "31"], {}, ["--n-bits", "<= 30"]),
        (["demo", "--batch-size", "0"], {}, ["--batch-size", ">= 1"]),
        (["demo", "--n", "5000"], {}, ["--n", "1250"]),
        (["demo", "--dataset", "iris"], {}, ["--dataset", "phishing", "bananas"]),
        (["demo", "--checkpoint-every", "0"], {}, ["--checkpoint-every", ">= 1"]),
        (["demo", "--log-format", "xml"], {}, ["--log-format", "text", "json"]),
        (["demo"], {"STREAM_LOGREG_LOG_LEVEL": "LOUD"}, ["STREAM_LOGREG_LOG_LEVEL", "--log-level", "DEBUG"]),
        (["consume"], {}, ["--topics", "STREAM_LOGREG_TOPICS"]),
        (["consume"], {"STREAM_LOGREG_TOPICS": "events", "STREAM_LOGREG_BATCH_SIZE": "abc"},
         ["STREAM_LOGREG_BATCH_SIZE", "--batch-size", "an integer >= 1"]),
        (["consume", "--topics", "a b"], {}, ["--topics", "topic names"]),
        (["consume", "--topics", "events", "--predictions-topic", "events"], {},
         ["--predictions-topic", "STREAM_LOGREG_PREDICTIONS_TOPIC", "input topics"]),
        (["consume", "--topics", "events", "--security-protocol", "SASL_SSL"], {},
         ["--sasl-mechanism", "PLAIN", "SCRAM-SHA-256"]),
        (["consume", "--topics", "events", "--security-protocol", "SASL_PLAINTEXT", "--sasl-mechanism",
          "PLAIN"], {}, ["--sasl-plain-username", "STREAM_LOGREG_SASL_PLAIN_USERNAME"]),
        (["consume", "--topics", "events", "--ssl-cafile", "/nonexistent/ca.pem"], {},
         ["--ssl-cafile", "existing file"]),
        (["consume", "--topics", "events", "--metrics-port", "70000"], {}, ["--metrics-port", "<= 65535"]),
        (["consume", "--topics", "events"], {"STREAM_LOGREG_AUTO_OFFSET_RESET": "middle"},
         ["STREAM_LOGREG_AUTO_OFFSET_RESET", "earliest", "latest"]),
        (["consume", "--topics", "events", "--checkpoint-every-seconds", "0"], {},
         ["--checkpoint-every-seconds", "> 0"]),
        (["replay", "--topic", "t", "--rate", "-5"], {}, ["--rate", ">= 0"]),
        (["replay", "--topic", "t", "--file", "/nonexistent.jsonl"], {}, ["--file", "no such file"]),
        (["replay", "--topic", "t", "--file", "x.csv", "--dataset", "phishing"], {}, ["--file", "--dataset"]),
        (["inspect", "ckpt", "--top", "-1"], {}, ["--top", ">= 0"]),
        (["frobnicate"], {}, ["invalid choice", "demo", "consume"]),
        ([], {}, ["COMMAND"]),
    ],
)
def test_bad_settings_exit_2_and_name_the_setting(
    argv: list[str], env: dict[str, str], names: list[str], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture, tmp_path: Path,
) -> None:
    monkeypatch.chdir(tmp_path)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    for name in names:
        assert name in err
    assert not (tmp_path / "checkpoints").exists()  # failed before doing anything


def test_bad_setting_exit_status_of_the_console_script(tmp_path: Path) -> None:
    proc = run_cli("consume", cwd=tmp_path, STREAM_LOGREG_TOPICS="events", STREAM_LOGREG_MAX_POLL_RECORDS="0")
    assert proc.returncode == 2
    assert b"STREAM_LOGREG_MAX_POLL_RECORDS" in proc.stderr and b"--max-poll-records" in proc.stderr


def test_consume_flag_wins_over_environment(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("STREAM_LOGREG_TOPICS", "a,b")
    monkeypatch.setenv("STREAM_LOGREG_BATCH_SIZE", "16")
    monkeypatch.setenv("STREAM_LOGREG_GROUP_ID", "from-env")
    monkeypatch.setenv("STREAM_LOGREG_SECURITY_PROTOCOL", "sasl_plaintext")  # choices: any case
    monkeypatch.setenv("STREAM_LOGREG_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("STREAM_LOGREG_SASL_PLAIN_USERNAME", "learner")
    monkeypatch.setenv("STREAM_LOGREG_SASL_PLAIN_PASSWORD", "s3cret")
    monkeypatch.setenv("STREAM_LOGREG_PREDICTIONS_TOPIC", "")  # empty = unset
    monkeypatch.setenv("STREAM_LOGREG_PUBLISH_LABELLED", "yes")
    assert cli.main(["consume", "--group-id", "from-flag", "--optimizer", "adagrad", "--lr", "0.2",
                     "--session-timeout-ms", "10000", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "s3cret" not in out
    doc = json.loads(out)
    learner = doc["learner"]
    assert learner["topics"] == ["a", "b"] and learner["batch_size"] == 16
    assert learner["group_id"] == "from-flag"
    assert learner["predictions_topic"] is None and learner["publish_labelled"] is True
    assert learner["model"]["optimizer"] == {"name": "AdaGrad", "lr": 0.2, "eps": 1e-8}
    assert learner["client_settings"] == {
        "client_id": "stream-logreg", "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "learner", "sasl_plain_password": "***",
    }
    assert learner["consumer_settings"] == {"session_timeout_ms": 10000}
    assert doc["sources"]["group_id"] == "flag" and doc["sources"]["batch_size"] == "env"


def test_learner_config_is_built_from_the_settings() -> None:
    from consumers.config import LearnerConfig

    values, _ = settings.resolve_settings(
        cli.build_parser().parse_args(["consume", "--topics", "events", "--checkpoint-dir", "/tmp/x",
                                       "--batch-size", "4", "--ssl-check-hostname"]),
        settings.CONSUME_SETTINGS, {"STREAM_LOGREG_SECURITY_PROTOCOL": "SSL"},
    )
    config = settings.learner_config(values)
    assert isinstance(config, LearnerConfig)
    assert config.batch_size == 4 and config.checkpoint_dir == "/tmp/x"
    assert config.client_settings["security_protocol"] == "SSL"
    assert config.client_settings["ssl_check_hostname"] is True
    # defaults = the model's defaults, but for the vocabulary cap and the standardization that `consume`
    # turns on by default
    assert config.model_config() == OnlineLogisticRegression(max_features=1_000_000, scale=True).config()


def test_settings_table_covers_the_learner_config() -> None:
    """Every LearnerConfig field is a setting with the same default (bar those assembled from several)."""
    from consumers.config import LearnerConfig

    by_name = {s.name: s for s in settings.CONSUME_SETTINGS}
    assembled = {"client_settings", "consumer_settings", "producer_settings", "model"}
    for field in dataclasses.fields(LearnerConfig):
        if field.name in assembled:
            continue
        assert field.name in by_name, f"LearnerConfig.{field.name} has no CLI setting"
        if field.default is not dataclasses.MISSING:
            assert by_name[field.name].default == field.default, field.name
    names = [s.name for s in settings.CONSUME_SETTINGS]
    assert len(names) == len(set(names))


def test_config_table_markdown(capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["consume", "--print-config-table"]) == 0
    table = capsys.readouterr().out
    assert table == settings.config_table_markdown()
    lines = table.strip().splitlines()
    assert lines[0].startswith("| Flag | Environment variable |")
    assert len(lines) == 2 + len(settings.CONSUME_SETTINGS)
    for s in settings.CONSUME_SETTINGS:
        assert f"| `{s.flag}` | `{s.env}` |" in table
    for env in ("STREAM_LOGREG_BOOTSTRAP_SERVERS", "STREAM_LOGREG_TOPICS", "STREAM_LOGREG_GROUP_ID",
                "STREAM_LOGREG_CHECKPOINT_DIR", "STREAM_LOGREG_BATCH_SIZE",
                "STREAM_LOGREG_CHECKPOINT_EVERY_MESSAGES", "STREAM_LOGREG_CHECKPOINT_EVERY_SECONDS",
                "STREAM_LOGREG_PREDICTIONS_TOPIC", "STREAM_LOGREG_DEAD_LETTER_TOPIC",
                "STREAM_LOGREG_METRICS_PORT", "STREAM_LOGREG_LOG_FORMAT", "STREAM_LOGREG_SECURITY_PROTOCOL",
                "STREAM_LOGREG_SASL_MECHANISM", "STREAM_LOGREG_SASL_PLAIN_USERNAME",
                "STREAM_LOGREG_SSL_CAFILE"):
        assert f"`{env}`" in table
    assert all(line.replace("\\|", "").count("|") == 6 for line in lines)


@pytest.mark.parametrize(
    "command", [[], ["demo"], ["inspect"], ["score"], ["report"], ["replay"], ["consume"]]
)
def test_help_everywhere_with_examples(command: list[str], capsys: pytest.CaptureFixture) -> None:
    assert cli.main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "stream-logreg" in out


def test_help_of_consume_names_every_environment_variable(capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["consume", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    for s in settings.CONSUME_SETTINGS:
        assert s.flag in out and s.env in out


def test_entry_point_is_main() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, attr = scripts["stream-logreg"].partition(":")
    assert module == "consumers.cli" and getattr(cli, attr) is cli.main


def test_json_log_lines(capsys: pytest.CaptureFixture) -> None:
    stream = io.StringIO()
    logs.configure_logging("json", "INFO", stream)
    try:
        log = logging.getLogger("stream_logreg.test")
        log.info("learned %d events", 5, extra={"partition": 3, "topic": "events"})
        log.debug("not shown")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
    finally:
        logs.configure_logging("text", "WARNING")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 2
    first = lines[0]
    assert first["message"] == "learned 5 events" and first["level"] == "INFO"
    assert first["logger"] == "stream_logreg.test" and first["partition"] == 3 and first["topic"] == "events"
    assert first["ts"].endswith("Z")
    assert "ValueError: boom" in lines[1]["exc_info"]


def test_log_format_json_from_the_environment(tmp_path: Path) -> None:
    ckpt = tmp_path / "c"
    proc = run_cli("score", "--checkpoint-dir", str(ckpt), STREAM_LOGREG_LOG_FORMAT="json", stdin=b"")
    assert proc.returncode == 1  # no checkpoint: a runtime failure
    model = OnlineLogisticRegression()
    model.learn_one({"a": 1.0}, True)
    DirectoryStore(ckpt).save(model)
    proc = run_cli("score", "--checkpoint-dir", str(ckpt), STREAM_LOGREG_LOG_FORMAT="json", stdin=b"")
    assert proc.returncode == 0
    records = [json.loads(line) for line in proc.stderr.decode().splitlines() if line.startswith("{")]
    assert any("scored 0 lines" in r["message"] for r in records)


# ---------------------------------------------------------------------------------------------------------
# replay and consume against a real broker


def replay(bootstrap: str, topic: str, *args: str, quiet: bool = True) -> int:
    return cli.main(["replay", "--bootstrap-servers", bootstrap, "--topic", topic, *args,
                     *(["-q"] if quiet else [])])


def test_replay_dataset(kafka_bootstrap: str, kafka_topic, capsys: pytest.CaptureFixture) -> None:
    assert replay(kafka_bootstrap, kafka_topic(partitions=1), "--dataset", "phishing", "--limit", "1") == 0
    assert "replayed 1 event to topic" in capsys.readouterr().out
    topic = kafka_topic(partitions=2)
    assert replay(kafka_bootstrap, topic, "--dataset", "phishing", "--limit", "300", quiet=False) == 0
    captured = capsys.readouterr()
    assert "replayed 300 events to topic" in captured.out
    assert "300/300" in captured.err  # the final progress line
    records = read_topic(kafka_bootstrap, topic, 300)
    assert len(records) == 300
    assert {r.partition for r in records} == {0, 1}  # keyed by id: spread over the partitions
    codec = JsonCodec()
    got = {}
    for r in records:
        event = codec.decode(r.value)
        assert isinstance(event, Event)
        assert r.key == event.id.encode()
        got[event.id] = event
    assert set(got) == {f"phishing-{i}" for i in range(300)}
    for i, (x, y) in enumerate(PHISHING[:300]):
        assert got[f"phishing-{i}"].x == x and got[f"phishing-{i}"].y == int(y)


@pytest.mark.kafka
def test_replay_csv_creates_the_topic(kafka_bootstrap: str, tmp_path: Path, capsys) -> None:
    from kafka import KafkaAdminClient

    topic = f"test-replay-csv-{uuid.uuid4().hex[:10]}"
    path = tmp_path / "data.csv"
    path.write_text("id,amount,country,new_device,clicked\n"
                    "a,3.5,FR,true,1\n"
                    "b,1,DE,FALSE,0\n"
                    "c,,FR,,\n"            # missing features; unlabelled
                    "d,2.0,US,true,maybe\n"  # bad label: skipped
                    "e,7,42,false,true\n"  # "42" in a text column: a number written as text, refused
                    "f,abc,US,true,1\n"    # not a number in a numeric column: skipped
                    "g,1,US,yes,1\n"       # not a boolean in a boolean column: skipped
                    "h,1e999,US,true,1\n"  # overflows a double: skipped
                    "i,nan,US,true,1\n")   # not a number: skipped
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        assert replay(kafka_bootstrap, topic, "--file", str(path), "--label-column", "clicked",
                      "--id-column", "id", "--partitions", "2") == 1
        captured = capsys.readouterr()
        assert f"replayed 3 events to topic {topic} (6 input lines skipped)" in captured.out
        assert f"created topic {topic} (2 partitions)" in captured.err and "--skip-bad-lines" in captured.err
        bad_lines = ((5, "maybe"), (6, "'42'"), (7, "'abc'"), (8, "'yes'"), (9, "1e999"), (10, "'nan'"))
        for lineno, what in bad_lines:
            assert f"line {lineno}: " in captured.err and what in captured.err
        (described,) = admin.describe_topics([topic])
        assert len(described["partitions"]) == 2
        codec = JsonCodec()
        events = {e.id: e for e in (codec.decode(r.value) for r in read_topic(kafka_bootstrap, topic, 3))}
        assert events == {
            "a": Event({"amount": 3.5, "country": "FR", "new_device": True}, 1, "a"),
            "b": Event({"amount": 1, "country": "DE", "new_device": False}, 0, "b"),
            "c": Event({"country": "FR"}, None, "c"),
        }
        assert type(events["b"].x["amount"]) is int and type(events["a"].x["amount"]) is float
        # --skip-bad-lines: the same lines skipped and reported, exit 0.
        assert replay(kafka_bootstrap, topic, "--file", str(path), "--label-column", "clicked",
                      "--id-column", "id", "--skip-bad-lines", "--no-create-topic") == 0
        captured = capsys.readouterr()
        assert f"replayed 3 events to topic {topic} (6 input lines skipped)" in captured.out
        assert "line 7: " in captured.err
    finally:
        admin.delete_topics([topic], raise_errors=False)
        admin.close()


@pytest.mark.kafka
def test_replay_jsonl_and_raw(kafka_bootstrap: str, kafka_topic, tmp_path: Path, capsys) -> None:
    topic = kafka_topic(partitions=1)
    path = tmp_path / "data.jsonl"
    path.write_bytes(b'{"x": {"a": 1}, "y": 1, "id": "one"}\n\nnot json\n{"x": [0.5, 2], "id": 2}\n')
    assert replay(kafka_bootstrap, topic, "--file", str(path)) == 1
    captured = capsys.readouterr()
    assert "replayed 2 events" in captured.out and "(1 input line skipped)" in captured.out
    assert "line 3: not_json" in captured.err
    assert replay(kafka_bootstrap, topic, "--file", str(path), "--raw") == 0
    values = [r.value for r in read_topic(kafka_bootstrap, topic, 5)]
    assert values == [
        b'{"x":{"a":1},"y":1,"id":"one"}', b'{"x":[0.5,2],"id":"2"}',
        b'{"x": {"a": 1}, "y": 1, "id": "one"}', b"not json", b'{"x": [0.5, 2], "id": 2}',
    ]


def test_replay_unreachable_broker(capsys: pytest.CaptureFixture) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rc = cli.main(["replay", "--bootstrap-servers", f"127.0.0.1:{port}", "--topic", "t", "--limit", "1", "-q",
                   "--connect-timeout", "1"])
    assert rc == 1
    assert f"127.0.0.1:{port}" in capsys.readouterr().err


@pytest.mark.kafka
def test_consume_learns_a_replayed_topic(kafka_bootstrap: str, kafka_topic, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    topic = kafka_topic(partitions=2)
    assert replay(kafka_bootstrap, topic, "--limit", "400") == 0
    ckpt = tmp_path / "ckpt"
    monkeypatch.setenv("STREAM_LOGREG_BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("STREAM_LOGREG_TOPICS", topic)
    monkeypatch.setenv("STREAM_LOGREG_CHECKPOINT_EVERY_SECONDS", "0.5")
    argv = ["consume", "--group-id", f"g-{uuid.uuid4().hex[:8]}", "--checkpoint-dir", str(ckpt),
            "--metrics-port", "0", "--session-timeout-ms", "10000", "--log-format", "json"]

    # SIGTERM once the checkpoint shows every event learned; a handler of our own catches any stray one.
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    errors: list[BaseException] = []

    def stop_when_learned() -> None:
        try:
            wait_for_checkpoint(ckpt, 400)
        except BaseException as exc:
            errors.append(exc)
        os.kill(os.getpid(), signal.SIGTERM)

    watcher = threading.Thread(target=stop_when_learned, daemon=True)
    watcher.start()
    try:
        rc = cli.main(argv)
    finally:
        watcher.join(timeout=120)
        signal.signal(signal.SIGTERM, previous)
    assert not errors, errors
    assert rc == 0
    checkpoint = DirectoryStore(ckpt).latest()
    assert checkpoint.model.n_samples_seen == 400
    assert sum(checkpoint.metadata["offsets"].values()) == 400
    assert set(checkpoint.metadata["offsets"]) == {f"{topic}:0", f"{topic}:1"}
    err = capsys.readouterr().err
    assert any("received SIGTERM" in json.loads(line)["message"] for line in err.splitlines()
               if line.startswith("{"))

    # `inspect` shows the offsets; a second run with nothing new learns nothing twice.
    assert cli.main(["inspect", str(ckpt)]) == 0
    assert f"{topic}:0=" in capsys.readouterr().out
    assert cli.main([*argv, "--max-idle-seconds", "3"]) == 0
    assert DirectoryStore(ckpt).latest().model.n_samples_seen == 400


@pytest.mark.kafka
def test_demo_and_the_consumer_metrics_agree(kafka_bootstrap: str, kafka_topic, tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    """One definition of progressive validation: on the same stream (Phishing, default model, one event
    per update), the demo's summary and the consumer's metrics count the same predictions right — the
    first one included (p = 0.5 with y = 1) — with the same log loss."""
    from consumers.config import LearnerConfig
    from consumers.learner import Learner

    topic = kafka_topic(partitions=1)
    assert replay(kafka_bootstrap, topic, "--dataset", "phishing") == 0
    capsys.readouterr()
    assert cli.main(["demo", "--checkpoint-dir", str(tmp_path / "demo"), "--curve", str(tmp_path / "run.csv"),
                     "-q"]) == 0
    out = capsys.readouterr().out
    first = curve_rows(tmp_path / "run.csv")[0]
    assert (first["p"], first["y"]) == ("0.5", "1")

    learner = Learner(LearnerConfig(bootstrap_servers=kafka_bootstrap, topics=[topic], group_id=f"g-{topic}",
                                    checkpoint_dir=str(tmp_path / "consume"), poll_timeout_ms=100,
                                    model={"scale": True}))  # the CLI's default, as the demo ran
    stop = threading.Event()

    def stop_when_learned() -> None:
        try:
            wait_for(lambda: learner.stats.snapshot()["learned"] >= len(PHISHING), 120, "every event learned")
        finally:
            stop.set()

    watcher = threading.Thread(target=stop_when_learned, daemon=True)
    watcher.start()
    snap = learner.run(stop_event=stop).snapshot()
    watcher.join(timeout=130)
    assert snap["predicted_labelled"] == len(PHISHING)
    assert f"({snap['correct_total']:,} of {len(PHISHING):,} predicted right" in out
    assert f"progressive accuracy  {snap['accuracy']:.2%}" in out
    assert f"progressive log loss  {snap['log_loss']:.4f}" in out


@pytest.mark.kafka
def test_consume_console_script_sigterm(kafka_bootstrap: str, kafka_topic, tmp_path: Path) -> None:
    """The console script as a service: SIGTERM → final checkpoint and commit, exit 0."""
    from kafka import KafkaAdminClient

    topic = kafka_topic(partitions=1)
    ckpt = tmp_path / "ckpt"
    group = f"g-{uuid.uuid4().hex[:8]}"
    env = {"STREAM_LOGREG_BOOTSTRAP_SERVERS": kafka_bootstrap, "STREAM_LOGREG_TOPICS": topic,
           "STREAM_LOGREG_GROUP_ID": group, "STREAM_LOGREG_CHECKPOINT_DIR": str(ckpt),
           "STREAM_LOGREG_METRICS_PORT": "0", "STREAM_LOGREG_CHECKPOINT_EVERY_SECONDS": "0.5"}
    log_path = tmp_path / "learner.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([*cli_command(), "consume"], env=cli_env(**env), stdout=log_file,
                                stderr=subprocess.STDOUT)
        try:
            assert replay(kafka_bootstrap, topic, "--limit", "120") == 0
            wait_for_checkpoint(ckpt, 120, alive=lambda: proc.poll() is None)
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert rc == 0, log_path.read_text()
    checkpoint = DirectoryStore(ckpt).latest()
    assert checkpoint.metadata["offsets"] == {f"{topic}:0": 120}
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        committed = admin.list_group_offsets(group)[group]
    finally:
        admin.close()
    assert {f"{tp.topic}:{tp.partition}": m.offset for tp, m in committed.items()} == {f"{topic}:0": 120}


def test_consume_refuses_checkpoints_of_other_options(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # Checked when the learner is built, before any connection: no broker needed.
    store = DirectoryStore(tmp_path)
    store.save(OnlineLogisticRegression(optimizer=optim.SGD(0.1)), {"offsets": {}})
    rc = cli.main(["consume", "--topics", "events", "--checkpoint-dir", str(tmp_path), "--metrics-port", "0"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "other model options" in err and "'SGD' there, 'Mixture' here" in err


def test_consume_continues_an_unscaled_checkpoint_of_an_older_default(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A model learned before the service standardized by default is continued as it was, with a warning,
    while --scale unset; an explicit --scale still refuses it (a real change of options)."""
    store = DirectoryStore(tmp_path)
    store.save(OnlineLogisticRegression(max_features=1_000_000), {"offsets": {}})  # the old default
    store.close()
    nowhere = ["--bootstrap-servers", "127.0.0.1:9", "--connect-timeout", "1"]
    args = ["consume", "--topics", "events", "--checkpoint-dir", str(tmp_path), "--metrics-port", "0",
            *nowhere]
    rc = cli.main(args)
    err = capsys.readouterr().err
    assert "learned without standardization" in err and "other model options" not in err
    assert rc == 1  # built and restored; then no broker to connect to
    assert cli.main([*args, "--scale"]) == 2
    assert "other model options" in capsys.readouterr().err


def test_cli_module_imports_neither_kafka_nor_matplotlib() -> None:
    """Commands that do not need them (demo, score, inspect, --help) never import the Kafka client,
    matplotlib, or the service modules that need Kafka (the learner, its metrics)."""
    code = ("import sys; import consumers.cli as c; c.build_parser(); "
            "print(sorted(m for m in ('kafka', 'matplotlib', 'consumers.learner', 'consumers.metrics') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, env=cli_env(), check=True)
    assert out.stdout.decode().strip() == "[]"
