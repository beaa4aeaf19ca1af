"""Tests of scratchlm.sampling: temperature, greedy, top-k, top-p, banned ids, drawing."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from scratchlm.backend import Backend
from scratchlm.errors import ScratchLMError
from scratchlm.sampling import SamplingError, check_options, probabilities, sample

DTYPES = [np.float32, np.float64]


def logit_rows(min_value=-30.0, max_value=30.0, max_rows=4, max_vocab=12):
    """Hypothesis strategy: (B, V) float64 logits."""
    shape = st.tuples(st.integers(1, max_rows), st.integers(2, max_vocab))
    elements = st.floats(min_value, max_value, allow_nan=False, allow_infinity=False)
    return arrays(np.float64, shape, elements=elements)


def entropy(p):
    """Row entropies in nats, with 0 log 0 = 0."""
    p = p.astype(np.float64)
    return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0), axis=-1)


class FixedUniforms:
    """A stand-in rng whose ``random(n)`` returns chosen numbers (to probe the edges of [0, 1))."""

    def __init__(self, value):
        self.value = value

    def random(self, n):
        return np.full(n, self.value)


# -- options -------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        dict(temperature=-0.5),
        dict(temperature=math.nan),
        dict(temperature=math.inf),
        dict(temperature="1"),
        dict(temperature=None),
        dict(temperature=True),
        dict(top_k=0),
        dict(top_k=-3),
        dict(top_k=1.5),
        dict(top_k=2.0),
        dict(top_k=True),
        dict(top_p=0),
        dict(top_p=1.5),
        dict(top_p=-0.1),
        dict(top_p=math.nan),
        dict(top_p="0.9"),
    ],
)
def test_invalid_options_raise_value_error(options):
    with pytest.raises(ValueError):
        check_options(**options)
    logits = np.zeros((2, 5))
    with pytest.raises(ValueError, match="temperature|top_k|top_p"):
        probabilities(logits, **options)
    with pytest.raises(SamplingError):
        sample(logits, Backend.rng(0), **options)


@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(temperature=0),
        dict(temperature=0.0),
        dict(temperature=2),
        dict(temperature=np.float32(0.7)),
        dict(top_k=1),
        dict(top_k=np.int64(3)),
        dict(top_k=10**9),
        dict(top_p=1),
        dict(top_p=1e-9),
        dict(top_p=0.5),
    ],
)
def test_valid_options_pass(options):
    assert check_options(**options) is None


def test_errors_are_scratchlm_errors():
    assert issubclass(SamplingError, ValueError) and issubclass(SamplingError, ScratchLMError)


# -- the distribution ----------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(logit_rows(), st.sampled_from(DTYPES), st.floats(0.05, 20))
def test_softmax_rows_are_distributions(z, dtype, temperature):
    p = probabilities(z.astype(dtype), temperature=temperature)
    assert p.dtype == dtype and p.shape == z.shape
    assert np.all(p >= 0)
    np.testing.assert_allclose(p.sum(axis=1), 1, rtol=0, atol=1e-5 if dtype == np.float32 else 1e-12)


@settings(max_examples=60, deadline=None)
@given(logit_rows(), st.floats(0.1, 10))
def test_matches_the_keras_seed_formula(z, temperature):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)  # the model's softmax output
    q = np.exp(np.log(p) / temperature)  # the seed: exp(log p / T), renormalised
    q /= q.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probabilities(z, temperature=temperature), q, rtol=1e-9, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(logit_rows(), st.floats(0.05, 10), st.floats(1.01, 3))
def test_lower_temperature_never_raises_entropy(z, t1, ratio):
    cold = entropy(probabilities(z, temperature=t1))
    hot = entropy(probabilities(z, temperature=t1 * ratio))
    assert np.all(cold <= hot + 1e-9)


@settings(max_examples=60, deadline=None)
@given(logit_rows(), st.sampled_from(DTYPES), st.sampled_from([0, 0.0, 1e-4]))
def test_temperature_to_zero_gives_the_argmax(z, dtype, temperature):
    rows = np.arange(z.shape[0])
    winner = z.argmax(axis=1)
    z[rows, winner] = z.max(axis=1) + 0.01  # beats the rest by >= 0.01: exp(-0.01/1e-4) ~ 0
    z = z.astype(dtype)
    p = probabilities(z, temperature=temperature)
    if temperature == 0:
        assert np.array_equal(p, np.eye(z.shape[1], dtype=dtype)[winner])
    else:
        np.testing.assert_allclose(p[rows, winner], 1, rtol=0, atol=1e-6)
    assert np.array_equal(sample(z, Backend.rng(0), temperature=temperature), winner)


def test_greedy_skips_banned_ids_and_draws_nothing():
    z = np.array([[5.0, 1.0, 4.0], [0.0, 9.0, 8.0]])
    rng = Backend.rng(1)
    state = rng.bit_generator.state
    assert np.array_equal(sample(z, rng, temperature=0, banned_ids=[0, 1]), [2, 2])
    assert rng.bit_generator.state == state
    assert np.array_equal(probabilities(z, temperature=0, banned_ids=[1]), [[1, 0, 0], [0, 0, 1]])


@settings(max_examples=60, deadline=None)
@given(logit_rows(), st.data())
def test_top_k_leaves_at_most_k_nonzero_and_they_are_the_largest(z, data):
    V = z.shape[1]
    k = data.draw(st.integers(1, V + 2))
    full = probabilities(z)
    p = probabilities(z, top_k=k)
    np.testing.assert_allclose(p.sum(axis=1), 1, atol=1e-12)
    assert np.all(np.count_nonzero(p, axis=1) <= k)
    for row_full, row in zip(full, p, strict=False):
        kept = row > 0
        if np.any(~kept):  # nothing dropped outranks what is kept
            assert row_full[kept].min() >= row_full[~kept].max()
        np.testing.assert_allclose(row[kept], row_full[kept] / row_full[kept].sum(), rtol=1e-9)


def test_top_k_with_ties_keeps_exactly_k():
    p = probabilities(np.zeros((3, 10)), top_k=4)
    assert np.array_equal(np.count_nonzero(p, axis=1), [4, 4, 4])
    np.testing.assert_allclose(p[p > 0], 0.25)


@settings(max_examples=80, deadline=None)
@given(logit_rows(-8, 8), st.floats(0.01, 0.999))
def test_top_p_keeps_the_minimal_nucleus(z, top_p):
    full = probabilities(z)
    p = probabilities(z, top_p=top_p)
    np.testing.assert_allclose(p.sum(axis=1), 1, atol=1e-12)
    for row_full, row in zip(full, p, strict=False):
        kept = row > 0
        mass = row_full[kept].sum()
        assert mass >= top_p - 1e-12  # enough mass ...
        assert mass - row_full[kept].min() < top_p + 1e-12  # ... and no id to spare
        if np.any(~kept):
            assert row_full[kept].min() >= row_full[~kept].max()  # the most likely ids
        np.testing.assert_allclose(row[kept], row_full[kept] / mass, rtol=1e-9)


def test_top_p_always_keeps_the_top_token():
    p = probabilities(np.array([[3.0, 2.0, 1.0]]), top_p=1e-9)
    assert np.array_equal(p, [[1.0, 0.0, 0.0]])


def test_top_k_then_top_p_after_temperature():
    z = np.log(np.array([[0.4, 0.3, 0.2, 0.1]]))
    # top_k=3 -> [4, 3, 2]/9; nucleus 0.7 of that -> the first two, 7/9 >= 0.7
    np.testing.assert_allclose(probabilities(z, top_k=3, top_p=0.7), [[4 / 7, 3 / 7, 0, 0]])
    # temperature 0.5 squares the probabilities before top-k: [16, 9, 4, 1]/30 -> [16, 9]/25
    np.testing.assert_allclose(probabilities(z, temperature=0.5, top_k=2), [[16 / 25, 9 / 25, 0, 0]])


# -- banned ids ----------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_banned_ids_have_zero_probability_and_are_never_sampled(dtype):
    V = 7
    z = np.tile(np.array([50.0, -1, 0, 1, 2, 3, 49], dtype=dtype), (5000, 1))  # the banned ids dominate
    banned = (0, 6)
    p = probabilities(z, banned_ids=banned)
    assert np.all(p[:, banned] == 0)
    ids = sample(z, Backend.rng(0), temperature=1.5, banned_ids=banned)
    assert ids.shape == (5000,) and ids.dtype == np.int64
    assert not np.isin(ids, banned).any()
    assert set(np.unique(ids)) == set(range(1, V - 1))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("u", [0.0, 1e-300, 0.5, np.nextafter(1.0, 0.0)])
def test_edges_of_the_uniform_never_pick_a_zero_probability_id(dtype, u):
    # zero-probability ids at both ends and in the middle; top-k cuts one more
    z = np.array([[9.0, 1.0, 9.0, 2.0, 0.5, 9.0, 9.0]], dtype=dtype)
    banned = (0, 2, 5, 6)
    allowed = sample(z, FixedUniforms(u), banned_ids=banned, top_k=2)
    assert int(allowed[0]) in (1, 3)
    p = probabilities(z, banned_ids=banned, top_k=2)
    assert p[0, allowed[0]] > 0
    # u just below 1 lands on the last id with probability > 0, u = 0 on the first
    if u == 0.0:
        assert allowed[0] == 1
    if u == np.nextafter(1.0, 0.0):
        assert allowed[0] == 3


def test_a_wobbly_cdf_never_picks_a_zero_probability_id(monkeypatch):
    # A GPU's parallel cumsum need not stay flat across zero-probability ids; fake
    # one that rises at every id (and ends above the cdf of the last positive id).
    exact_cumsum = np.cumsum
    monkeypatch.setattr(np, "cumsum", lambda a, axis: exact_cumsum(a, axis=axis) + 1e-3 * np.arange(1, a.shape[-1] + 1))
    z = np.zeros((1, 7))
    banned = (0, 2, 3, 5, 6)
    picked = {int(sample(z, FixedUniforms(u), banned_ids=banned)[0]) for u in np.linspace(0, np.nextafter(1, 0), 501)}
    assert picked == {1, 4}


def test_banned_ids_accept_any_iterable_of_ints():
    z = np.zeros((1, 4))
    for banned in ([1, 2], (2, 1, 1), {1, 2}, np.array([1, 2]), range(1, 3)):
        np.testing.assert_allclose(probabilities(z, banned_ids=banned), [[0.5, 0, 0, 0.5]])


def test_all_banned_raises():
    z = np.zeros((2, 3))
    with pytest.raises(ValueError, match="banned"):
        probabilities(z, banned_ids=[0, 1, 2])
    with pytest.raises(ValueError, match="banned"):
        sample(z, Backend.rng(0), temperature=0, banned_ids=range(3))


@pytest.mark.parametrize("banned", [[3], [-1], [0, 7]])
def test_out_of_range_banned_ids_raise(banned):
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        probabilities(np.zeros((1, 3)), banned_ids=banned)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_plus_inf_logits_raise(bad):
    z = np.zeros((2, 4))
    z[1, 2] = bad
    with pytest.raises(ValueError, match="finite"):
        probabilities(z)
    with pytest.raises(ValueError, match="finite"):
        sample(z, Backend.rng(0), temperature=0)


def test_minus_inf_logits_act_like_bans_until_a_row_is_all_minus_inf():
    z = np.array([[-np.inf, 0.0, -np.inf]])
    assert np.array_equal(probabilities(z), [[0, 1, 0]])
    with pytest.raises(ValueError, match="finite"):
        probabilities(z, banned_ids=[1])


# -- numerics, shapes, dtypes --------------------------------------------------


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # (z - max) / T -> -inf, harmless
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("temperature", [0, 1e-45, 1e-4, 0.5, 1.0, 3.0, 1e50])
def test_extreme_logits_give_no_nan(dtype, temperature):
    z = np.array([[1e4, -1e4, 0.0, 1e4 - 1], [-1e4, -1e4, -9999.0, -1e4], [3e38, -3e38, 0, 1]], dtype=dtype)
    for options in (dict(), dict(top_k=2), dict(top_p=0.9), dict(banned_ids=[0])):
        p = probabilities(z, temperature=temperature, **options)
        assert p.dtype == dtype and np.all(np.isfinite(p)) and np.all(p >= 0)
        np.testing.assert_allclose(p.sum(axis=1), 1, atol=1e-6)
        ids = sample(z, Backend.rng(3), temperature=temperature, **options)
        assert np.all(p[np.arange(3), ids] > 0)
    if temperature <= 1e-4:
        assert np.array_equal(probabilities(z, temperature=temperature).argmax(axis=1), [0, 2, 0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_input_logits_are_not_modified(dtype):
    z = np.array([[1.0, 2.0, 3.0], [0.0, -1.0, 5.0]], dtype=dtype)
    before = z.copy()
    probabilities(z, temperature=0.7, top_k=2, top_p=0.8, banned_ids=[2])
    sample(z, Backend.rng(0), temperature=0.7, top_k=2, top_p=0.8, banned_ids=[2])
    sample(z, Backend.rng(0), temperature=0, banned_ids=[2])
    assert np.array_equal(z, before)


def test_one_row_logits():
    z = np.array([0.0, 3.0, 1.0, 2.0], dtype=np.float32)
    p = probabilities(z, temperature=0.8, top_k=3)
    assert p.shape == (4,) and p.dtype == np.float32
    np.testing.assert_allclose(p, probabilities(z[None], temperature=0.8, top_k=3)[0])
    for temperature in (0, 1.0):
        i = sample(z, Backend.rng(5), temperature=temperature)
        assert i.shape == () and i.dtype == np.int64
        assert int(i) == int(sample(z[None], Backend.rng(5), temperature=temperature)[0])
    assert int(sample(z, Backend.rng(5), temperature=0)) == 1


def test_integer_logits_are_taken_as_float64():
    p = probabilities(np.array([[0, 1, 2]]))
    assert p.dtype == np.float64
    np.testing.assert_allclose(p, probabilities(np.array([[0.0, 1.0, 2.0]])))


def test_logits_of_another_rank_raise():
    with pytest.raises(ValueError, match="shape"):
        probabilities(np.zeros((2, 3, 4)))


# -- drawing -------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("options", [dict(), dict(temperature=0.6), dict(top_k=4), dict(top_p=0.8, banned_ids=[1])])
def test_empirical_frequencies_match_probabilities(dtype, options):
    n = 20000
    z = np.array([0.5, -1.0, 1.5, 0.0, 2.0, -0.5], dtype=dtype)
    p = probabilities(z, **options).astype(np.float64)
    ids = sample(np.tile(z, (n, 1)), Backend.rng(1234), **options)
    counts = np.bincount(ids, minlength=z.size)
    assert np.all(counts[p == 0] == 0)
    expected = n * p[p > 0]
    chi2 = np.sum((counts[p > 0] - expected) ** 2 / expected)
    assert chi2 < 30  # df <= 5: P(chi2 > 30) < 2e-5


@settings(max_examples=30, deadline=None)
@given(logit_rows(), st.integers(0, 2**32 - 1), st.sampled_from([0.5, 1.0, 2.0]))
def test_same_seed_same_samples(z, seed, temperature):
    first = sample(z, Backend.rng(seed), temperature=temperature, top_p=0.9)
    second = sample(z, Backend.rng(seed), temperature=temperature, top_p=0.9)
    assert np.array_equal(first, second)


def test_sample_draws_one_uniform_per_row():
    rng = Backend.rng(7)
    sample(np.zeros((3, 5)), rng)
    reference = Backend.rng(7)
    reference.random(3)
    assert rng.random() == reference.random()


@pytest.mark.gpu
def test_cupy_matches_numpy():
    from scratchlm.backend import get_backend
    from scratchlm.errors import BackendUnavailable

    try:
        gpu = get_backend("cupy", dtype="float64")
    except BackendUnavailable as exc:
        pytest.skip(str(exc))
    z = Backend.rng(0).normal(size=(64, 50)) * 3
    for options in (dict(), dict(temperature=0), dict(temperature=0.7, top_k=5), dict(top_p=0.9, banned_ids=[0, 3])):
        p_gpu = probabilities(gpu.asarray(z), **options)
        assert gpu.xp.get_array_module(p_gpu) is gpu.xp
        np.testing.assert_allclose(gpu.to_host(p_gpu), probabilities(z, **options), rtol=1e-12, atol=1e-15)
        ids_gpu = sample(gpu.asarray(z), Backend.rng(9), **options)
        assert ids_gpu.dtype == np.int64
        assert np.array_equal(gpu.to_host(ids_gpu), sample(z, Backend.rng(9), **options))
