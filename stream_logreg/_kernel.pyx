# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled inner loops: encoding a dict row into (column, value) buffers, the sparse dot product, the
per-sample gradient, the dense mini-batch gradient (two BLAS passes over X) and the per-coordinate optimizer
steps. The formulas live in the docstrings of `stream_logreg.math` and `stream_logreg.optim`; the optimizer
loops apply them to the coordinates named in `cols` only, in order.

Arrays are passed as C-contiguous numpy arrays (float64 for values, intp for columns) and are read
through raw pointers, which costs far less per call than typed memoryviews.
"""

cimport numpy as cnp
from cpython.dict cimport PyDict_GetItem, PyDict_Next
from cpython.object cimport PyObject
from cpython.pycapsule cimport PyCapsule_GetName, PyCapsule_GetPointer
from libc.math cimport exp, fabs, isfinite, sqrt

cnp.import_array()


cdef inline double* dptr(cnp.ndarray a):
    return <double*> cnp.PyArray_DATA(a)


cdef inline Py_ssize_t* iptr(cnp.ndarray a):
    return <Py_ssize_t*> cnp.PyArray_DATA(a)


cdef extern from "Python.h":
    # Type checks and conversions on borrowed references (no reference counting in the row loop).
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


cdef inline bint _lookup(dict columns, PyObject* key, PyObject* value, Py_ssize_t* ci, double* d):
    """The column and value of one `key: value` entry, if no decision is needed; False otherwise."""
    cdef PyObject* col
    if _is_float(value):
        d[0] = _float_value(value)
        if not isfinite(d[0]):
            return False
        col = PyDict_GetItem(columns, <object> key)
    elif _is_bool(value):
        d[0] = 1.0 if value == _true else 0.0
        col = PyDict_GetItem(columns, <object> key)
    elif _is_int(value):
        d[0] = _int_value(value)
        if d[0] == -1.0 and PyErr_Occurred() != NULL:  # too large for a double
            PyErr_Clear()
            return False
        col = PyDict_GetItem(columns, <object> key)
    elif _is_str(value):
        d[0] = 1.0
        col = PyDict_GetItem(columns, (<object> key, <object> value))
    else:
        return False
    if col is NULL:
        return False
    ci[0] = _column_value(col)
    return True


def encode(dict x, dict columns, cnp.ndarray cols, cnp.ndarray vals, bint merge):
    """Write the row `x` as columns and values into the buffers; return how many, or -1.

    Handles what needs no decision: keys already in `columns` with a finite float, int or bool value,
    and strings whose indicator key `(k, v)` is already in `columns`. Anything else (a new key, a
    non-finite or non-numeric value, a full buffer) returns -1 and the caller takes the slow path,
    which grows the feature space or raises. With `merge`, repeated columns (hash collisions) are
    summed into one entry.
    """
    cdef Py_ssize_t pos = 0, n = 0, cap = cnp.PyArray_DIM(cols, 0), j
    cdef PyObject* key
    cdef PyObject* value
    cdef Py_ssize_t* c = iptr(cols)
    cdef double* v = dptr(vals)
    cdef double d = 0.0
    cdef Py_ssize_t ci = 0
    while PyDict_Next(x, &pos, &key, &value):
        if n >= cap or not _lookup(columns, key, value, &ci, &d):
            return -1
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


def dot_dict(dict x, dict columns, cnp.ndarray w):
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
    return s


def logistic_gradient(cnp.ndarray w, cnp.ndarray cols, cnp.ndarray vals, Py_ssize_t n, double b, double y,
                      double sample_weight, double class_weight, double l2, cnp.ndarray out):
    """The per-sample step of the seed's formula (m = 1) on the row held in the buffers:

    z = Σ_i w[cols[i]] · vals[i] + b;  g = (σ(z) − y) · s · c;  out[i] = g · vals[i] + l2 · w[cols[i]].
    σ as in `stream_logreg.math.sigmoid_scalar`. Returns g, or NaN if g or any out[i] is not finite
    (nothing is written to w).
    """
    cdef double* wp = dptr(w)
    cdef Py_ssize_t* c = iptr(cols)
    cdef double* v = dptr(vals)
    cdef double* o = dptr(out)
    cdef double z = 0.0, e, h, g
    cdef Py_ssize_t i
    cdef bint ok
    for i in range(n):
        z += wp[c[i]] * v[i]
    z = z + b
    if z >= 0.0:
        h = 1.0 / (1.0 + exp(-z))
    else:
        e = exp(z)
        h = e / (1.0 + e)
    g = (h - y) * sample_weight * class_weight
    ok = isfinite(g)
    if l2 == 0.0:
        for i in range(n):
            o[i] = g * v[i]
            ok = ok and isfinite(o[i])
    else:
        for i in range(n):
            o[i] = g * v[i] + l2 * wp[c[i]]
            ok = ok and isfinite(o[i])
    return g if ok else float("nan")


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
    also neg_abs ← −|z| (whose exp the caller takes with numpy's vectorised exp). Returns whether all
    of z is finite."""
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
    for i in range(m):
        zp[i] = zp[i] + b
        ok = ok and isfinite(zp[i])
        if ep != NULL:
            ep[i] = -fabs(zp[i])
    return ok


def batch_gradient(cnp.ndarray X, cnp.ndarray z, cnp.ndarray e, cnp.ndarray y, object sample_weight,
                   double neg_w, double pos_w, double l2, cnp.ndarray w, cnp.ndarray grad):
    """The seed's batch gradient from the logits z of `logits` and e = exp(−|z|):

    r_i = s_i · c_{y_i} · (σ(z_i) − y_i), with σ(z) = 1/(1+e) for z ≥ 0 and e/(1+e) otherwise (no overflow);
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
