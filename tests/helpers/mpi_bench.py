"""Tokens per second of the Trainer alone and under mpiexec, for docs/distributed.md's scaling table.

    OPENBLAS_NUM_THREADS=2 python tests/helpers/mpi_bench.py s2s              # one process, two BLAS threads
    OPENBLAS_NUM_THREADS=1 mpiexec -n 2 python tests/helpers/mpi_bench.py s2s # two ranks, one thread each

s2s:  Embedding(60, 64) -> LSTM 512 -> Dense 60, streams T=100, B=64 (global), Adam.
book: one-hot -> LSTM 128 -> Dense 60, windows of 60 (step 3), B=128, RMSprop 0.01 (the book's model).
Rank 0 prints one line: workload, ranks, steps timed, seconds per step, input tokens per second.
Under MPI a second line says what the all-reduce costs: the time per step spent in
World.reduce_step during training (waiting for the slower rank included), the time of the bare
all-reduce of the same buffer on its own (after a barrier, mean of 20), and the share of the
gradient that the output layer holds (what could be reduced while the recurrent backward pass runs).
"""

import sys
import time
from pathlib import Path

import numpy

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from scratchlm import LanguageModel, batching, corpora, distributed, optim
from scratchlm.text import CharTokenizer
from scratchlm.train import Trainer


def main():
    workload = sys.argv[1] if len(sys.argv) > 1 else "s2s"
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    warmup = 3
    text = corpora.load_text("nietzsche").lower()
    tokenizer = CharTokenizer.fit(text, reserved=False)
    ids = tokenizer.encode(text)
    if workload == "s2s":
        train = batching.Streams(ids, batch_size=64, seq_len=100)
        model = LanguageModel(tokenizer.vocab_size, embedding_dim=64, hidden_sizes=(512,), stateful=True)
        opt = optim.Adam(lr=2e-3)
    else:
        train = batching.Windows(ids, maxlen=60, step=3, batch_size=128)
        model = LanguageModel(tokenizer.vocab_size, hidden_sizes=(128,))
        opt = optim.RMSprop(lr=0.01)
    times, reducing = [], []
    world = distributed.world()
    reduce_step = world.reduce_step

    def timed_reduce_step(*args):
        start = time.perf_counter()
        out = reduce_step(*args)
        reducing.append(time.perf_counter() - start)
        return out

    world.reduce_step = timed_reduce_step
    trainer = Trainer(
        model, opt, train, max_steps=warmup + steps, progress=False, on_step=lambda t: times.append(time.perf_counter())
    )
    trainer.fit()
    per_step = (times[-1] - times[warmup - 1]) / steps
    B, T = next(train.batches(0)).x.shape
    if world.is_root:
        print(f"{workload} ranks={world.size} steps={steps} s/step={per_step:.4f} tokens/s={B * T / per_step:,.0f}")
    if world.parallel:
        from mpi4py import MPI

        total = sum(int(p.size) for p in model.params.values())
        dense = sum(int(p.size) for name, p in model.params.items() if name.startswith("dense"))
        buffer = numpy.zeros(total + 1, dtype=model.backend.dtype)
        world.comm.Barrier()
        start = MPI.Wtime()
        for _ in range(20):
            world.comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)
        bare = (MPI.Wtime() - start) / 20
        in_step = sum(reducing[warmup:]) / steps
        if world.is_root:
            print(
                f"  reduce_step {in_step * 1e3:.2f} ms/step ({in_step / per_step:.1%}), bare all-reduce of "
                f"{buffer.nbytes / 1e6:.2f} MB {bare * 1e3:.2f} ms ({bare / per_step:.1%}), output layer "
                f"{dense / total:.1%} of the gradient"
            )


if __name__ == "__main__":
    main()
