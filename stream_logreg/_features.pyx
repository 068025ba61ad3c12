# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The feature space's encoder, compiled: a dict row to (column, value) buffers, creating the columns of
keys never seen (vocabulary) or hashing their names (BLAKE2b, 8 bytes, as ``hashlib.blake2b``), with the
rules of ``stream_logreg.features`` exactly. ``FeatureSpace.encode`` is the reference this must equal; what
is not plain (a value that is not an exact float, int, bool or str, a string that may read as a number, a
colliding hashed sum that overflows) is left to it: `encode_into` then returns -1, having changed nothing
but the bounded hash cache.
"""

cimport numpy as cnp
from cpython.dict cimport PyDict_SetItem
from cpython.object cimport PyObject
from cpython.ref cimport Py_DECREF, Py_INCREF
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_New, PyTuple_SET_ITEM
from libc.math cimport isfinite
from libc.stdint cimport uint64_t

from stream_logreg._kernel import INDICATOR, _dict_samples
from stream_logreg._kernel cimport (
    PyErr_Clear, PyErr_Occurred, PyType_GenericAlloc, RowLayout, _column_value, _float_value, _int_value,
    _is_bool, _is_float, _is_int, _is_str, _true, indicator_hint, pair_hash, pair_limit, set_indicator,
)

cnp.import_array()


cdef extern from "_dictnext.h":
    bint PyDict_Next "sl_dict_next" (object d, Py_ssize_t* pos, PyObject** key, PyObject** value) noexcept
    int _dict_next_check "sl_dict_next_check" (list dicts) except -1


#: Whether the rows' loops read dicts inline (the layout confirmed at import, on the same dicts as _kernel's
#: check: each module has its own copy of the inline reader), not through PyDict_Next.
DICT_NEXT_INLINE = bool(_dict_next_check(_dict_samples()))

cdef extern from "_blake2b.h":
    ctypedef struct b2_state:
        pass
    void b2_init(b2_state* s) nogil
    void b2_update(b2_state* s, const char* data, size_t n) nogil
    uint64_t b2_final(b2_state* s) nogil

cdef extern from "Python.h":
    Py_ssize_t _str_len "PyUnicode_GET_LENGTH" (PyObject* o)
    bint _str_ascii "PyUnicode_IS_ASCII" (PyObject* o)
    void* _str_data "PyUnicode_DATA" (PyObject* o)
    Py_UCS4 _str_char "PyUnicode_READ_CHAR" (PyObject* o, Py_ssize_t i)
    bint _is_space "Py_UNICODE_ISSPACE" (Py_UCS4 c)
    const char* _utf8 "PyUnicode_AsUTF8AndSize" (PyObject* o, Py_ssize_t* n)
    PyObject* _dict_get "PyDict_GetItemWithError" (object d, object key) except? NULL  # borrowed; NULL: absent
    Py_ssize_t Py_REFCNT(object o)
    void PyObject_GC_UnTrack(object o)
    double PyOS_string_to_double(const char* s, char** endptr, PyObject* overflow_exception)

cdef object _INDICATOR = INDICATOR  # read as a C global in the loops, not from the module's dict
cdef object _IndicatorKey = None  # stream_logreg.features' classes and functions, bound on first use
cdef object _looks_numeric = None
cdef object _feature_name = None
cdef object _module = None


cdef int _bind() except -1:
    global _IndicatorKey, _looks_numeric, _feature_name, _module
    from stream_logreg import features
    _IndicatorKey, _looks_numeric, _feature_name = features.IndicatorKey, features.looks_numeric, \
        features.feature_name
    _module = features
    return 0


# Characters of the ASCII strings float() can accept (digits, signs, exponents, "_", "inf", "infinity",
# "nan", white space): a string with any other character is surely a category.
cdef bint _FLOATISH[128]
for _c in range(128):
    _FLOATISH[_c] = chr(_c) in "0123456789+-._eEinfatyINFATY \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f"


cdef int _numeric(PyObject* v) except -1:
    """Whether the string v reads as a number (``looks_numeric``), decided in C when it surely does not."""
    cdef Py_ssize_t n = _str_len(v), i
    cdef Py_UCS4 head
    cdef const unsigned char* s
    if n == 0:
        return 0
    head = _str_char(v, 0)
    if not (_is_space(head) or 48 <= head <= 57 or head == 43 or head == 45 or head == 46
            or head == 110 or head == 78 or head == 105 or head == 73):  # "+-." "nNiI"
        return 0  # looks_numeric's first test
    cdef char* end
    cdef bint plain = True
    if _str_ascii(v):
        s = <const unsigned char*> _str_data(v)
        for i in range(n):
            if not _FLOATISH[s[i]]:
                return 0
            plain = plain and s[i] != 95 and not _is_space(s[i])  # "_" or white space: float() decides
        if plain:  # what float() does once it has stripped white space and checked underscores
            PyOS_string_to_double(<const char*> s, &end, NULL)
            if PyErr_Occurred() != NULL:
                PyErr_Clear()
                return 0
            return 1 if end == <char*> s + n else 0
    return 1 if _looks_numeric(<object> v) else 0


cdef inline void _hash_str(b2_state* st, object s) except *:
    """Feed the UTF-8 bytes of s (lone surrogates as "surrogatepass" writes them) to the hash."""
    cdef Py_ssize_t n = 0
    cdef const char* p = _utf8(<PyObject*> s, &n)
    cdef bytes b
    if p == NULL:
        PyErr_Clear()
        b = (<str> s).encode("utf-8", "surrogatepass")
        b2_update(st, <const char*> b, len(b))
    else:
        b2_update(st, p, n)


cdef Py_ssize_t _hash(object key, object value, uint64_t mask) except -1:
    """The hashed column of the feature of ``key`` (``value`` None) or of the indicator ``key=value``."""
    cdef b2_state st
    b2_init(&st)
    if not _is_str(<PyObject*> key):  # its name is what feature_name says (str(), format())
        key = _feature_name(key if value is None else _IndicatorKey(key, value))
        value = None
    _hash_str(&st, key)
    if value is not None:
        b2_update(&st, "=", 1)
        _hash_str(&st, value)
    return <Py_ssize_t> (b2_final(&st) & mask)


cdef object _indicator_key(object key, object value):
    """IndicatorKey(key, value), as tuple.__new__ makes it, without the intermediate tuple."""
    k = PyType_GenericAlloc(_IndicatorKey, 3)
    Py_INCREF(_INDICATOR)
    PyTuple_SET_ITEM(k, 0, _INDICATOR)
    Py_INCREF(key)
    PyTuple_SET_ITEM(k, 1, key)
    Py_INCREF(value)
    PyTuple_SET_ITEM(k, 2, value)
    _untrack(k, key)
    return k


cdef inline void _untrack(object k, object key):
    """Leave the key (INDICATOR, key, value) out of the cyclic garbage collector when ``key`` is a str (as
    CPython does for tuples of atoms, which INDICATOR, an object, prevents): it cannot be part of a cycle,
    and the vocabulary's millions of them are not rescanned at every collection."""
    if _is_str(<PyObject*> key):
        PyObject_GC_UnTrack(k)


cdef object _new_scratch():
    t = PyTuple_New(3)
    for i in range(3):
        Py_INCREF(_INDICATOR if i == 0 else None)
        PyTuple_SET_ITEM(t, i, _INDICATOR if i == 0 else None)
    return t


cdef inline void _fill(object t, Py_ssize_t i, PyObject* item):
    """Replace item i of the tuple t, which nothing else holds."""
    cdef PyObject* old = PyTuple_GET_ITEM(t, i)
    Py_INCREF(<object> item)
    PyTuple_SET_ITEM(t, i, <object> item)
    Py_DECREF(<object> old)


def index_keys(dict columns not None, list keys not None, Py_ssize_t start) -> None:
    """``columns[keys[i]] = i`` for every column i from ``start`` on (``FeatureSpace._index``: the entries
    the encoder left out; the others are set again to the same column)."""
    if _IndicatorKey is None:
        _bind()
    cdef Py_ssize_t i
    cdef PyObject* k
    cdef PyObject* v
    for i in range(max(start, 0), len(keys)):
        key = keys[i]
        if type(key) is _IndicatorKey:
            k, v = PyTuple_GET_ITEM(key, 1), PyTuple_GET_ITEM(key, 2)
            if _is_str(k) and _is_str(v):
                set_indicator(columns, key, k, v, i)
                continue
        PyDict_SetItem(columns, key, i)


def blake2b64(bytes data not None) -> int:
    """``int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")``, the compiled hash."""
    cdef b2_state st
    b2_init(&st)
    b2_update(&st, <const char*> data, len(data))
    return b2_final(&st)


def encode_into(object space, dict x not None, bint grow, cnp.ndarray cols not None,
                cnp.ndarray vals not None, Py_ssize_t start=0, RowLayout layout=None, bint looked_up=False):
    """``space.encode(x, grow)`` written into cols[start:] and vals[start:]; returns how many entries, or -1
    if the row must go to the reference (see the module docstring). The buffers (intp, float64) must hold
    ``len(x)`` entries from ``start``. With the model's `layout`, the indicators of str keys and values are
    looked up in its pair cache first (a cached one needs no check: it was checked when it was created),
    and the others are cached. `looked_up` (with `layout`): the caller has looked the row up in the pair
    cache already (and prefetched what it reads), and cols[start + i] holds, for each entry i of a str key
    and value, the column the cache gave, or -1 (the compiled steps, whose own look-up found a new value).
    """
    if _IndicatorKey is None:
        _bind()
    if (cnp.PyArray_TYPE(cols) != cnp.NPY_INTP or cnp.PyArray_TYPE(vals) != cnp.NPY_DOUBLE
            or not cnp.PyArray_IS_C_CONTIGUOUS(cols) or not cnp.PyArray_IS_C_CONTIGUOUS(vals)
            or start < 0 or start + len(x) > min(cnp.PyArray_DIM(cols, 0), cnp.PyArray_DIM(vals, 0))):
        raise ValueError("encode_into: the buffers (intp, float64, contiguous) must hold the row")
    cdef Py_ssize_t* c = (<Py_ssize_t*> cnp.PyArray_DATA(cols)) + start
    cdef double* v = (<double*> cnp.PyArray_DATA(vals)) + start
    cdef Py_ssize_t pos = 0, n = 0, j, ci, dropped = 0
    cdef PyObject* key
    cdef PyObject* value
    cdef PyObject* found
    cdef double d
    cdef Py_ssize_t i = 0
    cdef bint cached = layout is not None
    n_bits = space.n_bits  # (each attribute read once: this runs for every row with a new value)
    cdef bint hashing = n_bits is not None
    cdef Py_ssize_t limit = pair_limit(hashing)
    looked_up = looked_up and cached
    cdef dict columns = space._columns  # as it is (see `FeatureSpace.columns`): indexed below if need be
    cdef list keys = space.keys
    cdef bint complete = False, done = False
    # (a hint only: whether the dict will be asked about the new indicators, see `complete` below)
    cdef bint hint = looked_up and not hashing and not (layout.complete and layout.synced == len(keys))
    # 1. Every value is one the compiled path takes, before anything is looked up (as the reference); the
    # column of entry i, if in the pair cache, goes to c[i] (else -1), which pass 2 reads before it writes
    # c[n], n <= i.
    if cached and not looked_up:
        layout.prefetch(x)
    while PyDict_Next(x, &pos, &key, &value):
        ci = c[i]
        c[i] = -1
        i += 1
        if _is_str(value):
            if cached and _is_str(key):
                c[i - 1] = ci if looked_up else layout.pair_get(key, value, pair_hash(key, value))
                if c[i - 1] >= 0:
                    continue
                if hint:  # new: the step prefetched its dict slot, now its entry
                    indicator_hint(columns, key, value, True)
            if _numeric(value):
                return -1
        elif _is_float(value):
            if not isfinite(_float_value(value)):
                return -1
        elif not _is_bool(value):
            if not _is_int(value):
                return -1
            d = _int_value(value)
            if d == -1.0 and PyErr_Occurred() != NULL:  # too large for a double
                PyErr_Clear()
                return -1
    # 2. The columns.
    cdef uint64_t mask = ((<uint64_t> 1) << <int> n_bits) - 1 if hashing else 0
    cdef Py_ssize_t cache_size = _module.HASH_CACHE_SIZE if hashing else 0  # read each time (tests set it)
    max_features = space.max_features
    cdef Py_ssize_t cap = -1 if max_features is None else max_features
    # With a vocabulary whose indicators of str keys and values are all in the pair cache, a pair not
    # cached is new: no dict look-up (see RowLayout.complete), and the dict's entry of a new one is left
    # out (FeatureSpace.columns adds it when the dict is read); else the dict must hold every key first.
    if cached and not hashing:
        if layout.synced == -1 and len(keys) == 0 and len(columns) == 0 and layout.n_pairs == 0:
            layout.complete, layout.synced = True, 0
        complete = layout.complete and layout.synced == len(keys)
    if not complete and not hashing and len(columns) != len(keys):
        space._index()
    pos = 0
    i = 0
    scratch = None
    try:
        while PyDict_Next(x, &pos, &key, &value):
            i += 1
            if c[i - 1] >= 0:  # found in the pair cache
                d = 1.0
                ci = c[i - 1]
            elif hashing and cached and _is_str(value) and _is_str(key):  # the pair cache is the look-up
                d = 1.0
                ci = _hash(<object> key, <object> value, mask)
                layout.pair_put(key, value, pair_hash(key, value), ci, limit)
            else:
                if _is_str(value) and complete and _is_str(key):  # new (see `complete`): no look-up
                    d = 1.0
                    lookup = None
                elif _is_str(value):
                    d = 1.0
                    # The look-up key (INDICATOR, key, value) in one tuple for the whole row, refilled,
                    # unless something kept it (a key's __eq__ could): no allocation per entry.
                    lookup = None
                    if scratch is None or Py_REFCNT(scratch) != 1:
                        scratch = _new_scratch()
                    _fill(scratch, 1, key)
                    _fill(scratch, 2, value)
                    lookup = scratch
                else:
                    d = _float_value(value) if _is_float(value) else (
                        (1.0 if value == _true else 0.0) if _is_bool(value) else _int_value(value))
                    lookup = <object> key
                found = NULL if complete and _is_str(value) and _is_str(key) else _dict_get(columns, lookup)
                if found != NULL:
                    ci = _column_value(found)
                elif hashing:
                    if len(columns) >= cache_size:
                        columns.clear()
                    if _is_str(value):
                        ci = _hash(<object> key, <object> value, mask)
                        lookup = _indicator_key(<object> key, <object> value)
                    else:
                        ci = _hash(<object> key, None, mask)
                    PyDict_SetItem(columns, lookup, ci)
                elif not grow:
                    continue
                elif cap >= 0 and len(keys) >= cap:
                    dropped += 1
                    continue
                else:
                    ci = len(keys)
                    if _is_str(value) and _is_str(key):
                        lookup = _indicator_key(<object> key, <object> value)
                        if not complete:
                            set_indicator(columns, lookup, key, value, ci)
                        elif len(columns) == ci:  # the first entry left out (see `complete`)
                            space._unindexed = ci
                    else:
                        if _is_str(value):
                            lookup = _indicator_key(<object> key, <object> value)
                        if len(columns) != ci:  # the entries left out first: the dict keeps column order
                            space._index()
                        PyDict_SetItem(columns, lookup, ci)
                    keys.append(lookup)
                if cached and _is_str(value) and _is_str(key):
                    layout.pair_put(key, value, pair_hash(key, value), ci, limit)
            if hashing:  # colliding features of the row are merged, in the order of the reference
                for j in range(n):
                    if c[j] == ci:
                        v[j] += d
                        if not isfinite(v[j]):
                            return -1  # the reference names them
                        break
                else:
                    c[n] = ci
                    v[n] = d
                    n += 1
            else:
                c[n] = ci
                v[n] = d
                n += 1
        done = True
    finally:
        if dropped:
            space.n_dropped += dropped
        if cached and not hashing:
            if complete and done and layout.complete:
                layout.synced = len(keys)
            else:
                layout.complete = False
    return n
