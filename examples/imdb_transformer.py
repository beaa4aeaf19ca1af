"""The word-level Transformer language model of Chollet's book (ch. 12) on IMDB reviews, on scratchlm.

    python examples/imdb_transformer.py                       # fetches aclImdb_v1.tar.gz once (84 MB)
    python examples/imdb_transformer.py --data aclImdb        # a folder you extracted yourself
    python examples/imdb_transformer.py --data examples/data/reviews --max-steps 20     # the shipped sample
    python examples/imdb_transformer.py --resume              # continue after Ctrl-C, exactly

The seed's setup: every review under the folder (as
``text_dataset_from_directory(label_mode=None)`` finds them) is vectorised like
``TextVectorization(max_tokens=15000, output_sequence_length=100)`` (lower-case,
``<br />`` and punctuation stripped, 0 = padding, 1 = [UNK]); x = ids[:, :-1],
y = ids[:, 1:]; PositionalEmbedding(15000, 100, 256) -> TransformerDecoder(256,
2048, 2 heads, key_dim 256) -> Dense softmax, RMSprop(1e-3), batches of 256, the
loss over positions whose input token is not padding. After every epoch it
continues "this movie" by 50 words at temperatures 0.2, 0.5, 0.7, 1.0 and 1.5.

Two differences from the book's code, both deliberate. Generation uses a
key/value cache: each new word costs one position's work instead of a re-run
of the whole sequence. And the next word is sampled from the prediction at the
*last* position of the text so far; the book's callback samples from position
``i`` (its loop counter), which is not the last position once the prompt has
more than one word. Padding and [UNK] are never sampled.
"""

import argparse
import sys
from pathlib import Path

from scratchlm import batching, optim
from scratchlm.datasets import imdb
from scratchlm.models import TransformerLM
from scratchlm.text import VectorTokenizer, from_config
from scratchlm.train import Sampler, open_run, run_script, start_or_resume

TEMPERATURES = (0.2, 0.5, 0.7, 1.0, 1.5)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--data",
        type=Path,
        metavar="DIR",
        help="a folder of reviews laid out like aclImdb/ (default: "
        "download and extract the IMDB archive into $SCRATCHLM_CACHE, default ~/.cache/scratchlm)",
    )
    p.add_argument(
        "--block",
        choices=["book", "gpt"],
        default="book",
        help="the book's post-LayerNorm decoder block (default) or a pre-LayerNorm GPT block",
    )
    p.add_argument("--epochs", type=int, default=200, help="default 200, as in the book")
    p.add_argument("--batch-size", type=int, default=256, help="default 256, as in the book")
    p.add_argument("--max-steps", type=int, help="stop after this many steps (a smoke run)")
    p.add_argument("--run-dir", type=Path, default=Path("runs/imdb_transformer"))
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir where it stopped")
    p.add_argument("--backend", default="numpy", help="numpy (default), cupy or auto")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    return run_script("imdb_transformer", args.run_dir, lambda: run(args))


def run(args):
    """Train (or continue) the run, printing its progress and samples."""
    folder = args.data if args.data is not None else imdb.fetch_imdb()
    ckpt = open_run(args.run_dir, args.resume, args.backend)
    tokenizer = (
        from_config(ckpt.metadata["tokenizer"])
        if ckpt
        else VectorTokenizer.fit(imdb.iter_review_files(folder), max_tokens=15000)
    )
    ids = imdb.vectorize(imdb.iter_review_files(folder), tokenizer, length=imdb.SEQUENCE_LENGTH)
    train = batching.Vectorized(ids, batch_size=args.batch_size, seed=args.seed)
    sampler = Sampler(tokenizer, temperatures=TEMPERATURES, length=50, prime="this movie", seed=args.seed)
    options = dict(
        run_dir=args.run_dir,
        epochs=args.epochs,
        max_steps=args.max_steps,
        checkpoint_every=200,
        log_every=10,
        sampler=sampler,
    )

    def build():
        model = TransformerLM(
            tokenizer.vocab_size,
            imdb.SEQUENCE_LENGTH,
            embed_dim=256,
            dense_dim=2048,
            num_heads=2,
            block=args.block,
            backend=args.backend,
            seed=args.seed,
        )
        return model, optim.RMSprop(lr=1e-3)

    trainer = start_or_resume(ckpt, train, None, build, tokenizer, **options)
    trainer.print(
        f"{trainer.model} on {train.num_sequences:,} reviews from {folder}, {tokenizer.vocab_size:,} words: {train}"
    )
    trainer.fit()
    if trainer.batch:  # stopped inside an epoch by --max-steps: show where it got
        sampler(trainer)


if __name__ == "__main__":
    sys.exit(main())
