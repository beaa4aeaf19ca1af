r"""Softmax cross-entropy from logits, forward and backward in one function.

For logits z (N, V) and integer targets y (N,), with optional weights m (N,)
(1 = scored, 0 = padding; without them every m_n = 1). The log-softmax is
computed stably (the row max subtracted first) and L is the mean over the scored
tokens:

.. math::

    \log p_{n,v} &= z_{n,v} - \log \sum_{v'} e^{z_{n,v'}} \\
    L &= -\frac{1}{\sum_n m_n} \sum_n m_n \log p_{n, y_n} \\
    \frac{\partial L}{\partial z_{n,v}} &= \frac{m_n}{\sum_{n'} m_{n'}}
        \bigl(\operatorname{softmax}(z_n)_v - [v = y_n]\bigr)

Any leading shape works: logits (..., V) with targets and mask of shape (...).

The model's "last step only" loss (the seed Nietzsche setup: predict the one
character that follows a window) is this same function applied to the logits
of the final time step alone, (B, V) with targets (B,): the model never
computes logits for the other steps, so nothing needs to be masked away.

A model holds its loss as a :class:`SoftmaxCrossEntropy`, built through
``backend.layer`` like its layers: on the fused path that is the kernel that
overwrites the logits with dlogits in one pass per row
(:class:`~scratchlm.kernels.layers.FusedSoftmaxCrossEntropy`).
"""

from typing import Any

from .backend import Array, Backend, array_module


def softmax(logits: Array, axis: int = -1) -> Array:
    """Row-wise softmax, computed stably: exp(z - max z) / Σ exp(z - max z)."""
    xp = array_module(logits)
    e = xp.exp(logits - logits.max(axis=axis, keepdims=True))
    e /= e.sum(axis=axis, keepdims=True)
    return e


def token_weights(xp: Any, N: int, dtype: Any, mask: Array | None = None) -> Array:
    """w_n = m_n / Σ m (1/N without a mask): the weight of each of N tokens in the mean loss.

    Raises ValueError when the mask scores no token at all.
    """
    if mask is None:
        return xp.full(N, 1.0 / N, dtype=dtype)
    m = mask.reshape(-1).astype(dtype)
    count = float(m.sum())
    if count == 0:
        raise ValueError("the mask scores no token: at least one target must be unmasked")
    return m / count


def softmax_cross_entropy(logits: Array, targets: Array, mask: Array | None = None) -> tuple[float, Array]:
    """Mean cross-entropy over the scored tokens and its gradient.

    logits: (..., V) float; targets: (...) int; mask: (...) bool/0-1 or None.
    Returns (loss, dlogits): loss a Python float, dlogits (..., V) in logits' dtype.
    Raises ValueError when the mask scores no token at all.
    """
    xp = array_module(logits)
    V = logits.shape[-1]
    z = logits.reshape(-1, V)  # (N, V)
    y = targets.reshape(-1)  # (N,)
    N = z.shape[0]
    if y.shape[0] != N:
        raise ValueError(f"targets have {y.shape[0]} entries but logits have {N} rows")
    rows = xp.arange(N)

    shifted = z - z.max(axis=1, keepdims=True)  # (N, V), max of each row is 0
    exp = xp.exp(shifted)
    sum_exp = exp.sum(axis=1)  # (N,)
    log_p_target = shifted[rows, y] - xp.log(sum_exp)  # (N,)

    dz = exp  # reuse the buffer: softmax - onehot
    dz /= sum_exp[:, None]
    dz[rows, y] -= 1
    weight = token_weights(xp, N, z.dtype, mask)  # (N,)
    loss = -float((weight * log_p_target).sum())
    dz *= weight[:, None]
    return loss, dz.reshape(logits.shape)


class SoftmaxCrossEntropy:
    """:func:`softmax_cross_entropy` as the loss a model holds: ``loss(logits, targets, mask) -> (loss, dlogits)``."""

    def __init__(self, backend: Backend):
        self.backend = backend

    def __call__(self, logits: Array, targets: Array, mask: Array | None = None) -> tuple[float, Array]:
        return softmax_cross_entropy(logits, targets, mask)
