"""The TensorFlow tiny-Shakespeare character model, on scratchlm.

    python examples/shakespeare_char.py                  # Embedding 256, LSTM 1024 (GPU if there is one)
    python examples/shakespeare_char.py --hidden 256 --embedding-dim 64 --epochs 5     # laptop size
    python examples/shakespeare_char.py --max-steps 20 --hidden 64 --embedding-dim 16   # a quick try

The setup of TensorFlow's text-generation tutorial: the raw text (case kept);
a vocabulary of its characters plus reserved <pad>, <unk> and <eos>; a learned
Embedding(256) feeding an LSTM(1024) and a Dense layer; Adam; sequences of
100 characters in batches of 64. Here the text is read as 64 parallel streams
and the LSTM state carries from one chunk of 100 to the next (stateful
truncated BPTT). Generation is the tutorial's one-step model: the prime runs
once, then each new character costs one LSTM step fed with the previous
state, and <pad>, <unk> and <eos> are masked out so they are never emitted.
After each epoch it prints the training and validation loss and samples that
continue "ROMEO:".
"""

import argparse
import sys
from pathlib import Path

from scratchlm import LanguageModel, batching, corpora, optim
from scratchlm.text import CharTokenizer, from_config
from scratchlm.train import Sampler, open_run, run_script, start_or_resume


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", metavar="PATH", help="the text to learn (default: the bundled tiny Shakespeare)")
    p.add_argument("--embedding-dim", type=int, default=256)
    p.add_argument("--hidden", type=int, default=1024, help="LSTM units (default 1024)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=100)
    p.add_argument("--epochs", type=int, default=20, help="default 20, as in the tutorial")
    p.add_argument("--max-steps", type=int, help="stop after this many steps (a smoke run)")
    p.add_argument("--sample-length", type=int, default=400, help="characters per sample (default 400)")
    p.add_argument("--run-dir", type=Path, default=Path("runs/shakespeare_char"))
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir where it stopped")
    p.add_argument("--backend", default="auto", help="auto (default: the GPU when CuPy finds one), numpy, cupy")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    return run_script("shakespeare_char", args.run_dir, lambda: run(args))


def run(args):
    """Train (or continue) the run, printing its progress and samples."""
    text = corpora.load_text(args.corpus or "tinyshakespeare", local_hint="pass it with --corpus PATH")
    ckpt = open_run(args.run_dir, args.resume, args.backend)
    tokenizer = from_config(ckpt.metadata["tokenizer"]) if ckpt else CharTokenizer.fit(text)
    train_ids, val_ids = batching.split_tail(tokenizer.encode(text), 0.05)
    train = batching.Streams(train_ids, batch_size=args.batch_size, seq_len=args.seq_len)
    val = batching.Streams(
        val_ids, batch_size=min(args.batch_size, (len(val_ids) - 1) // args.seq_len), seq_len=args.seq_len
    )
    sampler = Sampler(tokenizer, temperatures=(0.5, 1.0), length=args.sample_length, prime="ROMEO:")
    options = dict(
        run_dir=args.run_dir, epochs=args.epochs, max_steps=args.max_steps, checkpoint_every=100, sampler=sampler
    )

    def build():
        model = LanguageModel(
            tokenizer.vocab_size,
            embedding_dim=args.embedding_dim,
            hidden_sizes=[args.hidden],
            backend=args.backend,
            seed=args.seed,
            stateful=True,
        )
        return model, optim.Adam(lr=1e-3)

    trainer = start_or_resume(ckpt, train, val, build, tokenizer, **options)
    trainer.print(f"{trainer.model}, {tokenizer}: {train}")
    trainer.fit()
    if trainer.batch:  # stopped inside an epoch by --max-steps
        sampler(trainer)


if __name__ == "__main__":
    sys.exit(main())
