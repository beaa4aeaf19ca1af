"""The LSTM cell in Keras' layout: gate math and backpropagation through time."""

from typing import Any, NamedTuple

from ..initializers import glorot_uniform, orthogonal
from .base import Array
from .recurrent import Recurrent, RecurrentCache, sigmoid


class LSTMSteps(NamedTuple):
    """The LSTM's record of its time loop."""

    gates: Array  # (T, B, 4H) activations [i f g o] of every step
    hs: Array  # (T+1, B, H) h_0 … h_T
    cs: Array  # (T+1, B, H) c_0 … c_T
    tanh_c: Array  # (T, B, H) tanh(c̃_t)


class LSTM(Recurrent):
    r"""Long short-term memory layer in Keras' weight layout.

    Parameters (Keras 3 initialisation): ``kernel`` W (D, 4H) glorot-uniform,
    ``recurrent_kernel`` U (H, 4H) orthogonal, ``bias`` b (4H,) zeros but the
    forget block b[H:2H] = 1 (``unit_forget_bias``). The gate blocks along the
    4H axis are i, f, g (c̃), o. Input x (T, B, D) time-major, or token ids
    (T, B) through :meth:`forward_tokens`; state (h, c), each (B, H).

    Forward, for t = 1 … T, with z_t (B, 4H) split into blocks of H
    (:meth:`_loop`; the input part x_t W + b of every step is one GEMM first,
    :meth:`project`):

    .. math::

        z_t &= x_t W + b + h_{t-1} U \\
        i &= \sigma(z_i) \qquad f = \sigma(z_f) \qquad g = \tanh(z_g) \qquad o = \sigma(z_o) \\
        \tilde c_t &= f \odot c_{t-1} + i \odot g \\
        \tilde h_t &= o \odot \tanh(\tilde c_t)

    σ is computed as ½·tanh(x/2) + ½ (one transcendental, no overflow).

    Masks (Keras 3, ``zero_output_for_mask=False``), with m_t ∈ {0, 1} (1 = real
    step) and s_t = 1 if some step ≤ t is real:

    .. math::

        h_t &= m_t \tilde h_t + (1 - m_t)\, h_{t-1} \qquad c_t = m_t \tilde c_t + (1 - m_t)\, c_{t-1} \\
        y_t &= s_t \odot h_t

    A masked step leaves h and c unchanged; its output repeats the previous
    output, and outputs before the first real step are zeros (even from a given
    initial state). y is (T, B, H), or y_T (B, H) with ``return_sequences=False``.

    Backpropagation through time (:meth:`_loop_backward`), t = T … 1. dh and dc
    are the gradients reaching h_t and c_t from later steps, starting from the
    gradient of the final state; the output's gradient (already multiplied by
    s_t in :meth:`backward`) is added first, dh += dy_t. Then:

    .. math::

        d\tilde h &= m_t\, dh \qquad d\tilde c_{\text{in}} = m_t\, dc \\
        d\tilde c &= d\tilde c_{\text{in}} + d\tilde h \odot o \odot (1 - \tanh^2 \tilde c_t) \\
        dz_o &= d\tilde h \odot \tanh(\tilde c_t) \odot o(1 - o) \\
        dz_i &= d\tilde c \odot g \odot i(1 - i) \\
        dz_g &= d\tilde c \odot i \odot (1 - g^2) \\
        dz_f &= d\tilde c \odot c_{t-1} \odot f(1 - f) \\
        dh_{t-1} &= dz\, U^\top + (1 - m_t)\, dh \\
        dc_{t-1} &= d\tilde c \odot f + (1 - m_t)\, dc

    After the loop, each weight gradient is one product over all T·B rows
    (dZ (T, B, 4H) holds every dz_t; dW, db and dX in :meth:`project_backward`):

    .. math::

        dU &= [h_0 \dots h_{T-1}]^\top dZ \qquad (H, 4H) \\
        dW &= X^\top dZ \qquad db = \textstyle\sum dZ \qquad dX = dZ\, W^\top

    For token input dW and db come from a scatter-add of dZ by token id
    (:meth:`project_tokens_backward`).

    Memory: the loop keeps the gates, tanh(c̃_t), h and c of every step,
    (T, B, 7H) values. The fused subclass (``scratchlm/kernels/layers.py``,
    :class:`~scratchlm.kernels.layers.FusedLSTM`) runs the same two loops in
    one kernel each and recomputes tanh(c̃_t) instead of keeping it.
    """

    gates = 4
    state_names = ("h", "c")

    def _init_params(self, input_size: int, units: int, rng: Any) -> None:
        H = units
        self.kernel = glorot_uniform((input_size, 4 * H), rng, self.backend)  # W (D, 4H)
        self.recurrent_kernel = orthogonal((H, 4 * H), rng, self.backend)  # U (H, 4H)
        self.bias = self.backend.zeros((4 * H,))  # b (4H,)
        self.bias[H : 2 * H] = 1.0  # unit forget bias

    def _loop(self, gates: Array, state0: tuple, keep: Array | None) -> tuple[LSTMSteps, tuple]:
        """The forward time loop over gates (T, B, 4H) = x_t W + b -> (LSTMSteps, (h_T, c_T))."""
        xp = self.backend.xp
        T, B, _ = gates.shape
        H = self.units
        U = self.recurrent_kernel
        hs = self.backend.empty((T + 1, B, H))  # h_0 … h_T
        cs = self.backend.empty((T + 1, B, H))  # c_0 … c_T
        tanh_c = self.backend.empty((T, B, H))  # tanh(c̃_t)
        hs[0], cs[0] = state0
        for t in range(T):
            z = gates[t]  # (B, 4H)
            z += hs[t] @ U
            i, f, g, o = z[:, :H], z[:, H : 2 * H], z[:, 2 * H : 3 * H], z[:, 3 * H :]
            sigmoid(xp, z[:, : 2 * H], out=z[:, : 2 * H])  # i, f
            xp.tanh(g, out=g)
            sigmoid(xp, o, out=o)
            c = cs[t + 1]
            xp.multiply(f, cs[t], out=c)
            c += i * g  # c̃_t = f ⊙ c_{t-1} + i ⊙ g
            xp.tanh(c, out=tanh_c[t])
            xp.multiply(o, tanh_c[t], out=hs[t + 1])  # h̃_t = o ⊙ tanh(c̃_t)
            if keep is not None:  # masked step: keep h, c
                hs[t + 1] = xp.where(keep[t], hs[t + 1], hs[t])
                cs[t + 1] = xp.where(keep[t], cs[t + 1], cs[t])
        return LSTMSteps(gates, hs, cs, tanh_c), (hs[T], cs[T])

    def _loop_backward(
        self, cache: RecurrentCache, dy: Array | None, d_final: list
    ) -> tuple[Array, dict[str, Array], tuple]:
        """BPTT from (dh_T, dc_T) = d_final with dy (T, B, H) or None -> (dZ (T, B, 4H), {dU}, (dh_0, dc_0))."""
        xp = self.backend.xp
        gates, hs, cs, tanh_c = cache.steps
        keep = cache.keep
        T, B, G = gates.shape
        H = self.units
        U = self.recurrent_kernel
        dh, dc = d_final  # ∂L/∂h_t, ∂L/∂c_t
        dZ = self.backend.empty((T, B, G))  # ∂L/∂z_t
        for t in reversed(range(T)):
            if dy is not None:
                dh += dy[t]
            z = gates[t]
            i, f, g, o = z[:, :H], z[:, H : 2 * H], z[:, 2 * H : 3 * H], z[:, 3 * H :]
            dz = dZ[t]
            dz_i, dz_f, dz_g, dz_o = dz[:, :H], dz[:, H : 2 * H], dz[:, 2 * H : 3 * H], dz[:, 3 * H :]
            if keep is None:
                dh_new, dc_new = dh, dc
            else:
                m = keep[t]
                dh_new, dc_new = dh * m, dc * m  # dh̃ = m dh, m dc
            dc_new = dc_new + dh_new * o * (1.0 - tanh_c[t] ** 2)  # dc̃
            xp.multiply(dh_new * tanh_c[t], o * (1.0 - o), out=dz_o)
            xp.multiply(dc_new * g, i * (1.0 - i), out=dz_i)
            xp.multiply(dc_new * i, 1.0 - g * g, out=dz_g)
            xp.multiply(dc_new * cs[t], f * (1.0 - f), out=dz_f)
            dh_prev = dz @ U.T  # dz Uᵀ
            dc_prev = dc_new * f
            if keep is not None:
                dh_prev += dh * ~m
                dc_prev += dc * ~m
            dh, dc = dh_prev, dc_prev
        dU = hs[:-1].reshape(T * B, H).T @ dZ.reshape(T * B, G)  # (H, 4H)
        return dZ, {"recurrent_kernel": dU}, (dh, dc)
