"""The row-wise kernels of a Transformer block on the CPU: LayerNorm forward and backward in one pass each,
and the feed-forward's bias + ReLU (forward) and ReLU' + bias gradient (backward).

LayerNorm is :class:`scratchlm.layers.LayerNormalization` (read its docstring);
for each row r of x (M, D):

    μ = mean(x)    σ² = mean((x − μ)²)    rstd = 1/√(σ² + ε)        (biased variance, Keras' ε = 1e-3)
    y = (x − μ) · rstd ⊙ γ + β

Forward keeps only μ and rstd per row (M floats each, against the reference's
(M, D) x̂); backward recomputes x̂ = (x − μ)·rstd from the input it is given and,
with g = dy ⊙ γ,

    dx = (g − mean(g) − x̂ ⊙ mean(g ⊙ x̂)) · rstd        dγ = Σ_r dy ⊙ x̂        dβ = Σ_r dy

in one pass over the rows (dγ and dβ accumulate as the rows go by). The
operations are those of the reference, in its order; only the row sums are
added in another order (vectorised: reassociation allowed there, as in the
softmax's sum). Computed in the input's dtype (float32 or float64).

The feed-forward (:class:`scratchlm.layers.FeedForward`): after the GEMM z = x W1,

    h = max(z + b1, 0)                              in place, one pass
    dz = dh ⊙ [h > 0],   db1 = Σ_r dz               in place, one pass
"""

import math

import numpy as np

from .activations import erf, exp
from .options import jit
from .parallel import shards


@jit(fastmath={"reassoc", "nsz"})
def _mean(row):
    """Σ row / len(row), summed in any order (vectorised)."""
    s = row.dtype.type(0)
    for j in range(row.shape[0]):
        s += row[j]
    return s / row.dtype.type(row.shape[0])


@jit(fastmath={"reassoc", "nsz"})
def _centred_mean_square(row, mu):
    """mean((row − μ)²), summed in any order."""
    s = row.dtype.type(0)
    for j in range(row.shape[0]):
        d = row[j] - mu
        s += d * d
    return s / row.dtype.type(row.shape[0])


@jit
def _layernorm_forward(x, gamma, beta, eps, y, mean, rstd):
    """x (M, D) -> y (M, D), mean and rstd (M,) out; eps in x's dtype."""
    M, D = x.shape
    one = x.dtype.type(1)
    for r in range(M):
        xr, yr = x[r], y[r]
        mu = _mean(xr)
        rs = one / np.sqrt(_centred_mean_square(xr, mu) + eps)
        mean[r], rstd[r] = mu, rs
        for j in range(D):
            yr[j] = (xr[j] - mu) * rs * gamma[j] + beta[j]


@jit(fastmath={"reassoc", "nsz"})
def _row_means(x, dy, gamma, mu, rs):
    """(mean(g), mean(g ⊙ x̂)) of one row, g = dy ⊙ γ, x̂ = (x − μ)·rs."""
    a = x.dtype.type(0)
    b = x.dtype.type(0)
    for j in range(x.shape[0]):
        g = dy[j] * gamma[j]
        a += g
        b += g * ((x[j] - mu) * rs)
    n = x.dtype.type(x.shape[0])
    return a / n, b / n


@jit
def _layernorm_backward(x, mean, rstd, gamma, dy, dx, dgamma, dbeta):
    """dy (M, D) -> dx (M, D) out; dgamma, dbeta (D,) out (overwritten)."""
    M, D = x.shape
    dgamma[:] = 0
    dbeta[:] = 0
    for r in range(M):
        xr, dyr, dxr = x[r], dy[r], dx[r]
        mu, rs = mean[r], rstd[r]
        mg, mgx = _row_means(xr, dyr, gamma, mu, rs)
        for j in range(D):
            xhat = (xr[j] - mu) * rs
            g = dyr[j] * gamma[j]
            dxr[j] = (g - mg - xhat * mgx) * rs
            dgamma[j] += dyr[j] * xhat
            dbeta[j] += dyr[j]


def layernorm_forward(x, gamma, beta, eps):
    """x (..., D) -> (y (..., D), mean (...), rstd (...)), as LayerNormalization.forward (float32/64 only)."""
    D = x.shape[-1]
    x2 = np.ascontiguousarray(x).reshape(-1, D)  # (M, D)
    y = np.empty_like(x2)
    mean = np.empty(x2.shape[0], dtype=x.dtype)
    rstd = np.empty(x2.shape[0], dtype=x.dtype)
    _layernorm_forward(x2, gamma, beta, x.dtype.type(eps), y, mean, rstd)
    return y.reshape(x.shape), mean.reshape(x.shape[:-1]), rstd.reshape(x.shape[:-1])


@jit
def _residual_layernorm(x, y, b, gamma, beta, eps, out):
    """out (M, D) = LN(x + (y + b)) for rows x, y (M, D), b (D,): the decoding step's residual, bias and
    LayerNorm in one kernel (same order of operations as the layers: y + b first, then the residual)."""
    M, D = x.shape
    one = x.dtype.type(1)
    for r in range(M):
        s = out[r]
        for j in range(D):
            s[j] = x[r, j] + (y[r, j] + b[j])
        mu = _mean(s)
        rs = one / np.sqrt(_centred_mean_square(s, mu) + eps)
        for j in range(D):
            s[j] = (s[j] - mu) * rs * gamma[j] + beta[j]


def residual_layernorm(x, y, b, gamma, beta, eps, out=None):
    """LN(x + (y + b)) over rows: x, y (M, D), b, gamma, beta (D,) -> (M, D) (``out`` if given). Nothing is
    kept for backward: the KV-cache decoding step's residual + bias + LayerNorm."""
    out = np.empty_like(x) if out is None else out
    _residual_layernorm(x, y, b, gamma, beta, x.dtype.type(eps), out)
    return out


def layernorm_backward(x, mean, rstd, gamma, dy):
    """(dx (..., D), dgamma (D,), dbeta (D,)) from the forward's input x, mean, rstd and dy (..., D)."""
    D = x.shape[-1]
    x2 = np.ascontiguousarray(x).reshape(-1, D)
    dy2 = np.ascontiguousarray(dy, dtype=x.dtype).reshape(-1, D)
    dx = np.empty_like(x2)
    dgamma = np.empty(D, dtype=x.dtype)
    dbeta = np.empty(D, dtype=x.dtype)
    _layernorm_backward(x2, mean.reshape(-1), rstd.reshape(-1), gamma, dy2, dx, dgamma, dbeta)
    return dx.reshape(x.shape), dgamma, dbeta


@jit
def _bias_relu(z, b):
    M, F = z.shape
    zero = z.dtype.type(0)
    for r in range(M):
        zr = z[r]
        for j in range(F):
            zr[j] = max(zr[j] + b[j], zero)


@jit
def _relu_backward(dh, h, db):
    M, F = dh.shape
    zero = dh.dtype.type(0)
    db[:] = 0
    for r in range(M):
        dr, hr = dh[r], h[r]
        for j in range(F):
            d = dr[j] if hr[j] > zero else zero
            dr[j] = d
            db[j] += d


def bias_relu(z, b):
    """z (M, F) ← max(z + b, 0) in place (C-contiguous z); returns z."""
    _bias_relu(z, b)
    return z


def relu_backward(dh, h):
    """dh (M, F) ← dh ⊙ [h > 0] in place (C-contiguous dh); returns (dh, db = Σ_r dh (F,))."""
    db = np.empty(dh.shape[1], dtype=dh.dtype)
    _relu_backward(dh, h, db)
    return dh, db


# -- the exact GELU of the feed-forward (nanoGPT's nn.GELU): NumPy has no erf, Numba calls the C library's ----------


@jit
def _bias_gelu(z, b, h):
    M, F = z.shape
    one, half, root_half = z.dtype.type(1), z.dtype.type(0.5), z.dtype.type(math.sqrt(0.5))
    for r in range(M):
        zr, hr = z[r], h[r]
        for j in range(F):
            v = zr[j] + b[j]
            zr[j] = v
            hr[j] = half * v * (one + erf(v * root_half))


@jit
def _gelu_backward(dh, z, db):
    M, F = dh.shape
    one, half, root_half = dh.dtype.type(1), dh.dtype.type(0.5), dh.dtype.type(math.sqrt(0.5))
    inv_root_2pi = dh.dtype.type(1 / math.sqrt(2 * math.pi))
    db[:] = 0
    for r in range(M):
        dr, zr = dh[r], z[r]
        for j in range(F):
            v = zr[j]
            d = dr[j] * (half * (one + erf(v * root_half)) + v * exp(-half * v * v) * inv_root_2pi)
            dr[j] = d
            db[j] += d


def bias_gelu(z, b):
    """z (M, F) ← z + b in place (the pre-activation, which GELU's backward needs) -> h = z Φ(z) (M, F),
    Φ(z) = ½ (1 + erf(z/√2)) as :func:`scratchlm.layers.activations.gelu`
    (:func:`scratchlm.kernels.numba.activations.erf`: the C library's in float64, a vectorisable formula
    to ~2e-7 in float32). The rows
    are split over the cores (:func:`.parallel.shards.run`): a scalar erf per entry is the cost."""
    h = np.empty_like(z)
    shards.run(lambda lo, hi: _bias_gelu(z[lo:hi], b, h[lo:hi]), z.shape[0])
    return h


def gelu_backward(dh, z):
    """dh (M, F) ← dh ⊙ (Φ(z) + z φ(z)) in place, φ(z) = exp(−z²/2)/√(2π); returns (dh, db = Σ_r dh (F,)), the
    rows split over the cores as in :func:`bias_gelu`, db summed over the shards in row order."""
    parts = {}  # first row of a shard -> its db

    def rows(lo, hi):
        parts[lo] = np.empty(dh.shape[1], dtype=dh.dtype)
        _gelu_backward(dh[lo:hi], z[lo:hi], parts[lo])

    shards.run(rows, dh.shape[0])
    first, *rest = sorted(parts)
    db = parts[first]
    for lo in rest:
        db += parts[lo]
    return dh, db
