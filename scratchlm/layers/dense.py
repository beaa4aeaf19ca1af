"""Dense: the affine map from the top layer's outputs to logits (and the loss right after it)."""

from typing import Any, NamedTuple

from ..backend import Backend
from ..initializers import glorot_uniform
from ..losses import softmax_cross_entropy
from .base import Array, Layer, Shape


class ScoreCache(NamedTuple):
    """What :meth:`Dense.score_backward` needs from :meth:`Dense.score`."""

    x: Array  # (N, D) the layer's input
    dlogits: Array  # (N, V) ∂L/∂logits = w_n·(softmax − onehot)


class Dense(Layer):
    r"""Affine map to logits: y = x W + b, W (D, V), b (V,), over any leading shape.

    Forward, x (..., D), with the leading positions flattened to N rows:

    .. math::

        y = x W + b \qquad (N, D) \times (D, V) \to (N, V)

    Backward (sums over all leading positions):

    .. math::

        dx = dy\, W^\top \qquad dW = x^\top dy \qquad db = \textstyle\sum dy

    The cache of forward is the input x itself. Keras' default initialisation:
    glorot-uniform W, b = 0. ``use_bias=False``: y = x W, no b (nanoGPT's
    ``bias=False``); ``bias`` is then None.

    :meth:`score` / :meth:`score_backward` are the layer and the softmax
    cross-entropy after it (:func:`scratchlm.losses.softmax_cross_entropy`) as
    one pair: here forward, the loss and :meth:`backward` in full. Its fused
    subclass (:class:`~scratchlm.kernels.layers.FusedDense`) runs them in chunks
    of rows and never holds the (N, V) logits.
    """

    def __init__(
        self,
        input_size: int,
        units: int,
        backend: Backend,
        rng: Any,
        use_bias: bool = True,
        kernel: Array | None = None,
    ):
        self.backend = backend
        # (D, V); a kernel given by the owner (a tied output layer's: the token table, transposed) is not drawn
        self.kernel = glorot_uniform((input_size, units), rng, backend) if kernel is None else kernel
        self.bias = backend.zeros((units,)) if use_bias else None  # (V,)

    @property
    def params(self) -> dict[str, Array]:
        return {"kernel": self.kernel} if self.bias is None else {"kernel": self.kernel, "bias": self.bias}

    @classmethod
    def param_shapes(cls, input_size: int, units: int, use_bias: bool = True) -> dict[str, Shape]:
        return {"kernel": (input_size, units), "bias": (units,)} if use_bias else {"kernel": (input_size, units)}

    def forward(self, x: Array) -> tuple[Array, Array]:
        """x (..., D) -> (y (..., V), cache = x)."""
        y = x.reshape(-1, x.shape[-1]) @ self.kernel  # (N, V)
        if self.bias is not None:
            y += self.bias
        return y.reshape(x.shape[:-1] + (self.kernel.shape[1],)), x

    def backward(self, x: Array, dy: Array) -> tuple[Array, dict[str, Array]]:
        """(cache = x, dy (..., V)) -> (dx (..., D), {"kernel": xᵀ dy, "bias": Σ dy})."""
        x2 = x.reshape(-1, x.shape[-1])  # (N, D)
        dy2 = dy.reshape(-1, dy.shape[-1])  # (N, V)
        dx = (dy2 @ self.kernel.T).reshape(x.shape)  # (..., D)
        grads = {"kernel": x2.T @ dy2}
        if self.bias is not None:
            grads["bias"] = dy2.sum(axis=0)
        return dx, grads

    def score(
        self, x: Array, targets: Array, mask: Array | None = None, backward: bool = True
    ) -> tuple[float, ScoreCache | None]:
        """Mean softmax cross-entropy of the logits x W + b against ``targets``, and the cache of
        :meth:`score_backward`.

        x (N, D); targets (N,) ints; mask (N,) bool/0-1 or None (as
        :func:`scratchlm.losses.softmax_cross_entropy`). Returns (loss, cache),
        or (loss, None) with backward=False.
        """
        logits, _ = self.forward(x)  # (N, V)
        loss, dlogits = softmax_cross_entropy(logits, targets, mask)
        return loss, (ScoreCache(x, dlogits) if backward else None)

    def score_backward(self, cache: ScoreCache) -> tuple[Array, dict[str, Array]]:
        """-> (dx (N, D), {"kernel": dW, "bias": db}) of the loss of :meth:`score`."""
        return self.backward(cache.x, cache.dlogits)
