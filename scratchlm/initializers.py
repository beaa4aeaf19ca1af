"""Keras 3's default weight initialisers, drawn from a seeded host generator.

Values are drawn on the host with ``rng`` (a ``numpy.random.Generator``) so the
same seed gives the same draws on every backend, then moved to the backend.

    glorot_uniform(fan_in, fan_out):  U(-a, a),  a = sqrt(6 / (fan_in + fan_out))
    orthogonal(rows, cols):           the Q factor of a QR decomposition of a
                                      Gaussian matrix, signs fixed by diag(R)
    uniform(-0.05, 0.05):             Keras' Embedding default
"""

import math
from typing import Any

from .backend import Array, Backend


def glorot_uniform(shape: tuple[int, int], rng: Any, backend: Backend) -> Array:
    """Kernel (fan_in, fan_out) with entries in ±sqrt(6 / (fan_in + fan_out))."""
    fan_in, fan_out = shape
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return backend.asarray(rng.uniform(-limit, limit, size=shape))


def orthogonal(shape: tuple[int, int], rng: Any, backend: Backend) -> Array:
    """(rows, cols) matrix with orthonormal rows or columns (whichever are fewer).

    Draw A ~ N(0, 1) of shape (max, min), factor A = QR, multiply each column of
    Q by sign(R_jj) (makes the distribution uniform over orthogonal matrices),
    and transpose when rows < cols.
    """
    rows, cols = shape
    a = backend.asarray(rng.standard_normal((max(rows, cols), min(rows, cols))))
    q, r = backend.xp.linalg.qr(a)
    q *= backend.xp.sign(backend.xp.diagonal(r))
    return backend.xp.ascontiguousarray(q.T if rows < cols else q)


def uniform(shape: tuple[int, ...], rng: Any, backend: Backend, limit: float = 0.05) -> Array:
    """Entries in U(-limit, limit)."""
    return backend.asarray(rng.uniform(-limit, limit, size=shape))
