"""Learning-rate schedules: cosine against nanoGPT's get_lr, step decay, warmup, configs and their errors."""

import json
import math
import sys

import pytest

from scratchlm import optim, schedules
from scratchlm.schedules import StepDecay


def nanogpt_get_lr(it, learning_rate, warmup_iters, lr_decay_iters, min_lr):
    """nanoGPT's train.py get_lr, transcribed (globals made arguments)."""
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it > lr_decay_iters:
        return min_lr
    decay_ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    assert 0 <= decay_ratio <= 1
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return min_lr + coeff * (learning_rate - min_lr)


@pytest.mark.parametrize(
    "lr, min_lr, warmup, decay",
    [(1e-3, 1e-4, 100, 2000), (6e-4, 6e-5, 2000, 600000), (1e-2, 1e-2, 0, 1), (0.5, 1e-6, 3, 10)],
)
def test_cosine_is_nanogpts_get_lr(lr, min_lr, warmup, decay):
    schedule = schedules.Cosine(lr=lr, min_lr=min_lr, decay_steps=decay, warmup_steps=warmup)
    its = sorted(
        set(range(0, warmup + 3))  # the warmup, its last step and the first ones after it
        | set(range(max(0, decay - 3), decay + 4))  # the end and past it
        | set(range(0, 2 * decay + 10, max(1, decay // 97)))  # the middle, many points
        | {10**9}
    )
    for it in its:
        assert schedule(it) == nanogpt_get_lr(it, lr, warmup, decay, min_lr), it
    assert schedule(warmup) == lr and schedule(decay) == pytest.approx(min_lr) and schedule(decay + 1) == min_lr


def test_constant_with_and_without_warmup():
    assert [schedules.Constant(0.1)(it) for it in (0, 1, 10**6)] == [0.1, 0.1, 0.1]
    warm = schedules.Constant(0.1, warmup_steps=4)
    assert [warm(it) for it in range(6)] == [0.1 * k / 5 for k in (1, 2, 3, 4)] + [0.1, 0.1]


def test_step_decay_as_torch_rnn():
    """lr × factor every N steps (torch-rnn: every N epochs), after the warmup when there is one."""
    s = schedules.StepDecay(2e-3, every=3, factor=0.5)
    assert [s(it) for it in range(10)] == [2e-3] * 3 + [1e-3] * 3 + [5e-4] * 3 + [2.5e-4]
    w = schedules.StepDecay(1.0, every=2, factor=0.1, warmup_steps=3)
    assert [w(it) for it in range(8)] == [0.25, 0.5, 0.75, 1.0, 1.0, 0.1, 0.1, 0.1**2]


@pytest.mark.parametrize(
    "schedule",
    [
        schedules.Constant(0.01, warmup_steps=7),
        schedules.Cosine(1e-3, 1e-4, decay_steps=50, warmup_steps=5),
        schedules.StepDecay(0.1, every=4, factor=0.9),
    ],
)
def test_config_round_trip(schedule):
    config = json.loads(json.dumps(schedule.config()))
    again = schedules.from_config(config)
    assert type(again) is type(schedule) and again.config() == schedule.config()
    assert [again(it) for it in range(100)] == [schedule(it) for it in range(100)]
    assert repr(again) == repr(schedule)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: schedules.Constant(0), "lr must be a number > 0"),
        (lambda: schedules.Constant(0.1, warmup_steps=-1), "warmup_steps must be a whole number >= 0"),
        (lambda: schedules.Constant(0.1, warmup_steps=1.5), "warmup_steps must be a whole number"),
        (lambda: schedules.Cosine(1e-3, 0, decay_steps=10), "min_lr must be a number > 0"),
        (lambda: schedules.Cosine(1e-3, 1e-2, decay_steps=10), r"min_lr must be at most lr"),
        (lambda: schedules.Cosine(1e-3, 1e-4, decay_steps=10, warmup_steps=10), "decay_steps must be .* >= 11"),
        (lambda: schedules.StepDecay(0.1, every=0), "every must be a whole number >= 1"),
        (lambda: schedules.StepDecay(0.1, every=5, factor=1.5), r"factor must be in \(0, 1\]"),
        (lambda: schedules.from_config({"name": "linear"}), "names one of"),
        (lambda: schedules.from_config({"name": "cosine", "lr": 0.1}), "bad 'cosine' schedule config"),
        (lambda: schedules.from_config([1]), "names one of"),
    ],
)
def test_bad_schedules(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_step_decay_never_reaches_zero_and_an_optimizer_takes_its_rate():
    """Decayed past what a float holds (0.1 every step, 400 steps), the rate stays positive, so the optimizer and
    its checkpoint accept it."""
    schedule = StepDecay(1.0, every=1, factor=0.1)
    lr = schedule(400)
    assert 0 < lr <= sys.float_info.min
    optim.AdamW(lr=lr)
