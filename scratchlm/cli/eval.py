"""``scratchlm eval``: a checkpoint's loss on its run's held-out text, or on any text file.

    scratchlm eval runs/shakespeare                 # the held-out split, as the run cut it
    scratchlm eval runs/shakespeare other.txt --json
    scratchlm eval gpt2/ wiki.txt                    # a Hugging Face GPT-2 folder on any text

Every target of the text is scored once (not a sample), batched: a text read as one sequence is cut into
streams read in chunks (:class:`~scratchlm.batching.Whole`; a stateful recurrent model carries its state
from chunk to chunk, as validation does), a run trained on lines (padded, or the IMDB seed's vectorized
reviews) is scored line by line as it was validated. The mean loss L in nats per token gives

    bits per token = L / ln 2        perplexity = e^L

(bits per character for a character-level model).
"""

import json
import math

from .. import batching, corpora, distributed
from ..errors import CheckpointError, ModelError, ScratchLMError
from ..text import VocabularyError, listing
from ..train import load_checkpoint
from ..train.reporting import progress_bar
from . import hf
from .metadata import settings_of, tokenizer_of
from .prepare import prepare_data
from .sample import _checkpoint_path


def cmd_eval(args):
    if distributed.launcher_rank() != 0:  # under mpiexec it runs once, on rank 0 (MPI is never started)
        return 0
    if not args.checkpoint.exists():
        raise ScratchLMError(f"there is no run directory or checkpoint {args.checkpoint}: check the path")
    if hf.is_hf_folder(args.checkpoint):  # a Hugging Face GPT-2 folder: no run, so no held-out split
        path, metadata = args.checkpoint, {}
        model, tokenizer = hf.load(path, args.backend)
    else:
        path = _checkpoint_path(args.checkpoint)
        try:
            ckpt = load_checkpoint(path, backend=args.backend)
        except ModelError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
        model, metadata = ckpt.model, ckpt.metadata
        tokenizer = tokenizer_of(metadata, model.vocab_size, path)
        if tokenizer is None:
            raise ScratchLMError(f"{path} holds no tokenizer, so no text can be scored with it: score it in Python")
    settings = settings_of(metadata, path) if "cli" in metadata else None
    batches, what = _batches(args, model, tokenizer, settings, metadata.get("data"), path)
    with model.decoding_weights(args.weights):
        loss, targets = score(model, batches, args.progress)
    unit = "character" if tokenizer.kind == "char" else "token"
    result = {
        "checkpoint": str(path),
        "text": what,
        "tokens": targets,
        "nats_per_token": loss,
        "bits_per_token": loss / math.log(2),
        "perplexity": math.exp(loss) if loss < 700 else math.inf,
    }
    if unit == "character":
        result["bits_per_character"] = result["bits_per_token"]
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{path} on {what} ({targets:,} {unit}s): {loss:.4f} nats per token, "
            f"{result['bits_per_token']:.4f} bits per {unit}, perplexity {result['perplexity']:.3f}"
        )
    return 0


def score(model, batches, progress=None):
    """(mean loss per scored target in nats, how many targets) of ``model`` over all of ``batches``.

    A stateful model starts from zero state and, when the batches are consecutive (``batches.stateful``),
    carries it from one batch to the next; the sum Σ loss·targets is kept in float64.
    """
    total, count = 0.0, 0
    model.reset_state()
    with progress_bar(batches.num_batches, 0, "eval", progress) as bar:
        for batch in batches.batches(0):
            if not batches.stateful:
                model.reset_state()
            loss = model.loss(batch.x, batch.y, mask=batch.mask, last_only=batches.last_only)
            total, count = total + float(loss) * batch.targets, count + batch.targets
            bar.update()
    model.reset_state()
    return total / count, count


def _batches(args, model, tokenizer, settings, data, path):
    """(the batches that score the text ``args`` name, what they hold in words)."""
    lines = settings is not None and settings["batching"] in ("padded", "vectorized")
    if args.text is None:
        if settings is None:
            raise ScratchLMError(
                f"{path} was not trained with `scratchlm train`, so it records no held-out text: name a TEXT to score"
            )
        if settings["val_fraction"] == 0:
            raise ScratchLMError(
                "the run held out no text (--val-fraction 0): name a TEXT file to score, "
                f"e.g. scratchlm eval {args.checkpoint} held_out.txt"
            )
        corpus, what = settings["corpus"], f"the held-out {settings['val_fraction']:g} of {settings['corpus']}"
    else:
        corpus, what = str(args.text), str(args.text)
    if lines:  # scored line by line, as the run validated
        held = dict(settings, corpus=corpus, batch_size=args.batch_size or settings["batch_size"])
        if args.text is not None:
            held["val_fraction"] = 0.0
        try:
            _, train, val = prepare_data(held, corpus, tokenizer, model.config)
        except VocabularyError as exc:
            raise _vocabulary_error(corpus, exc) from None
        batches = train if args.text is not None else val
        if batches is None:
            raise ScratchLMError(f"{what} holds no line to score: name a TEXT file to score")
        return batches, what
    text = corpora.load_text(corpus, local_hint="score a local file: scratchlm eval RUN_DIR PATH")
    try:
        ids = tokenizer.encode(text, unknown="unk" if tokenizer.kind == "word" else "error")
    except VocabularyError as exc:
        raise _vocabulary_error(corpus, exc) from None
    if args.text is None:
        train_ids, ids = batching.split_tail(ids, settings["val_fraction"])
        _check_same_corpus(corpus, train_ids, data)
    T = args.seq_len or _default_length(model, settings)
    if model.kind == "transformer" and T > model.sequence_length:
        raise ScratchLMError(
            f"--seq-len {T} is longer than the model's sequence_length {model.sequence_length}: "
            f"give at most {model.sequence_length}"
        )
    if len(ids) < 2:
        raise ScratchLMError(f"{what} holds {len(ids)} token(s): scoring needs at least 2")
    B = args.batch_size or (settings["batch_size"] if settings is not None else _default_batch(model, T))
    return batching.Whole(ids, B, T), what


def _check_same_corpus(corpus, train_ids, data):
    """ScratchLMError unless the training part of ``corpus`` is the text the run trained on (the fingerprint
    in its checkpoint's metadata["data"]), so that the held-out part is the one the run held out."""
    if isinstance(data, dict) and "fingerprint" in data and data["fingerprint"] != corpora.fingerprint(train_ids):
        raise ScratchLMError(
            f"{corpus} is no longer the text the run trained on (its training part differs): "
            "score the held-out text as a TEXT file instead"
        )


def _default_batch(model, T):
    """Rows per batch for a model without a run's settings: 64, fewer when that many rows' logits (T x V floats
    each, GPT-2's 1024 x 50,257) would pass 256 MB."""
    return max(1, min(64, (256 << 20) // (4 * T * model.vocab_size)))


def _default_length(model, settings):
    """The chunk length a run was trained with: the Transformer's window, else the run's --seq-len (or 100)."""
    if model.kind == "transformer":
        return model.sequence_length
    return settings["seq_len"] if settings is not None else 100


def _vocabulary_error(corpus, exc):
    if not exc.missing:
        return exc
    return VocabularyError(
        f"{corpus} holds {len(exc.missing)} character(s) the model's vocabulary lacks ({listing(exc.missing)}): "
        "score a text written in the run's characters"
    )
