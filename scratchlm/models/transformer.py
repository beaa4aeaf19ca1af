"""TransformerLM: tokens -> PositionalEmbedding -> decoder blocks -> Dense -> logits (the IMDB seed's model).

    model = TransformerLM(15000, sequence_length=100)        # the seed: E 256, F 2048, 2 heads, 1 book block
    loss, grads = model.loss_and_grads(x, y)                 # x, y (B, T) word ids, 0 = padding (pad_id)
    ids = model.generate(prompt_ids, 50, temperature=0.7)    # KV cache: one position's work per token

The model works **batch-major** end to end, (B, T, ...), as users pass their
arrays: attention sees every position at once, so no step slice needs to be
contiguous.

The padding id is a property of the model, ``pad_id``: 0 by default (the seed's, Keras ``mask_zero=True``),
or None (GPT-2's: no id is padding, id 0 is a token like any other). Padding is masked out of every
attention (as a query and as a key) and the loss is the mean over positions whose *input* token is not
padding, as Keras computes the seed's loss. Masks: causal ∧ query padding ∧ key padding, for both
attentions of the book block (the seed's code, under Keras 3, must be given them explicitly; see
docs/design.md); with ``pad_id=None`` only the causal mask and the caller's ``mask``. ``block="gpt"`` uses
the pre-LayerNorm block instead, with a final LayerNorm after the last block.

GPT-2's options (nanoGPT's model with ``activation="gelu", layernorm_epsilon=1e-5,
tie_embeddings=True, init="gpt2"``; each kept in ``config``, so checkpoints keep
them, and a checkpoint written before them loads with the defaults, the seed's):

    activation          "relu" (the seed's) | "gelu" (exact, PyTorch's nn.GELU) | "gelu_tanh" (GPT-2's gelu_new)
    layernorm_epsilon   ε of every LayerNorm: 1e-3 (Keras') or GPT's 1e-5
    tie_embeddings      logits = h Etᵀ with the token table Et (V, E) and no output bias; the table's gradient
                        is the sum of the lookup's and the projection's: dEt += (hᵀ dlogits)ᵀ
    use_bias            False: no bias in the projections, the feed-forward, the LayerNorms (β) or the output
    init                "keras" (the seed's) | "gpt2": weights and embeddings N(0, 0.02), biases 0, and the
                        residual output projections (attention output, ffn_2) N(0, 0.02/√(2·num_layers))
    dropout             one rate (gpt block) on the embeddings' sum, the attention probabilities and each
                        residual branch, in training only; its masks come from :attr:`dropout_rng` (seeded by
                        ``seed``, saved in checkpoints, so resuming draws the uninterrupted run's masks)
    pad_id              the padding id (0, the seed's) or None (GPT-2's: nothing is masked by id)

Parameter names, so that Keras weights map by name: ``embedding/token_embeddings``
(V, E), ``embedding/position_embeddings`` (L, E), ``decoder_{n}/attention_1/{query,key,value,output}/{kernel,bias}``,
``decoder_{n}/attention_2/…`` (book block), ``decoder_{n}/layernorm_{1,2,3}/{gamma,beta}``,
``decoder_{n}/ffn_1/{kernel,bias}`` (E, F), ``decoder_{n}/ffn_2/{kernel,bias}`` (F, E),
``final_layernorm/{gamma,beta}`` (gpt block), ``dense/{kernel,bias}`` (none when tied; no
``bias`` entries with ``use_bias=False``).

Every layer, the loss and the token loop are built through ``backend.layer``:
on a fused backend (the NumPy default where Numba is installed) the layers are
their fused subclasses (flash attention, one-pass LayerNorm, bias + ReLU), the
loss over every position goes through ``Dense.score`` in chunks of rows (the
(B·T, V) logits never exist), and generation through the fused token loop. The
numbers are the reference path's up to round-off (tests/test_transformer_kernels.py).
"""

import math
import numbers
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy

from .. import checkpoint
from ..backend import Array, Backend
from ..checks import is_whole, whole_at_least
from ..errors import CheckpointError, ModelError
from ..layers import Dense, Dropout, LayerNormalization, PositionalEmbedding
from ..layers.activations import ACTIVATIONS
from ..layers.attention import causal_mask
from ..layers.base import Shape, prefixed_items
from ..layers.decoder import BLOCKS, GPTBlockDropout
from ..layers.dropout import RATE, is_rate
from .base import TokenModel
from .generation import TokenLoop


class TransformerCache(NamedTuple):
    """What the model's backward needs from its forward and loss."""

    ids: Array  # (B, T) token ids
    blocks: list  # one block cache per decoder block
    final: Any  # the final LayerNorm's cache (gpt block), or None
    last_only: bool  # only the last position was scored
    head: Any  # every position scored: Dense.score's cache; last_only: the Dense layer's cache
    dlogits: Array | None  # last_only: ∂L/∂logits (B, 1, V) from the loss; else None (the score keeps its own)
    embedding_dropout: Array | None = None  # (B, T, E) keep-mask of the embeddings' dropout, or None


class TransformerDropout(NamedTuple):
    """The keep-masks of one training batch (bool, True = kept), drawn by :meth:`TransformerLM.dropout_masks`."""

    embedding: Array  # (B, T, E) of the embeddings' sum
    blocks: list  # one GPTBlockDropout per block


class DecodeState(NamedTuple):
    """What generation carries from one token to the next."""

    ids: Array  # (B, n) every token so far (prompt and generated)
    kv: list  # per block, its KV caches for the current window
    start: int  # the window's first token in ``ids``: its positions are 0 … n - start - 1
    keep: Array  # (B, n - start) bool: the window's real (non-padding) tokens, all True when pad_id is None


INITS = ("keras", "gpt2")
GPT2_STD = 0.02  # GPT-2's (and nanoGPT's) initial standard deviation


def _is_epsilon(v: object) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def _is_pad_id(v: object) -> bool:
    return v is None or whole_at_least(0)(v)


def _rules() -> dict:
    size = (whole_at_least(1), "a whole number in [1, 2**63)")
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
        "activation": (lambda v: v in ACTIVATIONS, " or ".join(map(repr, ACTIVATIONS))),
        "layernorm_epsilon": (_is_epsilon, "a finite number > 0 (Keras' 1e-3, GPT's 1e-5)"),
        "tie_embeddings": (lambda v: isinstance(v, bool), "true or false"),
        "use_bias": (lambda v: isinstance(v, bool), "true or false"),
        "init": (lambda v: v in INITS, " or ".join(map(repr, INITS))),
        "dropout": (is_rate, RATE),
        "pad_id": (_is_pad_id, "null (None: no padding id) or a token id below vocab_size"),
        "dtype": (lambda v: v in ("float32", "float64"), "'float32' or 'float64'"),
        "seed": (lambda v: v is None or (is_whole(v) and v >= 0), "null (None) or a whole number >= 0"),
    }


class TransformerTokenLoop(TokenLoop):
    """The Transformer's generation: the state is the KV caches of the current window (:class:`DecodeState`),
    and one new token costs one position's work. The window holds at most ``sequence_length`` tokens (the
    learned positions end there): past it, it slides by one and is re-run in full for each further token,
    which is what the seed pays for every token."""

    def start(self, prompt: Array) -> tuple[Array, DecodeState]:
        """The prompt (B, T) run once (its last ``sequence_length`` tokens at most)."""
        return self._window(prompt, max(0, prompt.shape[1] - self.model.sequence_length))

    def step(self, new_ids: Array, state: DecodeState) -> tuple[Array, DecodeState]:
        """One new token per row, (B,): one position's work while the window has room."""
        ids = self.backend.xp.concatenate([state.ids, new_ids[:, None]], axis=1)  # (B, n)
        n = ids.shape[1]
        if n - state.start > self.model.sequence_length:
            return self._window(ids, n - self.model.sequence_length)
        logits, keep = self._run_window(new_ids[:, None], state.kv, n - 1 - state.start, state.keep)
        return logits, DecodeState(ids, state.kv, state.start, keep)

    def _window(self, ids: Array, start: int) -> tuple[Array, DecodeState]:
        """Run the window ids[:, start:] into fresh KV caches -> (logits (B, V), DecodeState)."""
        B = ids.shape[0]
        kv = [block.new_cache(B, self.model.sequence_length) for block in self.model.blocks]
        logits, keep = self._run_window(ids[:, start:], kv, 0, self.backend.xp.zeros((B, 0), dtype=bool))
        return logits, DecodeState(ids, kv, start, keep)

    def _run_window(self, new: Array, kv: list, position: int, keep: Array) -> tuple[Array, Array]:
        """Tokens ``new`` (B, T) at window positions position … position+T-1, after the ``keep`` (B, position)
        of those already in the KV caches ``kv`` -> (logits of the last new position (B, V), keep (B, S))."""
        model, xp = self.model, self.backend.xp
        T = new.shape[1]
        real = model.keep(new)  # (B, T)
        keep = xp.concatenate([keep, real], axis=1)  # (B, S), S = position + T
        mask = causal_mask(T, keep.shape[1], xp, offset=position)[None] & keep[:, None, :] & real[:, :, None]
        h, _ = model.embedding.forward(new, position)  # (B, T, E)
        for block, caches in zip(model.blocks, kv, strict=True):
            h = block.step(h, caches, mask)
        if model.final_layernorm is not None:
            h = model.final_layernorm.forward(h)[0]
        return model.dense.forward(h[:, -1])[0], keep  # (B, V)


class TransformerLM(TokenModel):
    """A decoder-only Transformer language model; see the module docstring.

    vocab_size V; sequence_length L: the longest input (learned positions);
    embed_dim E, dense_dim F (the feed-forward's hidden size), num_heads N,
    key_dim K (None: E, as the seed's ``MultiHeadAttention(key_dim=embed_dim)``:
    every head has K dimensions of its own), num_layers, block "book" | "gpt";
    backend, dtype, seed as for :class:`~scratchlm.models.RecurrentLM`;
    activation, layernorm_epsilon, tie_embeddings, use_bias, init, dropout: the
    GPT-2 options of the module docstring; pad_id: the padding id, 0 or None (no
    padding, GPT-2's). The arguments are checked by the same rules as a
    checkpoint's config.
    """

    kind = "transformer"
    stateful = False
    CONFIG_RULES = _rules()
    CONFIG_DEFAULTS = {  # fields a config written before they existed may lack: the seed's model
        "activation": "relu",
        "layernorm_epsilon": 1e-3,
        "tie_embeddings": False,
        "use_bias": True,
        "init": "keras",
        "dropout": 0.0,
        "pad_id": 0,
    }
    token_loop = TransformerTokenLoop

    def __init__(
        self,
        vocab_size: int,
        sequence_length: int,
        embed_dim: int = 256,
        dense_dim: int = 2048,
        num_heads: int = 2,
        key_dim: int | None = None,
        num_layers: int = 1,
        block: str = "book",
        backend: Any = "numpy",
        dtype: str = "float32",
        seed: int | None = 0,
        activation: str = "relu",
        layernorm_epsilon: float = 1e-3,
        tie_embeddings: bool = False,
        use_bias: bool = True,
        init: str = "keras",
        dropout: float = 0.0,
        pad_id: int | None = 0,
    ):
        key_dim = embed_dim if key_dim is None else key_dim
        options = {
            "activation": activation,
            "layernorm_epsilon": layernorm_epsilon,
            "tie_embeddings": tie_embeddings,
            "use_bias": use_bias,
            "init": init,
            "dropout": dropout,
            "pad_id": pad_id,
        }
        sizes = {
            "sequence_length": sequence_length,
            "embed_dim": embed_dim,
            "dense_dim": dense_dim,
            "num_heads": num_heads,
            "key_dim": key_dim,
            "num_layers": num_layers,
        }
        super().__init__({"vocab_size": vocab_size, **sizes, "block": block, "seed": seed, **options}, backend, dtype)
        if dropout > 0 and block != "gpt":
            raise ModelError(f"dropout is an option of the gpt block: use block='gpt' or dropout=0, got {dropout!r}")
        if pad_id is not None and pad_id >= vocab_size:
            raise ModelError(f"pad_id must be None or a token id in [0, {vocab_size}), got {pad_id!r}")
        for name, value in sizes.items():
            setattr(self, name, int(value))
        self.block = block
        self.seed = None if seed is None else int(seed)
        self.activation, self.layernorm_epsilon = activation, float(layernorm_epsilon)
        self.tie_embeddings, self.use_bias, self.init = tie_embeddings, use_bias, init
        self.pad_id = None if pad_id is None else int(pad_id)
        self.dropout = self.backend.layer(Dropout)(float(dropout), self.backend)  # embeddings' and blocks' rate
        self.dropout_rng = numpy.random.default_rng(None if seed is None else [int(seed), 1])  # not the weights'
        self._check_fits(
            self.parameter_count(self.config),
            f"use a smaller embed_dim ({embed_dim:,}), dense_dim ({dense_dim:,}), key_dim ({key_dim:,}), "
            f"vocabulary ({vocab_size:,}) or sequence_length ({sequence_length:,}), or fewer "
            f"num_heads ({num_heads:,}) or num_layers ({num_layers:,})",
        )
        rng = Backend.rng(seed)
        V, E = self.vocab_size, self.embed_dim
        layer = self.backend.layer
        self.embedding = layer(PositionalEmbedding)(V, self.sequence_length, E, self.backend, rng)
        eps = self.layernorm_epsilon
        extra = {"dropout": float(dropout)} if block == "gpt" else {}
        self.blocks = [
            layer(BLOCKS[block])(
                E, self.dense_dim, self.num_heads, self.key_dim, self.backend, rng, activation, eps, use_bias, **extra
            )
            for _ in range(self.num_layers)
        ]
        self.final_layernorm = layer(LayerNormalization)(E, self.backend, eps, use_bias) if block == "gpt" else None
        if tie_embeddings:  # the output kernel is the token table, transposed: a view, updated with it
            self.dense = layer(Dense)(E, V, self.backend, rng, False, kernel=self.embedding.token_embeddings.T)
            # The generator moves on as if the (E, V) kernel had been drawn (one 64-bit step per uniform), so the
            # draws after it (init="gpt2") are those of every earlier scratchlm, and no E·V floats are drawn to be
            # thrown away (GPT-2's: 38.6 million, 463 MB at the peak of from_hf).
            rng.bit_generator.advance(E * V)
        else:
            self.dense = layer(Dense)(E, V, self.backend, rng, use_bias)
        if init == "gpt2":
            self._init_gpt2(rng)

    def _init_gpt2(self, rng: Any) -> None:
        """GPT-2's initialisation, in ``params`` order from ``rng``: biases and β 0, γ 1, the residual output
        projections (each attention's output kernel, ffn_2's kernel) N(0, 0.02/√(2·num_layers)), every other
        kernel and both embedding tables N(0, 0.02)."""
        residual = GPT2_STD / math.sqrt(2 * self.num_layers)
        for name, p in self.params.items():
            if name.endswith(("bias", "beta")):
                p[...] = 0
            elif name.endswith("gamma"):
                p[...] = 1
            else:
                std = residual if name.endswith(("output/kernel", "ffn_2/kernel")) else GPT2_STD
                p[...] = self.backend.asarray(rng.standard_normal(p.shape) * std)

    # -- what a config means, without building the model -----------------------------
    @property
    def config(self) -> dict:
        return {
            "kind": self.kind,
            "vocab_size": self.vocab_size,
            "sequence_length": self.sequence_length,
            "embed_dim": self.embed_dim,
            "dense_dim": self.dense_dim,
            "num_heads": self.num_heads,
            "key_dim": self.key_dim,
            "num_layers": self.num_layers,
            "block": self.block,
            "dtype": self.backend.dtype.name,
            "seed": self.seed,
            "activation": self.activation,
            "layernorm_epsilon": self.layernorm_epsilon,
            "tie_embeddings": self.tie_embeddings,
            "use_bias": self.use_bias,
            "init": self.init,
            "dropout": self.dropout.rate,
            "pad_id": self.pad_id,
        }

    @classmethod
    def check_config(cls, config: Any, what: str) -> None:
        """:meth:`TokenModel.check_config`, and a ``pad_id`` that is a token id of the vocabulary."""
        super().check_config(config, what)
        pad_id = config.get("pad_id", cls.CONFIG_DEFAULTS["pad_id"])
        if pad_id is not None and pad_id >= config["vocab_size"]:
            raise CheckpointError(
                f"{what}: field 'pad_id' must be null or a token id below vocab_size {config['vocab_size']}, "
                f"got {pad_id!r}; {checkpoint.EDITED}"
            )

    @classmethod
    def parameter_shapes(cls, config: dict) -> Iterator[tuple[str, Shape]]:
        """(name, shape) of every parameter of ``TransformerLM(**config)``, in ``params`` order, from the layers'
        ``param_shapes`` (a generator: a caller may stop early)."""
        V, L, E, F = config["vocab_size"], config["sequence_length"], config["embed_dim"], config["dense_dim"]
        N, K = config["num_heads"], config["key_dim"]
        c = {**cls.CONFIG_DEFAULTS, **config}
        yield from prefixed_items("embedding", PositionalEmbedding.param_shapes(V, L, E))
        block = BLOCKS[config["block"]]
        for n in range(config["num_layers"]):
            yield from prefixed_items(f"decoder_{n}", block.param_shapes(E, F, N, K, c["use_bias"]))
        if config["block"] == "gpt":
            yield from prefixed_items("final_layernorm", LayerNormalization.param_shapes(E, c["use_bias"]))
        if not c["tie_embeddings"]:
            yield from prefixed_items("dense", Dense.param_shapes(E, V, c["use_bias"]))

    @staticmethod
    def describe(config: dict, backend: str = "numpy") -> str:
        c = {**TransformerLM.CONFIG_DEFAULTS, **config}
        options = [
            f"{name} {c[name]!r}"
            for name in ("activation", "layernorm_epsilon", "tie_embeddings", "use_bias", "init", "dropout", "pad_id")
            if c[name] != TransformerLM.CONFIG_DEFAULTS[name]
        ]
        head = "tied to the embedding" if c["tie_embeddings"] else f"Dense({c['vocab_size']})"
        return (
            f"TransformerLM(PositionalEmbedding({c['vocab_size']}, {c['sequence_length']}, {c['embed_dim']}) -> "
            f"{c['num_layers']} x {c['block']} block(heads {c['num_heads']}, key_dim {c['key_dim']}, "
            f"dense {c['dense_dim']}) -> {head}, {backend}, {c['dtype']}{''.join(', ' + o for o in options)})"
        )

    def _named_layers(self) -> list:
        named = [("embedding", self.embedding)] + [(f"decoder_{n}", b) for n, b in enumerate(self.blocks)]
        if self.final_layernorm is not None:
            named.append(("final_layernorm", self.final_layernorm))
        return named if self.tie_embeddings else named + [("dense", self.dense)]

    # -- masks -------------------------------------------------------------------------
    def keep(self, ids: Array) -> Array:
        """ids (B, T) -> (B, T) bool, True for real tokens: id != pad_id (Keras' mask_zero for pad_id 0), every
        position when pad_id is None."""
        if self.pad_id is None:
            return self.backend.xp.ones(ids.shape, dtype=bool)
        return ids != self.pad_id

    def _mask(self, x: Array, mask: Any) -> Array | None:
        """The positions that count, (B, T): the caller's mask (if any) ∧ input token != pad_id; None (all of
        them) without a mask when pad_id is None."""
        given = super()._mask(x, mask)
        if self.pad_id is None:
            return given
        keep = self.keep(x)
        return keep if given is None else given & keep

    def _attention_mask(self, keep: Array, T: int) -> Array:
        """keep (B, T) bool -> (B, T, T): causal ∧ query keep ∧ key keep (Keras combines them by AND)."""
        xp = self.backend.xp
        return causal_mask(T, T, xp)[None] & keep[:, :, None] & keep[:, None, :]

    # -- forward / backward ----------------------------------------------------------
    def dropout_masks(self, B: int, T: int, last_only: bool = False) -> TransformerDropout | None:
        """Fresh keep-masks for a training batch of (B, T) from :attr:`dropout_rng`, in this order: the
        embeddings' (B, T, E), then per block its attention probabilities' (B, N, T, T), its attention
        branch's and its feed-forward branch's (B, T, E); None without dropout."""
        if self.dropout.rate == 0:
            return None
        B, T, E, N = int(B), int(T), self.embed_dim, self.num_heads

        def draw(shape: Shape) -> Array:
            return self.dropout.draw(shape, self.dropout_rng)

        embedding = draw((B, T, E))
        blocks = [GPTBlockDropout(draw((B, N, T, T)), draw((B, T, E)), draw((B, T, E))) for _ in self.blocks]
        return TransformerDropout(embedding, blocks)

    def dropout_rows(self, masks: TransformerDropout | None, lo: int, hi: int) -> TransformerDropout | None:
        """Rows [lo, hi) of :meth:`dropout_masks`' masks: every one is batch-major."""
        if masks is None:
            return None
        blocks = [GPTBlockDropout(*(m[lo:hi] for m in block)) for block in masks.blocks]
        return TransformerDropout(masks.embedding[lo:hi], blocks)

    def _hidden(
        self, x: Array, mask: Array | None, dropout: TransformerDropout | None = None
    ) -> tuple[Array, list, Any]:
        """x (B, T), mask (B, T), dropout keep-masks or None -> (the top hidden states (B, T, E), block caches,
        final LayerNorm's cache)."""
        T = x.shape[1]
        if T > self.sequence_length:
            raise ModelError(
                f"sequences of {T} tokens are longer than this model's sequence_length {self.sequence_length}: cut them"
            )
        keep = self.keep(x) if mask is None else mask  # (B, T)
        attention = self._attention_mask(keep, T)  # (B, T, T)
        h, _ = self.embedding.forward(x)  # (B, T, E)
        if dropout is not None:
            h, _ = self.dropout.forward(h, dropout.embedding)
        caches = []
        for n, block in enumerate(self.blocks):
            h, cache = block.forward(h, attention, None if dropout is None else dropout.blocks[n])
            caches.append(cache)
        final = None
        if self.final_layernorm is not None:
            h, final = self.final_layernorm.forward(h)
        return h, caches, final

    def _forward(self, x: Array, state: Any, mask: Array | None) -> tuple[Array, list]:
        h, _, _ = self._hidden(x, mask)
        return self.dense.forward(h)[0], []  # (B, T, V)

    def _score(
        self,
        x: Array,
        y: Array,
        state: Any,
        mask: Array | None,
        last_only: bool,
        dropout_masks: Any,
        backward: bool = True,
    ) -> tuple[float, TransformerCache]:
        """Every position scored: the output projection and the loss in one :meth:`Dense.score` over the B·T
        rows (in chunks on the fused path: the logits never exist). ``last_only``: the last position's logits
        (B, V) against y (B,)."""
        h, blocks, final = self._hidden(x, mask, dropout_masks)  # (B, T, E)
        embedding_dropout = None if dropout_masks is None else dropout_masks.embedding
        if last_only:
            logits, head = self.dense.forward(h[:, -1:])  # (B, 1, V)
            loss, dlogits = self.loss_function(logits[:, 0], y)  # (B, V)
            return loss, TransformerCache(x, blocks, final, True, head, dlogits[:, None], embedding_dropout)
        B, T, E = h.shape
        keep = None if mask is None else mask.reshape(-1)  # (B·T,)
        loss, head = self.dense.score(h.reshape(B * T, E), y.reshape(-1), keep, backward)
        return loss, TransformerCache(x, blocks, final, False, head, None, embedding_dropout)

    def _backward(self, cache: TransformerCache) -> dict[str, Array]:
        grads = {}
        B, T = cache.ids.shape
        if cache.last_only:
            dtop, g = self.dense.backward(cache.head, cache.dlogits)  # (B, 1, E)
            dh = self.backend.zeros((B, T, self.embed_dim))
            dh[:, -1:] = dtop
        else:
            dtop, g = self.dense.score_backward(cache.head)  # (B·T, E)
            dh = dtop.reshape(B, T, self.embed_dim)
        if self.tie_embeddings:
            d_tied = g["kernel"].T  # (V, E): the output projection's share of the token table's gradient
        else:
            grads.update(prefixed_items("dense", g))
        if self.final_layernorm is not None:
            dh, g = self.final_layernorm.backward(cache.final, dh)
            grads.update(prefixed_items("final_layernorm", g))
        for n in reversed(range(len(self.blocks))):
            dh, g = self.blocks[n].backward(cache.blocks[n], dh)
            grads.update(prefixed_items(f"decoder_{n}", g))
        if cache.embedding_dropout is not None:
            dh, _ = self.dropout.backward(cache.embedding_dropout, dh)
        _, g = self.embedding.backward(cache.ids, dh)
        if self.tie_embeddings:
            g["token_embeddings"] += d_tied  # the lookup's and the projection's
        grads.update(prefixed_items("embedding", g))
        return {name: grads[name] for name in self.params}
