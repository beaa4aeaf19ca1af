"""The Transformer layers on their own: float64 finite differences and Keras 3's semantics.

MultiHeadAttention (Keras layout, masks by replacement, AND of causal and padding
masks), LayerNormalization (epsilon 1e-3, biased variance), FeedForward and
PositionalEmbedding, and a post-LN block x -> LN(x + MHA(x, x, x)) to check that
the three input gradients of self-attention add up.
"""

import numpy as np
import pytest

from scratchlm import get_backend
from scratchlm.backend import Backend
from scratchlm.errors import ModelError
from scratchlm.gradcheck import check_gradients
from scratchlm.layers import (
    FeedForward,
    LayerNormalization,
    MultiHeadAttention,
    PositionalEmbedding,
    causal_mask,
    combine_masks,
    padding_mask,
)
from scratchlm.layers.attention import FILL

TOL = 1e-6


def zero_in_theory(params, mask=None, keys=None):
    """Parameter names whose gradient is exactly 0 in exact arithmetic.

    The key bias always: q·bk is the same for every key of a row and softmax ignores a constant
    shift. The query and key projections too when no query row sees more than one key (``keys`` = S
    is 1, or every row of the mask keeps at most one key): a softmax over one score is 1 whatever
    the score, and a row that sees no key is uniform (Keras), whatever the scores.
    """
    one_key = keys == 1 or (mask is not None and int(np.asarray(mask).sum(axis=-1).max()) <= 1)
    parts = ("key/bias",) + (("query/kernel", "query/bias", "key/kernel") if one_key else ())
    return {name for name in params if name.endswith(parts)}


def check_attention_gradients(loss_fn, params, grads, mask=None, keys=None):
    """check_gradients, with the gradients that are zero in theory (:func:`zero_in_theory`) held to an
    absolute bound: both sides are round-off there (0 on an AVX2 CPU, ~4e-18 on an AVX-512 one), and their
    relative error means nothing."""
    zero = zero_in_theory(params, mask, keys)
    scale = max(float(np.abs(g).max()) for g in grads.values())
    for name in zero:  # analytic: round-off of the products only
        assert np.abs(grads[name]).max() <= 1e-12 * scale, (name, grads[name])
    errs = check_gradients(loss_fn, params, grads, zero=zero)
    assert all(errs[name] <= 1e-8 for name in zero), {name: errs[name] for name in zero}  # numeric: ε·|L|/h
    return {k: v for k, v in errs.items() if k not in zero}


def make_mha(be, rng, E, N, K, seed=0):
    """An MHA whose biases are random too, so that every parameter matters."""
    mha = be.layer(MultiHeadAttention)(E, N, K, be, Backend.rng(seed))
    for name, p in mha.params.items():
        if name.endswith("/bias"):
            p[...] = 0.1 * rng.standard_normal(p.shape)
    return mha


def masks_with_a_dead_row(T, S, B):
    """causal (T, S) ∧ padding (B, T, S), with padded queries, padded keys and a row with no key at all."""
    q_keep = np.ones((B, T), bool)
    v_keep = np.ones((B, S), bool)
    q_keep[0, -1] = False  # a padded query: its whole row is masked
    v_keep[1 % B, 0] = False  # key 0 padded: query 0 (which sees only key 0) has nothing
    v_keep[0, S - 1] = False
    mask = combine_masks(causal_mask(T, S), padding_mask(q_keep, v_keep))
    assert (~mask.any(axis=-1)).any()  # some row is fully masked
    return mask


def mha_loss_and_grads(mha, query, value, key, mask, R):
    """L = Σ R ⊙ MHA(query, value, key, mask); analytic grads of every parameter and input."""
    out, cache = mha.forward(query, value, key, mask)
    d, grads = mha.backward(cache, R)
    grads = {**grads, "query": d.d_query}
    if key is None:
        grads["value"] = d.d_value + d.d_key  # key is value: the caller adds the two paths
    else:
        grads["value"], grads["key"] = d.d_value, d.d_key
    return float((out * R).sum()), grads


def reference_mha(mha, query, value, key, mask):
    """Keras' MHA written head by head in plain NumPy loops."""
    p = mha.params
    key = value if key is None else key
    B, T, E = query.shape
    N, K = mha.num_heads, mha.key_dim
    out = np.zeros((B, T, E))
    for b in range(B):
        out[b] = p["output/bias"]
        for n in range(N):
            Q = query[b] @ p["query/kernel"][:, n, :] + p["query/bias"][n]  # (T, K)
            Kh = key[b] @ p["key/kernel"][:, n, :] + p["key/bias"][n]  # (S, K)
            V = value[b] @ p["value/kernel"][:, n, :] + p["value/bias"][n]  # (S, K)
            s = Q @ Kh.T / np.sqrt(K)
            if mask is not None:
                m = mask[b] if mask.ndim == 3 else mask
                s = np.where(m, s, FILL)
            w = np.exp(s - s.max(axis=1, keepdims=True))
            w /= w.sum(axis=1, keepdims=True)
            out[b] += (w @ V) @ p["output/kernel"][n]  # (T, E)
    return out


@pytest.mark.gradcheck
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("B,T,E,N,K", [(3, 5, 6, 2, 4), (2, 4, 5, 1, 3), (1, 1, 4, 3, 2)])
def test_mha_self_attention_gradients(be64, rng, masked, B, T, E, N, K):
    mha = make_mha(be64, rng, E, N, K, seed=T)
    x = rng.standard_normal((B, T, E))
    R = rng.standard_normal((B, T, E))
    mask = None
    if masked:
        keep = np.ones((B, T), bool)
        keep[0, -1] = False  # right padding: a fully masked row (query and key padded)
        mask = combine_masks(causal_mask(T), padding_mask(keep, keep))
    # self-attention called as MHA(q=x, v=x, k=x): dx = d_query + d_value + d_key
    out, cache = mha.forward(x, x, x, mask)
    d, grads = mha.backward(cache, R)
    grads["x"] = d.d_query + d.d_value + d.d_key
    errs = check_attention_gradients(
        lambda: float((mha.forward(x, x, x, mask)[0] * R).sum()), {**mha.params, "x": x}, grads, mask=mask, keys=T
    )
    assert max(errs.values()) <= TOL, errs


@pytest.mark.gradcheck
@pytest.mark.parametrize("separate_key", [False, True])
@pytest.mark.parametrize("B,T,S,E,N,K", [(3, 4, 6, 5, 2, 3), (2, 6, 3, 4, 2, 7)])
def test_mha_cross_attention_gradients_with_causal_and_padding_masks(be64, rng, separate_key, B, T, S, E, N, K):
    mha = make_mha(be64, rng, E, N, K, seed=S)
    query = rng.standard_normal((B, T, E))
    value = rng.standard_normal((B, S, E))
    key = rng.standard_normal((B, S, E)) if separate_key else None
    R = rng.standard_normal((B, T, E))
    mask = masks_with_a_dead_row(T, S, B)
    _, grads = mha_loss_and_grads(mha, query, value, key, mask, R)
    params = {**mha.params, "query": query, "value": value}
    if separate_key:
        params["key"] = key
    errs = check_attention_gradients(
        lambda: mha_loss_and_grads(mha, query, value, key, mask, R)[0], params, grads, mask=mask, keys=S
    )
    assert set(errs) == set(grads) - {"key/bias"}
    assert max(errs.values()) <= TOL, errs


@pytest.mark.parametrize("separate_key", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_mha_forward_matches_the_per_head_formula(be64, rng, masked, separate_key):
    B, T, S, E, N, K = 3, 4, 5, 6, 2, 7  # K != E / N: heads are not slices of E
    mha = make_mha(be64, rng, E, N, K)
    query, value = rng.standard_normal((B, T, E)), rng.standard_normal((B, S, E))
    key = rng.standard_normal((B, S, E)) if separate_key else None
    mask = masks_with_a_dead_row(T, S, B) if masked else None
    out, _ = mha.forward(query, value, key, mask)
    np.testing.assert_allclose(out, reference_mha(mha, query, value, key, mask), rtol=0, atol=1e-12)
    if masked:  # a (T, S) mask broadcasts over the batch
        out2, _ = mha.forward(query, value, key, causal_mask(T, S))
        np.testing.assert_allclose(out2, reference_mha(mha, query, value, key, causal_mask(T, S)), atol=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_masked_keys_get_exactly_zero_weight_and_a_fully_masked_row_is_uniform(rng, dtype):
    be = get_backend("numpy", dtype)
    B, T, S, E, N, K = 2, 3, 4, 5, 2, 3
    mha = make_mha(be, rng, E, N, K)
    query = be.asarray(rng.standard_normal((B, T, E)) * 10)  # large scores: the fill must still win
    value = be.asarray(rng.standard_normal((B, S, E)))
    mask = np.ones((B, T, S), bool)
    mask[0, 1] = False  # row (0, 1): no key at all
    mask[1, 2, 1:] = False  # row (1, 2): only key 0
    out, cache = mha.forward(query, value, mask=mask)
    assert out.dtype == be.dtype and cache.p.dtype == be.dtype
    np.testing.assert_array_equal(cache.p[0, :, 1], np.full((N, S), 1 / S, dtype))  # uniform 1/S, as Keras
    assert (cache.p[1, :, 2, 1:] == 0).all() and (cache.p[1, :, 2, 0] == 1).all()  # exp underflows to 0
    # the uniform row's output is the projected mean of the values
    mean_v = cache.v[0].mean(axis=1)  # (N, K)
    expected = np.einsum("nk,nke->e", mean_v, mha.params["output/kernel"]) + mha.params["output/bias"]
    np.testing.assert_allclose(out[0, 1], expected, rtol=1e-5 if dtype == "float32" else 1e-12)


def test_mha_keras_layout_and_initialisation(be64):
    E, N, K = 64, 2, 3
    mha = be64.layer(MultiHeadAttention)(E, N, K, be64, Backend.rng(0))
    assert list(mha.params) == [
        "query/kernel",
        "query/bias",
        "key/kernel",
        "key/bias",
        "value/kernel",
        "value/bias",
        "output/kernel",
        "output/bias",
    ]
    limit = np.sqrt(6 / (E + N * K))  # Keras 3 MHA: fan_in E, fan_out N·K (and N·K, E for the output)
    for name in ("query", "key", "value"):
        W = mha.params[f"{name}/kernel"]
        assert W.shape == (E, N, K) and 0.9 * limit < np.abs(W).max() <= limit
        np.testing.assert_array_equal(mha.params[f"{name}/bias"], np.zeros((N, K)))
    Wo = mha.params["output/kernel"]
    assert Wo.shape == (N, K, E) and 0.9 * limit < np.abs(Wo).max() <= limit
    np.testing.assert_array_equal(mha.params["output/bias"], np.zeros(E))


def test_masks_combine_by_and():
    np.testing.assert_array_equal(causal_mask(3, 4), [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0]])
    q_keep = np.array([[True, True, False]])
    v_keep = np.array([[False, True, True, True]])
    pad = padding_mask(q_keep, v_keep)
    assert pad.shape == (1, 3, 4)
    np.testing.assert_array_equal(pad[0], [[0, 1, 1, 1], [0, 1, 1, 1], [0, 0, 0, 0]])
    both = combine_masks(causal_mask(3, 4), pad, None)
    np.testing.assert_array_equal(both[0], [[0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]])
    assert combine_masks(None, None) is None


def test_mha_rejects_bad_masks_and_shapes(be64):
    mha = be64.layer(MultiHeadAttention)(4, 2, 3, be64, Backend.rng(0))
    x = np.zeros((2, 3, 4))
    with pytest.raises(ModelError, match="mask"):
        mha.forward(x, x, mask=np.ones((2, 3, 4), bool))
    with pytest.raises(ModelError, match="mask"):
        mha.forward(x, x, mask=np.ones((2, 3, 3)))  # not bool
    with pytest.raises(ModelError, match="E = 4"):
        mha.forward(x, np.zeros((2, 3, 5)))


# -- LayerNormalization ----------------------------------------------------------


def test_layernorm_forward_is_keras(be64, rng):
    ln = be64.layer(LayerNormalization)(6, be64)
    assert ln.epsilon == 1e-3
    np.testing.assert_array_equal(ln.gamma, np.ones(6))
    np.testing.assert_array_equal(ln.beta, np.zeros(6))
    ln.gamma[:] = rng.standard_normal(6)
    ln.beta[:] = rng.standard_normal(6)
    x = rng.standard_normal((3, 4, 6)) * 0.05  # small variance: epsilon 1e-3 matters
    y, _ = ln.forward(x)
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)  # biased
    np.testing.assert_allclose(y, (x - mu) / np.sqrt(var + 1e-3) * ln.gamma + ln.beta, atol=1e-13)


@pytest.mark.gradcheck
@pytest.mark.parametrize("shape", [(3, 4, 6), (5, 1), (2, 7)])
def test_layernorm_gradients(be64, rng, shape):
    D = shape[-1]
    ln = be64.layer(LayerNormalization)(D, be64)
    ln.gamma[:] = rng.standard_normal(D)
    ln.beta[:] = rng.standard_normal(D)
    x = rng.standard_normal(shape) * rng.uniform(0.02, 3, shape[:-1] + (1,)) + rng.standard_normal(shape[:-1] + (1,))
    R = rng.standard_normal(shape)
    y, cache = ln.forward(x)
    dx, grads = ln.backward(cache, R)
    # one feature (D = 1): x − μ is 0, so y = β whatever x and γ are, and both gradients are zero in theory
    zero = {"gamma", "x"} if D == 1 else set()
    errs = check_gradients(
        lambda: float((ln.forward(x)[0] * R).sum()), {**ln.params, "x": x}, {**grads, "x": dx}, zero=zero
    )
    assert max(errs.values()) <= TOL, errs


def test_layernorm_float32_stays_float32(rng):
    be = get_backend("numpy", "float32")
    ln = be.layer(LayerNormalization)(5, be)
    x = be.asarray(rng.standard_normal((2, 3, 5)))
    y, cache = ln.forward(x)
    dx, grads = ln.backward(cache, be.asarray(rng.standard_normal((2, 3, 5))))
    assert y.dtype == dx.dtype == grads["gamma"].dtype == grads["beta"].dtype == np.float32


# -- FeedForward -----------------------------------------------------------------


@pytest.mark.gradcheck
def test_feedforward_gradients(be64, rng):
    B, T, E, F = 3, 4, 5, 7
    ffn = be64.layer(FeedForward)(E, F, be64, Backend.rng(0))
    assert list(ffn.params) == ["ffn_1/kernel", "ffn_1/bias", "ffn_2/kernel", "ffn_2/bias"]
    assert ffn.params["ffn_1/kernel"].shape == (E, F) and ffn.params["ffn_2/kernel"].shape == (F, E)
    ffn.params["ffn_1/bias"][:] = 0.1 * rng.standard_normal(F)
    ffn.params["ffn_2/bias"][:] = 0.1 * rng.standard_normal(E)
    x = rng.standard_normal((B, T, E))
    R = rng.standard_normal((B, T, E))
    y, cache = ffn.forward(x)
    W1, b1, W2, b2 = (ffn.params[k] for k in ("ffn_1/kernel", "ffn_1/bias", "ffn_2/kernel", "ffn_2/bias"))
    np.testing.assert_allclose(y, np.maximum(x @ W1 + b1, 0) @ W2 + b2, atol=1e-13)
    assert (cache.h == 0).any() and (cache.h > 0).any()  # both sides of the ReLU are exercised
    dx, grads = ffn.backward(cache, R)
    errs = check_gradients(lambda: float((ffn.forward(x)[0] * R).sum()), {**ffn.params, "x": x}, {**grads, "x": dx})
    assert max(errs.values()) <= TOL, errs


# -- PositionalEmbedding ---------------------------------------------------------


@pytest.mark.gradcheck
@pytest.mark.parametrize("T", [6, 3])
def test_positional_embedding_gradients(be64, rng, T):
    V, L, E, B = 7, 6, 4, 3
    pe = be64.layer(PositionalEmbedding)(V, L, E, be64, Backend.rng(0))
    assert pe.token_embeddings.shape == (V, E) and pe.position_embeddings.shape == (L, E)
    assert np.abs(pe.token_embeddings).max() <= 0.05 and np.abs(pe.position_embeddings).max() <= 0.05
    ids = rng.integers(0, V, (B, T))
    ids[0, :2] = 3  # repeated ids add up
    ids[1, -1] = 0  # padding
    y, cache = pe.forward(ids)
    np.testing.assert_array_equal(y, pe.token_embeddings[ids] + pe.position_embeddings[None, :T])
    R = rng.standard_normal((B, T, E))
    d_ids, grads = pe.backward(cache, R)
    assert d_ids is None
    np.testing.assert_array_equal(grads["position_embeddings"][T:], 0.0)
    errs = check_gradients(lambda: float((pe.forward(ids)[0] * R).sum()), pe.params, grads)
    assert max(errs.values()) <= TOL, errs


def test_positional_embedding_rejects_sequences_longer_than_its_table(be64):
    pe = be64.layer(PositionalEmbedding)(5, 4, 3, be64, Backend.rng(0))
    with pytest.raises(ModelError, match="sequence_length = 4"):
        pe.forward(np.zeros((2, 5), int))


# -- composed: a post-LN self-attention block --------------------------------------


@pytest.mark.gradcheck
def test_post_ln_block_gradients_sum_the_three_attention_inputs(be64, rng):
    """y = LN(x + MHA(q=x, v=x, k=x)): dx = dr + d_query + d_value + d_key with dr = LN's dx."""
    B, T, E, N, K = 3, 5, 6, 2, 4
    mha = make_mha(be64, rng, E, N, K)
    ln = be64.layer(LayerNormalization)(E, be64)
    ln.gamma[:] = rng.standard_normal(E)
    ln.beta[:] = rng.standard_normal(E)
    x = rng.standard_normal((B, T, E))
    R = rng.standard_normal((B, T, E))
    ids = rng.integers(1, 9, (B, T))
    ids[0, 3:] = 0  # right padding
    ids[1, :2] = 0  # left padding: rows with no key
    keep = ids != 0  # id 0 is padding
    mask = combine_masks(causal_mask(T), padding_mask(keep, keep))

    def forward(x):
        a, a_cache = mha.forward(x, x, mask=mask)  # key=None: key is value
        y, ln_cache = ln.forward(x + a)
        return y, a_cache, ln_cache

    y, a_cache, ln_cache = forward(x)
    dr, ln_grads = ln.backward(ln_cache, R)
    d, mha_grads = mha.backward(a_cache, dr)
    dx = dr + d.d_query + d.d_value + d.d_key
    params = {**{f"mha/{k}": v for k, v in mha.params.items()}, **{f"ln/{k}": v for k, v in ln.params.items()}, "x": x}
    grads = {**{f"mha/{k}": v for k, v in mha_grads.items()}, **{f"ln/{k}": v for k, v in ln_grads.items()}, "x": dx}
    errs = check_attention_gradients(lambda: float((forward(x)[0] * R).sum()), params, grads)
    assert max(errs.values()) <= TOL, errs
