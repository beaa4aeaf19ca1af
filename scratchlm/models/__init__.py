"""The language models, and the one way to load a checkpoint: ``load(path)`` builds the right class.

    base.py        TokenModel: what every language model shares
    generation.py  TokenLoop: generate's token loop (draw, step, repeat)
    recurrent.py   RecurrentLM (also named LanguageModel): [Embedding | one-hot] -> LSTM or GRU x L -> Dense
    transformer.py TransformerLM: PositionalEmbedding -> decoder blocks -> Dense (the IMDB seed)

A model's ``config`` names its kind; :data:`MODELS` maps kinds to classes, and
each class says what a config of its kind means (``check_config``,
``parameter_shapes``, ``describe``) without building anything, which is how a
checkpoint is checked against its arrays before a model is built from it.
"""

from typing import Any, NamedTuple

from .. import checkpoint
from ..backend import get_backend
from ..errors import CheckpointError
from .base import TokenModel
from .recurrent import LanguageModel, RecurrentLM
from .transformer import TransformerLM

MODELS: dict[str, type[TokenModel]] = {cls.kind: cls for cls in (RecurrentLM, TransformerLM)}


class Checkpoint(NamedTuple):
    """What :func:`load` returns."""

    model: TokenModel
    optimizer: Any  # Optimizer or None
    rng: Any  # numpy.random.Generator or None
    metadata: dict


def model_class(config: Any, what: str) -> type[TokenModel]:
    """The class of the model ``config`` describes, once the config is checked; CheckpointError otherwise."""
    kind = config.get("kind") if isinstance(config, dict) else None
    if kind not in MODELS:
        raise CheckpointError(
            f"{what}: unknown model kind {kind!r} (this scratchlm knows "
            f"{', '.join(map(repr, MODELS))}); {checkpoint.EDITED}"
        )
    cls = MODELS[kind]
    cls.check_config(config, what)
    return cls


def _shapes_of(config, what):
    yield from model_class(config, what).parameter_shapes(config)


def read(path: Any) -> tuple[dict, dict]:
    """(header, arrays) of a checkpoint, every field and array checked against its model's config."""
    return checkpoint.read(path, _shapes_of)


def describe(config: dict) -> str:
    """The model line of a checked config, as ``repr`` of the model would print it on NumPy."""
    return MODELS[config["kind"]].describe(config)


def load(path: Any, backend: Any = "numpy") -> Checkpoint:
    """Read a checkpoint (checked by :func:`read`) and build its model, optimizer and RNG -> :class:`Checkpoint`.

    backend: where the model lives ("numpy", "cupy", "auto"); the dtype is the checkpoint's.
    Raises CheckpointError on any problem with the file.
    """
    header, arrays = read(path)
    config = dict(header["model"])
    cls = MODELS[config.pop("kind")]
    model = cls(backend=get_backend(backend, config["dtype"]), **config)
    model.set_params({key[len("param/") :]: a for key, a in arrays.items() if key.startswith("param/")})
    return Checkpoint(
        model,
        checkpoint.optimizer_of(header, arrays, model.backend),
        checkpoint.rng_of(header, path),
        header["metadata"],
    )


__all__ = [
    "Checkpoint",
    "LanguageModel",
    "MODELS",
    "RecurrentLM",
    "TokenModel",
    "TransformerLM",
    "describe",
    "load",
    "model_class",
    "read",
]
