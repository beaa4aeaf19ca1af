"""Adam's and RMSprop's update in one pass over each parameter, with the same roundings as the NumPy code.

:mod:`scratchlm.optim` writes each update as NumPy expressions; each one is a
pass over the whole parameter with a temporary, eight or so per Adam step. At
a small batch the optimizer is then a tenth of a training step (9 ms of 78 at
batch 8, LSTM 512). These kernels do the same float32 (or float64) operations
in the same order, element by element — hyperparameters rounded to the array's
dtype first, as NumPy does with a Python float — so the weights come out the
same to the last bit (``tests/test_optim.py``).
"""

import numpy as np

from .options import jit


@jit
def adam(w, g, m, v, alpha, beta_1, beta_2, epsilon):
    """In place, every element: m += (g − m)(1 − β₁);  v += (g² − v)(1 − β₂);  w −= m·α / (√v + ε).

    w, g, m, v: C-contiguous arrays of one shape and dtype; the scalars are Python floats.
    """
    real = w.dtype.type
    a, c1, c2, eps = real(alpha), real(1 - beta_1), real(1 - beta_2), real(epsilon)
    w, g, m, v = w.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1)
    for k in range(w.shape[0]):
        gk = g[k]
        mk = m[k] + (gk - m[k]) * c1
        vk = v[k] + (gk * gk - v[k]) * c2
        m[k], v[k] = mk, vk
        w[k] -= mk * a / (np.sqrt(vk) + eps)


@jit
def rmsprop(w, g, v, lr, rho, epsilon):
    """In place, every element: v = ρ·v + (1 − ρ)·g²;  w −= lr·g / √(v + ε) (RMSprop without centring or momentum)."""
    real = w.dtype.type
    r, c, eps, step = real(rho), real(1 - rho), real(epsilon), real(lr)
    w, g, v = w.reshape(-1), g.reshape(-1), v.reshape(-1)
    for k in range(w.shape[0]):
        gk = g[k]
        vk = v[k] * r + c * (gk * gk)
        v[k] = vk
        w[k] -= step * gk / np.sqrt(vk + eps)
