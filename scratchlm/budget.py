"""Memory budget: refuse work that cannot fit before allocating it, with the estimate in the message.

A model with ``--hidden 100000`` or a sample of 10^11 tokens would otherwise
fail deep inside NumPy (a MemoryError traceback) or, worse, after an epoch of
training. Callers estimate the bytes they are about to need and call
:func:`check_fits` first; it compares them with the memory this machine has
available now (``MemAvailable`` in ``/proc/meminfo``, else the physical
memory) and raises :class:`ResourceError` when they cannot fit.
"""

import os

from .errors import ScratchLMError


class ResourceError(ScratchLMError):
    """What was asked for needs more memory than this machine has available."""


def available_bytes():
    """Bytes of memory available to a new allocation now, or None when the system does not say."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None


def human(nbytes):
    """1536 -> '1.5 KiB'; 2.5e12 -> '2.3 TiB'."""
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024


def check_fits(nbytes, what, fix):
    """Raise :class:`ResourceError` if ``nbytes`` exceed the available memory.

    what: the thing being built ("the model's weights, gradients and optimizer state").
    fix: what the user can change ("use fewer --hidden units").
    Does nothing when the available memory is unknown.
    """
    have = available_bytes()
    if have is not None and nbytes > have:
        raise ResourceError(f"{what} would need about {human(nbytes)}, but only {human(have)} of memory is "
                            f"available: {fix}")
