"""What every language model shares: token checks, masks, parameters, the loss, generation, state.

A model is a stack of layers from :mod:`scratchlm.layers` between token ids and
logits. Users pass batch-major int arrays like Keras, ``x`` and ``y`` of shape
(B, T), and every hook below takes them so; a model that runs time-major inside
(the recurrent one) transposes once, itself. A concrete model (``recurrent.py``,
``transformer.py``) provides:

    CONFIG_RULES, CONFIG_DEFAULTS       its config: field -> (check, what it must be); fields old files may lack
    config, describe(config), parameter_shapes(config)      what a config means, without building the model
    _named_layers()                     [(name, layer)]: its parameters are name/param
    _forward(x, state, mask)            x (B, T) -> (logits (B, T, V), new state)
    _score(x, y, state, mask, last_only, dropout_masks, backward)   forward and loss -> (loss, cache)
    _backward(cache)                    -> {parameter name: gradient}
    token_loop                          its TokenLoop class (models/generation.py): prompt and one-token steps
    state_shapes(B), get_state(), set_state(state), reset_state()   carried state (stateful models)

and this class turns them into the public interface: ``forward``, ``loss``,
``loss_and_grads``, ``params``/``set_params``, ``generate`` and ``save``.
A model builds every layer, its loss and its token loop through
``backend.layer`` and never looks at the kernels choice itself.
:func:`scratchlm.models.load` builds the right class from a checkpoint.
"""

import contextlib
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import numpy

from .. import checkpoint, sampling
from ..backend import Array, Backend, get_backend
from ..budget import check_fits
from ..checks import is_whole
from ..errors import ModelError
from ..layers.base import Shape
from ..losses import SoftmaxCrossEntropy
from .generation import TokenLoop

Rules = dict[str, tuple[Callable[[Any], bool], str]]  # config field -> (check, what it must be)


class Scored(NamedTuple):
    """What a model's backward needs after its loss: the forward's cache and ∂L/∂logits."""

    cache: Any  # the model's forward cache
    dlogits: Array  # ∂L/∂logits, shaped like the logits


def generation_bytes(batch: int, length: int) -> int:
    """What ``generate`` allocates in proportion to its output: int64 ids and float64 uniforms."""
    return 16 * batch * length


class TokenModel(ABC):
    """Base of the language models over a vocabulary of ``vocab_size`` token ids (see the module docstring)."""

    kind: str  # the name checkpoints record (header["model"]["kind"])
    CONFIG_RULES: Rules  # every field of ``config``, checked alike when built and when loaded
    CONFIG_DEFAULTS: dict = {}  # fields a config written before they existed may lack
    token_loop: type[TokenLoop]  # the reference token loop of generate (built through backend.layer)
    dropout_rng = None  # the host generator of a model's dropout masks (saved in checkpoints)

    def __init__(self, arguments: dict, backend: Any, dtype: str):
        """Check the constructor's ``arguments`` (the config fields they give) by :data:`CONFIG_RULES`, then
        set up the backend and the loss."""
        self._check_arguments(arguments)
        self.vocab_size = int(arguments["vocab_size"])
        self.backend = get_backend(backend, dtype)
        self.loss_function = self.backend.layer(SoftmaxCrossEntropy)(self.backend)

    @classmethod
    def _check_arguments(cls, arguments: dict) -> None:
        """ModelError naming the first argument that breaks its rule in :data:`CONFIG_RULES`."""
        for name, value in arguments.items():
            ok, rule = cls.CONFIG_RULES[name]
            if not ok(value):
                raise ModelError(f"{name} must be {rule}, got {value!r}")

    @classmethod
    def check_config(cls, config: Any, what: str) -> None:
        """CheckpointError unless ``config`` holds exactly the fields of :data:`CONFIG_RULES` (those of
        :data:`CONFIG_DEFAULTS` may be missing), each valid."""
        checkpoint.check_fields({**cls.CONFIG_DEFAULTS, **config}, cls.CONFIG_RULES, what, exact=True)

    @classmethod
    @abstractmethod
    def parameter_shapes(cls, config: dict) -> Iterator[tuple[str, Shape]]:
        """(name, shape) of every parameter of ``cls(**config)``, in ``params`` order, from the layers' own
        ``param_shapes`` (a generator: a caller may stop early)."""

    @classmethod
    def parameter_count(cls, config: dict) -> int:
        """The number of weights of ``cls(**config)``, from :meth:`parameter_shapes`, without building it."""
        return sum(math.prod(shape) for _, shape in cls.parameter_shapes(config))

    @property
    @abstractmethod
    def config(self) -> dict:
        """What it takes to rebuild this model (JSON-serialisable; ``kind`` names the class)."""

    @staticmethod
    @abstractmethod
    def describe(config: dict, backend: str = "numpy") -> str:
        """The text of ``repr(cls(**config))`` on the backend named ``backend``, without building it."""

    @abstractmethod
    def _named_layers(self) -> list:
        """[(name, layer)], bottom first: the model's parameters are name/param for each layer's params."""

    def _check_fits(self, parameters: int, fix: str) -> None:
        """ResourceError unless four copies of ``parameters`` weights (weights, gradients, two optimizer
        slots) fit in memory; called before anything is allocated."""
        check_fits(
            4 * parameters * self.backend.dtype.itemsize, "the model's weights, gradients and optimizer state", fix
        )

    def __repr__(self) -> str:
        return self.describe(self.config, self.backend.name)

    # -- parameters --------------------------------------------------------------
    @property
    def params(self) -> dict[str, Array]:
        """Name -> parameter array (the live arrays: optimizers update them in place)."""
        return {f"{prefix}/{k}": v for prefix, layer in self._named_layers() for k, v in layer.params.items()}

    def set_params(self, values: Mapping[str, Any]) -> None:
        """Copy arrays (host or device) into the parameters, by name; shapes must match.

        values: a mapping name -> array of finite numbers holding every name of :attr:`params`
        (other names are ignored). Raises :class:`ModelError` otherwise, naming the array, before
        any parameter is changed.
        """
        if not isinstance(values, Mapping):
            raise ModelError(f"set_params takes a dict name -> array, got {type(values).__name__}")
        params = self.params
        missing = sorted(set(params) - set(values))
        if missing:
            raise ModelError(f"missing parameters: {', '.join(missing)}")
        checked = {name: self._weights(values[name], name, p) for name, p in params.items()}
        for name, p in params.items():
            p[...] = checked[name]

    def _weights(self, values, name, param):
        """``values`` as an array of ``param``'s shape and dtype; ModelError unless it holds finite real numbers."""
        v = self._array(values, f"parameter {name}")
        if v.shape != param.shape or v.dtype.kind not in "iuf":
            raise ModelError(f"parameter {name} must be a real array of shape {param.shape}, got {v.dtype} {v.shape}")
        with numpy.errstate(over="ignore"):  # a float64 beyond float32's range: reported next
            v = v.astype(param.dtype, copy=False)
        bad = int(v.size - self.backend.xp.count_nonzero(self.backend.xp.isfinite(v)))
        if bad:
            raise ModelError(
                f"parameter {name} holds {bad:,} value(s) that are not finite {param.dtype} numbers "
                "(NaN, infinite, or too large): the weights of a model that diverged cannot be used; "
                "take an earlier copy of them"
            )
        return v

    # -- input checks ------------------------------------------------------------
    def _array(self, a, name):
        """``a`` as an array of this backend; ModelError for what is no array (ragged lists, ...)."""
        try:
            return self.backend.xp.asarray(a)
        except (TypeError, ValueError):
            raise ModelError(f"{name} must be a rectangular array of numbers, got {type(a).__name__}") from None

    def _tokens(self, x, name="x", shape=None):
        """x as a device array of token ids: non-empty, integer, in [0, V), of ``shape`` (default: (batch, time))."""
        x = self._array(x, name)
        if x.size == 0:
            raise ModelError(f"{name} is empty (shape {x.shape}): give at least one sequence of at least one token id")
        if (x.ndim != 2 if shape is None else x.shape != shape) or x.dtype.kind not in "iu":
            raise ModelError(
                f"{name} must be an integer array of shape {shape or '(batch, time)'}, got {x.dtype} {x.shape}"
            )
        if int(x.min()) < 0 or int(x.max()) >= self.vocab_size:
            raise ModelError(f"{name} holds token ids outside [0, {self.vocab_size})")
        return x

    def _bool_mask(self, mask, shape):
        """mask (B, T) as :meth:`forward` documents it -> (B, T) bool, or None."""
        if mask is None:
            return None
        mask = self._array(mask, "mask")
        if mask.shape != shape:
            raise ModelError(f"mask must have the shape of x {shape}, got {mask.shape}")
        if mask.dtype.kind != "b" and (mask.dtype.kind not in "iuf" or not bool(((mask == 0) | (mask == 1)).all())):
            raise ModelError(
                f"mask must be boolean (True = real token) or hold only 0 and 1, got {mask.dtype} "
                "with other values: build it with dtype=bool"
            )
        return mask.astype(bool)  # (B, T)

    def _mask(self, x, mask):
        """The (B, T) bool mask of the positions that count for token ids x (B, T), or None for all of them."""
        return self._bool_mask(mask, x.shape)

    def _check_state(self, state, B):
        """Raise ModelError unless state is None or, per layer, the arrays of :meth:`state_shapes`."""
        if state is None:
            return
        want = self.state_shapes(B)
        try:
            ok = len(state) == len(want) and all(
                tuple(a.shape for a in part) == shapes for part, shapes in zip(state, want, strict=True)
            )
        except (TypeError, AttributeError):
            ok = False
        if not ok:
            raise ModelError(
                f"state must be None (zeros) or, per layer, arrays of shapes {want} for this batch "
                f"of {B}: pass the state that forward returned for a batch of this size"
            )

    # -- forward, loss and gradients ------------------------------------------------
    def forward(self, x: Any, state: Any = None, mask: Any = None) -> tuple[Array, list]:
        """x (B, T) int -> (logits (B, T, V), state).

        x: a non-empty (B, T) integer array (or nested list) of ids in [0, V).
        state: the model's state per layer (see :meth:`state_shapes`), or None
        for zeros (or, in stateful mode, the state the previous call ended with).
        mask: (B, T) bool, True = real token, or (B, T) integers or floats that
        are all 0 or 1 (1 = real token); masked steps keep the state (Keras
        semantics). The returned state is the final state per layer.
        Raises :class:`ModelError` for anything else.
        """
        x = self._tokens(x)
        self._check_state(state, x.shape[0])
        return self._forward(x, state, self._mask(x, mask))

    @abstractmethod
    def _forward(self, x: Array, state: Any, mask: Array | None) -> tuple[Array, list]:
        """x (B, T) checked ids, mask (B, T) bool or None -> (logits (B, T, V), new state)."""

    @abstractmethod
    def _score(
        self,
        x: Array,
        y: Array,
        state: Any,
        mask: Array | None,
        last_only: bool,
        dropout_masks: Any,
        backward: bool = True,
    ) -> tuple[float, Any]:
        """Forward and loss: x (B, T), y (B, T) or (B,) with ``last_only``, mask (B, T) or None -> (loss, cache
        of :meth:`_backward`); ``backward=False`` says the cache will not be used."""

    @abstractmethod
    def _backward(self, cache: Any) -> dict[str, Array]:
        """The gradient of every parameter, in ``params`` order, from :meth:`_score`'s cache."""

    def _scored_forward(self, x, y, mask, state, last_only, dropout_masks, training=False, backward=True):
        x = self._tokens(x)
        B, T = x.shape
        if training and dropout_masks is None:
            dropout_masks = self.dropout_masks(B, T, last_only)
        self._check_state(state, B)
        mask = self._mask(x, mask)
        if mask is not None and not last_only and not bool(mask.any()):
            raise ModelError("the mask scores no token: at least one step must be real (True)")
        y = self._tokens(y, "y", (B,) if last_only else (B, T))
        return self._score(x, y, state, mask, last_only, dropout_masks, backward)

    def loss(
        self, x: Any, y: Any, mask: Any = None, state: Any = None, last_only: bool = False, dropout_masks: Any = None
    ) -> float:
        """The loss of :meth:`loss_and_grads` alone (no backward pass, no dropout unless masks are given)."""
        return self._scored_forward(x, y, mask, state, last_only, dropout_masks, backward=False)[0]

    def loss_and_grads(
        self,
        x: Any,
        y: Any,
        mask: Any = None,
        state: Any = None,
        last_only: bool = False,
        training: bool = False,
        dropout_masks: Any = None,
    ) -> tuple[float, dict[str, Array]]:
        """Mean cross-entropy (nats per scored token) and the gradient of every parameter.

        x (B, T) int inputs, state and mask as in :meth:`forward`. y: (B, T)
        next-token targets, or with ``last_only`` (B,) targets for the final
        step only (the seed Nietzsche model: read a window, predict the
        character after it). mask (B, T): padding steps are skipped and, unless
        ``last_only``, not scored (so it must keep at least one step).
        training: a training step: a model with dropout draws fresh masks
        (:meth:`dropout_masks`); dropout_masks: use these instead (a gradient
        check holds them fixed and passes the same to :meth:`loss`).
        Returns (loss: float, grads: dict name -> array shaped like params[name]).
        """
        loss, cache = self._scored_forward(x, y, mask, state, last_only, dropout_masks, training)
        return loss, self._backward(cache)

    def dropout_masks(self, B: int, T: int, last_only: bool = False) -> list | None:
        """Fresh dropout keep-masks for a training batch of (B, T), or None for a model without dropout."""
        return None

    def dropout_rows(self, masks: Any, lo: int, hi: int) -> Any:
        """The keep-masks of rows [lo, hi) of a batch, from the masks :meth:`dropout_masks` drew for all of it (an
        MPI rank's share of the global batch's masks); a model with dropout says where its batch axis is."""
        return masks

    # -- generation ---------------------------------------------------------------
    def generate(
        self,
        prompt_ids: Any,
        length: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_id: int | None = None,
        banned_ids: Any = (),
        seed: int | None = None,
        weights: str = "float32",
    ) -> numpy.ndarray:
        """Sample ``length`` tokens after each prompt; returns host int64 ids.

        prompt_ids: (T_p,) or (B, T_p) integer ids in [0, V), equal-length
        prompts, B >= 1 and T_p >= 1. length: a whole number >= 0.
        The prompt is run once; each new token then costs one step of the
        model fed with the state of the previous one (the prefix is never re-run).
        temperature 0 = greedy; top_k / top_p restrict the candidates (see
        :func:`scratchlm.sampling.check_options`); banned_ids (integer ids in
        [0, V), not all of them) are never produced. With ``eos_id`` (an id in
        [0, V)), a sequence stops at its first EOS; finished rows are padded
        with ``eos_id`` and generation ends when every row has finished.
        seed: None or a whole number >= 0.
        weights: "float32" (the model as it is) or "bfloat16": a float32 recurrent model's recurrent kernels
        rounded to bfloat16 for this call (:mod:`scratchlm.bfloat16`; half the bytes to read per token, for
        a measured cost in held-out loss, docs/benchmarks.md; the model is left as it was).
        Returns (length',) or (B, length') with length' <= length (length 0:
        an empty (0,) or (B, 0) array). The model's own stateful state is left
        untouched. The token loop is the model's :attr:`token_loop`, built through
        ``backend.layer``: on the fused path it runs on the kernels (without
        top_k/top_p), with the same draws and, up to float round-off in the
        logits, the same ids.
        Raises :class:`~scratchlm.errors.ModelError` or :class:`~scratchlm.errors.SamplingError` (both ValueErrors)
        for unusable arguments, and :class:`scratchlm.budget.ResourceError`
        before allocating when the output would not fit in memory.
        """
        sampling.check_options(temperature, top_k, top_p)
        if not is_whole(length) or length < 0:
            raise ModelError(f"length must be a whole number of tokens >= 0, got {length!r}")
        prompt = self._array(prompt_ids, "prompt_ids")
        if prompt.size == 0:
            raise ModelError(f"the prompt is empty (shape {prompt.shape}): give at least one token id")
        single = prompt.ndim == 1
        prompt = self._tokens(prompt[None, :] if single else prompt, name="prompt_ids")
        B = prompt.shape[0]
        if eos_id is not None and (not is_whole(eos_id) or not 0 <= eos_id < self.vocab_size):
            raise ModelError(f"eos_id must be None or a token id in [0, {self.vocab_size}), got {eos_id!r}")
        banned = sampling.check_banned(banned_ids, self.vocab_size)
        rng = Backend.rng(seed)
        what = f"generating {length:,} tokens" + (f" for each of {B:,} prompts" if B > 1 else "")
        check_fits(generation_bytes(B, length), what, "ask for fewer tokens at a time")
        if length == 0:  # nothing to sample: skip the prompt
            out = self.backend.to_host(self.backend.xp.zeros((B, 0), dtype=self.backend.xp.int64))
        else:
            with self.decoding_weights(weights):
                loop = self.backend.layer(self.token_loop)(
                    self, temperature, top_k, top_p, banned, eos_id, rng, weights
                )
                logits, state = loop.start(prompt)  # (B, V)
                out = loop.run(logits, state, length)
        return out[0] if single else out

    def decoding_weights(self, weights: str) -> Any:
        """A context in which the model holds the weights :meth:`generate` decodes with: "float32", the model as
        it is (a model that offers more overrides this). Raises ModelError for any other ``weights``."""
        if weights != "float32":
            raise ModelError(f"weights={weights!r}: {type(self).__name__} decodes with its float32 weights only")
        return contextlib.nullcontext()

    # -- carried state ---------------------------------------------------------------
    def state_shapes(self, B: int) -> list:
        """Per layer, the shapes of its state for a batch of B (a model without state: [])."""
        return []

    def state_names(self) -> list:
        """Per layer, the names of its state's parts (for messages), as :meth:`state_shapes` orders them."""
        return []

    def get_state(self) -> list:
        """The state a stateful model carries into its next call: per layer, a tuple of arrays or None."""
        return []

    def set_state(self, state: list) -> None:
        """Set the carried state (as :meth:`get_state` returns it)."""
        if state:
            raise ModelError(f"{type(self).__name__} carries no state")

    def reset_state(self) -> None:  # noqa: B027  (a model without state has nothing to reset)
        """Stateful mode: start the next batch from zero state."""

    # -- checkpoints ---------------------------------------------------------------
    def save(self, path: Any, optimizer: Any = None, rng: Any = None, metadata: Any = None) -> None:
        """Write one checkpoint file atomically (see :mod:`scratchlm.checkpoint`)."""
        to_host = self.backend.to_host
        checkpoint.save(
            path,
            {name: to_host(p) for name, p in self.params.items()},
            self.config,
            optimizer=optimizer,
            rng=rng,
            metadata=metadata,
            backend=self.backend,
        )

    @classmethod
    def load(cls, path: Any, backend: Any = "numpy") -> "TokenModel":
        """Rebuild a model from :meth:`save`'s file on any backend. Raises CheckpointError."""
        from . import load

        return load(path, backend=backend).model
