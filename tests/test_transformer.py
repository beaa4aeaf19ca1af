"""TransformerLM: finite differences of every parameter (both blocks, padding, 1-2 layers), the padding
semantics of its loss, the KV-cache generation against full forward passes, checkpoints and training."""

import numpy as np
import pytest
from helpers.training import full_and_resumed

from scratchlm import get_backend, models, optim
from scratchlm.errors import ModelError
from scratchlm.gradcheck import check_model
from scratchlm.models import TransformerLM
from tests.helpers.models import spread

TOL = 1e-6


def make(block="book", num_layers=1, dtype="float64", **kw):
    """A small model whose biases, LayerNorm parameters and embeddings are all far from their initial values.

    Embeddings drawn N(0, 1) rather than U(-0.05, 0.05): the first LayerNorm of the gpt block normalises the
    embeddings themselves, and at σ ≈ 0.03 a finite-difference step of 1e-4 is no longer small (measured: the
    error then grows as h², 1e-5 at h = 1e-4, 1e-7 at h = 1e-5), which would test the step, not the gradient.
    """
    model = TransformerLM(
        13,
        8,
        embed_dim=6,
        dense_dim=7,
        num_heads=2,
        key_dim=3,
        num_layers=num_layers,
        block=block,
        dtype=dtype,
        seed=1,
        **kw,
    )
    return spread(model)


def batch(rng, B=3, T=6, V=13):
    x = rng.integers(1, V, (B, T))
    x[0, 4:] = 0  # right padding
    x[1, :2] = 0  # left padding
    return x, rng.integers(0, V, (B, T))


@pytest.mark.gradcheck
@pytest.mark.parametrize("block", ["book", "gpt"])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("last_only", [False, True])
def test_transformer_gradients(rng, block, num_layers, last_only):
    model = make(block, num_layers)
    x, y = batch(rng)
    # The key bias shifts every score of a row by the same amount: its gradient is exactly zero (round-off
    # on both sides), so its relative error means nothing; it is held to an absolute bound instead.
    zero = {name for name in model.params if name.endswith("key/bias")}
    errors = check_model(model, x, y[:, -1] if last_only else y, last_only=last_only, zero=zero)
    assert set(errors) == set(model.params)
    _, grads = model.loss_and_grads(x, y[:, -1] if last_only else y, last_only=last_only)
    scale = max(float(np.abs(g).max()) for g in grads.values())
    assert all(float(np.abs(grads[name]).max()) <= 1e-12 * scale for name in zero)
    assert max(errors.values()) <= TOL, errors


def test_parameter_names_and_shapes_are_the_keras_layouts():
    model = TransformerLM(50, 10, embed_dim=8, dense_dim=16, num_heads=2)
    shapes = {k: p.shape for k, p in model.params.items()}
    assert shapes["embedding/token_embeddings"] == (50, 8) and shapes["embedding/position_embeddings"] == (10, 8)
    assert shapes["decoder_0/attention_1/query/kernel"] == (8, 2, 8)  # key_dim = embed_dim (the seed)
    assert shapes["decoder_0/attention_2/output/kernel"] == (2, 8, 8)
    assert shapes["decoder_0/ffn_1/kernel"] == (8, 16) and shapes["decoder_0/layernorm_3/gamma"] == (8,)
    assert shapes["dense/kernel"] == (8, 50)
    assert list(TransformerLM.parameter_shapes(model.config)) == list(shapes.items())
    gpt = TransformerLM(50, 10, embed_dim=8, dense_dim=16, num_heads=2, key_dim=4, block="gpt", num_layers=2)
    assert "final_layernorm/gamma" in gpt.params and "decoder_1/attention_2/query/kernel" not in gpt.params
    assert list(TransformerLM.parameter_shapes(gpt.config)) == [(k, p.shape) for k, p in gpt.params.items()]
    assert models.describe(gpt.config) == repr(gpt)


def test_the_loss_is_the_mean_over_positions_whose_input_is_not_padding(rng):
    model = make()
    x, y = batch(rng)
    logits, _ = model.forward(x)
    z = logits - logits.max(axis=-1, keepdims=True)
    nll = np.log(np.exp(z).sum(axis=-1)) - np.take_along_axis(z, y[..., None], axis=-1)[..., 0]
    keep = x != 0
    assert model.loss(x, y) == pytest.approx(nll[keep].mean(), rel=1e-12)
    assert model.loss_and_grads(x, y)[0] == pytest.approx(nll[keep].mean(), rel=1e-12)


def test_padding_never_reaches_the_real_positions(rng):
    """Changing what sits in padded positions changes nothing at the real ones (masked as queries and keys)."""
    model = make()
    x, _ = batch(rng)
    a, _ = model.forward(x)
    b, _ = model.forward(np.where(x == 0, 0, x))
    shifted = x.copy()
    shifted[0, 5] = 0
    np.testing.assert_array_equal(a, b)
    c, _ = model.forward(shifted)
    np.testing.assert_allclose(c[0, :4], a[0, :4], rtol=0, atol=1e-12)


@pytest.mark.parametrize("block", ["book", "gpt"])
@pytest.mark.parametrize("dtype, tol", [("float32", 1e-5), ("float64", 1e-12)])
def test_cached_generation_equals_full_forward_passes_at_every_step(block, dtype, tol):
    """The KV cache gives the logits of a full forward pass over the text so far, also past sequence_length
    (where the model sees the last sequence_length tokens)."""
    model = make(block, 2, dtype=dtype)
    prompt = np.array([[3, 4, 5], [6, 0, 8]])
    loop = model.token_loop(model)  # the reference loop's steps
    logits, state = loop.start(model.backend.xp.asarray(prompt))
    ids = prompt
    for k in range(12):  # 3 + 12 > sequence_length 8
        full, _ = model.forward(ids[:, -model.sequence_length :])
        assert np.abs(logits - full[:, -1]).max() <= tol * max(1.0, float(np.abs(full).max())), k
        new = np.array([1 + k % 12, 2 + k % 11])
        logits, state = loop.step(new, state)
        ids = np.concatenate([ids, new[:, None]], axis=1)


def test_generate_samples_and_a_long_prompt_is_cut_to_the_window():
    model = make(dtype="float32")
    out = model.generate([3, 4, 5], 20, temperature=0.7, seed=1, banned_ids=[0])
    assert out.shape == (20,) and out.min() >= 1 and out.max() < 13
    np.testing.assert_array_equal(out, model.generate([3, 4, 5], 20, temperature=0.7, seed=1, banned_ids=[0]))
    long = model.generate(list(range(1, 13)) * 2, 5, temperature=0, seed=0)  # 24 > sequence_length
    assert long.shape == (5,)
    with pytest.raises(ModelError, match="sequence_length"):
        model.loss(np.ones((1, 9), dtype=int), np.ones((1, 9), dtype=int))


@pytest.mark.parametrize("block", ["book", "gpt"])
def test_checkpoint_round_trip_builds_the_right_class(tmp_path, block):
    model = TransformerLM(11, 6, embed_dim=4, dense_dim=5, num_heads=2, key_dim=3, block=block, seed=3)
    opt = optim.RMSprop()
    x = np.array([[1, 2, 3, 0], [4, 5, 6, 7]])
    opt.step(model.params, model.loss_and_grads(x, x)[1])
    model.save(tmp_path / "t.npz", optimizer=opt)
    loaded = models.load(tmp_path / "t.npz")
    assert type(loaded.model) is TransformerLM and loaded.model.config == model.config
    assert all(np.array_equal(loaded.model.params[k], p) for k, p in model.params.items())
    assert loaded.optimizer.iterations == 1


@pytest.mark.parametrize("kernels", ["reference", "fused"])
def test_trains_with_the_trainer_and_resumes_exactly(tmp_path, kernels):
    rng = np.random.default_rng(5)
    ids = rng.integers(1, 20, (24, 9)).astype(np.uint16)
    ids[::3, 6:] = 0

    def model():
        return TransformerLM(
            20,
            8,
            embed_dim=8,
            dense_dim=12,
            num_heads=2,
            key_dim=4,
            seed=0,
            backend=get_backend("numpy", kernels=kernels),
        )  # the resume must use it too

    full, resumed = full_and_resumed(tmp_path, model, lambda: optim.RMSprop(lr=0.01), ids, kernels)
    assert [e["loss"] for e in resumed.history] == [e["loss"] for e in full.history]
    assert all(np.array_equal(p, full.model.params[k]) for k, p in resumed.model.params.items())
    assert full.history[-1]["loss"] < full.history[0]["loss"]


def test_cli_trains_samples_describes_and_resumes_a_transformer(tmp_path, capsys):
    from pathlib import Path

    from scratchlm.cli import main

    reviews_dir = Path(__file__).resolve().parents[1] / "examples" / "data" / "reviews"
    run = tmp_path / "run"
    tiny = ["--embedding-dim", "8", "--dense-dim", "12", "--key-dim", "4", "--batch-size", "8", "--no-progress"]
    assert (
        main(
            [
                "train",
                str(reviews_dir),
                "--model",
                "transformer",
                "--run-dir",
                str(run),
                "--max-steps",
                "3",
                "--sample-length",
                "5",
                "--prime",
                "this movie",
                *tiny,
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "TransformerLM(PositionalEmbedding(" in out and "VectorTokenizer" in out
    assert main(["info", str(run)]) == 0
    assert "kind=vectorized" in capsys.readouterr().out
    assert main(["sample", str(run), "--prime", "this movie", "--length", "5"]) == 0
    assert capsys.readouterr().out.startswith("--- temperature 1\n this movie ")
    assert main(["train", "--resume", str(run), "--max-steps", "5", "--no-progress"]) == 0
    lines = tmp_path / "lines.txt"
    lines.write_text("a good film\n\nthe worst movie of the year\n" * 20)
    assert (
        main(
            [
                "train",
                str(lines),
                "--model",
                "transformer",
                "--run-dir",
                str(tmp_path / "r2"),
                "--max-steps",
                "2",
                "--sample-length",
                "0",
                "--seq-len",
                "12",
                *tiny,
            ]
        )
        == 0
    )
    for wrong, words in ((["--cell", "gru"], "--cell"), (["--batching", "windows"], "--batching windows")):
        assert main(["train", str(lines), "--model", "transformer", "--run-dir", str(tmp_path / "r3"), *wrong]) == 2
        assert words in capsys.readouterr().err
    assert main(["train", str(lines), "--heads", "3", "--run-dir", str(tmp_path / "r3")]) == 2
    assert "--model transformer" in capsys.readouterr().err and not (tmp_path / "r3").exists()


def test_a_tied_output_layer_moves_the_generator_as_its_kernels_draw_would():
    """TransformerLM(tie_embeddings=True) draws no (E, V) kernel but advances its generator by E·V steps: exactly
    where drawing glorot_uniform((E, V)) leaves it, so the draws after it (init="gpt2") are the untouched ones."""
    from scratchlm import Backend
    from scratchlm.initializers import glorot_uniform

    drawn, advanced = Backend.rng(3), Backend.rng(3)
    glorot_uniform((6, 13), drawn, get_backend("numpy", "float64"))
    advanced.bit_generator.advance(6 * 13)
    assert drawn.bit_generator.state == advanced.bit_generator.state
