"""LSTM or GRU? The seed's closing question, answered with measurements at equal parameter budgets.

    python benchmarks/lstm_vs_gru.py                      # both corpora, JSON + docs/lstm_vs_gru.png
    python benchmarks/lstm_vs_gru.py --json out.json --plot out.png --titles-epochs 60 --nietzsche-epochs 5
    python benchmarks/lstm_vs_gru.py --quick               # a smoke run (a few steps of each)
    python benchmarks/lstm_vs_gru.py --retime lstm_vs_gru.json   # measure the per-step times again (quieter now?)

For each corpus it builds the LSTM of the seed example (hidden 128) and a GRU whose
hidden size is solved so that the GRU model's parameter count matches the LSTM
model's within 1% (both counts are printed), and trains both from the same seed
with the same data, optimizer (Adam 3e-3, global clipnorm 5) and number of epochs:

* titles: examples/data/titles.txt, one title per line, padded batches of 16 with
  <eos> as examples/titles_eos.py builds them (Embedding 32), a seeded 10% of the
  titles held out; validation loss after every epoch.
* nietzsche: the bundled corpus lower-cased, CharTokenizer without reserved ids,
  the --fast setup of examples/nietzsche_char.py (Embedding 32, 64 streams read in
  chunks of 64, stateful, the last 5% held out as 16 validation streams);
  validation loss every ``--eval-every`` steps and after every epoch.

It records the validation loss against the step count and the training seconds
(the Trainer's step time, validation excluded). Because wall-clock seconds on a
shared machine are noisy, a separate timing first measures a quiet per-step time
for each model (the same training step on fresh copies, LSTM and GRU interleaved
round by round, the median over rounds), and the results also give
estimated seconds = steps x that per-step time, the axis of the plot.
``--retime`` repeats only that timing for a results file (keeping the earlier
timings under "earlier_step_seconds") and redraws the plot and tables.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scratchlm import LanguageModel, batching, corpora, optim  # noqa: E402
from scratchlm.text import CharTokenizer  # noqa: E402
from scratchlm.train import Trainer  # noqa: E402

TITLES = ROOT / "examples" / "data" / "titles.txt"
LSTM_HIDDEN, EMBEDDING = 128, 32


def config(vocab_size, cell, hidden, stateful):
    return {
        "vocab_size": vocab_size,
        "embedding_dim": EMBEDDING,
        "hidden_sizes": [hidden],
        "cell": cell,
        "stateful": stateful,
    }


def count(vocab_size, cell, hidden):
    return LanguageModel.parameter_count(config(vocab_size, cell, hidden, False))


def matched_gru_hidden(vocab_size, lstm_hidden=LSTM_HIDDEN):
    """The GRU hidden size whose model's parameter count is closest to the LSTM model's (must be within 1%)."""
    target = count(vocab_size, "lstm", lstm_hidden)
    best = min(range(1, 4 * lstm_hidden), key=lambda h: abs(count(vocab_size, "gru", h) - target))
    gap = abs(count(vocab_size, "gru", best) - target) / target
    assert gap <= 0.01, (best, gap)
    return best


def build(vocab_size, cell, hidden, stateful, seed):
    model = LanguageModel(
        vocab_size, embedding_dim=EMBEDDING, hidden_sizes=[hidden], cell=cell, stateful=stateful, seed=seed
    )
    return model, optim.Adam(lr=3e-3, global_clipnorm=5.0)


# -- the corpora ------------------------------------------------------------------------------


def titles_corpus(seed):
    titles = [line.strip() for line in corpora.read_text(TITLES).splitlines() if line.strip()]
    tokenizer = CharTokenizer.fit("".join(titles))
    sequences = [tokenizer.encode(t, unknown="unk") for t in titles]
    train_seqs, val_seqs = batching.split_sequences(sequences, 0.1, seed=seed)
    train = batching.Padded(train_seqs, tokenizer.eos_id, tokenizer.pad_id, batch_size=16, maxlen=120, seed=seed)
    val = batching.Padded(val_seqs, tokenizer.eos_id, tokenizer.pad_id, batch_size=16, maxlen=120, shuffle=False)
    what = (
        f"{len(titles)} titles, {len(train_seqs)} for training ({train.num_batches} padded batches of 16 "
        f"per epoch), {len(val_seqs)} held out; V={tokenizer.vocab_size}"
    )
    return tokenizer.vocab_size, train, val, False, what


def nietzsche_corpus(seed):
    text = corpora.load_text("nietzsche").lower()
    tokenizer = CharTokenizer.fit(text, reserved=False)
    ids = tokenizer.encode(text)
    train_ids, val_ids = batching.split_tail(ids, 0.05)
    train, val = batching.Streams(train_ids, batch_size=64, seq_len=64), batching.Streams(val_ids, 16, 64)
    what = (
        f"{len(text):,} characters, V={tokenizer.vocab_size}; 64 streams in {train.num_batches} chunks of 64 "
        f"per epoch; the last 5% ({len(val_ids):,} characters) held out as 16 streams"
    )
    return tokenizer.vocab_size, train, val, True, what


CORPORA = {"titles": titles_corpus, "nietzsche": nietzsche_corpus}


# -- quiet per-step timing -------------------------------------------------------------------


def step_times(models, train, rounds, steps):
    """Per-step seconds of each model's training step (loss_and_grads + optimizer step), measured in
    ``rounds`` rounds that interleave the models (rotating who goes first), ``steps`` steps of
    consecutive batches each; returns {name: [seconds per step of each round]}."""
    batches = list(train.batches(0))
    for model, opt in models.values():  # warm-up: JIT compilation, caches
        for b in batches[:2]:
            _, g = model.loss_and_grads(b.x, b.y, mask=b.mask, training=True)
            opt.step(model.params, g)
    times = {name: [] for name in models}
    names = list(models)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            model, opt = models[name]
            model.reset_state()
            start = (r * steps) % len(batches)
            chosen = [batches[(start + k) % len(batches)] for k in range(steps)]
            tick = time.perf_counter()
            for b in chosen:
                _, g = model.loss_and_grads(b.x, b.y, mask=b.mask, training=True)
                opt.step(model.params, g)
            times[name].append((time.perf_counter() - tick) / steps)
    return times


# -- training ---------------------------------------------------------------------------------


def train_one(vocab_size, cell, hidden, train, val, stateful, seed, epochs, eval_every, max_steps):
    """Train one model; returns its evaluation records (step, epoch, val_loss, train seconds so far)."""
    model, opt = build(vocab_size, cell, hidden, stateful, seed)
    evals = []

    def seconds(trainer):  # the Trainer's step time (validation, hooks not counted)
        done = sum(h["seconds"] for h in trainer.history)
        return done if trainer.batch == 0 else done + trainer._epoch_seconds  # batch 0: the epoch is recorded

    def on_step(trainer):
        if eval_every and trainer.step % eval_every == 0 and trainer.batch < trainer.train.num_batches:
            evals.append(
                {
                    "step": trainer.step,
                    "epoch": trainer.epoch + trainer.batch / train.num_batches,
                    "val_loss": trainer.evaluate(val),
                    "train_seconds": seconds(trainer),
                }
            )

    trainer = Trainer(
        model,
        opt,
        train,
        val,
        epochs=epochs,
        max_steps=max_steps,
        progress=False,
        on_step=on_step,
        out=open(os.devnull, "w"),
    )
    start = time.perf_counter()
    history = trainer.fit()
    total = time.perf_counter() - start
    elapsed = 0.0
    for h in history:  # epoch-end evaluations (the Trainer's own)
        elapsed += h["seconds"]
        evals.append(
            {
                "step": h["step"],
                "epoch": h["epoch"],
                "val_loss": h["val_loss"],
                "train_loss": h["loss"],
                "train_seconds": elapsed,
            }
        )
    if not evals or max(e["step"] for e in evals) != trainer.step:  # stopped inside an epoch (max_steps)
        evals.append(
            {
                "step": trainer.step,
                "epoch": trainer.epoch + trainer.batch / train.num_batches,
                "val_loss": trainer.evaluate(val),
                "train_seconds": seconds(trainer),
            }
        )
    evals.sort(key=lambda e: e["step"])
    return {
        "evals": evals,
        "train_seconds": seconds(trainer),
        "wall_seconds_with_validation": total,
        "steps": trainer.step,
    }


def machine():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        cpu = fields.get("Model name", "").strip()
        cores = fields.get("CPU(s)", "").strip()
    except OSError:
        cpu, cores = platform.processor(), str(os.cpu_count())
    import numba

    return {
        "cpu": cpu,
        "cpus": cores,
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "numba": numba.__version__,
        "load_average_start": os.getloadavg(),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpora", default="titles,nietzsche")
    p.add_argument("--titles-epochs", type=int, default=30)
    p.add_argument("--nietzsche-epochs", type=int, default=3)
    p.add_argument("--eval-every", type=int, default=35, help="Nietzsche: validation every N steps (and per epoch)")
    p.add_argument(
        "--titles-seeds",
        default="0,1,2",
        help="comma-separated seeds (each trains both cells; the seed also draws the held-out titles)",
    )
    p.add_argument("--nietzsche-seeds", default="0")
    p.add_argument("--timing-rounds", type=int, default=15)
    p.add_argument("--timing-steps", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="a smoke run: a few steps of everything")
    p.add_argument("--json", type=Path, default=Path("lstm_vs_gru.json"), help="where the results go")
    p.add_argument("--plot", type=Path, default=ROOT / "docs" / "lstm_vs_gru.png")
    p.add_argument("--retime", type=Path, metavar="JSON", help="re-measure the per-step times of a results file")
    args = p.parse_args(argv)
    if args.retime:
        return retime(args)
    results = {
        "command": "python benchmarks/" + " ".join([Path(__file__).name] + sys.argv[1:]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "corpora": {},
    }
    print(f"{results['machine']}", flush=True)
    for corpus in args.corpora.split(","):
        seeds = [int(s) for s in getattr(args, f"{corpus}_seeds").split(",")]
        vocab_size, train, val, stateful, what = CORPORA[corpus](seeds[0])
        hidden = {"lstm": LSTM_HIDDEN, "gru": matched_gru_hidden(vocab_size)}
        params = {cell: count(vocab_size, cell, h) for cell, h in hidden.items()}
        print(f"\n== {corpus}: {what}", flush=True)
        for cell in hidden:
            print(f"{cell.upper()} hidden {hidden[cell]}: {params[cell]:,} parameters", flush=True)
        print(f"difference {100 * (params['gru'] - params['lstm']) / params['lstm']:+.2f}%", flush=True)
        rounds, steps = (2, 2) if args.quick else (args.timing_rounds, args.timing_steps)
        models = {cell: build(vocab_size, cell, h, stateful, 123) for cell, h in hidden.items()}
        times = step_times(models, train, rounds, steps)
        per_step = {cell: float(numpy.median(t)) for cell, t in times.items()}
        for cell, t in times.items():
            print(
                f"{cell.upper()} step: median {1e3 * per_step[cell]:.1f} ms, min {1e3 * min(t):.1f} ms "
                f"over {rounds} rounds of {steps} steps",
                flush=True,
            )
        epochs = args.titles_epochs if corpus == "titles" else args.nietzsche_epochs
        entry = {
            "description": what,
            "seeds": seeds,
            "hidden": hidden,
            "parameters": params,
            "epochs": epochs,
            "steps_per_epoch": train.num_batches,
            "step_seconds_median": per_step,
            "step_seconds_rounds": times,
            "runs": {},
        }
        for seed in seeds:
            vocab_size, train, val, stateful, _ = CORPORA[corpus](seed)
            for cell in hidden:
                run = train_one(
                    vocab_size,
                    cell,
                    hidden[cell],
                    train,
                    val,
                    stateful,
                    seed,
                    epochs,
                    args.eval_every if corpus == "nietzsche" else None,
                    3 if args.quick else None,
                )
                for e in run["evals"]:
                    e["estimated_seconds"] = e["step"] * per_step[cell]
                entry["runs"].setdefault(cell, {})[str(seed)] = run
                last, best = run["evals"][-1], min(e["val_loss"] for e in run["evals"])
                print(
                    f"{cell.upper()} seed {seed}: {run['steps']} steps in {run['train_seconds']:.1f} s of training "
                    f"({run['wall_seconds_with_validation']:.1f} s with validation): final val_loss "
                    f"{last['val_loss']:.4f}, best {best:.4f}",
                    flush=True,
                )
        results["corpora"][corpus] = entry
    results["machine"]["load_average_end"] = os.getloadavg()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nwrote {args.json}")
    if args.plot:
        plot(results, args.plot)
        print(f"wrote {args.plot}")
    print()
    print(tables(results))


def tables(results):
    """Markdown tables of the results: the setup per corpus, then validation loss per evaluation."""
    out = [
        "| corpus | cell | hidden | parameters | step, median (ms) | step, min (ms) | steps | training s "
        "(measured, loaded machine) | estimated s (steps x median step) | best val_loss | final val_loss |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for corpus, entry in results["corpora"].items():
        for cell, runs in entry["runs"].items():
            rs = list(runs.values())
            best = numpy.mean([min(e["val_loss"] for e in r["evals"]) for r in rs])
            final = numpy.mean([r["evals"][-1]["val_loss"] for r in rs])
            steps = rs[0]["steps"]
            out.append(
                f"| {corpus} | {cell.upper()} | {entry['hidden'][cell]} | {entry['parameters'][cell]:,} | "
                f"{1e3 * entry['step_seconds_median'][cell]:.1f} | "
                f"{1e3 * min(entry['step_seconds_rounds'][cell]):.1f} | {steps:,} | "
                f"{numpy.mean([r['train_seconds'] for r in rs]):.1f} | "
                f"{steps * entry['step_seconds_median'][cell]:.1f} | {best:.4f} | {final:.4f} |"
            )
    for corpus, entry in results["corpora"].items():
        cells = list(entry["runs"])
        seeds = entry["seeds"]
        mean = "mean over seeds " + ", ".join(map(str, seeds)) if len(seeds) > 1 else f"seed {seeds[0]}"
        out += ["", f"{corpus} ({mean}): validation loss"]
        head = "| epoch | step | " + " | ".join(f"{c.upper()} val_loss | {c.upper()} est. s" for c in cells) + " |"
        out += [head, "| ---: " * (2 + 2 * len(cells)) + "|"]
        first = list(entry["runs"][cells[0]].values())[0]["evals"]
        ends = {x["step"] for x in first if float(x["epoch"]).is_integer()}
        for k, e in enumerate(first):
            if corpus == "titles" and (e["epoch"] % 5 and e["epoch"] != 1):
                continue
            if not float(e["epoch"]).is_integer() and any(abs(e["step"] - s) <= 2 for s in ends):
                continue  # a step after an epoch's own evaluation
            row = [f"{e['epoch']:g}" if float(e["epoch"]).is_integer() else f"{e['epoch']:.2f}", f"{e['step']:,}"]
            for c in cells:
                v = numpy.mean([r["evals"][k]["val_loss"] for r in entry["runs"][c].values()])
                row += [f"{v:.4f}", f"{e['step'] * entry['step_seconds_median'][c]:.1f}"]
            out.append("| " + " | ".join(row) + " |")
    return "\n".join(out)


def retime(args):
    results = json.loads(args.retime.read_text())
    results.setdefault("retimed", []).append(
        {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "load_average_start": os.getloadavg(),
        }
    )
    for corpus, entry in results["corpora"].items():
        vocab_size, train, _, stateful, _ = CORPORA[corpus](entry["seeds"][0])
        models = {cell: build(vocab_size, cell, h, stateful, 123) for cell, h in entry["hidden"].items()}
        times = step_times(models, train, args.timing_rounds, args.timing_steps)
        entry.setdefault("earlier_step_seconds", []).append(
            {"median": entry["step_seconds_median"], "rounds": entry["step_seconds_rounds"]}
        )
        entry["step_seconds_median"] = {cell: float(numpy.median(t)) for cell, t in times.items()}
        entry["step_seconds_rounds"] = times
        for cell, t in times.items():
            print(
                f"{corpus} {cell.upper()} step: median {1e3 * numpy.median(t):.1f} ms, min {1e3 * min(t):.1f} ms "
                f"over {args.timing_rounds} rounds of {args.timing_steps} steps",
                flush=True,
            )
            for run in entry["runs"][cell].values():
                for e in run["evals"]:
                    e["estimated_seconds"] = e["step"] * entry["step_seconds_median"][cell]
    results["retimed"][-1]["load_average_end"] = os.getloadavg()
    args.retime.write_text(json.dumps(results, indent=1) + "\n")
    if args.plot:
        plot(results, args.plot)
    print(tables(results))


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    corpora = results["corpora"]
    fig, axes = plt.subplots(1, len(corpora), figsize=(6 * len(corpora), 4.2), squeeze=False)
    colors = {"lstm": "tab:blue", "gru": "tab:orange"}
    for ax, (corpus, entry) in zip(axes[0], corpora.items(), strict=False):
        for cell, runs in entry["runs"].items():
            for k, run in enumerate(runs.values()):
                xs = [e["estimated_seconds"] for e in run["evals"]]
                ys = [e["val_loss"] for e in run["evals"]]
                label = (
                    (
                        f"{cell.upper()} {entry['hidden'][cell]} ({entry['parameters'][cell]:,} params, "
                        f"{1e3 * entry['step_seconds_median'][cell]:.1f} ms/step)"
                    )
                    if k == 0
                    else None
                )
                ax.plot(
                    xs,
                    ys,
                    color=colors[cell],
                    marker="." if corpus == "nietzsche" else None,
                    alpha=1.0 if k == 0 else 0.45,
                    label=label,
                )
        ax.set_title(f"{corpus}: validation loss, {entry['epochs']} epochs")
        ax.set_xlabel("estimated training seconds (steps x median per-step time)")
        ax.set_ylabel("validation loss (nats per character)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
