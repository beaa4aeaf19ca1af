"""Hugging Face GPT-2 folders on the command line: ``scratchlm sample|info|eval HF_FOLDER``.

A GPT-2 folder (``config.json`` + ``model.safetensors``, and the tokenizer's ``vocab.json`` +
``merges.txt``) is read by :func:`scratchlm.interop.from_hf`, which checks the config and the
safetensors header against each other before it reads a tensor. A run directory is never one: it holds
``last.npz`` or ``best.npz``.
"""

import math
from pathlib import Path

from ..errors import ScratchLMError
from ..interop.gpt2 import BUFFERS, CONFIG, LM_HEAD, WEIGHTS, from_hf, hf_tokenizer, read_config
from ..rundir import BEST, LAST
from ..safetensors import read_header


def is_hf_folder(path: Path) -> bool:
    """Whether ``path`` is a folder with a config.json and no scratchlm checkpoint (a GPT-2 folder to read)."""
    return path.is_dir() and (path / CONFIG).is_file() and not any((path / name).exists() for name in (LAST, BEST))


def tokenizer(folder: Path):
    """The BPE tokenizer of a GPT-2 folder; ScratchLMError when it has none (CheckpointError when it is broken)."""
    found = hf_tokenizer(folder)
    if found is None:
        raise ScratchLMError(
            f"{folder} holds a model but no tokenizer (vocab.json and merges.txt), so text cannot be turned into "
            "its ids: download the two files into it"
        )
    return found


def load(folder: Path, backend):
    """(the TransformerLM of a GPT-2 folder, its BPE tokenizer); ScratchLMError when it has no tokenizer."""
    tokenizer_ = tokenizer(folder)
    model = from_hf(folder, backend=backend)
    if model.vocab_size < tokenizer_.vocab_size:
        raise ScratchLMError(
            f"{folder}'s tokenizer has {tokenizer_.vocab_size:,} tokens but its model only {model.vocab_size:,}: "
            "the vocab.json is not this model's"
        )
    return model, tokenizer_


def describe(folder: Path) -> list[tuple[str, str]]:
    """``scratchlm info`` rows of a GPT-2 folder, from its config and the safetensors header alone."""
    c = read_config(folder)
    header = read_header(folder / WEIGHTS)
    count, dtypes = 0, set()
    for name, entry in header.entries.items():
        if name.endswith(tuple(f".{buffer}" for buffer in BUFFERS)):
            continue  # the causal mask, not weights
        count += math.prod(entry.shape)
        dtypes.add(entry.dtype)
    if LM_HEAD in header.entries:  # tied: the token table again
        count -= c["vocab_size"] * c["n_embd"]
    size = (folder / WEIGHTS).stat().st_size
    rows = [
        ("checkpoint", f"{folder / WEIGHTS} ({size / 1e6:.1f} MB, {', '.join(sorted(dtypes))}): Hugging Face GPT-2"),
        (
            "model",
            f"gpt, {c['n_layer']} blocks, {c['n_head']} heads, embedding {c['n_embd']}, feed-forward "
            f"{c['n_inner']} ({c['activation_function']}), context {c['n_positions']}, vocabulary "
            f"{c['vocab_size']:,}, LayerNorm ε {c['layer_norm_epsilon']:g}, tied, {count:,} parameters",
        ),
    ]
    tokenizer = hf_tokenizer(folder)
    if tokenizer is not None:
        rows.append(("tokenizer", f"bpe (byte-level), {tokenizer.vocab_size:,} tokens"))
    else:
        rows.append(("tokenizer", "none (no vocab.json and merges.txt)"))
    return rows
