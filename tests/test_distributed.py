"""Data-parallel training under ``mpiexec -n 2`` equals one process on the global batch (tests/mpi_helper.py).

These tests start mpiexec in a subprocess (with timeouts: a hang fails them); they are skipped when
mpi4py or mpiexec is missing (``pip install -e ".[test,mpi]"`` installs both).
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
from scratchlm.train import load_checkpoint

HELPER = Path(__file__).with_name("mpi_helper.py")
MPIEXEC = shutil.which("mpiexec")
LAUNCHER_VARS = ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "MPI_LOCALNRANKS",
                 "PMIX_RANK")
needs_mpi = pytest.mark.skipif(importlib.util.find_spec("mpi4py") is None or MPIEXEC is None,
                               reason="needs mpi4py and mpiexec: pip install 'scratchlm[mpi]'")
TIMEOUT = 120


def _env():
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", SCRATCHLM_MPI_GRACE="5")
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


@needs_mpi
@pytest.mark.parametrize("kind", ["streams", "windows"])
def test_dropout_masks_are_the_single_process_ones(tmp_path, kind):
    common = ["--kind", kind, "--steps", "20", "--dropout", "0.3"]
    ok(run(common + ["--out", "ref.npz"], 0, tmp_path))
    ok(run(common + ["--out", "mpi.npz", "--seed-by-rank"], 2, tmp_path))
    compare(tmp_path / "ref.npz", tmp_path / "mpi.npz", 1e-10)


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


@needs_mpi
@pytest.mark.parametrize("rank", [0, 1])
def test_a_rank_that_raises_ends_every_rank(tmp_path, rank):
    result = run(["--run-dir", "run", "--fail-rank", str(rank), "--fail-step", "7"], 2, tmp_path)
    assert result.returncode != 0
    lines = _error_lines(result)
    assert len(lines) == 1 and "injected failure at step 7" in lines[0], result.stderr
    assert load_checkpoint(tmp_path / "run").metadata["train"]["step"] == 5        # the last one, intact


@needs_mpi
def test_a_killed_rank_ends_every_rank(tmp_path):
    result = run(["--run-dir", "run", "--fail-rank", "1", "--fail-step", "7", "--kill"], 2, tmp_path)
    assert result.returncode != 0
    assert load_checkpoint(tmp_path / "run").metadata["train"]["step"] == 5


@needs_mpi
def test_a_rank_with_other_data_is_refused(tmp_path):
    result = run(["--run-dir", "run", "--bad-input-rank", "1"], 2, tmp_path)
    assert result.returncode == 2
    lines = _error_lines(result)
    assert len(lines) == 1 and "rank 1's training data differ from rank 0's" in lines[0], result.stderr
    assert not (tmp_path / "run" / "last.npz").exists()


@needs_mpi
def test_streams_whose_batch_does_not_divide_are_refused(tmp_path):
    script = ("import sys\nfrom scratchlm import LanguageModel, optim, data\n"
              "from scratchlm.train import Trainer, run_script\nimport numpy\nids = numpy.arange(400) % 7\n"
              "sys.exit(run_script('odd', 'run', lambda: Trainer(LanguageModel(7, hidden_sizes=(4,), stateful=True),"
              " optim.Adam(), data.Streams(ids, batch_size=3, seq_len=5), run_dir='run').fit()))\n")
    result = subprocess.run([MPIEXEC, "-n", "2", sys.executable, "-c", script], cwd=tmp_path, env=_env(),
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 2
    lines = _error_lines(result)
    assert len(lines) == 1 and "batch size 3 does not divide among 2 MPI ranks" in lines[0], result.stderr


def test_one_process_imports_no_mpi(tmp_path):
    script = ("import sys\nfrom scratchlm import LanguageModel, optim, data, distributed\n"
              "from scratchlm.train import Trainer\nimport numpy\nids = numpy.arange(400) % 7\n"
              "t = Trainer(LanguageModel(7, hidden_sizes=(4,), stateful=True), optim.Adam(),"
              " data.Streams(ids, batch_size=3, seq_len=5), run_dir='run', max_steps=3, progress=False)\n"
              "t.fit()\nw = distributed.world()\n"
              "assert (w.rank, w.size, w.is_root, w.parallel) == (0, 1, True, False), w\n"
              "assert 'mpi4py' not in sys.modules, 'mpi4py was imported'\nprint('ok')\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=_env(), capture_output=True,
                            text=True, timeout=TIMEOUT)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stdout + result.stderr


@pytest.mark.parametrize("env,size", [({}, 1), ({"PMI_SIZE": "4", "PMI_RANK": "2"}, 4),
                                      ({"OMPI_COMM_WORLD_SIZE": "3"}, 3), ({"MPI_LOCALNRANKS": "2"}, 2),
                                      ({"PMIX_RANK": "0", "SLURM_STEP_NUM_TASKS": "8"}, 8),
                                      ({"SLURM_NTASKS": "8"}, 1)])
def test_the_launcher_is_recognised_by_its_environment(monkeypatch, env, size):
    for name in LAUNCHER_VARS + ("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert distributed.launcher_size() == size


def test_a_launcher_without_mpi4py_says_how_to_install_it(monkeypatch):
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setattr(distributed, "_world", None)
    monkeypatch.setitem(sys.modules, "mpi4py", None)                  # import mpi4py raises ImportError
    with pytest.raises(ScratchLMError, match=r"mpi4py is not installed: pip install 'scratchlm\[mpi\]'"):
        distributed.world()
    monkeypatch.setattr(distributed, "_world", None)


def test_shards_cover_the_batch():
    for rows in (1, 5, 64):
        for size in (1, 2, 3, 4):
            shards = [distributed.World(r, size).shard(rows) for r in range(size)]
            assert shards[0][0] == 0 and shards[-1][1] == rows
            assert all(a[1] == b[0] for a, b in zip(shards, shards[1:]))
