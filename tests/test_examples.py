"""Smoke runs of the four seed examples (`--max-steps`), offline, each in a few seconds.

The Nietzsche example runs as a new user runs it, in its default book
configuration on the bundled corpus: `python examples/nietzsche_char.py
--max-steps 20` from the repository root, with an empty download cache and a
HOME of its own (plus a temporary --run-dir). A wheel built from the checkout
holds the corpora and the CUDA sources.
"""

import importlib.util
import math
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from scratchlm import corpora

ROOT = Path(__file__).resolve().parents[1]


def example(name):
    """Import examples/<name>.py as a module (its main(argv) returns the exit code)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_nietzsche_book_smoke_run_on_a_fresh_machine(tmp_path):
    home, cache = tmp_path / "home", tmp_path / "cache"
    home.mkdir()
    env = {
        **os.environ,
        "HOME": str(home),
        "SCRATCHLM_CACHE": str(cache),
        "MPLCONFIGDIR": str(tmp_path / "matplotlib"),  # matplotlib's own font cache, where the plot extra is
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    result = subprocess.run(
        [sys.executable, "examples/nietzsche_char.py", "--max-steps", "20", "--run-dir", str(tmp_path / "run")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "one-hot -> LSTM[128] -> Dense(60)" in out and "600,902 characters, 60 distinct" in out
    assert "200,281 windows of 60 (step 3) in 1,565 batches of 128" in out
    assert [line.split()[-1] for line in out.splitlines() if line.startswith("----- temperature")] == [
        "0.2",
        "0.5",
        "1",
        "1.2",
    ]
    assert (tmp_path / "run" / "last.npz").exists()
    assert not cache.exists() and list(home.iterdir()) == []  # nothing downloaded, nothing cached


def test_a_built_wheel_holds_the_corpora_and_the_cuda_sources(tmp_path):
    source = tmp_path / "src"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git", "runs", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis"
        ),
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(tmp_path / "wheels"),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = (tmp_path / "wheels").glob("scratchlm-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for corpus in corpora.CORPORA.values():
        assert f"scratchlm/texts/{corpus.filename}.gz" in names
    assert "scratchlm/texts/README.md" in names
    cuda = {p.name for p in (ROOT / "scratchlm" / "kernels" / "cuda").glob("*.cu")}
    assert cuda and {f"scratchlm/kernels/cuda/{n}" for n in cuda} <= names
    modules = {str(p.relative_to(ROOT)) for p in (ROOT / "scratchlm").rglob("*.py")}
    assert modules and modules <= names  # every subpackage is packaged


def test_nietzsche_fast_smoke_run_and_resume(tmp_path, capsys):
    module = example("nietzsche_char")
    argv = ["--fast", "--run-dir", str(tmp_path / "run")]
    assert module.main(argv + ["--max-steps", "5"]) == 0
    assert module.main(argv + ["--max-steps", "8", "--resume"]) == 0
    out = capsys.readouterr().out
    assert "Embedding(" in out and "streams" in out
    assert module.main(argv + ["--max-steps", "8"]) == 2  # would overwrite the run
    assert "--resume" in capsys.readouterr().err


def test_nietzsche_offline_says_so(tmp_path, capsys, monkeypatch):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/nietzsche.txt"
    monkeypatch.setitem(corpora.CORPORA, "nietzsche", corpora.Source(url, "0" * 64, "nietzsche.txt"))
    monkeypatch.setenv("SCRATCHLM_CACHE", str(tmp_path / "cache"))
    assert example("nietzsche_char").main(["--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert url in err and "--corpus PATH" in err and err.count("\n") == 1


def test_shakespeare_smoke_run(tmp_path, capsys):
    code = example("shakespeare_char").main(
        [
            "--max-steps",
            "10",
            "--hidden",
            "32",
            "--embedding-dim",
            "8",
            "--batch-size",
            "8",
            "--seq-len",
            "32",
            "--sample-length",
            "200",
            "--backend",
            "numpy",
            "--run-dir",
            str(tmp_path / "run"),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    samples = [line for line in out.splitlines() if line.startswith("ROMEO:")]
    assert len(samples) >= 2
    assert "<pad>" not in out and "<unk>" not in out and "<eos>" not in out


def test_titles_smoke_run(tmp_path, capsys):
    code = example("titles_eos").main(["--max-steps", "10", "--run-dir", str(tmp_path / "run")])
    assert code == 0
    out = capsys.readouterr().out
    assert "padded batches" in out and "--- greedy" in out and "--- temperature 1.0" in out
    assert "<eos>" not in out


def test_titles_with_a_gru(tmp_path, capsys):
    assert example("titles_eos").main(["--cell", "gru", "--max-steps", "4", "--run-dir", str(tmp_path / "run")]) == 0
    assert "GRU[128]" in capsys.readouterr().out


def test_titles_from_a_file_of_ones_own_and_bad_file(tmp_path, capsys):
    titles = tmp_path / "mine.txt"
    titles.write_text("First title\nSecond title\n\nThird one here\n")
    assert example("titles_eos").main([str(titles), "--max-steps", "3", "--run-dir", str(tmp_path / "r")]) == 0
    assert example("titles_eos").main([str(tmp_path / "none.txt"), "--run-dir", str(tmp_path / "s")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_recipes_smoke_run(tmp_path, capsys):
    code = example("recipes_word").main(["--max-steps", "5", "--run-dir", str(tmp_path / "run")])
    assert code == 0
    out = capsys.readouterr().out
    assert "WordTokenizer" in out and "28 recipes" in out and "recipe for roasted vegetables |" in out


def test_recipes_bad_json(tmp_path, capsys):
    module = example("recipes_word")
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "empty.json").write_text('[{"title": "no directions"}]')
    for name, words in (("bad.json", "not valid JSON"), ("empty.json", "no record")):
        assert module.main([str(tmp_path / name), "--run-dir", str(tmp_path / "r")]) == 2
        assert words in capsys.readouterr().err


def test_imdb_transformer_smoke_run_on_the_shipped_sample_and_resume(tmp_path, capsys):
    module = example("imdb_transformer")
    argv = [
        "--data",
        str(ROOT / "examples" / "data" / "reviews"),
        "--batch-size",
        "8",
        "--run-dir",
        str(tmp_path / "run"),
    ]
    assert module.main(argv + ["--max-steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "TransformerLM(PositionalEmbedding(" in out and "40 reviews" in out
    assert [line.split()[-1] for line in out.splitlines() if line.startswith("----- temperature")] == [
        "0.2",
        "0.5",
        "0.7",
        "1",
        "1.5",
    ]
    assert 'primed with: " this movie"' in out
    assert module.main(argv + ["--max-steps", "3", "--resume"]) == 0


def test_imdb_offline_names_the_data_option(tmp_path, capsys, monkeypatch):
    import socket

    from scratchlm.datasets import imdb

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/aclImdb_v1.tar.gz"
    monkeypatch.setitem(imdb.ARCHIVES, "imdb", imdb.ARCHIVES["imdb"]._replace(url=url))
    monkeypatch.setenv("SCRATCHLM_CACHE", str(tmp_path / "cache"))
    assert example("imdb_transformer").main(["--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert url in err and "--data DIR" in err and err.count("\n") == 1


def test_shakespeare_gpt_smoke_run_and_resume_train_the_preset(tmp_path, capsys):
    """examples/shakespeare_gpt.py is `scratchlm train tinyshakespeare --preset nanogpt-cpu` written out: the same
    model, optimizer and schedule; it ends with the loss over the whole held-out tenth."""
    from scratchlm import models
    from scratchlm.cli.settings import build_optimizer, build_schedule, model_config, resolve

    module, run = example("shakespeare_gpt"), tmp_path / "run"
    argv = ["--sample-length", "20", "--run-dir", str(run)]
    assert module.main([*argv, "--max-steps", "3"]) == 0
    assert module.main([*argv, "--max-steps", "5", "--resume"]) == 0
    out = capsys.readouterr().out
    held = [line for line in out.splitlines() if line.startswith("held-out loss")]
    assert len(held) == 2 and "after 5 steps" in held[1] and "(all 111,538 held-out characters)" in held[1]
    assert 1.0 < float(held[1].split(": ")[1].split()[0]) < math.log(68) + 0.5
    ckpt = models.load(run / "last.npz")
    preset = resolve({"preset": "nanogpt-cpu"})
    assert ckpt.model.config == model_config(preset, ckpt.model.vocab_size)
    assert ckpt.metadata["train"]["step"] == 5
    hyper = ckpt.optimizer.hyperparameters()  # its lr: the schedule's at the last step
    assert {**hyper, "lr": preset["lr"]} == build_optimizer(preset).hyperparameters()
    assert ckpt.metadata["train"]["schedule"] == build_schedule(preset).config()
