"""The `scratchlm` command: a whole session, every bad input of issue 4 §6, and a real kill -9 + resume.

Each bad input must end with exit code 2 and exactly one line on stderr (no
traceback), and must leave every file already written byte for byte as it was.
"""

import math
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers.cli import cli, fails, kill_9_after

import scratchlm.cli as cli_module
from scratchlm import models

ROOT = Path(__file__).resolve().parents[1]
TEXT = (
    "It was the best of times, it was the worst of times; it was the age of wisdom, it was the age of foolishness.\n"
) * 40
TINY = ["--hidden", "16", "--embedding-dim", "8", "--batch-size", "4", "--seq-len", "16", "--no-progress"]


def snapshot(directory):
    return {p.name: p.read_bytes() for p in sorted(Path(directory).iterdir()) if p.is_file()}


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "dickens.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


@pytest.fixture
def trained(tmp_path, corpus, capsys):
    run_dir = tmp_path / "run"
    code, out, err = cli(capsys, "train", corpus, "--run-dir", run_dir, "--max-steps", 12, "--sample-length", 0, *TINY)
    assert code == 0, err
    return run_dir


def test_session_train_sample_info_resume(tmp_path, corpus, capsys):
    run_dir = tmp_path / "run"
    code, out, err = cli(
        capsys,
        "train",
        corpus,
        "--run-dir",
        run_dir,
        "--epochs",
        2,
        "--sample-length",
        40,
        "--temperature",
        0.5,
        1.0,
        *TINY,
    )
    assert code == 0, err
    assert "epoch 1/2  loss" in out and "epoch 2/2  loss" in out and out.count("----- temperature") == 4
    assert {"last.npz", "best.npz", "metrics.jsonl"} <= set(snapshot(run_dir))

    code, out, err = cli(capsys, "sample", run_dir, "--prime", "It was", "--length", 30, "--temperature", 0.2, 0.5, 1.0)
    assert code == 0, err
    assert out.count("--- temperature") == 3 and out.count("\nIt was") == 3

    code, out, _ = cli(capsys, "info", run_dir)
    assert code == 0 and "char, " in out and "epoch 2" in out and "stateful" in out

    code, out, err = cli(capsys, "train", "--resume", run_dir, "--epochs", 3, "--sample-length", 0)
    assert code == 0, err
    assert "resuming" in out and "epoch 3/3  loss" in out and "epoch 2/2" not in out
    code, out, _ = cli(capsys, "train", "--resume", run_dir, "--epochs", 3)
    assert code == 0 and "complete" in out


def test_sample_greedy_top_k_top_p_and_seeds(trained, capsys):
    base = ["sample", trained, "--prime", "it", "--length", 40]
    _, greedy1, _ = cli(capsys, *base, "--temperature", 0)
    _, greedy2, _ = cli(capsys, *base, "--temperature", 0, "--seed", 5)
    assert greedy1 == greedy2 and "--- greedy" in greedy1
    _, a, _ = cli(capsys, *base, "--seed", 1, "--top-k", 3)
    _, b, _ = cli(capsys, *base, "--seed", 1, "--top-k", 3)
    _, c, _ = cli(capsys, *base, "--seed", 2, "--top-p", 0.9)
    assert a == b and a != c


def test_sample_with_bfloat16_weights(trained, capsys):
    """--weights bfloat16 samples; a precision it does not offer is a usage error (exit code 2)."""
    base = ["sample", trained, "--prime", "it", "--length", 40, "--temperature", 0]
    code, out, err = cli(capsys, *base, "--weights", "bfloat16")
    assert code == 0 and "--- greedy" in out, err
    code, _, err = cli(capsys, *base, "--weights", "int8")
    assert code == 2


def test_prime_file_and_word_level_padded(tmp_path, corpus, capsys):
    prime = tmp_path / "prime.txt"
    prime.write_text("it was the")
    run_dir = tmp_path / "words"
    code, out, err = cli(
        capsys,
        "train",
        corpus,
        "--run-dir",
        run_dir,
        "--tokenizer",
        "word",
        "--batching",
        "padded",
        "--max-steps",
        5,
        "--sample-length",
        0,
        *TINY,
    )
    assert code == 0, err
    code, out, err = cli(capsys, "sample", run_dir, "--prime-file", prime, "--length", 10)
    assert code == 0 and out.splitlines()[1].startswith(" it was the"), err
    code, out, err = cli(capsys, "sample", run_dir, "--length", 10)  # no prime: starts a new line
    assert code == 0, err


def test_windows_one_hot_book_options(tmp_path, corpus, capsys):
    code, out, err = cli(
        capsys,
        "train",
        corpus,
        "--run-dir",
        tmp_path / "w",
        "--batching",
        "windows",
        "--embedding-dim",
        0,
        "--hidden",
        8,
        "--optimizer",
        "rmsprop",
        "--lr",
        0.01,
        "--clipnorm",
        0,
        "--val-fraction",
        0,
        "--lower",
        "--max-steps",
        3,
        "--sample-length",
        0,
        "--no-progress",
    )
    assert code == 0, err
    assert "one-hot" in out and "windows of 60 (step 3)" in out


def test_help_is_there(capsys):
    for argv in (["--help"], ["train", "--help"], ["sample", "--help"], ["info", "--help"]):
        code, out, _ = cli(capsys, *argv)
        assert code == 0 and "usage: scratchlm" in out


# -- bad input (issue 4 §6) --------------------------------------------------------------


def test_empty_corpus(tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("")
    fails(cli(capsys, "train", tmp_path / "empty.txt", "--run-dir", tmp_path / "r"), "empty")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "batching, words", [("windows", "at least 61"), ("streams", "at least 6,401"), ("padded", "no non-empty")]
)
def test_too_short_corpus(tmp_path, capsys, batching, words):
    (tmp_path / "short.txt").write_text("too short\n" if batching != "padded" else "\n\n  \n")
    fails(
        cli(
            capsys,
            "train",
            tmp_path / "short.txt",
            "--run-dir",
            tmp_path / "r",
            "--batching",
            batching,
            "--val-fraction",
            0,
        ),
        words,
    )
    assert not (tmp_path / "r").exists()


def test_missing_or_unreadable_corpus(tmp_path, capsys):
    fails(cli(capsys, "train", tmp_path / "nope.txt", "--run-dir", tmp_path / "r"), "no such file")
    (tmp_path / "latin1.txt").write_bytes("caf\u00e9 ".encode("latin-1") * 1000)
    fails(cli(capsys, "train", tmp_path / "latin1.txt", "--run-dir", tmp_path / "r"), "not UTF-8")


def test_offline_download_names_the_corpus_argument(tmp_path, capsys, monkeypatch):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/corpus.txt"
    monkeypatch.setenv("SCRATCHLM_CACHE", str(tmp_path / "cache"))
    err = fails(cli(capsys, "train", url, "--run-dir", tmp_path / "r"), url, "are you offline", "scratchlm train PATH")
    assert "--corpus" not in err and not (tmp_path / "r").exists()


def test_bundled_corpus_by_name(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SCRATCHLM_CACHE", str(tmp_path / "cache"))
    code, out, err = cli(
        capsys, "train", "nietzsche", "--run-dir", tmp_path / "r", "--max-steps", 2, "--sample-length", 0, *TINY
    )
    assert code == 0, err
    assert "CharTokenizer(V=89" in out and not (tmp_path / "cache").exists()


def test_prime_with_unknown_characters(trained, capsys):
    before = snapshot(trained)
    err = fails(cli(capsys, "sample", trained, "--prime", "It was Zq\u20ac"), "'Z'", "'q'", "'\u20ac'")
    assert "--unknown" in err
    code, out, _ = cli(capsys, "sample", trained, "--prime", "It was Zq\u20ac", "--unknown", "skip", "--length", 5)
    assert code == 0 and out.splitlines()[1].startswith("It was ")
    code, out, _ = cli(capsys, "sample", trained, "--prime", "It was Z", "--unknown", "unk", "--length", 5)
    assert code == 0 and out.splitlines()[1].startswith("It was <unk>")
    fails(cli(capsys, "sample", trained, "--prime", "\u20ac", "--unknown", "skip"), "empty")
    assert snapshot(trained) == before


def test_the_unknown_token_is_named_as_the_model_writes_it(tmp_path, corpus, capsys):
    """<unk> for the recurrent models' vocabularies, [UNK] for the Transformer's TextVectorization one."""
    for model, token, other in (
        (["--tokenizer", "word"], "<unk>", "[UNK]"),
        (["--model", "transformer"], "[UNK]", "<unk>"),
    ):
        run_dir = tmp_path / token
        code, _, err = cli(
            capsys,
            "train",
            corpus,
            "--run-dir",
            run_dir,
            *model,
            "--embedding-dim",
            8,
            "--batch-size",
            4,
            "--seq-len",
            16,
            "--max-steps",
            2,
            "--sample-length",
            0,
            "--no-progress",
        )
        assert code == 0, err
        err = fails(
            cli(capsys, "sample", run_dir, "--prime", "it was zebras"),
            "'zebras'",
            "--unknown skip",
            f"replace them by {token} with --unknown unk",
        )
        assert other not in err
    _, out, _ = cli(capsys, "sample", "--help")
    assert "[UNK]" in " ".join(out.split())


@pytest.mark.parametrize("value", ["-1", "-0.5", "nan", "inf"])
def test_bad_temperature(trained, capsys, value):
    fails(cli(capsys, "sample", trained, "--temperature", 0.5, value), "temperature")
    fails(cli(capsys, "train", "--resume", trained, "--temperature", value), "temperature")


def test_bad_sampling_options(trained, capsys):
    fails(cli(capsys, "sample", trained, "--top-p", 1.5), "top_p")
    fails(cli(capsys, "sample", trained, "--top-k", 0), "top-k")
    fails(cli(capsys, "sample", trained, "--temperature", "warm"), "expected a number")
    fails(cli(capsys, "sample", trained, "--prime-file", trained / "nope.txt"), "no such file")


def test_missing_checkpoint(tmp_path, capsys):
    fails(cli(capsys, "sample", tmp_path / "nope.npz"), "no checkpoint")
    fails(cli(capsys, "info", tmp_path / "nope.npz"), "no checkpoint")
    fails(cli(capsys, "train", "--resume", tmp_path), "last.npz")


def test_corrupt_and_truncated_checkpoints(trained, tmp_path, capsys):
    good = (trained / "last.npz").read_bytes()
    (tmp_path / "truncated.npz").write_bytes(good[: len(good) // 2])
    (tmp_path / "garbage.npz").write_bytes(b"this is not a checkpoint" * 10)
    for name in ("truncated.npz", "garbage.npz"):
        before = (tmp_path / name).read_bytes()
        fails(cli(capsys, "sample", tmp_path / name), "checkpoint")
        fails(cli(capsys, "info", tmp_path / name), "checkpoint")
        assert (tmp_path / name).read_bytes() == before
    (trained / "last.npz").write_bytes(good[:100])
    before = snapshot(trained)
    fails(cli(capsys, "train", "--resume", trained), "checkpoint")
    assert snapshot(trained) == before


def test_checkpoint_vocabulary_does_not_match_the_corpus(trained, tmp_path, capsys):
    other = tmp_path / "other.txt"
    other.write_text(TEXT + "Zebras QUIETLY jumped!\n")
    before = snapshot(trained)
    fails(cli(capsys, "train", "--resume", trained, other), "vocabulary", "'Z'", "'Q'")
    same_chars = tmp_path / "same_chars.txt"
    same_chars.write_text(TEXT[::-1])
    fails(cli(capsys, "train", "--resume", trained, same_chars), "differ")
    assert snapshot(trained) == before


def test_unknown_backend(tmp_path, corpus, trained, capsys):
    fails(cli(capsys, "train", corpus, "--run-dir", tmp_path / "r", "--backend", "tpu"), "backend", "tpu")
    fails(cli(capsys, "sample", trained, "--backend", "metal"), "backend")
    assert not (tmp_path / "r").exists()


def test_cupy_backend_without_gpu(tmp_path, corpus, trained, capsys):
    try:
        from scratchlm import get_backend

        get_backend("cupy")
        pytest.skip("a GPU is available here")
    except Exception:
        pass
    fails(cli(capsys, "train", corpus, "--run-dir", tmp_path / "r", "--backend", "cupy"), "gpu")
    fails(cli(capsys, "sample", trained, "--backend", "cupy"), "gpu")
    assert not (tmp_path / "r").exists()


def test_existing_run_is_not_overwritten(trained, corpus, capsys):
    before = snapshot(trained)
    fails(cli(capsys, "train", corpus, "--run-dir", trained), "--resume")
    fails(cli(capsys, "train", "--resume", trained, "--hidden", 32), "--hidden", "cannot change")
    assert snapshot(trained) == before


def test_other_usage_errors(tmp_path, corpus, capsys):
    fails(cli(capsys), "COMMAND")
    fails(cli(capsys, "train"), "corpus")
    fails(cli(capsys, "train", corpus, "--hidden", 0), "--hidden")
    fails(cli(capsys, "train", corpus, "--val-fraction", 1.5, "--run-dir", tmp_path / "r"), "val-fraction")
    fails(cli(capsys, "train", corpus, "--lr", -1, "--run-dir", tmp_path / "r"), "--lr")
    fails(cli(capsys, "sample"), "CHECKPOINT")
    fails(cli(capsys, "sample", corpus, "--prime", "a", "--prime-file", corpus), "not allowed")
    assert not (tmp_path / "r").exists()


def test_a_transformer_has_no_one_hot_input(tmp_path, corpus, capsys):
    fails(
        cli(capsys, "train", corpus, "--model", "transformer", "--embedding-dim", 0, "--run-dir", tmp_path / "r"),
        "--embedding-dim 0",
        "one-hot",
        "--model transformer",
        "size >= 1",
    )
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("option", ["--seq-len", "--batch-size", "--epochs", "--seed", "--hidden"])
def test_numbers_no_checkpoint_could_record_are_usage_errors(tmp_path, corpus, capsys, option):
    fails(cli(capsys, "train", corpus, option, 2**63, "--run-dir", tmp_path / "r"), option, "below 2**63")
    assert not (tmp_path / "r").exists()


# -- a real kill ------------------------------------------------------------------------------


def _train_command(corpus, run_dir, epochs, recipe=()):
    return [
        sys.executable,
        "-m",
        "scratchlm",
        "train",
        str(corpus),
        "--run-dir",
        str(run_dir),
        "--epochs",
        str(epochs),
        "--checkpoint-every",
        "10",
        "--sample-length",
        "0",
        "--hidden",
        "32",
        "--embedding-dim",
        "8",
        "--batch-size",
        "8",
        "--seq-len",
        "16",
        "--no-progress",
        *recipe,
    ]


# nanoGPT's recipe, the kill falling inside the warmup (40 of 2 × ~50 steps) and between accumulated batches.
RECIPE = [
    *("--optimizer", "adamw", "--weight-decay", "0.1", "--beta2", "0.99", "--lr-schedule", "cosine"),
    *("--warmup-steps", "40", "--decay-steps", "90", "--min-lr", "1e-4", "--grad-accum", "2", "--clipnorm", "1"),
]


@pytest.mark.parametrize("recipe", [(), RECIPE], ids=["default", "adamw-cosine-accumulated"])
def test_kill_9_then_resume_loses_nothing(tmp_path, capsys, recipe):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT * 3)
    killed = tmp_path / "killed"
    stopped_at = kill_9_after(_train_command(corpus, killed, epochs=1000, recipe=recipe), killed, 30, tmp_path)

    code, out, err = cli(capsys, "train", "--resume", killed, "--epochs", 2)
    assert code == 0, err
    reference = tmp_path / "reference"
    code, _, err = cli(capsys, *_train_command(corpus, reference, epochs=2, recipe=recipe)[3:])
    assert code == 0, err
    a, b = models.load(killed / "last.npz"), models.load(reference / "last.npz")
    assert a.metadata["train"]["step"] == b.metadata["train"]["step"] > stopped_at
    assert all(np.array_equal(a.model.params[k], p) for k, p in b.model.params.items())
    assert [e["loss"] for e in a.metadata["train"]["history"]] == [e["loss"] for e in b.metadata["train"]["history"]]


def test_bench_hands_its_options_to_the_benchmark_script(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_module.main(["bench", "--workloads", "nonsense"])
    assert exit_info.value.code == 2
    assert "unknown workloads" in capsys.readouterr().err


def test_bench_outside_a_source_checkout(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(cli_module, "BENCH_SCRIPT", tmp_path / "missing.py")
    assert cli_module.main(["bench"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "source repository" in err


# -- the optimizer and the learning-rate schedule ------------------------------------------------


def test_the_recipe_options_are_recorded_and_resumed(tmp_path, corpus, capsys):
    run_dir = tmp_path / "run"
    code, _, err = cli(
        capsys,
        *("train", corpus, "--run-dir", run_dir, "--max-steps", 6, "--sample-length", 0, *TINY),
        *("--optimizer", "adamw", "--beta2", 0.99, "--lr-schedule", "cosine", "--warmup-steps", 2, "--grad-accum", 2),
    )
    assert code == 0, err
    ckpt = models.load(run_dir / "last.npz")
    opt, train = ckpt.optimizer, ckpt.metadata["train"]
    assert opt.name == "adamw" and (opt.weight_decay, opt.beta_2, opt.decay) == (0.1, 0.99, None)
    assert train["grad_accum"] == 2 and train["step"] == 6
    assert train["schedule"] == {"name": "cosine", "lr": 1e-3, "min_lr": 1e-4, "decay_steps": 6, "warmup_steps": 2}
    cli_settings = ckpt.metadata["cli"]
    assert (cli_settings["lr_schedule"], cli_settings["decay_steps"], cli_settings["grad_accum"]) == ("cosine", 6, 2)
    assert opt.lr == 1e-4 + 0.5 * (1 + math.cos(math.pi * 3 / 4)) * 9e-4  # the last step's, it = 5
    fails(cli(capsys, "train", "--resume", run_dir, "--grad-accum", 1), "--grad-accum", "cannot change")
    code, _, err = cli(capsys, "train", "--resume", run_dir, "--max-steps", 8)
    assert code == 0, err
    ckpt = models.load(run_dir / "last.npz")
    assert ckpt.metadata["train"]["step"] == 8 and ckpt.optimizer.lr == 1e-4  # past decay_steps: min_lr


def test_step_decay_from_the_command_line(tmp_path, corpus, capsys):
    run_dir = tmp_path / "run"
    code, _, err = cli(
        capsys,
        *("train", corpus, "--run-dir", run_dir, "--max-steps", 5, "--sample-length", 0, *TINY),
        *("--optimizer", "sgd", "--lr", 0.1, "--lr-schedule", "step", "--lr-decay-every", 2),
    )
    assert code == 0, err
    ckpt = models.load(run_dir / "last.npz")
    assert ckpt.metadata["train"]["schedule"] == {
        "name": "step",
        "lr": 0.1,
        "every": 2,
        "factor": 0.5,
        "warmup_steps": 0,
    }
    assert ckpt.optimizer.lr == 0.1 * 0.5**2  # step 5 is it = 4


@pytest.mark.parametrize(
    "options, words",
    [
        (["--weight-decay", 0.1], ["--weight-decay is a setting of --optimizer adamw"]),
        (["--optimizer", "adamw", "--weight-decay", -1], ["--weight-decay must be a number >= 0"]),
        (["--optimizer", "rmsprop", "--beta2", 0.99], ["--beta2 is a setting of --optimizer adam and adamw"]),
        (["--beta2", 1], ["--beta2 must lie in [0, 1)"]),
        (["--lr-schedule", "cosine"], ["--lr-schedule cosine needs --decay-steps"]),
        (["--lr-schedule", "cosine", "--decay-steps", 5, "--warmup-steps", 5], ["--decay-steps must be", ">= 6"]),
        (["--lr-schedule", "cosine", "--decay-steps", 5, "--min-lr", 1], ["--min-lr must be at most lr"]),
        (["--lr-schedule", "cosine", "--decay-steps", 5, "--min-lr", 0], ["--min-lr must be a number > 0"]),
        (["--min-lr", 1e-4], ["--min-lr: not a setting of --lr-schedule constant"]),
        (["--lr-schedule", "step"], ["--lr-schedule step needs --lr-decay-every"]),
        (["--lr-schedule", "step", "--lr-decay-every", 3, "--lr-decay-factor", 2], ["--lr-decay-factor must be in"]),
        (["--lr-schedule", "cosine", "--lr-decay-every", 3, "--max-steps", 9], ["--lr-decay-every: not a setting"]),
        (["--lr-schedule", "linear"], ["invalid choice"]),
        (["--grad-accum", 0], ["--grad-accum"]),
        (["--warmup-steps", -1], ["--warmup-steps"]),
    ],
)
def test_bad_recipe_options(tmp_path, corpus, capsys, options, words):
    fails(cli(capsys, "train", corpus, "--run-dir", tmp_path / "r", *options), *words)
    assert not (tmp_path / "r").exists()


def test_info_shows_the_schedule_and_the_accumulation(tmp_path, corpus, capsys):
    run_dir = tmp_path / "run"
    args = [
        "--lr-schedule",
        "cosine",
        "--warmup-steps",
        "2",
        "--decay-steps",
        "6",
        "--min-lr",
        "1e-4",
        "--grad-accum",
        2,
    ]
    code, _, err = cli(
        capsys, "train", corpus, "--run-dir", run_dir, "--max-steps", 3, "--sample-length", 0, *TINY, *args
    )
    assert code == 0, err
    code, out, _ = cli(capsys, "info", run_dir)
    assert code == 0
    assert "schedule    Cosine(lr=0.002, min_lr=0.0001, decay_steps=6, warmup_steps=2), lr " in out, out
    assert "grad accum  2 batches per step" in out
