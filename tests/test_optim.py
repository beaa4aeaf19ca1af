"""Optimizers against an independent float64 NumPy transcription of the Keras 3 formulas."""

import copy
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchlm import optim
from scratchlm.backend import get_backend
from scratchlm.errors import BackendUnavailable

SHAPES = {"embedding": (7, 3), "lstm_0/kernel": (3, 8), "lstm_0/bias": (8,), "dense/bias": (5,)}


# -- the reference: the formulas written out plainly, one whole run at a time ----------------
def reference_run(kind, hyper, params, grad_steps):
    """Run ``len(grad_steps)`` steps of optimizer ``kind`` on copies of ``params``; return them."""
    h = {"lr": None, "global_clipnorm": None, **hyper}
    w = {k: np.array(p, dtype=np.float64) for k, p in params.items()}
    state = {k: {} for k in w}
    for t, grads in enumerate(grad_steps, start=1):
        grads = {k: np.array(g, dtype=np.float64) for k, g in grads.items()}
        if h["global_clipnorm"] is not None:
            norm = np.sqrt(sum(np.sum(g**2) for g in grads.values()))
            if norm > h["global_clipnorm"]:
                grads = {k: g * (h["global_clipnorm"] / norm) for k, g in grads.items()}
        for k in w:
            g, s, lr = grads[k], state[k], h["lr"]
            zero = np.zeros_like(w[k])
            if kind == "sgd":
                mom = h.get("momentum", 0.0)
                if mom == 0:
                    w[k] = w[k] - lr * g
                else:
                    s["m"] = mom * s.get("m", zero) - lr * g
                    if h.get("nesterov", False):
                        w[k] = w[k] + mom * s["m"] - lr * g
                    else:
                        w[k] = w[k] + s["m"]
            elif kind == "rmsprop":
                rho, eps, mom = h.get("rho", 0.9), h.get("epsilon", 1e-7), h.get("momentum", 0.0)
                s["v"] = rho * s.get("v", zero) + (1 - rho) * g**2
                if h.get("centered", False):
                    s["a"] = rho * s.get("a", zero) + (1 - rho) * g
                    denom = s["v"] - s["a"] ** 2 + eps
                else:
                    denom = s["v"] + eps
                inc = lr * g / np.sqrt(denom)
                if mom > 0:
                    s["mom"] = mom * s.get("mom", zero) + inc
                    w[k] = w[k] - s["mom"]
                else:
                    w[k] = w[k] - inc
            elif kind == "adam":
                b1, b2, eps = h.get("beta_1", 0.9), h.get("beta_2", 0.999), h.get("epsilon", 1e-7)
                alpha = lr * np.sqrt(1 - b2**t) / (1 - b1**t)
                s["m"] = b1 * s.get("m", zero) + (1 - b1) * g
                s["v"] = b2 * s.get("v", zero) + (1 - b2) * g**2
                v = s["v"]
                if h.get("amsgrad", False):
                    s["vhat"] = np.maximum(s.get("vhat", zero), s["v"])
                    v = s["vhat"]
                w[k] = w[k] - alpha * s["m"] / (np.sqrt(v) + eps)
    return w


def make_problem(seed, steps=4, grad_scale=1.0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    params = {k: rng.normal(size=s).astype(dtype) for k, s in SHAPES.items()}
    grad_steps = [{k: (grad_scale * rng.normal(size=s)).astype(dtype) for k, s in SHAPES.items()} for _ in range(steps)]
    return params, grad_steps


def run(opt, params, grad_steps):
    for grads in grad_steps:
        opt.step(params, grads)
    return params


VARIANTS = [
    ("sgd", {"lr": 0.1}),
    ("sgd", {"lr": 0.05, "momentum": 0.9}),
    ("sgd", {"lr": 0.05, "momentum": 0.5, "nesterov": True}),
    ("sgd", {"lr": 0.05, "nesterov": True}),  # nesterov without momentum is plain SGD
    ("rmsprop", {"lr": 0.01}),
    ("rmsprop", {"lr": 0.01, "momentum": 0.8}),
    ("rmsprop", {"lr": 0.01, "centered": True}),
    ("rmsprop", {"lr": 0.01, "rho": 0.5, "momentum": 0.3, "centered": True, "epsilon": 1e-3}),
    ("adam", {"lr": 0.01}),
    ("adam", {"lr": 0.01, "amsgrad": True}),
    ("adam", {"lr": 0.003, "beta_1": 0.5, "beta_2": 0.9, "epsilon": 1e-4}),
    ("adam", {"lr": 0.003, "beta_1": 0.0, "beta_2": 0.0, "amsgrad": True}),
]
VARIANT_IDS = [f"{kind}-{'-'.join(f'{k}={v}' for k, v in h.items())}" for kind, h in VARIANTS]


# -- the formulas ----------------------------------------------------------------------------
@pytest.mark.parametrize("kind, hyper", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("clipnorm", [None, 1.0, 1e6], ids=["noclip", "clip-active", "clip-inactive"])
def test_matches_reference(kind, hyper, clipnorm):
    params, grad_steps = make_problem(seed=0, steps=5)
    if kind == "adam" and hyper.get("amsgrad"):  # shrinking grads make v fall below vhat
        grad_steps = [{k: g / (t + 1) ** 2 for k, g in grads.items()} for t, grads in enumerate(grad_steps)]
    expected = reference_run(kind, {**hyper, "global_clipnorm": clipnorm}, params, grad_steps)
    got = run(optim.get(kind, global_clipnorm=clipnorm, **hyper), params, grad_steps)
    for k in SHAPES:
        np.testing.assert_allclose(got[k], expected[k], rtol=1e-12, atol=1e-14, err_msg=k)


@settings(max_examples=40, deadline=None)
@given(
    kind=st.sampled_from(["sgd", "rmsprop", "adam"]),
    seed=st.integers(0, 2**32 - 1),
    lr=st.floats(1e-4, 1.0),
    momentum=st.sampled_from([0.0, 0.5, 0.99]),
    rho_or_beta=st.floats(0.01, 0.999),
    flag=st.booleans(),
    clipnorm=st.one_of(st.none(), st.floats(0.1, 100.0)),
    grad_scale=st.sampled_from([1e-3, 1.0, 1e3]),
)
def test_matches_reference_random(kind, seed, lr, momentum, rho_or_beta, flag, clipnorm, grad_scale):
    hyper = {
        "sgd": {"lr": lr, "momentum": momentum, "nesterov": flag},
        "rmsprop": {"lr": lr, "rho": rho_or_beta, "momentum": momentum, "centered": flag},
        "adam": {"lr": lr, "beta_1": momentum, "beta_2": rho_or_beta, "amsgrad": flag},
    }[kind]
    params, grad_steps = make_problem(seed, steps=3, grad_scale=grad_scale)
    expected = reference_run(kind, {**hyper, "global_clipnorm": clipnorm}, params, grad_steps)
    got = run(optim.get(kind, global_clipnorm=clipnorm, **hyper), params, grad_steps)
    for k in SHAPES:
        np.testing.assert_allclose(got[k], expected[k], rtol=1e-9, atol=1e-12, err_msg=k)


@pytest.mark.parametrize("kind, hyper", VARIANTS[1:2] + VARIANTS[7:8] + VARIANTS[9:10])
def test_float32_stays_float32_and_close(kind, hyper):
    params, grad_steps = make_problem(seed=1, dtype=np.float32)
    expected = reference_run(kind, {**hyper, "global_clipnorm": 1.0}, params, grad_steps)
    opt = optim.get(kind, global_clipnorm=1.0, **hyper)
    got = run(opt, params, grad_steps)
    assert all(p.dtype == np.float32 for p in got.values())
    assert all(s.dtype == np.float32 for s in opt.slots.values())
    for k in SHAPES:
        np.testing.assert_allclose(got[k], expected[k], rtol=1e-5, atol=1e-6, err_msg=k)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "kind, hyper", [VARIANTS[4], VARIANTS[8], VARIANTS[10]], ids=[VARIANT_IDS[4], VARIANT_IDS[8], VARIANT_IDS[10]]
)
def test_one_pass_kernels_give_the_numpy_expressions_bits(kind, hyper, dtype, monkeypatch):
    """Adam's and RMSprop's update kernels (scratchlm/kernels/numba/optim.py) against the NumPy code they replace:
    identical weights and slots, bit for bit, over steps with tiny, huge and zero gradients."""
    pytest.importorskip("numba")
    from scratchlm.kernels.numba import optim as optim_numba

    params, grad_steps = make_problem(seed=3, steps=5, dtype=dtype)
    grad_steps[1] = {k: (g * 1e-30).astype(dtype) for k, g in grad_steps[1].items()}
    grad_steps[2] = {k: (g * 1e15).astype(dtype) for k, g in grad_steps[2].items()}
    grad_steps[3] = {k: np.zeros_like(g) for k, g in grad_steps[3].items()}
    calls = []
    for name in ("adam", "rmsprop"):
        kernel = getattr(optim_numba, name)
        monkeypatch.setattr(optim_numba, name, (lambda f: lambda *a: calls.append(f) or f(*a))(kernel))
    results = {}
    for kernels in ("reference", "fused"):
        monkeypatch.setenv("SCRATCHLM_KERNELS", kernels)
        opt = optim.get(kind, **hyper)
        calls.clear()
        results[kernels] = run(opt, copy.deepcopy(params), grad_steps), dict(opt.slots), list(calls)
    (want, want_slots, none), (got, got_slots, used) = results["reference"], results["fused"]
    assert not none and len(used) == 5 * len(SHAPES)
    for k in SHAPES:
        assert got[k].dtype == dtype and np.array_equal(got[k], want[k]), k
    assert want_slots.keys() == got_slots.keys()
    assert all(np.array_equal(got_slots[k], want_slots[k]) for k in want_slots)


def test_keras_adam_first_step():
    """Hand-computed Keras 3 Adam step 1: alpha = lr·sqrt(1−β₂)/(1−β₁), m = 0.1g, v = 0.001g²."""
    w, g = np.array([1.0, -2.0]), np.array([0.5, -4.0])
    optim.Adam(lr=0.1).step({"w": w}, {"w": g})
    alpha = 0.1 * math.sqrt(0.001) / 0.1
    np.testing.assert_allclose(w, [1.0, -2.0] - alpha * 0.1 * g / (np.sqrt(0.001) * np.abs(g) + 1e-7), rtol=1e-14)


# -- clipping ----------------------------------------------------------------------------------
def test_clip_by_global_norm():
    grads = {"a": np.array([3.0, 0.0]), "b": np.array([[4.0]])}
    assert optim.global_norm(grads) == 5.0
    clipped, norm = optim.clip_by_global_norm(grads, 1.0)
    assert norm == 5.0
    np.testing.assert_allclose(clipped["a"], [0.6, 0.0])
    np.testing.assert_allclose(clipped["b"], [[0.8]])
    np.testing.assert_array_equal(grads["a"], [3.0, 0.0])  # inputs untouched
    same, _ = optim.clip_by_global_norm(grads, 5.0)  # norm == clipnorm: no scaling
    assert same is grads


def test_clip_zero_and_nonfinite_gradients():
    zeros = {"a": np.zeros(3)}
    clipped, norm = optim.clip_by_global_norm(zeros, 1.0)
    assert norm == 0.0 and clipped is zeros
    params = {"a": np.ones(3)}
    optim.Adam(global_clipnorm=1.0).step(params, zeros)
    assert np.all(np.isfinite(params["a"]))
    clipped, norm = optim.clip_by_global_norm({"a": np.array([1.0, np.inf])}, 1.0)
    assert math.isinf(norm) and np.all(np.isnan(clipped["a"]))  # as Keras: poisoned, not hidden


# -- in place, grads untouched, slots ----------------------------------------------------------
@pytest.mark.parametrize("kind, hyper", VARIANTS, ids=VARIANT_IDS)
def test_in_place_and_grads_untouched(kind, hyper):
    params, grad_steps = make_problem(seed=2, grad_scale=10.0)
    ids = {k: id(p) for k, p in params.items()}
    before = copy.deepcopy(grad_steps)
    opt = optim.get(kind, global_clipnorm=0.5, **hyper)
    run(opt, params, grad_steps)
    assert {k: id(p) for k, p in params.items()} == ids
    for g, g0 in zip(grad_steps, before, strict=False):
        for k in SHAPES:
            np.testing.assert_array_equal(g[k], g0[k])
    assert opt.iterations == len(grad_steps)
    for key, s in opt.slots.items():
        slot, _, name = key.partition("/")
        assert slot in opt.slot_names and s.shape == SHAPES[name]


def test_slot_names():
    params, grad_steps = make_problem(seed=3, steps=1)

    def names(opt):
        run(opt, copy.deepcopy(params), grad_steps)
        return sorted({key.partition("/")[0] for key in opt.slots})

    assert names(optim.SGD()) == []
    assert names(optim.SGD(momentum=0.9)) == ["momentum"]
    assert names(optim.RMSprop()) == ["velocity"]
    assert names(optim.RMSprop(momentum=0.9, centered=True)) == ["average_gradient", "momentum", "velocity"]
    assert names(optim.Adam()) == ["m", "v"]
    assert names(optim.Adam(amsgrad=True)) == ["m", "v", "vhat"]
    opt = optim.Adam()
    run(opt, copy.deepcopy(params), grad_steps)
    assert set(opt.state_dict()[1]) == {f"{s}/{k}" for s in ("m", "v") for k in SHAPES}


# -- errors ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "cls, kwargs",
    [
        (optim.SGD, {"lr": 0}),
        (optim.SGD, {"lr": -1.0}),
        (optim.SGD, {"lr": float("nan")}),
        (optim.SGD, {"lr": "0.1"}),
        (optim.SGD, {"lr": None}),
        (optim.SGD, {"lr": True}),
        (optim.SGD, {"momentum": 1.0}),
        (optim.SGD, {"momentum": -0.1}),
        (optim.SGD, {"global_clipnorm": 0.0}),
        (optim.SGD, {"global_clipnorm": -1.0}),
        (optim.RMSprop, {"rho": 0.0}),
        (optim.RMSprop, {"rho": 1.0}),
        (optim.RMSprop, {"momentum": 1.5}),
        (optim.RMSprop, {"epsilon": 0.0}),
        (optim.RMSprop, {"lr": 0.0}),
        (optim.Adam, {"beta_1": 1.0}),
        (optim.Adam, {"beta_1": -0.1}),
        (optim.Adam, {"beta_2": 1.0}),
        (optim.Adam, {"epsilon": -1e-7}),
        (optim.Adam, {"global_clipnorm": float("nan")}),
    ],
)
def test_bad_hyperparameters(cls, kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=name):
        cls(**kwargs)


def test_good_edge_hyperparameters():
    optim.SGD(lr=np.float32(0.1), momentum=0)
    optim.Adam(beta_1=0.0, beta_2=0.0, global_clipnorm=1)
    optim.RMSprop(rho=0.999, momentum=0.99)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda g: g.pop("dense/bias"), "no gradient for \\['dense/bias'\\]"),
        (lambda g: g.update(extra=np.zeros(2)), "unknown parameters \\['extra'\\]"),
        (lambda g: g.update({"lstm_0/bias": np.zeros(9)}), "'lstm_0/bias' has shape \\(9,\\)"),
    ],
)
def test_mismatched_grads(mutate, message):
    params, grad_steps = make_problem(seed=4, steps=1)
    grads = dict(grad_steps[0])
    mutate(grads)
    before = copy.deepcopy(params)
    opt = optim.Adam()
    with pytest.raises(ValueError, match=message):
        opt.step(params, grads)
    assert opt.iterations == 0 and opt.slots == {}
    for k in SHAPES:
        np.testing.assert_array_equal(params[k], before[k])


def test_get():
    opt = optim.get("ADAM", lr=0.5, amsgrad=True)
    assert type(opt) is optim.Adam and opt.lr == 0.5 and opt.amsgrad
    assert type(optim.get("RMSprop")) is optim.RMSprop
    assert type(optim.get("sgd")) is optim.SGD
    for bad in ("adagrad", None):
        with pytest.raises(ValueError, match="adam.*rmsprop.*sgd"):
            optim.get(bad)


def test_keras_defaults():
    assert optim.SGD().hyperparameters() == {"lr": 0.01, "momentum": 0.0, "nesterov": False, "global_clipnorm": None}
    assert optim.RMSprop().hyperparameters() == {
        "lr": 0.001,
        "rho": 0.9,
        "momentum": 0.0,
        "epsilon": 1e-7,
        "centered": False,
        "global_clipnorm": None,
    }
    assert optim.Adam().hyperparameters() == {
        "lr": 0.001,
        "beta_1": 0.9,
        "beta_2": 0.999,
        "epsilon": 1e-7,
        "amsgrad": False,
        "global_clipnorm": None,
    }


# -- checkpoints -------------------------------------------------------------------------------
@pytest.mark.parametrize("kind, hyper", VARIANTS, ids=VARIANT_IDS)
def test_state_round_trip_continues_identically(kind, hyper):
    params, grad_steps = make_problem(seed=5, steps=5)
    uninterrupted = run(optim.get(kind, global_clipnorm=2.0, **hyper), copy.deepcopy(params), grad_steps)

    opt = optim.get(kind, global_clipnorm=2.0, **hyper)
    run(opt, params, grad_steps[:2])
    config, arrays = opt.state_dict()
    config = json.loads(json.dumps(config))  # as a checkpoint stores it
    arrays = {k: np.array(a) for k, a in arrays.items()}  # copies, as a file would give
    assert config["name"] == kind and config["iterations"] == 2
    assert config["global_clipnorm"] == 2.0 and all(config[k] == v for k, v in hyper.items())

    resumed = optim.from_state(config, arrays)
    assert type(resumed) is type(opt) and resumed.hyperparameters() == opt.hyperparameters()
    run(resumed, params, grad_steps[2:])
    for k in SHAPES:
        np.testing.assert_array_equal(params[k], uninterrupted[k], err_msg=k)


def test_load_with_backend_converts_arrays():
    params, grad_steps = make_problem(seed=6, steps=2)
    opt = optim.Adam()
    run(opt, params, grad_steps)
    config, arrays = opt.state_dict()
    lists = {k: a.tolist() for k, a in arrays.items()}
    resumed = optim.from_state(config, lists, backend=get_backend("numpy", "float32"))
    assert all(isinstance(a, np.ndarray) and a.dtype == np.float32 for a in resumed.slots.values())
    kept = optim.from_state(config, arrays)
    assert all(kept.slots[k] is arrays[k] for k in arrays)


def test_load_state_errors():
    config, arrays = optim.Adam().state_dict()
    with pytest.raises(ValueError, match="'adam', not 'rmsprop'"):
        optim.RMSprop().load_state_dict(config, arrays)
    with pytest.raises(ValueError, match="unknown optimizer 'adagrad'"):
        optim.from_state({**config, "name": "adagrad"}, arrays)
    with pytest.raises(ValueError, match="bad 'adam' optimizer config"):
        optim.from_state({**config, "rho": 0.9}, arrays)
    with pytest.raises(ValueError, match="unexpected optimizer array 'velocity/w'"):
        optim.from_state(config, {"velocity/w": np.zeros(2)})
    opt = optim.from_state(config, {"m/w": np.zeros(3)})
    with pytest.raises(ValueError, match="slot 'm/w' has shape \\(3,\\)"):
        opt.step({"w": np.zeros(2)}, {"w": np.ones(2)})


def test_resume_with_new_lr():
    opt = optim.Adam(lr=0.1)
    opt.step({"w": np.zeros(2)}, {"w": np.ones(2)})
    config, arrays = opt.state_dict()
    fresh = optim.Adam(lr=0.01)
    fresh.load_state_dict(config, arrays)
    assert fresh.lr == 0.01 and fresh.iterations == 1 and set(fresh.slots) == {"m/w", "v/w"}


# -- it actually optimises ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "opt",
    [
        optim.SGD(lr=0.1),
        optim.SGD(lr=0.05, momentum=0.9, nesterov=True),
        optim.RMSprop(lr=0.01),
        optim.RMSprop(lr=0.01, momentum=0.5, centered=True),
        optim.Adam(lr=0.05),
        optim.Adam(lr=0.05, amsgrad=True, global_clipnorm=1.0),
    ],
    ids=repr,
)
def test_minimises_a_quadratic(opt):
    """f(w) = ½ Σ a (w − c)², an ill-conditioned bowl with its minimum at c."""
    rng = np.random.default_rng(7)
    a, c = np.array([1.0, 3.0, 10.0]), rng.normal(size=3)
    w = np.zeros(3)
    for _ in range(1000):
        opt.step({"w": w}, {"w": a * (w - c)})
    np.testing.assert_allclose(w, c, atol=2e-2)


# -- GPU ---------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("kind, hyper", VARIANTS, ids=VARIANT_IDS)
def test_cupy_matches_numpy(kind, hyper):
    try:
        cp = get_backend("cupy", "float64")
    except BackendUnavailable as exc:
        pytest.skip(str(exc))
    params, grad_steps = make_problem(seed=8)
    expected = reference_run(kind, {**hyper, "global_clipnorm": 1.0}, params, grad_steps)
    opt = optim.get(kind, global_clipnorm=1.0, **hyper)
    dparams = {k: cp.asarray(p) for k, p in params.items()}
    run(opt, dparams, [{k: cp.asarray(g) for k, g in grads.items()} for grads in grad_steps])
    config, arrays = opt.state_dict()
    assert all(type(a) is type(dparams["embedding"]) for a in arrays.values())
    for k in SHAPES:
        np.testing.assert_allclose(cp.to_host(dparams[k]), expected[k], rtol=1e-12, atol=1e-14, err_msg=k)


@pytest.mark.parametrize("kernels", ["reference", "fused"])
def test_the_optimizer_takes_the_kernels_it_is_given_whatever_the_environment(monkeypatch, kernels):
    """kernels="reference" runs the NumPy expressions even where SCRATCHLM_KERNELS says fused, and the other way
    round; both give the same bits."""
    pytest.importorskip("numba")
    monkeypatch.setenv("SCRATCHLM_KERNELS", "fused" if kernels == "reference" else "reference")
    rng = np.random.default_rng(0)
    w, g = rng.standard_normal((4, 5)), rng.standard_normal((4, 5))
    results = []
    for chosen in (kernels, "reference" if kernels == "fused" else "fused"):
        adam = optim.Adam(lr=0.01, kernels=chosen)
        assert (adam._fused(w, g, w, w) is not None) == (chosen == "fused")
        params = {"w": w.copy()}
        adam.step(params, {"w": g})
        results.append(params["w"])
    np.testing.assert_array_equal(*results)


# -- AdamW: PyTorch's torch.optim.AdamW, transcribed ----------------------------------------
def torch_adamw_run(params, grad_steps, lr, betas, eps, weight_decay, decays, clipnorm=None):
    """PyTorch's single-tensor AdamW (torch/optim/adamw.py, non-capturable) written out in float64 NumPy:
    param.mul_(1 − lr·wd); exp_avg.lerp_(grad, 1 − β₁); exp_avg_sq.mul_(β₂).addcmul_(grad, grad, 1 − β₂);
    param.addcdiv_(exp_avg, exp_avg_sq.sqrt() / √(1 − β₂ᵗ) + ε, value=−lr / (1 − β₁ᵗ)).
    Clipping as torch.nn.utils.clip_grad_norm_ (grads · max_norm / (norm + 1e-6) when that is below 1), which
    AdamW uses (Keras' optimizers scale by max_norm / max(norm, max_norm)); applied here when asked, to check that
    the optimizer clips before it decays."""
    w = {k: np.array(p, dtype=np.float64) for k, p in params.items()}
    m = {k: np.zeros_like(p) for k, p in w.items()}
    v = {k: np.zeros_like(p) for k, p in w.items()}
    b1, b2 = betas
    for t, grads in enumerate(grad_steps, start=1):
        if clipnorm is not None:
            norm = math.sqrt(sum(float(np.sum(g * g)) for g in grads.values()))
            grads = {k: g * min(1.0, clipnorm / (norm + 1e-6)) for k, g in grads.items()}
        for k in w:
            g = grads[k]
            if decays(k, w[k]):
                w[k] = w[k] * (1 - lr * weight_decay)
            m[k] = m[k] + (g - m[k]) * (1 - b1)
            v[k] = v[k] * b2 + (1 - b2) * g * g
            denom = np.sqrt(v[k]) / math.sqrt(1 - b2**t) + eps
            w[k] = w[k] - lr / (1 - b1**t) * m[k] / denom
    return w


@pytest.mark.parametrize(
    "hyper",
    [
        {},
        {"lr": 0.01, "beta_2": 0.99, "weight_decay": 0.1},
        {"lr": 0.003, "beta_1": 0.5, "beta_2": 0.9, "epsilon": 1e-4, "weight_decay": 0.5, "global_clipnorm": 1.0},
    ],
)
def test_adamw_matches_pytorchs_formula(hyper):
    rng = np.random.default_rng(3)
    params = {k: rng.normal(size=s) for k, s in SHAPES.items()}
    grad_steps = [{k: rng.normal(size=s) * 0.5**t for k, s in SHAPES.items()} for t in range(7)]
    opt = optim.AdamW(**hyper)
    mine = copy.deepcopy(params)
    for grads in grad_steps:
        opt.step(mine, grads)
    want = torch_adamw_run(
        params,
        grad_steps,
        lr=hyper.get("lr", 1e-3),
        betas=(hyper.get("beta_1", 0.9), hyper.get("beta_2", 0.999)),
        eps=hyper.get("epsilon", 1e-8),
        weight_decay=hyper.get("weight_decay", 0.01),
        decays=lambda k, w: w.ndim >= 2,
        clipnorm=hyper.get("global_clipnorm"),
    )
    for k in SHAPES:
        np.testing.assert_allclose(mine[k], want[k], rtol=1e-12, atol=1e-15, err_msg=k)


def test_adamw_decays_only_matrices_unless_told():
    """With zero gradients Adam's part is zero: what moves is the decay alone."""
    params = {k: np.ones(s) for k, s in SHAPES.items()}
    zeros = {k: np.zeros(s) for k, s in SHAPES.items()}
    optim.AdamW(lr=0.1, weight_decay=0.5).step(params, zeros)
    for k, p in params.items():
        np.testing.assert_array_equal(p, 0.95 if p.ndim >= 2 else 1.0, err_msg=k)
    params = {k: np.ones(s) for k, s in SHAPES.items()}
    optim.AdamW(lr=0.1, weight_decay=0.5, decay=["dense/bias"]).step(params, zeros)
    assert [k for k, p in params.items() if (p != 1).any()] == ["dense/bias"]
    with pytest.raises(ValueError, match=r"decay lists \['nope'\], which are not parameters"):
        optim.AdamW(decay=["nope"]).step(params, zeros)
    for bad in ("embedding", [1]):
        with pytest.raises(ValueError, match="decay must be a list of parameter names"):
            optim.AdamW(decay=bad)
    with pytest.raises(ValueError, match="weight_decay must be >= 0"):
        optim.AdamW(weight_decay=-0.1)


def test_adamw_state_round_trip_continues_exactly():
    rng = np.random.default_rng(0)
    params = {k: rng.normal(size=s) for k, s in SHAPES.items()}
    grad_steps = [{k: rng.normal(size=s) for k, s in SHAPES.items()} for _ in range(4)]
    opt = optim.AdamW(lr=0.01, weight_decay=0.1, beta_2=0.99, decay=["embedding"])
    straight = copy.deepcopy(params)
    for grads in grad_steps:
        opt.step(straight, grads)
    first = optim.AdamW(lr=0.01, weight_decay=0.1, beta_2=0.99, decay=["embedding"])
    resumed = copy.deepcopy(params)
    for grads in grad_steps[:2]:
        first.step(resumed, grads)
    config, arrays = first.state_dict()
    config = json.loads(json.dumps(config))
    assert config["name"] == "adamw" and config["decay"] == ["embedding"] and config["epsilon"] == 1e-8
    second = optim.from_state(config, {k: a.copy() for k, a in arrays.items()})
    for grads in grad_steps[2:]:
        second.step(resumed, grads)
    for k in SHAPES:
        np.testing.assert_array_equal(resumed[k], straight[k])


def test_adamw_in_a_checkpoint(tmp_path):
    from scratchlm import LanguageModel, models

    model = LanguageModel(6, 3, [4], seed=0, dtype="float64")
    opt = optim.AdamW(lr=0.01, weight_decay=0.1)
    x = np.arange(12).reshape(2, 6) % 6
    _, grads = model.loss_and_grads(x[:, :-1], x[:, 1:])
    opt.step(model.params, grads)
    model.save(tmp_path / "c.npz", optimizer=opt)
    loaded = models.load(tmp_path / "c.npz").optimizer
    assert type(loaded) is optim.AdamW and loaded.hyperparameters() == opt.hyperparameters()
    assert loaded.iterations == 1 and sorted(loaded.slots) == sorted(opt.slots)


def test_adamw_leaves_every_bias_and_layernorm_alone_whatever_its_shape():
    """The default goes by name: the attention's (N, K) biases and the GRU's (2, 3H) bias are biases too."""
    shapes = {
        "attention/query/kernel": (4, 2, 3),
        "attention/query/bias": (2, 3),
        "gru_0/bias": (2, 6),
        "layernorm/gamma": (4,),
        "layernorm/beta": (4,),
        "embedding/token_embeddings": (5, 4),
    }
    params = {k: np.ones(s) for k, s in shapes.items()}
    optim.AdamW(lr=0.1, weight_decay=0.5).step(params, {k: np.zeros(s) for k, s in shapes.items()})
    decayed = sorted(k for k, p in params.items() if (p != 1).any())
    assert decayed == ["attention/query/kernel", "embedding/token_embeddings"]
