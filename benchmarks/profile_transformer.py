"""Where a TransformerLM training step (the `transformer` workload) and a generated token go, phase by phase.

    python benchmarks/profile_transformer.py [--kernels fused|reference] [--steps 3] [--tokens 50]

Wraps the layers' forward and backward methods (and the chunked loss) with wall-clock timers, runs a few
steps of the seed's sizes (benchmarks/frameworks.py CASES["transformer"]) and prints the median time per
phase, then the same for generating tokens at batch 1 (CASES["transformer-gen"]). Indicative only: on a
shared machine the GEMM rate moves with the load, so compare phases within one run.
"""

import argparse
import collections
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import frameworks as fw

from scratchlm import get_backend, optim
from scratchlm.layers import Dense, FeedForward, LayerNormalization, MultiHeadAttention
from scratchlm.layers.decoder import BookDecoderBlock
from scratchlm.layers.embedding import PositionalEmbedding
from scratchlm.models.transformer import TransformerLM

TIMES = collections.defaultdict(list)


def timed(cls, name, label):
    """Replace cls.name by a version that adds its wall time to TIMES[label] (nested timers overlap)."""
    inner = getattr(cls, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            TIMES[label].append(time.perf_counter() - start)

    setattr(cls, name, wrapper)


def instrument(backend):
    """Time the layer classes ``backend`` builds (the fused subclasses on the fused path: scratchlm.kernels.FUSED)."""
    for cls, label in (
        (MultiHeadAttention, "attention"),
        (LayerNormalization, "layernorm"),
        (FeedForward, "feedforward"),
        (PositionalEmbedding, "embedding"),
    ):
        timed(backend.layer(cls), "forward", f"{label} forward")
        timed(backend.layer(cls), "backward", f"{label} backward")
    dense = backend.layer(Dense)
    timed(dense, "score", "dense + loss (fwd; chunked on the fused path)")
    if hasattr(dense, "score_backward"):
        timed(dense, "score_backward", "dense + loss backward")
    timed(TransformerLM, "loss_and_grads", "loss_and_grads")
    block = backend.layer(BookDecoderBlock)
    if hasattr(block, "decode_step"):  # the fused KV-cache decoding
        timed(block, "decode_step", "decode_step (block)")


def report(title, per):
    print(f"\n{title}")
    for label, times in sorted(TIMES.items(), key=lambda kv: -sum(kv[1])):
        if times:
            print(f"  {label:40s} {1e3 * sum(times) / per:9.2f} ms  ({len(times) / per:g} calls)")
    TIMES.clear()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kernels", default="fused", choices=["fused", "reference"])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=50)
    args = ap.parse_args(argv)
    c = fw.CASES["transformer"]
    backend = get_backend("numpy", "float32", args.kernels)
    model = TransformerLM(
        c["V"], c["L"], embed_dim=c["E"], dense_dim=c["F"], num_heads=c["N"], key_dim=c["K"], backend=backend, seed=0
    )
    x, y = fw.transformer_data(c, np.random.default_rng(0))
    opt = optim.RMSprop(lr=c["lr"])
    model.loss_and_grads(x, y)  # compile / warm up
    instrument(backend)
    steps = []
    for _ in range(args.steps):
        start = time.perf_counter()
        _, grads = model.loss_and_grads(x, y)
        middle = time.perf_counter()
        opt.step(model.params, grads)
        steps.append((middle - start, time.perf_counter() - middle))
    TIMES["optimizer step"] = [s[1] for s in steps]
    report(
        f"training step, {args.kernels}: median loss_and_grads {1e3 * np.median([s[0] for s in steps]):.1f} ms",
        args.steps,
    )
    prompt = fw.transformer_data(fw.CASES["transformer-gen"], np.random.default_rng(0))
    model.generate(prompt, 5, seed=0)
    TIMES.clear()
    start = time.perf_counter()
    model.generate(prompt, args.tokens, temperature=1.0, banned_ids=(0,), seed=1)
    took = time.perf_counter() - start
    report(f"generation, {args.kernels}: {args.tokens / took:.0f} tokens/s, per token:", args.tokens)


if __name__ == "__main__":
    main()
