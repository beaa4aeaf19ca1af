"""Fused LSTM recurrence on the CPU: NumPy/OpenBLAS GEMMs plus one Numba pass per step.

The same equations as :class:`scratchlm.layers.LSTM` (read its docstring first),
organised for speed:

* per step, ``h_{t-1} U`` is one GEMM written straight into the step's slot of
  the gate buffer (no temporary), then **one** elementwise pass does the rest:
  add the input projection — gathered by token id from a (V, 4H) table, so the
  (T, B, 4H) projection is never materialised — the four activations, c_t, h_t
  and the mask;
* backward, per step, one pass computes dh_t (recurrent + carried + from the
  output), all four gate gradients dz in place over the gates, and dc_{t-1};
  then one GEMM gives dz Uᵀ. tanh(c_t) is recomputed instead of stored;
* ``dU = [h_0 … h_{T-1}]ᵀ dZ`` after the loop, as one big GEMM.

Work buffers: the gate buffer (T, B, 4H) holds the input projections, then the
gates i f g o, then (after backward) dz; hs and cs (T+1, B, H) hold h_0..h_T
and c_0..c_T. Nothing else of size T is allocated, and these come from
:mod:`workspace`, reused from step to step.

The elementwise kernels run on one thread, vectorised (AVX-512 where the CPU
has it); the GEMMs use OpenBLAS's threads. Splitting the batch over threads
with ``prange`` was measured and does not pay on two cores: with Numba's
OpenMP layer the spinning worker threads fight OpenBLAS's for the cores (a
step became ~100x slower), and with passive waiting or the workqueue layer the
hand-over costs about what it saves (docs/benchmarks.md).
"""

import numpy as np

from . import workspace
from ._jit import jit
from .activations import sigmoid, tanh


@jit
def step_forward(z, table, rows, c_prev, h_prev, keep, c, h):
    """One forward step for every sequence b, in place.

    z (B, 4H): h_{t-1} U on entry; the gates [i f g o] on exit.
    table (R, 4H), rows (B,): z[b] += table[rows[b]] — the input projection
        x_t W + b looked up by token id (or rows = 0..B-1 for a dense projection).
    c_prev, h_prev (B, H): c_{t-1}, h_{t-1}. keep (B,) bool: the mask m_t.
    c, h (B, H) out: c_t, h_t (equal to c_{t-1}, h_{t-1} where m_t = 0).
    """
    for b in range(z.shape[0]):
        _gates_forward(z[b], table[rows[b]])
        if keep[b]:
            _cell_forward(z[b], c_prev[b], c[b], h[b])
        else:                                                       # masked step: keep h, c
            c[b] = c_prev[b]
            h[b] = h_prev[b]


@jit
def step_backward(z, c_prev, c, dh_rec, keep_next, dy, keep, dh, dc):
    """One backward step for every sequence b, in place.

    z (B, 4H): the gates [i f g o] of step t on entry; dz_t on exit.
    c_prev, c (B, H): c_{t-1}, c_t.
    dh_rec (B, H): dz_{t+1} Uᵀ (for the last step: the gradient of the final h).
    keep_next (B,) bool: m_{t+1} (all True for the last step).
    dy (B, H) or None: the gradient of the output y_t.
    keep (B,) bool: m_t.
    dh (B, H): ∂L/∂h_{t+1} on entry; on exit ∂L/∂h_t, that is
        dh_t = dz_{t+1} Uᵀ + (1 − m_{t+1}) dh_{t+1} + dy_t.
    dc (B, H): ∂L/∂c_t on entry; ∂L/∂c_{t-1} on exit.
    """
    for b in range(z.shape[0]):
        if keep_next[b]:
            dh[b] = dh_rec[b]
        else:                                                       # step t+1 was masked: dh_{t+1} passed through it
            dh[b] += dh_rec[b]
        if dy is not None:
            dh[b] += dy[b]
        if keep[b]:
            _cell_backward(z[b], c_prev[b], c[b], dh[b], dc[b])
        else:                                                       # masked step: nothing flows through it,
            z[b] = 0                                                # dc passes on unchanged


@jit
def _gates_forward(z, xw):
    """z (4H,) = h_{t-1} U, xw (4H,) = x_t W + b  ->  z = [σ(z_i) σ(z_f) tanh(z_g) σ(z_o)], z_· = z + xw."""
    H = z.shape[0] // 4
    for k in range(2 * H):
        z[k] = sigmoid(z[k] + xw[k])                                # i, f
    for k in range(H):
        z[2 * H + k] = tanh(z[2 * H + k] + xw[2 * H + k])           # g
    for k in range(H):
        z[3 * H + k] = sigmoid(z[3 * H + k] + xw[3 * H + k])        # o


@jit
def _cell_forward(gates, c_prev, c, h):
    """c = f ⊙ c_prev + i ⊙ g,  h = o ⊙ tanh(c): gates (4H,) = [i f g o], the rest (H,)."""
    H = c.shape[0]
    for j in range(H):
        cj = gates[H + j] * c_prev[j] + gates[j] * gates[2 * H + j]
        c[j] = cj
        h[j] = gates[3 * H + j] * tanh(cj)


@jit
def _cell_backward(z, c_prev, c, dh, dc):
    """Gate gradients of one sequence, in place: z (4H,) gates in, dz out; dc (H,) = dc_t in, dc_{t-1} out.

        dc̃ = dc + dh ⊙ o ⊙ (1 − tanh²c_t)
        dz_i = dc̃ ⊙ g ⊙ i(1−i)        dz_f = dc̃ ⊙ c_{t-1} ⊙ f(1−f)
        dz_g = dc̃ ⊙ i ⊙ (1−g²)        dz_o = dh ⊙ tanh(c_t) ⊙ o(1−o)
        dc_{t-1} = dc̃ ⊙ f
    """
    H = c.shape[0]
    one = z.dtype.type(1)
    for j in range(H):
        i, f, g, o = z[j], z[H + j], z[2 * H + j], z[3 * H + j]
        tc = tanh(c[j])                                             # recomputed, not stored
        dct = dc[j] + dh[j] * o * (one - tc * tc)
        z[j] = dct * g * (i * (one - i))
        z[H + j] = dct * c_prev[j] * (f * (one - f))
        z[2 * H + j] = dct * i * (one - g * g)
        z[3 * H + j] = dh[j] * tc * (o * (one - o))
        dc[j] = dct * f


def forward(z, U, h0, c0, keep=None, table=None, ids=None):
    """Run the recurrence; returns (hs, cs), each (T+1, B, H): h_0..h_T and c_0..c_T.

    With ``table`` (V, 4H) and ``ids`` (T, B): the input projection of step t is
    table[ids[t]] and ``z`` (T, B, 4H) is only a buffer (its contents are ignored).
    Without: ``z`` holds the projections x_t W + b. Either way ``z`` ends up
    holding the gates. keep (T, B) bool or None (no mask).
    """
    T, B, G = z.shape
    H = G // 4
    hs = workspace.take((T + 1, B, H), z.dtype)
    cs = workspace.take((T + 1, B, H), z.dtype)
    hs[0], cs[0] = h0, c0
    all_kept = np.ones(B, dtype=bool)
    keep = None if keep is None else np.ascontiguousarray(keep, dtype=bool)
    ids = None if ids is None else np.ascontiguousarray(ids)
    if table is None:
        rec = np.empty((B, G), dtype=z.dtype)                       # h_{t-1} U
        rows = np.arange(B)
    for t in range(T):
        keep_t = all_kept if keep is None else keep[t]
        if table is None:                                           # z[t] holds x_t W + b
            np.matmul(hs[t], U, out=rec)
            step_forward(z[t], rec, rows, cs[t], hs[t], keep_t, cs[t + 1], hs[t + 1])
        else:                                                       # z[t] <- h_{t-1} U, then + table[ids[t]]
            np.matmul(hs[t], U, out=z[t])
            step_forward(z[t], table, ids[t], cs[t], hs[t], keep_t, cs[t + 1], hs[t + 1])
    return hs, cs


def backward(z, hs, cs, U, dy=None, dh_T=None, dc_T=None, keep=None):
    """BPTT over the gates ``z`` (T, B, 4H) left by :func:`forward`, in place.

    dy: (T, B, H) gradients of the outputs h_1..h_T (already multiplied by the
    output mask s_t), or None. dh_T, dc_T (B, H) or None: gradients of the
    final state. Returns (dZ, dU, dh_0, dc_0); dZ is ``z``, overwritten.
    """
    T, B, G = z.shape
    H = G // 4
    dh_rec = np.zeros((B, H), dtype=z.dtype) if dh_T is None else np.array(dh_T, dtype=z.dtype)
    dc = np.zeros((B, H), dtype=z.dtype) if dc_T is None else np.array(dc_T, dtype=z.dtype)
    dh = np.zeros((B, H), dtype=z.dtype)
    all_kept = np.ones(B, dtype=bool)
    keep = None if keep is None else np.ascontiguousarray(keep, dtype=bool)
    dy = None if dy is None else np.ascontiguousarray(dy, dtype=z.dtype)
    Ut = np.ascontiguousarray(U.T)                                  # (4H, H)
    for t in reversed(range(T)):
        keep_next = all_kept if keep is None or t == T - 1 else keep[t + 1]
        keep_t = all_kept if keep is None else keep[t]
        step_backward(z[t], cs[t], cs[t + 1], dh_rec, keep_next, None if dy is None else dy[t], keep_t, dh, dc)
        np.matmul(z[t], Ut, out=dh_rec)                             # dz_t Uᵀ
    dh0 = dh_rec if keep is None else np.where(keep[0][:, None], dh_rec, dh_rec + dh)
    dU = hs[:-1].reshape(T * B, H).T @ z.reshape(T * B, G)          # (H, 4H)
    return z, dU, dh0, dc
