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

from . import checkpoint, sampling
from .backend import Backend, get_backend
from .errors import SamplingError
from .layers import LSTM, Dense, Embedding
from .losses import softmax_cross_entropy


class LanguageModel:
    """An LSTM language model over a vocabulary of ``vocab_size`` token ids.

    embedding_dim: None for one-hot input (the first LSTM's kernel is then
        (V, 4H) and its input projection is a row lookup), or the size E of a
        learned Embedding.
    hidden_sizes: units of each stacked LSTM layer, bottom first.
    backend: "numpy", "cupy", "auto" or a Backend; dtype: "float32" | "float64".
    seed: seeds the weight initialisation (the same seed gives the same
        weights on every backend).
    stateful: carry (h, c) from one call to the next (truncated BPTT over
        consecutive chunks of parallel streams); see :meth:`reset_state`.
    """

    def __init__(self, vocab_size, embedding_dim=None, hidden_sizes=(128,), backend="numpy",
                 dtype="float32", seed=0, stateful=False):
        hidden_sizes = [int(h) for h in hidden_sizes]
        if int(vocab_size) < 1:
            raise ValueError(f"vocab_size must be at least 1, got {vocab_size}")
        if not hidden_sizes or min(hidden_sizes) < 1:
            raise ValueError(f"hidden_sizes must be a non-empty list of positive sizes, got {hidden_sizes}")
        if embedding_dim is not None and int(embedding_dim) < 1:
            raise ValueError(f"embedding_dim must be None (one-hot input) or positive, got {embedding_dim}")
        self.backend = get_backend(backend, dtype)
        self.vocab_size = V = int(vocab_size)
        self.embedding_dim = None if embedding_dim is None else int(embedding_dim)
        self.hidden_sizes = hidden_sizes
        self.stateful = bool(stateful)
        self.seed = seed

        rng = Backend.rng(seed)
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
        """Copy arrays (host or device) into the parameters, by name; shapes must match."""
        params = self.params
        missing = sorted(set(params) - set(values))
        if missing:
            raise ValueError(f"missing parameters: {', '.join(missing)}")
        for name, p in params.items():
            v = self.backend.asarray(values[name], dtype=p.dtype)
            if v.shape != p.shape:
                raise ValueError(f"parameter {name} has shape {p.shape}, got {v.shape}")
            p[...] = v

    def reset_state(self):
        """Stateful mode: start the next batch from zero state."""
        for lstm in self.lstms:
            lstm.reset_state()

    def __repr__(self):
        inp = "one-hot" if self.embedding is None else f"Embedding({self.vocab_size}, {self.embedding_dim})"
        return (f"LanguageModel({inp} -> LSTM{self.hidden_sizes} -> Dense({self.vocab_size}), "
                f"{self.backend.name}, {self.backend.dtype.name})")

    # -- input checks ------------------------------------------------------------
    def _tokens(self, x, name="x", shape=None):
        """x as a device array of token ids: integer, in [0, V), of ``shape`` (default: any (batch, time))."""
        x = self.backend.xp.asarray(x)
        if (x.ndim != 2 if shape is None else x.shape != shape) or x.dtype.kind not in "iu":
            raise ValueError(f"{name} must be an integer array of shape {shape or '(batch, time)'}, "
                             f"got {x.dtype} {x.shape}")
        if x.size and (int(x.min()) < 0 or int(x.max()) >= self.vocab_size):
            raise ValueError(f"{name} holds token ids outside [0, {self.vocab_size})")
        return x

    def _time_major_mask(self, mask, shape):
        if mask is None:
            return None
        mask = self.backend.xp.asarray(mask)
        if mask.shape != shape:
            raise ValueError(f"mask must have the shape of x {shape}, got {mask.shape}")
        return mask.astype(bool).T                                        # (T, B)

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

        state: per layer (h, c), each (B, H_l), or None for zeros (or, in
        stateful mode, the state the previous call ended with).
        mask: (B, T) bool, True = real token; masked steps keep the LSTM state
        (Keras semantics). The returned state is the final (h, c) per layer.
        """
        x = self._tokens(x)
        logits, new_state, _ = self._forward(x.T, state, self._time_major_mask(mask, x.shape), False)
        return logits.transpose(1, 0, 2), new_state

    def _scored_forward(self, x, y, mask, state, last_only):
        x = self._tokens(x)
        B, T = x.shape
        mask_tm = self._time_major_mask(mask, x.shape)
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

        x (B, T) int inputs. y: (B, T) next-token targets, or with ``last_only``
        (B,) targets for the final step only (the seed Nietzsche model: read a
        window, predict the character after it). mask (B, T): padding steps are
        skipped by the LSTM and, unless ``last_only``, not scored.
        Returns (loss: float, grads: dict name -> array shaped like params[name]).
        """
        loss, dlogits, cache = self._scored_forward(x, y, mask, state, last_only)
        return loss, self._backward(cache, dlogits)

    # -- generation ---------------------------------------------------------------
    def generate(self, prompt_ids, length, temperature=1.0, top_k=None, top_p=None, eos_id=None,
                 banned_ids=(), seed=None):
        """Sample ``length`` tokens after each prompt; returns host int64 ids.

        prompt_ids: (T_p,) or (B, T_p) ints, equal-length prompts, T_p >= 1.
        The prompt is run once; each new token then costs one LSTM step fed
        with the state of the previous one (the prefix is never re-run).
        temperature 0 = greedy; top_k / top_p restrict the candidates;
        banned_ids are never produced. With ``eos_id``, a sequence stops at its
        first EOS; finished rows are padded with ``eos_id`` and generation ends
        when every row has finished. Returns (length',) or (B, length') with
        length' <= length. The model's own stateful state is left untouched.
        On the fused path (without top_k/top_p) the token loop runs in
        ``scratchlm.kernels``: the same draws and, up to float round-off in
        the logits, the same ids.
        """
        sampling.check_options(temperature, top_k, top_p)
        length = int(length)
        if length < 0:
            raise ValueError(f"length must be >= 0, got {length}")
        xp = self.backend.xp
        host = self.backend.to_host(xp.asarray(prompt_ids))
        single = host.ndim == 1
        prompt = self._tokens(host[None, :] if single else host, name="prompt_ids")
        B, T = prompt.shape
        if T < 1:
            raise ValueError("the prompt must hold at least one token")
        banned = [int(b) for b in banned_ids]
        if any(not 0 <= b < self.vocab_size for b in banned):
            raise ValueError(f"banned_ids must lie in [0, {self.vocab_size})")
        rng = Backend.rng(seed)
        zeros = [(self.backend.zeros((B, h)), self.backend.zeros((B, h))) for h in self.hidden_sizes]

        logits, state, _ = self._forward(prompt.T, zeros, None, last_only=True)     # (B, V)
        if self.backend.kernels == "fused" and top_k is None and top_p is None:
            out = self._decode_fused(logits, state, length, temperature, banned, eos_id, rng)
            return out[0] if single else out
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
                out = out[:, :k + 1]
                break
            if k + 1 < length:
                logits, state, _ = self._forward(ids[None, :], state, None, last_only=True)
        return out[0] if single else out

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
