"""σ, tanh, exp and erf for the fused Numba kernels: exact in float64, vectorisable in float32.

Numba from PyPI has no vector math library: ``math.exp`` and ``math.tanh`` become
one scalar libm call per element, and a loop containing them is not vectorised
(a fused LSTM gate kernel written that way is ~10x slower than NumPy's own
AVX-512 ``np.tanh``; see docs/design.md). So in float32 the kernels use functions
made only of arithmetic, selects and one integer-to-float bit cast, which LLVM
turns into 16-wide AVX-512 code:

    exp(x) = 2^n · p(r),   n = round(x / ln 2),   r = x − n·ln 2 ∈ [−ln2/2, ln2/2]

with ln 2 split in two parts (Cody–Waite) so that r is exact, p a degree-7
polynomial (the Cephes ``expf`` coefficients) and 2^n built directly from its
IEEE-754 bits, (n + 127)·2^23. Then

    σ(x)    = 1 / (1 + e^{−x})
    tanh(x) = x + x³·q(x²)                   for |x| < 0.625  (odd polynomial, Cephes ``tanhf``)
            = sign(x) · (1 − 2 / (e^{2|x|} + 1))  otherwise      (|x| clamped at 9: tanh = 1 in float32)

    erf(x)  = sign(x) · (1 − (a₁t + a₂t² + a₃t³ + a₄t⁴ + a₅t⁵) · e^{−x²}),  t = 1/(1 + p|x|)
                                             (Abramowitz & Stegun 7.1.26: absolute error ≤ 1.5e-7)

Measured against float64 over [−100, 100] and tiny arguments: relative error
≤ 1.4e-7 for tanh and ≤ 1.5e-7 for σ (NumPy's float32 ``np.tanh``: 1.1e-7); erf's
absolute error ≤ 4.6e-7 over [−12, 12] (the formula's 1.5e-7 plus float32 rounding of
the polynomial and e^{−x²}), which the exact GELU, ½ z (1 + erf(z/√2)), sees as an
absolute error of ½|z| times that.
float64 uses libm (``math.exp`` / ``math.tanh``), exact to the last bit or so,
so the float64 gradient checks run through the fused path unchanged.

``sigmoid``, ``tanh`` and ``exp`` are plain Python functions that Numba compiles to the
right variant for the argument's type (``numba.extending.overload``).
"""

import math

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

from .options import jit

f32 = np.float32
_LOG2E = f32(1.44269504088896341)
_LN2_HI, _LN2_LO = f32(0.693359375), f32(-2.12194440e-4)  # ln 2 = hi + lo, hi exact in 9 bits
_X_MAX, _X_MIN = f32(88.3762626647949), f32(-87.3365447504)  # e^x stays a normal float32
_E0, _E1, _E2 = f32(1.9875691500e-4), f32(1.3981999507e-3), f32(8.3334519073e-3)
_E3, _E4, _E5 = f32(4.1665795894e-2), f32(1.6666665459e-1), f32(5.0000001201e-1)
_T0, _T1, _T2 = f32(-5.70498872745e-3), f32(2.06390887954e-2), f32(-5.37397155531e-2)
_T3, _T4 = f32(1.33314422036e-1), f32(-3.33332819422e-1)
_TANH_SMALL, _TANH_CLAMP = f32(0.625), f32(9.0)
_ONE, _TWO, _HALF = f32(1.0), f32(2.0), f32(0.5)
_ERF_P = f32(0.3275911)  # Abramowitz & Stegun 7.1.26
_ERF_A1, _ERF_A2, _ERF_A3 = f32(0.254829592), f32(-0.284496736), f32(1.421413741)
_ERF_A4, _ERF_A5 = f32(-1.453152027), f32(1.061405429)


@intrinsic
def _float32_from_bits(typingctx, bits):
    """The float32 whose IEEE-754 bit pattern is the int32 ``bits`` (a free bit cast)."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


@jit
def exp32(x):
    """e^x in float32 for x in [-87.3, 88.4] (clamped outside), relative error ~1 ulp."""
    x = min(max(x, _X_MIN), _X_MAX)
    n = np.floor(x * _LOG2E + _HALF)  # round(x / ln 2)
    r = x - n * _LN2_HI
    r = r - n * _LN2_LO  # |r| <= ln2/2, exact
    p = ((((_E0 * r + _E1) * r + _E2) * r + _E3) * r + _E4) * r + _E5
    p = p * (r * r) + r + _ONE  # e^r
    return p * _float32_from_bits(np.int32(n) * np.int32(1 << 23) + np.int32(127 << 23))  # · 2^n


@jit
def _sigmoid32(x):
    return _ONE / (_ONE + exp32(-x))


@jit
def _tanh32(x):
    a = min(abs(x), _TANH_CLAMP)
    s = x * x
    small = ((((_T0 * s + _T1) * s + _T2) * s + _T3) * s + _T4) * s * x + x
    big = _ONE - _TWO / (exp32(a + a) + _ONE)
    big = big if x >= 0 else -big
    return small if a < _TANH_SMALL else big


@jit
def _erf32(x):
    a = abs(x)
    t = _ONE / (_ONE + _ERF_P * a)
    q = ((((_ERF_A5 * t + _ERF_A4) * t + _ERF_A3) * t + _ERF_A2) * t + _ERF_A1) * t
    y = _ONE - q * exp32(-a * a)
    return y if x >= 0 else -y


def sigmoid(x):
    """σ(x) = 1 / (1 + e^{−x})."""
    return 1.0 / (1.0 + math.exp(-x))


def tanh(x):
    """tanh(x)."""
    return math.tanh(x)


def exp(x):
    """e^x."""
    return math.exp(x)


@overload(sigmoid)
def _sigmoid_for(x):
    if x == types.float32:
        return lambda x: _sigmoid32(x)
    return lambda x: 1.0 / (1.0 + math.exp(-x))


@overload(tanh)
def _tanh_for(x):
    if x == types.float32:
        return lambda x: _tanh32(x)
    return lambda x: math.tanh(x)


@overload(exp)
def _exp_for(x):
    if x == types.float32:
        return lambda x: exp32(x)
    return lambda x: math.exp(x)


def erf(x):
    """erf(x)."""
    return math.erf(x)


@overload(erf)
def _erf_for(x):
    if x == types.float32:
        return lambda x: _erf32(x)
    return lambda x: math.erf(x)
