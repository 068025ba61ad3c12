"""The delayed-label join store's checkpoint form: what ``JoinStore.to_state`` writes and
``JoinStore.from_state`` reads back (``consumers/state/join_store.py``), and the packed copy that makes a
checkpoint cost what changed.

The form (``FORMAT`` 2; a format 1 state still loads): a row per entry, oldest first, in the int64 columns
``_INT_COLUMNS`` and ``p`` (float64); the ids and the events' bytes (features JSON or record value) packed
as int64 words (:func:`_pack`) with their lengths (``id_len``, ``x_len``); the ids joined recently
(``joined.at``, ``joined.id_len``, ``joined.ids``); and in the meta the byte lengths of the packed columns
and the topics the ``topic`` column numbers, beside the store's own (its settings, stream time, counters,
latency histogram, events' fields).

:class:`PackedState` keeps a narrowed copy of what the last ``to_state`` wrote and the rows of its entries
removed since, and writes the next state from them and the entries added since (:meth:`PackedState.pack`);
:meth:`PackedState.unpack` checks a state and gives back the entries, the joined ids and the other values of
a store, and the packed copy a restored store starts from. It knows the entries from ``join_entries``; the
store (``join_store``) imports it, never the other way.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from itertools import chain, islice
from typing import Any, NamedTuple

import numpy as np
import orjson

from consumers.state.join_entries import (
    _FEATURES,
    _RECORD,
    COUNTERS,
    ENTRY_BYTES,
    FEATURE_BYTES,
    _check_int,
    _check_pairs,
    _encode_features,
    _Event,
    _Label,
    _new,
)
from stream_logreg.codec import Event, JsonCodec

__all__ = ["FORMAT", "PackedState", "Restored"]

FORMAT = 2  # 2: the ``form`` column and ``event_fields`` (1, features JSON only, still loads)
_INT_COLUMNS = ("kind", "y", "version", "ts", "stored_at", "topic", "partition", "offset", "form")
_EVENT, _LABEL = 0, 1  # the ``kind`` column
#: The generous codec bounds a stored record value is decoded with (it passed the learner's own bounds).
_CODEC_BOUNDS = {"max_features": 2**31, "max_bytes": 2**62}


def _pack(chunks: list[bytes]) -> tuple[np.ndarray, int]:
    """Bytes as an int64 array (little-endian, zero-padded to 8 bytes) and the true byte length."""
    n = sum(map(len, chunks))
    # One copy: joined and padded into a (writable) bytearray, viewed as the array (no copy on little-endian).
    blob = bytearray().join([*chunks, b"\0" * (-n % 8)])
    return np.frombuffer(blob, dtype="<i8").astype(np.int64, copy=False), n


def _unpack(words: np.ndarray, n: int, lengths: np.ndarray, what: str) -> list[bytes]:
    if not isinstance(n, int) or n < 0 or len(words) != -(-n // 8):
        raise ValueError(f"join store state: {what} holds {len(words)} words for {n!r} bytes")
    if int(lengths.sum()) != n:
        raise ValueError(f"join store state: {what} lengths add up to {int(lengths.sum())}, not {n}")
    blob = np.ascontiguousarray(words, dtype="<i8").tobytes()
    if any(blob[n:]):
        raise ValueError(f"join store state: {what} has non-zero padding")
    ends = np.cumsum(lengths).tolist()
    starts = [0, *ends][:-1]
    return [blob[s:e] for s, e in zip(starts, ends, strict=True)]


class _Packed(NamedTuple):
    """What the last :meth:`JoinStore.to_state` wrote, kept to write it again: its ``n`` rows (every entry
    then present, in order), each int column narrowed (:func:`_narrow`: ``_INT_COLUMNS``, ``id_len``,
    ``x_len``, and ``rows``, the number each entry holds to find its row, increasing), ``p`` of the events'
    rows, the ids' and the events' bytes (uint8, one after the other), and the topics the ``topic``
    column numbers."""

    n: int
    rows: tuple[int, np.ndarray | None]
    cols: dict[str, tuple[int, np.ndarray | None]]
    p: np.ndarray
    ids: np.ndarray
    x: np.ndarray
    topics: list[str]


class _PackedJoined(NamedTuple):
    """The joined ids the last :meth:`JoinStore.to_state` wrote, and the count of those that had left
    (forgotten or expired) then: those that left since are the oldest ones, as many as the difference."""

    n: int
    at: tuple[int, np.ndarray | None]
    id_len: tuple[int, np.ndarray | None]
    ids: np.ndarray
    id_bytes: int
    left: int


_U64 = 2**64 - 1


def _narrow(a: np.ndarray) -> tuple[int, np.ndarray | None]:
    """An int64 column as its smallest value and the differences to it, in the smallest unsigned dtype that
    holds them (None when they are all 0): what :func:`_widen` makes the column of again, exactly."""
    if not len(a):
        return 0, None
    lo, hi = int(a.min()), int(a.max())
    if lo == hi:
        return lo, None
    span = hi - lo
    dtype = next(t for t, bits in ((np.uint8, 8), (np.uint16, 16), (np.uint32, 32), (np.uint64, 64))
                 if span < 2**bits)
    return lo, (a.view(np.uint64) - np.uint64(lo & _U64)).astype(dtype)  # wraps: exact below 2**64


def _widen(col: tuple[int, np.ndarray | None], keep: np.ndarray | None, n: int) -> np.ndarray:
    """The int64 column of :func:`_narrow`, its rows that ``keep`` keeps (all when None; ``n`` of them)."""
    lo, d = col
    if d is None:
        return np.full(n, lo, dtype=np.int64)
    if keep is not None:
        d = d[keep]
    return (d.astype(np.uint64) + np.uint64(lo & _U64)).view(np.int64)


def _gather(buf: np.ndarray, lens: np.ndarray | None, keep: np.ndarray | None, more: list[bytes]
            ) -> tuple[np.ndarray, int]:
    """What :func:`_pack` makes of the rows of ``buf`` (uint8; ``lens`` bytes each) that ``keep`` keeps
    (all when None) followed by ``more``: one copy of each run of consecutive rows kept."""
    if keep is None:
        spans, n = [(0, len(buf))], len(buf)
    else:
        ends = np.cumsum(lens)
        edges = np.diff(keep.view(np.int8), prepend=0, append=0)  # +1 where a run starts, -1 past its end
        first, stop = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        starts, stops = ends[first] - lens[first], ends[stop - 1]
        spans, n = list(zip(starts.tolist(), stops.tolist(), strict=True)), int((stops - starts).sum())
    tail = b"".join(more)
    n += len(tail)
    # One bytearray, joined as _pack's: numpy would ask the kernel for huge pages, which may stall it for
    # 100+ ms (and a bytearray(size) is zeroed first).
    src = memoryview(buf)
    out = bytearray().join([*(src[a:b] for a, b in spans), tail, bytes(-n % 8)])
    return np.frombuffer(out, dtype="<i8").astype(np.int64, copy=False), n


def _packed(arrays: Mapping[str, np.ndarray], rows: np.ndarray, topics: list[str], id_bytes: int,
            x_bytes: int, old: _Packed | None = None) -> _Packed:
    """The packed copy of the entries' arrays of a state (``rows``: the numbers their entries hold); the
    bytes written over those of ``old`` (no longer needed) when they fit in it with little to spare."""
    cols = {name: _narrow(arrays[name]) for name in (*_INT_COLUMNS, "id_len", "x_len")}
    ids = _bytes_of(arrays["ids"], id_bytes, None if old is None else old.ids)
    x = _bytes_of(arrays["x"], x_bytes, None if old is None else old.x)
    p = np.asarray(arrays["p"], dtype=np.float64)[np.asarray(arrays["kind"]) == _EVENT]  # a label's is 0.0
    return _Packed(len(rows), _narrow(rows), cols, p, ids, x, topics)


def _bytes_of(words: np.ndarray, n: int, old: np.ndarray | None) -> np.ndarray:
    """The first ``n`` bytes of ``words``, copied into the memory of ``old`` (a view of the start of its
    base) when it holds them with at most 1/32 to spare (memory the process already has: no page to
    fault in), else into new memory."""
    buf = None if old is None else old.base if isinstance(old.base, np.ndarray) else old
    if buf is None or not n <= len(buf) <= n + n // 32:
        buf = np.frombuffer(bytearray(n), dtype=np.uint8)  # (as in _gather: no huge pages asked for)
    buf[:n] = np.ascontiguousarray(words, dtype="<i8").view(np.uint8)[:n]
    return buf if len(buf) == n else buf[:n]


class Restored(NamedTuple):
    """A state read back by :meth:`PackedState.unpack`: a new store of the state's settings (``store``,
    empty) and what it holds; ``event_fields`` those of the events to come; ``packed`` its packed copy."""

    store: Any
    entries: OrderedDict[str, _Event | _Label]
    joined: OrderedDict[str, int]
    stream_time: int
    counters: dict[str, int]
    latency_counts: list[int]
    n_bytes: int
    pending_events: int
    event_fields: tuple[str, str, str] | None
    packed: PackedState


class PackedState:
    """What the last :meth:`~consumers.state.join_store.JoinStore.to_state` wrote, kept to write it again:
    the entries' rows (a :class:`_Packed`: each entry packed holds its row number in place of its bytes,
    an int), the joined ids (a :class:`_PackedJoined`), and :attr:`gone`, the row numbers of the entries
    packed that left since, which the store appends to as they leave."""

    def __init__(self) -> None:
        self._copy: _Packed | None = None
        self.gone: list[int] = []
        self._next_row = 0  # the row number the next entry packed gets
        self._joined: _PackedJoined | None = None

    def pack(self, entries: OrderedDict[str, _Event | _Label], joined: OrderedDict[str, int], joined_left: int
             ) -> tuple[dict[str, np.ndarray], dict]:
        """The state's arrays of a store's ``entries`` and ``joined`` ids (``joined_left``: how many joined
        ids it forgot or expired so far), and the meta of their form (``topics``, ``id_bytes``, ``x_bytes``,
        ``joined_id_bytes``); the entries new to the packed copy are replaced in ``entries`` by the same
        entries holding their row number.

        Python work for the entries added and removed since the previous call only, and bulk copies
        (memcpy speed) of the rest: the rows of the packed copy still present (a mask of those removed),
        then the entries added since (the last ones of ``entries``), written as the whole store packed
        anew would be; the result is the new copy, one segment, with no removed rows in it, whatever
        happened before. The joined ids likewise (they only ever leave oldest first).
        """
        old = self._copy
        kept = keep = None  # the rows of the packed copy still present: how many, which (None: all)
        if old is not None:
            kept = old.n
            rows = _widen(old.rows, None, old.n)
            if self.gone:
                gone = np.array(self.gone, dtype=np.int64)
                at = np.searchsorted(rows, gone)
                if not (at < old.n).all() or not (rows[np.minimum(at, old.n - 1)] == gone).all():
                    raise RuntimeError("join store: an entry removed was not in the packed copy")
                keep = np.ones(old.n, dtype=bool)
                keep[at] = False
                kept = old.n - len(gone)
                rows = rows[keep]
        # The entries added since the previous call: the last ones (those before them are packed).
        n_new = len(entries) - (kept or 0)
        if kept:
            new_ids = list(islice(reversed(entries), n_new))
            vals = list(islice(reversed(entries.values()), n_new))
            new_ids.reverse()
            vals.reverse()
        else:
            new_ids, vals = list(entries), list(entries.values())
        if n_new < 0 or any((e[1] if e.__class__ is _Event else e[7]).__class__ is int for e in vals[:1]):
            raise RuntimeError("join store: the packed copy lost track of the entries")
        # Topics, numbered in the order of first appearance: those of the rows kept, then of the new ones.
        code: dict[str, int] = {}
        number = code.setdefault
        if kept:
            lo, d = old.cols["topic"]
            local = (np.zeros(kept, dtype=np.intp) if d is None
                     else (d if keep is None else d[keep]).astype(np.intp))
            seen = np.flatnonzero(np.bincount(local, minlength=len(old.topics)))
            if len(seen) > 8:
                firsts, idx = np.unique(local, return_index=True)
                seen = firsts[np.argsort(idx)]
            elif len(seen) > 1:
                seen = seen[np.argsort([int(np.argmax(local == c)) for c in seen.tolist()])]
            lut = np.zeros(len(old.topics), dtype=np.int64)
            for c in seen.tolist():
                lut[c] = number(old.topics[lo + c], len(code))
            topic_kept = lut[local]
        # The new rows, as the whole store was packed before: a row of the int columns per entry.
        table = np.fromiter(
            chain.from_iterable(
                (_EVENT, 0, e[3], e[4], e[5], number(e[6], len(code)), e[7], e[8], e[10])
                if e.__class__ is _Event
                else (_LABEL, e[0], 0, e[1], e[2], number(e[3], len(code)), e[4], e[5], 0)
                for e in vals
            ),
            dtype=np.int64,
            count=len(vals) * len(_INT_COLUMNS),
        ).reshape(len(vals), len(_INT_COLUMNS)).T
        p_new = np.zeros(len(vals), dtype=np.float64)
        p_new[table[0] == _EVENT] = [e[2] for e in vals if e.__class__ is _Event]
        blobs = [e[1] if e.__class__ is _Event else b"" for e in vals]
        ids = [id.encode("utf-8", "surrogatepass") for id in new_ids]
        arrays: dict[str, np.ndarray] = {}
        for i, name in enumerate(_INT_COLUMNS):
            if not kept:
                arrays[name] = np.ascontiguousarray(table[i])
            else:
                part = topic_kept if name == "topic" else _widen(old.cols[name], keep, kept)
                arrays[name] = np.concatenate([part, table[i]])
        if kept:
            events = _widen(old.cols["kind"], None, old.n) == _EVENT
            p_kept = np.zeros(kept, dtype=np.float64)
            p_kept[events if keep is None else events[keep]] = old.p if keep is None else old.p[keep[events]]
            arrays["p"] = np.concatenate([p_kept, p_new])
        else:
            arrays["p"] = p_new
        id_len_new = np.array(list(map(len, ids)), dtype=np.int64)
        x_len_new = np.array(list(map(len, blobs)), dtype=np.int64)
        if old is not None and old.n:
            id_len_old = _widen(old.cols["id_len"], None, old.n)
            x_len_old = _widen(old.cols["x_len"], None, old.n)
            id_words, id_bytes = _gather(old.ids, id_len_old, keep, ids)
            x_words, x_bytes = _gather(old.x, x_len_old, keep, blobs)
            if keep is not None:
                id_len_old, x_len_old = id_len_old[keep], x_len_old[keep]
            arrays["id_len"] = np.concatenate([id_len_old, id_len_new])
            arrays["x_len"] = np.concatenate([x_len_old, x_len_new])
        else:
            id_words, id_bytes = _pack(ids)
            x_words, x_bytes = _pack(blobs)
            arrays["id_len"], arrays["x_len"] = id_len_new, x_len_new
        arrays["ids"], arrays["x"] = id_words, x_words
        joined_state, packed_joined = self._pack_joined(joined, joined_left)
        arrays.update(joined_state)
        topics = list(code)
        # The new packed copy (over the old one's memory when it fits), then the new entries point into it.
        keep = None
        self._copy = None
        first = self._next_row
        rows = np.arange(first, first + n_new, dtype=np.int64) if kept is None else np.concatenate(
            [rows, np.arange(first, first + n_new, dtype=np.int64)])
        self._copy = _packed(arrays, rows, topics, id_bytes, x_bytes, old)
        old = None
        self.gone.clear()  # (emptied, not replaced: the store appends to it)
        self._joined = packed_joined
        entries.update(zip(new_ids, [_new(_Event, (e[0], s, *e[2:])) if e.__class__ is _Event
                                     else _new(_Label, (*e[:7], s)) for s, e in enumerate(vals, first)],
                           strict=True))
        self._next_row = first + n_new
        return arrays, {"topics": topics, "id_bytes": id_bytes, "x_bytes": x_bytes,
                        "joined_id_bytes": packed_joined.id_bytes}

    def _pack_joined(self, joined: OrderedDict[str, int], left: int
                     ) -> tuple[dict[str, np.ndarray], _PackedJoined]:
        """The joined ids' arrays, from those of the previous call (the oldest ones forgotten or expired
        since left off) and the ids joined since; and their new packed copy."""
        pj = self._joined
        start = n_old = 0
        if pj is not None:
            n_old = pj.n
            start = min(n_old, left - pj.left)
        new_ids = list(islice(reversed(joined), len(joined) - (n_old - start)))
        new_ids.reverse()
        encoded = [id.encode("utf-8", "surrogatepass") for id in new_ids]
        at_new = np.array([joined[id] for id in new_ids], dtype=np.int64)
        len_new = np.array(list(map(len, encoded)), dtype=np.int64)
        if n_old:
            lens = _widen(pj.id_len, None, n_old)
            skip = int(lens[:start].sum())
            words, n_bytes = _gather(pj.ids[skip:], None, None, encoded)
            at = np.concatenate([_widen(pj.at, None, n_old)[start:], at_new])
            lens = np.concatenate([lens[start:], len_new])
        else:
            (words, n_bytes), at, lens = _pack(encoded), at_new, len_new
        if len(at) != len(joined):
            raise RuntimeError("join store: the packed joined ids lost track of the joins")
        packed = _PackedJoined(len(at), _narrow(at), _narrow(lens), words.view(np.uint8)[:n_bytes].copy(),
                               n_bytes, left)
        return {"joined.at": at, "joined.id_len": lens, "joined.ids": words}, packed

    def values(self, rows: list[int]) -> dict[int, bytes]:
        """The bytes the packed copy keeps for the entries that hold these row numbers."""
        if not rows:
            return {}
        old = self._copy
        at = np.searchsorted(_widen(old.rows, None, old.n), np.array(rows, dtype=np.int64))
        lens = _widen(old.cols["x_len"], None, old.n)
        ends = np.cumsum(lens)
        x = old.x
        return {r: x[e - n:e].tobytes()
                for r, e, n in zip(rows, ends[at].tolist(), lens[at].tolist(), strict=True)}

    @classmethod
    def unpack(cls, arrays: Mapping[str, np.ndarray], meta: Mapping, new_store: Callable[..., Any],
               event_fields: Any) -> Restored:
        """The store that ``to_state`` described, as :class:`Restored`, its packed copy that state; a
        ``ValueError`` naming the fault for any state it could not have written (see
        :meth:`~consumers.state.join_store.JoinStore.from_state`). ``new_store(**params)`` makes an empty
        store of the state's settings (a ``ValueError`` for bad ones), whose bounds the state must keep."""
        fmt = getattr(meta, "get", dict().get)("format")
        if not isinstance(meta, Mapping) or fmt not in (1, FORMAT):
            raise ValueError(f"join store state: unknown format {fmt!r}")
        cols = _columns(arrays, fmt)
        params = meta.get("params")
        if not isinstance(params, Mapping):
            raise ValueError("join store state: no params")
        store = new_store(**{**params, "latency_buckets_ms": tuple(params.get("latency_buckets_ms", ()))})
        n = len(cols["kind"])
        for name in (*_INT_COLUMNS, "p", "id_len", "x_len"):
            if len(cols[name]) != n:
                raise ValueError(f"join store state: array {name!r} has {len(cols[name])} entries, not {n}")
        if n > store.max_pending:
            raise ValueError(f"join store state: {n} entries, more than max_pending={store.max_pending}")
        if len(cols["joined.at"]) != len(cols["joined.id_len"]) or len(cols["joined.at"]) > store.max_joined:
            raise ValueError("join store state: the joined ids do not match their times or exceed max_joined")
        for name in ("id_len", "x_len", "joined.id_len"):
            if (cols[name] < 0).any():
                raise ValueError(f"join store state: array {name!r} has negative lengths")
        stream_time = meta.get("stream_time")
        try:
            _check_int(stream_time, "stream_time", -1)
            latency_counts = _counts_list(meta.get("latency_counts"), len(store.latency_counts))
            counters = meta.get("counters")
            if fmt == 1 and isinstance(counters, Mapping) and "duplicate_handoffs" not in counters:
                counters = {**counters, "duplicate_handoffs": 0}  # counted since format 2
            if not isinstance(counters, Mapping) or set(counters) != set(COUNTERS):
                raise ValueError(f"counters must be exactly {COUNTERS}")
            for k in COUNTERS:
                _check_int(counters[k], f"counter {k}", 0)
        except ValueError as exc:
            raise ValueError(f"join store state: {exc}") from None
        topics = meta.get("topics")
        if not isinstance(topics, list) or not all(type(t) is str for t in topics):
            raise ValueError("join store state: topics must be a list of strings")
        _check_columns(cols, stream_time, len(topics))
        kind, form = cols["kind"], cols["form"]
        ids = [_decode_id(b) for b in _unpack(cols["ids"], meta.get("id_bytes"), cols["id_len"], "ids")]
        blobs = _unpack(cols["x"], meta.get("x_bytes"), cols["x_len"], "features")
        joined_ids = [
            _decode_id(b)
            for b in _unpack(
                cols["joined.ids"], meta.get("joined_id_bytes"), cols["joined.id_len"], "joined ids"
            )
        ]
        if (
            len(set(ids)) != n
            or len(set(joined_ids)) != len(joined_ids)
            or not set(ids).isdisjoint(joined_ids)
        ):
            raise ValueError("join store state: repeated ids")
        records = (form == _RECORD).nonzero()[0].tolist()
        saved_fields = meta.get("event_fields")
        decode = None
        if saved_fields is not None:
            if type(saved_fields) is not list or len(saved_fields) != 3:
                raise ValueError("join store state: event_fields must be a list of three field names")
            try:
                decode = JsonCodec(*saved_fields, **_CODEC_BOUNDS).decoder()
            except (ValueError, TypeError) as exc:
                raise ValueError(f"join store state: event_fields: {exc}") from None
        elif records:
            raise ValueError("join store state: events kept as record values but no event_fields")
        kinds = kind.tolist()
        for i in records:
            kinds[i] = _LABEL  # not features JSON: checked below by decoding the record
        xs = _check_stored_features(ids, blobs, kinds)  # index -> the features of each features-JSON event
        forms = form.tolist()
        if event_fields == "as saved":
            event_fields = saved_fields
        convert = records and tuple(event_fields or ()) != tuple(saved_fields)
        for i in records:
            ev = decode(blobs[i])
            if type(ev) is not Event or ev.y is not None or ev.id != ids[i]:
                raise ValueError(f"join store state: the record kept for event {ids[i]!r:.60} is not an "
                                 "unlabelled event of that id")
            xs[i] = ev.x
            if convert:
                blobs[i], forms[i] = _encode_features(ev.x), _FEATURES
        rows = zip(
            ids,
            range(n),
            blobs,
            kind.tolist(),
            cols["y"].tolist(),
            cols["version"].tolist(),
            cols["ts"].tolist(),
            cols["stored_at"].tolist(),
            [topics[c] for c in cols["topic"].tolist()],
            cols["partition"].tolist(),
            cols["offset"].tolist(),
            cols["p"].tolist(),
            forms,
            strict=True,
        )
        entries: OrderedDict[str, _Event | _Label] = OrderedDict()
        n_bytes = n_events = 0
        seed = not convert  # the arrays loaded are the first packed copy: the entries hold their rows
        for id, i, blob, k, yi, v, t, s, tp, part, off, pi, f in rows:
            if k == _EVENT:
                x = xs[i]
                nbytes = ENTRY_BYTES + len(id) + len(blob) + FEATURE_BYTES * len(x)
                entries[id] = _new(_Event, (x, i if seed else blob, pi, v, t, s, tp, part, off, nbytes, f))
                n_events += 1
            else:
                nbytes = ENTRY_BYTES + len(id)
                entries[id] = _new(_Label, (yi, t, s, tp, part, off, nbytes, i if seed else None))
            n_bytes += nbytes
        if n_bytes > store.max_bytes:
            raise ValueError(f"join store state: {n_bytes} bytes, more than max_bytes={store.max_bytes}")
        packed = cls()
        if seed:  # the topics as saved: to_state numbers them anew
            packed._copy = _packed(cols, np.arange(n, dtype=np.int64), list(topics), meta["id_bytes"],
                                   meta["x_bytes"])
            packed._next_row = n
        n_joined = meta["joined_id_bytes"]
        joined_bytes = np.ascontiguousarray(cols["joined.ids"], dtype="<i8").view(np.uint8)[:n_joined].copy()
        packed._joined = _PackedJoined(len(joined_ids), _narrow(cols["joined.at"]),
                                       _narrow(cols["joined.id_len"]), joined_bytes, n_joined,
                                       counters["forgotten_joins"])
        return Restored(
            store,
            entries,
            OrderedDict(zip(joined_ids, cols["joined.at"].tolist(), strict=True)),
            stream_time,
            {k: counters[k] for k in COUNTERS},
            latency_counts,
            n_bytes,
            n_events,
            None if event_fields is None else tuple(event_fields),
            packed,
        )


def _columns(arrays: Mapping[str, np.ndarray], fmt: int) -> dict[str, np.ndarray]:
    """The state's arrays by name, each checked to be there (and no other), 1-D and of its dtype; a format 1
    state's (no ``form`` column) with the column it implies."""
    if fmt == 1 and isinstance(arrays, Mapping) and "form" not in arrays and "kind" in arrays:
        arrays = {**arrays, "form": np.zeros(len(arrays["kind"]), dtype=np.int64)}  # features JSON only
    expected = {
        *_INT_COLUMNS,
        "p",
        "id_len",
        "ids",
        "x_len",
        "x",
        "joined.at",
        "joined.id_len",
        "joined.ids",
    }
    if set(arrays) != expected:
        raise ValueError(f"join store state: arrays {sorted(arrays)}, expected {sorted(expected)}")
    cols = {}
    for name in expected:
        a = np.asarray(arrays[name])
        want = np.float64 if name == "p" else np.int64
        if a.dtype != want or a.ndim != 1:
            raise ValueError(
                f"join store state: array {name!r} is {a.dtype} {a.shape}, expected 1-D {want.__name__}"
            )
        cols[name] = a
    return cols


def _check_columns(cols: dict[str, np.ndarray], stream_time: int, n_topics: int) -> None:
    """Refuse the columns (of the same length) if any holds a value a store cannot have."""
    kind, y, version, ts, stored_at, topic, partition, offset, form = (cols[c] for c in _INT_COLUMNS)
    p = cols["p"]
    events = kind == _EVENT
    checks = (
        ("kind", ((kind == _EVENT) | (kind == _LABEL)).all()),
        ("y", ((y == 0) | ((y == 1) & ~events)).all()),
        ("version", (version >= 0).all() and (version[~events] == 0).all()),
        ("ts", (ts >= -1).all()),
        (
            "stored_at",
            (stored_at >= -1).all()
            and (stored_at <= stream_time).all()
            and (np.diff(stored_at) >= 0).all(),
        ),
        ("topic", ((topic >= 0) & (topic < n_topics)).all()),
        ("partition", (partition >= -1).all()),
        ("offset", (offset >= -1).all()),
        ("form", (((form == _FEATURES) | (form == _RECORD)) & (events | (form == _FEATURES))).all()),
        ("p", np.isfinite(p).all() and ((p >= 0.0) & (p <= 1.0)).all() and (p[~events] == 0.0).all()),
        ("x_len", (cols["x_len"][events] >= 2).all() and (cols["x_len"][~events] == 0).all()),
        (
            "joined.at",
            (cols["joined.at"] >= -1).all()
            and (cols["joined.at"] <= stream_time).all()
            and (np.diff(cols["joined.at"]) >= 0).all(),
        ),
    )
    for name, ok in checks:
        if not ok:
            raise ValueError(f"join store state: array {name!r} holds values a store cannot have")


def _check_stored_features(ids: list[str], blobs: list[bytes], kinds: list[int]) -> dict[int, dict]:
    """The features of the events (``kinds[i] == _EVENT``), by index; refuse state features that
    :func:`_encode_features` could not have written. One parse of all of them as one JSON array: as no blob
    is empty, each must hold exactly one value for the count to match; then the checks of :func:`_proven`
    over the whole, and a blob at a time only if those fail."""
    events = [i for i, k in enumerate(kinds) if k == _EVENT]
    whole = b"[" + b",".join([blobs[i] for i in events]) + b"]"
    try:
        xs = orjson.loads(whole)
    except orjson.JSONDecodeError:
        xs = None
    if xs is None or len(xs) != len(events):
        for i in events:  # find the culprit
            try:
                orjson.loads(blobs[i])
            except orjson.JSONDecodeError:
                raise ValueError(f"join store state: the features of {ids[i]!r:.60} are not JSON") from None
        raise ValueError("join store state: the features do not hold one value per event")
    n_objects = n_brackets = 0
    for x in xs:
        if type(x) is dict:
            n_objects += 1
        elif type(x) is list and all(type(pair) is list and len(pair) == 2 for pair in x):
            n_brackets += len(x) + 1
        else:
            n_objects = -1  # not features: the slow check names the event
            break
    if b"null" not in whole and whole.count(b"{") == n_objects and whole.count(b"[") == n_brackets + 1:
        return {i: x if type(x) is dict else dict(x) for i, x in zip(events, xs, strict=True)}
    for i, x in zip(events, xs, strict=True):
        try:
            _check_pairs(list(x.items()) if type(x) is dict else x)
        except ValueError as exc:
            raise ValueError(f"join store state: event {ids[i]!r:.60}: {exc}") from None
    return {i: x if type(x) is dict else dict(x) for i, x in zip(events, xs, strict=True)}


def _decode_id(b: bytes) -> str:
    try:
        return b.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        raise ValueError("join store state: an id is not UTF-8") from None


def _counts_list(value: Any, n: int) -> list[int]:
    if not isinstance(value, list) or len(value) != n:
        raise ValueError(f"latency_counts must be a list of {n} counts")
    for c in value:
        _check_int(c, "a latency count", 0)
    return list(value)
