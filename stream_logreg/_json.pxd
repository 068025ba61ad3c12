# The row decoder's C-level interface, for stream_logreg/_stream.pyx (see _json.pyx).
cimport numpy as cnp
from cpython.object cimport PyObject
from libc.stdint cimport uint64_t


cdef struct Slot:
    uint64_t hash
    PyObject* key  # a strong reference to the vocabulary's own str; NULL: an empty slot
    Py_ssize_t col
    Py_ssize_t stamp  # the row in which it was last met (a repeated key declines)


cdef enum:
    NEEDS_GIL = -3  # RowDecoder.scan: the value needs RowDecoder.decode (with the GIL)


cdef class RowDecoder:
    cdef bytes x_field, y_field, id_field
    cdef const char* fields[3]  # the data and length of the three above
    cdef Py_ssize_t field_len[3]
    cdef Py_ssize_t max_features, max_bytes, cap
    cdef object space, keys, columns  # the vocabulary the table was filled from
    cdef PyObject* keys_p  # keys (held by it)
    cdef Py_ssize_t miss_at, miss_len, id_start, id_end  # see scan
    cdef uint64_t miss_h
    cdef Slot* slots
    cdef Py_ssize_t mask, used, n_rows
    cdef readonly cnp.ndarray cols, vals  # the last accepted row: cols[:n], vals[:n]
    cdef Py_ssize_t* c
    cdef double* v
    cdef PyObject** k  # the key object of each entry of the last accepted row (borrowed from the table)
    cdef object k_buffer
    cdef readonly int label
    cdef readonly object id  # the id of the last row `decode_event` accepted (a str, or None)

    cdef void _release(self) noexcept
    cdef int _reset(self, Py_ssize_t n_slots) except -1
    cpdef bint bind(self, object space) except -1
    cdef Py_ssize_t _find(self, const unsigned char* key, Py_ssize_t length, uint64_t h) noexcept nogil
    cdef int _grow(self) except -1
    cdef Py_ssize_t _learn_key(self, const unsigned char* key, Py_ssize_t length, uint64_t h,
                               bint* cleared) except -2
    cdef Py_ssize_t decode(self, object value) except -2
    cdef Py_ssize_t decode_event(self, object value) except -2
    cdef Py_ssize_t _decode(self, object value, bint scored) except -2
    cdef Py_ssize_t scan(self, const unsigned char* p, Py_ssize_t size, bint scored) noexcept nogil
    cdef dict row_dict(self, Py_ssize_t n)
