"""``scratchlm info``: what a checkpoint holds, read from its checked header; the model is never built.

scratchlm info runs/my/last.npz
scratchlm info gpt2/                # a Hugging Face GPT-2 folder: its config and safetensors header
"""

import numpy

from .. import distributed, models, optim, schedules
from ..errors import CheckpointError
from ..rundir import BEST, LAST
from ..train import check_position
from . import hf
from .metadata import metadata_dict, tokenizer_of


def _info_path(arg):
    """The checkpoint ``scratchlm info ARG`` describes: a file itself, else the run directory's last.npz (its
    latest state), else its best.npz."""
    if not arg.is_dir():
        return arg
    for name in (LAST, BEST):
        if (arg / name).exists():
            return arg / name
    raise CheckpointError(
        f"{arg} holds no {LAST} or {BEST}: it is not a run directory, or its run wrote no checkpoint yet"
    )


def _non_finite(arrays):
    """'key: n of N values' for each float array of a checkpoint that holds NaN or infinity."""
    counts = {
        key: int(a.size - numpy.count_nonzero(numpy.isfinite(a))) for key, a in arrays.items() if a.dtype.kind == "f"
    }
    return [f"{key}: {n:,} of {arrays[key].size:,} values" for key, n in counts.items() if n]


def cmd_info(args):
    """Describe a checkpoint from its checked header and the sizes of its arrays: the model is never built."""
    if distributed.launcher_rank() != 0:  # under mpiexec it runs once, on rank 0 (MPI is never started)
        return 0
    if hf.is_hf_folder(args.checkpoint):
        _print(hf.describe(args.checkpoint))
        return 0
    path = _info_path(args.checkpoint)
    header, arrays = models.read(path)
    config, meta = header["model"], header["metadata"]
    params = sum(a.size for key, a in arrays.items() if key.startswith("param/"))
    rows = [
        ("checkpoint", f"{path} ({path.stat().st_size / 1e6:.1f} MB)"),
        (
            "model",
            f"{models.describe(config)}, {params:,} parameters" + (", stateful" if config.get("stateful") else ""),
        ),
    ]
    bad = _non_finite(arrays)
    if bad:
        rows.append(
            ("not finite", f"{'; '.join(bad)}: the run diverged, this checkpoint cannot be sampled from or resumed")
        )
    tok = tokenizer_of(meta, config["vocab_size"], path)
    if tok is not None:
        lower = getattr(tok, "lower", False)  # a BPE tokenizer keeps the text's case
        extra = (", lower-cased" if lower else "") + ("" if tok.reserved else ", no reserved ids")
        rows.append(("tokenizer", f"{tok.kind}, {tok.vocab_size:,} tokens{extra}"))
    if header["optimizer"] is not None:
        opt = optim.from_state(header["optimizer"], {})
        hyper = ", ".join(f"{k}={v}" for k, v in opt.hyperparameters().items())
        rows.append(("optimizer", f"{opt.name} ({hyper}), {opt.iterations:,} steps"))
    if "data" in meta:
        data_config = metadata_dict(meta, "data", path)
        rows.append(("data", ", ".join(f"{k}={v}" for k, v in data_config.items() if k != "fingerprint")))
    if "cli" in meta:
        rows.append(("corpus", str(metadata_dict(meta, "cli", path).get("corpus"))))
    position = meta.get("train")
    if position is not None:
        check_position(position)
        done = (
            f"{position['epoch']} epochs complete"
            if position["batch"] == 0
            else f"in epoch {position['epoch'] + 1}, after batch {position['batch']:,}"
        )
        rows.append(("position", f"{done}, {position['step']:,} steps taken"))
        if position.get("schedule") is not None:  # runs from before schedules have none: a constant rate
            schedule = schedules.from_config(position["schedule"])
            rows.append(("schedule", f"{schedule!r}, lr {schedule(position['step']):.4g} at the next step"))
        if position.get("grad_accum", 1) > 1:
            rows.append(("grad accum", f"{position['grad_accum']} batches per step"))
        if position["best_val_loss"] is not None:
            rows.append(("best val loss", f"{position['best_val_loss']:.4f}"))
        for r in position["history"]:
            val = f", val {r['val_loss']:.4f}" if r["val_loss"] is not None else ""
            rows.append((f"epoch {r['epoch']}", f"loss {r['loss']:.4f}{val}, {r['seconds']:.1f} s"))
    _print(rows)
    return 0


def _print(rows):
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
