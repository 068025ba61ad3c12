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

import numpy as np
from river import base

from stream_logreg import _kernel

__all__ = ["Optimizer", "SGD", "AdaGrad", "FTRL"]


class Optimizer(base.Base):
    """Base class: an update rule with per-coordinate state arrays named in ``_state_names``."""

    _state_names: tuple[str, ...] = ()

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

    def state_arrays(self, size: int) -> dict[str, np.ndarray]:
        """The first ``size`` coordinates of each state array (for checkpoints)."""
        return {name: getattr(self, name)[:size].copy() for name in self._state_names}

    def load_state(self, arrays: dict[str, np.ndarray], n_iterations: int, capacity: int) -> None:
        """Restore what :meth:`state_arrays` returned, in arrays of ``capacity`` coordinates."""
        self.n_iterations = int(n_iterations)
        for name in self._state_names:
            values = np.asarray(arrays[name], dtype=np.float64)
            new = np.zeros(max(capacity, len(values)))
            new[: len(values)] = values
            setattr(self, name, new)


class SGD(Optimizer):
    """The seed's plain gradient descent: w_j ← w_j − η_t g_j, with η_t = lr / (t + 1)^power_t.

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
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr!r}")
        if not power_t >= 0:
            raise ValueError(f"power_t must be >= 0, got {power_t!r}")
        super().__init__()
        self.lr = lr
        self.power_t = power_t

    @property
    def learning_rate(self) -> float:
        """η_t for the next update."""
        if self.power_t == 0.0:
            return self.lr
        return self.lr / (self.n_iterations + 1) ** self.power_t

    def _step(self, w: np.ndarray, cols: np.ndarray, grads: np.ndarray, n: int) -> None:
        _kernel.sgd_step(w, cols, grads, n, self.learning_rate)

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
        The base learning rate η.
    eps
        Added to √G_j to keep the first step finite.

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

    def __init__(self, lr: float = 0.1, eps: float = 1e-8) -> None:
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr!r}")
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0, got {eps!r}")
        super().__init__()
        self.lr = lr
        self.eps = eps

    def _step(self, w: np.ndarray, cols: np.ndarray, grads: np.ndarray, n: int) -> None:
        _kernel.adagrad_step(w, self.G, cols, grads, n, self.lr, self.eps)


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
        α, the scale of the per-coordinate learning rate.
    beta
        β, smooths the rate of coordinates with few updates.
    l1
        λ1, L1 regularization strength.
    l2
        λ2, L2 regularization strength.

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

    def __init__(self, alpha: float = 0.1, beta: float = 1.0, l1: float = 0.0, l2: float = 0.0) -> None:
        if not alpha > 0:
            raise ValueError(f"alpha must be > 0, got {alpha!r}")
        for name, value in (("beta", beta), ("l1", l1), ("l2", l2)):
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        super().__init__()
        self.alpha = alpha
        self.beta = beta
        self.l1 = l1
        self.l2 = l2

    def _step(self, w: np.ndarray, cols: np.ndarray, grads: np.ndarray, n: int) -> None:
        _kernel.ftrl_step(w, self.z, self.n, cols, grads, n, self.alpha, self.beta, self.l1, self.l2)
