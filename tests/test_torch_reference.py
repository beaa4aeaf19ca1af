"""scratchlm's GPT against nanoGPT's model in PyTorch: same weights, same batches -> same logits, loss,
gradients and 10 training steps.

The fixtures in ``tests/reference/torch/`` were written by ``tests/reference/make_torch_reference.py`` with
PyTorch and nanoGPT's ``model.py`` (versions and cases in its ``manifest.json``); these tests need neither.
Each case (1 and 2 layers, with and without biases, float64 and float32: V 11, T 8, E 8, 2 heads) is loaded
into ``TransformerLM(block="gpt", activation="gelu", layernorm_epsilon=1e-5, tie_embeddings=True)`` on the
NumPy reference and fused paths. The ids are >= 1: scratchlm reads id 0 as padding, nanoGPT as a token.

Bars, relative per tensor (max|a − b| / max|b|, b nanoGPT's), float64 / float32, and the worst measured
(PyTorch 2.14, NumPy reference and fused paths):
    forward    logits at every position, the loss                 1e-9 / 1e-5     5.5e-16 / 2.6e-7
    gradient   every parameter                                    1e-9 / 1e-4     1.2e-15 / 1.3e-6
    training   each step's loss                                   1e-9 / 2e-6     3.7e-16 / 2.0e-7
               the weights after the 10 steps                     1e-9 / 2e-5     2.0e-15 / 1.8e-6
(float32 training: the bars of the Keras trajectories, tests/test_tf_reference.py.) The key projection's bias
gets no gradient in exact arithmetic (softmax ignores the per-query constant q·bk), so its gradient, and the
weights that round-off alone moves, are compared on the scale of the largest gradient or weight.

Training replays nanoGPT's train.py: ``optimizer.lr = Cosine(...)(step)`` (nanoGPT's get_lr), the loss and
gradients, clipping to global norm 1.0, ``optim.AdamW`` (β 0.9, 0.99, ε 1e-8, weight decay 0.1 on the
weights nanoGPT's ``configure_optimizers`` decays). Two differences from PyTorch are made explicit here:

* decay groups: nanoGPT decays the >= 2-D tensors, and its attention biases are one (3E,) tensor; scratchlm
  keeps the query, key and value biases as (N, K) arrays, so AdamW's default rule goes by name (weights decay,
  biases and LayerNorm do not): the replay uses that default, and :func:`test_the_default_decay_is_nanogpts`
  checks it is nanoGPT's group.
* clipping: ``clip_grad_norm_`` scales by min(1, c/(norm + 1e-6)); so does scratchlm's AdamW with
  ``global_clipnorm`` (its Keras optimizers scale by c/max(norm, c)). :func:`test_training_steps` clips by hand;
  :func:`test_clipping_formulas` runs the optimizer's own clipping through
  :func:`scratchlm.train.step.train_step`, as the Trainer does (with Keras' formula it was 5.6e-10 off in the
  losses and 2.2e-7 in the weights after 10 steps).

The live test (marker ``torch``) regenerates a case with PyTorch in-process and compares it to the committed one.
"""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from scratchlm import get_backend, optim
from scratchlm.batching import Batch
from scratchlm.errors import BackendUnavailable
from scratchlm.models import TransformerLM
from scratchlm.schedules import Cosine
from scratchlm.train.step import train_step
from tests.helpers.reference import ZERO_GRADIENT, gradient_errors, relative

REFERENCE = Path(__file__).parent / "reference"
FIXTURES = REFERENCE / "torch"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
CASES = sorted(MANIFEST["cases"])
KERNELS = ["reference", "fused"]
FORWARD = {"float64": 1e-9, "float32": 1e-5}
GRADIENT = {"float64": 1e-9, "float32": 1e-4}
TRAINING_LOSS = {"float64": 1e-9, "float32": 2e-6}
TRAINING_WEIGHTS = {"float64": 1e-9, "float32": 2e-5}


def load(name):
    """The fixture's arrays, as a dict."""
    with np.load(FIXTURES / f"{name}.npz") as data:
        return dict(data)


def prefixed(arrays, prefix):
    """{name: array} of the arrays stored as ``prefix/name``."""
    return {k[len(prefix) + 1 :]: v for k, v in arrays.items() if k.startswith(prefix + "/")}


def build(case, kernels, weights):
    """nanoGPT's GPT of ``case`` as a scratchlm TransformerLM on the NumPy ``kernels`` path, with ``weights``."""
    try:
        backend = get_backend("numpy", case["dtype"], kernels=kernels)
    except BackendUnavailable as exc:
        pytest.skip(str(exc))
    E, N = case["n_embd"], case["n_head"]
    model = TransformerLM(
        case["vocab_size"],
        case["block_size"],
        embed_dim=E,
        dense_dim=4 * E,
        num_heads=N,
        key_dim=E // N,
        num_layers=case["n_layer"],
        block="gpt",
        backend=backend,
        dtype=case["dtype"],
        activation="gelu",
        layernorm_epsilon=1e-5,
        tie_embeddings=True,
        use_bias=case["bias"],
    )
    assert sorted(model.params) == sorted(weights), "the fixture's parameters are not the model's"
    model.set_params(weights)
    return model


def nanogpt_decay(params):
    """The parameters nanoGPT's configure_optimizers decays: its >= 2-D tensors, i.e. kernels and embeddings."""
    return [name for name in params if name.endswith(("/kernel", "_embeddings"))]


@pytest.fixture(params=KERNELS)
def kernels(request):
    return request.param


@pytest.mark.gradcheck
@pytest.mark.parametrize("name", CASES)
def test_forward_and_gradients(name, kernels):
    case, ref = MANIFEST["cases"][name], load(name)
    model = build(case, kernels, prefixed(ref, "weights"))
    assert ref["x"].min() >= 1, "id 0 is padding to scratchlm: the fixtures must not use it"
    logits, _ = model.forward(ref["x"])
    loss, grads = model.loss_and_grads(ref["x"], ref["y"])
    dtype = case["dtype"]
    assert logits.dtype == np.dtype(dtype)
    assert relative(logits, ref["logits"]) <= FORWARD[dtype]
    assert relative(loss, ref["loss"]) <= FORWARD[dtype]
    errors = gradient_errors(grads, prefixed(ref, "grads"))
    worst = max(errors, key=errors.get)
    assert errors[worst] <= GRADIENT[dtype], f"{worst}: {errors[worst]:.3g}"


def replay(name, kernels, clipping):
    """The fixture's 10 steps on scratchlm -> (model, losses, gradient norms before clipping).

    clipping "torch": the gradients scaled by clip_grad_norm_'s min(1, c/(norm + 1e-6)) by hand, the optimizer
    not clipping; "scratchlm": the optimizer's own global_clipnorm (AdamW's is clip_grad_norm_'s), as the
    Trainer runs it.
    """
    case, ref = MANIFEST["cases"][name], load(name)
    model = build(case, kernels, prefixed(ref, "weights"))
    recipe, lr = MANIFEST["optimizer"], MANIFEST["schedule"]
    schedule = Cosine(lr["learning_rate"], lr["min_lr"], lr["lr_decay_iters"], warmup_steps=lr["warmup_iters"])
    clipnorm = recipe["grad_clip"]
    optimizer = optim.AdamW(
        lr=lr["learning_rate"],
        beta_1=recipe["betas"][0],
        beta_2=recipe["betas"][1],
        epsilon=recipe["eps"],
        weight_decay=recipe["weight_decay"],
        decay=None,  # the default: nanoGPT's group (test_the_default_decay_is_nanogpts)
        global_clipnorm=clipnorm if clipping == "scratchlm" else None,
        kernels=kernels,
    )
    losses, norms = [], []
    for step, (x, y) in enumerate(zip(ref["train_x"], ref["train_y"], strict=True)):
        optimizer.lr = schedule(step)
        assert optimizer.lr == pytest.approx(ref["train_lr"][step], rel=1e-15, abs=0)
        if clipping == "scratchlm":
            result = train_step(model, optimizer, Batch(x, y, None, x.size))
            loss, norm = result.loss, result.grad_norm
        else:
            loss, grads = model.loss_and_grads(x, y, training=True)
            norm = optim.global_norm(grads)
            scale = min(1.0, clipnorm / (norm + 1e-6))
            optimizer.step(model.params, {n: g * scale for n, g in grads.items()})
        losses.append(loss)
        norms.append(norm)
    return model, losses, norms


def weight_errors(params, want):
    """{name: relative error} of the trained weights; the key bias's on the largest weight's scale: only round-off
    moves it (its gradient is zero in exact arithmetic, and Adam turns round-off g into steps of lr·g/(|g| + ε))."""
    scale = max(float(np.abs(w).max()) for w in want.values())
    return {
        name: float(np.abs(np.asarray(params[name], np.float64) - want[name]).max() / scale)
        if name.endswith(ZERO_GRADIENT)
        else relative(params[name], want[name])
        for name in want
    }


@pytest.mark.gradcheck
@pytest.mark.parametrize("name", CASES)
def test_training_steps(name, kernels):
    ref, dtype = load(name), MANIFEST["cases"][name]["dtype"]
    model, losses, norms = replay(name, kernels, "torch")
    assert relative(norms, ref["train_norm"]) <= GRADIENT[dtype]
    assert relative(losses, ref["train_loss"]) <= TRAINING_LOSS[dtype]
    errors = weight_errors(model.params, prefixed(ref, "final"))
    worst = max(errors, key=errors.get)
    assert errors[worst] <= TRAINING_WEIGHTS[dtype], f"{worst}: {errors[worst]:.3g}"


@pytest.mark.gradcheck
@pytest.mark.parametrize("name", [n for n in CASES if n.endswith("float64")])
def test_clipping_formulas(name, kernels):
    """scratchlm's own clipping, through train_step as the Trainer runs it: AdamW clips as clip_grad_norm_ does, so
    the steps are PyTorch's at the float64 bar whether or not a step clips."""
    ref = load(name)
    model, losses, _ = replay(name, kernels, "scratchlm")
    errors = weight_errors(model.params, prefixed(ref, "final"))
    assert relative(losses, ref["train_loss"]) <= TRAINING_LOSS["float64"]
    assert max(errors.values()) <= TRAINING_WEIGHTS["float64"]


@pytest.mark.torch
def test_fixtures_are_reproducible():
    """make_torch_reference.py, run here with PyTorch, writes the committed arrays again (round-off aside)."""
    pytest.importorskip("torch")
    spec = importlib.util.spec_from_file_location("make_torch_reference", REFERENCE / "make_torch_reference.py")
    maker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(maker)
    if not (maker.NANOGPT / "model.py").exists():
        pytest.skip(f"nanoGPT's model.py is not in {maker.NANOGPT}")
    name = "gpt_2layer_bias-float64"
    assert maker.CASES[name] == MANIFEST["cases"][name]
    made, ref = maker.make_case(maker.CASES[name], maker.load_nanogpt(maker.NANOGPT)), load(name)
    assert sorted(made) == sorted(ref)
    for key, want in ref.items():
        if want.dtype.kind in "iu" or key.startswith("weights/"):
            np.testing.assert_array_equal(made[key], want, err_msg=key)
        else:
            assert relative(made[key], want) <= 1e-12, key


@pytest.mark.parametrize("name", CASES)
def test_the_default_decay_is_nanogpts(name):
    """AdamW's default decays exactly what nanoGPT's configure_optimizers decays: kernels and embeddings."""
    case = MANIFEST["cases"][name]
    model = build(case, "reference", prefixed(load(name), "weights"))
    adamw = optim.AdamW()
    assert sorted(k for k in model.params if adamw.decays(k)) == sorted(nanogpt_decay(model.params))
