"""The GPT-2 options of TransformerLM: activation, layernorm_epsilon, tie_embeddings, use_bias, init, dropout.

Each option's gradient is checked by central differences in float64 (alone and all together in a 2-layer model),
the fused path against the reference, checkpoints keep the options and files written before them still load
as the seed's model, and dropout is seeded, off outside training and resumed exactly.
"""

import json
import math

import numpy as np
import pytest
from helpers.training import full_and_resumed

from scratchlm import get_backend, models, optim
from scratchlm.errors import ModelError
from scratchlm.gradcheck import check_gradients, check_model
from scratchlm.layers import FeedForward
from scratchlm.layers.activations import ACTIVATIONS, erf, gelu, gelu_backward, gelu_tanh
from scratchlm.models import TransformerLM
from tests.helpers.models import spread

TOL = 1e-6
GPT = dict(activation="gelu", layernorm_epsilon=1e-5, tie_embeddings=True, init="gpt2")
OPTIONS = {
    "relu": dict(activation="relu"),
    "gelu": dict(activation="gelu"),
    "gelu_tanh": dict(activation="gelu_tanh"),
    "epsilon": dict(layernorm_epsilon=1e-5),
    "tied": dict(tie_embeddings=True),
    "no_bias": dict(use_bias=False),
    "gpt2_init": dict(init="gpt2"),
    "dropout": dict(dropout=0.3),
    "all": dict(GPT, use_bias=False, dropout=0.3),
    "all_gelu_tanh": dict(GPT, activation="gelu_tanh", dropout=0.2),
}


def make(num_layers=2, dtype="float64", kernels=None, **options):
    """A small gpt-block model whose biases, LayerNorm parameters and embeddings are far from their initial
    values (see tests/test_transformer.py's ``make``: LayerNorm over tiny embeddings makes h = 1e-4 too big)."""
    backend = get_backend("numpy", dtype, kernels=kernels)
    model = TransformerLM(
        13, 8, embed_dim=6, dense_dim=7, num_heads=2, key_dim=3, num_layers=num_layers, block="gpt", seed=1,
        backend=backend, dtype=dtype, **options,
    )  # fmt: skip
    return spread(model)


def batch(rng, B=3, T=6, V=13):
    x = rng.integers(1, V, (B, T))
    x[0, 4:] = 0  # right padding
    x[1, :2] = 0  # left padding
    return x, rng.integers(0, V, (B, T))


# -- the activations ---------------------------------------------------------------------------------------


def test_erf_is_math_erf_and_the_gelus_are_their_formulas():
    z = np.concatenate([np.linspace(-9, 9, 2001), [-40.0, -1e-300, 0.0, 1e-300, 40.0]])
    want = np.array([math.erf(v) for v in z])
    assert np.max(np.abs(erf(z) - want)) <= 1e-12
    assert erf(z.astype(np.float32)).dtype == np.float32
    exact = [0.5 * v * (1 + math.erf(v * (1 / math.sqrt(2)))) for v in z]
    assert np.allclose(gelu(z), exact, rtol=1e-15, atol=1e-300)
    c = math.sqrt(2 / math.pi)
    tanh_form = [0.5 * v * (1 + math.tanh(c * (v + 0.044715 * v * v * v))) for v in z]
    assert np.allclose(gelu_tanh(z), tanh_form, rtol=1e-14, atol=1e-15)  # 1 + tanh cancels for z << 0
    # x·Φ(x) with Φ(−1) = 0.15865525393145707, Φ(0.5) = 0.6914624612740131, Φ(2) = 0.9772498680518208
    want = [-0.15865525393145707, 0.5 * 0.6914624612740131, 2 * 0.9772498680518208]
    assert gelu(np.array([-1.0, 0.5, 2.0])) == pytest.approx(want, rel=1e-15)


def test_gelu_backward_reads_phi_back_from_the_output_to_float64_accuracy():
    z = np.concatenate([np.linspace(-10, 10, 20001), [-1e-300, 0.0, 1e-300]])
    want = [0.5 * (1 + math.erf(v / math.sqrt(2))) + v * math.exp(-v * v / 2) / math.sqrt(2 * math.pi) for v in z]
    assert np.max(np.abs(gelu_backward(z, gelu(z), np.ones_like(z)) - want)) <= 1e-15
    z32 = z.astype(np.float32)
    assert gelu_backward(z32, gelu(z32), np.ones_like(z32)).dtype == np.float32


@pytest.mark.gradcheck
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_each_activation_backward_is_its_derivative(activation):
    forward, backward = ACTIVATIONS[activation]
    rng = np.random.default_rng(3)
    z = rng.standard_normal(40) * 2
    z = z[np.abs(z) > 1e-3]  # ReLU's kink stays out of reach of the step
    dh = rng.standard_normal(z.shape)
    errors = check_gradients(lambda: float((forward(z) * dh).sum()), {"z": z}, {"z": backward(z, forward(z), dh)})
    assert errors["z"] <= 1e-9, errors


@pytest.mark.gradcheck
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("use_bias", [True, False])
def test_feed_forward_gradients(activation, use_bias):
    backend = get_backend("numpy", "float64", kernels="reference")
    rng = np.random.default_rng(4)
    ffn = FeedForward(5, 7, backend, rng, activation, use_bias)
    x = rng.standard_normal((3, 4, 5))
    dy = rng.standard_normal((3, 4, 5))
    y, cache = ffn.forward(x)
    dx, grads = ffn.backward(cache, dy)
    params = {**ffn.params, "x": x}
    errors = check_gradients(lambda: float((ffn.forward(x)[0] * dy).sum()), params, {**grads, "x": dx})
    assert max(errors.values()) <= 1e-8, errors
    assert ("ffn_1/bias" in ffn.params) == use_bias


def test_an_unknown_activation_is_refused():
    with pytest.raises(ModelError, match="activation must be"):
        TransformerLM(13, 8, block="gpt", activation="swish")


# -- the whole model -----------------------------------------------------------------------------------------


@pytest.mark.gradcheck
@pytest.mark.parametrize("option", sorted(set(OPTIONS) - {"gpt2_init"}))
def test_every_option_and_their_combination_has_the_right_gradients(rng, option):
    """init="gpt2" alone changes no gradient, and its N(0, 0.02) query and key kernels give their own gradients
    of ~1e-7, below what a difference quotient resolves (round-off ε·L/h ≈ 3e-12): it is checked in "all",
    whose embeddings (drawn N(0, 1) here, and tied) make the scores large enough."""
    model = make(kernels="reference", **OPTIONS[option])
    x, y = batch(rng)
    masks = model.dropout_masks(*x.shape)
    assert (masks is None) == (model.dropout.rate == 0)
    zero = {name for name in model.params if name.endswith("key/bias")}
    errors = check_model(model, x, y, zero=zero, dropout_masks=masks)
    assert set(errors) == set(model.params)
    assert max(errors.values()) <= TOL, errors


@pytest.mark.gradcheck
def test_the_book_block_takes_the_same_options_but_dropout(rng):
    options = dict(GPT, use_bias=False)
    model = TransformerLM(13, 8, embed_dim=6, dense_dim=7, num_heads=2, key_dim=3, num_layers=2, block="book",
                          seed=1, dtype="float64", **options)  # fmt: skip
    for name, p in model.params.items():
        if name.endswith("embeddings"):
            p[...] = rng.standard_normal(p.shape)
        elif name.endswith("gamma"):
            p[...] = 1 + 0.3 * rng.standard_normal(p.shape)
    assert not any(name.endswith(("bias", "beta")) for name in model.params)
    x, y = batch(rng)
    errors = check_model(model, x, y)
    assert max(errors.values()) <= TOL, errors


@pytest.mark.parametrize("option", ["gelu", "gelu_tanh", "tied", "no_bias", "dropout", "all", "all_gelu_tanh"])
@pytest.mark.parametrize("dtype, tol", [("float64", 1e-10), ("float32", 1e-4)])
def test_the_fused_path_computes_the_reference_numbers(rng, option, dtype, tol):
    ref = make(kernels="reference", dtype=dtype, **OPTIONS[option])
    fused = make(kernels="fused", dtype=dtype, **OPTIONS[option])
    assert type(fused.blocks[0]) is not type(ref.blocks[0])  # the fused subclasses
    x, y = batch(rng)
    masks = ref.dropout_masks(*x.shape)
    loss_r, g_r = ref.loss_and_grads(x, y, dropout_masks=masks)
    loss_f, g_f = fused.loss_and_grads(x, y, dropout_masks=masks)
    assert loss_f == pytest.approx(loss_r, rel=tol)
    assert list(g_f) == list(g_r)
    scale = max(float(np.abs(g).max()) for g in g_r.values())
    for name in g_r:
        assert np.max(np.abs(g_f[name] - g_r[name])) <= tol * scale, name
    assert np.max(np.abs(fused.forward(x)[0] - ref.forward(x)[0])) <= tol * np.abs(ref.forward(x)[0]).max()
    prompt = x[:, :3]
    assert np.array_equal(fused.generate(prompt, 4, temperature=0), ref.generate(prompt, 4, temperature=0))


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_the_fused_book_block_with_the_options_computes_the_reference_numbers(rng, activation):
    options = dict(GPT, activation=activation, use_bias=False)
    ref, fused = (
        TransformerLM(
            13,
            8,
            embed_dim=6,
            dense_dim=7,
            num_heads=2,
            key_dim=3,
            num_layers=2,
            seed=1,
            dtype="float64",
            backend=get_backend("numpy", "float64", kernels=kernels),
            **options,
        )  # fmt: skip
        for kernels in ("reference", "fused")
    )
    x, y = batch(rng)
    loss_r, g_r = ref.loss_and_grads(x, y)
    loss_f, g_f = fused.loss_and_grads(x, y)
    assert loss_f == pytest.approx(loss_r, rel=1e-10)
    scale = max(float(np.abs(g).max()) for g in g_r.values())
    assert all(np.max(np.abs(g_f[name] - g_r[name])) <= 1e-10 * scale for name in g_r)
    prompt = x[:, :3]
    assert np.array_equal(fused.generate(prompt, 4, temperature=0), ref.generate(prompt, 4, temperature=0))


def test_tied_embeddings_share_one_table_and_sum_its_two_gradients(rng):
    tied = make(kernels="reference", tie_embeddings=True, use_bias=False)
    untied = make(kernels="reference", use_bias=False)
    assert "dense/kernel" not in tied.params and "dense/bias" not in tied.params
    assert "dense/bias" not in untied.params
    untied.set_params({**tied.params, "dense/kernel": tied.params["embedding/token_embeddings"].T})
    x, y = batch(rng)
    loss_t, g_t = tied.loss_and_grads(x, y)
    loss_u, g_u = untied.loss_and_grads(x, y)
    assert loss_t == loss_u
    summed = g_u["embedding/token_embeddings"] + g_u["dense/kernel"].T
    assert np.allclose(g_t["embedding/token_embeddings"], summed, rtol=1e-13, atol=1e-15)
    optim.Adam(lr=0.1).step(tied.params, g_t)  # an update of the table is an update of the projection
    assert np.shares_memory(tied.dense.kernel, tied.embedding.token_embeddings)
    assert np.array_equal(tied.dense.kernel, tied.embedding.token_embeddings.T)


def test_gpt2_init_is_seeded_and_scales_the_residual_projections():
    def model(seed):
        return TransformerLM(50, 64, embed_dim=64, dense_dim=256, num_heads=4, key_dim=16, num_layers=3,
                             block="gpt", init="gpt2", seed=seed, dtype="float64")  # fmt: skip

    a, b, c = model(3), model(3), model(4)
    assert all(np.array_equal(p, b.params[k]) for k, p in a.params.items())
    assert not np.array_equal(a.params["decoder_0/ffn_1/kernel"], c.params["decoder_0/ffn_1/kernel"])
    residual = 0.02 / math.sqrt(2 * 3)
    for name, p in a.params.items():
        if name.endswith(("bias", "beta")):
            assert not p.any(), name
        elif name.endswith("gamma"):
            assert (p == 1).all(), name
        else:
            std = residual if name.endswith(("output/kernel", "ffn_2/kernel")) else 0.02
            assert abs(p.mean()) < 4 * std / math.sqrt(p.size), name
            assert p.std() == pytest.approx(std, rel=0.1), name


def test_dropout_is_seeded_off_outside_training_and_only_in_the_gpt_block(rng):
    x, y = batch(rng)
    a, b = make(dropout=0.3), make(dropout=0.3)
    plain = make()
    assert a.loss(x, y) == plain.loss(x, y)  # evaluation: no dropout
    assert np.array_equal(a.forward(x)[0], plain.forward(x)[0])
    assert np.array_equal(a.generate(x[:, :3], 4, seed=0), plain.generate(x[:, :3], 4, seed=0))
    first = a.loss_and_grads(x, y, training=True)[0]
    assert first == b.loss_and_grads(x, y, training=True)[0]  # the same masks from the same seed
    assert first != plain.loss(x, y)
    assert a.loss_and_grads(x, y, training=True)[0] != first  # fresh masks every step
    masks = a.dropout_masks(3, 6)
    assert masks.embedding.shape == (3, 6, 6) and masks.blocks[0].attention.shape == (3, 2, 6, 6)
    with pytest.raises(ModelError, match="gpt block"):
        TransformerLM(13, 8, dropout=0.1)


# -- checkpoints ---------------------------------------------------------------------------------------------


def test_checkpoints_keep_the_options_and_old_files_load_as_the_seed_model(tmp_path, rng):
    model = make(**OPTIONS["all"])
    model.save(tmp_path / "gpt.npz")
    loaded = models.load(tmp_path / "gpt.npz").model
    assert loaded.config == model.config
    assert all(np.array_equal(p, model.params[k]) for k, p in loaded.params.items())
    assert np.shares_memory(loaded.dense.kernel, loaded.embedding.token_embeddings)
    x, y = batch(rng)
    assert loaded.loss(x, y) == model.loss(x, y)

    old = make(num_layers=1)
    old.save(tmp_path / "old.npz")
    with np.load(tmp_path / "old.npz") as f:
        arrays = {k: f[k] for k in f.files}
    header = json.loads(arrays.pop("header.json").tobytes())
    for name in TransformerLM.CONFIG_DEFAULTS:
        del header["model"][name]  # a file written before the options existed
    arrays["header.json"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    np.savez(tmp_path / "before.npz", **arrays)
    back = models.load(tmp_path / "before.npz").model
    assert back.config == old.config
    assert back.config["activation"] == "relu" and back.config["layernorm_epsilon"] == 1e-3
    assert back.loss(x, y) == old.loss(x, y)


@pytest.mark.parametrize("kernels", ["reference", "fused"])
def test_a_run_with_dropout_resumes_exactly(tmp_path, kernels):
    rng = np.random.default_rng(5)
    ids = rng.integers(1, 20, (24, 9)).astype(np.uint16)

    def model():
        return TransformerLM(20, 8, embed_dim=8, dense_dim=12, num_heads=2, key_dim=4, block="gpt", seed=0,
                             backend=get_backend("numpy", kernels=kernels), **dict(GPT, dropout=0.2))  # fmt: skip

    full, resumed = full_and_resumed(tmp_path, model, lambda: optim.Adam(lr=0.01), ids, kernels)
    assert [e["loss"] for e in resumed.history] == [e["loss"] for e in full.history]
    assert all(np.array_equal(p, full.model.params[k]) for k, p in resumed.model.params.items())


@pytest.mark.parametrize("model_kind", ["transformer", "recurrent"])
def test_the_rows_of_the_dropout_masks_give_each_rank_its_share(model_kind):
    """What MPI's sharded step relies on (train/parallel.py): the gradient of the whole batch with its masks equals
    the token-weighted sum of the gradients of two row ranges, each with dropout_rows of the same masks."""
    from scratchlm import RecurrentLM

    be = get_backend("numpy", "float64", "reference")
    if model_kind == "transformer":
        model = TransformerLM(
            11,
            6,
            embed_dim=8,
            dense_dim=12,
            num_heads=2,
            key_dim=4,
            num_layers=2,
            block="gpt",
            dropout=0.3,
            dtype="float64",
            seed=4,
            backend=be,
        )
    else:
        model = RecurrentLM(11, 5, [6, 7], dropout=0.3, dtype="float64", seed=4, backend=be)
    rng = np.random.default_rng(0)
    x, y = rng.integers(1, 11, (5, 6)), rng.integers(0, 11, (5, 6))
    masks = model.dropout_masks(5, 6)
    _, whole = model.loss_and_grads(x, y, training=True, dropout_masks=masks)
    parts = [(0, 2), (2, 5)]
    summed = {name: 0.0 for name in whole}
    for lo, hi in parts:
        _, g = model.loss_and_grads(x[lo:hi], y[lo:hi], training=True, dropout_masks=model.dropout_rows(masks, lo, hi))
        for name in g:
            summed[name] = summed[name] + g[name] * (hi - lo) / 5
    for name in whole:
        np.testing.assert_allclose(summed[name], whole[name], rtol=1e-12, atol=1e-15, err_msg=name)
