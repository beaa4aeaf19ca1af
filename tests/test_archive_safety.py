"""Archives and user files that try to escape, hang or fill memory: refused at once, one line, nothing touched.

The archives are built with tarfile in tmp_path. CLI cases run `python -m scratchlm` in a subprocess (with a
timeout, so a hang fails the test) and check the exit code, one stderr line without a traceback, and that
the files involved are byte for byte what they were.
"""

import errno
import io
import os
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest
from helpers.cli import fails

from scratchlm import files
from scratchlm.cli import main
from scratchlm.corpora import CorpusError
from scratchlm.datasets import imdb
from scratchlm.errors import ScratchLMError

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
SECRET = "zebra-pineapple-4417"  # planted outside the folder: must never be read
CHAIN = [
    ("aclImdb/train/neg/0_1.txt", "A dull film."),
    ("aclImdb/train/s", "->."),
    ("aclImdb/train/t", "->" + "s/" * 12 + "../" * 12 + ".."),
    ("aclImdb/train/pos/leak.txt", "->../t/tmp/SECRET.txt"),
]


def _targz(path, members):
    """members: (name, text), where a text "->target" makes a symbolic link to target."""
    with tarfile.open(path, "w:gz") as tar:
        for name, text in members:
            info = tarfile.TarInfo(name)
            if text.startswith("->"):
                info.type, info.linkname = tarfile.SYMTYPE, text[2:]
                tar.addfile(info)
            else:
                info.size = len(text.encode())
                tar.addfile(info, io.BytesIO(text.encode()))
    return path


def _snapshot(directory):
    """Every path under ``directory`` (links not followed) with its bytes, link target or kind."""

    def what(p):
        return os.readlink(p) if p.is_symlink() else p.read_bytes() if p.is_file() else "folder"

    return {str(p.relative_to(directory)): what(p) for p in sorted(Path(directory).rglob("*"))}


def scratchlm(*argv, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "scratchlm", *map(str, argv)], env=ENV, capture_output=True, text=True, timeout=timeout
    )


def within(seconds, function, *args):
    """What ``function(*args)`` returns or raises, failing the test if it takes longer than ``seconds``."""
    outcome = []

    def run():
        try:
            outcome.append(("returned", function(*args)))
        except Exception as exc:  # handed to the test below
            outcome.append(("raised", exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"{function.__name__} still running after {seconds} s"
    return outcome[0]


def _attack_tree(tmp_path, leak):
    """The symbolic-link chain of CHAIN laid out on disk (as `tar -xzf` of its archive makes it), with
    train/pos/leak.txt pointing at ``leak``; returns the aclImdb folder."""
    root = tmp_path / "aclImdb"
    (root / "train/neg").mkdir(parents=True)
    (root / "train/pos").mkdir()
    (root / "train/neg/0_1.txt").write_text("A dull film.")
    for name, text in CHAIN[1:3]:
        (tmp_path / name).symlink_to(text[2:])
    (root / "train/pos/leak.txt").symlink_to(leak)
    return root


@pytest.fixture
def secret(tmp_path):
    """A file outside every folder the tests read, holding SECRET."""
    path = tmp_path / "elsewhere" / "SECRET.txt"
    path.parent.mkdir()
    path.write_text(SECRET)
    return path


# -- extraction --------------------------------------------------------------------


def test_the_symlink_chain_archive_is_refused_and_creates_nothing(tmp_path):
    archive = _targz(tmp_path / "chain.tar.gz", CHAIN)
    before = _snapshot(tmp_path)
    with pytest.raises(CorpusError, match=r"unsafe member 'aclImdb/train/s'.*extracts no links") as err:
        imdb.extract_archive(archive, tmp_path / "imdb")
    assert "\n" not in str(err.value)
    assert _snapshot(tmp_path) == before  # no folder, no link, no temporary folder


@pytest.mark.parametrize("member", CHAIN[1:])
def test_each_link_of_the_chain_alone_is_refused(tmp_path, member):
    archive = _targz(tmp_path / "one.tar.gz", [CHAIN[0], member])
    with pytest.raises(CorpusError, match="symbolic link"):
        imdb.extract_archive(archive, tmp_path / "imdb")
    assert not (tmp_path / "imdb").exists()


def test_a_deep_member_is_refused_before_anything_is_written(tmp_path):
    archive = _targz(tmp_path / "deep.tar.gz", [("aclImdb/" + "d/" * 3000 + "x.txt", "deep")])
    with pytest.raises(CorpusError, match=f"3002 names deep, more than the {imdb.MAX_DEPTH}"):
        imdb.extract_archive(archive, tmp_path / "imdb")
    assert sorted(os.listdir(tmp_path)) == ["deep.tar.gz"]
    shallow = _targz(tmp_path / "shallow.tar.gz", [("aclImdb/" + "d/" * 30 + "x.txt", "deep enough")])
    assert (imdb.extract_archive(shallow, tmp_path / "ok") / "aclImdb").is_dir()


@pytest.mark.parametrize("body", [b"", b"plain text, not gzip", b"\x1f\x8b\x08\x00broken"])
def test_a_file_that_is_no_tar_gz_gets_a_one_line_message(tmp_path, body):
    (tmp_path / "bad.tar.gz").write_bytes(body)
    with pytest.raises(CorpusError, match="not a whole tar archive") as err:
        imdb.extract_archive(tmp_path / "bad.tar.gz", tmp_path / "imdb")
    assert "\n" not in str(err.value) and "delete it and fetch it again" in str(err.value)
    assert sorted(os.listdir(tmp_path)) == ["bad.tar.gz"]


def test_only_a_full_disk_asks_for_space(tmp_path, monkeypatch):
    long_name = _targz(tmp_path / "long.tar.gz", [("aclImdb/" + "n" * 300 + ".txt", "x")])
    not_dir = _targz(tmp_path / "notdir.tar.gz", [("aclImdb/a", "x"), ("aclImdb/a/b.txt", "y")])
    for archive, reason in [(long_name, "File name too long"), (not_dir, "exists")]:
        with pytest.raises(CorpusError, match=reason) as err:
            imdb.extract_archive(archive, tmp_path / "imdb")
        assert "space" not in str(err.value) and "\n" not in str(err.value)
    for code in (errno.ENOSPC, errno.EDQUOT):

        def full(tar, members, tmp, code=code):
            raise OSError(code, os.strerror(code))

        monkeypatch.setattr(imdb, "_extract_members", full)
        with pytest.raises(CorpusError, match="free some space or choose another cache directory"):
            imdb.extract_archive(long_name, tmp_path / "imdb")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".imdb")]  # no temporary folder left


# -- reading a review folder ---------------------------------------------------------


def test_the_chain_on_disk_is_not_followed_out_of_the_folder(tmp_path, secret):
    root = _attack_tree(tmp_path, "../t" + str(secret))
    assert os.path.realpath(root / "train/t") == "/"  # the chain really reaches the root
    texts = []
    with pytest.raises(CorpusError, match=r"leak\.txt leads to .*SECRET\.txt, outside") as err:
        texts.extend(imdb.iter_review_files(root))
    assert texts == ["A dull film."] and SECRET not in str(err.value)
    exact = _attack_tree(tmp_path / "exact", CHAIN[3][1][2:])  # the archive's own target
    with pytest.raises(CorpusError, match=r"leak\.txt leads to /tmp/SECRET\.txt, outside"):
        list(imdb.iter_review_files(exact))


def test_a_class_folder_that_leads_outside_is_refused_before_it_is_walked(tmp_path, secret):
    root = tmp_path / "aclImdb"
    root.mkdir()
    (root / "train").symlink_to(secret.parent)
    with pytest.raises(CorpusError, match="train leads to .*, outside"):
        imdb.review_paths(root)


def test_the_chain_on_disk_through_the_cli(tmp_path, secret):
    root = _attack_tree(tmp_path, "../t" + str(secret))
    before = _snapshot(tmp_path)
    result = scratchlm("train", root, "--model", "transformer", "--run-dir", tmp_path / "run", "--no-progress")
    fails(result, "leak.txt", "outside")
    assert SECRET not in result.stdout + result.stderr
    assert _snapshot(tmp_path) == before


def test_a_fifo_review_is_refused_at_once(tmp_path):
    root = tmp_path / "aclImdb"
    (root / "train/pos").mkdir(parents=True)
    (root / "train/pos/0_9.txt").write_text("A fine film.")
    os.mkfifo(root / "train/pos/1_9.txt")  # nobody ever writes to it
    how, exc = within(10, list, imdb.iter_review_files(root))
    assert how == "raised" and isinstance(exc, CorpusError) and "1_9.txt is a FIFO" in str(exc)
    before = _snapshot(tmp_path)
    fails(
        scratchlm("train", root, "--model", "transformer", "--run-dir", tmp_path / "run", "--no-progress", timeout=60),
        "1_9.txt is a FIFO",
        "not a regular file",
    )
    assert _snapshot(tmp_path) == before


def test_a_review_that_links_to_dev_zero_is_refused_at_once(tmp_path):
    root = tmp_path / "aclImdb"
    (root / "train/pos").mkdir(parents=True)
    (root / "train/pos/0_9.txt").symlink_to("/dev/zero")
    how, exc = within(10, list, imdb.iter_review_files(root))
    assert how == "raised" and isinstance(exc, CorpusError) and "leads to /dev/zero, outside" in str(exc)
    how, exc = within(10, imdb.read_review, "/dev/zero")  # even when named directly
    assert how == "raised" and isinstance(exc, CorpusError) and "a character device" in str(exc)


def test_a_review_over_the_size_bound_is_refused(tmp_path, monkeypatch):
    root = tmp_path / "aclImdb"
    (root / "train/pos").mkdir(parents=True)
    (root / "train/pos/0_9.txt").write_text("x" * 1000)
    monkeypatch.setattr(imdb, "REVIEW_LIMIT", 999)
    with pytest.raises(CorpusError, match="0_9.txt is larger than 999 bytes, the most a review may hold"):
        list(imdb.iter_review_files(root))
    monkeypatch.setattr(imdb, "REVIEW_LIMIT", 1000)
    assert list(imdb.iter_review_files(root)) == ["x" * 1000]


# -- the shared reader ---------------------------------------------------------------


def test_read_regular_text_reads_only_bounded_regular_files(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_bytes(b"one\r\ntwo\rthree")
    assert files.read_regular_text(plain, "prime file", 100) == "one\r\ntwo\rthree"
    assert files.read_regular_text(plain, "prime file", 100, universal_newlines=True) == "one\ntwo\nthree"
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "bad.txt").write_bytes(b"caf\xe9")
    cases = [
        (tmp_path / "fifo", "is a FIFO (named pipe), not a regular file: pass a prime file"),
        ("/dev/zero", "is a character device, not a regular file"),
        (tmp_path, "is a directory, not a regular file"),
        (tmp_path / "missing", "no such file"),
        (plain, "is larger than 10 bytes, the most a prime file may hold"),
        (tmp_path / "bad.txt", "not UTF-8 text (bad byte at offset 3)"),
    ]
    for path, message in cases:
        how, exc = within(10, files.read_regular_text, path, "prime file", 10)
        assert how == "raised" and type(exc) is ScratchLMError and message in str(exc), (path, exc)
    with pytest.raises(CorpusError, match="larger than 4 bytes, the most a review may hold"):
        files.read_regular_text(plain, "review", 4, CorpusError)  # the caller's own error class


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny trained character model's run directory."""
    tmp = tmp_path_factory.mktemp("prime")
    (tmp / "corpus.txt").write_text("It was the best of times, it was the worst of times.\n" * 40)
    assert (
        main(
            [
                "train",
                str(tmp / "corpus.txt"),
                "--run-dir",
                str(tmp / "run"),
                "--max-steps",
                "2",
                "--sample-length",
                "0",
                "--hidden",
                "8",
                "--embedding-dim",
                "4",
                "--batch-size",
                "4",
                "--seq-len",
                "8",
                "--no-progress",
            ]
        )
        == 0
    )
    return tmp / "run"


def test_prime_file_that_is_no_regular_file(tmp_path, checkpoint):
    os.mkfifo(tmp_path / "fifo")
    before = _snapshot(checkpoint)
    fails(
        scratchlm("sample", checkpoint, "--prime-file", "/dev/zero", timeout=60),
        "/dev/zero is a character device, not a regular file: pass a prime file that is a plain file",
    )
    fails(scratchlm("sample", checkpoint, "--prime-file", tmp_path / "fifo", timeout=60), "is a FIFO")
    (tmp_path / "big.txt").write_text("It was " * 200_000)
    fails(
        scratchlm("sample", checkpoint, "--prime-file", tmp_path / "big.txt", timeout=60),
        "is larger than 1 MiB, the most a prime file may hold",
    )
    assert _snapshot(checkpoint) == before


def test_prime_file_line_ends_as_the_corpus_read_them(tmp_path, checkpoint):
    (tmp_path / "prime.txt").write_bytes(b"It was\r\nthe")
    result = scratchlm(
        "sample", checkpoint, "--prime-file", tmp_path / "prime.txt", "--length", 3, "--temperature", 1, timeout=60
    )
    assert result.returncode == 0 and "It was\nthe" in result.stdout, result.stderr
