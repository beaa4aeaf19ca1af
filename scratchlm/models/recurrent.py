"""LanguageModel: tokens -> [Embedding | one-hot] -> LSTM or GRU x L -> Dense -> logits.

    logits, state = model.forward(x)                         # (B, T, V)
    loss, grads   = model.loss_and_grads(x, y)               # mean nats per token
    opt.step(model.params, grads)                            # in-place update
    ids           = model.generate(prompt_ids, 200, temperature=0.5)

The backend decides which code does the work: with ``kernels="fused"`` (the
default on NumPy, see :func:`scratchlm.backend.get_backend`) the LSTM time loop,
the loss, the scatter-adds and generation run in :mod:`scratchlm.kernels`; with
``kernels="reference"`` (or ``SCRATCHLM_KERNELS=reference``) everything runs
the plain code of :mod:`scratchlm.layers` and :mod:`scratchlm.losses`.

Parameter and gradient dicts use Keras-like names: ``embedding/embeddings``,
``lstm_0/kernel``, ``lstm_0/recurrent_kernel``, ``lstm_0/bias``, ``lstm_1/…`` (``gru_0/…``
for GRU cells), ``dense/kernel``, ``dense/bias``.
"""

from typing import NamedTuple

import numpy

from .. import checkpoint
from ..backend import Backend
from ..errors import ModelError, SamplingError
from ..layers import LSTM, Dense, Embedding
from ..layers.dropout import MAX_RATE, Dropout, check_rate
from ..layers.gru import GRU
from .base import TokenModel, is_whole

CELLS = {"lstm": LSTM, "gru": GRU}


class RecurrentModelCache(NamedTuple):
    """What the model's backward needs from its forward."""
    ids: object               # (T, B) token ids
    table: bool               # the first layer's input projection was a token-table lookup
    layers: list              # one RecurrentCache per recurrent layer, bottom first
    top: object               # (T, B, H) or (B, H): the top (dropped-out) output, the Dense layer's input
    dropout: object           # one keep-mask per recurrent layer's output (shaped like it), or None


def _rules():
    positive = (lambda v: is_whole(v) and 0 < v <= checkpoint.LARGEST)     # a size: at most int64's largest
    return {
        "kind": (lambda v: v == "recurrent", "'recurrent'"),
        "cell": (lambda v: v in CELLS, " or ".join(repr(c) for c in CELLS)),
        "vocab_size": (positive, "a whole number in [1, 2**63)"),
        "embedding_dim": (lambda v: v is None or positive(v), "null (one-hot input) or a whole number in [1, 2**63)"),
        "hidden_sizes": (lambda v: isinstance(v, list) and len(v) > 0 and all(positive(h) for h in v),
                         "a non-empty list of whole numbers in [1, 2**63)"),
        "dtype": (lambda v: v in ("float32", "float64"), "'float32' or 'float64'"),
        "stateful": (lambda v: isinstance(v, bool), "true or false"),
        "seed": (lambda v: v is None or (is_whole(v) and v >= 0), "null or a whole number >= 0"),
        "dropout": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= MAX_RATE,
                    f"a number in [0, {MAX_RATE}]"),
    }


class LanguageModel(TokenModel):
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
    dropout: a rate in [0, 0.99] (:data:`scratchlm.layers.dropout.MAX_RATE`): Keras-style inverted dropout on the output of every
        recurrent layer, in training steps only (``loss_and_grads(..., training=True)``,
        as the Trainer calls it); never in ``forward``, ``loss`` or ``generate``. Its
        masks come from :attr:`dropout_rng` (seeded by ``seed``; a checkpoint saves
        its state, so a resumed run draws the masks the uninterrupted one would).
    Raises :class:`ModelError` (a ValueError) for anything else, and
    :class:`scratchlm.budget.ResourceError` before allocating when the weights,
    their gradients and two optimizer slots (four copies) would not fit in memory.
    """

    kind = "recurrent"
    CONFIG_RULES = _rules()
    CONFIG_DEFAULTS = {"dropout": 0.0}        # fields a config written before they existed may lack

    def __init__(self, vocab_size, embedding_dim=None, hidden_sizes=(128,), backend="numpy",
                 dtype="float32", seed=0, stateful=False, cell="lstm", dropout=0.0):
        super().__init__(vocab_size, backend, dtype)
        if embedding_dim is not None and (not is_whole(embedding_dim) or embedding_dim < 1):
            raise ModelError(f"embedding_dim must be None (one-hot input) or a whole number >= 1, "
                             f"got {embedding_dim!r}")
        if (not isinstance(hidden_sizes, (list, tuple)) or not hidden_sizes
                or not all(is_whole(h) and h >= 1 for h in hidden_sizes)):
            raise ModelError(f"hidden_sizes must be a non-empty list of whole numbers >= 1 (units per "
                             f"recurrent layer, e.g. [128]), got {hidden_sizes!r}")
        if not isinstance(stateful, bool):
            raise ModelError(f"stateful must be True or False, got {stateful!r}")
        if cell not in CELLS:
            raise ModelError(f"cell must be {self.CONFIG_RULES['cell'][1]}, got {cell!r}")
        check_rate(dropout)
        rng = Backend.rng(seed)
        V = self.vocab_size
        self.embedding_dim = None if embedding_dim is None else int(embedding_dim)
        self.hidden_sizes = hidden_sizes = [int(h) for h in hidden_sizes]
        self.cell = cell
        self._check_fits(self.parameter_count({"vocab_size": V, "embedding_dim": self.embedding_dim,
                                               "hidden_sizes": hidden_sizes, "cell": cell}),
                         "use fewer or smaller recurrent layers (hidden_sizes, --hidden), a smaller embedding or "
                         "vocabulary")
        self.stateful = stateful
        self.seed = None if seed is None else int(seed)

        self.embedding = None if embedding_dim is None else Embedding(V, self.embedding_dim, self.backend, rng)
        sizes = [self.embedding_dim or V] + hidden_sizes
        self.recurrent = [CELLS[cell](d_in, h, self.backend, rng, stateful=self.stateful)
                          for d_in, h in zip(sizes[:-1], sizes[1:])]
        self.dense = Dense(hidden_sizes[-1], V, self.backend, rng)
        self.dropout = Dropout(float(dropout), self.backend)
        self.dropout_rng = numpy.random.default_rng(None if seed is None else [int(seed), 1])   # not the weights'

    # -- what a config means, without building the model -----------------------------
    @property
    def config(self):
        """What it takes to rebuild this model (JSON-serialisable; ``kind`` names the class)."""
        return {"kind": self.kind, "cell": self.cell, "vocab_size": self.vocab_size,
                "embedding_dim": self.embedding_dim, "hidden_sizes": list(self.hidden_sizes),
                "dtype": self.backend.dtype.name, "stateful": self.stateful, "seed": self.seed,
                "dropout": self.dropout.rate}

    @classmethod
    def check_config(cls, config, what):
        """CheckpointError unless ``config`` holds exactly the fields of :data:`CONFIG_RULES` (those of
        :data:`CONFIG_DEFAULTS` may be missing), each valid."""
        checkpoint.check_fields({**cls.CONFIG_DEFAULTS, **config}, cls.CONFIG_RULES, what, exact=True)

    @staticmethod
    def parameter_shapes(config):
        """(name, shape) of every parameter of ``LanguageModel(**config)``, in ``params`` order, by arithmetic.

        With V = vocab_size, E = embedding_dim, H_n = hidden_sizes[n]: embedding/embeddings (V, E) unless E
        is None (one-hot input); then per layer the cell's own (``{cell}_n/kernel`` (D_n, G H_n),
        ``recurrent_kernel`` (H_n, G H_n), ``bias``: LSTM (4 H_n,), GRU (2, 3 H_n)) where D_0 = E (V for
        one-hot input) and D_n = H_{n-1}; dense/kernel (H_last, V), dense/bias (V,). A generator: a caller
        may stop early.
        """
        V, E, hidden = config["vocab_size"], config["embedding_dim"], config["hidden_sizes"]
        cell = config.get("cell", "lstm")
        if E is not None:
            yield "embedding/embeddings", (V, E)
        for n, (d, h) in enumerate(zip([E or V] + hidden[:-1], hidden)):
            for name, shape in CELLS[cell].param_shapes(d, h).items():
                yield f"{cell}_{n}/{name}", shape
        yield "dense/kernel", (hidden[-1], V)
        yield "dense/bias", (V,)

    @staticmethod
    def describe(config, backend="numpy"):
        """The text of ``repr(LanguageModel(**config))`` on the backend named ``backend``, without building it."""
        V, E = config["vocab_size"], config["embedding_dim"]
        inp = "one-hot" if E is None else f"Embedding({V}, {E})"
        cell = config.get("cell", "lstm").upper()
        return f"LanguageModel({inp} -> {cell}{config['hidden_sizes']} -> Dense({V}), {backend}, {config['dtype']})"

    def _named_layers(self):
        named = [] if self.embedding is None else [("embedding", self.embedding)]
        named += [(f"{self.cell}_{n}", layer) for n, layer in enumerate(self.recurrent)]
        return named + [("dense", self.dense)]

    # -- carried state ----------------------------------------------------------------
    def state_shapes(self, B):
        return [layer.state_shapes(B) for layer in self.recurrent]

    def state_names(self):
        return [[f"{name} of {self.cell.upper()} layer {n}" for name in layer.state_names]
                for n, layer in enumerate(self.recurrent)]

    def get_state(self):
        return [layer.state for layer in self.recurrent]

    def set_state(self, state):
        if len(state) != len(self.recurrent):
            raise ModelError(f"state must hold one entry per recurrent layer ({len(self.recurrent)}), "
                             f"got {len(state)}")
        for layer, s in zip(self.recurrent, state):
            layer.state = None if s is None else tuple(self.backend.asarray(a) for a in s)

    def reset_state(self):
        for layer in self.recurrent:
            layer.reset_state()

    # -- forward / backward ----------------------------------------------------------
    def _use_table(self, T, B):
        """Project the first layer's input by (V, G·H) table lookup?

        Always for one-hot input. With an Embedding, the table E W + b costs
        V·E·G·H multiply-adds against T·B·E·G·H for projecting every position, so
        it pays while V <= T·B (characters); word vocabularies take the direct path.
        """
        return self.embedding is None or self.vocab_size <= T * B

    def dropout_masks(self, B, T, last_only=False):
        """One keep-mask per recurrent layer's output ((T, B, H_n); the top one (B, H) with ``last_only``),
        drawn from :attr:`dropout_rng`; None without dropout."""
        if self.dropout.rate == 0:
            return None
        top = len(self.hidden_sizes) - 1
        return [self.dropout.draw((B, h) if last_only and n == top else (T, B, h), self.dropout_rng)
                for n, h in enumerate(self.hidden_sizes)]

    def _forward(self, ids, state, mask, last_only, dropout_masks=None):
        """ids (T, B), mask (T, B) or None, dropout keep-masks or None -> (logits, new state, cache)."""
        T, B = ids.shape
        table = self._use_table(T, B)
        E = None if self.embedding is None else self.embedding.embeddings
        caches, new_state = [], []
        top = len(self.recurrent) - 1
        for n, layer in enumerate(self.recurrent):
            initial = None if state is None else state[n]
            sequences = not (last_only and n == top)
            if n == 0 and table:                                          # rows of the (V, G·H) table
                y, layer_state, cache = layer.forward_tokens(ids, E, initial, mask, sequences)
            else:
                x = self.embedding.forward(ids) if n == 0 else y          # (T, B, D)
                y, layer_state, cache = layer.forward(x, initial, mask, sequences)
            caches.append(cache)
            new_state.append(layer_state)
            if dropout_masks is not None:
                y = self.dropout.forward(y, dropout_masks[n])
        logits = self.dense.forward(y)                                    # (T, B, V) or (B, V)
        return logits, new_state, RecurrentModelCache(ids, table, caches, y, dropout_masks)

    def _backward(self, cache, dlogits):
        grads = {}
        dy, g = self.dense.backward(cache.top, dlogits)
        grads.update({f"dense/{k}": v for k, v in g.items()})
        for n in reversed(range(len(self.recurrent))):
            if cache.dropout is not None:
                dy, _ = self.dropout.backward(cache.dropout[n], dy)
            (dx, _), g = self.recurrent[n].backward(cache.layers[n], dy)
            grads.update({f"{self.cell}_{n}/{k}": v for k, v in g.items()})
            dy = dx                                                       # for the layer below, or dE
        if self.embedding is not None:
            if cache.table:                                               # the table lookup returned dE itself
                grads["embedding/embeddings"] = dy
            else:
                grads["embedding/embeddings"] = self.embedding.backward(cache.ids, dy)[1]["embeddings"]
        return {name: grads[name] for name in self.params}

    # -- generation ---------------------------------------------------------------
    def _start(self, prompt):
        B = prompt.shape[1]
        zeros = [tuple(self.backend.zeros(s) for s in shapes) for shapes in self.state_shapes(B)]
        logits, state, _ = self._forward(prompt, zeros, None, last_only=True)
        return logits, state

    def _step(self, ids, state):
        logits, state, _ = self._forward(ids[None, :], state, None, last_only=True)
        return logits, state

    def _decode_fused(self, logits, state, length, temperature, banned, eos_id, rng):
        """The token loop of :meth:`generate` on the fused kernels: the same draws from ``rng``,
        the same ids (up to float round-off), without rebuilding anything per token."""
        first = self.recurrent[0]
        if first.fused is None or self.cell != "lstm":                   # the decode kernel is the LSTM's
            return None
        B, V = logits.shape
        temperature, u, banned_mask = self._fused_draws(V, length, B, temperature, banned, rng)
        E = None if self.embedding is None else self.embedding.embeddings
        table = first.token_table(E) if self._use_table(length, B) else None
        out = first.fused.decode(
            logits, state, table, (E, first.kernel, first.bias),
            [(layer.kernel, layer.bias) for layer in self.recurrent[1:]],
            [layer.recurrent_kernel for layer in self.recurrent], (self.dense.kernel, self.dense.bias),
            length, temperature, banned_mask, eos_id, u)
        if out is None:
            raise SamplingError("logits must be finite: a row holds NaN or +inf")
        return self.backend.to_host(out)
