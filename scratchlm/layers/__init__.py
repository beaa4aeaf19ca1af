"""Layers with hand-written forward and backward passes, one concept per module.

    base.py        Layer: the contract every layer keeps (params, param_shapes, forward, backward)
    embedding.py   Embedding: token ids -> vectors (gather / scatter-add);
                   PositionalEmbedding: tokens plus learned positions (B, T, E)
    dense.py       Dense: the affine map to logits, and with the loss after it (score)
    recurrent.py   what every recurrent cell shares: the input projection (and its
                   token-table form), initial and carried state, masks, the cache
    lstm.py        LSTM: the cell's gate math and its backpropagation through time
    gru.py         GRU (Keras 3's reset_after layout): the same for the GRU cell
    dropout.py     Dropout: Keras' inverted dropout, masks drawn by the caller
    attention.py   MultiHeadAttention in Keras 3's layout, batch-major (B, T, E)
                   unlike the recurrent layers; causal and padding masks
    layernorm.py   LayerNormalization over the last axis (Keras: epsilon 1e-3, biased variance)
    feedforward.py FeedForward: Dense, activation, Dense, over any leading shape
    activations.py the feed-forward's ReLU, GELU (exact, with erf) and GELU-tanh (GPT-2's),
                   each forward with its derivative
    decoder.py     the Transformer decoder blocks (the seed's post-LN one, GPT's pre-LN one)
                   and the KV cache of generation

This is the reference path: plain ``xp`` code (NumPy or CuPy) that every fast
kernel is tested against, and nothing else — the fused kernels plug in as
subclasses (``scratchlm/kernels/layers.py``) that ``backend.layer(cls)`` hands
out in place of ``cls``. The recurrent layers are **time-major**, (T, B, ...),
so that the slice of one time step is contiguous; the attention layers are
batch-major, (B, T, ...), as users pass their arrays.

One contract for every layer (``base.py``): ``forward`` returns ``(y, cache)``,
``backward(cache, dy)`` returns ``(dx, param_grads)``, the gradient of what was
fed in and a dict of parameter gradients keyed like ``params``. Notation (see
docs/design.md): T time steps, B batch, V vocabulary, E embedding size, D input
size, H hidden units.
"""

from .attention import MultiHeadAttention, causal_mask, combine_masks, padding_mask
from .base import Layer
from .decoder import BookDecoderBlock, GPTDecoderBlock
from .dense import Dense
from .dropout import Dropout
from .embedding import Embedding, PositionalEmbedding
from .feedforward import FeedForward
from .gru import GRU
from .layernorm import LayerNormalization
from .lstm import LSTM

__all__ = [
    "BookDecoderBlock",
    "Dense",
    "Dropout",
    "Embedding",
    "FeedForward",
    "GPTDecoderBlock",
    "GRU",
    "LSTM",
    "Layer",
    "LayerNormalization",
    "MultiHeadAttention",
    "PositionalEmbedding",
    "causal_mask",
    "combine_masks",
    "padding_mask",
]
