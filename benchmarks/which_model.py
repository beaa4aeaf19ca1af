"""LSTM, GRU or GPT? Equal parameter counts, equal training time, the same text: which learns most per minute.

    python benchmarks/which_model.py                              # 10 minutes each; JSON, plot, tables
    python benchmarks/which_model.py --minutes 1 --json /tmp/w.json --plot /tmp/w.png   # a quick look

The three models of a character-level tiny Shakespeare (the bundled text, its characters as the
vocabulary, the last 10% held out), each trained on the CPU for the same number of seconds of
training steps (validation not counted):

* gpt: ``--preset nanogpt-cpu`` — 4 pre-LayerNorm blocks of E 128 (4 heads, feed-forward 512, exact
  GELU, no biases, tied embeddings, GPT-2 init), 12 random windows of 64 characters per step, AdamW
  lr 1e-3;
* lstm, gru: Embedding 64 -> two recurrent layers of H -> Dense V, H solved so that the parameter count
  is the GPT's within 2%, 12 streams read in consecutive chunks of 64 with the state carried across
  (char-rnn's way), AdamW lr 2e-3 (char-rnn's rate).

All three get the same optimizer otherwise (β₂ 0.99, weight decay 0.1 on the >= 2-D weights, gradients
clipped to a global norm of 1) and nanoGPT's schedule: 100 warmup steps, then a cosine down to lr/10 at
the step where the time runs out (estimated from a timing of 20 steps before the run). Every
``budget/10`` seconds, and at the end, the whole held-out text is scored by the evaluation of
``scratchlm eval`` (:func:`scratchlm.cli.eval.score`, 12 streams in chunks of 64, every target once).
The machine must be otherwise idle: training seconds are the measurement.
"""

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


from scratchlm import LanguageModel, batching, corpora, get_backend, optim, schedules  # noqa: E402
from scratchlm.cli.eval import score  # noqa: E402
from scratchlm.text import CharTokenizer  # noqa: E402
from scratchlm.train import train_step  # noqa: E402

B, T, EMBEDDING, LAYERS = 12, 64, 64, 2
LR = {"gpt": 1e-3, "lstm": 2e-3, "gru": 2e-3}


def gpt(vocab_size, backend, seed):
    import frameworks  # here, not above: NumPy must load after scratchlm (OPENBLAS_THREAD_TIMEOUT, see scratchlm)

    return frameworks.nanogpt_cpu_model(vocab_size, backend, seed)


def recurrent(vocab_size, cell, hidden, backend, seed):
    return LanguageModel(vocab_size, EMBEDDING, [hidden] * LAYERS, cell=cell, stateful=True, backend=backend, seed=seed)


def count(model):
    return sum(int(p.size) for p in model.params.values())


def matched_hidden(vocab_size, cell, target):
    """The hidden size whose two-layer model's parameter count is closest to ``target``."""
    backend = get_backend("numpy", "float32")
    sizes = range(32, 1025, 4)
    return min(sizes, key=lambda h: abs(count(recurrent(vocab_size, cell, h, backend, 0)) - target))


def endless(train):
    """The training batches, epoch after epoch: (batch, True at the first batch of an epoch)."""
    epoch = 0
    while True:
        for i, b in enumerate(train.batches(epoch)):
            yield b, i == 0
        epoch += 1


def step_seconds(model, opt, train, steps=20):
    """Median-free quick timing of ``steps`` training steps after 3 warm-up ones (JIT, caches): s per step."""
    batches = endless(train)
    for _ in range(3):
        train_step(model, opt, next(batches)[0])
    start = time.perf_counter()
    for _ in range(steps):
        train_step(model, opt, next(batches)[0])
    return (time.perf_counter() - start) / steps


def run(name, build, train, val_ids, budget):
    """Train one model for ``budget`` seconds of steps; its evaluations and totals."""
    model = build()
    per_step = step_seconds(model, optim.AdamW(lr=1e-4), train)
    model = build()  # a fresh model: the timing's steps are not part of the run
    decay = max(int(budget / per_step), 101)
    schedule = schedules.Cosine(LR[name], LR[name] / 10, decay, warmup_steps=100)
    opt = optim.AdamW(lr=LR[name], beta_2=0.99, weight_decay=0.1, global_clipnorm=1.0)
    evals, elapsed, step, losses = [], 0.0, 0, []
    marks = [budget * k / 10 for k in range(1, 11)]

    def evaluate():
        loss, _ = score(model, batching.Whole(val_ids, B, T), progress=False)
        train_loss = sum(losses) / len(losses) if losses else None
        evals.append({"step": step, "train_seconds": elapsed, "val_loss": loss, "train_loss": train_loss})
        losses.clear()
        print(f"  {name} step {step:6d}  {elapsed:7.1f} s  held-out {loss:.4f}", flush=True)

    for batch, new_epoch in endless(train):
        if new_epoch:
            model.reset_state()
        opt.lr = schedule(step)
        start = time.perf_counter()
        result = train_step(model, opt, batch)
        elapsed += time.perf_counter() - start
        step += 1
        losses.append(result.loss)
        if elapsed >= marks[0]:
            marks.pop(0)
            state = model.get_state()
            evaluate()  # resets a stateful model's state: put it back, training goes on from where it was
            model.set_state(state)
            if not marks:
                break
    return {
        "parameters": count(model),
        "timed_step_seconds": per_step,
        "decay_steps": decay,
        "steps": step,
        "train_seconds": elapsed,
        "evals": evals,
    }


def machine():
    flags = []
    try:
        with open("/proc/cpuinfo") as f:
            line = next(x for x in f if x.startswith("flags"))
        flags = sorted(f for f in line.split(":")[1].split() if f.startswith("avx") or f in ("fma", "f16c"))
    except (OSError, StopIteration):
        pass
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "flags": flags}


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            return next(x for x in f if x.startswith("model name")).split(":")[1].strip()
    except (OSError, StopIteration):
        return platform.machine()


def table(results):
    """Markdown: one row per model, then the held-out loss at each tenth of the budget."""
    models = results["models"]
    out = [
        "| model | parameters | steps | ms/step | tokens seen | held-out loss at the end (nats/char) | bits/char |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in models.values():
        last = r["evals"][-1]["val_loss"]
        out.append(
            f"| {r['what']} | {r['parameters']:,} | {r['steps']:,} | {1e3 * r['train_seconds'] / r['steps']:.1f} | "
            f"{r['steps'] * B * T:,} | {last:.4f} | {last / 0.6931471805599453:.3f} |"
        )
    out += ["", "| training seconds | " + " | ".join(models) + " |", "|---:|" + "---:|" * len(models)]
    for k in range(len(next(iter(models.values()))["evals"])):
        row = [f"{models[n]['evals'][k]['val_loss']:.4f}" for n in models]
        seconds = next(iter(models.values()))["evals"][k]["train_seconds"]
        out.append(f"| {seconds:.0f} | " + " | ".join(row) + " |")
    return "\n".join(out)


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for r in results["models"].values():
        xs = [e["train_seconds"] for e in r["evals"]]
        ys = [e["val_loss"] for e in r["evals"]]
        ax.plot(xs, ys, marker=".", label=f"{r['what']} ({r['parameters']:,} params)")
    ax.set_title(f"tiny Shakespeare, {results['minutes']:g} min of training each ({results['machine']['cpu_model']})")
    ax.set_xlabel("training seconds (validation not counted)")
    ax.set_ylabel("held-out loss (nats per character)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0, help="training time per model (default 10)")
    p.add_argument("--models", default="gpt,lstm,gru", help="comma-separated, in run order (default gpt,lstm,gru)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=ROOT / "which_model.json")
    p.add_argument("--plot", type=Path, help="draw the held-out loss against seconds here (needs matplotlib)")
    args = p.parse_args(argv)
    text = corpora.load_text("tinyshakespeare")
    tokenizer = CharTokenizer.fit(text)
    V = tokenizer.vocab_size
    train_ids, val_ids = batching.split_tail(tokenizer.encode(text), 0.1)
    backend = get_backend("numpy", "float32")
    target = count(gpt(V, backend, args.seed))
    hidden = {cell: matched_hidden(V, cell, target) for cell in ("lstm", "gru")}
    setups = {
        "gpt": (
            lambda: gpt(V, backend, args.seed),
            batching.RandomWindows(train_ids, B, T, seed=args.seed),
            "GPT 4 x 128",
        ),
        **{
            cell: (
                lambda cell=cell: recurrent(V, cell, hidden[cell], backend, args.seed),
                batching.Streams(train_ids, B, T),
                f"{cell.upper()} 2 x {hidden[cell]}",
            )
            for cell in ("lstm", "gru")
        },
    }
    results = {
        "date": datetime.date.today().isoformat(),
        "machine": {**machine(), "cpu_model": cpu_model(), "load_average_start": os.getloadavg()},
        "minutes": args.minutes,
        "batch": [B, T],
        "models": {},
    }
    for name in args.models.split(","):
        build, train, what = setups[name]
        print(f"{what}: {count(build()):,} parameters", flush=True)
        results["models"][name] = {"what": what, **run(name, build, train, val_ids, 60 * args.minutes)}
    results["machine"]["load_average_end"] = os.getloadavg()
    args.json.write_text(json.dumps(results, indent=1) + "\n")
    print(table(results))
    if args.plot:
        plot(results, args.plot)


if __name__ == "__main__":
    main()
