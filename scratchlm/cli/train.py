"""``scratchlm train``: a new run or ``--resume``, set up on every MPI rank together, then the Trainer's fit.

    scratchlm train my.txt --run-dir runs/my            # train (Ctrl-C any time)
    scratchlm train --resume runs/my                    # continue exactly where it stopped
    scratchlm train my.txt --init gpt2/ --seq-len 128   # fine-tune a Hugging Face GPT-2 folder

The settings come from the options (:mod:`.settings`) or, on resume, from the checkpoint
(:mod:`.metadata`); the corpus, tokenizer and batches from :mod:`.prepare`.
"""

import sys
from pathlib import Path

from .. import checkpoint, distributed, rundir, sampling
from ..backend import get_backend
from ..errors import CheckpointError, ScratchLMError
from ..interop.gpt2 import from_hf
from ..rundir import BEST, LAST
from ..train import Sampler, Trainer, load_checkpoint
from . import hf
from .metadata import check_agreement, settings_of, tokenizer_of
from .prepare import prepare_data
from .settings import DEFAULTS, RESUMABLE, build_model, build_optimizer, build_schedule, is_folder_init, resolve


def cmd_train(args):
    """Check the options that need no file, then train holding the run directory's lock.

    Under MPI (see :mod:`scratchlm.distributed`) every rank runs this. The option checks, rank 0's taking
    of the lock, and the setup (corpus, tokenizer, model, Trainer) are each followed by
    :meth:`~scratchlm.distributed.World.agree`: a mistake found on any rank stops every rank there, with
    one line from rank 0 and exit status 2, instead of one line per rank or ranks left waiting.
    """
    world = distributed.world()
    given = {k: getattr(args, k) for k in DEFAULTS if getattr(args, k) is not None}
    run_dir = world.together(lambda: _check_train_options(args, given, world))
    with rundir.lock(run_dir):
        trainer, summary = world.together(lambda: _setup_train(args, given, run_dir))
        if world.is_root:
            print(summary, flush=True)
        return 0 if trainer is None else _fit(trainer, run_dir)


def _check_train_options(args, given, world):
    """The run directory of `scratchlm train`, after the checks that need no file (and, for a cupy run under
    MPI, this rank's GPU made current)."""
    if args.resume is not None:
        if args.run_dir is not None and args.run_dir.resolve() != args.resume.resolve():
            raise ScratchLMError("--resume DIR continues the run in DIR: leave out --run-dir")
        fixed = sorted(k for k in given if k not in RESUMABLE)
        if fixed:
            names = ", ".join("--" + k.replace("_", "-") for k in fixed)
            raise ScratchLMError(
                f"{names} cannot change when resuming (the run's settings are in its "
                "checkpoint): leave them out, or start a new run with another --run-dir"
            )
        if args.resume.is_file():
            raise ScratchLMError(
                f"--resume takes the run directory, not a checkpoint file: --resume {args.resume.parent}"
            )
        if not args.resume.is_dir():
            raise ScratchLMError(f"there is no run directory {args.resume} to resume: check the path")
        run_dir = args.resume
    elif args.corpus is None:
        raise ScratchLMError(
            "name a corpus: scratchlm train FILE (or nietzsche, tinyshakespeare), or continue a run with --resume DIR"
        )
    else:
        run_dir = args.run_dir or Path("runs") / Path(args.corpus).stem
    for t in given.get("temperature", ()):
        sampling.check_options(t)
    backend = get_backend(given.get("backend", "numpy"))  # fail early, before anything is read or built
    if world.parallel and backend.name == "cupy":
        world.use_local_device()  # before any array: one GPU per rank
    return run_dir


def _setup_train(args, given, run_dir):
    """(the Trainer of a new or resumed run, or None when there is nothing left to train; what to say about
    it). Runs holding the run directory's lock."""
    if args.resume is not None:
        ckpt = load_checkpoint(run_dir, backend=given.get("backend", "numpy"))
        where = run_dir / LAST
        if "cli" not in ckpt.metadata:
            raise ScratchLMError(
                f"{args.resume} was not trained with `scratchlm train`; continue it with the script that trained it"
            )
        settings = {**settings_of(ckpt.metadata, where), **given}
        corpus = args.corpus or settings["corpus"]
        tokenizer = tokenizer_of(ckpt.metadata, ckpt.model.vocab_size, where)
        if tokenizer is None:
            raise CheckpointError(f"{where} records no tokenizer (metadata['tokenizer']); {checkpoint.EDITED}")
        check_agreement(settings, ckpt.model.config, tokenizer, ckpt.metadata, where)
    else:
        settings = resolve(given)
        corpus = args.corpus
        if (run_dir / LAST).exists():
            raise ScratchLMError(
                f"{run_dir} already holds a run ({LAST}): continue it with --resume {run_dir}, "
                "or choose another --run-dir"
            )
        settings["corpus"] = str(Path(corpus).resolve()) if Path(corpus).exists() else corpus
        tokenizer = _folder_tokenizer(settings["init"]) if is_folder_init(settings["init"]) else None

    loaded = None if args.resume is None else ckpt.model.config
    tokenizer, train, val = prepare_data(settings, corpus, tokenizer, loaded)
    sampler = None
    if settings["sample_length"] > 0:
        sampler = Sampler(
            tokenizer,
            settings["temperature"],
            settings["sample_length"],
            prime=settings["prime"],
            seed=settings["seed"],
        )
    common = dict(
        run_dir=run_dir,
        epochs=settings["epochs"],
        max_steps=settings["max_steps"],
        checkpoint_every=settings["checkpoint_every"],
        sampler=sampler,
        progress=settings["progress"],
    )
    if args.resume is not None:
        trainer = Trainer.resume(ckpt, train, val, **common)
        trainer.metadata["cli"] = settings
        if trainer.done:
            return None, (
                f"{run_dir} is complete ({trainer.epoch} epochs, {trainer.step:,} steps): pass a "
                "larger --epochs or --max-steps to train on"
            )
        return trainer, f"resuming {run_dir / LAST} at epoch {trainer.epoch + 1}, step {trainer.step:,}"
    else:
        model = build_model(settings, tokenizer.vocab_size)
        if is_folder_init(settings["init"]):
            _load_folder_weights(model, settings["init"])
        try:
            opt = build_optimizer(settings)
        except ValueError as exc:
            raise ScratchLMError(str(exc)) from None
        trainer = Trainer(
            model,
            opt,
            train,
            val,
            metadata={"tokenizer": tokenizer.config, "cli": settings},
            schedule=build_schedule(settings),
            grad_accum=settings["grad_accum"],
            **common,
        )
        params = sum(int(p.size) for p in model.params.values())
        return trainer, (
            f"{model}, {params:,} parameters\n{tokenizer}; training: {train}"
            + (f"; validation: {val}" if val is not None else "")
        )


def _folder_tokenizer(folder):
    """The BPE tokenizer of the GPT-2 folder a run fine-tunes (--init HF_FOLDER): the corpus is encoded with it."""
    try:
        return hf.tokenizer(Path(folder))
    except ScratchLMError as exc:  # CheckpointError included
        raise ScratchLMError(f"--init: {exc}") from None


def _load_folder_weights(model, folder):
    """The weights of the GPT-2 folder into the run's new model (its first sequence_length positions)."""
    source = from_hf(folder, backend=model.backend, dtype=model.backend.dtype.name, dropout=0.0)
    if source.vocab_size != model.vocab_size:
        raise ScratchLMError(
            f"--init {folder}: its model has {source.vocab_size:,} tokens but its tokenizer {model.vocab_size:,}: "
            "the vocab.json is not this model's"
        )
    params = source.params
    position = "embedding/position_embeddings"
    params[position] = params[position][: model.sequence_length]
    model.set_params(params)


def _fit(trainer, run_dir):
    try:
        trainer.fit()
    except KeyboardInterrupt:
        where = (
            f"the last checkpoint is {trainer.last_checkpoint} (step {trainer.saved_step:,}): continue "
            f"with  scratchlm train --resume {run_dir}"
            if trainer.last_checkpoint
            else "no checkpoint written"
        )
        if trainer.world.is_root:
            print(f"\nscratchlm train: interrupted; {where}", file=sys.stderr)
        return 130
    trainer.print(
        f"done: {run_dir / LAST}"
        + (
            f", best validation loss {trainer.best_val_loss:.4f} in {run_dir / BEST}"
            if trainer.best_val_loss is not None
            else ""
        )
    )
    return 0
