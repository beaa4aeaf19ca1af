"""Array backend: which array module does the math, in which dtype, on which device.

Everything numeric in scratchlm is written once against ``backend.xp`` — NumPy on
the CPU, CuPy on a GPU — and this module is the only one that imports either for
math. A :class:`Backend` carries:

* ``xp``       the array module (``numpy`` or ``cupy``);
* ``dtype``    the floating-point type of parameters and activations (float32 by
               default, float64 on request, e.g. for gradient checks);
* ``rng(seed)`` a seeded random generator. It is always a host NumPy generator so
               that the same seed gives the same initial weights and the same
               samples on either backend;
* ``asarray`` / ``to_host``  host <-> device transfer;
* ``scatter_add`` the one primitive NumPy lacks a fast form of (``np.add.at`` is
               ~100x slower than a sort-and-reduce; see DESIGN.md).

``get_backend("auto")`` picks CuPy when it is importable and a GPU is present and
NumPy otherwise. CuPy is imported lazily, only when asked for.
"""

import numpy

from .errors import BackendUnavailable

_DTYPES = {"float32": numpy.float32, "float64": numpy.float64}
_GPU_HINT = 'install the GPU extra with  pip install "scratchlm[gpu]"  on a machine with a CUDA GPU, or use backend="numpy"'


class Backend:
    """An array module plus a dtype. Build one with :func:`get_backend`."""

    def __init__(self, name, xp, dtype):
        self.name = name          # "numpy" or "cupy"
        self.xp = xp
        self.dtype = xp.dtype(dtype)

    def __repr__(self):
        return f"Backend({self.name!r}, dtype={self.dtype.name!r})"

    # -- creation and transfer ---------------------------------------------
    def zeros(self, shape, dtype=None):
        return self.xp.zeros(shape, dtype=dtype or self.dtype)

    def empty(self, shape, dtype=None):
        return self.xp.empty(shape, dtype=dtype or self.dtype)

    def asarray(self, a, dtype=None):
        """Host or device array -> array on this backend (float arrays in ``self.dtype``)."""
        if dtype is None:
            kind = getattr(a, "dtype", numpy.asarray(a).dtype).kind
            dtype = self.dtype if kind == "f" else None
        return self.xp.asarray(a, dtype=dtype)

    def to_host(self, a):
        """Device array (or host array) -> NumPy array."""
        if self.name == "cupy":
            return self.xp.asnumpy(a)
        return numpy.asarray(a)

    @staticmethod
    def rng(seed=None):
        """A seeded host random generator (``numpy.random.Generator``, PCG64)."""
        return numpy.random.default_rng(seed)

    # -- primitives --------------------------------------------------------
    def scatter_add(self, target, index, rows):
        """``target[index[k]] += rows[k]`` for every k, repeated indices accumulated.

        target (V, C), index (N,) ints, rows (N, C). NumPy: sort the rows by
        index, then add each run of equal indices with one ``sum`` (a contiguous
        block, summed pairwise). ``np.add.at`` does the same one row at a time
        and is ~100x slower; ``np.add.reduceat`` is ~10x slower. CuPy: atomic
        adds on the device.
        """
        if self.name == "cupy":
            import cupyx
            cupyx.scatter_add(target, index, rows)
            return target
        xp = self.xp
        if index.size == 0:
            return target
        order = xp.argsort(index, kind="stable")
        sorted_index = index[order]
        sorted_rows = rows[order]                                         # (N, C), grouped by index
        bounds = xp.flatnonzero(sorted_index[1:] != sorted_index[:-1]) + 1
        starts = [0, *bounds.tolist()]
        stops = [*bounds.tolist(), index.size]
        for start, stop in zip(starts, stops):
            target[sorted_index[start]] += sorted_rows[start:stop].sum(axis=0)
        return target


def _cupy_or_raise():
    try:
        import cupy
    except Exception as exc:  # ImportError, or a broken CUDA install
        raise BackendUnavailable(f"CuPy is not importable ({exc.__class__.__name__}: {exc}); {_GPU_HINT}") from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        raise BackendUnavailable(f"CuPy found no usable CUDA GPU ({exc}); {_GPU_HINT}") from None
    if count < 1:
        raise BackendUnavailable(f"CuPy found no CUDA GPU; {_GPU_HINT}")
    return cupy


def array_module(a):
    """The array module (numpy or cupy) that array ``a`` belongs to."""
    if isinstance(a, numpy.ndarray) or numpy.isscalar(a):
        return numpy
    import cupy
    return cupy.get_array_module(a)


def get_backend(name="auto", dtype=None):
    """Return a :class:`Backend`.

    name: "numpy", "cupy", "auto" (CuPy when importable and a GPU is present,
    else NumPy), or an existing Backend (returned as is unless another dtype is asked for).
    dtype: "float32" (the default) or "float64".
    """
    if isinstance(name, Backend):
        if dtype is None or name.dtype == numpy.dtype(dtype):
            return name
        name = name.name
    key = str(dtype if dtype is not None else "float32")
    if key not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}: use 'float32' or 'float64'")
    if name == "numpy":
        return Backend("numpy", numpy, _DTYPES[key])
    if name == "cupy":
        return Backend("cupy", _cupy_or_raise(), _DTYPES[key])
    if name == "auto":
        try:
            return Backend("cupy", _cupy_or_raise(), _DTYPES[key])
        except BackendUnavailable:
            return Backend("numpy", numpy, _DTYPES[key])
    raise BackendUnavailable(f"unknown backend {name!r}: choose 'numpy', 'cupy' or 'auto'")
