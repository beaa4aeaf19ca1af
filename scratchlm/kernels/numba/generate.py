"""Token-by-token sampling on the CPU with O(1) work per token.

What :meth:`scratchlm.models.LanguageModel.generate` does on the reference path,
minus its per-token overheads: the input table E·W + b is built once per call
(not once per token), every buffer is allocated once, and each token costs, per
layer, one GEMM and one fused step kernel, then one GEMM for the logits and one
sampling kernel.

At batch 1 a token is bound by reading U once (4 MB at H = 512: ~30 of the
~40 µs a token takes here).

Sampling follows :mod:`scratchlm.sampling` exactly (temperature, greedy at 0,
banned ids, inverse CDF with one host uniform per row and token). Top-k and
top-p are left to the reference path.
"""

import math

import numpy as np

from .activations import exp
from .lstm import step_forward
from .options import jit


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
