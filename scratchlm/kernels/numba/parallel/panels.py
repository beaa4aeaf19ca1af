"""The recurrent step's product for a few rows, out = a b, on a b packed once per time loop.

At batch 8-32 the per-step product h_{t-1} U, (B, H) x (H, 4H), does only
2·B FLOPs per element of U it reads. A general GEMM (OpenBLAS) copies U into
its own blocked layout on every call, and at these shapes the copy costs as
much as the multiply (~65 GFLOP/s on one core of the AMD EPYC Zen 5 at
(8, 512) x (512, 1024), where the core peaks at 268). Here the copy is made
once, before the first step, and every step streams it:

* **panels**: the columns of b (K, N) in blocks of ``C·W`` (W floats fill one
  vector register, C registers), each block stored as a contiguous (K, C·W)
  panel, zero-padded past the last column. :func:`pack` packs b's columns,
  :func:`pack_transposed` bᵀ's (U's rows, for the backward dz Uᵀ).
* **row tiles**: the rows of a (M, K) in tiles of R, each stored k-major as
  (K, R), the last row repeated to fill the last tile (:func:`pack_rows`, once
  per step: M·K copies against M·K·N multiply-adds).
* the **micro-kernel** (:func:`_tile`) keeps an R x C·W block of the result in
  R·C vector registers and, for k = 0 … K−1, loads one panel row (C vectors),
  broadcasts the tile's R elements of column k of a, and does R·C fused
  multiply-adds. Every element is one chain out[r, n] = Σ_k a[r, k] b[k, n],
  summed in order of k, whichever tile, panel or thread computes it: the same
  bits on any number of threads. Numba has no vector types, so this one
  function is written in LLVM IR (an ``@intrinsic``, as :mod:`blas` calls
  OpenBLAS).

R and C follow what the CPU offers (:data:`VECTOR_BYTES`, read from the
features Numba compiles for): with AVX-512's 32 registers of 64 bytes, R = 8,
C = 2 (16 accumulators, 2 panel vectors, 1 broadcast); with AVX2's 16 of 32
bytes, R = 6, C = 2 (12 + 2 + 1); with SSE's 16 of 16 bytes, R = 4, C = 2.

Measured on one core of the Zen 5 (AVX-512), tiles packed in the timing: 225
GFLOP/s at (8, 512) x (512, 1024) with b's 2 MB of panels streaming from L3,
236 at (32, 512) x (512, 1024), 155 at (8, 128) x (128, 256); the dot
products this replaced ran at ~100 (docs/benchmarks.md, "Packed panels").
"""

import numpy as np
from llvmlite import binding as llvm
from llvmlite import ir
from numba import types
from numba.core import cgutils, config
from numba.extending import intrinsic

from ..options import jit


def _vector_bytes():
    """The width of the vector registers Numba's code may use: 64 (AVX-512), 32 (AVX/AVX2) or 16."""
    features = config.CPU_FEATURES if config.CPU_FEATURES is not None else llvm.get_host_cpu_features().flatten()
    features = set(features.split(","))
    return 64 if "+avx512f" in features else 32 if "+avx" in features else 16


VECTOR_BYTES = _vector_bytes()
ROWS = {64: 8, 32: 6, 16: 4}[VECTOR_BYTES]  # R: the rows of a tile
VECTORS = 2  # C: the vectors of a panel row


def width(dtype):
    """C·W: the columns of one panel for ``dtype``."""
    return VECTORS * VECTOR_BYTES // np.dtype(dtype).itemsize


def panel_shape(K, N, dtype):
    """The shape that N columns of a (K, ·) matrix take as panels: (⌈N / C·W⌉, K, C·W)."""
    return (-(-N // width(dtype)), K, width(dtype))


def tile_shape(M, K):
    """The shape that M rows of length K take as row tiles: (⌈M / R⌉, K, R)."""
    return (-(-M // ROWS), K, ROWS)


@intrinsic
def _tile(typingctx, tile, panel, out, K, like):
    """out (R, C·W) = tile (K, R)ᵀ · panel (K, C·W): tile, panel, out are data addresses (uint64), K >= 1;
    ``like`` (a float32 or float64 zero) gives the dtype."""
    real = like

    def codegen(context, builder, signature, args):
        tile, panel, out, K, _ = args
        scalar = ir.FloatType() if real == types.float32 else ir.DoubleType()
        size = 4 if real == types.float32 else 8
        W = VECTOR_BYTES // size
        vector = ir.VectorType(scalar, W)
        i32, i64 = ir.IntType(32), ir.IntType(64)
        fmuladd = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vector, [vector] * 3), f"llvm.fmuladd.v{W}f{8 * size}"
        )
        tile, panel, out = (builder.inttoptr(p, scalar.as_pointer()) for p in (tile, panel, out))

        def element(base, index):
            return builder.gep(base, [ir.Constant(i64, index) if isinstance(index, int) else index])

        def vector_at(base, index):
            return builder.bitcast(element(base, index), vector.as_pointer())

        entry = builder.block
        loop = builder.append_basic_block("tile.k")
        done = builder.append_basic_block("tile.done")
        builder.branch(loop)
        builder.position_at_end(loop)
        k = builder.phi(i64)
        sums = [builder.phi(vector) for _ in range(ROWS * VECTORS)]
        row = builder.mul(k, ir.Constant(i64, VECTORS * W))  # panel row k
        b = [
            builder.load(vector_at(panel, builder.add(row, ir.Constant(i64, c * W))), align=size)
            for c in range(VECTORS)
        ]
        column = builder.mul(k, ir.Constant(i64, ROWS))  # column k of the tile's rows
        broadcast = ir.Constant(ir.VectorType(i32, W), [0] * W)
        updated = []
        for r in range(ROWS):
            x = builder.load(element(tile, builder.add(column, ir.Constant(i64, r))), align=size)
            x = builder.insert_element(ir.Constant(vector, ir.Undefined), x, ir.Constant(i32, 0))
            x = builder.shuffle_vector(x, ir.Constant(vector, ir.Undefined), broadcast)
            updated += [builder.call(fmuladd, [x, b[c], sums[r * VECTORS + c]]) for c in range(VECTORS)]
        following = builder.add(k, ir.Constant(i64, 1))
        k.add_incoming(ir.Constant(i64, 0), entry)
        k.add_incoming(following, loop)
        for s, u in zip(sums, updated, strict=True):
            s.add_incoming(ir.Constant(vector, [0.0] * W), entry)
            s.add_incoming(u, loop)
        builder.cbranch(builder.icmp_signed("<", following, K), loop, done)
        builder.position_at_end(done)
        for i, u in enumerate(updated):
            builder.store(u, vector_at(out, i * W), align=size)
        return context.get_dummy_value()

    return types.none(types.uint64, types.uint64, types.uint64, types.int64, real), codegen


@jit
def pack(b, lo, hi, panels):
    """panels[p, k, j] = b[k, lo + p·C·W + j], 0 past column hi: b's columns lo:hi, b (K, N).

    In blocks of 8 rows of b, so that each row is read once, in order, and each panel written in runs of
    8·C·W floats (column by column, a panel's rows lie a page or more apart in b: measured 1.7 GB/s at
    H = 1024 against 6.7 in blocks).
    """
    K, CW = b.shape[0], panels.shape[2]
    for k0 in range(0, K, 8):
        for p in range(panels.shape[0]):
            n0 = lo + p * CW
            columns = max(0, min(CW, hi - n0))
            for k in range(k0, min(k0 + 8, K)):
                source, target = b[k], panels[p, k]
                for j in range(columns):
                    target[j] = source[n0 + j]
                for j in range(columns, CW):
                    target[j] = 0


@jit
def pack_transposed(b, lo, hi, panels):
    """panels[p, k, j] = b[lo + p·C·W + j, k], 0 past row hi: bᵀ's columns lo:hi, b (N, K).

    A transpose, in blocks of C·W rows of b by 16 columns, each read and written within L1.
    """
    K, CW = b.shape[1], panels.shape[2]
    for p in range(panels.shape[0]):
        rows = max(0, min(CW, hi - lo - p * CW))
        for k0 in range(0, K, 16):
            k1 = min(k0 + 16, K)
            for j in range(rows):
                source = b[lo + p * CW + j]
                for k in range(k0, k1):
                    panels[p, k, j] = source[k]
            for j in range(rows, CW):
                for k in range(k0, k1):
                    panels[p, k, j] = 0


@jit
def pack_rows(a, tiles):
    """tiles[t, k, r] = a[min(t·R + r, M − 1), k]: the rows of a (M, K) as k-major tiles of R."""
    M = a.shape[0]
    for t in range(tiles.shape[0]):
        for r in range(ROWS):
            row = a[min(t * ROWS + r, M - 1)]
            for k in range(a.shape[1]):
                tiles[t, k, r] = row[k]


@jit
def product(tiles, panels, out, lo, n, scratch):
    """out[:, lo:lo + n] = a b[:, cols]: a (M, K) packed by :func:`pack_rows`, the n columns cols of b packed by
    :func:`pack` or :func:`pack_transposed` (their first ⌈n / C·W⌉ panels). scratch: an (R, C·W) array of out's
    dtype. The rows of out must be contiguous (any row stride).
    """
    M, K, CW = out.shape[0], panels.shape[1], panels.shape[2]
    if K == 0:
        out[:, lo : lo + n] = 0
        return
    zero = out.dtype.type(0)
    for p in range(-(-n // CW)):
        columns = min(CW, n - p * CW)
        for t in range(tiles.shape[0]):
            _tile(tiles[t].ctypes.data, panels[p].ctypes.data, scratch.ctypes.data, K, zero)
            for r in range(min(ROWS, M - t * ROWS)):
                out[t * ROWS + r, lo + p * CW : lo + p * CW + columns] = scratch[r, :columns]
