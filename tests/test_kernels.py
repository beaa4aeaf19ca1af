"""The fused kernels against the reference path: the same numbers, on random shapes, in both dtypes.

Every fused operation is compared with the plain-``xp`` code it replaces, run on
the same weights and inputs: the LSTM and GRU layers (forward and every gradient,
with masks, initial states, sequence and last-step outputs; the GRU also with
token-table input), the whole model with either cell (one-hot,
embedding-table and embedding-direct input, stacked layers, last-step loss),
the softmax cross-entropy, the scatter-add and generation. The layer tests run
the CPU time loops four ways (``LOOPS``): as the batch's shards see fit, in
three forced shards (``scratchlm/kernels/numba/parallel/shards.py``), the LSTM's with three threads
forced to split every step's hidden units (``scratchlm/kernels/numba/parallel/barrier.py``), and as the
Python loop used where NumPy's BLAS is not an OpenBLAS the kernels can call. An array passes when
max |fused − reference| <= rtol · max |reference| + atol, with

* float64: rtol 1e-12, atol 1e-14 — both paths do the same arithmetic up to
  libm-versus-NumPy last-bit differences in exp/tanh and the order of sums;
* float32: rtol 2e-5, atol 1e-6 — the fused σ/tanh differ from NumPy's by
  <= ~1.5e-7 relative (``test_float32_activations_are_accurate``), a few time
  steps and sums amplify that, and a gradient that is a small difference of
  O(1) terms (e.g. one dh_0 entry of 1e-4) carries their ~1e-7 absolute error.

The CuPy kernels are compared the same way when a GPU is present.
"""

import contextlib
import importlib.util
import subprocess
import sys
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scratchlm import BackendUnavailable, LanguageModel, TransformerLM, get_backend
from scratchlm.backend import KERNELS_ENV, Backend
from scratchlm.gradcheck import check_model
from scratchlm.kernels import FUSED
from scratchlm.kernels.layers import FusedGRU, FusedLSTM
from scratchlm.layers import LSTM
from scratchlm.layers.gru import GRU
from scratchlm.losses import softmax_cross_entropy
from scratchlm.models.recurrent import CELLS

pytest.importorskip("numba")

TOL = {"float64": 1e-12, "float32": 2e-5}  # rtol, and for the loss
ATOL = {"float64": 1e-14, "float32": 1e-6}
EXAMPLES = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def close(got, want, dtype):
    """max |got − want| <= rtol · max |want| + atol (see the module docstring)."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape
    return np.max(np.abs(got - want), initial=0.0) <= TOL[dtype] * np.max(np.abs(want), initial=0.0) + ATOL[dtype]


def backends(dtype, name="numpy"):
    return get_backend(name, dtype, kernels="reference"), get_backend(name, dtype, kernels="fused")


@pytest.fixture(scope="module", autouse=True)
def compiled_kernels():
    """Compile (or load from Numba's cache) every kernel once, before the timed examples."""
    for dtype in ("float32", "float64"):
        for cell in ("lstm", "gru"):
            model = LanguageModel(5, None, [3, 2], dtype=dtype, backend=get_backend("numpy", dtype, "fused"), cell=cell)
            x = np.zeros((2, 3), dtype=np.int64)
            mask = np.ones((2, 3), dtype=bool)
            model.loss_and_grads(x, x, mask=mask)
            model.loss_and_grads(x, x[:, 0], last_only=True)
            model.generate([1], 2, seed=0)


LOOPS = ["as-chosen", "three-shards", "three-unit-threads", "no-openblas"]


@contextlib.contextmanager
def cpu_loop(how):
    """Run the fused CPU time loops ``how`` (one of LOOPS) inside the block."""
    from scratchlm.kernels.numba.parallel import blas, shards

    if how == "three-shards":
        with mock.patch.object(shards, "count", lambda rows: min(3, rows)):
            yield
    elif how == "three-unit-threads":
        with mock.patch.object(shards, "parties", lambda rows, units, most_rows, least_units=8: 3):
            yield
    elif how == "no-openblas":  # NumPy on another BLAS: one thread (the GRU's loops in Python around matmul)
        with mock.patch.dict(blas.GEMM, clear=True):
            yield
    else:
        yield


def random_mask(rng, T, B):
    """(T, B) bool, anything from all real to all padding."""
    return rng.random((T, B)) < rng.choice([0.3, 0.7, 1.0])


# -- activations -------------------------------------------------------------------------------------


def test_float32_activations_are_accurate():
    from scratchlm.kernels.numba.activations import exp, sigmoid, tanh
    from scratchlm.kernels.numba.options import jit

    @jit
    def apply(x, out):
        for k in range(x.shape[0]):
            out[0, k], out[1, k], out[2, k] = tanh(x[k]), sigmoid(x[k]), exp(x[k])

    x = np.concatenate(
        [np.linspace(-90, 90, 400001), np.geomspace(1e-30, 20, 20001), -np.geomspace(1e-30, 20, 20001)]
    ).astype(np.float32)
    out = np.empty((3, x.size), dtype=np.float32)
    apply(x, out)
    x64 = x.astype(np.float64)
    exact = [np.tanh(x64), 1 / (1 + np.exp(-x64)), np.exp(x64)]
    kept = [np.ones(x.size, bool), exact[1] > 1e-30, (x64 > -87) & (x64 < 88)]  # normal float32 range
    for name, got, want, k in zip(("tanh", "sigmoid", "exp"), out, exact, kept, strict=False):
        rel = np.abs(got[k] - want[k]) / np.abs(want[k]).clip(1e-300)
        assert rel.max() <= 2e-7, (name, rel.max(), x[k][rel.argmax()])


def test_float32_erf_is_within_its_bound_and_float64_is_libm():
    """erf for the exact GELU: Abramowitz & Stegun 7.1.26 in float32 (absolute error <= 1.5e-7, plus rounding:
    5e-7 in all), the C library's in float64 (the same bits as math.erf)."""
    import math

    from scratchlm.kernels.numba.activations import erf
    from scratchlm.kernels.numba.options import jit

    @jit
    def apply(x, out):
        for k in range(x.shape[0]):
            out[k] = erf(x[k])

    x = np.concatenate([np.linspace(-12, 12, 200001), np.geomspace(1e-30, 3, 2001), -np.geomspace(1e-30, 3, 2001)])
    want = np.array([math.erf(v) for v in x])
    for dtype, bound in ((np.float32, 5e-7), (np.float64, 0.0)):
        xs = x.astype(dtype)
        got = np.empty_like(xs)
        apply(xs, got)
        exact = want if dtype == np.float64 else np.array([math.erf(float(v)) for v in xs])
        assert np.abs(got.astype(np.float64) - exact).max() <= bound, dtype


def test_float64_activations_are_libm():
    from scratchlm.kernels.numba.activations import sigmoid, tanh
    from scratchlm.kernels.numba.options import jit

    @jit
    def apply(x, out):
        for k in range(x.shape[0]):
            out[0, k], out[1, k] = tanh(x[k]), sigmoid(x[k])

    x = np.linspace(-40, 40, 10001)
    out = np.empty((2, x.size))
    apply(x, out)
    np.testing.assert_allclose(out[0], np.tanh(x), rtol=1e-15, atol=1e-300)
    np.testing.assert_allclose(out[1], 1 / (1 + np.exp(-x)), rtol=1e-15, atol=1e-300)


# -- the LSTM layer ------------------------------------------------------------------------------------


def lstm_pair(dtype, D, H, sequences, rng):
    ref_be, fused_be = backends(dtype)
    ref = ref_be.layer(LSTM)(D, H, ref_be, Backend.rng(7), return_sequences=sequences)
    fused = fused_be.layer(LSTM)(D, H, fused_be, Backend.rng(7), return_sequences=sequences)
    assert type(ref) is LSTM and type(fused) is FusedLSTM
    bias = rng.standard_normal(4 * H)  # every gate matters
    ref.bias[:] = bias
    fused.bias[:] = bias
    return ref, fused


def run_lstm(lstm, x, state, mask, dy, dstate):
    y, cache = lstm.forward(x, state, mask)
    hT, cT = cache.final_state
    d, grads = lstm.backward(cache, dy, dstate)
    dh0, dc0 = d.dstate
    return {"y": y, "h_T": hT, "c_T": cT, "dx": d.dx, "dh_0": dh0, "dc_0": dc0, **grads}


@EXAMPLES
@given(
    T=st.integers(1, 7),
    B=st.integers(1, 5),
    D=st.integers(1, 6),
    H=st.integers(1, 11),
    masked=st.booleans(),
    sequences=st.booleans(),
    with_state=st.booleans(),
    dtype=st.sampled_from(["float32", "float64"]),
    seed=st.integers(0, 2**16),
    loop=st.sampled_from(LOOPS),
)
def test_lstm_layer_matches_reference(T, B, D, H, masked, sequences, with_state, dtype, seed, loop):
    rng = np.random.default_rng(seed)
    ref, fused = lstm_pair(dtype, D, H, sequences, rng)
    cast = ref.backend.asarray
    x = cast(rng.standard_normal((T, B, D)))
    state = (cast(rng.standard_normal((B, H))), cast(rng.standard_normal((B, H)))) if with_state else None
    mask = random_mask(rng, T, B) if masked else None
    dy = cast(rng.standard_normal((T, B, H) if sequences else (B, H)))
    dstate = (cast(rng.standard_normal((B, H))), cast(rng.standard_normal((B, H))))
    want = run_lstm(ref, x, state, mask, dy, dstate)
    with cpu_loop(loop):
        got = run_lstm(fused, x, state, mask, dy, dstate)
    for name in want:
        assert close(got[name], want[name], dtype), name


def test_masked_fused_step_keeps_state_exactly(rng):
    """A masked step copies h and c bit for bit, as the reference does."""
    _, fused_be = backends("float32")
    lstm = fused_be.layer(LSTM)(3, 5, fused_be, Backend.rng(0))
    x = fused_be.asarray(rng.standard_normal((4, 2, 3)))
    mask = np.array([[1, 0], [0, 0], [1, 1], [0, 1]], dtype=bool)
    _, cache = lstm.forward(x, None, mask)
    hs, cs = cache.steps.hs, cache.steps.cs
    for t, b in zip(*np.nonzero(~mask), strict=False):
        np.testing.assert_array_equal(hs[t + 1, b], hs[t, b])
        np.testing.assert_array_equal(cs[t + 1, b], cs[t, b])


# -- the GRU layer -------------------------------------------------------------------------------------

GRU_INPUTS = ("dense", "one-hot", "embedding-table")


def gru_pair(dtype, D, H, sequences, rng):
    ref_be, fused_be = backends(dtype)
    ref = ref_be.layer(GRU)(D, H, ref_be, Backend.rng(7), return_sequences=sequences)
    fused = fused_be.layer(GRU)(D, H, fused_be, Backend.rng(7), return_sequences=sequences)
    assert type(ref) is GRU and type(fused) is FusedGRU
    bias = rng.standard_normal((2, 3 * H))  # every gate matters, b_in and b_rec
    ref.bias[:] = bias
    fused.bias[:] = bias
    return ref, fused


def run_gru(gru, inp, x, E, state, mask, dy, dstate):
    if inp == "dense":
        y, cache = gru.forward(x, state, mask)
    else:  # x: (T, B) token ids
        y, cache = gru.forward_tokens(x, E, state, mask)
    (hT,) = cache.final_state
    gates, uh = cache.steps.gates.copy(), cache.steps.uh.copy()  # the backward overwrites them (fused)
    d, grads = gru.backward(cache, dy, dstate)
    (dh0,) = d.dstate
    out = {"y": y, "h_T": hT, "gates": gates, "uh": uh, "hs": cache.steps.hs, "dh_0": dh0, **grads}
    for name in ("dx", "dembeddings"):  # what was fed: x, or E (token input)
        if getattr(d, name) is not None:
            out[name] = getattr(d, name)
    return out


@EXAMPLES
@given(
    T=st.integers(1, 7),
    B=st.integers(1, 5),
    D=st.integers(1, 6),
    H=st.integers(1, 11),
    inp=st.sampled_from(GRU_INPUTS),
    masked=st.booleans(),
    sequences=st.booleans(),
    with_state=st.booleans(),
    dtype=st.sampled_from(["float32", "float64"]),
    seed=st.integers(0, 2**16),
    loop=st.sampled_from(LOOPS),
)
def test_gru_layer_matches_reference(T, B, D, H, inp, masked, sequences, with_state, dtype, seed, loop):
    rng = np.random.default_rng(seed)
    ref, fused = gru_pair(dtype, D, H, sequences, rng)
    cast = ref.backend.asarray
    E = None
    if inp == "dense":
        x = cast(rng.standard_normal((T, B, D)))
    else:
        V = D if inp == "one-hot" else 1 + seed % 9  # one-hot: D = V; embedding: D = E's width
        if inp == "embedding-table":
            E = cast(rng.standard_normal((V, D)))
        x = rng.integers(0, V, (T, B))
    state = (cast(rng.standard_normal((B, H))),) if with_state else None
    mask = random_mask(rng, T, B) if masked else None
    dy = cast(rng.standard_normal((T, B, H) if sequences else (B, H)))
    dstate = (cast(rng.standard_normal((B, H))),)
    want = run_gru(ref, inp, x, E, state, mask, dy, dstate)
    with cpu_loop(loop):
        got = run_gru(fused, inp, x, E, state, mask, dy, dstate)
    assert set(got) == set(want)
    for name in want:
        assert close(got[name], want[name], dtype), name


def test_masked_fused_gru_step_keeps_state_exactly(rng):
    """A masked step copies h bit for bit, as the reference does; its gradients are exactly zero."""
    _, fused_be = backends("float32")
    gru = fused_be.layer(GRU)(3, 5, fused_be, Backend.rng(0))
    gru.bias[:] = rng.standard_normal(gru.bias.shape)
    x = fused_be.asarray(rng.standard_normal((4, 2, 3)))
    mask = np.array([[1, 0], [0, 0], [1, 1], [0, 1]], dtype=bool)
    y, cache = gru.forward(x, (fused_be.asarray(rng.standard_normal((2, 5))),), mask)
    hs = cache.steps.hs
    for t, b in zip(*np.nonzero(~mask), strict=False):
        np.testing.assert_array_equal(hs[t + 1, b], hs[t, b])
    np.testing.assert_array_equal(y[0, 1], 0.0)  # before the first real step
    np.testing.assert_array_equal(y[1, 1], 0.0)
    np.testing.assert_array_equal(y[1, 0], y[0, 0])  # a masked step repeats the output
    dy = fused_be.asarray(rng.standard_normal(y.shape))
    dstate = (fused_be.asarray(rng.standard_normal((2, 5))),)
    dx = gru.backward(cache, dy, dstate)[0].dx
    for t, b in zip(*np.nonzero(~mask), strict=False):
        np.testing.assert_array_equal(cache.steps.gates[t, b], 0.0)  # dX̂ of a masked step
        np.testing.assert_array_equal(dx[t, b], 0.0)


# -- the whole model -------------------------------------------------------------------------------------

INPUTS = {
    "one-hot": dict(V=7, embedding_dim=None),
    "embedding-table": dict(V=7, embedding_dim=4),
    "embedding-direct": dict(V=61, embedding_dim=4),
}  # V > T·B: gather, then one GEMM


def model_pair(dtype, inp, hidden_sizes, **kw):
    """A reference and a fused model with the same weights (random biases); ``cell`` among ``kw``."""
    spec = INPUTS[inp]
    models = [
        LanguageModel(spec["V"], spec["embedding_dim"], hidden_sizes, backend=be, dtype=dtype, seed=3, **kw)
        for be in backends(dtype)
    ]
    rng = np.random.default_rng(5)
    for lstms in zip(*(m.recurrent for m in models), strict=False):
        bias = rng.standard_normal(lstms[0].bias.shape)
        for lstm in lstms:
            lstm.bias[:] = bias
    return models


@EXAMPLES
@given(
    inp=st.sampled_from(list(INPUTS)),
    hidden_sizes=st.lists(st.integers(1, 9), min_size=1, max_size=2),
    T=st.integers(1, 6),
    B=st.integers(1, 4),
    masked=st.booleans(),
    last_only=st.booleans(),
    dtype=st.sampled_from(["float32", "float64"]),
    seed=st.integers(0, 2**16),
    cell=st.sampled_from(["lstm", "gru"]),
    loop=st.sampled_from(LOOPS),
)
def test_model_matches_reference(inp, hidden_sizes, T, B, masked, last_only, dtype, seed, cell, loop):
    ref, fused = model_pair(dtype, inp, hidden_sizes, cell=cell)
    rng = np.random.default_rng(seed)
    V = ref.vocab_size
    x = rng.integers(0, V, (B, T))
    y = rng.integers(0, V, (B,) if last_only else (B, T))
    mask = None
    if masked:
        mask = random_mask(rng, T, B).T
        mask[0, -1] = True  # at least one scored token
    loss_ref, grads_ref = ref.loss_and_grads(x, y, mask=mask, last_only=last_only)
    with cpu_loop(loop):
        loss_fused, grads_fused = fused.loss_and_grads(x, y, mask=mask, last_only=last_only)
    assert abs(loss_fused - loss_ref) <= TOL[dtype] * abs(loss_ref)
    for name in grads_ref:
        assert close(grads_fused[name], grads_ref[name], dtype), name
    logits_ref, state_ref = ref.forward(x, mask=mask)
    with cpu_loop(loop):
        logits_fused, state_fused = fused.forward(x, mask=mask)
    assert close(logits_fused, logits_ref, dtype)
    for parts_f, parts_r in zip(state_fused, state_ref, strict=False):  # LSTM (h, c), GRU (h,)
        assert len(parts_f) == len(parts_r) == (2 if cell == "lstm" else 1)
        assert all(close(f, r, dtype) for f, r in zip(parts_f, parts_r, strict=False))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_stateful_fused_model_carries_state(rng, cell):
    ref, fused = model_pair("float64", "embedding-table", [5, 4], stateful=True, cell=cell)
    for _ in range(3):
        x = rng.integers(0, 7, (2, 4))
        loss_ref, grads_ref = ref.loss_and_grads(x, x)
        loss_fused, grads_fused = fused.loss_and_grads(x, x)
        assert loss_fused == pytest.approx(loss_ref, rel=1e-12)
        assert all(close(grads_fused[k], grads_ref[k], "float64") for k in grads_ref)


@pytest.mark.gradcheck
@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize(
    "inp,hidden_sizes,masked,last_only",
    [
        ("one-hot", (5,), True, True),
        ("embedding-table", (5, 6), True, False),
        ("embedding-direct", (4,), False, False),
    ],
)
def test_float64_gradients_through_the_fused_path(rng, inp, hidden_sizes, masked, last_only, cell):
    _, model = model_pair("float64", inp, hidden_sizes, cell=cell)
    assert model.backend.kernels == "fused" and all(type(layer) is FUSED[CELLS[cell]] for layer in model.recurrent)
    B, T, V = 3, 5, model.vocab_size
    x = rng.integers(0, V, (B, T))
    y = rng.integers(0, V, (B,) if last_only else (B, T))
    mask = None
    if masked:
        mask = np.ones((B, T), dtype=bool)
        mask[0, -2:] = False
        mask[1, :2] = False
    errors = check_model(model, x, y, mask=mask, last_only=last_only)
    assert max(errors.values()) <= 1e-6, errors


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(
    "inp,hidden_sizes,masked,last_only",
    [
        ("one-hot", (6,), True, True),
        ("embedding-table", (5, 7), True, False),
        ("embedding-direct", (4, 3), False, False),
        ("one-hot", (8, 5), False, True),
    ],
)
def test_gru_model_gradients_are_the_same_on_both_kernel_paths(dtype, inp, hidden_sizes, masked, last_only):
    ref, fused = model_pair(dtype, inp, hidden_sizes, cell="gru")
    assert type(ref.recurrent[0]) is GRU and type(fused.recurrent[0]) is FusedGRU
    rng = np.random.default_rng(len(hidden_sizes) + masked)
    B, T, V = 4, 7, ref.vocab_size
    x = rng.integers(0, V, (B, T))
    y = rng.integers(0, V, (B,) if last_only else (B, T))
    mask = None
    if masked:
        mask = np.ones((B, T), dtype=bool)
        mask[0, -2:] = False
        mask[1, :3] = False
        mask[2, 3] = False
    loss_ref, grads_ref = ref.loss_and_grads(x, y, mask=mask, last_only=last_only)
    loss_fused, grads_fused = fused.loss_and_grads(x, y, mask=mask, last_only=last_only)
    assert loss_fused == pytest.approx(loss_ref, rel=TOL[dtype])
    assert set(grads_fused) == set(grads_ref) and any(k.startswith("gru_") for k in grads_ref)
    for name in grads_ref:
        assert close(grads_fused[name], grads_ref[name], dtype), name


# -- loss and scatter-add ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("masked", [False, True])
def test_softmax_cross_entropy_matches_reference(rng, dtype, masked):
    fused = get_backend("numpy", dtype, "fused").ops.softmax_cross_entropy
    logits = (rng.standard_normal((5, 7, 11)) * 4).astype(dtype)
    logits[0, 0, 3] = 90  # a row far from the others
    targets = rng.integers(0, 11, (5, 7))
    mask = rng.random((5, 7)) < 0.6 if masked else None
    loss_ref, d_ref = softmax_cross_entropy(logits, targets, mask)
    buffer = logits.copy()
    loss, d = fused(buffer, targets, mask)
    assert d is buffer or np.shares_memory(d, buffer)  # in place
    assert loss == pytest.approx(loss_ref, rel=TOL[dtype])
    assert close(d, d_ref, dtype)


def test_fused_softmax_cross_entropy_rejects_an_empty_mask(rng):
    fused = get_backend("numpy", "float32", "fused").ops.softmax_cross_entropy
    with pytest.raises(ValueError, match="scores no token"):
        fused(rng.standard_normal((2, 3, 4)).astype(np.float32), np.zeros((2, 3), int), np.zeros((2, 3), bool))


@pytest.mark.parametrize("V,N,C", [(1, 5, 3), (7, 40, 9), (50, 3, 2), (5, 0, 3), (3, 100, 17)])
@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
def test_scatter_add_matches_a_plain_loop(V, N, C, index_dtype):
    be = get_backend("numpy", "float64", "fused")
    rng = np.random.default_rng(V + N)
    index = rng.integers(0, V, N).astype(index_dtype)
    rows = rng.standard_normal((N, C))
    expected = np.zeros((V, C))
    for k in range(N):
        expected[index[k]] += rows[k]
    target = np.zeros((V, C))
    assert be.scatter_add(target, index, rows) is target
    np.testing.assert_allclose(target, expected, rtol=1e-12, atol=1e-12)


# -- generation ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(
    "inp,hidden_sizes", [("one-hot", (6,)), ("embedding-table", (5, 7)), ("embedding-direct", (4,))]
)
@pytest.mark.parametrize(
    "options",
    [
        dict(temperature=0),
        dict(temperature=1.0, seed=3),
        dict(temperature=0.4, seed=1, banned_ids=[2, 3]),
        dict(temperature=1.5, seed=2, eos_id=4),
    ],
)
def test_generation_matches_reference(dtype, inp, hidden_sizes, options):
    ref, fused = model_pair(dtype, inp, hidden_sizes)
    prompt = np.random.default_rng(0).integers(0, ref.vocab_size, (3, 4))
    want = ref.generate(prompt, 30, **options)
    got = fused.generate(prompt, 30, **options)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(fused.generate(prompt[0], 12, **options), ref.generate(prompt[0], 12, **options))


def test_fused_generation_runs_the_prompt_once_then_never_reruns_the_prefix(rng, monkeypatch):
    _, fused = model_pair("float32", "embedding-table", (5,))
    steps = []
    run = fused._run  # the stack, time-major: ids (T, B)
    monkeypatch.setattr(fused, "_run", lambda ids, *a, **k: steps.append(ids.shape[0]) or run(ids, *a, **k))
    fused.generate(rng.integers(0, 7, (2, 10)), 8, seed=0)
    assert steps == [10]  # the rest is one kernel step per token


def test_generation_with_top_k_or_top_p_uses_the_reference_sampler():
    ref, fused = model_pair("float64", "embedding-table", (5,))
    for options in (dict(top_k=3), dict(top_p=0.8)):
        np.testing.assert_array_equal(
            fused.generate([1, 2], 20, seed=4, **options), ref.generate([1, 2], 20, seed=4, **options)
        )


def test_fused_generation_reports_non_finite_logits():
    _, fused = model_pair("float32", "one-hot", (4,))
    fused.dense.bias[0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        fused.generate([1, 2], 5, seed=0)


@pytest.mark.parametrize("parties", [1, 2, 3])
@pytest.mark.parametrize(
    "inp,hidden_sizes", [("one-hot", (24,)), ("embedding-table", (29,)), ("embedding-table", (5, 7))]
)
@pytest.mark.parametrize(
    "options",
    [dict(temperature=0), dict(temperature=1.0, seed=3), dict(temperature=1.5, seed=2, eos_id=4, banned_ids=[2])],
)
def test_bfloat16_generation_matches_the_reference_with_rounded_weights(parties, inp, hidden_sizes, options):
    """weights="bfloat16": the fused loop with U as bfloat16, its units split over 1-3 threads (a one-layer
    LSTM; two layers take the float32 loop with U rounded) draws the reference's ids, whose U is rounded to
    bfloat16 float32 values; the models keep their float32 U."""
    from scratchlm.kernels.numba.parallel import shards

    ref, fused = model_pair("float32", inp, hidden_sizes)
    kept = [layer.recurrent_kernel.copy() for layer in fused.recurrent]
    prompt = np.random.default_rng(0).integers(0, ref.vocab_size, (3, 4))
    want = ref.generate(prompt, 30, weights="bfloat16", **options)
    with mock.patch.object(shards, "parties", lambda rows, units, most_rows, least_units=8: parties):
        got = fused.generate(prompt, 30, weights="bfloat16", **options)
        one = fused.generate(prompt[0], 12, weights="bfloat16", **options)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(one, ref.generate(prompt[0], 12, weights="bfloat16", **options))
    for layer, U in zip(fused.recurrent, kept, strict=True):
        assert np.array_equal(layer.recurrent_kernel, U)


def test_bfloat16_generation_reports_non_finite_logits():
    _, fused = model_pair("float32", "one-hot", (16,))
    fused.dense.bias[0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        fused.generate([1, 2], 5, seed=0, weights="bfloat16")


def test_rounding_to_bfloat16_is_to_nearest_with_ties_to_even():
    from scratchlm.bfloat16 import round_to_bfloat16, upper_halves

    ulp = 2.0**-7  # of a bfloat16 in [1, 2)
    x = np.array(
        [1 + ulp / 2, 1 + 3 * ulp / 2, 1 + ulp / 2 + 2**-20, -(1 + ulp / 4), 3.4e38, -np.inf, np.nan, 0.0],
        dtype=np.float32,
    )
    got = round_to_bfloat16(x, np)
    want = [1.0, 1 + 2 * ulp, 1 + ulp, -1.0, np.inf, -np.inf, np.nan, 0.0]
    np.testing.assert_array_equal(got, np.array(want, dtype=np.float32))
    assert not (got[np.isfinite(got)].view(np.uint32) & 0xFFFF).any()
    assert np.array_equal(upper_halves(got, np).astype(np.uint32) << 16, got.view(np.uint32))
    rng = np.random.default_rng(0)
    y = (rng.standard_normal(10_000) * 10.0 ** rng.integers(-30, 30, 10_000)).astype(np.float32)
    r = round_to_bfloat16(y, np)
    assert (np.abs(r - y) <= np.abs(y) * 2.0**-8).all()  # within half a bfloat16 ulp


@pytest.mark.parametrize(
    "build,weights,match",
    [
        (lambda: LanguageModel(7, 4, [5], dtype="float64"), "bfloat16", "float32 models"),
        (lambda: LanguageModel(7, 4, [5]), "int8", "float32' or 'bfloat16"),
        (lambda: TransformerLM(7, 6, 8, 16, 2), "bfloat16", "float32 weights only"),
    ],
)
def test_bfloat16_weights_are_refused_where_they_do_not_apply(build, weights, match):
    with pytest.raises(ValueError, match=match):
        build().generate([1, 2], 3, weights=weights)


# -- dispatch ---------------------------------------------------------------------------------------------------


def test_kernels_option_and_environment(monkeypatch):
    monkeypatch.delenv(KERNELS_ENV, raising=False)
    assert get_backend("numpy").kernels == "fused"  # auto: Numba is installed here
    assert get_backend("numpy", kernels="reference").kernels == "reference"
    monkeypatch.setenv(KERNELS_ENV, "reference")
    assert get_backend("numpy").kernels == "reference"
    assert get_backend("numpy", kernels="fused").kernels == "fused"  # an explicit option wins
    monkeypatch.setenv(KERNELS_ENV, "fast")
    with pytest.raises(BackendUnavailable, match=KERNELS_ENV):
        get_backend("numpy")
    with pytest.raises(BackendUnavailable, match="'fused', 'reference' or 'auto'"):
        get_backend("numpy", kernels="turbo")


def test_backend_passthrough_keeps_or_changes_the_kernels():
    fused = get_backend("numpy", "float32", "fused")
    assert get_backend(fused) is fused
    assert get_backend(fused, "float32", "fused") is fused
    ref = get_backend(fused, kernels="reference")
    assert ref.kernels == "reference" and ref.dtype == np.float32
    as64 = get_backend(fused, "float64")
    assert as64.kernels == "fused" and as64.dtype == np.float64
    assert "kernels='fused'" in repr(fused)
    assert LanguageModel(5, None, [3], backend=ref).backend.kernels == "reference"


def test_fused_without_numba_names_the_fix(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "numba" else real(name, *a))
    with pytest.raises(BackendUnavailable, match="pip install numba"):
        get_backend("numpy", kernels="fused")
    assert get_backend("numpy", kernels="auto").kernels == "reference"


def test_import_scratchlm_does_not_import_numba():
    code = "import sys, scratchlm; scratchlm.LanguageModel(5); print('numba' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_workspace_reuses_a_buffer_only_when_nothing_refers_to_it():
    from scratchlm.kernels.numba.parallel import workspace

    workspace.release()
    a = workspace.take((3, 5), np.float32)
    b = workspace.take((3, 5), np.float32)
    assert a is not b  # a is still held
    a_id, view = id(a), a[1:]
    del a
    assert id(workspace.take((3, 5), np.float32)) != a_id  # a view of it is still alive
    del view
    assert id(workspace.take((3, 5), np.float32)) == a_id  # now it is free
    assert workspace.take((3, 5), np.float64).dtype == np.float64
    workspace.release()


def test_jit_works_without_a_writable_cache(monkeypatch):
    import numba

    from scratchlm.kernels.numba import options as _jit

    real = numba.njit

    def no_cache_location(*args, cache=False, **kwargs):
        if cache:
            raise RuntimeError("cannot cache function: no locator available")
        return real(*args, **kwargs)

    monkeypatch.setattr(_jit.numba, "njit", no_cache_location)

    def add_one(a):
        for k in range(a.shape[0]):
            a[k] += 1

    kernel = _jit.jit(add_one)
    a = np.zeros(3)
    kernel(a)
    np.testing.assert_array_equal(a, 1)


# -- CuPy ------------------------------------------------------------------------------------------------


def _gpu_or_skip():
    try:
        get_backend("cupy")
    except BackendUnavailable as exc:
        pytest.skip(str(exc))


@pytest.mark.gpu
@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(
    "inp,hidden_sizes,masked,last_only",
    [("one-hot", (6,), True, True), ("embedding-table", (5, 7), True, False), ("embedding-direct", (4,), False, False)],
)
def test_cupy_fused_model_matches_numpy_reference(dtype, inp, hidden_sizes, masked, last_only, cell):
    _gpu_or_skip()
    spec = INPUTS[inp]
    ref = LanguageModel(
        spec["V"],
        spec["embedding_dim"],
        hidden_sizes,
        dtype=dtype,
        seed=3,
        cell=cell,
        backend=get_backend("numpy", dtype, "reference"),
    )
    gpu = LanguageModel(
        spec["V"],
        spec["embedding_dim"],
        hidden_sizes,
        dtype=dtype,
        seed=3,
        cell=cell,
        backend=get_backend("cupy", dtype, "fused"),
    )
    rng = np.random.default_rng(2)
    B, T = 3, 5
    x = rng.integers(0, spec["V"], (B, T))
    y = rng.integers(0, spec["V"], (B,) if last_only else (B, T))
    mask = np.ones((B, T), dtype=bool)
    if masked:
        mask[0, -2:] = False
        mask[1, :2] = False
    loss_ref, grads_ref = ref.loss_and_grads(x, y, mask=mask, last_only=last_only)
    loss_gpu, grads_gpu = gpu.loss_and_grads(x, y, mask=mask, last_only=last_only)
    assert loss_gpu == pytest.approx(loss_ref, rel=TOL[dtype])
    for name in grads_ref:
        assert close(gpu.backend.to_host(grads_gpu[name]), grads_ref[name], dtype), name
    prompt = rng.integers(0, spec["V"], (2, 3))
    for options in (dict(temperature=0), dict(temperature=1.0, seed=3, eos_id=2)):
        np.testing.assert_array_equal(gpu.generate(prompt, 20, **options), ref.generate(prompt, 20, **options))


@pytest.mark.gpu
def test_cupy_scatter_add_and_loss_match_numpy():
    _gpu_or_skip()
    import cupy

    be = get_backend("cupy", "float64", "fused")
    rng = np.random.default_rng(0)
    index = rng.integers(0, 7, 300)
    rows = rng.standard_normal((300, 33))
    expected = np.zeros((7, 33))
    get_backend("numpy", "float64", "reference").scatter_add(expected, index, rows)
    target = cupy.zeros((7, 33))
    be.scatter_add(target, cupy.asarray(index), cupy.asarray(rows))
    np.testing.assert_allclose(cupy.asnumpy(target), expected, rtol=1e-12, atol=1e-12)
    logits = rng.standard_normal((4, 6, 70))
    targets = rng.integers(0, 70, (4, 6))
    loss_ref, d_ref = softmax_cross_entropy(logits, targets)
    loss, d = be.ops.softmax_cross_entropy(cupy.asarray(logits), cupy.asarray(targets))
    assert loss == pytest.approx(loss_ref, rel=1e-12)
    assert close(cupy.asnumpy(d), d_ref, "float64")


# -- the time loop's shards -------------------------------------------------------------------------------


def test_shards_cover_the_batch_and_meet_once():
    from scratchlm.kernels.numba.parallel import shards

    for rows in range(1, 40):
        for n in range(1, min(rows, 5) + 1):
            spans = shards.bounds(rows, n)
            assert spans[0][0] == 0 and spans[-1][1] == rows
            assert all(hi == lo for (_, hi), (lo, _) in zip(spans, spans[1:], strict=False))
            assert max(hi - lo for lo, hi in spans) - min(hi - lo for lo, hi in spans) <= 1


def test_a_shard_that_fails_fails_the_loop_and_blas_gets_its_threads_back():
    from scratchlm.kernels.numba.parallel import blas, shards

    if blas.THREADS is None:
        pytest.skip("NumPy's BLAS is not an OpenBLAS whose threads can be set")
    before = blas.THREADS[0]()
    done = []

    def loop(lo, hi):
        if lo > 0:
            raise RuntimeError("shard failed")
        done.append((lo, hi))

    with mock.patch.object(shards, "count", lambda rows: 3), pytest.raises(RuntimeError, match="shard failed"):
        shards.run(loop, 9)
    assert done == [(0, 3)] and blas.THREADS[0]() == before


def test_shards_only_where_openblas_threads_sleep_soon(monkeypatch):
    from scratchlm.kernels.numba.parallel import blas, shards

    if blas.THREADS is None or not blas.GEMM:
        pytest.skip("NumPy's BLAS is not an OpenBLAS the kernels can call")
    monkeypatch.setattr(blas, "THREADS", (lambda: 2, blas.THREADS[1]))
    monkeypatch.setenv("OPENBLAS_THREAD_TIMEOUT", "20")
    assert shards.count(64) == 2 and shards.count(2 * shards.MIN_ROWS - 1) == 1
    monkeypatch.delenv("OPENBLAS_THREAD_TIMEOUT")  # OpenBLAS's default: 2^28 cycles of spinning
    assert shards.count(64) == 1


def test_units_split_only_for_thin_batches(monkeypatch):
    from scratchlm.kernels.numba.parallel import blas, shards

    if blas.THREADS is None or not blas.GEMM:
        pytest.skip("NumPy's BLAS is not an OpenBLAS the kernels can call")
    monkeypatch.setattr(blas, "THREADS", (lambda: 2, blas.THREADS[1]))
    monkeypatch.setenv("OPENBLAS_THREAD_TIMEOUT", "20")
    assert shards.parties(8, 512, 4) == 2 and shards.parties(9, 512, 4) == 1 and shards.parties(16, 512, 8) == 2
    assert shards.parties(8, 15, 4) == 1  # fewer than 8 units per thread
    monkeypatch.setattr(blas, "THREADS", (lambda: 1, blas.THREADS[1]))
    assert shards.parties(8, 512, 4) == 1  # OPENBLAS_NUM_THREADS=1 (an MPI rank per core)
    monkeypatch.delenv("OPENBLAS_THREAD_TIMEOUT")
    monkeypatch.setattr(blas, "THREADS", (lambda: 2, blas.THREADS[1]))
    assert shards.parties(8, 512, 4) == 1


# -- the small product and the barrier of the units split -------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    M=st.integers(1, 20),
    K=st.integers(1, 40),
    N=st.integers(1, 70),
    dtype=st.sampled_from(["float32", "float64"]),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_packed_panel_product_matches_numpy(M, K, N, dtype, seed, data):
    """panels.product against NumPy: odd sizes (partial row tiles and panels), rows with a longer stride, b
    packed from its columns or from its transpose; and the same bits however the columns are split."""
    from scratchlm.kernels.numba.parallel import panels

    rng = np.random.default_rng(seed)
    lo = data.draw(st.integers(0, N - 1))
    hi = data.draw(st.integers(lo + 1, N))
    a = rng.standard_normal((M, K + 3)).astype(dtype)[:, :K]
    b = rng.standard_normal((K, N)).astype(dtype)
    tiles = np.empty(panels.tile_shape(M, K), dtype)
    panels.pack_rows(a, tiles)
    scratch = np.empty((panels.ROWS, panels.width(dtype)), dtype)

    def product(lo, hi, at):
        packed, packed_t = (np.full(panels.panel_shape(K, hi - lo, dtype), 9.0, dtype) for _ in range(2))
        panels.pack(b, lo, hi, packed)
        panels.pack_transposed(np.ascontiguousarray(b.T), lo, hi, packed_t)
        assert np.array_equal(packed, packed_t)  # zero past the last column either way
        panels.product(tiles, packed, out, at, hi - lo, scratch)

    out = np.full((M, N + 5), 7.0, dtype=dtype)[:, : N + 2]  # rows with a longer stride
    product(lo, hi, 1)
    want = np.full((M, N + 2), 7.0)
    want[:, 1 : 1 + hi - lo] = a.astype(np.float64) @ b[:, lo:hi].astype(np.float64)
    assert close(out, want, dtype)
    whole = out.copy()
    cut = data.draw(st.integers(lo, hi))  # the same bits whichever way [lo, hi) is split
    out[:] = 7.0
    for part in ((lo, cut), (cut, hi)):
        if part[1] > part[0]:
            product(*part, 1 + part[0] - lo)
    assert np.array_equal(out, whole)


def test_panel_sizes_follow_the_vector_registers_numba_compiles_for(monkeypatch):
    from numba.core import config

    from scratchlm.kernels.numba.parallel import panels

    for features, size in (("+avx512f,+avx2,+avx", 64), ("-avx512f,+avx2,+avx", 32), ("+sse4.2,-avx", 16)):
        monkeypatch.setattr(config, "CPU_FEATURES", features)
        assert panels._vector_bytes() == size


def test_barrier_holds_every_thread_until_all_arrive_and_aborts_cleanly():
    from concurrent.futures import ThreadPoolExecutor

    from scratchlm.kernels.numba.options import jit
    from scratchlm.kernels.numba.parallel import barrier, shards

    @jit
    def steps(sync, parties, k, log, late):
        for t in range(log.shape[0]):
            log[t, k] = t
            if not barrier.wait(sync, parties, t):
                return t
            for q in range(parties):  # everyone wrote step t before anyone went on
                if log[t, q] != t:
                    late[0] += 1
        return log.shape[0]

    for parties in (2, 3):
        log, late, sync = np.full((500, parties), -1), np.zeros(1, dtype=np.int64), barrier.new()
        with ThreadPoolExecutor(parties) as pool:
            done = list(
                pool.map(
                    lambda k, sync=sync, parties=parties, log=log, late=late: steps(sync, parties, k, log, late),
                    range(parties),
                )
            )
        assert done == [500] * parties and late[0] == 0 and (log == np.arange(500)[:, None]).all()

    def party(k):  # party 1 fails before its first step
        if k == 1:
            raise RuntimeError("party failed")
        return steps(sync, 2, k, np.full((5, 2), -1), np.zeros(1, dtype=np.int64))

    sync = barrier.new()
    if shards.blas.THREADS is None:
        pytest.skip("NumPy's BLAS is not an OpenBLAS whose threads can be set")
    with pytest.raises(RuntimeError, match="party failed"):
        shards.together(party, 2, sync)  # returns: party 0 is released, not left spinning
    assert sync[1] == 1


def test_crew_runs_every_party_of_every_loop_awake_or_after_sleeping():
    import time

    from scratchlm.kernels.numba.parallel.crew import Crew

    crew = Crew(3)
    for pause in (0.0, 0.01):  # back to back (the workers still polling), then after they went to sleep
        log = []
        for i in range(50):
            crew.run(lambda k, i=i, log=log: log.append((i, k)))
            time.sleep(pause)
        assert sorted(log) == [(i, k) for i in range(50) for k in range(3)]

    def loop(k):
        if k == 2:
            raise RuntimeError("party 2 failed")

    with pytest.raises(RuntimeError, match="party 2 failed"):
        crew.run(loop)
    log = []
    crew.run(log.append)  # and the crew goes on
    assert sorted(log) == [0, 1, 2]


@pytest.mark.parametrize("parties", [2, 3, 5])
@pytest.mark.parametrize("inputs", ["tokens", "dense"])
def test_the_units_split_computes_what_the_row_loop_does(parties, inputs):
    """forward/backward with every step's hidden units split over threads against the shards' row loop:
    float64, masked, an initial state, H not a multiple of the thread count (5 threads: one owns 1 unit);
    and bit for bit the same as with 2 threads."""
    from scratchlm.kernels.numba import lstm as lstm_numba
    from scratchlm.kernels.numba.parallel import blas, shards

    if blas.THREADS is None or not blas.GEMM:
        pytest.skip("NumPy's BLAS is not an OpenBLAS the kernels can call")
    rng = np.random.default_rng(parties)
    T, B, H, V = 7, 3, 6, 5
    U = rng.standard_normal((H, 4 * H)) / 3
    table = rng.standard_normal((V, 4 * H))
    ids = rng.integers(0, V, (T, B))
    x = rng.standard_normal((T, B, 4 * H))
    keep = rng.random((T, B)) > 0.3
    h0, c0, dy = rng.standard_normal((B, H)), rng.standard_normal((B, H)), rng.standard_normal((T, B, H))
    dh_T, dc_T = rng.standard_normal((B, H)), rng.standard_normal((B, H))

    def run(split):
        with mock.patch.object(shards, "parties", lambda rows, units, most_rows, least_units=8: split):
            z = x.copy()
            hs, cs = lstm_numba.forward(z, U, h0, c0, keep, *((table, ids) if inputs == "tokens" else ()))
            hs, cs = hs.copy(), cs.copy()
            return (hs, cs) + tuple(a.copy() for a in lstm_numba.backward(z, hs, cs, U, dy, dh_T, dc_T, keep))

    split = run(parties)
    for want, got in zip(run(1), split, strict=False):
        assert close(got, want, "float64")
    for one, other in zip(split, run(2), strict=False):  # the same bits on any number of threads
        assert np.array_equal(one, other)


def test_importing_scratchlm_first_sets_the_openblas_thread_timeout():
    code = "import os, scratchlm, numpy; print(os.environ.get('OPENBLAS_THREAD_TIMEOUT'))"
    env = {k: v for k, v in __import__("os").environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "20"
