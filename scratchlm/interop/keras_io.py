"""What both Keras mappings share: the error they raise, Keras and h5py imported on first use, and weight files
read in one place.

A Keras 3 weights file is HDF5: ``model.save_weights`` writes a ``.weights.h5``, and ``model.save`` a
``.keras`` zip holding ``model.weights.h5``. :func:`open_weights` opens either, and :func:`datasets` reads every
array under one of its groups. Neither h5py nor Keras is needed to import scratchlm: they are imported only
when a file is read or a Keras model built (``pip install "scratchlm[reference]"``).
"""

import io
import zipfile
from pathlib import Path

import numpy as np

from ..errors import ScratchLMError

EXTRA = 'pip install "scratchlm[reference]"'


class KerasInteropError(ScratchLMError):
    """A Keras model or weights file cannot be mapped to or from a scratchlm LanguageModel."""


def import_h5py():
    """The h5py module; KerasInteropError saying how to install it when it is missing."""
    try:
        import h5py
    except ImportError:
        raise KerasInteropError(f"reading Keras weight files needs h5py: pip install h5py (or {EXTRA})") from None
    return h5py


def import_keras():
    """The keras module (Keras 3); KerasInteropError when it is missing or older."""
    try:
        import keras
    except ImportError as exc:
        raise KerasInteropError(f"to_keras needs Keras 3 with TensorFlow ({exc}): {EXTRA}") from None
    if int(keras.__version__.split(".")[0]) < 3:
        raise KerasInteropError(f"to_keras needs Keras 3, found Keras {keras.__version__}: pip install 'keras>=3'")
    return keras


def open_weights(path: Path):
    """The ``h5py.File`` of a Keras 3 ``.weights.h5`` file, or of the ``model.weights.h5`` inside a ``.keras``
    file, open for reading (use it in a ``with`` block); KerasInteropError when it is missing or not such a file."""
    h5py = import_h5py()
    if not path.is_file():
        raise KerasInteropError(f"no such Keras weights file: {path}")
    source = path
    if path.suffix == ".keras":  # a zip holding model.weights.h5
        try:
            with zipfile.ZipFile(path) as archive:
                source = io.BytesIO(archive.read("model.weights.h5"))
        except (zipfile.BadZipFile, KeyError):
            raise KerasInteropError(f"{path} is not a Keras 3 .keras archive (no model.weights.h5 inside)") from None
    try:
        return h5py.File(source, "r")
    except OSError:
        raise KerasInteropError(
            f"{path} is not an HDF5 file: expected a Keras 3 .weights.h5 (model.save_weights) or .keras file"
        ) from None


def datasets(group) -> dict[str, np.ndarray]:
    """{relative path: array} of every dataset under an h5py group."""
    out = {}
    group.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if hasattr(obj, "shape") else None)
    return out


def check_finite(arrays: dict[str, np.ndarray]) -> None:
    """KerasInteropError naming the first of ``arrays`` ({what: array}) that holds NaN or infinity."""
    for what, a in arrays.items():
        a = np.asarray(a)
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise KerasInteropError(
                f"{what} holds {int(a.size - np.isfinite(a).sum()):,} NaN or infinite "
                "value(s): the Keras model's weights diverged; load an earlier copy of them"
            )
