"""`scratchlm info|sample|eval HF_FOLDER`: a Hugging Face GPT-2 folder (config.json, model.safetensors, vocab.json,
merges.txt) on the command line, written here by interop.to_hf from a tiny random GPT-2 and a BPE trained on a
small text."""

import json

import numpy as np
import pytest

from scratchlm import get_backend, models
from scratchlm.bpe import BPETokenizer
from scratchlm.interop import from_hf, to_hf
from scratchlm.models import TransformerLM
from tests.helpers.cli import cli, fails

TEXT = "The quick brown fox jumps over the lazy dog. Café, naïve, 東京, ünïcödé! " * 20


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A GPT-2 folder: 2 blocks, E 16, 2 heads, context 16, with its tokenizer."""
    tokenizer = BPETokenizer.train(TEXT, 300)
    model = TransformerLM(
        tokenizer.vocab_size,
        16,
        embed_dim=16,
        dense_dim=64,
        num_heads=2,
        key_dim=8,
        num_layers=2,
        block="gpt",
        activation="gelu_tanh",
        layernorm_epsilon=1e-5,
        tie_embeddings=True,
        init="gpt2",
        pad_id=None,
        backend=get_backend("numpy", "float32"),
        seed=3,
    )
    path = tmp_path_factory.mktemp("gpt2")
    to_hf(model, path, tokenizer)
    return path


def test_info_reads_the_config_and_header(capsys, folder):
    code, out, err = cli(capsys, "info", folder)
    assert code == 0, err
    assert "Hugging Face GPT-2" in out and "2 blocks, 2 heads, embedding 16" in out
    model = from_hf(folder)
    assert f"{sum(p.size for p in model.params.values()):,} parameters" in out
    assert "bpe (byte-level), " in out


def test_sample_decodes_whole_characters(capsys, folder):
    code, out, err = cli(capsys, "sample", folder, "--prime", "Café 東", "--length", "12", "--temperature", "0", "1")
    assert code == 0, err
    assert out.count("--- ") == 2 and "Café 東" in out


def test_sample_greedy_is_the_full_forward_argmax(capsys, folder):
    """The CLI's greedy sample is the token-by-token argmax of full forward passes (KV cache or not)."""
    code, out, _ = cli(capsys, "sample", folder, "--prime", "The quick", "--length", "6", "--temperature", "0")
    assert code == 0
    model, tokenizer = from_hf(folder), BPETokenizer.from_files(folder / "vocab.json", folder / "merges.txt")
    ids = list(tokenizer.encode("The quick"))
    for _ in range(6):
        logits, _ = model.forward(np.array([ids[-16:]]))
        ids.append(int(np.argmax(logits[0, -1])))
    assert tokenizer.decode(ids) in out


def test_eval_scores_a_text_file(capsys, folder, tmp_path):
    text = tmp_path / "held.txt"
    text.write_text(TEXT[:400], encoding="utf-8")
    code, out, err = cli(capsys, "eval", folder, text, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["tokens"] > 0 and np.isfinite(result["nats_per_token"]) and "bits_per_character" not in result


def test_eval_without_a_text_says_what_to_do(capsys, folder):
    fails(cli(capsys, "eval", folder), "name a TEXT")


def test_a_folder_without_its_tokenizer_is_one_line(capsys, folder, tmp_path):
    for name in ("config.json", "model.safetensors"):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    fails(cli(capsys, "sample", tmp_path, "--prime", "x"), "no tokenizer", "vocab.json")


def test_a_pickle_is_refused_in_one_line(capsys, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x02}q\x00.")
    fails(cli(capsys, "sample", tmp_path, "--prime", "x"), "pickle")


def _finetune(capsys, folder, corpus, run, *more):
    argv = ["--init", folder, "--seq-len", 8, "--batch-size", 2, "--sample-length", 0, "--no-progress"]
    return cli(capsys, "train", corpus, *argv, "--run-dir", run, *more)


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT * 3, encoding="utf-8")
    return path


def test_train_init_fine_tunes_the_folder_and_resumes_exactly(capsys, folder, corpus, tmp_path):
    code, out, err = _finetune(capsys, folder, corpus, tmp_path / "full", "--max-steps", 4)
    assert code == 0, err
    full = models.load(tmp_path / "full" / "last.npz")
    assert full.model.pad_id is None and full.model.sequence_length == 8 and full.metadata["tokenizer"]["kind"] == "bpe"
    assert full.metadata["cli"]["optimizer"] == "adamw" and full.metadata["cli"]["lr"] == 1e-4
    source = from_hf(folder)
    moved = full.model.params["embedding/token_embeddings"] - source.params["embedding/token_embeddings"]
    assert 0 < np.abs(moved).max() < 1e-2  # started from the folder's weights, 4 small steps away
    np.testing.assert_array_equal(  # its first 8 positions: rows nobody trained on are the folder's
        full.model.params["embedding/position_embeddings"].shape, (8, 16)
    )
    assert _finetune(capsys, folder, corpus, tmp_path / "half", "--max-steps", 2)[0] == 0
    code, _, err = cli(capsys, "train", "--resume", tmp_path / "half", "--max-steps", 4, "--no-progress")
    assert code == 0, err
    resumed = models.load(tmp_path / "half" / "last.npz")
    for name, p in full.model.params.items():
        np.testing.assert_array_equal(resumed.model.params[name], p, err_msg=name)
    code, out, err = cli(capsys, "sample", tmp_path / "full", "--prime", "The", "--length", 5)
    assert code == 0, err


def test_train_init_refusals_are_one_line(capsys, folder, corpus, tmp_path, monkeypatch):
    run = tmp_path / "x"
    fails(_finetune(capsys, folder, corpus, run, "--layers", 3), "brings its own architecture", "--layers")
    fails(_finetune(capsys, folder, corpus, run, "--tokenizer", "char"), "--tokenizer")
    fails(cli(capsys, "train", corpus, "--init", folder, "--seq-len", 17, "--run-dir", run), "at most 16")
    fails(cli(capsys, "train", corpus, "--init", tmp_path, "--run-dir", run), "neither keras, gpt2 nor a folder")
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((folder / name).read_bytes())
    fails(cli(capsys, "train", corpus, "--init", bare, "--run-dir", run), "--init: ", "no tokenizer", "vocab.json")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text("{}")
    fails(cli(capsys, "train", corpus, "--init", "gpt2", "--run-dir", run), "--init ./gpt2")
    assert not run.exists()


def test_sample_without_a_prime_starts_from_end_of_text(capsys, folder):
    code, out, err = cli(capsys, "sample", folder, "--length", 5, "--temperature", "1")
    assert code == 0, err
    assert out.startswith("--- temperature 1\n") and "<|endoftext|>" not in out
