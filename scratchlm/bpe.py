"""Byte-level BPE, as GPT-2 tokenizes: learned here, or read from GPT-2's vocab.json and merges.txt.

    tok = BPETokenizer.train(text, vocab_size=2000)      # or BPETokenizer.from_files("vocab.json", "merges.txt")
    ids = tok.encode("Hello wörld")                      # uint16 ids
    tok.decode(ids) == "Hello wörld"

Byte-pair encoding (Sennrich et al., 2016, after Gage, 1994) starts from a vocabulary of symbols and learns
merges: each joins the most frequent adjacent pair of tokens into a new token. GPT-2 (Radford et al., 2019)
runs it on the UTF-8 bytes of the text, so its 256 byte symbols spell any string and nothing is unknown.
The ids equal those of Hugging Face's ``tokenizers`` (``models.BPE`` with the ``ByteLevel`` pre-tokenizer and
decoder) on the same vocab.json and merges.txt: ``tests/test_bpe.py`` compares them.
"""

import collections
import heapq
import itertools
import json
from pathlib import Path

import numpy
import regex

from . import files
from .text import VocabularyError, _check_policy, _id_dtype, _ids_in_range, listing
from .train.reporting import progress_bar

END_OF_TEXT = "<|endoftext|>"  # GPT-2's one special token (its last id, 50256)
# GPT-2's pre-split pattern: a contraction; a run of letters, of digits or of other symbols, each with at most one
# space in front; a whitespace run that leaves its last space to the word after it; a whitespace run at the end.
PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
MAX_FILE_BYTES = 1 << 24  # 16 MiB, the most vocab.json or merges.txt may hold (GPT-2's: 1.0 MB and 0.46 MB)
CACHE_WORDS = 1 << 16  # pre-split words whose ids encode keeps (it starts again when full)
_CHUNK = 1 << 20  # characters pre-split per pass (bounds the list of words held at once)
_PRESPLIT = regex.compile(PATTERN)
_CUT = regex.compile(r"\S(?=\s)")  # a chunk ends after a non-space that a whitespace character follows


def _byte_table():
    """GPT-2's byte -> printable character table, and the 256 bytes in its order (GPT-2's ids 0..255).

    The 188 bytes that print as themselves in Latin-1 (33-126, 161-172, 174-255) keep their character; the
    other 68 (controls, space, DEL, NBSP, soft hyphen) become chr(256 + n), n counting them in byte order,
    so that every token is a visible string of vocab.json (the space is "Ġ", the newline "Ċ").
    """
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in kept]
    chars = [""] * 256
    for b in kept:
        chars[b] = chr(b)
    for n, b in enumerate(others):
        chars[b] = chr(256 + n)
    return chars, kept + others


BYTE_TO_CHAR, BYTE_ORDER = _byte_table()
CHAR_TO_BYTE = {c: b for b, c in enumerate(BYTE_TO_CHAR)}
_PRINTABLE = {b: c for b, c in enumerate(BYTE_TO_CHAR)}  # str.translate table over Latin-1 code points


def _printable(data: bytes) -> str:
    """The token string of ``data``: each byte as its character of the table."""
    return data.decode("latin-1").translate(_PRINTABLE)


def _presplit(text):
    """The words of ``text`` under :data:`PATTERN`, as lists of strings, about ``_CHUNK`` characters at a time.

    A chunk ends after a non-space character that a whitespace character follows. No word crosses that
    point (a word is either whitespace only, or holds no whitespace but the one space in front), and the
    pattern's one lookahead, ``(?!\\S)``, only ever looks past a whitespace run, which a chunk never ends
    with; so the words are those of the whole text. A text without such a point is one chunk.
    """
    start = 0
    while len(text) - start > _CHUNK:
        cut = _CUT.search(text, start + _CHUNK)
        if cut is None:
            break
        yield _PRESPLIT.findall(text, start, cut.end())
        start = cut.end()
    yield _PRESPLIT.findall(text, start)


def _merge(symbols, left, right, merged):
    """``symbols`` with each pair (left, right), read from left to right, replaced by ``merged``."""
    out, i, n = [], 0, len(symbols)
    while i < n:
        if i < n - 1 and symbols[i] == left and symbols[i + 1] == right:
            out.append(merged)
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out


def _lone_surrogates(text):
    """The distinct lone surrogates of ``text`` (U+D800-U+DFFF: no Unicode scalar value, so UTF-8 cannot encode
    them; a Python str holds them when undecodable bytes were read with "surrogateescape"), sorted."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return sorted({c for c in text if "\ud800" <= c <= "\udfff"})
    return []


class _WordCache(dict):
    """pre-split word -> its ids, computed by ``bpe`` on a miss (``dict.__getitem__`` calls ``__missing__``);
    emptied when it holds ``capacity`` words, so a text of endless distinct words cannot fill memory."""

    def __init__(self, bpe, capacity):
        super().__init__()
        self._bpe, self._capacity = bpe, capacity

    def __missing__(self, word):
        if len(self) >= self._capacity:
            self.clear()
        ids = self[word] = self._bpe(word)
        return ids


class BPETokenizer:
    """Byte-level byte-pair encoding: GPT-2's tokenizer, with its files and its ids.

    tokens: the vocabulary in id order, each a string of the byte table's characters (vocab.json's keys);
        all 256 byte symbols must be there (anywhere: GPT-2 has them at 0..255 in the table's order, so
        id 0 is "!"). A token that no byte or merge makes, such as ``<|endoftext|>``, is special.
    merges: (left, right) token pairs in the order they were learned (merges.txt); the rank of a merge is
        its index. Each part must be a byte symbol or the result of an earlier merge, and left + right a token.
    lower: lower-case text before encoding (not part of GPT-2's files).

    Encoding. The text is pre-split by GPT-2's pattern (:data:`PATTERN`) into words:

        "Hello  world's 42!" -> "Hello", " ", " world", "'s", " 42", "!"

    and each word w is encoded alone, so no token crosses a word boundary:

        s = [byte symbol of each byte of utf8(w)]
        while some adjacent pair of s has a merge:
            (a, b) = the adjacent pair of lowest rank
            s = s with every (a, b), left to right, replaced by the token a + b
        ids of w = ids of s

    A word's ids are cached (:data:`CACHE_WORDS` words), so a text costs a regex pass and one dict lookup
    per word once its words are known. ``decode`` joins the tokens' bytes (a character of the table stands
    for its byte; a special token for its UTF-8) and decodes them as UTF-8, a broken sequence as U+FFFD, as
    Hugging Face's ByteLevel decoder does; so ``decode(encode(s)) == s`` for every string UTF-8 can encode,
    that is every str without lone surrogates (``"\\udc80"``): no byte sequence stands for those, and
    ``encode`` lists them in a :class:`VocabularyError`, or drops them with ``unknown="skip"``. Nothing else
    is unknown, so there is no <unk> (``unk_id`` None) and no <pad> (``pad_id`` None: padded batches need one).

    Training (:meth:`train`) learns the merges from a text. With n(w) the count of word w in the pre-split
    text and s(w) its current symbols, the count of a pair is

        N(a, b) = Σ_w n(w) · #{i : s(w)_i = a, s(w)_{i+1} = b}

    and each step merges the pair of largest N into a new token (a tie goes to the smaller (id of a, id of b)),
    until the vocabulary has ``vocab_size`` tokens or no pair occurs twice. The counts are kept up to date
    incrementally: a merge rewrites only the words that hold its pair (an index pair -> words), adds the
    change of those words' pair counts, and pushes the changed counts on a max-heap, whose stale entries
    are skipped when popped. These are the merges of Hugging Face's ``BpeTrainer(min_frequency=2,
    initial_alphabet=ByteLevel.alphabet())`` too (its alphabet sorted by character is the table's order, so
    its tie-break is this one), which ``tests/test_bpe.py`` checks on random texts.
    ``<|endoftext|>`` is appended last, as in GPT-2, unless ``end_of_text=False``.
    It is never produced by ``encode``: the text ``"<|endoftext|>"`` is encoded as the 13 characters it is
    (as Hugging Face's plain BPE model and tiktoken's ``encode_ordinary`` do); put its ``eos_id`` between
    documents yourself.
    """

    kind = "bpe"
    pad_id = unk_id = None
    reserved = False  # no ids set aside for <pad>, <unk>, <eos>, as CharTokenizer(reserved=True) has

    def __init__(self, tokens, merges, lower=False):
        tokens, merges = list(tokens), [tuple(m) if isinstance(m, list) else m for m in merges]
        if any(not isinstance(t, str) or not t for t in tokens):
            raise VocabularyError("a BPE vocabulary must be a list of non-empty strings, its tokens in id order")
        index = {t: i for i, t in enumerate(tokens)}
        if len(index) != len(tokens):
            repeated = sorted(t for t, n in collections.Counter(tokens).items() if n > 1)
            raise VocabularyError(f"a BPE vocabulary must not repeat a token; this one repeats {listing(repeated)}")
        lacking = [BYTE_TO_CHAR[b] for b in BYTE_ORDER if BYTE_TO_CHAR[b] not in index]
        if lacking:
            raise VocabularyError(
                f"a byte-level BPE vocabulary holds the symbols of all 256 bytes, and this one lacks {len(lacking)} "
                f"({listing(lacking)}): train it over the whole byte alphabet (Hugging Face: "
                "initial_alphabet=pre_tokenizers.ByteLevel.alphabet())"
            )
        made = set(BYTE_TO_CHAR)
        self._ranks = {}  # (left id, right id) -> (rank, id of left + right)
        for rank, merge in enumerate(merges):
            if not (isinstance(merge, tuple) and len(merge) == 2 and all(isinstance(p, str) for p in merge)):
                raise VocabularyError(f"merge {rank + 1} must be a pair of tokens, got {merge!r:.60}")
            left, right = merge
            absent = [p for p in merge if p not in index]
            if absent:
                raise VocabularyError(
                    f"merge {rank + 1} ({left} {right}) joins {absent[0]!r:.60}, which the vocabulary lacks: the "
                    "vocabulary and the merges must come from the same tokenizer"
                )
            if left not in made or right not in made:
                raise VocabularyError(
                    f"merge {rank + 1} ({left} {right}) joins a token that neither a byte nor an earlier merge "
                    "makes: the merges must be listed in the order they were learned"
                )
            if left + right not in index:
                raise VocabularyError(
                    f"merge {rank + 1} ({left} {right}) makes {left + right!r}, which the vocabulary lacks: the "
                    "vocabulary and the merges must come from the same tokenizer"
                )
            made.add(left + right)
            # a pair listed twice keeps its last rank, as the dicts of GPT-2's encoder.py and Hugging Face do
            self._ranks[index[left], index[right]] = rank, index[left + right]
        self.tokens, self.merges, self.lower = tokens, merges, bool(lower)
        self._index = index
        self._byte_ids = [index[c] for c in BYTE_TO_CHAR]  # byte -> id of its symbol
        self._token_bytes = [_token_bytes(t) for t in tokens]  # id -> the bytes it stands for
        self.special_ids = tuple(i for i, t in enumerate(tokens) if t not in made)
        self.eos_id = index.get(END_OF_TEXT)
        self._dtype = _id_dtype(len(tokens))
        self._cache = _WordCache(self._bpe, CACHE_WORDS)

    @property
    def vocab_size(self):
        return len(self.tokens)

    # -- learning the merges ---------------------------------------------------------------
    @classmethod
    def train(cls, text, vocab_size, end_of_text=True, lower=False, progress=None):
        """The tokenizer of at most ``vocab_size`` tokens whose merges are learned from ``text`` (see the class
        docstring): the 256 byte symbols in the table's order, one token per merge, then ``<|endoftext|>``
        (unless ``end_of_text=False``). Fewer tokens when no pair of the text occurs twice any more.

        progress: show a bar of the merges (True), hide it (False), or show it on a terminal only (None).
        """
        least = 256 + bool(end_of_text)
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, numpy.integer)) or vocab_size < least:
            what = "the 256 byte symbols" + (" and <|endoftext|>" if end_of_text else "")
            raise VocabularyError(f"vocab_size must be a whole number >= {least} ({what}), got {vocab_size!r}")
        if lower:
            text = text.lower()
        lone = _lone_surrogates(text)
        if lone:
            raise VocabularyError(
                f"the text holds {len(lone)} lone surrogate(s) ({listing(lone)}), which UTF-8 cannot encode: "
                "remove them, or read the text with its right encoding"
            )
        counts = collections.Counter()
        for words in _presplit(text):
            counts.update(words)
        tokens = [bytes([b]) for b in BYTE_ORDER]  # id -> bytes
        ids = {t: i for i, t in enumerate(tokens)}
        byte_ids = [ids[bytes([b])] for b in range(256)]
        words = [[byte_ids[b] for b in w.encode("utf-8")] for w in counts]  # current symbols s(w)
        freqs = list(counts.values())  # n(w)
        pair_counts = collections.defaultdict(int)  # (a, b) -> N(a, b), only pairs that occur
        where = collections.defaultdict(set)  # (a, b) -> words that held it when counted (some may not any more)
        for w, symbols in enumerate(words):
            for pair in itertools.pairwise(symbols):
                pair_counts[pair] += freqs[w]
                where[pair].add(w)
        heap = [(-n, pair) for pair, n in pair_counts.items()]  # max-heap of N; ties: the smaller pair
        heapq.heapify(heap)
        merges, target = [], vocab_size - bool(end_of_text)
        with progress_bar(target - len(tokens), 0, "BPE merges", progress, unit="token") as bar:
            while len(tokens) < target:
                best = _most_frequent(heap, pair_counts)
                if best is None:
                    break
                left, right = best
                joined = tokens[left] + tokens[right]
                new = ids.get(joined)
                if new is None:  # (another pair may have made the same bytes: they share the token)
                    new = ids[joined] = len(tokens)
                    tokens.append(joined)
                    bar.update()
                merges.append(best)
                delta = collections.defaultdict(int)  # change of N over the rewritten words
                for w in where.pop(best):
                    old = words[w]
                    symbols = _merge(old, left, right, new)
                    if len(symbols) == len(old):  # an earlier merge took the pair from this word
                        continue
                    for pair in itertools.pairwise(old):
                        delta[pair] -= freqs[w]
                    for pair in itertools.pairwise(symbols):
                        delta[pair] += freqs[w]
                        where[pair].add(w)
                    words[w] = symbols
                for pair, d in delta.items():
                    if d:
                        n = pair_counts[pair] + d
                        if n:
                            pair_counts[pair] = n
                            heapq.heappush(heap, (-n, pair))
                        else:
                            del pair_counts[pair]
        printable = [_printable(t) for t in tokens]
        return cls(
            printable + [END_OF_TEXT] * bool(end_of_text),
            [(printable[a], printable[b]) for a, b in merges],
            lower=lower,
        )

    # -- GPT-2's files ------------------------------------------------------------------------
    @classmethod
    def from_files(cls, vocab_path, merges_path):
        """The tokenizer of GPT-2's files: ``vocab.json`` (a JSON object token -> id, the ids 0..V-1 each once)
        and ``merges.txt`` (an optional ``#version`` first line, then one merge per line: two tokens and one
        space between them, in rank order). Each file must be a regular file of at most 16 MiB; anything
        else raises :class:`VocabularyError` naming the file and what is wrong with it."""
        tokens, merges = _read_vocab(vocab_path), _read_merges(merges_path)
        try:
            return cls(tokens, merges)
        except VocabularyError as exc:
            raise VocabularyError(f"{vocab_path} and {merges_path} are no byte-level BPE: {exc}") from None

    def to_files(self, folder):
        """Write ``vocab.json`` and ``merges.txt`` (as GPT-2's, which :meth:`from_files` and Hugging Face's
        ``BPE.from_file`` read) into ``folder``, each atomically; returns their paths. ``lower`` is not part
        of the format: a tokenizer read back from the files does not lower-case."""
        folder = Path(folder)
        vocab, merges = folder / "vocab.json", folder / "merges.txt"
        with files.atomic_write(vocab) as f:
            f.write(json.dumps(self._index, ensure_ascii=False).encode("utf-8"))
        with files.atomic_write(merges) as f:
            f.write(("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in self.merges)).encode("utf-8"))
        return vocab, merges

    # -- encode / decode ---------------------------------------------------------------------
    def encode(self, text, unknown="error"):
        """text -> ids (N,) in the smallest unsigned dtype that holds V (see the class docstring).

        unknown: what to do with lone surrogates, the only thing a byte-level vocabulary cannot stand for:
        "error" (or "unk": there is no <unk>) raises a :class:`VocabularyError` listing them, "skip" drops them.
        """
        _check_policy(unknown)
        if self.lower:
            text = text.lower()
        lone = _lone_surrogates(text)
        if lone and unknown != "skip":
            raise VocabularyError(
                f"the text holds {len(lone)} lone surrogate(s) ({listing(lone)}), which UTF-8 cannot encode, so "
                "no byte-level token stands for them (they come from undecodable bytes): drop them with "
                "unknown='skip' / --unknown skip, or read the text with its right encoding",
                lone,
            )
        if lone:
            text = text.encode("utf-8", "ignore").decode("utf-8")
        lookup = self._cache.__getitem__
        parts = [
            numpy.fromiter(itertools.chain.from_iterable(map(lookup, words)), dtype=self._dtype)
            for words in _presplit(text)
        ]
        return numpy.concatenate(parts)

    def _bpe(self, word):
        """The ids of one pre-split word: its bytes' symbols, merged by rank (the loop of the class docstring)."""
        symbols = [self._byte_ids[b] for b in word.encode("utf-8")]
        ranks = self._ranks
        while len(symbols) > 1:
            found = [(ranks[pair], pair) for pair in itertools.pairwise(symbols) if pair in ranks]
            if not found:
                break
            (_, merged), (left, right) = min(found)
            symbols = _merge(symbols, left, right, merged)
        return tuple(symbols)

    def decode(self, ids):
        """ids -> text: the tokens' bytes joined and decoded as UTF-8 (a broken sequence becomes U+FFFD).
        Decode a whole sequence at once: a character's bytes may lie in several tokens."""
        ids = _ids_in_range(ids, self.vocab_size)
        return b"".join(map(self._token_bytes.__getitem__, ids.tolist())).decode("utf-8", "replace")

    # -- persistence ------------------------------------------------------------------------------
    @property
    def config(self):
        """JSON-serialisable description; :func:`scratchlm.text.from_config` rebuilds the tokenizer."""
        return {"kind": self.kind, "tokens": self.tokens, "merges": [list(m) for m in self.merges], "lower": self.lower}

    def __repr__(self):
        return f"BPETokenizer(V={self.vocab_size}, merges={len(self.merges)}, lower={self.lower})"


def _most_frequent(heap, pair_counts):
    """Pop the pair of largest count (the smallest pair among equals) off ``heap``, skipping entries whose count
    is no longer the pair's; None when no pair occurs at least twice."""
    while heap:
        negative, pair = heapq.heappop(heap)
        if pair_counts.get(pair) == -negative:
            return pair if -negative >= 2 else None
    return None


def _token_bytes(token):
    """The bytes ``token`` stands for: each character's byte, or, for a token with a character outside the
    table (a special token such as "<end of text>"), its UTF-8, as Hugging Face's ByteLevel decoder does."""
    try:
        return bytes(CHAR_TO_BYTE[c] for c in token)
    except KeyError:
        pass
    try:
        return token.encode("utf-8")
    except UnicodeEncodeError:
        raise VocabularyError(f"the token {token!r:.60} holds a lone surrogate, which UTF-8 cannot encode") from None


def _read_vocab(path):
    """vocab.json's tokens in id order, checked: a JSON object token -> id, ids 0..V-1 each once."""
    text = files.read_regular_text(path, "vocab.json", MAX_FILE_BYTES, error=VocabularyError)
    fix = "pass a GPT-2 style vocab.json, a JSON object token -> id with the ids 0, 1, ..., V-1 each once"
    try:
        vocab = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise VocabularyError(f"{path} is not JSON ({str(exc):.80}): {fix}") from None
    if not isinstance(vocab, dict):
        raise VocabularyError(f"{path} holds a JSON {type(vocab).__name__}, not an object: {fix}")
    tokens = [None] * len(vocab)
    for token, i in vocab.items():
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(tokens) or tokens[i] is not None:
            raise VocabularyError(
                f"{path}: the token {token!r:.60} has the id {i!r:.30}, where the ids of its {len(tokens):,} tokens "
                f"must be 0 ... {len(tokens) - 1:,}, each once: {fix}"
            )
        tokens[i] = token
    return tokens


def _read_merges(path):
    """merges.txt's merges as (left, right) pairs, checked: an optional #version line, then one "left right" per
    line."""
    text = files.read_regular_text(path, "merges.txt", MAX_FILE_BYTES, error=VocabularyError, universal_newlines=True)
    lines = text.split("\n")
    if lines[-1] == "":  # the newline that ends the last line
        lines.pop()
    merges = []
    for number, line in enumerate(lines, 1):
        if number == 1 and line.startswith("#version"):
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not all(parts):
            raise VocabularyError(
                f"{path}, line {number}: {line!r:.60} is not a merge, two tokens with one space between them: "
                "pass a GPT-2 style merges.txt"
            )
        merges.append((parts[0], parts[1]))
    return merges
