"""The fused operations for the NumPy backend (Numba kernels + OpenBLAS GEMMs).

:class:`scratchlm.backend.Backend` hands this module to the layers as
``backend.fused`` when ``backend.kernels == "fused"``; ``kernels/gpu.py`` offers
the same functions for CuPy. Importing it imports Numba; each kernel is
compiled at its first call (or loaded from Numba's cache).
"""

from .generate_numba import decode
from .gru_numba import backward as gru_backward
from .gru_numba import forward as gru_forward
from .lstm_numba import backward as lstm_backward
from .lstm_numba import forward as lstm_forward
from .scatter_numba import scatter_add
from .workspace import take as empty_workspace
from .xent_numba import softmax_cross_entropy

__all__ = ["decode", "empty_workspace", "gru_backward", "gru_forward", "lstm_backward", "lstm_forward", "scatter_add", "softmax_cross_entropy"]
