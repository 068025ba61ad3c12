"""A checkpoint directory is untrusted input: planted or damaged entries are skipped with a reason.

Every directory below holds a valid checkpoint ``old`` and, newer, one hostile entry. The store's
``latest``/``list`` and the commands ``inspect``, ``score`` and ``consume`` must fall back to ``old`` (or
refuse with a clear message), in bounded time (a subprocess timeout) and bounded memory (``RLIMIT_AS`` of
2 GiB in the child), with no traceback. The crafted files are written by this test's own implementation of
the documented format (zip and .npy headers by hand, stdlib ``json``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import resource
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from consumers import cli
from consumers.settings import CONSUME_SETTINGS, learner_config, resolve_settings
from stream_logreg import OnlineLogisticRegression, checkpoints, optim
from stream_logreg.checkpoints import CheckpointCorrupt, CheckpointError, DirectoryStore

ROOT = Path(__file__).resolve().parents[1]
ROWS = [({"a": float(i % 7), "b": 1.5 - i % 3, "city": ["Paris", "Rome", "Oslo"][i % 3]}, i % 2 == 0)
        for i in range(60)]
MEMORY_LIMIT = 2 << 30


def make_model() -> OnlineLogisticRegression:
    """A model of ``consume``'s options with ``--optimizer ftrl`` (an accumulator the hostile entries
    can make negative), trained a little."""
    args = cli.build_parser().parse_args(["consume", "--topics", "events", "--optimizer", "ftrl"])
    values, _ = resolve_settings(args, CONSUME_SETTINGS, {})
    model = learner_config(values).make_model()
    assert isinstance(model.optimizer, optim.FTRL)
    for x, y in ROWS:
        model.learn_one(x, y)
    return model


# The documented format, written independently


def manifest_body(path: Path) -> dict:
    return json.loads(path.read_bytes())["manifest"]


def write_manifest(path: Path, body: dict) -> None:
    data = json.dumps(body, separators=(",", ":")).encode()
    path.write_bytes(b'{"manifest_sha256":"' + hashlib.sha256(data).hexdigest().encode() + b'","manifest":'
                     + data + b"}")


def put_npz(d: Path, cid: str, content: bytes) -> None:
    """``content`` as checkpoint ``cid``'s array file, with a manifest whose size and sha256 match it."""
    (d / f"{cid}.npz").write_bytes(content)
    body = manifest_body(d / f"{cid}.json")
    body["npz"].update(size=len(content), sha256=hashlib.sha256(content).hexdigest())
    write_manifest(d / f"{cid}.json", body)


def members_of(d: Path, cid: str) -> dict[str, np.ndarray]:
    with np.load(d / f"{cid}.npz", allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


def npz_of(members: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **members)
    return buffer.getvalue()


def npy_header(dtype: str, shape: tuple) -> bytes:
    f = io.BytesIO()
    np.lib.format.write_array_header_1_0(f, {"descr": dtype, "fortran_order": False, "shape": shape})
    return f.getvalue()


def zip_of(entries: list[tuple[str, int, bytes, int, int | None]]) -> bytes:
    """A zip file by hand: entries (name, method 0/8, data as stored, declared uncompressed size, crc)."""
    entries = [(name, method, data, size, zlib.crc32(data) if crc is None else crc)
               for name, method, data, size, crc in entries]
    out, central = io.BytesIO(), io.BytesIO()
    for name, method, data, size, crc in entries:
        offset = out.tell()
        fields = (20, 0, method, 0, 0, crc, len(data), size, len(name), 0)
        out.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, *fields) + name.encode() + data)
        central.write(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0, crc, len(data),
                                  size, len(name), 0, 0, 0, 0, 0, offset) + name.encode())
    cd = central.getvalue()
    start = out.tell()
    out.write(cd + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries), len(cd), start, 0))
    return out.getvalue()


def zip_bomb(n: int) -> bytes:
    """``w.npy`` declaring the right header and size (n float64), whose deflate stream expands to 4 GiB."""
    header = npy_header("<f8", (n,))
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(1 << 20)
    stream = [c.compress(header + zeros) + c.flush(zlib.Z_FULL_FLUSH)]
    block = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    stream += [block] * (4 << 10)
    stream.append(c.flush())
    return zip_of([("w.npy", 8, b"".join(stream), len(header) + 8 * n, 0)])


def understated(n: int) -> bytes:
    """``w.npy`` of n float64, deflated, whose zip entry declares 8 bytes less than its header needs."""
    header = npy_header("<f8", (n,))
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    data = c.compress(header + bytes(8 * n)) + c.flush()
    return zip_of([("w.npy", 8, data, len(header) + 8 * n - 8, None)])


OBJECT_HEADER = npy_header("|O", (5,))


# The hostile entries: each gets (directory, old id, new id) and plants something newer than old


def edit_body(change: Callable[[dict], None]) -> Callable[[Path, str, str], None]:
    def plant(d: Path, old: str, new: str) -> None:
        body = manifest_body(d / f"{new}.json")
        change(body)
        write_manifest(d / f"{new}.json", body)
    return plant


def edit_members(change: Callable[[dict], None]) -> Callable[[Path, str, str], None]:
    def plant(d: Path, old: str, new: str) -> None:
        members = members_of(d, new)
        change(members)
        put_npz(d, new, npz_of(members))
    return plant


def replace(name: str, make: Callable[[Path], None]) -> Callable[[Path, str, str], None]:
    def plant(d: Path, old: str, new: str) -> None:
        path = d / name.format(new=new)
        if path.exists():
            path.unlink()
        make(path)
    return plant


def deep_vocabulary(depth: int) -> Callable[[dict], None]:
    """A vocabulary key of the generic kind (``o``) made a tuple nested ``depth`` deep, in place of the
    first key (JSON text built as text: no recursion)."""
    def change(members: dict) -> None:
        kinds = members["features.kinds"].tobytes()
        assert kinds[:1] == b"s", kinds[:1]  # the first key is a str: drop its name from the text
        lengths = members["features.lengths"]
        members["features.text"] = members["features.text"][len(members["features.text"].tobytes()
                                                                 .decode()[: lengths[0]].encode()):]
        members["features.lengths"] = lengths[1:]
        members["features.kinds"] = np.frombuffer(b"o" + kinds[1:], dtype=np.uint8)
        rest = members["features.other"].tobytes().decode()[1:]
        first = '{"k":' + '{"tuple":[' * depth + '"x"' + "]}" * depth + "}"
        members["features.other"] = np.frombuffer(f"[{first}{',' if rest != ']' else ''}{rest}".encode(),
                                                  dtype=np.uint8)
    return change


def with_keys_bytes(plant: Callable[[Path, str, str], None]) -> Callable[[Path, str, str], None]:
    """``plant``, then the manifest's declared vocabulary sizes made to match the new members."""
    def both(d: Path, old: str, new: str) -> None:
        plant(d, old, new)
        body = manifest_body(d / f"{new}.json")
        with np.load(d / f"{new}.npz", allow_pickle=False) as npz:
            sizes = body["model"]["features"]["vocabulary"]
            for name in sizes:
                sizes[name] = len(npz[f"features.{name}"])
        write_manifest(d / f"{new}.json", body)
    return both


def put_w(members: dict, values: np.ndarray) -> None:
    members.pop("w", None), members.pop("w.idx", None), members.pop("w.val", None)
    members["w"] = values


HOSTILE: dict[str, tuple[Callable[[Path, str, str], None], str]] = {
    "fifo as manifest": (replace("{new}.json", os.mkfifo), "is a FIFO, not a regular file"),
    "fifo as array file": (replace("{new}.npz", os.mkfifo), "is a FIFO, not a regular file"),
    "symlink to /dev/zero as array file": (
        replace("{new}.npz", lambda p: p.symlink_to("/dev/zero")), "symbolic link"),
    "symlink to /dev/zero as manifest": (
        replace("{new}.json", lambda p: p.symlink_to("/dev/zero")), "symbolic link"),
    "directory as manifest": (replace("{new}.json", Path.mkdir), "is a directory, not a regular file"),
    "directory as array file": (replace("{new}.npz", Path.mkdir), "is a directory, not a regular file"),
    "manifest over the size cap": (
        replace("{new}.json", lambda p: os.truncate(os.open(p, os.O_CREAT | os.O_WRONLY), 1 << 40)),
        "more than a manifest may have"),
    "array file of another size than declared": (
        edit_body(lambda b: b["npz"].update(size=1 << 40)), "the manifest says 1099511627776"),
    "shape (2**40,)": (
        lambda d, old, new: put_npz(d, new, zip_of([("w.npy", 0, npy_header("<f8", (1 << 40,)) + bytes(64),
                                                     len(npy_header("<f8", (1 << 40,))) + 64, None)])),
        "has shape (1099511627776,), expected"),
    "zip bomb": (
        lambda d, old, new: put_npz(d, new, zip_bomb(len(members_of(d, new)["w"]))), "w"),
    "declared size disagrees with the header": (
        lambda d, old, new: put_npz(d, new, understated(len(members_of(d, new)["w"]))), "declares"),
    "object array": (
        lambda d, old, new: put_npz(d, new, zip_of([("w.npy", 0, OBJECT_HEADER, len(OBJECT_HEADER), None)])),
        "pickled (object) data"),
    "NaN weight": (edit_members(lambda m: put_w(m, np.where(np.arange(len(m["w"])) == 1, np.nan, m["w"]))),
                   "non-finite"),
    "infinite weight": (edit_members(lambda m: put_w(m, np.full(len(m["w"]), np.inf))), "non-finite"),
    "negative accumulator": (edit_members(lambda m: m.update({"optimizer.n": -np.abs(m["optimizer.n"]) - 1})),
                             "negative"),
    "deeply nested vocabulary key": (with_keys_bytes(edit_members(deep_vocabulary(5000))), "vocabulary"),
    "nested vocabulary key within JSON's depth": (with_keys_bytes(edit_members(deep_vocabulary(300))),
                                                  "nested too deeply"),
    "offset not an integer": (edit_body(lambda b: b["metadata"].update(offsets={"events:0": "1"})), "offset"),
    "offset negative": (edit_body(lambda b: b["metadata"].update(offsets={"events:0": -5})), "offset"),
    "offset key without partition": (edit_body(lambda b: b["metadata"].update(offsets={"events": 5})),
                                     "offset"),
    "offsets not a mapping": (edit_body(lambda b: b["metadata"].update(offsets=[1, 2])), "not a mapping"),
    "negative sample count": (edit_body(lambda b: b["model"].update(n_samples_seen=-1)), "not a count"),
}


@pytest.fixture()
def hostile_dir(tmp_path: Path, request: pytest.FixtureRequest) -> tuple[Path, str, str, str]:
    """(directory, old id, hostile id, expected reason) for the case ``request.param``."""
    d = tmp_path / "ckpt"
    model = make_model()
    with DirectoryStore(d, keep=None, fsync=False) as store:
        old = store.save(model, {"offsets": {"events:0": 60}})
        model.learn_one({"a": 2.0, "city": "Lima"}, True)
        new = store.save(model, {"offsets": {"events:0": 61}})
    plant, reason = HOSTILE[request.param]
    plant(d, old, new)
    return d, old, new, reason


def cases() -> list:
    return [pytest.param(name, id=name) for name in HOSTILE]


@pytest.mark.parametrize("hostile_dir", cases(), indirect=True)
def test_latest_and_list_skip_the_hostile_entry_with_a_reason(hostile_dir):
    d, old, new, reason = hostile_dir
    store = DirectoryStore(d, read_only=True)
    checkpoint = store.latest()
    assert checkpoint is not None and checkpoint.id == old
    assert [cid for cid, _ in store.skipped] == [new]
    assert reason in store.skipped[0][1], store.skipped
    infos = {info.id: info for info in store.list()}
    assert infos[old].valid
    with pytest.raises(CheckpointCorrupt):
        DirectoryStore(d, read_only=True).load(new)


@pytest.mark.parametrize("hostile_dir", cases(), indirect=True)
def test_a_save_works_next_to_the_hostile_entry(hostile_dir):
    d, old, new, _ = hostile_dir
    with DirectoryStore(d, keep=1) as store:
        newer = store.save(make_model())
        assert newer > new and len(newer) == 20
        assert store.latest().id == newer
        assert [info.id for info in store.list() if info.valid] == [newer]


# The commands, in a child with bounded memory and time


def limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAM_LOGREG_")}
    env["PYTHONPATH"] = str(ROOT)
    env["OPENBLAS_NUM_THREADS"] = "1"
    return env


def run_command(*args: str, stdin: bytes = b"", timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "consumers.cli", *args], input=stdin, capture_output=True,
                          env=child_env(), timeout=timeout, preexec_fn=limit_memory)


def no_traceback(stderr: bytes) -> None:
    text = stderr.decode(errors="replace")
    assert "Traceback" not in text and "MemoryError" not in text, text


@pytest.mark.parametrize("hostile_dir", cases(), indirect=True)
def test_inspect_and_score_fall_back_to_the_valid_checkpoint(hostile_dir):
    d, old, new, reason = hostile_dir
    proc = run_command("inspect", str(d))
    assert proc.returncode == 0, proc.stderr.decode()
    assert f"checkpoint     {old}" in proc.stdout.decode()
    assert f"skipped damaged checkpoint {new}: " in proc.stderr.decode()
    no_traceback(proc.stderr)

    proc = run_command("score", "--checkpoint-dir", str(d), stdin=b'{"x": {"a": 1.0, "city": "Rome"}}\n')
    assert proc.returncode == 0, proc.stderr.decode()
    p = json.loads(proc.stdout)["p"]
    assert p == DirectoryStore(d, read_only=True).latest().model.predict_proba_one(
        {"a": 1.0, "city": "Rome"})[True]
    no_traceback(proc.stderr)


def consume_until_restored(d: Path, timeout: float = 60) -> tuple[str, int | None]:
    """Run ``consume`` against a broker that is not there until it has restored a checkpoint (or exited);
    then kill it. Returns (its stderr, its exit status if it exited by itself)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "consumers.cli", "consume", "--topics", "events", "--bootstrap-servers",
         "127.0.0.1:9", "--checkpoint-dir", str(d), "--metrics-port", "0", "--log-level", "INFO",
         "--optimizer", "ftrl"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=child_env(), preexec_fn=limit_memory,
    )
    os.set_blocking(proc.stderr.fileno(), False)
    deadline, text, exited = time.monotonic() + timeout, b"", None
    try:
        while time.monotonic() < deadline:
            chunk = proc.stderr.read() or b""
            text += chunk
            if b"restored checkpoint" in text or b"starting a fresh model" in text:
                break
            if proc.poll() is not None:
                exited = proc.returncode
                text += proc.stderr.read() or b""
                break
            time.sleep(0.05)  # polling the child's output, with a deadline
        else:
            raise AssertionError(f"consume neither restored nor exited in {timeout}s: {text.decode()}")
    finally:  # past the restore, nothing here is under test (stopping is, in test_consumer.py): kill it
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        proc.stderr.close()
    return text.decode(errors="replace"), exited


@pytest.mark.parametrize("hostile_dir", cases(), indirect=True)
def test_consume_gets_past_the_restore(hostile_dir):
    d, old, new, _ = hostile_dir
    text, exited = consume_until_restored(d)
    assert exited is None, text
    assert f"restored checkpoint {old}" in text
    assert f"checkpoint {new} in {d} skipped" in text
    assert "Traceback" not in text


# Ids outside the format


def test_ids_outside_the_format_are_ignored_and_never_extended(tmp_path, monkeypatch):
    d = tmp_path / "ckpt"
    model = make_model()
    with DirectoryStore(d, keep=None, fsync=False) as store:
        old = store.save(model)
        # A valid checkpoint under a 21-digit name, and junk under the largest 20-digit id.
        for ext in ("json", "npz"):
            (d / f"1{old}.{ext}").write_bytes((d / f"{old}.{ext}").read_bytes())
        (d / "99999999999999999999.json").write_bytes(b"planted")
        (d / "99999999999999999999.npz").write_bytes(b"planted")
        new = store.save(model)
        assert len(new) == 20 and old < new < "99999999999999999999"
        assert store.latest().id == new and [i for i, _ in store.skipped] == ["99999999999999999999"]
        assert all(len(info.id) == 20 for info in store.list())
        # Junk with an id above the clock is stepped over, not copied: ids stay 20 digits.
        monkeypatch.setattr(checkpoints, "_now_ns", lambda: 10**20 - 3)
        monkeypatch.setattr(checkpoints, "_last_ns", 0)
        (d / f"{10**20 - 3}.json").write_bytes(b"planted")
        assert store.save(model) == f"{10**20 - 2}"


def test_no_id_left_is_a_clear_error(tmp_path):
    d = tmp_path / "ckpt"
    with DirectoryStore(d, keep=None, fsync=False) as store:
        old = store.save(make_model())
        body = manifest_body(d / f"{old}.json")
        body["id"] = "99999999999999999999"
        write_manifest(d / "99999999999999999999.json", body)
        (d / "99999999999999999999.npz").write_bytes((d / f"{old}.npz").read_bytes())
        assert store.latest().id == "99999999999999999999"
        with pytest.raises(CheckpointError, match="no checkpoint id is left in .*99999999999999999999 is the "
                                                  "largest id there can be"):
            store.save(make_model())


def test_undeletable_leftovers_are_skipped_with_a_warning(tmp_path, caplog):
    d = tmp_path / "ckpt"
    model = make_model()
    with DirectoryStore(d, keep=2, fsync=False) as store:
        ids = [store.save(model) for _ in range(2)]
        # A directory (not empty: it cannot be removed) named like a leftover temp file and like a checkpoint.
        for name in (f".{ids[0]}.npz.4242.tmp", f"{ids[0]}.json.x"):
            (d / name).mkdir()
            (d / name / "f").write_bytes(b"")
        (d / f"{ids[1]}.npz").unlink()
        (d / f"{ids[1]}.npz").mkdir()
        (d / f"{ids[1]}.npz" / "f").write_bytes(b"")
        with caplog.at_level("WARNING", logger="stream_logreg.checkpoints"):
            for _ in range(3):
                latest = store.save(model)
        assert store.latest().id == latest
        assert len([info for info in store.list() if info.valid]) == 2
        warnings = [r.getMessage() for r in caplog.records]
        assert any("cannot delete" in w and ".4242.tmp" in w for w in warnings), warnings


# One writer per directory


HOLDER = """
import sys
from stream_logreg.checkpoints import DirectoryStore
store = DirectoryStore(sys.argv[1])
print("locked", flush=True)
sys.stdin.read()
"""


def hold(d: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(d)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, env=child_env())
    assert proc.stdout.readline() == b"locked\n"
    return proc


def test_a_second_writer_in_another_process_is_refused(tmp_path):
    d = tmp_path / "ckpt"
    with DirectoryStore(d) as store:
        store.save(make_model())
    holder = hold(d)
    try:
        with pytest.raises(CheckpointError, match=rf"directory {d} is in use: process {holder.pid} writes "):
            DirectoryStore(d)
        with pytest.raises(CheckpointError, match="in use"):
            checkpoints.save_checkpoint(d, make_model())
        assert DirectoryStore(d, read_only=True).latest() is not None  # readers take no lock
        proc = run_command("inspect", str(d))
        assert proc.returncode == 0, proc.stderr.decode()
        text, exited = consume_until_restored(d)
        assert exited == 1 and f"is in use: process {holder.pid} writes checkpoints there" in text, text
        assert "Traceback" not in text
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    # Released at exit; a store of this process can now own it, and two stores of one process share it.
    with DirectoryStore(d) as a, DirectoryStore(d) as b:
        a.save(make_model()), b.save(make_model())
    # A crashed owner's lock is released by the OS.
    holder = hold(d)
    holder.kill()
    holder.wait(timeout=30)
    with DirectoryStore(d) as store:
        store.save(make_model())


def test_a_closed_or_read_only_store_does_not_save(tmp_path):
    store = DirectoryStore(tmp_path / "ckpt")
    store.close()
    with pytest.raises(CheckpointError, match="read-only"):
        store.save(make_model())
    with pytest.raises(CheckpointError, match="not a directory"):
        DirectoryStore(tmp_path / "absent", read_only=True)


def test_a_planted_lock_file_is_a_clear_error(tmp_path):
    d = tmp_path / "ckpt"
    d.mkdir()
    os.mkfifo(d / ".lock")
    with pytest.raises(CheckpointError, match=r"\.lock is a FIFO, not a regular file"):
        DirectoryStore(d)
    (d / ".lock").unlink()
    (d / ".lock").symlink_to("/dev/zero")
    with pytest.raises(CheckpointError, match="symbolic link"):
        DirectoryStore(d)


# inspect never lets a terminal escape sequence through


def test_inspect_escapes_control_characters(tmp_path):
    d = tmp_path / "ckpt"
    model = OnlineLogisticRegression()
    for i in range(20):
        x = {"evil\x1b[2J": 1.0, "c1\x9b31m": 2.0, "del\x7f": 0.5, "ok": float(i % 2)}
        model.learn_one(x, i % 2 == 0)
    with DirectoryStore(d) as store:
        store.save(model, {"offsets": {"t\x1b]0;x\x07:0": 3}, "note": "bell\x07"})
    proc = run_command("inspect", str(d), "--top", "10")
    assert proc.returncode == 0, proc.stderr.decode()
    out = proc.stdout.decode()
    assert "evil\\x1b[2J" in out and "c1\\x9b31m" in out and "del\\x7f" in out and "bell\\x07" in out
    assert not any(c in out for c in "\x1b\x9b\x7f\x07")
    proc = run_command("inspect", str(d), "--json")
    assert proc.returncode == 0
    assert not any(c in proc.stdout.decode() for c in "\x1b\x9b\x7f\x07")
    names = {t["feature"] for t in json.loads(proc.stdout)["top_weights"]}
    assert {"evil\x1b[2J", "c1\x9b31m", "del\x7f"} <= names  # JSON escapes them; its readers get them back


def test_stores_of_one_process_share_the_lock_and_take_turns_to_save(tmp_path):
    import threading

    d = tmp_path / "ckpt"
    model = make_model()
    ids: list[str] = []
    with DirectoryStore(d, keep=None, fsync=False) as a, DirectoryStore(d, keep=None, fsync=False) as b:
        threads = [threading.Thread(target=lambda s=s: ids.extend(s.save(model) for _ in range(10)))
                   for s in (a, b, a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        infos = a.list()
    assert len(set(ids)) == 40 and sorted(ids) == [info.id for info in infos]
    assert all(info.valid for info in infos)
