"""Every argument a user can get wrong raises a ScratchLMError that says what to do, never a traceback.

The model, sampling and the batchers given empty, wrong-typed and out-of-range arguments (issue 9).
"""

import math

import numpy as np
import pytest

from scratchlm import LanguageModel, batching, budget, get_backend, sampling
from scratchlm.backend import Backend
from scratchlm.budget import ResourceError
from scratchlm.cli import main
from scratchlm.corpora import CorpusError
from scratchlm.errors import ModelError, SamplingError, ScratchLMError
from scratchlm.text import CharTokenizer

KERNELS = ["reference", "fused"]
V = 7


def model(kernels="fused", seed=1, **kw):
    return LanguageModel(
        V,
        embedding_dim=3,
        hidden_sizes=[5, 4],
        backend=get_backend("numpy", kernels=kernels),
        dtype="float64",
        seed=seed,
        **kw,
    )


def refuses(error, fn, *words):
    """fn() raises ``error`` (a ScratchLMError) whose message holds each of ``words``."""
    with pytest.raises(error) as info:
        fn()
    assert isinstance(info.value, ScratchLMError)
    for w in words:
        assert w in str(info.value), str(info.value)
    return str(info.value)


def test_model_errors_are_scratchlm_value_errors():
    assert issubclass(ModelError, ScratchLMError) and issubclass(ModelError, ValueError)


# -- generate: length and seed ----------------------------------------------------------------------------


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("options", [dict(), dict(temperature=0), dict(eos_id=2), dict(top_k=3)])
def test_length_zero_gives_empty_ids_on_both_kernel_paths(kernels, options):
    m = model(kernels)
    one = m.generate([1, 2], 0, seed=0, **options)
    batch = m.generate([[1, 2], [3, 4], [5, 6]], 0, seed=0, **options)
    assert one.shape == (0,) and one.dtype == np.int64
    assert batch.shape == (3, 0) and batch.dtype == np.int64


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("length", [2.7, 3.0, True, "3", None, -1, np.float64(2)])
def test_length_must_be_a_whole_number_of_tokens(kernels, length):
    refuses(ModelError, lambda: model(kernels).generate([1, 2], length), "length must be a whole number")


def test_numpy_integer_length_and_seed_are_whole_numbers():
    m = model()
    np.testing.assert_array_equal(m.generate([1, 2], np.int64(4), seed=np.int32(3)), m.generate([1, 2], 4, seed=3))


@pytest.mark.parametrize("seed", [-1, 1.5, True, "0", [1, -2]])
def test_seeds_must_be_whole_numbers_from_zero(seed):
    refuses(ModelError, lambda: model().generate([1, 2], 3, seed=seed), "seed must be None or a whole number >= 0")
    refuses(ModelError, lambda: model(seed=seed), "seed")
    refuses(ModelError, lambda: Backend.rng(seed), "seed")


def test_seed_is_stored_as_a_python_int():
    assert type(model(seed=np.int64(5)).config["seed"]) is int


# -- the constructor ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(vocab_size=7.5), "vocab_size"),
        (dict(vocab_size=True), "vocab_size"),
        (dict(vocab_size="7"), "vocab_size"),
        (dict(vocab_size=7, embedding_dim=2.0), "embedding_dim"),
        (dict(vocab_size=7, embedding_dim=False), "embedding_dim"),
        (dict(vocab_size=7, hidden_sizes=5), "hidden_sizes"),
        (dict(vocab_size=7, hidden_sizes="128"), "hidden_sizes"),
        (dict(vocab_size=7, hidden_sizes=[5.0]), "hidden_sizes"),
        (dict(vocab_size=7, hidden_sizes=[True]), "hidden_sizes"),
        (dict(vocab_size=7, hidden_sizes=[4, -1]), "hidden_sizes"),
        (dict(vocab_size=7, hidden_sizes=()), "hidden_sizes"),
        (dict(vocab_size=7, hidden_sizes=None), "hidden_sizes"),
        (dict(vocab_size=7, stateful="no"), "stateful"),
    ],
)
def test_constructor_refuses_non_integral_sizes(kwargs, words):
    refuses(ModelError, lambda: LanguageModel(**kwargs), words)


def test_constructor_takes_numpy_integers():
    m = LanguageModel(np.int64(7), embedding_dim=np.int32(3), hidden_sizes=(np.int64(4), 5))
    assert m.config["vocab_size"] == 7 and m.config["hidden_sizes"] == [4, 5] and m.embedding_dim == 3
    assert all(type(h) is int for h in m.hidden_sizes) and type(m.vocab_size) is int


@pytest.mark.parametrize("V_, E, hidden", [(7, None, [5]), (60, 16, [32, 24]), (23, 4, [5, 6, 3])])
def test_parameter_count_is_the_size_of_params(V_, E, hidden):
    m = LanguageModel(V_, embedding_dim=E, hidden_sizes=hidden)
    assert LanguageModel.parameter_count({"vocab_size": V_, "embedding_dim": E, "hidden_sizes": hidden}) == sum(
        p.size for p in m.params.values()
    )


def test_a_model_too_large_for_memory_is_refused_before_allocating(monkeypatch):
    monkeypatch.setattr(budget, "available_bytes", lambda: 64 << 30)
    refuses(
        ResourceError,
        lambda: LanguageModel(V, hidden_sizes=[100000]),
        "596.1 GiB",
        "64.0 GiB",
        "--hidden",
        "weights, gradients and optimizer state",
    )  # 4 copies of 4e10 float32 weights


def test_the_model_memory_estimate_is_four_copies_of_the_parameters(monkeypatch):
    need = (
        4 * LanguageModel.parameter_count({"vocab_size": V, "embedding_dim": 3, "hidden_sizes": [5, 4]}) * 8
    )  # float64
    monkeypatch.setattr(budget, "available_bytes", lambda: need)
    model()
    monkeypatch.setattr(budget, "available_bytes", lambda: need - 1)
    refuses(ResourceError, model)


# -- token ids, masks, state ----------------------------------------------------------------------------


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("x", [np.zeros((0, 3), int), np.zeros((2, 0), int), [[]], []])
def test_empty_batches_are_refused(kernels, x):
    m = model(kernels)
    for call in (
        lambda: m.forward(x),
        lambda: m.loss(x, x),
        lambda: m.loss_and_grads(x, x),
        lambda: m.loss(x, np.zeros(0, int), last_only=True),
    ):
        refuses(ModelError, call, "empty")


@pytest.mark.parametrize("prompt", [[], np.zeros((1, 0), int), np.zeros((0, 2), int), [[]]])
def test_an_empty_prompt_is_named_as_such(prompt):
    refuses(ModelError, lambda: model().generate(prompt, 3), "the prompt is empty", "at least one token id")


@pytest.mark.parametrize("x", [[[1, 2], [3]], [[1, None]], [["a", "b"]], [[1.0, 2.0]], [[True, False]], 3])
def test_token_ids_must_be_a_rectangular_integer_array(x):
    refuses(ModelError, lambda: model().forward(x), "x must be")
    refuses(ModelError, lambda: model().generate(x, 2), "prompt_ids must be")


@pytest.mark.parametrize("kernels", KERNELS)
def test_numeric_zero_one_masks_equal_boolean_masks(kernels, rng):
    m = model(kernels)
    x = rng.integers(0, V, (3, 4))
    mask = np.ones((3, 4), bool)
    mask[0, 2:] = False
    want = m.loss_and_grads(x, x, mask=mask)
    for numeric in (mask.astype(np.int64), mask.astype(np.float32), mask.astype(np.uint8)):
        loss, grads = m.loss_and_grads(x, x, mask=numeric)
        assert loss == want[0]
        for name in grads:
            np.testing.assert_array_equal(grads[name], want[1][name])


@pytest.mark.parametrize(
    "mask",
    [np.full((2, 3), 0.5), np.full((2, 3), 2), np.full((2, 3), np.nan), np.full((2, 3), "1"), np.full((2, 3), -1.0)],
)
def test_masks_hold_booleans_or_zeros_and_ones(mask):
    x = np.ones((2, 3), int)
    refuses(ModelError, lambda: model().forward(x, mask=mask), "mask must be boolean")
    refuses(ModelError, lambda: model().loss(x, x, mask=mask), "mask must be boolean")


def test_mask_shape_and_a_mask_that_scores_nothing():
    x = np.ones((2, 3), int)
    refuses(ModelError, lambda: model().forward(x, mask=np.ones((3, 2), bool)), "shape of x")
    refuses(ModelError, lambda: model().loss(x, x, mask=np.zeros((2, 3), bool)), "scores no token")
    assert math.isfinite(model().loss(x, x[:, -1], mask=np.zeros((2, 3), bool), last_only=True))


@pytest.mark.parametrize(
    "state",
    [
        [(np.zeros((2, 5)), np.zeros((2, 5)))],  # one layer of two
        [(np.zeros((2, 5)), np.zeros((2, 5))), (np.zeros((3, 4)), np.zeros((3, 4)))],  # another batch size
        [(np.zeros((2, 5)),), (np.zeros((2, 4)), np.zeros((2, 4)))],  # no c
        [([0.0] * 5, [0.0] * 5), (np.zeros((2, 4)), np.zeros((2, 4)))],  # lists, not arrays
        "zeros",
        0,
    ],
)
def test_state_must_be_one_pair_per_layer(state):
    x = np.ones((2, 3), int)
    refuses(ModelError, lambda: model().forward(x, state=state), "state must be None")
    refuses(ModelError, lambda: model().loss_and_grads(x, x, state=state), "state must be None")


def test_set_params_refuses_what_does_not_fit():
    m = model()
    params = {k: v.copy() for k, v in m.params.items()}
    refuses(ModelError, lambda: m.set_params(list(params.values())), "dict")
    refuses(ModelError, lambda: m.set_params({"dense/bias": params["dense/bias"]}), "missing parameters")
    refuses(ModelError, lambda: m.set_params({**params, "dense/bias": np.zeros(3)}), "dense/bias", "(7,)")
    refuses(ModelError, lambda: m.set_params({**params, "dense/bias": np.full(7, "x")}), "dense/bias")
    m.set_params(params)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_set_params_refuses_non_finite_weights_naming_the_array_and_changes_nothing(bad):
    m = model()
    before = {k: v.copy() for k, v in m.params.items()}
    values = {k: v + 1 for k, v in before.items()}
    values["lstm_1/recurrent_kernel"][2, 3] = bad
    refuses(ModelError, lambda: m.set_params(values), "lstm_1/recurrent_kernel", "1 value(s)", "not finite")
    assert all(np.array_equal(m.params[k], before[k]) for k in before)


def test_set_params_refuses_values_too_large_for_float32():
    m = LanguageModel(V, embedding_dim=3, hidden_sizes=[4], dtype="float32")
    values = {k: v.astype(np.float64) for k, v in m.params.items()}
    values["embedding/embeddings"][0, 0] = 1e300  # finite in float64, inf in float32
    refuses(ModelError, lambda: m.set_params(values), "embedding/embeddings", "float32")


# -- generate: eos, banned ids ----------------------------------------------------------------------------


@pytest.mark.parametrize("eos_id", [V, -1, 2.0, True, "2"])
def test_eos_id_must_be_in_the_vocabulary(eos_id):
    refuses(ModelError, lambda: model().generate([1, 2], 3, eos_id=eos_id), "eos_id", f"[0, {V})")


@pytest.mark.parametrize(
    "banned, words",
    [
        ([V], f"[0, {V})"),
        ([-1], f"[0, {V})"),
        ([1.0], "whole numbers"),
        ([True], "whole numbers"),
        (3, "iterable"),
        (["a"], "whole numbers"),
    ],
)
def test_banned_ids_must_be_integers_in_the_vocabulary(banned, words):
    refuses(SamplingError, lambda: model().generate([1, 2], 3, banned_ids=banned), words)
    refuses(SamplingError, lambda: sampling.probabilities(np.zeros((1, V)), banned_ids=banned), words)


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("options", [dict(), dict(temperature=0), dict(top_k=2), dict(eos_id=1), dict(length=0)])
def test_every_id_banned_is_refused_up_front_on_every_path(kernels, options):
    length = options.pop("length", 5)
    call = lambda: model(kernels).generate([1, 2], length, banned_ids=range(V), **options)  # noqa: E731
    refuses(SamplingError, call, "every token id is banned")


@pytest.mark.parametrize("kernels", KERNELS)
def test_an_absurd_length_is_refused_before_allocating(kernels, monkeypatch):
    m = model(kernels)
    monkeypatch.setattr(budget, "available_bytes", lambda: 64 << 30)
    refuses(ResourceError, lambda: m.generate([1, 2], 10**11), "100,000,000,000 tokens", "1.5 TiB", "fewer tokens")
    monkeypatch.setattr(budget, "available_bytes", lambda: 16 * 3 * 50)  # ids + uniforms of 3 rows, 50 tokens
    assert m.generate(np.ones((3, 2), int), 50, seed=0).shape == (3, 50)
    refuses(ResourceError, lambda: m.generate(np.ones((3, 2), int), 51))


# -- sampling on its own ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "logits, words",
    [
        ([[0.0, 1.0]], "NumPy or CuPy array"),
        (np.full((1, 3), "a"), "real"),
        (np.zeros((2, 0)), "V >= 1"),
        (np.zeros((1, 2), complex), "real"),
        (np.zeros((1, 2), bool), "real"),
    ],
)
def test_logits_must_be_a_real_array_with_a_vocabulary(logits, words):
    refuses(SamplingError, lambda: sampling.probabilities(logits), words)
    refuses(SamplingError, lambda: sampling.sample(logits, Backend.rng(0)), words)


@pytest.mark.parametrize("rng", [0, None, "seed"])
def test_sample_needs_a_random_generator(rng):
    refuses(SamplingError, lambda: sampling.sample(np.zeros((1, 3)), rng), "Backend.rng(seed)")


def test_check_banned_returns_sorted_distinct_ints():
    assert sampling.check_banned(np.array([3, 1, 3]), 5) == [1, 3]
    assert sampling.check_banned((), 1) == []


# -- batchers ---------------------------------------------------------------------------------------------

BATCHERS = {
    "windows": lambda ids: batching.Windows(ids, maxlen=3, step=1, batch_size=2),
    "streams": lambda ids: batching.Streams(ids, batch_size=2, seq_len=3),
    "padded": lambda ids: batching.Padded([ids], eos_id=0, pad_id=1, batch_size=2),
}


@pytest.mark.parametrize("kind", list(BATCHERS))
def test_batchers_accept_a_sane_corpus(kind):
    assert BATCHERS[kind](np.arange(20) % 5).num_batches >= 1


@pytest.mark.parametrize("kind", list(BATCHERS))
@pytest.mark.parametrize("ids", [np.zeros(0, np.int64), np.zeros(1, np.int64), []])
def test_empty_corpora_are_refused(kind, ids):
    if kind == "padded" and len(ids):
        pytest.skip("one token is a sequence Padded can train on")
    refuses(CorpusError, lambda: BATCHERS[kind](ids))


@pytest.mark.parametrize("kind", list(BATCHERS))
@pytest.mark.parametrize(
    "ids, words",
    [
        (np.arange(20.0), "integers"),
        (np.arange(20) - 3, ">= 0"),
        (np.arange(20).reshape(4, 5), "1-D"),
        (np.array(["a"] * 20), "integers"),
    ],
)
def test_batchers_need_a_flat_sequence_of_token_ids(kind, ids, words):
    refuses(CorpusError, lambda: BATCHERS[kind](ids), words)


@pytest.mark.parametrize("value", [2.5, True, "2", None, 0])
def test_batcher_sizes_are_whole_numbers(value):
    ids = np.arange(100) % 5
    refuses(CorpusError, lambda: batching.Windows(ids, maxlen=value), "maxlen")
    refuses(CorpusError, lambda: batching.Windows(ids, step=value), "step")
    refuses(CorpusError, lambda: batching.Streams(ids, batch_size=value), "batch size")
    refuses(CorpusError, lambda: batching.Streams(ids, seq_len=value), "sequence length")
    refuses(CorpusError, lambda: batching.Padded([ids], 0, 1, batch_size=value), "batch size")


@pytest.mark.parametrize("seed", [-1, 1.5, "0", True])
def test_batcher_seeds_are_whole_numbers_from_zero(seed):
    ids = np.arange(100) % 5
    refuses(CorpusError, lambda: batching.Windows(ids, 5, seed=seed), "seed")
    refuses(CorpusError, lambda: batching.Padded([ids], 0, 1, seed=seed), "seed")
    refuses(CorpusError, lambda: batching.split_sequences([ids, ids], 0.5, seed=seed), "seed")


@pytest.mark.parametrize("eos_id, pad_id", [(-1, 0), (0, 1.0), (True, 0)])
def test_padded_reserved_ids_are_whole_numbers(eos_id, pad_id):
    refuses(CorpusError, lambda: batching.Padded([np.arange(5)], eos_id, pad_id), "_id must be a whole number")


@pytest.mark.parametrize("fraction", ["0.1", None, True, math.nan, -0.1, 1, [0.1]])
def test_validation_fractions_are_numbers_in_zero_one(fraction):
    refuses(CorpusError, lambda: batching.split_tail(np.arange(10), fraction), "validation fraction")
    refuses(CorpusError, lambda: batching.split_sequences([np.arange(3)] * 4, fraction), "validation fraction")


def test_numpy_fractions_and_seeds_are_numbers():
    train, val = batching.split_tail(np.arange(10), np.float32(0.2))
    assert len(val) == 2
    assert len(batching.split_sequences([np.arange(3)] * 10, np.float64(0.3), seed=np.int64(2))[1]) == 3


# -- the command line -------------------------------------------------------------------------------------


def test_cli_sample_length_zero_and_a_negative_seed(tmp_path, capsys):
    tokenizer = CharTokenizer.fit("the cat sat on the mat.\n")
    path = tmp_path / "model.npz"
    LanguageModel(tokenizer.vocab_size, 4, [8]).save(path, metadata={"tokenizer": tokenizer.config})
    assert main(["sample", str(path), "--prime", "the ", "--length", "0"]) == 0
    assert "the " in capsys.readouterr().out
    try:
        code = main(["sample", str(path), "--prime", "the ", "--seed", "-1"])
    except SystemExit as exc:  # argparse may refuse it first
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "seed" in err, err
