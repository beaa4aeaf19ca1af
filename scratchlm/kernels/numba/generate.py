"""Token-by-token sampling on the CPU with O(1) work per token.

What :meth:`scratchlm.models.LanguageModel.generate` does on the reference path,
minus its per-token overheads: the input table E·W + b is built once per call
(not once per token) and every buffer is allocated once.

:func:`decode_layer`, a one-layer LSTM fed by its input table (the usual
character model): the whole token loop is one compiled loop per core
(:func:`token_loop`), each core owning a share of the hidden units and its
share of U packed once into panels (:mod:`panels`), the cores meeting twice
per token. At batch 1 a token is bound by reading U (4 MB at H = 512, 2 MB per
core, from L3). With U rounded to bfloat16 (``generate(...,
weights="bfloat16")``, :mod:`scratchlm.bfloat16`) the panels hold bfloat16:
half the bytes, 1 MB per core at H = 512, which stays in its L2.

:func:`decode`, any other LSTM stack: per token and layer one GEMM and one
fused step kernel, then one GEMM for the logits and one sampling kernel.

Sampling follows :mod:`scratchlm.sampling` exactly (temperature, greedy at 0,
banned ids, inverse CDF with one host uniform per row and token). Top-k and
top-p are left to the reference path.
"""

import math

import numpy as np

from ...bfloat16 import upper_halves
from .activations import exp
from .lstm import pack_gate_columns, step_forward, units_step
from .options import jit
from .parallel import barrier, panels, shards


@jit
def sample_rows(logits, bias, banned, temperature, u, ids):
    """ids[b] drawn from softmax(z_b / T), z_b = logits[b] + bias, banned ids removed; T = 0: argmax.

    logits (B, V) are overwritten (with the unnormalised probabilities).
    u (B,): uniforms in [0, 1). Returns False if a row has no finite maximum.
    """
    B, V = logits.shape
    for b in range(B):
        row = logits[b]
        for v in range(V):
            row[v] += bias[v]
        best = -1
        for v in range(V):
            if not banned[v] and (best < 0 or row[v] > row[best]):
                best = v
        if not math.isfinite(row[best]):
            return False
        if temperature == 0:
            ids[b] = best
            continue
        m = row[best]
        total = row.dtype.type(0)
        for v in range(V):  # e_v = exp((z_v − m) / T), 0 if banned
            row[v] = 0 if banned[v] else exp((row[v] - m) / temperature)
            total += row[v]
        target = u[b] * total  # first id whose cdf passes u · Σ
        cdf = row.dtype.type(0)
        ids[b] = best
        last_positive = best
        for v in range(V):
            if row[v] > 0:
                cdf += row[v]
                last_positive = v
                if cdf > target:
                    ids[b] = v
                    break
        else:
            ids[b] = last_positive
    return True


def decode(logits, states, table, embeddings, uppers, recurrent, dense, length, temperature, banned, eos_id, u):
    """Sample ``length`` tokens per row, continuing from the prompt's ``logits`` (B, V) and ``states``.

    states: per layer (h, c), each (B, H_l).
    table: (V, 4H_0) input table of layer 0, or None: then embeddings = (E, W_0, b_0)
        and the projection E[id] W_0 + b_0 is computed per token.
    uppers: per layer above the first, (W_l, b_l); recurrent: per layer, U_l.
    dense: (W_d, b_d). temperature: already clamped to a positive finite
    number of the logits' dtype, or 0 (greedy). banned (V,) bool. eos_id or None.
    u (length, B): uniforms (unused when greedy).
    Returns int64 ids (B, length'), length' <= length (all rows ended at EOS),
    or None if the logits stopped being finite.
    """
    B, V = logits.shape
    dtype = logits.dtype
    out = np.zeros((B, length), dtype=np.int64)
    done = np.zeros(B, dtype=bool)
    all_kept = np.ones(B, dtype=bool)
    rows = np.arange(B)
    ids = np.zeros(B, dtype=np.int64)
    z = [np.empty((B, U.shape[1]), dtype=dtype) for U in recurrent]  # h U, then the gates
    xw = [np.empty((B, U.shape[1]), dtype=dtype) for U in recurrent]  # x W + b per layer
    W_d, b_d = dense
    logits = np.array(logits, dtype=dtype)  # our own buffer
    no_bias = np.zeros(V, dtype=dtype)  # the prompt's logits have theirs
    states = [(np.array(h), np.array(c)) for h, c in states]
    spare = [(np.empty_like(h), np.empty_like(c)) for h, c in states]  # h_t, c_t, then swapped
    ok = sample_rows(logits, no_bias, banned, temperature, u[0], ids)
    for k in range(length):
        if not ok:
            return None
        if eos_id is not None:
            ids[done] = eos_id
            done |= ids == eos_id
        out[:, k] = ids
        if eos_id is not None and done.all():
            return out[:, : k + 1]
        if k + 1 == length:
            break
        below = None
        for n, U in enumerate(recurrent):
            h, c = states[n]
            np.matmul(h, U, out=z[n])
            if n == 0 and table is not None:
                src, src_rows = table, ids  # rows of E W + b
            else:
                if n == 0:
                    E, W, b = embeddings
                    np.matmul(E[ids], W, out=xw[n])
                else:
                    W, b = uppers[n - 1]
                    np.matmul(below, W, out=xw[n])
                xw[n] += b
                src, src_rows = xw[n], rows
            h_new, c_new = spare[n]
            step_forward(z[n], src, src_rows, c, h, all_kept, c_new, h_new)
            states[n], spare[n] = (h_new, c_new), (h, c)
            below = h_new
        np.matmul(below, W_d, out=logits)
        ok = sample_rows(logits, b_d, banned, temperature, u[k + 1], ids)  # adds b_d
    return out


def decode_layer(logits, state, table, U, dense, length, temperature, banned, eos_id, u, bfloat16=False):
    """:func:`decode` for one LSTM layer whose input projection is ``table`` (V, 4H), as one compiled loop per
    core (:func:`token_loop`), U packed once: as it is, or (``bfloat16``; float32 only, U already rounded by
    :func:`scratchlm.bfloat16.round_to_bfloat16`) as bfloat16. Returns the same as :func:`decode`."""
    B, V = logits.shape
    H = U.shape[0]
    n = shards.parties(B, H, B)  # every row: the cores split the units
    spans = shards.bounds(H, n)
    most = max(hi - lo for lo, hi in spans)
    dtype = logits.dtype
    weights = upper_halves(np.ascontiguousarray(U), np) if bfloat16 else np.ascontiguousarray(U)
    packed = np.empty((n, 4) + panels.panel_shape(H, most, dtype), weights.dtype)
    work = [panels.buffers(B, H, dtype) for _ in range(n)]
    hs, cs = np.empty((2, B, H), dtype), np.empty((2, B, H), dtype)
    hs[0], cs[0] = state
    z = np.empty((B, 4 * H), dtype)
    out = np.zeros((B, length), dtype=np.int64)
    ids = np.zeros(B, dtype=np.int64)
    logits = np.array(logits, dtype=dtype)
    if not sample_rows(logits, np.zeros(V, dtype), banned, temperature, u[0], ids):
        return None
    W_d, b_d = dense
    dense_packed = np.empty(panels.panel_shape(H, V, dtype), dtype)
    panels.pack(np.ascontiguousarray(W_d), 0, V, dense_packed)
    result, sync = np.zeros(2, dtype=np.int64), barrier.new()  # result: [tokens written, stop]

    def party(k):
        token_loop(
            ids,
            out,
            result,
            logits,
            b_d,
            banned,
            temperature,
            u,
            -1 if eos_id is None else eos_id,
            hs,
            cs,
            z,
            table,
            weights,
            packed[k],
            *work[k],
            dense_packed,
            sync,
            n,
            k,
            *spans[k],
        )

    if n == 1:
        party(0)
    else:
        shards.together(party, n, sync)
    return None if result[0] < 0 else out[:, : result[0]]


@jit
def token_loop(
    ids,
    out,
    result,
    logits,
    bias,
    banned,
    temperature,
    u,
    eos_id,
    hs,
    cs,
    z,
    table,
    weights,
    packed,
    tiles,
    scratch,
    dense,
    sync,
    parties,
    k,
    j0,
    j1,
):
    """One of ``parties`` threads of :func:`decode_layer`, owning hidden units j0:j1; thread 0 also writes
    the ids, computes the logits and samples. Per token: thread 0 records the ids (EOS) and says whether to
    stop; all meet; each packs h_{t-1}, computes its units' gate columns of h_{t-1} U from its panels
    (``weights``: U as it is or as bfloat16 bits, packed here into ``packed``), then their gates, c_t and
    h_t; all meet; thread 0 computes h_t W_d (``dense``: W_d packed) and samples the next ids."""
    B, length = out.shape
    pack_gate_columns(weights, j0, j1, packed)  # this thread's gate columns of U, once
    all_kept = np.ones(B, dtype=np.bool_)
    done = np.zeros(B, dtype=np.bool_)
    for step in range(length):
        if k == 0 and result[1] == 0:  # (a failed draw set result[1] already)
            if eos_id >= 0:
                for b in range(B):
                    if done[b]:
                        ids[b] = eos_id
                    done[b] = done[b] or ids[b] == eos_id
            out[:, step] = ids
            result[0] = step + 1
            if step + 1 == length or (eos_id >= 0 and done.all()):
                result[1] = 1
        if not barrier.wait(sync, parties, 2 * step) or result[1] != 0:
            return
        h, c, h_new, c_new = hs[step % 2], cs[step % 2], hs[(step + 1) % 2], cs[(step + 1) % 2]
        units_step(z, z, table, ids, c, h, all_kept, c_new, h_new, packed, tiles, scratch, j0, j1)
        if not barrier.wait(sync, parties, 2 * step + 1):
            return
        if k == 0:
            panels.pack_rows(h_new, tiles)
            panels.product(tiles, dense, logits, 0, logits.shape[1], scratch)
            if not sample_rows(logits, bias, banned, temperature, u[step + 1], ids):
                result[0], result[1] = -1, 1  # the others stop at the next barrier
