"""The Trainer: epochs of training steps, validation, samples, checkpoints, exact resume.

    trainer = Trainer(model, optim.RMSprop(lr=0.01), batching.Windows(ids), run_dir="runs/nietzsche",
                      epochs=60, sampler=Sampler(tokenizer), metadata={"tokenizer": tokenizer.config})
    trainer.fit()
    ...
    trainer = Trainer.resume(load_checkpoint("runs/nietzsche"), batching.Windows(ids), run_dir="runs/nietzsche",
                             epochs=60, sampler=Sampler(tokenizer))
    trainer.fit()                                   # continues with the very next batch

Each batch is one :func:`~scratchlm.train.step.train_step` (or each ``grad_accum`` batches, taken
together: gradient accumulation), at the learning rate its ``schedule`` gives. After each epoch the
trainer computes the validation loss, prints the epoch's mean training loss and
time, writes a checkpoint, and lets a sampler print text at several
temperatures. What a run directory holds is listed in :mod:`scratchlm.rundir`;
how a run resumes exactly, in :mod:`scratchlm.train.resume`; what changes under
MPI, in :mod:`scratchlm.train.parallel`.

No checkpoint is ever written from non-finite weights, so ``last.npz`` stays the
last good state: besides the step's guard, a non-finite validation loss stops
training before the epoch's checkpoint, and samples whose logits are not finite
stop it too.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, NoReturn, Protocol

from .. import distributed, rundir, schedules
from ..errors import ScratchLMError
from ..rundir import BEST, LAST, METRICS, PLOT
from .parallel import join_world, rows, shard_state
from .reporting import MetricsLog, Throughput, plot_metrics, progress_bar
from .resume import ResumeError, carried_state, resumed
from .step import StepResult, TrainingDiverged, quiet_overflow, train_step

if TYPE_CHECKING:
    import numpy

    from ..batching import Batch
    from ..models import Checkpoint, TokenModel
    from ..optim import Optimizer


class Batches(Protocol):
    """What the Trainer asks of a batcher (:mod:`scratchlm.batching`'s Windows, Streams and Padded, IMDB's)."""

    num_batches: int  # batches per epoch
    batch_size: int  # rows per batch (the last batch may have fewer)
    stateful: bool  # consecutive batches continue the same streams (carry the model's state)
    last_only: bool  # y holds one target per row, for the last position
    eos_id: int | None  # the id that ends each sequence, when the data mark ends
    config: dict  # JSON description of the data, fingerprint included (checked on resume)

    def batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """Batches ``start``, ``start`` + 1, ... of ``epoch``, in the order that (seed, epoch) decides."""

    def random_prompt(self, rng: numpy.random.Generator) -> numpy.ndarray:
        """Ids of a random stretch of the data, for samples to start from."""


class Trainer:
    """Train ``model`` with ``optimizer`` on ``train`` batches, validating on ``val`` after each epoch.

    model: a LanguageModel or TransformerLM (stateful when ``train`` is :class:`~scratchlm.batching.Streams`).
    optimizer: an optimizer from :mod:`scratchlm.optim`.
    train, val: batchers from :mod:`scratchlm.batching` (val may be None).
    run_dir: where checkpoints, metrics and the plot go (None: nothing is written).
    epochs: train until this many epochs are complete; max_steps: or stop after
        this many steps in all (counting the steps before a resume).
    checkpoint_every: also write ``last.npz`` every this many steps (None: only per epoch).
    log_every: a step record in metrics.jsonl every this many steps.
    schedule: a learning-rate schedule (:mod:`scratchlm.schedules`): ``optimizer.lr = schedule(step)`` before
        each step, ``step`` the steps taken before it; None keeps the optimizer's lr.
    grad_accum: batches per step (gradient accumulation): each step takes the next ``grad_accum`` batches as
        one batch of their rows (an epoch's last step takes what is left of it); checkpoints fall between steps.
    sampler: called with the trainer after each epoch (e.g. :class:`Sampler`), or None.
    metadata: JSON-serialisable dict stored in every checkpoint (the tokenizer's
        config under "tokenizer", how the corpus was prepared, ...).
    progress: tqdm progress bar: True, False, or None = only on a terminal.
    out: where epoch lines and samples are printed (default sys.stdout).
    on_step: optional callable(trainer) after each step (after its checkpoint).
    """

    def __init__(
        self,
        model: TokenModel,
        optimizer: Optimizer,
        train: Batches,
        val: Batches | None = None,
        *,
        run_dir: str | Path | None = None,
        epochs: int = 1,
        max_steps: int | None = None,
        checkpoint_every: int | None = 1000,
        log_every: int = 50,
        sampler: Callable[[Trainer], None] | None = None,
        metadata: dict | None = None,
        progress: bool | None = None,
        out: IO[str] | None = None,
        on_step: Callable[[Trainer], None] | None = None,
        schedule: schedules.Schedule | None = None,
        grad_accum: int = 1,
    ):
        if model.stateful and not train.stateful:
            raise ScratchLMError(
                "a stateful model carries its state from batch to batch, which only makes "
                "sense for Streams batches: build the model with stateful=False"
            )
        if int(epochs) < 1 or (max_steps is not None and int(max_steps) < 1):
            raise ScratchLMError(f"epochs and max_steps must be at least 1, got {epochs} and {max_steps}")
        if checkpoint_every is not None and int(checkpoint_every) < 1:
            raise ScratchLMError(f"checkpoint_every must be at least 1 (or None), got {checkpoint_every}")
        if isinstance(grad_accum, bool) or not isinstance(grad_accum, int) or grad_accum < 1:
            raise ScratchLMError(f"grad_accum must be a whole number of batches per step, at least 1, got {grad_accum}")
        if schedule is not None and not isinstance(schedule, schedules.Schedule):
            raise ScratchLMError(f"schedule must be a scratchlm.schedules.Schedule (or None), got {schedule!r:.60}")
        self.world = distributed.world()
        if self.world.parallel:
            for what, batches in (("training", train), ("validation", val)):
                if batches is not None and batches.stateful and batches.batch_size % self.world.size:
                    raise ScratchLMError(
                        f"the {what} streams' batch size {batches.batch_size} does not divide among "
                        f"{self.world.size} MPI ranks: each rank carries the state of its own rows, so the "
                        f"batch size must be a multiple of the number of ranks"
                    )
        self.model, self.optimizer, self.train, self.val = model, optimizer, train, val
        self.schedule, self.grad_accum = schedule, grad_accum
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.epochs = int(epochs)
        self.max_steps = None if max_steps is None else int(max_steps)
        self.checkpoint_every = None if checkpoint_every is None else int(checkpoint_every)
        self.log_every = max(1, int(log_every))
        self.sampler, self.on_step, self.progress = sampler, on_step, progress
        self.metadata = dict(metadata or {})
        self.out = out
        # The position: what the next step is.
        self.epoch = 0  # current epoch, 0-based
        self.batch = 0  # next batch within it
        self.step = 0  # steps taken in all
        self.best_val_loss = None
        self.last_loss = None  # loss of the latest step
        self._epoch_loss = 0.0  # Σ loss·targets over the epoch's steps so far
        self._epoch_targets = 0
        self._epoch_seconds = 0.0
        self._window_loss = 0.0  # Σ loss of the steps since the last step record
        self._window_skipped = 0  # steps of that window not taken here (before a resume with no record)
        self.saved_step = None  # step of the latest checkpoint written (or resumed from)
        self.history = []  # one dict per completed epoch
        self._metrics = None  # the MetricsLog while fit() runs (rank 0 of a run with a run_dir)
        self._state_sharded = False  # MPI: the model carries only this rank's rows of the state

    @classmethod
    def resume(cls, ckpt: Checkpoint, train: Batches, val: Batches | None = None, **kwargs) -> Trainer:
        """A Trainer that continues the run saved in ``ckpt`` (a :class:`~scratchlm.models.Checkpoint`, e.g. from
        :func:`load_checkpoint`) exactly where it stopped. ``train`` must be built from the same
        data with the same settings (checked by fingerprint); other arguments as for ``Trainer``,
        except the schedule and grad_accum, which are the checkpoint's.
        """
        fixed = sorted({"schedule", "grad_accum"} & set(kwargs))
        if fixed:
            raise ResumeError(f"{', '.join(fixed)}: a resumed run goes on with its checkpoint's; leave it out")
        metadata, position, states = resumed(ckpt, train)
        schedule = position.get("schedule")
        trainer = cls(
            ckpt.model,
            ckpt.optimizer,
            train,
            val,
            metadata=metadata,
            schedule=None if schedule is None else schedules.from_config(schedule),
            grad_accum=position.get("grad_accum", 1),
            **kwargs,
        )
        trainer.epoch, trainer.batch, trainer.step = position["epoch"], position["batch"], position["step"]
        trainer.best_val_loss = position["best_val_loss"]
        trainer._epoch_loss = position["epoch_loss"]
        trainer._epoch_targets = position["epoch_targets"]
        trainer._epoch_seconds = position["epoch_seconds"]
        if "window_loss" in position:
            trainer._window_loss = position["window_loss"]
        else:  # an older checkpoint: the window's earlier losses are unknown
            trainer._window_skipped = trainer.step % trainer.log_every
        trainer.history = position["history"]
        trainer.saved_step = trainer.step
        ckpt.model.set_state(states)
        if ckpt.rng is not None:
            ckpt.model.dropout_rng = ckpt.rng  # the next dropout masks are the uninterrupted run's
        return trainer

    def _position(self, epoch_done: bool) -> dict:
        """What a checkpoint's metadata["train"] holds (read back by :meth:`resume`). epoch_done: the epoch's
        last batch is taken; the position is the start of the next epoch."""
        epoch, batch = (self.epoch + 1, 0) if epoch_done else (self.epoch, self.batch)
        return {
            "epoch": epoch,
            "batch": batch,
            "step": self.step,
            "best_val_loss": self.best_val_loss,
            "epoch_loss": self._epoch_loss,
            "epoch_targets": self._epoch_targets,
            "epoch_seconds": self._epoch_seconds,
            "window_loss": self._window_loss,
            "history": self.history,
            "schedule": None if self.schedule is None else self.schedule.config(),
            "grad_accum": self.grad_accum,
        }

    # -- the loop -------------------------------------------------------------------
    def fit(self) -> list[dict]:
        """Train until ``epochs`` are complete or ``max_steps`` are taken; returns the epoch history."""
        with contextlib.ExitStack() as stack:
            if self.world.parallel:
                stack.enter_context(self.world.failing_together())
            if self.run_dir is not None:
                stack.enter_context(rundir.lock(self.run_dir))
            if self.world.parallel:
                join_world(self.world, self.model, self.optimizer, self.train, self.val)
                if self.model.stateful and not self._state_sharded:
                    shard_state(self.world, self.model, self.train.batch_size)
                    self._state_sharded = True
            return self._fit()

    def _fit(self):
        bad = self._non_finite_params()
        if bad:
            raise TrainingDiverged(
                f"the weights {', '.join(bad)} are not finite before training starts, so "
                "nothing can be learnt from them: resume from an earlier checkpoint or start "
                "a new run"
            )
        if self.run_dir is not None:
            if self.saved_step is None and (self.run_dir / LAST).exists():
                raise ResumeError(
                    f"{self.run_dir} already holds a run ({LAST}): resume it, or choose another run directory"
                )
            if self.world.is_root:
                self._metrics = MetricsLog(self.run_dir / METRICS)
        try:
            self._record(
                {
                    "event": "resume" if self.step else "start",
                    "step": self.step,
                    "epoch": self.epoch + 1,
                    "time": time.time(),
                }
            )
            while not self.done:
                if self.batch == 0:
                    self._begin_epoch()
                if not self._run_epoch():
                    break  # max_steps reached inside the epoch
                self._end_epoch()
            if self.saved_step != self.step:
                self._save(LAST)
        finally:
            if self._metrics is not None:
                self._metrics.close()
                self._metrics = None
            self._plot()
        return self.history

    @property
    def done(self) -> bool:
        """True when nothing is left to do: ``epochs`` complete or ``max_steps`` taken."""
        return self.epoch >= self.epochs or self._out_of_steps()

    def _out_of_steps(self):
        return self.max_steps is not None and self.step >= self.max_steps

    def _begin_epoch(self):
        self.model.reset_state()  # streams start over from zero state
        self._epoch_loss, self._epoch_targets, self._epoch_seconds = 0.0, 0, 0.0

    def _run_epoch(self):
        """Steps from the current batch to the epoch's end; False if max_steps stopped it first."""
        n = self.train.num_batches
        bar = progress_bar(
            n, self.batch, f"epoch {self.epoch + 1}/{self.epochs}", show=self.progress if self.world.is_root else False
        )
        clock = Throughput()
        try:
            for micro in _groups(self.train.batches(self.epoch, self.batch), self.grad_accum):
                result = self._step(micro)
                seconds, rate = clock.lap(result.tokens)
                self._epoch_seconds += seconds
                bar.set_postfix(
                    loss=f"{self._epoch_loss / self._epoch_targets:.4f}", tok_s=f"{rate:,.0f}", refresh=False
                )
                bar.update(len(micro))
                self._after_step(result, rate, clock)
                if self._out_of_steps() and self.batch < n:
                    return False
                clock.restart()  # checkpoint writes and hooks are not step time
        finally:
            bar.close()
        return True

    def _step(self, micro: list[Batch]) -> StepResult:
        """:func:`train_step` on the micro-batches ``micro`` (one batch without accumulation) at the schedule's
        learning rate, then the position and the epoch's and the window's sums move on."""
        if self.schedule is not None:
            self.optimizer.lr = self.schedule(self.step)
        try:
            result = train_step(self.model, self.optimizer, micro, last_only=self.train.last_only, world=self.world)
        except TrainingDiverged as exc:
            self._diverged(str(exc))
        targets = sum(b.targets for b in micro)
        self.step += 1
        self.batch += len(micro)
        self.last_loss = result.loss
        self._epoch_loss += result.loss * targets
        self._epoch_targets += targets
        self._window_loss += result.loss
        return result

    def _after_step(self, result, rate, clock):
        """A step record every ``log_every`` steps, a checkpoint every ``checkpoint_every``, then ``on_step``."""
        if self.step % self.log_every == 0:
            steps = self.log_every - self._window_skipped
            self._record(
                {
                    "event": "step",
                    "step": self.step,
                    "epoch": self.epoch + 1,
                    "loss": self._window_loss / steps,
                    "grad_norm": result.grad_norm,
                    "tokens_per_s": rate,
                }
            )
            self._window_loss, self._window_skipped = 0.0, 0
            clock.new_window()
        if self.checkpoint_every and self.step % self.checkpoint_every == 0:
            self._save(LAST)
        if self.on_step is not None:
            self.on_step(self)

    def _end_epoch(self):
        train_loss = self._epoch_loss / max(self._epoch_targets, 1)
        with quiet_overflow():
            val_loss = self.evaluate(self.val) if self.val is not None else None
        if val_loss is not None and not math.isfinite(val_loss):  # the weights overflow: before saving them
            self._diverged(f"the validation loss after step {self.step:,} is {val_loss}")
        improved = val_loss is not None and (self.best_val_loss is None or val_loss < self.best_val_loss)
        if improved:
            self.best_val_loss = val_loss
        record = {
            "event": "epoch",
            "epoch": self.epoch + 1,
            "step": self.step,
            "loss": train_loss,
            "val_loss": val_loss,
            "seconds": self._epoch_seconds,
        }
        self.history.append(record)
        self._record(record)
        line = f"epoch {self.epoch + 1}/{self.epochs}  loss {train_loss:.4f}"
        if val_loss is not None:
            line += f"  val_loss {val_loss:.4f}" + (" (best)" if improved else "")
        self.print(line + f"  {self._epoch_seconds:.1f} s  ({self.step:,} steps)")
        self._save(LAST, epoch_done=True)  # first the checkpoint: a Ctrl-C while sampling loses nothing
        if improved:
            self._save(BEST, epoch_done=True)
        self._plot()
        if self.sampler is not None and self.world.is_root:
            self.sampler(self)
        self.epoch, self.batch = self.epoch + 1, 0

    def evaluate(self, batches: Batches) -> float:
        """Mean loss per scored target over all of ``batches`` (epoch 0 order), without training.

        The model's carried state is set aside and restored, so evaluating in the
        middle of a stateful run does not change what the next training step sees.
        """
        carried = self.model.get_state()
        total, count = 0.0, 0
        if batches.num_batches < 1:
            raise ScratchLMError("the validation set holds no batch: give it more data, or no validation set")
        try:
            self.model.reset_state()
            for batch in batches.batches(0):
                self.world.stop_if_interrupted()  # MPI: Ctrl-C stops every rank here too
                if not batches.stateful:
                    self.model.reset_state()
                if self.world.parallel:  # this rank's rows; the sums are added below
                    lo, hi = self.world.shard(len(batch.x))
                    if hi == lo:
                        continue
                    batch = rows(batch, lo, hi, batches.last_only)
                loss = self.model.loss(batch.x, batch.y, mask=batch.mask, last_only=batches.last_only)
                total, count = total + loss * batch.targets, count + batch.targets
        finally:
            self.model.set_state(carried)
        if self.world.parallel:
            total, count = self.world.sum([total, count])
        return total / count

    # -- output -------------------------------------------------------------------------
    def print(self, text: str) -> None:
        """Print a line of the run's output (under MPI on rank 0 only)."""
        if self.world.is_root:
            print(text, file=self.out or sys.stdout, flush=True)

    def _record(self, record):
        if self._metrics is not None:
            self._metrics.record(record)

    def _plot(self):
        if self.run_dir is not None and self.world.is_root and (self.run_dir / METRICS).exists():
            plot_metrics(self.run_dir / METRICS, self.run_dir / PLOT)

    # -- checkpoints and the guard ---------------------------------------------------------
    @property
    def last_checkpoint(self) -> Path | None:
        """Path of ``last.npz`` if one was written or resumed from, else None."""
        return None if self.run_dir is None or self.saved_step is None else self.run_dir / LAST

    def _non_finite_params(self):
        xp = self.model.backend.xp
        return [k for k, p in self.model.params.items() if not bool(xp.isfinite(p).all())]

    def _save(self, name, epoch_done=False):
        """Write a checkpoint of the current position (atomically; never from non-finite weights).

        epoch_done: the epoch's last batch is taken; the checkpoint's position is
        the start of the next epoch (written before the epoch's samples, which
        come before the trainer moves on).
        """
        if self.run_dir is None:
            return
        bad = self._non_finite_params()
        if bad:
            self._diverged(f"weights {', '.join(bad)} are not finite")
        metadata = {
            **self.metadata,
            "data": self.train.config,
            "train": self._position(epoch_done),
            "state": carried_state(self.model, self.world),
        }
        if self.world.is_root:
            self.model.save(
                self.run_dir / name, optimizer=self.optimizer, rng=self.model.dropout_rng, metadata=metadata
            )
        if name == LAST:
            self.saved_step = self.step

    def _diverged(self, what) -> NoReturn:
        """Record a "diverged" event and raise TrainingDiverged: at which step, ``what`` went wrong, what to do."""
        self._record({"event": "diverged", "step": self.step + 1, "epoch": self.epoch + 1})
        if self.last_checkpoint is not None:
            advice = (
                f"the last good checkpoint, {self.last_checkpoint} (step {self.saved_step}), is kept: "
                "resume from it with a lower learning rate or gradient clipping"
            )
        else:
            advice = "no checkpoint was written yet: start again with a lower learning rate or gradient clipping"
        raise TrainingDiverged(
            f"training stopped at step {self.step + 1} (epoch {self.epoch + 1}): {what}; " + advice
        ) from None


def _groups(batches: Iterator[Batch], size: int) -> Iterator[list[Batch]]:
    """Lists of ``size`` consecutive batches (the last one shorter when they run out): one step's micro-batches."""
    group = []
    for batch in batches:
        group.append(batch)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group
