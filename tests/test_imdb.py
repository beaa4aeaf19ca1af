"""The IMDB seed's data path: TextVectorization semantics, aclImdb-like folders, safe archives, the id matrix.

Downloads are tested against a local HTTP server on 127.0.0.1 run in a thread: no test touches the network.
"""

import hashlib
import http.server
import io
import json
import socket
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

from scratchlm.corpora import CorpusError, DownloadError
from scratchlm.datasets import imdb
from scratchlm.text import VectorTokenizer, VocabularyError, from_config

SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "data" / "reviews"


# -- the vectorizer -------------------------------------------------------------------


def test_standardization_lower_strip_punctuation_and_br():
    tok = VectorTokenizer.fit("x")
    assert tok.standardize("This MOVIE, wasn't<br /><br />GREAT!!  (10/10)") == [
        "this",
        "movie",
        "wasnt",
        "great",
        "1010",
    ]  # punctuation deleted, not spaced
    assert tok.standardize("well-made\tfilm\nat\r\x0b\x0cthe end") == ["wellmade", "film", "at", "the", "end"]
    assert tok.standardize("Émile\u00a0Zola") == ["Émile\u00a0zola"]  # ASCII-only lower, ASCII-only split
    assert tok.standardize("<BR /> <br/>") == ["br", "br"]  # only the exact "<br />" is a break
    assert VectorTokenizer([], strip_br=False).standardize("a<br />b") == ["abr", "b"]
    assert VectorTokenizer([], lower=False).standardize("Big, Dog") == ["Big", "Dog"]


def test_vocabulary_by_frequency_ties_as_keras():
    # counts: the 3, movie 2, good 2, bad 2, a 1, zebra 1, ok 1
    tok = VectorTokenizer.fit(["The movie, the GOOD; the bad.", "movie good bad a zebra ok"], max_tokens=100)
    # Keras: np.lexsort((tokens, counts))[::-1] -> falling count, ties in falling token order
    assert tok.tokens == ["", "[UNK]", "the", "movie", "good", "bad", "zebra", "ok", "a"]
    assert (tok.pad_id, tok.unk_id, tok.eos_id, tok.special_ids) == (0, 1, None, (0, 1))
    capped = VectorTokenizer.fit(["The movie, the GOOD; the bad.", "movie good bad a zebra ok"], max_tokens=5)
    assert capped.tokens == ["", "[UNK]", "the", "movie", "good"] and capped.vocab_size == 5
    with pytest.raises(VocabularyError, match="max_tokens"):
        VectorTokenizer.fit("a", max_tokens=2)


def test_fit_streams_an_iterable_once():
    seen = []

    def texts():
        for t in ["b a", "a"]:
            seen.append(t)
            yield t

    tok = VectorTokenizer.fit(texts(), max_tokens=10)
    assert seen == ["b a", "a"] and tok.words == ["a", "b"]


def test_encode_unknown_padding_and_truncation():
    tok = VectorTokenizer(["the", "movie", "good"])
    assert tok.encode("The movie was GOOD.").tolist() == [2, 3, 1, 4]  # unknown -> [UNK] = 1
    assert tok.encode("the zzz", unknown="skip").tolist() == [2]
    with pytest.raises(VocabularyError) as err:
        tok.encode("the zzz yyy", unknown="error")
    assert err.value.missing == ["yyy", "zzz"]
    assert tok.encode_sequence("the movie", 5).tolist() == [2, 3, 0, 0, 0]  # padded at the end
    assert tok.encode_sequence("good the movie good the", 3).tolist() == [4, 2, 3]  # cut at the end
    assert tok.encode_sequence("", 2).tolist() == [0, 0]
    assert tok.encode("the").dtype == np.uint8 and tok.encode_sequence("the", 4).dtype == np.uint8
    assert tok.decode([2, 1, 3, 0, 0]) == "the [UNK] movie"
    with pytest.raises(VocabularyError):
        tok.encode_sequence("the", 0)
    with pytest.raises(VocabularyError):
        tok.decode([7])


def test_vector_config_round_trip_through_from_config():
    tok = VectorTokenizer.fit(["A good movie.", "a bad <br />movie"], max_tokens=50, strip_br=True)
    again = from_config(json.loads(json.dumps(tok.config)))
    assert type(again) is VectorTokenizer and again.tokens == tok.tokens and again.kind == "vector"
    assert (again.lower, again.strip_br, again.reserved) == (True, True, True)
    assert np.array_equal(again.encode_sequence("a movie<br />x", 6), tok.encode_sequence("a movie<br />x", 6))


@pytest.mark.parametrize(
    "config",
    [
        {"kind": "vector", "words": ["a"], "lower": True},
        {"kind": "vector", "words": "a", "lower": True, "strip_br": True},
        {"kind": "vector", "words": ["a", "a"], "lower": True, "strip_br": True},
        {"kind": "vector", "words": ["[UNK]"], "lower": True, "strip_br": True},
    ],
)
def test_bad_vector_config(config):
    with pytest.raises(VocabularyError):
        from_config(config)


# -- the folder reader -----------------------------------------------------------------


def _tree(root, files):
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return root


def test_review_files_in_keras_order(tmp_path):
    root = _tree(
        tmp_path / "aclImdb",
        {
            "train/pos/1_9.txt": "t p 1",
            "train/pos/0_7.txt": "t p 0",
            "train/neg/0_2.txt": "t n 0",
            "train/unsup/0_0.txt": "t u 0",
            "train/urls_pos.txt": "url",
            "train/labeledBow.feat": "x",
            "test/neg/5_1.TXT": "e n 5",
            "README": "not a class",
            "imdb.vocab": "no",
            "top.txt": "files directly in the folder are not read",
            ".hidden/a.txt": "skipped",
        },
    )
    names = [p.relative_to(root).as_posix() for p in imdb.review_paths(root)]
    assert names == [
        "test/neg/5_1.TXT",
        "train/urls_pos.txt",
        "train/neg/0_2.txt",
        "train/pos/0_7.txt",
        "train/pos/1_9.txt",
        "train/unsup/0_0.txt",
    ]
    assert list(imdb.iter_review_files(root)) == ["e n 5", "url", "t n 0", "t p 0", "t p 1", "t u 0"]


def test_links_that_stay_inside_the_folder_are_read_in_keras_order(tmp_path):
    root = _tree(tmp_path / "aclImdb", {"train/pos/0_9.txt": "fine", "train/neg/0_1.txt": "dull"})
    (root / "train/link.txt").symlink_to("pos/0_9.txt")
    (root / "test").symlink_to("train/neg")  # a class folder that is a link inside
    assert list(imdb.iter_review_files(root)) == ["dull", "fine", "dull", "fine"]  # test/0_1, link, neg, pos


def test_review_files_stream_and_name_a_bad_file(tmp_path):
    root = _tree(tmp_path / "r", {"neg/a.txt": "fine", "neg/b.txt": b"caf\xe9", "pos/c.txt": "later"})
    it = imdb.iter_review_files(root)
    assert next(it) == "fine"  # read lazily: the bad file is not read yet
    with pytest.raises(CorpusError, match=r"b\.txt is not UTF-8.*offset 3"):
        next(it)
    with pytest.raises(CorpusError, match="no such folder"):
        imdb.iter_review_files(tmp_path / "missing")
    with pytest.raises(CorpusError, match="no .txt file"):
        imdb.iter_review_files(_tree(tmp_path / "flat", {"a.txt": "top level only"}))


def test_the_shipped_sample():
    texts = list(imdb.iter_review_files(SAMPLE))
    assert len(texts) == 40 and sum("<br /><br />" in t for t in texts) >= 5
    tok = VectorTokenizer.fit(imdb.iter_review_files(SAMPLE), max_tokens=15000)
    assert tok.tokens[:3] == ["", "[UNK]", "the"] and "br" not in tok.words
    ids = imdb.vectorize(imdb.iter_review_files(SAMPLE), tok)
    assert ids.shape == (40, 100) and ids.dtype == np.uint16 and (ids[:, 0] != 0).all()


# -- safe extraction -------------------------------------------------------------------


def _targz(path, members):
    """members: (TarInfo fields dict, bytes or None)."""
    with tarfile.open(path, "w:gz") as tar:
        for fields, data in members:
            info = tarfile.TarInfo(fields.pop("name"))
            for k, v in fields.items():
                setattr(info, k, v)
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


GOOD = [
    ({"name": "aclImdb", "type": tarfile.DIRTYPE}, None),
    ({"name": "aclImdb/train/pos/0_9.txt"}, b"A fine film.<br /><br />Truly."),
    ({"name": "aclImdb/train/neg/0_1.txt"}, b"A dull film."),
    ({"name": "aclImdb/test/0_2.txt"}, b"A dull film."),
    ({"name": "aclImdb/train/1_9.txt"}, b"An early film."),
    ({"name": "aclImdb/train/1_9.txt"}, b"A fine film.<br /><br />Truly."),
]  # the later one wins, as in tar

EVIL = {
    "dotdot": [({"name": "aclImdb/../../evil.txt"}, b"x")],
    "absolute": [({"name": "/tmp/scratchlm-evil-absolute.txt"}, b"x")],
    "symlink-out": [({"name": "aclImdb/out", "type": tarfile.SYMTYPE, "linkname": "../../.."}, None)],
    "symlink-abs": [({"name": "aclImdb/out", "type": tarfile.SYMTYPE, "linkname": "/etc"}, None)],
    "through-symlink": [({"name": "d", "type": tarfile.SYMTYPE, "linkname": "."}, None), ({"name": "d/x.txt"}, b"x")],
    "symlink-chain": [
        ({"name": "a", "type": tarfile.SYMTYPE, "linkname": "."}, None),
        ({"name": "a/b", "type": tarfile.SYMTYPE, "linkname": "../outside"}, None),
    ],
    "hardlink-out": [({"name": "aclImdb/h", "type": tarfile.LNKTYPE, "linkname": "../../etc/passwd"}, None)],
    "hardlink-abs": [({"name": "aclImdb/h", "type": tarfile.LNKTYPE, "linkname": "/etc/passwd"}, None)],
    "symlink-in": [({"name": "aclImdb/train/link.txt", "type": tarfile.SYMTYPE, "linkname": "pos/0_9.txt"}, None)],
    "hardlink-in": [
        ({"name": "aclImdb/test/hard.txt", "type": tarfile.LNKTYPE, "linkname": "aclImdb/train/neg/0_1.txt"}, None)
    ],
    "device": [({"name": "aclImdb/dev", "type": tarfile.CHRTYPE, "devmajor": 1, "devminor": 3}, None)],
    "fifo": [({"name": "aclImdb/fifo", "type": tarfile.FIFOTYPE}, None)],
}


@pytest.mark.parametrize("kind", sorted(EVIL))
def test_malicious_archives_are_refused_and_write_nothing(kind, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    archive = _targz(tmp_path / f"{kind}.tar.gz", [(dict(f), d) for f, d in GOOD[:2] + EVIL[kind]])
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(CorpusError, match="unsafe member"):
        imdb.extract_archive(archive, work / "out")
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # no file, no temp folder
    assert not Path("/tmp/scratchlm-evil-absolute.txt").exists()


def test_a_damaged_archive_is_a_corpus_error(tmp_path):
    archive = _targz(tmp_path / "good.tar.gz", [(dict(f), d) for f, d in GOOD])
    (tmp_path / "cut.tar.gz").write_bytes(archive.read_bytes()[:-40])
    with pytest.raises(CorpusError, match="not a whole tar archive"):
        imdb.extract_archive(tmp_path / "cut.tar.gz", tmp_path / "out")
    assert not (tmp_path / "out").exists() and not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.seen.append(self.path)
        if self.path != "/aclImdb_v1.tar.gz":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.server.body)))
        self.end_headers()
        self.wfile.write(self.server.body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.body = _targz(tmp_path / "served.tar.gz", [(dict(f), d) for f, d in GOOD]).read_bytes()
    srv.sha256, srv.seen = hashlib.sha256(srv.body).hexdigest(), []
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/aclImdb_v1.tar.gz"
    yield srv
    srv.shutdown()
    srv.server_close()


def test_fetch_archive_downloads_extracts_and_reuses(server, tmp_path):
    dest = imdb.fetch_archive(server.url, server.sha256, tmp_path / "imdb", cache_dir=tmp_path / "cache")
    root = dest / "aclImdb"
    assert (root / "train/pos/0_9.txt").read_bytes() == b"A fine film.<br /><br />Truly."
    assert (root / "train/1_9.txt").read_bytes() == b"A fine film.<br /><br />Truly."
    assert not [p for p in root.rglob("*") if p.is_symlink() or not (p.is_file() or p.is_dir())]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".imdb")]  # no temporary folder left
    fine, dull = "A fine film.<br /><br />Truly.", "A dull film."
    assert list(imdb.iter_review_files(root)) == [dull, fine, dull, fine]  # test/0_2, train/1_9, neg, pos
    again = imdb.fetch_archive(server.url, server.sha256, tmp_path / "imdb", cache_dir=tmp_path / "cache")
    assert again == dest and server.seen == ["/aclImdb_v1.tar.gz"]  # reused: no second request
    (tmp_path / "cache").joinpath(next((tmp_path / "cache").iterdir()).name).unlink()
    assert imdb.fetch_archive(server.url, server.sha256, tmp_path / "imdb", cache_dir=tmp_path / "cache") == dest


def test_fetch_archive_checksum_and_foreign_folder(server, tmp_path):
    with pytest.raises(DownloadError, match="SHA-256"):
        imdb.fetch_archive(server.url, "0" * 64, tmp_path / "imdb", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "imdb").exists()
    with pytest.raises(CorpusError, match="SHA-256"):
        imdb.fetch_archive(server.url, None, tmp_path / "imdb", cache_dir=tmp_path / "cache")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(CorpusError, match="already exists"):
        imdb.fetch_archive(server.url, server.sha256, tmp_path / "mine", cache_dir=tmp_path / "cache")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_offline_message_names_the_data_option(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/aclImdb_v1.tar.gz"
    with pytest.raises(DownloadError) as err:
        imdb.fetch_archive(url, "0" * 64, tmp_path / "imdb", cache_dir=tmp_path, timeout=5)
    assert url in str(err.value) and "--data DIR" in str(err.value)


def test_the_imdb_source():
    source = imdb.ARCHIVES["imdb"]
    assert source.url == "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
    assert source.sha256 == "c40f74a18d3b61f90feba1e17730e0d38e8b97c05fde7008942e91923d1658fe"
    assert source.folder == "aclImdb" and "--data DIR" in imdb.IMDB_HINT


# -- the id matrix -------------------------------------------------------------------


def test_vectorize_streams_in_blocks_and_matches_encode_sequence():
    tok = VectorTokenizer.fit(["a b c d e f g"] * 3)
    texts = [" ".join("abcdefg"[: i % 8]) for i in range(23)]
    ids = imdb.vectorize(iter(texts), tok, length=5, chunk=4)
    assert ids.shape == (23, 5) and ids.dtype == np.uint16
    assert all(np.array_equal(ids[i], tok.encode_sequence(t, 5)) for i, t in enumerate(texts))
    assert imdb.vectorize([], tok, length=5).shape == (0, 5)
