"""The C heap, set for training loops: a step's arrays come from memory the heap reuses, not from fresh pages.

A training step allocates tens of megabytes of activations and gradients and frees them again before the next
step. glibc's ``malloc`` serves every block above its mmap threshold (128 KB at start; raised only when a
large mapped block is freed, up to 32 MB) with a fresh ``mmap``, whose pages the kernel faults in and zeroes
on first touch, and unmaps it on ``free``: the next step pays again. Measured on the ``nanogpt-cpu`` step
(``benchmarks/bench.py --workloads gpt-cpu``, 2-core AMD EPYC): 40-44 ms a step in a fresh process against
29-31 ms once the threshold is up (a process that loaded a corpus first had raised it by chance).

:func:`tune` sets glibc's ``M_MMAP_THRESHOLD`` to 32 MB (its largest automatic value on 64-bit systems) and
``M_TRIM_THRESHOLD`` to 256 MB, so that such blocks stay in the heap and are reused step after step; blocks
above 32 MB are still mapped and unmapped as before. ``import scratchlm`` calls it. It changes nothing where
the C library is not glibc, when glibc's own variables ``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_TRIM_THRESHOLD_``
are set (the user's choice wins: ``benchmarks/bench.py`` sets the first in its memory rounds, so that freed
memory leaves the resident set at once), or with ``SCRATCHLM_MALLOC=default``.
"""

import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (glibc's malloc.h)
MMAP_THRESHOLD = 32 << 20  # bytes: blocks up to this size come from the heap
TRIM_THRESHOLD = 256 << 20  # bytes: free memory at the heap's top kept for reuse before it is returned


def tune() -> bool:
    """Set glibc's heap for training loops (see the module docstring); True if it was set."""
    if not sys.platform.startswith("linux") or os.environ.get("SCRATCHLM_MALLOC") == "default":
        return False
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(None)
        if not hasattr(libc, "gnu_get_libc_version"):  # not glibc (musl's mallopt does nothing)
            return False
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
