"""Fused kernels: Numba on the CPU, CUDA (via CuPy) on a GPU.

Installed as ``scratchlm.kernels``. The plain-``xp`` code in
:mod:`scratchlm.layers` is the reference; these kernels compute the same
functions faster and are tested against it (``tests/test_kernels.py``).
A backend built with ``kernels="fused"`` (the default where it is faster, see
:func:`scratchlm.backend.get_backend`) routes the LSTM and GRU recurrences, the
Transformer's attention, LayerNorm, feed-forward and chunked output loss, the
softmax cross-entropy, the scatter-add and generation through them.

    cpu.py            the op set of the NumPy backend
      lstm_numba.py     LSTM step forward/backward kernels and the time loops
      gru_numba.py      the same for the GRU (reset gate after the recurrent product)
      blas.py           OpenBLAS's GEMM called from inside the Numba time loops; its thread count
      shards.py         the time loops of a batch split into row shards, one per core, or (thin batches)
                        every step split by hidden units over the cores
      dots.py           the per-step product of a few rows with U, as dot products (no packing)
      barrier.py        a spinning barrier for threads that meet inside Numba loops, once per step
      xent_numba.py     softmax cross-entropy, forward and backward in place; the output projection and
                        cross-entropy fused and chunked over rows (the Transformer's full logits never exist)
      attention_numba.py  causal attention without the (T, T) probabilities (online softmax, FlashAttention's
                        backward) and the KV-cache decoding attention
      layernorm_numba.py  LayerNorm forward/backward in one pass each; bias + ReLU of the feed-forward
      scatter_numba.py  scatter-add (embedding and input-table gradients)
      generate_numba.py the one-token-per-step sampling loop
      optim_numba.py    Adam's and RMSprop's updates, one pass per parameter (used by scratchlm.optim)
      activations.py    σ, tanh, exp: vectorisable float32, exact float64
      workspace.py      big work buffers, reused from step to step when free
      _jit.py           the Numba options every kernel is compiled with
    gpu.py            the op set of the CuPy backend, loading the .cu files:
      lstm_cell.cu  gru_cell.cu  softmax_xent.cu  scatter_add.cu  sample.cu
      attention.cu  layernorm.cu  feedforward.cu

Measurements and the design decisions behind these files: docs/benchmarks.md.

Nothing here is imported by ``import scratchlm``: Numba and CuPy load on the
first fused call.
"""

import importlib


def for_backend(name):
    """The op-set module for backend ``name`` ("numpy" -> kernels.cpu, "cupy" -> kernels.gpu)."""
    return importlib.import_module(f"{__name__}.{'cpu' if name == 'numpy' else 'gpu'}")
