"""One training step of a tiny LSTM language model, taken apart and printed (runs in a second).

    python examples/one_step.py

It uses the reference kernels (the plain NumPy code of ``scratchlm/layers/``) in
float64, so that every number below comes from code you can read
(docs/reading.md walks through the same step file by file):

1. the model: Embedding(V, E) -> LSTM(H) -> Dense(V), its parameters and their shapes;
2. ``loss_and_grads``: the forward pass, the mean cross-entropy over every
   position, and the backward pass (BPTT) giving the gradient of every parameter;
3. a finite-difference check of a few entries of each gradient: nudge one weight
   by ±h, recompute the loss, and compare (L(w+h) − L(w−h)) / 2h with the
   analytic value (central differences, error O(h²));
4. one Adam step, and the loss after it (lower: the step went downhill).
"""

import numpy as np

from scratchlm import RecurrentLM, get_backend, optim
from scratchlm.gradcheck import numerical_gradient, relative_error

V, E, H, B, T = 7, 4, 5, 2, 6  # vocabulary, embedding, hidden units, batch, time steps


def main():
    backend = get_backend("numpy", "float64", kernels="reference")
    model = RecurrentLM(V, E, [H], backend=backend, dtype="float64", seed=0)
    print(f"1. {model}: {sum(p.size for p in model.params.values()):,} parameters")
    for name, p in model.params.items():
        print(f"   {name:24s} {str(p.shape):10s} (Keras' layout)")

    rng = np.random.default_rng(0)
    x = rng.integers(0, V, (B, T))  # input ids (B, T)
    y = rng.integers(0, V, (B, T))  # the id to predict at every position
    loss, grads = model.loss_and_grads(x, y)
    print(f"\n2. loss_and_grads: loss {loss:.6f} nats per token (ln V = {np.log(V):.6f} for a uniform guess)")
    for name, g in grads.items():
        print(f"   d loss / d {name:24s} {str(g.shape):10s} |g|max {np.abs(g).max():.3e}")

    print("\n3. finite differences, 3 entries of each gradient, h = 1e-4:")
    for name, p in model.params.items():
        entries = rng.choice(p.size, size=min(3, p.size), replace=False)
        numeric = numerical_gradient(lambda: model.loss(x, y), p, h=1e-4, indices=entries)
        analytic = grads[name].reshape(-1)[entries]
        print(
            f"   {name:24s} analytic {np.array2string(analytic, precision=6)}  "
            f"numeric {np.array2string(numeric, precision=6)}  relative error "
            f"{relative_error(analytic, numeric):.1e}"
        )

    adam = optim.Adam(lr=0.01, kernels="reference")
    adam.step(model.params, grads)  # w <- w - α m / (√v + ε), Keras 3's Adam
    print(f"\n4. one Adam step (lr 0.01): loss {loss:.6f} -> {model.loss(x, y):.6f}")


if __name__ == "__main__":
    main()
