"""What a run shows: samples after each epoch, the metrics log and its plot, the progress bar and throughput.

Sampler(tokenizer)              text at several temperatures after each epoch, as the book's callback prints it
MetricsLog(path)                metrics.jsonl: one JSON object per line (step and epoch records, events)
read_metrics, plot_metrics      read metrics.jsonl back; draw loss.png from it (with matplotlib)
progress_bar, Throughput        the tqdm bar of an epoch; tokens per second over a logging window
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy
from tqdm import tqdm

from .. import sampling
from ..budget import check_fits
from ..errors import SamplingError
from ..files import atomic_write
from ..models.base import generation_bytes
from ..text import VocabularyError, listing
from .step import TrainingDiverged, quiet_overflow

if TYPE_CHECKING:
    from .loop import Trainer

TEMPERATURES = (0.2, 0.5, 1.0, 1.2)


class Sampler:
    """End-of-epoch text samples at several temperatures, as the book's callback prints them.

    tokenizer: turns ids back into text.
    temperatures, length: one sample of ``length`` tokens per temperature (the
        book: 0.2, 0.5, 1.0, 1.2 and 400 characters).
    prime: text every sample starts from, or None for a random window of the
        training data (the book's seed sentence; <eos> for padded sequences).
        A prime with tokens the vocabulary lacks is refused at once (a word-level
        vocabulary with <unk> maps them to it), not silently replaced, and so is
        a prime of no known token (empty, only <unk>, or only what the tokenizer
        drops, such as punctuation for a VectorTokenizer).
    The options are checked here too (:func:`scratchlm.sampling.check_options`),
    before any training; logits that are not finite when sampling mean the model
    diverged, and stop training with :class:`TrainingDiverged`.
    Reserved ids (<pad>, <unk>, and <eos> unless the data end sequences with it)
    are never sampled; with <eos>-terminated data a sample stops at <eos>.
    Randomness comes from ``numpy.random.default_rng([seed, epoch])``: sampling
    never changes what training does next.
    """

    def __init__(
        self,
        tokenizer,
        temperatures=TEMPERATURES,
        length: int = 400,
        prime: str | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int = 0,
    ):
        self.tokenizer = tokenizer
        self.temperatures = [float(t) for t in temperatures]
        self.length, self.prime, self.top_k, self.top_p, self.seed = int(length), prime, top_k, top_p, seed
        for temperature in self.temperatures:
            sampling.check_options(temperature, top_k, top_p)
        check_fits(
            generation_bytes(1, self.length),
            f"samples of {self.length:,} tokens",
            "ask for shorter samples (--sample-length)",
        )
        self.prime_ids = None if prime is None else _prime_ids(tokenizer, prime)

    def __call__(self, trainer: Trainer) -> None:
        """Print one sample per temperature from ``trainer.model`` (seeded by ``trainer.epoch``)."""
        tok = self.tokenizer
        rng = numpy.random.default_rng([self.seed, trainer.epoch])
        eos = trainer.train.eos_id
        if self.prime_ids is None:
            prompt = trainer.train.random_prompt(rng)
        elif eos is not None:
            prompt = numpy.concatenate([[eos], self.prime_ids])
        else:
            prompt = self.prime_ids
        banned = [i for i in tok.special_ids if i != eos]
        shown = render(tok, prompt)
        trainer.print(f'--- samples at step {trainer.step:,} (epoch {trainer.epoch + 1}), primed with: "{shown}"')
        for temperature in self.temperatures:
            if trainer.world.interrupted:  # MPI: Ctrl-C; the ranks stop together at the next step
                return
            try:
                with quiet_overflow():
                    out = trainer.model.generate(
                        prompt,
                        self.length,
                        temperature=temperature,
                        top_k=self.top_k,
                        top_p=self.top_p,
                        eos_id=eos,
                        banned_ids=banned,
                        seed=int(rng.integers(2**32)),
                    )
            except SamplingError as exc:  # the options were checked when made: the logits are not finite
                saved = "" if trainer.last_checkpoint is None else f" (just saved in {trainer.last_checkpoint})"
                raise TrainingDiverged(
                    f"training stopped after step {trainer.step:,} (epoch {trainer.epoch + 1}): "
                    f"no sample can be drawn ({exc}): the weights{saved} have diverged; start "
                    "again with a lower learning rate or gradient clipping"
                ) from None
            # decoded with the prompt: a byte-level BPE character may begin in the prompt and end in the sample
            trainer.print(f"----- temperature {temperature:g}\n{render(tok, numpy.concatenate([prompt, out]))}")


def _prime_ids(tokenizer, prime):
    """The ids of the samples' prime; VocabularyError if it holds a token the vocabulary lacks (a word-level
    vocabulary with <unk> maps those to it) or no known token at all."""
    unknown = "unk" if tokenizer.kind in ("word", "vector") and tokenizer.unk_id is not None else "error"
    try:
        ids = tokenizer.encode(prime, unknown=unknown).astype(numpy.int64)
    except VocabularyError as exc:
        raise VocabularyError(
            f"the samples' prime {prime!r} holds {listing(exc.missing)}, which the "
            "vocabulary lacks: choose a prime made of the corpus' own tokens",
            exc.missing,
        ) from None
    known = ids if tokenizer.unk_id is None else ids[ids != tokenizer.unk_id]
    if len(known) == 0:
        raise VocabularyError(
            f"the samples' prime {prime!r} encodes to {'<unk> only' if len(ids) else 'no token'}, "
            "so the samples would have nothing to start from: choose a prime made of the corpus' "
            "own tokens, or give none (the samples then start from the training data)"
        )
    return ids


def render(tokenizer, ids) -> str:
    """Text of ``ids`` without <eos>/<pad> (word tokens joined by spaces, a leading space when they follow;
    character and byte-level BPE tokens joined as they are)."""
    ids = [int(i) for i in ids if int(i) not in (tokenizer.eos_id, tokenizer.pad_id)]
    text = tokenizer.decode(ids)
    return text if tokenizer.kind in ("char", "bpe") or not text else " " + text


# -- the metrics log ----------------------------------------------------------------------


class MetricsLog:
    """metrics.jsonl opened for appending records, one JSON object per line (a torn last line, left by a
    killed writer, is ended first). Non-finite numbers are written as null."""

    def __init__(self, path: str | Path):
        torn = False
        with contextlib.suppress(FileNotFoundError), open(path, "rb") as f:
            if f.seek(0, os.SEEK_END):
                f.seek(-1, os.SEEK_END)
                torn = f.read(1) != b"\n"
        self._file = open(path, "a", encoding="utf-8")
        if torn:
            self._file.write("\n")

    def record(self, record: dict) -> None:
        """Append ``record`` and flush it (a run killed afterwards keeps it)."""
        clean = {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in record.items()}
        self._file.write(json.dumps(clean) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a metrics.jsonl file (lines that do not parse, e.g. a torn last line, are skipped)."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return records


def plot_metrics(metrics_path: str | Path, png_path: str | Path) -> bool:
    """Draw training (per logged step) and validation (per epoch) loss into a PNG; False without matplotlib.

    After a resume, steps repeated by the resumed run replace the ones logged
    before the interruption (the last record for a step wins).
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return False
    steps, val = {}, {}
    for r in read_metrics(metrics_path):
        if r.get("event") == "step" and r.get("loss") is not None:
            steps[r["step"]] = r["loss"]
        elif r.get("event") == "epoch" and r.get("val_loss") is not None:
            val[r["step"]] = r["val_loss"]
    if not steps and not val:
        return False
    fig = Figure(figsize=(7, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if steps:
        ax.plot(sorted(steps), [steps[s] for s in sorted(steps)], label="training loss")
    if val:
        ax.plot(sorted(val), [val[s] for s in sorted(val)], "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("nats per token")
    ax.legend()
    ax.grid(alpha=0.3)
    with atomic_write(png_path) as f:
        fig.savefig(f, format="png", dpi=100)
    return True


# -- progress while an epoch runs -------------------------------------------------------


def progress_bar(total: int, initial: int, desc: str, show: bool | None, unit: str = "batch") -> tqdm:
    """An epoch's tqdm bar on stderr (or one of another ``unit``): shown when ``show`` is True, hidden when False,
    on a terminal only when None."""
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit=unit,
        disable=None if show is None else not show,
        leave=False,
        file=sys.stderr,
        dynamic_ncols=True,
    )


class Throughput:
    """The clock of an epoch's steps: seconds per step and tokens per second over the current logging window.

    A step's time runs from the end of the previous step (or from :meth:`restart`) to :meth:`lap`, so it
    includes gathering its batch; checkpoint writes and hooks happen after :meth:`lap` and before
    :meth:`restart`, and are not step time.
    """

    def __init__(self):
        self.window_tokens, self.window_start = 0, time.perf_counter()
        self.tick = time.perf_counter()

    def lap(self, tokens: int) -> tuple[float, float]:
        """A step of ``tokens`` tokens ended now -> (its seconds, tokens per second over the window so far)."""
        now = time.perf_counter()
        seconds, self.tick = now - self.tick, now
        self.window_tokens += tokens
        return seconds, self.window_tokens / max(now - self.window_start, 1e-9)

    def new_window(self) -> None:
        """Start the next logging window at the end of the latest step."""
        self.window_tokens, self.window_start = 0, self.tick

    def restart(self) -> None:
        """The next step's time starts now."""
        self.tick = time.perf_counter()
