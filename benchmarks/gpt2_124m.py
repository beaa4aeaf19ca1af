"""The ``gpt2-124m`` workload: a GPT-2-124M-shaped model read from a Hugging Face folder, against transformers.

    python benchmarks/gpt2_124m.py [--folder DIR] [--torch-python PY] [--repeat 5] [--json out.json]

1. The folder: a TransformerLM of GPT-2 124M's shape (12 blocks, E 768, 12 heads of 64, feed-forward 3072,
   context 1024, V 50,257, GELU-tanh, ε 1e-5, tied, biases) with GPT-2's random initialisation, written by
   :func:`scratchlm.interop.to_hf` (config.json + model.safetensors, float32, 498 MB) — no download. It is
   written once and reused (``--folder``, default a folder under the system's temporary directory).
2. Loading, each in a fresh process: the seconds :func:`scratchlm.interop.from_hf` takes and the process's
   peak resident set (VmHWM) after it, against ``GPT2LMHeadModel.from_pretrained`` in ``--torch-python``.
   The float32 weights are 497 MB: a reader that holds them twice peaks above 1 GB.
3. The memory-bandwidth floor of decoding: one token at batch 1 reads every weight once (the tied table once
   for the logits; the lookup is one row of it), so seconds per token >= weight bytes / the bandwidth a plain
   NumPy copy of a 512 MB array reaches here (bytes read and written per second).
4. ``bench.py``'s ``gpt2-124m-gen`` (batch-1 greedy generation with the KV cache, tokens/s) and
   ``gpt2-124m-step`` (a fine-tuning step at B 4, T 64, AdamW) against transformers + PyTorch in the same run,
   rounds interleaved, run by ``--torch-python`` (a Python with PyTorch, transformers and scratchlm's
   dependencies) so that both frameworks are importable in the workers.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from scratchlm.safetensors import read_header  # noqa: E402

SHAPE = dict(embed_dim=768, dense_dim=3072, num_heads=12, key_dim=64, num_layers=12)
V, L = 50257, 1024
LOAD_SCRATCHLM = """import json, sys, time
start = time.perf_counter()
from scratchlm.interop import from_hf
model = from_hf(sys.argv[1])
seconds = time.perf_counter() - start
peak = [int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")][0]
print(json.dumps({"seconds": seconds, "peak_rss_mb": peak / 1024}))
"""
LOAD_TORCH = """import json, sys, time
start = time.perf_counter()
import torch
from transformers import GPT2LMHeadModel
model = GPT2LMHeadModel.from_pretrained(sys.argv[1], torch_dtype=torch.float32)
seconds = time.perf_counter() - start
peak = [int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")][0]
print(json.dumps({"seconds": seconds, "peak_rss_mb": peak / 1024}))
"""


def write_folder(folder):
    """The GPT-2-124M-shaped folder, written once (in a subprocess: this one stays small)."""
    if (folder / "model.safetensors").exists():
        return
    code = (
        "import sys; from scratchlm import TransformerLM; from scratchlm.interop import to_hf\n"
        f"m = TransformerLM({V}, {L}, block='gpt', activation='gelu_tanh', layernorm_epsilon=1e-5, "
        f"tie_embeddings=True, init='gpt2', pad_id=None, seed=0, **{SHAPE!r})\n"
        "to_hf(m, sys.argv[1])\n"
    )
    subprocess.run([sys.executable, "-c", code, folder], check=True, env=_env())


def _env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def load(python, code, folder, rounds):
    """Per round, a fresh process: (seconds, peak RSS MB) of loading the folder; the medians and all rounds."""
    runs = []
    for _ in range(rounds):
        out = subprocess.run([python, "-c", code, folder], check=True, capture_output=True, text=True, env=_env())
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return {
        "seconds": statistics.median(r["seconds"] for r in runs),
        "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in runs),
        "rounds": runs,
    }


def copy_bandwidth(mb=512, rounds=5):
    """Bytes moved per second (read and written) by a plain NumPy copy of an ``mb`` MB float32 array (the best of
    ``rounds``): the memory bandwidth one process reaches here."""
    src = np.ones(mb << 18, dtype=np.float32)
    dst = np.empty_like(src)
    best = min(_timed(lambda: np.copyto(dst, src)) for _ in range(rounds))
    return 2 * src.nbytes / best


def _timed(f):
    start = time.perf_counter()
    f()
    return time.perf_counter() - start


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folder", type=Path, default=Path(tempfile.gettempdir()) / "scratchlm-gpt2-124m-random")
    p.add_argument("--torch-python", help="a Python with PyTorch and transformers (and scratchlm's dependencies)")
    p.add_argument("--repeat", type=int, default=5, help="rounds of each measurement (default 5)")
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args(argv)
    write_folder(args.folder)
    entries = read_header(args.folder / "model.safetensors").entries.values()
    weights = sum(e.end - e.begin for e in entries)  # float32 bytes of every tensor the folder holds
    per_token = weights  # the tied table once: the logits read all of it, the lookup one row of it
    bandwidth = copy_bandwidth()
    results = {
        "folder": str(args.folder),
        "weights_mb": weights / 2**20,
        "bytes_per_token_mb": per_token / 2**20,
        "copy_bandwidth_gb_s": bandwidth / 1e9,
        "floor_ms_per_token": 1e3 * per_token / bandwidth,
        "load": {"scratchlm": load(sys.executable, LOAD_SCRATCHLM, args.folder, args.repeat)},
    }
    if args.torch_python:
        results["load"]["transformers"] = load(args.torch_python, LOAD_TORCH, args.folder, args.repeat)
    print(json.dumps({k: v for k, v in results.items() if k != "load"}, indent=1))
    for name, r in results["load"].items():
        print(f"load {name}: {r['seconds']:.2f} s, peak RSS {r['peak_rss_mb']:.0f} MB")
    if args.torch_python:
        bench = [args.torch_python, str(HERE / "bench.py"), "--workloads", "gpt2-124m"]
        bench += ["--frameworks", "scratchlm,torch", "--repeat", str(args.repeat)]
        env = {**_env(), "SCRATCHLM_GPT2_FOLDER": str(args.folder)}
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            subprocess.run([*bench, "--json", out.name], check=True, env=env)
            results["bench"] = json.loads(Path(out.name).read_text())
        gen = results["bench"]["results"].get("gpt2-124m-gen", {}).get("scratchlm")
        if gen:
            ms = 1e3 / gen["chars_per_s"]  # one token per "char" of a batch-1 generation
            print(f"scratchlm decoding: {ms:.1f} ms per token = {ms / results['floor_ms_per_token']:.2f}x the floor")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
