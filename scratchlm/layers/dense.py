"""Dense: the affine map from the top layer's outputs to logits."""

from ..initializers import glorot_uniform


class Dense:
    """Affine map to logits: y = x W + b, W (D, V), b (V,), over any leading shape.

    Backward: dx = dy Wᵀ, dW = xᵀ dy, db = Σ dy (over all leading positions).
    Keras' default initialisation: glorot-uniform W, b = 0.
    """

    def __init__(self, input_size, units, backend, rng):
        self.backend = backend
        self.kernel = glorot_uniform((input_size, units), rng, backend)   # (D, V)
        self.bias = backend.zeros((units,))                               # (V,)

    @property
    def params(self):
        return {"kernel": self.kernel, "bias": self.bias}

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
