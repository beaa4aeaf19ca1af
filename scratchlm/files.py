"""Writing a file atomically: readers see the old file or the whole new one, never half of one.

Checkpoints and the loss-curve PNG are written this way, so that a crash or a
Ctrl-C in the middle of a write never destroys what a run already had.
"""

import contextlib
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_write(path):
    """``with atomic_write(path) as f:`` write binary data to ``f``; ``path`` appears only when the block succeeds.

    The data goes to a temporary file in the same directory, is flushed to disk,
    and is renamed over ``path``. If the block raises (or is interrupted), the
    temporary file is removed and ``path`` is left as it was. The new file gets
    the usual permissions (0666 less the umask; a bare ``mkstemp`` gives 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.chmod(tmp, 0o666 & ~_umask())
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


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
