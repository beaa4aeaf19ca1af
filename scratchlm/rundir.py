"""One run per run directory: what it holds, and a lock that a second run cannot take and a killed run cannot keep.

    with rundir.lock("runs/my"):          # RunDirError if another process trains there
        ...                                # train, write checkpoints and metrics

A run directory holds (written by :class:`~scratchlm.train.Trainer`)

    last.npz        the latest checkpoint (every ``checkpoint_every`` steps and after each epoch)
    best.npz        the checkpoint with the lowest validation loss so far
    metrics.jsonl   one JSON object per line: step records every ``log_every`` steps,
                    one record per epoch, and start / resume / diverged events
    loss.png        training and validation loss curves (only when matplotlib is installed)
    .lock           the lock below

The lock is the file ``<run dir>/.lock`` holding the owner's process id and
host name, and an exclusive ``flock`` on it. The kernel drops a ``flock`` when
its process ends in any way (``kill -9`` included), so a lock file left behind
by a killed run holds nobody out: the next run takes it over. Taking the lock
is also the proof that the directory can be written: a read-only or misnamed
run directory fails here, before any training, not at the first checkpoint.
While it holds the lock, a run removes the temporary files that an interrupted
atomic write left behind (see :func:`scratchlm.files.remove_stale_temporaries`).

The lock is re-entrant within a process (the CLI takes it, then the Trainer
takes it again). On a system without ``fcntl`` (Windows) no lock is taken.

Under MPI with several ranks (see :mod:`scratchlm.distributed`) only rank 0,
the one that writes, takes the lock; when it cannot, every rank raises the same
:class:`~scratchlm.distributed.AgreedFailure` (rank 0 says why, in one line);
and an exception inside the block on any rank ends every rank after one line
(instead of leaving the others waiting).
"""

import contextlib
import errno
import os
import socket
from pathlib import Path

from . import distributed
from .errors import ScratchLMError
from .files import remove_stale_temporaries

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None

LAST, BEST, METRICS, PLOT = "last.npz", "best.npz", "metrics.jsonl", "loss.png"
LOCK = ".lock"
_held = {}  # resolved run dir -> how many times this process holds it


class RunDirError(ScratchLMError):
    """The run directory is in use by another run, or cannot be created or written."""


@contextlib.contextmanager
def lock(run_dir):
    """Hold ``run_dir``'s lock for the ``with`` block, creating the directory if needed.

    Raises :class:`RunDirError` naming the other process when another run holds
    it, and when the directory cannot be created or written. A directory that
    this call created and that is still empty afterwards is removed again.
    """
    world = distributed.world()
    if world.parallel:  # rank 0 takes it; a failure to is agreed on (every rank raises it)
        with contextlib.ExitStack() as held:
            world.together(lambda: world.is_root and held.enter_context(_lock(run_dir)))
            with world.failing_together():
                yield
        return
    with _lock(run_dir):
        yield


@contextlib.contextmanager
def _lock(run_dir):
    run_dir = Path(run_dir)
    key = run_dir.resolve()
    if key in _held:
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    created = _make_dir(run_dir)
    fd = _acquire(run_dir)
    _held[key] = 1
    try:
        remove_stale_temporaries(run_dir)
        yield
    finally:
        del _held[key]
        _release(run_dir, fd)
        if created:
            with contextlib.suppress(OSError):
                run_dir.rmdir()  # only if nothing was written into it


def _make_dir(run_dir):
    """Create ``run_dir`` (and its parents); True if it did not exist before."""
    if run_dir.is_dir():
        return False
    for parent in [run_dir, *run_dir.parents]:
        if parent.exists() and not parent.is_dir():
            raise RunDirError(
                f"cannot use {run_dir} as a run directory: {parent} is a file, not a directory; "
                "choose another run directory"
            )
    try:
        run_dir.mkdir(parents=True)
    except OSError as exc:
        raise RunDirError(f"cannot create the run directory {run_dir} ({exc.strerror}): choose another one") from None
    return True


def _acquire(run_dir):
    """Open and flock ``run_dir/.lock`` -> its file descriptor (None without fcntl)."""
    path = run_dir / LOCK
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise RunDirError(
                f"cannot write to the run directory {run_dir} ({exc.strerror}): make it writable or choose another one"
            ) from None
        if fcntl is None:
            return fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise RunDirError(f"cannot lock the run directory {run_dir} ({exc.strerror})") from None
            raise RunDirError(
                f"{run_dir} is in use by another run ({_owner(path)}): wait for it to finish or "
                "stop it, or choose another run directory"
            ) from None
        try:  # the file we locked may have been removed by its last owner
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
    return fd


def _owner(path):
    """'process 1234 on host' from a lock file, as far as it can be read."""
    try:
        pid, host = path.read_text().split()[:2]
        return f"process {pid} on {host}"
    except (OSError, ValueError):
        return "a process that is starting"


def _release(run_dir, fd):
    with contextlib.suppress(OSError):
        os.unlink(run_dir / LOCK)  # unlink while still holding it: no one can take a removed file
    os.close(fd)
