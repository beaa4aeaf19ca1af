"""The second probe (issue 21): mistakes that used to slip past the checks, or were reported late or noisily.

A prime of no token is refused before training (item 5); a dropout rate that keeps almost nothing is refused
(item 8); non-finite weights are refused where they enter, and `info` and `sample` name them (item 9); a
diverging Transformer stops with one line, no NumPy warnings before it (item 10).
"""

import io
import warnings

import numpy as np
import pytest
from test_distributed import _fails_once, needs_mpi, run_cli
from test_failure_modes import TINY, fails, scratchlm

from scratchlm import TransformerLM
from scratchlm.batching import Vectorized
from scratchlm.cli import main
from scratchlm.text import CharTokenizer, VectorTokenizer, VocabularyError
from scratchlm.train import LAST, METRICS, Sampler, Trainer, TrainingDiverged, load_checkpoint

LINES = "a good film\n\nthe worst movie of the year\n" * 20
TRANSFORMER = [
    "--model",
    "transformer",
    "--seq-len",
    "12",
    "--embedding-dim",
    "8",
    "--dense-dim",
    "12",
    "--key-dim",
    "4",
    "--no-progress",
]


@pytest.fixture
def lines(tmp_path):
    path = tmp_path / "lines.txt"
    path.write_text(LINES)
    return path


def nothing_written(run_dir):
    return not (run_dir / LAST).exists() and not (run_dir / METRICS).exists()


# -- item 5: a prime of no token ------------------------------------------------------------------------------


@pytest.mark.parametrize("prime, words", [("!!!", "encodes to no token"), ("zork", "encodes to <unk> only")])
def test_a_transformer_prime_of_no_known_word_is_refused_before_training(tmp_path, lines, prime, words):
    run_dir = tmp_path / "run"
    fails(
        scratchlm("train", lines, "--run-dir", run_dir, "--prime", prime, "--sample-length", 5, *TRANSFORMER),
        f"the samples' prime {prime!r} {words}",
        "give none",
    )
    assert nothing_written(run_dir) and not run_dir.exists()


def test_an_empty_prime_is_refused_before_training(tmp_path, lines):
    fails(
        scratchlm(
            "train",
            lines,
            "--run-dir",
            tmp_path / "run",
            "--prime",
            "",
            "--tokenizer",
            "word",
            "--batching",
            "padded",
            *TINY,
        ),
        "the samples' prime '' encodes to no token",
    )
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "tokenizer, prime",
    [
        (VectorTokenizer.fit(LINES.splitlines()), "!!! ..."),
        (VectorTokenizer.fit(LINES.splitlines()), "xyzzy plugh"),
        (CharTokenizer.fit(LINES), ""),
    ],
)
def test_the_sampler_refuses_a_prime_of_no_known_token_when_made(tokenizer, prime):
    with pytest.raises(VocabularyError, match="nothing to start from"):
        Sampler(tokenizer, prime=prime)


def test_a_prime_with_some_known_words_is_kept_with_unk():
    tokenizer = VectorTokenizer.fit(LINES.splitlines())
    ids = Sampler(tokenizer, prime="a xyzzy film!").prime_ids
    assert list(ids) == [tokenizer.encode("a")[0], tokenizer.unk_id, tokenizer.encode("film")[0]]


@needs_mpi
def test_a_prime_of_no_token_under_mpiexec_is_one_line_before_training(tmp_path):
    (tmp_path / "lines.txt").write_text(LINES)
    _fails_once(
        run_cli(
            [
                "train",
                "lines.txt",
                "--run-dir",
                "run",
                "--batch-size",
                "8",
                "--prime",
                "!!!",
                "--sample-length",
                "5",
                *TRANSFORMER,
            ],
            2,
            tmp_path,
        ),
        "the samples' prime '!!!'",
    )
    assert not (tmp_path / "run").exists()


# -- item 8: a dropout rate that keeps almost nothing ---------------------------------------------------------


def test_a_dropout_rate_that_keeps_nothing_is_refused_by_the_cli(tmp_path, lines):
    fails(
        scratchlm("train", lines, "--run-dir", tmp_path / "run", "--dropout", "0.9999999999999999", *TINY),
        "dropout",
        "[0, 0.99]",
        "0.9999999999999999",
    )
    assert not (tmp_path / "run").exists()


# -- item 9: non-finite weights in a checkpoint ----------------------------------------------------------------


@pytest.fixture
def spoilt(tmp_path, lines, capsys):
    """A run directory whose checkpoints hold a NaN in dense/bias and an inf in lstm_0/kernel."""
    run_dir = tmp_path / "run"
    assert (
        main(["train", str(lines), "--run-dir", str(run_dir), "--max-steps", "2", "--sample-length", "0", *TINY]) == 0
    )
    ckpt = load_checkpoint(run_dir)
    ckpt.model.params["dense/bias"][1] = np.nan
    ckpt.model.params["lstm_0/kernel"][0, :3] = np.inf
    ckpt.model.save(run_dir / LAST, optimizer=ckpt.optimizer, rng=ckpt.rng, metadata=ckpt.metadata)
    capsys.readouterr()
    return run_dir


def test_info_names_the_arrays_that_are_not_finite(spoilt, capsys):
    assert main(["info", str(spoilt)]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("not finite"))
    assert "param/lstm_0/kernel: 3 of" in row and "param/dense/bias: 1 of" in row and "diverged" in row


def test_info_of_a_sound_checkpoint_says_nothing_of_finiteness(tmp_path, lines, capsys):
    assert (
        main(
            ["train", str(lines), "--run-dir", str(tmp_path / "run"), "--max-steps", "2", "--sample-length", "0", *TINY]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["info", str(tmp_path / "run")]) == 0
    assert "not finite" not in capsys.readouterr().out


def test_sample_refuses_a_checkpoint_with_non_finite_weights_naming_file_and_array(spoilt):
    err = fails(
        scratchlm("sample", spoilt / LAST, "--prime", "it was"), str(spoilt / LAST), "lstm_0/kernel", "not finite"
    )
    assert "logits" not in err


# -- item 10: a diverging Transformer is one line ---------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [32, 64])
def test_a_diverging_transformer_is_one_line_without_numpy_warnings(tmp_path, lines, batch_size):
    """With one or two batches an epoch, the overflow first shows in the validation loss, not in a step."""
    run_dir = tmp_path / "run"
    err = fails(
        scratchlm(
            "train",
            lines,
            "--run-dir",
            run_dir,
            "--lr",
            "1e10",
            "--clipnorm",
            0,
            "--optimizer",
            "sgd",
            "--batch-size",
            batch_size,
            "--val-fraction",
            "0.1",
            "--sample-length",
            0,
            "--epochs",
            3,
            *TRANSFORMER,
        ),
        "training stopped at step",
    )
    assert "RuntimeWarning" not in err and "the validation loss after step" in err


def test_samples_from_diverged_weights_stop_training_as_diverged_without_warnings():
    tokenizer = VectorTokenizer.fit(LINES.splitlines())
    train = Vectorized(np.stack([tokenizer.encode_sequence(line, 12) for line in LINES.splitlines()]), 8)
    model = TransformerLM(tokenizer.vocab_size, 12, embed_dim=8, dense_dim=12, num_heads=2, key_dim=4)
    model.params["dense/kernel"][...] = 3e38  # finite weights whose logits overflow
    trainer = Trainer(model, None, train, progress=False, out=io.StringIO())
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        with pytest.raises(TrainingDiverged, match="no sample can be drawn .*the weights have diverged"):
            Sampler(tokenizer, temperatures=(1.0,), length=5, prime="a good")(trainer)
