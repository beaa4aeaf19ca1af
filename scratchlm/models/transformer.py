"""TransformerLM: tokens -> PositionalEmbedding -> decoder blocks -> Dense -> logits (the IMDB seed's model).

    model = TransformerLM(15000, sequence_length=100)        # the seed: E 256, F 2048, 2 heads, 1 book block
    loss, grads = model.loss_and_grads(x, y)                 # x, y (B, T) word ids, 0 = padding
    ids = model.generate(prompt_ids, 50, temperature=0.7)    # KV cache: one position's work per token

Token id 0 is padding (Keras ``mask_zero=True``): it is masked out of every
attention (as a query and as a key) and the loss is the mean over positions
whose *input* token is not padding, as Keras computes the seed's loss. Masks:
causal ∧ query padding ∧ key padding, for both attentions of the book block
(the seed's code, under Keras 3, must be given them explicitly; see
docs/design.md). ``block="gpt"`` uses the pre-LayerNorm block instead, with a
final LayerNorm after the last block.

Parameter names, so that Keras weights map by name: ``embedding/token_embeddings``
(V, E), ``embedding/position_embeddings`` (L, E), ``decoder_{n}/attention_1/{query,key,value,output}/{kernel,bias}``,
``decoder_{n}/attention_2/…`` (book block), ``decoder_{n}/layernorm_{1,2,3}/{gamma,beta}``,
``decoder_{n}/ffn_1/{kernel,bias}`` (E, F), ``decoder_{n}/ffn_2/{kernel,bias}`` (F, E),
``final_layernorm/{gamma,beta}`` (gpt block), ``dense/{kernel,bias}``.

On a fused backend (the NumPy default where Numba is installed) the layers run
their fused kernels (flash attention, one-pass LayerNorm, bias + ReLU), the loss
over every position goes through :meth:`_score` (the output projection and the
cross-entropy in chunks of rows: the (B·T, V) logits never exist), and
generation through :meth:`_decode_fused` (each block's ``decode_step``). The
numbers are the reference path's up to round-off (tests/test_transformer_kernels.py).
"""

from typing import NamedTuple

from .. import checkpoint
from ..backend import Backend
from ..errors import ModelError, SamplingError
from ..layers import Dense, LayerNormalization, PositionalEmbedding
from ..layers.attention import causal_mask
from ..layers.decoder import BLOCKS
from ..layers.dense import ScoredGrads
from .base import TokenModel, is_whole


class TransformerCache(NamedTuple):
    """What the model's backward needs from its forward."""
    ids: object               # (B, T) token ids
    blocks: list              # one block cache per decoder block
    final: object             # LayerNormCache of the final LayerNorm (gpt block), or None
    top: object               # (B, T, E) the Dense layer's input
    last_only: bool           # only the last position was scored


class DecodeState(NamedTuple):
    """What generation carries from one token to the next."""
    ids: object               # (B, n) every token so far (prompt and generated)
    kv: list                  # per block, its KVCaches for the current window
    start: int                # the window's first token in ``ids``: its positions are 0 … n - start - 1
    keep: object              # (B, n - start) bool: the window's real (non-padding) tokens


def _rules():
    size = (lambda v: is_whole(v) and 0 < v <= checkpoint.LARGEST, "a whole number in [1, 2**63)")
    return {
        "kind": (lambda v: v == "transformer", "'transformer'"),
        "vocab_size": size,
        "sequence_length": size,
        "embed_dim": size,
        "dense_dim": size,
        "num_heads": size,
        "key_dim": size,
        "num_layers": size,
        "block": (lambda v: v in BLOCKS, " or ".join(map(repr, BLOCKS))),
        "dtype": (lambda v: v in ("float32", "float64"), "'float32' or 'float64'"),
        "seed": (lambda v: v is None or (is_whole(v) and v >= 0), "null or a whole number >= 0"),
    }


class TransformerLM(TokenModel):
    """A decoder-only Transformer language model; see the module docstring.

    vocab_size V; sequence_length L: the longest input (learned positions);
    embed_dim E, dense_dim F (the feed-forward's hidden size), num_heads N,
    key_dim K (None: E, as the seed's ``MultiHeadAttention(key_dim=embed_dim)``:
    every head has K dimensions of its own), num_layers, block "book" | "gpt";
    backend, dtype, seed as for :class:`~scratchlm.models.LanguageModel`.
    """

    kind = "transformer"
    stateful = False
    CONFIG_RULES = _rules()
    CONFIG_DEFAULTS = {}

    def __init__(self, vocab_size, sequence_length, embed_dim=256, dense_dim=2048, num_heads=2, key_dim=None,
                 num_layers=1, block="book", backend="numpy", dtype="float32", seed=0):
        super().__init__(vocab_size, backend, dtype)
        key_dim = embed_dim if key_dim is None else key_dim
        sizes = {"sequence_length": sequence_length, "embed_dim": embed_dim, "dense_dim": dense_dim,
                 "num_heads": num_heads, "key_dim": key_dim, "num_layers": num_layers}
        for name, value in sizes.items():
            if not is_whole(value) or value < 1:
                raise ModelError(f"{name} must be a whole number >= 1, got {value!r}")
        if block not in BLOCKS:
            raise ModelError(f"block must be {self.CONFIG_RULES['block'][1]}, got {block!r}")
        for name, value in sizes.items():
            setattr(self, name, int(value))
        self.block = block
        self.seed = None if seed is None else int(seed)
        self._check_fits(self.parameter_count(self.config),
                         f"use a smaller embed_dim ({embed_dim:,}), dense_dim ({dense_dim:,}), key_dim ({key_dim:,}), "
                         f"vocabulary ({vocab_size:,}) or sequence_length ({sequence_length:,}), or fewer "
                         f"num_heads ({num_heads:,}) or num_layers ({num_layers:,})")
        rng = Backend.rng(seed)
        V, E = self.vocab_size, self.embed_dim
        self.embedding = PositionalEmbedding(V, self.sequence_length, E, self.backend, rng)
        self.blocks = [BLOCKS[block](E, self.dense_dim, self.num_heads, self.key_dim, self.backend, rng)
                       for _ in range(self.num_layers)]
        self.final_layernorm = LayerNormalization(E, self.backend) if block == "gpt" else None
        self.dense = Dense(E, V, self.backend, rng)

    # -- what a config means, without building the model -----------------------------
    @property
    def config(self):
        return {"kind": self.kind, "vocab_size": self.vocab_size, "sequence_length": self.sequence_length,
                "embed_dim": self.embed_dim, "dense_dim": self.dense_dim, "num_heads": self.num_heads,
                "key_dim": self.key_dim, "num_layers": self.num_layers, "block": self.block,
                "dtype": self.backend.dtype.name, "seed": self.seed}

    @classmethod
    def check_config(cls, config, what):
        checkpoint.check_fields(config, cls.CONFIG_RULES, what, exact=True)

    @staticmethod
    def parameter_shapes(config):
        """(name, shape) of every parameter of ``TransformerLM(**config)``, in ``params`` order (a generator)."""
        V, L, E, F = config["vocab_size"], config["sequence_length"], config["embed_dim"], config["dense_dim"]
        N, K = config["num_heads"], config["key_dim"]
        yield "embedding/token_embeddings", (V, E)
        yield "embedding/position_embeddings", (L, E)
        attentions = ("attention_1", "attention_2") if config["block"] == "book" else ("attention_1",)
        norms = ("layernorm_1", "layernorm_2", "layernorm_3") if config["block"] == "book" else \
            ("layernorm_1", "layernorm_2")
        for n in range(config["num_layers"]):
            for a in attentions:
                for proj in ("query", "key", "value"):
                    yield f"decoder_{n}/{a}/{proj}/kernel", (E, N, K)
                    yield f"decoder_{n}/{a}/{proj}/bias", (N, K)
                yield f"decoder_{n}/{a}/output/kernel", (N, K, E)
                yield f"decoder_{n}/{a}/output/bias", (E,)
            for ln in norms:
                yield f"decoder_{n}/{ln}/gamma", (E,)
                yield f"decoder_{n}/{ln}/beta", (E,)
            yield f"decoder_{n}/ffn_1/kernel", (E, F)
            yield f"decoder_{n}/ffn_1/bias", (F,)
            yield f"decoder_{n}/ffn_2/kernel", (F, E)
            yield f"decoder_{n}/ffn_2/bias", (E,)
        if config["block"] == "gpt":
            yield "final_layernorm/gamma", (E,)
            yield "final_layernorm/beta", (E,)
        yield "dense/kernel", (E, V)
        yield "dense/bias", (V,)

    @staticmethod
    def describe(config, backend="numpy"):
        c = config
        return (f"TransformerLM(PositionalEmbedding({c['vocab_size']}, {c['sequence_length']}, {c['embed_dim']}) -> "
                f"{c['num_layers']} x {c['block']} block(heads {c['num_heads']}, key_dim {c['key_dim']}, "
                f"dense {c['dense_dim']}) -> Dense({c['vocab_size']}), {backend}, {c['dtype']})")

    def _named_layers(self):
        named = [("embedding", self.embedding)] + [(f"decoder_{n}", b) for n, b in enumerate(self.blocks)]
        if self.final_layernorm is not None:
            named.append(("final_layernorm", self.final_layernorm))
        return named + [("dense", self.dense)]

    # -- masks -------------------------------------------------------------------------
    def _mask(self, x, mask):
        """The positions that count, (T, B): the caller's mask (if any) ∧ input token != 0 (padding)."""
        keep = (x != 0).T
        given = super()._mask(x, mask)
        return keep if given is None else given & keep

    def _attention_mask(self, keep, T):
        """keep (B, T) bool -> (B, T, T): causal ∧ query keep ∧ key keep (Keras combines them by AND)."""
        xp = self.backend.xp
        return causal_mask(T, T, xp)[None] & keep[:, :, None] & keep[:, None, :]

    # -- forward / backward ----------------------------------------------------------
    def _hidden(self, ids, mask, last_only):
        """ids (T, B), mask (T, B) -> the Dense layer's input (B, T or 1, E) and the cache."""
        x = ids.T                                                          # (B, T)
        T = x.shape[1]
        if T > self.sequence_length:
            raise ModelError(f"sequences of {T} tokens are longer than this model's sequence_length "
                             f"{self.sequence_length}: cut them")
        keep = (x != 0) if mask is None else mask.T                        # (B, T)
        attention = self._attention_mask(keep, T)
        h = self.embedding.forward(x)                                      # (B, T, E)
        caches = []
        for block in self.blocks:
            h, cache = block.forward(h, attention)
            caches.append(cache)
        final = None
        if self.final_layernorm is not None:
            h, final = self.final_layernorm.forward(h)
        top = h[:, -1:] if last_only else h                                # (B, 1 or T, E)
        return top, TransformerCache(x, caches, final, top, last_only)

    def _forward(self, ids, state, mask, last_only, dropout_masks=None):
        """ids (T, B), mask (T, B) -> (logits (T, B, V), or (B, V) with ``last_only``, None, cache)."""
        top, cache = self._hidden(ids, mask, last_only)
        logits = self.dense.forward(top)                                   # (B, T', V)
        logits = logits[:, 0] if last_only else logits.transpose(1, 0, 2)  # (B, V) or (T, B, V)
        return logits, [], cache

    def _score(self, ids, y, state, mask, last_only, dropout_masks, backward=True):
        """On the fused path, the loss over every position without the (B·T, V) logits: Dense.score runs
        the output projection and the cross-entropy in chunks of rows and hands back dtop, dW and db
        (a ScoredGrads, which :meth:`_backward` takes instead of dlogits). Elsewhere, the default."""
        if self.dense.fused is None or last_only:
            return super()._score(ids, y, state, mask, last_only, dropout_masks, backward)
        top, cache = self._hidden(ids, mask, False)                        # (B, T, E)
        B, T, E = top.shape
        keep = None if mask is None else mask.T.reshape(-1)                # (B·T,), batch-major like top
        loss, grads = self.dense.score(top.reshape(B * T, E), y.reshape(-1), keep, backward)
        return loss, grads, cache

    def _backward(self, cache, dlogits):
        grads = {}
        B, T = cache.ids.shape
        if isinstance(dlogits, ScoredGrads):                               # from the chunked loss
            dtop = dlogits.dx.reshape(cache.top.shape)
            g = {"kernel": dlogits.kernel, "bias": dlogits.bias}
        else:
            d = dlogits[:, None] if cache.last_only else dlogits.transpose(1, 0, 2)   # (B, T', V)
            dtop, g = self.dense.backward(cache.top, d)
        grads.update({f"dense/{k}": v for k, v in g.items()})
        if cache.last_only:
            dh = self.backend.zeros((B, T, self.embed_dim))
            dh[:, -1:] = dtop
        else:
            dh = dtop
        if self.final_layernorm is not None:
            dh, g = self.final_layernorm.backward(cache.final, dh)
            grads.update({f"final_layernorm/{k}": v for k, v in g.items()})
        for n in reversed(range(len(self.blocks))):
            dh, g = self.blocks[n].backward(cache.blocks[n], dh)
            grads.update({f"decoder_{n}/{k}": v for k, v in g.items()})
        _, g = self.embedding.backward(cache.ids, dh)
        grads.update({f"embedding/{k}": v for k, v in g.items()})
        return {name: grads[name] for name in self.params}

    # -- generation with a key/value cache ------------------------------------------------
    def _run_window(self, new, kv, position, keep):
        """Tokens ``new`` (B, T) at window positions position … position+T-1, after the ``keep`` (B, position)
        of those already in the KV caches ``kv`` -> (logits of the last new position (B, V), keep (B, S))."""
        xp = self.backend.xp
        T = new.shape[1]
        keep = xp.concatenate([keep, new != 0], axis=1)                    # (B, S), S = position + T
        mask = causal_mask(T, keep.shape[1], xp, offset=position)[None] & keep[:, None, :] & (new != 0)[:, :, None]
        h = self.embedding.forward(new, position)                          # (B, T, E)
        for block, caches in zip(self.blocks, kv):
            h = block.step(h, caches, mask)
        if self.final_layernorm is not None:
            h = self.final_layernorm.forward(h)[0]
        return self.dense.forward(h[:, -1]), keep                          # (B, V)

    def _window(self, ids, start):
        """Run the window ids[:, start:] into fresh KV caches -> (logits (B, V), DecodeState)."""
        B = ids.shape[0]
        kv = [block.new_cache(B, self.sequence_length) for block in self.blocks]
        logits, keep = self._run_window(ids[:, start:], kv, 0, self.backend.xp.zeros((B, 0), dtype=bool))
        return logits, DecodeState(ids, kv, start, keep)

    def _start(self, prompt):
        """The prompt (T, B) run once (its last ``sequence_length`` tokens at most)."""
        ids = prompt.T                                                     # (B, T)
        return self._window(ids, max(0, ids.shape[1] - self.sequence_length))

    def _decode_fused(self, logits, state, length, temperature, banned, eos_id, rng):
        """The token loop of :meth:`generate` on the fused kernels: the same draws from ``rng`` (one uniform per
        row and token) and, up to float round-off in the logits, the same ids as the reference loop. Each
        token while the window has room is one :meth:`_decode_step`; past ``sequence_length`` the window is
        re-run as :meth:`_step` does."""
        fused = self.dense.fused
        if fused is None:
            return None
        xp = self.backend.xp
        B, V = logits.shape
        temperature, u, banned_mask = self._fused_draws(V, length, B, temperature, banned, rng)
        weights = [block.decode_weights() for block in self.blocks]

        def draw(k, logits):                                              # the sampler overwrites the logits
            ids = xp.zeros(B, dtype=xp.int64)
            if not fused.sample_logits(logits, banned_mask, temperature, u[k], ids):
                raise SamplingError("logits must be finite: a row holds NaN or +inf")
            return ids

        def step(ids, state):
            if state.ids.shape[1] + 1 - state.start > self.sequence_length:    # the window slides
                return self._step(ids, state)
            return self._decode_step(ids, state, weights)

        return self._token_loop(xp.array(logits), state, length, eos_id, draw, step)

    def _decode_step(self, new_ids, state, weights):
        """One new token per row, (B,), while the window has room: :meth:`_step`'s numbers through each
        block's :meth:`decode_step` (one position's work, the fused kernels)."""
        xp = self.backend.xp
        ids = xp.concatenate([state.ids, new_ids[:, None]], axis=1)       # (B, n)
        position = ids.shape[1] - 1 - state.start
        real = new_ids != 0                                               # (B,)
        keep = xp.concatenate([state.keep, real[:, None]], axis=1)        # (B, S), S = position + 1
        mask = (keep & real[:, None])[:, None, :]                         # (B, 1, S): causal holds by construction
        h = self.embedding.forward(new_ids[:, None], position)[:, 0]      # (B, E)
        for block, caches, w in zip(self.blocks, state.kv, weights):
            h = block.decode_step(h, caches, mask, w)
        if self.final_layernorm is not None:
            h = self.final_layernorm.forward(h)[0]
        return self.dense.forward(h), DecodeState(ids, state.kv, state.start, keep)

    def _step(self, new_ids, state):
        """One new token per row, (B,): one position's work while the window has room. Past
        ``sequence_length`` tokens the model sees the last ``sequence_length`` of them (its learned positions
        end there): the window slides by one and is re-run in full for each further token, which is what
        the seed pays for every token."""
        ids = self.backend.xp.concatenate([state.ids, new_ids[:, None]], axis=1)   # (B, n)
        n = ids.shape[1]
        if n - state.start > self.sequence_length:
            return self._window(ids, n - self.sequence_length)
        logits, keep = self._run_window(new_ids[:, None], state.kv, n - 1 - state.start, state.keep)
        return logits, DecodeState(ids, state.kv, state.start, keep)
