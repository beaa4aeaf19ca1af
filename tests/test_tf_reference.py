"""scratchlm against Keras: same weights, same batch -> same outputs, gradients and optimizer steps.

The fixtures in ``tests/reference/`` were written by ``make_tf_reference.py`` with
TensorFlow/Keras (versions in ``manifest.json``); these tests need neither. Each
fixture case runs on every backend path of :data:`BACKEND_PATHS` that works here.

Every case exists for the LSTM and, with Keras' ``GRU(reset_after=True)`` (config ``"cell": "gru"``,
fixtures ``gru_*``), for the GRU; both are held to the same bars. Measured on the GRU
fixtures (TensorFlow 2.21, NumPy paths): float32 at most 2.4e-7 (forward), 2.5e-7
(gradients), 3.0e-8 (updates); float64 8.9e-16, 8.1e-16, 5.6e-17.

Tolerances (float32 / float64):
    forward   outputs, final (h, c) or h, loss     max abs error  1e-5 / 1e-9
    gradient  every parameter                      relative error 1e-4 / 1e-9
              (max|a - k| / max(|a| + |k|) per tensor, scratchlm.gradcheck.relative_error)
    update    weights after one optimizer step     max abs error  1e-6 / 1e-9

Trajectories (manifest section ``trajectories``): 10 steps of Adam (clipped by
global_clipnorm at some steps) or RMSprop, a different batch each step, replayed from
the same initial weights with scratchlm's optimizer. Relative errors, float32 / float64:
    loss      every step's loss, |a - k| / |k|                                2e-6 / 1e-9
    final     weights after the last step, max|a - k| / max|k| per tensor      2e-5 / 1e-9
Measured (TensorFlow 2.21, NumPy paths): float32 at most 1.9e-7 (losses) and 1.5e-6
(weights), float64 1.9e-16 and 6.1e-16. The float32 error is Keras' own float32
round-off: scratchlm in float64 from the same float32 start differs from Keras by the
same 1.5e-6, and ±1 ulp on the starting weights does not make it grow. The bars are
about 10x the measurement.

Transformer (TransformerLM, manifest section ``transformers``): the seed's book block and the gpt block
on padded batches (2 layers, 2 heads of key_dim 5 != E / N) and one RMSprop step, same bars. The float32
fixtures are Keras' own layers (MultiHeadAttention given attention_mask = causal ∧ padding explicitly);
the float64 ones plain TensorFlow ops in float64, since Keras' MultiHeadAttention runs its softmax in
float32 even at floatx float64 (the generator cross-checks them against the Keras float32 layers: at most
1.8e-6 in logits, 1.0e-6 relative in gradients; against the float64 Keras layers 3.3e-8 / 2.1e-8).
Key-bias gradients are exactly zero in exact arithmetic and are compared on the model's gradient scale
(:func:`transformer_grad_errors`). Measured (TensorFlow 2.21, NumPy paths): float32 at most 1.1e-6
(forward), 1.3e-6 (gradients), 7.5e-7 (trained weights); float64 1.8e-15, 2.1e-15, 1.0e-15. Live random
cases (SCRATCHLM_TF_TRANSFORMER_CASES, default 4 per dtype and block): float32 9.5e-7 / 2.6e-6, float64
1.9e-15 / 2.3e-15.

Live mode: ``pytest -m tf`` (TensorFlow importable) draws random cases, LSTM and GRU,
runs them through Keras in memory and compares the same way. SCRATCHLM_TF_SEED (default 0)
shifts the seeds, SCRATCHLM_TF_CASES (default 8) sets how many per dtype.
"""

import hashlib
import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest

from scratchlm import LanguageModel, get_backend, optim
from scratchlm.errors import BackendUnavailable
from scratchlm.gradcheck import relative_error
from scratchlm.losses import softmax
from scratchlm.models import TransformerLM

pytestmark = pytest.mark.gradcheck  # the Keras fixtures: every test here judges numbers against them

REFERENCE = Path(__file__).resolve().parent / "reference"
MANIFEST = json.loads((REFERENCE / "manifest.json").read_text())
FIXTURES = sorted(MANIFEST["fixtures"])

TOLERANCES = {
    "float32": {"forward": 1e-5, "gradient": 1e-4, "update": 1e-6},
    "float64": {"forward": 1e-9, "gradient": 1e-9, "update": 1e-9},
}

TRAJECTORY_SECTION = MANIFEST.get("trajectories", {"fixtures": {}})
TRAJECTORIES = sorted(TRAJECTORY_SECTION["fixtures"])
TRANSFORMER_SECTION = MANIFEST.get("transformers", {"fixtures": {}})
TRANSFORMERS = sorted(TRANSFORMER_SECTION["fixtures"])

TRAJECTORY_TOLERANCES = {
    "float32": {"loss": 2e-6, "final": 2e-5},  # relative; see the module docstring
    "float64": {"loss": 1e-9, "final": 1e-9},
}

# The ways scratchlm can compute: each is a function dtype -> Backend for LanguageModel(backend=...).
# A path that cannot run here raises BackendUnavailable and its tests skip. Adding a path is one line.
BACKEND_PATHS = [
    pytest.param(lambda dtype: get_backend("numpy", dtype, kernels="reference"), id="numpy-reference"),
    pytest.param(lambda dtype: get_backend("numpy", dtype, kernels="fused"), id="numpy-fused"),
    pytest.param(
        lambda dtype: get_backend("cupy", dtype, kernels="reference"), id="cupy-reference", marks=pytest.mark.gpu
    ),
    pytest.param(lambda dtype: get_backend("cupy", dtype, kernels="fused"), id="cupy-fused", marks=pytest.mark.gpu),
]


@pytest.fixture(params=BACKEND_PATHS)
def backend_for(request):
    """dtype -> Backend of this test's path (the test skips where the path is unavailable)."""

    def make(dtype):
        try:
            return request.param(dtype)
        except BackendUnavailable as exc:
            pytest.skip(str(exc))

    return make


# -- the comparison ---------------------------------------------------------------------
STATE_NAMES = {"lstm": ("h", "c"), "gru": ("h",)}  # each layer's state, as the fixtures name it


def cell_of(cfg):
    """The config's recurrent cell; the LSTM configs predate the ``cell`` key."""
    return cfg.get("cell", "lstm")


def make_model(cfg, backend):
    return LanguageModel(
        cfg["vocab_size"],
        embedding_dim=cfg["embedding_dim"],
        hidden_sizes=cfg["hidden_sizes"],
        backend=backend,
        dtype=cfg["dtype"],
        cell=cell_of(cfg),
    )


def max_abs(a, b):
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)), initial=0.0))


def measure(arrays, cfg, backend):
    """Run scratchlm on a reference case; returns {quantity: error}, see :func:`kind` for which error."""
    model = make_model(cfg, backend)
    params = {key[len("param/") :]: a for key, a in arrays.items() if key.startswith("param/")}
    assert set(params) == set(model.params)
    model.set_params(params)
    host = backend.to_host
    x, y, mask = arrays["x"], arrays["y"], arrays.get("mask")
    layers = range(len(cfg["hidden_sizes"]))
    parts = STATE_NAMES[cell_of(cfg)]
    state = None
    if cfg["initial_state"]:
        state = [tuple(backend.asarray(arrays[f"initial_state/{part}_{n}"]) for part in parts) for n in layers]
    errors = {}

    logits, final = model.forward(x, state=state, mask=mask)  # (B, T, V)
    logits = host(logits)
    if cfg["last_only"]:
        logits = logits[:, -1]  # (B, V)
    errors["output"] = max_abs(softmax(logits) if cfg["softmax_output"] else logits, arrays["output"])
    assert len(final) == len(layers)
    for n, layer_state in zip(layers, final, strict=False):
        assert len(layer_state) == len(parts)
        for part, a in zip(parts, layer_state, strict=False):
            errors[f"state/{part}_{n}"] = max_abs(host(a), arrays[f"state/{part}_{n}"])

    loss, grads = model.loss_and_grads(x, y, mask=mask, state=state, last_only=cfg["last_only"])
    errors["loss"] = abs(loss - float(arrays["loss"]))
    errors["keras_loss"] = abs(loss - float(arrays["keras_loss"]))  # Keras' own loss object
    for name, g in grads.items():
        errors[f"grad/{name}"] = relative_error(host(g), arrays[f"grad/{name}"])

    if cfg["optimizer"] is not None:
        hyper = {k: v for k, v in cfg["optimizer"].items() if k != "name"}
        # the update rule alone: scratchlm's optimizer on Keras' gradients
        weights = {name: backend.xp.array(backend.asarray(p)) for name, p in params.items()}
        keras_grads = {name: backend.asarray(arrays[f"grad/{name}"]) for name in params}
        optim.get(cfg["optimizer"]["name"], **hyper).step(weights, keras_grads)
        # and end to end: scratchlm's gradients through scratchlm's optimizer
        optim.get(cfg["optimizer"]["name"], **hyper).step(model.params, grads)
        for name in params:
            errors[f"updated/{name}"] = max_abs(host(weights[name]), arrays[f"updated/{name}"])
            errors[f"trained/{name}"] = max_abs(host(model.params[name]), arrays[f"updated/{name}"])
    return errors


def kind(quantity):
    """Which tolerance applies: forward, gradient or update."""
    prefix = quantity.split("/")[0]
    return {"grad": "gradient", "updated": "update", "trained": "update"}.get(prefix, "forward")


def assert_within_tolerance(errors, dtype):
    tol = TOLERANCES[dtype]
    over = {q: e for q, e in errors.items() if not e <= tol[kind(q)]}  # NaN counts as over
    assert not over, f"beyond tolerance {tol}: {over}"


def load_fixture(name):
    with np.load(REFERENCE / name, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def max_rel(a, k):
    """max|a - k| / max|k| over one tensor (or one number)."""
    a, k = np.asarray(a, dtype=np.float64), np.asarray(k, dtype=np.float64)
    return float(np.max(np.abs(a - k)) / max(float(np.max(np.abs(k))), 1e-300))


def replay(arrays, cfg, backend, optimizer=None, order=None):
    """Train scratchlm through a trajectory fixture; returns {quantity: relative error}.

    The fixture's initial weights, its batch of every step (in ``order``, default the
    fixture's) and scratchlm's optimizer with the case's hyperparameters (or ``optimizer``).
    Quantities: ``loss/<step>`` and ``keras_loss/<step>`` (Keras' loss object) for every step,
    ``final/<name>`` for every weight after the last step.
    """
    model = make_model(cfg, backend)
    params = {key[len("param/") :]: a for key, a in arrays.items() if key.startswith("param/")}
    assert set(params) == set(model.params)
    model.set_params(params)
    if optimizer is None:
        optimizer = optim.get(cfg["optimizer"]["name"], **{k: v for k, v in cfg["optimizer"].items() if k != "name"})
    errors = {}
    for step, batch in enumerate(range(cfg["steps"]) if order is None else order):
        mask = arrays["mask"][batch] if cfg["mask"] else None
        loss, grads = model.loss_and_grads(arrays["x"][batch], arrays["y"][batch], mask=mask)
        errors[f"loss/{step}"] = max_rel(loss, arrays["loss"][step])
        errors[f"keras_loss/{step}"] = max_rel(loss, arrays["keras_loss"][step])
        optimizer.step(model.params, grads)
    for name in params:
        errors[f"final/{name}"] = max_rel(backend.to_host(model.params[name]), arrays[f"final/{name}"])
    return errors


def assert_trajectory_within_tolerance(errors, dtype):
    tol = TRAJECTORY_TOLERANCES[dtype]
    over = {q: e for q, e in errors.items() if not e <= tol["final" if q.startswith("final/") else "loss"]}
    assert not over, f"beyond tolerance {tol}: {over}"


# -- fixtures ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", FIXTURES, ids=[n[: -len(".npz")] for n in FIXTURES])
def test_matches_keras_reference(name, backend_for):
    cfg = MANIFEST["fixtures"][name]["config"]
    errors = measure(load_fixture(name), cfg, backend_for(cfg["dtype"]))
    assert_within_tolerance(errors, cfg["dtype"])


@pytest.mark.parametrize("name", TRAJECTORIES, ids=[n[: -len(".npz")] for n in TRAJECTORIES])
def test_trajectory_matches_keras_reference(name, backend_for):
    """10 training steps: every step's loss and the final weights, as Keras trained them."""
    cfg = TRAJECTORY_SECTION["fixtures"][name]["config"]
    errors = replay(load_fixture(name), cfg, backend_for(cfg["dtype"]))
    assert len(errors) > 2 * cfg["steps"]
    assert_trajectory_within_tolerance(errors, cfg["dtype"])


def test_fixtures_are_the_ones_in_the_manifest():
    """Every fixture file is the generator's output (hash) and the set stays small (< 2 MB)."""
    total = 0
    files = dict((name, entry["sha256"]) for name, entry in MANIFEST["fixtures"].items())
    files.update((name, entry["sha256"]) for name, entry in TRAJECTORY_SECTION["fixtures"].items())
    files.update((name, entry["sha256"]) for name, entry in TRANSFORMER_SECTION["fixtures"].items())
    files.update(MANIFEST["weights_h5"]["sha256"])
    for name, sha in files.items():
        data = (REFERENCE / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == sha, f"{name} differs from the manifest: regenerate"
        total += len(data)
    assert total < 2 * 1024 * 1024


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_fixtures_cover_the_cases(cell):
    """Both dtypes of every case, and the features the cases exist for, for either cell."""
    cfgs = [entry["config"] for entry in MANIFEST["fixtures"].values() if cell_of(entry["config"]) == cell]
    assert {c["dtype"] for c in cfgs} == {"float32", "float64"}
    assert any(c["embedding_dim"] is None and c["last_only"] and c["softmax_output"] for c in cfgs)
    assert any(len(c["hidden_sizes"]) > 1 for c in cfgs)
    assert any(c["mask"] for c in cfgs) and any(c["initial_state"] for c in cfgs)
    assert any(c["mask"] and c["initial_state"] for c in cfgs)
    optimizers = [c["optimizer"] for c in cfgs if c["optimizer"]]
    if cell == "gru":  # one RMSprop step; the optimizers are cell-blind
        assert "rmsprop" in {o["name"] for o in optimizers}
        return
    assert {"adam", "rmsprop"} <= {o["name"] for o in optimizers}
    assert any(o.get("lr") == 0.01 and o["name"] == "rmsprop" for o in optimizers)
    assert any("global_clipnorm" in o for o in optimizers)


def test_gru_fixtures_hold_keras_reset_after_weights():
    """The GRU fixtures carry (2, 3H) biases (reset_after=True), state h only, gru_n names."""
    names = [name for name, entry in MANIFEST["fixtures"].items() if cell_of(entry["config"]) == "gru"]
    assert len(names) == 14
    for name in names:
        cfg, arrays = MANIFEST["fixtures"][name]["config"], load_fixture(name)
        for n, H in enumerate(cfg["hidden_sizes"]):
            assert arrays[f"param/gru_{n}/bias"].shape == (2, 3 * H)
            assert arrays[f"param/gru_{n}/recurrent_kernel"].shape == (H, 3 * H)
            assert f"state/h_{n}" in arrays and f"state/c_{n}" not in arrays
        assert not any(key.startswith(("param/lstm", "grad/lstm")) for key in arrays), name


def test_trajectories_cover_the_cases():
    """Adam and RMSprop, both dtypes, 10 steps of distinct batches, a mask, and clipping on some steps only."""
    entries = TRAJECTORY_SECTION["fixtures"]
    cfgs = [entry["config"] for entry in entries.values()]
    assert {(c["optimizer"]["name"], c["dtype"]) for c in cfgs} == {
        (o, d) for o in ("adam", "rmsprop") for d in ("float32", "float64")
    }
    assert all(c["steps"] == 10 for c in cfgs) and any(c["mask"] for c in cfgs)
    assert any(len(c["hidden_sizes"]) > 1 for c in cfgs)
    for name, entry in entries.items():
        arrays = load_fixture(name)
        x = arrays["x"].reshape(entry["config"]["steps"], -1)
        assert len({row.tobytes() for row in x}) == len(x), f"{name}: a batch repeats"
        clipnorm = entry["config"]["optimizer"].get("global_clipnorm")
        if clipnorm is not None:
            clipped = arrays["grad_norm"] > clipnorm
            assert clipped.any() and not clipped.all(), name


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(
    "change", ["adam step count off by one", "rmsprop rho 0.9 -> 0.905", "two batches swapped", "no clipping"]
)
def test_the_trajectory_catches_a_changed_step(change, dtype):
    """Small changes to one part of training fail the trajectory check, at either dtype's bar."""
    case = "rmsprop" if change.startswith("rmsprop") else "adam"
    name = f"{case}_trajectory-{dtype}.npz"
    cfg = TRAJECTORY_SECTION["fixtures"][name]["config"]
    hyper = {k: v for k, v in cfg["optimizer"].items() if k != "name"}
    optimizer, order = None, None
    if change == "adam step count off by one":
        optimizer = optim.get("adam", **hyper)
        optimizer.iterations = 1  # bias correction of step t + 1
    elif change == "rmsprop rho 0.9 -> 0.905":
        optimizer = optim.get("rmsprop", **dict(hyper, rho=0.905))
    elif change == "two batches swapped":
        order = [0, 1, 2, 3, 4, 5, 6, 8, 7, 9]
    else:
        optimizer = optim.get("adam", **dict(hyper, global_clipnorm=None))
    errors = replay(load_fixture(name), cfg, get_backend("numpy", dtype), optimizer=optimizer, order=order)
    with pytest.raises(AssertionError, match="beyond tolerance"):
        assert_trajectory_within_tolerance(errors, dtype)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_the_comparison_catches_a_wrong_gradient(cell):
    """A planted error in one Keras gradient entry, 1e-3 of the tensor's scale, fails the check."""
    name = "stacked-float64.npz" if cell == "lstm" else "gru_stacked-float64.npz"
    arrays = load_fixture(name)
    g = arrays[f"grad/{cell}_0/recurrent_kernel"]
    g.flat[3] += 1e-3 * np.abs(g).max()
    errors = measure(arrays, MANIFEST["fixtures"][name]["config"], get_backend("numpy", "float64"))
    with pytest.raises(AssertionError, match=f"{cell}_0/recurrent_kernel"):
        assert_within_tolerance(errors, "float64")


def test_the_comparison_catches_reset_before():
    """A GRU with the reset gate applied before the recurrent product (Keras' reset_after=False)
    fails the reference: the fixtures tell the two layouts apart."""
    name = "gru_embedding_sequence-float64.npz"
    arrays = load_fixture(name)
    cfg = MANIFEST["fixtures"][name]["config"]
    model = make_model(cfg, get_backend("numpy", "float64", kernels="reference"))
    model.set_params({key[len("param/") :]: a for key, a in arrays.items() if key.startswith("param/")})
    E, W, U, b = (
        model.params[k] for k in ("embedding/embeddings", "gru_0/kernel", "gru_0/recurrent_kernel", "gru_0/bias")
    )
    H = U.shape[0]

    def sigmoid(a):
        return 1 / (1 + np.exp(-a))

    h = np.zeros((cfg["batch"], H))
    for t in range(cfg["time"]):  # h̃ = tanh(x̂_h + (r ⊙ h) U_h + b_rec,h)
        xh = E[arrays["x"][:, t]] @ W + b[0]
        z = sigmoid(xh[:, :H] + h @ U[:, :H] + b[1, :H])
        r = sigmoid(xh[:, H : 2 * H] + h @ U[:, H : 2 * H] + b[1, H : 2 * H])
        h = z * h + (1 - z) * np.tanh(xh[:, 2 * H :] + (r * h) @ U[:, 2 * H :] + b[1, 2 * H :])
    assert max_abs(h, arrays["state/h_0"]) > 1e-3
    _, (final,) = model.forward(arrays["x"])
    assert max_abs(final[0], arrays["state/h_0"]) <= 1e-9


# -- the Transformer (TransformerLM, the IMDB seed's model) ----------------------------------------
def make_transformer(cfg, backend):
    keys = ("vocab_size", "sequence_length", "embed_dim", "dense_dim", "num_heads", "key_dim", "num_layers", "block")
    return TransformerLM(**{k: cfg[k] for k in keys}, backend=backend, dtype=cfg["dtype"])


ZERO_GRADIENT = 1e-3  # a gradient tensor below this fraction of the model's largest entry is round-off


def transformer_grad_errors(grads, arrays):
    """grad/<name> -> relative error (scratchlm.gradcheck.relative_error) per tensor, except for gradients
    that are exactly zero in exact arithmetic, where both sides hold round-off only: the key biases (softmax
    over keys ignores the per-query constant q·bk), and in a live case whose every real query sees one key
    (T = 1, or one real token per row) the query and key weights too. Those (Keras' max|k| below
    ZERO_GRADIENT of the model's largest gradient entry) get max|a - k| over that largest entry instead.
    Measured on the fixtures: key biases 1e-17 (float64) / 1e-9 (float32) of the scale, every other
    gradient above 1e-2 of it."""
    scale = max(float(np.max(np.abs(a))) for k, a in arrays.items() if k.startswith("grad/"))
    errors = {}
    for name, g in grads.items():
        want = arrays[f"grad/{name}"]
        if name.endswith("/key/bias") or float(np.max(np.abs(want), initial=0.0)) <= ZERO_GRADIENT * scale:
            errors[f"grad/{name}"] = max_abs(g, want) / scale
        else:
            errors[f"grad/{name}"] = relative_error(np.asarray(g, dtype=np.float64), want.astype(np.float64))
    return errors


def measure_transformer(arrays, cfg, backend):
    """Run TransformerLM on a Transformer reference case -> {quantity: error} (tolerance kinds as :func:`kind`).

    Logits at every position (padding positions included: their attention rows are all masked and come out
    uniform, in Keras as here), the loss (mean over positions whose input token is not 0), every gradient,
    and with an optimizer the weights after one step (``updated/``: scratchlm's optimizer on Keras' gradients;
    ``trained/``: scratchlm's gradients too).
    """
    model = make_transformer(cfg, backend)
    params = {key[len("param/") :]: a for key, a in arrays.items() if key.startswith("param/")}
    assert set(params) == set(model.params)
    model.set_params(params)
    host = backend.to_host
    x, y = arrays["x"], arrays["y"]
    assert (arrays["mask"] == (x != 0)).all() and not arrays["mask"].all()  # padded batches
    logits, _ = model.forward(x)  # (B, T, V)
    errors = {"output": max_abs(host(logits), arrays["output"])}
    loss, grads = model.loss_and_grads(x, y)
    errors["loss"] = abs(loss - float(arrays["loss"]))
    errors.update(transformer_grad_errors({name: host(g) for name, g in grads.items()}, arrays))
    if cfg["optimizer"] is not None:
        hyper = {k: v for k, v in cfg["optimizer"].items() if k != "name"}
        weights = {name: backend.xp.array(backend.asarray(p)) for name, p in params.items()}
        optim.get(cfg["optimizer"]["name"], **hyper).step(
            weights, {name: backend.asarray(arrays[f"grad/{name}"]) for name in params}
        )
        optim.get(cfg["optimizer"]["name"], **hyper).step(model.params, grads)
        for name in params:
            errors[f"updated/{name}"] = max_abs(host(weights[name]), arrays[f"updated/{name}"])
            errors[f"trained/{name}"] = max_abs(host(model.params[name]), arrays[f"updated/{name}"])
    return errors


@pytest.mark.parametrize("name", TRANSFORMERS, ids=[n[: -len(".npz")] for n in TRANSFORMERS])
def test_transformer_matches_keras_reference(name, backend_for):
    """The book block and the gpt block on padded batches, and one RMSprop step, as Keras computes them."""
    cfg = TRANSFORMER_SECTION["fixtures"][name]["config"]
    errors = measure_transformer(load_fixture(name), cfg, backend_for(cfg["dtype"]))
    assert len([q for q in errors if q.startswith("grad/")]) == len(
        make_transformer(cfg, get_backend("numpy", cfg["dtype"])).params
    )
    assert_within_tolerance(errors, cfg["dtype"])


def test_transformer_fixtures_cover_the_cases():
    """Both blocks and both dtypes, padding in every batch, 2 layers, heads with key_dim != E / N, RMSprop."""
    cfgs = [entry["config"] for entry in TRANSFORMER_SECTION["fixtures"].values()]
    assert {(c["block"], c["dtype"]) for c in cfgs} == {(b, d) for b in ("book", "gpt") for d in ("float32", "float64")}
    assert any(c["num_layers"] > 1 for c in cfgs)
    assert all(c["num_heads"] > 1 and c["num_heads"] * c["key_dim"] != c["embed_dim"] for c in cfgs)
    assert {(c["optimizer"] or {}).get("name") for c in cfgs} == {None, "rmsprop"}
    for name in TRANSFORMER_SECTION["fixtures"]:
        arrays = load_fixture(name)
        x = arrays["x"]
        assert (x == 0).any() and (x != 0).any(axis=1).all(), name
        assert any((row == 0).any() and (row != 0).any() for row in x), name  # padded and real in a row
        biases = [a for k, a in arrays.items() if k.startswith("param/") and k.endswith(("/bias", "/beta"))]
        assert all(np.abs(b).max() > 0 for b in biases), f"{name}: a zero bias tests nothing"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_transformer_reference_catches_the_missing_padding_mask(dtype, monkeypatch):
    """The trap of the book's code under Keras 3 (no padding mask reaches the attentions: causal only) and a
    planted error in one gradient entry (1e-3 of its scale) both fail the fixture check."""
    name = f"transformer_book-{dtype}.npz"
    cfg, arrays = TRANSFORMER_SECTION["fixtures"][name]["config"], load_fixture(name)
    backend = get_backend("numpy", dtype)
    with monkeypatch.context() as m:  # attention masks: causal only
        m.setattr(
            TransformerLM,
            "_attention_mask",
            lambda self, keep, T: np.broadcast_to(np.tril(np.ones((T, T), dtype=bool)), (len(keep), T, T)),
        )
        errors = measure_transformer(arrays, cfg, backend)
    with pytest.raises(AssertionError, match="output"):
        assert_within_tolerance(errors, dtype)
    g = arrays["grad/decoder_0/attention_2/value/kernel"]
    g.flat[4] += 1e-3 * np.abs(g).max()
    with pytest.raises(AssertionError, match="decoder_0/attention_2/value/kernel"):
        assert_within_tolerance(measure_transformer(arrays, cfg, backend), dtype)


# -- live mode: random cases through Keras, no fixtures ---------------------------------------
def generator():
    """The fixture generator as a module, with TensorFlow imported; skips without TensorFlow."""
    spec = importlib.util.spec_from_file_location("make_tf_reference", REFERENCE / "make_tf_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        module.import_keras()
    except ImportError as exc:
        pytest.skip(f"TensorFlow/Keras not importable ({exc}); pip install -e '.[reference]'")
    return module


SEED = int(os.environ.get("SCRATCHLM_TF_SEED", "0"))
LIVE_CASES = int(os.environ.get("SCRATCHLM_TF_CASES", "8"))


@pytest.mark.tf
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("seed", range(SEED, SEED + LIVE_CASES))
def test_live_random_case(seed, dtype, backend_for):
    gen = generator()
    cfg = gen.random_config(seed, dtype)
    errors = measure(gen.keras_reference(cfg), cfg, backend_for(dtype))
    assert_within_tolerance(errors, dtype)


GRU_SEED = SEED + 1000  # other sizes than the LSTM cases draw


@pytest.mark.tf
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("seed", range(GRU_SEED, GRU_SEED + LIVE_CASES))
def test_live_random_gru_case(seed, dtype, backend_for):
    """Random sizes, layers, masks, initial states and optimizers through Keras' GRU(reset_after=True)."""
    gen = generator()
    cfg = gen.random_config(seed, dtype, cell="gru")
    errors = measure(gen.keras_reference(cfg), cfg, backend_for(dtype))
    assert_within_tolerance(errors, dtype)


@pytest.mark.tf
def test_live_fixture_cases_regenerate_identically():
    """With the manifest's TensorFlow, Keras and NumPy versions, the generator reproduces each fixture.

    Byte for byte on the kind of CPU that made them; TensorFlow's float32 CPU kernels round differently on
    another one (measured: at most 6e-8 apart on an AMD EPYC), so there float32 arrays are compared to a
    few float32 rounding steps and float64 arrays must still be equal.
    """
    gen = generator()
    import keras
    import tensorflow as tf

    made_with = {k: MANIFEST["versions"][k] for k in ("tensorflow", "keras", "numpy")}
    if made_with != {"tensorflow": tf.__version__, "keras": keras.__version__, "numpy": np.__version__}:
        pytest.skip(f"fixtures were made with {made_with}")
    for name, entry in MANIFEST["fixtures"].items():
        made = gen.keras_reference(entry["config"])
        if hashlib.sha256(gen.npz_bytes(made)).hexdigest() == entry["sha256"]:
            continue
        with np.load(REFERENCE / name, allow_pickle=False) as stored:
            assert sorted(stored.files) == sorted(made), name
            for key in stored.files:
                want, got = stored[key], np.asarray(made[key])
                if want.dtype == np.float32:
                    np.testing.assert_allclose(got, want, rtol=1e-6, atol=2e-7, err_msg=f"{name}: {key}")
                else:
                    np.testing.assert_array_equal(got, want, err_msg=f"{name}: {key}")


TRANSFORMER_SEED = SEED + 2000
TRANSFORMER_LIVE_CASES = int(os.environ.get("SCRATCHLM_TF_TRANSFORMER_CASES", "4"))
_transformer_references = {}


def live_transformer_reference(seed, dtype, block):
    """A random Transformer case and its reference (float32: Keras' layers; float64: TF ops), computed once
    per case for all backend paths."""
    gen = generator()
    key = (seed, dtype, block)
    if key not in _transformer_references:
        cfg = gen.random_transformer_config(seed, dtype, block)
        _transformer_references[key] = (cfg, gen.transformer_reference(cfg))
    return _transformer_references[key]


@pytest.mark.tf
@pytest.mark.parametrize("block", ["book", "gpt"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("seed", range(TRANSFORMER_SEED, TRANSFORMER_SEED + TRANSFORMER_LIVE_CASES))
def test_live_random_transformer_case(seed, dtype, block, backend_for):
    """Random V, L, T <= L, E, F, heads, key_dim, layers, batch, padding (rows may be all padding), some with an
    RMSprop step: float32 against Keras' own layers at the float32 bars, float64 against plain TF ops."""
    cfg, arrays = live_transformer_reference(seed, dtype, block)
    errors = measure_transformer(arrays, cfg, backend_for(dtype))
    if dtype == "float32":
        # trained/ (scratchlm's own gradients through RMSprop) is left out in float32: the step
        # g / (√v + ε) ≈ ±lr·√10 magnifies the float32 round-off of tiny gradient entries (measured up to
        # 3e-6 at lr 0.01). updated/ still checks the rule on Keras' gradients, grad/ the gradients.
        errors = {q: e for q, e in errors.items() if not q.startswith("trained/")}
    assert_within_tolerance(errors, dtype)
