"""Tokenizers: round trips, reserved ids, unknown-token policies, persistence."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchlm.text import CharTokenizer, VocabularyError, WordTokenizer, from_config


def test_char_book_mode_has_no_reserved_ids():
    tok = CharTokenizer.fit("Hello, World", lower=True, reserved=False)
    assert tok.vocab_size == len(set("hello, world")) == 9
    assert tok.pad_id is tok.unk_id is tok.eos_id is None and tok.special_ids == ()
    assert tok.tokens == sorted(set("hello, world"))  # ids in sorted character order (Keras)
    assert tok.decode(tok.encode("HELLO")) == "hello"


def test_char_reserved_ids_come_first():
    tok = CharTokenizer.fit("abca")
    assert (tok.pad_id, tok.unk_id, tok.eos_id) == (0, 1, 2) and tok.vocab_size == 6
    assert tok.encode("abc").tolist() == [3, 4, 5]
    assert tok.decode([2, 3, 1]) == "<eos>a<unk>"


@settings(max_examples=50, deadline=None)
@given(st.text(min_size=1, max_size=200))
def test_char_round_trip(text):
    tok = CharTokenizer.fit(text)
    ids = tok.encode(text)
    assert ids.dtype == np.uint8 or tok.vocab_size > 256
    assert tok.decode(ids) == text


def test_char_encode_is_chunked_without_changing_the_result(monkeypatch):
    import scratchlm.text as text_module

    text = "the quick brown fox jumps over the lazy dog " * 50
    tok = CharTokenizer.fit(text)
    whole = tok.encode(text)
    monkeypatch.setattr(text_module, "_CHUNK", 7)
    assert np.array_equal(tok.encode(text), whole)


def test_char_unknown_policies():
    tok = CharTokenizer.fit("abc")
    with pytest.raises(VocabularyError) as err:
        tok.encode("abzxz")
    assert err.value.missing == ["x", "z"] and "'x', 'z'" in str(err.value)
    assert tok.decode(tok.encode("abzxz", unknown="skip")) == "ab"
    assert tok.encode("abz", unknown="unk").tolist() == [3, 4, tok.unk_id]
    with pytest.raises(VocabularyError, match="unknown must be"):
        tok.encode("a", unknown="ignore")


def test_lone_surrogates_are_unknown_characters():
    tok = CharTokenizer.fit("abc")  # e.g. an undecodable byte on the command line: '\udcff'
    with pytest.raises(VocabularyError) as err:
        tok.encode("a\udcff")
    assert err.value.missing == ["\udcff"]


def test_char_unk_needs_a_reserved_id():
    tok = CharTokenizer.fit("abc", reserved=False)
    with pytest.raises(VocabularyError, match="skip"):
        tok.encode("abz", unknown="unk")


def test_char_vocabulary_checks():
    with pytest.raises(VocabularyError):
        CharTokenizer(["a", "a"])
    with pytest.raises(VocabularyError):
        CharTokenizer(["ab"])
    with pytest.raises(VocabularyError, match="empty"):
        CharTokenizer.fit("")
    with pytest.raises(VocabularyError):
        CharTokenizer.fit("ab").decode([5])


def test_non_bmp_characters():
    text = "snow \u2603 and a \U0001f600 face"
    tok = CharTokenizer.fit(text)
    assert tok.decode(tok.encode(text)) == text


def test_word_split_pads_punctuation_and_lower_cases():
    tok = WordTokenizer.fit("x")
    assert tok.split("Pour, then STIR. (Gently!)") == ["pour", ",", "then", "stir", ".", "(", "gently", "!", ")"]


def test_word_vocabulary_by_frequency_capped():
    text = "b b b a a c | d d d d"
    tok = WordTokenizer.fit(text, max_tokens=6)
    assert tok.tokens == ["<pad>", "<unk>", "<eos>", "d", "b", "a"]  # counts 4, 3, 2; 'c' and '|' cut
    assert tok.encode("a c d", unknown="unk").tolist() == [5, 1, 3]
    with pytest.raises(VocabularyError) as err:
        tok.encode("a c d |")
    assert err.value.missing == ["c", "|"]
    assert tok.encode("a c d", unknown="skip").tolist() == [5, 3]
    with pytest.raises(VocabularyError, match="max_tokens"):
        WordTokenizer.fit(text, max_tokens=3)


def test_word_ties_alphabetical_and_iterable_input():
    tok = WordTokenizer.fit(["beta alpha", "gamma"], max_tokens=100)
    assert tok.words == ["alpha", "beta", "gamma"]


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.sampled_from(["stir", "the", "pot", ",", ".", "|", "salt", "2", "minutes"]), min_size=1, max_size=40)
)
def test_word_round_trip(words):
    text = " ".join(words)
    tok = WordTokenizer.fit(text)
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert np.array_equal(tok.encode(tok.decode(ids)), ids)


@pytest.mark.parametrize(
    "tok",
    [
        CharTokenizer.fit("Hello"),
        CharTokenizer.fit("Hello", lower=True, reserved=False),
        WordTokenizer.fit("a b, c", max_tokens=50),
    ],
)
def test_config_round_trip_through_json(tok):
    again = from_config(json.loads(json.dumps(tok.config)))
    assert type(again) is type(tok) and again.tokens == tok.tokens and again.lower == tok.lower
    sample = "Hello" if tok.kind == "char" else "a b, c"
    assert np.array_equal(again.encode(sample), tok.encode(sample))


@pytest.mark.parametrize(
    "config",
    [{}, {"kind": "bpe"}, {"kind": "char", "chars": ["a"]}, None, {"kind": "word", "words": [""], "lower": True}],
)
def test_bad_config(config):
    with pytest.raises(VocabularyError):
        from_config(config)
