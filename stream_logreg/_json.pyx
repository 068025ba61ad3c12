# cython: boundscheck=False, wraparound=False, cdivision=True
# distutils: language = c++
"""A compiled JSON → row decoder for the hot loop: the bytes of a message of the common shape straight into
the model's columns and values, with no Python object per feature.

:class:`RowDecoder` reads a value such as ``{"x": {"a": 0.5, "b": -2}, "y": 1, "id": "e7"}`` into
``cols``/``vals`` (the columns of the model's vocabulary and the values ``FeatureSpace.encode`` gives) and
the label, or DECLINES it; a declined message takes the codec's own way (``JsonCodec.decode``, then the
model's ``predict_learn_one``), so declining is always safe and only costs time. It accepts only:

- an exact ``bytes`` value of at most ``max_bytes`` bytes: JSON whitespace, one object, whitespace, the end;
- top-level keys the codec's ``x``, ``y`` and ``id`` fields, each at most once, ``x`` and ``y`` present;
- ``x`` an object (not an array) of at most ``max_features`` (and :data:`MAX_ROW`) entries whose keys are
  printable ASCII without escapes, each ALREADY a plain ``str`` key of the vocabulary (no growth), none
  repeated, and whose values are JSON numbers or ``true``/``false`` (a number: an integer of at most 18
  digits, or a number with a fraction or an exponent that is finite as a double);
- ``y`` exactly ``0``, ``1``, ``true`` or ``false`` (an absent or ``null`` label: the caller scores it);
- ``id`` absent, ``null``, a printable ASCII string without escapes or an integer of at most 18 digits.

Anything else declines: escapes, non-ASCII, unknown keys, strings or ``null`` as values, nested values,
other top-level fields, longer integers (orjson reads integers beyond 64 bits as inexact floats), numbers
that overflow a double, a feature space that hashes. What it accepts, ``JsonCodec.decode`` accepts as the
event of the same features and label, and ``FeatureSpace.encode`` writes as exactly these columns and values:
integers become the double ``float(int)`` gives (exact conversion of at most 18 digits, rounded to nearest
even as Python does), other numbers the correctly rounded double (the double orjson gives: fast_float's
tokenizer and conversion, Clinger's fast path, Eisel–Lemire, the exact fallback; ``stream_logreg/_json.h``),
``true``/``false`` 1.0/0.0. ``tests/test_json_row.py`` holds it to that against the codec and the model's
own encoding, on hostile bytes.

Key → column without making a ``str``: an open-addressing table keyed by the key's bytes, filled from the
vocabulary as keys are met (the first time, the ``str`` is made once and looked up in ``space.columns``;
a key not there declines). Each entry holds the vocabulary's own key object; a hit counts only if the
vocabulary still holds that very object at that column (``space.keys[col] is key``), so a rollback, a
reset or a rebuilt vocabulary can never be served a stale column; a different space, ``keys`` list or
``columns`` dict (a restored model, a group-model sync) clears the table. Memory: at most one entry per
vocabulary key met, so never more than the vocabulary's size, and at most :data:`MAX_KEYS` entries (then
the table starts again empty): 32 bytes a slot at a load of at most one half, 4 MiB at most, plus the row
buffers (:data:`MAX_ROW` entries, 24 bytes each). The key objects are the vocabulary's own (a reference).

>>> from stream_logreg.codec import JsonCodec
>>> from stream_logreg.features import FeatureSpace
>>> space = FeatureSpace()
>>> _ = space.encode({"a": 1.0, "b": 2.0}, grow=True)
>>> rows = RowDecoder(JsonCodec())
>>> rows.row(b'{"x": {"b": 1e-3, "a": true}, "y": 1}', space)
([1, 0], [0.001, 1.0], 1)
>>> rows.row(b'{"x": {"b": 1, "new": 2}, "y": 1}', space) is None  # a new key: the codec's way
True
"""

cimport numpy as cnp
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItemWithError
from cpython.float cimport PyFloat_FromDouble
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.mem cimport PyMem_Calloc, PyMem_Free
from cpython.object cimport PyObject
from cpython.ref cimport Py_DECREF, Py_INCREF
from libc.stdint cimport uint64_t
from libc.string cimport memcmp

import numpy as np

cnp.import_array()

cdef extern from "Python.h":
    bint PyUnicode_CheckExact(object o)
    bint PyUnicode_IS_ASCII(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)
    void* PyUnicode_DATA(object o)
    object PyUnicode_DecodeASCII(const char* s, Py_ssize_t size, const char* errors)
    bint PyLong_CheckExact(object o)
    Py_ssize_t PyLong_AsSsize_t(object o) except? -1
    int PyDict_SetItem(object d, PyObject* key, object value) except -1

cdef extern from "Python.h":
    # Reads of objects the decoder holds a reference to (its table's keys, the bound vocabulary's list),
    # without the GIL: the worker that runs the pass is the only one touching the model meanwhile.
    Py_ssize_t _str_length "PyUnicode_GET_LENGTH" (PyObject* o) noexcept nogil
    void* _str_data "PyUnicode_DATA" (PyObject* o) noexcept nogil
    Py_ssize_t _list_size "PyList_GET_SIZE" (PyObject* o) noexcept nogil
    PyObject* _list_item "PyList_GET_ITEM" (PyObject* o, Py_ssize_t i) noexcept nogil

cdef extern from "_json.h":
    const char* sl_json_number(const char* p, const char* pend, double* out, int* integer) noexcept nogil
    const unsigned char* sl_key(const unsigned char* p, const unsigned char* end, uint64_t* h) noexcept nogil
    bint sl_equal(const void* a, const void* b, Py_ssize_t n) noexcept nogil

__all__ = ["MAX_KEYS", "MAX_ROW", "RowDecoder", "plain_labels"]

#: The most keys the table holds; when full it is emptied and filled again from the vocabulary.
MAX_KEYS = 1 << 16
#: The most entries of a row the decoder takes (a longer row declines: the codec's way).
MAX_ROW = 4096

cdef Py_ssize_t _MAX_KEYS = MAX_KEYS
cdef Py_ssize_t _MAX_ROW = MAX_ROW
cdef Py_ssize_t _MIN_SLOTS = 64


cdef inline bint _ws(unsigned char c) noexcept nogil:
    return c == 32 or c == 10 or c == 13 or c == 9


cdef inline Py_ssize_t _skip_ws(const unsigned char* p, Py_ssize_t i) noexcept nogil:
    while _ws(p[i]):
        i += 1
    return i


cdef inline Py_ssize_t _plain_string(const unsigned char* p, Py_ssize_t i, Py_ssize_t size,
                                     uint64_t* h) noexcept nogil:
    """``p[i]`` is past an opening quote: the index of the closing quote of a string of printable ASCII
    without escapes (its hash in ``h``), or -1. The NUL after a bytes object's data stops it."""
    cdef const unsigned char* q = sl_key(p + i, p + size, h)
    return -1 if q == NULL else q - p


cdef inline Py_ssize_t _number(const unsigned char* p, Py_ssize_t i, Py_ssize_t size,
                               double* out) noexcept nogil:
    """A JSON number from ``p[i]``: the index after it and its value as the codec and the feature space
    make it, or -1 (not a number, an integer of more than 18 digits, not finite as a double)."""
    cdef int integer
    cdef const char* end = sl_json_number(<const char*> p + i, <const char*> p + size, out, &integer)
    if end == NULL:
        return -1
    return end - <const char*> p


cdef inline Py_ssize_t _integer(const unsigned char* p, Py_ssize_t i, Py_ssize_t size) noexcept nogil:
    """The index after the JSON integer of at most 18 digits at ``p[i]`` (an id), or -1."""
    cdef int integer
    cdef double d
    cdef const char* end = sl_json_number(<const char*> p + i, <const char*> p + size, &d, &integer)
    if end == NULL or not integer:
        return -1
    return end - <const char*> p


cdef class RowDecoder:
    """Decodes the JSON messages of the common shape (module docstring) straight into a vocabulary's
    columns and values; anything else declines.

    Parameters
    ----------
    codec
        The :class:`~stream_logreg.codec.JsonCodec` whose settings (field names, ``max_features``,
        ``max_bytes``) it applies; they are read once, here.
    """

    # the attributes: _json.pxd

    def __cinit__(self):
        self.slots = NULL

    def __init__(self, codec):
        self.x_field = codec.x_field.encode("utf-8")
        self.y_field = codec.y_field.encode("utf-8")
        self.id_field = codec.id_field.encode("utf-8")
        for j, field in enumerate((self.x_field, self.y_field, self.id_field)):
            self.fields[j], self.field_len[j] = <const char*> field, len(field)
        self.max_features = int(codec.max_features)
        self.max_bytes = int(codec.max_bytes)
        self.cap = min(self.max_features, _MAX_ROW)
        self.cols = np.zeros(max(self.cap, 1), dtype=np.intp)
        self.vals = np.zeros(max(self.cap, 1))
        self.k_buffer = np.zeros(max(self.cap, 1), dtype=np.uintp)
        self.c = <Py_ssize_t*> cnp.PyArray_DATA(self.cols)
        self.v = <double*> cnp.PyArray_DATA(self.vals)
        self.k = <PyObject**> cnp.PyArray_DATA(self.k_buffer)
        self.label = -1
        self._reset(_MIN_SLOTS)

    def __dealloc__(self):
        self._release()

    cdef void _release(self) noexcept:
        cdef Py_ssize_t j
        if self.slots != NULL:
            for j in range(self.mask + 1):
                if self.slots[j].key != NULL:
                    Py_DECREF(<object> self.slots[j].key)
            PyMem_Free(self.slots)
            self.slots = NULL
        self.used = 0

    cdef int _reset(self, Py_ssize_t n_slots) except -1:
        self._release()
        self.slots = <Slot*> PyMem_Calloc(n_slots, sizeof(Slot))
        if self.slots == NULL:
            raise MemoryError()
        self.mask = n_slots - 1
        return 0

    @property
    def n_keys(self) -> int:
        """How many keys the table holds now."""
        return self.used

    cpdef bint bind(self, object space) except -1:
        """Use ``space`` (a ``FeatureSpace``) from now on; True if it is a vocabulary the decoder can
        serve. The table is emptied when the space, its ``keys`` list or its ``columns`` dict is another
        object than the one it was filled from."""
        # (the dict as it is: the entries it may lack are indicators, never a plain str key)
        if space is not self.space or space.keys is not self.keys or space._columns is not self.columns:
            if self.used:
                self._reset(_MIN_SLOTS)
            self.space, self.keys, self.columns = space, space.keys, space._columns
            self.keys_p = <PyObject*> self.keys
        return space.n_bits is None and type(self.keys) is list and type(self.columns) is dict

    cdef Py_ssize_t _find(self, const unsigned char* key, Py_ssize_t length, uint64_t h) noexcept nogil:
        """The slot of ``key``, or of the empty slot where it would go."""
        cdef Py_ssize_t j = <Py_ssize_t> (h & <uint64_t> self.mask)
        cdef Slot* s
        while True:
            s = &self.slots[j]
            if s.key == NULL:
                return j
            if s.hash == h and _str_length(s.key) == length and sl_equal(_str_data(s.key), key, length):
                return j
            j = (j + 1) & self.mask

    cdef int _grow(self) except -1:
        """Twice the slots (the keys moved along, with their stamps)."""
        cdef Slot* old = self.slots
        cdef Py_ssize_t n_old = self.mask + 1, j, t
        self.slots = <Slot*> PyMem_Calloc(2 * n_old, sizeof(Slot))
        if self.slots == NULL:
            self.slots = old
            raise MemoryError()
        self.mask = 2 * n_old - 1
        for j in range(n_old):
            if old[j].key != NULL:
                t = <Py_ssize_t> (old[j].hash & <uint64_t> self.mask)
                while self.slots[t].key != NULL:
                    t = (t + 1) & self.mask
                self.slots[t] = old[j]
        PyMem_Free(old)
        return 0

    cdef Py_ssize_t _learn_key(self, const unsigned char* key, Py_ssize_t length, uint64_t h,
                               bint* cleared) except -2:
        """The slot of a key met for the first time, filled from the vocabulary; -1 if the vocabulary
        does not hold it as a plain ``str`` key (the row declines). ``cleared``: the table was emptied
        to make room (the row's repeated-key check is lost: it declines)."""
        cdef object name = PyUnicode_DecodeASCII(<const char*> key, length, NULL)
        cdef PyObject* found = PyDict_GetItemWithError(self.columns, name)
        cdef object owner
        cdef Py_ssize_t col, j
        if found == NULL:
            return -1
        if not PyLong_CheckExact(<object> found):
            return -1
        col = PyLong_AsSsize_t(<object> found)
        if not 0 <= col < PyList_GET_SIZE(self.keys):
            return -1
        owner = <object> PyList_GET_ITEM(self.keys, col)
        if not PyUnicode_CheckExact(owner) or not PyUnicode_IS_ASCII(owner) or owner != name:
            return -1
        if self.used >= _MAX_KEYS:
            self._reset(_MIN_SLOTS)
            cleared[0] = True
        elif 2 * (self.used + 1) > self.mask + 1:
            self._grow()
        j = self._find(key, length, h)
        Py_INCREF(owner)
        self.slots[j].key = <PyObject*> owner
        self.slots[j].hash = h
        self.slots[j].col = col
        self.slots[j].stamp = -1
        self.used += 1
        return j

    cdef Py_ssize_t decode(self, object value) except -2:
        """The row of ``value`` into ``cols``/``vals`` (and ``label``): how many entries, or -1 (declined).
        Call :meth:`bind` first."""
        return self._decode(value, False)

    cdef Py_ssize_t decode_event(self, object value) except -2:
        """As :meth:`decode`, and also a message without label (``y`` absent or ``null``: ``label`` -1);
        ``id`` is then the event's id as the codec gives it (a ``str``, or None), for an id that is absent,
        ``null`` or a string (an integer id declines)."""
        return self._decode(value, True)

    cdef Py_ssize_t _decode(self, object value, bint scored) except -2:
        """`scan` with the GIL: a key met for the first time is looked up in the vocabulary (and the
        value scanned again), a vocabulary changed in place empties the table; ``id`` made."""
        if type(value) is not bytes:
            return -1
        cdef Py_ssize_t size = PyBytes_GET_SIZE(value), n, j
        cdef const unsigned char* p = <const unsigned char*> PyBytes_AS_STRING(value)
        cdef bint cleared = False
        while True:
            n = self.scan(p, size, scored)
            if n != NEEDS_GIL:
                break
            if self.miss_len < 0:
                self._reset(_MIN_SLOTS)  # the vocabulary changed in place: start again
                return -1
            j = self._learn_key(p + self.miss_at, self.miss_len, self.miss_h, &cleared)
            if j < 0 or cleared:
                return -1
        if n >= 0 and scored:
            self.id = None if self.id_start < 0 else PyUnicode_DecodeASCII(
                <const char*> p + self.id_start, self.id_end - self.id_start, NULL)
        return n

    cdef Py_ssize_t scan(self, const unsigned char* p, Py_ssize_t size, bint scored) noexcept nogil:
        """The row of the bytes ``p[:size]`` (``p[size]`` a NUL, as after a ``bytes`` object's data) into
        ``cols``/``vals``, ``label`` and the id's span, without the GIL: how many entries, -1 (declined),
        or :data:`NEEDS_GIL`: a key not in the table yet (at ``miss_at``, ``miss_len`` bytes, hash
        ``miss_h``) or, with ``miss_len`` -1, a vocabulary changed in place (see `_decode`). Call
        :meth:`bind` first, with the GIL."""
        if size > self.max_bytes:
            return -1
        # A bytes object's data ends with a NUL, which no rule below accepts: no read goes past it.
        cdef Py_ssize_t i = _skip_ws(p, 0), end, j, n = -1, col, klen
        cdef uint64_t h
        cdef Py_ssize_t id_start = -1, id_end = -1
        cdef bint seen_y = False, seen_id = False
        cdef int label = -1
        cdef double d
        cdef PyObject* keys = self.keys_p
        cdef Py_ssize_t n_keys = _list_size(keys)
        cdef Slot* s
        if p[i] != 123:  # {
            return -1
        i = _skip_ws(p, i + 1)
        self.n_rows += 1
        while True:  # the top-level members
            if p[i] != 34:
                return -1
            end = _plain_string(p, i + 1, size, &h)
            if end < 0:
                return -1
            klen = end - i - 1
            j = i + 1
            i = _skip_ws(p, end + 1)
            if p[i] != 58:  # :
                return -1
            i = _skip_ws(p, i + 1)
            if klen == self.field_len[0] and memcmp(p + j, self.fields[0], klen) == 0:
                if n >= 0 or p[i] != 123:
                    return -1
                n = 0
                i = _skip_ws(p, i + 1)
                if p[i] == 125:  # }
                    i += 1
                else:
                    while True:  # the features
                        if p[i] != 34 or n >= self.cap:
                            return -1
                        end = _plain_string(p, i + 1, size, &h)
                        if end < 0:
                            return -1
                        klen = end - i - 1
                        j = self._find(p + i + 1, klen, h)
                        if self.slots[j].key == NULL:  # met for the first time: the vocabulary says
                            self.miss_at, self.miss_len, self.miss_h = i + 1, klen, h
                            return NEEDS_GIL
                        s = &self.slots[j]
                        col = s.col
                        if s.stamp == self.n_rows:  # a repeated key
                            return -1
                        if col >= n_keys or _list_item(keys, col) != s.key:
                            self.miss_len = -1  # the vocabulary changed in place
                            return NEEDS_GIL
                        s.stamp = self.n_rows
                        i = _skip_ws(p, end + 1)
                        if p[i] != 58:
                            return -1
                        i = _skip_ws(p, i + 1)
                        if p[i] == 116:  # t
                            if size - i < 4 or memcmp(p + i, b"true", 4) != 0:
                                return -1
                            d = 1.0
                            i += 4
                        elif p[i] == 102:  # f
                            if size - i < 5 or memcmp(p + i, b"false", 5) != 0:
                                return -1
                            d = 0.0
                            i += 5
                        else:
                            i = _number(p, i, size, &d)
                            if i < 0:
                                return -1
                        self.c[n] = col
                        self.v[n] = d
                        self.k[n] = s.key
                        n += 1
                        i = _skip_ws(p, i)
                        if p[i] == 44:  # ,
                            i = _skip_ws(p, i + 1)
                        elif p[i] == 125:
                            i += 1
                            break
                        else:
                            return -1
                if n > self.max_features:
                    return -1
            elif klen == self.field_len[1] and memcmp(p + j, self.fields[1], klen) == 0:
                if seen_y:
                    return -1
                seen_y = True
                if p[i] == 48 or p[i] == 49:  # exactly 0 or 1: the next byte ends the number
                    label = p[i] - 48
                    i += 1
                    if not (_ws(p[i]) or p[i] == 44 or p[i] == 125):
                        return -1
                elif p[i] == 116 and size - i >= 4 and memcmp(p + i, b"true", 4) == 0:
                    label = 1
                    i += 4
                elif p[i] == 102 and size - i >= 5 and memcmp(p + i, b"false", 5) == 0:
                    label = 0
                    i += 5
                elif scored and p[i] == 110 and size - i >= 4 and memcmp(p + i, b"null", 4) == 0:
                    i += 4  # no label: scored
                else:  # null (scored by the caller), or anything the codec must judge
                    return -1
            elif klen == self.field_len[2] and memcmp(p + j, self.fields[2], klen) == 0:
                if seen_id:
                    return -1
                seen_id = True
                if p[i] == 34:
                    end = _plain_string(p, i + 1, size, &h)
                    if end < 0:
                        return -1
                    id_start, id_end = i + 1, end
                    i = end + 1
                elif p[i] == 110:  # null
                    if size - i < 4 or memcmp(p + i, b"null", 4) != 0:
                        return -1
                    i += 4
                else:
                    i = _integer(p, i, size)
                    if i < 0 or scored:
                        return -1
            else:
                return -1
            i = _skip_ws(p, i)
            if p[i] == 44:
                i = _skip_ws(p, i + 1)
            elif p[i] == 125:
                i = _skip_ws(p, i + 1)
                break
            else:
                return -1
        if i != size or n < 0 or (label < 0 and not scored):
            return -1
        self.label = label
        self.id_start, self.id_end = id_start, id_end
        return n

    cdef dict row_dict(self, Py_ssize_t n):
        """The last accepted row as the dict of its vocabulary keys and float values (equal, for the
        model, to the event's own ``x``)."""
        cdef dict x = {}
        cdef Py_ssize_t j
        for j in range(n):
            PyDict_SetItem(x, self.k[j], PyFloat_FromDouble(self.v[j]))
        return x

    def row(self, object value, object space):
        """``(cols, vals, label)`` of ``value`` as lists, or None if declined (for tests and examples)."""
        if not self.bind(space):
            return None
        cdef Py_ssize_t n = self.decode(value)
        if n < 0:
            return None
        return self.cols[:n].tolist(), self.vals[:n].tolist(), self.label

    def learn(self, object value, object space, object learn_encoded, object learn):
        """Learn ``value`` if it decodes: ``learn_encoded(cols, vals, n, y)``, or, when that is None,
        ``learn(x, y)`` with ``x`` the row as a dict; returns ``(p, y)``, or None if declined. A
        ``ValueError`` of the model (a refused update) propagates."""
        if not self.bind(space):
            return None
        cdef Py_ssize_t n = self.decode(value)
        if n < 0:
            return None
        y = 1 if self.label else 0
        if learn_encoded is not None:
            return learn_encoded(self.cols, self.vals, n, y), y
        return learn(self.row_dict(n), y), y



cdef object _ZERO = 0, _ONE = 1


cdef inline Py_ssize_t _label_member(const unsigned char* p, Py_ssize_t i, Py_ssize_t size, const char* field,
                                     Py_ssize_t field_len) noexcept:
    """At ``p[i]``, the opening quote of a member's key: the index past the colon and the whitespace after
    it when the key is exactly ``field`` (printable ASCII, no escapes), else -1."""
    cdef uint64_t h
    cdef Py_ssize_t end
    if p[i] != 34:  # '"'
        return -1
    end = _plain_string(p, i + 1, size, &h)
    if end < 0 or end - i - 1 != field_len or memcmp(p + i + 1, field, field_len) != 0:
        return -1
    i = _skip_ws(p, end + 1)
    if p[i] != 58:  # ':'
        return -1
    return _skip_ws(p, i + 1)


cdef object _plain_label(object value, const char* id_field, Py_ssize_t id_len, const char* y_field,
                         Py_ssize_t y_len, Py_ssize_t max_bytes, int* label):
    """The id of a label of the plain form (its label in ``label``), or None: see :func:`plain_labels`."""
    cdef Py_ssize_t size, i, member, at, id_start = -1, id_end = -1, end
    cdef int y = -1
    cdef uint64_t h
    cdef const unsigned char* p
    if type(value) is not bytes:
        return None
    size = PyBytes_GET_SIZE(value)
    if size > max_bytes:
        return None
    p = <const unsigned char*> PyBytes_AS_STRING(value)  # a NUL follows the data: every scan stops there
    i = _skip_ws(p, 0)
    if p[i] != 123:  # '{'
        return None
    i = _skip_ws(p, i + 1)
    for member in range(2):
        if member:
            if p[i] != 44:  # ','
                return None
            i = _skip_ws(p, i + 1)
        at = _label_member(p, i, size, id_field, id_len) if id_start < 0 else -1
        if at >= 0:
            if p[at] != 34:
                return None
            end = _plain_string(p, at + 1, size, &h)
            if end < 0:
                return None
            id_start, id_end = at + 1, end
            i = _skip_ws(p, end + 1)
            continue
        at = _label_member(p, i, size, y_field, y_len) if y < 0 else -1
        if at < 0 or (p[at] != 48 and p[at] != 49):  # exactly the integer 0 or 1: not 01, 0.0, 1e0
            return None
        if (p[at + 1] >= 48 and p[at + 1] <= 57) or p[at + 1] == 46 or p[at + 1] == 101 or p[at + 1] == 69:
            return None
        y = p[at] - 48
        i = _skip_ws(p, at + 1)
    if p[i] != 125:  # '}'
        return None
    if _skip_ws(p, i + 1) != size:
        return None
    label[0] = y
    return PyUnicode_DecodeASCII(<const char*> p + id_start, id_end - id_start, NULL)


def plain_labels(list values not None, Py_ssize_t start, bytes id_field not None, bytes y_field not None,
                 Py_ssize_t max_bytes, list stamps not None, object topic, object partition,
                 list offsets not None, list out not None) -> int:
    """Append ``(id, y, stamps[i], topic, partition, offsets[i])`` to ``out`` for each ``values[i]``,
    ``i`` from ``start``, while it is a label of the PLAIN form; return the index of the first that is not
    (``len(values)`` at the end), which the caller decodes its own way (``consumers.labels.decode_label``).

    The plain form: an exact ``bytes`` value of at most ``max_bytes`` bytes that is JSON whitespace, one
    object of exactly two members, the ``id_field`` (a string of printable ASCII without escapes) and the
    ``y_field`` (exactly the integer ``0`` or ``1``), in either order, whitespace, the end; the field names
    as their UTF-8 bytes (none if they are the same). What it accepts, ``orjson.loads`` reads as
    ``{id_field: id, y_field: y}`` with ``id`` that ``str`` and ``y`` that ``int``; anything else (other
    members, escapes, non-ASCII, ``true``, ``1.0``, ``-0``, a repeated member, bytes after the object) is
    declined, which is always safe: the caller's way gives the same label, or rejects it.

    >>> out = []
    >>> values = [b'{"id": "a1", "y": 1}', b' {"y":0,"id":"b"} ', b'{"id": "\\u0063", "y": 1}']
    >>> plain_labels(values, 0, b"id", b"y", 1 << 20, [5, 6, 7], "labels", 0, [10, 11, 12], out)
    2
    >>> out
    [('a1', 1, 5, 'labels', 0, 10), ('b', 0, 6, 'labels', 0, 11)]
    """
    cdef Py_ssize_t n = PyList_GET_SIZE(values), i
    cdef const char* idf = PyBytes_AS_STRING(id_field)
    cdef const char* yf = PyBytes_AS_STRING(y_field)
    cdef Py_ssize_t idn = PyBytes_GET_SIZE(id_field), yn = PyBytes_GET_SIZE(y_field)
    cdef object id_
    cdef int y = -1
    if PyList_GET_SIZE(stamps) < n or PyList_GET_SIZE(offsets) < n:
        raise ValueError("stamps and offsets need an item for each value")
    if id_field == y_field:  # orjson keeps the last of two members of the same name
        return max(start, 0)
    for i in range(max(start, 0), n):
        id_ = _plain_label(<object> PyList_GET_ITEM(values, i), idf, idn, yf, yn, max_bytes, &y)
        if id_ is None:
            return i
        out.append((id_, _ONE if y else _ZERO, <object> PyList_GET_ITEM(stamps, i), topic, partition,
                    <object> PyList_GET_ITEM(offsets, i)))
    return n
