"""Corpora: where training text comes from, and how it is read.

The two seed corpora (``nietzsche``, ``tinyshakespeare``) ship inside the
package, gzip-compressed in ``scratchlm/texts/`` (their sources and checksums
are in the README there): naming one needs neither a network nor a cache
directory, and its SHA-256 is checked every time it is read. Any other corpus
is a file path or an http(s) URL. :func:`fetch` downloads a URL (or a named
corpus that is not bundled) once into a cache directory (``$SCRATCHLM_CACHE``,
default ``~/.cache/scratchlm``), checks its SHA-256, and returns the local path.
The download goes to ``<name>.part`` and is renamed into place only when
complete and verified (atomic); an interrupted download is continued with an
HTTP ``Range`` request next time (resumable). :func:`load_text` takes a file
path (plain or ``.gz``), a corpus name or a URL and returns the text;
:func:`fingerprint` identifies the token ids a run was trained on.
:mod:`scratchlm.batching` cuts the encoded text into batches.
"""

import contextlib
import gzip
import hashlib
import importlib.resources
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy
from tqdm import tqdm

from . import budget, files
from .errors import ScratchLMError


class CorpusError(ScratchLMError):
    """A corpus is missing, unreadable, not UTF-8, or too short for the batches asked for."""


class DownloadError(CorpusError):
    """A corpus could not be downloaded, or its checksum does not match."""


class Source(NamedTuple):
    """Where a named corpus comes from, and the SHA-256 of its text."""

    url: str
    sha256: str  # of the uncompressed text
    filename: str
    bundled: bool = False  # shipped as scratchlm/texts/<filename>.gz


CORPORA = {
    # The Keras datasets copy of Nietzsche's "Beyond Good and Evil" (the book's corpus).
    "nietzsche": Source(
        "https://s3.amazonaws.com/text-datasets/nietzsche.txt",
        "442ca0d2f6e62d041e591063704f897f92de93a6f96324009f510a4858a6049c",
        "nietzsche.txt",
        bundled=True,
    ),
    # char-rnn's tiny Shakespeare (about 1.1 MB).
    "tinyshakespeare": Source(
        "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        "tinyshakespeare.txt",
        bundled=True,
    ),
}
_BLOCK = 1 << 16
# How an offline user gets a corpus in anyway; the CLI and the examples name their own option.
LOCAL_HINT = "pass the path of that file instead"


def bundled_path(name: str) -> Path:
    """Where the package keeps its compressed copy of the named corpus ``name``."""
    return Path(str(importlib.resources.files("scratchlm") / "texts" / (CORPORA[name].filename + ".gz")))


def default_cache_dir() -> Path:
    """``$SCRATCHLM_CACHE`` if set, else ``~/.cache/scratchlm``."""
    return Path(os.environ.get("SCRATCHLM_CACHE") or Path.home() / ".cache" / "scratchlm")


def sha256_of(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _is_url(s):
    return urllib.parse.urlparse(str(s)).scheme in ("http", "https")


def fetch(
    name_or_url: str,
    cache_dir: str | os.PathLike | None = None,
    sha256: str | None = None,
    timeout: float = 30.0,
    local_hint: str = LOCAL_HINT,
) -> Path:
    """Path of a local, verified copy of a named corpus or a URL, downloading it if needed.

    name_or_url: "nietzsche", "tinyshakespeare" or an http(s) URL.
    sha256: expected hex digest for a URL (the named corpora have theirs built in).
    A bundled corpus is never downloaded: its path in the package (a ``.gz``
    file, which :func:`read_text` reads) is returned once the SHA-256 of its
    text is checked. A cached file whose checksum does not match is downloaded
    again. Raises :class:`DownloadError` when offline (naming the URL and, with
    ``local_hint``, how to give a local copy instead), on an HTTP error, or when
    the download's checksum is wrong.
    """
    if name_or_url in CORPORA:
        url, sha256, filename, bundled = CORPORA[name_or_url]
        if bundled:
            path = bundled_path(name_or_url)
            _read_bytes(path, sha256)
            return path
    elif _is_url(name_or_url):
        url = str(name_or_url)
        base = Path(urllib.parse.urlparse(url).path).name or "download"
        filename = f"{hashlib.sha256(url.encode()).hexdigest()[:12]}-{base}"
    else:
        raise CorpusError(
            f"unknown corpus {name_or_url!r}: use {' or '.join(CORPORA)}, an http(s) URL, or the path of a text file"
        )
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(
            f"cannot create the cache directory {directory} ({exc.strerror}): "
            "set SCRATCHLM_CACHE to a writable directory"
        ) from None
    dest = directory / filename
    if dest.is_file() and (sha256 is None or sha256_of(dest) == sha256):
        return dest
    part = dest.with_name(dest.name + ".part")
    _download(url, part, timeout, local_hint)
    if sha256 is not None:
        got = sha256_of(part)
        if got != sha256:
            part.unlink()
            raise DownloadError(
                f"the download of {url} has SHA-256 {got}, expected {sha256}: "
                "the file on the server changed or was damaged in transit; try again, "
                f"or download it yourself and {local_hint}"
            )
    os.replace(part, dest)  # atomic: dest is either the old file or the complete new one
    return dest


def _offline_hint(url, local_hint):
    return f"download {url} yourself (or copy the file from another machine) and {local_hint}"


def _download(url, part, timeout, local_hint):
    """Download ``url`` into ``part``, continuing a partial ``part`` with an HTTP Range request.

    A server that ignores the Range header answers 200 with the whole file;
    then the partial file is started over. Leaves ``part`` complete or (after a
    network failure) partial for the next attempt.
    """
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "scratchlm"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing after byte `have`: the partial file is already whole
            return
        raise DownloadError(
            f"could not download {url}: HTTP {exc.code} {exc.reason}; " + _offline_hint(url, local_hint)
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(
            f"could not reach {url} ({reason}); are you offline? " + _offline_hint(url, local_hint)
        ) from None
    with response:
        resumed = (
            have and response.status == 206 and response.headers.get("Content-Range", "").startswith(f"bytes {have}-")
        )
        length = response.headers.get("Content-Length")
        expected = None if length is None else int(length) + (have if resumed else 0)
        with (
            open(part, "ab" if resumed else "wb") as f,
            tqdm(
                total=expected,
                initial=have if resumed else 0,
                unit="B",
                unit_scale=True,
                desc=Path(urllib.parse.urlparse(url).path).name,
                disable=None,
                file=sys.stderr,
            ) as bar,
        ):
            try:
                for block in iter(lambda: response.read(_BLOCK), b""):
                    f.write(block)
                    bar.update(len(block))
            except OSError as exc:  # connection reset, timeout, IncompleteRead
                raise DownloadError(
                    f"the download of {url} broke off after {f.tell():,} bytes ({exc}); "
                    "run again to continue it, or " + _offline_hint(url, local_hint)
                ) from None
            finally:
                f.flush()
                os.fsync(f.fileno())
            size = f.tell()
    if expected is not None and size < expected:
        raise DownloadError(
            f"the download of {url} broke off after {size:,} of {expected:,} bytes; "
            "run again to continue it, or " + _offline_hint(url, local_hint)
        )


def _read_bytes(path, sha256=None):
    """The bytes of a regular file (decompressed when its name ends in ``.gz``), checked against ``sha256`` if
    given. A folder, a FIFO or a device is refused before a byte is read, and a text larger than half the
    memory available now is refused once that much has been read (a corpus is held whole, then encoded)."""
    path = Path(path)
    limit = _memory_limit()
    try:
        with files.open_regular(path, "corpus", CorpusError) as raw:
            with gzip.GzipFile(fileobj=raw) if path.suffix == ".gz" else contextlib.nullcontext(raw) as f:
                data = _read_at_most(f, limit + 1)
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise CorpusError(
            f"{path} is not a whole gzip file ({exc}): decompress it yourself or fetch it again"
        ) from None
    except OSError as exc:
        raise CorpusError(f"cannot read {path}: {exc.strerror}") from None
    if len(data) > limit:
        raise CorpusError(
            f"{path} holds more than {budget.human(limit)} of text, half the memory available now: "
            "train on a part of it, or on a machine with more memory"
        )
    got = sha256 and hashlib.sha256(data).hexdigest()
    if got != sha256:
        raise CorpusError(
            f"{path} holds text with SHA-256 {got}, expected {sha256}: "
            "the file is damaged; reinstall scratchlm (pip install --force-reinstall scratchlm)"
        )
    return data


def _read_at_most(f, n, chunk=1 << 24):
    """At most n bytes of the file f, read in chunks (``f.read(n)`` would reserve n bytes at once)."""
    parts, total = [], 0
    while total < n:
        part = f.read(min(chunk, n - total))
        if not part:
            break
        parts.append(part)
        total += len(part)
    return b"".join(parts)


def _memory_limit():
    """The most bytes of text a corpus may hold: half the memory available now (2**40 where nothing says)."""
    available = budget.available_bytes()
    return (available if available is not None else 1 << 41) // 2


def read_text(path: str | os.PathLike, sha256: str | None = None) -> str:
    """The UTF-8 text of a file, line ends as "\\n"; :class:`CorpusError` if it is missing, unreadable or not UTF-8.

    A file whose name ends in ``.gz`` is decompressed first; ``sha256`` (of the
    uncompressed bytes) is checked when given. Line ends are
    normalised as Python's text mode does (``open(path).read()``, what the Keras
    seed uses): "\\r\\n" and a lone "\\r" become "\\n". The Keras copy of
    nietzsche.txt has Windows line ends, and its 60-character vocabulary counts
    none of them.
    """
    data = _read_bytes(path, sha256)
    try:
        return data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
    except UnicodeDecodeError as exc:
        raise CorpusError(
            f"{path} is not UTF-8 text (bad byte at offset {exc.start}): convert it to UTF-8 first"
        ) from None


def load_text(
    corpus: str | os.PathLike, cache_dir: str | os.PathLike | None = None, local_hint: str = LOCAL_HINT
) -> str:
    """Text of ``corpus``: an existing file path, a named corpus (bundled or fetched) or a URL (fetched).

    ``local_hint`` finishes the message of a failed download: how the caller
    takes a local file instead (the CLI and the examples name their option).
    """
    if Path(corpus).exists():
        return read_text(corpus)
    if corpus in CORPORA and CORPORA[corpus].bundled:  # checked as it is read: one decompression
        return read_text(bundled_path(corpus), CORPORA[corpus].sha256)
    if corpus in CORPORA or _is_url(corpus):
        return read_text(fetch(corpus, cache_dir=cache_dir, local_hint=local_hint))
    raise CorpusError(f"no such file: {corpus} (the named corpora are {', '.join(CORPORA)})")


def fingerprint(*arrays: numpy.ndarray) -> str:
    """Hex SHA-256 of arrays' dtypes, shapes and bytes: identifies the data a run was trained on."""
    digest = hashlib.sha256()
    for a in arrays:
        a = numpy.ascontiguousarray(a)
        digest.update(f"{a.dtype.str}{a.shape}".encode())
        digest.update(a.data)
    return digest.hexdigest()
