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

The fused subclass (:class:`~scratchlm.kernels.layers.FusedFeedForward`) adds b1
and applies the ReLU in one pass over the GEMM's output (in place), and backward
applies ReLU' and sums db1 in one pass over dh (in place): the same numbers, two
passes over (..., F) fewer.
"""

from typing import Any, NamedTuple

from ..backend import Backend
from .base import Array, Layer, Shape, prefixed
from .dense import Dense


class FeedForwardCache(NamedTuple):
    """What :meth:`FeedForward.backward` needs from its forward: the two Dense layers' inputs (their caches)."""

    x: Array  # (..., E) input
    h: Array  # (..., F) relu(x W1 + b1)


class FeedForward(Layer):
    """y = relu(x W1 + b1) W2 + b2; see the module docstring."""

    def __init__(self, embed_dim: int, dense_dim: int, backend: Backend, rng: Any):
        self.backend = backend
        self.ffn_1 = backend.layer(Dense)(embed_dim, dense_dim, backend, rng)  # (E, F)
        self.ffn_2 = backend.layer(Dense)(dense_dim, embed_dim, backend, rng)  # (F, E)

    @property
    def params(self) -> dict[str, Array]:
        return {**prefixed("ffn_1", self.ffn_1.params), **prefixed("ffn_2", self.ffn_2.params)}

    @classmethod
    def param_shapes(cls, embed_dim: int, dense_dim: int) -> dict[str, Shape]:
        return {
            **prefixed("ffn_1", Dense.param_shapes(embed_dim, dense_dim)),
            **prefixed("ffn_2", Dense.param_shapes(dense_dim, embed_dim)),
        }

    def forward(self, x: Array) -> tuple[Array, FeedForwardCache]:
        """x (..., E) -> (y (..., E), cache)."""
        h, _ = self.ffn_1.forward(x)  # (..., F)
        h = self.backend.xp.maximum(h, 0, out=h)  # relu, in place
        y, _ = self.ffn_2.forward(h)
        return y, FeedForwardCache(x, h)

    def backward(self, cache: FeedForwardCache, dy: Array) -> tuple[Array, dict[str, Array]]:
        """dy (..., E) -> (dx (..., E), param grads keyed like ``params``)."""
        dh, g2 = self.ffn_2.backward(cache.h, dy)  # (..., F)
        dh = dh * (cache.h > 0)  # relu'
        dx, g1 = self.ffn_1.backward(cache.x, dh)  # (..., E)
        return dx, {**prefixed("ffn_1", g1), **prefixed("ffn_2", g2)}
