"""Hugging Face GPT-2 folders <-> scratchlm's TransformerLM(block="gpt"): from_hf, to_hf, hf_tokenizer.

    model = from_hf("gpt2/")            # config.json + model.safetensors -> TransformerLM
    tokenizer = hf_tokenizer("gpt2/")   # vocab.json + merges.txt -> scratchlm.bpe.BPETokenizer, or None
    to_hf(model, "out/", tokenizer)     # config.json + model.safetensors (+ vocab.json, merges.txt)

GPT-2 (transformers' ``GPT2LMHeadModel``) is scratchlm's pre-LayerNorm gpt block with the feed-forward's
``activation_function`` ("gelu_new" and "gelu_pytorch_tanh": scratchlm's "gelu_tanh"; "gelu": the exact
GELU; "relu"), every LayerNorm's ε ``layer_norm_epsilon`` (1e-5), biases everywhere, the output projection
tied to the token table, attention scores scaled by 1/√K, and **no padding id**: token 0 is a real token
("!"), so the model is built with ``pad_id=None`` and masks nothing by id. Its tensors, with or without the
``transformer.`` prefix, E = n_embd, N = n_head, K = E / N, F = n_inner (None: 4·E), L = n_positions:

    wte.weight                  (V, E)     embedding/token_embeddings
    wpe.weight                  (L, E)     embedding/position_embeddings
    h.{i}.ln_1.weight, .bias    (E,)       decoder_{i}/layernorm_1/gamma, beta
    h.{i}.attn.c_attn.weight    (E, 3E)    decoder_{i}/attention_1/{query,key,value}/kernel (E, N, K)
    h.{i}.attn.c_attn.bias      (3E,)      decoder_{i}/attention_1/{query,key,value}/bias (N, K)
    h.{i}.attn.c_proj.weight    (E, E)     decoder_{i}/attention_1/output/kernel (N, K, E)
    h.{i}.attn.c_proj.bias      (E,)       decoder_{i}/attention_1/output/bias
    h.{i}.ln_2.weight, .bias    (E,)       decoder_{i}/layernorm_2/gamma, beta
    h.{i}.mlp.c_fc.weight, .bias      (E, F), (F,)    decoder_{i}/ffn_1/kernel, bias
    h.{i}.mlp.c_proj.weight, .bias    (F, E), (E,)    decoder_{i}/ffn_2/kernel, bias
    ln_f.weight, .bias          (E,)       final_layernorm/gamma, beta
    lm_head.weight              (V, E)     none: it is wte.weight (optional in the file; equal when present)
    h.{i}.attn.bias, .masked_bias          none: the causal mask, a buffer (ignored)

GPT-2's Conv1D keeps its weight (in, out), as scratchlm's kernels are, so every tensor but c_attn's is the
same numbers in the same order as its scratchlm parameter (c_proj's (E, E) is the (N·K, E) of (N, K, E)).
c_attn's columns are q | k | v, E each, and column n·K + k of a part is head n's k-th dimension: the three
kernels are c_attn.weight[:, jE:(j+1)E] as (E, N, K), the biases the same slices of c_attn.bias as (N, K).

**Reading** (:func:`from_hf`) checks config.json and the safetensors header (:func:`scratchlm.safetensors.read_header`:
sizes, dtypes, offsets) against each other, every name and shape the config implies, before
any tensor is read; then it builds the model (whose constructor checks that it fits in memory) and reads
each tensor straight into its parameter (c_attn through one buffer of its own size): the weights are never
held twice. ``pytorch_model.bin`` and every other pickle are refused: unpickling a file can run its code.
"""

import json
import math
from pathlib import Path
from typing import Any

import numpy

from .. import safetensors
from ..checks import is_whole
from ..errors import CheckpointError, ModelError
from ..files import atomic_write, read_regular_text
from ..layers.dropout import RATE, is_rate
from ..models import TransformerLM

CONFIG, WEIGHTS = "config.json", "model.safetensors"
VOCAB, MERGES = "vocab.json", "merges.txt"
PICKLES = ("pytorch_model.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.pickle")
CONFIG_LIMIT = 1 << 20  # bytes: a GPT-2 config.json holds about 1 KB
ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}
WRITTEN = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}  # scratchlm's activation -> GPT-2's name
DEFAULTS = {  # transformers' GPT2Config defaults: what a config.json that leaves a field out means
    "vocab_size": 50257,
    "n_positions": 1024,
    "n_embd": 768,
    "n_layer": 12,
    "n_head": 12,
    "n_inner": None,
    "activation_function": "gelu_new",
    "resid_pdrop": 0.1,
    "embd_pdrop": 0.1,
    "attn_pdrop": 0.1,
    "layer_norm_epsilon": 1e-5,
    "scale_attn_weights": True,
    "scale_attn_by_inverse_layer_idx": False,
    "reorder_and_upcast_attn": False,
    "add_cross_attention": False,
    "tie_word_embeddings": True,
}
SIZES = ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head")
BLOCK = {  # GPT-2's tensor in block i -> scratchlm's parameter in decoder_i: the same numbers in the same order
    "ln_1.weight": "layernorm_1/gamma",
    "ln_1.bias": "layernorm_1/beta",
    "attn.c_proj.weight": "attention_1/output/kernel",
    "attn.c_proj.bias": "attention_1/output/bias",
    "ln_2.weight": "layernorm_2/gamma",
    "ln_2.bias": "layernorm_2/beta",
    "mlp.c_fc.weight": "ffn_1/kernel",
    "mlp.c_fc.bias": "ffn_1/bias",
    "mlp.c_proj.weight": "ffn_2/kernel",
    "mlp.c_proj.bias": "ffn_2/bias",
}
TOP = {
    "wte.weight": "embedding/token_embeddings",
    "wpe.weight": "embedding/position_embeddings",
    "ln_f.weight": "final_layernorm/gamma",
    "ln_f.bias": "final_layernorm/beta",
}
QKV = ("query", "key", "value")  # c_attn's column blocks, in order
BUFFERS = ("attn.bias", "attn.masked_bias")  # the causal mask's buffers that older files hold
PREFIX = "transformer."  # GPT2LMHeadModel's name for the GPT2Model inside it
LM_HEAD = "lm_head.weight"
END_OF_TEXT = 50256  # GPT-2's <|endoftext|>, transformers' default bos_token_id and eos_token_id
CHUNK = 1 << 22  # values of lm_head compared with wte at a time


def _same_numbers(n_layer: int) -> dict[str, str]:
    """GPT-2 name (unprefixed) -> scratchlm parameter name, for the tensors that are its numbers as they are."""
    names = dict(TOP)
    for i in range(n_layer):
        names.update({f"h.{i}.{hf}": f"decoder_{i}/{ours}" for hf, ours in BLOCK.items()})
    return names


def _shapes(c: dict) -> dict[str, tuple[int, ...]]:
    """GPT-2 name (unprefixed) -> shape, of every tensor the checked config ``c`` implies."""
    V, L, E, F = c["vocab_size"], c["n_positions"], c["n_embd"], c["n_inner"]
    shapes = {"wte.weight": (V, E), "wpe.weight": (L, E), "ln_f.weight": (E,), "ln_f.bias": (E,)}
    block = {
        "ln_1.weight": (E,),
        "ln_1.bias": (E,),
        "attn.c_attn.weight": (E, 3 * E),
        "attn.c_attn.bias": (3 * E,),
        "attn.c_proj.weight": (E, E),
        "attn.c_proj.bias": (E,),
        "ln_2.weight": (E,),
        "ln_2.bias": (E,),
        "mlp.c_fc.weight": (E, F),
        "mlp.c_fc.bias": (F,),
        "mlp.c_proj.weight": (F, E),
        "mlp.c_proj.bias": (E,),
    }
    for i in range(c["n_layer"]):
        shapes.update({f"h.{i}.{name}": shape for name, shape in block.items()})
    return shapes


# -- reading -------------------------------------------------------------------------------------------------


def _pickle_message(path: Path) -> str:
    return (
        f"{path} is a pickle, which can run code when loaded; scratchlm reads {WEIGHTS} only: download the "
        f"model's {WEIGHTS}, or convert the pickle where you trust it (transformers: "
        "AutoModelForCausalLM.from_pretrained(folder).save_pretrained(folder, safe_serialization=True))"
    )


def _is_pickle(path: Path) -> bool:
    return any(path.match(pattern) for pattern in PICKLES)


def _weights_file(folder: Path) -> Path:
    """``folder``'s model.safetensors; CheckpointError for a pickle, a sharded model or no weights at all."""
    if not folder.is_dir():
        if folder.is_file() and _is_pickle(folder):
            raise CheckpointError(_pickle_message(folder))
        what = "no such folder" if not folder.exists() else "not a folder"
        raise CheckpointError(f"{folder}: {what}: pass the folder that holds the model's {CONFIG} and {WEIGHTS}")
    weights = folder / WEIGHTS
    if weights.exists():
        return weights
    if (folder / f"{WEIGHTS}.index.json").exists():
        raise CheckpointError(
            f"{folder} holds a model sharded over several safetensors files, which scratchlm does not read yet: "
            f"save it as one {WEIGHTS} (save_pretrained(folder, max_shard_size='100GB'))"
        )
    pickles = sorted(p for p in folder.iterdir() if _is_pickle(p))
    if pickles:
        raise CheckpointError(_pickle_message(pickles[0]))
    raise CheckpointError(f"{folder} holds no {WEIGHTS}: download the model's {WEIGHTS} into it")


def _is_epsilon(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def read_config(folder: Any) -> dict:
    """The GPT-2 config of ``folder``'s config.json, with transformers' defaults for the fields it leaves out
    and n_inner resolved (None: 4·n_embd); CheckpointError naming the first field scratchlm cannot take."""
    path = Path(folder) / CONFIG
    try:
        given = json.loads(read_regular_text(path, CONFIG, CONFIG_LIMIT, CheckpointError))
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({str(exc)[:120]}): download it again") from None
    if not isinstance(given, dict):
        raise CheckpointError(f"{path}: not a JSON object: download it again")
    if given.get("model_type") != "gpt2":
        raise CheckpointError(
            f"{path}: model_type is {str(given.get('model_type'))[:40]!r}; scratchlm reads GPT-2 ('gpt2') models"
        )
    c = {**DEFAULTS, **given}

    def refuse(field: str, rule: str) -> CheckpointError:
        return CheckpointError(f"{path}: {field} must be {rule}, got {str(c[field])[:40]}")

    for field in SIZES:
        if not is_whole(c[field]) or c[field] < 1:
            raise refuse(field, "a whole number >= 1")
    if c["n_embd"] % c["n_head"]:
        raise refuse("n_head", f"a divisor of n_embd {c['n_embd']} (each head has n_embd / n_head dimensions)")
    if c["n_inner"] is None:
        c["n_inner"] = 4 * c["n_embd"]
    if not is_whole(c["n_inner"]) or c["n_inner"] < 1:
        raise refuse("n_inner", "null (4·n_embd) or a whole number >= 1")
    if c["activation_function"] not in ACTIVATIONS:
        raise refuse("activation_function", f"one of {', '.join(ACTIVATIONS)} for scratchlm")
    if not _is_epsilon(c["layer_norm_epsilon"]):
        raise refuse("layer_norm_epsilon", "a finite number > 0")
    for field in ("resid_pdrop", "embd_pdrop", "attn_pdrop"):
        if not is_rate(c[field]):
            raise refuse(field, RATE)
    for field, want, why in (
        ("tie_word_embeddings", True, "scratchlm ties GPT-2's output projection to its token table"),
        ("scale_attn_weights", True, "scratchlm scales every attention score by 1/sqrt(head size)"),
        ("scale_attn_by_inverse_layer_idx", False, "scratchlm does not scale scores by layer"),
        ("add_cross_attention", False, "scratchlm's GPT has no cross-attention"),
    ):
        if c[field] is not want:
            raise refuse(field, f"{str(want).lower()} ({why})")
    return c


def _check_tensors(header: safetensors.Header, c: dict) -> str:
    """The prefix ("transformer." or "") of the GPT-2 tensors in ``header``, once they are exactly the ones
    config ``c`` implies (with the shapes it implies, in floats), lm_head and the mask buffers aside."""
    path, entries = header.path, header.entries
    prefix = PREFIX if f"{PREFIX}wte.weight" in entries else ""
    shapes = {prefix + name: shape for name, shape in _shapes(c).items()}
    ignored = {f"{prefix}h.{i}.{buffer}" for i in range(c["n_layer"]) for buffer in BUFFERS}
    for name, shape in shapes.items():
        entry = entries.get(name)
        if entry is None:
            raise CheckpointError(f"{path} has no tensor {name!r}, which the GPT-2 of its {CONFIG} has")
        if entry.shape != shape:
            raise CheckpointError(
                f"{path}: tensor {name!r} has shape {entry.shape}, but the GPT-2 of its {CONFIG} has {shape}"
            )
        if entry.dtype not in safetensors.FLOATS:
            raise CheckpointError(f"{path}: tensor {name!r} is {entry.dtype}, not floats (F64, F32, F16 or BF16)")
    if LM_HEAD in entries and entries[LM_HEAD].shape != shapes[prefix + "wte.weight"]:
        raise CheckpointError(f"{path}: {LM_HEAD} has shape {entries[LM_HEAD].shape}, not wte.weight's")
    unexpected = sorted(set(entries) - set(shapes) - ignored - {LM_HEAD})
    if unexpected:
        raise CheckpointError(
            f"{path} holds {len(unexpected)} tensor(s) that are not GPT-2's ({', '.join(unexpected[:3])}): "
            "scratchlm reads the GPT-2 of transformers' GPT2LMHeadModel"
        )
    return prefix


def _fill(param: Any, f: Any, header: safetensors.Header, name: str, backend: Any) -> None:
    """Read tensor ``name`` into the parameter ``param`` (its numbers in order): straight into a NumPy one."""
    shape = header.entries[name].shape
    if isinstance(param, numpy.ndarray) and param.flags.c_contiguous:
        safetensors.read_tensor(f, header, name, out=param.reshape(shape))  # a view: the bytes land in param
    else:
        param[...] = backend.asarray(safetensors.read_tensor(f, header, name).reshape(param.shape))


def _fill_qkv(params: dict, f: Any, header: safetensors.Header, prefix: str, i: int, N: int, backend: Any) -> None:
    """Read block i's c_attn weight (E, 3E) and bias (3E,) into its query, key and value kernels (E, N, K)
    and biases (N, K): column block j of c_attn is part j."""
    weight = safetensors.read_tensor(f, header, f"{prefix}h.{i}.attn.c_attn.weight")  # (E, 3E): one block's
    bias = safetensors.read_tensor(f, header, f"{prefix}h.{i}.attn.c_attn.bias")  # (3E,)
    E = weight.shape[0]
    for j, part in enumerate(QKV):
        name = f"decoder_{i}/attention_1/{part}"
        params[f"{name}/kernel"][...] = backend.asarray(weight[:, j * E : (j + 1) * E].reshape(E, N, E // N))
        params[f"{name}/bias"][...] = backend.asarray(bias[j * E : (j + 1) * E].reshape(N, E // N))


def _check_finite(model: TransformerLM, path: Path) -> None:
    """CheckpointError naming the first parameter that holds NaN or ±inf: its min or max then is one (NaN
    propagates), and no array as large as the parameter is made."""
    xp = model.backend.xp
    for name, p in model.params.items():
        if not (bool(xp.isfinite(p.min())) and bool(xp.isfinite(p.max()))):
            raise CheckpointError(
                f"{path}: the tensor of {name} holds NaN or infinite values (or values beyond "
                f"{model.backend.dtype.name}): the weights are unusable; download them again"
            )


def _check_tied(model: TransformerLM, f: Any, header: safetensors.Header) -> None:
    """CheckpointError unless the file's lm_head.weight equals the token table, compared a chunk of rows at a
    time (never a second (V, E) array)."""
    table = model.embedding.token_embeddings  # (V, E)
    V, E = table.shape
    rows = max(1, CHUNK // E)
    for start in range(0, V, rows):
        stop = min(V, start + rows)
        head = safetensors.read_tensor(f, header, LM_HEAD, rows=(start, stop)).astype(table.dtype)
        if not numpy.array_equal(head, model.backend.to_host(table[start:stop])):
            raise CheckpointError(
                f"{header.path}: {LM_HEAD} differs from wte.weight (row {start} on): this model's output "
                "projection is not tied to its token table, which scratchlm's GPT-2 requires"
            )


def _dtype_of(header: safetensors.Header, prefix: str, c: dict) -> str:
    """float64 when every weight is stored as F64, else float32."""
    names = [prefix + name for name in _shapes(c)]
    return "float64" if all(header.entries[name].dtype == "F64" for name in names) else "float32"


def from_hf(
    folder: Any, backend: Any = "numpy", dtype: str | None = None, dropout: float | None = None
) -> TransformerLM:
    """The TransformerLM(block="gpt") of a Hugging Face GPT-2 folder (config.json and model.safetensors).

    backend: "numpy", "cupy", "auto" or a Backend. dtype: "float32" or "float64"; None: float64 when the
    file stores float64, else float32 (F16 and BF16 are widened). dropout: the one dropout rate of the
    model, in training only; None takes the config's when resid_pdrop, embd_pdrop and attn_pdrop agree
    (GPT-2's are 0.1) and asks for it otherwise. The model has activation "gelu_tanh" (or the config's),
    the config's LayerNorm ε, tied embeddings, biases and pad_id None; its init is the constructor's default
    (the cheapest draw: the file's weights replace it).
    Raises CheckpointError for a folder without model.safetensors, a pickle, a config scratchlm cannot take
    or a file that does not hold what its config says (before reading any tensor); ResourceError when the
    model cannot fit in memory.
    """
    folder = Path(folder)
    path = _weights_file(folder)
    c = read_config(folder)
    header = safetensors.read_header(path)
    prefix = _check_tensors(header, c)
    if dropout is None:
        rates = {c[field] for field in ("resid_pdrop", "embd_pdrop", "attn_pdrop")}
        if len(rates) > 1:
            raise CheckpointError(
                f"{folder / CONFIG} has dropout rates resid {c['resid_pdrop']}, embd {c['embd_pdrop']} and attn "
                f"{c['attn_pdrop']}; scratchlm has one: pass from_hf(..., dropout=rate)"
            )
        dropout = rates.pop()
    E, N = c["n_embd"], c["n_head"]
    model = TransformerLM(
        c["vocab_size"],
        c["n_positions"],
        embed_dim=E,
        dense_dim=c["n_inner"],
        num_heads=N,
        key_dim=E // N,
        num_layers=c["n_layer"],
        block="gpt",
        backend=backend,
        dtype=dtype or _dtype_of(header, prefix, c),
        activation=ACTIVATIONS[c["activation_function"]],
        layernorm_epsilon=float(c["layer_norm_epsilon"]),
        tie_embeddings=True,
        dropout=dropout,
        pad_id=None,
    )
    params = model.params
    with safetensors.open_file(header) as f, numpy.errstate(over="ignore"):  # beyond float32: inf, refused below
        for hf, ours in _same_numbers(c["n_layer"]).items():
            _fill(params[ours], f, header, prefix + hf, model.backend)
        for i in range(c["n_layer"]):
            _fill_qkv(params, f, header, prefix, i, N, model.backend)
        _check_finite(model, path)
        if LM_HEAD in header.entries:
            _check_tied(model, f, header)
    return model


def hf_tokenizer(folder: Any) -> Any:
    """The byte-level BPE tokenizer of a GPT-2 folder (:class:`scratchlm.bpe.BPETokenizer` from its vocab.json
    and merges.txt), or None when the folder has neither file; CheckpointError when it has only one."""
    folder = Path(folder)
    vocab, merges = folder / VOCAB, folder / MERGES
    if not vocab.exists() and not merges.exists():
        return None
    if not (vocab.exists() and merges.exists()):
        lacks = MERGES if vocab.exists() else VOCAB
        raise CheckpointError(f"{folder} has a GPT-2 tokenizer without its {lacks}: download {lacks} into it")
    from ..bpe import BPETokenizer  # the tokenizer is only imported where a folder has one

    return BPETokenizer.from_files(vocab, merges)


# -- writing -------------------------------------------------------------------------------------------------


def _check_expressible(model: Any) -> None:
    """ModelError unless GPT-2's config and tensors can say what ``model`` computes."""
    if not isinstance(model, TransformerLM):
        raise ModelError(f"to_hf writes a scratchlm TransformerLM, got {type(model).__name__}")
    c = model.config
    differ = [
        (c["block"] != "gpt", f"block {c['block']!r} (GPT-2 is the 'gpt' block)"),
        (not c["tie_embeddings"], "an output layer of its own (GPT-2 ties it to the token table)"),
        (not c["use_bias"], "no biases (GPT-2 has them all)"),
        (c["num_heads"] * c["key_dim"] != c["embed_dim"], "num_heads * key_dim != embed_dim (GPT-2's heads split E)"),
        (c["pad_id"] is not None, f"pad_id {c['pad_id']} (GPT-2 masks no id: build it with pad_id=None)"),
    ]
    reasons = [why for bad, why in differ if bad]
    if reasons:
        raise ModelError(f"GPT-2's format cannot express this model: {'; '.join(reasons)}; save it with model.save")


def _config(model: TransformerLM, tokenizer: Any = None) -> dict:
    """The config.json of ``model`` (checked by :func:`_check_expressible`), as transformers writes GPT-2's.
    bos_token_id and eos_token_id: the tokenizer's ``eos_id`` when it has one, else transformers' default
    (GPT-2's 50256) where that is an id of the model, else null."""
    c = model.config
    eos = getattr(tokenizer, "eos_id", None)
    special = {} if eos is None and model.vocab_size > END_OF_TEXT else {"bos_token_id": eos, "eos_token_id": eos}
    return {
        **special,
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": c["vocab_size"],
        "n_positions": c["sequence_length"],
        "n_embd": c["embed_dim"],
        "n_layer": c["num_layers"],
        "n_head": c["num_heads"],
        "n_inner": c["dense_dim"],
        "activation_function": WRITTEN[c["activation"]],
        "layer_norm_epsilon": c["layernorm_epsilon"],
        "resid_pdrop": c["dropout"],
        "embd_pdrop": c["dropout"],
        "attn_pdrop": c["dropout"],
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True,
        "dtype": c["dtype"],
    }


def _tensors(model: TransformerLM) -> dict[str, numpy.ndarray]:
    """GPT-2 name (prefixed, as GPT2LMHeadModel saves them) -> host array of ``model``'s parameters."""
    params = {name: model.backend.to_host(p) for name, p in model.params.items()}
    shapes = _shapes(_config(model))
    out = {PREFIX + hf: params[ours].reshape(shapes[hf]) for hf, ours in _same_numbers(model.num_layers).items()}
    E = model.embed_dim
    for i in range(model.num_layers):
        parts = [f"decoder_{i}/attention_1/{part}" for part in QKV]
        h = f"{PREFIX}h.{i}.attn.c_attn"
        out[f"{h}.weight"] = numpy.concatenate([params[f"{p}/kernel"].reshape(E, E) for p in parts], axis=1)
        out[f"{h}.bias"] = numpy.concatenate([params[f"{p}/bias"].reshape(E) for p in parts])
    return out


def to_hf(model: TransformerLM, folder: Any, tokenizer: Any = None) -> None:
    """Write ``model`` as a Hugging Face GPT-2 folder: config.json and model.safetensors (the tensors as
    ``GPT2LMHeadModel.save_pretrained`` names them: prefixed, lm_head left to the tie), each atomically,
    plus the tokenizer's vocab.json and merges.txt (``tokenizer.to_files(folder)``) when one is given.

    Raises ModelError for a model GPT-2 cannot express (the book block, an untied output layer, no biases,
    heads that do not split E, a padding id) or a tokenizer with more ids than the model.
    """
    _check_expressible(model)
    if tokenizer is not None and getattr(tokenizer, "vocab_size", 0) > model.vocab_size:
        raise ModelError(
            f"the tokenizer has {tokenizer.vocab_size:,} ids, more than the model's vocab_size {model.vocab_size:,}"
        )
    folder = Path(folder)
    safetensors.save(folder / WEIGHTS, _tensors(model), {"format": "pt"})
    with atomic_write(folder / CONFIG) as f:
        f.write((json.dumps(_config(model, tokenizer), indent=2, sort_keys=True) + "\n").encode("utf-8"))
    if tokenizer is not None:
        tokenizer.to_files(folder)
