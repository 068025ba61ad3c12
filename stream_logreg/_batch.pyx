# cython: boundscheck=False, wraparound=False
"""The compiled part of a mini-batch loop: message values decoded straight into the next mini-batch's
encoded rows, then learned in one step.

:class:`MiniBatch` holds the labelled events of the next mini-batch in stream order, as the model's
mini-batch step takes them: the CSR buffers ``cols``/``vals``/``indptr`` of their rows and their labels.
:meth:`MiniBatch.take` reads messages of the common shape with a row decoder
(``stream_logreg._json.RowDecoder``) from their bytes into those buffers, no Python object per message or
per feature; a message it declines is the caller's (the codec's way), which adds a labelled one as a dict
row with :meth:`MiniBatch.add`. :meth:`MiniBatch.learn` then makes the model's one mini-batch step
(``predict_learn_encoded_rows`` on the buffers), bitwise what ``predict_learn_rows`` gives for the events'
own dicts: an encoded row holds the columns and values ``FeatureSpace.encode`` writes for its message (the
row decoder's contract). It keeps the vocabulary's own key of every entry, so that a row whose key is no
longer at its column (a model restored or synchronised in between, a vocabulary rolled back) is learned
from its dict instead, as is a batch with dict rows (their new features are created in row order, as the
dict path creates them).

Memory: at most ``size`` rows of at most the row decoder's ``MAX_ROW`` entries (24 bytes each: column,
value, a reference to the key), and what ``add`` was given.

>>> from stream_logreg import OnlineLogisticRegression
>>> from stream_logreg._json import RowDecoder
>>> from stream_logreg.codec import JsonCodec
>>> model, twin = OnlineLogisticRegression(), OnlineLogisticRegression()
>>> for m in (model, twin):
...     m.learn_one({"a": 1.0, "b": 2.0}, True)
>>> values = [b'{"x": {"a": 0.5, "b": -1}, "y": 1}', b'{"x": {"a": 2, "c": 1}, "y": 0}']
>>> batch = MiniBatch(2)
>>> batch.take(RowDecoder(JsonCodec()), values, 0, model.features)  # the second has a new feature
1
>>> batch.add({"a": 2, "c": 1}, 0, 1)
>>> batch.sources(), batch.labels()
([0, 1], [1, 0])
>>> p = batch.learn(model)
>>> p.tolist() == twin.predict_learn_rows([{"a": 0.5, "b": -1}, {"a": 2, "c": 1}], [1, 0]).tolist()
True
>>> model.coef.tobytes() == twin.coef.tobytes()
True
>>> batch.clear(); len(batch)
0
"""

cimport numpy as cnp
from cpython.dict cimport PyDict_SetItem
from cpython.float cimport PyFloat_FromDouble
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from cpython.object cimport PyObject
from cpython.ref cimport Py_DECREF, Py_INCREF
from libc.math cimport isfinite, sqrt

import numpy as np

from stream_logreg._json cimport RowDecoder

cnp.import_array()

__all__ = ["MiniBatch", "check_rows", "standardize_entries"]


cdef class MiniBatch:
    """The next mini-batch of at most ``size`` labelled events, encoded (module docstring).

    Rows come in order through :meth:`take` (messages of the common shape, from their bytes) and
    :meth:`add` (a dict row); each row remembers the index of its value in the list it came from
    (:meth:`sources`). ``len()`` is the number of rows; :meth:`learn` learns them all.
    """

    cdef readonly Py_ssize_t size
    cdef Py_ssize_t m, nnz, cap, n_dicts
    cdef cnp.ndarray cols, vals, indptr, y, src
    cdef PyObject** keys  # the vocabulary's key of each entry (a reference held); NULL in none
    cdef list xs  # per row: None (encoded) or its dict

    def __cinit__(self):
        self.keys = NULL

    def __init__(self, Py_ssize_t size):
        if size < 1:
            raise ValueError(f"a mini-batch holds at least 1 event, got {size}")
        self.size = size
        self.m = self.nnz = self.n_dicts = 0
        self.cap = 0
        self.cols = np.zeros(0, dtype=np.intp)
        self.vals = np.zeros(0)
        self.indptr = np.zeros(size + 1, dtype=np.intp)
        self.y = np.zeros(size)
        self.src = np.zeros(size, dtype=np.intp)
        self.xs = []
        self._reserve(64)

    def __dealloc__(self):
        self._release(0)
        PyMem_Free(self.keys)

    def __len__(self):
        return self.m

    cdef void _release(self, Py_ssize_t start) noexcept:
        """Drop the key references of entries ``start:``."""
        cdef Py_ssize_t j
        if self.keys != NULL:
            for j in range(start, self.nnz):
                if self.keys[j] != NULL:
                    Py_DECREF(<object> self.keys[j])
                    self.keys[j] = NULL

    cdef int _reserve(self, Py_ssize_t need) except -1:
        """Room for ``need`` entries in all."""
        cdef Py_ssize_t cap = max(self.cap, 64), j
        if need <= self.cap:
            return 0
        while cap < need:
            cap *= 2
        cdef PyObject** keys = <PyObject**> PyMem_Realloc(self.keys, cap * sizeof(PyObject*))
        if keys == NULL:
            raise MemoryError()
        self.keys = keys
        for j in range(self.cap, cap):
            keys[j] = NULL
        cols, vals = np.zeros(cap, dtype=np.intp), np.zeros(cap)
        cols[:self.nnz], vals[:self.nnz] = self.cols[:self.nnz], self.vals[:self.nnz]
        self.cols, self.vals, self.cap = cols, vals, cap
        return 0

    def take(self, RowDecoder rows, list values not None, Py_ssize_t start, object space):
        """Add the messages ``values[start:]`` of the common shape with a label, one after the other, as
        rows of ``space`` (the model's ``FeatureSpace``, decoded by ``rows``), until the batch is full or a
        value declines; returns the index of the first value not taken (``len(values)`` at the end).
        Without a row decoder (None: a codec without one) nothing is taken."""
        cdef Py_ssize_t i, n, j, e, k = PyList_GET_SIZE(values)
        cdef Py_ssize_t* c
        cdef double* v
        cdef Py_ssize_t* ip = <Py_ssize_t*> cnp.PyArray_DATA(self.indptr)
        cdef double* yp = <double*> cnp.PyArray_DATA(self.y)
        cdef Py_ssize_t* sp = <Py_ssize_t*> cnp.PyArray_DATA(self.src)
        if start < 0 or start > k:
            raise ValueError(f"start {start} is outside the {k} values")
        if rows is None or self.m >= self.size or not rows.bind(space):
            return start
        for i in range(start, k):
            if self.m >= self.size:
                return i
            n = rows.decode(<object> PyList_GET_ITEM(values, i))
            if n < 0:
                return i
            e = self.nnz
            if e + n > self.cap:
                self._reserve(e + n)
            c = <Py_ssize_t*> cnp.PyArray_DATA(self.cols)
            v = <double*> cnp.PyArray_DATA(self.vals)
            for j in range(n):
                c[e + j] = rows.c[j]
                v[e + j] = rows.v[j]
                Py_INCREF(<object> rows.k[j])
                self.keys[e + j] = rows.k[j]
            self.nnz = e + n
            yp[self.m] = rows.label
            sp[self.m] = i
            self.m += 1
            ip[self.m] = self.nnz
            self.xs.append(None)
        return k

    def add(self, dict x not None, object y, Py_ssize_t source):
        """Add a labelled event as the dict row ``x`` (label ``y``: 0, 1, False or True; ``source``: the
        index of its value); it is encoded when the batch is learned."""
        if self.m >= self.size:
            raise ValueError(f"the mini-batch is full ({self.size} rows)")
        if not (y is True or y is False or (type(y) is int and (y == 0 or y == 1))):
            raise ValueError(f"labels must be 0, 1, False or True, got {y!r}")
        (<double*> cnp.PyArray_DATA(self.y))[self.m] = 1.0 if y else 0.0
        (<Py_ssize_t*> cnp.PyArray_DATA(self.src))[self.m] = source
        self.m += 1
        (<Py_ssize_t*> cnp.PyArray_DATA(self.indptr))[self.m] = self.nnz
        self.xs.append(x)
        self.n_dicts += 1

    def sources(self) -> list:
        """The index of each row's value in the list it came from, in order."""
        return self.src[:self.m].tolist()

    def labels(self) -> list:
        """The label of each row (0 or 1), in order."""
        return self.y[:self.m].astype(np.intp).tolist()

    cdef dict _row_dict(self, Py_ssize_t i):
        cdef Py_ssize_t* ip = <Py_ssize_t*> cnp.PyArray_DATA(self.indptr)
        cdef double* v = <double*> cnp.PyArray_DATA(self.vals)
        cdef dict x = {}
        cdef Py_ssize_t j
        for j in range(ip[i], ip[i + 1]):
            PyDict_SetItem(x, <object> self.keys[j], PyFloat_FromDouble(v[j]))
        return x

    def rows(self) -> list:
        """The rows as dicts (an encoded row as the dict of its keys and float values: equal, for the
        model, to its event's own ``x``), in order."""
        return [self._row_dict(i) if x is None else x for i, x in enumerate(self.xs)]

    cdef bint _current(self, object space):
        """Whether every entry's key is still the one at its column in ``space``'s vocabulary."""
        cdef object keys = getattr(space, "keys", None)
        cdef Py_ssize_t j, col, n
        cdef Py_ssize_t* c = <Py_ssize_t*> cnp.PyArray_DATA(self.cols)
        if type(keys) is not list or getattr(space, "n_bits", 0) is not None:
            return False
        n = PyList_GET_SIZE(keys)
        for j in range(self.nnz):
            col = c[j]
            if not 0 <= col < n or PyList_GET_ITEM(keys, col) != self.keys[j]:
                return False
        return True

    def learn(self, object model):
        """Predict and learn the rows with ``model`` (an ``OnlineLogisticRegression``) in one mini-batch
        step; returns the predictions before the update (an array, bitwise ``predict_learn_rows`` of the
        rows' dicts). A refused batch raises the model's ``ValueError`` (the model unchanged). The rows
        stay: :meth:`clear` them."""
        cdef Py_ssize_t m = self.m
        cdef object step = getattr(model, "predict_learn_encoded_rows", None)
        if m == 0:
            return np.empty(0)
        if self.n_dicts == 0 and step is not None and self._current(model.features):
            return step(self.cols[:self.nnz], self.vals[:self.nnz], self.indptr[:m + 1], self.y[:m])
        return model.predict_learn_rows(self.rows(), self.y[:m].copy())

    def keep(self, mask) -> None:
        """Keep only the rows where ``mask`` (one bool per row) is true, in order."""
        cdef cnp.ndarray keep = np.asarray(mask, dtype=bool)
        if keep.shape[0] != self.m:
            raise ValueError(f"one flag per row ({self.m}), got {keep.shape[0]}")
        cdef Py_ssize_t* ip = <Py_ssize_t*> cnp.PyArray_DATA(self.indptr)
        cdef Py_ssize_t* c = <Py_ssize_t*> cnp.PyArray_DATA(self.cols)
        cdef double* v = <double*> cnp.PyArray_DATA(self.vals)
        cdef double* yp = <double*> cnp.PyArray_DATA(self.y)
        cdef Py_ssize_t* sp = <Py_ssize_t*> cnp.PyArray_DATA(self.src)
        cdef Py_ssize_t i, j, r = 0, e = 0, a, b
        cdef list xs = []
        for i in range(self.m):
            a, b = ip[i], ip[i + 1]
            if keep[i]:
                for j in range(a, b):
                    c[e] = c[j]
                    v[e] = v[j]
                    self.keys[e] = self.keys[j]  # moved down (the reference with it)
                    if e != j:
                        self.keys[j] = NULL
                    e += 1
                yp[r] = yp[i]
                sp[r] = sp[i]
                xs.append(self.xs[i])
                r += 1
                ip[r] = e
            else:
                for j in range(a, b):
                    if self.keys[j] != NULL:
                        Py_DECREF(<object> self.keys[j])
                        self.keys[j] = NULL
                if self.xs[i] is not None:
                    self.n_dicts -= 1
        self.m, self.nnz, self.xs = r, e, xs

    def clear(self) -> None:
        """Forget every row."""
        self._release(0)
        self.m = self.nnz = self.n_dicts = 0
        self.xs.clear()


def check_rows(cnp.ndarray cols not None, cnp.ndarray vals not None, cnp.ndarray indptr not None,
               Py_ssize_t n_columns):
    """``ValueError`` unless the m = len(indptr) − 1 CSR rows ``cols``/``vals`` (contiguous intp and
    float64, exactly the rows' entries) are well formed: ``indptr`` (contiguous intp) starts at 0, does not
    decrease and ends at len(cols); every column is in [0, n_columns); every value is finite."""
    if (cnp.PyArray_TYPE(cols) != cnp.NPY_INTP or cnp.PyArray_TYPE(vals) != cnp.NPY_DOUBLE
            or cnp.PyArray_TYPE(indptr) != cnp.NPY_INTP or not cnp.PyArray_IS_C_CONTIGUOUS(cols)
            or not cnp.PyArray_IS_C_CONTIGUOUS(vals) or not cnp.PyArray_IS_C_CONTIGUOUS(indptr)
            or cnp.PyArray_NDIM(indptr) != 1 or cnp.PyArray_DIM(indptr, 0) < 1):
        raise ValueError("cols and indptr must be contiguous intp arrays and vals a contiguous float64 array")
    cdef Py_ssize_t m = cnp.PyArray_DIM(indptr, 0) - 1, nnz = cnp.PyArray_DIM(cols, 0), i
    cdef Py_ssize_t* c = <Py_ssize_t*> cnp.PyArray_DATA(cols)
    cdef double* v = <double*> cnp.PyArray_DATA(vals)
    cdef Py_ssize_t* ip = <Py_ssize_t*> cnp.PyArray_DATA(indptr)
    if ip[0] != 0 or ip[m] != nnz or cnp.PyArray_DIM(vals, 0) != nnz:
        raise ValueError("indptr must start at 0, not decrease and end within cols and vals")
    for i in range(m):
        if ip[i + 1] < ip[i]:
            raise ValueError("indptr must start at 0, not decrease and end within cols and vals")
    for i in range(nnz):
        if not (0 <= c[i] < n_columns and isfinite(v[i])):
            raise ValueError(f"the columns must exist in the feature space (0 to {n_columns - 1}) and the "
                             "values be finite")
    return None


# Built-in standardization of a mini-batch (the model's ``scale=True``): River's StandardScaler.learn_many,
# then transform_many, on CSR entries, in one compiled pass (bitwise the numpy formulas it replaces, kept in
# tests/test_compiled_batches.py as the oracle).

cdef double _MAX = np.finfo(np.float64).max


cdef inline double _z(double x, double mean, double var) noexcept:
    """(x − mean)/√var, 0 where var is 0 (River's ``transform_one`` of a numeric feature)."""
    if var != 0.0:
        return (x - mean) / sqrt(var)
    return 0.0


def standardize_entries(cnp.ndarray cols not None, cnp.ndarray vals not None, cnp.ndarray stats not None,
                        cnp.ndarray numeric not None, cnp.ndarray before):
    """The CSR entries ``cols``/``vals`` of a mini-batch (finite values; a row has a column at most once)
    standardized with the running statistics ``stats`` (per column: count, mean, population variance)
    merged with the batch's, as ``learn_many`` then ``transform_many``; ``numeric`` flags the numeric
    columns (the others, indicators, are kept as they are).

    Per numeric column of the batch: its k entries' count, mean Σ x/k and variance Σ (x − mean)²/k (in
    entry order; a column of one value: that value and 0), merged with the running (c₀, m₀, v₀): n = c₀ + k,
    a = c₀/n, b = k/n, mean = a·m₀ + b·mean_batch, var = a·v₀ + b·var_batch + a·b·(m₀ − mean_batch)²; then
    each entry (x − mean)/√var (0 where var is 0). ``before`` (or None) receives the entries standardized
    with the running statistics alone, clipped to the finite doubles (the predictions before the batch).

    Returns ``(out, learned)``: the standardized entries and ``(columns, merged)``, the statistics to write
    back once the update is accepted (``vals`` itself and None when no entry is numeric). Raises
    ``ValueError`` if a merged statistic or a standardized value is not finite. Writes nothing else.
    """
    cdef Py_ssize_t nnz = cnp.PyArray_DIM(cols, 0), e, j, s, k = 0, size = 16, h, n_stats
    if (cnp.PyArray_TYPE(cols) != cnp.NPY_INTP or cnp.PyArray_TYPE(vals) != cnp.NPY_DOUBLE
            or cnp.PyArray_DIM(vals, 0) < nnz or cnp.PyArray_TYPE(stats) != cnp.NPY_DOUBLE
            or cnp.PyArray_NDIM(stats) != 2 or cnp.PyArray_DIM(stats, 1) != 3
            or cnp.PyArray_TYPE(numeric) != cnp.NPY_DOUBLE
            or not (cnp.PyArray_IS_C_CONTIGUOUS(cols) and cnp.PyArray_IS_C_CONTIGUOUS(vals)
                    and cnp.PyArray_IS_C_CONTIGUOUS(stats) and cnp.PyArray_IS_C_CONTIGUOUS(numeric))
            or (before is not None and (cnp.PyArray_TYPE(before) != cnp.NPY_DOUBLE
                                        or not cnp.PyArray_IS_C_CONTIGUOUS(before)
                                        or cnp.PyArray_DIM(before, 0) < nnz))):
        raise ValueError("standardize_entries: contiguous intp cols, float64 vals, stats (n×3), numeric")
    n_stats = min(cnp.PyArray_DIM(stats, 0), cnp.PyArray_DIM(numeric, 0))
    cdef Py_ssize_t* c = <Py_ssize_t*> cnp.PyArray_DATA(cols)
    cdef double* v = <double*> cnp.PyArray_DATA(vals)
    cdef double* S = <double*> cnp.PyArray_DATA(stats)
    cdef double* num = <double*> cnp.PyArray_DATA(numeric)
    cdef double* bp
    cdef double z, x
    for e in range(nnz):
        if not 0 <= c[e] < n_stats:
            raise ValueError("standardize_entries: a column beyond the statistics")
    if before is not None:  # with the statistics so far
        bp = <double*> cnp.PyArray_DATA(before)
        for e in range(nnz):
            j = c[e]
            z = _z(v[e], S[3 * j + 1], S[3 * j + 2]) if num[j] != 0.0 else v[e]
            if z > _MAX:
                z = _MAX
            elif z < -_MAX:
                z = -_MAX
            bp[e] = z
    # The numeric columns of the batch, in order of first appearance: slot + 1 in an open-addressing table.
    while size < 2 * nnz:
        size <<= 1
    cdef cnp.ndarray table_a = np.zeros(size, dtype=np.intp)
    cdef cnp.ndarray slot_a = np.empty(max(nnz, 1), dtype=np.intp)
    cdef cnp.ndarray stat_cols = np.empty(max(nnz, 1), dtype=np.intp)
    cdef Py_ssize_t* table = <Py_ssize_t*> cnp.PyArray_DATA(table_a)
    cdef Py_ssize_t* slot = <Py_ssize_t*> cnp.PyArray_DATA(slot_a)
    cdef Py_ssize_t* sc = <Py_ssize_t*> cnp.PyArray_DATA(stat_cols)
    for e in range(nnz):
        j = c[e]
        if num[j] == 0.0:
            slot[e] = -1
            continue
        h = (<size_t> j * <size_t> 0x9E3779B97F4A7C15) & <size_t> (size - 1)
        while table[h] != 0 and sc[table[h] - 1] != j:
            h = (h + 1) & (size - 1)
        if table[h] == 0:
            sc[k] = j
            k += 1
            table[h] = k
        slot[e] = table[h] - 1
    if k == 0:
        return vals, None
    cdef cnp.ndarray work = np.zeros((6, k))
    cdef double* count = <double*> cnp.PyArray_DATA(work)
    cdef double* lo = count + k
    cdef double* hi = count + 2 * k
    cdef double* mean = count + 3 * k
    cdef double* var = count + 4 * k
    for s in range(k):
        lo[s], hi[s] = np.inf, -np.inf
    for e in range(nnz):
        s = slot[e]
        if s >= 0:
            x = v[e]
            count[s] += 1.0
            if x < lo[s]:
                lo[s] = x
            if x > hi[s]:
                hi[s] = x
    for e in range(nnz):
        s = slot[e]
        if s >= 0 and lo[s] != hi[s]:
            mean[s] += v[e] / count[s]
    for s in range(k):
        if lo[s] == hi[s]:  # one value: its mean is that value exactly, its variance 0
            mean[s] = lo[s]
    for e in range(nnz):
        s = slot[e]
        if s >= 0 and lo[s] != hi[s]:
            x = v[e] - mean[s]
            var[s] += (x * x) / count[s]
    cdef cnp.ndarray merged = np.empty((k, 3))
    cdef double* M = <double*> cnp.PyArray_DATA(merged)
    cdef double c0, m0, v0, n, a, b, d
    cdef bint finite = True
    for s in range(k):
        j = sc[s]
        c0, m0, v0 = S[3 * j], S[3 * j + 1], S[3 * j + 2]
        n = c0 + count[s]
        a, b = c0 / n, count[s] / n
        d = m0 - mean[s]
        M[3 * s] = n
        M[3 * s + 1] = a * m0 + b * mean[s]
        M[3 * s + 2] = a * v0 + b * var[s] + a * b * (d * d)
        finite = finite and isfinite(M[3 * s]) and isfinite(M[3 * s + 1]) and isfinite(M[3 * s + 2])
    cdef cnp.ndarray out = np.empty(nnz)
    cdef double* o = <double*> cnp.PyArray_DATA(out)
    for e in range(nnz):
        s = slot[e]
        o[e] = v[e] if s < 0 else _z(v[e], M[3 * s + 1], M[3 * s + 2])
        finite = finite and isfinite(o[e])
    if not finite:
        raise ValueError("the values of the batch are too large to standardize (the running mean, variance "
                         "or a standardized value would not be finite); the batch was refused")
    return out, (stat_cols[:k], merged)
