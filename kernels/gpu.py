"""The fused operations for the CuPy backend: CUDA kernels from the .cu files plus cuBLAS GEMMs.

The same functions, arguments and buffer conventions as :mod:`scratchlm.kernels.cpu`
(read ``lstm_numba.py`` for the time loops); here each elementwise pass is one
CUDA kernel launch and each GEMM one cuBLAS call through ``cupy.matmul``. The
``.cu`` sources ship as package data and are compiled by NVRTC through
``cupy.RawModule`` on first use (CuPy caches the binaries on disk).

Per time step this launches one GEMM and one kernel; at small batches the
launch latency (~5–10 µs each) dominates, which CUDA graphs of the whole time
loop would remove (not done yet).
"""

import functools
import importlib.resources

import cupy
import numpy as np

from scratchlm.losses import token_weights

_THREADS = 256
_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}


@functools.lru_cache(maxsize=None)
def _module(name):
    """The compiled RawModule of ``kernels/<name>.cu``."""
    source = importlib.resources.files(__package__).joinpath(f"{name}.cu").read_text()
    return cupy.RawModule(code=source, options=("--std=c++14",))


def _kernel(module, name, dtype):
    return _module(module).get_function(f"{name}_{_SUFFIX[np.dtype(dtype)]}")


def _launch(kernel, n, args):
    kernel(((n + _THREADS - 1) // _THREADS,), (_THREADS,), args)


def empty_workspace(shape, dtype):
    """An uninitialised work array (CuPy's memory pool already reuses device memory)."""
    return cupy.empty(shape, dtype=dtype)


def lstm_forward(z, U, h0, c0, keep=None, table=None, ids=None):
    """As :func:`scratchlm.kernels.lstm_numba.forward`: returns (hs, cs), z left holding the gates."""
    T, B, G = z.shape
    H = G // 4
    step = _kernel("lstm_cell", "lstm_step_forward", z.dtype)
    hs = cupy.empty((T + 1, B, H), dtype=z.dtype)
    cs = cupy.empty((T + 1, B, H), dtype=z.dtype)
    hs[0], cs[0] = h0, c0
    all_kept = cupy.ones(B, dtype=bool)
    keep = None if keep is None else cupy.ascontiguousarray(keep, dtype=bool)
    if table is None:
        rec = cupy.empty((B, G), dtype=z.dtype)                      # h_{t-1} U
        rows = cupy.arange(B, dtype=cupy.int64)
    else:
        ids = cupy.ascontiguousarray(ids, dtype=cupy.int64)
    for t in range(T):
        if table is None:                                            # z[t] holds x_t W + b: add row b of h U
            cupy.matmul(hs[t], U, out=rec)
            src, src_rows = rec, rows
        else:                                                        # z[t] <- h U, then add table[ids[t]]
            cupy.matmul(hs[t], U, out=z[t])
            src, src_rows = table, ids[t]
        keep_t = all_kept if keep is None else keep[t]
        _launch(step, B * H, (z[t], src, src_rows, cs[t], hs[t], keep_t, cs[t + 1], hs[t + 1],
                              np.int32(B), np.int32(H)))
    return hs, cs


def lstm_backward(z, hs, cs, U, dy=None, dh_T=None, dc_T=None, keep=None):
    """As :func:`scratchlm.kernels.lstm_numba.backward`: returns (dZ, dU, dh_0, dc_0), dZ written over z."""
    T, B, G = z.shape
    H = G // 4
    step = _kernel("lstm_cell", "lstm_step_backward", z.dtype)
    dh_rec = cupy.zeros((B, H), dtype=z.dtype) if dh_T is None else cupy.array(dh_T, dtype=z.dtype)
    dc = cupy.zeros((B, H), dtype=z.dtype) if dc_T is None else cupy.array(dc_T, dtype=z.dtype)
    dh = cupy.zeros((B, H), dtype=z.dtype)
    all_kept = cupy.ones(B, dtype=bool)
    keep = None if keep is None else cupy.ascontiguousarray(keep, dtype=bool)
    dy = None if dy is None else cupy.ascontiguousarray(dy, dtype=z.dtype)
    Ut = cupy.ascontiguousarray(U.T)                                 # (4H, H)
    for t in reversed(range(T)):
        keep_next = all_kept if keep is None or t == T - 1 else keep[t + 1]
        keep_t = all_kept if keep is None else keep[t]
        args = (z[t], cs[t], cs[t + 1], dh_rec, keep_next, dh if dy is None else dy[t],
                np.int32(dy is not None), keep_t, dh, dc, np.int32(B), np.int32(H))
        _launch(step, B * H, args)
        cupy.matmul(z[t], Ut, out=dh_rec)                            # dz_t Uᵀ
    dh0 = dh_rec if keep is None else cupy.where(keep[0][:, None], dh_rec, dh_rec + dh)
    dU = hs[:-1].reshape(T * B, H).T @ z.reshape(T * B, G)
    return z, dU, dh0, dc


def gru_forward(a, U, b_rec, h0, keep=None, table=None, ids=None):
    """As :func:`scratchlm.kernels.gru_numba.forward`: returns (hs, uh), a left holding the gates [z r h̃]."""
    T, B, G = a.shape
    H = G // 3
    step = _kernel("gru_cell", "gru_step_forward", a.dtype)
    hs = cupy.empty((T + 1, B, H), dtype=a.dtype)
    uh = cupy.empty((T, B, H), dtype=a.dtype)
    hs[0] = h0
    all_kept = cupy.ones(B, dtype=bool)
    keep = None if keep is None else cupy.ascontiguousarray(keep, dtype=bool)
    b_rec = cupy.ascontiguousarray(b_rec, dtype=a.dtype)
    u = cupy.empty((B, G), dtype=a.dtype)                            # h_{t-1} U
    if table is None:
        rows = cupy.arange(B, dtype=cupy.int64)                      # x̂ read from a[t] itself
    else:
        ids = cupy.ascontiguousarray(ids, dtype=cupy.int64)
    for t in range(T):
        cupy.matmul(hs[t], U, out=u)
        src, src_rows = (a[t], rows) if table is None else (table, ids[t])
        keep_t = all_kept if keep is None else keep[t]
        _launch(step, B * H, (a[t], src, src_rows, u, b_rec, hs[t], keep_t, hs[t + 1], uh[t],
                              np.int32(B), np.int32(H)))
    return hs, uh


def gru_backward(a, hs, uh, U, dy=None, dh_T=None, keep=None):
    """As :func:`scratchlm.kernels.gru_numba.backward`: returns (dX̂, dU, db_rec, dh_0), dX̂ written over a."""
    T, B, G = a.shape
    H = G // 3
    step = _kernel("gru_cell", "gru_step_backward", a.dtype)
    dh_rec = cupy.zeros((B, H), dtype=a.dtype) if dh_T is None else cupy.array(dh_T, dtype=a.dtype)
    carry = cupy.zeros((B, H), dtype=a.dtype)
    du = cupy.empty((B, G), dtype=a.dtype)                           # dû_t
    all_kept = cupy.ones(B, dtype=bool)
    keep = None if keep is None else cupy.ascontiguousarray(keep, dtype=bool)
    dy = None if dy is None else cupy.ascontiguousarray(dy, dtype=a.dtype)
    Ut = cupy.ascontiguousarray(U.T)                                 # (3H, H)
    for t in reversed(range(T)):
        keep_t = all_kept if keep is None else keep[t]
        args = (a[t], hs[t], uh[t], dh_rec, carry if dy is None else dy[t], np.int32(dy is not None), keep_t,
                carry, du, np.int32(B), np.int32(H))
        _launch(step, B * H, args)
        cupy.matmul(du, Ut, out=dh_rec)                              # dû_t Uᵀ
    dh0 = dh_rec + carry
    hs2 = hs[:-1].reshape(T * B, H).T
    dX2 = a.reshape(T * B, G)
    duh2 = uh.reshape(T * B, H)
    dU = cupy.concatenate([hs2 @ dX2[:, :2 * H], hs2 @ duh2], axis=1)          # (H, 3H)
    db_rec = cupy.concatenate([dX2[:, :2 * H].sum(axis=0), duh2.sum(axis=0)])
    return a, dU, db_rec, dh0


def softmax_cross_entropy(logits, targets, mask=None):
    """As :func:`scratchlm.kernels.xent_numba.softmax_cross_entropy`: (loss, dlogits over the logits)."""
    V = logits.shape[-1]
    z = cupy.ascontiguousarray(logits).reshape(-1, V)
    y = cupy.ascontiguousarray(targets.reshape(-1), dtype=cupy.int64)
    N = z.shape[0]
    if y.shape[0] != N:
        raise ValueError(f"targets have {y.shape[0]} entries but logits have {N} rows")
    w = token_weights(cupy, N, z.dtype, mask)                   # (N,)
    log_p = cupy.empty(N, dtype=z.dtype)
    threads = min(1024, 1 << max(5, (V - 1).bit_length()))           # a power of two >= V (32..1024)
    kernel = _kernel("softmax_xent", "softmax_xent", z.dtype)
    kernel((N,), (threads,), (z, y, w, log_p, np.int32(V)), shared_mem=2 * threads * z.dtype.itemsize)
    return -float((w * log_p).sum()), z.reshape(logits.shape)


def scatter_add(target, index, rows):
    """target (V, C) += Σ_k onehot(index[k]) rows[k] in place (atomic adds). Returns target."""
    if index.size:
        N, C = rows.shape
        kernel = _kernel("scatter_add", "scatter_add", target.dtype)
        _launch(kernel, N * C, (target, cupy.ascontiguousarray(index, dtype=cupy.int64),
                                cupy.ascontiguousarray(rows, dtype=target.dtype), np.int64(N), np.int32(C)))
    return target


def decode(logits, states, table, embeddings, uppers, recurrent, dense, length, temperature, banned, eos_id, u):
    """As :func:`scratchlm.kernels.generate_numba.decode`, on the device (ids come back per token for EOS)."""
    B, V = logits.shape
    dtype = logits.dtype
    step = _kernel("lstm_cell", "lstm_step_forward", dtype)
    sample = _kernel("sample", "sample", dtype)
    out = np.zeros((B, length), dtype=np.int64)
    done = np.zeros(B, dtype=bool)
    all_kept = cupy.ones(B, dtype=bool)
    rows = cupy.arange(B, dtype=cupy.int64)
    ids = cupy.zeros(B, dtype=cupy.int64)
    ok = cupy.ones(1, dtype=cupy.int32)
    u = cupy.asarray(u, dtype=cupy.float64)
    banned = cupy.asarray(banned, dtype=bool)
    z = [cupy.empty((B, U.shape[1]), dtype=dtype) for U in recurrent]
    xw = [cupy.empty((B, U.shape[1]), dtype=dtype) for U in recurrent]
    states = [(cupy.array(h), cupy.array(c)) for h, c in states]
    spare = [(cupy.empty_like(h), cupy.empty_like(c)) for h, c in states]
    W_d, b_d = dense
    logits = cupy.array(logits, dtype=dtype)
    for k in range(length):
        _launch(sample, B, (logits, banned, temperature, u[k], ids, ok, np.int32(B), np.int32(V)))
        if not int(ok[0]):
            return None
        host = cupy.asnumpy(ids)
        if eos_id is not None:
            host[done] = eos_id
            done |= host == eos_id
            ids = cupy.asarray(host)
        out[:, k] = host
        if eos_id is not None and done.all():
            return out[:, :k + 1]
        if k + 1 == length:
            break
        below = None
        for n, U in enumerate(recurrent):
            h, c = states[n]
            cupy.matmul(h, U, out=z[n])
            if n == 0 and table is not None:
                src, src_rows = table, ids
            else:
                if n == 0:
                    E, W, b = embeddings
                    cupy.matmul(E[ids], W, out=xw[n])
                else:
                    W, b = uppers[n - 1]
                    cupy.matmul(below, W, out=xw[n])
                xw[n] += b
                src, src_rows = xw[n], rows
            h_new, c_new = spare[n]
            _launch(step, B * h.shape[1], (z[n], src, src_rows, c, h, all_kept, c_new, h_new,
                                           np.int32(B), np.int32(h.shape[1])))
            states[n], spare[n] = (h_new, c_new), (h, c)
            below = h_new
        cupy.matmul(below, W_d, out=logits)
        logits += b_d
    return out
