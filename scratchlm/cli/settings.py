"""The settings of ``scratchlm train``: their defaults, and what a new run's settings build.

A run's settings are the options of ``scratchlm train`` (:data:`DEFAULTS` names them all), resolved
for a new run by :func:`resolve` and recorded in every checkpoint (``metadata["cli"]``), from which
``--resume`` takes them back (:mod:`scratchlm.cli.metadata` checks them there).
"""

import math

from .. import models, optim, schedules
from ..errors import CheckpointError, ScratchLMError
from ..interop import gpt2
from ..layers.dropout import MAX_RATE
from ..models.transformer import INITS
from ..train import TEMPERATURES

DEFAULTS = {
    "tokenizer": "char",
    "lower": False,
    "max_tokens": 10000,
    "vocab_size": 2000,
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
    "activation": "relu",
    "layernorm_epsilon": 1e-3,
    "tie_embeddings": False,
    "use_bias": True,
    "init": "keras",
    "preset": None,
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
# --preset NAME: the settings of a known command, which the options given explicitly override.
PRESETS = {
    # nanoGPT's README CPU command ("I only have a macbook"): config/train_shakespeare_char.py with
    # --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000
    # --dropout=0.0, and model.py's GELU, LayerNorm ε 1e-5, tied wte/lm_head, bias=False, GPT-2 init.
    "nanogpt-cpu": {
        "model": "transformer",
        "block": "gpt",
        "tokenizer": "char",
        "batching": "random",
        "seq_len": 64,
        "batch_size": 12,
        "layers": 4,
        "heads": 4,
        "embedding_dim": 128,
        "key_dim": 32,
        "dense_dim": 512,
        "dropout": 0.0,
        "activation": "gelu",
        "layernorm_epsilon": 1e-5,
        "tie_embeddings": True,
        "use_bias": False,
        "init": "gpt2",
        "optimizer": "adamw",
        "lr": 1e-3,
        "weight_decay": 0.1,
        "beta2": 0.99,
        "lr_schedule": "cosine",
        "warmup_steps": 100,
        "decay_steps": 2000,
        "min_lr": 1e-4,
        "clipnorm": 1.0,
        "max_steps": 2000,
        "val_fraction": 0.1,
    },
}
# The options of the Transformer alone, and those of its GPT-2 block options.
TRANSFORMER_OPTIONS = ("block", "heads", "key_dim", "dense_dim", "layers")
GPT2_OPTIONS = ("activation", "layernorm_epsilon", "tie_embeddings", "use_bias", "init")
BPE_LEAST_VOCABULARY = 257  # --vocab-size: the 256 byte symbols and <|endoftext|>
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
            **{name: settings[name] for name in GPT2_OPTIONS},
            "init": built_init(settings["init"]),
            "dropout": settings["dropout"],
            # char and word vocabularies reserve id 0 for <pad>; a byte-level BPE has no padding (its id 0 is "!")
            "pad_id": None if settings["tokenizer"] == "bpe" else 0,
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


def _option(name):
    return "--" + name.replace("_", "-")


def _with_preset(given: dict) -> dict:
    """The options given, over the settings of their --preset (if any)."""
    if "preset" not in given:
        return given
    preset = PRESETS[given["preset"]]
    clash = [k for k in ("model", "block") if k in given and given[k] != preset[k]]
    if clash:
        names = ", ".join(f"{_option(k)} {given[k]}" for k in clash)
        trains = f"--model {preset['model']} --block {preset['block']}"
        raise ScratchLMError(f"--preset {given['preset']} trains a {trains}: leave out {names}")
    return {**preset, **given}


def built_init(init) -> str:
    """The initialisation a run's model is built with: --init's, or for a fine-tuning run (--init HF_FOLDER) the
    constructor's cheapest draw, keras, which the folder's weights then replace."""
    return "keras" if is_folder_init(init) else init


def is_folder_init(init) -> bool:
    """Whether --init names a Hugging Face GPT-2 folder (the parser keeps its absolute path) rather than an
    initialisation (keras, gpt2)."""
    return init not in INITS


# What a GPT-2 folder decides in a fine-tuning run (--init HF_FOLDER): its architecture and its tokenizer.
FOLDER_DECIDES = (
    "model",
    "block",
    "preset",
    "tokenizer",
    "vocab_size",
    "max_tokens",
    "lower",
    *TRANSFORMER_OPTIONS,
    "embedding_dim",
    *(name for name in GPT2_OPTIONS if name != "init"),
)


def _from_folder(given: dict) -> dict:
    """The options given, with the architecture and tokenizer of the GPT-2 folder ``given["init"]``; fine-tuning
    defaults (AdamW at 1e-4, random windows as long as the model's context) where the options are silent."""
    folder = given["init"]
    clash = [_option(k) for k in FOLDER_DECIDES if k in given]
    if clash:
        names = ", ".join("--no-bias" if k == "--use-bias" else k for k in clash)
        raise ScratchLMError(f"--init {folder} brings its own architecture and tokenizer: leave out {names}")
    try:
        c = gpt2.read_config(folder)
    except CheckpointError as exc:
        raise ScratchLMError(f"--init: {exc}") from None
    seq_len = given.get("seq_len") or c["n_positions"]
    if seq_len > c["n_positions"]:
        raise ScratchLMError(
            f"--seq-len {seq_len} is longer than the context of {folder} ({c['n_positions']} positions): "
            f"give at most {c['n_positions']}"
        )
    return {
        "optimizer": "adamw",
        "lr": 1e-4,
        "batching": "random",
        **given,
        "model": "transformer",
        "block": "gpt",
        "tokenizer": "bpe",
        "vocab_size": c["vocab_size"],
        "seq_len": seq_len,
        "embedding_dim": c["n_embd"],
        "heads": c["n_head"],
        "key_dim": c["n_embd"] // c["n_head"],
        "dense_dim": c["n_inner"],
        "layers": c["n_layer"],
        "activation": gpt2.ACTIVATIONS[c["activation_function"]],
        "layernorm_epsilon": float(c["layer_norm_epsilon"]),
        "tie_embeddings": True,
        "use_bias": True,
    }


def resolve(given: dict) -> dict:
    """Settings for a new run: the options given (over their --preset's), defaults for the rest; with ``--init
    HF_FOLDER``, the folder's architecture and tokenizer."""
    if is_folder_init(given.get("init", DEFAULTS["init"])):
        given = _from_folder(given)
    given = _with_preset(given)
    s = {**DEFAULTS, **given}
    if s["model"] == "transformer":
        wrong = [_option(k) for k in ("cell", "hidden", "step") if k in given]
        if wrong:
            raise ScratchLMError(f"{', '.join(wrong)}: not a setting of --model transformer; leave it out")
        if "dropout" in given and s["block"] != "gpt":
            raise ScratchLMError(
                "--dropout is a setting of --block gpt (and of the recurrent models): add --block gpt or leave it out"
            )
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
        if s["block"] == "gpt" and s["batching"] != "vectorized":
            _gpt_sizes(s, given)
        if not (math.isfinite(s["layernorm_epsilon"]) and s["layernorm_epsilon"] > 0):
            raise ScratchLMError(
                f"--layernorm-epsilon must be a number > 0 (GPT's 1e-5, Keras' 1e-3), got {s['layernorm_epsilon']}"
            )
    else:
        wrong = [_option(k) for k in (*TRANSFORMER_OPTIONS, *GPT2_OPTIONS) if k in given]
        if wrong:
            names = ", ".join("--no-bias" if k == "--use-bias" else k for k in wrong)
            raise ScratchLMError(f"{names}: settings of --model transformer; leave them out")
    _check_bpe(s, given)
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


def _check_bpe(s, given):
    """--vocab-size belongs to --tokenizer bpe, counts at least the 256 byte symbols and <|endoftext|>, and a BPE
    vocabulary has no <pad> for padded batches."""
    if s["tokenizer"] != "bpe":
        if "vocab_size" in given:
            raise ScratchLMError(
                "--vocab-size is a setting of --tokenizer bpe (a word vocabulary is capped by --max-tokens)"
            )
        return
    if s["vocab_size"] < BPE_LEAST_VOCABULARY:
        raise ScratchLMError(
            f"--vocab-size must be at least {BPE_LEAST_VOCABULARY} (the 256 byte symbols and <|endoftext|>), got "
            f"{s['vocab_size']:,}: e.g. 2000 for a small corpus, GPT-2 has 50257"
        )
    if s["batching"] == "padded":
        raise ScratchLMError(
            "--batching padded needs <pad>, which a byte-level BPE vocabulary does not have: use streams, windows "
            "or random"
        )


def _gpt_sizes(s, given):
    """A GPT on text: the head size embed_dim // heads and the feed-forward 4·embed_dim unless given, as
    GPT-2's and nanoGPT's."""
    E = s["embedding_dim"]
    if "dense_dim" not in given:
        s["dense_dim"] = 4 * E
    if "key_dim" not in given:
        if E < s["heads"]:
            raise ScratchLMError(
                f"--heads {s['heads']} share --embedding-dim {E}, less than one dimension each: give fewer "
                "--heads, a larger --embedding-dim or a --key-dim"
            )
        s["key_dim"] = E // s["heads"]


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
