"""A one-minute tour of scratchlm: train a character LSTM on a small text, then sample.

    python examples/demo.py [--steps 300] [--text FILE]

Without --text it learns a short verse of its own; with --text it learns the
first 20,000 characters of FILE. It prints the loss as it trains and then text
sampled at three temperatures from the same prime.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from scratchlm import LanguageModel, optim

VERSE = ("the owl and the pussy-cat went to sea in a beautiful pea-green boat; "
         "they took some honey, and plenty of money, wrapped up in a five-pound note. ") * 20


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
    parser.add_argument("--text", type=Path, help="a UTF-8 text file to learn instead of the built-in verse")
    args = parser.parse_args(argv)
    if args.text is not None and not args.text.is_file():
        print(f"demo: no such file: {args.text}", file=sys.stderr)
        return 2
    text = args.text.read_text(encoding="utf-8")[:20000] if args.text else VERSE
    chars = sorted(set(text))
    ids = np.array([chars.index(ch) for ch in text])
    B, T = 16, 32
    if len(ids) < B * T + 1:
        print(f"demo: the text is too short: it needs at least {B * T + 1} characters", file=sys.stderr)
        return 2

    model = LanguageModel(len(chars), embedding_dim=32, hidden_sizes=[128], seed=0)
    opt = optim.Adam(lr=3e-3, global_clipnorm=5.0)
    rng = np.random.default_rng(0)
    print(f"{model}\ntraining on {len(text):,} characters, {len(chars)} distinct, batch {B} x {T}")
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        starts = rng.integers(0, len(ids) - T - 1, B)
        x = np.stack([ids[s:s + T] for s in starts])
        y = np.stack([ids[s + 1:s + T + 1] for s in starts])
        loss, grads = model.loss_and_grads(x, y)
        opt.step(model.params, grads)
        if step % 50 == 0 or step == args.steps:
            print(f"step {step:5d}  loss {loss:.3f} nats/char  {time.perf_counter() - start:6.1f} s")

    prime = text[:20]
    for temperature in (0.2, 0.5, 1.0):
        out = model.generate([chars.index(ch) for ch in prime], 120, temperature=temperature, seed=1)
        print(f"\n--- temperature {temperature} ---\n{prime}" + "".join(chars[i] for i in out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
