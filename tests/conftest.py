"""Shared test helpers: small float64 models and random data of their own making."""

import os

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "20")  # what `import scratchlm` sets in a fresh process, before NumPy
# loads OpenBLAS: in-process CLI runs then take the code paths
# of a real `python -m scratchlm` (scratchlm/kernels/numba/parallel/shards.py)
import numpy as np
import pytest

from scratchlm import get_backend


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def be64():
    return get_backend("numpy", "float64")


def random_mask(rng, B, T):
    """(B, T) bool mask with right padding, left padding and a hole (row 0 keeps no step when T <= 2)."""
    mask = np.ones((B, T), dtype=bool)
    if B > 0:
        mask[0, T - 2 :] = False  # right padding
    if B > 1:
        mask[1, :2] = False  # left padding (outputs before the first step are zeros)
    if B > 2:
        mask[2, T // 2] = False  # a hole in the middle
    return mask
