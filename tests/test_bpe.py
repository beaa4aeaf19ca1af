"""Issue 24 §1: byte-level BPE. The same ids as Hugging Face ``tokenizers`` (fixtures made by
tests/reference/make_bpe_reference.py; a live comparison under the ``hf`` marker), decode(encode(s)) == s,
training by hand and its determinism, GPT-2's files read with every check, checkpoints and the CLI."""

import json
import os
import string
from pathlib import Path

import numpy as np
import pytest
from helpers.cli import cli, fails
from hypothesis import given, settings
from hypothesis import strategies as st

import scratchlm.bpe as bpe
from scratchlm import models
from scratchlm.bpe import BYTE_ORDER, BYTE_TO_CHAR, END_OF_TEXT, BPETokenizer
from scratchlm.cli.metadata import settings_of
from scratchlm.text import VocabularyError, from_config

FIXTURES = Path(__file__).parent / "reference" / "bpe"
TRAIN_TEXT = (FIXTURES / "train.txt").read_text(encoding="utf-8")
EXPECTED = json.loads((FIXTURES / "expected.json").read_text(encoding="utf-8"))
# Every string UTF-8 can encode: all code points but the surrogates (what decode(encode(s)) == s is promised for).
UNICODE = st.text(st.characters(codec="utf-8"), max_size=80)


def _files_in(folder):
    return folder / "vocab.json", folder / "merges.txt"


def _files(name):
    return _files_in(FIXTURES / name)


@pytest.fixture(scope="module")
def ours():
    return BPETokenizer.from_files(*_files("ours"))


@pytest.fixture(scope="module")
def hf_trained():
    return BPETokenizer.from_files(*_files("hf"))


# -- GPT-2's byte table ----------------------------------------------------------------------


def test_the_byte_table_is_gpt2s():
    assert len(set(BYTE_TO_CHAR)) == 256 and sorted(BYTE_ORDER) == list(range(256))
    kept = [b for b in range(256) if 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255]
    assert len(kept) == 188 and all(BYTE_TO_CHAR[b] == chr(b) for b in kept)
    others = [b for b in range(256) if b not in kept]
    assert [BYTE_TO_CHAR[b] for b in others] == [chr(256 + n) for n in range(68)]
    assert BYTE_ORDER == kept + others  # GPT-2's ids 0..255: "!" is 0, byte 0 ("Ā") is 188
    assert (BYTE_TO_CHAR[ord(" ")], BYTE_TO_CHAR[ord("\n")]) == ("Ġ", "Ċ")


# -- the same ids as Hugging Face -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["ours", "hf"])
def test_ids_equal_hugging_faces_on_the_same_files(name, request):
    """ours: merges learned here; hf: Hugging Face's BpeTrainer (its bytes in another order, <|endoftext|> at 0).
    The last string is the whole training text."""
    tok = request.getfixturevalue("ours" if name == "ours" else "hf_trained")
    for text, ids, decoded in zip(EXPECTED["strings"], EXPECTED[name]["ids"], EXPECTED[name]["decoded"], strict=True):
        got = tok.encode(text)
        assert got.tolist() == ids, text
        assert tok.decode(got) == decoded == text


def test_hugging_faces_trainer_learns_our_merges_with_end_of_text_first(ours, hf_trained):
    """On the fixture text Hugging Face's BpeTrainer learns the same 543 merges as ours (its alphabet, sorted by
    character, is the table's order); its vocabulary has <|endoftext|> at 0, so each other id is ours + 1."""
    assert hf_trained.merges == ours.merges and len(ours.merges) == 543
    assert hf_trained.tokens == [END_OF_TEXT] + ours.tokens[:-1]
    assert hf_trained.eos_id == 0 and hf_trained.special_ids == (0,) and hf_trained.decode([0]) == END_OF_TEXT


def test_our_trainer_wrote_the_committed_files(tmp_path):
    """Training is deterministic: the merges of the fixture text are those committed (and read by Hugging Face)."""
    tok = BPETokenizer.train(TRAIN_TEXT, 800)
    vocab, merges = tok.to_files(tmp_path)
    committed = _files("ours")
    assert vocab.read_bytes() == committed[0].read_bytes()
    assert merges.read_bytes() == committed[1].read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["merges.txt", "vocab.json"]  # no temporary file left


@pytest.fixture(scope="module")
def make():
    """tests/reference/make_bpe_reference.py, which builds Hugging Face's tokenizers (skipped without them)."""
    pytest.importorskip("tokenizers")
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_bpe_reference", FIXTURES.parent / "make_bpe_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def references(make):
    """Hugging Face's tokenizer on each fixture vocabulary."""
    return {name: make.byte_level(*_files(name)) for name in ("ours", "hf")}


@pytest.mark.hf
@settings(max_examples=300, deadline=None)
@given(text=UNICODE, ids=st.lists(st.integers(0, 10**6), max_size=30))
def test_live_against_hugging_face(text, ids, ours, hf_trained, references):
    """Hypothesis strings encoded, and random ids decoded (broken UTF-8 included), as Hugging Face does."""
    for name, tok in (("ours", ours), ("hf", hf_trained)):
        assert tok.encode(text).tolist() == references[name].encode(text).ids, (name, text)
        ids = [i % tok.vocab_size for i in ids]
        assert tok.decode(ids) == references[name].decode(ids), (name, ids)


@pytest.mark.hf
@settings(max_examples=100, deadline=None)
@given(
    text=st.text(st.sampled_from(" \t\nab'sdé日😀1,"), max_size=300) | UNICODE,
    vocab_size=st.integers(257, 400),
)
def test_live_training_learns_hugging_faces_merges(text, vocab_size, make, tmp_path_factory):
    """BpeTrainer(min_frequency=2, the whole byte alphabet, <|endoftext|>) learns the merges ours learns: the same
    counts, the same tie-break (its alphabet sorted by character is the table's order), the same stop."""
    folder = tmp_path_factory.mktemp("hf")
    make.train_hf(text, folder, vocab_size)
    assert BPETokenizer.from_files(*_files_in(folder)).merges == BPETokenizer.train(text, vocab_size).merges


# -- round trips -------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(UNICODE)
def test_decode_encode_is_the_identity_on_every_utf8_string(ours, text):
    ids = ours.encode(text)
    assert ids.dtype == np.uint16
    assert ours.decode(ids) == text


def test_lone_surrogates_are_refused_or_skipped(ours):
    with pytest.raises(VocabularyError, match="lone surrogate") as err:
        ours.encode("a\udc80b\udc80")
    assert err.value.missing == ["\udc80"] and "--unknown skip" in str(err.value)
    with pytest.raises(VocabularyError, match="lone surrogate"):
        ours.encode("\ud83d", unknown="unk")  # there is no <unk>
    assert ours.encode("a\udc80b", unknown="skip").tolist() == ours.encode("ab").tolist()
    with pytest.raises(VocabularyError, match="lone surrogate"):
        BPETokenizer.train("ab\udcff", 300)


def test_decode_joins_bytes_across_tokens_and_replaces_broken_utf8(ours):
    e_acute = [ours.tokens.index(BYTE_TO_CHAR[b]) for b in "é".encode()]
    assert ours.decode(e_acute) == "é" and ours.decode(e_acute[:1]) == "\ufffd"
    assert ours.decode([]) == "" and ours.decode(np.array([[e_acute[0]], [e_acute[1]]])) == "é"
    with pytest.raises(VocabularyError, match=r"ids must lie in \[0, 800\)"):
        ours.decode([800])
    with pytest.raises(VocabularyError):
        ours.decode([-1])


def test_end_of_text_is_last_special_and_never_encoded(ours):
    assert ours.vocab_size == 800 and ours.eos_id == 799 and ours.special_ids == (799,)
    assert ours.tokens[:256] == [BYTE_TO_CHAR[b] for b in BYTE_ORDER] and ours.tokens[0] == "!"
    assert ours.pad_id is None and ours.unk_id is None and ours.reserved is False
    assert 799 not in ours.encode(f"a{END_OF_TEXT}b").tolist()  # the text is 13 characters, as Hugging Face
    assert ours.decode([5, 799, 5]) == f"&{END_OF_TEXT}&"
    plain = BPETokenizer.train("abc abc", 256, end_of_text=False)
    assert plain.eos_id is None and plain.special_ids == () and plain.encode("abc").dtype == np.uint8


def test_pre_split_in_chunks_gives_the_words_of_the_whole_text(monkeypatch):
    text = TRAIN_TEXT[:4000] + " \n\n  x  \t" + "y" * 50 + "  "
    whole = bpe._PRESPLIT.findall(text)
    monkeypatch.setattr(bpe, "_CHUNK", 7)
    chunks = list(bpe._presplit(text))
    assert len(chunks) > 100 and [w for c in chunks for w in c] == whole


@settings(max_examples=200, deadline=None)
@given(st.text(st.sampled_from(" \t\n\u00a0\u3000ab1é!'s😀"), max_size=60), st.integers(1, 8))
def test_pre_split_in_chunks_is_exact_for_any_text(text, chunk):
    whole = bpe._PRESPLIT.findall(text)
    original, bpe._CHUNK = bpe._CHUNK, chunk
    try:
        assert [w for c in bpe._presplit(text) for w in c] == whole
    finally:
        bpe._CHUNK = original


def test_the_word_cache_is_bounded_and_changes_no_id(monkeypatch, ours):
    monkeypatch.setattr(bpe, "CACHE_WORDS", 4)
    tok = BPETokenizer.from_files(*_files("ours"))
    assert tok.encode(TRAIN_TEXT).tolist() == ours.encode(TRAIN_TEXT).tolist() == EXPECTED["ours"]["ids"][-1]
    assert 1 <= len(tok._cache) <= 4 < len(ours._cache)


def test_lower_case_tokenizer():
    tok = BPETokenizer.train("Hello hello HELLO", 300, lower=True)
    assert tok.decode(tok.encode("HeLLo")) == "hello" and tok.config["lower"] is True
    assert from_config(json.loads(json.dumps(tok.config))).encode("HELLO").tolist() == tok.encode("hello").tolist()


# -- training ------------------------------------------------------------------------------------------


def test_training_merges_the_most_frequent_pair_with_ties_to_the_smaller_ids():
    """ab ab ab cd cd cd -> words ab, Ġab ×2, Ġcd ×3. N(a,b) = N(Ġ,c) = N(c,d) = 3: (a, b) has the smallest ids
    (64, 65); then N(Ġ,ab) = 2 < N(Ġ,c) = N(c,d) = 3, and (c, d) = (66, 67) < (Ġ, c) = (220, 66); then Ġcd (3),
    then Ġab (2); then no pair occurs twice."""
    tok = BPETokenizer.train("ab ab ab cd cd cd", 1000)
    assert tok.merges == [("a", "b"), ("c", "d"), ("Ġ", "cd"), ("Ġ", "ab")]
    assert tok.tokens[256:] == ["ab", "cd", "Ġcd", "Ġab", END_OF_TEXT] and tok.vocab_size == 261
    assert tok.encode("ab cd abcd").tolist() == [256, 258, 259, 257]  # Ġ a b c d -> Ġ ab c d -> Ġ ab cd -> Ġab cd
    assert tok.encode(" ab").tolist() == [259]
    assert BPETokenizer.train("ab ab ab cd cd cd", 258).merges == [("a", "b")]  # 256 bytes, 1 merge, <|endoftext|>


def test_training_is_deterministic_and_counts_words_by_their_frequency():
    text = "the cat sat on the mat. " * 20 + "Ünïcödé 日本語 😀😀 " * 3
    first, second = BPETokenizer.train(text, 320), BPETokenizer.train(text, 320)
    assert first.tokens == second.tokens and first.merges == second.merges
    assert first.vocab_size < 320  # it stopped when no pair occurred twice any more
    assert first.encode(" the").tolist() == [first.tokens.index("Ġthe")]
    assert first.decode(first.encode(text)) == text and len(first.encode(text)) < len(text) / 3


@pytest.mark.parametrize("size", [256, 0, -1, 2.5, True, "300"])
def test_training_refuses_a_vocabulary_below_the_byte_symbols(size):
    with pytest.raises(VocabularyError, match="vocab_size must be a whole number >= 257"):
        BPETokenizer.train("abc", size)


def test_training_shows_a_progress_bar_when_asked(capsys):
    BPETokenizer.train("ab ab ab cd cd cd", 300, progress=True)
    assert "BPE merges" in capsys.readouterr().err


@pytest.mark.slow
def test_tiny_shakespeare_trains_to_2000_tokens_in_seconds():
    import time

    from scratchlm import corpora

    text = corpora.load_text("tinyshakespeare")
    start = time.perf_counter()
    tok = BPETokenizer.train(text, 2000)
    seconds = time.perf_counter() - start
    assert tok.vocab_size == 2000 and seconds < 30, seconds
    assert tok.decode(tok.encode(text)) == text


# -- GPT-2's files, checked -------------------------------------------------------------------------------


def _write(tmp_path, vocab, merges="#version: 0.2\n"):
    v, m = tmp_path / "vocab.json", tmp_path / "merges.txt"
    v.write_text(vocab if isinstance(vocab, str) else json.dumps(vocab), encoding="utf-8")
    m.write_text(merges, encoding="utf-8")
    return v, m


def _bytes_vocab(*extra):
    tokens = [BYTE_TO_CHAR[b] for b in BYTE_ORDER] + list(extra)
    return {t: i for i, t in enumerate(tokens)}


def test_files_round_trip_and_minimal_files(tmp_path, ours):
    again = BPETokenizer.from_files(*ours.to_files(tmp_path))
    assert again.tokens == ours.tokens and again.merges == ours.merges
    minimal = BPETokenizer.from_files(*_write(tmp_path, _bytes_vocab("ab"), "#version: 0.2\na b"))
    assert minimal.encode("ab").tolist() == [256] and minimal.eos_id is None and minimal.special_ids == ()
    crlf = BPETokenizer.from_files(*_write(tmp_path, _bytes_vocab("ab"), "a b\r\n"))  # no #version line, CRLF
    assert crlf.merges == [("a", "b")]


@pytest.mark.parametrize(
    "vocab, merges, words",
    [
        ("{not json", "", ["vocab.json", "not JSON"]),
        ("[" * 100000 + "]" * 100000, "", ["vocab.json", "not JSON"]),
        ("[1, 2]", "", ["JSON list, not an object"]),
        ({**_bytes_vocab(), "ab": 300}, "", ["'ab'", "id 300", "0 ... 256"]),  # a gap: not dense
        ({**_bytes_vocab(), "ab": 5}, "", ["'ab'", "id 5", "each once"]),  # an id twice
        ({**_bytes_vocab(), "ab": -1}, "", ["id -1"]),
        ({**_bytes_vocab(), "ab": True}, "", ["id True"]),
        ({**_bytes_vocab(), "ab": 256.0}, "", ["id 256.0"]),
        ({"a": 0, "b": 1}, "", ["lacks 254", "initial_alphabet"]),
        (_bytes_vocab("ab"), "a c\n", ["merge 1", "'ac'", "vocabulary lacks"]),
        (_bytes_vocab("ab"), "a x y\n", ["line 1", "not a merge"]),
        (_bytes_vocab("ab"), "#version: 0.2\na b\n\n", ["line 3", "not a merge"]),
        (_bytes_vocab("ab"), "a zz\n", ["merge 1", "'zz'", "vocabulary lacks"]),
        (_bytes_vocab("ab", "abc"), "ab c\na b\n", ["merge 1", "earlier merge"]),
        (_bytes_vocab("ab"), "a b\nb c\n", ["merge 2", "'bc'", "vocabulary lacks"]),
    ],
)
def test_from_files_refuses_bad_files_with_one_message(tmp_path, vocab, merges, words):
    paths = _write(tmp_path, vocab, merges)
    with pytest.raises(VocabularyError) as err:
        BPETokenizer.from_files(*paths)
    message = str(err.value)
    assert "\n" not in message and all(w in message for w in words), message


def test_from_files_refuses_huge_and_special_files_before_reading_them(tmp_path):
    vocab, merges = _write(tmp_path, _bytes_vocab())
    with open(vocab, "r+b") as f:
        f.truncate(bpe.MAX_FILE_BYTES + 1)  # sparse: nothing written
    with pytest.raises(VocabularyError, match="larger than 16 MiB"):
        BPETokenizer.from_files(vocab, merges)
    with pytest.raises(VocabularyError, match="not a regular file"):
        BPETokenizer.from_files(tmp_path, merges)
    with pytest.raises(VocabularyError, match="no such file"):
        BPETokenizer.from_files(tmp_path / "missing.json", merges)
    vocab.write_text(json.dumps(_bytes_vocab()), encoding="utf-8")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(VocabularyError, match="FIFO"):
        BPETokenizer.from_files(vocab, tmp_path / "fifo")


# -- config and checkpoints --------------------------------------------------------------------------------


def test_config_round_trips_through_json(ours):
    config = json.loads(json.dumps(ours.config))
    assert config["kind"] == "bpe" and config["tokens"] == ours.tokens and config["merges"][0] == list(ours.merges[0])
    again = from_config(config)
    assert again.encode(TRAIN_TEXT).tolist() == ours.encode(TRAIN_TEXT).tolist()
    assert repr(again) == f"BPETokenizer(V=800, merges={len(ours.merges)}, lower=False)"


@pytest.mark.parametrize(
    "change, words",
    [
        ({"tokens": "abc"}, ["'tokens' must be a list of tokens"]),
        ({"merges": None}, ["'merges' must be a list"]),
        ({"lower": 1}, ["'lower' must be true or false"]),
        ({"merges": [["a"]]}, ["merge 1 must be a pair"]),
        ({"merges": [["a", 5]]}, ["merge 1 must be a pair"]),
        ({"tokens": ["!", 3]}, ["non-empty strings"]),
        ({"tokens": ["!", "!"]}, ["repeats '!'"]),
    ],
)
def test_from_config_refuses_malformed_bpe_configs(ours, change, words):
    with pytest.raises(VocabularyError) as err:
        from_config({**ours.config, **change})
    assert all(w in str(err.value) for w in words), str(err.value)


# -- the CLI: train, sample, eval, resume ----------------------------------------------------------------------

CORPUS = ("Ünïcödé café — naïve résumé. 日本語のテキスト 😀! It's the best of times, isn't it?\n") * 60
TINY = ["--batch-size", "4", "--seq-len", "12", "--sample-length", "20", "--no-progress", "--val-fraction", "0.1"]


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "mixed.txt"
    path.write_text(CORPUS, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "model",
    [["--hidden", "16", "--embedding-dim", "8"], ["--model", "transformer", "--embedding-dim", "16", "--layers", "1"]],
    ids=["lstm", "transformer"],
)
def test_cli_trains_samples_and_evaluates_with_bpe(tmp_path, corpus, capsys, model):
    run = tmp_path / "r"
    code, out, err = cli(capsys, "train", corpus, "--tokenizer", "bpe", "--vocab-size", 300, "--epochs", 1, "--run-dir",
                         run, *TINY, *model)  # fmt: skip
    assert code == 0, err
    assert "BPETokenizer(V=300" in out and "----- temperature" in out
    ckpt = models.load(run / "last.npz")
    tok = from_config(ckpt.metadata["tokenizer"])
    assert tok.kind == "bpe" and tok.vocab_size == ckpt.model.vocab_size == 300
    assert ckpt.metadata["cli"]["vocab_size"] == 300 and ckpt.metadata["cli"]["tokenizer"] == "bpe"
    assert tok.decode(tok.encode(CORPUS)) == CORPUS

    code, out, err = cli(capsys, "sample", run, "--prime", "日本", "--length", 30, "--temperature", 0.5)
    assert code == 0, err
    assert out.startswith("--- temperature 0.5\n日本")
    code, out, err = cli(capsys, "eval", run)
    assert code == 0, err
    assert "bits per token" in out and "character" not in out
    code, out, err = cli(capsys, "info", run / "last.npz")
    assert code == 0 and "bpe, 300 tokens" in out, err


def test_cli_resumes_a_bpe_run(tmp_path, corpus, capsys):
    run = tmp_path / "r"
    options = ["--tokenizer", "bpe", "--vocab-size", 280, "--hidden", "8", "--run-dir", run, *TINY]
    code, _, err = cli(capsys, "train", corpus, "--epochs", 1, *options)
    assert code == 0, err
    code, out, err = cli(capsys, "train", "--resume", run, "--epochs", 2)
    assert code == 0 and "resuming" in out, err
    ckpt = models.load(run / "last.npz")
    assert ckpt.metadata["train"]["epoch"] == 2
    older = {k: v for k, v in ckpt.metadata["cli"].items() if k != "vocab_size"}  # a run from before --vocab-size
    assert settings_of({"cli": older}, run)["vocab_size"] == 2000


@pytest.mark.parametrize(
    "options, words",
    [
        (["--tokenizer", "bpe", "--vocab-size", "256"], ["--vocab-size must be at least 257", "got 256"]),
        (["--tokenizer", "bpe", "--vocab-size", "0"], ["--vocab-size", "expected a number >= 1"]),
        (["--tokenizer", "bpe", "--vocab-size", "many"], ["--vocab-size", "whole number"]),
        (["--vocab-size", "500"], ["--vocab-size is a setting of --tokenizer bpe"]),
        (["--tokenizer", "word", "--vocab-size", "500"], ["--vocab-size is a setting of --tokenizer bpe"]),
        (["--tokenizer", "bpe", "--batching", "padded"], ["--batching padded", "<pad>"]),
        (["--model", "transformer", "--vocab-size", "500"], ["--vocab-size is a setting of --tokenizer bpe"]),
    ],
)
def test_cli_refuses_a_bad_vocab_size_before_training(tmp_path, corpus, capsys, options, words):
    fails(cli(capsys, "train", corpus, "--run-dir", tmp_path / "r", *options, *TINY), *words)
    assert not (tmp_path / "r" / "last.npz").exists()


def test_every_printable_ascii_character_is_one_token(ours):
    for c in string.printable:
        assert ours.decode(ours.encode(c)) == c
