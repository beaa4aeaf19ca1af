"""nanoGPT's character-level GPT on tiny Shakespeare (its README's CPU command), on scratchlm.

    python examples/shakespeare_gpt.py                    # 2000 steps, as nanoGPT's "I only have a macbook"
    python examples/shakespeare_gpt.py --max-steps 20     # a quick try
    python examples/shakespeare_gpt.py --resume           # continue after Ctrl-C, exactly

The run of ``scratchlm train tinyshakespeare --preset nanogpt-cpu``, written
out: nanoGPT's ``config/train_shakespeare_char.py`` with ``--block_size=64
--batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000
--lr_decay_iters=2000 --dropout=0.0``. The text's characters are the
vocabulary (plus <pad>, <unk>, <eos>); the first 90% trains and the last 10% is
held out. A batch is 12 windows of 64 characters from random starts, every
position scored (nanoGPT's ``get_batch``). The model is a pre-LayerNorm GPT:
4 blocks, 4 heads of 32, embeddings of 128, a feed-forward of 512 with the
exact GELU, LayerNorm ε 1e-5, no biases, the output layer tied to the token
embedding, GPT-2's initialisation (N(0, 0.02), the residual projections scaled
by 1/√(2·4)). AdamW (lr 1e-3, β₂ 0.99, weight decay 0.1 on the ≥2-D weights),
gradients clipped to a global norm of 1, and nanoGPT's ``get_lr``: 100 steps
of warmup, then a cosine down to 1e-4 at step 2000. At the end it prints the
held-out loss as ``scratchlm eval`` computes it: over every character of the
held-out text, in nats and bits per character (nanoGPT reports 1.88 nats at
step 2000, estimated on 20 random batches).
"""

import argparse
import math
import sys
from pathlib import Path

from scratchlm import batching, corpora, optim, schedules
from scratchlm.cli.eval import score
from scratchlm.models import TransformerLM
from scratchlm.text import CharTokenizer, from_config
from scratchlm.train import Sampler, Trainer, open_run, run_script

BLOCK_SIZE, BATCH_SIZE = 64, 12  # nanoGPT's names for T and B
STEPS = 2000


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", metavar="PATH", help="the text to learn (default: the bundled tiny Shakespeare)")
    p.add_argument("--max-steps", type=int, default=STEPS, help=f"stop after this many steps (default {STEPS})")
    p.add_argument("--sample-length", type=int, default=400, help="characters per sample (default 400)")
    p.add_argument("--run-dir", type=Path, default=Path("runs/shakespeare_gpt"))
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir where it stopped")
    p.add_argument("--backend", default="numpy", help="numpy (default), cupy or auto")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    return run_script("shakespeare_gpt", args.run_dir, lambda: run(args))


def run(args):
    """Train (or continue) the run, then print its held-out loss."""
    text = corpora.load_text(args.corpus or "tinyshakespeare", local_hint="pass it with --corpus PATH")
    ckpt = open_run(args.run_dir, args.resume, args.backend)
    tokenizer = from_config(ckpt.metadata["tokenizer"]) if ckpt else CharTokenizer.fit(text)
    train_ids, val_ids = batching.split_tail(tokenizer.encode(text), 0.1)
    train = batching.RandomWindows(train_ids, BATCH_SIZE, BLOCK_SIZE, seed=args.seed)
    val = batching.Streams(val_ids, min(BATCH_SIZE, (len(val_ids) - 1) // BLOCK_SIZE), BLOCK_SIZE)
    sampler = Sampler(tokenizer, temperatures=(0.8,), length=args.sample_length, prime="ROMEO:", seed=args.seed)
    options = dict(run_dir=args.run_dir, epochs=10, max_steps=args.max_steps, checkpoint_every=500, sampler=sampler)
    if ckpt:  # the schedule's position and the optimizer's moments come from the checkpoint
        trainer = Trainer.resume(ckpt, train, val, **options)
    else:
        model = TransformerLM(
            tokenizer.vocab_size,
            BLOCK_SIZE,
            embed_dim=128,
            dense_dim=4 * 128,
            num_heads=4,
            key_dim=128 // 4,
            num_layers=4,
            block="gpt",
            activation="gelu",
            layernorm_epsilon=1e-5,
            tie_embeddings=True,
            use_bias=False,
            init="gpt2",
            dropout=0.0,
            backend=args.backend,
            seed=args.seed,
        )
        optimizer = optim.AdamW(lr=1e-3, beta_2=0.99, weight_decay=0.1, global_clipnorm=1.0)
        schedule = schedules.Cosine(1e-3, min_lr=1e-4, decay_steps=STEPS, warmup_steps=100)
        metadata = {"tokenizer": tokenizer.config}
        trainer = Trainer(model, optimizer, train, val, metadata=metadata, schedule=schedule, **options)
    trainer.print(f"{trainer.model}, {tokenizer}: {train}")
    trainer.fit()
    loss, count = score(trainer.model, batching.Whole(val_ids, BATCH_SIZE, BLOCK_SIZE), progress=False)
    trainer.print(
        f"held-out loss after {trainer.step:,} steps: {loss:.4f} nats per character, "
        f"{loss / math.log(2):.4f} bits per character (all {count:,} held-out characters)"
    )


if __name__ == "__main__":
    sys.exit(main())
