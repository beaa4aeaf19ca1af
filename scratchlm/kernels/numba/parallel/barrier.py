"""A barrier for threads that meet inside Numba loops, once per time step.

When the cores split one step's work between them (each owning a share of the
hidden units, :func:`scratchlm.kernels.numba.lstm.forward_units`), they must
all finish step t before any starts step t+1. Going back to Python for that
costs more than a small step (a ``threading.Barrier`` round trip is ~50 µs
here, a whole step at batch 8 ~100-200 µs), so the threads meet in the
compiled loop itself, on a shared counter:

    arrive:  arrived += 1                  (one atomic add, which also publishes
                                            this thread's writes of step t)
    wait:    until arrived >= parties · (t + 1)

``sync`` is a (3,) int64 array: the counter, an abort flag (set when a party
fails, so the others stop waiting instead of spinning forever) and the address
of ``sched_yield``, called every ``SPINS`` polls so that a thread waiting on a
descheduled party gives up its core (0: only spin). Use a new ``sync`` array
(:func:`new`) for every loop.
"""

import ctypes

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from ..options import jit

SPINS = 4096  # polls between two sched_yield calls (~10-20 µs)


def _sched_yield():
    try:
        return ctypes.cast(ctypes.CDLL(None).sched_yield, ctypes.c_void_p).value or 0
    except (OSError, AttributeError):
        return 0


_YIELD = _sched_yield()


def new():
    """A fresh ``sync`` array: nobody arrived, not aborted."""
    return np.array([0, 0, _YIELD], dtype=np.int64)


def abort(sync):
    """Release every party waiting on ``sync``: their :func:`wait` returns False."""
    sync[1] = 1


@intrinsic
def _fetch_add(typingctx, address, value):
    """Atomically add ``value`` to the int64 at ``address`` (sequentially consistent); returns the old value."""

    def codegen(context, builder, signature, args):
        pointer = builder.inttoptr(args[0], ir.IntType(64).as_pointer())
        return builder.atomic_rmw("add", pointer, args[1], "seq_cst")

    return types.int64(types.uint64, types.int64), codegen


@intrinsic
def _load(typingctx, address):
    """The int64 at ``address``, read atomically with acquire ordering (sees what the writer published)."""

    def codegen(context, builder, signature, args):
        pointer = builder.inttoptr(args[0], ir.IntType(64).as_pointer())
        return builder.load_atomic(pointer, "acquire", 8)

    return types.int64(types.uint64), codegen


@intrinsic
def _call(typingctx, address):
    """Call the C function ``int f(void)`` at ``address``."""

    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(ir.IntType(32), [])
        builder.call(builder.inttoptr(args[0], fnty.as_pointer()), [])
        return context.get_dummy_value()

    return types.none(types.int64), codegen


@jit
def wait(sync, parties, t):
    """Arrive at the barrier after step ``t`` (0, 1, 2, …) and wait for all ``parties``.

    Returns True when all arrived, False when the barrier was aborted.
    """
    arrive(sync)
    return poll(sync, parties * (t + 1), -1)


@jit
def arrive(sync):
    """Add one to ``sync``'s counter (atomically; publishes the caller's writes)."""
    _fetch_add(sync.ctypes.data, 1)


@jit
def poll(sync, goal, polls):
    """Wait until ``sync``'s counter reaches ``goal``: True then; False if the barrier was aborted first, or after
    ``polls`` polls (< 0: no limit). Calls sched_yield every ``SPINS`` polls."""
    counter = sync.ctypes.data
    k = 0
    while _load(counter) < goal:
        if _load(counter + 8) != 0 or k == polls:
            return False
        k += 1
        if k % SPINS == 0 and sync[2] != 0:
            _call(sync[2])
    return True
