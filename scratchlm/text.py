"""Tokenizers: text <-> integer token ids, for characters and for words (byte-level BPE: :mod:`scratchlm.bpe`).

A language model sees a vocabulary of V ids 0..V-1. A tokenizer fixes which
piece of text each id stands for, turns text into ids (``encode``) and back
(``decode``), and describes itself as a small JSON-serialisable dict
(``config``) that is stored in every checkpoint, so a model is never separated
from the vocabulary it was trained on (:func:`from_config` rebuilds it).

Reserved ids. Both tokenizers can reserve the first three ids:

    0  <pad>   fills the tail of short sequences in a padded batch (masked out)
    1  <unk>   stands for a token the vocabulary lacks
    2  <eos>   end of sequence: the model learns to stop (titles, recipes)

The classic Keras Nietzsche model reserves nothing: its vocabulary is exactly
the 60 distinct characters of the lower-cased text, V = 60. ``CharTokenizer``
takes ``reserved=False`` for that. ``WordTokenizer`` always reserves them,
because a capped word vocabulary needs ``<unk>``.

``VectorTokenizer`` is Keras' ``TextVectorization`` as the IMDB seed uses it:
its own reserved ids, 0 = "" (padding) and 1 = "[UNK]", and no <eos>.

Unknown tokens. ``encode(text, unknown=...)`` decides what happens to text the
vocabulary lacks: ``"error"`` raises :class:`VocabularyError` listing what is
missing, ``"skip"`` drops it, ``"unk"`` maps it to ``<unk>``.
"""

import collections
import re
import string

import numpy

from .errors import ScratchLMError

PAD, UNK, EOS = "<pad>", "<unk>", "<eos>"
SPECIALS = (PAD, UNK, EOS)  # ids 0, 1, 2 when reserved
UNKNOWN_POLICIES = ("error", "skip", "unk")
_CHUNK = 1 << 22  # characters encoded per NumPy pass (bounds peak memory)


class VocabularyError(ScratchLMError, ValueError):
    """Text holds tokens the vocabulary lacks, or a tokenizer description is unusable.

    ``missing`` lists the tokens the vocabulary lacks (sorted), when that is the problem.
    """

    def __init__(self, message, missing=()):
        super().__init__(message)
        self.missing = list(missing)


def _id_dtype(vocab_size):
    """The smallest unsigned integer type that holds ids 0..vocab_size-1 (corpora stay compact)."""
    return numpy.uint8 if vocab_size <= 1 << 8 else numpy.uint16 if vocab_size <= 1 << 16 else numpy.uint32


def _ids_in_range(ids, vocab_size):
    """ids as a flat int64 array; VocabularyError unless every one lies in [0, vocab_size)."""
    ids = numpy.asarray(ids, dtype=numpy.int64).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise VocabularyError(f"ids must lie in [0, {vocab_size})")
    return ids


def _check_policy(unknown):
    if unknown not in UNKNOWN_POLICIES:
        raise VocabularyError(f"unknown must be one of {', '.join(UNKNOWN_POLICIES)}, got {unknown!r}")


def listing(tokens, limit=20):
    """'a', 'b', ... : the first ``limit`` tokens for an error message."""
    return ", ".join(repr(t) for t in tokens[:limit]) + (f", ... ({len(tokens)} in all)" if len(tokens) > limit else "")


def _encode_words(words, index, unk_id, unknown, dtype):
    """Ids of ``words`` by ``index`` (word -> id); a word it lacks is dropped ("skip"), mapped to ``unk_id``
    ("unk") or, with "error", listed in a :class:`VocabularyError`."""
    _check_policy(unknown)
    ids, missing = [], set()
    for word in words:
        i = index.get(word)
        if i is None:
            if unknown == "error":
                missing.add(word)
                continue
            if unknown == "skip":
                continue
            i = unk_id
        ids.append(i)
    if missing:
        raise VocabularyError(_missing_message(sorted(missing), "words"), sorted(missing))
    return numpy.array(ids, dtype=dtype)


def _missing_message(missing, what):
    what = what if len(missing) > 1 else what[:-1]
    return (
        f"the text holds {len(missing)} {what} that the vocabulary lacks: {listing(missing)} "
        "(drop them with unknown='skip' / --unknown skip, or map them to <unk> with 'unk')"
    )


class CharTokenizer:
    """One id per character.

    chars: the vocabulary's characters in id order (after the reserved ids);
        use :meth:`fit` to take them from a text.
    lower: lower-case text before encoding (the vocabulary is then lower-case too).
    reserved: reserve ids 0, 1, 2 for <pad>, <unk>, <eos> (False: V = len(chars),
        as the Keras Nietzsche model).
    """

    kind = "char"

    def __init__(self, chars, lower=False, reserved=True):
        chars = list(chars)
        if any(not isinstance(c, str) or len(c) != 1 for c in chars):
            raise VocabularyError("a character vocabulary must be a list of single characters")
        if len(set(chars)) != len(chars):
            raise VocabularyError("a character vocabulary must not repeat a character")
        if not chars:
            raise VocabularyError("a character vocabulary needs at least one character: is the text empty?")
        self.chars = chars
        self.lower = bool(lower)
        self.reserved = bool(reserved)
        offset = len(SPECIALS) if self.reserved else 0
        self.tokens = (list(SPECIALS) if self.reserved else []) + chars  # id -> printable token
        # Lookup table for vectorised encoding: sorted code points and their ids.
        codes = numpy.array([ord(c) for c in chars], dtype=numpy.uint32)
        order = numpy.argsort(codes)
        self._codes = codes[order]  # (C,) sorted
        self._ids = (order + offset).astype(_id_dtype(self.vocab_size))  # (C,) id of each
        self._strings = numpy.array(self.tokens, dtype=object)

    @classmethod
    def fit(cls, text, lower=False, reserved=True):
        """The tokenizer whose vocabulary is the sorted distinct characters of ``text``."""
        if lower:
            text = text.lower()
        return cls(sorted(set(text)), lower=lower, reserved=reserved)

    # -- reserved ids ------------------------------------------------------------
    @property
    def vocab_size(self):
        return len(self.tokens)

    @property
    def pad_id(self):
        return 0 if self.reserved else None

    @property
    def unk_id(self):
        return 1 if self.reserved else None

    @property
    def eos_id(self):
        return 2 if self.reserved else None

    @property
    def special_ids(self):
        """The reserved ids (empty without reservation)."""
        return (0, 1, 2) if self.reserved else ()

    # -- encode / decode -----------------------------------------------------------
    def encode(self, text, unknown="error"):
        """text -> ids (N,) in the smallest unsigned dtype that holds V.

        Vectorised: the text is viewed as UTF-32 code points and each is looked
        up in the sorted vocabulary with ``searchsorted``, a few million
        characters per pass, so a corpus of hundreds of MB encodes in seconds.
        """
        _check_policy(unknown)
        if self.lower:
            text = text.lower()
        pieces, missing = [], set()
        for start in range(0, len(text), _CHUNK):
            # "surrogatepass": a lone surrogate (an undecodable byte on the command line) is just unknown
            chunk = text[start : start + _CHUNK].encode("utf-32-le", "surrogatepass")
            codes = numpy.frombuffer(chunk, dtype="<u4")  # (n,) code points
            pos = numpy.minimum(numpy.searchsorted(self._codes, codes), len(self._codes) - 1)
            found = self._codes[pos] == codes
            ids = self._ids[pos]
            if not found.all():
                if unknown == "error":
                    missing.update(chr(c) for c in numpy.unique(codes[~found]))
                elif unknown == "skip":
                    ids = ids[found]
                else:
                    ids[~found] = self._unk_or_raise()
            pieces.append(ids)
        if missing:
            raise VocabularyError(_missing_message(sorted(missing), "characters"), sorted(missing))
        return numpy.concatenate(pieces) if pieces else numpy.zeros(0, dtype=self._ids.dtype)

    def _unk_or_raise(self):
        if self.unk_id is None:
            raise VocabularyError(
                "this vocabulary reserves no <unk> id (reserved=False, the book setup): "
                "use unknown='skip' / --unknown skip instead"
            )
        return self.unk_id

    def decode(self, ids):
        """ids -> text. Reserved ids print as their names (<pad>, <unk>, <eos>)."""
        ids = _ids_in_range(ids, self.vocab_size)
        return "".join(self._strings[ids])

    # -- persistence ------------------------------------------------------------------
    @property
    def config(self):
        """JSON-serialisable description; :func:`from_config` rebuilds the tokenizer."""
        return {"kind": self.kind, "chars": self.chars, "lower": self.lower, "reserved": self.reserved}

    def __repr__(self):
        return f"CharTokenizer(V={self.vocab_size}, lower={self.lower}, reserved={self.reserved})"


class WordTokenizer:
    """One id per word or punctuation mark, with a vocabulary capped by frequency.

    Text is split as the recipe seed does it: every ASCII punctuation character
    is padded with spaces, so it becomes a token of its own ("pour, then stir."
    -> pour , then stir .), and the rest is split on whitespace. Text is
    lower-cased first unless ``lower=False``.

    words: the vocabulary's words in id order after <pad>, <unk>, <eos>; use
        :meth:`fit` to take the most frequent ones from a text.
    """

    kind = "word"
    _TOKEN = re.compile(f"[{re.escape(string.punctuation)}]|[^\\s{re.escape(string.punctuation)}]+")

    def __init__(self, words, lower=True):
        words = list(words)
        if any(not isinstance(w, str) or not w for w in words):
            raise VocabularyError("a word vocabulary must be a list of non-empty strings")
        if len(set(words)) != len(words) or set(words) & set(SPECIALS):
            raise VocabularyError("a word vocabulary must not repeat a word or hold <pad>, <unk>, <eos>")
        self.words = words
        self.lower = bool(lower)
        self.tokens = list(SPECIALS) + words
        self.reserved = True
        self._index = {w: i for i, w in enumerate(self.tokens)}

    @classmethod
    def fit(cls, texts, max_tokens=10000, lower=True):
        """The ``max_tokens - 3`` most frequent tokens of ``texts`` (a string or an iterable of
        strings), by falling count, ties in alphabetical order; V = min(max_tokens, 3 + distinct).
        """
        if int(max_tokens) <= len(SPECIALS):
            raise VocabularyError(f"max_tokens must exceed {len(SPECIALS)} (it counts <pad>, <unk>, <eos>)")
        counts = collections.Counter()
        for t in [texts] if isinstance(texts, str) else texts:
            counts.update(cls._split(t, lower))
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        return cls([w for w, _ in ranked[: int(max_tokens) - len(SPECIALS)]], lower=lower)

    @classmethod
    def _split(cls, text, lower):
        return cls._TOKEN.findall(text.lower() if lower else text)

    def split(self, text):
        """text -> list of token strings (punctuation padded, lower-cased if so configured)."""
        return self._split(text, self.lower)

    pad_id, unk_id, eos_id = 0, 1, 2  # always reserved
    special_ids = (0, 1, 2)

    @property
    def vocab_size(self):
        return len(self.tokens)

    def encode(self, text, unknown="error"):
        """text -> ids (N,); see the module docstring for ``unknown``."""
        return _encode_words(self.split(text), self._index, self.unk_id, unknown, _id_dtype(self.vocab_size))

    def decode(self, ids):
        """ids -> the tokens joined by single spaces (reserved ids print as their names)."""
        ids = _ids_in_range(ids, self.vocab_size)
        return " ".join(self.tokens[i] for i in ids)

    @property
    def config(self):
        return {"kind": self.kind, "words": self.words, "lower": self.lower}

    def __repr__(self):
        return f"WordTokenizer(V={self.vocab_size}, lower={self.lower})"


_ASCII_WHITESPACE_RUN = re.compile("[^ \t\n\v\f\r]+")  # what TensorFlow's whitespace split keeps


class VectorTokenizer:
    """Keras ``TextVectorization(max_tokens, output_sequence_length)`` as the IMDB seed uses it.

    The seed (Chollet, *Deep Learning with Python*, listings 12.3-12.5) reads the reviews, replaces every
    ``"<br />"`` by a space (``tf.strings.regex_replace(x, "<br />", " ")``), then lets
    ``TextVectorization(max_tokens=15000, output_mode="int", output_sequence_length=100)`` standardize,
    split and look words up. This class does the same, step by step, as Keras 3 does it:

    1. ``strip_br``: every exact ``"<br />"`` becomes one space (before lower-casing, as in the seed).
    2. ``standardize="lower_and_strip_punctuation"``: ``tf.strings.lower`` (which, with its default
       encoding, lower-cases ASCII letters only: "É" stays "É") when ``lower``, then every character of
       ``string.punctuation`` (Keras' ``DEFAULT_STRIP_REGEX``, the 32 ASCII punctuation marks) is deleted,
       not replaced by a space: "don't" -> "dont", "well-made" -> "wellmade".
    3. ``split="whitespace"``: runs of ASCII whitespace (space, \\t, \\n, \\v, \\f, \\r: TensorFlow's
       ``isspace``) separate words; other Unicode spaces (U+00A0) stay inside words.
    4. Lookup: id 0 is the padding/mask token ``""``, id 1 the out-of-vocabulary token ``"[UNK]"``, then
       the ``max_tokens - 2`` most frequent words by falling count; equal counts are ordered as Keras'
       ``IndexLookup.finalize_state`` does it, ``numpy.lexsort((tokens, counts))[::-1]``: the reverse
       of (count, token) ascending, i.e. ties in *descending* (reverse alphabetical, UTF-8 byte) order.
       V = min(max_tokens, 2 + distinct words).
    5. ``encode_sequence(text, length)`` is ``output_sequence_length``: the ids cut after ``length`` or
       padded with 0 at the end.

    words: the vocabulary's words in id order after "" and "[UNK]"; use :meth:`fit` to count them.
    """

    kind = "vector"
    PAD, UNK = "", "[UNK]"
    pad_id, unk_id, eos_id = 0, 1, None
    special_ids = (0, 1)
    reserved = True

    def __init__(self, words, lower=True, strip_br=True):
        words = list(words)
        if any(not isinstance(w, str) or not w for w in words):
            raise VocabularyError("a vector vocabulary must be a list of non-empty strings")
        if len(set(words)) != len(words) or self.UNK in words:
            raise VocabularyError("a vector vocabulary must not repeat a word or hold '[UNK]'")
        self.words = words
        self.lower, self.strip_br = bool(lower), bool(strip_br)
        self.tokens = [self.PAD, self.UNK] + words
        self._index = {w: i for i, w in enumerate(self.tokens) if i >= 2}
        self._dtype = _id_dtype(self.vocab_size)

    @classmethod
    def fit(cls, texts, max_tokens=15000, lower=True, strip_br=True):
        """The vocabulary of ``texts`` (a string or an iterable of strings, read one at a time and
        counted, never held together), as ``TextVectorization.adapt`` builds it."""
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens <= 2:
            raise VocabularyError(
                f"max_tokens must be a whole number above 2 (it counts '' and '[UNK]'), got {max_tokens!r}"
            )
        counts = collections.Counter()
        for text in [texts] if isinstance(texts, str) else texts:
            counts.update(cls._split(text, lower, strip_br))
        ranked = sorted(counts.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)  # Keras' tie order
        return cls([w for w, _ in ranked[: max_tokens - 2]], lower=lower, strip_br=strip_br)

    _LOWER = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}
    _STRIP = dict.fromkeys(map(ord, string.punctuation))

    @classmethod
    def _split(cls, text, lower, strip_br):
        if strip_br:
            text = text.replace("<br />", " ")
        text = text.translate({**cls._LOWER, **cls._STRIP} if lower else cls._STRIP)
        return _ASCII_WHITESPACE_RUN.findall(text)

    def standardize(self, text):
        """text -> list of words, after steps 1-3 above."""
        return self._split(text, self.lower, self.strip_br)

    split = standardize

    @property
    def vocab_size(self):
        return len(self.tokens)

    def encode(self, text, unknown="unk"):
        """text -> ids (N,), one per word. ``unknown="unk"`` (the default, as Keras) maps a word the
        vocabulary lacks to 1; "skip" drops it; "error" raises :class:`VocabularyError` listing them."""
        return _encode_words(self.standardize(text), self._index, self.unk_id, unknown, self._dtype)

    def encode_sequence(self, text, length, unknown="unk"):
        """text -> exactly ``length`` ids: cut at the end or padded with 0 at the end
        (``output_sequence_length``)."""
        if isinstance(length, bool) or not isinstance(length, (int, numpy.integer)) or length < 1:
            raise VocabularyError(f"the sequence length must be a whole number >= 1, got {length!r}")
        ids = self.encode(text, unknown=unknown)[:length]
        out = numpy.zeros(int(length), dtype=self._dtype)
        out[: len(ids)] = ids
        return out

    def decode(self, ids):
        """ids -> the words joined by single spaces; padding (0) prints as nothing, 1 as "[UNK]"."""
        ids = _ids_in_range(ids, self.vocab_size)
        return " ".join(self.tokens[i] for i in ids if i != self.pad_id)

    @property
    def config(self):
        return {"kind": self.kind, "words": self.words, "lower": self.lower, "strip_br": self.strip_br}

    def __repr__(self):
        return f"VectorTokenizer(V={self.vocab_size}, lower={self.lower}, strip_br={self.strip_br})"


def from_config(config):
    """Rebuild a tokenizer from its ``config`` dict (as stored in a checkpoint's metadata).

    Raises VocabularyError, naming the field, unless ``config`` has the shape ``config`` writes: kind "char"
    with chars (a list of characters), lower and reserved (true/false), kind "word" with words (a list
    of strings) and lower, kind "vector" with words, lower and strip_br (true/false), or kind "bpe" with
    tokens (a list of strings), merges (a list of [left, right] pairs) and lower (:mod:`scratchlm.bpe`).
    """
    fix = "it is not a scratchlm tokenizer's config (a checkpoint holding it is corrupt or was edited)"
    if not isinstance(config, dict):
        raise VocabularyError(f"malformed tokenizer description, a {type(config).__name__} instead of a dict: {fix}")
    kind = config.get("kind")
    if kind not in ("char", "word", "vector", "bpe"):
        raise VocabularyError(f"unknown tokenizer kind {kind!r:.60}: expected 'char', 'word', 'vector' or 'bpe'")
    rules = {
        "char": {"chars": (list, "a list of characters"), "reserved": (bool, "true or false")},
        "word": {"words": (list, "a list of words")},
        "vector": {"words": (list, "a list of words"), "strip_br": (bool, "true or false")},
        "bpe": {"tokens": (list, "a list of tokens"), "merges": (list, "a list of [left, right] token pairs")},
    }[kind]
    for name, (type_, rule) in {**rules, "lower": (bool, "true or false")}.items():
        if not isinstance(config.get(name), type_):
            raise VocabularyError(
                f"malformed {kind} tokenizer description: {name!r} must be {rule}, got {config.get(name)!r:.60}; {fix}"
            )
    if kind == "char":
        return CharTokenizer(config["chars"], lower=config["lower"], reserved=config["reserved"])
    if kind == "vector":
        return VectorTokenizer(config["words"], lower=config["lower"], strip_br=config["strip_br"])
    if kind == "bpe":
        from .bpe import BPETokenizer  # (scratchlm.bpe imports this module)

        return BPETokenizer(config["tokens"], config["merges"], lower=config["lower"])
    return WordTokenizer(config["words"], lower=config["lower"])
