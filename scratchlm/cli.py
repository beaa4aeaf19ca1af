"""The ``scratchlm`` command: train a model on your text, sample from it, inspect a checkpoint.

    scratchlm train my.txt --run-dir runs/my            # train (Ctrl-C any time)
    scratchlm train --resume runs/my                    # continue exactly where it stopped
    scratchlm sample runs/my --prime "The " --temperature 0.2 0.5 1.0
    scratchlm info runs/my/last.npz

Every mistake a user can make (a missing file, an empty corpus, a prime with
characters the model never saw, a negative temperature, a corrupt checkpoint,
an unknown backend, ...) ends with one line on stderr and exit code 2, never a
traceback, and never touches files already written.
"""

import argparse
import math
import reprlib
import sys
import textwrap
from pathlib import Path

import numpy

from . import batching, budget, checkpoint, corpora, distributed, files, models, optim, rundir, sampling
from .backend import get_backend
from .datasets import imdb
from .errors import CheckpointError, ModelError, ScratchLMError
from .layers.dropout import MAX_RATE
from .text import UNK, CharTokenizer, VectorTokenizer, VocabularyError, WordTokenizer, from_config, listing
from .train import BEST, LAST, TEMPERATURES, Sampler, Trainer, check_position, load_checkpoint, render

# Settings of `scratchlm train`, with their defaults. None means "depends on another setting".
DEFAULTS = {
    "tokenizer": "char", "lower": False, "max_tokens": 10000,
    "batching": "streams", "seq_len": None, "step": 3, "batch_size": None, "val_fraction": 0.05,
    "embedding_dim": None, "hidden": [256], "cell": "lstm", "dropout": 0.0, "dtype": "float32",
    "model": "recurrent", "block": "book", "heads": 2, "dense_dim": 2048, "key_dim": None, "layers": 1,
    "optimizer": None, "lr": None, "clipnorm": 5.0,
    "epochs": 10, "max_steps": None, "checkpoint_every": 500, "seed": 0, "backend": "numpy",
    "sample_length": 400, "temperature": list(TEMPERATURES), "prime": None, "progress": None,
}
SEQ_LEN = {"windows": 60, "streams": 100, "padded": 200, "vectorized": 100}
BATCH_SIZE = {"windows": 128, "streams": 64, "padded": 32, "vectorized": 32}
LEARNING_RATE = {"adam": 2e-3, "rmsprop": 1e-3, "sgd": 1e-2}
# What `train --resume` may change; everything else comes from the checkpoint.
RESUMABLE = {"epochs", "max_steps", "checkpoint_every", "backend", "progress", "sample_length", "temperature",
             "prime"}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit code 2) instead of usage + error."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n" if _reports() else None)


def _reports():
    """Whether this process prints an error that every process of the run meets: all but MPI ranks other than 0."""
    try:
        return distributed.world().is_root
    except ScratchLMError:                    # under an MPI launcher without mpi4py: every process says so
        return True


def _whole(s, least):
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {s!r}") from None
    if v < least:
        raise argparse.ArgumentTypeError(f"expected a number >= {least}, got {s}")
    if v > checkpoint.LARGEST:                # what a checkpoint may record (int64's largest)
        raise argparse.ArgumentTypeError(f"expected a number below 2**63, got {reprlib.repr(v)}")
    return v


def _positive_int(s):
    return _whole(s, 1)


def _nonnegative_int(s):
    return _whole(s, 0)


def _number(s):
    try:
        return float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None


def _wrap(text):
    """Fill each paragraph to 79 columns (the help formatter keeps our line breaks)."""
    return "\n\n".join(textwrap.fill(" ".join(p.split()), 79) for p in text.split("\n\n"))


def build_parser():
    parser = _Parser(prog="scratchlm", description="Train LSTM language models on your own text and sample "
                     "from them. A from-scratch engine: NumPy on the CPU, CuPy on a GPU.",
                     formatter_class=argparse.RawDescriptionHelpFormatter,
                     epilog="Run  scratchlm COMMAND --help  for the options of each command.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_train(commands)
    _add_sample(commands)
    _add_info(commands)
    _add_bench(commands)
    return parser


def _add_train(commands):
    p = commands.add_parser(
        "train", help="train a model on a text file (or continue a run with --resume)",
        description=_wrap("Train a character- or word-level LSTM language model on a text file. Progress, "
        "per-epoch loss and sample text are printed as it learns; checkpoints, a metrics log and (with "
        "matplotlib) a loss plot go to the run directory.\n\nStop it any time with Ctrl-C and continue "
        "later with --resume: the resumed run does exactly what the uninterrupted one would have done."),
        epilog="Examples:\n  scratchlm train my.txt --run-dir runs/my\n"
        "  scratchlm train nietzsche --batching windows --embedding-dim 0 --hidden 128 --optimizer rmsprop "
        "--lr 0.01 --clipnorm 0 --val-fraction 0\n  scratchlm train --resume runs/my --epochs 20",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("corpus", nargs="?", metavar="CORPUS",
                   help="a UTF-8 text file (plain or .gz), 'nietzsche' / 'tinyshakespeare' (bundled with "
                   "scratchlm), or an http(s) URL (downloaded once and cached in $SCRATCHLM_CACHE, default "
                   "~/.cache/scratchlm). With --resume it defaults to the run's corpus.")
    p.add_argument("--run-dir", type=Path, metavar="DIR",
                   help="where checkpoints (last.npz, best.npz), metrics.jsonl and loss.png go "
                   "(default runs/<corpus name>)")
    p.add_argument("--resume", type=Path, metavar="DIR",
                   help="continue the run in DIR from its last checkpoint (the settings come from the checkpoint; "
                   "only --epochs, --max-steps, --checkpoint-every, --backend and the sample options may change)")
    g = p.add_argument_group("text and batches")
    g.add_argument("--tokenizer", choices=["char", "word"], help="one token per character (default) or per word "
                   "and punctuation mark")
    g.add_argument("--lower", action="store_true", default=None, help="lower-case the text first (word level "
                   "always does)")
    g.add_argument("--max-tokens", type=_positive_int, metavar="N",
                   help="word level and --model transformer: keep the N most frequent tokens (default 10000, "
                   "transformer 15000); the rest become <unk> ([UNK] for --model transformer)")
    g.add_argument("--batching", choices=["streams", "windows", "padded"],
                   help="streams: the text as parallel streams read in chunks, state carried between chunks "
                   "(default, the fastest learner); windows: every --step-th window of --seq-len tokens, "
                   "predict the next (the Keras book); padded: one sequence per line, padded, ends with <eos>")
    g.add_argument("--seq-len", type=_positive_int, metavar="T",
                   help="tokens per chunk/window, the maximum line length for padded (default 100 / 60 / 200)")
    g.add_argument("--step", type=_positive_int, metavar="S", help="windows: distance between window starts "
                   "(default 3)")
    g.add_argument("--batch-size", type=_positive_int, metavar="B", help="default 64 / 128 / 32")
    g.add_argument("--val-fraction", type=_number, metavar="F",
                   help="hold out this fraction of the text (the end of it; random lines for padded) for the "
                   "validation loss (default 0.05; 0 = no validation)")
    g = p.add_argument_group("model and optimizer")
    g.add_argument("--embedding-dim", type=_nonnegative_int, metavar="E",
                   help="size of the learned token embedding; 0 feeds one-hot tokens to a recurrent model (default "
                   "64, word level 100, transformer 256: it has no one-hot input)")
    g.add_argument("--cell", choices=["lstm", "gru"], help="the recurrent cell of every layer: lstm (default) "
                   "or gru (Keras' GRU, reset gate after the recurrent product)")
    g.add_argument("--hidden", type=_positive_int, nargs="+", metavar="H",
                   help="units of each stacked recurrent layer, e.g. --hidden 512 512 (default 256)")
    g.add_argument("--model", choices=["recurrent", "transformer"],
                   help="recurrent (default: an LSTM or GRU stack) or transformer (the IMDB seed's decoder LM: "
                   "word ids as TextVectorization makes them, one sequence per line or per .txt file of a "
                   "folder laid out like aclImdb/, cut to --seq-len, default 100)")
    g.add_argument("--block", choices=["book", "gpt"], help="transformer: the seed's post-LayerNorm block "
                   "(default) or a pre-LayerNorm GPT block")
    g.add_argument("--heads", type=_positive_int, metavar="N", help="transformer: attention heads (default 2)")
    g.add_argument("--key-dim", type=_positive_int, metavar="K",
                   help="transformer: dimensions of each head (default: the embedding size, as the seed)")
    g.add_argument("--dense-dim", type=_positive_int, metavar="F",
                   help="transformer: hidden units of the feed-forward (default 2048)")
    g.add_argument("--layers", type=_positive_int, metavar="L", help="transformer: decoder blocks (default 1)")
    g.add_argument("--dropout", type=_number, metavar="RATE",
                   help="Keras-style dropout on each recurrent layer's output, in training only (default 0 = none)")
    g.add_argument("--optimizer", choices=sorted(LEARNING_RATE), help="default adam (transformer: rmsprop)")
    g.add_argument("--lr", type=_number, help="learning rate (default 0.002 adam, 0.001 rmsprop, 0.01 sgd)")
    g.add_argument("--clipnorm", type=_number, metavar="C",
                   help="rescale the gradients so that their global norm is at most C (default 5; 0 = off)")
    g.add_argument("--dtype", choices=["float32", "float64"], help="default float32")
    g = p.add_argument_group("run")
    g.add_argument("--epochs", type=_positive_int, help="passes over the training text (default 10)")
    g.add_argument("--max-steps", type=_positive_int, metavar="N",
                   help="stop after N steps in all, e.g. for a quick try (counting steps before a resume)")
    g.add_argument("--checkpoint-every", type=_positive_int, metavar="N",
                   help="also write last.npz every N steps (default 500), besides after every epoch")
    g.add_argument("--seed", type=_nonnegative_int,
                   help="seeds the weights, the batch order and the samples (default 0)")
    g.add_argument("--backend", choices=["numpy", "cupy", "auto"],
                   help="numpy (CPU, default), cupy (CUDA GPU; needs the gpu extra) or auto")
    g.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                   help="no progress bar (it is shown only on a terminal anyway)")
    g = p.add_argument_group("samples after each epoch")
    g.add_argument("--sample-length", type=_nonnegative_int, metavar="N",
                   help="tokens per sample (default 400; 0 = no samples)")
    g.add_argument("--temperature", type=_number, nargs="+", metavar="T",
                   help="one sample per temperature (default 0.2 0.5 1.0 1.2)")
    g.add_argument("--prime", metavar="TEXT", help="start the samples from TEXT (default: a random "
                   "stretch of the training text)")
    p.set_defaults(run=cmd_train)


def _add_sample(commands):
    p = commands.add_parser(
        "sample", help="generate text from a trained model",
        description=_wrap("Generate text from a checkpoint, one sample per temperature. Low temperatures "
        "(0.2) give safe, repetitive text; 1.0 is the model's own distribution; higher is wilder; 0 is "
        "greedy (always the most likely token)."),
        epilog='Example:\n  scratchlm sample runs/my --prime "The meaning of " --temperature 0.2 0.5 1.0',
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path, metavar="CHECKPOINT",
                   help="a checkpoint file, or a run directory (its best.npz, else its last.npz)")
    prime = p.add_mutually_exclusive_group()
    prime.add_argument("--prime", metavar="TEXT", help="text to continue (default: a newline, or the start of "
                       "a new line for models trained on lines)")
    prime.add_argument("--prime-file", type=Path, metavar="FILE", help="read the prime text from FILE")
    p.add_argument("--length", type=_nonnegative_int, default=400, help="tokens to generate (default 400)")
    p.add_argument("--temperature", type=_number, nargs="+", default=[1.0], metavar="T",
                   help="one or more temperatures >= 0 (default 1.0; 0 = greedy)")
    p.add_argument("--top-k", type=_positive_int, metavar="K", help="sample only among the K most likely tokens")
    p.add_argument("--top-p", type=_number, metavar="P",
                   help="sample only among the most likely tokens whose probabilities add up to P (0 < P <= 1)")
    p.add_argument("--seed", type=_nonnegative_int, default=0,
                   help="random seed (default 0): the same seed, the same text")
    p.add_argument("--backend", choices=["numpy", "cupy", "auto"], default="numpy", help="default numpy")
    p.add_argument("--unknown", choices=["error", "skip", "unk"], default="error",
                   help="what to do with prime characters/words the vocabulary lacks: stop with an error "
                   "that lists them (default), skip them, or replace them by the unknown token (<unk>; [UNK] "
                   "for a --model transformer vocabulary)")
    p.set_defaults(run=cmd_sample)


def _add_info(commands):
    p = commands.add_parser("info", help="show what a checkpoint holds",
                            description="Show a checkpoint's model, vocabulary, optimizer, training position, "
                            "settings and per-epoch losses.")
    p.add_argument("checkpoint", type=Path, metavar="CHECKPOINT", help="a checkpoint file or a run directory")
    p.set_defaults(run=cmd_info)


def _add_bench(commands):
    commands.add_parser("bench", help="time scratchlm against Keras and PyTorch (from a source checkout)",
                        add_help=False)                   # its options are benchmarks/bench.py's: see cmd_bench


def main(argv=None):
    """Entry point of the ``scratchlm`` console script; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:                             # everything after it belongs to benchmarks/bench.py
        try:
            return cmd_bench(argv[1:])
        except ScratchLMError as exc:
            print(f"scratchlm bench: error: {exc}", file=sys.stderr)
            return 2
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except distributed.AgreedFailure as exc:              # MPI: every rank stops here; rank 0 says why
        if exc.report:
            print(f"scratchlm {args.command}: error{exc.where}: {exc}", file=sys.stderr)
        return exc.code
    except ScratchLMError as exc:
        message = " ".join(str(exc).split())
        print(f"scratchlm {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:                             # Ctrl-C outside training (under MPI: on every rank)
        if distributed.launcher_rank() == 0:
            print(f"\nscratchlm {args.command}: interrupted", file=sys.stderr)
        return 130


# -- what a checkpoint's metadata must hold ---------------------------------------

def _real(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _whole_or_null(least):
    """The rule of a setting that is null or a whole number from ``least`` to 2**63 - 1."""
    ok, rule = checkpoint.whole_rule(least)
    return (lambda v: v is None or ok(v)), f"null or {rule}"


# What the settings of a `scratchlm train` run (metadata["cli"]) must look like for --resume to use them.
SETTING_RULES = {
    "corpus": (lambda v: isinstance(v, str) and v != "", "a corpus name or path"),
    "tokenizer": (lambda v: v in ("char", "word", "vector"), "'char', 'word' or 'vector'"),
    "lower": (lambda v: isinstance(v, bool), "true or false"),
    "max_tokens": checkpoint.whole_rule(1),
    "batching": (lambda v: v in SEQ_LEN, "'streams', 'windows', 'padded' or 'vectorized'"),
    "seq_len": checkpoint.whole_rule(1),
    "step": checkpoint.whole_rule(1),
    "batch_size": checkpoint.whole_rule(1),
    "val_fraction": (lambda v: _real(v) and 0 <= v < 1, "a number in [0, 1)"),
    "seed": checkpoint.whole_rule(0),
    "epochs": checkpoint.whole_rule(1),
    "max_steps": _whole_or_null(1),
    "checkpoint_every": checkpoint.whole_rule(1),
    "backend": (lambda v: v in ("numpy", "cupy", "auto"), "'numpy', 'cupy' or 'auto'"),
    "progress": (lambda v: v is None or isinstance(v, bool), "null, true or false"),
    "sample_length": checkpoint.whole_rule(0),
    "temperature": (lambda v: isinstance(v, list) and v != [] and all(_real(t) and t >= 0 for t in v),
                    "a list of numbers >= 0"),
    "prime": (lambda v: v is None or isinstance(v, str), "null or a text"),
    "embedding_dim": checkpoint.whole_rule(0),
    "hidden": (lambda v: isinstance(v, list) and v != [] and all(checkpoint.whole_at_least(1)(h) for h in v),
               "a non-empty list of whole numbers in [1, 2**63)"),
    "cell": (lambda v: v in ("lstm", "gru"), "'lstm' or 'gru'"),
    "dropout": (lambda v: _real(v) and 0 <= v <= MAX_RATE, f"a number in [0, {MAX_RATE}]"),
    "dtype": (lambda v: v in ("float32", "float64"), "'float32' or 'float64'"),
    "optimizer": (lambda v: v in LEARNING_RATE, "'adam', 'rmsprop' or 'sgd'"),
    "lr": (lambda v: _real(v) and v > 0, "a number > 0"),
    "clipnorm": (lambda v: _real(v) and v >= 0, "a number >= 0"),
    "model": (lambda v: v in ("recurrent", "transformer"), "'recurrent' or 'transformer'"),
    "block": (lambda v: v in ("book", "gpt"), "'book' or 'gpt'"),
    "heads": checkpoint.whole_rule(1),
    "dense_dim": checkpoint.whole_rule(1),
    "key_dim": _whole_or_null(1),
    "layers": checkpoint.whole_rule(1),
}


def _metadata_dict(meta, key, path):
    """``meta[key]``, which must be a dict; CheckpointError otherwise."""
    if not isinstance(meta[key], dict):
        raise CheckpointError(f"{path}: metadata[{key!r}] must be a JSON object, got {type(meta[key]).__name__}; "
                              f"{checkpoint.EDITED}")
    return meta[key]


def _tokenizer_of(meta, vocab_size, path):
    """The tokenizer a checkpoint's metadata describes (None if it has none); it must fit the model's vocabulary."""
    if "tokenizer" not in meta:
        return None
    tok = from_config(meta["tokenizer"])
    if tok.vocab_size != vocab_size:
        raise CheckpointError(f"{path}: its tokenizer has {tok.vocab_size:,} tokens, its model "
                              f"{vocab_size:,}, where they must be equal; {checkpoint.EDITED}")
    return tok


def _settings_of(meta, path):
    """The `scratchlm train` settings a checkpoint records, each checked against :data:`SETTING_RULES`."""
    older = {"cell": "lstm", "dropout": 0.0, "model": "recurrent", "block": "book", "heads": 2, "dense_dim": 2048,
             "key_dim": None, "layers": 1}                        # what runs from before these settings used
    settings = {**older, **_metadata_dict(meta, "cli", path)}
    for name, (ok, rule) in SETTING_RULES.items():
        if name not in settings or not ok(settings[name]):
            got = reprlib.repr(settings[name]) if name in settings else "nothing"
            raise CheckpointError(f"{path}: the run's setting {name!r} (metadata['cli']) must be {rule}, got "
                                  f"{got}; {checkpoint.EDITED}")
    return settings


# The field of each batcher's config (metadata["data"]) that records the run's --seq-len.
_LENGTH_FIELD = {"streams": "seq_len", "windows": "maxlen", "padded": "maxlen", "vectorized": "length"}


def _recorded(settings, config, tokenizer, meta):
    """(setting, its value in the run's settings, what the checkpoint's model, tokenizer or data record for
    it, which of them) for each setting they record; the model's kind first, as the rest depend on it."""
    model = "the model in its header"
    yield "model", settings["model"], config["kind"], model
    yield "dtype", settings["dtype"], config["dtype"], model
    if config["kind"] == "transformer":
        for name, field in (("seq_len", "sequence_length"), ("embedding_dim", "embed_dim"), ("dense_dim", "dense_dim"),
                            ("heads", "num_heads"), ("layers", "num_layers"), ("block", "block")):
            yield name, settings[name], config[field], model
        yield "key_dim", settings["key_dim"] or settings["embedding_dim"], config["key_dim"], model
    else:
        yield "cell", settings["cell"], config["cell"], model
        yield "hidden", settings["hidden"], config["hidden_sizes"], model
        yield "embedding_dim", settings["embedding_dim"] or None, config["embedding_dim"], model
        yield "dropout", settings["dropout"], config["dropout"], model
    for name, field in (("tokenizer", "kind"), ("lower", "lower")):
        yield name, settings[name], getattr(tokenizer, field), "its tokenizer (metadata['tokenizer'])"
    recorded = meta.get("data")
    if isinstance(recorded, dict):                        # anything else Trainer.resume refuses
        for name, field in (("batching", "kind"), ("batch_size", "batch_size"),
                            ("seq_len", _LENGTH_FIELD[settings["batching"]]), ("step", "step")):
            if field in recorded:
                yield name, settings[name], recorded[field], "its data (metadata['data'])"


def _check_agreement(settings, config, tokenizer, meta, path):
    """CheckpointError naming the first of the run's settings (metadata['cli'], checked by :func:`_settings_of`)
    that its model config, tokenizer or data contradict: a resume builds its data from the settings."""
    for name, said, found, where in _recorded(settings, config, tokenizer, meta):
        if said != found:
            raise CheckpointError(f"{path}: the run's settings (metadata['cli']) say {name} {reprlib.repr(said)}, "
                                  f"but {where} has {reprlib.repr(found)}; {checkpoint.EDITED}")


# -- train ------------------------------------------------------------------------

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
            raise ScratchLMError(f"{names} cannot change when resuming (the run's settings are in its "
                                 "checkpoint): leave them out, or start a new run with another --run-dir")
        if args.resume.is_file():
            raise ScratchLMError(f"--resume takes the run directory, not a checkpoint file: "
                                 f"--resume {args.resume.parent}")
        if not args.resume.is_dir():
            raise ScratchLMError(f"there is no run directory {args.resume} to resume: check the path")
        run_dir = args.resume
    elif args.corpus is None:
        raise ScratchLMError("name a corpus: scratchlm train FILE (or nietzsche, tinyshakespeare), "
                             "or continue a run with --resume DIR")
    else:
        run_dir = args.run_dir or Path("runs") / Path(args.corpus).stem
    for t in given.get("temperature", ()):
        sampling.check_options(t)
    backend = get_backend(given.get("backend", "numpy"))    # fail early, before anything is read or built
    if world.parallel and backend.name == "cupy":
        world.use_local_device()                            # before any array: one GPU per rank
    return run_dir


def _setup_train(args, given, run_dir):
    """(the Trainer of a new or resumed run, or None when there is nothing left to train; what to say about
    it). Runs holding the run directory's lock."""
    if args.resume is not None:
        ckpt = load_checkpoint(run_dir, backend=given.get("backend", "numpy"))
        where = run_dir / LAST
        if "cli" not in ckpt.metadata:
            raise ScratchLMError(f"{args.resume} was not trained with `scratchlm train`; continue it with the "
                                 "script that trained it")
        settings = {**_settings_of(ckpt.metadata, where), **given}
        corpus = args.corpus or settings["corpus"]
        tokenizer = _tokenizer_of(ckpt.metadata, ckpt.model.vocab_size, where)
        if tokenizer is None:
            raise CheckpointError(f"{where} records no tokenizer (metadata['tokenizer']); {checkpoint.EDITED}")
        _check_agreement(settings, ckpt.model.config, tokenizer, ckpt.metadata, where)
    else:
        settings = _resolve(given)
        corpus = args.corpus
        if (run_dir / LAST).exists():
            raise ScratchLMError(f"{run_dir} already holds a run ({LAST}): continue it with --resume {run_dir}, "
                                 "or choose another --run-dir")
        settings["corpus"] = str(Path(corpus).resolve()) if Path(corpus).exists() else corpus
        tokenizer = None

    loaded = None if args.resume is None else ckpt.model.config
    tokenizer, train, val = _prepare_data(settings, corpus, tokenizer, loaded)
    sampler = None
    if settings["sample_length"] > 0:
        sampler = Sampler(tokenizer, settings["temperature"], settings["sample_length"], prime=settings["prime"],
                          seed=settings["seed"])
    common = dict(run_dir=run_dir, epochs=settings["epochs"], max_steps=settings["max_steps"],
                  checkpoint_every=settings["checkpoint_every"], sampler=sampler, progress=settings["progress"])
    if args.resume is not None:
        trainer = Trainer.resume(ckpt, train, val, **common)
        trainer.metadata["cli"] = settings
        if trainer.done:
            return None, (f"{run_dir} is complete ({trainer.epoch} epochs, {trainer.step:,} steps): pass a "
                          "larger --epochs or --max-steps to train on")
        return trainer, f"resuming {run_dir / LAST} at epoch {trainer.epoch + 1}, step {trainer.step:,}"
    else:
        model = build_model(settings, tokenizer.vocab_size)
        try:
            opt = optim.get(settings["optimizer"], lr=settings["lr"], global_clipnorm=settings["clipnorm"] or None)
        except ValueError as exc:
            raise ScratchLMError(str(exc)) from None
        trainer = Trainer(model, opt, train, val, metadata={"tokenizer": tokenizer.config, "cli": settings},
                          **common)
        params = sum(int(p.size) for p in model.params.values())
        return trainer, (f"{model}, {params:,} parameters\n{tokenizer}; training: {train}"
                         + (f"; validation: {val}" if val is not None else ""))


def _fit(trainer, run_dir):
    try:
        trainer.fit()
    except KeyboardInterrupt:
        where = (f"the last checkpoint is {trainer.last_checkpoint} (step {trainer.saved_step:,}): continue "
                 f"with  scratchlm train --resume {run_dir}" if trainer.last_checkpoint else "no checkpoint written")
        if trainer.world.is_root:
            print(f"\nscratchlm train: interrupted; {where}", file=sys.stderr)
        return 130
    trainer.print(f"done: {run_dir / LAST}" + (f", best validation loss {trainer.best_val_loss:.4f} in "
                                                f"{run_dir / BEST}" if trainer.best_val_loss is not None else ""))
    return 0


def model_config(settings, vocab_size):
    """The config (as a checkpoint's header holds it) of the model a new run's settings describe."""
    if settings["model"] == "transformer":
        return {"kind": "transformer", "vocab_size": vocab_size, "sequence_length": settings["seq_len"],
                "embed_dim": settings["embedding_dim"], "dense_dim": settings["dense_dim"],
                "num_heads": settings["heads"], "key_dim": settings["key_dim"] or settings["embedding_dim"],
                "num_layers": settings["layers"], "block": settings["block"], "dtype": settings["dtype"],
                "seed": settings["seed"]}
    return {"kind": "recurrent", "cell": settings["cell"], "vocab_size": vocab_size,
            "embedding_dim": settings["embedding_dim"] or None, "hidden_sizes": settings["hidden"],
            "dtype": settings["dtype"], "stateful": settings["batching"] == "streams", "seed": settings["seed"],
            "dropout": settings["dropout"]}


def build_model(settings, vocab_size):
    """The model a new run's settings describe."""
    config = model_config(settings, vocab_size)
    return models.MODELS[config.pop("kind")](backend=settings["backend"], **config)


def _resolve(given):
    """Settings for a new run: the options given, defaults for the rest."""
    s = {**DEFAULTS, **given}
    if s["model"] == "transformer":                       # the IMDB seed: TextVectorization ids, RMSprop
        wrong = [f"--{k}" for k in ("tokenizer", "batching", "cell", "hidden", "dropout", "step") if k in given]
        if wrong:
            raise ScratchLMError(f"{', '.join(wrong)}: not a setting of --model transformer; leave it out")
        s.update(tokenizer="vector", batching="vectorized", lower=True)
        s["max_tokens"] = given.get("max_tokens", 15000)
        if s["embedding_dim"] == 0:
            raise ScratchLMError("--embedding-dim 0 means one-hot input, which --model transformer does not have: "
                                 "give it a size >= 1 (default 256)")
        s["embedding_dim"] = s["embedding_dim"] or 256
        s["optimizer"] = s["optimizer"] or "rmsprop"
    elif any(k in given for k in ("block", "heads", "key_dim", "dense_dim", "layers")):
        raise ScratchLMError("--block, --heads, --key-dim, --dense-dim and --layers are settings of "
                             "--model transformer")
    s["optimizer"] = s["optimizer"] or "adam"
    word = s["tokenizer"] == "word"
    s["lower"] = bool(s["lower"]) or word
    s["seq_len"] = s["seq_len"] or SEQ_LEN[s["batching"]]
    s["batch_size"] = s["batch_size"] or BATCH_SIZE[s["batching"]]
    if s["embedding_dim"] is None:
        s["embedding_dim"] = 100 if word else 64
    if s["lr"] is None:
        s["lr"] = LEARNING_RATE[s["optimizer"]]
    if not 0 <= s["dropout"] <= MAX_RATE:
        raise ScratchLMError(f"--dropout must be a rate in [0, {MAX_RATE}] (above it almost no unit is kept and "
                             f"nothing trains), got {s['dropout']}")
    if not 0 <= s["val_fraction"] < 1:
        raise ScratchLMError(f"--val-fraction must lie in [0, 1), got {s['val_fraction']}")
    if not (s["lr"] > 0 and math.isfinite(s["lr"])):
        raise ScratchLMError(f"--lr must be a positive number, got {s['lr']}")
    if not (s["clipnorm"] >= 0 and math.isfinite(s["clipnorm"])):
        raise ScratchLMError(f"--clipnorm must be a number >= 0 (0 = off), got {s['clipnorm']}")
    return s


def _prepare_data(settings, corpus, tokenizer, config):
    """(tokenizer, train batches, validation batches or None) of ``corpus`` under ``settings``.

    A new run fits its tokenizer here (``tokenizer`` and ``config`` None); a resumed run passes its
    checkpoint's tokenizer and model config. Then, before any text is encoded or vectorized,
    :func:`_check_memory` weighs what training will hold.
    """
    if settings["model"] == "transformer":
        texts, count = _texts(corpus)
        if tokenizer is None:
            tokenizer = VectorTokenizer.fit(texts(), max_tokens=settings["max_tokens"])
        _check_memory(settings, config or model_config(settings, tokenizer.vocab_size), count, config is not None)
        return (tokenizer, *prepare_vectorized(settings, texts, tokenizer, count))
    text = _text(corpus)
    if tokenizer is None:
        tokenizer = (WordTokenizer.fit(text, max_tokens=settings["max_tokens"]) if settings["tokenizer"] == "word"
                     else CharTokenizer.fit(text, lower=settings["lower"]))
    _check_memory(settings, config or model_config(settings, tokenizer.vocab_size), None, config is not None)
    return (tokenizer, *prepare(settings, text, tokenizer, corpus))


def _text(corpus):
    """The text of a corpus file, bundled corpus or URL; CorpusError when it is empty."""
    text = corpora.load_text(corpus, local_hint="pass its path as the corpus: scratchlm train PATH")
    if not text:
        raise corpora.CorpusError(f"{corpus} is empty: training needs text")
    return text


def _texts(corpus):
    """(texts, how many) of a --model transformer corpus; ``texts()`` is a fresh iterator each call: the .txt
    files of a folder laid out like aclImdb/ (read one at a time), else the non-blank lines of a text."""
    if Path(corpus).is_dir():
        return (lambda: imdb.iter_review_files(corpus)), len(imdb.review_paths(corpus))
    text = _text(corpus)

    def lines():
        return (line for line in text.splitlines() if line.strip())
    return lines, sum(1 for _ in lines())


# The settings a model's weights and a training step's activations grow with, besides the vocabulary (and,
# for the step, --batch-size and --seq-len), by model kind.
_SIZES = {"recurrent": (("hidden", "embedding_dim"), ("hidden",)),
          "transformer": (("embedding_dim", "dense_dim", "heads", "key_dim", "layers", "seq_len"),
                          ("heads", "key_dim", "embedding_dim", "dense_dim", "layers"))}


def _shown(settings, *names):
    """'--batch-size 32, --seq-len 100': options and their values in ``settings``, for a memory message."""
    def value(name):
        v = settings["embedding_dim"] if name == "key_dim" and settings[name] is None else settings[name]
        return " ".join(f"{h:,}" for h in v) if isinstance(v, list) else f"{v:,}"
    return ", ".join(f"--{name.replace('_', '-')} {value(name)}" for name in names)


def _check_memory(settings, config, texts, loaded):
    """ResourceError unless what training the model ``config`` describes holds at once fits in memory.

    That is: its weights, their gradients and two optimizer slots (only the gradients when the model is
    ``loaded`` already, on resume), one training step's activations, a batch, and for the Transformer its
    ``texts`` (how many) vectorized. Called before any text is encoded or vectorized and before the model
    is built, so that nothing is allocated for a run that cannot fit.
    """
    B, T = settings["batch_size"], settings["seq_len"]
    parts = []
    if config["kind"] == "transformer":                   # rows of seq_len ids; x and y hold seq_len - 1
        parts.append(budget.Part(f"the {texts:,} texts as ids", budget.vectorized_bytes(texts, T, config["vocab_size"]),
                                 _shown(settings, "seq_len")))
        B, T = min(B, texts), T - 1
    backend = get_backend(settings["backend"], config["dtype"])
    weights = models.MODELS[config["kind"]].parameter_count(config) * backend.dtype.itemsize
    model_sizes, step_sizes = _SIZES[config["kind"]]
    vocabulary = f", vocabulary {config['vocab_size']:,}"
    activations = budget.step_bytes(config, B, T, backend.kernels == "fused", settings["batching"] == "windows")
    parts += [budget.Part("the gradients" if loaded else "the weights, their gradients and the optimizer's state",
                          (1 if loaded else 4) * weights, _shown(settings, *model_sizes) + vocabulary),
              budget.Part("one training step's activations", activations,
                          _shown(settings, "batch_size", "seq_len", *step_sizes) + vocabulary),
              budget.Part("a batch", budget.batch_bytes(B, T), _shown(settings, "batch_size", "seq_len"))]
    fix = ("the run's sizes are fixed in its checkpoint: resume it on a machine with more memory" if loaded else
           "lower the sizes of the largest part")
    budget.check_parts(parts, "training", fix)


def prepare_vectorized(settings, texts, tokenizer, count):
    """(train, validation or None) for --model transformer: each of the ``count`` texts of ``texts()`` (a fresh
    iterator each call) vectorised to ``seq_len`` ids; a seeded ``val_fraction`` of them held out."""
    ids = imdb.vectorize(texts(), tokenizer, length=settings["seq_len"], chunk=max(1, min(4096, count)))  # (N, L)
    held = numpy.random.default_rng(settings["seed"]).permutation(len(ids))[:int(len(ids) * settings["val_fraction"])]
    is_val = numpy.zeros(len(ids), dtype=bool)
    is_val[held] = True
    B = settings["batch_size"]
    train = batching.Vectorized(ids[~is_val], B, seed=settings["seed"])
    val = batching.Vectorized(ids[is_val], B, shuffle=False) if is_val.any() and ids[is_val].any() else None
    return train, val


def prepare(settings, text, tokenizer, corpus):
    """(train batches, validation batches or None) for ``text`` encoded by ``tokenizer`` under ``settings``.

    A resumed run encodes the text with its checkpoint's tokenizer, and a
    character the checkpoint's vocabulary lacks is an error that lists them.
    """
    word = settings["tokenizer"] == "word"
    unknown = "unk" if word else "error"       # a capped word vocabulary has <unk> by design
    B, T, seed = settings["batch_size"], settings["seq_len"], settings["seed"]
    try:
        if settings["batching"] == "padded":
            lines = [line for line in text.splitlines() if line.strip()]
            sequences = [tokenizer.encode(line, unknown=unknown) for line in lines]
            train_seqs, val_seqs = batching.split_sequences(sequences, settings["val_fraction"], seed)
            train = batching.Padded(train_seqs, tokenizer.eos_id, tokenizer.pad_id, B, maxlen=T, seed=seed)
            val = (batching.Padded(val_seqs, tokenizer.eos_id, tokenizer.pad_id, B, maxlen=T, shuffle=False)
                   if any(len(s) for s in val_seqs) else None)
            return train, val
        ids = tokenizer.encode(text, unknown=unknown)
    except VocabularyError as exc:
        if not exc.missing:
            raise
        raise VocabularyError(f"the corpus {corpus} does not match the checkpoint's vocabulary: it holds "
                              f"{len(exc.missing)} character(s) the vocabulary lacks ({listing(exc.missing)}); "
                              "resume with the corpus the run was trained on") from None
    train_ids, val_ids = batching.split_tail(ids, settings["val_fraction"])
    if settings["batching"] == "windows":
        train = batching.Windows(train_ids, T, settings["step"], B, seed=seed)
        val = batching.Windows(val_ids, T, settings["step"], B, shuffle=False) if len(val_ids) > T else None
    else:
        train = batching.Streams(train_ids, B, T)
        ranks = distributed.world().size                   # validation streams divide among the MPI ranks too
        streams = min(B, (len(val_ids) - 1) // T) // ranks * ranks
        val = batching.Streams(val_ids, streams, T) if streams >= 1 else None
    return train, val


# -- sample -----------------------------------------------------------------------

def _checkpoint_path(path):
    """A run directory -> its best.npz (else last.npz); a file -> itself."""
    if path.is_dir():
        for name in (BEST, LAST):
            if (path / name).exists():
                return path / name
    return path


def _unknown_token(tokenizer):
    """How ``tokenizer`` writes the token that stands for what its vocabulary lacks: <unk>, or [UNK] for the
    Transformer's TextVectorization vocabulary."""
    return VectorTokenizer.UNK if tokenizer.kind == VectorTokenizer.kind else UNK


def _other_rank():
    """True on every MPI rank but rank 0: ``sample`` and ``info`` run once, on rank 0, under mpiexec too.

    The launcher's environment says which rank this is; MPI is never started for them.
    """
    return distributed.launcher_rank() != 0


def cmd_sample(args):
    if _other_rank():
        return 0
    for t in args.temperature:
        sampling.check_options(t, args.top_k, args.top_p)
    path = _checkpoint_path(args.checkpoint)
    try:
        ckpt = load_checkpoint(path, backend=args.backend)
    except ModelError as exc:                     # a file read whole whose model cannot be built (NaN weights)
        raise CheckpointError(f"{path}: {exc}") from None
    tokenizer = _tokenizer_of(ckpt.metadata, ckpt.model.vocab_size, path)
    if tokenizer is None:
        raise ScratchLMError(f"{args.checkpoint} holds a model but no tokenizer, so its ids cannot be turned into "
                             "text: sample from it in Python with model.generate")
    lines = "data" in ckpt.metadata and _metadata_dict(ckpt.metadata, "data", path).get("kind") == "padded"
    eos = tokenizer.eos_id if lines else None
    banned = [i for i in tokenizer.special_ids if i != eos]
    if args.prime_file is not None:
        prime = files.read_regular_text(args.prime_file, "prime file", 1 << 20, universal_newlines=True)
    elif args.prime is not None:
        prime = args.prime
    elif lines:
        prime = ""
    elif tokenizer.kind == "char" and "\n" in tokenizer.chars:
        prime = "\n"
    else:
        raise ScratchLMError("this model needs text to start from: pass --prime TEXT or --prime-file FILE")
    try:
        prompt = tokenizer.encode(prime, unknown=args.unknown).astype(numpy.int64)
    except VocabularyError as exc:
        if not exc.missing:
            raise
        what = "character" if tokenizer.kind == "char" else "word"
        raise VocabularyError(f"the prime holds {len(exc.missing)} {what}{'s' if len(exc.missing) > 1 else ''} "
                              f"the model's vocabulary lacks: {listing(exc.missing)}; leave them out with "
                              "--unknown skip" + (f", or replace them by {_unknown_token(tokenizer)} with --unknown "
                                                  "unk" if tokenizer.unk_id is not None else "")) from None
    if lines:
        prompt = numpy.concatenate([[eos], prompt]).astype(numpy.int64)
    if len(prompt) == 0:
        raise ScratchLMError("the prime is empty (after skipping unknown characters): pass a longer --prime")
    shown = render(tokenizer, prompt)
    for t in args.temperature:
        out = ckpt.model.generate(prompt, args.length, temperature=t, top_k=args.top_k, top_p=args.top_p,
                                  eos_id=eos, banned_ids=banned, seed=args.seed)
        label = "greedy" if t == 0 else f"temperature {t:g}"
        print(f"--- {label}\n{shown}{render(tokenizer, out)}\n", flush=True)
    return 0


# -- bench ------------------------------------------------------------------------

BENCH_SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py"


def cmd_bench(options):
    """``scratchlm bench [OPTIONS]`` = ``python benchmarks/bench.py [OPTIONS]`` in a source checkout."""
    if not BENCH_SCRIPT.is_file():
        raise ScratchLMError("the benchmarks come with the source repository, not the installed package: clone it "
                             "and run  python benchmarks/bench.py  there")
    import runpy
    return runpy.run_path(str(BENCH_SCRIPT))["main"](options) or 0


# -- info -------------------------------------------------------------------------

def _info_path(arg):
    """The checkpoint ``scratchlm info ARG`` describes: a file itself, else the run directory's last.npz (its
    latest state), else its best.npz."""
    if not arg.is_dir():
        return arg
    for name in (LAST, BEST):
        if (arg / name).exists():
            return arg / name
    raise CheckpointError(f"{arg} holds no {LAST} or {BEST}: it is not a run directory, or its run wrote no "
                          "checkpoint yet")


def _non_finite(arrays):
    """'key: n of N values' for each float array of a checkpoint that holds NaN or infinity."""
    counts = {key: int(a.size - numpy.count_nonzero(numpy.isfinite(a)))
              for key, a in arrays.items() if a.dtype.kind == "f"}
    return [f"{key}: {n:,} of {arrays[key].size:,} values" for key, n in counts.items() if n]


def cmd_info(args):
    """Describe a checkpoint from its checked header and the sizes of its arrays: the model is never built."""
    if _other_rank():
        return 0
    path = _info_path(args.checkpoint)
    header, arrays = models.read(path)
    config, meta = header["model"], header["metadata"]
    params = sum(a.size for key, a in arrays.items() if key.startswith("param/"))
    rows = [("checkpoint", f"{path} ({path.stat().st_size / 1e6:.1f} MB)"),
            ("model", f"{models.describe(config)}, {params:,} parameters"
             + (", stateful" if config.get("stateful") else ""))]
    bad = _non_finite(arrays)
    if bad:
        rows.append(("not finite", f"{'; '.join(bad)}: the run diverged, this checkpoint cannot be sampled from "
                                   "or resumed"))
    tok = _tokenizer_of(meta, config["vocab_size"], path)
    if tok is not None:
        extra = (", lower-cased" if tok.lower else "") + ("" if tok.reserved else ", no reserved ids")
        rows.append(("tokenizer", f"{tok.kind}, {tok.vocab_size:,} tokens{extra}"))
    if header["optimizer"] is not None:
        opt = optim.from_state(header["optimizer"], {})
        hyper = ", ".join(f"{k}={v}" for k, v in opt.hyperparameters().items())
        rows.append(("optimizer", f"{opt.name} ({hyper}), {opt.iterations:,} steps"))
    if "data" in meta:
        data_config = _metadata_dict(meta, "data", path)
        rows.append(("data", ", ".join(f"{k}={v}" for k, v in data_config.items() if k != "fingerprint")))
    if "cli" in meta:
        rows.append(("corpus", str(_metadata_dict(meta, "cli", path).get("corpus"))))
    position = meta.get("train")
    if position is not None:
        check_position(position)
        done = (f"{position['epoch']} epochs complete" if position["batch"] == 0 else
                f"in epoch {position['epoch'] + 1}, after batch {position['batch']:,}")
        rows.append(("position", f"{done}, {position['step']:,} steps taken"))
        if position["best_val_loss"] is not None:
            rows.append(("best val loss", f"{position['best_val_loss']:.4f}"))
        for r in position["history"]:
            val = f", val {r['val_loss']:.4f}" if r["val_loss"] is not None else ""
            rows.append((f"epoch {r['epoch']}", f"loss {r['loss']:.4f}{val}, {r['seconds']:.1f} s"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0
