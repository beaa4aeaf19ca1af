"""The recurrent step's product for a few rows, as dot products: out[n, r] = Σ_k a[r, k] · b[n, k].

At batch 8 or 16 the per-step product h_{t-1} U, (B, H) x (H, 4H), does only
2·B FLOPs per element of U it reads, and a general GEMM spends more time packing
U into its own layout, on every call, than multiplying (OpenBLAS on one thread:
~20 GFLOP/s at (8, 512) x (512, 2048), a third of this core's peak). Here the
product is written for that shape instead:

* ``b`` is (N, K) with the K elements of each output column contiguous (Uᵀ for
  h U, U itself for dz Uᵀ), so U is read once per call, front to back, in the
  layout it already has — no packing;
* each block of 4 rows x 3 columns keeps 12 running sums in vector registers
  along k (LLVM vectorises the k loop; ``fastmath`` lets it re-associate the
  sums, as every BLAS does), loads 7 vectors per 12 multiply-adds, and reads
  the 4 rows of ``a`` from L1 (4 x 3 measured 5-15% faster than 4 x 2 and
  8 x 1 at batch 8 and 16 on this Zen 3);
* the result is written transposed, ``out`` (N, M): a block's 12 sums go to three
  runs of 4 contiguous floats. Written as (M, N) instead, the stores land rows
  of 4H floats apart and the same kernel ran at half the speed (measured).

Partial blocks (M not a multiple of 4, a column range not of 3) repeat their
last row or column instead of switching to other code, so that every element
is summed the same way wherever a call's range starts (the same bits on any
number of threads; at M = 5 this costs ~25% over a separate row loop).

A block of columns [lo, hi) per call lets each core own its share of U (see
:func:`scratchlm.kernels.numba.lstm.forward_units`).
"""

from ..options import jit

_SUMS = {"reassoc", "contract"}  # re-associate and fuse the sums (vectorised reductions), nothing else


@jit(fastmath=_SUMS)
def product_t(a, b, out, lo, hi):
    """out[n, r] = Σ_k a[r, k] b[n, k] for n in [lo, hi) and every row r: a (M, K), b (N, K), out (N, M).

    The rows of a, b and out must be contiguous (any row stride). Every element is summed by the same block code
    (the last, partial blocks repeat their last row or column), so the result does not depend on how [0, N) is
    split into calls: the units split gives the same bits on any number of threads.
    """
    M = a.shape[0]
    last_row, last = M - 1, hi - 1
    for n in range(lo, hi, 3):
        n1, n2 = min(n + 1, last), min(n + 2, last)
        for r in range(0, M, 4):
            _block_4x3(a, b, out, r, min(r + 1, last_row), min(r + 2, last_row), min(r + 3, last_row), n, n1, n2)


@jit(fastmath=_SUMS)
def _block_4x3(a, b, out, r0, r1, r2, r3, n0, n1, n2):
    """out[n, r] for n in (n0, n1, n2) and r in (r0, r1, r2, r3): 12 sums along k at once."""
    zero = out.dtype.type(0)
    s00 = s01 = s02 = s10 = s11 = s12 = s20 = s21 = s22 = s30 = s31 = s32 = zero
    a0, a1, a2, a3 = a[r0], a[r1], a[r2], a[r3]
    b0, b1, b2 = b[n0], b[n1], b[n2]
    for k in range(a.shape[1]):
        x, y, w = b0[k], b1[k], b2[k]
        s00 += a0[k] * x
        s01 += a0[k] * y
        s02 += a0[k] * w
        s10 += a1[k] * x
        s11 += a1[k] * y
        s12 += a1[k] * w
        s20 += a2[k] * x
        s21 += a2[k] * y
        s22 += a2[k] * w
        s30 += a3[k] * x
        s31 += a3[k] * y
        s32 += a3[k] * w
    out[n0, r0], out[n0, r1], out[n0, r2], out[n0, r3] = s00, s10, s20, s30
    out[n1, r0], out[n1, r1], out[n1, r2], out[n1, r3] = s01, s11, s21, s31
    out[n2, r0], out[n2, r1], out[n2, r2], out[n2, r3] = s02, s12, s22, s32


@jit(fastmath=_SUMS)
def dot(x, y):
    """Σ_k x[k] y[k], summed in any order (vectorised)."""
    s = x.dtype.type(0)
    for k in range(x.shape[0]):
        s += x[k] * y[k]
    return s


@jit
def transpose_rows(a, out, lo, hi):
    """out[n, :] = a[:, n] for n in [lo, hi): rows lo:hi of aᵀ, a (K, N), out (N, K), in 16 x 16 tiles."""
    K = a.shape[0]
    for n0 in range(lo, hi, 16):
        for k0 in range(0, K, 16):
            for n in range(n0, min(n0 + 16, hi)):
                for k in range(k0, min(k0 + 16, K)):
                    out[n, k] = a[k, n]
