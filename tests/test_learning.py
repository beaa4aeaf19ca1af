"""Learning sanity: a small model memorises a short repetitive text of its own making.

Not a timing test: it only asks that the engine, end to end (forward, BPTT,
loss, Adam), can drive the loss of an H=64 model below 0.05 nats per token.
"""

import numpy as np

from scratchlm import LanguageModel, optim

TEXT = "the cat sat on the mat. the dog sat on the log. " * 40


def test_small_model_overfits_repetitive_text():
    chars = sorted(set(TEXT))
    ids = np.array([chars.index(ch) for ch in TEXT])
    B, T = 8, 25
    n = (len(ids) - 1) // (B * T) * (B * T)
    # B parallel contiguous streams, cut into chunks of T: stateful truncated BPTT
    x_streams = ids[:n].reshape(B, -1)
    y_streams = ids[1 : n + 1].reshape(B, -1)
    chunks = x_streams.shape[1] // T
    model = LanguageModel(len(chars), embedding_dim=16, hidden_sizes=[64], seed=0, stateful=True)
    opt = optim.Adam(lr=0.01, global_clipnorm=5.0)
    for _ in range(25):
        model.reset_state()
        losses = []
        for k in range(chunks):
            x, y = x_streams[:, k * T : (k + 1) * T], y_streams[:, k * T : (k + 1) * T]
            loss, grads = model.loss_and_grads(x, y)
            opt.step(model.params, grads)
            losses.append(loss)
    final = float(np.mean(losses))
    assert final < 0.05, f"mean loss over the last epoch: {final:.4f} nats/token"
    prompt = np.array([chars.index(ch) for ch in "the cat "])
    text = "".join(chars[i] for i in model.generate(prompt, 40, temperature=0))
    assert text.startswith("sat on the mat. the dog sat on the log.")
