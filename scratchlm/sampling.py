"""Choosing the next token from logits: temperature, greedy, top-k, top-p, banned ids.

A language model ends in logits z (one score per vocabulary id). Sampling turns
them into a probability distribution and draws an id from it, in four steps:

1. **Banned ids.** An id that must never come out (``[UNK]``, padding) gets the
   logit -inf, hence probability exactly 0.

2. **Temperature T.**   p_i = exp(z_i / T) / sum_j exp(z_j / T)

   T = 1 is the model's own distribution; T < 1 sharpens it (more predictable
   text), T > 1 flattens it (more surprising text). As T -> 0 it tends to the
   one-hot of the argmax, so T = 0 means *greedy*: always the most likely id.
   Computed stably by subtracting the row maximum m first,

       p_i = exp((z_i - m) / T) / sum_j exp((z_j - m) / T),

   which changes nothing mathematically but keeps every exponent <= 0 (no
   overflow) and the largest term at exp(0) = 1 (the sum never underflows to 0).

   The classic Keras text-generation seed reweights softmax probabilities p
   instead: q_i = exp(log(p_i) / T) / sum_j exp(log(p_j) / T). It is the same
   distribution: log p_i = z_i - log sum_j exp(z_j), so exp(log(p_i) / T) =
   exp(z_i / T) times a constant that the renormalisation divides away. Working
   from the logits skips the log(0) = -inf that the seed meets for ids with
   probability 0.

3. **Top-k.** Keep the k most likely ids, set the rest to 0, renormalise.

4. **Top-p (nucleus).** Sort the ids by falling probability and keep the
   shortest head whose probabilities add up to at least p (never fewer than
   one id), set the rest to 0, renormalise. The nucleus adapts its size: few ids
   when the model is sure, many when it is not.

Top-k and top-p act on the distribution *after* temperature, in that order.

Drawing uses the inverse CDF: with c_i = p_0 + ... + p_i and u uniform in [0, 1),
the id is the first i with c_i > u * c_{V-1}. Each id owns a stretch of [0, c_{V-1})
exactly p_i long, so it comes out with probability p_i. The uniform numbers come
from a host ``numpy.random.Generator``, so a seed gives the same ids on NumPy and
on CuPy.

Shapes: logits are (B, V) — one row per sequence in the batch — or a single
row (V,). Everything runs in the logits' array module (NumPy or CuPy) and dtype.
"""

import math
import numbers
from collections.abc import Iterable
from typing import Any

from .backend import Array, array_module
from .checks import is_whole
from .errors import SamplingError


def check_options(temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None) -> None:
    """Raise :class:`SamplingError` (a ValueError) unless the options are usable.

    temperature: a finite real number >= 0 (0 means greedy).
    top_k: None or an integer >= 1.
    top_p: None or a real number in (0, 1].
    """
    if not _is_real(temperature) or not math.isfinite(temperature) or temperature < 0:
        raise SamplingError(f"temperature must be a finite number >= 0 (0 means greedy), got {temperature!r}")
    if top_k is not None and (not is_whole(top_k) or top_k < 1):
        raise SamplingError(f"top_k must be None or an integer >= 1, got {top_k!r}")
    if top_p is not None and (not _is_real(top_p) or not 0 < top_p <= 1):
        raise SamplingError(f"top_p must be None or a number in (0, 1], got {top_p!r}")


def check_banned(banned_ids: Iterable[int], vocab_size: int) -> list[int]:
    """The banned ids as a sorted list of distinct ints; :class:`SamplingError` unless they are usable.

    banned_ids: an iterable of whole numbers (Python or NumPy integers, not
    bools) in [0, vocab_size); at least one id of the vocabulary must stay allowed.
    """
    try:
        ids = list(banned_ids)
    except TypeError:
        raise SamplingError(f"banned ids must be an iterable of token ids such as [0, 3], got {banned_ids!r}") from None
    bad = [i for i in ids if not is_whole(i)]
    if bad:
        raise SamplingError(f"banned ids must be whole numbers (token ids), got {bad[0]!r}")
    ids = sorted({int(i) for i in ids})
    V = vocab_size
    if ids and not (0 <= ids[0] and ids[-1] < V):
        raise SamplingError(f"banned ids must lie in [0, {V}) for a vocabulary of {V}, got {ids[0]}..{ids[-1]}")
    if len(ids) == V:
        raise SamplingError(
            f"every token id is banned (all {V} of them): there is nothing left to sample; ban fewer ids"
        )
    return ids


def probabilities(
    logits: Array,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    banned_ids: Iterable[int] = (),
) -> Array:
    """The distribution that :func:`sample` draws from.

    logits: (B, V) or (V,) NumPy or CuPy array of real numbers, V >= 1 (not modified).
    temperature, top_k, top_p: see :func:`check_options` and the module docstring.
    banned_ids: iterable of integer ids in [0, V) that get probability exactly 0
        (see :func:`check_banned`).
    Returns probabilities of the same shape, array module and dtype; each row
    sums to 1. With temperature 0 each row is the one-hot of the argmax over the
    ids that are not banned (the first one on ties). Integer logits are taken
    as float64. Raises :class:`SamplingError` for bad options, bad banned ids,
    every id banned, logits that are not such an array, or logits with NaN or +inf.
    """
    return _probability_rows(logits, temperature, top_k, top_p, banned_ids).reshape(logits.shape)


def sample(
    logits: Array,
    rng: Any,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    banned_ids: Iterable[int] = (),
) -> Array:
    """Draw one id per row of logits.

    logits: (B, V) or (V,) float array; the other options as in :func:`probabilities`.
    rng: a host ``numpy.random.Generator`` (``Backend.rng(seed)``); B uniform
    numbers are drawn from it per call, none when temperature is 0 (greedy).
    Anything without a ``random`` method raises :class:`SamplingError`.
    Returns int64 ids in the logits' array module: shape (B,) for (B, V) logits,
    a 0-d array for (V,) logits (``int(ids)`` makes it a Python int).
    An id with probability 0 (banned, or cut by top-k/top-p) is never returned.
    """
    if not callable(getattr(rng, "random", None)):
        raise SamplingError(f"rng must be a random generator such as Backend.rng(seed), got {type(rng).__name__}")
    p = _probability_rows(logits, temperature, top_k, top_p, banned_ids)  # (B, V)
    xp = array_module(p)
    if temperature == 0:
        ids = p.argmax(axis=1)
    else:
        u = xp.asarray(rng.random(p.shape[0]))  # (B,) in [0, 1)
        ids = _inverse_cdf(p, u)
    ids = ids.astype(xp.int64)
    return ids if logits.ndim == 2 else ids.reshape(())


# -- the steps ---------------------------------------------------------------


def _probability_rows(logits, temperature, top_k, top_p, banned_ids):
    """All of :func:`probabilities` on rows: logits (B, V) or (V,) -> p (B, V)."""
    check_options(temperature, top_k, top_p)
    z = _masked_logits(logits, banned_ids)  # (B, V)
    if temperature == 0:
        return _one_hot_argmax(z)
    p = _softmax(z, float(temperature))
    if top_k is not None:
        p = _keep_top_k(p, int(top_k))
    if top_p is not None and top_p < 1:  # top_p = 1 keeps everything
        p = _keep_nucleus(p, float(top_p))
    return p


def _masked_logits(logits, banned_ids):
    """A float (B, V) copy of the logits with the banned columns set to -inf."""
    if not hasattr(logits, "dtype"):
        raise SamplingError(
            f"logits must be a NumPy or CuPy array, got {type(logits).__name__}: pass numpy.asarray(logits)"
        )
    if logits.dtype.kind not in "iuf":
        raise SamplingError(f"logits must hold real numbers (float or integer), got {logits.dtype}")
    if logits.ndim not in (1, 2) or logits.shape[-1] == 0:
        raise SamplingError(f"logits must have shape (B, V) or (V,) with V >= 1, got {logits.shape}")
    xp = array_module(logits)
    dtype = logits.dtype if logits.dtype.kind == "f" else xp.float64
    z = xp.array(logits, dtype=dtype, ndmin=2)  # a copy: the caller's logits stay as they are
    ids = check_banned(banned_ids, z.shape[1])
    if ids:
        z[:, ids] = -math.inf
    if not bool(xp.isfinite(z.max(axis=1)).all()):
        raise SamplingError("logits must be finite: a row holds NaN or +inf, or is -inf at every id that is not banned")
    return z


def _one_hot_argmax(z):
    """Greedy: z (B, V) -> one-hot (B, V) of each row's argmax."""
    xp = array_module(z)
    p = xp.zeros_like(z)
    p[xp.arange(z.shape[0]), z.argmax(axis=1)] = 1
    return p


def _softmax(z, temperature):
    """Row-wise softmax(z / T), stably: z (B, V) -> p (B, V)."""
    xp = array_module(z)
    T = representable_temperature(temperature, xp.finfo(z.dtype))
    e = xp.exp((z - z.max(axis=1, keepdims=True)) / T)  # (B, V), each <= 1, the max = 1
    return e / e.sum(axis=1, keepdims=True)


def representable_temperature(temperature: float, finfo: Any) -> float:
    """A temperature T > 0 as a positive finite number of the logits' dtype (``finfo`` of it).

    float32 would turn T = 1e-50 into 0 (and 0/0 = NaN at the maximum) and
    T = 1e50 into inf (-inf/inf = NaN); T is clamped to [finfo.tiny, finfo.max].
    """
    return min(max(float(temperature), float(finfo.tiny)), float(finfo.max))


def _keep_top_k(p, k):
    """Zero all but the k largest probabilities of each row (ties: any k), renormalise."""
    xp = array_module(p)
    B, V = p.shape
    if k >= V:
        return p
    rows = xp.arange(B)[:, None]  # (B, 1)
    top = xp.argpartition(-p, k - 1, axis=1)[:, :k]  # (B, k) ids of the k largest, unordered
    kept = xp.zeros_like(p)
    kept[rows, top] = p[rows, top]
    return kept / kept.sum(axis=1, keepdims=True)


def _keep_nucleus(p, top_p):
    """Keep the shortest most-likely head of each row with mass >= top_p, renormalise."""
    xp = array_module(p)
    rows = xp.arange(p.shape[0])[:, None]  # (B, 1)
    order = xp.argsort(-p, axis=1)  # (B, V) ids by falling probability
    sorted_p = p[rows, order]  # (B, V)
    before = xp.cumsum(sorted_p, axis=1) - sorted_p  # mass ranked above each id; 0 for the top one
    kept = xp.zeros_like(p)
    kept[rows, order] = xp.where(before < top_p, sorted_p, 0)
    return kept / kept.sum(axis=1, keepdims=True)


def _inverse_cdf(p, u):
    """p (B, V) rows summing to 1, u (B,) in [0, 1) -> ids (B,).

    The id is the first i with cdf_i > u * cdf_{V-1}. That i has p_i > 0 as long
    as the cdf stays exactly flat across ids with p_i = 0, which NumPy's
    left-to-right cumsum guarantees. A GPU's parallel scan adds in another order,
    so its cdf can wobble by round-off there, and its last entry can even fall
    below the cdf at the last positive id. So the search only considers ids with
    p_i > 0, and falls back to the last of those when none is above the target.
    """
    xp = array_module(p)
    V = p.shape[1]
    cdf = xp.cumsum(p, axis=1)  # (B, V)
    target = u * cdf[:, -1]  # (B,)
    hit = (cdf > target[:, None]) & (p > 0)  # (B, V)
    last_positive = V - 1 - (p[:, ::-1] > 0).argmax(axis=1)  # (B,)
    return xp.where(hit.any(axis=1), hit.argmax(axis=1), last_positive)


def _is_real(x):
    """A real number, not a bool (True is an int, but never a sensible temperature)."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool)
