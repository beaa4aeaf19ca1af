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

On GPUs (the cupy backend) each rank takes the GPU of its local rank on its
machine (:meth:`World.use_local_device`), and the all-reduce runs on device
buffers through NCCL (``cupy.cuda.nccl``; the NCCL unique id travels over MPI);
cupy and NCCL are imported only then.

Failures: inside :meth:`World.failing_together` an exception on any rank ends
every rank (``MPI_Abort``) after one line on stderr, instead of leaving the
others waiting forever in a collective call. Where every rank reaches the same
point anyway (the setup of ``scratchlm train``, the start of training),
:meth:`World.agree` and :meth:`World.together` do better: every rank learns of
the first failing rank's error, rank 0 alone prints it, and every rank exits
normally (no abort, no abort notice).

Ctrl-C: under MPI a SIGINT (which ``mpiexec`` forwards to every rank) raises
nothing where it lands: a rank that left a collective call in the middle would
leave the others spinning in it forever. From the start of MPI on (in
:func:`world`) SIGINT only notes the interrupt (:attr:`World.interrupted`), and
the ranks act on it together where they already exchange data: each training
step's all-reduce carries every rank's vote (:meth:`World.reduce_step`), and so
do :meth:`World.agree` and :meth:`World.stop_if_interrupted`. When any rank was
interrupted, every rank raises :class:`Interrupted` (a KeyboardInterrupt) at that
same point; rank 0 alone says so, and every rank exits with status 130.
"""

import contextlib
import math
import os
import signal
import sys
import threading
import time
import traceback
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
DRAIN = 0.5  # seconds between a failing rank's one line and MPI_Abort (measured: without it, MPICH's Hydra lost
# the line in ~1 of 12 runs of two failing-rank tests, the stderr of the whole run empty)


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


def launcher_rank():
    """This process's rank as an MPI launcher's environment gives it (0 when none), without starting MPI."""
    for name in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK", "PMIX_RANK"):
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 0


class Interrupted(KeyboardInterrupt):
    """Ctrl-C under MPI: every rank raises it at the same point, once the ranks found that one was interrupted."""


_interrupted = False  # a SIGINT reached this process since the last Interrupted


def _note_interrupt(signum, frame):
    """The SIGINT handler of a process among several ranks: note the interrupt, raise nothing (see the module)."""
    global _interrupted
    _interrupted = True


def _defer_interrupts():
    """Make SIGINT only note the interrupt (:func:`_note_interrupt`) -> the handler it replaces.

    Signal handlers belong to the main thread: called from another thread, this changes nothing (None).
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGINT, _note_interrupt)


def _stop_together(votes):
    """Raise :class:`Interrupted` when ``votes`` (the ranks' interrupts, summed) says some rank was interrupted.

    The note is cleared first: every rank raises here, so the interrupt is acted on once.
    """
    global _interrupted
    if votes > 0:
        _interrupted = False
        raise Interrupted


class AgreedFailure(ScratchLMError):
    """An error that every rank raises at the same point (see :meth:`World.agree`): nobody is left waiting.

    message: the failing rank's one-line message; rank, size: which rank failed first, of how many;
    code: the exit status (2 for a ScratchLMError, 1 for a bug); report: True on rank 0 only, the
    one that prints it. ``where`` is "" for rank 0's own error, else " (rank r of n)".
    """

    def __init__(self, message, rank, size, code, report):
        super().__init__(message)
        self.rank, self.size, self.code, self.report = rank, size, code, report
        self.where = "" if rank == 0 else f" (rank {rank} of {size})"


def describe(exc):
    """(exit status, one line) for an exception: 2 and its message for a ScratchLMError, else 1 and its type too."""
    text = " ".join(str(exc).split())
    if isinstance(exc, ScratchLMError):
        return 2, text
    return 1, f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class World:
    """This process's place among the ranks: ``rank``, ``size``, ``is_root`` and the collective calls.

    local_rank, local_size: this rank's place among the ranks on its own machine (MPI's shared-memory
    split of the world), which chooses its GPU. A one-process world (``comm`` None) has rank 0 and
    size 1; its collective methods are never needed.
    """

    def __init__(self, rank=0, size=1, comm=None, local_rank=0, local_size=1):
        self.rank, self.size, self.comm = int(rank), int(size), comm
        self.local_rank, self.local_size = int(local_rank), int(local_size)
        self._buffers = {}  # gradient layout -> (buffer, offsets)
        self._nccl = None  # the NCCL communicator, made by start_nccl

    def __repr__(self):
        return f"World(rank={self.rank}, size={self.size})"

    @property
    def interrupted(self):
        """True once Ctrl-C (SIGINT) reached this rank; the ranks stop at the next point where they agree.

        Always False in a one-process world, where Ctrl-C raises KeyboardInterrupt as usual.
        """
        return self.parallel and _interrupted

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
                raise ScratchLMError(
                    f"rank {self.rank}: the other ranks did not reach the start of training within "
                    f"{timeout:g} s: one of them failed before it (see its message) or is stuck "
                    "(SCRATCHLM_MPI_START_TIMEOUT sets how long to wait)"
                )
            time.sleep(0.002)

    def agree(self, error):
        """Collective: raise :class:`AgreedFailure` on every rank when ``error`` is not None on any rank, else
        :class:`Interrupted` on every rank when Ctrl-C reached any.

        error: this rank's exception, or None. Every rank must call this at the same point; it waits
        (as :meth:`wait_for_all`, with its timeout) for all of them, then shares what went wrong, so
        that every rank stops together with the first failing rank's message, which rank 0 alone reports.
        In a one-process world ``error`` itself is raised.
        """
        if not self.parallel:
            if error is not None:
                raise error
            return
        self.wait_for_all()
        reports = self.comm.allgather((None if error is None else describe(error), self.interrupted))
        for rank, (failure, _) in enumerate(reports):
            if failure is not None:
                code, message = failure
                raise AgreedFailure(message, rank, self.size, code, report=self.is_root) from None
        _stop_together(sum(interrupted for _, interrupted in reports))

    def stop_if_interrupted(self):
        """Collective: raise :class:`Interrupted` on every rank when Ctrl-C reached any of them.

        For a loop of one's own under MPI: call it on every rank at the same point (one small all-reduce).
        Nothing happens in a one-process world.
        """
        if self.parallel:
            _stop_together(self.sum([self.interrupted])[0])

    def together(self, fn):
        """``fn()`` on every rank, followed by :meth:`agree` on whether it raised: its result, or AgreedFailure
        on every rank. ``fn`` must make no collective call (a rank that failed early would not make it).

        A bug (an exception other than a ScratchLMError) prints its traceback on the rank that hit it. In a
        one-process world this is just ``fn()``.
        """
        if not self.parallel:
            return fn()
        result, error = None, None
        try:
            result = fn()
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            error = exc
            if not isinstance(exc, ScratchLMError):
                traceback.print_exc()
        self.agree(error)
        return result

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

    # -- GPUs -----------------------------------------------------------------------------
    def use_local_device(self):
        """Make the GPU of this rank's local rank CuPy's current device (before any array is made) -> its id.

        One rank per GPU: the ranks on a machine take devices 0, 1, ... in local-rank order (modulo the
        GPUs this process sees, so that a launcher giving each rank one visible GPU works too). Imports
        cupy: call it only for the cupy backend.
        """
        import cupy

        count = cupy.cuda.runtime.getDeviceCount()
        if count < 1:
            raise ScratchLMError(
                f"rank {self.rank} sees no CUDA GPU: use --backend numpy, or start the ranks on machines with GPUs"
            )
        device = self.local_rank % count
        cupy.cuda.Device(device).use()
        return device

    def check_device(self, params):
        """ScratchLMError unless every (cupy) array of ``params`` lives on this rank's GPU (see use_local_device)."""
        import cupy

        want = self.local_rank % cupy.cuda.runtime.getDeviceCount()
        for name, p in params.items():
            if p.device.id != want:
                raise ScratchLMError(
                    f"rank {self.rank}'s model lives on GPU {p.device.id} ({name}), but rank {self.rank} is "
                    f"local rank {self.local_rank} of {self.local_size} on its machine and takes GPU {want} "
                    "(one GPU per rank): call scratchlm.distributed.world().use_local_device() before building "
                    "or loading the model (scratchlm train does)"
                )
        cupy.cuda.Device(want).use()  # the step's buffers go to the same GPU

    def start_nccl(self):
        """Collective: make the NCCL communicator of the world's GPUs, through which :meth:`reduce_step` then
        reduces -> True; False (the host path stays) unless every rank's CuPy has NCCL.

        Rank 0 makes NCCL's unique id and MPI broadcasts it; every rank joins with its MPI rank. Call it
        on every rank at the same point, with this rank's GPU current (:meth:`use_local_device`).
        """
        if self._nccl is not None:
            return True
        try:
            from cupy.cuda import nccl

            available = bool(getattr(nccl, "available", False))
        except ImportError:
            available = False
        if not all(self.comm.allgather(available)):
            return False
        uid = nccl.get_unique_id() if self.is_root else None
        self._nccl = nccl.NcclCommunicator(self.size, self.comm.bcast(uid, root=0), self.rank)
        return True

    @property
    def uses_nccl(self):
        """True once :meth:`start_nccl` made the communicator: the all-reduce runs on device buffers."""
        return self._nccl is not None

    # -- one step -----------------------------------------------------------------------
    def _layout(self, params, backend, on_device):
        dtype = backend.dtype
        key = (numpy.dtype(dtype).str, on_device) + tuple((name, tuple(p.shape)) for name, p in params.items())
        layout = self._buffers.get(key)
        if layout is None:
            offsets, n = {}, 0
            for name, p in params.items():
                offsets[name] = (n, n + math.prod(p.shape), tuple(p.shape))
                n += math.prod(p.shape)
            xp = backend.xp if on_device else numpy
            buffer = xp.empty(n + 2, dtype=dtype)  # the gradients, Σ loss·tokens, Σ interrupted
            layout = self._buffers[key] = (buffer, offsets)
        return layout

    def reduce_step(self, params, grads, loss, tokens, total_tokens, backend):
        """(loss, grads) of the global batch from this rank's mean ``loss`` and ``grads`` over ``tokens`` tokens.

        grads None (a rank with no rows of this batch) counts as zeros. Packs ``grads · tokens`` and
        ``loss · tokens`` into one contiguous buffer (allocated once per parameter layout), sums it over
        the ranks with one in-place all-reduce, and divides by ``total_tokens``, the global batch's count.
        The buffer is host memory reduced by MPI, or, after :meth:`start_nccl`, device memory reduced by
        NCCL on the current stream. The gradients returned are views of it (valid until the next step).

        The same all-reduce counts the ranks that Ctrl-C reached: when any did, every rank raises
        :class:`Interrupted` here, before the step is taken.
        """
        nccl = self._nccl is not None
        buffer, offsets = self._layout(params, backend, on_device=nccl)
        xp = backend.xp if nccl else numpy
        if grads is None:
            buffer[:] = 0
        else:
            for name, (lo, hi, _) in offsets.items():
                g = grads[name].reshape(-1) if nccl else backend.to_host(grads[name]).reshape(-1)
                xp.multiply(g, tokens, out=buffer[lo:hi])
            buffer[-2] = loss * tokens
        buffer[-1] = self.interrupted
        if nccl:
            self._allreduce_nccl(buffer, backend)
        else:
            from mpi4py import MPI

            self.comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)
        _stop_together(float(buffer[-1]))
        buffer /= total_tokens
        loss = float(buffer[-2])
        out = {}
        for name, (lo, hi, shape) in offsets.items():
            view = buffer[lo:hi].reshape(shape)
            out[name] = view if nccl or backend.name == "numpy" else backend.asarray(view)
        return loss, out

    def _allreduce_nccl(self, buffer, backend):
        """In-place NCCL sum of the device ``buffer`` over the ranks, queued on the current stream (after the
        kernels that filled it; the ``float(buffer[-1])`` that follows waits for it)."""
        import cupy
        from cupy.cuda import nccl

        kind = {"float32": nccl.NCCL_FLOAT32, "float64": nccl.NCCL_FLOAT64}[numpy.dtype(backend.dtype).name]
        self._nccl.allReduce(
            buffer.data.ptr, buffer.data.ptr, buffer.size, kind, nccl.NCCL_SUM, cupy.cuda.get_current_stream().ptr
        )

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
        except (Interrupted, SystemExit, AgreedFailure):
            raise  # Interrupted and AgreedFailure leave no rank waiting: no need to abort
        except BaseException as exc:
            self.fail(exc)

    def fail(self, exc):
        """Print one line about ``exc`` and end every rank (MPI_Abort; exit status 2 for a ScratchLMError)."""
        if self.comm is None:
            raise exc
        if not self.is_root:
            time.sleep(GRACE)  # rank 0 failing too ends this process meanwhile: one line
        code, message = describe(exc)
        where = "" if self.is_root else f" (rank {self.rank} of {self.size})"
        with contextlib.suppress(Exception):
            print(f"{program()}: error{where}: {message}", file=sys.stderr, flush=True)
            sys.stdout.flush()
        time.sleep(DRAIN)  # the launcher forwards our stderr from a pipe: MPI_Abort at once can lose the line
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

    Under an MPI launcher, from the start of MPI on, Ctrl-C (SIGINT) only notes the interrupt: the ranks
    stop together at the next point where they agree (see the module's docstring).

    Raises ScratchLMError when an MPI launcher started several processes but mpi4py is not installed.
    """
    global _world
    if _world is None:
        size = launcher_size()
        if size <= 1:
            _world = World()
        else:
            try:
                import mpi4py  # noqa: F401 - MPI itself starts with the import of mpi4py.MPI, below
            except ImportError:
                raise ScratchLMError(
                    f"this process was started by an MPI launcher ({size} processes), but mpi4py "
                    f"is not installed: {INSTALL_HINT} (or run without mpiexec)"
                ) from None
            previous = _defer_interrupts()
            from mpi4py import MPI

            comm = MPI.COMM_WORLD
            if comm.Get_size() > 1:
                # A collective call, at the point where every rank starts (MPI_Init just waited for all
                # of them): the ranks sharing this machine's memory, in rank order, choose the GPUs.
                local = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.Get_rank())
                _world = World(comm.Get_rank(), comm.Get_size(), comm, local.Get_rank(), local.Get_size())
                local.Free()
            else:  # a launcher whose MPI is not mpi4py's: one process after all
                if previous is not None:
                    signal.signal(signal.SIGINT, previous)
                _world = World()
    return _world
