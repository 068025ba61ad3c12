# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled inner loops: encoding a dict row into (column, value) buffers, the sparse dot product and
the per-coordinate optimizer steps. The formulas live in the docstrings of `stream_logreg.optim`; these
loops apply them to the coordinates named in `cols` only, in order.

Arrays are passed as C-contiguous numpy arrays (float64 for values, intp for columns) and are read
through raw pointers, which costs far less per call than typed memoryviews.
"""

cimport numpy as cnp
from cpython.dict cimport PyDict_GetItem, PyDict_Next
from cpython.float cimport PyFloat_AS_DOUBLE
from cpython.object cimport PyObject
from libc.math cimport fabs, isfinite, sqrt

cnp.import_array()


cdef inline double* dptr(cnp.ndarray a):
    return <double*> cnp.PyArray_DATA(a)


cdef inline Py_ssize_t* iptr(cnp.ndarray a):
    return <Py_ssize_t*> cnp.PyArray_DATA(a)


def encode(dict x, dict columns, cnp.ndarray cols, cnp.ndarray vals, bint merge):
    """Write the row `x` as columns and values into the buffers; return how many, or -1.

    Handles what needs no decision: keys already in `columns` with a finite float, int or bool value,
    and strings whose indicator key `(k, v)` is already in `columns`. Anything else (a new key, a
    non-finite or non-numeric value, a full buffer) returns -1 and the caller takes the slow path,
    which grows the feature space or raises. With `merge`, repeated columns (hash collisions) are
    summed into one entry.
    """
    cdef Py_ssize_t pos = 0, n = 0, cap = cnp.PyArray_DIM(cols, 0), i, j
    cdef PyObject* key
    cdef PyObject* value
    cdef PyObject* col
    cdef Py_ssize_t* c = iptr(cols)
    cdef double* v = dptr(vals)
    cdef double d
    cdef Py_ssize_t ci
    while PyDict_Next(x, &pos, &key, &value):
        if n >= cap:
            return -1
        tv = type(<object> value)
        if isinstance(<object> value, float):
            d = PyFloat_AS_DOUBLE(<object> value)
            if not isfinite(d):
                return -1
            col = PyDict_GetItem(columns, <object> key)
        elif tv is bool:
            d = 1.0 if (<object> value) is True else 0.0
            col = PyDict_GetItem(columns, <object> key)
        elif tv is int:
            try:
                d = <double> (<object> value)
            except OverflowError:
                return -1
            col = PyDict_GetItem(columns, <object> key)
        elif tv is str:
            d = 1.0
            col = PyDict_GetItem(columns, (<object> key, <object> value))
        else:
            return -1
        if col is NULL:
            return -1
        ci = <Py_ssize_t> (<object> col)
        if merge:
            for j in range(n):
                if c[j] == ci:
                    v[j] += d
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


def dot(cnp.ndarray w, cnp.ndarray cols, cnp.ndarray vals, Py_ssize_t n):
    """Σ_i w[cols[i]] · vals[i] over the first n entries."""
    cdef double* wp = dptr(w)
    cdef Py_ssize_t* c = iptr(cols)
    cdef double* v = dptr(vals)
    cdef double s = 0.0
    cdef Py_ssize_t i
    for i in range(n):
        s += wp[c[i]] * v[i]
    return s


def scaled_gradient(cnp.ndarray w, cnp.ndarray cols, cnp.ndarray vals, Py_ssize_t n, double g,
                    double l2, cnp.ndarray out):
    """out[i] = g · vals[i] + l2 · w[cols[i]]: the per-sample gradient of the touched coordinates."""
    cdef double* wp = dptr(w)
    cdef Py_ssize_t* c = iptr(cols)
    cdef double* v = dptr(vals)
    cdef double* o = dptr(out)
    cdef Py_ssize_t i
    if l2 == 0.0:
        for i in range(n):
            o[i] = g * v[i]
    else:
        for i in range(n):
            o[i] = g * v[i] + l2 * wp[c[i]]


def all_finite(cnp.ndarray a, Py_ssize_t n):
    """Whether the first n values are all finite."""
    cdef double* p = dptr(a)
    cdef Py_ssize_t i
    for i in range(n):
        if not isfinite(p[i]):
            return False
    return True


def sgd_step(cnp.ndarray w, cnp.ndarray cols, cnp.ndarray grads, Py_ssize_t n, double lr):
    """w_j ← w_j − η g_j."""
    cdef double* wp = dptr(w)
    cdef Py_ssize_t* c = iptr(cols)
    cdef double* g = dptr(grads)
    cdef Py_ssize_t i
    for i in range(n):
        wp[c[i]] -= lr * g[i]


def adagrad_step(cnp.ndarray w, cnp.ndarray acc, cnp.ndarray cols, cnp.ndarray grads, Py_ssize_t n,
                 double lr, double eps):
    """G_j ← G_j + g_j²;  w_j ← w_j − η g_j / (√G_j + ε)."""
    cdef double* wp = dptr(w)
    cdef double* G = dptr(acc)
    cdef Py_ssize_t* c = iptr(cols)
    cdef double* g = dptr(grads)
    cdef Py_ssize_t i, j
    for i in range(n):
        j = c[i]
        G[j] += g[i] * g[i]
        wp[j] -= lr * g[i] / (sqrt(G[j]) + eps)


def ftrl_step(cnp.ndarray w, cnp.ndarray z_acc, cnp.ndarray n_acc, cnp.ndarray cols, cnp.ndarray grads,
              Py_ssize_t n, double alpha, double beta, double l1, double l2):
    """FTRL-Proximal (McMahan et al. 2013, Algorithm 1) on the touched coordinates:

    σ_j = (√(n_j + g_j²) − √n_j) / α;  z_j ← z_j + g_j − σ_j w_j;  n_j ← n_j + g_j²;
    w_j = 0 if |z_j| ≤ λ1 else −(z_j − sgn(z_j) λ1) / ((β + √n_j) / α + λ2).
    """
    cdef double* wp = dptr(w)
    cdef double* z = dptr(z_acc)
    cdef double* na = dptr(n_acc)
    cdef Py_ssize_t* c = iptr(cols)
    cdef double* g = dptr(grads)
    cdef Py_ssize_t i, j
    cdef double gi, sigma, nn, zj
    for i in range(n):
        j = c[i]
        gi = g[i]
        nn = na[j] + gi * gi
        sigma = (sqrt(nn) - sqrt(na[j])) / alpha
        z[j] += gi - sigma * wp[j]
        na[j] = nn
        zj = z[j]
        if fabs(zj) <= l1:
            wp[j] = 0.0
        elif zj > 0:
            wp[j] = -(zj - l1) / ((beta + sqrt(nn)) / alpha + l2)
        else:
            wp[j] = -(zj + l1) / ((beta + sqrt(nn)) / alpha + l2)
