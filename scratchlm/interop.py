"""Keras interop: load a Keras 3 LSTM or GRU language model into scratchlm, and build one from scratchlm.

The models scratchlm and Keras share are chains

    [Embedding(V, E)] -> LSTM(H_1) -> ... -> LSTM(H_L) -> Dense(V)
    [Embedding(V, E)] -> GRU(H_1)  -> ... -> GRU(H_L)  -> Dense(V)      (reset_after=True)

one cell throughout (a stack mixing LSTM and GRU layers is refused). Without an
Embedding the first recurrent layer reads one-hot vectors (its kernel is (V, 4H)
or (V, 3H)), as in the Keras Nietzsche example. scratchlm stores weights in
Keras' layout, so they map one to one:

    Embedding    embeddings                          -> embedding/embeddings      (V, E)
    LSTM n       cell.kernel, .recurrent_kernel, .bias -> lstm_n/kernel (D, 4H),
                                                         lstm_n/recurrent_kernel (H, 4H),
                                                         lstm_n/bias (4H,)      gates i, f, c̃, o
    GRU n        cell.kernel, .recurrent_kernel, .bias -> gru_n/kernel (D, 3H),
                                                         gru_n/recurrent_kernel (H, 3H),
                                                         gru_n/bias (2, 3H)     gates z, r, h
    Dense        kernel, bias                        -> dense/kernel (H_L, V), dense/bias (V,)

The GRU is Keras 3's default ``reset_after=True`` (the reset gate multiplies
h U + b_rec; bias rows b_in, b_rec). ``reset_after=False`` (r multiplies h before
the product, one (3H,) bias) is a different function and is refused: from a model
by its setting, from a file by its (3H,) bias. A weights file of a GRU without
bias (``use_bias=False``) cannot tell the two apart and is refused as well; pass
the Keras model itself instead.

A Dense with softmax gives probabilities p = softmax(z); scratchlm keeps the
logits z and applies the softmax when it samples, so the distribution is the
same. Dropout layers are skipped (they are the identity at inference; scratchlm
trains without dropout). ``Embedding(mask_zero=True)`` carries no weights: pass
``mask=(x != 0)`` to scratchlm instead.

    model = from_keras(keras_model)                  # a Sequential / functional Keras model
    model = from_keras("char_lm.weights.h5")         # model.save_weights(...) output, or a .keras file
    keras_model = to_keras(model)                    # Sequential with the same weights

A :class:`~scratchlm.models.TransformerLM` goes to a Keras model of scratchlm's own making (ids in, logits out,
masks built inside from the ids) and comes back from it or its ``.weights.h5``; see "the Transformer" below.

Reading files needs h5py, building Keras models needs Keras 3 (TensorFlow): both
are imported only when used (``pip install "scratchlm[reference]"``).
"""

import io
import os
import re
import zipfile
from pathlib import Path

import numpy as np

from .errors import ScratchLMError
from .models import LanguageModel

_EXTRA = 'pip install "scratchlm[reference]"'
_SHAPE = "[Embedding] -> LSTM -> ... -> LSTM -> Dense (or GRU -> ... -> GRU)"
_CELLS = ("lstm", "gru")                         # the recurrent kinds, as LanguageModel names its cells
_WEIGHTLESS = {"InputLayer", "Dropout"}          # layers that compute nothing at inference


class KerasInteropError(ScratchLMError):
    """A Keras model or weights file cannot be mapped to or from a scratchlm LanguageModel."""


# -- reading a Keras model ----------------------------------------------------------------
def from_keras(model_or_path, backend="numpy", dtype=None):
    """Build a :class:`LanguageModel` holding a Keras model's weights.

    model_or_path: a Keras 3 model (Sequential, or functional with one input) of the
        shape ``[Embedding] -> LSTM x L -> Dense`` or ``[Embedding] -> GRU x L -> Dense``
        (``GRU(reset_after=True)``, Keras' default), or the path of its weights: a
        ``.weights.h5`` file from ``model.save_weights`` or a ``.keras`` file from
        ``model.save``. From a file the architecture is read off the weight groups
        and shapes.
    backend: "numpy", "cupy", "auto" or a Backend.
    dtype: "float32" or "float64"; None takes the weights' own (float64 if they are
        float64, else float32).
    Raises KerasInteropError naming the layer that cannot be mapped, or the weight that is NaN or infinite.
    """
    if isinstance(model_or_path, (str, os.PathLike)):
        path = Path(model_or_path)
        if path.suffix == ".h5" and path.is_file() and _is_transformer_file(path):
            return _transformer_from_file(path, backend, dtype)
        layers, stateful = _layers_from_file(path), False
    elif type(model_or_path).__name__ == "TransformerModel" and hasattr(model_or_path, "lm_config"):
        return _transformer_from_keras_model(model_or_path, backend, dtype)
    elif hasattr(model_or_path, "layers"):
        layers, stateful = _layers_from_model(model_or_path)
    else:
        raise KerasInteropError(f"from_keras takes a Keras model or the path of a .weights.h5 / .keras file, "
                                f"got {type(model_or_path).__name__}")
    return _build(layers, backend, dtype, stateful)


def _activation_name(fn):
    return getattr(fn, "__name__", str(fn))


def _layers_from_model(model):
    """Keras model -> ([(kind, label, {weight name: array})...] in order, stateful)."""
    inputs = getattr(model, "inputs", None) or []
    if len(inputs) > 1:
        raise KerasInteropError(f"the Keras model has {len(inputs)} inputs; from_keras reads single-input "
                                f"{_SHAPE} models")
    layers, stateful = [], False
    for layer in model.layers:
        cls = type(layer).__name__
        label = f"{layer.name!r} ({cls})"
        if cls in _WEIGHTLESS:
            continue
        weights = dict(zip((v.path.split("/")[-1] for v in layer.weights), layer.get_weights()))
        if cls in ("Embedding", "LSTM", "GRU", "Dense") and not weights:
            raise KerasInteropError(f"layer {label} has no weights yet: build the Keras model first "
                                    "(give it an Input, or call it once)")
        if cls == "Embedding":
            layers.append(("embedding", label, {"embeddings": weights["embeddings"]}))
        elif cls in ("LSTM", "GRU"):
            if _activation_name(layer.cell.activation) != "tanh" or \
                    _activation_name(layer.cell.recurrent_activation) != "sigmoid":
                raise KerasInteropError(f"layer {label} uses activation={_activation_name(layer.cell.activation)}, "
                                        f"recurrent_activation={_activation_name(layer.cell.recurrent_activation)}; "
                                        f"scratchlm's {cls} is tanh / sigmoid")
            if layer.go_backwards or layer.return_state:
                raise KerasInteropError(f"layer {label}: go_backwards and return_state are not supported")
            if cls == "GRU" and not layer.cell.reset_after:
                raise KerasInteropError(f"layer {label} has reset_after=False; scratchlm's GRU is Keras 3's default "
                                        "reset_after=True (the reset gate applied after the recurrent product)")
            stateful = stateful or layer.stateful
            layers.append((cls.lower(), label, weights))
        elif cls == "Dense":
            if _activation_name(layer.activation) not in ("linear", "softmax"):
                raise KerasInteropError(f"layer {label} has activation {_activation_name(layer.activation)!r}; "
                                        "the output Dense must be linear (logits) or softmax")
            layers.append(("dense", label, weights))
        else:
            raise KerasInteropError(f"layer {label} is not supported: from_keras reads {_SHAPE} models "
                                    "(Dropout allowed)")
    return layers, stateful


def _import_h5py():
    try:
        import h5py
    except ImportError:
        raise KerasInteropError(f"reading Keras weight files needs h5py: pip install h5py (or {_EXTRA})") from None
    return h5py


def _layers_from_file(path):
    """A Keras 3 weights file -> [(kind, label, {weight name: array})...] in model order.

    Keras 3's layout: ``layers/<snake_case class>[_<k>]/vars/<i>`` (the LSTM's under
    ``.../cell/vars/<i>``), where k counts the layers of one class in model order
    and ``vars`` has the layer's own name as its ``name`` attribute.
    """
    h5py = _import_h5py()
    if not path.is_file():
        raise KerasInteropError(f"no such Keras weights file: {path}")
    source = path
    if path.suffix == ".keras":                        # a zip holding model.weights.h5
        try:
            with zipfile.ZipFile(path) as archive:
                source = io.BytesIO(archive.read("model.weights.h5"))
        except (zipfile.BadZipFile, KeyError):
            raise KerasInteropError(f"{path} is not a Keras 3 .keras archive (no model.weights.h5 inside)") from None
    try:
        f = h5py.File(source, "r")
    except OSError:
        raise KerasInteropError(f"{path} is not an HDF5 file: expected a Keras 3 .weights.h5 "
                                "(model.save_weights) or .keras file") from None
    with f:
        if not isinstance(f.get("layers"), h5py.Group):
            raise KerasInteropError(f"{path} has no 'layers' group: not a Keras 3 weights file (for a Keras 2 "
                                    "file, load the model in Keras and pass the model to from_keras)")
        found = []
        for key, group in f["layers"].items():
            kind, index = re.fullmatch(r"(.*?)(?:_(\d+))?", key).groups()
            name = group["vars"].attrs.get("name", key) if "vars" in group else key
            label = f"{name!r} ({key})"
            arrays = _datasets(group)
            if kind in ("input_layer", "dropout") and not arrays:
                continue
            layout = {"embedding": ("vars", ["embeddings"]),
                      "lstm": ("cell/vars", ["kernel", "recurrent_kernel", "bias"]),
                      "gru": ("cell/vars", ["kernel", "recurrent_kernel", "bias"]),
                      "dense": ("vars", ["kernel", "bias"])}.get(kind)
            if layout is None:
                raise KerasInteropError(f"layer {label} is not supported: from_keras reads {_SHAPE} models")
            where, names = layout
            values = [arrays.get(f"{where}/{i}") for i in range(len(names))]
            required = 2 if kind in _CELLS else 1         # kernel and recurrent kernel; the bias is optional
            if any(v is None for v in values[:required]) or \
                    set(arrays) - {f"{where}/{i}" for i in range(len(names))}:
                raise KerasInteropError(f"layer {label}: unexpected weights {sorted(arrays)} for a Keras {kind}")
            weights = {n: v for n, v in zip(names, values) if v is not None}
            if kind == "gru" and "bias" not in weights:
                raise KerasInteropError(f"layer {label}: a GRU without bias in a weights file does not say whether "
                                        "it has reset_after=True (scratchlm's GRU) or False; load the model in "
                                        "Keras and pass the model to from_keras")
            found.append((kind, int(index or 0), label, weights))
    rank = {"embedding": 0, "lstm": 1, "gru": 1, "dense": 2}
    found.sort(key=lambda entry: (rank[entry[0]], entry[1]))
    return [(kind, label, weights) for kind, _, label, weights in found]


def _datasets(group):
    """{relative path: array} of every dataset under an h5py group."""
    out = {}
    group.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if hasattr(obj, "shape") else None)
    return out


def _check_finite(arrays):
    """KerasInteropError naming the first of ``arrays`` ({what: array}) that holds NaN or infinity."""
    for what, a in arrays.items():
        a = np.asarray(a)
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise KerasInteropError(f"{what} holds {int(a.size - np.isfinite(a).sum()):,} NaN or infinite "
                                    "value(s): the Keras model's weights diverged; load an earlier copy of them")


def _build(layers, backend, dtype, stateful):
    """Check the chain's kinds, shapes and values, then make the LanguageModel and copy the weights in."""
    _check_finite({f"layer {label}: {name}": a for _, label, weights in layers for name, a in weights.items()})
    kinds = [kind for kind, _, _ in layers]
    labels = {kind: [label for k, label, _ in layers if k == kind] for kind in ("embedding", "lstm", "gru", "dense")}
    if kinds.count("dense") != 1 or kinds[-1] != "dense":
        raise KerasInteropError(f"expected exactly one Dense layer, at the end; found Dense layers "
                                f"{labels['dense'] or 'none'} in {_SHAPE}")
    if kinds.count("embedding") > 1 or ("embedding" in kinds and kinds[0] != "embedding"):
        raise KerasInteropError(f"an Embedding may only come first, once; found {labels['embedding']}")
    cells = [kind for kind in _CELLS if kind in kinds]
    if not cells:
        raise KerasInteropError(f"no recurrent layer (LSTM or GRU) found: from_keras reads {_SHAPE} models")
    if len(cells) > 1:
        raise KerasInteropError(f"the model mixes LSTM layers {labels['lstm']} and GRU layers {labels['gru']}; "
                                "scratchlm's LanguageModel uses one cell for every layer")
    cell = cells[0]
    G = {"lstm": 4, "gru": 3}[cell]

    params, hidden_sizes = {}, []
    dense_label, dense = layers[-1][1:]
    V = dense["kernel"].shape[-1]
    embedding_dim = None
    d_in = V                                                   # one-hot input
    for kind, label, w in layers:
        if kind == "embedding":
            E = w["embeddings"]
            if E.ndim != 2 or E.shape[0] != V:
                raise KerasInteropError(f"layer {label}: embeddings of shape {E.shape} do not fit the output "
                                        f"Dense's vocabulary of {V}")
            embedding_dim = d_in = E.shape[1]
            params["embedding/embeddings"] = E
        elif kind == cell:
            n = len(hidden_sizes)
            U = w["recurrent_kernel"]
            H = U.shape[0]
            if U.ndim != 2 or U.shape != (H, G * H) or w["kernel"].shape != (d_in, G * H):
                raise KerasInteropError(f"layer {label}: kernel {w['kernel'].shape} and recurrent kernel {U.shape} "
                                        f"do not fit {'an' if cell == 'lstm' else 'a'} {cell.upper()} with input size {d_in}: expected "
                                        f"({d_in}, {G}H) and (H, {G}H)"
                                        + (" (one-hot input of the output vocabulary)" if n == 0 and embedding_dim
                                           is None else ""))
            bias_shape = (G * H,) if cell == "lstm" else (2, G * H)       # GRU: rows b_in, b_rec
            bias = w.get("bias", np.zeros(bias_shape, dtype=U.dtype))
            if cell == "gru" and bias.shape == (G * H,):
                raise KerasInteropError(f"layer {label}: bias of shape {bias.shape} is a GRU with reset_after=False; "
                                        f"scratchlm's GRU is Keras 3's default reset_after=True, bias {bias_shape}")
            if bias.shape != bias_shape:
                raise KerasInteropError(f"layer {label}: bias of shape {bias.shape}, expected {bias_shape}")
            params[f"{cell}_{n}/kernel"], params[f"{cell}_{n}/recurrent_kernel"] = w["kernel"], U
            params[f"{cell}_{n}/bias"] = bias
            hidden_sizes.append(H)
            d_in = H
    bias = dense.get("bias", np.zeros(V, dtype=dense["kernel"].dtype))
    if dense["kernel"].shape != (d_in, V) or bias.shape != (V,):
        raise KerasInteropError(f"layer {dense_label}: kernel {dense['kernel'].shape} and bias {bias.shape} "
                                f"do not fit the last {cell.upper()}'s {d_in} units: expected ({d_in}, V) and (V,)")
    params["dense/kernel"], params["dense/bias"] = dense["kernel"], bias

    if dtype is None:
        dtype = "float64" if all(a.dtype == np.float64 for a in params.values()) else "float32"
    model = LanguageModel(V, embedding_dim=embedding_dim, hidden_sizes=hidden_sizes, backend=backend,
                          dtype=dtype, stateful=stateful, cell=cell)
    model.set_params(params)
    return model


# -- building a Keras model ----------------------------------------------------------------
def to_keras(model, last_only=False, softmax=False, mask_zero=False):
    """The Keras 3 Sequential model equivalent to a :class:`LanguageModel`, weights set.

    The recurrent layers are ``keras.layers.LSTM`` or, for a ``cell="gru"`` model,
    ``keras.layers.GRU(reset_after=True)``. Input: int token ids (batch, time) with an
    Embedding, else one-hot float vectors (batch, time, V). last_only: the last
    recurrent layer returns only its final output (``return_sequences=False``), as the
    Nietzsche model does. softmax: the Dense outputs probabilities instead of logits.
    mask_zero: the Embedding treats
    id 0 as padding (Keras computes the mask scratchlm takes as ``mask=``). The
    Keras model is not stateful; layers use the scratchlm model's dtype.
    Needs Keras 3 (``pip install "scratchlm[reference]"``).
    """
    from .models import TransformerLM
    if isinstance(model, TransformerLM):
        if last_only or softmax or mask_zero:
            raise KerasInteropError("to_keras(TransformerLM) takes no last_only, softmax or mask_zero: its Keras "
                                    "model returns logits (B, T, V) and builds its masks from the ids (0 = padding)")
        return _transformer_to_keras(model)
    if not isinstance(model, LanguageModel):
        raise KerasInteropError(f"to_keras takes a scratchlm LanguageModel or TransformerLM, "
                                f"got {type(model).__name__}")
    if mask_zero and model.embedding is None:
        raise KerasInteropError("mask_zero=True needs an Embedding; this model reads one-hot input")
    keras = _import_keras()
    layers = keras.layers
    dtype = model.backend.dtype.name
    V = model.vocab_size
    weights = {name: model.backend.to_host(p) for name, p in model.params.items()}

    if model.embedding is None:
        stack = [keras.Input((None, V), dtype=dtype)]
    else:
        stack = [keras.Input((None,), dtype="int32"),
                 layers.Embedding(V, model.embedding_dim, mask_zero=mask_zero, dtype=dtype)]
    top = len(model.hidden_sizes) - 1
    cell = model.cell
    if cell == "lstm":
        rnns = [layers.LSTM(H, return_sequences=not (last_only and n == top), dtype=dtype)
                for n, H in enumerate(model.hidden_sizes)]
    elif cell == "gru":
        rnns = [layers.GRU(H, reset_after=True, return_sequences=not (last_only and n == top), dtype=dtype)
                for n, H in enumerate(model.hidden_sizes)]
    else:
        raise KerasInteropError(f"to_keras builds LSTM and GRU models, not cell={cell!r}")
    dense = layers.Dense(V, activation="softmax" if softmax else None, dtype=dtype)
    keras_model = keras.Sequential(stack + rnns + [dense])

    if model.embedding is not None:
        stack[1].set_weights([weights["embedding/embeddings"]])
    for n, rnn in enumerate(rnns):
        rnn.set_weights([weights[f"{cell}_{n}/{k}"] for k in ("kernel", "recurrent_kernel", "bias")])
    dense.set_weights([weights["dense/kernel"], weights["dense/bias"]])
    return keras_model


def _import_keras():
    try:
        import keras
    except ImportError as exc:
        raise KerasInteropError(f"to_keras needs Keras 3 with TensorFlow ({exc}): {_EXTRA}") from None
    if int(keras.__version__.split(".")[0]) < 3:
        raise KerasInteropError(f"to_keras needs Keras 3, found Keras {keras.__version__}: pip install 'keras>=3'")
    return keras


# -- the Transformer (TransformerLM) -----------------------------------------------------------
# to_keras(TransformerLM) builds a Keras 3 model of its own class (below): a subclassed keras.Model that takes
# token ids (B, T) and builds the attention mask inside, causal ∧ query ids != 0 ∧ key ids != 0, passing it
# to every MultiHeadAttention as ``attention_mask`` (the seed's code under Keras 3 must; see docs/design.md).
# Its layers carry scratchlm's names, so the weights map one to one:
#
#     embedding.token_embeddings / .position_embeddings   Embedding       -> embedding/{token,position}_embeddings
#     decoder_n.attention_k  MultiHeadAttention(N, K)   {query,key,value,output}_dense -> decoder_n/attention_k/…
#     decoder_n.layernorm_k  LayerNormalization(1e-3)   gamma, beta      -> decoder_n/layernorm_k/{gamma,beta}
#     decoder_n.ffn_1, .ffn_2  Dense (relu, linear)     kernel, bias     -> decoder_n/ffn_{1,2}/{kernel,bias}
#     final_layernorm (gpt), dense                                       -> final_layernorm/…, dense/…
#
# from_keras reads back models built this way (the model itself; its ``get_config()`` is the TransformerLM
# config) and their ``.weights.h5`` files (the sizes, layers and block read off the weight groups). Arbitrary
# Keras Transformer graphs (Chollet's TransformerDecoder with its own layer names, KerasHub models) are not
# mapped: their structure is code, not weights, and is not recoverable from a model or file in general.

_TRANSFORMER_CLASSES = {}


def _transformer_classes(keras):
    """(PositionalEmbedding, DecoderBlock, TransformerModel) Keras classes, made once per process."""
    if _TRANSFORMER_CLASSES:
        return _TRANSFORMER_CLASSES["classes"]
    layers, ops = keras.layers, keras.ops

    def attention_mask(ids):
        """ids (B, T) -> (B, T, T) bool: key j <= query i, both real (id != 0)."""
        T = ops.shape(ids)[1]
        causal = ops.greater_equal(ops.arange(T)[:, None], ops.arange(T)[None, :])              # (T, T)
        keep = ops.not_equal(ids, 0)                                                           # (B, T)
        return ops.logical_and(causal[None], ops.logical_and(keep[:, :, None], keep[:, None, :]))

    class PositionalEmbedding(layers.Layer):
        """Token Embedding(V, E) + position Embedding(L, E); id 0 is padding (masked in the attentions)."""

        def __init__(self, vocab_size, sequence_length, embed_dim, **kwargs):
            super().__init__(**kwargs)
            self.token_embeddings = layers.Embedding(vocab_size, embed_dim, dtype=self.dtype_policy,
                                                     name="token_embeddings")
            self.position_embeddings = layers.Embedding(sequence_length, embed_dim, dtype=self.dtype_policy,
                                                        name="position_embeddings")

        def call(self, ids):
            T = ops.shape(ids)[1]
            return self.token_embeddings(ids) + self.position_embeddings(ops.arange(T))[None]

    class DecoderBlock(layers.Layer):
        """The book block (post-LN, two attentions) or the gpt block (pre-LN, one), scratchlm's layer names."""

        def __init__(self, block, embed_dim, dense_dim, num_heads, key_dim, **kwargs):
            super().__init__(**kwargs)
            self.block = block
            d = self.dtype_policy
            self.attention_1 = layers.MultiHeadAttention(num_heads, key_dim, dtype=d, name="attention_1")
            if block == "book":
                self.attention_2 = layers.MultiHeadAttention(num_heads, key_dim, dtype=d, name="attention_2")
            self.layernorm_1 = layers.LayerNormalization(epsilon=1e-3, dtype=d, name="layernorm_1")
            self.layernorm_2 = layers.LayerNormalization(epsilon=1e-3, dtype=d, name="layernorm_2")
            if block == "book":
                self.layernorm_3 = layers.LayerNormalization(epsilon=1e-3, dtype=d, name="layernorm_3")
            self.ffn_1 = layers.Dense(dense_dim, activation="relu", dtype=d, name="ffn_1")
            self.ffn_2 = layers.Dense(embed_dim, dtype=d, name="ffn_2")

        def call(self, h, mask):
            if self.block == "book":
                a1 = self.layernorm_1(h + self.attention_1(h, h, attention_mask=mask))
                a2 = self.layernorm_2(a1 + self.attention_2(a1, h, attention_mask=mask))
                return self.layernorm_3(a2 + self.ffn_2(self.ffn_1(a2)))
            n1 = self.layernorm_1(h)
            h = h + self.attention_1(n1, n1, attention_mask=mask)
            return h + self.ffn_2(self.ffn_1(self.layernorm_2(h)))

    class TransformerModel(keras.Model):
        """ids (B, T) int -> logits (B, T, V): scratchlm's TransformerLM in Keras layers."""

        def __init__(self, vocab_size, sequence_length, embed_dim, dense_dim, num_heads, key_dim, num_layers,
                     block, **kwargs):
            super().__init__(**kwargs)
            self.lm_config = {"vocab_size": vocab_size, "sequence_length": sequence_length, "embed_dim": embed_dim,
                              "dense_dim": dense_dim, "num_heads": num_heads, "key_dim": key_dim,
                              "num_layers": num_layers, "block": block}
            d = self.dtype_policy
            self.embedding = PositionalEmbedding(vocab_size, sequence_length, embed_dim, dtype=d, name="embedding")
            self.decoders = [DecoderBlock(block, embed_dim, dense_dim, num_heads, key_dim, dtype=d,
                                          name=f"decoder_{n}") for n in range(num_layers)]
            self.final_layernorm = (layers.LayerNormalization(epsilon=1e-3, dtype=d, name="final_layernorm")
                                    if block == "gpt" else None)
            self.dense = layers.Dense(vocab_size, dtype=d, name="dense")

        def call(self, ids):
            mask = attention_mask(ids)
            h = self.embedding(ids)
            for block in self.decoders:
                h = block(h, mask)
            if self.final_layernorm is not None:
                h = self.final_layernorm(h)
            return self.dense(h)

        def get_config(self):
            return dict(self.lm_config)

    _TRANSFORMER_CLASSES["classes"] = (PositionalEmbedding, DecoderBlock, TransformerModel)
    return _TRANSFORMER_CLASSES["classes"]


def _transformer_keras_variables(km):
    """scratchlm parameter name -> Keras variable of a model built by :func:`to_keras` (already built)."""
    out = {"embedding/token_embeddings": km.embedding.token_embeddings.embeddings,
           "embedding/position_embeddings": km.embedding.position_embeddings.embeddings}
    for n, block in enumerate(km.decoders):
        p = f"decoder_{n}"
        for a in ("attention_1", "attention_2") if block.block == "book" else ("attention_1",):
            mha = getattr(block, a)
            for proj, dense in (("query", mha.query_dense), ("key", mha.key_dense), ("value", mha.value_dense),
                                ("output", mha.output_dense)):
                out[f"{p}/{a}/{proj}/kernel"], out[f"{p}/{a}/{proj}/bias"] = dense.kernel, dense.bias
        for ln in ("layernorm_1", "layernorm_2", "layernorm_3") if block.block == "book" else \
                ("layernorm_1", "layernorm_2"):
            out[f"{p}/{ln}/gamma"], out[f"{p}/{ln}/beta"] = getattr(block, ln).gamma, getattr(block, ln).beta
        for f in ("ffn_1", "ffn_2"):
            out[f"{p}/{f}/kernel"], out[f"{p}/{f}/bias"] = getattr(block, f).kernel, getattr(block, f).bias
    if km.final_layernorm is not None:
        out["final_layernorm/gamma"], out["final_layernorm/beta"] = km.final_layernorm.gamma, km.final_layernorm.beta
    out["dense/kernel"], out["dense/bias"] = km.dense.kernel, km.dense.bias
    return out


def _keras_transformer(keras, config, dtype):
    """A built (called once) Keras TransformerModel of a TransformerLM config, Keras' initial weights."""
    cls = _transformer_classes(keras)[2]
    km = cls(**{k: config[k] for k in ("vocab_size", "sequence_length", "embed_dim", "dense_dim", "num_heads",
                                       "key_dim", "num_layers", "block")}, dtype=dtype)
    km(np.ones((1, 1), dtype="int32"))
    return km


def _transformer_to_keras(model):
    keras = _import_keras()
    km = _keras_transformer(keras, model.config, model.backend.dtype.name)
    for name, var in _transformer_keras_variables(km).items():
        var.assign(model.backend.to_host(model.params[name]))
    return km


def _transformer_from_keras_model(km, backend, dtype):
    from .models import TransformerLM
    variables = _transformer_keras_variables(km)
    params = {name: np.asarray(var.numpy()) for name, var in variables.items()}
    _check_finite({f"{variables[name].path} ({name})": a for name, a in params.items()})
    if dtype is None:
        dtype = "float64" if all(a.dtype == np.float64 for a in params.values()) else "float32"
    model = TransformerLM(**km.get_config(), backend=backend, dtype=dtype)
    model.set_params(params)
    return model


def _transformer_config_in_file(f, path):
    """The TransformerLM config of a to_keras(TransformerLM) weights file, from its groups and shapes.

    Keras 3 saves a subclassed model's layers by attribute path: ``embedding/token_embeddings/vars/0`` (V, E),
    ``embedding/position_embeddings/vars/0`` (L, E), ``decoders/decoder_block[_k]/attention_1/query_dense/vars/0``
    (E, N, K), ``…/ffn_1/vars/0`` (E, F), ``…/attention_2`` only in the book block, ``dense/vars/0`` (E, V)."""
    def shape(key):
        obj = f.get(key)
        if obj is None or not hasattr(obj, "shape"):
            raise KerasInteropError(f"{path}: no {key!r}: not a weights file of to_keras(TransformerLM)")
        return obj.shape
    V, E = shape("embedding/token_embeddings/vars/0")
    L = shape("embedding/position_embeddings/vars/0")[0]
    blocks = sorted(f["decoders"]) if "decoders" in f else []
    if not blocks:
        raise KerasInteropError(f"{path}: no decoder blocks under 'decoders'")
    first = f"decoders/{blocks[0]}"
    _, N, K = shape(f"{first}/attention_1/query_dense/vars/0")
    F = shape(f"{first}/ffn_1/vars/0")[1]
    block = "book" if f"{first}/attention_2" in f else "gpt"
    return {"vocab_size": int(V), "sequence_length": int(L), "embed_dim": int(E), "dense_dim": int(F),
            "num_heads": int(N), "key_dim": int(K), "num_layers": len(blocks), "block": block}


def _is_transformer_file(path):
    h5py = _import_h5py()
    try:
        with h5py.File(path, "r") as f:
            return "decoders" in f and "embedding/token_embeddings" in f
    except OSError:
        return False


def _transformer_from_file(path, backend, dtype):
    """A ``.weights.h5`` of a to_keras(TransformerLM) model -> TransformerLM: a fresh Keras model of the
    config the file's shapes say is built and ``load_weights`` fills it (Keras checks the file against it)."""
    keras = _import_keras()
    h5py = _import_h5py()
    with h5py.File(path, "r") as f:
        config = _transformer_config_in_file(f, path)
        file_dtype = f["embedding/token_embeddings/vars/0"].dtype
    km = _keras_transformer(keras, config, np.dtype(file_dtype).name)
    try:
        km.load_weights(str(path))
    except Exception as exc:                                          # Keras' own mismatch message
        raise KerasInteropError(f"{path}: does not load into to_keras(TransformerLM({config})): {exc}") from None
    return _transformer_from_keras_model(km, backend, dtype)
