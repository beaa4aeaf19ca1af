"""Byte-level BPE encoding speed: scratchlm's BPETokenizer against Hugging Face ``tokenizers``, in MB/s on one core.

    python benchmarks/bpe_speed.py                          # vocab 2000, 5 rounds, both texts
    python benchmarks/bpe_speed.py --vocab-size 5000 --json bpe_speed.json
    python benchmarks/bpe_speed.py --max-bytes 20000 --rounds 2   # a smoke run on small inputs

For each text, scratchlm learns a vocabulary of ``--vocab-size`` tokens from it (the seconds that takes are
reported too) and writes GPT-2's vocab.json and merges.txt; both tokenizers then encode the whole text with
those same files, and their ids must be equal. The texts:

* tinyshakespeare: the bundled corpus (1.1 MB, English).
* unicode: as many bytes of seeded pseudo-text, a Zipf-distributed vocabulary of 20,000 words drawn from
  Latin with accents, Greek, Cyrillic, Arabic, CJK and Hangul, with digits, emoji and punctuation between
  (2 bytes per character on average: most words are multi-byte UTF-8, and most are rare).

Each round times, for scratchlm, a fresh tokenizer (``cold``: its word cache empty) and then a second
encoding of the same text by it (``warm``: every word cached); for ``tokenizers``, a fresh
``Tokenizer(models.BPE.from_file(...))`` with the ByteLevel pre-tokenizer, as GPT-2's (its own cache is
cold), and a second encoding (warm). The figure is the median over ``--rounds`` of UTF-8 megabytes
(10^6 bytes) per second. The process is pinned to one CPU and Hugging Face's thread pool to one thread
(``RAYON_NUM_THREADS=1``, ``TOKENIZERS_PARALLELISM=false``), so both run on one core.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # before tokenizers is imported
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scratchlm import corpora  # noqa: E402
from scratchlm.bpe import BPETokenizer  # noqa: E402

SCRIPTS = {  # code point ranges of letters, per script
    "latin": [*range(0x61, 0x7B), *range(0xE0, 0xFF)],
    "greek": list(range(0x3B1, 0x3CA)),
    "cyrillic": list(range(0x430, 0x450)),
    "arabic": list(range(0x627, 0x64B)),
    "cjk": list(range(0x4E00, 0x4E00 + 3000)),
    "hangul": list(range(0xAC00, 0xAC00 + 2000)),
}
EMOJI = [chr(c) for c in range(0x1F600, 0x1F650)]
BETWEEN = [" "] * 12 + ["\n", ", ", ". ", "! ", " 1984 ", " 3.14 ", "  ", "\t"]


def unicode_text(size, seed=0, words=20000):
    """About ``size`` UTF-8 bytes of seeded pseudo-text (see the module docstring)."""
    rng = numpy.random.default_rng(seed)
    names = list(SCRIPTS)
    vocabulary = []
    for _ in range(words):
        letters = SCRIPTS[names[rng.integers(len(names))]]
        word = "".join(chr(letters[i]) for i in rng.integers(len(letters), size=rng.integers(1, 9)))
        vocabulary.append(word + (EMOJI[rng.integers(len(EMOJI))] if rng.random() < 0.05 else ""))
    ranks = numpy.arange(1, words + 1)
    p = 1.0 / ranks / (1.0 / ranks).sum()  # Zipf: the k-th word's frequency ~ 1/k
    pieces, total = [], 0
    while total < size:
        for w, b in zip(rng.choice(words, size=4096, p=p), rng.integers(len(BETWEEN), size=4096), strict=True):
            pieces.append(vocabulary[w] + BETWEEN[b])
            total += len(pieces[-1].encode("utf-8"))
            if total >= size:
                break
    return "".join(pieces)


def _median_seconds(run, rounds):
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(name, text, vocab_size, rounds, hf):
    """The row of one text: training seconds and MB/s of each encoder, cold and warm."""
    megabytes = len(text.encode("utf-8")) / 1e6
    start = time.perf_counter()
    trained = BPETokenizer.train(text, vocab_size, progress=False)
    row = {
        "text": name,
        "megabytes": round(megabytes, 3),
        "vocab_size": trained.vocab_size,
        "train_seconds": round(time.perf_counter() - start, 2),
    }
    with tempfile.TemporaryDirectory() as tmp:
        files = trained.to_files(tmp)
        ids = BPETokenizer.from_files(*files).encode(text)
        row["tokens"] = len(ids)

        def ours_cold():
            BPETokenizer.from_files(*files).encode(text)

        ours = BPETokenizer.from_files(*files)
        ours.encode(text)
        row["scratchlm_cold_mb_s"] = round(megabytes / _median_seconds(ours_cold, rounds), 3)
        row["scratchlm_warm_mb_s"] = round(megabytes / _median_seconds(lambda: ours.encode(text), rounds), 3)
        if hf is not None:
            tokenizers = hf

            def fresh():
                tok = tokenizers.Tokenizer(tokenizers.models.BPE.from_file(*map(str, files)))
                tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
                return tok

            reference = fresh()
            if reference.encode(text).ids != ids.tolist():
                raise SystemExit(f"{name}: tokenizers gives other ids than scratchlm on the same files")
            row["tokenizers_cold_mb_s"] = round(megabytes / _median_seconds(lambda: fresh().encode(text), rounds), 3)
            row["tokenizers_warm_mb_s"] = round(megabytes / _median_seconds(lambda: reference.encode(text), rounds), 3)
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocab-size", type=int, default=2000, help="tokens learned from each text (default 2000)")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per figure; the median is kept (default 5)")
    p.add_argument("--max-bytes", type=int, help="cut each text to about this many bytes (default: the whole texts)")
    p.add_argument("--unicode-bytes", type=int, default=1_000_000, help="size of the unicode text (default 1 MB)")
    p.add_argument("--cpu", type=int, help="the CPU to pin to (default: the first this process may use)")
    p.add_argument("--json", type=Path, help="also write the rows here")
    args = p.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu if args.cpu is not None else min(os.sched_getaffinity(0))})
    try:
        import tokenizers
        import tokenizers.models
        import tokenizers.pre_tokenizers
    except ImportError:
        tokenizers = None
        print("(tokenizers is not installed: scratchlm alone; pip install tokenizers to compare)")
    shakespeare = corpora.load_text("tinyshakespeare")
    unicode = unicode_text(args.unicode_bytes if args.max_bytes is None else min(args.unicode_bytes, args.max_bytes))
    if args.max_bytes is not None:
        shakespeare = shakespeare[: args.max_bytes]
    rows = [
        measure(name, text, args.vocab_size, args.rounds, tokenizers)
        for name, text in (("tinyshakespeare", shakespeare), ("unicode", unicode))
    ]
    columns = [k for k in rows[0] if k != "text"]
    print(f"{'text':16}" + "".join(f"{c:>22}" for c in columns))
    for row in rows:
        print(f"{row['text']:16}" + "".join(f"{row.get(c, '-')!s:>22}" for c in columns))
    if args.json is not None:
        record = {
            "python": platform.python_version(),
            "machine": platform.processor() or platform.machine(),
            "tokenizers": None if tokenizers is None else tokenizers.__version__,
            "rounds": args.rounds,
            "rows": rows,
        }
        args.json.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
