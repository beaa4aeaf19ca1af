"""Keras interop: from_keras / to_keras.

Without TensorFlow: the committed Keras weights file ``reference/keras_lm.weights.h5``
(saved by Keras, with the logits Keras computed) and small files written here in
Keras 3's layout (these tests need h5py and skip without it). With TensorFlow
(``pytest -m tf``): round trips through live Keras models and files.
"""

import os
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from scratchlm import LanguageModel, ScratchLMError
from scratchlm.interop import KerasInteropError, from_keras, to_keras
from scratchlm.losses import softmax
from scratchlm.models import TransformerLM

REFERENCE = Path(__file__).resolve().parent / "reference"
WEIGHTS_H5 = REFERENCE / "keras_lm.weights.h5"


@pytest.fixture
def h5py():
    return pytest.importorskip("h5py", reason="reading Keras weight files needs h5py")


@pytest.fixture
def expected():
    with np.load(REFERENCE / "keras_lm_expected.npz", allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def write_weights_h5(h5py, path, layers):
    """A weights file in Keras 3's layout. layers: [(group key, layer name, {dataset path: array})]."""
    with h5py.File(path, "w") as f:
        for key, name, arrays in layers:
            group = f.create_group(f"layers/{key}")
            group.create_group("vars").attrs["name"] = name
            for rel, a in arrays.items():
                group.create_dataset(rel, data=a)
    return path


def lstm_group(rng, d_in, H):
    return {
        "cell/vars/0": rng.standard_normal((d_in, 4 * H)),
        "cell/vars/1": rng.standard_normal((H, 4 * H)),
        "cell/vars/2": rng.standard_normal(4 * H),
    }


def gru_group(rng, d_in, H, reset_after=True):
    """A Keras GRU's weights: reset_after=True has a (2, 3H) bias [b_in; b_rec], reset_after=False a (3H,) one."""
    return {
        "cell/vars/0": rng.standard_normal((d_in, 3 * H)),
        "cell/vars/1": rng.standard_normal((H, 3 * H)),
        "cell/vars/2": rng.standard_normal((2, 3 * H) if reset_after else 3 * H),
    }


# -- the committed Keras file, no TensorFlow ------------------------------------------------------
def test_reads_the_committed_keras_weights_file(h5py, expected):
    model = from_keras(WEIGHTS_H5)
    assert (model.vocab_size, model.embedding_dim, model.hidden_sizes) == (13, 5, [6, 4])
    assert model.backend.dtype == np.float32
    for name, p in model.params.items():
        np.testing.assert_array_equal(p, expected[f"param/{name}"], err_msg=name)
    logits, _ = model.forward(expected["x"])
    assert np.abs(logits - expected["logits"]).max() <= 1e-5


def test_reads_the_weights_file_in_float64(h5py, expected):
    model = from_keras(str(WEIGHTS_H5), dtype="float64")
    assert model.backend.dtype == np.float64
    logits, _ = model.forward(expected["x"])
    assert np.abs(logits - expected["logits"]).max() <= 1e-5


def test_reads_a_keras_archive(h5py, expected, tmp_path):
    path = tmp_path / "lm.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", "{}")
        archive.writestr("model.weights.h5", WEIGHTS_H5.read_bytes())
    model = from_keras(path)
    np.testing.assert_array_equal(model.params["dense/kernel"], expected["param/dense/kernel"])


def test_layer_order_follows_the_keras_counter_not_the_name(h5py, tmp_path):
    """h5py lists lstm_10 before lstm_2; the chain is lstm, lstm_1, ..., lstm_10 (sizes tell)."""
    rng = np.random.default_rng(0)
    V, sizes = 5, list(range(1, 12))
    layers, d_in = [], V
    for k, H in enumerate(sizes):
        layers.append(("lstm" if k == 0 else f"lstm_{k}", f"my_lstm_{k}", lstm_group(rng, d_in, H)))
        d_in = H
    layers.append(("dense", "out", {"vars/0": rng.standard_normal((d_in, V)), "vars/1": rng.standard_normal(V)}))
    model = from_keras(write_weights_h5(h5py, tmp_path / "deep.weights.h5", layers))
    assert model.embedding_dim is None and model.hidden_sizes == sizes


def test_one_hot_model_without_biases(h5py, tmp_path):
    rng = np.random.default_rng(1)
    group = lstm_group(rng, 6, 3)
    del group["cell/vars/2"]
    path = write_weights_h5(
        h5py,
        tmp_path / "nobias.weights.h5",
        [
            ("input_layer", "input_layer", {}),
            ("lstm", "lstm", group),
            ("dropout", "dropout", {}),
            ("dense", "dense", {"vars/0": rng.standard_normal((3, 6))}),
        ],
    )
    model = from_keras(path)
    assert model.backend.dtype == np.float64 and model.embedding is None
    assert not model.params["lstm_0/bias"].any() and not model.params["dense/bias"].any()


def test_unsupported_layer_in_file_is_named(h5py, tmp_path):
    rng = np.random.default_rng(2)
    path = write_weights_h5(
        h5py,
        tmp_path / "rnn.weights.h5",
        [
            ("embedding", "emb", {"vars/0": rng.standard_normal((7, 3))}),
            ("simple_rnn", "my_rnn", {"cell/vars/0": rng.standard_normal((3, 4))}),
            ("dense", "dense", {"vars/0": rng.standard_normal((4, 7)), "vars/1": np.zeros(7)}),
        ],
    )
    with pytest.raises(KerasInteropError, match="'my_rnn' \\(simple_rnn\\) is not supported"):
        from_keras(path)


def test_reads_a_gru_weights_file(h5py, tmp_path):
    """gru, gru_1 groups with (2, 3H) biases -> LanguageModel(cell="gru"), the arrays as they are."""
    rng = np.random.default_rng(4)
    groups = [gru_group(rng, 3, 5), gru_group(rng, 5, 4)]
    layers = [
        ("embedding", "emb", {"vars/0": rng.standard_normal((7, 3))}),
        ("gru", "g0", groups[0]),
        ("gru_1", "g1", groups[1]),
        ("dense", "out", {"vars/0": rng.standard_normal((4, 7)), "vars/1": rng.standard_normal(7)}),
    ]
    model = from_keras(write_weights_h5(h5py, tmp_path / "gru.weights.h5", layers))
    assert (model.cell, model.embedding_dim, model.hidden_sizes) == ("gru", 3, [5, 4])
    for n, group in enumerate(groups):
        for i, name in enumerate(("kernel", "recurrent_kernel", "bias")):
            np.testing.assert_array_equal(model.params[f"gru_{n}/{name}"], group[f"cell/vars/{i}"])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_weights_file_with_a_non_finite_weight_is_refused_naming_it(h5py, tmp_path, bad):
    rng = np.random.default_rng(5)
    group = lstm_group(rng, 3, 4)
    group["cell/vars/1"][2, 5] = bad
    path = write_weights_h5(
        h5py,
        tmp_path / "nan.weights.h5",
        [
            ("embedding", "emb", {"vars/0": rng.standard_normal((7, 3))}),
            ("lstm", "rnn", group),
            ("dense", "out", {"vars/0": rng.standard_normal((4, 7)), "vars/1": np.zeros(7)}),
        ],
    )
    with pytest.raises(KerasInteropError, match="layer 'rnn' \\(lstm\\): recurrent_kernel holds 1 NaN or infinite"):
        from_keras(path)


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda rng, layers: layers.__setitem__(1, ("gru", "old", gru_group(rng, 3, 4, reset_after=False))),
            "'old' \\(gru\\): bias of shape \\(12,\\) is a GRU with reset_after=False",
        ),
        (lambda rng, layers: layers[1][2].pop("cell/vars/2"), "'g' \\(gru\\): a GRU without bias.*reset_after"),
        (lambda rng, layers: layers[1][2].update({"cell/vars/2": np.zeros((2, 9))}), "'g' \\(gru\\): bias of shape"),
        (
            lambda rng, layers: layers[1][2].update({"cell/vars/1": np.zeros((4, 16))}),
            "'g' \\(gru\\).*do not fit a GRU",
        ),
        (lambda rng, layers: layers[1][2].pop("cell/vars/1"), "'g' \\(gru\\): unexpected weights"),
        (lambda rng, layers: layers.insert(2, ("lstm", "l", lstm_group(rng, 4, 4))), "mixes LSTM layers.*GRU layers"),
    ],
)
def test_gru_files_that_do_not_fit(h5py, tmp_path, change, message):
    rng = np.random.default_rng(5)
    layers = [
        ("embedding", "emb", {"vars/0": rng.standard_normal((7, 3))}),
        ("gru", "g", gru_group(rng, 3, 4)),
        ("dense", "out", {"vars/0": rng.standard_normal((4, 7)), "vars/1": np.zeros(7)}),
    ]
    from_keras(write_weights_h5(h5py, tmp_path / "good.weights.h5", layers))
    change(rng, layers)
    with pytest.raises(KerasInteropError, match=message):
        from_keras(write_weights_h5(h5py, tmp_path / "bad.weights.h5", layers))


@pytest.mark.parametrize(
    "break_it, message",
    [
        (lambda layers: layers[2][2].update({"vars/0": np.zeros((5, 7))}), "'out' \\(dense\\).*do not fit"),
        (lambda layers: layers[1][2].update({"cell/vars/0": np.zeros((4, 16))}), "'rnn' \\(lstm\\).*do not fit"),
        (lambda layers: layers[0][2].update({"vars/0": np.zeros((8, 3))}), "'emb' \\(embedding\\).*vocabulary of 7"),
        (lambda layers: layers.pop(), "exactly one Dense"),
        (lambda layers: layers.append(("dense_1", "extra", {"vars/0": np.zeros((7, 7))})), "exactly one Dense"),
        (lambda layers: layers.pop(1), "no recurrent layer \\(LSTM or GRU\\)"),
        (lambda layers: layers[1][2].update({"cell/vars/3": np.zeros(3)}), "'rnn' \\(lstm\\): unexpected weights"),
    ],
)
def test_bad_shapes_in_file_name_the_layer(h5py, tmp_path, break_it, message):
    rng = np.random.default_rng(3)
    layers = [
        ("embedding", "emb", {"vars/0": rng.standard_normal((7, 3))}),
        ("lstm", "rnn", lstm_group(rng, 3, 4)),
        ("dense", "out", {"vars/0": rng.standard_normal((4, 7)), "vars/1": np.zeros(7)}),
    ]
    from_keras(write_weights_h5(h5py, tmp_path / "good.weights.h5", layers))
    break_it(layers)
    with pytest.raises(KerasInteropError, match=message):
        from_keras(write_weights_h5(h5py, tmp_path / "bad.weights.h5", layers))


def test_files_that_are_not_keras_weights(h5py, tmp_path):
    with pytest.raises(KerasInteropError, match="no such"):
        from_keras(tmp_path / "missing.weights.h5")
    (tmp_path / "text.weights.h5").write_text("not hdf5")
    with pytest.raises(KerasInteropError, match="not an HDF5 file"):
        from_keras(tmp_path / "text.weights.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.create_dataset("model_weights", data=np.zeros(3))
    with pytest.raises(KerasInteropError, match="not a Keras 3 weights file"):
        from_keras(tmp_path / "other.h5")
    (tmp_path / "bad.keras").write_bytes(b"PK not a zip")
    with pytest.raises(KerasInteropError, match="not a Keras 3 .keras archive"):
        from_keras(tmp_path / "bad.keras")


# -- errors that need neither TensorFlow nor h5py -------------------------------------------------
def test_missing_h5py_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "h5py", None)  # makes `import h5py` fail
    with pytest.raises(KerasInteropError, match="pip install h5py"):
        from_keras(WEIGHTS_H5)


def test_missing_keras_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "keras", None)
    with pytest.raises(KerasInteropError, match="scratchlm\\[reference\\]"):
        to_keras(LanguageModel(5, embedding_dim=2, hidden_sizes=[3]))


def test_bad_arguments():
    with pytest.raises(KerasInteropError, match="Keras model or the path"):
        from_keras(42)
    with pytest.raises(KerasInteropError, match="LanguageModel"):
        to_keras("model.npz")
    with pytest.raises(KerasInteropError, match="mask_zero=True needs an Embedding"):
        to_keras(LanguageModel(5, hidden_sizes=[3]), mask_zero=True)
    assert issubclass(KerasInteropError, ScratchLMError)


# -- live Keras (TensorFlow) ---------------------------------------------------------------------------
@pytest.fixture
def keras():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # as the fixture generator runs TensorFlow
    pytest.importorskip("tensorflow", reason="live Keras tests need TensorFlow: pip install -e '.[reference]'")
    return pytest.importorskip("keras")


def keras_input(model, x):
    """Token ids as the Keras model built by to_keras expects them (one-hot floats without an Embedding)."""
    return x if model.embedding is not None else np.eye(model.vocab_size, dtype=model.backend.dtype)[x]


TOL = {"float32": 1e-5, "float64": 1e-9}


@pytest.mark.tf
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # inside Keras' save code
@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("embedding_dim, hidden_sizes", [(None, [6]), (4, [5, 3]), (3, [4, 4, 2])])
def test_round_trip_through_keras(keras, tmp_path, dtype, embedding_dim, hidden_sizes, cell):
    model = LanguageModel(9, embedding_dim=embedding_dim, hidden_sizes=hidden_sizes, dtype=dtype, seed=5, cell=cell)
    if cell == "gru":  # non-zero biases in both rows: b_in and b_rec both count
        rng = np.random.default_rng(6)
        for n in range(len(hidden_sizes)):
            bias = model.params[f"gru_{n}/bias"]
            bias[...] = rng.uniform(-0.5, 0.5, bias.shape)
    x = np.random.default_rng(0).integers(0, 9, (3, 7))
    km = to_keras(model)
    rnns = [layer for layer in km.layers if type(layer).__name__ in ("LSTM", "GRU")]
    assert [type(layer).__name__ for layer in rnns] == [cell.upper()] * len(hidden_sizes)
    assert all(layer.cell.reset_after for layer in rnns if cell == "gru")
    logits, _ = model.forward(x)
    assert np.abs(km(keras_input(model, x)).numpy() - logits).max() <= TOL[dtype]

    km.save_weights(tmp_path / "lm.weights.h5")
    km.save(tmp_path / "lm.keras")
    for back in (from_keras(km), from_keras(tmp_path / "lm.weights.h5"), from_keras(tmp_path / "lm.keras")):
        assert (back.cell, back.embedding_dim, back.hidden_sizes, back.backend.dtype) == (
            cell,
            embedding_dim,
            hidden_sizes,
            dtype,
        )
        for name, p in model.params.items():
            np.testing.assert_array_equal(back.params[name], p, err_msg=name)
        assert np.abs(back.forward(x)[0] - logits).max() == 0


@pytest.mark.tf
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_keras_gru_model_gives_the_same_logits(keras, dtype):
    """A Keras-built Embedding -> GRU -> GRU -> Dense (Keras' own initialisation, biases set) loads and agrees."""
    keras.utils.set_random_seed(3)
    km = keras.Sequential(
        [
            keras.Input((None,), dtype="int32"),
            keras.layers.Embedding(10, 4, dtype=dtype),
            keras.layers.GRU(6, return_sequences=True, dtype=dtype),
            keras.layers.GRU(5, return_sequences=True, dtype=dtype),
            keras.layers.Dense(10, dtype=dtype),
        ]
    )
    rng = np.random.default_rng(7)
    for layer in km.layers[1:3]:
        layer.cell.bias.assign(rng.uniform(-0.5, 0.5, (2, 3 * layer.units)).astype(dtype))
    x = rng.integers(0, 10, (4, 8))
    model = from_keras(km)
    assert (model.cell, model.hidden_sizes, model.backend.dtype) == ("gru", [6, 5], dtype)
    logits, _ = model.forward(x)
    assert np.abs(km(x).numpy() - logits).max() <= TOL[dtype]


@pytest.mark.tf
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_to_keras_last_step_softmax_and_mask(keras, cell):
    model = LanguageModel(8, embedding_dim=3, hidden_sizes=[5, 4], seed=1, cell=cell)
    x = np.random.default_rng(1).integers(1, 8, (4, 6))
    x[0, 4:] = 0
    x[1, :2] = 0
    mask = x != 0
    logits, _ = model.forward(x, mask=mask)
    seq = to_keras(model, mask_zero=True)(x).numpy()
    assert np.abs(seq[mask] - logits[mask]).max() <= 1e-5  # padded positions are never scored
    probs = to_keras(model, last_only=True, softmax=True, mask_zero=True)(x).numpy()
    assert np.abs(probs - softmax(logits[:, -1])).max() <= 1e-5


@pytest.mark.tf
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_a_keras_nietzsche_model_samples_the_same(keras, cell):
    """A Keras-built one-hot -> LSTM|GRU -> Dense(softmax) model gives scratchlm the same next-char distribution."""
    V, T = 11, 9
    km = keras.Sequential(
        [keras.Input((T, V)), getattr(keras.layers, cell)(7), keras.layers.Dense(V, activation="softmax")]
    )
    x = np.random.default_rng(2).integers(0, V, (5, T))
    probs = km(np.eye(V, dtype="float32")[x]).numpy()
    model = from_keras(km)
    logits, _ = model.forward(x)
    assert np.abs(softmax(logits[:, -1]) - probs).max() <= 1e-5


@pytest.mark.tf
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_stateful_keras_model_gives_a_stateful_model(keras, cell):
    km = keras.Sequential(
        [
            keras.Input(batch_shape=(2, None)),
            keras.layers.Embedding(6, 3),
            getattr(keras.layers, cell)(4, return_sequences=True, stateful=True),
            keras.layers.Dense(6),
        ]
    )
    model = from_keras(km)
    assert model.stateful and model.cell == cell.lower()


@pytest.mark.tf
@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda L: [L.Embedding(7, 3), L.SimpleRNN(4, name="my_rnn"), L.Dense(7)],
            "'my_rnn' \\(SimpleRNN\\) is not supported",
        ),
        (
            lambda L: [L.Embedding(7, 3), L.GRU(4, reset_after=False, name="old"), L.Dense(7)],
            "'old' \\(GRU\\) has reset_after=False",
        ),
        (
            lambda L: [L.Embedding(7, 3), L.LSTM(4, return_sequences=True), L.GRU(4), L.Dense(7)],
            "mixes LSTM layers.*GRU layers",
        ),
        (lambda L: [L.Embedding(7, 3), L.GRU(4, activation="relu", name="g"), L.Dense(7)], "'g' \\(GRU\\).*relu"),
        (
            lambda L: [L.Embedding(7, 3), L.GRU(4, recurrent_activation="hard_sigmoid", name="g"), L.Dense(7)],
            "'g' \\(GRU\\).*hard_sigmoid",
        ),
        (lambda L: [L.Embedding(7, 3), L.GRU(4, go_backwards=True, name="gb"), L.Dense(7)], "'gb' \\(GRU\\)"),
        (lambda L: [L.Embedding(7, 3), L.GRU(4), L.Dense(5, name="small")], "vocabulary of 5"),
        (lambda L: [L.Embedding(7, 3), L.Bidirectional(L.LSTM(4), name="bi"), L.Dense(7)], "'bi' \\(Bidirectional\\)"),
        (lambda L: [L.Embedding(7, 3), L.LSTM(4, activation="relu", name="r"), L.Dense(7)], "'r' \\(LSTM\\).*relu"),
        (lambda L: [L.Embedding(7, 3), L.LSTM(4), L.Dense(7, activation="relu", name="d")], "'d' \\(Dense\\).*relu"),
        (lambda L: [L.Embedding(7, 3), L.LSTM(4, go_backwards=True, name="back"), L.Dense(7)], "'back' \\(LSTM\\)"),
        (lambda L: [L.Embedding(7, 3), L.LSTM(4), L.Dense(5, name="small")], "vocabulary of 5"),
        (lambda L: [L.Embedding(7, 3), L.LSTM(4), L.Dense(7), L.Dense(7)], "exactly one Dense"),
    ],
)
def test_unsupported_keras_models_name_the_layer(keras, make, message):
    km = keras.Sequential([keras.Input((None,), dtype="int32")] + make(keras.layers))
    with pytest.raises(KerasInteropError, match=message):
        from_keras(km)


@pytest.mark.tf
def test_a_keras_model_with_a_nan_weight_is_refused_naming_it(keras):
    km = to_keras(LanguageModel(7, embedding_dim=3, hidden_sizes=[4], seed=1))
    kernel, bias = km.layers[-1].get_weights()
    bias[3] = np.nan
    km.layers[-1].set_weights([kernel, bias])
    with pytest.raises(KerasInteropError, match="\\(Dense\\): bias holds 1 NaN or infinite"):
        from_keras(km)


@pytest.mark.tf
def test_a_keras_transformer_with_an_infinite_weight_is_refused_naming_it(keras):
    km = to_keras(TransformerLM(7, 4, embed_dim=4, dense_dim=5, num_heads=2, key_dim=3))
    gamma = km.decoders[0].layernorm_1.gamma
    values = gamma.numpy()
    values[0] = np.inf
    gamma.assign(values)
    with pytest.raises(KerasInteropError, match="decoder_0/layernorm_1/gamma\\) holds 1 NaN or infinite"):
        from_keras(km)


@pytest.mark.tf
def test_unbuilt_keras_model(keras):
    km = keras.Sequential([keras.layers.Embedding(7, 3), keras.layers.LSTM(4), keras.layers.Dense(7)])
    with pytest.raises(KerasInteropError, match="'embedding.*' \\(Embedding\\) has no weights yet"):
        from_keras(km)


@pytest.mark.tf
def test_multi_input_models_are_refused(keras):
    tokens, h0 = keras.Input((None,), dtype="int32"), keras.Input((4,))
    x = keras.layers.Embedding(7, 3)(tokens)
    y = keras.layers.LSTM(4, return_sequences=True)(x, initial_state=[h0, h0])
    km = keras.Model([tokens, h0], keras.layers.Dense(7)(y))
    with pytest.raises(KerasInteropError, match="2 inputs"):
        from_keras(km)


# -- the Transformer ----------------------------------------------------------------------------
def test_to_keras_transformer_refuses_recurrent_options():
    """last_only / softmax / mask_zero are LSTM options; the Transformer's Keras model builds its masks itself."""
    model = TransformerLM(7, 4, embed_dim=4, dense_dim=5, num_heads=2, key_dim=3)
    for option in ("last_only", "softmax", "mask_zero"):
        with pytest.raises(KerasInteropError, match="takes no last_only, softmax or mask_zero"):
            to_keras(model, **{option: True})


# Keras' MultiHeadAttention runs its softmax in float32 even when its layers are float64 (measured, see
# ../shared/DESIGN.md), so a float64 Keras Transformer agrees with float64 scratchlm to ~1e-7, not 1e-9.
TRANSFORMER_TOL = {"float32": 1e-5, "float64": 1e-6}


@pytest.mark.tf
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(
    "block, num_layers, num_heads, key_dim",
    [("book", 1, 2, None), ("book", 2, 3, 4), ("gpt", 2, 2, 5), ("gpt", 1, 1, 3)],
)
def test_transformer_round_trip_through_keras(keras, tmp_path, dtype, block, num_layers, num_heads, key_dim):
    """to_keras(TransformerLM) computes the same logits from ids alone (padding 0 masked inside, both
    attentions of the book block), and from_keras of it and of its .weights.h5 gives the weights back exactly."""
    model = TransformerLM(
        13,
        9,
        embed_dim=6,
        dense_dim=7,
        num_heads=num_heads,
        key_dim=key_dim,
        num_layers=num_layers,
        block=block,
        dtype=dtype,
        seed=4,
    )
    rng = np.random.default_rng(8)
    for name, p in model.params.items():  # biases, gammas, betas away from 0 and 1
        if name.endswith(("/bias", "/gamma", "/beta")):
            p[...] += rng.uniform(-0.3, 0.3, p.shape)
    x = rng.integers(1, 13, (4, 7))
    x[0, 5:] = 0  # right padding
    x[1, :2] = 0  # left padding
    x[2, 3] = 0  # a hole
    km = to_keras(model)
    logits, _ = model.forward(x)
    got = km(x).numpy()
    assert got.shape == (4, 7, 13) and got.dtype == dtype
    assert np.abs(got - logits).max() <= TRANSFORMER_TOL[dtype]
    assert np.abs(km(x[:, :4]).numpy() - model.forward(x[:, :4])[0]).max() <= TRANSFORMER_TOL[dtype]  # T < L

    km.save_weights(tmp_path / "tlm.weights.h5")
    for back in (from_keras(km), from_keras(tmp_path / "tlm.weights.h5")):
        assert isinstance(back, TransformerLM)
        assert dict(back.config, seed=None) == dict(model.config, seed=None)  # the seed is not a weight
        for name, p in model.params.items():
            np.testing.assert_array_equal(back.params[name], p, err_msg=name)
        assert np.abs(back.forward(x)[0] - logits).max() == 0


@pytest.mark.tf
def test_transformer_keras_model_ignores_what_follows_padding(keras):
    """The Keras model masks inside: changing a padded id's embedding row (id 0) changes no real position."""
    model = TransformerLM(9, 6, embed_dim=4, dense_dim=5, num_heads=2, key_dim=3, seed=2)
    x = np.array([[3, 4, 0, 0, 0], [0, 0, 5, 6, 7]])
    km = to_keras(model)
    before = km(x).numpy()
    table = km.embedding.token_embeddings.embeddings.numpy()
    table[0] += 5.0  # the padding id's row only
    km.embedding.token_embeddings.embeddings.assign(table)
    after = km(x).numpy()
    real = x != 0
    assert np.abs(after[real] - before[real]).max() <= 1e-6


@pytest.mark.tf
def test_transformer_weights_file_of_another_model_is_refused(keras, tmp_path):
    km = to_keras(TransformerLM(9, 6, embed_dim=4, dense_dim=5, num_heads=2, key_dim=3, block="gpt"))
    km.save_weights(tmp_path / "gpt.weights.h5")
    assert from_keras(tmp_path / "gpt.weights.h5").block == "gpt"
    import h5py

    with h5py.File(tmp_path / "gpt.weights.h5", "a") as f:
        del f["embedding/position_embeddings/vars/0"]
    with pytest.raises(KerasInteropError, match="position_embeddings"):
        from_keras(tmp_path / "gpt.weights.h5")


@pytest.mark.parametrize(
    "option", [dict(activation="gelu"), dict(layernorm_epsilon=1e-5), dict(tie_embeddings=True), dict(use_bias=False)]
)
def test_to_keras_refuses_a_transformer_it_cannot_write(option):
    """The Keras model to_keras writes is the seed's; a GPT-2 option would silently build another model (checked
    before Keras is imported, so this runs without TensorFlow too)."""
    model = TransformerLM(11, 6, embed_dim=8, dense_dim=12, num_heads=2, key_dim=4, block="gpt", **option)
    with pytest.raises(KerasInteropError, match=f"{next(iter(option))}=.*model.save"):
        to_keras(model)
