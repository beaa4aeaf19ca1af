"""The IMDB reviews, laid out like ``aclImdb/``: the archive, the files, and the seed's id matrix.

The IMDB seed (Chollet, *Deep Learning with Python*, ch. 12) downloads
``aclImdb_v1.tar.gz``, extracts it, reads every review with
``keras.utils.text_dataset_from_directory("aclImdb", label_mode=None)``,
vectorises each one to ``output_sequence_length=100`` word ids and trains on
x = ids[:, :-1], y = ids[:, 1:]. This module does each step:

* :func:`fetch_archive` / :func:`fetch_imdb` — download with the cache,
  checksum, resume and offline message of :func:`scratchlm.corpora.fetch`, then
  extract the ``.tar.gz`` safely (folders and regular files only, none outside
  the target folder) into a temporary folder renamed into place; later calls
  reuse the folder.
* :func:`review_paths` / :func:`iter_review_files` — the ``.txt`` files in the
  order Keras finds them (without its shuffle), read one at a time, and only
  regular files whose real path lies inside the folder.
* :func:`vectorize` — the (N, L) id matrix, stored compactly, that
  :class:`scratchlm.batching.Vectorized` cuts into batches.
"""

import errno
import gzip
import os
import posixpath
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import numpy

from ..checks import require_whole
from ..corpora import CorpusError, default_cache_dir, fetch
from ..files import read_regular_text
from ..text import VectorTokenizer


class Archive(NamedTuple):
    """Where a data set's ``.tar.gz`` comes from, its SHA-256, and the folder it extracts to."""

    url: str
    sha256: str  # of the .tar.gz file itself
    folder: str  # the top-level folder it extracts to


ARCHIVES = {
    # Maas et al. 2011, "Learning Word Vectors for Sentiment Analysis": 50,000 labelled + 50,000 unlabelled
    # reviews, 84,125,825 bytes. The SHA-256 is the one published alongside the URL by independent
    # downloaders (DataDeps.jl's IMDB registration, GoMLX's imdb dataset, TFDS' imdb_reviews checksums).
    "imdb": Archive(
        "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz",
        "c40f74a18d3b61f90feba1e17730e0d38e8b97c05fde7008942e91923d1658fe",
        "aclImdb",
    ),
}
# How an offline user of examples/imdb_transformer.py gets the reviews in anyway.
IMDB_HINT = "extract it (tar -xzf aclImdb_v1.tar.gz) and pass the aclImdb folder with --data DIR"
SEQUENCE_LENGTH = 100  # the seed's output_sequence_length: x and y have 99 positions
_MARK = ".scratchlm-extracted"  # written last into an extracted folder: the archive's SHA-256
MAX_DEPTH = 32  # path components of an archive member (aclImdb's deepest has 4)
REVIEW_LIMIT = 16 << 20  # bytes of one review file (aclImdb's largest has about 14,000)
_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}  # errors that more space would cure


# -- the archive -------------------------------------------------------------------


def fetch_imdb(cache_dir: str | os.PathLike | None = None, local_hint: str = IMDB_HINT, timeout: float = 30.0) -> Path:
    """Path of the extracted ``aclImdb`` folder, downloading and extracting the archive once.

    The archive and the extracted tree live in the cache directory
    (``$SCRATCHLM_CACHE``, default ``~/.cache/scratchlm``).
    """
    source = ARCHIVES["imdb"]
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root = fetch_archive(
        source.url, source.sha256, directory / "imdb", cache_dir=directory, local_hint=local_hint, timeout=timeout
    )
    return root / source.folder


def fetch_archive(
    url: str,
    sha256: str,
    dest_dir: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    local_hint: str = IMDB_HINT,
    timeout: float = 30.0,
) -> Path:
    """Download the ``.tar.gz`` at ``url``, check it, extract it safely into ``dest_dir``; return ``dest_dir``.

    sha256: the archive's expected hex SHA-256 (required: nothing unverified is extracted).
    The download is :func:`scratchlm.corpora.fetch`'s (cached in ``cache_dir``, resumed with HTTP Range,
    renamed into place only when verified; offline, its :class:`~scratchlm.corpora.DownloadError` names the
    URL and ``local_hint``). Extraction goes to a fresh temporary folder beside ``dest_dir``, which is
    renamed to ``dest_dir`` once every member is out (atomic: ``dest_dir`` is absent or complete). A
    folder already extracted from the same archive (it holds a ``.scratchlm-extracted`` mark with its
    SHA-256) is reused without touching the network or the archive. Reviews are plain files, so
    scratchlm extracts folders and regular files only: every member is checked first and the whole
    archive is refused, with :class:`CorpusError` and nothing written, if any member has an absolute
    name or a ``..`` component, is nested more than :data:`MAX_DEPTH` names deep, or is a symbolic
    link, a hard link, a device or a FIFO. With no link on disk, a checked name cannot lead outside.
    """
    if not isinstance(sha256, str) or len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise CorpusError(
            f"fetch_archive needs the archive's SHA-256 (64 lower-case hex digits), got "
            f"{sha256!r:.80}: nothing is extracted unverified"
        )
    dest = Path(dest_dir)
    if _extracted(dest, sha256):
        return dest
    archive = fetch(url, cache_dir=cache_dir, sha256=sha256, timeout=timeout, local_hint=local_hint)
    extract_archive(archive, dest, sha256)
    return dest


def _extracted(dest, sha256):
    try:
        return (dest / _MARK).read_text().strip() == sha256
    except OSError:
        return False


def extract_archive(archive: str | os.PathLike, dest_dir: str | os.PathLike, mark: str = "") -> Path:
    """Extract the (gzip) tar file ``archive`` safely into ``dest_dir`` (see :func:`fetch_archive`)."""
    archive, dest = Path(archive), Path(dest_dir)
    if dest.exists() and not _extracted(dest, mark):
        try:
            dest.rmdir()  # an empty folder may be replaced, nothing else
        except OSError:
            raise CorpusError(
                f"{dest} already exists and was not extracted from {archive.name} by "
                "scratchlm: move it away, or pass the reviews' folder itself"
            ) from None
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent))
    try:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                members = tar.getmembers()
                _check_members(members, archive)
                _extract_members(tar, members, tmp)
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise CorpusError(f"{archive} is not a whole tar archive ({exc}): delete it and fetch it again") from None
        except OSError as exc:
            raise _cannot_extract(archive, dest.parent, exc) from None
        (tmp / _MARK).write_text(mark + "\n")
        try:
            os.rename(tmp, dest)  # atomic; fails if another process got there first
        except OSError:
            if not _extracted(dest, mark):
                raise CorpusError(
                    f"cannot move the extracted archive into {dest}: it appeared meanwhile "
                    "and holds something else; move it away and try again"
                ) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _unsafe(archive, member, why):
    return CorpusError(
        f"{archive} holds an unsafe member {member.name!r:.200} ({why}); refusing to extract "
        "it: the archive is damaged or malicious, delete it"
    )


def _cannot_extract(archive, folder, exc):
    """The CorpusError for an OSError met while writing: more space is advised only when space ran out."""
    if exc.errno in _NO_SPACE:
        advice = "free some space or choose another cache directory (SCRATCHLM_CACHE)"
    else:
        advice = (
            "the archive is damaged or does not suit this file system: delete it, or choose another "
            "cache directory (SCRATCHLM_CACHE)"
        )
    return CorpusError(f"cannot extract {archive.name} into {folder} ({exc.strerror or exc}): {advice}")


def _inside(name):
    """The normalised relative POSIX form of ``name``, or None when it is absolute or climbs out with ``..``."""
    if not name or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return None
    parts = name.replace("\\", "/").split("/")
    if ".." in parts:
        return None
    norm = posixpath.normpath("/".join(parts))
    return None if norm.startswith("..") else norm


def _check_members(members, archive):
    """Refuse the whole archive before anything is written unless every member is a folder or a regular
    file whose name stays inside the target."""
    for m in members:
        name = _inside(m.name)
        if name is None:
            raise _unsafe(archive, m, "an absolute path or a '..' component")
        if m.issym() or m.islnk():
            kind = "symbolic" if m.issym() else "hard"
            raise _unsafe(
                archive,
                m,
                f"a {kind} link to {m.linkname!r:.100}; reviews are plain files and scratchlm extracts no links",
            )
        if not (m.isreg() or m.isdir()):
            raise _unsafe(archive, m, "a device, FIFO or other special file")
        depth = name.count("/") + 1
        if depth > MAX_DEPTH:
            raise _unsafe(archive, m, f"nested {depth} names deep, more than the {MAX_DEPTH} scratchlm extracts")


def _extract_members(tar, members, tmp):
    """Write the checked members (folders and regular files only) under ``tmp``.

    A later file of the same name replaces an earlier one, as tar does. Nothing written here is a
    link, so no path built from a checked name can lead outside ``tmp``.
    """
    for m in members:
        name = _inside(m.name)
        if name == ".":
            continue
        path = os.path.join(tmp, *name.split("/"))
        if m.isdir():
            os.makedirs(path, exist_ok=True)
            continue
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with tar.extractfile(m) as src, open(path, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)


# -- the files -------------------------------------------------------------------


def review_paths(directory: str | os.PathLike) -> list[Path]:
    """The ``.txt`` files of a folder laid out like ``aclImdb/``, in a fixed order.

    As ``keras.utils.text_dataset_from_directory(directory, label_mode=None)`` finds them (labels
    "inferred"): every immediate subfolder is a class, in sorted order, and each is walked
    recursively (``os.walk``, symbolic links to folders not followed), its folders in sorted path
    order and the files of each in sorted name order, keeping names that end in ``.txt`` (any case);
    files directly in ``directory`` are not read, and folders whose name starts with "." are skipped.
    Keras then shuffles the list (``shuffle=True`` by default); this order is left unshuffled, so it is
    the same on every run. On ``aclImdb/`` the classes are ``test`` and ``train`` (with
    ``train/unsup``), and, as in Keras, the ``urls_*.txt`` files count as reviews too. A class folder
    that is a symbolic link must lead to a folder inside ``directory`` (CorpusError otherwise).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CorpusError(f"no such folder: {directory} (pass the folder that holds the class folders, like aclImdb/)")
    folder, paths = os.path.realpath(directory), []
    for cls in sorted(os.listdir(directory)):
        if cls.startswith(".") or not (directory / cls).is_dir():
            continue
        _real_path_inside(directory / cls, folder)
        for root, _, files in sorted(os.walk(directory / cls), key=lambda entry: entry[0]):
            if Path(root).name.startswith(".") and Path(root) != directory / cls:
                continue
            paths.extend(Path(root) / f for f in sorted(files) if f.lower().endswith(".txt"))
    if not paths:
        raise CorpusError(
            f"{directory} holds no .txt file in a class folder: it should look like aclImdb/, "
            "with one folder per class (e.g. pos/, neg/) holding one review per .txt file"
        )
    return paths


def _real_path_inside(path, folder):
    """The real path of ``path`` (every link resolved); CorpusError unless it lies inside the real path ``folder``."""
    real = os.path.realpath(path)
    if os.path.commonpath([real, folder]) != folder:
        raise CorpusError(
            f"{path} leads to {real}, outside {folder}: reviews are read only inside their folder; "
            "copy the file in, or remove the link"
        )
    return real


def read_review(path: str | os.PathLike) -> str:
    """The UTF-8 text of one review file (bytes as they are: no line-end changes, as Keras reads it).

    CorpusError when the file is not a regular file (a folder, a FIFO, a device), holds more than
    :data:`REVIEW_LIMIT` bytes (16 MiB) or is not UTF-8: nothing waits on a pipe or fills memory.
    """
    return read_regular_text(path, "review", REVIEW_LIMIT, CorpusError)


def iter_review_files(directory: str | os.PathLike) -> Iterator[str]:
    """The texts of :func:`review_paths`, read one at a time (an iterator: never all in memory).

    The folder is listed now (CorpusError at once when it is missing or empty); each file is read
    when the iterator reaches it, and only when its real path (links resolved) lies inside
    ``directory``: CorpusError names a file that leads outside, or that :func:`read_review` refuses.
    """
    paths = review_paths(directory)
    folder = os.path.realpath(directory)
    return (read_review(_real_path_inside(p, folder)) for p in paths)


# -- the seed's id matrix ----------------------------------------------------------


def vectorize(
    texts: Iterable[str], tokenizer: VectorTokenizer, length: int = SEQUENCE_LENGTH, chunk: int = 4096
) -> numpy.ndarray:
    """(N, length) ids, one row per text: ``tokenizer.encode_sequence(text, length)`` of each.

    texts: any iterable of strings (e.g. :func:`iter_review_files`), consumed one at a time; the
    rows go into blocks of ``chunk`` rows joined once at the end, in the tokenizer's smallest id dtype
    (uint16 for V <= 65,536), so the peak is about twice the matrix, never the texts.
    """
    length = require_whole("sequence length", length, 2, CorpusError)
    dtype = numpy.uint16 if tokenizer.vocab_size <= 1 << 16 else numpy.uint32
    blocks, block, n = [], numpy.zeros((chunk, length), dtype=dtype), 0
    for text in texts:
        block[n] = tokenizer.encode_sequence(text, length)
        n += 1
        if n == chunk:
            blocks.append(block)
            block, n = numpy.zeros((chunk, length), dtype=dtype), 0
    blocks.append(block[:n])
    return numpy.concatenate(blocks) if len(blocks) > 1 else block[:n].copy()
