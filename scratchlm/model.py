"""LanguageModel: tokens -> [Embedding | one-hot] -> LSTM x L -> Dense -> logits.

Users pass batch-major int arrays like Keras: ``x`` and ``y`` of shape (B, T).
Inside, sequences run time-major (T, B, ...) so each time step is contiguous.

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
``lstm_0/kernel``, ``lstm_0/recurrent_kernel``, ``lstm_0/bias``, ``lstm_1/…``,
``dense/kernel``, ``dense/bias``.
"""

import math
import numbers
from collections.abc import Mapping

from . import checkpoint, sampling
from .backend import Backend, get_backend
from .budget import check_fits
from .errors import ModelError, SamplingError
from .layers import LSTM, Dense, Embedding
from .losses import softmax_cross_entropy


def _is_whole(x):
    """A Python or NumPy integer, not a bool (True is an int, but never a sensible size or id)."""
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def generation_bytes(batch, length):
    """What :meth:`LanguageModel.generate` allocates in proportion to its output: int64 ids and float64 uniforms."""
    return 16 * batch * length


def parameter_count(vocab_size, embedding_dim, hidden_sizes):
    """The number of weights of a model with these sizes, computed without building it."""
    config = {"vocab_size": vocab_size, "embedding_dim": embedding_dim, "hidden_sizes": list(hidden_sizes)}
    return sum(math.prod(shape) for shape in checkpoint.parameter_shapes(config).values())


class LanguageModel:
    """An LSTM language model over a vocabulary of ``vocab_size`` token ids.

    vocab_size: a whole number V >= 1 (a Python or NumPy integer; not a float or bool).
    embedding_dim: None for one-hot input (the first LSTM's kernel is then
        (V, 4H) and its input projection is a row lookup), or the size E >= 1
        of a learned Embedding (a whole number).
    hidden_sizes: a non-empty list or tuple of whole numbers >= 1: the units
        of each stacked LSTM layer, bottom first.
    backend: "numpy", "cupy", "auto" or a Backend; dtype: "float32" | "float64".
    seed: None or a whole number >= 0; seeds the weight initialisation (the
        same seed gives the same weights on every backend).
    stateful: True or False: carry (h, c) from one call to the next (truncated
        BPTT over consecutive chunks of parallel streams); see :meth:`reset_state`.
    Raises :class:`ModelError` (a ValueError) for anything else, and
    :class:`scratchlm.budget.ResourceError` before allocating when the weights,
    their gradients and two optimizer slots (four copies) would not fit in memory.
    """

    def __init__(self, vocab_size, embedding_dim=None, hidden_sizes=(128,), backend="numpy",
                 dtype="float32", seed=0, stateful=False):
        if not _is_whole(vocab_size) or vocab_size < 1:
            raise ModelError(f"vocab_size must be a whole number >= 1, got {vocab_size!r}")
        if embedding_dim is not None and (not _is_whole(embedding_dim) or embedding_dim < 1):
            raise ModelError(f"embedding_dim must be None (one-hot input) or a whole number >= 1, "
                             f"got {embedding_dim!r}")
        if (not isinstance(hidden_sizes, (list, tuple)) or not hidden_sizes
                or not all(_is_whole(h) and h >= 1 for h in hidden_sizes)):
            raise ModelError(f"hidden_sizes must be a non-empty list of whole numbers >= 1 (units per LSTM "
                             f"layer, e.g. [128]), got {hidden_sizes!r}")
        if not isinstance(stateful, bool):
            raise ModelError(f"stateful must be True or False, got {stateful!r}")
        self.backend = get_backend(backend, dtype)
        rng = Backend.rng(seed)
        self.vocab_size = V = int(vocab_size)
        self.embedding_dim = None if embedding_dim is None else int(embedding_dim)
        self.hidden_sizes = hidden_sizes = [int(h) for h in hidden_sizes]
        check_fits(4 * parameter_count(V, self.embedding_dim, hidden_sizes) * self.backend.dtype.itemsize,
                   "the model's weights, gradients and optimizer state",
                   "use fewer or smaller LSTM layers (hidden_sizes, --hidden), a smaller embedding or vocabulary")
        self.stateful = stateful
        self.seed = None if seed is None else int(seed)

        self.embedding = None if embedding_dim is None else Embedding(V, self.embedding_dim, self.backend, rng)
        sizes = [self.embedding_dim or V] + hidden_sizes
        self.lstms = [LSTM(d_in, h, self.backend, rng, stateful=self.stateful)
                      for d_in, h in zip(sizes[:-1], sizes[1:])]
        self.dense = Dense(hidden_sizes[-1], V, self.backend, rng)

    # -- bookkeeping -----------------------------------------------------------
    @property
    def config(self):
        """What it takes to rebuild this model (JSON-serialisable)."""
        return {"vocab_size": self.vocab_size, "embedding_dim": self.embedding_dim,
                "hidden_sizes": list(self.hidden_sizes), "dtype": self.backend.dtype.name,
                "stateful": self.stateful, "seed": self.seed}

    @property
    def params(self):
        """Name -> parameter array (the live arrays: optimizers update them in place)."""
        named = {}
        if self.embedding is not None:
            named["embedding/embeddings"] = self.embedding.embeddings
        for n, lstm in enumerate(self.lstms):
            for k, v in lstm.params.items():
                named[f"lstm_{n}/{k}"] = v
        for k, v in self.dense.params.items():
            named[f"dense/{k}"] = v
        return named

    def set_params(self, values):
        """Copy arrays (host or device) into the parameters, by name; shapes must match.

        values: a mapping name -> array of numbers holding every name of :attr:`params`
        (other names are ignored). Raises :class:`ModelError` otherwise.
        """
        if not isinstance(values, Mapping):
            raise ModelError(f"set_params takes a dict name -> array, got {type(values).__name__}")
        params = self.params
        missing = sorted(set(params) - set(values))
        if missing:
            raise ModelError(f"missing parameters: {', '.join(missing)}")
        for name, p in params.items():
            v = self._array(values[name], f"parameter {name}")
            if v.shape != p.shape or v.dtype.kind not in "iuf":
                raise ModelError(f"parameter {name} must be a real array of shape {p.shape}, got {v.dtype} {v.shape}")
            p[...] = v

    def reset_state(self):
        """Stateful mode: start the next batch from zero state."""
        for lstm in self.lstms:
            lstm.reset_state()

    def __repr__(self):
        return checkpoint.describe(self.config, self.backend.name)

    # -- input checks ------------------------------------------------------------
    def _array(self, a, name):
        """``a`` as an array of this backend; ModelError for what is no array (ragged lists, ...)."""
        try:
            return self.backend.xp.asarray(a)
        except (TypeError, ValueError):
            raise ModelError(f"{name} must be a rectangular array of numbers, got {type(a).__name__}") from None

    def _tokens(self, x, name="x", shape=None):
        """x as a device array of token ids: non-empty, integer, in [0, V), of ``shape`` (default: (batch, time))."""
        x = self._array(x, name)
        if x.size == 0:
            raise ModelError(f"{name} is empty (shape {x.shape}): give at least one sequence of at least one token id")
        if (x.ndim != 2 if shape is None else x.shape != shape) or x.dtype.kind not in "iu":
            raise ModelError(f"{name} must be an integer array of shape {shape or '(batch, time)'}, "
                             f"got {x.dtype} {x.shape}")
        if int(x.min()) < 0 or int(x.max()) >= self.vocab_size:
            raise ModelError(f"{name} holds token ids outside [0, {self.vocab_size})")
        return x

    def _time_major_mask(self, mask, shape):
        """mask (B, T) as :meth:`forward` documents it -> (T, B) bool, or None."""
        if mask is None:
            return None
        mask = self._array(mask, "mask")
        if mask.shape != shape:
            raise ModelError(f"mask must have the shape of x {shape}, got {mask.shape}")
        if mask.dtype.kind != "b" and (mask.dtype.kind not in "iuf" or not bool(((mask == 0) | (mask == 1)).all())):
            raise ModelError(f"mask must be boolean (True = real token) or hold only 0 and 1, got {mask.dtype} "
                             "with other values: build it with dtype=bool")
        return mask.astype(bool).T                                        # (T, B)

    def _check_state(self, state, B):
        """Raise ModelError unless state is None or one (h, c) pair of (B, H_l) arrays per layer."""
        if state is None:
            return
        want = [((B, h), (B, h)) for h in self.hidden_sizes]
        try:
            ok = len(state) == len(want) and all(tuple(a.shape for a in pair) == shapes
                                                 for pair, shapes in zip(state, want))
        except (TypeError, AttributeError):
            ok = False
        if not ok:
            raise ModelError(f"state must be None (zeros) or one (h, c) pair of arrays per LSTM layer, of shapes "
                             f"{[shapes[0] for shapes in want]} for this batch of {B}: pass the state that "
                             "forward returned for a batch of this size")

    # -- forward / backward ----------------------------------------------------------
    def _use_table(self, T, B):
        """Project the first layer's input by (V, 4H) table lookup?

        Always for one-hot input. With an Embedding, the table E W + b costs
        V·E·4H multiply-adds against T·B·E·4H for projecting every position, so
        it pays while V <= T·B (characters); word vocabularies take the direct path.
        """
        return self.embedding is None or self.vocab_size <= T * B

    def _forward(self, ids, state, mask, last_only):
        """ids (T, B), mask (T, B) or None -> (logits, new state, caches for backward)."""
        T, B = ids.shape
        table = self._use_table(T, B)
        E = None if self.embedding is None else self.embedding.embeddings
        caches, new_state = [], []
        top = len(self.lstms) - 1
        for n, lstm in enumerate(self.lstms):
            initial = None if state is None else state[n]
            sequences = not (last_only and n == top)
            if n == 0 and table:                                          # rows of the (V, 4H) table
                x = None
                y, layer_state, cache = lstm.forward_tokens(ids, E, initial, mask, sequences)
            else:
                x = self.embedding.forward(ids) if n == 0 else y          # (T, B, D)
                y, layer_state, cache = lstm.forward(lstm.project(x), initial, mask, sequences)
            caches.append((x, cache))
            new_state.append(layer_state)
        logits = self.dense.forward(y)                                    # (T, B, V) or (B, V)
        return logits, new_state, {"ids": ids, "table": table, "lstm": caches, "top": y}

    def _backward(self, cache, dlogits):
        grads = {}
        dy, g = self.dense.backward(cache["top"], dlogits)
        grads["dense/kernel"], grads["dense/bias"] = g["kernel"], g["bias"]
        for n in reversed(range(len(self.lstms))):
            lstm = self.lstms[n]
            x, lstm_cache = cache["lstm"][n]
            dzx, g_rec, _ = lstm.backward(lstm_cache, dy)
            if n > 0 or not cache["table"]:
                dy, g_in = lstm.project_backward(x, dzx)                   # dy: gradient for the layer below
            else:
                E = None if self.embedding is None else self.embedding.embeddings
                dE, g_in = lstm.project_tokens_backward(cache["ids"], dzx, E)
                if dE is not None:
                    grads["embedding/embeddings"] = dE
            grads[f"lstm_{n}/kernel"] = g_in["kernel"]
            grads[f"lstm_{n}/recurrent_kernel"] = g_rec["recurrent_kernel"]
            grads[f"lstm_{n}/bias"] = g_in["bias"]
        if self.embedding is not None and not cache["table"]:
            grads["embedding/embeddings"] = self.embedding.backward(cache["ids"], dy)["embeddings"]
        return {name: grads[name] for name in self.params}

    def forward(self, x, state=None, mask=None):
        """x (B, T) int -> (logits (B, T, V), state).

        x: a non-empty (B, T) integer array (or nested list) of ids in [0, V).
        state: per layer (h, c), each (B, H_l), or None for zeros (or, in
        stateful mode, the state the previous call ended with).
        mask: (B, T) bool, True = real token, or (B, T) integers or floats that
        are all 0 or 1 (1 = real token); masked steps keep the LSTM state
        (Keras semantics). The returned state is the final (h, c) per layer.
        Raises :class:`ModelError` for anything else.
        """
        x = self._tokens(x)
        self._check_state(state, x.shape[0])
        logits, new_state, _ = self._forward(x.T, state, self._time_major_mask(mask, x.shape), False)
        return logits.transpose(1, 0, 2), new_state

    def _scored_forward(self, x, y, mask, state, last_only):
        x = self._tokens(x)
        B, T = x.shape
        self._check_state(state, B)
        mask_tm = self._time_major_mask(mask, x.shape)
        if mask_tm is not None and not last_only and not bool(mask_tm.any()):
            raise ModelError("the mask scores no token: at least one step must be real (True)")
        y = self._tokens(y, "y", (B,) if last_only else (B, T))
        logits, _, cache = self._forward(x.T, state, mask_tm, last_only)
        xent = self.backend.fused.softmax_cross_entropy if self.backend.kernels == "fused" else softmax_cross_entropy
        if last_only:
            loss, dlogits = xent(logits, y)                                           # (B, V)
        else:
            loss, dlogits = xent(logits, y.T, mask_tm)                                # (T, B, V)
        return loss, dlogits, cache

    def loss(self, x, y, mask=None, state=None, last_only=False):
        """The loss of :meth:`loss_and_grads` alone (no backward pass)."""
        return self._scored_forward(x, y, mask, state, last_only)[0]

    def loss_and_grads(self, x, y, mask=None, state=None, last_only=False):
        """Mean cross-entropy (nats per scored token) and the gradient of every parameter.

        x (B, T) int inputs, state and mask as in :meth:`forward`. y: (B, T)
        next-token targets, or with ``last_only`` (B,) targets for the final
        step only (the seed Nietzsche model: read a window, predict the
        character after it). mask (B, T): padding steps are skipped by the LSTM
        and, unless ``last_only``, not scored (so it must keep at least one step).
        Returns (loss: float, grads: dict name -> array shaped like params[name]).
        """
        loss, dlogits, cache = self._scored_forward(x, y, mask, state, last_only)
        return loss, self._backward(cache, dlogits)

    # -- generation ---------------------------------------------------------------
    def generate(self, prompt_ids, length, temperature=1.0, top_k=None, top_p=None, eos_id=None,
                 banned_ids=(), seed=None):
        """Sample ``length`` tokens after each prompt; returns host int64 ids.

        prompt_ids: (T_p,) or (B, T_p) integer ids in [0, V), equal-length
        prompts, B >= 1 and T_p >= 1. length: a whole number >= 0.
        The prompt is run once; each new token then costs one LSTM step fed
        with the state of the previous one (the prefix is never re-run).
        temperature 0 = greedy; top_k / top_p restrict the candidates (see
        :func:`scratchlm.sampling.check_options`); banned_ids (integer ids in
        [0, V), not all of them) are never produced. With ``eos_id`` (an id in
        [0, V)), a sequence stops at its first EOS; finished rows are padded
        with ``eos_id`` and generation ends when every row has finished.
        seed: None or a whole number >= 0.
        Returns (length',) or (B, length') with length' <= length (length 0:
        an empty (0,) or (B, 0) array). The model's own stateful state is left
        untouched. On the fused path (without top_k/top_p) the token loop runs
        in ``scratchlm.kernels``: the same draws and, up to float round-off in
        the logits, the same ids.
        Raises :class:`ModelError` or :class:`SamplingError` (both ValueErrors)
        for unusable arguments, and :class:`scratchlm.budget.ResourceError`
        before allocating when the output would not fit in memory.
        """
        sampling.check_options(temperature, top_k, top_p)
        if not _is_whole(length) or length < 0:
            raise ModelError(f"length must be a whole number of tokens >= 0, got {length!r}")
        prompt = self._array(prompt_ids, "prompt_ids")
        if prompt.size == 0:
            raise ModelError(f"the prompt is empty (shape {prompt.shape}): give at least one token id")
        single = prompt.ndim == 1
        prompt = self._tokens(prompt[None, :] if single else prompt, name="prompt_ids")
        B = prompt.shape[0]
        if eos_id is not None and (not _is_whole(eos_id) or not 0 <= eos_id < self.vocab_size):
            raise ModelError(f"eos_id must be None or a token id in [0, {self.vocab_size}), got {eos_id!r}")
        banned = sampling.check_banned(banned_ids, self.vocab_size)
        rng = Backend.rng(seed)
        what = f"generating {length:,} tokens" + (f" for each of {B:,} prompts" if B > 1 else "")
        check_fits(generation_bytes(B, length), what, "ask for fewer tokens at a time")
        if length == 0:                                                   # nothing to sample: skip the prompt
            out = self.backend.to_host(self.backend.xp.zeros((B, 0), dtype=self.backend.xp.int64))
        else:
            zeros = [(self.backend.zeros((B, h)), self.backend.zeros((B, h))) for h in self.hidden_sizes]
            logits, state, _ = self._forward(prompt.T, zeros, None, last_only=True)     # (B, V)
            if self.backend.kernels == "fused" and top_k is None and top_p is None:
                out = self._decode_fused(logits, state, length, temperature, banned, eos_id, rng)
            else:
                out = self._decode(logits, state, length, temperature, top_k, top_p, banned, eos_id, rng)
        return out[0] if single else out

    def _decode(self, logits, state, length, temperature, top_k, top_p, banned, eos_id, rng):
        """The token loop of :meth:`generate` on the reference path: one :func:`sampling.sample`
        and one LSTM step per token, from the prompt's ``logits`` (B, V) and ``state``."""
        xp = self.backend.xp
        B = logits.shape[0]
        out = self.backend.to_host(xp.zeros((B, length), dtype=xp.int64))
        done = self.backend.to_host(xp.zeros(B, dtype=bool))
        for k in range(length):
            ids = sampling.sample(logits, rng, temperature, top_k, top_p, banned)   # (B,)
            step = self.backend.to_host(ids)
            if eos_id is not None:
                step[done] = eos_id
                done |= step == eos_id
            out[:, k] = step
            if eos_id is not None and done.all():
                return out[:, :k + 1]
            if k + 1 < length:
                logits, state, _ = self._forward(ids[None, :], state, None, last_only=True)
        return out

    def _decode_fused(self, logits, state, length, temperature, banned, eos_id, rng):
        """The token loop of :meth:`generate` on the fused kernels: the same draws from ``rng``,
        the same ids (up to float round-off), without rebuilding anything per token."""
        xp = self.backend.xp
        B, V = logits.shape
        if temperature == 0:                                              # greedy: no draws
            temperature, u = 0.0, xp.zeros((length, B))
        else:                                                             # as sampling: T kept finite and > 0
            temperature = sampling.representable_temperature(temperature, xp.finfo(self.backend.dtype))
            u = xp.asarray(rng.random((length, B)))                       # (length, B), one per row and token
        banned_mask = xp.zeros(V, dtype=bool)
        banned_mask[banned] = True
        first = self.lstms[0]
        E = None if self.embedding is None else self.embedding.embeddings
        table = first.token_table(E) if self._use_table(length, B) else None
        out = self.backend.fused.decode(
            logits, state, table, (E, first.kernel, first.bias),
            [(lstm.kernel, lstm.bias) for lstm in self.lstms[1:]],
            [lstm.recurrent_kernel for lstm in self.lstms], (self.dense.kernel, self.dense.bias),
            length, self.backend.dtype.type(temperature), banned_mask, eos_id, u)
        if out is None:
            raise SamplingError("logits must be finite: a row holds NaN or +inf")
        return self.backend.to_host(out)

    # -- checkpoints ---------------------------------------------------------------
    def save(self, path, optimizer=None, rng=None, metadata=None):
        """Write one checkpoint file atomically (see :mod:`scratchlm.checkpoint`)."""
        checkpoint.save(path, self, optimizer=optimizer, rng=rng, metadata=metadata)

    @classmethod
    def load(cls, path, backend="numpy"):
        """Rebuild a model from :meth:`save`'s file on any backend. Raises CheckpointError."""
        return checkpoint.load(path, backend=backend).model
