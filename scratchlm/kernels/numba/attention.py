"""Fused causal (and padded) attention on the CPU: FlashAttention's scheme, NumPy/OpenBLAS GEMMs + Numba.

The same function as :meth:`scratchlm.layers.MultiHeadAttention._attention` (read
the module docstring of ``scratchlm/layers/attention.py`` for Keras' semantics),
without ever storing the (T, S) probabilities of a head. Per head, with
Sc = Q Kᵀ · 1/√K and the mask applied by replacement:

forward, over key blocks j (online softmax; m, l and the output O per query row):

    m' = max(m, max_j Sc_j)           over the keys the row may see
    P̃_j = exp(Sc_j − m')              0 where masked
    l  ← l · e^{m − m'} + Σ_j P̃_j      O ← O · e^{m − m'} + P̃_j V_j        m ← m'
    at the end:  O ← O / l,  lse = m + log l     (the row log-sum-exp: all backward keeps)

backward, per block, recomputing the probabilities from lse (dO = ∂L/∂O):

    P  = exp(Sc − lse)  (0 where masked)          D = rowsum(dO ⊙ O)   (= rowsum(dP ⊙ P))
    dV += Pᵀ dO         dP = dO Vᵀ                dS = P ⊙ (dP − D)
    dQ += dS K / √K     dK += dSᵀ Q / √K

A row that may see no key at all (a padded query, or a query before the first
real key) is uniform over all S keys in Keras (S copies of the fill value): its
output is the mean of V over S, its lse is stored as +inf (so the block loops
give it P = 0), and backward adds its share dV_j += dO_i / S to every key; its
dS is 0, as masked scores get no gradient.

Where one key block holds every key (S ≤ ``BLOCK_K``, the seed's T = 99), the
forward normalises P before the P V product, as the reference does, so the two
round alike. Blocks (``BLOCK_Q`` × ``BLOCK_K``) that the mask hides entirely
are skipped (the upper triangle of a causal mask). Batch rows are taken in
groups so that a score block stays under ``WORK`` elements: memory beyond the
inputs and outputs is O(WORK), whatever T.

Threads: the batch rows are split into one shard per core (:mod:`shards`), each
running its blocks on its own thread with a single-threaded BLAS. A head's
products are small (99 × 256 × 99 at the seed's sizes): through OpenBLAS's own
threads each of the B·N of them would wake both cores and wait for the slower,
hundreds of hand-overs per step, which on a busy machine cost far more than the
arithmetic (measured on a shared machine: the two attention backwards of a step
took 3.2 s that way, 0.36 s with a one-thread BLAS); sharded, the threads meet
once per call, and the elementwise passes run on both cores too.

Layouts: q (B, N, T, K) and k, v (B, N, S, K), any strides (the layer passes
head-major views of its (B, T, N, K) projections); the outputs o, dq, dk, dv
are head-major views of (B, T, N, K) arrays, so that the output projection and
the projection backward read them as (B·T, N·K) without a copy. mask: (B, T, S)
bool (True = may attend; a broadcast view is fine) or None. Elementwise passes
are Numba (vectorised), the GEMMs NumPy's batched matmul.
"""

import math

import numpy as np

from .activations import exp
from .options import jit
from .parallel import shards
from .xent import row_sum

BLOCK_Q = 128  # query rows per block
BLOCK_K = 128  # keys per block
WORK = 1 << 20  # elements of one group's score block (4 MB in float32)


# -- the elementwise kernels ---------------------------------------------------------------------


@jit
def _softmax_block(s, mask, masked, scale, lse):
    """All keys in one block: s (G, N, tq, S) = Q Kᵀ on entry, P on exit; lse (G, N, tq) out.

    mask (G, tq, S) bool, read only if ``masked``. A row with no visible key gets P = 0 and lse = +inf.
    """
    G, N, tq, S = s.shape
    zero, ninf, inf = s.dtype.type(0), s.dtype.type(-np.inf), s.dtype.type(np.inf)
    for g in range(G):
        for n in range(N):
            for i in range(tq):
                row = s[g, n, i]
                m = _scale_mask_max(row, mask, g, i, masked, scale)
                if m == ninf:  # no key: uniform later (Keras)
                    row[:] = zero
                    lse[g, n, i] = inf
                    continue
                for j in range(S):
                    row[j] = exp(row[j] - m) if row[j] != ninf else zero
                total = row_sum(row)
                for j in range(S):
                    row[j] = row[j] / total
                lse[g, n, i] = m + math.log(total)


@jit
def _scale_mask_max(row, mask, g, i, masked, scale):
    """row (S,) <- Sc = row · scale, −inf where ``masked`` and not mask[g, i]; returns max Sc (−inf: no key)."""
    m = row.dtype.type(-np.inf)
    for j in range(row.shape[0]):
        x = row[j] * scale
        if masked and not mask[g, i, j]:
            x = row.dtype.type(-np.inf)
        row[j] = x
        m = max(m, x)
    return m


@jit
def _online_block(s, mask, masked, scale, m, ell, alpha):
    """One key block of the online softmax: s (G, N, tq, tk) = Q Kᵀ on entry, P̃ = exp(Sc − m') on exit.

    m, l (G, N, tq): the running row max and sum, updated; alpha (G, N, tq) out:
    e^{m − m'}, the factor the running output is rescaled by (1 while a row has seen no key).
    """
    G, N, tq, tk = s.shape
    zero, one, ninf = s.dtype.type(0), s.dtype.type(1), s.dtype.type(-np.inf)
    for g in range(G):
        for n in range(N):
            for i in range(tq):
                row = s[g, n, i]
                mb = _scale_mask_max(row, mask, g, i, masked, scale)
                m_old = m[g, n, i]
                m_new = max(m_old, mb)
                if m_new == ninf:  # nothing seen yet
                    row[:] = zero
                    alpha[g, n, i] = one
                    continue
                a = exp(m_old - m_new) if m_old != ninf else zero
                for j in range(tk):
                    row[j] = exp(row[j] - m_new) if row[j] != ninf else zero
                ell[g, n, i] = ell[g, n, i] * a + row_sum(row)
                m[g, n, i] = m_new
                alpha[g, n, i] = a


@jit
def _finish(o, m, ell, lse):
    """o (G, N, tq, K) ← o / l, lse = m + log l; rows that saw no key: o untouched, lse = +inf."""
    G, N, tq, K = o.shape
    inf = lse.dtype.type(np.inf)
    for g in range(G):
        for n in range(N):
            for i in range(tq):
                if ell[g, n, i] == 0:
                    lse[g, n, i] = inf
                    continue
                inv = ell[g, n, i]
                for d in range(K):
                    o[g, n, i, d] = o[g, n, i, d] / inv
                lse[g, n, i] = m[g, n, i] + math.log(ell[g, n, i])


@jit
def _probabilities(s, mask, masked, scale, lse):
    """s (G, N, tq, tk) = Q Kᵀ on entry; P = exp(Sc − lse) on exit, 0 where masked or lse = +inf."""
    G, N, tq, tk = s.shape
    zero, inf = s.dtype.type(0), s.dtype.type(np.inf)
    for g in range(G):
        for n in range(N):
            for i in range(tq):
                row = s[g, n, i]
                c = lse[g, n, i]
                if c == inf:
                    row[:] = zero
                    continue
                for j in range(tk):
                    p = exp(row[j] * scale - c)
                    row[j] = zero if masked and not mask[g, i, j] else p


@jit
def _score_gradient(p, dp, D, scale):
    """dp (G, N, tq, tk) = dO Vᵀ on entry; dS / √K = P ⊙ (dP − D) · scale on exit (D (G, N, tq))."""
    G, N, tq, tk = dp.shape
    for g in range(G):
        for n in range(N):
            for i in range(tq):
                c = D[g, n, i]
                prow, row = p[g, n, i], dp[g, n, i]
                for j in range(tk):
                    row[j] = prow[j] * (row[j] - c) * scale


@jit(fastmath={"reassoc", "contract"})  # a vectorised reduction: re-associated and fused, nothing else
def dot(x, y):
    """Σ_k x[k] y[k], summed in any order (vectorised)."""
    s = x.dtype.type(0)
    for k in range(x.shape[0]):
        s += x[k] * y[k]
    return s


@jit
def _row_dot(a, b, out):
    """out (B, N, T) = Σ_d a ⊙ b over the last axis of a, b (B, N, T, K)."""
    B, N, T, K = a.shape
    for x in range(B):
        for n in range(N):
            for i in range(T):
                s = out.dtype.type(0)
                for d in range(K):
                    s += a[x, n, i, d] * b[x, n, i, d]
                out[x, n, i] = s


# -- the drivers -----------------------------------------------------------------------------------
# Every array a kernel gets is a fresh C-contiguous one (score blocks, per-block pieces of the mask and of
# lse) or goes to a kernel compiled for any layout (_finish, _row_dot, _attend: head-major views are
# contiguous or not depending on the shape), so each kernel compiles once per dtype, whatever the shapes.


def _for_any_layout(kernel, signature):
    """Compile ``kernel`` for float32 and float64 only (``signature``: its Numba signature with F for the
    float type; ``[:, :]`` any layout, ``[:, ::1]`` C-contiguous), and for nothing else: an argument of
    another layout (a contiguous view, say) is converted to the compiled one and runs the same code."""
    for name in ("float32", "float64"):
        kernel.compile(signature.replace("F", name))
    kernel.disable_compile()


_for_any_layout(_finish, "void(F[:, :, :, :], F[:, :, ::1], F[:, :, ::1], F[:, :, ::1])")
_for_any_layout(_row_dot, "void(F[:, :, :, :], F[:, :, :, :], F[:, :, ::1])")

_NO_MASK = np.ones((1, 1, 1), dtype=bool)


def _head_major(B, L, N, K, dtype):
    """A (B, L, N, K) array and its head-major view (B, N, L, K)."""
    a = np.empty((B, L, N, K), dtype=dtype)
    return a, a.transpose(0, 2, 1, 3)


def _groups(lo, hi, N, tq, tk):
    """Batch rows lo:hi in groups [(b0, b1)] of even size with at most WORK elements in a (G, N, tq, tk) block."""
    most = max(1, WORK // max(1, N * tq * tk))
    count = -(-(hi - lo) // most)
    size = -(-(hi - lo) // count)
    return [(b0, min(hi, b0 + size)) for b0 in range(lo, hi, size)]


def _blocks(L, size):
    return [(i0, min(L, i0 + size)) for i0 in range(0, L, size)]


def _mask_block(mask, b0, b1, i0, i1, j0, j1):
    """The block of the mask as a fresh (writable, C-contiguous) (G, tq, tk) array, or the dummy without a mask."""
    return _NO_MASK if mask is None else np.array(mask[b0:b1, i0:i1, j0:j1], dtype=bool, order="C")


def _visible(mask, b0, b1, i0, i1, j0, j1):
    """Does any query of the block see any key of it?"""
    return mask is None or bool(mask[b0:b1, i0:i1, j0:j1].any())


def _dead_rows(mask):
    """(b, i) index arrays of the query rows that may see no key (None without a mask or without such rows)."""
    if mask is None:
        return None
    dead = ~mask.any(axis=-1)  # (B, T)
    return np.nonzero(dead) if dead.any() else None


def _mm(a, b, out, first):
    """out = a @ b on the first write, out += a @ b after it."""
    if first:
        np.matmul(a, b, out=out)
    else:
        out += a @ b


def forward(q, k, v, mask, scale):
    """(o, lse): o (B, N, T, K) = softmax(Q Kᵀ · scale, masked) V, head-major view of (B, T, N, K); lse (B, N, T).

    q (B, N, T, K), k and v (B, N, S, K), mask (B, T, S) bool or None, scale 1/√K.
    """
    B, N, T, K = q.shape
    S = k.shape[2]
    dtype = q.dtype
    scale = dtype.type(scale)
    masked = mask is not None
    _, o = _head_major(B, T, N, K, dtype)
    lse = np.empty((B, N, T), dtype=dtype)
    qblocks, kblocks = _blocks(T, BLOCK_Q), _blocks(S, BLOCK_K)

    def rows(lo, hi):  # batch rows lo:hi, on one thread
        for b0, b1 in _groups(lo, hi, N, min(T, BLOCK_Q), min(S, BLOCK_K)):
            G = b1 - b0
            for i0, i1 in qblocks:
                tq = i1 - i0
                qg, og = q[b0:b1, :, i0:i1], o[b0:b1, :, i0:i1]
                lse_g = np.empty((G, N, tq), dtype=dtype)
                if len(kblocks) == 1:  # every key in one block
                    s = np.empty((G, N, tq, S), dtype=dtype)
                    np.matmul(qg, k[b0:b1].transpose(0, 1, 3, 2), out=s)  # Q Kᵀ
                    _softmax_block(s, _mask_block(mask, b0, b1, i0, i1, 0, S), masked, scale, lse_g)
                    np.matmul(s, v[b0:b1], out=og)  # O = P V
                    lse[b0:b1, :, i0:i1] = lse_g
                    continue
                m = np.full((G, N, tq), -np.inf, dtype=dtype)
                ell = np.zeros((G, N, tq), dtype=dtype)
                alpha = np.empty((G, N, tq), dtype=dtype)
                first = True
                for j0, j1 in kblocks:
                    if not _visible(mask, b0, b1, i0, i1, j0, j1):  # e.g. above the causal diagonal
                        continue
                    s = np.empty((G, N, tq, j1 - j0), dtype=dtype)
                    np.matmul(qg, k[b0:b1, :, j0:j1].transpose(0, 1, 3, 2), out=s)
                    _online_block(s, _mask_block(mask, b0, b1, i0, i1, j0, j1), masked, scale, m, ell, alpha)
                    if not first:
                        og *= alpha[..., None]
                    _mm(s, v[b0:b1, :, j0:j1], og, first)  # O <- O·α + P̃ V
                    first = False
                if first:  # the mask hides every key
                    og[...] = 0
                _finish(og, m, ell, lse_g)
                lse[b0:b1, :, i0:i1] = lse_g

    shards.run(rows, B)
    dead = _dead_rows(mask)
    if dead is not None:  # uniform over all S keys
        o[dead[0], :, dead[1]] = v.mean(axis=2)[dead[0]]  # (rows, N, K)
    return o, lse


def backward(q, k, v, o, lse, do, mask, scale):
    """(dq, dk, dv), head-major views of (B, T, N, K) / (B, S, N, K) arrays, from dO (B, N, T, K).

    q, k, v, mask, scale as for :func:`forward`; o and lse what it returned.
    """
    B, N, T, K = q.shape
    S = k.shape[2]
    dtype = q.dtype
    scale = dtype.type(scale)
    masked = mask is not None
    D = np.empty((B, N, T), dtype=dtype)
    _, dq = _head_major(B, T, N, K, dtype)
    _, dk = _head_major(B, S, N, K, dtype)
    _, dv = _head_major(B, S, N, K, dtype)
    qblocks, kblocks = _blocks(T, BLOCK_Q), _blocks(S, BLOCK_K)

    def rows(lo, hi):  # batch rows lo:hi, on one thread
        _row_dot(do[lo:hi], o[lo:hi], D[lo:hi])  # rowsum(dO ⊙ O)
        for b0, b1 in _groups(lo, hi, N, min(T, BLOCK_Q), min(S, BLOCK_K)):
            G = b1 - b0
            q_written = [False] * len(qblocks)
            for j0, j1 in kblocks:
                kg, vg = k[b0:b1, :, j0:j1], v[b0:b1, :, j0:j1]
                dkg, dvg = dk[b0:b1, :, j0:j1], dv[b0:b1, :, j0:j1]
                k_written = False
                for n_q, (i0, i1) in enumerate(qblocks):
                    if not _visible(mask, b0, b1, i0, i1, j0, j1):
                        continue
                    qg, dog = q[b0:b1, :, i0:i1], do[b0:b1, :, i0:i1]
                    p = np.empty((G, N, i1 - i0, j1 - j0), dtype=dtype)
                    dp = np.empty_like(p)
                    np.matmul(qg, kg.transpose(0, 1, 3, 2), out=p)
                    _probabilities(
                        p,
                        _mask_block(mask, b0, b1, i0, i1, j0, j1),
                        masked,
                        scale,
                        np.ascontiguousarray(lse[b0:b1, :, i0:i1]),
                    )  # P
                    _mm(p.transpose(0, 1, 3, 2), dog, dvg, not k_written)  # dV += Pᵀ dO
                    np.matmul(dog, vg.transpose(0, 1, 3, 2), out=dp)  # dP = dO Vᵀ
                    _score_gradient(p, dp, np.ascontiguousarray(D[b0:b1, :, i0:i1]), scale)  # dS / √K
                    _mm(dp, kg, dq[b0:b1, :, i0:i1], not q_written[n_q])  # dQ += dS K / √K
                    _mm(dp.transpose(0, 1, 3, 2), qg, dkg, not k_written)  # dK += dSᵀ Q / √K
                    q_written[n_q] = k_written = True
                if not k_written:  # no query sees these keys
                    dkg[...] = 0
                    dvg[...] = 0
            for n_q, (i0, i1) in enumerate(qblocks):
                if not q_written[n_q]:
                    dq[b0:b1, :, i0:i1] = 0

    shards.run(rows, B)
    dead = _dead_rows(mask)
    if dead is not None:  # P = 1/S on those rows
        for b in np.unique(dead[0]):
            hidden = dead[1][dead[0] == b]
            dv[b] += (do[b][:, hidden].sum(axis=1) / dtype.type(S))[:, None, :]  # (N, 1, K), every key
    return dq, dk, dv


# -- the decoding step -----------------------------------------------------------------------------


@jit
def _attend(q, k, v, mask, masked, scale, s, o):
    """Few queries over cached keys, all in one kernel: q (B, N, T, K), k, v (B, N, S, K), mask (B, T, S)
    (read only if ``masked``), s (S,) scratch, o (B, N, T, K) out (any strides). The numbers of :func:`forward`."""
    B, N, T, K = q.shape
    S = k.shape[2]
    zero, ninf = o.dtype.type(0), o.dtype.type(-np.inf)
    for b in range(B):
        for n in range(N):
            for i in range(T):
                m = ninf
                qi = q[b, n, i]
                for j in range(S):
                    x = dot(qi, k[b, n, j]) * scale
                    if masked and not mask[b, i, j]:
                        x = ninf
                    s[j] = x
                    m = max(m, x)
                if m == ninf:  # no key: uniform over S (Keras)
                    for j in range(S):
                        s[j] = o.dtype.type(1) / o.dtype.type(S)
                else:
                    for j in range(S):
                        s[j] = exp(s[j] - m) if s[j] != ninf else zero
                    total = row_sum(s)
                    for j in range(S):
                        s[j] = s[j] / total
                oi = o[b, n, i]
                oi[:] = zero
                for j in range(S):
                    p = s[j]
                    if p != zero:
                        vj = v[b, n, j]
                        for d in range(K):
                            oi[d] += p * vj[d]


def attend(q, k, v, mask, scale, out=None):
    """The decoding step's attention: new queries q (B, N, T, K) over the KV cache k, v (B, N, S, K), mask
    (B, T, S) or None -> o (B, N, T, K) (or ``out``, any (B, N, T, K) array, filled). Nothing is kept for
    backward. One kernel call, dot products in the kernel and no GEMM: for the few new positions of
    generation. q, o and the mask are a few rows: they go to the kernel as C-contiguous copies, so that its
    dispatch finds the compiled signature directly (a conversion search costs tens of µs per token)."""
    B, N, T, K = q.shape
    o = np.empty((B, N, T, K), dtype=q.dtype)
    m = _NO_MASK if mask is None else np.array(mask, dtype=bool, order="C")
    _attend(
        np.ascontiguousarray(q), k, v, m, mask is not None, q.dtype.type(scale), np.empty(k.shape[2], dtype=q.dtype), o
    )
    if out is None:
        return o
    out[...] = o
    return out


_for_any_layout(
    _attend,
    "void(F[:, :, :, ::1], F[:, :, :, :], F[:, :, :, :], boolean[:, :, ::1], boolean, F, F[::1], F[:, :, :, ::1])",
)
