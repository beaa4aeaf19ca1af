"""The Transformer's fused kernels against the reference path: the same numbers, on random shapes and masks.

Each fused piece is run next to the plain-``xp`` code it replaces, on the same weights and inputs:

* attention (FlashAttention's scheme: online softmax over key blocks, only the row log-sum-exp kept,
  probabilities recomputed in backward), forward and every gradient, with no mask, causal masks, padded
  queries and keys (rows that see no key at all, which Keras makes uniform), random masks and a (T, S) mask
  broadcast over the batch; the block sizes are also shrunk so that small shapes cross several query and key
  blocks, several batch groups and fully hidden blocks, and the batch rows are split over three threads;
* LayerNorm forward and backward, the feed-forward's fused bias + ReLU;
* the output projection + softmax cross-entropy in row chunks (any chunk size, masked rows, every row masked
  but one), and a training step that never allocates the full (B·T, V) logits (tracemalloc);
* the KV-cache decoding step (attention over the cache in one kernel, residual + bias + LayerNorm in one) and
  whole generations, which draw the same ids;
* the whole TransformerLM, both blocks: loss and every gradient, fused against reference.

An array passes when max |fused − reference| <= rtol · max |reference| + atol, with float64 1e-10 / 1e-13
and float32 1e-5 / 1e-6: in float64 both paths do the same arithmetic up to the order of sums; in float32
the fused exp (``scratchlm/kernels/numba/activations.py``) and the recomputed P = exp(S − lse) differ from NumPy's
by a few 1e-7, which a few products amplify. The key bias gets no gradient in exact arithmetic (softmax ignores the
per-query constant q·bk), so it is compared on the scale of the other gradients.
"""

import contextlib
import tracemalloc
from unittest import mock

import numpy as np
import pytest
from helpers.strategies import attention_cases, transformer_batch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scratchlm import get_backend
from scratchlm.backend import Backend
from scratchlm.kernels import FUSED
from scratchlm.kernels.layers import FusedAttentionCache, LayerNormRowCache, ScoredGrads
from scratchlm.layers import FeedForward, LayerNormalization, MultiHeadAttention, causal_mask
from scratchlm.layers.dense import Dense
from scratchlm.models import TransformerLM

pytest.importorskip("numba")

from scratchlm.kernels.numba import attention as attention_numba
from scratchlm.kernels.numba import xent as xent_numba
from scratchlm.kernels.numba.parallel import blas, shards

TOL = {"float64": 1e-10, "float32": 1e-5}
ATOL = {"float64": 1e-13, "float32": 1e-6}
EXAMPLES = settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
DTYPES = st.sampled_from(["float32", "float64"])


def assert_close(got, want, dtype, what="", scale=None, truth=None):
    """max |got − want| <= TOL · scale + ATOL, plus, where ``truth`` (the reference path run in float64 on the same
    float32 numbers) is given, twice the reference's own float32 error: a float32 result that cancels (the
    attention's dS = P ⊙ (dP − rowsum(dO ⊙ O))) can be off by more than TOL in both paths alike."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, what
    scale = np.max(np.abs(want), initial=0.0) if scale is None else scale
    err = np.max(np.abs(got - want), initial=0.0)
    own = 0.0 if truth is None else np.max(np.abs(want - np.asarray(truth, dtype=np.float64)), initial=0.0)
    assert err <= TOL[dtype] * scale + ATOL[dtype] + 2 * own, (
        f"{what}: {err:.3g} against scale {scale:.3g} (the reference's own error {own:.3g})"
    )


def backends(dtype):
    return get_backend("numpy", dtype, kernels="reference"), get_backend("numpy", dtype, kernels="fused")


@pytest.fixture(params=["blocks", "small-blocks", "three-shards"])
def small_blocks(request, monkeypatch):
    """small-blocks: tiny shapes cross several query and key blocks and batch groups; three-shards: the batch
    rows split over three threads (scratchlm/kernels/numba/parallel/shards.py), with small blocks too."""
    if request.param != "blocks":
        monkeypatch.setattr(attention_numba, "BLOCK_Q", 3)
        monkeypatch.setattr(attention_numba, "BLOCK_K", 2)
        monkeypatch.setattr(attention_numba, "WORK", 24)
    if request.param == "three-shards":
        if blas.THREADS is None:
            pytest.skip("OpenBLAS's thread control was not found: the loops run as one shard")
        monkeypatch.setattr(shards, "count", lambda rows: min(3, rows))
    return request.param


def pair_of_attentions(dtype, E, N, K, seed):
    ref_be, fused_be = backends(dtype)
    ref = ref_be.layer(MultiHeadAttention)(E, N, K, ref_be, Backend.rng(seed))
    fused = fused_be.layer(MultiHeadAttention)(E, N, K, fused_be, Backend.rng(seed))
    rng = np.random.default_rng(seed + 1)
    for name, p in ref.params.items():
        if name.endswith("bias"):
            p[...] = 0.3 * rng.standard_normal(p.shape)
        fused.params[name][...] = p
    return ref, fused


@EXAMPLES
@given(case=attention_cases(), dtype=DTYPES)
def test_flash_attention_matches_the_reference(small_blocks, case, dtype):
    c = case
    ref, fused = pair_of_attentions(dtype, c["E"], c["N"], c["K"], c["seed"])
    assert type(ref) is MultiHeadAttention and type(fused) is FUSED[MultiHeadAttention]
    rng = np.random.default_rng(c["seed"] + 2)
    query = rng.standard_normal((c["B"], c["T"], c["E"])).astype(dtype) * 2
    value = query if c["self_attention"] else rng.standard_normal((c["B"], c["S"], c["E"])).astype(dtype)
    dout = rng.standard_normal((c["B"], c["T"], c["E"])).astype(dtype)
    out_r, cache_r = ref.forward(query, value, mask=c["mask"])
    out_f, cache_f = fused.forward(query, value, mask=c["mask"])
    assert isinstance(cache_f, FusedAttentionCache) and cache_f.lse.shape == (c["B"], c["N"], c["T"])
    assert out_f.dtype == np.dtype(dtype)
    assert_close(out_f, out_r, dtype, "output")
    assert_close(cache_f.p, cache_r.p, dtype, "probabilities recomputed from lse", scale=1.0)
    d_r, g_r = ref.backward(cache_r, dout)
    d_f, g_f = fused.backward(cache_f, dout)
    d_t, g_t = d_r, {name: None for name in g_r}  # float64: no float32 error to allow for
    if dtype == "float32":
        exact = MultiHeadAttention(c["E"], c["N"], c["K"], backends("float64")[0], Backend.rng(c["seed"]))
        for name, p in ref.params.items():
            exact.params[name][...] = p
        wide = [None if a is None else a.astype(np.float64) for a in (query, value, dout)]
        _, cache_t = exact.forward(wide[0], wide[0] if c["self_attention"] else wide[1], mask=c["mask"])
        d_t, g_t = exact.backward(cache_t, wide[2])
    scale = max(float(np.abs(g).max()) for g in g_r.values())
    for name in g_r:
        assert g_f[name].dtype == np.dtype(dtype)
        assert_close(g_f[name], g_r[name], dtype, name, scale=scale if name == "key/bias" else None, truth=g_t[name])
    for name in ("d_query", "d_value", "d_key"):
        assert_close(
            getattr(d_f, name),
            getattr(d_r, name),
            dtype,
            name,
            truth=None if dtype == "float64" else getattr(d_t, name),
        )


def test_flash_attention_keeps_no_probabilities_and_skips_hidden_blocks(monkeypatch):
    """The cache holds lse (B, N, T), not P (B, N, T, S); with causal blocks the upper ones are never computed."""
    monkeypatch.setattr(attention_numba, "BLOCK_Q", 4)
    monkeypatch.setattr(attention_numba, "BLOCK_K", 4)
    rng = np.random.default_rng(0)
    B, T, N, K = 2, 12, 2, 3
    q, k, v = (rng.standard_normal((B, N, T, K)) for _ in range(3))
    mask = np.broadcast_to(causal_mask(T), (B, T, T))
    seen = []
    real = attention_numba._online_block

    def spy(s, *args):
        seen.append(s.shape)
        return real(s, *args)

    monkeypatch.setattr(attention_numba, "_online_block", spy)
    o, lse = attention_numba.forward(q, k, v, mask, 1 / np.sqrt(K))
    assert lse.shape == (B, N, T) and len(seen) == 6  # 6 of the 3 x 3 blocks: j <= i
    s = np.where(mask[:, None], q @ k.transpose(0, 1, 3, 2) / np.sqrt(K), -np.inf)
    want_lse = np.log(np.exp(s - s.max(-1, keepdims=True)).sum(-1)) + s.max(-1)
    np.testing.assert_allclose(lse, want_lse, rtol=1e-12)


def test_a_row_with_no_key_is_uniform_and_gives_keys_their_share(rng):
    """Keras' semantics for a fully masked row: output = mean of V over all S, dV_j += dO_i / S, nothing to Q, K."""
    B, T, S, N, K = 1, 2, 3, 1, 2
    q, k, v, do = (rng.standard_normal((B, N, L, K)) for L in (T, S, S, T))
    mask = np.array([[[False] * S, [True, False, True]]])  # row 0 sees nothing
    o, lse = attention_numba.forward(q, k, v, mask, 0.5)
    assert np.isinf(lse[0, 0, 0]) and np.isfinite(lse[0, 0, 1])
    np.testing.assert_allclose(o[0, 0, 0], v[0, 0].mean(axis=0), rtol=1e-14)
    do[0, 0, 1] = 0  # only the dead row's gradient
    dq, dk, dv = attention_numba.backward(q, k, v, o, lse, do, mask, 0.5)
    np.testing.assert_allclose(dv[0, 0], np.broadcast_to(do[0, 0, 0] / S, (S, K)), rtol=1e-14)
    assert not dq.any() and not dk.any()


# -- LayerNorm and the feed-forward -------------------------------------------------------------------


@EXAMPLES
@given(
    M=st.integers(1, 9),
    D=st.integers(1, 33),
    lead=st.booleans(),
    dtype=DTYPES,
    seed=st.integers(0, 2**16),
    spread=st.sampled_from([0.01, 1.0, 30.0]),
)
def test_layernorm_matches_the_reference(M, D, lead, dtype, seed, spread):
    ref_be, fused_be = backends(dtype)
    ref, fused = ref_be.layer(LayerNormalization)(D, ref_be), fused_be.layer(LayerNormalization)(D, fused_be)
    rng = np.random.default_rng(seed)
    for ln in (ref, fused):
        ln.gamma[:] = np.random.default_rng(seed + 1).standard_normal(D)
        ln.beta[:] = np.random.default_rng(seed + 2).standard_normal(D)
    shape = (2, M, D) if lead else (M, D)
    # an offset per row on the scale of the spread (a larger one cancels digits in x − μ on both paths alike)
    x = (spread * (rng.standard_normal(shape) + rng.standard_normal(shape[:-1] + (1,)))).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    y_r, c_r = ref.forward(x)
    y_f, c_f = fused.forward(x)
    assert isinstance(c_f, LayerNormRowCache) and c_f.mean.shape == shape[:-1]  # two numbers per row
    assert_close(y_f, y_r, dtype, "y")
    dx_r, g_r = ref.backward(c_r, dy)
    dx_f, g_f = fused.backward(c_f, dy)
    assert dx_f.dtype == g_f["gamma"].dtype == np.dtype(dtype)
    assert_close(dx_f, dx_r, dtype, "dx")
    for name in g_r:
        assert_close(g_f[name], g_r[name], dtype, name)


@EXAMPLES
@given(
    M=st.integers(1, 7),
    E=st.integers(1, 6),
    F=st.integers(1, 9),
    dtype=DTYPES,
    seed=st.integers(0, 2**16),
    activation=st.sampled_from(["relu", "gelu", "gelu_tanh"]),
)
def test_feedforward_bias_activation_matches_the_reference(M, E, F, dtype, seed, activation):
    """bias_relu / bias_gelu and their backward passes (GELU-tanh: the parent's math on the fused class too)."""
    ref_be, fused_be = backends(dtype)
    ref = ref_be.layer(FeedForward)(E, F, ref_be, Backend.rng(seed), activation)
    fused = fused_be.layer(FeedForward)(E, F, fused_be, Backend.rng(seed), activation)
    assert type(ref) is FeedForward and type(fused) is FUSED[FeedForward]
    rng = np.random.default_rng(seed)
    for name, p in ref.params.items():
        if name.endswith("bias"):
            p[...] = rng.standard_normal(p.shape)  # both sides of the kink
        fused.params[name][...] = p
    x = rng.standard_normal((2, M, E)).astype(dtype)
    dy = rng.standard_normal((2, M, E)).astype(dtype)
    y_r, c_r = ref.forward(x)
    y_f, c_f = fused.forward(x)
    assert_close(y_f, y_r, dtype, "y")
    if activation == "gelu":  # the fused GELU keeps z alone and computes h again in the backward
        assert c_f.h is None
        np.testing.assert_array_equal(c_f.z > 0, c_r.z > 0)
    else:
        np.testing.assert_array_equal(c_f.h > 0, c_r.h > 0)
    dx_r, g_r = ref.backward(c_r, dy)
    dx_f, g_f = fused.backward(c_f, dy)
    assert_close(dx_f, dx_r, dtype, "dx")
    for name in g_r:
        assert_close(g_f[name], g_r[name], dtype, name)


# -- output projection + cross-entropy in chunks ----------------------------------------------------------


@EXAMPLES
@given(
    N=st.integers(1, 40),
    D=st.integers(1, 7),
    V=st.integers(1, 50),
    chunk=st.sampled_from([None, 1, 3, 7, 64]),
    masking=st.sampled_from(["none", "some", "one"]),
    dtype=DTYPES,
    seed=st.integers(0, 2**16),
    sharded=st.booleans(),
)
def test_chunked_dense_cross_entropy_matches_the_reference(N, D, V, chunk, masking, dtype, seed, sharded):
    """Any chunk size, padding rows, and the row pass split over three threads (or not)."""
    rng = np.random.default_rng(seed)
    ref_be, fused_be = backends(dtype)
    ref, fused = (
        ref_be.layer(Dense)(D, V, ref_be, Backend.rng(seed)),
        fused_be.layer(Dense)(D, V, fused_be, Backend.rng(seed)),
    )
    ref.bias[:] = fused.bias[:] = rng.standard_normal(V)
    x = (3 * rng.standard_normal((N, D))).astype(dtype)
    y = rng.integers(0, V, N)
    mask = None
    if masking == "some":
        mask = rng.random(N) < 0.6
        mask[rng.integers(N)] = True
    elif masking == "one":  # every row but one is padding
        mask = np.zeros(N, dtype=bool)
        mask[rng.integers(N)] = True
    loss_r, c_r = ref.score(x, y, mask)
    dx_r, g_r = ref.score_backward(c_r)
    with (
        mock.patch.object(shards, "count", lambda rows: min(3, rows))
        if sharded and blas.THREADS
        else contextlib.nullcontext()
    ):
        loss, dx, dW, db = xent_numba.dense_softmax_cross_entropy(x, fused.kernel, fused.bias, y, mask, chunk=chunk)
    assert loss == pytest.approx(loss_r, rel=TOL[dtype], abs=ATOL[dtype])
    assert_close(dx, dx_r, dtype, "dx")
    assert_close(dW, g_r["kernel"], dtype, "dW")
    assert_close(db, g_r["bias"], dtype, "db")
    if mask is not None:
        assert not dx[~mask].any()  # padding rows get exactly 0
    alone, _, _, _ = xent_numba.dense_softmax_cross_entropy(
        x, fused.kernel, fused.bias, y, mask, backward=False, chunk=chunk
    )
    assert alone == pytest.approx(loss_r, rel=TOL[dtype], abs=ATOL[dtype])
    loss_f, c_f = fused.score(x, y, mask)  # the fused layer calls the kernel
    assert isinstance(c_f, ScoredGrads)
    assert loss_f == pytest.approx(loss_r, rel=TOL[dtype], abs=ATOL[dtype])
    assert_close(fused.score_backward(c_f)[1]["kernel"], g_r["kernel"], dtype, "dW")


def test_chunked_cross_entropy_refuses_a_mask_that_scores_nothing():
    x = np.ones((3, 2))
    with pytest.raises(ValueError, match="scores no token"):
        xent_numba.dense_softmax_cross_entropy(x, np.ones((2, 4)), np.zeros(4), np.zeros(3, int), np.zeros(3, bool))


def traced_peak(fn):
    """Peak bytes of NumPy allocations (tracemalloc sees them) while fn() runs."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        fn()
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


def test_a_fused_training_step_never_holds_the_full_logits(monkeypatch):
    """B·T = 240 rows of V = 3,000 logits are 5.8 MB in float64; the fused step's whole peak stays below that
    (the reference step's peak is several times it, which shows the measurement sees the logits)."""
    monkeypatch.setattr(xent_numba, "CHUNK", 1 << 16)  # 21 rows of logits at a time
    V, B, T = 3000, 8, 30
    rng = np.random.default_rng(0)
    x = rng.integers(1, V, (B, T))
    x[0, 20:] = 0
    y = rng.integers(1, V, (B, T))
    logits_bytes = B * T * V * 8
    peaks = {}
    for kernels in ("reference", "fused"):
        model = TransformerLM(
            V,
            T,
            embed_dim=8,
            dense_dim=16,
            num_heads=2,
            key_dim=4,
            dtype="float64",
            seed=0,
            backend=get_backend("numpy", "float64", kernels),
        )
        model.loss_and_grads(x, y)  # compile and warm up
        peaks[kernels] = traced_peak(lambda model=model: model.loss_and_grads(x, y))
    assert peaks["fused"] < logits_bytes < peaks["reference"] / 2, (peaks, logits_bytes)


# -- the decoding step ----------------------------------------------------------------------------------


@EXAMPLES
@given(
    B=st.integers(1, 3),
    T=st.integers(1, 4),
    S=st.integers(1, 12),
    N=st.integers(1, 3),
    K=st.integers(1, 9),
    dead=st.booleans(),
    dtype=DTYPES,
    seed=st.integers(0, 2**16),
)
def test_decode_attention_matches_the_reference(B, T, S, N, K, dead, dtype, seed):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, N, T, K)).astype(dtype)
    k, v = (rng.standard_normal((B, N, S, K)).astype(dtype) for _ in range(2))
    mask = causal_mask(T, S, offset=S - T if S >= T else 0)[None] & (rng.random((B, 1, S)) < 0.8)
    if dead:
        mask[0, -1] = False
    mha = MultiHeadAttention(2, N, K, get_backend("numpy", dtype, "reference"), Backend.rng(0))
    _, want = mha._attention(q, k, v, mask[:, None])  # (P, O)
    got = attention_numba.attend(q, k, v, mask, mha.scale)
    assert_close(got, want, dtype, "o")


@pytest.mark.parametrize("block", ["book", "gpt"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_decode_step_is_the_reference_step(block, dtype):
    """decode_step (concatenated projections, one-kernel attention and LayerNorms) = step, position by position."""
    ref, fused = make_pair(block, dtype, layers=2)
    prompt = np.array([[3, 4, 0], [6, 0, 8]])
    ref_loop = ref.backend.layer(ref.token_loop)(ref)
    fused_loop = fused.backend.layer(fused.token_loop)(fused)
    assert type(ref_loop) is ref.token_loop and type(fused_loop) is FUSED[fused.token_loop]
    lr, sr = ref_loop.start(prompt)
    lf, sf = fused_loop.start(prompt)
    weights = [b.decode_weights() for b in fused.blocks]
    for t in range(5):
        assert_close(lf, lr, dtype, f"logits at {t}")
        new = np.array([1 + t, 0 if t == 2 else 5])  # a padding token in between
        lr, sr = ref_loop.step(new, sr)
        lf, sf = fused_loop.decode_step(new, sf, weights)


@pytest.mark.parametrize("block", ["book", "gpt"])
@pytest.mark.parametrize(
    "options",
    [
        dict(temperature=0.8, seed=3),
        dict(temperature=0, seed=0),
        dict(temperature=1.3, seed=5, banned_ids=[0, 1], eos_id=2),
    ],
)
def test_fused_generation_draws_the_same_ids(block, options):
    """Fused token loop (past sequence_length too: the window slides) = the reference loop, in float64."""
    ref, fused = make_pair(block, "float64", layers=1)
    for prompt in ([5, 6], [[5, 6, 7], [1, 0, 3]]):
        want = ref.generate(prompt, 14, **options)
        got = fused.generate(prompt, 14, **options)
        np.testing.assert_array_equal(got, want)


# -- the whole model -------------------------------------------------------------------------------------


def make_pair(block, dtype, layers=1, V=17, L=10, E=6, F=7, N=2, K=3):
    """The same TransformerLM on the reference and the fused path, biases and norms far from their init."""
    models = []
    for kernels in ("reference", "fused"):
        models.append(
            TransformerLM(
                V,
                L,
                embed_dim=E,
                dense_dim=F,
                num_heads=N,
                key_dim=K,
                num_layers=layers,
                block=block,
                dtype=dtype,
                seed=2,
                backend=get_backend("numpy", dtype, kernels),
            )
        )
    rng = np.random.default_rng(7)
    for name, p in models[0].params.items():
        if name.endswith(("bias", "beta")):
            p[...] = 0.3 * rng.standard_normal(p.shape)
        elif name.endswith("embeddings"):
            p[...] = rng.standard_normal(p.shape)
        elif name.endswith("gamma"):
            p[...] = 1 + 0.3 * rng.standard_normal(p.shape)
    models[1].set_params(models[0].params)
    return models


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    block=st.sampled_from(["book", "gpt"]),
    layers=st.integers(1, 2),
    B=st.integers(1, 4),
    T=st.integers(1, 10),
    dtype=DTYPES,
    seed=st.integers(0, 2**16),
    last_only=st.booleans(),
    user_mask=st.booleans(),
)
def test_transformer_loss_and_every_gradient_match_the_reference(
    block, layers, B, T, dtype, seed, last_only, user_mask
):
    ref, fused = make_pair(block, dtype, layers)
    x, y, mask = transformer_batch(np.random.default_rng(seed), ref.vocab_size, B, T, last_only, user_mask)
    loss_r, g_r = ref.loss_and_grads(x, y, mask=mask, last_only=last_only)
    loss_f, g_f = fused.loss_and_grads(x, y, mask=mask, last_only=last_only)
    assert loss_f == pytest.approx(loss_r, rel=TOL[dtype])
    assert fused.loss(x, y, mask=mask, last_only=last_only) == pytest.approx(loss_r, rel=TOL[dtype])
    assert list(g_f) == list(g_r)
    scale = max(float(np.abs(g).max()) for g in g_r.values())
    for name in g_r:
        assert g_f[name].dtype == np.dtype(dtype), name
        assert_close(g_f[name], g_r[name], dtype, name, scale=scale if name.endswith("key/bias") else None)
    assert_close(fused.forward(x)[0], ref.forward(x)[0], dtype, "logits")


def test_the_fused_backend_takes_the_fused_path_everywhere():
    """One seam: kernels="fused" (the default on NumPy with Numba) builds every Transformer layer, the loss and
    the token loop as their fused subclasses, and its loss goes through the chunked projection;
    kernels="reference" builds the reference classes themselves."""
    ref, fused = make_pair("book", "float64")
    default = TransformerLM(17, 10, embed_dim=6, dense_dim=7, num_heads=2, key_dim=3, seed=2)
    for model, fused_path in ((fused, True), (default, True), (ref, False)):
        block = model.blocks[0]
        layers = [
            model.embedding,
            block,
            block.attention_1,
            block.attention_2,
            block.layernorm_1,
            block.ffn,
            block.ffn.ffn_1,
            model.dense,
            model.loss_function,
        ]
        for layer in layers:
            reference = next((cls for cls in type(layer).__mro__ if cls in FUSED), type(layer))
            assert type(layer) is (FUSED.get(reference, reference) if fused_path else reference), layer
    x = np.array([[1, 2, 3, 0]])
    _, cache = fused._score(x, x, None, x != 0, False, None)
    assert isinstance(cache.head, ScoredGrads) and isinstance(cache.blocks[0].attention_1, FusedAttentionCache)
