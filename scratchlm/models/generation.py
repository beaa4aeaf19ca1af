"""Generation's token loop: draw one token per row from the logits, feed it to the model, repeat.

    loop = model.token_loop(model, temperature, top_k, top_p, banned, eos_id, rng)
    logits, state = loop.start(prompt)           # the prompt (B, T) run once: the logits (B, V) of its end
    ids = loop.run(logits, state, length)        # host int64 (B, length'), fewer columns once every row hit EOS

:class:`TokenLoop` is the loop itself, with the reference draw
(:func:`scratchlm.sampling.sample`); each model subclasses it to say what its
state is and how one new token advances it (``start``, ``step``: the recurrent
model carries (h, c) per layer, the Transformer its KV caches). A model builds
its loop through ``backend.layer``, like its layers: on the fused path that
hands out the subclass of ``scratchlm/kernels/decoding.py``, which runs the same
loop on the kernels (the same draws and, up to float round-off in the logits,
the same ids).
"""

from abc import ABC, abstractmethod
from typing import Any

from .. import sampling
from ..backend import Array, Backend


class TokenLoop(ABC):
    """The token loop of :meth:`TokenModel.generate <scratchlm.models.base.TokenModel.generate>`.

    model: the model to sample from; temperature, top_k, top_p: as :func:`scratchlm.sampling.sample`
    takes them (already checked); banned: ids never drawn (checked, a list); eos_id: None or the id
    after which a row repeats itself; rng: the host generator of the draws; weights: "float32", or
    "bfloat16" when the model's recurrent kernels were rounded for this generation (a loop may then read
    them as bfloat16).
    """

    def __init__(
        self,
        model: Any,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        banned: list[int] | tuple = (),
        eos_id: int | None = None,
        rng: Any = None,
        weights: str = "float32",
    ):
        self.model = model
        self.weights = weights
        self.backend = model.backend
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.banned = list(banned)
        self.eos_id = eos_id
        self.rng = Backend.rng() if rng is None else rng

    @abstractmethod
    def start(self, prompt: Array) -> tuple[Array, Any]:
        """Run the prompt (B, T) once -> (logits (B, V) of its last position, the state after it)."""

    @abstractmethod
    def step(self, ids: Array, state: Any) -> tuple[Array, Any]:
        """One new token per row, ids (B,), after ``state`` -> (its logits (B, V), the state after it)."""

    def draw(self, k: int, logits: Array) -> Array:
        """The k-th token of every row, (B,), drawn from ``logits`` (B, V): B uniforms from ``rng`` (none greedy)."""
        return sampling.sample(logits, self.rng, self.temperature, self.top_k, self.top_p, self.banned)

    def run(self, logits: Array, state: Any, length: int) -> Any:
        """ids (B, length) on the host, starting from the prompt's ``logits`` (B, V) and ``state``.

        Per token: :meth:`draw`, then :meth:`step` with the drawn ids. A row that
        has drawn ``eos_id`` repeats it from then on; the loop ends early (fewer
        columns) once every row has.
        """
        xp = self.backend.xp
        B = logits.shape[0]
        out = self.backend.to_host(xp.zeros((B, length), dtype=xp.int64))
        done = self.backend.to_host(xp.zeros(B, dtype=bool))
        for k in range(length):
            ids = self.draw(k, logits)  # (B,)
            drawn = self.backend.to_host(ids)
            if self.eos_id is not None:
                drawn[done] = self.eos_id
                done |= drawn == self.eos_id
            out[:, k] = drawn
            if self.eos_id is not None and done.all():
                return out[:, : k + 1]
            if k + 1 < length:
                logits, state = self.step(ids, state)
        return out
