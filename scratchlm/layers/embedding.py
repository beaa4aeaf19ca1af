"""Embedding: token ids -> learned vectors."""

from ..initializers import uniform


class Embedding:
    """Token ids -> vectors: y[...] = E[ids[...]].

    Forward is a gather of rows of E (V, E). Backward is the matching
    scatter-add: dE[v] = Σ_{positions p with ids[p] = v} dy[p]  (repeated ids add up).
    Keras' default initialisation: U(-0.05, 0.05).
    """

    def __init__(self, vocab_size, dim, backend, rng):
        self.backend = backend
        self.embeddings = uniform((vocab_size, dim), rng, backend)      # (V, E)

    @property
    def params(self):
        return {"embeddings": self.embeddings}

    def forward(self, ids):
        """ids (...) int -> vectors (..., E)."""
        return self.embeddings[ids]

    def backward(self, ids, dy):
        """dy (..., E) -> (None, {"embeddings": dE (V, E)}): token ids have no gradient."""
        dE = self.backend.zeros(self.embeddings.shape)
        self.backend.scatter_add(dE, ids.reshape(-1), dy.reshape(-1, dy.shape[-1]))
        return None, {"embeddings": dE}
