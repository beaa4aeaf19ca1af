"""Transformer decoder blocks: the IMDB seed's post-LayerNorm block and the pre-LayerNorm (GPT) block.

Both work batch-major on x (B, T, E) with one attention mask (B, T, T) bool,
True = may attend (causal ∧ query padding ∧ key padding, see
:mod:`scratchlm.layers.attention`), and compose the layers' own forward and
backward: a residual y = x + f(x) has dx = dy + (∂f)ᵀ dy, and an attention
whose query, key and value are the same x passes d_query + d_key + d_value.

The book block (Chollet's ``TransformerDecoder(embed_dim, dense_dim, num_heads)``
called as ``decoder(x, x)``, so its "encoder outputs" are x itself):

    a1  = LN1(x + MHA1(q = x,  k = v = x))
    a2  = LN2(a1 + MHA2(q = a1, k = v = x))
    out = LN3(a2 + FFN(a2))

The GPT block (one causal self-attention, LayerNorm before each sublayer; the
model adds a final LayerNorm after the last block):

    h   = x + MHA(LN1(x))
    out = h + FFN(LN2(h))

For generation, the keys and values of every attention come from positions
that never change once computed (the book block's both attentions read x; the
GPT block's reads LN1(x)), so :meth:`step` needs only the new positions' own
work plus attention over a :class:`KVCache`. Memory per block in training: the
attention probabilities (B, N, T, T) of each attention (on the fused path only
their row log-sum-exp (B, N, T)), the FFN's hidden (B, T, F) and a handful of
(B, T, E) activations.

On the fused path, generation runs :meth:`decode_step` instead of :meth:`step`:
one new position per row, the same numbers, with the projections that read the
same input concatenated into one weight (built once per generation by
:meth:`decode_weights`: the book block's x feeds MHA1's q, k, v and MHA2's k, v,
so one (B, E) × (E, 5·N·K) product gives all five), the attention over the
cache in one kernel, and each residual, output bias and LayerNorm in one kernel.
"""

from typing import NamedTuple

from .attention import MultiHeadAttention
from .feedforward import FeedForward
from .layernorm import LayerNormalization


class KVCache:
    """The keys and values of one attention for positions 0 … length-1, (B, N, L, K) each, grown in place."""

    def __init__(self, backend, B, N, L, K):
        self.k = backend.zeros((B, N, L, K))
        self.v = backend.zeros((B, N, L, K))
        self.length = 0

    def append(self, k, v):
        """Add the keys and values of the next positions, (B, N, T, K) each; returns all so far."""
        T = k.shape[2]
        self.k[:, :, self.length:self.length + T] = k
        self.v[:, :, self.length:self.length + T] = v
        self.length += T
        return self.k[:, :, :self.length], self.v[:, :, :self.length]


class DecodeWeights(NamedTuple):
    """The concatenated projections of :meth:`BookDecoderBlock.decode_step` / :meth:`GPTDecoderBlock.decode_step`."""
    kernel: object            # (E, P·N·K): the projections that read the block input, side by side
    bias: object              # (P·N·K,)


def _concatenated(xp, attention_names):
    """[(attention, "query"), ...] -> DecodeWeights of those projections, in that order."""
    kernels = [a.params[f"{name}/kernel"].reshape(a.embed_dim, -1) for a, name in attention_names]
    biases = [a.params[f"{name}/bias"].reshape(-1) for a, name in attention_names]
    return DecodeWeights(xp.ascontiguousarray(xp.concatenate(kernels, axis=1)), xp.concatenate(biases))


def _heads(y, N, K):
    """(B, N·K) -> head-major (B, N, 1, K) view: one new position."""
    return y.reshape(y.shape[0], 1, N, K).transpose(0, 2, 1, 3)


def _merge(o):
    """Head-major (B, N, 1, K) -> (B, N·K)."""
    B, N, _, K = o.shape
    return o.transpose(0, 2, 1, 3).reshape(B, N * K)


def _named(layers):
    return {f"{prefix}/{k}": v for prefix, layer in layers for k, v in layer.params.items()}


class BookBlockCache(NamedTuple):
    x: object                 # (B, T, E) block input
    attention_1: object       # AttentionCache of MHA1
    layernorm_1: object       # LayerNormCache of LN1
    attention_2: object       # AttentionCache of MHA2
    layernorm_2: object       # LayerNormCache of LN2
    ffn: object               # FeedForwardCache
    layernorm_3: object       # LayerNormCache of LN3


class BookDecoderBlock:
    """The seed's post-LayerNorm decoder block; see the module docstring."""

    def __init__(self, embed_dim, dense_dim, num_heads, key_dim, backend, rng):
        self.backend = backend
        self.attention_1 = MultiHeadAttention(embed_dim, num_heads, key_dim, backend, rng)
        self.attention_2 = MultiHeadAttention(embed_dim, num_heads, key_dim, backend, rng)
        self.ffn = FeedForward(embed_dim, dense_dim, backend, rng)
        self.layernorm_1, self.layernorm_2, self.layernorm_3 = (LayerNormalization(embed_dim, backend)
                                                                for _ in range(3))

    @property
    def params(self):
        named = _named([("attention_1", self.attention_1), ("attention_2", self.attention_2),
                        ("layernorm_1", self.layernorm_1), ("layernorm_2", self.layernorm_2),
                        ("layernorm_3", self.layernorm_3)])
        return {**named, **self.ffn.params}

    def forward(self, x, mask):
        """x (B, T, E), mask (B, T, T) bool -> (out (B, T, E), BookBlockCache)."""
        m1, c_m1 = self.attention_1.forward(x, x, mask=mask)
        a1, c_ln1 = self.layernorm_1.forward(x + m1)
        m2, c_m2 = self.attention_2.forward(a1, x, mask=mask)
        a2, c_ln2 = self.layernorm_2.forward(a1 + m2)
        f, c_ffn = self.ffn.forward(a2)
        out, c_ln3 = self.layernorm_3.forward(a2 + f)
        return out, BookBlockCache(x, c_m1, c_ln1, c_m2, c_ln2, c_ffn, c_ln3)

    def backward(self, cache, dout):
        """dout (B, T, E) -> (dx (B, T, E), param grads keyed like ``params``)."""
        grads = {}

        def add(prefix, g):
            grads.update({f"{prefix}/{k}": v for k, v in g.items()})
        d, g = self.layernorm_3.backward(cache.layernorm_3, dout)          # d(a2 + f)
        add("layernorm_3", g)
        da2, g = self.ffn.backward(cache.ffn, d)
        grads.update(g)
        da2 = da2 + d
        d, g = self.layernorm_2.backward(cache.layernorm_2, da2)           # d(a1 + m2)
        add("layernorm_2", g)
        d2, g = self.attention_2.backward(cache.attention_2, d)
        add("attention_2", g)
        da1 = d + d2.d_query
        dx = d2.d_value + d2.d_key                                         # MHA2's keys and values are x
        d, g = self.layernorm_1.backward(cache.layernorm_1, da1)           # d(x + m1)
        add("layernorm_1", g)
        d1, g = self.attention_1.backward(cache.attention_1, d)
        add("attention_1", g)
        return dx + d + d1.d_query + d1.d_value + d1.d_key, grads

    def new_cache(self, B, L):
        """Empty KV caches for generating up to L positions at batch B."""
        a = self.attention_1
        return [KVCache(self.backend, B, a.num_heads, L, a.key_dim) for _ in range(2)]

    def step(self, x, kv, mask):
        """New positions x (B, T, E) after those already in ``kv``; mask (B, T, S) over all S positions so far."""
        k1, v1 = kv[0].append(*self.attention_1.keys_values(x))
        k2, v2 = kv[1].append(*self.attention_2.keys_values(x))
        a1 = self.layernorm_1.forward(x + self.attention_1.attend(x, k1, v1, mask))[0]
        a2 = self.layernorm_2.forward(a1 + self.attention_2.attend(a1, k2, v2, mask))[0]
        return self.layernorm_3.forward(a2 + self.ffn.forward(a2)[0])[0]

    def decode_weights(self):
        """[Wq1 Wk1 Wv1 Wk2 Wv2] (E, 5·N·K) and their biases: everything that reads the block input x."""
        a1, a2 = self.attention_1, self.attention_2
        return _concatenated(self.backend.xp, [(a1, "query"), (a1, "key"), (a1, "value"), (a2, "key"), (a2, "value")])

    def decode_step(self, x, kv, mask, weights):
        """:meth:`step` for one new position per row on the fused kernels: x (B, E), mask (B, 1, S) over
        the S positions so far (this one included), weights from :meth:`decode_weights` -> (B, E).

            [q1 k1 v1 k2 v2] = x [Wq1 Wk1 Wv1 Wk2 Wv2] + b         one GEMV; k, v appended to the caches
            a1 = LN1(x + (attend(q1, K1, V1) Wo1 + bo1))           attention in one kernel, then one kernel
            a2 = LN2(a1 + (attend(a1 Wq2 + bq2, K2, V2) Wo2 + bo2))
            y  = LN3(a2 + (relu(a2 W1 + b1) W2 + b2))
        """
        fused = self.attention_1.fused
        a1, a2, ffn = self.attention_1, self.attention_2, self.ffn
        N, K = a1.num_heads, a1.key_dim
        NK = N * K
        ln1, ln2, ln3 = self.layernorm_1, self.layernorm_2, self.layernorm_3
        xw = x @ weights.kernel                                            # (B, 5·N·K)
        xw += weights.bias
        q1 = _heads(xw[:, :NK], N, K)                                      # (B, N, 1, K)
        k1, v1 = kv[0].append(_heads(xw[:, NK:2 * NK], N, K), _heads(xw[:, 2 * NK:3 * NK], N, K))
        k2, v2 = kv[1].append(_heads(xw[:, 3 * NK:4 * NK], N, K), _heads(xw[:, 4 * NK:], N, K))
        o1 = fused.attention_decode(q1, k1, v1, mask, a1.scale)            # (B, N, 1, K)
        m1 = _merge(o1) @ a1.params["output/kernel"].reshape(NK, -1)       # (B, E), bias in the next kernel
        a1_out = fused.residual_layernorm(x, m1, a1.params["output/bias"], ln1.gamma, ln1.beta, ln1.epsilon)
        q2 = a1_out @ a2.params["query/kernel"].reshape(-1, NK)            # (B, N·K)
        q2 += a2.params["query/bias"].reshape(-1)
        o2 = fused.attention_decode(_heads(q2, N, K), k2, v2, mask, a2.scale)
        m2 = _merge(o2) @ a2.params["output/kernel"].reshape(NK, -1)
        a2_out = fused.residual_layernorm(a1_out, m2, a2.params["output/bias"], ln2.gamma, ln2.beta, ln2.epsilon)
        h = fused.bias_relu(a2_out @ ffn.ffn_1.kernel, ffn.ffn_1.bias)    # (B, F)
        return fused.residual_layernorm(a2_out, h @ ffn.ffn_2.kernel, ffn.ffn_2.bias, ln3.gamma, ln3.beta,
                                        ln3.epsilon)


class GPTBlockCache(NamedTuple):
    x: object                 # (B, T, E) block input
    layernorm_1: object       # LayerNormCache of LN1
    attention_1: object       # AttentionCache of MHA
    layernorm_2: object       # LayerNormCache of LN2
    ffn: object               # FeedForwardCache


class GPTDecoderBlock:
    """The pre-LayerNorm (GPT) decoder block; see the module docstring."""

    def __init__(self, embed_dim, dense_dim, num_heads, key_dim, backend, rng):
        self.backend = backend
        self.attention_1 = MultiHeadAttention(embed_dim, num_heads, key_dim, backend, rng)
        self.ffn = FeedForward(embed_dim, dense_dim, backend, rng)
        self.layernorm_1, self.layernorm_2 = LayerNormalization(embed_dim, backend), LayerNormalization(
            embed_dim, backend)

    @property
    def params(self):
        named = _named([("attention_1", self.attention_1), ("layernorm_1", self.layernorm_1),
                        ("layernorm_2", self.layernorm_2)])
        return {**named, **self.ffn.params}

    def forward(self, x, mask):
        """x (B, T, E), mask (B, T, T) bool -> (out (B, T, E), GPTBlockCache)."""
        n1, c_ln1 = self.layernorm_1.forward(x)
        m, c_m = self.attention_1.forward(n1, n1, mask=mask)
        h = x + m
        n2, c_ln2 = self.layernorm_2.forward(h)
        f, c_ffn = self.ffn.forward(n2)
        return h + f, GPTBlockCache(x, c_ln1, c_m, c_ln2, c_ffn)

    def backward(self, cache, dout):
        """dout (B, T, E) -> (dx (B, T, E), param grads keyed like ``params``)."""
        grads = {}
        dn2, g = self.ffn.backward(cache.ffn, dout)
        grads.update(g)
        d, g = self.layernorm_2.backward(cache.layernorm_2, dn2)
        grads.update({f"layernorm_2/{k}": v for k, v in g.items()})
        dh = dout + d
        da, g = self.attention_1.backward(cache.attention_1, dh)
        grads.update({f"attention_1/{k}": v for k, v in g.items()})
        d, g = self.layernorm_1.backward(cache.layernorm_1, da.d_query + da.d_value + da.d_key)
        grads.update({f"layernorm_1/{k}": v for k, v in g.items()})
        return dh + d, grads

    def new_cache(self, B, L):
        a = self.attention_1
        return [KVCache(self.backend, B, a.num_heads, L, a.key_dim)]

    def step(self, x, kv, mask):
        """New positions x (B, T, E) after those already in ``kv``; mask (B, T, S) over all S positions so far."""
        n1 = self.layernorm_1.forward(x)[0]
        k, v = kv[0].append(*self.attention_1.keys_values(n1))
        h = x + self.attention_1.attend(n1, k, v, mask)
        return h + self.ffn.forward(self.layernorm_2.forward(h)[0])[0]

    def decode_weights(self):
        """[Wq Wk Wv] (E, 3·N·K) and their biases: everything that reads LN1(x)."""
        a = self.attention_1
        return _concatenated(self.backend.xp, [(a, "query"), (a, "key"), (a, "value")])

    def decode_step(self, x, kv, mask, weights):
        """:meth:`step` for one new position per row on the fused kernels: x (B, E), mask (B, 1, S) over
        the S positions so far (this one included), weights from :meth:`decode_weights` -> (B, E).

            n1 = LN1(x)    [q k v] = n1 [Wq Wk Wv] + b               one GEMV; k, v appended to the cache
            h  = x + (attend(q, K, V) Wo + bo)                       attention in one kernel
            y  = h + (relu(LN2(h) W1 + b1) W2 + b2)
        """
        fused = self.attention_1.fused
        a, ffn = self.attention_1, self.ffn
        N, K = a.num_heads, a.key_dim
        NK = N * K
        n1 = fused.layernorm_forward(x, self.layernorm_1.gamma, self.layernorm_1.beta, self.layernorm_1.epsilon)[0]
        qkv = n1 @ weights.kernel                                          # (B, 3·N·K)
        qkv += weights.bias
        k, v = kv[0].append(_heads(qkv[:, NK:2 * NK], N, K), _heads(qkv[:, 2 * NK:], N, K))
        o = fused.attention_decode(_heads(qkv[:, :NK], N, K), k, v, mask, a.scale)      # (B, N, 1, K)
        m = _merge(o) @ a.params["output/kernel"].reshape(NK, -1)
        m += a.params["output/bias"]
        h = x + m                                                          # (B, E)
        n2 = fused.layernorm_forward(h, self.layernorm_2.gamma, self.layernorm_2.beta, self.layernorm_2.epsilon)[0]
        f = fused.bias_relu(n2 @ ffn.ffn_1.kernel, ffn.ffn_1.bias) @ ffn.ffn_2.kernel
        f += ffn.ffn_2.bias
        return h + f


BLOCKS = {"book": BookDecoderBlock, "gpt": GPTDecoderBlock}
