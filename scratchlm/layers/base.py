"""The contract every layer keeps, written down once.

A layer is an object with parameters and two methods that mirror each other:

    params                          name -> parameter array: the live arrays, which optimizers update in place
    param_shapes(*sizes)            (a class method) name -> shape of those parameters, in the same order, from
                                    the sizes the constructor takes, without building a layer
    forward(*inputs) -> (y, cache)  y what the layer computes; cache what backward needs from this call
                                    (a NamedTuple with shapes in comments, or simply the input)
    backward(cache, dy) -> (dx, grads)
                                    dx the gradient of the loss with respect to what forward was fed (None
                                    for token ids, which have none; a NamedTuple where forward took several
                                    inputs); grads the gradient of every parameter, keyed like ``params``

A layer may take more inputs after these (a mask, an initial state, the gradient
of a recurrent layer's final state); what each takes is in its own docstring.
Each forward gets at most one backward: the fused kernels write gradients over
buffers the cache holds.

Layers hold math only. Which code computes it — the plain ``xp`` code of these
modules (the reference) or the fused kernels of :mod:`scratchlm.kernels` — is
decided once, by :meth:`scratchlm.backend.Backend.layer`, which is how every
model and every layer made of layers builds its parts: ``backend.layer(LSTM)``
is ``LSTM`` itself on the reference path and its fused subclass otherwise.
"""

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from typing import Any

from ..backend import Array

Shape = tuple[int, ...]

__all__ = ["Array", "Layer", "Shape", "prefixed", "prefixed_items"]


class Layer(ABC):
    """Base of every layer: see the module docstring for the contract."""

    @property
    @abstractmethod
    def params(self) -> dict[str, Array]:
        """Name -> parameter array (the live arrays)."""

    @classmethod
    @abstractmethod
    def param_shapes(cls, *sizes: int) -> dict[str, Shape]:
        """Name -> shape of the parameters of ``cls(*sizes, ...)``, in :attr:`params` order, without building it."""

    @abstractmethod
    def forward(self, *inputs: Any) -> tuple[Any, Any]:
        """inputs -> (y, cache)."""

    @abstractmethod
    def backward(self, cache: Any, dy: Any) -> tuple[Any, dict[str, Array]]:
        """(cache from forward, ∂L/∂y) -> (∂L/∂inputs, {name: ∂L/∂param})."""


def prefixed(prefix: str, named: Mapping[str, Any]) -> dict[str, Any]:
    """{name: v} -> {prefix/name: v}: how a layer made of layers (or a model) names its parts' parameters."""
    return {f"{prefix}/{name}": v for name, v in named.items()}


def prefixed_items(prefix: str, named: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    """The items of :func:`prefixed`, one at a time (for generators that a caller may stop early)."""
    for name, v in named.items():
        yield f"{prefix}/{name}", v
