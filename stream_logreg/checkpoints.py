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
  array file, and that the arrays are exactly those the model needs (names, dtypes, shapes). Anything else
  raises a :class:`CheckpointError` that says what differs. :meth:`DirectoryStore.latest` skips damaged
  checkpoints (and says why, in ``store.skipped`` and a warning on the ``stream_logreg.checkpoints``
  logger) and returns the newest one that verifies, so a half-written or corrupted checkpoint costs only the
  progress since the previous one.
- **Never unpickles.** Arrays are read from their ``.npy`` headers and bytes (never ``pickle``), JSON only
  as JSON. A file holding a pickle (an object array) is refused with :class:`CheckpointCorrupt`,
  unexecuted.
- **Same model or an error.** ``expect_config=model.config()`` refuses a checkpoint of other
  hyper-parameters with :class:`CheckpointMismatch`, which lists them. An intact checkpoint of an unknown
  schema version raises :class:`UnsupportedCheckpoint`. Neither is skipped: they mean the program, not the
  checkpoint, changed.
- **Ids sort by time.** An id is the 20-digit wall-clock time in nanoseconds when the save started, bumped
  to one more than any intact checkpoint's id already in the directory, so a later save always has a
  larger id (across restarts, clock steps back, and several saves within one nanosecond). Names outside
  the 20-digit format are ignored, and damaged entries with larger ids are stepped over, never extended:
  ids stay 20 digits, and if an intact checkpoint ``99999999999999999999`` is there, a save fails saying so.
- **The directory is untrusted.** Only regular files are opened, never through a symbolic link and never
  blocking (a FIFO or device named like a checkpoint is skipped with a reason); the manifest is at most
  :data:`MAX_MANIFEST_BYTES`, the array file exactly the size its manifest says, both checked before
  reading; the zip directory and every ``.npy`` header of the array file are checked against the shapes
  the manifest implies before anything is allocated or decompressed (no zip bombs, no ``(2**40,)``
  arrays, no object arrays); then values: non-finite numbers, negative accumulators, vocabulary keys
  nested deeper than :data:`MAX_KEY_DEPTH`, malformed ``offsets`` in the metadata are refused. A refused
  checkpoint is skipped by :meth:`DirectoryStore.latest` like a corrupt one. A save never fails because
  of a stray entry: what retention or leftover cleanup cannot delete (e.g. a directory) is skipped with a
  warning.
- **One writer per directory.** A :class:`DirectoryStore` holds an exclusive ``flock`` on
  ``<directory>/.lock`` for its life (released by :meth:`DirectoryStore.close`, or by the kernel when the
  process ends or dies); a second writer in another process gets a :class:`CheckpointError` at
  construction. Readers (``read_only=True``) take no lock.

The on-disk layout (schema version 2; version 1 is still read)
---------------------------------------------------------------
One directory holds, per checkpoint ``<id>``:

- ``<id>.npz``: the model's arrays, written by ``np.savez`` (one ``.npy`` member per array). The arrays
  are ``w``, ``b``, ``optimizer.<name>`` and ``bias_optimizer.<name>`` (float64); each is stored either
  dense under its name, or, when that is smaller (a hashed space with few features in use), as
  ``<name>.idx`` (int64, increasing) and ``<name>.val`` (float64): the indices and values of its entries
  whose bits are not zero (so ``-0.0`` comes back as ``-0.0``). With a vocabulary, its columns
  (``model.state()``'s ``features.keys``, see ``FeatureSpace.to_state``) are five members:
  ``features.kinds`` (uint8, one letter per column: ``s`` a str key, ``i`` an int64 key, ``x`` the
  indicator of a str key and value, ``o`` any other key), ``features.text`` (uint8: the UTF-8 of the str
  keys and of each indicator's key and value, concatenated in column order), ``features.lengths``
  (int64: the length in characters of each of those names), ``features.ints`` (int64: the int keys) and
  ``features.other`` (uint8: the JSON list of the other keys, ``{"k": key, "v": value}``, tuples tagged
  ``{"tuple": [...]}``). The first layout of version 2, still read, had instead one member
  ``features.keys``: that JSON for every column. Version 1 had every array dense and the vocabulary in
  the manifest.
- ``<id>.json``: the manifest, the commit record, written last. It is one JSON object,
  ``{"manifest_sha256":"<64 hex>","manifest":<body>}``, where the hex is the sha256 of the exact bytes of
  ``<body>`` as they appear in the file (so the check does not depend on how a JSON library formats
  numbers). The body holds ``format`` (``"stream-logreg-checkpoint"``), ``schema_version``,
  ``library_version``, ``id``, ``created_at`` (UTC, ISO-8601), ``model`` (the JSON half of
  ``model.state()``: hyper-parameters, feature space, counters; in version 2 the feature space's ``keys``
  are replaced by ``n_keys`` and ``vocabulary``, the length of each vocabulary member (in the first
  layout, ``keys_bytes``, the length of its JSON), which reading requires), ``metadata`` (the caller's
  dict) and ``npz`` (``{"file", "size", "sha256"}`` of the array file's bytes).

A checkpoint may also carry the caller's **extra parts** (``extras={name: (arrays, meta)}`` of
:meth:`DirectoryStore.save` and :func:`encode_checkpoint`; e.g. the Kafka learner's delayed-label join store):
each array 1-D int64 or float64 (finite), stored as the member ``extras.<name>.<array>``; the manifest's
``extras`` lists per part its JSON ``meta`` and each array's dtype and length, and reading refuses any member
it does not list, any dtype or length other than listed, and non-finite floats. They come back, verified by
the same checksums, as :attr:`Checkpoint.extras`; a checkpoint without them has ``extras == {}``.

Each file is written to a hidden temporary ``.<id>.<ext>.<pid>.tmp`` in the same directory, flushed,
fsynced and renamed into place (``os.replace``), then the directory is fsynced: first the ``.npz``, then
the manifest. A checkpoint exists when its manifest does. As the writer holds the directory's lock,
temporary files and manifest-less ``.npz`` files older than a new save are leftovers of crashed saves;
the save deletes them, and all but the newest ``keep`` complete checkpoints.

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
import errno
import hashlib
import io
import logging
import os
import re
import stat
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol, runtime_checkable

import numpy as np
import orjson

from stream_logreg import __version__
from stream_logreg import optim as optim_
from stream_logreg.model import OnlineLogisticRegression
from stream_logreg.npz import Member, Refused
from stream_logreg.npz import read as read_npz
from stream_logreg.npz import write as _write_npz

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
    "Snapshot",
    "UnsupportedCheckpoint",
    "decode_manifest",
    "encode_checkpoint",
    "encode_manifest",
    "load_checkpoint",
    "new_checkpoint_id",
    "restore",
    "save_checkpoint",
]

logger = logging.getLogger("stream_logreg.checkpoints")

#: The version of the layout written by this library; loading refuses any other.
SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
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
    extras: dict = field(default_factory=dict)


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

    def save(
        self, model: OnlineLogisticRegression, metadata: dict | None = None, extras: dict | None = None
    ) -> str: ...

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
    if type(version) is not int or version not in READABLE_VERSIONS:
        raise UnsupportedCheckpoint(
            f"checkpoint {body.get('id')!r:.40} has schema version {version!r:.20}, written by stream-logreg "
            f"{body.get('library_version')!r:.40}; this library ({__version__}) reads versions "
            f"{READABLE_VERSIONS[0]} to {READABLE_VERSIONS[-1]}"
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


_FLOAT = np.dtype("<f8")
_INDEX = np.dtype("<i8")
_BYTES = np.dtype("|u1")
#: At most this many bytes of manifest are read (a manifest of schema version 2 is a few KB; one of version 1
#: lists the vocabulary: ~40 bytes a name).
MAX_MANIFEST_BYTES = 256 << 20
#: The name of an extra part, and of each of its arrays.
_EXTRA_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_EXTRA_ARRAY = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_EXTRA_DTYPES = {"<i8": np.dtype("<i8"), "<f8": np.dtype("<f8")}
#: Vocabulary keys may be tuples (of tuples ...) at most this deep.
MAX_KEY_DEPTH = 16
_NONNEGATIVE = ("G", "n")  # optimizer accumulators (AdaGrad's G, FTRL's n): sums of squares


def _pack(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The ``.npz`` members of ``arrays``: each dense, or as ``name.idx`` + ``name.val`` (the indices and
    values of its non-zero entries, bitwise: ``-0.0`` is kept) when that is smaller."""
    members = {}
    for name, values in arrays.items():
        values = np.ascontiguousarray(values, dtype=np.float64)
        idx = np.flatnonzero(values.view(np.int64))
        if 16 * len(idx) + 256 < 8 * len(values):
            members[f"{name}.idx"] = idx.astype(np.int64, copy=False)
            members[f"{name}.val"] = values[idx]
        else:
            members[name] = values
    return members


def _encode_state(arrays: dict[str, np.ndarray], meta: dict) -> tuple[dict[str, np.ndarray], dict]:
    """(``.npz`` members, manifest's ``model``) of a model state in schema version 2: arrays sparse when
    smaller, the vocabulary as columnar members (``features.kinds`` ...) instead of in the manifest."""
    features = dict(meta["features"])
    keys = features.pop("keys")
    _to_json({**meta, "features": features}, "the model's state")
    members = _pack(arrays)
    if features["n_bits"] is None:
        vocabulary = _vocabulary_members(keys)
        members.update(vocabulary)
        features.update(n_keys=len(keys["kinds"]),
                        vocabulary={name.removeprefix("features."): len(a) for name, a in vocabulary.items()})
    elif keys:
        raise CheckpointError("a hashed feature space has no vocabulary to save")
    return members, {**meta, "features": features}


#: The vocabulary's members (schema version 2, columnar layout): name → dtype. Their lengths are in the
#: manifest's ``features.vocabulary``; see ``FeatureSpace.to_state`` for what each holds.
_VOCABULARY = {"features.kinds": _BYTES, "features.text": _BYTES, "features.lengths": _INDEX,
               "features.ints": _INDEX, "features.other": _BYTES}


def _vocabulary_members(keys: dict) -> dict[str, np.ndarray]:
    """The ``.npz`` members of a vocabulary's columns: its text in UTF-8 (lone surrogates kept), the other
    keys as JSON."""
    other = orjson.dumps(keys["other"])
    if b"null" in other:  # a non-finite float reads back as null: compare in full (rare)
        _to_json(keys["other"], "the model's vocabulary")
    return {
        "features.kinds": np.frombuffer(keys["kinds"].encode("ascii"), dtype=np.uint8),
        "features.text": np.frombuffer(keys["text"].encode("utf-8", "surrogatepass"), dtype=np.uint8),
        "features.lengths": np.array(keys["lengths"], dtype=np.int64),
        "features.ints": np.array(keys["ints"], dtype=np.int64),
        "features.other": np.frombuffer(other, dtype=np.uint8),
    }


def _key_entries(raw: bytes, what: str) -> list[dict]:
    """The JSON list of vocabulary entries (``{"k": key}`` or ``{"k": key, "v": value}``) in ``raw``."""
    try:
        entries = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise CheckpointCorrupt(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(entries, list) or not all(isinstance(e, dict) and "k" in e for e in entries):
        raise CheckpointCorrupt(f'{what} is not a list of {{"k": ...}}')
    if b'"tuple"' in raw:  # only tuple keys nest: look closer
        _check_key_depth(entries)
    return entries


def _vocabulary_from_members(members: dict[str, np.ndarray], n_keys: int) -> dict:
    """The vocabulary's columns (as ``FeatureSpace.to_state`` gives them) from its members, checked."""
    missing = sorted(set(_VOCABULARY) - set(members))
    if missing:
        raise CheckpointCorrupt(f"the array file lacks the vocabulary's {', '.join(missing)}")
    kinds = members["features.kinds"].tobytes()
    if kinds.strip(b"sixo"):
        raise CheckpointCorrupt("the vocabulary's kinds hold a letter other than s, i, x, o")
    try:
        text = members["features.text"].tobytes().decode("utf-8", "surrogatepass")
    except UnicodeDecodeError as exc:
        raise CheckpointCorrupt(f"the vocabulary's text is not UTF-8: {exc}") from None
    lengths = members["features.lengths"]
    if len(lengths) and (lengths.min() < 0 or lengths.sum() != len(text)):
        raise CheckpointCorrupt("the vocabulary's name lengths do not add up to its text")
    other = _key_entries(members["features.other"].tobytes(), "the vocabulary's other keys")
    columns = {"kinds": kinds.decode("ascii"), "text": text, "lengths": lengths.tolist(),
               "ints": members["features.ints"].tolist(), "other": other}
    n_s, n_x = kinds.count(b"s"), kinds.count(b"x")
    if (len(kinds) != n_keys or len(lengths) != n_s + 2 * n_x or len(columns["ints"]) != kinds.count(b"i")
            or len(other) != kinds.count(b"o")):
        raise CheckpointCorrupt(f"the vocabulary's columns do not describe {n_keys} features")
    return columns


def _encode_extras(extras: dict | None) -> tuple[dict[str, np.ndarray], dict]:
    """(``.npz`` members, manifest's ``extras``) of the caller's extra parts: ``{name: (arrays, meta)}``,
    each array 1-D int64 or float64 (finite), each meta JSON. A member is ``extras.<name>.<array>``; the
    manifest lists, per part, its meta and each array's dtype and length, which reading then requires."""
    members: dict[str, np.ndarray] = {}
    described: dict[str, dict] = {}
    if not extras:
        return members, described
    if not isinstance(extras, dict):
        raise CheckpointError(f"extras must be a dict of name -> (arrays, meta), got {type(extras).__name__}")
    for name, part in extras.items():
        if not (isinstance(name, str) and _EXTRA_NAME.fullmatch(name)):
            raise CheckpointError(f"extra part name {name!r:.60} must be letters, digits, '_' or '-'")
        if not (isinstance(part, tuple | list) and len(part) == 2 and isinstance(part[0], dict)):
            raise CheckpointError(f"extra part {name!r} must be a pair (arrays, meta)")
        arrays, meta = part
        listed = {}
        for array_name, values in arrays.items():
            if not (isinstance(array_name, str) and _EXTRA_ARRAY.fullmatch(array_name)):
                raise CheckpointError(f"extra part {name!r}: array name {array_name!r:.60} is not allowed")
            a = np.asarray(values)
            if a.ndim != 1 or a.dtype not in (np.int64, np.float64):
                raise CheckpointError(
                    f"extra part {name!r}: array {array_name!r} must be 1-D int64 or float64, got {a.dtype} "
                    f"{a.shape}"
                )
            if a.dtype == np.float64 and not np.isfinite(a).all():
                raise CheckpointError(f"extra part {name!r}: array {array_name!r} holds non-finite values")
            a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
            members[f"extras.{name}.{array_name}"] = a
            listed[array_name] = [a.dtype.str, len(a)]
        meta_json = orjson.loads(_to_json(meta, f"the meta of extra part {name!r}"))
        described[name] = {"meta": meta_json, "arrays": listed}
    return members, described


def _extra_members(body: dict, npz_size: int) -> dict[str, Member]:
    """What each ``extras.*`` member of the array file must be, from the manifest (refusing a malformed
    description: unknown dtypes, lengths that no array file of this size holds)."""
    extras = body.get("extras", {})
    if not isinstance(extras, dict):
        raise CheckpointCorrupt("the manifest's 'extras' is not a mapping")
    members = {}
    for name, part in extras.items():
        if not (_EXTRA_NAME.fullmatch(name) and isinstance(part, dict) and set(part) == {"meta", "arrays"}
                and isinstance(part["arrays"], dict)):
            raise CheckpointCorrupt(f"the manifest's extra part {name!r:.60} is malformed")
        for array_name, spec in part["arrays"].items():
            ok = (
                _EXTRA_ARRAY.fullmatch(array_name)
                and isinstance(spec, list)
                and len(spec) == 2
                and spec[0] in _EXTRA_DTYPES
                and type(spec[1]) is int
                and 0 <= spec[1] <= npz_size // 8
            )
            if not ok:
                raise CheckpointCorrupt(f"the manifest's extra array {name}.{array_name!r:.60} is malformed")
            members[f"extras.{name}.{array_name}"] = Member(_EXTRA_DTYPES[spec[0]], exact=spec[1])
    return members


def _split_extras(members: dict[str, np.ndarray], body: dict) -> dict[str, tuple[dict, dict]]:
    """The extra parts ``{name: (arrays, meta)}`` of the array file's members, every listed array present
    and every float finite."""
    out = {}
    for name, part in body.get("extras", {}).items():
        arrays = {}
        for array_name in part["arrays"]:
            member = members.pop(f"extras.{name}.{array_name}", None)
            if member is None:
                raise CheckpointCorrupt(f"the array file lacks extra array {name}.{array_name}")
            if member.dtype == _FLOAT and not np.isfinite(member).all():
                raise CheckpointCorrupt(f"extra array {name}.{array_name} holds non-finite values")
            arrays[array_name] = member
        out[name] = (arrays, part["meta"])
    return out


# Reading an .npz without trusting it: the zip directory and each .npy header are checked before anything
# is allocated or decompressed.


def _read_members(npz_bytes: bytes, allowed: Callable[[str], Member | None]) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` whose members ``allowed`` accepts (:func:`stream_logreg.npz.read`); a
    :class:`CheckpointCorrupt` saying what is wrong otherwise."""
    try:
        return read_npz(npz_bytes, allowed)
    except Refused as exc:
        raise CheckpointCorrupt(str(exc)) from None


def _optimizer_states(params: dict) -> tuple[str, ...]:
    name = params.get("optimizer", {}).get("name") if isinstance(params.get("optimizer"), dict) else None
    cls = getattr(optim_, name, None) if isinstance(name, str) and name in optim_.__all__ else None
    if not (isinstance(cls, type) and issubclass(cls, optim_.Optimizer) and cls is not optim_.Optimizer):
        raise CheckpointCorrupt(f"the manifest names an unknown optimizer {name!r}")
    return cls._state_names


def _expected_arrays(meta: dict, version: int = 1) -> dict[str, int]:
    """The arrays (name → length) that the model described by ``meta`` needs."""
    params, features = meta["params"], meta["features"]
    states = _optimizer_states(params)
    n_bits = features.get("n_bits")
    count = features.get("keys") if version == 1 else features.get("n_keys")
    if version == 1 and isinstance(count, list):
        count = len(count)
    if isinstance(n_bits, int) and not isinstance(n_bits, bool) and 1 <= n_bits <= 30:
        n = 1 << n_bits
    elif n_bits is None and isinstance(count, int) and not isinstance(count, bool) and 0 <= count < 1 << 40:
        n = count
    else:
        raise CheckpointCorrupt(f"the manifest's feature space is malformed (n_bits={n_bits!r})")
    lengths = {"w": n, "b": 1}
    for state in states:
        lengths[f"optimizer.{state}"] = n
        lengths[f"bias_optimizer.{state}"] = 1
    if params.get("scale") is True:  # the model's built-in standardization (per column)
        lengths.update({"scale.count": n, "scale.mean": n, "scale.var": n})
    return lengths


def _read_arrays_v1(npz_bytes: bytes, expected: dict[str, int]) -> dict[str, np.ndarray]:
    """Schema version 1: every array dense, exactly the names the model needs."""
    arrays = _read_members(npz_bytes, lambda name: Member(_FLOAT, exact=expected[name])
                           if name in expected else None)
    missing, extra = sorted(set(expected) - set(arrays)), sorted(set(arrays) - set(expected))
    if missing or extra:
        raise CheckpointCorrupt(
            f"the array file's arrays differ from what the model needs: missing {missing}, extra {extra}"
        )
    return arrays


def _read_arrays_v2(
    npz_bytes: bytes, meta: dict, extra: dict[str, Member] | None = None
) -> tuple[dict[str, np.ndarray], dict, dict[str, np.ndarray]]:
    """Schema version 2: (the dense arrays, the model meta with its vocabulary back in place, the members
    of the extra parts that ``extra`` describes)."""
    extra = extra or {}
    expected = _expected_arrays(meta, 2)
    features = meta["features"]
    vocabulary = features.get("n_bits") is None
    keys_bytes = features.get("keys_bytes")  # the first layout of version 2: the vocabulary as one JSON
    sizes = features.get("vocabulary")  # the columnar layout: the length of each vocabulary member
    if vocabulary and keys_bytes is not None:
        if not (type(keys_bytes) is int and 0 <= keys_bytes <= len(npz_bytes) * 1100 + 64):
            raise CheckpointCorrupt(f"the manifest's vocabulary size {keys_bytes!r} is malformed")
    elif vocabulary and not (
        isinstance(sizes, dict) and set(sizes) == {n.removeprefix("features.") for n in _VOCABULARY}
        and all(type(v) is int and 0 <= v <= len(npz_bytes) * 1100 + 64 for v in sizes.values())
    ):
        raise CheckpointCorrupt(f"the manifest's vocabulary sizes {sizes!r:.200} are malformed")

    def allowed(name: str) -> Member | None:
        base, _, part = name.rpartition(".")
        if name in expected:
            return Member(_FLOAT, exact=expected[name])
        if base in expected and part in ("idx", "val"):
            return Member(_INDEX if part == "idx" else _FLOAT, at_most=expected[base])
        if vocabulary and keys_bytes is not None and name == "features.keys":
            return Member(_BYTES, exact=keys_bytes)
        if vocabulary and keys_bytes is None and name in _VOCABULARY:
            return Member(_VOCABULARY[name], exact=sizes[name.removeprefix("features.")])
        return extra.get(name)

    members = _read_members(npz_bytes, allowed)
    arrays = {}
    for name, n in expected.items():
        if name in members:
            if f"{name}.idx" in members or f"{name}.val" in members:
                raise CheckpointCorrupt(f"array {name!r} is stored both dense and sparse")
            arrays[name] = members[name]
            continue
        idx, val = members.get(f"{name}.idx"), members.get(f"{name}.val")
        if idx is None or val is None:
            raise CheckpointCorrupt(f"the array file lacks array {name!r} (dense, or .idx and .val)")
        if len(idx) != len(val):
            raise CheckpointCorrupt(f"array {name!r} has {len(idx)} indices but {len(val)} values")
        if len(idx) and (idx[0] < 0 or idx[-1] >= n or (len(idx) > 1 and not (np.diff(idx) > 0).all())):
            raise CheckpointCorrupt(f"the indices of array {name!r} are not increasing within [0, {n})")
        dense = np.zeros(n)
        dense[idx] = val
        arrays[name] = dense
    layout = ("n_keys", "keys_bytes", "vocabulary")
    meta = {**meta, "features": {k: v for k, v in features.items() if k not in layout}}
    if vocabulary and keys_bytes is None:
        keys = _vocabulary_from_members(members, expected["w"])
    elif vocabulary:
        if "features.keys" not in members:
            raise CheckpointCorrupt("the array file lacks the vocabulary (features.keys)")
        keys = _key_entries(members["features.keys"].tobytes(), "the vocabulary")
        if len(keys) != expected["w"]:
            raise CheckpointCorrupt(f"the vocabulary does not list {expected['w']} features")
    else:
        keys = []
    meta["features"]["keys"] = keys
    return arrays, meta, {name: a for name, a in members.items() if name in extra}


def _check_key_depth(keys: list) -> None:
    """Refuse a vocabulary key of tuples nested deeper than :data:`MAX_KEY_DEPTH`."""
    for entry in keys:
        key = entry.get("k") if isinstance(entry, dict) else None
        if not isinstance(key, dict):
            continue
        level, depth = [key], 0
        while level:
            depth += 1
            if depth > MAX_KEY_DEPTH:
                raise CheckpointCorrupt(
                    f"a vocabulary key is nested more than {MAX_KEY_DEPTH} tuples deep (the model state is "
                    "nested too deeply; stream-logreg writes no such key)"
                )
            level = [k for t in level for k in (t.get("tuple") if isinstance(t.get("tuple"), list) else [])
                     if isinstance(k, dict)]


def _check_values(arrays: dict[str, np.ndarray], meta: dict, metadata: dict) -> None:
    """Refuse what no model this library saves can hold: non-finite or negative-accumulator arrays,
    negative or non-integer counters, malformed offsets."""
    for name, values in arrays.items():
        if not np.isfinite(values).all():
            raise CheckpointCorrupt(f"array {name!r} holds non-finite values (NaN or infinity)")
        if name.rpartition(".")[2] in _NONNEGATIVE and (values < 0).any():
            raise CheckpointCorrupt(f"array {name!r} (an accumulator of squares) holds negative values")
    for key in ("n_samples_seen", "optimizer_iterations", "bias_optimizer_iterations"):
        value = meta.get(key)
        if not (type(value) is int and 0 <= value < 1 << 63):
            raise CheckpointCorrupt(f"the manifest's {key} {value!r} is not a count")
    offsets = metadata.get("offsets")
    if offsets is not None:
        if not isinstance(offsets, dict):
            raise CheckpointCorrupt(f"the metadata's offsets are not a mapping: {offsets!r:.80}")
        for tp, offset in offsets.items():
            topic, _, partition = tp.rpartition(":")
            if not (topic and partition.isdigit() and partition.isascii() and type(offset) is int
                    and 0 <= offset < 1 << 63):
                raise CheckpointCorrupt(
                    f"the metadata's offset {tp!r:.80}: {offset!r:.40} is not topic:partition = offset >= 0"
                )


def restore(body: dict, npz_bytes: bytes, expect_config: dict | None = None) -> Checkpoint:
    """The checkpoint that a manifest body (from :func:`decode_manifest`) and its array file describe.

    Checks the array file's size and sha256 against the manifest, reads it without pickles, checks its
    arrays (declared shapes first; then finite values, non-negative accumulators) and the offsets in the
    metadata, then (with ``expect_config``) the hyper-parameters, and rebuilds the model with
    ``OnlineLogisticRegression.from_state``.
    """
    try:
        return _restore(body, npz_bytes, expect_config)
    except RecursionError:
        raise CheckpointCorrupt(
            "the model state is nested too deeply (not written by stream-logreg)"
        ) from None
    except MemoryError:
        raise CheckpointCorrupt(
            "the checkpoint does not fit in memory (its declared sizes are too large)"
        ) from None


def _restore(body: dict, npz_bytes: bytes, expect_config: dict | None) -> Checkpoint:
    cid = body["id"]
    size, digest = body["npz"]["size"], body["npz"]["sha256"]
    if len(npz_bytes) != size:
        raise CheckpointCorrupt(f"the array file has {len(npz_bytes)} bytes, the manifest says {size}")
    actual = hashlib.sha256(npz_bytes).hexdigest()
    if actual != digest:
        raise CheckpointCorrupt(f"the array file's sha256 is {actual}, the manifest says {digest}")
    meta = body["model"]
    extras: dict = {}
    if body["schema_version"] == 1:
        arrays = _read_arrays_v1(npz_bytes, _expected_arrays(meta, 1))
        _check_key_depth(meta["features"]["keys"])
    else:
        arrays, meta, extra_members = _read_arrays_v2(npz_bytes, meta, _extra_members(body, len(npz_bytes)))
        extras = _split_extras(extra_members, body)
    _check_values(arrays, meta, body["metadata"])
    if expect_config is not None:
        expected = orjson.loads(_to_json(expect_config, "expect_config"))
        differences = _differences(meta["params"], expected)
        if differences:
            raise CheckpointMismatch(cid, differences)
    try:
        model = OnlineLogisticRegression.from_state(arrays, meta)
    except (KeyError, ValueError, TypeError, AttributeError, IndexError, OverflowError) as exc:
        raise CheckpointCorrupt(f"the model state does not load: {type(exc).__name__}: {exc}") from None
    try:
        created_at = dt.datetime.fromisoformat(body["created_at"])
    except ValueError:
        raise CheckpointCorrupt(
            f"the manifest's created_at {body['created_at']!r:.60} is not ISO-8601"
        ) from None
    return Checkpoint(cid, created_at, model, body["metadata"], body["library_version"], extras)


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


def _kind(mode: int) -> str:
    """What a file that is not a regular file is, for messages."""
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symbolic link"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device")):
        if test(mode):
            return name
    return "not a regular file"


_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


@contextlib.contextmanager
def _open_regular(
    path: Path, what: str, size: int | None = None, cap: int | None = None
) -> Iterator[io.FileIO]:
    """``path`` opened for reading if it is a regular file (never through a symbolic link, never blocking
    on a FIFO or device) of ``size`` bytes (if given) and at most ``cap`` bytes; else CheckpointCorrupt."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        raise CheckpointCorrupt(f"the {what} {path.name} is missing") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise CheckpointCorrupt(
                f"the {what} {path.name} is a symbolic link; only regular files are read"
            ) from None
        raise CheckpointCorrupt(f"the {what} {path.name} does not read: {exc.strerror or exc}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise CheckpointCorrupt(f"the {what} {path.name} is {_kind(st.st_mode)}, not a regular file")
    with io.FileIO(fd, "rb", closefd=True) as f:
        if size is not None and st.st_size != size:
            raise CheckpointCorrupt(f"the {what} has {st.st_size} bytes, the manifest says {size}")
        if cap is not None and st.st_size > cap:
            raise CheckpointCorrupt(
                f"the {what} {path.name} has {st.st_size:,} bytes, more than a {what} may have ({cap:,})"
            )
        yield f


def _read(path: Path, what: str, size: int | None = None, cap: int | None = None) -> bytes:
    """The bytes of a regular file (see :func:`_open_regular`), its size checked before reading."""
    with _open_regular(path, what, size, cap) as f:
        buffer = bytearray(os.fstat(f.fileno()).st_size)
        view, got = memoryview(buffer), 0
        while got < len(buffer):
            n = f.readinto(view[got:])
            if not n:
                raise CheckpointCorrupt(f"the {what} {path.name} shrank while it was read")
            got += n
        return buffer  # type: ignore[return-value]  # a bytearray: bytes-like, not copied


class _DirectoryLock:
    """The exclusive ``flock`` of ``directory/.lock`` that a writer holds for its life.

    One lock per process and directory: stores of one process share it (counted), another process gets a
    :class:`CheckpointError`. The kernel releases it when the process dies. ``saving`` is a thread lock
    of the directory (shared too) that serialises the saves of one process's stores.
    """

    # (st_dev, st_ino) of the lock file -> [fd, users, the process's save lock of that directory]
    _held: dict[tuple[int, int], list[Any]] = {}
    _guard = threading.Lock()

    def __init__(self, directory: Path) -> None:
        self.key: tuple[int, int] | None = None
        self.saving = threading.Lock()
        if fcntl is None:  # pragma: no cover - not POSIX
            return
        lock_path = directory / ".lock"
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | (_OPEN_FLAGS & ~os.O_RDONLY), 0o644)
        except OSError as exc:
            why = "is a symbolic link" if exc.errno == errno.ELOOP else f"cannot be opened: {exc.strerror}"
            raise CheckpointError(
                f"the lock file {lock_path} {why}; remove it or use another directory"
            ) from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise CheckpointError(f"the lock file {lock_path} is {_kind(st.st_mode)}, not a regular file; "
                                  "remove it or use another directory")
        key = (st.st_dev, st.st_ino)
        with self._guard:
            if key in self._held:
                os.close(fd)
                self._held[key][1] += 1
                self.saving = self._held[key][2]
            else:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
                    os.close(fd)
                    who = f"process {holder}" if holder.isdigit() else "another process"
                    raise CheckpointError(
                        f"the checkpoint directory {directory} is in use: {who} writes checkpoints there "
                        f"(it holds {lock_path}); stop it, or use another directory"
                    ) from None
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                self.saving = threading.Lock()
                self._held[key] = [fd, 1, self.saving]
        self.key = key

    def release(self) -> None:
        """Give the lock up (once; the last user of the process closes the file, which unlocks it)."""
        with self._guard:
            key, self.key = self.key, None
            if key is None:
                return
            held = self._held[key]
            held[1] -= 1
            if held[1] == 0:
                del self._held[key]
                os.close(held[0])


@dataclass
class _Entry:
    """The files of one id in a directory; ``odd``: entries named like its files that are not regular
    files (``(path, what it is)``), never opened, deleted like leftovers where possible."""

    npz: Path | None = None
    manifest: Path | None = None
    temps: tuple[Path, ...] = ()
    odd: tuple[tuple[Path, str], ...] = ()


def _scan(directory: Path) -> dict[str, _Entry]:
    """The files of each id in ``directory`` (ids sorted, oldest first); other names are ignored."""
    entries: dict[str, _Entry] = {}
    with os.scandir(directory) as it:
        for item in it:
            m = _ID.match(item.name) or _TEMP.match(item.name)
            if m is None:
                continue
            entry = entries.setdefault(m[1], _Entry())
            try:
                mode = item.stat(follow_symlinks=False).st_mode
            except OSError:  # gone since the listing
                continue
            if not stat.S_ISREG(mode):
                entry.odd += ((Path(item.path), _kind(mode)),)
            elif item.name.startswith("."):
                entry.temps += (Path(item.path),)
            elif m[2] == "npz":
                entry.npz = Path(item.path)
            else:
                entry.manifest = Path(item.path)
    return dict(sorted(entries.items()))


_now_ns = time.time_ns  # the clock of ids (a module attribute so that tests can stop it)
_last_ns = 0  # the largest id this process has handed out, as an int
_MAX_ID = 10**20 - 1


def _intact(cid: str, entry: _Entry) -> bool:
    """Whether ``entry`` holds a manifest of checkpoint ``cid`` that verifies (of any schema version)."""
    if entry.manifest is None:
        return False
    try:
        body = decode_manifest(_read(entry.manifest, "manifest", cap=MAX_MANIFEST_BYTES))
    except UnsupportedCheckpoint:
        return True
    except CheckpointCorrupt:
        return False
    return body["id"] == cid


def _new_id(directory: Path, entries: dict[str, _Entry]) -> str:
    """A new id: now in ns, but larger than every intact checkpoint's id in ``entries`` and every id this
    process made, and no name in the directory. Damaged or planted entries with larger ids are ignored."""
    global _last_ns
    ns = max(_now_ns(), _last_ns + 1)
    for cid in sorted(entries, reverse=True):
        if int(cid) < ns:
            break
        if _intact(cid, entries[cid]):
            ns = int(cid) + 1
            break
    while f"{ns:020d}" in entries:
        ns += 1
    if ns > _MAX_ID:
        raise CheckpointError(
            f"no checkpoint id is left in {directory}: checkpoint {_MAX_ID} is the largest id there can be; "
            "move it (and the checkpoints of its time) out of the directory"
        )
    _last_ns = ns
    return f"{ns:020d}"


def new_checkpoint_id(existing: Iterable[str] = ()) -> str:
    """A new 20-digit checkpoint id for stores that keep bytes (not files): now in ns, but larger than every
    id in ``existing`` and every id this process made."""
    global _last_ns
    ns = max([_now_ns(), _last_ns + 1, *(int(cid) + 1 for cid in existing)])
    if ns > _MAX_ID:
        raise CheckpointError(f"no checkpoint id is left: {_MAX_ID} is the largest id there can be")
    _last_ns = ns
    return f"{ns:020d}"


class Snapshot:
    """A model's learned state frozen at one instant: ``model.state()``, whose arrays are copies. The stores
    save a snapshot as they save the model itself (they read only ``state()``), so a checkpoint can be
    written on another thread while the model learns on.

    >>> from stream_logreg import OnlineLogisticRegression
    >>> model = OnlineLogisticRegression()
    >>> model.learn_one({"a": 1.0}, True)
    >>> frozen = Snapshot(model)
    >>> model.learn_one({"a": 1.0}, False)
    >>> frozen.n_samples_seen, model.n_samples_seen
    (1, 2)
    >>> OnlineLogisticRegression.from_state(*frozen.state()).n_samples_seen
    1
    """

    def __init__(self, model: OnlineLogisticRegression) -> None:
        self._state = model.state()
        self.n_samples_seen = model.n_samples_seen

    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        """What ``model.state()`` returned when the snapshot was taken."""
        return self._state


def _model_state(
    model: OnlineLogisticRegression, metadata: dict | None, extras: dict | None = None
) -> tuple[dict, dict, dict, dict]:
    """(npz members, model meta, metadata, extras' description) of a checkpoint, refusing what would not
    read back unchanged."""
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, dict):
        raise CheckpointError(f"metadata must be a dict, got {type(metadata).__name__}")
    metadata_json = orjson.loads(_to_json(metadata, "metadata"))
    members, meta = _encode_state(*model.state())
    extra_members, described = _encode_extras(extras)
    return {**members, **extra_members}, meta, metadata_json, described


def _body(
    cid: str, created_at: str, meta: dict, metadata: dict, size: int, digest: str, extras: dict | None = None
) -> dict:
    body = {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "library_version": __version__,
        "id": cid,
        "created_at": created_at,
        "model": meta,
        "metadata": metadata,
        "npz": {"file": f"{cid}.npz", "size": size, "sha256": digest},
    }
    if extras:
        body["extras"] = extras
    return body


def encode_checkpoint(
    checkpoint_id: str,
    model: OnlineLogisticRegression,
    metadata: dict | None = None,
    compress: bool = False,
    extras: dict | None = None,
) -> tuple[bytes, bytes]:
    """The bytes of a checkpoint's array file and manifest, for stores that keep bytes (not files).

    ``decode_manifest`` and ``restore`` read them back (``extras`` as :attr:`Checkpoint.extras`). The ids
    of a store must sort by time.
    """
    members, meta, metadata_json, described = _model_state(model, metadata, extras)
    created_at = _utc_now()
    buffer = io.BytesIO()
    _write_npz(buffer, members, compress)
    npz = buffer.getvalue()
    body = _body(checkpoint_id, created_at, meta, metadata_json, len(npz), hashlib.sha256(npz).hexdigest(),
                 described)
    return npz, encode_manifest(body)


def _save_locked(
    directory: Path,
    model: OnlineLogisticRegression,
    metadata: dict | None,
    fsync: bool,
    compress: bool,
    extras: dict | None = None,
) -> tuple[str, dict[str, _Entry]]:
    """Write one checkpoint (the caller holds the lock); returns its id and the scan made before it."""
    members, meta, metadata_json, described = _model_state(model, metadata, extras)
    entries = _scan(directory)
    cid = _new_id(directory, entries)
    created_at = _utc_now()

    def write_npz(f: IO[bytes]) -> tuple[int, str]:
        _write_npz(f, members, compress)
        f.flush()
        return _hash_file(f)

    size, digest = _write_atomically(directory / f"{cid}.npz", write_npz, fsync)
    manifest = encode_manifest(_body(cid, created_at, meta, metadata_json, size, digest, described))
    _write_atomically(directory / f"{cid}.json", lambda f: f.write(manifest), fsync)
    return cid, entries


def save_checkpoint(
    directory: str | os.PathLike,
    model: OnlineLogisticRegression,
    metadata: dict | None = None,
    *,
    fsync: bool = True,
    compress: bool = False,
    extras: dict | None = None,
) -> str:
    """Save ``model`` and ``metadata`` (and ``extras``) as a new checkpoint in ``directory``; return its
    manifest's path.

    Durable and atomic (see the module's docstring); deletes nothing (:class:`DirectoryStore` does the
    retention). ``metadata`` must be a dict that reads back from JSON unchanged (str keys; finite floats;
    lists, not tuples). ``fsync=False`` skips the fsyncs: only for tests and benchmarks, a power loss may
    then lose or tear the checkpoint. ``compress=True`` deflates the arrays (smaller, slower). Raises
    :class:`CheckpointError` if another process writes checkpoints in ``directory``.
    """
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    lock = _DirectoryLock(path)
    try:
        with lock.saving:
            cid, _ = _save_locked(path, model, metadata, fsync, compress, extras)
    finally:
        lock.release()
    return str(path / f"{cid}.json")


def _load(manifest_path: Path, expect_config: dict | None) -> Checkpoint:
    body = decode_manifest(_read(manifest_path, "manifest", cap=MAX_MANIFEST_BYTES))
    stem = manifest_path.name.removesuffix(".json")
    if body["id"] != stem:
        raise CheckpointCorrupt(f"the manifest {manifest_path.name} is of checkpoint {body['id']!r:.40}")
    npz = _read(manifest_path.with_name(f"{stem}.npz"), "array file", size=body["npz"]["size"])
    return restore(body, npz, expect_config)


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


def _odd_reason(entry: _Entry) -> str | None:
    if entry.odd:
        return "; ".join(f"{path.name} is {what}, not a regular file" for path, what in entry.odd)
    return None


class DirectoryStore:
    """Checkpoints in a local directory (created if needed), the newest ``keep`` of them kept.

    See the module's docstring for the contract and the layout. A store is its directory's one writer: it
    holds an exclusive lock on ``<directory>/.lock`` from construction to :meth:`close` (or the end of the
    process), and a second writer in another process gets a :class:`CheckpointError` at construction.
    ``read_only=True`` takes no lock, creates nothing and cannot save: for readers (``inspect``,
    ``score``, monitoring), any number of them. ``keep=None`` keeps every checkpoint. ``fsync`` and
    ``compress`` are those of :func:`save_checkpoint`.

    After each :meth:`latest`, ``skipped`` lists ``(id, reason)`` of the newer checkpoints it passed over.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        keep: int | None = 5,
        *,
        fsync: bool = True,
        compress: bool = False,
        read_only: bool = False,
    ) -> None:
        if keep is not None and keep < 1:
            raise ValueError(f"keep must be None or >= 1, got {keep!r}")
        self.path = Path(path)
        self.keep = keep
        self.fsync = fsync
        self.compress = compress
        self.read_only = read_only
        self.skipped: builtins.list[tuple[str, str]] = []
        self._lock: _DirectoryLock | None = None
        if read_only:
            if not self.path.is_dir():
                raise CheckpointError(f"{self.path} is not a directory")
            return
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = _DirectoryLock(self.path)
        weakref.finalize(self, self._lock.release)

    def __repr__(self) -> str:
        mode = ", read_only=True" if self.read_only else ""
        return f"DirectoryStore({str(self.path)!r}, keep={self.keep}{mode})"

    def close(self) -> None:
        """Release the directory's lock (another process may then write there); saving is then refused."""
        if self._lock is not None:
            self._lock.release()
        self.read_only = True

    def __enter__(self) -> DirectoryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def save(
        self, model: OnlineLogisticRegression, metadata: dict | None = None, extras: dict | None = None
    ) -> str:
        """Save a checkpoint durably and return its id; then delete leftovers of crashed saves and all
        but the newest ``keep`` complete checkpoints (what cannot be deleted is skipped, with a warning).
        ``extras`` (``{name: (arrays, meta)}``) comes back as :attr:`Checkpoint.extras`."""
        if self.read_only or self._lock is None:
            raise CheckpointError(f"the store of {self.path} is read-only (or closed): it cannot save")
        with self._lock.saving:
            return self._save(model, metadata, extras)

    def _save(self, model: OnlineLogisticRegression, metadata: dict | None, extras: dict | None) -> str:
        cid, before = _save_locked(self.path, model, metadata, self.fsync, self.compress, extras)
        complete = [i for i, e in before.items() if e.npz and e.manifest] + [cid]
        doomed = set(complete[: -self.keep] if self.keep is not None else [])
        for i, entry in before.items():
            if i in doomed or not (entry.npz and entry.manifest):  # retention, or a crashed save (older)
                files = [entry.manifest, entry.npz, *entry.temps, *(p for p, _ in entry.odd)]
            else:
                files = [*entry.temps, *(p for p, _ in entry.odd)]
            for file in files:  # the manifest first: uncommit, then delete
                if file is None:
                    continue
                try:
                    file.unlink()
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    logger.warning("cannot delete %s in %s (skipped): %s", file.name, self.path,
                                   exc.strerror or exc)
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
                    raise CheckpointCorrupt(_odd_reason(entry) or (
                        "incomplete: no manifest (a save that did not commit: crashed, or still running)"))
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
                    size += file.lstat().st_size if file is not None else 0
            created_at, reason = None, None
            try:
                if entry.manifest is None:
                    raise CheckpointCorrupt(_odd_reason(entry) or "incomplete: no manifest")
                body = decode_manifest(_read(entry.manifest, "manifest", cap=MAX_MANIFEST_BYTES))
                with contextlib.suppress(ValueError):
                    created_at = dt.datetime.fromisoformat(body["created_at"])
                if body["id"] != cid:
                    raise CheckpointCorrupt(f"the manifest is of checkpoint {body['id']!r:.40}")
                _verify_file(self.path / f"{cid}.npz", body["npz"]["size"], body["npz"]["sha256"])
            except CheckpointError as exc:
                reason = str(exc)
            infos.append(CheckpointInfo(cid, created_at, size, reason is None, reason))
        return infos


def _verify_file(path: Path, size: int, digest: str) -> None:
    with _open_regular(path, "array file", size=size) as f:
        _, actual = _hash_file(f)
    if actual != digest:
        raise CheckpointCorrupt(f"the array file's sha256 is {actual}, the manifest says {digest}")
