"""The CuPy backend on a GPU: every CUDA kernel of ``scratchlm/kernels/cuda/ops.py`` against the NumPy reference path.

Each test builds the same layer or model twice, once on NumPy with the reference kernels (the plain-``xp``
code of :mod:`scratchlm.layers`) and once on the device backend, gives both the same weights and inputs,
and compares what comes out: forward values, every gradient, the loss, generated ids. Hypothesis draws the
shapes (odd sizes, a batch of one, one step), the masks (none, causal, padding, rows that see no key,
random) and both dtypes. Together they run every entry point of ``scratchlm/kernels/cuda/ops.py``:

* ``lstm_forward`` / ``lstm_backward`` and ``gru_forward`` / ``gru_backward`` (lstm_cell.cu, gru_cell.cu),
  with dense input, a token table, masks and initial states: through the recurrent models;
* ``softmax_cross_entropy`` (softmax_xent.cu) and ``scatter_add`` (scatter_add.cu);
* ``decode`` and ``sample_logits`` (sample.cu): generation, greedy and sampled, with EOS;
* ``attention_forward`` / ``attention_backward`` / ``attention_decode`` (attention.cu), ``layernorm_*`` and
  ``residual_layernorm`` (layernorm.cu), ``bias_relu`` / ``relu_backward`` (feedforward.cu) and
  ``dense_softmax_cross_entropy`` (cuBLAS + softmax_xent.cu in chunks): the Transformer layers and models.

An array passes when max |device − reference| <= rtol · max |reference| + atol: float64 1e-10 / 1e-13
(the same arithmetic up to the order of sums), float32 2e-5 / 1e-6 (fast exp, different summation trees).
The key bias has no gradient in exact arithmetic; it is compared on the scale of the other gradients.

Marked ``gpu``; skipped without CuPy and a GPU. ``SCRATCHLM_GPU_STANDIN=numpy`` runs the same tests with the
NumPy fused backend standing in for the device: a check of the tests themselves on a machine without one
(``benchmarks/gpu_check.sh`` runs them on the GPU).
"""

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers.strategies import attention_cases, transformer_batch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scratchlm import LanguageModel, get_backend, models, optim
from scratchlm.backend import Backend
from scratchlm.errors import BackendUnavailable
from scratchlm.layers import FeedForward, LayerNormalization, MultiHeadAttention
from scratchlm.layers.dense import Dense
from scratchlm.losses import softmax_cross_entropy
from scratchlm.models import TransformerLM

pytestmark = pytest.mark.gpu

STANDIN = os.environ.get("SCRATCHLM_GPU_STANDIN")
RTOL = {"float64": 1e-10, "float32": 2e-5}
ATOL = {"float64": 1e-13, "float32": 1e-6}
EXAMPLES = settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
DTYPES = st.sampled_from(["float32", "float64"])


def device(dtype, kernels="fused"):
    """The backend under test: CuPy (or the NumPy stand-in) with ``kernels``."""
    try:
        return get_backend(STANDIN or "cupy", dtype, kernels)
    except BackendUnavailable as exc:
        pytest.skip(str(exc))


def reference(dtype):
    return get_backend("numpy", dtype, "reference")


def host(a):
    return a if isinstance(a, np.ndarray) else a.get()


def assert_close(got, want, dtype, what="", scale=None, truth=None):
    """max |got − want| <= RTOL · scale + ATOL, plus, where ``truth`` (the reference path run in float64 on the same
    float32 numbers) is given, twice the reference's own float32 error: a float32 result that cancels (the
    attention's dS = P ⊙ (dP − rowsum(dO ⊙ O))) can be off by more than RTOL in both paths alike."""
    got, want = np.asarray(host(got), dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    scale = np.max(np.abs(want), initial=0.0) if scale is None else scale
    err = np.max(np.abs(got - want), initial=0.0)
    own = 0.0 if truth is None else np.max(np.abs(want - np.asarray(truth, dtype=np.float64)), initial=0.0)
    assert err <= RTOL[dtype] * scale + ATOL[dtype] + 2 * own, (
        f"{what}: {err:.3g} against scale {scale:.3g} (the reference's own error {own:.3g})"
    )


def assert_grads_close(got, want, dtype, truth=None):
    assert list(got) == list(want)
    scale = max(float(np.max(np.abs(g), initial=0.0)) for g in want.values())
    for name, g in want.items():
        assert host(got[name]).dtype == np.dtype(dtype), name
        assert_close(
            got[name],
            g,
            dtype,
            name,
            scale=scale if name.endswith("key/bias") else None,
            truth=None if truth is None else truth[name],
        )


def test_the_device_backend_is_the_fused_cupy_one(monkeypatch):
    be = device("float32")
    assert be.kernels == "fused"
    if not STANDIN:
        assert be.name == "cupy" and be.ops.__name__ == "scratchlm.kernels.cuda.ops"
        monkeypatch.delenv("SCRATCHLM_KERNELS", raising=False)
        assert get_backend("cupy").kernels == "fused"  # the default, now that it is checked here


# -- recurrent models: LSTM and GRU time loops, cross-entropy, scatter-add ------------------------------------

INPUTS = {
    "one-hot": dict(V=7, embedding_dim=None),
    "embedding-table": dict(V=7, embedding_dim=4),
    "embedding-direct": dict(V=61, embedding_dim=4),
}  # V > T·B: gather, then one GEMM


def recurrent_pair(dtype, inp, hidden_sizes, cell, seed=3):
    spec = INPUTS[inp]
    ref = LanguageModel(
        spec["V"], spec["embedding_dim"], hidden_sizes, backend=reference(dtype), seed=seed, cell=cell, dtype=dtype
    )
    dev = LanguageModel(
        spec["V"], spec["embedding_dim"], hidden_sizes, backend=device(dtype), seed=seed, cell=cell, dtype=dtype
    )
    rng = np.random.default_rng(seed + 1)
    for layer in ref.recurrent:  # biases far from their init: every gate matters
        layer.bias[...] = rng.standard_normal(layer.bias.shape)
    dev.set_params(ref.params)
    return ref, dev


@EXAMPLES
@given(
    inp=st.sampled_from(list(INPUTS)),
    hidden_sizes=st.lists(st.integers(1, 9), min_size=1, max_size=2),
    T=st.integers(1, 7),
    B=st.integers(1, 5),
    masked=st.booleans(),
    last_only=st.booleans(),
    dtype=DTYPES,
    cell=st.sampled_from(["lstm", "gru"]),
    with_state=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_recurrent_model_loss_and_every_gradient(
    inp, hidden_sizes, T, B, masked, last_only, dtype, cell, with_state, seed
):
    ref, dev = recurrent_pair(dtype, inp, hidden_sizes, cell)
    rng = np.random.default_rng(seed)
    V = ref.vocab_size
    x = rng.integers(0, V, (B, T))
    y = rng.integers(0, V, (B,) if last_only else (B, T))
    mask = None
    if masked:
        mask = rng.random((B, T)) < 0.7
        mask[:, -1 if last_only else 0] = True  # every row scores something
    state = None
    if with_state:
        state = [tuple(rng.standard_normal(shape).astype(dtype) for shape in layer) for layer in ref.state_shapes(B)]
    loss_r, g_r = ref.loss_and_grads(x, y, mask=mask, state=state, last_only=last_only)
    dev_state = None if state is None else [tuple(dev.backend.asarray(s) for s in layer) for layer in state]
    loss_d, g_d = dev.loss_and_grads(x, y, mask=mask, state=dev_state, last_only=last_only)
    assert loss_d == pytest.approx(loss_r, rel=RTOL[dtype], abs=ATOL[dtype])
    assert_grads_close(g_d, g_r, dtype)
    logits_r = ref.forward(x, state=state, mask=mask)[0]
    assert_close(dev.forward(x, state=dev_state, mask=mask)[0], logits_r, dtype, "logits")


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(
    "inp,hidden_sizes", [("one-hot", (6,)), ("embedding-table", (5, 7)), ("embedding-direct", (4,))]
)
def test_recurrent_generation_draws_the_same_ids(cell, dtype, inp, hidden_sizes):
    ref, dev = recurrent_pair(dtype, inp, hidden_sizes, cell)
    prompt = np.random.default_rng(2).integers(0, ref.vocab_size, (3, 4))
    for options in (
        dict(temperature=0),
        dict(temperature=1.0, seed=3),
        dict(temperature=0.7, seed=5, eos_id=2),
        dict(temperature=1.0, seed=4, banned_ids=(0, 1)),
    ):
        np.testing.assert_array_equal(
            dev.generate(prompt, 25, **options), ref.generate(prompt, 25, **options), err_msg=str(options)
        )


@EXAMPLES
@given(
    N=st.integers(1, 40),
    V=st.integers(1, 1500),
    masking=st.sampled_from(["none", "some", "one"]),
    dtype=DTYPES,
    seed=st.integers(0, 2**16),
)
def test_softmax_cross_entropy(N, V, masking, dtype, seed):
    """softmax_xent.cu: one block per row, V from 1 up past the 1024 threads of a block."""
    rng = np.random.default_rng(seed)
    logits = (3 * rng.standard_normal((N, V))).astype(dtype)
    targets = rng.integers(0, V, N)
    mask = None if masking == "none" else rng.random(N) < (0.6 if masking == "some" else 0.0)
    if mask is not None:
        mask[rng.integers(N)] = True
    loss_r, d_r = softmax_cross_entropy(logits.copy(), targets, mask)
    be = device(dtype)
    xp = be.xp
    loss_d, d_d = be.ops.softmax_cross_entropy(
        be.asarray(logits), xp.asarray(targets), None if mask is None else xp.asarray(mask)
    )
    assert loss_d == pytest.approx(loss_r, rel=RTOL[dtype], abs=ATOL[dtype])
    assert_close(d_d, d_r, dtype, "dlogits")


@EXAMPLES
@given(V=st.integers(1, 50), N=st.integers(0, 300), C=st.integers(1, 70), dtype=DTYPES, seed=st.integers(0, 2**16))
def test_scatter_add(V, N, C, dtype, seed):
    """scatter_add.cu: atomic adds, many rows landing on the same few targets."""
    rng = np.random.default_rng(seed)
    index = rng.integers(0, V, N)
    rows = rng.standard_normal((N, C)).astype(dtype)
    start = rng.standard_normal((V, C)).astype(dtype)
    want = start.astype(np.float64)
    np.add.at(want, index, rows)
    be = device(dtype)
    target = be.asarray(start)
    be.scatter_add(target, be.xp.asarray(index), be.asarray(rows))
    assert_close(target, want, dtype, "target")


# -- Transformer layers ------------------------------------------------------------------------------------


@EXAMPLES
@given(case=attention_cases(key_dims=st.sampled_from([1, 2, 5, 64, 300, 513])), dtype=DTYPES)
def test_attention_forward_and_every_gradient(case, dtype):
    c = case
    ref = MultiHeadAttention(c["E"], c["N"], c["K"], reference(dtype), Backend.rng(c["seed"]))
    rng = np.random.default_rng(c["seed"] + 1)
    for name, p in ref.params.items():
        if name.endswith("bias"):
            p[...] = 0.3 * rng.standard_normal(p.shape)
    be = device(dtype)
    dev = be.layer(MultiHeadAttention)(c["E"], c["N"], c["K"], be, Backend.rng(c["seed"]))
    for name, p in ref.params.items():
        dev.params[name][...] = be.asarray(p)
    query = (2 * rng.standard_normal((c["B"], c["T"], c["E"]))).astype(dtype)
    value = query if c["self_attention"] else rng.standard_normal((c["B"], c["S"], c["E"])).astype(dtype)
    dout = rng.standard_normal((c["B"], c["T"], c["E"])).astype(dtype)
    mask = c["mask"]
    out_r, cache_r = ref.forward(query, value, mask=mask)
    dev_mask = None if mask is None else be.xp.asarray(np.ascontiguousarray(mask))
    dq = be.asarray(query)
    out_d, cache_d = dev.forward(dq, dq if c["self_attention"] else be.asarray(value), mask=dev_mask)
    assert_close(out_d, out_r, dtype, "output")
    d_r, g_r = ref.backward(cache_r, dout)
    d_d, g_d = dev.backward(cache_d, be.asarray(dout))
    d_t, g_t = None, None  # float64: no float32 error to allow for
    if dtype == "float32":  # the reference in float64 on the same numbers
        exact = MultiHeadAttention(c["E"], c["N"], c["K"], reference("float64"), Backend.rng(c["seed"]))
        for name, p in ref.params.items():
            exact.params[name][...] = p
        wide = [a.astype(np.float64) for a in (query, value, dout)]
        _, cache_t = exact.forward(wide[0], wide[0] if c["self_attention"] else wide[1], mask=mask)
        d_t, g_t = exact.backward(cache_t, wide[2])
    assert_grads_close(g_d, g_r, dtype, truth=g_t)
    for name in ("d_query", "d_value", "d_key"):
        assert_close(
            getattr(d_d, name), getattr(d_r, name), dtype, name, truth=None if d_t is None else getattr(d_t, name)
        )


@EXAMPLES
@given(
    M=st.integers(1, 9),
    D=st.integers(1, 1500),
    lead=st.booleans(),
    dtype=DTYPES,
    seed=st.integers(0, 2**16),
    spread=st.sampled_from([0.01, 1.0, 30.0]),
)
def test_layernorm_forward_and_backward(M, D, lead, dtype, seed, spread):
    """layernorm.cu: one block per row, D from 1 up past the 1024 threads of a block."""
    ref, be = LayerNormalization(D, reference(dtype)), device(dtype)
    dev = be.layer(LayerNormalization)(D, be)
    ref.gamma[:] = np.random.default_rng(seed + 1).standard_normal(D)
    ref.beta[:] = np.random.default_rng(seed + 2).standard_normal(D)
    dev.gamma[...], dev.beta[...] = be.asarray(ref.gamma), be.asarray(ref.beta)
    rng = np.random.default_rng(seed)
    shape = (2, M, D) if lead else (M, D)
    x = (spread * (rng.standard_normal(shape) + rng.standard_normal(shape[:-1] + (1,)))).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    y_r, c_r = ref.forward(x)
    y_d, c_d = dev.forward(be.asarray(x))
    assert_close(y_d, y_r, dtype, "y")
    dx_r, g_r = ref.backward(c_r, dy)
    dx_d, g_d = dev.backward(c_d, be.asarray(dy))
    # One feature (D = 1): dx = rstd·(g − mean(g) − x̂·mean(g·x̂)) is zero in theory, the round-off of terms of
    # size |dy|·rstd that cancel (NVRTC contracts them into FMAs): held to that scale, not to a relative bound.
    zero_scale = float(np.abs(dy).max()) / np.sqrt(ref.epsilon) if D == 1 else None
    assert_close(dx_d, dx_r, dtype, "dx", scale=zero_scale)
    assert_grads_close(g_d, g_r, dtype)


@EXAMPLES
@given(
    M=st.integers(1, 7),
    E=st.integers(1, 6),
    F=st.integers(1, 300),
    dtype=DTYPES,
    seed=st.integers(0, 2**16),
    activation=st.sampled_from(["relu", "gelu", "gelu_tanh"]),
)
def test_feedforward_bias_activation(M, E, F, dtype, seed, activation):
    """feedforward.cu's bias + ReLU, and the exact GELU through CuPy's erf."""
    ref, be = FeedForward(E, F, reference(dtype), Backend.rng(seed), activation), device(dtype)
    dev = be.layer(FeedForward)(E, F, be, Backend.rng(seed), activation)
    rng = np.random.default_rng(seed)
    for name, p in ref.params.items():
        if name.endswith("bias"):
            p[...] = rng.standard_normal(p.shape)  # both sides of the kink
        dev.params[name][...] = be.asarray(p)
    x = rng.standard_normal((2, M, E)).astype(dtype)
    dy = rng.standard_normal((2, M, E)).astype(dtype)
    y_r, c_r = ref.forward(x)
    y_d, c_d = dev.forward(be.asarray(x))
    assert_close(y_d, y_r, dtype, "y")
    dx_r, g_r = ref.backward(c_r, dy)
    dx_d, g_d = dev.backward(c_d, be.asarray(dy))
    assert_close(dx_d, dx_r, dtype, "dx")
    assert_grads_close(g_d, g_r, dtype)


@EXAMPLES
@given(
    N=st.integers(1, 40),
    D=st.integers(1, 7),
    V=st.integers(1, 1100),
    chunk=st.sampled_from([None, 1, 3, 7, 64]),
    masking=st.sampled_from(["none", "some", "one"]),
    dtype=DTYPES,
    seed=st.integers(0, 2**16),
)
def test_chunked_dense_cross_entropy(N, D, V, chunk, masking, dtype, seed):
    rng = np.random.default_rng(seed)
    ref = Dense(D, V, reference(dtype), Backend.rng(seed))
    ref.bias[:] = rng.standard_normal(V)
    x = (3 * rng.standard_normal((N, D))).astype(dtype)
    y = rng.integers(0, V, N)
    mask = None
    if masking != "none":
        mask = rng.random(N) < (0.6 if masking == "some" else 0.0)
        mask[rng.integers(N)] = True
    loss_r, c_r = ref.score(x, y, mask)
    dx_r, g_r = ref.score_backward(c_r)
    be = device(dtype)
    xp = be.xp
    W, b = be.asarray(ref.kernel), be.asarray(ref.bias)
    loss, dx, dW, db = be.ops.dense_softmax_cross_entropy(
        be.asarray(x), W, b, xp.asarray(y), None if mask is None else xp.asarray(mask), chunk=chunk
    )
    assert loss == pytest.approx(loss_r, rel=RTOL[dtype], abs=ATOL[dtype])
    assert_close(dx, dx_r, dtype, "dx")
    assert_close(dW, g_r["kernel"], dtype, "dW")
    assert_close(db, g_r["bias"], dtype, "db")
    alone = be.ops.dense_softmax_cross_entropy(
        be.asarray(x), W, b, xp.asarray(y), None if mask is None else xp.asarray(mask), backward=False, chunk=chunk
    )[0]
    assert alone == pytest.approx(loss_r, rel=RTOL[dtype], abs=ATOL[dtype])


# -- Transformer models ------------------------------------------------------------------------------------


def transformer_pair(block, dtype, layers=1, V=17, L=12, E=6, F=7, N=2, K=3):
    """The same TransformerLM on the reference path and on the device, biases and norms far from their init."""
    ref = TransformerLM(
        V,
        L,
        embed_dim=E,
        dense_dim=F,
        num_heads=N,
        key_dim=K,
        num_layers=layers,
        block=block,
        seed=2,
        backend=reference(dtype),
        dtype=dtype,
    )
    rng = np.random.default_rng(7)
    for name, p in ref.params.items():
        if name.endswith(("bias", "beta")):
            p[...] = 0.3 * rng.standard_normal(p.shape)
        elif name.endswith("embeddings"):
            p[...] = rng.standard_normal(p.shape)
        elif name.endswith("gamma"):
            p[...] = 1 + 0.3 * rng.standard_normal(p.shape)
    dev = TransformerLM(
        V,
        L,
        embed_dim=E,
        dense_dim=F,
        num_heads=N,
        key_dim=K,
        num_layers=layers,
        block=block,
        seed=2,
        backend=device(dtype),
        dtype=dtype,
    )
    dev.set_params(ref.params)
    return ref, dev


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    block=st.sampled_from(["book", "gpt"]),
    layers=st.integers(1, 2),
    B=st.integers(1, 4),
    T=st.integers(1, 12),
    dtype=DTYPES,
    seed=st.integers(0, 2**16),
    last_only=st.booleans(),
    user_mask=st.booleans(),
)
def test_transformer_loss_and_every_gradient(block, layers, B, T, dtype, seed, last_only, user_mask):
    ref, dev = transformer_pair(block, dtype, layers)
    x, y, mask = transformer_batch(np.random.default_rng(seed), ref.vocab_size, B, T, last_only, user_mask)
    loss_r, g_r = ref.loss_and_grads(x, y, mask=mask, last_only=last_only)
    loss_d, g_d = dev.loss_and_grads(x, y, mask=mask, last_only=last_only)
    assert loss_d == pytest.approx(loss_r, rel=RTOL[dtype], abs=ATOL[dtype])
    assert dev.loss(x, y, mask=mask, last_only=last_only) == pytest.approx(loss_r, rel=RTOL[dtype], abs=ATOL[dtype])
    assert_grads_close(g_d, g_r, dtype)
    assert_close(dev.forward(x)[0], ref.forward(x)[0], dtype, "logits")


@pytest.mark.parametrize("block", ["book", "gpt"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_transformer_generation_draws_the_same_ids(block, dtype):
    """The KV-cache decoding (attention_decode, residual_layernorm, sample_logits) against the reference loop,
    past the model's sequence_length (the window slides)."""
    ref, dev = transformer_pair(block, dtype, layers=2)
    prompt = np.random.default_rng(3).integers(1, ref.vocab_size, (2, 3))
    for options in (
        dict(temperature=0),
        dict(temperature=1.0, seed=3),
        dict(temperature=0.8, seed=1, eos_id=4),
        dict(temperature=1.0, seed=2, banned_ids=(0,)),
    ):
        np.testing.assert_array_equal(
            dev.generate(prompt, 8, **options), ref.generate(prompt, 8, **options), err_msg=str(options)
        )


# -- checkpoints across devices -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["lstm", "gru", "transformer"])
def test_a_checkpoint_written_on_the_device_loads_on_the_cpu_and_back(tmp_path, kind):
    """Train two steps on the device, save (with Adam's slots), load on NumPy: the same weights, the same
    optimizer state, and the next step gives the same loss on both; then the NumPy copy goes back."""
    dtype = "float64"
    be = device(dtype)
    if kind == "transformer":
        model = TransformerLM(
            19, 8, embed_dim=6, dense_dim=10, num_heads=2, key_dim=3, block="gpt", seed=1, backend=be, dtype=dtype
        )
    else:
        model = LanguageModel(19, 5, [7, 6], cell=kind, seed=1, backend=be, dtype=dtype)
    rng = np.random.default_rng(0)
    x, y = rng.integers(1, 19, (3, 8)), rng.integers(0, 19, (3, 8))
    opt = optim.Adam(lr=0.01)
    for _ in range(2):
        model.reset_state()
        _, grads = model.loss_and_grads(x, y)
        opt.step(model.params, grads)
    model.save(tmp_path / "device.npz", optimizer=opt)
    cpu = models.load(tmp_path / "device.npz", backend="numpy")
    for name, p in model.params.items():
        np.testing.assert_array_equal(cpu.model.params[name], host(p))
    assert cpu.optimizer.iterations == opt.iterations == 2
    for model_, opt_ in ((model, opt), (cpu.model, cpu.optimizer)):
        model_.reset_state()
        _, grads = model_.loss_and_grads(x, y)
        opt_.step(model_.params, grads)
        model_.reset_state()
    assert cpu.model.loss(x, y) == pytest.approx(model.loss(x, y), rel=1e-10)
    cpu.model.save(tmp_path / "cpu.npz", optimizer=cpu.optimizer)
    back = models.load(tmp_path / "cpu.npz", backend=STANDIN or "cupy")
    assert back.model.backend.name == (STANDIN or "cupy")
    for name, p in cpu.model.params.items():
        np.testing.assert_array_equal(host(back.model.params[name]), p)


# -- NCCL: two ranks on one GPU ------------------------------------------------------------------------------

MPIEXEC = shutil.which("mpiexec")


def mpi_helper(args, ranks, cwd):
    """tests/helpers/mpi_helper.py alone (ranks 0) or under mpiexec -n ranks -> CompletedProcess."""
    cmd = [sys.executable, str(Path(__file__).parent / "helpers" / "mpi_helper.py"), *args]
    if ranks:
        cmd = [MPIEXEC, "-n", str(ranks), *cmd]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "PMIX_"))}
    env.update(OPENBLAS_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=180)


@pytest.mark.skipif(importlib.util.find_spec("mpi4py") is None or MPIEXEC is None, reason="needs mpi4py and mpiexec")
def test_two_ranks_on_one_gpu_take_the_single_gpu_steps(tmp_path):
    """Data parallelism through NCCL with both ranks on the one GPU (where NCCL allows it: recent NCCL
    refuses two ranks of a communicator on one device, which skips this test with NCCL's words)."""
    if STANDIN:
        pytest.skip("NCCL needs CuPy and a GPU")
    device("float64")
    common = ["--kind", "streams", "--dtype", "float64", "--steps", "12", "--backend", "cupy"]
    alone = mpi_helper(common + ["--out", "ref.npz"], 0, tmp_path)
    assert alone.returncode == 0, alone.stdout + alone.stderr
    both = mpi_helper(common + ["--out", "mpi.npz", "--seed-by-rank"], 2, tmp_path)
    refused = [line for line in both.stderr.splitlines() if "Duplicate GPU" in line or "nccl" in line.lower()]
    if both.returncode != 0 and refused:
        pytest.skip(f"NCCL refuses two ranks on one GPU: {refused[-1][:300]}")
    assert both.returncode == 0, both.stdout + both.stderr
    ref, got = np.load(tmp_path / "ref.npz"), np.load(tmp_path / "mpi.npz")
    assert bool(got["nccl"])
    np.testing.assert_allclose(got["losses"], ref["losses"], rtol=1e-10)
    for key in (k for k in ref.files if k.startswith("param/")):
        np.testing.assert_allclose(got[key], ref[key], rtol=1e-10, atol=1e-13, err_msg=key)
