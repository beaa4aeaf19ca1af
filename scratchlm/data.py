"""Corpora and batches: where training text comes from and how it is cut up.

Corpora. The two seed corpora (``nietzsche``, ``tinyshakespeare``) ship inside
the package, gzip-compressed in ``scratchlm/corpora/`` (their sources and
checksums are in the README there): naming one needs neither a network nor a
cache directory, and its SHA-256 is checked every time it is read. Any other
corpus is a file path or an http(s) URL. :func:`fetch` downloads a URL (or a
named corpus that is not bundled) once into a cache directory
(``$SCRATCHLM_CACHE``, default ``~/.cache/scratchlm``), checks its SHA-256, and
returns the local path. The download goes to ``<name>.part`` and is renamed
into place only when complete and verified (atomic); an interrupted download is
continued with an HTTP ``Range`` request next time (resumable).
:func:`load_text` takes a file path (plain or ``.gz``), a corpus name or a URL
and returns the text.

Batches. Three ways to turn a token sequence into training batches, all with
the same interface (``num_batches``, ``batches(epoch, start)``, ``last_only``,
``stateful``, ``random_prompt``):

* :class:`Windows` — every ``step``-th window of ``maxlen`` tokens, the target
  being the token after it (the Keras Nietzsche book setup: ``last_only``).
* :class:`Streams` — the sequence cut into B parallel contiguous streams, read
  in consecutive chunks of T with targets shifted by one: stateful truncated
  BPTT, where the LSTM state flows from one chunk to the next.
* :class:`Padded` — one sequence per line or record, padded per batch, with
  <eos> marking both ends and a mask over the real steps.

Streaming: no batcher materialises its (N, T) windows or any one-hot array.
They keep the token ids (one or two bytes each) plus start offsets, and gather
each (B, T) batch when it is asked for. Shuffling is a permutation drawn from
``numpy.random.default_rng([seed, epoch])``, so batch k of epoch e is the same
in every run with the same seed — which is what lets a resumed run skip to the
exact batch where it stopped.
"""

import contextlib
import functools
import gzip
import hashlib
import importlib.resources
import math
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


# -- corpora ----------------------------------------------------------------------

class Source(NamedTuple):
    url: str
    sha256: str                 # of the uncompressed text
    filename: str
    bundled: bool = False       # shipped as scratchlm/corpora/<filename>.gz


CORPORA = {
    # The Keras datasets copy of Nietzsche's "Beyond Good and Evil" (the book's corpus).
    "nietzsche": Source("https://s3.amazonaws.com/text-datasets/nietzsche.txt",
                        "442ca0d2f6e62d041e591063704f897f92de93a6f96324009f510a4858a6049c", "nietzsche.txt",
                        bundled=True),
    # char-rnn's tiny Shakespeare (about 1.1 MB).
    "tinyshakespeare": Source(
        "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed", "tinyshakespeare.txt", bundled=True),
}
_BLOCK = 1 << 16
# How an offline user gets a corpus in anyway; the CLI and the examples name their own option.
LOCAL_HINT = "pass the path of that file instead"


def bundled_path(name):
    """Where the package keeps its compressed copy of the named corpus ``name``."""
    return Path(str(importlib.resources.files("scratchlm") / "corpora" / (CORPORA[name].filename + ".gz")))


def default_cache_dir():
    """``$SCRATCHLM_CACHE`` if set, else ``~/.cache/scratchlm``."""
    return Path(os.environ.get("SCRATCHLM_CACHE") or Path.home() / ".cache" / "scratchlm")


def sha256_of(path):
    """Hex SHA-256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _is_url(s):
    return urllib.parse.urlparse(str(s)).scheme in ("http", "https")


def fetch(name_or_url, cache_dir=None, sha256=None, timeout=30.0, local_hint=LOCAL_HINT):
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
        raise CorpusError(f"unknown corpus {name_or_url!r}: use {' or '.join(CORPORA)}, an http(s) URL, "
                          "or the path of a text file")
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"cannot create the cache directory {directory} ({exc.strerror}): "
                            "set SCRATCHLM_CACHE to a writable directory") from None
    dest = directory / filename
    if dest.is_file() and (sha256 is None or sha256_of(dest) == sha256):
        return dest
    part = dest.with_name(dest.name + ".part")
    _download(url, part, timeout, local_hint)
    if sha256 is not None:
        got = sha256_of(part)
        if got != sha256:
            part.unlink()
            raise DownloadError(f"the download of {url} has SHA-256 {got}, expected {sha256}: "
                                "the file on the server changed or was damaged in transit; try again, "
                                f"or download it yourself and {local_hint}")
    os.replace(part, dest)       # atomic: dest is either the old file or the complete new one
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
        if exc.code == 416 and have:      # nothing after byte `have`: the partial file is already whole
            return
        raise DownloadError(f"could not download {url}: HTTP {exc.code} {exc.reason}; "
                            + _offline_hint(url, local_hint)) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(f"could not reach {url} ({reason}); are you offline? "
                            + _offline_hint(url, local_hint)) from None
    with response:
        resumed = have and response.status == 206 and \
            response.headers.get("Content-Range", "").startswith(f"bytes {have}-")
        length = response.headers.get("Content-Length")
        expected = None if length is None else int(length) + (have if resumed else 0)
        with open(part, "ab" if resumed else "wb") as f, \
                tqdm(total=expected, initial=have if resumed else 0, unit="B", unit_scale=True,
                     desc=Path(urllib.parse.urlparse(url).path).name, disable=None, file=sys.stderr) as bar:
            try:
                for block in iter(lambda: response.read(_BLOCK), b""):
                    f.write(block)
                    bar.update(len(block))
            except OSError as exc:  # connection reset, timeout, IncompleteRead
                raise DownloadError(f"the download of {url} broke off after {f.tell():,} bytes ({exc}); "
                                    "run again to continue it, or " + _offline_hint(url, local_hint)) from None
            finally:
                f.flush()
                os.fsync(f.fileno())
            size = f.tell()
    if expected is not None and size < expected:
        raise DownloadError(f"the download of {url} broke off after {size:,} of {expected:,} bytes; "
                            "run again to continue it, or " + _offline_hint(url, local_hint))


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
        raise CorpusError(f"{path} is not a whole gzip file ({exc}): decompress it yourself or fetch it again") \
            from None
    except OSError as exc:
        raise CorpusError(f"cannot read {path}: {exc.strerror}") from None
    if len(data) > limit:
        raise CorpusError(f"{path} holds more than {budget.human(limit)} of text, half the memory available now: "
                          "train on a part of it, or on a machine with more memory")
    got = sha256 and hashlib.sha256(data).hexdigest()
    if got != sha256:
        raise CorpusError(f"{path} holds text with SHA-256 {got}, expected {sha256}: "
                          "the file is damaged; reinstall scratchlm (pip install --force-reinstall scratchlm)")
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


def read_text(path, sha256=None):
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
        raise CorpusError(f"{path} is not UTF-8 text (bad byte at offset {exc.start}): "
                          "convert it to UTF-8 first") from None


def load_text(corpus, cache_dir=None, local_hint=LOCAL_HINT):
    """Text of ``corpus``: an existing file path, a named corpus (bundled or fetched) or a URL (fetched).

    ``local_hint`` finishes the message of a failed download: how the caller
    takes a local file instead (the CLI and the examples name their option).
    """
    if Path(corpus).exists():
        return read_text(corpus)
    if corpus in CORPORA and CORPORA[corpus].bundled:            # checked as it is read: one decompression
        return read_text(bundled_path(corpus), CORPORA[corpus].sha256)
    if corpus in CORPORA or _is_url(corpus):
        return read_text(fetch(corpus, cache_dir=cache_dir, local_hint=local_hint))
    raise CorpusError(f"no such file: {corpus} (the named corpora are {', '.join(CORPORA)})")


def fingerprint(*arrays):
    """Hex SHA-256 of arrays' dtypes, shapes and bytes: identifies the data a run was trained on."""
    digest = hashlib.sha256()
    for a in arrays:
        a = numpy.ascontiguousarray(a)
        digest.update(f"{a.dtype.str}{a.shape}".encode())
        digest.update(a.data)
    return digest.hexdigest()


def split_tail(ids, val_fraction):
    """(train, val): the last ``val_fraction`` (a number in [0, 1)) of a token sequence is held out, contiguous."""
    _check_fraction(val_fraction)
    n_val = int(len(ids) * val_fraction)
    return ids[:len(ids) - n_val], ids[len(ids) - n_val:]


def split_sequences(sequences, val_fraction, seed=0):
    """(train, val) lists of sequences: a seeded random ``val_fraction`` of them is held out.

    val_fraction: a number in [0, 1); seed: a whole number >= 0.
    """
    _check_fraction(val_fraction)
    order = numpy.random.default_rng(_whole("seed", seed, 0)).permutation(len(sequences))
    n_val = int(len(sequences) * val_fraction)
    held = set(order[:n_val].tolist())
    return ([s for i, s in enumerate(sequences) if i not in held],
            [s for i, s in enumerate(sequences) if i in held])


# -- batches ---------------------------------------------------------------------

class Batch(NamedTuple):
    x: numpy.ndarray            # (B, T) int64 input ids
    y: numpy.ndarray            # (B, T) next-token targets, or (B,) when the batcher is last_only
    mask: object                # (B, T) bool, True = real token, or None
    targets: int                # number of scored targets (the loss is their mean)


def _order(n, seed, epoch, shuffle):
    """0..n-1, shuffled by (seed, epoch) when ``shuffle``; int32 when it fits (half the memory)."""
    order = numpy.arange(n, dtype=numpy.int32 if n < 2 ** 31 else numpy.int64)
    if shuffle:
        numpy.random.default_rng([seed, epoch]).shuffle(order)
    return order


def _check_fraction(val_fraction):
    """Raise CorpusError unless the validation fraction is a real number in [0, 1)."""
    if (isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float, numpy.integer, numpy.floating))
            or not 0 <= val_fraction < 1):
        raise CorpusError(f"the validation fraction must be a number in [0, 1) such as 0.1, got {val_fraction!r}")


def _whole(name, value, minimum=1):
    """``value`` as an int; CorpusError unless it is a whole number (Python or NumPy integer, not bool) >= minimum."""
    if isinstance(value, bool) or not isinstance(value, (int, numpy.integer)) or value < minimum:
        raise CorpusError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return int(value)


def _id_array(ids):
    """``ids`` as a 1-D NumPy array; :func:`_check_ids` checks its values once a too-short corpus is ruled out."""
    ids = numpy.asarray(ids)
    if ids.ndim != 1:
        raise CorpusError(f"token ids must form a 1-D sequence, got an array of shape {ids.shape}: "
                          "pass one flat array of ids")
    return ids


def _check_ids(ids):
    """Raise CorpusError unless the 1-D array ``ids`` holds non-negative integers (token ids)."""
    if ids.dtype.kind not in "iu":
        raise CorpusError(f"token ids must be integers, got {ids.dtype}: encode the text with a tokenizer")
    if ids.size and int(ids.min()) < 0:
        raise CorpusError(f"token ids must be >= 0, got {int(ids.min())}")


class Windows:
    """Windows ids[s : s+maxlen] for s = 0, step, 2·step, ... < N - maxlen; target ids[s+maxlen].

    With the Keras Nietzsche setup (600,902 characters, maxlen 60, step 3) that
    is 200,281 windows. Each epoch visits them in a fresh seeded order, in
    batches of ``batch_size`` (the last batch may be smaller, as in Keras'
    ``fit``). ``last_only`` (default): one target per window, y (B,); otherwise
    y (B, maxlen) holds the next token of every position.
    Memory: the ids plus one int32 permutation of the windows per epoch.
    ids: a 1-D array of non-negative integer token ids; maxlen, step,
    batch_size: whole numbers >= 1; seed: a whole number >= 0. Raises
    :class:`CorpusError` otherwise, or when the corpus holds no window.
    """

    stateful = False
    eos_id = None                 # sequences run on; no <eos> ends them

    def __init__(self, ids, maxlen=60, step=3, batch_size=128, seed=0, shuffle=True, last_only=True):
        self.ids = _id_array(ids)
        self.maxlen = _whole("maxlen", maxlen)
        self.step = _whole("step", step)
        self.batch_size = _whole("batch size", batch_size)
        self.seed, self.shuffle, self.last_only = _whole("seed", seed, 0), bool(shuffle), bool(last_only)
        self.num_windows = max(0, math.ceil((len(self.ids) - self.maxlen) / self.step))
        if self.num_windows == 0:
            raise CorpusError(f"the corpus holds {len(self.ids):,} tokens; windows of {self.maxlen} need at "
                              f"least {self.maxlen + 1:,}: use a longer corpus or a smaller window")
        _check_ids(self.ids)
        self.num_batches = math.ceil(self.num_windows / self.batch_size)
        self._offsets = numpy.arange(self.maxlen)                              # (T,)

    def __str__(self):
        return (f"{self.num_windows:,} windows of {self.maxlen} (step {self.step}) in "
                f"{self.num_batches:,} batches of {self.batch_size} per epoch")

    @functools.cached_property
    def config(self):
        """What a checkpoint records and a resumed run must match (the fingerprint hashes the ids once)."""
        return {"kind": "windows", "maxlen": self.maxlen, "step": self.step, "batch_size": self.batch_size,
                "seed": self.seed, "shuffle": self.shuffle, "last_only": self.last_only,
                "num_batches": self.num_batches, "fingerprint": fingerprint(self.ids)}

    def batches(self, epoch, start=0):
        """Yield the Batch'es of ``epoch`` from batch number ``start`` on."""
        order = _order(self.num_windows, self.seed, epoch, self.shuffle)
        B = self.batch_size
        for k in range(start, self.num_batches):
            s = order[k * B:(k + 1) * B].astype(numpy.int64) * self.step       # (B,) window starts
            x = self.ids[s[:, None] + self._offsets].astype(numpy.int64)      # (B, T)
            if self.last_only:
                y = self.ids[s + self.maxlen].astype(numpy.int64)             # (B,)
            else:
                y = self.ids[s[:, None] + self._offsets + 1].astype(numpy.int64)
            yield Batch(x, y, None, y.size)

    def random_prompt(self, rng, length=None):
        """A window of ``length`` (default maxlen) ids from a random start (the book's sample seed)."""
        return _random_slice(self.ids, rng, length or self.maxlen)


def _random_slice(ids, rng, length):
    length = min(length, len(ids) - 1)
    start = int(rng.integers(0, len(ids) - length))
    return ids[start:start + length].astype(numpy.int64)


class Streams:
    """B parallel contiguous streams read in chunks of T (stateful truncated BPTT).

    With L = (N - 1) // B, stream b is ids[b·L : (b+1)·L + 1]. Batch k holds, for
    every stream, the chunk x = ids[b·L + kT : b·L + (k+1)T] and its targets
    shifted by one, y = ids[b·L + kT + 1 : b·L + (k+1)T + 1]. So row b of batch
    k+1 continues row b of batch k, and an LSTM that carries its state across
    batches reads each stream as one long sequence, while gradients flow back
    only T steps. The batch order is fixed (it *is* the text order); the model's
    state must be reset at each epoch's start. The tail that does not fill a
    whole chunk (fewer than T tokens per stream) is left out.
    ids: a 1-D array of non-negative integer token ids; batch_size, seq_len:
    whole numbers >= 1. Raises :class:`CorpusError` otherwise, or when the
    corpus does not fill one chunk of every stream.
    """

    stateful = True
    last_only = False
    eos_id = None

    def __init__(self, ids, batch_size=64, seq_len=100):
        self.ids = _id_array(ids)
        self.batch_size = B = _whole("batch size", batch_size)
        self.seq_len = T = _whole("sequence length", seq_len)
        self.stream_len = max(0, len(self.ids) - 1) // B                  # an empty corpus: 0, not -1
        self.num_batches = self.stream_len // T
        if self.num_batches == 0:
            raise CorpusError(f"the corpus holds {len(self.ids):,} tokens; {B} streams of chunks of {T} need at "
                              f"least {B * T + 1:,}: use a longer corpus, a smaller batch size or sequence length")
        _check_ids(self.ids)
        self._starts = numpy.arange(B, dtype=numpy.int64)[:, None] * self.stream_len   # (B, 1)
        self._offsets = numpy.arange(T)                                                   # (T,)

    def __str__(self):
        return (f"{self.batch_size} streams of {self.stream_len:,} tokens in {self.num_batches:,} chunks "
                f"of {self.seq_len} per epoch")

    @functools.cached_property
    def config(self):
        return {"kind": "streams", "batch_size": self.batch_size, "seq_len": self.seq_len,
                "num_batches": self.num_batches, "fingerprint": fingerprint(self.ids)}

    def batches(self, epoch, start=0):
        """Yield the Batch'es from chunk ``start`` on (the same every epoch)."""
        T = self.seq_len
        for k in range(start, self.num_batches):
            cols = self._starts + k * T + self._offsets                       # (B, T) positions
            yield Batch(self.ids[cols].astype(numpy.int64), self.ids[cols + 1].astype(numpy.int64),
                        None, cols.size)

    def random_prompt(self, rng, length=None):
        return _random_slice(self.ids, rng, length or self.seq_len)


class Padded:
    """One sequence per line or record, padded per batch, <eos> at both ends, with a mask.

    A sequence t_1..t_n is trained as   x = <eos> t_1 ... t_n
                                        y = t_1  ...  t_n <eos>
    so the model learns how sequences start (after an <eos>) and when they end
    (predict <eos>); generation starts from <eos> and stops at the next one.
    ``maxlen`` caps x's length (longer sequences are cut). Each batch is padded
    with ``pad_id`` to its longest row; mask (B, T) marks the real steps, so
    padding neither moves the LSTM state nor counts in the loss. Sequences
    are stored concatenated with an offsets array, not as (N, T) rows.
    sequences: an iterable of 1-D arrays of non-negative integer token ids
    (empty ones are dropped, at least one must remain); eos_id, pad_id: whole
    numbers >= 0; batch_size and maxlen (or None): whole numbers >= 1; seed:
    a whole number >= 0. Raises :class:`CorpusError` otherwise.
    """

    stateful = False
    last_only = False

    def __init__(self, sequences, eos_id, pad_id, batch_size=32, maxlen=None, seed=0, shuffle=True):
        sequences = [s for s in map(_id_array, sequences) if s.size]
        if not sequences:
            raise CorpusError("the corpus holds no non-empty sequence (line or record) to train on")
        if eos_id is None or pad_id is None:
            raise CorpusError("padded batches need a vocabulary with <pad> and <eos> ids (reserved=True)")
        self.eos_id, self.pad_id = _whole("eos_id", eos_id, 0), _whole("pad_id", pad_id, 0)
        self.batch_size = _whole("batch size", batch_size)
        self.maxlen = None if maxlen is None else _whole("maxlen", maxlen)
        self.seed, self.shuffle = _whole("seed", seed, 0), bool(shuffle)
        lengths = numpy.array([s.size for s in sequences], dtype=numpy.int64)
        self.offsets = numpy.concatenate([[0], numpy.cumsum(lengths)])        # (n+1,)
        self.ids = numpy.concatenate(sequences)
        _check_ids(self.ids)
        self.num_sequences = len(sequences)
        self.num_batches = math.ceil(self.num_sequences / self.batch_size)

    def __str__(self):
        return (f"{self.num_sequences:,} sequences in {self.num_batches:,} padded batches of "
                f"{self.batch_size} per epoch")

    @functools.cached_property
    def config(self):
        return {"kind": "padded", "batch_size": self.batch_size, "maxlen": self.maxlen, "seed": self.seed,
                "shuffle": self.shuffle, "num_batches": self.num_batches,
                "fingerprint": fingerprint(self.ids, self.offsets)}

    def _sequence(self, i):
        return self.ids[self.offsets[i]:self.offsets[i + 1]]

    def batches(self, epoch, start=0):
        order = _order(self.num_sequences, self.seed, epoch, self.shuffle)
        B = self.batch_size
        for k in range(start, self.num_batches):
            rows = [self._sequence(i) for i in order[k * B:(k + 1) * B]]
            full = [numpy.concatenate([[self.eos_id], r, [self.eos_id]]) for r in rows]   # <eos> t_1..t_n <eos>
            if self.maxlen is not None:
                full = [f[:self.maxlen + 1] for f in full]
            T = max(len(f) - 1 for f in full)
            x = numpy.full((len(full), T), self.pad_id, dtype=numpy.int64)   # (B, T)
            y = numpy.full((len(full), T), self.pad_id, dtype=numpy.int64)
            mask = numpy.zeros((len(full), T), dtype=bool)
            for b, f in enumerate(full):
                n = len(f) - 1
                x[b, :n], y[b, :n], mask[b, :n] = f[:-1], f[1:], True
            yield Batch(x, y, mask, int(mask.sum()))

    def random_prompt(self, rng, length=None):
        """The start of a sequence: <eos> alone."""
        return numpy.array([self.eos_id], dtype=numpy.int64)
