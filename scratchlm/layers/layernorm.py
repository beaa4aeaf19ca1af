r"""LayerNormalization over the last axis, Keras 3 defaults (epsilon 1e-3, gamma ones, beta zeros).

Forward, over the last axis of x (..., D), biased variance, γ and β (D,):

.. math::

    \mu &= \operatorname{mean}(x) \qquad \sigma^2 = \operatorname{mean}\bigl((x - \mu)^2\bigr)
        \qquad \sigma = \sqrt{\sigma^2 + \varepsilon} \\
    \hat x &= \frac{x - \mu}{\sigma} \qquad y = \hat x \odot \gamma + \beta

Backward (means over the last axis, sums over all leading positions):

.. math::

    g &= dy \odot \gamma \\
    dx &= \frac{g - \operatorname{mean}(g) - \hat x \odot \operatorname{mean}(g \odot \hat x)}{\sigma} \\
    d\gamma &= \textstyle\sum dy \odot \hat x \qquad d\beta = \textstyle\sum dy

Computed in at least float32 (as Keras does); the output has the input's dtype.
Note Keras' epsilon is 1e-3, not the 1e-5 of GPT code (``epsilon=1e-5`` there).
``use_bias=False`` drops β (y = x̂ ⊙ γ: nanoGPT's ``LayerNorm(bias=False)``); ``beta`` is then None.

The fused subclass (:class:`~scratchlm.kernels.layers.FusedLayerNormalization`,
``scratchlm/kernels/numba/layernorm.py``, ``scratchlm/kernels/cuda/layernorm.cu``) makes
one pass over the rows each way and keeps only μ and 1/σ per row (plus the
input, which backward re-normalises), against the reference's (..., D) x̂.
"""

from typing import NamedTuple

from ..backend import Backend
from .base import Array, Layer, Shape


class LayerNormCache(NamedTuple):
    """What :meth:`LayerNormalization.backward` needs from its forward."""

    xhat: Array  # (..., D) normalised input x̂, in the compute dtype
    rstd: Array  # (..., 1) 1/σ = 1/√(σ² + ε)


class LayerNormalization(Layer):
    """y = (x − μ)/√(σ² + ε) ⊙ γ + β over the last axis; see the module docstring."""

    def __init__(self, dim: int, backend: Backend, epsilon: float = 1e-3, use_bias: bool = True):
        self.backend = backend
        self.epsilon = epsilon
        self.gamma = backend.asarray(backend.xp.ones((dim,)))  # (D,)
        self.beta = backend.zeros((dim,)) if use_bias else None  # (D,)

    @property
    def params(self) -> dict[str, Array]:
        return {"gamma": self.gamma} if self.beta is None else {"gamma": self.gamma, "beta": self.beta}

    @classmethod
    def param_shapes(cls, dim: int, use_bias: bool = True) -> dict[str, Shape]:
        return {"gamma": (dim,), "beta": (dim,)} if use_bias else {"gamma": (dim,)}

    def forward(self, x: Array) -> tuple[Array, LayerNormCache]:
        """x (..., D) -> (y (..., D), cache)."""
        xp = self.backend.xp
        xc = x.astype(xp.result_type(x.dtype, xp.float32), copy=False)  # at least float32
        mu = xc.mean(axis=-1, keepdims=True)  # (..., 1)
        d = xc - mu  # (..., D)
        var = (d * d).mean(axis=-1, keepdims=True)  # (..., 1) biased
        rstd = 1.0 / xp.sqrt(var + self.epsilon)  # (..., 1)
        xhat = d * rstd  # (..., D)
        y = xhat * self.gamma
        if self.beta is not None:
            y = y + self.beta
        return y.astype(x.dtype, copy=False), LayerNormCache(xhat, rstd)

    def backward(self, cache: LayerNormCache, dy: Array) -> tuple[Array, dict[str, Array]]:
        """dy (..., D) -> (dx (..., D), {"gamma": Σ dy ⊙ x̂, "beta": Σ dy})."""
        xhat, rstd = cache
        D = xhat.shape[-1]
        dyc = dy.astype(xhat.dtype, copy=False)
        g = dyc * self.gamma  # (..., D)
        dx = (g - g.mean(axis=-1, keepdims=True) - xhat * (g * xhat).mean(axis=-1, keepdims=True)) * rstd  # (..., D)
        dy2, xhat2 = dyc.reshape(-1, D), xhat.reshape(-1, D)  # (M, D)
        grads = {"gamma": (dy2 * xhat2).sum(axis=0).astype(self.gamma.dtype, copy=False)}
        if self.beta is not None:
            grads["beta"] = dy2.sum(axis=0).astype(self.beta.dtype, copy=False)
        return dx.astype(dy.dtype, copy=False), grads
