"""Checkpoints: exact resume, corruption and crash recovery, retention, no pickles, clear errors.

The crafted files below are written by this test's own implementation of the documented format (stdlib
``json`` and ``np.savez``), so the format in ``stream_logreg/checkpoints.py``'s docstring is checked too.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from river import datasets

from stream_logreg import OnlineLogisticRegression, checkpoints, optim
from stream_logreg.checkpoints import (
    Checkpoint,
    CheckpointCorrupt,
    CheckpointError,
    CheckpointMismatch,
    CheckpointStore,
    DirectoryStore,
    UnsupportedCheckpoint,
    load_checkpoint,
    save_checkpoint,
)
from stream_logreg.features import FeatureSpace, IndicatorKey

ROOT = Path(__file__).resolve().parents[1]
PHISHING = list(datasets.Phishing())
NUMERIC = list(PHISHING[0][0])  # the 9 numeric features of Phishing
# Plus a string feature, so that the vocabulary holds indicator keys ("bucket=b21") too.
ROWS = [({**x, "bucket": f"b{int(x['long_url'] * 2)}{int(x['is_popular'] * 2)}"}, y) for x, y in PHISHING]
SPLIT = 600  # a multiple of the batch size: batches are cut the same way with or without the stop
BATCH = 25


def bits(a: object) -> bytes:
    return np.asarray(a, dtype=np.float64).tobytes()


def same_model(a: OnlineLogisticRegression, b: OnlineLogisticRegression) -> None:
    """The complete state of a and b is bitwise the same."""
    (arrays_a, meta_a), (arrays_b, meta_b) = a.state(), b.state()
    assert bits(a.coef) == bits(b.coef)
    assert bits(a.intercept) == bits(b.intercept)
    assert sorted(arrays_a) == sorted(arrays_b)
    for name in arrays_a:
        assert bits(arrays_a[name]) == bits(arrays_b[name]), name
    assert meta_a == meta_b


# Exact resume


OPTIMIZERS = {
    "sgd": lambda: {"optimizer": optim.SGD(0.1), "intercept_lr": 0.05},
    "sgd-power_t": lambda: {"optimizer": optim.SGD(0.5, power_t=0.5)},
    "adagrad": lambda: {"optimizer": optim.AdaGrad(0.1), "l2": 0.001},
    "ftrl-l1": lambda: {
        "optimizer": optim.FTRL(alpha=0.1, beta=1.0, l1=0.5, l2=0.1),
        "class_weight": {0: 1.0, 1: 2.0},
    },
}
SPACES = {"vocabulary": {}, "hashing": {"n_bits": 3}, "max_features": {"max_features": 6}}


def learn(model: OnlineLogisticRegression, how: str, start: int, stop: int) -> None:
    """Learn rows start..stop-1 of the stream, one at a time or in batches of BATCH."""
    if how == "learn_one":
        for x, y in ROWS[start:stop]:
            model.learn_one(x, y)
        return
    for i in range(start, stop, BATCH):
        chunk = ROWS[i : min(i + BATCH, stop)]
        ys = [y for _, y in chunk]
        if how == "learn_rows":
            model.learn_rows([x for x, _ in chunk], ys)
        elif how == "learn_many":
            frame = pd.DataFrame([{k: x[k] for k in NUMERIC} for x, _ in chunk], dtype=float)
            model.learn_many(frame, pd.Series(ys))
        elif how == "learn_batch":
            model.learn_batch(np.array([[x[k] for k in NUMERIC] for x, _ in chunk]), np.array(ys, float))


@pytest.mark.parametrize("how", ["learn_one", "learn_rows", "learn_many", "learn_batch"])
@pytest.mark.parametrize("space", list(SPACES))
@pytest.mark.parametrize("opt", list(OPTIMIZERS))
def test_resume_from_a_checkpoint_is_bitwise_an_uninterrupted_run(tmp_path, opt, space, how):
    def make() -> OnlineLogisticRegression:  # each model its own optimizer: models use theirs in place
        return OnlineLogisticRegression(**OPTIMIZERS[opt](), **SPACES[space])

    uninterrupted = make()
    learn(uninterrupted, how, 0, len(ROWS))

    model = make()
    learn(model, how, 0, SPLIT)
    DirectoryStore(tmp_path).save(model, {"offsets": {"phishing:0": SPLIT}})
    del model

    checkpoint = DirectoryStore(tmp_path).latest(expect_config=uninterrupted.config())  # as after a restart
    assert checkpoint is not None
    assert checkpoint.metadata == {"offsets": {"phishing:0": SPLIT}}
    resumed = checkpoint.model
    reference = make()
    learn(reference, how, 0, SPLIT)
    same_model(resumed, reference)

    learn(resumed, how, checkpoint.metadata["offsets"]["phishing:0"], len(ROWS))
    same_model(resumed, uninterrupted)
    assert resumed.n_samples_seen == len(ROWS)


@pytest.mark.parametrize("space", list(SPACES))
@pytest.mark.parametrize("opt", list(OPTIMIZERS))
def test_predictions_after_load_are_bitwise_those_of_the_saved_model(tmp_path, opt, space):
    model = OnlineLogisticRegression(**OPTIMIZERS[opt](), **SPACES[space])
    learn(model, "learn_one", 0, 300)  # dict rows: named features and indicators
    learn(model, "learn_batch", 300, 600)  # arrays: features 0..8
    loaded = load_checkpoint(save_checkpoint(tmp_path, model)).model

    numeric = np.array([[x[k] for k in NUMERIC] for x, _ in ROWS])
    assert bits(loaded.predict_proba_batch(numeric)) == bits(model.predict_proba_batch(numeric))
    frame = pd.DataFrame(numeric, columns=NUMERIC)
    assert bits(loaded.predict_proba_many(frame)[True]) == bits(model.predict_proba_many(frame)[True])
    for x, _ in ROWS:
        assert loaded.predict_proba_one(x)[True].hex() == model.predict_proba_one(x)[True].hex(), x


def test_metadata_and_created_at_round_trip(tmp_path):
    model = OnlineLogisticRegression()
    model.learn_one({"a": 1.0}, True)
    metadata = {
        "offsets": {"events:0": 123, "events:1": 2**53 + 1, "ünïcode-topic:2": 0},
        "group": "learners",
        "nested": {"list": [1, 2.5, None, True, "x"], "empty": {}},
    }
    path = save_checkpoint(tmp_path, model, metadata)
    checkpoint = load_checkpoint(path)
    assert checkpoint.metadata == metadata
    assert checkpoint.created_at.utcoffset().total_seconds() == 0
    assert checkpoint.library_version == checkpoints.__version__
    assert Path(path).name == f"{checkpoint.id}.json"
    # The same checkpoint by its .npz or its extension-less path.
    assert load_checkpoint(Path(path).with_suffix(".npz")).id == checkpoint.id
    assert load_checkpoint(Path(path).with_suffix("")).id == checkpoint.id


@pytest.mark.parametrize(
    "metadata, says",
    [
        ({"offsets": ("t:0", 1)}, "'offsets'"),  # a tuple would read back as a list
        ({"lag": float("nan")}, "'lag'"),  # NaN would read back as null
        ({1: "int key"}, "not JSON-able"),
        ({"offset": np.int64(3)}, "not JSON-able"),
        (["not", "a", "dict"], "must be a dict"),
    ],
)
def test_metadata_that_would_not_round_trip_is_refused_and_nothing_is_written(tmp_path, metadata, says):
    store = DirectoryStore(tmp_path)
    with pytest.raises(CheckpointError, match=says):
        store.save(OnlineLogisticRegression(), metadata)
    assert store.list() == []
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]


# Corruption: latest() falls back to the previous checkpoint and says why


@pytest.fixture
def two_checkpoints(tmp_path):
    """A store with two checkpoints of different models: (store, old id, old model, new id)."""
    store = DirectoryStore(tmp_path / "ckpt")
    model = OnlineLogisticRegression(optimizer=optim.FTRL(l1=0.1))
    learn(model, "learn_one", 0, 300)
    old = store.save(model, {"offsets": {"phishing:0": 300}})
    old_model = OnlineLogisticRegression.from_state(*model.state())
    learn(model, "learn_one", 300, 600)
    new = store.save(model, {"offsets": {"phishing:0": 600}})
    return store, old, old_model, new


def _flip_npz_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


CORRUPTIONS = {
    "truncated npz": (lambda d, i: (d / f"{i}.npz").write_bytes((d / f"{i}.npz").read_bytes()[:1000]),
                      "bytes, the manifest says"),
    "flipped npz byte": (lambda d, i: _flip_npz_byte(d / f"{i}.npz"), "sha256"),
    "deleted npz": (lambda d, i: (d / f"{i}.npz").unlink(), "missing"),
    "deleted manifest": (lambda d, i: (d / f"{i}.json").unlink(), "no manifest"),
    "manifest never renamed (stray temp)": (
        lambda d, i: (d / f"{i}.json").rename(d / f".{i}.json.4242.tmp"), "no manifest"),
    "truncated manifest": (lambda d, i: (d / f"{i}.json").write_bytes((d / f"{i}.json").read_bytes()[:50]),
                           "not a checkpoint manifest"),
    "manifest not JSON": (lambda d, i: (d / f"{i}.json").write_bytes(b"\x00garbage"),
                          "not a checkpoint manifest"),
    # Still valid JSON, but it would resume from the wrong offset: the manifest's own checksum catches it.
    "edited offset in manifest": (
        lambda d, i: (d / f"{i}.json").write_bytes(
            (d / f"{i}.json").read_bytes().replace(b'"phishing:0":600', b'"phishing:0":700')),
        "checksum does not match"),
    "manifest of another checkpoint": (
        lambda d, i: (d / f"{i}.json").write_bytes(
            next(p for p in d.glob("*.json") if p.stem != i).read_bytes()),
        "is of checkpoint"),
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_latest_skips_a_damaged_newest_checkpoint_and_says_why(two_checkpoints, corruption, caplog):
    store, old, old_model, new = two_checkpoints
    corrupt, reason = CORRUPTIONS[corruption]
    corrupt(store.path, new)

    with caplog.at_level("WARNING", logger="stream_logreg.checkpoints"):
        checkpoint = store.latest()
    assert checkpoint is not None and checkpoint.id == old
    assert checkpoint.metadata == {"offsets": {"phishing:0": 300}}
    same_model(checkpoint.model, old_model)
    assert [i for i, _ in store.skipped] == [new]
    assert reason in store.skipped[0][1]
    assert any(new in r.getMessage() and reason in r.getMessage() for r in caplog.records)

    infos = {info.id: info for info in store.list()}
    assert infos[old].valid and infos[old].reason is None
    assert not infos[new].valid and infos[new].reason
    with pytest.raises(CheckpointCorrupt):
        store.load(new)

    # The next save works, and the one after it starts where the damaged one did not.
    newer = store.save(checkpoint.model, {"offsets": {"phishing:0": 300}})
    assert newer > new
    assert store.latest().id == newer and store.skipped == []


def test_a_newer_stray_temp_file_is_reported_not_used(two_checkpoints):
    store, old, old_model, new = two_checkpoints
    stray = f"{int(new) + 1:020d}"
    (store.path / f".{stray}.npz.999.tmp").write_bytes(b"half an npz")
    assert store.latest().id == new
    assert store.skipped == [(stray, store.skipped[0][1])] and "no manifest" in store.skipped[0][1]
    store.save(old_model)
    assert not list(store.path.glob(".*.tmp"))  # leftovers of a crashed save are deleted by the next one


def test_all_damaged_gives_none(two_checkpoints):
    store, old, _, new = two_checkpoints
    for i in (old, new):
        _flip_npz_byte(store.path / f"{i}.npz")
    assert store.latest() is None
    assert [i for i, _ in store.skipped] == [new, old]


def test_the_format_as_bytes_for_other_stores(two_checkpoints):
    store, _, _, new = two_checkpoints
    model = store.load(new).model
    npz, manifest = checkpoints.encode_checkpoint("00000000000000000042", model, {"offsets": {"t:0": 7}})
    body = checkpoints.decode_manifest(manifest)
    checkpoint = checkpoints.restore(body, npz, expect_config=model.config())
    assert checkpoint.id == "00000000000000000042" and checkpoint.metadata == {"offsets": {"t:0": 7}}
    same_model(checkpoint.model, model)
    with pytest.raises(CheckpointCorrupt, match="sha256"):
        checkpoints.restore(body, npz[:-1] + bytes([npz[-1] ^ 1]))


def test_empty_store(tmp_path):
    store = DirectoryStore(tmp_path / "new" / "dir")
    assert store.path.is_dir()
    assert store.latest() is None and store.skipped == [] and store.list() == []
    assert isinstance(store, CheckpointStore)


# Crash in the middle of a save (SIGKILL at a deterministic point)

CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from river import datasets
    from stream_logreg import OnlineLogisticRegression, optim
    from stream_logreg.checkpoints import DirectoryStore

    directory, point, crash_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
    saves = 0
    real_replace = os.replace

    def replace(src, dst):
        # os.replace is the rename step of every file of a save: die just before or after one.
        dst = str(dst)
        if saves == crash_at:
            if point == "before npz rename" and dst.endswith(".npz"):
                os.kill(os.getpid(), signal.SIGKILL)
            if point == "before manifest rename" and dst.endswith(".json"):
                os.kill(os.getpid(), signal.SIGKILL)
        real_replace(src, dst)
        if saves == crash_at and point == "after manifest rename" and dst.endswith(".json"):
            os.kill(os.getpid(), signal.SIGKILL)

    os.replace = replace
    store = DirectoryStore(directory, keep=3)
    model = OnlineLogisticRegression(optimizer=optim.FTRL(l1=0.1))
    for i, (x, y) in enumerate(datasets.Phishing()):
        model.learn_one(x, y)
        if (i + 1) % 100 == 0:
            print("saving", i + 1, flush=True)
            print("saved", store.save(model, {"offsets": {"phishing:0": i + 1}}), flush=True)
            saves += 1
    """
)


@pytest.mark.parametrize("point", ["before npz rename", "before manifest rename", "after manifest rename"])
def test_a_save_killed_midway_leaves_the_previous_checkpoint_usable(tmp_path, point):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    directory = tmp_path / "ckpt"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, str(script), str(directory), point, "4"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == -signal.SIGKILL, run.stderr
    lines = run.stdout.split()
    saved = [lines[i + 1] for i, word in enumerate(lines) if word == "saved"]
    assert len(saved) == 4 and lines[-2:] == ["saving", "500"]  # killed inside the 5th save

    names = {p.name for p in directory.iterdir()}
    crashed = max(n[1:21] for n in names if n.endswith(".tmp")) if point != "after manifest rename" else None
    if point == "before npz rename":
        assert {n for n in names if crashed in n} == {n for n in names if n.startswith(f".{crashed}.npz.")}
    elif point == "before manifest rename":
        assert f"{crashed}.npz" in names and f"{crashed}.json" not in names

    store = DirectoryStore(directory, keep=3)
    checkpoint = store.latest()
    assert checkpoint is not None
    if point == "after manifest rename":  # the rename of the manifest is the commit point
        assert checkpoint.id > saved[-1] and store.skipped == []
        offset = 500
    else:
        assert checkpoint.id == saved[-1]
        assert store.skipped == [(crashed, store.skipped[0][1])]
        assert "no manifest" in store.skipped[0][1]
        offset = 400
    assert checkpoint.metadata == {"offsets": {"phishing:0": offset}}
    expected = OnlineLogisticRegression(optimizer=optim.FTRL(l1=0.1))
    for x, y in PHISHING[:offset]:
        expected.learn_one(x, y)
    same_model(checkpoint.model, expected)

    # Resume: learn the rest, save again: it works, cleans up, and equals an uninterrupted run.
    model = checkpoint.model
    for x, y in PHISHING[offset:]:
        model.learn_one(x, y)
    new = store.save(model, {"offsets": {"phishing:0": len(PHISHING)}})
    assert new > (crashed or checkpoint.id)
    assert not [p for p in directory.iterdir() if p.name.endswith(".tmp")]
    assert not [p for p in directory.glob("*.npz") if not p.with_suffix(".json").exists()]
    assert [info.valid for info in store.list()] == [True] * 3
    uninterrupted = OnlineLogisticRegression(optimizer=optim.FTRL(l1=0.1))
    for x, y in PHISHING:
        uninterrupted.learn_one(x, y)
    same_model(store.latest().model, uninterrupted)


# Retention and ids


def test_retention_keeps_exactly_the_newest_k(tmp_path):
    store = DirectoryStore(tmp_path, keep=3)
    model = OnlineLogisticRegression()
    ids = []
    for i in range(7):
        model.learn_one({"a": float(i)}, i % 2)
        ids.append(store.save(model, {"n": i}))
    infos = store.list()
    assert [info.id for info in infos] == ids[-3:]
    assert all(info.valid and info.size > 0 for info in infos)
    assert infos[0].created_at <= infos[1].created_at <= infos[2].created_at
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [".lock"] + [f"{i}.{ext}" for i in ids[-3:] for ext in ("npz", "json")]
    )
    assert store.latest().metadata == {"n": 6}

    everything = DirectoryStore(tmp_path / "all", keep=None)
    for _ in range(4):
        everything.save(model)
    assert len(everything.list()) == 4
    with pytest.raises(ValueError):
        DirectoryStore(tmp_path, keep=0)


def test_ids_sort_by_time_even_in_a_tight_loop(tmp_path):
    store = DirectoryStore(tmp_path, keep=None, fsync=False)
    model = OnlineLogisticRegression()
    ids = [store.save(model) for _ in range(30)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(len(i) == 20 and i.isdigit() for i in ids)


def test_ids_increase_when_the_clock_stalls_or_steps_back_and_across_restarts(tmp_path, monkeypatch):
    model = OnlineLogisticRegression()
    store = DirectoryStore(tmp_path, keep=None, fsync=False)
    first = store.save(model)
    monkeypatch.setattr(checkpoints, "_now_ns", lambda: 1_000)  # the clock is stuck, far in the past
    same_ns = [store.save(model) for _ in range(3)]
    assert [first, *same_ns] == sorted({first, *same_ns})
    monkeypatch.setattr(checkpoints, "_last_ns", 0)  # a new process: only the directory remembers
    after_restart = DirectoryStore(tmp_path, keep=None).save(model)
    assert after_restart > same_ns[-1]


# No pickles, ever


class Payload:
    """Unpickling this creates ``marker`` (pickle calls ``open(marker, "w")``)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _manifest_body(manifest: Path) -> dict:
    return json.loads(manifest.read_bytes())["manifest"]


def _write_manifest(manifest: Path, body: dict) -> None:
    """The documented manifest format, written with the standard library's json."""
    data = json.dumps(body, separators=(",", ":")).encode()
    digest = hashlib.sha256(data).hexdigest().encode()
    manifest.write_bytes(b'{"manifest_sha256":"' + digest + b'","manifest":' + data + b"}")


def _replace_npz(directory: Path, cid: str, content: bytes) -> None:
    """Put ``content`` as checkpoint ``cid``'s array file, with a manifest whose checksum matches it."""
    (directory / f"{cid}.npz").write_bytes(content)
    body = _manifest_body(directory / f"{cid}.json")
    body["npz"].update(size=len(content), sha256=hashlib.sha256(content).hexdigest())
    _write_manifest(directory / f"{cid}.json", body)


def _npz_bytes(tmp_path: Path, allow_pickle: bool = False, **arrays) -> bytes:
    path = tmp_path / "crafted.npz"
    np.savez(path, allow_pickle=allow_pickle, **arrays)
    return path.read_bytes()


def test_our_manifest_writer_matches_the_library(two_checkpoints):
    store, _, _, new = two_checkpoints
    manifest = store.path / f"{new}.json"
    _write_manifest(manifest, _manifest_body(manifest))
    assert store.latest().id == new and store.skipped == []


def test_an_object_array_is_refused_and_never_unpickled(two_checkpoints, tmp_path):
    store, old, _, new = two_checkpoints
    marker = tmp_path / "unpickled"
    arrays, _ = load_checkpoint(store.path / f"{new}.json").model.state()
    arrays["w"] = np.array([Payload(str(marker))] * len(arrays["w"]), dtype=object)
    crafted = _npz_bytes(tmp_path, allow_pickle=True, **arrays)
    _replace_npz(store.path, new, crafted)
    assert [info.valid for info in store.list()] == [True, True]  # checksums match: only the pickle check

    with pytest.raises(CheckpointCorrupt, match="array 'w' holds pickled .object. data; refused"):
        load_checkpoint(store.path / f"{new}.json")
    assert store.latest().id == old
    assert "pickled" in store.skipped[0][1]
    assert not marker.exists()

    # The payload is live: numpy with allow_pickle=True would have run it.
    np.load(store.path / f"{new}.npz", allow_pickle=True)["w"]
    assert marker.exists()


def test_a_bare_pickle_is_refused_and_never_unpickled(two_checkpoints, tmp_path):
    store, old, _, new = two_checkpoints
    marker = tmp_path / "unpickled"
    _replace_npz(store.path, new, pickle.dumps({"w": Payload(str(marker))}))
    with pytest.raises(CheckpointCorrupt, match="the array file is a pickle, not an .npz; refused without"):
        load_checkpoint(store.path / f"{new}.json")
    assert store.latest().id == old
    assert not marker.exists()


@pytest.mark.parametrize(
    "change, says",
    [
        (lambda a: a.pop("optimizer.z"), r"lacks array 'optimizer.z'"),
        (lambda a: a.update(extra=np.zeros(3)), r"holds a member 'extra.npy' no model needs"),
        (lambda a: a.update(w=a["w"].astype(np.float32)), "array 'w' has dtype float32, expected float64"),
        (lambda a: a.update(w=a["w"][:-1]), r"array 'w' has shape \(\d+,\), expected \(\d+,\)"),
        (lambda a: a.update(b=np.zeros((1, 1))), r"array 'b' has shape \(1, 1\), expected \(1,\)"),
    ],
)
def test_arrays_must_be_exactly_what_the_model_needs(two_checkpoints, tmp_path, change, says):
    store, old, _, new = two_checkpoints
    arrays, _ = load_checkpoint(store.path / f"{new}.json").model.state()
    change(arrays)
    _replace_npz(store.path, new, _npz_bytes(tmp_path, **arrays))
    with pytest.raises(CheckpointCorrupt, match=says):
        store.load(new)
    assert store.latest().id == old


# Errors that say what differs


def test_unknown_schema_version_is_an_error_not_a_fallback(two_checkpoints):
    store, _, _, new = two_checkpoints
    manifest = store.path / f"{new}.json"
    body = _manifest_body(manifest)
    body.update(schema_version=3, library_version="9.0.0")
    _write_manifest(manifest, body)
    with pytest.raises(UnsupportedCheckpoint, match=r"schema version 3, written by stream-logreg '9.0.0'"
                       r".*reads versions 1 to 2"):
        load_checkpoint(manifest)
    with pytest.raises(UnsupportedCheckpoint):
        store.latest()
    info = {i.id: i for i in store.list()}[new]
    assert not info.valid and "schema version 3" in info.reason


def test_a_different_configuration_is_refused_naming_the_differences(two_checkpoints):
    store, _, _, new = two_checkpoints
    other = OnlineLogisticRegression(optimizer=optim.FTRL(alpha=0.05, l1=0.1), l2=0.01)
    with pytest.raises(CheckpointMismatch) as caught:
        store.latest(expect_config=other.config())
    message = str(caught.value)
    assert f"checkpoint {new} is of a different model configuration" in message
    assert "optimizer.alpha: checkpoint 0.17, expected 0.05" in message
    assert "l2: checkpoint 0.0, expected 0.01" in message
    assert "beta" not in message
    assert caught.value.differences == [("l2", 0.0, 0.01), ("optimizer.alpha", 0.17, 0.05)]

    sgd = OnlineLogisticRegression(optimizer=optim.SGD(0.1), n_bits=10)
    with pytest.raises(CheckpointMismatch) as caught:
        load_checkpoint(store.path / f"{new}.json", expect_config=sgd.config())
    message = str(caught.value)
    assert "optimizer.name: checkpoint 'FTRL', expected 'SGD'" in message
    assert "optimizer.lr: checkpoint '<absent>', expected 0.1" in message
    assert "n_bits: checkpoint None, expected 10" in message

    # The configuration it was saved with is accepted.
    config = store.latest().model.config()
    assert isinstance(store.latest(expect_config=config), Checkpoint)


# Schema version 2: sparse arrays, the vocabulary in the array file; version 1 still loads


def _legacy_keys(keys: list) -> list[dict]:
    """The vocabulary as the first layouts wrote it (schema 1, and schema 2 before the columnar members):
    one ``{"k": key}`` or ``{"k": key, "v": value}`` (an indicator) per column, tuples tagged."""
    def encode(k):
        return {"tuple": [encode(e) for e in k]} if isinstance(k, tuple) else k

    return [{"k": encode(k.key), "v": k.value} if isinstance(k, IndicatorKey) else {"k": encode(k)}
            for k in keys]


def test_a_checkpoint_of_schema_version_1_still_loads(tmp_path):
    model = OnlineLogisticRegression(optimizer=optim.FTRL(l1=0.1))
    learn(model, "learn_one", 0, 300)
    arrays, meta = model.state()
    meta["features"]["keys"] = _legacy_keys(model.features.keys)  # version 1 listed one dict per key
    content = _npz_bytes(tmp_path, **arrays)
    cid = "01700000000000000000"
    (tmp_path / f"{cid}.npz").write_bytes(content)
    body = {
        "format": "stream-logreg-checkpoint", "schema_version": 1, "library_version": "0.1.0", "id": cid,
        "created_at": "2026-01-01T00:00:00+00:00", "model": meta, "metadata": {"offsets": {"t:0": 300}},
        "npz": {"file": f"{cid}.npz", "size": len(content), "sha256": hashlib.sha256(content).hexdigest()},
    }
    _write_manifest(tmp_path / f"{cid}.json", body)
    with DirectoryStore(tmp_path) as store:
        checkpoint = store.latest(expect_config=model.config())
        assert checkpoint.id == cid and checkpoint.metadata == {"offsets": {"t:0": 300}}
        same_model(checkpoint.model, model)
        newer = store.save(checkpoint.model)  # written as version 2
        assert _manifest_body(tmp_path / f"{newer}.json")["schema_version"] == checkpoints.SCHEMA_VERSION == 2
        same_model(store.latest().model, model)


def test_a_hashed_model_is_stored_sparsely_and_restored_bitwise(tmp_path):
    model = OnlineLogisticRegression(optimizer=optim.FTRL(l1=0.1), n_bits=20)
    learn(model, "learn_one", 0, 300)
    arrays, meta = model.state()
    arrays["w"][7] = -0.0  # a signed zero is a bit pattern too: it must come back as it was
    arrays["optimizer.z"][11] = 5e-324
    model = OnlineLogisticRegression.from_state(arrays, meta)
    with DirectoryStore(tmp_path) as store:
        cid = store.save(model)
        size = (tmp_path / f"{cid}.npz").stat().st_size
        dense = 3 * 8 << 20
        assert size < dense / 1000, size  # 10 non-zero entries, not 2^20 of each array
        with np.load(tmp_path / f"{cid}.npz", allow_pickle=False) as npz:
            assert {"w.idx", "w.val", "optimizer.n.idx", "b"} <= set(npz.files) and "w" not in npz.files
        same_model(store.latest().model, model)
        assert bits(store.latest().model.state()[0]["w"][7]) == bits(-0.0)


def test_a_large_vocabulary_is_in_the_array_file_not_the_manifest(tmp_path):
    model = OnlineLogisticRegression()
    model.learn_batch(np.random.default_rng(0).standard_normal((2, 5000)), np.array([0.0, 1.0]))
    learn(model, "learn_one", 0, 50)  # plus string and indicator keys
    npz, manifest = checkpoints.encode_checkpoint("00000000000000000001", model)
    assert len(manifest) < 2000
    body = checkpoints.decode_manifest(manifest)
    assert body["model"]["features"]["n_keys"] == model.n_features and "keys" not in body["model"]["features"]
    same_model(checkpoints.restore(body, npz, expect_config=model.config()).model, model)
    npz_z, manifest_z = checkpoints.encode_checkpoint("00000000000000000002", model, compress=True)
    assert len(npz_z) < len(npz)
    same_model(checkpoints.restore(checkpoints.decode_manifest(manifest_z), npz_z).model, model)


# The vocabulary's columnar members: every kind of key comes back as itself, in column order

def typed(key: object) -> object:
    """A key with the type of every part spelled out (1, 1.0, True and "1" are all different)."""
    if isinstance(key, tuple):
        return type(key).__name__, tuple(typed(k) for k in key)
    return type(key).__name__, key


MIXED_KEYS = [1, "1", 2.5, ("a", "FR"), "a=FR", IndicatorKey("a", "FR"), IndicatorKey(7, "x"), 2**63,
              -(2**63), 2**63 - 1, (1, ("x", 2.0)), "", "é\U0001f600", "lone \ud800", False,
              IndicatorKey("", "")]


def space_of(keys: list) -> FeatureSpace:
    space = FeatureSpace()
    space.columns_of(keys, grow=True)
    return space


def model_with_keys(keys: list) -> OnlineLogisticRegression:
    model = OnlineLogisticRegression()
    model.features = space_of(keys)
    model._grow(model.features.n_columns)
    return model


@pytest.mark.parametrize("keys", [MIXED_KEYS, ["a", "b", "ç"], list(range(50)), [IndicatorKey("k", "v")], []],
                         ids=["mixed", "str", "int", "indicator", "empty"])
def test_every_kind_of_vocabulary_key_round_trips_through_a_checkpoint(keys):
    model = model_with_keys(keys)
    assert [typed(k) for k in model.features.keys] == [typed(k) for k in keys]
    npz, manifest = checkpoints.encode_checkpoint("00000000000000000001", model)
    restored = checkpoints.restore(checkpoints.decode_manifest(manifest), npz).model
    assert [typed(k) for k in restored.features.keys] == [typed(k) for k in keys]
    assert restored.features.columns == model.features.columns
    same_model(restored, model)


def test_the_first_schema_2_layout_with_the_vocabulary_as_json_still_loads():
    model = OnlineLogisticRegression()
    learn(model, "learn_one", 0, 300)
    npz, manifest = checkpoints.encode_checkpoint("00000000000000000001", model)
    body = checkpoints.decode_manifest(manifest)
    with np.load(io.BytesIO(npz), allow_pickle=False) as f:
        members = {name: f[name] for name in f.files if name not in checkpoints._VOCABULARY}
    legacy = json.dumps(_legacy_keys(model.features.keys)).encode()
    members["features.keys"] = np.frombuffer(legacy, dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **members)
    old_npz = buffer.getvalue()
    features = body["model"]["features"]
    del features["vocabulary"]
    features["keys_bytes"] = len(legacy)
    body["npz"].update(size=len(old_npz), sha256=hashlib.sha256(old_npz).hexdigest())
    restored = checkpoints.restore(body, old_npz, expect_config=model.config()).model
    assert [typed(k) for k in restored.features.keys] == [typed(k) for k in model.features.keys]
    same_model(restored, model)


def _with_vocabulary_member(name: str, values: np.ndarray) -> tuple[dict, bytes]:
    model = model_with_keys(MIXED_KEYS)
    npz, manifest = checkpoints.encode_checkpoint("00000000000000000001", model)
    body = checkpoints.decode_manifest(manifest)
    with np.load(io.BytesIO(npz), allow_pickle=False) as f:
        members = {n: f[n] for n in f.files}
    members[name] = values
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **members)
    data = buffer.getvalue()
    body["model"]["features"]["vocabulary"][name.removeprefix("features.")] = len(values)
    body["npz"].update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    return body, data


@pytest.mark.parametrize(("name", "values", "reason"), [
    ("features.kinds", np.frombuffer(b"s" * len(MIXED_KEYS), dtype=np.uint8), "do not describe"),
    ("features.kinds", np.frombuffer(b"q" * len(MIXED_KEYS), dtype=np.uint8), "letter other than"),
    ("features.kinds", np.frombuffer(b"s", dtype=np.uint8), "do not describe"),
    ("features.lengths", np.array([-1, 1, 0, 0, 0, 0, 0, 0, 0, 0], dtype=np.int64), "do not add up"),
    ("features.lengths", np.array([10**6] * 10, dtype=np.int64), "do not add up"),
    ("features.lengths", np.array([0], dtype=np.int64), "do not add up"),
    ("features.text", np.frombuffer(b"\xff\xfe" * 20, dtype=np.uint8), "not UTF-8"),
    ("features.other", np.frombuffer(b"[{", dtype=np.uint8), "not valid JSON"),
    ("features.other", np.frombuffer(b'{"k": 1}', dtype=np.uint8), "not a list"),
    ("features.ints", np.array([], dtype=np.int64), "do not describe"),
])
def test_a_malformed_vocabulary_is_a_clear_corrupt_reason(name, values, reason):
    body, data = _with_vocabulary_member(name, values)
    with pytest.raises(CheckpointCorrupt, match=reason):
        checkpoints.restore(body, data)


def test_malformed_vocabulary_sizes_in_the_manifest_are_refused_before_reading():
    model = model_with_keys(MIXED_KEYS)
    npz, manifest = checkpoints.encode_checkpoint("00000000000000000001", model)
    for sizes in ({"kinds": 1}, {"kinds": -1, "text": 0, "lengths": 0, "ints": 0, "other": 0}, [], None,
                  {"kinds": True, "text": 0, "lengths": 0, "ints": 0, "other": 0}):
        body = checkpoints.decode_manifest(manifest)
        body["model"]["features"]["vocabulary"] = sizes
        with pytest.raises(CheckpointCorrupt, match="vocabulary sizes"):
            checkpoints.restore(body, npz)
