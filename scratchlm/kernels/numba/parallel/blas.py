"""NumPy's OpenBLAS, reached directly: its GEMM callable from inside Numba kernels, and its thread count.

A recurrent layer's time loop needs one small product per step, h_{t-1} U.
Called through NumPy from a Python loop, each step also pays the interpreter,
NumPy's dispatch and Numba's argument checks (~10-20 µs, as much as the
product itself at batch 8). So the fused kernels run the whole loop inside one
Numba function and call OpenBLAS's ``cblas_?gemm`` themselves, through the
function's address (:func:`gemm`): the loop then releases the GIL from its
first step to its last, which is also what lets two loops run side by side on
two cores (:mod:`shards`).

The address comes from the OpenBLAS library NumPy loaded (the PyPI wheels ship
``scipy-openblas64``, whose symbols end in ``64_`` and take 64-bit sizes). It is
passed to the kernels as an argument, so the compiled kernels can be cached.
Where NumPy's BLAS is not such an OpenBLAS (NumPy built against MKL or
Accelerate, say), :data:`GEMM` is empty and the kernels' callers fall back to a
Python loop around ``np.matmul`` — same numbers, more overhead per step.
"""

import ctypes

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from ..options import jit

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112  # the CBLAS enum values
_PREFIXES = ("scipy_", "")  # scipy-openblas64 renames every symbol with scipy_
GEMM = {}  # dtype -> address of cblas_?gemm (ILP64), when found
THREADS = None  # (get, set) of OpenBLAS's thread count, when found


def _find():
    global THREADS
    try:
        with open("/proc/self/maps") as maps:
            paths = sorted({line.split()[-1] for line in maps if "openblas" in line.lower() and "/" in line})
    except OSError:
        return
    for path in paths:
        try:
            library = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix in _PREFIXES:
            sgemm = getattr(library, f"{prefix}cblas_sgemm64_", None)
            dgemm = getattr(library, f"{prefix}cblas_dgemm64_", None)
            get = getattr(library, f"{prefix}openblas_get_num_threads64_", None)
            set_ = getattr(library, f"{prefix}openblas_set_num_threads64_", None)
            if sgemm is not None and dgemm is not None and not GEMM:
                GEMM[np.dtype(np.float32)] = ctypes.cast(sgemm, ctypes.c_void_p).value
                GEMM[np.dtype(np.float64)] = ctypes.cast(dgemm, ctypes.c_void_p).value
            if get is not None and set_ is not None and THREADS is None:
                get.restype, set_.restype, set_.argtypes = ctypes.c_int, None, [ctypes.c_int]
                THREADS = (get, set_)
        if GEMM and THREADS:
            return


_find()


@intrinsic
def _cblas_gemm(typingctx, address, trans_b, M, N, K, a, lda, b, ldb, beta, c, ldc):
    """Call the ILP64 ``cblas_?gemm`` at ``address`` (row-major, A not transposed, alpha = 1);
    a, b, c are data addresses (uint64), beta a float32 or float64 (which also picks s or d)."""
    real = beta

    def codegen(context, builder, signature, args):
        address, trans_b, M, N, K, a, lda, b, ldb, beta, c, ldc = args
        i32, i64, ptr = ir.IntType(32), ir.IntType(64), ir.IntType(8).as_pointer()
        fp = ir.FloatType() if real == types.float32 else ir.DoubleType()
        fnty = ir.FunctionType(ir.VoidType(), [i32, i32, i32, i64, i64, i64, fp, ptr, i64, ptr, i64, fp, ptr, i64])
        fn = builder.inttoptr(address, fnty.as_pointer())

        def pointer(value):
            return builder.inttoptr(value, ptr)

        def size(value):
            return builder.sext(value, i64) if value.type.width < 64 else value

        builder.call(
            fn,
            [
                ir.Constant(i32, ROW_MAJOR),
                ir.Constant(i32, NO_TRANS),
                builder.trunc(trans_b, i32),
                size(M),
                size(N),
                size(K),
                ir.Constant(fp, 1.0),
                pointer(a),
                size(lda),
                pointer(b),
                size(ldb),
                beta,
                pointer(c),
                size(ldc),
            ],
        )
        return context.get_dummy_value()

    return types.none(
        types.int64,
        types.int64,
        types.int64,
        types.int64,
        types.int64,
        types.uint64,
        types.int64,
        types.uint64,
        types.int64,
        real,
        types.uint64,
        types.int64,
    ), codegen


@jit
def gemm(address, a, b, c, transpose_b=False, beta=0.0):
    """c = a b (b (K, N)) or a bᵀ (b (N, K), ``transpose_b``), plus beta·c, by the BLAS at ``address``.

    a (M, K) and c (M, N) and b: 2-D arrays whose rows are contiguous (any row stride), of c's dtype.
    """
    _cblas_gemm(
        address,
        TRANS if transpose_b else NO_TRANS,
        c.shape[0],
        c.shape[1],
        a.shape[1],
        a.ctypes.data,
        _leading(a),
        b.ctypes.data,
        _leading(b),
        c.dtype.type(beta),
        c.ctypes.data,
        _leading(c),
    )


@jit
def _leading(x):
    """The leading dimension BLAS wants for the rows of x: its row stride in elements (NumPy gives a
    one-row array any row stride, so then the row length)."""
    return x.strides[0] // x.itemsize if x.shape[0] > 1 else max(1, x.shape[1])
