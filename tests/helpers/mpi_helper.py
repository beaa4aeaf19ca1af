"""A tiny training run that tests/test_distributed.py starts alone and under ``mpiexec -n 2``.

    python tests/helpers/mpi_helper.py --kind streams --dtype float64 --steps 20 --out ref.npz
    mpiexec -n 2 python tests/helpers/mpi_helper.py --kind streams --dtype float64 --steps 20 --out mpi.npz

Rank 0 writes the losses of every step, the validation losses and the final weights to ``--out``.
Each rank builds its model with a different seed under MPI (``--seed-by-rank``): the Trainer must
broadcast rank 0's weights. ``--fail-rank R --fail-step S`` makes rank R raise at step S
(``--kill``: kill itself with SIGKILL instead); ``--bad-input-rank R``: rank R gets a corpus with an
out-of-vocabulary id before training. ``--backend cupy``: on the GPUs, one per rank (the
all-reduce through NCCL when CuPy has it); rank 0 records in ``--out`` whether NCCL reduced.
"""

import argparse
import os
import signal
import sys
from pathlib import Path

import numpy

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from scratchlm import LanguageModel, ScratchLMError, batching, distributed, optim
from scratchlm.train import Trainer, load_checkpoint, run_script

V = 13


def batches(kind, rng, bad=False):
    if kind == "streams":
        ids = rng.integers(0, V, 420)
        if bad:
            ids[300] = V + 7  # in the rows of rank 1
        return batching.Streams(ids[:340], batch_size=4, seq_len=8), batching.Streams(
            ids[340:], batch_size=4, seq_len=8
        )
    if kind == "windows":
        ids = rng.integers(0, V, 160)
        if bad:
            ids[5] = V + 7
        return (
            batching.Windows(ids[:120], maxlen=8, step=3, batch_size=6, seed=3),
            batching.Windows(ids[120:], maxlen=8, step=3, batch_size=4, shuffle=False),
        )
    seqs = [rng.integers(2, V, int(n)) for n in rng.integers(1, 12, 45)]
    if bad:
        seqs[0][0] = V + 7
    # 37 training sequences in batches of 6: the last batch has one row, so rank 1 has none of it.
    return (
        batching.Padded(seqs[:37], eos_id=1, pad_id=0, batch_size=6, seed=5),
        batching.Padded(seqs[37:], eos_id=1, pad_id=0, batch_size=3, shuffle=False),
    )


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--kind", choices=["streams", "windows", "padded"], default="streams")
    p.add_argument("--dtype", default="float64")
    p.add_argument("--backend", default="numpy")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--out")
    p.add_argument("--run-dir")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--checkpoint-every", type=int, default=5)
    p.add_argument("--seed-by-rank", action="store_true")
    p.add_argument("--fail-rank", type=int)
    p.add_argument("--fail-step", type=int, default=7)
    p.add_argument("--kill", action="store_true")
    p.add_argument("--bad-input-rank", type=int)
    args = p.parse_args()
    world = distributed.world()
    losses = []

    def on_step(trainer):
        losses.append(trainer.last_loss)
        if args.fail_rank == world.rank and trainer.step == args.fail_step:
            if args.kill:
                os.kill(os.getpid(), signal.SIGKILL)
            raise ScratchLMError(f"injected failure at step {trainer.step}")

    def body():
        train, val = batches(args.kind, numpy.random.default_rng(7), bad=args.bad_input_rank == world.rank)
        options = dict(
            run_dir=args.run_dir,
            epochs=args.epochs,
            max_steps=args.steps,
            on_step=on_step,
            progress=False,
            checkpoint_every=args.checkpoint_every,
        )
        if args.resume:
            trainer = Trainer.resume(load_checkpoint(args.run_dir), train, val, **options)
        else:
            seed = 1 + (100 * world.rank if args.seed_by_rank else 0)
            if world.parallel and args.backend == "cupy":
                world.use_local_device()  # before the model: one GPU per rank
            model = LanguageModel(
                V,
                embedding_dim=5,
                hidden_sizes=(7, 6),
                dtype=args.dtype,
                seed=seed,
                stateful=args.kind == "streams",
                dropout=args.dropout,
                backend=args.backend,
            )
            trainer = Trainer(model, optim.Adam(lr=0.02, global_clipnorm=0.5), train, val, **options)
        trainer.fit()
        if world.is_root and args.out:
            numpy.savez(
                args.out,
                losses=numpy.array(losses),
                nccl=world.uses_nccl,
                val=numpy.array([r["val_loss"] for r in trainer.history], dtype=float),
                **{"param/" + k: trainer.model.backend.to_host(v) for k, v in trainer.model.params.items()},
            )

    if args.run_dir:
        return run_script("mpi_helper", args.run_dir, body)
    body()
    return 0


if __name__ == "__main__":
    sys.exit(main())
