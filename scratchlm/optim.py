"""Optimizers: SGD, RMSprop and Adam with Keras 3 defaults and update formulas; AdamW as PyTorch's.

An optimizer turns gradients into weight updates. It is handed two dicts keyed by
parameter name, ``params`` and ``grads``, and updates every ``params[name]`` in place,
so the arrays a model holds stay the same objects. The code is written once against
the array module of the parameters (NumPy or CuPy, found with
:func:`scratchlm.backend.array_module`), so it runs on either device unchanged.
On NumPy, Adam's and RMSprop's updates run as one pass per parameter
(:mod:`scratchlm.kernels.numba.optim`, the same arithmetic in the same order, so
the same bits) where the fused CPU kernels are chosen.

Per-parameter state ("slots": momentum, moving averages) is created lazily on the
first step as zeros of the parameter's shape and dtype, and stored under
``"<slot>/<param name>"`` — e.g. ``"m/lstm_0/kernel"`` — which is also how
:meth:`Optimizer.state_dict` exports it for checkpoints.

Every optimizer can first rescale all gradients together so that their global L2
norm is at most ``global_clipnorm`` (Keras' ``clip_by_global_norm``), the usual guard
against exploding gradients in recurrent networks.

Typical use::

    opt = optim.get("adam", lr=2e-3, global_clipnorm=5.0)
    for batch in batches:
        loss, grads = model.loss_and_grads(batch)
        opt.step(model.params, grads)

    config, arrays = opt.state_dict()           # save: config is JSON-serialisable
    opt = optim.from_state(config, arrays)      # resume exactly where it stopped
"""

from __future__ import annotations

import math
import numbers
import reprlib
from typing import TYPE_CHECKING

import numpy as np

from . import backend as _backend
from .backend import array_module
from .errors import BackendUnavailable

if TYPE_CHECKING:
    from .backend import Array, Backend

MAX_ITERATIONS = 2**63 - 1  # more steps than any run takes; Adam's β**t would overflow long past it


def _one_pass_chosen(kernels=None):
    """Whether the fused CPU kernels are chosen for NumPy: ``kernels`` ("fused", "reference", or None for
    ``SCRATCHLM_KERNELS``, default: where Numba is installed), read once per optimizer as a backend reads it once.
    A bad or unmet setting is the backend's to report: here it just means the NumPy expressions."""
    try:
        return _backend.resolve_kernels(kernels, "numpy") == "fused"
    except BackendUnavailable:
        return False


def global_norm(grads: dict[str, Array]) -> float:
    """sqrt(Σ over all arrays of Σ g²): the L2 norm of all gradients taken as one vector."""
    return math.sqrt(sum(float((g * g).sum()) for g in grads.values()))


def clip_by_global_norm(grads: dict[str, Array], clipnorm: float) -> tuple[dict[str, Array], float]:
    """Return (clipped, norm): ``grads`` scaled together so that their global norm is <= clipnorm.

    As Keras 3: ``scale = clipnorm · min(1/norm, 1/clipnorm)``, i.e. 1 when
    norm <= clipnorm (norm 0 included) and clipnorm/norm otherwise. A non-finite
    norm gives scale NaN, so an inf/NaN gradient poisons the step visibly instead
    of being hidden. ``grads`` is not modified; when scale is 1 the same dict is
    returned, otherwise a new dict of new arrays.
    """
    norm = global_norm(grads)
    scale = clipnorm / max(norm, clipnorm) if math.isfinite(norm) else math.nan
    if scale == 1.0:
        return grads, norm
    return {name: g * scale for name, g in grads.items()}, norm


def clip_grad_norm(grads: dict[str, Array], max_norm: float) -> tuple[dict[str, Array], float]:
    """Return (clipped, norm) as PyTorch's ``torch.nn.utils.clip_grad_norm_`` scales:
    ``scale = min(1, max_norm / (norm + 1e-6))`` (so a norm just above max_norm is scaled a little below it,
    unlike :func:`clip_by_global_norm`). A non-finite norm gives scale NaN. ``grads`` is not modified."""
    norm = global_norm(grads)
    scale = min(1.0, max_norm / (norm + 1e-6)) if math.isfinite(norm) else math.nan
    if scale == 1.0:
        return grads, norm
    return {name: g * scale for name, g in grads.items()}, norm


def _number(name, value, ok, rule):
    """float(value), or ValueError naming the hyperparameter and the rule it breaks."""
    try:
        if isinstance(value, (bool, str)):
            raise TypeError
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number {rule}, got {value!r}") from None
    if not ok(x):  # NaN fails every comparison, so it is rejected here too
        raise ValueError(f"{name} must be {rule}, got {value!r}")
    return x


class Optimizer:
    """Base class: validation, gradient clipping, slots, iteration count and state.

    A subclass sets ``name`` and ``slot_names``, stores its hyperparameters, lists
    them in :meth:`hyperparameters`, and implements ``_update(name, w, g)``, the
    in-place update of one parameter ``w`` given its (clipped) gradient ``g``.

    Attributes: ``lr`` (learning rate), ``global_clipnorm`` (None: no clipping),
    ``iterations`` (steps taken so far), ``slots`` (dict "<slot>/<param>" -> array).
    ``kernels`` ("fused", "reference", or None for ``SCRATCHLM_KERNELS`` as a backend
    reads it): whether NumPy parameters take the one-pass Numba update (the same bits)
    or the NumPy expressions below.
    """

    name: str | None = None  # "sgd" | "rmsprop" | "adam" | "adamw"
    slot_names: tuple[str, ...] = ()  # the slots this optimizer may keep per parameter

    def __init__(self, lr: float, global_clipnorm: float | None = None, kernels: str | None = None):
        self.lr = _number("lr", lr, lambda x: x > 0, "> 0")
        if global_clipnorm is not None:
            global_clipnorm = _number("global_clipnorm", global_clipnorm, lambda x: x > 0, "> 0 (or None)")
        self.global_clipnorm = global_clipnorm
        self.iterations = 0
        self.slots = {}
        self._one_pass = _one_pass_chosen(kernels)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({args}) after {self.iterations} steps"

    def hyperparameters(self) -> dict:
        """The constructor arguments, as a dict of plain Python values."""
        raise NotImplementedError

    def _update(self, name, w, g):
        """Update parameter ``w`` (named ``name``) in place from gradient ``g``."""
        raise NotImplementedError

    # -- the step ------------------------------------------------------------
    def _clip(self, grads: dict[str, Array], clipnorm: float) -> tuple[dict[str, Array], float]:
        """The gradients scaled to global norm ``clipnorm`` at most: Keras' formula (:func:`clip_by_global_norm`)."""
        return clip_by_global_norm(grads, clipnorm)

    def step(self, params: dict[str, Array], grads: dict[str, Array]) -> None:
        """One update of every ``params[name]``, in place, from ``grads[name]``.

        ``grads`` is read, never written. Raises ValueError, before changing
        anything, if the two dicts do not name the same parameters with the same
        shapes.
        """
        missing = [name for name in params if name not in grads]
        unknown = [name for name in grads if name not in params]
        if missing or unknown:
            raise ValueError(
                f"grads do not match params: no gradient for {missing}, gradients for unknown parameters {unknown}"
            )
        for name, w in params.items():
            if grads[name].shape != w.shape:
                raise ValueError(
                    f"gradient for {name!r} has shape {grads[name].shape}, but the parameter has shape {w.shape}"
                )
        if self.global_clipnorm is not None:
            grads, _ = self._clip(grads, self.global_clipnorm)
        for name, w in params.items():
            self._update(name, w, grads[name])
        self.iterations += 1

    def _fused(self, *arrays):
        """The one-pass update kernels (:mod:`scratchlm.kernels.numba.optim`) when they apply to these arrays:
        NumPy arrays, C-contiguous, of one float dtype, and the fused CPU kernels chosen when the optimizer
        was made (:func:`_one_pass_chosen`). None otherwise: the NumPy expressions run, with the same result."""
        w = arrays[0]
        if not self._one_pass or w.dtype not in (np.float32, np.float64):
            return None
        if not all(type(a) is np.ndarray and a.dtype == w.dtype and a.flags.c_contiguous for a in arrays):
            return None
        from .kernels.numba import optim as optim_numba

        return optim_numba

    def _slot(self, slot, name, w):
        """The ``slot`` array of parameter ``name``, created as zeros like ``w`` on first use."""
        key = f"{slot}/{name}"
        s = self.slots.get(key)
        if s is None:
            s = self.slots[key] = array_module(w).zeros_like(w)
        elif s.shape != w.shape:
            raise ValueError(f"optimizer slot {key!r} has shape {s.shape}, but the parameter has shape {w.shape}")
        return s

    # -- checkpoints ---------------------------------------------------------
    def state_dict(self) -> tuple[dict, dict[str, Array]]:
        """Return (config, arrays).

        config: JSON-serialisable dict ``{"name", hyperparameters..., "iterations"}``.
        arrays: the live slot arrays keyed "<slot>/<param name>" (not copies: write
        them out, or copy them, before the next step).
        """
        config = {"name": self.name, **self.hyperparameters(), "iterations": self.iterations}
        return config, dict(self.slots)

    def load_state_dict(self, config: dict, arrays: dict[str, Array], backend: Backend | None = None) -> None:
        """Restore ``iterations`` and the slots from :meth:`state_dict` output.

        Hyperparameters are not touched (they come from the constructor; see
        :func:`from_state`), so a run can resume with, say, a different lr.
        Arrays are used as given, or converted with ``backend.asarray`` when a
        backend is given. Slots missing from ``arrays`` start at zero again.
        ``iterations`` must be a whole number from 0 to :data:`MAX_ITERATIONS`.
        """
        if config.get("name") != self.name:
            raise ValueError(f"optimizer state is for {config.get('name')!r}, not {self.name!r}")
        iterations = config.get("iterations", 0)
        if not (
            isinstance(iterations, numbers.Integral)
            and not isinstance(iterations, bool)
            and 0 <= iterations <= MAX_ITERATIONS
        ):
            raise ValueError(
                f"optimizer iterations must be a whole number from 0 to {MAX_ITERATIONS:,}, got "
                f"{reprlib.repr(iterations)}"
            )
        slots = {}
        for key, a in arrays.items():
            slot, _, param = key.partition("/")
            if slot not in self.slot_names or not param:
                raise ValueError(
                    f"unexpected optimizer array {key!r} for {self.name!r}: "
                    f"expected '<slot>/<param name>' with slot in {list(self.slot_names)}"
                )
            slots[key] = a if backend is None else backend.asarray(a)
        self.slots = slots
        self.iterations = int(iterations)


class SGD(Optimizer):
    """Stochastic gradient descent, optionally with (Nesterov) momentum. Keras 3 semantics.

    momentum = 0:   w ← w − lr·g
    momentum > 0:   m ← momentum·m − lr·g                    (slot "momentum", m₀ = 0)
                    w ← w + m                                 (classical)
                    w ← w + momentum·m − lr·g                 (nesterov=True)
    """

    name = "sgd"
    slot_names = ("momentum",)

    def __init__(
        self,
        lr: float = 0.01,
        momentum: float = 0.0,
        nesterov: bool = False,
        global_clipnorm: float | None = None,
        kernels: str | None = None,
    ):
        super().__init__(lr, global_clipnorm, kernels)
        self.momentum = _number("momentum", momentum, lambda x: 0 <= x < 1, "in [0, 1)")
        self.nesterov = bool(nesterov)

    def hyperparameters(self) -> dict:
        return {
            "lr": self.lr,
            "momentum": self.momentum,
            "nesterov": self.nesterov,
            "global_clipnorm": self.global_clipnorm,
        }

    def _update(self, name, w, g):
        if self.momentum == 0:
            w -= self.lr * g
            return
        m = self._slot("momentum", name, w)
        m *= self.momentum
        m -= self.lr * g
        if self.nesterov:
            w += self.momentum * m - self.lr * g
        else:
            w += m


class RMSprop(Optimizer):
    """RMSprop: divide the gradient by a running root-mean-square of its history. Keras 3 semantics.

    v ← ρ·v + (1−ρ)·g²                                        (slot "velocity")
    centered:  a ← ρ·a + (1−ρ)·g;  d = v − a² + ε              (slot "average_gradient")
    otherwise: d = v + ε
    Δ = lr·g / √d
    momentum > 0:  μ ← momentum·μ + Δ;  w ← w − μ             (slot "momentum")
    otherwise:     w ← w − Δ

    All slots start at zero. Note ε sits inside the square root (Keras), not
    outside it as in PyTorch.
    """

    name = "rmsprop"
    slot_names = ("velocity", "average_gradient", "momentum")

    def __init__(
        self,
        lr: float = 0.001,
        rho: float = 0.9,
        momentum: float = 0.0,
        epsilon: float = 1e-7,
        centered: bool = False,
        global_clipnorm: float | None = None,
        kernels: str | None = None,
    ):
        super().__init__(lr, global_clipnorm, kernels)
        self.rho = _number("rho", rho, lambda x: 0 < x < 1, "in (0, 1)")
        self.momentum = _number("momentum", momentum, lambda x: 0 <= x < 1, "in [0, 1)")
        self.epsilon = _number("epsilon", epsilon, lambda x: x > 0, "> 0")
        self.centered = bool(centered)

    def hyperparameters(self) -> dict:
        return {
            "lr": self.lr,
            "rho": self.rho,
            "momentum": self.momentum,
            "epsilon": self.epsilon,
            "centered": self.centered,
            "global_clipnorm": self.global_clipnorm,
        }

    def _update(self, name, w, g):
        xp = array_module(w)
        v = self._slot("velocity", name, w)
        kernels = None if self.centered or self.momentum > 0 else self._fused(w, g, v)
        if kernels is not None:
            kernels.rmsprop(w, g, v, self.lr, self.rho, self.epsilon)
            return
        v *= self.rho
        v += (1 - self.rho) * xp.square(g)
        if self.centered:
            a = self._slot("average_gradient", name, w)
            a *= self.rho
            a += (1 - self.rho) * g
            d = v - xp.square(a) + self.epsilon
        else:
            d = v + self.epsilon
        increment = self.lr * g / xp.sqrt(d)
        if self.momentum > 0:
            mu = self._slot("momentum", name, w)
            mu *= self.momentum
            mu += increment
            w -= mu
        else:
            w -= increment


class Adam(Optimizer):
    """Adam: momentum plus per-weight step sizes from a moving average of g². Keras 3 semantics.

    t = iterations + 1
    α = lr · √(1 − β₂ᵗ) / (1 − β₁ᵗ)                           (bias correction folded into α)
    m ← m + (g − m)·(1 − β₁)                                  (slot "m")
    v ← v + (g² − v)·(1 − β₂)                                 (slot "v")
    amsgrad: v̂ ← max(v̂, v), and v̂ replaces v below           (slot "vhat")
    w ← w − α·m / (√v + ε)

    All slots start at zero. Because the bias correction is applied to α rather
    than to m and v, ε acts on the uncorrected √v — the form of the Adam paper's
    Section 2 and of Keras, which differs slightly from PyTorch's.
    """

    name = "adam"
    slot_names = ("m", "v", "vhat")

    def __init__(
        self,
        lr: float = 0.001,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-7,
        amsgrad: bool = False,
        global_clipnorm: float | None = None,
        kernels: str | None = None,
    ):
        super().__init__(lr, global_clipnorm, kernels)
        self.beta_1 = _number("beta_1", beta_1, lambda x: 0 <= x < 1, "in [0, 1)")
        self.beta_2 = _number("beta_2", beta_2, lambda x: 0 <= x < 1, "in [0, 1)")
        self.epsilon = _number("epsilon", epsilon, lambda x: x > 0, "> 0")
        self.amsgrad = bool(amsgrad)

    def hyperparameters(self) -> dict:
        return {
            "lr": self.lr,
            "beta_1": self.beta_1,
            "beta_2": self.beta_2,
            "epsilon": self.epsilon,
            "amsgrad": self.amsgrad,
            "global_clipnorm": self.global_clipnorm,
        }

    def _update(self, name, w, g):
        xp = array_module(w)
        t = self.iterations + 1
        alpha = self.lr * math.sqrt(1 - self.beta_2**t) / (1 - self.beta_1**t)
        m = self._slot("m", name, w)
        v = self._slot("v", name, w)
        kernels = None if self.amsgrad else self._fused(w, g, m, v)
        if kernels is not None:
            kernels.adam(w, g, m, v, alpha, self.beta_1, self.beta_2, self.epsilon)
            return
        m += (g - m) * (1 - self.beta_1)
        v += (xp.square(g) - v) * (1 - self.beta_2)
        if self.amsgrad:
            vhat = self._slot("vhat", name, w)
            xp.maximum(vhat, v, out=vhat)
            v = vhat
        w -= m * alpha / (xp.sqrt(v) + self.epsilon)


NOT_DECAYED = ("bias", "gamma", "beta")  # the last part of the names AdamW leaves undecayed by default


class AdamW(Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter), PyTorch's ``torch.optim.AdamW`` formula.

    t = iterations + 1
    w ← w − lr·λ·w                       (decay first, and only for the parameters that decay)
    m ← β₁·m + (1 − β₁)·g                                     (slot "m")
    v ← β₂·v + (1 − β₂)·g²                                    (slot "v")
    m̂ = m / (1 − β₁ᵗ)    v̂ = v / (1 − β₂ᵗ)
    w ← w − lr·m̂ / (√v̂ + ε)

    Unlike :class:`Adam` (Keras), ε is added to the bias-corrected √v̂, as in PyTorch, and its
    default is PyTorch's 1e-8. The decay λ (``weight_decay``) is not part of the gradient, so
    Adam's per-weight scaling does not weaken it. Which parameters decay: by default the weights —
    kernels, embeddings —, not the biases and LayerNorm's gamma and beta (named ``.../bias``,
    ``.../gamma``, ``.../beta``): nanoGPT's ``configure_optimizers`` groups, which it picks by
    dimension (≥ 2-D) because its biases are all 1-D; here some are not (the attention's (N, K),
    the GRU's (2, 3H)), so the rule goes by name. Or exactly the names listed in ``decay`` (an
    empty list: none).
    With ``global_clipnorm`` it clips as ``torch.nn.utils.clip_grad_norm_`` does (:func:`clip_grad_norm`),
    not as Keras does: the recipe is PyTorch's throughout.
    """

    name = "adamw"
    slot_names = ("m", "v")

    def __init__(
        self,
        lr: float = 0.001,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-8,
        weight_decay: float = 0.01,
        decay: list[str] | None = None,
        global_clipnorm: float | None = None,
        kernels: str | None = None,
    ):
        super().__init__(lr, global_clipnorm, kernels)
        self.beta_1 = _number("beta_1", beta_1, lambda x: 0 <= x < 1, "in [0, 1)")
        self.beta_2 = _number("beta_2", beta_2, lambda x: 0 <= x < 1, "in [0, 1)")
        self.epsilon = _number("epsilon", epsilon, lambda x: x > 0, "> 0")
        self.weight_decay = _number("weight_decay", weight_decay, lambda x: 0 <= x < math.inf, ">= 0")
        if decay is not None:
            if isinstance(decay, str) or not all(isinstance(n, str) for n in decay):
                raise ValueError(f"decay must be a list of parameter names (or None: the weights), got {decay!r}")
            decay = sorted(set(decay))
        self.decay = decay

    def hyperparameters(self) -> dict:
        return {
            "lr": self.lr,
            "beta_1": self.beta_1,
            "beta_2": self.beta_2,
            "epsilon": self.epsilon,
            "weight_decay": self.weight_decay,
            "decay": self.decay,
            "global_clipnorm": self.global_clipnorm,
        }

    def _clip(self, grads: dict[str, Array], clipnorm: float) -> tuple[dict[str, Array], float]:
        """PyTorch's clipping (:func:`clip_grad_norm`), as a PyTorch training loop does before AdamW's step."""
        return clip_grad_norm(grads, clipnorm)

    def decays(self, name: str) -> bool:
        """Whether parameter ``name`` is decayed: listed in ``decay``, or, when that is None, a weight (not a bias,
        nor LayerNorm's gamma or beta)."""
        if self.decay is not None:
            return name in self.decay
        return name.rsplit("/", 1)[-1] not in NOT_DECAYED

    def step(self, params: dict[str, Array], grads: dict[str, Array]) -> None:
        if self.decay is not None:
            unknown = [name for name in self.decay if name not in params]
            if unknown:
                raise ValueError(
                    f"AdamW's decay lists {unknown}, which are not parameters; the parameters: {list(params)}"
                )
        super().step(params, grads)

    def _update(self, name, w, g):
        xp = array_module(w)
        t = self.iterations + 1
        if self.weight_decay and self.decays(name):
            w *= 1 - self.lr * self.weight_decay
        m = self._slot("m", name, w)
        v = self._slot("v", name, w)
        m *= self.beta_1
        m += (1 - self.beta_1) * g
        v *= self.beta_2
        v += (1 - self.beta_2) * xp.square(g)
        step_size = self.lr / (1 - self.beta_1**t)
        denom = xp.sqrt(v) / math.sqrt(1 - self.beta_2**t) + self.epsilon
        w -= step_size * m / denom


_OPTIMIZERS = {"sgd": SGD, "rmsprop": RMSprop, "adam": Adam, "adamw": AdamW}


def get(name: str, **kwargs) -> Optimizer:
    """An optimizer by name: "adam", "adamw", "rmsprop" or "sgd" (any case), built with ``kwargs``."""
    cls = _OPTIMIZERS.get(name.lower() if isinstance(name, str) else None)
    if cls is None:
        raise ValueError(f"unknown optimizer {name!r}: choose one of {sorted(_OPTIMIZERS)}")
    return cls(**kwargs)


def from_state(config: dict, arrays: dict[str, Array], backend: Backend | None = None) -> Optimizer:
    """Rebuild an optimizer from :meth:`Optimizer.state_dict` output: hyperparameters, step count and slots."""
    cls = _OPTIMIZERS.get(config.get("name"))
    if cls is None:
        raise ValueError(
            f"unknown optimizer {config.get('name')!r} in optimizer state: expected one of {sorted(_OPTIMIZERS)}"
        )
    hyper = {k: v for k, v in config.items() if k not in ("name", "iterations")}
    try:
        opt = cls(**hyper)
    except TypeError as exc:  # a key the constructor does not take
        raise ValueError(f"bad {config['name']!r} optimizer config: {exc}") from None
    opt.load_state_dict(config, arrays, backend)
    return opt
