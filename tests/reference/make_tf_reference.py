"""Keras reference outputs for scratchlm: forward, gradients and optimizer steps.

Builds small Keras 3 models (TensorFlow backend) with weights set explicitly from
a seeded NumPy generator, runs them under ``tf.GradientTape`` and writes, per case
and dtype, one ``.npz`` fixture into this folder, plus ``manifest.json`` (versions,
seeds, every case's config, file hashes) and a small Keras ``.weights.h5`` file for
the interop tests. ``tests/test_tf_reference.py`` checks scratchlm against the
fixtures without TensorFlow; its live mode (``pytest -m tf``) imports this module
and calls :func:`keras_reference` on random configs.

    pip install -e ".[reference]"
    python tests/reference/make_tf_reference.py            # (re)write the fixtures
    python tests/reference/make_tf_reference.py --check    # regenerate in memory, compare bytes
    python tests/reference/make_tf_reference.py --only adam_trajectory rmsprop_trajectory
                                                           # (re)write only these cases; the manifest
                                                           # keeps every other entry as it is
    python tests/reference/make_tf_reference.py --only transformer_book transformer_gpt transformer_rmsprop_step
                                                           # the Transformer fixtures (manifest section
                                                           # ``transformers``; see "the Transformer" below)

A fixture holds (B batch, T steps, V vocabulary, H_n units of recurrent layer n):

    x (B, T) int32 token ids          y (B, T) int32 targets, or (B,) for a last-step loss
    mask (B, T) bool                  initial_state/h_n, initial_state/c_n (B, H_n) (GRU: h_n only)
    param/<name>, grad/<name>         every weight and dL/dweight, scratchlm names
    output                            logits (B, T, V) / (B, V), or probabilities
    state/h_n, state/c_n (B, H_n)     final LSTM state per layer (GRU: state/h_n only)
    loss                              the loss the gradients are of (see below)
    keras_loss                        Keras' own loss object on the same output
    updated/<name>                    weights after one optimizer step (optimizer cases)

GRU cases (:data:`GRU_CASES`, config ``"cell": "gru"``) use ``keras.layers.GRU(H, reset_after=True)``,
Keras 3's default, whose weights scratchlm's GRU stores as they are: ``gru_n/kernel`` (D, 3H),
``gru_n/recurrent_kernel`` (H, 3H), ``gru_n/bias`` (2, 3H), gates z, r, h. A config without a
``cell`` key is an LSTM case (the LSTM fixtures predate the key).

A trajectory fixture (:data:`TRAJECTORIES`, manifest section ``trajectories``) is
S training steps of one model with one optimizer, a different batch each step:

    x, y (S, B, T) int32, mask (S, B, T) bool     the batch of every step
    param/<name>                      the weights before the first step
    loss (S,)                         the loss at every step, before that step's update
    keras_loss (S,)                   Keras' own loss object on the same output
    grad_norm (S,)                    the global gradient norm at every step (before clipping)
    final/<name>                      the weights after the last step

The loss. scratchlm scores the mean over unmasked tokens, Σ m·ce / Σ m. The
tape computes exactly that, explicitly. Keras 3's loss objects agree when the
mask travels with the model output (``Embedding(mask_zero=True)`` or a mask
passed to the LSTM): the default ``"sum_over_batch_size"`` reduction then weights
valid entries by total/valid and divides by total. A mask given only as
``sample_weight`` is divided by *all* B·T tokens instead (unless
``reduction="mean_with_sample_weight"``), which is not what scratchlm computes.
``keras_loss`` records the loss object's value on the masked output so the tests
can show the agreement.

Determinism: weights and inputs come from ``numpy.random.default_rng(seed)``;
TensorFlow runs with op determinism, one thread and oneDNN off; the ``.npz``
files are written uncompressed with fixed zip timestamps, so a rerun with the
same versions reproduces every byte (``--check``).
"""

import argparse
import contextlib
import hashlib
import inspect
import io
import json
import os
import platform
import sys
import zipfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DTYPES = ("float32", "float64")
WEIGHTS_H5 = "keras_lm.weights.h5"  # the interop fixture, and its expected outputs:
WEIGHTS_H5_EXPECTED = "keras_lm_expected.npz"


def config(
    vocab_size,
    embedding_dim,
    hidden_sizes,
    batch,
    time,
    seed,
    last_only=False,
    softmax_output=False,
    mask=False,
    initial_state=False,
    optimizer=None,
    dtype="float32",
    cell="lstm",
):
    """One case: the model, the batch and what to compare.

    embedding_dim None = one-hot input (Keras is fed one-hot float vectors).
    last_only: the last LSTM returns its final output only; y is (B,).
    softmax_output: Dense(softmax) and categorical cross-entropy on probabilities
        (the Nietzsche model); otherwise Dense logits and sparse CE from logits.
    mask: padded batch. With an Embedding, padding is token 0 and
        ``Embedding(mask_zero=True)`` makes the mask (passed to the LSTMs
        explicitly as well when they get an initial state); with one-hot input
        the mask is a model input passed to every LSTM.
    optimizer: None or {"name": "adam" | "rmsprop" | "sgd", "lr": ..., "global_clipnorm": ...};
        unnamed hyperparameters keep their Keras 3 defaults.
    cell: "lstm" or "gru" (Keras' GRU with reset_after=True). Only a GRU config carries the
        key, so the LSTM configs (and the manifest entries written before GRU) stay as they were.
    """
    assert cell in ("lstm", "gru"), cell
    cfg = {
        "vocab_size": vocab_size,
        "embedding_dim": embedding_dim,
        "hidden_sizes": list(hidden_sizes),
        "batch": batch,
        "time": time,
        "seed": seed,
        "last_only": last_only,
        "softmax_output": softmax_output,
        "mask": mask,
        "initial_state": initial_state,
        "optimizer": optimizer,
        "dtype": dtype,
    }
    if cell != "lstm":
        cfg["cell"] = cell
    return cfg


def cell_of(cfg):
    """ "lstm" or "gru": the recurrent cell of a config (no ``cell`` key: an LSTM case)."""
    return cfg.get("cell", "lstm")


STATE_NAMES = {"lstm": ("h", "c"), "gru": ("h",)}  # the parts of each layer's state, in Keras' order


_SHAKESPEARE = dict(vocab_size=11, embedding_dim=6, hidden_sizes=[8], batch=4, time=7)  # Embedding -> LSTM -> logits
_NIETZSCHE = dict(
    vocab_size=9,
    embedding_dim=None,
    hidden_sizes=[10],
    batch=5,
    time=8,  # one-hot -> LSTM last -> softmax
    last_only=True,
    softmax_output=True,
)

CASES = {
    "embedding_sequence": dict(_SHAKESPEARE, seed=1),
    "onehot_last_step": dict(_NIETZSCHE, seed=2),
    "stacked": dict(vocab_size=10, embedding_dim=5, hidden_sizes=[7, 6], batch=3, time=6, seed=3),
    "masked": dict(vocab_size=12, embedding_dim=5, hidden_sizes=[6, 5], batch=4, time=8, mask=True, seed=4),
    "initial_state": dict(
        vocab_size=10, embedding_dim=4, hidden_sizes=[6, 5], batch=3, time=5, initial_state=True, seed=5
    ),
    "initial_state_masked": dict(
        vocab_size=10, embedding_dim=4, hidden_sizes=[6, 5], batch=4, time=6, initial_state=True, mask=True, seed=6
    ),
    "adam_step": dict(_SHAKESPEARE, optimizer={"name": "adam"}, seed=7),
    "rmsprop_step": dict(_SHAKESPEARE, optimizer={"name": "rmsprop"}, seed=8),
    "rmsprop_seed_step": dict(_NIETZSCHE, optimizer={"name": "rmsprop", "lr": 0.01}, seed=9),
    "clipped_adam_step": dict(_SHAKESPEARE, optimizer={"name": "adam", "global_clipnorm": 0.1}, seed=10),
}

# The same cases with a GRU (Keras 3's default reset_after=True) in place of every LSTM.
GRU_CASES = {
    "gru_embedding_sequence": dict(_SHAKESPEARE, cell="gru", seed=21),
    "gru_onehot_last_step": dict(_NIETZSCHE, cell="gru", seed=22),
    "gru_stacked": dict(vocab_size=10, embedding_dim=5, hidden_sizes=[7, 6], batch=3, time=6, cell="gru", seed=23),
    "gru_masked": dict(
        vocab_size=12, embedding_dim=5, hidden_sizes=[6, 5], batch=4, time=8, mask=True, cell="gru", seed=24
    ),
    "gru_initial_state": dict(
        vocab_size=10, embedding_dim=4, hidden_sizes=[6, 5], batch=3, time=5, initial_state=True, cell="gru", seed=25
    ),
    "gru_initial_state_masked": dict(
        vocab_size=10,
        embedding_dim=4,
        hidden_sizes=[6, 5],
        batch=4,
        time=6,
        initial_state=True,
        mask=True,
        cell="gru",
        seed=26,
    ),
    "gru_rmsprop_step": dict(_SHAKESPEARE, optimizer={"name": "rmsprop"}, cell="gru", seed=27),
}
CASES.update(GRU_CASES)

# Multi-step trajectories (as llm.c checks 10 steps against PyTorch): a refactor that changes
# any step -- forward, backward, clipping, an optimizer slot, the step count -- shows in the
# losses of the later steps and in the final weights. Seed 11 is the .weights.h5 model's.
_TRAJECTORY = dict(vocab_size=11, embedding_dim=6, hidden_sizes=[7, 5], batch=4, time=6, steps=10)
TRAJECTORIES = {
    "adam_trajectory": dict(_TRAJECTORY, optimizer={"name": "adam", "lr": 0.01, "global_clipnorm": 0.22}, seed=12),
    "rmsprop_trajectory": dict(_TRAJECTORY, mask=True, optimizer={"name": "rmsprop", "lr": 0.01}, seed=13),
}


def trajectory_config(dtype="float32", steps=10, **spec):
    """A trajectory case: :func:`config` plus ``steps`` (sequence loss over every token, no initial state)."""
    cfg = dict(config(**spec, dtype=dtype), steps=steps)
    assert not (cfg["last_only"] or cfg["softmax_output"] or cfg["initial_state"]), "not supported in trajectories"
    assert cfg["embedding_dim"] is not None and cfg["optimizer"] is not None
    return cfg


# -- inputs and weights -------------------------------------------------------------
def param_shapes(cfg):
    """scratchlm parameter name -> shape, in scratchlm's order."""
    V, E = cfg["vocab_size"], cfg["embedding_dim"]
    shapes = {}
    if E is not None:
        shapes["embedding/embeddings"] = (V, E)
    d_in = V if E is None else E
    cell = cell_of(cfg)
    for n, H in enumerate(cfg["hidden_sizes"]):
        if cell == "lstm":
            shapes[f"lstm_{n}/kernel"] = (d_in, 4 * H)
            shapes[f"lstm_{n}/recurrent_kernel"] = (H, 4 * H)
            shapes[f"lstm_{n}/bias"] = (4 * H,)
        else:  # GRU, reset_after=True: bias rows b_in, b_rec
            shapes[f"gru_{n}/kernel"] = (d_in, 3 * H)
            shapes[f"gru_{n}/recurrent_kernel"] = (H, 3 * H)
            shapes[f"gru_{n}/bias"] = (2, 3 * H)
        d_in = H
    shapes["dense/kernel"] = (d_in, V)
    shapes["dense/bias"] = (V,)
    return shapes


def padding_mask(rng, B, T):
    """(B, T) bool: right padding, left padding and a hole in the first rows, random below; >= 1 real token."""
    mask = rng.random((B, T)) < 0.8
    fixed = [np.arange(T) < T - 2, np.arange(T) >= 2, np.arange(T) != T // 2]
    for b, row in enumerate(fixed[:B]):
        mask[b] = row
    mask[0, 0] = True  # the loss needs a scored token
    return mask


def draw_params(rng, cfg):
    """param/<name> -> weights uniform in [-0.5, 0.5), drawn in float64 in scratchlm's order, then cast."""
    dtype = np.dtype(cfg["dtype"])
    return {f"param/{name}": rng.uniform(-0.5, 0.5, shape).astype(dtype) for name, shape in param_shapes(cfg).items()}


def make_inputs(cfg):
    """The case's weights and batch, all drawn from default_rng(seed) in float64, then cast."""
    rng = np.random.default_rng(cfg["seed"])
    dtype = np.dtype(cfg["dtype"])
    V, B, T = cfg["vocab_size"], cfg["batch"], cfg["time"]
    arrays = draw_params(rng, cfg)
    padded_by_zero = cfg["mask"] and cfg["embedding_dim"] is not None
    low = 1 if padded_by_zero else 0  # token 0 is padding under mask_zero
    x = rng.integers(low, V, (B, T))
    if cfg["mask"]:
        mask = padding_mask(rng, B, T)
        arrays["mask"] = mask
        if padded_by_zero:
            x[~mask] = 0
    arrays["x"] = x.astype(np.int32)
    arrays["y"] = rng.integers(0, V, (B,) if cfg["last_only"] else (B, T)).astype(np.int32)
    if cfg["initial_state"]:
        for n, H in enumerate(cfg["hidden_sizes"]):
            for part in STATE_NAMES[cell_of(cfg)]:
                arrays[f"initial_state/{part}_{n}"] = rng.uniform(-0.5, 0.5, (B, H)).astype(dtype)
    return arrays


def make_trajectory_inputs(cfg):
    """The weights, then one batch per step (x, y and, masked, the mask), from default_rng(seed)."""
    rng = np.random.default_rng(cfg["seed"])
    V, B, T = cfg["vocab_size"], cfg["batch"], cfg["time"]
    arrays = draw_params(rng, cfg)
    xs, ys, masks = [], [], []
    for _ in range(cfg["steps"]):
        x = rng.integers(1 if cfg["mask"] else 0, V, (B, T))  # token 0 is padding under mask_zero
        if cfg["mask"]:
            mask = padding_mask(rng, B, T)
            x[~mask] = 0
            masks.append(mask)
        xs.append(x)
        ys.append(rng.integers(0, V, (B, T)))
    arrays["x"] = np.stack(xs).astype(np.int32)
    arrays["y"] = np.stack(ys).astype(np.int32)
    if cfg["mask"]:
        arrays["mask"] = np.stack(masks)
    return arrays


def random_config(seed, dtype=None, cell="lstm"):
    """A random case for the live tests: sizes, vocabulary, layers, lengths, masks, optimizer.

    ``cell`` takes no draw: the same seed gives the same sizes, batch and options for either cell.
    """
    rng = np.random.default_rng(seed)
    optimizer = None
    if rng.random() < 0.5:
        optimizer = {"name": str(rng.choice(["adam", "rmsprop", "sgd"])), "lr": float(rng.choice([1e-3, 1e-2]))}
        if rng.random() < 0.5:
            optimizer["global_clipnorm"] = float(rng.choice([0.05, 0.5, 5.0]))
    return config(
        vocab_size=int(rng.integers(2, 25)),
        embedding_dim=None if rng.random() < 0.4 else int(rng.integers(1, 9)),
        hidden_sizes=[int(h) for h in rng.integers(1, 11, size=int(rng.integers(1, 4)))],
        batch=int(rng.integers(1, 6)),
        time=int(rng.integers(1, 10)),
        seed=int(seed),
        last_only=bool(rng.random() < 0.3),
        softmax_output=bool(rng.random() < 0.3),
        mask=bool(rng.random() < 0.5),
        initial_state=bool(rng.random() < 0.5),
        optimizer=optimizer,
        dtype=dtype or str(rng.choice(DTYPES)),
        cell=cell,
    )


# -- TensorFlow / Keras -----------------------------------------------------------------
def import_keras():
    """(tf, keras), configured for reproducible CPU runs. Raises ImportError without TensorFlow."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # read at import: plain Eigen kernels
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras
    import tensorflow as tf

    if keras.backend.backend() != "tensorflow":
        raise ImportError(f"the reference needs Keras' TensorFlow backend, not {keras.backend.backend()!r}")
    tf.config.experimental.enable_op_determinism()
    try:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # TensorFlow already initialised its pools
        pass
    return tf, keras


@contextlib.contextmanager
def floatx(keras, dtype):
    """Keras' default float type set to ``dtype`` for model, loss and optimizer variables."""
    saved = keras.config.floatx()
    keras.config.set_floatx(dtype)
    try:
        yield
    finally:
        keras.config.set_floatx(saved)


def build_keras_model(keras, cfg):
    """Functional model: inputs [tokens | one-hot, (mask), (h0_n, c0_n)...] -> [output, h_n, c_n...].

    GRU cases: ``GRU(reset_after=True)`` layers named ``gru_n``, state h_n only (inputs h0_n, outputs h_n).
    """
    layers = keras.layers
    V, E, T, dtype = cfg["vocab_size"], cfg["embedding_dim"], cfg["time"], cfg["dtype"]
    if E is None:
        tokens = keras.Input((T, V), dtype=dtype, name="one_hot")
    else:
        tokens = keras.Input((T,), dtype="int32", name="tokens")
    inputs = [tokens]
    mask = None
    if cfg["mask"] and E is None:
        mask = keras.Input((T,), dtype="bool", name="mask")
        inputs.append(mask)
    elif cfg["mask"] and cfg["initial_state"]:
        # Keras fills in a layer's `mask` argument from its input only when the call has
        # a single tensor argument: `initial_state` silently drops Embedding's mask.
        mask = keras.ops.not_equal(tokens, 0)
    x = tokens
    if E is not None:
        x = layers.Embedding(V, E, mask_zero=cfg["mask"], dtype=dtype, name="embedding")(x)
    states = []
    top = len(cfg["hidden_sizes"]) - 1
    cell = cell_of(cfg)
    for n, H in enumerate(cfg["hidden_sizes"]):
        sequences = not (cfg["last_only"] and n == top)
        if cell == "lstm":
            rnn = layers.LSTM(H, return_sequences=sequences, return_state=True, dtype=dtype, name=f"lstm_{n}")
        else:
            rnn = layers.GRU(
                H, reset_after=True, return_sequences=sequences, return_state=True, dtype=dtype, name=f"gru_{n}"
            )
        kwargs = {}
        if cfg["initial_state"]:
            initial = [keras.Input((H,), dtype=dtype, name=f"{part}0_{n}") for part in STATE_NAMES[cell]]
            inputs += initial
            kwargs["initial_state"] = initial
        if mask is not None:
            kwargs["mask"] = mask
        x, *layer_states = rnn(x, **kwargs)
        states += layer_states
    out = layers.Dense(V, activation="softmax" if cfg["softmax_output"] else None, dtype=dtype, name="dense")(x)
    return keras.Model(inputs, [out] + states)


def keras_variables(model, cfg):
    """scratchlm parameter name -> the Keras variable holding it."""
    named = {}
    if cfg["embedding_dim"] is not None:
        named["embedding/embeddings"] = model.get_layer("embedding").embeddings
    kind = cell_of(cfg)
    for n in range(len(cfg["hidden_sizes"])):
        cell = model.get_layer(f"{kind}_{n}").cell
        if kind == "gru":
            assert cell.reset_after and tuple(cell.bias.shape) == (2, 3 * cell.units)
        named[f"{kind}_{n}/kernel"] = cell.kernel
        named[f"{kind}_{n}/recurrent_kernel"] = cell.recurrent_kernel
        named[f"{kind}_{n}/bias"] = cell.bias
    dense = model.get_layer("dense")
    named["dense/kernel"], named["dense/bias"] = dense.kernel, dense.bias
    return named


def keras_optimizer(keras, spec, dtype):
    """The Keras optimizer of a config's ``optimizer`` entry; unnamed hyperparameters at Keras defaults.

    In float64 the float defaults (beta_1, beta_2, rho, epsilon, ...) are passed as
    float64 scalars of the same value. Passed as Python floats, Keras' Adam turns
    them into tensors via ``ops.cast(beta, float64)``, which TensorFlow does through
    a float32 tensor: the bias correction α = lr·√(1−β₂ᵗ)/(1−β₁ᵗ) then uses
    0.999 and 0.9 rounded to float32 and every float64 Adam step is 6.7e-6
    relatively (6.7e-9 absolutely at lr = 1e-3) smaller than float64 math gives.
    """
    cls = {"adam": keras.optimizers.Adam, "rmsprop": keras.optimizers.RMSprop, "sgd": keras.optimizers.SGD}[
        spec["name"]
    ]
    kwargs = {}
    if dtype == "float64":
        for key, param in inspect.signature(cls).parameters.items():
            if key != "learning_rate" and type(param.default) is float:
                kwargs[key] = np.float64(param.default)
    if "lr" in spec:
        kwargs["learning_rate"] = spec["lr"]
    if "global_clipnorm" in spec:
        kwargs["global_clipnorm"] = spec["global_clipnorm"]
    return cls(**kwargs)


def keras_reference(cfg):
    """Run one case in Keras; returns the fixture's arrays (see the module docstring)."""
    tf, keras = import_keras()
    arrays = make_inputs(cfg)
    dtype, V = cfg["dtype"], cfg["vocab_size"]
    with floatx(keras, dtype):
        model = build_keras_model(keras, cfg)
        variables = keras_variables(model, cfg)
        for name, var in variables.items():
            var.assign(arrays[f"param/{name}"])

        x = arrays["x"]
        feed = [np.eye(V, dtype=dtype)[x] if cfg["embedding_dim"] is None else x]
        if cfg["mask"] and cfg["embedding_dim"] is None:
            feed.append(arrays["mask"])
        parts = STATE_NAMES[cell_of(cfg)]
        if cfg["initial_state"]:
            for n in range(len(cfg["hidden_sizes"])):
                feed += [arrays[f"initial_state/{part}_{n}"] for part in parts]
        y = arrays["y"]
        per_token_mask = cfg["mask"] and not cfg["last_only"]

        with tf.GradientTape() as tape:
            out, *states = model(feed, training=False)
            if cfg["softmax_output"]:
                ce = keras.losses.categorical_crossentropy(tf.one_hot(y, V, dtype=dtype), out)
            else:
                ce = keras.losses.sparse_categorical_crossentropy(y, out, from_logits=True)
            if per_token_mask:
                m = tf.cast(arrays["mask"], dtype)
                loss = tf.reduce_sum(ce * m) / tf.reduce_sum(m)  # mean over real tokens
            else:
                loss = tf.reduce_mean(ce)
        grads = tape.gradient(loss, list(variables.values()))
        grads = [tf.convert_to_tensor(g) for g in grads]  # Embedding: IndexedSlices -> dense

        if cfg["softmax_output"]:
            keras_loss = keras.losses.CategoricalCrossentropy()(tf.one_hot(y, V, dtype=dtype), out)
        else:
            keras_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, out)

        arrays["output"] = out.numpy()
        for n in range(len(cfg["hidden_sizes"])):
            for k, part in enumerate(parts):
                arrays[f"state/{part}_{n}"] = states[len(parts) * n + k].numpy()
        arrays["loss"] = np.asarray(loss.numpy(), dtype=dtype)
        arrays["keras_loss"] = np.asarray(keras_loss.numpy(), dtype=dtype)
        for name, g in zip(variables, grads, strict=False):
            arrays[f"grad/{name}"] = g.numpy()

        if cfg["optimizer"] is not None:
            opt = keras_optimizer(keras, cfg["optimizer"], dtype)
            opt.apply_gradients(zip(grads, variables.values(), strict=False))
            for name, var in variables.items():
                arrays[f"updated/{name}"] = var.numpy()
    for key, a in arrays.items():
        if a.dtype.kind == "f":
            assert a.dtype == np.dtype(dtype), f"{key} is {a.dtype}, expected {dtype}"
    return arrays


def keras_trajectory(cfg):
    """Train one trajectory case in Keras, one optimizer for all steps; returns the fixture's arrays."""
    tf, keras = import_keras()
    arrays = make_trajectory_inputs(cfg)
    dtype = cfg["dtype"]
    losses, keras_losses, norms = [], [], []
    with floatx(keras, dtype):
        model = build_keras_model(keras, cfg)  # Embedding(mask_zero=mask) -> LSTMs -> logits
        variables = keras_variables(model, cfg)
        for name, var in variables.items():
            var.assign(arrays[f"param/{name}"])
        opt = keras_optimizer(keras, cfg["optimizer"], dtype)
        for step in range(cfg["steps"]):
            x, y = arrays["x"][step], arrays["y"][step]
            with tf.GradientTape() as tape:
                out, *_ = model([x], training=False)
                ce = keras.losses.sparse_categorical_crossentropy(y, out, from_logits=True)
                if cfg["mask"]:
                    m = tf.cast(arrays["mask"][step], dtype)
                    loss = tf.reduce_sum(ce * m) / tf.reduce_sum(m)  # mean over real tokens
                else:
                    loss = tf.reduce_mean(ce)
            grads = [tf.convert_to_tensor(g) for g in tape.gradient(loss, list(variables.values()))]
            losses.append(loss.numpy())
            keras_losses.append(keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, out).numpy())
            norms.append(np.sqrt(sum(float(np.sum(g.numpy().astype(np.float64) ** 2)) for g in grads)))
            opt.apply_gradients(zip(grads, variables.values(), strict=False))
        assert int(opt.iterations.numpy()) == cfg["steps"]
        for name, var in variables.items():
            arrays[f"final/{name}"] = var.numpy()
    arrays["loss"] = np.asarray(losses, dtype=dtype)
    arrays["keras_loss"] = np.asarray(keras_losses, dtype=dtype)
    arrays["grad_norm"] = np.asarray(norms, dtype=dtype)
    for key, a in arrays.items():
        if a.dtype.kind == "f":
            assert a.dtype == np.dtype(dtype), f"{key} is {a.dtype}, expected {dtype}"
    return arrays


def weights_h5_reference(directory):
    """A small Keras LM saved with ``save_weights``, and what it computes, for the interop tests.

    Embedding(13, 5) -> LSTM(6) -> LSTM(4) -> Dense(13), float32, default layer names.
    Writes ``keras_lm.weights.h5`` and ``keras_lm_expected.npz`` (param/<name>, x, logits).
    """
    tf, keras = import_keras()
    cfg = config(vocab_size=13, embedding_dim=5, hidden_sizes=[6, 4], batch=2, time=5, seed=11)
    arrays = make_inputs(cfg)
    model = keras.Sequential(
        [
            keras.Input((None,), dtype="int32"),
            keras.layers.Embedding(13, 5),
            keras.layers.LSTM(6, return_sequences=True),
            keras.layers.LSTM(4, return_sequences=True),
            keras.layers.Dense(13),
        ]
    )
    lstms = [layer for layer in model.layers if isinstance(layer, keras.layers.LSTM)]
    model.layers[0].embeddings.assign(arrays["param/embedding/embeddings"])
    for n, lstm in enumerate(lstms):
        lstm.set_weights([arrays[f"param/lstm_{n}/{k}"] for k in ("kernel", "recurrent_kernel", "bias")])
    model.layers[-1].set_weights([arrays["param/dense/kernel"], arrays["param/dense/bias"]])
    expected = {k: v for k, v in arrays.items() if k.startswith("param/")}
    expected["x"] = arrays["x"]
    expected["logits"] = model(arrays["x"]).numpy()
    model.save_weights(str(Path(directory) / WEIGHTS_H5))
    save_npz(Path(directory) / WEIGHTS_H5_EXPECTED, expected)


# -- the Transformer (the IMDB seed's model) --------------------------------------------------
# PositionalEmbedding (token Embedding(V, E, mask_zero=True) + position Embedding(L, E)) -> decoder blocks
# -> Dense(V) logits, token id 0 = padding. The book block is the seed's post-LN block, the gpt block the
# pre-LN one with a final LayerNorm; both attentions of the book block get attention_mask = causal ∧ query
# padding ∧ key padding explicitly (the seed's code, under Keras 3, never receives its padding mask; see
# ../shared/DESIGN.md). The loss is the mean over positions whose input token is not padding.
#
# Two references per case, from the same weights:
#   float32 fixtures   keras.layers (Embedding, MultiHeadAttention(N, K), LayerNormalization(epsilon=1e-3),
#                      Dense) in float32 under GradientTape: Keras itself is the judge;
#   float64 fixtures   the same function in plain TensorFlow ops in float64 (einsum projections, scores
#                      replaced by Keras' large negative where masked, softmax in float64, LayerNorm): Keras'
#                      MultiHeadAttention runs its softmax in float32 even under floatx float64, which would
#                      hold a float64 fixture to ~1e-7 only. The generator cross-checks the float64 TF-ops
#                      reference against the float32 Keras layers (TRANSFORMER_CROSS_CHECK) on every case.
# Transformer fixtures live in the manifest section ``transformers`` (their configs are not LSTM configs).


def transformer_config(
    vocab_size,
    sequence_length,
    embed_dim,
    dense_dim,
    num_heads,
    key_dim,
    num_layers,
    block,
    batch,
    time,
    seed,
    optimizer=None,
    dtype="float32",
):
    """One Transformer case: TransformerLM's config plus the batch (B, T <= L), seed and optimizer."""
    assert block in ("book", "gpt") and time <= sequence_length, (block, time, sequence_length)
    return {
        "model": "transformer",
        "vocab_size": vocab_size,
        "sequence_length": sequence_length,
        "embed_dim": embed_dim,
        "dense_dim": dense_dim,
        "num_heads": num_heads,
        "key_dim": key_dim,
        "num_layers": num_layers,
        "block": block,
        "batch": batch,
        "time": time,
        "seed": seed,
        "optimizer": optimizer,
        "dtype": dtype,
    }


_TRANSFORMER = dict(
    vocab_size=17, sequence_length=9, embed_dim=8, dense_dim=12, num_heads=2, key_dim=5, batch=3, time=7
)
TRANSFORMER_CASES = {
    "transformer_book": dict(_TRANSFORMER, block="book", num_layers=2, seed=31),
    "transformer_gpt": dict(_TRANSFORMER, block="gpt", num_layers=2, seed=32),
    "transformer_rmsprop_step": dict(
        _TRANSFORMER, block="book", num_layers=1, optimizer={"name": "rmsprop", "lr": 0.01}, seed=33
    ),
}
TRANSFORMER_CROSS_CHECK = {"output": 1e-5, "gradient": 1e-4}  # float64 TF ops vs float32 Keras layers
KERAS_LARGE_NEGATIVE = -0.7 * 3.38953e38  # keras.src...._get_large_negative, float32/64


def transformer_model_config(cfg):
    """The TransformerLM(**config) of a case."""
    keys = ("vocab_size", "sequence_length", "embed_dim", "dense_dim", "num_heads", "key_dim", "num_layers", "block")
    return {k: cfg[k] for k in keys}


def make_transformer_inputs(cfg):
    """Weights: scratchlm's initial weights of ``TransformerLM(seed=seed)`` (Keras' initialisers), drawn in
    float64, by name; biases, gammas and betas (zeros and ones at initialisation) are then moved by
    U(-0.2, 0.2) so a wrong bias or LayerNorm parameter shows. Batch: x (B, T) in 1..V-1 with padding
    (token 0) where :func:`padding_mask` says, y (B, T) in 0..V-1. All from default_rng(seed), then cast."""
    sys.path.insert(0, str(HERE.parent.parent))  # the repository's scratchlm
    from scratchlm.models import TransformerLM

    rng = np.random.default_rng(cfg["seed"])
    dtype = np.dtype(cfg["dtype"])
    model = TransformerLM(**transformer_model_config(cfg), dtype="float64", seed=cfg["seed"])
    arrays = {}
    for name, p in model.params.items():
        p = np.array(p, dtype=np.float64)
        if name.endswith(("/bias", "/gamma", "/beta")):
            p = p + rng.uniform(-0.2, 0.2, p.shape)
        arrays[f"param/{name}"] = p.astype(dtype)
    V, B, T = cfg["vocab_size"], cfg["batch"], cfg["time"]
    x = rng.integers(1, V, (B, T))
    mask = padding_mask(rng, B, T)
    x[~mask] = 0
    arrays["x"] = x.astype(np.int32)
    arrays["mask"] = mask
    arrays["y"] = rng.integers(0, V, (B, T)).astype(np.int32)
    return arrays


def random_transformer_config(seed, dtype=None, block=None):
    """A random Transformer case for the live tests: sizes, heads, key_dim, layers, block, batch, padding.

    embed_dim >= 4: LayerNormalization over 1 to 3 features is ill-conditioned (with 2, x̂ = ±1 whatever
    the input), which shows Keras' float32 round-off at 1e-4 relative in the gradients below it."""
    rng = np.random.default_rng(seed)
    L = int(rng.integers(1, 12))
    return transformer_config(
        vocab_size=int(rng.integers(2, 25)),
        sequence_length=L,
        embed_dim=int(rng.integers(4, 11)),
        dense_dim=int(rng.integers(1, 17)),
        num_heads=int(rng.integers(1, 4)),
        key_dim=int(rng.integers(1, 8)),
        num_layers=int(rng.integers(1, 3)),
        block=block or str(rng.choice(["book", "gpt"])),
        batch=int(rng.integers(1, 5)),
        time=int(rng.integers(1, L + 1)),
        seed=int(seed),
        optimizer=({"name": "rmsprop", "lr": 0.01} if rng.random() < 0.3 else None),
        dtype=dtype or str(rng.choice(DTYPES)),
    )


def attention_mask_of(tf, x):
    """x (B, T) int -> (B, T, T) bool: causal (key j <= query i) ∧ query x != 0 ∧ key x != 0."""
    T = tf.shape(x)[1]
    keep = tf.not_equal(x, 0)
    causal = tf.linalg.band_part(tf.ones((T, T), dtype=tf.bool), -1, 0)  # lower triangle
    return causal[None] & keep[:, :, None] & keep[:, None, :]


def build_keras_transformer(keras, cfg):
    """The case's model in keras.layers, as a dict of layers and a function tokens -> logits (B, T, V).

    Called eagerly (not a functional graph), so every mask is visibly passed as ``attention_mask``.
    """
    layers = keras.layers
    V, L, E, F = cfg["vocab_size"], cfg["sequence_length"], cfg["embed_dim"], cfg["dense_dim"]
    N, K, dtype = cfg["num_heads"], cfg["key_dim"], cfg["dtype"]
    named = {
        "embedding/token_embeddings": layers.Embedding(V, E, mask_zero=True, dtype=dtype),
        "embedding/position_embeddings": layers.Embedding(L, E, dtype=dtype),
    }
    attentions = ("attention_1", "attention_2") if cfg["block"] == "book" else ("attention_1",)
    norms = ("layernorm_1", "layernorm_2", "layernorm_3") if cfg["block"] == "book" else ("layernorm_1", "layernorm_2")
    for n in range(cfg["num_layers"]):
        for a in attentions:
            named[f"decoder_{n}/{a}"] = layers.MultiHeadAttention(num_heads=N, key_dim=K, dtype=dtype)
        for ln in norms:
            named[f"decoder_{n}/{ln}"] = layers.LayerNormalization(epsilon=1e-3, dtype=dtype)
        named[f"decoder_{n}/ffn_1"] = layers.Dense(F, activation="relu", dtype=dtype)
        named[f"decoder_{n}/ffn_2"] = layers.Dense(E, dtype=dtype)
    if cfg["block"] == "gpt":
        named["final_layernorm"] = layers.LayerNormalization(epsilon=1e-3, dtype=dtype)
    named["dense"] = layers.Dense(V, dtype=dtype)

    def forward(x):
        import tensorflow as tf

        T = x.shape[1]
        mask = attention_mask_of(tf, x)
        h = named["embedding/token_embeddings"](x) + named["embedding/position_embeddings"](tf.range(T))[None]
        for n in range(cfg["num_layers"]):

            def get(part, n=n):
                return named[f"decoder_{n}/{part}"]

            if cfg["block"] == "book":
                a1 = get("layernorm_1")(h + get("attention_1")(h, h, attention_mask=mask))
                a2 = get("layernorm_2")(a1 + get("attention_2")(a1, h, attention_mask=mask))
                h = get("layernorm_3")(a2 + get("ffn_2")(get("ffn_1")(a2)))
            else:
                n1 = get("layernorm_1")(h)
                h = h + get("attention_1")(n1, n1, attention_mask=mask)
                h = h + get("ffn_2")(get("ffn_1")(get("layernorm_2")(h)))
        if cfg["block"] == "gpt":
            h = named["final_layernorm"](h)
        return named["dense"](h)

    return named, forward


def keras_transformer_variables(named, cfg):
    """scratchlm parameter name -> the Keras variable holding it (layers built by one forward call first)."""
    out = {
        "embedding/token_embeddings": named["embedding/token_embeddings"].embeddings,
        "embedding/position_embeddings": named["embedding/position_embeddings"].embeddings,
    }
    for prefix, layer in named.items():
        cls = type(layer).__name__
        if cls == "MultiHeadAttention":
            for proj, dense in (
                ("query", layer.query_dense),
                ("key", layer.key_dense),
                ("value", layer.value_dense),
                ("output", layer.output_dense),
            ):
                out[f"{prefix}/{proj}/kernel"], out[f"{prefix}/{proj}/bias"] = dense.kernel, dense.bias
        elif cls == "LayerNormalization":
            out[f"{prefix}/gamma"], out[f"{prefix}/beta"] = layer.gamma, layer.beta
        elif cls == "Dense":
            out[f"{prefix}/kernel"], out[f"{prefix}/bias"] = layer.kernel, layer.bias
    return out


def tf_ops_transformer(tf, w, x, cfg):
    """The same model in plain TensorFlow ops at the weights' dtype (float64: softmax in float64 too).

    w: scratchlm name -> tensor or variable. Returns logits (B, T, V). Attention as Keras computes it:
    S = (Q Kᵀ)/√K, masked entries replaced by Keras' large negative, softmax over keys, O = P V.
    """
    T, K = x.shape[1], cfg["key_dim"]
    mask = attention_mask_of(tf, x)[:, None]  # (B, 1, T, T)
    dtype = w["dense/kernel"].dtype

    def mha(p, q_in, kv_in):
        q = tf.einsum("bte,enk->btnk", q_in, w[f"{p}/query/kernel"]) + w[f"{p}/query/bias"]
        k = tf.einsum("bse,enk->bsnk", kv_in, w[f"{p}/key/kernel"]) + w[f"{p}/key/bias"]
        v = tf.einsum("bse,enk->bsnk", kv_in, w[f"{p}/value/kernel"]) + w[f"{p}/value/bias"]
        s = tf.einsum("btnk,bsnk->bnts", q, k) * tf.constant(1.0 / np.sqrt(K), dtype)
        s = tf.where(mask, s, tf.constant(KERAS_LARGE_NEGATIVE, dtype))
        o = tf.einsum("bnts,bsnk->btnk", tf.nn.softmax(s, axis=-1), v)
        return tf.einsum("btnk,nke->bte", o, w[f"{p}/output/kernel"]) + w[f"{p}/output/bias"]

    def ln(p, h):
        mu = tf.reduce_mean(h, axis=-1, keepdims=True)
        var = tf.reduce_mean(tf.square(h - mu), axis=-1, keepdims=True)
        return (h - mu) / tf.sqrt(var + tf.constant(1e-3, dtype)) * w[f"{p}/gamma"] + w[f"{p}/beta"]

    def ffn(p, h):
        h = tf.nn.relu(tf.matmul(h, w[f"{p}/ffn_1/kernel"]) + w[f"{p}/ffn_1/bias"])
        return tf.matmul(h, w[f"{p}/ffn_2/kernel"]) + w[f"{p}/ffn_2/bias"]

    h = tf.gather(w["embedding/token_embeddings"], x) + w["embedding/position_embeddings"][:T][None]
    for n in range(cfg["num_layers"]):
        p = f"decoder_{n}"
        if cfg["block"] == "book":
            a1 = ln(f"{p}/layernorm_1", h + mha(f"{p}/attention_1", h, h))
            a2 = ln(f"{p}/layernorm_2", a1 + mha(f"{p}/attention_2", a1, h))
            h = ln(f"{p}/layernorm_3", a2 + ffn(p, a2))
        else:
            n1 = ln(f"{p}/layernorm_1", h)
            h = h + mha(f"{p}/attention_1", n1, n1)
            h = h + ffn(p, ln(f"{p}/layernorm_2", h))
    if cfg["block"] == "gpt":
        h = ln("final_layernorm", h)
    return tf.matmul(h, w["dense/kernel"]) + w["dense/bias"]


def _masked_loss(tf, keras, x, y, logits):
    """Mean sparse cross-entropy over positions whose input token is not padding (the seed's loss)."""
    ce = keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)  # (B, T)
    m = tf.cast(tf.not_equal(x, 0), logits.dtype)
    return tf.reduce_sum(ce * m) / tf.reduce_sum(m)


def _keras_transformer_run(tf, keras, cfg, arrays, variables_of, forward):
    """Loss, logits, gradients (and one optimizer step) of one reference; returns the fixture's arrays."""
    x, y = tf.constant(arrays["x"]), tf.constant(arrays["y"])
    out = dict(arrays)
    variables = variables_of()
    with tf.GradientTape() as tape:
        logits = forward(x)
        loss = _masked_loss(tf, keras, x, y, logits)
    grads = [tf.convert_to_tensor(g) for g in tape.gradient(loss, list(variables.values()))]
    out["output"] = logits.numpy()
    out["loss"] = np.asarray(loss.numpy(), dtype=cfg["dtype"])
    for name, g in zip(variables, grads, strict=False):
        out[f"grad/{name}"] = g.numpy()
    if cfg["optimizer"] is not None:
        opt = keras_optimizer(keras, cfg["optimizer"], cfg["dtype"])
        opt.apply_gradients(zip(grads, variables.values(), strict=False))
        for name, var in variables.items():
            out[f"updated/{name}"] = np.asarray(var.numpy())
    return out


def keras_layers_transformer(cfg, arrays=None):
    """The case through keras.layers at the case's dtype (float64: Keras' float32 softmax inside)."""
    tf, keras = import_keras()
    arrays = make_transformer_inputs(cfg) if arrays is None else arrays
    with floatx(keras, cfg["dtype"]):
        named, forward = build_keras_transformer(keras, cfg)
        forward(tf.constant(arrays["x"]))  # builds every layer
        variables = keras_transformer_variables(named, cfg)
        assert set(variables) == {k[len("param/") :] for k in arrays if k.startswith("param/")}
        for name, var in variables.items():
            assert tuple(var.shape) == arrays[f"param/{name}"].shape, name
            var.assign(arrays[f"param/{name}"])
        return _keras_transformer_run(tf, keras, cfg, arrays, lambda: variables, forward)


def tf_ops_transformer_reference(cfg, arrays=None):
    """The case in plain TensorFlow ops at the case's dtype (keras.Variable weights, Keras' optimizer)."""
    tf, keras = import_keras()
    arrays = make_transformer_inputs(cfg) if arrays is None else arrays
    with floatx(keras, cfg["dtype"]):
        variables = {
            k[len("param/") :]: keras.Variable(a, dtype=cfg["dtype"], name=k.replace("/", "_"))
            for k, a in arrays.items()
            if k.startswith("param/")
        }
        return _keras_transformer_run(
            tf,
            keras,
            cfg,
            arrays,
            lambda: variables,
            lambda x: tf_ops_transformer(tf, {n: v.value for n, v in variables.items()}, x, cfg),
        )


def transformer_reference(cfg):
    """The fixture of one Transformer case: Keras layers in float32, plain TF ops in float64 (see above)."""
    make = keras_layers_transformer if cfg["dtype"] == "float32" else tf_ops_transformer_reference
    arrays = make(cfg)
    for key, a in arrays.items():
        if a.dtype.kind == "f":
            assert a.dtype == np.dtype(cfg["dtype"]), f"{key} is {a.dtype}, expected {cfg['dtype']}"
    return arrays


def transformer_cross_check(cfg):
    """max errors of the float64 TF-ops reference against the float32 Keras layers (and the float64 Keras
    layers) on one case: {"keras32/output": ..., "keras32/grad": ..., "keras64/output": ..., "keras64/grad": ...}.
    Gradients: the largest max|a - k| / max(|a| + |k|) over the parameters."""
    ref = tf_ops_transformer_reference(dict(cfg, dtype="float64"))
    errors = {}
    for tag, dtype in (("keras32", "float32"), ("keras64", "float64")):
        other = keras_layers_transformer(dict(cfg, dtype=dtype))
        errors[f"{tag}/output"] = float(np.max(np.abs(other["output"] - ref["output"])))
        errors[f"{tag}/grad"] = max(transformer_grad_errors(other, ref).values())
    return errors


def transformer_grad_errors(got, want):
    """grad/<name> -> relative error max|a - k| / max(|a| + |k|) per tensor, except the key biases: their
    gradient is exactly zero (softmax over keys ignores the per-query constant q·bk), so both sides hold
    round-off only, measured against the largest gradient entry of the model instead."""
    keys = [k for k in want if k.startswith("grad/")]
    scale = max(float(np.max(np.abs(np.asarray(want[k], dtype=np.float64)), initial=0.0)) for k in keys)
    out = {}
    for k in keys:
        a, b = np.asarray(got[k], dtype=np.float64), np.asarray(want[k], dtype=np.float64)
        diff = float(np.max(np.abs(a - b), initial=0.0))
        if k.endswith("/key/bias"):
            out[k] = diff / max(scale, 1e-300)
        else:
            out[k] = diff / max(float(np.max(np.abs(a) + np.abs(b), initial=0.0)), 1e-300)
    return out


def _transformer_fixture(case, dtype):
    """(config, arrays) of one Transformer case; the float64 one is first cross-checked against Keras' layers."""
    cfg = transformer_config(**TRANSFORMER_CASES[case], dtype=dtype)
    if dtype == "float64":
        errors = transformer_cross_check(cfg)
        assert (
            errors["keras32/output"] <= TRANSFORMER_CROSS_CHECK["output"]
            and errors["keras32/grad"] <= TRANSFORMER_CROSS_CHECK["gradient"]
        ), f"{case}: {errors}"
        print(f"{case}: float64 TF ops vs Keras layers: " + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))
    return cfg, transformer_reference(cfg)


# -- files ------------------------------------------------------------------------------
def npz_bytes(arrays):
    """An ``.npz`` (uncompressed zip of ``.npy`` members, sorted by name) with fixed timestamps."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for key in sorted(arrays):
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.create_system = 3
            info.external_attr = 0o644 << 16
            zf.writestr(info, member.getvalue())
    return buf.getvalue()


def save_npz(path, arrays):
    Path(path).write_bytes(npz_bytes(arrays))


def fixture_name(case, dtype):
    return f"{case}-{dtype}.npz"


def versions():
    _, keras = import_keras()
    import h5py
    import tensorflow as tf

    return {
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "h5py": h5py.__version__,
        "python": platform.python_version(),
    }


def _one_step_fixture(case, dtype):
    """(config, arrays) of one single-step case."""
    cfg = config(**CASES[case], dtype=dtype)
    arrays = keras_reference(cfg)
    clipnorm = (cfg["optimizer"] or {}).get("global_clipnorm")
    if clipnorm is not None:
        norm = np.sqrt(
            sum(float(np.sum(a.astype(np.float64) ** 2)) for k, a in arrays.items() if k.startswith("grad/"))
        )
        assert norm > clipnorm, f"{case}: global norm {norm} <= global_clipnorm {clipnorm}, nothing clipped"
    return cfg, arrays


def _trajectory_fixture(case, dtype):
    """(config, arrays) of one trajectory case."""
    cfg = trajectory_config(**TRAJECTORIES[case], dtype=dtype)
    arrays = keras_trajectory(cfg)
    clipnorm = cfg["optimizer"].get("global_clipnorm")
    if clipnorm is not None:  # both branches of the clip, at different steps
        clipped = arrays["grad_norm"] > clipnorm
        assert clipped.any() and not clipped.all(), f"{case}: clipped at steps {np.flatnonzero(clipped)}"
    return cfg, arrays


def _write_fixtures(directory, cases, make):
    """Write both dtypes of each case; returns the manifest entries, file name -> {case, config, sha256}."""
    entries = {}
    for case in cases:
        for dtype in DTYPES:
            cfg, arrays = make(case, dtype)
            name = fixture_name(case, dtype)
            data = npz_bytes(arrays)
            (Path(directory) / name).write_bytes(data)
            entries[name] = {"case": case, "config": cfg, "sha256": hashlib.sha256(data).hexdigest()}
    return entries


def _trajectory_section(entries, made_with):
    return {
        "versions": made_with,
        "seeds": {case: spec["seed"] for case, spec in TRAJECTORIES.items()},
        "fixtures": entries,
    }


def _transformer_section(entries, made_with):
    return {
        "versions": made_with,
        "seeds": {case: spec["seed"] for case, spec in TRANSFORMER_CASES.items()},
        "cross_check": TRANSFORMER_CROSS_CHECK,
        "fixtures": entries,
    }


def generate(directory, only=None):
    """Write fixtures into ``directory``: every one, the ``.weights.h5`` pair and a new ``manifest.json``;
    or, with ``only`` (case names of :data:`CASES` / :data:`TRAJECTORIES`), just those cases' files,
    updating their entries in the folder's existing ``manifest.json`` and leaving every other file and
    entry as it is.

    A manifest section (the single-step cases with the ``.weights.h5`` pair, under the top-level
    ``versions``; the trajectories, under ``trajectories/versions``; the Transformer cases of
    :data:`TRANSFORMER_CASES`, under ``transformers/versions``) records one set of versions, so
    regenerating only part of a section with other versions than it records is refused.
    """
    directory = Path(directory)
    made_with = versions()
    if only is None:
        fixtures = _write_fixtures(directory, CASES, _one_step_fixture)
        trajectories = _write_fixtures(directory, TRAJECTORIES, _trajectory_fixture)
        transformers = _write_fixtures(directory, TRANSFORMER_CASES, _transformer_fixture)
        weights_h5_reference(directory)
        manifest = {
            "generator": "tests/reference/make_tf_reference.py",
            "versions": made_with,
            "environment": {k: os.environ[k] for k in ("TF_ENABLE_ONEDNN_OPTS", "KERAS_BACKEND")},
            "seeds": {case: spec["seed"] for case, spec in CASES.items()},
            "fixtures": fixtures,
            "trajectories": _trajectory_section(trajectories, made_with),
            "transformers": _transformer_section(transformers, made_with),
            "weights_h5": {
                "file": WEIGHTS_H5,
                "expected": WEIGHTS_H5_EXPECTED,
                "sha256": {
                    f: hashlib.sha256((directory / f).read_bytes()).hexdigest()
                    for f in (WEIGHTS_H5, WEIGHTS_H5_EXPECTED)
                },
            },
        }
    else:
        known = {**CASES, **TRAJECTORIES, **TRANSFORMER_CASES}
        unknown = [case for case in only if case not in known]
        if unknown:
            raise SystemExit(f"unknown cases {unknown}; known: {sorted(known)}")
        manifest = json.loads((directory / "manifest.json").read_text())
        one_step = [case for case in CASES if case in only]
        multi = [case for case in TRAJECTORIES if case in only]
        if one_step and manifest["versions"] != made_with:
            raise SystemExit(
                f"the single-step fixtures were made with {manifest['versions']}, this is {made_with}: "
                "regenerate everything (no --only)"
            )
        section = manifest.setdefault("trajectories", _trajectory_section({}, made_with))
        others = [e["case"] for e in section["fixtures"].values() if e["case"] not in multi]
        if multi and others and section["versions"] != made_with:
            raise SystemExit(
                f"the trajectories {sorted(set(others))} were made with {section['versions']}, "
                f"this is {made_with}: regenerate all of them"
            )
        manifest["fixtures"].update(_write_fixtures(directory, one_step, _one_step_fixture))
        manifest["seeds"].update({case: CASES[case]["seed"] for case in one_step})
        if multi:
            section["fixtures"].update(_write_fixtures(directory, multi, _trajectory_fixture))
            section["versions"] = made_with
            section["seeds"] = {case: spec["seed"] for case, spec in TRAJECTORIES.items()}
        chosen = [case for case in TRANSFORMER_CASES if case in only]
        if chosen:
            section = manifest.setdefault("transformers", _transformer_section({}, made_with))
            others = [e["case"] for e in section["fixtures"].values() if e["case"] not in chosen]
            if others and section["versions"] != made_with:
                raise SystemExit(
                    f"the Transformer fixtures {sorted(set(others))} were made with "
                    f"{section['versions']}, this is {made_with}: regenerate all of them"
                )
            section["fixtures"].update(_write_fixtures(directory, chosen, _transformer_fixture))
            section["versions"] = made_with
            section["seeds"] = {case: spec["seed"] for case, spec in TRANSFORMER_CASES.items()}
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def check(directory, only=None):
    """Regenerate into a temporary folder and compare bytes; returns the names that differ.

    Without ``only``: every file the generator writes. With ``only``: those cases' fixtures and
    ``manifest.json`` (regenerated from a copy of the folder's manifest).
    """
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        if only is None:
            generate(tmp)
            names = sorted(p.name for p in Path(tmp).iterdir())
        else:
            (Path(tmp) / "manifest.json").write_bytes((Path(directory) / "manifest.json").read_bytes())
            generate(tmp, only)
            names = sorted(fixture_name(case, dtype) for case in only for dtype in DTYPES) + ["manifest.json"]
        return [n for n in names if (Path(tmp) / n).read_bytes() != (Path(directory) / n).read_bytes()]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(HERE), help="output folder (default: next to this script)")
    parser.add_argument("--check", action="store_true", help="regenerate in a temporary folder and compare bytes")
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="CASE",
        help="just these cases (both dtypes); the other files and manifest entries stay",
    )
    args = parser.parse_args(argv)
    if args.check:
        differ = check(args.out, args.only)
        print("all fixtures identical" if not differ else f"differ: {', '.join(differ)}")
        return 1 if differ else 0
    manifest = generate(args.out, args.only)
    written = [
        name
        for name, entry in {
            **manifest["fixtures"],
            **manifest["trajectories"]["fixtures"],
            **manifest.get("transformers", {"fixtures": {}})["fixtures"],
        }.items()
        if args.only is None or entry["case"] in args.only
    ]
    if args.only is None:
        written += [WEIGHTS_H5, WEIGHTS_H5_EXPECTED]
    total = sum((Path(args.out) / f).stat().st_size for f in written)
    made_with = manifest["versions"] if args.only is None else versions()
    print(
        f"wrote {len(written)} files ({total / 1024:.0f} KiB) "
        f"with TensorFlow {made_with['tensorflow']}, Keras {made_with['keras']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
