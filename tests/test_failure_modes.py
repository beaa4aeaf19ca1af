"""What a user can rely on when things go wrong: one run per directory, nothing lost, one line per mistake.

CLI cases run `python -m scratchlm` in a subprocess and check the exit code,
that stderr is one line without a traceback, and that the run directory's files
are byte for byte what they were before.
"""

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from helpers.cli import fails
from test_train import TOKENIZER, make

from scratchlm import cli, models, rundir
from scratchlm.errors import ScratchLMError
from scratchlm.train import LAST, METRICS, Sampler, Trainer, TrainingDiverged, load_checkpoint, read_metrics

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
TEXT = "It was the best of times, it was the worst of times; it was the age of wisdom.\n" * 60
TINY = ["--hidden", "16", "--embedding-dim", "8", "--batch-size", "4", "--seq-len", "16", "--no-progress"]


def scratchlm(*argv, cwd=None, user=None, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "scratchlm", *map(str, argv)],
        cwd=cwd,
        env=ENV,
        user=user,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def files(directory):
    directory = Path(directory)
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    return path


@pytest.fixture
def trained(tmp_path, corpus):
    run_dir = tmp_path / "run"
    result = scratchlm("train", corpus, "--run-dir", run_dir, "--max-steps", 6, "--sample-length", 0, *TINY)
    assert result.returncode == 0, result.stderr
    return run_dir


# -- one run per run directory ---------------------------------------------------------


@pytest.mark.slow
def test_a_second_run_on_a_directory_in_use_is_refused_and_a_killed_run_holds_nobody_out(tmp_path, corpus):
    run_dir = tmp_path / "busy"
    first = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "scratchlm",
            "train",
            str(corpus),
            "--run-dir",
            str(run_dir),
            "--epochs",
            "100000",
            "--checkpoint-every",
            "5",
            "--sample-length",
            "0",
            *TINY,
        ],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while not (run_dir / LAST).exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (run_dir / rundir.LOCK).exists()
        fails(scratchlm("train", "--resume", run_dir, "--no-progress"), "in use by another run", f"process {first.pid}")
        fails(scratchlm("train", corpus, "--run-dir", run_dir, *TINY), "in use by another run", f"process {first.pid}")
        os.kill(first.pid, signal.SIGKILL)
    finally:
        first.wait()
    assert (run_dir / rundir.LOCK).exists()  # left behind by the killed run ...
    stale = run_dir / ".last.npz.x1y2z3.tmp"  # ... like a half-written checkpoint
    stale.write_bytes(b"half a checkpoint")
    step = models.load(run_dir / LAST).metadata["train"]["step"]
    resumed = scratchlm("train", "--resume", run_dir, "--max-steps", step + 2, "--no-progress")
    assert resumed.returncode == 0, resumed.stderr  # ... and blocks nobody
    assert not stale.exists() and not (run_dir / rundir.LOCK).exists()


def test_the_lock_is_reentrant_and_refuses_a_second_holder_in_another_process(tmp_path):
    with rundir.lock(tmp_path / "r"):
        with rundir.lock(tmp_path / "r"):
            pass
        assert (tmp_path / "r" / rundir.LOCK).exists()
        other = subprocess.run(
            [sys.executable, "-c", f"from scratchlm import rundir\nwith rundir.lock({str(tmp_path / 'r')!r}): pass"],
            env=ENV,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert other.returncode == 1 and f"process {os.getpid()}" in other.stderr
    assert not (tmp_path / "r").exists()  # created for nothing: removed again


# -- nothing lost ------------------------------------------------------------------------


def test_the_epoch_checkpoint_is_written_before_the_samples(tmp_path):
    model, opt, batches = make("windows")

    class Interrupting(Sampler):
        def __call__(self, trainer):
            raise KeyboardInterrupt

    trainer = Trainer(
        model,
        opt,
        batches,
        run_dir=tmp_path,
        epochs=3,
        checkpoint_every=None,
        progress=False,
        out=io.StringIO(),
        sampler=Interrupting(TOKENIZER),
    )
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    position = load_checkpoint(tmp_path).metadata["train"]
    assert (position["epoch"], position["batch"], position["step"]) == (1, 0, batches.num_batches)
    resumed = Trainer.resume(load_checkpoint(tmp_path), batches, epochs=1, progress=False, out=io.StringIO())
    assert resumed.done


def test_a_torn_metrics_line_does_not_swallow_the_next_record(tmp_path):
    model, opt, batches = make("windows")
    (tmp_path / METRICS).write_text('{"event": "step", "step": 50, "lo')  # a writer killed mid-line
    Trainer(model, opt, batches, run_dir=tmp_path, max_steps=2, progress=False, out=io.StringIO()).fit()
    assert [r["event"] for r in read_metrics(tmp_path / METRICS)] == ["start"]


def test_step_records_after_a_resume_average_the_same_window(tmp_path):
    def records(run_dir, kill_at=None):
        model, opt, batches = make("windows")

        def kill(trainer):
            if trainer.step == kill_at:
                raise KeyboardInterrupt

        trainer = Trainer(
            model,
            opt,
            batches,
            run_dir=run_dir,
            epochs=4,
            checkpoint_every=5,
            log_every=4,
            progress=False,
            out=io.StringIO(),
            on_step=kill,
        )
        with pytest.raises(KeyboardInterrupt) if kill_at else np.errstate():
            trainer.fit()
        if kill_at:
            Trainer.resume(
                load_checkpoint(run_dir),
                batches,
                run_dir=run_dir,
                epochs=4,
                checkpoint_every=5,
                log_every=4,
                progress=False,
                out=io.StringIO(),
            ).fit()
        steps = {}
        for r in read_metrics(run_dir / METRICS):
            if r["event"] == "step":
                steps[r["step"]] = r["loss"]  # repeated steps: the resumed run's record wins
        return steps

    assert records(tmp_path / "b", kill_at=7) == records(tmp_path / "a")


# -- messages that say what happened -----------------------------------------------------


def test_divergence_before_any_checkpoint_says_to_start_again(tmp_path):
    model, opt, batches = make("windows")
    model.loss_and_grads = lambda *a, **k: (float("nan"), {name: p * 0 for name, p in model.params.items()})
    trainer = Trainer(model, opt, batches, run_dir=tmp_path, epochs=1, progress=False, out=io.StringIO())
    with pytest.raises(TrainingDiverged, match="no checkpoint was written yet: start again") as err:
        trainer.fit()
    assert "resume from it" not in str(err.value)


def test_a_checkpoint_with_non_finite_weights_is_not_called_good(tmp_path):
    model, opt, batches = make("windows")
    Trainer(model, opt, batches, run_dir=tmp_path, max_steps=2, progress=False, out=io.StringIO()).fit()
    ckpt = load_checkpoint(tmp_path)
    ckpt.model.params["dense/bias"][0] = np.nan
    with pytest.raises(TrainingDiverged, match="not finite before training starts") as err:
        Trainer.resume(ckpt, batches, run_dir=tmp_path, epochs=2, progress=False, out=io.StringIO()).fit()
    assert "last good" not in str(err.value)


def test_divergence_in_the_cli_is_one_line_without_numpy_warnings(tmp_path, corpus):
    result = scratchlm(
        "train",
        corpus,
        "--run-dir",
        tmp_path / "r",
        "--lr",
        "1e30",
        "--clipnorm",
        0,
        "--optimizer",
        "sgd",
        "--sample-length",
        0,
        "--epochs",
        3,
        *TINY,
    )
    fails(result, "training stopped at step", "not finite" if "weights" in result.stderr else "loss is")
    assert "RuntimeWarning" not in result.stderr


def test_an_empty_validation_set_is_an_error_not_a_division_by_zero():
    model, opt, batches = make("padded")
    trainer = Trainer(model, opt, batches, progress=False, out=io.StringIO())

    class Empty:
        stateful, last_only, num_batches = False, False, 0

        def batches(self, epoch, start=0):
            return iter(())

    with pytest.raises(ScratchLMError, match="validation set holds no batch"):
        trainer.evaluate(Empty())


# -- one line and exit code 2 for every mistake --------------------------------------------


@pytest.mark.parametrize("command", ["train", "sample"])
def test_a_negative_seed(tmp_path, trained, corpus, command):
    before = files(trained)
    args = ["train", corpus, "--run-dir", tmp_path / "other"] if command == "train" else ["sample", trained]
    fails(scratchlm(*args, "--seed", -1), "--seed", ">= 0")
    assert files(trained) == before and not (tmp_path / "other").exists()


def test_resume_given_the_checkpoint_file_names_the_directory(trained):
    before = files(trained)
    fails(scratchlm("train", "--resume", trained / LAST), "run directory", f"--resume {trained}")
    fails(scratchlm("train", "--resume", trained.parent / "nothing-here"), "no run directory")
    assert files(trained) == before and not (trained.parent / "nothing-here").exists()


def test_a_run_directory_that_is_a_file_or_inside_one(tmp_path, corpus):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    fails(scratchlm("train", corpus, "--run-dir", afile, *TINY), "is a file")
    fails(scratchlm("train", corpus, "--run-dir", afile / "run", *TINY), "is a file")
    assert afile.read_text() == "mine"


def test_a_prime_of_unknown_characters_is_refused_before_training(tmp_path, corpus):
    fails(
        scratchlm("train", corpus, "--run-dir", tmp_path / "r", "--prime", "\u20ac\u00a7", *TINY),
        "prime",
        "'\u00a7'",
        "'\u20ac'",
    )
    assert not (tmp_path / "r").exists()


@pytest.mark.skipif(not hasattr(os, "geteuid"), reason="POSIX permissions")
def test_a_read_only_run_directory_is_refused_before_training(corpus, capsys):
    """As root the refused run runs as user 'nobody' (seteuid): root itself may write anywhere."""
    base = Path(tempfile.mkdtemp())
    try:
        os.chmod(base, 0o755)
        run_dir = base / "run"
        assert (
            cli.main(
                ["train", str(corpus), "--run-dir", str(run_dir), "--max-steps", "6", "--sample-length", "0", *TINY]
            )
            == 0
        )
        os.chmod(run_dir, 0o555)
        before = files(run_dir)
        capsys.readouterr()
        root = os.geteuid() == 0
        if root:
            os.seteuid(65534)
        try:
            code = cli.main(["train", "--resume", str(run_dir), "--max-steps", "60", "--no-progress"])
        finally:
            if root:
                os.seteuid(0)
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and "cannot write to the run directory" in err, err
        assert files(run_dir) == before
    finally:
        os.chmod(base / "run", 0o755)
        shutil.rmtree(base)


def test_metrics_stay_valid_json_lines(trained):
    for line in (trained / METRICS).read_text().splitlines():
        json.loads(line)


def test_sizes_that_cannot_fit_are_refused_before_training(tmp_path, corpus, trained):
    before = files(trained)
    fails(
        scratchlm("train", corpus, "--run-dir", tmp_path / "r", "--sample-length", 10**11, *TINY),
        "samples of 100,000,000,000 tokens",
        "--sample-length",
    )
    fails(scratchlm("train", corpus, "--run-dir", tmp_path / "r", *TINY, "--hidden", 100000), "would need about", "GiB")
    fails(scratchlm("sample", trained, "--length", 10**11), "would need about", "TiB")
    fails(scratchlm("train", "--resume", trained, "--sample-length", 10**11), "--sample-length")
    assert files(trained) == before and not (tmp_path / "r").exists()


@pytest.mark.parametrize("option", [["--seq-len", 10**7], ["--seq-len", 10**5], ["--heads", 10**11]])
def test_transformer_sizes_that_cannot_fit_are_refused_before_vectorizing(tmp_path, corpus, option):
    """Issue 21 §3, §6: no MemoryError traceback from vectorizing or from an attention mask, no metrics.jsonl."""
    err = fails(
        scratchlm("train", corpus, "--model", "transformer", *option, "--run-dir", tmp_path / "r", "--no-progress"),
        "training would need about",
        f"{option[0]} {option[1]:,}",
    )
    assert "one training step's activations" in err
    assert not (tmp_path / "r").exists()
