"""Errors against a reference implementation's fixtures (PyTorch's nanoGPT, transformers' GPT-2)."""

import numpy as np

ZERO_GRADIENT = "/attention_1/key/bias"  # no gradient in exact arithmetic: judged on the model's gradient scale


def relative(a, b):
    """max|a − b| / max|b|."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def gradient_errors(grads, want):
    """{name: relative error}; the key biases' (zero in theory: softmax does not see a constant added to every
    score of a row) on the scale of the largest gradient, as an absolute bound."""
    scale = max(float(np.abs(g).max()) for g in want.values())
    return {
        name: float(np.abs(np.asarray(grads[name], np.float64) - want[name]).max() / scale)
        if name.endswith(ZERO_GRADIENT)
        else relative(grads[name], want[name])
        for name in want
    }
