"""What every language model shares: token checks, masks, parameters, the loss, the sampling loop, state.

A model is a stack of layers from :mod:`scratchlm.layers` between token ids and
logits. Users pass batch-major int arrays like Keras, ``x`` and ``y`` of shape
(B, T); inside, a model runs time-major (T, B, ...). A concrete model (see
``recurrent.py``) provides:

    _named_layers()                     [(name, layer)]: its parameters are name/param
    _forward(ids, state, mask, last, dropout_masks)   ids (T, B) -> (logits, new state, cache)
    _backward(cache, dlogits)           -> {parameter name: gradient}
    _score(ids, y, state, mask, ...)    optional: forward and loss in one (default: _forward, then the loss)
    _start(prompt) / _step(ids, state)  the prompt's and one new token's logits (B, V) and state
    state_shapes(B), get_state(), set_state(state), reset_state()   carried state (stateful models)
    config, describe(config), parameter_shapes(config), check_config(config)

and this class turns them into the public interface: ``forward``, ``loss``,
``loss_and_grads`` (softmax cross-entropy, fused or reference, chosen once),
``params``/``set_params``, ``generate`` (the token loop around ``_step``) and
``save``. :func:`scratchlm.models.load` builds the right class from a checkpoint.
"""

import functools
import math
import numbers
from collections.abc import Mapping

import numpy

from .. import checkpoint, sampling
from ..backend import Backend, get_backend
from ..budget import check_fits
from ..errors import ModelError
from ..losses import softmax_cross_entropy


def is_whole(x):
    """A Python or NumPy integer, not a bool (True is an int, but never a sensible size or id)."""
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def generation_bytes(batch, length):
    """What ``generate`` allocates in proportion to its output: int64 ids and float64 uniforms."""
    return 16 * batch * length


class TokenModel:
    """Base of the language models over a vocabulary of ``vocab_size`` token ids (see the module docstring)."""

    kind = None                      # the name checkpoints record (header["model"]["kind"])
    dropout_rng = None               # the host generator of a model's dropout masks (saved in checkpoints)

    def __init__(self, vocab_size, backend, dtype):
        if not is_whole(vocab_size) or vocab_size < 1:
            raise ModelError(f"vocab_size must be a whole number >= 1, got {vocab_size!r}")
        self.vocab_size = int(vocab_size)
        self.backend = get_backend(backend, dtype)

    @functools.cached_property
    def _xent(self):
        """The softmax cross-entropy this model uses: the fused kernel or the reference (chosen here only)."""
        return self.backend.fused.softmax_cross_entropy if self.backend.kernels == "fused" else softmax_cross_entropy

    @classmethod
    def parameter_count(cls, config):
        """The number of weights of ``cls(**config)``, from :meth:`parameter_shapes`, without building it."""
        return sum(math.prod(shape) for _, shape in cls.parameter_shapes(config))

    def _check_fits(self, parameters, fix):
        """ResourceError unless four copies of ``parameters`` weights (weights, gradients, two optimizer
        slots) fit in memory; called before anything is allocated."""
        check_fits(4 * parameters * self.backend.dtype.itemsize,
                   "the model's weights, gradients and optimizer state", fix)

    def __repr__(self):
        return self.describe(self.config, self.backend.name)

    # -- parameters --------------------------------------------------------------
    @property
    def params(self):
        """Name -> parameter array (the live arrays: optimizers update them in place)."""
        return {f"{prefix}/{k}": v for prefix, layer in self._named_layers() for k, v in layer.params.items()}

    def set_params(self, values):
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
        with numpy.errstate(over="ignore"):                    # a float64 beyond float32's range: reported next
            v = v.astype(param.dtype, copy=False)
        bad = int(v.size - self.backend.xp.count_nonzero(self.backend.xp.isfinite(v)))
        if bad:
            raise ModelError(f"parameter {name} holds {bad:,} value(s) that are not finite {param.dtype} numbers "
                             "(NaN, infinite, or too large): the weights of a model that diverged cannot be used; "
                             "take an earlier copy of them")
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
            raise ModelError(f"{name} must be an integer array of shape {shape or '(batch, time)'}, "
                             f"got {x.dtype} {x.shape}")
        if int(x.min()) < 0 or int(x.max()) >= self.vocab_size:
            raise ModelError(f"{name} holds token ids outside [0, {self.vocab_size})")
        return x

    def _time_major_mask(self, mask, shape):
        """mask (B, T) as :meth:`forward` documents it -> (T, B) bool, or None."""
        if mask is None:
            return None
        mask = self._array(mask, "mask")
        if mask.shape != shape:
            raise ModelError(f"mask must have the shape of x {shape}, got {mask.shape}")
        if mask.dtype.kind != "b" and (mask.dtype.kind not in "iuf" or not bool(((mask == 0) | (mask == 1)).all())):
            raise ModelError(f"mask must be boolean (True = real token) or hold only 0 and 1, got {mask.dtype} "
                             "with other values: build it with dtype=bool")
        return mask.astype(bool).T                                        # (T, B)

    def _mask(self, x, mask):
        """The (T, B) bool mask of the positions that count for token ids x (B, T), or None for all of them."""
        return self._time_major_mask(mask, x.shape)

    def _check_state(self, state, B):
        """Raise ModelError unless state is None or, per layer, the arrays of :meth:`state_shapes`."""
        if state is None:
            return
        want = self.state_shapes(B)
        try:
            ok = len(state) == len(want) and all(tuple(a.shape for a in part) == shapes
                                                 for part, shapes in zip(state, want))
        except (TypeError, AttributeError):
            ok = False
        if not ok:
            raise ModelError(f"state must be None (zeros) or, per layer, arrays of shapes {want} for this batch "
                             f"of {B}: pass the state that forward returned for a batch of this size")

    # -- forward, loss and gradients ------------------------------------------------
    def forward(self, x, state=None, mask=None):
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
        logits, new_state, _ = self._forward(x.T, state, self._mask(x, mask), False)
        return logits.transpose(1, 0, 2), new_state

    def _scored_forward(self, x, y, mask, state, last_only, dropout_masks, training=False, backward=True):
        x = self._tokens(x)
        B, T = x.shape
        if training and dropout_masks is None:
            dropout_masks = self.dropout_masks(B, T, last_only)
        self._check_state(state, B)
        mask_tm = self._mask(x, mask)
        if mask_tm is not None and not last_only and not bool(mask_tm.any()):
            raise ModelError("the mask scores no token: at least one step must be real (True)")
        y = self._tokens(y, "y", (B,) if last_only else (B, T))
        return self._score(x.T, y, state, mask_tm, last_only, dropout_masks, backward)

    def _score(self, ids, y, state, mask, last_only, dropout_masks, backward=True):
        """Forward and loss: ids (T, B), y (B, T) or (B,), mask (T, B) or None -> (loss, dlogits, cache).

        The hook for a model that scores without materialising all its logits
        (TransformerLM, fused: the output projection and the loss in chunks of
        rows). ``dlogits`` is whatever that model's ``_backward`` takes;
        ``backward=False`` says it will not be used.
        """
        logits, _, cache = self._forward(ids, state, mask, last_only, dropout_masks)
        if last_only:
            loss, dlogits = self._xent(logits, y)                                     # (B, V)
        else:
            loss, dlogits = self._xent(logits, y.T, mask)                             # (T, B, V)
        return loss, dlogits, cache

    def loss(self, x, y, mask=None, state=None, last_only=False, dropout_masks=None):
        """The loss of :meth:`loss_and_grads` alone (no backward pass, no dropout unless masks are given)."""
        return self._scored_forward(x, y, mask, state, last_only, dropout_masks, backward=False)[0]

    def loss_and_grads(self, x, y, mask=None, state=None, last_only=False, training=False, dropout_masks=None):
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
        loss, dlogits, cache = self._scored_forward(x, y, mask, state, last_only, dropout_masks, training)
        return loss, self._backward(cache, dlogits)

    def dropout_masks(self, B, T, last_only=False):
        """Fresh dropout keep-masks for a training batch of (B, T), or None for a model without dropout."""
        return None

    # -- generation ---------------------------------------------------------------
    def generate(self, prompt_ids, length, temperature=1.0, top_k=None, top_p=None, eos_id=None,
                 banned_ids=(), seed=None):
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
        Returns (length',) or (B, length') with length' <= length (length 0:
        an empty (0,) or (B, 0) array). The model's own stateful state is left
        untouched. A model with a fused decoding kernel runs the token loop there
        (without top_k/top_p): the same draws and, up to float round-off in the
        logits, the same ids.
        Raises :class:`ModelError` or :class:`SamplingError` (both ValueErrors)
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
        if length == 0:                                                   # nothing to sample: skip the prompt
            out = self.backend.to_host(self.backend.xp.zeros((B, 0), dtype=self.backend.xp.int64))
        else:
            logits, state = self._start(prompt.T)                         # (B, V)
            out = None
            if top_k is None and top_p is None:
                out = self._decode_fused(logits, state, length, temperature, banned, eos_id, rng)
            if out is None:
                out = self._decode(logits, state, length, temperature, top_k, top_p, banned, eos_id, rng)
        return out[0] if single else out

    def _decode(self, logits, state, length, temperature, top_k, top_p, banned, eos_id, rng):
        """The token loop of :meth:`generate`: one :func:`sampling.sample` and one :meth:`_step`
        per token, from the prompt's ``logits`` (B, V) and ``state``."""
        return self._token_loop(logits, state, length, eos_id,
                                lambda k, logits: sampling.sample(logits, rng, temperature, top_k, top_p, banned),
                                self._step)

    def _token_loop(self, logits, state, length, eos_id, draw, step):
        """ids (B, length) on the host (fewer columns when every row has reached ``eos_id``).

        draw(k, logits) -> the k-th token of every row, (B,), a fresh array; step(ids, state) -> the next
        (logits, state). A row that has drawn ``eos_id`` repeats it from then on.
        """
        xp = self.backend.xp
        B = logits.shape[0]
        out = self.backend.to_host(xp.zeros((B, length), dtype=xp.int64))
        done = self.backend.to_host(xp.zeros(B, dtype=bool))
        for k in range(length):
            ids = draw(k, logits)                                                   # (B,)
            drawn = self.backend.to_host(ids)
            if eos_id is not None:
                drawn[done] = eos_id
                done |= drawn == eos_id
            out[:, k] = drawn
            if eos_id is not None and done.all():
                return out[:, :k + 1]
            if k + 1 < length:
                logits, state = step(ids, state)
        return out

    def _decode_fused(self, logits, state, length, temperature, banned, eos_id, rng):
        """The token loop in a fused kernel -> host ids, or None where this model or backend has none."""
        return None

    def _fused_draws(self, V, length, B, temperature, banned, rng):
        """What the fused samplers take, drawn as :func:`sampling.sample` draws: (temperature in the model's
        dtype, 0 for greedy; uniforms (length, B), one per row and token, zeros for greedy; banned ids as a
        (V,) bool mask)."""
        xp = self.backend.xp
        if temperature == 0:                                              # greedy: no draws
            temperature, u = 0.0, xp.zeros((length, B))
        else:                                                             # as sampling: T kept finite and > 0
            temperature = sampling.representable_temperature(temperature, xp.finfo(self.backend.dtype))
            u = xp.asarray(rng.random((length, B)))
        banned_mask = xp.zeros(V, dtype=bool)
        banned_mask[banned] = True
        return self.backend.dtype.type(temperature), u, banned_mask

    # -- carried state ---------------------------------------------------------------
    def state_shapes(self, B):
        """Per layer, the shapes of its state for a batch of B (a model without state: [])."""
        return []

    def state_names(self):
        """Per layer, the names of its state's parts (for messages), as :meth:`state_shapes` orders them."""
        return []

    def get_state(self):
        """The state a stateful model carries into its next call: per layer, a tuple of arrays or None."""
        return []

    def set_state(self, state):
        """Set the carried state (as :meth:`get_state` returns it)."""
        if state:
            raise ModelError(f"{type(self).__name__} carries no state")

    def reset_state(self):
        """Stateful mode: start the next batch from zero state."""

    # -- checkpoints ---------------------------------------------------------------
    def save(self, path, optimizer=None, rng=None, metadata=None):
        """Write one checkpoint file atomically (see :mod:`scratchlm.checkpoint`)."""
        to_host = self.backend.to_host
        checkpoint.save(path, {name: to_host(p) for name, p in self.params.items()}, self.config,
                        optimizer=optimizer, rng=rng, metadata=metadata, backend=self.backend)

    @classmethod
    def load(cls, path, backend="numpy"):
        """Rebuild a model from :meth:`save`'s file on any backend. Raises CheckpointError."""
        from . import load
        return load(path, backend=backend).model
