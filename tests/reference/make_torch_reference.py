"""Write the PyTorch fixtures of tests/test_torch_reference.py: nanoGPT's model on tiny random GPTs.

Run once, with a Python that has PyTorch and NumPy (not scratchlm: the fixtures are plain ``.npz`` arrays)::

    /path/to/torch-venv/bin/python tests/reference/make_torch_reference.py [--nanogpt DIR] [--out DIR]

nanoGPT's ``model.py`` (MIT) is imported from ``--nanogpt`` (default ``../shared/nanogpt`` next to the
checkout) at run time; none of its code is in this project. For every case of :data:`CASES` it builds
``GPT(GPTConfig(...))`` (GELU, tied wte/lm_head, LayerNorm ε 1e-5, dropout 0, nanoGPT's own init), in the case's
dtype, and records, under scratchlm's parameter names and layouts (:func:`to_scratchlm`):

    weights/<name>     the initial weights
    x, y               (B, T) a batch of ids, all >= 1 (scratchlm's TransformerLM reads id 0 as padding)
    logits, loss       nanoGPT's logits at every position (B, T, V) and its mean cross-entropy
    grads/<name>       every parameter's gradient (the tied table's: the lookup's and lm_head's, summed)
    train_x, train_y   (S, B, T) one batch per training step (train_x[0] is x)
    train_lr           the learning rate of each step: nanoGPT's get_lr (:func:`get_lr`)
    train_norm         each step's gradient norm before clipping, as clip_grad_norm_ returns it
    train_loss         each step's loss, before its update
    final/<name>       the weights after the S steps

A step is nanoGPT's train.py without accumulation: lr ← get_lr(it), forward, backward,
``clip_grad_norm_(1.0)``, ``torch.optim.AdamW`` as ``GPT.configure_optimizers`` groups the
parameters (weight decay on the >= 2-D ones only). ``manifest.json`` lists the cases, the optimizer,
the schedule and the versions that wrote them.
"""

import argparse
import contextlib
import importlib.util
import io
import json
import math
import platform
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "torch"
NANOGPT = HERE.parents[2] / "shared" / "nanogpt"

STEPS = 10
OPTIMIZER = {"weight_decay": 0.1, "betas": [0.9, 0.99], "eps": 1e-8, "grad_clip": 1.0}
SCHEDULE = {"learning_rate": 1e-3, "min_lr": 1e-4, "warmup_iters": 3, "lr_decay_iters": 8}
SIZES = {"vocab_size": 11, "block_size": 8, "n_embd": 8, "n_head": 2, "batch": 3}
CASES = {
    f"gpt_{n_layer}layer_{'bias' if bias else 'nobias'}-{dtype}": {
        **SIZES,
        "n_layer": n_layer,
        "bias": bias,
        "dtype": dtype,
        "seed": 100 + 10 * n_layer + bias,
    }
    for dtype in ("float64", "float32")
    for n_layer in (1, 2)
    for bias in (True, False)
}


def get_lr(it, learning_rate, min_lr, warmup_iters, lr_decay_iters):
    """nanoGPT's schedule: linear warmup to learning_rate, a cosine down to min_lr at lr_decay_iters, then min_lr."""
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it > lr_decay_iters:
        return min_lr
    ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (learning_rate - min_lr)


def to_scratchlm(named, n_layer, n_head):
    """nanoGPT's arrays by parameter name -> scratchlm's TransformerLM(block="gpt") arrays by name.

    Linear weights are (out, in) in PyTorch; scratchlm's kernels are (in, out), with the heads split out:
    c_attn (3E, E) -> W = weightᵀ (E, 3E) -> query/key/value kernels W[:, iE:(i+1)E] as (E, N, K), their
    biases (N, K); c_proj (E, E) -> the attention's output kernel weightᵀ as (N, K, E). A bias-free model
    (nanoGPT's bias=False) has no bias and no LayerNorm β, nor does scratchlm's use_bias=False.
    """
    E = named["transformer.wte.weight"].shape[1]
    N, K = n_head, E // n_head
    out = {
        "embedding/token_embeddings": named["transformer.wte.weight"],
        "embedding/position_embeddings": named["transformer.wpe.weight"],
    }

    def layernorm(src, dst):
        out[f"{dst}/gamma"] = named[f"{src}.weight"]
        if f"{src}.bias" in named:
            out[f"{dst}/beta"] = named[f"{src}.bias"]

    def dense(src, dst):
        out[f"{dst}/kernel"] = named[f"{src}.weight"].T
        if f"{src}.bias" in named:
            out[f"{dst}/bias"] = named[f"{src}.bias"]

    for i in range(n_layer):
        h, d = f"transformer.h.{i}", f"decoder_{i}"
        W = named[f"{h}.attn.c_attn.weight"].T  # (E, 3E): columns q | k | v, each head's K in a row
        b = named.get(f"{h}.attn.c_attn.bias")
        for j, part in enumerate(("query", "key", "value")):
            out[f"{d}/attention_1/{part}/kernel"] = W[:, j * E : (j + 1) * E].reshape(E, N, K)
            if b is not None:
                out[f"{d}/attention_1/{part}/bias"] = b[j * E : (j + 1) * E].reshape(N, K)
        out[f"{d}/attention_1/output/kernel"] = named[f"{h}.attn.c_proj.weight"].T.reshape(N, K, E)
        if f"{h}.attn.c_proj.bias" in named:
            out[f"{d}/attention_1/output/bias"] = named[f"{h}.attn.c_proj.bias"]
        layernorm(f"{h}.ln_1", f"{d}/layernorm_1")
        layernorm(f"{h}.ln_2", f"{d}/layernorm_2")
        dense(f"{h}.mlp.c_fc", f"{d}/ffn_1")
        dense(f"{h}.mlp.c_proj", f"{d}/ffn_2")
    layernorm("transformer.ln_f", "final_layernorm")
    return {name: np.ascontiguousarray(a) for name, a in out.items()}


def load_nanogpt(directory):
    """nanoGPT's model module, imported from ``directory`` (its model.py)."""
    spec = importlib.util.spec_from_file_location("nanogpt_model", Path(directory) / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_case(case, nanogpt):
    """The arrays of one fixture (see the module docstring)."""
    import torch

    torch.manual_seed(case["seed"])
    config = nanogpt.GPTConfig(
        block_size=case["block_size"],
        vocab_size=case["vocab_size"],
        n_layer=case["n_layer"],
        n_head=case["n_head"],
        n_embd=case["n_embd"],
        dropout=0.0,
        bias=case["bias"],
    )
    with contextlib.redirect_stdout(io.StringIO()):  # nanoGPT prints its parameter count
        model = nanogpt.GPT(config)
    model = model.to(getattr(torch, case["dtype"])).train()
    rng = np.random.default_rng(case["seed"])
    B, T, V = case["batch"], case["block_size"], case["vocab_size"]
    train_x = rng.integers(1, V, size=(STEPS, B, T))  # id 0 is scratchlm's padding: never an input
    train_y = rng.integers(1, V, size=(STEPS, B, T))

    def arrays():
        return to_scratchlm({n: p.detach().numpy().copy() for n, p in model.named_parameters()}, *layout)

    def grads():
        return to_scratchlm({n: p.grad.numpy().copy() for n, p in model.named_parameters()}, *layout)

    layout = (case["n_layer"], case["n_head"])
    out = {f"weights/{n}": a for n, a in arrays().items()}
    x, y = torch.from_numpy(train_x[0]), torch.from_numpy(train_y[0])
    logits, loss = model(x, y)  # with targets: the logits of every position
    loss.backward()
    out.update(x=train_x[0], y=train_y[0], logits=logits.detach().numpy(), loss=np.array(loss.item()))
    out.update({f"grads/{n}": g for n, g in grads().items()})
    model.zero_grad(set_to_none=True)

    with contextlib.redirect_stdout(io.StringIO()):
        optimizer = model.configure_optimizers(
            OPTIMIZER["weight_decay"], SCHEDULE["learning_rate"], tuple(OPTIMIZER["betas"]), "cpu"
        )
    assert all(group["eps"] == OPTIMIZER["eps"] for group in optimizer.param_groups)
    lrs, norms, losses = [], [], []
    for it in range(STEPS):
        lr = get_lr(it, **SCHEDULE)
        for group in optimizer.param_groups:
            group["lr"] = lr
        _, loss = model(torch.from_numpy(train_x[it]), torch.from_numpy(train_y[it]))
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), OPTIMIZER["grad_clip"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        lrs.append(lr)
        norms.append(norm.item())
        losses.append(loss.item())
    out.update(train_x=train_x, train_y=train_y, train_lr=np.array(lrs), train_norm=np.array(norms))
    out["train_loss"] = np.array(losses)
    out.update({f"final/{n}": a for n, a in arrays().items()})
    return out


def manifest():
    """The cases and the recipe, and the versions that wrote them."""
    import torch

    return {
        "generator": "tests/reference/make_torch_reference.py",
        "model": "nanoGPT model.py GPT (GELU, tied wte/lm_head, LayerNorm eps 1e-5, dropout 0)",
        "versions": {"torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version()},
        "steps": STEPS,
        "optimizer": {"name": "torch.optim.AdamW, GPT.configure_optimizers groups", **OPTIMIZER},
        "schedule": {"name": "nanoGPT get_lr", **SCHEDULE},
        "cases": CASES,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nanogpt", type=Path, default=NANOGPT, help="the folder of nanoGPT's model.py")
    parser.add_argument("--out", type=Path, default=OUT, help="where to write the fixtures")
    args = parser.parse_args(argv)
    nanogpt = load_nanogpt(args.nanogpt)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, case in CASES.items():
        np.savez_compressed(args.out / f"{name}.npz", **make_case(case, nanogpt))
        print("wrote", args.out / f"{name}.npz")
    (args.out / "manifest.json").write_text(json.dumps(manifest(), indent=2) + "\n")


if __name__ == "__main__":
    main()
