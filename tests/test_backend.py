import importlib.util

import numpy as np
import pytest

from scratchlm import BackendUnavailable, get_backend
from scratchlm.backend import array_module


def test_numpy_backend_defaults_to_float32():
    be = get_backend("numpy")
    assert be.xp is np and be.dtype == np.float32 and be.name == "numpy"
    assert be.zeros((2, 3)).dtype == np.float32


def test_float64_on_request_and_backend_passthrough():
    be = get_backend("numpy", "float64")
    assert be.dtype == np.float64
    assert get_backend(be) is be
    assert get_backend(be, "float32").dtype == np.float32


def test_unknown_backend_and_dtype():
    with pytest.raises(BackendUnavailable, match="numpy"):
        get_backend("tpu")
    with pytest.raises(ValueError, match="float32"):
        get_backend("numpy", "float16")


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="CuPy is installed here")
def test_cupy_without_cupy_names_the_gpu_extra():
    with pytest.raises(BackendUnavailable, match=r"scratchlm\[gpu\]"):
        get_backend("cupy")


def test_auto_falls_back_to_numpy_without_gpu():
    be = get_backend("auto")
    assert be.name in ("numpy", "cupy")
    if importlib.util.find_spec("cupy") is None:
        assert be.name == "numpy"


def test_asarray_casts_floats_keeps_ints():
    be = get_backend("numpy")
    assert be.asarray(np.ones(3, np.float64)).dtype == np.float32
    assert be.asarray(np.arange(3)).dtype.kind == "i"
    assert isinstance(be.to_host(be.zeros(2)), np.ndarray)


def test_rng_is_seeded():
    a = get_backend("numpy").rng(7).random(5)
    b = get_backend("numpy").rng(7).random(5)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("V,N,C", [(1, 5, 3), (7, 40, 4), (50, 3, 2), (5, 0, 3)])
def test_scatter_add_matches_a_plain_loop(V, N, C):
    be = get_backend("numpy", "float64")
    rng = np.random.default_rng(V + N)
    index = rng.integers(0, V, N)
    rows = rng.standard_normal((N, C))
    expected = np.zeros((V, C))
    for k in range(N):
        expected[index[k]] += rows[k]
    target = np.zeros((V, C))
    be.scatter_add(target, index, rows)
    np.testing.assert_allclose(target, expected, rtol=1e-12, atol=1e-12)


def test_array_module():
    assert array_module(np.zeros(2)) is np
