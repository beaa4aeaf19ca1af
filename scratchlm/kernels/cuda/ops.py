"""The fused operations for the CuPy backend: CUDA kernels from the .cu files plus cuBLAS GEMMs.

The same functions, arguments and buffer conventions as :mod:`scratchlm.kernels.numba.ops`
(read ``numba/lstm.py`` for the time loops), called by the same fused subclasses
(``scratchlm/kernels/layers.py``) as ``backend.ops`` of a CuPy backend; here each
elementwise pass is one CUDA kernel launch and each GEMM one cuBLAS call through ``cupy.matmul``. The
``.cu`` sources ship as package data and are compiled by NVRTC through
``cupy.RawModule`` on first use (CuPy caches the binaries on disk).

Per time step this launches one GEMM and one kernel; at small batches the
launch latency (~5–10 µs each) dominates, which CUDA graphs of the whole time
loop would remove (not done yet).
"""

import functools
import importlib.resources
import math

import cupy
import numpy as np

from scratchlm.losses import token_weights

_THREADS = 256
_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}


@functools.cache
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
    """As :func:`scratchlm.kernels.numba.lstm.forward`: returns (hs, cs), z left holding the gates."""
    T, B, G = z.shape
    H = G // 4
    step = _kernel("lstm_cell", "lstm_step_forward", z.dtype)
    hs = cupy.empty((T + 1, B, H), dtype=z.dtype)
    cs = cupy.empty((T + 1, B, H), dtype=z.dtype)
    hs[0], cs[0] = h0, c0
    all_kept = cupy.ones(B, dtype=bool)
    keep = None if keep is None else cupy.ascontiguousarray(keep, dtype=bool)
    if table is None:
        rec = cupy.empty((B, G), dtype=z.dtype)  # h_{t-1} U
        rows = cupy.arange(B, dtype=cupy.int64)
    else:
        ids = cupy.ascontiguousarray(ids, dtype=cupy.int64)
    for t in range(T):
        if table is None:  # z[t] holds x_t W + b: add row b of h U
            cupy.matmul(hs[t], U, out=rec)
            src, src_rows = rec, rows
        else:  # z[t] <- h U, then add table[ids[t]]
            cupy.matmul(hs[t], U, out=z[t])
            src, src_rows = table, ids[t]
        keep_t = all_kept if keep is None else keep[t]
        _launch(
            step, B * H, (z[t], src, src_rows, cs[t], hs[t], keep_t, cs[t + 1], hs[t + 1], np.int32(B), np.int32(H))
        )
    return hs, cs


def lstm_backward(z, hs, cs, U, dy=None, dh_T=None, dc_T=None, keep=None):
    """As :func:`scratchlm.kernels.numba.lstm.backward`: returns (dZ, dU, dh_0, dc_0), dZ written over z."""
    T, B, G = z.shape
    H = G // 4
    step = _kernel("lstm_cell", "lstm_step_backward", z.dtype)
    dh_rec = cupy.zeros((B, H), dtype=z.dtype) if dh_T is None else cupy.array(dh_T, dtype=z.dtype)
    dc = cupy.zeros((B, H), dtype=z.dtype) if dc_T is None else cupy.array(dc_T, dtype=z.dtype)
    dh = cupy.zeros((B, H), dtype=z.dtype)
    all_kept = cupy.ones(B, dtype=bool)
    keep = None if keep is None else cupy.ascontiguousarray(keep, dtype=bool)
    dy = None if dy is None else cupy.ascontiguousarray(dy, dtype=z.dtype)
    Ut = cupy.ascontiguousarray(U.T)  # (4H, H)
    for t in reversed(range(T)):
        keep_next = all_kept if keep is None or t == T - 1 else keep[t + 1]
        keep_t = all_kept if keep is None else keep[t]
        args = (
            z[t],
            cs[t],
            cs[t + 1],
            dh_rec,
            keep_next,
            dh if dy is None else dy[t],
            np.int32(dy is not None),
            keep_t,
            dh,
            dc,
            np.int32(B),
            np.int32(H),
        )
        _launch(step, B * H, args)
        cupy.matmul(z[t], Ut, out=dh_rec)  # dz_t Uᵀ
    dh0 = dh_rec if keep is None else cupy.where(keep[0][:, None], dh_rec, dh_rec + dh)
    dU = hs[:-1].reshape(T * B, H).T @ z.reshape(T * B, G)
    return z, dU, dh0, dc


def gru_forward(a, U, b_rec, h0, keep=None, table=None, ids=None):
    """As :func:`scratchlm.kernels.numba.gru.forward`: returns (hs, uh), a left holding the gates [z r h̃]."""
    T, B, G = a.shape
    H = G // 3
    step = _kernel("gru_cell", "gru_step_forward", a.dtype)
    hs = cupy.empty((T + 1, B, H), dtype=a.dtype)
    uh = cupy.empty((T, B, H), dtype=a.dtype)
    hs[0] = h0
    all_kept = cupy.ones(B, dtype=bool)
    keep = None if keep is None else cupy.ascontiguousarray(keep, dtype=bool)
    b_rec = cupy.ascontiguousarray(b_rec, dtype=a.dtype)
    u = cupy.empty((B, G), dtype=a.dtype)  # h_{t-1} U
    if table is None:
        rows = cupy.arange(B, dtype=cupy.int64)  # x̂ read from a[t] itself
    else:
        ids = cupy.ascontiguousarray(ids, dtype=cupy.int64)
    for t in range(T):
        cupy.matmul(hs[t], U, out=u)
        src, src_rows = (a[t], rows) if table is None else (table, ids[t])
        keep_t = all_kept if keep is None else keep[t]
        _launch(step, B * H, (a[t], src, src_rows, u, b_rec, hs[t], keep_t, hs[t + 1], uh[t], np.int32(B), np.int32(H)))
    return hs, uh


def gru_backward(a, hs, uh, U, dy=None, dh_T=None, keep=None):
    """As :func:`scratchlm.kernels.numba.gru.backward`: returns (dX̂, dU, db_rec, dh_0), dX̂ written over a."""
    T, B, G = a.shape
    H = G // 3
    step = _kernel("gru_cell", "gru_step_backward", a.dtype)
    dh_rec = cupy.zeros((B, H), dtype=a.dtype) if dh_T is None else cupy.array(dh_T, dtype=a.dtype)
    carry = cupy.zeros((B, H), dtype=a.dtype)
    du = cupy.empty((B, G), dtype=a.dtype)  # dû_t
    all_kept = cupy.ones(B, dtype=bool)
    keep = None if keep is None else cupy.ascontiguousarray(keep, dtype=bool)
    dy = None if dy is None else cupy.ascontiguousarray(dy, dtype=a.dtype)
    Ut = cupy.ascontiguousarray(U.T)  # (3H, H)
    for t in reversed(range(T)):
        keep_t = all_kept if keep is None else keep[t]
        args = (
            a[t],
            hs[t],
            uh[t],
            dh_rec,
            carry if dy is None else dy[t],
            np.int32(dy is not None),
            keep_t,
            carry,
            du,
            np.int32(B),
            np.int32(H),
        )
        _launch(step, B * H, args)
        cupy.matmul(du, Ut, out=dh_rec)  # dû_t Uᵀ
    dh0 = dh_rec + carry
    hs2 = hs[:-1].reshape(T * B, H).T
    dX2 = a.reshape(T * B, G)
    duh2 = uh.reshape(T * B, H)
    dU = cupy.concatenate([hs2 @ dX2[:, : 2 * H], hs2 @ duh2], axis=1)  # (H, 3H)
    db_rec = cupy.concatenate([dX2[:, : 2 * H].sum(axis=0), duh2.sum(axis=0)])
    return a, dU, db_rec, dh0


def softmax_cross_entropy(logits, targets, mask=None):
    """As :func:`scratchlm.kernels.numba.xent.softmax_cross_entropy`: (loss, dlogits over the logits)."""
    V = logits.shape[-1]
    z = cupy.ascontiguousarray(logits).reshape(-1, V)
    y = cupy.ascontiguousarray(targets.reshape(-1), dtype=cupy.int64)
    N = z.shape[0]
    if y.shape[0] != N:
        raise ValueError(f"targets have {y.shape[0]} entries but logits have {N} rows")
    w = token_weights(cupy, N, z.dtype, mask)  # (N,)
    log_p = cupy.empty(N, dtype=z.dtype)
    threads = min(1024, 1 << max(5, (V - 1).bit_length()))  # a power of two >= V (32..1024)
    kernel = _kernel("softmax_xent", "softmax_xent", z.dtype)
    kernel((N,), (threads,), (z, y, w, log_p, np.int32(V)), shared_mem=2 * threads * z.dtype.itemsize)
    return -float((w * log_p).sum()), z.reshape(logits.shape)


def scatter_add(target, index, rows):
    """target (V, C) += Σ_k onehot(index[k]) rows[k] in place (atomic adds). Returns target."""
    if index.size:
        N, C = rows.shape
        kernel = _kernel("scatter_add", "scatter_add", target.dtype)
        _launch(
            kernel,
            N * C,
            (
                target,
                cupy.ascontiguousarray(index, dtype=cupy.int64),
                cupy.ascontiguousarray(rows, dtype=target.dtype),
                np.int64(N),
                np.int32(C),
            ),
        )
    return target


def decode(logits, states, table, embeddings, uppers, recurrent, dense, length, temperature, banned, eos_id, u):
    """As :func:`scratchlm.kernels.numba.generate.decode`, on the device (ids come back per token for EOS)."""
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
            return out[:, : k + 1]
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
            _launch(
                step,
                B * h.shape[1],
                (z[n], src, src_rows, c, h, all_kept, c_new, h_new, np.int32(B), np.int32(h.shape[1])),
            )
            states[n], spare[n] = (h_new, c_new), (h, c)
            below = h_new
        cupy.matmul(below, W_d, out=logits)
        logits += b_d
    return out


# -- the Transformer (issue 15): attention, LayerNorm, the feed-forward, the chunked loss ---------------------


def decode_layer(logits, state, table, U, dense, length, temperature, banned, eos_id, u, bfloat16=False):
    """As :func:`scratchlm.kernels.numba.generate.decode_layer`, by :func:`decode` (with ``bfloat16``, U, rounded
    to bfloat16 values by ``generate``, is read as float32: the same numbers; no bfloat16 kernel on the device)."""
    return decode(logits, [state], table, None, [], [U], dense, length, temperature, banned, eos_id, u)


def _strides(a):
    """(sb, sn, sl) in elements of a (B, N, L, K) array with unit stride along K (attention.cu's layout)."""
    step = a.dtype.itemsize
    return tuple(np.int64(s // step) for s in a.strides[:3])


def _unit_last(a):
    """a itself when its last axis has unit stride, else a copy that has."""
    return a if a.strides[-1] == a.dtype.itemsize else cupy.ascontiguousarray(a)


def _attention_threads(K):
    """Threads per attention block: 128 (a tile of keys or queries), more while K > 4·threads (the backward
    kernels keep 4 entries of a row per thread)."""
    if K > 4096:
        raise ValueError(f"the CUDA attention kernels take key_dim <= 4096, got {K}")
    threads = 128
    while threads * 4 < K:
        threads *= 2
    return threads


def _attention_mask(mask, B, T, S):
    """(mask (B, T, S) contiguous bool, has_mask) for attention.cu; a 1-element dummy without a mask."""
    if mask is None:
        return cupy.ones(1, dtype=bool), np.int32(0)
    return cupy.ascontiguousarray(cupy.broadcast_to(mask, (B, T, S)), dtype=bool), np.int32(1)


def _head_major(B, L, N, K, dtype):
    return cupy.empty((B, L, N, K), dtype=dtype).transpose(0, 2, 1, 3)


def attention_forward(q, k, v, mask, scale):
    """As :func:`scratchlm.kernels.numba.attention.forward`: (o head-major view of (B, T, N, K), lse (B, N, T))."""
    B, N, T, K = q.shape
    S = k.shape[2]
    q, k, v = _unit_last(q), _unit_last(k), _unit_last(v)
    o = _head_major(B, T, N, K, q.dtype)
    lse = cupy.empty((B, N, T), dtype=q.dtype)
    m, has_mask = _attention_mask(mask, B, T, S)
    threads = _attention_threads(K)
    kernel = _kernel("attention", "flash_forward", q.dtype)
    kernel(
        (T, N, B),
        (threads,),
        (
            q,
            *_strides(q),
            k,
            *_strides(k),
            v,
            *_strides(v),
            m,
            has_mask,
            q.dtype.type(scale),
            o,
            *_strides(o),
            lse,
            np.int32(N),
            np.int32(T),
            np.int32(S),
            np.int32(K),
        ),
        shared_mem=(2 * K + 2 * threads) * q.dtype.itemsize,
    )
    return o, lse


def attention_backward(q, k, v, o, lse, do, mask, scale):
    """As :func:`scratchlm.kernels.numba.attention.backward`: (dq, dk, dv), head-major views."""
    B, N, T, K = q.shape
    S = k.shape[2]
    q, k, v, o, do = (_unit_last(a) for a in (q, k, v, o, do))
    lse = cupy.ascontiguousarray(lse)
    D = cupy.empty((B, N, T), dtype=q.dtype)
    rows = B * N * T
    _launch(
        _kernel("attention", "attention_row_dot", q.dtype),
        rows,
        (do, *_strides(do), o, *_strides(o), D, np.int32(B), np.int32(N), np.int32(T), np.int32(K)),
    )
    dq, dk, dv = _head_major(B, T, N, K, q.dtype), _head_major(B, S, N, K, q.dtype), _head_major(B, S, N, K, q.dtype)
    m, has_mask = _attention_mask(mask, B, T, S)
    scale = q.dtype.type(scale)
    common = (q, *_strides(q), k, *_strides(k), v, *_strides(v), lse, D, do, *_strides(do), m, has_mask, scale)
    sizes = (np.int32(N), np.int32(T), np.int32(S), np.int32(K))
    threads = _attention_threads(K)
    _kernel("attention", "flash_backward_dq", q.dtype)(
        (T, N, B), (threads,), (*common, dq, *_strides(dq), *sizes), shared_mem=(2 * K + 2 * threads) * q.dtype.itemsize
    )
    _kernel("attention", "flash_backward_dkdv", q.dtype)(
        (S, N, B),
        (threads,),
        (*common, dk, *_strides(dk), dv, *_strides(dv), *sizes),
        shared_mem=(2 * K + 2 * threads) * q.dtype.itemsize,
    )
    return dq, dk, dv


def attention_decode(q, k, v, mask, scale, out=None):
    """As :func:`scratchlm.kernels.numba.attention.attend`: the flash forward kernel on the few new queries."""
    o, _ = attention_forward(q, k, v, mask, scale)
    if out is None:
        return o
    out[...] = o
    return out


def _row_threads(D):
    return min(1024, 1 << max(5, (D - 1).bit_length()))


def layernorm_forward(x, gamma, beta, eps):
    """As :func:`scratchlm.kernels.numba.layernorm.layernorm_forward`: (y, mean, rstd)."""
    D = x.shape[-1]
    x2 = cupy.ascontiguousarray(x).reshape(-1, D)
    M = x2.shape[0]
    y = cupy.empty_like(x2)
    mean, rstd = cupy.empty(M, dtype=x.dtype), cupy.empty(M, dtype=x.dtype)
    threads = _row_threads(D)
    _kernel("layernorm", "layernorm_forward", x.dtype)(
        (M,),
        (threads,),
        (x2, gamma, beta, x.dtype.type(eps), y, mean, rstd, np.int32(D)),
        shared_mem=2 * threads * x.dtype.itemsize,
    )
    return y.reshape(x.shape), mean.reshape(x.shape[:-1]), rstd.reshape(x.shape[:-1])


def layernorm_backward(x, mean, rstd, gamma, dy):
    """As :func:`scratchlm.kernels.numba.layernorm.layernorm_backward`: (dx, dgamma, dbeta)."""
    D = x.shape[-1]
    x2 = cupy.ascontiguousarray(x).reshape(-1, D)
    dy2 = cupy.ascontiguousarray(dy, dtype=x.dtype).reshape(-1, D)
    M = x2.shape[0]
    mean, rstd = cupy.ascontiguousarray(mean).reshape(-1), cupy.ascontiguousarray(rstd).reshape(-1)
    dx = cupy.empty_like(x2)
    threads = _row_threads(D)
    _kernel("layernorm", "layernorm_backward_dx", x.dtype)(
        (M,), (threads,), (x2, mean, rstd, gamma, dy2, dx, np.int32(D)), shared_mem=2 * threads * x.dtype.itemsize
    )
    dgamma, dbeta = cupy.empty(D, dtype=x.dtype), cupy.empty(D, dtype=x.dtype)
    _launch(
        _kernel("layernorm", "layernorm_backward_params", x.dtype),
        D,
        (x2, mean, rstd, dy2, dgamma, dbeta, np.int32(M), np.int32(D)),
    )
    return dx.reshape(x.shape), dgamma, dbeta


def residual_layernorm(x, y, b, gamma, beta, eps, out=None):
    """As :func:`scratchlm.kernels.numba.layernorm.residual_layernorm`: LN(x + (y + b)) over rows (M, D)."""
    M, D = x.shape
    x, y = cupy.ascontiguousarray(x), cupy.ascontiguousarray(y)
    out = cupy.empty_like(x) if out is None else out
    threads = _row_threads(D)
    _kernel("layernorm", "residual_layernorm", x.dtype)(
        (M,),
        (threads,),
        (x, y, b, gamma, beta, x.dtype.type(eps), out, np.int32(D)),
        shared_mem=2 * threads * x.dtype.itemsize,
    )
    return out


def bias_gelu(z, b):
    """As :func:`scratchlm.kernels.numba.layernorm.bias_gelu`: z ← z + b in place -> h = z Φ(z), with CuPy's erf
    (``cupyx.scipy.special``). Not yet run on a GPU (tests/test_gpu.py covers it)."""
    from cupyx.scipy.special import erf

    z += b
    return 0.5 * z * (1 + erf(z * math.sqrt(0.5)))


def gelu_backward(dh, z):
    """As :func:`scratchlm.kernels.numba.layernorm.gelu_backward`: dh ← dh ⊙ (Φ(z) + z φ(z)) in place ->
    (dh, Σ_rows dh). Not yet run on a GPU."""
    from cupyx.scipy.special import erf

    dh *= 0.5 * (1 + erf(z * math.sqrt(0.5))) + z * cupy.exp(-0.5 * z * z) * (1 / math.sqrt(2 * math.pi))
    return dh, dh.sum(axis=0)


def bias_relu(z, b):
    """z (M, F) <- max(z + b, 0) in place (C-contiguous z); returns z."""
    _launch(_kernel("feedforward", "bias_relu", z.dtype), z.size, (z, b, np.int64(z.size), np.int32(z.shape[1])))
    return z


def relu_backward(dh, h):
    """dh (M, F) <- dh ⊙ [h > 0] in place; returns (dh, Σ_rows dh (F,))."""
    _launch(_kernel("feedforward", "relu_backward", dh.dtype), dh.size, (dh, h, np.int64(dh.size)))
    return dh, dh.sum(axis=0)


def dense_softmax_cross_entropy(x, W, b, targets, mask=None, backward=True, chunk=None):
    """As :func:`scratchlm.kernels.numba.xent.dense_softmax_cross_entropy`: cuBLAS GEMMs per chunk of rows and
    softmax_xent.cu in place; returns (loss, dx, dW, db), or (loss, None, None, None) without backward."""
    N, D = x.shape
    V = W.shape[1]
    dtype = x.dtype
    y = cupy.ascontiguousarray(targets.reshape(-1), dtype=cupy.int64)
    if y.shape[0] != N:
        raise ValueError(f"targets have {y.shape[0]} entries but x has {N} rows")
    w = token_weights(cupy, N, dtype, mask)
    scored = cupy.flatnonzero(w)
    M = int(scored.size)
    xs, ys, ws = (x, y, w) if M == N else (x[scored], y[scored], w[scored])
    log_p = cupy.empty(M, dtype=dtype)
    size = max(1, chunk or (1 << 23) // max(1, V))
    size = -(-M // -(-M // size))  # even chunks
    z_all = cupy.empty((size, V), dtype=dtype)
    threads = min(1024, 1 << max(5, (V - 1).bit_length()))
    xent = _kernel("softmax_xent", "softmax_xent", dtype)
    dxs = cupy.empty((M, D), dtype=dtype) if backward else None
    dW = cupy.zeros((D, V), dtype=dtype) if backward else None
    db = cupy.zeros(V, dtype=dtype) if backward else None
    for r0 in range(0, M, size):
        r1 = min(M, r0 + size)
        z = z_all[: r1 - r0]
        cupy.matmul(xs[r0:r1], W, out=z)
        z += b
        xent(
            (r1 - r0,),
            (threads,),
            (z, ys[r0:r1], ws[r0:r1], log_p[r0:r1], np.int32(V)),
            shared_mem=2 * threads * z.dtype.itemsize,
        )  # z <- dL/dz
        if backward:
            db += z.sum(axis=0)
            cupy.matmul(z, W.T, out=dxs[r0:r1])
            dW += xs[r0:r1].T @ z
    loss = -float((ws * log_p).sum())
    if not backward:
        return loss, None, None, None
    if M == N:
        return loss, dxs, dW, db
    dx = cupy.zeros((N, D), dtype=dtype)
    dx[scored] = dxs
    return loss, dx, dW, db


def sample_logits(logits, banned, temperature, u, ids):
    """As :func:`scratchlm.kernels.numba.ops.sample_logits`, on the device: ids (B,) from logits (B, V), overwritten."""
    B, V = logits.shape
    ok = cupy.ones(1, dtype=cupy.int32)
    _launch(
        _kernel("sample", "sample", logits.dtype),
        B,
        (
            logits,
            cupy.asarray(banned, dtype=bool),
            logits.dtype.type(temperature),
            cupy.asarray(u, dtype=cupy.float64),
            ids,
            ok,
            np.int32(B),
            np.int32(V),
        ),
    )
    return bool(int(ok[0]))
