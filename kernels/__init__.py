"""Fused kernels for the recurrent step (Numba on CPU, CUDA via CuPy on GPU).

Installed as ``scratchlm.kernels``. Until the fused kernels land, every
operation runs on the reference path in :mod:`scratchlm.layers`.
"""
