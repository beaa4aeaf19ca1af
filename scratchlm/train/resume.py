"""Where a run continues from: the checkpoint of a run directory, the training position it records, its rules.

    ckpt = load_checkpoint("runs/nietzsche")             # the run directory's last.npz
    trainer = Trainer.resume(ckpt, train, val, ...)      # checked here by resumed(ckpt, train)

Exact resume. Everything that decides the next step is in the checkpoint: the
weights and optimizer slots (exact float arrays), the position (epoch and batch
within it), the state of the dropout masks' generator, and, for stateful
streams, the recurrent state carried into the next chunk (:func:`carried_state`,
JSON-safe base64 of the exact bytes), the learning-rate schedule's config (the
step count is its position) and the number of batches per step (gradient
accumulation; a step is atomic: checkpoints fall between steps only). The batch order is a function of (seed,
epoch) (see :mod:`scratchlm.batching`), so a resumed run gathers exactly the batches
the uninterrupted run would have, from exactly the same weights and state: its
losses are equal, bit for bit. Samples and validation never touch the training
state (their randomness comes from their own seeds, and the carried state is
set aside while validating). A run killed between checkpoints loses only the
steps after its last checkpoint, and repeats them identically on resume.
"""

from __future__ import annotations

import base64
import math
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy

from .. import checkpoint, models, schedules
from ..errors import CheckpointError, ScratchLMError
from ..rundir import LAST
from .parallel import state_batch_axes

if TYPE_CHECKING:
    from ..distributed import World
    from ..models import Checkpoint, TokenModel


class ResumeError(ScratchLMError):
    """A checkpoint cannot be resumed with the data or options given."""


_count, _number = checkpoint.whole_at_least(0), checkpoint.is_number


# What a Trainer's position in metadata["train"] holds: field -> (check, what it must be).
_POSITION_RULES = {
    "epoch": (_count, "a whole number >= 0"),
    "batch": (_count, "a whole number >= 0"),
    "step": (_count, "a whole number >= 0"),
    "best_val_loss": (lambda v: v is None or _number(v), "null or a number"),
    "epoch_loss": (_number, "a number"),
    "epoch_targets": (_count, "a whole number >= 0"),
    "epoch_seconds": (_number, "a number"),
    "history": (lambda v: isinstance(v, list), "a list of epoch records"),
}
_EPOCH_RULES = {
    "epoch": (checkpoint.whole_at_least(1), "a positive whole number"),
    "step": (_count, "a whole number >= 0"),
    "loss": (_number, "a number"),
    "val_loss": (lambda v: v is None or _number(v), "null or a number"),
    "seconds": (_number, "a number"),
}


def check_position(position: dict) -> None:
    """CheckpointError unless ``position`` is a training position as a Trainer stores it in ``metadata["train"]``.

    epoch, batch, step and epoch_targets whole numbers >= 0; best_val_loss null or a number; epoch_loss,
    epoch_seconds and (when present) window_loss numbers; history a list of epoch records, each with epoch
    (>= 1), step, loss, val_loss (null or a number) and seconds. Whether ``batch`` lies within an epoch depends
    on the data: :func:`resumed` checks it. Since schedules and gradient accumulation (absent before them, read as
    none and 1): schedule null or a :mod:`scratchlm.schedules` config, grad_accum a whole number >= 1.
    """
    what = "the training position (metadata['train'])"
    checkpoint.check_fields(position, _POSITION_RULES, what)
    if not checkpoint.whole_at_least(1)(position.get("grad_accum", 1)):
        raise CheckpointError(
            f"{what}: field 'grad_accum' must be a whole number >= 1, got {position['grad_accum']!r:.40}; "
            f"{checkpoint.EDITED}"
        )
    if position.get("schedule") is not None:
        try:
            schedules.from_config(position["schedule"])
        except ValueError as exc:
            raise CheckpointError(f"{what}: field 'schedule': {exc}; {checkpoint.EDITED}") from None
    if not _number(position.get("window_loss", 0.0)):  # absent in checkpoints written before it was kept
        raise CheckpointError(
            "the training position (metadata['train']): field 'window_loss' must be a number, "
            f"got {position['window_loss']!r}; {checkpoint.EDITED}"
        )
    for n, record in enumerate(position["history"]):
        checkpoint.check_fields(
            record, _EPOCH_RULES, f"record {n} of the training history (metadata['train']['history'])"
        )


def load_checkpoint(path: str | Path, backend: str = "numpy") -> Checkpoint:
    """Load a run directory's ``last.npz`` (or a checkpoint file) -> :class:`~scratchlm.models.Checkpoint`."""
    path = Path(path)
    if path.is_dir():
        if not (path / LAST).exists():
            raise CheckpointError(
                f"{path} holds no {LAST}: it is not a run directory, or its run wrote no checkpoint yet"
            )
        path = path / LAST
    return models.load(path, backend=backend)


def open_run(run_dir: str | Path, resume: bool, backend: str = "numpy") -> Checkpoint | None:
    """The checkpoint to resume (``resume`` true) or None for a new run in ``run_dir``.

    A new run refuses a directory that already holds one, so that nothing
    already written is overwritten by accident; resuming a directory without a
    checkpoint is an error too.
    """
    run_dir = Path(run_dir)
    if resume:
        return load_checkpoint(run_dir, backend=backend)
    if (run_dir / LAST).exists():
        raise ResumeError(
            f"{run_dir} already holds a run ({LAST}): continue it with --resume, or choose another run directory"
        )
    return None


class Resumed(NamedTuple):
    """What :func:`resumed` finds in a checkpoint."""

    metadata: dict  # the checkpoint's metadata less "train", "state" and "data" (the Trainer writes those)
    position: dict  # metadata["train"], checked by check_position
    states: list  # per layer, None or the carried state's host arrays (the model's dtype)


def resumed(ckpt: Checkpoint, train) -> Resumed:
    """The position and carried state of ``ckpt``, checked against the batches ``train`` of the resumed run.

    ResumeError when the checkpoint was not written by a Trainer or ``train`` holds other data (its config,
    fingerprint included, must equal the checkpoint's); CheckpointError when a field was edited into nonsense.
    """
    meta = dict(ckpt.metadata)
    position = meta.pop("train", None)
    carried = meta.pop("state", None)
    recorded = meta.pop("data", None)
    if position is None or ckpt.optimizer is None:
        raise ResumeError(
            "this checkpoint holds no training position or optimizer state "
            "(it was not written by a Trainer): start a new run instead"
        )
    check_position(position)
    if not isinstance(recorded, dict):
        raise CheckpointError(
            f"this checkpoint's description of its training data (metadata['data']) is "
            f"{type(recorded).__name__}, not a JSON object; {checkpoint.EDITED}"
        )
    if recorded != train.config:
        differ = sorted(k for k in set(recorded) | set(train.config) if recorded.get(k) != train.config.get(k))
        what = "the corpus or its tokenization" if differ == ["fingerprint"] else ", ".join(differ)
        raise ResumeError(
            f"the training data differ from the checkpoint's ({what}): resume with the "
            "same corpus and data settings, or start a new run"
        )
    if position["batch"] > train.num_batches:
        raise CheckpointError(
            f"this checkpoint's training position, after batch {position['batch']:,} of an "
            f"epoch, lies beyond the {train.num_batches:,} batches of an epoch of its data; "
            f"{checkpoint.EDITED}"
        )
    return Resumed(meta, position, _carried_states(ckpt.model, carried, train.batch_size))


def _carried_states(model, carried, batch_size):
    """The model's carried state from metadata["state"] (checked against the model and the batch size)."""
    shapes = model.state_shapes(batch_size)  # per layer, one shape per state part
    names = model.state_names()
    if carried is None:
        carried = [None] * len(shapes)
    elif not (
        model.stateful
        and isinstance(carried, list)
        and len(carried) == len(shapes)
        and all(
            s is None or isinstance(s, list) and len(s) == len(want) for s, want in zip(carried, shapes, strict=False)
        )
    ):
        parts = "[" + ", ".join(name.split()[0] for name in names[0]) + "]" if names else "[]"
        raise CheckpointError(
            "this checkpoint's carried state (metadata['state']) must be null, or for a "
            f"stateful model a list of {len(shapes)} entries, each null or {parts}"
            + ("" if model.stateful else " (its model is not stateful)")
            + f"; {checkpoint.EDITED}"
        )
    return [
        None
        if s is None
        else tuple(
            decode_array(a, shape, model.backend.dtype, f"the carried {name} (metadata['state'][{n}])")
            for shape, name, a in zip(want, layer_names, s, strict=False)
        )
        for n, (want, layer_names, s) in enumerate(zip(shapes, names, carried, strict=False))
    ]


def carried_state(model: TokenModel, world: World) -> list | None:
    """What a checkpoint's metadata["state"] holds: per layer, None or the stateful model's carried state
    encoded by :func:`encode_array`; None for a model that carries none. Under MPI every rank's rows,
    joined on rank 0 (the other ranks get None)."""
    if not model.stateful:
        return None
    to_host = model.backend.to_host
    state = model.get_state()
    if world.parallel:
        state = [
            None if s is None else [world.gather_rows(to_host(a), axis) for a, axis in zip(s, axes, strict=False)]
            for s, axes in zip(state, state_batch_axes(model), strict=False)
        ]
    if not world.is_root:
        return None
    return [None if s is None else [encode_array(to_host(a)) for a in s] for s in state]


def encode_array(a: numpy.ndarray) -> dict:
    """Host array -> JSON-safe dict (exact bytes in base64)."""
    a = numpy.ascontiguousarray(a)
    return {"dtype": a.dtype.str, "shape": list(a.shape), "base64": base64.b64encode(a.tobytes()).decode("ascii")}


def decode_array(d: dict, shape: tuple, dtype, what: str) -> numpy.ndarray:
    """The host array that :func:`encode_array` turned into ``d``; CheckpointError naming ``what`` unless
    ``d`` holds exactly a ``dtype`` array of ``shape``."""
    dtype = numpy.dtype(dtype)
    wrong = f"{what} must be a {dtype} array of shape {tuple(shape)}"
    if not isinstance(d, dict) or not isinstance(d.get("base64"), str):
        raise CheckpointError(f"{wrong}, encoded as dtype, shape and base64; {checkpoint.EDITED}")
    if d.get("dtype") != dtype.str or d.get("shape") != list(shape):
        raise CheckpointError(
            f"{wrong}, got dtype {d.get('dtype')!r:.20} and shape {d.get('shape')!r:.40}; {checkpoint.EDITED}"
        )
    try:
        data = base64.b64decode(d["base64"], validate=True)
    except ValueError:  # binascii.Error
        raise CheckpointError(f"{wrong}: its base64 text does not decode; {checkpoint.EDITED}") from None
    if len(data) != math.prod(shape) * dtype.itemsize:
        raise CheckpointError(
            f"{wrong}: it holds {len(data):,} bytes instead of {math.prod(shape) * dtype.itemsize:,}"
            f"; {checkpoint.EDITED}"
        )
    return numpy.frombuffer(data, dtype=dtype).reshape(shape).copy()
