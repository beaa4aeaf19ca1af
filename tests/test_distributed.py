"""Data-parallel training under ``mpiexec -n 2`` equals one process on the global batch (tests/helpers/mpi_helper.py).

These tests start mpiexec in a subprocess (with timeouts: a hang fails them); they are skipped when
mpi4py or mpiexec is missing (``pip install -e ".[test,mpi]"`` installs both). Besides the Trainer
itself: `scratchlm train` and the Nietzsche example under mpiexec (equal to one process), mistakes
under mpiexec (one line from rank 0, exit status 2), and, marked gpu, the NCCL all-reduce.
"""

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scratchlm import ScratchLMError, distributed
from scratchlm.cli import main as cli_main
from scratchlm.train import load_checkpoint, read_metrics

ROOT = Path(__file__).resolve().parents[1]
HELPER = Path(__file__).parent / "helpers" / "mpi_helper.py"
MPIEXEC = shutil.which("mpiexec")
LAUNCHER_VARS = ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "MPI_LOCALNRANKS", "PMIX_RANK")
needs_mpi = pytest.mark.skipif(
    importlib.util.find_spec("mpi4py") is None or MPIEXEC is None,
    reason="needs mpi4py and mpiexec: pip install 'scratchlm[mpi]'",
)
TIMEOUT = 120


def _env():
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    env.update(
        OPENBLAS_NUM_THREADS="1",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        SCRATCHLM_MPI_GRACE="5",
        PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    return env


def run(args, ranks, cwd):
    """Run the helper alone (ranks 0) or under mpiexec -n ranks -> CompletedProcess."""
    cmd = [sys.executable, str(HELPER), *args]
    if ranks:
        cmd = [MPIEXEC, "-n", str(ranks), *cmd]
    return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)


def ok(result):
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def rel(a, b):
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / max(np.linalg.norm(np.asarray(a)), 1e-300))


def compare(ref, got, tol, start=0):
    a, b = np.load(ref), np.load(got)
    assert len(b["losses"]) == len(a["losses"]) - start
    assert rel(a["losses"][start:], b["losses"]) <= tol
    params = [k for k in a.files if k.startswith("param/")]
    assert params and sorted(params) == sorted(k for k in b.files if k.startswith("param/"))
    for k in params:
        assert rel(a[k], b[k]) <= tol, k


@pytest.mark.slow
@needs_mpi
@pytest.mark.parametrize("kind", ["streams", "windows", "padded"])
@pytest.mark.parametrize("dtype,tol", [("float64", 1e-10), ("float32", 1e-5)])
def test_two_ranks_take_the_single_process_steps(tmp_path, kind, dtype, tol):
    # Rank 1 is seeded differently (the Trainer broadcasts rank 0's weights); 20 steps cross epoch
    # ends (validation) and, for windows and padded, last short batches (padded: 1 row for 2 ranks).
    common = ["--kind", kind, "--dtype", dtype, "--steps", "20"]
    ok(run(common + ["--out", "ref.npz"], 0, tmp_path))
    ok(run(common + ["--out", "mpi.npz", "--seed-by-rank"], 2, tmp_path))
    compare(tmp_path / "ref.npz", tmp_path / "mpi.npz", tol)
    a, b = np.load(tmp_path / "ref.npz"), np.load(tmp_path / "mpi.npz")
    assert len(a["val"]) >= 2 and rel(a["val"], b["val"]) <= tol


@pytest.mark.slow
@needs_mpi
@pytest.mark.parametrize("kind", ["streams", "windows"])
def test_dropout_masks_are_the_single_process_ones(tmp_path, kind):
    common = ["--kind", kind, "--steps", "20", "--dropout", "0.3"]
    ok(run(common + ["--out", "ref.npz"], 0, tmp_path))
    ok(run(common + ["--out", "mpi.npz", "--seed-by-rank"], 2, tmp_path))
    compare(tmp_path / "ref.npz", tmp_path / "mpi.npz", 1e-10)


@pytest.mark.slow
@needs_mpi
@pytest.mark.parametrize("kind", ["streams", "padded"])
def test_a_two_rank_checkpoint_resumes_on_one_rank(tmp_path, kind):
    # Streams stop mid-epoch with carried state: the checkpoint holds both ranks' rows of it.
    common = ["--kind", kind, "--dropout", "0.2"]
    ok(run(common + ["--steps", "20", "--out", "ref.npz"], 0, tmp_path))
    result = ok(run(common + ["--steps", "10", "--run-dir", "run", "--seed-by-rank"], 2, tmp_path))
    assert result.stderr.strip() == ""
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt.metadata["train"]["step"] == 10
    assert not list((tmp_path / "run").glob(".lock"))
    ok(run(common + ["--steps", "20", "--run-dir", "run", "--resume", "--out", "res.npz"], 0, tmp_path))
    compare(tmp_path / "ref.npz", tmp_path / "res.npz", 1e-10, start=10)


def _error_lines(result):
    return [line for line in result.stderr.splitlines() if ": error" in line]


@pytest.mark.slow
@needs_mpi
@pytest.mark.parametrize("rank", [0, 1])
def test_a_rank_that_raises_ends_every_rank(tmp_path, rank):
    result = run(["--run-dir", "run", "--fail-rank", str(rank), "--fail-step", "7"], 2, tmp_path)
    assert result.returncode != 0
    lines = _error_lines(result)
    assert len(lines) == 1 and "injected failure at step 7" in lines[0], result.stderr
    assert load_checkpoint(tmp_path / "run").metadata["train"]["step"] == 5  # the last one, intact


@needs_mpi
def test_a_killed_rank_ends_every_rank(tmp_path):
    result = run(["--run-dir", "run", "--fail-rank", "1", "--fail-step", "7", "--kill"], 2, tmp_path)
    assert result.returncode != 0
    assert load_checkpoint(tmp_path / "run").metadata["train"]["step"] == 5


@needs_mpi
def test_a_rank_with_other_data_is_refused(tmp_path):
    result = run(["--run-dir", "run", "--bad-input-rank", "1"], 2, tmp_path)
    assert result.returncode == 2
    # Found where every rank waits at the start of training: one line from rank 0, no MPI abort.
    assert (
        result.stderr.startswith("mpi_helper: error (rank 1 of 2): rank 1's training data differ from rank 0's")
        and result.stderr.count("\n") == 1
    ), result.stderr
    assert not (tmp_path / "run" / "last.npz").exists()


@needs_mpi
def test_streams_whose_batch_does_not_divide_are_refused(tmp_path):
    script = (
        "import sys\nfrom scratchlm import LanguageModel, batching, optim\n"
        "from scratchlm.train import Trainer, run_script\nimport numpy\nids = numpy.arange(400) % 7\n"
        "sys.exit(run_script('odd', 'run', lambda: Trainer(LanguageModel(7, hidden_sizes=(4,), stateful=True),"
        " optim.Adam(), batching.Streams(ids, batch_size=3, seq_len=5), run_dir='run').fit()))\n"
    )
    result = subprocess.run(
        [MPIEXEC, "-n", "2", sys.executable, "-c", script],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 2
    lines = _error_lines(result)
    assert len(lines) == 1 and "batch size 3 does not divide among 2 MPI ranks" in lines[0], result.stderr


def test_one_process_imports_no_mpi(tmp_path):
    script = (
        "import sys\nfrom scratchlm import LanguageModel, batching, distributed, optim\n"
        "from scratchlm.train import Trainer\nimport numpy\nids = numpy.arange(400) % 7\n"
        "t = Trainer(LanguageModel(7, hidden_sizes=(4,), stateful=True), optim.Adam(),"
        " batching.Streams(ids, batch_size=3, seq_len=5), run_dir='run', max_steps=3, progress=False)\n"
        "t.fit()\nw = distributed.world()\n"
        "assert (w.rank, w.size, w.is_root, w.parallel) == (0, 1, True, False), w\n"
        "assert 'mpi4py' not in sys.modules, 'mpi4py was imported'\nprint('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=TIMEOUT
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stdout + result.stderr


@pytest.mark.parametrize(
    "env,size",
    [
        ({}, 1),
        ({"PMI_SIZE": "4", "PMI_RANK": "2"}, 4),
        ({"OMPI_COMM_WORLD_SIZE": "3"}, 3),
        ({"MPI_LOCALNRANKS": "2"}, 2),
        ({"PMIX_RANK": "0", "SLURM_STEP_NUM_TASKS": "8"}, 8),
        ({"SLURM_NTASKS": "8"}, 1),
    ],
)
def test_the_launcher_is_recognised_by_its_environment(monkeypatch, env, size):
    for name in LAUNCHER_VARS + ("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert distributed.launcher_size() == size


@pytest.mark.parametrize(
    "env,rank",
    [({}, 0), ({"PMI_RANK": "3", "PMI_SIZE": "4"}, 3), ({"OMPI_COMM_WORLD_RANK": "1"}, 1), ({"PMIX_RANK": "2"}, 2)],
)
def test_the_launcher_rank_is_read_from_its_environment(monkeypatch, env, rank):
    for name in LAUNCHER_VARS + ("OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert distributed.launcher_rank() == rank


def test_a_launcher_without_mpi4py_says_how_to_install_it(monkeypatch):
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setattr(distributed, "_world", None)
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py raises ImportError
    with pytest.raises(ScratchLMError, match=r"mpi4py is not installed: pip install 'scratchlm\[mpi\]'"):
        distributed.world()
    monkeypatch.setattr(distributed, "_world", None)


def test_shards_cover_the_batch():
    for rows in (1, 5, 64):
        for size in (1, 2, 3, 4):
            shards = [distributed.World(r, size).shard(rows) for r in range(size)]
            assert shards[0][0] == 0 and shards[-1][1] == rows
            assert all(a[1] == b[0] for a, b in zip(shards, shards[1:], strict=False))


# -- the scratchlm command and the examples under mpiexec ---------------------------------------------

TEXT = (
    "It was the best of times, it was the worst of times; it was the age of wisdom, it was the age of foolishness.\n"
) * 40
# 4 streams of 16 tokens: 65 steps an epoch; float64 and dropout, so that equality is exact and the
# dropout generator's broadcast matters; a checkpoint every 20 steps.
CLI_TINY = [
    "--hidden",
    "16",
    "--embedding-dim",
    "8",
    "--batch-size",
    "4",
    "--seq-len",
    "16",
    "--dtype",
    "float64",
    "--dropout",
    "0.2",
    "--checkpoint-every",
    "20",
    "--sample-length",
    "0",
    "--no-progress",
]


def run_cli(args, ranks, cwd):
    """`python -m scratchlm args...` under mpiexec -n ranks -> CompletedProcess."""
    cmd = [MPIEXEC, "-n", str(ranks), sys.executable, "-m", "scratchlm", *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)


def cli_alone(capsys, *args):
    """`scratchlm args...` in this process -> (exit code, stdout, stderr)."""
    code = cli_main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _learnt(records):
    """The step and epoch records of metrics.jsonl without their times."""
    keep = ("event", "step", "epoch", "loss", "val_loss", "grad_norm")
    return [{k: r[k] for k in keep if k in r} for r in records if r["event"] in ("step", "epoch")]


def _same_run(a, b, tol=1e-10):
    """Two run directories hold the same training: equal weights, optimizer slots, position and losses."""
    ca, cb = load_checkpoint(a), load_checkpoint(b)
    for name, p in ca.model.params.items():
        assert rel(p, cb.model.params[name]) <= tol, name
    for name, s in ca.optimizer.slots.items():
        assert rel(s, cb.optimizer.slots[name]) <= tol, name
    pa, pb = ca.metadata["train"], cb.metadata["train"]
    assert (pa["epoch"], pa["batch"], pa["step"]) == (pb["epoch"], pb["batch"], pb["step"])
    assert abs(pa["epoch_loss"] - pb["epoch_loss"]) <= tol * abs(pa["epoch_loss"])
    ra, rb = _learnt(read_metrics(a / "metrics.jsonl")), _learnt(read_metrics(b / "metrics.jsonl"))
    assert [(r["event"], r["step"]) for r in ra] == [(r["event"], r["step"]) for r in rb]
    for x, y in zip(ra, rb, strict=False):
        for k in ("loss", "val_loss", "grad_norm"):
            if k in x:
                assert abs(x[k] - y[k]) <= tol * abs(x[k]), (k, x, y)


def _ran_once(result, *lines):
    """Exit status 0, nothing on stderr, and each of ``lines`` (starts of lines) printed exactly once."""
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr.strip() == "", result.stderr
    out = result.stdout.splitlines()
    for start in lines:
        assert sum(line.startswith(start) for line in out) == 1, (start, result.stdout)


@pytest.mark.slow
@needs_mpi
def test_scratchlm_train_under_mpiexec_takes_the_single_process_steps(tmp_path, capsys):
    # A: 40 steps on 2 ranks, resumed alone to 70; B: 40 steps alone, resumed on 2 ranks to 70; ref: 70 steps
    # alone. 70 steps cross the end of the first epoch (65 steps: validation, an epoch record) and the step
    # record of step 50; the 40-step checkpoints stop mid-epoch with carried state.
    corpus = tmp_path / "dickens.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    a, b, ref = tmp_path / "a", tmp_path / "b", tmp_path / "ref"
    result = run_cli(["train", corpus, "--run-dir", a, "--max-steps", 40, *CLI_TINY], 2, tmp_path)
    _ran_once(result, "RecurrentLM(Embedding(25, 8) -> LSTM[16] -> Dense(25), numpy, float64)", "done: ")
    assert sorted(p.name for p in a.iterdir()) == ["last.npz", "metrics.jsonl"]  # no lock or temporaries left
    records = read_metrics(a / "metrics.jsonl")
    assert [r["event"] for r in records] == ["start"]  # one writer: rank 0
    assert load_checkpoint(a).metadata["train"]["step"] == 40

    code, _, err = cli_alone(capsys, "train", corpus, "--run-dir", b, "--max-steps", 40, *CLI_TINY)
    assert code == 0, err
    _same_run(a, b)

    code, _, err = cli_alone(capsys, "train", "--resume", a, "--max-steps", 70)
    assert code == 0, err
    result = run_cli(["train", "--resume", b, "--max-steps", 70], 2, tmp_path)
    _ran_once(result, f"resuming {b / 'last.npz'} at epoch 1, step 40", "epoch 1/10  loss", "done: ")
    code, _, err = cli_alone(capsys, "train", corpus, "--run-dir", ref, "--max-steps", 70, *CLI_TINY)
    assert code == 0, err
    for run_dir in (a, b):
        _same_run(ref, run_dir)
        events = [r["event"] for r in read_metrics(run_dir / "metrics.jsonl")]
        assert events == ["start", "resume", "step", "epoch"], events
    assert load_checkpoint(b).metadata["train"]["history"][0]["val_loss"] is not None


@pytest.mark.slow
@needs_mpi
def test_the_nietzsche_example_under_mpiexec(tmp_path):
    # The book's setup on the bundled corpus: 128-row windows, 64 per rank, float32.
    runs = {}
    for ranks in (0, 2):
        cmd = [
            sys.executable,
            str(ROOT / "examples" / "nietzsche_char.py"),
            "--max-steps",
            "5",
            "--run-dir",
            str(tmp_path / f"n{ranks}"),
        ]
        cmd = [MPIEXEC, "-n", str(ranks), *cmd] if ranks else cmd
        runs[ranks] = subprocess.run(
            cmd,
            cwd=tmp_path,
            env={**_env(), "SCRATCHLM_CACHE": str(tmp_path / "cache")},
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        _ran_once(
            runs[ranks],
            "RecurrentLM(one-hot -> LSTM[128] -> Dense(60), numpy, float32)",
            "--- samples at step 5 (epoch 1)",
            "----- temperature 0.2",
            "----- temperature 1.2",
        )
    one, two = load_checkpoint(tmp_path / "n0"), load_checkpoint(tmp_path / "n2")
    assert two.metadata["train"]["step"] == 5
    for name, p in one.model.params.items():
        assert rel(p, two.model.params[name]) <= 1e-5, name
    assert (
        abs(one.metadata["train"]["epoch_loss"] - two.metadata["train"]["epoch_loss"])
        <= 1e-5 * one.metadata["train"]["epoch_loss"]
    )


@needs_mpi
def test_sample_and_info_under_mpiexec_print_once(tmp_path, capsys, monkeypatch):
    # One process, rank 0, does the work and prints; the other ranks do nothing (and start no MPI).
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dickens.txt").write_text(TEXT, encoding="utf-8")
    code, _, err = cli_alone(capsys, "train", "dickens.txt", "--run-dir", "run", "--max-steps", 3, *CLI_TINY)
    assert code == 0, err
    for argv in (["sample", "run", "--length", "40", "--temperature", "0.5", "1"], ["info", "run"]):
        code, alone, err = cli_alone(capsys, *argv)
        assert code == 0 and alone, err
        result = run_cli(argv, 2, tmp_path)
        assert (result.returncode, result.stdout, result.stderr) == (0, alone, ""), result.stdout + result.stderr
    _fails_once(run_cli(["sample", "nowhere"], 2, tmp_path), "scratchlm sample: error: ")


def _fails_once(result, *words):
    """Exit status 2, exactly one line on stderr (no traceback, no MPI abort notice), nothing on stdout."""
    err = result.stderr
    assert result.returncode == 2, result.stdout + err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert "Traceback" not in err and "Abort" not in err and result.stdout == "", result.stdout + err
    for w in words:
        assert w in err, err
    return err


@needs_mpi
@pytest.mark.parametrize(
    "argv, words",
    [
        (["train", "dickens.txt", "--batch-size", "0"], ["scratchlm train: error: argument --batch-size: expected"]),
        (["train", "dickens.txt", "--temperature", "-1"], ["scratchlm train: error: ", "temperature"]),
        (["train", "--resume", "nowhere"], ["scratchlm train: error: there is no run directory nowhere"]),
        (["train", "missing.txt"], ["scratchlm train: error: no such file: missing.txt"]),
        (
            ["train", "dickens.txt", "--batch-size", "3"],
            ["scratchlm train: error: the training streams' batch size 3 does not divide among 2 MPI ranks"],
        ),
        (["train", "dickens.txt", "--prime", "Zq", "--sample-length", "5"], ["the samples' prime 'Zq' holds 'Z', 'q'"]),
    ],
)
def test_cli_mistakes_under_mpiexec_are_one_line_from_rank_0(tmp_path, argv, words):
    (tmp_path / "dickens.txt").write_text(TEXT, encoding="utf-8")
    if "--resume" not in argv:
        argv = [*argv[:2], "--run-dir", "run", *CLI_TINY, *argv[2:]]
    _fails_once(run_cli(argv, 2, tmp_path), *words)
    assert not (tmp_path / "run").exists()  # the run directory a failed start made is gone


@needs_mpi
def test_a_run_directory_in_use_or_taken_under_mpiexec(tmp_path):
    import fcntl

    (tmp_path / "dickens.txt").write_text(TEXT, encoding="utf-8")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "last.npz").write_bytes(b"a run's checkpoint")
    argv = ["train", "dickens.txt", *CLI_TINY, "--run-dir"]
    _fails_once(run_cli(argv + ["taken"], 2, tmp_path), "taken already holds a run (last.npz)", "--resume taken")
    assert (tmp_path / "taken" / "last.npz").read_bytes() == b"a run's checkpoint"
    (tmp_path / "busy").mkdir()
    with open(tmp_path / "busy" / ".lock", "w") as held:  # another run holds the lock
        held.write("4242 elsewhere\n")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX)
        _fails_once(run_cli(argv + ["busy"], 2, tmp_path), "busy is in use by another run (process 4242 on elsewhere)")


@needs_mpi
def test_a_mistake_only_rank_1_meets_is_reported_once_by_rank_0(tmp_path):
    # Rank 1 starts in a folder without the corpus (mpiexec's MPMD form, one working directory per rank).
    (tmp_path / "here").mkdir()
    (tmp_path / "there").mkdir()
    (tmp_path / "here" / "dickens.txt").write_text(TEXT, encoding="utf-8")
    python = [sys.executable, "-m", "scratchlm", "train", "dickens.txt", "--run-dir", "run", *CLI_TINY]
    cmd = [
        MPIEXEC,
        "-n",
        "1",
        "-wdir",
        str(tmp_path / "here"),
        *python,
        ":",
        "-n",
        "1",
        "-wdir",
        str(tmp_path / "there"),
        *python,
    ]
    result = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    _fails_once(result, "scratchlm train: error (rank 1 of 2): no such file: dickens.txt")
    assert not (tmp_path / "here" / "run").exists()


@needs_mpi
def test_ranks_with_other_dtypes_are_refused_together(tmp_path):
    helper = [sys.executable, str(HELPER), "--run-dir", "run", "--dtype"]
    cmd = [MPIEXEC, "-n", "1", *helper, "float64", ":", "-n", "1", *helper, "float32"]
    result = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 2
    assert result.stderr == (
        "mpi_helper: error (rank 1 of 2): rank 1 trains with the numpy backend in float32, "
        "rank 0 with numpy in float64: every rank must use the same backend and dtype (name "
        "the backend rather than 'auto' when the machines differ)\n"
    ), result.stderr


# -- GPUs: NCCL ---------------------------------------------------------------------------------------


def _gpus():
    """How many CUDA GPUs CuPy sees here (0 without CuPy or a GPU)."""
    if importlib.util.find_spec("cupy") is None:
        return 0
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount()
    except Exception:
        return 0


@pytest.mark.gpu
@needs_mpi
@pytest.mark.skipif(importlib.util.find_spec("cupy") is None, reason="needs CuPy and a GPU")
def test_nccl_reduce_step_on_one_gpu(tmp_path):
    if _gpus() < 1:
        pytest.skip("needs a CUDA GPU")
    result = subprocess.run(
        [sys.executable, str(Path(__file__).parent / "helpers" / "nccl_helper.py")],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    if result.returncode == 3:
        pytest.skip("this CuPy has no NCCL")
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stdout + result.stderr


@pytest.mark.gpu
@needs_mpi
@pytest.mark.skipif(importlib.util.find_spec("cupy") is None, reason="needs CuPy and a GPU")
@pytest.mark.parametrize("kind", ["streams", "padded"])
def test_two_gpus_take_the_single_gpu_steps(tmp_path, kind):
    if _gpus() < 2:
        pytest.skip("needs two CUDA GPUs (one per rank)")
    common = ["--kind", kind, "--dtype", "float64", "--steps", "20", "--backend", "cupy"]
    ok(run(common + ["--out", "ref.npz"], 0, tmp_path))
    ok(run(common + ["--out", "mpi.npz", "--seed-by-rank"], 2, tmp_path))
    compare(tmp_path / "ref.npz", tmp_path / "mpi.npz", 1e-10)
    assert bool(np.load(tmp_path / "mpi.npz")["nccl"])
