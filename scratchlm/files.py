"""Writing a file atomically, and reading a user's file without hanging or filling memory.

Checkpoints and the loss-curve PNG are written with :func:`atomic_write`
(readers see the old file or the whole new one, never half of one), so that a
crash or a Ctrl-C in the middle of a write never destroys what a run already
had. Files a user names (a prime file, a review) are read with
:func:`read_regular_text`: only a regular file, and only up to a size bound,
so a FIFO, ``/dev/zero`` or a huge file is refused at once.
"""

import contextlib
import os
import stat
import tempfile
from pathlib import Path

from .errors import ScratchLMError

TEMPORARY = ".{name}.*.tmp"  # how atomic_write names its temporary files
_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}  # what read_regular_text refuses


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


def open_regular(path, what, error=ScratchLMError):
    """``path`` opened for reading bytes, once it is known to be a regular file.

    what: what the file is for, as the messages name it (e.g. "corpus"). error: the
    :class:`~scratchlm.errors.ScratchLMError` subclass raised, with a one-line message, when the file is
    missing, unreadable or not a regular file (a folder, a FIFO, a device such as ``/dev/zero``).
    The file is opened with ``O_NONBLOCK``, so opening a FIFO does not wait for a writer, and its
    kind is checked on the open file (``fstat``) before a byte is read, so it cannot be swapped in between.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise error(f"no such file: {path} (check the path of the {what})") from None
    except OSError as exc:
        raise error(f"cannot read {path}: {exc.strerror}") from None
    kind = _kind(os.fstat(fd).st_mode)
    if kind is not None:
        os.close(fd)
        raise error(f"{path} is {kind}, not a regular file: pass a {what} that is a plain file")
    return os.fdopen(fd, "rb")


def read_regular_text(path, what, limit, error=ScratchLMError, universal_newlines=False):
    """The UTF-8 text of the regular file ``path`` (see :func:`open_regular`), which must hold at most
    ``limit`` bytes.

    error: raised, with a one-line message, as :func:`open_regular` raises it, and when the file is
    larger than ``limit`` bytes or not UTF-8.
    universal_newlines: turn "\\r\\n" and a lone "\\r" into "\\n" (as Python's text mode does);
    by default the bytes are decoded as they are.
    """
    with open_regular(path, what, error) as f:
        try:
            data = f.read(limit + 1)
        except OSError as exc:
            raise error(f"cannot read {path}: {exc.strerror}") from None
    if len(data) > limit:
        raise error(f"{path} is larger than {_size(limit)}, the most a {what} may hold: pass a smaller file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(
            f"{path} is not UTF-8 text (bad byte at offset {exc.start}): convert it to UTF-8 or remove it"
        ) from None
    return text.replace("\r\n", "\n").replace("\r", "\n") if universal_newlines else text


def _kind(mode):
    """None for a regular file, else what the file is, in words."""
    if stat.S_ISREG(mode):
        return None
    return _KINDS.get(stat.S_IFMT(mode), "a special file")


def _size(n):
    """``n`` bytes in words: "16 MiB" when a whole number of MiB, else "1,000 bytes"."""
    return f"{n >> 20} MiB" if n and n % (1 << 20) == 0 else f"{n:,} bytes"


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
