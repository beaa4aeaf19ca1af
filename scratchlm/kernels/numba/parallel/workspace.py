"""Work buffers that are reused from one training step to the next, but only when free.

An array of more than ~32 MB is mapped fresh from the operating system by every
``np.empty`` and handed back when freed, so each step pays a page fault per
4 KiB the first time it writes the buffer: ~4 ms per step for the 52 MB gate
buffer of an Embedding 64 -> LSTM 512 model at T = 100, B = 64 (measured).

:func:`take` keeps up to two arrays per (shape, dtype) and hands one out again
only when nothing else refers to it — no cache, view or caller still holds it
(CPython's reference count says so; every NumPy view keeps its base alive) —
so a buffer is never shared by two live computations. Otherwise it returns a
new array.
"""

import sys
import threading

import numpy as np

_KEEP = 2  # arrays kept per (shape, dtype)
_pool = {}
_lock = threading.Lock()


def take(shape, dtype):
    """An uninitialised array of ``shape`` and ``dtype``, reused when a kept one is free."""
    key = (tuple(shape), np.dtype(dtype))
    with _lock:
        kept = _pool.setdefault(key, [])
        for array in kept:
            if sys.getrefcount(array) == 3:  # the list, this loop's name, getrefcount's argument
                return array
        array = np.empty(shape, dtype=dtype)
        if len(kept) < _KEEP:
            kept.append(array)
        return array


def release():
    """Forget the kept arrays (their memory is freed once nothing else refers to them)."""
    with _lock:
        _pool.clear()
