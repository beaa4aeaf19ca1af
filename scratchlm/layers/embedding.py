"""Embedding: token ids -> learned vectors; PositionalEmbedding: tokens plus learned positions."""

from ..errors import ModelError
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


class PositionalEmbedding:
    """Token embedding plus a learned position embedding (the IMDB seed's), batch-major:

        y[b, t] = Et[ids[b, t]] + Ep[t]        Et (V, E), Ep (L, E), t < T ≤ L     (B, T, E)

    Backward: dEt = scatter-add of dy by token id (repeated ids add up);
    dEp[t] = Σ_b dy[b, t] for t < T and 0 for the rows T..L-1 not used.
    Token id 0 is padding (Keras ``mask_zero=True``): :meth:`keep` gives the
    (B, T) mask of real tokens, which the attention masks are built from; the
    vector of a padding token is still computed. Both tables: Keras'
    U(-0.05, 0.05), the token table drawn first.
    """

    def __init__(self, vocab_size, sequence_length, embed_dim, backend, rng):
        self.backend = backend
        self.sequence_length = sequence_length
        self.token_embeddings = uniform((vocab_size, embed_dim), rng, backend)            # (V, E)
        self.position_embeddings = uniform((sequence_length, embed_dim), rng, backend)    # (L, E)

    @property
    def params(self):
        return {"token_embeddings": self.token_embeddings, "position_embeddings": self.position_embeddings}

    def _check(self, ids, start=0):
        if ids.ndim != 2 or start + ids.shape[1] > self.sequence_length:
            raise ModelError(f"PositionalEmbedding takes token ids of shape (B, T) with T <= sequence_length "
                             f"= {self.sequence_length}, got shape {tuple(ids.shape)}: cut the sequences "
                             f"to at most {self.sequence_length} tokens")

    @staticmethod
    def keep(ids):
        """ids (B, T) -> (B, T) bool, True for real tokens (id != 0, Keras' mask_zero)."""
        return ids != 0

    def forward(self, ids, start=0):
        """ids (B, T) int at positions start … start+T-1 (<= L) -> vectors (B, T, E)."""
        self._check(ids, start)
        T = ids.shape[1]
        return self.token_embeddings[ids] + self.position_embeddings[start:start + T]    # (B, T, E)

    def backward(self, ids, dy):
        """dy (B, T, E) -> (None, {"token_embeddings": (V, E), "position_embeddings": (L, E)})."""
        self._check(ids)
        T, E = ids.shape[1], dy.shape[-1]
        dEt = self.backend.zeros(self.token_embeddings.shape)                             # (V, E)
        self.backend.scatter_add(dEt, ids.reshape(-1), dy.reshape(-1, E))
        dEp = self.backend.zeros(self.position_embeddings.shape)                          # (L, E)
        dEp[:T] = dy.sum(axis=0)
        return None, {"token_embeddings": dEt, "position_embeddings": dEp}
