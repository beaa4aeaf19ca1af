r"""Multi-head attention in Keras 3's layout, and the causal and padding masks it takes.

Attention works **batch-major**, (B, T, E), unlike the recurrent layers
(time-major): every position is computed at once, so there is no per-step
slice to keep contiguous. Notation: B batch, T query positions, S key/value
positions, E embedding size, N heads, K key_dim (the size of each head; in
Keras' layout heads are *not* slices of E: each has K dimensions of its own).

Keras 3 semantics (``MultiHeadAttention``, TF backend ``dot_product_attention``;
see docs/design.md), with Wq, Wk, Wv (E, N, K), bq, bk, bv (N, K), Wo (N, K, E), bo (E,):

.. math::

    Q &= \text{query}\, W_q + b_q \qquad (B, T, N, K) \\
    K &= \text{key}\, W_k + b_k \qquad (B, S, N, K) \\
    V &= \text{value}\, W_v + b_v \qquad (B, S, N, K) \\
    S &= \frac{Q K^\top}{\sqrt{K}} \quad \text{per head } n \qquad (B, N, T, S) \\
    S_{ij} &= \text{FILL} \quad \text{where } \lnot\, \text{mask}_{ij} \\
    P &= \operatorname{softmax}(S) \quad \text{over the key axis} \qquad (B, N, T, S) \\
    O &= P V \qquad (B, N, T, K) \\
    \text{out} &= \sum_{n,k} O_{\dots nk}\, W_o[n, k, :] + b_o \qquad (B, T, E)

Masked entries are *replaced* (not added) by FILL = -0.7 · 3.38953e38 ≈ -2.37e38, Keras'
``_get_large_negative`` for float32 and float64.

A row whose keys are all masked holds S copies of FILL, so its softmax is the
uniform 1/S (as in Keras); elsewhere exp(FILL - max) underflows to exactly 0.
Since masked scores are replaced by a constant, no gradient reaches them.

Dropout on the probabilities (GPT-2's ``attn_dropout``), when a keep-mask M
(B, N, T, S) is given, with rate r: O = P̃ V, P̃ = P ⊙ M / (1 − r). The masks
are drawn by the model (:class:`~scratchlm.layers.Dropout`), not here.
``use_bias=False`` drops bq, bk, bv and bo (nanoGPT's ``bias=False``).

Backward, without a (T×T) Jacobian per row (llm.c, FlashAttention), with
dO = dout Woᵀ per head:

.. math::

    dV &= P^\top dO \qquad dP = dO\, V^\top \\
    dS &= P \odot \bigl(dP - \operatorname{rowsum}(dO \odot O)\bigr)
        \qquad \bigl(\operatorname{rowsum}(dP \odot P) = \operatorname{rowsum}(dO \odot O)\bigr) \\
    dS_{ij} &= 0 \quad \text{where } \lnot\, \text{mask}_{ij} \ \text{(the replaced entries)} \\
    dQ &= \frac{dS\, K}{\sqrt{K}} \qquad dK = \frac{dS^\top Q}{\sqrt{K}}

With dropout, :math:`dV = \tilde P^\top dO`, :math:`dP = (dO\, V^\top) \odot M / (1 - r)` and
:math:`dS = P \odot (dP - \operatorname{rowsum}(dP \odot P))`. Then through the projections:
:math:`dW_q = \text{query}^\top dQ`, :math:`db_q = \sum dQ`, :math:`d\,\text{query} = dQ\, W_q^\top`, and so on.

Masks are bool, True = may attend, and combine by AND: query padding
[B, T, 1] ∧ key padding [B, 1, S] ∧ causal [T, S] (see :func:`padding_mask`,
:func:`causal_mask`, :func:`combine_masks`).

The fused subclass (:class:`~scratchlm.kernels.layers.FusedMultiHeadAttention`)
computes the same functions with FlashAttention's scheme
(``scratchlm/kernels/numba/attention.py``, ``scratchlm/kernels/cuda/attention.cu``): an online softmax
over key blocks that keeps only the row log-sum-exp lse = m + log Σ exp(S − m)
(B, N, T), never the (B, N, T, S) probabilities, and a backward that recomputes
P = exp(S − lse) block by block. Memory per attention in training: q, k, v, o
(B, T, N·K) each and lse (B, N, T), against the reference's P (B, N, T, S) on
top of those. Generation attends over the KV cache with one kernel call.

Initialisation (Keras 3 defaults, measured on Keras 3.15: the EinsumDense
kernels of MultiHeadAttention take their fans from the einsum, not from the
convolution rule of ``compute_fans``): glorot-uniform with
fan_in = E, fan_out = N·K for the query/key/value kernels (E, N, K), and
fan_in = N·K, fan_out = E for the output kernel (N, K, E); zero biases.
Draw order: query, key, value, output (Keras' ``get_weights()`` order).
"""

import math
from typing import Any, NamedTuple

import numpy

from ..backend import Backend
from ..errors import ModelError
from ..initializers import uniform
from .base import Array, Layer, Shape
from .dropout import Dropout

FILL = -0.7 * 3.38953e38  # Keras' large negative for float32 and float64 (≈ -2.37e38)


def causal_mask(T: int, S: int | None = None, xp: Any = numpy, offset: int = 0) -> Array:
    """(T, S) bool, True where key j may be seen by query i: j ≤ i (Keras' lower band); with ``offset``,
    query i sits at position offset + i (new queries after ``offset`` cached keys): j ≤ offset + i."""
    S = T if S is None else S
    return xp.arange(S)[None, :] <= offset + xp.arange(T)[:, None]  # (T, S)


def padding_mask(query_keep: Array, value_keep: Array) -> Array:
    """query_keep (B, T), value_keep (B, S) bool -> (B, T, S) = query_keep[:, :, None] ∧ value_keep[:, None, :]."""
    return query_keep[:, :, None] & value_keep[:, None, :]  # (B, T, S)


def combine_masks(*masks: Array | None) -> Array | None:
    """AND of the masks that are not None (broadcast: (T, S) with (B, T, S)); None if all are None."""
    out = None
    for m in masks:
        if m is not None:
            out = m if out is None else out & m
    return out


class AttentionCache(NamedTuple):
    """What :meth:`MultiHeadAttention.backward` needs from its forward."""

    query: Array  # (B, T, E) query input
    value: Array  # (B, S, E) value input
    key: Array  # (B, S, E) key input (the value input when key was None)
    q: Array  # (B, N, T, K) projected queries, head-major
    k: Array  # (B, N, S, K) projected keys
    v: Array  # (B, N, S, K) projected values
    p: Array  # (B, N, T, S) attention probabilities
    o: Array  # (B, N, T, K) per-head outputs P V (P̃ V with dropout)
    mask: Array | None  # (B, 1, T, S) bool, True = may attend, or None
    dropout: Array | None = None  # (B, N, T, S) bool keep-mask M of the probabilities, or None


class AttentionGrads(NamedTuple):
    """The ``d_inputs`` of :meth:`MultiHeadAttention.backward`.

    In self-attention (query, key and value all x) the gradient of x is
    d_query + d_value + d_key; with key=None (key is value) it is the value
    input's d_value + d_key. The caller adds them.
    """

    d_query: Array  # (B, T, E)
    d_value: Array  # (B, S, E)
    d_key: Array  # (B, S, E)


class MultiHeadAttention(Layer):
    """Keras 3 ``MultiHeadAttention(num_heads=N, key_dim=K)`` on (B, T, E) inputs; see the module docstring."""

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        key_dim: int,
        backend: Backend,
        rng: Any,
        use_bias: bool = True,
        dropout: float = 0.0,
    ):
        self.backend = backend
        E, N, K = embed_dim, num_heads, key_dim
        self.embed_dim, self.num_heads, self.key_dim = E, N, K
        self.scale = 1.0 / math.sqrt(K)
        self.dropout = backend.layer(Dropout)(dropout, backend)  # on the probabilities, masks given to forward
        proj = math.sqrt(6.0 / (E + N * K))  # glorot, fan_in E, fan_out N·K
        self._params = {}
        for name in ("query", "key", "value"):
            self._params[f"{name}/kernel"] = uniform((E, N, K), rng, backend, limit=proj)  # (E, N, K)
            if use_bias:
                self._params[f"{name}/bias"] = backend.zeros((N, K))  # (N, K)
        self._params["output/kernel"] = uniform((N, K, E), rng, backend, limit=proj)  # (N, K, E)
        if use_bias:
            self._params["output/bias"] = backend.zeros((E,))  # (E,)
        self.use_bias = use_bias

    @property
    def params(self) -> dict[str, Array]:
        return dict(self._params)

    @classmethod
    def param_shapes(cls, embed_dim: int, num_heads: int, key_dim: int, use_bias: bool = True) -> dict[str, Shape]:
        E, N, K = embed_dim, num_heads, key_dim
        shapes = {}
        for name in ("query", "key", "value"):
            shapes[f"{name}/kernel"] = (E, N, K)
            if use_bias:
                shapes[f"{name}/bias"] = (N, K)
        shapes["output/kernel"] = (N, K, E)
        if use_bias:
            shapes["output/bias"] = (E,)
        return shapes

    # -- projections (E) <-> (N, K) -----------------------------------------
    def _project(self, x: Array, name: str) -> Array:
        """x (B, L, E) -> x W + b, head-major (B, N, L, K)."""
        B, L, E = x.shape
        W = self._params[f"{name}/kernel"]
        y = x.reshape(B * L, E) @ W.reshape(E, -1)  # (B·L, N·K)
        y = y.reshape(B, L, self.num_heads, self.key_dim)  # (B, L, N, K)
        if self.use_bias:
            y = y + self._params[f"{name}/bias"]
        return y.transpose(0, 2, 1, 3)  # (B, N, L, K)

    def _project_backward(self, x: Array, dy: Array, name: str) -> tuple[Array, dict[str, Array]]:
        """dy (B, N, L, K) -> (dx (B, L, E), {name/kernel: xᵀ dy (E, N, K), name/bias: Σ dy (N, K)})."""
        B, L, E = x.shape
        W = self._params[f"{name}/kernel"]
        dy2 = dy.transpose(0, 2, 1, 3).reshape(B * L, -1)  # (B·L, N·K)
        dx = (dy2 @ W.reshape(E, -1).T).reshape(B, L, E)  # (B, L, E)
        grads = {f"{name}/kernel": (x.reshape(B * L, E).T @ dy2).reshape(W.shape)}
        if self.use_bias:
            grads[f"{name}/bias"] = dy2.sum(axis=0).reshape(self.num_heads, self.key_dim)
        return dx, grads

    def _check_mask(self, mask: Array | None, B: int, T: int, S: int) -> Array | None:
        """mask (B, T, S) or (T, S) bool -> (B, 1, T, S) bool (broadcast over heads), or None."""
        if mask is None:
            return None
        mask = self.backend.asarray(mask)  # host masks move to the device
        if mask.dtype != bool or mask.shape not in ((B, T, S), (T, S)):
            raise ModelError(
                f"attention mask must be a bool array of shape (B, T, S) = {(B, T, S)} "
                f"or (T, S), got {mask.dtype} {tuple(mask.shape)}"
            )
        return self.backend.xp.broadcast_to(mask, (B, T, S))[:, None]  # (B, 1, T, S)

    def _inputs(self, query: Array, value: Array, key: Array | None, mask: Array | None) -> tuple[Array, Array | None]:
        """(key, mask (B, 1, T, S) or None) once the shapes are checked; key None means key = value."""
        key = value if key is None else key
        B, T, E = query.shape
        S = value.shape[1]
        if value.shape != (B, S, E) or key.shape != (B, S, E):
            raise ModelError(
                f"attention inputs must be query (B, T, E), value and key (B, S, E) with E = "
                f"{self.embed_dim}: got {tuple(query.shape)}, {tuple(value.shape)}, {tuple(key.shape)}"
            )
        return key, self._check_mask(mask, B, T, S)

    # -- forward and backward ----------------------------------------------
    def forward(
        self,
        query: Array,
        value: Array,
        key: Array | None = None,
        mask: Array | None = None,
        dropout: Array | None = None,
    ) -> tuple[Array, AttentionCache]:
        """query (B, T, E), value (B, S, E), key (B, S, E) or None (= value), mask (B, T, S) or (T, S) bool
        (True = may attend) or None, dropout (B, N, T, S) bool keep-mask of the probabilities or None
        -> (out (B, T, E), cache)."""
        key, mask = self._inputs(query, value, key, mask)
        q = self._project(query, "query")  # (B, N, T, K)
        k = self._project(key, "key")  # (B, N, S, K)
        v = self._project(value, "value")  # (B, N, S, K)
        p, o = self._attention(q, k, v, mask, dropout)
        return self._output(o), AttentionCache(query, value, key, q, k, v, p, o, mask, dropout)

    def _attention(
        self, q: Array, k: Array, v: Array, mask: Array | None, dropout: Array | None = None
    ) -> tuple[Array, Array]:
        """(P, O) = (softmax(Q Kᵀ/√K, masked by replacement), P V) head-major; O = P̃ V with a dropout mask."""
        xp = self.backend.xp
        s = (q @ k.transpose(0, 1, 3, 2)) * self.scale  # (B, N, T, S)
        if mask is not None:
            s = xp.where(mask, s, s.dtype.type(FILL))  # replace, not add
        s -= s.max(axis=-1, keepdims=True)
        p = xp.exp(s)  # (B, N, T, S)
        p /= p.sum(axis=-1, keepdims=True)
        if dropout is not None:
            return p, self.dropout.forward(p, dropout)[0] @ v  # O = P̃ V
        return p, p @ v  # O (B, N, T, K)

    def _output(self, o: Array) -> Array:
        """Per-head outputs O (B, N, T, K) -> Σ_{n,k} O Wo + bo (B, T, E)."""
        B, N, T, K = o.shape
        Wo = self._params["output/kernel"]
        out = o.transpose(0, 2, 1, 3).reshape(B * T, N * K) @ Wo.reshape(N * K, -1)  # (B·T, E)
        if self.use_bias:
            out += self._params["output/bias"]
        return out.reshape(B, T, -1)

    def backward(self, cache: AttentionCache, dout: Array) -> tuple[AttentionGrads, dict[str, Array]]:
        """dout (B, T, E) -> (AttentionGrads(d_query, d_value, d_key), param grads keyed like ``params``)."""
        c = cache
        B, T, E = dout.shape
        N, K = self.num_heads, self.key_dim
        Wo = self._params["output/kernel"]
        dout2 = dout.reshape(B * T, E)  # (B·T, E)
        o2 = c.o.transpose(0, 2, 1, 3).reshape(B * T, N * K)  # (B·T, N·K)
        grads = {"output/kernel": (o2.T @ dout2).reshape(N, K, E)}
        if self.use_bias:
            grads["output/bias"] = dout2.sum(axis=0)
        do = (dout2 @ Wo.reshape(N * K, E).T).reshape(B, T, N, K).transpose(0, 2, 1, 3)  # (B, N, T, K)
        dq, dk, dv = self._attention_backward(c, do)
        d_query, g = self._project_backward(c.query, dq, "query")
        grads.update(g)
        d_key, g = self._project_backward(c.key, dk, "key")
        grads.update(g)
        d_value, g = self._project_backward(c.value, dv, "value")
        grads.update(g)
        return AttentionGrads(d_query, d_value, d_key), grads

    def _attention_backward(self, c: AttentionCache, do: Array) -> tuple[Array, Array, Array]:
        """dO (B, N, T, K) -> (dQ, dK, dV) head-major, through the cached probabilities."""
        if c.dropout is None:
            dv = c.p.transpose(0, 1, 3, 2) @ do  # (B, N, S, K)  dV = Pᵀ dO
            dp = do @ c.v.transpose(0, 1, 3, 2)  # (B, N, T, S)  dP = dO Vᵀ
            ds = c.p * (dp - (do * c.o).sum(axis=-1, keepdims=True))  # (B, N, T, S)
        else:
            dv = self.dropout.forward(c.p, c.dropout)[0].transpose(0, 1, 3, 2) @ do  # dV = P̃ᵀ dO
            dp = self.dropout.backward(c.dropout, do @ c.v.transpose(0, 1, 3, 2))[0]  # dP = (dO Vᵀ) ⊙ M/(1 − r)
            ds = c.p * (dp - (dp * c.p).sum(axis=-1, keepdims=True))  # (B, N, T, S)
        if c.mask is not None:
            ds = self.backend.xp.where(c.mask, ds, 0)  # replaced scores get nothing
        ds *= self.scale
        dq = ds @ c.k  # (B, N, T, K)  dQ = dS K / √K
        dk = ds.transpose(0, 1, 3, 2) @ c.q  # (B, N, S, K)  dK = dSᵀ Q / √K
        return dq, dk, dv

    # -- decoding with a key/value cache ------------------------------------
    def keys_values(self, x: Array) -> tuple[Array, Array]:
        """The projections a KV cache keeps: x (B, L, E) -> (K, V), each head-major (B, N, L, K)."""
        return self._project(x, "key"), self._project(x, "value")

    def attend(self, query: Array, k: Array, v: Array, mask: Array | None = None) -> Array:
        """Attention of new queries (B, T, E) over cached keys and values (B, N, S, K) -> (B, T, E).

        The same numbers as :meth:`forward` with those keys and values, but
        nothing is kept for backward: this is the generation step.
        """
        B, T, _ = query.shape
        mask = self._check_mask(mask, B, T, k.shape[2])
        q = self._project(query, "query")  # (B, N, T, K)
        return self._output(self._attend(q, k, v, mask))

    def _attend(self, q: Array, k: Array, v: Array, mask: Array | None) -> Array:
        """The per-head outputs O (B, N, T, K) of queries q over keys k and values v, nothing kept."""
        return self._attention(q, k, v, mask)[1]
