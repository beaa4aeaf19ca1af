"""One training step: the gradients of one batch's loss, the NaN guard, the update.

    result = train_step(model, optimizer, batch)      # the model's weights and the optimizer's slots change
    result.loss, result.grad_norm, result.tokens

This is the whole of what training does to the weights; :class:`~scratchlm.train.loop.Trainer`
calls it once per batch and keeps the books around it (position, checkpoints, metrics).

NaN/Inf guard. Before the update the loss and the global gradient norm are
checked; a non-finite value raises :class:`TrainingDiverged` before the weights
are touched, so the weights stay the last good ones. NumPy's overflow warnings
are silenced on the way (:func:`quiet_overflow`), so the one error says it all.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

import numpy

from .. import optim
from ..errors import ScratchLMError
from .parallel import sharded_loss_and_grads

if TYPE_CHECKING:
    from ..batching import Batch
    from ..distributed import World
    from ..models import TokenModel
    from ..optim import Optimizer


class TrainingDiverged(ScratchLMError):
    """The loss, the gradients, the validation loss or the samples' logits became NaN or infinite."""


class StepResult(NamedTuple):
    """What :func:`train_step` returns."""

    loss: float  # mean loss per scored target of the batch (the global batch under MPI)
    grad_norm: float  # global L2 norm of the gradients, before clipping
    tokens: int  # input tokens of the batch that are not padding (the global batch under MPI)


def quiet_overflow() -> numpy.errstate:
    """NumPy's overflow warnings off: a diverging model's NaN and infinities are reported once, as
    :class:`TrainingDiverged`, not as a RuntimeWarning per matmul before it."""
    return numpy.errstate(over="ignore", invalid="ignore", divide="ignore")


def train_step(
    model: TokenModel, optimizer: Optimizer, batch: Batch, *, last_only: bool = False, world: World | None = None
) -> StepResult:
    """One step of gradient descent on ``batch`` (x, y, mask: a :class:`~scratchlm.batching.Batch`).

    last_only: score only the last position of each row (y is (B,)), as the batcher says.
    world: under MPI (``world.parallel``), this process computes its rows of the batch and one
        all-reduce gives every rank the global batch's loss and gradients (:mod:`.parallel`).
    Raises :class:`TrainingDiverged` before any weight changes when the loss or the gradients are
    not finite.
    """
    with quiet_overflow():
        # Forward and backward: the mean loss per scored target and its gradient for every parameter.
        if world is not None and world.parallel:
            loss, grads = sharded_loss_and_grads(model, batch, last_only, world)
        else:
            loss, grads = model.loss_and_grads(batch.x, batch.y, mask=batch.mask, last_only=last_only, training=True)
        norm = optim.global_norm(grads)
    # The NaN guard: nothing is updated from a non-finite loss or gradient.
    if not (math.isfinite(loss) and math.isfinite(norm)):
        raise TrainingDiverged(f"the loss is {loss} and the gradient norm {norm}")
    # The update, in place: clipped to the optimizer's global_clipnorm first, when it has one.
    optimizer.step(model.params, grads)
    tokens = batch.x.size if batch.mask is None else int(batch.mask.sum())
    return StepResult(loss, norm, tokens)
