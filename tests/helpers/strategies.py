"""Hypothesis strategies shared by the fused-kernel tests (NumPy: test_transformer_kernels.py; GPU: test_gpu.py)."""

import numpy as np
from hypothesis import strategies as st

from scratchlm.layers import causal_mask

SMALL_HEADS = st.integers(1, 5)  # K, the dimensions of a head, by default


@st.composite
def attention_cases(draw, key_dims=SMALL_HEADS):
    """Shapes, inputs and a mask: none, causal, causal ∧ padding (rows with no key), random, or (T, S).

    key_dims: the strategy for K, the dimensions of a head.
    """
    B, T, S = draw(st.integers(1, 4)), draw(st.integers(1, 9)), draw(st.integers(1, 9))
    E, N, K = draw(st.integers(1, 6)), draw(st.integers(1, 3)), draw(key_dims)
    kind = draw(st.sampled_from(["none", "causal", "padded", "random", "broadcast"]))
    self_attention = draw(st.booleans()) and kind in ("causal", "padded", "none")
    if self_attention:
        S = T
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    if kind == "none":
        mask = None
    elif kind == "causal":
        mask = np.broadcast_to(causal_mask(T, S), (B, T, S))
    elif kind == "padded":  # Keras: causal ∧ query keep ∧ key keep
        q_keep, k_keep = rng.random((B, T)) < 0.7, rng.random((B, S)) < 0.7
        q_keep[0, -1] = False  # a padded query: a row with no key
        mask = causal_mask(T, S)[None] & q_keep[:, :, None] & k_keep[:, None, :]
    elif kind == "random":
        mask = rng.random((B, T, S)) < draw(st.sampled_from([0.0, 0.3, 0.8, 1.0]))
    else:
        mask = causal_mask(T, S)  # (T, S), broadcast over the batch
    return dict(B=B, T=T, S=S, E=E, N=N, K=K, mask=mask, self_attention=self_attention, seed=seed)


def transformer_batch(rng, V, B, T, last_only, user_mask):
    """(x, y, mask) for a Transformer: padding (id 0) anywhere, whole rows too, but position (0, 0) scored; y for
    every position or (``last_only``) the last; with ``user_mask`` (and not last_only) a random mask as well."""
    x = rng.integers(1, V, (B, T))
    x[rng.random((B, T)) < 0.3] = 0
    x[0, 0] = 1
    y = rng.integers(0, V, (B,) if last_only else (B, T))
    mask = None
    if user_mask and not last_only:
        mask = rng.random((B, T)) < 0.8
        mask[0, 0] = True
    return x, y, mask
