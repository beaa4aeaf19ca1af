"""Dropout between recurrent layers: Keras' inverted dropout, in training steps only, seeded and resumable."""

import io

import numpy as np
import pytest
from conftest import random_mask
from test_train import TEXT, TOKENIZER

from scratchlm import LanguageModel, batching, get_backend, optim
from scratchlm.backend import Backend
from scratchlm.errors import ModelError
from scratchlm.gradcheck import check_model
from scratchlm.layers.dropout import Dropout
from scratchlm.train import Trainer, load_checkpoint


def test_inverted_dropout_keeps_the_expectation():
    be = get_backend("numpy", "float64")
    drop = Dropout(0.25, be)
    mask = drop.draw((200, 500), Backend.rng(0))
    assert abs(mask.mean() - 0.75) < 0.01
    x = np.ones((200, 500))
    y, cache = drop.forward(x, mask)
    np.testing.assert_allclose(np.unique(y), [0.0, 1 / 0.75])
    assert abs(y.mean() - 1.0) < 0.02
    dx, grads = drop.backward(cache, x)
    np.testing.assert_array_equal(dx, y)
    assert grads == {}


@pytest.mark.gradcheck
@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("last_only", [False, True])
def test_gradients_with_the_dropout_masks_held_fixed(rng, cell, last_only):
    model = LanguageModel(7, 3, [5, 4], cell=cell, dtype="float64", seed=4, dropout=0.3)
    B, T = 3, 5
    x = rng.integers(0, 7, (B, T))
    y = rng.integers(0, 7, (B,) if last_only else (B, T))
    masks = model.dropout_masks(B, T, last_only)
    assert [m.shape for m in masks] == [(T, B, 5), (B, 4) if last_only else (T, B, 4)]
    errors = check_model(
        model, x, y, mask=None if last_only else random_mask(rng, B, T), last_only=last_only, dropout_masks=masks
    )
    assert max(errors.values()) <= 1e-6, errors
    with_masks = model.loss(x, y, last_only=last_only, dropout_masks=masks)
    assert with_masks != model.loss(x, y, last_only=last_only)  # the masks do change the loss


def test_dropout_only_in_training_steps(rng):
    model = LanguageModel(7, 3, [6], dtype="float64", seed=1, dropout=0.5)
    plain = LanguageModel(7, 3, [6], dtype="float64", seed=1)
    x, y = rng.integers(0, 7, (4, 6)), rng.integers(0, 7, (4, 6))
    assert model.loss(x, y) == plain.loss(x, y)  # evaluation: no dropout
    np.testing.assert_array_equal(model.forward(x)[0], plain.forward(x)[0])
    np.testing.assert_array_equal(model.generate([1, 2], 10, seed=3), plain.generate([1, 2], 10, seed=3))
    assert model.loss_and_grads(x, y)[0] == plain.loss(x, y)  # not a training step either
    trained = model.loss_and_grads(x, y, training=True)[0]
    assert trained != plain.loss(x, y) and trained != model.loss_and_grads(x, y, training=True)[0]


def test_no_dropout_draws_no_masks():
    assert LanguageModel(5, 2, [3]).dropout_masks(2, 3) is None


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5, "0.2", True])
def test_bad_rates_are_refused(rate):
    with pytest.raises(ModelError, match="dropout"):
        LanguageModel(5, 2, [3], dropout=rate)


@pytest.mark.parametrize("rate", [0.995, 0.9999999999999999])
def test_rates_that_keep_almost_no_unit_are_refused_saying_the_bound(rate):
    """At 0.9999999999999999 no unit is ever kept: the loss would stay ln V and every gradient 0."""
    for build in (lambda: LanguageModel(5, 2, [3], dropout=rate), lambda: Dropout(rate, get_backend("numpy"))):
        with pytest.raises(ModelError, match=r"dropout must be a rate in \[0, 0.99\]"):
            build()


def test_the_largest_rate_accepted_still_trains():
    model = LanguageModel(7, 3, [200], dtype="float64", seed=1, dropout=0.99)
    x = np.random.default_rng(0).integers(0, 7, (4, 6))
    _, grads = model.loss_and_grads(x, x, training=True)
    assert all(np.abs(g).max() > 0 for g in grads.values())


def test_resume_with_dropout_is_exact(tmp_path):
    ids = TOKENIZER.encode(TEXT * 2)

    def run(run_dir, kill_at=None, resume=False):
        losses = {}

        def on_step(trainer):
            losses[trainer.step] = trainer.last_loss
            if trainer.step == kill_at:
                raise KeyboardInterrupt

        batches = batching.Streams(ids, batch_size=4, seq_len=7)
        options = dict(
            run_dir=run_dir, epochs=2, checkpoint_every=3, progress=False, out=io.StringIO(), on_step=on_step
        )
        if resume:
            trainer = Trainer.resume(load_checkpoint(run_dir), batches, **options)
        else:
            model = LanguageModel(TOKENIZER.vocab_size, 5, [8, 6], cell="gru", stateful=True, dropout=0.4, seed=2)
            trainer = Trainer(model, optim.Adam(lr=0.01), batches, metadata={"tokenizer": TOKENIZER.config}, **options)
        try:
            trainer.fit()
        except KeyboardInterrupt:
            pass
        return losses, trainer

    full, reference = run(tmp_path / "a")
    before, _ = run(tmp_path / "b", kill_at=8)
    after, resumed = run(tmp_path / "b", resume=True)
    assert min(after) == 7 and after == {s: full[s] for s in after}
    assert all(np.array_equal(p, reference.model.params[k]) for k, p in resumed.model.params.items())
