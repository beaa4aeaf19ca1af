"""Ctrl-C under ``mpiexec -n 2``: every rank stops at the same step, one line from rank 0, exit status 130.

Each try starts ``scratchlm train`` (or a script's Trainer, tests/helpers/mpi_helper.py) under mpiexec and sends
SIGINT at a random moment after rank 0 took the run directory's lock: during the setup, the start of
training, a step, validation, a checkpoint or the samples (an epoch takes a fraction of a second). The
signal goes to mpiexec (which forwards it to every rank, as a terminal's Ctrl-C does), to mpiexec's
process group, or to rank 1 alone. Every try must end within BOUND seconds with exit status 130, exactly
one line on stderr (rank 0's), its checkpoint loadable (at the step that line names), and no lock or
temporary file left.

The random delays are printed with every failure; SCRATCHLM_INTERRUPT_TRIES=20 runs each case 20 times.
"""

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_distributed import HELPER, MPIEXEC, TEXT, _env, needs_mpi

from scratchlm import cli
from scratchlm.train import load_checkpoint

BOUND = 10  # seconds from the signal to the end of mpiexec
START = 90  # seconds mpiexec may take to start the ranks and take the lock
TRIES = int(os.environ.get("SCRATCHLM_INTERRUPT_TRIES", "1"))
LSTM = [
    "--hidden",
    "16",
    "--embedding-dim",
    "8",
    "--batch-size",
    "4",
    "--seq-len",
    "16",
    "--checkpoint-every",
    "20",
    "--sample-length",
    "100",
]
TRANSFORMER = [
    "--model",
    "transformer",
    "--embedding-dim",
    "8",
    "--dense-dim",
    "16",
    "--heads",
    "2",
    "--seq-len",
    "16",
    "--batch-size",
    "4",
    "--checkpoint-every",
    "5",
    "--sample-length",
    "20",
]
needs_proc = pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the ranks in /proc (Linux)")


def _descendants(pid):
    """The process ids of ``pid``'s children, their children, ... (from /proc)."""
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):  # a process that just ended
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def _rank(pid, rank):
    """Whether process ``pid`` is MPI rank ``rank`` (its environment's PMI_RANK)."""
    try:
        return f"\0PMI_RANK={rank}\0" in "\0" + Path(f"/proc/{pid}/environ").read_text(errors="replace")
    except OSError:
        return False


def _send(proc, target):
    """SIGINT to mpiexec, to its process group, or to rank 1 alone."""
    if target == "mpiexec":
        proc.send_signal(signal.SIGINT)
    elif target == "group":
        os.killpg(proc.pid, signal.SIGINT)
    else:
        os.kill(next(p for p in _descendants(proc.pid) if _rank(p, 1)), signal.SIGINT)


def _end(proc):
    """End a run that did not stop: mpiexec, then whatever it left."""
    left = _descendants(proc.pid)
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def train(options):
    """The command line of a long `scratchlm train` run in the run directory "run" with ``options``."""
    return [
        sys.executable,
        "-m",
        "scratchlm",
        "train",
        "dickens.txt",
        "--run-dir",
        "run",
        "--epochs",
        "1000",
        "--no-progress",
        *options,
    ]


def interrupt(tmp_path, command, target, delay):
    """Start ``command`` (a run in tmp_path/run) under mpiexec -n 2, send SIGINT to ``target`` ``delay`` seconds
    after the run directory's lock appears -> (exit status, stdout, stderr, seconds from the signal to the end).

    None for the status when the run was still going BOUND seconds after the signal (it is ended then).
    """
    (tmp_path / "dickens.txt").write_text(TEXT, encoding="utf-8")
    with open(tmp_path / "out", "w+") as out, open(tmp_path / "err", "w+") as err:
        proc = subprocess.Popen(
            [MPIEXEC, "-n", "2", *command], cwd=tmp_path, env=_env(), stdout=out, stderr=err, start_new_session=True
        )
        try:
            deadline = time.monotonic() + START
            while not (tmp_path / "run" / ".lock").exists() and proc.poll() is None:
                assert time.monotonic() < deadline, "mpiexec did not start the run"
                time.sleep(0.01)
            time.sleep(delay)
            sent = time.monotonic()
            if proc.poll() is None:  # else its own status and output tell what went wrong
                _send(proc, target)
            try:
                code = proc.wait(timeout=BOUND)
            except subprocess.TimeoutExpired:
                code = None
            took = time.monotonic() - sent
        finally:
            if proc.poll() is None:
                _end(proc)
        out.seek(0)
        err.seek(0)
        return code, out.read(), err.read(), took


def _stopped_once(tmp_path, code, out, err, took, what, program="scratchlm train"):
    """Exit status 130 within BOUND seconds, one line on stderr from ``program``, a loadable checkpoint (at the
    step the line names, if it names one), no lock or temporary file left -> the checkpoint's step or None."""
    what = f"{what}, stopped after {took:.1f} s\n--- stderr:\n{err}--- stdout (end):\n{out[-2000:]}"
    assert code == 130, what
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"{program}: interrupted"), what
    run = tmp_path / "run"
    saved = load_checkpoint(run).metadata["train"]["step"] if (run / "last.npz").exists() else None
    named = re.search(r"\(step ([\d,]+)\)", lines[0])
    if named or "no checkpoint written" in lines[0]:
        assert saved == (int(named[1].replace(",", "")) if named else None), what
    left = sorted(p.name for p in run.iterdir()) if run.exists() else []
    assert not [name for name in left if name.startswith(".")], (left, what)  # no lock, no temporary
    return saved


CASES = [
    ("lstm", "mpiexec"),
    ("lstm", "mpiexec"),
    ("lstm", "group"),
    ("lstm", "group"),
    ("lstm", "rank 1"),
    ("transformer", "mpiexec"),
    ("transformer", "group"),
]


@pytest.mark.slow
@needs_mpi
@needs_proc
@pytest.mark.parametrize("attempt", range(TRIES))
@pytest.mark.parametrize("model,target", CASES)
def test_ctrl_c_stops_every_rank_at_once(tmp_path, model, target, attempt):
    delay = random.uniform(0, 2.5)
    code, out, err, took = interrupt(tmp_path, train(LSTM if model == "lstm" else TRANSFORMER), target, delay)
    _stopped_once(tmp_path, code, out, err, took, f"{model}, SIGINT to {target} {delay:.2f} s after the lock")


@pytest.mark.slow
@needs_mpi
@needs_proc
@pytest.mark.parametrize("attempt", range(TRIES))
def test_ctrl_c_stops_a_script_and_it_resumes(tmp_path, attempt):
    # A script's own Trainer (run_script): the ranks stop together too, and the run continues from its checkpoint.
    delay = random.uniform(0.5, 1.5)
    helper = [sys.executable, str(HELPER), "--run-dir", "run", "--epochs", "1000000"]
    code, out, err, took = interrupt(tmp_path, helper + ["--steps", "1000000000"], "mpiexec", delay)
    saved = _stopped_once(tmp_path, code, out, err, took, f"SIGINT {delay:.2f} s after the lock", "mpi_helper")
    if saved is not None:
        resumed = subprocess.run(
            [MPIEXEC, "-n", "2", *helper, "--resume", "--steps", str(saved + 3)],
            cwd=tmp_path,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=START,
        )
        assert resumed.returncode == 0 and resumed.stderr == "", resumed.stdout + resumed.stderr
        assert load_checkpoint(tmp_path / "run").metadata["train"]["step"] == saved + 3


@pytest.mark.slow
def test_ctrl_c_outside_training_is_one_line_and_status_130(monkeypatch, capsys):
    # What every rank does when the ranks agree on a Ctrl-C during the setup of `scratchlm train`.
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.info, "cmd_info", interrupted)
    assert cli.main(["info", "run"]) == 130
    assert capsys.readouterr().err == "\nscratchlm info: interrupted\n"
