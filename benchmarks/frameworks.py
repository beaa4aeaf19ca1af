"""The benchmark workloads, written once per framework: scratchlm, Keras (TensorFlow) and PyTorch.

Each ``build_<framework>(case)`` returns ``(run, unit)``: ``run(n)`` does n units
of work — n training steps, or n sampled tokens per sequence — and returns the
seconds they took; ``unit`` is how many of the workload's reported things one
unit is (1 step; B characters).
Every framework gets the same shapes, optimizer and loss, fed the way its users
feed it: token ids to scratchlm (its one-hot/embedding lookup is a table
gather), one-hot float tensors to the Keras and PyTorch book models (as the
book does), ids to their embeddings. The data is random tokens, made once
before timing: the cost of a step does not depend on the values.

Cases (see benchmarks/bench.py):
    book     one-hot V=60 -> LSTM 128 -> Dense 60, T=60, B=128, RMSprop(0.01), loss on the last step
    s2s      Embedding(60, 64) -> LSTM 512 -> Dense 60, T=100, B=64, Adam(1e-3), loss on every step
    gru-book the book shapes with a GRU: one-hot V=60 -> GRU 128 -> Dense 60, T=60, B=128, RMSprop(0.01)
    gru-s2s  the s2s shapes with a GRU: Embedding(60, 64) -> GRU 512 -> Dense 60, T=100, B=64, Adam(1e-3)
             (Keras 3's GRU, reset_after=True, whose equations torch.nn.GRU shares)
    sweep-b{B}-h{H}  issue 14's sweep: Embedding(96, 64) -> LSTM H -> Dense 96, T=100, Adam(1e-3), loss on
             every step, for B in 8 16 32 64 128 256 and H in 128 256 512 1024
    gen-b1   the s2s model sampling at temperature 1, batch 1
    gen-b64  the same, batch 64
    gpu      Embedding(60, 64) -> LSTM 1024 -> Dense 60, T=100, B=256, Adam, on a CUDA GPU
             (scratchlm on CuPy, PyTorch on cuDNN; Keras is the CPU build here and sits it out)
    gpu-gen-b1  that model sampling at temperature 1, batch 1, on the GPU (PyTorch: nn.LSTMCell on cuDNN)
    gpu-transformer, gpu-transformer-gen  the two Transformer cases below on the GPU (PyTorch's CUDA tensors;
             PyTorch has no KV-cache decoder here, so the generation case is scratchlm's two paths alone)
    transformer      the IMDB seed (issue 11): PositionalEmbedding(15000, 100, 256) -> one book decoder
             block (2 heads, key_dim 256, dense 2048, causal ∧ padding masks) -> Dense 15000; sequences of
             100 ids cut into x = ids[:, :-1], y = ids[:, 1:] (T=99), B=32, RMSprop(1e-3), sparse
             cross-entropy over the positions whose input is not padding (id 0)
    transformer-gen  that model generating 50 tokens after a 2-token prompt, batch 1: scratchlm's
             ``generate`` (KV cache) against the seed's way, the full model re-run on the whole text
             for every token (Keras ``model(x)`` as the book's callback does, and ``scratchlm-rerun``:
             scratchlm's ``forward`` the same way), and against PyTorch with a KV cache of its own
             (:func:`_torch_transformer_generator`); one unit is one 50-token generation
    gpt-cpu  issue 23's ``--preset nanogpt-cpu``: nanoGPT's character GPT (4 blocks, E 128, 4 heads, T 64,
             B 12, V 65, exact GELU, no biases, tied embeddings), one step of its train.py: forward,
             backward, clip to a global norm of 1, AdamW (lr 1e-3, β₂ 0.99, weight decay 0.1 on the >= 2-D
             weights). PyTorch runs nanoGPT's own ``model.py`` (eager, imported from a copy in a temporary
             folder, see :func:`nanogpt_module`) with its ``configure_optimizers``; scratchlm runs
             :func:`scratchlm.train.train_step`, the step its Trainer takes
    gpt2-124m-gen   issue 24: a GPT-2-124M-shaped model (12 blocks, E 768, 12 heads, context 1024, V 50,257,
             GELU-tanh, tied; random weights written locally by benchmarks/gpt2_124m.py into the folder
             $SCRATCHLM_GPT2_FOLDER) generating 32 tokens greedily after an 8-token prompt, batch 1: scratchlm's
             ``generate`` (KV cache) against transformers' GPT2LMHeadModel (eager attention) stepping with its
             own cache (``past_key_values``); one unit is one 32-token generation
    gpt2-124m-step  that model's fine-tuning step at B 4, T 64: forward, backward, AdamW (lr 1e-4, weight decay
             0.1), in scratchlm and in transformers + torch.optim.AdamW
"""

import contextlib
import os
import sys
import time

import numpy as np

V = 60
DEFAULT_FRAMEWORKS = ["scratchlm", "scratchlm-reference", "keras", "torch"]  # cases without "frameworks"
GEN_FRAMEWORKS = [*DEFAULT_FRAMEWORKS, "scratchlm-bf16"]  # the recurrent generation cases: also U as bfloat16
CASES = {
    "book": dict(kind="train", embedding=None, H=128, T=60, B=128, optimizer="rmsprop", last_only=True),
    "s2s": dict(kind="train", embedding=64, H=512, T=100, B=64, optimizer="adam", last_only=False),
    # The same shapes with a GRU (issue 12): Keras' GRU(reset_after=True), torch.nn.GRU.
    "gru-book": dict(kind="train", cell="gru", embedding=None, H=128, T=60, B=128, optimizer="rmsprop", last_only=True),
    "gru-s2s": dict(kind="train", cell="gru", embedding=64, H=512, T=100, B=64, optimizer="adam", last_only=False),
    "gen-b1": dict(kind="generate", embedding=64, H=512, B=1, prompt=10, frameworks=GEN_FRAMEWORKS),
    "gen-b64": dict(kind="generate", embedding=64, H=512, B=64, prompt=10, frameworks=GEN_FRAMEWORKS),
    "gpu": dict(kind="train", embedding=64, H=1024, T=100, B=256, optimizer="adam", last_only=False, gpu=True),
    "gpu-gen-b1": dict(kind="generate", embedding=64, H=1024, B=1, prompt=10, gpu=True),
    # The IMDB seed's Transformer (issue 11). "frameworks": the only ones that run this case.
    "transformer": dict(
        kind="train",
        model="transformer",
        V=15000,
        L=100,
        T=99,
        B=32,
        E=256,
        F=2048,
        N=2,
        K=256,
        optimizer="rmsprop",
        lr=1e-3,
        frameworks=["scratchlm", "scratchlm-reference", "keras", "torch"],
    ),
    "transformer-gen": dict(
        kind="generate",
        model="transformer",
        V=15000,
        L=100,
        E=256,
        F=2048,
        N=2,
        K=256,
        B=1,
        prompt=2,
        length=50,
        frameworks=["scratchlm", "scratchlm-rerun", "keras", "torch"],
    ),
}
# The same two Transformer cases on a CUDA GPU (issue 27): CuPy against PyTorch's CUDA tensors.
CASES["gpu-transformer"] = {
    **CASES["transformer"],
    "gpu": True,
    "frameworks": ["scratchlm", "scratchlm-reference", "torch"],
}
CASES["gpu-transformer-gen"] = {
    **CASES["transformer-gen"],
    "gpu": True,
    "frameworks": ["scratchlm", "scratchlm-reference"],
}
# Issue 14's sweep: one training step of Embedding 64 -> LSTM H -> Dense 96, T=100, Adam, at every B x H.
SWEEP_B, SWEEP_H = (8, 16, 32, 64, 128, 256), (128, 256, 512, 1024)
for _B in SWEEP_B:
    for _H in SWEEP_H:
        CASES[f"sweep-b{_B}-h{_H}"] = dict(
            kind="train", embedding=64, H=_H, T=100, B=_B, V=96, optimizer="adam", last_only=False
        )
# Issue 23: nanoGPT's CPU command ("I only have a macbook"), as scratchlm's --preset nanogpt-cpu.
CASES["gpt-cpu"] = dict(
    kind="train",
    model="gpt",
    V=65,
    T=64,
    B=12,
    E=128,
    N=4,
    L=4,
    frameworks=["scratchlm", "scratchlm-reference", "torch"],
)
# Issue 24: a GPT-2-124M-shaped model read from a Hugging Face folder (benchmarks/gpt2_124m.py writes it).
CASES["gpt2-124m-gen"] = dict(
    kind="generate", model="gpt2", B=1, prompt=8, length=32, frameworks=["scratchlm", "torch"]
)
CASES["gpt2-124m-step"] = dict(kind="train", model="gpt2", B=4, T=64, frameworks=["scratchlm", "torch"])
GPT2_VOCAB = 50257
NANOGPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "nanogpt")
THREADS = 2


def data(case):
    """(x ids (B, T), y targets) for a training case, or the prompt ids (B, P) for generation."""
    return data_of(CASES[case])


def data_of(c):
    """:func:`data` of the case ``c``."""
    rng = np.random.default_rng(0)
    if c.get("model") == "transformer":
        return transformer_data(c, rng)
    v = c.get("V", V)
    if c.get("model") == "gpt":  # ids >= 1: scratchlm's TransformerLM reads id 0 as padding (a CharTokenizer's <pad>)
        return rng.integers(1, v, (c["B"], c["T"])), rng.integers(1, v, (c["B"], c["T"]))
    if c["kind"] == "generate":
        return rng.integers(0, v, (c["B"], c["prompt"]))
    x = rng.integers(0, v, (c["B"], c["T"]))
    y = rng.integers(0, v, (c["B"],) if c["last_only"] else (c["B"], c["T"]))
    return x, y


def transformer_data(c, rng):
    """Random word ids in [2, V) (no padding, no [UNK]), laid out as the seed's TextVectorization gives them:
    sequences of L=100 ids, each a review of 40 to 100 words padded with 0 at the end (about 30% of the
    positions are padding), cut into x = ids[:, :-1], y = ids[:, 1:]; for generation a 2-token prompt (1, 2)."""
    if c["kind"] == "generate":
        return rng.integers(2, c["V"], (c["B"], c["prompt"]))
    ids = rng.integers(2, c["V"], (c["B"], c["L"]))
    lengths = rng.integers(40, c["L"] + 1, c["B"])
    ids[np.arange(c["L"])[None, :] >= lengths[:, None]] = 0
    return ids[:, :-1], ids[:, 1:]


def sample_host(logits, rng, temperature=1.0):
    """One id from host logits (V,) at ``temperature``, never id 0 (padding; the seed's vocabulary has "" there)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z[0] = -np.inf
    p = np.exp(z - z.max())
    return int(rng.choice(p.size, p=p / p.sum()))


# -- scratchlm --------------------------------------------------------------------------------------------


def build_scratchlm(case, kernels="fused", weights="float32"):
    from scratchlm import LanguageModel, get_backend, optim

    c = CASES[case]
    backend = get_backend("cupy" if c.get("gpu") else "numpy", "float32", kernels)
    if c.get("model") == "transformer":
        return _scratchlm_transformer(c, backend, optim)
    if c.get("model") == "gpt":
        return _scratchlm_gpt(c, backend, optim)
    if c.get("model") == "gpt2":
        return _scratchlm_gpt2(c, backend, optim)
    model = LanguageModel(c.get("V", V), c["embedding"], [c["H"]], backend=backend, cell=c.get("cell", "lstm"))
    sync = backend.xp.cuda.Device().synchronize if c.get("gpu") else lambda: None
    if c["kind"] == "generate":
        prompt = data(case)
        calls = iter(range(10**9))

        def run(n):
            start = time.perf_counter()
            model.generate(prompt, n, temperature=1.0, seed=next(calls), weights=weights)
            return time.perf_counter() - start

        return run, c["B"]

    x, y = (backend.asarray(a) for a in data(case))
    opt = optim.RMSprop(lr=0.01) if c["optimizer"] == "rmsprop" else optim.Adam(lr=1e-3)

    def run(n):
        start = time.perf_counter()
        for _ in range(n):
            _, grads = model.loss_and_grads(x, y, last_only=c["last_only"])
            opt.step(model.params, grads)
        sync()
        return time.perf_counter() - start

    return run, 1


def build_scratchlm_reference(case):
    return build_scratchlm(case, kernels="reference")


def build_scratchlm_bfloat16(case):
    """The recurrent generation cases with ``weights="bfloat16"`` (U read as bfloat16; issue 25)."""
    if CASES[case]["kind"] != "generate" or CASES[case].get("model"):
        raise RuntimeError("scratchlm-bf16 runs only the recurrent generation cases (gen-b1, gen-b64)")
    return build_scratchlm(case, weights="bfloat16")


def _scratchlm_transformer(c, backend, optim, rerun=False):
    from scratchlm.models.transformer import TransformerLM

    model = TransformerLM(
        c["V"],
        c["L"],
        embed_dim=c["E"],
        dense_dim=c["F"],
        num_heads=c["N"],
        key_dim=c["K"],
        num_layers=1,
        block="book",
        backend=backend,
        seed=0,
    )
    if c["kind"] == "generate":
        prompt = transformer_data(c, np.random.default_rng(0))
        calls = iter(range(10**9))
        if rerun:
            return _rerun_generator(lambda ids: model.forward(ids)[0], c, prompt), c["length"]

        def run(n):
            start = time.perf_counter()
            for _ in range(n):
                model.generate(prompt, c["length"], temperature=1.0, banned_ids=(0,), seed=next(calls))
            return time.perf_counter() - start

        return run, c["length"]

    x, y = (backend.asarray(a) for a in transformer_data(c, np.random.default_rng(0)))
    opt = optim.RMSprop(lr=c["lr"])
    sync = backend.xp.cuda.Device().synchronize if c.get("gpu") else lambda: None

    def run(n):
        start = time.perf_counter()
        for _ in range(n):
            _, grads = model.loss_and_grads(x, y)  # mean over x != 0 (padding masked)
            opt.step(model.params, grads)
        sync()
        return time.perf_counter() - start

    return run, 1


def nanogpt_cpu_model(vocab_size, backend="numpy", seed=0, **changes):
    """The TransformerLM of ``scratchlm train --preset nanogpt-cpu`` (its settings in
    :data:`scratchlm.cli.settings.PRESETS`), with ``changes`` to its config (e.g. ``pad_id=None``)."""
    from scratchlm.cli.settings import model_config, resolve
    from scratchlm.models.transformer import TransformerLM

    config = {**model_config(resolve({"preset": "nanogpt-cpu", "seed": seed}), vocab_size), **changes}
    config.pop("kind")
    return TransformerLM(backend=backend, **config)


def _scratchlm_gpt(c, backend, optim):
    """The model and step of ``scratchlm train tinyshakespeare --preset nanogpt-cpu``."""
    model = nanogpt_cpu_model(c["V"], backend)
    shape = (model.sequence_length, model.embed_dim, model.num_heads, model.num_layers)
    assert shape == (c["T"], c["E"], c["N"], c["L"]), "CASES['gpt-cpu'] is no longer the preset's shape"
    opt = optim.AdamW(lr=1e-3, beta_2=0.99, weight_decay=0.1, global_clipnorm=1.0, kernels=backend.kernels)
    return _train_steps(model, opt, *(backend.asarray(a) for a in data_for(c)))


def _train_steps(model, opt, x, y):
    """(run, 1): ``run(n)`` takes n steps of :func:`scratchlm.train.train_step` on the batch (x, y), the step its
    Trainer takes, and returns the seconds."""
    from scratchlm.batching import Batch
    from scratchlm.train import train_step

    batch = Batch(x, y, None, x.size)

    def run(n):
        start = time.perf_counter()
        for _ in range(n):
            train_step(model, opt, batch)
        return time.perf_counter() - start

    return run, 1


def gpt2_folder():
    """The GPT-2-124M-shaped folder the gpt2-124m cases read ($SCRATCHLM_GPT2_FOLDER)."""
    folder = os.environ.get("SCRATCHLM_GPT2_FOLDER")
    if not folder or not os.path.exists(os.path.join(folder, "model.safetensors")):
        raise RuntimeError("set SCRATCHLM_GPT2_FOLDER to the folder benchmarks/gpt2_124m.py writes")
    return folder


def gpt2_data(c):
    """The prompt (1, P), or x, y (B, T) for a step: random ids of GPT-2's vocabulary (0 included: no padding)."""
    rng = np.random.default_rng(0)
    if c["kind"] == "generate":
        return rng.integers(0, GPT2_VOCAB, (c["B"], c["prompt"]))
    return rng.integers(0, GPT2_VOCAB, (c["B"], c["T"])), rng.integers(0, GPT2_VOCAB, (c["B"], c["T"]))


def _scratchlm_gpt2(c, backend, optim):
    from scratchlm.interop import from_hf

    model = from_hf(gpt2_folder(), backend=backend, dropout=0.0)
    if c["kind"] == "generate":
        prompt = gpt2_data(c)

        def run(n):
            start = time.perf_counter()
            for _ in range(n):
                model.generate(prompt, c["length"], temperature=0)
            return time.perf_counter() - start

        return run, c["length"]
    return _train_steps(model, optim.AdamW(lr=1e-4, weight_decay=0.1, kernels=backend.kernels), *gpt2_data(c))


def build_scratchlm_rerun(case):
    """The seed's way of generating, with scratchlm's model: the full forward pass per token."""
    from scratchlm import get_backend, optim

    c = CASES[case]
    if c.get("model") != "transformer" or c["kind"] != "generate":
        raise RuntimeError("scratchlm-rerun runs only the transformer-gen case")
    return _scratchlm_transformer(c, get_backend("numpy", "float32", "fused"), optim, rerun=True)


def _rerun_generator(predict, c, prompt):
    """The book's TextGenerator callback, on ids: for every new token the text so far, padded with 0 to the
    model's sequence_length (as its ``text_vectorization([sentence])`` does), goes through the whole model
    (``predict``: ids (1, L) -> logits (1, L, V)) and the next token is drawn from the last real position
    (the book reads position ``i``, its loop counter: the same cost, but not the last token's prediction)."""
    rng = np.random.default_rng(0)
    L, length = c["L"], c["length"]

    def run(n):
        start = time.perf_counter()
        for _ in range(n):
            ids = np.zeros((1, L), dtype=np.int32)
            used = prompt.shape[1]
            ids[0, :used] = prompt[0]
            for _ in range(length):
                logits = np.asarray(predict(ids))[0, used - 1]
                token = sample_host(logits, rng)
                if used < L:
                    ids[0, used] = token
                    used += 1
                else:  # past L words the book's vectorizer cuts
                    ids[0, :-1] = ids[0, 1:]  # the text; keep the last L instead
                    ids[0, -1] = token
        return time.perf_counter() - start

    return run


# -- PyTorch ------------------------------------------------------------------------------------------------


def build_torch(case):
    import torch

    torch.set_num_threads(THREADS)
    if CASES[case].get("model") == "gpt":
        return _torch_nanogpt(torch, CASES[case])
    if CASES[case].get("model") == "gpt2":
        return _torch_gpt2(torch, CASES[case])
    torch.manual_seed(0)
    # float32 means float32: PyTorch lets cuDNN round float32 to TF32 on tensor cores unless told not to
    # (scratchlm's CuPy GEMMs stay float32). SCRATCHLM_BENCH_TF32=1 measures PyTorch with TF32.
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = (
        os.environ.get("SCRATCHLM_BENCH_TF32") == "1"
    )
    c = CASES[case]
    if c.get("model") == "transformer":
        return _torch_transformer(torch, c)
    v = c.get("V", V)
    device = "cuda" if c.get("gpu") else "cpu"
    sync = torch.cuda.synchronize if c.get("gpu") else lambda: None

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = None if c["embedding"] is None else torch.nn.Embedding(v, c["embedding"])
            rnn = torch.nn.GRU if c.get("cell") == "gru" else torch.nn.LSTM
            self.lstm = rnn(c["embedding"] or v, c["H"], batch_first=True)
            self.dense = torch.nn.Linear(c["H"], v)

        def forward(self, x, state=None):
            h, state = self.lstm(x if self.embedding is None else self.embedding(x), state)
            return h, state

    net = Net().to(device)
    if c["kind"] == "generate":
        return _torch_generator(torch, net, c, torch.as_tensor(data(case)).to(device))

    x, y = data(case)
    x = torch.nn.functional.one_hot(torch.as_tensor(x), v).float() if c["embedding"] is None else torch.as_tensor(x)
    x, y = x.to(device), torch.as_tensor(y).to(device)
    if c["optimizer"] == "rmsprop":  # Keras' rho = 0.9, eps = 1e-7
        opt = torch.optim.RMSprop(net.parameters(), lr=0.01, alpha=0.9, eps=1e-7)
    else:
        opt = torch.optim.Adam(net.parameters(), lr=1e-3, eps=1e-7)
    loss_fn = torch.nn.CrossEntropyLoss()

    def run(n):
        start = time.perf_counter()
        for _ in range(n):
            opt.zero_grad()
            h, _ = net(x)
            logits = net.dense(h[:, -1] if c["last_only"] else h)
            loss = loss_fn(logits.reshape(-1, v), y.reshape(-1))
            loss.backward()
            opt.step()
        sync()
        return time.perf_counter() - start

    return run, 1


def _torch_generator(torch, net, c, prompt):
    """The prompt through nn.LSTM, then one nn.LSTMCell step per token on the same weights: at batch 1
    the cell is ~2.5x faster than calling nn.LSTM on one-step sequences (measured here)."""
    cell = torch.nn.LSTMCell(c["embedding"], c["H"]).to(prompt.device)
    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        setattr(cell, name, getattr(net.lstm, f"{name}_l0"))

    @torch.inference_mode()
    def run(n):
        start = time.perf_counter()
        h, (h_n, c_n) = net(prompt)
        state = (h_n[0], c_n[0])
        logits = net.dense(h[:, -1])
        for k in range(n):
            ids = torch.multinomial(torch.softmax(logits / 1.0, dim=-1), 1)[:, 0]  # (B,)
            if k + 1 < n:
                state = cell(net.embedding(ids), state)
                logits = net.dense(state[0])
        if prompt.is_cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    return run, c["B"]


def _torch_transformer(torch, c):
    """The seed's book block in torch.nn. nn.MultiheadAttention splits E into N heads of E/N, while the seed's
    heads have key_dim = E dimensions each, so the attention is written out: Linear projections to N·K, torch
    matmuls and softmax, masked entries replaced by Keras' large negative (a fully masked padding row is then
    uniform, as in Keras, instead of NaN)."""
    nn, F = torch.nn, torch.nn.functional
    V, L, E, Fd, N, K = c["V"], c["L"], c["E"], c["F"], c["N"], c["K"]
    fill = -0.7 * float(torch.finfo(torch.float32).max)

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.query, self.key, self.value = nn.Linear(E, N * K), nn.Linear(E, N * K), nn.Linear(E, N * K)
            self.output = nn.Linear(N * K, E)

        def forward(self, query, kv, mask):  # (B, T, E), (B, S, E), (B, 1, T, S) bool
            B, T_, _ = query.shape
            S = kv.shape[1]
            q = self.query(query).view(B, T_, N, K).transpose(1, 2)  # (B, N, T, K)
            k = self.key(kv).view(B, S, N, K).transpose(1, 2)
            v = self.value(kv).view(B, S, N, K).transpose(1, 2)
            s = (q @ k.transpose(-1, -2)) * (1.0 / K**0.5)  # (B, N, T, S)
            p = torch.softmax(s.masked_fill(~mask, fill), dim=-1)
            return self.output((p @ v).transpose(1, 2).reshape(B, T_, N * K))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.tokens, self.positions = nn.Embedding(V, E), nn.Embedding(L, E)
            self.attention_1, self.attention_2 = Attention(), Attention()
            self.ln1, self.ln2, self.ln3 = (nn.LayerNorm(E, eps=1e-3) for _ in range(3))
            self.ffn_1, self.ffn_2 = nn.Linear(E, Fd), nn.Linear(Fd, E)
            self.dense = nn.Linear(E, V)

        def forward(self, ids):  # (B, T) -> logits (B, T, V)
            T_ = ids.shape[1]
            pos = torch.arange(T_, device=ids.device)
            x = self.tokens(ids) + self.positions(pos)[None]
            keep = ids != 0
            mask = ((pos[:, None] >= pos[None, :])[None] & keep[:, :, None] & keep[:, None, :])[:, None]
            a1 = self.ln1(x + self.attention_1(x, x, mask))
            a2 = self.ln2(a1 + self.attention_2(a1, x, mask))
            return self.dense(self.ln3(a2 + self.ffn_2(F.relu(self.ffn_1(a2)))))

    device = "cuda" if c.get("gpu") else "cpu"
    net = Net().to(device)
    if c["kind"] == "generate":
        return _torch_transformer_generator(torch, net, c), c["length"]
    x, y = (torch.as_tensor(a).to(device) for a in data_for(c))
    y = torch.where(x != 0, y, torch.full_like(y, -100))  # ignore_index: mean over non-padding inputs
    opt = torch.optim.RMSprop(net.parameters(), lr=c["lr"], alpha=0.9, eps=1e-7)  # Keras' rho, epsilon
    loss_fn = nn.CrossEntropyLoss(ignore_index=-100)
    sync = torch.cuda.synchronize if c.get("gpu") else lambda: None

    def run(n):
        start = time.perf_counter()
        for _ in range(n):
            opt.zero_grad()
            loss = loss_fn(net(x).reshape(-1, V), y.reshape(-1))
            loss.backward()
            opt.step()
        sync()
        return time.perf_counter() - start

    return run, 1


def nanogpt_module():
    """nanoGPT's model.py (MIT, ``../shared/nanogpt`` next to the checkout, or $NANOGPT), imported from a copy in a
    temporary folder: it is run for comparison only, never part of scratchlm."""
    import importlib.util
    import shutil
    import tempfile

    source = os.path.join(os.environ.get("NANOGPT", NANOGPT), "model.py")
    if not os.path.exists(source):
        raise RuntimeError(f"nanoGPT's model.py is not at {source}: set NANOGPT to its folder")
    copy = os.path.join(tempfile.mkdtemp(prefix="nanogpt-"), "model.py")
    shutil.copyfile(source, copy)
    spec = importlib.util.spec_from_file_location("nanogpt_model", copy)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _torch_nanogpt(torch, c):
    """nanoGPT's model and one iteration of its train.py loop (float32 on the CPU: no autocast, no GradScaler)."""
    nanogpt = nanogpt_module()
    config = nanogpt.GPTConfig(
        block_size=c["T"], vocab_size=c["V"], n_layer=c["L"], n_head=c["N"], n_embd=c["E"], dropout=0.0, bias=False
    )
    with contextlib.redirect_stdout(sys.stderr):  # its parameter count and optimizer groups
        model = nanogpt.GPT(config)
        opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")
    x, y = (torch.as_tensor(a, dtype=torch.int64) for a in data_for(c))

    def run(n):
        start = time.perf_counter()
        for _ in range(n):
            _, loss = model(x, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    return run, 1


def _torch_gpt2(torch, c):
    """transformers' GPT2LMHeadModel read from the same folder, eager attention; generation steps with its own
    KV cache (``past_key_values``), greedy, one token per forward as scratchlm's ``generate`` does."""
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(gpt2_folder(), torch_dtype=torch.float32, attn_implementation="eager")
    if c["kind"] == "generate":
        model.eval()
        prompt = torch.as_tensor(gpt2_data(c))

        def run(n):
            start = time.perf_counter()
            with torch.no_grad():
                for _ in range(n):
                    out = model(prompt, use_cache=True)
                    past, ids = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
                    for _ in range(c["length"] - 1):
                        out = model(ids, past_key_values=past, use_cache=True)
                        past, ids = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
            return time.perf_counter() - start

        return run, c["length"]
    model.config.resid_pdrop = model.config.embd_pdrop = model.config.attn_pdrop = 0.0
    model.train()
    for module in model.modules():  # dropout 0, as scratchlm's dropout=0.0
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
    x, y = (torch.as_tensor(a) for a in gpt2_data(c))

    def run(n):
        start = time.perf_counter()
        for _ in range(n):
            logits = model(x).logits
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    return run, 1


def _torch_transformer_generator(torch, net, c):
    """The seed's model generating with a KV cache in PyTorch (issue 25: a decoder to compare scratchlm's ``generate``
    with, beyond the book's full re-run): the prompt runs once; then each token costs one position's work. Both
    attentions keep their keys and values: attention_1's of the embeddings x, attention_2's (queries from a1) of
    the same x, as the book's decoder attends to its inputs. No padding in the prompt, so the causal mask is the
    cache's extent. Sampling at temperature 1, never id 0, one draw per token on the host (:func:`sample_host`)."""
    F = torch.nn.functional
    N, K = c["N"], c["K"]
    prompt = torch.as_tensor(transformer_data(c, np.random.default_rng(0)))
    rng = np.random.default_rng(0)

    def heads(t):  # (1, S, N·K) -> (1, N, S, K)
        return t.view(1, t.shape[1], N, K).transpose(1, 2)

    def attend(att, query, keys, values, causal):
        q = heads(att.query(query))
        s = (q @ keys.transpose(-1, -2)) * (1.0 / K**0.5)  # (1, N, T, S)
        if causal:
            T_, S = s.shape[-2:]
            s = s.masked_fill(~torch.ones(T_, S, dtype=torch.bool).tril(S - T_), float("-inf"))
        o = torch.softmax(s, dim=-1) @ values  # (1, N, T, K)
        return att.output(o.transpose(1, 2).reshape(1, query.shape[1], N * K))

    def step(ids, start, cache):
        """Positions start … start + T - 1 of ``ids`` (1, T) through the model, the caches grown; last logits."""
        pos = torch.arange(start, start + ids.shape[1])
        x = net.tokens(ids) + net.positions(pos)[None]
        for name, att in (("1", net.attention_1), ("2", net.attention_2)):
            k, v = heads(att.key(x)), heads(att.value(x))
            if name in cache:
                k, v = torch.cat([cache[name][0], k], dim=2), torch.cat([cache[name][1], v], dim=2)
            cache[name] = k, v
        a1 = net.ln1(x + attend(net.attention_1, x, *cache["1"], causal=True))
        a2 = net.ln2(a1 + attend(net.attention_2, a1, *cache["2"], causal=True))
        out = net.ln3(a2 + net.ffn_2(F.relu(net.ffn_1(a2))))
        return net.dense(out[:, -1])[0]

    def run(n):
        start = time.perf_counter()
        with torch.no_grad():
            for _ in range(n):
                cache = {}
                logits = step(prompt, 0, cache)
                used = prompt.shape[1]
                for _ in range(c["length"]):  # prompt + length <= L positions: the cache never has to slide
                    logits = step(torch.tensor([[sample_host(logits.numpy(), rng)]]), used, cache)
                    used += 1
        return time.perf_counter() - start

    return run


def data_for(c):
    if c.get("model") == "gpt":
        return data_of(c)
    return transformer_data(c, np.random.default_rng(0))


# -- Keras (TensorFlow) ----------------------------------------------------------------------------------------


def build_keras(case):
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(THREADS)
    keras.utils.set_random_seed(0)
    c = CASES[case]
    if c.get("gpu"):
        raise RuntimeError("the Keras worker benchmarks TensorFlow's CPU build only")
    if c.get("model") == "transformer":
        return _keras_transformer(keras, tf, c)
    if c["kind"] == "generate":
        return _keras_generator(keras, tf, c, data(case))

    x, y = data(case)
    v = c.get("V", V)
    if c.get("cell") == "gru":

        def rnn(**kwargs):
            return keras.layers.GRU(c["H"], reset_after=True, **kwargs)
    else:

        def rnn(**kwargs):
            return keras.layers.LSTM(c["H"], **kwargs)

    if c["embedding"] is None:
        inputs = keras.Input((c["T"], v))
        x = np.eye(v, dtype=np.float32)[x]  # (B, T, V) one-hot
        hidden = rnn(return_sequences=not c["last_only"])(inputs)
    else:
        inputs = keras.Input((c["T"],), dtype="int32")
        x = x.astype(np.int32)
        hidden = rnn(return_sequences=True)(keras.layers.Embedding(v, c["embedding"])(inputs))
    model = keras.Model(inputs, keras.layers.Dense(v)(hidden))
    opt = keras.optimizers.RMSprop(0.01) if c["optimizer"] == "rmsprop" else keras.optimizers.Adam(1e-3)
    model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    batches = tf.data.Dataset.from_tensors((x, y)).repeat()
    ends = []
    clock = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: ends.append(time.perf_counter()))

    def run(n):
        """model.fit over n + 1 batches, timed from the end of the first batch to the end of the last,
        so that fit's set-up (a few hundred ms) is not charged to the steps."""
        ends.clear()
        model.fit(batches, steps_per_epoch=n + 1, epochs=1, verbose=0, callbacks=[clock])
        return ends[-1] - ends[0]

    return run, 1


def _keras_generator(keras, tf, c, prompt):
    """A one-step sampling function compiled with tf.function, as the TensorFlow text-generation tutorial does."""
    embedding = keras.layers.Embedding(V, c["embedding"])
    lstm = keras.layers.LSTM(c["H"], return_sequences=True, return_state=True)
    dense = keras.layers.Dense(V)

    @tf.function
    def step(ids, h, c_):
        out, h, c_ = lstm(embedding(ids), initial_state=[h, c_])
        logits = dense(out[:, -1])
        return tf.random.categorical(logits / 1.0, 1), h, c_

    prompt = tf.constant(prompt, dtype=tf.int32)
    zeros = tf.zeros((c["B"], c["H"]))

    def run(n):
        start = time.perf_counter()
        ids, h, c_ = step(prompt, zeros, zeros)
        for _ in range(n - 1):
            ids, h, c_ = step(tf.cast(ids, tf.int32), h, c_)
        ids.numpy()
        return time.perf_counter() - start

    return run, c["B"]


def _keras_transformer(keras, tf, c):
    """The seed's model with keras.layers, the masks passed explicitly (under Keras 3 the book's
    TransformerDecoder never receives its padding mask; see docs/design.md): training with model.fit as the
    other Keras workloads, generation with model(x) per token as the book's TextGenerator callback."""
    from keras import layers, ops

    V, L, E, Fd, N, K = c["V"], c["L"], c["E"], c["F"], c["N"], c["K"]

    class Seed(keras.Model):
        def __init__(self):
            super().__init__()
            self.tokens, self.positions = layers.Embedding(V, E), layers.Embedding(L, E)
            self.attention_1 = layers.MultiHeadAttention(num_heads=N, key_dim=K)
            self.attention_2 = layers.MultiHeadAttention(num_heads=N, key_dim=K)
            self.ln1, self.ln2, self.ln3 = (layers.LayerNormalization(epsilon=1e-3) for _ in range(3))
            self.ffn_1, self.ffn_2 = layers.Dense(Fd, activation="relu"), layers.Dense(E)
            self.dense = layers.Dense(V)

        def call(self, ids):  # (B, T) int32 -> logits (B, T, V)
            pos = ops.arange(ops.shape(ids)[1])
            x = self.tokens(ids) + self.positions(pos)[None]
            keep = ops.not_equal(ids, 0)
            mask = ops.logical_and(
                ops.logical_and((pos[:, None] >= pos[None, :])[None], keep[:, :, None]), keep[:, None, :]
            )  # causal ∧ query ∧ key padding (B, T, T)
            a1 = self.ln1(x + self.attention_1(x, x, attention_mask=mask))
            a2 = self.ln2(a1 + self.attention_2(a1, x, attention_mask=mask))
            return self.dense(self.ln3(a2 + self.ffn_2(self.ffn_1(a2))))

    model = Seed()
    if c["kind"] == "generate":
        model(np.zeros((1, L), dtype=np.int32))  # build
        prompt = transformer_data(c, np.random.default_rng(0))
        return _rerun_generator(lambda ids: model(ids, training=False), c, prompt), c["length"]

    x, y = (a.astype(np.int32) for a in data_for(c))
    weights = (x != 0).astype(np.float32)  # padding positions do not count
    model.compile(
        optimizer=keras.optimizers.RMSprop(c["lr"]), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    batches = tf.data.Dataset.from_tensors((x, y, weights)).repeat()
    ends = []
    clock = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: ends.append(time.perf_counter()))

    def run(n):
        ends.clear()
        model.fit(batches, steps_per_epoch=n + 1, epochs=1, verbose=0, callbacks=[clock])
        return ends[-1] - ends[0]

    return run, 1


def release_scratchlm():
    """Free the fused kernels' kept work buffers, so that a memory round counts them as the step's."""
    from scratchlm.kernels.numba.parallel import workspace

    workspace.release()


BUILDERS = {
    "scratchlm": build_scratchlm,
    "scratchlm-reference": build_scratchlm_reference,
    "scratchlm-rerun": build_scratchlm_rerun,
    "scratchlm-bf16": build_scratchlm_bfloat16,
    "keras": build_keras,
    "torch": build_torch,
}
MODULES = {
    "scratchlm": "scratchlm",
    "scratchlm-reference": "scratchlm",
    "scratchlm-rerun": "scratchlm",
    "scratchlm-bf16": "scratchlm",
    "keras": "tensorflow",
    "torch": "torch",
}
RELEASE = {
    "scratchlm": release_scratchlm,
    "scratchlm-rerun": release_scratchlm,
    "scratchlm-bf16": release_scratchlm,
}  # called before a memory round


def device_peak_mb(framework):
    """Peak device memory of the GPU case so far: PyTorch's allocator peak, or the bytes CuPy's pool holds."""
    if framework == "torch":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    import cupy

    return cupy.get_default_memory_pool().total_bytes() / 2**20
