# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled inner loops: encoding dict rows into (column, value) buffers (one row, or a mini-batch as CSR),
the sparse dot product, the per-sample prediction and gradient, the sparse and the dense (two BLAS passes)
mini-batch gradients, the per-coordinate optimizer steps, the whole per-sample update in one call
(`SampleStep`), and the message codec's hot path (`json_event`, `JsonDecoder`). The formulas live in the
docstrings of `stream_logreg.math` and `stream_logreg.optim`; the optimizer loops apply them to the
coordinates named in `cols` only, in order, with the same arithmetic wherever they are called from (the
model's tests check the fused paths bitwise against the step-by-step ones).

Arrays are passed as C-contiguous numpy arrays (float64 for values, intp for columns) and are read
through raw pointers, which costs far less per call than typed memoryviews.
"""

cimport cython
cimport numpy as cnp
import numpy as np
from cpython.dict cimport PyDict_GetItemWithError, PyDict_SetItem, PyDict_Size
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.long cimport PyLong_AsLongLongAndOverflow, PyLong_AsUnsignedLongLong
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_XDECREF, Py_XINCREF
from cpython.tuple cimport PyTuple_SET_ITEM
from cpython.type cimport PyType_IsSubtype
from cpython.pycapsule cimport PyCapsule_GetName, PyCapsule_GetPointer
from libc.float cimport DBL_MAX
from libc.math cimport NAN, exp, fabs, isfinite, log, pow, sqrt
from libc.stdlib cimport calloc, free, realloc
from libc.string cimport memcpy

cnp.import_array()


class _Indicator:
    """The first element of the column key ``(INDICATOR, k, v)`` of the indicator feature ``k=v`` (see
    ``stream_logreg.features.IndicatorKey``): no key of a user's row can contain it, so an indicator never
    shares a column with a feature whose key is a tuple or the string "k=v". A singleton, also through
    pickle and deepcopy."""

    __slots__ = ()

    def __reduce__(self):
        return "INDICATOR"

    def __repr__(self):
        return "INDICATOR"


INDICATOR = _Indicator()


cdef inline double* dptr(cnp.ndarray a):
    return <double*> cnp.PyArray_DATA(a)


cdef inline Py_ssize_t* iptr(cnp.ndarray a):
    return <Py_ssize_t*> cnp.PyArray_DATA(a)



cdef extern from "_dictnext.h":
    bint PyDict_Next "sl_dict_next" (object d, Py_ssize_t* pos, PyObject** key, PyObject** value) noexcept
    int _dict_next_check "sl_dict_next_check" (list dicts) except -1


def _dict_samples() -> list:
    """Dicts of every kind a row can be (str keys, other keys, mixed, with deleted entries, empty, an
    instance's split dict) for the self-check of the inline PyDict_Next (_dictnext.h)."""
    class Slots:
        pass
    o = Slots()
    o.a, o.b = 1, 2
    a = {f"k{i}": i for i in range(40)}
    del a["k3"], a["k39"]
    b = {i: str(i) for i in range(20)}
    del b[0]
    return [a, b, {"x": 1, 2: "y", (3,): None}, {}, dict.fromkeys("abc"), o.__dict__, {"only": 1.0}]


#: Whether the rows' loops read dicts inline (the layout confirmed at import), not through PyDict_Next.
DICT_NEXT_INLINE = bool(_dict_next_check(_dict_samples()))

cdef extern from "Python.h":
    # (the type checks and conversions the encoder shares are declared in _kernel.pxd)
    bint _is_exact_float "PyFloat_CheckExact" (PyObject* o)
    PyObject* _dict_get "PyDict_GetItemWithError" (object d, object key)  # borrowed; NULL: absent or error


cdef inline bint _lookup(dict columns, PyObject* key, PyObject* value, Py_ssize_t* ci, double* d):
    """The column and value of one `key: value` entry, if no decision is needed; False otherwise."""
    cdef PyObject* col
    if _is_float(value):
        d[0] = _float_value(value)
        if not isfinite(d[0]):
            return False
        col = _dict_get(columns, <object> key)
    elif _is_bool(value):
        d[0] = 1.0 if value == _true else 0.0
        col = _dict_get(columns, <object> key)
    elif _is_int(value):
        d[0] = _int_value(value)
        if d[0] == -1.0 and PyErr_Occurred() != NULL:  # too large for a double
            PyErr_Clear()
            return False
        col = _dict_get(columns, <object> key)
    elif _is_str(value):
        d[0] = 1.0
        col = _dict_get(columns, (INDICATOR, <object> key, <object> value))
    else:
        return False
    if col is NULL:  # not there (or an error comparing keys: the slow path raises it again)
        if PyErr_Occurred() != NULL:
            PyErr_Clear()
        return False
    ci[0] = _column_value(col)
    return True


cdef inline bint _number(PyObject* value, double* d):
    """Whether `value` is a number `encode` takes as it is (a finite float, a bool, an int that fits a
    double), with *d its value."""
    if _is_float(value):
        d[0] = _float_value(value)
        return isfinite(d[0])
    if _is_bool(value):
        d[0] = 1.0 if value == _true else 0.0
        return True
    if _is_int(value):
        d[0] = _int_value(value)
        if d[0] == -1.0 and PyErr_Occurred() != NULL:  # too large for a double
            PyErr_Clear()
            return False
        return True
    return False


#: The slots of each of the two tables of a model's cache of indicator look-ups (32 bytes each, at most half
#: of them used, each with a reference to the key and the value strings): 2^20 with a vocabulary (whose keys
#: hold those strings anyway), 2^18 with hashing. So at most 2^19 (2^17) pairs are cached, in at most 64 MB
#: (16 MB) of tables.
cdef Py_ssize_t _PAIRS_MAX = 1 << 20, _PAIRS_MAX_HASHED = 1 << 18
PAIR_CACHE_SIZE, PAIR_CACHE_SIZE_HASHED = _PAIRS_MAX, _PAIRS_MAX_HASHED


cdef extern from *:
    """
    /* A str's hash, read from the object when it is cached there (always, once computed): no call. */
    static inline Py_hash_t sl_str_hash(PyObject* o) {
        Py_hash_t h = ((PyASCIIObject*) o)->hash;
        return h != -1 ? h : PyObject_Hash(o);
    }
    """
    Py_hash_t _str_hash "sl_str_hash" (PyObject* o) noexcept  # a str's hash cannot fail


cdef extern from "Python.h":
    void _prefetch "__builtin_prefetch" (const void* p) noexcept nogil
    void _prefetch_w "sl_prefetch_w" (const void* p) noexcept nogil


cdef extern from *:
    """
    #define sl_prefetch_w(p) __builtin_prefetch((p), 1)
    """


cdef extern from *:
    """
    #include <stdlib.h>
    #include <string.h>
    #include <sys/mman.h>
    #include <stdint.h>
    /* n zeroed bytes; from 2 MiB on, a private anonymous mapping aligned to 2 MiB and in huge pages where
       the system allows them (a table looked up at random costs a TLB miss per look-up in 4 KiB pages, as
       numpy knows): the kernel zeroes its pages when they are first touched, so the table is not written
       twice (calloc's memset, or aligned_alloc's and memset's, on top of the kernel's zeroing). Released
       by sl_table_free with the same n. */
    static void* sl_table_alloc(size_t n) {
        const size_t huge = (size_t) 1 << 21;
        unsigned char* p;
        size_t head;
        if (n < huge)
            return calloc(n, 1);
        n = (n + huge - 1) & ~(huge - 1);
        p = (unsigned char*) mmap(NULL, n + huge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == (unsigned char*) MAP_FAILED)
            return NULL;
        head = (huge - ((uintptr_t) p & (huge - 1))) & (huge - 1);
        if (head)
            munmap(p, head);
        if (huge - head)
            munmap(p + head + n, huge - head);
        p += head;
    #ifdef MADV_HUGEPAGE
        madvise(p, n, MADV_HUGEPAGE);
    #endif
        return p;
    }
    static void sl_table_free(void* p, size_t n) {
        const size_t huge = (size_t) 1 << 21;
        if (p == NULL)
            return;
        if (n < huge)
            free(p);
        else
            munmap(p, (n + huge - 1) & ~(huge - 1));
    }
    """
    void* _table_alloc "sl_table_alloc" (size_t n) noexcept nogil
    void _table_free "sl_table_free" (void* p, size_t n) noexcept nogil


cdef extern from *:
    """
    #if defined(__linux__)
    #ifndef MREMAP_MAYMOVE
    #define MREMAP_MAYMOVE 1
    #endif
    #ifndef MREMAP_FIXED
    #define MREMAP_FIXED 2
    #endif
    #endif
    /* The table p of old_n bytes (sl_table_alloc's) as one of new_n > old_n bytes, p released: the old
       bytes kept, the new ones zero. From 2 MiB on (a mapping) on Linux, its pages are moved, not copied:
       mremap onto the head of a new mapping (aligned, in huge pages where allowed), whose tail the kernel
       zeroes when first touched; else (or if mremap refuses) a copy. NULL (p untouched) without memory. */
    static void* sl_table_grow(void* p, size_t old_n, size_t new_n) {
        const size_t huge = (size_t) 1 << 21;
        void* q = sl_table_alloc(new_n);
        if (q == NULL)
            return NULL;
    #if defined(__linux__)
        if (old_n >= huge && new_n >= huge) {
            size_t old_len = (old_n + huge - 1) & ~(huge - 1);
            if (mremap(p, old_len, old_len, MREMAP_MAYMOVE | MREMAP_FIXED, q) != MAP_FAILED) {
    #ifdef MADV_HUGEPAGE
                madvise(q, old_len, MADV_HUGEPAGE);
    #endif
                return q;
            }
        }
    #endif
        if (old_n)
            memcpy(q, p, old_n);
        sl_table_free(p, old_n);
        return q;
    }
    """
    void* _table_grow "sl_table_grow" (void* p, size_t old_n, size_t new_n) noexcept nogil


cdef extern from "Python.h":
    Py_ssize_t Py_REFCNT(object o)


@cython.final
@cython.auto_pickle(False)
cdef class _Table:
    """The memory of a state array that `grown` enlarges (`sl_table_alloc`'s), released with the last
    array on it."""
    cdef void* p
    cdef size_t n

    def __dealloc__(self):
        _table_free(self.p, self.n)


cdef cnp.ndarray _on_table(_Table t, Py_ssize_t rows, Py_ssize_t width):
    """The float64 array (rows,) (width 0) or (rows, width) on the memory of `t`."""
    cdef cnp.npy_intp dims[2]
    dims[0], dims[1] = rows, width
    cdef cnp.ndarray arr = cnp.PyArray_SimpleNewFromData(1 if width == 0 else 2, dims, cnp.NPY_DOUBLE, t.p)
    cnp.set_array_base(arr, t)
    return arr


def grown(object owner, str name, Py_ssize_t rows) -> None:
    """Set ``owner.<name>``, a float64 array of shape (m,) or (m, k) (C-contiguous), to one of ``rows``
    rows if m < rows (else leave it): the same values, then rows of 0.0. Its memory is a table of this module's (made
    here the first time: mapped pages from 2 MiB on, which the kernel zeroes when first touched), which
    the next growth enlarges without copying when nothing else holds the array or its memory (pages moved:
    ``sl_table_grow``); when something does (a view, a reference kept), the array is copied as
    ``np.zeros`` and assignment would, and the old one stays valid. Memory: the array's bytes rounded up to
    2 MiB, untouched pages not resident; the model doubles its capacity, so at most twice the columns in
    use are mapped."""
    old = getattr(owner, name)
    if (type(old) is not np.ndarray or cnp.PyArray_TYPE(old) != cnp.NPY_DOUBLE
            or not cnp.PyArray_IS_C_CONTIGUOUS(old) or not 1 <= cnp.PyArray_NDIM(old) <= 2):
        raise TypeError("grown: a C-contiguous float64 array of 1 or 2 dimensions")
    cdef cnp.ndarray a = <cnp.ndarray> old
    cdef Py_ssize_t m = cnp.PyArray_DIM(a, 0)
    cdef Py_ssize_t width = 0 if cnp.PyArray_NDIM(a) == 1 else cnp.PyArray_DIM(a, 1)
    cdef size_t row_bytes = sizeof(double) * (1 if width == 0 else width)
    if rows <= m:  # it has them already
        return
    cdef size_t old_n = m * row_bytes, new_n = rows * row_bytes
    cdef _Table t
    cdef _Table base = None
    cdef void* q
    cdef PyObject* owner_of_memory = cnp.PyArray_BASE(a)
    if owner_of_memory != NULL and type(<object> owner_of_memory) is _Table:
        base = <_Table> owner_of_memory
    del old  # (a holds it)
    # Moved only if nothing but `owner` holds the array (its attribute and `a`) and nothing but the array
    # holds its table (a view of it would), and the array is the whole table from its start.
    if (base is not None and Py_REFCNT(a) == 2 and Py_REFCNT(base) == 2 and base.p == cnp.PyArray_DATA(a)
            and base.n == old_n):
        q = _table_grow(base.p, base.n, new_n)
        if q == NULL:
            raise MemoryError()
        t = _Table.__new__(_Table)
        t.p, t.n = q, new_n
        base.p, base.n = NULL, 0  # its pages are the new table's now: `a` must not be read again
        setattr(owner, name, _on_table(t, rows, width))
        return
    t = _Table.__new__(_Table)
    t.p = _table_alloc(new_n)
    if t.p == NULL:
        raise MemoryError()
    t.n = new_n
    if old_n:
        memcpy(t.p, cnp.PyArray_DATA(a), old_n)
    setattr(owner, name, _on_table(t, rows, width))


cdef extern from *:
    """
    /* Hints into the hash table of a dict (its memory only; CPython 3.11-3.13's layout of a combined
       PyDictKeysObject: an 8-byte reference count, the log2 of the slots and of the index bytes, the kind,
       the indices from byte 32, then the entries, 24 bytes each for keys of any type). Prefetches only, from
       addresses inside the table: with another layout they do nothing. */
    #if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030E0000 && !defined(Py_GIL_DISABLED)
    static inline void sl_dict_hint(PyObject* d, Py_hash_t h, int entry) {
        const unsigned char* k = (const unsigned char*) ((PyDictObject*) d)->ma_keys;
        unsigned ls, width;
        size_t slot;
        Py_ssize_t ix;
        if (((PyDictObject*) d)->ma_values != NULL)
            return;
        ls = k[8];
        width = (unsigned) k[9] - ls;  /* log2 of the bytes of an index */
        if (ls < 3 || ls > 40 || width > 3)
            return;
        slot = (size_t) h & (((size_t) 1 << ls) - 1);
        if (!entry) {
            __builtin_prefetch(k + 32 + (slot << width));
            return;
        }
        if (k[10] != 0)  /* not DICT_KEYS_GENERAL */
            return;
        switch (width) {
            case 0: ix = ((const int8_t*) (k + 32))[slot]; break;
            case 1: ix = ((const int16_t*) (k + 32))[slot]; break;
            case 2: ix = ((const int32_t*) (k + 32))[slot]; break;
            default: ix = ((const int64_t*) (k + 32))[slot]; break;
        }
        if (ix >= 0 && ix < ((Py_ssize_t) 2 << ls) / 3)
            __builtin_prefetch(k + 32 + ((size_t) 1 << k[9]) + 24 * (size_t) ix);
    }
    #else
    static inline void sl_dict_hint(PyObject* d, Py_hash_t h, int entry) { (void) d; (void) h; (void) entry; }
    #endif

    /* hash((I, k, v)) of a tuple whose items hash to hi, hk and hv: CPython's tuplehash (xxHash, 3.8+). */
    static inline Py_hash_t sl_triple_hash(Py_hash_t hi, Py_hash_t hk, Py_hash_t hv) {
        const Py_uhash_t p1 = 11400714785074694791ULL, p2 = 14029467366897019727ULL, p5 = 2870177450012600261ULL;
        Py_uhash_t acc = p5, lanes[3] = {(Py_uhash_t) hi, (Py_uhash_t) hk, (Py_uhash_t) hv};
        for (int i = 0; i < 3; i++) {
            acc += lanes[i] * p2;
            acc = (acc << 31) | (acc >> 33);
            acc *= p1;
        }
        acc += 3 ^ (p5 ^ 3527539UL);
        return acc == (Py_uhash_t) -1 ? 1546275796 : (Py_hash_t) acc;
    }
    """
    void _dict_hint "sl_dict_hint" (PyObject* d, Py_hash_t h, int entry) noexcept
    Py_hash_t _triple_hash "sl_triple_hash" (Py_hash_t hi, Py_hash_t hk, Py_hash_t hv) noexcept


cdef extern from *:
    """
    /* d[key] = value for a key whose hash is h: without computing it again where CPython has the call
       (3.11, 3.12), else as PyDict_SetItem. */
    #if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030D0000
    #define sl_set_known(d, key, value, h) _PyDict_SetItem_KnownHash((d), (key), (value), (h))
    #else
    #define sl_set_known(d, key, value, h) PyDict_SetItem((d), (key), (value))
    #endif
    """
    int _set_known "sl_set_known" (object d, object key, object value, Py_hash_t h) except -1


cdef Py_hash_t _INDICATOR_HASH = hash(INDICATOR)


cdef Py_hash_t indicator_hash(PyObject* k, PyObject* v) noexcept:
    """hash(IndicatorKey(k, v)) for str k and v (a tuple's hash: IndicatorKey does not change it)."""
    return _triple_hash(_INDICATOR_HASH, _str_hash(k), _str_hash(v))


cdef int set_indicator(dict columns, object key, PyObject* k, PyObject* v, object col) except -1:
    """columns[key] = col, for key = IndicatorKey(k, v) (str k and v), its hash not computed again."""
    return _set_known(columns, key, col, indicator_hash(k, v))


cdef void indicator_hint(dict columns, PyObject* k, PyObject* v, bint entry) noexcept:
    """Ask the CPU for what inserting the indicator key (INDICATOR, k, v) (str k and v) into the feature
    dict `columns` will read first: its slot in the dict's index, or (`entry`, the index in cache) the
    entry that slot names. A hint only (see sl_dict_hint)."""
    _dict_hint(<PyObject*> columns, indicator_hash(k, v), entry)


cdef Py_hash_t pair_hash(PyObject* k, PyObject* v) noexcept:
    """A hash of the pair of str objects (k, v), from their cached hashes (only the cache's slot depends on
    it, never a column)."""
    cdef unsigned long long h = (<unsigned long long> _str_hash(v)) * 0x9E3779B97F4A7C15ULL
    h ^= <unsigned long long> _str_hash(k)
    h ^= h >> 31
    h *= 0xD6E8FEB86659FD93ULL
    h ^= h >> 32
    return <Py_hash_t> h


cdef Py_ssize_t pair_limit(bint hashed) noexcept:
    """The most entries of the pair cache of a model with a vocabulary, or with hashing."""
    return _PAIRS_MAX_HASHED if hashed else _PAIRS_MAX


cdef inline bint _same_str(PyObject* a, PyObject* b) noexcept:
    return a == b or (<str> a) == (<str> b)


@cython.final
cdef class RowLayout:
    """The model's cache of column look-ups, two parts:

    - the keys of the last rows encoded, by position, with their columns: a row whose keys are the same
      objects in the same order (the rows of one producer, parsed by orjson, which reuses its key strings)
      skips the dict look-ups of its numeric entries;
    - the columns of indicators ``k=v`` of str keys and values, in a table of pairs (k, v) → column
      (open addressing, linear probing: one cache line a look-up, mostly), that is looked up before the
      feature dict: the dict's key ``(INDICATOR, k, v)`` costs a tuple, its hash and a comparison, and the
      dict's entry, its key and its column are three more places in memory (with hashing, the pair cache
      is the look-up: a pair not in it costs a BLAKE2b). Bounded, and least recently used first out, in
      two generations: a table of at most `PAIR_CACHE_SIZE` slots (with hashing
      `PAIR_CACHE_SIZE_HASHED`, or `max_pairs`), at most half full, and the previous such table; a pair
      found in the previous one is copied to the current one, and when the current one is full it becomes
      the previous one (which is dropped) and a new one starts empty. So a stream with more distinct
      values than the bound keeps the ones it sees often, instead of starting again empty; the cache holds
      at most the bound's number of pairs (half in each table), and its memory is at most twice a full
      table (32 bytes a slot) and the pairs' strings. With a vocabulary
      the cache is `complete` while it has seen every indicator created (it started with the vocabulary
      empty, forgot nothing, and the vocabulary still has the `synced` columns it knows of): then a pair
      it does not hold is new, and the dict need not be asked. The look-ups of a row are prefetched.

    The keys are held, so the same pointer is the same key. Valid as long as a key's column never changes:
    the model clears it when it rolls its feature space back. A copy (pickle, deepcopy) is an empty layout.
    """

    def __cinit__(self, Py_ssize_t max_pairs=0):
        """`max_pairs` > 0: a smaller bound on the pair cache than the default."""
        self.synced = -1
        self.max_pairs = max_pairs

    def __dealloc__(self):
        self.clear()
        free(self.keys)
        free(self.cols)
        _table_free(self.pairs, self.pairs_size * sizeof(PairEntry))
        _table_free(self.older, self.older_size * sizeof(PairEntry))

    def __reduce__(self):
        return RowLayout, ()

    def __len__(self):
        return self.n

    cpdef clear(self):
        """Forget every key."""
        cdef Py_ssize_t i
        cdef PyObject* key
        for i in range(self.n):
            key = self.keys[i]
            self.keys[i] = NULL
            Py_XDECREF(key)
        self.n = 0
        if self.n_current:
            _drop_pairs(self.pairs, self.pairs_size)
        if self.n_older:
            _drop_pairs(self.older, self.older_size)
        self.n_pairs = self.n_current = self.n_older = 0
        self.complete, self.synced = False, -1

    def fill(self, list keys not None):
        """Start again with the indicators of str keys and values among a vocabulary's `keys` (key i is
        column i) cached, as many as one table holds: if that is all of them, the cache is `complete`, as if
        it had seen them created (a model restored from a checkpoint then creates its new values without
        asking the dict first). Returns whether it is."""
        cdef Py_ssize_t col = 0, limit = _PAIRS_MAX
        cdef bint complete = True
        cdef PyObject* k
        cdef PyObject* v
        if 0 < self.max_pairs < limit:
            limit = self.max_pairs
        self.clear()
        for key in keys:
            if isinstance(key, tuple) and len(<tuple> key) == 3 \
                    and (<tuple> key)[0] is INDICATOR:
                k, v = <PyObject*> (<tuple> key)[1], <PyObject*> (<tuple> key)[2]
                if _is_str(k) and _is_str(v):
                    if 2 * (self.n_current + 1) > limit:
                        complete = False
                        break
                    self.pair_put(k, v, pair_hash(k, v), col, limit)
            col += 1
        if complete:
            self.complete, self.synced = True, len(keys)
        return complete

    cdef int put(self, Py_ssize_t i, PyObject* key, Py_ssize_t col) except -1:
        """Remember that the key at position i is `key`, of column `col`."""
        cdef Py_ssize_t cap
        cdef PyObject* old
        cdef void* mem
        if i >= self.cap:
            cap = max(2 * self.cap, i + 1, 32)
            mem = realloc(self.keys, cap * sizeof(PyObject*))
            if mem == NULL:
                raise MemoryError()
            self.keys = <PyObject**> mem
            mem = realloc(self.cols, cap * sizeof(Py_ssize_t))
            if mem == NULL:
                raise MemoryError()
            self.cols = <Py_ssize_t*> mem
            self.cap = cap
        while self.n <= i:
            self.keys[self.n] = NULL
            self.n += 1
        Py_XINCREF(key)
        old = self.keys[i]
        self.keys[i] = key
        self.cols[i] = col
        Py_XDECREF(old)
        return 0

    cdef void prefetch(self, dict x) noexcept:
        """Ask the CPU for what the look-ups of row x's indicators will read, all at once (the value
        strings, for their hashes, then the cache's slots) rather than one miss after the other."""
        cdef Py_ssize_t pos = 0, m = 0, i
        cdef PyObject* key
        cdef PyObject* value
        cdef PyObject* ks[64]  # the row's entries, read once (no code runs between the two loops)
        cdef PyObject* vs[64]
        cdef size_t mask, older_mask, h
        if self.n_pairs == 0:
            return
        while PyDict_Next(x, &pos, &key, &value):
            _prefetch(value)
            if m < 64:
                ks[m], vs[m] = key, value
            m += 1
        mask = <size_t> (self.pairs_size - 1)
        older_mask = <size_t> (self.older_size - 1)
        pos = 0
        i = 0
        while (i < m if m <= 64 else PyDict_Next(x, &pos, &key, &value)):
            if m <= 64:
                key, value = ks[i], vs[i]
                i += 1
            if _is_str(value) and _is_str(key):
                h = <size_t> pair_hash(key, value)
                _prefetch(self.pairs + (h & mask))
                if self.n_older:
                    _prefetch(self.older + (h & older_mask))

    cdef Py_ssize_t pair_get(self, PyObject* k, PyObject* v, Py_hash_t h) noexcept:
        """The column of the indicator k=v (str k and v, h = pair_hash(k, v)) if cached, else -1; one
        found in the previous table is copied to the current one (if it has room without growing)."""
        cdef Py_ssize_t col
        if self.n_pairs == 0:
            return -1
        col = _probe(self.pairs, self.pairs_size, k, v, h) if self.n_current else -1
        if col >= 0 or self.n_older == 0:
            return col
        col = _probe(self.older, self.older_size, k, v, h)
        if col >= 0:
            if (self.n_current + 1) * 2 > self.pairs_size:
                if self.older_size != self.pairs_size:
                    return col  # the current table will grow first (pair_put)
                self._swap()  # full, at the bound (as the previous one was): a new generation
            self._insert(k, v, h, col)
        return col

    cdef int pair_put(self, PyObject* k, PyObject* v, Py_hash_t h, Py_ssize_t col, Py_ssize_t limit) except -1:
        """Cache the column of k=v (not cached yet), in a table of at most `limit` slots, at most half
        full: it doubles until then, and then becomes the previous table (the one before is forgotten, and
        the cache is no longer `complete`) and a new one starts empty."""
        cdef PairEntry* old
        cdef Py_ssize_t size = self.pairs_size, old_size = self.pairs_size, i
        if 0 < self.max_pairs < limit:
            limit = self.max_pairs
        if size == 0 or (self.n_current + 1) * 2 > size:
            if size and 2 * size > limit:  # at the bound
                self._rotate()
            else:
                old = self.pairs
                size = 2 * size if size else 64
                while size > limit and size > 2:  # a power of two
                    size //= 2
                self.pairs = <PairEntry*> _table_alloc(size * sizeof(PairEntry))
                if self.pairs == NULL:
                    self.pairs = old
                    raise MemoryError()
                self.pairs_size = size
                self.n_pairs -= self.n_current
                self.n_current = 0
                if old != NULL:
                    for i in range(old_size):
                        if old[i].k != NULL:
                            self._insert(old[i].k, old[i].v, old[i].h, old[i].col)
                            Py_XDECREF(old[i].k)
                            Py_XDECREF(old[i].v)
                    _table_free(old, old_size * sizeof(PairEntry))
        self._insert(k, v, h, col)
        return 0

    cdef int _rotate(self) except -1:
        """The current table (full) becomes the previous one; the previous one's pairs are forgotten, and
        its memory is the new, empty, current table."""
        if self.older == NULL or self.older_size != self.pairs_size:
            if self.n_older:
                _drop_pairs(self.older, self.older_size)
                self.n_pairs -= self.n_older
                self.n_older = 0
            _table_free(self.older, self.older_size * sizeof(PairEntry))
            self.older, self.older_size = NULL, 0
            self.older = <PairEntry*> _table_alloc(self.pairs_size * sizeof(PairEntry))
            if self.older == NULL:
                raise MemoryError()
            self.older_size = self.pairs_size
        self._swap()
        return 0

    cdef void _swap(self) noexcept:
        """`_rotate` when the previous table has the current one's size (no memory to allocate)."""
        cdef PairEntry* fresh = self.older
        if self.n_older:
            _drop_pairs(self.older, self.older_size)
            self.n_pairs -= self.n_older
        self.older, self.n_older = self.pairs, self.n_current
        self.pairs, self.n_current = fresh, 0
        self.complete = False

    cdef void _insert(self, PyObject* k, PyObject* v, Py_hash_t h, Py_ssize_t col) noexcept:
        cdef size_t mask = <size_t> (self.pairs_size - 1)
        cdef size_t i = <size_t> h & mask
        while self.pairs[i].k != NULL:
            i = (i + 1) & mask
        Py_XINCREF(k)
        Py_XINCREF(v)
        self.pairs[i].k, self.pairs[i].v, self.pairs[i].h, self.pairs[i].col = k, v, h, col
        self.n_current += 1
        self.n_pairs += 1


cdef inline Py_ssize_t _probe(PairEntry* t, Py_ssize_t size, PyObject* k, PyObject* v, Py_hash_t h) noexcept:
    """The column of (k, v) in the table t of `size` slots (a power of two, at most half full), or -1."""
    cdef size_t mask = <size_t> (size - 1)
    cdef size_t i = <size_t> h & mask
    cdef PairEntry* e
    while True:  # linear probing
        e = t + i
        if e.k == NULL:
            return -1
        if e.h == h and _same_str(e.v, v) and _same_str(e.k, k):
            return e.col
        i = (i + 1) & mask


cdef void _drop_pairs(PairEntry* t, Py_ssize_t size) noexcept:
    """Empty the table t of `size` slots, releasing its strings."""
    cdef Py_ssize_t i
    for i in range(size):
        if t[i].k != NULL:
            Py_XDECREF(t[i].k)
            Py_XDECREF(t[i].v)
            t[i].k = NULL
            t[i].v = NULL


cdef inline void _prefetch_row(double* r, Py_ssize_t width) noexcept nogil:
    """Ask the CPU for the `width` doubles at r: every cache line of them (a row of 11 may span three)."""
    cdef Py_ssize_t j
    for j in range(0, width, 8):
        _prefetch(r + j)
    if width > 1:
        _prefetch(r + width - 1)


cdef inline void _prefetch_rows(double* a, Py_ssize_t* c, Py_ssize_t n, Py_ssize_t width) noexcept nogil:
    """Ask the CPU for the rows a[c[i] * width : (c[i] + 1) * width] of a row's columns, all at once (the
    weights of a high-cardinality vocabulary are mostly out of the caches)."""
    cdef Py_ssize_t i
    for i in range(n):
        _prefetch_row(a + c[i] * width, width)


cdef Py_ssize_t _new_row(dict x, Py_ssize_t pos, Py_ssize_t i, RowLayout layout, Py_ssize_t* c, Py_ssize_t cap,
                        bint merge, double* rows, Py_ssize_t width, dict columns, bint hint) noexcept:
    """Row x goes to the feature space's encoder: it has a new indicator, entry i (the one before `pos`).
    With `rows`: -3, having prefetched the rows of `width` doubles at `rows` of the indicators cached among
    the entries after it (their misses then overlap the encoder's work instead of the update's: a
    click-through row with a few new values has most of its known ones after the first new one), and
    written what the encoder's look-up would find (`encode_into`'s `looked_up`): c[j], for each entry j
    of a str key and value, the pair cache's column or -1 (the entries before i are in c already, unless
    `merge` merged some: then they are looked up again, in the caches now). -1 without `rows`, or if the
    row does not fit the `cap` entries at c. With `hint` (a vocabulary whose dict the encoder will ask),
    the slots of the feature dict `columns` that the new indicators will take are prefetched too
    (`indicator_hint`)."""
    cdef PyObject* key
    cdef PyObject* value
    cdef Py_ssize_t ci, j = 0, q = 0
    if rows == NULL or PyDict_Size(x) > cap:
        return -1
    if merge:
        while j < i and PyDict_Next(x, &q, &key, &value):
            c[j] = layout.pair_get(key, value, pair_hash(key, value)) if _is_str(value) and _is_str(key) else -1
            j += 1
    c[i] = -1
    j = i + 1
    while PyDict_Next(x, &pos, &key, &value):
        ci = -1
        if _is_str(value) and _is_str(key):
            ci = layout.pair_get(key, value, pair_hash(key, value))
            if ci >= 0:
                _prefetch_row(rows + ci * width, width)
            elif hint:
                indicator_hint(columns, key, value, False)
        c[j] = ci
        j += 1
    return -3


cdef Py_ssize_t _encode_row(dict x, dict columns, Py_ssize_t* c, double* v, Py_ssize_t cap, bint merge,
                            RowLayout layout, double* rows=NULL, Py_ssize_t width=0, Py_ssize_t n_vocab=-1) except -2:
    """`encode` into the `cap` entries at c and v; with a `layout`, numeric entries whose key is the one
    at the same position in the layout take its column, and the others update it; indicators of str keys
    and values are looked up in its pair cache first, and cached. With `rows`, the row of `width` doubles
    of each column found is prefetched at once (so that its misses overlap the rest of the encoding), and
    a row with a new indicator returns -3 with the pair cache's answers in c (see `_new_row`). `n_vocab`:
    the vocabulary's number of columns, if `columns` may lack the entries the encoder left out while the
    pair cache is complete (a feature space's own dict, see `FeatureSpace.columns`), else -1 (it has
    them all: len(columns))."""
    cdef Py_ssize_t pos = 0, n = 0, i = 0, j
    cdef PyObject* key
    cdef PyObject* value
    cdef double d = 0.0
    cdef Py_ssize_t ci = 0
    cdef Py_hash_t h
    if layout is not None:
        layout.prefetch(x)
    if n_vocab < 0:
        n_vocab = len(columns)
    while PyDict_Next(x, &pos, &key, &value):
        if n >= cap:
            return -1
        if layout is not None and _is_str(value) and _is_str(key):  # an indicator: the pair cache first
            d = 1.0
            h = pair_hash(key, value)
            ci = layout.pair_get(key, value, h)
            if ci < 0:
                if not merge and layout.complete and layout.synced == n_vocab:  # not cached, so new
                    return _new_row(x, pos, i, layout, c, cap, merge, rows, width, columns, False)
                if not _lookup(columns, key, value, &ci, &d):
                    return _new_row(x, pos, i, layout, c, cap, merge, rows, width, columns, not merge)
                layout.pair_put(key, value, h, ci, pair_limit(merge))
        elif layout is not None and i < layout.n and layout.keys[i] == key and _number(value, &d):
            ci = layout.cols[i]
        elif not _lookup(columns, key, value, &ci, &d):
            return -1
        elif layout is not None and not _is_str(value):
            layout.put(i, key, ci)
        i += 1
        if rows != NULL:
            _prefetch_row(rows + ci * width, width)
        if merge:
            for j in range(n):
                if c[j] == ci:
                    v[j] += d
                    if not isfinite(v[j]):  # colliding values whose sum overflows: the slow path says so
                        return -1
                    break
            else:
                c[n] = ci
                v[n] = d
                n += 1
        else:
            c[n] = ci
            v[n] = d
            n += 1
    return n


def encode(dict x not None, dict columns, cnp.ndarray cols, cnp.ndarray vals, bint merge):
    """Write the row `x` as columns and values into the buffers; return how many, or -1.

    Handles what needs no decision: keys already in `columns` with a finite float, int or bool value,
    and strings whose indicator key `(INDICATOR, k, v)` is already in `columns`. Anything else (a new key, a
    non-finite or non-numeric value, a full buffer) returns -1 and the caller takes the slow path,
    which grows the feature space or raises. With `merge`, repeated columns (hash collisions) are
    summed into one entry.
    """
    return _encode_row(x, columns, iptr(cols), dptr(vals), cnp.PyArray_DIM(cols, 0), merge, None)


def encode_rows(list xs, Py_ssize_t start, dict columns, cnp.ndarray cols, cnp.ndarray vals,
                cnp.ndarray indptr, bint merge, RowLayout layout, Py_ssize_t n_vocab=-1):
    """`encode` the rows xs[start:] one after the other into the buffers (CSR): row i's entries go to
    cols/vals[indptr[i]:indptr[i + 1]]; the caller sets indptr[start]. `layout` (or None) as in
    `RowLayout`, `n_vocab` as in `_encode_row`.

    Stops at the first row that `encode` leaves to the slow path (or that is not a dict) and returns its
    index; returns len(xs) when every row is written.
    """
    cdef Py_ssize_t m = len(xs), cap = cnp.PyArray_DIM(cols, 0), i, n
    cdef Py_ssize_t* c = iptr(cols)
    cdef double* v = dptr(vals)
    cdef Py_ssize_t* ip = iptr(indptr)
    cdef object x
    if cnp.PyArray_DIM(indptr, 0) < m + 1 or cnp.PyArray_DIM(vals, 0) < cap or not 0 <= start <= m:
        raise ValueError("encode_rows: inconsistent array lengths")
    for i in range(start, m):
        x = xs[i]
        if type(x) is not dict or not 0 <= ip[i] <= cap:
            return i
        n = _encode_row(<dict> x, columns, c + ip[i], v + ip[i], cap - ip[i], merge, layout, NULL, 0, n_vocab)
        if n < 0:
            return i
        ip[i + 1] = ip[i] + n
    return m


@cython.auto_pickle(False)
@cython.final
cdef class JsonDecoder:
    """`JsonCodec.decode` as one compiled callable, for hot loops: the same result for every value.

    A bytes value of at most `max_bytes` is parsed with `loads` and goes through `json_event`; a message
    that is valid as it is comes back as the event without any Python-level call. Anything else takes the
    codec's own way: `check(doc)` when `json_event` declines a parsed document, `decode(value)` for
    another type of value, an oversize one or one `loads` refuses (which it parses again, to say why).
    """

    cdef object loads, check, decode
    cdef str x_field, y_field, id_field
    cdef Py_ssize_t max_features, max_bytes
    cdef type event

    def __init__(self, object loads, str x_field not None, str y_field not None, str id_field not None,
                 Py_ssize_t max_features, Py_ssize_t max_bytes, type event not None, object check,
                 object decode):
        if not PyType_IsSubtype(event, tuple):
            raise TypeError("event must be a tuple subclass")
        self.loads, self.check, self.decode = loads, check, decode
        self.x_field, self.y_field, self.id_field = x_field, y_field, id_field
        self.max_features, self.max_bytes, self.event = max_features, max_bytes, event

    def __call__(self, value):
        cdef object doc, ev
        if type(value) is not bytes or len(<bytes> value) > self.max_bytes:
            return self.decode(value)
        try:
            doc = self.loads(value)
        except Exception:  # the codec says why (it parses again)
            return self.decode(value)
        ev = json_event(doc, self.x_field, self.y_field, self.id_field, self.max_features, self.event)
        if ev is None:
            return self.check(doc)
        return ev


cdef double _dot_wide(double* wp, Py_ssize_t* c, double* v, Py_ssize_t n) noexcept nogil:
    """Σ_i w[c[i]] · v[i] accumulated in extended precision (x87 long double: products of doubles and
    their sums cannot overflow there), rounded once to a double: ±inf if the true sum is beyond the
    double range, never NaN for finite inputs."""
    cdef long double s = 0.0
    cdef Py_ssize_t i
    for i in range(n):
        s += (<long double> wp[c[i]]) * (<long double> v[i])
    return <double> s


cdef inline double _dot(double* wp, Py_ssize_t* c, double* v, Py_ssize_t n) noexcept nogil:
    """Σ_i w[c[i]] · v[i] in double, in order; when that is not finite (an overflow, or inf − inf = NaN
    between two overflowed products) it is computed again by `_dot_wide`. For finite w and v the result
    is the correctly signed logit, ±inf at worst (σ(±inf) is 1 or 0), and bitwise the plain sum whenever
    that is finite."""
    cdef double s = 0.0
    cdef Py_ssize_t i
    for i in range(n):
        s += wp[c[i]] * v[i]
    if isfinite(s):
        return s
    return _dot_wide(wp, c, v, n)


def dot_dict(dict x not None, dict columns, cnp.ndarray w):
    """Σ w[column(k)] · v over the entries `k: v` of row `x`, in the row's order; NaN if an entry needs
    the slow path (an unknown key, a non-finite or non-numeric value): see `encode`."""
    cdef Py_ssize_t pos = 0, ci = 0
    cdef PyObject* key
    cdef PyObject* value
    cdef double* wp = dptr(w)
    cdef double d = 0.0, s = 0.0
    while PyDict_Next(x, &pos, &key, &value):
        if not _lookup(columns, key, value, &ci, &d):
            return float("nan")
        s += wp[ci] * d
    if not isfinite(s):  # an overflow: `dot` on the encoded row sums it safely
        return float("nan")
    return s


cdef inline double _sigmoid(double z) noexcept nogil:
    """σ(z) with the branches of `stream_logreg.math.sigmoid_scalar` (no overflow for any z)."""
    cdef double e
    if z >= 0.0:
        return 1.0 / (1.0 + exp(-z))
    e = exp(z)
    return e / (1.0 + e)


cdef inline double _clip(double g, double clip) noexcept nogil:
    """g clamped to [−clip, clip] (River's clip_gradient; NaN stays NaN)."""
    if g > clip:
        return clip
    if g < -clip:
        return -clip
    return g


cdef struct Distinct:  # a batch's distinct columns: open addressing (linear probing) of index + 1, 0 empty
    Py_ssize_t* table
    Py_ssize_t mask  # the table's size − 1 (a power of two, at least twice the entries)
    int shift        # 64 − log2(size), for Fibonacci hashing


cdef inline int _distinct_init(Distinct* d, Py_ssize_t nnz) except -1 nogil:
    """A zeroed table for the distinct columns of `nnz` entries (the caller frees `d.table`)."""
    cdef Py_ssize_t size = 16
    cdef int bits = 4
    while size < 2 * nnz:
        size <<= 1
        bits += 1
    d.table = <Py_ssize_t*> calloc(size, sizeof(Py_ssize_t))
    if d.table == NULL:
        raise MemoryError()
    d.mask, d.shift = size - 1, 64 - bits
    return 0


cdef inline Py_ssize_t _distinct_index(Distinct d, Py_ssize_t* cols, Py_ssize_t* n, Py_ssize_t j,
                                       double* sums) noexcept nogil:
    """The index of column j among the distinct columns so far, cols[:n[0]] (in order of first appearance);
    a new one is appended: cols[n[0]] ← j, sums[n[0]] ← 0.0 (unless sums is NULL), n[0] += 1."""
    cdef Py_ssize_t slot = <Py_ssize_t> ((<unsigned long long> j * 11400714819323198485ULL) >> d.shift)
    while d.table[slot] != 0 and cols[d.table[slot] - 1] != j:
        slot = (slot + 1) & d.mask
    if d.table[slot] == 0:
        cols[n[0]] = j
        if sums != NULL:
            sums[n[0]] = 0.0
        n[0] += 1
        d.table[slot] = n[0]
    return d.table[slot] - 1


cdef inline double _sample_gradient(double* wp, Py_ssize_t* c, double* v, Py_ssize_t n, double b, double y,
                                    double sample_weight, double class_weight, double l2, double clip,
                                    double* o, double* g_out) noexcept nogil:
    """z = Σ_i w[c[i]] · v[i] + b;  p = σ(z);  g = clip((p − y) · s · c);  o[i] = g · v[i] + l2 · w[c[i]];  *g_out = g.

    Returns p, or NaN if g or any o[i] is not finite.
    """
    cdef double z = 0.0, p, g
    cdef Py_ssize_t i
    cdef bint ok
    z = _dot(wp, c, v, n)
    p = _sigmoid(z + b)
    g = _clip((p - y) * sample_weight * class_weight, clip)
    ok = isfinite(g)
    if l2 == 0.0:
        for i in range(n):
            o[i] = g * v[i]
            ok = ok and isfinite(o[i])
    else:
        for i in range(n):
            o[i] = g * v[i] + l2 * wp[c[i]]
            ok = ok and isfinite(o[i])
    g_out[0] = g
    return p if ok else NAN


def predict_gradient(cnp.ndarray w, cnp.ndarray cols, cnp.ndarray vals, Py_ssize_t n, cnp.ndarray b,
                     double y, double sample_weight, double class_weight, double l2, double clip,
                     cnp.ndarray out, cnp.ndarray g_out):
    """The per-sample step of the textbook formula (m = 1) on the row held in the buffers, and its prediction:

    z = Σ_i w[cols[i]] · vals[i] + b[0];  p = σ(z);  g = clip((p − y) · s · c) to [−clip, clip];
    out[i] = g · vals[i] + l2 · w[cols[i]];  g_out[0] = g.  σ as in `stream_logreg.math.sigmoid_scalar`.
    Returns p, the probability before the update (bitwise what `dot` + `sigmoid_scalar` give), or NaN if g
    or any out[i] is not finite (nothing is written to w or b).
    """
    return _sample_gradient(dptr(w), iptr(cols), dptr(vals), n, dptr(b)[0], y, sample_weight, class_weight,
                            l2, clip, dptr(out), dptr(g_out))


# The message codec's hot path (stream_logreg.codec): a parsed JSON document to an Event in one call.

cdef inline bint _plain_value(PyObject* v):
    """A feature value that `features.encode_value` accepts as it is: a str, a bool, an int that fits a
    double or a finite float (exact types)."""
    cdef double d
    if _is_exact_float(v):
        return isfinite(_float_value(v))
    if _is_str(v) or _is_bool(v):
        return True
    if _is_int(v):
        d = _int_value(v)
        if d == -1.0 and PyErr_Occurred() != NULL:  # too large for a double
            PyErr_Clear()
            return False
        return True
    return False


cdef object _plain_label(PyObject* y):
    """The label 0 or 1 of a `true`/`false`/0/1/0.0/1.0 field, None for null; False if anything else."""
    if y == NULL or y == <PyObject*> None:
        return None
    cdef double d = _binary_label(y)
    if d < 0.0:
        return False
    return 1 if d == 1.0 else 0


cdef object _plain_id(PyObject* i):
    """The id of an id field: None for null, a string as it is, an integer in [−2⁶³, 2⁶⁴) as its decimal
    string; False if anything else."""
    cdef int overflow = 0
    if i == NULL or i == <PyObject*> None:
        return None
    if _is_str(i):
        return <object> i
    if _is_int(i):
        PyLong_AsLongLongAndOverflow(<object> i, &overflow)
        if overflow == 1:  # above 2⁶³ − 1: fits if below 2⁶⁴
            PyLong_AsUnsignedLongLong(<object> i)
            if PyErr_Occurred() != NULL:
                PyErr_Clear()
                return False
        elif overflow != 0:
            return False
        return str(<object> i)
    return False


cpdef object json_event(object doc, str x_field, str y_field, str id_field, Py_ssize_t max_features,
                        type event):
    """``event(x, y, id)`` for a parsed message that is valid as it is, else None (the codec decides).

    Valid as it is: `doc` is a dict whose `x_field` is a dict (returned as is) or a list (returned as
    `{0: v0, 1: v1, ...}`) of at most `max_features` values, each a str, a bool, an int that fits a double
    or a finite float (exact types); `y_field` absent, null, true, false, 0, 1, 0.0 or 1.0 (→ None, 0 or
    1); `id_field` absent, null, a string, or an integer in [−2⁶³, 2⁶⁴) (→ None, the string, its decimal
    string). None means only "not on this path": the codec's own checks then accept or reject the
    message, and accept exactly what this accepts. `event` is a tuple subclass of three fields (a
    NamedTuple), built here without a call.
    """
    cdef PyObject* xo
    cdef PyObject* key
    cdef PyObject* value
    cdef Py_ssize_t pos = 0, i, n
    cdef dict x
    cdef object y, id_, ev
    if type(doc) is not dict:
        return None
    xo = PyDict_GetItemWithError(doc, x_field)
    if xo == NULL:
        return None
    if type(<object> xo) is dict:
        if len(<dict> xo) > max_features:
            return None
        while PyDict_Next(<dict> xo, &pos, &key, &value):
            if not _plain_value(value):
                return None
        x = <dict> xo
    elif type(<object> xo) is list:
        n = PyList_GET_SIZE(<list> xo)
        if n > max_features:
            return None
        for i in range(n):
            if not _plain_value(PyList_GET_ITEM(<list> xo, i)):
                return None
        x = {}
        for i in range(n):
            PyDict_SetItem(x, i, <object> PyList_GET_ITEM(<list> xo, i))
    else:
        return None
    y = _plain_label(PyDict_GetItemWithError(doc, y_field))
    if y is False:
        return None
    id_ = _plain_id(PyDict_GetItemWithError(doc, id_field))
    if id_ is False:
        return None
    if not PyType_IsSubtype(event, tuple):
        raise TypeError("event must be a tuple subclass")
    # As tuple.__new__(event, (x, y, id_)) does, without the intermediate tuple.
    ev = PyType_GenericAlloc(event, 3)
    Py_INCREF(x)
    PyTuple_SET_ITEM(ev, 0, x)
    Py_INCREF(y)
    PyTuple_SET_ITEM(ev, 1, y)
    Py_INCREF(id_)
    PyTuple_SET_ITEM(ev, 2, id_)
    return ev


def batch_predict_gradient(cnp.ndarray w, cnp.ndarray b, cnp.ndarray cols, cnp.ndarray vals,
                           cnp.ndarray indptr, cnp.ndarray y, object sample_weight, double neg_w, double pos_w,
                           double l2, double clip, cnp.ndarray p, cnp.ndarray touched, cnp.ndarray grads,
                           cnp.ndarray g_b):
    """The textbook batch step on the m = len(y) rows held in CSR buffers (row i: entries
    cols/vals[indptr[i]:indptr[i + 1]], as `encode_rows` writes them), and its predictions:

    z_i = Σ w[cols]·vals + b[0];  p_i = σ(z_i);  r_i = (p_i − y_i) · s_i · c_{y_i} clipped to [−clip, clip];
    touched ← the distinct columns, in order of first appearance;
    grads[k] = (1/m) Σ_i r_i x_{i,touched[k]} + l2 · w[touched[k]]  (each column's terms added in row order);
    g_b[0] = (Σ_i r_i) / m.

    p_i = σ(z_i) is what `dot` + `sigmoid_scalar` give for row i (the prediction before the update).
    `y` holds the labels (one other than 0 or 1 raises ValueError), `sample_weight` is None or the
    weights s, `neg_w` / `pos_w` are the class weights c. Returns the number of touched columns, or -1 if
    anything is not finite. Writes p, touched, grads and g_b only, never w or b.
    """
    cdef Py_ssize_t m = cnp.PyArray_DIM(y, 0), i, k, nt = 0, nnz
    cdef double* wp = dptr(w)
    cdef Py_ssize_t* c = iptr(cols)
    cdef double* v = dptr(vals)
    cdef Py_ssize_t* ip = iptr(indptr)
    cdef double* yp = dptr(y)
    cdef double* sp = NULL
    cdef double* pp = dptr(p)
    cdef Py_ssize_t* tp = iptr(touched)
    cdef double* gp = dptr(grads)
    cdef double z, r, s = 0.0
    cdef bint ok = True
    cdef Distinct d
    if m == 0 or cnp.PyArray_DIM(indptr, 0) < m + 1 or cnp.PyArray_DIM(p, 0) < m:
        raise ValueError("batch_predict_gradient: inconsistent array lengths")
    nnz = ip[m]
    if (ip[0] != 0 or nnz > cnp.PyArray_DIM(cols, 0) or nnz > cnp.PyArray_DIM(vals, 0)
            or nnz > cnp.PyArray_DIM(touched, 0) or nnz > cnp.PyArray_DIM(grads, 0)
            or (sample_weight is not None and cnp.PyArray_DIM(<cnp.ndarray> sample_weight, 0) != m)):
        raise ValueError("batch_predict_gradient: inconsistent array lengths")
    for i in range(m):
        if yp[i] != 0.0 and yp[i] != 1.0:
            raise ValueError(f"labels must be 0, 1, False or True, got {yp[i]!r} (row {i})")
    if sample_weight is not None:
        sp = dptr(<cnp.ndarray> sample_weight)
    _distinct_init(&d, nnz)  # the distinct columns, into `touched`, and their sums, in `grads`
    for i in range(m):
        z = _dot(wp, c + ip[i], v + ip[i], ip[i + 1] - ip[i])
        pp[i] = _sigmoid(z + dptr(b)[0])
        r = _clip((pp[i] - yp[i]) * (1.0 if sp == NULL else sp[i]) * (pos_w if yp[i] == 1.0 else neg_w), clip)
        s += r
        for k in range(ip[i], ip[i + 1]):
            gp[_distinct_index(d, tp, &nt, c[k], gp)] += r * v[k]
    free(d.table)
    ok = isfinite(s)
    for k in range(nt):
        if l2 == 0.0:
            gp[k] = gp[k] / <double> m
        else:
            gp[k] = gp[k] / <double> m + l2 * wp[tp[k]]
        ok = ok and isfinite(gp[k])
    dptr(g_b)[0] = s / <double> m
    return nt if ok else -1


def dot(cnp.ndarray w, cnp.ndarray cols, cnp.ndarray vals, Py_ssize_t n):
    """Σ_i w[cols[i]] · vals[i] over the first n entries (overflow-safe: see `_dot`)."""
    return _dot(dptr(w), iptr(cols), dptr(vals), n)


# Dense batches: BLAS dgemv, taken from SciPy's BLAS at import (a runtime dependency already) through the
# capsules of scipy.linalg.cython_blas, so that building needs no SciPy headers. Called from here, BLAS does
# not go through numpy's floating-point error checks: a non-finite batch is detected and refused, with a
# ValueError naming the feature, and never shows up as a RuntimeWarning first.

ctypedef void (*dgemv_ptr)(char* trans, int* m, int* n, double* alpha, double* a, int* lda, double* x,
                           int* incx, double* beta, double* y, int* incy) noexcept nogil


def _dgemv_capsule():
    from scipy.linalg import cython_blas
    return cython_blas.__pyx_capi__["dgemv"]


cdef object _capsule = _dgemv_capsule()
cdef dgemv_ptr _dgemv = <dgemv_ptr> PyCapsule_GetPointer(_capsule, PyCapsule_GetName(_capsule))


cdef int _matvec(cnp.ndarray X, double* x, double* out, bint transpose) except -1:
    """out ← X·x (x has n entries, out m), or out ← Xᵀ·x if `transpose` (x has m, out n), for a float64
    X (m×n) that is C- or F-contiguous."""
    if cnp.PyArray_NDIM(X) != 2 or cnp.PyArray_TYPE(X) != cnp.NPY_DOUBLE:
        raise ValueError("X must be a 2-d float64 array")
    if not (cnp.PyArray_IS_C_CONTIGUOUS(X) or cnp.PyArray_IS_F_CONTIGUOUS(X)):
        raise ValueError("X must be C- or F-contiguous")
    cdef int m = <int> cnp.PyArray_DIM(X, 0), n = <int> cnp.PyArray_DIM(X, 1), inc = 1, lda, i
    cdef double one = 1.0, zero = 0.0
    cdef char trans
    cdef double* a = dptr(X)
    if m == 0 or n == 0:
        for i in range(n if transpose else m):
            out[i] = 0.0
        return 0
    if cnp.PyArray_IS_C_CONTIGUOUS(X):  # BLAS (column-major) sees Xᵀ, n×m
        lda = n
        trans = b"N" if transpose else b"T"
        with nogil:
            _dgemv(&trans, &n, &m, &one, a, &lda, x, &inc, &zero, out, &inc)
    else:  # BLAS sees X, m×n
        lda = m
        trans = b"T" if transpose else b"N"
        with nogil:
            _dgemv(&trans, &m, &n, &one, a, &lda, x, &inc, &zero, out, &inc)
    return 0


def logits(cnp.ndarray X, cnp.ndarray w, double b, cnp.ndarray z, object neg_abs):
    """z ← Xw + b for X (m×n, float64, C- or F-contiguous) and w (n); with `neg_abs` (an m-array),
    also neg_abs ← −|z| (whose exp the caller takes with numpy's vectorised exp). A row whose BLAS sum is
    not finite is summed again in extended precision (as `_dot`): finite rows give their correctly
    signed logit, ±inf at worst. Returns False if X holds a non-finite value (then z is not all finite)."""
    cdef Py_ssize_t m = cnp.PyArray_DIM(X, 0), i
    if (cnp.PyArray_DIM(w, 0) != cnp.PyArray_DIM(X, 1) or cnp.PyArray_DIM(z, 0) != m
            or (neg_abs is not None and cnp.PyArray_DIM(<cnp.ndarray> neg_abs, 0) != m)):
        raise ValueError("logits: inconsistent array lengths")
    _matvec(X, dptr(w), dptr(z), False)
    cdef double* zp = dptr(z)
    cdef double* ep = NULL
    cdef bint ok = True
    if neg_abs is not None:
        ep = dptr(<cnp.ndarray> neg_abs)
    cdef double* xp = dptr(X)
    cdef double* wp = dptr(w)
    cdef Py_ssize_t n = cnp.PyArray_DIM(X, 1), j
    cdef Py_ssize_t rs = cnp.PyArray_STRIDE(X, 0) // sizeof(double), cs = cnp.PyArray_STRIDE(X, 1) // sizeof(double)
    cdef long double acc
    for i in range(m):
        if not isfinite(zp[i]):  # an overflow (or inf − inf) in BLAS, or a non-finite value in row i
            acc = 0.0
            for j in range(n):
                acc += (<long double> xp[i * rs + j * cs]) * (<long double> wp[j])
            if acc != acc or acc - acc != 0.0:  # NaN or ±inf in extended precision: a non-finite value
                ok = False
            zp[i] = <double> acc  # ±inf if beyond the double range: σ is then 1 or 0
        zp[i] = zp[i] + b
        if ep != NULL:
            ep[i] = -fabs(zp[i])
    return ok


def batch_gradient(cnp.ndarray X, cnp.ndarray z, cnp.ndarray e, cnp.ndarray y, object sample_weight,
                   double neg_w, double pos_w, double l2, double clip, cnp.ndarray w, cnp.ndarray grad):
    """The textbook batch gradient from the logits z of `logits` and e = exp(−|z|):

    r_i = s_i · c_{y_i} · (σ(z_i) − y_i) clipped to [−clip, clip], with σ(z) = 1/(1+e) for z ≥ 0 and e/(1+e) otherwise (no overflow);
    grad ← (1/m) Xᵀr + l2·w;  returns Σ_i r_i (so ∇b = Σr / m), or NaN if anything is not finite.

    `y` holds the labels (a label other than 0 or 1 raises ValueError), `sample_weight` is None or the
    weights s, `neg_w` / `pos_w` are the class weights c. z is overwritten with r. All arrays float64 and
    contiguous; X as in `logits`.
    """
    cdef Py_ssize_t m = cnp.PyArray_DIM(z, 0), n = cnp.PyArray_DIM(grad, 0), i
    cdef double* zp = dptr(z)
    cdef double* ep = dptr(e)
    cdef double* yp = dptr(y)
    cdef double* sp
    cdef double* wp = dptr(w)
    cdef double* gp = dptr(grad)
    cdef double s, s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0
    cdef bint ok = True
    if (cnp.PyArray_DIM(X, 0) != m or cnp.PyArray_DIM(X, 1) != n or cnp.PyArray_DIM(e, 0) != m
            or cnp.PyArray_DIM(y, 0) != m or cnp.PyArray_DIM(w, 0) != n
            or (sample_weight is not None and cnp.PyArray_DIM(<cnp.ndarray> sample_weight, 0) != m)):
        raise ValueError("batch_gradient: inconsistent array lengths")
    for i in range(m):
        if yp[i] != 0.0 and yp[i] != 1.0:
            raise ValueError(f"labels must be 0, 1, False or True, got {yp[i]!r} (row {i})")
    # Branch-free loops that the compiler vectorises; the sum has four accumulators for the same reason.
    for i in range(m):
        zp[i] = ((1.0 if zp[i] >= 0.0 else ep[i]) / (1.0 + ep[i]) - yp[i]) * (pos_w if yp[i] == 1.0 else neg_w)
    if sample_weight is not None:
        sp = dptr(<cnp.ndarray> sample_weight)
        for i in range(m):
            zp[i] = zp[i] * sp[i]
    for i in range(m):
        zp[i] = _clip(zp[i], clip)
    i = 0
    while i + 4 <= m:
        s0 += zp[i]
        s1 += zp[i + 1]
        s2 += zp[i + 2]
        s3 += zp[i + 3]
        i += 4
    while i < m:
        s0 += zp[i]
        i += 1
    s = (s0 + s1) + (s2 + s3)
    if not isfinite(s):
        return float("nan")
    _matvec(X, zp, gp, True)
    if l2 == 0.0:
        for i in range(n):
            gp[i] = gp[i] / <double> m
            ok = ok and isfinite(gp[i])
    else:
        for i in range(n):
            gp[i] = gp[i] / <double> m + l2 * wp[i]
            ok = ok and isfinite(gp[i])
    return s if ok else float("nan")


# The optimizers' per-coordinate rules (`stream_logreg.optim`), applied to the coordinates cols[:n] in order:
# the def wrappers below are what the optimizer classes call, `SampleStep` calls the same functions.

# With an undo buffer `u` (3·n doubles, or NULL), each rule saves the old w_j and state values of entry i at
# u[3i], u[3i + 1], u[3i + 2] as it goes (see `_undo`), and returns whether a new value is not finite
# (|x| ≤ DBL_MAX is false for ±inf and NaN: a branch-free test folded into the loop).

cdef inline bint _sgd(double* wp, Py_ssize_t* c, double* g, Py_ssize_t n, double lr, double* u) noexcept nogil:
    cdef Py_ssize_t i, j
    cdef int bad = 0
    for i in range(n):
        j = c[i]
        if u != NULL:
            u[3 * i] = wp[j]
        wp[j] -= lr * g[i]
        bad |= not (fabs(wp[j]) <= DBL_MAX)
    return bad != 0


cdef inline bint _adagrad(double* wp, double* G, Py_ssize_t* c, double* g, Py_ssize_t n, double lr,
                          double eps, double* u) noexcept nogil:
    cdef Py_ssize_t i, j
    cdef int bad = 0
    for i in range(n):
        j = c[i]
        if u != NULL:
            u[3 * i] = wp[j]
            u[3 * i + 1] = G[j]
        if eps == 0.0 and g[i] == 0.0:  # with ε = 0 a zero gradient is skipped (no 0 / 0), as AdaGrad does
            continue
        G[j] += g[i] * g[i]
        wp[j] -= lr * g[i] / (sqrt(G[j]) + eps)
        bad |= not (fabs(wp[j]) <= DBL_MAX) or not (G[j] <= DBL_MAX)
    return bad != 0


cdef inline bint _ftrl(double* wp, double* z, double* na, Py_ssize_t* c, double* g, Py_ssize_t n, double alpha,
                       double beta, double l1, double l2, double* u) noexcept nogil:
    cdef Py_ssize_t i, j
    cdef double gi, sigma, n_old, n_new, sqrt_n, zj
    cdef int bad = 0
    for i in range(n):
        j = c[i]
        gi = g[i]
        n_old = na[j]
        if u != NULL:
            u[3 * i] = wp[j]
            u[3 * i + 1] = z[j]
            u[3 * i + 2] = n_old
        n_new = n_old + gi * gi
        sqrt_n = sqrt(n_new)
        sigma = (sqrt_n - sqrt(n_old)) / alpha
        zj = z[j] + (gi - sigma * wp[j])
        z[j] = zj
        na[j] = n_new
        if fabs(zj) <= l1:
            wp[j] = 0.0
        elif zj > 0:
            wp[j] = -(zj - l1) / ((beta + sqrt_n) / alpha + l2)
        else:
            wp[j] = -(zj + l1) / ((beta + sqrt_n) / alpha + l2)
        bad |= not (fabs(wp[j]) <= DBL_MAX) or not (fabs(zj) <= DBL_MAX) or not (n_new <= DBL_MAX)
    return bad != 0


cdef inline void _undo(double* u, double* wp, double* s0, double* s1, Py_ssize_t* c, Py_ssize_t n) noexcept nogil:
    """Put back what a rule saved in `u` (last entry first, so that a repeated column ends at its value
    before the step); s0, s1 are the rule's state arrays (or NULL)."""
    cdef Py_ssize_t i, j
    for i in range(n - 1, -1, -1):
        j = c[i]
        wp[j] = u[3 * i]
        if s0 != NULL:
            s0[j] = u[3 * i + 1]
        if s1 != NULL:
            s1[j] = u[3 * i + 2]


def sgd_step(cnp.ndarray w, cnp.ndarray cols, cnp.ndarray grads, Py_ssize_t n, double lr):
    """w_j ← w_j − η g_j."""
    _sgd(dptr(w), iptr(cols), dptr(grads), n, lr, NULL)


def adagrad_step(cnp.ndarray w, cnp.ndarray acc, cnp.ndarray cols, cnp.ndarray grads, Py_ssize_t n,
                 double lr, double eps):
    """G_j ← G_j + g_j²;  w_j ← w_j − η g_j / (√G_j + ε) (with ε = 0, a coordinate whose g_j is 0 is skipped)."""
    _adagrad(dptr(w), dptr(acc), iptr(cols), dptr(grads), n, lr, eps, NULL)


def ftrl_step(cnp.ndarray w, cnp.ndarray z_acc, cnp.ndarray n_acc, cnp.ndarray cols, cnp.ndarray grads,
              Py_ssize_t n, double alpha, double beta, double l1, double l2):
    """FTRL-Proximal (McMahan et al. 2013, Algorithm 1) on the touched coordinates:

    σ_j = (√(n_j + g_j²) − √n_j) / α;  z_j ← z_j + g_j − σ_j w_j;  n_j ← n_j + g_j²;
    w_j = 0 if |z_j| ≤ λ1 else −(z_j − sgn(z_j) λ1) / ((β + √n_j) / α + λ2).
    """
    _ftrl(dptr(w), dptr(z_acc), dptr(n_acc), iptr(cols), dptr(grads), n, alpha, beta, l1, l2, NULL)


# The whole per-sample update in one call

cdef object _encode_into = None  # stream_logreg._features.encode_into, bound on first use


cdef Py_ssize_t _encode_new(object space, dict x, RowLayout layout, cnp.ndarray cols, cnp.ndarray vals,
                            Py_ssize_t capacity, bint looked_up) except -2:
    """Row `x`, which has features not seen yet, encoded by the feature space's compiled encoder (which
    creates their columns, `FeatureSpace.encode_into`, with the pair cache of `layout`) if the weights
    have room for them (`capacity` columns) and the scratch buffers for the row; else -1, nothing done.
    `looked_up`: `cols` holds the pair cache's answers for the row (`_encode_row` returned -3)."""
    global _encode_into
    if space is None or len(x) > cnp.PyArray_DIM(cols, 0):
        return -1
    n_bits = space.n_bits
    if capacity < (len(<list> space.keys) + len(x) if n_bits is None else 1 << n_bits):
        return -1
    if _encode_into is None:
        _encode_into = __import__("stream_logreg._features", fromlist=["encode_into"]).encode_into
    return _encode_into(space, x, True, cols, vals, 0, layout, looked_up)


cdef list _vocab_keys(object space, bint merge):
    """The keys list of the vocabulary `space` (a step's, for `_vocab_size`), or None (hashing, none)."""
    if space is None or merge or type(space.keys) is not list:
        return None
    return space.keys


cdef inline Py_ssize_t _vocab_size(list keys) noexcept:
    """The vocabulary's number of columns, for `_encode_row` (its dict may lack entries: see
    `FeatureSpace.columns`); -1 without a vocabulary (len(columns) then)."""
    return -1 if keys is None else PyList_GET_SIZE(keys)


cdef inline tuple _mark(object space):
    """`space.mark()` (`FeatureSpace.mark`: the number of vocabulary columns and `n_dropped`) without the
    method call, on every row with a new feature."""
    return len(<list> space.keys), space.n_dropped


cdef enum:
    RULE_SGD, RULE_ADAGRAD, RULE_FTRL

_RULES = {"sgd": RULE_SGD, "adagrad": RULE_ADAGRAD, "ftrl": RULE_FTRL}
_N_STATE = {"sgd": 0, "adagrad": 1, "ftrl": 2}
_N_HYPER = {"sgd": 2, "adagrad": 2, "ftrl": 4}




cdef int _forget(object space, RowLayout layout, object mark) except -1:
    """Undo the columns created since `space.mark()` returned `mark` (an update refused after its row
    created them), and forget the look-ups cached since."""
    space.rollback(mark)
    layout.clear()
    return 0


@cython.auto_pickle(False)
@cython.final
cdef class SampleStep:
    """A model's per-sample update (the textbook formula, m = 1), compiled end to end: what
    `OnlineLogisticRegression.predict_learn_one` does with `encode`, `predict_gradient` and its
    optimizers' `step`, in one call and with the same arithmetic in the same order.

    Bound to the model's arrays and dict (`columns` and its `layout` cache, the scratch buffers
    `cols`/`vals`/`grads`, `w`, `b`, the optimizers' state arrays) and to copies of its hyper-parameters:
    the model makes a new one whenever it replaces an array. `rule` is "sgd" (hyper-parameters lr,
    power_t; no state), "adagrad" (lr, eps; state G) or "ftrl" (alpha, beta, l1, l2; state z, n), the
    rules of `sgd_step`, `adagrad_step`, `ftrl_step`; the weights follow it with `w_state`, and so does the
    bias with `b_state` unless `intercept_lr` is given (then b ← b − intercept_lr · g). Each step adds 1
    to the `n_iterations` of the optimizer objects `opt` and (when it steps) `bias_opt`, and SGD reads
    them for its schedule.
    """

    cdef dict columns
    cdef bint merge
    cdef RowLayout layout
    cdef cnp.ndarray cols, vals, grads, w, b
    cdef double neg_w, pos_w, l2, intercept_lr, clip
    cdef bint bias_rule
    cdef int rule
    cdef double h0, h1, h2, h3
    cdef cnp.ndarray w_s0, w_s1, b_s0, b_s1
    cdef double* undo  # 3 doubles per coordinate of a step, and 3 for the bias (see the rules)
    cdef Py_ssize_t undo_cap
    cdef object opt, bias_opt, space
    cdef list keys  # the vocabulary's keys (`space.keys`), or None (see `_vocab_size`)

    def __reduce__(self):
        # Bound to one model's arrays: a copy (River's clone(include_attributes=True) deep-copies each
        # attribute on its own) is None, and the copied model compiles its own step when it needs one.
        return type(None), ()

    def __init__(self, dict columns not None, bint merge, RowLayout layout, cnp.ndarray cols not None,
                 cnp.ndarray vals not None, cnp.ndarray grads not None, cnp.ndarray w not None,
                 cnp.ndarray b not None, double neg_w, double pos_w, double l2, object intercept_lr, str rule,
                 tuple hyper, tuple w_state, tuple b_state, object opt, object bias_opt, double clip,
                 object space=None):
        if rule not in _RULES or len(hyper) != _N_HYPER[rule]:
            raise ValueError(f"unknown rule {rule!r} or wrong hyper-parameters {hyper!r}")
        if len(w_state) != _N_STATE[rule] or len(b_state) != _N_STATE[rule]:
            raise ValueError(f"rule {rule!r} has {_N_STATE[rule]} state array(s)")
        arrays = [cols, vals, grads, w, b, *w_state, *b_state]
        if not all(cnp.PyArray_IS_C_CONTIGUOUS(a) and cnp.PyArray_ISWRITEABLE(a) for a in arrays):
            raise ValueError("the arrays must be C-contiguous and writeable")
        if (cnp.PyArray_TYPE(cols) != cnp.NPY_INTP
                or not all(cnp.PyArray_TYPE(a) == cnp.NPY_DOUBLE for a in arrays[1:])):
            raise ValueError("cols must be intp, the other arrays float64")
        if (cnp.PyArray_DIM(vals, 0) < cnp.PyArray_DIM(cols, 0)
                or cnp.PyArray_DIM(grads, 0) < cnp.PyArray_DIM(cols, 0) or cnp.PyArray_DIM(b, 0) < 1
                or any(cnp.PyArray_DIM(a, 0) < cnp.PyArray_DIM(w, 0) for a in w_state)
                or any(cnp.PyArray_DIM(a, 0) < 1 for a in b_state)):
            raise ValueError("inconsistent array lengths")
        self.columns, self.merge, self.layout = columns, merge, layout
        self.cols, self.vals, self.grads, self.w, self.b = cols, vals, grads, w, b
        self.neg_w, self.pos_w, self.l2, self.clip = neg_w, pos_w, l2, clip
        self.bias_rule = intercept_lr is None
        self.intercept_lr = 0.0 if intercept_lr is None else intercept_lr
        self.rule = _RULES[rule]
        h = [float(v) for v in hyper] + [0.0] * (4 - len(hyper))
        self.h0, self.h1, self.h2, self.h3 = h
        self.w_s0 = w_state[0] if len(w_state) > 0 else None
        self.w_s1 = w_state[1] if len(w_state) > 1 else None
        self.b_s0 = b_state[0] if len(b_state) > 0 else None
        self.b_s1 = b_state[1] if len(b_state) > 1 else None
        self.opt, self.bias_opt, self.space = opt, bias_opt, space
        self.keys = _vocab_keys(space, merge)
        self._reserve(cnp.PyArray_DIM(cols, 0))

    def __dealloc__(self):
        free(self.undo)

    cdef double* _reserve(self, Py_ssize_t n) except NULL:
        """The undo buffer, with room for a step on n coordinates and the bias."""
        cdef void* mem
        if self.undo == NULL or self.undo_cap < 3 * n + 3:
            mem = realloc(self.undo, (3 * n + 3) * sizeof(double))
            if mem == NULL:
                raise MemoryError()
            self.undo = <double*> mem
            self.undo_cap = 3 * n + 3
        return self.undo

    def update(self, cnp.ndarray cols, cnp.ndarray grads, Py_ssize_t n, double g_b):
        """One step of the rule on the weights cols[:n] with gradient grads[:n] and on the bias with
        gradient g_b (the model's mini-batch step), checked as in `__call__`: returns False, with nothing
        changed, if it would leave a non-finite value; else True. cols must be within w, intp; grads float64.
        """
        if (cnp.PyArray_TYPE(cols) != cnp.NPY_INTP or cnp.PyArray_TYPE(grads) != cnp.NPY_DOUBLE
                or not cnp.PyArray_IS_C_CONTIGUOUS(cols) or not cnp.PyArray_IS_C_CONTIGUOUS(grads)
                or not 0 <= n <= min(cnp.PyArray_DIM(cols, 0), cnp.PyArray_DIM(grads, 0))):
            raise ValueError("update: cols (intp) and grads (float64) must hold n contiguous entries")
        cdef Py_ssize_t* c = iptr(cols)
        cdef Py_ssize_t i, size = cnp.PyArray_DIM(self.w, 0)
        for i in range(n):
            if not 0 <= c[i] < size:
                raise ValueError("update: a column is beyond the weights")
        return self._checked(c, dptr(grads), n, g_b, self._reserve(n))

    def __call__(self, object x, object y, double sample_weight):
        """Encode row `x` (see `encode`) and learn it with label `y` and weight `sample_weight`.

        Returns p = σ(w·x + b), the probability before the update; -1.0 if `x` or `y` needs the model's
        general path (`x` not a dict, a value `encode` does not take, a new feature without `space` or
        without room for its weight; `y` not one of False, True, 0, 1, 0.0, 1.0 of exact type): nothing
        was done; NaN if the update is not finite (refused: nothing was written, no column created).
        New features are created by the feature space `space` (see `_encode_new`).
        """
        cdef double label = _binary_label(<PyObject*> y)
        cdef double p
        if label < 0.0 or type(x) is not dict:
            return -1.0
        cdef Py_ssize_t n = _encode_row(<dict> x, self.columns, iptr(self.cols), dptr(self.vals),
                                        cnp.PyArray_DIM(self.cols, 0), self.merge, self.layout, dptr(self.w), 1,
                                        _vocab_size(self.keys))
        if n >= 0:
            return self._learn(n, label, sample_weight)
        if self.space is None:
            return -1.0
        mark = _mark(self.space)
        n = _encode_new(self.space, <dict> x, self.layout, self.cols, self.vals, cnp.PyArray_DIM(self.w, 0),
                        n == -3)
        if n < 0:
            return -1.0
        _prefetch_rows(dptr(self.w), iptr(self.cols), n, 1)
        try:
            p = self._learn(n, label, sample_weight)
        except BaseException:
            _forget(self.space, self.layout, mark)
            raise
        if p != p:
            _forget(self.space, self.layout, mark)
        return p

    def predict(self, object x):
        """p = σ(w·x + b) for dict row `x` if `encode` takes it as it is (every feature known), else -1.0:
        the arithmetic of `dot` on the encoded row and of `stream_logreg.math.sigmoid_scalar`, so bitwise
        the model's general path, with the look-ups of `__call__` (the layout's keys by position)."""
        if type(x) is not dict:
            return -1.0
        cdef Py_ssize_t n = _encode_row(<dict> x, self.columns, iptr(self.cols), dptr(self.vals),
                                        cnp.PyArray_DIM(self.cols, 0), self.merge, self.layout, dptr(self.w), 1,
                                        _vocab_size(self.keys))
        if n < 0:
            return -1.0
        return _sigmoid(_dot(dptr(self.w), iptr(self.cols), dptr(self.vals), n) + dptr(self.b)[0])

    cdef double _learn(self, Py_ssize_t n, double y, double sample_weight) except? -2.0:
        """The update on the row in the first n entries of the scratch buffers; returns p, or NaN if refused.

        The rules save the old values of the coordinates they touch (of w, b and the state arrays) as they
        go; if any new value is not finite, all are put back (bitwise) and the update is refused.
        """
        cdef double* wp = dptr(self.w)
        cdef Py_ssize_t* c = iptr(self.cols)
        cdef double* o = dptr(self.grads)
        cdef double* u = self.undo
        cdef double p, g
        if not 0 <= n <= cnp.PyArray_DIM(self.cols, 0):
            raise ValueError("n is beyond the buffers")
        p = _sample_gradient(wp, c, dptr(self.vals), n, dptr(self.b)[0], y, sample_weight,
                             self.pos_w if y else self.neg_w, self.l2, self.clip, o, &g)
        if p != p:
            return p
        if not self._checked(c, o, n, g, u):
            return NAN
        return p

    cdef inline bint _checked(self, Py_ssize_t* c, double* o, Py_ssize_t n, double g, double* u) except -1:
        """The step of the weights c[:n] (gradient o[:n]) and of the bias (gradient g), saving into u
        (3n + 3 doubles); if a new value is not finite, everything is put back and False returned."""
        cdef double* wp = dptr(self.w)
        cdef double* bp = dptr(self.b)
        cdef double* ub = u + 3 * n
        cdef double* s0 = NULL if self.w_s0 is None else dptr(self.w_s0)
        cdef double* s1 = NULL if self.w_s1 is None else dptr(self.w_s1)
        cdef double* t0 = NULL if self.b_s0 is None else dptr(self.b_s0)
        cdef double* t1 = NULL if self.b_s1 is None else dptr(self.b_s1)
        cdef bint bad = self._rule(self.opt, wp, c, o, n, s0, s1, u)
        if self.bias_rule:
            bad = self._rule(self.bias_opt, bp, &_ZERO, &g, 1, t0, t1, ub) or bad
        else:
            t0 = t1 = NULL  # untouched
            ub[0] = bp[0]
            bp[0] -= self.intercept_lr * g
            bad = bad or not isfinite(bp[0])
        if bad:
            _undo(ub, bp, t0, t1, &_ZERO, 1)
            _undo(u, wp, s0, s1, c, n)
            return False
        self.opt.n_iterations += 1  # as Optimizer.step, once the step is accepted
        if self.bias_rule:
            self.bias_opt.n_iterations += 1
        return True

    cdef inline int _rule(self, object opt, double* wp, Py_ssize_t* c, double* g, Py_ssize_t n,
                   double* s0, double* s1, double* u) except -1:
        """One step of the rule on coordinates c[:n], saving into `u` (the caller counts it in
        opt.n_iterations); returns 1 if a new value is not finite."""
        cdef double lr
        if self.rule == RULE_SGD:
            lr = self.h0  # SGD.learning_rate: lr / (t + 1)^power_t, t = the updates already made
            if self.h1 != 0.0:
                lr = self.h0 / pow(<double> (opt.n_iterations + 1), self.h1)
            return _sgd(wp, c, g, n, lr, u)
        if self.rule == RULE_ADAGRAD:
            return _adagrad(wp, s0, c, g, n, self.h0, self.h1, u)
        return _ftrl(wp, s0, s1, c, g, n, self.h0, self.h1, self.h2, self.h3, u)


    # Built-in standardization (the model's ``scale=True``) and rows already encoded: see `_row_checks`.

    cdef cnp.ndarray stats, numeric, sbuf

    def bind_scale(self, cnp.ndarray stats not None, cnp.ndarray numeric not None):
        """Standardize every row learned through `scaled`, `predict_learn_encoded` and `predict_learn_row`
        with the model's statistics `stats` (capacity × 3: count, mean, var) and flags `numeric` (1.0 for
        a standardized column, 0.0 for an indicator), as `scale_row` does."""
        _check_scale(stats, numeric, cnp.PyArray_DIM(self.w, 0))
        self.stats, self.numeric = stats, numeric

    def scaled(self, object x, object y, double sample_weight, bint predict=True):
        """`__call__` for a model with standardization (`bind_scale`), on a row of known features only:
        p before the update (the row standardized with the statistics so far; with `predict` False, p of
        the standardized row learned, which costs no second dot product); -1.0 if `x` or `y` needs the
        model's general path (a new feature among them: nothing done); NaN if refused (nothing written,
        the statistics included)."""
        cdef double label = _binary_label(<PyObject*> y)
        if label < 0.0 or type(x) is not dict or self.stats is None:
            return -1.0
        cdef Py_ssize_t n = _encode_row(<dict> x, self.columns, iptr(self.cols), dptr(self.vals),
                                        cnp.PyArray_DIM(self.cols, 0), self.merge, self.layout, dptr(self.w), 1,
                                        _vocab_size(self.keys))
        if n < 0:
            return -1.0
        return self._row(iptr(self.cols), dptr(self.vals), n, label, sample_weight, predict)

    def logit(self, object x):
        """w·x + b of dict row `x` (standardized with the statistics so far, if bound), without learning;
        NaN if `x` needs the model's general path (finite inputs never give NaN)."""
        if type(x) is not dict:
            return NAN
        cdef Py_ssize_t n = _encode_row(<dict> x, self.columns, iptr(self.cols), dptr(self.vals),
                                        cnp.PyArray_DIM(self.cols, 0), self.merge, self.layout, NULL, 0,
                                        _vocab_size(self.keys))
        if n < 0:
            return NAN
        cdef double* v = dptr(self.vals)
        if self.stats is not None:
            v = self._scratch(n)
            _scale_entries(iptr(self.cols), dptr(self.vals), v, n, dptr(self.stats), dptr(self.numeric), False,
                           NULL)
        return _dot(dptr(self.w), iptr(self.cols), v, n) + dptr(self.b)[0]

    def predict_learn_encoded(self, cnp.ndarray cols, cnp.ndarray vals, Py_ssize_t n, double y,
                              double sample_weight):
        """`predict_learn_row` on arrays (checked: see `_row_checks`)."""
        _row_checks(cols, vals, n, y, cnp.PyArray_DIM(self.w, 0))
        return self._row(iptr(cols), dptr(vals), n, y, sample_weight, True)

    cdef double* _scratch(self, Py_ssize_t n) except NULL:
        """6n doubles: the row standardized for the prediction (n) and for the update (n), the statistics
        saved (3n), the gradients (n)."""
        if self.sbuf is None or cnp.PyArray_DIM(self.sbuf, 0) < 6 * n:
            self.sbuf = np.empty(max(6 * n, 384))
        return dptr(self.sbuf)

    cdef double _row(self, Py_ssize_t* c, double* v, Py_ssize_t n, double y, double sample_weight,
                     bint predict) except? -2.0:
        """p = σ(w·x + b), then the update, on the row c/v[:n] (distinct columns within the weights, finite
        values, y 0 or 1; v is not written). With the statistics bound: p of the row standardized with
        the statistics so far (with `predict`), then the statistics learn the row, it is standardized with
        them and learned (River's StandardScaler, then the model). Returns p, or NaN if the update is
        refused: then nothing is written (weights, bias, optimizer states, statistics)."""
        cdef double* wp = dptr(self.w)
        cdef double* buf = self._scratch(n)
        cdef double* xs = v
        cdef double* saved = buf + 2 * n
        cdef double* o = buf + 5 * n
        cdef double* s = NULL
        cdef double* f = NULL
        cdef double p, p0 = NAN, g
        if self.stats is not None:
            s, f = dptr(self.stats), dptr(self.numeric)
            if predict:
                _scale_entries(c, v, buf, n, s, f, False, NULL)
                p0 = _sigmoid(_dot(wp, c, buf, n) + dptr(self.b)[0])
            xs = buf + n
            if _scale_entries(c, v, xs, n, s, f, True, saved):
                _unscale_entries(c, n, s, f, saved)
                return NAN
        p = _sample_gradient(wp, c, xs, n, dptr(self.b)[0], y, sample_weight,
                             self.pos_w if y else self.neg_w, self.l2, self.clip, o, &g)
        if p != p or not self._checked(c, o, n, g, self._reserve(n)):
            if s != NULL:
                _unscale_entries(c, n, s, f, saved)
            return NAN
        return p0 if s != NULL and predict else p


cdef inline void _save(double* dst, double* src, Py_ssize_t* c, Py_ssize_t n) noexcept nogil:
    """dst[i] ← src[c[i]] for i < n (nothing if src is NULL)."""
    cdef Py_ssize_t i
    if src != NULL:
        for i in range(n):
            dst[i] = src[c[i]]


cdef inline void _restore(double* saved, double* dst, Py_ssize_t* c, Py_ssize_t n) noexcept nogil:
    """dst[c[i]] ← saved[i], last entry first, so that a repeated column gets its first saved value."""
    cdef Py_ssize_t i
    if dst != NULL:
        for i in range(n - 1, -1, -1):
            dst[c[i]] = saved[i]


cdef inline bint _finite(double* a, Py_ssize_t* c, Py_ssize_t n) noexcept nogil:
    """Whether a[c[i]] is finite for every i < n (True if a is NULL); branch-free (|x| ≤ DBL_MAX is false
    for ±inf and NaN)."""
    cdef Py_ssize_t i
    cdef int bad = 0
    if a != NULL:
        for i in range(n):
            bad |= not (fabs(a[c[i]]) <= DBL_MAX)
    return bad == 0


def _arrays(tuple arrays, cnp.ndarray cols, Py_ssize_t n, object saved):
    """Check the arguments of `save_at`, `restore_at`, `finite_at`: contiguous float64 arrays, intp
    columns within all of them, and room for len(arrays)·n values in `saved` (unless None)."""
    if not 0 <= n <= cnp.PyArray_DIM(cols, 0) or cnp.PyArray_TYPE(cols) != cnp.NPY_INTP:
        raise ValueError("n is beyond cols, or cols is not intp")
    cdef Py_ssize_t i, size = -1
    for a in arrays:
        if (not isinstance(a, cnp.ndarray) or cnp.PyArray_TYPE(a) != cnp.NPY_DOUBLE
                or not cnp.PyArray_IS_C_CONTIGUOUS(a)):
            raise ValueError("the arrays must be C-contiguous float64")
        size = cnp.PyArray_DIM(a, 0) if size < 0 else min(size, cnp.PyArray_DIM(a, 0))
    for i in range(n):
        if not 0 <= iptr(cols)[i] < size:
            raise ValueError("a column is beyond an array")
    if saved is not None and (cnp.PyArray_TYPE(<cnp.ndarray> saved) != cnp.NPY_DOUBLE
                              or cnp.PyArray_DIM(<cnp.ndarray> saved, 0) < len(arrays) * n):
        raise ValueError("the buffer of saved values is too small")


def save_at(tuple arrays, cnp.ndarray cols, Py_ssize_t n, cnp.ndarray saved):
    """saved[k·n + i] ← arrays[k][cols[i]] for i < n: what `restore_at` puts back."""
    _arrays(arrays, cols, n, saved)
    cdef Py_ssize_t k
    for k in range(len(arrays)):
        _save(dptr(saved) + k * n, dptr(arrays[k]), iptr(cols), n)


def restore_at(tuple arrays, cnp.ndarray cols, Py_ssize_t n, cnp.ndarray saved):
    """arrays[k][cols[i]] ← saved[k·n + i]: undo what happened since `save_at`."""
    _arrays(arrays, cols, n, saved)
    cdef Py_ssize_t k
    for k in range(len(arrays)):
        _restore(dptr(saved) + k * n, dptr(arrays[k]), iptr(cols), n)


def finite_at(tuple arrays, cnp.ndarray cols, Py_ssize_t n):
    """Whether arrays[k][cols[i]] is finite for every array and every i < n."""
    _arrays(arrays, cols, n, None)
    cdef Py_ssize_t k
    for k in range(len(arrays)):
        if not _finite(dptr(arrays[k]), iptr(cols), n):
            return False
    return True


cdef Py_ssize_t _ZERO = 0


cdef inline double _binary_label(PyObject* y) noexcept:
    """1.0 or 0.0 for the labels True/1/1.0 and False/0/0.0/-0.0 (exact types); -1.0 for anything else."""
    cdef int overflow = 0
    cdef long long v
    cdef double d
    if _is_bool(y):
        return 1.0 if y == _true else 0.0
    if _is_int(y):
        v = PyLong_AsLongLongAndOverflow(<object> y, &overflow)
        if overflow == 0 and (v == 0 or v == 1):
            return <double> v
    elif _is_exact_float(y):
        d = _float_value(y)
        if d == 0.0 or d == 1.0:
            return 1.0 if d == 1.0 else 0.0
    return -1.0


# The Bayes mixture (`stream_logreg.optim.Mixture`): eight members per coordinate, one feature lookup.

cdef enum:
    MIX_K = 8        # members: SGD at six rates, NAG, FTRL
    MIX_S = 11       # doubles per coordinate: the 8 members' weights, NAG's s and G, FTRL's n
    MIX_NAG = 6
    MIX_FTRL = 7
    MIX_SCALE = 8
    MIX_G = 9
    MIX_N = 10

cdef double MIX_Z_MAX = 35.0       # a member's logit is clipped to ±35 (p within 6.3e-16 of 0 or 1)
cdef double MIX_A_MIN = -1e4       # the log-weights' floor (exp(-1e4) is 0 in double)
cdef double EXP_ZERO_BELOW = -745.2  # exp(x) rounds to 0.0 for every x below (e**-745.133 = 2**-1075)
cdef double MIX_A_BOUND = 1e300    # a batch's log likelihood is clamped to ±1e300 before normalising


cdef inline void _nag_rescale(double* R, double av) noexcept nogil:
    """NAG's scale of coordinate R (its row of MIX_S doubles) for an |x| of `av`: if av exceeds the scale,
    the weight is multiplied by (scale / av)² (set to 0 from a scale of 0) and the scale becomes av."""
    if av > R[MIX_SCALE]:
        if R[MIX_SCALE] > 0.0:
            R[MIX_NAG] *= (R[MIX_SCALE] / av) * (R[MIX_SCALE] / av)
        else:
            R[MIX_NAG] = 0.0
        R[MIX_SCALE] = av


cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    /* Whether the n doubles at r are all finite: a double is not (inf, NaN) when its 11 exponent bits are
       all set, and then adding 1 to them carries into the sign bit. Integer operations only (SSE2 does them
       two at a time: no branch, no floating-point compare per element). */
    #ifdef __SSE2__
    #include <emmintrin.h>
    #endif
    static inline int sl_row_finite(const double* r, Py_ssize_t n) {
        uint64_t acc = 0, b;
        Py_ssize_t i = 0;
    #ifdef __SSE2__
        const __m128i exponent = _mm_set1_epi64x((long long) 0x7FF0000000000000ULL);
        const __m128i one = _mm_set1_epi64x((long long) 0x0010000000000000ULL);
        __m128i wide = _mm_setzero_si128();
        const Py_ssize_t pairs = n / 2;
        for (Py_ssize_t j = 0; j < pairs; j++)
            wide = _mm_or_si128(wide, _mm_add_epi64(_mm_and_si128(_mm_loadu_si128((const __m128i*) (r + 2 * j)),
                                                                  exponent), one));
        i = 2 * pairs;
        acc = (uint64_t) _mm_cvtsi128_si64(_mm_or_si128(wide, _mm_unpackhi_epi64(wide, wide)));
    #endif
        for (; i < n; i++) {
            memcpy(&b, r + i, sizeof b);
            acc |= (b & 0x7FF0000000000000ULL) + 0x0010000000000000ULL;
        }
        return (acc >> 63) == 0;
    }
    """
    bint _row_finite "sl_row_finite" (double* r, Py_ssize_t n) noexcept nogil


cdef extern from *:
    """
    /* z[k] = 0.0 + Σ_i rows[c[i]·width + k]·v[i] for k < 8, the sum in the order of i: with SSE2 two members
       at a time (each lane the same IEEE products and sums, in the same order, as the scalar loop: bitwise
       its results), the row's first 8 doubles loaded as they lie. */
    static inline void sl_dot8(const double* rows, Py_ssize_t width, const Py_ssize_t* c, const double* v,
                               Py_ssize_t n, double* z) {
    #ifdef __SSE2__
        __m128d z0 = _mm_setzero_pd(), z1 = _mm_setzero_pd(), z2 = _mm_setzero_pd(), z3 = _mm_setzero_pd();
        for (Py_ssize_t i = 0; i < n; i++) {
            const double* r = rows + c[i] * width;
            const __m128d x = _mm_set1_pd(v[i]);
            z0 = _mm_add_pd(z0, _mm_mul_pd(_mm_loadu_pd(r), x));
            z1 = _mm_add_pd(z1, _mm_mul_pd(_mm_loadu_pd(r + 2), x));
            z2 = _mm_add_pd(z2, _mm_mul_pd(_mm_loadu_pd(r + 4), x));
            z3 = _mm_add_pd(z3, _mm_mul_pd(_mm_loadu_pd(r + 6), x));
        }
        _mm_storeu_pd(z, z0);
        _mm_storeu_pd(z + 2, z1);
        _mm_storeu_pd(z + 4, z2);
        _mm_storeu_pd(z + 6, z3);
    #else
        for (int k = 0; k < 8; k++)
            z[k] = 0.0;
        for (Py_ssize_t i = 0; i < n; i++)
            for (int k = 0; k < 8; k++)
                z[k] += rows[c[i] * width + k] * v[i];
    #endif
    }
    """
    void _dot8 "sl_dot8" (double* rows, Py_ssize_t width, Py_ssize_t* c, double* v, Py_ssize_t n,
                          double* z) noexcept nogil


cdef extern from *:
    """
    /* One coordinate's gradients and SGD steps in `MixtureStep._steps_one`: g[k] = (0.0 + rk[k]·x) + l2·R[k]
       for the eight members (R before the steps), then R[k] -= rates[k]·g[k] for the six SGD members; with
       SSE2 two members at a time (per member the same IEEE operations in the same order: bitwise). */
    static inline void sl_grad8_sgd6(double* R, const double* rk, double x, double l2, const double* rates,
                                     double* g) {
    #ifdef __SSE2__
        const __m128d xs = _mm_set1_pd(x), ls = _mm_set1_pd(l2), zero = _mm_setzero_pd();
        __m128d g0, g1, g2, g3;
        g0 = _mm_add_pd(_mm_add_pd(zero, _mm_mul_pd(_mm_loadu_pd(rk), xs)), _mm_mul_pd(ls, _mm_loadu_pd(R)));
        g1 = _mm_add_pd(_mm_add_pd(zero, _mm_mul_pd(_mm_loadu_pd(rk + 2), xs)), _mm_mul_pd(ls, _mm_loadu_pd(R + 2)));
        g2 = _mm_add_pd(_mm_add_pd(zero, _mm_mul_pd(_mm_loadu_pd(rk + 4), xs)), _mm_mul_pd(ls, _mm_loadu_pd(R + 4)));
        g3 = _mm_add_pd(_mm_add_pd(zero, _mm_mul_pd(_mm_loadu_pd(rk + 6), xs)), _mm_mul_pd(ls, _mm_loadu_pd(R + 6)));
        _mm_storeu_pd(R, _mm_sub_pd(_mm_loadu_pd(R), _mm_mul_pd(_mm_loadu_pd(rates), g0)));
        _mm_storeu_pd(R + 2, _mm_sub_pd(_mm_loadu_pd(R + 2), _mm_mul_pd(_mm_loadu_pd(rates + 2), g1)));
        _mm_storeu_pd(R + 4, _mm_sub_pd(_mm_loadu_pd(R + 4), _mm_mul_pd(_mm_loadu_pd(rates + 4), g2)));
        _mm_storeu_pd(g + 6, g3);
    #else
        int k;
        for (k = 0; k < 8; k++)
            g[k] = (0.0 + rk[k] * x) + l2 * R[k];
        for (k = 0; k < 6; k++)
            R[k] -= rates[k] * g[k];
    #endif
    }
    """
    void _grad8_sgd6 "sl_grad8_sgd6" (double* R, double* rk, double x, double l2, double* rates,
                                      double* g) noexcept nogil


cdef enum:
    NEXT_ROWS = 12  # rows of the columns a vocabulary creates next, prefetched per event (~9 new a row)


cdef inline void _prefetch_next(double* rows, Py_ssize_t k, Py_ssize_t capacity) noexcept nogil:
    """Ask the CPU for the mixture's rows (MIX_S doubles) of the vocabulary's next columns k, k + 1, ...
    (within `capacity`), for writing, before the encoder creates them (a click-through row creates a few,
    always the next ones): their misses then overlap the encoder's work instead of the update's."""
    cdef Py_ssize_t end = min(k + NEXT_ROWS, capacity)
    cdef double* p = rows + k * MIX_S
    cdef double* last = rows + end * MIX_S
    while p < last:
        _prefetch_w(p)
        p += 8


@cython.auto_pickle(False)
@cython.final
cdef class MixtureStep:
    """The Bayes mixture's prediction and update (see `stream_logreg.optim.Mixture` for the formulas),
    compiled end to end and bound to a model's arrays: `coef` (capacity × 11, C-contiguous: per column
    the eight members' weights w_0..w_7, NAG's s and G, FTRL's n), `bias` (the same 11 numbers for the
    bias), `log_weights` (the eight a_k, max 0) and `nag` ([t, N]), and to the model's scratch buffers
    and feature dict (as `SampleStep`). Every update is checked: the touched rows, the bias row,
    `log_weights` and `nag` are saved first, and put back bitwise if any new value is not finite.
    """

    cdef dict columns
    cdef bint merge
    cdef RowLayout layout
    cdef cnp.ndarray cols, vals, coef, bias, logw, nag
    cdef double* Mp
    cdef double* Bp
    cdef double* ap
    cdef double* scp
    cdef double rates[6]
    cdef double nag_lr, alpha, beta, neg_w, pos_w, l2, clip
    cdef object opt, bias_opt, space
    cdef double* buf   # scratch: member probabilities, gradients, undo
    cdef Py_ssize_t buf_cap
    cdef Py_ssize_t* ibuf  # scratch: touched columns and the slot of each entry
    cdef Py_ssize_t ibuf_cap
    cdef Py_ssize_t capacity  # the rows of coef
    cdef list keys  # the vocabulary's keys (`space.keys`), or None (see `_vocab_size`)

    def __reduce__(self):
        return type(None), ()

    def __init__(self, dict columns not None, bint merge, RowLayout layout, cnp.ndarray cols not None,
                 cnp.ndarray vals not None, cnp.ndarray coef not None, cnp.ndarray bias not None,
                 cnp.ndarray log_weights not None, cnp.ndarray nag not None, tuple rates, double nag_lr,
                 double alpha, double beta, double neg_w, double pos_w, double l2, double clip,
                 object opt, object bias_opt, object space=None):
        arrays = [cols, vals, coef, bias, log_weights, nag]
        if not all(cnp.PyArray_IS_C_CONTIGUOUS(a) and cnp.PyArray_ISWRITEABLE(a) for a in arrays):
            raise ValueError("the arrays must be C-contiguous and writeable")
        if (cnp.PyArray_TYPE(cols) != cnp.NPY_INTP
                or not all(cnp.PyArray_TYPE(a) == cnp.NPY_DOUBLE for a in arrays[1:])):
            raise ValueError("cols must be intp, the other arrays float64")
        if (cnp.PyArray_NDIM(coef) != 2 or cnp.PyArray_DIM(coef, 1) != MIX_S
                or cnp.PyArray_SIZE(bias) < MIX_S or cnp.PyArray_DIM(log_weights, 0) != MIX_K
                or cnp.PyArray_DIM(nag, 0) != 2 or cnp.PyArray_DIM(vals, 0) < cnp.PyArray_DIM(cols, 0)
                or len(rates) != 6):
            raise ValueError("inconsistent array shapes")
        self.columns, self.merge, self.layout = columns, merge, layout
        self.cols, self.vals, self.coef, self.bias, self.logw, self.nag = cols, vals, coef, bias, log_weights, nag
        self.Mp, self.Bp, self.ap, self.scp = dptr(coef), dptr(bias), dptr(log_weights), dptr(nag)
        self.capacity = cnp.PyArray_DIM(coef, 0)
        for k in range(6):
            self.rates[k] = rates[k]
        self.nag_lr, self.alpha, self.beta = nag_lr, alpha, beta
        self.neg_w, self.pos_w, self.l2, self.clip = neg_w, pos_w, l2, clip
        self.opt, self.bias_opt, self.space = opt, bias_opt, space
        self.keys = _vocab_keys(space, merge)

    def __dealloc__(self):
        free(self.buf)
        free(self.ibuf)

    cdef int _reserve(self, Py_ssize_t nd, Py_ssize_t ni) except -1 nogil:
        cdef void* mem
        if nd > self.buf_cap:
            mem = realloc(self.buf, nd * sizeof(double))
            if mem == NULL:
                raise MemoryError()
            self.buf, self.buf_cap = <double*> mem, nd
        if ni > self.ibuf_cap:
            mem = realloc(self.ibuf, ni * sizeof(Py_ssize_t))
            if mem == NULL:
                raise MemoryError()
            self.ibuf, self.ibuf_cap = <Py_ssize_t*> mem, ni
        return 0

    cdef inline void _probas(self, Py_ssize_t* c, double* v, Py_ssize_t n, double* p) noexcept nogil:
        """p[k] = σ(clip(b_k + Σ_i w_k[c[i]] v[i], ±35)) for the eight members."""
        cdef double* M = self.Mp
        cdef double* B = self.Bp
        cdef double z[8]
        cdef long double wide
        cdef Py_ssize_t i, k
        _dot8(M, MIX_S, c, v, n, z)
        for k in range(MIX_K):
            if not isfinite(z[k]):  # an overflow or inf − inf: the correctly signed sum, ±inf at worst
                wide = 0.0
                for i in range(n):
                    wide += (<long double> M[c[i] * MIX_S + k]) * (<long double> v[i])
                z[k] = <double> wide
            z[k] = z[k] + B[k]
            if z[k] > MIX_Z_MAX:
                z[k] = MIX_Z_MAX
            elif z[k] < -MIX_Z_MAX:
                z[k] = -MIX_Z_MAX
            p[k] = _sigmoid(z[k])

    cdef inline double _mix(self, double* p) noexcept nogil:
        """Σ_k π_k p_k with π_k = exp(a_k) / Σ_j exp(a_j)."""
        cdef double* a = self.ap
        cdef double e, s = 0.0, t = 0.0
        cdef Py_ssize_t k
        for k in range(MIX_K):
            # a weight far below the others is exactly 0.0 without the call (exp's underflow path is slow)
            e = exp(a[k]) if a[k] > EXP_ZERO_BELOW else 0.0
            s += e
            t += e * p[k]
        return t / s

    def predict_encoded(self, cnp.ndarray cols, cnp.ndarray vals, Py_ssize_t n):
        """The mixture's P(y = 1) for the row in cols/vals[:n] (intp, float64)."""
        if not 0 <= n <= min(cnp.PyArray_DIM(cols, 0), cnp.PyArray_DIM(vals, 0)):
            raise ValueError("n is beyond the buffers")
        self._check_cols(iptr(cols), n)
        cdef double p[8]
        self._probas(iptr(cols), dptr(vals), n, p)
        return self._mix(p)

    def predict(self, object x):
        """The mixture's P(y = 1) for dict row `x` if `encode` takes it as it is, else -1.0."""
        if type(x) is not dict:
            return -1.0
        cdef Py_ssize_t n = _encode_row(<dict> x, self.columns, iptr(self.cols), dptr(self.vals),
                                        cnp.PyArray_DIM(self.cols, 0), self.merge, self.layout, NULL, 0,
                                        _vocab_size(self.keys))
        if n < 0:
            return -1.0
        cdef double p[8]
        self._probas(iptr(self.cols), dptr(self.vals), n, p)
        return self._mix(p)

    def predict_rows(self, cnp.ndarray cols, cnp.ndarray vals, cnp.ndarray indptr, cnp.ndarray out):
        """out[i] = the mixture's P(y = 1) for CSR row i (as `encode_rows` writes them)."""
        cdef Py_ssize_t m = cnp.PyArray_DIM(indptr, 0) - 1, i
        cdef Py_ssize_t* ip = iptr(indptr)
        cdef double p[8]
        if m < 0 or cnp.PyArray_DIM(out, 0) < m:
            raise ValueError("predict_rows: inconsistent array lengths")
        self._check_csr(cols, vals, indptr, m)
        for i in range(m):
            self._probas(iptr(cols) + ip[i], dptr(vals) + ip[i], ip[i + 1] - ip[i], p)
            dptr(out)[i] = self._mix(p)

    cdef int _check_cols(self, Py_ssize_t* c, Py_ssize_t n) except -1:
        cdef Py_ssize_t i, size = cnp.PyArray_DIM(self.coef, 0)
        for i in range(n):
            if not 0 <= c[i] < size:
                raise ValueError("a column is beyond the weights")
        return 0

    cdef int _check_csr(self, cnp.ndarray cols, cnp.ndarray vals, cnp.ndarray indptr, Py_ssize_t m) except -1:
        cdef Py_ssize_t* ip = iptr(indptr)
        cdef Py_ssize_t i
        if (cnp.PyArray_TYPE(cols) != cnp.NPY_INTP or cnp.PyArray_TYPE(indptr) != cnp.NPY_INTP
                or cnp.PyArray_TYPE(vals) != cnp.NPY_DOUBLE or not cnp.PyArray_IS_C_CONTIGUOUS(cols)
                or not cnp.PyArray_IS_C_CONTIGUOUS(vals) or not cnp.PyArray_IS_C_CONTIGUOUS(indptr)):
            raise ValueError("cols and indptr must be contiguous intp, vals contiguous float64")
        if ip[0] != 0 or ip[m] > cnp.PyArray_DIM(cols, 0) or ip[m] > cnp.PyArray_DIM(vals, 0):
            raise ValueError("inconsistent CSR lengths")
        for i in range(m):
            if ip[i + 1] < ip[i]:
                raise ValueError("indptr must not decrease")
        self._check_cols(iptr(cols), ip[m])
        return 0

    def __call__(self, object x, object y, double sample_weight):
        """Encode row `x` (see `encode`) and learn it: returns the mixture's P(y = 1) before the update;
        -1.0 if `x` or `y` needs the model's general path (nothing done); NaN if the update is refused
        (nothing written, no column created). New features as in `SampleStep`."""
        cdef double label = _binary_label(<PyObject*> y)
        if label < 0.0 or type(x) is not dict:
            return -1.0
        cdef Py_ssize_t n = _encode_row(<dict> x, self.columns, iptr(self.cols), dptr(self.vals),
                                        cnp.PyArray_DIM(self.cols, 0), self.merge, self.layout, self.Mp, MIX_S,
                                        _vocab_size(self.keys))
        cdef Py_ssize_t ip[2]
        cdef double p
        mark = None
        if n < 0:
            if self.space is None:
                return -1.0
            if n == -3 and self.keys is not None:  # the vocabulary's next columns: created now
                _prefetch_next(self.Mp, PyList_GET_SIZE(self.keys), cnp.PyArray_DIM(self.coef, 0))
            mark = _mark(self.space)
            n = _encode_new(self.space, <dict> x, self.layout, self.cols, self.vals,
                            cnp.PyArray_DIM(self.coef, 0), n == -3)
            if n < 0:
                return -1.0
            _prefetch_rows(self.Mp, iptr(self.cols), n, MIX_S)
        ip[0], ip[1] = 0, n
        try:
            refused = self._learn(iptr(self.cols), dptr(self.vals), ip, 1, &label, &sample_weight, &p)
        except BaseException:
            if mark is not None:
                _forget(self.space, self.layout, mark)
            raise
        if refused:
            if mark is not None:
                _forget(self.space, self.layout, mark)
            return NAN
        self._count(1)
        return p

    def learn_encoded(self, Py_ssize_t n, double y, double sample_weight):
        """`__call__` on the row already in the bound scratch buffers (first n entries)."""
        if not 0 <= n <= cnp.PyArray_DIM(self.cols, 0) or (y != 0.0 and y != 1.0):
            raise ValueError("n is beyond the buffers, or y is not 0 or 1")
        self._check_cols(iptr(self.cols), n)
        cdef Py_ssize_t ip[2]
        cdef double p
        ip[0], ip[1] = 0, n
        if self._learn(iptr(self.cols), dptr(self.vals), ip, 1, &y, &sample_weight, &p):
            return NAN
        self._count(1)
        return p

    def learn_rows(self, cnp.ndarray cols, cnp.ndarray vals, cnp.ndarray indptr, cnp.ndarray y,
                   object sample_weight, cnp.ndarray out):
        """One mini-batch update on the m CSR rows (m = len(y)); out[i] ← the mixture's P(y = 1) for row i
        before the update. Returns False (nothing written but `out`) if the update is refused."""
        cdef Py_ssize_t m = cnp.PyArray_DIM(y, 0), i
        cdef double* yp = dptr(y)
        cdef cnp.ndarray sw
        if m == 0:
            return True
        if (cnp.PyArray_DIM(indptr, 0) < m + 1 or cnp.PyArray_DIM(out, 0) < m
                or cnp.PyArray_TYPE(y) != cnp.NPY_DOUBLE or not cnp.PyArray_IS_C_CONTIGUOUS(y)):
            raise ValueError("learn_rows: inconsistent array lengths")
        self._check_csr(cols, vals, indptr, m)
        for i in range(m):
            if yp[i] != 0.0 and yp[i] != 1.0:
                raise ValueError(f"labels must be 0, 1, False or True, got {yp[i]!r} (row {i})")
        if sample_weight is None:
            sw = np.ones(m)
        else:
            sw = np.ascontiguousarray(sample_weight, dtype=np.float64)
            if cnp.PyArray_DIM(sw, 0) != m:
                raise ValueError("learn_rows: one sample weight per row")
        if self._learn(iptr(cols), dptr(vals), iptr(indptr), m, yp, dptr(sw), dptr(out)):
            return False
        self._count(1)
        return True

    cdef int _count(self, Py_ssize_t k) except -1:
        """`k` accepted updates: as Optimizer.step, each adds 1 to the optimizers' `n_iterations`."""
        if k == 1:  # the per-event case: Cython adds a constant 1 without making an int object for it
            self.opt.n_iterations += 1
            self.bias_opt.n_iterations += 1
        else:
            self.opt.n_iterations += k
            self.bias_opt.n_iterations += k
        return 0

    cdef int _learn(self, Py_ssize_t* c, double* v, Py_ssize_t* ip, Py_ssize_t m, double* y, double* sw,
                    double* out) except -1 nogil:
        """The mixture's mini-batch update (m = 1: the per-sample rule); returns 1 if refused. out[i]: the
        mixture's P(y = 1) for row i before the update (out NULL: not computed). Without the GIL; the caller
        counts an accepted update (`_count`)."""
        cdef Py_ssize_t nnz = ip[m] - ip[0], i, e, k, nt = 0, tix
        cdef double* M = self.Mp
        cdef double* B = self.Bp
        cdef double* a = self.ap
        cdef double* sc = self.scp
        cdef double* P
        cdef double* G
        cdef double* gb
        cdef double* U
        cdef double* R
        cdef Py_ssize_t* T
        cdef Py_ssize_t* slots
        cdef Distinct d
        cdef double delta[8]
        cdef double wt, r, rk, acc, step, gk, zn, fm = <double> m
        cdef long double wide
        cdef int bad = 0
        # scratch: P (m·K), G (nnz·K), gb (K), U (nnz·S + S + K + 2); ints: T (nnz), slots (nnz)
        self._reserve(m * MIX_K + nnz * MIX_K + MIX_K + nnz * MIX_S + MIX_S + MIX_K + 2, 2 * nnz + 1)
        P = self.buf
        G = P + m * MIX_K
        gb = G + nnz * MIX_K
        U = gb + MIX_K
        T = self.ibuf
        slots = T + nnz
        # 1. Predictions before the batch, the mixture's prediction, the log likelihoods.
        for k in range(MIX_K):
            delta[k] = 0.0
        for i in range(m):
            self._probas(c + ip[i], v + ip[i], ip[i + 1] - ip[i], P + i * MIX_K)
            if out != NULL:
                out[i] = self._mix(P + i * MIX_K)
            wt = sw[i] * (self.pos_w if y[i] == 1.0 else self.neg_w)
            for k in range(MIX_K):
                r = P[i * MIX_K + k]
                delta[k] += wt * log(r if y[i] == 1.0 else 1.0 - r)
        if m == 1:
            return self._rest_one(c, v, nnz, y[0], sw[0], P, delta, U)
        # 2. The distinct columns (in order of first appearance) and each entry's slot among them.
        _distinct_init(&d, nnz)
        for e in range(nnz):
            slots[e] = _distinct_index(d, T, &nt, c[e], NULL)
        free(d.table)
        # 3. Save what the update may change.
        for tix in range(nt):
            memcpy(U + tix * MIX_S, M + T[tix] * MIX_S, MIX_S * sizeof(double))
        for k in range(MIX_S):
            U[nt * MIX_S + k] = B[k]
        for k in range(MIX_K):
            U[nt * MIX_S + MIX_S + k] = a[k]
        U[nt * MIX_S + MIX_S + MIX_K] = sc[0]
        U[nt * MIX_S + MIX_S + MIX_K + 1] = sc[1]
        # 4. The mixture: a_k ← a_k + Σ_i s_i c_i ln p_ik(y_i), then normalised to max 0, floored at −1e4.
        bad |= self._log_weights(delta)
        # 5. NAG: rescale the weights of coordinates whose |x| exceeds their scale, then predict again.
        for e in range(nnz):
            _nag_rescale(M + c[e] * MIX_S, fabs(v[e]))
        _nag_rescale(B, 1.0)  # the bias: x = 1
        acc = 0.0
        for i in range(m):
            zn = 0.0
            for e in range(ip[i], ip[i + 1]):
                R = M + c[e] * MIX_S
                zn += R[MIX_NAG] * v[e]
                if v[e] != 0.0:
                    acc += (v[e] / R[MIX_SCALE]) * (v[e] / R[MIX_SCALE])
            if not isfinite(zn):
                wide = 0.0
                for e in range(ip[i], ip[i + 1]):
                    wide += (<long double> M[c[e] * MIX_S + MIX_NAG]) * (<long double> v[e])
                zn = <double> wide
            zn = zn + B[MIX_NAG]
            zn = MIX_Z_MAX if zn > MIX_Z_MAX else (-MIX_Z_MAX if zn < -MIX_Z_MAX else zn)
            P[i * MIX_K + MIX_NAG] = _sigmoid(zn)
            acc += 1.0  # the bias: x = 1, s = 1
        sc[0] += 1.0
        sc[1] += acc / fm
        # 6. Each member's mean gradient over the batch: g_kj = (1/m) Σ_i clip((p_ik − y_i) s_i c_i) x_ij.
        for e in range(nt * MIX_K):
            G[e] = 0.0
        for k in range(MIX_K):
            gb[k] = 0.0
        for i in range(m):
            wt = sw[i] * (self.pos_w if y[i] == 1.0 else self.neg_w)
            for k in range(MIX_K):
                rk = _clip((P[i * MIX_K + k] - y[i]) * wt, self.clip)
                gb[k] += rk
                for e in range(ip[i], ip[i + 1]):
                    G[slots[e] * MIX_K + k] += rk * v[e]
        step = self.nag_lr * sqrt(sc[0] / sc[1])
        # 7. The members' steps, on the touched columns and on the bias.
        for tix in range(nt + 1):
            if tix < nt:
                R = M + T[tix] * MIX_S
                for k in range(MIX_K):
                    G[tix * MIX_K + k] = G[tix * MIX_K + k] / fm + self.l2 * R[k]
                self._member_steps(R, G + tix * MIX_K, step)
                bad |= not _row_finite(R, MIX_S)
            else:
                for k in range(MIX_K):
                    gb[k] = gb[k] / fm
                self._member_steps(B, gb, step)
                bad |= not _row_finite(B, MIX_S)
        bad |= not _row_finite(a, MIX_K) or not _row_finite(sc, 2)
        if bad:
            self._undo(T, nt, U)
            return 1
        return 0

    cdef inline int _log_weights(self, double* delta) noexcept nogil:
        """Step 4 of `_learn`: a_k ← a_k + delta_k (the batch's log likelihoods; delta is overwritten), then
        normalised to max 0 and floored at −1e4; 1 if a sum is NaN."""
        cdef double* a = self.ap
        cdef double acc, mx = -DBL_MAX
        cdef Py_ssize_t k
        cdef int bad = 0
        for k in range(MIX_K):
            acc = a[k] + delta[k]
            if acc != acc:
                bad = 1
            elif acc > MIX_A_BOUND:
                acc = MIX_A_BOUND
            elif acc < -MIX_A_BOUND:
                acc = -MIX_A_BOUND
            delta[k] = acc
            if acc > mx:
                mx = acc
        for k in range(MIX_K):
            acc = delta[k] - mx
            a[k] = acc if acc > MIX_A_MIN else MIX_A_MIN
        return bad

    cdef inline int _rest_one(self, Py_ssize_t* c, double* v, Py_ssize_t n, double y, double sw, double* P,
                              double* delta, double* U) noexcept nogil:
        """Steps 2 to 7 of `_learn` for a batch of one row (entries i < n, distinct columns c[i], so that each
        step's loop over the entries reads and writes only its own entry's row): the same operations on each
        row, in the same order, the loops of steps 3 and 5 fused (save, rescale, NAG's logit) and of step 7
        with the finite checks. P: the members' probabilities, delta: the log likelihoods (step 1), U: the
        scratch of `_learn`. Returns 1 if refused (everything put back)."""
        cdef double* M = self.Mp
        cdef double* B = self.Bp
        cdef double* a = self.ap
        cdef double* sc = self.scp
        cdef double* R
        cdef double* ub = U + n * MIX_S
        cdef double acc, zn
        cdef double gb[8]
        cdef long double wide
        cdef Py_ssize_t e, k
        cdef int bad = 0
        # 3. Save what the update may change: the bias, a_k, t and N now, each row in the loop of step 5.
        for k in range(MIX_S):
            ub[k] = B[k]
        for k in range(MIX_K):
            ub[MIX_S + k] = a[k]
        ub[MIX_S + MIX_K] = sc[0]
        ub[MIX_S + MIX_K + 1] = sc[1]
        # 4. The mixture's log-weights.
        bad |= self._log_weights(delta)
        # 5. NAG: the bias's scale, then per row: saved, rescaled, and its term of the logit and of N.
        _nag_rescale(B, 1.0)
        acc = 0.0
        zn = 0.0
        for e in range(n):
            R = M + c[e] * MIX_S
            memcpy(U + e * MIX_S, R, MIX_S * sizeof(double))
            _nag_rescale(R, fabs(v[e]))
            zn += R[MIX_NAG] * v[e]
            if v[e] != 0.0:
                acc += (v[e] / R[MIX_SCALE]) * (v[e] / R[MIX_SCALE])
        if not isfinite(zn):
            wide = 0.0
            for e in range(n):
                wide += (<long double> M[c[e] * MIX_S + MIX_NAG]) * (<long double> v[e])
            zn = <double> wide
        zn = zn + B[MIX_NAG]
        zn = MIX_Z_MAX if zn > MIX_Z_MAX else (-MIX_Z_MAX if zn < -MIX_Z_MAX else zn)
        P[MIX_NAG] = _sigmoid(zn)
        acc += 1.0  # the bias: x = 1, s = 1
        sc[0] += 1.0
        sc[1] += acc  # acc / m as in `_learn`, m = 1: exact
        # 6 and 7, each row checked right after its step.
        bad |= self._steps_one(P, c, v, n, y, sw, gb)
        bad |= not _row_finite(B, MIX_S) or not _row_finite(a, MIX_K) or not _row_finite(sc, 2)
        if bad:
            self._undo(c, n, U)
            return 1
        return 0

    cdef inline int _steps_one(self, double* P, Py_ssize_t* c, double* v, Py_ssize_t n, double y, double sw,
                               double* gb) noexcept nogil:
        """Steps 6 and 7 of `_learn` for a batch of one row (entries i < n, distinct columns c[i]): the
        gradients (p_k − y)·s·c·x_i with the same operations as the batch's (each a sum from 0.0, divided by
        the batch's size 1.0, which is exact and so left out), then the members' steps, row by row."""
        cdef double* M = self.Mp
        cdef double* R
        cdef double rk[8]
        cdef double g[8]
        cdef double wt = sw * (self.pos_w if y == 1.0 else self.neg_w), l2 = self.l2
        cdef double step = self.nag_lr * sqrt(self.scp[0] / self.scp[1])
        cdef Py_ssize_t i, k
        for k in range(MIX_K):
            rk[k] = _clip((P[k] - y) * wt, self.clip)
            gb[k] = 0.0 + rk[k]
        cdef int bad = 0
        for i in range(n):
            R = M + c[i] * MIX_S
            _grad8_sgd6(R, rk, v[i], l2, self.rates, g)  # g[6], g[7] written: NAG's and FTRL's
            self._adaptive_steps(R, g, step)
            bad |= not _row_finite(R, MIX_S)
        self._member_steps(self.Bp, gb, step)
        return bad

    cdef inline void _undo(self, Py_ssize_t* T, Py_ssize_t nt, double* U) noexcept nogil:
        """Put back what step 3 of `_learn` saved in U (the nt rows T, then the bias, a_k, t and N)."""
        cdef double* R
        cdef Py_ssize_t tix, k
        for tix in range(nt - 1, -1, -1):
            R = self.Mp + T[tix] * MIX_S
            for k in range(MIX_S):
                R[k] = U[tix * MIX_S + k]
        for k in range(MIX_S):
            self.Bp[k] = U[nt * MIX_S + k]
        for k in range(MIX_K):
            self.ap[k] = U[nt * MIX_S + MIX_S + k]
        self.scp[0] = U[nt * MIX_S + MIX_S + MIX_K]
        self.scp[1] = U[nt * MIX_S + MIX_S + MIX_K + 1]

    cdef inline void _member_steps(self, double* R, double* g, double step) noexcept nogil:
        """The eight members' updates of one coordinate's row R, with gradients g[0..7]."""
        cdef Py_ssize_t k
        for k in range(6):
            R[k] -= self.rates[k] * g[k]
        self._adaptive_steps(R, g, step)

    cdef inline void _adaptive_steps(self, double* R, double* g, double step) noexcept nogil:
        """NAG's and FTRL's updates of R with gradients g[6], g[7] (the end of `_member_steps`)."""
        cdef double gk
        # NAG and FTRL skip a zero gradient, and one whose square underflows to a zero accumulator (a
        # value below ~1e-154: 0/0 otherwise).
        gk = g[MIX_NAG]
        if gk != 0.0:
            R[MIX_G] += gk * gk
            if R[MIX_G] > 0.0:
                R[MIX_NAG] -= step * (gk / sqrt(R[MIX_G])) / R[MIX_SCALE]
        gk = g[MIX_FTRL]
        if gk != 0.0:
            R[MIX_N] += gk * gk
            if R[MIX_N] > 0.0:
                R[MIX_FTRL] -= self.alpha / (self.beta + sqrt(R[MIX_N])) * gk


    # Built-in standardization (the model's ``scale=True``) and rows already encoded: as in `SampleStep`.

    cdef cnp.ndarray stats, numeric, sbuf
    cdef double* sp  # stats, numeric and sbuf's data (NULL: not bound), for `_row_nogil`
    cdef double* fp
    cdef double* sbp
    cdef Py_ssize_t sb_n

    def bind_scale(self, cnp.ndarray stats not None, cnp.ndarray numeric not None):
        """As `SampleStep.bind_scale`."""
        _check_scale(stats, numeric, cnp.PyArray_DIM(self.coef, 0))
        self.stats, self.numeric = stats, numeric
        self.sp, self.fp = dptr(stats), dptr(numeric)

    def scaled(self, object x, object y, double sample_weight, bint predict=True):
        """As `SampleStep.scaled`: the mixture's P(y = 1) before the update; -1.0: the general path; NaN:
        refused, nothing written."""
        cdef double label = _binary_label(<PyObject*> y)
        if label < 0.0 or type(x) is not dict or self.stats is None:
            return -1.0
        cdef Py_ssize_t n = _encode_row(<dict> x, self.columns, iptr(self.cols), dptr(self.vals),
                                        cnp.PyArray_DIM(self.cols, 0), self.merge, self.layout, self.Mp, MIX_S,
                                        _vocab_size(self.keys))
        if n < 0:
            return -1.0
        return self._row(iptr(self.cols), dptr(self.vals), n, label, sample_weight, predict)

    def predict_scaled(self, object x):
        """The mixture's P(y = 1) for dict row `x` standardized with the statistics so far (bound), without
        learning; -1.0 if `x` needs the model's general path."""
        if type(x) is not dict or self.stats is None:
            return -1.0
        cdef Py_ssize_t n = _encode_row(<dict> x, self.columns, iptr(self.cols), dptr(self.vals),
                                        cnp.PyArray_DIM(self.cols, 0), self.merge, self.layout, NULL, 0,
                                        _vocab_size(self.keys))
        if n < 0:
            return -1.0
        cdef double* t = self._scratch(n)
        cdef double p[8]
        _scale_entries(iptr(self.cols), dptr(self.vals), t, n, dptr(self.stats), dptr(self.numeric), False, NULL)
        self._probas(iptr(self.cols), t, n, p)
        return self._mix(p)

    def predict_learn_encoded(self, cnp.ndarray cols, cnp.ndarray vals, Py_ssize_t n, double y,
                              double sample_weight):
        """`predict_learn_row` on arrays (checked: see `_row_checks`)."""
        _row_checks(cols, vals, n, y, cnp.PyArray_DIM(self.coef, 0))
        return self._row(iptr(cols), dptr(vals), n, y, sample_weight, True)

    cdef double* _scratch(self, Py_ssize_t n) except NULL:
        """5n doubles: the row standardized for the prediction (n) and for the update (n), the statistics
        saved (3n)."""
        if self.sbuf is None or cnp.PyArray_DIM(self.sbuf, 0) < 5 * n:
            self.sbuf = np.empty(max(5 * n, 320))
            self.sbp, self.sb_n = dptr(self.sbuf), cnp.PyArray_DIM(self.sbuf, 0)
        return self.sbp

    cdef int _reserve_row(self, Py_ssize_t n) except -1:
        """Room for `_row_nogil` on rows of up to n entries: its scratch and `_learn`'s (m = 1)."""
        self._scratch(n)
        return self._reserve(MIX_K + n * MIX_K + MIX_K + n * MIX_S + MIX_S + MIX_K + 2, 2 * n + 1)

    cdef double _row(self, Py_ssize_t* c, double* v, Py_ssize_t n, double y, double sample_weight,
                     bint predict) except? -2.0:
        """As `SampleStep._row`, with the mixture's prediction and update (`_row_nogil`, counted)."""
        self._reserve_row(n)
        cdef double p = self._row_nogil(c, v, n, y, sample_weight, predict)
        if p == p:
            self._count(1)
        return p

    cdef double _row_nogil(self, Py_ssize_t* c, double* v, Py_ssize_t n, double y, double sample_weight,
                           bint predict) noexcept nogil:
        """`_row` without the GIL and without counting the update in the optimizers (the caller's part:
        `_count`); -1.0, with nothing done, if the scratch is not reserved for n entries (`_reserve_row`)."""
        if (self.sb_n < 5 * n or self.buf_cap < MIX_K + n * MIX_K + MIX_K + n * MIX_S + MIX_S + MIX_K + 2
                or self.ibuf_cap < 2 * n + 1):
            return -1.0
        cdef double* buf = self.sbp
        cdef double* xs = v
        cdef double* saved = buf + 2 * n
        cdef double* s = NULL
        cdef double* f = NULL
        cdef double pk[8]
        cdef double p, p0 = NAN
        cdef Py_ssize_t ip[2]
        cdef int refused
        if self.sp != NULL:
            s, f = self.sp, self.fp
            xs = buf + n
            if (_scale_twice(c, v, buf, xs, n, s, f, saved) if predict
                    else _scale_entries(c, v, xs, n, s, f, True, saved)):
                _unscale_entries(c, n, s, f, saved)
                return NAN
            if predict:  # from the row standardized before its values were learned (buf)
                self._probas(c, buf, n, pk)
                p0 = self._mix(pk)
        ip[0], ip[1] = 0, n
        # reserved: cannot fail; standardized with a prediction first, that one is returned (not this one)
        refused = self._learn(c, xs, ip, 1, &y, &sample_weight, NULL if s != NULL and predict else &p)
        if refused:
            if s != NULL:
                _unscale_entries(c, n, s, f, saved)
            return NAN
        return p0 if s != NULL and predict else p


# Rows already encoded, for other compiled modules (declared in _kernel.pxd).

cdef int _check_scale(cnp.ndarray stats, cnp.ndarray numeric, Py_ssize_t capacity) except -1:
    if (cnp.PyArray_NDIM(stats) != 2 or cnp.PyArray_DIM(stats, 1) != 3 or not cnp.PyArray_IS_C_CONTIGUOUS(stats)
            or cnp.PyArray_TYPE(stats) != cnp.NPY_DOUBLE or cnp.PyArray_TYPE(numeric) != cnp.NPY_DOUBLE
            or not cnp.PyArray_IS_C_CONTIGUOUS(numeric) or cnp.PyArray_DIM(stats, 0) < capacity
            or cnp.PyArray_DIM(numeric, 0) < capacity):
        raise ValueError("bind_scale: stats must be C-contiguous float64 (capacity × 3), numeric float64 "
                         "(capacity), with capacity the weights' rows")
    return 0


cdef int _row_checks(cnp.ndarray cols, cnp.ndarray vals, Py_ssize_t n, double y, Py_ssize_t capacity) except -1:
    """The contract of a row already encoded, checked (ValueError): cols contiguous intp and vals contiguous
    float64 with at least n entries, every cols[i] within the weights' `capacity`, every vals[i] finite,
    y 0 or 1. Not checked (the caller's part): the columns are distinct and exist in the feature space
    (below its number of columns, not merely its capacity), and the values are what the feature space
    encodes (numbers as they are, 1.0 for an indicator)."""
    if (cnp.PyArray_TYPE(cols) != cnp.NPY_INTP or cnp.PyArray_TYPE(vals) != cnp.NPY_DOUBLE
            or not cnp.PyArray_IS_C_CONTIGUOUS(cols) or not cnp.PyArray_IS_C_CONTIGUOUS(vals)
            or not 0 <= n <= min(cnp.PyArray_DIM(cols, 0), cnp.PyArray_DIM(vals, 0))):
        raise ValueError("cols (intp) and vals (float64) must hold n contiguous entries")
    return _row_ok(iptr(cols), dptr(vals), n, y, capacity)


cdef inline int _row_ok(Py_ssize_t* c, double* v, Py_ssize_t n, double y, Py_ssize_t capacity) except -1:
    cdef Py_ssize_t i
    cdef int bad = 0
    for i in range(n):
        bad |= not (0 <= c[i] < capacity) or not (fabs(v[i]) <= DBL_MAX)
    if bad or (y != 0.0 and y != 1.0):
        raise ValueError("a row must have columns within the weights, finite values and a label 0 or 1")
    return 0


cdef double predict_learn_row(object step, Py_ssize_t* c, double* v, Py_ssize_t n, double y,
                              double w) except? -2.0:
    """Progressive validation of the row already encoded in c/v[:n] on a model's compiled step (the
    `SampleStep` or `MixtureStep` that `OnlineLogisticRegression.compiled_step()` returns): returns p, the
    probability before the update, and learns the row with label y (0.0 or 1.0) and sample weight w;
    bitwise `predict_learn_one` of the equivalent dict row. NaN: the update was refused (a non-finite
    step or statistic): nothing was written. ValueError (-2.0 returned): a column beyond the weights, a
    non-finite value or a label not 0 or 1 (see `_row_checks` for what the caller guarantees). The caller
    holds the GIL (the step counts the optimizers' `n_iterations`), gets the step again after anything
    else changed the model's arrays (a new feature, `from_state`, `mutate`), and counts the accepted rows
    into the model's `n_samples_seen` (the step does not hold it)."""
    if type(step) is MixtureStep:
        _row_ok(c, v, n, y, cnp.PyArray_DIM((<MixtureStep> step).coef, 0))
        return (<MixtureStep> step)._row(c, v, n, y, w, True)
    if type(step) is SampleStep:
        _row_ok(c, v, n, y, cnp.PyArray_DIM((<SampleStep> step).w, 0))
        return (<SampleStep> step)._row(c, v, n, y, w, True)
    raise TypeError(f"predict_learn_row: a SampleStep or MixtureStep, got {type(step).__name__}")


cdef int nogil_step(object step, Py_ssize_t cap) except -1:
    """1 if `learn_row_nogil` can learn rows of up to `cap` entries on `step` (a `MixtureStep`: its scratch
    is reserved now, with the GIL), else 0 (a `SampleStep`, whose SGD schedule reads its optimizer's
    `n_iterations`: `predict_learn_row` with the GIL)."""
    if type(step) is not MixtureStep:
        return 0
    (<MixtureStep> step)._reserve_row(cap)
    return 1


cdef double learn_row_nogil(PyObject* step, Py_ssize_t* c, double* v, Py_ssize_t n, double y,
                            double w) noexcept nogil:
    """`predict_learn_row` without the GIL, on a step `nogil_step` accepted for rows of at least n entries
    (the caller holds a reference): p, NaN if refused (nothing written), -1.0 for a row the contract
    refuses or that does not fit the scratch (nothing done: `predict_learn_row` with the GIL says why). The
    optimizers' `n_iterations` are the caller's to count, once, with the GIL: `count_steps`."""
    cdef Py_ssize_t i, capacity = (<MixtureStep> step).capacity
    cdef int bad = 0
    for i in range(n):
        bad |= not (0 <= c[i] < capacity) or not (fabs(v[i]) <= DBL_MAX)
    if bad or (y != 0.0 and y != 1.0):
        return -1.0
    return (<MixtureStep> step)._row_nogil(c, v, n, y, w, True)


cdef int count_steps(object step, Py_ssize_t k) except -1:
    """Count `k` updates `learn_row_nogil` made on `step` into its optimizers' `n_iterations`."""
    if k:
        (<MixtureStep> step)._count(k)
    return 0


cdef double predict_row(object step, Py_ssize_t* c, double* v, Py_ssize_t n) except? -2.0:
    """The prediction of the row already encoded in c/v[:n] on a model's compiled step, without learning:
    P(y = 1), standardized with the statistics so far if the step is bound to them (`bind_scale`); bitwise
    `predict_proba_one(x)[True]` of the equivalent dict row. ValueError (-2.0 returned): a column beyond
    the weights or a non-finite value. The contract of `predict_learn_row` otherwise (the GIL held, the step
    asked again after the model's arrays changed)."""
    cdef double p[8]
    cdef double* t
    cdef MixtureStep ms
    cdef SampleStep ss
    if type(step) is MixtureStep:
        ms = <MixtureStep> step
        _row_ok(c, v, n, 0.0, cnp.PyArray_DIM(ms.coef, 0))
        if ms.stats is not None:
            t = ms._scratch(n)
            _scale_entries(c, v, t, n, dptr(ms.stats), dptr(ms.numeric), False, NULL)
            v = t
        ms._probas(c, v, n, p)
        return ms._mix(p)
    if type(step) is SampleStep:
        ss = <SampleStep> step
        _row_ok(c, v, n, 0.0, cnp.PyArray_DIM(ss.w, 0))
        if ss.stats is not None:
            t = ss._scratch(n)
            _scale_entries(c, v, t, n, dptr(ss.stats), dptr(ss.numeric), False, NULL)
            v = t
        return _sigmoid(_dot(dptr(ss.w), c, v, n) + dptr(ss.b)[0])
    raise TypeError(f"predict_row: a SampleStep or MixtureStep, got {type(step).__name__}")

# Built-in standardization (the model's ``scale=True``): River's StandardScaler, per column.

cdef inline double _scale_one(Py_ssize_t j, double x, double* s, double* f, bint learn, double* u,
                              int* bad) noexcept nogil:
    """Value x of column j standardized (unchanged if j is not numeric, f[j] == 0); with `learn`, the
    statistics of j learn x first and their old values go to u[0:3]. Sets *bad to 1 if a new statistic or
    the value is not finite (a value beyond the double range is returned as ±DBL_MAX)."""
    cdef double m0
    if f[j] == 0.0:
        return x
    if learn:
        u[0], u[1], u[2] = s[3 * j], s[3 * j + 1], s[3 * j + 2]
        s[3 * j] += 1.0
        m0 = s[3 * j + 1]
        s[3 * j + 1] = m0 + (x - m0) / s[3 * j]
        s[3 * j + 2] = s[3 * j + 2] + ((x - m0) * (x - s[3 * j + 1]) - s[3 * j + 2]) / s[3 * j]
        bad[0] |= not (fabs(s[3 * j + 1]) <= DBL_MAX) or not (fabs(s[3 * j + 2]) <= DBL_MAX)
    if s[3 * j + 2] != 0.0:
        x = (x - s[3 * j + 1]) / sqrt(s[3 * j + 2])
    else:
        x = 0.0
    if not (fabs(x) <= DBL_MAX):  # beyond the double range: the largest finite value of its sign
        bad[0] = 1
        x = DBL_MAX if x > 0 else -DBL_MAX
    return x


cdef int _scale_entries(Py_ssize_t* c, double* src, double* dst, Py_ssize_t n, double* s, double* f, bint learn,
                        double* u) noexcept nogil:
    """The loop of `scale_row` on raw pointers: dst[i] ← src[i] standardized (dst may be src); with
    `learn`, the statistics learn src[i] first and their old values go to u[3i:3i + 3]. Returns 1 if a new
    statistic or value is not finite (a value beyond the double range is written as ±DBL_MAX), else 0."""
    cdef Py_ssize_t i
    cdef int bad = 0
    for i in range(n):
        dst[i] = _scale_one(c[i], src[i], s, f, learn, u + 3 * i if learn else NULL, &bad)
    return bad


cdef inline int _scale_twice(Py_ssize_t* c, double* src, double* before, double* after, Py_ssize_t n, double* s,
                             double* f, double* u) noexcept nogil:
    """`_scale_entries(c, src, before, n, s, f, False, NULL)` then `_scale_entries(c, src, after, n, s, f,
    True, u)` in one loop (the row's columns distinct: entry i's statistics are only its own); returns the
    second's result."""
    cdef Py_ssize_t i
    cdef int bad = 0, ignored = 0
    for i in range(n):
        before[i] = _scale_one(c[i], src[i], s, f, False, NULL, &ignored)
        after[i] = _scale_one(c[i], src[i], s, f, True, u + 3 * i, &bad)
    return bad


cdef void _unscale_entries(Py_ssize_t* c, Py_ssize_t n, double* s, double* f, double* u) noexcept nogil:
    """Put back the statistics `_scale_entries(..., learn=True, u)` changed (last entry first)."""
    cdef Py_ssize_t i, j
    for i in range(n - 1, -1, -1):
        j = c[i]
        if f[j] != 0.0:
            s[3 * j], s[3 * j + 1], s[3 * j + 2] = u[3 * i], u[3 * i + 1], u[3 * i + 2]


def scale_row(cnp.ndarray cols, cnp.ndarray vals, Py_ssize_t n, cnp.ndarray stats, cnp.ndarray numeric,
              bint learn, object saved):
    """Standardize the row in cols/vals[:n] in place, as River's ``StandardScaler`` (learn, then
    transform): for each entry whose column j has numeric[j] != 0, with stats[j] = (count, mean, var),

        learn:      count ← count + 1;  m0 = mean;  mean ← mean + (x − m0)/count;
                    var ← var + ((x − m0)(x − mean) − var)/count
        transform:  x ← (x − mean)/√var if var else 0

    Indicator columns (numeric[j] == 0) are left as they are. With `learn`, the old stats of entry i go
    to saved[3i:3i + 3] first (see `unscale_row`). Returns False if a new statistic or value is not finite
    (the caller puts the stats back)."""
    if (cnp.PyArray_NDIM(stats) != 2 or cnp.PyArray_DIM(stats, 1) != 3 or not cnp.PyArray_IS_C_CONTIGUOUS(stats)
            or cnp.PyArray_TYPE(stats) != cnp.NPY_DOUBLE or cnp.PyArray_TYPE(numeric) != cnp.NPY_DOUBLE
            or cnp.PyArray_TYPE(cols) != cnp.NPY_INTP or cnp.PyArray_TYPE(vals) != cnp.NPY_DOUBLE
            or not 0 <= n <= min(cnp.PyArray_DIM(cols, 0), cnp.PyArray_DIM(vals, 0))):
        raise ValueError("scale_row: inconsistent arrays")
    cdef Py_ssize_t i, size = min(cnp.PyArray_DIM(stats, 0), cnp.PyArray_DIM(numeric, 0))
    cdef Py_ssize_t* c = iptr(cols)
    cdef double* v = dptr(vals)
    cdef double* s = dptr(stats)
    cdef double* f = dptr(numeric)
    cdef double* u = NULL
    cdef int bad = 0
    for i in range(n):
        if not 0 <= c[i] < size:
            raise ValueError("scale_row: a column is beyond the statistics")
    if learn:
        if saved is None or cnp.PyArray_DIM(<cnp.ndarray> saved, 0) < 3 * n:
            raise ValueError("scale_row: room for 3n saved statistics is needed")
        u = dptr(<cnp.ndarray> saved)
    bad = _scale_entries(c, v, v, n, s, f, learn, u)
    return bad == 0


def unscale_row(cnp.ndarray cols, Py_ssize_t n, cnp.ndarray stats, cnp.ndarray numeric, cnp.ndarray saved):
    """Put back the statistics that `scale_row(..., learn=True, saved)` changed (last entry first)."""
    cdef Py_ssize_t i
    cdef Py_ssize_t* c = iptr(cols)
    cdef double* s = dptr(stats)
    cdef double* f = dptr(numeric)
    cdef double* u = dptr(saved)
    if cnp.PyArray_DIM(saved, 0) < 3 * n or not 0 <= n <= cnp.PyArray_DIM(cols, 0):
        raise ValueError("unscale_row: inconsistent arrays")
    for i in range(n):
        if not 0 <= c[i] < min(cnp.PyArray_DIM(stats, 0), cnp.PyArray_DIM(numeric, 0)):
            raise ValueError("unscale_row: a column is beyond the statistics")
    _unscale_entries(c, n, s, f, u)
