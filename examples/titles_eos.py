"""A character-level title generator: one title per line, padded batches, <eos> to stop.

    python examples/titles_eos.py                        # the 100 made-up headlines in examples/data/titles.txt
    python examples/titles_eos.py my_titles.txt --epochs 20
    python examples/titles_eos.py --max-steps 10         # a quick try
    python examples/titles_eos.py --cell gru             # a GRU instead of the LSTM

Each line is one sequence. The model reads "<eos> t_1 ... t_n" and learns to
predict "t_1 ... t_n <eos>": after an <eos> it starts a title, and it ends one
by predicting <eos>. A batch pads its lines to the longest with <pad>, and a
mask keeps padding from moving the recurrent state or counting in the loss.
Generation starts from <eos> (plus an optional prime) and stops at the next
<eos>. At the end it prints greedy titles (always the most likely character:
the same title every time) and titles sampled at temperatures 0.5 and 1.0.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

from scratchlm import (  # before NumPy: it tunes OpenBLAS (scratchlm/kernels/numba/parallel/shards.py)
    LanguageModel,
    batching,
    corpora,
    optim,
)
from scratchlm.text import CharTokenizer, from_config
from scratchlm.train import Sampler, open_run, render, run_script, start_or_resume

SAMPLE = Path(__file__).resolve().parent / "data" / "titles.txt"
PRIMES = ("", "New ", "Local ", "Scientists ")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "titles",
        nargs="?",
        type=Path,
        default=SAMPLE,
        help="a UTF-8 file, one title per line (default: the sample file shipped with the examples)",
    )
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--max-steps", type=int, help="stop after this many steps (a smoke run)")
    p.add_argument(
        "--cell",
        choices=["lstm", "gru"],
        default="lstm",
        help="the recurrent cell: lstm (default) or gru (the seed's closing suggestion)",
    )
    p.add_argument("--hidden", type=int, default=128, help="units of the recurrent layer (default 128)")
    p.add_argument("--run-dir", type=Path, default=Path("runs/titles_eos"))
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir where it stopped")
    p.add_argument("--backend", default="numpy")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    return run_script("titles_eos", args.run_dir, lambda: run(args))


def run(args):
    """Train (or continue) the run, printing its progress and samples."""
    titles = [line.strip() for line in corpora.read_text(args.titles).splitlines() if line.strip()]
    ckpt = open_run(args.run_dir, args.resume, args.backend)
    tokenizer = from_config(ckpt.metadata["tokenizer"]) if ckpt else CharTokenizer.fit("".join(titles))
    sequences = [tokenizer.encode(t, unknown="unk") for t in titles]
    train_seqs, val_seqs = batching.split_sequences(sequences, 0.1, seed=args.seed)
    train = batching.Padded(train_seqs, tokenizer.eos_id, tokenizer.pad_id, batch_size=16, maxlen=120, seed=args.seed)
    val = (
        batching.Padded(val_seqs, tokenizer.eos_id, tokenizer.pad_id, batch_size=16, maxlen=120, shuffle=False)
        if val_seqs
        else None
    )
    options = dict(
        run_dir=args.run_dir,
        epochs=args.epochs,
        max_steps=args.max_steps,
        checkpoint_every=100,
        log_every=10,
        sampler=Sampler(tokenizer, temperatures=(0.5,), length=120),
    )

    def build():
        model = LanguageModel(
            tokenizer.vocab_size,
            embedding_dim=32,
            hidden_sizes=[args.hidden],
            cell=args.cell,
            backend=args.backend,
            seed=args.seed,
        )
        return model, optim.Adam(lr=3e-3, global_clipnorm=5.0)

    trainer = start_or_resume(ckpt, train, val, build, tokenizer, **options)
    trainer.print(f"{trainer.model}, {tokenizer}: {train}")
    trainer.fit()
    show_titles(trainer.model, tokenizer, seed=args.seed)


def show_titles(model, tokenizer, seed=0):
    """Greedy vs. sampled titles from a few primes; each stops at <eos> (or after 120 characters)."""
    banned = [tokenizer.pad_id, tokenizer.unk_id]
    for temperature in (0, 0.5, 1.0):
        print(f"--- {'greedy' if temperature == 0 else f'temperature {temperature}'}")
        for k, prime in enumerate(PRIMES):
            prompt = np.concatenate([[tokenizer.eos_id], tokenizer.encode(prime, unknown="skip")])
            out = model.generate(
                prompt, 120, temperature=temperature, eos_id=tokenizer.eos_id, banned_ids=banned, seed=seed + k
            )
            print(render(tokenizer, prompt) + render(tokenizer, out))


if __name__ == "__main__":
    sys.exit(main())
