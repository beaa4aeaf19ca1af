"""Central-difference gradient checks, for tests and for users changing the math.

For a scalar loss L(θ) and each checked entry θ_k:

    n_k = (L(θ + h e_k) - L(θ - h e_k)) / 2h            (numerical, error O(h²))

and the analytic gradient a is compared per parameter tensor by

    rel = max_k |a_k - n_k| / max(max_k (|a_k| + |n_k|), tiny)

Run it in float64: with h = 1e-4 a correct gradient gives rel ~ 1e-8 on the small
models of the tests, while a wrong derivative gives rel ~ 0.1–1 (docs/design.md).

A gradient that is zero in exact arithmetic (an attention key bias: softmax ignores
the per-query constant q·bk) is round-off on both sides, 0 on one CPU and 4e-18 on
another, so its relative error is anything from 0 to 1. Such tensors are named in
``zero=`` and held to an absolute bound instead, on the scale of the largest
gradient; a tensor not named there whose gradient is round-off raises, so that the
trap shows on every machine rather than on some.
"""

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .backend import Array, Backend, array_module

TINY = 1e-30
ROUND_OFF = 1e-8  # a gradient tensor below this fraction of the largest entry of any tensor is round-off


def relative_error(analytic: Array, numeric: Array) -> float:
    """``max|a - n| / max(|a| + |n|)`` over all entries (0 when both are zero)."""
    xp = array_module(analytic)
    scale = float(xp.max(xp.abs(analytic) + xp.abs(numeric))) if analytic.size else 0.0
    diff = float(xp.max(xp.abs(analytic - numeric))) if analytic.size else 0.0
    return diff / max(scale, TINY)


def numerical_gradient(
    loss_fn: Callable[[], float], param: Array, h: float = 1e-4, indices: Iterable[int] | None = None
) -> Array:
    """Central differences of ``loss_fn()`` w.r.t. entries of ``param`` (perturbed in place).

    loss_fn: zero-argument callable returning a float computed from ``param``.
    indices: flat indices to check (default: every entry).
    Returns an array of the numerical derivatives, one per index; ``param`` is
    restored exactly afterwards.
    """
    xp = array_module(param)
    flat = param.reshape(-1)
    if indices is None:
        indices = range(flat.size)
    grads = []
    for k in indices:
        saved = flat[k].copy()
        flat[k] = saved + h
        plus = loss_fn()
        flat[k] = saved - h
        minus = loss_fn()
        flat[k] = saved
        grads.append((plus - minus) / (2 * h))
    return xp.asarray(grads, dtype=param.dtype)


def check_gradients(
    loss_fn: Callable[[], float],
    params: Mapping[str, Array],
    grads: Mapping[str, Array],
    h: float = 1e-4,
    max_entries: int | None = None,
    seed: int = 0,
    zero: Iterable[str] = (),
) -> dict[str, float]:
    """Relative error of every analytic gradient against central differences.

    params, grads: dicts name -> array (same names, same shapes).
    max_entries: check at most this many randomly chosen entries per tensor
    (default: all).
    zero: names whose gradient is zero in exact arithmetic; each gets
    ``max(|a|, |n|) / scale`` instead of a relative error, with scale the largest
    analytic entry of any tensor.
    Returns dict name -> error. Raises ValueError for a tensor outside ``zero``
    whose gradients are both below ROUND_OFF · scale (a hidden zero).
    """
    rng = Backend.rng(seed)
    scale = max((float(array_module(g).max(array_module(g).abs(g))) for g in grads.values() if g.size), default=0.0)
    errors = {}
    for name, p in params.items():
        a = grads[name].reshape(-1)
        if max_entries is None or p.size <= max_entries:
            idx = list(range(p.size))
        else:
            idx = sorted(int(k) for k in rng.choice(p.size, size=max_entries, replace=False))
        xp = array_module(a)
        a = a[xp.asarray(idx)]
        n = numerical_gradient(loss_fn, p, h=h, indices=idx)
        largest = float(xp.max(xp.maximum(xp.abs(a), xp.abs(n)))) if a.size else 0.0
        if name in zero:
            errors[name] = largest / max(scale, TINY)
        elif a.size and largest <= ROUND_OFF * scale:
            raise ValueError(
                f"the gradient of {name} is round-off ({largest:.3g} against {scale:.3g}): if it is "
                "zero in theory, name it in zero=; otherwise make the check exercise it"
            )
        else:
            errors[name] = relative_error(a, n)
    return errors


def check_model(
    model: Any,
    x: Any,
    y: Any,
    h: float = 1e-4,
    max_entries: int | None = None,
    zero: Iterable[str] = (),
    **loss_kwargs: Any,
) -> dict[str, float]:
    """Gradient check of ``model.loss_and_grads(x, y, **loss_kwargs)`` for every parameter.

    Stateful models are reset before every evaluation so that each loss sees
    the same initial state. ``zero`` as for :func:`check_gradients`. Returns
    dict name -> error.
    """

    def loss_fn():
        model.reset_state()
        return model.loss(x, y, **loss_kwargs)

    model.reset_state()
    _, grads = model.loss_and_grads(x, y, **loss_kwargs)
    return check_gradients(loss_fn, model.params, grads, h=h, max_entries=max_entries, zero=zero)
