"""Batches: how a token sequence is cut into training batches.

Five training batchers, all with the same interface (``num_batches``,
``batches(epoch, start)``, ``config``, ``last_only``, ``stateful``, ``eos_id``,
``random_prompt``), each yielding :class:`Batch` es:

* :class:`Windows` — every ``step``-th window of ``maxlen`` tokens, the target
  being the token after it (the Keras Nietzsche book setup: ``last_only``).
* :class:`Streams` — the sequence cut into B parallel contiguous streams, read
  in consecutive chunks of T with targets shifted by one: stateful truncated
  BPTT, where the LSTM state flows from one chunk to the next.
* :class:`RandomWindows` — windows of T + 1 tokens from random starts, every position
  scored (nanoGPT's ``get_batch``): each batch drawn afresh from (seed, epoch, batch).
* :class:`Padded` — one sequence per line or record, padded per batch, with
  <eos> marking both ends and a mask over the real steps.
* :class:`Vectorized` — the rows of an (N, L) id matrix cut into x = ids[:, :-1],
  y = ids[:, 1:] (the IMDB seed's batches; :mod:`scratchlm.datasets.imdb` makes the matrix).

:class:`Whole` reads a text for scoring (``scratchlm eval``): every target once, in order.
:func:`split_tail` and :func:`split_sequences` hold out the validation part first.

Streaming: no batcher materialises its (N, T) windows or any one-hot array.
They keep the token ids (one or two bytes each) plus start offsets, and gather
each (B, T) batch when it is asked for. Shuffling is a permutation drawn from
``numpy.random.default_rng([seed, epoch])`` (:func:`epoch_order`), so batch k of
epoch e is the same in every run with the same seed — which is what lets a
resumed run skip to the exact batch where it stopped.
"""

import functools
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

import numpy
from numpy.typing import ArrayLike

from .checks import require_whole
from .corpora import CorpusError, fingerprint


class Batch(NamedTuple):
    """One training batch: inputs, targets, the mask of real steps, and how many targets are scored."""

    x: numpy.ndarray  # (B, T) int64 input ids
    y: numpy.ndarray  # (B, T) next-token targets, or (B,) when the batcher is last_only
    mask: numpy.ndarray | None  # (B, T) bool, True = real token, or None
    targets: int  # number of scored targets (the loss is their mean)


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool) -> numpy.ndarray:
    """0..n-1, shuffled by (seed, epoch) when ``shuffle``; int32 when it fits (half the memory)."""
    order = numpy.arange(n, dtype=numpy.int32 if n < 2**31 else numpy.int64)
    if shuffle:
        numpy.random.default_rng([seed, epoch]).shuffle(order)
    return order


def _whole(name, value, minimum=1):
    """``value`` as an int; CorpusError unless it is a whole number (Python or NumPy integer, not bool) >= minimum."""
    return require_whole(name, value, minimum, CorpusError)


# -- holding out the validation part -------------------------------------------------------


def split_tail(ids: numpy.ndarray, val_fraction: float) -> tuple[numpy.ndarray, numpy.ndarray]:
    """(train, val): the last ``val_fraction`` (a number in [0, 1)) of a token sequence is held out, contiguous."""
    _check_fraction(val_fraction)
    n_val = int(len(ids) * val_fraction)
    return ids[: len(ids) - n_val], ids[len(ids) - n_val :]


def split_sequences(
    sequences: Sequence[numpy.ndarray], val_fraction: float, seed: int = 0
) -> tuple[list[numpy.ndarray], list[numpy.ndarray]]:
    """(train, val) lists of sequences: a seeded random ``val_fraction`` of them is held out.

    val_fraction: a number in [0, 1); seed: a whole number >= 0.
    """
    _check_fraction(val_fraction)
    order = numpy.random.default_rng(_whole("seed", seed, 0)).permutation(len(sequences))
    n_val = int(len(sequences) * val_fraction)
    held = set(order[:n_val].tolist())
    return ([s for i, s in enumerate(sequences) if i not in held], [s for i, s in enumerate(sequences) if i in held])


def _check_fraction(val_fraction):
    """Raise CorpusError unless the validation fraction is a real number in [0, 1)."""
    if (
        isinstance(val_fraction, bool)
        or not isinstance(val_fraction, (int, float, numpy.integer, numpy.floating))
        or not 0 <= val_fraction < 1
    ):
        raise CorpusError(f"the validation fraction must be a number in [0, 1) such as 0.1, got {val_fraction!r}")


# -- the batchers ---------------------------------------------------------------------


def _id_array(ids):
    """``ids`` as a 1-D NumPy array; :func:`_check_ids` checks its values once a too-short corpus is ruled out."""
    ids = numpy.asarray(ids)
    if ids.ndim != 1:
        raise CorpusError(
            f"token ids must form a 1-D sequence, got an array of shape {ids.shape}: pass one flat array of ids"
        )
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
    eos_id = None  # sequences run on; no <eos> ends them

    def __init__(
        self,
        ids: ArrayLike,
        maxlen: int = 60,
        step: int = 3,
        batch_size: int = 128,
        seed: int = 0,
        shuffle: bool = True,
        last_only: bool = True,
    ):
        self.ids = _id_array(ids)
        self.maxlen = _whole("maxlen", maxlen)
        self.step = _whole("step", step)
        self.batch_size = _whole("batch size", batch_size)
        self.seed, self.shuffle, self.last_only = _whole("seed", seed, 0), bool(shuffle), bool(last_only)
        self.num_windows = max(0, math.ceil((len(self.ids) - self.maxlen) / self.step))
        if self.num_windows == 0:
            raise CorpusError(
                f"the corpus holds {len(self.ids):,} tokens; windows of {self.maxlen} need at "
                f"least {self.maxlen + 1:,}: use a longer corpus or a smaller window"
            )
        _check_ids(self.ids)
        self.num_batches = math.ceil(self.num_windows / self.batch_size)
        self._offsets = numpy.arange(self.maxlen)  # (T,)

    def __str__(self) -> str:
        return (
            f"{self.num_windows:,} windows of {self.maxlen} (step {self.step}) in "
            f"{self.num_batches:,} batches of {self.batch_size} per epoch"
        )

    @functools.cached_property
    def config(self) -> dict:
        """What a checkpoint records and a resumed run must match (the fingerprint hashes the ids once)."""
        return {
            "kind": "windows",
            "maxlen": self.maxlen,
            "step": self.step,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "last_only": self.last_only,
            "num_batches": self.num_batches,
            "fingerprint": fingerprint(self.ids),
        }

    def batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """Yield the Batch'es of ``epoch`` from batch number ``start`` on."""
        order = epoch_order(self.num_windows, self.seed, epoch, self.shuffle)
        B = self.batch_size
        for k in range(start, self.num_batches):
            s = order[k * B : (k + 1) * B].astype(numpy.int64) * self.step  # (B,) window starts
            x = self.ids[s[:, None] + self._offsets].astype(numpy.int64)  # (B, T)
            if self.last_only:
                y = self.ids[s + self.maxlen].astype(numpy.int64)  # (B,)
            else:
                y = self.ids[s[:, None] + self._offsets + 1].astype(numpy.int64)
            yield Batch(x, y, None, y.size)

    def random_prompt(self, rng: numpy.random.Generator, length: int | None = None) -> numpy.ndarray:
        """A window of ``length`` (default maxlen) ids from a random start (the book's sample seed)."""
        return _random_slice(self.ids, rng, length or self.maxlen)


def _random_slice(ids, rng, length):
    length = min(length, len(ids) - 1)
    start = int(rng.integers(0, len(ids) - length))
    return ids[start : start + length].astype(numpy.int64)


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

    def __init__(self, ids: ArrayLike, batch_size: int = 64, seq_len: int = 100):
        self.ids = _id_array(ids)
        self.batch_size = B = _whole("batch size", batch_size)
        self.seq_len = T = _whole("sequence length", seq_len)
        self.stream_len = max(0, len(self.ids) - 1) // B  # an empty corpus: 0, not -1
        self.num_batches = self.stream_len // T
        if self.num_batches == 0:
            raise CorpusError(
                f"the corpus holds {len(self.ids):,} tokens; {B} streams of chunks of {T} need at "
                f"least {B * T + 1:,}: use a longer corpus, a smaller batch size or sequence length"
            )
        _check_ids(self.ids)
        self._starts = numpy.arange(B, dtype=numpy.int64)[:, None] * self.stream_len  # (B, 1)
        self._offsets = numpy.arange(T)  # (T,)

    def __str__(self) -> str:
        return (
            f"{self.batch_size} streams of {self.stream_len:,} tokens in {self.num_batches:,} chunks "
            f"of {self.seq_len} per epoch"
        )

    @functools.cached_property
    def config(self) -> dict:
        return {
            "kind": "streams",
            "batch_size": self.batch_size,
            "seq_len": self.seq_len,
            "num_batches": self.num_batches,
            "fingerprint": fingerprint(self.ids),
        }

    def batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """Yield the Batch'es from chunk ``start`` on (the same every epoch)."""
        T = self.seq_len
        for k in range(start, self.num_batches):
            cols = self._starts + k * T + self._offsets  # (B, T) positions
            yield Batch(self.ids[cols].astype(numpy.int64), self.ids[cols + 1].astype(numpy.int64), None, cols.size)

    def random_prompt(self, rng: numpy.random.Generator, length: int | None = None) -> numpy.ndarray:
        return _random_slice(self.ids, rng, length or self.seq_len)


class RandomWindows:
    """nanoGPT's ``get_batch``: B windows of T + 1 tokens from random starts, every position scored.

    Batch k of epoch e draws B starts i uniformly from 0 … N - T - 1 with
    ``numpy.random.default_rng([seed, e, k])`` and takes x = ids[i : i+T],
    y = ids[i+1 : i+T+1], both (B, T). The draw depends only on (seed, epoch,
    batch), so a resumed run draws exactly the batches the uninterrupted run
    would have, and under MPI every rank draws the same global batch and takes
    its share of the rows. An "epoch" is a fixed number of batches:
    ``num_batches`` (default max(1, N // (B·T)), about one pass's worth of
    tokens); windows overlap and repeat, as nanoGPT's do.
    ids: a 1-D array of non-negative integer token ids; batch_size, seq_len:
    whole numbers >= 1; num_batches: None or a whole number >= 1; seed: a whole
    number >= 0. Raises :class:`CorpusError` otherwise, or when the corpus
    holds no window of T + 1 tokens.
    """

    stateful = False
    last_only = False
    eos_id = None

    def __init__(
        self, ids: ArrayLike, batch_size: int = 64, seq_len: int = 100, seed: int = 0, num_batches: int | None = None
    ):
        self.ids = _id_array(ids)
        self.batch_size = B = _whole("batch size", batch_size)
        self.seq_len = T = _whole("sequence length", seq_len)
        self.seed = _whole("seed", seed, 0)
        self.num_starts = max(0, len(self.ids) - T)  # i = 0 … N - T - 1
        if self.num_starts == 0:
            raise CorpusError(
                f"the corpus holds {len(self.ids):,} tokens; windows of {T} need at least {T + 1:,}: "
                "use a longer corpus or a smaller sequence length"
            )
        _check_ids(self.ids)
        self.num_batches = max(1, len(self.ids) // (B * T)) if num_batches is None else _whole("batches", num_batches)
        self._offsets = numpy.arange(T)  # (T,)

    def __str__(self) -> str:
        return (
            f"{self.num_batches:,} batches of {self.batch_size} random windows of {self.seq_len} "
            f"(from {len(self.ids):,} tokens) per epoch"
        )

    @functools.cached_property
    def config(self) -> dict:
        """What a checkpoint records and a resumed run must match (the fingerprint hashes the ids once)."""
        return {
            "kind": "random",
            "batch_size": self.batch_size,
            "seq_len": self.seq_len,
            "seed": self.seed,
            "num_batches": self.num_batches,
            "fingerprint": fingerprint(self.ids),
        }

    def starts(self, epoch: int, k: int) -> numpy.ndarray:
        """The (B,) window starts of batch ``k`` of ``epoch``."""
        rng = numpy.random.default_rng([self.seed, epoch, k])
        return rng.integers(0, self.num_starts, size=self.batch_size)

    def batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """Yield the Batch'es of ``epoch`` from batch number ``start`` on."""
        for k in range(start, self.num_batches):
            cols = self.starts(epoch, k)[:, None] + self._offsets  # (B, T) positions
            yield Batch(self.ids[cols].astype(numpy.int64), self.ids[cols + 1].astype(numpy.int64), None, cols.size)

    def random_prompt(self, rng: numpy.random.Generator, length: int | None = None) -> numpy.ndarray:
        return _random_slice(self.ids, rng, length or self.seq_len)


class Whole:
    """Every target of a token sequence exactly once, for scoring: B streams read in chunks of T.

    With n = N - 1 targets and B' = min(B, n) streams, stream b holds L_b = n // B' targets (the first
    n mod B' streams one more), consecutive: stream b + 1 starts where stream b ends. Batch k holds columns
    kT … kT + T - 1 of every stream, x = ids[p], y = ids[p + 1]; the last batch may be narrower, and its
    steps past a stream's end are masked (mask None when none is). A stateful model carries its state from
    one batch to the next and so reads each stream as one sequence, as :class:`Streams`; a stateless one
    (the Transformer) sees each chunk alone. ids: a 1-D array of at least 2 non-negative integer ids;
    batch_size, seq_len: whole numbers >= 1.
    """

    stateful = True
    last_only = False

    def __init__(self, ids: ArrayLike, batch_size: int = 64, seq_len: int = 100):
        self.ids = _id_array(ids)
        B, self.seq_len = _whole("batch size", batch_size), _whole("sequence length", seq_len)
        self.targets = n = len(self.ids) - 1
        if n < 1:
            raise CorpusError(f"the text holds {len(self.ids):,} token(s); scoring needs at least 2")
        _check_ids(self.ids)
        self.batch_size = B = min(B, n)
        L, r = divmod(n, B)
        self.lengths = numpy.full(B, L, dtype=numpy.int64) + (numpy.arange(B) < r)  # (B,) targets per stream
        self.starts = numpy.concatenate([[0], numpy.cumsum(self.lengths)[:-1]])  # (B,)
        self.num_batches = math.ceil(int(self.lengths[0]) / self.seq_len)

    def __str__(self) -> str:
        return f"{self.targets:,} targets in {self.batch_size} streams, {self.num_batches:,} chunks of {self.seq_len}"

    def batches(self, epoch: int = 0, start: int = 0) -> Iterator[Batch]:
        """Yield the Batch'es from chunk ``start`` on (``epoch`` is ignored: the order is the text's)."""
        T, longest = self.seq_len, int(self.lengths[0])
        for k in range(start, self.num_batches):
            cols = numpy.arange(k * T, min((k + 1) * T, longest))  # (T',)
            real = cols[None, :] < self.lengths[:, None]  # (B, T')
            p = numpy.where(real, self.starts[:, None] + cols, 0)  # (B, T') positions; 0 past a stream's end
            mask = None if real.all() else real
            yield Batch(self.ids[p].astype(numpy.int64), self.ids[p + 1].astype(numpy.int64), mask, int(real.sum()))


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

    def __init__(
        self,
        sequences: Iterable[ArrayLike],
        eos_id: int | None,
        pad_id: int | None,
        batch_size: int = 32,
        maxlen: int | None = None,
        seed: int = 0,
        shuffle: bool = True,
    ):
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
        self.offsets = numpy.concatenate([[0], numpy.cumsum(lengths)])  # (n+1,)
        self.ids = numpy.concatenate(sequences)
        _check_ids(self.ids)
        self.num_sequences = len(sequences)
        self.num_batches = math.ceil(self.num_sequences / self.batch_size)

    def __str__(self) -> str:
        return f"{self.num_sequences:,} sequences in {self.num_batches:,} padded batches of {self.batch_size} per epoch"

    @functools.cached_property
    def config(self) -> dict:
        return {
            "kind": "padded",
            "batch_size": self.batch_size,
            "maxlen": self.maxlen,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "num_batches": self.num_batches,
            "fingerprint": fingerprint(self.ids, self.offsets),
        }

    def _sequence(self, i):
        return self.ids[self.offsets[i] : self.offsets[i + 1]]

    def batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        order = epoch_order(self.num_sequences, self.seed, epoch, self.shuffle)
        B = self.batch_size
        for k in range(start, self.num_batches):
            rows = [self._sequence(i) for i in order[k * B : (k + 1) * B]]
            full = [numpy.concatenate([[self.eos_id], r, [self.eos_id]]) for r in rows]  # <eos> t_1..t_n <eos>
            if self.maxlen is not None:
                full = [f[: self.maxlen + 1] for f in full]
            T = max(len(f) - 1 for f in full)
            x = numpy.full((len(full), T), self.pad_id, dtype=numpy.int64)  # (B, T)
            y = numpy.full((len(full), T), self.pad_id, dtype=numpy.int64)
            mask = numpy.zeros((len(full), T), dtype=bool)
            for b, f in enumerate(full):
                n = len(f) - 1
                x[b, :n], y[b, :n], mask[b, :n] = f[:-1], f[1:], True
            yield Batch(x, y, mask, int(mask.sum()))

    def random_prompt(self, rng: numpy.random.Generator, length: int | None = None) -> numpy.ndarray:
        """The start of a sequence: <eos> alone."""
        return numpy.array([self.eos_id], dtype=numpy.int64)


class Vectorized:
    """Batches of the IMDB seed: rows of L ids cut into x = ids[:, :-1], y = ids[:, 1:], mask = x != 0.

    ids: an (N, L) integer matrix, L >= 2, padded with ``pad_id`` (0) at the end of each row, as
    :func:`scratchlm.datasets.imdb.vectorize` makes it. Rows that are all padding (a review with no
    word) are dropped: they hold no target. The loss is the mean over positions whose *input* token
    is not padding (Keras masks the seed's loss with the embedding's mask, x != 0), so the last word
    of a short review is trained to predict padding (y = 0), as in the seed. Each epoch visits the
    rows in the order ``numpy.random.default_rng([seed, epoch])`` draws (when ``shuffle``), in
    batches of ``batch_size`` (the last may be smaller). Memory: the id matrix alone, in a compact
    dtype (uint16 when V < 65,536), plus one int32 permutation per epoch; (B, L-1) int64 x and y are
    gathered per batch.
    """

    stateful = False
    last_only = False
    eos_id = None

    def __init__(self, ids: ArrayLike, batch_size: int = 32, seed: int = 0, shuffle: bool = True, pad_id: int = 0):
        ids = numpy.asarray(ids)
        if ids.ndim != 2 or ids.shape[1] < 2:
            raise CorpusError(f"vectorized reviews must form an (N, L) matrix with L >= 2, got shape {ids.shape}")
        if ids.dtype.kind not in "iu":
            raise CorpusError(f"token ids must be integers, got {ids.dtype}: vectorize the texts first")
        if ids.size and int(ids.min()) < 0:
            raise CorpusError(f"token ids must be >= 0, got {int(ids.min())}")
        self.pad_id = _whole("pad_id", pad_id, 0)
        self.batch_size = _whole("batch size", batch_size)
        self.seed, self.shuffle = _whole("seed", seed, 0), bool(shuffle)
        keep = (ids != self.pad_id).any(axis=1)
        if not keep.all():
            ids = ids[keep]
        if len(ids) == 0:
            raise CorpusError("no review holds a word to train on (every row is padding)")
        top = int(ids.max())
        dtype = numpy.uint8 if top < 1 << 8 else numpy.uint16 if top < 1 << 16 else numpy.uint32
        self.ids = ids if ids.dtype == dtype else ids.astype(dtype)
        self.num_sequences, self.length = self.ids.shape
        self.num_batches = math.ceil(self.num_sequences / self.batch_size)

    def __str__(self) -> str:
        return (
            f"{self.num_sequences:,} reviews of {self.length} ids (x, y: {self.length - 1}) in "
            f"{self.num_batches:,} batches of {self.batch_size} per epoch"
        )

    @functools.cached_property
    def config(self) -> dict:
        """What a checkpoint records and a resumed run must match (the fingerprint hashes the ids once)."""
        return {
            "kind": "vectorized",
            "length": self.length,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "pad_id": self.pad_id,
            "num_batches": self.num_batches,
            "fingerprint": fingerprint(self.ids),
        }

    def batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """Yield the Batch'es of ``epoch`` from batch number ``start`` on."""
        order = epoch_order(self.num_sequences, self.seed, epoch, self.shuffle)
        B = self.batch_size
        for k in range(start, self.num_batches):
            rows = self.ids[order[k * B : (k + 1) * B]].astype(numpy.int64)  # (B, L)
            x, y = rows[:, :-1], rows[:, 1:]
            mask = x != self.pad_id
            yield Batch(numpy.ascontiguousarray(x), numpy.ascontiguousarray(y), mask, int(mask.sum()))

    def random_prompt(self, rng: numpy.random.Generator, length: int = 2) -> numpy.ndarray:
        """The first ``length`` words (default 2, like the seed's "this movie") of a random review."""
        row = self.ids[int(rng.integers(0, self.num_sequences))]
        words = row[row != self.pad_id]
        return words[: max(1, int(length))].astype(numpy.int64)
