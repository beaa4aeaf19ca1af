"""Memory budget: refuse work that cannot fit before allocating it, with the estimate in the message.

A model with ``--hidden 100000`` or a sample of 10^11 tokens would otherwise
fail deep inside NumPy (a MemoryError traceback) or, worse, after an epoch of
training. Callers estimate the bytes they are about to need and call
:func:`check_fits` first; it compares them with the memory this machine has
available now (``MemAvailable`` in ``/proc/meminfo``, else the physical
memory) and raises :class:`ResourceError` when they cannot fit.

A training run holds several things at once, and :func:`check_parts` weighs
them together and names each one's size when they cannot fit: the
parameters with their gradients and optimizer slots, one training step's
activations (:func:`step_bytes`), a batch (:func:`batch_bytes`) and, for the
Transformer, the vectorized texts (:func:`vectorized_bytes`). The estimates
count what the code allocates, per position of a batch, from a model's config
(the dict a checkpoint's header holds); tests/test_budget.py holds them to
within a factor of 1.5 of the peak tracemalloc measures for one step.
Notation as in docs/design.md: B batch, T time steps, V vocabulary, E
embedding, H hidden units, G gate blocks, N heads, K key_dim, F dense_dim.
"""

import os
from typing import NamedTuple

from .errors import ScratchLMError


class ResourceError(ScratchLMError):
    """What was asked for needs more memory than this machine has available."""


def available_bytes():
    """Bytes of memory available to a new allocation now, or None when the system does not say."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None


def human(nbytes):
    """1536 -> '1.5 KiB'; 2.5e12 -> '2.3 TiB'; 1e30 -> '8.88e+14 PiB'."""
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            break
        value /= 1024
    if unit == "B":
        return f"{value:.0f} B"
    return f"{value:.1f} {unit}" if value < 1e6 else f"{value:.3g} {unit}"


def check_fits(nbytes, what, fix):
    """Raise :class:`ResourceError` if ``nbytes`` exceed the available memory.

    what: the thing being built ("the model's weights, gradients and optimizer state").
    fix: what the user can change ("use fewer --hidden units").
    Does nothing when the available memory is unknown.
    """
    have = available_bytes()
    if have is not None and nbytes > have:
        raise ResourceError(
            f"{what} would need about {human(nbytes)}, but only {human(have)} of memory is available: {fix}"
        )


class Part(NamedTuple):
    """One thing a run holds in memory, for :func:`check_parts`."""

    what: str  # e.g. "one training step's activations"
    nbytes: int
    sizes: str  # the settings it grows with, e.g. "--batch-size 32, --seq-len 100"


def check_parts(parts, what, fix):
    """Raise :class:`ResourceError` if the ``parts`` (:class:`Part`) together exceed the available memory.

    The message gives the total, then each part's size and the settings it grows with, largest first.
    what: the whole ("training"); fix: what the user can do. Does nothing when the memory is unknown.
    """
    total = sum(part.nbytes for part in parts)
    have = available_bytes()
    if have is None or total <= have:
        return
    listed = "; ".join(
        f"{part.what} {human(part.nbytes)}" + (f" ({part.sizes})" if part.sizes else "")
        for part in sorted(parts, key=lambda part: -part.nbytes)
    )
    raise ResourceError(
        f"{what} would need about {human(total)}, but only {human(have)} of memory is available: {listed}; {fix}"
    )


# -- what training holds ------------------------------------------------------------

GATES = {"lstm": 4, "gru": 3}  # gate blocks G of a recurrent cell
LOSS_CHUNK = 1 << 23  # logits per chunk of the fused loss (scratchlm/kernels/numba/xent.py's CHUNK)
BATCH_BYTES = 32  # per position: int64 inputs and targets and their gathering
_ITEMSIZE = {"float32": 4, "float64": 8}


def step_bytes(config, batch, steps, fused, last_only=False):
    """Bytes one training step (forward, loss, backward) of the model ``config`` describes holds at its peak,
    beyond the parameters and their gradients, for ``batch`` sequences of ``steps`` tokens.

    config: a model config as in a checkpoint's header (``kind`` "recurrent" or "transformer").
    fused: the backend runs the fused kernels (``backend.kernels == "fused"``), else the reference path.
    last_only: only each sequence's last step is scored (windows batching; recurrent models only).
    """
    if config["kind"] == "transformer":
        return _transformer_step(config, batch, steps, fused)
    return _recurrent_step(config, batch, steps, fused, last_only)


def _recurrent_step(config, B, T, fused, last_only):
    """Per position, each layer of H units keeps its G·H gate activations and two (T+1, B, H) records (h
    and c; the GRU's h and û_h), and with dropout a keep-mask, its output and later its gradient (3·H).
    An Embedding read without the token table (V > T·B) adds its (T, B, E) output. The backward of a
    layer adds an H-sized gradient on the fused path; the reference adds its input projection and dz
    (2·G·H) too. The logits (T·B or B rows of V) are one array on the fused path, about three (logits,
    probabilities, their gradient) on the reference path.
    """
    V, E, hidden = config["vocab_size"], config["embedding_dim"], config["hidden_sizes"]
    G = GATES[config["cell"]]
    kept = sum((G + 2) * H for H in hidden)
    if config["dropout"] > 0:
        kept += 3 * sum(hidden)
    if E is not None and V > T * B:
        kept += E
    work = max(hidden) if fused else max((2 * G + 2) * H for H in hidden)
    rows = B if last_only else T * B
    logits = rows * V * (1 if fused else 3)
    return _ITEMSIZE[config["dtype"]] * (T * B * (kept + work) + logits)


def _transformer_step(config, B, T, fused):
    """Per position, with P = N·K: the embedding's output (E); per book block two attentions' q, k, v, o
    (8·P), three residual sums and LayerNorm outputs (6·E) and the feed-forward's hidden units (F); per
    gpt block one attention (4·P), 4·E and F, plus the final LayerNorm (2·E); the backward of a block
    adds about 4·P + 10·E + F. The model's (B, T, T) bool attention mask is built on both paths. The
    reference path also keeps each attention's (B, N, T, T) probabilities and its backward makes two
    more score-sized arrays; its loss holds about three (B·T, V) arrays, where the fused loss holds one
    chunk of at most :data:`LOSS_CHUNK` logits (and an (E, V) partial dW when there are several).
    """
    V, E, F = config["vocab_size"], config["embed_dim"], config["dense_dim"]
    P, layers = config["num_heads"] * config["key_dim"], config["num_layers"]
    book = config["block"] == "book"
    attentions = layers * (2 if book else 1)
    kept = E + layers * ((8 * P + 6 * E + F) if book else (4 * P + 4 * E + F)) + (0 if book else 2 * E)
    work = 4 * P + 10 * E + F
    floats = B * T * (kept + work)
    if fused:
        rows = min(B * T, max(1, LOSS_CHUNK // V))
        floats += rows * V + (E * V if rows < B * T else 0)
    else:
        floats += B * config["num_heads"] * T * T * (attentions + 2) + 3 * B * T * V
    return _ITEMSIZE[config["dtype"]] * floats + B * T * T


def batch_bytes(batch, steps):
    """Bytes of one batch of ``batch`` sequences of ``steps`` tokens as the batchers gather it."""
    return BATCH_BYTES * batch * steps


def vectorized_bytes(texts, length, vocab_size):
    """Bytes :func:`scratchlm.datasets.imdb.vectorize` needs for ``texts`` rows of ``length`` ids, at its peak (the
    blocks and their join; the split into training and validation rows then copies the matrix once more)."""
    itemsize = 2 if vocab_size <= 1 << 16 else 4
    return 2 * texts * length * itemsize
