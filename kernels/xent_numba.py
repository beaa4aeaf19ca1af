"""Softmax cross-entropy, forward and backward in one pass over the logits, in place.

The same function as :func:`scratchlm.losses.softmax_cross_entropy` (read its
docstring for the equations), except that the logits buffer is overwritten
with dL/dz instead of allocating five temporaries of its size. For each row n:

    m = max_v z_v,   e_v = exp(z_v − m),   s = Σ_v e_v
    log p_{y_n} = z_{y_n} − m − log s
    z_v ← (w_n / s) · e_v − w_n [v = y_n]      (w_n = m_n / Σ m, or 1/N)

One thread does ~6,400 rows of 60 in 0.5 ms (NumPy's five passes: ~2 ms).
"""

import math

import numpy as np

from scratchlm.losses import token_weights

from ._jit import jit
from .activations import exp


@jit
def _softmax_xent(z, y, w, log_p):
    """z (N, V) logits -> dL/dz in place; y (N,) targets; w (N,) weights; log_p (N,) out: log p of the target."""
    N, V = z.shape
    for n in range(N):
        row = z[n]
        m = row[0]
        for v in range(V):
            m = row[v] if row[v] > m else m
        target = row[y[n]] - m
        for v in range(V):
            row[v] = exp(row[v] - m)
        s = _sum(row)
        log_p[n] = target - math.log(s)
        scale = w[n] / s
        for v in range(V):
            row[v] = row[v] * scale                            # w · softmax
        row[y[n]] -= w[n]                                      # − w · onehot(y)


@jit(fastmath={"reassoc", "nsz"})
def _sum(row):
    """Σ row, in any order: the licence to reassociate lets LLVM vectorise the sum."""
    s = row.dtype.type(0)
    for v in range(row.shape[0]):
        s += row[v]
    return s


def softmax_cross_entropy(logits, targets, mask=None):
    """(loss, dlogits) as :func:`scratchlm.losses.softmax_cross_entropy`; dlogits overwrites ``logits``.

    logits: C-contiguous (..., V) float array; targets: (...) ints; mask: (...) or None.
    Raises ValueError when the mask scores no token at all.
    """
    V = logits.shape[-1]
    z = logits.reshape(-1, V)                                  # (N, V), a view
    y = np.ascontiguousarray(targets.reshape(-1))              # (N,)
    N = z.shape[0]
    if y.shape[0] != N:
        raise ValueError(f"targets have {y.shape[0]} entries but logits have {N} rows")
    w = token_weights(np, N, z.dtype, mask)                   # (N,)
    log_p = np.empty(N, dtype=z.dtype)
    _softmax_xent(z, y, w, log_p)
    return -float((w * log_p).sum()), z.reshape(logits.shape)
