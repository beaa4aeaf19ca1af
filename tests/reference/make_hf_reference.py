"""Write the Hugging Face fixtures of tests/test_gpt2_interop.py: transformers' GPT2LMHeadModel on tiny random GPT-2s.

Run once, with a Python that has PyTorch, transformers and NumPy (not scratchlm: the fixtures are GPT-2 folders and
plain ``.npz`` arrays)::

    /path/to/torch-venv/bin/python tests/reference/make_hf_reference.py [--out DIR]

Every configuration is made here, from a seed (nothing is downloaded). For every case of :data:`CASES` it builds
``GPT2LMHeadModel(GPT2Config(...))`` in the case's dtype, redraws every parameter from the seed (far from GPT-2's
init: biases and LayerNorm parameters non-zero, weights large enough that the logits spread), and writes
``<case>/`` with:

    config.json, model.safetensors    ``save_pretrained(folder, safe_serialization=True)``: the model as
                                      transformers writes it (lm_head left out: it is tied to wte)
    reference.npz                     x (B, T) ids, several of them id 0 (GPT-2 has no padding id);
                                      logits (B, T, V) of every position; loss: the mean cross-entropy of
                                      positions 0..T-2 predicting x[:, 1:], in the case's dtype;
                                      hf_loss: ``model(x, labels=x).loss``, the same loss as transformers
                                      computes it (it casts the logits to float32 first, also in float64);
                                      grads/<name>: every parameter's gradient of loss, under scratchlm's
                                      TransformerLM(block="gpt") names and layouts (:func:`to_scratchlm`)

``manifest.json`` lists the cases and the versions that wrote them.
"""

import argparse
import json
import platform
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "hf"
BATCH = 3
SHAPES = {
    "gpt2_1layer": dict(vocab_size=11, n_positions=8, n_embd=8, n_layer=1, n_head=2),
    "gpt2_2layer_eps_inner": dict(
        vocab_size=23,
        n_positions=12,
        n_embd=12,
        n_layer=2,
        n_head=2,
        n_inner=20,
        layer_norm_epsilon=3e-4,
        activation_function="gelu_pytorch_tanh",
    ),
    "gpt2_2layer_gelu": dict(vocab_size=50, n_positions=16, n_embd=16, n_layer=2, n_head=4, activation_function="gelu"),
}
CASES = {
    f"{name}-{dtype}": {**shape, "dtype": dtype, "seed": 200 + 10 * i + (dtype == "float32")}
    for i, (name, shape) in enumerate(SHAPES.items())
    for dtype in ("float64", "float32")
}


def to_scratchlm(named, n_layer, n_head):
    """GPT2LMHeadModel's arrays by name -> scratchlm's TransformerLM(block="gpt") arrays by name.

    Conv1D weights are (in, out), as scratchlm's kernels: c_attn (E, 3E) -> query/key/value kernels
    W[:, jE:(j+1)E] as (E, N, K), biases b[jE:(j+1)E] as (N, K); attn.c_proj (E, E) -> the output kernel as
    (N, K, E); mlp.c_fc, mlp.c_proj -> ffn_1, ffn_2 as they are; lm_head is wte (tied).
    """
    E = named["transformer.wte.weight"].shape[1]
    N, K = n_head, E // n_head
    out = {
        "embedding/token_embeddings": named["transformer.wte.weight"],
        "embedding/position_embeddings": named["transformer.wpe.weight"],
        "final_layernorm/gamma": named["transformer.ln_f.weight"],
        "final_layernorm/beta": named["transformer.ln_f.bias"],
    }
    for i in range(n_layer):
        h, d = f"transformer.h.{i}", f"decoder_{i}"
        W, b = named[f"{h}.attn.c_attn.weight"], named[f"{h}.attn.c_attn.bias"]
        for j, part in enumerate(("query", "key", "value")):
            out[f"{d}/attention_1/{part}/kernel"] = W[:, j * E : (j + 1) * E].reshape(E, N, K)
            out[f"{d}/attention_1/{part}/bias"] = b[j * E : (j + 1) * E].reshape(N, K)
        out[f"{d}/attention_1/output/kernel"] = named[f"{h}.attn.c_proj.weight"].reshape(N, K, E)
        out[f"{d}/attention_1/output/bias"] = named[f"{h}.attn.c_proj.bias"]
        for ln in ("1", "2"):
            out[f"{d}/layernorm_{ln}/gamma"] = named[f"{h}.ln_{ln}.weight"]
            out[f"{d}/layernorm_{ln}/beta"] = named[f"{h}.ln_{ln}.bias"]
        for src, dst in (("c_fc", "ffn_1"), ("c_proj", "ffn_2")):
            out[f"{d}/{dst}/kernel"] = named[f"{h}.mlp.{src}.weight"]
            out[f"{d}/{dst}/bias"] = named[f"{h}.mlp.{src}.bias"]
    return {name: np.ascontiguousarray(a) for name, a in out.items()}


def build(case):
    """The case's GPT2LMHeadModel, every parameter redrawn from its seed (see the module docstring)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    shape = {k: v for k, v in case.items() if k not in ("dtype", "seed")}
    config = GPT2Config(**shape, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(case["seed"])
    model = GPT2LMHeadModel(config).to(getattr(torch, case["dtype"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("wte.weight") or name.endswith("wpe.weight"):
                p.normal_(0.0, 1.0)
            elif name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name.endswith("ln_f.weight"):
                p.normal_(1.0, 0.3)
            elif p.ndim == 1:
                p.normal_(0.0, 0.3)
            else:
                p.normal_(0.0, 1.0 / p.shape[0] ** 0.5)  # Conv1D (in, out): unit-scale outputs
    return model.train()


def make_case(case, folder=None):
    """The arrays of one fixture (see the module docstring); with ``folder``, the model is saved there."""
    import torch

    model = build(case)
    rng = np.random.default_rng(case["seed"])
    x = rng.integers(0, case["vocab_size"], size=(BATCH, case["n_positions"]))
    x[0, :2] = 0  # id 0 is a token like any other: at the start, in the middle and at the end
    x[1, 3] = 0
    x[2, -1] = 0
    ids = torch.from_numpy(x)
    hf_loss = model(ids, labels=ids).loss.item()
    logits = model(ids).logits  # (B, T, V)
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, case["vocab_size"]), ids[:, 1:].reshape(-1))
    assert abs(loss.item() - hf_loss) <= 1e-6 * abs(hf_loss), "the loss is not the one of labels=x"
    loss.backward()
    named = {n: p.grad.numpy().copy() for n, p in model.named_parameters()}
    arrays = {"x": x, "logits": logits.detach().numpy(), "loss": np.array(loss.item()), "hf_loss": np.array(hf_loss)}
    arrays.update({f"grads/{n}": g for n, g in to_scratchlm(named, case["n_layer"], case["n_head"]).items()})
    if folder is not None:
        model.save_pretrained(folder, safe_serialization=True)
    return arrays


def manifest():
    """The cases and the versions that wrote them."""
    import safetensors
    import torch
    import transformers

    return {
        "generator": "tests/reference/make_hf_reference.py",
        "model": "transformers GPT2LMHeadModel, tiny random configurations made here (dropout 0), loss of labels=x",
        "versions": {
            "transformers": transformers.__version__,
            "safetensors": safetensors.__version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "batch": BATCH,
        "cases": CASES,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="where to write the fixtures")
    args = parser.parse_args(argv)
    for name, case in CASES.items():
        folder = args.out / name
        folder.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(folder / "reference.npz", **make_case(case, folder))
        print("wrote", folder)
    (args.out / "manifest.json").write_text(json.dumps(manifest(), indent=2) + "\n")


if __name__ == "__main__":
    main()
