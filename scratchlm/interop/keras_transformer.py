"""Keras 3 <-> scratchlm's :class:`~scratchlm.models.TransformerLM`, through a Keras model of scratchlm's own making.

:func:`to_keras` builds a Keras 3 model of its own class (below): a subclassed ``keras.Model`` that takes
token ids (B, T) and builds the attention mask inside, causal ∧ query ids != 0 ∧ key ids != 0, passing it
to every MultiHeadAttention as ``attention_mask`` (the seed's code under Keras 3 must; see docs/design.md).
Its layers carry scratchlm's names, so the weights map one to one:

    embedding.token_embeddings / .position_embeddings   Embedding       -> embedding/{token,position}_embeddings
    decoder_n.attention_k  MultiHeadAttention(N, K)   {query,key,value,output}_dense -> decoder_n/attention_k/…
    decoder_n.layernorm_k  LayerNormalization(1e-3)   gamma, beta      -> decoder_n/layernorm_k/{gamma,beta}
    decoder_n.ffn_1, .ffn_2  Dense (relu, linear)     kernel, bias     -> decoder_n/ffn_{1,2}/{kernel,bias}
    final_layernorm (gpt), dense                                       -> final_layernorm/…, dense/…

:func:`from_model` reads back models built this way (the model itself; its ``get_config()`` is the
TransformerLM config) and :func:`from_file` their ``.weights.h5`` files (the sizes, layers and block read off
the weight groups). Arbitrary Keras Transformer graphs (Chollet's TransformerDecoder with its own layer names,
KerasHub models) are not mapped: their structure is code, not weights, and is not recoverable from a model or
file in general.
"""

import functools
from pathlib import Path

import numpy as np

from ..models import TransformerLM
from .keras_io import KerasInteropError, check_finite, import_keras, open_weights


def is_keras_model(obj) -> bool:
    """Whether ``obj`` is a Keras model built by :func:`to_keras` (the class below, with its config)."""
    return type(obj).__name__ == "TransformerModel" and hasattr(obj, "lm_config")


def is_weights_file(path: Path) -> bool:
    """Whether the HDF5 file at ``path`` holds the weight groups of a :func:`to_keras` model."""
    try:
        with open_weights(path) as f:
            return "decoders" in f and "embedding/token_embeddings" in f
    except KerasInteropError:  # not HDF5 (or no h5py): the recurrent reader says so
        return False


@functools.cache
def _keras_classes(keras):
    """(PositionalEmbedding, DecoderBlock, TransformerModel) Keras classes, made once per process."""
    layers, ops = keras.layers, keras.ops

    def attention_mask(ids):
        """ids (B, T) -> (B, T, T) bool: key j <= query i, both real (id != 0)."""
        T = ops.shape(ids)[1]
        causal = ops.greater_equal(ops.arange(T)[:, None], ops.arange(T)[None, :])  # (T, T)
        keep = ops.not_equal(ids, 0)  # (B, T)
        return ops.logical_and(causal[None], ops.logical_and(keep[:, :, None], keep[:, None, :]))

    class PositionalEmbedding(layers.Layer):
        """Token Embedding(V, E) + position Embedding(L, E); id 0 is padding (masked in the attentions)."""

        def __init__(self, vocab_size, sequence_length, embed_dim, **kwargs):
            super().__init__(**kwargs)
            self.token_embeddings = layers.Embedding(
                vocab_size, embed_dim, dtype=self.dtype_policy, name="token_embeddings"
            )
            self.position_embeddings = layers.Embedding(
                sequence_length, embed_dim, dtype=self.dtype_policy, name="position_embeddings"
            )

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

        def __init__(
            self, vocab_size, sequence_length, embed_dim, dense_dim, num_heads, key_dim, num_layers, block, **kwargs
        ):
            super().__init__(**kwargs)
            self.lm_config = {
                "vocab_size": vocab_size,
                "sequence_length": sequence_length,
                "embed_dim": embed_dim,
                "dense_dim": dense_dim,
                "num_heads": num_heads,
                "key_dim": key_dim,
                "num_layers": num_layers,
                "block": block,
            }
            d = self.dtype_policy
            self.embedding = PositionalEmbedding(vocab_size, sequence_length, embed_dim, dtype=d, name="embedding")
            self.decoders = [
                DecoderBlock(block, embed_dim, dense_dim, num_heads, key_dim, dtype=d, name=f"decoder_{n}")
                for n in range(num_layers)
            ]
            self.final_layernorm = (
                layers.LayerNormalization(epsilon=1e-3, dtype=d, name="final_layernorm") if block == "gpt" else None
            )
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

    return PositionalEmbedding, DecoderBlock, TransformerModel


def _keras_variables(km):
    """scratchlm parameter name -> Keras variable of a model built by :func:`to_keras` (already built)."""
    out = {
        "embedding/token_embeddings": km.embedding.token_embeddings.embeddings,
        "embedding/position_embeddings": km.embedding.position_embeddings.embeddings,
    }
    for n, block in enumerate(km.decoders):
        p = f"decoder_{n}"
        for a in ("attention_1", "attention_2") if block.block == "book" else ("attention_1",):
            mha = getattr(block, a)
            for proj, dense in (
                ("query", mha.query_dense),
                ("key", mha.key_dense),
                ("value", mha.value_dense),
                ("output", mha.output_dense),
            ):
                out[f"{p}/{a}/{proj}/kernel"], out[f"{p}/{a}/{proj}/bias"] = dense.kernel, dense.bias
        for ln in (
            ("layernorm_1", "layernorm_2", "layernorm_3") if block.block == "book" else ("layernorm_1", "layernorm_2")
        ):
            out[f"{p}/{ln}/gamma"], out[f"{p}/{ln}/beta"] = getattr(block, ln).gamma, getattr(block, ln).beta
        for f in ("ffn_1", "ffn_2"):
            out[f"{p}/{f}/kernel"], out[f"{p}/{f}/bias"] = getattr(block, f).kernel, getattr(block, f).bias
    if km.final_layernorm is not None:
        out["final_layernorm/gamma"], out["final_layernorm/beta"] = km.final_layernorm.gamma, km.final_layernorm.beta
    out["dense/kernel"], out["dense/bias"] = km.dense.kernel, km.dense.bias
    return out


def _keras_model(keras, config, dtype):
    """A built (called once) Keras TransformerModel of a TransformerLM config, Keras' initial weights."""
    cls = _keras_classes(keras)[2]
    km = cls(
        **{
            k: config[k]
            for k in (
                "vocab_size",
                "sequence_length",
                "embed_dim",
                "dense_dim",
                "num_heads",
                "key_dim",
                "num_layers",
                "block",
            )
        },
        dtype=dtype,
    )
    km(np.ones((1, 1), dtype="int32"))
    return km


def to_keras(model: TransformerLM):
    """The Keras 3 model (the ``TransformerModel`` class above) equivalent to a TransformerLM, weights set:
    ids (B, T) in, logits (B, T, V) out, masks built from the ids (0 = padding). Needs Keras 3."""
    # The Keras model written here is the seed's: ReLU, Keras' LayerNorm ε, biases, an untied output layer.
    # init and dropout only shape training; any other GPT-2 option would build a different model silently.
    differ = [
        f"{k}={model.config[k]!r}"
        for k, seed in TransformerLM.CONFIG_DEFAULTS.items()
        if k not in ("init", "dropout") and model.config.get(k, seed) != seed
    ]
    if differ:
        raise KerasInteropError(
            f"to_keras writes the seed's Transformer (ReLU, LayerNorm epsilon 1e-3, biases, an output layer of its "
            f"own, id 0 as padding); this model has {', '.join(differ)}: keep it as a scratchlm checkpoint (model.save)"
        )
    keras = import_keras()
    km = _keras_model(keras, model.config, model.backend.dtype.name)
    for name, var in _keras_variables(km).items():
        var.assign(model.backend.to_host(model.params[name]))
    return km


def from_model(km, backend="numpy", dtype=None) -> TransformerLM:
    """The TransformerLM of a Keras model built by :func:`to_keras` (its config, its weights)."""
    variables = _keras_variables(km)
    params = {name: np.asarray(var.numpy()) for name, var in variables.items()}
    check_finite({f"{variables[name].path} ({name})": a for name, a in params.items()})
    if dtype is None:
        dtype = "float64" if all(a.dtype == np.float64 for a in params.values()) else "float32"
    model = TransformerLM(**km.get_config(), backend=backend, dtype=dtype)
    model.set_params(params)
    return model


def _config_in_file(f, path):
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
    return {
        "vocab_size": int(V),
        "sequence_length": int(L),
        "embed_dim": int(E),
        "dense_dim": int(F),
        "num_heads": int(N),
        "key_dim": int(K),
        "num_layers": len(blocks),
        "block": block,
    }


def from_file(path: Path, backend="numpy", dtype=None) -> TransformerLM:
    """A ``.weights.h5`` of a to_keras(TransformerLM) model -> TransformerLM: a fresh Keras model of the
    config the file's shapes say is built and ``load_weights`` fills it (Keras checks the file against it)."""
    keras = import_keras()
    with open_weights(path) as f:
        config = _config_in_file(f, path)
        file_dtype = f["embedding/token_embeddings/vars/0"].dtype
    km = _keras_model(keras, config, np.dtype(file_dtype).name)
    try:
        km.load_weights(str(path))
    except Exception as exc:  # Keras' own mismatch message
        raise KerasInteropError(f"{path}: does not load into to_keras(TransformerLM({config})): {exc}") from None
    return from_model(km, backend, dtype)
