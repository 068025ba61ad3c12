# cython: boundscheck=False, wraparound=False
"""The compiled part of a stream loop: decode message values and learn them, one pass, no Python frame per
message.

`learn_values` goes over `values[start:]` while each decodes to a labelled event the model takes; at the
first value that needs the caller (a rejection, an unlabelled event, a refused update) it stops and says
which, so that the caller handles that one message in Python and calls again from the next one.

With a row decoder (``stream_logreg._json.RowDecoder``) a message of the common shape is read straight
into the model's columns and values and learned from them by the model's compiled step
(``_kernel.predict_learn_row``; a model without one learns the row as a dict of floats); any message it
declines, or whose update is refused, takes the codec's way as before.

Without the GIL: when the model's step can (the mixture's, ``_kernel.nogil_step``), the run of values from
where the pass is up to the first that needs Python (a key met for the first time, a value declined, one
without label, a refused update) is decoded and learned with the GIL released (``RowDecoder.scan``,
``_kernel.learn_row_nogil``), so that another thread (the loop polling the next batch) runs meanwhile; the
counts (``n_samples_seen``, the optimizers' ``n_iterations``) and the predictions and labels are added
after it, with the GIL, in order. The value it stopped at then takes the way above, and the pass goes on.
"""

from cpython.float cimport PyFloat_FromDouble
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.object cimport PyObject
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE

from libc.math cimport NAN

from stream_logreg._json cimport RowDecoder
from stream_logreg._kernel cimport count_steps, learn_row_nogil, nogil_step, predict_learn_row, predict_row

cdef extern from "Python.h":
    # Reads of the values list and its bytes without the GIL (the pass's caller keeps them alive, unchanged).
    PyObject* _item "PyList_GET_ITEM" (PyObject* o, Py_ssize_t i) noexcept nogil
    PyObject* PyDict_GetItemWithError(object d, object key) except? NULL
    bint _is_bytes "PyBytes_CheckExact" (PyObject* o) noexcept nogil
    char* _bytes_data "PyBytes_AS_STRING" (PyObject* o) noexcept nogil
    Py_ssize_t _bytes_size "PyBytes_GET_SIZE" (PyObject* o) noexcept nogil
    int PyList_Append(object lst, object item) except -1

cdef object _ZERO = 0, _ONE = 1


cdef Py_ssize_t _learn_run(RowDecoder rows, object step, list values, Py_ssize_t start, bint scored,
                           list ps, list ys, object model) except -1:
    """Decode and learn ``values[start:]`` without the GIL up to the first value that needs Python; returns
    its index (``len(values)``: all learned). The learned ones are counted and their predictions and labels
    appended to ``ps``/``ys`` after, in order."""
    cdef Py_ssize_t n = PyList_GET_SIZE(values), i = start, m, k
    cdef double* out = <double*> PyMem_Malloc((n - start) * (sizeof(double) + 1) + 1)
    cdef char* labels = <char*> (out + (n - start))
    cdef PyObject* lst = <PyObject*> values
    cdef PyObject* st = <PyObject*> step
    cdef PyObject* value
    cdef double q
    if out == NULL:
        raise MemoryError()
    with nogil:
        while i < n:
            value = _item(lst, i)
            if not _is_bytes(value):
                break
            m = rows.scan(<const unsigned char*> _bytes_data(value), _bytes_size(value), scored)
            if m < 0 or rows.label < 0:
                break
            q = learn_row_nogil(st, rows.c, rows.v, m, <double> rows.label, 1.0)
            if not q >= 0.0:  # refused (NaN) or not a row the step takes (-1.0): the GIL's way says why
                break
            out[i - start] = q
            labels[i - start] = rows.label
            i += 1
    try:
        k = i - start
        if k:
            model.n_samples_seen += k
            count_steps(step, k)
            for m in range(k):
                PyList_Append(ps, PyFloat_FromDouble(out[m]))
                PyList_Append(ys, _ONE if labels[m] else _ZERO)
    finally:
        PyMem_Free(out)
    return i


def learn_values(object decode, object learn, list values not None, Py_ssize_t start, list ps not None,
                 list ys not None, type event not None, RowDecoder rows=None, object model=None,
                 object score=None, bint release_gil=True, tuple join=None):
    """Learn ``values[start:]`` one by one: ``ev = decode(value)``; while ``ev`` is an ``event`` (a tuple
    ``(x, y, id)``) with a label ``y``, ``p = learn(x, y)`` and append ``p`` to ``ps`` and ``y`` to ``ys``.

    Returns ``(i, ev, exc)``: ``values[start:i]`` were all learned; ``i == len(values)`` (``ev`` and
    ``exc`` None) at the end, else ``values[i]`` needs the caller: ``ev`` is its decoded form (a rejection,
    or an event without label) and ``exc`` the ``ValueError`` with which ``learn`` refused it (or None).
    Nothing of ``values[i]`` reached ``ps``/``ys``.

    ``rows`` (a ``RowDecoder``) with ``model`` (the ``OnlineLogisticRegression`` whose ``predict_learn_one``
    is ``learn``): each value the decoder accepts is learned from its encoded row by the model's compiled
    step (``model.compiled_step()``, asked again after every call of ``learn``, which may replace the
    model's arrays), ``n_samples_seen`` counted as ``learn`` counts it; without a compiled step,
    ``learn(x, y)`` with the row as a dict of floats. Bitwise what ``learn`` gives for the decoded event.
    A value it declines, or whose update is refused, goes the way above (a refusal leaves the model
    unchanged, so ``learn`` refuses it again and says why).

    ``score`` (with ``rows``, ``model`` and its compiled step): an event of the common shape WITHOUT label
    is handled here too: ``p`` predicted from its encoded row (``_kernel.predict_row``, bitwise
    ``model.predict_proba_one(x)[True]``), then ``score(i, x, id, p)`` with ``x`` the row as a dict of
    floats and ``id`` the event's id (a str, or None), in order; a true result says that it changed the
    model (a joined event learned), and the compiled step is asked again.

    ``join`` (with ``score``): ``(waiting, label_type, joined, refused)`` for an event whose label is
    already there: when ``waiting`` (a dict, by id) holds an entry of type ``label_type`` under the event's
    id, ``y = joined(i, id, p)`` first; with ``y`` 0 or 1 the event is learned here with label ``y`` from
    its encoded row (bitwise ``learn(x, y)``; an update the step refuses goes to ``refused(i, x, id, y)``,
    whose true result says that it changed the model), and ``score`` is not called; with ``y`` -1,
    ``score`` as above. No dict ``x`` is made for an event learned this way.

    ``release_gil`` (with ``rows``, ``model`` and a step that can: the module docstring): the runs of
    values that need no Python are learned with the GIL released; bitwise the same as with the GIL held
    throughout (``release_gil=False``).

    >>> from stream_logreg.codec import Event, JsonCodec
    >>> seen = []
    >>> learn = lambda x, y: seen.append((x, y)) or 0.5
    >>> values = [b'{"x": {"a": 1}, "y": 1}', b'{"x": {"a": 2}}', b'{"x": {"a": 3}, "y": 0}']
    >>> ps, ys = [], []
    >>> learn_values(JsonCodec().decode, learn, values, 0, ps, ys, Event)
    (1, Event(x={'a': 2}, y=None, id=None), None)
    >>> learn_values(JsonCodec().decode, learn, values, 2, ps, ys, Event)
    (3, None, None)
    >>> ps, ys, seen
    ([0.5, 0.5], [1, 0], [({'a': 1}, 1), ({'a': 3}, 0)])
    """
    cdef Py_ssize_t i, m, n = PyList_GET_SIZE(values), done = -1
    cdef object ev, x, y, p, value, step = None, compiled = None
    cdef object waiting = None, label_type = None, joined = None, refused = None, id_
    cdef PyObject* entry
    cdef double q
    cdef long yj
    cdef bint fast = rows is not None and model is not None and rows.bind(model.features)
    cdef bint scoring = fast and score is not None
    if not issubclass(event, tuple):
        raise TypeError("event must be a tuple subclass")
    if join is not None and scoring:
        waiting, label_type, joined, refused = join
        if not isinstance(waiting, dict):
            raise TypeError("join's first item must be a dict")
    if fast:
        compiled = getattr(model, "compiled_step", None)
        step = None if compiled is None else compiled()
    for i in range(max(start, 0), n):
        if i < done:  # learned without the GIL
            continue
        # (scratch for rows of 64 entries: a longer row stops the run once, and the way below makes room)
        if release_gil and step is not None and i > done and nogil_step(step, 64):
            done = _learn_run(rows, step, values, i, scoring, ps, ys, model)
            if done == n:
                break
            if done > i:
                continue  # on to values[done], which needs the way below
        value = <object> PyList_GET_ITEM(values, i)
        if fast:
            m = rows.decode_event(value) if scoring else rows.decode(value)
            if m >= 0 and rows.label < 0:  # no label (only when scoring): predict, then the caller's turn
                if step is not None:
                    try:
                        q = predict_row(step, rows.c, rows.v, m)
                    except ValueError:  # not a row the step takes: the way below decides
                        q = NAN
                    if q == q:
                        id_ = rows.id
                        if waiting is not None and id_ is not None:
                            entry = PyDict_GetItemWithError(waiting, id_)
                            if entry != NULL and type(<object> entry) is label_type:
                                yj = joined(i, id_, q)
                                if yj == 0 or yj == 1:
                                    try:
                                        q = predict_learn_row(step, rows.c, rows.v, m, <double> yj, 1.0)
                                    except ValueError:  # not a row the step takes: refused() decides
                                        q = NAN
                                    if q == q:
                                        model.n_samples_seen += 1
                                    elif refused(i, rows.row_dict(m), id_, yj):
                                        step = compiled()
                                    continue
                        if score(i, rows.row_dict(m), id_, q):
                            step = compiled()
                        continue
                m = -1  # the way below
            if m >= 0:
                y = _ONE if rows.label else _ZERO
                if step is not None:
                    try:
                        q = predict_learn_row(step, rows.c, rows.v, m, <double> rows.label, 1.0)
                    except ValueError:  # not a row the step takes: the way below decides
                        q = NAN
                    if q == q:
                        model.n_samples_seen += 1
                        ps.append(q)
                        ys.append(y)
                        continue
                else:
                    try:
                        p = learn(rows.row_dict(m), y)
                    except ValueError:
                        pass  # refused, the model unchanged: the way below says why
                    else:
                        ps.append(p)
                        ys.append(y)
                        continue
        ev = decode(value)
        if type(ev) is not event or PyTuple_GET_SIZE(ev) < 2:
            return i, ev, None
        y = <object> PyTuple_GET_ITEM(ev, 1)
        if y is None:
            return i, ev, None
        x = <object> PyTuple_GET_ITEM(ev, 0)
        try:
            p = learn(x, y)
        except ValueError as exc:
            return i, ev, exc
        ps.append(p)
        ys.append(y)
        if compiled is not None:  # the general path may have replaced the arrays the step is bound to
            step = compiled()
    return n, None, None
