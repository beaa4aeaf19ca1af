"""Issue 23 §1: `scratchlm train --model transformer` on any text (char or word ids, random windows or
streams), exact resume of random batching after kill -9, and `scratchlm sample` with primes longer than
the model's window."""

import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers.cli import cli, fails, kill_9_after

from scratchlm import models
from scratchlm.cli.metadata import check_agreement, settings_of, tokenizer_of
from scratchlm.cli.parser import build_parser
from scratchlm.cli.settings import DEFAULTS, build_schedule, model_config, resolve
from scratchlm.errors import CheckpointError

ROOT = Path(__file__).resolve().parents[1]
TEXT = (
    "It was the best of times, it was the worst of times; it was the age of wisdom, it was the age of foolishness.\n"
) * 40
GPT = ["--model", "transformer", "--block", "gpt", "--embedding-dim", "16", "--dense-dim", "32", "--heads", "2"]
TINY = [*GPT, "--layers", "2", "--batch-size", "8", "--seq-len", "16", "--sample-length", "0", "--no-progress"]


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "dickens.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def _epoch_losses(run_dir):
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if r.get("event") == "epoch"]


def test_a_char_level_transformer_learns_a_text_with_random_windows(tmp_path, corpus, capsys):
    run = tmp_path / "r"
    code, out, err = cli(
        capsys, "train", corpus, "--tokenizer", "char", "--epochs", 3, "--lr", 0.01, "--run-dir", run, *TINY
    )
    assert code == 0, err
    assert "random windows of 16" in out and "CharTokenizer" in out and "TransformerLM" in out
    losses = _epoch_losses(run)
    assert len(losses) == 3 and losses[2] < losses[0] - 0.5, losses
    ckpt = models.load(run / "last.npz")
    assert ckpt.model.kind == "transformer" and ckpt.model.sequence_length == 16
    assert ckpt.metadata["data"]["kind"] == "random" and ckpt.metadata["cli"]["tokenizer"] == "char"
    assert ckpt.metadata["data"]["num_batches"] == int(len(TEXT) * 0.95) // (8 * 16)


def test_batching_alone_makes_a_char_transformer_and_word_streams_train(tmp_path, corpus, capsys):
    code, out, err = cli(
        capsys, "train", corpus, "--batching", "random", "--max-steps", 3, "--run-dir", tmp_path / "a", *TINY
    )
    assert code == 0 and "CharTokenizer" in out, err
    word = ["--tokenizer", "word", "--batching", "streams"]
    code, out, err = cli(capsys, "train", corpus, *word, "--epochs", 2, "--run-dir", tmp_path / "w", *TINY)
    assert code == 0, err
    assert "WordTokenizer" in out and "streams" in out
    assert models.load(tmp_path / "w" / "last.npz").metadata["data"]["kind"] == "streams"
    code, out, err = cli(capsys, "train", "--resume", tmp_path / "w", "--epochs", 3)
    assert code == 0 and "resuming" in out, err


def test_what_a_transformer_refuses(tmp_path, corpus, capsys):
    for wrong, words in (
        (["--batching", "windows"], "--batching windows is not a batching of --model transformer"),
        (["--batching", "padded"], "--batching padded"),
        (["--tokenizer", "char", "--cell", "gru"], "--cell"),
        (["--tokenizer", "char", "--embedding-dim", "0"], "one-hot"),
    ):
        fails(cli(capsys, "train", corpus, "--model", "transformer", *wrong, "--run-dir", tmp_path / "x"), *words)
    assert not (tmp_path / "x").exists()


def test_the_imdb_path_stays_without_tokenizer_or_batching(tmp_path, corpus, capsys):
    code, out, err = cli(
        capsys, "train", corpus, "--model", "transformer", "--max-steps", 2, "--run-dir", tmp_path / "v", *TINY[2:]
    )
    assert code == 0, err
    ckpt = models.load(tmp_path / "v" / "last.npz")
    assert ckpt.metadata["data"]["kind"] == "vectorized" and ckpt.metadata["cli"]["optimizer"] == "rmsprop"


def test_sample_with_primes_longer_than_the_window(tmp_path, corpus, capsys):
    """The window slides past sequence_length; with a prime of 3·T the KV-cache generation equals greedy
    decoding that re-runs the model on the last sequence_length tokens for every new token."""
    run = tmp_path / "r"
    code, _, err = cli(
        capsys, "train", corpus, "--tokenizer", "char", "--epochs", 2, "--lr", 0.01, "--run-dir", run, *TINY
    )
    assert code == 0, err
    prime = TEXT[:48]
    code, out, err = cli(capsys, "sample", run, "--prime", prime, "--length", 40, "--temperature", 0, 0.8)
    assert code == 0, err
    assert out.count(prime) == 2 and "--- greedy" in out

    ckpt = models.load(run / "last.npz", backend="numpy")
    model, tok = ckpt.model, ckpt.metadata["tokenizer"]
    ids = [tok["chars"].index(c) + 3 for c in prime]  # reserved ids 0, 1, 2 come first
    fast = model.generate(np.array(ids), 40, temperature=0.0)
    naive = list(ids)
    for _ in range(40):
        logits, _ = model.forward(np.array([naive[-model.sequence_length :]]))
        naive.append(int(np.argmax(logits[0, -1])))
    np.testing.assert_array_equal(fast, naive[len(ids) :])


def _train_command(corpus, run_dir, epochs):
    return [
        sys.executable, "-m", "scratchlm", "train", str(corpus), "--run-dir", str(run_dir), "--epochs", str(epochs),
        "--checkpoint-every", "10", "--tokenizer", "char", "--batching", "random",
        *TINY,
    ]  # fmt: skip


def test_kill_9_then_resume_of_random_batching_is_exact(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT * 3)
    killed = tmp_path / "killed"
    stopped_at = kill_9_after(_train_command(corpus, killed, 1000), killed, 30, tmp_path)

    code, _, err = cli(capsys, "train", "--resume", killed, "--epochs", 2)
    assert code == 0, err
    reference = tmp_path / "reference"
    code, _, err = cli(capsys, *_train_command(corpus, reference, 2)[3:])
    assert code == 0, err
    a, b = models.load(killed / "last.npz"), models.load(reference / "last.npz")
    assert a.metadata["train"]["step"] == b.metadata["train"]["step"] > stopped_at
    assert all(np.array_equal(a.model.params[k], p) for k, p in b.model.params.items())
    assert [e["loss"] for e in a.metadata["train"]["history"]] == [e["loss"] for e in b.metadata["train"]["history"]]


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("mpi4py") is None or shutil.which("mpiexec") is None,
    reason="needs mpi4py and mpiexec: pip install 'scratchlm[mpi]'",
)
def test_random_batching_under_mpiexec_takes_the_single_process_steps(tmp_path, capsys):
    """Every rank draws the same global batch of random windows and takes its share of the rows: two ranks
    take the steps of one process, validation included."""
    corpus = tmp_path / "dickens.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    args = ["train", corpus, "--tokenizer", "char", "--dtype", "float64", "--max-steps", 40, *TINY]
    env = {k: v for k, v in os.environ.items() if k not in ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE")}
    env.update(
        OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    )
    command = [shutil.which("mpiexec"), "-n", "2", sys.executable, "-m", "scratchlm", *map(str, args)]
    result = subprocess.run(
        [*command, "--run-dir", str(tmp_path / "two")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    code, _, err = cli(capsys, *args, "--run-dir", tmp_path / "one")
    assert code == 0, err
    a, b = models.load(tmp_path / "two" / "last.npz"), models.load(tmp_path / "one" / "last.npz")
    assert a.metadata["train"]["step"] == b.metadata["train"]["step"] == 40
    flat = [np.concatenate([m.model.params[k].ravel() for k in sorted(b.model.params)]) for m in (a, b)]
    assert np.linalg.norm(flat[0] - flat[1]) <= 1e-10 * np.linalg.norm(flat[1])  # (the key bias's gradient is 0)
    assert a.metadata["train"]["history"][0]["val_loss"] == pytest.approx(
        b.metadata["train"]["history"][0]["val_loss"], rel=1e-10
    )


def test_random_batching_serves_a_recurrent_model_too(tmp_path, corpus, capsys):
    """--batching random without --model transformer: a stateless LSTM on random windows, every position scored."""
    lstm = ["--hidden", "16", "--embedding-dim", "8", "--batch-size", "8", "--seq-len", "16", "--sample-length", "0"]
    code, out, err = cli(
        capsys, "train", corpus, "--batching", "random", "--epochs", 1, "--run-dir", tmp_path / "l", *lstm
    )
    assert code == 0 and "RecurrentLM" in out and "random windows" in out, err
    ckpt = models.load(tmp_path / "l" / "last.npz")
    assert not ckpt.model.stateful and ckpt.metadata["data"]["kind"] == "random"
    code, out, err = cli(capsys, "train", "--resume", tmp_path / "l", "--epochs", 2, "--no-progress")
    assert code == 0 and "resuming" in out, err


# -- issue 23 §2 and §6: the GPT-2 block options on the command line, and --preset nanogpt-cpu ---------------

GPT2 = ["--activation", "gelu_tanh", "--layernorm-epsilon", 1e-5, "--tie-embeddings", "--no-bias", "--init", "gpt2"]
NANOGPT_CPU = {  # nanoGPT's README CPU command on shakespeare_char, with model.py's and train.py's defaults
    "model": "transformer",
    "block": "gpt",
    "tokenizer": "char",
    "batching": "random",
    "seq_len": 64,
    "batch_size": 12,
    "layers": 4,
    "heads": 4,
    "embedding_dim": 128,
    "key_dim": 32,
    "dense_dim": 512,
    "dropout": 0.0,
    "activation": "gelu",
    "layernorm_epsilon": 1e-5,
    "tie_embeddings": True,
    "use_bias": False,
    "init": "gpt2",
    "optimizer": "adamw",
    "lr": 1e-3,
    "weight_decay": 0.1,
    "beta2": 0.99,
    "lr_schedule": "cosine",
    "warmup_steps": 100,
    "decay_steps": 2000,
    "min_lr": 1e-4,
    "clipnorm": 1.0,
    "max_steps": 2000,
    "val_fraction": 0.1,
    "grad_accum": 1,
    "dtype": "float32",
}


def settings(*argv):
    """The resolved settings of `scratchlm train argv...` (nothing read or trained)."""
    args = build_parser().parse_args(["train", *map(str, argv)])
    return resolve({k: getattr(args, k) for k in DEFAULTS if getattr(args, k) is not None})


def test_the_gpt2_options_reach_the_model_and_a_resume_keeps_them(tmp_path, corpus, capsys):
    run = tmp_path / "r"
    code, _, err = cli(
        capsys, "train", corpus, "--tokenizer", "char", "--dropout", 0.1, "--max-steps", 2, "--run-dir", run,
        *GPT2, *TINY,
    )  # fmt: skip
    assert code == 0, err
    ckpt = models.load(run / "last.npz")
    config = ckpt.model.config
    assert (config["activation"], config["layernorm_epsilon"], config["init"], config["dropout"]) == (
        "gelu_tanh",
        1e-5,
        "gpt2",
        0.1,
    )
    assert config["tie_embeddings"] is True and config["use_bias"] is False
    assert "dense/kernel" not in ckpt.model.params and not any(k.endswith("bias") for k in ckpt.model.params)
    recorded = ckpt.metadata["cli"]
    assert (recorded["activation"], recorded["tie_embeddings"], recorded["use_bias"]) == ("gelu_tanh", True, False)
    fails(cli(capsys, "train", "--resume", run, "--activation", "relu"), "--activation cannot change")
    fails(cli(capsys, "train", "--resume", run, "--no-bias"), "--use-bias cannot change")
    code, out, err = cli(capsys, "train", "--resume", run, "--max-steps", 4)
    assert code == 0 and "resuming" in out, err
    assert models.load(run / "last.npz").model.config == {**config}


def test_a_gpt_on_text_sizes_its_heads_and_feed_forward_as_gpt2_and_the_seed_keeps_its_own():
    gpt = settings("t.txt", "--model", "transformer", "--block", "gpt", "--tokenizer", "char", "--heads", 4)
    assert (gpt["embedding_dim"], gpt["key_dim"], gpt["dense_dim"]) == (256, 64, 1024)
    given = settings("t.txt", "--model", "transformer", "--block", "gpt", "--batching", "random", "--key-dim", 7)
    assert (given["key_dim"], given["dense_dim"]) == (7, 1024)
    given = settings("t.txt", "--model", "transformer", "--block", "gpt", "--tokenizer", "char", "--dense-dim", 9)
    assert (given["key_dim"], given["dense_dim"]) == (128, 9)
    for block in ("book", "gpt"):  # the IMDB seed's path, and the book block on text: the seed's sizes
        seed = settings("t.txt", "--model", "transformer", "--block", block)
        assert (seed["key_dim"], seed["dense_dim"], seed["activation"], seed["init"]) == (None, 2048, "relu", "keras")
    book = settings("t.txt", "--model", "transformer", "--tokenizer", "char")
    assert (book["key_dim"], book["dense_dim"], book["layernorm_epsilon"], book["use_bias"]) == (None, 2048, 1e-3, True)


def test_what_the_gpt2_options_and_the_preset_refuse(tmp_path, corpus, capsys):
    text = ["--model", "transformer", "--tokenizer", "char"]
    for wrong, words in (
        ([*text, "--dropout", 0.1], "--dropout is a setting of --block gpt"),
        ([*text, "--block", "gpt", "--dropout", 1.5], "--dropout must be a rate"),
        ([*text, "--layernorm-epsilon", 0], "--layernorm-epsilon must be a number > 0"),
        ([*text, "--layernorm-epsilon", "nan"], "--layernorm-epsilon must be a number > 0"),
        ([*text, "--block", "gpt", "--embedding-dim", 2, "--heads", 4], "--heads 4 share --embedding-dim 2"),
        (["--activation", "gelu", "--no-bias"], "--activation, --no-bias: settings of --model transformer"),
        (["--tie-embeddings"], "--tie-embeddings: settings of --model transformer"),
        (["--init", "gpt2", "--layernorm-epsilon", 1e-5], "--layernorm-epsilon: settings of --model transformer"),
        (["--preset", "nanogpt-cpu", "--model", "recurrent"], "leave out --model recurrent"),
        (["--preset", "nanogpt-cpu", "--block", "book"], "--preset nanogpt-cpu trains a --model transformer"),
        (["--preset", "nanogpt-cpu", "--batching", "windows"], "--batching windows is not a batching"),
        (["--preset", "nanogpt-cpu", "--cell", "gru"], "--cell: not a setting of --model transformer"),
        (["--activation", "swish"], "invalid choice"),
        (["--preset", "gpt-4"], "invalid choice"),
    ):
        fails(cli(capsys, "train", corpus, *wrong, "--run-dir", tmp_path / "x"), *words)
    assert not (tmp_path / "x").exists()


def test_the_preset_resolves_to_nanogpts_cpu_command_and_options_given_override_it():
    s = settings("tinyshakespeare", "--preset", "nanogpt-cpu")
    assert {k: s[k] for k in NANOGPT_CPU} == NANOGPT_CPU and s["preset"] == "nanogpt-cpu"
    assert model_config(s, 65) == {
        "kind": "transformer",
        "vocab_size": 65,
        "sequence_length": 64,
        "embed_dim": 128,
        "dense_dim": 512,
        "num_heads": 4,
        "key_dim": 32,
        "num_layers": 4,
        "block": "gpt",
        "dtype": "float32",
        "seed": 0,
        "activation": "gelu",
        "layernorm_epsilon": 1e-5,
        "tie_embeddings": True,
        "use_bias": False,
        "init": "gpt2",
        "dropout": 0.0,
        "pad_id": 0,
    }
    schedule = build_schedule(s)
    assert [schedule(step) for step in (100, 1050, 2000, 5000)] == pytest.approx([1e-3, 5.5e-4, 1e-4, 1e-4])
    s = settings("tinyshakespeare", "--preset", "nanogpt-cpu", "--max-steps", 3, "--dropout", 0.2, "--heads", 2)
    assert (s["max_steps"], s["decay_steps"], s["dropout"], s["heads"], s["key_dim"]) == (3, 2000, 0.2, 2, 32)


def test_train_help_says_options_given_override_the_preset(capsys):
    code, out, _ = cli(capsys, "train", "--help")
    assert (
        code == 0 and "--preset {nanogpt-cpu}" in out and "options given besides override them" in " ".join(out.split())
    )


def test_the_preset_trains_tinyshakespeare_and_a_resume_refuses_another_preset(tmp_path, capsys):
    run = tmp_path / "gpt"
    argv = ["--preset", "nanogpt-cpu", "--max-steps", 3, "--sample-length", 0, "--no-progress"]
    code, out, err = cli(capsys, "train", "tinyshakespeare", *argv, "--run-dir", run)
    assert code == 0, err
    assert "12 random windows of 64" in out and "TransformerLM" in out
    ckpt = models.load(run / "last.npz")
    assert ckpt.metadata["train"]["step"] == 3 and ckpt.metadata["cli"]["preset"] == "nanogpt-cpu"
    assert ckpt.model.config == model_config(ckpt.metadata["cli"], ckpt.model.vocab_size)
    V = ckpt.model.vocab_size  # tiny Shakespeare's 65 characters and <pad>, <unk>, <eos>
    assert sum(int(p.size) for p in ckpt.model.params.values()) == 4 * 12 * 128**2 + (V + 64) * 128 + 9 * 128
    fails(cli(capsys, "train", "--resume", run, "--preset", "nanogpt-cpu"), "--preset cannot change")


def test_a_resume_refuses_gpt2_settings_its_model_contradicts_and_reads_older_runs(tmp_path, corpus, capsys):
    run = tmp_path / "r"
    code, _, err = cli(capsys, "train", corpus, "--tokenizer", "char", "--max-steps", 1, "--run-dir", run, *TINY)
    assert code == 0, err
    ckpt = models.load(run / "last.npz")
    older = {k: v for k, v in ckpt.metadata["cli"].items() if k not in ("activation", "init", "preset")}
    settings_back = settings_of({"cli": older}, run)
    assert (settings_back["activation"], settings_back["init"], settings_back["preset"]) == ("relu", "keras", None)
    tokenizer = tokenizer_of(ckpt.metadata, ckpt.model.vocab_size, run)
    check_agreement(settings_back, ckpt.model.config, tokenizer, ckpt.metadata, run)
    for name, value in (("activation", "gelu"), ("tie_embeddings", True), ("layernorm_epsilon", 1e-5)):
        with pytest.raises(CheckpointError, match=f"say {name} "):
            check_agreement({**settings_back, name: value}, ckpt.model.config, tokenizer, ckpt.metadata, run)
    with pytest.raises(CheckpointError, match="'activation'"):
        settings_of({"cli": {**older, "activation": "tanh"}}, run)


def test_the_readmes_spelled_out_command_is_the_preset():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("The same run, each setting spelled out:")[1].split("```console\n$ ")[1].split("\n```")[0]
    spelled = settings(*shlex.split(block.replace("\\\n", ""))[2:])
    assert spelled == {
        **settings("tinyshakespeare", "--preset", "nanogpt-cpu", "--run-dir", "runs/gpt"),
        "preset": None,
    }
