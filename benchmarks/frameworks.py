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
    gen-b1   the s2s model sampling at temperature 1, batch 1
    gen-b64  the same, batch 64
    gpu      Embedding(60, 64) -> LSTM 1024 -> Dense 60, T=100, B=256, Adam, on a CUDA GPU
             (scratchlm on CuPy, PyTorch on cuDNN; Keras is the CPU build here and sits it out)
"""

import time

import numpy as np

V = 60
CASES = {
    "book": dict(kind="train", embedding=None, H=128, T=60, B=128, optimizer="rmsprop", last_only=True),
    "s2s": dict(kind="train", embedding=64, H=512, T=100, B=64, optimizer="adam", last_only=False),
    "gen-b1": dict(kind="generate", embedding=64, H=512, B=1, prompt=10),
    "gen-b64": dict(kind="generate", embedding=64, H=512, B=64, prompt=10),
    "gpu": dict(kind="train", embedding=64, H=1024, T=100, B=256, optimizer="adam", last_only=False, gpu=True),
}
THREADS = 2


def data(case):
    """(x ids (B, T), y targets) for a training case, or the prompt ids (B, P) for generation."""
    c = CASES[case]
    rng = np.random.default_rng(0)
    if c["kind"] == "generate":
        return rng.integers(0, V, (c["B"], c["prompt"]))
    x = rng.integers(0, V, (c["B"], c["T"]))
    y = rng.integers(0, V, (c["B"],) if c["last_only"] else (c["B"], c["T"]))
    return x, y


# -- scratchlm --------------------------------------------------------------------------------------------

def build_scratchlm(case, kernels="fused"):
    from scratchlm import LanguageModel, get_backend, optim

    c = CASES[case]
    backend = get_backend("cupy" if c.get("gpu") else "numpy", "float32", kernels)
    model = LanguageModel(V, c["embedding"], [c["H"]], backend=backend)
    sync = backend.xp.cuda.Device().synchronize if c.get("gpu") else lambda: None
    if c["kind"] == "generate":
        prompt = data(case)
        calls = iter(range(10**9))

        def run(n):
            start = time.perf_counter()
            model.generate(prompt, n, temperature=1.0, seed=next(calls))
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


# -- PyTorch ------------------------------------------------------------------------------------------------

def build_torch(case):
    import torch

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    c = CASES[case]
    device = "cuda" if c.get("gpu") else "cpu"
    sync = torch.cuda.synchronize if c.get("gpu") else lambda: None

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = None if c["embedding"] is None else torch.nn.Embedding(V, c["embedding"])
            self.lstm = torch.nn.LSTM(c["embedding"] or V, c["H"], batch_first=True)
            self.dense = torch.nn.Linear(c["H"], V)

        def forward(self, x, state=None):
            h, state = self.lstm(x if self.embedding is None else self.embedding(x), state)
            return h, state

    net = Net().to(device)
    if c["kind"] == "generate":
        return _torch_generator(torch, net, c, torch.as_tensor(data(case)))

    x, y = data(case)
    x = torch.nn.functional.one_hot(torch.as_tensor(x), V).float() if c["embedding"] is None else torch.as_tensor(x)
    x, y = x.to(device), torch.as_tensor(y).to(device)
    if c["optimizer"] == "rmsprop":                   # Keras' rho = 0.9, eps = 1e-7
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
            loss = loss_fn(logits.reshape(-1, V), y.reshape(-1))
            loss.backward()
            opt.step()
        sync()
        return time.perf_counter() - start
    return run, 1


def _torch_generator(torch, net, c, prompt):
    """The prompt through nn.LSTM, then one nn.LSTMCell step per token on the same weights: at batch 1
    the cell is ~2.5x faster than calling nn.LSTM on one-step sequences (measured here)."""
    cell = torch.nn.LSTMCell(c["embedding"], c["H"])
    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        setattr(cell, name, getattr(net.lstm, f"{name}_l0"))

    @torch.inference_mode()
    def run(n):
        start = time.perf_counter()
        h, (h_n, c_n) = net(prompt)
        state = (h_n[0], c_n[0])
        logits = net.dense(h[:, -1])
        for k in range(n):
            ids = torch.multinomial(torch.softmax(logits / 1.0, dim=-1), 1)[:, 0]      # (B,)
            if k + 1 < n:
                state = cell(net.embedding(ids), state)
                logits = net.dense(state[0])
        return time.perf_counter() - start
    return run, c["B"]


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
    if c["kind"] == "generate":
        return _keras_generator(keras, tf, c, data(case))

    x, y = data(case)
    if c["embedding"] is None:
        inputs = keras.Input((c["T"], V))
        x = np.eye(V, dtype=np.float32)[x]                                          # (B, T, V) one-hot
        hidden = keras.layers.LSTM(c["H"], return_sequences=not c["last_only"])(inputs)
    else:
        inputs = keras.Input((c["T"],), dtype="int32")
        x = x.astype(np.int32)
        hidden = keras.layers.LSTM(c["H"], return_sequences=True)(keras.layers.Embedding(V, c["embedding"])(inputs))
    model = keras.Model(inputs, keras.layers.Dense(V)(hidden))
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


def release_scratchlm():
    """Free the fused kernels' kept work buffers, so that a memory round counts them as the step's."""
    from scratchlm.kernels import workspace
    workspace.release()


BUILDERS = {"scratchlm": build_scratchlm, "scratchlm-reference": build_scratchlm_reference,
            "keras": build_keras, "torch": build_torch}
MODULES = {"scratchlm": "scratchlm", "scratchlm-reference": "scratchlm", "keras": "tensorflow", "torch": "torch"}
RELEASE = {"scratchlm": release_scratchlm}          # called before a memory round


def device_peak_mb(framework):
    """Peak device memory of the GPU case so far: PyTorch's allocator peak, or the bytes CuPy's pool holds."""
    if framework == "torch":
        import torch
        return torch.cuda.max_memory_allocated() / 2**20
    import cupy
    return cupy.get_default_memory_pool().total_bytes() / 2**20
