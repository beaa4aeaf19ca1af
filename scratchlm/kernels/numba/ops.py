"""The fused operations for the NumPy backend (Numba kernels + OpenBLAS GEMMs).

This is ``backend.ops`` of a NumPy :class:`scratchlm.backend.Backend`: what the
fused subclasses of ``scratchlm/kernels/layers.py`` and ``decoding.py`` call.
``scratchlm/kernels/cuda/ops.py`` offers the same functions for CuPy. Importing
it imports Numba; each kernel is compiled at its first call (or loaded from
Numba's cache).
"""

import numpy as np

from .attention import attend as attention_decode
from .attention import backward as attention_backward
from .attention import forward as attention_forward
from .generate import decode, decode_layer, sample_rows
from .gru import backward as gru_backward
from .gru import forward as gru_forward
from .layernorm import (
    bias_gelu,
    bias_relu,
    gelu_backward,
    layernorm_backward,
    layernorm_forward,
    relu_backward,
    residual_layernorm,
)
from .lstm import backward as lstm_backward
from .lstm import forward as lstm_forward
from .parallel.workspace import take as empty_workspace
from .scatter import scatter_add
from .xent import dense_softmax_cross_entropy, softmax_cross_entropy


def sample_logits(logits, banned, temperature, u, ids):
    """ids (B,) drawn from logits (B, V) as :func:`scratchlm.sampling.sample` draws them (temperature 0:
    argmax; banned (V,) bool never drawn; u (B,) host uniforms); logits are overwritten. False if a row
    has no finite maximum."""
    return sample_rows(logits, np.zeros(logits.shape[1], dtype=logits.dtype), banned, temperature, u, ids)


__all__ = [
    "attention_backward",
    "attention_decode",
    "attention_forward",
    "bias_gelu",
    "bias_relu",
    "gelu_backward",
    "decode",
    "decode_layer",
    "dense_softmax_cross_entropy",
    "empty_workspace",
    "gru_backward",
    "gru_forward",
    "layernorm_backward",
    "layernorm_forward",
    "lstm_backward",
    "lstm_forward",
    "relu_backward",
    "residual_layernorm",
    "sample_logits",
    "scatter_add",
    "softmax_cross_entropy",
]
