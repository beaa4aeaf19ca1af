import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from scratchlm.gradcheck import check_gradients
from scratchlm.losses import softmax, softmax_cross_entropy


def direct_loss(logits, targets, mask=None):
    """The textbook formula, computed in the most literal (overflow-prone) way."""
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    nll = -np.log(np.take_along_axis(p, targets[..., None], -1)[..., 0])
    w = np.ones_like(nll) if mask is None else mask.astype(float)
    return float((nll * w).sum() / w.sum())


@pytest.mark.gradcheck
def test_matches_direct_formula_and_gradient(rng):
    logits = rng.standard_normal((4, 3, 6))
    targets = rng.integers(0, 6, (4, 3))
    mask = rng.random((4, 3)) > 0.3
    for m in (None, mask):
        loss, dlogits = softmax_cross_entropy(logits, targets, m)
        assert loss == pytest.approx(direct_loss(logits, targets, m), rel=1e-12)
        z = logits.copy()
        errs = check_gradients(lambda z=z, m=m: softmax_cross_entropy(z, targets, m)[0], {"z": z}, {"z": dlogits})
        assert errs["z"] <= 1e-6


def test_masked_tokens_do_not_count(rng):
    logits = rng.standard_normal((2, 5, 4))
    targets = rng.integers(0, 4, (2, 5))
    mask = np.ones((2, 5), bool)
    mask[1, 3:] = False
    loss, d = softmax_cross_entropy(logits, targets, mask)
    logits2 = logits.copy()
    logits2[1, 3:] += 100.0  # changing padded logits changes nothing
    assert softmax_cross_entropy(logits2, targets, mask)[0] == pytest.approx(loss, rel=1e-12)
    assert np.all(d[1, 3:] == 0)


def test_empty_mask_is_an_error():
    with pytest.raises(ValueError, match="mask"):
        softmax_cross_entropy(np.zeros((2, 3)), np.zeros(2, int), np.zeros(2, bool))


def test_stable_for_huge_logits():
    logits = np.array([[1e4, -1e4, 0.0], [-3e4, 3e4, 3e4]], dtype=np.float32)
    loss, d = softmax_cross_entropy(logits, np.array([0, 2]))
    assert np.isfinite(loss) and np.all(np.isfinite(d))
    assert loss == pytest.approx(np.log(2) / 2, rel=1e-5)


def test_does_not_modify_logits(rng):
    logits = rng.standard_normal((3, 5))
    before = logits.copy()
    softmax_cross_entropy(logits, np.array([0, 1, 2]))
    np.testing.assert_array_equal(logits, before)


@settings(max_examples=60, deadline=None)
@given(
    arrays(np.float64, st.tuples(st.integers(1, 5), st.integers(1, 9)), elements=st.floats(-500, 500, allow_nan=False))
)
def test_softmax_rows_sum_to_one(z):
    p = softmax(z)
    assert np.all(p >= 0)
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-12)
