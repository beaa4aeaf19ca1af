"""Checkpoint files: one ``.npz`` holding every array plus a JSON header.

Layout of the zip archive (NumPy's ``.npz``):

    header.json            uint8 bytes of a JSON object: format name and version,
                           the model config, optimizer config, RNG state, metadata
    param/<name>           each model parameter, e.g. param/lstm_0/kernel
    optimizer/<slot>/<name> each optimizer slot, e.g. optimizer/m/lstm_0/kernel

Arrays are stored on the host, so a checkpoint written on one backend loads on
the other. Writing is atomic: the archive goes to a temporary file in the same
directory, is flushed to disk, then renamed over the destination, so a crash
never leaves a half-written checkpoint where a good one was.

This module knows the file format only, not what a model is: the caller of
:func:`read` says which parameters a model config implies, and
:func:`scratchlm.models.load` builds the model. Version 2 records the model's
kind in ``header["model"]["kind"]`` (and a recurrent model's ``cell``);
version 1 files, written before there was more than one model, hold an LSTM
``LanguageModel`` and are read as such.

Reading trusts nothing in the file. :func:`read` first looks at the ``.npy``
headers alone: the archive must hold only arrays, none of Python objects,
each exactly as large as its entry, all together fitting in memory. Then every
header field must have the type and range :func:`save` writes, and the arrays
must be exactly the parameters the header's model config implies (with the
header's dtype) plus slots of its optimizer for those parameters. Only then is
any array read: a checkpoint that lies raises CheckpointError naming the field
and the array, and never makes scratchlm allocate what its header claims.
Reading never unpickles (``allow_pickle=False``): a file from a stranger
cannot run code.
"""

import contextlib
import json
import math
import zipfile
import zlib
from pathlib import Path

import numpy
from numpy.lib import format as npy_format

from . import optim
from .budget import check_fits
from .checks import LARGEST as LARGEST  # what a header may hold; models and the CLI name it checkpoint.LARGEST
from .checks import is_whole, whole_at_least
from .errors import CheckpointError
from .files import atomic_write

FORMAT = "scratchlm-checkpoint"
VERSION = 2
_V1_MODEL = {"kind": "recurrent", "cell": "lstm"}  # what a version-1 header's model config leaves out
EDITED = "the file is corrupt or was edited: use another checkpoint (e.g. the run's best.npz) or retrain"
_HEADER = "header.json"
_FIELDS = ("format", "version", "model", "optimizer", "rng", "metadata")
_ZIP_MAGIC = b"PK\x03\x04"
_NPY_HEADER_READERS = {(1, 0): npy_format.read_array_header_1_0, (2, 0): npy_format.read_array_header_2_0}
_ARCHIVE_ERRORS = (
    OSError,
    EOFError,
    ValueError,
    RuntimeError,
    NotImplementedError,
    zlib.error,
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
)
_BIT_GENERATORS = {
    "PCG64": numpy.random.PCG64,
    "PCG64DXSM": numpy.random.PCG64DXSM,
    "Philox": numpy.random.Philox,
    "SFC64": numpy.random.SFC64,
    "MT19937": numpy.random.MT19937,
}


def whole_rule(least):
    """(check, what it must be) of a JSON field that must be a whole number from ``least`` to :data:`LARGEST`."""
    return whole_at_least(least), f"a whole number in [{least}, 2**63)"


def is_number(v):
    """The check of a JSON field that must be a number (not a bool), for :func:`check_fields`."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# Field -> (check, what it must be), for the dicts a checkpoint's header holds.
_OPTIMIZER_RULES = {"name": (lambda v: isinstance(v, str), "a string"), "iterations": whole_rule(0)}


def save(path, params, config, optimizer=None, rng=None, metadata=None, backend=None):
    """Write a model's ``params`` (name -> host array) and ``config`` (JSON, with its ``kind``), optionally an
    optimizer's state (its slots moved to the host by ``backend``), an RNG's state and JSON metadata."""
    to_host = (lambda a: a) if backend is None else backend.to_host
    arrays = {f"param/{name}": p for name, p in params.items()}
    header = {
        "format": FORMAT,
        "version": VERSION,
        "model": config,
        "optimizer": None,
        "rng": None,
        "metadata": metadata or {},
    }
    if optimizer is not None:
        config, slots = optimizer.state_dict()
        header["optimizer"] = config
        arrays.update({f"optimizer/{key}": to_host(a) for key, a in slots.items()})
    if rng is not None:
        header["rng"] = rng.bit_generator.state
    arrays[_HEADER] = numpy.frombuffer(json.dumps(header).encode("utf-8"), dtype=numpy.uint8)

    with atomic_write(path) as f:
        numpy.savez(f, **arrays)


def _short(value, limit=60):
    """repr(value), cut to ``limit`` characters for an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_fields(obj, rules, what, exact=False):
    """CheckpointError unless ``obj`` is a dict holding every field of ``rules`` (name -> (check, what it must
    be)), each passing its check, and (``exact``) no other field."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"{what} must be a JSON object, got {_short(obj)}; {EDITED}")
    for name, (ok, rule) in rules.items():
        if name not in obj:
            raise CheckpointError(f"{what} has no field {name!r}; {EDITED}")
        if not ok(obj[name]):
            raise CheckpointError(f"{what}: field {name!r} must be {rule}, got {_short(obj[name])}; {EDITED}")
    unexpected = sorted(set(obj) - set(rules))
    if exact and unexpected:
        raise CheckpointError(
            f"{what} has unexpected fields {_short(unexpected)} (it takes {', '.join(rules)}); {EDITED}"
        )


@contextlib.contextmanager
def _unreadable_as_corrupt(path):
    """Turn the errors of reading a damaged archive into one CheckpointError that says so."""
    try:
        yield
    except _ARCHIVE_ERRORS as exc:
        raise CheckpointError(
            f"{path} is not a readable scratchlm checkpoint ({exc.__class__.__name__}: {exc}); "
            "it may be truncated or corrupt: use an earlier checkpoint or retrain"
        ) from None


def _open(path):
    """The zip archive at ``path``; CheckpointError when there is none, it cannot be read, or it is no archive."""
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}: check the path (a run directory keeps them as *.npz)")
    if not path.is_file():
        raise CheckpointError(f"{path} is not a file: pass the checkpoint file itself")
    try:
        with open(path, "rb") as f:
            magic = f.read(len(_ZIP_MAGIC))
    except OSError as exc:
        fix = "fix its permissions" if isinstance(exc, PermissionError) else "check the file and its disk"
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc} ({fix})") from None
    if not magic:
        raise CheckpointError(
            f"{path} is empty, not a checkpoint (a write may have failed): use an earlier checkpoint or retrain"
        )
    if magic != _ZIP_MAGIC:
        raise CheckpointError(
            f"{path} is not a scratchlm checkpoint (not an .npz archive): pass a checkpoint "
            "file that scratchlm wrote, such as a run directory's last.npz"
        )
    with _unreadable_as_corrupt(path):
        return zipfile.ZipFile(path)


def _scan(archive, path):
    """Key -> (shape, dtype) of every array in ``archive``, from the .npy headers alone (no array data is read).

    Refuses entries that are not .npy arrays, arrays of Python objects (they would need unpickling) and arrays
    whose header claims more or fewer bytes than their entry holds; then checks that all of them fit in memory.
    """
    entries, total = {}, 0
    for info in archive.infolist():
        if not info.filename.endswith(".npy"):
            raise CheckpointError(
                f"{path}: unexpected entry {info.filename!r} (a scratchlm checkpoint holds only .npy arrays); {EDITED}"
            )
        key = info.filename[: -len(".npy")]
        with archive.open(info) as f:
            version = npy_format.read_magic(f)
            if version not in _NPY_HEADER_READERS:
                raise ValueError(f"array {key} has .npy format version {version}, which scratchlm never writes")
            shape, _, dtype = _NPY_HEADER_READERS[version](f)
            header_size = f.tell()
        if dtype.hasobject:
            raise CheckpointError(
                f"{path}: array {key} holds Python objects, which only unpickling could read; "
                "scratchlm never unpickles a file (it could run code), and never writes one"
            )
        if header_size + math.prod(shape) * dtype.itemsize != info.file_size:
            raise CheckpointError(
                f"{path}: array {key} claims shape {_short(shape)} of {dtype}, which is not what "
                f"its {info.file_size:,}-byte entry holds; {EDITED}"
            )
        entries[key] = (shape, dtype)
        total += info.file_size
    check_fits(total, f"reading {path}", "it cannot be loaded on this machine")
    return entries


def _read_array(archive, key):
    with archive.open(key + ".npy") as f:
        return npy_format.read_array(f, allow_pickle=False)


def _read_header(archive, entries, path):
    """The JSON object of the archive's header.json (any JSON value: :func:`_check_header` judges it)."""
    if _HEADER not in entries:
        raise CheckpointError(f"{path} is an .npz file but not a scratchlm checkpoint (no {_HEADER})")
    shape, dtype = entries[_HEADER]
    if len(shape) != 1 or dtype != numpy.uint8:
        raise CheckpointError(f"{path}: unreadable checkpoint header ({_HEADER} is not a byte string); {EDITED}")
    raw = _read_array(archive, _HEADER).tobytes()
    try:
        return json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise CheckpointError(f"{path}: unreadable checkpoint header ({exc}); {EDITED}") from None


def _check_header(header, path):
    """CheckpointError unless ``header`` is a version-1 or -2 header with the fields :func:`save` writes.

    The model config: a JSON object (its fields are judged by :func:`read`'s caller); metadata a dict. A
    version-1 model config gains the kind and cell it implies. The optimizer and RNG states are checked by
    :func:`_optimizer` and :func:`_rng`.
    """
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: malformed checkpoint header (not a JSON object); {EDITED}")
    if header.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a scratchlm checkpoint (format {_short(header.get('format'))})")
    if header.get("version") not in (1, VERSION) or not is_whole(header.get("version")):
        raise CheckpointError(
            f"{path} has checkpoint version {_short(header.get('version'))}; this scratchlm "
            f"reads versions 1 to {VERSION}: upgrade scratchlm or re-save the model"
        )
    missing = [name for name in _FIELDS if name not in header]
    unexpected = sorted(set(header) - set(_FIELDS))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: the checkpoint header "
            + (f"lacks {', '.join(missing)}" if missing else f"has unexpected fields {_short(unexpected)}")
            + f"; {EDITED}"
        )
    if not isinstance(header["model"], dict):
        raise CheckpointError(
            f"{path}: the model config in the header must be a JSON object, got {_short(header['model'])}; {EDITED}"
        )
    if header["version"] == 1 and not set(_V1_MODEL) & set(header["model"]):
        header["model"] = {**_V1_MODEL, **header["model"]}
    if not isinstance(header["metadata"], dict):
        raise CheckpointError(
            f"{path}: the checkpoint's metadata must be a JSON object, got {_short(header['metadata'])}; {EDITED}"
        )


def _optimizer(config, path):
    """The optimizer (without its slots) that ``config`` describes, or None for None.

    CheckpointError unless ``config`` is what :meth:`Optimizer.state_dict` writes: a known name, a whole
    number of iterations from 0 to :data:`LARGEST`, and hyperparameters that the optimizer takes with
    exactly these values.
    """
    if config is None:
        return None
    check_fields(config, _OPTIMIZER_RULES, f"{path}: the optimizer state in the header")
    try:
        opt = optim.from_state(config, {})
    except ValueError as exc:
        raise CheckpointError(f"{path}: unusable optimizer state ({exc}); {EDITED}") from None
    for name, value in opt.hyperparameters().items():
        given = config.get(name, value)
        if given != value or isinstance(given, bool) != isinstance(value, bool):
            raise CheckpointError(
                f"{path}: the {opt.name} optimizer setting {name} = {_short(given)} is not one "
                f"it takes (it would read it as {value!r}); {EDITED}"
            )
    return opt


def _parameter_of(key, slot_names):
    """The parameter an array key stores (``param/<name>``, or ``optimizer/<slot>/<name>`` for a slot in
    ``slot_names``), else None."""
    kind, _, rest = key.partition("/")
    if kind == "param":
        return rest
    slot, _, name = rest.partition("/")
    return name if kind == "optimizer" and slot in slot_names else None


def _check_arrays(entries, shapes_of, config, optimizer, path):
    """CheckpointError unless the arrays are exactly the parameters ``shapes_of(config)`` yields, with exactly
    their shapes and the config's dtype, plus (when there is an optimizer) slots of those parameters that
    it keeps, shaped and typed like them."""
    model = ", ".join(f"{k}={_short(v)}" for k, v in config.items())
    stored = sum(key.startswith("param/") for key in entries)
    shapes = {}
    for name, shape in shapes_of(config):  # stop early: a lying config may imply millions
        shapes[name] = shape
        if len(shapes) > stored:
            break
    if len(shapes) != stored:
        raise CheckpointError(
            f"{path} holds {stored} parameter arrays, but the model in its header ({model}) has "
            f"{'more' if len(shapes) > stored else len(shapes)}; {EDITED}"
        )
    for name in shapes:
        if f"param/{name}" not in entries:
            raise CheckpointError(
                f"{path}: no array param/{name}, which the model in its header ({model}) has; {EDITED}"
            )
    dtype = numpy.dtype(config["dtype"])
    slot_names = () if optimizer is None else optimizer.slot_names
    slots = f"{optimizer.name} keeps {', '.join(slot_names)}" if optimizer else "none is saved"
    for key, (shape, stored_dtype) in entries.items():
        if key == _HEADER:
            continue
        name = _parameter_of(key, slot_names)
        if name not in shapes:
            raise CheckpointError(
                f"{path}: unexpected array {key}, neither a parameter of the model in its header "
                f"({model}) nor an optimizer slot of one ({slots}); {EDITED}"
            )
        if shape != shapes[name]:
            raise CheckpointError(
                f"{path}: array {key} has shape {shape}, but the model in its header ({model}) "
                f"has {name} of shape {shapes[name]}; {EDITED}"
            )
        if stored_dtype != dtype:
            raise CheckpointError(
                f"{path}: array {key} is {stored_dtype}, but the header says the model is "
                f"{dtype}, and parameters and optimizer slots must be {dtype} too; {EDITED}"
            )


def _rng(state, path):
    """The random generator whose ``state`` the header saved, or None for None; CheckpointError if unusable."""
    if state is None:
        return None
    try:
        rng = numpy.random.Generator(_BIT_GENERATORS[state["bit_generator"]]())
        rng.bit_generator.state = state
    except (TypeError, KeyError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{path}: unreadable RNG state ({exc.__class__.__name__}: {exc}); {EDITED}") from None
    return rng


def read(path, shapes_of):
    """Read and check a checkpoint without building anything -> (header, arrays).

    shapes_of(config, what): yields (name, shape) of every parameter the header's model config implies, after
    raising CheckpointError (naming ``what``) when the config is not a valid one; the config's ``dtype``
    is the dtype of every parameter. header: the JSON header, checked as the module docstring says.
    arrays: key ("param/<name>", "optimizer/<slot>/<name>") -> host array, exactly the arrays the header
    implies. Raises CheckpointError on any problem, before reading any array data.
    """
    path = Path(path)
    with _open(path) as archive:
        with _unreadable_as_corrupt(path):
            entries = _scan(archive, path)
            header = _read_header(archive, entries, path)
        _check_header(header, path)
        what = f"{path}: the model config in the header"
        _check_arrays(
            entries,
            lambda config: shapes_of(config, what),
            header["model"],
            _optimizer(header["optimizer"], path),
            path,
        )
        _rng(header["rng"], path)
        with _unreadable_as_corrupt(path):
            arrays = {key: _read_array(archive, key) for key in entries if key != _HEADER}
    return header, arrays


def optimizer_of(header, arrays, backend):
    """The optimizer a :func:`read` checkpoint holds, with its slots on ``backend``, or None."""
    if header["optimizer"] is None:
        return None
    slots = {key[len("optimizer/") :]: a for key, a in arrays.items() if key.startswith("optimizer/")}
    return optim.from_state(header["optimizer"], slots, backend=backend)


def rng_of(header, path):
    """The random generator a :func:`read` checkpoint holds, or None."""
    return _rng(header["rng"], Path(path))
