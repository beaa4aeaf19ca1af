"""Learning-rate schedules: the learning rate of each step, as a function of the step number.

    schedule = schedules.Cosine(lr=1e-3, min_lr=1e-4, warmup_steps=100, decay_steps=2000)
    schedule(0), schedule(99), schedule(2000)          # 1e-3/101, 1e-3·100/101, 1e-4
    trainer = Trainer(model, optimizer, train, schedule=schedule)

A schedule is a pure function of ``it``, the number of steps taken before the one it
sets (0 for the first step), so it has no state of its own: the
:class:`~scratchlm.train.loop.Trainer` sets ``optimizer.lr = schedule(trainer.step)``
before each step, and a checkpoint stores the schedule's :meth:`~Schedule.config`
next to the step count, which is all a resumed run needs to go on exactly.

Warmup (every schedule): for ``it < warmup_steps`` the rate rises linearly,
lr·(it + 1)/(warmup_steps + 1), as nanoGPT's ``get_lr`` (it never starts at 0).

- :class:`Constant`: lr after the warmup.
- :class:`Cosine`: nanoGPT's ``get_lr`` exactly: from lr at ``it = warmup_steps`` down
  to ``min_lr`` at ``it = decay_steps`` along half a cosine, ``min_lr`` after.
- :class:`StepDecay`: char-rnn's and torch-rnn's decay: lr multiplied by ``factor``
  every ``every`` steps after the warmup, lr·factor^⌊(it − warmup_steps)/every⌋.
"""

from __future__ import annotations

import math
import sys

from .checks import is_whole


def _positive(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < math.inf):
        raise ValueError(f"{name} must be a number > 0, got {value!r}")
    return float(value)


def _steps(name, value, least):
    if not is_whole(value) or value < least:
        raise ValueError(f"{name} must be a whole number >= {least}, got {value!r}")
    return int(value)


class Schedule:
    """Base class: ``lr`` (the peak rate), ``warmup_steps``, ``__call__(it)`` and the JSON ``config``."""

    name: str | None = None  # "constant" | "cosine" | "step"

    def __init__(self, lr: float, warmup_steps: int = 0):
        self.lr = _positive("lr", lr)
        self.warmup_steps = _steps("warmup_steps", warmup_steps, 0)

    def __call__(self, it: int) -> float:
        """The learning rate of the step taken after ``it`` steps (``it`` = 0, 1, ...)."""
        if it < self.warmup_steps:
            return self.lr * (it + 1) / (self.warmup_steps + 1)
        return self._after_warmup(it)

    def _after_warmup(self, it):
        raise NotImplementedError

    def config(self) -> dict:
        """JSON-serialisable: the name and the constructor's arguments (:func:`from_config` reads it back)."""
        return {"name": self.name, **{k: getattr(self, k) for k in self._fields()}}

    def _fields(self):
        return ("lr", "warmup_steps")

    def __repr__(self):
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._fields())
        return f"{type(self).__name__}({args})"


class Constant(Schedule):
    """lr, after a linear warmup of ``warmup_steps`` (none by default)."""

    name = "constant"

    def _after_warmup(self, it):
        return self.lr


class Cosine(Schedule):
    """nanoGPT's ``get_lr``: linear warmup, then a cosine from lr down to min_lr, then min_lr.

    it < warmup_steps:            lr·(it + 1)/(warmup_steps + 1)
    it > decay_steps:             min_lr
    otherwise:  r = (it − warmup_steps)/(decay_steps − warmup_steps) ∈ [0, 1]
                min_lr + ½(1 + cos πr)·(lr − min_lr)
    """

    name = "cosine"

    def __init__(self, lr: float, min_lr: float, decay_steps: int, warmup_steps: int = 0):
        super().__init__(lr, warmup_steps)
        self.min_lr = _positive("min_lr", min_lr)
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr must be at most lr ({self.lr}), got {min_lr}")
        self.decay_steps = _steps("decay_steps", decay_steps, self.warmup_steps + 1)

    def _fields(self):
        return ("lr", "min_lr", "decay_steps", "warmup_steps")

    def _after_warmup(self, it):
        if it > self.decay_steps:
            return self.min_lr
        ratio = (it - self.warmup_steps) / (self.decay_steps - self.warmup_steps)
        return self.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (self.lr - self.min_lr)


class StepDecay(Schedule):
    """lr·factor^⌊(it − warmup_steps)/every⌋ after the warmup: lr multiplied by ``factor`` every ``every`` steps
    (torch-rnn's ``-lr_decay_every`` / ``-lr_decay_factor``, counted in steps rather than epochs)."""

    name = "step"

    def __init__(self, lr: float, every: int, factor: float = 0.5, warmup_steps: int = 0):
        super().__init__(lr, warmup_steps)
        self.every = _steps("every", every, 1)
        self.factor = _positive("factor", factor)
        if self.factor > 1:
            raise ValueError(f"factor must be in (0, 1], got {factor}")

    def _fields(self):
        return ("lr", "every", "factor", "warmup_steps")

    def _after_warmup(self, it):
        # Never 0: decayed long enough, lr·factor^k underflows, and a rate of 0 is no rate (optimizers refuse it,
        # and a checkpoint records it); the smallest positive float stops every update just as well.
        return max(self.lr * self.factor ** ((it - self.warmup_steps) // self.every), sys.float_info.min)


SCHEDULES = {"constant": Constant, "cosine": Cosine, "step": StepDecay}


def from_config(config: dict) -> Schedule:
    """The schedule :meth:`Schedule.config` describes; ValueError, saying what is wrong, for anything else."""
    if not isinstance(config, dict) or config.get("name") not in SCHEDULES:
        raise ValueError(f"a schedule config names one of {sorted(SCHEDULES)}, got {config!r:.80}")
    cls = SCHEDULES[config["name"]]
    try:
        return cls(**{k: v for k, v in config.items() if k != "name"})
    except TypeError as exc:  # a field the constructor does not take, or one missing
        raise ValueError(f"bad {config['name']!r} schedule config: {exc}") from None
