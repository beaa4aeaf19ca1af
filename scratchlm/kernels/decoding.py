"""Fused generation: the token loops of scratchlm/models/generation.py on the kernels.

    FusedRecurrentTokenLoop      an LSTM model's whole token loop in one call (``decode``): per token one GEMM
                                 and one step kernel per layer, one logits GEMM and one sampling kernel, with
                                 the input table and every buffer made once; a one-layer LSTM fed by its
                                 input table: its loop on every core, U packed once (``decode_layer``; as
                                 bfloat16 with bfloat16 weights)
    FusedTransformerTokenLoop    each token drawn by the sampling kernel (``sample_logits``) and, while the
                                 window has room, one :meth:`FusedBookDecoderBlock.decode_step` per block
    FusedBookDecoderBlock,       the decoder blocks with that one-position decoding step: the projections that
    FusedGPTDecoderBlock         read the same input concatenated into one GEMV, the attention over the KV cache
                                 in one kernel, each residual + output bias + LayerNorm in one kernel

The draws are the reference's (:func:`scratchlm.sampling.sample`): one uniform
per row and token from the same generator, drawn up front; the sampling kernel
follows sampling.py (temperature, banned ids, an inverse-CDF draw). So the ids
are the same up to float round-off in the logits
(tests/test_kernels.py, tests/test_transformer_kernels.py). With top_k or
top_p, and for the GRU, the loops are the reference ones.
"""

from typing import Any, NamedTuple

from .. import sampling
from ..backend import Array
from ..errors import SamplingError
from ..layers import BookDecoderBlock, FeedForward, GPTDecoderBlock, LayerNormalization, MultiHeadAttention
from ..layers.decoder import KVCache
from ..models.recurrent import RecurrentTokenLoop
from ..models.transformer import DecodeState, TransformerTokenLoop


def fused_draws(loop: Any, V: int, length: int, B: int) -> tuple[Any, Array, Array]:
    """What the sampling kernels take, drawn as :func:`sampling.sample` draws: (temperature in the model's
    dtype, 0 for greedy; uniforms (length, B), one per row and token, zeros for greedy; banned ids as a
    (V,) bool mask)."""
    backend = loop.backend
    xp = backend.xp
    if loop.temperature == 0:  # greedy: no draws
        temperature, u = 0.0, xp.zeros((length, B))
    else:  # as sampling: T kept finite and > 0
        temperature = sampling.representable_temperature(loop.temperature, xp.finfo(backend.dtype))
        u = xp.asarray(loop.rng.random((length, B)))
    banned = xp.zeros(V, dtype=bool)
    banned[loop.banned] = True
    return backend.dtype.type(temperature), u, banned


class FusedRecurrentTokenLoop(RecurrentTokenLoop):
    """The recurrent model's token loop in one kernel call for an LSTM stack without top_k/top_p."""

    def run(self, logits: Array, state: list, length: int) -> Any:
        model = self.model
        if model.cell != "lstm" or self.top_k is not None or self.top_p is not None:
            return super().run(logits, state, length)
        B, V = logits.shape
        temperature, u, banned = fused_draws(self, V, length, B)
        first = model.recurrent[0]
        E = None if model.embedding is None else model.embedding.embeddings
        table = first.token_table(E) if model.use_table(length, B) else None
        if len(model.recurrent) == 1 and table is not None:
            out = self.backend.ops.decode_layer(
                logits,
                state[0],
                table,
                first.recurrent_kernel,
                (model.dense.kernel, model.dense.bias),
                length,
                temperature,
                banned,
                self.eos_id,
                u,
                bfloat16=self.weights == "bfloat16",
            )
            if out is None:
                raise SamplingError("logits must be finite: a row holds NaN or +inf")
            return self.backend.to_host(out)
        out = self.backend.ops.decode(
            logits,
            state,
            table,
            (E, first.kernel, first.bias),
            [(layer.kernel, layer.bias) for layer in model.recurrent[1:]],
            [layer.recurrent_kernel for layer in model.recurrent],
            (model.dense.kernel, model.dense.bias),
            length,
            temperature,
            banned,
            self.eos_id,
            u,
        )
        if out is None:
            raise SamplingError("logits must be finite: a row holds NaN or +inf")
        return self.backend.to_host(out)


class FusedTransformerTokenLoop(TransformerTokenLoop):
    """The Transformer's token loop with the sampling kernel and, while the window has room, the blocks'
    one-position :meth:`decode_step` (the same numbers as :meth:`step`, up to round-off). Past
    ``sequence_length`` the window is re-run as :meth:`step` does. With top_k or top_p: the reference loop."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.kernel = self.top_k is None and self.top_p is None  # else the reference draws and steps

    def start(self, prompt: Array) -> tuple[Array, DecodeState]:
        if self.kernel:  # concatenated once per generation
            self.weights = [block.decode_weights() for block in self.model.blocks]
        return super().start(prompt)

    def run(self, logits: Array, state: DecodeState, length: int) -> Any:
        if self.kernel:
            B, V = logits.shape
            self.draws = fused_draws(self, V, length, B)
            logits = self.backend.xp.array(logits)  # the sampler overwrites its logits
        return super().run(logits, state, length)

    def draw(self, k: int, logits: Array) -> Array:
        if not self.kernel:
            return super().draw(k, logits)
        temperature, u, banned = self.draws
        ids = self.backend.xp.zeros(logits.shape[0], dtype=self.backend.xp.int64)
        if not self.backend.ops.sample_logits(logits, banned, temperature, u[k], ids):
            raise SamplingError("logits must be finite: a row holds NaN or +inf")
        return ids

    def step(self, new_ids: Array, state: DecodeState) -> tuple[Array, DecodeState]:
        if not self.kernel or state.ids.shape[1] + 1 - state.start > self.model.sequence_length:
            return super().step(new_ids, state)  # the window slides: re-run it
        return self.decode_step(new_ids, state, self.weights)

    def decode_step(self, new_ids: Array, state: DecodeState, weights: list) -> tuple[Array, DecodeState]:
        """One new token per row, (B,), while the window has room: :meth:`step`'s numbers through each
        block's ``decode_step`` (one position's work); weights: each block's ``decode_weights()``."""
        model, xp = self.model, self.backend.xp
        ids = xp.concatenate([state.ids, new_ids[:, None]], axis=1)  # (B, n)
        position = ids.shape[1] - 1 - state.start
        real = model.keep(new_ids[:, None])[:, 0]  # (B,): not padding
        keep = xp.concatenate([state.keep, real[:, None]], axis=1)  # (B, S), S = position + 1
        mask = (keep & real[:, None])[:, None, :]  # (B, 1, S): causal holds by construction
        h = model.embedding.forward(new_ids[:, None], position)[0][:, 0]  # (B, E)
        for block, caches, w in zip(model.blocks, state.kv, weights, strict=True):
            h = block.decode_step(h, caches, mask, w)
        if model.final_layernorm is not None:
            h = model.final_layernorm.forward(h)[0]
        return model.dense.forward(h)[0], DecodeState(ids, state.kv, state.start, keep)


# -- the blocks' decoding step ------------------------------------------------------------------------------


class DecodeWeights(NamedTuple):
    """The concatenated projections of a block's ``decode_step``."""

    kernel: Array  # (E, P·N·K): the projections that read the block input, side by side
    bias: Array  # (P·N·K,)


def _or_zeros(b: Array | None, backend: Any, size: int) -> Array:
    """A bias, or zeros (size,) where the layer has none (use_bias=False): the kernels always add one."""
    return backend.zeros((size,)) if b is None else b


def _concatenated(xp: Any, projections: list[tuple[MultiHeadAttention, str]]) -> DecodeWeights:
    """[(attention, "query"), ...] -> DecodeWeights of those projections, in that order."""
    kernels = [a.params[f"{name}/kernel"].reshape(a.embed_dim, -1) for a, name in projections]
    biases = [_attention_bias(a, name) for a, name in projections]
    return DecodeWeights(xp.ascontiguousarray(xp.concatenate(kernels, axis=1)), xp.concatenate(biases))


def _heads(y: Array, N: int, K: int) -> Array:
    """(B, N·K) -> head-major (B, N, 1, K) view: one new position."""
    return y.reshape(y.shape[0], 1, N, K).transpose(0, 2, 1, 3)


def _merge(o: Array) -> Array:
    """Head-major (B, N, 1, K) -> (B, N·K)."""
    B, N, _, K = o.shape
    return o.transpose(0, 2, 1, 3).reshape(B, N * K)


def _ffn(ffn: FeedForward, x: Array) -> tuple[Array, Array]:
    """The feed-forward of one position per row, x (B, E), without its output bias, and that bias (B, E), (E,)
    for the caller's kernel to add: relu(x W1 + b1) W2 with bias + ReLU in one kernel; the GELUs (no kernel)
    as the layer computes them (output bias included, zeros returned)."""
    backend = ffn.backend
    E = ffn.ffn_2.kernel.shape[1]
    if ffn.activation != "relu":
        return ffn.forward(x)[0], backend.zeros((E,))
    b1 = _or_zeros(ffn.ffn_1.bias, backend, ffn.ffn_1.kernel.shape[1])
    return backend.ops.bias_relu(x @ ffn.ffn_1.kernel, b1) @ ffn.ffn_2.kernel, _or_zeros(ffn.ffn_2.bias, backend, E)


def _attention_bias(a: MultiHeadAttention, name: str) -> Array:
    """The attention's ``name/bias`` flat ((E,) for the output, (N·K,) otherwise), or zeros."""
    size = a.embed_dim if name == "output" else a.num_heads * a.key_dim
    return _or_zeros(a.params.get(f"{name}/bias"), a.backend, size).reshape(-1)


def _beta(norm: LayerNormalization) -> Array:
    """A LayerNorm's β, or zeros where it has none."""
    return _or_zeros(norm.beta, norm.backend, norm.gamma.shape[0])


class FusedBookDecoderBlock(BookDecoderBlock):
    """:class:`~scratchlm.layers.BookDecoderBlock` with a one-position decoding step on the kernels."""

    def decode_weights(self) -> DecodeWeights:
        """[Wq1 Wk1 Wv1 Wk2 Wv2] (E, 5·N·K) and their biases: everything that reads the block input x."""
        a1, a2 = self.attention_1, self.attention_2
        return _concatenated(self.backend.xp, [(a1, "query"), (a1, "key"), (a1, "value"), (a2, "key"), (a2, "value")])

    def decode_step(self, x: Array, kv: list[KVCache], mask: Array, weights: DecodeWeights) -> Array:
        """:meth:`step` for one new position per row: x (B, E), mask (B, 1, S) over the S positions so far
        (this one included), weights from :meth:`decode_weights` -> (B, E).

            [q1 k1 v1 k2 v2] = x [Wq1 Wk1 Wv1 Wk2 Wv2] + b         one GEMV; k, v appended to the caches
            a1 = LN1(x + (attend(q1, K1, V1) Wo1 + bo1))           attention in one kernel, then one kernel
            a2 = LN2(a1 + (attend(a1 Wq2 + bq2, K2, V2) Wo2 + bo2))
            y  = LN3(a2 + (relu(a2 W1 + b1) W2 + b2))
        """
        ops = self.backend.ops
        a1, a2, ffn = self.attention_1, self.attention_2, self.ffn
        N, K = a1.num_heads, a1.key_dim
        NK = N * K
        ln1, ln2, ln3 = self.layernorm_1, self.layernorm_2, self.layernorm_3
        xw = x @ weights.kernel  # (B, 5·N·K)
        xw += weights.bias
        q1 = _heads(xw[:, :NK], N, K)  # (B, N, 1, K)
        k1, v1 = kv[0].append(_heads(xw[:, NK : 2 * NK], N, K), _heads(xw[:, 2 * NK : 3 * NK], N, K))
        k2, v2 = kv[1].append(_heads(xw[:, 3 * NK : 4 * NK], N, K), _heads(xw[:, 4 * NK :], N, K))
        o1 = ops.attention_decode(q1, k1, v1, mask, a1.scale)  # (B, N, 1, K)
        m1 = _merge(o1) @ a1.params["output/kernel"].reshape(NK, -1)  # (B, E), bias in the next kernel
        a1_out = ops.residual_layernorm(x, m1, _attention_bias(a1, "output"), ln1.gamma, _beta(ln1), ln1.epsilon)
        q2 = a1_out @ a2.params["query/kernel"].reshape(-1, NK)  # (B, N·K)
        q2 += _attention_bias(a2, "query")
        o2 = ops.attention_decode(_heads(q2, N, K), k2, v2, mask, a2.scale)
        m2 = _merge(o2) @ a2.params["output/kernel"].reshape(NK, -1)
        a2_out = ops.residual_layernorm(a1_out, m2, _attention_bias(a2, "output"), ln2.gamma, _beta(ln2), ln2.epsilon)
        f, b2 = _ffn(ffn, a2_out)  # (B, E)
        return ops.residual_layernorm(a2_out, f, b2, ln3.gamma, _beta(ln3), ln3.epsilon)


class FusedGPTDecoderBlock(GPTDecoderBlock):
    """:class:`~scratchlm.layers.GPTDecoderBlock` with a one-position decoding step on the kernels."""

    def decode_weights(self) -> DecodeWeights:
        """[Wq Wk Wv] (E, 3·N·K) and their biases: everything that reads LN1(x)."""
        a = self.attention_1
        return _concatenated(self.backend.xp, [(a, "query"), (a, "key"), (a, "value")])

    def decode_step(self, x: Array, kv: list[KVCache], mask: Array, weights: DecodeWeights) -> Array:
        """:meth:`step` for one new position per row: x (B, E), mask (B, 1, S) over the S positions so far
        (this one included), weights from :meth:`decode_weights` -> (B, E).

            n1 = LN1(x)    [q k v] = n1 [Wq Wk Wv] + b               one GEMV; k, v appended to the cache
            h  = x + (attend(q, K, V) Wo + bo)                       attention in one kernel
            y  = h + (relu(LN2(h) W1 + b1) W2 + b2)
        """
        ops = self.backend.ops
        a, ffn = self.attention_1, self.ffn
        N, K = a.num_heads, a.key_dim
        NK = N * K
        ln1, ln2 = self.layernorm_1, self.layernorm_2
        n1 = ops.layernorm_forward(x, ln1.gamma, _beta(ln1), ln1.epsilon)[0]
        qkv = n1 @ weights.kernel  # (B, 3·N·K)
        qkv += weights.bias
        k, v = kv[0].append(_heads(qkv[:, NK : 2 * NK], N, K), _heads(qkv[:, 2 * NK :], N, K))
        o = ops.attention_decode(_heads(qkv[:, :NK], N, K), k, v, mask, a.scale)  # (B, N, 1, K)
        m = _merge(o) @ a.params["output/kernel"].reshape(NK, -1)
        m += _attention_bias(a, "output")
        h = x + m  # (B, E)
        n2 = ops.layernorm_forward(h, ln2.gamma, _beta(ln2), ln2.epsilon)[0]
        f, b2 = _ffn(ffn, n2)
        f += b2
        return h + f
