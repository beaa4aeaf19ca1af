"""Fused GRU recurrence on the CPU: the whole time loop in one Numba call, OpenBLAS GEMMs inside it.

The same equations as :class:`scratchlm.layers.GRU` (read its docstring first;
Keras 3's ``reset_after=True`` cell), organised like :mod:`scratchlm.kernels.numba.lstm` (the
time loop in one Numba function calling OpenBLAS itself, run in batch shards,
one per core: :mod:`shards`):

* per step, ``h_{t-1} U`` is one GEMM into a (B, 3H) buffer (not into the gate
  buffer as for the LSTM: the reset gate multiplies the recurrent part of h̃
  alone, so x̂ and û must stay apart), then **one** Numba call does the rest:
  add the input projection x̂ — gathered by token id from a (V, 3H) table, so
  the (T, B, 3H) projection is never materialised on the token path — and
  b_rec, the two sigmoids, û_h, h̃, h_t and the mask;
* backward, per step, one call computes dh_t (recurrent + carried + from the
  output), the gate gradients dx̂ in place over the gates, dû (the same but
  da_h ⊙ r in the h block) into a (B, 3H) buffer, and the carried part
  dh' ⊙ z + (1 − m) dh of dh_{t-1}; then one GEMM gives dû Uᵀ;
* ``dU = [h_0 … h_{T-1}]ᵀ dÛ`` after the loop, as GEMMs over all T·B rows: the
  z and r blocks of dÛ are those of dX̂, and the h block (da_h ⊙ r) is kept
  over û_h, which the backward no longer needs once step t is done.

Work buffers: the gate buffer (T, B, 3H) holds the input projections, then the
gates z r h̃, then (after backward) dx̂; hs (T+1, B, H) holds h_0..h_T and uh
(T, B, H) û_h (then dû_h). Only these have size T; hs and uh come from
:mod:`workspace`.

As for the LSTM the elementwise kernels are vectorised and a shard runs on one
thread (no ``prange``: see :mod:`scratchlm.kernels.numba.lstm`). Each batch
row gets short passes over a few (B-row slices of) arrays each — four forward,
four backward — so that LLVM's runtime alias checks stay few and every loop
vectorises (docs/design.md §4: one loop over many arrays did not).
"""

import numpy as np

from .activations import sigmoid, tanh
from .options import jit
from .parallel import blas, shards, workspace


@jit
def step_forward(a, table, rows, u, b_rec, h_prev, keep, h, uh):
    """One forward step for every sequence b, in place.

    a (B, 3H): x̂ = x_t W + b_in on entry when ``table`` is None (else ignored);
        the gates [z r h̃] on exit.
    table (R, 3H) and rows (B,), or both None: x̂[b] = table[rows[b]] — the
        input projection looked up by token id.
    u (B, 3H): h_{t-1} U.  b_rec (3H,).  h_prev (B, H): h_{t-1}.
    keep (B,) bool: the mask m_t.
    h (B, H) out: h_t (h_{t-1} where m_t = 0).  uh (B, H) out: û_h = (h_{t-1} U + b_rec)_h.
    """
    H = h.shape[1]
    for b in range(a.shape[0]):
        ab = a[b]
        z, r, ht = ab[:H], ab[H : 2 * H], ab[2 * H :]
        _add(u[b, 2 * H :], b_rec[2 * H :], uh[b])  # û_h
        if table is None:
            _gates_inplace(ab[: 2 * H], u[b, : 2 * H], b_rec[: 2 * H])
            _candidate_inplace(ht, r, uh[b])
        else:
            xw = table[rows[b]]
            _gates(ab[: 2 * H], xw[: 2 * H], u[b, : 2 * H], b_rec[: 2 * H])
            _candidate(ht, xw[2 * H :], r, uh[b])
        if keep[b]:
            _hidden(z, ht, h_prev[b], h[b])
        else:  # masked step: keep h
            h[b] = h_prev[b]


@jit
def _add(x, y, out):
    """out = x + y."""
    for j in range(out.shape[0]):
        out[j] = x[j] + y[j]


@jit
def _gates(a, x, u, b):
    """a (2H,) = [σ(x̂_z + û_z)  σ(x̂_r + û_r)] with x = x̂_{z,r}, û = u + b."""
    for k in range(a.shape[0]):
        a[k] = sigmoid(x[k] + (u[k] + b[k]))


@jit
def _gates_inplace(a, u, b):
    """:func:`_gates` with x̂ in a on entry (a separate function: passing a as x would make LLVM's
    runtime overlap check fail and run the scalar loop)."""
    for k in range(a.shape[0]):
        a[k] = sigmoid(a[k] + (u[k] + b[k]))


@jit
def _candidate(ht, x, r, uh):
    """ht (H,) = h̃ = tanh(x̂_h + r ⊙ û_h), x = x̂_h, uh = û_h."""
    for j in range(ht.shape[0]):
        ht[j] = tanh(x[j] + r[j] * uh[j])


@jit
def _candidate_inplace(ht, r, uh):
    """:func:`_candidate` with x̂_h in ht on entry."""
    for j in range(ht.shape[0]):
        ht[j] = tanh(ht[j] + r[j] * uh[j])


@jit
def _hidden(z, ht, h_prev, h):
    """h = z ⊙ (h_{t-1} − h̃) + h̃  (= z ⊙ h_{t-1} + (1 − z) ⊙ h̃)."""
    for j in range(h.shape[0]):
        h[j] = z[j] * (h_prev[j] - ht[j]) + ht[j]


@jit
def step_backward(a, h_prev, uh, dh_rec, dy, keep, carry, du):
    """One backward step for every sequence b, in place.

    a (B, 3H): the gates [z r h̃] of step t on entry; dx̂_t = [da_z da_r da_h] on exit.
    h_prev (B, H): h_{t-1}.  uh (B, H): û_h on entry; dû_h = da_h ⊙ r on exit.
    dh_rec (B, H): dû_{t+1} Uᵀ (for the last step: the gradient of the final h).
    dy (B, H) or None: the gradient of the output y_t.  keep (B,) bool: m_t.
    carry (B, H): on entry the part of ∂L/∂h_t that did not go through U,
        dh'_{t+1} ⊙ z_{t+1} + (1 − m_{t+1}) dh_{t+1} (zeros for the last step);
        on exit the same for step t, so that dh_{t-1} = dû_t Uᵀ + carry.
    du (B, 3H) out: dû_t = [da_z da_r da_h ⊙ r] (zeros where m_t = 0).
    """
    H = h_prev.shape[1]
    for b in range(a.shape[0]):
        d = carry[b]
        if dy is None:
            _add(dh_rec[b], d, d)  # ∂L/∂h_t
        else:
            _add_add(dh_rec[b], d, dy[b], d)
        if keep[b]:  # dh' = dh
            ab, dub = a[b], du[b]
            z, r, ht = ab[:H], ab[H : 2 * H], ab[2 * H :]
            du_z, du_r, du_h = dub[:H], dub[H : 2 * H], dub[2 * H :]
            _dz_dh(z, ht, h_prev[b], d, du_z, du_h)  # du_z <- da_z, du_h <- da_h
            _carry(z, d, du_z, ht, du_h)  # d <- dh ⊙ z; z <- da_z, ht <- da_h
            _dr(r, du_h, uh[b], du_r)  # r, du_r <- da_r; du_h, uh <- da_h ⊙ r
        else:  # masked: nothing flows through the step,
            a[b] = 0  # dh passes on unchanged (carry = dh)
            du[b] = 0
            uh[b] = 0


@jit
def _add_add(x, y, w, out):
    """out = (x + y) + w."""
    for j in range(out.shape[0]):
        out[j] = (x[j] + y[j]) + w[j]


@jit
def _dz_dh(z, ht, h_prev, dh, da_z, da_h):
    """da_h = dh ⊙ (1 − z) ⊙ (1 − h̃²),  da_z = dh ⊙ (h_{t-1} − h̃) ⊙ z(1 − z)."""
    one = z.dtype.type(1)
    for j in range(z.shape[0]):
        zj, hj, dj = z[j], ht[j], dh[j]
        da_h[j] = dj * (one - zj) * (one - hj * hj)
        da_z[j] = dj * (h_prev[j] - hj) * zj * (one - zj)


@jit
def _carry(z, dh, da_z, ht, da_h):
    """dh <- dh ⊙ z (the part of dh_{t-1} that skips U), then z <- da_z, ht <- da_h."""
    for j in range(z.shape[0]):
        dh[j] = dh[j] * z[j]
        z[j] = da_z[j]
        ht[j] = da_h[j]


@jit
def _dr(r, du_h, uh, du_r):
    """da_r = da_h ⊙ û_h ⊙ r(1 − r) into r and du_r; du_h (da_h in) and uh (û_h in) <- da_h ⊙ r."""
    one = r.dtype.type(1)
    for j in range(r.shape[0]):
        rj, dah = r[j], du_h[j]
        dar = dah * uh[j] * rj * (one - rj)
        duh = dah * rj
        r[j] = dar
        du_r[j] = dar
        du_h[j] = duh
        uh[j] = duh


@jit
def forward_rows(gemm_at, a, U, b_rec, table, ids, keep, hs, uh, u, lo, hi):
    """The forward time loop of batch rows lo:hi (all T steps): u <- h_{t-1} U by the BLAS at ``gemm_at``,
    then :func:`step_forward`. ``ids`` None: a[t] holds x̂ (``table`` ignored)."""
    for t in range(a.shape[0]):
        ut = u[lo:hi]
        blas.gemm(gemm_at, hs[t, lo:hi], U, ut)
        if ids is None:
            step_forward(
                a[t, lo:hi], None, None, ut, b_rec, hs[t, lo:hi], keep[t, lo:hi], hs[t + 1, lo:hi], uh[t, lo:hi]
            )
        else:
            step_forward(
                a[t, lo:hi],
                table,
                ids[t, lo:hi],
                ut,
                b_rec,
                hs[t, lo:hi],
                keep[t, lo:hi],
                hs[t + 1, lo:hi],
                uh[t, lo:hi],
            )


@jit
def backward_rows(gemm_at, a, hs, uh, U, dy, keep, dh_rec, carry, du, lo, hi):
    """The backward time loop of batch rows lo:hi: :func:`step_backward`, then dh_rec <- dû_t Uᵀ, t = T … 1."""
    for t in range(a.shape[0] - 1, -1, -1):
        dut = du[lo:hi]
        if dy is None:
            step_backward(
                a[t, lo:hi], hs[t, lo:hi], uh[t, lo:hi], dh_rec[lo:hi], None, keep[t, lo:hi], carry[lo:hi], dut
            )
        else:
            step_backward(
                a[t, lo:hi], hs[t, lo:hi], uh[t, lo:hi], dh_rec[lo:hi], dy[t, lo:hi], keep[t, lo:hi], carry[lo:hi], dut
            )
        blas.gemm(gemm_at, dut, U, dh_rec[lo:hi], True)  # dû_t Uᵀ


def forward(a, U, b_rec, h0, keep=None, table=None, ids=None):
    """Run the recurrence; returns (hs (T+1, B, H) = h_0..h_T, uh (T, B, H) = û_h of every step).

    With ``table`` (V, 3H) and ``ids`` (T, B): the input projection of step t is
    table[ids[t]] and ``a`` (T, B, 3H) is only a buffer (its contents are ignored).
    Without: ``a`` holds the projections x_t W + b_in. Either way ``a`` ends up
    holding the gates [z r h̃]. b_rec (3H,): the recurrent bias. keep (T, B) bool
    or None (no mask).
    """
    T, B, G = a.shape
    H = G // 3
    hs = workspace.take((T + 1, B, H), a.dtype)
    uh = workspace.take((T, B, H), a.dtype)
    hs[0] = h0
    keep = np.ones((T, B), dtype=bool) if keep is None else np.ascontiguousarray(keep, dtype=bool)
    b_rec = np.ascontiguousarray(b_rec, dtype=a.dtype)
    ids = None if ids is None else np.ascontiguousarray(ids)
    U = np.ascontiguousarray(U)
    u = np.empty((B, G), dtype=a.dtype)  # h_{t-1} U
    gemm_at = blas.GEMM.get(a.dtype)
    if gemm_at is None:  # no OpenBLAS to call: the loop in Python
        for t in range(T):
            np.matmul(hs[t], U, out=u)
            step_forward(a[t], table, None if ids is None else ids[t], u, b_rec, hs[t], keep[t], hs[t + 1], uh[t])
        return hs, uh
    shards.run(lambda lo, hi: forward_rows(gemm_at, a, U, b_rec, table, ids, keep, hs, uh, u, lo, hi), B)
    return hs, uh


def backward(a, hs, uh, U, dy=None, dh_T=None, keep=None):
    """BPTT over the gates ``a`` (T, B, 3H) and ``uh`` (T, B, H) left by :func:`forward`, in place.

    dy: (T, B, H) gradients of the outputs h_1..h_T (already multiplied by the
    output mask s_t), or None. dh_T (B, H) or None: gradient of the final h.
    Returns (dX̂, dU, db_rec, dh_0): dX̂ (T, B, 3H) is ``a``, overwritten; ``uh``
    is overwritten with dû_h.
    """
    T, B, G = a.shape
    H = G // 3
    dh_rec = np.zeros((B, H), dtype=a.dtype) if dh_T is None else np.array(dh_T, dtype=a.dtype)
    carry = np.zeros((B, H), dtype=a.dtype)
    du = np.empty((B, G), dtype=a.dtype)  # dû_t
    keep = np.ones((T, B), dtype=bool) if keep is None else np.ascontiguousarray(keep, dtype=bool)
    dy = None if dy is None else np.ascontiguousarray(dy, dtype=a.dtype)
    U = np.ascontiguousarray(U)
    gemm_at = blas.GEMM.get(a.dtype)
    if gemm_at is None:  # no OpenBLAS to call: the loop in Python
        for t in reversed(range(T)):
            step_backward(a[t], hs[t], uh[t], dh_rec, None if dy is None else dy[t], keep[t], carry, du)
            np.matmul(du, U.T, out=dh_rec)  # dû_t Uᵀ
    else:
        shards.run(lambda lo, hi: backward_rows(gemm_at, a, hs, uh, U, dy, keep, dh_rec, carry, du, lo, hi), B)
    dh0 = dh_rec + carry
    hs2 = hs[:-1].reshape(T * B, H).T  # (H, T·B)
    dX2 = a.reshape(T * B, G)
    duh2 = uh.reshape(T * B, H)
    dU = np.empty((H, G), dtype=a.dtype)
    np.matmul(hs2, dX2[:, : 2 * H], out=dU[:, : 2 * H])  # z, r blocks: dÛ = dX̂ there
    np.matmul(hs2, duh2, out=dU[:, 2 * H :])  # h block: da_h ⊙ r
    ones = np.ones(T * B, dtype=a.dtype)  # column sums as GEMVs: a strided
    db_rec = np.concatenate([ones @ dX2[:, : 2 * H], ones @ duh2])  # .sum(axis=0) took 12x as long
    return a, dU, db_rec, dh0
