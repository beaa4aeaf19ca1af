"""Embedding: token ids -> learned vectors; PositionalEmbedding: tokens plus learned positions."""

from typing import Any

from ..backend import Backend
from ..errors import ModelError
from ..initializers import uniform
from .base import Array, Layer, Shape


class Embedding(Layer):
    r"""Token ids -> vectors: y[...] = E[ids[...]].

    Forward is a gather of rows of E (V, E); its cache is the ids. Backward is
    the matching scatter-add (repeated ids add up):

    .. math::

        y_p &= E[\text{ids}_p] \qquad (\dots, E) \\
        dE[v] &= \sum_{p \,:\, \text{ids}_p = v} dy_p \qquad (V, E)

    Keras' default initialisation: U(-0.05, 0.05).
    """

    def __init__(self, vocab_size: int, dim: int, backend: Backend, rng: Any):
        self.backend = backend
        self.embeddings = uniform((vocab_size, dim), rng, backend)  # (V, E)

    @property
    def params(self) -> dict[str, Array]:
        return {"embeddings": self.embeddings}

    @classmethod
    def param_shapes(cls, vocab_size: int, dim: int) -> dict[str, Shape]:
        return {"embeddings": (vocab_size, dim)}

    def forward(self, ids: Array) -> tuple[Array, Array]:
        """ids (...) int -> (vectors (..., E), cache = ids)."""
        return self.embeddings[ids], ids

    def backward(self, ids: Array, dy: Array) -> tuple[None, dict[str, Array]]:
        """(cache = ids, dy (..., E)) -> (None, {"embeddings": dE (V, E)}): token ids have no gradient."""
        dE = self.backend.zeros(self.embeddings.shape)
        self.backend.scatter_add(dE, ids.reshape(-1), dy.reshape(-1, dy.shape[-1]))
        return None, {"embeddings": dE}


class PositionalEmbedding(Layer):
    r"""Token embedding plus a learned position embedding (the IMDB seed's), batch-major, with
    Et (V, E), Ep (L, E) and t < T ≤ L:

    .. math::

        y[b, t] = E_{\mathrm{t}}[\text{ids}[b, t]] + E_{\mathrm{p}}[t] \qquad (B, T, E)

    Backward: dEt is the scatter-add of dy by token id (repeated ids add up); dEp
    sums over the batch, and its rows T … L-1, not used, are 0:

    .. math::

        dE_{\mathrm{t}}[v] = \sum_{(b, t) \,:\, \text{ids}[b, t] = v} dy[b, t] \qquad
        dE_{\mathrm{p}}[t] = \begin{cases} \sum_b dy[b, t] & t < T \\ 0 & T \le t < L \end{cases}

    Which id (if any) is padding is the model's business (``TransformerLM.pad_id``):
    the vector of a padding token is computed like any other. The cache of forward
    is the ids. Both tables: Keras' U(-0.05, 0.05), the token table drawn first.
    """

    def __init__(self, vocab_size: int, sequence_length: int, embed_dim: int, backend: Backend, rng: Any):
        self.backend = backend
        self.sequence_length = sequence_length
        self.token_embeddings = uniform((vocab_size, embed_dim), rng, backend)  # (V, E)
        self.position_embeddings = uniform((sequence_length, embed_dim), rng, backend)  # (L, E)

    @property
    def params(self) -> dict[str, Array]:
        return {"token_embeddings": self.token_embeddings, "position_embeddings": self.position_embeddings}

    @classmethod
    def param_shapes(cls, vocab_size: int, sequence_length: int, embed_dim: int) -> dict[str, Shape]:
        return {"token_embeddings": (vocab_size, embed_dim), "position_embeddings": (sequence_length, embed_dim)}

    def _check(self, ids: Array, start: int = 0) -> None:
        if ids.ndim != 2 or start + ids.shape[1] > self.sequence_length:
            raise ModelError(
                f"PositionalEmbedding takes token ids of shape (B, T) with T <= sequence_length "
                f"= {self.sequence_length}, got shape {tuple(ids.shape)}: cut the sequences "
                f"to at most {self.sequence_length} tokens"
            )

    def forward(self, ids: Array, start: int = 0) -> tuple[Array, Array]:
        """ids (B, T) int at positions start … start+T-1 (<= L) -> (vectors (B, T, E), cache = ids)."""
        self._check(ids, start)
        T = ids.shape[1]
        return self.token_embeddings[ids] + self.position_embeddings[start : start + T], ids  # (B, T, E)

    def backward(self, ids: Array, dy: Array) -> tuple[None, dict[str, Array]]:
        """(cache = ids, dy (B, T, E)) -> (None, {"token_embeddings": (V, E), "position_embeddings": (L, E)})."""
        self._check(ids)
        T, E = ids.shape[1], dy.shape[-1]
        dEt = self.backend.zeros(self.token_embeddings.shape)  # (V, E)
        self.backend.scatter_add(dEt, ids.reshape(-1), dy.reshape(-1, E))
        dEp = self.backend.zeros(self.position_embeddings.shape)  # (L, E)
        dEp[:T] = dy.sum(axis=0)
        return None, {"token_embeddings": dEt, "position_embeddings": dEp}
