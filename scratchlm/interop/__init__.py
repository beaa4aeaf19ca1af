"""Interop: Keras 3 models and Hugging Face GPT-2 folders into scratchlm, and scratchlm models out to them.

    model = from_keras(keras_model)                  # a Sequential / functional Keras model
    model = from_keras("char_lm.weights.h5")         # model.save_weights(...) output, or a .keras file
    keras_model = to_keras(model)                    # a Keras model with the same weights
    model = from_hf("gpt2/")                         # config.json + model.safetensors -> TransformerLM
    tokenizer = hf_tokenizer("gpt2/")                # vocab.json + merges.txt -> BPETokenizer, or None
    to_hf(model, "out/", tokenizer)                  # a GPT-2 folder transformers reads

Two mappings, one module each, both in Keras' own weight layout (scratchlm stores its weights that way):

* :mod:`~scratchlm.interop.keras_recurrent` — ``[Embedding] -> LSTM x L -> Dense`` or ``GRU x L``, Keras'
  own layers, to and from a :class:`~scratchlm.models.LanguageModel`;
* :mod:`~scratchlm.interop.keras_transformer` — a :class:`~scratchlm.models.TransformerLM` to a Keras model of
  scratchlm's own making (ids in, logits out, masks built inside from the ids), and back from it or its
  ``.weights.h5``.

:mod:`~scratchlm.interop.keras_io` holds what they share: :class:`KerasInteropError`, and the reading of
weight files. Reading files needs h5py, building Keras models needs Keras 3 (TensorFlow): both are imported
only when used (``pip install "scratchlm[reference]"``).

:mod:`~scratchlm.interop.gpt2` reads and writes GPT-2 (transformers' ``GPT2LMHeadModel``) folders with
scratchlm's own safetensors reader (:mod:`scratchlm.safetensors`): it needs neither PyTorch nor transformers,
and refuses pickles (``pytorch_model.bin``).
"""

import os
from pathlib import Path

from ..models import LanguageModel, TransformerLM
from . import keras_recurrent, keras_transformer
from .gpt2 import from_hf, hf_tokenizer, to_hf
from .keras_io import KerasInteropError

__all__ = ["KerasInteropError", "from_hf", "from_keras", "hf_tokenizer", "to_hf", "to_keras"]


def from_keras(model_or_path, backend="numpy", dtype: str | None = None) -> LanguageModel | TransformerLM:
    """Build a :class:`LanguageModel` (or :class:`TransformerLM`) holding a Keras model's weights.

    model_or_path: a Keras 3 model (Sequential, or functional with one input) of the
        shape ``[Embedding] -> LSTM x L -> Dense`` or ``[Embedding] -> GRU x L -> Dense``
        (``GRU(reset_after=True)``, Keras' default), or the path of its weights: a
        ``.weights.h5`` file from ``model.save_weights`` or a ``.keras`` file from
        ``model.save``. From a file the architecture is read off the weight groups
        and shapes. A model made by ``to_keras(TransformerLM)``, or its ``.weights.h5``,
        gives a TransformerLM.
    backend: "numpy", "cupy", "auto" or a Backend.
    dtype: "float32" or "float64"; None takes the weights' own (float64 if they are
        float64, else float32).
    Raises KerasInteropError naming the layer that cannot be mapped, or the weight that is NaN or infinite.
    """
    if isinstance(model_or_path, (str, os.PathLike)):
        path = Path(model_or_path)
        if path.suffix == ".h5" and path.is_file() and keras_transformer.is_weights_file(path):
            return keras_transformer.from_file(path, backend, dtype)
        return keras_recurrent.from_file(path, backend, dtype)
    if keras_transformer.is_keras_model(model_or_path):
        return keras_transformer.from_model(model_or_path, backend, dtype)
    if hasattr(model_or_path, "layers"):
        return keras_recurrent.from_model(model_or_path, backend, dtype)
    raise KerasInteropError(
        f"from_keras takes a Keras model or the path of a .weights.h5 / .keras file, got {type(model_or_path).__name__}"
    )


def to_keras(
    model: LanguageModel | TransformerLM, last_only: bool = False, softmax: bool = False, mask_zero: bool = False
):
    """The Keras 3 model equivalent to a scratchlm model, weights set.

    A :class:`LanguageModel` becomes a Sequential of Keras' own layers
    (:func:`keras_recurrent.to_keras <scratchlm.interop.keras_recurrent.to_keras>`, which says what last_only,
    softmax and mask_zero do); a :class:`TransformerLM` becomes scratchlm's Keras Transformer model, which takes
    none of them. Needs Keras 3 (``pip install "scratchlm[reference]"``).
    """
    if isinstance(model, TransformerLM):
        if last_only or softmax or mask_zero:
            raise KerasInteropError(
                "to_keras(TransformerLM) takes no last_only, softmax or mask_zero: its Keras "
                "model returns logits (B, T, V) and builds its masks from the ids (0 = padding)"
            )
        return keras_transformer.to_keras(model)
    if not isinstance(model, LanguageModel):
        raise KerasInteropError(
            f"to_keras takes a scratchlm RecurrentLM (LanguageModel) or TransformerLM, got {type(model).__name__}"
        )
    return keras_recurrent.to_keras(model, last_only, softmax, mask_zero)
