r"""Transformer decoder blocks: the IMDB seed's post-LayerNorm block and the pre-LayerNorm (GPT) block.

Both work batch-major on x (B, T, E) with one attention mask (B, T, T) bool,
True = may attend (causal ∧ query padding ∧ key padding, see
:mod:`scratchlm.layers.attention`), and compose the layers' own forward and
backward: a residual :math:`y = x + f(x)` has :math:`dx = dy + (\partial f)^\top dy`,
and an attention whose query, key and value are the same x passes
:math:`d_\text{query} + d_\text{key} + d_\text{value}`. Below, :math:`(\partial F)^\top d`
is layer F's backward applied to d, and an attention's backward gives (dq, dk, dv),
the gradients of its query, key and value inputs.

The book block (Chollet's ``TransformerDecoder(embed_dim, dense_dim, num_heads)``
called as ``decoder(x, x)``, so its "encoder outputs" are x itself):

.. math::

    a_1 &= \mathrm{LN}_1\bigl(x + \mathrm{MHA}_1(q = x,\ k = v = x)\bigr) \\
    a_2 &= \mathrm{LN}_2\bigl(a_1 + \mathrm{MHA}_2(q = a_1,\ k = v = x)\bigr) \\
    \text{out} &= \mathrm{LN}_3\bigl(a_2 + \mathrm{FFN}(a_2)\bigr)

and its backward (:meth:`BookDecoderBlock.backward`), from the top; x reaches the
output through the first residual, both of MHA1's inputs and MHA2's keys and values:

.. math::

    g_3 &= (\partial \mathrm{LN}_3)^\top d\text{out} \qquad da_2 = g_3 + (\partial \mathrm{FFN})^\top g_3 \\
    g_2 &= (\partial \mathrm{LN}_2)^\top da_2 \qquad (dq_2, dk_2, dv_2) = (\partial \mathrm{MHA}_2)^\top g_2
        \qquad da_1 = g_2 + dq_2 \\
    g_1 &= (\partial \mathrm{LN}_1)^\top da_1 \qquad (dq_1, dk_1, dv_1) = (\partial \mathrm{MHA}_1)^\top g_1 \\
    dx &= g_1 + dq_1 + dk_1 + dv_1 + dk_2 + dv_2

The GPT block (one causal self-attention, LayerNorm before each sublayer; the
model adds a final LayerNorm after the last block):

.. math::

    h &= x + \mathrm{MHA}\bigl(\mathrm{LN}_1(x)\bigr) \\
    \text{out} &= h + \mathrm{FFN}\bigl(\mathrm{LN}_2(h)\bigr)

With dropout (GPT-2's ``attn_dropout`` and ``resid_dropout``, one rate r), given
the keep-masks of a :class:`GPTBlockDropout`: the attention drops its
probabilities, and each residual branch is dropped before it is added
(:class:`~scratchlm.layers.Dropout`):

.. math::

    h &= x + D_1\bigl(\mathrm{MHA}(\mathrm{LN}_1(x))\bigr) \qquad
    \text{out} = h + D_2\bigl(\mathrm{FFN}(\mathrm{LN}_2(h))\bigr) \\
    D(a) &= \frac{a \odot M}{1 - r} \qquad dD(a) = \frac{d \odot M}{1 - r}

and the block's backward (:meth:`GPTDecoderBlock.backward`; without dropout,
read M/(1 − r) as 1):

.. math::

    dh &= d\text{out}
        + (\partial \mathrm{LN}_2)^\top (\partial \mathrm{FFN})^\top \frac{d\text{out} \odot M_2}{1 - r} \\
    (dq, dk, dv) &= (\partial \mathrm{MHA})^\top \frac{dh \odot M_1}{1 - r} \\
    dx &= dh + (\partial \mathrm{LN}_1)^\top (dq + dk + dv)

Both blocks take the feed-forward's ``activation`` ("relu" | "gelu" |
"gelu_tanh"), the LayerNorms' ``epsilon`` and ``use_bias`` (False: no bias in
the projections, the feed-forward or the LayerNorms, as nanoGPT's ``bias=False``).

For generation, the keys and values of every attention come from positions
that never change once computed (the book block's both attentions read x; the
GPT block's reads LN1(x)), so each block's ``step``
(:meth:`BookDecoderBlock.step`, :meth:`GPTDecoderBlock.step`) needs only the new positions' own
work plus attention over a :class:`KVCache`. Memory per block in training: the
attention probabilities (B, N, T, T) of each attention, the FFN's hidden
(B, T, F) and a handful of (B, T, E) activations.

The blocks build their layers through ``backend.layer``, so on the fused path
each part is its fused subclass; the fused blocks
(:class:`~scratchlm.kernels.decoding.FusedBookDecoderBlock`, ...) add a
one-position decoding step that concatenates the projections reading the same
input into one product, which the fused token loop runs instead of ``step``.
"""

from typing import Any, NamedTuple

from ..backend import Backend
from .attention import AttentionCache, MultiHeadAttention
from .base import Array, Layer, Shape, prefixed
from .dropout import Dropout
from .feedforward import FeedForward, FeedForwardCache
from .layernorm import LayerNormalization, LayerNormCache


class KVCache:
    """The keys and values of one attention for positions 0 … length-1, (B, N, L, K) each, grown in place."""

    def __init__(self, backend: Backend, B: int, N: int, L: int, K: int):
        self.k = backend.zeros((B, N, L, K))
        self.v = backend.zeros((B, N, L, K))
        self.length = 0

    def append(self, k: Array, v: Array) -> tuple[Array, Array]:
        """Add the keys and values of the next positions, (B, N, T, K) each; returns all so far."""
        T = k.shape[2]
        self.k[:, :, self.length : self.length + T] = k
        self.v[:, :, self.length : self.length + T] = v
        self.length += T
        return self.k[:, :, : self.length], self.v[:, :, : self.length]


class BookBlockCache(NamedTuple):
    """What :meth:`BookDecoderBlock.backward` needs: its layers' caches (their types are their classes')."""

    x: Array  # (B, T, E) block input
    attention_1: AttentionCache
    layernorm_1: LayerNormCache
    attention_2: AttentionCache
    layernorm_2: LayerNormCache
    ffn: FeedForwardCache
    layernorm_3: LayerNormCache


class BookDecoderBlock(Layer):
    """The seed's post-LayerNorm decoder block; see the module docstring."""

    def __init__(
        self,
        embed_dim: int,
        dense_dim: int,
        num_heads: int,
        key_dim: int,
        backend: Backend,
        rng: Any,
        activation: str = "relu",
        epsilon: float = 1e-3,
        use_bias: bool = True,
    ):
        self.backend = backend
        E, N, K = embed_dim, num_heads, key_dim
        self.attention_1 = backend.layer(MultiHeadAttention)(E, N, K, backend, rng, use_bias)
        self.attention_2 = backend.layer(MultiHeadAttention)(E, N, K, backend, rng, use_bias)
        self.ffn = backend.layer(FeedForward)(E, dense_dim, backend, rng, activation, use_bias)
        self.layernorm_1, self.layernorm_2, self.layernorm_3 = (
            backend.layer(LayerNormalization)(E, backend, epsilon, use_bias) for _ in range(3)
        )

    @property
    def params(self) -> dict[str, Array]:
        return {
            **prefixed("attention_1", self.attention_1.params),
            **prefixed("attention_2", self.attention_2.params),
            **prefixed("layernorm_1", self.layernorm_1.params),
            **prefixed("layernorm_2", self.layernorm_2.params),
            **prefixed("layernorm_3", self.layernorm_3.params),
            **self.ffn.params,
        }

    @classmethod
    def param_shapes(
        cls, embed_dim: int, dense_dim: int, num_heads: int, key_dim: int, use_bias: bool = True
    ) -> dict[str, Shape]:
        attention = MultiHeadAttention.param_shapes(embed_dim, num_heads, key_dim, use_bias)
        norm = LayerNormalization.param_shapes(embed_dim, use_bias)
        return {
            **prefixed("attention_1", attention),
            **prefixed("attention_2", attention),
            **prefixed("layernorm_1", norm),
            **prefixed("layernorm_2", norm),
            **prefixed("layernorm_3", norm),
            **FeedForward.param_shapes(embed_dim, dense_dim, use_bias),
        }

    def forward(self, x: Array, mask: Array | None, dropout: None = None) -> tuple[Array, BookBlockCache]:
        """x (B, T, E), mask (B, T, T) bool -> (out (B, T, E), BookBlockCache); the book block has no dropout."""
        m1, c_m1 = self.attention_1.forward(x, x, mask=mask)
        a1, c_ln1 = self.layernorm_1.forward(x + m1)
        m2, c_m2 = self.attention_2.forward(a1, x, mask=mask)
        a2, c_ln2 = self.layernorm_2.forward(a1 + m2)
        f, c_ffn = self.ffn.forward(a2)
        out, c_ln3 = self.layernorm_3.forward(a2 + f)
        return out, BookBlockCache(x, c_m1, c_ln1, c_m2, c_ln2, c_ffn, c_ln3)

    def backward(self, cache: BookBlockCache, dout: Array) -> tuple[Array, dict[str, Array]]:
        """dout (B, T, E) -> (dx (B, T, E), param grads keyed like ``params``)."""
        grads = {}

        def add(prefix, g):
            grads.update(prefixed(prefix, g))

        d, g = self.layernorm_3.backward(cache.layernorm_3, dout)  # d(a2 + f)
        add("layernorm_3", g)
        da2, g = self.ffn.backward(cache.ffn, d)
        grads.update(g)
        da2 = da2 + d
        d, g = self.layernorm_2.backward(cache.layernorm_2, da2)  # d(a1 + m2)
        add("layernorm_2", g)
        d2, g = self.attention_2.backward(cache.attention_2, d)
        add("attention_2", g)
        da1 = d + d2.d_query
        dx = d2.d_value + d2.d_key  # MHA2's keys and values are x
        d, g = self.layernorm_1.backward(cache.layernorm_1, da1)  # d(x + m1)
        add("layernorm_1", g)
        d1, g = self.attention_1.backward(cache.attention_1, d)
        add("attention_1", g)
        return dx + d + d1.d_query + d1.d_value + d1.d_key, grads

    def new_cache(self, B: int, L: int) -> list[KVCache]:
        """Empty KV caches for generating up to L positions at batch B: one per attention."""
        a = self.attention_1
        return [KVCache(self.backend, B, a.num_heads, L, a.key_dim) for _ in range(2)]

    def step(self, x: Array, kv: list[KVCache], mask: Array) -> Array:
        """New positions x (B, T, E) after those already in ``kv``; mask (B, T, S) over all S positions so far."""
        k1, v1 = kv[0].append(*self.attention_1.keys_values(x))
        k2, v2 = kv[1].append(*self.attention_2.keys_values(x))
        a1 = self.layernorm_1.forward(x + self.attention_1.attend(x, k1, v1, mask))[0]
        a2 = self.layernorm_2.forward(a1 + self.attention_2.attend(a1, k2, v2, mask))[0]
        return self.layernorm_3.forward(a2 + self.ffn.forward(a2)[0])[0]


class GPTBlockDropout(NamedTuple):
    """The keep-masks of one GPT block's dropout (bool, True = kept), drawn by the model."""

    attention: Array  # (B, N, T, T) the attention probabilities'
    attention_out: Array  # (B, T, E) the attention branch's, before its residual add
    ffn_out: Array  # (B, T, E) the feed-forward branch's, before its residual add


class GPTBlockCache(NamedTuple):
    """What :meth:`GPTDecoderBlock.backward` needs: its layers' caches."""

    x: Array  # (B, T, E) block input
    layernorm_1: LayerNormCache
    attention_1: AttentionCache
    layernorm_2: LayerNormCache
    ffn: FeedForwardCache
    dropout: GPTBlockDropout | None = None  # the keep-masks, or None without dropout


class GPTDecoderBlock(Layer):
    """The pre-LayerNorm (GPT) decoder block; see the module docstring. dropout: the rate of every dropout
    (its masks are given to :meth:`forward`)."""

    def __init__(
        self,
        embed_dim: int,
        dense_dim: int,
        num_heads: int,
        key_dim: int,
        backend: Backend,
        rng: Any,
        activation: str = "relu",
        epsilon: float = 1e-3,
        use_bias: bool = True,
        dropout: float = 0.0,
    ):
        self.backend = backend
        E, N, K = embed_dim, num_heads, key_dim
        self.attention_1 = backend.layer(MultiHeadAttention)(E, N, K, backend, rng, use_bias, dropout)
        self.ffn = backend.layer(FeedForward)(E, dense_dim, backend, rng, activation, use_bias)
        self.layernorm_1, self.layernorm_2 = (
            backend.layer(LayerNormalization)(E, backend, epsilon, use_bias) for _ in range(2)
        )
        self.dropout = backend.layer(Dropout)(dropout, backend)

    @property
    def params(self) -> dict[str, Array]:
        return {
            **prefixed("attention_1", self.attention_1.params),
            **prefixed("layernorm_1", self.layernorm_1.params),
            **prefixed("layernorm_2", self.layernorm_2.params),
            **self.ffn.params,
        }

    @classmethod
    def param_shapes(
        cls, embed_dim: int, dense_dim: int, num_heads: int, key_dim: int, use_bias: bool = True
    ) -> dict[str, Shape]:
        norm = LayerNormalization.param_shapes(embed_dim, use_bias)
        return {
            **prefixed("attention_1", MultiHeadAttention.param_shapes(embed_dim, num_heads, key_dim, use_bias)),
            **prefixed("layernorm_1", norm),
            **prefixed("layernorm_2", norm),
            **FeedForward.param_shapes(embed_dim, dense_dim, use_bias),
        }

    def forward(
        self, x: Array, mask: Array | None, dropout: GPTBlockDropout | None = None
    ) -> tuple[Array, GPTBlockCache]:
        """x (B, T, E), mask (B, T, T) bool, dropout keep-masks or None -> (out (B, T, E), GPTBlockCache)."""
        n1, c_ln1 = self.layernorm_1.forward(x)
        m, c_m = self.attention_1.forward(n1, n1, mask=mask, dropout=None if dropout is None else dropout.attention)
        if dropout is not None:
            m, _ = self.dropout.forward(m, dropout.attention_out)
        h = x + m
        n2, c_ln2 = self.layernorm_2.forward(h)
        f, c_ffn = self.ffn.forward(n2)
        if dropout is not None:
            f, _ = self.dropout.forward(f, dropout.ffn_out)
        return h + f, GPTBlockCache(x, c_ln1, c_m, c_ln2, c_ffn, dropout)

    def backward(self, cache: GPTBlockCache, dout: Array) -> tuple[Array, dict[str, Array]]:
        """dout (B, T, E) -> (dx (B, T, E), param grads keyed like ``params``)."""
        grads = {}
        df = dout if cache.dropout is None else self.dropout.backward(cache.dropout.ffn_out, dout)[0]
        dn2, g = self.ffn.backward(cache.ffn, df)
        grads.update(g)
        d, g = self.layernorm_2.backward(cache.layernorm_2, dn2)
        grads.update(prefixed("layernorm_2", g))
        dh = dout + d
        dm = dh if cache.dropout is None else self.dropout.backward(cache.dropout.attention_out, dh)[0]
        da, g = self.attention_1.backward(cache.attention_1, dm)
        grads.update(prefixed("attention_1", g))
        d, g = self.layernorm_1.backward(cache.layernorm_1, da.d_query + da.d_value + da.d_key)
        grads.update(prefixed("layernorm_1", g))
        return dh + d, grads

    def new_cache(self, B: int, L: int) -> list[KVCache]:
        """Empty KV caches for generating up to L positions at batch B: one, of the attention."""
        a = self.attention_1
        return [KVCache(self.backend, B, a.num_heads, L, a.key_dim)]

    def step(self, x: Array, kv: list[KVCache], mask: Array) -> Array:
        """New positions x (B, T, E) after those already in ``kv``; mask (B, T, S) over all S positions so far."""
        n1 = self.layernorm_1.forward(x)[0]
        k, v = kv[0].append(*self.attention_1.keys_values(n1))
        h = x + self.attention_1.attend(n1, k, v, mask)
        return h + self.ffn.forward(self.layernorm_2.forward(h)[0])[0]


BLOCKS = {"book": BookDecoderBlock, "gpt": GPTDecoderBlock}
