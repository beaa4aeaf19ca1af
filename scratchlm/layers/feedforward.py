r"""FeedForward: the Transformer's position-wise network, Dense(E→F), activation, Dense(F→E).

Over any leading shape (..., E), e.g. batch-major (B, T, E), with W1 (E, F), b1 (F,), W2 (F, E),
b2 (E,) and f = relu (the seed's), gelu or gelu_tanh:

.. math::

    z &= x W_1 + b_1 \qquad (\dots, F) \\
    h &= f(z) \qquad (\dots, F) \\
    y &= h W_2 + b_2 \qquad (\dots, E)

Backward (:mod:`scratchlm.layers.activations` for f'; for ReLU f'(z) = [h > 0], so
only h is kept), with the weight gradients of the two :class:`~scratchlm.layers.Dense`
layers (sums over all leading positions):

.. math::

    dh &= dy\, W_2^\top \qquad dW_2 = h^\top dy \qquad db_2 = \textstyle\sum dy \\
    dz &= dh \odot f'(z) \\
    dx &= dz\, W_1^\top \qquad dW_1 = x^\top dz \qquad db_1 = \textstyle\sum dz
 ``use_bias=False`` drops b1
and b2 (nanoGPT's ``bias=False``).
Parameters are a flat dict ``ffn_1/kernel``, ``ffn_1/bias``, ``ffn_2/kernel``,
``ffn_2/bias`` (the seed's ``Dense`` pair). Keras defaults: glorot-uniform
kernels (W1 drawn first), zero biases.

The fused subclass (:class:`~scratchlm.kernels.layers.FusedFeedForward`) adds b1
and applies the ReLU in one pass over the GEMM's output (in place), and backward
applies ReLU' and sums db1 in one pass over dh (in place): the same numbers, two
passes over (..., F) fewer. Its GELUs are this module's.
"""

from typing import Any, NamedTuple

from ..backend import Backend
from ..errors import ModelError
from .activations import ACTIVATIONS, NEEDS_Z
from .base import Array, Layer, Shape, prefixed
from .dense import Dense


class FeedForwardCache(NamedTuple):
    """What :meth:`FeedForward.backward` needs from its forward: the two Dense layers' inputs (their caches)."""

    x: Array  # (..., E) input
    h: Array | None  # (..., F) f(x W1 + b1); None where the backward computes it again from z (fused GELU)
    z: Array | None = None  # (..., F) x W1 + b1, kept for the GELUs (None for ReLU, whose f' reads h)


class FeedForward(Layer):
    """y = f(x W1 + b1) W2 + b2; see the module docstring. activation: "relu" | "gelu" | "gelu_tanh"."""

    def __init__(
        self,
        embed_dim: int,
        dense_dim: int,
        backend: Backend,
        rng: Any,
        activation: str = "relu",
        use_bias: bool = True,
    ):
        if activation not in ACTIVATIONS:
            raise ModelError(f"activation must be one of {', '.join(map(repr, ACTIVATIONS))}, got {activation!r}")
        self.backend = backend
        self.activation = activation
        self.ffn_1 = backend.layer(Dense)(embed_dim, dense_dim, backend, rng, use_bias)  # (E, F)
        self.ffn_2 = backend.layer(Dense)(dense_dim, embed_dim, backend, rng, use_bias)  # (F, E)

    @property
    def params(self) -> dict[str, Array]:
        return {**prefixed("ffn_1", self.ffn_1.params), **prefixed("ffn_2", self.ffn_2.params)}

    @classmethod
    def param_shapes(cls, embed_dim: int, dense_dim: int, use_bias: bool = True) -> dict[str, Shape]:
        return {
            **prefixed("ffn_1", Dense.param_shapes(embed_dim, dense_dim, use_bias)),
            **prefixed("ffn_2", Dense.param_shapes(dense_dim, embed_dim, use_bias)),
        }

    def forward(self, x: Array) -> tuple[Array, FeedForwardCache]:
        """x (..., E) -> (y (..., E), cache)."""
        z, _ = self.ffn_1.forward(x)  # (..., F)
        h = ACTIVATIONS[self.activation][0](z)  # (..., F)
        y, _ = self.ffn_2.forward(h)
        return y, FeedForwardCache(x, h, z if self.activation in NEEDS_Z else None)

    def backward(self, cache: FeedForwardCache, dy: Array) -> tuple[Array, dict[str, Array]]:
        """dy (..., E) -> (dx (..., E), param grads keyed like ``params``)."""
        dh, g2 = self.ffn_2.backward(cache.h, dy)  # (..., F)
        dz = ACTIVATIONS[self.activation][1](cache.z, cache.h, dh)  # f'
        dx, g1 = self.ffn_1.backward(cache.x, dz)  # (..., E)
        return dx, {**prefixed("ffn_1", g1), **prefixed("ffn_2", g2)}
