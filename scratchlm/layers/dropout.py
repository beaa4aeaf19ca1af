"""Dropout between layers, as Keras' ``Dropout`` layer does it (inverted dropout)."""

import numbers

from ..errors import ModelError

# The largest dropout rate accepted. Keras takes any rate below 1, but a unit is kept with probability
# 1 − rate: at 0.99 a layer of a few hundred units still keeps a few of them per row; far above it most rows
# keep none, so the layer's output is all zeros, the gradients of everything below it are zero, and nothing
# trains (at rate 0.9999999999999999 no unit is ever kept: the loss stays ln V and every gradient is 0).
MAX_RATE = 0.99


def check_rate(rate):
    """ModelError unless ``rate`` is a real number in [0, MAX_RATE] (not a bool or a string)."""
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not 0 <= rate <= MAX_RATE:
        raise ModelError(f"dropout must be a rate in [0, {MAX_RATE}] (the share of units dropped; above {MAX_RATE} "
                         f"almost no unit is kept and nothing trains), got {rate!r}")


class Dropout:
    """y = x ⊙ m / (1 − rate), m ~ Bernoulli(1 − rate) per unit: kept units are scaled up in training, so
    nothing changes at evaluation, where dropout is simply not applied.

    Backward: dx = dy ⊙ m / (1 − rate). The masks are drawn by the caller (:meth:`draw`, from a
    host generator, so a seeded run draws the same masks on every backend) and passed to ``forward``
    and ``backward``, which is also how a gradient check holds them fixed.

    rate: a number in [0, :data:`MAX_RATE`]; ModelError otherwise.
    """

    def __init__(self, rate, backend):
        check_rate(rate)
        self.rate = rate
        self.backend = backend

    @property
    def params(self):
        return {}

    def draw(self, shape, rng):
        """A keep-mask of ``shape`` (True = kept, with probability 1 − rate) on this backend."""
        return self.backend.xp.asarray(rng.random(shape) >= self.rate)

    def forward(self, x, mask):
        """x (...), mask (...) bool -> y = x ⊙ mask / (1 − rate)."""
        return x * mask * (1.0 / (1.0 - self.rate))

    def backward(self, mask, dy):
        """dy (...) -> (dx = dy ⊙ mask / (1 − rate), {})."""
        return dy * mask * (1.0 / (1.0 - self.rate)), {}
