"""Exceptions a user can cause, each with a message that says what to do.

Every error scratchlm raises on purpose derives from :class:`ScratchLMError`,
so a program (and the CLI) can catch them all in one place and print one line.
"""


class ScratchLMError(Exception):
    """Base class of the errors scratchlm raises for bad input or environment."""


class BackendUnavailable(ScratchLMError):
    """The requested array backend cannot run here (e.g. CuPy or a GPU is missing)."""


class CheckpointError(ScratchLMError):
    """A checkpoint file is missing, truncated, corrupt or not a scratchlm checkpoint."""


class SamplingError(ScratchLMError, ValueError):
    """A sampling option (temperature, top-k, top-p, banned ids) or the logits cannot be sampled from."""


class ModelError(ScratchLMError, ValueError):
    """An argument of a LanguageModel (sizes, seed, token ids, mask, state, generation length) is unusable."""
