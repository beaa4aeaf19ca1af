"""How every Numba kernel in scratchlm is compiled.

``jit(fn)`` is ``numba.njit`` with the options the kernels rely on:

* ``error_model="numpy"``: a float division by zero gives inf/nan instead of
  raising. Python's semantics need a zero test before every division, and that
  branch stops LLVM from vectorising the loop — a sigmoid then runs ~10x slower.
* ``cache=True``: the compiled code is written next to the source (or to
  ``NUMBA_CACHE_DIR``) so that later runs skip the compilation. Where no cache
  location is writable the function is compiled per process instead; nothing
  else changes. Numba checks only the kernel's own file for changes: after
  editing ``activations.py``, delete ``kernels/__pycache__/*.nb*``.
* ``nogil=True``: the kernels hold no Python objects.

No ``fastmath`` unless a kernel says why (only the softmax's row sum): the
kernels round like the reference path (no re-association, no FMA
contraction), and infinities and NaNs propagate.
"""

import numba


def jit(fn=None, **options):
    """Compile ``fn`` lazily (at its first call) with the options above (plus any numba.njit ``options``)."""
    if fn is None:
        return lambda f: jit(f, **options)
    options = {"error_model": "numpy", "nogil": True, **options}
    try:
        return numba.njit(cache=True, **options)(fn)
    except RuntimeError:  # "cannot cache function ...: no locator available" (read-only install)
        return numba.njit(cache=False, **options)(fn)
