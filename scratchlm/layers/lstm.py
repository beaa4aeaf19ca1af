"""The LSTM cell in Keras' layout: gate math and backpropagation through time."""

from typing import NamedTuple

from ..initializers import glorot_uniform, orthogonal
from .recurrent import Recurrent


def _sigmoid(xp, x, out):
    """σ(x) = 1 / (1 + e^{-x}) written as ½·tanh(x/2) + ½: one ufunc, no overflow."""
    xp.multiply(x, 0.5, out=out)
    xp.tanh(out, out=out)
    out *= 0.5
    out += 0.5
    return out


class LSTMSteps(NamedTuple):
    """The LSTM's record of its time loop."""
    gates: object             # (T, B, 4H) activations [i f g o] (the fused backward overwrites them with dz)
    hs: object                # (T+1, B, H) h_0 … h_T
    cs: object                # (T+1, B, H) c_0 … c_T
    tanh_c: object            # (T, B, H) tanh(c̃_t), or None on the fused path (recomputed there)


class LSTM(Recurrent):
    gates = 4
    state_names = ("h", "c")

    def _init_params(self, input_size, units, rng):
        H = units
        self.kernel = glorot_uniform((input_size, 4 * H), rng, self.backend)   # W (D, 4H)
        self.recurrent_kernel = orthogonal((H, 4 * H), rng, self.backend)     # U (H, 4H)
        self.bias = self.backend.zeros((4 * H,))                               # b (4H,)
        self.bias[H:2 * H] = 1.0                                               # unit forget bias

    def _loop(self, gates, table, ids, state0, keep):
        """The forward time loop over gates (T, B, 4H) = x_t W + b -> (hs, LSTMSteps, (h_T, c_T))."""
        xp = self.backend.xp
        T, B, _ = gates.shape
        H = self.units
        U = self.recurrent_kernel
        h0, c0 = state0
        if self.fused is not None:                                        # the same loop, fused per step
            hs, cs = self.fused.lstm_forward(gates, U, h0, c0, None if keep is None else keep[:, :, 0], table, ids)
            return hs, LSTMSteps(gates, hs, cs, None), (hs[T], cs[T])
        hs = self.backend.empty((T + 1, B, H))                            # h_0 … h_T
        cs = self.backend.empty((T + 1, B, H))                            # c_0 … c_T
        tanh_c = self.backend.empty((T, B, H))                            # tanh(c̃_t)
        hs[0], cs[0] = h0, c0
        for t in range(T):
            z = gates[t]                                                  # (B, 4H)
            z += hs[t] @ U
            i, f, g, o = z[:, :H], z[:, H:2 * H], z[:, 2 * H:3 * H], z[:, 3 * H:]
            _sigmoid(xp, z[:, :2 * H], out=z[:, :2 * H])                  # i, f
            xp.tanh(g, out=g)
            _sigmoid(xp, o, out=o)
            c = cs[t + 1]
            xp.multiply(f, cs[t], out=c)
            c += i * g                                                    # c̃_t = f ⊙ c_{t-1} + i ⊙ g
            xp.tanh(c, out=tanh_c[t])
            xp.multiply(o, tanh_c[t], out=hs[t + 1])                      # h̃_t = o ⊙ tanh(c̃_t)
            if keep is not None:                                          # masked step: keep h, c
                hs[t + 1] = xp.where(keep[t], hs[t + 1], hs[t])
                cs[t + 1] = xp.where(keep[t], cs[t + 1], cs[t])
        return hs, LSTMSteps(gates, hs, cs, tanh_c), (hs[T], cs[T])

    def _loop_backward(self, cache, dy, d_final):
        """BPTT from (dh_T, dc_T) = d_final with dy (T, B, H) or None -> (dZ (T, B, 4H), {dU}, (dh_0, dc_0))."""
        xp = self.backend.xp
        gates, hs, cs, tanh_c = cache.steps
        keep = cache.keep
        T, B, G = gates.shape
        H = self.units
        U = self.recurrent_kernel
        dh, dc = d_final                                                  # ∂L/∂h_t, ∂L/∂c_t
        if self.fused is not None:                                        # the same loop, one fused pass per step
            dZ, dU, dh, dc = self.fused.lstm_backward(gates, hs, cs, U, dy, dh, dc,
                                                      None if keep is None else keep[:, :, 0])
            return dZ, {"recurrent_kernel": dU}, (dh, dc)
        dZ = self.backend.empty((T, B, G))                                # ∂L/∂z_t
        for t in reversed(range(T)):
            if dy is not None:
                dh += dy[t]
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
