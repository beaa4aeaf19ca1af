"""Checkpoint files: one ``.npz`` holding every array plus a JSON header.

Layout of the zip archive (NumPy's ``.npz``):

    header.json            uint8 bytes of a JSON object: format name and version,
                           the model config, optimizer config, RNG state, metadata
    param/<name>           each model parameter, e.g. param/lstm_0/kernel
    optimizer/<slot>/<name> each optimizer slot, e.g. optimizer/m/lstm_0/kernel

Arrays are stored on the host, so a checkpoint written on one backend loads on
the other. Writing is atomic: the archive goes to a temporary file in the same
directory, is flushed to disk, then renamed over the destination, so a crash
never leaves a half-written checkpoint where a good one was. Reading never
unpickles (``allow_pickle=False``): a file from a stranger cannot run code.
"""

import json
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy

from . import optim
from .backend import get_backend
from .errors import CheckpointError
from .files import atomic_write

FORMAT = "scratchlm-checkpoint"
VERSION = 1
_HEADER = "header.json"
_BIT_GENERATORS = {"PCG64": numpy.random.PCG64, "PCG64DXSM": numpy.random.PCG64DXSM,
                   "Philox": numpy.random.Philox, "SFC64": numpy.random.SFC64, "MT19937": numpy.random.MT19937}


class Checkpoint(NamedTuple):
    """What :func:`load` returns."""
    model: object                 # LanguageModel
    optimizer: object             # Optimizer or None
    rng: object                   # numpy.random.Generator or None
    metadata: dict


def save(path, model, optimizer=None, rng=None, metadata=None):
    """Write ``model`` (and optionally optimizer state, RNG state, JSON metadata) to ``path``."""
    to_host = model.backend.to_host
    arrays = {f"param/{name}": to_host(p) for name, p in model.params.items()}
    header = {"format": FORMAT, "version": VERSION, "model": model.config,
              "optimizer": None, "rng": None, "metadata": metadata or {}}
    if optimizer is not None:
        config, slots = optimizer.state_dict()
        header["optimizer"] = config
        arrays.update({f"optimizer/{key}": to_host(a) for key, a in slots.items()})
    if rng is not None:
        header["rng"] = rng.bit_generator.state
    arrays[_HEADER] = numpy.frombuffer(json.dumps(header).encode("utf-8"), dtype=numpy.uint8)

    with atomic_write(path) as f:
        numpy.savez(f, **arrays)


def _read_arrays(path):
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}: check the path (a run directory keeps them as *.npz)")
    if not path.is_file():
        raise CheckpointError(f"{path} is not a file: pass the checkpoint file itself")
    try:
        with numpy.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zipfile.LargeZipFile) as exc:
        raise CheckpointError(
            f"{path} is not a readable scratchlm checkpoint ({exc.__class__.__name__}: {exc}); "
            "it may be truncated or corrupt: use an earlier checkpoint or retrain") from None
    if _HEADER not in arrays:
        raise CheckpointError(f"{path} is an .npz file but not a scratchlm checkpoint (no {_HEADER})")
    try:
        header = json.loads(arrays.pop(_HEADER).tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable checkpoint header ({exc})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a scratchlm checkpoint (format {header.get('format')!r})"
                              if isinstance(header, dict) else f"{path}: malformed checkpoint header")
    if header.get("version") != VERSION:
        raise CheckpointError(f"{path} has checkpoint version {header.get('version')!r}; this scratchlm "
                              f"reads version {VERSION}: upgrade scratchlm or re-save the model")
    return header, arrays


def load(path, backend="numpy"):
    """Read a checkpoint written by :func:`save`. Raises CheckpointError on any problem."""
    from .model import LanguageModel

    path = Path(path)
    header, arrays = _read_arrays(path)
    config = header.get("model")
    try:
        model = LanguageModel(backend=get_backend(backend, config["dtype"]), **config)
        model.set_params({name[len("param/"):]: a for name, a in arrays.items() if name.startswith("param/")})
    except (TypeError, KeyError, ValueError) as exc:
        raise CheckpointError(f"{path}: checkpoint does not describe a valid model ({exc})") from None
    optimizer = None
    if header.get("optimizer") is not None:
        slots = {name[len("optimizer/"):]: a for name, a in arrays.items() if name.startswith("optimizer/")}
        try:
            optimizer = optim.from_state(header["optimizer"], slots, backend=model.backend)
        except (TypeError, KeyError, ValueError) as exc:
            raise CheckpointError(f"{path}: unreadable optimizer state ({exc})") from None
    rng = None
    if header.get("rng") is not None:
        try:
            bit_generator = _BIT_GENERATORS[header["rng"]["bit_generator"]]
            rng = numpy.random.Generator(bit_generator())
            rng.bit_generator.state = header["rng"]
        except (TypeError, KeyError, ValueError, AttributeError) as exc:
            raise CheckpointError(f"{path}: unreadable RNG state ({exc})") from None
    return Checkpoint(model, optimizer, rng, header.get("metadata") or {})
