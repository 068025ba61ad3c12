"""Reading and writing the ``.npz`` array files of checkpoints, treating the bytes as hostile.

:func:`write` is ``np.savez`` (object arrays refused: ``allow_pickle=False``). :func:`read` reads back an
``.npz`` without trusting it: the zip directory and every member's ``.npy`` header are checked against what
the caller allows (:class:`Member`: dtype and length, per member name) before anything is allocated or
decompressed, nothing is ever unpickled, and anything else raises :class:`Refused`, which says what is
wrong. The checkpoint format (which members a model needs) is :mod:`stream_logreg.checkpoints`'.

>>> import io
>>> import numpy as np
>>> buffer = io.BytesIO()
>>> write(buffer, {"w": np.array([1.0, -0.0])}, compress=False)
>>> read(buffer.getvalue(), lambda name: Member(np.dtype("<f8"), exact=2) if name == "w" else None)["w"]
array([ 1., -0.])
>>> read(buffer.getvalue(), lambda name: None)
Traceback (most recent call last):
    ...
stream_logreg.npz.Refused: the array file holds a member 'w.npy' no model needs
"""

from __future__ import annotations

import io
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

import numpy as np

__all__ = ["MAX_MEMBERS", "Member", "Refused", "read", "write"]

#: At most this many members in an array file.
MAX_MEMBERS = 128
_NPY_HEADER_MAX = 4096


class Refused(ValueError):
    """The bytes are not an ``.npz`` that :func:`read` may return (the message says why)."""


def write(file: IO[bytes], arrays: dict[str, np.ndarray], compress: bool) -> None:
    """The arrays as an ``.npz`` (``np.savez``, refusing object arrays: ``allow_pickle=False``)."""
    (np.savez_compressed if compress else np.savez)(file, allow_pickle=False, **arrays)


@dataclass(frozen=True)
class Member:
    """What an array of the ``.npz`` may be: its dtype, its length (``exact``) or at most ``at_most``."""

    dtype: np.dtype
    exact: int | None = None
    at_most: int | None = None
    shape_2d: bool = False


def _npy_header(head: bytes, name: str) -> tuple[np.dtype, tuple, int]:
    """(dtype, shape, header length) of a ``.npy`` file from its first bytes (no pickles, C order)."""
    f = io.BytesIO(head)
    try:
        major, _ = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f, max_header_size=_NPY_HEADER_MAX)
    except (ValueError, SyntaxError, EOFError, TypeError) as exc:
        raise Refused(f"array {name!r} has no valid .npy header: {exc}") from None
    if dtype.hasobject:
        raise Refused(f"array {name!r} holds pickled (object) data; refused without unpickling it")
    if fortran:
        raise Refused(f"array {name!r} is in Fortran order, not written by stream-logreg")
    return dtype, shape, f.tell()


def _member_head(npz_bytes: bytes, info: zipfile.ZipInfo, name: str) -> bytes:
    """The first bytes of a member (enough for a .npy header), decompressing no more than that."""
    at = info.header_offset
    local = npz_bytes[at : at + 30]
    if len(local) < 30 or local[:4] != b"PK\x03\x04":
        raise Refused(f"array {name!r} has no valid local zip header")
    start = at + 30 + int.from_bytes(local[26:28], "little") + int.from_bytes(local[28:30], "little")
    data = npz_bytes[start : start + info.compress_size]
    limit = _NPY_HEADER_MAX + 16
    if info.compress_type == zipfile.ZIP_STORED:
        return bytes(data[:limit])
    try:
        return zlib.decompressobj(-15).decompress(data, limit)
    except zlib.error as exc:
        raise Refused(f"array {name!r} does not decompress: {exc}") from None


def read(npz_bytes: bytes, allowed: Callable[[str], Member | None]) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` whose members ``allowed`` accepts (it returns what each may be).

    Refused before any allocation or decompression: an unknown or duplicated member, a compression other
    than none/deflate, an encrypted member, a dtype or shape other than allowed, a declared uncompressed
    size that disagrees with the .npy header (a zip bomb cannot expand past the declared size: zipfile stops
    there and checks the CRC).
    """
    if npz_bytes[:2] != b"PK":
        if npz_bytes[:1] == b"\x80" or npz_bytes[:2] in (b"(d", b"(l", b"}q", b"]q"):
            raise Refused("the array file is a pickle, not an .npz; refused without unpickling it")
        if npz_bytes[:6] == b"\x93NUMPY":
            raise Refused("the array file is a single .npy array, not an .npz")
        raise Refused(f"the array file is not an .npz (starts {npz_bytes[:8]!r})")
    try:
        zf = zipfile.ZipFile(io.BytesIO(npz_bytes))
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, NotImplementedError) as exc:
        raise Refused(f"the array file does not read as an .npz: {exc}") from None
    arrays: dict[str, np.ndarray] = {}
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_MEMBERS:
            raise Refused(f"the array file has {len(infos)} members, more than any checkpoint")
        plan, seen = [], set()
        for info in infos:
            name = info.filename.removesuffix(".npy")
            spec = allowed(name) if info.filename.endswith(".npy") else None
            if spec is None:
                raise Refused(f"the array file holds a member {info.filename!r} no model needs")
            if name in seen:
                raise Refused(f"the array file holds member {info.filename!r} twice")
            seen.add(name)
            if info.flag_bits & 0x1:
                raise Refused(f"member {info.filename!r} of the array file is encrypted")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise Refused(f"member {info.filename!r} uses compression {info.compress_type}")
            if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
                raise Refused(f"member {info.filename!r} is stored but its sizes differ")
            head = _member_head(npz_bytes, info, name)
            dtype, shape, header_len = _npy_header(head, name)
            if dtype != spec.dtype:
                raise Refused(f"array {name!r} has dtype {dtype}, expected {spec.dtype.name}")
            ok_rank = len(shape) == (2 if spec.shape_2d else 1)
            length = shape[0] if ok_rank else -1
            if spec.exact is not None and (not ok_rank or length != spec.exact):
                raise Refused(f"array {name!r} has shape {shape}, expected ({spec.exact},)")
            if spec.at_most is not None and (not ok_rank or not 0 <= length <= spec.at_most):
                raise Refused(
                    f"array {name!r} has shape {shape}, expected at most ({spec.at_most},)"
                )
            nbytes = length * dtype.itemsize
            if header_len + nbytes != info.file_size:
                raise Refused(
                    f"array {name!r} declares {info.file_size} bytes uncompressed, its header "
                    f"{header_len + nbytes}"
                )
            plan.append((name, info, dtype, length, header_len))
        for name, info, dtype, length, header_len in plan:
            try:
                with zf.open(info) as f:
                    raw = f.read(info.file_size)
                    if len(raw) != info.file_size or f.read(1):
                        raise Refused(f"array {name!r} is truncated")
            except (zipfile.BadZipFile, ValueError, OSError, EOFError, zlib.error, RuntimeError) as exc:
                raise Refused(f"array {name!r} does not read: {exc}") from None
            arrays[name] = np.frombuffer(raw, dtype=dtype, count=length, offset=header_len)
    return arrays
