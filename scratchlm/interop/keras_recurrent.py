"""Keras' LSTM and GRU language models <-> scratchlm's recurrent model (:class:`~scratchlm.models.LanguageModel`).

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

Reading goes in two steps: the Keras model or file is turned into a list of
``(kind, label, {weight name: array})`` in model order (:func:`from_model`,
:func:`from_file`), then :func:`_build` checks the chain and makes the model.
"""

import re
from pathlib import Path

import numpy as np

from ..models import LanguageModel
from .keras_io import KerasInteropError, check_finite, datasets, import_h5py, import_keras, open_weights

_SHAPE = "[Embedding] -> LSTM -> ... -> LSTM -> Dense (or GRU -> ... -> GRU)"
_CELLS = ("lstm", "gru")  # the recurrent kinds, as LanguageModel names its cells
_WEIGHTLESS = {"InputLayer", "Dropout"}  # layers that compute nothing at inference


# -- reading a Keras model ----------------------------------------------------------------
def from_model(model, backend="numpy", dtype=None) -> LanguageModel:
    """The LanguageModel of a Keras LSTM or GRU model (Sequential, or functional with one input)."""
    layers, stateful = _layers_from_model(model)
    return _build(layers, backend, dtype, stateful)


def from_file(path: Path, backend="numpy", dtype=None) -> LanguageModel:
    """The LanguageModel of a Keras 3 ``.weights.h5`` or ``.keras`` file of such a model."""
    return _build(_layers_from_file(path), backend, dtype, stateful=False)


def _activation_name(fn):
    return getattr(fn, "__name__", str(fn))


def _layers_from_model(model):
    """Keras model -> ([(kind, label, {weight name: array})...] in order, stateful)."""
    inputs = getattr(model, "inputs", None) or []
    if len(inputs) > 1:
        raise KerasInteropError(
            f"the Keras model has {len(inputs)} inputs; from_keras reads single-input {_SHAPE} models"
        )
    layers, stateful = [], False
    for layer in model.layers:
        cls = type(layer).__name__
        label = f"{layer.name!r} ({cls})"
        if cls in _WEIGHTLESS:
            continue
        weights = dict(zip((v.path.split("/")[-1] for v in layer.weights), layer.get_weights(), strict=True))
        if cls in ("Embedding", "LSTM", "GRU", "Dense") and not weights:
            raise KerasInteropError(
                f"layer {label} has no weights yet: build the Keras model first (give it an Input, or call it once)"
            )
        if cls == "Embedding":
            layers.append(("embedding", label, {"embeddings": weights["embeddings"]}))
        elif cls in ("LSTM", "GRU"):
            if (
                _activation_name(layer.cell.activation) != "tanh"
                or _activation_name(layer.cell.recurrent_activation) != "sigmoid"
            ):
                raise KerasInteropError(
                    f"layer {label} uses activation={_activation_name(layer.cell.activation)}, "
                    f"recurrent_activation={_activation_name(layer.cell.recurrent_activation)}; "
                    f"scratchlm's {cls} is tanh / sigmoid"
                )
            if layer.go_backwards or layer.return_state:
                raise KerasInteropError(f"layer {label}: go_backwards and return_state are not supported")
            if cls == "GRU" and not layer.cell.reset_after:
                raise KerasInteropError(
                    f"layer {label} has reset_after=False; scratchlm's GRU is Keras 3's default "
                    "reset_after=True (the reset gate applied after the recurrent product)"
                )
            stateful = stateful or layer.stateful
            layers.append((cls.lower(), label, weights))
        elif cls == "Dense":
            if _activation_name(layer.activation) not in ("linear", "softmax"):
                raise KerasInteropError(
                    f"layer {label} has activation {_activation_name(layer.activation)!r}; "
                    "the output Dense must be linear (logits) or softmax"
                )
            layers.append(("dense", label, weights))
        else:
            raise KerasInteropError(
                f"layer {label} is not supported: from_keras reads {_SHAPE} models (Dropout allowed)"
            )
    return layers, stateful


def _layers_from_file(path):
    """A Keras 3 weights file -> [(kind, label, {weight name: array})...] in model order.

    Keras 3's layout: ``layers/<snake_case class>[_<k>]/vars/<i>`` (the LSTM's under
    ``.../cell/vars/<i>``), where k counts the layers of one class in model order
    and ``vars`` has the layer's own name as its ``name`` attribute.
    """
    h5py = import_h5py()
    with open_weights(path) as f:
        if not isinstance(f.get("layers"), h5py.Group):
            raise KerasInteropError(
                f"{path} has no 'layers' group: not a Keras 3 weights file (for a Keras 2 "
                "file, load the model in Keras and pass the model to from_keras)"
            )
        found = []
        for key, group in f["layers"].items():
            kind, index = re.fullmatch(r"(.*?)(?:_(\d+))?", key).groups()
            name = group["vars"].attrs.get("name", key) if "vars" in group else key
            label = f"{name!r} ({key})"
            arrays = datasets(group)
            if kind in ("input_layer", "dropout") and not arrays:
                continue
            layout = {
                "embedding": ("vars", ["embeddings"]),
                "lstm": ("cell/vars", ["kernel", "recurrent_kernel", "bias"]),
                "gru": ("cell/vars", ["kernel", "recurrent_kernel", "bias"]),
                "dense": ("vars", ["kernel", "bias"]),
            }.get(kind)
            if layout is None:
                raise KerasInteropError(f"layer {label} is not supported: from_keras reads {_SHAPE} models")
            where, names = layout
            values = [arrays.get(f"{where}/{i}") for i in range(len(names))]
            required = 2 if kind in _CELLS else 1  # kernel and recurrent kernel; the bias is optional
            if any(v is None for v in values[:required]) or set(arrays) - {f"{where}/{i}" for i in range(len(names))}:
                raise KerasInteropError(f"layer {label}: unexpected weights {sorted(arrays)} for a Keras {kind}")
            weights = {n: v for n, v in zip(names, values, strict=True) if v is not None}
            if kind == "gru" and "bias" not in weights:
                raise KerasInteropError(
                    f"layer {label}: a GRU without bias in a weights file does not say whether "
                    "it has reset_after=True (scratchlm's GRU) or False; load the model in "
                    "Keras and pass the model to from_keras"
                )
            found.append((kind, int(index or 0), label, weights))
    rank = {"embedding": 0, "lstm": 1, "gru": 1, "dense": 2}
    found.sort(key=lambda entry: (rank[entry[0]], entry[1]))
    return [(kind, label, weights) for kind, _, label, weights in found]


def _build(layers, backend, dtype, stateful):
    """Check the chain's kinds, shapes and values, then make the LanguageModel and copy the weights in."""
    check_finite({f"layer {label}: {name}": a for _, label, weights in layers for name, a in weights.items()})
    kinds = [kind for kind, _, _ in layers]
    labels = {kind: [label for k, label, _ in layers if k == kind] for kind in ("embedding", "lstm", "gru", "dense")}
    if kinds.count("dense") != 1 or kinds[-1] != "dense":
        raise KerasInteropError(
            f"expected exactly one Dense layer, at the end; found Dense layers {labels['dense'] or 'none'} in {_SHAPE}"
        )
    if kinds.count("embedding") > 1 or ("embedding" in kinds and kinds[0] != "embedding"):
        raise KerasInteropError(f"an Embedding may only come first, once; found {labels['embedding']}")
    cells = [kind for kind in _CELLS if kind in kinds]
    if not cells:
        raise KerasInteropError(f"no recurrent layer (LSTM or GRU) found: from_keras reads {_SHAPE} models")
    if len(cells) > 1:
        raise KerasInteropError(
            f"the model mixes LSTM layers {labels['lstm']} and GRU layers {labels['gru']}; "
            "scratchlm's LanguageModel uses one cell for every layer"
        )
    cell = cells[0]
    G = {"lstm": 4, "gru": 3}[cell]

    params, hidden_sizes = {}, []
    dense_label, dense = layers[-1][1:]
    V = dense["kernel"].shape[-1]
    embedding_dim = None
    d_in = V  # one-hot input
    for kind, label, w in layers:
        if kind == "embedding":
            E = w["embeddings"]
            if E.ndim != 2 or E.shape[0] != V:
                raise KerasInteropError(
                    f"layer {label}: embeddings of shape {E.shape} do not fit the output Dense's vocabulary of {V}"
                )
            embedding_dim = d_in = E.shape[1]
            params["embedding/embeddings"] = E
        elif kind == cell:
            n = len(hidden_sizes)
            U = w["recurrent_kernel"]
            H = U.shape[0]
            if U.ndim != 2 or U.shape != (H, G * H) or w["kernel"].shape != (d_in, G * H):
                article = "an" if cell == "lstm" else "a"
                one_hot = " (one-hot input of the output vocabulary)" if n == 0 and embedding_dim is None else ""
                raise KerasInteropError(
                    f"layer {label}: kernel {w['kernel'].shape} and recurrent kernel {U.shape} "
                    f"do not fit {article} {cell.upper()} with input size {d_in}: expected "
                    f"({d_in}, {G}H) and (H, {G}H)" + one_hot
                )
            bias_shape = (G * H,) if cell == "lstm" else (2, G * H)  # GRU: rows b_in, b_rec
            bias = w.get("bias", np.zeros(bias_shape, dtype=U.dtype))
            if cell == "gru" and bias.shape == (G * H,):
                raise KerasInteropError(
                    f"layer {label}: bias of shape {bias.shape} is a GRU with reset_after=False; "
                    f"scratchlm's GRU is Keras 3's default reset_after=True, bias {bias_shape}"
                )
            if bias.shape != bias_shape:
                raise KerasInteropError(f"layer {label}: bias of shape {bias.shape}, expected {bias_shape}")
            params[f"{cell}_{n}/kernel"], params[f"{cell}_{n}/recurrent_kernel"] = w["kernel"], U
            params[f"{cell}_{n}/bias"] = bias
            hidden_sizes.append(H)
            d_in = H
    bias = dense.get("bias", np.zeros(V, dtype=dense["kernel"].dtype))
    if dense["kernel"].shape != (d_in, V) or bias.shape != (V,):
        raise KerasInteropError(
            f"layer {dense_label}: kernel {dense['kernel'].shape} and bias {bias.shape} "
            f"do not fit the last {cell.upper()}'s {d_in} units: expected ({d_in}, V) and (V,)"
        )
    params["dense/kernel"], params["dense/bias"] = dense["kernel"], bias

    if dtype is None:
        dtype = "float64" if all(a.dtype == np.float64 for a in params.values()) else "float32"
    model = LanguageModel(
        V,
        embedding_dim=embedding_dim,
        hidden_sizes=hidden_sizes,
        backend=backend,
        dtype=dtype,
        stateful=stateful,
        cell=cell,
    )
    model.set_params(params)
    return model


# -- building a Keras model ----------------------------------------------------------------
def to_keras(model: LanguageModel, last_only: bool = False, softmax: bool = False, mask_zero: bool = False):
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
    if mask_zero and model.embedding is None:
        raise KerasInteropError("mask_zero=True needs an Embedding; this model reads one-hot input")
    keras = import_keras()
    layers = keras.layers
    dtype = model.backend.dtype.name
    V = model.vocab_size
    weights = {name: model.backend.to_host(p) for name, p in model.params.items()}

    if model.embedding is None:
        stack = [keras.Input((None, V), dtype=dtype)]
    else:
        stack = [
            keras.Input((None,), dtype="int32"),
            layers.Embedding(V, model.embedding_dim, mask_zero=mask_zero, dtype=dtype),
        ]
    top = len(model.hidden_sizes) - 1
    cell = model.cell
    if cell == "lstm":
        rnns = [
            layers.LSTM(H, return_sequences=not (last_only and n == top), dtype=dtype)
            for n, H in enumerate(model.hidden_sizes)
        ]
    elif cell == "gru":
        rnns = [
            layers.GRU(H, reset_after=True, return_sequences=not (last_only and n == top), dtype=dtype)
            for n, H in enumerate(model.hidden_sizes)
        ]
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
