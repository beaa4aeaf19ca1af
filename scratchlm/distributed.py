"""Data-parallel training over MPI (mpi4py): the world of ranks and what the Trainer needs from it.

    mpiexec -n 2 scratchlm train nietzsche --batching streams --batch-size 64
    mpiexec -n 2 python examples/nietzsche_char.py

Every rank runs the same program. :func:`world` tells a process its rank and
the number of ranks; a process that no MPI launcher started (or started alone)
gets a one-process world and mpi4py is never imported. The launcher is
recognised by the variables it sets: ``PMI_SIZE``/``PMI_RANK`` (MPICH's and
Intel MPI's Hydra ``mpiexec``, Slurm ``srun --mpi=pmi2``), ``MPI_LOCALNRANKS``
(Hydra), ``OMPI_COMM_WORLD_SIZE`` (Open MPI), ``PMIX_RANK`` with
``SLURM_STEP_NUM_TASKS`` (``srun --mpi=pmix``), ``MV2_COMM_WORLD_SIZE`` (MVAPICH).

What the :class:`~scratchlm.train.Trainer` does with it (see docs/distributed.md):
each rank takes the rows ``[r·B/n, (r+1)·B/n)`` of every global batch, computes
the mean loss and gradients of its rows, and :meth:`World.reduce_step` sums
``gradient · tokens`` and ``loss · tokens`` over the ranks in one in-place
``Allreduce`` of one contiguous buffer and divides by the global token count:
the step of the global batch, which every rank then applies identically.

Failures: inside :meth:`World.failing_together` an exception on any rank ends
every rank (``MPI_Abort``) after one line on stderr, instead of leaving the
others waiting forever in a collective call.
"""

import contextlib
import math
import os
import sys
import time
from pathlib import Path

import numpy

from .errors import ScratchLMError

INSTALL_HINT = "pip install 'scratchlm[mpi]'"
# Seconds a rank waits for the others at the start of training before it gives up (a rank that failed
# before training without reaching a collective call cannot be noticed otherwise).
START_TIMEOUT = float(os.environ.get("SCRATCHLM_MPI_START_TIMEOUT", "300"))
# Seconds a rank other than 0 waits before reporting its own failure: when rank 0 fails the same way
# (bad input that every rank sees, possibly a little later), rank 0's line is the only one printed.
GRACE = float(os.environ.get("SCRATCHLM_MPI_GRACE", "10"))


def launcher_size():
    """The number of processes an MPI launcher says it started (1 when none), from its environment only."""
    env = os.environ
    for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "MPI_LOCALNRANKS"):
        value = env.get(name, "")
        if value.isdigit():
            return int(value)
    if "PMIX_RANK" in env and env.get("SLURM_STEP_NUM_TASKS", "").isdigit():
        return int(env["SLURM_STEP_NUM_TASKS"])
    return 1


class World:
    """This process's place among the ranks: ``rank``, ``size``, ``is_root`` and the collective calls.

    A one-process world (``comm`` None) has rank 0 and size 1; its methods are never needed.
    """

    def __init__(self, rank=0, size=1, comm=None):
        self.rank, self.size, self.comm = int(rank), int(size), comm
        self._buffers = {}                    # gradient layout -> (host buffer, offsets)

    def __repr__(self):
        return f"World(rank={self.rank}, size={self.size})"

    @property
    def is_root(self):
        return self.rank == 0

    @property
    def parallel(self):
        return self.size > 1

    # -- sharding ---------------------------------------------------------------------
    def shard(self, rows):
        """This rank's rows [lo, hi) of a batch of ``rows`` rows (contiguous; the last may be empty)."""
        return self.rank * rows // self.size, (self.rank + 1) * rows // self.size

    # -- start: same weights everywhere ------------------------------------------------
    def wait_for_all(self, timeout=START_TIMEOUT):
        """Return once every rank got here; ScratchLMError after ``timeout`` seconds (a rank failed before)."""
        request = self.comm.Ibarrier()
        deadline = time.monotonic() + timeout
        while not request.Test():
            if time.monotonic() > deadline:
                raise ScratchLMError(f"rank {self.rank}: the other ranks did not reach the start of training within "
                                     f"{timeout:g} s: one of them failed before it (see its message) or is stuck "
                                     "(SCRATCHLM_MPI_START_TIMEOUT sets how long to wait)")
            time.sleep(0.002)

    def broadcast_arrays(self, arrays, backend):
        """Overwrite every array of the dict ``arrays`` (sorted by name) with rank 0's values, in place."""
        for name in sorted(arrays):
            a = arrays[name]
            host = numpy.ascontiguousarray(backend.to_host(a))
            self.comm.Bcast(host, root=0)
            a[...] = backend.asarray(host) if backend.name != "numpy" else host

    def broadcast(self, obj):
        """Rank 0's ``obj`` (any picklable object) on every rank."""
        return self.comm.bcast(obj, root=0)

    # -- one step -----------------------------------------------------------------------
    def _layout(self, params, dtype):
        key = (numpy.dtype(dtype).str,) + tuple((name, tuple(p.shape)) for name, p in params.items())
        layout = self._buffers.get(key)
        if layout is None:
            offsets, n = {}, 0
            for name, p in params.items():
                offsets[name] = (n, n + math.prod(p.shape), tuple(p.shape))
                n += math.prod(p.shape)
            buffer = numpy.empty(n + 1, dtype=dtype)           # the gradients, then Σ loss·tokens
            layout = self._buffers[key] = (buffer, offsets)
        return layout

    def reduce_step(self, params, grads, loss, tokens, total_tokens, backend):
        """(loss, grads) of the global batch from this rank's mean ``loss`` and ``grads`` over ``tokens`` tokens.

        grads None (a rank with no rows of this batch) counts as zeros. Packs ``grads · tokens`` and
        ``loss · tokens`` into one contiguous buffer (allocated once per parameter layout), sums it over
        the ranks with one in-place Allreduce, and divides by ``total_tokens``, the global batch's count.
        The gradients returned are views of that buffer (valid until the next step).
        """
        from mpi4py import MPI
        buffer, offsets = self._layout(params, backend.dtype)
        if grads is None:
            buffer[:] = 0
        else:
            for name, (lo, hi, _) in offsets.items():
                g = backend.to_host(grads[name]).reshape(-1)
                numpy.multiply(g, tokens, out=buffer[lo:hi])
            buffer[-1] = loss * tokens
        self.comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)
        buffer /= total_tokens
        loss = float(buffer[-1])
        out = {}
        for name, (lo, hi, shape) in offsets.items():
            view = buffer[lo:hi].reshape(shape)
            out[name] = view if backend.name == "numpy" else backend.asarray(view)
        return loss, out

    def sum(self, values):
        """Element-wise sums over the ranks of a few numbers (float64) -> list of floats."""
        from mpi4py import MPI
        a = numpy.asarray(values, dtype=numpy.float64)
        self.comm.Allreduce(MPI.IN_PLACE, a, op=MPI.SUM)
        return [float(v) for v in a]

    def gather_rows(self, array, axis):
        """On rank 0, every rank's host ``array`` joined along ``axis`` in rank order; None on the others."""
        parts = self.comm.gather(numpy.ascontiguousarray(array), root=0)
        return numpy.concatenate(parts, axis=axis) if self.is_root else None

    # -- failures -----------------------------------------------------------------------
    @contextlib.contextmanager
    def failing_together(self):
        """Inside: an exception on this rank ends every rank, after one line on stderr (see :func:`fail`)."""
        try:
            yield
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:          # noqa: BLE001 - any failure must end every rank
            self.fail(exc)

    def fail(self, exc):
        """Print one line about ``exc`` and end every rank (MPI_Abort; exit status 2 for a ScratchLMError)."""
        code = 2 if isinstance(exc, ScratchLMError) else 1
        if self.comm is None:
            raise exc
        if not self.is_root:
            time.sleep(GRACE)                 # rank 0 failing too ends this process meanwhile: one line
        message = " ".join(str(exc).split()) if isinstance(exc, ScratchLMError) else \
            f"{type(exc).__name__}: {' '.join(str(exc).split())}"
        where = "" if self.is_root else f" (rank {self.rank} of {self.size})"
        with contextlib.suppress(Exception):
            print(f"{program()}: error{where}: {message}", file=sys.stderr, flush=True)
            sys.stdout.flush()
        self.comm.Abort(code)


def program():
    """How the running program calls itself in messages: 'scratchlm train', 'nietzsche_char', ..."""
    argv = sys.argv or [""]
    name = Path(argv[0]).name
    if name in ("scratchlm", "__main__.py"):
        name = "scratchlm"
        if len(argv) > 1 and not argv[1].startswith("-"):
            name += " " + argv[1]
    elif name.endswith(".py"):
        name = name[:-3]
    return name or "scratchlm"


_world = None


def world():
    """This process's :class:`World` (made once). mpi4py is imported only under an MPI launcher with size > 1.

    Raises ScratchLMError when an MPI launcher started several processes but mpi4py is not installed.
    """
    global _world
    if _world is None:
        size = launcher_size()
        if size <= 1:
            _world = World()
        else:
            try:
                from mpi4py import MPI
            except ImportError:
                raise ScratchLMError(f"this process was started by an MPI launcher ({size} processes), but mpi4py "
                                     f"is not installed: {INSTALL_HINT} (or run without mpiexec)") from None
            comm = MPI.COMM_WORLD
            _world = World(comm.Get_rank(), comm.Get_size(), comm if comm.Get_size() > 1 else None)
    return _world
