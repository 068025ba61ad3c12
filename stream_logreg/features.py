"""The feature space: how the keys of a dict row become columns of the weight vector.

Rules, the same for every entry point (dicts, data frames, arrays):

- a numeric value (int, float, numpy number) of key ``k`` is feature ``k`` with that value; it must be finite;
- a bool is 0 or 1;
- a string value ``v`` of key ``k`` is the indicator feature ``k=v`` with value 1; a string that reads as a
  number ("42", "1e3", "nan") raises a ``ValueError`` instead (an unconverted number, as River refuses it);
- a key absent from a row counts as 0; an unseen key gets a new column whose weight starts at 0;
- anything else (None, NaN, ±inf, lists, ...) raises a ``ValueError`` that names the feature, and nothing
  is added to the space.

Two ways to assign columns:

- vocabulary (default): columns in order of first appearance. With ``max_features`` set, once that many
  columns exist, new features are ignored (they count as 0, as if absent) and counted in ``n_dropped``;
  features already known keep learning.
- hashing (``n_bits=k``): the column is a stable 64-bit BLAKE2b hash of the feature name modulo 2^k, so the
  model never exceeds 2^k weights whatever the stream. Colliding features share a weight. Hash look-ups are
  cached in a dict of at most ``HASH_CACHE_SIZE`` entries, so memory stays bounded.

A model also caches, per model, the columns of the indicators of str keys and values it looks up (at most
2^19 pairs, 2^17 with hashing, in two tables of 32 bytes a slot: when the newer is half full, the older is
forgotten, so the pairs seen least recently go first; ``stream_logreg._kernel.RowLayout``), which the
compiled encoder reads before the dict and keeps up; it never changes a column. While it knows every
indicator of the vocabulary, the dict entries of the new ones wait: ``FeatureSpace.columns`` adds them (in
column order) when it is read.

:meth:`FeatureSpace.encode` is the reference, in Python; the model encodes through
:meth:`FeatureSpace.encode_into`, the same rules compiled (``stream_logreg._features``: new keys, indicators
and hashing in C), which leaves to the reference only what needs its judgement (a bad value, a string that
may read as a number, a value of another type).

>>> space = FeatureSpace()
>>> space.encode({"age": 42, "city": "Paris", "vip": True}, grow=True)
([0, 1, 2], [42.0, 1.0, 1.0])
>>> space.names
['age', 'city=Paris', 'vip']
>>> space.encode({"city": "Rome", "age": 1}, grow=False)
([0], [1.0])
>>> space.encode({"age": float("nan")}, grow=True)
Traceback (most recent call last):
...
ValueError: feature 'age' has a non-finite value nan

"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import itertools
import math
import numbers
from collections.abc import Hashable, Iterable, Iterator
from typing import Any

import numpy as np

from stream_logreg import _features
from stream_logreg._kernel import INDICATOR

__all__ = ["FeatureSpace", "HASH_CACHE_SIZE", "IndicatorKey", "IndicatorName", "encode_value", "feature_name"]

HASH_CACHE_SIZE = 1 << 16


def feature_name(key: Hashable) -> str:
    """The readable name of a column key: ``k`` for a plain key, ``k=v`` for the indicator of ``k: v``."""
    if isinstance(key, IndicatorKey):
        return f"{key.key}={key.value}"
    return str(key)


class IndicatorName(str):
    """The name ``k=v`` of the indicator of ``k: v`` as a key of the model's ``weights``: it prints and
    serializes as that string, but is not equal to a feature literally named ``"k=v"``, so both keep their
    own entry.

    >>> name = IndicatorName("a", "FR")
    >>> name, name == "a=FR", name == IndicatorName("a", "FR"), len({name: 1, "a=FR": 2})
    ('a=FR', False, True, 2)

    """

    __slots__ = ()

    def __new__(cls, key: Hashable, value: str) -> IndicatorName:
        return super().__new__(cls, f"{key}={value}")

    def __eq__(self, other: object) -> bool:
        return type(other) is IndicatorName and str.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash((IndicatorName, str(self)))

    def __repr__(self) -> str:
        return str.__repr__(self)

    def __reduce__(self) -> tuple:
        key, _, value = str(self).partition("=")
        return IndicatorName, (key, value)


class IndicatorKey(tuple):
    """The column key of the indicator feature ``k=v``: the tuple ``(INDICATOR, k, v)``, equal and hashed
    as that tuple (which the compiled encoder looks up). ``INDICATOR`` is a private marker, so the
    indicator of ``{"a": "FR"}`` never shares a column with a key ``("a", "FR")`` (River's bigrams) or
    ``"a=FR"``. ``str()`` gives its name ``k=v``.

    >>> k = IndicatorKey("a", "FR")
    >>> str(k), k.key, k.value, k == ("a", "FR")
    ('a=FR', 'a', 'FR', False)

    """

    __slots__ = ()

    def __new__(cls, key: Hashable, value: str) -> IndicatorKey:
        return super().__new__(cls, (INDICATOR, key, value))

    def __getnewargs__(self) -> tuple:
        return self[1], self[2]

    @property
    def key(self) -> Hashable:
        return self[1]

    @property
    def value(self) -> str:
        return self[2]

    def __str__(self) -> str:
        return feature_name(self)

    def __repr__(self) -> str:
        return f"IndicatorKey({self[1]!r}, {self[2]!r})"


def looks_numeric(v: str) -> bool:
    """Whether ``float(v)`` would accept the string ``v`` ("42", " -1.5e3 ", "nan", "inf", ...)."""
    head = v.lstrip()[:1]
    if not head or not (head in "0123456789+-." or head in "nNiI"):
        return False
    try:
        float(v)
    except ValueError:
        return False
    return True


def encode_value(key: Hashable, v: Any) -> tuple[Hashable, float]:
    """The column key and the numeric value of one ``key: v`` entry, or a ``ValueError`` naming it.

    A string that reads as a number ("42", "1.5e3", "nan") is refused rather than taken as a category:
    it is most often a number that was never converted (a CSV read without converters), and River
    refuses it too. Convert it, or give a category a value that is not a number (``"zip:75001"``).
    """
    if isinstance(v, str):
        if looks_numeric(v):
            raise ValueError(
                f"feature {key!r} has the string value {v!r:.40}, which reads as a number: convert it to a "
                "number, or, if it is a category, give it a value that does not (e.g. 'id:42')"
            )
        return IndicatorKey(key, v), 1.0
    if isinstance(v, (bool, np.bool_)):
        return key, 1.0 if v else 0.0
    if isinstance(v, numbers.Real):
        try:
            f = float(v)
        except OverflowError:
            raise ValueError(f"feature {key!r} has a value too large for a float: {v!r}") from None
        if not math.isfinite(f):
            raise ValueError(f"feature {key!r} has a non-finite value {f!r}")
        return key, f
    raise ValueError(
        f"feature {key!r} has a value of type {type(v).__name__} ({v!r:.40}); "
        "expected a finite number, a bool or a string"
    )


class FeatureSpace:
    """Maps feature keys to weight columns: a growing vocabulary, or hashing into 2^n_bits columns.

    Parameters
    ----------
    n_bits
        Hash every feature name into 2^n_bits columns (bounded memory). ``None`` keeps a vocabulary.
    max_features
        Vocabulary only: the most columns ever created; later new features are ignored and counted in
        ``n_dropped``.

    """

    def __init__(self, n_bits: int | None = None, max_features: int | None = None) -> None:
        if n_bits is not None and not 1 <= n_bits <= 30:
            raise ValueError(f"n_bits must be between 1 and 30, got {n_bits!r}")
        if max_features is not None and max_features < 1:
            raise ValueError(f"max_features must be a positive integer, got {max_features!r}")
        if n_bits is not None and max_features is not None:
            raise ValueError("max_features applies to the vocabulary; with n_bits the size is 2^n_bits")
        self.n_bits = n_bits
        self.max_features = max_features
        self.columns = {}
        #: vocabulary only: the key of each column, in column order.
        self.keys: list[Hashable] = []
        self.n_dropped = 0

    @property
    def columns(self) -> dict[Hashable, int]:
        """Key (or IndicatorKey) → column; with hashing, a bounded cache of recent look-ups.

        With a vocabulary, the compiled encoder may leave the entries of the indicators it creates out of
        the dict while the model's pair cache answers for all of them (see ``RowLayout``; ``_unindexed``:
        the first column whose key may be missing): they are added here, at the first read."""
        if self._unindexed is not None:
            self._index()
        return self._columns

    @columns.setter
    def columns(self, columns: dict[Hashable, int]) -> None:
        self._columns = columns
        self._unindexed: int | None = None

    def _index(self) -> None:
        """Add the entries the compiled encoder left out (the keys of the columns from ``_unindexed`` on)."""
        if self._unindexed is not None:
            _features.index_keys(self._columns, self.keys, self._unindexed)
            self._unindexed = None

    @property
    def hashing(self) -> bool:
        return self.n_bits is not None

    @property
    def n_columns(self) -> int:
        """How many columns the weight vector needs."""
        return 1 << self.n_bits if self.n_bits is not None else len(self.keys)

    @property
    def names(self) -> list[str]:
        """Vocabulary only: the feature name of each column."""
        return [feature_name(k) for k in self.keys]

    def hash_column(self, key: Hashable) -> int:
        """Hashing only: the column of a key, 8 bytes of BLAKE2b of its name modulo 2^n_bits."""
        digest = hashlib.blake2b(feature_name(key).encode("utf-8", "surrogatepass"), digest_size=8).digest()
        assert self.n_bits is not None
        return int.from_bytes(digest, "little") & ((1 << self.n_bits) - 1)

    def column(self, key: Hashable, grow: bool) -> int | None:
        """The column of ``key``; a new one if ``grow`` and there is room, else ``None`` (ignored)."""
        columns = self.columns
        col = columns.get(key)
        if col is not None:
            return col
        if self.n_bits is not None:
            if len(columns) >= HASH_CACHE_SIZE:
                columns.clear()
            col = columns[key] = self.hash_column(key)
            return col
        if not grow:
            return None
        if self.max_features is not None and len(self.keys) >= self.max_features:
            self.n_dropped += 1
            return None
        col = columns[key] = len(self.keys)
        self.keys.append(key)
        return col

    def encode(self, x: dict, grow: bool) -> tuple[list[int], list[float]]:
        """The columns and values of row ``x``; all values are checked before any column is added.

        With hashing, colliding features of the row are merged into one entry (their values summed).
        """
        if not isinstance(x, dict):
            raise ValueError(f"a row must be a dict of features, got {type(x).__name__} {x!r:.60}")
        entries = [encode_value(k, v) for k, v in x.items()]
        cols: list[int] = []
        vals: list[float] = []
        for key, value in entries:
            col = self.column(key, grow)
            if col is not None:
                cols.append(col)
                vals.append(value)
        if self.n_bits is not None and len(set(cols)) < len(cols):
            merged: dict[int, float] = {}
            for c, v in zip(cols, vals, strict=True):
                merged[c] = merged.get(c, 0.0) + v
                if not math.isfinite(merged[c]):
                    names = [k for (k, _), col in zip(entries, cols, strict=True) if col == c]
                    raise ValueError(
                        f"features {names!r:.200} share hashed column {c} and the sum of their values "
                        "is too large for a float"
                    )
            cols, vals = list(merged), list(merged.values())
        return cols, vals

    def encode_into(self, x: dict, grow: bool, cols: np.ndarray, vals: np.ndarray, start: int = 0,
                    layout: Any = None) -> int:
        """:meth:`encode` written into ``cols[start:]`` and ``vals[start:]`` (intp and float64 buffers that
        hold ``len(x)`` entries from ``start``); returns how many entries. Compiled, bitwise the reference.
        ``layout``: the model's cache of look-ups (``stream_logreg._kernel.RowLayout``), used and kept up.

        >>> space, cols, vals = FeatureSpace(), np.zeros(4, dtype=np.intp), np.zeros(4)
        >>> n = space.encode_into({"city": "Paris", "age": 42}, True, cols, vals)
        >>> cols[:n].tolist(), vals[:n].tolist(), space.names
        ([0, 1], [1.0, 42.0], ['city=Paris', 'age'])

        """
        n = _features.encode_into(self, x, grow, cols, vals, start, layout) if type(x) is dict else -1
        if n < 0:
            row_cols, row_vals = self.encode(x, grow)
            n = len(row_cols)
            cols[start : start + n] = row_cols
            vals[start : start + n] = row_vals
        return n

    def columns_of(self, keys: Iterable[Hashable], grow: bool) -> np.ndarray:
        """Columns of numeric features named ``keys`` (e.g. a data frame's columns); -1 where ignored."""
        if self.n_bits is not None or self.max_features is not None or not grow:
            return np.array([-1 if (c := self.column(k, grow)) is None else c for k in keys], dtype=np.intp)
        columns, names = self.columns, self.keys  # a growing vocabulary: the common case, inlined
        cols = []
        for k in keys:
            c = columns.get(k)
            if c is None:
                c = columns[k] = len(names)
                names.append(k)
            cols.append(c)
        return np.array(cols, dtype=np.intp)

    def mark(self) -> tuple[int, int]:
        """A point to :meth:`rollback` to: (number of vocabulary columns, ``n_dropped``)."""
        return len(self.keys), self.n_dropped

    def rollback(self, mark: tuple[int, int]) -> None:
        """Forget the columns added and the features dropped since :meth:`mark` returned ``mark``.

        Used to leave a model untouched when a row or batch is refused after its features were looked
        up. With hashing only the bounded look-up cache may keep new entries (they are not state).
        """
        n_keys, n_dropped = mark
        start = self._unindexed
        if start is None:
            for key in self.keys[n_keys:]:
                del self._columns[key]
        else:  # the keys from `start` on may be missing from the dict (see `columns`)
            for key in self.keys[n_keys:]:
                self._columns.pop(key, None)
            if start >= n_keys:
                self._unindexed = None
        del self.keys[n_keys:]
        self.n_dropped = n_dropped

    # State, for checkpoints: JSON-able, no pickle. The vocabulary is columnar (see _vocabulary_columns).

    def to_state(self) -> dict:
        """A JSON-able description from which :meth:`from_state` rebuilds an equal space.

        >>> space = FeatureSpace()
        >>> _ = space.encode({"a": 1, "b": "FR", 7: 2.0}, grow=True)
        >>> space.to_state()["keys"]
        {'kinds': 'sxi', 'text': 'abFR', 'lengths': [1, 1, 2], 'ints': [7], 'other': []}
        >>> FeatureSpace.from_state(space.to_state()).keys == space.keys
        True

        """
        return {
            "n_bits": self.n_bits,
            "max_features": self.max_features,
            "n_dropped": self.n_dropped,
            "keys": _vocabulary_columns(self.keys) if self.n_bits is None else [],
        }

    @classmethod
    def from_state(cls, state: dict) -> FeatureSpace:
        """The space :meth:`to_state` described (also the list of ``{"k": ..., "v": ...}`` of old states);
        a ``ValueError`` if the vocabulary's columns do not fit together."""
        space = cls(n_bits=state["n_bits"], max_features=state["max_features"])
        space.n_dropped = int(state["n_dropped"])
        keys = state["keys"]
        with _garbage_collection_paused():  # millions of new keys: no collection may scan them on the way
            if isinstance(keys, dict):
                space.keys = _vocabulary_keys(keys)
            else:
                space.keys = [_from_json_entry(entry) for entry in keys]
            space.columns = dict(zip(space.keys, range(len(space.keys)), strict=False))
        if len(space.columns) != len(space.keys):
            raise ValueError("the vocabulary lists a feature twice")
        return space


@contextlib.contextmanager
def _garbage_collection_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off (if it was on) for the block: building millions of tuples
    otherwise triggers collections that scan them all, again and again (the load took twice as long)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


#: The range of the ``ints`` column (int64, as checkpoints store it); other ints are generic keys.
_INT_MIN, _INT_MAX = -(1 << 63), (1 << 63) - 1


def _vocabulary_columns(keys: list[Hashable]) -> dict:
    """The vocabulary as columns: ``kinds`` (one letter per column: ``s`` a str key, ``i`` an int64 key,
    ``x`` the indicator of a str key and value, ``o`` any other key), ``text`` (the str keys, and the key
    and value of each indicator, concatenated in column order) cut by ``lengths`` (in characters), ``ints``
    (the int keys) and ``other`` (the other keys in the generic JSON encoding, ``{"k": ..., "v": ...}``)."""
    types = set(map(type, keys))
    if types <= {str}:
        return {"kinds": "s" * len(keys), "text": "".join(keys), "lengths": list(map(len, keys)),
                "ints": [], "other": []}
    if types == {int} and _INT_MIN <= min(keys) and max(keys) <= _INT_MAX:
        return {"kinds": "i" * len(keys), "text": "", "lengths": [], "ints": list(keys), "other": []}
    kinds: list[str] = []
    pieces: list[str] = []
    ints: list[int] = []
    other: list[dict] = []
    for k in keys:
        t = type(k)
        if t is str:
            kinds.append("s")
            pieces.append(k)
        elif t is int and _INT_MIN <= k <= _INT_MAX:
            kinds.append("i")
            ints.append(k)
        elif t is IndicatorKey and type(k[1]) is str and type(k[2]) is str:
            kinds.append("x")
            pieces += k[1], k[2]
        else:
            kinds.append("o")
            other.append({"k": _json_key(k.key), "v": k.value} if t is IndicatorKey else {"k": _json_key(k)})
    return {"kinds": "".join(kinds), "text": "".join(pieces), "lengths": list(map(len, pieces)),
            "ints": ints, "other": other}


def _vocabulary_keys(columns: dict) -> list[Hashable]:
    """The keys that :func:`_vocabulary_columns` described; a ``ValueError`` if the columns disagree.

    Each kind is rebuilt at once (in numpy's object arrays, no loop per key in Python)."""
    kinds, text, lengths, ints, other = (columns[c] for c in ("kinds", "text", "lengths", "ints", "other"))
    kind = np.frombuffer(kinds.encode("ascii"), dtype=np.uint8)
    is_s, is_i, is_x = kind == ord("s"), kind == ord("i"), kind == ord("x")
    n_s, n_i, n_x = int(is_s.sum()), int(is_i.sum()), int(is_x.sum())
    n_o = int((kind == ord("o")).sum())
    if n_s + n_i + n_x + n_o != len(kinds):
        raise ValueError("the vocabulary's kinds hold a letter other than s, i, x, o")
    if len(lengths) != n_s + 2 * n_x or len(ints) != n_i or len(other) != n_o:
        raise ValueError("the vocabulary's columns do not have the lengths its kinds need")
    ends = list(itertools.accumulate(lengths))
    if min(lengths, default=0) < 0 or (ends[-1] if ends else 0) != len(text):
        raise ValueError("the vocabulary's name lengths do not add up to its text")
    pieces = list(map(text.__getitem__, map(slice, [0, *ends[:-1]], ends)))
    if n_s == len(kinds):
        return pieces
    if n_i == len(kinds):
        return list(ints)
    keys = np.empty(len(kinds), dtype=object)
    if pieces:
        owner = kind[is_s | is_x]
        owner = np.repeat(owner, np.where(owner == ord("x"), 2, 1))  # the kind of the key of each piece
        pieces_array = np.empty(len(pieces), dtype=object)
        pieces_array[:] = pieces
        keys[is_s] = pieces_array[owner == ord("s")]
        halves = pieces_array[owner == ord("x")]
        made = map(tuple.__new__, itertools.repeat(IndicatorKey),
                   zip(itertools.repeat(INDICATOR), halves[0::2], halves[1::2]))
        keys[is_x] = np.fromiter(made, dtype=object, count=n_x)
    if n_i:
        keys[is_i] = np.fromiter(ints, dtype=object, count=n_i)
    if n_o:
        keys[kind == ord("o")] = np.fromiter(map(_from_json_entry, other), dtype=object, count=n_o)
    return keys.tolist()


def _from_json_entry(entry: dict) -> Hashable:
    key = _from_json_key(entry["k"])
    return IndicatorKey(key, entry["v"]) if "v" in entry else key


def _json_key(key: Hashable) -> Any:
    """A feature key as JSON: strings, ints, floats and bools as themselves, tuples as tagged lists."""
    if isinstance(key, (str, bool, int, float)) and not isinstance(key, IndicatorKey):
        return key
    if isinstance(key, tuple):
        return {"tuple": [_json_key(k) for k in key]}
    raise TypeError(f"feature key {key!r} of type {type(key).__name__} cannot be written to a checkpoint")


def _from_json_key(value: Any) -> Hashable:
    if isinstance(value, dict):
        return tuple(_from_json_key(k) for k in value["tuple"])
    return value
