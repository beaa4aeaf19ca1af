"""Dropout between layers, as Keras' ``Dropout`` layer does it (inverted dropout)."""


class Dropout:
    """y = x ⊙ m / (1 − rate), m ~ Bernoulli(1 − rate) per unit: kept units are scaled up in training, so
    nothing changes at evaluation, where dropout is simply not applied.

    Backward: dx = dy ⊙ m / (1 − rate). The masks are drawn by the caller (:meth:`draw`, from a
    host generator, so a seeded run draws the same masks on every backend) and passed to ``forward``
    and ``backward``, which is also how a gradient check holds them fixed.
    """

    def __init__(self, rate, backend):
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
