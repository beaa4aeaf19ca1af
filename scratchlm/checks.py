"""Whole numbers: the one test of "is this a count, a size, a seed or an id?" that every module uses.

A whole number is a Python or NumPy integer that is not a bool (``True`` is an
``int`` in Python, but never a sensible size or id). :func:`is_whole` is that
test; :func:`whole_at_least` makes a bounded check of it (as the checkpoint
header rules take them), and :func:`require_whole` raises a given error class
with a one-line message, for constructors that take sizes from a user.
"""

import numbers
from collections.abc import Callable

LARGEST = 2**63 - 1  # int64's largest: no real count or size is larger, and a larger one would overflow


def is_whole(x: object) -> bool:
    """A Python or NumPy integer, not a bool."""
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def whole_at_least(least: int, most: int = LARGEST) -> Callable[[object], bool]:
    """The check "a whole number from ``least`` to ``most``" (default :data:`LARGEST`), as a predicate."""
    return lambda v: is_whole(v) and least <= v <= most


def require_whole(name: str, value: object, least: int, error: type[Exception]) -> int:
    """``value`` as an int; ``error`` naming ``name`` unless it is a whole number >= ``least``."""
    if not is_whole(value) or value < least:
        raise error(f"{name} must be a whole number >= {least}, got {value!r}")
    return int(value)
