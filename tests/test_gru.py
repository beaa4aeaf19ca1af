"""The GRU cell (Keras 3's reset_after=True layout): finite differences for the layer and the model, and its
behaviour as a LanguageModel cell (masks, carried state, generation, checkpoints, the CLI)."""

import numpy as np
import pytest
from conftest import random_mask

from scratchlm import LanguageModel, get_backend, models, optim
from scratchlm.backend import Backend
from scratchlm.cli import main
from scratchlm.gradcheck import check_gradients, check_model
from scratchlm.layers.gru import GRU

TOL = 1e-6


def gru_loss_and_grads(gru, x, R, Rh, h0, mask):
    """L = Σ R⊙y + Σ Rh⊙h_T for a dense-input GRU; analytic grads of everything."""
    y, cache = gru.forward(x, (h0,), mask)
    (hT,) = cache.final_state
    d, grads = gru.backward(cache, R, (Rh,))
    (dh0,) = d.dstate
    return float((y * R).sum() + (hT * Rh).sum()), {**grads, "x": d.dx, "h0": dh0}


def test_gru_keras_layout_and_initialisation():
    gru = GRU(7, 16, get_backend("numpy", "float64"), Backend.rng(0))
    assert gru.kernel.shape == (7, 48) and gru.recurrent_kernel.shape == (16, 48) and gru.bias.shape == (2, 48)
    np.testing.assert_array_equal(gru.bias, 0.0)
    assert np.abs(gru.kernel).max() <= np.sqrt(6 / (7 + 48))
    np.testing.assert_allclose(gru.recurrent_kernel @ gru.recurrent_kernel.T, np.eye(16), atol=1e-12)


def test_gru_step_is_the_keras_equation(be64, rng):
    """One step against the equations written out: z, r, h̃ with the reset after the recurrent product."""
    D, H, B = 3, 4, 2
    gru = be64.layer(GRU)(D, H, be64, Backend.rng(2))
    gru.bias[:] = rng.standard_normal(gru.bias.shape)
    x, h0 = rng.standard_normal((1, B, D)), rng.standard_normal((B, H))
    xh = x[0] @ gru.kernel + gru.bias[0]
    uh = h0 @ gru.recurrent_kernel + gru.bias[1]
    sig = lambda a: 1 / (1 + np.exp(-a))  # noqa: E731
    z, r = sig(xh[:, :H] + uh[:, :H]), sig(xh[:, H : 2 * H] + uh[:, H : 2 * H])
    h_tilde = np.tanh(xh[:, 2 * H :] + r * uh[:, 2 * H :])
    (h1,) = gru.forward(x, (h0,))[1].final_state
    np.testing.assert_allclose(h1, z * h0 + (1 - z) * h_tilde, atol=1e-12)


@pytest.mark.gradcheck
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("return_sequences", [True, False])
@pytest.mark.parametrize("T,B,D,H", [(5, 3, 4, 6), (1, 1, 2, 3), (4, 2, 3, 1)])
def test_gru_gradients_with_initial_state(be64, rng, masked, return_sequences, T, B, D, H):
    gru = be64.layer(GRU)(D, H, be64, Backend.rng(T + B), return_sequences=return_sequences)
    gru.bias[:] = rng.standard_normal(gru.bias.shape)  # make every gate matter
    x, h0 = rng.standard_normal((T, B, D)), rng.standard_normal((B, H))
    R = rng.standard_normal((T, B, H) if return_sequences else (B, H))
    Rh = rng.standard_normal((B, H))
    mask = random_mask(rng, B, T).T if masked else None
    _, grads = gru_loss_and_grads(gru, x, R, Rh, h0, mask)
    params = {**gru.params, "x": x, "h0": h0}
    # every step masked (T = 1): the state passes through untouched, so only the initial state has a gradient
    zero = {"kernel", "recurrent_kernel", "bias", "x"} if mask is not None and not mask.any() else set()
    errs = check_gradients(lambda: gru_loss_and_grads(gru, x, R, Rh, h0, mask)[0], params, grads, zero=zero)
    assert max(errs.values()) <= TOL, errs


def test_masked_gru_step_keeps_state_and_repeats_output(be64, rng):
    gru = be64.layer(GRU)(2, 4, be64, Backend.rng(0))
    x, h0 = rng.standard_normal((5, 3, 2)), rng.standard_normal((3, 4))
    mask = np.ones((5, 3), bool)
    mask[3, 0] = mask[:2, 1] = False
    y, cache = gru.forward(x, (h0,), mask)
    np.testing.assert_array_equal(y[3, 0], y[2, 0])
    np.testing.assert_array_equal(cache.steps.hs[4, 0], cache.steps.hs[3, 0])
    np.testing.assert_array_equal(y[:2, 1], 0.0)


def make(V=7, embedding_dim=None, hidden_sizes=(5,), **kw):
    model = LanguageModel(
        V, embedding_dim=embedding_dim, hidden_sizes=hidden_sizes, dtype="float64", seed=11, cell="gru", **kw
    )
    rng = np.random.default_rng(3)
    for gru in model.recurrent:
        gru.bias[:] = rng.standard_normal(gru.bias.shape)
    return model


@pytest.mark.gradcheck
@pytest.mark.parametrize(
    "inp",
    [dict(V=7, embedding_dim=None), dict(V=7, embedding_dim=4), dict(V=23, embedding_dim=4)],
    ids=["one-hot", "embedding-table", "embedding-direct"],
)
@pytest.mark.parametrize("hidden_sizes", [(5,), (5, 6)])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("last_only", [False, True])
def test_gru_model_gradients(rng, inp, hidden_sizes, masked, last_only):
    model = make(hidden_sizes=hidden_sizes, **inp)
    B, T, V = 3, 5, model.vocab_size
    x = rng.integers(0, V, (B, T))
    y = rng.integers(0, V, (B,) if last_only else (B, T))
    mask = random_mask(rng, B, T) if masked else None
    errors = check_model(model, x, y, mask=mask, last_only=last_only)
    assert set(errors) == set(model.params) and all(k.startswith(("gru_", "embedding", "dense")) for k in errors)
    assert max(errors.values()) <= TOL, errors


def test_stateful_gru_carries_its_state(rng):
    full = make(hidden_sizes=(5, 4), embedding_dim=3)
    chunked = make(hidden_sizes=(5, 4), embedding_dim=3, stateful=True)
    x = rng.integers(0, 7, (2, 8))
    want, _ = full.forward(x)
    a, _ = chunked.forward(x[:, :5])
    b, _ = chunked.forward(x[:, 5:])
    np.testing.assert_allclose(np.concatenate([a, b], axis=1), want, atol=1e-12)
    assert [len(s) for s in chunked.get_state()] == [1, 1] and chunked.state_shapes(2) == [((2, 5),), ((2, 4),)]


@pytest.mark.parametrize("kernels", ["reference", "fused"])
def test_gru_generates_and_round_trips_a_checkpoint(tmp_path, kernels):
    model = LanguageModel(11, 4, [6, 5], cell="gru", backend=get_backend("numpy", kernels=kernels), seed=2)
    ids = model.generate([1, 2, 3], 20, temperature=0.7, seed=5, eos_id=None)
    assert ids.shape == (20,) and ids.min() >= 0 and ids.max() < 11
    np.testing.assert_array_equal(
        model.generate([1, 2, 3], 20, temperature=0, seed=5), model.generate([1, 2, 3], 20, temperature=0, seed=9)
    )
    opt = optim.Adam()
    opt.step(model.params, model.loss_and_grads(np.array([[1, 2, 3]]), np.array([[2, 3, 4]]))[1])
    model.save(tmp_path / "gru.npz", optimizer=opt)
    loaded = models.load(tmp_path / "gru.npz")
    assert loaded.model.config == model.config and loaded.model.config["cell"] == "gru"
    assert all(np.array_equal(loaded.model.params[k], p) for k, p in model.params.items())
    np.testing.assert_array_equal(
        loaded.model.generate([1, 2, 3], 20, temperature=0.7, seed=5),
        model.generate([1, 2, 3], 20, temperature=0.7, seed=5),
    )


def test_cli_trains_samples_and_describes_a_gru(tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 40)
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                str(corpus),
                "--cell",
                "gru",
                "--run-dir",
                str(run),
                "--max-steps",
                "4",
                "--hidden",
                "8",
                "--embedding-dim",
                "4",
                "--batch-size",
                "4",
                "--seq-len",
                "16",
                "--sample-length",
                "0",
                "--no-progress",
            ]
        )
        == 0
    )
    assert "GRU[8]" in capsys.readouterr().out
    assert main(["sample", str(run), "--prime", "the ", "--length", "10"]) == 0
    assert main(["info", str(run)]) == 0
    assert "GRU[8]" in capsys.readouterr().out
    assert main(["train", "--resume", str(run), "--max-steps", "6", "--no-progress"]) == 0
