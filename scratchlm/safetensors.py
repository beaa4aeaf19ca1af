"""safetensors files: scratchlm's own reader and writer of the tensor format Hugging Face models ship in.

    header = read_header("model.safetensors")            # every check below; no tensor read yet
    with open_file(header) as f:
        wte = read_tensor(f, header, "wte.weight")       # one tensor, (V, E) float32
        read_tensor(f, header, "ln_f.weight", out=gamma) # straight into an existing array
    arrays = load("model.safetensors")                   # all of them, after the memory check
    save("out.safetensors", {"w": w}, {"format": "pt"})  # atomically

The layout, little-endian throughout:

    8 bytes     N, the header's length, an unsigned 64-bit integer
    N bytes     the header: a UTF-8 JSON object, padded with spaces at the end,
                    {name: {"dtype": "F32", "shape": [768, 2304], "data_offsets": [begin, end]}, ...,
                     "__metadata__": {str: str}}                              (the metadata is optional)
    the rest    the data buffer: each tensor's bytes in C order at [begin, end) of the buffer, the tensors
                one after the other, no holes, nothing after the last

dtypes: F64, F32, F16, BF16 (floats), I64, I32, I16, I8, U64, U32, U16, U8, BOOL; a tensor reads as the
NumPy dtype of the same name, except F16 and BF16, which are widened to float32 (BF16 is the top half of
a float32: its 16 bits shifted left by 16).

**Reading trusts nothing in the file**, as scratchlm's own checkpoints (:mod:`scratchlm.checkpoint`).
:func:`read_header` checks, before any tensor is read: N is at most :data:`MAX_HEADER` and inside the file;
the header is UTF-8 JSON, one object without repeated names; every entry has exactly dtype, shape and
data_offsets; the dtype is one of the above; the shape is a list of whole numbers >= 0; the offsets are
whole numbers with begin <= end inside the buffer and end − begin = (product of the shape) · itemsize;
the tensors tile the buffer exactly (no overlap, no hole, no trailing bytes). A header that lies about
sizes is refused from its numbers alone, so it never makes scratchlm allocate what it claims; a caller
checks what it will read against the memory (:func:`load` does, with :func:`scratchlm.budget.check_fits`).
The format holds only numbers: reading never unpickles. Every failure is a
:class:`~scratchlm.errors.CheckpointError` with one line that names the file, the tensor and the field.

Writing (:func:`save`) is atomic (:func:`scratchlm.files.atomic_write`: a temporary file renamed over the
destination), with the names sorted, the tensors in that order, and the header padded with spaces so that
the buffer starts at a multiple of 8 bytes.
"""

import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import numpy

from .budget import check_fits
from .checks import is_whole
from .errors import CheckpointError
from .files import atomic_write, open_regular

MAX_HEADER = 100_000_000  # bytes: the most a header may claim (the format's reference reader's bound)
METADATA = "__metadata__"
DAMAGED = "the file is truncated, corrupt or not a safetensors file: download or write it again"
STORED = {  # the file's dtype -> how its bytes are laid out
    "F64": numpy.dtype("<f8"),
    "F32": numpy.dtype("<f4"),
    "F16": numpy.dtype("<f2"),
    "BF16": numpy.dtype("<u2"),  # the top 16 bits of a float32
    "I64": numpy.dtype("<i8"),
    "I32": numpy.dtype("<i4"),
    "I16": numpy.dtype("<i2"),
    "I8": numpy.dtype("i1"),
    "U64": numpy.dtype("<u8"),
    "U32": numpy.dtype("<u4"),
    "U16": numpy.dtype("<u2"),
    "U8": numpy.dtype("u1"),
    "BOOL": numpy.dtype("?"),
}
WIDENED = {"F16": numpy.dtype("float32"), "BF16": numpy.dtype("float32")}  # read as float32
FLOATS = ("F64", "F32", "F16", "BF16")
_NAMES = {numpy.dtype(dtype.newbyteorder("=")): name for name, dtype in STORED.items() if name != "BF16"}
_MAX_DIMS = 64  # NumPy's most


class Entry(NamedTuple):
    """One tensor of a checked header."""

    dtype: str  # the file's dtype name, e.g. "F32"
    shape: tuple[int, ...]
    begin: int  # where its bytes start in the file (8 + N + the header's begin)
    end: int  # where they end

    @property
    def reads_as(self) -> numpy.dtype:
        """The dtype of the array :func:`read_tensor` returns: F16 and BF16 widened to float32, others as stored."""
        return WIDENED.get(self.dtype, STORED[self.dtype].newbyteorder("="))


class Header(NamedTuple):
    """What :func:`read_header` found: every tensor's entry, and the metadata."""

    path: Path
    entries: dict[str, Entry]  # by name, in the order of their bytes in the file
    metadata: dict[str, str]


def _refuse(path: Path, what: str) -> CheckpointError:
    return CheckpointError(f"{path}: {what}; {DAMAGED}")


def _unique_names(pairs: list[tuple[str, Any]]) -> dict:
    """json.loads' object hook: a dict of ``pairs``, ValueError when a name repeats (JSON leaves it open)."""
    out = {}
    for name, value in pairs:
        if name in out:
            raise ValueError(f"the name {name!r} appears twice in one object")
        out[name] = value
    return out


def _entry(path: Path, name: str, spec: Any, start: int, buffer: int) -> Entry:
    """The checked :class:`Entry` of tensor ``name`` from its header ``spec``; ``start``: the buffer's offset in
    the file, ``buffer``: its size in bytes."""
    if not isinstance(spec, dict) or set(spec) != {"dtype", "shape", "data_offsets"}:
        raise _refuse(path, f"tensor {name!r} must be an object of exactly dtype, shape and data_offsets")
    dtype, shape, offsets = spec["dtype"], spec["shape"], spec["data_offsets"]
    if dtype not in STORED:
        raise CheckpointError(
            f"{path}: tensor {name!r} has dtype {str(dtype)[:20]!r}, which scratchlm does not read (it reads "
            f"{', '.join(STORED)}): convert the file to F32 or F16 with the tool that made it"
        )
    if not isinstance(shape, list) or len(shape) > _MAX_DIMS or not all(is_whole(n) and n >= 0 for n in shape):
        raise _refuse(path, f"tensor {name!r} has shape {str(shape)[:60]}, not a list of whole numbers >= 0")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(is_whole(n) for n in offsets):
        raise _refuse(path, f"tensor {name!r} has data_offsets {str(offsets)[:60]}, not [begin, end]")
    begin, end = offsets
    if not 0 <= begin <= end <= buffer:
        raise _refuse(path, f"tensor {name!r} claims bytes [{begin:,}, {end:,}) of a data buffer of {buffer:,} bytes")
    size = math.prod(shape) * STORED[dtype].itemsize
    if end - begin != size:
        raise _refuse(
            path, f"tensor {name!r} of shape {shape} {dtype} needs {size:,} bytes, but its offsets hold {end - begin:,}"
        )
    return Entry(dtype, tuple(int(n) for n in shape), start + begin, start + end)


def _tiled(path: Path, entries: dict[str, Entry], start: int, buffer: int) -> dict[str, Entry]:
    """``entries`` in the order of their bytes, once they are known to tile the buffer [start, start + buffer)."""
    ordered = dict(sorted(entries.items(), key=lambda item: (item[1].begin, item[1].end)))
    at = start
    for name, entry in ordered.items():
        if entry.begin != at:
            gap = "overlaps the tensor before it" if entry.begin < at else "leaves a hole before it"
            raise _refuse(path, f"tensor {name!r} at bytes [{entry.begin - start:,}, {entry.end - start:,}) {gap}")
        at = entry.end
    if at != start + buffer:
        raise _refuse(path, f"{start + buffer - at:,} bytes after the last tensor belong to none")
    return ordered


def read_header(path: Any) -> Header:
    """The checked :class:`Header` of the safetensors file at ``path`` (see the module docstring); no tensor is
    read. Raises CheckpointError naming what is wrong."""
    path = Path(path)
    with open_regular(path, "safetensors file", CheckpointError) as f:
        size = os.fstat(f.fileno()).st_size
        prefix = f.read(8)
        if len(prefix) < 8:
            raise _refuse(path, f"{size} bytes are too few to hold the 8-byte length of a header")
        n = int.from_bytes(prefix, "little")
        if n > MAX_HEADER:
            raise _refuse(path, f"its header claims {n:,} bytes, more than a header may hold ({MAX_HEADER:,})")
        if 8 + n > size:
            raise _refuse(path, f"its header claims {n:,} bytes, but only {size - 8:,} follow its length")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_names)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise _refuse(path, f"unreadable header ({str(exc)[:120]})") from None
    if not isinstance(header, dict):
        raise _refuse(path, "the header is not a JSON object")
    metadata = header.pop(METADATA, {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _refuse(path, f"{METADATA} must be an object of strings")
    start, buffer = 8 + n, size - 8 - n
    entries = {name: _entry(path, name, spec, start, buffer) for name, spec in header.items()}
    return Header(path, _tiled(path, entries, start, buffer), metadata)


def open_file(header: Header) -> BinaryIO:
    """The file of ``header`` opened for :func:`read_tensor` (a regular file, as :func:`read_header` found it)."""
    return open_regular(header.path, "safetensors file", CheckpointError)


def _read_exactly(f: BinaryIO, offset: int, buffer: numpy.ndarray, path: Path, name: str) -> None:
    """Fill the bytes of the C-contiguous ``buffer`` from ``f`` at ``offset``; CheckpointError if the file ends."""
    view = memoryview(buffer.reshape(-1).view(numpy.uint8))
    f.seek(offset)
    done = 0
    while done < len(view):
        count = f.readinto(view[done:])
        if not count:
            raise _refuse(path, f"the file ends inside tensor {name!r} (it changed since its header was read)")
        done += count


def read_tensor(
    f: BinaryIO, header: Header, name: str, out: numpy.ndarray | None = None, rows: tuple[int, int] | None = None
) -> numpy.ndarray:
    """Tensor ``name`` of ``header``'s file, opened as ``f`` (:func:`open_file`), as a host array.

    rows: (start, stop), only those rows of its first axis (to read a large tensor in pieces).
    out: the array to read into, of the tensor's (or the rows') shape, any dtype (the values are cast as
    NumPy casts them); the bytes go straight into it when it is C-contiguous with the stored dtype,
    else through one buffer of the stored bytes. None: a new array of :attr:`Entry.reads_as` (the caller
    has checked that it fits in memory). Returns ``out`` or the new array.
    """
    entry = header.entries[name]
    stored = STORED[entry.dtype]
    shape, begin = entry.shape, entry.begin
    if rows is not None:
        start, stop = rows
        if not shape or not 0 <= start <= stop <= shape[0]:
            raise ValueError(f"rows {rows} are not rows of tensor {name!r} of shape {shape}")
        row = math.prod(shape[1:]) * stored.itemsize
        shape, begin = (stop - start, *shape[1:]), begin + start * row
    if out is None:
        out = numpy.empty(shape, entry.reads_as)
    elif out.shape != shape:
        raise ValueError(f"out has shape {out.shape}, but tensor {name!r} (rows {rows}) has {shape}")
    direct = out.dtype == stored and out.flags.c_contiguous and entry.dtype != "BF16"
    raw = out if direct else numpy.empty(shape, stored)
    _read_exactly(f, begin, raw, header.path, name)
    if raw is not out:
        with numpy.errstate(over="ignore"):  # a value out of out's range becomes inf: the caller checks finiteness
            out[...] = (raw.astype(numpy.uint32) << 16).view(numpy.float32) if entry.dtype == "BF16" else raw
    return out


def load(path: Any, names: Iterable[str] | None = None) -> dict[str, numpy.ndarray]:
    """Tensors of the safetensors file at ``path`` by name (``names``, default all of them), each as
    :func:`read_tensor` reads it, after :func:`read_header`'s checks and a check that they fit in memory.
    Raises CheckpointError (a name the file lacks, or any problem of the file), ResourceError."""
    header = read_header(path)
    names = list(header.entries if names is None else names)
    missing = [name for name in names if name not in header.entries]
    if missing:
        raise CheckpointError(f"{header.path} holds no tensor {missing[0]!r} (it holds {len(header.entries)})")
    total = sum(math.prod(header.entries[n].shape) * header.entries[n].reads_as.itemsize for n in names)
    check_fits(total, f"reading the tensors of {header.path}", "it cannot be loaded on this machine")
    with open_file(header) as f:
        return {name: read_tensor(f, header, name) for name in names}


def save(path: Any, tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None) -> None:
    """Write ``tensors`` (name -> host array of a dtype of :data:`STORED`, BF16 aside) and ``metadata`` (str ->
    str) as one safetensors file at ``path``, atomically; names sorted, the buffer 8-byte aligned.
    Raises ValueError for a name that is not a string, an array of another dtype or metadata not of strings."""
    header: dict[str, Any] = {}
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise ValueError("safetensors metadata maps strings to strings")
        header[METADATA] = dict(metadata)
    arrays, offset = [], 0
    for name in sorted(tensors):
        if not isinstance(name, str) or name == METADATA:
            raise ValueError(f"a tensor's name must be a string other than {METADATA!r}, got {name!r}")
        a = numpy.asarray(tensors[name])
        dtype = _NAMES.get(a.dtype.newbyteorder("="))
        if dtype is None:
            raise ValueError(f"tensor {name!r} is {a.dtype}; safetensors stores {', '.join(sorted(_NAMES.values()))}")
        a = numpy.asarray(a, dtype=STORED[dtype], order="C")  # little-endian, C order: a copy only where it is not
        header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        arrays.append(a)
        offset += a.nbytes
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-(8 + len(text)) % 8)  # the buffer starts at a multiple of 8
    with atomic_write(path) as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for a in arrays:
            f.write(a.reshape(-1).view(numpy.uint8))
