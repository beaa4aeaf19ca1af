"""Central-difference gradient checks, for tests and for users changing the math.

For a scalar loss L(θ) and each checked entry θ_k:

    n_k = (L(θ + h e_k) - L(θ - h e_k)) / 2h            (numerical, error O(h²))

and the analytic gradient a is compared per parameter tensor by

    rel = max_k |a_k - n_k| / max(max_k (|a_k| + |n_k|), tiny)

Run it in float64: with h = 1e-4 a correct gradient gives rel ~ 1e-8 on the small
models of the tests, while a wrong derivative gives rel ~ 0.1–1 (docs/design.md).
"""

from .backend import Backend, array_module

TINY = 1e-30


def relative_error(analytic, numeric):
    """max|a - n| / max(|a| + |n|) over all entries (0 when both are zero)."""
    xp = array_module(analytic)
    scale = float(xp.max(xp.abs(analytic) + xp.abs(numeric))) if analytic.size else 0.0
    diff = float(xp.max(xp.abs(analytic - numeric))) if analytic.size else 0.0
    return diff / max(scale, TINY)


def numerical_gradient(loss_fn, param, h=1e-4, indices=None):
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


def check_gradients(loss_fn, params, grads, h=1e-4, max_entries=None, seed=0):
    """Relative error of every analytic gradient against central differences.

    params, grads: dicts name -> array (same names, same shapes).
    max_entries: check at most this many randomly chosen entries per tensor
    (default: all). Returns dict name -> relative error.
    """
    rng = Backend.rng(seed)
    errors = {}
    for name, p in params.items():
        a = grads[name].reshape(-1)
        if max_entries is None or p.size <= max_entries:
            idx = list(range(p.size))
        else:
            idx = sorted(int(k) for k in rng.choice(p.size, size=max_entries, replace=False))
        n = numerical_gradient(loss_fn, p, h=h, indices=idx)
        errors[name] = relative_error(a[array_module(a).asarray(idx)], n)
    return errors


def check_model(model, x, y, h=1e-4, max_entries=None, **loss_kwargs):
    """Gradient check of ``model.loss_and_grads(x, y, **loss_kwargs)`` for every parameter.

    Stateful models are reset before every evaluation so that each loss sees
    the same initial state. Returns dict name -> relative error.
    """
    def loss_fn():
        model.reset_state()
        return model.loss(x, y, **loss_kwargs)

    model.reset_state()
    _, grads = model.loss_and_grads(x, y, **loss_kwargs)
    return check_gradients(loss_fn, model.params, grads, h=h, max_entries=max_entries)
