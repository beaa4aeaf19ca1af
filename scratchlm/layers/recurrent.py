r"""What every recurrent cell shares: input projection, token table, initial and carried state, masks.

A recurrent layer is split the way fast implementations split it (cuDNN,
torch-rnn): the input projection x_t W + b of all T steps at once, as one GEMM
over the T·B rows (or, for token input, a row lookup in a (V, G·H) table), then
the time loop of the cell, which needs only one (B, H) x (H, G·H) product per
step, then the weight gradients as single big products after the loop. This
module holds everything but the cell's own gate math (see ``lstm.py``,
``gru.py``):

    project(x)                    zx = x W + b                          (T, B, G·H)
    token_table(E)                table = E W + b  (one-hot: W + b)     (V, G·H)
    project_tokens(ids, E)        zx[t, b] = table[ids[t, b]]
    forward(x, ...)               project, then the cell's time loop    -> (y, RecurrentCache)
    forward_tokens(ids, E, ...)   the same for token input              -> (y, RecurrentCache)
    backward(cache, dy, ...)      BPTT, then the projection's gradients -> (RecurrentGrads, grads)

A cell provides the loop pair ``_loop`` / ``_loop_backward`` (and ``_loop_tokens``,
the loop over table rows, which here is just ``_loop(table[ids])``); a fused
subclass (``scratchlm/kernels/layers.py``) replaces exactly those.

Sequences are **time-major**, (T, B, ...), so the slice of one step is
contiguous. Masks follow Keras 3 (``zero_output_for_mask=False``): a masked
step keeps the state unchanged and the output repeats the previous output,
zeros before the first real step.

The equations every cell shares, with W (D, G·H), b the input bias (G·H,), X the
input (T, B, D), E an embedding table (V, E), m_t the mask (1 = real step) and the
cell's loop in between. Forward:

.. math::

    Z_x &= X W + b \qquad (T, B, G \cdot H) \\
    \text{table} &= E W + b \quad \text{(one-hot input: } W + b\text{)} \qquad (V, G \cdot H) \\
    Z_x[t, b] &= \text{table}[\text{ids}[t, b]] \quad \text{(token input)} \\
    y_t &= s_t \odot h_t \qquad s_t = \max_{t' \le t} m_{t'}

Backward: dy is multiplied by s_t first, the cell's BPTT turns it into dZ_x
(T, B, G·H), then the projection's gradients are single products over all T·B rows:

.. math::

    dX = dZ_x W^\top \qquad dW = X^\top dZ_x \qquad db = \textstyle\sum dZ_x

or, for token input, a scatter-add by token id first:

.. math::

    d\text{table}[v] &= \sum_{(t, b) \,:\, \text{ids}[t, b] = v} dZ_x[t, b] \qquad
        db = \textstyle\sum_v d\text{table}[v] \\
    dW &= d\text{table} \quad \text{(one-hot)} \qquad
        dW = E^\top d\text{table}, \quad dE = d\text{table}\, W^\top \quad \text{(embeddings)}
"""

from abc import abstractmethod
from typing import Any, NamedTuple

from ..backend import Backend
from .base import Array, Layer, Shape


def sigmoid(xp: Any, x: Array, out: Array) -> Array:
    """σ(x) = 1 / (1 + e^{-x}) written as ½·tanh(x/2) + ½ into ``out``: one ufunc, no overflow."""
    xp.multiply(x, 0.5, out=out)
    xp.tanh(out, out=out)
    out *= 0.5
    out += 0.5
    return out


class RecurrentCache(NamedTuple):
    """What a recurrent layer's backward needs from its forward, and the state the forward ended in."""

    x: Array | None  # (T, B, D) float input, or None for token input
    ids: Array | None  # (T, B) token ids for token input, else None
    embeddings: Array | None  # (V, E) the table the tokens were looked up in, or None (one-hot or float input)
    steps: Any  # the cell's record of its time loop (LSTMSteps, GRUSteps)
    keep: Array | None  # (T, B, 1) bool, m_t: True = real step, or None without a mask
    seen: Array | None  # (T, B, 1) bool, s_t: some real step at or before t, or None without a mask
    return_sequences: bool  # y is (T, B, H) (True) or the last step's (B, H)
    final_state: tuple  # the state after step T, one (B, H) per state part (LSTM: h_T, c_T)


class RecurrentGrads(NamedTuple):
    """The ``dx`` of a recurrent layer's backward: the gradients of what forward was fed."""

    dx: Array | None  # (T, B, D) ∂L/∂x for float input; None for token input (ids have no gradient)
    dembeddings: Array | None  # (V, E) ∂L/∂E for token input looked up in an embedding table E, else None
    dstate: tuple  # ∂L/∂(initial state), one (B, H) per state part (LSTM: dh_0, dc_0)


class Recurrent(Layer):
    """Base of the recurrent cells: everything but the gate math.

    A cell sets ``gates`` (G, the number of gate blocks) and ``state_names``
    (LSTM: h and c), creates ``kernel`` W (D, G·H), ``recurrent_kernel`` U
    (H, G·H) and ``bias`` in :meth:`_init_params`, and implements the time loop
    (:meth:`_loop`, returning its record of the loop and the final state) and
    its backpropagation (:meth:`_loop_backward`, returning the gradient of the
    input projections, a dict with ``recurrent_kernel`` and any other recurrent
    gradients, and the initial state's gradient). A cell whose bias is not just
    the input bias (the GRU) overrides :attr:`input_bias`, :meth:`bias_shape`
    and :meth:`_bias_gradient`.

    The layer carries a state between calls when ``stateful``: each call
    without an explicit ``initial_state`` starts where the previous one ended
    (see :meth:`reset_state`).
    """

    gates: int  # G, gate blocks per unit
    state_names: tuple[str, ...] = ()  # the parts of the state, e.g. ("h", "c")

    def __init__(
        self,
        input_size: int,
        units: int,
        backend: Backend,
        rng: Any,
        return_sequences: bool = True,
        stateful: bool = False,
    ):
        self.backend = backend
        self.units = units
        self.return_sequences = return_sequences
        self.stateful = stateful
        self.state: tuple | None = None  # the carried state when stateful
        self._init_params(input_size, units, rng)

    @abstractmethod
    def _init_params(self, input_size: int, units: int, rng: Any) -> None:
        """Create ``kernel``, ``recurrent_kernel`` and ``bias`` (the cell's initialisers, drawn from ``rng``)."""

    @property
    def params(self) -> dict[str, Array]:
        return {"kernel": self.kernel, "recurrent_kernel": self.recurrent_kernel, "bias": self.bias}

    @classmethod
    def param_shapes(cls, input_size: int, units: int) -> dict[str, Shape]:
        """Name -> shape of the parameters of a layer of this cell, without building one."""
        G = cls.gates * units
        return {"kernel": (input_size, G), "recurrent_kernel": (units, G), "bias": cls.bias_shape(units)}

    @classmethod
    def bias_shape(cls, units: int) -> Shape:
        return (cls.gates * units,)

    @property
    def input_bias(self) -> Array:
        """The bias added to the input projection, (G·H,)."""
        return self.bias

    def reset_state(self) -> None:
        """Forget the state carried between batches in stateful mode."""
        self.state = None

    # -- input projection for all time steps at once ------------------------
    def project(self, x: Array) -> Array:
        """x (T, B, D) floats -> zx = x W + b (T, B, G·H): one GEMM over all T·B rows."""
        T, B, D = x.shape
        zx = x.reshape(T * B, D) @ self.kernel  # (T·B, G·H)
        zx += self.input_bias
        return zx.reshape(T, B, -1)

    def project_backward(self, x: Array, dzx: Array) -> tuple[Array, dict[str, Array]]:
        """dzx (T, B, G·H) -> (dx (T, B, D), {"kernel": xᵀ dzx, "bias": Σ dzx})."""
        T, B, D = x.shape
        dz2 = dzx.reshape(T * B, -1)  # (T·B, G·H)
        dx = (dz2 @ self.kernel.T).reshape(T, B, D)
        return dx, {"kernel": x.reshape(T * B, D).T @ dz2, "bias": dz2.sum(axis=0)}

    def token_table(self, embeddings: Array | None = None) -> Array:
        """The input projection of every token id, a (V, G·H) table.

        One-hot input (``embeddings`` None, D = V): x_t W is row ids[t] of W, so
            table = W + b.
        Embedding input (``embeddings`` E (V, E), D = E): x_t = E[ids[t]], so
            table = E W + b.
        """
        if embeddings is None:
            return self.kernel + self.input_bias  # (V, G·H)
        table = embeddings @ self.kernel  # (V, G·H)
        table += self.input_bias
        return table

    def project_tokens(self, ids: Array, embeddings: Array | None = None) -> Array:
        """Input projection of token ids by row lookup: zx[t, b] = table[ids[t, b]].

        No one-hot tensor and, for small V, no (T·B, E) x (E, G·H) product is
        ever formed (see :meth:`token_table`). ids (T, B) -> zx (T, B, G·H).
        """
        return self.token_table(embeddings)[ids]

    def project_tokens_backward(
        self, ids: Array, dzx: Array, embeddings: Array | None = None
    ) -> tuple[Array | None, dict[str, Array]]:
        """Gradients of :meth:`project_tokens`.

        dtable[v] = Σ_{(t,b): ids[t,b] = v} dzx[t, b]     (scatter-add, (V, G·H))
        one-hot:   dW = dtable                db = Σ_v dtable[v]
        embedding: dW = Eᵀ dtable, dE = dtable Wᵀ, db = Σ_v dtable[v]
        Returns (dE or None, {"kernel": dW, "bias": db}).
        """
        V = self.kernel.shape[0] if embeddings is None else embeddings.shape[0]
        dtable = self.backend.zeros((V, dzx.shape[-1]))  # (V, G·H)
        self.backend.scatter_add(dtable, ids.reshape(-1), dzx.reshape(-1, dzx.shape[-1]))
        grads = {"bias": dtable.sum(axis=0)}
        if embeddings is None:
            grads["kernel"] = dtable
            return None, grads
        grads["kernel"] = embeddings.T @ dtable  # (E, G·H)
        return dtable @ self.kernel.T, grads  # dE (V, E)

    # -- state and masks -------------------------------------------------------
    def state_shapes(self, B: int) -> tuple[Shape, ...]:
        """Shapes of this layer's state for a batch of B: one (B, H) per state part."""
        return ((B, self.units),) * len(self.state_names)

    def _initial_state(self, initial_state: tuple | None, B: int) -> tuple:
        """The state the loop starts from: given, carried (stateful), or zeros."""
        if initial_state is None and self.stateful and self.state is not None and self.state[0].shape[0] == B:
            initial_state = self.state
        if initial_state is None:
            zeros = self.backend.zeros((B, self.units))
            return (zeros,) * len(self.state_names)
        shapes = tuple(getattr(a, "shape", None) for a in initial_state)
        if shapes != self.state_shapes(B):
            raise ValueError(
                f"initial state must be {len(self.state_names)} arrays of shape {(B, self.units)}, got {shapes}"
                + (" (stateful layer: call reset_state() when the batch size changes)" if self.stateful else "")
            )
        return tuple(initial_state)

    def _outputs(self, hs: Array, keep: Array | None, return_sequences: bool) -> tuple[Array, Array | None]:
        """(y, seen) from h_0 … h_T (T+1, B, H): y_t = s_t ⊙ h_t, all steps or the last one."""
        y, seen = hs[1:], None  # (T, B, H)
        if keep is not None:
            seen = self.backend.xp.cumsum(keep, axis=0) > 0  # (T, B, 1): s_t
            y = y * seen
        return (y if return_sequences else y[-1]), seen

    # -- forward / backward -------------------------------------------------------
    def forward(
        self,
        x: Array,
        initial_state: tuple | None = None,
        mask: Array | None = None,
        return_sequences: bool | None = None,
    ) -> tuple[Array, RecurrentCache]:
        """x (T, B, D) floats -> (y, cache): the input projection, then the cell's time loop.

        initial_state: one (B, H) array per state part, or None for zeros (or,
            when stateful, the state the previous call ended with).
        mask: (T, B) bool, True = real step, or None.
        return_sequences: overrides the layer's setting for this call.
        y is (T, B, H) if return_sequences else (B, H); the state after the
        last step is ``cache.final_state``.
        """
        state0, keep = self._begin(initial_state, mask, x.shape[1])
        steps, final = self._loop(self.project(x), state0, keep)
        return self._end(steps, final, keep, initial_state, return_sequences, x=x)

    def forward_tokens(
        self,
        ids: Array,
        embeddings: Array | None = None,
        initial_state: tuple | None = None,
        mask: Array | None = None,
        return_sequences: bool | None = None,
    ) -> tuple[Array, RecurrentCache]:
        """``forward`` for token input, ids (T, B), x_t = one-hot(ids) or E[ids] (``embeddings`` E (V, E)).

        The input projection is a row lookup in :meth:`token_table`.
        """
        state0, keep = self._begin(initial_state, mask, ids.shape[1])
        steps, final = self._loop_tokens(self.token_table(embeddings), ids, state0, keep)
        return self._end(steps, final, keep, initial_state, return_sequences, ids=ids, embeddings=embeddings)

    def _begin(self, initial_state: tuple | None, mask: Array | None, B: int) -> tuple[tuple, Array | None]:
        """(the state the loop starts from, the mask as (T, B, 1) bool or None)."""
        keep = None if mask is None else mask.astype(bool)[:, :, None]  # (T, B, 1)
        return self._initial_state(initial_state, B), keep

    def _end(
        self,
        steps: Any,
        final: tuple,
        keep: Array | None,
        initial_state: tuple | None,
        return_sequences: bool | None,
        x: Array | None = None,
        ids: Array | None = None,
        embeddings: Array | None = None,
    ) -> tuple[Array, RecurrentCache]:
        """(y, cache) once the loop has run; a stateful layer called without an initial state keeps the final one."""
        if return_sequences is None:
            return_sequences = self.return_sequences
        y, seen = self._outputs(steps.hs, keep, return_sequences)
        if self.stateful and initial_state is None:
            self.state = tuple(a.copy() for a in final)
        return y, RecurrentCache(
            x=x,
            ids=ids,
            embeddings=embeddings,
            steps=steps,
            keep=keep,
            seen=seen,
            return_sequences=return_sequences,
            final_state=final,
        )

    @abstractmethod
    def _loop(self, zx: Array, state0: tuple, keep: Array | None) -> tuple[Any, tuple]:
        """The cell's forward time loop over the input projections zx (T, B, G·H), used as the gate buffer
        (overwritten) -> (the cell's record of the loop, the final state)."""

    def _loop_tokens(self, table: Array, ids: Array, state0: tuple, keep: Array | None) -> tuple[Any, tuple]:
        """The time loop for token input: the projection of step t is table[ids[t]]."""
        return self._loop(table[ids], state0, keep)  # (T, B, G·H)

    @abstractmethod
    def _loop_backward(
        self, cache: RecurrentCache, dy: Array | None, d_final: list
    ) -> tuple[Array, dict[str, Array], tuple]:
        """BPTT with dy (T, B, H) or None from d_final (one (B, H) per state part, the final state's gradient)
        -> (∂L/∂zx (T, B, G·H), recurrent gradients, ∂L/∂(initial state))."""

    def backward(
        self, cache: RecurrentCache, dy: Array | None, d_final_state: tuple | None = None
    ) -> tuple[RecurrentGrads, dict[str, Array]]:
        """Backpropagation through time, then through the input projection.

        dy: ∂L/∂y — (T, B, H) for a sequence output, (B, H) for a last-step output — or None.
        d_final_state: gradients of the final state (one array or None per state part), or None.
        Returns (RecurrentGrads(dx, dembeddings, dstate), {"kernel": dW, "recurrent_kernel": dU, "bias": db}).
        """
        B, H = cache.steps.hs.shape[1:]
        d_final = [self.backend.zeros((B, H)) for _ in range(len(self.state_names))]
        for d, given in zip(d_final, d_final_state or (), strict=False):
            if given is not None:
                d += given
        dy_steps = None
        if dy is not None:
            if cache.seen is not None:  # y_t = s_t ⊙ h_t
                dy = dy * (cache.seen if cache.return_sequences else cache.seen[-1])
            if cache.return_sequences:
                dy_steps = dy
            else:
                d_final[0] += dy
        dzx, recurrent, dstate0 = self._loop_backward(cache, dy_steps, d_final)
        dx = dE = None
        if cache.x is not None:
            dx, g_in = self.project_backward(cache.x, dzx)
        else:
            dE, g_in = self.project_tokens_backward(cache.ids, dzx, cache.embeddings)
        grads = {
            "kernel": g_in["kernel"],
            "recurrent_kernel": recurrent["recurrent_kernel"],
            "bias": self._bias_gradient(g_in["bias"], recurrent),
        }
        return RecurrentGrads(dx, dE, dstate0), grads

    def _bias_gradient(self, d_input_bias: Array, recurrent: dict[str, Array]) -> Array:
        """The gradient of ``bias`` from that of the input bias and the loop's ``recurrent`` gradients."""
        return d_input_bias
