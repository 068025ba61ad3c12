/* PyDict_Next without the call, for the loops over a row's entries (a click-through row is iterated four
   or five times per event: through libpython, ~50 instructions an entry).

   CPython 3.11-3.13's combined table (PyDictKeysObject): an 8-byte reference count, the log2 of the slots,
   the log2 of the index bytes, the kind (0: any keys, 24-byte entries {hash, key, value}; 1: str keys,
   16-byte entries {key, value}), the number of entries used at byte 24, the indices from byte 32, then the
   entries. A dict with split values (ma_values), another CPython, or a layout that the module's self-check
   (sl_dict_next_check, at import) does not confirm goes through PyDict_Next. The position is PyDict_Next's
   (the next entry's index), so the two can be mixed on one dict. */
#ifndef SL_DICTNEXT_H
#define SL_DICTNEXT_H
#include <Python.h>

static int sl_dict_fast = 0;

#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030E0000 && !defined(Py_GIL_DISABLED)
static inline int sl_dict_next(PyObject* d, Py_ssize_t* pos, PyObject** key, PyObject** value) {
    const PyDictObject* mp = (const PyDictObject*) d;
    const unsigned char* k;
    Py_ssize_t i = *pos, n;
    if (!sl_dict_fast || mp->ma_values != NULL || i < 0)
        return PyDict_Next(d, pos, key, value);
    k = (const unsigned char*) mp->ma_keys;
    n = *(const Py_ssize_t*) (k + 24);
    if (k[10] == 1) {
        PyObject* const* e = (PyObject* const*) (k + 32 + ((size_t) 1 << k[9]));
        while (i < n && e[2 * i + 1] == NULL)
            i++;
        if (i >= n)
            return 0;
        *key = e[2 * i];
        *value = e[2 * i + 1];
    } else if (k[10] == 0) {
        PyObject* const* e = (PyObject* const*) (k + 32 + ((size_t) 1 << k[9]));
        while (i < n && e[3 * i + 2] == NULL)
            i++;
        if (i >= n)
            return 0;
        *key = e[3 * i + 1];
        *value = e[3 * i + 2];
    } else {
        return PyDict_Next(d, pos, key, value);
    }
    *pos = i + 1;
    return 1;
}
#else
#define sl_dict_next PyDict_Next
#endif

/* Whether sl_dict_next reads d exactly as PyDict_Next does (every position, key and value). */
static inline int sl_dict_same(PyObject* d) {
    Py_ssize_t p = 0, q = 0;
    PyObject *k1, *v1, *k2, *v2;
    int a, b;
    for (;;) {
        a = PyDict_Next(d, &p, &k1, &v1);
        b = sl_dict_next(d, &q, &k2, &v2);
        if (a != b || p != q)
            return 0;
        if (!a)
            return 1;
        if (k1 != k2 || v1 != v2)
            return 0;
    }
}

/* The self-check on the dicts given (str keys and others, with deleted entries): turns the inline path on
   only if it agrees with PyDict_Next on every one. Returns whether it is on. */
static int sl_dict_next_check(PyObject* dicts) {
    Py_ssize_t i, n = PyList_GET_SIZE(dicts);
    sl_dict_fast = 1;
    for (i = 0; i < n; i++) {
        if (!sl_dict_same(PyList_GET_ITEM(dicts, i))) {
            sl_dict_fast = 0;
            break;
        }
    }
    return sl_dict_fast;
}
#endif
