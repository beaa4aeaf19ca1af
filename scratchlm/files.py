"""Writing a file atomically: readers see the old file or the whole new one, never half of one.

Checkpoints and the loss-curve PNG are written this way, so that a crash or a
Ctrl-C in the middle of a write never destroys what a run already had.
"""

import contextlib
import os
import tempfile
from pathlib import Path


TEMPORARY = ".{name}.*.tmp"                      # how atomic_write names its temporary files


@contextlib.contextmanager
def atomic_write(path):
    """``with atomic_write(path) as f:`` write binary data to ``f``; ``path`` appears only when the block succeeds.

    The data goes to a temporary file in the same directory, is flushed to disk,
    and is renamed over ``path``. If the block raises (or is interrupted), the
    temporary file is removed and ``path`` is left as it was; one left by a
    process that was killed outright is removed by
    :func:`remove_stale_temporaries` when the next run takes the directory. The
    new file gets the usual permissions (0666 less the umask; a bare ``mkstemp``
    gives 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix, suffix = TEMPORARY.format(name=path.name).split("*")
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            os.chmod(tmp, 0o666 & ~_umask())
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def remove_stale_temporaries(directory):
    """Remove the temporary files of interrupted :func:`atomic_write` calls in ``directory``.

    Only safe while no other process writes there (the run directory's lock
    guarantees it); returns the names removed.
    """
    removed = []
    for stale in Path(directory).glob(TEMPORARY.format(name="*")):
        try:
            stale.unlink()
            removed.append(stale.name)
        except OSError:
            pass
    return removed


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(directory):
    """Make the rename itself durable (best effort: not every file system allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
