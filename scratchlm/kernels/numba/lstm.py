"""Fused LSTM recurrence on the CPU: the whole time loop in one Numba call, U packed once for all its steps.

The same equations as :class:`scratchlm.layers.LSTM` (read its docstring first),
organised for speed:

* the time loop is one Numba function (:func:`forward_rows`, :func:`backward_rows`),
  so no step pays the Python interpreter, and the GIL is released from the
  first step to the last; the batch is split into one shard of rows per core,
  each running its own loop (:mod:`shards`);
* U is packed once per loop into panels (:mod:`panels`), and per step
  ``h_{t-1} U`` is written by the panels' micro-kernel straight into the step's
  slot of the gate buffer (no temporary), then **one** elementwise pass does the
  rest: add the input projection — gathered by token id from a (V, 4H) table,
  so the (T, B, 4H) projection is never materialised — the four activations,
  c_t, h_t and the mask;
* backward, per step, one pass computes dh_t (recurrent + carried + from the
  output), all four gate gradients dz in place over the gates, and dc_{t-1};
  then dz Uᵀ against Uᵀ packed once. tanh(c_t) is recomputed instead of stored;
* ``dU = [h_0 … h_{T-1}]ᵀ dZ`` after the loop, as one big GEMM (OpenBLAS).

Work buffers: the gate buffer (T, B, 4H) holds the input projections, then the
gates i f g o, then (after backward) dz; hs and cs (T+1, B, H) hold h_0..h_T
and c_0..c_T. Nothing else of size T is allocated, and these come from
:mod:`workspace`, reused from step to step.

The elementwise kernels are vectorised (AVX-512 or AVX2). Within one shard
everything runs on one thread. Packed once, U is read in the order the
micro-kernel uses it, where a GEMM call per step (OpenBLAS, before issue 25)
copied it into its own layout every time: the row loops went from 3.66 to 2.05
ms forward and 5.35 to 2.41 backward at B = 32, H = 128, T = 100, and from 707
to 556 / 925 to 627 ms at B = 256, H = 1024 (docs/benchmarks.md).

For a thin batch against a large H (:data:`UNIT_ROWS`), the threads split each
*step* by hidden units instead (:func:`forward_units`, :func:`backward_units`):
thread k owns units j0:j1 — their four gate columns of U, forward, and their
rows of U, backward — packs them once per loop into panels (:mod:`panels`),
computes their share of every step's product with its own micro-kernel, then
their elementwise work, and all meet at a spinning :mod:`barrier` (~0.2 µs)
before the next step. Each core so reads only its share of U per step, in a
layout made for streaming it, where a GEMM call per step would copy U into
its own layout every time. Numba's own ``prange`` per step was measured and
does not pay on two cores: its OpenMP threads spin against OpenBLAS's, and
passive waiting costs about what the split saves (docs/benchmarks.md).
"""

import numpy as np

from .activations import sigmoid, tanh
from .options import jit
from .parallel import barrier, panels, shards, workspace

# The units split runs with at most UNIT_ROWS rows and at least UNIT_UNITS hidden units per thread (shards.parties).
# Measured on the Zen 5 (docs/benchmarks.md, "Every shape on an AVX-512 machine"), against the row shards on the
# same packed panels: below 32 rows there is one shard, so the split is the only way onto the second core; it wins
# where each thread's share of U is large (H >= 512: 1.2-2x per loop at batch 8-16; H = 256: loops alone tie, whole
# training steps of the sweep 8.3 / 15.5 ms by one shard against 7.1 / 12.2 split), and loses to one thread's row
# loop at H = 128 (the products take a few µs, the split's barrier and elementwise overheads do not shrink with
# them); from 32 rows up the shards tie with it or beat it.
UNIT_ROWS = 8
UNIT_UNITS = 128


@jit
def step_forward(z, table, rows, c_prev, h_prev, keep, c, h):
    """One forward step for every sequence b, in place.

    z (B, 4H): h_{t-1} U on entry; the gates [i f g o] on exit.
    table (R, 4H), rows (B,): z[b] += table[rows[b]] — the input projection
        x_t W + b looked up by token id (or rows = 0..B-1 for a dense projection).
    c_prev, h_prev (B, H): c_{t-1}, h_{t-1}. keep (B,) bool: the mask m_t.
    c, h (B, H) out: c_t, h_t (equal to c_{t-1}, h_{t-1} where m_t = 0).
    """
    units_forward(z, table, rows, c_prev, h_prev, keep, c, h, 0, c.shape[1])


@jit
def units_forward(z, table, rows, c_prev, h_prev, keep, c, h, j0, j1):
    """:func:`step_forward` for the hidden units j0:j1 only (their four gate columns, their c and h)."""
    for b in range(z.shape[0]):
        _gates_forward(z[b], table[rows[b]], j0, j1)
        if keep[b]:
            _cell_forward(z[b], c_prev[b], c[b], h[b], j0, j1)
        else:  # masked step: keep h, c
            c[b, j0:j1] = c_prev[b, j0:j1]
            h[b, j0:j1] = h_prev[b, j0:j1]


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
    units_backward(z, c_prev, c, dh_rec, keep_next, dy, keep, dh, dc, 0, c.shape[1])


@jit
def units_backward(z, c_prev, c, dh_rec, keep_next, dy, keep, dh, dc, j0, j1):
    """:func:`step_backward` for the hidden units j0:j1 only."""
    for b in range(z.shape[0]):
        if keep_next[b]:
            dh[b, j0:j1] = dh_rec[b, j0:j1]
        else:  # step t+1 was masked: dh_{t+1} passed through it
            dh[b, j0:j1] += dh_rec[b, j0:j1]
        if dy is not None:
            dh[b, j0:j1] += dy[b, j0:j1]
        if keep[b]:
            _cell_backward(z[b], c_prev[b], c[b], dh[b], dc[b], j0, j1)
        else:  # masked step: nothing flows through it,
            H = c.shape[1]  # dc passes on unchanged
            for g in range(4):
                z[b, g * H + j0 : g * H + j1] = 0


@jit
def _gates_forward(z, xw, j0, j1):
    """z (4H,) = h_{t-1} U, xw (4H,) = x_t W + b  ->  z = [σ(z_i) σ(z_f) tanh(z_g) σ(z_o)], z_· = z + xw,
    for the units j0:j1."""
    zi, zf, zg, zo = _units(z, j0, j1)
    xi, xf, xg, xo = _units(xw, j0, j1)
    for j in range(j1 - j0):
        zi[j] = sigmoid(zi[j] + xi[j])
        zf[j] = sigmoid(zf[j] + xf[j])
    for j in range(j1 - j0):
        zg[j] = tanh(zg[j] + xg[j])
        zo[j] = sigmoid(zo[j] + xo[j])


@jit
def _cell_forward(gates, c_prev, c, h, j0, j1):
    """c = f ⊙ c_prev + i ⊙ g,  h = o ⊙ tanh(c) for the units j0:j1: gates (4H,) = [i f g o], the rest (H,)."""
    i, f, g, o = _units(gates, j0, j1)
    c_prev, c, h = c_prev[j0:j1], c[j0:j1], h[j0:j1]
    for j in range(j1 - j0):
        cj = f[j] * c_prev[j] + i[j] * g[j]
        c[j] = cj
        h[j] = o[j] * tanh(cj)


@jit
def _cell_backward(z, c_prev, c, dh, dc, j0, j1):
    """Gate gradients of one sequence's units j0:j1, in place: z (4H,) gates in, dz out; dc (H,) = dc_t in,
    dc_{t-1} out.

        dc̃ = dc + dh ⊙ o ⊙ (1 − tanh²c_t)
        dz_i = dc̃ ⊙ g ⊙ i(1−i)        dz_f = dc̃ ⊙ c_{t-1} ⊙ f(1−f)
        dz_g = dc̃ ⊙ i ⊙ (1−g²)        dz_o = dh ⊙ tanh(c_t) ⊙ o(1−o)
        dc_{t-1} = dc̃ ⊙ f
    """
    zi, zf, zg, zo = _units(z, j0, j1)
    c_prev, c, dh, dc = c_prev[j0:j1], c[j0:j1], dh[j0:j1], dc[j0:j1]
    one = z.dtype.type(1)
    for j in range(j1 - j0):
        i, f, g, o = zi[j], zf[j], zg[j], zo[j]
        tc = tanh(c[j])  # recomputed, not stored
        dct = dc[j] + dh[j] * o * (one - tc * tc)
        zi[j] = dct * g * (i * (one - i))
        zf[j] = dct * c_prev[j] * (f * (one - f))
        zg[j] = dct * i * (one - g * g)
        zo[j] = dh[j] * tc * (o * (one - o))
        dc[j] = dct * f


@jit
def _units(z, j0, j1):
    """The units j0:j1 of the four gate blocks of z (4H,), as four views indexed from 0 (so that LLVM can
    prove every index in range and vectorise the loops over them)."""
    H = z.shape[0] // 4
    return z[j0:j1], z[H + j0 : H + j1], z[2 * H + j0 : 2 * H + j1], z[3 * H + j0 : 3 * H + j1]


@jit
def forward_rows(z, packed, table, ids, keep, hs, cs, rec, tiles, scratch, lo, hi):
    """The forward time loop of batch rows lo:hi (all T steps), against U packed whole (:func:`panels.pack`).

    Token input (``ids`` (T, B)): z[t] <- h_{t-1} U, then the step adds table[ids[t]].
    Float input (``ids`` None): z[t] holds x_t W + b; rec (B, 4H) is the buffer for h_{t-1} U
    and ``table`` is ignored. keep (T, B) bool. tiles, scratch: this shard's buffers.
    """
    G = z.shape[2]
    for t in range(z.shape[0]):
        h_prev, c_prev, zt = hs[t, lo:hi], cs[t, lo:hi], z[t, lo:hi]
        panels.pack_rows(h_prev, tiles)
        if ids is None:
            r = rec[lo:hi]
            panels.product(tiles, packed, r, 0, G, scratch)
            step_forward(zt, r, np.arange(hi - lo), c_prev, h_prev, keep[t, lo:hi], cs[t + 1, lo:hi], hs[t + 1, lo:hi])
        else:
            panels.product(tiles, packed, zt, 0, G, scratch)
            step_forward(zt, table, ids[t, lo:hi], c_prev, h_prev, keep[t, lo:hi], cs[t + 1, lo:hi], hs[t + 1, lo:hi])


@jit
def backward_rows(z, cs, packed, dy, keep, dh_rec, dh, dc, tiles, scratch, lo, hi):
    """The backward time loop of batch rows lo:hi: :func:`step_backward`, then dh_rec <- dz_t Uᵀ, t = T … 1,
    against Uᵀ packed whole (:func:`panels.pack_transposed`)."""
    T, H = z.shape[0], dh_rec.shape[1]
    all_kept = np.ones(hi - lo, dtype=np.bool_)
    for t in range(T - 1, -1, -1):
        keep_next = all_kept if t == T - 1 else keep[t + 1, lo:hi]
        zt = z[t, lo:hi]
        if dy is None:
            step_backward(
                zt, cs[t, lo:hi], cs[t + 1, lo:hi], dh_rec[lo:hi], keep_next, None, keep[t, lo:hi], dh[lo:hi], dc[lo:hi]
            )
        else:
            step_backward(
                zt,
                cs[t, lo:hi],
                cs[t + 1, lo:hi],
                dh_rec[lo:hi],
                keep_next,
                dy[t, lo:hi],
                keep[t, lo:hi],
                dh[lo:hi],
                dc[lo:hi],
            )
        panels.pack_rows(zt, tiles)
        panels.product(tiles, packed, dh_rec[lo:hi], 0, H, scratch)  # dz_t Uᵀ


@jit
def forward_units(z, U, table, ids, keep, hs, cs, rec, packed, tiles, scratch, sync, parties, j0, j1):
    """The forward time loop of hidden units j0:j1, every row: one of ``parties`` threads that split each step.

    This thread first packs its units' four gate columns of U (:func:`panels.pack`, into packed
    (4, ·, H, C·W)); per step it packs h_{t-1} into row tiles, computes those columns of h_{t-1} U
    (:func:`panels.product`), then their gates, c_t and h_t; all threads meet (:func:`barrier.wait`)
    before the next step reads the whole of h_t. Arguments as in :func:`forward_rows` (rec (B, 4H), for
    float input: each step's product in the Keras layout); tiles and scratch: this thread's buffers.
    """
    T, B = z.shape[:2]
    every_row = np.arange(B)
    pack_gate_columns(U, j0, j1, packed)
    for t in range(T):
        if ids is None:  # the product goes to rec, and the step adds it to z[t]
            units_step(
                rec, z[t], rec, every_row, cs[t], hs[t], keep[t], cs[t + 1], hs[t + 1], packed, tiles, scratch, j0, j1
            )
        else:  # the product goes straight to z[t], and the step adds table[ids[t]]
            units_step(
                z[t], z[t], table, ids[t], cs[t], hs[t], keep[t], cs[t + 1], hs[t + 1], packed, tiles, scratch, j0, j1
            )
        if not barrier.wait(sync, parties, t):
            return


@jit
def pack_gate_columns(U, j0, j1, packed):
    """packed[g] = U's columns of units j0:j1 in gate block g as panels (:func:`panels.pack`), g = 0 … 3.

    U (H, 4H), as it is or as its bfloat16 bits (uint16); packed (4, ·, H, C·W) of the same element type.
    """
    H = U.shape[0]
    for g in range(4):
        panels.pack(U, g * H + j0, g * H + j1, packed[g])


@jit
def units_step(product, z, table, rows, c_prev, h_prev, keep, c, h, packed, tiles, scratch, j0, j1):
    """One forward step of the hidden units j0:j1: their gate columns of h_{t-1} U (against ``packed``, from
    :func:`pack_gate_columns`) into ``product`` (B, 4H), then :func:`units_forward` (z, table, rows, c_prev,
    h_prev, keep, c, h as it takes them; ``product`` is z itself, or the ``table`` it adds by rows 0 … B−1).
    tiles, scratch: the calling thread's buffers (:func:`panels.buffers`)."""
    H = c.shape[1]
    panels.pack_rows(h_prev, tiles)
    for g in range(4):
        panels.product(tiles, packed[g], product, g * H + j0, j1 - j0, scratch)
    units_forward(z, table, rows, c_prev, h_prev, keep, c, h, j0, j1)


@jit
def backward_units(z, cs, U, dy, keep, dh_rec, dh, dc, packed, tiles, scratch, sync, parties, j0, j1):
    """The backward time loop of hidden units j0:j1, every row: one of ``parties`` threads that split each step.

    This thread first packs its units' rows of U as the columns of Uᵀ (:func:`panels.pack_transposed`).
    Per step: :func:`units_backward` writes this thread's columns of dz_t; all threads meet; then this
    thread packs the whole of dz_t and computes its units of dz_t Uᵀ into dh_rec. Arguments as in
    :func:`backward_rows`.
    """
    T = z.shape[0]
    all_kept = np.ones(z.shape[1], dtype=np.bool_)
    panels.pack_transposed(U, j0, j1, packed)
    for t in range(T - 1, -1, -1):
        keep_next = all_kept if t == T - 1 else keep[t + 1]
        if dy is None:
            units_backward(z[t], cs[t], cs[t + 1], dh_rec, keep_next, None, keep[t], dh, dc, j0, j1)
        else:
            units_backward(z[t], cs[t], cs[t + 1], dh_rec, keep_next, dy[t], keep[t], dh, dc, j0, j1)
        if not barrier.wait(sync, parties, T - 1 - t):
            return
        panels.pack_rows(z[t], tiles)
        panels.product(tiles, packed, dh_rec, j0, j1 - j0, scratch)


def _unit_buffers(n, spans, K, M, dtype, gates):
    """Per thread of a units split: U's packed columns (``gates`` blocks of the widest span), and the
    product's buffers for M rows of length K (:func:`panels.buffers`)."""
    most = max(hi - lo for lo, hi in spans)
    packed = workspace.take((n, gates) + panels.panel_shape(K, most, dtype), dtype)
    return packed, [panels.buffers(M, K, dtype) for _ in range(n)]


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
    keep = np.ones((T, B), dtype=bool) if keep is None else np.ascontiguousarray(keep, dtype=bool)
    ids = None if ids is None else np.ascontiguousarray(ids)
    table = z if table is None else table  # (unused for float input)
    rec = np.empty((B, G), dtype=z.dtype)
    U = np.ascontiguousarray(U)
    n = shards.parties(B, H, UNIT_ROWS, UNIT_UNITS)
    if n > 1:  # a few rows: split each step's units instead
        sync, spans = barrier.new(), shards.bounds(H, n)
        packed, work = _unit_buffers(n, spans, H, B, z.dtype, 4)
        shards.together(
            lambda k: forward_units(z, U, table, ids, keep, hs, cs, rec, packed[k], *work[k], sync, n, *spans[k]),
            n,
            sync,
        )
    else:
        packed = workspace.take(panels.panel_shape(H, G, z.dtype), z.dtype)
        panels.pack(U, 0, G, packed)
        shards.run(
            lambda lo, hi: forward_rows(
                z, packed, table, ids, keep, hs, cs, rec, *panels.buffers(hi - lo, H, z.dtype), lo, hi
            ),
            B,
        )
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
    masked = keep is not None
    keep = np.ones((T, B), dtype=bool) if keep is None else np.ascontiguousarray(keep, dtype=bool)
    dy = None if dy is None else np.ascontiguousarray(dy, dtype=z.dtype)
    U = np.ascontiguousarray(U)
    n = shards.parties(B, H, UNIT_ROWS, UNIT_UNITS)
    if n > 1:
        sync, spans = barrier.new(), shards.bounds(H, n)
        packed, work = _unit_buffers(n, spans, G, B, z.dtype, 1)
        shards.together(
            lambda k: backward_units(z, cs, U, dy, keep, dh_rec, dh, dc, packed[k, 0], *work[k], sync, n, *spans[k]),
            n,
            sync,
        )
    else:
        packed = workspace.take(panels.panel_shape(G, H, z.dtype), z.dtype)
        panels.pack_transposed(U, 0, H, packed)
        shards.run(
            lambda lo, hi: backward_rows(
                z, cs, packed, dy, keep, dh_rec, dh, dc, *panels.buffers(hi - lo, G, z.dtype), lo, hi
            ),
            B,
        )
    dh0 = np.where(keep[0][:, None], dh_rec, dh_rec + dh) if masked else dh_rec
    dU = hs[:-1].reshape(T * B, H).T @ z.reshape(T * B, G)  # (H, 4H)
    return z, dU, dh0, dc
