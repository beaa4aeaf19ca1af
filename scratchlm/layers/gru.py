"""The GRU cell in Keras 3's default layout (``reset_after=True``): gate math and backpropagation through time."""

from typing import Any, NamedTuple

from ..initializers import glorot_uniform, orthogonal
from .base import Array, Shape
from .recurrent import Recurrent, RecurrentCache, sigmoid


class GRUSteps(NamedTuple):
    """The GRU's record of its time loop."""

    gates: Array  # (T, B, 3H) activations [z r h̃]
    hs: Array  # (T+1, B, H) h_0 … h_T
    uh: Array  # (T, B, H) û_h = (h_{t-1} U + b_rec)_h, the recurrent part of h̃ before the reset


class GRU(Recurrent):
    r"""Gated recurrent unit layer in Keras 3's weight layout, reset gate applied after the recurrent product.

    Parameters: ``kernel`` W (D, 3H), ``recurrent_kernel`` U (H, 3H), ``bias`` (2, 3H)
    (row 0 = b_in, added to x W; row 1 = b_rec, added to h U), gate blocks [z | r | h]
    along the last axis. Keras 3 initialisation: glorot-uniform W, orthogonal U, zero bias.

    Forward, for t = 1..T, with x̂ and û (B, 3H) each:

    .. math::

        \hat x &= x_t W + b_{\text{in}} \qquad \hat u = h_{t-1} U + b_{\text{rec}} \\
        z &= \sigma(\hat x_z + \hat u_z) \qquad r = \sigma(\hat x_r + \hat u_r) \\
        \tilde h &= \tanh(\hat x_h + r \odot \hat u_h) \\
        h_t &= z \odot h_{t-1} + (1 - z) \odot \tilde h

    PyTorch's ``nn.GRU`` computes the same cell. Masks as for every recurrent
    layer: a masked step keeps h (h_t = m h_t' + (1 − m) h_{t-1}) and the output
    repeats the previous one (zeros before the first real step).

    Backward (BPTT), from t = T down to 1, with dh = ∂L/∂h_t (from the output y_t
    plus what flows back from t+1) and m the step's mask (1 without one):

    .. math::

        dh' &= m\, dh \\
        da_h &= dh' \odot (1 - z) \odot (1 - \tilde h^2) \qquad \text{(pre-activation of } \tilde h \text{)} \\
        da_z &= dh' \odot (h_{t-1} - \tilde h) \odot z(1 - z) \\
        da_r &= da_h \odot \hat u_h \odot r(1 - r) \\
        d\hat x &= [da_z \mid da_r \mid da_h] \qquad d\hat u = [da_z \mid da_r \mid da_h \odot r] \\
        dh_{t-1} &= (1 - m)\, dh + dh' \odot z + d\hat u\, U^\top

    and, after the loop, as single products over all T·B rows:

    .. math::

        dU = [h_0 \dots h_{T-1}]^\top d\hat U \qquad db_{\text{rec}} = \textstyle\sum d\hat U \qquad
        dW = [x_1 \dots x_T]^\top d\hat X \qquad db_{\text{in}} = \textstyle\sum d\hat X

    Memory: per step it keeps z, r, h̃, û_h and h, (T, B, 5H) values in all.

    The fused subclass (:class:`~scratchlm.kernels.layers.FusedGRU`) runs the
    same two loops in the kernels (``scratchlm/kernels/numba/gru.py``,
    ``scratchlm/kernels/cuda/gru_cell.cu``): per step one GEMM h_{t-1} U
    (forward) or dû_t Uᵀ (backward) and one pass for all the gate math, the
    token-table gather and the mask; its backward overwrites the cached gates
    with dX̂ and û_h with dû_h.
    """

    gates = 3
    state_names = ("h",)

    def _init_params(self, input_size: int, units: int, rng: Any) -> None:
        H = units
        self.kernel = glorot_uniform((input_size, 3 * H), rng, self.backend)  # W (D, 3H)
        self.recurrent_kernel = orthogonal((H, 3 * H), rng, self.backend)  # U (H, 3H)
        self.bias = self.backend.zeros((2, 3 * H))  # [b_in; b_rec] (2, 3H)

    @classmethod
    def bias_shape(cls, units: int) -> Shape:
        return (2, 3 * units)

    @property
    def input_bias(self) -> Array:
        return self.bias[0]

    def _loop(self, gates: Array, state0: tuple, keep: Array | None) -> tuple[GRUSteps, tuple]:
        """The forward time loop over gates (T, B, 3H) = x_t W + b_in -> (GRUSteps, (h_T,))."""
        xp = self.backend.xp
        T, B, _ = gates.shape
        H = self.units
        U, b_rec = self.recurrent_kernel, self.bias[1]
        hs = self.backend.empty((T + 1, B, H))  # h_0 … h_T
        uh = self.backend.empty((T, B, H))  # û_h
        hs[0] = state0[0]
        for t in range(T):
            a = gates[t]  # (B, 3H): x̂, then [z r h̃]
            u = hs[t] @ U  # (B, 3H)
            u += b_rec  # û
            a[:, : 2 * H] += u[:, : 2 * H]
            sigmoid(xp, a[:, : 2 * H], out=a[:, : 2 * H])  # z, r
            z, r, h_tilde = a[:, :H], a[:, H : 2 * H], a[:, 2 * H :]
            uh[t] = u[:, 2 * H :]
            h_tilde += r * uh[t]
            xp.tanh(h_tilde, out=h_tilde)  # h̃ = tanh(x̂_h + r ⊙ û_h)
            h = hs[t + 1]
            xp.multiply(z, hs[t] - h_tilde, out=h)
            h += h_tilde  # h_t = z ⊙ h_{t-1} + (1 − z) ⊙ h̃
            if keep is not None:  # masked step: keep h
                hs[t + 1] = xp.where(keep[t], hs[t + 1], hs[t])
        return GRUSteps(gates, hs, uh), (hs[T],)

    def _loop_backward(
        self, cache: RecurrentCache, dy: Array | None, d_final: list
    ) -> tuple[Array, dict[str, Array], tuple]:
        """BPTT from dh_T = d_final[0] with dy (T, B, H) or None -> (dX̂ (T, B, 3H), recurrent grads, (dh_0,))."""
        gates, hs, uh = cache.steps
        keep = cache.keep
        T, B, G = gates.shape
        H = self.units
        U = self.recurrent_kernel
        (dh,) = d_final  # ∂L/∂h_t
        dX = self.backend.empty((T, B, G))  # ∂L/∂x̂_t
        dUh = self.backend.empty((T, B, G))  # ∂L/∂û_t
        for t in reversed(range(T)):
            if dy is not None:
                dh = dh + dy[t]
            z, r, h_tilde = gates[t, :, :H], gates[t, :, H : 2 * H], gates[t, :, 2 * H :]
            dh_new = dh if keep is None else dh * keep[t]  # dh' = m dh
            da_h = dh_new * (1.0 - z) * (1.0 - h_tilde * h_tilde)
            da_z = dh_new * (hs[t] - h_tilde) * z * (1.0 - z)
            da_r = da_h * uh[t] * r * (1.0 - r)
            dx, du = dX[t], dUh[t]
            dx[:, :H], dx[:, H : 2 * H], dx[:, 2 * H :] = da_z, da_r, da_h
            du[:, : 2 * H] = dx[:, : 2 * H]
            du[:, 2 * H :] = da_h * r
            dh_prev = dh_new * z + du @ U.T
            if keep is not None:
                dh_prev += dh * ~keep[t]
            dh = dh_prev
        dU2 = dUh.reshape(T * B, G)
        dU = hs[:-1].reshape(T * B, H).T @ dU2  # (H, 3H)
        return dX, {"recurrent_kernel": dU, "recurrent_bias": dU2.sum(axis=0)}, (dh,)

    def _bias_gradient(self, d_input_bias: Array, recurrent: dict[str, Array]) -> Array:
        return self.backend.xp.stack([d_input_bias, recurrent["recurrent_bias"]])  # (2, 3H)
