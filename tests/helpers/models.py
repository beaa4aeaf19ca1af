"""Models for tests."""

import numpy as np


def spread(model):
    """``model`` with every bias, β and embedding drawn from N(0, 0.3²) or N(0, 1) and every γ from 1 + N(0, 0.3²):
    no parameter sits at its initial value (0 or 1), where a wrong gradient could hide. Returns the model."""
    rng = np.random.default_rng(0)
    for name, p in model.params.items():
        if name.endswith(("bias", "beta", "embeddings")):
            p[...] = rng.standard_normal(p.shape) * (1.0 if name.endswith("embeddings") else 0.3)
        elif name.endswith("gamma"):
            p[...] = 1 + 0.3 * rng.standard_normal(p.shape)
    return model
