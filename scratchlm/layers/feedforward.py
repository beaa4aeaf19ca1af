"""FeedForward: the Transformer's position-wise ReLU network, Dense(E→F), ReLU, Dense(F→E).

Over any leading shape (..., E), e.g. batch-major (B, T, E):

    z = x W1 + b1        W1 (E, F), b1 (F,)                          (..., F)
    h = relu(z)                                                      (..., F)
    y = h W2 + b2        W2 (F, E), b2 (E,)                          (..., E)

Backward: dh = dy W2ᵀ, dz = dh ⊙ [z > 0] (= dh ⊙ [h > 0]), dx = dz W1ᵀ, with the
weight gradients of the two :class:`~scratchlm.layers.Dense` layers.
Parameters are a flat dict ``ffn_1/kernel``, ``ffn_1/bias``, ``ffn_2/kernel``,
``ffn_2/bias`` (the seed's ``Dense`` pair). Keras defaults: glorot-uniform
kernels (W1 drawn first), zero biases.

The fused path (:attr:`FeedForward.fused`) adds b1 and applies the ReLU in one
pass over the GEMM's output (in place), and backward applies ReLU' and sums db1
in one pass over dh (in place): the same numbers, two passes over (..., F) fewer.
"""

import functools
from typing import NamedTuple

from .dense import Dense


class FeedForwardCache(NamedTuple):
    """What :meth:`FeedForward.backward` needs from its forward."""
    x: object                 # (..., E) input
    h: object                 # (..., F) relu(x W1 + b1)


class FeedForward:
    """y = relu(x W1 + b1) W2 + b2; see the module docstring."""

    def __init__(self, embed_dim, dense_dim, backend, rng):
        self.backend = backend
        self.ffn_1 = Dense(embed_dim, dense_dim, backend, rng)           # (E, F)
        self.ffn_2 = Dense(dense_dim, embed_dim, backend, rng)           # (F, E)

    @property
    def params(self):
        return {f"{name}/{k}": v for name, layer in (("ffn_1", self.ffn_1), ("ffn_2", self.ffn_2))
                for k, v in layer.params.items()}

    @functools.cached_property
    def fused(self):
        """The fused kernels (:mod:`scratchlm.kernels`) or None for the reference; chosen once, at first use."""
        return self.backend.fused if self.backend.kernels == "fused" else None

    def forward(self, x):
        """x (..., E) -> (y (..., E), cache)."""
        if self.fused is not None:
            W1 = self.ffn_1.kernel
            h = self.fused.bias_relu(x.reshape(-1, x.shape[-1]) @ W1, self.ffn_1.bias)   # (M, F)
            h = h.reshape(x.shape[:-1] + (W1.shape[1],))
            return self.ffn_2.forward(h), FeedForwardCache(x, h)
        h = self.ffn_1.forward(x)                                         # (..., F)
        h = self.backend.xp.maximum(h, 0, out=h)                          # relu, in place
        return self.ffn_2.forward(h), FeedForwardCache(x, h)

    def backward(self, cache, dy):
        """dy (..., E) -> (dx (..., E), param grads keyed like ``params``)."""
        dh, g2 = self.ffn_2.backward(cache.h, dy)                         # (..., F)
        if self.fused is not None:                                        # relu' and db1 in one pass
            F = dh.shape[-1]
            dh2, db1 = self.fused.relu_backward(dh.reshape(-1, F), cache.h.reshape(-1, F))   # (M, F), (F,)
            x2 = cache.x.reshape(-1, cache.x.shape[-1])                   # (M, E)
            dx = (dh2 @ self.ffn_1.kernel.T).reshape(cache.x.shape)
            g1 = {"kernel": x2.T @ dh2, "bias": db1}
        else:
            dh = dh * (cache.h > 0)                                       # relu'
            dx, g1 = self.ffn_1.backward(cache.x, dh)                     # (..., E)
        grads = {f"ffn_1/{k}": v for k, v in g1.items()}
        grads.update({f"ffn_2/{k}": v for k, v in g2.items()})
        return dx, grads
