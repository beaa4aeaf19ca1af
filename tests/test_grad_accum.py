"""Gradient accumulation: N micro-batches in one step are the step of the one batch of their rows.

In float64 the weights after a few steps agree to 1e-12 whether the rows come as one batch or as
micro-batches (with padding that gives each micro-batch a different number of scored targets, and with
clipping, which must act on the gradient of the whole batch); and a run with accumulation killed and
resumed goes on exactly.
"""

import io

import numpy as np
import pytest

from scratchlm import LanguageModel, TransformerLM, batching, optim
from scratchlm.batching import Batch
from scratchlm.text import CharTokenizer
from scratchlm.train import Trainer, load_checkpoint
from scratchlm.train.step import train_step

V, B, T, N = 9, 3, 6, 4


def rows(seed, masked, last_only):
    """(x, y, mask) of N·B rows: random ids; with ``masked``, each row padded after a random length."""
    rng = np.random.default_rng(seed)
    x = rng.integers(1, V, size=(N * B, T))
    y = rng.integers(1, V, size=(N * B,) if last_only else (N * B, T))
    mask = None
    if masked:
        lengths = rng.integers(1, T + 1, size=N * B)
        mask = np.arange(T)[None, :] < lengths[:, None]
        x = np.where(mask, x, 0)
    return x, y, mask


def batch(x, y, mask, last_only):
    targets = len(y) if last_only else (y.size if mask is None else int(mask.sum()))
    return Batch(x, y, mask, targets)


def model_of(kind):
    if kind == "transformer":
        return TransformerLM(V, T, embed_dim=8, dense_dim=12, num_heads=2, num_layers=2, block="gpt", dtype="float64")
    return LanguageModel(V, 4, [5], dtype="float64", seed=1)


@pytest.mark.parametrize(
    "kind, masked, last_only",
    [("recurrent", True, False), ("recurrent", False, True), ("transformer", False, False)],
)
@pytest.mark.parametrize("make_optimizer", [lambda: optim.SGD(0.5, global_clipnorm=0.05), lambda: optim.AdamW(0.01)])
def test_micro_batches_step_as_the_big_batch(kind, masked, last_only, make_optimizer):
    big, small = model_of(kind), model_of(kind)
    big_opt, small_opt = make_optimizer(), make_optimizer()
    for step in range(3):
        x, y, mask = rows(step, masked, last_only)
        whole = train_step(big, big_opt, batch(x, y, mask, last_only), last_only=last_only)
        micro = [
            batch(x[i : i + B], y[i : i + B], None if mask is None else mask[i : i + B], last_only)
            for i in range(0, N * B, B)
        ]
        if masked:
            assert len({b.targets for b in micro}) > 1  # the shares are not all 1/N
        parts = train_step(small, small_opt, micro, last_only=last_only)
        assert parts.loss == pytest.approx(whole.loss, rel=1e-13, abs=0)
        assert parts.grad_norm == pytest.approx(whole.grad_norm, rel=1e-12, abs=0)
        assert parts.tokens == whole.tokens
    if big_opt.global_clipnorm is not None:
        assert whole.grad_norm > big_opt.global_clipnorm  # clipping acted, on the whole batch's gradient
    for name, p in big.params.items():
        if name.endswith("key/bias") and isinstance(big_opt, optim.AdamW):
            continue  # its gradient is 0 in theory, round-off in practice, which Adam's m/(√v + ε) magnifies
        np.testing.assert_allclose(small.params[name], p, rtol=0, atol=1e-12, err_msg=name)


TEXT = "the quick brown fox jumps over the lazy dog. a stitch in time saves nine. " * 6
TOKENIZER = CharTokenizer.fit(TEXT)


class Killed(BaseException):
    pass


def run(run_dir=None, kill_at=None, resume=False, grad_accum=3, epochs=3, checkpoint_every=None):
    """({step: loss}, trainer) of a tiny windows run with accumulation; Killed after step ``kill_at``."""
    losses = {}

    def on_step(trainer):
        losses[trainer.step] = trainer.last_loss
        if trainer.step == kill_at:
            raise Killed

    ids = TOKENIZER.encode(TEXT)
    train = batching.Windows(ids, maxlen=8, step=3, batch_size=16, seed=0)
    options = dict(run_dir=run_dir, epochs=epochs, checkpoint_every=checkpoint_every, on_step=on_step, progress=False)
    options["out"] = io.StringIO()
    if resume:
        trainer = Trainer.resume(load_checkpoint(run_dir), train, **options)
    else:
        model = LanguageModel(TOKENIZER.vocab_size, None, [8], seed=0)
        trainer = Trainer(model, optim.Adam(lr=0.01), train, grad_accum=grad_accum, **options)
    try:
        trainer.fit()
    except Killed:
        pass
    return losses, trainer


def test_an_epoch_is_fewer_steps_and_its_last_takes_what_is_left():
    _, trainer = run(epochs=1, grad_accum=4)
    n = trainer.train.num_batches
    assert n % 4 and trainer.step == -(-n // 4) and trainer.epoch == 1


def test_killed_and_resumed_with_accumulation_goes_on_exactly(tmp_path):
    full, reference = run()
    per_epoch = -(-reference.train.num_batches // 3)
    kill_at = per_epoch + per_epoch // 2 + 1
    before, _ = run(tmp_path, kill_at=kill_at, checkpoint_every=2)
    saved = load_checkpoint(tmp_path).metadata["train"]
    assert saved["grad_accum"] == 3 and saved["step"] == kill_at - 1 and saved["batch"] % 3 == 0
    assert before == {s: full[s] for s in before}
    after, resumed = run(tmp_path, resume=True, checkpoint_every=2)
    assert resumed.grad_accum == 3
    assert after == {s: full[s] for s in after} and max(after) == max(full)
    assert all(np.array_equal(p, reference.model.params[k]) for k, p in resumed.model.params.items())


def test_bad_grad_accum():
    with pytest.raises(Exception, match="grad_accum must be a whole number of batches per step"):
        run(grad_accum=0)
