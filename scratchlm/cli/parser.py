"""The command line of ``scratchlm``: its parser, its option types, and the options of each command.

    build_parser().parse_args(["train", "my.txt"])     # Namespace(command="train", run=cmd_train, ...)

Each command's parser sets ``run``, the function that carries it out (:mod:`scratchlm.cli.train`,
:mod:`scratchlm.cli.sample`, :mod:`scratchlm.cli.info`, :mod:`scratchlm.cli.eval`); ``bench`` passes its options
on to benchmarks/bench.py (see :func:`scratchlm.cli.main`).
A usage error is one line on stderr and exit code 2.
"""

import argparse
import reprlib
import textwrap
from pathlib import Path

from .. import checkpoint, distributed
from ..bfloat16 import DECODING_WEIGHTS
from ..errors import ScratchLMError
from ..models.transformer import INITS
from . import eval, info, sample, train
from .settings import LEARNING_RATE, PRESETS


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit code 2) instead of usage + error."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n" if _reports() else None)


def _reports():
    """Whether this process prints an error that every process of the run meets: all but MPI ranks other than 0."""
    try:
        return distributed.world().is_root
    except ScratchLMError:  # under an MPI launcher without mpi4py: every process says so
        return True


def _whole(s, least):
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {s!r}") from None
    if v < least:
        raise argparse.ArgumentTypeError(f"expected a number >= {least}, got {s}")
    if v > checkpoint.LARGEST:  # what a checkpoint may record (int64's largest)
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


def _init(s):
    """--init: an initialisation's name, or a Hugging Face GPT-2 folder (its absolute path)."""
    folder = Path(s)
    if s in INITS:
        if (folder / "config.json").is_file():
            raise argparse.ArgumentTypeError(
                f"{s} names GPT-2's initialisation and also a folder here: write --init ./{s} to start from the folder"
            )
        return s
    if not (folder / "config.json").is_file():
        raise argparse.ArgumentTypeError(
            f"{s!r} is neither keras, gpt2 nor a folder holding a Hugging Face model's config.json"
        )
    return str(folder.resolve())


def _wrap(text):
    """Fill each paragraph to 79 columns (the help formatter keeps our line breaks)."""
    return "\n\n".join(textwrap.fill(" ".join(p.split()), 79) for p in text.split("\n\n"))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="scratchlm",
        description="Train LSTM language models on your own text and sample "
        "from them. A from-scratch engine: NumPy on the CPU, CuPy on a GPU.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run  scratchlm COMMAND --help  for the options of each command.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_train(commands)
    _add_sample(commands)
    _add_eval(commands)
    _add_info(commands)
    _add_bench(commands)
    return parser


def _add_train(commands):
    p = commands.add_parser(
        "train",
        help="train a model on a text file (or continue a run with --resume)",
        description=_wrap(
            "Train a character- or word-level LSTM language model on a text file. Progress, "
            "per-epoch loss and sample text are printed as it learns; checkpoints, a metrics log and (with "
            "matplotlib) a loss plot go to the run directory.\n\nStop it any time with Ctrl-C and continue "
            "later with --resume: the resumed run does exactly what the uninterrupted one would have done."
        ),
        epilog="Examples:\n  scratchlm train my.txt --run-dir runs/my\n"
        "  scratchlm train nietzsche --batching windows --embedding-dim 0 --hidden 128 --optimizer rmsprop "
        "--lr 0.01 --clipnorm 0 --val-fraction 0\n"
        "  scratchlm train tinyshakespeare --preset nanogpt-cpu --run-dir runs/gpt\n"
        "  scratchlm train --resume runs/my --epochs 20",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "corpus",
        nargs="?",
        metavar="CORPUS",
        help="a UTF-8 text file (plain or .gz), 'nietzsche' / 'tinyshakespeare' (bundled with "
        "scratchlm), or an http(s) URL (downloaded once and cached in $SCRATCHLM_CACHE, default "
        "~/.cache/scratchlm). With --resume it defaults to the run's corpus.",
    )
    p.add_argument(
        "--run-dir",
        type=Path,
        metavar="DIR",
        help="where checkpoints (last.npz, best.npz), metrics.jsonl and loss.png go (default runs/<corpus name>)",
    )
    p.add_argument(
        "--resume",
        type=Path,
        metavar="DIR",
        help="continue the run in DIR from its last checkpoint (the settings come from the checkpoint; "
        "only --epochs, --max-steps, --checkpoint-every, --backend and the sample options may change)",
    )
    g = p.add_argument_group("text and batches")
    g.add_argument(
        "--tokenizer",
        choices=["char", "word", "bpe"],
        help="one token per character (default), per word and punctuation mark, or byte-level BPE (GPT-2's "
        "tokenizer, its merges learned from the corpus up to --vocab-size tokens)",
    )
    g.add_argument(
        "--lower", action="store_true", default=None, help="lower-case the text first (word level always does)"
    )
    g.add_argument(
        "--max-tokens",
        type=_positive_int,
        metavar="N",
        help="word level and the IMDB seed's --model transformer: keep the N most frequent tokens (default "
        "10000, the seed 15000); the rest become <unk> ([UNK] for the seed)",
    )
    g.add_argument(
        "--vocab-size",
        type=_positive_int,
        metavar="N",
        help="--tokenizer bpe: learn merges until the vocabulary has N tokens: the 256 byte symbols, one per "
        "merge, and <|endoftext|> (default 2000; fewer when no pair of tokens occurs twice any more)",
    )
    g.add_argument(
        "--batching",
        choices=["streams", "windows", "random", "padded"],
        help="streams: the text as parallel streams read in chunks, state carried between chunks "
        "(default, the fastest learner); windows: every --step-th window of --seq-len tokens, "
        "predict the next (the Keras book); random: windows of --seq-len tokens from random starts, every "
        "position scored (nanoGPT's get_batch; an epoch is len(train) // (B·T) batches, at least 1); padded: "
        "one sequence per line, padded, ends with <eos>. --model transformer takes random (its default with "
        "--tokenizer) or streams (no state carried)",
    )
    g.add_argument(
        "--seq-len",
        type=_positive_int,
        metavar="T",
        help="tokens per chunk/window, the maximum line length for padded (default 100 / 60 / 200)",
    )
    g.add_argument(
        "--step", type=_positive_int, metavar="S", help="windows: distance between window starts (default 3)"
    )
    g.add_argument("--batch-size", type=_positive_int, metavar="B", help="default 64 / 128 / 32")
    g.add_argument(
        "--val-fraction",
        type=_number,
        metavar="F",
        help="hold out this fraction of the text (the end of it; random lines for padded) for the "
        "validation loss (default 0.05; 0 = no validation)",
    )
    g = p.add_argument_group("model and optimizer")
    g.add_argument(
        "--embedding-dim",
        type=_nonnegative_int,
        metavar="E",
        help="size of the learned token embedding; 0 feeds one-hot tokens to a recurrent model (default "
        "64, word level 100, transformer 256: it has no one-hot input)",
    )
    g.add_argument(
        "--cell",
        choices=["lstm", "gru"],
        help="the recurrent cell of every layer: lstm (default) "
        "or gru (Keras' GRU, reset gate after the recurrent product)",
    )
    g.add_argument(
        "--hidden",
        type=_positive_int,
        nargs="+",
        metavar="H",
        help="units of each stacked recurrent layer, e.g. --hidden 512 512 (default 256)",
    )
    g.add_argument(
        "--model",
        choices=["recurrent", "transformer"],
        help="recurrent (default: an LSTM or GRU stack) or transformer (a decoder LM; with --tokenizer or "
        "--batching a GPT on the text, e.g. --tokenizer char as nanoGPT's shakespeare_char; without, the "
        "IMDB seed's: word ids as TextVectorization makes them, one sequence per line or per .txt file of a "
        "folder laid out like aclImdb/, cut to --seq-len, default 100)",
    )
    g.add_argument(
        "--block",
        choices=["book", "gpt"],
        help="transformer: the seed's post-LayerNorm block (default) or a pre-LayerNorm GPT block",
    )
    g.add_argument("--heads", type=_positive_int, metavar="N", help="transformer: attention heads (default 2)")
    g.add_argument(
        "--key-dim",
        type=_positive_int,
        metavar="K",
        help="transformer: dimensions of each head (default: the embedding size, as the seed; --block gpt "
        "on a text: embedding size // --heads, as GPT-2)",
    )
    g.add_argument(
        "--dense-dim",
        type=_positive_int,
        metavar="F",
        help="transformer: hidden units of the feed-forward (default 2048; --block gpt on a text: 4 × the "
        "embedding size, as GPT-2)",
    )
    g.add_argument("--layers", type=_positive_int, metavar="L", help="transformer: decoder blocks (default 1)")
    g.add_argument(
        "--dropout",
        type=_number,
        metavar="RATE",
        help="in training only (default 0 = none): Keras-style dropout on each recurrent layer's output; "
        "--block gpt: on the embeddings, the attention probabilities and each residual branch, as nanoGPT",
    )
    g.add_argument(
        "--activation",
        choices=["relu", "gelu", "gelu_tanh"],
        help="transformer: the feed-forward's activation: relu (default, the seed's), gelu (exact, as PyTorch's "
        "nn.GELU and nanoGPT) or gelu_tanh (GPT-2's tanh approximation)",
    )
    g.add_argument(
        "--layernorm-epsilon",
        type=_number,
        metavar="EPS",
        help="transformer: ε of every LayerNorm (default 1e-3, Keras'; GPT-2 and nanoGPT 1e-5)",
    )
    g.add_argument(
        "--tie-embeddings",
        action="store_true",
        default=None,
        help="transformer: the output layer is the token embedding, transposed, with no bias (GPT-2's tied "
        "wte/lm_head)",
    )
    g.add_argument(
        "--no-bias",
        dest="use_bias",
        action="store_false",
        default=None,
        help="transformer: no bias in the projections, the feed-forward, the LayerNorms or the output "
        "(nanoGPT's bias=False)",
    )
    g.add_argument(
        "--init",
        type=_init,
        metavar="{keras,gpt2,HF_FOLDER}",
        help="transformer: keras (default, the seed's) or gpt2: N(0, 0.02), the residual projections scaled "
        "by 1/√(2·layers), biases 0; or a Hugging Face GPT-2 folder to fine-tune (config.json, "
        "model.safetensors, vocab.json, merges.txt): its architecture and tokenizer, its weights to start from",
    )
    g.add_argument("--optimizer", choices=sorted(LEARNING_RATE), help="default adam (transformer: rmsprop)")
    g.add_argument(
        "--lr",
        type=_number,
        help="learning rate, the peak of a schedule (default 0.002 adam, 0.001 adamw, 0.001 rmsprop, 0.01 sgd)",
    )
    g.add_argument(
        "--clipnorm",
        type=_number,
        metavar="C",
        help="rescale the gradients so that their global norm is at most C (default 5; 0 = off)",
    )
    g.add_argument("--dtype", choices=["float32", "float64"], help="default float32")
    g = p.add_argument_group(
        "optimizer and learning-rate schedule (nanoGPT: --optimizer adamw --lr 1e-3 --beta2 0.99 "
        "--clipnorm 1 --lr-schedule cosine --warmup-steps 100 --min-lr 1e-4)"
    )
    g.add_argument(
        "--weight-decay",
        type=_number,
        metavar="W",
        help="adamw: decoupled weight decay of the weights (kernels, embeddings; not biases or LayerNorm), "
        "w -= lr·W·w each step (default 0.1)",
    )
    g.add_argument("--beta2", type=_number, metavar="B2", help="adam, adamw: β₂ (default 0.999; nanoGPT 0.99)")
    g.add_argument(
        "--lr-schedule",
        choices=["constant", "cosine", "step"],
        help="constant (default); cosine: from --lr down to --min-lr at --decay-steps (nanoGPT's get_lr); "
        "step: --lr times --lr-decay-factor every --lr-decay-every steps (char-rnn, torch-rnn)",
    )
    g.add_argument(
        "--warmup-steps",
        type=_nonnegative_int,
        metavar="N",
        help="any schedule: rise linearly to --lr over the first N steps (default 0)",
    )
    g.add_argument("--min-lr", type=_number, metavar="LR", help="cosine: the final rate (default --lr / 10)")
    g.add_argument(
        "--decay-steps",
        type=_positive_int,
        metavar="N",
        help="cosine: the step it reaches --min-lr (default --max-steps)",
    )
    g.add_argument("--lr-decay-every", type=_positive_int, metavar="N", help="step: steps between two decays")
    g.add_argument("--lr-decay-factor", type=_number, metavar="F", help="step: in (0, 1] (default 0.5)")
    g.add_argument(
        "--grad-accum",
        type=_positive_int,
        metavar="N",
        help="gradient accumulation: N batches make one step, as one batch N times as large (default 1)",
    )
    g = p.add_argument_group("run")
    g.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="start from the settings of a known command; options given besides override them. nanogpt-cpu: "
        "nanoGPT's README CPU command (shakespeare_char at --seq-len 64 --batch-size 12, 4 layers, 4 heads, "
        "embedding 128, GELU, ε 1e-5, tied, no bias, GPT-2 init, dropout 0; AdamW 1e-3, weight decay 0.1, "
        "β₂ 0.99, cosine to 1e-4 over 2000 steps after 100 of warmup, --clipnorm 1, --max-steps 2000, "
        "--val-fraction 0.1), e.g. scratchlm train tinyshakespeare --preset nanogpt-cpu",
    )
    g.add_argument("--epochs", type=_positive_int, help="passes over the training text (default 10)")
    g.add_argument(
        "--max-steps",
        type=_positive_int,
        metavar="N",
        help="stop after N steps in all, e.g. for a quick try (counting steps before a resume)",
    )
    g.add_argument(
        "--checkpoint-every",
        type=_positive_int,
        metavar="N",
        help="also write last.npz every N steps (default 500), besides after every epoch",
    )
    g.add_argument(
        "--seed", type=_nonnegative_int, help="seeds the weights, the batch order and the samples (default 0)"
    )
    g.add_argument(
        "--backend",
        choices=["numpy", "cupy", "auto"],
        help="numpy (CPU, default), cupy (CUDA GPU; needs the gpu extra) or auto",
    )
    g.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        default=None,
        help="no progress bar (it is shown only on a terminal anyway)",
    )
    g = p.add_argument_group("samples after each epoch")
    g.add_argument(
        "--sample-length", type=_nonnegative_int, metavar="N", help="tokens per sample (default 400; 0 = no samples)"
    )
    g.add_argument(
        "--temperature",
        type=_number,
        nargs="+",
        metavar="T",
        help="one sample per temperature (default 0.2 0.5 1.0 1.2)",
    )
    g.add_argument(
        "--prime", metavar="TEXT", help="start the samples from TEXT (default: a random stretch of the training text)"
    )
    p.set_defaults(run=train.cmd_train)


def _add_sample(commands):
    p = commands.add_parser(
        "sample",
        help="generate text from a trained model",
        description=_wrap(
            "Generate text from a checkpoint, one sample per temperature. Low temperatures "
            "(0.2) give safe, repetitive text; 1.0 is the model's own distribution; higher is wilder; 0 is "
            "greedy (always the most likely token)."
        ),
        epilog='Example:\n  scratchlm sample runs/my --prime "The meaning of " --temperature 0.2 0.5 1.0',
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "checkpoint",
        type=Path,
        metavar="CHECKPOINT",
        help="a checkpoint file, a run directory (its best.npz, else its last.npz), or a Hugging Face GPT-2 folder "
        "(config.json, model.safetensors, vocab.json, merges.txt)",
    )
    prime = p.add_mutually_exclusive_group()
    prime.add_argument(
        "--prime",
        metavar="TEXT",
        help="text to continue (default: a newline, or the start of a new line for models trained on lines)",
    )
    prime.add_argument("--prime-file", type=Path, metavar="FILE", help="read the prime text from FILE")
    p.add_argument("--length", type=_nonnegative_int, default=400, help="tokens to generate (default 400)")
    p.add_argument(
        "--temperature",
        type=_number,
        nargs="+",
        default=[1.0],
        metavar="T",
        help="one or more temperatures >= 0 (default 1.0; 0 = greedy)",
    )
    p.add_argument("--top-k", type=_positive_int, metavar="K", help="sample only among the K most likely tokens")
    p.add_argument(
        "--top-p",
        type=_number,
        metavar="P",
        help="sample only among the most likely tokens whose probabilities add up to P (0 < P <= 1)",
    )
    p.add_argument(
        "--seed", type=_nonnegative_int, default=0, help="random seed (default 0): the same seed, the same text"
    )
    p.add_argument("--backend", choices=["numpy", "cupy", "auto"], default="numpy", help="default numpy")
    p.add_argument(
        "--weights",
        choices=DECODING_WEIGHTS,
        default="float32",
        help="bfloat16: a recurrent float32 model's recurrent kernels rounded to bfloat16 while sampling, half the "
        "bytes per token (faster at batch 1; its cost in held-out loss is in docs/benchmarks.md); default float32",
    )
    p.add_argument(
        "--unknown",
        choices=["error", "skip", "unk"],
        default="error",
        help="what to do with prime characters/words the vocabulary lacks: stop with an error "
        "that lists them (default), skip them, or replace them by the unknown token (<unk>; [UNK] "
        "for a --model transformer vocabulary)",
    )
    p.set_defaults(run=sample.cmd_sample)


def _add_eval(commands):
    p = commands.add_parser(
        "eval",
        help="score a held-out text: loss, bits per token, perplexity",
        description=_wrap(
            "Score a checkpoint on its run's held-out text (the --val-fraction the run cut off, as it cut it), "
            "or on any text file: the mean loss over every token of the text (not a sample), in nats per "
            "token, bits per token (per character for a character-level model) and perplexity. The text is "
            "read in --batch-size streams of --seq-len chunks; a recurrent model trained on streams carries "
            "its state from chunk to chunk, as validation does."
        ),
        epilog="Examples:\n  scratchlm eval runs/shakespeare\n  scratchlm eval runs/shakespeare other.txt --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "checkpoint",
        type=Path,
        metavar="RUN_DIR",
        help="a run directory (its best.npz, else its last.npz), a checkpoint file, or a Hugging Face GPT-2 folder "
        "(then name a TEXT)",
    )
    p.add_argument(
        "text",
        nargs="?",
        metavar="TEXT",
        help="a text file (or bundled corpus name) to score instead of the run's held-out text",
    )
    p.add_argument(
        "--batch-size", type=_positive_int, metavar="B", help="streams (lines) per batch (default: the run's)"
    )
    p.add_argument(
        "--seq-len",
        type=_positive_int,
        metavar="T",
        help="tokens per chunk (default: the run's; a Transformer's sequence_length, at most that)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout (for scripts)")
    p.add_argument(
        "--weights",
        choices=DECODING_WEIGHTS,
        default="float32",
        help="bfloat16: score with a recurrent float32 model's recurrent kernels rounded to bfloat16, as sample "
        "--weights bfloat16 reads them (the loss that rounding costs); default float32",
    )
    p.add_argument("--backend", choices=["numpy", "cupy", "auto"], default="numpy", help="default numpy")
    p.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        default=None,
        help="no progress bar (on stderr; it is shown only on a terminal anyway)",
    )
    p.set_defaults(run=eval.cmd_eval)


def _add_info(commands):
    p = commands.add_parser(
        "info",
        help="show what a checkpoint holds",
        description="Show a checkpoint's model, vocabulary, optimizer, training position, "
        "settings and per-epoch losses.",
    )
    p.add_argument(
        "checkpoint",
        type=Path,
        metavar="CHECKPOINT",
        help="a checkpoint file, a run directory or a Hugging Face GPT-2 folder",
    )
    p.set_defaults(run=info.cmd_info)


def _add_bench(commands):
    commands.add_parser(
        "bench", help="time scratchlm against Keras and PyTorch (from a source checkout)", add_help=False
    )  # its options are benchmarks/bench.py's: see cmd_bench
