"""Dropout between layers, as Keras' ``Dropout`` layer does it (inverted dropout)."""

import numbers
from typing import Any

from ..backend import Backend
from ..errors import ModelError
from .base import Array, Layer, Shape

# The largest dropout rate accepted. Keras takes any rate below 1, but a unit is kept with probability
# 1 − rate: at 0.99 a layer of a few hundred units still keeps a few of them per row; far above it most rows
# keep none, so the layer's output is all zeros, the gradients of everything below it are zero, and nothing
# trains (at rate 0.9999999999999999 no unit is ever kept: the loss stays ln V and every gradient is 0).
MAX_RATE = 0.99


RATE = (
    f"a rate in [0, {MAX_RATE}] (the share of units dropped; above {MAX_RATE} almost no unit is kept and "
    "nothing trains)"
)


def is_rate(rate: object) -> bool:
    """A real number in [0, MAX_RATE] (not a bool or a string): a dropout rate this layer takes."""
    return isinstance(rate, numbers.Real) and not isinstance(rate, bool) and 0 <= rate <= MAX_RATE


def check_rate(rate: object) -> None:
    """ModelError unless ``rate`` is a dropout rate (:func:`is_rate`)."""
    if not is_rate(rate):
        raise ModelError(f"dropout must be {RATE}, got {rate!r}")


class Dropout(Layer):
    r"""y = x ⊙ m / (1 − rate), m ~ Bernoulli(1 − rate) per unit: kept units are scaled up in training, so
    nothing changes at evaluation, where dropout is simply not applied. Forward and backward, elementwise
    over any shape, with r the rate:

    .. math::

        m &\sim \operatorname{Bernoulli}(1 - r) \\
        y &= \frac{x \odot m}{1 - r} \qquad dx = \frac{dy \odot m}{1 - r}

    The masks are drawn by the caller (:meth:`draw`, from a
    host generator, so a seeded run draws the same masks on every backend) and passed to ``forward``,
    whose cache is the mask: that is also how a gradient check holds them fixed.

    rate: a number in [0, :data:`MAX_RATE`]; ModelError otherwise.
    """

    def __init__(self, rate: float, backend: Backend):
        check_rate(rate)
        self.rate = rate
        self.backend = backend

    @property
    def params(self) -> dict[str, Array]:
        return {}

    @classmethod
    def param_shapes(cls) -> dict[str, Shape]:
        return {}

    def draw(self, shape: Shape, rng: Any) -> Array:
        """A keep-mask of ``shape`` (True = kept, with probability 1 − rate) on this backend."""
        return self.backend.xp.asarray(rng.random(shape) >= self.rate)

    def forward(self, x: Array, mask: Array) -> tuple[Array, Array]:
        """x (...), mask (...) bool -> (y = x ⊙ mask / (1 − rate), cache = mask)."""
        return x * mask * (1.0 / (1.0 - self.rate)), mask

    def backward(self, mask: Array, dy: Array) -> tuple[Array, dict[str, Array]]:
        """(cache = mask, dy (...)) -> (dx = dy ⊙ mask / (1 − rate), {})."""
        return dy * mask * (1.0 / (1.0 - self.rate)), {}
