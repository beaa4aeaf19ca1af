"""Issue 23 §4: `scratchlm eval RUN_DIR [TEXT]`, the loss over every token of a held-out text, checked
against model.loss over the same chunks computed here directly."""

import json
import math

import numpy as np
import pytest
from helpers.cli import cli, fails

from scratchlm import batching, models
from scratchlm.text import from_config

TEXT = (
    "It was the best of times, it was the worst of times; it was the age of wisdom, it was the age of foolishness.\n"
) * 40
GPT = ["--model", "transformer", "--tokenizer", "char", "--embedding-dim", "16", "--dense-dim", "32", "--layers", "2"]
RUN = ["--batch-size", "8", "--seq-len", "16", "--sample-length", "0", "--no-progress", "--val-fraction", "0.1"]


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "dickens.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def _train(capsys, corpus, run, *options):
    code, _, err = cli(capsys, "train", corpus, "--run-dir", run, "--epochs", 1, *RUN, *options)
    assert code == 0, err
    return models.load(run / "best.npz")


def _direct(model, ids, T):
    """Mean loss over targets 1 … N-1 of ids, read as one stream in consecutive chunks of T (state carried
    by a stateful model), straight from model.loss."""
    model.reset_state()
    total = 0.0
    for k in range(0, len(ids) - 1, T):
        x, y = ids[k : k + T], ids[k + 1 : k + T + 1]
        x = x[: len(y)]
        total += model.loss(x[None].astype(np.int64), y[None].astype(np.int64)) * len(y)
    model.reset_state()
    return total / (len(ids) - 1)


@pytest.mark.parametrize(
    "options",
    [GPT, ["--hidden", "16", "--embedding-dim", "8"]],  # a Transformer; an LSTM on streams (state carried)
    ids=["transformer", "lstm-streams"],
)
def test_eval_equals_model_loss_over_the_held_out_chunks(tmp_path, corpus, capsys, options):
    ckpt = _train(capsys, corpus, tmp_path / "r", *options)
    tokenizer = from_config(ckpt.metadata["tokenizer"])
    held = batching.split_tail(tokenizer.encode(TEXT), 0.1)[1]
    code, out, err = cli(capsys, "eval", tmp_path / "r", "--batch-size", 1, "--json")
    assert code == 0, err
    result = json.loads(out)  # one JSON object, nothing else on stdout
    expected = _direct(ckpt.model, held, 16)
    assert result["tokens"] == len(held) - 1
    assert result["nats_per_token"] == pytest.approx(expected, rel=1e-6)
    assert result["bits_per_token"] == pytest.approx(expected / math.log(2), rel=1e-12 + 1e-6)
    assert result["bits_per_character"] == result["bits_per_token"]
    assert result["perplexity"] == pytest.approx(math.exp(expected), rel=1e-5)
    assert result["checkpoint"].endswith("best.npz") and "held-out 0.1" in result["text"]

    code, out, err = cli(capsys, "eval", tmp_path / "r")  # the run's batch size: many streams, the same targets
    assert code == 0, err
    assert "nats per token" in out and "bits per character" in out and f"({len(held) - 1:,} characters)" in out

    code, out, err = cli(capsys, "eval", tmp_path / "r", "--batch-size", 1, "--json", "--weights", "bfloat16")
    if "--hidden" in options:  # the loss with U rounded to bfloat16, the model's own U left as it was
        assert code == 0, err
        with ckpt.model.decoding_weights("bfloat16"):
            rounded = _direct(ckpt.model, held, 16)
        assert json.loads(out)["nats_per_token"] == pytest.approx(rounded, rel=1e-6) and rounded != expected
        assert _direct(ckpt.model, held, 16) == pytest.approx(expected, rel=1e-12)
    else:  # a Transformer decodes with its float32 weights only: one line, exit code 2
        assert code == 2 and "float32 weights only" in err and len(err.strip().splitlines()) == 1


def test_eval_of_a_text_file_and_of_a_padded_run(tmp_path, corpus, capsys):
    _train(capsys, corpus, tmp_path / "r", *GPT)
    other = tmp_path / "other.txt"
    other.write_text("it was the age of times\n" * 5)
    code, out, err = cli(capsys, "eval", tmp_path / "r", other, "--json", "--seq-len", 8)
    assert code == 0, err
    assert json.loads(out)["tokens"] == len(other.read_text()) - 1
    fails(cli(capsys, "eval", tmp_path / "r", other, "--seq-len", 17), "--seq-len 17", "sequence_length 16")

    ckpt = _train(capsys, corpus, tmp_path / "p", "--batching", "padded", "--tokenizer", "word", "--hidden", "8")
    code, out, err = cli(capsys, "eval", tmp_path / "p", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["tokens"] > 0 and "bits_per_character" not in result
    assert ckpt.metadata["train"]["history"][-1]["val_loss"] == pytest.approx(result["nats_per_token"], rel=1e-6)


def test_eval_errors_are_one_line(tmp_path, corpus, capsys):
    fails(cli(capsys, "eval", tmp_path / "nowhere"), "no run directory or checkpoint", "nowhere")
    _train(capsys, corpus, tmp_path / "r", *GPT)
    bad = tmp_path / "bad.txt"
    bad.write_text("it was the age of €\n")
    fails(cli(capsys, "eval", tmp_path / "r", bad), "1 character(s) the model's vocabulary lacks", "'€'")
    fails(cli(capsys, "eval", tmp_path / "r", tmp_path / "missing.txt"), "missing.txt")
    code, _, err = cli(
        capsys, "train", corpus, "--run-dir", tmp_path / "n", *GPT, *RUN, "--val-fraction", 0, "--max-steps", 1
    )
    assert code == 0, err
    fails(cli(capsys, "eval", tmp_path / "n"), "held out no text", "name a TEXT")
    corpus.write_text(TEXT.replace("wisdom", "wisdow"), encoding="utf-8")  # the run's corpus, edited since
    fails(cli(capsys, "eval", tmp_path / "r"), "no longer the text the run trained on")
