"""TransformerLM's padding id, ``pad_id``: 0 by default (the seed's, Keras' mask_zero), any other id, or None
(GPT-2's: no id is padding). The masks, the loss, the gradients (finite differences), the fused path, the KV-cache
generation and checkpoints all follow it; a file written before it existed reads as pad_id 0."""

import json

import numpy as np
import pytest

from scratchlm import get_backend, models
from scratchlm.errors import CheckpointError, ModelError
from scratchlm.gradcheck import check_model
from scratchlm.models import TransformerLM
from tests.helpers.models import spread

V = 13


def make(block="gpt", pad_id=None, dtype="float64", kernels="reference", num_layers=2):
    """A small model with every parameter far from its initial value (tests/test_transformer.py's ``make``)."""
    model = TransformerLM(
        V, 8, embed_dim=6, dense_dim=7, num_heads=2, key_dim=3, num_layers=num_layers, block=block, seed=1,
        backend=get_backend("numpy", dtype, kernels=kernels), dtype=dtype, pad_id=pad_id,
    )  # fmt: skip
    return spread(model)


def batch(rng, B=3, T=6):
    """(x, y) with id 0 at the start, in the middle and at the end of rows, and id 3 here and there."""
    x = rng.integers(1, V, (B, T))
    x[0, :2] = 0
    x[1, 3] = 0
    x[2, -1] = 0
    x[:, 2] = 3
    return x, rng.integers(0, V, (B, T))


def nll(model, x, y):
    """Each position's cross-entropy, (B, T), from the model's logits."""
    logits, _ = model.forward(x)
    z = logits - logits.max(axis=-1, keepdims=True)
    return np.log(np.exp(z).sum(axis=-1)) - np.take_along_axis(z, y[..., None], axis=-1)[..., 0]


@pytest.mark.parametrize("block", ["book", "gpt"])
@pytest.mark.parametrize("pad_id", [None, 0, 3])
def test_the_loss_counts_every_position_but_the_padding_id(rng, block, pad_id):
    model = make(block, pad_id)
    x, y = batch(rng)
    keep = np.ones(x.shape, bool) if pad_id is None else x != pad_id
    assert model.loss(x, y) == pytest.approx(nll(model, x, y)[keep].mean(), rel=1e-12)
    assert model.loss_and_grads(x, y)[0] == pytest.approx(nll(model, x, y)[keep].mean(), rel=1e-12)
    mask = np.ones(x.shape, bool)
    mask[0, -1] = False  # the caller's mask still counts, ANDed with the padding
    assert model.loss(x, y, mask=mask) == pytest.approx(nll(model, x, y)[keep & mask].mean(), rel=1e-12)


@pytest.mark.parametrize("block", ["book", "gpt"])
def test_without_a_padding_id_the_attention_sees_id_0(rng, block):
    """pad_id None computes what pad_id 12 computes on ids without a 12: id 0 is an ordinary token, which later
    positions see; and pad_id k computes what pad_id None does with the caller's mask x != k."""
    none = make(block, None)
    x, y = batch(rng)
    x[x == V - 1] = 1
    np.testing.assert_array_equal(none.forward(x)[0], make(block, V - 1).forward(x)[0])
    changed = x.copy()
    changed[1, 3] = 5  # the 0 in the middle of row 1 becomes another token
    assert np.abs(none.forward(changed)[0][1, 4:] - none.forward(x)[0][1, 4:]).max() > 1e-3
    for pad_id in (0, 3):
        padded = make(block, pad_id)
        np.testing.assert_array_equal(padded.forward(x)[0], none.forward(x, mask=x != pad_id)[0])
        assert padded.loss(x, y) == none.loss(x, y, mask=x != pad_id)


@pytest.mark.gradcheck
@pytest.mark.parametrize("block", ["book", "gpt"])
@pytest.mark.parametrize("pad_id", [None, 3])
def test_gradients_follow_the_padding_id(rng, block, pad_id):
    model = make(block, pad_id)
    x, y = batch(rng)
    zero = {name for name in model.params if name.endswith("key/bias")}
    errors = check_model(model, x, y, zero=zero)
    assert set(errors) == set(model.params)
    assert max(errors.values()) <= 1e-6, errors


@pytest.mark.parametrize("block", ["book", "gpt"])
@pytest.mark.parametrize("pad_id", [None, 3])
def test_the_fused_path_follows_the_padding_id(rng, block, pad_id):
    ref, fused = make(block, pad_id), make(block, pad_id, kernels="fused")
    x, y = batch(rng)
    loss_r, g_r = ref.loss_and_grads(x, y)
    loss_f, g_f = fused.loss_and_grads(x, y)
    assert loss_f == pytest.approx(loss_r, rel=1e-10)
    scale = max(float(np.abs(g).max()) for g in g_r.values())
    assert all(np.abs(g_f[name] - g_r[name]).max() <= 1e-10 * scale for name in g_r)
    prompt = x[:, :4]
    assert np.array_equal(fused.generate(prompt, 6, temperature=0), ref.generate(prompt, 6, temperature=0))


@pytest.mark.parametrize("kernels", ["reference", "fused"])
@pytest.mark.parametrize("pad_id", [None, 0])
def test_cached_generation_equals_greedy_full_forward_passes(kernels, pad_id):
    """generate's KV cache (the fused decoding step too) gives greedy argmax of full forward passes, prompts with
    id 0 in them, also past sequence_length (the window slides)."""
    model = make("gpt", pad_id, kernels=kernels)
    prompt = np.array([[0, 4, 5], [6, 0, 0]])
    out = model.generate(prompt, 9, temperature=0)
    ids = prompt
    for k in range(9):  # 3 + 9 > sequence_length 8
        logits, _ = model.forward(ids[:, -model.sequence_length :])
        want = logits[:, -1].argmax(axis=-1)
        np.testing.assert_array_equal(out[:, k], want, err_msg=f"token {k}")
        ids = np.concatenate([ids, want[:, None]], axis=1)


def test_pad_id_is_checked_kept_in_checkpoints_and_old_files_read_as_0(tmp_path, rng):
    for wrong in (-1, 1.5, True, "0"):
        with pytest.raises(ModelError, match="pad_id must be"):
            make(pad_id=wrong)
    with pytest.raises(ModelError, match=r"pad_id must be None or a token id in \[0, 13\)"):
        make(pad_id=V)
    model = make(pad_id=None)
    assert model.config["pad_id"] is None and "pad_id None" in repr(model)
    assert "pad_id" not in repr(make(pad_id=0))  # the default is not spelled out
    x, y = batch(rng)
    model.save(tmp_path / "none.npz")
    loaded = models.load(tmp_path / "none.npz").model
    assert loaded.pad_id is None and loaded.loss(x, y) == pytest.approx(model.loss(x, y), rel=1e-12)  # any kernels

    with np.load(tmp_path / "none.npz") as f:
        arrays = {k: f[k] for k in f.files}
    header = json.loads(arrays.pop("header.json").tobytes())

    def write(name, **fields):
        h = {**header, "model": {**header["model"], **fields}}
        h["model"] = {k: v for k, v in h["model"].items() if v != "leave out"}
        np.savez(tmp_path / name, **arrays, **{"header.json": np.frombuffer(json.dumps(h).encode(), np.uint8)})
        return tmp_path / name

    old = models.load(write("old.npz", pad_id="leave out")).model  # written before pad_id existed
    assert old.pad_id == 0 and old.loss(x, y) == pytest.approx(make(pad_id=0).loss(x, y), rel=1e-12)
    with pytest.raises(CheckpointError, match="'pad_id' must be null or a token id below vocab_size 13"):
        models.read(write("big.npz", pad_id=13))
    with pytest.raises(CheckpointError, match="'pad_id'"):
        models.read(write("negative.npz", pad_id=-1))
