"""The mathematics of logistic regression as small pure functions over numpy arrays.

For a mini-batch ``X`` (m×n), labels ``y`` in {0, 1}^m, weights ``w`` and bias ``b``::

    z = Xw + b            h = σ(z) = 1 / (1 + e^-z)
    L(w, b) = -(1/m) Σ [ y log h + (1 - y) log(1 - h) ] = (1/m) Σ [ softplus(z) - y·z ]
    ∇w = (1/m) Xᵀ(h - y)  ∇b = (1/m) 1ᵀ(h - y)
    w ← w - η∇w           b ← b - η∇b

``m = 1`` is the per-sample update. Every function is exact for any finite ``z``: no overflow, no
RuntimeWarning, no NaN.

>>> import numpy as np
>>> X = np.array([[1.0, 2.0], [3.0, -1.0]])
>>> y = np.array([1.0, 0.0])
>>> w, b = sgd_update(np.zeros(2), 0.0, *gradients(X, y, np.zeros(2), 0.0), lr=0.5)
>>> w.tolist(), b
([-0.25, 0.375], 0.0)
>>> log_loss(np.array([1e4, -1e4]), np.array([1.0, 0.0])).tolist()
[0.0, 0.0]

"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import expit

__all__ = [
    "sigmoid",
    "sigmoid_scalar",
    "softplus",
    "log_loss",
    "log_loss_scalar",
    "gradients",
    "sgd_update",
]


def sigmoid(z: np.ndarray) -> np.ndarray:
    """σ(z) = 1 / (1 + e^-z), elementwise, by ``scipy.special.expit``: one pass, never overflows.

    >>> sigmoid(np.array([-1e4, 0.0, 1e4])).tolist()
    [0.0, 0.5, 1.0]

    """
    return expit(np.asarray(z, dtype=np.float64))


def sigmoid_scalar(z: float) -> float:
    """σ(z) for one Python float, with the same overflow-free branches as :func:`sigmoid`.

    >>> sigmoid_scalar(-1e4), sigmoid_scalar(0.0), sigmoid_scalar(1e4)
    (0.0, 0.5, 1.0)

    """
    if z >= 0.0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def softplus(z: np.ndarray) -> np.ndarray:
    """softplus(z) = log(1 + e^z) = max(z, 0) + log1p(e^-|z|) (log-sum-exp, never overflows).

    >>> softplus(np.array([-1e4, 0.0, 1e4])).tolist() == [0.0, math.log(2.0), 1e4]
    True

    """
    z = np.asarray(z, dtype=np.float64)
    return np.maximum(z, 0.0) + np.log1p(np.exp(-np.abs(z)))


def log_loss(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-sample cross-entropy of the logit ``z`` against ``y`` ∈ {0, 1}: softplus(z) − y·z.

    This equals −[y log σ(z) + (1 − y) log(1 − σ(z))] but never takes the log of a rounded σ.
    The batch loss L(w, b) is the mean of this vector.

    >>> log_loss(np.array([0.0]), np.array([1.0])).tolist() == [math.log(2.0)]
    True

    """
    z = np.asarray(z, dtype=np.float64)
    return softplus(z) - np.asarray(y, dtype=np.float64) * z


def log_loss_scalar(z: float, y: float) -> float:
    """:func:`log_loss` for one Python float: softplus(z) − y·z.

    >>> log_loss_scalar(-1e4, 1.0)
    10000.0

    """
    return max(z, 0.0) + math.log1p(math.exp(-abs(z))) - y * z


def gradients(
    X: np.ndarray, y: np.ndarray, w: np.ndarray, b: float, sample_weight: np.ndarray | None = None
) -> tuple[np.ndarray, float]:
    """Gradient of the mean log loss: ∇w = (1/m) Xᵀ(h − y), ∇b = (1/m) 1ᵀ(h − y), h = σ(Xw + b).

    With per-sample weights s the residual is s·(h − y), still divided by m (River's convention).

    >>> gw, gb = gradients(np.array([[2.0]]), np.array([1.0]), np.zeros(1), 0.0)
    >>> gw.tolist(), gb
    ([-1.0], -0.5)

    """
    r = sigmoid(X @ w + b) - y
    if sample_weight is not None:
        r = r * sample_weight
    m = X.shape[0]
    return (r @ X) / m, float(r.sum()) / m


def sgd_update(
    w: np.ndarray, b: float, grad_w: np.ndarray, grad_b: float, lr: float
) -> tuple[np.ndarray, float]:
    """The gradient step: w ← w − η∇w, b ← b − η∇b. Returns new arrays; the inputs are not modified.

    An update that would make w or b non-finite is refused with a ``FloatingPointError``.

    >>> sgd_update(np.array([1.0]), 0.0, np.array([2.0]), 1.0, lr=0.1)
    (array([0.8]), -0.1)

    """
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is refused below, not warned about
        new_w = w - lr * grad_w
    new_b = b - lr * grad_b
    if not (np.isfinite(new_w).all() and math.isfinite(new_b)):
        raise FloatingPointError("the update would make w or b non-finite; refused")
    return new_w, new_b
