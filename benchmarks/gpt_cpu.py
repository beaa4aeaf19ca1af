"""The ``gpt-cpu`` workload end to end: ``--preset nanogpt-cpu`` against nanoGPT itself, trained one after the other.

    python benchmarks/gpt_cpu.py --torch-python /path/to/torch-venv/bin/python [--seeds 0,1] [--json out.json]
    python benchmarks/gpt_cpu.py --torch-python ... --steps 50          # a quick try of the whole pipeline
    python benchmarks/gpt_cpu.py --keep DIR --json out.json --rescore   # score kept runs again

For every seed it trains nanoGPT's character GPT on tiny Shakespeare twice, right after each other,
each as its users run it, timed from process start to exit:

* nanoGPT (MIT; ``model.py``, ``train.py``, ``configurator.py``, its shakespeare_char config and
  ``prepare.py`` from ``--nanogpt``, default ``../shared/nanogpt``, copied into a temporary folder and run
  there with ``--torch-python``): ``prepare.py`` on the bundled text, then its README's CPU command
  ``train.py config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20
  --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128
  --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0``, plus ``--dtype=float32`` (on the CPU nanoGPT
  never autocasts; this only keeps its float16 GradScaler off) and ``--always_save_checkpoint=True`` (so
  that the checkpoint scored is the one after the last step, not the best 20-batch estimate). nanoGPT
  seeds with a fixed ``torch.manual_seed(1337)``; the copy's line reads the seed from $NANOGPT_SEED
  (1337 + seed), the one change made to it.
* scratchlm: ``python -m scratchlm train tinyshakespeare --preset nanogpt-cpu --seed S``.

Both final models are then scored by the same full-split evaluation
(:func:`scratchlm.cli.eval.score` over :class:`scratchlm.batching.Whole`: every character of the last
10% of the text, 12 streams read in chunks of 64, each chunk a fresh context — what ``scratchlm eval``
does), nanoGPT's after its weights are read into a :class:`~scratchlm.models.TransformerLM` of its
vocabulary (its 65 characters, through the torch Python: ``torch.load(weights_only=True)`` there, plain
arrays here). Reported per seed and as the mean: the held-out loss, the wall time, the median step time
each trainer prints, and nanoGPT's own 20-batch ``val loss`` at the last step.
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "reference"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from make_torch_reference import to_scratchlm  # noqa: E402  (nanoGPT's names and layouts -> scratchlm's)

from scratchlm import batching, corpora  # noqa: E402
from scratchlm.cli.eval import score  # noqa: E402
from scratchlm.text import from_config  # noqa: E402
from scratchlm.train import load_checkpoint  # noqa: E402

NANOGPT = ROOT.parent / "shared" / "nanogpt"
STEPS, B, T, VAL_FRACTION = 2000, 12, 64, 0.1
COMMAND = (
    "--device=cpu --compile=False --eval_iters=20 --log_interval=1 --block_size=64 --batch_size=12 "
    "--n_layer=4 --n_head=4 --n_embd=128 --dropout=0.0 --dtype=float32 --always_save_checkpoint=True"
).split()
EXPORT = """import sys, numpy, torch
ckpt = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
state = {k.removeprefix("_orig_mod."): v.float().numpy() for k, v in ckpt["model"].items()}
numpy.savez(sys.argv[2], iter_num=numpy.array(ckpt["iter_num"]), **state)
"""


def layout(source, folder, text):
    """nanoGPT's files as its repository lays them out, under ``folder``, with the bundled text as input.txt."""
    for name in ("model.py", "train.py", "configurator.py"):
        shutil.copyfile(source / name, folder / name)
    (folder / "config").mkdir()
    shutil.copyfile(source / "train_shakespeare_char.py", folder / "config" / "train_shakespeare_char.py")
    data = folder / "data" / "shakespeare_char"
    data.mkdir(parents=True)
    shutil.copyfile(source / "prepare.py", data / "prepare.py")
    with open(data / "input.txt", "w", encoding="utf-8", newline="") as f:
        f.write(text)
    train = (folder / "train.py").read_text()
    seeded = train.replace(
        "torch.manual_seed(1337 + seed_offset)", "torch.manual_seed(int(os.environ['NANOGPT_SEED']) + seed_offset)"
    )
    if seeded == train:
        raise SystemExit("nanoGPT's train.py no longer calls torch.manual_seed(1337 + seed_offset): update layout()")
    (folder / "train.py").write_text(seeded)


def timed(command, cwd, env, log):
    """Run ``command``, its output to ``log``; (wall seconds, the output). Exits on failure."""
    start = time.perf_counter()
    with open(log, "w") as out:
        done = subprocess.run(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
    seconds = time.perf_counter() - start
    text = Path(log).read_text(errors="replace")
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, command))} failed ({done.returncode}); its output: {log}\n{text[-2000:]}")
    return seconds, text


def nanogpt_model(weights, vocab_size):
    """nanoGPT's exported arrays as a scratchlm TransformerLM of the same architecture."""
    named = dict(np.load(weights))
    named.pop("iter_num")
    import frameworks  # benchmarks/frameworks.py: the preset's model

    model = frameworks.nanogpt_cpu_model(vocab_size, pad_id=None)  # nanoGPT's id 0 is "\n", a character like any other
    model.set_params(to_scratchlm(named, 4, 4))
    return model


def held_out(model, ids):
    """The one evaluation both models get: mean nats per character over every target of ``ids``."""
    loss, count = score(model, batching.Whole(ids, B, T), progress=False)
    return loss, count


def median_step_ms(log, pattern):
    """The median of the per-step times (ms) a trainer printed, its first 10 steps (warm-up) left out."""
    times = [float(m) for m in re.findall(pattern, log)]
    return statistics.median(times[10:]) if len(times) > 10 else None


def scratchlm_step_ms(metrics):
    """The median step time (ms) over the Trainer's 50-step reports in metrics.jsonl, the first left out."""
    events = [json.loads(line) for line in metrics.read_text().splitlines()]
    rates = [e["tokens_per_s"] for e in events if e.get("event") == "step"][1:]
    return statistics.median(1e3 * B * T / r for r in rates) if rates else None


def one_seed(seed, args, folder):
    """Train nanoGPT, then scratchlm, with ``seed`` (their runs kept in ``folder``); the timings as a dict."""
    out = {"seed": seed}
    env = {**os.environ, "NANOGPT_SEED": str(1337 + seed), "OMP_NUM_THREADS": str(args.threads)}
    steps = [f"--max_iters={args.steps}", f"--lr_decay_iters={args.steps}", f"--out_dir=out-{seed}"]
    warmup = min(100, args.steps // 2)  # the preset's and nanoGPT's 100, shortened for a quick try
    steps.append(f"--warmup_iters={warmup}")
    if args.steps % 250:  # its evaluations (and checkpoints) come every 250 steps: make the last step one of them
        steps.append(f"--eval_interval={args.steps}")
    seconds, log = timed(
        [args.torch_python, "train.py", "config/train_shakespeare_char.py", *COMMAND, *steps],
        folder,
        env,
        folder / f"nanogpt-{seed}.log",
    )
    reported = re.findall(r"step \d+: train loss [\d.]+, val loss ([\d.]+)", log)
    exported = folder / f"nanogpt-{seed}.npz"
    subprocess.run([args.torch_python, "-c", EXPORT, folder / f"out-{seed}" / "ckpt.pt", exported], check=True)
    out["nanogpt"] = {
        "wall_s": seconds,
        "reported_val_loss": float(reported[-1]) if reported else None,
        "step_ms": median_step_ms(log, r"iter \d+: loss [\d.]+, time ([\d.]+)ms"),
        "iter_num": int(np.load(exported)["iter_num"]),
    }
    run_dir = folder / f"scratchlm-{seed}"
    command = [sys.executable, "-m", "scratchlm", "train", "tinyshakespeare", "--preset", "nanogpt-cpu"]
    command += ["--seed", str(seed), "--run-dir", run_dir, "--max-steps", str(args.steps)]
    command += ["--decay-steps", str(args.steps), "--warmup-steps", str(warmup)]
    seconds, log = timed(command, ROOT, {**os.environ, "PYTHONPATH": str(ROOT)}, folder / f"scratchlm-{seed}.log")
    out["scratchlm"] = {"wall_s": seconds, "step_ms": scratchlm_step_ms(run_dir / "metrics.jsonl")}
    return out


def score_seed(result, folder, text, val_text):
    """Add both models' held-out loss (the same evaluation) to one seed's ``result``."""
    seed = result["seed"]
    chars = sorted(set(text))  # nanoGPT's prepare.py: the text's characters, sorted, are its ids
    stoi = {c: i for i, c in enumerate(chars)}
    ids = np.array([stoi[c] for c in val_text], dtype=np.int64)
    loss, count = held_out(nanogpt_model(folder / f"nanogpt-{seed}.npz", len(chars)), ids)
    result["nanogpt"].update(held_out_loss=loss, targets=count)
    ckpt = load_checkpoint(folder / f"scratchlm-{seed}" / "last.npz")
    loss, count = held_out(ckpt.model, from_config(ckpt.metadata["tokenizer"]).encode(val_text))
    result["scratchlm"].update(held_out_loss=loss, targets=count, step=ckpt.optimizer.iterations)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--torch-python", help="a Python with PyTorch (and NumPy) for nanoGPT (needed unless --rescore)")
    p.add_argument("--nanogpt", type=Path, default=NANOGPT, help=f"nanoGPT's files (default {NANOGPT})")
    p.add_argument("--seeds", default="0,1", help="comma-separated seeds (default 0,1)")
    p.add_argument("--steps", type=int, default=STEPS, help=f"training steps of both (default {STEPS})")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="OMP_NUM_THREADS for PyTorch (default: all)")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--keep", type=Path, help="keep the runs and logs in this folder (default: a temporary one)")
    p.add_argument("--rescore", action="store_true", help="score the runs kept in --keep again (the --json file's)")
    args = p.parse_args(argv)
    text = corpora.load_text("tinyshakespeare")
    val_text = text[len(text) - int(len(text) * VAL_FRACTION) :]  # scratchlm's split_tail: the held-out part
    folder = args.keep or Path(tempfile.mkdtemp(prefix="gpt-cpu-"))
    if args.rescore:
        if not (args.keep and args.json and args.json.exists()):
            p.error("--rescore needs --keep (the runs' folder) and --json (the earlier results)")
        results = json.loads(args.json.read_text())["seeds"]
    else:
        if not args.torch_python:
            p.error("--torch-python is needed to train nanoGPT")
        folder.mkdir(parents=True, exist_ok=True)
        layout(args.nanogpt, folder, text)
        subprocess.run([args.torch_python, "prepare.py"], cwd=folder / "data" / "shakespeare_char", check=True)
        results = [one_seed(int(seed), args, folder) for seed in args.seeds.split(",")]
    for result in results:
        score_seed(result, folder, text, val_text)
        print(json.dumps(result), flush=True)
    summary = {
        name: {key: statistics.mean(r[name][key] for r in results) for key in ("wall_s", "held_out_loss")}
        for name in ("nanogpt", "scratchlm")
    }
    summary["loss_gap"] = summary["scratchlm"]["held_out_loss"] - summary["nanogpt"]["held_out_loss"]
    summary["wall_ratio"] = summary["scratchlm"]["wall_s"] / summary["nanogpt"]["wall_s"]
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.write_text(json.dumps({"seeds": results, "mean": summary}, indent=1))
    if not args.keep:
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
