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

__all__ = ["Optimizer", "SGD", "AdaGrad", "FTRL", "Mixture"]


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
            if len(getattr(self, name)) < capacity:
                _kernel.grown(self, name, capacity)  # the same values, then zeros

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


class Mixture(Optimizer):
    """A Bayes mixture of eight learners: the model's default (``bench/ACCURACY.md`` has the measurements).

    The aggregating algorithm for log loss with η = 1 (Vovk 1990; Cesa-Bianchi & Lugosi 2006, §3.3 and §9),
    over K = 8 members that share one feature lookup and learn side by side, each its own weights and
    bias (the bias is a coordinate whose value is always 1):

    ====  =====================================  ==================================================
    k     member                                 update of a coordinate i present in the row
    ====  =====================================  ==================================================
    0–5   SGD at ``rates`` (0.003 … 1.0)         w_ki ← w_ki − η_k g_ki
    6     NAG(``nag_lr``) (Ross, Mineiro &       if |x_i| > s_i: w_6i ← w_6i (s_i/x_i)², s_i ← |x_i|;
          Langford 2013, Alg. 2; VW's            t ← t + 1; N ← N + Σ_i (x_i/s_i)²; G_i ← G_i + g_6i²;
          normalized adaptive rule)              w_6i ← w_6i − η √(t/N) g_6i / (s_i √G_i)
    7     FTRL-Proximal(``ftrl_alpha``,          n_i ← n_i + g_7i²;  w_7i ← w_7i − α/(β + √n_i) g_7i
          ``ftrl_beta``) without L1/L2
    ====  =====================================  ==================================================

    with z_k = b_k + Σ_i w_ki x_i clipped to ±35, p_k = σ(z_k) and g_ki = (p_k − y)·s·c·x_i (s the
    sample weight, c the class weight; NAG's p_6 is computed again after its rescaling). The mixture::

        predict:  p = Σ_k π_k p_k,    π_k = exp(a_k) / Σ_j exp(a_j)
        learn:    a_k ← a_k + s·c·ln p_k(y)   (p_k(y) = p_k if y else 1 − p_k, p_k before the update)
                  a_k ← max(a_k − max_j a_j, −1e4);  then every member takes its step
        start:    a_k = 0 (uniform prior), every weight and accumulator 0

    Guarantee, on every stream and every prefix of it: the mixture's total log loss is at most the best
    member's + ln 8 (2.08 nats). Member 1 (rate 0.01) is River's default ``LogisticRegression()``, member
    7 the former default ``FTRL()``, member 6 makes the mixture scale-invariant (VW's rule). A mini-batch
    adds the batch's log likelihoods (predictions from before the batch) to a_k, and each member takes
    its mean-gradient step (NAG: one t, N grows by the batch's mean); a batch of one is the per-sample rule.

    The model runs the whole mixture in compiled code (``stream_logreg._kernel.MixtureStep``); this object
    holds its hyper-parameters and its state: per column the eight weights, NAG's s and G and FTRL's n
    (``coef``, capacity × 11), and for the whole model ``log_weights`` (the a_k) and ``nag`` ([t, N]). The
    model's bias has its own instance (``bias``'s 11 numbers live in its ``coef``). It cannot be used as
    a plain per-gradient optimizer (``step`` raises).

    Parameters
    ----------
    rates
        The six SGD members' learning rates.
    nag_lr
        NAG's learning rate η.
    ftrl_alpha, ftrl_beta
        FTRL's α and β (its per-coordinate rate is α/(β + √n_i)).

    Examples
    --------

    >>> from stream_logreg import OnlineLogisticRegression
    >>> model = OnlineLogisticRegression()  # optimizer=optim.Mixture()
    >>> for _ in range(50):
    ...     model.learn_one({"a": 1.0}, True)
    >>> model.predict_proba_one({"a": 1.0})[True] > 0.9
    True
    >>> [round(p, 3) for p in model.optimizer.posterior]  # π_k: the fast members lead (SGD(1.0), NAG)
    [0.0, 0.0, 0.0, 0.0, 0.019, 0.805, 0.176, 0.0]

    """

    _state_names = ("w_sgd0", "w_sgd1", "w_sgd2", "w_sgd3", "w_sgd4", "w_sgd5", "w_nag", "w_ftrl",
                    "nag_scale", "nag_squares", "ftrl_squares")
    _nonnegative = ("nag_scale", "nag_squares", "ftrl_squares")
    N_MEMBERS = 8

    def __init__(
        self,
        rates: tuple[float, ...] = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0),
        nag_lr: float = 0.5,
        ftrl_alpha: float = 0.17,
        ftrl_beta: float = 0.5,
    ) -> None:
        self.n_iterations = 0
        rates = tuple(rates)
        if len(rates) != 6:
            raise ValueError(f"Mixture: rates must hold six SGD learning rates, got {rates!r}")
        self.rates = tuple(_check("Mixture", "rates", r, positive=True) for r in rates)
        self.nag_lr = _check("Mixture", "nag_lr", nag_lr, positive=True)
        self.ftrl_alpha = _check("Mixture", "ftrl_alpha", ftrl_alpha, positive=True)
        self.ftrl_beta = _check("Mixture", "ftrl_beta", ftrl_beta, positive=False)
        self.coef = np.zeros((0, len(self._state_names)))
        self.log_weights = np.zeros(self.N_MEMBERS)
        self.nag = np.zeros(2)

    @property
    def posterior(self) -> list[float]:
        """The mixture weights π_k of the eight members (in the order of the table above)."""
        e = np.exp(self.log_weights - self.log_weights.max())
        return (e / e.sum()).tolist()

    def mean(self, n: int) -> np.ndarray:
        """The posterior-weighted mean Σ_k π_k w_k of the members' weights, first n columns (the model's
        bias instance holds no posterior of its own: the model weighs its row with this one's)."""
        return self.coef[:n, : self.N_MEMBERS] @ np.asarray(self.posterior)

    def resize(self, capacity: int) -> None:
        if len(self.coef) < capacity:
            _kernel.grown(self, "coef", capacity)  # the same rows, then rows of zeros

    def _step(self, w: np.ndarray, cols: np.ndarray, grads: np.ndarray, n: int) -> None:
        raise TypeError("the mixture learns through OnlineLogisticRegression, not from a gradient")

    def state_arrays(self, size: int) -> dict[str, np.ndarray]:
        return {name: self.coef[:size, k].copy() for k, name in enumerate(self._state_names)}

    def load_state(self, arrays: dict[str, np.ndarray], n_iterations: int, capacity: int) -> None:
        super().load_state(arrays, n_iterations, capacity)  # checks, and sets one 1-d array per name
        columns = [getattr(self, name) for name in self._state_names]
        self.coef = np.ascontiguousarray(np.stack(columns, axis=1))
        for name in self._state_names:
            delattr(self, name)

    def scalars(self) -> dict:
        """The model-wide state as JSON numbers (bitwise round trip): a_k, t and N."""
        a, (t, n) = self.log_weights.tolist(), self.nag.tolist()
        return {"log_weights": a, "nag_t": t, "nag_N": n}

    def load_scalars(self, scalars: dict) -> None:
        """Restore what :meth:`scalars` returned (checked: finite, a_k ≤ 0 with max 0, t, N ≥ 0)."""
        try:
            a = np.array(scalars["log_weights"], dtype=np.float64)
            nag = np.array([scalars["nag_t"], scalars["nag_N"]], dtype=np.float64)
        except (KeyError, TypeError, ValueError):
            raise ValueError("the mixture's state (log_weights, nag_t, nag_N) is malformed") from None
        if a.shape != (self.N_MEMBERS,) or not (np.isfinite(a).all() and np.isfinite(nag).all()):
            raise ValueError("the mixture's log weights must be 8 finite numbers, t and N finite")
        if a.max() != 0.0 or (nag < 0).any() or (nag[0] > 0 and nag[1] < nag[0]):
            raise ValueError("the mixture's log weights must have max 0, and N >= t >= 0")
        self.log_weights, self.nag = a, nag


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
