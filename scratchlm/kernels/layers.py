"""The fused layers: subclasses of the reference layers whose hot loops run in the fused kernels.

Each class here computes exactly what its parent in :mod:`scratchlm.layers`
computes — the parent's docstring has the equations — and overrides only the
methods whose work a kernel does; everything else (parameters, projections,
checks, the other half of a backward) is the parent's code. They are written
once against the backend's op set, ``backend.ops`` (``numba/ops.py`` on NumPy,
``cuda/ops.py`` on CuPy: the same functions and buffer conventions), so the same
subclass serves both. :data:`scratchlm.kernels.FUSED` registers them, and
:meth:`scratchlm.backend.Backend.layer` hands them out where kernels="fused".

    FusedLSTM, FusedGRU          the time loop pair (_loop, _loop_tokens, _loop_backward): one kernel call
                                 each, the token-table gather inside the step kernel, backward in place
    FusedDense                   score / score_backward: output projection and cross-entropy in row chunks
    FusedSoftmaxCrossEntropy     the loss in one pass per row, dlogits written over the logits
    FusedMultiHeadAttention      flash attention: keeps the row log-sum-exp, not P; the decoding attention
    FusedLayerNormalization      one pass per row each way, keeping μ and 1/σ per row
    FusedFeedForward             bias + ReLU in one pass, ReLU' + db1 in one pass

Buffers are reused in place: the recurrent backward writes its gradients over
the cached gates and the loss writes dlogits over the logits, so each forward
gets exactly one backward. Importing this module imports no Numba or CuPy.
"""

from typing import Any, NamedTuple

from ..backend import Array, array_module
from ..layers import GRU, LSTM, Dense, FeedForward, LayerNormalization, MultiHeadAttention
from ..layers.attention import AttentionCache
from ..layers.base import prefixed
from ..layers.feedforward import FeedForwardCache
from ..layers.gru import GRUSteps
from ..layers.recurrent import RecurrentCache
from ..losses import SoftmaxCrossEntropy

DECODE_ROWS = 8  # up to this many new queries, generation attends in one kernel (attention_decode)


def _bias(layer: Any, bias: Array | None, size: int) -> Array:
    """A layer's bias, or zeros (size,) where it has none (use_bias=False): the kernels always add one."""
    return layer.backend.zeros((size,)) if bias is None else bias


def _rows(keep: Array | None) -> Array | None:
    """The recurrent mask (T, B, 1) as the kernels take it, (T, B), or None."""
    return None if keep is None else keep[:, :, 0]


# -- recurrent layers ---------------------------------------------------------------------------------------


class FusedLSTMSteps(NamedTuple):
    """The fused LSTM's record of its time loop: no tanh(c̃_t), which the backward recomputes."""

    gates: Array  # (T, B, 4H) activations [i f g o]; the backward writes dz over them
    hs: Array  # (T+1, B, H) h_0 … h_T
    cs: Array  # (T+1, B, H) c_0 … c_T


class FusedLSTM(LSTM):
    """:class:`~scratchlm.layers.LSTM` with each time loop in one kernel call (``lstm_forward``,
    ``lstm_backward``): per step one GEMM and one pass for the gates, the cell, the mask and, for token
    input, the gather of the step's table rows (the (T, B, 4H) projection is never formed)."""

    def _loop(self, gates: Array, state0: tuple, keep: Array | None) -> tuple[FusedLSTMSteps, tuple]:
        return self._fused_loop(gates, state0, keep, None, None)

    def _loop_tokens(self, table: Array, ids: Array, state0: tuple, keep: Array | None) -> tuple[FusedLSTMSteps, tuple]:
        gates = self.backend.ops.empty_workspace(ids.shape + (table.shape[1],), self.backend.dtype)  # (T, B, 4H)
        return self._fused_loop(gates, state0, keep, table, ids)

    def _fused_loop(self, gates, state0, keep, table, ids):
        """gates (T, B, 4H) holding x_t W + b, or (table, ids given) a buffer the kernel fills with h U + table rows."""
        h0, c0 = state0
        hs, cs = self.backend.ops.lstm_forward(gates, self.recurrent_kernel, h0, c0, _rows(keep), table, ids)
        T = gates.shape[0]
        return FusedLSTMSteps(gates, hs, cs), (hs[T], cs[T])

    def _loop_backward(
        self, cache: RecurrentCache, dy: Array | None, d_final: list
    ) -> tuple[Array, dict[str, Array], tuple]:
        gates, hs, cs = cache.steps
        dh, dc = d_final
        dZ, dU, dh, dc = self.backend.ops.lstm_backward(
            gates, hs, cs, self.recurrent_kernel, dy, dh, dc, _rows(cache.keep)
        )
        return dZ, {"recurrent_kernel": dU}, (dh, dc)


class FusedGRU(GRU):
    """:class:`~scratchlm.layers.GRU` with each time loop in one kernel call (``gru_forward``,
    ``gru_backward``); the backward writes dX̂ over the cached gates and dû_h over û_h."""

    def _loop(self, gates: Array, state0: tuple, keep: Array | None) -> tuple[GRUSteps, tuple]:
        return self._fused_loop(gates, state0, keep, None, None)

    def _loop_tokens(self, table: Array, ids: Array, state0: tuple, keep: Array | None) -> tuple[GRUSteps, tuple]:
        gates = self.backend.ops.empty_workspace(ids.shape + (table.shape[1],), self.backend.dtype)  # (T, B, 3H)
        return self._fused_loop(gates, state0, keep, table, ids)

    def _fused_loop(self, gates, state0, keep, table, ids):
        hs, uh = self.backend.ops.gru_forward(
            gates, self.recurrent_kernel, self.bias[1], state0[0], _rows(keep), table, ids
        )
        return GRUSteps(gates, hs, uh), (hs[gates.shape[0]],)

    def _loop_backward(
        self, cache: RecurrentCache, dy: Array | None, d_final: list
    ) -> tuple[Array, dict[str, Array], tuple]:
        gates, hs, uh = cache.steps
        (dh,) = d_final
        dX, dU, db_rec, dh = self.backend.ops.gru_backward(
            gates, hs, uh, self.recurrent_kernel, dy, dh, _rows(cache.keep)
        )
        return dX, {"recurrent_kernel": dU, "recurrent_bias": db_rec}, (dh,)


# -- the output layer and the loss ----------------------------------------------------------------------------


class ScoredGrads(NamedTuple):
    """What :meth:`FusedDense.score` leaves for its backward: the gradients themselves, computed chunk by chunk."""

    dx: Array  # (N, D) gradient of the Dense layer's input
    kernel: Array  # (D, V) dW
    bias: Array  # (V,) db


class FusedDense(Dense):
    """:class:`~scratchlm.layers.Dense` whose :meth:`score` never holds the (N, V) logits
    (``dense_softmax_cross_entropy``): per chunk of rows z = x_c W + b, then the loss and dz in place,
    then dx_c = dz Wᵀ, dW += x_cᵀ dz, db += Σ dz. Rows of weight 0 (padding) are left out of the GEMMs."""

    def score(
        self, x: Array, targets: Array, mask: Array | None = None, backward: bool = True
    ) -> tuple[float, ScoredGrads | None]:
        loss, dx, dW, db = self.backend.ops.dense_softmax_cross_entropy(
            x, self.kernel, _bias(self, self.bias, self.kernel.shape[1]), targets, mask, backward
        )
        return loss, (ScoredGrads(dx, dW, db) if backward else None)

    def score_backward(self, cache: ScoredGrads) -> tuple[Array, dict[str, Array]]:
        if self.bias is None:
            return cache.dx, {"kernel": cache.kernel}
        return cache.dx, {"kernel": cache.kernel, "bias": cache.bias}


class FusedSoftmaxCrossEntropy(SoftmaxCrossEntropy):
    """The loss in one pass per row (max, exp, sum, log p of the target), dlogits = w_n·(softmax − onehot)
    written over the logits (so the logits are gone after the call)."""

    def __call__(self, logits: Array, targets: Array, mask: Array | None = None) -> tuple[float, Array]:
        return self.backend.ops.softmax_cross_entropy(logits, targets, mask)


# -- the Transformer's layers --------------------------------------------------------------------------------


class FusedAttentionCache(NamedTuple):
    """What the flash backward needs: the row log-sum-exp instead of the probabilities."""

    query: Array  # (B, T, E) query input
    value: Array  # (B, S, E) value input
    key: Array  # (B, S, E) key input
    q: Array  # (B, N, T, K) projected queries, head-major (a view of (B, T, N, K))
    k: Array  # (B, N, S, K) projected keys
    v: Array  # (B, N, S, K) projected values
    o: Array  # (B, N, T, K) per-head outputs P V (a view of (B, T, N, K))
    lse: Array  # (B, N, T) log Σ_j exp(S_ij) over the visible keys; +inf for a row with none
    mask: Array | None  # (B, 1, T, S) bool, True = may attend, or None
    scale: float  # 1/√K

    @property
    def p(self) -> Array:
        """The probabilities (B, N, T, S), recomputed from lse on access (for inspection: backward never
        builds them): exp(Q Kᵀ·scale − lse) where visible, 0 where masked, 1/S on a row with no key."""
        xp = array_module(self.q)
        p = xp.exp((self.q @ self.k.transpose(0, 1, 3, 2)) * self.q.dtype.type(self.scale) - self.lse[..., None])
        if self.mask is not None:
            p = xp.where(self.mask, p, 0)
        dead = xp.isinf(self.lse)[..., None]
        return xp.where(dead, p.dtype.type(1 / p.shape[-1]), p).astype(self.q.dtype, copy=False)


def _heads_mask(mask: Array | None) -> Array | None:
    """The attention mask (B, 1, T, S) as the kernels take it, (B, T, S), or None."""
    return None if mask is None else mask[:, 0]


class FusedMultiHeadAttention(MultiHeadAttention):
    """:class:`~scratchlm.layers.MultiHeadAttention` with FlashAttention's scheme (``attention_forward``,
    ``attention_backward``): an online softmax over key blocks keeps only lse = log Σ exp(S) per row, and the
    backward recomputes P = exp(S − lse) block by block, dS = P ⊙ (dP − rowsum(dO ⊙ O)). The projections and
    the output layer are the parent's. With a dropout mask on the probabilities (which the kernels do not
    apply) forward and backward are the parent's."""

    def forward(
        self,
        query: Array,
        value: Array,
        key: Array | None = None,
        mask: Array | None = None,
        dropout: Array | None = None,
    ) -> tuple[Array, FusedAttentionCache | AttentionCache]:
        if dropout is not None:
            return super().forward(query, value, key, mask, dropout)
        key, mask = self._inputs(query, value, key, mask)
        q = self._project(query, "query")  # (B, N, T, K)
        k = self._project(key, "key")  # (B, N, S, K)
        v = self._project(value, "value")  # (B, N, S, K)
        o, lse = self.backend.ops.attention_forward(q, k, v, _heads_mask(mask), self.scale)
        return self._output(o), FusedAttentionCache(query, value, key, q, k, v, o, lse, mask, self.scale)

    def _attention_backward(self, c: FusedAttentionCache | AttentionCache, do: Array) -> tuple[Array, Array, Array]:
        if isinstance(c, AttentionCache):  # forward ran the parent's math (dropout)
            return super()._attention_backward(c, do)
        return self.backend.ops.attention_backward(c.q, c.k, c.v, c.o, c.lse, do, _heads_mask(c.mask), self.scale)

    def _attend(self, q: Array, k: Array, v: Array, mask: Array | None) -> Array:
        """A few new queries (<= DECODE_ROWS) in one kernel over the cache; more through the flash forward."""
        if q.shape[2] <= DECODE_ROWS:
            return self.backend.ops.attention_decode(q, k, v, _heads_mask(mask), self.scale)
        return self.backend.ops.attention_forward(q, k, v, _heads_mask(mask), self.scale)[0]


class LayerNormRowCache(NamedTuple):
    """What the fused LayerNorm's backward needs: the input and two numbers per row."""

    x: Array  # (..., D) the input, in the layer's dtype
    mean: Array  # (...,) μ of each row
    rstd: Array  # (...,) 1/σ = 1/√(σ² + ε) of each row


class FusedLayerNormalization(LayerNormalization):
    """:class:`~scratchlm.layers.LayerNormalization` in one pass per row each way (``layernorm_forward``,
    ``layernorm_backward``), computed in the layer's dtype (that of every model's activations): it keeps μ
    and 1/σ per row and the input, which the backward re-normalises."""

    def forward(self, x: Array) -> tuple[Array, LayerNormRowCache]:
        x = x.astype(self.gamma.dtype, copy=False)
        beta = _bias(self, self.beta, self.gamma.shape[0])
        y, mean, rstd = self.backend.ops.layernorm_forward(x, self.gamma, beta, self.epsilon)
        return y, LayerNormRowCache(x, mean, rstd)

    def backward(self, cache: LayerNormRowCache, dy: Array) -> tuple[Array, dict[str, Array]]:
        dx, dgamma, dbeta = self.backend.ops.layernorm_backward(cache.x, cache.mean, cache.rstd, self.gamma, dy)
        return dx, ({"gamma": dgamma} if self.beta is None else {"gamma": dgamma, "beta": dbeta})


class FusedFeedForward(FeedForward):
    """:class:`~scratchlm.layers.FeedForward` with b1 and the activation applied in one pass over the GEMM's
    output, and the activation's derivative with db1 in one pass over dh (in place): ``bias_relu`` /
    ``relu_backward`` for ReLU, ``bias_gelu`` / ``gelu_backward`` for the exact GELU (erf from the C library:
    the reference calls Python's ``math.erf`` per entry). GELU-tanh has no kernel: it is the parent's.
    Memory: ReLU's h is written over z and kept alone; for GELU only z = x W1 + b1 is kept and the backward
    computes h = GELU(z) again (one pass, ~2% of the nanogpt-cpu step) instead of keeping both (M, F) arrays,
    which took the step's peak memory above PyTorch's."""

    def forward(self, x: Array) -> tuple[Array, FeedForwardCache]:
        if self.activation == "gelu_tanh":
            return super().forward(x)
        W1 = self.ffn_1.kernel
        b1 = _bias(self, self.ffn_1.bias, W1.shape[1])
        z = x.reshape(-1, x.shape[-1]) @ W1  # (M, F)
        shape = x.shape[:-1] + (W1.shape[1],)
        if self.activation == "relu":  # h written over z: ReLU' reads h alone
            h = self.backend.ops.bias_relu(z, b1)
            return self.ffn_2.forward(h.reshape(shape))[0], FeedForwardCache(x, h.reshape(shape))
        h = self.backend.ops.bias_gelu(z, b1)  # z <- z + b1, kept for the backward
        return self.ffn_2.forward(h.reshape(shape))[0], FeedForwardCache(x, None, z.reshape(shape))

    def backward(self, cache: FeedForwardCache, dy: Array) -> tuple[Array, dict[str, Array]]:
        if self.activation == "gelu_tanh":
            return super().backward(cache, dy)
        h = cache.h
        if h is None:  # GELU: h = GELU(z) again rather than kept (its M x F floats are the step's largest)
            F = cache.z.shape[-1]
            h = self.backend.ops.bias_gelu(cache.z.reshape(-1, F), self.backend.xp.zeros(F, cache.z.dtype))
            h = h.reshape(cache.z.shape)
        dh, g2 = self.ffn_2.backward(h, dy)  # (..., F)
        F = dh.shape[-1]
        if self.activation == "relu":
            dh2, db1 = self.backend.ops.relu_backward(dh.reshape(-1, F), cache.h.reshape(-1, F))  # (M, F), (F,)
        else:
            dh2, db1 = self.backend.ops.gelu_backward(dh.reshape(-1, F), cache.z.reshape(-1, F))
        x2 = cache.x.reshape(-1, cache.x.shape[-1])  # (M, E)
        dx = (dh2 @ self.ffn_1.kernel.T).reshape(cache.x.shape)
        g1 = {"kernel": x2.T @ dh2}
        if self.ffn_1.bias is not None:
            g1["bias"] = db1
        return dx, {**prefixed("ffn_1", g1), **prefixed("ffn_2", g2)}


__all__ = [
    "DECODE_ROWS",
    "FusedAttentionCache",
    "FusedDense",
    "FusedFeedForward",
    "FusedGRU",
    "FusedLSTM",
    "FusedLSTMSteps",
    "FusedLayerNormalization",
    "FusedMultiHeadAttention",
    "FusedSoftmaxCrossEntropy",
    "LayerNormRowCache",
    "ScoredGrads",
]
