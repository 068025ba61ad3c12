"""Optimizers: each takes the gradient of the touched coordinates and updates them in place.

An optimizer knows nothing of data or of the model: it holds hyper-parameters, an iteration counter
``n_iterations`` (one per update, a sample or a mini-batch) and per-coordinate state arrays sized with the
weights. ``step(w, cols, grads, n)`` updates ``w[cols[i]]`` with gradient ``grads[i]`` for ``i < n``. The
model gives the bias its own instance of the same optimizer (``optimizer.clone()``) so that it follows
the same rule with its own state.

>>> import numpy as np
>>> opt = SGD(lr=0.5)
>>> opt.resize(3)
>>> w = np.zeros(3)
>>> opt.step(w, np.array([0, 2]), np.array([1.0, -2.0]), 2)
>>> w.tolist(), opt.n_iterations
([-0.5, 0.0, 1.0], 1)

"""

from __future__ import annotations

import math
import numbers

import numpy as np
from river import base

from stream_logreg import _kernel

__all__ = ["Optimizer", "SGD", "AdaGrad", "FTRL"]


def _check(owner: str, name: str, value: object, positive: bool) -> float:
    """``value`` itself if it is a finite real number > 0 (``positive``) or >= 0, else a ValueError.

    >>> _check("SGD", "lr", float("inf"), positive=True)
    Traceback (most recent call last):
    ...
    ValueError: SGD: lr must be > 0 and finite, got inf

    """
    bound = "> 0" if positive else ">= 0"
    ok = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
    if ok:
        f = float(value)
        ok = math.isfinite(f) and (f > 0.0 if positive else f >= 0.0)
    if not ok:
        raise ValueError(f"{owner}: {name} must be {bound} and finite, got {value!r}")
    return value  # type: ignore[return-value]  # kept as given, so that the parameters round-trip as is


class Optimizer(base.Base):
    """Base class: an update rule with per-coordinate state arrays named in ``_state_names``."""

    _state_names: tuple[str, ...] = ()
    _nonnegative: tuple[str, ...] = ()  # state arrays that are sums of squares (checked at load)

    def __init__(self) -> None:
        self.n_iterations = 0
        for name in self._state_names:
            setattr(self, name, np.zeros(0))

    def resize(self, capacity: int) -> None:
        """Grow the state arrays to ``capacity`` coordinates; new coordinates start from zero state."""
        for name in self._state_names:
            old = getattr(self, name)
            if len(old) < capacity:
                new = np.zeros(capacity)
                new[: len(old)] = old
                setattr(self, name, new)

    def step(self, w: np.ndarray, cols: np.ndarray, grads: np.ndarray, n: int) -> None:
        """Apply one update to the coordinates ``cols[:n]`` of ``w`` given their gradient ``grads[:n]``."""
        self._step(w, cols, grads, n)
        self.n_iterations += 1

    def _step(self, w: np.ndarray, cols: np.ndarray, grads: np.ndarray, n: int) -> None:
        raise NotImplementedError

    def _compiled_rule(self) -> tuple[str, tuple, tuple] | None:
        """(kernel rule, hyper-parameters, state arrays) with which the model's compiled per-sample update
        applies exactly this optimizer's ``step``; ``None`` (the default, and for subclasses, whose ``step``
        may differ) makes the model call ``step`` itself."""
        return None

    def state_arrays(self, size: int) -> dict[str, np.ndarray]:
        """The first ``size`` coordinates of each state array (for checkpoints)."""
        return {name: getattr(self, name)[:size].copy() for name in self._state_names}

    def load_state(self, arrays: dict[str, np.ndarray], n_iterations: int, capacity: int) -> None:
        """Restore what :meth:`state_arrays` returned, in arrays of ``capacity`` coordinates."""
        missing = [name for name in self._state_names if name not in arrays]
        if missing:
            raise ValueError(
                f"{type(self).__name__} state lacks the array(s) {missing}; got {sorted(arrays)}"
            )
        if int(n_iterations) < 0:
            raise ValueError(f"n_iterations must be >= 0, got {n_iterations!r}")
        self.n_iterations = int(n_iterations)
        for name in self._state_names:
            values = np.asarray(arrays[name], dtype=np.float64)
            if not np.isfinite(values).all():
                raise ValueError(f"{type(self).__name__} state {name!r} holds non-finite values")
            if name in self._nonnegative and (values < 0).any():
                raise ValueError(
                    f"{type(self).__name__} state {name!r} (a sum of squares) holds negative values"
                )
        for name in self._state_names:
            values = np.asarray(arrays[name], dtype=np.float64)
            new = np.zeros(max(capacity, len(values)))
            new[: len(values)] = values
            setattr(self, name, new)


class SGD(Optimizer):
    """Plain gradient descent: w_j ← w_j − η_t g_j, with η_t = lr / (t + 1)^power_t.

    ``power_t = 0`` (the default) is the constant rate η; ``power_t > 0`` is inverse scaling, t being the
    number of updates already made.

    Parameters
    ----------
    lr
        The learning rate η (at t = 0).
    power_t
        Exponent of the inverse-scaling schedule.

    Examples
    --------

    >>> import numpy as np
    >>> opt = SGD(lr=1.0, power_t=1.0)
    >>> w = np.zeros(1); opt.resize(1)
    >>> for _ in range(3):
    ...     opt.step(w, np.array([0]), np.array([1.0]), 1)
    >>> float(w[0]) == -(1 + 1 / 2 + 1 / 3)
    True

    """

    def __init__(self, lr: float = 0.01, power_t: float = 0.0) -> None:
        super().__init__()
        self.lr = _check("SGD", "lr", lr, positive=True)
        self.power_t = _check("SGD", "power_t", power_t, positive=False)

    @property
    def learning_rate(self) -> float:
        """η_t for the next update."""
        if self.power_t == 0.0:
            return self.lr
        return self.lr / (self.n_iterations + 1) ** self.power_t

    def _step(self, w: np.ndarray, cols: np.ndarray, grads: np.ndarray, n: int) -> None:
        _kernel.sgd_step(w, cols, grads, n, self.learning_rate)

    def _compiled_rule(self) -> tuple[str, tuple, tuple] | None:
        return ("sgd", (self.lr, self.power_t), ()) if type(self) is SGD else None

    @classmethod
    def _unit_test_params(cls):
        yield {"lr": 0.1}


class AdaGrad(Optimizer):
    """AdaGrad (Duchi et al. 2011): G_j ← G_j + g_j², w_j ← w_j − η g_j / (√G_j + ε).

    Each coordinate's step shrinks with the gradient it has accumulated, so rare features keep large
    steps while frequent ones settle.

    Parameters
    ----------
    lr
        The base learning rate η. The default 0.15 is the best of 0.1, 0.15, 0.17 and 0.2 in
        ``bench/bench_accuracy.py`` (standardized features; 0.1 is 17–20% worse than River's default
        model on the noiseless SEA stream, 0.2 slightly worse on Bananas).
    eps
        Added to √G_j to keep the first step finite. With ε = 0 a zero gradient is skipped (no 0 / 0).

    Examples
    --------

    >>> import numpy as np
    >>> opt = AdaGrad(lr=1.0, eps=0.0)
    >>> w = np.zeros(1); opt.resize(1)
    >>> opt.step(w, np.array([0]), np.array([3.0]), 1)
    >>> w.tolist(), opt.G.tolist()
    ([-1.0], [9.0])

    """

    _state_names = ("G",)
    _nonnegative = ("G",)

    def __init__(self, lr: float = 0.15, eps: float = 1e-8) -> None:
        super().__init__()
        self.lr = _check("AdaGrad", "lr", lr, positive=True)
        self.eps = _check("AdaGrad", "eps", eps, positive=False)

    @property
    def learning_rate(self) -> float:
        """η (the base rate; each coordinate's step is η / (√G_j + ε))."""
        return self.lr

    def _step(self, w: np.ndarray, cols: np.ndarray, grads: np.ndarray, n: int) -> None:
        _kernel.adagrad_step(w, self.G, cols, grads, n, self.lr, self.eps)

    def _compiled_rule(self) -> tuple[str, tuple, tuple] | None:
        return ("adagrad", (self.lr, self.eps), (self.G,)) if type(self) is AdaGrad else None


class FTRL(Optimizer):
    """FTRL-Proximal (McMahan et al. 2013, "Ad Click Prediction: a View from the Trenches", Algorithm 1).

    Per coordinate, with accumulators z_j and n_j (both starting at 0)::

        σ_j = (√(n_j + g_j²) − √n_j) / α
        z_j ← z_j + g_j − σ_j w_j
        n_j ← n_j + g_j²
        w_j = 0                                            if |z_j| ≤ λ1
        w_j = −(z_j − sgn(z_j) λ1) / ((β + √n_j) / α + λ2)  otherwise

    L1 (λ1) gives exact zeros: a feature whose |z_j| never exceeds λ1 keeps weight 0, so the model stays
    sparse. The per-coordinate rate is α / (β + √n_j).

    Parameters
    ----------
    alpha
        α, the scale of the per-coordinate learning rate (default 0.17).
    beta
        β, smooths the rate of coordinates with few updates (default 0.5).
    l1
        λ1, L1 regularization strength.
    l2
        λ2, L2 regularization strength. Unlike the model's ``l2`` (added to every gradient), it sits in
        the denominator of the closed form, so it shrinks rarely seen coordinates and fades for frequent ones.

    ``bench/bench_accuracy.py`` recommends α = 0.17, β = 0.5 as the model's default (standardized numeric
    features, or one-hot/hashed ids): with them the model's log loss is never above River's default
    ``LogisticRegression`` on any benchmark stream, over the canonical seeds and three reseeded runs. The
    window is narrow and set by two streams pulling opposite ways: the noiseless, separable SEA stream
    wants larger steps (α ≤ 0.15 loses to River there), Bananas, which has no linear signal, wants
    smaller ones (α ≥ 0.19 loses there by a few 1e-4). These are also ``FTRL()``'s own defaults.

    Examples
    --------

    >>> import numpy as np
    >>> opt = FTRL(alpha=1.0, beta=1.0, l1=0.5, l2=0.0)
    >>> w = np.zeros(2); opt.resize(2)
    >>> opt.step(w, np.array([0, 1]), np.array([0.4, -2.0]), 2)
    >>> w.tolist()
    [0.0, 0.5]

    """

    _state_names = ("z", "n")
    _nonnegative = ("n",)

    def __init__(self, alpha: float = 0.17, beta: float = 0.5, l1: float = 0.0, l2: float = 0.0) -> None:
        super().__init__()
        self.alpha = _check("FTRL", "alpha", alpha, positive=True)
        self.beta = _check("FTRL", "beta", beta, positive=False)
        self.l1 = _check("FTRL", "l1", l1, positive=False)
        self.l2 = _check("FTRL", "l2", l2, positive=False)

    def _step(self, w: np.ndarray, cols: np.ndarray, grads: np.ndarray, n: int) -> None:
        _kernel.ftrl_step(w, self.z, self.n, cols, grads, n, self.alpha, self.beta, self.l1, self.l2)

    def _compiled_rule(self) -> tuple[str, tuple, tuple] | None:
        if type(self) is not FTRL:
            return None
        return "ftrl", (self.alpha, self.beta, self.l1, self.l2), (self.z, self.n)


# River's optimizers (``river.optim``), accepted by the model as they are.


def is_river(optimizer: object) -> bool:
    """Whether ``optimizer`` is one of River's (``river.optim.base.Optimizer``) rather than one of ours."""
    from river.optim.base import Optimizer as RiverOptimizer

    return isinstance(optimizer, RiverOptimizer)


def looks_ahead(optimizer: object) -> bool:
    """Whether River's ``optimizer`` changes the weights before each prediction (``look_ahead``, e.g.
    ``NesterovMomentum``, ``Averager``): the model does not support those."""
    from river.optim.base import Optimizer as RiverOptimizer

    return type(optimizer).look_ahead is not RiverOptimizer.look_ahead


def river_sgd_schedule(optimizer: object) -> tuple[float, float] | None:
    """(η, power_t) if ``optimizer`` is River's plain SGD with a ``Constant`` or ``InverseScaling`` rate:
    then its step is exactly ours, η_t = η / (t + 1)^power_t, t its ``n_iterations``; else ``None``."""
    from river import optim as river_optim

    if type(optimizer) is not river_optim.SGD:
        return None
    lr = optimizer.lr
    if type(lr) is river_optim.schedulers.Constant:
        return float(lr.learning_rate), 0.0
    if type(lr) is river_optim.schedulers.InverseScaling:
        return float(lr.learning_rate), float(lr.power)
    return None


def compiled_rule(optimizer: object) -> tuple[str, tuple, tuple] | None:
    """The kernel rule with which the model's compiled step applies ``optimizer``'s update exactly (see
    :meth:`Optimizer._compiled_rule`), for ours and for River's SGD of :func:`river_sgd_schedule`."""
    if isinstance(optimizer, Optimizer):
        return optimizer._compiled_rule()
    schedule = river_sgd_schedule(optimizer)
    return None if schedule is None else ("sgd", schedule, ())


def step(optimizer: object, w: np.ndarray, cols: np.ndarray, grads: np.ndarray, n: int) -> None:
    """One update of ``w[cols[:n]]`` with gradient ``grads[:n]``: ours directly, River's through its dict
    API (``optimizer.step(w=dict, g=dict)``, keyed by column) on the touched coordinates."""
    if isinstance(optimizer, Optimizer):
        optimizer.step(w, cols, grads, n)
        return
    c = cols[:n].tolist()
    weights = dict(zip(c, w[cols[:n]].tolist(), strict=True))
    optimizer.step(w=weights, g=dict(zip(c, grads[:n].tolist(), strict=True)))
    w[cols[:n]] = [weights[j] for j in c]


def _river_state(optimizer: object) -> list[tuple[str, object]]:
    return [(k, v) for k, v in vars(optimizer).items() if k != "lr"]


def save(optimizer: object, w: np.ndarray, cols: np.ndarray, n: int) -> object:
    """What :func:`restore` needs to put ``w[cols[:n]]`` and ``optimizer``'s state back as they are now.

    Ours: the touched coordinates of ``w`` and of each state array, and ``n_iterations``. River's: its
    attributes, and for each dict attribute (its per-coordinate state) the touched entries."""
    c = cols[:n]
    if isinstance(optimizer, Optimizer):
        arrays = (w, *(getattr(optimizer, name) for name in optimizer._state_names))
        saved = np.empty(len(arrays) * n)
        _kernel.save_at(arrays, cols, n, saved)
        return optimizer.n_iterations, arrays, saved
    keys = c.tolist()
    state = []
    for name, value in _river_state(optimizer):
        if isinstance(value, dict):
            state.append((name, value, {k: value[k] for k in keys if k in value}))
        else:
            state.append((name, value, None))
    return w[c].copy(), state


def restore(optimizer: object, w: np.ndarray, cols: np.ndarray, n: int, saved: object) -> None:
    """Put back what :func:`save` saved."""
    if isinstance(optimizer, Optimizer):
        optimizer.n_iterations, arrays, values = saved
        _kernel.restore_at(arrays, cols, n, values)
        return
    old_w, state = saved
    w[cols[:n]] = old_w
    for name, value, entries in state:
        if entries is None:
            setattr(optimizer, name, value)
        else:
            for k in cols[:n].tolist():
                if k in entries:
                    value[k] = entries[k]
                else:
                    value.pop(k, None)


def finite(optimizer: object, w: np.ndarray, cols: np.ndarray, n: int) -> bool:
    """Whether ``w[cols[:n]]`` and ``optimizer``'s state of those coordinates are all finite."""
    if isinstance(optimizer, Optimizer):
        arrays = (w, *(getattr(optimizer, name) for name in optimizer._state_names))
        return _kernel.finite_at(arrays, cols, n)
    if not np.isfinite(w[cols[:n]]).all():
        return False
    for _, value in _river_state(optimizer):
        if isinstance(value, dict):
            for k in cols[:n].tolist():
                v = value.get(k, 0.0)
                if isinstance(v, numbers.Real) and not math.isfinite(v):
                    return False
    return True
