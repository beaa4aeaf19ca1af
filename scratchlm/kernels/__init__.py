"""Fused kernels: Numba on the CPU, CUDA (via CuPy) on a GPU, and the one seam where they plug in.

The plain-``xp`` code in :mod:`scratchlm.layers` is the reference; these kernels
compute the same functions faster and are tested against it
(``tests/test_kernels.py``, ``tests/test_transformer_kernels.py``, on a GPU
``tests/test_gpu.py``). They plug in at one seam: :data:`FUSED` maps each
reference class to its fused subclass, and a backend built with
``kernels="fused"`` (the default, see :func:`scratchlm.backend.get_backend`)
hands those out from :meth:`~scratchlm.backend.Backend.layer`, which is how
models and layers build their parts. So the LSTM and GRU recurrences, the
Transformer's attention, LayerNorm, feed-forward and chunked output loss, the
softmax cross-entropy and generation run here; the scatter-add is the backend's
own (:meth:`~scratchlm.backend.Backend.scatter_add`).

    layers.py           the fused subclasses of the layers and of the loss
    decoding.py         the fused token loops of generation, and the blocks' one-position decoding step
    numba/              the math kernels for the NumPy backend
      ops.py              the op set: every fused operation, under the names the layers call
      lstm.py             LSTM step forward/backward kernels and the time loops
      gru.py              the same for the GRU (reset gate after the recurrent product)
      xent.py             softmax cross-entropy, forward and backward in place; the output projection and
                          cross-entropy fused and chunked over rows (the Transformer's full logits never exist)
      attention.py        causal attention without the (T, T) probabilities (online softmax, FlashAttention's
                          backward) and the KV-cache decoding attention
      layernorm.py        LayerNorm forward/backward in one pass each; bias + ReLU of the feed-forward
      scatter.py          scatter-add (embedding and input-table gradients)
      generate.py         the one-token-per-step sampling loop
      optim.py            Adam's and RMSprop's updates, one pass per parameter (used by scratchlm.optim)
      activations.py      σ, tanh, exp: vectorisable float32, exact float64
      options.py          the Numba options every kernel is compiled with
      parallel/         the threading plumbing the time loops run on
        blas.py             OpenBLAS's GEMM called from inside the Numba loops; its thread count
        shards.py           a batch split into row shards, one per core, or (thin batches) every step
                            split by hidden units over the cores
        panels.py           the per-step product h U on U packed once per loop, with its own micro-kernel
        barrier.py          a spinning barrier for threads that meet inside Numba loops, once per step
        workspace.py        big work buffers, reused from step to step when free
    cuda/               the CuPy backend
      ops.py              the op set (the same names and buffer conventions), loading the .cu files:
      lstm_cell.cu  gru_cell.cu  softmax_xent.cu  scatter_add.cu  sample.cu
      attention.cu  layernorm.cu  feedforward.cu

Measurements and the design decisions behind these files: docs/benchmarks.md.

Nothing here is imported by ``import scratchlm``: Numba and CuPy load on the
first fused call.
"""

import importlib
from types import ModuleType

from ..layers import (
    GRU,
    LSTM,
    BookDecoderBlock,
    Dense,
    FeedForward,
    GPTDecoderBlock,
    LayerNormalization,
    MultiHeadAttention,
)
from ..losses import SoftmaxCrossEntropy
from ..models.recurrent import RecurrentTokenLoop
from ..models.transformer import TransformerTokenLoop
from .decoding import FusedBookDecoderBlock, FusedGPTDecoderBlock, FusedRecurrentTokenLoop, FusedTransformerTokenLoop
from .layers import (
    FusedDense,
    FusedFeedForward,
    FusedGRU,
    FusedLayerNormalization,
    FusedLSTM,
    FusedMultiHeadAttention,
    FusedSoftmaxCrossEntropy,
)

OPS = {"numpy": "numba.ops", "cupy": "cuda.ops"}  # backend name -> its op-set module

# The seam: reference class -> the fused subclass that Backend.layer hands out where kernels="fused".
FUSED: dict[type, type] = {
    LSTM: FusedLSTM,
    GRU: FusedGRU,
    Dense: FusedDense,
    SoftmaxCrossEntropy: FusedSoftmaxCrossEntropy,
    MultiHeadAttention: FusedMultiHeadAttention,
    LayerNormalization: FusedLayerNormalization,
    FeedForward: FusedFeedForward,
    BookDecoderBlock: FusedBookDecoderBlock,
    GPTDecoderBlock: FusedGPTDecoderBlock,
    RecurrentTokenLoop: FusedRecurrentTokenLoop,
    TransformerTokenLoop: FusedTransformerTokenLoop,
}


def for_backend(name: str) -> ModuleType:
    """The op-set module for backend ``name`` ("numpy" -> kernels.numba.ops, "cupy" -> kernels.cuda.ops)."""
    return importlib.import_module(f"{__name__}.{OPS[name]}")
