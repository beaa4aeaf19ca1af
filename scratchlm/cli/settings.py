"""The settings of ``scratchlm train``: their defaults, and what a new run's settings build.

A run's settings are the options of ``scratchlm train`` (:data:`DEFAULTS` names them all), resolved
for a new run by :func:`resolve` and recorded in every checkpoint (``metadata["cli"]``), from which
``--resume`` takes them back (:mod:`scratchlm.cli.metadata` checks them there).
"""

import math

from .. import models, optim, schedules
from ..errors import ScratchLMError
from ..layers.dropout import MAX_RATE
from ..train import TEMPERATURES

DEFAULTS = {
    "tokenizer": "char",
    "lower": False,
    "max_tokens": 10000,
    "batching": "streams",
    "seq_len": None,
    "step": 3,
    "batch_size": None,
    "val_fraction": 0.05,
    "embedding_dim": None,
    "hidden": [256],
    "cell": "lstm",
    "dropout": 0.0,
    "dtype": "float32",
    "model": "recurrent",
    "block": "book",
    "heads": 2,
    "dense_dim": 2048,
    "key_dim": None,
    "layers": 1,
    "optimizer": None,
    "lr": None,
    "clipnorm": 5.0,
    "weight_decay": None,
    "beta2": None,
    "lr_schedule": "constant",
    "warmup_steps": 0,
    "min_lr": None,
    "decay_steps": None,
    "lr_decay_every": None,
    "lr_decay_factor": None,
    "grad_accum": 1,
    "epochs": 10,
    "max_steps": None,
    "checkpoint_every": 500,
    "seed": 0,
    "backend": "numpy",
    "sample_length": 400,
    "temperature": list(TEMPERATURES),
    "prime": None,
    "progress": None,
}
SEQ_LEN = {"windows": 60, "streams": 100, "random": 100, "padded": 200, "vectorized": 100}
BATCH_SIZE = {"windows": 128, "streams": 64, "random": 64, "padded": 32, "vectorized": 32}
LEARNING_RATE = {"adam": 2e-3, "adamw": 1e-3, "rmsprop": 1e-3, "sgd": 1e-2}
# The batchings of --model transformer on a text (every position scored; the IMDB seed's is "vectorized").
TRANSFORMER_BATCHING = ("random", "streams")
# What `train --resume` may change; everything else comes from the checkpoint.
RESUMABLE = {"epochs", "max_steps", "checkpoint_every", "backend", "progress", "sample_length", "temperature", "prime"}


def model_config(settings, vocab_size):
    """The config (as a checkpoint's header holds it) of the model a new run's settings describe."""
    if settings["model"] == "transformer":
        return {
            "kind": "transformer",
            "vocab_size": vocab_size,
            "sequence_length": settings["seq_len"],
            "embed_dim": settings["embedding_dim"],
            "dense_dim": settings["dense_dim"],
            "num_heads": settings["heads"],
            "key_dim": settings["key_dim"] or settings["embedding_dim"],
            "num_layers": settings["layers"],
            "block": settings["block"],
            "dtype": settings["dtype"],
            "seed": settings["seed"],
        }
    return {
        "kind": "recurrent",
        "cell": settings["cell"],
        "vocab_size": vocab_size,
        "embedding_dim": settings["embedding_dim"] or None,
        "hidden_sizes": settings["hidden"],
        "dtype": settings["dtype"],
        "stateful": settings["batching"] == "streams",
        "seed": settings["seed"],
        "dropout": settings["dropout"],
    }


def build_model(settings, vocab_size):
    """The model a new run's settings describe."""
    config = model_config(settings, vocab_size)
    return models.MODELS[config.pop("kind")](backend=settings["backend"], **config)


def resolve(given: dict) -> dict:
    """Settings for a new run: the options given, defaults for the rest."""
    s = {**DEFAULTS, **given}
    if s["model"] == "transformer":
        wrong = [f"--{k}" for k in ("cell", "hidden", "dropout", "step") if k in given]
        if wrong:
            raise ScratchLMError(f"{', '.join(wrong)}: not a setting of --model transformer; leave it out")
        if "tokenizer" in given or "batching" in given:  # a GPT on the text: char or word ids, every position
            s["batching"] = given.get("batching", "random")
            if s["batching"] not in TRANSFORMER_BATCHING:
                raise ScratchLMError(
                    f"--batching {s['batching']} is not a batching of --model transformer: use random "
                    "(windows from random starts, as nanoGPT) or streams (consecutive chunks)"
                )
        else:  # the IMDB seed: TextVectorization ids, one review per line, RMSprop
            s.update(tokenizer="vector", batching="vectorized", lower=True)
            s["max_tokens"] = given.get("max_tokens", 15000)
            s["optimizer"] = s["optimizer"] or "rmsprop"
        if s["embedding_dim"] == 0:
            raise ScratchLMError(
                "--embedding-dim 0 means one-hot input, which --model transformer does not have: "
                "give it a size >= 1 (default 256)"
            )
        s["embedding_dim"] = s["embedding_dim"] or 256
    elif any(k in given for k in ("block", "heads", "key_dim", "dense_dim", "layers")):
        raise ScratchLMError(
            "--block, --heads, --key-dim, --dense-dim and --layers are settings of --model transformer"
        )
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
        raise ScratchLMError(
            f"--dropout must be a rate in [0, {MAX_RATE}] (above it almost no unit is kept and "
            f"nothing trains), got {s['dropout']}"
        )
    if not 0 <= s["val_fraction"] < 1:
        raise ScratchLMError(f"--val-fraction must lie in [0, 1), got {s['val_fraction']}")
    if not (s["lr"] > 0 and math.isfinite(s["lr"])):
        raise ScratchLMError(f"--lr must be a positive number, got {s['lr']}")
    if not (s["clipnorm"] >= 0 and math.isfinite(s["clipnorm"])):
        raise ScratchLMError(f"--clipnorm must be a number >= 0 (0 = off), got {s['clipnorm']}")
    _resolve_recipe(s, given)
    return s


# The options of each learning-rate schedule besides --warmup-steps, and the option of each schedule argument.
_SCHEDULE_OPTIONS = {"constant": (), "cosine": ("min_lr", "decay_steps"), "step": ("lr_decay_every", "lr_decay_factor")}
_SCHEDULE_ARGUMENT = {
    "lr": "--lr",
    "min_lr": "--min-lr",
    "decay_steps": "--decay-steps",
    "warmup_steps": "--warmup-steps",
    "every": "--lr-decay-every",
    "factor": "--lr-decay-factor",
}


def _resolve_recipe(s, given):
    """The optimizer's and the schedule's settings of a new run, checked, with defaults as nanoGPT's and torch-rnn's:
    AdamW decays by 0.1; cosine decays to a tenth of --lr over --max-steps; step halves the rate."""
    if "weight_decay" in given and s["optimizer"] != "adamw":
        raise ScratchLMError("--weight-decay is a setting of --optimizer adamw (decoupled weight decay)")
    if "beta2" in given and s["optimizer"] not in ("adam", "adamw"):
        raise ScratchLMError("--beta2 is a setting of --optimizer adam and adamw")
    if s["optimizer"] == "adamw" and s["weight_decay"] is None:
        s["weight_decay"] = 0.1
    if s["weight_decay"] is not None and not (0 <= s["weight_decay"] < math.inf):
        raise ScratchLMError(f"--weight-decay must be a number >= 0, got {s['weight_decay']}")
    if s["beta2"] is not None and not 0 <= s["beta2"] < 1:
        raise ScratchLMError(f"--beta2 must lie in [0, 1), e.g. 0.99 or 0.999, got {s['beta2']}")
    kind = s["lr_schedule"]
    wrong = [k for name, options in _SCHEDULE_OPTIONS.items() if name != kind for k in options if k in given]
    if wrong:
        names = ", ".join("--" + k.replace("_", "-") for k in wrong)
        raise ScratchLMError(f"{names}: not a setting of --lr-schedule {kind}; leave it out")
    if kind == "cosine":
        s["decay_steps"] = s["decay_steps"] or s["max_steps"]
        if s["decay_steps"] is None:
            raise ScratchLMError("--lr-schedule cosine needs --decay-steps N (or --max-steps N): where it ends")
        if s["min_lr"] is None:
            s["min_lr"] = s["lr"] / 10
    elif kind == "step":
        if s["lr_decay_every"] is None:
            raise ScratchLMError("--lr-schedule step needs --lr-decay-every N: the steps between two decays")
        if s["lr_decay_factor"] is None:
            s["lr_decay_factor"] = 0.5
    try:
        build_schedule(s)
    except ValueError as exc:  # "<argument> must be ...": said with the option's name
        argument, _, rule = str(exc).partition(" ")
        raise ScratchLMError(f"{_SCHEDULE_ARGUMENT.get(argument, argument)} {rule}") from None


def build_optimizer(settings):
    """The optimizer a new run's settings describe."""
    hyper = {"lr": settings["lr"], "global_clipnorm": settings["clipnorm"] or None}
    if settings["beta2"] is not None:
        hyper["beta_2"] = settings["beta2"]
    if settings["optimizer"] == "adamw":
        hyper["weight_decay"] = settings["weight_decay"]
    return optim.get(settings["optimizer"], **hyper)


def build_schedule(settings):
    """The learning-rate schedule a run's settings describe; None for a constant rate without warmup."""
    lr, warmup = settings["lr"], settings["warmup_steps"]
    if settings["lr_schedule"] == "cosine":
        return schedules.Cosine(lr, settings["min_lr"], settings["decay_steps"], warmup)
    if settings["lr_schedule"] == "step":
        return schedules.StepDecay(lr, settings["lr_decay_every"], settings["lr_decay_factor"], warmup)
    return schedules.Constant(lr, warmup) if warmup else None
