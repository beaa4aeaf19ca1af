"""Running a recurrence on every core at once: the batch split into shards, one thread and one BLAS thread each.

The rows of a batch never meet inside a recurrent layer: row b's h_t depends
only on row b's inputs and h_{t-1}. So the whole time loop of rows [lo, hi)
can run on its own, and a batch of B rows splits into one contiguous shard per
core, each looping over all T steps with its own (B/n, H) x (H, G·H) products
on a single-threaded BLAS (called from inside the Numba loop, :mod:`blas`, so
the GIL is free throughout), with no hand-over between threads at any step:
the threads meet once, after the last step. One multi-threaded OpenBLAS call
per step instead pays, on every step, waking its threads and waiting for the
slowest, and leaves the elementwise work between two products on one core.
The products over all T·B rows after the loop (dU, dW) are big enough to use
BLAS's own threads and run outside.

When it pays (:func:`count`): there must be at least ``MIN_ROWS`` rows per
shard (a thinner product does not amortise reading U once per shard instead of
once per step), and OpenBLAS's idle threads must go to sleep quickly. After a
multi-threaded call OpenBLAS's workers keep spinning for 2^THREAD_TIMEOUT
cycles (2^28, ~0.1 s, by default) and share a core with the shard's thread,
which then runs at about half speed (measured: a sharded forward right after
a 2-thread GEMM took 2x as long). ``import scratchlm`` sets
``OPENBLAS_THREAD_TIMEOUT`` (read by OpenBLAS when NumPy loads it) where NumPy
is not imported yet; where it was imported first without the setting, the
loops run as one shard.

A batch with few rows per core against its hidden size is split the other way:
:func:`together` runs one party per core over the whole time loop, each owning
a share of the hidden units, meeting at a :mod:`barrier` after every step
(:func:`parties` says when; :func:`scratchlm.kernels.numba.lstm.forward_units`).

How many shards: as many as OpenBLAS has threads (``OPENBLAS_NUM_THREADS``, or
the cores it found), so ``OPENBLAS_NUM_THREADS=1`` — one MPI rank per core,
say — runs one shard on the caller's thread. While the shards run, OpenBLAS
is set to one thread (``openblas_set_num_threads`` is process-wide, so sharded
loops run one at a time) and set back afterwards.
"""

import os
import threading

from . import barrier, blas
from .crew import Crew

MIN_ROWS = 16  # rows per shard at least
SPIN_TIMEOUT = 20  # OPENBLAS_THREAD_TIMEOUT at most this: idle workers sleep after 2^20 cycles (~0.3 ms)
_lock = threading.Lock()
_crews = {}  # parties -> Crew


def quick_to_sleep():
    """Whether OpenBLAS's idle threads stop spinning soon (``OPENBLAS_THREAD_TIMEOUT`` <= SPIN_TIMEOUT)."""
    try:
        return int(os.environ.get("OPENBLAS_THREAD_TIMEOUT", "")) <= SPIN_TIMEOUT
    except ValueError:
        return False


def _cores():
    """How many threads a time loop may use: OpenBLAS's thread count, or 1 where its GEMM cannot be called from the
    loops or its idle threads do not sleep soon."""
    if blas.THREADS is None or not blas.GEMM or not quick_to_sleep():
        return 1
    return blas.THREADS[0]()


def count(rows):
    """How many shards a loop over ``rows`` batch rows runs in."""
    return max(1, min(_cores(), rows // MIN_ROWS))


def bounds(rows, n):
    """The n contiguous shards [lo, hi) of range(rows), sizes differing by at most one."""
    return [(rows * k // n, rows * (k + 1) // n) for k in range(n)]


def run(loop, rows):
    """Call ``loop(lo, hi)`` for every shard of range(rows), all at once; returns when all are done.

    ``loop`` must write only its own rows of any array. With one shard it runs
    on the caller's thread and BLAS is left alone.
    """
    n = count(rows)
    if n == 1:
        loop(0, rows)
        return
    spans = bounds(rows, n)
    together(lambda k: loop(*spans[k]), n)


def together(loop, n, sync=None):
    """Call ``loop(k)`` for k in range(n) on n threads at once (k = 0 on the caller's); returns when all are done.

    BLAS runs single-threaded meanwhile. A party's exception is re-raised here;
    with ``sync`` (:mod:`barrier`), a failing party also releases the others
    from their barrier so that they stop instead of waiting for it forever.
    """

    def party(k):
        try:
            loop(k)
        except BaseException:
            if sync is not None:
                barrier.abort(sync)
            raise

    with _lock:
        get, set_ = blas.THREADS
        threads = get()
        crew = _crews.get(n)
        if crew is None:
            crew = _crews[n] = Crew(n)
        set_(1)
        try:
            crew.run(party)
        finally:
            set_(threads)


def parties(rows, units, most_rows, least_units=8):
    """How many threads split each step's ``units`` hidden units between them (1: none, run by rows instead).

    Splitting the units (:func:`together` with a :mod:`barrier` per step) pays where each thread's share of U
    is large against its rows: each thread then reads only its share of U per step, packed once for the
    whole loop (:mod:`panels`). It runs when there are at most ``most_rows`` rows and at least ``least_units``
    units per thread (the caller's measured rule, e.g. :data:`scratchlm.kernels.numba.lstm.UNIT_ROWS`).
    """
    n = _cores()
    return n if 1 < n and rows <= most_rows * n and units >= least_units * n else 1
