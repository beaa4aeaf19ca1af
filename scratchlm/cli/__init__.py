"""The ``scratchlm`` command: train a model on your text, sample from it, score it, inspect a checkpoint.

    scratchlm train my.txt --run-dir runs/my            # train (Ctrl-C any time)
    scratchlm train --resume runs/my                    # continue exactly where it stopped
    scratchlm sample runs/my --prime "The " --temperature 0.2 0.5 1.0
    scratchlm info runs/my/last.npz
    scratchlm eval runs/my [other.txt] [--json]         # held-out loss: nats/token, bits, perplexity

Every mistake a user can make (a missing file, an empty corpus, a prime with
characters the model never saw, a negative temperature, a corrupt checkpoint,
an unknown backend, ...) ends with one line on stderr and exit code 2, never a
traceback, and never touches files already written.

    __init__.py   main: the console script, ``python -m scratchlm``; bench
    parser.py     build_parser: every command's options and their types
    train.py      train: a new run or --resume, on every MPI rank together
    settings.py   train's settings: defaults, resolution, the model they describe
    metadata.py   what a checkpoint's metadata must hold: tokenizer, the run's settings
    prepare.py    a run's corpus, tokenizer and batches, after the memory check
    sample.py     sample: text from a checkpoint
    info.py       info: what a checkpoint holds
    eval.py       eval: the loss of a run over its held-out split or any text
"""

import sys
from collections.abc import Sequence
from pathlib import Path

from .. import distributed
from ..errors import ScratchLMError
from .parser import build_parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``scratchlm`` console script; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # everything after it belongs to benchmarks/bench.py
        try:
            return cmd_bench(argv[1:])
        except ScratchLMError as exc:
            print(f"scratchlm bench: error: {exc}", file=sys.stderr)
            return 2
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except distributed.AgreedFailure as exc:  # MPI: every rank stops here; rank 0 says why
        if exc.report:
            print(f"scratchlm {args.command}: error{exc.where}: {exc}", file=sys.stderr)
        return exc.code
    except ScratchLMError as exc:
        message = " ".join(str(exc).split())
        print(f"scratchlm {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C outside training (under MPI: on every rank)
        if distributed.launcher_rank() == 0:
            print(f"\nscratchlm {args.command}: interrupted", file=sys.stderr)
        return 130


# -- bench ------------------------------------------------------------------------

BENCH_SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench.py"


def cmd_bench(options: list[str]) -> int:
    """``scratchlm bench [OPTIONS]`` = ``python benchmarks/bench.py [OPTIONS]`` in a source checkout."""
    if not BENCH_SCRIPT.is_file():
        raise ScratchLMError(
            "the benchmarks come with the source repository, not the installed package: clone it "
            "and run  python benchmarks/bench.py  there"
        )
    import runpy

    return runpy.run_path(str(BENCH_SCRIPT))["main"](options) or 0
