"""The data of a ``scratchlm train`` run: its corpus read, its tokenizer, its training and validation batches.

Before any text is encoded or vectorized, :func:`prepare_data` weighs what training will hold in memory
(:func:`check_memory`), so that a run that cannot fit stops with one line before allocating anything.
"""

from pathlib import Path

import numpy

from .. import batching, budget, corpora, distributed, models
from ..backend import get_backend
from ..bpe import BPETokenizer
from ..datasets import imdb
from ..text import CharTokenizer, VectorTokenizer, VocabularyError, WordTokenizer, listing
from .settings import model_config


def prepare_data(settings, corpus, tokenizer, config):
    """(tokenizer, train batches, validation batches or None) of ``corpus`` under ``settings``.

    A new run fits its tokenizer here (``tokenizer`` and ``config`` None); a resumed run passes its
    checkpoint's tokenizer and model config. Then, before any text is encoded or vectorized,
    :func:`check_memory` weighs what training will hold.
    """
    if settings["batching"] == "vectorized":  # the IMDB seed's Transformer: one review per line or file
        texts, count = _texts(corpus)
        if tokenizer is None:
            tokenizer = VectorTokenizer.fit(texts(), max_tokens=settings["max_tokens"])
        check_memory(settings, config or model_config(settings, tokenizer.vocab_size), count, config is not None)
        return (tokenizer, *prepare_vectorized(settings, texts, tokenizer, count))
    text = _text(corpus)
    if tokenizer is None:
        tokenizer = _fit(settings, text)
    check_memory(settings, config or model_config(settings, tokenizer.vocab_size), None, config is not None)
    return (tokenizer, *prepare(settings, text, tokenizer, corpus))


def _fit(settings, text):
    """The tokenizer a new run's settings describe, fitted to ``text``. A BPE vocabulary has at most --vocab-size
    tokens, so the memory its model needs is weighed before the merges are learned."""
    if settings["tokenizer"] == "word":
        return WordTokenizer.fit(text, max_tokens=settings["max_tokens"])
    if settings["tokenizer"] == "bpe":
        check_memory(settings, model_config(settings, settings["vocab_size"]), None, False)
        return BPETokenizer.train(text, settings["vocab_size"], lower=settings["lower"], progress=settings["progress"])
    return CharTokenizer.fit(text, lower=settings["lower"])


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
_SIZES = {
    "recurrent": (("hidden", "embedding_dim"), ("hidden",)),
    "transformer": (
        ("embedding_dim", "dense_dim", "heads", "key_dim", "layers", "seq_len"),
        ("heads", "key_dim", "embedding_dim", "dense_dim", "layers"),
    ),
}


def _shown(settings, *names):
    """'--batch-size 32, --seq-len 100': options and their values in ``settings``, for a memory message."""

    def value(name):
        v = settings["embedding_dim"] if name == "key_dim" and settings[name] is None else settings[name]
        return " ".join(f"{h:,}" for h in v) if isinstance(v, list) else f"{v:,}"

    return ", ".join(f"--{name.replace('_', '-')} {value(name)}" for name in names)


def check_memory(settings, config, texts, loaded):
    """ResourceError unless what training the model ``config`` describes holds at once fits in memory.

    That is: its weights, their gradients and two optimizer slots (only the gradients when the model is
    ``loaded`` already, on resume), one training step's activations, a batch, and for the IMDB seed's
    Transformer its ``texts`` (how many; None for a run on one text) vectorized. Called before any text is
    encoded or vectorized and before the model is built, so that nothing is allocated for a run that cannot fit.
    """
    B, T = settings["batch_size"], settings["seq_len"]
    parts = []
    if texts is not None:  # the IMDB seed's rows of seq_len ids; x and y hold seq_len - 1
        parts.append(
            budget.Part(
                f"the {texts:,} texts as ids",
                budget.vectorized_bytes(texts, T, config["vocab_size"]),
                _shown(settings, "seq_len"),
            )
        )
        B, T = min(B, texts), T - 1
    backend = get_backend(settings["backend"], config["dtype"])
    weights = models.MODELS[config["kind"]].parameter_count(config) * backend.dtype.itemsize
    model_sizes, step_sizes = _SIZES[config["kind"]]
    vocabulary = f", vocabulary {config['vocab_size']:,}"
    activations = budget.step_bytes(config, B, T, backend.kernels == "fused", settings["batching"] == "windows")
    parts += [
        budget.Part(
            "the gradients" if loaded else "the weights, their gradients and the optimizer's state",
            (1 if loaded else 4) * weights,
            _shown(settings, *model_sizes) + vocabulary,
        ),
        budget.Part(
            "one training step's activations",
            activations,
            _shown(settings, "batch_size", "seq_len", *step_sizes) + vocabulary,
        ),
        budget.Part("a batch", budget.batch_bytes(B, T), _shown(settings, "batch_size", "seq_len")),
    ]
    fix = (
        "the run's sizes are fixed in its checkpoint: resume it on a machine with more memory"
        if loaded
        else "lower the sizes of the largest part"
    )
    budget.check_parts(parts, "training", fix)


def prepare_vectorized(settings, texts, tokenizer, count):
    """(train, validation or None) for --model transformer: each of the ``count`` texts of ``texts()`` (a fresh
    iterator each call) vectorised to ``seq_len`` ids; a seeded ``val_fraction`` of them held out."""
    ids = imdb.vectorize(texts(), tokenizer, length=settings["seq_len"], chunk=max(1, min(4096, count)))  # (N, L)
    held = numpy.random.default_rng(settings["seed"]).permutation(len(ids))[: int(len(ids) * settings["val_fraction"])]
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
    unknown = "unk" if word else "error"  # a capped word vocabulary has <unk> by design
    B, T, seed = settings["batch_size"], settings["seq_len"], settings["seed"]
    try:
        if settings["batching"] == "padded":
            lines = [line for line in text.splitlines() if line.strip()]
            sequences = [tokenizer.encode(line, unknown=unknown) for line in lines]
            train_seqs, val_seqs = batching.split_sequences(sequences, settings["val_fraction"], seed)
            train = batching.Padded(train_seqs, tokenizer.eos_id, tokenizer.pad_id, B, maxlen=T, seed=seed)
            val = (
                batching.Padded(val_seqs, tokenizer.eos_id, tokenizer.pad_id, B, maxlen=T, shuffle=False)
                if any(len(s) for s in val_seqs)
                else None
            )
            return train, val
        ids = tokenizer.encode(text, unknown=unknown)
    except VocabularyError as exc:
        if not exc.missing:
            raise
        raise VocabularyError(
            f"the corpus {corpus} does not match the checkpoint's vocabulary: it holds "
            f"{len(exc.missing)} character(s) the vocabulary lacks ({listing(exc.missing)}); "
            "resume with the corpus the run was trained on"
        ) from None
    train_ids, val_ids = batching.split_tail(ids, settings["val_fraction"])
    if settings["batching"] == "windows":
        train = batching.Windows(train_ids, T, settings["step"], B, seed=seed)
        val = batching.Windows(val_ids, T, settings["step"], B, shuffle=False) if len(val_ids) > T else None
        return train, val
    if settings["batching"] == "random":
        train = batching.RandomWindows(train_ids, B, T, seed=seed)
    else:
        train = batching.Streams(train_ids, B, T)
    # Validation reads the held-out text in consecutive chunks, for random windows too (every position once,
    # not a sample); the streams divide among the MPI ranks.
    ranks = distributed.world().size
    streams = min(B, (len(val_ids) - 1) // T) // ranks * ranks
    val = batching.Streams(val_ids, streams, T) if streams >= 1 else None
    return train, val
