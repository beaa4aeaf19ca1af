"""Hugging Face ``tokenizers`` reference ids for scratchlm's byte-level BPE (``tests/test_bpe.py``).

Needs ``tokenizers`` only (not scratchlm):

    pip install tokenizers
    python tests/reference/make_bpe_reference.py            # (re)write hf/ and expected.json
    python tests/reference/make_bpe_reference.py --check    # recompute in memory, compare with the files

It reads and writes ``tests/reference/bpe/``:

    train.txt                   the training text: Shakespeare with accents, Greek, Cyrillic, Hebrew, Arabic,
                                CJK, Hangul, emoji, digits, contractions and whitespace runs between
    ours/vocab.json, merges.txt what scratchlm's BPETokenizer.train(train.txt, 800) wrote (read here)
    hf/vocab.json, merges.txt   written here: Hugging Face's own BpeTrainer on train.txt (ByteLevel pre-tokenizer,
                                the whole byte alphabet, <|endoftext|> as its special token, so at id 0)
    expected.json               written here: the test strings, and for each vocabulary ("ours", "hf") the ids
                                Hugging Face gives each string (the last string is train.txt itself), its
                                decoding of them, and the versions and SHA-256 of every file read

Each vocabulary is encoded as ``Tokenizer(models.BPE.from_file(vocab, merges))`` with
``pre_tokenizers.ByteLevel(add_prefix_space=False)`` (GPT-2's pre-split pattern) and ``decoders.ByteLevel()``,
which is how GPT-2's tokenizer runs.
"""

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import tokenizers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

HERE = Path(__file__).resolve().parent / "bpe"
VOCAB_SIZE = 800  # of both vocabularies

STRINGS = [
    "",
    "Hello world",
    "Hello  world, hello   WORLD!",
    " leading space",
    "trailing space ",
    "   ",
    "\n",
    "\n\n\n",
    " \n \n ",
    "a\tb\t\tc",
    "line one\r\nline two\r\n",
    "\t\t  \n  mixed \t whitespace\n",
    "don't won't I'm you're we've they'll he'd it's",
    "DON'T I'LL 'S 's's '' 'd'",
    "café naïve résumé façade jalapeño",
    "Ærøskøbing Łódź Škoda",
    "Ελληνικά γράμματα",
    "Русский текст",
    "עברית العربية",
    "日本語のテキストと中文文本，标点。",
    "한국어 텍스트",
    "😀😃😄 👍🏽 👨‍👩‍👧‍👦 🇫🇷🇯🇵 ❤️ ✨🚀",
    "3.14159 1,000,000 2024-06-01 ٣٤٥ ²³ Ⅻ 12:30pm",
    "<|endoftext|>",
    "a<|endoftext|>b",
    "\u00a0nbsp\u00a0 \u2003em\u2003space \u3000ideographic",
    "\x00\x01\x1f\x7f control",
    "\x0b\x0c vertical tab and form feed",
    "soft\u00adhyphen",
    "e\u0301 combining",
    "ﬁ ligature 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "\U0010fffd private use \ue000",
    "\ufeffBOM",
    "Supercalifragilisticexpialidocious aaaaaaaaaaaaaaaaaaaaaaaaa",
    "!!!??? ... --- *** ((()))",
    "def f(x):  return x ** 2  # squared",
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n",
]


def _sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def byte_level(vocab, merges):
    """GPT-2's tokenizer over these files."""
    tok = Tokenizer(models.BPE.from_file(str(vocab), str(merges)))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def train_hf(text, folder, vocab_size=VOCAB_SIZE):
    """Hugging Face's BpeTrainer on ``text``; its vocab.json and merges.txt written into ``folder``."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>"],
        show_progress=False,
    )
    tok.train_from_iterator([text], trainer=trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tok.model.save(str(folder))


def expected(strings, folders):
    """What expected.json holds, for the vocabularies in ``folders`` (name -> folder)."""
    out = {"tokenizers": tokenizers.__version__, "strings": strings, "files": {}}
    for name, folder in folders.items():
        vocab, merges = folder / "vocab.json", folder / "merges.txt"
        tok = byte_level(vocab, merges)
        ids = [tok.encode(s).ids for s in strings]
        out[name] = {"ids": ids, "decoded": [tok.decode(i) for i in ids]}
        for path in (vocab, merges):
            out["files"][str(path.relative_to(HERE))] = _sha256(path)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="recompute in memory and compare with the files")
    args = parser.parse_args(argv)
    text = (HERE / "train.txt").read_text(encoding="utf-8")
    strings = [*STRINGS, text]
    with tempfile.TemporaryDirectory() as tmp:
        hf = Path(tmp) / "hf" if args.check else HERE / "hf"
        train_hf(text, hf)
        if args.check:
            same = all((hf / n).read_bytes() == (HERE / "hf" / n).read_bytes() for n in ("vocab.json", "merges.txt"))
            result = expected(strings, {"ours": HERE / "ours", "hf": HERE / "hf"})
            same = same and result == json.loads((HERE / "expected.json").read_text(encoding="utf-8"))
            print("the same" if same else "DIFFERENT")
            return 0 if same else 1
    result = expected(strings, {"ours": HERE / "ours", "hf": HERE / "hf"})
    (HERE / "expected.json").write_text(json.dumps(result, ensure_ascii=True) + "\n", encoding="utf-8")
    print(f"wrote {HERE / 'hf'} and {HERE / 'expected.json'} (tokenizers {tokenizers.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
