"""The whole model: finite-difference checks of every parameter, and its behaviour."""

import numpy as np
import pytest
from conftest import random_mask

import scratchlm
from scratchlm import LanguageModel, RecurrentLM, get_backend, models
from scratchlm.gradcheck import check_gradients, check_model

TOL = 1e-6


def make(V=7, embedding_dim=None, hidden_sizes=(5,), **kw):
    model = LanguageModel(V, embedding_dim=embedding_dim, hidden_sizes=hidden_sizes, dtype="float64", seed=11, **kw)
    rng = np.random.default_rng(3)
    for lstm in model.recurrent:  # non-trivial biases: every gate matters
        lstm.bias[:] = rng.standard_normal(lstm.bias.shape)
    return model


INPUTS = {
    "one-hot": dict(V=7, embedding_dim=None),
    "embedding-table": dict(V=7, embedding_dim=4),  # V <= T·B: (V, 4H) table lookup
    "embedding-direct": dict(V=23, embedding_dim=4),
}  # V >  T·B: gather, then one GEMM


@pytest.mark.gradcheck
@pytest.mark.parametrize("inp", list(INPUTS))
@pytest.mark.parametrize("hidden_sizes", [(5,), (5, 6)])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("last_only", [False, True])
def test_model_gradients(rng, inp, hidden_sizes, masked, last_only):
    model = make(hidden_sizes=hidden_sizes, **INPUTS[inp])
    B, T, V = 3, 5, model.vocab_size
    x = rng.integers(0, V, (B, T))
    y = rng.integers(0, V, (B,) if last_only else (B, T))
    mask = random_mask(rng, B, T) if masked else None
    assert model.use_table(T, B) == (inp != "embedding-direct")
    errors = check_model(model, x, y, mask=mask, last_only=last_only)
    assert set(errors) == set(model.params)
    assert max(errors.values()) <= TOL, errors


@pytest.mark.gradcheck
@pytest.mark.parametrize("inp", ["one-hot", "embedding-table"])
def test_model_gradients_with_initial_state(rng, inp):
    model = make(hidden_sizes=(5, 4), **INPUTS[inp])
    B, T = 2, 4
    state = [(rng.standard_normal((B, h)), rng.standard_normal((B, h))) for h in model.hidden_sizes]
    x = rng.integers(0, model.vocab_size, (B, T))
    y = rng.integers(0, model.vocab_size, (B, T))
    errors = check_model(model, x, y, state=state)
    assert max(errors.values()) <= TOL, errors


@pytest.mark.gradcheck
def test_model_gradients_with_stateful_carry(rng):
    """Truncated BPTT: the state carried from the previous chunk is a constant of this chunk's loss."""
    model = make(hidden_sizes=(5, 4), embedding_dim=3, stateful=True)
    B, T = 2, 4
    x1, x2 = rng.integers(0, 7, (B, T)), rng.integers(0, 7, (B, T))
    y2 = rng.integers(0, 7, (B, T))
    model.forward(x1)
    carried = [tuple(a.copy() for a in lstm.state) for lstm in model.recurrent]

    def restore_carried_state():
        for lstm, (h, c) in zip(model.recurrent, carried, strict=False):
            lstm.state = (h.copy(), c.copy())

    def loss_fn():
        restore_carried_state()
        return model.loss(x2, y2)

    restore_carried_state()
    _, grads = model.loss_and_grads(x2, y2)
    errors = check_gradients(loss_fn, model.params, grads)
    assert max(errors.values()) <= TOL, errors


def test_stateful_chunks_equal_one_long_sequence(rng):
    full = make(embedding_dim=3, hidden_sizes=(5, 4))
    chunked = make(embedding_dim=3, hidden_sizes=(5, 4), stateful=True)
    x = rng.integers(0, 7, (2, 9))
    logits, state = full.forward(x)
    parts = [chunked.forward(x[:, a:b])[0] for a, b in ((0, 4), (4, 7), (7, 9))]
    np.testing.assert_allclose(np.concatenate(parts, axis=1), logits, atol=1e-12)
    chunked.reset_state()
    np.testing.assert_allclose(chunked.forward(x[:, :4])[0], parts[0], atol=1e-12)


def test_explicit_state_continues_a_sequence(rng):
    model = make(hidden_sizes=(5, 6))
    x = rng.integers(0, 7, (3, 8))
    logits, _ = model.forward(x)
    first, state = model.forward(x[:, :5])
    second, _ = model.forward(x[:, 5:], state=state)
    np.testing.assert_allclose(np.concatenate([first, second], 1), logits, atol=1e-12)


def test_params_have_keras_names_and_shapes():
    model = LanguageModel(60, embedding_dim=16, hidden_sizes=[32, 24])
    shapes = {k: v.shape for k, v in model.params.items()}
    assert shapes == {
        "embedding/embeddings": (60, 16),
        "lstm_0/kernel": (16, 128),
        "lstm_0/recurrent_kernel": (32, 128),
        "lstm_0/bias": (128,),
        "lstm_1/kernel": (32, 96),
        "lstm_1/recurrent_kernel": (24, 96),
        "lstm_1/bias": (96,),
        "dense/kernel": (24, 60),
        "dense/bias": (60,),
    }
    assert all(v.dtype == np.float32 for v in model.params.values())
    onehot = LanguageModel(60, hidden_sizes=[128])
    assert onehot.params["lstm_0/kernel"].shape == (60, 512) and "embedding/embeddings" not in onehot.params


def test_recurrent_lm_is_the_model_language_model_names(tmp_path):
    """RecurrentLM is the recurrent model's name; LanguageModel stays another name of the same class."""
    assert RecurrentLM is LanguageModel is scratchlm.RecurrentLM is models.MODELS["recurrent"]
    model = RecurrentLM(9, 4, [6], seed=5)
    model.save(tmp_path / "m.npz")
    assert type(LanguageModel.load(tmp_path / "m.npz")) is RecurrentLM


def test_same_seed_same_weights():
    a, b = LanguageModel(9, 4, [6], seed=5), LanguageModel(9, 4, [6], seed=5)
    for name in a.params:
        np.testing.assert_array_equal(a.params[name], b.params[name])


def test_loss_matches_forward_logits(rng):
    model = make(embedding_dim=3)
    x, y = rng.integers(0, 7, (2, 6)), rng.integers(0, 7, (2, 6))
    logits, _ = model.forward(x)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = -np.take_along_axis(logp, y[..., None], -1).mean()
    assert model.loss(x, y) == pytest.approx(expected, rel=1e-12)
    assert model.loss_and_grads(x, y)[0] == pytest.approx(expected, rel=1e-12)
    assert model.loss(x, y[:, -1], last_only=True) == pytest.approx(-logp[np.arange(2), -1, y[:, -1]].mean(), rel=1e-12)


@pytest.mark.parametrize("bad", [np.array([[0, 7]]), np.array([[-1, 0]]), np.zeros((2,), int), np.zeros((1, 2), float)])
def test_bad_token_ids_raise(bad):
    model = make()
    with pytest.raises(ValueError):
        model.forward(bad)


def test_bad_targets_and_mask_raise(rng):
    model = make()
    x = rng.integers(0, 7, (2, 3))
    with pytest.raises(ValueError, match="y must"):
        model.loss_and_grads(x, x[:, 0])
    with pytest.raises(ValueError, match="outside"):
        model.loss_and_grads(x, x + 7)
    with pytest.raises(ValueError, match="mask"):
        model.loss_and_grads(x, x, mask=np.ones((3, 2), bool))


def test_bad_constructor_arguments():
    for kwargs in (dict(vocab_size=0), dict(vocab_size=5, hidden_sizes=[]), dict(vocab_size=5, embedding_dim=0)):
        with pytest.raises(ValueError):
            LanguageModel(**kwargs)


# -- generation -----------------------------------------------------------------------------------


def test_generate_shapes_and_reproducibility(rng):
    model = make(embedding_dim=3)
    out = model.generate(np.array([1, 2, 3]), 12, seed=4)
    assert out.shape == (12,) and out.dtype == np.int64
    np.testing.assert_array_equal(out, model.generate([1, 2, 3], 12, seed=4))
    batch = model.generate(rng.integers(0, 7, (4, 2)), 5, temperature=0.7, top_k=3, top_p=0.9, seed=1)
    assert batch.shape == (4, 5) and batch.min() >= 0 and batch.max() < 7


@pytest.mark.parametrize("inp", list(INPUTS))
def test_greedy_generation_equals_rerunning_the_prefix(rng, inp):
    """The O(1)-per-token stateful loop gives what re-running the whole prefix would."""
    model = make(hidden_sizes=(5, 6), **INPUTS[inp])
    prompt = rng.integers(0, model.vocab_size, (2, 3))
    out = model.generate(prompt, 6, temperature=0)
    seq = prompt
    for k in range(6):
        logits, _ = model.forward(seq)
        nxt = logits[:, -1].argmax(-1)
        np.testing.assert_array_equal(out[:, k], nxt)
        seq = np.concatenate([seq, nxt[:, None]], axis=1)


def test_generate_runs_the_prompt_once_then_one_step_per_token(rng, monkeypatch):
    model = make(backend=get_backend("numpy", "float64", kernels="reference"))  # fused loop: test_kernels.py
    steps = []
    run = model._run  # the stack, time-major: ids (T, B)
    monkeypatch.setattr(model, "_run", lambda ids, *a, **k: steps.append(ids.shape[0]) or run(ids, *a, **k))
    model.generate(rng.integers(0, 7, (2, 10)), 8, seed=0)
    assert steps == [10] + [1] * 7


def test_banned_ids_are_never_generated(rng):
    model = make(embedding_dim=3)
    out = model.generate(rng.integers(0, 7, (16, 2)), 40, banned_ids=[0, 3, 5], temperature=1.5, seed=2)
    assert not np.isin(out, [0, 3, 5]).any()


def test_eos_stops_each_sequence(rng):
    model = make(embedding_dim=3)
    eos = 2
    out = model.generate(rng.integers(0, 7, (8, 2)), 500, banned_ids=[0, 1, 4, 5, 6], eos_id=eos, seed=3)
    assert out.shape[1] < 500  # stopped once every row had an EOS
    for row in out:
        hits = np.flatnonzero(row == eos)
        assert hits.size and np.all(row[hits[0] :] == eos)
    assert np.all(out[:, -1] == eos)


def test_generate_leaves_stateful_state_alone(rng):
    model = make(embedding_dim=3, stateful=True)
    model.forward(rng.integers(0, 7, (2, 4)))
    before = [s.copy() for s in model.recurrent[0].state]
    model.generate([1, 2], 5, seed=0)
    for a, b in zip(before, model.recurrent[0].state, strict=False):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "kwargs", [dict(temperature=-1.0), dict(temperature=float("nan")), dict(top_k=0), dict(top_p=0.0), dict(top_p=1.5)]
)
def test_generate_rejects_bad_options(kwargs):
    with pytest.raises(ValueError):
        make().generate([1], 3, **kwargs)


def test_generate_rejects_bad_prompts():
    model = make()
    with pytest.raises(ValueError):
        model.generate([9], 3)
    with pytest.raises(ValueError):
        model.generate(np.zeros((1, 0), int), 3)
    with pytest.raises(ValueError):
        model.generate([1], 3, banned_ids=[99])
