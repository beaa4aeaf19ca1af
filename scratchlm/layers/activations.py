r"""The feed-forward network's activations, each a forward and a backward side by side: ReLU, GELU, GELU-tanh.

For z (...) elementwise, h = f(z) and dz = dh ⊙ f'(z). ``relu``:

.. math::

    h = \max(z, 0) \qquad f'(z) = [z > 0]

``gelu`` (exact), with Φ and φ the standard normal's distribution and density:

.. math::

    h &= z\, \Phi(z) \qquad \Phi(z) = \tfrac12 \bigl(1 + \operatorname{erf}(z / \sqrt2)\bigr) \\
    f'(z) &= \Phi(z) + z\, \varphi(z) \qquad \varphi(z) = \frac{e^{-z^2/2}}{\sqrt{2\pi}}

``gelu_tanh``, with c = √(2/π) and a = 0.044715:

.. math::

    h &= \tfrac12 z\, (1 + \tanh u) \qquad u = c\, (z + a z^3) \\
    f'(z) &= \tfrac12 (1 + \tanh u) + \tfrac12 z\, (1 - \tanh^2 u)\, c\, (1 + 3 a z^2)

``gelu`` is PyTorch's ``nn.GELU()`` (the exact form, nanoGPT's); ``gelu_tanh`` is
GPT-2's ``gelu_new`` (PyTorch's ``nn.GELU(approximate="tanh")``). NumPy has no
erf: :func:`erf` applies Python's ``math.erf`` (the C library's, accurate to the
last bit or so in float64) to each entry on the host, so the exact GELU costs
one Python call per entry in forward (~55 ns; ~22 ms for a (768, 512) block);
its backward reads Φ(z) = h/z back from the output instead of calling erf again.
ReLU and GELU-tanh stay vectorised.

Each activation's ``backward`` takes the pre-activation z and the output h (ReLU
needs only h, so a caller may keep h alone for it: :data:`NEEDS_Z`).
"""

import math
from typing import Any

import numpy

from ..backend import array_module
from .base import Array

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)  # c of gelu_tanh
GELU_TANH_A = 0.044715  # a of gelu_tanh


def _xp(z: Array) -> Any:
    return array_module(z)


def erf(z: Array) -> Array:
    """erf(z) entry by entry with Python's ``math.erf``, in z's dtype, on z's device."""
    xp = _xp(z)
    host = z.get() if hasattr(z, "get") else numpy.asarray(z)  # CuPy arrays come to the host
    values = numpy.fromiter(map(math.erf, host.ravel().tolist()), numpy.float64, host.size)
    return xp.asarray(values.reshape(host.shape), dtype=z.dtype)


def relu(z: Array) -> Array:
    """h = max(z, 0)."""
    return _xp(z).maximum(z, 0)


def relu_backward(z: Array | None, h: Array, dh: Array) -> Array:
    """dz = dh ⊙ [h > 0] (= [z > 0]); z is not needed."""
    return dh * (h > 0)


def gelu(z: Array) -> Array:
    """h = z Φ(z) = ½ z (1 + erf(z/√2))."""
    return 0.5 * z * (1.0 + erf(z * (1.0 / math.sqrt(2.0))))


def gelu_backward(z: Array, h: Array, dh: Array) -> Array:
    """dz = dh ⊙ (Φ(z) + z φ(z)), φ(z) = exp(−z²/2)/√(2π), with Φ(z) = h/z read back from the output (no
    second erf; Φ(0) = ½ where z is too small to divide by)."""
    xp = _xp(z)
    small = xp.abs(z) < 1e-30
    cdf = xp.where(small, 0.5, h / xp.where(small, 1.0, z))  # Φ(z)
    pdf = xp.exp(-0.5 * z * z) * (1.0 / math.sqrt(2.0 * math.pi))
    return dh * (cdf + z * pdf)


def gelu_tanh(z: Array) -> Array:
    """h = ½ z (1 + tanh(c (z + a z³))), GPT-2's gelu_new."""
    xp = _xp(z)
    return 0.5 * z * (1.0 + xp.tanh(SQRT_2_OVER_PI * (z + GELU_TANH_A * z * z * z)))


def gelu_tanh_backward(z: Array, h: Array, dh: Array) -> Array:
    """dz = dh ⊙ (½ (1 + t) + ½ z (1 − t²) c (1 + 3a z²)), t = tanh(c (z + a z³))."""
    xp = _xp(z)
    t = xp.tanh(SQRT_2_OVER_PI * (z + GELU_TANH_A * z * z * z))
    return dh * (0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_TANH_A * z * z))


ACTIVATIONS = {
    "relu": (relu, relu_backward),
    "gelu": (gelu, gelu_backward),
    "gelu_tanh": (gelu_tanh, gelu_tanh_backward),
}
"""name -> (forward z -> h, backward (z, h, dh) -> dz)."""

NEEDS_Z = {"gelu", "gelu_tanh"}
"""The activations whose backward reads the pre-activation z (ReLU's reads h only)."""
