"""scratchlm: a from-scratch language-model engine (LSTM, GRU, Transformer).

Embedding, LSTM and GRU forward and backpropagation-through-time with explicit
gate math, a Transformer decoder with hand-written backward, softmax
cross-entropy, Adam/RMSprop/SGD and temperature sampling, written once against
an array backend (NumPy on CPU, CuPy on GPU). Start reading at
:mod:`scratchlm.layers` (the equations) and :mod:`scratchlm.models`;
docs/design.md describes the whole.
"""

import os
import sys

# OpenBLAS reads this when NumPy loads it: see scratchlm/kernels/numba/parallel/shards.py
if "numpy" not in sys.modules:
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "20")

from . import heap
from .backend import Backend, get_backend
from .errors import BackendUnavailable, CheckpointError, ScratchLMError
from .models import LanguageModel, RecurrentLM, TransformerLM

heap.tune()  # a step's arrays from reused heap memory, not fresh pages: see scratchlm/heap.py

__version__ = "0.1.0"
__all__ = [
    "Backend",
    "BackendUnavailable",
    "CheckpointError",
    "LanguageModel",
    "RecurrentLM",
    "ScratchLMError",
    "TransformerLM",
    "get_backend",
    "__version__",
]
