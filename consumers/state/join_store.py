"""The delayed-label join store: events scored now, learned when their label arrives (issue 13).

An unlabelled event is scored at once; its features ``x``, the probability ``p`` predicted then and the model
version that made it are kept here under the event's id until its label arrives on the labels topic. A label
may also come first: it is kept until its event arrives. Either way the pair comes back once, as a
:class:`Joined`, for the caller to learn (``model.learn_one(j.x, j.y)``) and to judge ``j.p``, the prediction
made at scoring time (the delayed progressive log loss and accuracy). The wiring in the loop is three calls::

    for j in store.add_event(event.id, event.x, p, version=model.n_samples_seen, ts=record.timestamp, ...):
        learn(j)                        # an event whose label was already here (or expired negatives)
    for j in store.add_label(label.id, label.y, ts=record.timestamp, ...):
        learn(j)
    arrays, meta = store.to_state()     # saved in the same checkpoint as the model and both topics' offsets

Rules
-----
- **Time is the stream time**: the largest Kafka record timestamp fed so far (events and labels alike), as in
  Kafka Streams; never the wall clock, so that a replay after a crash expires exactly what the first run
  expired. ``add_event``/``add_label`` advance it with their record's timestamp, :meth:`advance` advances it
  alone (e.g. on an idle poll, with the latest timestamp seen). Timestamps ``-1`` (none) do not move it.
- **An entry is stored at** the stream time after its record was fed (``stored_at``) and **expires** once the
  stream time exceeds ``stored_at + label_ttl_ms``. ``stored_at`` never decreases in arrival order, so the
  oldest entry is always the next to expire. An expired event is counted (``expired_events``) and, with
  ``expired_policy="negative"``, returned as a :class:`Joined` with ``y=0`` and ``cause="expired"`` (an
  explicit choice, e.g. for clicks: no click within the TTL is a negative); with ``"drop"`` it is forgotten.
  An expired label had no event: an orphan (``orphan_labels``).
- **Labels come once, or more**: the first label of an id wins; every later one is counted in
  ``duplicate_labels`` and learns nothing. To recognise a duplicate that arrives after its join, the ids of
  recent joins are remembered for ``label_ttl_ms`` of stream time, at most ``max_joined`` of them (the oldest
  forgotten first, counted in ``forgotten_joins``). A duplicate that arrives after its id was forgotten is
  indistinguishable from a label that came before its event: it is stored, and expires as an orphan (it is
  learned again only if an event with the same id arrives again within the TTL). An event whose id is pending
  or was recently joined is a duplicate event (``duplicate_events``): the first one is kept.
- **Bounded**: at most ``max_pending`` entries (events + labels) and ``max_bytes`` of estimated memory. When a
  new entry does not fit, the oldest entries are evicted first and counted in ``dropped_full_events`` /
  ``dropped_full_labels``. An evicted event follows the expired policy (``"negative"``: returned with ``y=0``
  and ``cause="evicted"``), so the policy decides the fate of every event that never got its label. An entry
  larger than ``max_bytes`` on its own is dropped at once the same way.
- **An event keeps its features** ``x`` as given (the dict itself, not a copy: the caller must not change
  it afterwards), so that its join learns it without decoding it again, beside the bytes it is
  checkpointed as: its record value when the caller gives it (``record_value``, with ``event_fields``: no
  re-encoding, the learner's path), else the features serialized as JSON (which also checks them).
- **The memory estimate** of an entry is ``ENTRY_BYTES`` + the UTF-8-length of its id, and for an event +
  the length of those bytes + ``FEATURE_BYTES`` per feature (the dict's slot and the key and value objects
  beyond their text). It depends on the content only, so a store rebuilt from its state has exactly the
  same estimate and evicts exactly the same entries (unless it is rebuilt with other ``event_fields``: its
  record values are then converted to features JSON). Both constants are calibrated with tracemalloc
  (``bench/bench_join_store.py``, ``tests/test_join_store.py``): for 20 float features decoded by the
  codec, about 1890 bytes held per pending event (id, record value and dict) against 3255 estimated; with
  unique keys (no key object shared between events) about 3245 against 3345, the case the constant covers;
  a pending label about 350 against 413. After a :meth:`~JoinStore.to_state` about 30 bytes more per event
  and 50 per label (below): the estimate covers them.
- **A checkpoint costs what changed**: :meth:`~JoinStore.to_state` keeps a packed copy of what it wrote
  (its int columns narrowed: each as its smallest value and the differences to it in the smallest unsigned
  dtype), and each entry it packed holds its row number there instead of its bytes, so that an event's
  record value or features JSON is held once. The next call writes that copy's rows still present (those
  of the entries removed since are masked out), then the entries added since: Python work for the entries
  added and removed in between only, bulk copies of the rest; and the result is the new copy, a single
  segment with no removed rows. Between two calls, the packed rows of the entries removed since are still
  held: at most the size of the last copy (for events of 20 float features about 500 bytes per event,
  against about 3300 estimated); the next call lets them go. The joined ids are kept packed likewise
  (they leave oldest first). ``to_state``'s output is the same, bit for bit, whenever it was called before.
- **Features** are dicts whose keys and values are ``str``, ``int`` (64 bits), finite ``float`` or ``bool``
  (the codec produces ``str``/``int`` keys): they round-trip exactly, key and value types included (``1``,
  ``1.0`` and ``"1"`` stay distinct). Anything else (NaN, ``None``, nested values, ints beyond 64 bits,
  unencodable strings) is refused with a ``ValueError`` when the event is stored, never later when it is
  checkpointed.

Exactly once
------------
The store is part of the model's state: ``to_state()`` is saved in the same checkpoint as the model and the
next offsets of BOTH topics (events and labels), and the offsets are committed only after it (design.md).
After a crash, the model, the store and both positions are restored together and every record after them is
fed again. The store's effect of a record depends only on the store's state and the record (stream time is
part of the state; no wall clock, no randomness; ``to_state`` is bitwise deterministic), so:

- every event is learned at most once: a join removes the event and its label from the store in the same
  step in which the model learns it, and both are in the next checkpoint together, or neither is;
- every event whose label arrives within the TTL and that is not evicted is learned exactly once, whatever
  the order in which the two topics' records are fed (a label before its event waits for it, an event waits
  for its label);
- which records are fed is deterministic per topic-partition (offset order), but the interleaving of the two
  topics is not: a poll after a restart may return them in other batches. Interleaving changes the stream
  time at which each record is seen, hence which joins fall inside the TTL and what a full store evicts. The
  loop must therefore feed the records of each partition in offset order; the guarantee is then: with TTL
  and bounds never reached, the same set of joins as any other run, and, fed in the same interleaving (e.g.
  one partition per topic, replayed in the order recorded), the same joins in the same order, bit for bit.

>>> store = JoinStore(max_pending=1000, label_ttl_ms=60_000)
>>> store.add_event("a1", {"age": 42, "city": "Paris"}, 0.8, version=10, ts=1_000)
[]
>>> [j] = store.add_label("a1", 1, ts=4_000)
>>> j.x, j.y, j.p, j.version, j.latency_ms, j.cause
({'age': 42, 'city': 'Paris'}, 1, 0.8, 10, 3000, 'label')
>>> store.add_label("a1", 1, ts=5_000)          # a duplicate: learned once
[]
>>> store.counters["joined"], store.counters["duplicate_labels"]
(1, 1)
>>> store.add_label("b2", 0, ts=6_000)          # a label before its event
[]
>>> store.add_event("b2", {"age": 7}, 0.3, version=11, ts=5_500)[0].y
0
>>> restored = JoinStore.from_state(*store.to_state())
>>> restored.counters == store.counters
True

"""

from __future__ import annotations

import bisect
import math
from collections import OrderedDict
from collections.abc import Mapping
from itertools import chain, islice
from typing import Any, NamedTuple

import numpy as np
import orjson

from stream_logreg.codec import Event, JsonCodec

__all__ = ["DEFAULT_LATENCY_BUCKETS_MS", "ENTRY_BYTES", "FEATURE_BYTES", "Joined", "JoinStore", "Taken"]

FORMAT = 2  # 2: the ``form`` column and ``event_fields`` (1, features JSON only, still loads)
# Measured in bench/bench_join_store.py: per pending event, what the entry costs beyond its id and its
# features' JSON bytes (the entry tuple, the bytes object's header, the ordered dict's slot and link, p).
ENTRY_BYTES = 400
# Per feature of a pending event, beyond its text: the decoded dict's slot and the value object (kept so that
# a join never decodes the event again). Calibrated beside ENTRY_BYTES.
FEATURE_BYTES = 120
DEFAULT_LATENCY_BUCKETS_MS = (
    0,
    10,
    100,
    1_000,
    10_000,
    60_000,
    600_000,
    3_600_000,
    86_400_000,
    7 * 86_400_000,
)
POLICIES = ("drop", "negative")
COUNTERS = (
    "joined",
    "duplicate_labels",
    "duplicate_events",
    "orphan_labels",
    "expired_events",
    "dropped_full_events",
    "dropped_full_labels",
    "forgotten_joins",
    "duplicate_handoffs",
)
_MAX_TS = 2**63
_DUMPS_OPTIONS = (
    orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_SUBCLASS | orjson.OPT_PASSTHROUGH_DATACLASS
)
_EVENT, _LABEL = 0, 1
_FEATURES, _RECORD = 0, 1  # how an event's features are kept (the ``form`` column)
#: The generous codec bounds a stored record value is decoded with (it passed the learner's own bounds).
_CODEC_BOUNDS = {"max_features": 2**31, "max_bytes": 2**62}
_OBJECT = ord("{")
_NEVER = _MAX_TS  # beyond any stream time
_new = tuple.__new__  # builds a named tuple without its Python-level __new__


class Joined(NamedTuple):
    """What the caller must learn now: ``x`` with label ``y``, exactly once.

    ``p`` is the probability predicted when the event was scored, by the model at ``version`` (its
    ``n_samples_seen``): judge it against ``y`` for the delayed metrics. ``cause`` is ``"label"`` (the
    label arrived), ``"expired"`` or ``"evicted"`` (no label; learned as ``y=0`` under
    ``expired_policy="negative"``). ``latency_ms`` is the label's record timestamp minus the event's
    (``None`` without a label or a timestamp; negative if the label's timestamp is earlier).
    ``topic``/``partition``/``offset`` locate the event's record.
    """

    id: str
    x: dict
    y: int
    p: float
    version: int
    latency_ms: int | None
    cause: str
    topic: str
    partition: int
    offset: int


class Taken(NamedTuple):
    """An entry removed by :meth:`JoinStore.take`: an event (``x``, ``y=None``, its ``p`` and ``version``;
    ``value``: its record value when that is what was kept, else ``None``) or a label (``x=None``, ``y``),
    with its record's timestamp and origin."""

    id: str
    x: dict | None
    y: int | None
    ts: int
    topic: str
    partition: int
    offset: int
    value: bytes | None
    p: float | None
    version: int | None


class _Event(NamedTuple):
    x: dict  # the features, as given (kept: a join never decodes them again)
    # form _FEATURES: the features as JSON; form _RECORD: the event's record value. Once packed by
    # to_state(), the int that finds its row there instead (the bytes are kept once, in the packed copy).
    blob: bytes | int
    p: float
    version: int
    ts: int
    stored_at: int
    topic: str
    partition: int
    offset: int
    nbytes: int
    form: int


class _Label(NamedTuple):
    y: int
    ts: int
    stored_at: int
    topic: str
    partition: int
    offset: int
    nbytes: int
    row: int | None  # None until packed by to_state(), then the int that finds its row there


def _check_int(value: Any, what: str, low: int, high: int = _MAX_TS) -> int:
    if type(value) is not int or not low <= value < high:
        raise ValueError(f"{what} must be an integer in [{low}, {high}), got {value!r:.60}")
    return value


def _check_origin(topic: Any, partition: Any, offset: Any) -> None:
    if type(topic) is not str:
        raise ValueError(f"topic must be a string, got {topic!r:.60}")
    _check_int(partition, "partition", -1)
    _check_int(offset, "offset", -1)


def _check_scalar(v: Any, what: str) -> None:
    tv = type(v)
    if tv is float:
        if not math.isfinite(v):
            raise ValueError(f"{what} is not finite: {v!r}")
    elif tv is int:
        if not -(2**63) <= v < 2**64:
            raise ValueError(f"{what} is an integer beyond 64 bits")
    elif tv is not str and tv is not bool:
        raise ValueError(f"{what} is a {tv.__name__}; expected a float, int, bool or str")


def _check_pairs(pairs: Any) -> None:
    """The exact rule for stored features, keys and values alike: a ``float`` (finite), ``int`` (64 bits),
    ``bool`` or ``str`` -- the scalars that JSON round-trips with their type. (The slow path, taken when the
    JSON check of :func:`_proven` could not prove it.)"""
    if type(pairs) is not list:
        raise ValueError("features must be a dict")
    for pair in pairs:
        if type(pair) not in (list, tuple) or len(pair) != 2:
            raise ValueError("features must be a dict")
        k, v = pair
        _check_scalar(k, f"feature key {k!r:.60}")
        _check_scalar(v, f"the value of feature {k!r:.60}")


def _proven(blob: bytes, n: int) -> bool:
    """True when ``blob``, the JSON of ``n`` features, holds flat scalars only, none null: an object with no
    other ``{`` and no ``[``, or an array of ``n`` pairs with no ``{``. A string that contains those
    characters only sends the features to the slow check."""
    if b"null" in blob:
        return False
    if blob[0] == _OBJECT:
        return b"[" not in blob and blob.count(b"{") == 1
    return b"{" not in blob and blob.count(b"[") == n + 1


def _encode_features(x: dict) -> bytes:
    """The features as compact JSON bytes: an object when every key is a ``str`` (orjson refuses other keys
    without an option), else an array of ``[key, value]`` pairs, which keeps the keys' types."""
    if type(x) is not dict:
        raise ValueError(f"features must be a dict, got {type(x).__name__}")
    try:
        blob = orjson.dumps(x, option=_DUMPS_OPTIONS)
    except TypeError:
        try:
            blob = orjson.dumps(list(x.items()), option=_DUMPS_OPTIONS)
        except TypeError as exc:  # orjson.JSONEncodeError: ints beyond 64 bits, surrogates, other types
            _check_pairs(list(x.items()))
            raise ValueError(f"features cannot be stored: {exc}") from None
    if not _proven(blob, len(x)):
        _check_pairs(list(x.items()))
    return bytes(memoryview(blob))  # a compact copy: orjson's own buffer keeps 4 KiB allocated


def _decode_features(blob: bytes) -> dict:
    return orjson.loads(blob) if blob[0] == _OBJECT else dict(orjson.loads(blob))


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
    """The joined ids the last :meth:`JoinStore.to_state` wrote, and the counts of those forgotten and
    expired then (those that left since are the oldest ones: their difference)."""

    n: int
    at: tuple[int, np.ndarray | None]
    id_len: tuple[int, np.ndarray | None]
    ids: np.ndarray
    id_bytes: int
    forgotten: int
    expired: int


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


class JoinStore:
    """Scored events waiting for their labels, and labels waiting for their events, keyed by id.

    Parameters
    ----------
    max_pending
        The most entries held (pending events + pending labels); the oldest are evicted first.
    max_bytes
        The most estimated memory held by the entries (see the module docstring); the oldest are evicted
        first.
    label_ttl_ms
        How long, in stream time, an entry waits for its other half before it expires.
    expired_policy
        ``"drop"``: an event without a label is forgotten. ``"negative"``: it is returned to be learned as
        ``y=0`` (when it expires or is evicted).
    max_joined
        How many ids of recent joins are remembered to recognise late duplicate labels (default
        ``max_pending``).
    latency_buckets_ms
        Upper bounds of the join-latency histogram (increasing); :attr:`latency_counts` has one more count,
        for latencies above the last bound.
    event_fields
        ``(x_field, y_field, id_field)`` of the events' JSON records
        (:class:`~stream_logreg.codec.JsonCodec`'s): with them, :meth:`add_event` may be given the event's
        ``record_value`` and keeps those bytes as they are instead of re-encoding ``x`` (the fast path of
        the learner); ``x`` is decoded from them again when the event joins.

    Examples
    --------
    >>> store = JoinStore(max_pending=2, label_ttl_ms=100, expired_policy="negative")
    >>> store.add_event("e1", {"f": 1.0}, 0.6, version=0, ts=0)
    []
    >>> [j] = store.advance(101)                 # no label within 100 ms of stream time
    >>> j.id, j.y, j.cause
    ('e1', 0, 'expired')
    >>> store.add_label("nobody", 1, ts=150)
    []
    >>> store.advance(300), store.counters["orphan_labels"]
    ([], 1)
    """

    def __init__(
        self,
        max_pending: int = 100_000,
        max_bytes: int = 256 * 2**20,
        label_ttl_ms: int = 3_600_000,
        expired_policy: str = "drop",
        max_joined: int | None = None,
        latency_buckets_ms: tuple[int, ...] = DEFAULT_LATENCY_BUCKETS_MS,
        event_fields: tuple[str, str, str] | None = None,
    ) -> None:
        self.max_pending = _check_int(max_pending, "max_pending", 1)
        self.max_bytes = _check_int(max_bytes, "max_bytes", 1)
        self.label_ttl_ms = _check_int(label_ttl_ms, "label_ttl_ms", 0)
        if expired_policy not in POLICIES:
            raise ValueError(f"expired_policy must be one of {POLICIES}, got {expired_policy!r}")
        self.expired_policy = expired_policy
        self.max_joined = max_pending if max_joined is None else _check_int(max_joined, "max_joined", 0)
        buckets = tuple(latency_buckets_ms)
        for b in buckets:
            _check_int(b, "a latency bucket", -_MAX_TS)
        if not buckets or any(a >= b for a, b in zip(buckets, buckets[1:], strict=False)):
            raise ValueError(f"latency_buckets_ms must be increasing and not empty, got {buckets!r}")
        self.latency_buckets_ms = buckets
        self.latency_counts = [0] * (len(buckets) + 1)
        self.stream_time = -1
        self.n_bytes = 0
        self.pending_events = 0
        self._entries: OrderedDict[str, _Event | _Label] = OrderedDict()
        self._joined: OrderedDict[str, int] = OrderedDict()  # id -> stream time of the join
        self._negative = expired_policy == "negative"
        self._counts = dict.fromkeys(COUNTERS, 0)
        self._next_expiry = _NEVER
        # The packed copy of what the last to_state() wrote (see to_state): its rows, the numbers of the
        # packed entries removed since, the number the next packed entry gets; the joined ids likewise,
        # with the count of those forgotten and expired when it was made.
        self._packed: _Packed | None = None
        self._gone: list[int] = []
        self._next_row = 0
        self._packed_joined: _PackedJoined | None = None
        self._joined_expired = 0
        self.event_fields: tuple[str, str, str] | None = None
        self._decode_record: Any = None
        if event_fields is not None:
            self._set_event_fields(tuple(event_fields))

    def _set_event_fields(self, fields: tuple) -> None:
        self._decode_record = JsonCodec(*fields, **_CODEC_BOUNDS).decoder()  # ValueError for bad fields
        self.event_fields = fields

    # Counters

    @property
    def pending_labels(self) -> int:
        return len(self._entries) - self.pending_events

    @property
    def counters(self) -> dict[str, int]:
        """Every count, for metrics: pending events and labels, and the totals since the store began."""
        return {"pending_events": self.pending_events, "pending_labels": self.pending_labels, **self._counts}

    def __len__(self) -> int:
        return len(self._entries)

    def has_label(self, id: str) -> bool:
        """True when a label of ``id`` waits for its event (an event of that id would join now)."""
        return self._entries.get(id).__class__ is _Label

    def join_waiting(self, id: str, p: float, version: int, ts: int) -> int:
        """Exactly :meth:`add_event` for an event whose label waits and that moves the stream time past no
        expiry (the labels loop's common case when labels come first): the label ``y`` of the join, which
        the caller learns with the event's features now (``p``, its prediction, is what the delayed metrics
        judge); the join is counted as any. Returns -1, having done nothing, in every other case (then
        :meth:`add_event` decides)."""
        entry = self._entries.get(id)
        if (entry.__class__ is not _Label or p.__class__ is not float or not 0.0 <= p <= 1.0
                or version.__class__ is not int or not 0 <= version < _MAX_TS
                or ts.__class__ is not int or not -1 <= ts < _MAX_TS):
            return -1
        if ts > self.stream_time:
            if ts > self._next_expiry:
                return -1
            self.stream_time = ts
        del self._entries[id]
        self.n_bytes -= entry.nbytes
        if entry[7] is not None:
            self._gone.append(entry[7])
        counts = self._counts  # _count_join, inline
        counts["joined"] += 1
        if ts >= 0 and entry.ts >= 0:
            self.latency_counts[bisect.bisect_left(self.latency_buckets_ms, entry.ts - ts)] += 1
        if self.max_joined:
            joined = self._joined
            if len(joined) >= self.max_joined:
                joined.popitem(last=False)
                counts["forgotten_joins"] += 1
            joined[id] = self.stream_time
        return entry.y

    # Feeding

    def add_event(
        self,
        id: str,
        x: dict,
        p: float,
        *,
        version: int,
        ts: int,
        topic: str = "",
        partition: int = 0,
        offset: int = -1,
        record_value: bytes | None = None,
        handed_off: bool = False,
    ) -> list[Joined]:
        """Feed a scored, unlabelled event: what to learn now (its join if its label was waiting, and any
        entries that expired or were evicted as negatives), else ``[]`` (the event is stored).

        ``record_value``, with ``event_fields``: the record value ``x`` was decoded from (by a
        :class:`~stream_logreg.codec.JsonCodec` with those fields), kept instead of ``x`` re-encoded. It is
        the caller's promise that the codec decodes it to ``x``; a restored state is checked.
        ``handed_off``: the event comes from a hand-off (another member's store): if this store holds it
        or has joined it already, it is counted in ``duplicate_handoffs`` (not ``duplicate_events``)."""
        if type(id) is not str:
            raise ValueError(f"an event needs a string id to be joined, got {id!r:.60}")
        if not isinstance(p, float) or not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be a probability (a float in [0, 1]), got {p!r:.60}")
        p = float(p)
        if type(version) is not int or not 0 <= version < _MAX_TS:
            _check_int(version, "version", 0)
        out = self._tick(ts)
        entries = self._entries
        entry = entries.get(id)
        if entry is not None:
            if type(entry) is _Label:
                del entries[id]
                self.n_bytes -= entry.nbytes
                if entry[7] is not None:
                    self._gone.append(entry[7])
                out.append(self._join(id, x, entry.y, p, version, ts, entry.ts, topic, partition, offset))
            else:
                self._counts["duplicate_handoffs" if handed_off else "duplicate_events"] += 1
        elif id in self._joined:
            self._counts["duplicate_handoffs" if handed_off else "duplicate_events"] += 1
        else:
            if type(topic) is not str or type(partition) is not int or type(offset) is not int:
                _check_origin(topic, partition, offset)
            elif not (-1 <= partition < _MAX_TS and -1 <= offset < _MAX_TS):
                _check_origin(topic, partition, offset)
            if record_value is not None and self._decode_record is not None:
                blob, form = record_value if type(record_value) is bytes else bytes(record_value), _RECORD
            else:
                blob, form = _encode_features(x), _FEATURES
            nbytes = ENTRY_BYTES + len(id) + len(blob) + FEATURE_BYTES * len(x)
            event = _new(_Event, (x, blob, p, version, ts, self.stream_time, topic, partition, offset, nbytes,
                                  form))
            if len(entries) < self.max_pending and self.n_bytes + nbytes <= self.max_bytes and entries:
                entries[id] = event
                self.n_bytes += nbytes
                self.pending_events += 1
            else:
                self._store(id, event, out)
        return out

    def add_events(self, events: list[tuple]) -> list[tuple[int, Joined]]:
        """Feed consecutive scored events ``(id, x, p, version, ts, topic, partition, offset, record_value)``,
        exactly as :meth:`add_event` would one by one: ``(i, joined)`` for each event to learn now, ``i``
        the index of the event that brought it. The events loop's path: one call per polled batch, the
        common case (a new id that fits, kept as its record value) inline.

        >>> store = JoinStore(label_ttl_ms=60_000)
        >>> store.add_label("b", 1, ts=5)
        []
        >>> events = [("a", {"f": 1.0}, 0.25, 0, 10, "ev", 0, 0, None),
        ...           ("b", {"f": 2.0}, 0.5, 0, 20, "ev", 0, 1, None)]
        >>> [(i, j.id, j.y, j.p) for i, j in store.add_events(events)], store.counters["pending_events"]
        ([(1, 'b', 1, 0.5)], 1)
        """
        out: list[tuple[int, Joined]] = []
        entries = self._entries
        joined_ids = self._joined
        records = self._decode_record is not None
        max_pending, max_bytes = self.max_pending, self.max_bytes
        for i, (id, x, p, version, ts, topic, partition, offset, value) in enumerate(events):
            if (records and value.__class__ is bytes and id.__class__ is str and p.__class__ is float
                    and 0.0 <= p <= 1.0 and version.__class__ is int and 0 <= version < _MAX_TS
                    and ts.__class__ is int and -1 <= ts < _MAX_TS and x.__class__ is dict
                    and topic.__class__ is str and partition.__class__ is int and offset.__class__ is int
                    and -1 <= partition < _MAX_TS and -1 <= offset < _MAX_TS):
                if ts > self.stream_time:  # _tick, inline
                    self.stream_time = ts
                    if ts > self._next_expiry:
                        out.extend([(i, j) for j in self._expire(ts)])
                if id not in entries and id not in joined_ids and entries:
                    nbytes = ENTRY_BYTES + len(id) + len(value) + FEATURE_BYTES * len(x)
                    if len(entries) < max_pending and self.n_bytes + nbytes <= max_bytes:  # new, and it fits
                        entries[id] = _new(_Event, (x, value, p, version, ts, self.stream_time, topic,
                                                    partition, offset, nbytes, _RECORD))
                        self.n_bytes += nbytes
                        self.pending_events += 1
                        continue
            # a join, a duplicate, one that does not fit, features to encode, or a bad one: the general path
            out.extend([(i, j) for j in self.add_event(id, x, p, version=version, ts=ts, topic=topic,
                                                       partition=partition, offset=offset,
                                                       record_value=value)])
        return out

    def add_label(
        self, id: str, y: int, *, ts: int, topic: str = "", partition: int = 0, offset: int = -1,
        handed_off: bool = False,
    ) -> list[Joined]:
        """Feed a label: what to learn now (its event's join if the event was waiting, and any entries that
        expired or were evicted as negatives), else ``[]`` (stored, or a duplicate: ``duplicate_handoffs``
        for a label ``handed_off`` by another member's store)."""
        if type(id) is not str:
            raise ValueError(f"a label needs a string id, got {id!r:.60}")
        if y is not True and y is not False and (type(y) is not int or y not in (0, 1)):
            raise ValueError(f"a label must be 0 or 1, got {y!r:.60}")
        y = int(y)
        out = self._tick(ts)
        entries = self._entries
        entry = entries.get(id)
        if entry is not None:
            if type(entry) is _Event:
                del entries[id]
                self.n_bytes -= entry.nbytes
                self.pending_events -= 1
                if entry[1].__class__ is int:
                    self._gone.append(entry[1])
                e = entry
                out.append(self._join(id, e.x, y, e.p, e.version, e.ts, ts, e.topic, e.partition, e.offset))
            else:
                self._counts["duplicate_handoffs" if handed_off else "duplicate_labels"] += 1
        elif id in self._joined:
            self._counts["duplicate_handoffs" if handed_off else "duplicate_labels"] += 1
        else:
            _check_origin(topic, partition, offset)
            label = _new(_Label, (y, ts, self.stream_time, topic, partition, offset, ENTRY_BYTES + len(id),
                                  None))
            self._store(id, label, out)
        return out

    def add_labels(self, labels: list[tuple]) -> list[tuple[int, Joined]]:
        """Feed consecutive labels ``(id, y, ts, topic, partition, offset)``, as :meth:`add_label` would one
        by one: ``(i, joined)`` for each event to learn now, ``i`` the index of the label that brought it (its
        join, or entries that expired or were evicted as negatives when it moved the stream time). The
        labels loop's path: one call per polled batch, the common join inline.

        >>> store = JoinStore(label_ttl_ms=60_000)
        >>> store.add_event("a", {"f": 1.0}, 0.25, version=0, ts=10)
        []
        >>> labels = [("z", 0, 20, "labels", 0, 0), ("a", 1, 30, "labels", 0, 1)]
        >>> [(i, j.id, j.y, j.p) for i, j in store.add_labels(labels)]
        [(1, 'a', 1, 0.25)]
        """
        out: list[tuple[int, Joined]] = []
        entries = self._entries
        joined_ids = self._joined
        counts = self._counts
        latency_counts, buckets = self.latency_counts, self.latency_buckets_ms
        max_joined = self.max_joined
        gone = self._gone
        for i, (id, y, ts, topic, partition, offset) in enumerate(labels):
            checked = (id.__class__ is str and y.__class__ is int and (y == 0 or y == 1)
                       and ts.__class__ is int and -1 <= ts < _MAX_TS)
            if checked:
                if ts > self.stream_time:  # _tick, inline
                    self.stream_time = ts
                    if ts > self._next_expiry:
                        out.extend([(i, j) for j in self._expire(ts)])
                entry = entries.get(id)
            else:
                entry = None
            if entry.__class__ is not _Event:
                if (checked and entry is None and id not in joined_ids and entries
                        and len(entries) < self.max_pending and topic.__class__ is str
                        and partition.__class__ is int and offset.__class__ is int
                        and -1 <= partition < _MAX_TS and -1 <= offset < _MAX_TS):  # a label first, that fits
                    nbytes = ENTRY_BYTES + len(id)
                    if self.n_bytes + nbytes <= self.max_bytes:
                        label = (y, ts, self.stream_time, topic, partition, offset, nbytes, None)
                        entries[id] = _new(_Label, label)
                        self.n_bytes += nbytes
                        continue
                # a label that does not fit, a duplicate, or a bad one: the general path
                out.extend([(i, j) for j in self.add_label(id, y, ts=ts, topic=topic, partition=partition,
                                                           offset=offset)])
                continue
            # The common case, _join inline: its event waits.
            del entries[id]
            self.n_bytes -= entry.nbytes
            self.pending_events -= 1
            if entry[1].__class__ is int:
                gone.append(entry[1])
            counts["joined"] += 1
            event_ts = entry.ts
            latency = None
            if event_ts >= 0 and ts >= 0:
                latency = ts - event_ts
                latency_counts[bisect.bisect_left(buckets, latency)] += 1
            if max_joined:
                if len(joined_ids) >= max_joined:
                    joined_ids.popitem(last=False)
                    counts["forgotten_joins"] += 1
                joined_ids[id] = self.stream_time
            out.append((i, _new(Joined, (id, entry.x, y, entry.p, entry.version, latency, "label",
                                         entry.topic, entry.partition, entry.offset))))
        return out

    def advance(self, ts: int) -> list[Joined]:
        """Move the stream time to ``ts`` if it is later, and expire what waited longer than the TTL: returns
        the expired events to learn as negatives (``expired_policy="negative"``), else ``[]``."""
        return self._tick(ts)

    def take(self, partitions: set[tuple[str, int]]) -> list[Taken]:
        """Remove the entries whose record came from one of ``partitions`` (``(topic, partition)``) and
        return them, oldest first, as :class:`Taken` (e.g. to hand them to the partitions' next owner).
        Nothing is counted: they did not leave by a join, an expiry or an eviction."""
        entries = self._entries
        taken = [(id, e) for id, e in entries.items() if (e.topic, e.partition) in partitions]
        packed = self._packed_values([e.blob for _, e in taken if e.__class__ is _Event and e.form == _RECORD
                                      and e.blob.__class__ is int])
        out = []
        for id, e in taken:
            del entries[id]
            self.n_bytes -= e.nbytes
            row = e[1] if e.__class__ is _Event else e[7]
            if row.__class__ is int:
                self._gone.append(row)
            if type(e) is _Event:
                self.pending_events -= 1
                value = (packed[row] if row.__class__ is int else row) if e.form == _RECORD else None
                out.append(Taken(id, e.x, None, e.ts, e.topic, e.partition, e.offset, value,
                                 e.p, e.version))
            else:
                out.append(Taken(id, None, e.y, e.ts, e.topic, e.partition, e.offset, None, None, None))
        self._update_next_expiry()
        return out

    def _packed_values(self, rows: list[int]) -> dict[int, bytes]:
        """The bytes the packed copy keeps for the entries that hold these row numbers."""
        if not rows:
            return {}
        old = self._packed
        at = np.searchsorted(_widen(old.rows, None, old.n), np.array(rows, dtype=np.int64))
        lens = _widen(old.cols["x_len"], None, old.n)
        ends = np.cumsum(lens)
        x = old.x
        return {r: x[e - n:e].tobytes()
                for r, e, n in zip(rows, ends[at].tolist(), lens[at].tolist(), strict=True)}

    def origins(self) -> set[tuple[str, int]]:
        """The ``(topic, partition)`` of every entry's record."""
        return {(e.topic, e.partition) for e in self._entries.values()}

    # Internals
    #
    # _next_expiry is at most the stream time after which the oldest entry or the oldest remembered join
    # expires (stored_at + ttl; they are the first of their ordered dicts): _expire runs only when the stream
    # time passes it. Removing an entry by a join may leave it too early, which only costs a call. A join
    # needs a pending entry, stored at or before the join's stream time: _next_expiry covers the join's id.

    def _tick(self, ts: int) -> list[Joined]:
        """Check a record's timestamp, move the stream time to it if later, expire what is due."""
        if type(ts) is not int or not -1 <= ts < _MAX_TS:
            _check_int(ts, "the record timestamp", -1)
        if ts <= self.stream_time:
            return []
        self.stream_time = ts
        return self._expire(ts) if ts > self._next_expiry else []

    def _expire(self, ts: int) -> list[Joined]:
        out: list[Joined] = []
        horizon = ts - self.label_ttl_ms  # entries stored before it have expired
        entries = self._entries
        while entries:
            entry = entries[next(iter(entries))]
            if entry.stored_at >= horizon:
                break
            self._drop_oldest(out, "expired_events", "orphan_labels", "expired")
        joined = self._joined
        while joined and joined[next(iter(joined))] < horizon:
            joined.popitem(last=False)
            self._joined_expired += 1
        self._update_next_expiry()
        return out

    def _update_next_expiry(self) -> None:
        entries, joined = self._entries, self._joined
        first = entries[next(iter(entries))].stored_at if entries else _NEVER
        if joined:
            first = min(first, joined[next(iter(joined))])
        self._next_expiry = first + self.label_ttl_ms

    def _join(
        self,
        id: str,
        x: dict,
        y: int,
        p: float,
        version: int,
        event_ts: int,
        label_ts: int,
        topic: str,
        partition: int,
        offset: int,
    ) -> Joined:
        latency = self._count_join(id, event_ts, label_ts)
        return _new(Joined, (id, x, y, p, version, latency, "label", topic, partition, offset))

    def _count_join(self, id: str, event_ts: int, label_ts: int) -> int | None:
        """Count a join (its latency in the histogram, its id remembered against late duplicates); the
        latency, or None without both timestamps."""
        counts = self._counts
        counts["joined"] += 1
        latency = None
        if event_ts >= 0 and label_ts >= 0:
            latency = label_ts - event_ts
            self.latency_counts[bisect.bisect_left(self.latency_buckets_ms, latency)] += 1
        joined = self._joined
        if self.max_joined:
            if len(joined) >= self.max_joined:
                joined.popitem(last=False)
                counts["forgotten_joins"] += 1
            joined[id] = self.stream_time
        return latency

    def _drop_oldest(self, out: list[Joined], event_counter: str, label_counter: str, cause: str) -> None:
        id, entry = self._entries.popitem(last=False)
        self.n_bytes -= entry.nbytes
        row = entry[1] if entry.__class__ is _Event else entry[7]
        if row.__class__ is int:
            self._gone.append(row)
        self.pending_events -= type(entry) is _Event
        self._discard(id, entry, out, event_counter, label_counter, cause)

    def _discard(
        self,
        id: str,
        entry: _Event | _Label,
        out: list[Joined],
        event_counter: str,
        label_counter: str,
        cause: str,
    ) -> None:
        """Count an entry that leaves without its other half; an event becomes a negative by that policy."""
        if type(entry) is _Label:
            self._counts[label_counter] += 1
            return
        self._counts[event_counter] += 1
        if self._negative:
            e = entry
            out.append(Joined(id, e.x, 0, e.p, e.version, None, cause, e.topic, e.partition, e.offset))

    def _store(self, id: str, entry: _Event | _Label, out: list[Joined]) -> None:
        """Store an entry, evicting the oldest while it does not fit (the slow path of a store)."""
        if entry.nbytes > self.max_bytes:  # can never fit: dropped as if evicted at once
            self._discard(id, entry, out, "dropped_full_events", "dropped_full_labels", "evicted")
            return
        entries = self._entries
        while entries and (len(entries) >= self.max_pending or self.n_bytes + entry.nbytes > self.max_bytes):
            self._drop_oldest(out, "dropped_full_events", "dropped_full_labels", "evicted")
        entries[id] = entry
        self.n_bytes += entry.nbytes
        self.pending_events += type(entry) is _Event
        self._update_next_expiry()

    # State

    def params(self) -> dict:
        """The settings, as JSON."""
        return {
            "max_pending": self.max_pending,
            "max_bytes": self.max_bytes,
            "label_ttl_ms": self.label_ttl_ms,
            "expired_policy": self.expired_policy,
            "max_joined": self.max_joined,
            "latency_buckets_ms": list(self.latency_buckets_ms),
        }

    def to_state(self) -> tuple[dict[str, np.ndarray], dict]:
        """Everything the store holds, as int64/float64 arrays and a JSON-able dict (no pickle).

        Bitwise deterministic: the same operations give the same arrays and the same dict, whenever
        ``to_state`` was called before. ``JoinStore.from_state(*store.to_state())`` behaves exactly as
        ``store`` from then on.

        What it costs: Python work for the entries added and removed since the previous call only, and
        bulk copies (memcpy speed) of the rest. The store keeps a packed copy of what the previous call
        wrote, narrowed (each int column as its smallest value and the differences to it in the smallest
        unsigned dtype), and the entries it covers hold their row number there instead of their bytes: an
        event's record value or features JSON is kept once. Each call writes the rows of that copy still
        present (a mask of those removed), then the entries added since, and makes the result the new
        copy: one segment, with no removed rows in it, whatever happened before. The joined ids likewise
        (they only ever leave oldest first).
        """
        entries = self._entries
        old = self._packed
        kept = keep = None  # the rows of the packed copy still present: how many, which (None: all)
        if old is not None:
            kept = old.n
            rows = _widen(old.rows, None, old.n)
            if self._gone:
                gone = np.array(self._gone, dtype=np.int64)
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
        joined_state, packed_joined = self._joined_state()
        arrays.update(joined_state)
        topics = list(code)
        meta = {
            "format": FORMAT,
            "params": self.params(),
            "stream_time": self.stream_time,
            "counters": dict(self._counts),
            "latency_counts": list(self.latency_counts),
            "topics": topics,
            "id_bytes": id_bytes,
            "x_bytes": x_bytes,
            "joined_id_bytes": packed_joined.id_bytes,
            "event_fields": None if self.event_fields is None else list(self.event_fields),
        }
        # The new packed copy (over the old one's memory when it fits), then the new entries point into it.
        keep = None
        self._packed = None
        first = self._next_row
        rows = np.arange(first, first + n_new, dtype=np.int64) if kept is None else np.concatenate(
            [rows, np.arange(first, first + n_new, dtype=np.int64)])
        self._packed = _packed(arrays, rows, topics, id_bytes, x_bytes, old)
        old = None
        self._gone = []
        self._packed_joined = packed_joined
        entries.update(zip(new_ids, [_new(_Event, (e[0], s, *e[2:])) if e.__class__ is _Event
                                     else _new(_Label, (*e[:7], s)) for s, e in enumerate(vals, first)],
                           strict=True))
        self._next_row = first + n_new
        return arrays, meta

    def _joined_state(self) -> tuple[dict[str, np.ndarray], _PackedJoined]:
        """The joined ids' arrays, from those of the previous call (the oldest ones forgotten or expired
        since left off) and the ids joined since; and their new packed copy."""
        joined = self._joined
        pj = self._packed_joined
        forgotten, expired = self._counts["forgotten_joins"], self._joined_expired
        start = n_old = 0
        if pj is not None:
            n_old = pj.n
            start = min(n_old, forgotten - pj.forgotten + expired - pj.expired)
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
                               n_bytes, forgotten, expired)
        return {"joined.at": at, "joined.id_len": lens, "joined.ids": words}, packed

    @classmethod
    def from_state(cls, arrays: Mapping[str, np.ndarray], meta: Mapping, *, event_fields: Any = "as saved"
                   ) -> JoinStore:
        """The store that :meth:`to_state` described; a ``ValueError`` naming the fault for any state it could
        not have written (missing or extra arrays, wrong dtypes or lengths, non-finite or out-of-range values,
        bounds exceeded, malformed features, record values that do not decode to their event).

        ``event_fields``: those of the events to come (default: the state's). Events kept as record values
        of other fields are converted to features JSON (their memory estimate changes with their form)."""
        fmt = getattr(meta, "get", dict().get)("format")
        if not isinstance(meta, Mapping) or fmt not in (1, FORMAT):
            raise ValueError(f"join store state: unknown format {fmt!r}")
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
        params = meta.get("params")
        if not isinstance(params, Mapping):
            raise ValueError("join store state: no params")
        store = cls(**{**params, "latency_buckets_ms": tuple(params.get("latency_buckets_ms", ()))})
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
            store.latency_counts = _counts_list(meta.get("latency_counts"), len(store.latency_counts))
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
            ("topic", ((topic >= 0) & (topic < len(topics))).all()),
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
        if saved_fields is not None:
            if type(saved_fields) is not list or len(saved_fields) != 3:
                raise ValueError("join store state: event_fields must be a list of three field names")
            try:
                store._set_event_fields(tuple(saved_fields))
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
            ev = store._decode_record(blobs[i])
            if type(ev) is not Event or ev.y is not None or ev.id != ids[i]:
                raise ValueError(f"join store state: the record kept for event {ids[i]!r:.60} is not an "
                                 "unlabelled event of that id")
            xs[i] = ev.x
            if convert:
                blobs[i], forms[i] = _encode_features(ev.x), _FEATURES
        if event_fields is None:
            store.event_fields = store._decode_record = None
        elif tuple(event_fields) != store.event_fields:
            store._set_event_fields(tuple(event_fields))
        rows = zip(
            ids,
            range(n),
            blobs,
            kind.tolist(),
            y.tolist(),
            version.tolist(),
            ts.tolist(),
            stored_at.tolist(),
            [topics[c] for c in topic.tolist()],
            partition.tolist(),
            offset.tolist(),
            p.tolist(),
            forms,
            strict=True,
        )
        entries = store._entries
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
        store.n_bytes, store.pending_events = n_bytes, n_events
        if store.n_bytes > store.max_bytes:
            raise ValueError(
                f"join store state: {store.n_bytes} bytes, more than max_bytes={store.max_bytes}"
            )
        store._joined = OrderedDict(zip(joined_ids, cols["joined.at"].tolist(), strict=True))
        store.stream_time = stream_time
        store._counts = {k: counters[k] for k in COUNTERS}
        if seed:  # the topics as saved: to_state numbers them anew
            store._packed = _packed(cols, np.arange(n, dtype=np.int64), list(topics), meta["id_bytes"],
                                    meta["x_bytes"])
            store._next_row = n
        n_joined = meta["joined_id_bytes"]
        joined_bytes = np.ascontiguousarray(cols["joined.ids"], dtype="<i8").view(np.uint8)[:n_joined].copy()
        store._packed_joined = _PackedJoined(len(joined_ids), _narrow(cols["joined.at"]),
                                             _narrow(cols["joined.id_len"]), joined_bytes, n_joined,
                                             counters["forgotten_joins"], 0)
        store._update_next_expiry()
        return store


_INT_COLUMNS = ("kind", "y", "version", "ts", "stored_at", "topic", "partition", "offset", "form")


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
