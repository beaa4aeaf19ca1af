"""bfloat16 weights for decoding: float32 rounded to the nearest bfloat16, ties to even.

A bfloat16 is the upper half of a float32: the sign, the same 8 exponent bits,
and the top 7 of the 23 fraction bits (a relative precision of 2⁻⁸ ≈ 0.4%).
Decoding one token at batch 1 reads every recurrent weight once and does two
FLOPs with it, so its speed is the speed of reading the weights; stored as
bfloat16 they are half the bytes. ``generate(..., weights="bfloat16")`` rounds
the recurrent kernels U with :func:`round_to_bfloat16` and computes in float32
from there, on every path: the reference path multiplies the rounded float32
values, the fused LSTM loop stores their upper halves (:func:`upper_halves`)
and widens them as it loads them, which gives the same products. The training
path never rounds.
"""

from typing import Any

from .backend import Array

DECODING_WEIGHTS = ("float32", "bfloat16")  # what ``generate(..., weights=...)`` takes


def round_to_bfloat16(x: Array, xp: Any) -> Array:
    """float32 ``x`` rounded to the nearest bfloat16 (ties to even), as float32; NaN stays NaN and a value past
    the largest bfloat16 (3.39e38) becomes ±inf, as a float32 past its largest value does."""
    bits = x.view(xp.uint32)
    halfway = xp.uint32(0x7FFF) + ((bits >> xp.uint32(16)) & xp.uint32(1))
    rounded = ((bits + halfway) & xp.uint32(0xFFFF0000)).view(xp.float32)
    return xp.where(xp.isnan(x), x, rounded)


def upper_halves(x: Array, xp: Any) -> Array:
    """The bfloat16 bits (uint16) of float32 ``x`` that :func:`round_to_bfloat16` already rounded."""
    return (x.view(xp.uint32) >> xp.uint32(16)).astype(xp.uint16)
