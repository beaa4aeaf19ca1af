"""Layers with hand-written forward and backward passes: Embedding, LSTM, Dense.

This is the reference path: plain ``xp`` code (NumPy or CuPy) that every fast
kernel is tested against. A backend with ``kernels="fused"`` runs the LSTM
time loop in :mod:`scratchlm.kernels` instead (same equations, one fused pass
per step); the loops below are what those kernels compute.

Sequences are **time-major** inside the layers, (T, B, ...), so that the slice
for one time step is contiguous; the model converts from the batch-major (B, T)
arrays users pass in.

Each ``forward`` returns what the layer computes plus a ``cache`` holding what
its ``backward`` needs; ``backward`` returns the gradients of the inputs and a
dict of parameter gradients keyed like ``params``.

Notation (as in DESIGN.md): T time steps, B batch, V vocabulary, E embedding
size, D input size, H hidden units; gate blocks in Keras order i, f, g (= c̃), o.
"""

from .initializers import glorot_uniform, orthogonal, uniform


def _sigmoid(xp, x, out):
    """σ(x) = 1 / (1 + e^{-x}) written as ½·tanh(x/2) + ½: one ufunc, no overflow."""
    xp.multiply(x, 0.5, out=out)
    xp.tanh(out, out=out)
    out *= 0.5
    out += 0.5
    return out


class Embedding:
    """Token ids -> vectors: y[...] = E[ids[...]].

    Forward is a gather of rows of E (V, E). Backward is the matching
    scatter-add: dE[v] = Σ_{positions p with ids[p] = v} dy[p]  (repeated ids add up).
    """

    def __init__(self, vocab_size, dim, backend, rng):
        self.backend = backend
        self.embeddings = uniform((vocab_size, dim), rng, backend)      # (V, E)

    @property
    def params(self):
        return {"embeddings": self.embeddings}

    def forward(self, ids):
        """ids (...) int -> vectors (..., E)."""
        return self.embeddings[ids]

    def backward(self, ids, dy):
        """dy (..., E) -> {"embeddings": dE (V, E)}."""
        dE = self.backend.zeros(self.embeddings.shape)
        self.backend.scatter_add(dE, ids.reshape(-1), dy.reshape(-1, dy.shape[-1]))
        return {"embeddings": dE}


class Dense:
    """Affine map to logits: y = x W + b, W (D, V), b (V,), over any leading shape."""

    def __init__(self, input_size, units, backend, rng):
        self.backend = backend
        self.kernel = glorot_uniform((input_size, units), rng, backend)   # (D, V)
        self.bias = backend.zeros((units,))                               # (V,)

    @property
    def params(self):
        return {"kernel": self.kernel, "bias": self.bias}

    def forward(self, x):
        """x (..., D) -> y (..., V)."""
        y = x.reshape(-1, x.shape[-1]) @ self.kernel                      # (N, V)
        y += self.bias
        return y.reshape(x.shape[:-1] + (self.kernel.shape[1],))

    def backward(self, x, dy):
        """dy (..., V) -> dx (..., D), {"kernel": xᵀ dy, "bias": Σ dy}."""
        x2 = x.reshape(-1, x.shape[-1])                                   # (N, D)
        dy2 = dy.reshape(-1, dy.shape[-1])                                # (N, V)
        dx = (dy2 @ self.kernel.T).reshape(x.shape)                       # (..., D)
        return dx, {"kernel": x2.T @ dy2, "bias": dy2.sum(axis=0)}


class LSTM:
    """Long short-term memory layer in Keras' weight layout.

    Parameters: ``kernel`` W (D, 4H), ``recurrent_kernel`` U (H, 4H), ``bias`` b (4H,),
    gate blocks [i | f | g | o] along the last axis. Keras 3 initialisation:
    glorot-uniform W, orthogonal U, b = 0 except the forget block b_f = 1.

    Forward, for t = 1..T:

        z_t = x_t W + b + h_{t-1} U                        (B, 4H)
        i = σ(z_i)   f = σ(z_f)   g = tanh(z_g)   o = σ(z_o)
        c_t = f ⊙ c_{t-1} + i ⊙ g
        h_t = o ⊙ tanh(c_t)

    With a mask m_t ∈ {0, 1} per sequence (Keras 3, ``zero_output_for_mask=False``),
    the step's new values are kept only where m_t = 1; a masked step leaves h and
    c unchanged and repeats the previous output (zeros before the first kept step):

        h_t = m_t h̃_t + (1 - m_t) h_{t-1}      c_t = m_t c̃_t + (1 - m_t) c_{t-1}
        y_t = s_t ⊙ h_t,   s_t = 1 if any m_{t'} = 1 for t' <= t else 0

    where h̃_t, c̃_t are the unmasked step's results above.

    Backward (BPTT), from t = T down to 1, with dh = ∂L/∂h_t (from the output y_t
    plus what flows back from t+1) and dc = ∂L/∂c_t flowing back from t+1:

        dh̃ = m dh        dc̃ = m dc + dh̃ ⊙ o ⊙ (1 - tanh²(c̃_t))
        dz_o = dh̃ ⊙ tanh(c̃_t) ⊙ o(1-o)       dz_i = dc̃ ⊙ g ⊙ i(1-i)
        dz_g = dc̃ ⊙ i ⊙ (1-g²)                dz_f = dc̃ ⊙ c_{t-1} ⊙ f(1-f)
        dc_{t-1} = (1-m) dc + dc̃ ⊙ f          dh_{t-1} = (1-m) dh + dz Uᵀ

    and, after the loop, as single big products over all T·B rows:

        dU = [h_0 … h_{T-1}]ᵀ dZ       dW = [x_1 … x_T]ᵀ dZ       db = Σ dZ

    The work is split the way fast implementations do it: the input projection
    x_t W + b for all steps at once (``project`` / ``project_tokens``), then the
    recurrence with one (B, H) x (H, 4H) product per step (``forward``).
    ``forward_tokens`` does both for token input; on the fused path it never
    materialises the projections but gathers each step's rows from the (V, 4H)
    table inside the step kernel.
    """

    def __init__(self, input_size, units, backend, rng, return_sequences=True, stateful=False):
        H = units
        self.backend = backend
        self.units = H
        self.return_sequences = return_sequences
        self.stateful = stateful
        self.state = None                                                 # carried (h, c) when stateful
        self.kernel = glorot_uniform((input_size, 4 * H), rng, backend)  # W (D, 4H)
        self.recurrent_kernel = orthogonal((H, 4 * H), rng, backend)     # U (H, 4H)
        self.bias = backend.zeros((4 * H,))                               # b (4H,)
        self.bias[H:2 * H] = 1.0                                          # unit forget bias

    @property
    def params(self):
        return {"kernel": self.kernel, "recurrent_kernel": self.recurrent_kernel, "bias": self.bias}

    def reset_state(self):
        """Forget the (h, c) carried between batches in stateful mode."""
        self.state = None

    # -- input projection for all time steps at once ------------------------
    def project(self, x):
        """x (T, B, D) floats -> zx = x W + b (T, B, 4H): one GEMM over all T·B rows."""
        T, B, D = x.shape
        zx = x.reshape(T * B, D) @ self.kernel                            # (T·B, 4H)
        zx += self.bias
        return zx.reshape(T, B, -1)

    def project_backward(self, x, dzx):
        """dzx (T, B, 4H) -> dx (T, B, D), {"kernel": xᵀ dzx, "bias": Σ dzx}."""
        T, B, D = x.shape
        dz2 = dzx.reshape(T * B, -1)                                      # (T·B, 4H)
        dx = (dz2 @ self.kernel.T).reshape(T, B, D)
        return dx, {"kernel": x.reshape(T * B, D).T @ dz2, "bias": dz2.sum(axis=0)}

    def token_table(self, embeddings=None):
        """The input projection of every token id, a (V, 4H) table.

        One-hot input (``embeddings`` None, D = V): x_t W is row ids[t] of W, so
            table = W + b.
        Embedding input (``embeddings`` E (V, E), D = E): x_t = E[ids[t]], so
            table = E W + b.
        """
        if embeddings is None:
            return self.kernel + self.bias                                # (V, 4H)
        table = embeddings @ self.kernel                                  # (V, 4H)
        table += self.bias
        return table

    def project_tokens(self, ids, embeddings=None):
        """Input projection of token ids by row lookup: zx[t, b] = table[ids[t, b]].

        No one-hot tensor and, for small V, no (T·B, E) x (E, 4H) product is
        ever formed (see :meth:`token_table`). ids (T, B) -> zx (T, B, 4H).
        """
        return self.token_table(embeddings)[ids]

    def project_tokens_backward(self, ids, dzx, embeddings=None):
        """Gradients of :meth:`project_tokens`.

        dtable[v] = Σ_{(t,b): ids[t,b] = v} dzx[t, b]     (scatter-add, (V, 4H))
        one-hot:   dW = dtable                db = Σ_v dtable[v]
        embedding: dW = Eᵀ dtable, dE = dtable Wᵀ, db = Σ_v dtable[v]
        Returns (dE or None, {"kernel": dW, "bias": db}).
        """
        V = self.kernel.shape[0] if embeddings is None else embeddings.shape[0]
        dtable = self.backend.zeros((V, dzx.shape[-1]))                   # (V, 4H)
        self.backend.scatter_add(dtable, ids.reshape(-1), dzx.reshape(-1, dzx.shape[-1]))
        grads = {"bias": dtable.sum(axis=0)}
        if embeddings is None:
            grads["kernel"] = dtable
            return None, grads
        grads["kernel"] = embeddings.T @ dtable                           # (E, 4H)
        return dtable @ self.kernel.T, grads                              # dE (V, E)

    # -- recurrence -----------------------------------------------------------
    def _initial_state(self, initial_state, B):
        if initial_state is None and self.stateful and self.state is not None and self.state[0].shape[0] == B:
            initial_state = self.state
        if initial_state is None:
            zeros = self.backend.zeros((B, self.units))
            return zeros, zeros
        h0, c0 = initial_state
        if h0.shape != (B, self.units) or c0.shape != (B, self.units):
            raise ValueError(
                f"initial state must be two arrays of shape {(B, self.units)}, got {h0.shape} and {c0.shape}"
                + (" (stateful layer: call reset_state() when the batch size changes)" if self.stateful else ""))
        return h0, c0

    def forward(self, zx, initial_state=None, mask=None, return_sequences=None):
        """Run the recurrence over precomputed input projections (see :meth:`_run`)."""
        return self._run(zx, None, None, initial_state, mask, return_sequences)

    def forward_tokens(self, ids, embeddings=None, initial_state=None, mask=None, return_sequences=None):
        """``forward(project_tokens(ids, embeddings), ...)`` for token input, ids (T, B).

        On the fused path the projections are not materialised: each step
        kernel adds its rows of :meth:`token_table` itself.
        """
        table = self.token_table(embeddings)                              # (V, 4H)
        if self.backend.kernels != "fused":
            return self.forward(table[ids], initial_state, mask, return_sequences)
        T, B = ids.shape
        gates = self.backend.fused.empty_workspace((T, B, table.shape[1]), self.backend.dtype)
        return self._run(gates, table, ids, initial_state, mask, return_sequences)

    def _run(self, zx, table, ids, initial_state, mask, return_sequences):
        """Run the recurrence over precomputed input projections.

        zx: (T, B, 4H) = x_t W + b for every step; it is used as the gate buffer
            and overwritten with the gate activations [i f g o]. (Fused path
            only: with ``table`` (V, 4H) and ``ids`` (T, B) given, the projection
            of step t is table[ids[t]] and zx is just the buffer.)
        initial_state: (h0, c0), each (B, H), or None for zeros (or, when
            stateful, the state the previous call ended with).
        mask: (T, B) bool, True = real step, or None.
        return_sequences: overrides the layer's setting for this call.
        Returns (y, (h_T, c_T), cache): y (T, B, H) if return_sequences else (B, H).
        A stateful layer called without ``initial_state`` starts from, and
        afterwards remembers, the state its previous such call ended with.
        """
        if return_sequences is None:
            return_sequences = self.return_sequences
        carry = self.stateful and initial_state is None
        xp = self.backend.xp
        T, B, _ = zx.shape
        H = self.units
        U = self.recurrent_kernel
        h0, c0 = self._initial_state(initial_state, B)

        gates = zx                                                        # (T, B, 4H)
        keep = None if mask is None else mask.astype(bool)[:, :, None]    # (T, B, 1)
        if self.backend.kernels == "fused":                               # the same loop, fused per step
            hs, cs = self.backend.fused.lstm_forward(gates, U, h0, c0, None if mask is None else keep[:, :, 0],
                                                     table, ids)
            tanh_c = None
        else:
            hs = self.backend.empty((T + 1, B, H))                        # h_0 … h_T
            cs = self.backend.empty((T + 1, B, H))                        # c_0 … c_T
            tanh_c = self.backend.empty((T, B, H))                        # tanh(c̃_t)
            hs[0], cs[0] = h0, c0
            for t in range(T):
                z = gates[t]                                              # (B, 4H)
                z += hs[t] @ U
                i, f, g, o = z[:, :H], z[:, H:2 * H], z[:, 2 * H:3 * H], z[:, 3 * H:]
                _sigmoid(xp, z[:, :2 * H], out=z[:, :2 * H])              # i, f
                xp.tanh(g, out=g)
                _sigmoid(xp, o, out=o)
                c = cs[t + 1]
                xp.multiply(f, cs[t], out=c)
                c += i * g                                                # c̃_t = f ⊙ c_{t-1} + i ⊙ g
                xp.tanh(c, out=tanh_c[t])
                xp.multiply(o, tanh_c[t], out=hs[t + 1])                  # h̃_t = o ⊙ tanh(c̃_t)
                if keep is not None:                                      # masked step: keep h, c
                    hs[t + 1] = xp.where(keep[t], hs[t + 1], hs[t])
                    cs[t + 1] = xp.where(keep[t], cs[t + 1], cs[t])

        seen = None
        y = hs[1:]                                                        # (T, B, H)
        if keep is not None:
            seen = xp.cumsum(keep, axis=0) > 0                            # (T, B, 1): s_t
            y = y * seen
        if not return_sequences:
            y = y[-1]                                                     # (B, H)
        state = (hs[T], cs[T])
        if carry:
            self.state = (hs[T].copy(), cs[T].copy())
        cache = {"gates": gates, "hs": hs, "cs": cs, "tanh_c": tanh_c, "keep": keep, "seen": seen,
                 "return_sequences": return_sequences, "fused": tanh_c is None}
        return y, state, cache

    def backward(self, cache, dy=None, dstate=None):
        """Backpropagation through time.

        dy: ∂L/∂y — (T, B, H) for a sequence output, (B, H) for a last-step output — or None.
        dstate: (dh_T, dc_T), gradients of the final state, or None.
        Returns (dzx (T, B, 4H), {"recurrent_kernel": dU}, (dh_0, dc_0)).
        dzx is the gradient of the input projections; pass it to
        ``project_backward`` or ``project_tokens_backward``. (The fused path
        writes dzx over the cached gates, so call backward once per forward.)
        """
        xp = self.backend.xp
        gates, hs, cs, tanh_c = cache["gates"], cache["hs"], cache["cs"], cache["tanh_c"]
        keep, seen, sequences = cache["keep"], cache["seen"], cache["return_sequences"]
        T, B, G = gates.shape
        H = self.units
        U = self.recurrent_kernel

        dh = self.backend.zeros((B, H))                                   # ∂L/∂h_t
        dc = self.backend.zeros((B, H))                                   # ∂L/∂c_t
        if dstate is not None:
            dh_T, dc_T = dstate
            if dh_T is not None:
                dh += dh_T
            if dc_T is not None:
                dc += dc_T
        if dy is not None and not sequences:                  # y = s_T ⊙ h_T
            dh += dy if seen is None else dy * seen[-1]
        if cache["fused"]:                                                # the same loop, one fused pass per step
            if dy is not None and sequences and seen is not None:
                dy = dy * seen
            dZ, dU, dh, dc = self.backend.fused.lstm_backward(
                gates, hs, cs, U, dy if sequences else None, dh, dc, None if keep is None else keep[:, :, 0])
            return dZ, {"recurrent_kernel": dU}, (dh, dc)
        dZ = self.backend.empty((T, B, G))                                # ∂L/∂z_t
        for t in reversed(range(T)):
            if dy is not None and sequences:                  # y_t = s_t ⊙ h_t
                dh += dy[t] if seen is None else dy[t] * seen[t]
            z = gates[t]
            i, f, g, o = z[:, :H], z[:, H:2 * H], z[:, 2 * H:3 * H], z[:, 3 * H:]
            dz = dZ[t]
            dz_i, dz_f, dz_g, dz_o = dz[:, :H], dz[:, H:2 * H], dz[:, 2 * H:3 * H], dz[:, 3 * H:]
            if keep is None:
                dh_new, dc_new = dh, dc
            else:
                m = keep[t]
                dh_new, dc_new = dh * m, dc * m                          # dh̃ = m dh, m dc
            dc_new = dc_new + dh_new * o * (1.0 - tanh_c[t] ** 2)        # dc̃
            xp.multiply(dh_new * tanh_c[t], o * (1.0 - o), out=dz_o)
            xp.multiply(dc_new * g, i * (1.0 - i), out=dz_i)
            xp.multiply(dc_new * i, 1.0 - g * g, out=dz_g)
            xp.multiply(dc_new * cs[t], f * (1.0 - f), out=dz_f)
            dh_prev = dz @ U.T                                            # dz Uᵀ
            dc_prev = dc_new * f
            if keep is not None:
                dh_prev += dh * ~m
                dc_prev += dc * ~m
            dh, dc = dh_prev, dc_prev
        dU = hs[:-1].reshape(T * B, H).T @ dZ.reshape(T * B, G)           # (H, 4H)
        return dZ, {"recurrent_kernel": dU}, (dh, dc)
