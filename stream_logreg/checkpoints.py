"""Checkpoints of the model (w, b, optimizer state, feature space) and of the caller's offsets.

A checkpoint is everything :meth:`OnlineLogisticRegression.state` returns, plus a JSON-able dict of the
caller's (the Kafka consumer stores there, per topic-partition, the next offset to read:
``{"offsets": {"topic:0": 123}}``). Restoring it gives a model whose predictions and future updates are
bitwise those of the saved one.

The contract
------------
- **Durable and atomic.** :meth:`DirectoryStore.save` returns only after the checkpoint is on disk
  (``fsync`` of both files and of the directory). A checkpoint is visible to readers only once complete: a
  crash at any point of a save leaves either the previous checkpoints alone, or the new one complete.
- **Verified.** Loading checks the manifest's own checksum, the schema version, the size and sha256 of the
  array file, and that the arrays are exactly those the model needs (names, float64, shapes). Anything else
  raises a :class:`CheckpointError` that says what differs. :meth:`DirectoryStore.latest` skips damaged
  checkpoints (and says why, in ``store.skipped`` and a warning on the ``stream_logreg.checkpoints``
  logger) and returns the newest one that verifies, so a half-written or corrupted checkpoint costs only the
  progress since the previous one.
- **Never unpickles.** Arrays are read only with ``np.load(..., allow_pickle=False)``, JSON only as JSON. A
  file holding a pickle (an object array) is refused with :class:`CheckpointCorrupt`, unexecuted.
- **Same model or an error.** ``expect_config=model.config()`` refuses a checkpoint of other
  hyper-parameters with :class:`CheckpointMismatch`, which lists them. An intact checkpoint of an unknown
  schema version raises :class:`UnsupportedCheckpoint`. Neither is skipped: they mean the program, not the
  checkpoint, changed.
- **Ids sort by time.** An id is the 20-digit wall-clock time in nanoseconds when the save started, bumped
  to one more than any id already in the directory, so a later save always has a larger id (across
  restarts, clock steps back, and several saves within one nanosecond).

The on-disk layout (schema version 1)
-------------------------------------
One directory holds, per checkpoint ``<id>``:

- ``<id>.npz``: the model's arrays, written by ``np.savez`` (one ``.npy`` member per array: ``w``, ``b``,
  ``optimizer.<name>`` and ``bias_optimizer.<name>``, all float64);
- ``<id>.json``: the manifest, the commit record, written last. It is one JSON object,
  ``{"manifest_sha256":"<64 hex>","manifest":<body>}``, where the hex is the sha256 of the exact bytes of
  ``<body>`` as they appear in the file (so the check does not depend on how a JSON library formats
  numbers). The body holds ``format`` (``"stream-logreg-checkpoint"``), ``schema_version``,
  ``library_version``, ``id``, ``created_at`` (UTC, ISO-8601), ``model`` (the JSON half of
  ``model.state()``: hyper-parameters, feature space, counters), ``metadata`` (the caller's dict) and
  ``npz`` (``{"file", "size", "sha256"}`` of the array file's bytes).

Each file is written to a hidden temporary ``.<id>.<ext>.<pid>.tmp`` in the same directory, flushed,
fsynced and renamed into place (``os.replace``), then the directory is fsynced: first the ``.npz``, then
the manifest. A checkpoint exists when its manifest does. Saves take an exclusive ``flock`` on
``<directory>/.lock``, so temporary files and manifest-less ``.npz`` files older than a new save are
leftovers of crashed saves; the save deletes them, and all but the newest ``keep`` complete checkpoints.

Other stores (e.g. a compacted Kafka topic) implement :class:`CheckpointStore` with the same format: the
bytes of the array file and of the manifest, made by :func:`encode_checkpoint` and read back by
:func:`decode_manifest` and :func:`restore`.

Examples
--------

>>> import tempfile
>>> from stream_logreg import OnlineLogisticRegression, optim
>>> from stream_logreg.checkpoints import DirectoryStore

>>> model = OnlineLogisticRegression(optimizer=optim.FTRL(alpha=0.1, l1=0.01))
>>> model.learn_one({"amount": 3.5, "country": "FR"}, True)
>>> with tempfile.TemporaryDirectory() as tmp:
...     store = DirectoryStore(tmp, keep=3)
...     checkpoint_id = store.save(model, {"offsets": {"payments:0": 1}})
...     checkpoint = store.latest(expect_config=model.config())
>>> checkpoint.id == checkpoint_id, checkpoint.metadata
(True, {'offsets': {'payments:0': 1}})
>>> checkpoint.model.coef.tobytes() == model.coef.tobytes()
True

"""

from __future__ import annotations

import builtins
import contextlib
import datetime as dt
import hashlib
import io
import logging
import os
import re
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol, runtime_checkable

import numpy as np
import orjson

from stream_logreg import __version__
from stream_logreg import optim as optim_
from stream_logreg.model import OnlineLogisticRegression

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: saves are not locked against other processes
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "SCHEMA_VERSION",
    "Checkpoint",
    "CheckpointCorrupt",
    "CheckpointError",
    "CheckpointInfo",
    "CheckpointMismatch",
    "CheckpointStore",
    "DirectoryStore",
    "UnsupportedCheckpoint",
    "decode_manifest",
    "encode_checkpoint",
    "encode_manifest",
    "load_checkpoint",
    "restore",
    "save_checkpoint",
]

logger = logging.getLogger("stream_logreg.checkpoints")

#: The version of the layout written by this library; loading refuses any other.
SCHEMA_VERSION = 1
FORMAT = "stream-logreg-checkpoint"

_MANIFEST_HEAD = b'{"manifest_sha256":"'
_MANIFEST_MID = b'","manifest":'
_BODY_START = len(_MANIFEST_HEAD) + 64 + len(_MANIFEST_MID)
_ID = re.compile(r"^(\d{20})\.(npz|json)$")
_TEMP = re.compile(r"^\.(\d{20})\.(npz|json)\.\d+\.tmp$")
_CHUNK = 1 << 20
_ABSENT = "<absent>"


# Errors


class CheckpointError(Exception):
    """A checkpoint could not be written or used; the message says why."""


class CheckpointCorrupt(CheckpointError):
    """The checkpoint is damaged or incomplete (or holds what this library never writes, e.g. a pickle).

    :meth:`DirectoryStore.latest` skips such checkpoints and falls back to older ones.
    """


class UnsupportedCheckpoint(CheckpointError):
    """The checkpoint is intact but written with a schema version this library does not read."""


class CheckpointMismatch(CheckpointError):
    """The checkpoint is of a model with other hyper-parameters than expected.

    ``differences`` lists ``(name, value in the checkpoint, expected value)``, names dotted
    (``"optimizer.lr"``); a value missing on one side is ``"<absent>"``.
    """

    def __init__(self, checkpoint_id: str, differences: list[tuple[str, Any, Any]]) -> None:
        self.checkpoint_id = checkpoint_id
        self.differences = differences
        listed = "; ".join(f"{name}: checkpoint {a!r}, expected {b!r}" for name, a, b in differences)
        super().__init__(f"checkpoint {checkpoint_id} is of a different model configuration: {listed}")


# What the stores return


@dataclass(frozen=True)
class Checkpoint:
    """A restored checkpoint: the model as it was saved and the caller's metadata."""

    id: str
    created_at: dt.datetime
    model: OnlineLogisticRegression
    metadata: dict
    library_version: str


@dataclass(frozen=True)
class CheckpointInfo:
    """What is on disk for one id: ``valid`` says whether its manifest and array file verify (checksums,
    schema version), without loading the arrays; ``reason`` says why not."""

    id: str
    created_at: dt.datetime | None
    size: int
    valid: bool
    reason: str | None = None


@runtime_checkable
class CheckpointStore(Protocol):
    """Where checkpoints live. ``save`` is durable when it returns; ``latest`` returns the newest checkpoint
    that verifies (or ``None``), skipping damaged ones and raising :class:`CheckpointMismatch` /
    :class:`UnsupportedCheckpoint` for intact ones it must not use; ``list`` describes them all, oldest
    first."""

    def save(self, model: OnlineLogisticRegression, metadata: dict | None = None) -> str: ...

    def latest(self, expect_config: dict | None = None) -> Checkpoint | None: ...

    def list(self) -> list[CheckpointInfo]: ...


# The format, independent of where the bytes live


def _utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


def _differences(a: Any, b: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted path, a's value, b's value)`` wherever two JSON-like values differ (dicts are compared by
    key, everything else as a whole, so ``1 == 1.0`` but a tuple differs from a list)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b), key=str):
            name = f"{path}.{key}" if path else str(key)
            out += _differences(a.get(key, _ABSENT), b.get(key, _ABSENT), name)
        return out
    same = type(a) is type(b) or (
        isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool)
        and not isinstance(b, bool)
    )
    return [] if same and a == b else [(path or "<root>", a, b)]


def _to_json(value: Any, what: str) -> bytes:
    """``value`` as JSON bytes, refusing what would not read back equal (non-finite floats, tuples, ...)."""
    try:
        data = orjson.dumps(value)
    except TypeError as exc:
        raise CheckpointError(f"{what} is not JSON-able: {exc}") from None
    changed = _differences(value, orjson.loads(data))
    if changed:
        path, before, after = changed[0]
        raise CheckpointError(
            f"{what} does not survive JSON unchanged at {path!r}: {before!r} would read back as {after!r}"
        )
    return data


def _check_model_meta(meta: dict) -> None:
    """Refuse a model state that would not read back from JSON unchanged.

    The vocabulary (``features.keys``, one entry per column, possibly millions) is checked cheaply: its
    keys are JSON scalars or tagged tuples, which read back unchanged except a non-finite float, written
    ``null``; only if ``null`` appears in its JSON at all is it compared in full.
    """
    features = dict(meta["features"])
    keys = features.pop("keys")
    _to_json({**meta, "features": features}, "the model's state")
    if b"null" in orjson.dumps(keys):
        _to_json(keys, "the model's vocabulary")


def encode_manifest(body: dict) -> bytes:
    """The manifest file's bytes: ``{"manifest_sha256":"<hex>","manifest":<body>}``, hex = sha256(body)."""
    data = orjson.dumps(body)
    return _MANIFEST_HEAD + hashlib.sha256(data).hexdigest().encode() + _MANIFEST_MID + data + b"}"


def decode_manifest(raw: bytes) -> dict:
    """The body of a manifest, after checking its checksum, format and schema version.

    Raises :class:`CheckpointCorrupt` for a damaged manifest, :class:`UnsupportedCheckpoint` for another
    schema version.
    """
    if not (
        raw.startswith(_MANIFEST_HEAD)
        and raw[_BODY_START - len(_MANIFEST_MID) : _BODY_START] == _MANIFEST_MID
        and raw.endswith(b"}")
        and len(raw) > _BODY_START + 1
    ):
        raise CheckpointCorrupt(f"the manifest is not a checkpoint manifest (or is truncated): {raw[:60]!r}")
    body_bytes = raw[_BODY_START:-1]
    recorded = raw[len(_MANIFEST_HEAD) : len(_MANIFEST_HEAD) + 64].decode("ascii", "replace")
    actual = hashlib.sha256(body_bytes).hexdigest()
    if recorded != actual:
        raise CheckpointCorrupt(
            f"the manifest's checksum does not match its contents (recorded {recorded}, actual {actual})"
        )
    try:
        body = orjson.loads(body_bytes)
    except orjson.JSONDecodeError as exc:  # a checksum-valid body that is not JSON: not written by us
        raise CheckpointCorrupt(f"the manifest is not valid JSON: {exc}") from None
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise CheckpointCorrupt(f"the manifest's format is not {FORMAT!r}")
    version = body.get("schema_version")
    if version != SCHEMA_VERSION:
        raise UnsupportedCheckpoint(
            f"checkpoint {body.get('id')} has schema version {version!r}, written by stream-logreg "
            f"{body.get('library_version')!r}; this library ({__version__}) reads version {SCHEMA_VERSION}"
        )
    for path, kind in (
        ("id", str), ("created_at", str), ("library_version", str), ("model", dict), ("metadata", dict),
        ("npz", dict), ("npz.size", int), ("npz.sha256", str), ("model.params", dict),
        ("model.features", dict),
    ):
        value: Any = body
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if not isinstance(value, kind):
            raise CheckpointCorrupt(f"the manifest's {path!r} is missing or not a {kind.__name__}")
    return body


def _write_npz(file: IO[bytes], arrays: dict[str, np.ndarray], compress: bool) -> None:
    """The arrays as an ``.npz`` (``np.savez``, refusing object arrays: ``allow_pickle=False``)."""
    (np.savez_compressed if compress else np.savez)(file, allow_pickle=False, **arrays)


def _expected_arrays(meta: dict) -> dict[str, tuple[int, ...]]:
    """The arrays (name → shape) that the model described by ``meta`` needs."""
    params, features = meta["params"], meta["features"]
    name = params.get("optimizer", {}).get("name") if isinstance(params.get("optimizer"), dict) else None
    cls = getattr(optim_, name, None) if isinstance(name, str) and name in optim_.__all__ else None
    if not (isinstance(cls, type) and issubclass(cls, optim_.Optimizer) and cls is not optim_.Optimizer):
        raise CheckpointCorrupt(f"the manifest names an unknown optimizer {name!r}")
    n_bits, keys = features.get("n_bits"), features.get("keys")
    if isinstance(n_bits, int) and 1 <= n_bits <= 30:
        n = 1 << n_bits
    elif n_bits is None and isinstance(keys, list):
        n = len(keys)
    else:
        raise CheckpointCorrupt(f"the manifest's feature space is malformed (n_bits={n_bits!r})")
    shapes = {"w": (n,), "b": (1,)}
    for state in cls._state_names:
        shapes[f"optimizer.{state}"] = (n,)
        shapes[f"bias_optimizer.{state}"] = (1,)
    return shapes


def _read_arrays(npz_bytes: bytes, expected: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz``, read with ``allow_pickle=False`` and checked against ``expected``."""
    try:
        npz = np.load(io.BytesIO(npz_bytes), allow_pickle=False)
    except ValueError as exc:  # e.g. a bare pickle: numpy refuses it without unpickling
        if "pickle" in str(exc):
            raise CheckpointCorrupt(
                "the array file is a pickle, not an .npz; refused without unpickling it"
            ) from None
        raise CheckpointCorrupt(f"the array file does not read as an .npz: {exc}") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise CheckpointCorrupt(f"the array file does not read as an .npz: {exc}") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise CheckpointCorrupt("the array file is a single .npy array, not an .npz")
    with npz:
        names = set(npz.files)
        missing, extra = sorted(set(expected) - names), sorted(names - set(expected))
        if missing or extra:
            raise CheckpointCorrupt(
                f"the array file's arrays differ from what the model needs: missing {missing}, extra {extra}"
            )
        arrays = {}
        for name, shape in expected.items():
            try:
                values = npz[name]
            except ValueError as exc:
                if "pickle" in str(exc):
                    raise CheckpointCorrupt(
                        f"array {name!r} holds pickled (object) data; refused without unpickling it"
                    ) from None
                raise CheckpointCorrupt(f"array {name!r} does not read: {exc}") from None
            except (OSError, zipfile.BadZipFile, EOFError) as exc:
                raise CheckpointCorrupt(f"array {name!r} does not read: {exc}") from None
            if not isinstance(values, np.ndarray):
                raise CheckpointCorrupt(f"member {name!r} of the array file is not a .npy array")
            if values.dtype != np.float64:
                raise CheckpointCorrupt(f"array {name!r} has dtype {values.dtype}, expected float64")
            if values.shape != shape:
                raise CheckpointCorrupt(f"array {name!r} has shape {values.shape}, expected {shape}")
            arrays[name] = values
    return arrays


def restore(body: dict, npz_bytes: bytes, expect_config: dict | None = None) -> Checkpoint:
    """The checkpoint that a manifest body (from :func:`decode_manifest`) and its array file describe.

    Checks the array file's size and sha256 against the manifest, reads it without pickles, checks its
    arrays, then (with ``expect_config``) the hyper-parameters, and rebuilds the model with
    ``OnlineLogisticRegression.from_state``.
    """
    cid = body["id"]
    size, digest = body["npz"]["size"], body["npz"]["sha256"]
    if len(npz_bytes) != size:
        raise CheckpointCorrupt(f"the array file has {len(npz_bytes)} bytes, the manifest says {size}")
    actual = hashlib.sha256(npz_bytes).hexdigest()
    if actual != digest:
        raise CheckpointCorrupt(f"the array file's sha256 is {actual}, the manifest says {digest}")
    meta = body["model"]
    arrays = _read_arrays(npz_bytes, _expected_arrays(meta))
    if expect_config is not None:
        expected = orjson.loads(_to_json(expect_config, "expect_config"))
        differences = _differences(meta["params"], expected)
        if differences:
            raise CheckpointMismatch(cid, differences)
    try:
        model = OnlineLogisticRegression.from_state(arrays, meta)
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise CheckpointCorrupt(f"the model state does not load: {type(exc).__name__}: {exc}") from None
    try:
        created_at = dt.datetime.fromisoformat(body["created_at"])
    except ValueError:
        raise CheckpointCorrupt(f"the manifest's created_at {body['created_at']!r} is not ISO-8601") from None
    return Checkpoint(cid, created_at, model, body["metadata"], body["library_version"])


# Files


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomically(
    final: Path, write: Callable[[IO[bytes]], Any], fsync: bool
) -> Any:
    """Write ``final`` through a temporary file in its directory: write, flush, fsync, rename, fsync dir.

    Returns what ``write`` returned. On an error the temporary file is removed and ``final`` untouched.
    """
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "xb+") as f:
            result = write(f)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if fsync:
        _fsync_dir(final.parent)
    return result


def _hash_file(f: IO[bytes]) -> tuple[int, str]:
    """(size, sha256) of an open file's bytes."""
    f.seek(0)
    h = hashlib.sha256()
    size = 0
    while chunk := f.read(_CHUNK):
        h.update(chunk)
        size += len(chunk)
    return size, h.hexdigest()


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``directory/.lock`` (released by the kernel if the process dies)."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@dataclass
class _Entry:
    """The files of one id in a directory."""

    npz: Path | None = None
    manifest: Path | None = None
    temps: tuple[Path, ...] = ()


def _scan(directory: Path) -> dict[str, _Entry]:
    """The files of each id in ``directory`` (ids sorted, oldest first); other files are ignored."""
    entries: dict[str, _Entry] = {}
    with os.scandir(directory) as it:
        for item in it:
            if m := _ID.match(item.name):
                entry = entries.setdefault(m[1], _Entry())
                if m[2] == "npz":
                    entry.npz = Path(item.path)
                else:
                    entry.manifest = Path(item.path)
            elif m := _TEMP.match(item.name):
                entry = entries.setdefault(m[1], _Entry())
                entry.temps += (Path(item.path),)
    return dict(sorted(entries.items()))


_now_ns = time.time_ns  # the clock of ids (a module attribute so that tests can stop it)
_last_ns = 0  # the largest id this process has handed out, as an int


def _new_id(existing: Iterator[str] | list[str]) -> str:
    """A new id: now in ns, but larger than every id in ``existing`` and every id this process made."""
    global _last_ns
    ns = max(_now_ns(), _last_ns + 1, *(int(i) + 1 for i in existing))
    _last_ns = ns
    return f"{ns:020d}"


def _model_state(model: OnlineLogisticRegression, metadata: dict | None) -> tuple[dict, dict, dict]:
    """(arrays, model meta, metadata) of a checkpoint, refusing what JSON would not read back unchanged."""
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, dict):
        raise CheckpointError(f"metadata must be a dict, got {type(metadata).__name__}")
    metadata_json = orjson.loads(_to_json(metadata, "metadata"))
    arrays, meta = model.state()
    _check_model_meta(meta)
    return arrays, meta, metadata_json


def _body(cid: str, created_at: str, meta: dict, metadata: dict, size: int, digest: str) -> dict:
    return {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "library_version": __version__,
        "id": cid,
        "created_at": created_at,
        "model": meta,
        "metadata": metadata,
        "npz": {"file": f"{cid}.npz", "size": size, "sha256": digest},
    }


def encode_checkpoint(
    checkpoint_id: str, model: OnlineLogisticRegression, metadata: dict | None = None, compress: bool = False
) -> tuple[bytes, bytes]:
    """The bytes of a checkpoint's array file and manifest, for stores that keep bytes (not files).

    ``decode_manifest`` and ``restore`` read them back. The ids of a store must sort by time.
    """
    arrays, meta, metadata_json = _model_state(model, metadata)
    created_at = _utc_now()
    buffer = io.BytesIO()
    _write_npz(buffer, arrays, compress)
    npz = buffer.getvalue()
    body = _body(checkpoint_id, created_at, meta, metadata_json, len(npz), hashlib.sha256(npz).hexdigest())
    return npz, encode_manifest(body)


def _save_locked(
    directory: Path, model: OnlineLogisticRegression, metadata: dict | None, fsync: bool, compress: bool
) -> tuple[str, dict[str, _Entry]]:
    """Write one checkpoint (the caller holds the lock); returns its id and the scan made before it."""
    arrays, meta, metadata_json = _model_state(model, metadata)
    entries = _scan(directory)
    cid = _new_id(list(entries))
    created_at = _utc_now()

    def write_npz(f: IO[bytes]) -> tuple[int, str]:
        _write_npz(f, arrays, compress)
        f.flush()
        return _hash_file(f)

    size, digest = _write_atomically(directory / f"{cid}.npz", write_npz, fsync)
    manifest = encode_manifest(_body(cid, created_at, meta, metadata_json, size, digest))
    _write_atomically(directory / f"{cid}.json", lambda f: f.write(manifest), fsync)
    return cid, entries


def save_checkpoint(
    directory: str | os.PathLike,
    model: OnlineLogisticRegression,
    metadata: dict | None = None,
    *,
    fsync: bool = True,
    compress: bool = False,
) -> str:
    """Save ``model`` and ``metadata`` as a new checkpoint in ``directory``; return its manifest's path.

    Durable and atomic (see the module's docstring); deletes nothing (:class:`DirectoryStore` does the
    retention). ``metadata`` must be a dict that reads back from JSON unchanged (str keys; finite floats;
    lists, not tuples). ``fsync=False`` skips the fsyncs: only for tests and benchmarks, a power loss may
    then lose or tear the checkpoint. ``compress=True`` deflates the arrays (smaller, much slower).
    """
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        cid, _ = _save_locked(path, model, metadata, fsync, compress)
    return str(path / f"{cid}.json")


def _read(path: Path, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise CheckpointCorrupt(f"the {what} {path.name} is missing") from None
    except OSError as exc:
        raise CheckpointCorrupt(f"the {what} {path.name} does not read: {exc}") from None


def _load(manifest_path: Path, expect_config: dict | None) -> Checkpoint:
    body = decode_manifest(_read(manifest_path, "manifest"))
    stem = manifest_path.name.removesuffix(".json")
    if body["id"] != stem:
        raise CheckpointCorrupt(f"the manifest {manifest_path.name} is of checkpoint {body['id']}")
    return restore(body, _read(manifest_path.with_name(f"{stem}.npz"), "array file"), expect_config)


def load_checkpoint(path: str | os.PathLike, expect_config: dict | None = None) -> Checkpoint:
    """The checkpoint at ``path`` (its manifest ``<id>.json``, its ``<id>.npz``, or ``<dir>/<id>``).

    Raises :class:`CheckpointCorrupt` if it does not verify, :class:`UnsupportedCheckpoint` for another
    schema version, :class:`CheckpointMismatch` if ``expect_config`` (a ``model.config()``) differs from
    the checkpoint's hyper-parameters.
    """
    p = Path(path)
    if p.suffix in (".json", ".npz"):
        p = p.with_suffix("")
    return _load(p.with_name(f"{p.name}.json"), expect_config)


class DirectoryStore:
    """Checkpoints in a local directory (created if needed), the newest ``keep`` of them kept.

    See the module's docstring for the contract and the layout. One process saves at a time (saves lock
    the directory); any number may read. ``keep=None`` keeps every checkpoint. ``fsync`` and ``compress``
    are those of :func:`save_checkpoint`.

    After each :meth:`latest`, ``skipped`` lists ``(id, reason)`` of the newer checkpoints it passed over.
    """

    def __init__(
        self, path: str | os.PathLike, keep: int | None = 5, *, fsync: bool = True, compress: bool = False
    ) -> None:
        if keep is not None and keep < 1:
            raise ValueError(f"keep must be None or >= 1, got {keep!r}")
        self.path = Path(path)
        self.keep = keep
        self.fsync = fsync
        self.compress = compress
        self.skipped: builtins.list[tuple[str, str]] = []
        self.path.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"DirectoryStore({str(self.path)!r}, keep={self.keep})"

    def save(self, model: OnlineLogisticRegression, metadata: dict | None = None) -> str:
        """Save a checkpoint durably and return its id; then delete leftovers of crashed saves and all
        but the newest ``keep`` complete checkpoints."""
        with _locked(self.path):
            cid, before = _save_locked(self.path, model, metadata, self.fsync, self.compress)
            complete = [i for i, e in before.items() if e.npz and e.manifest] + [cid]
            doomed = complete[: -self.keep] if self.keep is not None else []
            for i, entry in before.items():
                if i in doomed:
                    files = [entry.manifest, entry.npz, *entry.temps]  # manifest first: uncommit, then delete
                elif not (entry.npz and entry.manifest):
                    files = [entry.manifest, entry.npz, *entry.temps]  # older than cid: a crashed save
                else:
                    files = list(entry.temps)
                for file in files:
                    if file is not None:
                        with contextlib.suppress(FileNotFoundError):
                            file.unlink()
        return cid

    def load(self, checkpoint_id: str, expect_config: dict | None = None) -> Checkpoint:
        """The checkpoint ``checkpoint_id``, verified (errors as :func:`load_checkpoint`)."""
        if not re.fullmatch(r"\d{20}", checkpoint_id):
            raise ValueError(f"not a checkpoint id: {checkpoint_id!r}")
        return _load(self.path / f"{checkpoint_id}.json", expect_config)

    def latest(self, expect_config: dict | None = None) -> Checkpoint | None:
        """The newest checkpoint that verifies, or ``None``; damaged ones are skipped (see ``skipped``).

        Raises :class:`UnsupportedCheckpoint` or :class:`CheckpointMismatch` (with ``expect_config``) for
        the newest intact checkpoint rather than falling back past it.
        """
        self.skipped = []
        for cid, entry in reversed(_scan(self.path).items()):
            try:
                if entry.manifest is None:
                    raise CheckpointCorrupt(
                        "incomplete: no manifest (a save that did not commit: crashed, or still running)"
                    )
                return _load(entry.manifest, expect_config)
            except CheckpointCorrupt as exc:
                self.skipped.append((cid, str(exc)))
                logger.warning("checkpoint %s in %s skipped: %s", cid, self.path, exc)
        return None

    def list(self) -> builtins.list[CheckpointInfo]:
        """Every id on disk, oldest first, with whether its manifest and array file verify (checksums and
        schema; the arrays are not loaded)."""
        infos = []
        for cid, entry in _scan(self.path).items():
            size = 0
            for file in (entry.npz, entry.manifest):
                with contextlib.suppress(OSError):
                    size += file.stat().st_size if file is not None else 0
            created_at, reason = None, None
            try:
                if entry.manifest is None:
                    raise CheckpointCorrupt("incomplete: no manifest")
                body = decode_manifest(_read(entry.manifest, "manifest"))
                with contextlib.suppress(ValueError):
                    created_at = dt.datetime.fromisoformat(body["created_at"])
                if body["id"] != cid:
                    raise CheckpointCorrupt(f"the manifest is of checkpoint {body['id']}")
                _verify_file(self.path / f"{cid}.npz", body["npz"]["size"], body["npz"]["sha256"])
            except CheckpointError as exc:
                reason = str(exc)
            infos.append(CheckpointInfo(cid, created_at, size, reason is None, reason))
        return infos


def _verify_file(path: Path, size: int, digest: str) -> None:
    try:
        with open(path, "rb") as f:
            actual_size, actual = _hash_file(f)
    except FileNotFoundError:
        raise CheckpointCorrupt(f"the array file {path.name} is missing") from None
    if actual_size != size:
        raise CheckpointCorrupt(f"the array file has {actual_size} bytes, the manifest says {size}")
    if actual != digest:
        raise CheckpointCorrupt(f"the array file's sha256 is {actual}, the manifest says {digest}")
