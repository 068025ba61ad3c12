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

import numpy as np

from stream_logreg._json cimport RowDecoder

cnp.import_array()

__all__ = ["MiniBatch"]


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
