"""What the commands read from a checkpoint's metadata, checked: its tokenizer and the run's settings.

A checkpoint written by ``scratchlm train`` records the tokenizer (``metadata["tokenizer"]``) and the
run's settings (``metadata["cli"]``). ``sample`` and ``info`` read the tokenizer; ``train --resume``
reads both and builds its data from the settings, so each setting must follow its rule
(:data:`SETTING_RULES`) and agree with the model, tokenizer and data the checkpoint holds
(:func:`check_agreement`): an edited file is one line, not a traceback or a silently different run.
"""

import math
import os
import reprlib

from .. import checkpoint
from ..errors import CheckpointError
from ..layers.dropout import MAX_RATE
from ..text import from_config
from .settings import BPE_LEAST_VOCABULARY, DEFAULTS, GPT2_OPTIONS, LEARNING_RATE, PRESETS, SEQ_LEN, built_init


def _real(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _whole_or_null(least):
    """The rule of a setting that is null or a whole number from ``least`` to 2**63 - 1."""
    ok, rule = checkpoint.whole_rule(least)
    return (lambda v: v is None or ok(v)), f"null or {rule}"


# What the settings of a `scratchlm train` run (metadata["cli"]) must look like for --resume to use them.
SETTING_RULES = {
    "corpus": (lambda v: isinstance(v, str) and v != "", "a corpus name or path"),
    "tokenizer": (lambda v: v in ("char", "word", "vector", "bpe"), "'char', 'word', 'vector' or 'bpe'"),
    "lower": (lambda v: isinstance(v, bool), "true or false"),
    "max_tokens": checkpoint.whole_rule(1),
    "vocab_size": checkpoint.whole_rule(BPE_LEAST_VOCABULARY),
    "batching": (lambda v: v in SEQ_LEN, "'streams', 'windows', 'random', 'padded' or 'vectorized'"),
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
    "temperature": (
        lambda v: isinstance(v, list) and v != [] and all(_real(t) and t >= 0 for t in v),
        "a list of numbers >= 0",
    ),
    "prime": (lambda v: v is None or isinstance(v, str), "null or a text"),
    "embedding_dim": checkpoint.whole_rule(0),
    "hidden": (
        lambda v: isinstance(v, list) and v != [] and all(checkpoint.whole_at_least(1)(h) for h in v),
        "a non-empty list of whole numbers in [1, 2**63)",
    ),
    "cell": (lambda v: v in ("lstm", "gru"), "'lstm' or 'gru'"),
    "dropout": (lambda v: _real(v) and 0 <= v <= MAX_RATE, f"a number in [0, {MAX_RATE}]"),
    "dtype": (lambda v: v in ("float32", "float64"), "'float32' or 'float64'"),
    "optimizer": (lambda v: v in LEARNING_RATE, "'adam', 'adamw', 'rmsprop' or 'sgd'"),
    "lr": (lambda v: _real(v) and v > 0, "a number > 0"),
    "clipnorm": (lambda v: _real(v) and v >= 0, "a number >= 0"),
    "weight_decay": (lambda v: v is None or _real(v) and v >= 0, "null or a number >= 0"),
    "beta2": (lambda v: v is None or _real(v) and 0 <= v < 1, "null or a number in [0, 1)"),
    "lr_schedule": (lambda v: v in ("constant", "cosine", "step"), "'constant', 'cosine' or 'step'"),
    "warmup_steps": checkpoint.whole_rule(0),
    "min_lr": (lambda v: v is None or _real(v) and v > 0, "null or a number > 0"),
    "decay_steps": _whole_or_null(1),
    "lr_decay_every": _whole_or_null(1),
    "lr_decay_factor": (lambda v: v is None or _real(v) and 0 < v <= 1, "null or a number in (0, 1]"),
    "grad_accum": checkpoint.whole_rule(1),
    "model": (lambda v: v in ("recurrent", "transformer"), "'recurrent' or 'transformer'"),
    "block": (lambda v: v in ("book", "gpt"), "'book' or 'gpt'"),
    "heads": checkpoint.whole_rule(1),
    "dense_dim": checkpoint.whole_rule(1),
    "key_dim": _whole_or_null(1),
    "layers": checkpoint.whole_rule(1),
    "activation": (lambda v: v in ("relu", "gelu", "gelu_tanh"), "'relu', 'gelu' or 'gelu_tanh'"),
    "layernorm_epsilon": (lambda v: _real(v) and v > 0, "a number > 0"),
    "tie_embeddings": (lambda v: isinstance(v, bool), "true or false"),
    "use_bias": (lambda v: isinstance(v, bool), "true or false"),
    "init": (  # an initialisation, or the GPT-2 folder a fine-tuning run started from (never read on resume)
        lambda v: v in ("keras", "gpt2") or (isinstance(v, str) and 0 < len(v) < 4096 and os.path.isabs(v)),
        "'keras', 'gpt2' or the absolute path of the GPT-2 folder the run fine-tuned",
    ),
    "preset": (lambda v: v is None or v in PRESETS, "null or " + " or ".join(map(repr, PRESETS))),
}


def metadata_dict(meta, key, path):
    """``meta[key]``, which must be a dict; CheckpointError otherwise."""
    if not isinstance(meta[key], dict):
        raise CheckpointError(
            f"{path}: metadata[{key!r}] must be a JSON object, got {type(meta[key]).__name__}; {checkpoint.EDITED}"
        )
    return meta[key]


def tokenizer_of(meta, vocab_size, path):
    """The tokenizer a checkpoint's metadata describes (None if it has none); it must fit the model's vocabulary."""
    if "tokenizer" not in meta:
        return None
    tok = from_config(meta["tokenizer"])
    if tok.vocab_size != vocab_size:
        raise CheckpointError(
            f"{path}: its tokenizer has {tok.vocab_size:,} tokens, its model "
            f"{vocab_size:,}, where they must be equal; {checkpoint.EDITED}"
        )
    return tok


# The optimizer and schedule settings of the runs from before them: a constant rate, one batch per step.
_RECIPE_BEFORE = {
    "weight_decay": None,
    "beta2": None,
    "lr_schedule": "constant",
    "warmup_steps": 0,
    "min_lr": None,
    "decay_steps": None,
    "lr_decay_every": None,
    "lr_decay_factor": None,
    "grad_accum": 1,
}

# The Transformer's options of the runs from before its GPT-2 options: the seed's model, and no preset.
_GPT2_BEFORE = {
    "activation": "relu",
    "layernorm_epsilon": 1e-3,
    "tie_embeddings": False,
    "use_bias": True,
    "init": "keras",
    "preset": None,
}


def settings_of(meta, path):
    """The `scratchlm train` settings a checkpoint records, each checked against :data:`SETTING_RULES`."""
    older = {
        "cell": "lstm",
        "dropout": 0.0,
        "model": "recurrent",
        "block": "book",
        "heads": 2,
        "dense_dim": 2048,
        "key_dim": None,
        "layers": 1,
        "vocab_size": DEFAULTS["vocab_size"],
        **_RECIPE_BEFORE,
        **_GPT2_BEFORE,
    }  # what runs from before these settings used
    settings = {**older, **metadata_dict(meta, "cli", path)}
    for name, (ok, rule) in SETTING_RULES.items():
        if name not in settings or not ok(settings[name]):
            got = reprlib.repr(settings[name]) if name in settings else "nothing"
            raise CheckpointError(
                f"{path}: the run's setting {name!r} (metadata['cli']) must be {rule}, got {got}; {checkpoint.EDITED}"
            )
    return settings


# The field of each batcher's config (metadata["data"]) that records the run's --seq-len.
_LENGTH_FIELD = {
    "streams": "seq_len",
    "random": "seq_len",
    "windows": "maxlen",
    "padded": "maxlen",
    "vectorized": "length",
}


def _recorded(settings, config, tokenizer, meta):
    """(setting, its value in the run's settings, what the checkpoint's model, tokenizer or data record for
    it, which of them) for each setting they record; the model's kind first, as the rest depend on it."""
    model = "the model in its header"
    yield "model", settings["model"], config["kind"], model
    yield "dtype", settings["dtype"], config["dtype"], model
    if config["kind"] == "transformer":
        for name, field in (
            ("seq_len", "sequence_length"),
            ("embedding_dim", "embed_dim"),
            ("dense_dim", "dense_dim"),
            ("heads", "num_heads"),
            ("layers", "num_layers"),
            ("block", "block"),
        ):
            yield name, settings[name], config[field], model
        yield "key_dim", settings["key_dim"] or settings["embedding_dim"], config["key_dim"], model
        for name in (*GPT2_OPTIONS, "dropout"):
            yield name, built_init(settings[name]) if name == "init" else settings[name], config[name], model
    else:
        yield "cell", settings["cell"], config["cell"], model
        yield "hidden", settings["hidden"], config["hidden_sizes"], model
        yield "embedding_dim", settings["embedding_dim"] or None, config["embedding_dim"], model
        yield "dropout", settings["dropout"], config["dropout"], model
    for name, field in (("tokenizer", "kind"), ("lower", "lower")):
        yield name, settings[name], getattr(tokenizer, field), "its tokenizer (metadata['tokenizer'])"
    recorded = meta.get("data")
    if isinstance(recorded, dict):  # anything else Trainer.resume refuses
        for name, field in (
            ("batching", "kind"),
            ("batch_size", "batch_size"),
            ("seq_len", _LENGTH_FIELD[settings["batching"]]),
            ("step", "step"),
        ):
            if field in recorded:
                yield name, settings[name], recorded[field], "its data (metadata['data'])"


def check_agreement(settings, config, tokenizer, meta, path):
    """CheckpointError naming the first of the run's settings (metadata['cli'], checked by :func:`settings_of`)
    that its model config, tokenizer or data contradict: a resume builds its data from the settings."""
    for name, said, found, where in _recorded(settings, config, tokenizer, meta):
        if said != found:
            raise CheckpointError(
                f"{path}: the run's settings (metadata['cli']) say {name} {reprlib.repr(said)}, "
                f"but {where} has {reprlib.repr(found)}; {checkpoint.EDITED}"
            )
