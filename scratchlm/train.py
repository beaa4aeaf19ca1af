"""The training loop: epochs of batches, validation, samples, checkpoints, exact resume.

    trainer = Trainer(model, optim.RMSprop(lr=0.01), data.Windows(ids), run_dir="runs/nietzsche",
                      epochs=60, sampler=Sampler(tokenizer), metadata={"tokenizer": tokenizer.config})
    trainer.fit()
    ...
    trainer = Trainer.resume(load_checkpoint("runs/nietzsche"), data.Windows(ids), run_dir="runs/nietzsche",
                             epochs=60, sampler=Sampler(tokenizer))
    trainer.fit()                                   # continues with the very next batch

One step is  loss, grads = model.loss_and_grads(x, y, mask)  then  optimizer.step(params, grads).
After each epoch the trainer computes the validation loss, prints the epoch's
mean training loss and time, lets a sampler print text at several temperatures,
and writes a checkpoint.

A run directory holds

    last.npz        the latest checkpoint (every ``checkpoint_every`` steps and after each epoch)
    best.npz        the checkpoint with the lowest validation loss so far
    metrics.jsonl   one JSON object per line: step records every ``log_every`` steps,
                    one record per epoch, and start / resume / diverged events
    loss.png        training and validation loss curves (only when matplotlib is installed)

Exact resume. Everything that decides the next step is in the checkpoint: the
weights and optimizer slots (exact float arrays), the position (epoch and batch
within it), the state of the dropout masks' generator, and, for stateful
streams, the recurrent state carried into the next chunk. The batch order is a
function of (seed, epoch) (see :mod:`scratchlm.batching`), so a resumed run gathers
exactly the batches the uninterrupted run would have, from exactly the same
weights and state: its losses are equal, bit for bit. Samples and validation
never touch the training state (their randomness comes from their own seeds,
and the carried state is set aside while validating). A run killed between
checkpoints loses only the steps after its last checkpoint, and repeats them
identically on resume.

NaN/Inf guard. Before each update the loss and the global gradient norm are
checked; a non-finite value stops training with :class:`TrainingDiverged`
before the weights are touched, and no checkpoint is ever written from
non-finite weights, so ``last.npz`` stays the last good state. Finite weights
can still overflow: a non-finite validation loss stops training before the
epoch's checkpoint, and samples whose logits are not finite stop it too. NumPy's
overflow warnings are silenced on the way, so the one error says it all.

Data parallel. Started by ``mpiexec -n N`` (see :mod:`scratchlm.distributed` and
docs/distributed.md), every rank starts from rank 0's weights, takes the rows
[r·B/N, (r+1)·B/N) of each global batch and computes their mean loss and
gradients; one all-reduce of gradient·tokens, divided by the global token
count, gives every rank the single-process step of the global batch, clipped
afterwards by the optimizer. Dropout masks are drawn for the global batch on
every rank (one generator, the same everywhere) and sliced. Rank 0 alone
prints, logs and writes checkpoints; a checkpoint holds the whole carried
state (gathered from the ranks), so a run resumes with any number of ranks
that divides the batch size of stateful streams. At the start every rank
checks that it has rank 0's data, backend and dtype, and they stop together
(one line from rank 0) if any has not; with the cupy backend the all-reduce
then runs through NCCL on the GPUs, one per rank. Ctrl-C stops every rank at
the same step: each step's all-reduce also counts the ranks that Ctrl-C
reached, and when any did every rank raises
:class:`~scratchlm.distributed.Interrupted` there, before taking the step
(validation checks between its batches, the samples stop at once).
"""

import base64
import contextlib
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy
from tqdm import tqdm

from . import checkpoint, distributed, models, optim, rundir, sampling
from .errors import CheckpointError, SamplingError, ScratchLMError
from .budget import check_fits
from .files import atomic_write
from .models.base import generation_bytes
from .text import VocabularyError, listing

LAST, BEST, METRICS, PLOT = "last.npz", "best.npz", "metrics.jsonl", "loss.png"
TEMPERATURES = (0.2, 0.5, 1.0, 1.2)


def _quiet_overflow():
    """NumPy's overflow warnings off: a diverging model's NaN and infinities are reported once, as
    :class:`TrainingDiverged`, not as a RuntimeWarning per matmul before it."""
    return numpy.errstate(over="ignore", invalid="ignore", divide="ignore")


class TrainingDiverged(ScratchLMError):
    """The loss, the gradients, the validation loss or the samples' logits became NaN or infinite."""


class ResumeError(ScratchLMError):
    """A checkpoint cannot be resumed with the data or options given."""


_count, _number = checkpoint.whole_at_least(0), checkpoint.is_number


# What a Trainer's position in metadata["train"] holds: field -> (check, what it must be).
_POSITION_RULES = {
    "epoch": (_count, "a whole number >= 0"), "batch": (_count, "a whole number >= 0"),
    "step": (_count, "a whole number >= 0"), "best_val_loss": (lambda v: v is None or _number(v), "null or a number"),
    "epoch_loss": (_number, "a number"), "epoch_targets": (_count, "a whole number >= 0"),
    "epoch_seconds": (_number, "a number"), "history": (lambda v: isinstance(v, list), "a list of epoch records"),
}
_EPOCH_RULES = {"epoch": (checkpoint.whole_at_least(1), "a positive whole number"),
                "step": (_count, "a whole number >= 0"),
                "loss": (_number, "a number"), "val_loss": (lambda v: v is None or _number(v), "null or a number"),
                "seconds": (_number, "a number")}


def check_position(position):
    """CheckpointError unless ``position`` is a training position as a Trainer stores it in ``metadata["train"]``.

    epoch, batch, step and epoch_targets whole numbers >= 0; best_val_loss null or a number; epoch_loss,
    epoch_seconds and (when present) window_loss numbers; history a list of epoch records, each with epoch
    (>= 1), step, loss, val_loss (null or a number) and seconds. Whether ``batch`` lies within an epoch depends
    on the data: :meth:`Trainer.resume` checks it.
    """
    checkpoint.check_fields(position, _POSITION_RULES, "the training position (metadata['train'])")
    if not _number(position.get("window_loss", 0.0)):       # absent in checkpoints written before it was kept
        raise CheckpointError("the training position (metadata['train']): field 'window_loss' must be a number, "
                              f"got {position['window_loss']!r}; {checkpoint.EDITED}")
    for n, record in enumerate(position["history"]):
        checkpoint.check_fields(record, _EPOCH_RULES,
                                f"record {n} of the training history (metadata['train']['history'])")


def load_checkpoint(path, backend="numpy"):
    """Load a run directory's ``last.npz`` (or a checkpoint file) -> :class:`Checkpoint`."""
    path = Path(path)
    if path.is_dir():
        if not (path / LAST).exists():
            raise CheckpointError(f"{path} holds no {LAST}: it is not a run directory, or its run wrote no "
                                  "checkpoint yet")
        path = path / LAST
    return models.load(path, backend=backend)


def open_run(run_dir, resume, backend="numpy"):
    """The checkpoint to resume (``resume`` true) or None for a new run in ``run_dir``.

    A new run refuses a directory that already holds one, so that nothing
    already written is overwritten by accident; resuming a directory without a
    checkpoint is an error too.
    """
    run_dir = Path(run_dir)
    if resume:
        return load_checkpoint(run_dir, backend=backend)
    if (run_dir / LAST).exists():
        raise ResumeError(f"{run_dir} already holds a run ({LAST}): continue it with --resume, "
                          "or choose another run directory")
    return None


def start_or_resume(ckpt, train, val, build, tokenizer, **options):
    """The Trainer of a run: continuing ``ckpt`` (from :func:`open_run`), or new on ``build()``'s (model, optimizer).

    A new run keeps the tokenizer's config in its checkpoints, so that sampling
    and resuming find the vocabulary. ``options`` go to :class:`Trainer`.
    """
    if ckpt:
        return Trainer.resume(ckpt, train, val, **options)
    model, optimizer = build()
    return Trainer(model, optimizer, train, val, metadata={"tokenizer": tokenizer.config}, **options)


def run_script(name, run_dir, body):
    """Run ``body()`` with the command-line contract; returns the exit code.

    0 when it finishes; 2 and one line on stderr for a ScratchLMError (bad
    input, or a run directory another run is using: ``body`` runs holding
    ``run_dir``'s lock); 130 on Ctrl-C, saying how to continue from the run's
    last checkpoint.
    """
    try:
        with rundir.lock(run_dir):
            body()
    except distributed.AgreedFailure as exc:          # MPI: every rank stops here; rank 0 says why
        if exc.report:
            print(f"{name}: error{exc.where}: {exc}", file=sys.stderr)
        return exc.code
    except ScratchLMError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if distributed.world().is_root:
            print(f"\n{name}: interrupted; continue with --resume (from {Path(run_dir) / LAST})", file=sys.stderr)
        return 130
    return 0


class Sampler:
    """End-of-epoch text samples at several temperatures, as the book's callback prints them.

    tokenizer: turns ids back into text.
    temperatures, length: one sample of ``length`` tokens per temperature (the
        book: 0.2, 0.5, 1.0, 1.2 and 400 characters).
    prime: text every sample starts from, or None for a random window of the
        training data (the book's seed sentence; <eos> for padded sequences).
        A prime with tokens the vocabulary lacks is refused at once (a word-level
        vocabulary with <unk> maps them to it), not silently replaced, and so is
        a prime of no known token (empty, only <unk>, or only what the tokenizer
        drops, such as punctuation for a VectorTokenizer).
    The options are checked here too (:func:`scratchlm.sampling.check_options`),
    before any training; logits that are not finite when sampling mean the model
    diverged, and stop training with :class:`TrainingDiverged`.
    Reserved ids (<pad>, <unk>, and <eos> unless the data end sequences with it)
    are never sampled; with <eos>-terminated data a sample stops at <eos>.
    Randomness comes from ``numpy.random.default_rng([seed, epoch])``: sampling
    never changes what training does next.
    """

    def __init__(self, tokenizer, temperatures=TEMPERATURES, length=400, prime=None, top_k=None, top_p=None,
                 seed=0):
        self.tokenizer = tokenizer
        self.temperatures = [float(t) for t in temperatures]
        self.length, self.prime, self.top_k, self.top_p, self.seed = int(length), prime, top_k, top_p, seed
        for temperature in self.temperatures:
            sampling.check_options(temperature, top_k, top_p)
        check_fits(generation_bytes(1, self.length), f"samples of {self.length:,} tokens",
                   "ask for shorter samples (--sample-length)")
        self.prime_ids = None if prime is None else _prime_ids(tokenizer, prime)

    def __call__(self, trainer):
        """Print one sample per temperature from ``trainer.model`` (seeded by ``trainer.epoch``)."""
        tok = self.tokenizer
        rng = numpy.random.default_rng([self.seed, trainer.epoch])
        eos = trainer.train.eos_id
        if self.prime_ids is None:
            prompt = trainer.train.random_prompt(rng)
        elif eos is not None:
            prompt = numpy.concatenate([[eos], self.prime_ids])
        else:
            prompt = self.prime_ids
        banned = [i for i in tok.special_ids if i != eos]
        shown = render(tok, prompt)
        trainer.print(f'--- samples at step {trainer.step:,} (epoch {trainer.epoch + 1}), primed with: "{shown}"')
        for temperature in self.temperatures:
            if trainer.world.interrupted:        # MPI: Ctrl-C; the ranks stop together at the next step
                return
            try:
                with _quiet_overflow():
                    out = trainer.model.generate(prompt, self.length, temperature=temperature, top_k=self.top_k,
                                                 top_p=self.top_p, eos_id=eos, banned_ids=banned,
                                                 seed=int(rng.integers(2 ** 32)))
            except SamplingError as exc:         # the options were checked when made: the logits are not finite
                saved = "" if trainer.last_checkpoint is None else f" (just saved in {trainer.last_checkpoint})"
                raise TrainingDiverged(f"training stopped after step {trainer.step:,} (epoch {trainer.epoch + 1}): "
                                       f"no sample can be drawn ({exc}): the weights{saved} have diverged; start "
                                       "again with a lower learning rate or gradient clipping") from None
            trainer.print(f"----- temperature {temperature:g}\n{shown}{render(tok, out)}")


def _prime_ids(tokenizer, prime):
    """The ids of the samples' prime; VocabularyError if it holds a token the vocabulary lacks (a word-level
    vocabulary with <unk> maps those to it) or no known token at all."""
    unknown = "unk" if tokenizer.kind in ("word", "vector") and tokenizer.unk_id is not None else "error"
    try:
        ids = tokenizer.encode(prime, unknown=unknown).astype(numpy.int64)
    except VocabularyError as exc:
        raise VocabularyError(f"the samples' prime {prime!r} holds {listing(exc.missing)}, which the "
                              "vocabulary lacks: choose a prime made of the corpus' own tokens", exc.missing) from None
    known = ids if tokenizer.unk_id is None else ids[ids != tokenizer.unk_id]
    if len(known) == 0:
        raise VocabularyError(f"the samples' prime {prime!r} encodes to {'<unk> only' if len(ids) else 'no token'}, "
                              "so the samples would have nothing to start from: choose a prime made of the corpus' "
                              "own tokens, or give none (the samples then start from the training data)")
    return ids


def render(tokenizer, ids):
    """Text of ``ids`` without <eos>/<pad> (word tokens joined by spaces, a leading space when they follow)."""
    ids = [int(i) for i in ids if int(i) not in (tokenizer.eos_id, tokenizer.pad_id)]
    text = tokenizer.decode(ids)
    return text if tokenizer.kind == "char" or not text else " " + text


class Trainer:
    """Train ``model`` with ``optimizer`` on ``train`` batches, validating on ``val`` after each epoch.

    model: a LanguageModel (stateful when ``train`` is :class:`~scratchlm.batching.Streams`).
    optimizer: an optimizer from :mod:`scratchlm.optim`.
    train, val: batchers from :mod:`scratchlm.batching` (val may be None).
    run_dir: where checkpoints, metrics and the plot go (None: nothing is written).
    epochs: train until this many epochs are complete; max_steps: or stop after
        this many steps in all (counting the steps before a resume).
    checkpoint_every: also write ``last.npz`` every this many steps (None: only per epoch).
    log_every: a step record in metrics.jsonl every this many steps.
    sampler: called with the trainer after each epoch (e.g. :class:`Sampler`), or None.
    metadata: JSON-serialisable dict stored in every checkpoint (the tokenizer's
        config under "tokenizer", how the corpus was prepared, ...).
    progress: tqdm progress bar: True, False, or None = only on a terminal.
    out: where epoch lines and samples are printed (default sys.stdout).
    on_step: optional callable(trainer) after each step (after its checkpoint).
    """

    def __init__(self, model, optimizer, train, val=None, *, run_dir=None, epochs=1, max_steps=None,
                 checkpoint_every=1000, log_every=50, sampler=None, metadata=None, progress=None, out=None,
                 on_step=None):
        if model.stateful and not train.stateful:
            raise ScratchLMError("a stateful model carries its state from batch to batch, which only makes "
                                 "sense for Streams batches: build the model with stateful=False")
        if int(epochs) < 1 or (max_steps is not None and int(max_steps) < 1):
            raise ScratchLMError(f"epochs and max_steps must be at least 1, got {epochs} and {max_steps}")
        if checkpoint_every is not None and int(checkpoint_every) < 1:
            raise ScratchLMError(f"checkpoint_every must be at least 1 (or None), got {checkpoint_every}")
        self.world = distributed.world()
        if self.world.parallel:
            for what, batches in (("training", train), ("validation", val)):
                if batches is not None and batches.stateful and batches.batch_size % self.world.size:
                    raise ScratchLMError(
                        f"the {what} streams' batch size {batches.batch_size} does not divide among "
                        f"{self.world.size} MPI ranks: each rank carries the state of its own rows, so the "
                        f"batch size must be a multiple of the number of ranks")
        self.model, self.optimizer, self.train, self.val = model, optimizer, train, val
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.epochs = int(epochs)
        self.max_steps = None if max_steps is None else int(max_steps)
        self.checkpoint_every = None if checkpoint_every is None else int(checkpoint_every)
        self.log_every = max(1, int(log_every))
        self.sampler, self.on_step, self.progress = sampler, on_step, progress
        self.metadata = dict(metadata or {})
        self.out = out
        # The position: what the next step is.
        self.epoch = 0                      # current epoch, 0-based
        self.batch = 0                      # next batch within it
        self.step = 0                       # steps taken in all
        self.best_val_loss = None
        self.last_loss = None               # loss of the latest step
        self._epoch_loss = 0.0              # Σ loss·targets over the epoch's steps so far
        self._epoch_targets = 0
        self._epoch_seconds = 0.0
        self._window_loss = 0.0             # Σ loss of the steps since the last step record
        self._window_skipped = 0            # steps of that window not taken here (before a resume with no record)
        self.saved_step = None              # step of the latest checkpoint written (or resumed from)
        self.history = []                   # one dict per completed epoch
        self._metrics = None
        self._state_sharded = False         # MPI: the model carries only this rank's rows of the state

    # -- resume ---------------------------------------------------------------------
    @classmethod
    def resume(cls, ckpt, train, val=None, **kwargs):
        """A Trainer that continues the run saved in ``ckpt`` (a :class:`Checkpoint`, e.g. from
        :func:`load_checkpoint`) exactly where it stopped. ``train`` must be built from the same
        data with the same settings (checked by fingerprint); other arguments as for ``Trainer``.
        """
        meta = dict(ckpt.metadata)
        position = meta.pop("train", None)
        carried = meta.pop("state", None)
        recorded = meta.pop("data", None)
        if position is None or ckpt.optimizer is None:
            raise ResumeError("this checkpoint holds no training position or optimizer state "
                              "(it was not written by a Trainer): start a new run instead")
        check_position(position)
        if not isinstance(recorded, dict):
            raise CheckpointError(f"this checkpoint's description of its training data (metadata['data']) is "
                                  f"{type(recorded).__name__}, not a JSON object; {checkpoint.EDITED}")
        if recorded != train.config:
            differ = sorted(k for k in set(recorded) | set(train.config) if recorded.get(k) != train.config.get(k))
            what = "the corpus or its tokenization" if differ == ["fingerprint"] else ", ".join(differ)
            raise ResumeError(f"the training data differ from the checkpoint's ({what}): resume with the "
                              "same corpus and data settings, or start a new run")
        if position["batch"] > train.num_batches:
            raise CheckpointError(f"this checkpoint's training position, after batch {position['batch']:,} of an "
                                  f"epoch, lies beyond the {train.num_batches:,} batches of an epoch of its data; "
                                  f"{checkpoint.EDITED}")
        model = ckpt.model
        shapes = model.state_shapes(train.batch_size)                     # per layer, one shape per state part
        names = model.state_names()
        if carried is None:
            carried = [None] * len(shapes)
        elif not (model.stateful and isinstance(carried, list) and len(carried) == len(shapes)
                  and all(s is None or isinstance(s, list) and len(s) == len(want)
                          for s, want in zip(carried, shapes))):
            parts = "[" + ", ".join(name.split()[0] for name in names[0]) + "]" if names else "[]"
            raise CheckpointError("this checkpoint's carried state (metadata['state']) must be null, or for a "
                                  f"stateful model a list of {len(shapes)} entries, each null or {parts}"
                                  + ("" if model.stateful else " (its model is not stateful)")
                                  + f"; {checkpoint.EDITED}")
        states = [None if s is None else tuple(
                      _decode_array(a, shape, model.backend.dtype, f"the carried {name} (metadata['state'][{n}])")
                      for shape, name, a in zip(want, layer_names, s))
                  for n, (want, layer_names, s) in enumerate(zip(shapes, names, carried))]
        trainer = cls(model, ckpt.optimizer, train, val, metadata=meta, **kwargs)
        trainer.epoch, trainer.batch, trainer.step = position["epoch"], position["batch"], position["step"]
        trainer.best_val_loss = position["best_val_loss"]
        trainer._epoch_loss = position["epoch_loss"]
        trainer._epoch_targets = position["epoch_targets"]
        trainer._epoch_seconds = position["epoch_seconds"]
        if "window_loss" in position:
            trainer._window_loss = position["window_loss"]
        else:                                    # an older checkpoint: the window's earlier losses are unknown
            trainer._window_skipped = trainer.step % trainer.log_every
        trainer.history = position["history"]
        trainer.saved_step = trainer.step
        model.set_state(states)
        if ckpt.rng is not None:
            model.dropout_rng = ckpt.rng                 # the next dropout masks are the uninterrupted run's
        return trainer

    # -- the loop -------------------------------------------------------------------
    def fit(self):
        """Train until ``epochs`` are complete or ``max_steps`` are taken; returns the epoch history."""
        with contextlib.ExitStack() as stack:
            if self.world.parallel:
                stack.enter_context(self.world.failing_together())
            if self.run_dir is not None:
                stack.enter_context(rundir.lock(self.run_dir))
            if self.world.parallel:
                self._join_world()
            return self._fit()

    def _join_world(self):
        """MPI: wait for every rank, take rank 0's weights, optimizer slots and dropout generator, and keep
        only this rank's rows of the carried state."""
        world, model = self.world, self.model
        world.wait_for_all()
        backend = model.backend
        mine = {"training": None if self.train is None else self.train.config,
                "validation": None if self.val is None else self.val.config,
                "backend": (backend.name, backend.dtype.name)}
        root = world.broadcast(mine)
        error = None                                  # every rank checks, then they stop together (agree)
        for what in ("training", "validation"):
            if error is None and root[what] != mine[what]:
                error = ScratchLMError(f"rank {world.rank}'s {what} data differ from rank 0's (corpus, tokenization "
                                       "or batch settings): every rank must read the same corpus with the same "
                                       "settings")
        if error is None and root["backend"] != mine["backend"]:
            error = ScratchLMError(f"rank {world.rank} trains with the {backend.name} backend in {backend.dtype.name}, "
                                   f"rank 0 with {root['backend'][0]} in {root['backend'][1]}: every rank must use "
                                   "the same backend and dtype (name the backend rather than 'auto' when the "
                                   "machines differ)")
        if error is None and backend.name == "cupy":
            try:
                world.check_device(model.params)
            except ScratchLMError as exc:
                error = exc
        world.agree(error)
        if backend.name == "cupy":
            world.start_nccl()                        # the all-reduce on device buffers, when CuPy has NCCL
        world.broadcast_arrays(model.params, model.backend)
        world.broadcast_arrays(self.optimizer.slots, model.backend)
        if model.dropout_rng is not None:
            model.dropout_rng.bit_generator.state = world.broadcast(model.dropout_rng.bit_generator.state)
        if model.stateful and not self._state_sharded:
            B = self.train.batch_size
            lo, hi = world.shard(B)
            model.set_state([None if state is None else tuple(
                                 a if a.shape[axis] != B else a[(slice(None),) * axis + (slice(lo, hi),)]
                                 for a, axis in zip(state, axes))
                             for state, axes in zip(model.get_state(), _state_batch_axes(model))])
            self._state_sharded = True

    def _fit(self):
        bad = self._non_finite_params()
        if bad:
            raise TrainingDiverged(f"the weights {', '.join(bad)} are not finite before training starts, so "
                                   "nothing can be learnt from them: resume from an earlier checkpoint or start "
                                   "a new run")
        if self.run_dir is not None:
            if self.saved_step is None and (self.run_dir / LAST).exists():
                raise ResumeError(f"{self.run_dir} already holds a run ({LAST}): resume it, or choose another "
                                  "run directory")
            if self.world.is_root:
                self._metrics = _open_log(self.run_dir / METRICS)
        try:
            self._record({"event": "resume" if self.step else "start", "step": self.step,
                          "epoch": self.epoch + 1, "time": time.time()})
            while not self.done:
                if self.batch == 0:
                    self._begin_epoch()
                if not self._run_epoch():
                    break                                     # max_steps reached inside the epoch
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
    def done(self):
        """True when nothing is left to do: ``epochs`` complete or ``max_steps`` taken."""
        return self.epoch >= self.epochs or self._out_of_steps()

    def _out_of_steps(self):
        return self.max_steps is not None and self.step >= self.max_steps

    def _begin_epoch(self):
        self.model.reset_state()                               # streams start over from zero state
        self._epoch_loss, self._epoch_targets, self._epoch_seconds = 0.0, 0, 0.0

    def _run_epoch(self):
        """Steps from the current batch to the epoch's end; False if max_steps stopped it first."""
        n = self.train.num_batches
        bar = tqdm(total=n, initial=self.batch, desc=f"epoch {self.epoch + 1}/{self.epochs}", unit="batch",
                   disable=(None if self.progress is None else not self.progress) if self.world.is_root else True,
                   leave=False, file=sys.stderr,
                   dynamic_ncols=True)
        window_tokens, window_start = 0, time.perf_counter()
        tick = time.perf_counter()
        try:
            for batch in self.train.batches(self.epoch, self.batch):
                with _quiet_overflow():
                    if self.world.parallel:
                        loss, grads = self._parallel_loss_and_grads(batch)
                    else:
                        loss, grads = self.model.loss_and_grads(batch.x, batch.y, mask=batch.mask,
                                                                last_only=self.train.last_only, training=True)
                    norm = optim.global_norm(grads)
                if not (math.isfinite(loss) and math.isfinite(norm)):
                    self._diverged(loss, norm)
                self.optimizer.step(self.model.params, grads)
                self.step += 1
                self.batch += 1
                self.last_loss = loss
                self._epoch_loss += loss * batch.targets
                self._epoch_targets += batch.targets
                tokens = batch.x.size if batch.mask is None else int(batch.mask.sum())
                self._window_loss += loss
                window_tokens += tokens
                now = time.perf_counter()
                self._epoch_seconds += now - tick
                tick = now
                rate = window_tokens / max(now - window_start, 1e-9)
                bar.set_postfix(loss=f"{self._epoch_loss / self._epoch_targets:.4f}", tok_s=f"{rate:,.0f}",
                                refresh=False)
                bar.update(1)
                if self.step % self.log_every == 0:
                    steps = self.log_every - self._window_skipped
                    self._record({"event": "step", "step": self.step, "epoch": self.epoch + 1,
                                  "loss": self._window_loss / steps, "grad_norm": norm, "tokens_per_s": rate})
                    self._window_loss, self._window_skipped, window_tokens, window_start = 0.0, 0, 0, now
                if self.checkpoint_every and self.step % self.checkpoint_every == 0:
                    self._save(LAST)
                if self.on_step is not None:
                    self.on_step(self)
                if self._out_of_steps() and self.batch < n:
                    return False
                tick = time.perf_counter()                     # checkpoint writes and hooks are not step time
        finally:
            bar.close()
        return True

    def _parallel_loss_and_grads(self, batch):
        """MPI: the global batch's mean loss and gradients, from this rank's rows and one all-reduce."""
        model, last_only = self.model, self.train.last_only
        rows = len(batch.x)
        lo, hi = self.world.shard(rows)
        T = batch.x.shape[1]
        masks = model.dropout_masks(rows, T, last_only)          # the global batch's, as one process draws them
        if masks is not None:
            masks = [m[lo:hi] if m.ndim == 2 else m[:, lo:hi] for m in masks]
        if hi > lo:
            part = _rows(batch, lo, hi, last_only)
            loss, grads = model.loss_and_grads(part.x, part.y, mask=part.mask, last_only=last_only,
                                               training=True, dropout_masks=masks)
            tokens = part.targets
        else:                                                     # a last short batch with fewer rows than ranks
            loss, grads, tokens = 0.0, None, 0
        return self.world.reduce_step(model.params, grads, loss, tokens, batch.targets, model.backend)

    def _end_epoch(self):
        train_loss = self._epoch_loss / max(self._epoch_targets, 1)
        with _quiet_overflow():
            val_loss = self.evaluate(self.val) if self.val is not None else None
        if val_loss is not None and not math.isfinite(val_loss):      # the weights overflow: before saving them
            self._diverged(val_loss, math.nan, f"the validation loss after step {self.step:,} is {val_loss}")
        improved = val_loss is not None and (self.best_val_loss is None or val_loss < self.best_val_loss)
        if improved:
            self.best_val_loss = val_loss
        record = {"event": "epoch", "epoch": self.epoch + 1, "step": self.step, "loss": train_loss,
                  "val_loss": val_loss, "seconds": self._epoch_seconds}
        self.history.append(record)
        self._record(record)
        line = f"epoch {self.epoch + 1}/{self.epochs}  loss {train_loss:.4f}"
        if val_loss is not None:
            line += f"  val_loss {val_loss:.4f}" + (" (best)" if improved else "")
        self.print(line + f"  {self._epoch_seconds:.1f} s  ({self.step:,} steps)")
        self._save(LAST, epoch_done=True)         # first the checkpoint: a Ctrl-C while sampling loses nothing
        if improved:
            self._save(BEST, epoch_done=True)
        self._plot()
        if self.sampler is not None and self.world.is_root:
            self.sampler(self)
        self.epoch, self.batch = self.epoch + 1, 0

    def evaluate(self, batches):
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
                self.world.stop_if_interrupted()           # MPI: Ctrl-C stops every rank here too
                if not batches.stateful:
                    self.model.reset_state()
                if self.world.parallel:                    # this rank's rows; the sums are added below
                    lo, hi = self.world.shard(len(batch.x))
                    if hi == lo:
                        continue
                    batch = _rows(batch, lo, hi, batches.last_only)
                loss = self.model.loss(batch.x, batch.y, mask=batch.mask, last_only=batches.last_only)
                total, count = total + loss * batch.targets, count + batch.targets
        finally:
            self.model.set_state(carried)
        if self.world.parallel:
            total, count = self.world.sum([total, count])
        return total / count

    # -- output -------------------------------------------------------------------------
    def print(self, text):
        """Print a line of the run's output (under MPI on rank 0 only)."""
        if self.world.is_root:
            print(text, file=self.out or sys.stdout, flush=True)

    def _record(self, record):
        if self._metrics is not None:
            clean = {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in record.items()}
            self._metrics.write(json.dumps(clean) + "\n")
            self._metrics.flush()

    def _plot(self):
        if self.run_dir is not None and self.world.is_root and (self.run_dir / METRICS).exists():
            plot_metrics(self.run_dir / METRICS, self.run_dir / PLOT)

    # -- checkpoints and the guard ---------------------------------------------------------
    @property
    def last_checkpoint(self):
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
            self._diverged(math.nan, math.nan, f"weights {', '.join(bad)} are not finite")
        carried = None
        if self.model.stateful:
            to_host = self.model.backend.to_host
            state = self.model.get_state()
            if self.world.parallel:                  # every rank's rows, joined on rank 0
                state = [None if s is None else [self.world.gather_rows(to_host(a), axis) for a, axis in zip(s, axes)]
                         for s, axes in zip(state, _state_batch_axes(self.model))]
            if self.world.is_root:
                carried = [None if s is None else [_encode_array(to_host(a)) for a in s] for s in state]
        epoch, batch = (self.epoch + 1, 0) if epoch_done else (self.epoch, self.batch)
        position = {"epoch": epoch, "batch": batch, "step": self.step,
                    "best_val_loss": self.best_val_loss, "epoch_loss": self._epoch_loss,
                    "epoch_targets": self._epoch_targets, "epoch_seconds": self._epoch_seconds,
                    "window_loss": self._window_loss,
                    "history": self.history}
        metadata = {**self.metadata, "data": self.train.config, "train": position, "state": carried}
        if self.world.is_root:
            self.model.save(self.run_dir / name, optimizer=self.optimizer, rng=self.model.dropout_rng,
                            metadata=metadata)
        if name == LAST:
            self.saved_step = self.step

    def _diverged(self, loss, norm, what=None):
        what = what or f"the loss is {loss} and the gradient norm {norm}"
        self._record({"event": "diverged", "step": self.step + 1, "epoch": self.epoch + 1})
        if self.last_checkpoint is not None:
            advice = (f"the last good checkpoint, {self.last_checkpoint} (step {self.saved_step}), is kept: "
                      "resume from it with a lower learning rate or gradient clipping")
        else:
            advice = ("no checkpoint was written yet: start again with a lower learning rate or gradient "
                      "clipping")
        raise TrainingDiverged(f"training stopped at step {self.step + 1} (epoch {self.epoch + 1}): {what}; "
                               + advice)


def _rows(batch, lo, hi, last_only):
    """Rows [lo, hi) of a Batch, with their own count of scored targets."""
    x, y = batch.x[lo:hi], batch.y[lo:hi]
    mask = None if batch.mask is None else batch.mask[lo:hi]
    targets = y.size if mask is None or last_only else int(mask.sum())
    return type(batch)(x, y, mask, targets)


def _state_batch_axes(model):
    """Per layer, per state part, the axis of the carried state that runs over the batch's rows."""
    return [[next(i for i, (a, b) in enumerate(zip(one, two)) if a != b) for one, two in zip(ones, twos)]
            for ones, twos in zip(model.state_shapes(1), model.state_shapes(2))]


def _encode_array(a):
    """Host array -> JSON-safe dict (exact bytes in base64)."""
    a = numpy.ascontiguousarray(a)
    return {"dtype": a.dtype.str, "shape": list(a.shape), "base64": base64.b64encode(a.tobytes()).decode("ascii")}


def _decode_array(d, shape, dtype, what):
    """The host array that :func:`_encode_array` turned into ``d``; CheckpointError naming ``what`` unless
    ``d`` holds exactly a ``dtype`` array of ``shape``."""
    dtype = numpy.dtype(dtype)
    wrong = f"{what} must be a {dtype} array of shape {tuple(shape)}"
    if not isinstance(d, dict) or not isinstance(d.get("base64"), str):
        raise CheckpointError(f"{wrong}, encoded as dtype, shape and base64; {checkpoint.EDITED}")
    if d.get("dtype") != dtype.str or d.get("shape") != list(shape):
        raise CheckpointError(f"{wrong}, got dtype {d.get('dtype')!r:.20} and shape {d.get('shape')!r:.40}; "
                              f"{checkpoint.EDITED}")
    try:
        data = base64.b64decode(d["base64"], validate=True)
    except ValueError:                                    # binascii.Error
        raise CheckpointError(f"{wrong}: its base64 text does not decode; {checkpoint.EDITED}") from None
    if len(data) != math.prod(shape) * dtype.itemsize:
        raise CheckpointError(f"{wrong}: it holds {len(data):,} bytes instead of {math.prod(shape) * dtype.itemsize:,}"
                              f"; {checkpoint.EDITED}")
    return numpy.frombuffer(data, dtype=dtype).reshape(shape).copy()


def _open_log(path):
    """``path`` opened for appending lines; a torn last line (a killed writer) is ended first."""
    torn = False
    with contextlib.suppress(FileNotFoundError), open(path, "rb") as f:
        if f.seek(0, os.SEEK_END):
            f.seek(-1, os.SEEK_END)
            torn = f.read(1) != b"\n"
    log = open(path, "a", encoding="utf-8")
    if torn:
        log.write("\n")
    return log


def read_metrics(path):
    """The records of a metrics.jsonl file (lines that do not parse, e.g. a torn last line, are skipped)."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return records


def plot_metrics(metrics_path, png_path):
    """Draw training (per logged step) and validation (per epoch) loss into a PNG; False without matplotlib.

    After a resume, steps repeated by the resumed run replace the ones logged
    before the interruption (the last record for a step wins).
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return False
    steps, val = {}, {}
    for r in read_metrics(metrics_path):
        if r.get("event") == "step" and r.get("loss") is not None:
            steps[r["step"]] = r["loss"]
        elif r.get("event") == "epoch" and r.get("val_loss") is not None:
            val[r["step"]] = r["val_loss"]
    if not steps and not val:
        return False
    fig = Figure(figsize=(7, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if steps:
        ax.plot(sorted(steps), [steps[s] for s in sorted(steps)], label="training loss")
    if val:
        ax.plot(sorted(val), [val[s] for s in sorted(val)], "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("nats per token")
    ax.legend()
    ax.grid(alpha=0.3)
    with atomic_write(png_path) as f:
        fig.savefig(f, format="png", dpi=100)
    return True
