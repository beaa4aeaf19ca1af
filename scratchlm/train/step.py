"""One training step: the gradients of one batch's loss, the NaN guard, the update.

    result = train_step(model, optimizer, batch)      # the model's weights and the optimizer's slots change
    result.loss, result.grad_norm, result.tokens
    result = train_step(model, optimizer, [b1, b2, b3, b4])   # gradient accumulation: 4 micro-batches, one step

This is the whole of what training does to the weights; :class:`~scratchlm.train.loop.Trainer`
calls it once per batch and keeps the books around it (position, checkpoints, metrics).

NaN/Inf guard. Before the update the loss and the global gradient norm are
checked; a non-finite value raises :class:`TrainingDiverged` before the weights
are touched, so the weights stay the last good ones. NumPy's overflow warnings
are silenced on the way (:func:`quiet_overflow`), so the one error says it all.

Gradient accumulation. A step may take a list of N micro-batches instead of one
batch: their losses and gradients are computed one after the other and added,
each weighted by its share of the scored targets, n_i / Σ n_j, so that the step
is the step of the one big batch made of their rows — the mean loss over all the
scored targets, its gradient, clipped as a whole (up to rounding: ≤ 1e-12 in
float64, ``tests/test_grad_accum.py``). Only one micro-batch's activations are
in memory at a time.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

import numpy

from .. import optim
from ..errors import ScratchLMError
from .parallel import sharded_loss_and_grads

if TYPE_CHECKING:
    from collections.abc import Sequence

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
    model: TokenModel,
    optimizer: Optimizer,
    batch: Batch | Sequence[Batch],
    *,
    last_only: bool = False,
    world: World | None = None,
) -> StepResult:
    """One step of gradient descent on ``batch`` (x, y, mask: a :class:`~scratchlm.batching.Batch`), or on a
    list of micro-batches taken together as one batch (gradient accumulation).

    last_only: score only the last position of each row (y is (B,)), as the batcher says.
    world: under MPI (``world.parallel``), this process computes its rows of the batch and one
        all-reduce gives every rank the global batch's loss and gradients (:mod:`.parallel`).
    Raises :class:`TrainingDiverged` before any weight changes when the loss or the gradients are
    not finite.
    """
    micro = list(batch) if isinstance(batch, list) else [batch]
    with quiet_overflow():
        # Forward and backward: the mean loss per scored target and its gradient for every parameter.
        if len(micro) == 1:
            loss, grads = _loss_and_grads(model, micro[0], last_only, world)
        else:
            loss, grads = _accumulated(model, micro, last_only, world)
        norm = optim.global_norm(grads)
    # The NaN guard: nothing is updated from a non-finite loss or gradient.
    if not (math.isfinite(loss) and math.isfinite(norm)):
        raise TrainingDiverged(f"the loss is {loss} and the gradient norm {norm}")
    # The update, in place: clipped to the optimizer's global_clipnorm first, when it has one.
    optimizer.step(model.params, grads)
    tokens = sum(b.x.size if b.mask is None else int(b.mask.sum()) for b in micro)
    return StepResult(loss, norm, tokens)


def _loss_and_grads(model, batch, last_only, world):
    """(mean loss per scored target of ``batch``, its gradients): on this process, or the global batch's under MPI."""
    if world is not None and world.parallel:
        return sharded_loss_and_grads(model, batch, last_only, world)
    return model.loss_and_grads(batch.x, batch.y, mask=batch.mask, last_only=last_only, training=True)


def _accumulated(model, micro, last_only, world):
    """The loss and gradients of the micro-batches taken as one batch: with n_i scored targets in micro-batch i
    and N = Σ n_i, L = Σ (n_i/N)·L_i and ∇L = Σ (n_i/N)·∇L_i (each L_i a mean over its own n_i targets)."""
    total = sum(b.targets for b in micro)
    loss, grads = 0.0, None
    for b in micro:
        share = b.targets / total
        loss_i, grads_i = _loss_and_grads(model, b, last_only, world)
        loss += share * loss_i
        if grads is None:  # new arrays: a model may hand back the same gradient buffers on every call
            grads = {name: g * share for name, g in grads_i.items()}
        else:
            for name, g in grads_i.items():
                grads[name] += g * share
    return loss, grads
