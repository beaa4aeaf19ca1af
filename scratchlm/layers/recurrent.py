"""What every recurrent cell shares: input projection, token table, initial and carried state, masks.

A recurrent layer is split the way fast implementations split it (cuDNN,
torch-rnn): the input projection x_t W + b of all T steps at once, as one GEMM
over the T·B rows (or, for token input, a row lookup in a (V, G·H) table), then
the time loop of the cell, which needs only one (B, H) x (H, G·H) product per
step, then the weight gradients as single big products after the loop. This
module holds everything but the cell's own gate math (see ``lstm.py``):

    project(x)                    zx = x W + b                          (T, B, G·H)
    token_table(E)                table = E W + b  (one-hot: W + b)     (V, G·H)
    project_tokens(ids, E)        zx[t, b] = table[ids[t, b]]
    forward(x, ...)               project, then the cell's time loop
    forward_tokens(ids, E, ...)   the same for token input; on the fused path the
                                  step kernel gathers its table rows itself

Masks follow Keras 3 (``zero_output_for_mask=False``): a masked step keeps the
state unchanged and the output repeats the previous output, zeros before the
first real step. The choice between the reference loop and the fused kernels
is made in one place, :attr:`Recurrent.fused`.
"""

import functools
from typing import NamedTuple


class RecurrentCache(NamedTuple):
    """What a recurrent layer's backward needs from its forward."""
    x: object                 # (T, B, D) float input, or None for token input
    ids: object               # (T, B) token ids for token input, else None
    embeddings: object        # (V, E) table the tokens were looked up in, or None (one-hot or float input)
    steps: object             # the cell's record of its time loop (e.g. LSTMSteps)
    keep: object              # (T, B, 1) bool, True = real step, or None without a mask
    seen: object              # (T, B, 1) bool, s_t: some real step at or before t, or None
    return_sequences: bool    # y is (T, B, H) (True) or the last step's (B, H)


class RecurrentGrads(NamedTuple):
    """The ``d_inputs`` of a recurrent layer's backward."""
    dx: object                # (T, B, D) for float input; dE (V, E) for token input through E; None for one-hot
    dstate: tuple             # gradient of the initial state, one (B, H) array per state part (LSTM: dh_0, dc_0)


class Recurrent:
    """Base of the recurrent cells: everything but the gate math.

    A cell sets ``gates`` (G, the number of gate blocks) and ``state_names``
    (LSTM: h and c), creates ``kernel`` W (D, G·H), ``recurrent_kernel`` U
    (H, G·H) and ``bias`` in :meth:`_init_params`, and implements the time loop
    (:meth:`_loop`) and its backpropagation (:meth:`_loop_backward`, returning
    the gradient of the input projections, a dict with ``recurrent_kernel`` and
    any other recurrent gradients, and the initial state's gradient). A cell
    whose bias is not just the input bias (the GRU) overrides
    :attr:`input_bias` and :meth:`_bias_gradient`.
    """

    gates = None
    state_names = ()                  # the parts of the state, e.g. ("h", "c")

    def __init__(self, input_size, units, backend, rng, return_sequences=True, stateful=False):
        self.backend = backend
        self.units = units
        self.return_sequences = return_sequences
        self.stateful = stateful
        self.state = None                                                 # the carried state when stateful
        self._init_params(input_size, units, rng)

    @functools.cached_property
    def fused(self):
        """The fused kernels this layer runs (:mod:`scratchlm.kernels`), or None for the reference loop.

        The one place the choice is made; looked up at first use, so building a
        layer does not import Numba.
        """
        return self.backend.fused if self.backend.kernels == "fused" else None

    @property
    def params(self):
        return {"kernel": self.kernel, "recurrent_kernel": self.recurrent_kernel, "bias": self.bias}

    @classmethod
    def param_shapes(cls, input_size, units):
        """Name -> shape of the parameters of a layer of this cell, without building one."""
        G = cls.gates * units
        return {"kernel": (input_size, G), "recurrent_kernel": (units, G), "bias": cls.bias_shape(units)}

    @classmethod
    def bias_shape(cls, units):
        return (cls.gates * units,)

    @property
    def input_bias(self):
        """The bias added to the input projection, (G·H,)."""
        return self.bias

    def reset_state(self):
        """Forget the state carried between batches in stateful mode."""
        self.state = None

    # -- input projection for all time steps at once ------------------------
    def project(self, x):
        """x (T, B, D) floats -> zx = x W + b (T, B, G·H): one GEMM over all T·B rows."""
        T, B, D = x.shape
        zx = x.reshape(T * B, D) @ self.kernel                            # (T·B, G·H)
        zx += self.input_bias
        return zx.reshape(T, B, -1)

    def project_backward(self, x, dzx):
        """dzx (T, B, G·H) -> (dx (T, B, D), {"kernel": xᵀ dzx, "bias": Σ dzx})."""
        T, B, D = x.shape
        dz2 = dzx.reshape(T * B, -1)                                      # (T·B, G·H)
        dx = (dz2 @ self.kernel.T).reshape(T, B, D)
        return dx, {"kernel": x.reshape(T * B, D).T @ dz2, "bias": dz2.sum(axis=0)}

    def token_table(self, embeddings=None):
        """The input projection of every token id, a (V, G·H) table.

        One-hot input (``embeddings`` None, D = V): x_t W is row ids[t] of W, so
            table = W + b.
        Embedding input (``embeddings`` E (V, E), D = E): x_t = E[ids[t]], so
            table = E W + b.
        """
        if embeddings is None:
            return self.kernel + self.input_bias                         # (V, G·H)
        table = embeddings @ self.kernel                                  # (V, G·H)
        table += self.input_bias
        return table

    def project_tokens(self, ids, embeddings=None):
        """Input projection of token ids by row lookup: zx[t, b] = table[ids[t, b]].

        No one-hot tensor and, for small V, no (T·B, E) x (E, G·H) product is
        ever formed (see :meth:`token_table`). ids (T, B) -> zx (T, B, G·H).
        """
        return self.token_table(embeddings)[ids]

    def project_tokens_backward(self, ids, dzx, embeddings=None):
        """Gradients of :meth:`project_tokens`.

        dtable[v] = Σ_{(t,b): ids[t,b] = v} dzx[t, b]     (scatter-add, (V, G·H))
        one-hot:   dW = dtable                db = Σ_v dtable[v]
        embedding: dW = Eᵀ dtable, dE = dtable Wᵀ, db = Σ_v dtable[v]
        Returns (dE or None, {"kernel": dW, "bias": db}).
        """
        V = self.kernel.shape[0] if embeddings is None else embeddings.shape[0]
        dtable = self.backend.zeros((V, dzx.shape[-1]))                   # (V, G·H)
        self.backend.scatter_add(dtable, ids.reshape(-1), dzx.reshape(-1, dzx.shape[-1]))
        grads = {"bias": dtable.sum(axis=0)}
        if embeddings is None:
            grads["kernel"] = dtable
            return None, grads
        grads["kernel"] = embeddings.T @ dtable                           # (E, G·H)
        return dtable @ self.kernel.T, grads                              # dE (V, E)

    # -- state and masks -------------------------------------------------------
    def state_shapes(self, B):
        """Shapes of this layer's state for a batch of B: one (B, H) per state part."""
        return ((B, self.units),) * len(self.state_names)

    def _initial_state(self, initial_state, B):
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
                + (" (stateful layer: call reset_state() when the batch size changes)" if self.stateful else ""))
        return tuple(initial_state)

    def _outputs(self, hs, keep, return_sequences):
        """(y, seen) from h_0 … h_T (T+1, B, H): y_t = s_t ⊙ h_t, all steps or the last one."""
        y, seen = hs[1:], None                                            # (T, B, H)
        if keep is not None:
            seen = self.backend.xp.cumsum(keep, axis=0) > 0               # (T, B, 1): s_t
            y = y * seen
        return (y if return_sequences else y[-1]), seen

    # -- forward / backward -------------------------------------------------------
    def forward(self, x, initial_state=None, mask=None, return_sequences=None):
        """x (T, B, D) floats -> (y, final state, cache); see :meth:`_forward`."""
        return self._forward(self.project(x), None, None, initial_state, mask, return_sequences,
                             RecurrentCache(x, None, None, None, None, None, None))

    def forward_tokens(self, ids, embeddings=None, initial_state=None, mask=None, return_sequences=None):
        """``forward`` for token input, ids (T, B), x_t = one-hot(ids) or E[ids] (``embeddings`` E).

        The input projection is a lookup in :meth:`token_table`; on the fused path
        it is not materialised: each step kernel adds its rows of the table itself.
        """
        table = self.token_table(embeddings)                              # (V, G·H)
        inputs = RecurrentCache(None, ids, embeddings, None, None, None, None)
        if self.fused is None:
            return self._forward(table[ids], None, None, initial_state, mask, return_sequences, inputs)
        T, B = ids.shape
        gates = self.fused.empty_workspace((T, B, table.shape[1]), self.backend.dtype)
        return self._forward(gates, table, ids, initial_state, mask, return_sequences, inputs)

    def _forward(self, zx, table, ids, initial_state, mask, return_sequences, inputs):
        """Run the time loop over the input projections zx (T, B, G·H).

        zx is used as the gate buffer and overwritten. (Fused path only: with
        ``table`` (V, G·H) and ``ids`` (T, B) given, the projection of step t is
        table[ids[t]] and zx is just the buffer.)
        initial_state: one (B, H) array per state part, or None for zeros (or,
            when stateful, the state the previous call ended with).
        mask: (T, B) bool, True = real step, or None.
        return_sequences: overrides the layer's setting for this call.
        Returns (y, final state, cache): y (T, B, H) if return_sequences else (B, H).
        """
        if return_sequences is None:
            return_sequences = self.return_sequences
        carry = self.stateful and initial_state is None
        state0 = self._initial_state(initial_state, zx.shape[1])
        keep = None if mask is None else mask.astype(bool)[:, :, None]    # (T, B, 1)
        hs, steps, final = self._loop(zx, table, ids, state0, keep)
        y, seen = self._outputs(hs, keep, return_sequences)
        if carry:
            self.state = tuple(a.copy() for a in final)
        return y, final, inputs._replace(steps=steps, keep=keep, seen=seen, return_sequences=return_sequences)

    def backward(self, cache, dy=None, dstate=None):
        """Backpropagation through time, then through the input projection.

        dy: ∂L/∂y — (T, B, H) for a sequence output, (B, H) for a last-step output — or None.
        dstate: gradients of the final state (one array or None per state part), or None.
        Returns (RecurrentGrads(dx, dstate_0), {"kernel": dW, "recurrent_kernel": dU, "bias": db}).
        (The fused path writes its gradients over the cached gates: call backward once per forward.)
        """
        B, H = cache.steps.hs.shape[1:]
        d_final = [self.backend.zeros((B, H)) for _ in range(len(self.state_names))]
        for d, given in zip(d_final, dstate or ()):
            if given is not None:
                d += given
        dy_steps = None
        if dy is not None:
            if cache.seen is not None:                                    # y_t = s_t ⊙ h_t
                dy = dy * (cache.seen if cache.return_sequences else cache.seen[-1])
            if cache.return_sequences:
                dy_steps = dy
            else:
                d_final[0] += dy
        dzx, recurrent, dstate0 = self._loop_backward(cache, dy_steps, d_final)
        if cache.x is not None:
            dx, g_in = self.project_backward(cache.x, dzx)
        else:
            dx, g_in = self.project_tokens_backward(cache.ids, dzx, cache.embeddings)
        grads = {"kernel": g_in["kernel"], "recurrent_kernel": recurrent["recurrent_kernel"],
                 "bias": self._bias_gradient(g_in["bias"], recurrent)}
        return RecurrentGrads(dx, dstate0), grads

    def _bias_gradient(self, d_input_bias, recurrent):
        """The gradient of ``bias`` from that of the input bias and the loop's ``recurrent`` gradients."""
        return d_input_bias
