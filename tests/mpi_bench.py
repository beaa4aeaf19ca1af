"""Tokens per second of the Trainer alone and under mpiexec, for docs/distributed.md's scaling table.

    OPENBLAS_NUM_THREADS=2 python tests/mpi_bench.py s2s              # one process, two BLAS threads
    OPENBLAS_NUM_THREADS=1 mpiexec -n 2 python tests/mpi_bench.py s2s # two ranks, one thread each

s2s:  Embedding(60, 64) -> LSTM 512 -> Dense 60, streams T=100, B=64 (global), Adam.
book: one-hot -> LSTM 128 -> Dense 60, windows of 60 (step 3), B=128, RMSprop 0.01 (the book's model).
Rank 0 prints one line: workload, ranks, steps timed, seconds per step, input tokens per second.
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scratchlm import LanguageModel, data, distributed, optim  # noqa: E402
from scratchlm.text import CharTokenizer  # noqa: E402
from scratchlm.train import Trainer  # noqa: E402


def main():
    workload = sys.argv[1] if len(sys.argv) > 1 else "s2s"
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    warmup = 3
    text = data.load_text("nietzsche").lower()
    tokenizer = CharTokenizer.fit(text, reserved=False)
    ids = tokenizer.encode(text)
    if workload == "s2s":
        train = data.Streams(ids, batch_size=64, seq_len=100)
        model = LanguageModel(tokenizer.vocab_size, embedding_dim=64, hidden_sizes=(512,), stateful=True)
        opt = optim.Adam(lr=2e-3)
    else:
        train = data.Windows(ids, maxlen=60, step=3, batch_size=128)
        model = LanguageModel(tokenizer.vocab_size, hidden_sizes=(128,))
        opt = optim.RMSprop(lr=0.01)
    times = []
    trainer = Trainer(model, opt, train, max_steps=warmup + steps, progress=False,
                      on_step=lambda t: times.append(time.perf_counter()))
    trainer.fit()
    world = distributed.world()
    per_step = (times[-1] - times[warmup - 1]) / steps
    B, T = next(train.batches(0)).x.shape
    if world.is_root:
        print(f"{workload} ranks={world.size} steps={steps} s/step={per_step:.4f} tokens/s={B * T / per_step:,.0f}")


if __name__ == "__main__":
    main()
