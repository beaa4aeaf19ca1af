"""Benchmark scratchlm (fused and reference kernels) against Keras and PyTorch on the same workloads.

    python benchmarks/bench.py [--workloads book,s2s,gen,gpu,gru-book,gru-s2s,transformer,transformer-gen,gpt-cpu,sweep]
                               [--repeat N]
                               [--json out.json]
                               [--frameworks scratchlm,scratchlm-reference,scratchlm-rerun,scratchlm-bf16,keras,torch]

Workloads (details in benchmarks/frameworks.py): ``book`` (the Nietzsche model:
one-hot -> LSTM 128, T=60, B=128, RMSprop, last-step loss), ``s2s``
(Embedding 64 -> LSTM 512, T=100, B=64, Adam, loss at every step), ``gen``
(that model sampling, batch 1 and batch 64) and ``gpu`` (on a CUDA GPU, run
only where one is present: Embedding 64 -> LSTM 1024, T=100, B=256, training
and batch-1 sampling, scratchlm on CuPy against PyTorch/cuDNN, and the two
Transformer cases below on the GPU); ``gru-book`` and ``gru-s2s`` (the book and s2s
shapes with a GRU: Keras' GRU with reset_after=True, torch.nn.GRU; not in the
default list); ``transformer`` (the IMDB seed of issue 11:
PositionalEmbedding -> one book decoder block, E 256, 2 heads of key_dim 256,
dense 2048 -> Dense 15000, T=99, B=32, RMSprop, padded batches) and
``transformer-gen`` (that model generating 50 tokens after a 2-token prompt,
batch 1: scratchlm's KV cache against the seed's full re-run per token, in
Keras and as ``scratchlm-rerun``). These two are not in the default list (a
transformer step takes seconds here), nor is ``gpt-cpu`` (issue 23: one training
step of ``--preset nanogpt-cpu`` against nanoGPT's own model.py and train.py step
in PyTorch; ``benchmarks/gpt_cpu.py`` runs the whole 2000-step training of both).
``sweep`` (issue 14) is one training step of Embedding 64 -> LSTM H -> Dense 96, T=100, Adam, for every B in 8 … 256 and
H in 128 … 1024 (24 cases, no memory rounds); ``--sweep-png FILE`` draws the
speed-ups over PyTorch as a heat map (needs matplotlib, the ``plot`` extra); one
cell runs by its case name (``--workloads sweep-b8-h512``). Frameworks that are not installed are
left out, and a case runs only the frameworks it lists (if it lists any).

How it measures:

* every (framework, workload) pair runs in its own worker process, built and
  warmed up (JIT compilation, graph tracing) before any timing;
* the workers of a workload then take turns, round after round, in a rotating
  order (so a drift of the machine's speed touches all of them alike); each
  round is run twice and timed the second time, because a worker sleeps
  through the other workers' rounds and its first steps after that are slow
  (measured on the Zen 5 VM after a 0.3 s pause: OpenBLAS's 2-thread dU GEMM
  of the (16, 256) sweep cell took 10-15 ms instead of 2.3, scratchlm's step
  needed ~3 steps (~40 ms) to come back from 16-39 ms to 11-12, PyTorch's one
  step from 13-20 ms to 12.5), while training runs step after step; the
  table shows the median over the rounds with the rounds' range around it; a
  speed-up (a ratio of medians) is marked "(noise)" where the two frameworks'
  rounds overlap;
* memory is measured in separate worker processes (one round each, after the
  warm-up) from /proc/self/status: the peak RSS is reset before the round and
  read after it, so "step peak" is how far the resident set rose above its
  level before the round (activations, gradients, temporaries) and "process
  peak" the whole process at its peak (scratchlm's reusable work buffers are
  released before the round, so they count; on the GPU, device memory). These
  workers force big allocations to ``mmap`` (``MALLOC_MMAP_THRESHOLD_``) so
  that freed memory leaves the resident set at once instead of lingering in
  the heap; the timing workers do not (it slows PyTorch's generation loop ~7x);
* a roofline per training workload: its GEMM FLOPs per step divided by the
  sgemm rate measured here, once at the machine's peak (a large square GEMM)
  and once as the time the same GEMMs take at the workload's own shapes.

``SCRATCHLM_BENCH_LOG=FILE`` appends the workers' stderr to FILE (they are silent otherwise).

``main(argv)`` is the entry point (for a ``scratchlm bench`` command).
"""

import argparse
import gc
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import frameworks as fw  # noqa: E402

FRAMEWORKS = ["scratchlm", "scratchlm-reference", "scratchlm-rerun", "scratchlm-bf16", "keras", "torch"]
WORKLOAD_CASES = {
    "book": ["book"],
    "s2s": ["s2s"],
    "gen": ["gen-b1", "gen-b64"],
    "gpu": ["gpu", "gpu-gen-b1", "gpu-transformer", "gpu-transformer-gen"],
    "gru-book": ["gru-book"],
    "gru-s2s": ["gru-s2s"],
    "transformer": ["transformer"],
    "transformer-gen": ["transformer-gen"],
    "gpt-cpu": ["gpt-cpu"],
    "gpt2-124m": ["gpt2-124m-gen", "gpt2-124m-step"],
    "sweep": [f"sweep-b{B}-h{H}" for H in fw.SWEEP_H for B in fw.SWEEP_B],
}
# Units per round: enough that the fastest framework's round lasts >= ~0.1 s, so that waking its threads and
# refilling its caches after the pause between rounds does not dominate (a 400-token gen-b1 round took 16 ms and
# measured scratchlm ~30% slower than back-to-back rounds do).
# transformer: one step (0.5-10 s here); transformer-gen: one 50-token generation.
ROUND = {
    "book": 10,
    "s2s": 3,
    "gru-book": 10,
    "gru-s2s": 3,
    "gen-b1": 3000,
    "gen-b64": 100,
    "gpu": 5,
    "transformer": 1,
    "transformer-gen": 2,
    "gpt-cpu": 40,
    "gpt2-124m-gen": 2,
    "gpt2-124m-step": 3,
    "gpu-gen-b1": 1000,
    "gpu-transformer": 10,
    "gpu-transformer-gen": 2,
}
WARMUP = {
    "book": 3,
    "s2s": 2,
    "gru-book": 3,
    "gru-s2s": 2,
    "gen-b1": 50,
    "gen-b64": 20,
    "gpu": 3,
    "transformer": 1,
    "transformer-gen": 1,
    "gpt-cpu": 5,
    "gpt2-124m-gen": 1,
    "gpt2-124m-step": 1,
    "gpu-gen-b1": 50,
    "gpu-transformer": 3,
    "gpu-transformer-gen": 1,
}
TARGETS = [  # (case, ours, theirs, minimum speed-up of ours over theirs): issues 5, 14, 25 and 27
    ("book", "scratchlm", "keras", 2.0),
    ("book", "scratchlm", "torch", 2.0),
    ("s2s", "scratchlm", "keras", 1.6),
    ("s2s", "scratchlm", "torch", 1.3),
    ("gen-b1", "scratchlm", "torch", 4.0),
    ("gen-b1", "scratchlm-bf16", "torch", 6.0),  # issue 25: with U read as bfloat16
    ("transformer-gen", "scratchlm", "torch", 1.5),  # issue 25: against PyTorch's KV-cache decoder
    ("gpu", "scratchlm", "torch", 0.7),
    ("gpu-gen-b1", "scratchlm", "torch", 1.0),
]
for _case in WORKLOAD_CASES["sweep"]:  # ~0.2 s per round at ~50 GFLOP/s, one warm-up step
    _c = fw.CASES[_case]
    _flops = 6 * _c["T"] * _c["B"] * 4 * _c["H"] * (_c["H"] + 64) + 6 * _c["T"] * _c["B"] * _c["H"] * _c["V"]
    ROUND[_case], WARMUP[_case] = max(1, round(0.2 * 50e9 / _flops)), 1
WORKER_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "ignore"}
MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}
# What `import scratchlm` sets where NumPy is not loaded yet (this script loads it first):
# scratchlm/kernels/numba/parallel/shards.py.
FRAMEWORK_ENV = {
    name: {"OPENBLAS_THREAD_TIMEOUT": "20"}
    for name in ("scratchlm", "scratchlm-reference", "scratchlm-rerun", "scratchlm-bf16")
}


# -- memory, read from /proc -------------------------------------------------------------------------------


def _status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak_rss():
    """Set the kernel's peak-RSS mark (VmHWM) back to the current RSS (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


# -- the worker: one framework, one workload ------------------------------------------------------------------


def worker(framework, case):
    """Build, warm up, then serve {"units": n, "memory": bool} requests on stdin, one JSON line each on stdout."""
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # library chatter on stdout goes to stderr
    run, unit = fw.BUILDERS[framework](case)
    run(WARMUP[case])
    reply.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        request = json.loads(line)
        n = request["units"]
        if request.get("settle"):  # untimed: wakes the threads that slept through the other workers' rounds
            run(request["settle"])
        if request.get("memory"):  # count kept work buffers as the step's
            fw.RELEASE.get(framework, lambda: None)()
            gc.collect()
        _reset_peak_rss()
        before = _status_kb("VmRSS")
        seconds = run(n)
        peak = _status_kb("VmHWM")
        result = {
            "seconds": seconds,
            "count": n * unit,
            "step_peak_mb": (peak - before) / 1024,
            "process_peak_mb": peak / 1024,
        }
        if fw.CASES[case].get("gpu"):
            result["device_peak_mb"] = fw.device_peak_mb(framework)
        reply.write(json.dumps(result) + "\n")


class Worker:
    def __init__(self, framework, case, extra_env=None):
        env = {
            **os.environ,
            **WORKER_ENV,
            **FRAMEWORK_ENV.get(framework, {}),
            **(extra_env or {}),
            "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
        }
        self.log = open(os.environ.get("SCRATCHLM_BENCH_LOG", os.devnull), "a")  # the workers' stderr
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", framework, case],
            env=env,
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
        )
        self.name = framework
        ready = self.proc.stdout.readline()
        if not ready:
            raise RuntimeError(
                f"the {framework} worker for {case} died while starting "
                f"(run: python {__file__} --worker {framework} {case})"
            )

    def measure(self, units, memory=False, settle=0):
        self.proc.stdin.write(json.dumps({"units": units, "memory": memory, "settle": settle}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()
        self.log.close()


def run_case(case, frameworks, repeat, memory_rounds=True):
    """Rounds of alternating timings of one case, then (``memory_rounds``) one memory round per framework.

    Returns ({framework: [timed rounds]}, {framework: memory round, or {} without memory rounds}).
    """
    workers = []
    for f in frameworks:
        try:
            workers.append(Worker(f, case))
        except RuntimeError as exc:  # e.g. PyTorch without CUDA for "gpu"
            print(f"# {exc}; left out")
    rounds = {w.name: [] for w in workers}
    try:
        for r in range(repeat):
            for k in range(len(workers)):
                w = workers[(r + k) % len(workers)]
                time.sleep(0.3)  # let the previous worker's threads go idle
                rounds[w.name].append(w.measure(ROUND[case], settle=ROUND[case]))
    finally:
        for w in workers:
            w.close()
    memory = {f: {} for f in rounds}
    for f in rounds if memory_rounds else ():
        w = Worker(f, case, MEMORY_ENV)
        try:
            memory[f] = w.measure(ROUND[case], memory=True)
        finally:
            w.close()
    return rounds, memory


# -- roofline ----------------------------------------------------------------------------------------------


def gemms(case):
    """The GEMMs of one training step of scratchlm's algorithm: [(M, K, N, count)]."""
    c = fw.CASES[case]
    if c.get("model") == "transformer":
        return transformer_gemms(c)
    if c.get("model") == "gpt":
        return gpt_gemms(c)
    if c.get("model") == "gpt2":
        return gpt_gemms(dict(c, V=fw.GPT2_VOCAB, E=768, N=12, L=12))
    T, B, H, V = c["T"], c["B"], c["H"], c.get("V", fw.V)
    G = 3 if c.get("cell") == "gru" else 4  # gates: GRU z, r, h; LSTM i, f, c, o
    out = [
        (B, H, G * H, T),  # h_{t-1} U, every step
        (B, G * H, H, T),  # dz_t Uᵀ, every step
        (H, T * B, G * H, 1),
    ]  # dU = Hᵀ dZ
    rows = B if c["last_only"] else T * B
    out += [(rows, H, V, 1), (rows, V, H, 1), (H, rows, V, 1)]  # dense forward, dx, dW
    if c["embedding"]:
        out += [(V, c["embedding"], G * H, 1), (c["embedding"], V, G * H, 1), (V, G * H, c["embedding"], 1)]
    return out


def transformer_gemms(c):
    """One training step of the book block model: every forward product (M, K, N) and its two backward ones,
    dX = dY Wᵀ (M, N, K) and dW = Xᵀ dY (K, M, N) (for the attention products: dQ, dK and dP, dV).
    The embeddings are lookups (their backward a scatter-add): no FLOPs counted."""
    BT, E, F, N, K, T, V = c["B"] * c["T"], c["E"], c["F"], c["N"], c["K"], c["T"], c["V"]
    BN = c["B"] * N
    forward = [
        (BT, E, N * K, 6),  # q, k, v projections of both attentions
        (BT, N * K, E, 2),  # output projections
        (T, K, T, 2 * BN),  # S = Q Kᵀ per batch row and head
        (T, T, K, 2 * BN),  # O = P V
        (BT, E, F, 1),
        (BT, F, E, 1),  # feed-forward
        (BT, E, V, 1),
    ]  # Dense(V)
    return [shape for M, Kd, Nd, n in forward for shape in ((M, Kd, Nd, n), (M, Nd, Kd, n), (Kd, M, Nd, n))]


def gpt_gemms(c):
    """One training step of the GPT of ``gpt-cpu``, as :func:`transformer_gemms` counts them: per block the fused
    q/k/v projection, the attention's two products per head, its output projection and the feed-forward of 4E;
    then the tied output layer."""
    BT, E, N, T, L, V = c["B"] * c["T"], c["E"], c["N"], c["T"], c["L"], c["V"]
    K, BN = E // N, c["B"] * N
    forward = [
        (BT, E, 3 * E, L),
        (T, K, T, L * BN),
        (T, T, K, L * BN),
        (BT, E, E, L),
        (BT, E, 4 * E, L),
        (BT, 4 * E, E, L),
        (BT, E, V, 1),
    ]
    return [shape for M, Kd, Nd, n in forward for shape in ((M, Kd, Nd, n), (M, Nd, Kd, n), (Kd, M, Nd, n))]


def sgemm_seconds(M, K, N, repeat=20):
    """The fastest of ``repeat`` float32 (M, K) x (K, N) products: the rate this BLAS can reach."""
    a = np.random.default_rng(0).standard_normal((M, K)).astype(np.float32)
    b = np.random.default_rng(1).standard_normal((K, N)).astype(np.float32)
    out = np.empty((M, N), dtype=np.float32)
    np.matmul(a, b, out=out)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        np.matmul(a, b, out=out)
        times.append(time.perf_counter() - start)
    return min(times)


def roofline(cases):
    """Per training case: GFLOP per step, the time at the peak sgemm rate and (not for the sweep's 24 cases,
    where it would take minutes) the time of the same GEMMs at their own shapes."""
    peak = 2 * 2048**3 / sgemm_seconds(2048, 2048, 2048, repeat=5)
    result = {"peak_sgemm_gflops": peak / 1e9}
    for case in cases:
        if fw.CASES[case]["kind"] != "train" or fw.CASES[case].get("gpu"):
            continue
        flops = sum(2 * M * K * N * n for M, K, N, n in gemms(case))
        result[case] = {"gflop_per_step": flops / 1e9, "bound_ms_at_peak": 1e3 * flops / peak}
        if case not in WORKLOAD_CASES["sweep"]:
            result[case]["gemm_ms_at_shapes"] = 1e3 * sum(
                sgemm_seconds(M, K, N, repeat=20 if M * K * N < 10**9 else 5) * n for M, K, N, n in gemms(case)
            )
    return result


# -- report ------------------------------------------------------------------------------------------------


def summarise(case, rounds, memory):
    c = fw.CASES[case]
    out = {}
    for name, rs in rounds.items():
        times = [r["seconds"] / r["count"] for r in rs]  # s per step or per character, one per round
        per_unit = statistics.median(times)
        entry = {"rounds": rs, **{k: memory[name][k] for k in ("step_peak_mb", "process_peak_mb") if k in memory[name]}}
        entry["spread"] = [min(times) / per_unit, max(times) / per_unit]  # the rounds' range, relative to the median
        if "device_peak_mb" in memory[name]:
            entry["device_peak_mb"] = memory[name]["device_peak_mb"]
        if c["kind"] == "train":
            entry.update(ms_per_step=1e3 * per_unit, tokens_per_s=c["B"] * c["T"] / per_unit)
        else:
            entry.update(chars_per_s=1 / per_unit)
        out[name] = entry
    return out


def throughput(entry):
    return entry.get("tokens_per_s") or entry["chars_per_s"]


def rates(entry):
    """(the slowest, the fastest) of an entry's rounds, as throughput."""
    return throughput(entry) / entry["spread"][1], throughput(entry) / entry["spread"][0]


def in_noise(a, b):
    """Whether two entries' rounds overlap (some round of each is as fast as some round of the other): then the
    ratio of their medians is inside the machine's noise."""
    (slow_a, fast_a), (slow_b, fast_b) = rates(a), rates(b)
    return slow_a <= fast_b and slow_b <= fast_a


def table(results):
    """Markdown: per case and framework the median over the rounds (and the rounds' range, ±% of the median),
    scratchlm's speed-up as the ratio of medians, marked "(noise)" where the two frameworks' rounds overlap."""
    lines = [
        "| workload | framework | ms/step | tokens or chars/s | rounds' range | scratchlm speed-up | step peak MB "
        "| process peak MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for case, entries in results.items():
        ours = entries.get("scratchlm")
        for name, e in entries.items():
            ms = f"{e['ms_per_step']:.1f}" if "ms_per_step" in e else "–"
            ratio = f"{throughput(ours) / throughput(e):.2f}x" if ours and name != "scratchlm" else ""
            if ratio and in_noise(ours, e):
                ratio += " (noise)"
            low, high = e["spread"]
            spread = f"-{100 * (1 - low):.0f}% / +{100 * (high - 1):.0f}%"
            memory = (
                f"{e['device_peak_mb']:.0f} (device)"
                if "device_peak_mb" in e
                else f"{e['step_peak_mb']:.0f}"
                if "step_peak_mb" in e
                else "–"
            )  # "–": --no-memory
            process = f"{e['process_peak_mb']:.0f}" if "process_peak_mb" in e else "–"
            lines.append(
                f"| {case} | {name} | {ms} | {throughput(e):,.0f} | {spread} | {ratio} | {memory} | {process} |"
            )
    return "\n".join(lines)


def sweep_speedups(results, other):
    """{(B, H): scratchlm's tokens/s over ``other``'s} for the sweep cases both ran."""
    out = {}
    for case in WORKLOAD_CASES["sweep"]:
        entries = results.get(case, {})
        if {"scratchlm", other} <= set(entries):
            c = fw.CASES[case]
            out[c["B"], c["H"]] = throughput(entries["scratchlm"]) / throughput(entries[other])
    return out


def sweep_table(results, roof):
    """Rows B, columns H: scratchlm ms/step, its speed-up over PyTorch and Keras, and its distance to the
    roofline (ms/step over the time at the peak sgemm rate)."""
    torch, keras = sweep_speedups(results, "torch"), sweep_speedups(results, "keras")
    lines = ["| B \\ H | " + " | ".join(str(H) for H in fw.SWEEP_H) + " |", "|---:|" + "---:|" * len(fw.SWEEP_H)]
    for B in fw.SWEEP_B:
        cells = []
        for H in fw.SWEEP_H:
            case = f"sweep-b{B}-h{H}"
            ours = results.get(case, {}).get("scratchlm")
            if ours is None:
                cells.append("–")
                continue
            parts = [f"{ours['ms_per_step']:.1f} ms"]
            parts += [f"{name} {d[B, H]:.2f}x" for name, d in (("torch", torch), ("keras", keras)) if (B, H) in d]
            if case in roof:
                parts.append(f"roof {ours['ms_per_step'] / roof[case]['bound_ms_at_peak']:.2f}x")
            cells.append("<br>".join(parts))
        lines.append(f"| {B} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sweep_heatmap(results, path):
    """A heat map of scratchlm's speed-up over PyTorch (and, where Keras ran, over Keras) per (B, H)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        (name, d)
        for name, d in (("PyTorch", sweep_speedups(results, "torch")), ("Keras", sweep_speedups(results, "keras")))
        if d
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (name, d) in zip(axes[0], panels, strict=False):
        grid = np.array([[d.get((B, H), np.nan) for H in fw.SWEEP_H] for B in fw.SWEEP_B])
        image = ax.imshow(grid, cmap="RdYlGn", vmin=0.5, vmax=2.5, origin="lower", aspect="auto")
        for i in range(len(fw.SWEEP_B)):
            for j in range(len(fw.SWEEP_H)):
                if not np.isnan(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=9)
        ax.set_xticks(range(len(fw.SWEEP_H)), [str(H) for H in fw.SWEEP_H])
        ax.set_yticks(range(len(fw.SWEEP_B)), [str(B) for B in fw.SWEEP_B])
        ax.set_xlabel("hidden units H")
        ax.set_ylabel("batch B")
        ax.set_title(f"scratchlm speed-up over {name}")
        fig.colorbar(image, ax=ax)
    fig.suptitle("one training step: Embedding 64 -> LSTM H -> Dense 96, T=100, Adam, float32")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def have_gpu():
    try:
        from scratchlm import BackendUnavailable, get_backend

        get_backend("cupy")
        return True
    except BackendUnavailable:
        return False


def versions():
    found = {"python": platform.python_version()}
    for dist in ("numpy", "numba", "scratchlm", "torch", "tensorflow-cpu", "tensorflow", "keras"):
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    found.update(gpu_versions())
    blas = np.show_config(mode="dicts").get("Build Dependencies", {}).get("blas", {})
    found["blas"] = f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    return found


def gpu_versions():
    """The GPU, its driver and the CUDA, CuPy and PyTorch builds that run the gpu cases ({} without CuPy)."""
    if not have_gpu():
        return {}
    import cupy

    runtime = cupy.cuda.runtime
    found = {
        "gpu": runtime.getDeviceProperties(0)["name"].decode(),
        "cupy": cupy.__version__,
        "cuda_driver": runtime.driverGetVersion(),
        "cuda_runtime": runtime.runtimeGetVersion(),
    }
    if importlib.util.find_spec("torch") is not None:
        import torch

        found.update(torch_cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    return found


def machine():
    model = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": model, "cores": os.cpu_count(), "platform": platform.platform(), "load_average": os.getloadavg()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--workloads",
        default="book,s2s,gen,gpu",
        help="comma-separated: book, s2s, gen, gpu, gru-book, gru-s2s, transformer, transformer-gen, sweep",
    )
    parser.add_argument("--frameworks", default=",".join(FRAMEWORKS), help="comma-separated: " + ", ".join(FRAMEWORKS))
    parser.add_argument("--repeat", type=int, default=5, help="rounds per workload (default 5)")
    parser.add_argument("--json", help="write all results, raw rounds included, to this file")
    parser.add_argument("--sweep-png", help="with the sweep: draw the speed-ups as a heat map into this PNG file")
    parser.add_argument("--no-memory", action="store_true", help="time only: no memory rounds (each is a new worker)")
    parser.add_argument("--worker", nargs=2, metavar=("FRAMEWORK", "CASE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(*args.worker)
        return 0

    unknown = [w for w in args.workloads.split(",") if w not in WORKLOAD_CASES and w not in fw.CASES]
    unknown += [f for f in args.frameworks.split(",") if f not in FRAMEWORKS]
    if unknown:
        parser.error(f"unknown workloads or frameworks: {', '.join(unknown)}")
    cases = [c for w in args.workloads.split(",") for c in WORKLOAD_CASES.get(w, [w])]  # a workload or one case
    on_gpu = [c for c in cases if fw.CASES[c].get("gpu")]
    if on_gpu and not have_gpu():
        cases = [c for c in cases if c not in on_gpu]
        print(f"# {', '.join(on_gpu)}: no CuPy with a CUDA GPU here, left out")
    names = [f for f in args.frameworks.split(",") if importlib.util.find_spec(fw.MODULES[f]) is not None]
    skipped = sorted(set(args.frameworks.split(",")) - set(names))
    report = {
        "machine": machine(),
        "versions": versions(),
        "threads": fw.THREADS,
        "repeat": args.repeat,
        "units_per_round": {c: ROUND[c] for c in cases},
        "skipped": skipped,
    }
    print(
        f"# {report['machine']['cpu']}, {report['machine']['cores']} cores, load average "
        f"{report['machine']['load_average'][0]:.2f} at the start" + (f"; not installed: {skipped}" if skipped else "")
    )
    report["roofline"] = roofline(cases)
    results = {}
    for case in cases:
        allowed = fw.CASES[case].get("frameworks", fw.DEFAULT_FRAMEWORKS)
        here = [n for n in names if n in allowed and not (fw.CASES[case].get("gpu") and n == "keras")]
        print(f"# {case}: {', '.join(here)} x {args.repeat} rounds", flush=True)
        results[case] = summarise(
            case,
            *run_case(
                case, here, args.repeat, memory_rounds=not args.no_memory and case not in WORKLOAD_CASES["sweep"]
            ),
        )
    report["results"] = results
    report["load_average_after"] = os.getloadavg()

    print()
    named = {case: entries for case, entries in results.items() if case not in WORKLOAD_CASES["sweep"]}
    if named:
        print(table(named))
    if len(named) < len(results):
        print("sweep: scratchlm ms/step, speed-ups (tokens/s) and ms/step over the time at the peak sgemm rate")
        print(sweep_table(results, report["roofline"]))
        for other, goal in (("torch", 1.25), ("keras", 1.6)):
            d = sweep_speedups(results, other)
            if d:
                missed = sorted(cell for cell, x in d.items() if x < goal)
                print(
                    f"target sweep: every cell >= {goal}x {other}: {len(d) - len(missed)} of {len(d)} met"
                    + (f"; missed (B, H): {missed}" if missed else "")
                )
        if args.sweep_png:
            sweep_heatmap(results, args.sweep_png)
            print(f"heat map: {args.sweep_png}")
    print()
    roof = report["roofline"]
    for case in named:
        if case in roof and "scratchlm" in results[case] and not fw.CASES[case].get("gpu"):
            r, ms = roof[case], results[case]["scratchlm"]["ms_per_step"]
            print(
                f"roofline {case}: {r['gflop_per_step']:.2f} GFLOP/step; at the peak sgemm rate "
                f"({roof['peak_sgemm_gflops']:.0f} GFLOP/s) {r['bound_ms_at_peak']:.1f} ms; the same GEMMs at their "
                f"shapes {r['gemm_ms_at_shapes']:.1f} ms; scratchlm {ms:.1f} ms = "
                f"{ms / r['bound_ms_at_peak']:.2f}x / {ms / r['gemm_ms_at_shapes']:.2f}x of those"
            )
    report["targets"] = []
    for case, ours, other, goal in TARGETS:
        entries = results.get(case, {})
        if ours in entries and other in entries:
            got = throughput(entries[ours]) / throughput(entries[other])
            report["targets"].append(
                {"case": case, "ours": ours, "versus": other, "goal": goal, "speed_up": got, "met": got >= goal}
            )
            who = "" if ours == "scratchlm" else f" ({ours})"
            print(f"target {case}{who}: >= {goal}x {other}: {got:.2f}x {'met' if got >= goal else 'MISSED'}")
    for lstm, gru in (("book", "gru-book"), ("s2s", "gru-s2s")):  # issue 12: the GRU as far ahead as the LSTM
        for other in ("keras", "torch"):
            got = {
                case: throughput(results[case]["scratchlm"]) / throughput(results[case][other])
                for case in (lstm, gru)
                if {"scratchlm", other} <= set(results.get(case, {}))
            }
            if gru in got:
                versus = (
                    f"; {lstm} (LSTM) {got[lstm]:.2f}x: {'met' if got[gru] >= got[lstm] else 'MISSED'}"
                    if lstm in got
                    else " (run the LSTM workload in the same run to compare)"
                )
                print(f"target {gru}: speed-up over {other} at least the LSTM's: {got[gru]:.2f}x{versus}")
    if "gen-b64" in results and "scratchlm" in results["gen-b64"]:
        got = results["gen-b64"]["scratchlm"]["chars_per_s"]
        print(f"target gen-b64: >= 50,000 chars/s: {got:,.0f} {'met' if got >= 50000 else 'MISSED'}")
    if "s2s" in results and {"scratchlm", "torch"} <= set(results["s2s"]):
        ours, theirs = results["s2s"]["scratchlm"]["step_peak_mb"], results["s2s"]["torch"]["step_peak_mb"]
        print(
            f"target s2s step memory <= torch: {ours:.0f} MB vs {theirs:.0f} MB {'met' if ours <= theirs else 'MISSED'}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
