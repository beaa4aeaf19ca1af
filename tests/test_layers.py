"""Finite-difference checks of every layer on its own (float64, central differences).

Layers are built as models build them, through ``backend.layer``: the ``be64`` fixture takes the default
kernels (fused where Numba is installed), and ``SCRATCHLM_KERNELS=reference`` runs the same checks on the
reference classes themselves.
"""

import numpy as np
import pytest
from conftest import random_mask

from scratchlm import get_backend
from scratchlm.backend import Backend
from scratchlm.gradcheck import check_gradients
from scratchlm.kernels import FUSED
from scratchlm.layers import (
    GRU,
    LSTM,
    BookDecoderBlock,
    Dense,
    Dropout,
    Embedding,
    FeedForward,
    GPTDecoderBlock,
    Layer,
    LayerNormalization,
    MultiHeadAttention,
    PositionalEmbedding,
)

TOL = 1e-6

# (class, the sizes its constructor and param_shapes take, whether the constructor draws from an rng)
CONTRACT = [
    (Embedding, (7, 3), True),
    (PositionalEmbedding, (7, 5, 3), True),
    (Dense, (4, 5), True),
    (LSTM, (4, 3), True),
    (GRU, (4, 3), True),
    (MultiHeadAttention, (6, 2, 3), True),
    (LayerNormalization, (6,), False),
    (FeedForward, (6, 5), True),
    (BookDecoderBlock, (6, 5, 2, 3), True),
    (GPTDecoderBlock, (6, 5, 2, 3), True),
    (Dropout, (), False),
]


@pytest.mark.parametrize("kernels", ["reference", "fused"])
@pytest.mark.parametrize("cls, sizes, draws", CONTRACT, ids=[c[0].__name__ for c in CONTRACT])
def test_every_layer_keeps_the_contract_and_derives_its_shapes(cls, sizes, draws, kernels):
    """Every layer is a Layer, built as its own class on the reference path (as its registered fused subclass,
    if it has one, on the fused path), and its class method param_shapes names the arrays of params, with
    their shapes, in their order."""
    be = get_backend("numpy", "float64", kernels)
    built = be.layer(cls)
    layer = built(*sizes, be, Backend.rng(0)) if draws else built(*sizes or (0.5,), be)
    assert isinstance(layer, Layer) and isinstance(layer, cls)
    assert built is (FUSED.get(cls, cls) if kernels == "fused" else cls)
    assert [(name, p.shape) for name, p in layer.params.items()] == list(cls.param_shapes(*sizes).items())


@pytest.mark.gradcheck
def test_embedding_forward_is_a_gather_and_backward_a_scatter_add(be64, rng):
    emb = be64.layer(Embedding)(6, 3, be64, Backend.rng(0))
    ids = rng.integers(0, 6, (4, 5))
    y, cache = emb.forward(ids)
    np.testing.assert_array_equal(y, emb.embeddings[ids])
    R = rng.standard_normal((4, 5, 3))
    d_ids, grads = emb.backward(cache, R)
    assert d_ids is None
    errs = check_gradients(lambda: float((emb.forward(ids)[0] * R).sum()), emb.params, grads)
    assert errs["embeddings"] <= TOL


@pytest.mark.gradcheck
def test_dense_gradients(be64, rng):
    dense = be64.layer(Dense)(4, 5, be64, Backend.rng(0))
    x = rng.standard_normal((3, 2, 4))
    R = rng.standard_normal((3, 2, 5))
    _, cache = dense.forward(x)
    dx, grads = dense.backward(cache, R)

    def loss():
        return float((dense.forward(x)[0] * R).sum())

    errs = check_gradients(loss, {**dense.params, "x": x}, {**grads, "x": dx})
    assert max(errs.values()) <= TOL


def test_lstm_keras_initialisation(rng):
    from scratchlm import get_backend

    be = get_backend("numpy", "float64")
    lstm = LSTM(7, 16, be, Backend.rng(0))
    H = 16
    assert lstm.kernel.shape == (7, 4 * H) and lstm.recurrent_kernel.shape == (H, 4 * H)
    np.testing.assert_array_equal(lstm.bias, np.r_[np.zeros(H), np.ones(H), np.zeros(2 * H)])
    limit = np.sqrt(6 / (7 + 4 * H))
    assert np.abs(lstm.kernel).max() <= limit
    U = lstm.recurrent_kernel  # orthonormal rows
    np.testing.assert_allclose(U @ U.T, np.eye(H), atol=1e-12)


def lstm_loss_and_grads(lstm, x, R, Rh, Rc, h0, c0, mask):
    """L = Σ R⊙y + Σ Rh⊙h_T + Σ Rc⊙c_T for a dense-input LSTM; analytic grads of everything."""
    y, cache = lstm.forward(x, (h0, c0), mask)
    hT, cT = cache.final_state
    loss = float((y * R).sum() + (hT * Rh).sum() + (cT * Rc).sum())
    d, grads = lstm.backward(cache, R, (Rh, Rc))
    assert d.dembeddings is None
    dh0, dc0 = d.dstate
    return loss, {**grads, "x": d.dx, "h0": dh0, "c0": dc0}


@pytest.mark.gradcheck
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("return_sequences", [True, False])
@pytest.mark.parametrize("T,B,D,H", [(5, 3, 4, 6), (1, 1, 2, 3), (4, 2, 3, 1)])
def test_lstm_gradients_with_initial_state(be64, rng, masked, return_sequences, T, B, D, H):
    lstm = be64.layer(LSTM)(D, H, be64, Backend.rng(T + B), return_sequences=return_sequences)
    lstm.bias[:] = rng.standard_normal(4 * H)  # make every gate matter
    x = rng.standard_normal((T, B, D))
    h0, c0 = rng.standard_normal((B, H)), rng.standard_normal((B, H))
    R = rng.standard_normal((T, B, H) if return_sequences else (B, H))
    Rh, Rc = rng.standard_normal((B, H)), rng.standard_normal((B, H))
    mask = random_mask(rng, B, T).T if masked else None
    _, grads = lstm_loss_and_grads(lstm, x, R, Rh, Rc, h0, c0, mask)
    params = {**lstm.params, "x": x, "h0": h0, "c0": c0}
    # every step masked (T = 1): the state passes through untouched, so only the initial state has a gradient
    zero = {"kernel", "recurrent_kernel", "bias", "x"} if mask is not None and not mask.any() else set()
    errs = check_gradients(lambda: lstm_loss_and_grads(lstm, x, R, Rh, Rc, h0, c0, mask)[0], params, grads, zero=zero)
    assert max(errs.values()) <= TOL, errs


@pytest.mark.gradcheck
@pytest.mark.parametrize("embedding_dim", [None, 3])
def test_lstm_token_projection_gradients(be64, rng, embedding_dim):
    V, T, B, H = 5, 4, 3, 4
    lstm = be64.layer(LSTM)(embedding_dim or V, H, be64, Backend.rng(1))
    E = None if embedding_dim is None else rng.standard_normal((V, embedding_dim))
    ids = rng.integers(0, V, (T, B))
    R = rng.standard_normal((T, B, 4 * H))
    zx = lstm.project_tokens(ids, E)
    if E is None:  # one-hot x_t: x_t W is row ids[t] of W
        onehot = np.eye(V)[ids]
        np.testing.assert_allclose(zx, onehot @ lstm.kernel + lstm.bias, atol=1e-12)
    else:
        np.testing.assert_allclose(zx, E[ids] @ lstm.kernel + lstm.bias, atol=1e-12)
    dE, grads = lstm.project_tokens_backward(ids, R, E)
    params = {"kernel": lstm.kernel, "bias": lstm.bias}
    if E is not None:
        params["E"], grads["E"] = E, dE
    errs = check_gradients(lambda: float((lstm.project_tokens(ids, E) * R).sum()), params, grads)
    assert max(errs.values()) <= TOL, errs


def test_masked_step_keeps_state_and_repeats_output(be64, rng):
    T, B, D, H = 5, 3, 2, 4
    lstm = be64.layer(LSTM)(D, H, be64, Backend.rng(0))
    x = rng.standard_normal((T, B, D))
    h0, c0 = rng.standard_normal((B, H)), rng.standard_normal((B, H))
    mask = np.ones((T, B), bool)
    mask[:2, 1] = False  # leading padding in sequence 1
    mask[3, 0] = False  # a hole in sequence 0
    y, cache = lstm.forward(x, (h0, c0), mask)
    hT, cT = cache.final_state
    hs, cs = cache.steps.hs, cache.steps.cs
    np.testing.assert_array_equal(y[3, 0], y[2, 0])  # repeats the previous output
    np.testing.assert_array_equal(hs[4, 0], hs[3, 0])
    np.testing.assert_array_equal(cs[4, 0], cs[3, 0])
    np.testing.assert_array_equal(y[:2, 1], 0.0)  # zeros before the first real step
    np.testing.assert_array_equal(hs[2, 1], h0[1])  # ... while the state stays h0
    # a fully unmasked run of the remaining steps of sequence 1 gives the same final state
    h1, c1 = lstm.forward(x[2:, 1:2], (h0[1:2], c0[1:2]))[1].final_state
    np.testing.assert_allclose(hT[1], h1[0], atol=1e-12)
    np.testing.assert_allclose(cT[1], c1[0], atol=1e-12)


def test_stateful_layer_carries_state_between_calls(be64, rng):
    T, B, D, H = 6, 2, 3, 4
    full = be64.layer(LSTM)(D, H, be64, Backend.rng(5))
    chunked = be64.layer(LSTM)(D, H, be64, Backend.rng(5), stateful=True)
    x = rng.standard_normal((T, B, D))
    y_full, cache_full = full.forward(x)
    y_a, _ = chunked.forward(x[:4])
    y_b, cache_b = chunked.forward(x[4:])
    np.testing.assert_allclose(np.concatenate([y_a, y_b]), y_full, atol=1e-12)
    np.testing.assert_allclose(cache_b.final_state[0], cache_full.final_state[0], atol=1e-12)
    chunked.reset_state()
    y_again, _ = chunked.forward(x[:4])
    np.testing.assert_allclose(y_again, y_a, atol=1e-12)


def test_bad_initial_state_shape(be64):
    lstm = be64.layer(LSTM)(2, 3, be64, Backend.rng(0))
    with pytest.raises(ValueError, match="initial state"):
        lstm.forward(np.zeros((2, 4, 2)), (np.zeros((4, 2)), np.zeros((4, 3))))
