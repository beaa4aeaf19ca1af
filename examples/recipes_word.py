"""A word-level recipe generator, trained on records in the Epicurious recipe format.

    python examples/recipes_word.py                      # the 28 made-up recipes in examples/data/recipes.json
    python examples/recipes_word.py full_format_recipes.json --epochs 25     # the Epicurious file
    python examples/recipes_word.py --max-steps 10       # a quick try

Input: a JSON list of records with "title" and "directions" (a list of
steps); records missing either are skipped. Each recipe becomes one sequence
"Recipe for <title> | <directions joined by spaces>", lower-cased, with every
punctuation mark padded by spaces so that it is a token of its own
("stir, then serve." -> stir , then serve .). The vocabulary keeps the 10,000
most frequent tokens (the rest become <unk>); sequences are cut at 200
tokens, padded per batch and masked, and end with <eos>. The model is
Embedding(100) -> LSTM(128) -> Dense, trained with Adam. After each epoch it
continues "recipe for roasted vegetables |" at temperatures 0.2 and 1.0.
"""

import argparse
import json
import sys
from pathlib import Path

from scratchlm import LanguageModel, batching, corpora, optim
from scratchlm.text import WordTokenizer, from_config
from scratchlm.train import Sampler, open_run, run_script, start_or_resume

SAMPLE = Path(__file__).resolve().parent / "data" / "recipes.json"


def recipe_texts(path):
    """The records of a recipe JSON file as "Recipe for <title> | <directions>" strings."""
    try:
        records = json.loads(corpora.read_text(path))
    except json.JSONDecodeError as exc:
        raise corpora.CorpusError(
            f'{path} is not valid JSON ({exc}): expected a list of {{"title": ..., "directions": [...]}} records'
        ) from None
    if not isinstance(records, list):
        raise corpora.CorpusError(f"{path} holds a JSON {type(records).__name__}, not a list of recipe records")
    texts = [
        f"Recipe for {r['title']} | {' '.join(r['directions'])}"
        for r in records
        if isinstance(r, dict)
        and isinstance(r.get("title"), str)
        and isinstance(r.get("directions"), list)
        and r["directions"]
        and all(isinstance(d, str) for d in r["directions"])
    ]
    if not texts:
        raise corpora.CorpusError(f"{path} holds no record with a title and directions")
    return texts


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "recipes",
        nargs="?",
        type=Path,
        default=SAMPLE,
        help="a JSON list of recipe records (default: the sample file shipped with the examples)",
    )
    p.add_argument("--epochs", type=int, default=25, help="default 25")
    p.add_argument("--max-steps", type=int, help="stop after this many steps (a smoke run)")
    p.add_argument("--max-tokens", type=int, default=10000, help="vocabulary size (default 10,000)")
    p.add_argument("--run-dir", type=Path, default=Path("runs/recipes_word"))
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir where it stopped")
    p.add_argument("--backend", default="numpy")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    return run_script("recipes_word", args.run_dir, lambda: run(args))


def run(args):
    """Train (or continue) the run, printing its progress and samples."""
    texts = recipe_texts(args.recipes)
    ckpt = open_run(args.run_dir, args.resume, args.backend)
    tokenizer = (
        from_config(ckpt.metadata["tokenizer"])
        if ckpt
        else WordTokenizer.fit(texts, max_tokens=args.max_tokens, lower=True)
    )
    sequences = [tokenizer.encode(t, unknown="unk") for t in texts]
    train_seqs, val_seqs = batching.split_sequences(sequences, 0.1, seed=args.seed)
    train = batching.Padded(train_seqs, tokenizer.eos_id, tokenizer.pad_id, batch_size=32, maxlen=200, seed=args.seed)
    val = (
        batching.Padded(val_seqs, tokenizer.eos_id, tokenizer.pad_id, batch_size=32, maxlen=200, shuffle=False)
        if val_seqs
        else None
    )
    sampler = Sampler(tokenizer, temperatures=(0.2, 1.0), length=100, prime="recipe for roasted vegetables |")
    options = dict(
        run_dir=args.run_dir,
        epochs=args.epochs,
        max_steps=args.max_steps,
        checkpoint_every=200,
        log_every=10,
        sampler=sampler,
    )

    def build():
        model = LanguageModel(
            tokenizer.vocab_size, embedding_dim=100, hidden_sizes=[128], backend=args.backend, seed=args.seed
        )
        return model, optim.Adam(lr=1e-3)

    trainer = start_or_resume(ckpt, train, val, build, tokenizer, **options)
    trainer.print(f"{trainer.model}, {tokenizer} from {len(texts):,} recipes: {train}")
    trainer.fit()
    if trainer.batch:  # stopped inside an epoch by --max-steps
        sampler(trainer)


if __name__ == "__main__":
    sys.exit(main())
