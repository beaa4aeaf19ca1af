"""The recurrent step's product for a few rows, out = a b, on a b packed once per time loop.

At batch 8-32 the per-step product h_{t-1} U, (B, H) x (H, 4H), does only
2·B FLOPs per element of U it reads. A general GEMM (OpenBLAS) copies U into
its own blocked layout on every call, and at these shapes the copy costs more
than the multiply (34-41 GFLOP/s on one core of the AMD EPYC Zen 5 at
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

Measured on one core of the Zen 5 (AVX-512), tiles packed in the timing: 240-249
GFLOP/s at (8, 512) x (512, 1024) with b's 2 MB of panels streaming from L3,
253-255 at (64, 128) x (128, 512), where OpenBLAS called per product reaches
196-200; the dot products this replaced ran at ~100 (docs/benchmarks.md,
"Every shape on an AVX-512 machine: packed panels").
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
SETS = {ROWS: 1, 1: 4}  # sets of sums, by tile rows: one row has only C of them, too few to hide the FMA latency


def width(dtype):
    """C·W: the columns of one panel for ``dtype``."""
    return VECTORS * VECTOR_BYTES // np.dtype(dtype).itemsize


def panel_shape(K, N, dtype):
    """The shape that N columns of a (K, ·) matrix take as panels: (⌈N / C·W⌉, K, C·W)."""
    return (-(-N // width(dtype)), K, width(dtype))


def tile_shape(M, K):
    """The shape that M rows of length K take as row tiles: (⌈M / R⌉, K, R), or (1, K, 1) for one row (a
    product with a vector: no tile rows computed and thrown away)."""
    R = 1 if M == 1 else ROWS
    return (-(-M // R), K, R)


def buffers(M, K, dtype):
    """What one thread's :func:`product` needs for M rows of length K: their row tiles and a scratch tile."""
    return np.empty(tile_shape(M, K), dtype), np.empty((ROWS, width(dtype)), dtype)


def _micro_kernel(R):
    """The micro-kernel for tiles of R rows (an ``@intrinsic``); see the module docstring."""

    @intrinsic
    def tile_kernel(typingctx, tile, panel, out, stride, K, like, stored):
        """out (R, C·W) = tile (K, R)ᵀ · panel (K, C·W): tile, panel, out are data addresses (uint64), the rows
        of out ``stride`` elements apart, K >= 1;
        ``like`` (a float32 or float64 zero) gives the dtype, ``stored`` (a panel element) how the panel holds
        it: as that dtype, or (uint16) as bfloat16, the upper half of a float32, widened as it is loaded."""
        real, bfloat16 = like, stored == types.uint16

        def codegen(context, builder, signature, args):
            tile, panel, out, stride, K, _, _ = args
            scalar = ir.FloatType() if real == types.float32 else ir.DoubleType()
            size = 4 if real == types.float32 else 8
            W = VECTOR_BYTES // size
            vector = ir.VectorType(scalar, W)
            i16, i32, i64 = ir.IntType(16), ir.IntType(32), ir.IntType(64)
            fmuladd = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vector, [vector] * 3), f"llvm.fmuladd.v{W}f{8 * size}"
            )
            stored = i16 if bfloat16 else scalar
            tile, out = (builder.inttoptr(p, scalar.as_pointer()) for p in (tile, out))
            panel = builder.inttoptr(panel, stored.as_pointer())

            def element(base, index):
                return builder.gep(base, [ir.Constant(i64, index) if isinstance(index, int) else index])

            def load_panel(index):
                if not bfloat16:
                    return builder.load(builder.bitcast(element(panel, index), vector.as_pointer()), align=size)
                halves = builder.load(
                    builder.bitcast(element(panel, index), ir.VectorType(i16, W).as_pointer()), align=2
                )
                wide = builder.shl(
                    builder.zext(halves, ir.VectorType(i32, W)), ir.Constant(ir.VectorType(i32, W), [16] * W)
                )
                return builder.bitcast(wide, vector)

            broadcast = ir.Constant(ir.VectorType(i32, W), [0] * W)

            def update(k, sums):
                """sums + (column k of the tile's rows) x (panel row k), for every row and vector."""
                row = builder.mul(k, ir.Constant(i64, VECTORS * W))
                b = [load_panel(builder.add(row, ir.Constant(i64, c * W))) for c in range(VECTORS)]
                column = builder.mul(k, ir.Constant(i64, R))
                updated = []
                for r in range(R):
                    x = builder.load(element(tile, builder.add(column, ir.Constant(i64, r))), align=size)
                    x = builder.insert_element(ir.Constant(vector, ir.Undefined), x, ir.Constant(i32, 0))
                    x = builder.shuffle_vector(x, ir.Constant(vector, ir.Undefined), broadcast)
                    updated += [builder.call(fmuladd, [x, b[c], sums[r * VECTORS + c]]) for c in range(VECTORS)]
                return updated

            def loop(start, stop, stride, sums, body):
                """for k in range(start, stop, stride): sums = body(k, sums); returns the sums after it."""
                before = builder.block
                head = builder.append_basic_block("tile.k")
                after = builder.append_basic_block("tile.k.end")
                builder.cbranch(builder.icmp_signed("<", start, stop), head, after)
                builder.position_at_end(head)
                k = builder.phi(i64)
                phis = [builder.phi(vector) for _ in sums]
                updated = body(k, phis)
                following = builder.add(k, ir.Constant(i64, stride))
                last = builder.block
                k.add_incoming(start, before)
                k.add_incoming(following, last)
                for phi, first, new in zip(phis, sums, updated, strict=True):
                    phi.add_incoming(first, before)
                    phi.add_incoming(new, last)
                builder.cbranch(builder.icmp_signed("<", following, stop), head, after)
                builder.position_at_end(after)
                result = []
                for first, new in zip(sums, updated, strict=True):
                    phi = builder.phi(vector)
                    phi.add_incoming(first, before)
                    phi.add_incoming(new, last)
                    result.append(phi)
                return result

            n = R * VECTORS
            zeros = [ir.Constant(vector, [0.0] * W)] * (n * SETS[R])

            def interleaved(k, sums):  # SETS[R] steps of k, each into its own set of sums
                return sum(
                    (update(builder.add(k, ir.Constant(i64, s)), sums[s * n : (s + 1) * n]) for s in range(SETS[R])), []
                )

            whole = builder.mul(builder.sdiv(K, ir.Constant(i64, SETS[R])), ir.Constant(i64, SETS[R]))
            sums = loop(ir.Constant(i64, 0), whole, SETS[R], zeros, interleaved)
            first = loop(whole, K, 1, sums[:n], update)  # the last K mod SETS[R] steps, into the first set
            for s in range(1, SETS[R]):
                first = [builder.fadd(a, b) for a, b in zip(first, sums[s * n : (s + 1) * n], strict=True)]
            for r in range(R):
                row = builder.mul(stride, ir.Constant(i64, r))
                for c in range(VECTORS):
                    at = element(out, builder.add(row, ir.Constant(i64, c * W)))
                    builder.store(first[r * VECTORS + c], builder.bitcast(at, vector.as_pointer()), align=size)
            return context.get_dummy_value()

        return types.none(types.uint64, types.uint64, types.uint64, types.int64, types.int64, real, stored), codegen

    return tile_kernel


_tile = _micro_kernel(ROWS)
_row = _micro_kernel(1)


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
    """tiles[t, k, r] = a[min(t·R + r, M − 1), k]: the rows of a (M, K) as k-major tiles of R (tiles (·, K, R),
    :func:`tile_shape`)."""
    M, R = a.shape[0], tiles.shape[2]
    for t in range(tiles.shape[0]):
        for r in range(R):
            row = a[min(t * R + r, M - 1)]
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
    zero, stored, R = out.dtype.type(0), panels[0, 0, 0], tiles.shape[2]
    stride = out.strides[0] // out.itemsize
    for p in range(-(-n // CW)):
        columns = min(CW, n - p * CW)
        for t in range(tiles.shape[0]):
            rows = min(R, M - t * R)
            whole = rows == R and columns == CW  # the block straight into out, else through scratch
            at = out.ctypes.data + (t * R * stride + lo + p * CW) * out.itemsize if whole else scratch.ctypes.data
            step = stride if whole else CW
            if R == 1:
                _row(tiles[t].ctypes.data, panels[p].ctypes.data, at, step, K, zero, stored)
            else:
                _tile(tiles[t].ctypes.data, panels[p].ctypes.data, at, step, K, zero, stored)
            if not whole:
                for r in range(rows):
                    out[t * R + r, lo + p * CW : lo + p * CW + columns] = scratch[r, :columns]
