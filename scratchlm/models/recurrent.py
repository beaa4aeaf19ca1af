"""RecurrentLM: tokens -> [Embedding | one-hot] -> LSTM or GRU x L -> Dense -> logits.

    logits, state = model.forward(x)                         # (B, T, V)
    loss, grads   = model.loss_and_grads(x, y)               # mean nats per token
    opt.step(model.params, grads)                            # in-place update
    ids           = model.generate(prompt_ids, 200, temperature=0.5)

``LanguageModel`` is another name of the same class (its first name; checkpoints
whose kind is "recurrent" load as either).

Users pass batch-major (B, T) arrays; this model transposes them once and runs
**time-major** inside, (T, B, ...), so that the slice of one time step is
contiguous for the recurrent layers (:meth:`RecurrentLM._run`).

The backend decides which code does the work: every layer, the loss and the
token loop are built through ``backend.layer``, so with ``kernels="fused"`` (the
default on NumPy where Numba is installed, see
:func:`scratchlm.backend.get_backend`) the time loops, the loss, the
scatter-adds and generation run in :mod:`scratchlm.kernels`, and with
``kernels="reference"`` (or ``SCRATCHLM_KERNELS=reference``) everything runs
the plain code of :mod:`scratchlm.layers` and :mod:`scratchlm.losses`.

Parameter and gradient dicts use Keras-like names: ``embedding/embeddings``,
``lstm_0/kernel``, ``lstm_0/recurrent_kernel``, ``lstm_0/bias``, ``lstm_1/…`` (``gru_0/…``
for GRU cells), ``dense/kernel``, ``dense/bias``.
"""

import contextlib
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy

from ..backend import Array, Backend
from ..bfloat16 import DECODING_WEIGHTS, round_to_bfloat16
from ..checks import is_whole, whole_at_least
from ..errors import ModelError
from ..layers import GRU, LSTM, Dense, Dropout, Embedding
from ..layers.base import Shape, prefixed_items
from ..layers.dropout import RATE, is_rate
from ..layers.recurrent import RecurrentCache
from .base import Scored, TokenModel
from .generation import TokenLoop

CELLS = {"lstm": LSTM, "gru": GRU}


class RecurrentModelCache(NamedTuple):
    """What the model's backward needs from its forward (time-major inside)."""

    ids: Array  # (T, B) token ids
    table: bool  # the first layer's input projection was a token-table lookup
    layers: list[RecurrentCache]  # one per recurrent layer, bottom first
    top: Array  # (T, B, H) or (B, H): the top (dropped-out) output, the Dense layer's input (its cache)
    dropout: list | None  # one keep-mask per recurrent layer's output (shaped like it), or None


def _rules() -> dict:
    size = whole_at_least(1)  # at most int64's largest
    return {
        "kind": (lambda v: v == "recurrent", "'recurrent'"),
        "cell": (lambda v: v in CELLS, " or ".join(repr(c) for c in CELLS)),
        "vocab_size": (size, "a whole number in [1, 2**63)"),
        "embedding_dim": (lambda v: v is None or size(v), "null (None: one-hot input) or a whole number in [1, 2**63)"),
        "hidden_sizes": (
            lambda v: isinstance(v, list) and len(v) > 0 and all(size(h) for h in v),
            "a non-empty list of whole numbers in [1, 2**63) (units per recurrent layer, e.g. [128])",
        ),
        "dtype": (lambda v: v in ("float32", "float64"), "'float32' or 'float64'"),
        "stateful": (lambda v: isinstance(v, bool), "true or false"),
        "seed": (lambda v: v is None or (is_whole(v) and v >= 0), "null (None) or a whole number >= 0"),
        "dropout": (is_rate, RATE),
    }


class RecurrentTokenLoop(TokenLoop):
    """The recurrent model's generation: the state is (h, c) (LSTM) or (h,) (GRU) per layer, and one new token
    is one time step of the whole stack."""

    def start(self, prompt: Array) -> tuple[Array, list]:
        """The prompt (B, T) from zero state (a stateful model's own state is left alone)."""
        model = self.model
        zeros = [tuple(self.backend.zeros(s) for s in shapes) for shapes in model.state_shapes(prompt.shape[0])]
        logits, state, _ = model._run(prompt.T, zeros, None, last_only=True)
        return logits, state

    def step(self, ids: Array, state: list) -> tuple[Array, list]:
        logits, state, _ = self.model._run(ids[None, :], state, None, last_only=True)
        return logits, state


class RecurrentLM(TokenModel):
    """A recurrent language model over a vocabulary of ``vocab_size`` token ids.

    vocab_size: a whole number V >= 1 (a Python or NumPy integer; not a float or bool).
    embedding_dim: None for one-hot input (the first layer's kernel is then
        (V, 4H) and its input projection is a row lookup), or the size E >= 1
        of a learned Embedding (a whole number).
    hidden_sizes: a non-empty list or tuple of whole numbers >= 1: the units
        of each stacked recurrent layer, bottom first.
    cell: "lstm" or "gru" (Keras 3's GRU, ``reset_after=True``): the recurrent cell of every layer.
    backend: "numpy", "cupy", "auto" or a Backend; dtype: "float32" | "float64".
    seed: None or a whole number >= 0; seeds the weight initialisation (the
        same seed gives the same weights on every backend).
    stateful: True or False: carry the state from one call to the next (truncated
        BPTT over consecutive chunks of parallel streams); see :meth:`reset_state`.
    dropout: a rate in [0, 0.99] (:data:`scratchlm.layers.dropout.MAX_RATE`): Keras-style inverted dropout on
        the output of every recurrent layer, in training steps only (``loss_and_grads(..., training=True)``,
        as the Trainer calls it); never in ``forward``, ``loss`` or ``generate``. Its
        masks come from :attr:`dropout_rng` (seeded by ``seed``; a checkpoint saves
        its state, so a resumed run draws the masks the uninterrupted one would).
    Raises :class:`ModelError` (a ValueError) for anything else (the arguments are
    checked by the same rules as a checkpoint's config), and
    :class:`scratchlm.budget.ResourceError` before allocating when the weights,
    their gradients and two optimizer slots (four copies) would not fit in memory.
    """

    kind = "recurrent"
    CONFIG_RULES = _rules()
    CONFIG_DEFAULTS = {"dropout": 0.0}  # fields a config written before they existed may lack
    token_loop = RecurrentTokenLoop

    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int | None = None,
        hidden_sizes: Any = (128,),
        backend: Any = "numpy",
        dtype: str = "float32",
        seed: int | None = 0,
        stateful: bool = False,
        cell: str = "lstm",
        dropout: float = 0.0,
    ):
        hidden = list(hidden_sizes) if isinstance(hidden_sizes, (list, tuple)) else hidden_sizes
        super().__init__(
            {
                "vocab_size": vocab_size,
                "embedding_dim": embedding_dim,
                "hidden_sizes": hidden,
                "stateful": stateful,
                "cell": cell,
                "seed": seed,
                "dropout": dropout,
            },
            backend,
            dtype,
        )
        rng = Backend.rng(seed)
        V = self.vocab_size
        self.embedding_dim = None if embedding_dim is None else int(embedding_dim)
        self.hidden_sizes = hidden_sizes = [int(h) for h in hidden]
        self.cell = cell
        self._check_fits(
            self.parameter_count(
                {"vocab_size": V, "embedding_dim": self.embedding_dim, "hidden_sizes": hidden_sizes, "cell": cell}
            ),
            "use fewer or smaller recurrent layers (hidden_sizes, --hidden), a smaller embedding or vocabulary",
        )
        self.stateful = stateful
        self.seed = None if seed is None else int(seed)

        layer = self.backend.layer
        self.embedding = None if embedding_dim is None else layer(Embedding)(V, self.embedding_dim, self.backend, rng)
        sizes = [self.embedding_dim or V] + hidden_sizes
        self.recurrent = [
            layer(CELLS[cell])(d_in, h, self.backend, rng, stateful=self.stateful)
            for d_in, h in zip(sizes[:-1], sizes[1:], strict=True)
        ]
        self.dense = layer(Dense)(hidden_sizes[-1], V, self.backend, rng)
        self.dropout = layer(Dropout)(float(dropout), self.backend)
        self.dropout_rng = numpy.random.default_rng(None if seed is None else [int(seed), 1])  # not the weights'

    # -- what a config means, without building the model -----------------------------
    @property
    def config(self) -> dict:
        """What it takes to rebuild this model (JSON-serialisable; ``kind`` names the class)."""
        return {
            "kind": self.kind,
            "cell": self.cell,
            "vocab_size": self.vocab_size,
            "embedding_dim": self.embedding_dim,
            "hidden_sizes": list(self.hidden_sizes),
            "dtype": self.backend.dtype.name,
            "stateful": self.stateful,
            "seed": self.seed,
            "dropout": self.dropout.rate,
        }

    @classmethod
    def parameter_shapes(cls, config: dict) -> Iterator[tuple[str, Shape]]:
        """(name, shape) of every parameter of ``RecurrentLM(**config)``, in ``params`` order, from the layers'
        ``param_shapes``: embedding/embeddings unless embedding_dim is None (one-hot input), then per layer
        ``{cell}_n/…`` of the cell with input size embedding_dim (V for one-hot input) or the units below,
        then dense/…. A generator: a caller may stop early.
        """
        V, E, hidden = config["vocab_size"], config["embedding_dim"], config["hidden_sizes"]
        cell = config.get("cell", "lstm")
        if E is not None:
            yield from prefixed_items("embedding", Embedding.param_shapes(V, E))
        for n, (d, h) in enumerate(zip([E or V] + hidden[:-1], hidden, strict=True)):
            yield from prefixed_items(f"{cell}_{n}", CELLS[cell].param_shapes(d, h))
        yield from prefixed_items("dense", Dense.param_shapes(hidden[-1], V))

    @staticmethod
    def describe(config: dict, backend: str = "numpy") -> str:
        """The text of ``repr(RecurrentLM(**config))`` on the backend named ``backend``, without building it
        (the model line of run logs and ``scratchlm info``, which still names the class by its first name)."""
        V, E = config["vocab_size"], config["embedding_dim"]
        inp = "one-hot" if E is None else f"Embedding({V}, {E})"
        cell = config.get("cell", "lstm").upper()
        return f"RecurrentLM({inp} -> {cell}{config['hidden_sizes']} -> Dense({V}), {backend}, {config['dtype']})"

    def _named_layers(self) -> list:
        named = [] if self.embedding is None else [("embedding", self.embedding)]
        named += [(f"{self.cell}_{n}", layer) for n, layer in enumerate(self.recurrent)]
        return named + [("dense", self.dense)]

    # -- generation -----------------------------------------------------------------
    @contextlib.contextmanager
    def decoding_weights(self, weights: str) -> Iterator[None]:
        """A context in which the model holds the weights :meth:`generate` decodes with: "float32" (as it is) or
        "bfloat16" (a float32 model's recurrent kernels U rounded to bfloat16; the other weights, read once per
        token in a row or two, stay as they are). The kernels are put back on exit."""
        if weights not in DECODING_WEIGHTS:
            raise ModelError(f"weights must be 'float32' or 'bfloat16', got {weights!r}")
        if weights == "float32":
            yield
            return
        if self.backend.dtype != numpy.float32:
            raise ModelError(f"bfloat16 weights are for float32 models; this one is {self.backend.dtype}")
        kept = [layer.recurrent_kernel for layer in self.recurrent]
        for layer in self.recurrent:
            layer.recurrent_kernel = round_to_bfloat16(layer.recurrent_kernel, self.backend.xp)
        try:
            yield
        finally:
            for layer, U in zip(self.recurrent, kept, strict=True):
                layer.recurrent_kernel = U

    # -- carried state ----------------------------------------------------------------
    def state_shapes(self, B: int) -> list:
        return [layer.state_shapes(B) for layer in self.recurrent]

    def state_names(self) -> list:
        return [
            [f"{name} of {self.cell.upper()} layer {n}" for name in layer.state_names]
            for n, layer in enumerate(self.recurrent)
        ]

    def get_state(self) -> list:
        return [layer.state for layer in self.recurrent]

    def set_state(self, state: list) -> None:
        if len(state) != len(self.recurrent):
            raise ModelError(f"state must hold one entry per recurrent layer ({len(self.recurrent)}), got {len(state)}")
        for layer, s in zip(self.recurrent, state, strict=True):
            layer.state = None if s is None else tuple(self.backend.asarray(a) for a in s)

    def reset_state(self) -> None:
        for layer in self.recurrent:
            layer.reset_state()

    # -- forward / backward ----------------------------------------------------------
    def use_table(self, T: int, B: int) -> bool:
        """Project the first layer's input by (V, G·H) table lookup?

        Always for one-hot input. With an Embedding, the table E W + b costs
        V·E·G·H multiply-adds against T·B·E·G·H for projecting every position, so
        it pays while V <= T·B (characters); word vocabularies take the direct path.
        """
        return self.embedding is None or self.vocab_size <= T * B

    def dropout_masks(self, B: int, T: int, last_only: bool = False) -> list | None:
        """One keep-mask per recurrent layer's output ((T, B, H_n); the top one (B, H) with ``last_only``),
        drawn from :attr:`dropout_rng`; None without dropout."""
        if self.dropout.rate == 0:
            return None
        top = len(self.hidden_sizes) - 1
        return [
            self.dropout.draw((B, h) if last_only and n == top else (T, B, h), self.dropout_rng)
            for n, h in enumerate(self.hidden_sizes)
        ]

    def dropout_rows(self, masks: list | None, lo: int, hi: int) -> list | None:
        """Rows [lo, hi) of :meth:`dropout_masks`' masks: axis 1 of a (T, B, H) mask, axis 0 of the top (B, H)."""
        return None if masks is None else [m[lo:hi] if m.ndim == 2 else m[:, lo:hi] for m in masks]

    def _run(
        self, ids: Array, state: Any, mask: Array | None, last_only: bool, dropout_masks: list | None = None
    ) -> tuple[Array, list, RecurrentModelCache]:
        """The stack, time-major: ids (T, B), mask (T, B) or None, dropout keep-masks or None ->
        (logits (T, B, V), or (B, V) with ``last_only``, the new state per layer, cache)."""
        T, B = ids.shape
        table = self.use_table(T, B)
        E = None if self.embedding is None else self.embedding.embeddings
        caches, new_state = [], []
        top = len(self.recurrent) - 1
        for n, layer in enumerate(self.recurrent):
            initial = None if state is None else state[n]
            sequences = not (last_only and n == top)
            if n == 0 and table:  # rows of the (V, G·H) table
                y, cache = layer.forward_tokens(ids, E, initial, mask, sequences)
            else:
                x = self.embedding.forward(ids)[0] if n == 0 else y  # (T, B, D)
                y, cache = layer.forward(x, initial, mask, sequences)
            caches.append(cache)
            new_state.append(cache.final_state)
            if dropout_masks is not None:
                y, _ = self.dropout.forward(y, dropout_masks[n])
        logits, _ = self.dense.forward(y)  # (T, B, V) or (B, V)
        return logits, new_state, RecurrentModelCache(ids, table, caches, y, dropout_masks)

    def _forward(self, x: Array, state: Any, mask: Array | None) -> tuple[Array, list]:
        logits, new_state, _ = self._run(x.T, state, None if mask is None else mask.T, False)
        return logits.transpose(1, 0, 2), new_state  # (B, T, V)

    def _score(
        self,
        x: Array,
        y: Array,
        state: Any,
        mask: Array | None,
        last_only: bool,
        dropout_masks: Any,
        backward: bool = True,
    ) -> tuple[float, Scored]:
        """The loss over the time-major logits: every step's, (T, B, V) against y.T, masked steps not scored;
        or with ``last_only`` the last step's, (B, V) against y (B,)."""
        mask = None if mask is None else mask.T  # (T, B)
        logits, _, cache = self._run(x.T, state, mask, last_only, dropout_masks)
        if last_only:
            loss, dlogits = self.loss_function(logits, y)  # (B, V)
        else:
            loss, dlogits = self.loss_function(logits, y.T, mask)  # (T, B, V)
        return loss, Scored(cache, dlogits)

    def _backward(self, scored: Scored) -> dict[str, Array]:
        cache = scored.cache
        grads = {}
        dy, g = self.dense.backward(cache.top, scored.dlogits)
        grads.update(prefixed_items("dense", g))
        for n in reversed(range(len(self.recurrent))):
            if cache.dropout is not None:
                dy, _ = self.dropout.backward(cache.dropout[n], dy)
            d, g = self.recurrent[n].backward(cache.layers[n], dy)
            grads.update(prefixed_items(f"{self.cell}_{n}", g))
            dy = d.dx  # for the layer below (None: tokens)
        if self.embedding is not None:
            if cache.table:  # the table lookup's own dE
                grads["embedding/embeddings"] = d.dembeddings
            else:
                grads["embedding/embeddings"] = self.embedding.backward(cache.ids, dy)[1]["embeddings"]
        return {name: grads[name] for name in self.params}


LanguageModel = RecurrentLM  # its first name, kept: code and checkpoints that use it work unchanged
