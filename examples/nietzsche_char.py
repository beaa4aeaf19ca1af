"""Chollet's Nietzsche character LSTM (the Keras book's text-generation example), on scratchlm.

    python examples/nietzsche_char.py                    # the book's setup, on the bundled nietzsche.txt
    python examples/nietzsche_char.py --fast             # streams + embedding: more learning per second
    python examples/nietzsche_char.py --max-steps 30     # a quick try
    python examples/nietzsche_char.py --corpus my.txt    # the same model on your own text
    python examples/nietzsche_char.py --resume           # continue after Ctrl-C, exactly

The book's setup: the text is lower-cased and its 60 distinct characters are
the vocabulary (no reserved ids); every 3rd window of 60 characters is an
input (200,281 windows) and the character after it is the target; one-hot
input, LSTM(128), Dense softmax, RMSprop(lr=0.01), batch 128, a new shuffle
every epoch. After each epoch it prints the mean training loss and the time,
then 400 characters sampled at temperatures 0.2, 0.5, 1.0 and 1.2 from a
random 60-character seed. Keras reaches a training loss of about 1.41 after
7 epochs; the book trains for 60.

--fast reads the text as 64 parallel streams in chunks of 64 characters,
carrying the LSTM state from chunk to chunk, and scores every position
instead of one per window; it learns a character embedding (32) and uses
Adam with gradient clipping. It holds out the last 5% of the text for a
validation loss.
"""

import argparse
import sys
from pathlib import Path

from scratchlm import LanguageModel, batching, corpora, optim
from scratchlm.text import CharTokenizer, from_config
from scratchlm.train import Sampler, open_run, run_script, start_or_resume


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--corpus",
        metavar="PATH",
        help="the text file to learn (default: the copy of nietzsche.txt bundled with scratchlm)",
    )
    p.add_argument("--fast", action="store_true", help="streams + embedding + Adam instead of the book's setup")
    p.add_argument("--epochs", type=int, default=60, help="default 60, as in the book")
    p.add_argument("--max-steps", type=int, help="stop after this many steps (a smoke run)")
    p.add_argument("--run-dir", type=Path, help="checkpoints and metrics (default runs/nietzsche_char[_fast])")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir where it stopped")
    p.add_argument("--backend", default="numpy", help="numpy (default), cupy or auto")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    run_dir = args.run_dir or Path("runs") / ("nietzsche_char_fast" if args.fast else "nietzsche_char")
    return run_script("nietzsche_char", run_dir, lambda: run(args, run_dir))


def run(args, run_dir):
    """Train (or continue) the run, printing its progress and samples."""
    text = corpora.load_text(args.corpus or "nietzsche", local_hint="pass it with --corpus PATH").lower()
    ckpt = open_run(run_dir, args.resume, args.backend)
    tokenizer = (
        from_config(ckpt.metadata["tokenizer"]) if ckpt else CharTokenizer.fit(text, reserved=False)
    )  # V = 60 on the full corpus
    ids = tokenizer.encode(text)
    if args.fast:
        train_ids, val_ids = batching.split_tail(ids, 0.05)
        train, val = batching.Streams(train_ids, batch_size=64, seq_len=64), batching.Streams(val_ids, 16, 64)
    else:
        train, val = batching.Windows(ids, maxlen=60, step=3, batch_size=128, seed=args.seed), None
    options = dict(
        run_dir=run_dir,
        epochs=args.epochs,
        max_steps=args.max_steps,
        checkpoint_every=200,
        sampler=Sampler(tokenizer, temperatures=(0.2, 0.5, 1.0, 1.2), length=400, seed=args.seed),
    )

    def build():
        model = LanguageModel(
            tokenizer.vocab_size,
            embedding_dim=32 if args.fast else None,
            hidden_sizes=[128],
            backend=args.backend,
            seed=args.seed,
            stateful=args.fast,
        )
        opt = optim.Adam(lr=3e-3, global_clipnorm=5.0) if args.fast else optim.RMSprop(lr=0.01)
        return model, opt

    trainer = start_or_resume(ckpt, train, val, build, tokenizer, **options)
    trainer.print(f"{trainer.model} on {len(text):,} characters, {tokenizer.vocab_size} distinct: {train}")
    trainer.fit()
    if trainer.batch:  # stopped inside an epoch by --max-steps: show where it got
        trainer.sampler(trainer)


if __name__ == "__main__":
    sys.exit(main())
