"""Dense: the affine map from the top layer's outputs to logits."""

import functools
from typing import NamedTuple

from ..initializers import glorot_uniform
from ..losses import softmax_cross_entropy


class ScoredGrads(NamedTuple):
    """What :meth:`Dense.score` leaves for backward: the gradients themselves, computed chunk by chunk."""
    dx: object                # (N, D) gradient of the Dense layer's input
    kernel: object            # (D, V) dW
    bias: object              # (V,) db


class Dense:
    """Affine map to logits: y = x W + b, W (D, V), b (V,), over any leading shape.

    Backward: dx = dy Wᵀ, dW = xᵀ dy, db = Σ dy (over all leading positions).
    Keras' default initialisation: glorot-uniform W, b = 0.

    :meth:`score` is the layer and the softmax cross-entropy after it in one
    call. On the fused path it runs in chunks of rows and never holds the
    (N, V) logits: per chunk z = x_c W + b, then loss and dz in place, then
    dx_c = dz Wᵀ, dW += x_cᵀ dz, db += Σ dz (``scratchlm/kernels/numba/xent.py``).
    """

    def __init__(self, input_size, units, backend, rng):
        self.backend = backend
        self.kernel = glorot_uniform((input_size, units), rng, backend)   # (D, V)
        self.bias = backend.zeros((units,))                               # (V,)

    @property
    def params(self):
        return {"kernel": self.kernel, "bias": self.bias}

    @functools.cached_property
    def fused(self):
        """The fused kernels (:mod:`scratchlm.kernels`) or None for the reference; chosen once, at first use."""
        return self.backend.fused if self.backend.kernels == "fused" else None

    def forward(self, x):
        """x (..., D) -> y (..., V)."""
        y = x.reshape(-1, x.shape[-1]) @ self.kernel                      # (N, V)
        y += self.bias
        return y.reshape(x.shape[:-1] + (self.kernel.shape[1],))

    def backward(self, x, dy):
        """dy (..., V) -> (dx (..., D), {"kernel": xᵀ dy, "bias": Σ dy})."""
        x2 = x.reshape(-1, x.shape[-1])                                   # (N, D)
        dy2 = dy.reshape(-1, dy.shape[-1])                                # (N, V)
        dx = (dy2 @ self.kernel.T).reshape(x.shape)                       # (..., D)
        return dx, {"kernel": x2.T @ dy2, "bias": dy2.sum(axis=0)}

    def score(self, x, targets, mask=None, backward=True):
        """Mean softmax cross-entropy of the logits x W + b against ``targets``, and what backward needs.

        x (N, D); targets (N,) ints; mask (N,) bool/0-1 or None (as
        :func:`scratchlm.losses.softmax_cross_entropy`). Returns (loss,
        ScoredGrads(dx, dW, db)), or (loss, None) with backward=False. The
        reference path is forward, the loss and :meth:`backward` in full.
        """
        if self.fused is not None:
            loss, dx, dW, db = self.fused.dense_softmax_cross_entropy(x, self.kernel, self.bias, targets, mask,
                                                                      backward)
            return loss, (ScoredGrads(dx, dW, db) if backward else None)
        loss, dlogits = softmax_cross_entropy(self.forward(x), targets, mask)
        if not backward:
            return loss, None
        dx, g = self.backward(x, dlogits)
        return loss, ScoredGrads(dx, g["kernel"], g["bias"])
