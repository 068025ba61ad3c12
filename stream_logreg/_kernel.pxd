# The kernel's declarations that the feature space's encoder (_features.pyx) shares: the C-API calls of the
# row loops, and the per-model cache of column look-ups (see RowLayout in _kernel.pyx).
cimport cython
from cpython.object cimport PyObject


cdef extern from "Python.h":
    # Type checks and conversions on borrowed references (no reference counting in the row loops), shared by
    # the kernel and the feature space's encoder.
    bint _is_float "PyFloat_Check" (PyObject* o)
    bint _is_bool "PyBool_Check" (PyObject* o)
    bint _is_int "PyLong_CheckExact" (PyObject* o)
    bint _is_str "PyUnicode_CheckExact" (PyObject* o)
    double _float_value "PyFloat_AS_DOUBLE" (PyObject* o)
    double _int_value "PyLong_AsDouble" (PyObject* o)
    Py_ssize_t _column_value "PyLong_AsSsize_t" (PyObject* o)
    PyObject* _true "Py_True"
    PyObject* PyErr_Occurred()
    void PyErr_Clear()
    object PyType_GenericAlloc(type t, Py_ssize_t n)  # what a tuple subclass's tp_alloc is


cdef struct PairEntry:
    PyObject* k  # a str key and a str value (held), whose indicator k=v is in column `col`; NULL: empty
    PyObject* v
    Py_hash_t h
    Py_ssize_t col


@cython.final
cdef class RowLayout:
    cdef PyObject** keys
    cdef Py_ssize_t* cols
    cdef Py_ssize_t n, cap
    cdef PairEntry* pairs  # the current table of pairs, and the previous one (or NULL)
    cdef PairEntry* older
    cdef readonly Py_ssize_t n_pairs  # how many indicator look-ups are cached (in both tables)
    cdef Py_ssize_t pairs_size, max_pairs, n_current, older_size, n_older
    # With a vocabulary: whether every indicator of a str key and value in it is cached (so that a pair not
    # cached is new), as long as the vocabulary still has `synced` columns (else columns were created
    # elsewhere and it is not known any more).
    cdef public bint complete
    cdef public Py_ssize_t synced

    cpdef clear(self)
    cdef int put(self, Py_ssize_t i, PyObject* key, Py_ssize_t col) except -1
    cdef Py_ssize_t pair_get(self, PyObject* k, PyObject* v, Py_hash_t h) noexcept
    cdef int pair_put(self, PyObject* k, PyObject* v, Py_hash_t h, Py_ssize_t col, Py_ssize_t limit) except -1
    cdef void prefetch(self, dict x) noexcept
    cdef void _insert(self, PyObject* k, PyObject* v, Py_hash_t h, Py_ssize_t col) noexcept
    cdef int _rotate(self) except -1
    cdef void _swap(self) noexcept


cdef Py_hash_t pair_hash(PyObject* k, PyObject* v) noexcept
cdef Py_ssize_t pair_limit(bint hashed) noexcept
cdef void indicator_hint(dict columns, PyObject* k, PyObject* v, bint entry) noexcept
cdef int set_indicator(dict columns, object key, PyObject* k, PyObject* v, object col) except -1


# Progressive validation of a row already encoded (columns and values, as `encode` writes them), for other
# compiled modules: see `predict_learn_row` in _kernel.pyx (the step is `OnlineLogisticRegression.compiled_step()`;
# returns p before the update, NaN if the update is refused with nothing written, -2.0 with a ValueError set
# for a broken contract; with the GIL held).
cdef double predict_learn_row(object step, Py_ssize_t* c, double* v, Py_ssize_t n, double y,
                              double w) except? -2.0

# The prediction alone of a row already encoded (see `predict_row` in _kernel.pyx): P(y = 1), bitwise
# `predict_proba_one`; -2.0 with a ValueError set for a broken contract.
cdef double predict_row(object step, Py_ssize_t* c, double* v, Py_ssize_t n) except? -2.0

# The same without the GIL, for a pass over many rows (see `learn_row_nogil` in _kernel.pyx): `nogil_step`
# (with the GIL) says whether the step can (a MixtureStep) and reserves its scratch for rows of `cap`
# entries; `learn_row_nogil` returns p, NaN (refused, nothing written) or -1.0 (the row is not one the step
# takes: nothing done); `count_steps` (with the GIL) adds the accepted updates to the optimizers'
# `n_iterations`, once after the pass.
cdef int nogil_step(object step, Py_ssize_t cap) except -1
cdef double learn_row_nogil(PyObject* step, Py_ssize_t* c, double* v, Py_ssize_t n, double y,
                            double w) noexcept nogil
cdef int count_steps(object step, Py_ssize_t k) except -1
