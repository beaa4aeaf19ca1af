"""What an example script needs around a Trainer: a new run or the one to continue, and the command-line contract.

def main():
    return run_script("nietzsche_char", run_dir, lambda: run(args, run_dir))   # exit code 0, 2 or 130

def run(args, run_dir):
    ckpt = open_run(run_dir, args.resume)                          # None for a new run
    trainer = start_or_resume(ckpt, train, val, build, tokenizer, run_dir=run_dir, epochs=...)
    trainer.fit()
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .. import distributed, rundir
from ..errors import ScratchLMError
from ..rundir import LAST
from .loop import Trainer

if TYPE_CHECKING:
    from ..models import Checkpoint, TokenModel
    from ..optim import Optimizer
    from .loop import Batches


def start_or_resume(
    ckpt: Checkpoint | None,
    train: Batches,
    val: Batches | None,
    build: Callable[[], tuple[TokenModel, Optimizer]],
    tokenizer,
    **options,
) -> Trainer:
    """The Trainer of a run: continuing ``ckpt`` (from :func:`~scratchlm.train.resume.open_run`), or new on
    ``build()``'s (model, optimizer).

    A new run keeps the tokenizer's config in its checkpoints, so that sampling
    and resuming find the vocabulary. ``options`` go to :class:`Trainer`.
    """
    if ckpt:
        return Trainer.resume(ckpt, train, val, **options)
    model, optimizer = build()
    return Trainer(model, optimizer, train, val, metadata={"tokenizer": tokenizer.config}, **options)


def run_script(name: str, run_dir: str | Path, body: Callable[[], object]) -> int:
    """Run ``body()`` with the command-line contract; returns the exit code.

    0 when it finishes; 2 and one line on stderr for a ScratchLMError (bad
    input, or a run directory another run is using: ``body`` runs holding
    ``run_dir``'s lock); 130 on Ctrl-C, saying how to continue from the run's
    last checkpoint.
    """
    try:
        with rundir.lock(run_dir):
            body()
    except distributed.AgreedFailure as exc:  # MPI: every rank stops here; rank 0 says why
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
