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
               ~100x slower than a sort-and-reduce; see docs/design.md);
* ``kernels``  which code runs the hot loops: "reference" — the plain ``xp`` code
               of :mod:`scratchlm.layers` and :mod:`scratchlm.losses`, written to
               be read — or "fused" — the kernels of :mod:`scratchlm.kernels`
               (Numba on the CPU, CUDA on a GPU), tested against the reference;
* ``layer(cls)`` **the one seam between the two**: the class that computes
               layer ``cls`` on this backend — ``cls`` itself on the reference
               path, its fused subclass (``scratchlm/kernels/``) with
               ``kernels="fused"``. Models, and layers made of layers, build
               every part through it and never look at ``kernels`` themselves;
* ``ops``      the fused op set the fused subclasses call (``kernels/numba/ops.py``
               or ``kernels/cuda/ops.py``, imported on first use).

``get_backend("auto")`` picks CuPy when it is importable and a GPU is present and
NumPy otherwise. CuPy and Numba are imported lazily, only when first used.
The kernels default to "auto": fused (Numba on NumPy where Numba is installed,
the CUDA kernels on CuPy), reference otherwise; ``SCRATCHLM_KERNELS=reference|fused`` in the
environment overrides that default, and ``get_backend(..., kernels=...)``
overrides both.
"""

import importlib.util
import os
from types import ModuleType
from typing import Any, TypeVar

import numpy

from .checks import is_whole
from .errors import BackendUnavailable, ModelError

_DTYPES = {"float32": numpy.float32, "float64": numpy.float64}
_KERNELS = ("auto", "reference", "fused")
KERNELS_ENV = "SCRATCHLM_KERNELS"
Array = Any  # an array of the backend's module: numpy.ndarray or cupy.ndarray (in type hints)
Cls = TypeVar("Cls", bound=type)
_GPU_HINT = (
    'install the GPU extra with  pip install "scratchlm[gpu]"  (CUDA 12) or "scratchlm[gpu-cuda13]"  on a '
    'machine with a CUDA GPU, or use backend="numpy"'
)


class Backend:
    """An array module, a dtype and a choice of kernels. Build one with :func:`get_backend`."""

    def __init__(self, name: str, xp: ModuleType, dtype: Any, kernels: str = "reference"):
        self.name = name  # "numpy" or "cupy"
        self.xp = xp
        self.dtype = xp.dtype(dtype)
        self.kernels = kernels  # "reference" or "fused"
        self._ops = None

    def __repr__(self) -> str:
        return f"Backend({self.name!r}, dtype={self.dtype.name!r}, kernels={self.kernels!r})"

    # -- the seam between the reference path and the fused kernels ----------
    def layer(self, cls: Cls) -> Cls:
        """The class that computes layer ``cls`` here: ``cls`` on the reference path; with kernels="fused",
        its fused subclass where :data:`scratchlm.kernels.FUSED` registers one (else ``cls``).

        The fused subclasses compute the same functions (tested against ``cls``); importing their module
        imports no Numba or CuPy (the op set loads at the first fused call).
        """
        if self.kernels != "fused":
            return cls
        from .kernels import FUSED

        return FUSED.get(cls, cls)

    @property
    def ops(self) -> ModuleType:
        """The fused op set for this array module (``scratchlm.kernels.numba.ops`` or ``scratchlm.kernels.cuda.ops``),
        imported on first use: what the fused subclasses of :meth:`layer` call."""
        if self._ops is None:
            from . import kernels

            self._ops = kernels.for_backend(self.name)
        return self._ops

    # -- creation and transfer ---------------------------------------------
    def zeros(self, shape: Any, dtype: Any = None) -> Array:
        return self.xp.zeros(shape, dtype=dtype or self.dtype)

    def empty(self, shape: Any, dtype: Any = None) -> Array:
        return self.xp.empty(shape, dtype=dtype or self.dtype)

    def asarray(self, a: Any, dtype: Any = None) -> Array:
        """Host or device array -> array on this backend (float arrays in ``self.dtype``)."""
        if dtype is None:
            kind = (a.dtype if hasattr(a, "dtype") else numpy.asarray(a).dtype).kind  # never copies a device array
            dtype = self.dtype if kind == "f" else None
        return self.xp.asarray(a, dtype=dtype)

    def to_host(self, a: Array) -> numpy.ndarray:
        """Device array (or host array) -> NumPy array."""
        if self.name == "cupy":
            return self.xp.asnumpy(a)
        return numpy.asarray(a)

    @staticmethod
    def rng(seed: int | None = None) -> numpy.random.Generator:
        """A seeded host random generator (``numpy.random.Generator``, PCG64).

        seed: None (fresh entropy from the OS) or a whole number >= 0 (a Python
        or NumPy integer); anything else raises :class:`ModelError`.
        """
        if seed is not None and (not is_whole(seed) or seed < 0):
            raise ModelError(f"seed must be None or a whole number >= 0, got {seed!r}: pass e.g. seed=0")
        return numpy.random.default_rng(seed)

    # -- primitives --------------------------------------------------------
    def scatter_add(self, target: Array, index: Array, rows: Array) -> Array:
        """``target[index[k]] += rows[k]`` for every k, repeated indices accumulated.

        target (V, C), index (N,) ints, rows (N, C). NumPy: sort the rows by
        index, then add each run of equal indices with one ``sum`` (a contiguous
        block, summed pairwise). ``np.add.at`` does the same one row at a time
        and is ~100x slower; ``np.add.reduceat`` is ~10x slower. CuPy: atomic
        adds on the device. Fused kernels: one streaming pass (see
        ``scratchlm.kernels``).
        """
        if self.kernels == "fused":
            return self.ops.scatter_add(target, index, rows)
        if self.name == "cupy":
            import cupyx

            cupyx.scatter_add(target, index, rows)
            return target
        xp = self.xp
        if index.size == 0:
            return target
        order = xp.argsort(index, kind="stable")
        sorted_index = index[order]
        sorted_rows = rows[order]  # (N, C), grouped by index
        bounds = xp.flatnonzero(sorted_index[1:] != sorted_index[:-1]) + 1
        starts = [0, *bounds.tolist()]
        stops = [*bounds.tolist(), index.size]
        for start, stop in zip(starts, stops, strict=True):
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


def array_module(a: Array) -> ModuleType:
    """The array module (numpy or cupy) that array ``a`` belongs to."""
    if isinstance(a, numpy.ndarray) or numpy.isscalar(a):
        return numpy
    import cupy

    return cupy.get_array_module(a)


def get_backend(name: str | Backend = "auto", dtype: str | None = None, kernels: str | None = None) -> Backend:
    """Return a :class:`Backend`.

    name: "numpy", "cupy", "auto" (CuPy when importable and a GPU is present,
    else NumPy), or an existing Backend (returned as is unless another dtype
    or kernels choice is asked for).
    dtype: "float32" (the default) or "float64".
    kernels: "fused", "reference" or "auto" (fused where it is faster: on
    NumPy when Numba is installed; the CuPy kernels await GPU measurements).
    None means the ``SCRATCHLM_KERNELS`` environment variable, else "auto".
    """
    if isinstance(name, Backend):
        same_dtype = dtype is None or name.dtype == numpy.dtype(dtype)
        if same_dtype and (kernels is None or resolve_kernels(kernels, name.name) == name.kernels):
            return name
        dtype = name.dtype.name if dtype is None else dtype
        kernels = name.kernels if kernels is None else kernels
        name = name.name
    key = str(dtype if dtype is not None else "float32")
    if key not in _DTYPES:
        raise ModelError(f"unknown dtype {dtype!r}: use 'float32' or 'float64'")
    if name == "numpy":
        xp = numpy
    elif name == "cupy":
        xp = _cupy_or_raise()
    elif name == "auto":
        try:
            xp, name = _cupy_or_raise(), "cupy"
        except BackendUnavailable:
            xp, name = numpy, "numpy"
    else:
        raise BackendUnavailable(f"unknown backend {name!r}: choose 'numpy', 'cupy' or 'auto'")
    return Backend(name, xp, _DTYPES[key], resolve_kernels(kernels, name))


def resolve_kernels(kernels: str | None, name: str) -> str:
    """The kernels option resolved to "reference" or "fused" for backend ``name`` (None: environment, else "auto")."""
    source = "kernels"
    if kernels is None:
        kernels, source = os.environ.get(KERNELS_ENV) or "auto", KERNELS_ENV
    if kernels not in _KERNELS:
        raise BackendUnavailable(f"unknown {source} {kernels!r}: choose 'fused', 'reference' or 'auto'")
    has_numba = importlib.util.find_spec("numba") is not None
    if kernels == "auto":  # CuPy: the CUDA kernels, checked on a GPU (benchmarks/gpu_check.sh)
        return "fused" if name == "cupy" or has_numba else "reference"
    if kernels == "fused" and name == "numpy" and not has_numba:
        raise BackendUnavailable("the fused CPU kernels need Numba: pip install numba, or use kernels='reference'")
    return kernels
