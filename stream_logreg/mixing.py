"""One model from several learners' contributions: the pure math of the group model (issue 12).

Several learners (the members of a consumer group) each learn from their own share of a stream. Member k
keeps, as its *contribution* D_k, everything its own events changed: the difference between the model it
learned on and the sum O_k of the others' contributions it last saw, as a full model state (weights, bias,
optimizer arrays, the mixture's scalars, feature names, samples seen). The group model is

    G = Σ_k D_k

and a member's working model between two synchronisations is O_k + D_k. At a synchronisation the member
sets D_k := working − O_k (:func:`difference`), publishes it, reads the others' newest D_j and sets
O_k := Σ_{j≠k} D_j, working := D_k + O_k (:func:`combine`). This is iterative parameter mixing
(McDonald, Hall & Mann 2010) in delta form; one-shot averaging (Zinkevich, Weinberger, Smola & Li 2010) is
its degenerate case with a single synchronisation at the end.

Why a sum and not an average
----------------------------
An event's update lands in exactly one D_k (its member's), once. Summing applies every event's update
once, computed on a model at most one synchronisation stale. Averaging the members' models — what
McDonald et al. and Zinkevich et al. do — weighs an event by n_k/N: with four members each update would
count a quarter, as if the learning rate were divided by the number of members. With a synchronisation
after every event the sum is exactly the model learned sequentially (up to float rounding): working =
O + D, the event's update changes working into working', D' = working' − O, and G = O + D' = working'.
(tests/test_mixing.py checks this against a sequential learner for SGD, AdaGrad, FTRL and the mixture.)

How each part of the state combines
-----------------------------------
=====================================  =========================================================
part                                   combine
=====================================  =========================================================
w, b; SGD, AdaGrad G, FTRL z and n;    Σ (each is a sum of per-event terms: additive deltas)
the mixture's weights, NAG's G,
FTRL's n; n_samples_seen; iterations
NAG's per-coordinate scale s           max (a running maximum; a member's s is its own value)
the mixture's log-weights a_k          Σ, then shifted so that max_k a_k = 0 (cumulative log
                                       likelihoods; the softmax does not see the shift), floored
                                       at −1e4 as the mixture's own rule does
NAG's t and N                          Σ (counts and sums of per-event terms)
feature names (a vocabulary)           union by name, in order of appearance; beyond
                                       ``max_features`` names are dropped and counted in
                                       ``n_dropped`` (their contributions are lost)
hashed columns                         by index (the same ``n_bits`` is required)
``scale=True``'s count, mean, variance merged as River's ``StandardScaler.learn_many`` merges a
                                       batch (Chan et al.'s parallel formula); a difference is its
                                       inverse (the statistics of the member's own values)
=====================================  =========================================================

Approximations that only matter between synchronisations, never with one per event (up to rounding):
NAG rescales its weights by (s/x)² when its scale grows (multiplicative, not additive; and a scale that
jumps by many orders of magnitude, 1e-27 → 1, makes D a difference of two huge numbers whose rounding
is large against the new weight); FTRL's w is a function of z and n
(the sum of the members' w-deltas is not that function of the summed z and n); SGD with ``power_t > 0``
and NAG take their step size from the summed counters. A state with no sound combine is refused
(:func:`check_mixable`): River's optimizers (their state is not ours to read), FTRL on its own (its
weights are a function of z and n, and summed z and n from members that learned concurrently diverge:
measured, 4 members synchronising every 10 events reach 59× one learner's log loss; the default
mixture, which then out-weighs its FTRL member, stays within 0.02%), the model's ``l1`` (its penalty
bookkeeping is a running maximum of a sum), and a non-zero ``initializer`` or ``intercept_init``
(every member's contribution would hold the starting point once: k members would count it k times).

Rounding: D := working − O and then O + D is not working bitwise. With no other contribution nothing is
computed at all (:func:`difference` and :func:`combine` return their argument itself), so a single
learner is bitwise the learner without a group.

A *state* here is what ``OnlineLogisticRegression.state()`` returns, ``(arrays, meta)``; the functions
never change their arguments.

Examples
--------

>>> from stream_logreg import OnlineLogisticRegression, optim
>>> base = OnlineLogisticRegression(optimizer=optim.SGD(lr=0.1))
>>> a, b = base.clone(), base.clone()
>>> a.learn_one({"x": 1.0}, True)
>>> b.learn_one({"y": 1.0}, False)
>>> group = to_model(combine([a.state(), b.state()]))
>>> group.n_samples_seen, sorted(group.weights)
(2, ['x', 'y'])
>>> group.weights["x"] == a.weights["x"], group.weights["y"] == b.weights["y"]
(True, True)
>>> state = a.state()
>>> combine([state]) is state   # one contribution: itself, no arithmetic
True

"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

from stream_logreg import optim as optim_
from stream_logreg.features import FeatureSpace
from stream_logreg.model import OnlineLogisticRegression

__all__ = ["State", "check_mixable", "combine", "difference", "n_samples", "to_model"]

#: ``OnlineLogisticRegression.state()``: (arrays, meta).
State = tuple[dict[str, np.ndarray], dict]

#: State arrays combined by maximum (running maxima); every other array is a sum of per-event terms.
_MAX = frozenset({"optimizer.nag_scale", "bias_optimizer.nag_scale"})
#: State arrays that are sums of squares: never below 0 (a difference is clamped against rounding).
_NONNEGATIVE = frozenset({
    "optimizer.G", "optimizer.n", "optimizer.nag_squares", "optimizer.ftrl_squares",
    "bias_optimizer.G", "bias_optimizer.n", "bias_optimizer.nag_squares", "bias_optimizer.ftrl_squares",
})
_LOG_WEIGHT_FLOOR = -1e4  # the mixture's own floor (stream_logreg.optim.Mixture)
_COUNTS = ("n_samples_seen", "optimizer_iterations", "bias_optimizer_iterations")


def check_mixable(model: OnlineLogisticRegression) -> None:
    """Raise ``ValueError`` (saying why) if the contributions of learners of ``model``'s kind cannot be
    summed into one model (see the module's table).

    >>> from stream_logreg import OnlineLogisticRegression
    >>> check_mixable(OnlineLogisticRegression())
    >>> check_mixable(OnlineLogisticRegression(optimizer=optim_.FTRL()))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: the group model cannot combine FTRL on its own ...
    """
    opt = model.optimizer
    if not isinstance(opt, optim_.Optimizer):
        raise ValueError(
            f"the group model cannot combine the state of {type(opt).__name__} (only the optimizers of "
            "stream_logreg.optim: SGD, AdaGrad, Mixture)"
        )
    if isinstance(opt, optim_.FTRL):
        raise ValueError("the group model cannot combine FTRL on its own (summed z and n of members that "
                         "learned at the same time diverge); use the default optimizer (the mixture, which "
                         "has an FTRL member), SGD or AdaGrad")
    if model.l1:
        raise ValueError("the group model cannot combine the model's l1 penalty bookkeeping; use FTRL's l1 "
                         "instead (optimizer FTRL with l1)")
    if getattr(model, "_init_value", 0.0) or model.intercept_init:
        raise ValueError("the group model needs weights and bias starting at 0 (initializer and "
                         "intercept_init unset): each member's contribution would hold the starting point")


def n_samples(state: State | None) -> int:
    """The samples a state covers (0 for ``None``)."""
    return 0 if state is None else int(state[1]["n_samples_seen"])


def to_model(state: State) -> OnlineLogisticRegression:
    """The model of ``state`` (``OnlineLogisticRegression.from_state``: checked, finite)."""
    return OnlineLogisticRegression.from_state(*state)


def _keys(meta: dict) -> list[Hashable] | None:
    """The feature names of a state's columns, or ``None`` for hashed columns (aligned by index)."""
    features = meta["features"]
    if features.get("n_bits") is not None:
        return None
    return FeatureSpace.from_state(features).keys


def _check_same_params(states: Sequence[State]) -> None:
    params = states[0][1]["params"]
    for _, meta in states[1:]:
        if meta["params"] != params:
            raise ValueError(
                "contributions of models with different hyper-parameters cannot be combined: "
                f"{params!r} and {meta['params']!r}"
            )


def _is_column(name: str) -> bool:
    """Whether array ``name`` has one entry per feature column (else it is the bias's)."""
    return name == "w" or name.startswith(("optimizer.", "l1.", "scale."))


_SCALE = ("scale.count", "scale.mean", "scale.var")


def _merge_moments(c0: np.ndarray, m0: np.ndarray, v0: np.ndarray, c1: np.ndarray, m1: np.ndarray,
                   v1: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts, means and population variances of two sets of values merged (River's
    ``StandardScaler.learn_many``: n = c₀ + c₁, a = c₀/n, b = c₁/n, mean = a·m₀ + b·m₁,
    var = a·v₀ + b·v₁ + a·b·(m₀ − m₁)²); a column with no value stays (0, 0, 0)."""
    n = c0 + c1
    safe = np.where(n > 0, n, 1.0)
    a, b = c0 / safe, c1 / safe
    return n, a * m0 + b * m1, a * v0 + b * v1 + a * b * np.square(m0 - m1)


def _split_moments(cw: np.ndarray, mw: np.ndarray, vw: np.ndarray, co: np.ndarray, mo: np.ndarray,
                   vo: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The inverse of :func:`_merge_moments`: the statistics of the values in (cw, mw, vw) that are not
    in (co, mo, vo); clamped at 0 against rounding."""
    c = np.maximum(cw - co, 0.0)
    safe = np.where(c > 0, c, 1.0)
    m = np.where(c > 0, (cw * mw - co * mo) / safe, 0.0)
    second = (cw * (vw + np.square(mw)) - co * (vo + np.square(mo))) / safe
    v = np.where(c > 0, np.maximum(second - np.square(m), 0.0), 0.0)
    return c, m, v


def _renormalised(a: np.ndarray) -> np.ndarray:
    """Log-weights shifted to max 0 and floored (the softmax does not see the shift)."""
    return np.maximum(a - a.max(), _LOG_WEIGHT_FLOOR)


def combine(states: Sequence[State]) -> State:
    """The group model Σ_k D_k of contributions ``states`` (aligned by feature name, or by index when
    hashed); a single state is returned itself (no arithmetic: bitwise). Raises ``ValueError`` for an
    empty sequence or different hyper-parameters.

    The columns are those of ``states[0]`` in its order, then each later state's new names in its order.

    >>> from stream_logreg import OnlineLogisticRegression, optim
    >>> m = OnlineLogisticRegression(optimizer=optim.AdaGrad(lr=1.0, eps=0.0))
    >>> m.learn_one({"a": 2.0}, True)
    >>> arrays, meta = combine([m.state(), m.state()])
    >>> arrays["w"].tolist() == [2 * m.weights["a"]], meta["n_samples_seen"]
    (True, 2)
    """
    if not states:
        raise ValueError("combine needs at least one contribution")
    if len(states) == 1:
        return states[0]
    _check_same_params(states)
    first_meta = states[0][1]
    features = first_meta["features"]
    all_keys = [_keys(meta) for _, meta in states]
    dropped = 0
    if all_keys[0] is None:
        n = 1 << int(features["n_bits"])
        columns: list[np.ndarray] = [np.arange(n) for _ in states]
        space_state = dict(features)
    else:
        cap = features.get("max_features")
        union: dict[Hashable, int] = {}
        columns = []
        for keys in all_keys:
            assert keys is not None
            cols = np.empty(len(keys), dtype=np.intp)
            for i, key in enumerate(keys):
                col = union.get(key)
                if col is None:
                    if cap is not None and len(union) >= cap:
                        cols[i] = -1
                        dropped += 1
                        continue
                    col = union[key] = len(union)
                cols[i] = col
            columns.append(cols)
        n = len(union)
        space = FeatureSpace(n_bits=None, max_features=cap)
        space.keys = list(union)
        space.columns = dict(union)
        space_state = space.to_state()
    space_state["n_dropped"] = sum(int(meta["features"]["n_dropped"]) for _, meta in states) + dropped
    names = list(states[0][0])
    arrays: dict[str, np.ndarray] = {}
    for name in names:
        if name in _SCALE:
            continue
        column = _is_column(name)
        out = np.zeros(n if column else len(states[0][0][name]))
        for (state_arrays, _), cols in zip(states, columns, strict=True):
            values = np.asarray(state_arrays[name], dtype=np.float64)
            if column:
                keep = cols >= 0
                where, values = cols[keep], values[keep]
            else:
                where = slice(None)
            if name in _MAX:
                out[where] = np.maximum(out[where], values)
            else:
                out[where] += values
        arrays[name] = out
    if _SCALE[0] in states[0][0]:
        merged = [np.zeros(n), np.zeros(n), np.zeros(n)]
        for (state_arrays, _), cols in zip(states, columns, strict=True):
            keep = cols >= 0
            where = cols[keep]
            theirs = [np.asarray(state_arrays[k], dtype=np.float64)[keep] for k in _SCALE]
            for out, part in zip(merged, _merge_moments(*(m[where] for m in merged), *theirs), strict=True):
                out[where] = part
        arrays.update(zip(_SCALE, merged, strict=True))
    meta = {k: v for k, v in first_meta.items() if k not in ("features", "mixture", *_COUNTS)}
    meta["features"] = space_state
    for count in _COUNTS:
        meta[count] = sum(int(m[count]) for _, m in states)
    if "mixture" in first_meta:
        mixtures = [m["mixture"] for _, m in states]
        a = _renormalised(np.sum([np.asarray(x["log_weights"], dtype=np.float64) for x in mixtures], axis=0))
        meta["mixture"] = {
            "log_weights": a.tolist(),
            "nag_t": float(sum(x["nag_t"] for x in mixtures)),
            "nag_N": float(sum(x["nag_N"] for x in mixtures)),
        }
    return arrays, meta


def difference(working: State, others: State | None) -> State:
    """A member's contribution: its working model ``working`` minus the others' sum ``others`` it was
    built on (aligned by name); ``working`` itself when ``others`` is ``None`` (no arithmetic).

    The columns are ``working``'s. Running maxima (NAG's scale) are ``working``'s own values; sums of
    squares and counts are clamped at 0 against rounding, the log-weights shifted to max 0, and NAG's N
    kept ≥ t, so that the result is a valid model state (:func:`to_model`).

    >>> from stream_logreg import OnlineLogisticRegression, optim
    >>> m = OnlineLogisticRegression(optimizer=optim.SGD(lr=0.5))
    >>> m.learn_one({"a": 1.0}, True)
    >>> before = m.state()
    >>> m.learn_one({"b": 1.0}, False)
    >>> arrays, meta = difference(m.state(), before)
    >>> float(arrays["w"][0]), bool(arrays["w"][1] < 0), meta["n_samples_seen"]  # "a" unchanged, "b" not
    (0.0, True, 1)
    """
    if others is None:
        return working
    _check_same_params([working, others])
    w_arrays, w_meta = working
    o_arrays, o_meta = others
    w_keys, o_keys = _keys(w_meta), _keys(o_meta)
    n = len(w_arrays["w"])
    if w_keys is None:
        if o_keys is not None or len(o_arrays["w"]) != n:
            raise ValueError("a hashed contribution needs hashed others of the same n_bits")
        src = dst = slice(None)
    else:
        if o_keys is None:
            raise ValueError("a vocabulary contribution needs others with a vocabulary")
        position = {key: i for i, key in enumerate(w_keys)}
        pairs = [(j, position[key]) for j, key in enumerate(o_keys) if key in position]
        src = np.array([p[0] for p in pairs], dtype=np.intp)
        dst = np.array([p[1] for p in pairs], dtype=np.intp)
    arrays: dict[str, np.ndarray] = {}
    for name, values in w_arrays.items():
        out = np.array(values, dtype=np.float64)
        if name in _SCALE:
            continue
        if name in _MAX:
            arrays[name] = out
            continue
        theirs = np.asarray(o_arrays[name], dtype=np.float64)
        if _is_column(name):
            out[dst] -= theirs[src]
        else:
            out -= theirs
        if name in _NONNEGATIVE:
            np.maximum(out, 0.0, out=out)
        arrays[name] = out
    if _SCALE[0] in w_arrays:
        mine = [np.array(w_arrays[k], dtype=np.float64) for k in _SCALE]
        theirs = [np.asarray(o_arrays[k], dtype=np.float64)[src] for k in _SCALE]
        for out, part in zip(mine, _split_moments(*(m[dst] for m in mine), *theirs), strict=True):
            out[dst] = part
        arrays.update(zip(_SCALE, mine, strict=True))
    meta = dict(w_meta)
    features = dict(w_meta["features"])
    features["n_dropped"] = max(0, int(features["n_dropped"]) - int(o_meta["features"]["n_dropped"]))
    meta["features"] = features
    for count in _COUNTS:
        meta[count] = max(0, int(w_meta[count]) - int(o_meta[count]))
    if "mixture" in w_meta:
        mw, mo = w_meta["mixture"], o_meta["mixture"]
        a = np.asarray(mw["log_weights"], dtype=np.float64) - np.asarray(mo["log_weights"], dtype=np.float64)
        t = max(0.0, float(mw["nag_t"]) - float(mo["nag_t"]))
        big_n = max(t, float(mw["nag_N"]) - float(mo["nag_N"]))
        meta["mixture"] = {"log_weights": _renormalised(a).tolist(), "nag_t": t, "nag_N": big_n}
    return arrays, meta
