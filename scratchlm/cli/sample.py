"""``scratchlm sample``: text from a checkpoint, one sample per temperature.

scratchlm sample runs/my --prime "The " --temperature 0.2 0.5 1.0
scratchlm sample gpt2/ --prime "Hello, I'm a language model," --top-k 40    # a Hugging Face GPT-2 folder
"""

import numpy

from .. import distributed, files, sampling
from ..errors import CheckpointError, ModelError, ScratchLMError
from ..rundir import BEST, LAST
from ..text import UNK, VectorTokenizer, VocabularyError, listing
from ..train import load_checkpoint, render
from . import hf
from .metadata import metadata_dict, tokenizer_of


def _checkpoint_path(path):
    """A run directory -> its best.npz (else last.npz); a file -> itself."""
    if path.is_dir():
        for name in (BEST, LAST):
            if (path / name).exists():
                return path / name
    return path


def _unknown_token(tokenizer):
    """How ``tokenizer`` writes the token that stands for what its vocabulary lacks: <unk>, or [UNK] for the
    Transformer's TextVectorization vocabulary."""
    return VectorTokenizer.UNK if tokenizer.kind == VectorTokenizer.kind else UNK


def _model_and_tokenizer(args):
    """(model, tokenizer, whether the run was trained on padded lines) of a checkpoint, a run directory or a
    Hugging Face GPT-2 folder."""
    if hf.is_hf_folder(args.checkpoint):
        return (*hf.load(args.checkpoint, args.backend), False)
    path = _checkpoint_path(args.checkpoint)
    try:
        ckpt = load_checkpoint(path, backend=args.backend)
    except ModelError as exc:  # a file read whole whose model cannot be built (NaN weights)
        raise CheckpointError(f"{path}: {exc}") from None
    tokenizer = tokenizer_of(ckpt.metadata, ckpt.model.vocab_size, path)
    if tokenizer is None:
        raise ScratchLMError(
            f"{args.checkpoint} holds a model but no tokenizer, so its ids cannot be turned into "
            "text: sample from it in Python with model.generate"
        )
    lines = "data" in ckpt.metadata and metadata_dict(ckpt.metadata, "data", path).get("kind") == "padded"
    return ckpt.model, tokenizer, lines


def cmd_sample(args):
    if distributed.launcher_rank() != 0:  # under mpiexec it runs once, on rank 0 (MPI is never started)
        return 0
    for t in args.temperature:
        sampling.check_options(t, args.top_k, args.top_p)
    model, tokenizer, lines = _model_and_tokenizer(args)
    eos = tokenizer.eos_id if lines else None
    banned = [i for i in tokenizer.special_ids if i != eos]
    if args.prime_file is not None:
        prime = files.read_regular_text(args.prime_file, "prime file", 1 << 20, universal_newlines=True)
    elif args.prime is not None:
        prime = args.prime
    elif lines:
        prime = ""
    elif tokenizer.kind == "char" and "\n" in tokenizer.chars:
        prime = "\n"
    elif tokenizer.kind == "bpe" and tokenizer.eos_id is not None:
        prime = None  # unconditional, as GPT-2 samples: from <|endoftext|> alone
    else:
        raise ScratchLMError("this model needs text to start from: pass --prime TEXT or --prime-file FILE")
    try:
        if prime is None:
            prompt = numpy.array([tokenizer.eos_id], dtype=numpy.int64)
        else:
            prompt = tokenizer.encode(prime, unknown=args.unknown).astype(numpy.int64)
    except VocabularyError as exc:
        if not exc.missing:
            raise
        what = "word" if tokenizer.kind in ("word", "vector") else "character"
        raise VocabularyError(
            f"the prime holds {len(exc.missing)} {what}{'s' if len(exc.missing) > 1 else ''} "
            f"the model's vocabulary lacks: {listing(exc.missing)}; leave them out with "
            "--unknown skip"
            + (
                f", or replace them by {_unknown_token(tokenizer)} with --unknown unk"
                if tokenizer.unk_id is not None
                else ""
            )
        ) from None
    if lines:
        prompt = numpy.concatenate([[eos], prompt]).astype(numpy.int64)
    if len(prompt) == 0:
        raise ScratchLMError("the prime is empty (after skipping unknown characters): pass a longer --prime")
    shown = render(tokenizer, prompt)
    for t in args.temperature:
        out = model.generate(
            prompt,
            args.length,
            temperature=t,
            top_k=args.top_k,
            top_p=args.top_p,
            eos_id=eos,
            banned_ids=banned,
            seed=args.seed,
            weights=args.weights,
        )
        label = "greedy" if t == 0 else f"temperature {t:g}"
        print(f"--- {label}\n{shown}{render(tokenizer, out)}\n", flush=True)
    return 0
