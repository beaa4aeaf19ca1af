"""Running the ``scratchlm`` command in tests: in-process, judged for one-line failures, killed mid-run."""

import os
import signal
import subprocess
import time
from pathlib import Path

from scratchlm import models
from scratchlm.cli import main

ROOT = Path(__file__).resolve().parents[2]


def cli(capsys, *argv):
    """Run `scratchlm argv...` in-process -> (exit code, stdout, stderr)."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's own exits (--help, usage errors)
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def fails(result, *words):
    """Exit code 2, one line on stderr, no traceback, each of ``words`` in it; returns the line. ``result``: what
    :func:`cli` returns, or a CompletedProcess."""
    if isinstance(result, subprocess.CompletedProcess):
        code, err = result.returncode, result.stderr
    else:
        code, _, err = result
    assert code == 2, err
    assert err.count("\n") == 1 and err.endswith("\n") and "Traceback" not in err, err
    for w in words:
        assert w in err, err
    return err


def kill_9_after(command, run_dir, step, cwd):
    """Start ``command`` (a `scratchlm train` writing ``run_dir``), SIGKILL it once its last.npz is at ``step`` or
    later, and return the step of the last.npz it left."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    last = Path(run_dir) / "last.npz"
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300  # generous: a cold Numba cache compiles first
        while time.monotonic() < deadline and proc.poll() is None:
            if last.exists() and models.load(last).metadata["train"]["step"] >= step:
                break
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    stopped_at = models.load(last).metadata["train"]["step"]
    assert stopped_at >= step
    return stopped_at
