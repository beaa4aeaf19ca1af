"""Data-parallel training: what the Trainer does differently when started by ``mpiexec -n N``.

See :mod:`scratchlm.distributed` (the world of ranks) and docs/distributed.md.
Every rank starts from rank 0's weights (:func:`join_world`), takes the rows
[r·B/N, (r+1)·B/N) of each global batch and computes their mean loss and
gradients; one all-reduce of gradient·tokens, divided by the global token
count, gives every rank the single-process step of the global batch
(:func:`sharded_loss_and_grads`), clipped afterwards by the optimizer. Dropout
masks are drawn for the global batch on every rank (one generator, the same
everywhere) and sliced. Rank 0 alone prints, logs and writes checkpoints; a
checkpoint holds the whole carried state (gathered from the ranks, with
:func:`state_batch_axes`), so a run resumes with any number of ranks that
divides the batch size of stateful streams. At the start every rank checks
that it has rank 0's data, backend and dtype, and they stop together (one line
from rank 0) if any has not; with the cupy backend the all-reduce then runs
through NCCL on the GPUs, one per rank. Ctrl-C stops every rank at the same
step: each step's all-reduce also counts the ranks that Ctrl-C reached, and
when any did every rank raises :class:`~scratchlm.distributed.Interrupted`
there, before taking the step (validation checks between its batches, the
samples stop at once).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ScratchLMError

if TYPE_CHECKING:
    from ..batching import Batch
    from ..distributed import World
    from ..models import TokenModel
    from ..optim import Optimizer


def rows(batch: Batch, lo: int, hi: int, last_only: bool) -> Batch:
    """Rows [lo, hi) of a Batch, with their own count of scored targets."""
    x, y = batch.x[lo:hi], batch.y[lo:hi]
    mask = None if batch.mask is None else batch.mask[lo:hi]
    targets = y.size if mask is None or last_only else int(mask.sum())
    return type(batch)(x, y, mask, targets)


def sharded_loss_and_grads(model: TokenModel, batch: Batch, last_only: bool, world: World) -> tuple[float, dict]:
    """The global batch's mean loss and gradients, from this rank's rows and one all-reduce."""
    n = len(batch.x)
    lo, hi = world.shard(n)
    T = batch.x.shape[1]
    masks = model.dropout_rows(model.dropout_masks(n, T, last_only), lo, hi)  # the global batch's: our rows
    if hi > lo:
        part = rows(batch, lo, hi, last_only)
        loss, grads = model.loss_and_grads(
            part.x, part.y, mask=part.mask, last_only=last_only, training=True, dropout_masks=masks
        )
        tokens = part.targets
    else:  # a last short batch with fewer rows than ranks
        loss, grads, tokens = 0.0, None, 0
    return world.reduce_step(model.params, grads, loss, tokens, batch.targets, model.backend)


def state_batch_axes(model: TokenModel) -> list[list[int]]:
    """Per layer, per state part, the axis of the carried state that runs over the batch's rows."""
    return [
        [
            next(i for i, (a, b) in enumerate(zip(one, two, strict=False)) if a != b)
            for one, two in zip(ones, twos, strict=False)
        ]
        for ones, twos in zip(model.state_shapes(1), model.state_shapes(2), strict=False)
    ]


def join_world(world: World, model: TokenModel, optimizer: Optimizer, train, val) -> None:
    """Wait for every rank, check that it has rank 0's data, backend and dtype (every rank stops together when
    one has not), then take rank 0's weights, optimizer slots and dropout generator."""
    world.wait_for_all()
    backend = model.backend
    mine = {
        "training": None if train is None else train.config,
        "validation": None if val is None else val.config,
        "backend": (backend.name, backend.dtype.name),
    }
    root = world.broadcast(mine)
    error = None  # every rank checks, then they stop together (agree)
    for what in ("training", "validation"):
        if error is None and root[what] != mine[what]:
            error = ScratchLMError(
                f"rank {world.rank}'s {what} data differ from rank 0's (corpus, tokenization "
                "or batch settings): every rank must read the same corpus with the same "
                "settings"
            )
    if error is None and root["backend"] != mine["backend"]:
        error = ScratchLMError(
            f"rank {world.rank} trains with the {backend.name} backend in {backend.dtype.name}, "
            f"rank 0 with {root['backend'][0]} in {root['backend'][1]}: every rank must use "
            "the same backend and dtype (name the backend rather than 'auto' when the "
            "machines differ)"
        )
    if error is None and backend.name == "cupy":
        try:
            world.check_device(model.params)
        except ScratchLMError as exc:
            error = exc
    world.agree(error)
    if backend.name == "cupy":
        world.start_nccl()  # the all-reduce on device buffers, when CuPy has NCCL
    world.broadcast_arrays(model.params, model.backend)
    world.broadcast_arrays(optimizer.slots, model.backend)
    if model.dropout_rng is not None:
        model.dropout_rng.bit_generator.state = world.broadcast(model.dropout_rng.bit_generator.state)


def shard_state(world: World, model: TokenModel, batch_size: int) -> None:
    """Keep only this rank's rows of the model's carried state (of a batch of ``batch_size`` rows)."""
    lo, hi = world.shard(batch_size)
    model.set_state(
        [
            None
            if state is None
            else tuple(
                a if a.shape[axis] != batch_size else a[(slice(None),) * axis + (slice(lo, hi),)]
                for a, axis in zip(state, axes, strict=False)
            )
            for state, axes in zip(model.get_state(), state_batch_axes(model), strict=False)
        ]
    )
