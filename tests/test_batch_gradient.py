"""The textbook batch step's kernel (``_kernel.batch_predict_gradient``) against its formula written out in
Python floats, bitwise: the predictions, the distinct columns in order of first appearance, each column's
gradient summed over the rows in order (no broker)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from stream_logreg import _kernel


def sigmoid(z: float) -> float:
    if z >= 0.0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def oracle(w: list[float], b: float, rows: list[list[tuple[int, float]]], ys: list[float],
           sw: list[float] | None, neg_w: float, pos_w: float, l2: float, clip: float
           ) -> tuple[list[float], list[int], list[float], float]:
    """p, the touched columns, their gradients and the bias's, as the kernel's docstring states them."""
    m, ps, sums, s = float(len(rows)), [], {}, 0.0
    for i, (row, y) in enumerate(zip(rows, ys, strict=True)):
        z = 0.0
        for j, v in row:
            z = z + w[j] * v
        p = sigmoid(z + b)
        ps.append(p)
        r = min(max((p - y) * (1.0 if sw is None else sw[i]) * (pos_w if y == 1.0 else neg_w), -clip), clip)
        s = s + r
        for j, v in row:
            sums[j] = sums.get(j, 0.0) + r * v
    grads = [g / m if l2 == 0.0 else g / m + l2 * w[j] for j, g in sums.items()]
    return ps, list(sums), grads, s / m


@pytest.mark.parametrize("seed", range(6))
def test_batch_gradient_is_the_formula_bitwise(seed):
    """Batches of 1 to 60 rows over few or many columns (up to ~1,000 distinct: a table of 2,048 slots
    whose probes collide), columns repeated within a row and across rows, weights and l2 or not."""
    rng = random.Random(seed)
    n_cols = rng.choice([3, 40, 5000])
    w = [rng.gauss(0, 1) for _ in range(n_cols)]
    for _ in range(25):
        m = rng.randrange(1, 61)
        rows = [[(rng.randrange(n_cols), rng.choice([1.0, rng.gauss(0, 2)]))
                 for _ in range(rng.randrange(0, 18))] for _ in range(m)]
        ys = [float(rng.random() < 0.5) for _ in range(m)]
        sw = None if rng.random() < 0.5 else [rng.choice([0.5, 1.0, 4.0]) for _ in range(m)]
        l2, b = rng.choice([0.0, 0.01]), rng.gauss(0, 1)
        cols = np.array([j for row in rows for j, _ in row], dtype=np.intp)
        vals = np.array([v for row in rows for _, v in row], dtype=np.float64)
        indptr = np.cumsum([0] + [len(row) for row in rows]).astype(np.intp)
        nnz = len(cols)
        p, touched, grads, g_b = np.empty(m), np.empty(nnz, dtype=np.intp), np.empty(nnz), np.empty(1)
        weights = None if sw is None else np.array(sw)
        nt = _kernel.batch_predict_gradient(np.array(w), np.array([b]), cols, vals, indptr, np.array(ys),
                                            weights, 1.0, 2.0, l2, 1e12, p, touched, grads, g_b)
        ps, cs, gs, gb = oracle(w, b, rows, ys, sw, 1.0, 2.0, l2, 1e12)
        assert p.tolist() == ps
        assert touched[:nt].tolist() == cs
        assert grads[:nt].tolist() == gs
        assert g_b[0] == gb
