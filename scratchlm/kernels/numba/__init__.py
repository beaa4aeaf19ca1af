"""The Numba kernels of the NumPy backend; :mod:`.ops` is their op set (see :mod:`scratchlm.kernels`)."""
